//! The native JSON API, a front door on [`super::submit`]: `POST /v1/messages` accepts a code
//! (or a text) for delivery and answers 202 only after the outbox row is committed;
//! `GET /v1/messages/{id}` shows its state and attempt history to the client that sent it.

use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::decode::{parse_json, url_pairs};
use super::error::ApiError;
use super::listener::ConnInfo;
use super::submit::{self, Accepted, Intake, Submission};
use super::views::{AcceptedView, MessageView};
use super::{App, Resp, error_response, json_response, read_body};
use crate::abuse::Caller;
use crate::config::Config;

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
    /// The end user the code is for, as the caller knows them (`limits.per_user`).
    user: Option<String>,
    /// That user's address (`limits.per_ip`).
    ip: Option<String>,
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

/// Decodes and validates a `POST /v1/messages` body and query as [`post_message`] does, up to
/// the number's parse, without a store (the fuzz targets' entry point).
#[doc(hidden)]
pub fn check_body(cfg: &Config, body: &[u8], query: Option<&str>) -> Result<(), ApiError> {
    let (_, s, _) = decode(cfg, body, query)?;
    crate::phone::parse(&s.to, cfg.otp.default_country)
        .map_err(|e| ApiError::field("invalid_phone_number", "to", format!("to {e}")))?;
    Ok(())
}

/// A `POST /v1/messages` body and query, decoded and checked up to the pipeline: the wait the
/// caller asked for, the submission and the end user it names. One function for the door and
/// the fuzz target.
fn decode(
    cfg: &Config,
    body: &[u8],
    query: Option<&str>,
) -> Result<(Option<Duration>, Submission, Caller), ApiError> {
    let r: SendRequest = parse_json(body)?;
    let caller = Caller::new(r.user, r.ip.as_deref())
        .map_err(|e| ApiError::field("invalid_field", e.field, e.message))?;
    let wait = parse_wait(query, r.wait_seconds)?;
    check_token("idempotency_key", &r.idempotency_key, 128)?;
    check_token("reference", &r.reference, 128)?;
    submit::check_locale(r.locale.as_deref())?;
    let ttl = submit::ttl_of(cfg, r.ttl_seconds)?;
    let (content, _) = submit::build_content(cfg, r.code, r.text, r.locale.as_deref(), ttl)?;
    let submission = Submission {
        to: r.to,
        content,
        ttl,
        locale: r.locale,
        idempotency_key: r.idempotency_key,
        reference: r.reference,
        only_channel: None,
    };
    Ok((wait, submission, caller))
}

/// `POST /v1/messages`
pub async fn post_message(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(cfg, req.headers(), conn)?;
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
    let (wait, submission, caller) = decode(cfg, &body, query.as_deref())?;
    let intake = Intake { app, cfg, client };
    let accepted = intake.accept_for(submission, &caller).await?;
    match accepted {
        Accepted::New(m) => {
            let mut body = AcceptedView::queued(&m);
            if let Some(w) = wait
                && let Ok(Some(o)) = app.dispatcher.wait_for(&m.id, w).await
            {
                body.status = o.state;
                body.channel = Some(o.channel);
            }
            Ok(json_response(StatusCode::ACCEPTED, &body))
        }
        Accepted::Repeat(m) => Ok(json_response(StatusCode::OK, &MessageView::new(&m, None))),
    }
}

/// `GET /v1/messages/{id}`
pub async fn get_message(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
    id: &str,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(cfg, req.headers(), conn)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ApiError::not_found());
    }
    match app.store.get(id, &client.name).await {
        Ok(Some((m, attempts))) => Ok(json_response(
            StatusCode::OK,
            &MessageView::new(&m, Some(&attempts)),
        )),
        Ok(None) => Err(ApiError::not_found()),
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            Ok(error_response(&ApiError::unavailable()))
        }
    }
}
