//! The systemd integration of the real binary: a Unix datagram socket stands in for
//! systemd's notify socket, and `otpgate run` talks to it as it would under the unit.
//! Timeouts are hang guards only; nothing here asserts speed.

#![cfg(feature = "simulators")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");
const KEY: &str = "systemd-test-key-0123456789";
/// Hang guard for anything the daemon should do promptly.
const GUARD: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A minimal valid config: one client, the store in `dir`, WhatsApp pointing at a port where
/// nothing listens (so messages are accepted and then fail over time, when the build wires the
/// channel).
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let token = dir.join("wa-token");
    std::fs::write(&token, "EAAtoken-not-for-logs\n").unwrap();
    let hash = hex::encode(otpgate::api::auth::sha256(KEY));
    let main = dir.join("otpgate.toml");
    std::fs::write(
        &main,
        format!(
            r#"[server]
listen = ["127.0.0.1:{port}"]
[store]
path = "{db}"
[otp]
default_country = "IN"
org = "ACME"
[whatsapp]
enabled = true
api_base = "https://127.0.0.1:9/v24.0"
phone_number_id = "1234"
template = "otp"
token_file = "{token}"
timeout = "1s"
[[clients]]
name = "idp"
key_sha256 = "{hash}"
"#,
            db = dir.join("otpgate.db").display(),
            token = token.display(),
        ),
    )
    .unwrap();
    main
}

/// `otpgate run` under a fake systemd.
struct Daemon {
    child: Child,
    notify: UnixDatagram,
    logs: Arc<Mutex<Vec<String>>>,
    port: u16,
    status_file: PathBuf,
}

impl Daemon {
    /// Starts the daemon on the config in `dir`; `watchdog` sets WATCHDOG_USEC.
    fn spawn(dir: &Path, port: u16, watchdog: Option<Duration>, tag: &str) -> Daemon {
        let sock_path = dir.join(format!("notify-{tag}.sock"));
        let _ = std::fs::remove_file(&sock_path);
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        let status_file = dir.join("reload.status");
        let mut cmd = Command::new("sh");
        // sd_notify only honours WATCHDOG_USEC when WATCHDOG_PID is the daemon's own pid,
        // which is known only once it runs: the shell exports its pid and execs in place.
        cmd.arg("-c")
            .arg(r#"export WATCHDOG_PID=$$; exec "$0" run --config "$1""#)
            .arg(BIN)
            .arg(dir.join("otpgate.toml"))
            .env("NOTIFY_SOCKET", &sock_path)
            .env("OTPGATE_RELOAD_STATUS", &status_file)
            .env("RUST_LOG", "info")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(w) = watchdog {
            cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            notify,
            logs,
            port,
            status_file,
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.pid()), s).unwrap();
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The next datagram, or None after `within`.
    fn recv(&self, within: Duration) -> Option<String> {
        self.notify
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.notify.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Datagrams up to and including the first one `pred` accepts.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + GUARD;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(d) = self.recv(deadline - Instant::now()) {
                let done = pred(&d);
                seen.push(d);
                if done {
                    return seen;
                }
            }
        }
        panic!(
            "no {what} from the daemon; datagrams: {seen:?}\nlogs:\n{}",
            self.logs()
        );
    }

    /// Every datagram arriving within `window`.
    fn collect(&self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Some(d) = self.recv(left) {
                seen.push(d);
            }
        }
        seen
    }

    fn wait_ready(&self) -> Vec<String> {
        self.wait_for("READY=1", |d| d.lines().any(|l| l == "READY=1"))
    }

    /// Waits for the exit (hang guard) and returns its code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + GUARD;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not exit; logs:\n{}", self.logs());
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        http(self.port, method, path, key, body)
    }

    /// `otpgate reload` against this daemon: exit code and stdout.
    fn reload_command(&self) -> (Option<i32>, String) {
        let out = Command::new(BIN)
            .arg("reload")
            .arg("--pid")
            .arg(self.pid().to_string())
            .arg("--status-file")
            .arg(&self.status_file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; status code and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    let body = body.unwrap_or("");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn has_line(datagrams: &[String], line: &str) -> bool {
    datagrams.iter().any(|d| d.lines().any(|l| l == line))
}

fn has_prefix(datagrams: &[String], prefix: &str) -> bool {
    datagrams
        .iter()
        .any(|d| d.lines().any(|l| l.starts_with(prefix)))
}

#[test]
fn ready_only_once_listening_with_status_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    let mut d = Daemon::spawn(dir.path(), port, None, "ready");
    let seen = d.wait_ready();
    // Right after READY, without retrying: the listener must already accept.
    let conn = TcpStream::connect(("127.0.0.1", port));
    assert!(
        conn.is_ok(),
        "READY=1 before the listener accepted: {conn:?}"
    );
    assert!(
        has_prefix(&seen, "STATUS="),
        "no STATUS= with READY: {seen:?}"
    );
    assert!(
        !has_line(&seen, "WATCHDOG=1"),
        "pinged without WATCHDOG_USEC"
    );
    assert_eq!(d.http("GET", "/healthz", None, None).0, 200);

    d.signal(Signal::SIGTERM);
    let seen = d.wait_for("STOPPING=1", |d| d.lines().any(|l| l == "STOPPING=1"));
    assert!(has_line(&seen, "STOPPING=1"));
    assert_eq!(d.wait_exit(), Some(0), "logs:\n{}", d.logs());
}

#[test]
fn watchdog_pings_stop_while_the_store_is_locked_and_resume_after() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    let d = Daemon::spawn(dir.path(), port, Some(Duration::from_secs(2)), "wd");
    d.wait_ready();
    d.wait_for("a first WATCHDOG=1", |d| {
        d.lines().any(|l| l == "WATCHDOG=1")
    });
    d.wait_for("a second WATCHDOG=1", |d| {
        d.lines().any(|l| l == "WATCHDOG=1")
    });

    // A realistic wedge: another process holds the database's write lock, so neither the
    // dispatcher's claims nor the watchdog's store probe can write.
    let conn = rusqlite::Connection::open(dir.path().join("otpgate.db")).unwrap();
    conn.busy_timeout(GUARD).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // A probe that completed just before the lock may still ping; after one tick (1 s, its
    // timeout) none can. Skip a grace period, then watch for a while.
    d.collect(Duration::from_millis(2500));
    let wedged = d.collect(Duration::from_secs(5));
    assert!(
        !has_line(&wedged, "WATCHDOG=1"),
        "pinged while the store was locked: {wedged:?}"
    );

    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    d.wait_for("WATCHDOG=1 after the lock was released", |d| {
        d.lines().any(|l| l == "WATCHDOG=1")
    });
}

