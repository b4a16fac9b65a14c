//! Meta's WhatsApp Cloud API on loopback, over real TLS (hyper 1 + tokio-rustls), for the
//! tests, the benchmark and `otpgate demo`.
//!
//! It validates like Meta: the path `/<version>/<phone_number_id>/messages`, the Bearer token
//! (else 401, code 190), the JSON shape (messaging_product, `to` digits, type template, a known
//! template name -> else 132001, a language the template has approved when the account's
//! [catalog](SimOptions::catalog) lists it -> else 132001, body/button parameter counts -> else
//! 132000, code at most 15 characters -> else 131009), and answers with a fresh `wamid.`.
//!
//! Like Meta, 200 is not delivery: what happens to the message afterwards arrives as signed
//! status webhooks ([`receipts`]) posted to the gateway's webhook URL, when one is set
//! ([`SimOptions::webhook`], [`SimHandle::set_webhook`]).
//!
//! Answers can be scripted through a [`SimHandle`]: one-shot answers queued globally, a
//! standing answer per recipient, and a global default. Precedence: queue, recipient,
//! built-in rule, default.
//!
//! Built-in rules (for the demo), off with [`SimOptions::builtin_rules`]:
//! - a recipient whose last three digits are `000`..`099` is "not on WhatsApp": 200, then a
//!   `failed` status with 131026 after [`ReceiptTiming::failed`] (or, with
//!   [`SimOptions::sync_not_on_whatsapp`], a synchronous 400 with 131026 as before);
//! - one whose last three digits are `900`..`999` is an offline phone: 200, then `sent` only.
//!
//! It also serves `GET /<version>/<waba_id>/message_templates?name=...` from its catalog
//! ([`templates`]), and `GET /<version>/debug_token?input_token=...` like Meta's token
//! debugger: the configured token is valid and expires at [`SimHandle::set_token_expiry`] (0,
//! the default: never), any other is `is_valid: false`; [`SimHandle::refuse_self_inspection`]
//! answers as Meta does a system-user token asking about itself (400, code 100). Those
//! questions are recorded apart ([`SimHandle::token_inspections`]); every other request is
//! recorded ([`SimHandle::requests`]), every message that reached a handset ([`SimHandle::delivered`]) and every webhook POST with the gateway's answer
//! ([`SimHandle::webhook_posts`]). [`SimHandle::outage`] plays a network loss: new connections
//! are refused and open ones are cut. Nothing here logs the code.

pub mod receipts;
pub mod templates;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::tls::{TestPki, TlsError};
pub use receipts::{Fate, ReceiptTiming, WebhookPost, WebhookTarget};
pub use templates::SimTemplate;

/// The API version the simulator puts in [`CloudApiSim::base_url`].
pub const API_VERSION: &str = "v24.0";

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Certificates or TLS config.
    #[error("simulator TLS: {0}")]
    Tls(#[from] TlsError),
    /// Binding the listener.
    #[error("simulator listener: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client that posts webhooks.
    #[error("simulator webhook client: {0}")]
    Webhooks(String),
}

/// How to start the simulator.
#[derive(Debug)]
pub struct SimOptions<'a> {
    /// The phone number id in the path.
    pub phone_number_id: String,
    /// The only access token accepted.
    pub token: String,
    /// Approved templates: name and body parameter count (authentication templates: 1).
    pub templates: Vec<(String, usize)>,
    /// Certificates to serve with; the simulator makes its own when `None`.
    pub pki: Option<&'a TestPki>,
    /// Apply the built-in rules: "not on WhatsApp" (last three digits 000..099) and "offline
    /// phone" (900..999).
    pub builtin_rules: bool,
    /// Answer the built-in "not on WhatsApp" with a synchronous 400 and 131026 instead of
    /// 200 and a `failed` webhook (the rare case at Meta; the old behaviour of this simulator).
    pub sync_not_on_whatsapp: bool,
    /// Where status webhooks go (none are sent without a target; settable later).
    pub webhook: Option<WebhookTarget>,
    /// When statuses go out and how refused webhooks are retried.
    pub receipts: ReceiptTiming,
    /// The WhatsApp Business Account id (`message_templates` path, webhook `entry.id`).
    pub business_account_id: String,
    /// The template languages the account holds (read back by `message_templates`). A
    /// template name listed here may only be sent in its approved languages.
    pub catalog: Vec<SimTemplate>,
}

