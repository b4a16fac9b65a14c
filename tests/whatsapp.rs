//! The WhatsApp channel against the Cloud API simulator over real TLS (the simulator's CA is
//! trusted through `ca_file`, as an administrator would configure an inspecting proxy's CA).
//! Timeouts here are hang guards only; nothing asserts speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::GUARD;
use otpgate::channel::whatsapp::WhatsAppChannel;
use otpgate::channel::whatsapp::webhook::{self, WebhookError};
use otpgate::channel::{Channel, Content, Delivery, Outcome, Receipt, ReceiptStatus};
use otpgate::clock::{ManualClock, SharedClock, Timestamp};
use otpgate::config::WhatsAppConfig;
use otpgate::secret::Secret;
use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions, SimTemplate};
use otpgate::sim::tls::TestPki;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "EAAGm0ckT0kenZZ9xq";
const PHONE_ID: &str = "106540352242922";
const TO: &str = "+919876543210";

fn log_text() -> String {
    common::capture_logs().text()
}

// ---- fixtures ----

struct Env {
    sim: CloudApiSim,
    cfg: WhatsAppConfig,
    _dir: tempfile::TempDir,
    _pki: TestPki,
}

async fn env() -> Env {
    common::capture_logs();
    let pki = TestPki::new().unwrap();
    let sim = CloudApiSim::start(SimOptions {
        phone_number_id: PHONE_ID.into(),
        token: TOKEN.into(),
        templates: vec![("otp_auth".into(), 1), ("otp_auth_v2".into(), 1)],
        pki: Some(&pki),
        builtin_rules: true,
        // This file asserts on the synchronous 131026 (the channel's own classification).
        sync_not_on_whatsapp: true,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_files(dir.path()).unwrap();
    let cfg = WhatsAppConfig {
        enabled: true,
        api_base: sim.base_url(),
        phone_number_id: PHONE_ID.into(),
        token: Some(Secret::new(TOKEN)),
        token_path: None,
        template: "otp_auth".into(),
        languages: [("hi".to_string(), "hi".to_string())].into_iter().collect(),
        default_language: "en_US".into(),
        timeout: Duration::from_secs(3),
        proxy: None,
        ca_file: Some(files.ca),
        max_rate: 0,
        circuit_cooldown: Duration::from_secs(60),
        app_secret: Some(Secret::new("app-secret")),
        verify_token: Some(Secret::new("verify-me")),
        business_account_id: None,
        app_id: None,
    };
    Env {
        sim,
        cfg,
        _dir: dir,
        _pki: pki,
    }
}

fn channel(cfg: &WhatsAppConfig) -> WhatsAppChannel {
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    WhatsAppChannel::new(cfg, tx).unwrap()
}

fn code(c: &str) -> Delivery {
    Delivery {
        message_id: "msg-1".into(),
        to: TO.into(),
        content: Content::Code {
            code: c.into(),
            sms_text: format!("{c} is your code"),
        },
        locale: None,
        validity: Duration::from_secs(300),
        // WhatsApp does not read it.
        expires_at: Timestamp(i64::MAX),
        budget: Duration::from_secs(5),
        departure: otpgate::channel::Departure::none(),
    }
}

async fn send(ch: &WhatsAppChannel, d: &Delivery) -> Outcome {
    tokio::time::timeout(GUARD, ch.send(d))
        .await
        .expect("send hung")
}

fn expected_json(to: &str, template: &str, lang: &str, code: &str) -> serde_json::Value {
    json!({"messaging_product":"whatsapp","recipient_type":"individual","to":to,"type":"template",
        "template":{"name":template,"language":{"code":lang},
            "components":[{"type":"body","parameters":[{"type":"text","text":code}]},
                          {"type":"button","sub_type":"url","index":"0","parameters":[{"type":"text","text":code}]}]}})
}

// ---- requests and success ----

#[tokio::test]
async fn exact_request_and_accepted_wamid_over_one_connection() {
    let e = env().await;
    let ch = channel(&e.cfg);
    let mut d = code("482913");
    d.locale = Some("hi".into());
    let o1 = send(&ch, &d).await;
    let o2 = send(&ch, &code("482914")).await;
    let reqs = e.sim.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, format!("/v24.0/{PHONE_ID}/messages"));
    assert!(reqs[0].auth_present && reqs[0].auth_valid);
    assert_eq!(
        reqs[0].json.as_ref().unwrap(),
        &expected_json("919876543210", "otp_auth", "hi", "482913")
    );
    assert_eq!(
        reqs[1].json.as_ref().unwrap(),
        &expected_json("919876543210", "otp_auth", "en_US", "482914")
    );
    let (Outcome::Accepted { provider_id: w1 }, Outcome::Accepted { provider_id: w2 }) = (&o1, &o2)
    else {
        panic!("{o1:?} {o2:?}");
    };
    assert!(w1.starts_with("wamid.") && w2.starts_with("wamid.") && w1 != w2);
    // The second send reused the first connection (and its TLS session).
    assert_eq!(e.sim.handle().connections(), 1);
    assert_eq!(ch.health().summary, "ok");
}

#[tokio::test]
async fn text_and_long_codes_fall_back_without_a_request() {
    let e = env().await;
    let ch = channel(&e.cfg);
    let mut d = code("1");
    d.content = Content::Text("Your code is 1234".into());
    let o = send(&ch, &d).await;
    assert!(
        matches!(&o, Outcome::FallBack { reason, .. } if reason.contains("free text")),
        "{o:?}"
    );
    let o = send(&ch, &code("1234567890123456")).await;
    assert!(matches!(o, Outcome::FallBack { .. }), "{o:?}");
    assert!(e.sim.requests().is_empty());
}

#[tokio::test]
async fn reload_swaps_template_and_token_live() {
    let e = env().await;
    let mut cfg = e.cfg.clone();
    cfg.token = Some(Secret::new("wrong"));
    let ch = channel(&cfg);
    cfg.token = Some(Secret::new(TOKEN));
    cfg.template = "otp_auth_v2".into();
    ch.reload(&cfg).unwrap();
    // A reload without a token is refused and the running settings stay.
    let mut broken = cfg.clone();
    broken.token = None;
    assert!(ch.reload(&broken).is_err());
    let o = send(&ch, &code("550011")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    let r = &e.sim.requests()[0];
    assert!(r.auth_valid);
    assert_eq!(r.json.as_ref().unwrap()["template"]["name"], "otp_auth_v2");
}

// ---- error classes ----

#[tokio::test]
async fn not_on_whatsapp_falls_back_and_marks_the_number() {
    let e = env().await;
    let ch = channel(&e.cfg);
    let mut d = code("111222");
    d.to = "+919876543050".into(); // built-in rule: last three digits 000..099
    let o = send(&ch, &d).await;
    assert_eq!(
        o,
        Outcome::FallBack {
            code: Some("131026".into()),
            reason: "recipient cannot receive WhatsApp messages (131026, HTTP 400)".into(),
            not_on_channel: true
        }
    );
    assert_eq!(
        e.sim.requests().len(),
        1,
        "a recipient problem is not retried"
    );
    assert!(ch.health().usable);
}

#[tokio::test]
async fn rate_limit_backs_off_once_then_succeeds_or_hands_back_retry() {
    let e = env().await;
    let h = e.sim.handle();
    let ch = channel(&e.cfg);
    h.push(Script::error(429, 130429));
    let o = send(&ch, &code("300001")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    let reqs = e.sim.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[1].at - reqs[0].at >= Duration::from_millis(1_000),
        "back-off honoured"
    );

    h.clear_requests();
    h.push(Script::error(429, 130429));
    h.push(Script::error(400, 80007));
    let o = send(&ch, &code("300002")).await;
    assert!(
        matches!(&o, Outcome::Retry { code: Some(c), after, .. } if c == "80007" && *after >= Duration::from_secs(1)),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), 2, "at most one retry");

    // No room in the budget for a back-off: one request, Retry at once.
    h.clear_requests();
    h.push(Script::error(400, 4));
    let mut d = code("300003");
    d.budget = Duration::from_millis(600);
    let o = send(&ch, &d).await;
    assert!(
        matches!(&o, Outcome::Retry { code: Some(c), .. } if c == "4"),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_once() {
    let e = env().await;
    let h = e.sim.handle();
    let ch = channel(&e.cfg);
    h.push(Script::error(500, 131000));
    let o = send(&ch, &code("400001")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(e.sim.requests().len(), 2);

    h.clear_requests();
    h.set_default(Some(Script::error(503, 2)));
    let o = send(&ch, &code("400002")).await;
    assert!(
        matches!(&o, Outcome::Retry { code: Some(c), .. } if c == "2"),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), 2, "exactly one retry");
    assert!(
        ch.health().usable,
        "temporary errors do not open the circuit"
    );
}

#[tokio::test]
async fn html_from_a_gateway_is_a_temporary_failure() {
    let e = env().await;
    let h = e.sim.handle();
    let ch = channel(&e.cfg);
    h.set_default(Some(Script::html_502()));
    let o = send(&ch, &code("500001")).await;
    assert!(
        matches!(&o, Outcome::Retry { code: None, reason, .. } if reason.contains("non-JSON") && reason.contains("502")),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), 2);
}

#[tokio::test]
async fn maintenance_pauses_whatsapp_for_a_minute() {
    let e = env().await;
    let clock = ManualClock::new(Timestamp(1_000_000));
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let ch = WhatsAppChannel::with_clock(&e.cfg, tx, clock.clone() as SharedClock).unwrap();
    e.sim.handle().push(Script::error(500, 131057));
    let o = send(&ch, &code("600001")).await;
    assert!(
        matches!(&o, Outcome::FallBack { code: Some(c), not_on_channel: false, .. } if c == "131057"),
        "{o:?}"
    );
    let hl = ch.health();
    assert!(!hl.usable && hl.summary.starts_with("paused"), "{hl:?}");
    let o = send(&ch, &code("600002")).await;
    assert!(matches!(o, Outcome::FallBack { .. }), "{o:?}");
    assert_eq!(e.sim.requests().len(), 1, "no request while paused");
    clock.advance(Duration::from_secs(60));
    let o = send(&ch, &code("600003")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert!(ch.health().usable);
}

#[tokio::test]
async fn rejected_token_opens_the_circuit_and_a_probe_closes_it() {
    let e = env().await;
    let clock = ManualClock::new(Timestamp(1_000_000));
    let mut cfg = e.cfg.clone();
    cfg.token = Some(Secret::new("EAAGexpired"));
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let ch = WhatsAppChannel::with_clock(&cfg, tx, clock.clone() as SharedClock).unwrap();

    let o = send(&ch, &code("700001")).await;
    assert_eq!(
        o,
        Outcome::ChannelDown {
            code: Some("190".into()),
            reason: "access token expired or invalid (190, HTTP 401)".into()
        }
    );
    let hl = ch.health();
    assert!(!hl.usable);
    assert_eq!(
        hl.summary,
        "circuit open: access token expired or invalid (190, HTTP 401)"
    );
    assert!(!format!("{o:?}{hl:?}").contains("EAAGexpired"));

    // Open: no request reaches Meta.
    let o = send(&ch, &code("700002")).await;
    assert!(
        matches!(&o, Outcome::ChannelDown { reason, .. } if reason.starts_with("circuit open")),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), 1);

    // Cooldown over, still the bad token: the probe fails and the circuit re-opens.
    clock.advance(cfg.circuit_cooldown);
    let hl = ch.health();
    assert!(hl.usable && hl.summary.contains("half-open"), "{hl:?}");
    let o = send(&ch, &code("700003")).await;
    assert!(matches!(o, Outcome::ChannelDown { .. }), "{o:?}");
    assert_eq!(e.sim.requests().len(), 2);
    let o = send(&ch, &code("700004")).await;
    assert!(matches!(o, Outcome::ChannelDown { .. }), "{o:?}");
    assert_eq!(e.sim.requests().len(), 2);

    // The admin fixes the token; after the cooldown the probe succeeds and closes it.
    cfg.token = Some(Secret::new(TOKEN));
    ch.reload(&cfg).unwrap();
    clock.advance(cfg.circuit_cooldown);
    let o = send(&ch, &code("700005")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(ch.health().summary, "ok");
    let o = send(&ch, &code("700006")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(e.sim.requests().len(), 4);
}

#[tokio::test]
async fn half_open_lets_exactly_one_probe_through() {
    let e = env().await;
    let clock = ManualClock::new(Timestamp(1_000_000));
    let mut cfg = e.cfg.clone();
    cfg.token = Some(Secret::new("EAAGexpired"));
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let ch = WhatsAppChannel::with_clock(&cfg, tx, clock.clone() as SharedClock).unwrap();
    let o = send(&ch, &code("710001")).await;
    assert!(matches!(o, Outcome::ChannelDown { .. }), "{o:?}");
    cfg.token = Some(Secret::new(TOKEN));
    ch.reload(&cfg).unwrap();
    clock.advance(cfg.circuit_cooldown);
    // A slow answer keeps the probe in flight while the second message asks to go.
    e.sim
        .handle()
        .push(Script::delayed(Duration::from_millis(200), Script::Success));
    let (d1, d2) = (code("710002"), code("710003"));
    let (a, b) = tokio::join!(send(&ch, &d1), send(&ch, &d2));
    assert!(matches!(a, Outcome::Accepted { .. }), "{a:?}");
    assert!(
        matches!(&b, Outcome::ChannelDown { reason, .. } if reason.contains("access token")),
        "{b:?}"
    );
    assert_eq!(
        e.sim.requests().len(),
        2,
        "the first failure and the one probe"
    );
    assert_eq!(ch.health().summary, "ok");
}

#[tokio::test]
async fn a_template_missing_in_every_language_is_no_outage() {
    let e = env().await;
    let mut cfg = e.cfg.clone();
    cfg.template = "not_approved".into();
    let ch = channel(&cfg);
    let o = send(&ch, &code("800001")).await;
    assert!(
        matches!(&o, Outcome::FallBack { code: Some(c), reason, not_on_channel: false }
            if c == "132001" && reason.starts_with("template missing or not approved in this language (132001")),
        "{o:?}"
    );
    let h = ch.health();
    assert!(h.usable, "the circuit stays closed: {h:?}");
    assert!(
        h.summary.contains("missing or not approved in en_US"),
        "{h:?}"
    );
    // The default language is known missing: its codes go by SMS without asking Meta again.
    let o = send(&ch, &code("800002")).await;
    assert!(
        matches!(&o, Outcome::FallBack { code: Some(c), .. } if c == "132001"),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), 1);
}

/// A delivery in `locale`.
fn in_locale(c: &str, locale: &str) -> Delivery {
    Delivery {
        locale: Some(locale.into()),
        ..code(c)
    }
}

fn languages_asked(e: &Env) -> Vec<String> {
    e.sim
        .requests()
        .iter()
        .map(|r| {
            r.json.as_ref().unwrap()["template"]["language"]["code"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_missing_translation_goes_in_the_default_language_and_the_circuit_stays_closed() {
    let e = env().await;
    e.sim
        .handle()
        .set_catalog(vec![SimTemplate::good("otp_auth", "en_US")]);
    let ch = channel(&e.cfg);
    let o = send(&ch, &in_locale("810001", "hi")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(languages_asked(&e), ["hi", "en_US"]);
    let h = ch.health();
    assert!(h.usable, "{h:?}");
    assert_eq!(
        h.summary,
        "ok, but template \"otp_auth\" is missing or not approved in hi (132001): those codes go in en_US or by SMS"
    );
    // Hindi is remembered as missing: the next Hindi code goes in English at once.
    let o = send(&ch, &in_locale("810002", "hi")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(languages_asked(&e), ["hi", "en_US", "en_US"]);
    assert!(
        log_text().contains("template missing or not approved in this language (132001)"),
        "the administrator is told"
    );
}

#[tokio::test]
async fn a_missing_default_language_sends_its_codes_by_sms_and_others_keep_whatsapp() {
    let e = env().await;
    e.sim
        .handle()
        .set_catalog(vec![SimTemplate::good("otp_auth", "hi")]);
    let ch = channel(&e.cfg);
    let o = send(&ch, &code("820001")).await;
    assert!(
        matches!(&o, Outcome::FallBack { code: Some(c), not_on_channel: false, .. } if c == "132001"),
        "{o:?}"
    );
    let o = send(&ch, &code("820002")).await;
    assert!(matches!(&o, Outcome::FallBack { .. }), "{o:?}");
    assert_eq!(
        languages_asked(&e),
        ["en_US"],
        "asked once, then remembered"
    );
    let o = send(&ch, &in_locale("820003", "hi")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(languages_asked(&e), ["en_US", "hi"]);
    assert!(ch.health().usable);
    // A template really paused is an account-wide problem: that one opens the circuit.
    e.sim.handle().push(Script::error(400, 132015));
    let o = send(&ch, &in_locale("820004", "hi")).await;
    assert!(matches!(o, Outcome::ChannelDown { .. }), "{o:?}");
    assert!(!ch.health().usable);
}

// ---- transport failures ----

#[tokio::test]
async fn a_hanging_server_is_sent_the_code_once_and_answered_unknown_within_budget() {
    let e = env().await;
    let mut cfg = e.cfg.clone();
    cfg.timeout = Duration::from_millis(300);
    let ch = channel(&cfg);
    e.sim.handle().set_default(Some(Script::Hang));
    let mut d = code("900001");
    d.budget = Duration::from_millis(1_000);
    let t0 = Instant::now();
    let o = send(&ch, &d).await;
    let took = t0.elapsed();
    // It may have reached Meta: never a second request for the same code on WhatsApp.
    assert!(
        matches!(&o, Outcome::Unknown { reason } if reason.contains("ambiguous")),
        "{o:?}"
    );
    // The contract: budget plus a small grace (generous slack for a loaded machine).
    assert!(took < d.budget + Duration::from_secs(2), "{took:?}");
    assert_eq!(e.sim.requests().len(), 1, "one ambiguous send per code");
}

#[tokio::test]
async fn a_hung_cloud_api_opens_the_circuit_after_the_threshold_then_a_probe_closes_it() {
    let e = env().await;
    let mut cfg = e.cfg.clone();
    cfg.timeout = Duration::from_millis(200);
    cfg.circuit_cooldown = Duration::from_millis(300);
    let ch = channel(&cfg);
    let h = e.sim.handle();
    h.set_default(Some(Script::Hang));
    for i in 0..otpgate::channel::whatsapp::circuit::TRANSPORT_THRESHOLD {
        let o = send(&ch, &code(&format!("91000{i}"))).await;
        assert!(matches!(o, Outcome::Unknown { .. }), "{o:?}");
    }
    let sent = e.sim.requests().len();
    // Open: the next code is refused at once, with no request, so it can go by SMS.
    let o = send(&ch, &code("910009")).await;
    assert!(
        matches!(&o, Outcome::ChannelDown { reason, .. } if reason.contains("cannot be reached")),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), sent, "no request while open");
    assert!(!ch.health().usable, "{:?}", ch.health());
    // WhatsApp comes back: after the cooldown one probe goes through and closes it.
    h.set_default(None);
    common::wait_for("the half-open probe to be accepted", async || {
        match send(&ch, &code("910010")).await {
            o @ Outcome::Accepted { .. } => Ok(o),
            o => Err(format!("{o:?}")),
        }
    })
    .await;
    assert!(ch.health().usable, "{:?}", ch.health());
}

#[tokio::test]
async fn budget_smaller_than_timeout_bounds_the_request() {
    let e = env().await;
    let ch = channel(&e.cfg); // timeout 3 s
    e.sim.handle().set_default(Some(Script::Hang));
    let mut d = code("900002");
    d.budget = Duration::from_millis(400);
    let t0 = Instant::now();
    let o = send(&ch, &d).await;
    assert!(matches!(o, Outcome::Unknown { .. }), "{o:?}");
    assert!(t0.elapsed() < Duration::from_millis(400) + Duration::from_secs(2));
}

#[tokio::test]
async fn refused_connections_go_to_the_next_channel_at_once_and_dropped_ones_are_never_resent() {
    let e = env().await;
    let ch = channel(&e.cfg);
    let h = e.sim.handle();

    h.refuse_connections(true);
    let o = send(&ch, &code("910001")).await;
    assert!(matches!(&o, Outcome::Retry { code: None, .. }), "{o:?}");
    // Nothing reached Meta, and a second connection a moment later rarely gets through:
    // the dispatcher hands the code to SMS instead of waiting out a back-off.
    assert_eq!(
        h.connections(),
        1,
        "a refused connection is not retried in the channel"
    );
    assert!(h.requests().is_empty());

    h.refuse_connections(false);
    h.push(Script::Drop);
    let o = send(&ch, &code("910002")).await;
    // Meta read the request and the answer was lost: the code may arrive, so no second send.
    assert!(matches!(o, Outcome::Unknown { .. }), "{o:?}");
    assert_eq!(
        h.requests().len(),
        1,
        "the dropped request is not sent again"
    );

    e.sim.stop();
    let o = send(&ch, &code("910003")).await;
    assert!(
        matches!(&o, Outcome::Retry { reason, .. } if reason.contains("cannot connect") || reason.contains("connection")),
        "{o:?}"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let e = env().await;
    let mut cfg = e.cfg.clone();
    cfg.ca_file = None; // only webpki roots: the simulator's CA is unknown
    let ch = channel(&cfg);
    let o = send(&ch, &code("920001")).await;
    assert!(
        matches!(&o, Outcome::Retry { reason, .. } if reason.contains("TLS")),
        "{o:?}"
    );
    assert!(e.sim.requests().is_empty());
}

#[tokio::test]
async fn global_rate_cap_hands_back_retry_when_the_budget_cannot_wait() {
    let e = env().await;
    let mut cfg = e.cfg.clone();
    cfg.max_rate = 1;
    let ch = channel(&cfg);
    let mut d = code("930001");
    d.budget = Duration::from_millis(300);
    assert!(matches!(send(&ch, &d).await, Outcome::Accepted { .. }));
    let o = send(&ch, &d).await;
    assert!(
        matches!(&o, Outcome::Retry { reason, .. } if reason.contains("rate cap")),
        "{o:?}"
    );
    assert_eq!(e.sim.requests().len(), 1);
}

// ---- proxy ----

#[derive(Default)]
struct ProxySeen {
    connects: Vec<String>,
    auth_ok: Vec<bool>,
}

/// A minimal HTTP CONNECT proxy: checks `Proxy-Authorization: Basic user:pw`, then splices.
async fn connect_proxy() -> (SocketAddr, Arc<Mutex<ProxySeen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(ProxySeen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).await.unwrap_or(0) == 0 || head.len() > 8192 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut lines = head.split("\r\n");
                let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
                // base64("user:pw")
                let auth_ok = lines.any(|l| {
                    l.to_ascii_lowercase().starts_with("proxy-authorization:")
                        && l.trim_end().ends_with("Basic dXNlcjpwdw==")
                });
                if first.first() != Some(&"CONNECT") || first.len() < 2 {
                    let _ = c
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                }
                {
                    let mut g = s.lock().unwrap();
                    g.connects.push(first[1].to_string());
                    g.auth_ok.push(auth_ok);
                }
                if !auth_ok {
                    let _ = c
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut up) = TcpStream::connect(first[1]).await else {
                    let _ = c.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if c.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn reaches_the_api_through_an_authenticating_connect_proxy() {
    let e = env().await;
    let (paddr, seen) = connect_proxy().await;
    let mut cfg = e.cfg.clone();
    cfg.proxy = Some(format!("http://user:pw@{paddr}"));
    let ch = channel(&cfg);
    let o = send(&ch, &code("940001")).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    {
        let g = seen.lock().unwrap();
        assert_eq!(g.connects, vec![e.sim.addr().to_string()]);
        assert_eq!(g.auth_ok, vec![true]);
    }
    assert_eq!(e.sim.requests().len(), 1);

    // Wrong proxy password: the proxy refuses, nothing reaches the API, Retry.
    cfg.proxy = Some(format!("http://user:bad@{paddr}"));
    let ch = channel(&cfg);
    let o = send(&ch, &code("940002")).await;
    assert!(matches!(o, Outcome::Retry { .. }), "{o:?}");
    assert_eq!(e.sim.requests().len(), 1);
    assert!(seen.lock().unwrap().auth_ok.contains(&false));
}

/// Run only as a child of `https_proxy_and_no_proxy_come_from_the_environment`, which sets
/// HTTPS_PROXY / NO_PROXY for this process (changing the environment of the test process
/// itself would race with other tests).
#[tokio::test]
#[ignore = "run as a child process by https_proxy_and_no_proxy_come_from_the_environment"]
async fn child_env_proxy() {
    let e = env().await;
    let ch = channel(&e.cfg); // cfg.proxy is None: the environment decides
    let o = send(&ch, &code("950001")).await;
    println!("CHILD_SIM_ADDR={}", e.sim.addr());
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
}

#[tokio::test]
async fn https_proxy_and_no_proxy_come_from_the_environment() {
    let (paddr, seen) = connect_proxy().await;
    let exe = std::env::current_exe().unwrap();
    let run = |no_proxy: Option<&'static str>| {
        let exe = exe.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["child_env_proxy", "--exact", "--ignored", "--nocapture"])
                .env("HTTPS_PROXY", format!("http://user:pw@{paddr}"))
                .env_remove("https_proxy")
                .env_remove("ALL_PROXY")
                .env_remove("all_proxy")
                .env_remove("no_proxy");
            match no_proxy {
                Some(v) => cmd.env("NO_PROXY", v),
                None => cmd.env_remove("NO_PROXY"),
            };
            cmd.output().unwrap()
        })
    };
    let sim_addr = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find_map(|l| l.strip_prefix("CHILD_SIM_ADDR="))
            .unwrap()
            .to_string()
    };

    let out = tokio::time::timeout(GUARD, run(None))
        .await
        .unwrap()
        .unwrap();
    let addr = sim_addr(&out);
    assert_eq!(seen.lock().unwrap().connects, vec![addr]);
    assert_eq!(seen.lock().unwrap().auth_ok, vec![true]);

    let out = tokio::time::timeout(GUARD, run(Some("127.0.0.1,localhost")))
        .await
        .unwrap()
        .unwrap();
    sim_addr(&out);
    assert_eq!(
        seen.lock().unwrap().connects.len(),
        1,
        "NO_PROXY bypassed the proxy"
    );
}

// ---- webhooks ----

#[tokio::test]
async fn webhooks_are_signature_checked_and_become_receipts() {
    let e = env().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let ch = WhatsAppChannel::new(&e.cfg, tx).unwrap();
    assert_eq!(
        ch.webhook_handshake("hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=42"),
        Ok("42".into())
    );
    assert_eq!(
        ch.webhook_handshake("hub.mode=subscribe&hub.verify_token=guess&hub.challenge=42"),
        Err(WebhookError::BadVerifyToken)
    );
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "statuses":[{"id":"wamid.X","status":"delivered","timestamp":"1700000000","recipient_id":"919876543210"},
                    {"id":"wamid.Y","status":"failed","timestamp":"1700000001","errors":[{"code":131026}]}]}}]}]}"#;
    let sig = webhook::sign(body, &Secret::new("app-secret"));
    assert_eq!(
        ch.handle_webhook(body, None),
        Err(WebhookError::MissingSignature)
    );
    let forged = webhook::sign(body, &Secret::new("guess"));
    assert_eq!(
        ch.handle_webhook(body, Some(&forged)),
        Err(WebhookError::BadSignature)
    );
    assert!(
        rx.try_recv().is_err(),
        "nothing forwarded from a bad request"
    );
    let ev = ch.handle_webhook(body, Some(&sig)).unwrap();
    assert_eq!(ev.receipts.len(), 2);
    let r1: Receipt = rx.try_recv().unwrap();
    let r2: Receipt = rx.try_recv().unwrap();
    assert_eq!(
        (r1.provider_id.as_str(), r1.status, r1.at),
        (
            "wamid.X",
            ReceiptStatus::Delivered,
            Timestamp(1_700_000_000_000)
        )
    );
    assert_eq!(
        r2.status,
        ReceiptStatus::Failed {
            code: Some("131026".into())
        }
    );
}

/// Meta never posts again what was answered 200, so receipts that cannot be queued must be
/// refused (503, Meta retries), never dropped after a 200.
#[tokio::test]
async fn a_full_receipt_queue_refuses_the_post_so_meta_sends_it_again() {
    let e = env().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let ch = WhatsAppChannel::new(&e.cfg, tx).unwrap();
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "statuses":[{"id":"wamid.X","status":"delivered","timestamp":"1700000000","recipient_id":"919876543210"},
                    {"id":"wamid.Y","status":"read","timestamp":"1700000001","recipient_id":"919876543210"}]}}]}]}"#;
    let sig = webhook::sign(body, &Secret::new("app-secret"));
    assert_eq!(
        ch.handle_webhook(body, Some(&sig)),
        Err(WebhookError::Busy),
        "two receipts, room for one"
    );
    assert!(rx.try_recv().is_err(), "nothing half-forwarded");
    let one = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "statuses":[{"id":"wamid.X","status":"delivered","timestamp":"1700000000","recipient_id":"919876543210"}]}}]}]}"#;
    let sig1 = webhook::sign(one, &Secret::new("app-secret"));
    assert_eq!(
        ch.handle_webhook(one, Some(&sig1)).unwrap().receipts.len(),
        1
    );
    // The queue is full now: the same POST again is refused until the dispatcher takes one.
    assert_eq!(ch.handle_webhook(one, Some(&sig1)), Err(WebhookError::Busy));
    assert_eq!(rx.try_recv().unwrap().provider_id, "wamid.X");
    assert!(ch.handle_webhook(one, Some(&sig1)).is_ok());
}

