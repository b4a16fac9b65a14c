//! End to end with the real channels: the daemon in-process, the WhatsApp client over TLS to
//! the Cloud API simulator, the modem pool over a real pseudo-terminal to the modem simulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CLIENT, KEY, TestConfig, fetch, fetch_json, wait_for};
use otpgate::clock::{SharedClock, SystemClock};
use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions};
use otpgate::sim::modem::{Profile, SimModem};
use serde_json::json;

struct World {
    _dir: tempfile::TempDir,
    sim: CloudApiSim,
    modem: SimModem,
    base: String,
    http: reqwest::Client,
    running: Option<otpgate::daemon::Running>,
}

async fn world(policy: &str, extra: &str) -> World {
    world_with(policy, extra, "").await
}

async fn world_with(policy: &str, extra: &str, wa_extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let main = TestConfig::new(dir.path())
        .org("ACME")
        .whatsapp_sim(&sim)
        .whatsapp_lines("timeout = \"1s\"\ncircuit_cooldown = \"1s\"")
        .whatsapp_lines(wa_extra)
        .modem("modem0", modem.path())
        .policy("whatsapp_deadline = \"3s\"")
        .policy(policy)
        .client(CLIENT, KEY)
        .extra(extra)
        .write()
        .unwrap();
    let cfg = common::load(&main);
    let clock: SharedClock = Arc::new(SystemClock);
    let set = otpgate::daemon::build_channels(&cfg, &clock).await.unwrap();
    let running = otpgate::daemon::start(cfg, clock, set).await.unwrap();
    let base = format!("http://{}", running.addrs[0]);
    let w = World {
        _dir: dir,
        sim,
        modem,
        base,
        http: common::http_client(),
        running: Some(running),
    };
    w.wait_ready().await;
    w
}

impl World {
    async fn wait_ready(&self) {
        wait_for("the modem to become ready", async || {
            let v = self.readyz().await;
            if v["channels"]["sms"]["usable"] == true {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await
    }
    async fn readyz(&self) -> serde_json::Value {
        fetch_json(self.http.get(format!("{}/readyz", self.base)))
            .await
            .1
    }
    async fn metrics(&self) -> String {
        fetch(self.http.get(format!("{}/metrics", self.base)))
            .await
            .1
    }
    async fn send(&self, to: &str, code: &str) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}/v1/messages?wait=20s", self.base))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json().await.unwrap()
    }
    async fn get(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/v1/messages/{id}", self.base);
        let (s, v) = fetch_json(self.http.get(url).bearer_auth(KEY)).await;
        assert_eq!(s, 200, "{v}");
        v
    }
    fn wa_to(&self, digits: &str) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.json.as_ref().is_some_and(|j| j["to"] == digits))
            .count()
    }
    fn sms_codes_to(&self, e164: &str, code: &str) -> usize {
        self.modem
            .received()
            .iter()
            .filter(|m| m.to == e164 && m.text.contains(code))
            .count()
    }
    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

#[tokio::test]
async fn whatsapp_success_with_a_single_prenotice_after_the_first_code() {
    let w = world("", "").await;
    let v = w.send("+919876543210", "482913").await;
    assert_eq!(
        (v["status"].as_str(), v["channel"].as_str()),
        (Some("sent"), Some("whatsapp"))
    );
    let req = &w.sim.requests()[0];
    let j = req.json.as_ref().unwrap();
    assert_eq!(j["to"], "919876543210");
    assert_eq!(
        j["template"]["components"][0]["parameters"][0]["text"],
        "482913"
    );
    assert_eq!(
        j["template"]["components"][1]["parameters"][0]["text"],
        "482913"
    );
    // Asked again at once (a double submit, not a sign WhatsApp failed): WhatsApp again.
    assert_eq!(
        w.send("+919876543210", "111222").await["channel"],
        "whatsapp"
    );
    // Without the webhook the Cloud API's acceptance confirms the first code: the pre-notice
    // follows it, once, by SMS, and it is not the code.
    wait_for("the pre-notice SMS", async || {
        !w.modem.received().is_empty()
    })
    .await;
    let sms = w.modem.received();
    assert_eq!(sms.len(), 1, "exactly one pre-notice");
    assert!(sms[0].text.contains("WhatsApp") && !sms[0].text.contains("482913"));
    w.stop().await;
}

