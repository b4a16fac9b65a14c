//! Compatibility front doors for identity systems that already have a "send SMS over HTTP"
//! setting: Kannel's `/cgi-bin/sendsms` (exact reply strings) and a generic `/v1/sms` that
//! takes the field names and auth styles privacyIDEA, LinOTP, Authentik, multiOTP, Keycloak
//! plugins and ADSelfService Plus send by default. Both hand the text to [`super::submit`], so
//! limits, policy and durability are the same as the native API's.

use std::collections::HashMap;

use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use super::auth::{self, Credentials};
use super::decode::url_pairs;
use super::error::ApiError;
use super::listener::ConnInfo;
use super::submit::{self, Accepted, Intake};
use super::{App, Resp, json_response, read_body, retry_after_secs, text_response};
use crate::abuse::Caller;
use crate::config::Config;

/// Kannel's reply strings, byte for byte.
pub mod kannel_reply {
    /// 202
    pub const ACCEPTED: &str = "0: Accepted for delivery";
    /// 403
    pub const AUTH_FAILED: &str = "Authorization failed for sendsms";
    /// 400
    pub const NO_RECEIVER: &str = "Missing receiver number, rejected";
    /// 403
    pub const NOT_ROUTABLE: &str = "Not routable. Do not try again.";
    /// 503
    pub const TEMPORAL: &str = "Temporal failure, try again later.";
}

/// Receivers one request may name, at every door that takes several.
pub const MAX_RECEIVERS: usize = 10;

/// Accepts one message per distinct number, all or nothing ([`Intake::accept_all`]); the
/// ids in the order of the numbers.
async fn accept_each(
    intake: Intake<'_>,
    numbers: Vec<String>,
    content: &crate::channel::Content,
    ttl: std::time::Duration,
    caller: &Caller,
) -> Result<Vec<String>, ApiError> {
    let accepted = intake.accept_all_for(numbers, content, ttl, caller).await?;
    Ok(accepted
        .into_iter()
        .map(|(Accepted::New(m) | Accepted::Repeat(m))| m.id.to_string())
        .collect())
}

fn first<'a>(params: &'a HashMap<String, String>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| params.get(*n).map(String::as_str))
}

