//! The owner task of one modem: open the port (again, with back-off, after an unplug),
//! initialise the modem, serve send requests and status reports, probe its health, and reset it
//! when it stops answering. The send path itself (PDUs, prompt, hand-over, answers) is in
//! `owner/send.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::port::{Conn, Final, LinkError, reg_stat, reg_word};
use super::{ModemError, ModemState, ModemStatus, Request, SendResult, lock};
use crate::channel::sms::at::{
    PinState, Registration, Urc, parse_cops, parse_cpin, parse_csca, parse_csq,
};
use crate::channel::sms::pdu;
use crate::channel::{ChannelKind, Receipt, ReceiptStatus, ReceiptTx};
use crate::clock::SharedClock;
use crate::config::ModemConfig;

mod send;

/// First and longest wait between attempts to reopen a lost port.
const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// How long a sent message waits for its status report.
const REPORT_WINDOW: Duration = Duration::from_secs(72 * 3600);
/// Sent messages remembered for status-report matching.
const MAX_TRACKED: usize = 1024;

struct Tracked {
    provider_id: String,
    to: String,
    pending: Vec<u8>,
    at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum News {
    Nothing,
    Registration,
    Rebooted,
}

enum Exit {
    Shutdown,
    Lost,
    NoAnswer,
    Reinit,
}

enum After {
    Nothing,
    Sick(String),
    Recover,
    Lost,
    Reinit,
}

pub(super) struct Owner {
    name: String,
    cfg: ModemConfig,
    receipts: ReceiptTx,
    clock: SharedClock,
    status: Arc<Mutex<ModemStatus>>,
    progress: Arc<AtomicU64>,
    rx: mpsc::Receiver<Request>,
    concat_ref: u8,
    tracked: VecDeque<Tracked>,
    pin_rejected: bool,
    huawei: bool,
    /// The modem runs SMS phase 2+: each +CDS needs an AT+CNMA.
    cnma: bool,
    /// Status reports received and not yet acknowledged.
    acks_due: u32,
}

fn permanent(reason: String) -> SendResult {
    SendResult::Permanent { code: None, reason }
}

fn same_number(a: &str, b: &str) -> bool {
    a.trim_start_matches('+') == b.trim_start_matches('+')
}

impl Owner {
    /// An owner for `cfg`, reporting through `status` and `progress`, taking requests on `rx`.
    pub(super) fn new(
        cfg: ModemConfig,
        receipts: ReceiptTx,
        clock: SharedClock,
        status: Arc<Mutex<ModemStatus>>,
        progress: Arc<AtomicU64>,
        rx: mpsc::Receiver<Request>,
    ) -> Owner {
        Owner {
            name: cfg.name.clone(),
            cfg,
            receipts,
            clock,
            status,
            progress,
            rx,
            concat_ref: 0,
            tracked: VecDeque::new(),
            pin_rejected: false,
            huawei: false,
            cnma: false,
            acks_due: 0,
        }
    }

    fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn state(&self) -> ModemState {
        lock(&self.status).state
    }

    fn set_state(&self, state: ModemState, detail: impl Into<String>) {
        self.change_state(state, detail.into(), false);
    }

    /// Like `set_state`, but a change is logged at WARN: the port is missing or lost, which an
    /// admin must hear about even while the daemon reports ready on another channel.
    fn set_port_trouble(&self, state: ModemState, detail: impl Into<String>) {
        self.change_state(state, detail.into(), true);
    }

    fn change_state(&self, state: ModemState, detail: String, loud: bool) {
        let mut s = lock(&self.status);
        if s.state != state {
            if loud {
                warn!(modem = %self.name, from = %s.state, to = %state, detail = %detail, "modem state");
            } else {
                info!(modem = %self.name, from = %s.state, to = %state, detail = %detail, "modem state");
            }
        }
        s.state = state;
        s.detail = detail;
    }

