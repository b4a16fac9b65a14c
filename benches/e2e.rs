//! The whole daemon on the simulators, in one run: accept -> provider request latency and
//! messages per second on the WhatsApp path and on the SMS path (a real pty), and the fallback
//! time when WhatsApp refuses connections or hangs, against `policy.whatsapp_deadline`.
//!
//! The WhatsApp path is measured twice: open loop (16 callers together offering a fixed rate,
//! 50 and 200 msg/s, `whatsapp.max_rate` 1,000 so the cap does not queue on purpose), which is
//! the latency a caller sees below saturation; and closed loop (16 callers sending as fast as
//! answers come), which is the throughput and the latency at saturation.
//!
//! `cargo bench --bench e2e` (`-- --seconds N` for longer open-loop phases)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::clock::{SharedClock, SystemClock};
use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions};
use otpgate::sim::config::TestConfig;
use otpgate::sim::modem::{Profile, SimModem};

const KEY: &str = "bench-key-0123456789";
const DEADLINE_S: u64 = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(Duration::from_secs(seconds)));
}

/// Offers `rate` msg/s from `callers` callers for `span`, each caller on its own ticker, and
/// returns the latency from the moment each POST started to the simulator seeing its request.
async fn open_loop(
    http: &reqwest::Client,
    base: &str,
    sim: &CloudApiSim,
    rate: u32,
    span: Duration,
    first_number: u64,
) -> Vec<Duration> {
    const CALLERS: u32 = 16;
    let before = sim.requests().len();
    let period = Duration::from_secs_f64(f64::from(CALLERS) / f64::from(rate));
    let per_caller = (span.as_secs_f64() / period.as_secs_f64()) as u64;
    let mut tasks = Vec::new();
    for c in 0..u64::from(CALLERS) {
        let (http, base) = (http.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            // Callers start spread over one period, as independent callers would.
            tokio::time::sleep(period.mul_f64(c as f64 / f64::from(CALLERS))).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = Vec::new();
            for k in 0..per_caller {
                tick.tick().await;
                let to = format!("91987{:07}", first_number + c * 100_000 + k);
                sent.push((to.clone(), Instant::now()));
                let _ = http
                    .post(&base)
                    .bearer_auth(KEY)
                    .json(&serde_json::json!({"to": format!("+{to}"), "code": "123456"}))
                    .send()
                    .await;
            }
            sent
        }));
    }
    let mut sent_at = HashMap::new();
    for t in tasks {
        sent_at.extend(t.await.unwrap_or_default());
    }
    let want = before + sent_at.len();
    let t0 = Instant::now();
    while sim.requests().len() < want && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.requests()
        .iter()
        .skip(before)
        .filter_map(|r| {
            let to = r.json.as_ref()?["to"].as_str()?.to_string();
            Some(r.at.saturating_duration_since(*sent_at.get(&to)?))
        })
        .collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

