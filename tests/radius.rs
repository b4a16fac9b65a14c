//! The RADIUS front door against real peers, none of them ours: OpenLDAP's `slapd` as the
//! directory (started here in a temporary directory), FreeRADIUS's `radclient` as the NAS, the
//! real `otpgate` binary, the Cloud API simulator and the pty modem simulator. A few cases
//! send raw datagrams (from another source address, or the same bytes twice), which radclient
//! cannot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/slapd.rs"]
mod slapd;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, Launch, TestConfig, free_port, wait_for};
use otpgate::radius::packet::{self, Packet};
use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
use otpgate::sim::modem::{Profile, SimModem};
use slapd::{ADMIN_DN, ADMIN_PW, BASE, Setup, Slapd};

const SECRET: &str = "radius-shared-secret-for-tests";

/// The directory's people. eve is locked by an administrator (OpenLDAP's disabled account);
/// hank gets locked by the password policy after three wrong passwords.
const PEOPLE: &[(&str, &str, &str)] = &[
    ("alice", "alice-pw", "mobile: +919876543210"),
    ("bob", "bob-pw", ""),
    ("carol", "carol-pw", "mobile: call me maybe"),
    ("dave", "dave-pw", "telephoneNumber: +919876543211"),
    // The simulator's rule: a number whose third digit from the end is 0 is not on WhatsApp.
    ("frank", "frank-pw", "mobile: +919876543021"),
    (
        "eve",
        "eve-pw",
        "mobile: +919876543212\npwdAccountLockedTime: 000001010000Z",
    ),
    ("hank", "hank-pw", "mobile: +919876543213"),
];

/// Failed binds after which the directory locks an account.
const LOCKOUT_AFTER: u32 = 3;

