//! The writer thread: the one connection that writes, committing jobs in groups (every job
//! that arrives while the previous group is being fsynced joins the next group, so many
//! accepted requests share one fsync), and the checkpointer thread that copies the WAL back
//! into the database file so that work and its fsync do not stall the writer. A job's caller
//! hears back only after its group's COMMIT returned (with `synchronous=FULL`, on disk).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{SqliteStore, StoreError, open_connection, recent};

/// Tells a job's caller how its group's commit went.
pub(super) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Work for the writer thread; returns what to call once the group is committed.
pub(super) type Job = Box<dyn FnOnce(&Writer) -> Completion + Send>;

/// What the writer thread owns: the write connection and what it keeps in memory beside it.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) recent: recent::Recent,
}

/// Jobs joining one group commit at most; bounds the latency of the first job in a group.
const MAX_GROUP: usize = 512;

/// Starts the checkpointer and the writer thread on `conn` (migrated, in WAL mode).
pub(super) fn start(mut conn: Connection, path: &Path) -> Result<mpsc::Sender<Job>, StoreError> {
    let spawn_failed = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let checkpointer = Checkpointer::start(open_connection(path)?).map_err(spawn_failed)?;
    // Replaces SQLite's automatic checkpoint, which would run inside the writer's commit.
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames| {
        if checkpointer.committed(frames) {
            // The checkpointer is not keeping up (or is gone): bound the WAL ourselves.
            // An error returned from this hook would make the COMMIT that ran it report
            // failure although it happened, so a failed checkpoint is only logged (it is
            // busy while the checkpointer works, and the next commit tries again).
            if let Err(e) = wal.checkpoint() {
                tracing::debug!(error = %e, "store: writer checkpoint did not run");
            }
        }
        Ok(())
    }))?;
    let (tx, rx) = mpsc::channel::<Job>(4096);
    std::thread::Builder::new()
        .name("otpgate-store".into())
        .spawn(move || {
            writer_loop(
                Writer {
                    conn,
                    recent: recent::Recent::default(),
                },
                rx,
            )
        })
        .map_err(spawn_failed)?;
    Ok(tx)
}

