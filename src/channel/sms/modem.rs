//! One modem, one owner: a tokio task that owns the serial port and `select!`s between send
//! requests, incoming bytes (URCs are handled as they arrive) and the health-probe timer.
//!
//! The port is opened exclusively with `serialport` (8N1, no flow control), then its fd is set
//! non-blocking and registered with tokio's reactor through [`AsyncFd`], so no thread blocks on
//! the modem. The task initialises the modem per the reference sequence, keeps a stable state
//! word for /readyz, recovers from hangs (ESC, AT, ATZ, AT+CFUN=1,1, re-init) and from unplugs
//! (reopen the same configured path with back-off), and turns +CDS status reports into
//! [`Receipt`]s (acknowledged with AT+CNMA on phase 2+ modems). Modem output goes through
//! [`super::at`]'s `LineReader` and `Dialogue`, so echo, the `> ` prompt, URCs inside answers
//! and stale results are told apart in one tested place. The text of an SMS never reaches a log
//! line, an error or a reason string.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::channel::sms::at::{
    CmsClass, Dialogue, Event, FinalResult, LineReader, PinState, Registration, Urc, classify_cme,
    classify_cms, parse_cmgs, parse_cops, parse_cpin, parse_creg, parse_csca, parse_csq,
};
use crate::channel::sms::pdu;
use crate::channel::{ChannelKind, Receipt, ReceiptStatus, ReceiptTx};
use crate::clock::SharedClock;
use crate::config::ModemConfig;

/// Unsolicited lines kept between two looks at them; a flood beyond this is dropped.
const MAX_UNSOLICITED: usize = 256;
/// First and longest wait between attempts to reopen a lost port.
const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// How long a sent message waits for its status report.
const REPORT_WINDOW: Duration = Duration::from_secs(72 * 3600);
/// Sent messages remembered for status-report matching.
const MAX_TRACKED: usize = 1024;
/// How long shutdown waits for an owner task before aborting it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Time given to the owner beyond a delivery's budget to report what happened.
const GRACE: Duration = Duration::from_secs(2);

/// A modem's state, as a stable word for /readyz and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModemState {
    /// Opening or initialising.
    Starting,
    /// Registered and able to send.
    Ready,
    /// No SIM inserted or the SIM failed.
    NoSim,
    /// The SIM asks for a PIN and none is configured.
    PinNeeded,
    /// The configured PIN was rejected; it is not tried again until the config changes.
    PinRejected,
    /// The SIM is locked and needs its PUK.
    PukNeeded,
    /// Not registered on a network (or registration denied).
    NotRegistered,
    /// The modem stopped answering; being reset.
    NoAnswer,
    /// The port is gone (unplugged); reopening with back-off.
    Unplugged,
    /// Anything else (no SMSC, PDU mode refused, a modem-side CMS error).
    Error,
}

impl ModemState {
    /// The stable word.
    pub fn as_str(self) -> &'static str {
        match self {
            ModemState::Starting => "starting",
            ModemState::Ready => "ready",
            ModemState::NoSim => "no_sim",
            ModemState::PinNeeded => "pin_needed",
            ModemState::PinRejected => "pin_rejected",
            ModemState::PukNeeded => "puk_needed",
            ModemState::NotRegistered => "not_registered",
            ModemState::NoAnswer => "no_answer",
            ModemState::Unplugged => "unplugged",
            ModemState::Error => "error",
        }
    }
}

impl fmt::Display for ModemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the owner task last knew about its modem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModemStatus {
    /// Current state.
    pub state: ModemState,
    /// Signal from the last AT+CSQ.
    pub signal_dbm: Option<i32>,
    /// Operator from AT+COPS?.
    pub operator: Option<String>,
    /// Why the state is what it is (last error, hint).
    pub detail: String,
    /// AT+CGMI.
    pub manufacturer: Option<String>,
    /// AT+CGMM.
    pub model: Option<String>,
    /// AT+CGSN.
    pub imei: Option<String>,
}

impl Default for ModemStatus {
    fn default() -> Self {
        ModemStatus {
            state: ModemState::Starting,
            signal_dbm: None,
            operator: None,
            detail: String::new(),
            manufacturer: None,
            model: None,
            imei: None,
        }
    }
}

/// Why a port could not be used; the messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModemError {
    /// EACCES on open.
    #[error(
        "{}: permission denied; add the user running otpgate to the 'dialout' group",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    /// EBUSY or the exclusive lock is held.
    #[error(
        "{}: busy, another process holds the port (often ModemManager: add a udev rule with ENV{{ID_MM_DEVICE_IGNORE}}=\"1\")",
        .0.display()
    )]
    Busy(PathBuf),
    /// ENOENT.
    #[error("{}: no such device; stable paths are under /dev/serial/by-id/", .0.display())]
    NotFound(PathBuf),
    /// Opened, but nothing answered AT.
    #[error("{}: no answer to AT within {:?} (wrong port or baud rate, or the modem is hung)", .0.display(), .1)]
    NoAnswer(PathBuf, Duration),
    /// Any other failure opening or setting up the port.
    #[error("{}: cannot open: {}", .0.display(), .1)]
    Open(PathBuf, String),
    /// The port failed while talking to the modem.
    #[error("port error: {0}")]
    Io(#[from] std::io::Error),
}

/// One message for one modem.
#[derive(Clone)]
pub struct SendJob {
    /// For logs only.
    pub message_id: String,
    /// Recipient in E.164 with '+'.
    pub to: String,
    /// The text (contains the code: never logged).
    pub text: String,
    /// Validity period to put in the PDU.
    pub validity: Duration,
    /// When the caller stops waiting.
    pub deadline: Instant,
}

impl fmt::Debug for SendJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SendJob({}, {} chars)",
            self.message_id,
            self.text.chars().count()
        )
    }
}

/// What one modem made of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendResult {
    /// Every part got a +CMGS; `provider_id` is `"modem0/42"`: modem name / TP-MR of the last part.
    Accepted {
        /// Id used to match status reports.
        provider_id: String,
    },
    /// Nothing conclusive went out (or a transient network error): another try is safe.
    Transient {
        /// "CMS 331" etc.
        code: Option<String>,
        /// Explanation.
        reason: String,
    },
    /// The network refused this message for good (e.g. CMS 1 unassigned number).
    Permanent {
        /// "CMS 1" etc.
        code: Option<String>,
        /// Explanation.
        reason: String,
    },
    /// The modem or its SIM is at fault; it was taken out of service, try another.
    Sick {
        /// Error code.
        code: Option<String>,
        /// Explanation.
        reason: String,
    },
    /// The message was handed over but no answer came: it may have gone out.
    Unknown {
        /// Explanation.
        reason: String,
    },
    /// The modem was not ready.
    NotReady {
        /// Its state.
        state: ModemState,
    },
}

