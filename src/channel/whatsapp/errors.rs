//! Cloud API answers on bytes: the success body (the wamid), Meta's error body, and the
//! mapping of `(HTTP status, error.code)` to what the gateway does next (see
//! `reference/whatsapp-cloud-api.md`). Decisions use `error.code` and the HTTP status only,
//! never Meta's message text. Reasons are built from our own table, so they never echo
//! anything Meta (or a proxy) sent back, and never the code or the token.

use std::time::Duration;

use serde::Deserialize;

/// What to do about a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The recipient cannot be reached on WhatsApp: send SMS now.
    FallBack {
        /// The number is not on WhatsApp (131026): route it to SMS for a while.
        not_on_channel: bool,
    },
    /// A rate limit (130429, 80007, 4): at most one short back-off, and throttle globally.
    RateLimited,
    /// Temporary trouble Meta answered with (5xx, 131000): retry once.
    Temporary,
    /// No answer (a timeout, a connection lost mid-request): the request may have reached
    /// Meta and the code may still arrive, so it is never sent again on WhatsApp.
    Ambiguous,
    /// No connection could be made (refused, no route, TLS handshake): nothing reached Meta,
    /// and a retry a moment later rarely finds the network back, so the message goes to the
    /// next channel at once instead of waiting out a back-off.
    Unreachable,
    /// Maintenance (131057): fall back now, leave WhatsApp alone for about a minute.
    Paused,
    /// The template is missing or not approved in the language asked for (132001): only
    /// that language is broken; the code goes in the default language or by SMS, and the
    /// circuit stays closed.
    LanguageMissing,
    /// Token, permission, account, policy or template trouble: open the circuit.
    ChannelDown,
}

impl ErrorClass {
    /// The back-off suggested before trying WhatsApp again for this class.
    pub fn backoff(self) -> Duration {
        match self {
            ErrorClass::RateLimited => Duration::from_millis(1_000),
            ErrorClass::Temporary | ErrorClass::Unreachable | ErrorClass::Ambiguous => {
                Duration::from_millis(250)
            }
            ErrorClass::Paused => PAUSE,
            ErrorClass::FallBack { .. } | ErrorClass::ChannelDown | ErrorClass::LanguageMissing => {
                Duration::ZERO
            }
        }
    }
}

/// How long 131057 (maintenance) keeps WhatsApp paused.
pub const PAUSE: Duration = Duration::from_secs(60);

/// A classified failure: what to do, the provider code and an admin-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// What to do next.
    pub class: ErrorClass,
    /// Meta's error code as text ("131026"), when the answer carried one.
    pub code: Option<String>,
    /// HTTP status, when there was an answer at all.
    pub status: Option<u16>,
    /// One line for attempts, /readyz and logs; free of codes and secrets.
    pub reason: String,
}

/// Meta's error object, tolerant of missing fields.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// `error.code`.
    #[serde(default)]
    pub code: Option<i64>,
    /// `error.error_subcode`.
    #[serde(default)]
    pub error_subcode: Option<i64>,
    /// `error.type`, e.g. "OAuthException".
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `error.fbtrace_id`, for support tickets with Meta.
    #[serde(default)]
    pub fbtrace_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct SuccessBody {
    #[serde(default)]
    messages: Vec<SuccessMessage>,
}

#[derive(Deserialize)]
struct SuccessMessage {
    id: Option<String>,
}

/// Parses Meta's error body; `None` for empty, non-JSON (an HTML page from a proxy) or
/// JSON without an `error` object.
pub fn parse_error_body(body: &[u8]) -> Option<ApiError> {
    serde_json::from_slice::<ErrorEnvelope>(body).ok()?.error
}

/// The wamid from a success body, if there is one.
pub fn parse_wamid(body: &[u8]) -> Option<String> {
    let b: SuccessBody = serde_json::from_slice(body).ok()?;
    b.messages
        .into_iter()
        .find_map(|m| m.id)
        .filter(|id| !id.is_empty())
}

