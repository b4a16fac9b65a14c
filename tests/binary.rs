//! The real `otpgate` binary: crash safety under kill -9, logs free of codes and tokens at the
//! most verbose level, TLS and mTLS with test-made certificates, and the CLI commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::{BIN, CLIENT, Daemon, KEY, Launch, TestConfig, wait_for};
use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions};
use otpgate::sim::config::SIM_TOKEN as TOKEN;
use otpgate::sim::tls::TestPki;
use serde_json::json;

/// A config for the binary: WhatsApp against the simulator, listening on a fixed free port.
fn config(dir: &Path, sim: &CloudApiSim) -> TestConfig {
    TestConfig::new(dir)
        .free_port()
        .unwrap()
        .whatsapp_sim(sim)
        .policy("prenotify = false\nwhatsapp_deadline = \"30s\"")
        .log_level("trace")
        .client(CLIENT, KEY)
}

/// Writes `cfg` and starts the daemon on it.
async fn start(cfg: &TestConfig) -> Daemon {
    cfg.write().unwrap();
    Launch::new(cfg).ready().await
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let req = http.post(format!("{base}/v1/messages")).bearer_auth(KEY);
    common::fetch_json(req.json(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_a_burst_loses_nothing_and_logs_hold_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions {
        builtin_rules: false,
        ..Default::default()
    })
    .await
    .unwrap();
    // Hang WhatsApp so messages are mid-attempt when the process dies.
    sim.handle().set_default(Some(Script::Hang));
    let modem =
        otpgate::sim::modem::SimModem::start(otpgate::sim::modem::Profile::quectel()).unwrap();
    let cfg = config(dir.path(), &sim).modem("modem0", modem.path());
    let d = start(&cfg).await;
    let base = d.base();
    let http = common::http_client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            // Distinctive codes: a hit in the log is a leak, never a coincidence with hex or time.
            let code = format!("Zq{i:05}Xw");
            let (s, v) = post(
                &http,
                &base,
                json!({"to": format!("+9198765{:05}", i), "code": code}),
            )
            .await;
            (s, v["id"].as_str().map(str::to_owned), code)
        }));
    }
    let mut ids = Vec::new();
    let mut codes = Vec::new();
    for t in tasks {
        let (s, id, code) = t.await.unwrap();
        assert_eq!(s, 202);
        ids.push(id.unwrap());
        codes.push(code);
    }
    // Let the dispatcher start WhatsApp attempts (they hang), then kill it mid-attempt.
    wait_for("a WhatsApp attempt", async || !sim.requests().is_empty()).await;
    let in_flight_before_kill = sim.requests().len();
    assert!(
        in_flight_before_kill > 0,
        "no WhatsApp attempt was under way"
    );
    let mut d = d;
    d.kill_9();
    let log1 = d.log();
    drop(d);
    sim.handle().set_default(None);
    let d = start(&cfg).await;
    let base = d.base();
    for id in &ids {
        let r = http
            .get(format!("{base}/v1/messages/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "accepted message {id} lost");
    }
    // Every message reaches a phone: interrupted WhatsApp attempts are not repeated on
    // WhatsApp (they may have gone out), so those codes go by SMS; the rest by WhatsApp.
    for id in &ids {
        wait_for(format!("{id} to be sent"), async || {
            let url = format!("{base}/v1/messages/{id}");
            let (_, v) = common::fetch_json(http.get(url).bearer_auth(KEY)).await;
            let status = &v["status"];
            if status == "sent" || status == "delivered" {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
    }
    let sms = modem.received();
    for c in &codes {
        assert!(
            sms.iter().filter(|m| m.text.contains(c.as_str())).count() <= 1,
            "a code went twice by SMS"
        );
    }
    assert!(
        sms.len() >= in_flight_before_kill.min(64),
        "interrupted codes went by SMS: {} SMS for {in_flight_before_kill} interrupted",
        sms.len()
    );
    let mut per_recipient = std::collections::HashMap::<String, usize>::new();
    for r in sim.requests() {
        if let Some(to) = r
            .json
            .as_ref()
            .and_then(|j| j["to"].as_str().map(str::to_owned))
        {
            *per_recipient.entry(to).or_default() += 1;
        }
    }
    assert!(
        per_recipient.values().all(|n| *n == 1),
        "a code went twice over WhatsApp: {per_recipient:?}"
    );
    let log = format!("{log1}{}", d.log());
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the daemon logged at the verbose levels"
    );
    for c in &codes {
        let hit = log.lines().find(|l| l.contains(c.as_str()));
        assert!(hit.is_none(), "a code appeared in the log: {hit:?}");
    }
    assert!(
        !log.contains(TOKEN) && !log.contains(KEY),
        "a token or key appeared in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let pki = TestPki::new().unwrap();
    let files = pki.write_files(dir.path()).unwrap();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"",
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    );
    let d = start(&config(dir.path(), &sim).server(&tls)).await;
    let base = format!("https://localhost:{}", d.port());
    // Without a client certificate the handshake is refused.
    let no_cert = reqwest::Client::builder()
        .use_preconfigured_tls(pki.client_config().unwrap())
        .resolve("localhost", d.addr.parse().unwrap())
        .build()
        .unwrap();
    assert!(no_cert.get(format!("{base}/healthz")).send().await.is_err());
    // With one signed by the configured CA, the API works over TLS.
    let (cert, key) = pki.client_cert("adfs").unwrap();
    use rustls_pki_types::pem::PemObject;
    let chain = vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let cfg_tls = rustls::ClientConfig::builder_with_provider(otpgate::sim::tls::ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.root_store().unwrap())
        .with_client_auth_cert(chain, key)
        .unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cfg_tls)
        .resolve("localhost", d.addr.parse().unwrap())
        .build()
        .unwrap();
    let (s, v) = post(
        &http,
        &base,
        json!({"to": "+919876543210", "code": "123456"}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    // A plain-HTTP client gets nothing useful from a TLS port.
    let plain = common::http_client();
    assert!(
        plain
            .get(format!("http://{}/healthz", d.addr))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
}

#[test]
fn check_config_reports_every_error_and_summarises_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = [\"127.0.0.1:88a\"]\nbogus = 1\n[otp]\ndefault_ttl = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "server.listen[0]: \"127.0.0.1:88a\" is not a socket address",
        "server.bogus: unknown key",
        "otp.default_ttl",
        "otp.default_country: is required",
        "4 configuration errors",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.contains(&bad.display().to_string()),
        "errors name the file:\n{err}"
    );
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/otpgate.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    for want in ["configuration OK", "listen", "whatsapp", "policy", "limits"] {
        assert!(summary.contains(want), "{summary}");
    }
    let out = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/otpgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn key_new_prints_a_key_and_its_hash_line() {
    let out = Command::new(BIN)
        .args(["key", "new", "--name", "adfs"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().nth(1).unwrap().trim().to_string();
    assert!(key.starts_with("og_"));
    let hash = hex::encode(otpgate::api::auth::sha256(&key));
    assert!(text.contains(&format!("key_sha256 = \"{hash}\"")), "{text}");
    assert!(text.contains("name = \"adfs\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_command_goes_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let d = start(&config(dir.path(), &sim)).await;
    let out = tokio::task::spawn_blocking({
        let url = d.base();
        move || {
            Command::new(BIN)
                .args([
                    "send",
                    "--to",
                    "+919876543210",
                    "--code",
                    "314159",
                    "--wait",
                    "5s",
                    "--url",
                    &url,
                ])
                .env("OTPGATE_KEY", KEY)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("202 ") && text.contains("\"channel\":\"whatsapp\""),
        "{text}"
    );
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1);
    let mut s = String::new();
    let _ = std::io::Cursor::new(d.log()).read_to_string(&mut s);
    assert!(!s.contains("314159"));
}

/// The codes of `codes` found in any file `otpgate.db*` of `dir` (the database, its WAL and
/// shared memory), with the file each was found in.
fn codes_on_disk(dir: &Path, codes: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("otpgate.db") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        for c in codes {
            if bytes.windows(c.len()).any(|w| w == c.as_bytes()) {
                found.push(format!("{c} in {name}"));
            }
        }
    }
    found
}

/// Sends a distinctive code to each of `n` numbers and waits until every message reached a
/// final state (its code and SMS text wiped). Returns what must not be found on disk afterwards.
async fn send_and_settle(base: &str, round: usize, n: usize) -> Vec<String> {
    let http = common::http_client();
    let mut secrets = Vec::new();
    for i in 0..n {
        let code = format!("Wp{round}{i:03}Kd");
        let to = format!("+91987650{round}{i:03}");
        let (s, v) = post(&http, base, json!({"to": to, "code": code})).await;
        assert_eq!(s, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        wait_for(format!("{id} to reach a final state"), async || {
            let url = format!("{base}/v1/messages/{id}");
            let (_, v) = common::fetch_json(http.get(url).bearer_auth(KEY)).await;
            if ["sent", "delivered", "failed", "expired"]
                .iter()
                .any(|s| v["status"] == *s)
            {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
        // The SMS text rendered from the default template, beside the code on its own.
        secrets.push(format!("{code} is your"));
        secrets.push(code);
    }
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_codes_and_texts_leave_no_trace_in_the_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let cfg = config(dir.path(), &sim);
    let mut d = start(&cfg).await;
    let base = d.base();
    // While running: once commits stop, the checkpointer empties the WAL.
    let first = send_and_settle(&base, 1, 12).await;
    wait_for("the wiped codes to leave the database files", async || {
        let left = codes_on_disk(dir.path(), &first);
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join(", "))
        }
    })
    .await;
    // At a clean stop right after the wipes: the shutdown's checkpoint empties it.
    let second = send_and_settle(&base, 2, 12).await;
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(codes_on_disk(dir.path(), &all), Vec::<String>::new());
    // The secrets were there to be found: the grep itself works.
    assert!(!codes_on_disk(dir.path(), &["SQLite format 3".into()]).is_empty());
}

/// Issue 18: a kill -9 while codes wait behind a slow modem. Only the code whose PDU reached
/// the modem may count as possibly delivered; the others never left the box and are sent
/// after the restart, and the one that left is not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_codes_queue_for_a_slow_modem_fails_none_that_never_left() {
    use otpgate::sim::modem::{Profile, SimModem};
    let dir = tempfile::tempdir().unwrap();
    let modem = SimModem::start(Profile::quectel()).unwrap();
    // Each PDU goes out at once but its +CMGS answer takes 2 s: the sends queue up.
    modem.set_send_delay(std::time::Duration::from_secs(2));
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .modem("modem0", modem.path())
        .log_level("debug")
        .client(CLIENT, KEY);
    let mut d = start(&cfg).await;
    let http = common::http_client();
    let mut sent = Vec::new();
    for i in 0..4 {
        let code = format!("Kq{i:03}Zt");
        let to = format!("+91987652{i:04}");
        let (s, v) = post(&http, &d.base(), json!({"to": to, "code": code})).await;
        assert_eq!(s, 202, "{v}");
        sent.push((v["id"].as_str().unwrap().to_owned(), code));
    }
    wait_for("the modem to take the first PDU", async || {
        !modem.received().is_empty()
    })
    .await;
    d.kill_9();
    let left = modem.received();
    assert_eq!(left.len(), 1, "one PDU left before the kill");
    drop(d);
    // The answer owed to the dead daemon's PDU lands before the next one opens the port.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    modem.set_send_delay(std::time::Duration::ZERO);
    let d = start(&cfg).await;
    let base = d.base();
    for (id, code) in &sent {
        let v = wait_for(format!("{id} to reach a final state"), async || {
            let url = format!("{base}/v1/messages/{id}");
            let (_, v) = common::fetch_json(http.get(url).bearer_auth(KEY)).await;
            if ["sent", "delivered", "failed", "expired"]
                .iter()
                .any(|s| v["status"] == *s)
            {
                Ok(v)
            } else {
                Err(v)
            }
        })
        .await;
        let copies = modem
            .received()
            .iter()
            .filter(|m| m.text.contains(code.as_str()))
            .count();
        let departed = left.iter().any(|m| m.text.contains(code.as_str()));
        let interrupted = v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"] == "interrupted");
        assert_eq!(copies, 1, "{id}: sent exactly once: {v}");
        assert_eq!(
            interrupted, departed,
            "{id}: interrupted exactly when its PDU had left: {v}"
        );
        if !departed {
            assert!(
                v["status"] == "sent" || v["status"] == "delivered",
                "{id} never left the box, so it is sent after the restart: {v}"
            );
        }
    }
}

/// Issue 18, WhatsApp: a kill -9 while codes wait behind the global rate cap. Those still
/// waiting never reached the API and are sent after the restart; a code that did reach it is
/// never sent twice, and only a request that departed can end a code as possibly delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_codes_wait_for_the_whatsapp_rate_cap_fails_none_that_never_left() {
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions {
        builtin_rules: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = config(dir.path(), &sim).whatsapp_lines("max_rate = 2");
    let mut d = start(&cfg).await;
    let http = common::http_client();
    let mut sent = Vec::new();
    for i in 0..8 {
        let code = format!("Wr{i:03}Qx");
        let to = format!("+91987653{i:04}");
        let (s, v) = post(&http, &d.base(), json!({"to": to, "code": code})).await;
        assert_eq!(s, 202, "{v}");
        sent.push((v["id"].as_str().unwrap().to_owned(), to));
    }
    wait_for("two requests at the Cloud API", async || {
        sim.requests().len() >= 2
    })
    .await;
    d.kill_9();
    let before = sim.requests().len();
    assert!(before < sent.len(), "codes were still waiting for the cap");
    drop(d);
    let d = start(&cfg).await;
    let base = d.base();
    let mut resent = 0;
    let mut lost = Vec::new();
    for (id, to) in &sent {
        let v = wait_for(format!("{id} to reach a final state"), async || {
            let url = format!("{base}/v1/messages/{id}");
            let (_, v) = common::fetch_json(http.get(url).bearer_auth(KEY)).await;
            if ["sent", "delivered", "failed", "expired"]
                .iter()
                .any(|s| v["status"] == *s)
            {
                Ok(v)
            } else {
                Err(v)
            }
        })
        .await;
        let digits = to.trim_start_matches('+');
        let requests = sim
            .requests()
            .iter()
            .filter(|r| r.json.as_ref().is_some_and(|j| j["to"] == digits))
            .count();
        assert!(requests <= 1, "{id}: reached the API twice: {v}");
        let interrupted = v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"] == "interrupted");
        if !interrupted {
            assert!(
                v["status"] == "sent" || v["status"] == "delivered",
                "{id} never departed, so it is sent after the restart: {v}"
            );
            assert_eq!(requests, 1, "{id}: {v}");
        }
        if requests == 1 && !interrupted {
            resent += 1;
        }
        if interrupted && requests == 0 {
            lost.push(id.clone());
        }
    }
    assert!(
        resent > 0,
        "codes held back by the cap went out after the restart"
    );
    // Only a departure caught between its commit and its request can be lost this way.
    assert!(
        lost.len() <= 1,
        "codes counted as possibly delivered that never reached the API: {lost:?}"
    );
}
