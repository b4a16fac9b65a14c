//! Wiring: opens the store, builds the channels, starts the dispatcher and the listeners, and
//! speaks to systemd (READY after bind, STATUS lines, a watchdog that pings only while the
//! loops make progress, RELOADING on SIGHUP, STOPPING on SIGTERM).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::App;
use crate::api::listener::{self, ConnStats, ListenSettings};
use crate::channel::sms::pool::SmsPool;
use crate::channel::whatsapp::WhatsAppChannel;
use crate::channel::{Channel, ChannelKind, Receipt};
use crate::clock::SharedClock;
use crate::config::{self, Config, Live, Sources};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error("store {path}: {source}")]
    Store {
        /// Database file.
        path: String,
        /// Cause.
        source: StoreError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {cause}; pick another address in server.listen")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause (not the error's `source`, which would print it a second time).
        cause: std::io::Error,
    },
    /// TLS files were unusable.
    #[error("{0}")]
    Tls(#[from] listener::TlsError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    /// A channel could not be built.
    #[error("channel {channel}: {reason}")]
    Channel {
        /// Which.
        channel: ChannelKind,
        /// Why.
        reason: String,
    },
}

/// Time requests and attempts in flight get to finish at shutdown.
pub const DRAIN: Duration = Duration::from_secs(10);

