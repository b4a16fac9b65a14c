//! Delivery channels. Every channel implements [`Channel`]: it is handed a [`Delivery`] and
//! answers with one [`Outcome`] class, which is all the dispatcher needs to decide what happens
//! next. Asynchronous delivery receipts (WhatsApp webhooks, SMS status reports) come back as
//! [`Receipt`]s on a channel the dispatcher owns.

pub mod sms;
pub mod whatsapp;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Timestamp;
pub use crate::domain::{AttemptEnd, ChannelKind, Content, ReceiptKind};

/// A boxed future, so channels can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request to a channel: deliver `content` to `to` within `budget`.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The outbox id, for logs and receipts (never the code).
    pub message_id: String,
    /// The recipient in E.164 form with a leading '+', e.g. "+919876543210".
    pub to: String,
    /// What to send.
    pub content: Content,
    /// The caller's locale ("en", "hi", "id"...), if any; channels map it to their templates.
    pub locale: Option<String>,
    /// The code's remaining lifetime at dispatch.
    pub validity: Duration,
    /// When the code expires: SMS derives its validity period from it when the PDU is built,
    /// so time spent queueing for a modem is not counted twice.
    pub expires_at: Timestamp,
    /// How long this attempt may take in all, retries inside the channel included.
    pub budget: Duration,
    /// Called at the moment the delivery leaves the box (see [`Channel::send`]).
    pub departure: Departure,
}

/// Why a delivery may not leave: its departure could not be recorded, or it is no longer
/// wanted. The channel then sends nothing and answers a transient outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DepartError(pub String);

/// The one who must know, durably, that a delivery left the box before it does.
pub trait Depart: Send + Sync {
    /// Records the departure; `Err` forbids the send. Later calls answer at once.
    fn depart(&self) -> BoxFuture<'_, Result<(), DepartError>>;
}

/// A delivery's departure hook. Without one ([`Departure::none`]) every departure is allowed
/// and recorded nowhere: for tools and tests that drive a channel directly.
#[derive(Clone, Default)]
pub struct Departure(Option<Arc<dyn Depart>>);

impl Departure {
    /// No hook: departures are allowed and not recorded.
    pub fn none() -> Departure {
        Departure(None)
    }

    /// Departures go through `hook`.
    pub fn new(hook: Arc<dyn Depart>) -> Departure {
        Departure(Some(hook))
    }

    /// Announces that the delivery is about to leave; on `Err` it must not.
    pub async fn depart(&self) -> Result<(), DepartError> {
        match &self.0 {
            Some(hook) => hook.depart().await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Departure(hook)"
        } else {
            "Departure(none)"
        })
    }
}

/// The class of a channel attempt's result: what the dispatcher should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took the message. `provider_id`: the wamid, or "modem0/mr42" for SMS.
    Accepted {
        /// Provider's id for this send, used to match receipts.
        provider_id: String,
    },
    /// This channel cannot reach this recipient: use the next channel now.
    FallBack {
        /// Provider error code, if any ("131026", "CMS 1").
        code: Option<String>,
        /// Human explanation, free of codes and secrets.
        reason: String,
        /// The recipient is not on WhatsApp: route them straight to SMS for a while.
        not_on_channel: bool,
    },
    /// Temporary trouble: the same channel may be tried again after `after`.
    Retry {
        /// Suggested wait.
        after: Duration,
        /// Provider error code, if any.
        code: Option<String>,
        /// Human explanation.
        reason: String,
    },
    /// The channel is out of order for everyone (circuit open, token revoked, no modem ready).
    ChannelDown {
        /// Provider error code, if any.
        code: Option<String>,
        /// Human explanation, shown in /readyz.
        reason: String,
    },
    /// Permanently undeliverable on any channel (e.g. an invalid destination number).
    Failed {
        /// Provider error code, if any.
        code: Option<String>,
        /// Human explanation.
        reason: String,
    },
    /// The request may or may not have reached the provider (a timeout after the SMS was
    /// handed over): never repeat it on this channel, or the user may get the code twice.
    Unknown {
        /// Human explanation.
        reason: String,
    },
}

impl Outcome {
    /// The class as recorded with the attempt.
    pub fn end(&self) -> AttemptEnd {
        match self {
            Outcome::Accepted { .. } => AttemptEnd::Accepted,
            Outcome::FallBack { .. } => AttemptEnd::FallBack,
            Outcome::Retry { .. } => AttemptEnd::Retry,
            Outcome::ChannelDown { .. } => AttemptEnd::ChannelDown,
            Outcome::Failed { .. } => AttemptEnd::Failed,
            Outcome::Unknown { .. } => AttemptEnd::Unknown,
        }
    }

