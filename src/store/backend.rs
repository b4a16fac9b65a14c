//! [`Store`]: one interface, two backends. Callers hold a `Store` and never learn which
//! database is under it; each method is a `match` on the backend (no boxed futures, so the
//! SQLite path costs what it did). The embedded SQLite file is the default; PostgreSQL is
//! for a pair of nodes sharing one queue (`store::postgres`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection;

use super::postgres::{Peer, PgStore};
use super::{
    Attempt, BatchResult, CheckOutcome, InsertResult, LimitScope, Message, MessageState,
    NewMessage, NewVerification, ReceiptEffect, RecipientInfo, Resend, Settlement, SqliteStore,
    StoreError, Verification,
};
use crate::abuse::Scope;
use crate::channel::{Outcome, ReceiptStatus};
use crate::clock::Timestamp;
use crate::config::{Rate, StoreBackend, StoreConfig};
use crate::domain::{AttemptPurpose, ChannelKind, E164, MessageId};

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgNode),
}

/// The PostgreSQL store and what this node tells the others.
#[derive(Clone)]
struct PgNode {
    store: PgStore,
    /// Whether this node has a ready modem: it claims SMS steps only then.
    sms_ready: Arc<AtomicBool>,
}

impl std::ops::Deref for PgNode {
    type Target = PgStore;
    fn deref(&self) -> &PgStore {
        &self.store
    }
}

/// What `/readyz` and STATUS show of a pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// This node's name.
    pub node: String,
    /// Every node's last heartbeat (this one included).
    pub peers: Vec<Peer>,
}

/// The velocity limits (`limits.per_prefix`, `per_user`, `per_ip`) one message is counted
/// under, each with its key. A pair stores the keys on the message row and counts them in the
/// accept transaction ([`Store::counts_velocity`]); a single box counts them in memory
/// (`abuse::Velocity`) and is never given any.
pub type VelocityKeys = Vec<(Scope, String, Rate)>;

/// A velocity limit is full (PostgreSQL); nothing was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VelocityLimited {
    /// Which message of a batch (0 for one message).
    pub index: usize,
    /// Which limit.
    pub scope: Scope,
    /// When a place frees.
    pub retry_after: Duration,
}

/// The answer of a call given no velocity keys, which cannot be a velocity refusal.
fn uncounted<T>(r: Result<Result<T, VelocityLimited>, StoreError>) -> Result<T, StoreError> {
    r?.map_err(|v| {
        StoreError::Postgres(format!(
            "{} refused a message counted without velocity keys",
            v.scope.key()
        ))
    })
}

/// Only SQLite has this.
fn sqlite_only(what: &str) -> StoreError {
    StoreError::Postgres(format!("{what} is a SQLite store operation"))
}