impl Default for SimOptions<'_> {
    fn default() -> Self {
        SimOptions {
            phone_number_id: "106540352242922".into(),
            token: "sim-token".into(),
            templates: vec![("otp_auth".into(), 1)],
            pki: None,
            builtin_rules: true,
            sync_not_on_whatsapp: false,
            webhook: None,
            receipts: ReceiptTiming::default(),
            business_account_id: SIM_WABA_ID.into(),
            catalog: Vec::new(),
        }
    }
}

/// The WhatsApp Business Account id the simulator answers to by default.
pub const SIM_WABA_ID: &str = "102290129340398";

/// One scripted answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Script {
    /// The normal success answer with a fresh wamid; the phone is on WhatsApp and online
    /// (`sent`, `delivered`, `read` follow as webhooks).
    Success,
    /// 200 with a wamid, then a `failed` status webhook with this code (131026: the number
    /// is not on WhatsApp), as Meta does for most recipient-side failures.
    FailLater {
        /// The `errors[].code` of the `failed` status.
        code: i64,
    },
    /// 200 with a wamid, then `sent` and nothing more: the phone is off.
    Offline,
    /// Meta's error JSON with this HTTP status and `error.code`.
    Error {
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: i64,
    },
    /// Any status and body (a 5xx with a body, an HTML 502 from a "proxy").
    Raw {
        /// HTTP status.
        status: u16,
        /// Content-Type header.
        content_type: String,
        /// The body.
        body: String,
    },
    /// Wait, then answer as the inner script says.
    Delay(Duration, Box<Script>),
    /// Read the request and never answer (the connection stays open).
    Hang,
    /// Read the request and close the connection without answering.
    Drop,
}

impl Script {
    /// Meta's error answer with `code` under `status`.
    pub fn error(status: u16, code: i64) -> Script {
        Script::Error { status, code }
    }

    /// Meta's usual answer for a number not on WhatsApp: 200, then `failed` with 131026.
    pub fn undeliverable() -> Script {
        Script::FailLater { code: 131026 }
    }

    /// A proxy's HTML "502 Bad Gateway".
    pub fn html_502() -> Script {
        Script::Raw {
            status: 502,
            content_type: "text/html".into(),
            body: "<html>502 Bad Gateway</html>".into(),
        }
    }

    /// `inner` after `d`.
    pub fn delayed(d: Duration, inner: Script) -> Script {
        Script::Delay(d, Box::new(inner))
    }
}

/// A template message the simulator accepted: what the recipient's handset would show.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// Recipient digits (no '+').
    pub to: String,
    /// Template name.
    pub template: String,
    /// The body parameters in order (an authentication template's one parameter is the code).
    pub params: Vec<String>,
}

/// One request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// An Authorization header was present.
    pub auth_present: bool,
    /// It was `Bearer <the configured token>`.
    pub auth_valid: bool,
    /// The parsed JSON body, when it was JSON.
    pub json: Option<Value>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct ScriptState {
    queue: VecDeque<Script>,
    per_recipient: HashMap<String, Script>,
    default: Option<Script>,
}

