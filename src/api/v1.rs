//! The native JSON API: `POST /v1/messages` accepts a code (or a text) for delivery and answers
//! 202 only after the outbox row is committed; `GET /v1/messages/{id}` shows its state and
//! attempt history to the client that sent it.

use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::listener::ConnInfo;
use super::{App, Resp, error_response, json_response, read_body, retry_after_secs};
use crate::channel::{ChannelKind, Content};
use crate::clock::Timestamp;
use crate::config::{ClientConfig, Config};
use crate::dispatch::policy::{self, Kind};
use crate::domain::{E164, MessageId};
use crate::store::{InsertResult, LimitScope, Message, MessageState, NewMessage};

/// Longest `wait` a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// The body of `POST /v1/messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: String,
    code: Option<String>,
    text: Option<String>,
    ttl_seconds: Option<u64>,
    locale: Option<String>,
    idempotency_key: Option<String>,
    reference: Option<String>,
    wait_seconds: Option<f64>,
}

/// A validated request to accept a message, whichever front door it came through.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Raw number as given.
    pub to: String,
    /// The content, already built.
    pub content: Content,
    /// Lifetime.
    pub ttl: Duration,
    /// Locale.
    pub locale: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Caller's reference.
    pub reference: Option<String>,
    /// Restrict delivery to one channel.
    pub only_channel: Option<ChannelKind>,
}

/// Parses a JSON body strictly (unknown fields, trailing bytes and wrong types are errors
/// naming the field, never echoing a value).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    // The path to a bad field is tracked only once the body is known to be bad: tracking it
    // on every request cost more than the rest of the parse.
    let v = match T::deserialize(&mut de) {
        Ok(v) => v,
        Err(_) => {
            let mut again = serde_json::Deserializer::from_slice(body);
            return Err(match serde_path_to_error::deserialize::<_, T>(&mut again) {
                Err(e) => json_error(e),
                Ok(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "invalid JSON"),
            });
        }
    };
    de.end().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "trailing characters after the JSON body",
        )
    })?;
    Ok(v)
}

impl Submission {
    /// A message from a compatibility caller: no locale, key, reference or channel choice.
    pub fn plain(to: String, content: Content, ttl: Duration) -> Submission {
        Submission {
            to,
            content,
            ttl,
            locale: None,
            idempotency_key: None,
            reference: None,
            only_channel: None,
        }
    }
}

/// Turns serde's error into one that names the field and never echoes a value (a mistyped
/// code would otherwise come back in the error, and be logged by the caller).
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner();
    let text = inner.to_string();
    let text = text.split(" at line ").next().unwrap_or("").to_string();
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON ({text})"),
        ),
        serde_json::error::Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body could not be read",
        ),
        serde_json::error::Category::Data => {
            if let Some(rest) = text.strip_prefix("missing field `") {
                let field = rest.split('`').next().unwrap_or("");
                return ApiError::field("missing_field", field, format!("{field} is required"));
            }
            if let Some(rest) = text.strip_prefix("unknown field `") {
                let field = rest.split('`').next().unwrap_or("").to_string();
                return ApiError::field(
                    "unknown_field",
                    field.clone(),
                    format!("{field} is not a field of this request"),
                );
            }
            let expected = text
                .split_once(", expected ")
                .map(|(_, e)| e.to_string())
                .unwrap_or_else(|| "another type".into());
            let field = if path == "." {
                "(body)".to_string()
            } else {
                path
            };
            ApiError::field(
                "invalid_field",
                field.clone(),
                format!("{field} has the wrong type or value (expected {expected})"),
            )
        }
    }
}