/// The Cloud API simulator. No webhook in these configs, so "not on WhatsApp" must come back
/// synchronously.
async fn cloud_api() -> CloudApiSim {
    CloudApiSim::start(SimOptions {
        sync_not_on_whatsapp: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// slapd with [`PEOPLE`] and a lockout policy, listening.
async fn directory() -> Slapd {
    let slapd = Slapd::spawn_with(
        PEOPLE,
        Setup {
            lockout_after: Some(LOCKOUT_AFTER),
            ..Setup::default()
        },
    );
    wait_for("slapd to listen", async || slapd.listening()).await;
    slapd
}

struct Gate {
    d: Daemon,
    radius: u16,
    _dir: tempfile::TempDir,
}

async fn gateway(sim: &CloudApiSim, slapd: &Slapd, modem: Option<&Path>, extra: &str) -> Gate {
    let ldap = format!(
        "url = \"ldap://127.0.0.1:{}\"\nstarttls = false\nallow_plain = true\n",
        slapd.port
    );
    gateway_with(Some(sim), &ldap, modem, extra, &[]).await
}

/// A plain-LDAP gateway for `slapd`, without channels (no WhatsApp, no modem), with these
/// `OTPGATE__` environment overrides.
async fn gateway_env(slapd: &Slapd, env: &[(&str, &str)]) -> Gate {
    let ldap = format!(
        "url = \"ldap://127.0.0.1:{}\"\nstarttls = false\nallow_plain = true\n",
        slapd.port
    );
    gateway_with(None, &ldap, None, "", env).await
}

/// A gateway whose `[ldap]` section starts with `ldap` (URL and TLS settings).
async fn gateway_with(
    sim: Option<&CloudApiSim>,
    ldap: &str,
    modem: Option<&Path>,
    extra: &str,
    env: &[(&str, &str)],
) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for (f, v) in [("radius-secret", SECRET), ("ldap-pw", ADMIN_PW)] {
        std::fs::write(p.join(f), v).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let radius = free_port().unwrap();
    let mut cfg = TestConfig::new(p).free_port().unwrap();
    if let Some(sim) = sim {
        cfg = cfg.whatsapp_sim(sim);
    }
    let mut cfg = cfg
        .policy("prenotify = false\nwhatsapp_deadline = \"30s\"")
        .log_level("debug");
    if let Some(m) = modem {
        cfg = cfg.modem("modem0", m);
    }
    let cfg = cfg.extra(&format!(
        "[verify]\nmax_attempts = 3\n\
         [radius]\nenabled = true\nlisten = [\"127.0.0.1:{radius}\"]\n\
         [[radius.clients]]\nname = \"vpn\"\naddress = \"127.0.0.1/32\"\nsecret_file = \"{dir}/radius-secret\"\n\
         [ldap]\n{ldap}\
         bind_dn = \"{ADMIN_DN}\"\nbind_password_file = \"{dir}/ldap-pw\"\n\
         base_dn = \"{BASE}\"\nuser_filter = \"(uid={{user}})\"\n{extra}",
        dir = p.display(),
    ));
    cfg.write().unwrap();
    let mut launch = Launch::new(&cfg).rust_log("otpgate=debug");
    for (k, v) in env {
        launch = launch.env(k, *v);
    }
    let d = launch.ready().await;
    Gate {
        d,
        radius,
        _dir: dir,
    }
}

/// One reply as radclient printed it.
#[derive(Debug)]
struct Reply {
    code: String,
    attrs: Vec<(String, String)>,
}

impl Reply {
    fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one Access-Request with radclient (attributes in its syntax); `None` when no reply
/// came (radclient tries once and waits `wait` seconds).
async fn radclient(port: u16, attrs: String, wait: u32) -> Option<Reply> {
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Command::new("radclient")
            .args(["-x", "-r", "1", "-t", &wait.to_string()])
            .arg(format!("127.0.0.1:{port}"))
            .args(["auth", SECRET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("radclient (Debian package freeradius-utils; .ci/run installs it)");
        use std::io::Write;
        c.stdin.take().unwrap().write_all(attrs.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let code = lines
        .by_ref()
        .find_map(|l| l.trim().strip_prefix("Received "))?
        .split_whitespace()
        .next()?
        .to_string();
    let attrs = lines
        .filter_map(|l| l.trim().split_once(" = "))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    Some(Reply { code, attrs })
}

/// User-Name and User-Password (and State), with the Message-Authenticator radclient adds
/// when asked for one.
fn request(user: &str, password: &str, state: Option<&str>) -> String {
    let mut s = format!("User-Name = \"{user}\", User-Password = \"{password}\"");
    if let Some(st) = state {
        s.push_str(&format!(", State = {st}"));
    }
    s.push_str(", Message-Authenticator = 0x00");
    s
}

/// Codes the simulator delivered to `digits`, oldest first.
fn codes_to(sim: &CloudApiSim, digits: &str) -> Vec<String> {
    sim.handle()
        .delivered()
        .into_iter()
        .filter(|d| d.to == digits)
        .map(|d| d.params[0].clone())
        .collect()
}

async fn code_for(sim: &CloudApiSim, digits: &str, n: usize) -> String {
    wait_for(format!("code #{n} on WhatsApp to {digits}"), async || {
        codes_to(sim, digits).get(n - 1).cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_then_whatsapp_code_then_accept_and_wrong_codes_run_out() {
    let slapd = directory().await;
    let sim = cloud_api().await;
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let g = gateway(&sim, &slapd, Some(modem.path()), "").await;

    // Password right -> a challenge naming the channel and the number's end.
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .expect("a reply");
    assert_eq!(r.code, "Access-Challenge", "{r:?}");
    let msg = r.get("Reply-Message").unwrap();
    assert!(msg.contains("WhatsApp") && msg.contains("3210"), "{msg}");
    // The code's lifetime (default 5 min), counted from when it was stored.
    let timeout: u32 = r.get("Session-Timeout").unwrap().parse().unwrap();
    assert!((280..=300).contains(&timeout), "{timeout}");
    let state = r.get("State").unwrap().to_string();
    let code = code_for(&sim, "919876543210", 1).await;
    // The code as User-Password with the State -> Accept.
    let ok = radclient(g.radius, request("alice", &code, Some(&state)), 10)
        .await
        .unwrap();
    assert_eq!(ok.code, "Access-Accept", "{ok:?}");
    // The State is single use: the same answer again is refused.
    let again = radclient(g.radius, request("alice", &code, Some(&state)), 10)
        .await
        .unwrap();
    assert_eq!(again.code, "Access-Reject", "{again:?}");

    // A second sign-in: wrong codes leave the challenge open until max_attempts (3).
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    let mut state = r.get("State").unwrap().to_string();
    let code = code_for(&sim, "919876543210", 2).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in [2, 1] {
        let r = radclient(g.radius, request("alice", wrong, Some(&state)), 10)
            .await
            .unwrap();
        assert_eq!(r.code, "Access-Challenge", "{r:?}");
        assert!(
            r.get("Reply-Message")
                .unwrap()
                .contains(&format!("{left} attempt")),
            "{r:?}"
        );
        let next = r.get("State").unwrap().to_string();
        assert_ne!(next, state, "every challenge gets a fresh State");
        state = next;
    }
    let r = radclient(g.radius, request("alice", wrong, Some(&state)), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    assert_eq!(
        codes_to(&sim, "919876543210").len(),
        2,
        "one code per sign-in"
    );

    // Not on WhatsApp (the simulator's 131026) -> the same code goes by SMS.
    let r = radclient(g.radius, request("frank", "frank-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Challenge", "{r:?}");
    let state = r.get("State").unwrap().to_string();
    let sms = wait_for("the code by SMS", async || {
        modem
            .received()
            .into_iter()
            .find(|m| m.to.ends_with("9876543021"))
    })
    .await;
    let code: String = sms
        .text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap()
        .to_string();
    let ok = radclient(g.radius, request("frank", &code, Some(&state)), 10)
        .await
        .unwrap();
    assert_eq!(ok.code, "Access-Accept", "{ok:?}");

    // A directory's telephoneNumber serves when mobile is empty.
    let r = radclient(g.radius, request("dave", "dave-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Challenge", "{r:?}");
    code_for(&sim, "919876543211", 1).await;

    let metrics = common::http_client()
        .get(format!("{}/metrics", g.d.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("otpgate_radius_requests_total{result=\"accept\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("otpgate_ldap_up 1"), "{metrics}");
    let log = g.d.log();
    for secret in ["alice-pw", "frank-pw", "dave-pw", code.as_str()] {
        assert!(!log.contains(secret), "{secret} appeared in the log");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends `bytes` from `socket` and waits up to `wait` for one datagram back.
fn exchange(socket: &UdpSocket, port: u16, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(wait)).unwrap();
    socket.send_to(bytes, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

fn raw_request(id: u8, user: &str, password: &str, with_ma: bool) -> (Vec<u8>, [u8; 16]) {
    let auth: [u8; 16] = rand::random();
    let hidden = packet::hide_password(password.as_bytes(), SECRET.as_bytes(), &auth).unwrap();
    let attrs = [
        (packet::USER_NAME, user.as_bytes()),
        (packet::USER_PASSWORD, hidden.as_slice()),
    ];
    let bytes = packet::encode_request(id, &auth, &attrs, SECRET.as_bytes(), with_ma).unwrap();
    (bytes, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_drops_and_retransmissions() {
    let slapd = directory().await;
    let sim = cloud_api().await;
    let g = gateway(&sim, &slapd, None, "").await;

    // Wrong password -> Reject, and no code is sent.
    let r = radclient(g.radius, request("alice", "guess", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    // A locked (disabled) account, with its right password: Reject that says why, so the
    // user calls the help desk, and a warning that names the user and the reason.
    let r = radclient(g.radius, request("eve", "eve-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    assert!(
        r.get("Reply-Message").unwrap().contains("account locked"),
        "{r:?}"
    );
    g.d.wait_logged("the locked-account line", |l| {
        l.lines()
            .any(|l| l.contains("account locked") && l.contains("eve") && l.contains("WARN"))
    })
    .await;
    // Wrong passwords until the directory's policy locks the account: each one is only "wrong"
    // (no hint to a guesser), then even the right password is refused as locked.
    for _ in 0..LOCKOUT_AFTER {
        let r = radclient(g.radius, request("hank", "hank-guess", None), 10)
            .await
            .unwrap();
        assert_eq!(r.code, "Access-Reject", "{r:?}");
        assert_eq!(
            r.get("Reply-Message"),
            Some("Invalid user name or password"),
            "{r:?}"
        );
    }
    let r = radclient(g.radius, request("hank", "hank-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    assert!(
        r.get("Reply-Message").unwrap().contains("account locked"),
        "{r:?}"
    );
    // No phone -> Reject that says so, and a log line naming the user, not the password.
    let r = radclient(g.radius, request("bob", "bob-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    assert!(
        r.get("Reply-Message").unwrap().contains("No phone number"),
        "{r:?}"
    );
    g.d.wait_logged("the no-phone line", |l| {
        l.lines()
            .any(|l| l.contains("no phone number") && l.contains("bob"))
    })
    .await;
    // A malformed number -> Reject that says so.
    let r = radclient(g.radius, request("carol", "carol-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    assert!(
        r.get("Reply-Message").unwrap().contains("not valid"),
        "{r:?}"
    );
    // Without a Message-Authenticator: dropped, no reply at all.
    let plain = "User-Name = \"alice\", User-Password = \"alice-pw\"".to_string();
    assert!(radclient(g.radius, plain, 2).await.is_none());
    assert!(
        sim.handle().delivered().is_empty(),
        "no code was sent so far"
    );

    // An address that is no client: dropped (a correct packet from 127.0.0.2).
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    let (bytes, _) = raw_request(1, "alice", "alice-pw", true);
    assert_eq!(
        exchange(&stranger, g.radius, &bytes, Duration::from_secs(2)),
        None
    );
    // The wrong secret's Message-Authenticator: dropped.
    let nas = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut forged = bytes.clone();
    forged[30] ^= 1;
    assert_eq!(
        exchange(&nas, g.radius, &forged, Duration::from_secs(2)),
        None
    );

    // Status-Server (RFC 5997), as radclient sends it: Access-Accept.
    let port = g.radius;
    let status = tokio::task::spawn_blocking(move || {
        let mut c = Command::new("radclient")
            .args(["-x", "-r", "1", "-t", "5"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["status", SECRET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(b"Message-Authenticator = 0x00")
            .unwrap();
        c.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("Received Access-Accept"),
        "{status:?}"
    );

    // The same request twice: the same reply bytes, and one code.
    let (bytes, auth) = raw_request(42, "alice", "alice-pw", true);
    let first = exchange(&nas, g.radius, &bytes, Duration::from_secs(10)).unwrap();
    let second = exchange(&nas, g.radius, &bytes, Duration::from_secs(10)).unwrap();
    assert_eq!(first, second);
    let p = Packet::decode(&first).unwrap();
    assert_eq!(p.code, packet::ACCESS_CHALLENGE);
    assert_eq!(
        p.attributes[0].0,
        packet::MESSAGE_AUTHENTICATOR,
        "first in every reply"
    );
    assert!(packet::check_response_authenticator(
        &first,
        &auth,
        SECRET.as_bytes()
    ));
    let code = code_for(&sim, "919876543210", 1).await;

    // The State is bound to its user: presented by another, it is refused (and spent).
    let state = p
        .attributes
        .iter()
        .find(|(t, _)| *t == packet::STATE)
        .map(|(_, v)| format!("0x{}", hex(v)))
        .unwrap();
    let r = radclient(g.radius, request("dave", &code, Some(&state)), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    let r = radclient(g.radius, request("alice", &code, Some(&state)), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "a State is single use: {r:?}");

    // Two copies in one breath, the second arriving while the first waits on the directory:
    // whatever the timing, every reply is the same bytes and one code goes out.
    let (bytes, _) = raw_request(43, "dave", "dave-pw", true);
    nas.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    nas.send_to(&bytes, ("127.0.0.1", g.radius)).unwrap();
    nas.send_to(&bytes, ("127.0.0.1", g.radius)).unwrap();
    let mut buf = [0u8; 4096];
    let n = nas.recv(&mut buf).expect("a reply to one of the copies");
    let mut replies = vec![buf[..n].to_vec()];
    nas.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    while let Ok(n) = nas.recv(&mut buf) {
        replies.push(buf[..n].to_vec());
    }
    // The NAS retries later: the cached reply.
    let later = exchange(&nas, g.radius, &bytes, Duration::from_secs(10)).unwrap();
    assert!(replies.iter().all(|r| *r == later), "{replies:?}");
    assert_eq!(
        Packet::decode(&later).unwrap().code,
        packet::ACCESS_CHALLENGE
    );

    code_for(&sim, "919876543211", 1).await;
    // Whatever comes later, no second code went out for the retransmissions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(codes_to(&sim, "919876543210").len(), 1);
    assert_eq!(codes_to(&sim, "919876543211").len(), 1);

    let log = g.d.log();
    for pw in [
        "alice-pw", "bob-pw", "carol-pw", "eve-pw", "hank-pw", "guess",
    ] {
        assert!(!log.contains(pw), "a password appeared in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_code_then_directory_down_rejects_and_readyz_says_why() {
    let mut slapd = directory().await;
    let sim = cloud_api().await;
    let g = gateway(&sim, &slapd, None, "[otp]\ndefault_ttl = \"10s\"").await;
    let http = common::http_client();

    // A code used after its lifetime (the shortest allowed, 10 s) is refused.
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Challenge", "{r:?}");
    let state = r.get("State").unwrap().to_string();
    let code = code_for(&sim, "919876543210", 1).await;
    let end = tokio::time::Instant::now() + Duration::from_millis(10_500);
    wait_for("the code's lifetime to pass", async || {
        tokio::time::Instant::now() >= end
    })
    .await;
    let r = radclient(g.radius, request("alice", &code, Some(&state)), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    assert!(r.get("Reply-Message").unwrap().contains("expired"), "{r:?}");

    let (s, _) = common::fetch_json(http.get(format!("{}/readyz", g.d.base()))).await;
    assert_eq!(s, 200);

    // The directory restarts between two sign-ins: the pooled connections it closed are
    // replaced on the spot, and the sign-in does not notice.
    slapd.restart();
    wait_for("slapd to listen again", async || slapd.listening()).await;
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Challenge", "{r:?}");
    code_for(&sim, "919876543210", 2).await;

    slapd.stop();
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    assert!(
        r.get("Reply-Message").unwrap().contains("directory"),
        "{r:?}"
    );
    let (s, v) = common::fetch_json(http.get(format!("{}/readyz", g.d.base()))).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["problems"]
            .to_string()
            .contains("ldap: directory unreachable"),
        "{v}"
    );
    assert_eq!(
        sim.handle().delivered().len(),
        2,
        "no code without the directory"
    );

    // Back: sign-ins work again and /readyz says so.
    slapd.restart();
    wait_for("slapd to listen again", async || slapd.listening()).await;
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Challenge", "{r:?}");
    let (s, v) = common::fetch_json(http.get(format!("{}/readyz", g.d.base()))).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_over_ldaps_and_starttls_with_its_certificate_checked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = otpgate::sim::tls::TestPki::new().unwrap();
    let files = pki.write_files(dir.path()).unwrap();
    let slapd = Slapd::spawn_with(
        PEOPLE,
        Setup {
            tls: Some((&files.cert, &files.key)),
            lockout_after: Some(LOCKOUT_AFTER),
        },
    );
    wait_for("slapd to listen", async || slapd.listening()).await;
    let sim = cloud_api().await;
    let ca = format!("ca_file = \"{}\"\n", files.ca.display());
    let ldaps = format!("url = \"ldaps://127.0.0.1:{}\"\n", slapd.tls_port.unwrap());
    let starttls = format!("url = \"ldap://127.0.0.1:{}\"\n", slapd.port);
    for (n, (name, ldap)) in [
        ("ldaps", format!("{ldaps}{ca}")),
        ("StartTLS", format!("{starttls}{ca}")),
    ]
    .into_iter()
    .enumerate()
    {
        let n = n + 1;
        let g = gateway_with(Some(&sim), &ldap, None, "", &[]).await;
        let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
            .await
            .unwrap();
        assert_eq!(r.code, "Access-Challenge", "{name}: {r:?}");
        code_for(&sim, "919876543210", n).await;
    }
    // Without the directory's CA its certificate is refused: no sign-in, and /readyz says so.
    let g = gateway_with(Some(&sim), &ldaps, None, "", &[]).await;
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    let (s, v) =
        common::fetch_json(common::http_client().get(format!("{}/readyz", g.d.base()))).await;
    assert_eq!(s, 503, "{v}");
    assert!(v["problems"].to_string().contains("certificate"), "{v}");
    assert_eq!(codes_to(&sim, "919876543210").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otp_only_skips_the_password_and_failmode_decides_without_a_channel() {
    let slapd = directory().await;
    let sim = cloud_api().await;
    let ldap = format!(
        "url = \"ldap://127.0.0.1:{}\"\nstarttls = false\nallow_plain = true\n",
        slapd.port
    );
    // otp_only: the password was checked in front of us; the user alone is looked up.
    let g = gateway_with(
        Some(&sim),
        &ldap,
        None,
        "",
        &[("OTPGATE__RADIUS__MODE", "otp_only")],
    )
    .await;
    let r = radclient(g.radius, request("alice", "not-checked", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Challenge", "{r:?}");
    let r = radclient(g.radius, request("nobody", "x", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    drop(g);

    // No channel can deliver: secure (the default) rejects, safe accepts on the password.
    let g = gateway_env(&slapd, &[]).await;
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "{r:?}");
    drop(g);
    let g = gateway_env(&slapd, &[("OTPGATE__RADIUS__FAILMODE", "safe")]).await;
    let r = radclient(g.radius, request("alice", "wrong", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Reject", "the password still counts: {r:?}");
    let r = radclient(g.radius, request("alice", "alice-pw", None), 10)
        .await
        .unwrap();
    assert_eq!(r.code, "Access-Accept", "{r:?}");
    g.d.wait_logged("the loud failmode line", |l| {
        l.contains("accepted on the password alone")
    })
    .await;
}
