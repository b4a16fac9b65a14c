//! Accept throughput and latency of the real daemon (SQLite, synchronous=FULL, group commit,
//! the dispatcher delivering to the Cloud API simulator at the same time) next to a bare hyper
//! server that answers 202 without storing, under the same load, in the same run.
//!
//! `cargo bench --bench accept` (add `-- --seconds 5 --rounds 5` for longer or more rounds;
//! `-- --wal-pages` prints only the WAL pages each accept writes; `-- --daemon` starts the
//! daemon in intake mode and prints its address and pid, for `-- --load ADDR CONNS SECONDS`
//! under `strace -c` or `perf`). Each mode also prints the
//! CPU time per answered message of the server and of the load generator, read from /proc:
//! a cost that, unlike the rates, does not move with the disk or the neighbours.
//! Each row alternates bare and otpgate rounds and reports the medians, because a shared
//! two-core machine drifts by a third from one minute to the next. The daemon runs with the
//! shipped per-recipient limit ("5/15m"). The bare server and the simulator run as separate
//! processes (this binary re-executed) so they do not share the load generator's process.
//!
//! Intake also runs three durable floors in the same alternating rounds, each its own process
//! served as the bare server is: `--plain-server DIR`, the next one writing the same row to a
//! table without key or index (one B-tree); `--sqlite-server DIR`, hyper plus a minimal hand-written
//! group commit on one rusqlite connection (the outbox's table, indexes and pragmas, one
//! INSERT per request, a 202 only after the fsync'd COMMIT), and `--store-server DIR`, hyper
//! plus the store's own writer (`Store::insert`, no limits). They say how close to the bare
//! server any server that keeps the durability promise can get on this machine, and what of
//! otpgate's cost is the store's rather than the API's. `-- --only intake` skips the live
//! section.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use otpgate::sim::config::TestConfig;

// The launcher the tests use: the daemon as a child process, killed on drop.
#[path = "../tests/common/mod.rs"]
mod common;

const KEY: &str = "bench-key-0123456789";

/// The next recipient number.
static NUMBERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "--bare-server") {
        rt.block_on(bare_server());
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(dir) = value("--sqlite-server") {
        rt.block_on(sqlite_server(std::path::Path::new(&dir), Table::Outbox));
        return;
    }
    if let Some(dir) = value("--plain-server") {
        rt.block_on(sqlite_server(std::path::Path::new(&dir), Table::Plain));
        return;
    }
    if let Some(dir) = value("--store-server") {
        rt.block_on(store_server(std::path::Path::new(&dir)));
        return;
    }
    if args.iter().any(|a| a == "--sim") {
        rt.block_on(sim(args.iter().any(|a| a == "--hang")));
        return;
    }
    if args.iter().any(|a| a == "--wal-pages") {
        rt.block_on(print_wal_pages());
        return;
    }
    if args.iter().any(|a| a == "--daemon") {
        // For profiling by hand: the daemon in intake mode, its address and pid on stdout,
        // running until this process is stopped.
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tmp");
            let (_sim, sim_line) = spawn_self(&["--sim", "--hang"]);
            let (base, ca) = sim_line.split_once(' ').unwrap_or_default();
            let d = spawn_daemon(dir.path(), base, ca).await;
            println!("{} {}", d.addr, d.pid());
            std::io::stdout().flush().ok();
            tokio::signal::ctrl_c().await.ok();
        });
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--load") {
        // For profiling a daemon started by hand: `--load ADDR CONNS SECONDS`.
        let arg = |k: usize| args.get(i + k).cloned().unwrap_or_default();
        let r = rt.block_on(load(
            &arg(1),
            arg(2).parse().unwrap_or(64),
            Duration::from_secs(arg(3).parse().unwrap_or(10)),
        ));
        println!(
            "{:.0} msg/s, p50 {:?}, p99 {:?}, errors {}",
            r.rate, r.p50, r.p99, r.errors
        );
        return;
    }
    let seconds: u64 = value("--seconds").and_then(|s| s.parse().ok()).unwrap_or(2);
    let rounds: usize = value("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
    // "intake" or "live": run only that section.
    let only = value("--only");
    rt.block_on(run(
        Duration::from_secs(seconds),
        rounds.max(1),
        only.as_deref(),
    ));
}

