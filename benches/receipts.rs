//! Delivery truth (issue 15): the daemon on the Meta-like Cloud API simulator, whose status
//! webhooks reach the daemon's `/webhooks/whatsapp` signed, and the pty modem simulator.
//!
//! 1. `failed` webhook -> SMS: numbers whose last three digits are 000-099 are "not on
//!    WhatsApp" (200 with a wamid, then a signed `failed` 131026 after `FAILED_AFTER`). The
//!    latency runs from the moment the simulator starts the webhook POST to the moment the
//!    modem simulator takes the SMS's PDU (+CMGS).
//! 2. `policy.delivery_deadline` precision: 200 codes handed in at once to offline phones
//!    (900-999 only ever get `sent`); for each, the SMS attempt's start (its departure, at the
//!    modem's prompt) and the +CMGS at the modem, minus its deadline (the WhatsApp acceptance
//!    plus the deadline, as the policy computes it).
//! 3. Webhook handler throughput: signed status POSTs (half for wamids the outbox holds, half
//!    for unknown ones) against the daemon and against a bare hyper server that answers 200 to
//!    the same POSTs, from the same load generator in the same run.
//!
//! `cargo bench --bench receipts` (`-- --webhooks N` POSTs per throughput row, default 4000).
//! For a machine-independent cost, `-- --only daemon|bare --webhooks N` starts the daemon the
//! same way, posts N webhooks from one caller and lets every receipt retry run out: run it
//! under `valgrind --tool=callgrind` with two values of N; the difference in instructions
//! divided by the difference in N is the cost of one webhook (client side included, which the
//! bare row subtracts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use otpgate::clock::{SharedClock, SystemClock};
use otpgate::secret::Secret;
use otpgate::sim::cloud_api::{CloudApiSim, ReceiptTiming, SimOptions, WebhookTarget};
use otpgate::sim::config::TestConfig;
use otpgate::sim::modem::{Profile, SimModem};
use serde_json::json;

const KEY: &str = "bench-key-0123456789";
const APP_SECRET: &str = "bench-app-secret";
/// The simulator's delay between the 200 and the `failed` webhook.
const FAILED_AFTER: Duration = Duration::from_millis(100);
const DELIVERY_DEADLINE_S: u64 = 2;
const CALLERS: usize = 16;

struct Args {
    webhooks: usize,
    only: Option<String>,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        a.iter()
            .position(|x| x == name)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    Args {
        webhooks: value("--webhooks")
            .and_then(|s| s.parse().ok())
            .unwrap_or(4000),
        only: value("--only"),
    }
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Signed lateness in milliseconds, p50/p99/max and min.
fn lateness(v: &mut [i64]) -> String {
    v.sort_unstable();
    if v.is_empty() {
        return "n=0".into();
    }
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "n={} p50 {} ms, p99 {} ms, max {} ms (min {} ms)",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1],
        v[0]
    )
}