/// A running daemon.
pub struct Running {
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    /// Configuration in force.
    pub live: Arc<Live>,
    /// The store.
    pub store: Store,
    /// The dispatcher.
    pub dispatcher: Dispatcher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Connection counters.
    pub conn_stats: Arc<ConnStats>,
    settings: Arc<RwLock<ListenSettings>>,
    /// The configuration the process started with: what restart-only keys are compared to.
    boot: Arc<Config>,
    channels: Vec<Arc<dyn Channel>>,
    whatsapp: Option<Arc<WhatsAppChannel>>,
    sms: Option<Arc<SmsPool>>,
    /// Wakes the token-expiry watcher when a reload changes the WhatsApp token.
    token_recheck: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Channels and the receipt queue they report into.
pub struct ChannelSet {
    /// The channels, in no particular order (the policy orders them).
    pub channels: Vec<Arc<dyn Channel>>,
    /// Receipts from the channels (and the webhook) to the dispatcher.
    pub receipts_rx: mpsc::Receiver<Receipt>,
    /// The sending side, for the webhook front door.
    pub receipts_tx: mpsc::Sender<Receipt>,
    /// The WhatsApp channel itself, for its webhook and live reloads.
    pub whatsapp: Option<Arc<WhatsAppChannel>>,
    /// The modem pool itself, for the watchdog and shutdown.
    pub sms: Option<Arc<SmsPool>>,
}

impl ChannelSet {
    /// A set of ready-made channels (tests, the demo).
    pub fn of(channels: Vec<Arc<dyn Channel>>) -> ChannelSet {
        let (receipts_tx, receipts_rx) = mpsc::channel(1024);
        ChannelSet {
            channels,
            receipts_rx,
            receipts_tx,
            whatsapp: None,
            sms: None,
        }
    }
}

/// Builds the channels the configuration asks for.
pub async fn build_channels(cfg: &Config, clock: &SharedClock) -> Result<ChannelSet, DaemonError> {
    let mut set = ChannelSet::of(Vec::new());
    if cfg.whatsapp.enabled {
        let wa = WhatsAppChannel::with_clock(&cfg.whatsapp, set.receipts_tx.clone(), clock.clone())
            .map_err(|e| DaemonError::Channel {
                channel: ChannelKind::WhatsApp,
                reason: e.to_string(),
            })?;
        let wa = Arc::new(wa);
        set.channels.push(wa.clone());
        set.whatsapp = Some(wa);
    }
    if !cfg.modems.is_empty() {
        let pool = Arc::new(SmsPool::start(
            cfg.modems.clone(),
            set.receipts_tx.clone(),
            clock.clone(),
        ));
        set.channels.push(pool.clone());
        set.sms = Some(pool);
    }
    Ok(set)
}

/// Opens the store, recovers, binds every listener and starts serving. Returns once ready.
pub async fn start(
    cfg: Config,
    clock: SharedClock,
    set: ChannelSet,
) -> Result<Running, DaemonError> {
    let store = open_store(&cfg, &clock).await?;
    crate::phone::warm_up(cfg.otp.default_country);
    let settings = Arc::new(RwLock::new(ListenSettings::from_config(&cfg.server)?));
    let (listeners, addrs) = bind_all(&cfg.server.listen)?;
    let metrics = Arc::new(Metrics::new());
    crate::expiry::record(&metrics, &crate::expiry::files(&cfg, &cfg));
    let max_connections = cfg.server.max_connections;
    let live = Live::new(cfg);
    let dispatcher = Dispatcher::new(
        store.clone(),
        clock.clone(),
        live.clone(),
        set.channels.clone(),
        metrics.clone(),
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(dispatcher.clone().run(
        set.receipts_rx,
        shutdown_rx.clone(),
        DRAIN,
    )));
    let token_recheck = Arc::new(Notify::new());
    if set.whatsapp.is_some() {
        tasks.push(tokio::spawn(crate::channel::whatsapp::token::watch(
            live.get().whatsapp.clone(),
            live.clone(),
            metrics.clone(),
            clock.clone(),
            token_recheck.clone(),
            shutdown_rx.clone(),
        )));
    }
    let app = Arc::new(App {
        live: live.clone(),
        store: store.clone(),
        clock,
        dispatcher: dispatcher.clone(),
        metrics: metrics.clone(),
        whatsapp: set.whatsapp.clone(),
        ephemeral_verify_key: crate::secret::Secret::new(hex::encode(rand::random::<[u8; 32]>())),
        abuse: Arc::default(),
    });
    // Before the first request: a restart must not reset the number-block counts.
    rebuild_limits(&app).await;
    let conn_stats = Arc::new(ConnStats::default());
    for l in listeners {
        tasks.push(tokio::spawn(listener::serve(
            l,
            app.clone(),
            settings.clone(),
            max_connections,
            conn_stats.clone(),
            shutdown_rx.clone(),
            DRAIN,
        )));
    }
    // A pair on PostgreSQL (issue 19): this node's heartbeat renews its leases and tells
    // the peers whether it has a ready modem (only then does it claim SMS steps).
    if let Some(every) = store.heartbeat_every() {
        let beat = heartbeat(&app, set.sms.clone(), every, shutdown_rx.clone());
        tasks.push(tokio::spawn(beat));
    }
    // --- RADIUS front door (issue 16): UDP listeners when [radius] is enabled. ---
    let radius = crate::radius::start(app.clone(), shutdown_rx.clone()).await;
    tasks.extend(radius.map_err(|(addr, cause)| DaemonError::Bind { addr, cause })?);
    // --- end RADIUS ---
    Ok(Running {
        whatsapp: set.whatsapp,
        sms: set.sms,
        token_recheck,
        addrs,
        boot: live.get(),
        live,
        store,
        dispatcher,
        metrics,
        conn_stats,
        settings,
        channels: set.channels,
        shutdown,
        tasks,
    })
}

/// Binds every HTTP listen address; returns the listeners and the addresses they got.
fn bind_all(listen: &[SocketAddr]) -> Result<(Vec<TcpListener>, Vec<SocketAddr>), DaemonError> {
    let mut listeners = Vec::new();
    for addr in listen {
        let l = bind(*addr).map_err(|cause| DaemonError::Bind { addr: *addr, cause })?;
        listeners.push(l);
    }
    let addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    Ok((listeners, addrs))
}

/// Counts the number blocks' recent sends again from the outbox; a failure leaves them empty.
async fn rebuild_limits(app: &App) {
    match app
        .abuse
        .rebuild(&app.store, &app.live.get(), app.clock.now().0)
        .await
    {
        Ok(n) if n > 0 => tracing::info!(
            sends = n,
            "limits.per_prefix: counts rebuilt from the outbox"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "limits.per_prefix: cannot rebuild the counts; they start empty")
        }
    }
}