#[test]
fn sighup_reloads_with_reloading_and_monotonic_usec_in_one_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let main = write_config(dir.path(), port);
    let d = Daemon::spawn(dir.path(), port, None, "hup");
    d.wait_ready();

    d.signal(Signal::SIGHUP);
    let seen = d.wait_for("RELOADING=1", |d| d.lines().any(|l| l == "RELOADING=1"));
    let reloading = seen.last().unwrap();
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "RELOADING=1 without MONOTONIC_USEC in the same datagram: {reloading:?}"
    );
    let after = d.wait_ready();
    assert!(
        has_prefix(&after, "STATUS="),
        "no STATUS after reload: {after:?}"
    );

    // The same through `otpgate reload` (what ExecReload runs): it waits for the verdict.
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, text.replace("org = \"ACME\"", "org = \"ACME Two\"")).unwrap();
    let (code, out) = d.reload_command();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("reloaded: configuration applied"), "{out}");
    let status = otpgate::daemon::ReloadStatus::read(&d.status_file).unwrap();
    assert_eq!((status.generation, status.result.as_str()), (2, "applied"));
    assert_eq!(status.pid, u32::try_from(d.pid()).unwrap());

    // A key that only a restart can change: applied otherwise, and said so; still exit 0.
    let text = std::fs::read_to_string(&main).unwrap();
    let other = free_port();
    std::fs::write(
        &main,
        text.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{other}")),
    )
    .unwrap();
    let (code, out) = d.reload_command();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("needs a restart: server.listen"), "{out}");
    assert_eq!(
        d.http("GET", "/healthz", None, None).0,
        200,
        "still on the old port"
    );
}

#[test]
fn reload_command_without_a_daemon_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("reload")
        .arg("--status-file")
        .arg(dir.path().join("reload.status"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no daemon pid"), "{err}");
}

#[test]
fn invalid_config_on_reload_is_rejected_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let main = write_config(dir.path(), port);
    let mut d = Daemon::spawn(dir.path(), port, None, "bad");
    d.wait_ready();
    // The key works: a missing message is 404, not 401.
    assert_eq!(d.http("GET", "/v1/messages/nope", Some(KEY), None).0, 404);
    assert_eq!(
        d.http(
            "GET",
            "/v1/messages/nope",
            Some("wrong-key-123456789"),
            None
        )
        .0,
        401
    );

    std::fs::write(&main, "this is [not toml\n[server]\nlisten = 7\n").unwrap();
    let (code, out) = d.reload_command();
    assert_eq!(code, Some(1), "a rejected reload must fail: {out}");
    assert!(
        out.contains("rejected: the previous configuration stays in force"),
        "{out}"
    );
    // It came back READY (still serving) after RELOADING.
    let seen = d.wait_ready();
    assert!(has_line(&seen, "RELOADING=1"), "{seen:?}");

    assert_eq!(d.http("GET", "/healthz", None, None).0, 200);
    assert_eq!(
        d.http("GET", "/v1/messages/nope", Some(KEY), None).0,
        404,
        "the old config's client key stopped working"
    );
    let deadline = Instant::now() + GUARD;
    while !d
        .logs()
        .contains("invalid configuration; the previous configuration stays in force")
    {
        assert!(
            Instant::now() < deadline,
            "rejection not logged:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !d.logs().contains("EAAtoken"),
        "the token reached a log line"
    );

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
}

#[test]
fn sigterm_drains_and_accepted_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    let mut d = Daemon::spawn(dir.path(), port, None, "term1");
    d.wait_ready();

    let mut ids = Vec::new();
    for n in 0..3 {
        let body = format!(r#"{{"to": "+91 98765 4321{n}", "code": "12345{n}"}}"#);
        let (code, resp) = d.http("POST", "/v1/messages", Some(KEY), Some(&body));
        if code == 503 && resp.contains("no_channel") {
            // This build wires no channel (daemon::build_channels), so nothing can be
            // accepted; the drain and exit are still checked below.
            eprintln!("no channel in this build: the durability half of this test is skipped");
            break;
        }
        assert_eq!(code, 202, "{resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }

    d.signal(Signal::SIGTERM);
    d.wait_for("STOPPING=1", |d| d.lines().any(|l| l == "STOPPING=1"));
    assert_eq!(d.wait_exit(), Some(0), "logs:\n{}", d.logs());
    drop(d);

    let mut d = Daemon::spawn(dir.path(), port, None, "term2");
    d.wait_ready();
    for id in &ids {
        let (code, body) = d.http("GET", &format!("/v1/messages/{id}"), Some(KEY), None);
        assert_eq!(code, 200, "message {id} lost across the restart: {body}");
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
}
