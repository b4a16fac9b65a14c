//! The front doors, all on one hyper listener: the router here sends each request to its
//! module. Every answer is built here, so the request timeout, body limit and JSON errors
//! apply to every door alike, and each request reads one config snapshot, handed down.
//!
//! The doors ([`v1`], [`compat`], [`verify`]) only translate their protocol; accepting a
//! message is [`submit`]'s, request decoding [`decode`]'s, the native API's JSON [`views`]'.

pub mod auth;
pub mod compat;
pub mod decode;
pub mod error;
pub mod health;
pub mod listener;
pub mod submit;
pub mod v1;
pub mod verify;
pub mod views;

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::clock::SharedClock;
use crate::config::{ClientConfig, Config, Live};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::store::Store;

use error::ApiError;
use listener::ConnInfo;

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// Everything the front doors share.
pub struct App {
    /// Configuration in force.
    pub live: Arc<Live>,
    /// The outbox.
    pub store: Store,
    /// Now.
    pub clock: SharedClock,
    /// The dispatcher (to wake it and to wait on outcomes).
    pub dispatcher: Dispatcher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The WhatsApp channel, for its webhook.
    pub whatsapp: Option<Arc<crate::channel::whatsapp::WhatsAppChannel>>,
    /// The verify key used when none is configured: random per process start.
    pub ephemeral_verify_key: crate::secret::Secret,
    /// Velocity counts and the conversion breaker (issue 17).
    pub abuse: Arc<crate::abuse::Abuse>,
}

impl listener::Handler for App {
    async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Resp {
        // The one read of the configuration for this request: a reload while it runs does
        // not mix two configurations in one answer.
        let cfg = self.live.get();
        // On the heap: the router's future is about 4 KB (the largest of all front doors),
        // and every layer above would otherwise copy it.
        let route = Box::pin(self.route(&cfg, req, conn));
        match tokio::time::timeout(cfg.server.request_timeout, route).await {
            Ok(r) => r,
            Err(_) => error_response(&ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request took too long",
            )),
        }
    }
}

impl App {
    /// The key for verification code hashes.
    pub fn verify_key(&self, cfg: &Config) -> crate::secret::Secret {
        cfg.verify
            .key
            .clone()
            .unwrap_or_else(|| self.ephemeral_verify_key.clone())
    }

    async fn route(&self, cfg: &Config, req: Request<Incoming>, conn: ConnInfo) -> Resp {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let result = match (path.as_str(), &method) {
            ("/healthz", &Method::GET | &Method::HEAD) => Ok(health::healthz()),
            ("/readyz", &Method::GET | &Method::HEAD) => Ok(health::readyz(self).await),
            ("/metrics", &Method::GET) => Ok(health::metrics(self).await),
            ("/healthz" | "/readyz" | "/metrics", _) => Err(ApiError::method_not_allowed("GET")),
            ("/cgi-bin/sendsms", _) => Ok(compat::kannel(self, cfg, req, conn).await),
            ("/v1/sms", _) => Ok(compat::generic(self, cfg, req, conn).await),
            (p, _) if p == "/v1/verifications" || p.starts_with("/v1/verifications/") => {
                verify::route(self, cfg, req, conn, &p["/v1/verifications".len()..]).await
            }
            ("/webhooks/whatsapp", &Method::GET | &Method::POST) => {
                Ok(self.whatsapp_webhook(cfg, req).await)
            }
            ("/webhooks/whatsapp", _) => Err(ApiError::method_not_allowed("GET, POST")),
            ("/v1/messages", &Method::POST) => v1::post_message(self, cfg, req, conn).await,
            ("/v1/messages", _) => Err(ApiError::method_not_allowed("POST")),
            (p, &Method::GET) if p.starts_with("/v1/messages/") => {
                v1::get_message(self, cfg, req, conn, &p["/v1/messages/".len()..]).await
            }
            (p, _) if p.starts_with("/v1/messages/") => Err(ApiError::method_not_allowed("GET")),
            _ => Err(ApiError::not_found()),
        };
        match result {
            Ok(r) => r,
            Err(e) => {
                self.metrics.reject(e.code);
                error_response(&e)
            }
        }
    }