struct Shared {
    opts_phone: String,
    token: String,
    templates: Vec<(String, usize)>,
    builtin_rules: bool,
    sync_not_on_whatsapp: bool,
    waba_id: String,
    catalog: Mutex<Vec<SimTemplate>>,
    account: receipts::Account,
    webhook: Mutex<Option<WebhookTarget>>,
    timing: Mutex<ReceiptTiming>,
    rng: Mutex<receipts::Rng>,
    posts: Mutex<Vec<WebhookPost>>,
    /// Sends webhooks to the gateway.
    poster: reqwest::Client,
    /// Set when the simulator stops: pending webhooks are dropped.
    stop: tokio::sync::watch::Sender<bool>,
    scripts: Mutex<ScriptState>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// `debug_token` requests, apart from the others.
    inspections: Mutex<Vec<RecordedRequest>>,
    delivered: Mutex<Vec<Delivered>>,
    refuse: AtomicBool,
    /// Bumped to cut every open connection; each connection task watches it.
    cut: tokio::sync::watch::Sender<u64>,
    connections: AtomicU64,
    next_id: AtomicU64,
    /// What `debug_token` says of the configured token: unix seconds, 0 = never.
    token_expires_at: AtomicI64,
    /// `debug_token` refuses a token the right to inspect itself.
    refuse_self_inspection: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new(opts: SimOptions<'_>) -> Result<Shared, SimError> {
        let poster = super::tls::loopback_client()?
            .build()
            .map_err(|e| SimError::Webhooks(e.to_string()))?;
        Ok(Shared {
            account: receipts::Account {
                waba_id: opts.business_account_id.clone(),
                phone_number_id: opts.phone_number_id.clone(),
                display_phone_number: "15550783881".into(),
            },
            opts_phone: opts.phone_number_id,
            token: opts.token,
            templates: opts.templates,
            builtin_rules: opts.builtin_rules,
            sync_not_on_whatsapp: opts.sync_not_on_whatsapp,
            waba_id: opts.business_account_id,
            catalog: Mutex::new(opts.catalog),
            webhook: Mutex::new(opts.webhook),
            rng: Mutex::new(receipts::Rng::new(opts.receipts.seed)),
            timing: Mutex::new(opts.receipts),
            posts: Mutex::new(Vec::new()),
            poster,
            stop: tokio::sync::watch::Sender::new(false),
            scripts: Mutex::new(ScriptState::default()),
            requests: Mutex::new(Vec::new()),
            inspections: Mutex::new(Vec::new()),
            delivered: Mutex::new(Vec::new()),
            refuse: AtomicBool::new(false),
            cut: tokio::sync::watch::Sender::new(0),
            connections: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            token_expires_at: AtomicI64::new(0),
            refuse_self_inspection: AtomicBool::new(false),
        })
    }
}

/// A cloneable, thread-safe handle to script and inspect a running simulator.
#[derive(Clone)]
pub struct SimHandle(Arc<Shared>);

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle").finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Queues one-shot answers, used by the next requests in order (any recipient).
    pub fn push(&self, s: Script) {
        lock(&self.0.scripts).queue.push_back(s);
    }

    /// A standing answer for one recipient (`to` digits, no '+').
    pub fn set_for(&self, to: &str, s: Script) {
        lock(&self.0.scripts)
            .per_recipient
            .insert(to.trim_start_matches('+').to_string(), s);
    }

    /// The standing answer for everyone else (`None`: success).
    pub fn set_default(&self, s: Option<Script>) {
        lock(&self.0.scripts).default = s;
    }

    /// Forgets every script.
    pub fn reset(&self) {
        *lock(&self.0.scripts) = ScriptState::default();
        self.0.refuse.store(false, Ordering::SeqCst);
    }

    /// Accept TCP connections and close them at once (before TLS), or stop doing so.
    pub fn refuse_connections(&self, on: bool) {
        self.0.refuse.store(on, Ordering::SeqCst);
    }

    /// A network loss (`true`): refuse new connections and cut every open one, including
    /// idle pooled ones a client would otherwise reuse. `false` ends it.
    pub fn outage(&self, on: bool) {
        // Refuse first: a connection accepted after the cut then meets the refusal.
        self.refuse_connections(on);
        if on {
            self.0.cut.send_modify(|n| *n += 1);
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.0.requests).clone()
    }

    /// Every message answered with success so far, in order.
    pub fn delivered(&self) -> Vec<Delivered> {
        lock(&self.0.delivered).clone()
    }

    /// Every `debug_token` request so far (they are not in [`SimHandle::requests`]).
    pub fn token_inspections(&self) -> Vec<RecordedRequest> {
        lock(&self.0.inspections).clone()
    }

    /// Forgets recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.0.requests).clear();
    }

    /// TCP connections accepted so far (shows connection reuse).
    pub fn connections(&self) -> u64 {
        self.0.connections.load(Ordering::SeqCst)
    }

    /// Where status webhooks go from now on (`None`: nowhere). A status already scheduled
    /// goes to the target set when it falls due.
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        *lock(&self.0.webhook) = target;
    }

    /// When statuses of messages accepted from now on go out; the seed restarts the draws.
    pub fn set_receipt_timing(&self, t: ReceiptTiming) {
        *lock(&self.0.rng) = receipts::Rng::new(t.seed);
        *lock(&self.0.timing) = t;
    }

    /// Every webhook POST so far, retries included, with the gateway's answer.
    pub fn webhook_posts(&self) -> Vec<WebhookPost> {
        lock(&self.0.posts).clone()
    }

    /// When `debug_token` says the access token expires (unix seconds; 0: never).
    pub fn set_token_expiry(&self, expires_at: i64) {
        self.0.token_expires_at.store(expires_at, Ordering::SeqCst);
    }

    /// Makes `debug_token` refuse a token the right to inspect itself, as Meta does for a
    /// token that is neither an app token nor an app developer's (400, code 100).
    pub fn refuse_self_inspection(&self, on: bool) {
        self.0.refuse_self_inspection.store(on, Ordering::SeqCst);
    }

    /// Replaces the account's template catalog.
    pub fn set_catalog(&self, catalog: Vec<SimTemplate>) {
        *lock(&self.0.catalog) = catalog;
    }
}

