//! The outbox, behind one cheap-to-clone [`Store`] handle over two backends: the embedded
//! SQLite file (the default) and PostgreSQL for a pair of nodes ([`postgres`]).
//!
//! What lives where:
//! - `backend`: [`Store`], which dispatches each call to its backend;
//! - this file: the SQLite side's handle, opening (file mode, WAL, migrations), read
//!   connections, errors;
//! - `writer`: the thread that owns the write connection and commits jobs in groups, and
//!   the checkpointer thread beside it;
//! - `messages`: the outbox rows and the queries on them (accept, claim, attempts,
//!   receipts, recipients, recovery, housekeeping);
//! - `settle`: an attempt's end and its message's next move, written in one commit;
//! - `verify`: the Verify API's rows; `recent`: sends per limit key, counted in the writer's
//!   memory; [`schema`]: tables and migrations.
//!
//! Reads run on their own connections (WAL lets them proceed during writes).

mod backend;
mod messages;
pub mod postgres;
mod recent;
pub mod schema;
mod settle;
mod verify;
mod writer;

pub use backend::{NodeView, Store, VelocityKeys, VelocityLimited};
pub use messages::{BatchResult, InsertResult, LimitScope, Message, NewMessage, ReceiptEffect};
pub use settle::{AttemptRow, Move, Settlement};
pub use verify::{CheckOutcome, FinishedVerification, NewVerification, Resend, Verification};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use tokio::sync::mpsc;

use crate::clock::Timestamp;

pub use crate::domain::{Attempt, MessageState, RecipientInfo};
use messages::insert_tx;
pub(crate) use writer::exec;

impl From<crate::domain::UnknownWord> for StoreError {
    fn from(e: crate::domain::UnknownWord) -> StoreError {
        StoreError::Corrupt(e.to_string())
    }
}

/// Store failures. None of them carries a message body.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file could not be created or opened.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer otpgate.
    #[error(
        "database schema version {found} is newer than this otpgate understands ({known}); upgrade otpgate or restore a backup"
    )]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this binary knows.
        known: i64,
    },
    /// The writer thread is gone (shutting down or crashed).
    #[error("the store is shut down")]
    Closed,
    /// A stored value could not be understood.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The group commit this write belonged to failed: nothing of the write is stored.
    #[error("the write was not committed: {0}")]
    Commit(Arc<rusqlite::Error>),
    /// SQLite rolled the whole group back (disk full, I/O error): nothing of it is stored.
    #[error("the write was not committed: SQLite rolled the transaction back")]
    RolledBack,
    /// PostgreSQL said no: its message and SQLSTATE (never its DETAIL, which can quote a row).
    #[error("database error: {0}")]
    Postgres(String),
    /// No connection to PostgreSQL could be had in time.
    #[error("cannot reach PostgreSQL: {0}")]
    Unreachable(String),
    /// TLS to PostgreSQL could not be set up.
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
    /// SQLite would not put the database in WAL mode (e.g. a file system without shared memory).
    #[error("journal_mode is {0}, WAL could not be enabled")]
    NoWal(String),
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// The SQLite backend: the writer thread's queue and the read connections; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<writer::Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Without the planner stability guarantee SQLite peeks at bound values (a bound LIMIT or
    // OFFSET, STAT4 ranges) and marks the statement to be prepared again whenever they are
    // rebound. rusqlite clears bindings when a statement goes back to its cache, so every
    // cached limit query was parsed afresh: a third of the writer's CPU under load.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A wiped code is NULLed in place: without this, its bytes stay in the page's free space
    // (and in freed pages) and so in every later copy of the page, in the WAL and the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// A read connection: [`open_connection`] with a small page cache. Reads are lookups by key
/// through indexes, and eight pooled readers at SQLite's default 2 MiB each kept up to 16 MiB
/// of pages after a burst (issue 18); the file's pages stay in the OS cache regardless.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path)?;
    conn.pragma_update(None, "cache_size", -256)?;
    Ok(conn)
}

fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // Created 0600 before SQLite touches it; SQLite gives -wal and -shm the same mode.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(|_| ())
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// `otpgate migrate` on SQLite: opens (creating, 0600) and migrates the file without
/// starting the writer; returns the schema versions before and after.
pub fn migrate_file(path: &Path) -> Result<(i64, i64), StoreError> {
    create_private(path)?;
    let mut conn = open_connection(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal(mode));
    }
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    schema::migrate(&mut conn)?;
    Ok((found, schema::CURRENT_VERSION))
}