impl Store {
    /// Opens (creating, 0600) and migrates the SQLite database, and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::open(path)?),
        })
    }

    /// Connects to PostgreSQL and migrates it (under the migration lock).
    pub async fn open_postgres(cfg: &crate::config::PostgresConfig) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(PgNode {
                store: PgStore::open(cfg).await?,
                sms_ready: Arc::new(AtomicBool::new(false)),
            }),
        })
    }

    /// The backend `[store]` names.
    pub async fn open_config(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match &cfg.backend {
            StoreBackend::Sqlite => Store::open(&cfg.path),
            StoreBackend::Postgres(pg) => Store::open_postgres(pg).await,
        }
    }

    /// The SQLite file; None on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Runs `f` on a SQLite read connection off the async runtime (SQLite only).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(db) => db.read(f).await,
            Backend::Postgres(_) => Err(sqlite_only("a read closure")),
        }
    }

    /// Runs `f` on the SQLite writer's connection inside its group commit (SQLite only).
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(db) => db.write(f).await,
            Backend::Postgres(_) => Err(sqlite_only("a write closure")),
        }
    }

    /// Empties SQLite's WAL into the database file (true: done); PostgreSQL manages its own.
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.checkpoint().await,
            Backend::Postgres(_) => Ok(true),
        }
    }

    /// WAL pages written so far (SQLite only; for the page-cost benchmarks and tests).
    pub async fn wal_pages_written(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.wal_pages_written().await,
            Backend::Postgres(_) => Err(sqlite_only("counting WAL pages")),
        }
    }

    /// Proves the store can write (SQLite: the writer takes its lock; PostgreSQL: a pooled
    /// connection answers).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.ping().await,
            Backend::Postgres(p) => p.ping().await,
        }
    }

    /// Claims up to `max` due messages and expires queued ones past their lifetime. On
    /// PostgreSQL the claim is this node's lease, and SMS steps are claimed only while
    /// [`Store::set_sms_ready`] says this node has a modem.
    pub async fn claim_due(
        &self,
        now: Timestamp,
        max: usize,
    ) -> Result<(Vec<Message>, usize), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.claim_due(now, max).await,
            Backend::Postgres(p) => {
                p.claim_due(now, max, p.sms_ready.load(Ordering::Relaxed))
                    .await
            }
        }
    }

    /// The dispatcher is done with a message [`Store::claim_due`] gave it (whatever became
    /// of it). PostgreSQL: the heartbeat renews the leases of claimed messages only until
    /// then, so one that a store outage left 'sending' is not held by this node forever.
    /// SQLite: nothing.
    pub fn release_claim(&self, message_id: &str) {
        if let Backend::Postgres(p) = &self.backend {
            p.release_claim(message_id);
        }
    }

    /// Whether this node has a ready modem (PostgreSQL: it claims SMS steps only then).
    pub fn set_sms_ready(&self, ready: bool) {
        if let Backend::Postgres(p) = &self.backend {
            p.sms_ready.store(ready, Ordering::Relaxed);
        }
    }

    /// PostgreSQL: this node's heartbeat (its `nodes` row, its leases renewed). SQLite: nothing.
    pub async fn heartbeat(&self, now: Timestamp) -> Result<(), StoreError> {
        if let Backend::Postgres(p) = &self.backend {
            p.heartbeat(now, p.sms_ready.load(Ordering::Relaxed))
                .await?;
        }
        Ok(())
    }

    /// How often [`Store::heartbeat`] should run: a third of the lease (None on SQLite).
    pub fn heartbeat_every(&self) -> Option<Duration> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(p.lease() / 3),
        }
    }

    /// This node and its peers' last heartbeats (None on SQLite: a single box).
    pub async fn nodes(&self) -> Result<Option<NodeView>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(p) => Ok(Some(NodeView {
                node: p.node().to_owned(),
                peers: p.nodes().await?,
            })),
        }
    }

    /// Whether other nodes share this store's queue (PostgreSQL): a step this node cannot
    /// carry goes back to the queue for a node that can.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// "sqlite" or "postgres", for the logs and STATUS.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Whether the velocity limits are counted here, in the accept transaction (PostgreSQL:
    /// each node's memory would see only its own share of a pair's traffic), rather than in
    /// this process's memory (`abuse::Velocity`, SQLite).
    pub fn counts_velocity(&self) -> bool {
        self.is_shared()
    }

    /// Accepts a message: checks idempotency and limits and inserts, atomically.
    pub async fn insert(
        &self,
        m: NewMessage,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<InsertResult, StoreError> {
        uncounted(self.insert_counted(m, limits, Vec::new()).await)
    }

    /// [`Store::insert`] with the message's velocity keys, counted in the same transaction
    /// where [`Store::counts_velocity`] (SQLite ignores them: its caller counted in memory).
    pub async fn insert_counted(
        &self,
        m: NewMessage,
        limits: Vec<(LimitScope, Rate)>,
        velocity: VelocityKeys,
    ) -> Result<Result<InsertResult, VelocityLimited>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.insert(m, limits).await.map(Ok),
            Backend::Postgres(p) => p.insert(m, limits, velocity).await,
        }
    }

    /// [`Store::insert_all`] with each message's velocity keys, in order.
    pub async fn insert_all_counted(
        &self,
        ms: Vec<NewMessage>,
        limits: Vec<(LimitScope, Rate)>,
        velocity: Vec<VelocityKeys>,
    ) -> Result<Result<BatchResult, VelocityLimited>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.insert_all(ms, limits).await.map(Ok),
            Backend::Postgres(p) => p.insert_all(ms, limits, velocity).await,
        }
    }

    /// Accepts several messages as one: each checked against the limits as if the ones
    /// before it were already stored, all inserted in one job of one commit, or none at all.
    /// A multi-recipient request must not send to the first number and then refuse the
    /// second: the caller's retry would send the first a second copy.
    pub async fn insert_all(
        &self,
        ms: Vec<NewMessage>,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<BatchResult, StoreError> {
        uncounted(self.insert_all_counted(ms, limits, Vec::new()).await)
    }

    /// When the next queued message becomes due, if any.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.next_due().await,
            Backend::Postgres(p) => p.next_due().await,
        }
    }

    /// Records an attempt at the moment it departs (the channel's last step before the
    /// irreversible write): an attempt left open by a crash may have been delivered.
    pub async fn start_attempt(
        &self,
        message_id: &str,
        channel: ChannelKind,
        purpose: AttemptPurpose,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.start_attempt(message_id, channel, purpose, now).await,
            Backend::Postgres(p) => p.start_attempt(message_id, channel, purpose, now).await,
        }
    }

    /// [`Store::start_attempt`] for a code that is really leaving: refused (`None`, nothing
    /// written) when its message ended meanwhile: a delivery receipt for the earlier channel
    /// arrived while the fallback waited for a modem, or its user said they did not ask for it.
    pub async fn depart_attempt(
        &self,
        message_id: &str,
        channel: ChannelKind,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.depart_attempt(message_id, channel, now).await,
            Backend::Postgres(p) => p.depart_attempt(message_id, channel, now).await,
        }
    }

    /// The departure of a pre-notice to `number`: marks the recipient pre-notified and opens
    /// the attempt in one commit, or answers `None` (and writes nothing) when another notice
    /// left first. A notice that never departed leaves the recipient unmarked, to be sent with
    /// a later code.
    pub async fn start_prenotice(
        &self,
        message_id: &str,
        number: &str,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.start_prenotice(message_id, number, now).await,
            Backend::Postgres(p) => p.start_prenotice(message_id, number, now).await,
        }
    }

    /// Records a channel the plan passed over, and why (e.g. "whatsapp disabled for client adfs").
    pub async fn record_skip(
        &self,
        message_id: &str,
        channel: ChannelKind,
        why: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.record_skip(message_id, channel, why, now).await,
            Backend::Postgres(p) => p.record_skip(message_id, channel, why, now).await,
        }
    }

    /// Applies a provider receipt to the attempt with that provider id (latest first).
    /// Returns what it changed; repeated and out-of-order receipts never move a message back.
    /// A delivery receipt for a code makes its message delivered by the receipt's channel
    /// (a late WhatsApp `delivered` after the SMS fallback says WhatsApp delivered it too);
    /// a receipt for a pre-notice never moves the code's message.
    pub async fn apply_receipt(
        &self,
        channel: ChannelKind,
        provider_id: String,
        status: ReceiptStatus,
        at: Timestamp,
    ) -> Result<Option<ReceiptEffect>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.apply_receipt(channel, provider_id, status, at).await,
            Backend::Postgres(p) => p.apply_receipt(channel, provider_id, status, at).await,
        }
    }

    /// The sent code messages (with their code) and the pending verifications for `number`:
    /// its user says they did not ask for a code. Both are canceled and the codes wiped, in
    /// one commit. Returns (codes canceled, verifications canceled).
    pub async fn cancel_not_requested(
        &self,
        number: &str,
        now: Timestamp,
    ) -> Result<(usize, usize), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.cancel_not_requested(number, now).await,
            Backend::Postgres(p) => p.cancel_not_requested(number, now).await,
        }
    }

    /// Whether `message_id` carries the code of a verification, and if so whether that
    /// verification is still waiting for its successful check.
    pub async fn verification_pending(&self, message_id: &str) -> Result<Option<bool>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.verification_pending(message_id).await,
            Backend::Postgres(p) => p.verification_pending(message_id).await,
        }
    }

    /// Pre-notices that are due (a first WhatsApp code was confirmed) and have not departed:
    /// the confirmed code's message, after a restart or a notice that never left.
    pub async fn due_prenotices(&self) -> Result<Vec<Message>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.due_prenotices().await,
            Backend::Postgres(p) => p.due_prenotices().await,
        }
    }

    /// What the store knows about a number.
    pub async fn recipient(&self, number: &str) -> Result<RecipientInfo, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.recipient(number).await,
            Backend::Postgres(p) => p.recipient(number).await,
        }
    }

    /// Every message stored after `since` (unix ms): recipient and accept time, newest first
    /// (the velocity by number block rebuilds its counts from it at start).
    pub async fn recipients_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.recipients_since(since).await,
            Backend::Postgres(p) => p.recipients_since(since).await,
        }
    }

    /// Verifications made after `since` whose outcome is known at `now` (the conversion
    /// breaker's input).
    pub async fn finished_verifications(
        &self,
        since: i64,
        now: i64,
    ) -> Result<Vec<super::FinishedVerification>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.finished_verifications(since, now).await,
            Backend::Postgres(p) => p.finished_verifications(since, now).await,
        }
    }

    /// A message and its attempts, if `client` sent it.
    pub async fn get(
        &self,
        id: &str,
        client: &str,
    ) -> Result<Option<(Message, Vec<Attempt>)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.get(id, client).await,
            Backend::Postgres(p) => p.get(id, client).await,
        }
    }

    /// A message's attempts, oldest first.
    pub async fn attempts(&self, message_id: &str) -> Result<Vec<Attempt>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.attempts(message_id).await,
            Backend::Postgres(p) => p.attempts(message_id).await,
        }
    }

    /// A message's current state.
    pub async fn state(
        &self,
        message_id: &str,
    ) -> Result<Option<(MessageState, Option<ChannelKind>)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.state(message_id).await,
            Backend::Postgres(p) => p.state(message_id).await,
        }
    }

    /// Number of messages waiting or in flight.
    pub async fn queue_depth(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.queue_depth().await,
            Backend::Postgres(p) => p.queue_depth().await,
        }
    }

    /// Start-up recovery. An attempt is opened only when it departs, so one left open by a
    /// crash may have been delivered: it becomes 'interrupted' and the dispatcher never repeats
    /// it on that channel. Every message still sending goes back to the queue; one whose
    /// attempt had not departed (it waited for a modem or the rate cap) has no trace of it and
    /// is simply sent again. Returns how many messages were recovered.
    pub async fn recover(&self, now: Timestamp) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.recover(now).await,
            Backend::Postgres(p) => p.recover(now).await,
        }
    }

    /// Housekeeping: wipes content no channel can need any more (sent and past expiry) and
    /// deletes finished messages older than `retention`. Returns rows purged.
    pub async fn housekeeping(
        &self,
        now: Timestamp,
        retention: Duration,
    ) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.housekeeping(now, retention).await,
            Backend::Postgres(p) => p.housekeeping(now, retention).await,
        }
    }

    /// Records how an attempt ended, remembers what it taught about the recipient and moves
    /// the message: one writer job, one commit, all or nothing. True when this made the
    /// recipient's pre-notice due (the caller sends it; [`Store::due_prenotices`] finds it
    /// again after a restart).
    pub async fn settle(
        &self,
        message: &Message,
        s: Settlement,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.settle(message, s, now).await,
            Backend::Postgres(p) => p.settle(message, s, now).await,
        }
    }

    /// [`Store::settle`] for a message known by its id and recipient (a receipt's).
    pub async fn settle_message(
        &self,
        id: &MessageId,
        recipient: &E164,
        s: Settlement,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.settle_message(id, recipient, s, now).await,
            Backend::Postgres(p) => p.settle_message(id, recipient, s, now).await,
        }
    }

    /// Records how an attempt ended.
    pub async fn finish_attempt(
        &self,
        attempt_id: i64,
        outcome: &Outcome,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.finish_attempt(attempt_id, outcome, now).await,
            Backend::Postgres(p) => p.finish_attempt(attempt_id, outcome, now).await,
        }
    }

    /// Moves a message to `state`. `keep_body` keeps the content for a possible later fallback
    /// (a provider accepted it but a failure receipt may still come); otherwise it is wiped.
    pub async fn finish(
        &self,
        message_id: &str,
        state: MessageState,
        channel: Option<ChannelKind>,
        reason: Option<String>,
        keep_body: bool,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                db.finish(message_id, state, channel, reason, keep_body, now)
                    .await
            }
            Backend::Postgres(p) => {
                p.finish(message_id, state, channel, reason, keep_body, now)
                    .await
            }
        }
    }

    /// Puts a message back in the queue to be tried at `at` (if it is sending or sent).
    pub async fn requeue(
        &self,
        message_id: &str,
        at: Timestamp,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.requeue(message_id, at, reason).await,
            Backend::Postgres(p) => p.requeue(message_id, at, reason).await,
        }
    }

    /// Creates a verification and its message atomically; older pending verifications of the
    /// same client for the same number are canceled (and their undelivered codes withdrawn).
    pub async fn create_verification(
        &self,
        v: NewVerification,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<InsertResult, StoreError> {
        uncounted(
            self.create_verification_counted(v, limits, Vec::new())
                .await,
        )
    }

    /// [`Store::create_verification`] with its message's velocity keys.
    pub async fn create_verification_counted(
        &self,
        v: NewVerification,
        limits: Vec<(LimitScope, Rate)>,
        velocity: VelocityKeys,
    ) -> Result<Result<InsertResult, VelocityLimited>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.create_verification(v, limits).await.map(Ok),
            Backend::Postgres(p) => p.create_verification(v, limits, velocity).await,
        }
    }

    /// A verification, if `client` made it.
    pub async fn verification(
        &self,
        id: &str,
        client: &str,
    ) -> Result<Option<Verification>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.verification(id, client).await,
            Backend::Postgres(p) => p.verification(id, client).await,
        }
    }

    /// Checks a candidate (as its keyed hash): counts the attempt, compares in constant time,
    /// and on success marks the verification used so it never approves twice.
    pub async fn check_verification(
        &self,
        id: &str,
        client: &str,
        candidate: [u8; 32],
        max_attempts: u32,
        now: Timestamp,
    ) -> Result<CheckOutcome, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                db.check_verification(id, client, candidate, max_attempts, now)
                    .await
            }
            Backend::Postgres(p) => {
                p.check_verification(id, client, candidate, max_attempts, now)
                    .await
            }
        }
    }

    /// Replaces the code of a pending verification with a new one and its message (a resend),
    /// within `max_sends`. Returns the new message's insert result, or why there was none.
    pub async fn resend_verification(
        &self,
        id: &str,
        client: &str,
        code_hash: [u8; 32],
        message: NewMessage,
        max_sends: u32,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<Resend, StoreError> {
        let counted = self.resend_verification_counted(
            id,
            client,
            code_hash,
            message,
            max_sends,
            limits,
            Vec::new(),
        );
        uncounted(counted.await)
    }

    /// [`Store::resend_verification`] with the new message's velocity keys.
    #[allow(clippy::too_many_arguments)]
    pub async fn resend_verification_counted(
        &self,
        id: &str,
        client: &str,
        code_hash: [u8; 32],
        message: NewMessage,
        max_sends: u32,
        limits: Vec<(LimitScope, Rate)>,
        velocity: VelocityKeys,
    ) -> Result<Result<Resend, VelocityLimited>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db
                .resend_verification(id, client, code_hash, message, max_sends, limits)
                .await
                .map(Ok),
            Backend::Postgres(p) => {
                p.resend_verification(id, client, code_hash, message, max_sends, limits, velocity)
                    .await
            }
        }
    }
}
