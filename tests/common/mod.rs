//! Test support: a gateway running in-process on loopback with a real SQLite file, and a
//! scripted channel standing in for the real ones where a test is about the spine.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otpgate::channel::{BoxFuture, Channel, ChannelKind, Delivery, Health, Outcome};
use otpgate::clock::SharedClock;
use otpgate::config::{Config, Sources};
use otpgate::daemon::{ChannelSet, Running};

/// A channel that answers from a script.
pub struct TestChannel {
    pub kind: ChannelKind,
    script: Mutex<VecDeque<Outcome>>,
    default: Mutex<Outcome>,
    pub sent: Mutex<Vec<Delivery>>,
    pub usable: AtomicBool,
    pub delay: Mutex<Duration>,
}

impl TestChannel {
    pub fn new(kind: ChannelKind) -> Arc<Self> {
        Arc::new(TestChannel {
            kind,
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Outcome::Accepted {
                provider_id: String::new(),
            }),
            sent: Mutex::new(Vec::new()),
            usable: AtomicBool::new(true),
            delay: Mutex::new(Duration::ZERO),
        })
    }
    pub fn push(&self, o: Outcome) {
        self.script.lock().unwrap().push_back(o);
    }
    pub fn set_default(&self, o: Outcome) {
        *self.default.lock().unwrap() = o;
    }
    pub fn sent(&self) -> Vec<Delivery> {
        self.sent.lock().unwrap().clone()
    }
    pub fn codes(&self) -> Vec<Delivery> {
        self.sent()
            .into_iter()
            .filter(|d| matches!(d.content, otpgate::channel::Content::Code { .. }))
            .collect()
    }
}

impl Channel for TestChannel {
    fn kind(&self) -> ChannelKind {
        self.kind
    }
    fn send<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            self.sent.lock().unwrap().push(d.clone());
            let n = self.sent.lock().unwrap().len();
            let next = self.script.lock().unwrap().pop_front();
            match next.unwrap_or_else(|| self.default.lock().unwrap().clone()) {
                Outcome::Accepted { provider_id } if provider_id.is_empty() => Outcome::Accepted {
                    provider_id: format!("{}-{n}", self.kind),
                },
                o => o,
            }
        })
    }
    fn health(&self) -> Health {
        let usable = self.usable.load(Ordering::SeqCst);
        Health {
            usable,
            summary: if usable { "ok".into() } else { "down".into() },
            parts: vec![],
        }
    }
}

/// A client key the test configs accept, and its name.
pub const KEY: &str = "test-key-0123456789";
pub const CLIENT: &str = "idp";

/// Writes a config into `dir` and loads it.
pub fn write_config(dir: &std::path::Path, extra: &str) -> (PathBuf, Config) {
    let token = dir.join("wa-token");
    std::fs::write(&token, "EAAtoken-not-for-logs").unwrap();
    let hash = hex::encode(otpgate::api::auth::sha256(KEY));
    // A "[server]" block in `extra` joins the template's [server] table (TOML forbids two).
    let (server_extra, extra) = match extra.split_once("[server]\n") {
        Some((before, after)) => {
            let end = after.find("\n[").map(|i| i + 1).unwrap_or(after.len());
            (
                after[..end].to_string(),
                format!("{before}{}", &after[end..]),
            )
        }
        None => (String::new(), extra.to_string()),
    };
    let body = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
{server_extra}
[store]
path = "{db}"
[otp]
default_country = "IN"
org = "ACME"
[whatsapp]
enabled = true
phone_number_id = "1234"
template = "otp"
token_file = "{token}"
[[clients]]
name = "{CLIENT}"
key_sha256 = "{hash}"
{extra}
"#,
        db = dir.join("otpgate.db").display(),
        token = token.display(),
    );
    let main = dir.join("otpgate.toml");
    std::fs::write(&main, body).unwrap();
    let cfg = otpgate::config::load(&Sources {
        main: main.clone(),
        env: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    (main, cfg)
}

/// A gateway running in this process.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub running: Option<Running>,
    pub wa: Arc<TestChannel>,
    pub sms: Arc<TestChannel>,
    pub http: reqwest::Client,
}

pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .unwrap()
}

pub async fn gateway(extra: &str) -> Gateway {
    gateway_with_clock(extra, Arc::new(otpgate::clock::SystemClock)).await
}

pub async fn gateway_with_clock(extra: &str, clock: SharedClock) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let (_, cfg) = write_config(dir.path(), extra);
    let wa = TestChannel::new(ChannelKind::WhatsApp);
    let sms = TestChannel::new(ChannelKind::Sms);
    let set = ChannelSet::of(vec![
        wa.clone() as Arc<dyn Channel>,
        sms.clone() as Arc<dyn Channel>,
    ]);
    let running = otpgate::daemon::start(cfg, clock, set).await.unwrap();
    let base = format!("http://{}", running.addrs[0]);
    Gateway {
        dir,
        base,
        running: Some(running),
        wa,
        sms,
        http: http_client(),
    }
}

impl Gateway {
    pub async fn post(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_path("/v1/messages", body).await
    }
    pub async fn post_path(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }
    pub async fn get(&self, id: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}/v1/messages/{id}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }
    /// Polls the message until `pred` holds (a hang guard, not a speed assertion).
    pub async fn wait_until(
        &self,
        id: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..400 {
            let (_, v) = self.get(id).await;
            if pred(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("condition never held for {id}: {:?}", self.get(id).await.1);
    }
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}
