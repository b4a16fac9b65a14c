//! Memory of the real binary (issue 18): an idle daemon with one modem and WhatsApp stays
//! small, and a burst of accepted messages and of bad input gives its memory back. The
//! bounds are generous (memory is not timing, but allocators and page tables vary): they
//! catch a cache that grows with traffic or an eager table of every country, not a few pages.
//!
//! `OTPGATE_MEMORY_MESSAGES=10000 cargo test --release --test memory -- --nocapture` prints
//! the figures the README's "Memory" subsection quotes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::time::Duration;

use common::{CLIENT, KEY, Launch, TestConfig, wait_for};
use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
use otpgate::sim::modem::{Profile, SimModem};
use serde_json::json;

/// Idle ceiling of the anonymous (heap) part of RSS, which is ours: about 8 MiB here in debug
/// and release builds alike (33 before issue 18, mostly huge pages). The file-backed part is
/// the binary's own pages, 13 MiB in release and twice that in debug, so it is left out.
const IDLE_MAX_KIB: u64 = 20 * 1024;
/// How far the anonymous RSS may stay above idle once a burst is over (about 10 MiB here).
const AFTER_BURST_MARGIN_KIB: u64 = 20 * 1024;

/// A line of /proc/PID/status in KiB ("VmRSS:   12345 kB").
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// RSS once it has settled: allocators hand pages back on a delay and idle blocking threads
/// leave after two seconds, so the smallest of readings a quarter second apart over four.
async fn settled_rss(pid: i32) -> (u64, u64) {
    let mut least = (u64::MAX, u64::MAX);
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        least.0 = least.0.min(status_kib(pid, "VmRSS"));
        least.1 = least.1.min(status_kib(pid, "RssAnon"));
    }
    least
}

/// How much of the RSS is the heap (anonymous) and how much mapped files (the binary).
fn breakdown(pid: i32) -> String {
    let (anon, file) = (status_kib(pid, "RssAnon"), status_kib(pid, "RssFile"));
    format!("anon {anon} KiB, file {file} KiB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_memory_is_small_and_bursts_give_it_back() {
    let messages: usize = std::env::var("OTPGATE_MEMORY_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions {
        builtin_rules: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let cfg = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .whatsapp_sim(&sim)
        .whatsapp_lines("max_rate = 1000")
        .modem("modem0", modem.path())
        .policy("prenotify = false")
        .log_level("info")
        .client(CLIENT, KEY);
    cfg.write().unwrap();
    let d = Launch::new(&cfg).rust_log("info").ready().await;
    let (pid, base, http) = (d.pid(), d.base(), common::http_client());
    wait_for("the modem to be ready", async || {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let (idle_rss, idle) = settled_rss(pid).await;
    eprintln!("idle: VmRSS {idle_rss} KiB ({})", breakdown(pid));
    // Accepted messages, all sent over WhatsApp, 32 callers at a time.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let callers: Vec<_> = (0..32)
        .map(|caller| {
            let (http, base, sent) = (http.clone(), base.clone(), sent.clone());
            tokio::spawn(async move {
                for i in (caller..messages).step_by(32) {
                    let body =
                        json!({"to": format!("+9198{:08}", 76_500_000 + i), "code": "482913"});
                    let req = http
                        .post(format!("{base}/v1/messages"))
                        .bearer_auth(KEY)
                        .json(&body);
                    let (status, v) = common::fetch_json(req).await;
                    assert_eq!(status, 202, "{v}");
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), messages);
    wait_for(format!("{messages} WhatsApp sends"), async || {
        let n = sim.handle().delivered().len();
        if n >= messages { Ok(()) } else { Err(n) }
    })
    .await;
    let peak = status_kib(pid, "VmHWM");
    let (after_rss, after) = settled_rss(pid).await;
    eprintln!(
        "after {messages} messages: VmRSS {after_rss} KiB ({}), peak {peak} KiB",
        breakdown(pid)
    );

    // Bad input at the door: unparsable bodies, wrong keys, bad numbers, oversized bodies.
    let junk = "x".repeat(200_000);
    for i in 0..messages / 4 {
        let url = format!("{base}/v1/messages");
        let req = match i % 4 {
            0 => http
                .post(&url)
                .bearer_auth(KEY)
                .body(format!("{{\"to\": [{i}")),
            1 => http
                .post(&url)
                .bearer_auth("wrong-key")
                .json(&json!({"to": "+1"})),
            2 => http
                .post(&url)
                .bearer_auth(KEY)
                .json(&json!({"to": format!("+99{i}"), "code": "1"})),
            _ => http.post(&url).bearer_auth(KEY).body(junk.clone()),
        };
        let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        assert!(status != 202 && status < 500, "bad input {i} got {status}");
    }
    let (bad_rss, bad) = settled_rss(pid).await;
    eprintln!("after bad input: VmRSS {bad_rss} KiB ({})", breakdown(pid));

    assert!(
        idle < IDLE_MAX_KIB,
        "idle anonymous RSS {idle} KiB, over {IDLE_MAX_KIB} KiB"
    );
    for (what, rss) in [("the messages", after), ("the bad input", bad)] {
        assert!(
            rss < idle + AFTER_BURST_MARGIN_KIB,
            "anonymous RSS {rss} KiB after {what}, idle was {idle} KiB"
        );
    }
    drop(d);
}
