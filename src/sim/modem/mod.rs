//! A GSM modem on a real pseudo-terminal, for tests, benchmarks and `otpgate demo`.
//!
//! [`SimModem::start`] opens a pty pair, puts the slave in raw mode and runs the modem on the
//! master side in its own thread (with a private current-thread tokio runtime, so it works from
//! sync code and from any runtime). [`SimModem::path`] is a symlink to the slave, standing in for
//! a stable `/dev/serial/by-id` path; [`SimModem::vanish`] / [`SimModem::reappear`] imitate an
//! unplug and a USB re-enumeration. Everything the modem does can be scripted while it runs.
//! The decoded text of a submit is kept for the test to inspect but never logged.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::channel::sms::pdu;
use crate::clock::{Clock, SystemClock};

mod engine;
use engine::{boot_banner, run};

/// Why the simulator could not start or re-appear.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Creating the pty pair or setting it up failed.
    #[error("pty: {0}")]
    Pty(#[from] nix::Error),
    /// Creating the temp dir, the symlink or the thread failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Which real modem the simulator imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// Quectel EC25: "RDY" on boot, +QIND URCs.
    Quectel,
    /// Huawei E3372 (stick mode): ^RSSI/^MODE noise until AT^CURC=0, "COMMAND NOT SUPPORT".
    Huawei,
}

/// The identity and SIM of a simulated modem.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Vendor behaviour.
    pub vendor: Vendor,
    /// AT+CGMI answer.
    pub manufacturer: String,
    /// AT+CGMM answer.
    pub model: String,
    /// AT+CGMR answer.
    pub firmware: String,
    /// AT+CGSN answer.
    pub imei: String,
    /// AT+CIMI answer.
    pub imsi: String,
    /// AT+COPS? operator name.
    pub operator: String,
    /// The SIM's SMSC ("" = none stored).
    pub smsc: String,
    /// The SIM PIN, when the SIM asks for one.
    pub pin: Option<String>,
    /// Whether a SIM is inserted.
    pub sim_present: bool,
    /// AT+CSQ rssi (0-31, 99 unknown).
    pub rssi: u8,
}

impl Profile {
    /// A Quectel EC25-like modem.
    pub fn quectel() -> Profile {
        Profile {
            vendor: Vendor::Quectel,
            manufacturer: "Quectel".into(),
            model: "EC25".into(),
            firmware: "EC25EFAR06A06M4G".into(),
            imei: "867698040000001".into(),
            imsi: "001010000000001".into(),
            operator: "Sim Operator".into(),
            smsc: "+10000000000".into(),
            pin: None,
            sim_present: true,
            rssi: 21,
        }
    }

    /// A Huawei E3372-like modem.
    pub fn huawei() -> Profile {
        Profile {
            vendor: Vendor::Huawei,
            manufacturer: "huawei".into(),
            model: "E3372".into(),
            firmware: "22.315.01.00.00".into(),
            imei: "861821030000002".into(),
            imsi: "001010000000002".into(),
            operator: "Sim Operator".into(),
            smsc: "+10000000000".into(),
            pin: None,
            sim_present: true,
            rssi: 18,
        }
    }

    /// The same profile with a SIM that asks for `pin`.
    pub fn with_pin(mut self, pin: &str) -> Profile {
        self.pin = Some(pin.to_string());
        self
    }

    /// The same profile with no SIM inserted.
    pub fn without_sim(mut self) -> Profile {
        self.sim_present = false;
        self
    }

    /// The same profile with another SMSC stored on the SIM ("" = none).
    pub fn with_smsc(mut self, smsc: &str) -> Profile {
        self.smsc = smsc.to_string();
        self
    }
}