/// A hyper server that answers every request 202 with a body like ours, storing nothing.
async fn bare_server() {
    let l = listen().await;
    loop {
        let s = next_connection(&l).await;
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                let mut r = http::Response::new(Full::new(Bytes::from_static(ACCEPTED_BODY)));
                *r.status_mut() = http::StatusCode::ACCEPTED;
                Ok::<_, Infallible>(r)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

/// A listener on a free loopback port, its address on stdout for the process that started us.
async fn listen() -> tokio::net::TcpListener {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("{}", l.local_addr().expect("addr"));
    std::io::stdout().flush().ok();
    l
}

/// The next accepted connection, with Nagle off as the daemon sets it.
async fn next_connection(l: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    loop {
        if let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            return s;
        }
    }
}

/// What every server here answers with its 202: a body like ours.
const ACCEPTED_BODY: &[u8] = b"{\"id\":\"msg_00000000000000000000000000000000\",\"status\":\"queued\",\"expires_at\":\"2026-01-01T00:00:00.000Z\",\"to\":\"+919876543210\"}";

/// The string value of `"name":"..."` in a JSON body, found without parsing: the floors do
/// none of the API's work beyond taking the two values they store.
fn field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = body.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let len = body.get(start..)?.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(body.get(start..start + len)?).ok()
}