/// Classifies an HTTP answer: `Ok(wamid)` when Meta took the message, else why not.
pub fn classify_response(status: u16, body: &[u8]) -> Result<String, Classified> {
    if (200..300).contains(&status) {
        return parse_wamid(body).ok_or_else(|| Classified {
            // Meta may have taken the message: retrying risks a duplicate, but the
            // dispatcher decides; the reason says so.
            class: ErrorClass::Temporary,
            code: None,
            status: Some(status),
            reason: format!(
                "HTTP {status} without a message id (ambiguous: the message may have been sent)"
            ),
        });
    }
    let err = parse_error_body(body);
    let code = err.as_ref().and_then(|e| e.code);
    Err(classify(status, code, looks_like_json(body)))
}

fn looks_like_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Classifies an error code and HTTP status (no body needed; `json` says whether the body was JSON).
pub fn classify(status: u16, code: Option<i64>, json: bool) -> Classified {
    let (class, what) = match code {
        Some(c) => match class_of_code(c) {
            Some(x) => x,
            None => class_of_status(status, json),
        },
        None => class_of_status(status, json),
    };
    let reason = match code {
        Some(c) => format!("{what} ({c}, HTTP {status})"),
        None => format!("{what} (HTTP {status})"),
    };
    Classified {
        class,
        code: code.map(|c| c.to_string()),
        status: Some(status),
        reason,
    }
}

/// The table from the reference: error code -> (class, admin-readable meaning).
pub fn class_of_code(code: i64) -> Option<(ErrorClass, &'static str)> {
    use ErrorClass::*;
    let fb = FallBack {
        not_on_channel: false,
    };
    Some(match code {
        131026 => (
            FallBack {
                not_on_channel: true,
            },
            "recipient cannot receive WhatsApp messages",
        ),
        131049 => (fb, "not delivered to keep ecosystem engagement healthy"),
        131030 => (fb, "recipient not in the test allow-list"),
        130472 => (fb, "recipient is part of a Meta experiment"),
        131021 => (fb, "recipient is the sender number"),
        131056 => (fb, "pair rate limit for this recipient"),
        130429 => (RateLimited, "throughput limit reached"),
        80007 => (RateLimited, "account rate limit reached"),
        4 => (RateLimited, "app rate limit reached"),
        131000 => (Temporary, "unknown error at Meta"),
        131016 => (Temporary, "service temporarily unavailable"),
        1 => (Temporary, "unknown API error"),
        2 => (Temporary, "API service temporarily unavailable"),
        131057 => (Paused, "business account in maintenance, WhatsApp paused"),
        190 => (ChannelDown, "access token expired or invalid"),
        0 => (ChannelDown, "authentication failed"),
        10 => (ChannelDown, "permission denied"),
        200..=299 => (ChannelDown, "API permission missing"),
        131005 => (ChannelDown, "access denied"),
        368 => (ChannelDown, "temporarily blocked for policy violations"),
        131031 => (ChannelDown, "business account locked"),
        131042 => (ChannelDown, "business payment problem"),
        131045 => (ChannelDown, "phone number registration problem"),
        130497 => (
            ChannelDown,
            "business account may not message users in this country",
        ),
        131048 => (ChannelDown, "spam rate limit hit"),
        132000 => (ChannelDown, "template parameter count mismatch"),
        132001 => (
            LanguageMissing,
            "template missing or not approved in this language",
        ),
        132012 => (ChannelDown, "template parameter format mismatch"),
        132015 => (ChannelDown, "template paused"),
        132016 => (ChannelDown, "template disabled"),
        _ => return None,
    })
}

/// When the code is missing or unknown, the HTTP status decides.
fn class_of_status(status: u16, json: bool) -> (ErrorClass, &'static str) {
    use ErrorClass::*;
    match status {
        401 => (ChannelDown, "unauthorized: access token rejected"),
        403 => (
            ChannelDown,
            "forbidden (token permissions or a proxy blocking Meta)",
        ),
        404 => (ChannelDown, "not found: check api_base and phone_number_id"),
        407 => (ChannelDown, "proxy authentication required"),
        429 => (RateLimited, "rate limited"),
        500..=599 if !json => (Temporary, "server or gateway error with a non-JSON body"),
        500..=599 => (Temporary, "server error"),
        _ if !json => (
            FallBack {
                not_on_channel: false,
            },
            "unexpected non-JSON answer",
        ),
        // An unknown 4xx code: this message was refused; SMS is the safe way on, and the
        // circuit stays closed because nothing says the channel is broken for everyone.
        _ => (
            FallBack {
                not_on_channel: false,
            },
            "request refused with an unlisted error",
        ),
    }
}

