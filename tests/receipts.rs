//! Delivery truth (issue 15): receipts drive the fallback. The daemon in-process with the real
//! channels (the WhatsApp client over TLS to the Cloud API simulator, the modem pool over a
//! pseudo-terminal to the modem simulator); the test plays Meta and posts signed status
//! webhooks itself, so each story controls exactly which receipt arrives and when.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CLIENT, KEY, TestConfig, fetch, fetch_json, wait_for};
use otpgate::clock::{SharedClock, SystemClock};
use otpgate::secret::Secret;
use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions};
use otpgate::sim::modem::{Profile, SimModem};
use serde_json::json;

const APP_SECRET: &str = "app-secret-value";

struct World {
    _dir: tempfile::TempDir,
    sim: CloudApiSim,
    modem: SimModem,
    base: String,
    http: reqwest::Client,
    running: Option<otpgate::daemon::Running>,
}

/// A daemon with the webhook configured (`webhook`) or not, these policy lines and extra TOML.
async fn world(webhook: bool, policy: &str, extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let mut wa = String::new();
    if webhook {
        let secret = dir.path().join("app-secret");
        let verify = dir.path().join("verify-token");
        std::fs::write(&secret, APP_SECRET).unwrap();
        std::fs::write(&verify, "verify-token-value").unwrap();
        wa = format!(
            "app_secret_file = \"{}\"\nverify_token_file = \"{}\"",
            secret.display(),
            verify.display()
        );
    }
    let main = config(dir.path(), &sim, &modem, &wa, policy, extra)
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
    wait_for("the modem to become ready", async || {
        let v = w.readyz().await;
        if v["channels"]["sms"]["usable"] == true {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
    w
}

fn config(
    dir: &std::path::Path,
    sim: &CloudApiSim,
    modem: &SimModem,
    wa: &str,
    policy: &str,
    extra: &str,
) -> TestConfig {
    TestConfig::new(dir)
        .org("ACME")
        .whatsapp_sim(sim)
        .whatsapp_lines("timeout = \"1s\"\ncircuit_cooldown = \"1s\"")
        .whatsapp_lines(wa)
        .modem("modem0", modem.path())
        .policy("whatsapp_deadline = \"3s\"\ndelivery_deadline = \"2s\"")
        .policy(policy)
        .client(CLIENT, KEY)
        .extra(extra)
}

/// A signed-body status webhook as Meta sends it.
fn status(wamid: &str, status: &str, error: Option<i64>) -> String {
    let mut s = json!({"id": wamid, "status": status, "timestamp": "1764355200",
                       "recipient_id": "919876543210"});
    if let Some(code) = error {
        s["errors"] = json!([{"code": code, "title": "Message undeliverable"}]);
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [s]}}]}]})
    .to_string()
}

/// The "I didn't request a code" tap on our message `wamid`, from `digits`.
fn not_requested(wamid: &str, digits: &str) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "messages": [
            {"from": digits, "id": "wamid.IN1", "timestamp": "1764355300", "type": "button",
             "context": {"from": "15550001111", "id": wamid},
             "button": {"payload": "DID_NOT_REQUEST_CODE", "text": "I didn't request a code"}}]}}]}]})
    .to_string()
}

impl World {
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
    /// Sends a code and waits for its first outcome.
    async fn send(&self, to: &str, code: &str) -> serde_json::Value {
        let req = self
            .http
            .post(format!("{}/v1/messages?wait=20s", self.base))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "code": code}));
        let (s, v) = fetch_json(req).await;
        assert_eq!(s, 202, "{v}");
        v
    }
    async fn get(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/v1/messages/{id}", self.base);
        let (s, v) = fetch_json(self.http.get(url).bearer_auth(KEY)).await;
        assert_eq!(s, 200, "{v}");
        v
    }
    /// Waits until the message satisfies `pred`.
    async fn wait_message(
        &self,
        what: &str,
        id: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(what, async || {
            let m = self.get(id).await;
            if pred(&m) { Ok(m) } else { Err(m) }
        })
        .await
    }
    /// The wamid of the message's WhatsApp attempt.
    async fn wamid(&self, id: &str) -> String {
        let m = self.get(id).await;
        m["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["channel"] == "whatsapp" && a["outcome"] == "accepted")
            .and_then(|a| a["provider_id"].as_str())
            .unwrap_or_else(|| panic!("no whatsapp acceptance: {m}"))
            .to_string()
    }
    /// Posts a webhook body signed with `secret`; the HTTP status.
    async fn post_signed(&self, body: &str, secret: &str) -> u16 {
        let sig = otpgate::channel::whatsapp::webhook::sign(body.as_bytes(), &Secret::new(secret));
        let req = self
            .http
            .post(format!("{}/webhooks/whatsapp", self.base))
            .header("x-hub-signature-256", sig)
            .body(body.to_owned());
        fetch(req).await.0
    }
    async fn webhook(&self, body: &str) {
        assert_eq!(self.post_signed(body, APP_SECRET).await, 200);
    }
    fn wa_to(&self, digits: &str) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.json.as_ref().is_some_and(|j| j["to"] == digits))
            .count()
    }
    fn sms_to(&self, e164: &str) -> Vec<String> {
        self.modem
            .received()
            .into_iter()
            .filter(|m| m.to == e164)
            .map(|m| m.text)
            .collect()
    }
    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The attempts of a message, as (channel, purpose, outcome, receipt) words.
