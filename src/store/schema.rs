//! Schema and migrations. `PRAGMA user_version` is the number of migrations applied; a
//! database newer than this binary is refused rather than half-understood.

use rusqlite::Connection;

use super::StoreError;

/// Each entry moves the schema one version up. Never edit an entry once released: append.
const MIGRATIONS: &[&str] = &[
    // 1: the outbox, the attempt log, what we know about recipients.
    r#"
    CREATE TABLE messages (
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
        created_at       INTEGER NOT NULL,       -- unix ms
        expires_at       INTEGER NOT NULL,
        state            TEXT NOT NULL,          -- queued | sending | sent | delivered | failed | expired
        next_attempt_at  INTEGER NOT NULL,
        channel          TEXT,                   -- the channel that carried it
        reason           TEXT,                   -- why it ended as it did / why the plan changed
        finished_at      INTEGER,
        UNIQUE (client, idempotency_key)
    );
    CREATE INDEX messages_due ON messages (state, next_attempt_at);
    CREATE INDEX messages_expiry ON messages (state, expires_at);
    CREATE INDEX messages_recipient ON messages (recipient, created_at);
    CREATE INDEX messages_country ON messages (country, created_at);
    CREATE INDEX messages_client ON messages (client, created_at);
    CREATE INDEX messages_created ON messages (created_at);

    CREATE TABLE attempts (
        id           INTEGER PRIMARY KEY,
        message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        channel      TEXT NOT NULL,
        purpose      TEXT NOT NULL DEFAULT 'code',   -- 'code' | 'prenotice'
        started_at   INTEGER NOT NULL,
        ended_at     INTEGER,
        outcome      TEXT,       -- accepted | fallback | retry | channel_down | failed | unknown | skipped | interrupted
        provider_id  TEXT,
        error_code   TEXT,
        detail       TEXT,
        receipt      TEXT,       -- sent | delivered | read | pending | failed
        receipt_at   INTEGER
    );
    CREATE INDEX attempts_message ON attempts (message_id);
    CREATE INDEX attempts_provider ON attempts (channel, provider_id);

    CREATE TABLE recipients (
        number              TEXT PRIMARY KEY,
        no_whatsapp_until   INTEGER,   -- "not on WhatsApp" remembered until then
        prenotified_at      INTEGER    -- the one-time SMS pre-notice went out
    );
    "#,
    // 2: the Verify API, and a per-message channel restriction (Verify's "channel").
    r#"
    ALTER TABLE messages ADD COLUMN only_channel TEXT;
    CREATE TABLE verifications (
        id           TEXT PRIMARY KEY,
        client       TEXT NOT NULL,
        recipient    TEXT NOT NULL,
        message_id   TEXT,
        code_hash    BLOB NOT NULL,      -- HMAC-SHA256(key, id ":" code); never the code
        length       INTEGER NOT NULL,
        channel      TEXT,
        locale       TEXT,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        status       TEXT NOT NULL,      -- pending | approved | canceled | max_attempts | expired
        attempts     INTEGER NOT NULL DEFAULT 0,
        sends        INTEGER NOT NULL DEFAULT 1,
        finished_at  INTEGER
    );
    CREATE INDEX verifications_open ON verifications (client, recipient, status);
    CREATE INDEX verifications_created ON verifications (created_at);
    "#,
    // 3: per-recipient limits count sends in memory (store/recent.rs); this index
    // cost one random page in the WAL for every accepted message.
    r#"
    DROP INDEX messages_recipient;
    "#,
    // 4: client, country and global limits count in memory too; these indexes served only them.
    r#"
    DROP INDEX messages_country;
    DROP INDEX messages_client;
    "#,
];

/// The schema version this binary writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings `conn` up to [`CURRENT_VERSION`], refusing a newer database.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
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
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}
