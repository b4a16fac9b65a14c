//! The domain vocabulary: the few facts every layer talks about, each as one type. The store
//! converts them to and from its columns at its boundary only; the policy, the dispatcher and the
//! channels compare these types, never words. The HTTP API has response types of its own
//! (`api::views`), so renaming a variant here is a compile error there, not a silent API change.

use std::fmt;
use std::ops::Deref;

use serde::Serialize;

use crate::clock::Timestamp;

/// A stored word that is not one of a type's names: the row or the config is damaged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {word:?}")]
pub struct UnknownWord {
    /// Which vocabulary ("channel", "message state").
    pub what: &'static str,
    /// The word found (never a code: only enum columns are parsed through this).
    pub word: String,
}

/// Implements `as_str`, `parse`, `read` and `Display` for a fieldless enum from one table, so the
/// stored names are written once.
macro_rules! words {
    ($ty:ident, $what:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The stable name used in the store, the API, logs and metrics.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $word),+ }
            }

            /// Parses the stable name.
            pub fn parse(word: &str) -> Option<$ty> {
                match word {
                    $($word => Some($ty::$variant),)+
                    _ => None,
                }
            }

            /// Parses a stored name; a stranger is named in the error.
            pub fn read(word: &str) -> Result<$ty, UnknownWord> {
                $ty::parse(word).ok_or_else(|| UnknownWord { what: $what, word: word.to_owned() })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The delivery paths otpgate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Meta's WhatsApp Cloud API, authentication template.
    WhatsApp,
    /// SMS through a GSM/LTE modem.
    Sms,
}
words!(ChannelKind, "channel", { WhatsApp => "whatsapp", Sms => "sms" });

/// Whether a message is a code (may ride a WhatsApp authentication template) or free text
/// (SMS only). Kept after the content itself is wiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A one-time code.
    Code,
    /// Free text without a recognisable code.
    Text,
}
words!(MessageKind, "message kind", { Code => "code", Text => "text" });

/// What is to be delivered. Debug never shows the code or the text.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// A one-time code. WhatsApp sends `code` in its template; SMS sends `sms_text`,
    /// which was rendered from the SMS template at acceptance and contains the code.
    Code {
        /// The code itself (at most 15 characters, WhatsApp's limit).
        code: String,
        /// The full SMS text carrying the code.
        sms_text: String,
    },
    /// Free text from a caller whose text held no recognisable code: SMS only.
    Text(String),
}

impl Content {
    /// Code or text.
    pub fn kind(&self) -> MessageKind {
        match self {
            Content::Code { .. } => MessageKind::Code,
            Content::Text(_) => MessageKind::Text,
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Code { .. } => f.write_str("Code(***)"),
            Content::Text(t) => write!(f, "Text({} chars)", t.chars().count()),
        }
    }
}

/// Where a message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Waiting for the dispatcher.
    Queued,
    /// An attempt is under way.
    Sending,
    /// A provider accepted it (WhatsApp 200 / +CMGS); no delivery receipt yet.
    Sent,
    /// A receipt says it reached the handset.
    Delivered,
    /// No channel could deliver it.
    Failed,
    /// Its lifetime ended before it could be delivered.
    Expired,
}
words!(MessageState, "message state", {
    Queued => "queued", Sending => "sending", Sent => "sent",
    Delivered => "delivered", Failed => "failed", Expired => "expired",
});

impl MessageState {
    /// True once nothing more will happen to the message.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MessageState::Delivered | MessageState::Failed | MessageState::Expired
        )
    }
}

/// Why an attempt was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptPurpose {
    /// Carrying the message's code or text.
    Code,
    /// The one-time SMS telling a user that codes now arrive on WhatsApp.
    Prenotice,
}
words!(AttemptPurpose, "attempt purpose", { Code => "code", Prenotice => "prenotice" });

/// How a recorded attempt ended: a channel's [`crate::channel::Outcome`] class, or one of the
/// two ends the dispatcher records itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptEnd {
    /// The provider took it.
    Accepted,
    /// This channel cannot reach the recipient.
    FallBack,
    /// Temporary trouble; the same channel may be tried later.
    Retry,
    /// The channel is out of order for everyone.
    ChannelDown,
    /// Undeliverable on any channel.
    Failed,
    /// It may or may not have reached the provider.
    Unknown,
    /// The plan passed this channel over (the detail says why); nothing was sent.
    Skipped,
    /// The process stopped while the attempt was open: it may have reached the provider.
    Interrupted,
}
words!(AttemptEnd, "attempt outcome", {
    Accepted => "accepted", FallBack => "fallback", Retry => "retry",
    ChannelDown => "channel_down", Failed => "failed", Unknown => "unknown",
    Skipped => "skipped", Interrupted => "interrupted",
});

impl AttemptEnd {
    /// The attempt may have put the message in the provider's hands: never repeat it on that
    /// channel, or the user may get the code twice.
    pub fn may_have_reached_provider(self) -> bool {
        matches!(
            self,
            AttemptEnd::Accepted | AttemptEnd::Unknown | AttemptEnd::Interrupted
        )
    }
}

/// What a provider later said about a send, without its error code; ordered by how far the
/// message got, so a late "sent" never hides an earlier "read" or "failed".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReceiptKind {
    /// The provider is still trying (SMS status report, temporary).
    Pending,
    /// Sent onward by the provider (WhatsApp "sent").
    Sent,
    /// Reached the handset.
    Delivered,
    /// Read by the user.
    Read,
    /// The provider gave up.
    Failed,
}
words!(ReceiptKind, "receipt", {
    Pending => "pending", Sent => "sent", Delivered => "delivered", Read => "read", Failed => "failed",
});

