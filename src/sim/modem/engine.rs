//! The simulated modem's side of the dialogue: the pty loop, the AT command interpreter and
//! the PDU it answers, on the state [`super::SimModem`] shares with the test.

use super::*;

pub(super) fn boot_banner(v: Vendor) -> Vec<u8> {
    match v {
        Vendor::Quectel => {
            b"\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+QIND: SMS DONE\r\n\r\n+QIND: PB DONE\r\n".to_vec()
        }
        Vendor::Huawei => b"\r\n^BOOT:12345678,0,0,0,75\r\n".to_vec(),
    }
}

enum Mode {
    Command,
    Pdu { n: usize, hex: Vec<u8> },
}

/// Line-at-a-time input; bounded so a test flooding the modem cannot exhaust memory.
const MAX_INPUT: usize = 64 * 1024;
/// Spacing of answers owed after a late one, so each arrives on its own.
const OWED_GAP: Duration = Duration::from_millis(20);

pub(super) async fn run(master: OwnedFd, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, unchanged, until it drops.
    let fd = match unsafe { AsyncFd::register(master) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "sim modem: cannot register pty");
            return;
        }
    };
    let mut line: Vec<u8> = Vec::new();
    let mut mode = Mode::Command;
    let mut scheduled: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let pending: Vec<Vec<u8>> = std::mem::take(&mut shared.lock().out);
        for chunk in pending {
            if write_all(&fd, &chunk, &stop).await.is_err() {
                return;
            }
        }
        let now = Instant::now();
        let mut due = Vec::new();
        scheduled.retain(|(t, b)| {
            if *t <= now {
                due.push(b.clone());
                false
            } else {
                true
            }
        });
        for chunk in due {
            if write_all(&fd, &chunk, &stop).await.is_err() {
                return;
            }
        }
        let next = scheduled
            .iter()
            .map(|(t, _)| *t)
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        let n = tokio::select! {
            _ = shared.wake.notified() => continue,
            _ = tokio::time::sleep_until(next) => continue,
            r = fd.readable() => {
                let mut guard = match r { Ok(g) => g, Err(_) => return };
                match guard.try_io(|inner| {
                    nix::unistd::read(inner.get_ref(), &mut buf).map_err(std::io::Error::from)
                }) {
                    Ok(Ok(0)) => return,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                        // No opener right now (we hold the slave, so rare): wait and retry.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Ok(Err(_)) => return,
                    Err(_would_block) => continue,
                }
            }
        };
        for &b in &buf[..n] {
            let reply = handle_byte(b, &mut line, &mut mode, &shared, &mut scheduled);
            if let Some((delay, out)) = reply {
                if !pause(delay, &stop).await {
                    return;
                }
                if write_all(&fd, &out, &stop).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits `delay` (a slow modem's answer time); false when the modem is stopped meanwhile.
async fn pause(delay: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        tokio::time::sleep_until(until.min(Instant::now() + Duration::from_millis(50))).await;
    }
    !stop.load(Ordering::SeqCst)
}

/// Writes everything, unless the modem is being stopped: with no reader on the other side
/// (the daemon killed) the pty fills and would never become writable again, and the thread
/// that closes the modem waits for this one.
async fn write_all(
    fd: &AsyncFd<OwnedFd>,
    mut bytes: &[u8],
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let Ok(guard) = tokio::time::timeout(Duration::from_millis(50), fd.writable()).await else {
            continue;
        };
        match guard?.try_io(|inner| {
            nix::unistd::write(inner.get_ref(), bytes).map_err(std::io::Error::from)
        }) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Feeds one byte; returns what to write back (after a delay) when a command completes.
fn handle_byte(
    b: u8,
    line: &mut Vec<u8>,
    mode: &mut Mode,
    shared: &Shared,
    scheduled: &mut Vec<(Instant, Vec<u8>)>,
) -> Option<(Duration, Vec<u8>)> {
    let mut st = shared.lock();
    if st.hang == Hang::Forever {
        return None;
    }
    match mode {
        Mode::Pdu { n, hex } => match b {
            0x1a => {
                let n = *n;
                let hex = std::mem::take(hex);
                *mode = Mode::Command;
                if st.hang != Hang::No {
                    return None;
                }
                let mut out = Vec::new();
                if st.echo {
                    out.extend_from_slice(&hex);
                }
                let answer = submit(&mut st, n, &hex, scheduled);
                out.extend_from_slice(&answer?);
                Some((st.delay, out))
            }
            0x1b => {
                *mode = Mode::Command;
                None
            }
            b'\r' | b'\n' => None,
            _ => {
                if hex.len() < MAX_INPUT {
                    hex.push(b);
                }
                None
            }
        },
        Mode::Command => match b {
            b'\r' => {
                let cmd = String::from_utf8_lossy(line).trim().to_string();
                line.clear();
                command_line(&cmd, mode, &mut st, scheduled)
            }
            b'\n' | 0x1b => None,
            _ => {
                if line.len() < MAX_INPUT {
                    line.push(b);
                }
                None
            }
        },
    }
}

/// Runs one complete command line; returns what to write back (after a delay), if anything now.
fn command_line(
    cmd: &str,
    mode: &mut Mode,
    st: &mut State,
    scheduled: &mut Vec<(Instant, Vec<u8>)>,
) -> Option<(Duration, Vec<u8>)> {
    if cmd.is_empty() {
        if let Some(after) = st.late_bare_line {
            let at = Instant::now() + after;
            scheduled.push((at, b"\r\nERROR\r\n".to_vec()));
            st.owed_until = Some(at);
        }
        return None;
    }
    let upper = cmd.to_ascii_uppercase();
    if st.hang == Hang::UntilReset && upper != "ATZ" && upper != "AT+CFUN=1,1" {
        return None;
    }
    let mut out = Vec::new();
    if st.echo {
        out.extend_from_slice(cmd.as_bytes());
        out.push(b'\r');
    }
    let logged = if upper.starts_with("AT+CPIN=") {
        "AT+CPIN=***".to_string()
    } else {
        cmd.to_string()
    };
    st.commands.push(logged);
    if upper.starts_with("AT+CMGS=") && st.stall_next > 0 {
        st.stall_next -= 1;
        return None;
    }
    let (info, fin, prompt) = command(st, cmd, &upper, scheduled);
    if let Some(n) = prompt {
        out.extend_from_slice(b"\r\n> ");
        *mode = Mode::Pdu { n, hex: Vec::new() };
    } else {
        out.extend_from_slice(&answer(st, &info, &fin));
    }
    // Earlier answers still owed: this one comes after them, a little later.
    if let Some(owed) = st.owed_until.filter(|t| *t > Instant::now()) {
        let at = owed + OWED_GAP;
        scheduled.push((at, out));
        st.owed_until = Some(at);
        return None;
    }
    Some((st.delay, out))
}

fn answer(st: &mut State, info: &[String], fin: &str) -> Vec<u8> {
    let mut out = String::new();
    let mut mid = st.mid_answer.pop_front();
    for (i, l) in info.iter().enumerate() {
        out.push_str(&format!("\r\n{l}\r\n"));
        if i == 0 {
            if let Some(u) = mid.take() {
                out.push_str(&format!("\r\n{u}\r\n"));
            }
        }
    }
    if let Some(u) = mid {
        out.push_str(&format!("\r\n{u}\r\n"));
    }
    out.push_str(&format!("\r\n{fin}\r\n"));
    if st.profile.vendor == Vendor::Huawei && st.curc {
        // Huawei sticks chatter until AT^CURC=0; put some of it right after the answer.
        st.noise += 1;
        if st.noise % 2 == 0 {
            out.push_str(&format!("\r\n^RSSI:{}\r\n", st.profile.rssi));
        } else {
            out.push_str("\r\n^MODE:5,17\r\n");
        }
    }
    out.into_bytes()
}

fn ok() -> String {
    "OK".into()
}

/// Runs one command line: (info lines, final result, Some(n) when a CMGS prompt is due).
fn command(
    st: &mut State,
    cmd: &str,
    upper: &str,
    scheduled: &mut Vec<(Instant, Vec<u8>)>,
) -> (Vec<String>, String, Option<usize>) {
    let huawei = st.profile.vendor == Vendor::Huawei;
    let sim_ok = st.profile.sim_present && st.pin_state == PinState::Ready;
    let none = Vec::new;
    match upper {
        "AT" => (none(), ok(), None),
        "ATE0" | "ATE" => {
            st.echo = false;
            (none(), ok(), None)
        }
        "ATE1" => {
            st.echo = true;
            (none(), ok(), None)
        }
        "ATZ" => {
            st.echo = true;
            st.cmgf = 1;
            st.cnmi_ds = 0;
            st.hang = Hang::No;
            (none(), ok(), None)
        }
        "AT+CFUN=1,1" => {
            st.power_on();
            let b = boot_banner(st.profile.vendor);
            scheduled.push((Instant::now() + Duration::from_millis(100), b));
            (none(), ok(), None)
        }
        "AT+CGMI" => (vec![st.profile.manufacturer.clone()], ok(), None),
        "AT+CGMM" => (vec![st.profile.model.clone()], ok(), None),
        "AT+CGMR" => (vec![st.profile.firmware.clone()], ok(), None),
        "AT+CGSN" => (vec![st.profile.imei.clone()], ok(), None),
        "AT+CIMI" if sim_ok => (vec![st.profile.imsi.clone()], ok(), None),
        "AT+CIMI" => (none(), sim_error(st), None),
        "AT+CPIN?" => {
            if !st.profile.sim_present {
                return (none(), "+CME ERROR: 10".into(), None);
            }
            let s = match st.pin_state {
                PinState::Ready => "READY",
                PinState::NeedPin => "SIM PIN",
                PinState::NeedPuk => "SIM PUK",
            };
            (vec![format!("+CPIN: {s}")], ok(), None)
        }
        "AT+CREG?" => {
            let stat = if sim_ok { st.creg } else { 0 };
            (vec![format!("+CREG: 0,{stat}")], ok(), None)
        }
        "AT+CEREG?" if huawei => (none(), "COMMAND NOT SUPPORT".into(), None),
        "AT+CEREG?" => {
            let stat = if sim_ok { st.creg } else { 0 };
            (vec![format!("+CEREG: 0,{stat}")], ok(), None)
        }
        "AT+CSQ" => (vec![format!("+CSQ: {},99", st.profile.rssi)], ok(), None),
        "AT+COPS?" => {
            if sim_ok && (st.creg == 1 || st.creg == 5) {
                let op = format!("+COPS: 0,0,\"{}\",7", st.profile.operator);
                (vec![op], ok(), None)
            } else {
                (vec!["+COPS: 0".into()], ok(), None)
            }
        }
        "AT+CMGF=0" => {
            st.cmgf = 0;
            (none(), ok(), None)
        }
        "AT+CMGF=1" => {
            st.cmgf = 1;
            (none(), ok(), None)
        }
        "AT+CMGF?" => (vec![format!("+CMGF: {}", st.cmgf)], ok(), None),
        "AT+CSCA?" => {
            let toa = if st.profile.smsc.starts_with('+') {
                145
            } else {
                129
            };
            (
                vec![format!("+CSCA: \"{}\",{toa}", st.profile.smsc)],
                ok(),
                None,
            )
        }
        "AT+CNMA" => {
            st.acks += 1;
            (none(), ok(), None)
        }
        "AT+CMEE=1" | "AT+CMEE=2" | "AT+CMEE=0" | "ATV1" => (none(), ok(), None),
        "AT+CMEE?" => (vec!["+CMEE: 1".into()], ok(), None),
        "AT+CSMS?" => (vec![format!("+CSMS: {},1,1,1", st.csms)], ok(), None),
        "AT^CURC=0" if huawei => {
            st.curc = false;
            (none(), ok(), None)
        }
        "AT+CMMS=2" if huawei => (none(), "COMMAND NOT SUPPORT".into(), None),
        _ => command_with_args(st, cmd, upper, sim_ok),
    }
}

fn sim_error(st: &State) -> String {
    if !st.profile.sim_present {
        "+CME ERROR: 10".into()
    } else if st.pin_state == PinState::NeedPuk {
        "+CME ERROR: 12".into()
    } else {
        "+CME ERROR: 11".into()
    }
}

fn command_with_args(
    st: &mut State,
    cmd: &str,
    upper: &str,
    sim_ok: bool,
) -> (Vec<String>, String, Option<usize>) {
    let none = Vec::new;
    if upper.starts_with("AT+CPIN=") {
        st.pin_tries += 1;
        let given = cmd.get(8..).unwrap_or("").trim().trim_matches('"');
        return match st.pin_state {
            PinState::Ready => (none(), "+CME ERROR: 3".into(), None),
            PinState::NeedPuk => (none(), "+CME ERROR: 12".into(), None),
            PinState::NeedPin => {
                if st.profile.pin.as_deref() == Some(given) {
                    st.pin_state = PinState::Ready;
                    st.pin_attempts_left = 3;
                    (none(), ok(), None)
                } else {
                    st.pin_attempts_left = st.pin_attempts_left.saturating_sub(1);
                    if st.pin_attempts_left == 0 {
                        st.pin_state = PinState::NeedPuk;
                    }
                    (none(), "+CME ERROR: 16".into(), None)
                }
            }
        };
    }
    if let Some(arg) = upper.strip_prefix("AT+CNMI=") {
        st.cnmi_ds = arg
            .split(',')
            .nth(3)
            .and_then(|d| d.trim().parse().ok())
            .unwrap_or(0);
        return (none(), ok(), None);
    }
    if upper.starts_with("AT+CSCA=") || upper.starts_with("AT+CSMS=") {
        return (none(), ok(), None);
    }
    if let Some(arg) = upper.strip_prefix("AT+CMGS=") {
        if !sim_ok {
            return (none(), sim_error(st).replace("CME", "CMS"), None);
        }
        if st.cmgf != 0 {
            // In text mode a number is expected; a length is nonsense for the modem.
            return (none(), "+CMS ERROR: 302".into(), None);
        }
        return match arg.trim().parse::<usize>() {
            Ok(n) if (1..=175).contains(&n) => (none(), String::new(), Some(n)),
            _ => (none(), "+CMS ERROR: 304".into(), None),
        };
    }
    (none(), "ERROR".into(), None)
}

/// Handles the hex of one AT+CMGS after Ctrl-Z; None = say nothing (swallowed).
fn submit(
    st: &mut State,
    n: usize,
    hex: &[u8],
    scheduled: &mut Vec<(Instant, Vec<u8>)>,
) -> Option<Vec<u8>> {
    let cms = |code: u16| Some(format!("\r\n+CMS ERROR: {code}\r\n").into_bytes());
    let Ok(bytes) = hex::decode(hex) else {
        return cms(304);
    };
    let sca = usize::from(bytes.first().copied().unwrap_or(0));
    if bytes.len() < 1 + sca || bytes.len() - 1 - sca != n {
        return cms(304);
    }
    let Ok(d) = pdu::decode_submit(&bytes) else {
        return cms(304);
    };
    if let Some(code) = st.fail_next.pop_front() {
        return cms(code);
    }
    if let Some(code) = st.fail_numbers.get(&d.to) {
        return cms(*code);
    }
    if st.creg != 1 && st.creg != 5 {
        return cms(331);
    }
    let mr = st.next_mr;
    st.next_mr = st.next_mr.wrapping_add(1);
    let ucs2 = matches!(d.encoding, pdu::Encoding::Ucs2);
    let part = Received {
        to: d.to.clone(),
        text: d.text.clone(),
        parts: 1,
        concat: d.concat.as_ref().map(|c| (c.reference, c.total, c.seq)),
        validity: match d.validity {
            Some(pdu::Validity::Relative(p)) => Some(p),
            Some(pdu::Validity::Absolute(t)) => Some(SystemClock.now().until(t)),
            Some(pdu::Validity::Enhanced(_)) | None => None,
        },
        vp: d.validity,
        status_report: d.status_report,
        smsc: d.smsc.clone(),
        mr,
        ucs2,
        at: std::time::Instant::now(),
    };
    st.parts.push(part.clone());
    match &d.concat {
        Some(c) if c.total > 1 => {
            let key = (d.to.clone(), c.reference);
            let list = st.partial.entry(key.clone()).or_default();
            list.push((c.seq, part));
            if list.len() >= usize::from(c.total) {
                let mut list = st.partial.remove(&key).unwrap_or_default();
                list.sort_by_key(|(seq, _)| *seq);
                let text: String = list.iter().map(|(_, p)| p.text.as_str()).collect();
                let Some(mut whole) = list.last().map(|(_, p)| p.clone()) else {
                    return cms(500);
                };
                whole.text = text;
                whole.parts = list.len();
                whole.concat = Some((c.reference, c.total, c.total));
                st.messages.push(whole);
            }
        }
        _ => st.messages.push(part),
    }
    if d.status_report && st.cnmi_ds == 1 {
        let hex = pdu::encode_status_report(None, mr, &d.to, st.report_status);
        let len = hex.len() / 2 - 1;
        scheduled.push((
            Instant::now() + st.report_delay,
            format!("\r\n+CDS: {len}\r\n{hex}\r\n").into_bytes(),
        ));
        st.reports_sent += 1;
    }
    if st.swallow_next > 0 {
        st.swallow_next -= 1;
        return None;
    }
    if let Some(after) = st
        .late_next
        .pop_front()
        .or((!st.send_delay.is_zero()).then_some(st.send_delay))
    {
        let answer = format!("\r\n+CMGS: {mr}\r\n\r\nOK\r\n").into_bytes();
        scheduled.push((Instant::now() + after, answer));
        return None;
    }
    Some(format!("\r\n+CMGS: {mr}\r\n\r\nOK\r\n").into_bytes())
}
