//! RADIUS: Access-Request -> Access-Challenge latency (p50/p99) at 1 and 16 concurrent users
//! against a local slapd, the real `otpgate` binary doing the password bind, the phone lookup,
//! the code's commit and its hand-off to WhatsApp (the Cloud API simulator). In the same run
//! FreeRADIUS 3 (Debian `freeradius` + `freeradius-ldap`) does the same PAP check (search, then
//! an LDAP bind as the user) against the same slapd: the baseline for the password leg. Both
//! also answer a wrong password (the password leg alone: search, failed bind, Reject), which
//! is the like-for-like pair.
//!
//! `cargo bench --bench radius` (`-- --requests N` per phase, default 800; `--quick` for a
//! smoke run; `--strace` adds system calls per request for each server and for the slapd
//! behind it, counted by `strace -c -f` attached to the running process for a separate phase,
//! so the latency phases run untraced). Each user has its own UDP socket and sends its next
//! request when the previous reply arrived (closed loop). The phases alternate between the
//! two servers so a noisy neighbour hurts both alike; compare the ratios, not the times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failure should stop loudly

#[path = "../tests/support/slapd.rs"]
mod slapd;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use otpgate::radius::packet;
use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
use otpgate::sim::config::{TestConfig, free_port};
use slapd::{ADMIN_DN, ADMIN_PW, BASE, Slapd};

const SECRET: &str = "bench-radius-shared-secret";
const USERS: usize = 16;
const PASSWORD: &str = "bench-pw";
const WRONG: &str = "not-the-password";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize = if args.iter().any(|a| a == "--quick") {
        32
    } else {
        args.iter()
            .position(|a| a == "--requests")
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(800)
    };
    let trace = args.iter().any(|a| a == "--strace");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(requests, trace));
}

fn user(i: usize) -> String {
    format!("bench{i:02}")
}

