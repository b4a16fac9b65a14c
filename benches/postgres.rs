//! Accepting codes on PostgreSQL next to SQLite, in one run: the accept rate (16 callers
//! sending as fast as 202s come back) and accept -> provider latency (p50/p99, from the
//! request leaving the caller to the Cloud API simulator receiving the send), for the
//! embedded SQLite store, one node on PostgreSQL, and two nodes on one PostgreSQL with the
//! callers alternating between them. The server is a real PostgreSQL with fsync on
//! (started here, as tests/postgres.rs does), the daemons run in this process.
//!
//! Each store is measured twice: closed loop (the callers send as fast as the 202s come back:
//! the accept rate, and a latency that includes the queue when delivery is slower than
//! accept) and open loop (16 callers together offering a fixed 100 msg/s, below saturation,
//! as benches/e2e.rs does: the latency of one message through an idle-enough gateway). For
//! PostgreSQL each row also gives what a message costs the database, counted rather than
//! timed: transactions (`pg_stat_database`), statements (`pg_stat_statements`, BEGIN and
//! COMMIT included) and round trips (client-to-server sends through a counting proxy between
//! the daemons and the server), per message, accept and delivery together, background
//! (heartbeats, idle polls) included.
//!
//! `cargo bench --bench postgres` (`-- --messages N`, default 2,000 per closed-loop phase;
//! `-- --seconds N`, default 10 per open-loop phase)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n, Duration::from_secs(seconds)));
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

/// Offers `rate` msg/s from [`CALLERS`] callers for `span`, round-robin over `bases`, each
/// caller on its own ticker; returns the latency from each POST's start to a simulator
/// seeing its send.
async fn open_loop(
    http: &reqwest::Client,
    bases: &[String],
    sims: &[&CloudApiSim],
    rate: u32,
    span: Duration,
    first: usize,
) -> Vec<Duration> {
    let before: Vec<usize> = sims.iter().map(|s| s.requests().len()).collect();
    let callers = u32::try_from(CALLERS).unwrap();
    let period = Duration::from_secs_f64(f64::from(callers) / f64::from(rate));
    let per_caller = (span.as_secs_f64() / period.as_secs_f64()) as usize;
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let (http, bases) = (http.clone(), bases.to_vec());
        tasks.push(tokio::spawn(async move {
            // Callers start spread over one period, as independent callers would.
            tokio::time::sleep(period.mul_f64(c as f64 / CALLERS as f64)).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = Vec::new();
            for k in 0..per_caller {
                tick.tick().await;
                let i = k * CALLERS + c;
                let to = format!("9198{:08}", first + i);
                sent.push((to.clone(), Instant::now()));
                let r = http
                    .post(&bases[i % bases.len()])
                    .bearer_auth(KEY)
                    .json(&serde_json::json!({"to": format!("+{to}"), "code": "123456"}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status().as_u16(), 202);
            }
            sent
        }));
    }
    let mut sent_at = HashMap::new();
    for t in tasks {
        sent_at.extend(t.await.unwrap());
    }
    let want = before.iter().sum::<usize>() + sent_at.len();
    let t0 = Instant::now();
    while sims.iter().map(|s| s.requests().len()).sum::<usize>() < want
        && t0.elapsed() < Duration::from_secs(60)
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
    lat
}

/// A TCP proxy in front of the server that counts what the clients send: each read from a
/// client socket is one client-to-server flush, which for this protocol (a client sends, then
/// waits for the answer) is one round trip.
struct Proxy {
    port: u16,
    sends: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sends = Arc::new(AtomicU64::new(0));
        let counter = sends.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Proxy { port, sends }
    }
}

