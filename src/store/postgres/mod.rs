//! The PostgreSQL backend: several otpgate nodes share one outbox, so limits, idempotency
//! keys, verifications and the pre-notice record hold across the pair.
//!
//! What lives where (the seams of the SQLite side):
//! - this file: connecting (pool, TLS, timeouts), errors, the node's name;
//! - `tls`: `sslmode` with rustls; [`schema`]: tables and migrations under an advisory lock;
//! - `messages`: accept (limits counted in the shared table under advisory locks on their
//!   keys, idempotency), reading messages and attempts;
//! - `claim`: claims with `FOR UPDATE SKIP LOCKED` and a lease, taking back expired leases,
//!   SMS steps only on a node with a modem, attempts' openings, heartbeats, housekeeping;
//! - `settle`: an attempt's end and its message's move in one transaction, receipts,
//!   cancellations, recipients; `verify`: Verify rows, checks locked per row.
//!
//! Every write is one transaction that has committed before the caller hears back
//! (`synchronous_commit` stays at the server's default, on): a 202 means the row is on the
//! primary's disk, and on its standby's when the server waits for one.

mod claim;
mod messages;
pub mod schema;
mod settle;
mod tls;
mod verify;

pub use claim::Peer;

use std::collections::HashSet;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error as PgError, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;
use crate::config::{PostgresConfig, SslMode};

/// Every statement through a prepared statement cached on its connection. The driver
/// otherwise prepares a statement given as text anew on each call, a round trip of its own
/// before the one that runs it: half the round trips of every claim, departure and
/// settlement were these.
pub(crate) trait Cached: GenericClient {
    /// `query`, prepared once per connection.
    async fn q(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, PgError> {
        let st = self.prepare_cached(sql).await?;
        self.query(&st, p).await
    }

    /// `query_opt`, prepared once per connection.
    async fn q_opt(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, PgError> {
        let st = self.prepare_cached(sql).await?;
        self.query_opt(&st, p).await
    }

    /// `query_one`, prepared once per connection.
    async fn q_one(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        let st = self.prepare_cached(sql).await?;
        self.query_one(&st, p).await
    }

    /// `execute`, prepared once per connection.
    async fn exec(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        let st = self.prepare_cached(sql).await?;
        self.execute(&st, p).await
    }
}

impl<T: GenericClient> Cached for T {}

/// The PostgreSQL outbox, behind a small connection pool; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    node: String,
    lease: Duration,
    /// When this node last looked for run-out leases and lifetimes (unix ms).
    swept_at: Arc<AtomicI64>,
    /// The messages this node claimed and is still working on: the only leases its
    /// heartbeat renews.
    working: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// This box's host name: the default `store.node`.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// A driver error as a [`StoreError`]: the server's message and SQLSTATE, never its DETAIL
/// (a constraint violation's detail quotes the row, and the row can hold a code).
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            StoreError::Postgres(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
        }
        None => {
            // The driver's own errors ("error connecting to server") keep the cause below.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            StoreError::Postgres(why)
        }
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::Unreachable(other.to_string()),
    }
}

/// The driver's configuration: the URL (sslmode already taken out), the password, the
/// timeouts, and a name that shows in `pg_stat_activity`.
fn driver_config(cfg: &PostgresConfig) -> Result<tokio_postgres::Config, StoreError> {
    let mut pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Postgres(format!("store.url: {e}")))?;
    if let Some(p) = &cfg.password {
        pg.password(p.expose());
    }
    pg.ssl_mode(match cfg.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    pg.connect_timeout(cfg.connect_timeout);
    pg.application_name(format!("otpgate/{}", cfg.node));
    pg.options(format!(
        "-c statement_timeout={}",
        cfg.statement_timeout.as_millis()
    ));
    Ok(pg)
}

impl PgStore {
    /// Connects, migrates (under the migration lock) and keeps a pool of `pool_size`.
    pub async fn open(cfg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(cfg)?;
        let mut conn = store.conn().await?;
        schema::migrate(&mut conn).await?;
        Ok(store)
    }

    /// The pool without touching the database (connections are made on first use).
    fn connect(cfg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let tls = MakeRustlsConnect::new(tls::client_config(cfg)?);
        let manager = Manager::from_config(
            driver_config(cfg)?,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(usize::try_from(cfg.pool_size).unwrap_or(8).max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout + cfg.statement_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(|e| StoreError::Unreachable(e.to_string()))?;
        Ok(PgStore {
            pool,
            node: cfg.node.clone(),
            lease: cfg.lease,
            swept_at: Arc::new(AtomicI64::new(0)),
            working: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// `otpgate migrate`: brings the schema up to date; returns the versions before and after.
    pub async fn migrate(cfg: &PostgresConfig) -> Result<(i64, i64), StoreError> {
        let store = PgStore::connect(cfg)?;
        let mut conn = store.conn().await?;
        let found = schema::migrate(&mut conn).await?;
        Ok((found, schema::CURRENT_VERSION))
    }

    /// The schema version in the database, changing nothing (0: empty database).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        schema::version(&*self.conn().await?).await
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The dispatcher is done with a claimed message: its lease is no longer renewed.
    pub fn release_claim(&self, message_id: &str) {
        if let Ok(mut w) = self.working.lock() {
            w.remove(message_id);
        }
    }

    /// The claimed messages still worked on here.
    fn working(&self) -> Vec<String> {
        self.working
            .lock()
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How long a claim holds a message.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Proves a connection can be had and the server answers (for /readyz).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.conn()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}
