//! `otpgate demo` as a newcomer meets it: the README's marked examples run against it (so the
//! README cannot drift), and the demo is driven on a pseudo-terminal the way a person does
//! (printed curl lines, `outage`/`hang`/`ok`, Ctrl-C), then must have left nothing behind.
//! The curl lines run through the real `sh` and `curl`, as a reader would paste them.
#![cfg(feature = "simulators")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{BIN, fetch_json, http_client, wait_for};
use regex::Regex;
use serde_json::json;

/// The marker on the line before a README code block whose commands the test runs.
const MARKER: &str = "<!-- readme-test: runs against the demo -->";

/// A running `otpgate demo` with its own TMPDIR.
struct Demo {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    /// The pty's master side, when the demo runs on one.
    master: Option<std::fs::File>,
    tmp: tempfile::TempDir,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // A pty master reads EIO once the last slave closes: the end, like EOF.
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

impl Demo {
    /// Starts the demo on an ephemeral port; on a pty (stdin, stdout and stderr, as a
    /// terminal would) or with pipes (stdin closed at once, stdout and stderr apart).
    async fn start(on_pty: bool) -> Demo {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["demo", "--listen", "127.0.0.1:0"])
            .env("TMPDIR", tmp.path())
            .env_remove("RUST_LOG");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let mut master = None;
        let child = if on_pty {
            let pty = nix::pty::openpty(None, None).unwrap();
            let slave: OwnedFd = pty.slave;
            cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
                .stdout(Stdio::from(slave.try_clone().unwrap()))
                .stderr(Stdio::from(slave));
            // A session of its own with the pty as controlling terminal, so the VINTR byte
            // becomes a SIGINT to it, as in a terminal window.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap();
            // Our copies of the slave go with `cmd`, so the master sees the end when it exits.
            drop(cmd);
            let m = std::fs::File::from(pty.master);
            collect(m.try_clone().unwrap(), out.clone());
            master = Some(m);
            child
        } else {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            collect(child.stdout.take().unwrap(), out.clone());
            collect(child.stderr.take().unwrap(), err.clone());
            child
        };
        let d = Demo {
            child,
            out,
            err,
            master,
            tmp,
        };
        d.wait_printed("the banner", |o| o.contains("Ctrl-C stops."))
            .await;
        d
    }

    fn out(&self) -> String {
        self.out.lock().unwrap().replace('\r', "")
    }

