//! SMS pumping protection through every front door (native v1, Verify, generic HTTP-SMS,
//! Kannel) of a real in-process gateway (hyper on loopback, SQLite file): each refusal class
//! is specific, stores nothing, is counted by reason and never echoes a code; the conversion
//! breaker trips on a wave of unchecked verifications to one range while another flows, refuses
//! what only SMS could carry to it at every door, and recovers after its cool-down or when the
//! admin lifts it. Also: the expiry gauges of the certificates and the WhatsApp token, and the
//! metric names the packaged alert rules and dashboard use.
//!
//! Refusal classes by door (Kannel's callers carry no end user or address, so `per_user` and
//! `per_ip` do not apply there; RADIUS has its own tests in tests/radius.rs):
//!
//! | class | v1 | Verify | generic | Kannel |
//! |---|---|---|---|---|
//! | country, number type, per_prefix | yes | yes | yes | yes |
//! | per_user, per_ip | yes | yes | yes | - |
//! | breaker (`sms_paused`) | yes | yes | yes | yes |
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use common::{CLIENT, Gateway, KEY, Launch, gateway, wait_for};
use otpgate::channel::{Content, Outcome};
use otpgate::sim::config::TestConfig;
use serde_json::{Value, json};

const PW_HASH_LINE: &str =
    "password_sha256 = \"b5a2c96250612366ea272ffac6d9744aaf4b45aacd96aa7cfcb931ee3b558259\"\n"; // sha256("dummy")

/// The code every refused request carries; no answer may contain it.
const CODE: &str = "482913";

/// Messages and verifications in the store.
async fn rows(g: &Gateway) -> (i64, i64) {
    let store = &g.running.as_ref().unwrap().store;
    store
        .read(|c| {
            let n = |t: &str| -> i64 {
                c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                    .unwrap()
            };
            Ok((n("messages"), n("verifications")))
        })
        .await
        .unwrap()
}

/// One request through one door: its status, error code (or Kannel reply), Retry-After and
/// the whole answer as text.
struct Answer {
    status: u16,
    code: String,
    retry_after: Option<u64>,
    text: String,
}

#[derive(Clone, Copy, Debug)]
enum Door {
    V1,
    Verify,
    Generic,
    Kannel,
}