struct World {
    _dir: tempfile::TempDir,
    sim: CloudApiSim,
    modem: SimModem,
    running: otpgate::daemon::Running,
    base: String,
    http: reqwest::Client,
    /// Wall-clock milliseconds of an `Instant`, from one pair read at the start.
    epoch: (Instant, i64),
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().expect("tmp");
        let sim = CloudApiSim::start(SimOptions {
            receipts: ReceiptTiming {
                sent: Duration::from_millis(20),
                failed: FAILED_AFTER,
                jitter: Duration::ZERO,
                ..ReceiptTiming::default()
            },
            ..SimOptions::default()
        })
        .await
        .expect("sim");
        let modem = SimModem::start(Profile::quectel()).expect("modem");
        let cfg_path = TestConfig::new(dir.path())
            .whatsapp_sim(&sim)
            .whatsapp_lines("timeout = \"2s\"\nmax_rate = 1000")
            .whatsapp_webhook(APP_SECRET, "bench-verify-token")
            .modem("modem0", modem.path())
            .modem_lines("status_reports = false")
            .policy(&format!(
                "prenotify = false\nwhatsapp_deadline = \"3s\"\ndelivery_deadline = \"{DELIVERY_DEADLINE_S}s\""
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
        let addr = running.addrs[0];
        sim.handle().set_webhook(Some(WebhookTarget {
            url: format!("http://{addr}/webhooks/whatsapp"),
            app_secret: APP_SECRET.into(),
        }));
        let http = otpgate::sim::tls::loopback_client()
            .expect("tls")
            .pool_max_idle_per_host(CALLERS * 2)
            .build()
            .expect("client");
        for _ in 0..400 {
            if running.dispatcher.health().iter().all(|(_, h)| h.usable) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        World {
            _dir: dir,
            sim,
            modem,
            running,
            base: format!("http://{addr}"),
            http,
            epoch: (Instant::now(), i64::try_from(wall).expect("ms")),
        }
    }

    fn wall_ms(&self, t: Instant) -> i64 {
        let (i0, w0) = self.epoch;
        if t >= i0 {
            w0 + i64::try_from(t.duration_since(i0).as_millis()).unwrap_or(i64::MAX)
        } else {
            w0 - i64::try_from(i0.duration_since(t).as_millis()).unwrap_or(i64::MAX)
        }
    }

    /// Hands in one code without waiting; its message id.
    async fn submit(&self, to: &str, code: &str) -> Option<String> {
        let r = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(KEY)
            .json(&json!({"to": to, "code": code}))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["id"].as_str().map(str::to_owned)
    }

    async fn get(&self, id: &str) -> serde_json::Value {
        let r = self
            .http
            .get(format!("{}/v1/messages/{id}", self.base))
            .bearer_auth(KEY)
            .send()
            .await;
        match r {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Waits (at most `limit`) until the modem has taken an SMS for every number in `to`.
    async fn wait_sms(&self, to: &[String], limit: Duration) -> HashMap<String, Instant> {
        let t0 = Instant::now();
        loop {
            let got: HashMap<String, Instant> = self
                .modem
                .received()
                .into_iter()
                .filter(|r| to.contains(&r.to))
                .map(|r| (r.to, r.at))
                .collect();
            if got.len() >= to.len() || t0.elapsed() > limit {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Phase 1: from the `failed` webhook's POST to the SMS at the modem.
async fn failed_to_sms(w: &World) {
    let n = 100usize;
    let numbers: Vec<String> = (0..n)
        .map(|i| format!("+9198765{:02}0{:02}", i / 100, i % 100))
        .collect();
    // 50 codes a second, open loop: the webhooks arrive spread as they would.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut tasks = Vec::new();
    for to in &numbers {
        tick.tick().await;
        let (http, base, to) = (w.http.clone(), w.base.clone(), to.clone());
        tasks.push(tokio::spawn(async move {
            let _ = http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(KEY)
                .json(&json!({"to": to, "code": "424242"}))
                .send()
                .await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let at_modem = w.wait_sms(&numbers, Duration::from_secs(60)).await;
    let posts = w.sim.handle().webhook_posts();
    let mut lat = Vec::new();
    for p in posts
        .iter()
        .filter(|p| p.status == "failed" && p.attempt == 1)
    {
        if let Some(cmgs) = at_modem.get(&format!("+{}", p.recipient)) {
            lat.push(cmgs.saturating_duration_since(p.sent_at));
        }
    }
    let refused = posts.iter().filter(|p| p.answer != Some(200)).count();
    println!(
        "failed webhook POST -> +CMGS at the modem   n={:>4} p50 {:>8} p99 {:>8} max {:>8}  (failed after {}ms, 50 codes/s; webhook tries not answered 200: {refused})",
        lat.len(),
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
        FAILED_AFTER.as_millis()
    );
}

/// The baseline of phase 2, same burst, same modem: 200 codes at once whose WhatsApp send is
/// refused at once (a synchronous 131026), so each goes to SMS as soon as it is handed in.
/// Returns the SMS latency from each POST's start to its +CMGS at the modem.
async fn straight_to_sms(w: &World) {
    let n = 200usize;
    let numbers: Vec<String> = (0..n)
        .map(|i| format!("+9198767{:02}{:03}", i / 100, 100 + i % 100))
        .collect();
    for to in &numbers {
        w.sim.handle().set_for(
            to.trim_start_matches('+'),
            otpgate::sim::cloud_api::Script::error(400, 131026),
        );
    }
    let mut tasks = Vec::new();
    for to in &numbers {
        let (http, base, to) = (w.http.clone(), w.base.clone(), to.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let _ = http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(KEY)
                .json(&json!({"to": to, "code": "848484"}))
                .send()
                .await;
            (to, t)
        }));
    }
    let mut posted = HashMap::new();
    for t in tasks {
        if let Ok((to, at)) = t.await {
            posted.insert(to, at);
        }
    }
    let at_modem = w.wait_sms(&numbers, Duration::from_secs(60)).await;
    let mut lat: Vec<i64> = at_modem
        .iter()
        .filter_map(|(to, at)| {
            let p = posted.get(to)?;
            i64::try_from(at.saturating_duration_since(*p).as_millis()).ok()
        })
        .collect();
    println!("baseline, {n} codes at once refused by WhatsApp at once (synchronous 131026):");
    println!(
        "  +CMGS at the modem - POST start      {}",
        lateness(&mut lat)
    );
    let span = |v: &HashMap<String, Instant>| {
        let min = v.values().min().copied();
        let max = v.values().max().copied();
        match (min, max) {
            (Some(a), Some(b)) => b.duration_since(a),
            _ => Duration::ZERO,
        }
    };
    println!(
        "  POSTs spread over {}; the {} SMS left the modem over {}",
        ms(span(&posted)),
        at_modem.len(),
        ms(span(&at_modem))
    );
}

/// Phase 2: 200 codes to offline phones at once; SMS start minus the delivery deadline.
/// Returns the message ids (their wamids are known to the outbox, for phase 3).
async fn deadline_precision(w: &World) -> Vec<String> {
    let n = 200usize;
    let numbers: Vec<String> = (0..n)
        .map(|i| format!("+9198766{:02}9{:02}", i / 100, i % 100))
        .collect();
    let mut tasks = Vec::new();
    for to in &numbers {
        let (http, base, to) = (w.http.clone(), w.base.clone(), to.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(KEY)
                .json(&json!({"to": to, "code": "737373"}))
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            Some((to, v["id"].as_str()?.to_owned()))
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        if let Ok(Some(x)) = t.await {
            ids.push(x);
        }
    }
    let at_modem = w
        .wait_sms(&numbers, Duration::from_secs(DELIVERY_DEADLINE_S + 60))
        .await;
    let deadline_ms = i64::try_from(DELIVERY_DEADLINE_S * 1000).expect("ms");
    let ts = |v: &serde_json::Value| -> Option<i64> {
        let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
        i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
    };
    let (mut start_late, mut cmgs_late, mut deadlines) = (Vec::new(), Vec::new(), Vec::new());
    for (to, id) in &ids {
        let m = w.get(id).await;
        let Some(atts) = m["attempts"].as_array() else {
            continue;
        };
        let accepted = atts
            .iter()
            .find(|a| a["channel"] == "whatsapp" && a["outcome"] == "accepted")
            .and_then(|a| ts(&a["ended_at"]));
        let sms = atts
            .iter()
            .find(|a| a["channel"] == "sms" && a["purpose"] == "code")
            .and_then(|a| ts(&a["started_at"]));
        let (Some(acc), Some(sms)) = (accepted, sms) else {
            continue;
        };
        let deadline = acc + deadline_ms;
        deadlines.push(deadline);
        start_late.push(sms - deadline);
        if let Some(at) = at_modem.get(to) {
            cmgs_late.push(w.wall_ms(*at) - deadline);
        }
    }
    println!("delivery_deadline {DELIVERY_DEADLINE_S}s, {n} codes at once to offline phones:");
    println!(
        "  SMS attempt start - deadline          {}",
        lateness(&mut start_late)
    );
    println!(
        "  +CMGS at the modem - deadline         {}",
        lateness(&mut cmgs_late)
    );
    let spread =
        |v: &[i64]| v.iter().max().copied().unwrap_or(0) - v.iter().min().copied().unwrap_or(0);
    let cmgs: Vec<i64> = at_modem.values().map(|t| w.wall_ms(*t)).collect();
    println!(
        "  deadlines spread over {} ms; the {} SMS left the modem over {} ms",
        spread(&deadlines),
        cmgs.len(),
        spread(&cmgs)
    );
    ids.into_iter().map(|(_, id)| id).collect()
}

/// The bodies phase 3 posts: alternately a `delivered` for a wamid the outbox holds and a
/// `sent` for one it never issued; each with its signature.
fn webhook_bodies(known: &[String], n: usize) -> Vec<(Bytes, String)> {
    (0..n)
        .map(|i| {
            let (wamid, status) = match known.get((i / 2) % known.len().max(1)) {
                Some(w) if i % 2 == 0 => (w.clone(), "delivered"),
                _ => (
                    format!("wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSQkVOQ0g{i:08}AA=="),
                    "sent",
                ),
            };
            let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
                "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                "statuses": [{"id": wamid, "status": status, "timestamp": "1764355200",
                              "recipient_id": "919876543210"}]}}]}]})
            .to_string();
            let sig = otpgate::channel::whatsapp::webhook::sign(
                body.as_bytes(),
                &Secret::new(APP_SECRET),
            );
            (Bytes::from(body), sig)
        })
        .collect()
}

/// A bare hyper server on loopback that reads each POST's body and answers 200 "ok".
async fn bare_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

struct Row {
    rate: f64,
    p50: Duration,
    p99: Duration,
    not_ok: usize,
}

/// Posts every body to `url` from `callers` callers; rate and latency of the answers.
async fn post_all(
    http: &reqwest::Client,
    url: &str,
    bodies: &Arc<Vec<(Bytes, String)>>,
    callers: usize,
) -> Row {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (http, url, bodies) = (http.clone(), url.to_owned(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut not_ok = 0;
            for (body, sig) in bodies.iter().skip(c).step_by(callers) {
                let s = Instant::now();
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", sig)
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                lat.push(s.elapsed());
                if !ok {
                    not_ok += 1;
                }
            }
            (lat, not_ok)
        }));
    }
    let mut all = Vec::new();
    let mut not_ok = 0;
    for t in tasks {
        if let Ok((l, f)) = t.await {
            all.extend(l);
            not_ok += f;
        }
    }
    let rate = all.len() as f64 / t0.elapsed().as_secs_f64();
    Row {
        rate,
        p50: pct(&mut all, 0.5),
        p99: pct(&mut all, 0.99),
        not_ok,
    }
}