    fn err(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    async fn wait_printed(&self, what: &str, pred: impl Fn(&str) -> bool) {
        wait_for(what, async || {
            let o = self.out();
            if pred(&o) {
                Ok(())
            } else {
                Err(format!("output:\n{o}\nstderr:\n{}", self.err()))
            }
        })
        .await
    }

    /// "127.0.0.1:PORT" from the banner.
    fn addr(&self) -> String {
        let re = Regex::new(r"running on http://(\S+)").unwrap();
        re.captures(&self.out()).unwrap()[1].to_string()
    }

    /// The client key from the banner.
    fn key(&self) -> String {
        let re = Regex::new(r"export KEY=(\S+)").unwrap();
        re.captures(&self.out()).unwrap()[1].to_string()
    }

    /// Types a line, as at the keyboard.
    fn type_line(&mut self, line: &str) {
        let m = self.master.as_mut().unwrap();
        m.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits for a code the phone view shows after `from` bytes of output, other than the
    /// ones in `sent` (codes the test sent itself may still be arriving).
    async fn code_on_phone_after(&self, from: usize, sent: &[String]) -> String {
        let re = Regex::new(r"\[phone \+\d+\] (?:WhatsApp: \*(\d+)\*|SMS: (\d+) is your)").unwrap();
        wait_for("a code on the demo's phone view", async || {
            let o = self.out();
            re.captures_iter(o.get(from..).unwrap_or(""))
                .map(|c| c.get(1).or(c.get(2)).unwrap().as_str().to_string())
                .find(|code| !sent.contains(code))
        })
        .await
    }

    async fn wait_exit(&mut self) -> Option<i32> {
        let child = &mut self.child;
        let out = self.out.clone();
        wait_for("the demo to exit", async || {
            match child.try_wait().unwrap() {
                Some(st) => Ok(st.code()),
                None => Err(format!("output:\n{}", out.lock().unwrap())),
            }
        })
        .await
    }

    /// Everything under the demo's TMPDIR (empty once it cleaned up).
    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command of a README block or of the banner, with where it came from.
struct Step {
    line: usize,
    cmd: String,
    /// The `# {...}` answer shown after it.
    expect: Option<String>,
}

/// The commands in the README's marked blocks (continuation lines joined).
fn readme_steps(readme: &str) -> Vec<Step> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != MARKER {
            i += 1;
            continue;
        }
        assert_eq!(
            lines[i + 1],
            "```sh",
            "README.md line {}: a marked block is ```sh",
            i + 2
        );
        i += 2;
        while lines[i] != "```" {
            let line = i + 1;
            let mut cmd = lines[i].trim().to_string();
            while cmd.ends_with('\\') {
                cmd.pop();
                i += 1;
                cmd.push(' ');
                cmd.push_str(lines[i].trim());
            }
            i += 1;
            if cmd.is_empty() {
                continue;
            }
            if let Some(c) = cmd.strip_prefix("# {") {
                let last = steps
                    .last_mut()
                    .expect("an answer comment follows a command");
                last.expect = Some(format!("{{{c}"));
                continue;
            }
            if cmd.starts_with('#') {
                continue;
            }
            assert!(
                cmd.starts_with("curl ") || cmd.starts_with("otpgate "),
                "README.md line {line}: a marked block holds only curl and otpgate commands: {cmd}"
            );
            steps.push(Step {
                line,
                cmd,
                expect: None,
            });
        }
        i += 1;
    }
    steps
}

/// Line numbers of curl commands in README code blocks that carry no [`MARKER`].
fn unmarked_curls(readme: &str) -> Vec<usize> {
    let (mut in_block, mut marked, mut prev) = (false, false, "");
    let mut found = Vec::new();
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            marked = !in_block && prev.trim() == MARKER;
            in_block = !in_block;
        } else if in_block && !marked && line.trim_start().starts_with("curl ") {
            found.push(i + 1);
        }
        prev = line;
    }
    found
}

