//! RADIUS: Access-Request -> Access-Challenge latency (p50/p99) at 1 and 16 concurrent users
//! against a local slapd: the password bind, the phone lookup and the code's commit. In the
//! same run FreeRADIUS (Debian `freeradius` + `freeradius-ldap`) does the same PAP check (an
//! LDAP bind as the user) against the same slapd, as the baseline for the password leg.
//!
//! `cargo bench --bench radius` (`-- --requests N` per phase, default 400; `--quick` for a
//! smoke run). Each user has its own UDP socket and sends its next request when the previous
//! reply arrived (closed loop).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failure should stop loudly

#[path = "../tests/support/slapd.rs"]
mod slapd;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::clock::{SharedClock, SystemClock};
use otpgate::radius::packet;
use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
use otpgate::sim::config::{TestConfig, free_port};
use slapd::{ADMIN_DN, ADMIN_PW, BASE, Slapd};

const SECRET: &str = "bench-radius-shared-secret";
const USERS: usize = 16;
const PASSWORD: &str = "bench-pw";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize = if args.iter().any(|a| a == "--quick") {
        16
    } else {
        args.iter()
            .position(|a| a == "--requests")
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(400)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(requests));
}

fn user(i: usize) -> String {
    format!("bench{i:02}")
}

/// Polls `ok` every 20 ms for up to 30 s.
async fn settle(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} did not happen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One Access-Request with a Message-Authenticator; the reply's code and the time it took.
fn exchange(socket: &std::net::UdpSocket, to: SocketAddr, id: u8, user: &str) -> (u8, Duration) {
    try_exchange(socket, to, id, user).expect("a reply within the socket's timeout")
}

fn try_exchange(
    socket: &std::net::UdpSocket,
    to: SocketAddr,
    id: u8,
    user: &str,
) -> Option<(u8, Duration)> {
    let auth: [u8; 16] = rand::random();
    let hidden = packet::hide_password(PASSWORD.as_bytes(), SECRET.as_bytes(), &auth).unwrap();
    let attrs = [
        (packet::USER_NAME, user.as_bytes()),
        (packet::USER_PASSWORD, hidden.as_slice()),
    ];
    let req = packet::encode_request(id, &auth, &attrs, SECRET.as_bytes(), true).unwrap();
    let t = Instant::now();
    socket.send_to(&req, to).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    let took = t.elapsed();
    let reply = packet::Packet::decode(&buf[..n]).unwrap();
    assert_eq!(reply.identifier, id);
    Some((reply.code, took))
}