#[tokio::test]
async fn not_on_whatsapp_goes_by_sms_then_straight_to_sms() {
    let w = world("prenotify = false", "").await;
    w.sim
        .handle()
        .set_for("919876543210", Script::error(400, 131026));
    let v = w.send("+919876543210", "555111").await;
    assert_eq!(v["channel"], "sms");
    let sms = w.modem.received();
    assert_eq!(sms.len(), 1);
    assert!(sms[0].text.contains("555111") && sms[0].text.contains("ACME"));
    assert!(
        sms[0]
            .validity
            .is_some_and(|v| v <= Duration::from_secs(300)),
        "validity within the lifetime: {:?}",
        sms[0].validity
    );
    let v = w.send("+919876543210", "555222").await;
    assert_eq!(v["channel"], "sms");
    assert_eq!(
        w.wa_to("919876543210"),
        1,
        "remembered: no second WhatsApp try"
    );
    w.stop().await;
}

#[tokio::test]
async fn whatsapp_outages_fall_back_within_the_deadline() {
    let w = world("prenotify = false", "").await;
    let h = w.sim.handle();
    for (i, (what, script)) in [
        ("5xx", Some(Script::error(500, 131000))),
        ("hang", Some(Script::Hang)),
        ("refused", None),
    ]
    .into_iter()
    .enumerate()
    {
        match script {
            Some(s) => {
                h.refuse_connections(false);
                h.set_default(Some(s));
            }
            None => {
                h.set_default(None);
                h.refuse_connections(true);
            }
        }
        let to = format!("+91987654330{i}");
        let code = format!("60{i}{i}{i}{i}");
        let t = Instant::now();
        let v = w.send(&to, &code).await;
        let took = t.elapsed();
        assert_eq!(v["channel"], "sms", "{what}");
        // A hang guard, not a speed claim: the deadline is 3s, the wait 20s.
        assert!(took < Duration::from_secs(15), "{what}: {took:?}");
        assert_eq!(w.sms_codes_to(&to, &code), 1, "{what}");
        let m = w.get(v["id"].as_str().unwrap()).await;
        assert_eq!(m["attempts"][0]["channel"], "whatsapp", "{what}: {m}");
        assert_ne!(m["attempts"][0]["outcome"], "accepted", "{what}");
    }
    w.stop().await;
}