/// Kannel's form or query parameters, the last value of a repeated name winning (public for
/// the fuzz targets only).
#[doc(hidden)]
pub fn form_params(bytes: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn header_str<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn kannel_text(status: StatusCode, body: &str) -> Resp {
    text_response(status, body)
}

/// Kannel's parameters from the query, and from a POST's form or its text/plain body with
/// X-Kannel-* headers; the refusal, in Kannel's words, when there are none to read.
async fn kannel_params(
    cfg: &Config,
    req: Request<Incoming>,
) -> Result<HashMap<String, String>, Resp> {
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST {
        return Err(kannel_text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Unsupported method",
        ));
    }
    let query = req
        .uri()
        .query()
        .map(|q| form_params(q.as_bytes()))
        .unwrap_or_default();
    let (parts, body) = match read_body(req, cfg.server.max_body_bytes).await {
        Ok(x) => x,
        Err(e) => return Err(kannel_text(e.status, &e.message)),
    };
    let mut params = query;
    let ctype = header_str(&parts, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if method == Method::POST {
        if ctype.starts_with("application/x-www-form-urlencoded") {
            params.extend(form_params(&body));
        } else {
            // Kannel's POST: the body is the text, the rest travels in X-Kannel-* headers.
            for (h, k) in [
                ("x-kannel-username", "username"),
                ("x-kannel-password", "password"),
                ("x-kannel-to", "to"),
                ("x-kannel-from", "from"),
                ("x-kannel-validity", "validity"),
            ] {
                if let Some(v) = header_str(&parts, h) {
                    params.insert(k.into(), v.into());
                }
            }
            params.insert("text".into(), String::from_utf8_lossy(&body).into_owned());
        }
    }
    Ok(params)
}

/// A refusal from the submit pipeline in Kannel's words: only a bad number and a refused
/// country are final for Kannel's callers, everything else is worth a retry.
fn kannel_refusal(e: &ApiError) -> Resp {
    let mut r = match e.code {
        "invalid_phone_number" => kannel_text(
            StatusCode::BAD_REQUEST,
            &format!("Invalid receiver number, rejected ({})", e.message),
        ),
        // A premium-rate or similar number will not become routable by trying again.
        "country_not_allowed" | "number_type_not_allowed" => {
            kannel_text(StatusCode::FORBIDDEN, kannel_reply::NOT_ROUTABLE)
        }
        _ => kannel_text(StatusCode::SERVICE_UNAVAILABLE, kannel_reply::TEMPORAL),
    };
    if let Some(s) = e.retry_after
        && let Ok(v) = http::HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The lifetime from Kannel's `validity` (minutes; longer than `max_ttl` is cut to it), or
/// why it is refused: one that is not a whole number of minutes is not silently replaced by
/// the default lifetime.
fn kannel_ttl(cfg: &Config, validity: Option<&str>) -> Result<std::time::Duration, String> {
    let ttl_seconds = match validity.map(str::trim) {
        None | Some("") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(m) => Some(m.saturating_mul(60).min(cfg.otp.max_ttl.as_secs())),
            Err(_) => return Err("must be a whole number of minutes".into()),
        },
    };
    submit::ttl_of(cfg, ttl_seconds)
        .map_err(|_| format!("must be 1 to {} minutes", cfg.otp.max_ttl.as_secs() / 60))
}

/// `/cgi-bin/sendsms` (GET with a query, POST as a form or as text/plain with X-Kannel-* headers).
pub async fn kannel(app: &App, cfg: &Config, req: Request<Incoming>, conn: ConnInfo) -> Resp {
    let params = match kannel_params(cfg, req).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let user = first(&params, &["username", "user"]).unwrap_or("");
    let pass = first(&params, &["password", "pass"]).unwrap_or("");
    let creds = Credentials::Pair {
        user: user.into(),
        secret: pass.into(),
    };
    let client = match auth::authenticate(&cfg.clients, Some(&creds), conn.remote.ip(), true) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(remote = %conn.remote, reason = ?e, "kannel: authorization failed");
            app.metrics.reject("unauthorized");
            return kannel_text(StatusCode::FORBIDDEN, kannel_reply::AUTH_FAILED);
        }
    };
    let receivers: Vec<String> = first(&params, &["to"])
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if receivers.is_empty() {
        app.metrics.reject("missing_receiver");
        return kannel_text(StatusCode::BAD_REQUEST, kannel_reply::NO_RECEIVER);
    }
    if receivers.len() > MAX_RECEIVERS {
        app.metrics.reject("invalid_field");
        return kannel_text(
            StatusCode::BAD_REQUEST,
            &format!(
                "Too many receivers, rejected (to: at most {MAX_RECEIVERS} numbers per request)"
            ),
        );
    }
    let text = first(&params, &["text"]).unwrap_or("").to_string();
    let ttl = match kannel_ttl(cfg, first(&params, &["validity"])) {
        Ok(t) => t,
        Err(why) => {
            app.metrics.reject("invalid_ttl");
            return kannel_text(
                StatusCode::BAD_REQUEST,
                &format!("Invalid validity, rejected (validity {why})"),
            );
        }
    };
    let (content, _) = match submit::build_content(cfg, None, Some(text), None, ttl) {
        Ok(c) => c,
        Err(e) => {
            app.metrics.reject(e.code);
            return kannel_text(
                StatusCode::BAD_REQUEST,
                &format!("Invalid text, rejected ({})", e.message),
            );
        }
    };
    let intake = Intake { app, cfg, client };
    let ids = match accept_each(intake, receivers, &content, ttl, &Caller::default()).await {
        Ok(ids) => ids,
        Err(e) => {
            app.metrics.reject(e.code);
            return kannel_refusal(&e);
        }
    };
    let mut r = kannel_text(StatusCode::ACCEPTED, kannel_reply::ACCEPTED);
    if let Ok(v) = http::HeaderValue::from_str(&ids.join(" ")) {
        r.headers_mut().insert("x-otpgate-id", v);
    }
    r
}

/// Field names peers use for the number.
pub const NUMBER_FIELDS: &[&str] = &[
    "phone",
    "to",
    "To",
    "mobile",
    "mobileNumber",
    "msisdn",
    "receiver",
    "recipient",
    "number",
];
/// Field names peers use for the text, most specific first.
pub const TEXT_FIELDS: &[&str] = &["sms", "text", "message", "Message", "msg", "Body", "body"];
/// Field names peers use to carry a key in the request itself.
pub const KEY_FIELDS: &[&str] = &["key", "api_key", "apikey", "token", "access_token"];