fn attempts(m: &serde_json::Value) -> Vec<(String, String, String, String)> {
    let w = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    m["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                w(&a["channel"]),
                w(&a["purpose"]),
                w(&a["outcome"]),
                w(&a["receipt"]),
            )
        })
        .collect()
}

fn row(ch: &str, purpose: &str, outcome: &str, receipt: &str) -> (String, String, String, String) {
    (ch.into(), purpose.into(), outcome.into(), receipt.into())
}

#[tokio::test]
async fn not_on_whatsapp_in_a_failed_receipt_goes_by_sms_and_is_remembered() {
    let w = world(true, "", "").await;
    let to = "+919876543210";
    // Meta answers 200 with a wamid, as it does for most numbers without WhatsApp.
    let v = w.send(to, "515151").await;
    assert_eq!(v["channel"], "whatsapp", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let wamid = w.wamid(&id).await;
    // A forged copy of the verdict is refused and changes nothing.
    let failed = status(&wamid, "failed", Some(131_026));
    assert_eq!(w.post_signed(&failed, "guessed-secret").await, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.sms_to(to).is_empty());
    assert_eq!(
        w.get(&id).await["attempts"][0]["receipt"],
        serde_json::Value::Null
    );
    // Seconds later the real verdict: the same code by SMS at once.
    w.webhook(&failed).await;
    let m = w
        .wait_message("the code to move to SMS", &id, |m| m["channel"] == "sms")
        .await;
    assert_eq!(m["status"], "sent", "{m}");
    assert_eq!(
        attempts(&m),
        [
            row("whatsapp", "code", "accepted", "failed"),
            row("sms", "code", "accepted", "-")
        ]
    );
    assert_eq!(m["attempts"][0]["error_code"], "131026", "{m}");
    wait_for("the SMS at the modem", async || w.sms_to(to).len() == 1).await;
    assert!(w.sms_to(to)[0].contains("515151"));
    // Remembered like a synchronous 131026: the next code makes no Cloud API request.
    let v = w.send(to, "525252").await;
    assert_eq!(v["channel"], "sms", "{v}");
    assert_eq!(w.wa_to("919876543210"), 1);
    // A number without WhatsApp never gets the pre-notice: only its two codes arrived.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts = w.sms_to(to);
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.iter().all(|t| !t.contains("WhatsApp")), "{texts:?}");
    w.stop().await;
}