fn check_token(field: &'static str, v: &Option<String>, max: usize) -> Result<(), ApiError> {
    if let Some(s) = v
        && (s.is_empty() || s.len() > max || !s.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err(ApiError::field(
            "invalid_field",
            field,
            format!("{field} must be 1 to {max} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

/// Validates a caller's locale ("en", "hi", "pt_BR").
pub fn check_locale(locale: Option<&str>) -> Result<(), ApiError> {
    if let Some(l) = locale
        && (l.is_empty()
            || l.len() > 16
            || !l
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(ApiError::field(
            "invalid_field",
            "locale",
            "locale must look like \"en\", \"hi\" or \"pt_BR\"",
        ));
    }
    Ok(())
}

/// Validates a code: what WhatsApp's template can carry.
pub fn check_code(code: &str) -> Result<(), ApiError> {
    let n = code.chars().count();
    if n == 0 || n > 15 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::field(
            "invalid_code",
            "code",
            "code must be 1 to 15 letters or digits",
        ));
    }
    Ok(())
}

/// Validates a caller's free text.
pub fn check_text(text: &str) -> Result<(), ApiError> {
    let n = text.chars().count();
    if text.trim().is_empty() {
        return Err(ApiError::field(
            "invalid_text",
            "text",
            "text must not be empty",
        ));
    }
    if n > 1000 {
        return Err(ApiError::field(
            "invalid_text",
            "text",
            format!("text is {n} characters; at most 1000 are sent"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r')
    {
        return Err(ApiError::field(
            "invalid_text",
            "text",
            "text contains control characters",
        ));
    }
    Ok(())
}

/// Builds the content for a code or a text: texts with a unique code in them ride WhatsApp too.
pub fn build_content(
    cfg: &Config,
    code: Option<String>,
    text: Option<String>,
    locale: Option<&str>,
    ttl: Duration,
) -> Result<(Content, Option<&'static str>), ApiError> {
    match (code, text) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "invalid_field",
            "code",
            "give either code or text, not both",
        )),
        (None, None) => Err(ApiError::field(
            "missing_field",
            "code",
            "code (or text) is required",
        )),
        (Some(code), None) => {
            check_code(&code)?;
            let template = locale
                .and_then(|l| {
                    cfg.otp.sms_text_locales.get(l).or_else(|| {
                        cfg.otp
                            .sms_text_locales
                            .get(l.split(['-', '_']).next().unwrap_or(l))
                    })
                })
                .unwrap_or(&cfg.otp.sms_text);
            let sms_text = policy::render_sms(template, &code, ttl, &cfg.otp.org);
            Ok((Content::Code { code, sms_text }, None))
        }
        (None, Some(text)) => {
            check_text(&text)?;
            match policy::extract_code(&cfg.otp.code_pattern, &text) {
                Ok(code) => Ok((
                    Content::Code {
                        code,
                        sms_text: text,
                    },
                    None,
                )),
                Err(why) => Ok((Content::Text(text), Some(why))),
            }
        }
    }
}

/// Checks the lifetime a caller asked for.
pub fn ttl_of(cfg: &Config, ttl_seconds: Option<u64>) -> Result<Duration, ApiError> {
    match ttl_seconds {
        None => Ok(cfg.otp.default_ttl),
        Some(s) => {
            let d = Duration::from_secs(s);
            if s < 10 || d > cfg.otp.max_ttl {
                Err(ApiError::field(
                    "invalid_ttl",
                    "ttl_seconds",
                    format!(
                        "ttl_seconds must be between 10 and {}",
                        cfg.otp.max_ttl.as_secs()
                    ),
                ))
            } else {
                Ok(d)
            }
        }
    }
}

/// The outcome of [`accept`].
pub enum Accepted {
    /// Newly stored.
    New(Message),
    /// The idempotency key's first message.
    Repeat(Message),
}

/// A message ready for the store, with the limits that apply to it.
pub struct Prepared {
    /// The row to insert.
    pub message: NewMessage,
    /// The limits to check in the same transaction.
    pub limits: Vec<(LimitScope, crate::config::Rate)>,
}

/// Validates the number and applies the policy's admission; builds the row and its limits.
pub fn prepare(app: &App, client: &ClientConfig, s: Submission) -> Result<Prepared, ApiError> {
    let cfg = app.live.get();
    let number = crate::phone::parse(&s.to, cfg.otp.default_country)
        .map_err(|e| ApiError::field("invalid_phone_number", "to", format!("to {e}")))?;
    let configured = app.dispatcher.configured();
    if configured.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_channel",
            "no delivery channel is configured on this gateway",
        ));
    }
    let kind = match s.content {
        Content::Code { .. } => Kind::Code,
        Content::Text(_) => Kind::Text,
    };
    policy::admit(
        &cfg,
        client,
        number.country.as_deref(),
        kind,
        &configured,
        s.only_channel,
    )
    .map_err(|r| ApiError {
        field: Some("to".into()),
        ..ApiError::new(StatusCode::FORBIDDEN, r.code, r.message)
    })?;
    let now = app.clock.now();
    let message = NewMessage {
        id: MessageId::new(new_id("msg", now)),
        client: client.name.clone(),
        recipient: E164::new(&number.e164).ok_or_else(|| {
            ApiError::field("invalid_phone_number", "to", "to is not an E.164 number")
        })?,
        country: number.country.clone(),
        content: s.content,
        locale: s.locale,
        reference: s.reference,
        idempotency_key: s.idempotency_key,
        created_at: now,
        expires_at: now.plus(s.ttl),
        only_channel: s.only_channel,
    };
    let l = &cfg.limits;
    let limits = [
        (LimitScope::Recipient, l.per_recipient),
        (LimitScope::Client, l.per_client),
        (LimitScope::Country, l.per_country),
        (LimitScope::Global, l.global),
    ]
    .into_iter()
    .filter_map(|(s, r)| r.map(|r| (s, r)))
    .collect();
    Ok(Prepared { message, limits })
}

/// Turns the store's answer into the caller's: wakes the dispatcher on a new message.
pub fn stored(
    app: &App,
    client: &ClientConfig,
    r: Result<InsertResult, crate::store::StoreError>,
) -> Result<Accepted, ApiError> {
    match r {
        Ok(InsertResult::Created(m)) => {
            app.metrics.accepted.inc();
            app.dispatcher.wake();
            tracing::info!(message = %m.id, client = %client.name, country = m.country.as_deref().unwrap_or("?"), kind = %m.kind, "accepted");
            Ok(Accepted::New(m))
        }
        Ok(InsertResult::Existing(m)) => Ok(Accepted::Repeat(m)),
        Ok(InsertResult::KeyConflict) => Err(ApiError {
            status: StatusCode::CONFLICT,
            ..ApiError::field(
                "idempotency_key_conflict",
                "idempotency_key",
                "this idempotency_key was used for another recipient",
            )
        }),
        Ok(InsertResult::Limited { scope, retry_after }) => Err(ApiError {
            retry_after: Some(retry_after_secs(retry_after)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("the {} limit is reached; retry later", scope.as_str()),
            )
        }),
        Err(e) => {
            tracing::error!(error = %e, "store refused a message");
            Err(ApiError::unavailable())
        }
    }
}

/// Validates, admits, checks limits and stores: the one path every front door takes to put
/// a message in the outbox. Resolves only after the row is committed.
pub async fn accept(app: &App, client: &ClientConfig, s: Submission) -> Result<Accepted, ApiError> {
    let p = prepare(app, client, s)?;
    let r = app.store.insert(p.message, p.limits).await;
    stored(app, client, r)
}

/// A fresh id with a type prefix ("msg", "ver"): the creation time in milliseconds, then 80
/// random bits, 32 hex digits in all.
///
/// Ids are primary keys: new ones landing next to each other keep a group commit's index
/// writes on a few B-tree pages instead of one random page per message, which roughly halved
/// the WAL bytes per accepted message. The random part keeps them unguessable; a message is
/// visible only to its own client anyway.
pub fn new_id(prefix: &str, now: crate::clock::Timestamp) -> String {
    let random: [u8; 10] = rand::random();
    let millis = u64::try_from(now.0).unwrap_or(0) & 0xffff_ffff_ffff;
    format!("{prefix}_{millis:012x}{}", hex::encode(random))
}

fn parse_wait(query: Option<&str>, body: Option<f64>) -> Result<Option<Duration>, ApiError> {
    let from_query = query.and_then(|q| {
        url_pairs(q)
            .into_iter()
            .find(|(k, _)| k == "wait")
            .map(|(_, v)| v)
    });
    let bad = || {
        ApiError::field(
            "invalid_field",
            "wait",
            "wait must be a duration such as \"5s\" or a number of seconds",
        )
    };
    let d = match (from_query, body) {
        (Some(v), _) => Some(match crate::config::parse_duration(&v) {
            Ok(d) => d,
            Err(_) => v
                .parse::<f64>()
                .ok()
                .and_then(|f| Duration::try_from_secs_f64(f).ok())
                .ok_or_else(bad)?,
        }),
        (None, Some(f)) => Some(Duration::try_from_secs_f64(f).map_err(|_| bad())?),
        (None, None) => None,
    };
    match d {
        Some(d) if d > MAX_WAIT => Err(ApiError::field(
            "invalid_field",
            "wait",
            format!("wait may be at most {}s", MAX_WAIT.as_secs()),
        )),
        other => Ok(other),
    }
}

/// Decoded query pairs.
pub fn url_pairs(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

/// `POST /v1/messages`
pub async fn post_message(
    app: &App,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(req.headers(), conn)?;
    let cfg = app.live.get();
    if let Some(ct) = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        && !ct.to_ascii_lowercase().starts_with("application/json")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    let query = req.uri().query().map(str::to_owned);
    let (_, body) = read_body(req, cfg.server.max_body_bytes).await?;
    let r: SendRequest = parse_json(&body)?;
    let wait = parse_wait(query.as_deref(), r.wait_seconds)?;
    check_token("idempotency_key", &r.idempotency_key, 128)?;
    check_token("reference", &r.reference, 128)?;
    check_locale(r.locale.as_deref())?;
    let ttl = ttl_of(&cfg, r.ttl_seconds)?;
    let (content, _) = build_content(&cfg, r.code, r.text, r.locale.as_deref(), ttl)?;
    let accepted = accept(
        app,
        &client,
        Submission {
            to: r.to,
            content,
            ttl,
            locale: r.locale,
            idempotency_key: r.idempotency_key,
            reference: r.reference,
            only_channel: None,
        },
    )
    .await?;
    match accepted {
        Accepted::New(m) => {
            let mut body = AcceptedBody {
                channel: None,
                expires_at: m.expires_at.to_rfc3339(),
                id: &m.id,
                reference: m.reference.as_deref(),
                status: MessageState::Queued,
                to: &m.recipient,
            };
            if let Some(w) = wait
                && let Ok(Some(o)) = app.dispatcher.wait_for(&m.id, w).await
            {
                body.status = o.state;
                body.channel = Some(o.channel);
            }
            Ok(json_response(StatusCode::ACCEPTED, &body))
        }
        Accepted::Repeat(m) => Ok(json_response(StatusCode::OK, &message_json(&m, None))),
    }
}

/// The body of a 202, written straight from the message: a `json!` map allocates a tree on
/// every accept. Keys in the order that map wrote them.
#[derive(serde::Serialize)]
struct AcceptedBody<'a> {
    /// Present only when the caller waited and an attempt ended (null if none carried it).
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<Option<ChannelKind>>,
    expires_at: String,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    status: MessageState,
    to: &'a str,
}

fn message_json(m: &Message, attempts: Option<&[crate::store::Attempt]>) -> serde_json::Value {
    let mut v = json!({
        "id": m.id,
        "status": m.state,
        "channel": m.channel,
        "to": m.recipient,
        "created_at": m.created_at.to_rfc3339(),
        "expires_at": m.expires_at.to_rfc3339(),
        "finished_at": m.finished_at.map(Timestamp::to_rfc3339),
        "reason": m.reason,
        "reference": m.reference,
    });
    if let Some(a) = attempts {
        v["attempts"] = a.iter().map(attempt_json).collect();
    }
    v
}

/// An attempt as the API has always shown it (the store's row used to be serialised as is).
fn attempt_json(a: &crate::store::Attempt) -> serde_json::Value {
    json!({
        "id": a.id,
        "channel": a.channel.as_str(),
        "purpose": a.purpose.as_str(),
        "started_at": a.started_at.to_rfc3339(),
        "ended_at": a.ended_at.map(Timestamp::to_rfc3339),
        "outcome": a.end.map(|e| e.as_str()),
        "provider_id": a.provider_id,
        "error_code": a.error_code,
        "detail": a.detail,
        "receipt": a.receipt.map(|r| r.as_str()),
        "receipt_at": a.receipt_at.map(Timestamp::to_rfc3339),
    })
}

/// `GET /v1/messages/{id}`
pub async fn get_message(
    app: &App,
    req: Request<Incoming>,
    conn: ConnInfo,
    id: &str,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(req.headers(), conn)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ApiError::not_found());
    }
    match app.store.get(id, &client.name).await {
        Ok(Some((m, attempts))) => Ok(json_response(
            StatusCode::OK,
            &message_json(&m, Some(&attempts)),
        )),
        Ok(None) => Err(ApiError::not_found()),
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            Ok(error_response(&ApiError::unavailable()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    #[test]
    fn ids_sort_by_creation_and_differ_within_a_millisecond() {
        let t = Timestamp(1_795_000_000_000);
        let (a, b) = (new_id("msg", t), new_id("msg", t));
        let later = new_id("msg", Timestamp(t.0 + 1));
        assert_ne!(a, b);
        for id in [&a, &b, &later] {
            let hex = id.strip_prefix("msg_").unwrap();
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert!(a < later && b < later, "{a} {b} {later}");
        assert_eq!(&a[4..16], &format!("{:012x}", t.0));
    }
}
