//! `otpgate whatsapp check` (the real binary) against the Cloud API simulator's
//! `message_templates` endpoint: a good template, one without a TTL, one not approved in a
//! configured language; and the same check at daemon start, shown in /readyz.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, CLIENT, KEY, Launch, TestConfig, wait_for};
use otpgate::sim::cloud_api::{CloudApiSim, SIM_WABA_ID, SimOptions, SimTemplate};

/// WhatsApp against `sim`, English by default and Hindi for `hi` callers, with the account id.
fn config(dir: &Path, sim: &CloudApiSim) -> TestConfig {
    TestConfig::new(dir)
        .free_port()
        .unwrap()
        .whatsapp_sim(sim)
        .whatsapp_lines(&format!(
            "business_account_id = \"{SIM_WABA_ID}\"\nlanguages = {{ hi = \"hi\" }}"
        ))
        .client(CLIENT, KEY)
}

async fn sim_with(catalog: Vec<SimTemplate>) -> CloudApiSim {
    CloudApiSim::start(SimOptions {
        catalog,
        ..SimOptions::default()
    })
    .await
    .unwrap()
}

/// Runs `otpgate whatsapp check`: exit code, stdout, stderr.
async fn check(cfg: &TestConfig) -> (i32, String, String) {
    let path = cfg.write().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["whatsapp", "check", "--config"])
            .arg(path)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_template_passes_in_every_language() {
    let sim = sim_with(vec![
        SimTemplate::good("otp_auth", "en_US"),
        SimTemplate::good("otp_auth", "hi"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check(&config(dir.path(), &sim)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("en_US: ok (APPROVED, AUTHENTICATION, copy code, TTL 300s, expires in 5 min)"),
        "{out}"
    );
    assert!(out.contains("hi: ok"), "{out}");
    assert!(!out.contains("MISMATCH"), "{out}");
    // It asked Meta the documented way, with the token.
    let r = sim.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].method, "GET");
    assert_eq!(r[0].path, format!("/v24.0/{SIM_WABA_ID}/message_templates"));
    assert!(r[0].auth_valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_without_a_ttl_fails_with_the_reason() {
    let mut no_ttl = SimTemplate::good("otp_auth", "en_US");
    no_ttl.ttl_seconds = None;
    let sim = sim_with(vec![no_ttl, SimTemplate::good("otp_auth", "hi")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check(&config(dir.path(), &sim)).await;
    assert_eq!(code, 1, "{out}{err}");
    let mismatches: Vec<&str> = out.lines().filter(|l| l.contains("MISMATCH")).collect();
    assert_eq!(mismatches.len(), 1, "{out}");
    assert!(
        mismatches[0].starts_with("  en_US: MISMATCH: message_send_ttl_seconds is not set"),
        "{out}"
    );
    assert!(out.contains("hi: ok"), "{out}");
    assert!(
        err.contains("1 mismatch(es) in template \"otp_auth\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_language_not_approved_fails_and_the_daemon_warns_at_start() {
    let mut pending = SimTemplate::good("otp_auth", "hi");
    pending.status = "PENDING".into();
    let sim = sim_with(vec![SimTemplate::good("otp_auth", "en_US"), pending]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim);
    let (code, out, err) = check(&cfg).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("hi: MISMATCH: status is PENDING, not APPROVED"),
        "{out}"
    );
    assert!(out.contains("en_US: ok"), "{out}");

    // The daemon runs the same check at start: a warning in the log and in /readyz, while
    // it stays ready (English codes still go by WhatsApp).
    let d = Launch::new(&cfg).ready().await;
    let http = common::http_client();
    let summary = wait_for("the template check in /readyz", async || {
        let (status, v) = common::fetch_json(http.get(format!("{}/readyz", d.base()))).await;
        let s = v["channels"]["whatsapp"]["summary"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if status == 200 && s.contains("template check") {
            Ok(s)
        } else {
            Err(format!("{status} {v}"))
        }
    })
    .await;
    assert!(
        summary.contains("hi: status is PENDING, not APPROVED"),
        "{summary}"
    );
    d.wait_logged("the warning", |l| {
        l.lines()
            .any(|l| l.contains("WARN") && l.contains("template check") && l.contains("PENDING"))
    })
    .await;

    // Hindi dropped from the configuration and reloaded: checked again, nothing left to say.
    TestConfig::new(dir.path())
        .listen(cfg.addr().parse().unwrap())
        .whatsapp_sim(&sim)
        .whatsapp_lines(&format!("business_account_id = \"{SIM_WABA_ID}\""))
        .client(CLIENT, KEY)
        .write()
        .unwrap();
    let before = sim.requests().len();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(
        "the check again after the reload, and a clean bill",
        async || {
            let (_, v) = common::fetch_json(http.get(format!("{}/readyz", d.base()))).await;
            let s = &v["channels"]["whatsapp"]["summary"];
            if sim.requests().len() > before && s == "ok" {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        },
    )
    .await;
}