/// The PostgreSQL node's heartbeat until shutdown. A missed beat is logged and tried again
/// at the next tick: the lease is three beats long.
fn heartbeat(
    app: &App,
    sms: Option<Arc<SmsPool>>,
    every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use crate::channel::Channel;
    let (store, clock) = (app.store.clone(), app.clock.clone());
    async move {
        loop {
            store.set_sms_ready(sms.as_ref().is_some_and(|p| p.health().usable));
            if let Err(e) = store.heartbeat(clock.now()).await {
                tracing::error!(error = %e, "store: heartbeat failed; this node's leases run out unless the next one succeeds");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// Opens the store and resumes what was in flight when the daemon last stopped.
async fn open_store(cfg: &Config, clock: &SharedClock) -> Result<Store, DaemonError> {
    let failed = |source| DaemonError::Store {
        path: match &cfg.store.backend {
            crate::config::StoreBackend::Sqlite => cfg.store.path.display().to_string(),
            crate::config::StoreBackend::Postgres(pg) => pg.url.clone(),
        },
        source,
    };
    let store = Store::open_config(&cfg.store).await.map_err(failed)?;
    let recovered = store.recover(clock.now()).await.map_err(failed)?;
    if recovered > 0 {
        tracing::warn!(
            count = recovered,
            "resuming messages that were in flight when the daemon stopped"
        );
    }
    Ok(store)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// What a reload did: key paths (`otp.org`, `modems.modem0.smsc`), as [`config::diff`] names them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes that took effect.
    pub applied: Vec<String>,
    /// Changes that need a restart to take effect.
    pub need_restart: Vec<String>,
}

impl ReloadReport {
    /// The report of a reload from `now` (the configuration in force against the new one) and
    /// `pending` (the one the process started with against the new one). A restart-only key
    /// stays reported on every reload until the restart happens; one set back to its value at
    /// start is in force again, so it counts as applied.
    pub fn from_changes(now: &[config::diff::Change], pending: &[config::diff::Change]) -> Self {
        use config::diff::Verdict;
        let waits = |key: &str| {
            pending
                .iter()
                .any(|c| c.key == key && c.verdict == Verdict::NeedsRestart)
        };
        ReloadReport {
            applied: now
                .iter()
                .filter(|c| c.verdict == Verdict::Applied || !waits(&c.key))
                .map(|c| c.key.clone())
                .collect(),
            need_restart: pending
                .iter()
                .filter(|c| c.verdict == Verdict::NeedsRestart)
                .map(|c| c.key.clone())
                .collect(),
        }
    }
}

impl Running {
    /// Applies a new, already validated configuration: what can change live does, the rest is
    /// reported as needing a restart.
    pub fn apply(&self, new: Config) -> Result<ReloadReport, DaemonError> {
        let old = self.live.get();
        let now = config::diff::changes(&old, &new);
        let pending = config::diff::changes(&self.boot, &new);
        let mut r = ReloadReport::from_changes(&now, &pending);
        // A WhatsApp channel handed in ready-made (tests, the demo) starts and stops live.
        if self.whatsapp.is_some()
            && let Some(i) = r.need_restart.iter().position(|k| k == "whatsapp.enabled")
        {
            let k = r.need_restart.remove(i);
            if now.iter().any(|c| c.key == k) {
                r.applied.push(k);
            }
        }
        if let Some(wa) = &self.whatsapp
            && now.iter().any(|c| c.key.starts_with("whatsapp."))
            && let Err(e) = wa.reload(&new.whatsapp)
        {
            r.need_restart.push(format!("whatsapp ({e})"));
        }
        // TLS: the files are read again even when their paths did not change (a renewed
        // certificate), and the next connection picks them up.
        let settings = ListenSettings::from_config(&new.server)?;
        if let Ok(mut s) = self.settings.write() {
            *s = settings;
        }
        crate::expiry::record(&self.metrics, &crate::expiry::files(&new, &self.boot));
        // The watcher reads the configuration in force: it is woken once that is the new one.
        let recheck = now.iter().any(|c| {
            [
                "whatsapp.token_file",
                "whatsapp.api_base",
                "whatsapp.enabled",
            ]
            .contains(&c.key.as_str())
        });
        if new.server.tls.is_some() && !r.applied.iter().any(|k| k.starts_with("server.tls")) {
            r.applied
                .push("server.tls (certificate files read again)".into());
        }
        self.live.set(new);
        if recheck {
            self.token_recheck.notify_one();
        }
        Ok(r)
    }

    /// One line for `systemctl status`: readiness, channels, queue.
    pub async fn status_line(&self) -> String {
        let mut parts = vec!["ready".to_string()];
        for (kind, h) in self.dispatcher.health() {
            parts.push(format!("{kind} {}", h.summary));
        }
        if self.channels.is_empty() {
            parts.push("no channels".into());
        }
        let cfg = self.live.get();
        if cfg.whatsapp.enabled && !cfg.receipts_configured() {
            // Short: systemd shows one line; check-config and /readyz explain it.
            parts.push("whatsapp delivery unconfirmed (no webhook)".into());
        }
        if let Ok(d) = self.store.queue_depth().await {
            parts.push(format!("queue {d}"));
        }
        // RADIUS (issue 16): the directory's reachability.
        if let Some(p) = self.metrics.ldap_problem() {
            parts.push(format!("ldap: {p}"));
        }
        parts.join("; ")
    }

    /// Progress counters of every loop the watchdog vouches for: the dispatcher, then each
    /// modem owner. A loop is wedged when its counter stops moving.
    pub fn liveness(&self) -> Vec<(String, u64)> {
        let mut v = vec![("dispatcher".to_string(), self.dispatcher.progress())];
        if let Some(pool) = &self.sms {
            v.extend(pool.progress());
        }
        v
    }

    /// Stops accepting, lets requests and attempts in flight finish (bounded), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(pool) = &self.sms {
            pool.shutdown().await;
        }
        // Every acknowledged write is already committed; the checkpoint copies the WAL into
        // the database and empties it, so wiped codes do not outlive the process in its frames.
        match self.store.checkpoint().await {
            Ok(true) => tracing::debug!("store: WAL checkpointed and truncated"),
            Ok(false) => tracing::warn!("store: WAL busy at shutdown; not truncated"),
            Err(e) => tracing::warn!(error = %e, "store: checkpoint at shutdown failed"),
        }
        tracing::info!(
            open = self.conn_stats.open.load(Ordering::Relaxed),
            "stopped"
        );
    }
}

/// Runs until SIGTERM/SIGINT, reloading on SIGHUP; speaks sd_notify when under systemd.
pub async fn run_until_signalled(sources: Sources, running: Running) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let status_path = reload_status_path();
    let mut generation = 0u64;
    // Generation 0 tells `otpgate reload` which process owns the file before any reload.
    write_reload_status(&status_path, &ReloadStatus::started());
    let status = running.status_line().await;
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    tracing::info!(addrs = ?running.addrs, "ready");
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut last_progress = running.liveness();
    let mut snapshot_at = tokio::time::Instant::now();
    let mut moving = true;
    let mut last_status = status;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                generation += 1;
                let verdict = reload(&sources, &running).await;
                write_reload_status(&status_path, &ReloadStatus::of(generation, &verdict));
            }
            _ = interval.tick() => {
                let p = running.liveness();
                // Ping only while every loop moves (the dispatcher and each modem owner, which
                // ticks once a second even when idle or unplugged): a wedged one gets us restarted.
                // Judged over at least 2 s, since the modem heartbeat ticks once a second.
                if snapshot_at.elapsed() >= Duration::from_secs(2) {
                    moving = p.len() == last_progress.len()
                        && p.iter().zip(&last_progress).all(|((_, now), (_, before))| now != before);
                    last_progress = p;
                    snapshot_at = tokio::time::Instant::now();
                }
                // The store probe matters too: with the database locked by someone else the
                // loop still turns (each claim gives up after SQLite's busy timeout), but
                // nothing is delivered, and a restart is the honest answer.
                if watchdog.is_some() && moving && store_takes_writes(&running, tick).await {
                    notify(&[NotifyState::Watchdog]);
                }
                let s = running.status_line().await;
                if s != last_status {
                    notify(&[NotifyState::Status(&s)]);
                    last_status = s;
                }
            }
        }
    }
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing requests and attempts in flight"),
    ]);
    tracing::info!("stopping");
    running.shutdown().await;
    Ok(())
}