// ---- secrets ----

#[tokio::test]
async fn neither_token_nor_code_reaches_any_log_line() {
    let e = env().await;
    const CODE: &str = "86420531";
    let (paddr, _seen) = connect_proxy().await;
    let mut cfg = e.cfg.clone();
    cfg.proxy = Some(format!("http://user:pw@{paddr}"));
    let ch = channel(&cfg);
    let h = e.sim.handle();
    // Success, a 5xx pair, then a 401 with the token in play.
    let o = send(&ch, &code(CODE)).await;
    let Outcome::Accepted { provider_id } = o else {
        panic!("{o:?}")
    };
    h.push(Script::error(500, 131000));
    h.push(Script::html_502());
    let _ = send(&ch, &code(CODE)).await;
    let mut bad = e.cfg.clone();
    bad.token = Some(Secret::new(format!("{TOKEN}-revoked")));
    let ch2 = channel(&bad);
    let o = send(&ch2, &code(CODE)).await;
    assert!(matches!(o, Outcome::ChannelDown { .. }), "{o:?}");
    let text = log_text();
    // The capture works: our own lines and the transport's TRACE lines are there.
    assert!(text.contains(&provider_id), "capture broken");
    assert!(text.contains("circuit opened"), "capture broken");
    assert!(text.contains("TRACE"), "no TRACE lines captured");
    assert!(!text.contains(TOKEN), "token leaked into logs");
    assert!(!text.contains(CODE), "code leaked into logs");
    assert!(!text.contains("user:pw"), "proxy password leaked into logs");
    assert!(!format!("{ch:?}{ch2:?}").contains(TOKEN));
}
