//! Meta's WhatsApp Cloud API on loopback, over real TLS (hyper 1 + tokio-rustls), for the
//! tests, the benchmark and `otpgate demo`.
//!
//! It validates like Meta: the path `/<version>/<phone_number_id>/messages`, the Bearer token
//! (else 401, code 190), the JSON shape (messaging_product, `to` digits, type template, a known
//! template name -> else 132001, body/button parameter counts -> else 132000, code at most 15
//! characters -> else 131009), and answers with a fresh `wamid.`.
//!
//! Answers can be scripted through a [`SimHandle`]: one-shot answers queued globally, a
//! standing answer per recipient, and a global default. Precedence: queue, recipient,
//! built-in rule, default.
//!
//! Built-in rule (for the demo): a recipient whose last three digits are `000`..`099` (the
//! third digit from the end is `0`) is "not on WhatsApp" and gets 131026. Turn it off with
//! [`SimOptions::builtin_rules`].
//!
//! Every request is recorded ([`SimHandle::requests`]), and every message the simulator
//! accepted, i.e. what the handset would show ([`SimHandle::delivered`]). [`SimHandle::outage`]
//! plays a network loss: new connections are refused and open ones are cut. Nothing here logs
//! the code.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Apply the built-in "not on WhatsApp" rule (last three digits 000..099).
    pub builtin_rules: bool,
}

impl Default for SimOptions<'_> {
    fn default() -> Self {
        SimOptions {
            phone_number_id: "106540352242922".into(),
            token: "sim-token".into(),
            templates: vec![("otp_auth".into(), 1)],
            pki: None,
            builtin_rules: true,
        }
    }
}