/// One SMS as the simulated network saw it: a single part, or a reassembled long message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Destination as decoded from TP-DA.
    pub to: String,
    /// The text (all parts joined for a logical message).
    pub text: String,
    /// Number of parts this record covers (1 for a part record).
    pub parts: usize,
    /// Concatenation (reference, total, seq) of a part; for a logical message seq is the total.
    pub concat: Option<(u16, u8, u8)>,
    /// How long the simulated SMSC keeps the SMS, counted from its receipt: a relative TP-VP
    /// as is, an absolute one as the time left until it (zero when it already passed).
    pub validity: Option<Duration>,
    /// TP-VP exactly as decoded (format and value), when present.
    pub vp: Option<pdu::Validity>,
    /// TP-SRR: a status report was requested.
    pub status_report: bool,
    /// SMSC given in the PDU (None = the SIM's).
    pub smsc: Option<String>,
    /// Message reference answered in +CMGS (the last part's for a logical message).
    pub mr: u8,
    /// Whether the submit used UCS-2.
    pub ucs2: bool,
    /// When the simulator took the PDU (the last part's, for a logical message): the moment
    /// the SMS left the gateway, for latency benchmarks.
    pub at: std::time::Instant,
}

/// How the simulator stops answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hang {
    /// Answers normally.
    No,
    /// Ignores everything but ATZ / AT+CFUN=1,1, which revive it.
    UntilReset,
    /// Ignores everything.
    Forever,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PinState {
    Ready,
    NeedPin,
    NeedPuk,
}

/// The scriptable state, shared between the handle and the modem thread.
struct State {
    profile: Profile,
    // device state, reset by a reboot
    echo: bool,
    cmgf: u8,
    cnmi_ds: u8,
    curc: bool,
    pin_state: PinState,
    pin_attempts_left: u8,
    creg: u8,
    next_mr: u8,
    noise: u32,
    // script
    delay: Duration,
    fail_next: VecDeque<u16>,
    fail_numbers: HashMap<String, u16>,
    swallow_next: u32,
    late_next: VecDeque<Duration>,
    send_delay: Duration,
    stall_next: u32,
    late_bare_line: Option<Duration>,
    // answers are owed in order until then (set by a late bare-line answer)
    owed_until: Option<Instant>,
    hang: Hang,
    mid_answer: VecDeque<String>,
    out: Vec<Vec<u8>>,
    report_status: u8,
    report_delay: Duration,
    // records
    pin_tries: u32,
    commands: Vec<String>,
    parts: Vec<Received>,
    messages: Vec<Received>,
    partial: HashMap<(String, u16), Vec<(u8, Received)>>,
    reports_sent: u32,
    csms: u8,
    acks: u32,
}

impl State {
    fn new(profile: Profile) -> State {
        let mut s = State {
            profile,
            echo: true,
            cmgf: 1,
            cnmi_ds: 0,
            curc: true,
            pin_state: PinState::Ready,
            pin_attempts_left: 3,
            creg: 1,
            next_mr: 0,
            noise: 0,
            delay: Duration::ZERO,
            fail_next: VecDeque::new(),
            fail_numbers: HashMap::new(),
            swallow_next: 0,
            late_next: VecDeque::new(),
            send_delay: Duration::ZERO,
            stall_next: 0,
            late_bare_line: None,
            owed_until: None,
            hang: Hang::No,
            mid_answer: VecDeque::new(),
            out: Vec::new(),
            report_status: 0,
            report_delay: Duration::from_millis(50),
            pin_tries: 0,
            commands: Vec::new(),
            parts: Vec::new(),
            messages: Vec::new(),
            partial: HashMap::new(),
            reports_sent: 0,
            csms: 0,
            acks: 0,
        };
        s.power_on();
        s
    }