/// One Access-Request with a Message-Authenticator; the reply's code and the time it took,
/// or `None` when no reply came within the socket's timeout.
fn exchange(
    socket: &std::net::UdpSocket,
    to: SocketAddr,
    id: u8,
    user: &str,
    password: &str,
) -> Option<(u8, Duration)> {
    let auth: [u8; 16] = rand::random();
    let hidden = packet::hide_password(password.as_bytes(), SECRET.as_bytes(), &auth).unwrap();
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

/// What a phase sends and the answer every request must get.
#[derive(Clone, Copy)]
struct Ask {
    password: &'static str,
    expect: u8,
}

/// `concurrency` users, `total` requests among them (at least one each).
async fn phase(to: SocketAddr, concurrency: usize, total: usize, ask: Ask) -> Vec<Duration> {
    let per_user = total.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for u in 0..concurrency {
        tasks.push(tokio::task::spawn_blocking(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            (0..per_user)
                .map(|k| {
                    let (code, took) = exchange(&s, to, k as u8, &user(u), ask.password)
                        .expect("a reply within 30 s");
                    assert_eq!(code, ask.expect, "user {u} request {k}");
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

/// p50 and p99 of one phase, in ms.
struct Figures {
    p50: f64,
    p99: f64,
}

fn report(name: &str, concurrency: usize, mut v: Vec<Duration>, wall: Duration) -> Figures {
    v.sort();
    let f = Figures {
        p50: pct(&v, 0.5).as_secs_f64() * 1e3,
        p99: pct(&v, 0.99).as_secs_f64() * 1e3,
    };
    println!(
        "| {name} | {concurrency} | {} | {:.2} ms | {:.2} ms | {:.0}/s |",
        v.len(),
        f.p50,
        f.p99,
        v.len() as f64 / wall.as_secs_f64()
    );
    f
}

/// FreeRADIUS with only the ldap module: authorize finds the user with the service account,
/// authenticate binds as it (FreeRADIUS's pool then binds back as the service account, as
/// otpgate's does before its next search).
fn freeradius(dir: &Path, ldap_port: u16, port: u16) -> Option<Child> {
    let bin = slapd::sbin("freeradius");
    if !bin.exists() || !Path::new("/usr/lib/freeradius/rlm_ldap.so").exists() {
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
         thread pool {{\n start_servers = 16\n max_servers = 16\n min_spare_servers = 2\n max_spare_servers = 16\n max_requests_per_server = 0\n}}\n\
         client local {{\n ipaddr = 127.0.0.1\n secret = {SECRET}\n require_message_authenticator = yes\n}}\n\
         modules {{\n ldap {{\n  server = '127.0.0.1'\n  port = {ldap_port}\n  identity = '{ADMIN_DN}'\n  password = {ADMIN_PW}\n\
           base_dn = '{BASE}'\n  user {{\n   base_dn = \"${{..base_dn}}\"\n   filter = \"(uid=%{{User-Name}})\"\n   scope = 'sub'\n  }}\n\
           pool {{\n   start = 16\n   min = 4\n   max = 16\n   spare = 16\n   uses = 0\n   lifetime = 0\n   idle_timeout = 60\n  }}\n }}\n}}\n\
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

/// Waits (up to 30 s) until `to` answers a right password with `expect`.
async fn answers(what: &str, to: SocketAddr, expect: u8) {
    let t0 = Instant::now();
    loop {
        let got = tokio::task::spawn_blocking(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            exchange(&s, to, 0, &user(0), PASSWORD).map(|(c, _)| c)
        })
        .await
        .unwrap();
        if got == Some(expect) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} did not answer {expect} (last: {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed when dropped, so a run that fails leaves nothing behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `strace -c -f` attached to running processes: system calls counted until [`Strace::calls`].
struct Strace {
    child: Reaped,
    out: tempfile::NamedTempFile,
}

impl Strace {
    fn attach(pid: u32) -> Strace {
        let out = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("strace")
            .args(["-c", "-f", "-o"])
            .arg(out.path())
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (Debian package strace)");
        Strace {
            child: Reaped(child),
            out,
        }
    }

    /// Detaches and returns the calls counted (the summary's "total" row).
    fn calls(mut self) -> u64 {
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        self.child.0.wait().unwrap();
        let text = std::fs::read_to_string(self.out.path()).unwrap();
        if std::env::var_os("RADIUS_BENCH_STRACE_TABLES").is_some() {
            eprintln!("{text}");
        }
        let total = text
            .lines()
            .find(|l| l.trim_end().ends_with("total"))
            .unwrap_or_else(|| panic!("no strace summary:\n{text}"));
        // "100.00  0.001234  3  4567  [errors]  total": calls is the fourth column.
        total.split_whitespace().nth(3).unwrap().parse().unwrap()
    }
}

/// System calls per request of `server` (pid) and of slapd while `n` requests run one at a
/// time; `settle` waits for work the server does after replying (the code's delivery).
async fn traced(
    server: u32,
    slapd: u32,
    to: SocketAddr,
    n: usize,
    ask: Ask,
    settle: impl AsyncFnOnce(),
) -> (f64, f64) {
    let s = Strace::attach(server);
    let l = Strace::attach(slapd);
    // strace attaches to every thread before it counts; a second covers that.
    tokio::time::sleep(Duration::from_secs(1)).await;
    phase(to, 1, n, ask).await;
    settle().await;
    let per = |c: u64| c as f64 / n as f64;
    (per(s.calls()), per(l.calls()))
}

async fn run(requests: usize, trace: bool) {
    let people: Vec<(String, String)> = (0..USERS)
        .map(|i| (user(i), format!("mobile: +9198765{i:02}111")))
        .collect();
    let rows: Vec<(&str, &str, &str)> = people
        .iter()
        .map(|(u, m)| (u.as_str(), PASSWORD, m.as_str()))
        .collect();
    let slapd = Slapd::spawn(&rows);
    let t0 = Instant::now();
    while slapd.listening().is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "slapd did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    std::fs::write(dir.path().join("radius-secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("ldap-pw"), ADMIN_PW).unwrap();
    let radius_port = free_port().unwrap();
    let cfg_path = TestConfig::new(dir.path())
        .free_port()
        .unwrap()
        .whatsapp_sim(&sim)
        .whatsapp_lines("max_rate = 1000")
        .policy("prenotify = false")
        // Thousands of sign-ins by 16 people in a minute: no limit may refuse one.
        .limits("per_recipient = \"1000000/1s\"\nper_user = \"1000000/1s\"\nper_ip = \"1000000/1s\"")
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
    // The real binary, as a NAS meets it: its own process, its own runtime.
    let otpgate = Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .arg("run")
        .arg("--config")
        .arg(&cfg_path)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Reaped)
        .unwrap();

    let fr_dir = tempfile::tempdir().unwrap();
    let fr_port = free_port().unwrap();
    let fr = freeradius(fr_dir.path(), slapd.port, fr_port).map(Reaped);

    let otpgate_addr: SocketAddr = ([127, 0, 0, 1], radius_port).into();
    let fr_addr: SocketAddr = ([127, 0, 0, 1], fr_port).into();
    // Ready once a sign-in is challenged (the directory and WhatsApp both usable).
    answers("otpgate", otpgate_addr, packet::ACCESS_CHALLENGE).await;
    if fr.is_some() {
        answers("freeradius", fr_addr, packet::ACCESS_ACCEPT).await;
    }

    let challenge = Ask {
        password: PASSWORD,
        expect: packet::ACCESS_CHALLENGE,
    };
    let accept = Ask {
        password: PASSWORD,
        expect: packet::ACCESS_ACCEPT,
    };
    let reject = Ask {
        password: WRONG,
        expect: packet::ACCESS_REJECT,
    };
    println!("| server (answer) | users | requests | p50 | p99 | rate |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for concurrency in [1, USERS] {
        let legs = [
            ("right password", challenge, accept),
            ("wrong password", reject, reject),
        ];
        for (leg, ours, theirs) in legs {
            // A warm-up request per user (connections, pools, caches), not counted.
            phase(otpgate_addr, concurrency, concurrency, ours).await;
            let t = Instant::now();
            let v = phase(otpgate_addr, concurrency, requests, ours).await;
            let name = if ours.expect == packet::ACCESS_CHALLENGE {
                "otpgate (bind + code: Challenge)"
            } else {
                "otpgate (failed bind: Reject)"
            };
            let o = report(name, concurrency, v, t.elapsed());
            if fr.is_some() {
                phase(fr_addr, concurrency, concurrency, theirs).await;
                let t = Instant::now();
                let v = phase(fr_addr, concurrency, requests, theirs).await;
                let name = if theirs.expect == packet::ACCESS_ACCEPT {
                    "FreeRADIUS (bind: Accept)"
                } else {
                    "FreeRADIUS (failed bind: Reject)"
                };
                let f = report(name, concurrency, v, t.elapsed());
                ratios.push((leg, concurrency, o.p50 / f.p50, o.p99 / f.p99));
            }
        }
    }
    if !ratios.is_empty() {
        println!("\n| otpgate / FreeRADIUS | users | p50 | p99 |\n|---|---|---|---|");
        for (leg, c, p50, p99) in ratios {
            println!("| {leg} | {c} | {p50:.2}x | {p99:.2}x |");
        }
    }

    if trace {
        let n = requests.min(400);
        let slapd_pid = slapd.pid();
        let (ours, theirs) = (otpgate.0.id(), fr.as_ref().map(|c| c.0.id()));
        let delivered = || sim.handle().delivered().len();
        println!(
            "\n| system calls per request ({n}, one user) | server | its slapd |\n|---|---|---|"
        );
        let before = delivered();
        let (s, l) = traced(ours, slapd_pid, otpgate_addr, n, challenge, async || {
            // The codes' hand-off to WhatsApp follows the replies: count it too, until the
            // simulator has seen nothing new for half a second.
            let mut seen = delivered();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = delivered();
                if now == seen {
                    break;
                }
                seen = now;
            }
        })
        .await;
        // A sign-in supersedes the same number's code still queued (as on the Verify API),
        // so one user's back-to-back sign-ins send fewer codes than challenges.
        let sent = delivered() - before;
        println!("| otpgate, right password (Challenge; {sent} codes sent) | {s:.1} | {l:.1} |");
        let (s, l) = traced(ours, slapd_pid, otpgate_addr, n, reject, async || {}).await;
        println!("| otpgate, wrong password (Reject) | {s:.1} | {l:.1} |");
        if let Some(pid) = theirs {
            let (s, l) = traced(pid, slapd_pid, fr_addr, n, accept, async || {}).await;
            println!("| FreeRADIUS, right password (Accept) | {s:.1} | {l:.1} |");
            let (s, l) = traced(pid, slapd_pid, fr_addr, n, reject, async || {}).await;
            println!("| FreeRADIUS, wrong password (Reject) | {s:.1} | {l:.1} |");
        }
    }
    drop((fr, otpgate, slapd));
}