/// Serves as [`bare_server`] does (same hyper setup, nodelay, 202 body), but reads each
/// request's body and answers 202 only once `accept(body)` says the message is stored.
async fn serve_durable<F, Fut>(accept: F)
where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    use http_body_util::BodyExt;
    let accept = std::sync::Arc::new(accept);
    let l = listen().await;
    loop {
        let s = next_connection(&l).await;
        let accept = accept.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let accept = accept.clone();
                async move {
                    let stored = match req.into_body().collect().await {
                        Ok(body) => accept(body.to_bytes()).await,
                        Err(_) => false,
                    };
                    let (status, body) = if stored {
                        (http::StatusCode::ACCEPTED, ACCEPTED_BODY)
                    } else {
                        (http::StatusCode::INTERNAL_SERVER_ERROR, &b""[..])
                    };
                    let mut r = http::Response::new(Full::new(Bytes::from_static(body)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

/// The row a floor stores for a request's `to` and `code`, or None if `to` is no E.164.
fn request_row(to: &str, code: &str) -> Option<otpgate::store::NewMessage> {
    use otpgate::clock::{Clock, SystemClock};
    use otpgate::domain::{Content, E164, MessageId};
    let now = SystemClock.now();
    let random: [u8; 10] = rand::random();
    Some(otpgate::store::NewMessage {
        id: MessageId::new(format!("msg_{:012x}{}", now.0, hex::encode(random))),
        client: "bench".into(),
        recipient: E164::new(to)?,
        country: Some("IN".into()),
        content: Content::Code {
            code: code.to_owned(),
            sms_text: format!("{code} is your verification code. Do not share it."),
        },
        locale: None,
        reference: None,
        idempotency_key: None,
        created_at: now,
        expires_at: now.plus(Duration::from_secs(300)),
        only_channel: None,
    })
}

/// A request's row from its body.
fn body_row(body: &[u8]) -> Option<otpgate::store::NewMessage> {
    request_row(field(body, "to")?, field(body, "code")?)
}

/// Where a floor's INSERT goes.
#[derive(Clone, Copy)]
enum Table {
    /// The outbox as the store keeps it: the table, its id key and the due and expiry indexes.
    Outbox,
    /// The same columns with no key and no index: one B-tree, the least any store can write.
    Plain,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Outbox => "messages",
            Table::Plain => "plain",
        }
    }
}

/// The durable floor: hyper plus a minimal group commit of its own on one rusqlite
/// connection, on the outbox's own table and indexes (or, `Table::Plain`, the same row in a
/// table without them). Nothing else (no auth, no number parsing, no limits, no checkpointer
/// thread: SQLite's automatic checkpoint runs in the COMMIT that crosses 1,000 WAL frames, as
/// in any plain SQLite program).
async fn sqlite_server(dir: &std::path::Path, table: Table) {
    let path = dir.join("floor.db");
    // The store creates the file, the schema and its indexes; then it lets go of it.
    drop(otpgate::store::Store::open(&path).expect("store"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    if let Table::Plain = table {
        conn.execute_batch("CREATE TABLE plain AS SELECT * FROM messages WHERE 0")
            .expect("plain table");
    }
    // The pragmas of the store's writer connection (src/store/mod.rs); the page size is the
    // file's, SQLite's default 4 KiB, which the store does not change.
    conn.busy_timeout(Duration::from_secs(5)).expect("busy");
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .expect("qpsg");
    conn.pragma_update(None, "foreign_keys", "ON").expect("fk");
    conn.pragma_update(None, "secure_delete", "ON")
        .expect("secure_delete");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    assert!(mode.eq_ignore_ascii_case("wal"), "journal_mode {mode}");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("sync");
    conn.pragma_update(None, "temp_store", "MEMORY")
        .expect("temp");
    let (tx, rx) = std::sync::mpsc::channel::<Floor>();
    std::thread::Builder::new()
        .name("floor-writer".into())
        .spawn(move || floor_writer(&conn, &rx, table))
        .expect("thread");
    serve_durable(move |body| {
        let tx = tx.clone();
        async move {
            let Some(row) = body_row(&body) else {
                return false;
            };
            let (done, stored) = tokio::sync::oneshot::channel();
            if tx.send(Floor { row, done }).is_err() {
                return false;
            }
            stored.await.unwrap_or(false)
        }
    })
    .await;
}

/// One request for the floor's writer: its row, and where to say whether it was committed.
struct Floor {
    row: otpgate::store::NewMessage,
    done: tokio::sync::oneshot::Sender<bool>,
}

/// The floor's group commit: take what is queued, BEGIN, one INSERT each, COMMIT, answer.
fn floor_writer(conn: &rusqlite::Connection, rx: &std::sync::mpsc::Receiver<Floor>, table: Table) {
    // Statements through the cache, as the store runs them: parsing costs more than running.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        // The store's bound on a group.
        while group.len() < 512 {
            match rx.try_recv() {
                Ok(f) => group.push(f),
                Err(_) => break,
            }
        }
        let committed = exec("BEGIN IMMEDIATE").is_ok()
            && group
                .iter()
                .all(|f| floor_insert(conn, &f.row, table).is_ok())
            && exec("COMMIT").is_ok();
        if !committed {
            let _ = exec("ROLLBACK");
        }
        for f in group {
            let _ = f.done.send(committed);
        }
    }
}

/// The outbox's INSERT (src/store/messages.rs), bound from the row.
fn floor_insert(
    conn: &rusqlite::Connection,
    m: &otpgate::store::NewMessage,
    table: Table,
) -> rusqlite::Result<usize> {
    let otpgate::domain::Content::Code { code, sms_text } = &m.content else {
        return Err(rusqlite::Error::InvalidQuery);
    };
    let sql = format!(
        "INSERT INTO {} (id, client, recipient, country, kind, body, sms_text, locale, reference,
            idempotency_key, created_at, expires_at, state, next_attempt_at, only_channel)
         VALUES (?1, ?2, ?3, ?4, 'code', ?5, ?6, NULL, NULL, NULL, ?7, ?8, 'queued', ?7, NULL)",
        table.name()
    );
    conn.prepare_cached(&sql)?.execute(rusqlite::params![
        &*m.id,
        m.client,
        m.recipient.as_str(),
        m.country,
        code,
        sms_text,
        m.created_at.0,
        m.expires_at.0,
    ])
}

/// The floor plus the store: hyper and `Store::insert` (its writer thread, group commit and
/// checkpointer) with no limits; everything of otpgate's accept but the API.
async fn store_server(dir: &std::path::Path) {
    let store = otpgate::store::Store::open(&dir.join("floor.db")).expect("store");
    serve_durable(move |body| {
        let store = store.clone();
        async move {
            let Some(row) = body_row(&body) else {
                return false;
            };
            matches!(
                store.insert(row, vec![]).await,
                Ok(otpgate::store::InsertResult::Created(_))
            )
        }
    })
    .await;
}

async fn sim(hang: bool) {
    let sim = otpgate::sim::cloud_api::CloudApiSim::start(otpgate::sim::cloud_api::SimOptions {
        builtin_rules: false,
        ..Default::default()
    })
    .await
    .expect("sim");
    if hang {
        sim.handle()
            .set_default(Some(otpgate::sim::cloud_api::Script::Hang));
    }
    let dir = std::env::temp_dir().join(format!("otpgate-bench-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, sim.ca_pem()).expect("ca");
    println!("{} {}", sim.base_url(), ca.display());
    std::io::stdout().flush().ok();
    std::future::pending::<()>().await;
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_self(args: &[&str]) -> (Proc, String) {
    let exe = std::env::current_exe().expect("exe");
    let mut c = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    (Proc(c), line.trim().to_string())
}

/// The real binary on a fixed free port, logging only warnings (as the config says).
async fn spawn_daemon(dir: &std::path::Path, sim_base: &str, sim_ca: &str) -> common::Daemon {
    let cfg = TestConfig::new(dir)
        .free_port()
        .expect("port")
        .server("max_connections = 256")
        .whatsapp(sim_base)
        .whatsapp_ca_file(std::path::Path::new(sim_ca))
        // Long enough that in intake mode the hung sends hold the dispatcher's slots for the
        // whole run: a timeout would count toward the transport circuit, and once it opens
        // the dispatcher would claim and requeue the backlog, which is not what intake measures.
        .whatsapp_lines("max_rate = 1000\ntimeout = \"300s\"")
        .policy("prenotify = false\nwhatsapp_deadline = \"300s\"")
        .limits("per_recipient = \"5/15m\"")
        .log_level("warn")
        .client("bench", KEY);
    cfg.write().expect("config");
    common::Launch::new(&cfg).rust_log("warn").listening().await
}

struct Result {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// Messages answered 202.
    n: u64,
}

/// CPU time (user + system, all threads) a process has used so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Context switches (voluntary + involuntary, all threads) a process has made so far: each
/// voluntary one is a thread parking for want of work (or on an fsync), a count that, like
/// the CPU time, does not depend on the machine's speed.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// CPU spent per answered message in the server and in the load generator over some rounds.
#[derive(Default, Clone, Copy)]
struct Cpu {
    server: Duration,
    generator: Duration,
    /// The server's context switches.
    switches: u64,
    n: u64,
}

impl Cpu {
    /// Runs one round against `addr` (served by process `pid`) and adds its CPU time.
    async fn round(&mut self, pid: u32, addr: &str, conns: usize, dur: Duration) -> Result {
        let me = std::process::id();
        let (s0, g0, w0) = (cpu_time(pid), cpu_time(me), switches(pid));
        let r = load(addr, conns, dur).await;
        self.server += cpu_time(pid).saturating_sub(s0);
        self.switches += switches(pid).saturating_sub(w0);
        self.generator += cpu_time(me).saturating_sub(g0);
        self.n += r.n;
        r
    }

    /// The server's context switches per message.
    fn switches_per_msg(&self) -> f64 {
        self.switches as f64 / self.n.max(1) as f64
    }

    /// Microseconds per message: (server, generator).
    fn per_msg(&self) -> (f64, f64) {
        let n = self.n.max(1) as f64;
        (
            self.server.as_secs_f64() * 1e6 / n,
            self.generator.as_secs_f64() * 1e6 / n,
        )
    }
}

/// `conns` workers, each on its own keep-alive connection, POSTing for `dur`.
async fn load(addr: &str, conns: usize, dur: Duration) -> Result {
    let stop = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = format!("http://{addr}/v1/messages");
        tasks.push(tokio::spawn(async move {
            let client = otpgate::sim::tls::loopback_client()
                .expect("tls")
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < stop {
                i += 1;
                // A new number every time across all rounds, so the per-recipient limit
                // never refuses one: every request is an accept.
                let n = NUMBERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = format!(
                    "{{\"to\":\"+9198{:08}\",\"code\":\"{:06}\"}}",
                    n % 100_000_000,
                    i % 1_000_000
                );
                let t = Instant::now();
                match client
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("worker");
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Result {
        n: all.len() as u64,
        rate: all.len() as f64 / dur.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

/// The round with the median rate; errors are summed over all rounds.
fn median(mut all: Vec<Result>) -> Result {
    all.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let errors = all.iter().map(|r| r.errors).sum();
    let mid = all.swap_remove(all.len() / 2);
    Result { errors, ..mid }
}

/// Pages the store's writer connection has written to the WAL so far (SQLite's own counter).
async fn wal_pages(store: &otpgate::store::Store) -> i64 {
    store.wal_pages_written().await.expect("store")
}

/// A row as the API stores it: a time-ordered id, a full number, a code and its SMS text.
fn accepted_row(n: u64) -> otpgate::store::NewMessage {
    request_row(
        &format!("+9198{:08}", n % 100_000_000),
        &format!("{:06}", n % 1_000_000),
    )
    .expect("number")
}

/// WAL pages written per accepted message when `callers` insert at once, each waiting for its
/// commit like an HTTP caller: the store alone, so the figure does not depend on the machine.
/// `strace -c -e pwrite64` on the daemon shows about twice this (plus the checkpointer's
/// copying back): SQLite writes each WAL frame as two pwrites, its header and the page.
async fn wal_pages_per_accept(callers: u64, each: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let store = otpgate::store::Store::open(&dir.path().join("otpgate.db")).expect("store");
    for n in 0..200 {
        store.insert(accepted_row(n), vec![]).await.expect("insert");
    }
    let before = wal_pages(&store).await;
    let mut tasks = Vec::new();
    for c in 0..callers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                let row = accepted_row(1_000 + c * each + i);
                store.insert(row, vec![]).await.expect("insert");
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    (wal_pages(&store).await - before) as f64 / (callers * each) as f64
}

async fn print_wal_pages() {
    let mut line = String::from("WAL pages per accept (store alone, rows like the API's):");
    for callers in [1u64, 16, 64] {
        let pages = wal_pages_per_accept(callers, 2_000 / callers).await;
        line.push_str(&format!(" {pages:.2} at {callers} caller(s);"));
    }
    println!("{}", line.trim_end_matches(';'));
}

/// A durable floor running beside the daemon in the intake rounds.
struct FloorServer {
    name: &'static str,
    proc: Proc,
    addr: String,
    results: Vec<Result>,
    cpu: Cpu,
}

async fn run(dur: Duration, rounds: usize, only: Option<&str>) {
    print_wal_pages().await;
    let (bare, bare_addr) = spawn_self(&["--bare-server"]);
    let bare_pid = bare.0.id();
    println!(
        "accept benchmark, median of {rounds} alternating {}s rounds: the real otpgate binary (SQLite WAL, synchronous=FULL, group commit) vs a bare hyper server answering 202 without storing",
        dur.as_secs()
    );
    for (section, mode, sim_args) in [
        (
            "intake",
            "intake: WhatsApp stalled, so the dispatcher's slots stay full and only accept + commit run",
            vec!["--sim", "--hang"],
        ),
        (
            "live",
            "live: the dispatcher delivers every message to the Cloud API simulator over TLS meanwhile",
            vec!["--sim"],
        ),
    ] {
        if only.is_some_and(|o| o != section) {
            continue;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let (_sim, sim_line) = spawn_self(&sim_args);
        let mut parts = sim_line.split(' ');
        let (sim_base, sim_ca) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let daemon = spawn_daemon(dir.path(), &sim_base, &sim_ca).await;
        let addr = daemon.addr.clone();
        // The floors' databases sit on the same file system as the daemon's.
        let mut floors = Vec::new();
        if section == "intake" {
            for (name, flag) in [
                ("plain-floor", "--plain-server"),
                ("sqlite-floor", "--sqlite-server"),
                ("store-floor", "--store-server"),
            ] {
                let db = dir.path().join(name);
                std::fs::create_dir_all(&db).expect("dir");
                let (proc, addr) = spawn_self(&[flag, db.to_str().expect("utf-8 path")]);
                floors.push(FloorServer {
                    name,
                    proc,
                    addr,
                    results: Vec::new(),
                    cpu: Cpu::default(),
                });
            }
        }
        println!("\n{mode}");
        println!(
            "{:>5} | {:>12} {:>9} {:>9} | {:>12} {:>9} {:>9} | {:>6}",
            "conns", "bare msg/s", "p50", "p99", "otpgate/s", "p50", "p99", "ratio"
        );
        let _ = load(&addr, 4, Duration::from_millis(500)).await; // warm-up
        let _ = load(&bare_addr, 4, Duration::from_millis(500)).await;
        for f in &floors {
            let _ = load(&f.addr, 4, Duration::from_millis(500)).await;
        }
        let ms = |d: Duration| format!("{:.2}ms", d.as_secs_f64() * 1000.0);
        let mut cpu_lines = Vec::new();
        let mut floor_lines = Vec::new();
        for conns in [1usize, 16, 64] {
            let (mut bare, mut ours) = (Vec::new(), Vec::new());
            let (mut bare_cpu, mut our_cpu) = (Cpu::default(), Cpu::default());
            for f in &mut floors {
                f.results.clear();
                f.cpu = Cpu::default();
            }
            for _ in 0..rounds {
                bare.push(bare_cpu.round(bare_pid, &bare_addr, conns, dur).await);
                for f in &mut floors {
                    let r = f.cpu.round(f.proc.0.id(), &f.addr, conns, dur).await;
                    f.results.push(r);
                }
                ours.push(our_cpu.round(daemon.pid() as u32, &addr, conns, dur).await);
            }
            let ((bs, bg), (os, og)) = (bare_cpu.per_msg(), our_cpu.per_msg());
            cpu_lines.push(format!(
                "{conns:>5} | {bs:>9.1} {bg:>9.1} | {os:>9.1} {og:>9.1} | {:>6.2} | {:>6.2} {:>6.2}",
                (bs + bg) / (os + og),
                bare_cpu.switches_per_msg(),
                our_cpu.switches_per_msg()
            ));
            let (b, o) = (median(bare), median(ours));
            println!(
                "{conns:>5} | {:>12.0} {:>9} {:>9} | {:>12.0} {:>9} {:>9} | {:>6.2}{}",
                b.rate,
                ms(b.p50),
                ms(b.p99),
                o.rate,
                ms(o.p50),
                ms(o.p99),
                o.rate / b.rate.max(1.0),
                if o.errors + b.errors > 0 {
                    format!("  (errors: bare {}, otpgate {})", b.errors, o.errors)
                } else {
                    String::new()
                }
            );
            if floors.is_empty() {
                continue;
            }
            // The floors next to bare and otpgate, each against the bare server's medians.
            let row = |name: &str, r: &Result, cpu: &Cpu| {
                let (s, g) = cpu.per_msg();
                format!(
                    "{conns:>5} | {name:<12} | {:>9.0} {:>9} {:>9} | {:>6.2} | {s:>9.1} {g:>9.1} | {:>6.2} | {:>6.2}{}",
                    r.rate,
                    ms(r.p50),
                    ms(r.p99),
                    r.rate / b.rate.max(1.0),
                    (bs + bg) / (s + g),
                    cpu.switches_per_msg(),
                    if r.errors > 0 {
                        format!("  (errors: {})", r.errors)
                    } else {
                        String::new()
                    }
                )
            };
            floor_lines.push(row("bare", &b, &bare_cpu));
            for f in &mut floors {
                let m = median(std::mem::take(&mut f.results));
                floor_lines.push(row(f.name, &m, &f.cpu));
            }
            floor_lines.push(row("otpgate", &o, &our_cpu));
        }
        // Where the cores go, per answered message: on a machine whose two cores are
        // saturated, the rates' ratio tends to the ratio of these sums, whatever the disk
        // and the neighbours (which only add idle time or steal from both alike).
        println!("CPU µs per answered message (user + system, all threads, all rounds):");
        println!(
            "{:>5} | {:>9} {:>9} | {:>9} {:>9} | {:>6} | context switches/msg: {:>6} {:>6}",
            "conns", "bare", "load gen", "otpgate", "load gen", "ratio", "bare", "otpgate"
        );
        for l in cpu_lines {
            println!("{l}");
        }
        if !floor_lines.is_empty() {
            println!(
                "durable floors, in the same alternating rounds: plain-floor = sqlite-floor on a table without key or index, sqlite-floor = hyper + a minimal group commit on rusqlite (the outbox's table, indexes and pragmas), store-floor = hyper + Store::insert; ratios to bare (rates' medians; CPU = (bare + its gen) / (this + its gen))"
            );
            println!(
                "{:>5} | {:<12} | {:>9} {:>9} {:>9} | {:>6} | {:>9} {:>9} | {:>6} | {:>6}",
                "conns",
                "server",
                "msg/s",
                "p50",
                "p99",
                "ratio",
                "µs server",
                "load gen",
                "CPU r.",
                "ctx/msg"
            );
            for l in floor_lines {
                println!("{l}");
            }
        }
    }
}
