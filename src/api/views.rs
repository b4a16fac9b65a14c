//! The public JSON of the native API's message answers. Each field is named here, apart from
//! the store's rows, so renaming a column cannot change the API. Keys are in alphabetical
//! order, the order the earlier `json!` maps wrote them in.

use serde::{Serialize, Serializer};

use crate::channel::ChannelKind;
use crate::clock::Timestamp;
use crate::domain::{AttemptEnd, ReceiptKind};
use crate::store::{Attempt, Message, MessageState};

fn rfc3339<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

fn rfc3339_opt<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// The body of a 202 to `POST /v1/messages`, written straight from the message: a `json!` map
/// allocates a tree on every accept.
#[derive(Serialize)]
pub struct AcceptedView<'a> {
    /// Present only when the caller waited and an attempt ended (null if none carried it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Option<ChannelKind>>,
    /// End of the code's lifetime.
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: Timestamp,
    /// The message id.
    pub id: &'a str,
    /// The caller's reference, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a str>,
    /// "queued", or where the message stood when the wait ended.
    pub status: MessageState,
    /// The E.164 recipient.
    pub to: &'a str,
}

impl<'a> AcceptedView<'a> {
    /// A freshly queued message.
    pub fn queued(m: &'a Message) -> Self {
        AcceptedView {
            channel: None,
            expires_at: m.expires_at,
            id: &m.id,
            reference: m.reference.as_deref(),
            status: MessageState::Queued,
            to: &m.recipient,
        }
    }
}

/// A message as `GET /v1/messages/{id}` (with attempts) and an idempotent repeat (without)
/// show it.
#[derive(Serialize)]
pub struct MessageView<'a> {
    /// The attempt history, on `GET` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView<'a>>>,
    /// The channel that carried it.
    pub channel: Option<ChannelKind>,
    /// Acceptance time.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Timestamp,
    /// End of lifetime.
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: Timestamp,
    /// When it reached a final state.
    #[serde(serialize_with = "rfc3339_opt")]
    pub finished_at: Option<Timestamp>,
    /// The message id.
    pub id: &'a str,
    /// Why it is where it is.
    pub reason: Option<&'a str>,
    /// The caller's reference.
    pub reference: Option<&'a str>,
    /// Where it stands.
    pub status: MessageState,
    /// The E.164 recipient.
    pub to: &'a str,
}

impl<'a> MessageView<'a> {
    /// The view of a stored message and, when given, its attempts.
    pub fn new(m: &'a Message, attempts: Option<&'a [Attempt]>) -> Self {
        MessageView {
            attempts: attempts.map(|a| a.iter().map(AttemptView::from).collect()),
            channel: m.channel,
            created_at: m.created_at,
            expires_at: m.expires_at,
            finished_at: m.finished_at,
            id: &m.id,
            reason: m.reason.as_deref(),
            reference: m.reference.as_deref(),
            status: m.state,
            to: &m.recipient,
        }
    }
}

/// One delivery attempt in a message's history.
#[derive(Serialize)]
pub struct AttemptView<'a> {
    /// The channel used.
    pub channel: &'a str,
    /// Explanation.
    pub detail: Option<&'a str>,
    /// End, if it ended.
    #[serde(serialize_with = "rfc3339_opt")]
    pub ended_at: Option<Timestamp>,
    /// The provider's error code.
    pub error_code: Option<&'a str>,
    /// The attempt's number.
    pub id: i64,
    /// Outcome class, "skipped" or "interrupted".
    pub outcome: Option<&'a str>,
    /// The provider's id (wamid, modem/mr).
    pub provider_id: Option<&'a str>,
    /// "code" or "prenotice".
    pub purpose: &'a str,
    /// The latest receipt status.
    pub receipt: Option<&'a str>,
    /// When the receipt came.
    #[serde(serialize_with = "rfc3339_opt")]
    pub receipt_at: Option<Timestamp>,
    /// Start.
    #[serde(serialize_with = "rfc3339")]
    pub started_at: Timestamp,
}

impl<'a> From<&'a Attempt> for AttemptView<'a> {
    fn from(a: &'a Attempt) -> Self {
        AttemptView {
            channel: a.channel.as_str(),
            detail: a.detail.as_deref(),
            ended_at: a.ended_at,
            error_code: a.error_code.as_deref(),
            id: a.id,
            outcome: a.end.map(AttemptEnd::as_str),
            provider_id: a.provider_id.as_deref(),
            purpose: a.purpose.as_str(),
            receipt: a.receipt.map(ReceiptKind::as_str),
            receipt_at: a.receipt_at,
            started_at: a.started_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            id: crate::domain::MessageId::new("msg_1"),
            client: "idp".into(),
            recipient: crate::domain::E164::new("+919876543210").unwrap(),
            country: Some("IN".into()),
            content: None,
            kind: crate::domain::MessageKind::Code,
            locale: None,
            reference: None,
            idempotency_key: None,
            created_at: Timestamp(1_795_000_000_000),
            expires_at: Timestamp(1_795_000_300_000),
            state: MessageState::Delivered,
            channel: Some(ChannelKind::WhatsApp),
            reason: None,
            finished_at: Some(Timestamp(1_795_000_001_000)),
            only_channel: None,
        }
    }

    /// Every key appears, in this order and no other key between.
    fn in_order(json: &str, keys: &[&str]) {
        let found: Vec<&str> = json
            .split('"')
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[1].starts_with(':'))
            .map(|w| w[0])
            .collect();
        assert_eq!(found, keys, "{json}");
    }

    #[test]
    fn a_message_and_its_attempts_keep_their_public_field_names() {
        let m = message();
        let a = [Attempt {
            id: 7,
            channel: ChannelKind::WhatsApp,
            purpose: crate::domain::AttemptPurpose::Code,
            started_at: Timestamp(1_795_000_000_100),
            ended_at: None,
            end: Some(AttemptEnd::Accepted),
            provider_id: Some("wamid.1".into()),
            error_code: None,
            detail: None,
            receipt: Some(ReceiptKind::Read),
            receipt_at: None,
        }];
        let text = serde_json::to_string(&MessageView::new(&m, Some(&a))).unwrap();
        // Names and order as the JSON had them (a `Value` sorts its keys, so test the text).
        let (outer, inner) = text.split_once("\"attempts\":[").unwrap();
        assert_eq!(outer, "{");
        let (attempt_text, rest) = inner.split_once('}').unwrap();
        in_order(
            attempt_text,
            &[
                "channel",
                "detail",
                "ended_at",
                "error_code",
                "id",
                "outcome",
                "provider_id",
                "purpose",
                "receipt",
                "receipt_at",
                "started_at",
            ],
        );
        in_order(
            rest,
            &[
                "channel",
                "created_at",
                "expires_at",
                "finished_at",
                "id",
                "reason",
                "reference",
                "status",
                "to",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "delivered");
        assert_eq!(v["channel"], "whatsapp");
        assert_eq!(v["created_at"], m.created_at.to_rfc3339());
        assert!(v["reference"].is_null());
        let attempt = &v["attempts"][0];
        assert_eq!(attempt["id"], 7);
        assert_eq!(attempt["started_at"], a[0].started_at.to_rfc3339());
        assert!(attempt["ended_at"].is_null());
        let repeat = serde_json::to_string(&MessageView::new(&m, None)).unwrap();
        assert!(!repeat.contains("attempts"), "{repeat}");
        assert!(repeat.starts_with("{\"channel\":\"whatsapp\",\"created_at\":"));
    }
}