impl ReceiptKind {
    /// The handset has the message.
    pub fn confirms_delivery(self) -> bool {
        matches!(self, ReceiptKind::Delivered | ReceiptKind::Read)
    }
}

/// One attempt in a message's history, as the policy and the API read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Row id.
    pub id: i64,
    /// Channel used (or passed over).
    pub channel: ChannelKind,
    /// Why it was made.
    pub purpose: AttemptPurpose,
    /// Start.
    pub started_at: Timestamp,
    /// End, if it ended.
    pub ended_at: Option<Timestamp>,
    /// How it ended; `None` while it runs.
    pub end: Option<AttemptEnd>,
    /// Provider's id (wamid, "modem0/mr42").
    pub provider_id: Option<String>,
    /// Provider's error code.
    pub error_code: Option<String>,
    /// Explanation (never a code).
    pub detail: Option<String>,
    /// The furthest receipt so far.
    pub receipt: Option<ReceiptKind>,
    /// When that receipt came.
    pub receipt_at: Option<Timestamp>,
}

/// What is known about a recipient across messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecipientInfo {
    /// "Not on WhatsApp" is remembered until then.
    pub no_whatsapp_until: Option<Timestamp>,
    /// When the pre-notice went out.
    pub prenotified_at: Option<Timestamp>,
    /// Without receipts: a WhatsApp code to this number was accepted then, nothing
    /// confirmed it, and it lives until `.1`.
    pub unconfirmed: Option<(Timestamp, Timestamp)>,
    /// Its user asked again while a WhatsApp code was unconfirmed: codes go by SMS until then.
    pub sms_until: Option<Timestamp>,
    /// What became of the number's first WhatsApp code.
    pub first_whatsapp: Option<FirstWhatsApp>,
}

/// What became of a number's first WhatsApp code: the pre-notice follows only a confirmed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FirstWhatsApp {
    /// Delivered or read (without receipts: accepted by the Cloud API).
    Confirmed,
    /// It did not reach the phone (a fallback, a `failed` receipt, no receipt in time).
    Failed,
}
words!(FirstWhatsApp, "first whatsapp", { Confirmed => "confirmed", Failed => "failed" });

/// What an attempt's end or a receipt taught about its recipient, besides "not on WhatsApp".
/// The store writes it in the same commit as the attempt or the receipt's consequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// The fate of a WhatsApp code; recorded only when the number has none yet (its first).
    pub first_whatsapp: Option<FirstWhatsApp>,
    /// This message's WhatsApp code is confirmed: the pre-notice is due (the store sends it
    /// once per number, never after a first code that failed).
    pub prenotice_due: bool,
    /// An unconfirmed WhatsApp code to the number was accepted at `.0` and lives until `.1`.
    pub unconfirmed: Option<(Timestamp, Timestamp)>,
    /// Route the number to SMS until then.
    pub sms_until: Option<Timestamp>,
}

impl Learned {
    /// Nothing learned.
    pub fn is_empty(&self) -> bool {
        *self == Learned::default()
    }
}

/// A phone number in E.164 form with its leading '+' ("+919876543210"). Only
/// [`crate::phone`] and the store's row reader make one, so holding one means it was checked.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct E164(String);

impl E164 {
    /// Accepts '+' then 7 to 15 digits, the first not 0: the shape E.164 allows. Country
    /// rules are [`crate::phone`]'s job; this guards what the store hands back.
    pub fn new(s: &str) -> Option<E164> {
        let digits = s.strip_prefix('+')?;
        let ok = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        ok.then(|| E164(s.to_owned()))
    }

    /// The digits without '+', as WhatsApp's `to` wants them.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// The number with its '+'.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for E164 {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.0)
    }
}

/// A message's id ("m_" + time + random), as handed to the caller.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// Wraps an id made by the store or read back from it.
    pub fn new(s: impl Into<String>) -> MessageId {
        MessageId(s.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for MessageId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_round_trips_and_strangers_are_named() {
        for k in [ChannelKind::WhatsApp, ChannelKind::Sms] {
            assert_eq!(ChannelKind::read(k.as_str()), Ok(k));
        }
        for s in [
            MessageState::Queued,
            MessageState::Sending,
            MessageState::Sent,
            MessageState::Delivered,
            MessageState::Failed,
            MessageState::Expired,
        ] {
            assert_eq!(MessageState::read(s.as_str()), Ok(s));
        }
        for e in [
            AttemptEnd::Accepted,
            AttemptEnd::FallBack,
            AttemptEnd::Retry,
            AttemptEnd::ChannelDown,
            AttemptEnd::Failed,
            AttemptEnd::Unknown,
            AttemptEnd::Skipped,
            AttemptEnd::Interrupted,
        ] {
            assert_eq!(AttemptEnd::read(e.as_str()), Ok(e));
        }
        let err = ReceiptKind::read("seen").unwrap_err();
        assert_eq!(err.to_string(), "unknown receipt \"seen\"");
    }

    #[test]
    fn receipts_rank_by_how_far_the_message_got() {
        use ReceiptKind::*;
        assert!(Pending < Sent && Sent < Delivered && Delivered < Read && Read < Failed);
        assert!(Delivered.confirms_delivery() && Read.confirms_delivery());
        assert!(!Sent.confirms_delivery() && !Failed.confirms_delivery());
    }

    #[test]
    fn e164_shape() {
        let n = E164::new("+919876543210").unwrap();
        assert_eq!(n.digits(), "919876543210");
        assert_eq!(&*n, "+919876543210");
        for bad in [
            "919876543210",
            "+0919876543",
            "+12345",
            "+1234567890123456",
            "+91 98765",
        ] {
            assert!(E164::new(bad).is_none(), "{bad}");
        }
    }
}