/// A JSON field's values: a string or a number, or a flat list of them. A list inside a
/// list (or an object) in a field we read is refused, naming it: flattening it would guess
/// at what the caller meant. Other fields are not read, so their shape does not matter.
/// (Public for the fuzz targets only.)
#[doc(hidden)]
pub fn value_strings(key: &str, v: &serde_json::Value) -> Result<Vec<String>, ApiError> {
    use serde_json::Value;
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let read = NUMBER_FIELDS.contains(&key) || TEXT_FIELDS.contains(&key);
    match v {
        Value::Array(a) if read => a
            .iter()
            .map(|e| {
                one(e).ok_or_else(|| {
                    ApiError::field(
                        "invalid_field",
                        key,
                        format!("{key} must be a string or a flat list of strings or numbers"),
                    )
                })
            })
            .collect(),
        Value::Array(a) => Ok(a.iter().filter_map(one).collect()),
        other => Ok(one(other).into_iter().collect()),
    }
}

/// The generic HTTP SMS provider endpoint `/v1/sms`.
pub async fn generic(app: &App, cfg: &Config, req: Request<Incoming>, conn: ConnInfo) -> Resp {
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let (json_reply, result) = generic_inner(app, cfg, req, conn).await;
    let json_reply = json_reply || wants_json;
    match result {
        Ok(ids) => {
            if json_reply {
                // "status" first, so LinOTP's prefix match on {"status":"queued" works.
                let body = format!(
                    "{{\"status\":\"queued\",\"id\":{},\"ids\":{}}}",
                    json!(ids.first()),
                    json!(ids)
                );
                let mut r = text_response(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            } else {
                text_response(StatusCode::OK, format!("OK {}", ids.join(" ")))
            }
        }
        Err(e) => {
            app.metrics.reject(e.code);
            // Failure bodies never contain the success tokens ("OK", "queued").
            let mut r = if json_reply {
                json_response(
                    e.status,
                    &json!({"status": "error", "error": {"code": e.code, "field": e.field, "message": e.message}}),
                )
            } else {
                text_response(e.status, format!("ERROR {}: {}", e.code, e.message))
            };
            if let Some(s) = e.retry_after
                && let Ok(v) = http::HeaderValue::from_str(&s.to_string())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            if e.status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Basic realm=\"otpgate\""),
                );
            }
            r
        }
    }
}

/// Every field of a generic request as a list of strings, from the query and a POST's form
/// or JSON body.
type Fields = HashMap<String, Vec<String>>;

/// Reads a generic request: its head, whether the caller spoke JSON, and its fields. On a
/// refusal, whether to answer it in JSON.
async fn generic_fields(
    cfg: &Config,
    req: Request<Incoming>,
) -> Result<(http::request::Parts, bool, Fields), (bool, ApiError)> {
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST {
        return Err((false, ApiError::method_not_allowed("GET, POST")));
    }
    let query: Vec<(String, String)> = req.uri().query().map(url_pairs).unwrap_or_default();
    let (parts, body) = match read_body(req, cfg.server.max_body_bytes).await {
        Ok(x) => x,
        Err(e) => return Err((false, e)),
    };
    let ctype = header_str(&parts, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_json = method == Method::POST
        && (ctype.starts_with("application/json")
            || (ctype.is_empty() && body.first() == Some(&b'{')));
    // Every field as a list of strings: JSON arrays of numbers arrive as several values.
    let mut fields = Fields::new();
    for (k, v) in query {
        fields.entry(k).or_default().push(v);
    }
    if method == Method::POST {
        if is_json {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(serde_json::Value::Object(map)) => {
                    for (k, v) in map {
                        let values = value_strings(&k, &v).map_err(|e| (true, e))?;
                        fields.entry(k).or_default().extend(values);
                    }
                }
                Ok(_) => {
                    return Err((
                        true,
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_json",
                            "the JSON body must be an object",
                        ),
                    ));
                }
                Err(_) => {
                    return Err((
                        true,
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_json",
                            "the body is not valid JSON",
                        ),
                    ));
                }
            }
        } else if ctype.starts_with("application/x-www-form-urlencoded") || ctype.is_empty() {
            for (k, v) in url_pairs(&String::from_utf8_lossy(&body)) {
                fields.entry(k).or_default().push(v);
            }
        } else {
            return Err((
                false,
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send a query string, a form or JSON",
                ),
            ));
        }
    }
    Ok((parts, is_json, fields))
}

