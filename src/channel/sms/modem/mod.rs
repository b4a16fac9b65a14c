//! One modem, one owner: a tokio task owns the serial port and `select!`s between send
//! requests, incoming bytes (URCs are handled as they arrive) and the health-probe timer.
//! What lives where:
//!
//! - this file: the [`Modem`] handle the pool talks to, the [`SendJob`] and its [`SendResult`],
//!   the [`ModemState`] words and the [`ModemError`]s, and the claim a job carries between the
//!   handle and the owner (who may still give it up, and when it is too late to).
//! - `port.rs`: the serial port itself. It is opened exclusively with `serialport` (8N1, no flow
//!   control), then its fd is set non-blocking and registered with tokio's reactor through
//!   `AsyncFd`, so no thread blocks on the modem. Modem output goes through [`super::at`]'s
//!   `LineReader` and `Dialogue`, so echo, the `> ` prompt, URCs inside answers and stale results
//!   are told apart in one tested place.
//! - `owner.rs`: the owner task. It initialises the modem per the reference sequence, keeps a
//!   stable state word for /readyz, recovers from hangs (ESC, AT, ATZ, AT+CFUN=1,1, re-init) and
//!   from unplugs (reopen the same configured path with back-off), and turns +CDS status reports
//!   into [`crate::channel::Receipt`]s (acknowledged with AT+CNMA on phase 2+ modems).
//!   `owner/send.rs` sends PDUs; a modem that leaves a PDU unanswered past `command_timeout` is
//!   `no_answer` (out of the pool) until it answers again.
//! - `probe.rs`: [`probe`] for `otpgate modem probe`, a one-shot look at a modem through the
//!   same port code.
//!
//! The text of an SMS never reaches a log line, an error or a reason string.

mod owner;
mod port;
mod probe;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;

use crate::channel::{Departure, ReceiptTx};
use crate::clock::{SharedClock, Timestamp};
use crate::config::ModemConfig;

pub use probe::{ProbeReport, probe};

/// How long shutdown waits for an owner task before aborting it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

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
    #[error("{}: port error: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
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
    /// When the code expires: the PDU's validity period ends no later (see
    /// [`crate::channel::sms::vp`]).
    pub expires_at: Timestamp,
    /// By when the modem must have taken the message (the first PDU written). Until then the
    /// job may be withdrawn with a transient verdict, leaving the rest of the budget to another
    /// modem. At most `deadline`.
    pub take_by: Instant,
    /// When the verdict is due: [`Modem::send`] answers by then, whatever the owner is doing.
    pub deadline: Instant,
    /// Awaited after the first part's `> ` prompt, before its PDU is written.
    pub departure: Departure,
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
        claim: Arc<Claim>,
        reply: oneshot::Sender<SendResult>,
    },
    Shutdown,
}

/// Where a job stands between the handle and the owner. Every step is one compare-and-swap,
/// so the handle withdrawing a job and the owner handing it to the modem cannot both happen:
/// a withdrawn job never goes out, and a job handed over is never called transient.
struct Claim(AtomicU8);

impl Claim {
    /// Queued; the owner has not looked at it.
    const PENDING: u8 = 0;
    /// The owner is talking to the modem; nothing has been handed over.
    const STARTED: u8 = 1;
    /// The handle gave up on it before the hand-over; the owner must not hand it over.
    const WITHDRAWN: u8 = 2;
    /// The owner is writing (or wrote) the PDU: the message may go out.
    const HANDED_OVER: u8 = 3;

    fn new() -> Arc<Claim> {
        Arc::new(Claim(AtomicU8::new(Claim::PENDING)))
    }

    fn step(&self, from: u8, to: u8) -> bool {
        self.0
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Owner: starts work on the job; false when the handle already withdrew it.
    fn start(&self) -> bool {
        self.step(Claim::PENDING, Claim::STARTED)
    }

    /// Owner: about to write the PDU; false when the handle withdrew the job meanwhile.
    fn hand_over(&self) -> bool {
        self.step(Claim::STARTED, Claim::HANDED_OVER)
    }

    /// Handle: withdraws the job; false when it was already handed over.
    fn withdraw(&self) -> bool {
        self.step(Claim::PENDING, Claim::WITHDRAWN) || self.step(Claim::STARTED, Claim::WITHDRAWN)
    }
}

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
        let owner = owner::Owner::new(
            cfg.clone(),
            receipts,
            clock,
            status.clone(),
            progress.clone(),
            rx,
        );
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

    /// Sends one message through this modem and answers by `job.deadline` with a verdict of
    /// its own: Transient when the modem had not taken the message by `job.take_by` (the job is
    /// withdrawn: the owner will not hand it over), Unknown when the PDU was handed over and no
    /// result came by the deadline, otherwise whatever the owner found.
    pub async fn send(&self, job: SendJob) -> SendResult {
        let deadline = job.deadline;
        let take_by = job.take_by.min(deadline);
        let claim = Claim::new();
        let (reply, mut answer) = oneshot::channel();
        let req = Request::Send {
            job,
            claim: claim.clone(),
            reply,
        };
        match tokio::time::timeout_at(take_by, self.tx.send(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return SendResult::NotReady {
                    state: ModemState::Error,
                };
            }
            Err(_) => {
                return SendResult::Transient {
                    code: None,
                    reason: format!("{} busy: its queue stayed full", self.name),
                };
            }
        }
        let waiting = match tokio::time::timeout_at(take_by, &mut answer).await {
            Ok(Ok(r)) => return r,
            // The owner dropped the job unanswered (it ended): the claim tells what happened.
            Ok(Err(_)) => None,
            Err(_) => Some(answer),
        };
        if claim.withdraw() {
            return SendResult::Transient {
                code: None,
                reason: format!(
                    "{} did not take the message in its share of the time",
                    self.name
                ),
            };
        }
        // Handed over: only the owner can know whether it went out; wait for it, not longer.
        let result = match waiting {
            Some(answer) => tokio::time::timeout_at(deadline, answer).await.ok(),
            None => None,
        };
        match result {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => SendResult::Unknown {
                reason: format!("{} gave no result within the budget", self.name),
            },
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