#[tokio::test]
async fn an_offline_phone_gets_the_sms_at_the_delivery_deadline_and_a_late_delivered_changes_nothing()
 {
    let w = world(true, "", "").await;
    let to = "+919876543211";
    let v = w.send(to, "616161").await;
    assert_eq!(v["channel"], "whatsapp", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let wamid = w.wamid(&id).await;
    // Meta says "sent" and nothing more: the phone is off.
    w.webhook(&status(&wamid, "sent", None)).await;
    let m = w.get(&id).await;
    assert_eq!(
        (m["status"].as_str(), m["channel"].as_str()),
        (Some("sent"), Some("whatsapp"))
    );
    assert!(w.sms_to(to).is_empty(), "not before the deadline");
    let m = w
        .wait_message("the delivery deadline's SMS", &id, |m| {
            m["channel"] == "sms"
        })
        .await;
    wait_for("the SMS at the modem", async || w.sms_to(to).len() == 1).await;
    assert!(w.sms_to(to)[0].contains("616161"));
    // The history says why: WhatsApp accepted it, had no receipt in time, SMS carried it.
    let rows = attempts(&m);
    assert_eq!(rows[0], row("whatsapp", "code", "accepted", "sent"), "{m}");
    assert_eq!(rows[1].2, "skipped", "{m}");
    assert!(
        m["attempts"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("within 2s"),
        "{m}"
    );
    assert_eq!(rows[2], row("sms", "code", "accepted", "-"), "{m}");
    assert!(w.metrics().await.contains("reason=\"no_receipt\""));
    // The phone comes back online: a late "delivered" updates the record and sends nothing.
    w.webhook(&status(&wamid, "delivered", None)).await;
    let m = w
        .wait_message("the late receipt to be recorded", &id, |m| {
            m["status"] == "delivered"
        })
        .await;
    assert_eq!(
        m["channel"], "whatsapp",
        "the receipt says who delivered it: {m}"
    );
    assert_eq!(m["attempts"][0]["receipt"], "delivered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.sms_to(to).len(), 1, "no pre-notice, no second code");
    assert_eq!(w.wa_to("919876543211"), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_delivered_number_gets_only_the_prenotice_by_sms_and_replays_change_nothing() {
    let w = world(true, "", "").await;
    let to = "+919876543212";
    let v = w.send(to, "717171").await;
    let id = v["id"].as_str().unwrap().to_string();
    let wamid = w.wamid(&id).await;
    let line = w.running.as_ref().unwrap().status_line().await;
    assert!(!line.contains("unconfirmed"), "{line}");
    let ready = w.readyz().await;
    assert_eq!(ready["whatsapp_delivery"]["confirmed"], true, "{ready}");
    // Accepted is not delivered: no notice yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.sms_to(to).is_empty());
    let delivered = status(&wamid, "delivered", None);
    w.webhook(&delivered).await;
    let m = w
        .wait_message("delivered", &id, |m| m["status"] == "delivered")
        .await;
    assert_eq!(m["channel"], "whatsapp");
    wait_for("the pre-notice", async || w.sms_to(to).len() == 1).await;
    assert!(w.sms_to(to)[0].contains("WhatsApp") && !w.sms_to(to)[0].contains("717171"));
    // Meta repeats deliveries, and "read" follows: nothing more is sent.
    w.webhook(&delivered).await;
    w.webhook(&status(&wamid, "read", None)).await;
    // The next codes are delivered too: no SMS ever, the deadline passes quietly.
    let v = w.send(to, "727272").await;
    let id2 = v["id"].as_str().unwrap().to_string();
    let wamid2 = w.wamid(&id2).await;
    w.webhook(&status(&wamid2, "read", None)).await;
    w.wait_message("read", &id2, |m| m["status"] == "delivered")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(w.sms_to(to).len(), 1, "{:?}", w.sms_to(to));
    let m = w.get(&id).await;
    assert_eq!(attempts(&m)[0], row("whatsapp", "code", "accepted", "read"));
    let metrics = w.metrics().await;
    let delivered = "otpgate_messages_delivered_total{channel=\"whatsapp\"} 2";
    assert!(metrics.contains(delivered), "{metrics}");
    w.stop().await;
}

#[tokio::test]
async fn did_not_request_code_cancels_the_numbers_codes_and_verification() {
    let w = world(true, "", "").await;
    let to = "+919876543213";
    let req = w
        .http
        .post(format!("{}/v1/verifications", w.base))
        .bearer_auth(KEY)
        .json(&json!({"to": to}));
    let (s, v) = fetch_json(req).await;
    assert_eq!(s, 201, "{v}");
    let (vid, mid) = (
        v["id"].as_str().unwrap().to_string(),
        v["message_id"].as_str().unwrap().to_string(),
    );
    w.wait_message("sent", &mid, |m| m["status"] == "sent")
        .await;
    let wamid = w.wamid(&mid).await;
    w.webhook(&not_requested(&wamid, "919876543213")).await;
    let m = w
        .wait_message("the code to be canceled", &mid, |m| m["status"] == "failed")
        .await;
    assert!(
        m["reason"].as_str().unwrap().contains("did not request"),
        "{m}"
    );
    let url = format!("{}/v1/verifications/{vid}", w.base);
    let (_, ver) = fetch_json(w.http.get(url).bearer_auth(KEY)).await;
    assert_eq!(ver["status"], "canceled", "{ver}");
    assert!(w.metrics().await.contains("otpgate_not_requested_total 1"));
    // Its delivery deadline passes: the canceled code never goes by SMS.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(w.sms_to(to).is_empty());
    w.stop().await;
}

#[tokio::test]
async fn without_a_webhook_the_gateway_says_so_and_escalates_on_the_signals_it_has() {
    let w = world(
        false,
        "unconfirmed_sms_for = \"1h\"",
        "[verify]\nescalate_after = \"2s\"\n",
    )
    .await;
    let ready = w.readyz().await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["whatsapp_delivery"]["confirmed"], false, "{ready}");
    assert!(
        ready["whatsapp_delivery"]["detail"]
            .as_str()
            .unwrap()
            .contains("unconfirmed"),
        "{ready}"
    );
    let line = w.running.as_ref().unwrap().status_line().await;
    assert!(
        line.contains("whatsapp delivery unconfirmed (no webhook)"),
        "{line}"
    );
    // The user asks again at once (a double submit): WhatsApp again.
    let to = "+919876543214";
    assert_eq!(w.send(to, "818181").await["channel"], "whatsapp");
    assert_eq!(w.send(to, "818182").await["channel"], "whatsapp");
    // Asked again after the delivery deadline (2s) while that code is unconfirmed and
    // alive: the user did not get it, so SMS.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let v = w.send(to, "828282").await;
    assert_eq!(v["channel"], "sms", "{v}");
    let m = w.get(v["id"].as_str().unwrap()).await;
    assert!(
        m["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"] == "skipped"
                && a["detail"].as_str().unwrap().contains("asked again")),
        "{m}"
    );
    // And the number stays on SMS for a while.
    let v = w.send(to, "838383").await;
    assert_eq!(v["channel"], "sms", "{v}");
    assert_eq!(w.wa_to("919876543214"), 2);
    assert!(w.metrics().await.contains("reason=\"asked_again\""));

    // A verification nobody checks gets the same code by SMS once, after escalate_after.
    let to = "+919876543215";
    let req = w
        .http
        .post(format!("{}/v1/verifications", w.base))
        .bearer_auth(KEY)
        .json(&json!({"to": to}));
    let (s, v) = fetch_json(req).await;
    assert_eq!(s, 201, "{v}");
    let mid = v["message_id"].as_str().unwrap().to_string();
    let m = w
        .wait_message("sent", &mid, |m| m["status"] == "sent")
        .await;
    assert_eq!(m["channel"], "whatsapp");
    let code = w.sim.requests().last().unwrap().json.as_ref().unwrap()["template"]["components"][0]
        ["parameters"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let m = w
        .wait_message("the escalation", &mid, |m| m["channel"] == "sms")
        .await;
    assert!(
        m["attempts"].as_array().unwrap().iter().any(|a| a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not checked within 2s"))),
        "{m}"
    );
    wait_for("the escalated SMS", async || {
        w.sms_to(to).iter().filter(|t| t.contains(&code)).count() == 1
    })
    .await;
    // Once: it stays at one SMS.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(w.sms_to(to).iter().filter(|t| t.contains(&code)).count(), 1);

    // A verification checked in time is not escalated.
    let to = "+919876543216";
    let req = w
        .http
        .post(format!("{}/v1/verifications", w.base))
        .bearer_auth(KEY)
        .json(&json!({"to": to}));
    let (_, v) = fetch_json(req).await;
    let (vid, mid) = (v["id"].as_str().unwrap(), v["message_id"].as_str().unwrap());
    w.wait_message("sent", mid, |m| m["status"] == "sent").await;
    let code = w.sim.requests().last().unwrap().json.as_ref().unwrap()["template"]["components"][0]
        ["parameters"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let check = w
        .http
        .post(format!("{}/v1/verifications/{vid}/check", w.base))
        .bearer_auth(KEY)
        .json(&json!({"code": code}));
    let (_, r) = fetch_json(check).await;
    assert_eq!(r["status"], "approved", "{r}");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        w.sms_to(to).iter().all(|t| !t.contains(&code)),
        "{:?}",
        w.sms_to(to)
    );
    w.stop().await;
}

#[tokio::test]
async fn check_config_explains_unconfirmed_delivery_without_a_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let main = config(dir.path(), &sim, &modem, "", "", "")
        .write()
        .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning: whatsapp delivery unconfirmed")
                && l.contains("no webhook")),
        "{text}"
    );
    // With the webhook the line says what the deadline does instead.
    let secret = dir.path().join("app-secret");
    std::fs::write(&secret, APP_SECRET).unwrap();
    let wa = format!("app_secret_file = \"{}\"", secret.display());
    let main = config(dir.path(), &sim, &modem, &wa, "", "")
        .write()
        .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("receipts    whatsapp delivery confirmed by webhook receipts"),
        "{text}"
    );
    assert!(!text.contains("unconfirmed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_a_pending_deadline_survive_kill_9_and_restart() {
    use common::Launch;
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let secret = dir.path().join("app-secret");
    std::fs::write(&secret, APP_SECRET).unwrap();
    let wa = format!("app_secret_file = \"{}\"", secret.display());
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .org("ACME")
        .whatsapp_sim(&sim)
        .whatsapp_lines(&wa)
        .modem("modem0", modem.path())
        .policy("prenotify = false\ndelivery_deadline = \"5s\"")
        .client(CLIENT, KEY);
    cfg.write().unwrap();
    let http = common::http_client();
    let start = async || {
        let d = Launch::new(&cfg).rust_log("info").ready().await;
        let base = d.base();
        wait_for("the modem to become ready", async || {
            let (_, v) = fetch_json(http.get(format!("{base}/readyz"))).await;
            if v["channels"]["sms"]["usable"] == true {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
        d
    };
    let mut d = start().await;
    let base = d.base();
    let mut sent = Vec::new();
    for (to, code) in [("+919876543220", "919191"), ("+919876543221", "929292")] {
        let req = http
            .post(format!("{base}/v1/messages?wait=20s"))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "code": code}));
        let (s, v) = fetch_json(req).await;
        assert_eq!((s, v["channel"].as_str()), (202, Some("whatsapp")), "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (_, m) = fetch_json(
            http.get(format!("{base}/v1/messages/{id}"))
                .bearer_auth(KEY),
        )
        .await;
        let wamid = m["attempts"][0]["provider_id"]
            .as_str()
            .unwrap()
            .to_string();
        sent.push((to, code, id, wamid));
    }
    // Both codes wait for their receipts; the process dies well before their deadline.
    d.kill_9();
    let d = start().await;
    let base = d.base();
    let get = async |id: &str| {
        fetch_json(
            http.get(format!("{base}/v1/messages/{id}"))
                .bearer_auth(KEY),
        )
        .await
        .1
    };
    // The first phone confirms to the new process: delivered, no SMS.
    let (to_a, _, id_a, wamid_a) = &sent[0];
    let body = status(wamid_a, "delivered", None);
    let sig = otpgate::channel::whatsapp::webhook::sign(body.as_bytes(), &Secret::new(APP_SECRET));
    let req = http
        .post(format!("{base}/webhooks/whatsapp"))
        .header("x-hub-signature-256", sig)
        .body(body);
    assert_eq!(fetch(req).await.0, 200);
    wait_for("the receipt after the restart", async || {
        let m = get(id_a).await;
        if m["status"] == "delivered" {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
    // The second never does: its deadline, stored in the outbox, fires in the new process.
    let (to_b, code_b, id_b, _) = &sent[1];
    let m = wait_for("the deadline after the restart", async || {
        let m = get(id_b).await;
        if m["channel"] == "sms" { Ok(m) } else { Err(m) }
    })
    .await;
    let outcomes: Vec<&str> = m["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["accepted", "skipped", "accepted"], "{m}");
    wait_for("the SMS at the modem", async || {
        modem
            .received()
            .iter()
            .any(|r| r.to == *to_b && r.text.contains(code_b))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        modem.received().iter().all(|r| r.to != *to_a),
        "delivered: no SMS"
    );
    assert_eq!(modem.received().len(), 1);
    assert_eq!(sim.requests().len(), 2, "nothing sent twice on WhatsApp");
    drop(d);
}

#[tokio::test]
async fn a_receipt_that_overtakes_its_acceptance_is_applied_once_the_wamid_is_recorded() {
    use common::TestChannel;
    use otpgate::channel::{Channel, ChannelKind, Receipt, ReceiptStatus};
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("app-secret");
    std::fs::write(&secret, APP_SECRET).unwrap();
    let main = TestConfig::new(dir.path())
        .org("ACME")
        .whatsapp_unused()
        .whatsapp_lines(&format!("app_secret_file = \"{}\"", secret.display()))
        // Far past the wait below: only the receipt can move this code to SMS in time.
        .policy("prenotify = false\ndelivery_deadline = \"5m\"")
        .client(CLIENT, KEY)
        .write()
        .unwrap();
    let cfg = common::load(&main);
    let wa = TestChannel::new(ChannelKind::WhatsApp);
    let sms = TestChannel::new(ChannelKind::Sms);
    *wa.delay.lock().unwrap() = Duration::from_millis(300);
    let set = otpgate::daemon::ChannelSet::of(vec![
        wa.clone() as Arc<dyn Channel>,
        sms.clone() as Arc<dyn Channel>,
    ]);
    let receipts = set.receipts_tx.clone();
    let clock: SharedClock = Arc::new(SystemClock);
    let running = otpgate::daemon::start(cfg, clock, set).await.unwrap();
    let base = format!("http://{}", running.addrs[0]);
    let http = common::http_client();
    // Meta's "failed" comes in before the Cloud API's answer has been recorded.
    receipts
        .send(Receipt {
            channel: ChannelKind::WhatsApp,
            provider_id: "whatsapp-1".into(),
            status: ReceiptStatus::Failed {
                code: Some("131026".into()),
            },
            at: otpgate::clock::Timestamp(1_764_355_200_000),
        })
        .await
        .unwrap();
    let req = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(KEY)
        .json(&json!({"to": "+919876543230", "code": "939393"}));
    let (s, v) = fetch_json(req).await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let m = wait_for("the early receipt to send the code by SMS", async || {
        let url = format!("{base}/v1/messages/{id}");
        let (_, m) = fetch_json(http.get(url).bearer_auth(KEY)).await;
        if m["channel"] == "sms" { Ok(m) } else { Err(m) }
    })
    .await;
    assert_eq!(m["attempts"][0]["receipt"], "failed", "{m}");
    assert_eq!(sms.codes().len(), 1);
    running.shutdown().await;
}

#[tokio::test]
async fn a_delivered_receipt_while_the_deadline_sms_waits_for_a_modem_stops_that_sms() {
    // No pre-notice: every SMS to the number would be the code's.
    let w = world(true, "prenotify = false", "").await;
    let to = "+919876543212";
    let v = w.send(to, "717171").await;
    assert_eq!(v["channel"], "whatsapp", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let wamid = w.wamid(&id).await;
    // The modem loses the network before the delivery deadline (2 s) comes.
    w.modem.set_registration(3);
    wait_for("the modem to be unusable", async || {
        let v = w.readyz().await;
        if v["channels"]["sms"]["usable"] == false {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
    // At the deadline the SMS finds no modem and waits in the queue for its retry.
    w.wait_message("the deadline's SMS to wait for a modem", &id, |m| {
        m["status"] == "queued"
    })
    .await;
    // The phone comes back online meanwhile: the code is delivered, by WhatsApp.
    w.webhook(&status(&wamid, "delivered", None)).await;
    let m = w
        .wait_message("the receipt to end the message", &id, |m| {
            m["status"] == "delivered"
        })
        .await;
    assert_eq!(m["channel"], "whatsapp", "{m}");
    // The modem returns and carries the next code; the delivered one never follows it.
    w.modem.set_registration(1);
    let other = "+919876543213";
    w.sim
        .handle()
        .set_for("919876543213", Script::error(400, 131026));
    let v = w.send(other, "727272").await;
    assert_eq!(v["channel"], "sms", "{v}");
    wait_for("the next code at the modem", async || {
        w.sms_to(other).len() == 1
    })
    .await;
    assert!(w.sms_to(to).is_empty(), "{:?}", w.modem.received());
    let m = w.get(&id).await;
    assert!(
        attempts(&m)
            .iter()
            .all(|a| (a.0.as_str(), a.1.as_str()) != ("sms", "code")),
        "no SMS attempt for the delivered code: {m}"
    );
    w.stop().await;
}
