//! Meta's status webhooks, pure (no HTTP here; the API layer routes requests to these):
//! the subscription handshake, the `X-Hub-Signature-256` check, and parsing statuses into
//! [`Receipt`]s plus "I didn't request a code" taps as fraud signals. Parsing is tolerant:
//! unknown fields and statuses are ignored, order and duplicates are left to the caller.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::channel::{ChannelKind, Receipt, ReceiptStatus};
use crate::clock::Timestamp;
use crate::secret::Secret;

/// The button payload of the "I didn't request a code" button.
pub const DID_NOT_REQUEST_CODE: &str = "DID_NOT_REQUEST_CODE";

/// Why a webhook request was refused. Never contains secrets or signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Webhooks are not configured (no app secret / verify token).
    #[error("webhooks are not configured")]
    Disabled,
    /// The query string did not parse.
    #[error("malformed query string")]
    BadQuery,
    /// hub.mode was not "subscribe".
    #[error("hub.mode is not subscribe")]
    WrongMode,
    /// hub.verify_token did not match.
    #[error("hub.verify_token does not match")]
    BadVerifyToken,
    /// hub.challenge missing or not a plain token.
    #[error("hub.challenge missing or malformed")]
    BadChallenge,
    /// No X-Hub-Signature-256 header.
    #[error("X-Hub-Signature-256 header missing")]
    MissingSignature,
    /// The header is not `sha256=<64 hex digits>`.
    #[error("X-Hub-Signature-256 header malformed")]
    MalformedSignature,
    /// The HMAC does not match the body.
    #[error("X-Hub-Signature-256 does not match the body")]
    BadSignature,
    /// The body is not the JSON Meta sends.
    #[error("webhook body is not valid JSON: {0}")]
    BadJson(String),
    /// The receipts could not all be queued for the dispatcher: answered 503 so that Meta
    /// posts them again (it does not resend what was answered 200).
    #[error("receipt queue full; Meta will post these statuses again")]
    Busy,
}

/// A tap on "I didn't request a code": someone may be trying to log in as this user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FraudSignal {
    /// The user's number (digits, as Meta sends it).
    pub from: String,
    /// The incoming message's wamid.
    pub message_id: String,
    /// The wamid of our OTP message the button belonged to, when Meta says.
    pub context_id: Option<String>,
    /// When it happened.
    pub at: Timestamp,
}

/// Everything of interest in one webhook body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookEvents {
    /// Status updates, in body order, each `failed` with Meta's error code; then, per
    /// change, a [`ReceiptStatus::NotRequested`] for each fraud signal with a number, so the
    /// dispatcher that owns the outbox cancels that number's codes.
    pub receipts: Vec<Receipt>,
    /// Fraud signals, in body order.
    pub fraud: Vec<FraudSignal>,
}

/// Answers the GET subscription handshake: the challenge to echo, if mode and token match.
pub fn handshake(query: &str, verify_token: &Secret) -> Result<String, WebhookError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|_| WebhookError::BadQuery)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("hub.mode") != Some("subscribe") {
        return Err(WebhookError::WrongMode);
    }
    let given = get("hub.verify_token").unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(verify_token.expose().as_bytes())) {
        return Err(WebhookError::BadVerifyToken);
    }
    let challenge = get("hub.challenge").unwrap_or("");
    // Meta sends a number; refusing anything else keeps this from reflecting arbitrary content.
    let plain = challenge
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if challenge.is_empty() || challenge.len() > 128 || !plain {
        return Err(WebhookError::BadChallenge);
    }
    Ok(challenge.to_string())
}

/// Checks `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>` in constant time.
pub fn verify_signature(
    body: &[u8],
    header: Option<&str>,
    app_secret: &Secret,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?.trim();
    let hex_sig = header
        .strip_prefix("sha256=")
        .ok_or(WebhookError::MalformedSignature)?;
    let sig = hex::decode(hex_sig).map_err(|_| WebhookError::MalformedSignature)?;
    if sig.len() != 32 {
        return Err(WebhookError::MalformedSignature);
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(app_secret.expose().as_bytes())
        .map_err(|_| WebhookError::Disabled)?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&sig)
        .map_err(|_| WebhookError::BadSignature)
}