enum Request {
    Send {
        job: SendJob,
        claim: Arc<AtomicU8>,
        reply: oneshot::Sender<SendResult>,
    },
    Shutdown,
}

const PENDING: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Handle on one modem's owner task.
pub struct Modem {
    name: String,
    tx: mpsc::Sender<Request>,
    status: Arc<Mutex<ModemStatus>>,
    progress: Arc<AtomicU64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Modem {
    /// Spawns the owner task for `cfg` on the current tokio runtime.
    pub fn spawn(cfg: ModemConfig, receipts: ReceiptTx, clock: SharedClock) -> Modem {
        let (tx, rx) = mpsc::channel(16);
        let status = Arc::new(Mutex::new(ModemStatus::default()));
        let progress = Arc::new(AtomicU64::new(0));
        let owner = Owner {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            receipts,
            clock,
            status: status.clone(),
            progress: progress.clone(),
            rx,
            concat_ref: 0,
            tracked: VecDeque::new(),
            pin_rejected: false,
            huawei: false,
            cnma: false,
            acks_due: 0,
        };
        let task = tokio::spawn(owner.run());
        Modem {
            name: cfg.name,
            tx,
            status,
            progress,
            task: Mutex::new(Some(task)),
        }
    }

    /// The configured name ("modem0").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A snapshot of the modem's status.
    pub fn status(&self) -> ModemStatus {
        lock(&self.status).clone()
    }

    /// The heartbeat: bumped on every turn of the owner loop, at least once a second unless
    /// the task is inside one modem exchange (bounded by command_timeout / send_timeout).
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Sends one message through this modem; resolves by `job.deadline` plus a short grace.
    pub async fn send(&self, job: SendJob) -> SendResult {
        let deadline = job.deadline;
        let claim = Arc::new(AtomicU8::new(PENDING));
        let (reply, answer) = oneshot::channel();
        let req = Request::Send {
            job,
            claim: claim.clone(),
            reply,
        };
        match tokio::time::timeout_at(deadline, self.tx.send(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return SendResult::NotReady {
                    state: ModemState::Error,
                };
            }
            Err(_) => {
                return SendResult::Transient {
                    code: None,
                    reason: format!("{} busy: queue full until the deadline", self.name),
                };
            }
        }
        match tokio::time::timeout_at(deadline + GRACE, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) => {
                // Whether anything went out depends on whether the owner had started.
                if claim
                    .compare_exchange(PENDING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    SendResult::Transient {
                        code: None,
                        reason: format!("{} did not take the message in time", self.name),
                    }
                } else {
                    SendResult::Unknown {
                        reason: format!("{} gave no result within the budget", self.name),
                    }
                }
            }
        }
    }

    /// Asks the owner task to close the port and waits for it to end; a task still busy after
    /// a few seconds (a send waiting on the network) is aborted, which closes the port too.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.tx.send(Request::Shutdown)).await;
        let task = lock(&self.task).take();
        if let Some(mut t) = task {
            if tokio::time::timeout(SHUTDOWN_WAIT, &mut t).await.is_err() {
                warn!(modem = %self.name, "owner task busy at shutdown; aborted");
                t.abort();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The port

/// The serial port, kept as `TTYPort` so its Drop clears TIOCEXCL and releases the lock.
struct PortFd(serialport::TTYPort);

impl AsRawFd for PortFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for PortFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to the TTYPort inside `self` and stays open as long as `self`
        // lives, which the returned borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

#[derive(Debug)]
enum LinkError {
    Timeout,
    Lost(std::io::Error),
}

/// A final result, as this module reasons about it (error codes reduced to their numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Final {
    Ok,
    Error,
    Cme(Option<u16>),
    Cms(Option<u16>),
    NotSupported,
    NoCarrier,
}

impl From<FinalResult> for Final {
    fn from(f: FinalResult) -> Final {
        match f {
            FinalResult::Ok => Final::Ok,
            FinalResult::Error => Final::Error,
            FinalResult::CmeError(c) => Final::Cme(c.number()),
            FinalResult::CmsError(c) => Final::Cms(c.number()),
            FinalResult::NoCarrier => Final::NoCarrier,
            FinalResult::CommandNotSupport => Final::NotSupported,
        }
    }
}

impl fmt::Display for Final {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Final::Ok => f.write_str("OK"),
            Final::Error => f.write_str("ERROR"),
            Final::Cme(Some(n)) => write!(f, "CME {n}"),
            Final::Cme(None) => f.write_str("CME ?"),
            Final::Cms(Some(n)) => write!(f, "CMS {n}"),
            Final::Cms(None) => f.write_str("CMS ?"),
            Final::NotSupported => f.write_str("COMMAND NOT SUPPORT"),
            Final::NoCarrier => f.write_str("NO CARRIER"),
        }
    }
}

struct Reply {
    info: Vec<String>,
    fin: Final,
}

impl Reply {
    fn ok(&self) -> bool {
        self.fin == Final::Ok
    }

    /// The first info line some parser accepts.
    fn parse<T>(&self, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        self.info.iter().find_map(|l| f(l))
    }

    /// The first info line, for commands answered with a bare value (AT+CGMI).
    fn value(&self) -> Option<String> {
        if !self.ok() {
            return None;
        }
        self.info.first().map(|l| {
            // Some modems prefix the value with the command name ("+CGMI: Quectel").
            let v = match l.split_once(':') {
                Some((p, v)) if p.starts_with('+') => v,
                _ => l.as_str(),
            };
            v.trim().trim_matches('"').to_string()
        })
    }
}

/// The command's name for logs, never its arguments (a PIN).
fn command_name(cmd: &str) -> &str {
    let end = cmd.find(['=', '?']).unwrap_or(cmd.len());
    &cmd[..end]
}

/// The open port with at.rs's reader and dialogue state: answer events for the pending
/// command in `events`, URCs in `unsolicited` (both bounded, whatever the modem sends).
struct Conn {
    fd: AsyncFd<PortFd>,
    reader: LineReader,
    dialogue: Dialogue,
    events: VecDeque<Event>,
    unsolicited: VecDeque<Urc>,
}

