//! The PostgreSQL schema and its migrations: numbered like the SQLite ones, with the same
//! "database newer than me" guard, applied under a session advisory lock so that two nodes
//! starting at once do not both run them.

use tokio_postgres::Client;

use super::pg_err;
use crate::store::StoreError;

/// Each entry moves the schema one version up. Never edit an entry once released: append.
const MIGRATIONS: &[&str] = &[
    // 1: the outbox as SQLite has it at version 7, plus the claim lease; the attempt log;
    // recipients; verifications; the nodes of the pair.
    r#"
    CREATE TABLE messages (
        seq              BIGSERIAL NOT NULL,     -- creation order, for the purge
        id               TEXT PRIMARY KEY,
        client           TEXT NOT NULL,
        recipient        TEXT NOT NULL,          -- E.164
        country          TEXT,                   -- ISO 3166 alpha-2
        kind             TEXT NOT NULL,          -- 'code' | 'text'
        body             TEXT,                   -- the code or text; NULL once no channel can need it
        sms_text         TEXT,                   -- rendered SMS for codes; wiped with body
        locale           TEXT,
        reference        TEXT,
        idempotency_key  TEXT,
        created_at       BIGINT NOT NULL,        -- unix ms
        expires_at       BIGINT NOT NULL,
        state            TEXT NOT NULL,          -- queued | sending | sent | delivered | failed | expired
        next_attempt_at  BIGINT NOT NULL,
        channel          TEXT,
        reason           TEXT,
        finished_at      BIGINT,
        only_channel     TEXT,
        claimed_by       TEXT,                   -- the node working on it while 'sending'
        lease_until      BIGINT                  -- after this, any node may take it over
    );
    CREATE UNIQUE INDEX messages_idempotency ON messages (client, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX messages_due ON messages (state, next_attempt_at);
    CREATE INDEX messages_expiry ON messages (state, expires_at);
    CREATE INDEX messages_watch ON messages (next_attempt_at)
        WHERE state = 'sent' AND body IS NOT NULL;
    CREATE INDEX messages_lease ON messages (lease_until) WHERE state = 'sending';
    CREATE INDEX messages_seq ON messages (seq);
    -- The limits count sends from the shared table (one node's memory knows half of them).
    CREATE INDEX messages_recipient ON messages (recipient, created_at);
    CREATE INDEX messages_client ON messages (client, created_at);
    CREATE INDEX messages_country ON messages (country, created_at);
    CREATE INDEX messages_created ON messages (created_at);

    CREATE TABLE attempts (
        id           BIGSERIAL PRIMARY KEY,
        message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        channel      TEXT NOT NULL,
        purpose      TEXT NOT NULL DEFAULT 'code',
        started_at   BIGINT NOT NULL,
        ended_at     BIGINT,
        outcome      TEXT,
        provider_id  TEXT,
        error_code   TEXT,
        detail       TEXT,
        receipt      TEXT,
        receipt_at   BIGINT,
        node         TEXT                         -- who made it (an SMS: the node with the modem)
    );
    CREATE INDEX attempts_message ON attempts (message_id);
    CREATE INDEX attempts_provider ON attempts (channel, provider_id);

    CREATE TABLE recipients (
        number              TEXT PRIMARY KEY,
        no_whatsapp_until   BIGINT,
        prenotified_at      BIGINT,
        unconfirmed_since   BIGINT,
        unconfirmed_until   BIGINT,
        sms_until           BIGINT,
        first_whatsapp      TEXT,
        prenotice_message   TEXT
    );
    CREATE INDEX recipients_prenotice_due ON recipients (prenotice_message)
        WHERE prenotice_message IS NOT NULL AND prenotified_at IS NULL;

    CREATE TABLE verifications (
        id           TEXT PRIMARY KEY,
        client       TEXT NOT NULL,
        recipient    TEXT NOT NULL,
        message_id   TEXT,
        code_hash    BYTEA NOT NULL,     -- HMAC-SHA256(key, id ":" code); never the code
        length       INTEGER NOT NULL,
        channel      TEXT,
        locale       TEXT,
        created_at   BIGINT NOT NULL,
        expires_at   BIGINT NOT NULL,
        status       TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        sends        INTEGER NOT NULL DEFAULT 1,
        finished_at  BIGINT
    );
    CREATE INDEX verifications_open ON verifications (client, recipient, status);
    CREATE INDEX verifications_created ON verifications (created_at);
    CREATE INDEX verifications_message ON verifications (message_id);

    CREATE TABLE nodes (
        node        TEXT PRIMARY KEY,
        role        TEXT NOT NULL,          -- 'whatsapp+sms' | 'whatsapp'
        has_modem   BOOLEAN NOT NULL,
        last_seen   BIGINT NOT NULL         -- unix ms, the node's own clock
    );
    "#,
    // 2: the velocity limits' keys on the row (`limits.per_prefix`, `per_user`, `per_ip`), so
    // they are counted in the shared table like the others and hold across the pair; NULL
    // where the limit is off or the caller named no user or address. They go when the row
    // goes. Partial indexes: most rows carry no user or address.
    r#"
    ALTER TABLE messages ADD COLUMN prefix_key TEXT, ADD COLUMN end_user TEXT, ADD COLUMN end_ip TEXT;
    CREATE INDEX messages_prefix ON messages (prefix_key, created_at) WHERE prefix_key IS NOT NULL;
    CREATE INDEX messages_user ON messages (end_user, created_at) WHERE end_user IS NOT NULL;
    CREATE INDEX messages_ip ON messages (end_ip, created_at) WHERE end_ip IS NOT NULL;
    "#,
];

/// The schema version this binary writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Any number the whole pair agrees on; it names otpgate's migration lock.
const MIGRATION_LOCK: i64 = 0x6f74_7067_6174_6501;

/// Brings the database up to [`CURRENT_VERSION`] under the migration lock, refusing a newer
/// one. Returns the version found before.
pub(super) async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let result = apply(client).await;
    // Dropping the connection would release the lock as well; a pooled one must not keep it.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err);
    let found = result?;
    unlocked?;
    Ok(found)
}

async fn apply(client: &mut Client) -> Result<i64, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS otpgate_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL);
             INSERT INTO otpgate_schema (version) VALUES (0) ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg_err)?;
    let found: i64 = client
        .query_one("SELECT version FROM otpgate_schema", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if found > CURRENT_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: CURRENT_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.batch_execute(sql).await.map_err(pg_err)?;
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.execute("UPDATE otpgate_schema SET version = $1", &[&version])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
    }
    Ok(found)
}

/// The version the database is at, without changing anything (0: never migrated).
pub(super) async fn version(client: &Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('otpgate_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT version FROM otpgate_schema", &[])
        .await
        .map_err(pg_err)?
        .get(0))
}
