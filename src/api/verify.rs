//! The Verify API over HTTP, for callers that do not make and check codes themselves: start
//! (`POST /v1/verifications`), status, check and resend. This module only translates JSON to
//! and from the transport-free core in [`crate::verify`] (which RADIUS shares): the code drawn
//! from the OS CSPRNG, stored only as HMAC-SHA256(key, id ":" code), delivered through the
//! normal policy, and checked in constant time, once, within an attempt limit.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::decode::parse_json;
use super::error::ApiError;
use super::listener::ConnInfo;
use super::{App, Resp, json_response, read_body};
use crate::config::Config;
use crate::store::{CheckOutcome, Verification};
use crate::verify::{self as core, Resent};

/// Re-exported from the transport-free core, where they live.
pub use crate::verify::{code_hash, new_code};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    to: String,
    channel: Option<String>,
    locale: Option<String>,
    length: Option<u32>,
    ttl_seconds: Option<u64>,
    /// The end user the code is for, as the caller knows them (`limits.per_user`).
    user: Option<String>,
    /// The end user's address (`limits.per_ip`).
    ip: Option<String>,
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

async fn start(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Result<Resp, ApiError> {
    let client = app.authenticate(cfg, req.headers(), conn)?;
    let (_, body) = read_body(req, cfg.server.max_body_bytes).await?;
    let r: StartRequest = parse_json(&body)?;
    let caller = crate::abuse::Caller::new(r.user, r.ip.as_deref())
        .map_err(|e| ApiError::field("invalid_field", e.field, e.message))?;
    let ttl = super::submit::ttl_of(cfg, r.ttl_seconds)?;
    let channel = r.channel.clone();
    let s = core::start(
        app,
        cfg,
        client,
        core::StartRequest {
            to: r.to,
            channel: r.channel,
            locale: r.locale,
            length: r.length,
            ttl,
            caller,
        },
    )
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"id": s.id, "status": "pending", "to": s.recipient, "channel": channel.unwrap_or_else(|| "auto".into()), "expires_at": s.expires_at.to_rfc3339(), "message_id": s.message_id}),
    ))
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
    let outcome = core::check(app, cfg, &client.name, id, &r.code).await?;
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
    let not_pending = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_pending",
            "this verification can no longer be resent",
        )
    };
    match core::resend(app, cfg, client, id).await? {
        Resent::New { sends } => Ok(json_response(
            StatusCode::OK,
            &json!({"id": id, "status": "pending", "sends": sends}),
        )),
        Resent::Existing => Ok(json_response(
            StatusCode::OK,
            &json!({"id": id, "status": "pending"}),
        )),
        Resent::MaxSends => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "max_sends",
            format!("at most {} codes per verification", cfg.verify.max_sends),
        )),
        Resent::NotFound => Err(ApiError::not_found()),
        Resent::NotPending => Err(not_pending()),
    }
}
