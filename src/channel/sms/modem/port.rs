//! The serial port and the AT exchange on it: [`Conn`] opens the device, reads bytes through
//! at.rs's `LineReader` and `Dialogue` and runs one command at a time; [`Final`] and [`Reply`]
//! are answers as the owner and the probe reason about them (the modem's output is untrusted:
//! everything in an answer is optional).

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tracing::trace;

use super::ModemError;
use crate::channel::sms::at::{
    Dialogue, Event, FinalResult, LineReader, Registration, Urc, parse_creg,
};

/// Unsolicited lines kept between two looks at them; a flood beyond this is dropped.
const MAX_UNSOLICITED: usize = 256;
/// The command [`Conn::sync`] brings the dialogue in step with, and the line that marks its own
/// answer: no stale result carries it.
const SYNC_COMMAND: &str = "AT+CMEE?";
const SYNC_ANSWER: &str = "+CMEE:";

/// The serial port, kept as `TTYPort` so its Drop clears TIOCEXCL and releases the lock.
struct PortFd(serialport::TTYPort);

impl AsRawFd for PortFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for PortFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to the TTYPort inside `self` and stays open as long as `self`
        // lives, which the returned borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

#[derive(Debug)]
pub(super) enum LinkError {
    Timeout,
    Lost(std::io::Error),
}

/// A final result, as this module reasons about it (error codes reduced to their numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Final {
    Ok,
    Error,
    Cme(Option<u16>),
    Cms(Option<u16>),
    NotSupported,
    NoCarrier,
}

impl From<FinalResult> for Final {
    fn from(f: FinalResult) -> Final {
        match f {
            FinalResult::Ok => Final::Ok,
            FinalResult::Error => Final::Error,
            FinalResult::CmeError(c) => Final::Cme(c.number()),
            FinalResult::CmsError(c) => Final::Cms(c.number()),
            FinalResult::NoCarrier => Final::NoCarrier,
            FinalResult::CommandNotSupport => Final::NotSupported,
        }
    }
}

impl fmt::Display for Final {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Final::Ok => f.write_str("OK"),
            Final::Error => f.write_str("ERROR"),
            Final::Cme(Some(n)) => write!(f, "CME {n}"),
            Final::Cme(None) => f.write_str("CME ?"),
            Final::Cms(Some(n)) => write!(f, "CMS {n}"),
            Final::Cms(None) => f.write_str("CMS ?"),
            Final::NotSupported => f.write_str("COMMAND NOT SUPPORT"),
            Final::NoCarrier => f.write_str("NO CARRIER"),
        }
    }
}

pub(super) struct Reply {
    pub(super) info: Vec<String>,
    pub(super) fin: Final,
}

impl Reply {
    pub(super) fn ok(&self) -> bool {
        self.fin == Final::Ok
    }

    /// The first info line some parser accepts.
    pub(super) fn parse<T>(&self, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        self.info.iter().find_map(|l| f(l))
    }

    /// The first info line, for commands answered with a bare value (AT+CGMI).
    pub(super) fn value(&self) -> Option<String> {
        if !self.ok() {
            return None;
        }
        self.info.first().map(|l| {
            // Some modems prefix the value with the command name ("+CGMI: Quectel").
            let v = match l.split_once(':') {
                Some((p, v)) if p.starts_with('+') => v,
                _ => l.as_str(),
            };
            v.trim().trim_matches('"').to_string()
        })
    }
}

/// The command's name for logs, never its arguments (a PIN).
fn command_name(cmd: &str) -> &str {
    let end = cmd.find(['=', '?']).unwrap_or(cmd.len());
    &cmd[..end]
}

/// The open port with at.rs's reader and dialogue state: answer events for the pending
/// command in `events`, URCs in `unsolicited` (both bounded, whatever the modem sends).
pub(super) struct Conn {
    fd: AsyncFd<PortFd>,
    reader: LineReader,
    dialogue: Dialogue,
    events: VecDeque<Event>,
    pub(super) unsolicited: VecDeque<Urc>,
    /// While [`Conn::sync`] runs: (the marker's own answer line has come, a stale result was
    /// skipped).
    syncing: Option<(bool, bool)>,
}