async fn reload(sources: &Sources, running: &Running) -> ReloadVerdict {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(m) = NotifyState::monotonic_usec_now() {
        states.push(m);
    }
    // One datagram: systemd matches RELOADING=1 to the MONOTONIC_USEC= sent with it.
    notify(&states);
    let fresh = Sources {
        main: sources.main.clone(),
        env: std::env::vars()
            .filter(|(k, _)| k.starts_with("OTPGATE__"))
            .collect(),
    };
    let verdict = match config::load(&fresh) {
        Ok(new) => {
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            match running.apply(new) {
                Ok(r) => {
                    tracing::info!(applied = ?r.applied, need_restart = ?r.need_restart, "configuration reloaded");
                    if r.need_restart.is_empty() {
                        ReloadVerdict::Applied(r)
                    } else {
                        ReloadVerdict::NeedsRestart(r)
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload failed; the previous configuration stays in force");
                    ReloadVerdict::Rejected(vec![e.to_string()])
                }
            }
        }
        Err(e) => {
            for i in &e.0 {
                tracing::error!("{i}");
            }
            tracing::error!(
                errors = e.0.len(),
                "invalid configuration; the previous configuration stays in force"
            );
            ReloadVerdict::Rejected(e.0.iter().map(ToString::to_string).collect())
        }
    };
    let status = running.status_line().await;
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    verdict
}

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(states)
    {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Whether the store writer takes the write lock within `within` (the watchdog's probe).
async fn store_takes_writes(running: &Running, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, running.store.ping()).await,
        Ok(Ok(()))
    )
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadVerdict {
    /// The new configuration took effect entirely.
    Applied(ReloadReport),
    /// It took effect, except for the keys that need a restart.
    NeedsRestart(ReloadReport),
    /// It was rejected and the previous configuration stays in force; the errors.
    Rejected(Vec<String>),
}

/// Overrides where the daemon writes, and `otpgate reload` reads, the reload status file.
pub const RELOAD_STATUS_ENV: &str = "OTPGATE_RELOAD_STATUS";

/// The reload status file: `$OTPGATE_RELOAD_STATUS`, else `reload.status` in systemd's
/// `$RUNTIME_DIRECTORY`, else `/run/otpgate/reload.status` (the unit's RuntimeDirectory).
pub fn reload_status_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(RELOAD_STATUS_ENV) {
        return p.into();
    }
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .map(std::path::PathBuf::from)
        // systemd passes a colon-separated list when a unit has several; ours has one.
        .and_then(|d| {
            d.to_str()
                .and_then(|s| s.split(':').next())
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| std::path::PathBuf::from("/run/otpgate"));
    dir.join("reload.status")
}

/// The content of the reload status file: which daemon, which reload, and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// 0 at start, then one more per SIGHUP.
    pub generation: u64,
    /// `started`, `applied`, `restart` (applied, some keys need a restart) or `rejected`.
    pub result: String,
    /// Details: what was applied, what needs a restart, or the errors.
    pub details: Vec<String>,
}

impl ReloadStatus {
    fn started() -> Self {
        ReloadStatus {
            pid: std::process::id(),
            generation: 0,
            result: "started".into(),
            details: Vec::new(),
        }
    }

    fn of(generation: u64, v: &ReloadVerdict) -> Self {
        let report = |r: &ReloadReport| -> Vec<String> {
            if r.applied.is_empty() && r.need_restart.is_empty() {
                return vec!["no changes".into()];
            }
            let applied = r.applied.iter().map(|k| format!("applied: {k}"));
            let restart = r
                .need_restart
                .iter()
                .map(|k| format!("needs a restart: {k}"));
            applied.chain(restart).collect()
        };
        let (result, details) = match v {
            ReloadVerdict::Applied(r) => ("applied", report(r)),
            ReloadVerdict::NeedsRestart(r) => ("restart", report(r)),
            ReloadVerdict::Rejected(errors) => ("rejected", errors.clone()),
        };
        ReloadStatus {
            pid: std::process::id(),
            generation,
            result: result.into(),
            details,
        }
    }

    /// The file format: `pid N`, `generation N`, `result WORD`, then one detail per line.
    pub fn render(&self) -> String {
        let mut s = format!(
            "pid {}\ngeneration {}\nresult {}\n",
            self.pid, self.generation, self.result
        );
        for d in &self.details {
            // One detail per line: a newline inside one would forge a field.
            s.push_str(&d.replace('\n', " "));
            s.push('\n');
        }
        s
    }

    /// Parses [`ReloadStatus::render`]'s output; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let pid = lines.next()?.strip_prefix("pid ")?.parse().ok()?;
        let generation = lines.next()?.strip_prefix("generation ")?.parse().ok()?;
        let result = lines.next()?.strip_prefix("result ")?.to_string();
        Some(ReloadStatus {
            pid,
            generation,
            result,
            details: lines.map(str::to_owned).collect(),
        })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &std::path::Path) -> Option<Self> {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| Self::parse(&t))
    }
}