impl SqliteStore {
    /// Pages the writer connection has written to the WAL so far: SQLite's own counter, the
    /// cost of an accept that holds on any disk (for the store's tests and the accept bench).
    pub async fn wal_pages_written(&self) -> Result<i64, StoreError> {
        self.write(|c| {
            let (mut now, mut high) = (0, 0);
            // SAFETY: reads a counter of this connection on the thread that owns it, into two
            // locals that outlive the call.
            let rc = unsafe {
                rusqlite::ffi::sqlite3_db_status(
                    c.handle(),
                    rusqlite::ffi::SQLITE_DBSTATUS_CACHE_WRITE,
                    &mut now,
                    &mut high,
                    0,
                )
            };
            if rc == rusqlite::ffi::SQLITE_OK {
                Ok(i64::from(now))
            } else {
                Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rc),
                    Some("sqlite3_db_status".into()),
                )))
            }
        })
        .await
    }

    /// Runs `f` in the writer's current group; resolves after the group is committed. `f`
    /// runs in a savepoint, so if it fails, its changes are undone and the group's are not.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(move |w| in_savepoint(w, |w| f(&w.conn))).await
    }

    /// [`Store::write`] for jobs that call [`insert_tx`], which needs the whole writer.
    pub(super) async fn write_with_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Writer) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(move |w| in_savepoint(w, f)).await
    }

    /// Runs `f` in the writer's current group with no savepoint of its own, for jobs that
    /// undo their own changes on failure.
    pub(super) async fn submit<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Writer) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |w: &Writer| {
            let result = f(w);
            Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(result));
            }) as Completion
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Runs one statement through the connection's prepared-statement cache: the writer runs the
/// same few statements thousands of times a second, and parsing them each time costs more
/// than executing them.
pub(crate) fn exec(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

fn in_savepoint<T>(
    w: &Writer,
    f: impl FnOnce(&Writer) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let conn = &w.conn;
    exec(conn, "SAVEPOINT job", [])?;
    match f(w) {
        Ok(v) => {
            exec(conn, "RELEASE job", [])?;
            Ok(v)
        }
        Err(e) => {
            // Undo only this job; the rest of the group still commits.
            let _ = exec(conn, "ROLLBACK TO job", []);
            let _ = exec(conn, "RELEASE job", []);
            // Recent sends may have been rebuilt or pruned inside the savepoint.
            w.recent.forget();
            Err(e)
        }
    }
}

/// New WAL frames (pages) after which the checkpointer copies the WAL back: SQLite's default.
const CHECKPOINT_FRAMES: i32 = 1000;
/// WAL frames after which the writer checkpoints itself (64 MiB of 4 KiB pages).
const WRITER_CHECKPOINT_FRAMES: i32 = 16_000;

/// How often the checkpointer looks whether the WAL should be emptied.
const TRUNCATE_TICK: Duration = Duration::from_secs(1);
/// Under a load without a quiet second, the WAL is still emptied this often.
const TRUNCATE_AT_LEAST_EVERY: Duration = Duration::from_secs(10);
/// How long a truncating checkpoint waits for the writer's group and for readers.
const TRUNCATE_BUSY_WAIT: Duration = Duration::from_millis(200);

/// The writer's handle on the checkpointer thread.
///
/// A passive checkpoint never blocks the writer. Each ends with an fsync of the database
/// file, so it waits for [`CHECKPOINT_FRAMES`] new frames rather than running after every
/// commit. The WAL restarts from its beginning at the first commit after a complete
/// checkpoint: when idle, right after the checkpointer's; under a continuous load, which a
/// passive checkpoint never quite catches, at the writer's own checkpoint at
/// [`WRITER_CHECKPOINT_FRAMES`], which finds all but the last few hundred frames copied.
///
/// Wiping a code (NULLing it, with `secure_delete` zeroing the freed bytes) writes a clean
/// copy of its page, but the older copies with the code in them stay in the WAL's earlier
/// frames until the WAL is overwritten. So once commits have stopped for a second (and at
/// least every [`TRUNCATE_AT_LEAST_EVERY`] under load), the checkpointer copies the WAL back
/// and truncates it to nothing: a passive pass first, without locks, then a TRUNCATE that
/// holds the write lock only for the last few frames and gives up after
/// [`TRUNCATE_BUSY_WAIT`] rather than queue behind a busy writer (it tries again next tick).
///
/// What this cannot promise: a crash (kill -9, power loss) between a wipe and the next
/// truncation leaves the WAL as it was, codes in its older frames, until the next start's
/// first checkpoint; and SQLite's truncation frees the file's blocks without overwriting
/// them, so the bytes may survive on the disk device (not in any file) until reused. Codes
/// expire within minutes, which bounds what such a leftover is worth.
struct Checkpointer {
    due: std::sync::mpsc::SyncSender<()>,
    /// Frames of the current WAL already copied back, as the last checkpoint reported.
    copied: Arc<AtomicI32>,
    /// Commits so far, for the checkpointer to tell a quiet second from a busy one.
    commits: Arc<AtomicU64>,
}

impl Checkpointer {
    fn start(conn: Connection) -> std::io::Result<Checkpointer> {
        let (due, wake) = std::sync::mpsc::sync_channel::<()>(1);
        let copied = Arc::new(AtomicI32::new(0));
        let commits = Arc::new(AtomicU64::new(0));
        let (progress, seen) = (copied.clone(), commits.clone());
        std::thread::Builder::new()
            .name("otpgate-ckpt".into())
            .spawn(move || checkpointer_loop(&conn, &wake, &progress, &seen))?;
        Ok(Checkpointer {
            due,
            copied,
            commits,
        })
    }

    /// Told the WAL's length after each commit; true when the writer must checkpoint itself.
    fn committed(&self, frames: i32) -> bool {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let copied = self.copied.load(Ordering::Relaxed);
        // Fewer frames than were copied: the WAL has restarted since.
        let pending = if frames < copied {
            frames
        } else {
            frames - copied
        };
        if pending >= CHECKPOINT_FRAMES {
            let _ = self.due.try_send(());
        }
        frames >= WRITER_CHECKPOINT_FRAMES
    }
}

/// The checkpointer thread: passive checkpoints when the writer asks, truncating ones after
/// commits (see [`Checkpointer`]). Ends when the writer's hook, the only sender, is dropped.
fn checkpointer_loop(
    conn: &Connection,
    wake: &std::sync::mpsc::Receiver<()>,
    progress: &AtomicI32,
    commits: &AtomicU64,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // A connection sees the WAL only once it has read the database; until then a
    // checkpoint returns "not in WAL mode" and does nothing.
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        tracing::warn!(error = %e, "store: checkpointer cannot read the database");
    }
    if let Err(e) = conn.busy_timeout(TRUNCATE_BUSY_WAIT) {
        tracing::warn!(error = %e, "store: checkpointer cannot set its busy timeout");
    }
    let passive = || match conn.wal_checkpoint_v2(
        Some(rusqlite::MAIN_DB),
        rusqlite::wal::CheckpointMode::PASSIVE,
    ) {
        Ok((_, copied)) => progress.store(copied.max(0), Ordering::Relaxed),
        Err(e) => tracing::warn!(error = %e, "store: checkpoint failed; will retry"),
    };
    let (mut truncated_at, mut last_seen) = (0, 0);
    let mut last_truncate = std::time::Instant::now();
    loop {
        match wake.recv_timeout(TRUNCATE_TICK) {
            Ok(()) => passive(),
            Err(RecvTimeoutError::Timeout) => {
                let n = commits.load(Ordering::Relaxed);
                let quiet = n == last_seen;
                last_seen = n;
                if n == truncated_at
                    || !(quiet || last_truncate.elapsed() >= TRUNCATE_AT_LEAST_EVERY)
                {
                    continue;
                }
                passive();
                let mode = rusqlite::wal::CheckpointMode::TRUNCATE;
                match conn.wal_checkpoint_v2(Some(rusqlite::MAIN_DB), mode) {
                    Ok(_) => {
                        progress.store(0, Ordering::Relaxed);
                        truncated_at = n;
                        last_truncate = std::time::Instant::now();
                    }
                    // Busy: the writer or a reader held on; the next tick tries again.
                    Err(e) => tracing::debug!(error = %e, "store: WAL not truncated yet"),
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn writer_loop(writer: Writer, mut rx: mpsc::Receiver<Job>) {
    let conn = &writer.conn;
    while let Some(first) = rx.blocking_recv() {
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE", []) {
            // Dropping the job unblocks its caller with an error; nothing was written.
            tracing::error!(error = %e, "store: cannot begin a transaction");
            continue;
        }
        let mut completions: Vec<Completion> = Vec::new();
        let mut next = Some(first);
        let mut rolled_back = false;
        // Jobs that arrive while the group runs join it: taken only once the group was drained,
        // they would wait for a whole extra fsync.
        while let Some(job) = next.take() {
            completions.push(job(&writer));
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (disk full, I/O error). Later jobs
                // would each commit on their own while their callers hear "failed": they
                // wait in the queue for the next group instead.
                rolled_back = true;
                break;
            }
            if completions.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        let commit = if rolled_back {
            Err(StoreError::RolledBack)
        } else {
            exec(conn, "COMMIT", [])
                .map(|_| ())
                .map_err(|e| StoreError::Commit(Arc::new(e)))
        };
        if commit.is_err() {
            let _ = exec(conn, "ROLLBACK", []);
            writer.recent.forget();
        }
        let n = completions.len();
        match &commit {
            Ok(()) => tracing::trace!(jobs = n, "store: group committed"),
            Err(e) => tracing::error!(jobs = n, error = %e, "store: group commit failed"),
        }
        for done in completions {
            done(match &commit {
                Ok(()) => Ok(()),
                Err(StoreError::Commit(e)) => Err(StoreError::Commit(e.clone())),
                Err(_) => Err(StoreError::RolledBack),
            });
        }
    }
    tracing::debug!("store: writer stopped");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::channel::Content;
    use crate::clock::Timestamp;
    use crate::store::tests::new_msg;
    use crate::store::{InsertResult, Store};

    #[tokio::test]
    async fn group_commit_batches_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.insert(
                    new_msg(&format!("m{i}"), &format!("+91{i}"), 1000, None),
                    vec![],
                )
                .await
            }));
        }
        for t in tasks {
            assert!(matches!(
                t.await.unwrap().unwrap(),
                InsertResult::Created(_)
            ));
        }
        assert_eq!(s.queue_depth().await.unwrap(), 200);
        // A failing job inside a group does not spoil the others.
        let bad = s.write(|c| {
            c.execute_batch("INSERT INTO nonexistent VALUES (1)")?;
            Ok(())
        });
        let good = s.insert(new_msg("ok", "+99", 1000, None), vec![]);
        let (b, g) = tokio::join!(bad, good);
        assert!(b.is_err());
        assert!(matches!(g.unwrap(), InsertResult::Created(_)));
        // Inserts run without a savepoint: one whose INSERT fails (a duplicate id) is undone
        // by SQLite alone and leaves the rest of its group to commit.
        let dup = s.insert(new_msg("ok", "+98", 1000, None), vec![]);
        let fine = s.insert(new_msg("fine", "+97", 1000, None), vec![]);
        let (d, f) = tokio::join!(dup, fine);
        assert!(d.is_err());
        assert!(matches!(f.unwrap(), InsertResult::Created(_)));
        assert_eq!(s.queue_depth().await.unwrap(), 202);
    }

    #[tokio::test]
    async fn cached_statements_are_not_prepared_again_on_every_use() {
        // SQLite re-prepares a statement whose bound LIMIT it peeked at once the binding
        // changes, and rusqlite clears bindings whenever a statement returns to its cache:
        // without the planner stability guarantee every claim was parsed afresh.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        for i in 0..20 {
            let m = new_msg(&format!("m{i:02}"), &format!("+91{i}"), 1000, None);
            s.insert(m, vec![]).await.unwrap();
        }
        for n in [1, 2, 3, 4] {
            assert_eq!(s.claim_due(Timestamp(2000), n).await.unwrap().0.len(), n);
        }
        let reprepared = s
            .write(|c| {
                let mut total = 0;
                // SAFETY: walks this connection's own statements on the thread that owns it,
                // without keeping any pointer past the loop.
                unsafe {
                    let db = c.handle();
                    let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
                    while !stmt.is_null() {
                        total += rusqlite::ffi::sqlite3_stmt_status(
                            stmt,
                            rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE,
                            0,
                        );
                        stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
                    }
                }
                Ok(total)
            })
            .await
            .unwrap();
        assert_eq!(reprepared, 0, "statements were prepared again");
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = Store::open(&path).unwrap();
        let empty = std::fs::metadata(&path).unwrap().len();
        // One commit each, so the WAL passes CHECKPOINT_FRAMES quickly.
        for i in 0..400 {
            let mut m = new_msg(&format!("m{i:04}"), &format!("+91{i}"), 1000, None);
            m.content = Content::Text("x".repeat(2000));
            s.insert(m, vec![]).await.unwrap();
        }
        // SQLite's own automatic checkpoint is off (the WAL hook replaces it), and the WAL is
        // far below the writer's threshold: only the checkpointer can grow the file.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size > empty + 400 * 2000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "database file still {size} bytes (was {empty}): nothing was checkpointed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An accept on its own writes one leaf page of each B-tree its row lands in (the table,
    /// the id index, `messages_due`, `messages_expiry`) plus its share of page splits: 4.6
    /// pages. Each further index on the outbox adds about 1.1.
    #[tokio::test]
    async fn an_accept_on_its_own_writes_under_five_wal_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let accept = |i: i64| {
            let at = Timestamp(1_795_000_000_000 + i);
            let mut m = new_msg("", "+9", at.0, None);
            // Shaped like the API's rows: time-ordered ids, a full number, a rendered SMS.
            m.id = crate::domain::MessageId::new(format!("msg_{:012x}{i:020x}", at.0));
            m.recipient = crate::domain::E164::new(&format!("+9198{i:08}")).unwrap();
            m.client = "bench".into();
            m.content = Content::Code {
                code: format!("{:06}", i % 1_000_000),
                sms_text: format!("{:06} is your verification code. Do not share it.", i),
            };
            m
        };
        for i in 0..200 {
            s.insert(accept(i), vec![]).await.unwrap();
        }
        let (before, n) = (s.wal_pages_written().await.unwrap(), 1000);
        for i in 200..200 + n {
            s.insert(accept(i), vec![]).await.unwrap();
        }
        let per_accept = (s.wal_pages_written().await.unwrap() - before) as f64 / n as f64;
        println!("{per_accept:.2} WAL pages per accept");
        assert!(
            (2.0..5.0).contains(&per_accept),
            "{per_accept:.2} WAL pages per accept"
        );
    }
}