async fn run(span: Duration) {
    let dir = tempfile::tempdir().expect("tmp");
    // The SMS path below measures the synchronous 131026 (no webhook wired here).
    let sim = CloudApiSim::start(SimOptions {
        sync_not_on_whatsapp: true,
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    let modem = SimModem::start(Profile::quectel()).expect("modem");
    let cfg_path = TestConfig::new(dir.path())
        .whatsapp_sim(&sim)
        .whatsapp_lines("timeout = \"1s\"\nmax_rate = 1000")
        .modem("modem0", modem.path())
        .modem_lines("status_reports = false")
        .policy(&format!(
            "prenotify = false\nwhatsapp_deadline = \"{DEADLINE_S}s\""
        ))
        .log_level("error")
        .client("bench", KEY)
        .write()
        .expect("config");
    let cfg = otpgate::config::load(&otpgate::config::Sources {
        main: cfg_path,
        env: Default::default(),
    })
    .expect("config");
    let clock: SharedClock = Arc::new(SystemClock);
    let set = otpgate::daemon::build_channels(&cfg, &clock)
        .await
        .expect("channels");
    let running = otpgate::daemon::start(cfg, clock, set)
        .await
        .expect("start");
    let base = format!("http://{}/v1/messages", running.addrs[0]);
    let http = otpgate::sim::tls::loopback_client()
        .expect("tls")
        .build()
        .expect("client");
    for _ in 0..400 {
        if running.dispatcher.health().iter().all(|(_, h)| h.usable) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("end-to-end on the simulators (whatsapp_deadline {DEADLINE_S}s, WhatsApp timeout 1s)");
    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>10}",
        "path", "n", "msg/s", "p50", "p99"
    );

    // WhatsApp path below saturation: a fixed offered rate. Numbers 91987xxxxxxx with a last
    // three digits of 100 and up are on WhatsApp in the simulator.
    for (rate, first) in [(50u32, 1_100u64), (200, 5_100)] {
        let mut lat = open_loop(&http, &base, &sim, rate, span, first).await;
        println!(
            "{:<34} {:>6} {:>10} {:>10} {:>10}",
            format!("accept -> WhatsApp, {rate} msg/s offered"),
            lat.len(),
            rate,
            ms(pct(&mut lat, 0.5)),
            ms(pct(&mut lat, 0.99))
        );
    }

    // WhatsApp path at saturation: 16 callers sending as fast as answers come.
    let before = sim.requests().len();
    let n = 400usize;
    let t0 = Instant::now();
    let mut sent_at = HashMap::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let to = format!("919876{:06}", 200_100 + i);
        sent_at.insert(to.clone(), Instant::now());
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            http.post(&base)
                .bearer_auth(KEY)
                .json(&serde_json::json!({"to": format!("+{to}"), "code": "123456"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
        if tasks.len() >= 16 {
            for t in tasks.drain(..) {
                let _ = t.await;
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    while sim.requests().len() < before + n && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reqs: Vec<_> = sim.requests().into_iter().skip(before).collect();
    let last = reqs.iter().map(|r| r.at).max().unwrap_or_else(Instant::now);
    let mut lat: Vec<Duration> = reqs
        .iter()
        .filter_map(|r| {
            let to = r.json.as_ref()?["to"].as_str()?.to_string();
            Some(r.at.saturating_duration_since(*sent_at.get(&to)?))
        })
        .collect();
    let rate = reqs.len() as f64 / last.saturating_duration_since(t0).as_secs_f64().max(1e-6);
    println!(
        "{:<34} {:>6} {:>10.0} {:>10} {:>10}",
        "accept -> WhatsApp, saturated",
        lat.len(),
        rate,
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99))
    );

    // SMS path: numbers ending 000-099 are "not on WhatsApp": accept -> WhatsApp no -> modem.
    let n_sms = 100usize;
    let before = modem.received().len();
    let t0 = Instant::now();
    let mut sms_lat = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n_sms {
        let to = format!("+9198765{:02}0{:02}", i / 100, i % 100);
        let (http, base) = (http.clone(), format!("{base}?wait=20s"));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(&base)
                .bearer_auth(KEY)
                .json(&serde_json::json!({"to": to, "code": "654321"}))
                .send()
                .await;
            (t.elapsed(), r.map(|r| r.status().as_u16()).unwrap_or(0))
        }));
        if tasks.len() >= 8 {
            for t in tasks.drain(..) {
                if let Ok((d, 202)) = t.await {
                    sms_lat.push(d);
                }
            }
        }
    }
    for t in tasks {
        if let Ok((d, 202)) = t.await {
            sms_lat.push(d);
        }
    }
    let got = modem.received().len() - before;
    let rate = got as f64 / t0.elapsed().as_secs_f64();
    println!(
        "{:<34} {:>6} {:>10.0} {:>10} {:>10}",
        "accept -> WhatsApp no -> SMS sent",
        got,
        rate,
        ms(pct(&mut sms_lat, 0.5)),
        ms(pct(&mut sms_lat, 0.99))
    );

    // Fallback time when WhatsApp is down, measured to the SMS's +CMGS (the answer of ?wait).
    // Hang first (pooled connections hang too), then stop the simulator so that pooled and
    // new connections alike are refused.
    let h = sim.handle();
    for (what, refuse) in [
        ("WhatsApp hangs", false),
        ("WhatsApp refuses connections", true),
    ] {
        if refuse {
            h.set_default(None);
            sim.stop();
        } else {
            h.set_default(Some(Script::Hang));
        }
        let mut v = Vec::new();
        for i in 0..5 {
            let to = format!("+91987651{}{:03}", if refuse { 1 } else { 2 }, 200 + i);
            let t = Instant::now();
            let r = http
                .post(format!("{base}?wait=20s"))
                .bearer_auth(KEY)
                .json(&serde_json::json!({"to": to, "code": "111222"}))
                .send()
                .await;
            if let Ok(r) = r {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                if body["channel"] == "sms" {
                    v.push(t.elapsed());
                }
            }
        }
        println!(
            "fallback, {what:<28} n={} p50 {} max {} (whatsapp_deadline {DEADLINE_S}s)",
            v.len(),
            ms(pct(&mut v, 0.5)),
            ms(v.iter().max().copied().unwrap_or_default())
        );
    }
    running.shutdown().await;
}