/// One scripted answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Script {
    /// The normal success answer with a fresh wamid.
    Success,
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
    scripts: Mutex<ScriptState>,
    requests: Mutex<Vec<RecordedRequest>>,
    delivered: Mutex<Vec<Delivered>>,
    refuse: AtomicBool,
    /// Bumped to cut every open connection; each connection task watches it.
    cut: tokio::sync::watch::Sender<u64>,
    connections: AtomicU64,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Forgets recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.0.requests).clear();
    }

    /// TCP connections accepted so far (shows connection reuse).
    pub fn connections(&self) -> u64 {
        self.0.connections.load(Ordering::SeqCst)
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
        let shared = Arc::new(Shared {
            opts_phone: opts.phone_number_id,
            token: opts.token,
            templates: opts.templates,
            builtin_rules: opts.builtin_rules,
            scripts: Mutex::new(ScriptState::default()),
            requests: Mutex::new(Vec::new()),
            delivered: Mutex::new(Vec::new()),
            refuse: AtomicBool::new(false),
            cut: tokio::sync::watch::Sender::new(0),
            connections: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        });
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

    /// Stops listening and drops every open connection: new connections are refused.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
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
    t.get("language")
        .and_then(|l| l.get("code"))
        .and_then(Value::as_str)
        .ok_or(bad)?;
    let Some(&(_, params)) = s.templates.iter().find(|(n, _)| n == name) else {
        return Err((404, 132001));
    };
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

fn pick_script(s: &Shared, to: &str) -> Script {
    let mut st = lock(&s.scripts);
    if let Some(x) = st.queue.pop_front() {
        return x;
    }
    if let Some(x) = st.per_recipient.get(to) {
        return x.clone();
    }
    if s.builtin_rules && not_on_whatsapp(to) {
        return Script::error(400, 131026);
    }
    st.default.clone().unwrap_or(Script::Success)
}

async fn answer(s: &Shared, v: &Value, to: &str, script: Script) -> Option<Response<Full<Bytes>>> {
    let mut script = script;
    loop {
        match script {
            Script::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                script = *inner;
            }
            Script::Success => {
                let n = s.next_id.fetch_add(1, Ordering::SeqCst);
                lock(&s.delivered).push(delivered(v, to));
                let body = json!({
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": to, "wa_id": to}],
                    "messages": [{"id": format!("wamid.SIM{n:012}")}]
                });
                return Some(respond(200, "application/json", body.to_string()));
            }
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

async fn handle(
    s: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
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
    lock(&s.requests).push(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        auth_present: auth.is_some(),
        auth_valid,
        json: json.clone(),
        at: Instant::now(),
    });

    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rule_range() {
        assert!(not_on_whatsapp("919876543000"));
        assert!(not_on_whatsapp("919876543099"));
        assert!(!not_on_whatsapp("919876543100"));
        assert!(!not_on_whatsapp("919876543210"));
        assert!(!not_on_whatsapp("12"));
    }

    fn shared() -> Shared {
        Shared {
            opts_phone: "1".into(),
            token: "t".into(),
            templates: vec![("otp".into(), 1)],
            builtin_rules: true,
            scripts: Mutex::new(ScriptState::default()),
            requests: Mutex::new(Vec::new()),
            delivered: Mutex::new(Vec::new()),
            refuse: AtomicBool::new(false),
            cut: tokio::sync::watch::Sender::new(0),
            connections: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    fn req(name: &str, body_params: usize, code: &str) -> Value {
        let p: Vec<Value> = (0..body_params)
            .map(|_| json!({"type": "text", "text": code}))
            .collect();
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "919876543210",
            "type": "template", "template": {"name": name, "language": {"code": "en_US"}, "components": [
                {"type": "body", "parameters": p},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": code}]}]}})
    }

    #[test]
    fn validation_like_meta() {
        let s = shared();
        assert_eq!(
            validate(&s, &req("otp", 1, "123456")),
            Ok("919876543210".into())
        );
        assert_eq!(validate(&s, &req("nope", 1, "123456")), Err((404, 132001)));
        assert_eq!(validate(&s, &req("otp", 2, "123456")), Err((400, 132000)));
        assert_eq!(
            validate(&s, &req("otp", 1, "1234567890123456")),
            Err((400, 131009))
        );
        let mut v = req("otp", 1, "1");
        v["to"] = json!("+91");
        assert_eq!(validate(&s, &v), Err((400, 100)));
        let mut v = req("otp", 1, "1");
        v["messaging_product"] = json!("sms");
        assert_eq!(validate(&s, &v), Err((400, 100)));
    }

    #[tokio::test]
    async fn an_outage_cuts_pooled_connections_and_records_no_delivery() {
        let pki = TestPki::new().unwrap();
        let sim = CloudApiSim::start(SimOptions {
            pki: Some(&pki),
            ..SimOptions::default()
        })
        .await
        .unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(pki.client_config().unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let url = format!("{}/106540352242922/messages", sim.base_url());
        let send = async |code: &str| {
            client
                .post(&url)
                .bearer_auth("sim-token")
                .json(&req("otp_auth", 1, code))
                .send()
                .await
                .map(|r| r.status().as_u16())
        };
        assert_eq!(send("111111").await.unwrap(), 200);
        // Refusing new connections alone would leave this pooled one working.
        sim.handle().outage(true);
        assert!(send("222222").await.is_err());
        sim.handle().outage(false);
        assert_eq!(send("333333").await.unwrap(), 200);
        let got: Vec<Vec<String>> = sim
            .handle()
            .delivered()
            .into_iter()
            .map(|d| d.params)
            .collect();
        assert_eq!(got, [["111111"], ["333333"]]);
    }

    #[test]
    fn script_precedence() {
        let s = shared();
        s.scripts.lock().unwrap().default = Some(Script::html_502());
        s.scripts
            .lock()
            .unwrap()
            .per_recipient
            .insert("919876543210".into(), Script::Hang);
        s.scripts.lock().unwrap().queue.push_back(Script::Drop);
        assert_eq!(pick_script(&s, "919876543210"), Script::Drop);
        assert_eq!(pick_script(&s, "919876543210"), Script::Hang);
        assert_eq!(pick_script(&s, "919876543050"), Script::error(400, 131026));
        assert_eq!(pick_script(&s, "919876543111"), Script::html_502());
    }
}