async fn send(g: &Gateway, door: Door, to: &str, user: Option<&str>, ip: Option<&str>) -> Answer {
    let text = format!("Your code is {CODE}");
    let req = match door {
        Door::V1 => {
            let mut body = json!({"to": to, "code": CODE});
            if let Some(u) = user {
                body["user"] = u.into();
            }
            if let Some(i) = ip {
                body["ip"] = i.into();
            }
            g.http
                .post(format!("{}/v1/messages", g.base))
                .bearer_auth(KEY)
                .json(&body)
        }
        Door::Verify => {
            let mut body = json!({"to": to});
            if let Some(u) = user {
                body["user"] = u.into();
            }
            if let Some(i) = ip {
                body["ip"] = i.into();
            }
            g.http
                .post(format!("{}/v1/verifications", g.base))
                .bearer_auth(KEY)
                .json(&body)
        }
        Door::Generic => {
            let mut body = json!({"to": to, "text": text});
            if let Some(u) = user {
                body["end_user"] = u.into();
            }
            if let Some(i) = ip {
                body["end_user_ip"] = i.into();
            }
            g.http
                .post(format!("{}/v1/sms", g.base))
                .bearer_auth(KEY)
                .json(&body)
        }
        Door::Kannel => g.http.get(format!("{}/cgi-bin/sendsms", g.base)).query(&[
            ("username", CLIENT),
            ("password", "dummy"),
            ("to", to),
            ("text", &text),
        ]),
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = r.text().await.unwrap();
    let code = match serde_json::from_str::<Value>(&text) {
        Ok(v) => v["error"]["code"].as_str().unwrap_or("").to_owned(),
        Err(_) => text.clone(),
    };
    Answer {
        status,
        code,
        retry_after,
        text,
    }
}

/// Sends one request that must be refused with `status` and `code`, and proves it stored
/// nothing and echoed no code.
async fn refused(
    g: &Gateway,
    door: Door,
    to: &str,
    caller: (Option<&str>, Option<&str>),
    status: u16,
    code: &str,
) -> Answer {
    let before = rows(g).await;
    let a = send(g, door, to, caller.0, caller.1).await;
    assert_eq!(
        (a.status, a.code.as_str()),
        (status, code),
        "{door:?} {to}: {}",
        a.text
    );
    assert!(
        !a.text.contains(CODE),
        "{door:?} echoed the code: {}",
        a.text
    );
    assert_eq!(
        rows(g).await,
        before,
        "{door:?} {to}: a refusal stored something"
    );
    a
}

async fn accepted(g: &Gateway, door: Door, to: &str, caller: (Option<&str>, Option<&str>)) {
    let a = send(g, door, to, caller.0, caller.1).await;
    assert!(
        (200..300).contains(&a.status),
        "{door:?} {to}: {} {}",
        a.status,
        a.text
    );
}

/// `otpgate_requests_rejected_total` by reason, from the live /metrics.
async fn rejected(g: &Gateway) -> std::collections::BTreeMap<String, f64> {
    let text = g
        .http
        .get(format!("{}/metrics", g.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    otpgate::status::samples(&text)
        .into_iter()
        .filter(|s| s.name == "otpgate_requests_rejected_total")
        .map(|s| (s.labels["reason"].clone(), s.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_class_at_every_door_is_specific_counted_and_stores_nothing() {
    let g = gateway(&format!(
        "{PW_HASH_LINE}[policy]\nwhatsapp_countries = [\"IN\"]\nprenotify = false\n\
         [limits]\nper_prefix = \"2/1h\"\nper_user = \"1/1h\"\nper_ip = \"1/1h\"\n"
    ))
    .await;
    let none = (None, None);
    let doors = [Door::V1, Door::Verify, Door::Generic, Door::Kannel];
    let kannel = |door: Door, json_code: &'static str, kannel_reply: &'static str| match door {
        Door::Kannel => kannel_reply,
        _ => json_code,
    };
    for (i, door) in doors.into_iter().enumerate() {
        // Abroad: SMS goes to the home country only unless listed (and WhatsApp to IN only).
        let (s, c) = match door {
            Door::Kannel => (403, "Not routable. Do not try again."),
            _ => (403, "country_not_allowed"),
        };
        refused(&g, door, "+4915123456789", none, s, c).await;
        // A premium-rate number: refused for its type before its country is looked at.
        let s = if matches!(door, Door::Kannel) {
            403
        } else {
            400
        };
        let c = kannel(
            door,
            "number_type_not_allowed",
            "Not routable. Do not try again.",
        );
        refused(&g, door, "+449098765432", none, s, c).await;
        // Sequential numbers in one block: two pass, the third waits.
        let block = format!("+91987650{i}00");
        accepted(&g, door, &format!("{block}1"), none).await;
        accepted(&g, door, &format!("{block}2"), none).await;
        let (s, c) = match door {
            Door::Kannel => (503, "Temporal failure, try again later."),
            _ => (429, "prefix_limited"),
        };
        let a = refused(&g, door, &format!("{block}3"), none, s, c).await;
        let wait = a.retry_after.expect("Retry-After");
        assert!(
            (3500..=3600).contains(&wait),
            "{door:?}: Retry-After {wait}"
        );
        // Another block flows meanwhile.
        accepted(&g, door, &format!("+91987651{i}001"), none).await;
    }
    // End user and address, where a door carries them.
    for (i, door) in [Door::V1, Door::Generic, Door::Verify]
        .into_iter()
        .enumerate()
    {
        let (user, ip) = (format!("user{i}"), format!("192.0.2.{i}"));
        accepted(&g, door, &format!("+91987652{i}001"), (Some(&user), None)).await;
        let to = format!("+91987653{i}001");
        refused(&g, door, &to, (Some(&user), None), 429, "user_limited").await;
        accepted(&g, door, &format!("+91987654{i}001"), (None, Some(&ip))).await;
        refused(&g, door, &to, (None, Some(&ip)), 429, "ip_limited").await;
        // A bad address is a field error, not a guess.
        let a = send(&g, door, &to, None, Some("not-an-ip")).await;
        assert_eq!(
            (a.status, a.code.as_str()),
            (400, "invalid_field"),
            "{}",
            a.text
        );
    }
    let counted = rejected(&g).await;
    for (reason, n) in [
        ("country_not_allowed", 4.0),
        ("number_type_not_allowed", 4.0),
        ("prefix_limited", 4.0),
        ("user_limited", 3.0),
        ("ip_limited", 3.0),
    ] {
        assert_eq!(counted.get(reason), Some(&n), "{reason}: {counted:?}");
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_gives_its_place_back() {
    // The store's own per-recipient limit refuses the second message to one number: that
    // refusal must not use up the block's places.
    let g = gateway(
        "[policy]\nprenotify = false\n[limits]\nper_prefix = \"2/1h\"\nper_recipient = \"1/1h\"\n",
    )
    .await;
    let none = (None, None);
    accepted(&g, Door::V1, "+919876560001", none).await;
    refused(&g, Door::V1, "+919876560001", none, 429, "rate_limited").await;
    accepted(&g, Door::V1, "+919876560002", none).await;
    refused(&g, Door::V1, "+919876560003", none, 429, "prefix_limited").await;
    g.stop().await;
}

/// Starts a verification to `to` with the shortest lifetime; its id.
async fn start_verification(g: &Gateway, to: &str) -> String {
    let (s, v) = g
        .post_path("/v1/verifications", json!({"to": to, "ttl_seconds": 10}))
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// The keys the conversion breaker holds open, from /readyz.
async fn paused(g: &Gateway) -> Vec<String> {
    let (_, v) = common::fetch_json(g.http.get(format!("{}/readyz", g.base))).await;
    v["sms_paused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Whether the last SMS the gateway handed to its SMS channel went to `to`.
async fn reaches_sms(g: &Gateway, to: &str) -> bool {
    let (s, v) = g.post(json!({"to": to, "code": CODE})).await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let m = g
        .wait_until(&id, |m| {
            ["sent", "failed"].contains(&m["status"].as_str().unwrap_or(""))
        })
        .await;
    let by_sms = m["channel"] == "sms";
    assert_eq!(by_sms, g.sms.sent().iter().any(|d| d.to == to), "{m}");
    by_sms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_pauses_sms_to_an_unchecked_range_while_another_flows_and_recovers() {
    let g = gateway(
        "[policy]\nprenotify = false\n\
         [limits]\nprefix_digits = 3\nbreaker_min_codes = 3\nbreaker_min_approval_percent = 20\n\
         breaker_window = \"1h\"\nbreaker_cooldown = \"4s\"\n",
    )
    .await;
    // Nobody has WhatsApp: every code falls back to SMS, unless SMS is paused for its range.
    g.wa.set_default(Outcome::FallBack {
        code: Some("131026".into()),
        reason: "not on WhatsApp".into(),
        not_on_channel: true,
    });
    // The wave: codes to one range (+919877000...) that are never checked. Another range's
    // (+919877090...) are. The country as a whole (3 of 6, later 3 of 9 approved) stays
    // above 20 %.
    for n in 0..3 {
        start_verification(&g, &format!("+91987700010{n}")).await;
    }
    for n in 0..3 {
        check_one(&g, &format!("+91987709090{n}")).await;
    }
    assert!(
        reaches_sms(&g, "+919877000150").await,
        "before the wave is judged"
    );
    // The wave's codes expire unchecked (10 s): the range trips; the checked one does not.
    let open = wait_for("the breaker to trip", async || {
        let p = paused(&g).await;
        if p.is_empty() {
            Err("none open".to_string())
        } else {
            Ok(p)
        }
    })
    .await;
    assert_eq!(open, ["+919877000"]);
    assert!(
        !reaches_sms(&g, "+919877000160").await,
        "paused range went by SMS"
    );
    assert!(
        reaches_sms(&g, "+919877090960").await,
        "the other range must flow"
    );
    // SMS-only to the paused range is refused outright, with the cool-down as Retry-After.
    let before = rows(&g).await;
    let (s, v) = g
        .post_path(
            "/v1/verifications",
            json!({"to": "+919877000170", "channel": "sms"}),
        )
        .await;
    assert_eq!((s, &v["error"]["code"]), (429, &json!("sms_paused")), "{v}");
    assert_eq!(rows(&g).await, before);
    let metrics = rejected(&g).await;
    assert_eq!(metrics.get("sms_paused"), Some(&1.0));
    // The cool-down ends; the old wave no longer counts.
    wait_for("the cool-down to end", async || {
        let p = paused(&g).await;
        if p.is_empty() {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    assert!(
        reaches_sms(&g, "+919877000180").await,
        "SMS resumes after the cool-down"
    );
    // A second wave trips it again; the admin lifts it at once.
    for n in 0..3 {
        start_verification(&g, &format!("+91987700020{n}")).await;
    }
    wait_for("the breaker to trip again", async || {
        let p = paused(&g).await;
        if p.is_empty() {
            Err("none open".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    // `otpgate breaker lift` waits for the daemon to take the request, which it does at its
    // next request: /readyz here.
    let main = g.dir.path().join("otpgate.toml");
    let cli = std::thread::spawn(move || {
        std::process::Command::new(common::BIN)
            .args(["breaker", "lift", "+919877000", "--config"])
            .arg(&main)
            .output()
            .unwrap()
    });
    wait_for("the lift to be taken", async || {
        let p = paused(&g).await;
        if p.is_empty() {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    let out = cli.join().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("lifted"), "{said}");
    assert!(
        reaches_sms(&g, "+919877000190").await,
        "SMS resumes after the lift"
    );
    let text = g
        .http
        .get(format!("{}/metrics", g.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("otpgate_sms_breaker_trips_total 2"), "{text}");
    g.stop().await;
}

/// The alert rules and the Grafana dashboard name only metrics the real binary exports, and
/// it exports them (labelled families at zero) on its first scrape, before any event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_of_the_binary_has_every_metric_the_rules_and_dashboard_use() {
    let dir = tempfile::tempdir().unwrap();
    let modem =
        otpgate::sim::modem::SimModem::start(otpgate::sim::modem::Profile::quectel()).unwrap();
    // Over TLS, so the listener's certificate has its expiry series.
    let pki = otpgate::sim::tls::TestPki::new().unwrap();
    let files = pki.write_files(dir.path()).unwrap();
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .server(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            files.cert.display(),
            files.key.display()
        ))
        .whatsapp_unused()
        .modem("modem0", modem.path())
        .client(CLIENT, KEY);
    cfg.write().unwrap();
    let d = Launch::new(&cfg).ready().await;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(pki.client_config().unwrap())
        .resolve("localhost", d.addr.parse().unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/metrics", d.port());
    let first = common::fetch(http.get(&url)).await.1;
    // The families a restart used to hide until their first event.
    for line in [
        "otpgate_messages_delivered_total{channel=\"whatsapp\"} 0",
        "otpgate_messages_delivered_total{channel=\"sms\"} 0",
        "otpgate_fallbacks_total{reason=\"not_on_whatsapp\"} 0",
        "otpgate_fallbacks_total{reason=\"failed_receipt\"} 0",
        "otpgate_requests_rejected_total{reason=\"prefix_limited\"} 0",
        "otpgate_modem_ready{modem=\"modem0\"}",
        "otpgate_sms_breaker_open 0",
        "otpgate_certificate_expiry_timestamp_seconds{certificate=\"listener\"}",
        // Meta's placeholder account never answers here: the expiry is not known.
        "otpgate_whatsapp_token_expiry_timestamp_seconds 0",
    ] {
        assert!(
            first.contains(line),
            "{line} missing from the first scrape:\n{first}"
        );
    }
    // A modem's signal has no honest value until the modem has answered.
    let text = wait_for("the modem's signal", async || {
        let text = common::fetch(http.get(&url)).await.1;
        if text.contains("otpgate_modem_signal_dbm{") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    let exported: std::collections::BTreeSet<String> = otpgate::status::samples(&text)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let name = regex::Regex::new(r"otpgate_[a-z_]+").unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let mut used = 0;
    for file in ["prometheus/otpgate-rules.yml", "grafana/otpgate.json"] {
        let body = std::fs::read_to_string(root.join(file)).unwrap();
        for m in name.find_iter(&body) {
            assert!(
                exported.contains(m.as_str()),
                "{file} uses {}, which /metrics does not export:\n{text}",
                m.as_str()
            );
            used += 1;
        }
    }
    assert!(
        used > 20,
        "only {used} metric names found: the pattern is wrong"
    );
}

/// `otpgate status` reads the running daemon: its channels, modem, queue and counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_running_daemon_on_one_screen() {
    let dir = tempfile::tempdir().unwrap();
    let modem =
        otpgate::sim::modem::SimModem::start(otpgate::sim::modem::Profile::quectel()).unwrap();
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .modem("modem0", modem.path())
        .policy("prenotify = false")
        .limits("per_prefix = \"1/1h\"")
        .client(CLIENT, KEY);
    let main = cfg.write().unwrap();
    let d = Launch::new(&cfg).ready().await;
    let http = common::http_client();
    let post = |to: &'static str| {
        http.post(format!("{}/v1/messages", d.base()))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "code": CODE}))
    };
    assert_eq!(common::fetch(post("+919876570001")).await.0, 202);
    assert_eq!(common::fetch(post("+919876570002")).await.0, 429);
    let screen = wait_for("status to show the SMS sent", async || {
        let out = std::process::Command::new(common::BIN)
            .args(["status", "--config"])
            .arg(&main)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("carried by sms 1") {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await;
    for want in [
        "otpgate       ready",
        "channel       sms: up",
        "modem       modem0: ready, signal",
        "queue 0",
        "limits hit    prefix_limited 1",
        "sms paused    none",
    ] {
        assert!(screen.contains(want), "{want}:\n{screen}");
    }
    assert!(!screen.contains(CODE), "{screen}");
}

/// A CA valid until 1 January of `year`, with its key (for signing leaves).
fn ca(year: i32) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = KeyPair::generate().unwrap();
    let pem = p.self_signed(&key).unwrap().pem();
    (rcgen::Issuer::new(p, key), pem)
}

/// A leaf for localhost valid until 1 January of `year`: certificate and key PEM.
fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    year: i32,
    eku: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.extended_key_usages = vec![eku];
    p.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// 00:00:00 UTC on 1 January of `year`.
fn jan1(year: i64) -> f64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days: i64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
    (days * 86_400) as f64
}

/// The certificates the binary loads (its listener, the client CA, the Cloud API's trust
/// anchor) and the WhatsApp token, as Meta's token debugger dates it, are exported as expiry
/// timestamps; a renewed certificate shows on reload; the token never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_token_expiry_are_exported_and_follow_a_renewal() {
    use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let token_expiry = 1_900_000_000;
    sim.handle().set_token_expiry(token_expiry);
    let (issuer, ca_pem) = ca(2031);
    let (cert, key) = leaf(&issuer, 2030, ServerAuth);
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("ca.pem"), &ca_pem).unwrap();
    std::fs::write(path("cert.pem"), &cert).unwrap();
    std::fs::write(path("key.pem"), &key).unwrap();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"",
        path("cert.pem").display(),
        path("key.pem").display(),
        path("ca.pem").display()
    );
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .whatsapp_sim(&sim)
        .server(&tls)
        .client(CLIENT, KEY);
    cfg.write().unwrap();
    let d = Launch::new(&cfg).ready().await;
    // Scraped over mTLS, with a client certificate from the same CA.
    use rustls_pki_types::pem::PemObject;
    let (client_cert, client_key) = leaf(&issuer, 2030, ClientAuth);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(otpgate::sim::tls::ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![rustls_pki_types::CertificateDer::from_pem_slice(client_cert.as_bytes()).unwrap()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap(),
        )
        .unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("localhost", d.addr.parse().unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/metrics", d.port());
    let expiry = async || {
        let text = common::fetch(http.get(&url)).await.1;
        let mut v: std::collections::BTreeMap<String, f64> = otpgate::status::samples(&text)
            .into_iter()
            .filter_map(|s| match s.name.as_str() {
                "otpgate_certificate_expiry_timestamp_seconds" => {
                    Some((s.labels["certificate"].clone(), s.value))
                }
                "otpgate_whatsapp_token_expiry_timestamp_seconds" => {
                    Some(("token".to_string(), s.value))
                }
                _ => None,
            })
            .collect();
        // The simulator's own CA: rcgen's default validity, far beyond ours.
        let sim_ca = v.remove("whatsapp_ca");
        (v, sim_ca)
    };
    let want = |listener: i64| {
        std::collections::BTreeMap::from([
            ("listener".to_string(), jan1(listener)),
            ("client_ca".to_string(), jan1(2031)),
            ("token".to_string(), token_expiry as f64),
        ])
    };
    // The token is asked about at start, in the background.
    let (_, sim_ca) = wait_for("the token's expiry", async || {
        let (v, sim_ca) = expiry().await;
        if v == want(2030) {
            Ok((v, sim_ca))
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;
    assert!(sim_ca.unwrap() > jan1(2100), "{sim_ca:?}");
    let asked = sim.handle().token_inspections();
    assert!(
        asked.len() == 1 && asked[0].method == "GET" && asked[0].auth_valid,
        "{asked:?}"
    );
    // A renewed certificate: the file is replaced and the daemon told to reload.
    let (cert, key) = leaf(&issuer, 2032, ServerAuth);
    std::fs::write(path("cert.pem"), &cert).unwrap();
    std::fs::write(path("key.pem"), &key).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the renewed certificate's expiry", async || {
        let (v, _) = expiry().await;
        if v == want(2032) {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;
    // A new token: the old one's expiry no longer holds, and the new one is asked about at
    // once (this simulator knows only the old token, so Meta's answer is a refusal: unknown).
    std::fs::write(path("whatsapp-token"), "EAAnew-token-not-for-logs").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the new token to be asked about", async || {
        let n = sim.handle().token_inspections().len();
        if n == 2 { Ok(()) } else { Err(n) }
    })
    .await;
    wait_for("the old expiry to be dropped", async || {
        let (v, _) = expiry().await;
        if v.get("token") == Some(&0.0) {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;
    let log = d.log();
    for secret in [otpgate::sim::config::SIM_TOKEN, "EAAnew-token-not-for-logs"] {
        assert!(!log.contains(secret), "a token reached the log:\n{log}");
    }
}

/// Starts a verification to `to` and checks it with the code its SMS carried.
async fn check_one(g: &Gateway, to: &str) {
    let id = start_verification(g, to).await;
    let code = wait_for(format!("the code to {to}"), async || {
        let code = g
            .sms
            .sent()
            .into_iter()
            .rev()
            .find_map(|d| match d.content {
                Content::Code { code, .. } if d.to == to => Some(code),
                _ => None,
            });
        code.ok_or("not sent yet")
    })
    .await;
    let (s, v) = g
        .post_path(
            &format!("/v1/verifications/{id}/check"),
            json!({"code": code}),
        )
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("approved")), "{v}");
}

/// A free text (no code in it): WhatsApp cannot carry it, so only SMS could.
const FREE_TEXT: &str = "Your sign-in was approved. Not you? Call the service desk.";

/// Sends `FREE_TEXT` through a door that takes texts.
async fn send_text(g: &Gateway, door: Door, to: &str) -> Answer {
    let req = match door {
        Door::V1 => g
            .http
            .post(format!("{}/v1/messages", g.base))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "text": FREE_TEXT})),
        Door::Generic => g
            .http
            .post(format!("{}/v1/sms", g.base))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "text": FREE_TEXT})),
        Door::Kannel => g.http.get(format!("{}/cgi-bin/sendsms", g.base)).query(&[
            ("username", CLIENT),
            ("password", "dummy"),
            ("to", to),
            ("text", FREE_TEXT),
        ]),
        Door::Verify => unreachable!("the Verify API makes its own codes"),
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = r.text().await.unwrap();
    let code = match serde_json::from_str::<Value>(&text) {
        Ok(v) => v["error"]["code"].as_str().unwrap_or("").to_owned(),
        Err(_) => text.clone(),
    };
    Answer {
        status,
        code,
        retry_after,
        text,
    }
}

/// The breaker's refusal at every door: while SMS to a range is paused, what WhatsApp cannot
/// carry (a free text; an SMS-only verification) is refused with `sms_paused` and the
/// cool-down as Retry-After, stores nothing and is counted; a code through the same doors is
/// taken for WhatsApp only; another range flows through each door meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_range_refuses_what_only_sms_could_carry_at_every_door() {
    let g = gateway(&format!(
        "{PW_HASH_LINE}[policy]\nprenotify = false\n\
         [limits]\nprefix_digits = 3\nbreaker_min_codes = 3\nbreaker_min_approval_percent = 20\n\
         breaker_window = \"1h\"\nbreaker_cooldown = \"1h\"\n"
    ))
    .await;
    // Nobody has WhatsApp: without the pause every code would fall back to SMS.
    g.wa.set_default(Outcome::FallBack {
        code: Some("131026".into()),
        reason: "not on WhatsApp".into(),
        not_on_channel: true,
    });
    // A wave of verifications to one range, never checked: the range trips once they expire.
    // Another range's are checked, which keeps the country as a whole flowing.
    for n in 0..3 {
        start_verification(&g, &format!("+91987700010{n}")).await;
    }
    for n in 0..3 {
        check_one(&g, &format!("+91987709090{n}")).await;
    }
    wait_for("the breaker to trip", async || {
        let p = paused(&g).await;
        if p == ["+919877000"] {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    let cool_down = 3500..=3600;
    for (i, door) in [Door::V1, Door::Generic, Door::Kannel]
        .into_iter()
        .enumerate()
    {
        let before = rows(&g).await;
        let a = send_text(&g, door, &format!("+91987700020{i}")).await;
        let want = match door {
            Door::Kannel => (503, "Temporal failure, try again later."),
            _ => (429, "sms_paused"),
        };
        assert_eq!((a.status, a.code.as_str()), want, "{door:?}: {}", a.text);
        let wait = a.retry_after.expect("Retry-After");
        assert!(cool_down.contains(&wait), "{door:?}: Retry-After {wait}");
        assert_eq!(
            rows(&g).await,
            before,
            "{door:?}: a refusal stored something"
        );
        // The other range takes the same text by SMS.
        let a = send_text(&g, door, &format!("+91987709020{i}")).await;
        assert!((200..300).contains(&a.status), "{door:?}: {}", a.text);
        // A code to the paused range is taken, for WhatsApp only (`send` carries one).
        let a = send(&g, door, &format!("+91987700030{i}"), None, None).await;
        assert!((200..300).contains(&a.status), "{door:?}: {}", a.text);
        assert!(
            !a.text.contains(CODE),
            "{door:?} echoed the code: {}",
            a.text
        );
    }
    // An SMS-only verification to the paused range.
    let before = rows(&g).await;
    let (s, v) = g
        .post_path(
            "/v1/verifications",
            json!({"to": "+919877000400", "channel": "sms"}),
        )
        .await;
    assert_eq!((s, &v["error"]["code"]), (429, &json!("sms_paused")), "{v}");
    assert_eq!(rows(&g).await, before, "Verify: a refusal stored something");
    assert_eq!(rejected(&g).await.get("sms_paused"), Some(&4.0));
    // The codes taken for WhatsApp only end there (it answers "not on WhatsApp"), never by
    // SMS, while the other range's texts went by SMS.
    let ends = wait_for("the codes to the paused range to end", async || {
        let store = &g.running.as_ref().unwrap().store;
        let ends: Vec<(String, Option<String>)> = store
            .read(|c| {
                let mut q = c.prepare(
                    "SELECT state, channel FROM messages WHERE recipient LIKE '+9198770003%'",
                )?;
                let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        if ends.len() == 3 && ends.iter().all(|(s, _)| s == "failed") {
            Ok(ends)
        } else {
            Err(format!("{ends:?}"))
        }
    })
    .await;
    assert!(
        ends.iter().all(|(_, c)| c.as_deref() != Some("sms")),
        "{ends:?}"
    );
    let by_sms: Vec<String> = g.sms.sent().into_iter().map(|d| d.to).collect();
    assert!(
        !by_sms.iter().any(|to| to.starts_with("+9198770003")),
        "{by_sms:?}"
    );
    for i in 0..3 {
        let to = format!("+91987709020{i}");
        assert!(by_sms.contains(&to), "{to} not sent by SMS: {by_sms:?}");
    }
    g.stop().await;
}

/// `limits.per_prefix` counts survive a crash: the daemon rebuilds them from the outbox at
/// start, so a pumping run gets no fresh allowance from a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_counts_survive_a_kill_9() {
    use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .whatsapp_sim(&sim)
        .policy("prenotify = false")
        .limits("per_prefix = \"2/1h\"")
        .client(CLIENT, KEY);
    cfg.write().unwrap();
    let http = common::http_client();
    let post = async |d: &common::Daemon, to: &str| {
        let req = http
            .post(format!("{}/v1/messages", d.base()))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "code": CODE}));
        let (s, v) = common::fetch_json(req).await;
        (s, v["error"]["code"].as_str().unwrap_or("").to_owned())
    };
    let mut d = Launch::new(&cfg).ready().await;
    assert_eq!(post(&d, "+919876580001").await.0, 202);
    d.kill_9();
    let d = Launch::new(&cfg).ready().await;
    assert_eq!(post(&d, "+919876580002").await.0, 202);
    assert_eq!(
        post(&d, "+919876580003").await,
        (429, "prefix_limited".to_string()),
        "the count before the crash was forgotten"
    );
    assert_eq!(post(&d, "+919876581001").await.0, 202, "another block");
    assert!(
        d.log().contains("counts rebuilt from the outbox"),
        "{}",
        d.log()
    );
}

/// A token Meta will not let inspect itself (a system user's): the expiry stays unknown (0,
/// which the rules skip), the log says why once, and the token is in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_meta_will_not_date_exports_zero_and_says_so_once() {
    use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    sim.handle().set_token_expiry(1_900_000_000);
    sim.handle().refuse_self_inspection(true);
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .whatsapp_sim(&sim)
        .client(CLIENT, KEY);
    cfg.write().unwrap();
    let d = Launch::new(&cfg).ready().await;
    let said = "does not let this access token inspect itself";
    d.wait_logged("the refusal to be logged", |l| l.contains(said))
        .await;
    let text = common::fetch(common::http_client().get(format!("{}/metrics", d.base())))
        .await
        .1;
    assert!(
        text.contains("otpgate_whatsapp_token_expiry_timestamp_seconds 0"),
        "{text}"
    );
    let log = d.log();
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(!log.contains(otpgate::sim::config::SIM_TOKEN), "{log}");
}

/// With `whatsapp.app_id`, the daemon asks with the app token (`app_id|app_secret`), which
/// Meta lets inspect the system user's token that may not inspect itself: the gauge is dated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_token_dates_a_token_that_may_not_inspect_itself() {
    use otpgate::sim::cloud_api::{CloudApiSim, SIM_APP_ID, SimOptions, WebhookTarget};
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    sim.handle().set_token_expiry(1_900_000_000);
    sim.handle().refuse_self_inspection(true);
    sim.handle().set_webhook(Some(WebhookTarget {
        url: "http://127.0.0.1:9/webhooks/whatsapp".into(),
        app_secret: "app-secret-for-tokens".into(),
    }));
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .whatsapp_sim(&sim)
        .whatsapp_webhook("app-secret-for-tokens", "verify-me")
        .whatsapp_lines(&format!("app_id = \"{SIM_APP_ID}\""))
        .client(CLIENT, KEY);
    cfg.write().unwrap();
    let d = Launch::new(&cfg).ready().await;
    let base = d.base();
    common::wait_for("the token's expiry on /metrics", async || {
        let text = common::fetch(common::http_client().get(format!("{base}/metrics")))
            .await
            .1;
        if text.contains("otpgate_whatsapp_token_expiry_timestamp_seconds 1900000000") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    let log = d.log();
    assert!(!log.contains("app-secret-for-tokens"), "{log}");
    assert!(!log.contains(otpgate::sim::config::SIM_TOKEN), "{log}");
}