#[tokio::test]
async fn a_hung_cloud_api_is_learned_once_then_codes_go_straight_to_sms() {
    let w = world("prenotify = false", "").await;
    let h = w.sim.handle();
    h.set_default(Some(Script::Hang));
    let threshold = otpgate::channel::whatsapp::circuit::TRANSPORT_THRESHOLD;
    for i in 0..threshold {
        let (to, code) = (format!("+91987654331{i}"), format!("61{i}{i}{i}{i}"));
        let v = w.send(&to, &code).await;
        assert_eq!(v["channel"], "sms", "code {i}");
        assert_eq!(
            w.sim.requests().len(),
            i + 1,
            "one ambiguous WhatsApp send per code, never a second"
        );
    }
    let ready = w.readyz().await;
    assert_eq!(ready["channels"]["whatsapp"]["usable"], false, "{ready}");
    assert!(
        ready["channels"]["whatsapp"]["summary"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{ready}"
    );
    // Learned: the next code makes no Cloud API request and waits for no timeout.
    let v = w.send("+919876543319", "619999").await;
    assert_eq!(v["channel"], "sms");
    assert_eq!(w.sim.requests().len(), threshold, "no request while open");
    let m = w.get(v["id"].as_str().unwrap()).await;
    assert_ne!(m["attempts"][0]["outcome"], "unknown", "{m}");
    // The Cloud API answers again: after the cool-down one probe closes the circuit.
    h.set_default(None);
    wait_for("a probe to carry a code over WhatsApp again", async || {
        let v = w.send("+919876543320", "620000").await;
        if v["channel"] == "whatsapp" {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn token_error_opens_the_circuit_readiness_says_so_and_a_probe_recovers() {
    let w = world("prenotify = false", "").await;
    let h = w.sim.handle();
    h.set_default(Some(Script::error(401, 190)));
    let v = w.send("+919876543210", "700001").await;
    assert_eq!(v["channel"], "sms");
    let ready = w.readyz().await;
    assert_eq!(ready["channels"]["whatsapp"]["usable"], false, "{ready}");
    assert!(
        ready["channels"]["whatsapp"]["summary"]
            .as_str()
            .unwrap()
            .contains("190"),
        "{ready}"
    );
    assert_eq!(ready["status"], "ready", "SMS still carries codes");
    let before = w.sim.requests().len();
    let v = w.send("+919876543211", "700002").await;
    assert_eq!(v["channel"], "sms");
    assert_eq!(
        w.sim.requests().len(),
        before,
        "open circuit: no request to Meta"
    );
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("otpgate_whatsapp_circuit_open 1"),
        "{metrics}"
    );
    // The token is fixed at Meta's end; after the cool-down the next message probes and closes it.
    h.set_default(None);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = w.send("+919876543212", "700003").await;
    assert_eq!(v["channel"], "whatsapp");
    let metrics = w.metrics().await;
    for code in ["700001", "700002", "700003", "9876543210"] {
        assert!(!metrics.contains(code), "metrics carry no codes or numbers");
    }
    w.stop().await;
}

#[tokio::test]
async fn whatsapp_switched_off_per_client_and_per_country_goes_sms_only() {
    let w = world("prenotify = false\nwhatsapp_countries = [\"ID\"]", "").await;
    let v = w.send("+919876543210", "810001").await;
    assert_eq!(v["channel"], "sms");
    assert_eq!(w.sim.requests().len(), 0);
    let m = w.get(v["id"].as_str().unwrap()).await;
    assert!(
        m["attempts"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not rolled out to IN"),
        "{m}"
    );
    w.stop().await;
    let w = world("prenotify = false", "whatsapp = false").await;
    let v = w.send("+919876543210", "810002").await;
    assert_eq!(v["channel"], "sms");
    assert_eq!(w.sim.requests().len(), 0);
    w.stop().await;
}

#[tokio::test]
async fn failed_webhook_receipt_falls_back_to_sms_while_the_code_lives() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("app-secret");
    let verify = secrets.path().join("verify-token");
    std::fs::write(&secret, "app-secret-value").unwrap();
    std::fs::write(&verify, "verify-token-value").unwrap();
    let wa = format!(
        "app_secret_file = \"{}\"\nverify_token_file = \"{}\"",
        secret.display(),
        verify.display()
    );
    let w = world_with("prenotify = false", "", &wa).await;
    let url = format!("{}/webhooks/whatsapp", w.base);
    // Meta's subscription handshake.
    let subscribe = |token: &str| {
        w.http.get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=12345"
        ))
    };
    let (s, text) = fetch(subscribe("verify-token-value")).await;
    assert_eq!((s, text.as_str()), (200, "12345"));
    assert_eq!(fetch(subscribe("wrong")).await.0, 403);
    let v = w.send("+919876543210", "909090").await;
    assert_eq!(v["channel"], "whatsapp");
    let m = w.get(v["id"].as_str().unwrap()).await;
    let wamid = m["attempts"][0]["provider_id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "statuses": [{"id": wamid, "status": "failed", "timestamp": "1764355200", "recipient_id": "919876543210",
                      "errors": [{"code": 131026, "title": "Message undeliverable"}]}]}}]}]})
    .to_string();
    // Unsigned and wrongly signed posts change nothing.
    let r = w.http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = w
        .http
        .post(&url)
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(w.sms_codes_to("+919876543210", "909090"), 0);
    let sig = otpgate::channel::whatsapp::webhook::sign(
        body.as_bytes(),
        &otpgate::secret::Secret::new("app-secret-value"),
    );
    let r = w
        .http
        .post(&url)
        .header("x-hub-signature-256", sig.clone())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = v["id"].as_str().unwrap().to_string();
    let m = wait_for("the code to move to SMS", async || {
        let m = w.get(&id).await;
        if m["channel"] == "sms" { Ok(m) } else { Err(m) }
    })
    .await;
    assert_eq!(m["channel"], "sms", "{m}");
    assert_eq!(m["attempts"][0]["receipt"], "failed");
    assert_eq!(w.sms_codes_to("+919876543210", "909090"), 1);
    // Meta repeats deliveries: a second copy does not send the code again.
    let r = w
        .http
        .post(&url)
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.sms_codes_to("+919876543210", "909090"), 1);
    w.stop().await;
}