/// A running simulator; dropping it stops it.
pub struct CloudApiSim {
    addr: SocketAddr,
    ca_pem: String,
    handle: SimHandle,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for CloudApiSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudApiSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl CloudApiSim {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start(opts: SimOptions<'_>) -> Result<CloudApiSim, SimError> {
        let own;
        let pki = match opts.pki {
            Some(p) => p,
            None => {
                own = TestPki::new()?;
                &own
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(opts)?);
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Connection tasks live in this set so stopping the accept loop ends them too.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let Ok((tcp, _)) = accepted else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                // Subscribed before the refusal check, so an outage that starts after it
                // still reaches this connection.
                let mut cut = s.cut.subscribe();
                if s.refuse.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let s = Arc::clone(&s);
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = Arc::clone(&s);
                        async move { handle(s, req).await }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    // Dropping the connection closes the socket, answered or not.
                    tokio::select! {
                        _ = conn => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(CloudApiSim {
            addr,
            ca_pem: pki.ca_pem(),
            handle: SimHandle(shared),
            task: Mutex::new(Some(task)),
        })
    }

    /// `https://127.0.0.1:PORT/v24.0`, the `api_base` to configure.
    pub fn base_url(&self) -> String {
        format!("https://{}/{API_VERSION}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA that signed the simulator's certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The scripting and inspection handle.
    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.handle.requests()
    }

    /// Stops listening and drops every open connection and every pending webhook: new
    /// connections are refused.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        self.handle.0.stop.send_replace(true);
    }
}

impl Drop for CloudApiSim {
    fn drop(&mut self) {
        self.stop();
    }
}

fn respond(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Meta's error envelope. The messages are generic; clients must not depend on them.
fn meta_error(status: u16, code: i64) -> Response<Full<Bytes>> {
    let (kind, message) = match code {
        190 => ("OAuthException", "Error validating access token"),
        100 => ("OAuthException", "Invalid parameter"),
        _ => ("OAuthException", "(#simulated) error"),
    };
    let body = json!({"error": {
        "message": message, "type": kind, "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": format!("simulated error {code}")},
        "fbtrace_id": "SIMtrace"
    }});
    respond(status, "application/json", body.to_string())
}

/// Why a request is invalid, as Meta would answer.
fn validate(s: &Shared, v: &Value) -> Result<String, (u16, i64)> {
    let bad = (400, 100);
    if v.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err(bad);
    }
    let to = v.get("to").and_then(Value::as_str).ok_or(bad)?;
    if to.is_empty() || !to.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    if v.get("type").and_then(Value::as_str) != Some("template") {
        return Err(bad);
    }
    let t = v.get("template").ok_or(bad)?;
    let name = t.get("name").and_then(Value::as_str).ok_or(bad)?;
    let language = t
        .get("language")
        .and_then(|l| l.get("code"))
        .and_then(Value::as_str)
        .ok_or(bad)?;
    let Some(&(_, params)) = s.templates.iter().find(|(n, _)| n == name) else {
        return Err((404, 132001));
    };
    if templates::missing_translation(&lock(&s.catalog), name, language) {
        return Err((404, 132001));
    }
    let comps = t
        .get("components")
        .and_then(Value::as_array)
        .ok_or((400, 132000))?;
    let params_of = |ty: &str| {
        comps
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
            .and_then(|c| c.get("parameters"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let body = params_of("body");
    let button = params_of("button");
    // Authentication templates: the body takes `params` texts, the URL button one.
    if body.len() != params || button.len() != 1 {
        return Err((400, 132000));
    }
    for p in body.iter().chain(button.iter()) {
        let text = p.get("text").and_then(Value::as_str).ok_or((400, 132012))?;
        if text.is_empty() || text.chars().count() > 15 {
            return Err((400, 131009));
        }
    }
    Ok(to.to_string())
}

/// What a handset shows of a valid request (`validate` has checked its shape).
fn delivered(v: &Value, to: &str) -> Delivered {
    let t = &v["template"];
    let params = t["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "body")
        .flat_map(|c| c["parameters"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect();
    Delivered {
        to: to.to_string(),
        template: t["name"].as_str().unwrap_or_default().to_string(),
        params,
    }
}

fn not_on_whatsapp(to: &str) -> bool {
    let b = to.as_bytes();
    b.len() >= 3 && b[b.len() - 3] == b'0'
}

fn offline_phone(to: &str) -> bool {
    let b = to.as_bytes();
    b.len() >= 3 && b[b.len() - 3] == b'9'
}

fn pick_script(s: &Shared, to: &str) -> Script {
    let mut st = lock(&s.scripts);
    if let Some(x) = st.queue.pop_front() {
        return x;
    }
    if let Some(x) = st.per_recipient.get(to) {
        return x.clone();
    }
    if s.builtin_rules && not_on_whatsapp(to) {
        return match s.sync_not_on_whatsapp {
            true => Script::error(400, 131026),
            false => Script::undeliverable(),
        };
    }
    if s.builtin_rules && offline_phone(to) {
        return Script::Offline;
    }
    st.default.clone().unwrap_or(Script::Success)
}

/// The 200 Meta gives a message it took, and the statuses that follow it.
fn accept(s: &Arc<Shared>, v: &Value, to: &str, fate: Fate) -> Response<Full<Bytes>> {
    let n = s.next_id.fetch_add(1, Ordering::SeqCst);
    let wamid = format!("wamid.SIM{n:012}");
    if fate == Fate::Delivered {
        lock(&s.delivered).push(delivered(v, to));
    }
    receipts::schedule(s, &wamid, to, fate);
    let body = json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": wamid}]
    });
    respond(200, "application/json", body.to_string())
}

async fn answer(
    s: &Arc<Shared>,
    v: &Value,
    to: &str,
    script: Script,
) -> Option<Response<Full<Bytes>>> {
    let mut script = script;
    loop {
        match script {
            Script::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                script = *inner;
            }
            Script::Success => return Some(accept(s, v, to, Fate::Delivered)),
            Script::FailLater { code } => return Some(accept(s, v, to, Fate::Failed(code))),
            Script::Offline => return Some(accept(s, v, to, Fate::Offline)),
            Script::Error { status, code } => return Some(meta_error(status, code)),
            Script::Raw {
                status,
                content_type,
                body,
            } => return Some(respond(status, &content_type, body)),
            Script::Hang => std::future::pending::<()>().await,
            Script::Drop => return None,
        }
    }
}

/// `GET /<version>/<waba_id>/message_templates?name=...`: the catalog, as Meta reads it back.
fn message_templates(
    s: &Shared,
    waba: &str,
    method: &str,
    auth_valid: bool,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    if method != "GET" {
        return meta_error(400, 100);
    }
    if !auth_valid {
        return meta_error(401, 190);
    }
    if waba != s.waba_id {
        return meta_error(400, 100);
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let name = pairs
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.as_str());
    let body = templates::listing(&lock(&s.catalog), name);
    respond(200, "application/json", body)
}

/// The simulated Meta app's id: `whatsapp.app_id` for a daemon that asks with the app token.
pub const SIM_APP_ID: &str = "1234567890";

/// `GET /<version>/debug_token?input_token=...`: what Meta's token debugger says of a token.
/// The caller authenticates with the configured token; the token asked about is valid only
/// when it is that token too.
fn debug_token(
    s: &Shared,
    method: &str,
    auth_valid: bool,
    by_app: bool,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    if method != "GET" {
        // Meta: "Unsupported post request", code 100 subcode 33.
        return meta_error(400, 100);
    }
    if !auth_valid && !by_app {
        return meta_error(401, 190);
    }
    if !by_app && s.refuse_self_inspection.load(Ordering::SeqCst) {
        return meta_error(400, 100);
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let Some((_, input)) = pairs.iter().find(|(k, _)| k == "input_token") else {
        return meta_error(400, 100);
    };
    let data = if *input == s.token {
        json!({
            "app_id": SIM_APP_ID, "type": "SYSTEM_USER", "application": "otpgate sim",
            "data_access_expires_at": 0,
            "expires_at": s.token_expires_at.load(Ordering::SeqCst),
            "is_valid": true,
            "scopes": ["whatsapp_business_management", "whatsapp_business_messaging"],
            "user_id": "100000000000001"
        })
    } else {
        json!({
            "error": {"code": 190, "message": "Invalid OAuth access token."},
            "is_valid": false,
            "scopes": []
        })
    };
    respond(200, "application/json", json!({ "data": data }).to_string())
}

async fn handle(
    s: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let auth_valid = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| t == s.token);
    let recorded = RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        auth_present: auth.is_some(),
        auth_valid,
        json: json.clone(),
        at: Instant::now(),
    };
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Kept apart: a daemon asks at start, and tests and benches count `requests()` as the
    // calls the send path made.
    if let [_, "debug_token"] = segs.as_slice() {
        lock(&s.inspections).push(recorded);
        // Meta's app token: the app id, a bar, the app secret (the webhooks' signing key).
        let app_token = lock(&s.webhook)
            .as_ref()
            .map(|w| format!("Bearer {SIM_APP_ID}|{}", w.app_secret));
        let by_app = app_token.is_some() && auth.as_deref() == app_token.as_deref();
        return Ok(debug_token(
            &s,
            &method,
            auth_valid,
            by_app,
            query.as_deref(),
        ));
    }
    lock(&s.requests).push(recorded);
    if let [_, waba, "message_templates"] = segs.as_slice() {
        return Ok(message_templates(
            &s,
            waba,
            &method,
            auth_valid,
            query.as_deref(),
        ));
    }
    let [version, phone, "messages"] = segs.as_slice() else {
        return Ok(respond(404, "text/plain", "not found".into()));
    };
    let version_ok = version
        .strip_prefix('v')
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if !version_ok || method != "POST" {
        return Ok(meta_error(400, 100));
    }
    if !auth_valid {
        return Ok(meta_error(401, 190));
    }
    if *phone != s.opts_phone {
        return Ok(meta_error(400, 100));
    }
    let Some(v) = json else {
        return Ok(meta_error(400, 100));
    };
    let to = match validate(&s, &v) {
        Ok(t) => t,
        Err((status, code)) => return Ok(meta_error(status, code)),
    };
    let script = pick_script(&s, &to);
    tracing::debug!(path = %path, "cloud api sim: request");
    match answer(&s, &v, &to, script).await {
        Some(r) => Ok(r),
        // An error from the service makes hyper close the connection without an answer.
        None => Err(std::io::Error::other("scripted drop")),
    }
}