/// The hex HMAC-SHA256 of `body` under `app_secret`, as Meta puts it in the header (for tests
/// and the simulator).
pub fn sign(body: &[u8], app_secret: &Secret) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(app_secret.expose().as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
struct Value {
    #[serde(default)]
    statuses: Vec<Status>,
    #[serde(default)]
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Status {
    id: Option<String>,
    status: Option<String>,
    timestamp: Option<String>,
    #[serde(default)]
    errors: Vec<StatusError>,
}

#[derive(Deserialize)]
struct StatusError {
    code: Option<i64>,
}

#[derive(Deserialize)]
struct Message {
    from: Option<String>,
    id: Option<String>,
    timestamp: Option<String>,
    context: Option<Context>,
    button: Option<Button>,
}

#[derive(Deserialize)]
struct Context {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Button {
    payload: Option<String>,
}

/// Unix seconds as a string -> milliseconds; `now` when missing or unreadable.
fn at(ts: Option<&str>, now: Timestamp) -> Timestamp {
    ts.and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| s.checked_mul(1000))
        .map(Timestamp)
        .unwrap_or(now)
}

/// Parses statuses and fraud signals from a (signature-checked) webhook body.
pub fn parse_events(body: &[u8], now: Timestamp) -> Result<WebhookEvents, WebhookError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message quotes values from the body ("invalid type: string ..."), and
        // this error is logged: keep only the kind of error and its position (found by fuzzing).
        WebhookError::BadJson(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let mut out = WebhookEvents::default();
    for value in b
        .entry
        .into_iter()
        .flat_map(|e| e.changes)
        .filter_map(|c| c.value)
    {
        for s in value.statuses {
            let Some(id) = s.id.filter(|i| !i.is_empty()) else {
                continue;
            };
            let status = match s.status.as_deref() {
                Some("sent") => ReceiptStatus::Sent,
                Some("delivered") => ReceiptStatus::Delivered,
                Some("read") => ReceiptStatus::Read,
                Some("failed") => ReceiptStatus::Failed {
                    code: s.errors.iter().find_map(|e| e.code).map(|c| c.to_string()),
                },
                // "deleted", "warning", future statuses: nothing to record.
                _ => continue,
            };
            out.receipts.push(Receipt {
                channel: ChannelKind::WhatsApp,
                provider_id: id,
                status,
                at: at(s.timestamp.as_deref(), now),
            });
        }
        for m in value.messages {
            let fraud = m
                .button
                .and_then(|b| b.payload)
                .is_some_and(|p| p == DID_NOT_REQUEST_CODE);
            if !fraud {
                continue;
            }
            let signal = FraudSignal {
                from: m.from.unwrap_or_default(),
                message_id: m.id.unwrap_or_default(),
                context_id: m.context.and_then(|c| c.id),
                at: at(m.timestamp.as_deref(), now),
            };
            // Only a plausible number can be acted on: digits, as Meta sends wa_ids.
            let digits = !signal.from.is_empty()
                && signal.from.len() <= 15
                && signal.from.bytes().all(|b| b.is_ascii_digit());
            if digits {
                out.receipts.push(Receipt {
                    channel: ChannelKind::WhatsApp,
                    provider_id: signal
                        .context_id
                        .clone()
                        .unwrap_or_else(|| signal.message_id.clone()),
                    status: ReceiptStatus::NotRequested {
                        from: signal.from.clone(),
                    },
                    at: signal.at,
                });
            }
            out.fraud.push(signal);
        }
    }
    Ok(out)
}

/// The delivery statuses in a webhook body (see [`parse_events`] for fraud signals too).
pub fn parse_statuses(body: &[u8], now: Timestamp) -> Result<Vec<Receipt>, WebhookError> {
    parse_events(body, now).map(|e| {
        e.receipts
            .into_iter()
            .filter(|r| r.status.kind().is_some())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(5_000);

    fn secret() -> Secret {
        Secret::new("app-secret-123")
    }

    #[test]
    fn handshake_echoes_the_challenge_only_when_all_matches() {
        let t = Secret::new("verify-me");
        assert_eq!(
            handshake(
                "hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444",
                &t
            ),
            Ok("1158201444".into())
        );
        assert_eq!(
            handshake(
                "hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
                &t
            ),
            Err(WebhookError::BadVerifyToken)
        );
        assert_eq!(
            handshake(
                "hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1",
                &t
            ),
            Err(WebhookError::WrongMode)
        );
        assert_eq!(
            handshake("hub.mode=subscribe&hub.verify_token=verify-me", &t),
            Err(WebhookError::BadChallenge)
        );
        assert_eq!(
            handshake(
                "hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=%3Cscript%3E",
                &t
            ),
            Err(WebhookError::BadChallenge)
        );
        assert_eq!(handshake("", &t), Err(WebhookError::WrongMode));
    }

    #[test]
    fn signatures_good_bad_missing_malformed() {
        let body = br#"{"entry":[]}"#;
        let good = sign(body, &secret());
        assert!(good.starts_with("sha256=") && good.len() == 7 + 64);
        assert_eq!(verify_signature(body, Some(&good), &secret()), Ok(()));
        assert_eq!(
            verify_signature(b"{\"entry\":[ ]}", Some(&good), &secret()),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(body, Some(&good), &Secret::new("other")),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(body, None, &secret()),
            Err(WebhookError::MissingSignature)
        );
        for bad in ["sha1=abcd", "sha256=zz", "sha256=abcd", &good[7..], ""] {
            assert_eq!(
                verify_signature(body, Some(bad), &secret()),
                Err(WebhookError::MalformedSignature),
                "{bad}"
            );
        }
        // Upper-case hex is still the same signature.
        let upper = format!("sha256={}", good[7..].to_ascii_uppercase());
        assert_eq!(verify_signature(body, Some(&upper), &secret()), Ok(()));
    }

    const MULTI: &str = r#"{"object":"whatsapp_business_account","entry":[
      {"id":"WABA1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"15550001111","phone_number_id":"1055"},
        "statuses":[
          {"id":"wamid.B","status":"failed","timestamp":"1700000100","recipient_id":"919800000001",
           "errors":[{"code":131026,"title":"Message undeliverable","error_data":{"details":"x"}}]},
          {"id":"wamid.A","status":"read","timestamp":"1700000050","recipient_id":"919800000002"},
          {"id":"wamid.A","status":"delivered","timestamp":"1700000040","recipient_id":"919800000002"},
          {"id":"wamid.A","status":"delivered","timestamp":"1700000040","recipient_id":"919800000002"},
          {"id":"wamid.C","status":"deleted","timestamp":"1700000040"},
          {"id":"wamid.D","status":"sent"}
        ]}}]},
      {"id":"WABA2","changes":[{"field":"messages","value":{
        "messages":[
          {"from":"919800000003","id":"wamid.IN1","timestamp":"1700000200","type":"button",
           "context":{"from":"15550001111","id":"wamid.E"},
           "button":{"payload":"DID_NOT_REQUEST_CODE","text":"I didn't request a code"}},
          {"from":"919800000004","id":"wamid.IN2","type":"text","text":{"body":"hello"}}
        ],
        "statuses":[{"id":"wamid.E","status":"failed","timestamp":"1700000300"}]}}]}
    ]}"#;

    #[test]
    fn multi_entry_body_out_of_order_and_repeated() {
        let ev = parse_events(MULTI.as_bytes(), NOW).unwrap();
        let r = |id: &str, status: ReceiptStatus, at: i64| Receipt {
            channel: ChannelKind::WhatsApp,
            provider_id: id.into(),
            status,
            at: Timestamp(at),
        };
        assert_eq!(
            ev.receipts,
            vec![
                r(
                    "wamid.B",
                    ReceiptStatus::Failed {
                        code: Some("131026".into())
                    },
                    1_700_000_100_000
                ),
                r("wamid.A", ReceiptStatus::Read, 1_700_000_050_000),
                r("wamid.A", ReceiptStatus::Delivered, 1_700_000_040_000),
                r("wamid.A", ReceiptStatus::Delivered, 1_700_000_040_000),
                r("wamid.D", ReceiptStatus::Sent, NOW.0),
                r(
                    "wamid.E",
                    ReceiptStatus::Failed { code: None },
                    1_700_000_300_000
                ),
                // The tap, as a signal for the number, about the OTP message it answered.
                r(
                    "wamid.E",
                    ReceiptStatus::NotRequested {
                        from: "919800000003".into()
                    },
                    1_700_000_200_000
                ),
            ]
        );
        assert_eq!(
            ev.fraud,
            vec![FraudSignal {
                from: "919800000003".into(),
                message_id: "wamid.IN1".into(),
                context_id: Some("wamid.E".into()),
                at: Timestamp(1_700_000_200_000),
            }]
        );
        assert_eq!(parse_statuses(MULTI.as_bytes(), NOW).unwrap().len(), 6);
    }

    #[test]
    fn a_failure_carries_its_first_error_code_and_a_tap_needs_a_number() {
        let body = br#"{"entry":[{"changes":[{"value":{
            "statuses":[{"id":"wamid.F","status":"failed","timestamp":"1",
                         "errors":[{"title":"no code"},{"code":131049},{"code":131026}]}],
            "messages":[
              {"id":"wamid.IN3","button":{"payload":"DID_NOT_REQUEST_CODE"}},
              {"from":"91 98","id":"wamid.IN4","button":{"payload":"DID_NOT_REQUEST_CODE"}},
              {"from":"919800000005","id":"wamid.IN5","button":{"payload":"SOMETHING_ELSE"}},
              {"from":"919800000006","id":"wamid.IN6","button":{"payload":"DID_NOT_REQUEST_CODE"}}
            ]}}]}]}"#;
        let ev = parse_events(body, NOW).unwrap();
        let statuses: Vec<&ReceiptStatus> = ev.receipts.iter().map(|r| &r.status).collect();
        assert_eq!(
            statuses,
            [
                &ReceiptStatus::Failed {
                    code: Some("131049".into())
                },
                // No context: the tap names its own message.
                &ReceiptStatus::NotRequested {
                    from: "919800000006".into()
                },
            ]
        );
        assert_eq!(ev.receipts[1].provider_id, "wamid.IN6");
        // Every tap is reported to the caller; only those with a number reach the outbox.
        assert_eq!(ev.fraud.len(), 3);
        assert_eq!(parse_statuses(body, NOW).unwrap().len(), 1);
    }

    #[test]
    fn a_bad_body_is_never_quoted_in_the_error() {
        // Regression (cargo-fuzz, target webhook): serde_json's own message quoted the value.
        for body in [
            &br#"{"entry":[{"changes":[{"value":{"statuses":[{"id":876543210}]}}]}]}"#[..],
            br#"{"entry":"secret-482913"}"#,
            br#"{"entry":[{"changes":[{"value":{"messages":[{"from":{"x":"771234"}}]}}]}]}"#,
        ] {
            let Err(e) = parse_events(body, NOW) else {
                panic!("accepted a body with a wrong type");
            };
            let shown = e.to_string();
            assert!(shown.contains("line 1 column"), "{shown}");
            for value in ["876543210", "482913", "771234"] {
                assert!(!shown.contains(value), "{shown}");
            }
        }
    }

    #[test]
    fn garbage_and_empty_bodies() {
        assert!(matches!(
            parse_events(b"<html>", NOW),
            Err(WebhookError::BadJson(_))
        ));
        assert!(matches!(
            parse_events(b"", NOW),
            Err(WebhookError::BadJson(_))
        ));
        assert!(matches!(
            parse_events(br#"{"entry":"x"}"#, NOW),
            Err(WebhookError::BadJson(_))
        ));
        assert_eq!(parse_events(b"{}", NOW).unwrap(), WebhookEvents::default());
        assert_eq!(
            parse_events(br#"{"entry":[{"changes":[{"value":null}]}]}"#, NOW).unwrap(),
            WebhookEvents::default()
        );
        // A status without an id cannot be matched: skipped.
        let ev = parse_events(
            br#"{"entry":[{"changes":[{"value":{"statuses":[{"status":"read"}]}}]}]}"#,
            NOW,
        )
        .unwrap();
        assert!(ev.receipts.is_empty());
    }
}