/// `concurrency` users, `total` requests among them; every reply must be `expect`.
async fn phase(to: SocketAddr, concurrency: usize, total: usize, expect: u8) -> Vec<Duration> {
    let per_user = total.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for u in 0..concurrency {
        tasks.push(tokio::task::spawn_blocking(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            (0..per_user)
                .map(|k| {
                    let (code, took) = exchange(&s, to, k as u8, &user(u));
                    assert_eq!(code, expect, "user {u} request {k}");
                    took
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, concurrency: usize, mut v: Vec<Duration>, wall: Duration) {
    v.sort();
    println!(
        "| {name} | {concurrency} | {} | {:.1} ms | {:.1} ms | {:.0}/s |",
        v.len(),
        pct(&v, 0.5).as_secs_f64() * 1e3,
        pct(&v, 0.99).as_secs_f64() * 1e3,
        v.len() as f64 / wall.as_secs_f64()
    );
}

/// FreeRADIUS with only the ldap module: authorize finds the user, authenticate binds as it.
fn freeradius(dir: &std::path::Path, ldap_port: u16, port: u16) -> Option<Child> {
    let bin = slapd::sbin("freeradius");
    if !bin.exists() || !std::path::Path::new("/usr/lib/freeradius/rlm_ldap.so").exists() {
        println!("(baseline skipped: install the Debian packages freeradius and freeradius-ldap)");
        return None;
    }
    let d = dir.display();
    let conf = format!(
        "prefix = /usr\nexec_prefix = /usr\nsysconfdir = /etc\nlocalstatedir = /var\nsbindir = /usr/sbin\n\
         logdir = {d}\nraddbdir = {d}\nradacctdir = {d}\nname = radiusd\nconfdir = {d}\nmodconfdir = {d}\n\
         run_dir = {d}\ndb_dir = {d}\nlibdir = /usr/lib/freeradius\npidfile = {d}/radiusd.pid\n\
         max_request_time = 30\ncleanup_delay = 5\nmax_requests = 16384\nhostname_lookups = no\n\
         log {{\n destination = stderr\n auth = no\n}}\n\
         security {{\n allow_core_dumps = no\n max_attributes = 200\n reject_delay = 0\n status_server = no\n}}\n\
         thread pool {{\n start_servers = 4\n max_servers = 16\n min_spare_servers = 2\n max_spare_servers = 8\n max_requests_per_server = 0\n}}\n\
         client local {{\n ipaddr = 127.0.0.1\n secret = {SECRET}\n}}\n\
         modules {{\n ldap {{\n  server = '127.0.0.1'\n  port = {ldap_port}\n  identity = '{ADMIN_DN}'\n  password = {ADMIN_PW}\n\
           base_dn = '{BASE}'\n  user {{\n   base_dn = \"${{..base_dn}}\"\n   filter = \"(uid=%{{User-Name}})\"\n   scope = 'sub'\n  }}\n\
           pool {{\n   start = 4\n   min = 4\n   max = 16\n   spare = 4\n   uses = 0\n   lifetime = 0\n   idle_timeout = 60\n  }}\n }}\n}}\n\
         server default {{\n listen {{\n  type = auth\n  ipaddr = 127.0.0.1\n  port = {port}\n }}\n\
          authorize {{\n  ldap\n  if ((ok || updated) && User-Password) {{\n   update control {{\n    &Auth-Type := ldap\n   }}\n  }}\n }}\n\
          authenticate {{\n  Auth-Type LDAP {{\n   ldap\n  }}\n }}\n}}\n"
    );
    std::fs::write(dir.join("radiusd.conf"), conf).unwrap();
    Some(
        Command::new(bin)
            .arg("-f")
            .arg("-d")
            .arg(dir)
            .args(["-l", "stdout"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn run(requests: usize) {
    let people: Vec<(String, String)> = (0..USERS)
        .map(|i| (user(i), format!("mobile: +9198765{i:02}111")))
        .collect();
    let rows: Vec<(&str, &str, &str)> = people
        .iter()
        .map(|(u, m)| (u.as_str(), PASSWORD, m.as_str()))
        .collect();
    let slapd = Slapd::spawn(&rows);
    settle("slapd listening", || slapd.listening().is_ok()).await;

    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    std::fs::write(dir.path().join("radius-secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("ldap-pw"), ADMIN_PW).unwrap();
    let radius_port = free_port().unwrap();
    let cfg_path = TestConfig::new(dir.path())
        .whatsapp_sim(&sim)
        .whatsapp_lines("max_rate = 1000")
        .policy("prenotify = false")
        .limits("per_recipient = \"1000000/1s\"")
        .log_level("error")
        .extra(&format!(
            "[radius]\nenabled = true\nlisten = [\"127.0.0.1:{radius_port}\"]\n\
             [[radius.clients]]\nname = \"bench\"\naddress = \"127.0.0.1\"\nsecret_file = \"{d}/radius-secret\"\n\
             [ldap]\nurl = \"ldap://127.0.0.1:{lp}\"\nstarttls = false\nallow_plain = true\n\
             bind_dn = \"{ADMIN_DN}\"\nbind_password_file = \"{d}/ldap-pw\"\nbase_dn = \"{BASE}\"\n\
             user_filter = \"(uid={{user}})\"\npool_size = 16\n",
            d = dir.path().display(),
            lp = slapd.port,
        ))
        .write()
        .unwrap();
    let cfg = otpgate::config::load(&otpgate::config::Sources {
        main: cfg_path,
        env: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let clock: SharedClock = Arc::new(SystemClock);
    let set = otpgate::daemon::build_channels(&cfg, &clock).await.unwrap();
    let running = otpgate::daemon::start(cfg, clock, set).await.unwrap();
    settle("WhatsApp usable", || {
        running.dispatcher.health().iter().all(|(_, h)| h.usable)
    })
    .await;

    let fr_dir = tempfile::tempdir().unwrap();
    let fr_port = free_port().unwrap();
    let mut fr = freeradius(fr_dir.path(), slapd.port, fr_port);

    println!("| server | users | requests | p50 | p99 | rate |");
    println!("|---|---|---|---|---|---|");
    let otpgate_addr: SocketAddr = ([127, 0, 0, 1], radius_port).into();
    let fr_addr: SocketAddr = ([127, 0, 0, 1], fr_port).into();
    if fr.is_some() {
        // Ready once it answers.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let t0 = Instant::now();
        while try_exchange(&s, fr_addr, 0, &user(0)).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "freeradius did not answer"
            );
        }
    }
    for concurrency in [1, USERS] {
        // A warm-up request per user (connections, pools), not counted.
        phase(
            otpgate_addr,
            concurrency,
            concurrency,
            packet::ACCESS_CHALLENGE,
        )
        .await;
        let t = Instant::now();
        let v = phase(
            otpgate_addr,
            concurrency,
            requests,
            packet::ACCESS_CHALLENGE,
        )
        .await;
        report("otpgate (bind + code)", concurrency, v, t.elapsed());
        if fr.is_some() {
            phase(fr_addr, concurrency, concurrency, packet::ACCESS_ACCEPT).await;
            let t = Instant::now();
            let v = phase(fr_addr, concurrency, requests, packet::ACCESS_ACCEPT).await;
            report("FreeRADIUS (bind only)", concurrency, v, t.elapsed());
        }
    }
    if let Some(c) = fr.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    running.shutdown().await;
    drop(slapd);
}