/// Checks an answer against the README's `# {...}` comment: every `"key":"value"` shown must
/// be in the answer, equal unless the value holds `...`; `"key":[` only needs the key.
fn check_expected(step: &Step, answer: &str) {
    let Some(expect) = &step.expect else { return };
    let v: serde_json::Value = serde_json::from_str(answer).unwrap_or_else(|e| {
        panic!(
            "README.md line {}: `{}` answered no JSON ({e}): {answer}",
            step.line, step.cmd
        )
    });
    let pairs = Regex::new(r#""(\w+)":(?:"([^"]*)"|\[)"#).unwrap();
    for c in pairs.captures_iter(expect) {
        let key = &c[1];
        let got = &v[key];
        assert!(
            !got.is_null(),
            "README.md line {}: `{}` answered without {key:?}: {answer}",
            step.line,
            step.cmd
        );
        if let Some(want) = c.get(2).map(|m| m.as_str()).filter(|w| !w.contains("...")) {
            assert_eq!(
                got.as_str(),
                Some(want),
                "README.md line {}: `{}` answered {answer}",
                step.line,
                step.cmd
            );
        }
    }
}

/// Runs one command through `sh`, with `otpgate` resolving to the binary under test and
/// `curl` failing on an HTTP error (as `-s` alone would not). Returns its stdout.
fn run_sh(step: &Step, cmd: &str, key: &str) -> String {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cmd = match cmd.strip_prefix("curl ") {
        Some(rest) => format!("curl --fail-with-body --max-time 60 {rest}"),
        None => cmd.to_string(),
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("KEY", key)
        .env("PATH", path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running sh (and curl, which the README uses): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README.md line {}: `{}` failed ({}) as run: {cmd}\nstdout: {stdout}\nstderr: {}",
        step.line,
        step.cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What earlier answers and the phone view fill into placeholders.
#[derive(Default)]
struct Seen {
    msg: Option<String>,
    ver: Option<String>,
    /// Output length before the verification was asked for.
    ver_at: usize,
    /// The codes the commands so far sent themselves.
    sent: Vec<String>,
    codes: Vec<String>,
}

impl Seen {
    /// Takes the id from `answer` (of a command started when the output was `before` long).
    fn note(&mut self, answer: &str, before: usize) {
        let id = Regex::new(r#""id":"((msg|ver)_[0-9a-f]+)""#).unwrap();
        if let Some(c) = id.captures(answer) {
            if &c[2] == "msg" {
                self.msg = Some(c[1].to_string());
            } else {
                self.ver = Some(c[1].to_string());
                self.ver_at = before;
            }
        }
    }

    /// `cmd` with its placeholders filled in: `msg` and `ver` (placeholder, text before the
    /// id) and `"CODE"`, the code the phone view showed for the verification.
    async fn fill(
        &mut self,
        cmd: &str,
        demo: &Demo,
        msg: (&str, &str),
        ver: (&str, &str),
    ) -> String {
        let mut cmd = cmd.to_string();
        if let Some(id) = &self.msg {
            cmd = cmd.replace(msg.0, &format!("{}{id}", msg.1));
        }
        if let Some(id) = &self.ver {
            cmd = cmd.replace(ver.0, &format!("{}{id}", ver.1));
        }
        if cmd.contains("\"CODE\"") {
            let code = demo.code_on_phone_after(self.ver_at, &self.sent).await;
            cmd = cmd.replace("\"CODE\"", &format!("\"{code}\""));
            self.codes.push(code);
        }
        let own = Regex::new(r#""code":"(\d+)"|--code (\d+)|code is (\d+)"#).unwrap();
        for c in own.captures_iter(&cmd) {
            let m = c.get(1).or(c.get(2)).or(c.get(3)).unwrap();
            self.sent.push(m.as_str().to_string());
        }
        cmd
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_examples_run_against_the_demo() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let steps = readme_steps(&readme);
    assert!(
        steps.iter().any(|s| s.cmd.contains("/check")) && steps.len() >= 8,
        "the README's marked blocks hold the examples (found {})",
        steps.len()
    );
    let unmarked = unmarked_curls(&readme);
    assert!(
        unmarked.is_empty(),
        "README.md lines {unmarked:?}: curl lines outside a block marked `{MARKER}` would go untested"
    );
    let demo = Demo::start(false).await;
    let (addr, key) = (demo.addr(), demo.key());
    let mut seen = Seen::default();
    for step in &steps {
        let cmd = step.cmd.replace("127.0.0.1:8025", &addr);
        let before = demo.out().len();
        let cmd = seen
            .fill(&cmd, &demo, ("msg_...", ""), ("ver_...", ""))
            .await;
        let answer = tokio::task::block_in_place(|| run_sh(step, &cmd, &key));
        check_expected(step, &answer);
        seen.note(&answer, before);
    }
    // The phone view may show codes; the daemon's log (stderr) never does. The timestamp
    // column goes first: its microseconds could spell any six digits.
    let log: String = demo
        .err()
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("\n");
    let mut codes = seen.codes.clone();
    codes.extend(["482913", "777111", "482914", "482915"].map(String::from));
    for code in &codes {
        // The SMS for a number without WhatsApp follows the simulator's `failed` webhook, a
        // second or so after its command returned.
        demo.wait_printed(&format!("the phone view shows {code}"), |o| {
            o.contains(code.as_str())
        })
        .await;
        assert!(
            !log.contains(code.as_str()),
            "a code in the daemon's log:\n{log}"
        );
    }
}

/// The banner's curl lines (continuations joined), in order.
fn banner_curls(out: &str) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        let mut cmd = l.trim().to_string();
        if !cmd.starts_with("curl ") {
            continue;
        }
        while cmd.ends_with('\\') {
            cmd.pop();
            cmd.push_str(lines.next().unwrap_or("").trim());
        }
        cmds.push(cmd);
    }
    cmds
}

#[tokio::test(flavor = "multi_thread")]
async fn two_commands_for_real_on_a_terminal() {
    let mut demo = Demo::start(true).await;
    let (addr, key) = (demo.addr(), demo.key());
    let curls = banner_curls(&demo.out());
    assert!(
        curls.len() >= 5,
        "the banner prints its curl lines:\n{}",
        demo.out()
    );
    let mut seen = Seen::default();
    for (i, c) in curls.iter().enumerate() {
        let step = Step {
            line: i,
            cmd: c.clone(),
            expect: None,
        };
        let before = demo.out().len();
        let msg = ("messages/ID", "messages/");
        let cmd = seen
            .fill(c, &demo, msg, ("verifications/ID", "verifications/"))
            .await;
        let answer = tokio::task::block_in_place(|| run_sh(&step, &cmd, &key));
        if cmd.contains("/check") {
            assert!(answer.contains("\"approved\""), "{cmd}: {answer}");
        }
        seen.note(&answer, before);
    }
    // The phone view shows what each handset got: a WhatsApp code where WhatsApp took it, the
    // SMS text (code included) where the number is not on WhatsApp, and no WhatsApp there.
    demo.wait_printed("the phone view", |o| {
        o.contains("[phone +919876543210] WhatsApp: *482913*")
            && o.contains("[phone +919876500042] SMS: 777111 is your")
    })
    .await;
    assert!(
        !demo.out().contains("[phone +919876500042] WhatsApp"),
        "{}",
        demo.out()
    );
    // The SMS came the way Meta tells: a signed `failed` status (131026) the daemon took.
    assert!(
        demo.out().contains(
            "[cloud api] status \"failed\" (131026) for +919876500042 posted to the webhook (try 1): HTTP 200"
        ),
        "{}",
        demo.out()
    );

    let client = http_client();
    let send = async |code: &str| {
        let (s, v) = fetch_json(
            client
                .post(format!("http://{addr}/v1/messages?wait=20s"))
                .bearer_auth(&key)
                .json(&json!({"to": "+919876543210", "code": code})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        v["channel"].as_str().unwrap_or_default().to_string()
    };
    // The daemon holds a pooled connection from the sends above: the outage must cut it.
    demo.type_line("outage");
    demo.wait_printed("outage", |o| o.contains("WhatsApp is unreachable"))
        .await;
    assert_eq!(send("555001").await, "sms", "{}", demo.out());
    demo.type_line("ok");
    demo.wait_printed("ok", |o| o.contains("WhatsApp healthy"))
        .await;
    assert_eq!(send("555002").await, "whatsapp", "{}", demo.out());
    demo.type_line("hang");
    demo.wait_printed("hang", |o| o.contains("never answers"))
        .await;
    assert_eq!(send("555003").await, "sms", "{}", demo.out());

    // Ctrl-C, as typed: the terminal turns the byte into SIGINT.
    demo.master.as_mut().unwrap().write_all(&[0x03]).unwrap();
    assert_eq!(demo.wait_exit().await, Some(0), "{}", demo.out());
    assert!(demo.out().contains("stopped; removed"), "{}", demo.out());
    assert_eq!(demo.leftovers(), Vec::<PathBuf>::new(), "{}", demo.out());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_demo_and_removes_its_files() {
    let mut demo = Demo::start(false).await;
    assert!(
        !demo.leftovers().is_empty(),
        "the demo has temporary files while it runs"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(demo.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(demo.wait_exit().await, Some(0), "{}", demo.err());
    assert_eq!(demo.leftovers(), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_named_once_with_the_way_out() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--listen", &addr])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("otpgate:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(line.matches(addr.as_str()).count(), 1, "{line}");
    assert_eq!(line.matches("in use").count(), 1, "{line}");
    assert!(line.contains("--listen"), "{line}");
}