impl SqliteStore {
    /// Opens (creating, 0600) and migrates the database, and starts the writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        create_private(path)?;
        let mut conn = open_connection(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal(mode));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Savepoint journals stay in memory: they only undo a failed job inside its group.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        schema::migrate(&mut conn)?;
        let writer = writer::start(conn, path)?;
        Ok(SqliteStore {
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a read connection off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().ok().and_then(|mut v| v.pop());
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&path)?,
            };
            let r = f(&conn);
            if let Ok(mut v) = readers.lock()
                && v.len() < 8
            {
                v.push(conn);
            }
            r
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Copies the whole WAL into the database file and truncates it to nothing (waiting up
    /// to the busy timeout for the writer's current group); false when it stayed busy.
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        self.read(|c| {
            // A connection that has not read the database yet does not see the WAL.
            c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
            let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            Ok(busy == 0)
        })
        .await
    }

    /// Proves the writer is alive and can take the write lock (for /readyz).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute_batch("SELECT 1")?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelKind;
    use crate::domain::{AttemptEnd, AttemptPurpose, Content, E164, MessageId};

    /// A valid number for a short test name ("+911" -> "+10000000911"), distinct per name.
    pub(super) fn num(to: &str) -> E164 {
        E164::new(&format!("+1{:0>10}", &to[1..])).unwrap()
    }

    pub(super) fn new_msg(id: &str, to: &str, at: i64, key: Option<&str>) -> NewMessage {
        NewMessage {
            id: MessageId::new(id),
            client: "c".into(),
            recipient: num(to),
            country: Some("IN".into()),
            content: Content::Code {
                code: "123456".into(),
                sms_text: "code 123456".into(),
            },
            locale: None,
            reference: None,
            idempotency_key: key.map(Into::into),
            created_at: Timestamp(at),
            expires_at: Timestamp(at + 300_000),
            only_channel: None,
        }
    }

    #[tokio::test]
    async fn expiry_recovery_and_schema_guard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path).unwrap();
            s.insert(new_msg("m1", "+911", 1000, None), vec![])
                .await
                .unwrap();
            s.insert(new_msg("m2", "+912", 1000, None), vec![])
                .await
                .unwrap();
            let (c, _) = s.claim_due(Timestamp(1000), 1).await.unwrap();
            s.start_attempt(
                &c[0].id,
                ChannelKind::WhatsApp,
                AttemptPurpose::Code,
                Timestamp(1000),
            )
            .await
            .unwrap();
            assert_eq!(s.recover(Timestamp(2000)).await.unwrap(), 1);
            let (_, atts) = s.get(&c[0].id, "c").await.unwrap().unwrap();
            assert_eq!(atts[0].end, Some(AttemptEnd::Interrupted));
            let (claimed, expired) = s.claim_due(Timestamp(400_000), 10).await.unwrap();
            assert_eq!((claimed.len(), expired), (0, 2));
            let (m, _) = s.get("m1", "c").await.unwrap().unwrap();
            assert_eq!(m.state, MessageState::Expired);
            assert!(m.content.is_none());
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = Store::open(&path).err().unwrap();
        assert!(
            err.to_string().contains("schema version 99 is newer"),
            "{err}"
        );
    }

    /// Whether `needle` is in any file of `dir` (the database, its WAL, its shared memory).
    fn on_disk(dir: &Path, needle: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let bytes = std::fs::read(p).unwrap_or_default();
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            })
            .map(|p| p.display().to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_wiped_code_is_gone_from_every_file_after_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let secret = |i: usize| format!("Sx{i:03}Vq");
        for i in 0..40 {
            let mut m = new_msg(&format!("m{i:02}"), &format!("+91{i}"), 1000, None);
            m.content = Content::Code {
                code: secret(i),
                sms_text: format!("{} is your code, valid for five minutes", secret(i)),
            };
            s.insert(m, vec![]).await.unwrap();
        }
        assert!(s.checkpoint().await.unwrap());
        assert!(
            !on_disk(dir.path(), &secret(7)).is_empty(),
            "the grep finds a live code"
        );
        for i in 0..40 {
            let id = format!("m{i:02}");
            s.finish(&id, MessageState::Sent, None, None, false, Timestamp(2000))
                .await
                .unwrap();
        }
        assert!(s.checkpoint().await.unwrap());
        for i in 0..40 {
            assert_eq!(on_disk(dir.path(), &secret(i)), Vec::<String>::new(), "{i}");
        }
    }
}