impl Conn {
    pub(super) fn open(device: &Path, baud: u32) -> Result<Conn, ModemError> {
        let port = serialport::new(device.to_string_lossy(), baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .flow_control(serialport::FlowControl::None)
            .open_native()
            .map_err(|e| open_error(device, e))?;
        let port = PortFd(port);
        let flags = fcntl(port.as_fd(), FcntlArg::F_GETFL)
            .map_err(|e| ModemError::Open(device.to_path_buf(), e.to_string()))?;
        fcntl(
            port.as_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| ModemError::Open(device.to_path_buf(), e.to_string()))?;
        // SAFETY: PortFd owns its TTYPort, whose fd stays open and unchanged until it drops.
        let fd = unsafe { AsyncFd::register(port) }
            .map_err(|e| ModemError::Io(device.to_path_buf(), e.into()))?;
        Ok(Conn {
            fd,
            reader: LineReader::new(),
            dialogue: Dialogue::new(),
            events: VecDeque::new(),
            unsolicited: VecDeque::new(),
            syncing: None,
        })
    }

    /// Waits for bytes and runs them through the reader and the dialogue. Cancel-safe: it
    /// only awaits readiness, the read itself does not wait.
    pub(super) async fn fill(&mut self) -> Result<(), LinkError> {
        let mut tmp = [0u8; 1024];
        loop {
            let mut guard = self.fd.readable().await.map_err(LinkError::Lost)?;
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), &mut tmp).map_err(std::io::Error::from)
            }) {
                Ok(Ok(0)) => {
                    return Err(LinkError::Lost(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "hang-up",
                    )));
                }
                Ok(Ok(n)) => {
                    self.absorb(&tmp[..n]);
                    return Ok(());
                }
                Ok(Err(e)) => return Err(LinkError::Lost(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn absorb(&mut self, bytes: &[u8]) {
        self.reader.push(bytes);
        loop {
            self.reader.expect_prompt(self.dialogue.expects_prompt());
            let Some(token) = self.reader.next() else {
                break;
            };
            let answering = self.dialogue.pending().is_some();
            for ev in self.dialogue.feed(token) {
                match (&ev, self.syncing) {
                    (Event::Info(l), Some((false, skipped))) if l.starts_with(SYNC_ANSWER) => {
                        self.syncing = Some((true, skipped));
                    }
                    // A result before the marker's own line answers an earlier line: skip it and
                    // keep waiting for the marker (the dialogue took the result as its end).
                    (Event::Final(_), Some((false, _))) => {
                        trace!("stale result skipped while syncing");
                        self.syncing = Some((false, true));
                        self.dialogue.begin(SYNC_COMMAND);
                        continue;
                    }
                    _ => {}
                }
                match ev {
                    Event::Urc(u) => {
                        if self.unsolicited.len() >= MAX_UNSOLICITED {
                            self.unsolicited.pop_front();
                        }
                        self.unsolicited.push_back(u);
                    }
                    Event::Echo => {}
                    // With nothing pending this is a late answer to an abandoned command.
                    _ if !answering => {}
                    ev => {
                        if self.events.len() >= MAX_UNSOLICITED {
                            self.events.pop_front();
                        }
                        self.events.push_back(ev);
                    }
                }
            }
        }
    }

    pub(super) async fn next_event(&mut self, deadline: Instant) -> Result<Event, LinkError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            tokio::select! {
                r = self.fill() => r?,
                _ = tokio::time::sleep_until(deadline) => return Err(LinkError::Timeout),
            }
        }
    }

    pub(super) async fn write_all(
        &mut self,
        mut bytes: &[u8],
        deadline: Instant,
    ) -> Result<(), LinkError> {
        while !bytes.is_empty() {
            let mut guard = tokio::select! {
                g = self.fd.writable() => g.map_err(LinkError::Lost)?,
                _ = tokio::time::sleep_until(deadline) => return Err(LinkError::Timeout),
            };
            match guard.try_io(|inner| {
                nix::unistd::write(inner.get_ref(), bytes).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(LinkError::Lost(e)),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Starts an exchange: earlier answer events are stale.
    pub(super) fn begin(&mut self, cmd: &str) {
        self.events.clear();
        self.dialogue.begin(cmd);
    }

    /// Gives up on the pending exchange; its late lines will be ignored.
    pub(super) fn abandon(&mut self) {
        self.dialogue.abandon();
        self.events.clear();
    }

    /// Runs one command and collects its answer; URCs met on the way are queued.
    pub(super) async fn command(
        &mut self,
        cmd: &str,
        timeout: Duration,
    ) -> Result<Reply, LinkError> {
        let deadline = Instant::now() + timeout;
        trace!(command = command_name(cmd), "AT");
        self.begin(cmd);
        let r = self.exchange(cmd, deadline).await;
        if r.is_err() {
            self.abandon();
        }
        r
    }

    async fn exchange(&mut self, cmd: &str, deadline: Instant) -> Result<Reply, LinkError> {
        self.write_all(format!("{cmd}\r").as_bytes(), deadline)
            .await?;
        let mut info = Vec::new();
        loop {
            match self.next_event(deadline).await? {
                Event::Info(l) => info.push(l),
                Event::Final(f) => {
                    return Ok(Reply {
                        info,
                        fin: f.into(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Brings the dialogue in step with the modem. Lines written without waiting for their
    /// answer (the ESC + CR of [`Conn::escape`], a command that timed out) may still draw a late
    /// result; read as the next command's answer, it would leave every later command reading
    /// its predecessor's. The marker's answer carries a line of its own, so results before that
    /// line are stale and skipped, and the result after it ends the marker's exchange. Ok(true)
    /// once in step; Ok(false) when the modem answered only without the marker line (it lacks
    /// the command: nothing better can be done); Err(Timeout) when it did not answer at all.
    pub(super) async fn sync(&mut self, timeout: Duration) -> Result<bool, LinkError> {
        let deadline = Instant::now() + timeout;
        trace!(command = SYNC_COMMAND, "AT (sync)");
        self.begin(SYNC_COMMAND);
        self.syncing = Some((false, false));
        let r = self.sync_exchange(deadline).await;
        let (seen, skipped) = self.syncing.take().unwrap_or_default();
        match r {
            Ok(()) => Ok(true),
            Err(LinkError::Timeout) if skipped && !seen => {
                self.abandon();
                Ok(false)
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    async fn sync_exchange(&mut self, deadline: Instant) -> Result<(), LinkError> {
        self.write_all(format!("{SYNC_COMMAND}\r").as_bytes(), deadline)
            .await?;
        loop {
            if let Event::Final(_) = self.next_event(deadline).await? {
                return Ok(());
            }
        }
    }

    /// Best effort: ESC ends a half-open `>` prompt without sending.
    pub(super) async fn escape(&mut self) -> Result<(), LinkError> {
        self.abandon();
        self.write_all(b"\x1b\r", Instant::now() + Duration::from_secs(1))
            .await
    }
}

fn open_error(device: &Path, e: serialport::Error) -> ModemError {
    use std::io::ErrorKind as K;
    let p = device.to_path_buf();
    match e.kind() {
        serialport::ErrorKind::NoDevice => ModemError::Busy(p),
        serialport::ErrorKind::Io(K::PermissionDenied) => ModemError::PermissionDenied(p),
        serialport::ErrorKind::Io(K::NotFound) => ModemError::NotFound(p),
        serialport::ErrorKind::Io(K::WouldBlock) => ModemError::Busy(p),
        _ => ModemError::Open(p, e.description),
    }
}

// ---------------------------------------------------------------------------------------------
// Answers, through at.rs's parsers (the modem's output is untrusted: everything is optional)

pub(super) fn reg_stat(r: &Reply) -> Option<Registration> {
    r.parse(parse_creg)
}

pub(super) fn reg_word(reg: Option<Registration>) -> String {
    match reg {
        Some(Registration::NotRegistered) => "not registered, not searching".into(),
        Some(Registration::Home) => "registered, home network".into(),
        Some(Registration::Searching) => "not registered, searching".into(),
        Some(Registration::Denied) => "registration denied".into(),
        Some(Registration::Roaming) => "registered, roaming".into(),
        Some(Registration::Unknown) => "unknown".into(),
        Some(Registration::Other(n)) => format!("stat {n}"),
        None => "no answer".into(),
    }
}

/// What a +CMS ERROR code means, in words for reasons and logs.
pub(super) fn cms_reason(code: u16) -> &'static str {
    match code {
        1 => "unassigned (unallocated) number",
        8 | 10 => "operator barred the SIM",
        21 => "short message transfer rejected",
        22 | 322 => "memory full",
        27 => "destination out of service",
        38 => "network out of order",
        41 => "temporary failure",
        42 => "congestion",
        50 => "requested facility not subscribed",
        96 => "invalid mandatory information",
        // TP-FCS C6 / C7: an SMSC that does not take the absolute validity period we send for
        // codes with less than about six minutes left (see sms::vp).
        198 => "SMSC does not support this validity period format",
        199 => "SMSC does not support this validity period",
        300 => "modem failure",
        304 | 305 => "invalid PDU",
        310..=318 => "SIM problem",
        330 => "SMSC address unknown",
        331 => "no network service",
        332 => "network timeout",
        _ => "network refused the message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::sms::at::parse_csq;

    fn reply(info: &[&str], fin: Final) -> Reply {
        Reply {
            info: info.iter().map(|s| s.to_string()).collect(),
            fin,
        }
    }

    #[test]
    fn finals_and_command_names() {
        assert_eq!(
            Final::from(FinalResult::CmsError(
                crate::channel::sms::at::ErrorCode::Numeric(330)
            )),
            Final::Cms(Some(330))
        );
        assert_eq!(Final::Cms(Some(1)).to_string(), "CMS 1");
        assert_eq!(command_name("AT+CPIN=\"1234\""), "AT+CPIN");
        assert_eq!(command_name("AT+CREG?"), "AT+CREG");
    }

    #[test]
    fn answers_parse_defensively() {
        let r = reply(&["+CREG: 0,5"], Final::Ok);
        assert_eq!(reg_stat(&r), Some(Registration::Roaming));
        assert_eq!(reg_stat(&reply(&["+CREG: x,y"], Final::Ok)), None);
        assert_eq!(
            reg_word(Some(Registration::Home)),
            "registered, home network"
        );
        assert_eq!(
            reply(&["Quectel"], Final::Ok).value().as_deref(),
            Some("Quectel")
        );
        assert_eq!(
            reply(&["+CGMI: \"huawei\""], Final::Ok).value().as_deref(),
            Some("huawei")
        );
        assert_eq!(reply(&["x"], Final::Error).value(), None);
        assert_eq!(reply(&[], Final::Ok).value(), None);
        assert!(
            reply(&["^RSSI:3", "+CSQ: 21,99"], Final::Ok)
                .parse(parse_csq)
                .is_some()
        );
    }

    #[test]
    fn validity_period_refusals_say_so() {
        // The same PDU would be refused again: final for this message, with a reason that
        // points at the validity period rather than the number.
        assert!(cms_reason(198).contains("validity period format"));
        assert!(cms_reason(199).contains("validity period"));
        for n in [198, 199] {
            assert_eq!(
                crate::channel::sms::at::classify_cms(n),
                crate::channel::sms::at::CmsClass::PermanentForNumber
            );
        }
    }
}