    /// What a power cycle resets: echo back on, text mode, no report routing, PIN asked again.
    fn power_on(&mut self) {
        self.echo = true;
        self.cmgf = 1;
        self.cnmi_ds = 0;
        self.curc = true;
        self.hang = Hang::No;
        if self.pin_state != PinState::NeedPuk {
            self.pin_state = if self.profile.pin.is_some() {
                PinState::NeedPin
            } else {
                PinState::Ready
            };
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a test thread must not make the simulator unusable for the rest.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One running pty: the thread on the master side and the slave fd we keep open so the
/// master never sees EIO between two openers.
struct Pty {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    slave_path: PathBuf,
}

impl Pty {
    fn close(&mut self, shared: &Shared) {
        self.stop.store(true, Ordering::SeqCst);
        shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A simulated modem on a pty; dropping it stops the modem and removes the link.
pub struct SimModem {
    shared: Arc<Shared>,
    dir: PathBuf,
    link: PathBuf,
    pty: Option<Pty>,
}

impl SimModem {
    /// Starts a modem with `profile` on a fresh pty.
    pub fn start(profile: Profile) -> Result<SimModem, SimError> {
        let dir =
            std::env::temp_dir().join(format!("otpgate-sim-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir)?;
        let link = dir.join("usb-Sim_Modem-if00-port0");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(profile)),
            wake: Notify::new(),
        });
        let mut sim = SimModem {
            shared,
            dir,
            link,
            pty: None,
        };
        sim.reappear()?;
        Ok(sim)
    }

    /// The stable path (a symlink to the current /dev/pts/N).
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// The pty slave the link points at now, if plugged in.
    pub fn slave_path(&self) -> Option<PathBuf> {
        self.pty.as_ref().map(|p| p.slave_path.clone())
    }

    /// Unplugs: closes the master (the opener sees EIO/hang-up) and removes the link.
    pub fn vanish(&mut self) {
        if let Some(mut p) = self.pty.take() {
            p.close(&self.shared);
        }
        let _ = std::fs::remove_file(&self.link);
    }

    /// Plugs back in: a fresh pty (new /dev/pts/N), the same link, a freshly booted modem.
    pub fn reappear(&mut self) -> Result<(), SimError> {
        self.vanish();
        let pair = nix::pty::openpty(None, None)?;
        let mut t = tcgetattr(&pair.slave)?;
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t)?;
        let mut mt = tcgetattr(&pair.master)?;
        cfmakeraw(&mut mt);
        tcsetattr(&pair.master, SetArg::TCSANOW, &mt)?;
        let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))?;
        std::os::unix::fs::symlink(&slave_path, &self.link)?;
        set_nonblocking(&pair.master)?;
        {
            let mut st = self.shared.lock();
            st.power_on();
            let boot = boot_banner(st.profile.vendor);
            st.out.push(boot);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let shared = self.shared.clone();
        let stop2 = stop.clone();
        let master = pair.master;
        let slave = pair.slave;
        let thread = std::thread::Builder::new()
            .name("sim-modem".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "sim modem: no runtime");
                        return;
                    }
                };
                rt.block_on(run(master, shared, stop2));
                // The slave copy goes last, after the master, so the opener sees the hang-up.
                drop(slave);
            })?;
        self.pty = Some(Pty {
            stop,
            thread: Some(thread),
            slave_path,
        });
        Ok(())
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.shared.lock());
        self.shared.wake.notify_one();
        r
    }

    /// Turns echo on or off, as if the modem had rebooted without telling.
    pub fn set_echo(&self, on: bool) {
        self.with(|s| s.echo = on);
    }

    /// Reboots: echo on, text mode, report routing off, PIN asked again, and the boot URC.
    pub fn reboot(&self) {
        self.with(|s| {
            s.power_on();
            let b = boot_banner(s.profile.vendor);
            s.out.push(b);
        });
    }

    /// Locks the SIM behind `pin` (asked again, as after a power cycle), or removes the lock.
    pub fn require_pin(&self, pin: Option<&str>) {
        self.with(|s| {
            s.profile.pin = pin.map(str::to_string);
            s.pin_state = if pin.is_some() {
                PinState::NeedPin
            } else {
                PinState::Ready
            };
        });
    }

    /// Inserts or removes the SIM.
    pub fn set_sim_present(&self, present: bool) {
        self.with(|s| s.profile.sim_present = present);
    }

    /// Sends an unsolicited line between answers, right away.
    pub fn inject_urc(&self, line: &str) {
        self.with(|s| s.out.push(format!("\r\n{line}\r\n").into_bytes()));
    }

    /// Puts `line` in the middle of the next answer (after its first info line, before OK).
    pub fn urc_in_next_answer(&self, line: &str) {
        self.with(|s| s.mid_answer.push_back(line.to_string()));
    }

    /// Writes raw bytes to the port (garbage, floods, lines with no end).
    pub fn inject_raw(&self, bytes: &[u8]) {
        self.with(|s| s.out.push(bytes.to_vec()));
    }

    /// Delays every answer by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d);
    }

    /// The next `n` sends are answered `+CMS ERROR: code` after Ctrl-Z.
    pub fn fail_next_sends(&self, n: usize, code: u16) {
        self.with(|s| s.fail_next.extend(std::iter::repeat_n(code, n)));
    }

    /// Every send to `to` (as decoded, e.g. "+15551234567") is answered `+CMS ERROR: code`.
    pub fn fail_number(&self, to: &str, code: u16) {
        self.with(|s| {
            s.fail_numbers.insert(to.to_string(), code);
        });
    }

    /// The next `n` sends are taken (and go out) but never answered after Ctrl-Z.
    pub fn swallow_next_sends(&self, n: u32) {
        self.with(|s| s.swallow_next = n);
    }

    /// The next send is taken at once but its +CMGS answer comes only `after` this long.
    pub fn answer_next_send_late(&self, after: Duration) {
        self.with(|s| s.late_next.push_back(after));
    }

    /// Every send from now on is taken (and goes out) at once, but its +CMGS answer comes
    /// only `d` later: a slow network, so the host's queue of sends backs up.
    pub fn set_send_delay(&self, d: Duration) {
        self.with(|s| s.send_delay = d);
    }

    /// The next `n` AT+CMGS are never answered: no `> ` prompt, no error. Nothing is taken, and
    /// the modem answers other commands as before.
    pub fn stall_next_sends(&self, n: u32) {
        self.with(|s| s.stall_next = n);
    }

    /// Answers an empty command line (the CR after an ESC) with ERROR only `after` this long,
    /// or never (None, the default). Answers stay in order, as on a real modem: commands that
    /// arrive meanwhile are answered after it, each a little later than the one before, so a
    /// host that takes the late ERROR for its next command's answer stays one answer behind.
    pub fn set_late_bare_line(&self, after: Option<Duration>) {
        self.with(|s| s.late_bare_line = after);
    }

    /// Stops answering.
    pub fn set_hang(&self, hang: Hang) {
        self.with(|s| s.hang = hang);
    }

    /// Registration stat shown by AT+CREG?/AT+CEREG? (1 home, 5 roaming, 0/2/3 not usable),
    /// also announced as a `+CREG: <stat>` URC.
    pub fn set_registration(&self, stat: u8) {
        self.with(|s| {
            s.creg = stat;
            s.out.push(format!("\r\n+CREG: {stat}\r\n").into_bytes());
        });
    }

    /// TP-ST of the status reports sent from now on (0x00 delivered, 0x20 pending, 0x40+ failed).
    pub fn set_report_status(&self, st: u8) {
        self.with(|s| s.report_status = st);
    }

    /// Delay between +CMGS and its +CDS status report.
    pub fn set_report_delay(&self, d: Duration) {
        self.with(|s| s.report_delay = d);
    }

    /// The logical messages received (concatenated parts reassembled), in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().messages.clone()
    }

    /// Every part received, in order.
    pub fn received_parts(&self) -> Vec<Received> {
        self.shared.lock().parts.clone()
    }

    /// How many times a PIN was entered (AT+CPIN="...").
    pub fn pin_attempts(&self) -> u32 {
        self.shared.lock().pin_tries
    }

    /// The command lines received so far (a PIN is shown as AT+CPIN=***).
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }

    /// Runs SMS phase 2+ (AT+CSMS? says 1): status reports expect an AT+CNMA.
    pub fn set_phase2plus(&self, on: bool) {
        self.with(|s| s.csms = u8::from(on));
    }

    /// How many AT+CNMA acknowledgements arrived.
    pub fn acks(&self) -> u32 {
        self.shared.lock().acks
    }

    /// How many +CDS status reports were emitted.
    pub fn reports_sent(&self) -> u32 {
        self.shared.lock().reports_sent
    }
}