impl Conn {
    fn open(device: &Path, baud: u32) -> Result<Conn, ModemError> {
        let port = serialport::new(device.to_string_lossy(), baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .flow_control(serialport::FlowControl::None)
            .open_native()
            .map_err(|e| open_error(device, e))?;
        let port = PortFd(port);
        let flags = fcntl(port.as_fd(), FcntlArg::F_GETFL)
            .map_err(|e| ModemError::Open(device.to_path_buf(), e.to_string()))?;
        fcntl(
            port.as_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| ModemError::Open(device.to_path_buf(), e.to_string()))?;
        // SAFETY: PortFd owns its TTYPort, whose fd stays open and unchanged until it drops.
        let fd = unsafe { AsyncFd::register(port) }.map_err(std::io::Error::from)?;
        Ok(Conn {
            fd,
            reader: LineReader::new(),
            dialogue: Dialogue::new(),
            events: VecDeque::new(),
            unsolicited: VecDeque::new(),
        })
    }

    /// Waits for bytes and runs them through the reader and the dialogue. Cancel-safe: it
    /// only awaits readiness, the read itself does not wait.
    async fn fill(&mut self) -> Result<(), LinkError> {
        let mut tmp = [0u8; 1024];
        loop {
            let mut guard = self.fd.readable().await.map_err(LinkError::Lost)?;
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), &mut tmp).map_err(std::io::Error::from)
            }) {
                Ok(Ok(0)) => {
                    return Err(LinkError::Lost(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "hang-up",
                    )));
                }
                Ok(Ok(n)) => {
                    self.absorb(&tmp[..n]);
                    return Ok(());
                }
                Ok(Err(e)) => return Err(LinkError::Lost(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn absorb(&mut self, bytes: &[u8]) {
        self.reader.push(bytes);
        loop {
            self.reader.expect_prompt(self.dialogue.expects_prompt());
            let Some(token) = self.reader.next() else {
                break;
            };
            let answering = self.dialogue.pending().is_some();
            for ev in self.dialogue.feed(token) {
                match ev {
                    Event::Urc(u) => {
                        if self.unsolicited.len() >= MAX_UNSOLICITED {
                            self.unsolicited.pop_front();
                        }
                        self.unsolicited.push_back(u);
                    }
                    Event::Echo => {}
                    // With nothing pending this is a late answer to an abandoned command.
                    _ if !answering => {}
                    ev => {
                        if self.events.len() >= MAX_UNSOLICITED {
                            self.events.pop_front();
                        }
                        self.events.push_back(ev);
                    }
                }
            }
        }
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Event, LinkError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            tokio::select! {
                r = self.fill() => r?,
                _ = tokio::time::sleep_until(deadline) => return Err(LinkError::Timeout),
            }
        }
    }

    async fn write_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), LinkError> {
        while !bytes.is_empty() {
            let mut guard = tokio::select! {
                g = self.fd.writable() => g.map_err(LinkError::Lost)?,
                _ = tokio::time::sleep_until(deadline) => return Err(LinkError::Timeout),
            };
            match guard.try_io(|inner| {
                nix::unistd::write(inner.get_ref(), bytes).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(LinkError::Lost(e)),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Starts an exchange: earlier answer events are stale.
    fn begin(&mut self, cmd: &str) {
        self.events.clear();
        self.dialogue.begin(cmd);
    }

    /// Gives up on the pending exchange; its late lines will be ignored.
    fn abandon(&mut self) {
        self.dialogue.abandon();
        self.events.clear();
    }

    /// Runs one command and collects its answer; URCs met on the way are queued.
    async fn command(&mut self, cmd: &str, timeout: Duration) -> Result<Reply, LinkError> {
        let deadline = Instant::now() + timeout;
        trace!(command = command_name(cmd), "AT");
        self.begin(cmd);
        let r = self.exchange(cmd, deadline).await;
        if r.is_err() {
            self.abandon();
        }
        r
    }

    async fn exchange(&mut self, cmd: &str, deadline: Instant) -> Result<Reply, LinkError> {
        self.write_all(format!("{cmd}\r").as_bytes(), deadline)
            .await?;
        let mut info = Vec::new();
        loop {
            match self.next_event(deadline).await? {
                Event::Info(l) => info.push(l),
                Event::Final(f) => {
                    return Ok(Reply {
                        info,
                        fin: f.into(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Best effort: ESC ends a half-open `>` prompt without sending.
    async fn escape(&mut self) -> Result<(), LinkError> {
        self.abandon();
        self.write_all(b"\x1b\r", Instant::now() + Duration::from_secs(1))
            .await
    }
}

fn open_error(device: &Path, e: serialport::Error) -> ModemError {
    use std::io::ErrorKind as K;
    let p = device.to_path_buf();
    match e.kind() {
        serialport::ErrorKind::NoDevice => ModemError::Busy(p),
        serialport::ErrorKind::Io(K::PermissionDenied) => ModemError::PermissionDenied(p),
        serialport::ErrorKind::Io(K::NotFound) => ModemError::NotFound(p),
        serialport::ErrorKind::Io(K::WouldBlock) => ModemError::Busy(p),
        _ => ModemError::Open(p, e.description),
    }
}

// ---------------------------------------------------------------------------------------------
// Answers, through at.rs's parsers (the modem's output is untrusted: everything is optional)

fn reg_stat(r: &Reply) -> Option<Registration> {
    r.parse(parse_creg)
}

fn reg_word(reg: Option<Registration>) -> String {
    match reg {
        Some(Registration::NotRegistered) => "not registered, not searching".into(),
        Some(Registration::Home) => "registered, home network".into(),
        Some(Registration::Searching) => "not registered, searching".into(),
        Some(Registration::Denied) => "registration denied".into(),
        Some(Registration::Roaming) => "registered, roaming".into(),
        Some(Registration::Unknown) => "unknown".into(),
        Some(Registration::Other(n)) => format!("stat {n}"),
        None => "no answer".into(),
    }
}

fn cms_reason(code: u16) -> &'static str {
    match code {
        1 => "unassigned (unallocated) number",
        8 | 10 => "operator barred the SIM",
        21 => "short message transfer rejected",
        22 | 322 => "memory full",
        27 => "destination out of service",
        38 => "network out of order",
        41 => "temporary failure",
        42 => "congestion",
        50 => "requested facility not subscribed",
        96 => "invalid mandatory information",
        300 => "modem failure",
        304 | 305 => "invalid PDU",
        310..=318 => "SIM problem",
        330 => "SMSC address unknown",
        331 => "no network service",
        332 => "network timeout",
        _ => "network refused the message",
    }
}

// ---------------------------------------------------------------------------------------------
// The owner task

struct Tracked {
    provider_id: String,
    to: String,
    pending: Vec<u8>,
    at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum News {
    Nothing,
    Registration,
    Rebooted,
}

enum Exit {
    Shutdown,
    Lost,
    NoAnswer,
    Reinit,
}

enum After {
    Nothing,
    Sick(String),
    Recover,
    Lost,
    Reinit,
}

struct Owner {
    name: String,
    cfg: ModemConfig,
    receipts: ReceiptTx,
    clock: SharedClock,
    status: Arc<Mutex<ModemStatus>>,
    progress: Arc<AtomicU64>,
    rx: mpsc::Receiver<Request>,
    concat_ref: u8,
    tracked: VecDeque<Tracked>,
    pin_rejected: bool,
    huawei: bool,
    /// The modem runs SMS phase 2+: each +CDS needs an AT+CNMA.
    cnma: bool,
    /// Status reports received and not yet acknowledged.
    acks_due: u32,
}

fn permanent(reason: String) -> SendResult {
    SendResult::Permanent { code: None, reason }
}

fn same_number(a: &str, b: &str) -> bool {
    a.trim_start_matches('+') == b.trim_start_matches('+')
}

impl Owner {
    fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn state(&self) -> ModemState {
        lock(&self.status).state
    }

    fn set_state(&self, state: ModemState, detail: impl Into<String>) {
        let detail = detail.into();
        let mut s = lock(&self.status);
        if s.state != state {
            info!(modem = %self.name, from = %s.state, to = %state, detail = %detail, "modem state");
        }
        s.state = state;
        s.detail = detail;
    }

    async fn run(mut self) {
        let mut backoff = REOPEN_MIN;
        loop {
            self.tick();
            match Conn::open(&self.cfg.device, self.cfg.baud) {
                Err(e) => {
                    let state = match e {
                        ModemError::PermissionDenied(_) | ModemError::Busy(_) => ModemState::Error,
                        _ => ModemState::Unplugged,
                    };
                    self.set_state(state, e.to_string());
                    if !self.idle_wait(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(REOPEN_MAX);
                }
                Ok(conn) => {
                    backoff = REOPEN_MIN;
                    debug!(modem = %self.name, "port opened");
                    self.set_state(ModemState::Starting, "port opened");
                    match self.session(conn).await {
                        Exit::Shutdown => return,
                        _ => self.set_state(ModemState::Unplugged, "port lost (unplugged?)"),
                    }
                }
            }
        }
    }

    /// Waits `d` while answering requests with NotReady; false when told to shut down.
    async fn idle_wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            self.tick();
            if Instant::now() >= until {
                return true;
            }
            // Wake at least every second so the heartbeat shows a live loop while waiting.
            let wake = until.min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                req = self.rx.recv() => match req {
                    None | Some(Request::Shutdown) => return false,
                    Some(Request::Send { reply, .. }) => {
                        let _ = reply.send(SendResult::NotReady { state: self.state() });
                    }
                },
            }
        }
    }

    async fn session(&mut self, mut conn: Conn) -> Exit {
        let mut backoff = Duration::from_secs(1);
        loop {
            let exit = match self.init(&mut conn).await {
                Err(LinkError::Lost(_)) => return Exit::Lost,
                Err(LinkError::Timeout) => Exit::NoAnswer,
                Ok(()) => self.serve(&mut conn).await,
            };
            match exit {
                Exit::Shutdown | Exit::Lost => return exit,
                Exit::Reinit => {}
                Exit::NoAnswer => {
                    self.set_state(ModemState::NoAnswer, "modem stopped answering; resetting");
                    match self.reset(&mut conn).await {
                        Ok(true) => backoff = Duration::from_secs(1),
                        Ok(false) => {
                            if !self.idle_wait(backoff).await {
                                return Exit::Shutdown;
                            }
                            backoff = (backoff * 2).min(REOPEN_MAX);
                        }
                        Err(LinkError::Lost(_)) => return Exit::Lost,
                        Err(LinkError::Timeout) => {}
                    }
                }
            }
        }
    }

    /// ESC, AT, then ATZ, then AT+CFUN=1,1: true once the modem answers again.
    async fn reset(&mut self, conn: &mut Conn) -> Result<bool, LinkError> {
        let t = self.cfg.command_timeout;
        conn.escape().await?;
        for cmd in ["AT", "ATZ", "AT+CFUN=1,1"] {
            match conn.command(cmd, t).await {
                Ok(r) if r.ok() => {
                    info!(modem = %self.name, command = cmd, "modem answers again");
                    if cmd == "AT+CFUN=1,1" {
                        // It reboots; the boot banner (or nothing) comes within seconds.
                        let _ = conn
                            .next_event(Instant::now() + Duration::from_secs(5))
                            .await;
                    }
                    return Ok(true);
                }
                Ok(_) | Err(LinkError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    async fn init(&mut self, conn: &mut Conn) -> Result<(), LinkError> {
        let t = self.cfg.command_timeout;
        conn.escape().await?;
        let mut alive = false;
        for _ in 0..3 {
            match conn.command("AT", t).await {
                Ok(r) if r.ok() => {
                    alive = true;
                    break;
                }
                Ok(_) | Err(LinkError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        if !alive {
            return Err(LinkError::Timeout);
        }
        conn.command("ATE0", t).await?;
        // Verbose result codes: at.rs does not take a bare digit for a final result.
        conn.command("ATV1", t).await?;
        conn.command("AT+CMEE=1", t).await?;
        if !self.check_sim(conn).await? {
            self.handle_unsolicited(conn);
            return Ok(());
        }
        let manufacturer = conn.command("AT+CGMI", t).await?.value();
        let model = conn.command("AT+CGMM", t).await?.value();
        conn.command("AT+CGMR", t).await?;
        let imei = conn.command("AT+CGSN", t).await?.value();
        conn.command("AT+CIMI", t).await?;
        self.huawei = manufacturer
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains("huawei"));
        let creg = conn.command("AT+CREG?", t).await?;
        let cereg = conn.command("AT+CEREG?", t).await?;
        let stat = reg_stat(&creg);
        let estat = reg_stat(&cereg);
        let registered =
            stat.is_some_and(Registration::is_usable) || estat.is_some_and(Registration::is_usable);
        let signal = conn.command("AT+CSQ", t).await?.parse(parse_csq);
        let operator = conn.command("AT+COPS?", t).await?.parse(parse_cops);
        {
            let mut s = lock(&self.status);
            s.manufacturer = manufacturer;
            s.model = model;
            s.imei = imei;
            s.signal_dbm = signal.and_then(|g| g.dbm());
            s.operator = operator.clone();
        }
        let cmgf = conn.command("AT+CMGF=0", t).await?;
        if !cmgf.ok() {
            self.set_state(
                ModemState::Error,
                format!("PDU mode refused (AT+CMGF=0: {})", cmgf.fin),
            );
            return Ok(());
        }
        let csca = conn.command("AT+CSCA?", t).await?;
        let smsc = csca.parse(parse_csca);
        if smsc.is_none() && self.cfg.smsc.is_none() {
            self.set_state(
                ModemState::Error,
                "no SMSC address on the SIM (AT+CSCA? is empty): set smsc in the modem config",
            );
            return Ok(());
        }
        if self.cfg.status_reports {
            let r = conn.command("AT+CNMI=2,1,0,1,0", t).await?;
            if !r.ok() {
                warn!(modem = %self.name, result = %r.fin, "status reports not available");
            }
            // Phase 2+ (AT+CSMS=1, some firmware's default) wants every +CDS acknowledged
            // with AT+CNMA, or the modem stops routing reports; phase 2 (0) must not ack.
            let csms = conn.command("AT+CSMS?", t).await?;
            self.cnma = csms
                .parse(|l| {
                    l.strip_prefix("+CSMS:")
                        .and_then(|v| v.split(',').next())
                        .and_then(|v| v.trim().parse::<u8>().ok())
                })
                .is_some_and(|service| service == 1);
        }
        if self.huawei {
            // Silences ^RSSI/^MODE/^BOOT chatter; older firmware refuses it, which is fine.
            conn.command("AT^CURC=0", t).await?;
        }
        self.handle_unsolicited(conn);
        if registered {
            self.set_state(ModemState::Ready, operator.unwrap_or_default());
        } else {
            self.set_state(
                ModemState::NotRegistered,
                format!("CREG: {}", reg_word(stat.or(estat))),
            );
        }
        Ok(())
    }

    /// AT+CPIN? and the PIN, once. Ok(false) when the SIM blocks further use.
    async fn check_sim(&mut self, conn: &mut Conn) -> Result<bool, LinkError> {
        let t = self.cfg.command_timeout;
        for round in 0..10 {
            let r = conn.command("AT+CPIN?", t).await?;
            // A +CME ERROR answer (10 not inserted, 13 failure...) says as much as +CPIN: does.
            let state = match &r.fin {
                Final::Ok => r.parse(parse_cpin),
                Final::Cme(Some(n)) => PinState::from_cme(*n),
                _ => None,
            };
            match state {
                Some(PinState::Ready) => return Ok(true),
                Some(PinState::SimPin) if round == 0 => {}
                Some(PinState::SimPin) | Some(PinState::NotReady) => {
                    // The PIN was taken but the SIM is not ready yet: give it a moment.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Some(PinState::SimPuk) => {
                    self.set_state(ModemState::PukNeeded, "SIM locked: it needs its PUK");
                    return Ok(false);
                }
                Some(PinState::NotInserted) => {
                    self.set_state(ModemState::NoSim, "no SIM inserted");
                    return Ok(false);
                }
                Some(PinState::Failure) => {
                    self.set_state(ModemState::NoSim, format!("SIM failure ({})", r.fin));
                    return Ok(false);
                }
                Some(other) => {
                    self.set_state(ModemState::Error, format!("SIM asks for {other:?}"));
                    return Ok(false);
                }
                None => {
                    self.set_state(ModemState::Error, format!("AT+CPIN? answered {}", r.fin));
                    return Ok(false);
                }
            }
            if self.pin_rejected {
                self.set_state(
                    ModemState::PinRejected,
                    "the configured PIN was rejected; not retried until the config changes",
                );
                return Ok(false);
            }
            let Some(pin) = self.cfg.pin.clone() else {
                self.set_state(
                    ModemState::PinNeeded,
                    "the SIM asks for a PIN; none configured",
                );
                return Ok(false);
            };
            let r = conn
                .command(&format!("AT+CPIN=\"{}\"", pin.expose()), t)
                .await?;
            if !r.ok() {
                // Never again: each wrong try brings the SIM closer to its PUK lock.
                self.pin_rejected = true;
                self.set_state(
                    ModemState::PinRejected,
                    format!("the configured PIN was rejected ({})", r.fin),
                );
                return Ok(false);
            }
            info!(modem = %self.name, "PIN accepted");
        }
        self.set_state(ModemState::Error, "SIM still not ready after 5 s");
        Ok(false)
    }

    async fn serve(&mut self, conn: &mut Conn) -> Exit {
        let mut next_probe = Instant::now() + self.cfg.probe_interval;
        loop {
            self.tick();
            match self.handle_unsolicited(conn) {
                News::Rebooted => return Exit::Reinit,
                // Look now rather than trust one URC: +CREG and +CEREG may disagree on LTE.
                News::Registration => next_probe = Instant::now(),
                News::Nothing => {}
            }
            while self.acks_due > 0 {
                self.acks_due -= 1;
                match conn.command("AT+CNMA", self.cfg.command_timeout).await {
                    Ok(_) => {}
                    Err(LinkError::Timeout) => return Exit::NoAnswer,
                    Err(LinkError::Lost(_)) => return Exit::Lost,
                }
            }
            tokio::select! {
                req = self.rx.recv() => match req {
                    None | Some(Request::Shutdown) => return Exit::Shutdown,
                    Some(Request::Send { job, claim, reply }) => {
                        let state = self.state();
                        if state != ModemState::Ready {
                            let _ = reply.send(SendResult::NotReady { state });
                            continue;
                        }
                        if claim
                            .compare_exchange(PENDING, STARTED, Ordering::SeqCst, Ordering::SeqCst)
                            .is_err()
                        {
                            continue;
                        }
                        let (result, after) = self.send(conn, &job).await;
                        let _ = reply.send(result);
                        match after {
                            After::Nothing => {}
                            After::Sick(detail) => {
                                self.set_state(ModemState::Error, detail);
                                next_probe = Instant::now() + self.cfg.probe_interval;
                            }
                            After::Recover => return Exit::NoAnswer,
                            After::Lost => return Exit::Lost,
                            After::Reinit => return Exit::Reinit,
                        }
                    }
                },
                r = conn.fill() => {
                    if r.is_err() {
                        return Exit::Lost;
                    }
                }
                // An idle loop still turns once a second, so the heartbeat tells idle from wedged.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(next_probe) => {
                    next_probe = Instant::now() + self.cfg.probe_interval;
                    match self.state() {
                        ModemState::Ready | ModemState::NotRegistered => {
                            match self.probe_health(conn).await {
                                Ok(()) => {}
                                Err(LinkError::Timeout) => return Exit::NoAnswer,
                                Err(LinkError::Lost(_)) => return Exit::Lost,
                            }
                        }
                        // SIM, SMSC or modem errors: look again from the start.
                        _ => return Exit::Reinit,
                    }
                }
            }
        }
    }

    async fn probe_health(&mut self, conn: &mut Conn) -> Result<(), LinkError> {
        let t = self.cfg.command_timeout;
        let creg = reg_stat(&conn.command("AT+CREG?", t).await?);
        let cereg = reg_stat(&conn.command("AT+CEREG?", t).await?);
        let signal = conn.command("AT+CSQ", t).await?.parse(parse_csq);
        lock(&self.status).signal_dbm = signal.and_then(|g| g.dbm());
        let usable = [creg, cereg].into_iter().flatten().find(|r| r.is_usable());
        if let Some(reg) = usable.or(creg).or(cereg) {
            self.registration(reg);
        }
        Ok(())
    }

    fn registration(&self, reg: Registration) {
        match (self.state(), reg.is_usable()) {
            (ModemState::Ready, false) => self.set_state(
                ModemState::NotRegistered,
                format!("CREG: {}", reg_word(Some(reg))),
            ),
            (ModemState::NotRegistered, true) => {
                let op = lock(&self.status).operator.clone().unwrap_or_default();
                self.set_state(ModemState::Ready, op);
            }
            _ => {}
        }
    }

    /// Handles queued URCs; says whether the modem rebooted or its registration changed.
    fn handle_unsolicited(&mut self, conn: &mut Conn) -> News {
        let mut news = News::Nothing;
        while let Some(urc) = conn.unsolicited.pop_front() {
            match urc {
                Urc::StatusReport { pdu_hex } => {
                    self.status_report(&pdu_hex);
                    if self.cnma {
                        self.acks_due = self.acks_due.saturating_add(1);
                    }
                }
                Urc::Boot => {
                    info!(modem = %self.name, "modem rebooted; initialising again");
                    news = News::Rebooted;
                }
                Urc::Registration { .. } => {
                    if news == News::Nothing {
                        news = News::Registration;
                    }
                }
                Urc::Signal(sig) => lock(&self.status).signal_dbm = sig.dbm(),
                Urc::Other(l) => {
                    // Only the URC's name: its arguments are untrusted and may be long.
                    let kind: String = l.split(':').next().unwrap_or("").chars().take(16).collect();
                    trace!(modem = %self.name, urc = %kind, "URC");
                }
                other => debug!(modem = %self.name, urc = ?other, "URC ignored"),
            }
        }
        news
    }

    fn status_report(&mut self, hex: &str) {
        let Ok(bytes) = hex::decode(hex) else {
            warn!(modem = %self.name, "status report is not hex");
            return;
        };
        let Ok(sr) = pdu::decode_status_report(&bytes) else {
            warn!(modem = %self.name, bytes = bytes.len(), "undecodable status report");
            return;
        };
        let now = Instant::now();
        self.tracked
            .retain(|t| now.saturating_duration_since(t.at) < REPORT_WINDOW);
        let mr = sr.message_reference;
        let Some(idx) = self
            .tracked
            .iter()
            .rposition(|t| t.pending.contains(&mr) && same_number(&t.to, &sr.recipient))
        else {
            debug!(modem = %self.name, mr, "status report for no known message");
            return;
        };
        let status = match sr.class {
            pdu::ReportClass::Delivered => {
                let t = &mut self.tracked[idx];
                t.pending.retain(|m| *m != mr);
                if !t.pending.is_empty() {
                    return;
                }
                ReceiptStatus::Delivered
            }
            pdu::ReportClass::Pending => ReceiptStatus::Pending,
            pdu::ReportClass::Failed => ReceiptStatus::Failed {
                code: Some(format!("ST {:#04x}", sr.status)),
            },
        };
        let provider_id = if matches!(status, ReceiptStatus::Pending) {
            self.tracked[idx].provider_id.clone()
        } else {
            match self.tracked.remove(idx) {
                Some(t) => t.provider_id,
                None => return,
            }
        };
        debug!(modem = %self.name, provider_id = %provider_id, status = sr.status, "status report");
        let receipt = Receipt {
            channel: ChannelKind::Sms,
            provider_id,
            status,
            at: self.clock.now(),
        };
        if self.receipts.try_send(receipt).is_err() {
            warn!(modem = %self.name, "receipt queue full or closed; status report dropped");
        }
    }

    async fn send(&mut self, conn: &mut Conn, job: &SendJob) -> (SendResult, After) {
        let opts = pdu::SubmitOptions {
            validity: job.validity,
            status_report: self.cfg.status_reports,
            smsc: self.cfg.smsc.clone(),
            concat_ref: self.concat_ref,
        };
        self.concat_ref = self.concat_ref.wrapping_add(1);
        let parts = match pdu::encode_submit(&job.to, &job.text, &opts) {
            Ok(p) if !p.is_empty() => p,
            // PduError's messages name only the kind of fault, never the text.
            Ok(_) => {
                return (
                    permanent("cannot encode the SMS: no parts".into()),
                    After::Nothing,
                );
            }
            Err(e) => {
                return (
                    permanent(format!("cannot encode the SMS: {e}")),
                    After::Nothing,
                );
            }
        };
        let total = parts.len();
        debug!(modem = %self.name, message_id = %job.message_id, parts = total, "sending SMS");
        let mut mrs = Vec::with_capacity(total);
        for (i, part) in parts.iter().enumerate() {
            match self.send_part(conn, job, part, i, total).await {
                Ok(mr) => mrs.push(mr),
                Err(fail) => return fail,
            }
        }
        let last = mrs.last().copied().unwrap_or(0);
        let provider_id = format!("{}/{}", self.name, last);
        if self.cfg.status_reports {
            if self.tracked.len() >= MAX_TRACKED {
                self.tracked.pop_front();
            }
            self.tracked.push_back(Tracked {
                provider_id: provider_id.clone(),
                to: job.to.clone(),
                pending: mrs,
                at: Instant::now(),
            });
        }
        debug!(modem = %self.name, message_id = %job.message_id, provider_id = %provider_id, "SMS accepted");
        (SendResult::Accepted { provider_id }, After::Nothing)
    }

    async fn send_part(
        &mut self,
        conn: &mut Conn,
        job: &SendJob,
        part: &pdu::SubmitPdu,
        i: usize,
        total: usize,
    ) -> Result<u8, (SendResult, After)> {
        let name = self.name.clone();
        let lost = |when: &str| {
            (
                SendResult::Transient {
                    code: None,
                    reason: format!("{name}: port lost {when}"),
                },
                After::Lost,
            )
        };
        // Before Ctrl-Z nothing has gone out: a failure here is safe to try again elsewhere.
        let prompt_deadline = (Instant::now() + self.cfg.command_timeout).min(job.deadline);
        let cmd = format!("AT+CMGS={}", part.tpdu_len);
        trace!(command = "AT+CMGS", octets = part.tpdu_len, "AT");
        conn.begin(&cmd);
        match conn
            .write_all(format!("{cmd}\r").as_bytes(), prompt_deadline)
            .await
        {
            Ok(()) => {}
            Err(LinkError::Lost(_)) => return Err(lost("before sending")),
            Err(LinkError::Timeout) => return Err(self.no_prompt(conn, i, total).await),
        }
        loop {
            match conn.next_event(prompt_deadline).await {
                Ok(Event::Prompt) => break,
                Ok(Event::Final(fin)) => return Err(self.refused(&fin.into(), i, total)),
                Ok(_) => {}
                Err(LinkError::Lost(_)) => return Err(lost("before sending")),
                Err(LinkError::Timeout) => return Err(self.no_prompt(conn, i, total).await),
            }
        }
        // From here the message may leave: any doubt is Unknown, never a resend.
        let unknown = |why: String| SendResult::Unknown {
            reason: format!("{name}: {why} after part {}/{total} was handed over", i + 1),
        };
        let hand_over = Instant::now() + self.cfg.command_timeout;
        let mut bytes = Vec::with_capacity(part.hex.len() + 1);
        bytes.extend_from_slice(part.hex.as_bytes());
        bytes.push(0x1a);
        match conn.write_all(&bytes, hand_over).await {
            Ok(()) => {}
            Err(LinkError::Lost(_)) => return Err((unknown("port lost".into()), After::Lost)),
            Err(LinkError::Timeout) => {
                return Err((unknown("write timed out".into()), After::Recover));
            }
        }
        let answer_deadline =
            (Instant::now() + self.cfg.send_timeout).min(job.deadline.max(hand_over));
        let mut mr = None;
        loop {
            match conn.next_event(answer_deadline).await {
                Ok(Event::Info(l)) => {
                    if let Some(m) = parse_cmgs(&l) {
                        mr = Some(m);
                    }
                }
                Ok(Event::Final(FinalResult::Ok)) => match mr {
                    Some(mr) => return Ok(mr),
                    None => {
                        return Err((
                            unknown("OK without a message reference".into()),
                            After::Nothing,
                        ));
                    }
                },
                Ok(Event::Final(fin)) => return Err(self.refused(&fin.into(), i, total)),
                Ok(_) => {}
                Err(LinkError::Lost(_)) => return Err((unknown("port lost".into()), After::Lost)),
                Err(LinkError::Timeout) => {
                    conn.abandon();
                    warn!(modem = %name, message_id = %job.message_id, part = i + 1, total, "no +CMGS after Ctrl-Z: outcome unknown");
                    return Err((unknown("no answer".into()), After::Recover));
                }
            }
        }
    }

    async fn no_prompt(&mut self, conn: &mut Conn, i: usize, total: usize) -> (SendResult, After) {
        let _ = conn.escape().await;
        warn!(modem = %self.name, part = i + 1, total, "no prompt for AT+CMGS");
        (
            SendResult::Transient {
                code: None,
                reason: format!("{}: no '>' prompt from the modem", self.name),
            },
            After::Recover,
        )
    }

    fn refused(&self, fin: &Final, i: usize, total: usize) -> (SendResult, After) {
        let code = Some(fin.to_string());
        let name = &self.name;
        warn!(modem = %name, part = i + 1, total, result = %fin, "send refused");
        match fin {
            Final::Cms(Some(n)) => {
                let reason = format!("{name}: {}", cms_reason(*n));
                match classify_cms(*n) {
                    CmsClass::Transient => (SendResult::Transient { code, reason }, After::Nothing),
                    CmsClass::PermanentForNumber => {
                        (SendResult::Permanent { code, reason }, After::Nothing)
                    }
                    CmsClass::ModemProblem => (
                        SendResult::Sick {
                            code: code.clone(),
                            reason: reason.clone(),
                        },
                        After::Sick(format!("{} ({})", reason, fin)),
                    ),
                }
            }
            // 515 busy and similar: wait and retry; SIM trouble takes the modem out.
            Final::Cme(Some(n)) => match classify_cme(*n) {
                CmsClass::ModemProblem => (
                    SendResult::Sick {
                        code,
                        reason: format!("{name}: SIM or modem problem"),
                    },
                    After::Sick(format!("AT+CMGS refused ({fin})")),
                ),
                _ => (
                    SendResult::Transient {
                        code,
                        reason: format!("{name}: modem busy"),
                    },
                    After::Nothing,
                ),
            },
            // A plain ERROR usually means the modem lost its settings (an unnoticed reboot).
            _ => (
                SendResult::Sick {
                    code,
                    reason: format!("{name}: modem refused AT+CMGS"),
                },
                After::Reinit,
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `otpgate modem probe`

/// What `otpgate modem probe` found out about a modem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// The device probed.
    pub device: PathBuf,
    /// AT+CGMI.
    pub manufacturer: Option<String>,
    /// AT+CGMM.
    pub model: Option<String>,
    /// AT+CGMR.
    pub firmware: Option<String>,
    /// AT+CGSN.
    pub imei: Option<String>,
    /// AT+CPIN? ("READY", "SIM PIN", "no SIM"...).
    pub sim: String,
    /// AT+CREG?/AT+CEREG? in words.
    pub registration: String,
    /// AT+COPS?.
    pub operator: Option<String>,
    /// AT+CSQ in dBm.
    pub signal_dbm: Option<i32>,
    /// AT+CSQ in bars (0-4).
    pub signal_bars: Option<u8>,
    /// AT+CSCA?.
    pub smsc: Option<String>,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "device:       {}", self.device.display())?;
        writeln!(
            f,
            "modem:        {} {} (firmware {})",
            o(&self.manufacturer),
            o(&self.model),
            o(&self.firmware)
        )?;
        writeln!(f, "IMEI:         {}", o(&self.imei))?;
        writeln!(f, "SIM:          {}", self.sim)?;
        writeln!(f, "registration: {}", self.registration)?;
        writeln!(f, "operator:     {}", o(&self.operator))?;
        match (self.signal_dbm, self.signal_bars) {
            (Some(d), Some(b)) => writeln!(f, "signal:       {d} dBm ({b}/4 bars)")?,
            _ => writeln!(f, "signal:       unknown")?,
        }
        write!(
            f,
            "SMSC:         {}",
            self.smsc
                .clone()
                .unwrap_or_else(|| "none on the SIM (set smsc in the config)".into())
        )
    }
}

/// Opens `device`, asks the modem who and how it is, and closes it again. Enters no PIN.
pub async fn probe(device: &Path, baud: u32, timeout: Duration) -> Result<ProbeReport, ModemError> {
    let mut conn = Conn::open(device, baud)?;
    let lost = |e: LinkError, device: &Path| match e {
        LinkError::Lost(e) => ModemError::Io(e),
        LinkError::Timeout => ModemError::NoAnswer(device.to_path_buf(), timeout),
    };
    conn.escape().await.map_err(|e| lost(e, device))?;
    let mut alive = false;
    for _ in 0..3 {
        match conn.command("AT", timeout).await {
            Ok(r) if r.ok() => {
                alive = true;
                break;
            }
            Ok(_) | Err(LinkError::Timeout) => {}
            Err(e) => return Err(lost(e, device)),
        }
    }
    if !alive {
        return Err(ModemError::NoAnswer(device.to_path_buf(), timeout));
    }
    let mut ask = async |cmd: &str| {
        conn.command(cmd, timeout)
            .await
            .map_err(|e| lost(e, device))
    };
    ask("ATE0").await?;
    ask("AT+CMEE=1").await?;
    let manufacturer = ask("AT+CGMI").await?.value();
    let model = ask("AT+CGMM").await?.value();
    let firmware = ask("AT+CGMR").await?.value();
    let imei = ask("AT+CGSN").await?.value();
    let cpin = ask("AT+CPIN?").await?;
    let sim = match (&cpin.fin, cpin.parse(parse_cpin)) {
        (Final::Ok, Some(PinState::Ready)) => "READY".to_string(),
        (Final::Ok, Some(PinState::SimPin)) => "SIM PIN (a PIN is needed)".to_string(),
        (Final::Ok, Some(PinState::SimPuk)) => "SIM PUK (locked)".to_string(),
        (Final::Ok, Some(other)) => format!("{other:?}"),
        (Final::Cme(Some(10)), _) => "no SIM inserted".to_string(),
        (fin, _) => format!("unknown ({fin})"),
    };
    let stat = reg_stat(&ask("AT+CREG?").await?);
    let estat = reg_stat(&ask("AT+CEREG?").await?);
    let best = [stat, estat]
        .into_iter()
        .flatten()
        .find(|r| r.is_usable())
        .or(stat)
        .or(estat);
    let operator = ask("AT+COPS?").await?.parse(parse_cops);
    let signal = ask("AT+CSQ").await?.parse(parse_csq);
    let smsc = ask("AT+CSCA?").await?.parse(parse_csca);
    Ok(ProbeReport {
        device: device.to_path_buf(),
        manufacturer,
        model,
        firmware,
        imei,
        sim,
        registration: reg_word(best),
        operator,
        signal_dbm: signal.and_then(|g| g.dbm()),
        signal_bars: signal.filter(|g| g.dbm().is_some()).map(|g| g.bars()),
        smsc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(info: &[&str], fin: Final) -> Reply {
        Reply {
            info: info.iter().map(|s| s.to_string()).collect(),
            fin,
        }
    }

    #[test]
    fn finals_and_command_names() {
        assert_eq!(
            Final::from(FinalResult::CmsError(
                crate::channel::sms::at::ErrorCode::Numeric(330)
            )),
            Final::Cms(Some(330))
        );
        assert_eq!(Final::Cms(Some(1)).to_string(), "CMS 1");
        assert_eq!(command_name("AT+CPIN=\"1234\""), "AT+CPIN");
        assert_eq!(command_name("AT+CREG?"), "AT+CREG");
    }

    #[test]
    fn answers_parse_defensively() {
        let r = reply(&["+CREG: 0,5"], Final::Ok);
        assert_eq!(reg_stat(&r), Some(Registration::Roaming));
        assert_eq!(reg_stat(&reply(&["+CREG: x,y"], Final::Ok)), None);
        assert_eq!(
            reg_word(Some(Registration::Home)),
            "registered, home network"
        );
        assert_eq!(
            reply(&["Quectel"], Final::Ok).value().as_deref(),
            Some("Quectel")
        );
        assert_eq!(
            reply(&["+CGMI: \"huawei\""], Final::Ok).value().as_deref(),
            Some("huawei")
        );
        assert_eq!(reply(&["x"], Final::Error).value(), None);
        assert_eq!(reply(&[], Final::Ok).value(), None);
        assert!(
            reply(&["^RSSI:3", "+CSQ: 21,99"], Final::Ok)
                .parse(parse_csq)
                .is_some()
        );
    }

    #[test]
    fn probe_report_prints_a_few_lines() {
        let r = ProbeReport {
            device: "/dev/ttyUSB2".into(),
            manufacturer: Some("Quectel".into()),
            sim: "READY".into(),
            registration: "registered, roaming".into(),
            signal_dbm: Some(-71),
            signal_bars: Some(4),
            ..ProbeReport::default()
        };
        let text = r.to_string();
        assert!(text.contains("-71 dBm (4/4 bars)"));
        assert!(text.contains("none on the SIM"));
        assert_eq!(text.lines().count(), 8);
    }
}