/// What the database has done so far for `db`: (transactions, statements, round trips).
async fn db_cost(stats: &tokio_postgres::Client, db: &str, proxy: &Proxy) -> (i64, i64, u64) {
    // The server publishes a backend's counts when it goes idle, at most once a second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let xacts: i64 = stats
        .query_one(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    let statements: i64 = stats
        .query_one(
            "SELECT COALESCE(sum(s.calls), 0)::bigint FROM pg_stat_statements s
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    (xacts, statements, proxy.sends.load(Ordering::Relaxed))
}

/// The cost of a phase of `n` messages, per message.
fn per_message(before: (i64, i64, u64), after: (i64, i64, u64), n: usize) -> String {
    let n = n.max(1) as f64;
    format!(
        "{:>6.1} {:>6.1} {:>6.1}",
        (after.0 - before.0) as f64 / n,
        (after.1 - before.1) as f64 / n,
        (after.2 - before.2) as f64 / n
    )
}

async fn run(n: usize, span: Duration) {
    const RATE: u32 = 100;
    let http = otpgate::sim::tls::loopback_client()
        .expect("tls")
        .build()
        .expect("client");
    let pg = postgres::Postgres::start_counting(true);
    pg.create_db("one").await;
    pg.create_db("two").await;
    let stats = pg.client("postgres").await;
    stats
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let proxy = Proxy::start(pg.port).await;
    let url = |db: &str| {
        format!(
            "postgres://{}@127.0.0.1:{}/{db}?sslmode=disable",
            postgres::ROLE,
            proxy.port
        )
    };
    let open = (RATE as f64 * span.as_secs_f64()) as usize;
    println!(
        "accept on SQLite and PostgreSQL ({n} codes per closed-loop row, {open} at {RATE} msg/s per open-loop row, {CALLERS} callers, PostgreSQL fsync on, WhatsApp simulator)"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>6}  {:>6} {:>6} {:>6}",
        "store", "accepts/s", "p50", "p99", "n", "xact", "stmts", "trips"
    );
    let report = |name: &str, (rate, mut lat): (f64, Vec<Duration>), cost: String| {
        let count = lat.len();
        let rate = if rate > 0.0 {
            format!("{rate:.0}")
        } else {
            "-".into()
        };
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>6}  {}",
            name,
            rate,
            ms(pct(&mut lat, 0.5)),
            ms(pct(&mut lat, 0.99)),
            count,
            cost
        );
    };
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();

    let (sqlite, sim) = node(dirs[0].path(), None).await;
    let base = vec![format!("http://{}/v1/messages", sqlite.addrs[0])];
    report(
        "sqlite, one node",
        phase(&http, &base, &[&sim], n, 0).await,
        String::new(),
    );
    let lat = open_loop(&http, &base, &[&sim], RATE, span, 500_000).await;
    report(
        &format!("sqlite, one node, {RATE}/s offered"),
        (0.0, lat),
        String::new(),
    );
    drop(sqlite);

    let (one, sim1) = node(dirs[1].path(), Some((&url("one"), "a"))).await;
    let base = vec![format!("http://{}/v1/messages", one.addrs[0])];
    let c0 = db_cost(&stats, "one", &proxy).await;
    let r = phase(&http, &base, &[&sim1], n, 1_000_000).await;
    let c1 = db_cost(&stats, "one", &proxy).await;
    report("postgres, one node", r, per_message(c0, c1, n));
    let lat = open_loop(&http, &base, &[&sim1], RATE, span, 1_500_000).await;
    let c2 = db_cost(&stats, "one", &proxy).await;
    report(
        &format!("postgres, one node, {RATE}/s offered"),
        (0.0, lat),
        per_message(c1, c2, open),
    );
    drop(one);

    let (a, sim_a) = node(dirs[2].path(), Some((&url("two"), "a"))).await;
    let (b, sim_b) = node(dirs[3].path(), Some((&url("two"), "b"))).await;
    let bases = vec![
        format!("http://{}/v1/messages", a.addrs[0]),
        format!("http://{}/v1/messages", b.addrs[0]),
    ];
    let c0 = db_cost(&stats, "two", &proxy).await;
    let r = phase(&http, &bases, &[&sim_a, &sim_b], n, 2_000_000).await;
    let c1 = db_cost(&stats, "two", &proxy).await;
    report("postgres, two nodes", r, per_message(c0, c1, n));
    let lat = open_loop(&http, &bases, &[&sim_a, &sim_b], RATE, span, 2_500_000).await;
    let c2 = db_cost(&stats, "two", &proxy).await;
    report(
        &format!("postgres, two nodes, {RATE}/s offered"),
        (0.0, lat),
        per_message(c1, c2, open),
    );
    println!(
        "xact, stmts, trips: PostgreSQL transactions, statements and client round trips per message (accept and delivery; both nodes' background included)"
    );
}