async fn generic_inner(
    app: &App,
    cfg: &Config,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> (bool, Result<Vec<String>, ApiError>) {
    match generic_fields(cfg, req).await {
        Ok((parts, is_json, fields)) => {
            let accepted = generic_accept(app, cfg, &parts, &fields, conn).await;
            (is_json, accepted)
        }
        Err((is_json, e)) => (is_json, Err(e)),
    }
}

/// The first value of the first of `names` the request carries.
fn first_of(fields: &Fields, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| fields.get(*n).and_then(|v| v.first().cloned()))
}

/// Authenticates a generic request, then accepts one message per number it names.
async fn generic_accept(
    app: &App,
    cfg: &Config,
    parts: &http::request::Parts,
    fields: &Fields,
    conn: ConnInfo,
) -> Result<Vec<String>, ApiError> {
    let one = |names: &[&str]| first_of(fields, names);
    // Credentials: headers first, then a key or user/password in the request itself.
    let creds = auth::from_headers(&parts.headers)
        .or_else(|| one(KEY_FIELDS).map(Credentials::Key))
        .or_else(
            || match (one(&["username", "user"]), one(&["password", "pass"])) {
                (Some(user), Some(secret)) => Some(Credentials::Pair { user, secret }),
                _ => None,
            },
        );
    let client = match auth::authenticate(&cfg.clients, creds.as_ref(), conn.remote.ip(), true) {
        Ok(c) => c,
        Err(auth::AuthError::AddressNotAllowed) => return Err(ApiError::forbidden()),
        Err(e) => {
            tracing::info!(remote = %conn.remote, reason = ?e, "generic sms: authentication failed");
            return Err(ApiError::unauthorized());
        }
    };
    let (numbers, text, caller) = generic_request(fields)?;
    let ttl = cfg.otp.default_ttl;
    let (content, why) = submit::build_content(cfg, None, Some(text), None, ttl)?;
    if let Some(why) = why {
        tracing::info!(client = %client.name, reason = %why, "text holds no single code; SMS only");
    }
    let intake = Intake { app, cfg, client };
    accept_each(intake, numbers, &content, ttl, &caller)
        .await
        .map_err(|mut e| {
            if e.status == StatusCode::TOO_MANY_REQUESTS && e.retry_after.is_none() {
                e.retry_after = Some(retry_after_secs(std::time::Duration::from_secs(1)));
            }
            e
        })
}

/// A generic request's numbers, text and end user, each checked.
fn generic_request(fields: &Fields) -> Result<(Vec<String>, String, Caller), ApiError> {
    let one = |names: &[&str]| first_of(fields, names);
    let numbers: Vec<String> = NUMBER_FIELDS
        .iter()
        .find_map(|n| fields.get(*n).filter(|v| !v.is_empty()).cloned())
        .unwrap_or_default();
    if numbers.is_empty() {
        return Err(ApiError::field(
            "missing_field",
            "to",
            format!(
                "a number is required in one of: {}",
                NUMBER_FIELDS.join(", ")
            ),
        ));
    }
    let Some(text) = one(TEXT_FIELDS) else {
        return Err(ApiError::field(
            "missing_field",
            "text",
            format!("a text is required in one of: {}", TEXT_FIELDS.join(", ")),
        ));
    };
    if numbers.len() > MAX_RECEIVERS {
        return Err(ApiError::field(
            "invalid_field",
            "to",
            format!("at most {MAX_RECEIVERS} numbers per request"),
        ));
    }
    // The end user, under names that cannot be mistaken for the caller's own credentials.
    let caller =
        Caller::new(one(&["end_user"]), one(&["end_user_ip"]).as_deref()).map_err(|e| {
            let field = if e.field == "ip" {
                "end_user_ip"
            } else {
                "end_user"
            };
            ApiError::field("invalid_field", field, e.message)
        })?;
    Ok((numbers, text, caller))
}
