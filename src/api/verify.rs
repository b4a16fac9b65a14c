//! The Verify API, for callers that do not make and check codes themselves (RADIUS setups,
//! VPN concentrators): the gateway draws a code from the OS CSPRNG, stores only
//! HMAC-SHA256(key, id ":" code), delivers it through the normal policy, and checks a
//! candidate in constant time, once, within an attempt limit.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::decode::parse_json;
use super::error::ApiError;
use super::listener::ConnInfo;
use super::submit::{self, Accepted, Intake, Submission};
use super::{App, Resp, json_response, read_body};
use crate::channel::ChannelKind;
use crate::config::Config;
use crate::secret::Secret;
use crate::store::{CheckOutcome, InsertResult, NewVerification, Resend, Verification};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The stored form of a code: HMAC-SHA256 keyed with the verify key over "id:code".
pub fn code_hash(key: &Secret, id: &str, code: &str) -> [u8; 32] {
    let mut mac = match HmacSha256::new_from_slice(key.expose().as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => return [0; 32],
    };
    mac.update(id.as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    mac.finalize().into_bytes().into()
}

/// `length` uniformly random decimal digits from the OS CSPRNG (no modulo bias).
pub fn new_code(length: u32) -> String {
    (0..length)
        .map(|_| char::from(b'0' + rand::random_range(0..10u8)))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    to: String,
    channel: Option<String>,
    locale: Option<String>,
    length: Option<u32>,
    ttl_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    code: String,
}

fn view(v: &Verification) -> serde_json::Value {
    json!({
        "id": v.id,
        "status": v.status,
        "to": v.recipient,
        "channel": v.channel,
        "attempts": v.attempts,
        "sends": v.sends,
        "created_at": v.created_at.to_rfc3339(),
        "expires_at": v.expires_at.to_rfc3339(),
        "message_id": v.message_id,
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Routes `/v1/verifications...`.
pub async fn route(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
    rest: &str,
) -> Result<Resp, ApiError> {
    let method = req.method().clone();
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (parts.as_slice(), method) {
        ([], http::Method::POST) => start(app, cfg, req, conn).await,
        ([], _) => Err(ApiError::method_not_allowed("POST")),
        ([id], http::Method::GET) => get(app, cfg, req, conn, id).await,
        ([_], _) => Err(ApiError::method_not_allowed("GET")),
        ([id, "check"], http::Method::POST) => check(app, cfg, req, conn, id).await,
        ([id, "resend"], http::Method::POST) => resend(app, cfg, req, conn, id).await,
        ([_, "check" | "resend"], _) => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found()),
    }
}

fn parse_channel(c: Option<&str>) -> Result<Option<ChannelKind>, ApiError> {
    match c {
        None | Some("auto") => Ok(None),
        Some(s) => ChannelKind::parse(s).map(Some).ok_or_else(|| {
            ApiError::field(
                "invalid_field",
                "channel",
                "channel must be \"whatsapp\", \"sms\" or \"auto\"",
            )
        }),
    }
}

async fn start(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(cfg, req.headers(), conn)?;
    let (_, body) = read_body(req, cfg.server.max_body_bytes).await?;
    let r: StartRequest = parse_json(&body)?;
    let only_channel = parse_channel(r.channel.as_deref())?;
    submit::check_locale(r.locale.as_deref())?;
    let length = r.length.unwrap_or(cfg.verify.default_length);
    if !(4..=10).contains(&length) {
        return Err(ApiError::field(
            "invalid_field",
            "length",
            "length must be between 4 and 10",
        ));
    }
    let ttl = submit::ttl_of(cfg, r.ttl_seconds)?;
    let id = submit::new_id("ver", app.clock.now());
    let code = new_code(length);
    let key = app.verify_key(cfg);
    let hash = code_hash(&key, &id, &code);
    let (content, _) = submit::build_content(cfg, Some(code), None, r.locale.as_deref(), ttl)?;
    let intake = Intake { app, cfg, client };
    let p = intake.prepare(Submission {
        to: r.to,
        content,
        ttl,
        locale: r.locale,
        idempotency_key: None,
        reference: Some(id.clone()),
        only_channel,
    })?;
    let expires = p.message.expires_at;
    let new = NewVerification {
        id: id.clone(),
        code_hash: hash,
        length,
        channel: r.channel.clone(),
        message: p.message,
    };
    let result = app.store.create_verification(new, p.limits).await;
    match intake.stored(result)? {
        Accepted::New(m) => Ok(json_response(
            StatusCode::CREATED,
            &json!({"id": id, "status": "pending", "to": m.recipient, "channel": r.channel.unwrap_or_else(|| "auto".into()), "expires_at": expires.to_rfc3339(), "message_id": m.id}),
        )),
        Accepted::Repeat(_) => Err(ApiError::unavailable()),
    }
}

async fn get(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
    id: &str,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(cfg, req.headers(), conn)?;
    if !valid_id(id) {
        return Err(ApiError::not_found());
    }
    match app.store.verification(id, &client.name).await {
        Ok(Some(v)) => {
            let mut body = view(&v);
            if let Some(mid) = &v.message_id
                && let Ok(Some((m, _))) = app.store.get(mid, &client.name).await
            {
                body["delivery"] = json!({"status": m.state, "channel": m.channel});
            }
            Ok(json_response(StatusCode::OK, &body))
        }
        Ok(None) => Err(ApiError::not_found()),
        Err(_) => Err(ApiError::unavailable()),
    }
}

async fn check(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
    id: &str,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(cfg, req.headers(), conn)?;
    let (_, body) = read_body(req, cfg.server.max_body_bytes).await?;
    if !valid_id(id) {
        return Err(ApiError::not_found());
    }
    let r: CheckRequest = parse_json(&body)?;
    let candidate = r.code.trim();
    if candidate.is_empty() || candidate.len() > 16 {
        return Err(ApiError::field(
            "invalid_code",
            "code",
            "code must be 1 to 16 characters",
        ));
    }
    let hash = code_hash(&app.verify_key(cfg), id, candidate);
    let outcome = app
        .store
        .check_verification(
            id,
            &client.name,
            hash,
            cfg.verify.max_attempts,
            app.clock.now(),
        )
        .await
        .map_err(|_| ApiError::unavailable())?;
    let (status, extra) = match outcome {
        CheckOutcome::NotFound => return Err(ApiError::not_found()),
        CheckOutcome::Approved => ("approved", json!(null)),
        CheckOutcome::Denied { left } => ("denied", json!({"attempts_left": left})),
        CheckOutcome::Expired => ("expired", json!(null)),
        CheckOutcome::MaxAttempts => ("max_attempts", json!(null)),
        CheckOutcome::NotPending(s) => (
            "denied",
            json!({"reason": if s == "approved" { "already_used".to_string() } else { s }}),
        ),
    };
    tracing::info!(verification = %id, client = %client.name, status, "verification checked");
    let mut body = json!({"id": id, "status": status});
    if let serde_json::Value::Object(map) = extra {
        for (k, v) in map {
            body[k] = v;
        }
    }
    Ok(json_response(StatusCode::OK, &body))
}

async fn resend(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
    id: &str,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(cfg, req.headers(), conn)?;
    if !valid_id(id) {
        return Err(ApiError::not_found());
    }
    let Some(v) = app
        .store
        .verification(id, &client.name)
        .await
        .map_err(|_| ApiError::unavailable())?
    else {
        return Err(ApiError::not_found());
    };
    let now = app.clock.now();
    let remaining = now.until(v.expires_at);
    if remaining < Duration::from_secs(10) || v.status != "pending" {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            ..ApiError::new(
                StatusCode::CONFLICT,
                "not_pending",
                "this verification can no longer be resent",
            )
        });
    }
    let code = new_code(v.length);
    let hash = code_hash(&app.verify_key(cfg), id, &code);
    let (content, _) = submit::build_content(cfg, Some(code), None, None, remaining)?;
    let only_channel = parse_channel(v.channel.as_deref())?;
    let intake = Intake { app, cfg, client };
    let mut p = intake.prepare(Submission {
        to: v.recipient.clone(),
        content,
        ttl: remaining,
        locale: None,
        idempotency_key: None,
        reference: Some(id.to_owned()),
        only_channel,
    })?;
    // The code lives as long as the verification, not longer.
    p.message.expires_at = v.expires_at;
    match app
        .store
        .resend_verification(
            id,
            &client.name,
            hash,
            p.message,
            cfg.verify.max_sends,
            p.limits,
        )
        .await
    {
        Ok(Resend::Stored(r @ InsertResult::Created(_))) => {
            intake.stored(Ok(r))?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"id": id, "status": "pending", "sends": v.sends + 1}),
            ))
        }
        Ok(Resend::Stored(other)) => intake
            .stored(Ok(other))
            .map(|_| json_response(StatusCode::OK, &json!({"id": id, "status": "pending"}))),
        Ok(Resend::MaxSends) => Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "max_sends",
                format!("at most {} codes per verification", cfg.verify.max_sends),
            )
        }),
        Ok(Resend::NotFound) => Err(ApiError::not_found()),
        Ok(Resend::NotPending) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_pending",
            "this verification can no longer be resent",
        )),
        Err(_) => Err(ApiError::unavailable()),
    }
}
