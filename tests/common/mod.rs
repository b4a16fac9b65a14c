//! Test support shared by every test file: the one wait helper ([`wait_for`]), the config
//! builder ([`TestConfig`], in the library so benches and the demo use it too), a gateway
//! running in-process on loopback with a real SQLite file ([`gateway`]) and a scripted channel
//! standing in for the real ones where a test is about the spine, the real binary as a child
//! process ([`Launch`], [`Daemon`]), and a capture of every log line ([`capture_logs`]).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use otpgate::channel::{BoxFuture, Channel, ChannelKind, Delivery, Health, Outcome};
use otpgate::clock::SharedClock;
use otpgate::config::{Config, Sources};
use otpgate::daemon::{ChannelSet, Running};
#[allow(unused_imports)]
pub use otpgate::sim::config::{TestConfig, free_port};

/// Hang guard for anything a test waits for; never a speed assertion.
pub const GUARD: Duration = Duration::from_secs(30);

/// What a [`wait_for`] probe answers: done (with a value) or not yet (with what it saw).
pub trait Probe {
    /// What the wait returns once done.
    type Value;
    /// `Ok` when done; `Err` with a description of the state otherwise (may be empty).
    fn check(self) -> Result<Self::Value, String>;
}

impl Probe for bool {
    type Value = ();
    fn check(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Probe for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `probe` until it is done and returns its value; after [`GUARD`] it panics naming
/// `what` and the last state the probe reported. The one polling loop of the test suite.
pub async fn wait_for<P: Probe>(what: impl Display, mut probe: impl AsyncFnMut() -> P) -> P::Value {
    let t0 = tokio::time::Instant::now();
    loop {
        match probe().await.check() {
            Ok(v) => return v,
            Err(seen) if t0.elapsed() >= GUARD => {
                let seen = if seen.is_empty() {
                    String::new()
                } else {
                    format!("; last seen: {seen}")
                };
                panic!("waited {GUARD:?} for {what}{seen}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A channel that answers from a script.
pub struct TestChannel {
    pub kind: ChannelKind,
    script: Mutex<VecDeque<Outcome>>,
    default: Mutex<Outcome>,
    pub sent: Mutex<Vec<Delivery>>,
    pub usable: AtomicBool,
    pub delay: Mutex<Duration>,
}

impl TestChannel {
    pub fn new(kind: ChannelKind) -> Arc<Self> {
        Arc::new(TestChannel {
            kind,
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Outcome::Accepted {
                provider_id: String::new(),
            }),
            sent: Mutex::new(Vec::new()),
            usable: AtomicBool::new(true),
            delay: Mutex::new(Duration::ZERO),
        })
    }
    pub fn push(&self, o: Outcome) {
        self.script.lock().unwrap().push_back(o);
    }
    pub fn set_default(&self, o: Outcome) {
        *self.default.lock().unwrap() = o;
    }
    pub fn sent(&self) -> Vec<Delivery> {
        self.sent.lock().unwrap().clone()
    }
    pub fn codes(&self) -> Vec<Delivery> {
        self.sent()
            .into_iter()
            .filter(|d| matches!(d.content, otpgate::channel::Content::Code { .. }))
            .collect()
    }
}

impl Channel for TestChannel {
    fn kind(&self) -> ChannelKind {
        self.kind
    }
    fn send<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            self.sent.lock().unwrap().push(d.clone());
            let n = self.sent.lock().unwrap().len();
            let next = self.script.lock().unwrap().pop_front();
            match next.unwrap_or_else(|| self.default.lock().unwrap().clone()) {
                Outcome::Accepted { provider_id } if provider_id.is_empty() => Outcome::Accepted {
                    provider_id: format!("{}-{n}", self.kind),
                },
                o => o,
            }
        })
    }
    fn health(&self) -> Health {
        let usable = self.usable.load(Ordering::SeqCst);
        Health {
            usable,
            summary: if usable { "ok".into() } else { "down".into() },
            parts: vec![],
        }
    }
}

/// A client key the test configs accept, and its name.
pub const KEY: &str = "test-key-0123456789";
pub const CLIENT: &str = "idp";

/// The config the in-process gateway runs on: WhatsApp configured but never reached (the test
/// supplies the channels), the test client, then `extra` (see [`TestConfig::extra`]).
pub fn write_config(dir: &Path, extra: &str) -> (PathBuf, Config) {
    let main = TestConfig::new(dir)
        .org("ACME")
        .whatsapp_unused()
        .client(CLIENT, KEY)
        .extra(extra)
        .write()
        .unwrap();
    let cfg = load(&main);
    (main, cfg)
}

/// Loads a config file as the daemon would, without the process environment.
pub fn load(main: &Path) -> Config {
    otpgate::config::load(&Sources {
        main: main.to_path_buf(),
        env: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A gateway running in this process.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub running: Option<Running>,
    pub wa: Arc<TestChannel>,
    pub sms: Arc<TestChannel>,
    pub http: reqwest::Client,
}

/// A manual clock standing at the real now.
pub fn manual_clock() -> Arc<otpgate::clock::ManualClock> {
    use otpgate::clock::Clock;
    otpgate::clock::ManualClock::new(otpgate::clock::SystemClock.now())
}

/// Sends a request; its status and body text.
pub async fn fetch(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Sends a request; its status and JSON body (the text as a JSON string if it is not JSON).
pub async fn fetch_json(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let (s, text) = fetch(req).await;
    (
        s,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// A client for plain HTTP to the gateway on loopback.
pub fn http_client() -> reqwest::Client {
    // No request may hang a test (and CI) forever: twice the guard is far beyond any answer.
    otpgate::sim::tls::loopback_client()
        .unwrap()
        .timeout(2 * GUARD)
        .build()
        .unwrap()
}

pub async fn gateway(extra: &str) -> Gateway {
    gateway_with_clock(extra, Arc::new(otpgate::clock::SystemClock)).await
}

pub async fn gateway_with_clock(extra: &str, clock: SharedClock) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let (_, cfg) = write_config(dir.path(), extra);
    let wa = TestChannel::new(ChannelKind::WhatsApp);
    let sms = TestChannel::new(ChannelKind::Sms);
    let set = ChannelSet::of(vec![
        wa.clone() as Arc<dyn Channel>,
        sms.clone() as Arc<dyn Channel>,
    ]);
    let running = otpgate::daemon::start(cfg, clock, set).await.unwrap();
    let base = format!("http://{}", running.addrs[0]);
    Gateway {
        dir,
        base,
        running: Some(running),
        wa,
        sms,
        http: http_client(),
    }
}

impl Gateway {
    pub async fn post(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_path("/v1/messages", body).await
    }
    pub async fn post_path(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.base);
        fetch_json(self.http.post(url).bearer_auth(KEY).json(&body)).await
    }
    pub async fn get(&self, id: &str) -> (u16, serde_json::Value) {
        let url = format!("{}/v1/messages/{id}", self.base);
        fetch_json(self.http.get(url).bearer_auth(KEY)).await
    }
    /// Waits until the message's status answer satisfies `pred`, and returns it.
    pub async fn wait_until(
        &self,
        id: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(format!("message {id} to reach the state"), async || {
            let (_, v) = self.get(id).await;
            if pred(&v) { Ok(v) } else { Err(v) }
        })
        .await
    }
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The `otpgate` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_otpgate");

/// How to start `otpgate run` as a child process.
pub struct Launch {
    config: PathBuf,
    addr: String,
    rust_log: String,
    env: Vec<(OsString, OsString)>,
}

impl Launch {
    /// `otpgate run` on the config `cfg` wrote (its `listen` must be a fixed port), logging
    /// at TRACE, outside systemd.
    pub fn new(cfg: &TestConfig) -> Launch {
        Launch {
            config: cfg.path(),
            addr: cfg.addr().to_string(),
            rust_log: "trace".into(),
            env: Vec::new(),
        }
    }

    /// The RUST_LOG filter.
    pub fn rust_log(mut self, filter: &str) -> Launch {
        self.rust_log = filter.into();
        self
    }

    /// One more environment variable (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, ...).
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the daemon and returns at once, as systemd would: the test decides what
    /// "started" means (a READY=1 datagram, a log line).
    pub fn spawn(self) -> Daemon {
        let mut cmd = Command::new("sh");
        // sd_notify only honours WATCHDOG_USEC when WATCHDOG_PID is the daemon's own pid,
        // which is known only once it runs: the shell exports its pid and execs in place.
        cmd.arg("-c")
            .arg(r#"export WATCHDOG_PID=$$; exec "$0" run --config "$1""#)
            .arg(BIN)
            .arg(&self.config)
            .env("RUST_LOG", &self.rust_log)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Daemon {
            child,
            addr: self.addr,
            log,
        }
    }

    /// Starts the daemon and waits until its port accepts connections (for a daemon that
    /// logs too little to say so).
    pub async fn listening(self) -> Daemon {
        let d = self.spawn();
        wait_for(format!("the daemon to listen on {}", d.addr), async || {
            std::net::TcpStream::connect(&d.addr).map_err(|e| format!("{e}; log:\n{}", d.log()))
        })
        .await;
        d
    }

    /// Starts the daemon and waits until it logs that it is ready (listening).
    pub async fn ready(self) -> Daemon {
        let d = self.spawn();
        d.wait_logged("the daemon's \"ready\" line", |l| {
            l.lines()
                .any(|l| l.contains("ready") && l.contains("addrs"))
        })
        .await;
        d
    }
}

/// A running `otpgate` process; killed when dropped.
pub struct Daemon {
    pub child: Child,
    /// Where it listens, "127.0.0.1:PORT".
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its base URL over plain HTTP.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its listening port.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Sends it a signal.
    pub fn signal(&self, s: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), s).unwrap();
    }

    /// SIGKILL, and reaps it.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits until its stderr satisfies `pred`.
    pub async fn wait_logged(&self, what: &str, pred: impl Fn(&str) -> bool) {
        wait_for(what, async || {
            let log = self.log();
            if pred(&log) {
                Ok(())
            } else {
                Err(format!("log:\n{log}"))
            }
        })
        .await
    }

    /// Waits for it to exit and returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for("the daemon to exit", async || {
            match child.try_wait().unwrap() {
                Some(st) => Ok(st.code()),
                None => Err(format!("log:\n{}", log.lock().unwrap())),
            }
        })
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs (once per test binary) a global TRACE subscriber writing into a buffer, with the
/// `log` bridge, so owner tasks, simulator threads and reqwest/rustls/hyper records land there.
pub fn capture_logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let w = buf.clone();
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish()
            .try_init()
            .unwrap();
        buf
    })
}