/// Phase 3: the webhook handler against a bare hyper server, same load, same run.
async fn webhook_throughput(w: &World, n: usize, ids: &[String]) {
    let known: Vec<String> = {
        let mut v: Vec<String> = w
            .sim
            .handle()
            .webhook_posts()
            .into_iter()
            .filter(|p| p.status == "sent")
            .map(|p| p.wamid)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let bodies = Arc::new(webhook_bodies(&known, n));
    let warm = Arc::new(webhook_bodies(&known, 400));
    let bare = format!("http://{}/", bare_server().await);
    let ours = format!("{}/webhooks/whatsapp", w.base);
    post_all(&w.http, &bare, &warm, CALLERS).await;
    post_all(&w.http, &ours, &warm, CALLERS).await;
    println!(
        "webhook POSTs ({n} per row, {CALLERS} callers; half `delivered` for {} known wamids, half `sent` for unknown ones)",
        known.len()
    );
    println!(
        "  {:<8} {:>10} {:>9} {:>9} {:>7}",
        "target", "POSTs/s", "p50", "p99", "not 200"
    );
    // Interleaved twice, the better of each kept, to damp the noise of a shared machine.
    let (mut best_bare, mut best_ours): (Option<Row>, Option<Row>) = (None, None);
    for _ in 0..2 {
        let b = post_all(&w.http, &bare, &bodies, CALLERS).await;
        if best_bare.as_ref().is_none_or(|x| b.rate > x.rate) {
            best_bare = Some(b);
        }
        let o = post_all(&w.http, &ours, &bodies, CALLERS).await;
        if best_ours.as_ref().is_none_or(|x| o.rate > x.rate) {
            best_ours = Some(o);
        }
    }
    let (Some(b), Some(o)) = (best_bare, best_ours) else {
        return;
    };
    for (name, r) in [("bare", &b), ("otpgate", &o)] {
        println!(
            "  {:<8} {:>10.0} {:>9} {:>9} {:>7}",
            name,
            r.rate,
            ms(r.p50),
            ms(r.p99),
            r.not_ok
        );
    }
    println!(
        "  ratio    {:>10.3} {:>9.2} {:>9.2}   (otpgate / bare: POSTs/s, p50, p99)",
        o.rate / b.rate,
        o.p50.as_secs_f64() / b.p50.as_secs_f64().max(1e-9),
        o.p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-9)
    );
    // Every POST was answered 200; were their receipts applied? The offline phones' codes
    // went by SMS; a `delivered` for their WhatsApp attempt makes them delivered. Each got
    // about 20 such POSTs; one still sent after 15 s lost every one of them.
    let t0 = Instant::now();
    let mut delivered = 0;
    while t0.elapsed() < Duration::from_secs(15) {
        delivered = 0;
        for id in ids {
            if w.get(id).await["status"] == "delivered" {
                delivered += 1;
            }
        }
        if delivered == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "  offline phones' codes marked delivered by those receipts: {delivered} of {} (after {:.1}s)",
        ids.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// `--only daemon|bare`: N webhooks from one caller, then every receipt retry runs out.
async fn cost_run(w: &World, target: &str, n: usize) {
    // A few codes whose wamids the outbox holds, as in phase 3.
    let numbers: Vec<String> = (0..10).map(|i| format!("+91987670090{i}")).collect();
    for to in &numbers {
        let _ = w.submit(to, "111111").await;
    }
    let t0 = Instant::now();
    while w
        .sim
        .handle()
        .webhook_posts()
        .iter()
        .filter(|p| p.status == "sent")
        .count()
        < numbers.len()
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let known: Vec<String> = w
        .sim
        .handle()
        .webhook_posts()
        .into_iter()
        .map(|p| p.wamid)
        .collect();
    let bodies = Arc::new(webhook_bodies(&known, n));
    let url = match target {
        "bare" => format!("http://{}/", bare_server().await),
        _ => format!("{}/webhooks/whatsapp", w.base),
    };
    let r = post_all(&w.http, &url, &bodies, 1).await;
    // Unknown wamids are looked at again for 8.2 s: let those lookups be counted too.
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "{target}: {n} webhooks, {:.0}/s, {} not 200",
        r.rate, r.not_ok
    );
}

async fn run(args: Args) {
    let w = World::start().await;
    if let Some(target) = args.only.as_deref() {
        cost_run(&w, target, args.webhooks).await;
        w.running.shutdown().await;
        return;
    }
    println!(
        "receipts on the simulators (webhooks signed and posted to the daemon; delivery_deadline {DELIVERY_DEADLINE_S}s)"
    );
    failed_to_sms(&w).await;
    straight_to_sms(&w).await;
    let ids = deadline_precision(&w).await;
    webhook_throughput(&w, args.webhooks, &ids).await;
    w.running.shutdown().await;
}