impl Drop for SimModem {
    fn drop(&mut self) {
        self.vanish();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), nix::Error> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;

    fn open(sim: &SimModem) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(sim.path())
            .unwrap()
    }

    /// Writes `cmd` and reads until `end` shows up (5 s hang guard).
    fn talk(port: &mut std::fs::File, cmd: &[u8], end: &str) -> String {
        port.write_all(cmd).unwrap();
        let mut got = Vec::new();
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains(end) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no {end:?} in {got:?}"
            );
            match port.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn speaks_the_at_dialogue_on_a_pty() {
        let sim = SimModem::start(Profile::huawei()).unwrap();
        assert!(
            std::fs::read_link(sim.path())
                .unwrap()
                .starts_with("/dev/pts")
        );
        let mut p = open(&sim);
        // Echo is on at power-on, as on real modems.
        assert!(talk(&mut p, b"AT\r", "OK\r\n").contains("AT\r"));
        talk(&mut p, b"ATE0\r", "OK\r\n");
        let a = talk(&mut p, b"AT+CSQ\r", "OK\r\n");
        assert!(a.contains("+CSQ: 18,99") && !a.contains("AT+CSQ"));
        assert!(talk(&mut p, b"AT+FOO\r", "ERROR").contains("ERROR"));
        assert!(talk(&mut p, b"AT+CEREG?\r", "SUPPORT").contains("COMMAND NOT SUPPORT"));
        // Text mode refuses a PDU length; PDU mode prompts, a wrong length is refused.
        assert!(talk(&mut p, b"AT+CMGS=5\r", "ERROR").contains("+CMS ERROR: 302"));
        talk(&mut p, b"AT+CMGF=0\r", "OK\r\n");
        assert!(talk(&mut p, b"AT+CMGS=5\r", "> ").ends_with("\r\n> "));
        assert!(talk(&mut p, b"0011\x1a", "ERROR").contains("+CMS ERROR: 304"));
        // ESC abandons a prompt silently and the modem takes commands again.
        talk(&mut p, b"AT+CMGS=5\r", "> ");
        talk(&mut p, b"00\x1b", "");
        talk(&mut p, b"AT\r", "OK\r\n");
        assert!(sim.received().is_empty());
    }

    #[test]
    fn pin_countdown_and_hang_until_reset() {
        let sim = SimModem::start(Profile::quectel().with_pin("1234")).unwrap();
        let mut p = open(&sim);
        assert!(talk(&mut p, b"AT+CPIN?\r", "OK\r\n").contains("SIM PIN"));
        for _ in 0..3 {
            assert!(talk(&mut p, b"AT+CPIN=\"0000\"\r", "ERROR").contains("+CME ERROR: 16"));
        }
        assert!(talk(&mut p, b"AT+CPIN?\r", "OK\r\n").contains("SIM PUK"));
        assert_eq!(sim.pin_attempts(), 3);
        assert!(sim.commands().iter().all(|c| !c.contains("0000")));

        sim.set_hang(Hang::UntilReset);
        p.write_all(b"AT\r").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        talk(&mut p, b"ATZ\r", "OK\r\n");
        talk(&mut p, b"AT\r", "OK\r\n");
    }
}
