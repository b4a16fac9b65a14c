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
    // 5: idempotency keys are unique through a partial index. The table's UNIQUE constraint
    // put an entry into its index for every message, keyless ones included (most callers send
    // no key); a constraint cannot be changed in place, so the table is rebuilt.
    r#"
    CREATE TABLE messages_new (
        id               TEXT PRIMARY KEY,
        client           TEXT NOT NULL,
        recipient        TEXT NOT NULL,
        country          TEXT,
        kind             TEXT NOT NULL,
        body             TEXT,
        sms_text         TEXT,
        locale           TEXT,
        reference        TEXT,
        idempotency_key  TEXT,
        created_at       INTEGER NOT NULL,
        expires_at       INTEGER NOT NULL,
        state            TEXT NOT NULL,
        next_attempt_at  INTEGER NOT NULL,
        channel          TEXT,
        reason           TEXT,
        finished_at      INTEGER,
        only_channel     TEXT
    );
    INSERT INTO messages_new
        SELECT id, client, recipient, country, kind, body, sms_text, locale, reference,
               idempotency_key, created_at, expires_at, state, next_attempt_at, channel, reason,
               finished_at, only_channel
        FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_new RENAME TO messages;
    CREATE UNIQUE INDEX messages_idempotency ON messages (client, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX messages_due ON messages (state, next_attempt_at);
    CREATE INDEX messages_expiry ON messages (state, expires_at);
    CREATE INDEX messages_created ON messages (created_at);
    "#,
    // 6: rowids grow with every insert, so the outbox is already in creation order; purging
    // and rebuilding the limit tallies walk that order (store/messages.rs, store/recent.rs). This
    // index served only them and cost a tenth of every insert's work and WAL writes.
    r#"
    DROP INDEX messages_created;
    "#,
    // 7: receipts drive the fallback (issue 15). A WhatsApp code waiting for its receipt stays
    // 'sent' with its content and is due again at its delivery deadline: the partial index
    // holds only those, so the claim loop finds them without walking every sent message.
    // Recipients learn what the repeat-request escalation and the pre-notice need, and a
    // verification is found from its message.
    r#"
    CREATE INDEX messages_watch ON messages (next_attempt_at)
        WHERE state = 'sent' AND body IS NOT NULL;
    ALTER TABLE recipients ADD COLUMN unconfirmed_since INTEGER;  -- an unconfirmed WhatsApp code accepted then
    ALTER TABLE recipients ADD COLUMN unconfirmed_until INTEGER;  -- and alive until
    ALTER TABLE recipients ADD COLUMN sms_until INTEGER;          -- asked again: SMS until
    ALTER TABLE recipients ADD COLUMN first_whatsapp TEXT;        -- 'confirmed' | 'failed'
    ALTER TABLE recipients ADD COLUMN prenotice_message TEXT;     -- the confirmed code that made the notice due
    CREATE INDEX recipients_prenotice_due ON recipients (prenotice_message)
        WHERE prenotice_message IS NOT NULL AND prenotified_at IS NULL;
    CREATE INDEX verifications_message ON verifications (message_id);
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
    // A migration that rebuilds a table drops the old one: with foreign keys enforced, that
    // would delete every row referring to it (attempts cascade). They are checked instead.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let applied = apply(conn, usize::try_from(found).unwrap_or(0));
    conn.pragma_update(None, "foreign_keys", "ON")?;
    applied
}

fn apply(conn: &mut Connection, from: usize) -> Result<(), StoreError> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        let dangling: i64 =
            tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })?;
        if dangling > 0 {
            return Err(StoreError::Corrupt(format!(
                "migration {} would leave {dangling} rows pointing nowhere",
                i + 1
            )));
        }
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilding_the_outbox_keeps_messages_attempts_and_their_links() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("db")).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        // A database as version 4 left it, with a message that has an attempt.
        for sql in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute_batch(
            "INSERT INTO messages (id, client, recipient, kind, created_at, expires_at, state,
                 next_attempt_at, idempotency_key)
             VALUES ('m1', 'c', '+911', 'code', 1, 2, 'delivered', 1, 'k1'),
                    ('m2', 'c', '+912', 'code', 1, 2, 'queued', 1, NULL);
             INSERT INTO attempts (message_id, channel, started_at) VALUES ('m1', 'sms', 1);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("PRAGMA user_version"), CURRENT_VERSION);
        assert_eq!(count("SELECT count(*) FROM messages"), 2);
        assert_eq!(count("SELECT count(*) FROM attempts"), 1);
        assert_eq!(count("PRAGMA foreign_keys"), 1);
        // The link still holds: deleting the message takes its attempt along.
        conn.execute("DELETE FROM messages WHERE id = 'm1'", [])
            .unwrap();
        assert_eq!(count("SELECT count(*) FROM attempts"), 0);
        // Keys stay unique per client; keyless messages are not in the index at all.
        conn.execute_batch(
            "INSERT INTO messages (id, client, recipient, kind, created_at, expires_at, state,
                 next_attempt_at, idempotency_key)
             VALUES ('m3', 'c', '+913', 'code', 1, 2, 'queued', 1, 'k3')",
        )
        .unwrap();
        let again = conn.execute_batch(
            "INSERT INTO messages (id, client, recipient, kind, created_at, expires_at, state,
                 next_attempt_at, idempotency_key)
             VALUES ('m4', 'c', '+914', 'code', 1, 2, 'queued', 1, 'k3')",
        );
        assert!(again.is_err(), "a repeated key was stored");
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE client = ?1 AND idempotency_key = ?2",
                ["c", "k3"],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("messages_idempotency"), "{plan}");
    }
}