/// Writes the status atomically (temp file, then rename) so a reader never sees half of it.
/// Best effort: without a runtime directory (run by hand) there is simply no file.
fn write_reload_status(path: &std::path::Path, status: &ReloadStatus) {
    let Some(dir) = path.parent() else { return };
    if !dir.is_dir() {
        return;
    }
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, status.render()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the reload status");
    }
}

/// Why `otpgate reload` could not get a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRequestError {
    /// No pid given and none in the status file.
    #[error("no daemon pid: pass --pid, or check that otpgate runs ({0} has none)")]
    NoPid(String),
    /// The signal could not be sent.
    #[error("cannot signal pid {pid}: {source}")]
    Signal {
        /// Target.
        pid: i32,
        /// Cause.
        source: nix::Error,
    },
    /// The daemon wrote no newer status in time.
    #[error(
        "pid {pid} wrote no reload result to {path} within {secs} s (is it otpgate, and does it see the same status file?)"
    )]
    Timeout {
        /// Target.
        pid: i32,
        /// Status file.
        path: String,
        /// Waited.
        secs: u64,
    },
}

/// Sends SIGHUP to the daemon and waits for its verdict in the status file at `path`.
/// `pid`: the daemon; `None` takes the pid recorded in the status file.
pub fn request_reload(
    pid: Option<i32>,
    path: &std::path::Path,
    timeout: Duration,
) -> Result<ReloadStatus, ReloadRequestError> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let before = ReloadStatus::read(path);
    let pid = match (pid, &before) {
        (Some(p), _) => p,
        (None, Some(s)) => i32::try_from(s.pid)
            .map_err(|_| ReloadRequestError::NoPid(path.display().to_string()))?,
        (None, None) => return Err(ReloadRequestError::NoPid(path.display().to_string())),
    };
    // A file left by another process says nothing about this one's reloads.
    let seen = before
        .filter(|s| i64::from(s.pid) == i64::from(pid))
        .map_or(0, |s| s.generation);
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .map_err(|source| ReloadRequestError::Signal { pid, source })?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = ReloadStatus::read(path)
            && i64::from(s.pid) == i64::from(pid)
            && s.generation > seen
        {
            return Ok(s);
        }
        if std::time::Instant::now() >= deadline {
            return Err(ReloadRequestError::Timeout {
                pid,
                path: path.display().to_string(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod reload_status_tests {
    use super::*;

    #[test]
    fn status_round_trips_and_flattens_newlines() {
        let s = ReloadStatus {
            pid: 42,
            generation: 3,
            result: "rejected".into(),
            details: vec!["a: bad\nresult applied".into(), "b".into()],
        };
        let back = ReloadStatus::parse(&s.render()).unwrap();
        assert_eq!(back.generation, 3);
        assert_eq!(back.result, "rejected");
        assert_eq!(back.details, vec!["a: bad result applied", "b"]);
        assert!(ReloadStatus::parse("garbage").is_none());
    }
}

#[cfg(test)]
mod reload_report_tests {
    use super::*;
    use crate::config::diff::{Change, Verdict};

    fn ch(key: &str, verdict: Verdict) -> Change {
        Change {
            key: key.into(),
            verdict,
        }
    }

    #[test]
    fn restart_only_keys_stay_reported_until_the_restart() {
        use Verdict::{Applied, NeedsRestart};
        let rows: Vec<(&str, Vec<Change>, Vec<Change>, ReloadReport)> = vec![
            ("nothing", vec![], vec![], ReloadReport::default()),
            (
                "first reload moves the listener and the org",
                vec![ch("server.listen", NeedsRestart), ch("otp.org", Applied)],
                vec![ch("server.listen", NeedsRestart), ch("otp.org", Applied)],
                ReloadReport {
                    applied: vec!["otp.org".into()],
                    need_restart: vec!["server.listen".into()],
                },
            ),
            (
                "a later reload still waits for the listener",
                vec![ch("limits.global", Applied)],
                vec![
                    ch("server.listen", NeedsRestart),
                    ch("limits.global", Applied),
                ],
                ReloadReport {
                    applied: vec!["limits.global".into()],
                    need_restart: vec!["server.listen".into()],
                },
            ),
            (
                "the listener set back to its value at start is in force again",
                vec![ch("server.listen", NeedsRestart)],
                vec![],
                ReloadReport {
                    applied: vec!["server.listen".into()],
                    need_restart: vec![],
                },
            ),
            (
                "a modem setting is named, never dropped",
                vec![ch("modems.modem0.smsc", NeedsRestart)],
                vec![ch("modems.modem0.smsc", NeedsRestart)],
                ReloadReport {
                    applied: vec![],
                    need_restart: vec!["modems.modem0.smsc".into()],
                },
            ),
        ];
        for (name, now, pending, want) in rows {
            assert_eq!(ReloadReport::from_changes(&now, &pending), want, "{name}");
        }
    }

    #[test]
    fn the_status_lists_applied_and_restart_keys() {
        let r = ReloadReport {
            applied: vec!["otp.org".into()],
            need_restart: vec!["modems.modem0.smsc".into()],
        };
        let s = ReloadStatus::of(1, &ReloadVerdict::NeedsRestart(r));
        assert_eq!(
            s.details,
            vec!["applied: otp.org", "needs a restart: modems.modem0.smsc"]
        );
        let s = ReloadStatus::of(2, &ReloadVerdict::Applied(ReloadReport::default()));
        assert_eq!(s.details, vec!["no changes"]);
    }
}