    /// Meta's webhook: the GET subscription handshake and signed status POSTs. Off (404)
    /// unless an app secret and verify token are configured.
    async fn whatsapp_webhook(&self, cfg: &Config, req: Request<Incoming>) -> Resp {
        use crate::channel::whatsapp::webhook::WebhookError;
        let Some(wa) = self.whatsapp.clone() else {
            return error_response(&ApiError::not_found());
        };
        let refuse = |e: WebhookError| {
            let (status, code) = match e {
                WebhookError::Disabled => (StatusCode::NOT_FOUND, "not_found"),
                WebhookError::MissingSignature
                | WebhookError::BadSignature
                | WebhookError::MalformedSignature => (StatusCode::UNAUTHORIZED, "bad_signature"),
                WebhookError::BadVerifyToken | WebhookError::WrongMode => {
                    (StatusCode::FORBIDDEN, "forbidden")
                }
                WebhookError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                _ => (StatusCode::BAD_REQUEST, "bad_webhook"),
            };
            tracing::warn!(error = %e, "whatsapp webhook refused");
            error_response(&ApiError::new(status, code, e.to_string()))
        };
        if req.method() == Method::GET {
            return match wa.webhook_handshake(req.uri().query().unwrap_or("")) {
                Ok(challenge) => text_response(StatusCode::OK, challenge),
                Err(e) => refuse(e),
            };
        }
        let (parts, body) = match read_body(req, cfg.server.max_body_bytes).await {
            Ok(x) => x,
            Err(e) => return error_response(&e),
        };
        let sig = parts
            .headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok());
        match wa.handle_webhook(&body, sig) {
            Ok(events) => {
                for f in &events.fraud {
                    tracing::warn!(reply_to = ?f.context_id, "a recipient tapped \"I didn't request a code\"");
                }
                text_response(StatusCode::OK, "ok")
            }
            Err(e) => refuse(e),
        }
    }

    /// Authenticates a request by its headers (Bearer, X-API-Key, Basic) and source address,
    /// against the clients of the request's configuration.
    pub fn authenticate<'c>(
        &self,
        cfg: &'c Config,
        headers: &http::HeaderMap,
        conn: ConnInfo,
    ) -> Result<&'c ClientConfig, ApiError> {
        let creds = auth::from_headers(headers);
        match auth::authenticate(&cfg.clients, creds.as_ref(), conn.remote.ip(), false) {
            Ok(c) => Ok(c),
            Err(auth::AuthError::AddressNotAllowed) => {
                tracing::warn!(remote = %conn.remote, "client called from an address outside its allow list");
                Err(ApiError::forbidden())
            }
            Err(e) => {
                tracing::info!(remote = %conn.remote, reason = ?e, "authentication failed");
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// How long a request body may take once its head has arrived. Bodies here are a few
/// hundred bytes: a client that dribbles one a second would otherwise hold its connection
/// slot for the whole request timeout, and a thousand of them every slot. The answer is 408
/// and the connection is closed.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a whole body up to `max` bytes: 413 beyond, 400 on a broken stream.
pub async fn read_body(
    req: Request<Incoming>,
    max: usize,
) -> Result<(http::request::Parts, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large(max));
    }
    let mut collect = std::pin::pin!(Limited::new(body, max).collect());
    // A small body usually arrives with its head: then it needs no timer (a timer costs every
    // request its registration in the runtime's wheel). Only a body still in flight gets one.
    let first = std::future::poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await;
    let collected = match first {
        Poll::Ready(c) => c,
        Poll::Pending => match tokio::time::timeout(BODY_TIMEOUT, collect).await {
            Ok(c) => c,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body did not arrive within {} s of its head",
                        BODY_TIMEOUT.as_secs()
                    ),
                ));
            }
        },
    };
    match collected {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the request body could not be read",
        )),
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body exceeds {max} bytes"),
    )
}

/// A JSON response.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Resp {
    // Straight into bytes: `to_string` goes through the `Display` formatting machinery.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// A plain-text response.
pub fn text_response(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The JSON error response, with Retry-After and WWW-Authenticate where they belong.
pub fn error_response(e: &ApiError) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(e.body())));
    *r.status_mut() = e.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(s) = e.retry_after
        && let Ok(v) = http::HeaderValue::from_str(&s.to_string())
    {
        h.insert(header::RETRY_AFTER, v);
    }
    if e.status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"otpgate\""),
        );
    }
    r
}

/// Whole seconds for Retry-After, rounded up.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}