    pub(super) async fn run(mut self) {
        let mut backoff = REOPEN_MIN;
        loop {
            self.tick();
            match Conn::open(&self.cfg.device, self.cfg.baud) {
                Err(e) => {
                    let state = match e {
                        ModemError::PermissionDenied(_) | ModemError::Busy(_) => ModemState::Error,
                        _ => ModemState::Unplugged,
                    };
                    self.set_port_trouble(state, e.to_string());
                    if !self.idle_wait(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(REOPEN_MAX);
                }
                Ok(conn) => {
                    backoff = REOPEN_MIN;
                    debug!(modem = %self.name, "port opened");
                    self.set_state(ModemState::Starting, "port opened");
                    match self.session(conn).await {
                        Exit::Shutdown => return,
                        _ => self.set_port_trouble(ModemState::Unplugged, "port lost (unplugged?)"),
                    }
                }
            }
        }
    }

    /// Waits `d` while answering requests with NotReady; false when told to shut down.
    async fn idle_wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            self.tick();
            if Instant::now() >= until {
                return true;
            }
            // Wake at least every second so the heartbeat shows a live loop while waiting.
            let wake = until.min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                req = self.rx.recv() => match req {
                    None | Some(Request::Shutdown) => return false,
                    Some(Request::Send { reply, .. }) => {
                        let _ = reply.send(SendResult::NotReady { state: self.state() });
                    }
                },
            }
        }
    }

    async fn session(&mut self, mut conn: Conn) -> Exit {
        let mut backoff = Duration::from_secs(1);
        loop {
            let exit = match self.init(&mut conn).await {
                Err(LinkError::Lost(_)) => return Exit::Lost,
                Err(LinkError::Timeout) => Exit::NoAnswer,
                Ok(false) => Exit::Reinit,
                Ok(true) => self.serve(&mut conn).await,
            };
            match exit {
                Exit::Shutdown | Exit::Lost => return exit,
                Exit::Reinit => {}
                Exit::NoAnswer => {
                    self.set_state(ModemState::NoAnswer, "modem stopped answering; resetting");
                    match self.reset(&mut conn).await {
                        Ok(true) => backoff = Duration::from_secs(1),
                        Ok(false) => {
                            if !self.idle_wait(backoff).await {
                                return Exit::Shutdown;
                            }
                            backoff = (backoff * 2).min(REOPEN_MAX);
                        }
                        Err(LinkError::Lost(_)) => return Exit::Lost,
                        Err(LinkError::Timeout) => {}
                    }
                }
            }
        }
    }

    /// ESC, AT, then ATZ, then AT+CFUN=1,1: true once the modem answers again.
    async fn reset(&mut self, conn: &mut Conn) -> Result<bool, LinkError> {
        let t = self.cfg.command_timeout;
        conn.escape().await?;
        for cmd in ["AT", "ATZ", "AT+CFUN=1,1"] {
            match conn.command(cmd, t).await {
                Ok(r) if r.ok() => {
                    info!(modem = %self.name, command = cmd, "modem answers again");
                    if cmd == "AT+CFUN=1,1" {
                        // It reboots; the boot banner (or nothing) comes within seconds.
                        let _ = conn
                            .next_event(Instant::now() + Duration::from_secs(5))
                            .await;
                    }
                    return Ok(true);
                }
                Ok(_) | Err(LinkError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Sets the modem up from scratch; the state word says how that ended. Ok(false) when the
    /// modem restarted half-way (its boot banner came during set-up), so it must start over.
    async fn init(&mut self, conn: &mut Conn) -> Result<bool, LinkError> {
        self.handshake(conn).await?;
        // Lines that came before the modem answered belong to its start-up: a boot banner
        // there is the power-on we are about to set up, not a reboot to react to.
        if self.handle_unsolicited(conn) == News::Rebooted {
            debug!(modem = %self.name, "boot banner before the first answer: modem just started");
        }
        let t = self.cfg.command_timeout;
        conn.command("ATE0", t).await?;
        // Verbose result codes: at.rs does not take a bare digit for a final result.
        conn.command("ATV1", t).await?;
        conn.command("AT+CMEE=1", t).await?;
        let verdict = if self.check_sim(conn).await? {
            let registration = self.identify(conn).await?;
            self.setup_sms(conn).await?.then_some(registration)
        } else {
            None
        };
        if self.handle_unsolicited(conn) == News::Rebooted {
            info!(modem = %self.name, "modem restarted during set-up; setting it up again");
            return Ok(false);
        }
        if let Some((state, detail)) = verdict {
            self.set_state(state, detail);
        }
        Ok(true)
    }

    /// ESC to end a half-open prompt, AT until the modem answers OK (three tries), then the
    /// dialogue brought in step: a late answer to the ESC line must not shift every answer.
    async fn handshake(&mut self, conn: &mut Conn) -> Result<(), LinkError> {
        let t = self.cfg.command_timeout;
        conn.escape().await?;
        let mut alive = false;
        for _ in 0..3 {
            match conn.command("AT", t).await {
                Ok(r) if r.ok() => {
                    alive = true;
                    break;
                }
                Ok(_) | Err(LinkError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        if !alive {
            return Err(LinkError::Timeout);
        }
        if !conn.sync(t).await? {
            debug!(modem = %self.name, "no AT+CMEE? answer line; dialogue not checked");
        }
        Ok(())
    }

    /// Who the modem is, its signal and where it is registered (kept in the status); answers
    /// the state it should take once set up: Ready or NotRegistered.
    async fn identify(&mut self, conn: &mut Conn) -> Result<(ModemState, String), LinkError> {
        let t = self.cfg.command_timeout;
        let manufacturer = conn.command("AT+CGMI", t).await?.value();
        let model = conn.command("AT+CGMM", t).await?.value();
        conn.command("AT+CGMR", t).await?;
        let imei = conn.command("AT+CGSN", t).await?.value();
        conn.command("AT+CIMI", t).await?;
        self.huawei = manufacturer
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains("huawei"));
        let creg = conn.command("AT+CREG?", t).await?;
        let cereg = conn.command("AT+CEREG?", t).await?;
        let stat = reg_stat(&creg);
        let estat = reg_stat(&cereg);
        let registered =
            stat.is_some_and(Registration::is_usable) || estat.is_some_and(Registration::is_usable);
        let signal = conn.command("AT+CSQ", t).await?.parse(parse_csq);
        let operator = conn.command("AT+COPS?", t).await?.parse(parse_cops);
        {
            let mut s = lock(&self.status);
            s.manufacturer = manufacturer;
            s.model = model;
            s.imei = imei;
            s.signal_dbm = signal.and_then(|g| g.dbm());
            s.operator = operator.clone();
        }
        Ok(if registered {
            (ModemState::Ready, operator.unwrap_or_default())
        } else {
            let detail = format!("CREG: {}", reg_word(stat.or(estat)));
            (ModemState::NotRegistered, detail)
        })
    }

    /// PDU mode, an SMSC, status-report routing and quiet URCs. Ok(false) when the modem
    /// cannot send (the Error state says why).
    async fn setup_sms(&mut self, conn: &mut Conn) -> Result<bool, LinkError> {
        let t = self.cfg.command_timeout;
        let cmgf = conn.command("AT+CMGF=0", t).await?;
        if !cmgf.ok() {
            self.set_state(
                ModemState::Error,
                format!("PDU mode refused (AT+CMGF=0: {})", cmgf.fin),
            );
            return Ok(false);
        }
        let csca = conn.command("AT+CSCA?", t).await?;
        let smsc = csca.parse(parse_csca);
        if smsc.is_none() && self.cfg.smsc.is_none() {
            self.set_state(
                ModemState::Error,
                "no SMSC address on the SIM (AT+CSCA? is empty): set smsc in the modem config",
            );
            return Ok(false);
        }
        if self.cfg.status_reports {
            let r = conn.command("AT+CNMI=2,1,0,1,0", t).await?;
            if !r.ok() {
                warn!(modem = %self.name, result = %r.fin, "status reports not available");
            }
            // Phase 2+ (AT+CSMS=1, some firmware's default) wants every +CDS acknowledged
            // with AT+CNMA, or the modem stops routing reports; phase 2 (0) must not ack.
            let csms = conn.command("AT+CSMS?", t).await?;
            self.cnma = csms
                .parse(|l| {
                    l.strip_prefix("+CSMS:")
                        .and_then(|v| v.split(',').next())
                        .and_then(|v| v.trim().parse::<u8>().ok())
                })
                .is_some_and(|service| service == 1);
        }
        if self.huawei {
            // Silences ^RSSI/^MODE/^BOOT chatter; older firmware refuses it, which is fine.
            conn.command("AT^CURC=0", t).await?;
        }
        Ok(true)
    }

    /// AT+CPIN? and the PIN, once. Ok(false) when the SIM blocks further use.
    async fn check_sim(&mut self, conn: &mut Conn) -> Result<bool, LinkError> {
        let t = self.cfg.command_timeout;
        for round in 0..10 {
            let r = conn.command("AT+CPIN?", t).await?;
            // A +CME ERROR answer (10 not inserted, 13 failure...) says as much as +CPIN: does.
            let state = match &r.fin {
                Final::Ok => r.parse(parse_cpin),
                Final::Cme(Some(n)) => PinState::from_cme(*n),
                _ => None,
            };
            match state {
                Some(PinState::Ready) => return Ok(true),
                Some(PinState::SimPin) if round == 0 => {}
                Some(PinState::SimPin) | Some(PinState::NotReady) => {
                    // The PIN was taken but the SIM is not ready yet: give it a moment.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Some(PinState::SimPuk) => {
                    self.set_state(ModemState::PukNeeded, "SIM locked: it needs its PUK");
                    return Ok(false);
                }
                Some(PinState::NotInserted) => {
                    self.set_state(ModemState::NoSim, "no SIM inserted");
                    return Ok(false);
                }
                Some(PinState::Failure) => {
                    self.set_state(ModemState::NoSim, format!("SIM failure ({})", r.fin));
                    return Ok(false);
                }
                Some(other) => {
                    self.set_state(ModemState::Error, format!("SIM asks for {other:?}"));
                    return Ok(false);
                }
                None => {
                    self.set_state(ModemState::Error, format!("AT+CPIN? answered {}", r.fin));
                    return Ok(false);
                }
            }
            if self.pin_rejected {
                self.set_state(
                    ModemState::PinRejected,
                    "the configured PIN was rejected; not retried until the config changes",
                );
                return Ok(false);
            }
            let Some(pin) = self.cfg.pin.clone() else {
                self.set_state(
                    ModemState::PinNeeded,
                    "the SIM asks for a PIN; none configured",
                );
                return Ok(false);
            };
            let r = conn
                .command(&format!("AT+CPIN=\"{}\"", pin.expose()), t)
                .await?;
            if !r.ok() {
                // Never again: each wrong try brings the SIM closer to its PUK lock.
                self.pin_rejected = true;
                self.set_state(
                    ModemState::PinRejected,
                    format!("the configured PIN was rejected ({})", r.fin),
                );
                return Ok(false);
            }
            info!(modem = %self.name, "PIN accepted");
        }
        self.set_state(ModemState::Error, "SIM still not ready after 5 s");
        Ok(false)
    }

    async fn serve(&mut self, conn: &mut Conn) -> Exit {
        let mut next_probe = Instant::now() + self.cfg.probe_interval;
        loop {
            self.tick();
            match self.handle_unsolicited(conn) {
                News::Rebooted => {
                    info!(modem = %self.name, "modem rebooted; setting it up again");
                    return Exit::Reinit;
                }
                // Look now rather than trust one URC: +CREG and +CEREG may disagree on LTE.
                News::Registration => next_probe = Instant::now(),
                News::Nothing => {}
            }
            while self.acks_due > 0 {
                self.acks_due -= 1;
                match conn.command("AT+CNMA", self.cfg.command_timeout).await {
                    Ok(_) => {}
                    Err(LinkError::Timeout) => return Exit::NoAnswer,
                    Err(LinkError::Lost(_)) => return Exit::Lost,
                }
            }
            tokio::select! {
                req = self.rx.recv() => match req {
                    None | Some(Request::Shutdown) => return Exit::Shutdown,
                    Some(Request::Send { job, claim, reply }) => {
                        let state = self.state();
                        if state != ModemState::Ready {
                            let _ = reply.send(SendResult::NotReady { state });
                            continue;
                        }
                        if !claim.start() {
                            continue;
                        }
                        let (result, after) = self.send(conn, &job, &claim).await;
                        let _ = reply.send(result);
                        match after {
                            After::Nothing => {}
                            After::Sick(detail) => {
                                self.set_state(ModemState::Error, detail);
                                next_probe = Instant::now() + self.cfg.probe_interval;
                            }
                            After::Recover => return Exit::NoAnswer,
                            After::Lost => return Exit::Lost,
                            After::Reinit => return Exit::Reinit,
                        }
                    }
                },
                r = conn.fill() => {
                    if r.is_err() {
                        return Exit::Lost;
                    }
                }
                // An idle loop still turns once a second, so the heartbeat tells idle from wedged.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(next_probe) => {
                    next_probe = Instant::now() + self.cfg.probe_interval;
                    match self.state() {
                        ModemState::Ready | ModemState::NotRegistered => {
                            match self.probe_health(conn).await {
                                Ok(()) => {}
                                Err(LinkError::Timeout) => return Exit::NoAnswer,
                                Err(LinkError::Lost(_)) => return Exit::Lost,
                            }
                        }
                        // SIM, SMSC or modem errors: look again from the start.
                        _ => return Exit::Reinit,
                    }
                }
            }
        }
    }

    async fn probe_health(&mut self, conn: &mut Conn) -> Result<(), LinkError> {
        let t = self.cfg.command_timeout;
        let creg = reg_stat(&conn.command("AT+CREG?", t).await?);
        let cereg = reg_stat(&conn.command("AT+CEREG?", t).await?);
        let signal = conn.command("AT+CSQ", t).await?.parse(parse_csq);
        lock(&self.status).signal_dbm = signal.and_then(|g| g.dbm());
        let usable = [creg, cereg].into_iter().flatten().find(|r| r.is_usable());
        if let Some(reg) = usable.or(creg).or(cereg) {
            self.registration(reg);
        }
        Ok(())
    }

    fn registration(&self, reg: Registration) {
        match (self.state(), reg.is_usable()) {
            (ModemState::Ready, false) => self.set_state(
                ModemState::NotRegistered,
                format!("CREG: {}", reg_word(Some(reg))),
            ),
            (ModemState::NotRegistered, true) => {
                let op = lock(&self.status).operator.clone().unwrap_or_default();
                self.set_state(ModemState::Ready, op);
            }
            _ => {}
        }
    }

    /// Handles queued URCs; says whether the modem rebooted or its registration changed.
    fn handle_unsolicited(&mut self, conn: &mut Conn) -> News {
        let mut news = News::Nothing;
        while let Some(urc) = conn.unsolicited.pop_front() {
            match urc {
                Urc::StatusReport { pdu_hex } => {
                    self.status_report(&pdu_hex);
                    if self.cnma {
                        self.acks_due = self.acks_due.saturating_add(1);
                    }
                }
                // The caller knows whether this is a start-up or a reboot, and says so.
                Urc::Boot => news = News::Rebooted,
                Urc::Registration { .. } => {
                    if news == News::Nothing {
                        news = News::Registration;
                    }
                }
                Urc::Signal(sig) => lock(&self.status).signal_dbm = sig.dbm(),
                Urc::Other(l) => {
                    // Only the URC's name: its arguments are untrusted and may be long.
                    let kind: String = l.split(':').next().unwrap_or("").chars().take(16).collect();
                    trace!(modem = %self.name, urc = %kind, "URC");
                }
                other => debug!(modem = %self.name, urc = ?other, "URC ignored"),
            }
        }
        news
    }

    fn status_report(&mut self, hex: &str) {
        let Ok(bytes) = hex::decode(hex) else {
            warn!(modem = %self.name, "status report is not hex");
            return;
        };
        let Ok(sr) = pdu::decode_status_report(&bytes) else {
            warn!(modem = %self.name, bytes = bytes.len(), "undecodable status report");
            return;
        };
        let now = Instant::now();
        self.tracked
            .retain(|t| now.saturating_duration_since(t.at) < REPORT_WINDOW);
        let mr = sr.message_reference;
        let Some(idx) = self
            .tracked
            .iter()
            .rposition(|t| t.pending.contains(&mr) && same_number(&t.to, &sr.recipient))
        else {
            debug!(modem = %self.name, mr, "status report for no known message");
            return;
        };
        let status = match sr.class {
            pdu::ReportClass::Delivered => {
                let t = &mut self.tracked[idx];
                t.pending.retain(|m| *m != mr);
                if !t.pending.is_empty() {
                    return;
                }
                ReceiptStatus::Delivered
            }
            pdu::ReportClass::Pending => ReceiptStatus::Pending,
            pdu::ReportClass::Failed => ReceiptStatus::Failed {
                code: Some(format!("ST {:#04x}", sr.status)),
            },
        };
        let provider_id = if matches!(status, ReceiptStatus::Pending) {
            self.tracked[idx].provider_id.clone()
        } else {
            match self.tracked.remove(idx) {
                Some(t) => t.provider_id,
                None => return,
            }
        };
        debug!(modem = %self.name, provider_id = %provider_id, status = sr.status, "status report");
        let receipt = Receipt {
            channel: ChannelKind::Sms,
            provider_id,
            status,
            at: self.clock.now(),
        };
        if self.receipts.try_send(receipt).is_err() {
            warn!(modem = %self.name, "receipt queue full or closed; status report dropped");
        }
    }
}
