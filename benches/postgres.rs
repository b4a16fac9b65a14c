//! Accepting codes on PostgreSQL next to SQLite, in one run: the accept rate (16 callers
//! sending as fast as 202s come back) and accept -> provider latency (p50/p99, from the
//! request leaving the caller to the Cloud API simulator receiving the send), for the
//! embedded SQLite store, one node on PostgreSQL, and two nodes on one PostgreSQL with the
//! callers alternating between them. The server is a real PostgreSQL with fsync on
//! (started here, as tests/postgres.rs does), the daemons run in this process.
//!
//! `cargo bench --bench postgres` (`-- --messages N`, default 2,000 per phase)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::clock::{SharedClock, SystemClock};
use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
use otpgate::sim::config::TestConfig;

const KEY: &str = "bench-key-0123456789";
const CALLERS: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

/// A daemon in this process on its own simulator; `pg`: (url, node) of the pair's database.
async fn node(
    dir: &std::path::Path,
    pg: Option<(&str, &str)>,
) -> (otpgate::daemon::Running, CloudApiSim) {
    let sim = CloudApiSim::start(SimOptions {
        builtin_rules: false,
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    let main = TestConfig::new(dir)
        .whatsapp_sim(&sim)
        .whatsapp_lines("timeout = \"2s\"\nmax_rate = 1000")
        .policy("prenotify = false\nwhatsapp_deadline = \"30s\"")
        .log_level("error")
        .client("bench", KEY)
        .write()
        .expect("config");
    if let Some((url, name)) = pg {
        let d = dir.join("conf.d");
        std::fs::create_dir_all(&d).unwrap();
        // Both nodes hash codes with one key, as a pair must.
        let key = d.join("verify.key");
        std::fs::write(&key, "bench-pair-verify-key-0123456789abcdef").unwrap();
        std::fs::write(
            d.join("10-pg.toml"),
            format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nnode = \"{name}\"\npool_size = 16\n[verify]\nkey_file = \"{}\"\n",
                key.display()
            ),
        )
        .unwrap();
    }
    let cfg = otpgate::config::load(&otpgate::config::Sources {
        main,
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
    (running, sim)
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

/// `n` codes from [`CALLERS`] callers, round-robin over `bases`; returns (accepts per
/// second, accept -> provider latencies).
async fn phase(
    http: &reqwest::Client,
    bases: &[String],
    sims: &[&CloudApiSim],
    n: usize,
    first: usize,
) -> (f64, Vec<Duration>) {
    let before: Vec<usize> = sims.iter().map(|s| s.requests().len()).collect();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let (http, bases) = (http.clone(), bases.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = c;
            while i < n {
                let to = format!("9198{:08}", first + i);
                let base = &bases[i % bases.len()];
                sent.push((to.clone(), Instant::now()));
                let r = http
                    .post(base)
                    .bearer_auth(KEY)
                    .json(&serde_json::json!({"to": format!("+{to}"), "code": "123456"}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status().as_u16(), 202);
                i += CALLERS;
            }
            sent
        }));
    }
    let mut sent_at = HashMap::new();
    for t in tasks {
        sent_at.extend(t.await.unwrap());
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let want: usize = before.iter().sum::<usize>() + n;
    while sims.iter().map(|s| s.requests().len()).sum::<usize>() < want
        && t0.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lat = Vec::new();
    for (s, b) in sims.iter().zip(before) {
        for r in s.requests().iter().skip(b) {
            if let Some(to) = r.json.as_ref().and_then(|j| j["to"].as_str())
                && let Some(at) = sent_at.get(to)
            {
                lat.push(r.at.saturating_duration_since(*at));
            }
        }
    }
    (rate, lat)
}

async fn run(n: usize) {
    let http = otpgate::sim::tls::loopback_client()
        .expect("tls")
        .build()
        .expect("client");
    let pg = postgres::Postgres::start(true);
    pg.create_db("one").await;
    pg.create_db("two").await;
    let url = |db: &str| format!("{}?sslmode=disable", pg.url(db));
    println!(
        "accept on SQLite and PostgreSQL ({n} codes per row, {CALLERS} callers, PostgreSQL fsync on, WhatsApp simulator)"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>6}",
        "store", "accepts/s", "p50", "p99", "n"
    );
    let report = |name: &str, (rate, mut lat): (f64, Vec<Duration>)| {
        let count = lat.len();
        println!(
            "{:<28} {:>10.0} {:>10} {:>10} {:>6}",
            name,
            rate,
            ms(pct(&mut lat, 0.5)),
            ms(pct(&mut lat, 0.99)),
            count
        );
    };
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();

    let (sqlite, sim) = node(dirs[0].path(), None).await;
    let base = format!("http://{}/v1/messages", sqlite.addrs[0]);
    report(
        "sqlite, one node",
        phase(&http, &[base], &[&sim], n, 0).await,
    );
    drop(sqlite);

    let (one, sim1) = node(dirs[1].path(), Some((&url("one"), "a"))).await;
    let base = format!("http://{}/v1/messages", one.addrs[0]);
    report(
        "postgres, one node",
        phase(&http, &[base], &[&sim1], n, 1_000_000).await,
    );
    drop(one);

    let (a, sim_a) = node(dirs[2].path(), Some((&url("two"), "a"))).await;
    let (b, sim_b) = node(dirs[3].path(), Some((&url("two"), "b"))).await;
    let bases = [
        format!("http://{}/v1/messages", a.addrs[0]),
        format!("http://{}/v1/messages", b.addrs[0]),
    ];
    report(
        "postgres, two nodes",
        phase(&http, &bases, &[&sim_a, &sim_b], n, 2_000_000).await,
    );
}