/// The failure of a request that got no HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// The request timed out: ambiguous, Meta may have taken it.
    Timeout,
    /// TCP, proxy or TLS connection failure: the request never left.
    Connect,
    /// The connection broke during the exchange.
    Other,
}

/// Classifies a failure without an HTTP answer (always retryable once).
pub fn classify_transport(f: TransportFailure, detail: &str) -> Classified {
    let reason = match f {
        TransportFailure::Timeout => {
            "timed out waiting for the Cloud API (ambiguous: the message may still arrive)"
                .to_string()
        }
        TransportFailure::Connect => format!("cannot connect to the Cloud API: {detail}"),
        TransportFailure::Other => {
            format!("connection to the Cloud API failed (ambiguous): {detail}")
        }
    };
    let class = match f {
        TransportFailure::Connect => ErrorClass::Unreachable,
        TransportFailure::Timeout | TransportFailure::Other => ErrorClass::Ambiguous,
    };
    Classified {
        class,
        code: None,
        status: None,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: i64) -> String {
        format!(
            r#"{{"error":{{"message":"whatever Meta says","type":"OAuthException","code":{code},"error_data":{{"messaging_product":"whatsapp","details":"d"}},"error_subcode":2494010,"fbtrace_id":"Az8"}}}}"#
        )
    }

    fn class(status: u16, code: i64) -> Classified {
        classify_response(status, body(code).as_bytes()).unwrap_err()
    }

    #[test]
    fn every_row_of_the_table() {
        use ErrorClass::*;
        let fb = FallBack {
            not_on_channel: false,
        };
        let rows: &[(u16, i64, ErrorClass)] = &[
            (
                400,
                131026,
                FallBack {
                    not_on_channel: true,
                },
            ),
            (400, 131049, fb),
            (400, 131030, fb),
            (400, 130472, fb),
            (400, 131021, fb),
            (400, 131056, fb),
            (429, 130429, RateLimited),
            (400, 80007, RateLimited),
            (400, 4, RateLimited),
            (500, 131000, Temporary),
            (503, 131016, Temporary),
            (500, 1, Temporary),
            (503, 2, Temporary),
            (500, 131057, Paused),
            (401, 190, ChannelDown),
            (401, 0, ChannelDown),
            (403, 10, ChannelDown),
            (403, 200, ChannelDown),
            (403, 250, ChannelDown),
            (403, 299, ChannelDown),
            (403, 131005, ChannelDown),
            (400, 368, ChannelDown),
            (400, 131031, ChannelDown),
            (400, 131042, ChannelDown),
            (400, 131045, ChannelDown),
            (400, 130497, ChannelDown),
            (400, 131048, ChannelDown),
            (400, 132000, ChannelDown),
            (404, 132001, LanguageMissing),
            (400, 132012, ChannelDown),
            (400, 132015, ChannelDown),
            (400, 132016, ChannelDown),
        ];
        for &(status, code, want) in rows {
            let c = class(status, code);
            assert_eq!(c.class, want, "code {code}");
            assert_eq!(c.code.as_deref(), Some(code.to_string().as_str()));
            assert_eq!(c.status, Some(status));
            assert!(c.reason.contains(&code.to_string()), "{}", c.reason);
            assert!(!c.reason.contains("whatever Meta says"), "{}", c.reason);
        }
    }

    #[test]
    fn admin_reasons_read_well() {
        assert_eq!(
            class(401, 190).reason,
            "access token expired or invalid (190, HTTP 401)"
        );
        assert!(
            class(404, 132001)
                .reason
                .starts_with("template missing or not approved in this language (132001")
        );
    }

    #[test]
    fn code_decides_not_message_or_status() {
        // Same message text, different codes: different classes.
        assert_eq!(class(400, 131026).class, class(400, 131026).class);
        assert_ne!(class(400, 131026).class, class(400, 132001).class);
        // A missing translation is not an outage; a paused or disabled template is.
        assert_eq!(class(404, 132001).class, ErrorClass::LanguageMissing);
        assert_eq!(class(400, 132015).class, ErrorClass::ChannelDown);
        // A 131026 under a 500 status is still a recipient problem.
        assert_eq!(
            class(500, 131026).class,
            ErrorClass::FallBack {
                not_on_channel: true
            }
        );
    }

    #[test]
    fn unknown_codes_fall_to_the_status() {
        assert_eq!(class(500, 999_999).class, ErrorClass::Temporary);
        assert_eq!(class(401, 999_999).class, ErrorClass::ChannelDown);
        assert_eq!(class(429, 999_999).class, ErrorClass::RateLimited);
        assert_eq!(
            class(400, 100).class,
            ErrorClass::FallBack {
                not_on_channel: false
            }
        );
    }

    #[test]
    fn bodies_that_are_not_the_documented_json() {
        let html = classify_response(502, b"<html>502 Bad Gateway</html>").unwrap_err();
        assert_eq!(html.class, ErrorClass::Temporary);
        assert_eq!(html.code, None);
        assert!(
            html.reason.contains("non-JSON") && html.reason.contains("502"),
            "{}",
            html.reason
        );

        let empty = classify_response(503, b"").unwrap_err();
        assert_eq!(empty.class, ErrorClass::Temporary);

        let obj = classify_response(400, b"{}").unwrap_err();
        assert!(matches!(
            obj.class,
            ErrorClass::FallBack {
                not_on_channel: false
            }
        ));
        assert!(obj.reason.contains("HTTP 400"), "{}", obj.reason);

        let unauth = classify_response(401, b"").unwrap_err();
        assert_eq!(unauth.class, ErrorClass::ChannelDown);

        let wrong_types = classify_response(400, br#"{"error":{"code":"abc"}}"#).unwrap_err();
        assert_eq!(wrong_types.code, None);

        let html_400 = classify_response(400, b"<html>nope</html>").unwrap_err();
        assert!(html_400.reason.contains("non-JSON"), "{}", html_400.reason);

        let proxy = classify_response(407, b"").unwrap_err();
        assert_eq!(proxy.class, ErrorClass::ChannelDown);
        assert!(proxy.reason.contains("proxy"));
    }

    #[test]
    fn success_bodies() {
        let ok = br#"{"messaging_product":"whatsapp","contacts":[{"input":"91","wa_id":"91"}],"messages":[{"id":"wamid.HBg"}]}"#;
        assert_eq!(classify_response(200, ok), Ok("wamid.HBg".to_string()));
        for bad in [
            &b"{}"[..],
            b"",
            b"<html>ok</html>",
            br#"{"messages":[{"id":""}]}"#,
        ] {
            let c = classify_response(200, bad).unwrap_err();
            assert_eq!(c.class, ErrorClass::Temporary);
            assert!(c.reason.contains("ambiguous"));
        }
    }

    #[test]
    fn error_body_fields_are_optional() {
        let e = parse_error_body(&body(131026).into_bytes()).unwrap();
        assert_eq!(e.code, Some(131026));
        assert_eq!(e.error_subcode, Some(2494010));
        assert_eq!(e.kind.as_deref(), Some("OAuthException"));
        assert_eq!(e.fbtrace_id.as_deref(), Some("Az8"));
        assert_eq!(
            parse_error_body(br#"{"error":{}}"#),
            Some(ApiError::default())
        );
        assert_eq!(parse_error_body(b"{}"), None);
        assert_eq!(parse_error_body(b"\xff\xfe"), None);
    }

    #[test]
    fn transport_failures_retry_and_timeouts_say_ambiguous() {
        let t = classify_transport(TransportFailure::Timeout, "");
        assert_eq!(t.class, ErrorClass::Ambiguous);
        assert!(t.reason.contains("ambiguous"));
        let c = classify_transport(TransportFailure::Connect, "connection refused");
        assert!(c.reason.contains("connection refused"));
        assert_eq!(
            c.class,
            ErrorClass::Unreachable,
            "nothing was sent: not ambiguous"
        );
        let o = classify_transport(TransportFailure::Other, "reset");
        assert_eq!(o.class, ErrorClass::Ambiguous);
        assert_eq!(ErrorClass::RateLimited.backoff(), Duration::from_secs(1));
        assert_eq!(ErrorClass::Paused.backoff(), PAUSE);
    }
}