    /// The stable name stored in `attempts.outcome`.
    pub fn class(&self) -> &'static str {
        self.end().as_str()
    }

    /// The provider error code, if the outcome carries one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Outcome::FallBack { code, .. }
            | Outcome::Retry { code, .. }
            | Outcome::ChannelDown { code, .. }
            | Outcome::Failed { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The human explanation, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Accepted { .. } => None,
            Outcome::FallBack { reason, .. }
            | Outcome::Retry { reason, .. }
            | Outcome::ChannelDown { reason, .. }
            | Outcome::Failed { reason, .. }
            | Outcome::Unknown { reason } => Some(reason),
        }
    }
}

/// A channel's health as shown in /readyz, the status line and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Whether the channel can take a message right now.
    pub usable: bool,
    /// One short line: "ok", "circuit open: access token expired (190)", "modem0 ready -71 dBm".
    pub summary: String,
    /// Per-part detail (each modem), for /readyz.
    pub parts: Vec<PartHealth>,
}

/// The health of one part of a channel, e.g. one modem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartHealth {
    /// The part's name ("modem0").
    pub name: String,
    /// A stable state word ("ready", "no_sim", "pin_needed", "not_registered", "no_answer", "unplugged").
    pub state: String,
    /// Signal in dBm, where the part has one.
    pub signal_dbm: Option<i32>,
    /// Free-form detail (operator, last error).
    pub detail: String,
}

/// A delivery channel. Implementations own their connections (an HTTP client, modem tasks)
/// and must never panic or hang past `Delivery::budget`.
pub trait Channel: Send + Sync + 'static {
    /// Which channel this is.
    fn kind(&self) -> ChannelKind;
    /// Attempts one delivery and resolves within `delivery.budget` with the channel's own
    /// verdict: the channel owns this deadline. Whatever is still open when the budget ends is
    /// classified by the channel, which alone knows how far it got: nothing handed to the
    /// provider yet is transient ([`Outcome::Retry`], or the next modem inside the SMS pool);
    /// handed over without an answer is [`Outcome::Unknown`]. Callers keep only a hang guard
    /// far beyond the budget, which must never pre-empt this verdict.
    ///
    /// Departure: the channel awaits `delivery.departure.depart()` immediately before its
    /// first irreversible write (the HTTP request once the rate cap and the circuit let it
    /// go; the first PDU after the modem's `> ` prompt), never earlier: the caller records the
    /// attempt as possibly delivered only then, so a crash while the delivery still waits in
    /// a queue resends it after the restart instead of failing it. On `Err` nothing is sent
    /// and the verdict is transient. A delivery that never departed must not answer
    /// [`Outcome::Accepted`] or [`Outcome::Unknown`]; callers treat such an answer as a
    /// departure they were not told of.
    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome>;
    /// Current health.
    fn health(&self) -> Health;
}

/// What a provider later said about a send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// Sent onward by the provider (WhatsApp "sent").
    Sent,
    /// Reached the handset.
    Delivered,
    /// Read by the user (WhatsApp "read").
    Read,
    /// The provider is still trying (SMS status report, temporary).
    Pending,
    /// The provider gave up; `code` is its error code.
    Failed {
        /// Provider error code, if any.
        code: Option<String>,
    },
    /// Not a status: the recipient tapped "I didn't request a code" on the message with this
    /// provider id (a fraud signal). `from` is their number as digits, as Meta sends it.
    NotRequested {
        /// The tapping user's number (digits, no '+').
        from: String,
    },
}

impl ReceiptStatus {
    /// The status without its error code, in receipt order; `None` for a signal that is
    /// not a delivery status.
    pub fn kind(&self) -> Option<ReceiptKind> {
        Some(match self {
            ReceiptStatus::Sent => ReceiptKind::Sent,
            ReceiptStatus::Delivered => ReceiptKind::Delivered,
            ReceiptStatus::Read => ReceiptKind::Read,
            ReceiptStatus::Pending => ReceiptKind::Pending,
            ReceiptStatus::Failed { .. } => ReceiptKind::Failed,
            ReceiptStatus::NotRequested { .. } => return None,
        })
    }

    /// The provider's error code, for a failure.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            ReceiptStatus::Failed { code } => code.as_deref(),
            _ => None,
        }
    }
}

/// An asynchronous delivery receipt, matched to an attempt by `(channel, provider_id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The channel that produced it.
    pub channel: ChannelKind,
    /// The provider id recorded with the attempt (wamid, "modem0/mr42").
    pub provider_id: String,
    /// What happened.
    pub status: ReceiptStatus,
    /// When the provider says it happened (or when we learned it).
    pub at: Timestamp,
}

/// Where channels send receipts; the dispatcher owns the receiving end.
pub type ReceiptTx = tokio::sync::mpsc::Sender<Receipt>;
