//! AT command parsing on bytes (3GPP TS 27.007, 27.005, V.250), with no I/O.
//!
//! Three layers, each usable alone:
//! - [`LineReader`] cuts the modem's byte stream into lines and the `> ` prompt of `AT+CMGS`.
//! - [`classify_in`] tells a final result, an unsolicited result code (URC) and an information
//!   line apart, given the command that is pending.
//! - [`Dialogue`] is the state machine of one command exchange: it drops the echo, completes
//!   two-line URCs (`+CDS`, `+CMT`) and hands back [`Event`]s, so the I/O layer only moves bytes.
//!
//! Parsers for the information lines the modem owner needs (`+CREG`, `+CSQ`, `+CPIN`...) and
//! the classification of `+CMS`/`+CME` error codes complete the module.
//!
//! Every modem reply is untrusted: nothing here panics or grows without bound on any input.
//! Numeric result codes (ATV0: "0" for OK, "4" for ERROR) are deliberately NOT accepted: a bare
//! digit is also a legitimate information line (answers to vendor commands, a PDU echo cut by
//! noise), and mistaking it for a final result would end an exchange early. The modem owner
//! should send ATV1 during init instead.

use std::collections::VecDeque;

/// Longest line kept; a modem spewing bytes without line ends must not grow memory.
pub const MAX_LINE: usize = 4096;

/// A unit of modem output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtToken {
    /// One line, without its line end (lossy UTF-8, at most [`MAX_LINE`] bytes of input).
    Line(String),
    /// The `> ` prompt after `AT+CMGS=<n>`: the modem waits for the PDU.
    Prompt,
}

/// Cuts modem bytes into [`AtToken`]s. Feed with [`LineReader::push`], drain with
/// [`LineReader::next`] until it returns None.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: VecDeque<u8>,
    expect_prompt: bool,
    /// The prompt was a bare '>' so far: its space may still arrive in a later push.
    swallow_space: bool,
}

impl LineReader {
    /// A reader with an empty buffer, not expecting a prompt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the modem.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
    }

    /// Whether a `>` prompt may come next (set after writing `AT+CMGS=<n>\r`). Only then is a
    /// '>' at the start of pending output taken as the prompt; it is reset once the prompt is seen.
    pub fn expect_prompt(&mut self, expected: bool) {
        self.expect_prompt = expected;
    }

    /// Bytes buffered but not yet returned (at most about [`MAX_LINE`] after draining).
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// The next complete token, if any.
    #[allow(clippy::should_implement_trait)] // Not an Iterator: None means "need more bytes".
    pub fn next(&mut self) -> Option<AtToken> {
        loop {
            if self.swallow_space {
                match self.buf.front() {
                    None => return None,
                    Some(b' ') => {
                        self.buf.pop_front();
                        self.swallow_space = false;
                    }
                    Some(_) => self.swallow_space = false,
                }
            }
            while matches!(self.buf.front(), Some(b'\r' | b'\n')) {
                self.buf.pop_front();
            }
            if self.expect_prompt && self.buf.front() == Some(&b'>') {
                self.buf.pop_front();
                self.expect_prompt = false;
                self.swallow_space = true;
                return Some(AtToken::Prompt);
            }
            let end = self
                .buf
                .iter()
                .take(MAX_LINE + 1)
                .position(|&b| b == b'\r' || b == b'\n');
            let cut = match end {
                Some(i) => i.min(MAX_LINE),
                None if self.buf.len() >= MAX_LINE => MAX_LINE,
                None => return None,
            };
            let line: Vec<u8> = self.buf.drain(..cut).collect();
            if line.is_empty() {
                continue;
            }
            return Some(AtToken::Line(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// A final result code: the command exchange is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalResult {
    /// `OK`.
    Ok,
    /// `ERROR`.
    Error,
    /// `+CME ERROR: <err>` (27.007 9.2).
    CmeError(ErrorCode),
    /// `+CMS ERROR: <err>` (27.005 3.2.5).
    CmsError(ErrorCode),
    /// `NO CARRIER`, only while a call command (ATD/ATA/ATO) is pending.
    NoCarrier,
    /// Huawei's `COMMAND NOT SUPPORT`.
    CommandNotSupport,
}

/// The `<err>` of `+CME ERROR` / `+CMS ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Numeric form (AT+CMEE=1), or a verbose text we know the number of.
    Numeric(u16),
    /// Verbose text with no known number.
    Text(String),
}

impl ErrorCode {
    /// The number, when known.
    pub fn number(&self) -> Option<u16> {
        match self {
            ErrorCode::Numeric(n) => Some(*n),
            ErrorCode::Text(_) => None,
        }
    }
}

/// An unsolicited result code: modem news that may arrive at any time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Urc {
    /// `+CREG:`/`+CEREG:`/`+CGREG:` with the registration `<stat>` (see [`Registration`]).
    /// The three are not told apart: on LTE-only networks +CREG may say 0 while +CEREG says 1,
    /// so a caller that cares re-reads the state with AT+CREG?/AT+CEREG?.
    Registration {
        /// `<stat>` per 27.007 7.2.
        stat: u8,
    },
    /// An incoming SMS: `+CMTI` (stored) or `+CMT` (routed; reported after its PDU line).
    NewMessage,
    /// `+CDS: <len>` and its PDU line: a status report to decode with
    /// [`super::pdu::decode_status_report`].
    StatusReport {
        /// The PDU line, as hex.
        pdu_hex: String,
    },
    /// `+CDSI: <mem>,<index>`: a status report stored at `index`.
    StatusReportStored {
        /// Storage index.
        index: u32,
    },
    /// `RING` / `+CRING:`: an incoming call.
    Ring,
    /// Huawei `^RSSI: <rssi>`, same scale as `+CSQ`.
    Signal(Signal),
    /// The modem (re)started (`RDY`, `^SYSSTART`): echo and settings are back to defaults.
    Boot,
    /// Any other URC, as its trimmed line (`^BOOT`, `^MODE`, `+CPIN:`, `+QIND:`, `SMS DONE`...).
    Other(String),
}

/// What a line from the modem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// The pending command has ended.
    Final(FinalResult),
    /// Unsolicited news.
    Urc(Urc),
    /// Part of the pending command's answer (trimmed).
    Info(String),
}

/// Trims spaces, line ends, NULs and the Ctrl-Z/ESC bytes that surround lines in practice.
fn clean(line: &str) -> &str {
    line.trim_matches(|c: char| c.is_whitespace() || matches!(c, '\0' | '\u{1A}' | '\u{1B}'))
}

/// Verbose +CME texts with small, stable numbers (27.007 9.2.1).
const CME_TEXTS: [(&str, u16); 7] = [
    ("SIM not inserted", 10),
    ("SIM PIN required", 11),
    ("SIM PUK required", 12),
    ("SIM failure", 13),
    ("SIM busy", 14),
    ("incorrect password", 16),
    ("no network service", 30),
];

/// Verbose +CMS texts (27.005 3.2.5) the modem owner acts on.
const CMS_TEXTS: [(&str, u16); 9] = [
    ("ME failure", 300),
    ("operation not allowed", 302),
    ("invalid PDU mode parameter", 304),
    ("SIM not inserted", 310),
    ("SIM PIN required", 311),
    ("SIM busy", 314),
    ("SMSC address unknown", 330),
    ("no network service", 331),
    ("network timeout", 332),
];

fn error_code(rest: &str, table: &[(&str, u16)]) -> ErrorCode {
    let t = rest.trim().trim_matches('"').trim();
    if let Ok(n) = t.parse::<u16>() {
        return ErrorCode::Numeric(n);
    }
    table
        .iter()
        .find(|(text, _)| text.eq_ignore_ascii_case(t))
        .map_or_else(
            || ErrorCode::Text(t.to_owned()),
            |&(_, n)| ErrorCode::Numeric(n),
        )
}

/// Case-insensitive prefix strip.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The answer prefix of a command: "AT+CREG?" -> "+CREG:", "AT^SYSINFO" -> "^SYSINFO:".
fn answer_prefix(command: &str) -> Option<String> {
    let body = strip_prefix_ci(clean(command), "AT")?;
    if !body.starts_with(['+', '^', '$', '%', '*']) {
        return None;
    }
    let name: String = body
        .chars()
        .take_while(|c| !matches!(c, '=' | '?' | ';' | ' ' | '\r'))
        .collect();
    (name.len() > 1).then(|| format!("{}:", name.to_ascii_uppercase()))
}

fn is_call_command(command: &str) -> bool {
    let c = clean(command).to_ascii_uppercase();
    ["ATD", "ATA", "ATO"].iter().any(|p| c.starts_with(p))
}

/// Fields after the first ':', split at commas outside quotes, trimmed; quotes removed.
/// The bool says whether the field was quoted.
fn fields(line: &str) -> Vec<(String, bool)> {
    let rest = line.split_once(':').map_or(line, |(_, r)| r);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    for c in rest.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                quoted = true;
            }
            ',' if !in_quotes => {
                out.push((cur.trim().to_owned(), quoted));
                cur.clear();
                quoted = false;
            }
            _ => cur.push(c),
        }
    }
    out.push((cur.trim().to_owned(), quoted));
    out
}

fn field_num<T: std::str::FromStr>(f: Option<&(String, bool)>) -> Option<T> {
    f.and_then(|(s, _)| s.parse().ok())
}

/// Prefixes of URCs reported as [`Urc::Other`]: known noise and news without a dedicated variant.
const OTHER_URCS: [&str; 24] = [
    "+CUSD:",
    "+CLIP:",
    "+CPIN:",
    "+CFUN:",
    "+QIND:",
    "+QUSIM:",
    "+CMGRMI:",
    "+CTZV:",
    "+CTZE:",
    "+CIEV:",
    "+PACSP",
    "+CSQN:",
    "^BOOT:",
    "^MODE:",
    "^HCSQ:",
    "^DSFLOWRPT:",
    "^SRVST:",
    "^SIMST:",
    "^NWTIME:",
    "^SYSINFOEX:",
    "^CEND:",
    "^ORIG:",
    "^CONF:",
    "^CONN:",
];

/// Whole-line URCs reported as [`Urc::Other`].
const OTHER_WORDS: [&str; 5] = [
    "PB DONE",
    "SMS DONE",
    "CALL READY",
    "SMS READY",
    "NO CARRIER",
];

/// Classifies a line with no command context: same as `classify_in(line, None)`.
pub fn classify(line: &str) -> LineKind {
    classify_in(line, None)
}

/// Classifies one line given the pending command (e.g. "AT+CREG?"). A line carrying the pending
/// command's own prefix ("+CREG:" while "AT+CREG?" is pending) is its answer, not a URC.
///
/// `+CDS:`/`+CMT:` header lines come back as `Urc::Other`: their PDU is on the next line, which
/// only [`Dialogue`] can attach. `NO CARRIER` is final only while ATD/ATA/ATO is pending, so a
/// stray one cannot end an unrelated command.
pub fn classify_in(line: &str, pending_command: Option<&str>) -> LineKind {
    let t = clean(line);
    let upper = t.to_ascii_uppercase();
    match upper.as_str() {
        "OK" => return LineKind::Final(FinalResult::Ok),
        "ERROR" => return LineKind::Final(FinalResult::Error),
        "COMMAND NOT SUPPORT" => return LineKind::Final(FinalResult::CommandNotSupport),
        "NO CARRIER" if pending_command.is_some_and(is_call_command) => {
            return LineKind::Final(FinalResult::NoCarrier);
        }
        "RING" => return LineKind::Urc(Urc::Ring),
        "RDY" | "^SYSSTART" => return LineKind::Urc(Urc::Boot),
        _ => {}
    }
    if let Some(rest) = strip_prefix_ci(t, "+CME ERROR:") {
        return LineKind::Final(FinalResult::CmeError(error_code(rest, &CME_TEXTS)));
    }
    if let Some(rest) = strip_prefix_ci(t, "+CMS ERROR:") {
        return LineKind::Final(FinalResult::CmsError(error_code(rest, &CMS_TEXTS)));
    }
    if let Some(prefix) = pending_command.and_then(answer_prefix) {
        if upper.starts_with(&prefix) {
            return LineKind::Info(t.to_owned());
        }
    }
    if ["+CREG:", "+CEREG:", "+CGREG:"]
        .iter()
        .any(|p| upper.starts_with(p))
    {
        // Usually the unsolicited form, but a late answer to an abandoned AT+CREG? has the
        // answer form: reg_stat tells them apart.
        return match reg_stat(t) {
            Some(stat) => LineKind::Urc(Urc::Registration { stat }),
            None => LineKind::Urc(Urc::Other(t.to_owned())),
        };
    }
    if upper.starts_with("+CMTI:") {
        return LineKind::Urc(Urc::NewMessage);
    }
    if upper.starts_with("+CDSI:") {
        return LineKind::Urc(match field_num::<u32>(fields(t).last()) {
            Some(index) => Urc::StatusReportStored { index },
            None => Urc::Other(t.to_owned()),
        });
    }
    if upper.starts_with("+CRING:") {
        return LineKind::Urc(Urc::Ring);
    }
    if upper.starts_with("^RSSI:") {
        let rssi = field_num::<u8>(fields(t).first());
        return LineKind::Urc(match rssi.filter(|&r| r <= 31 || r == 99) {
            Some(rssi) => Urc::Signal(Signal { rssi, ber: 99 }),
            None => Urc::Other(t.to_owned()),
        });
    }
    if upper.starts_with("+CDS:")
        || upper.starts_with("+CMT:")
        || OTHER_URCS.iter().any(|p| upper.starts_with(p))
        || OTHER_WORDS.contains(&upper.as_str())
    {
        return LineKind::Urc(Urc::Other(t.to_owned()));
    }
    LineKind::Info(t.to_owned())
}

/// What [`Dialogue::feed`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The modem echoed the command (or the PDU); dropped, reported for tracing only.
    Echo,
    /// A line of the pending command's answer.
    Info(String),
    /// The `> ` prompt: write the PDU and Ctrl-Z now.
    Prompt,
    /// The command ended. With no command pending this is a stale result (from a command
    /// that timed out) and should be ignored.
    Final(FinalResult),
    /// Unsolicited news, to be handled whether or not a command is pending.
    Urc(Urc),
}

/// Which two-line URC is waiting for its second line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SecondLine {
    Cds,
    Cmt,
}

/// The state machine of command exchanges on one modem port; keep one per port for its life,
/// since URCs arrive between commands too.
#[derive(Debug, Default)]
pub struct Dialogue {
    pending: Option<String>,
    prompt_seen: bool,
    awaiting: Option<(SecondLine, String)>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Dialogue {
    /// A dialogue with no command pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an exchange for `command` as written (without the trailing CR), e.g. "AT+CSQ".
    pub fn begin(&mut self, command: &str) {
        self.pending = Some(clean(command).to_owned());
        self.prompt_seen = false;
    }

    /// The command being answered, if any.
    pub fn pending(&self) -> Option<&str> {
        self.pending.as_deref()
    }

    /// Whether the pending command (`AT+CMGS=`, `AT+CMGW=`, `AT+CMGC=`) still waits for its
    /// `>` prompt; tell the [`LineReader`] with [`LineReader::expect_prompt`].
    pub fn expects_prompt(&self) -> bool {
        !self.prompt_seen
            && self.pending.as_deref().is_some_and(|c| {
                ["AT+CMGS=", "AT+CMGW=", "AT+CMGC="]
                    .iter()
                    .any(|p| strip_prefix_ci(c, p).is_some())
            })
    }

    /// Forgets the pending command (after a timeout); later lines are URCs or stale results.
    pub fn abandon(&mut self) {
        self.pending = None;
        self.prompt_seen = false;
    }

    /// Whether `line` carries the pending command's answer prefix.
    fn is_answer(&self, line: &str) -> bool {
        self.pending
            .as_deref()
            .and_then(answer_prefix)
            .is_some_and(|p| line.to_ascii_uppercase().starts_with(&p))
    }

    /// Whether `line` is the modem echoing what we wrote.
    fn is_echo(&self, line: &str) -> bool {
        let Some(cmd) = self.pending.as_deref() else {
            return false;
        };
        if line.eq_ignore_ascii_case(cmd) {
            return true;
        }
        // Echo of AT+CMGS, possibly merged with the prompt and the PDU echo on one line.
        if let Some(rest) = strip_prefix_ci(line, cmd) {
            let rest = clean(rest.trim_start_matches(['>', ' ']));
            return rest.is_empty() || is_hex(rest);
        }
        // The PDU we wrote after the prompt (its Ctrl-Z already trimmed by clean).
        self.prompt_seen && is_hex(line.trim_start_matches(['>', ' ']))
    }

    /// Processes one token; returns what it means, in order.
    pub fn feed(&mut self, token: AtToken) -> Vec<Event> {
        let line = match token {
            AtToken::Prompt => {
                self.prompt_seen = true;
                return vec![Event::Prompt];
            }
            AtToken::Line(l) => l,
        };
        let t = clean(&line);
        if t.is_empty() {
            return Vec::new();
        }
        if let Some((kind, header)) = self.awaiting.take() {
            let final_result = matches!(classify_in(t, None), LineKind::Final(_));
            match kind {
                SecondLine::Cds if is_hex(t) => {
                    return vec![Event::Urc(Urc::StatusReport {
                        pdu_hex: t.to_ascii_uppercase(),
                    })];
                }
                SecondLine::Cmt if !final_result => return vec![Event::Urc(Urc::NewMessage)],
                // The second line is missing: report the header alone, then handle this line.
                _ => {
                    let mut events = vec![Event::Urc(Urc::Other(header))];
                    events.extend(self.feed_line(t));
                    return events;
                }
            }
        }
        self.feed_line(t)
    }

    fn feed_line(&mut self, t: &str) -> Vec<Event> {
        if self.is_echo(t) {
            return vec![Event::Echo];
        }
        match classify_in(t, self.pending.as_deref()) {
            LineKind::Final(f) => {
                self.pending = None;
                self.prompt_seen = false;
                vec![Event::Final(f)]
            }
            LineKind::Urc(Urc::Other(s)) => {
                let upper = s.to_ascii_uppercase();
                if upper.starts_with("+CDS:") && parse_cds_len(&s).is_some() {
                    self.awaiting = Some((SecondLine::Cds, s));
                    Vec::new()
                } else if upper.starts_with("+CMT:") {
                    self.awaiting = Some((SecondLine::Cmt, s));
                    Vec::new()
                } else {
                    vec![Event::Urc(Urc::Other(s))]
                }
            }
            LineKind::Urc(u) => vec![Event::Urc(u)],
            // After the prompt only the answer line is legitimate; anything else is our PDU
            // echoed with noise in it, and it carries the code: never hand it on.
            LineKind::Info(_) if self.prompt_seen && !self.is_answer(t) => vec![Event::Echo],
            LineKind::Info(s) => vec![Event::Info(s)],
        }
    }
}

/// Network registration state (27.007 7.2 `<stat>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// 0: not registered, not searching.
    NotRegistered,
    /// 1: registered, home network.
    Home,
    /// 2: not registered, searching.
    Searching,
    /// 3: registration denied.
    Denied,
    /// 4: unknown.
    Unknown,
    /// 5: registered, roaming.
    Roaming,
    /// Any other value (6/7 SMS only, 8 emergency only, 9/10 CSFB not preferred...).
    Other(u8),
}

impl Registration {
    /// From a `<stat>` value.
    pub fn from_stat(stat: u8) -> Registration {
        match stat {
            0 => Registration::NotRegistered,
            1 => Registration::Home,
            2 => Registration::Searching,
            3 => Registration::Denied,
            4 => Registration::Unknown,
            5 => Registration::Roaming,
            n => Registration::Other(n),
        }
    }

    /// Whether SMS can be sent: registered home or roaming, including the "SMS only" (6, 7)
    /// and "CSFB not preferred" (9, 10) registrations; not "emergency only" (8).
    pub fn is_usable(self) -> bool {
        matches!(
            self,
            Registration::Home | Registration::Roaming | Registration::Other(6 | 7 | 9 | 10)
        )
    }
}

/// Parses `+CREG:`/`+CEREG:`/`+CGREG:` in the answer form `<n>,<stat>[,...]` or the URC form
/// `<stat>[,"<lac>",...]`. The forms are told apart by the second field: a bare number is
/// `<stat>`, a quoted or empty one is a location field.
pub fn parse_creg(line: &str) -> Option<Registration> {
    let t = clean(line);
    let upper = t.to_ascii_uppercase();
    if !["+CREG:", "+CEREG:", "+CGREG:"]
        .iter()
        .any(|p| upper.starts_with(p))
    {
        return None;
    }
    reg_stat(t).map(Registration::from_stat)
}

/// `<stat>` of a registration line in either form: a bare number in the second field is
/// `<stat>` (answer form `<n>,<stat>`), a quoted or empty one is a location (URC form).
fn reg_stat(line: &str) -> Option<u8> {
    let f = fields(line);
    match f.get(1) {
        Some((s, false)) if s.parse::<u8>().is_ok() => field_num(f.get(1)),
        _ => field_num(f.first()),
    }
}

/// Received signal from `+CSQ` (27.007 8.5) or Huawei `^RSSI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// 0..=31, or 99 when not known.
    pub rssi: u8,
    /// Bit error rate class 0..=7, or 99 when not known.
    pub ber: u8,
}

impl Signal {
    /// Signal strength in dBm (-113 + 2 * rssi); None when unknown.
    pub fn dbm(&self) -> Option<i32> {
        (self.rssi <= 31).then(|| -113 + 2 * i32::from(self.rssi))
    }

    /// 0-4 bars: 0 unknown or below -109 dBm, 1 marginal, 2 ok, 3 good, 4 excellent (>= -73 dBm).
    pub fn bars(&self) -> u8 {
        match self.rssi {
            2..=9 => 1,
            10..=14 => 2,
            15..=19 => 3,
            20..=31 => 4,
            _ => 0,
        }
    }
}

/// Parses `+CSQ: <rssi>,<ber>`; None if malformed or out of range.
pub fn parse_csq(line: &str) -> Option<Signal> {
    let t = clean(line);
    strip_prefix_ci(t, "+CSQ:")?;
    let f = fields(t);
    let rssi: u8 = field_num(f.first()).filter(|&r| r <= 31 || r == 99)?;
    let ber: u8 = field_num(f.get(1)).unwrap_or(99);
    Some(Signal { rssi, ber })
}

/// SIM state from `+CPIN:` (27.007 8.3) or a SIM-related `+CME ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinState {
    /// READY: no PIN needed.
    Ready,
    /// SIM PIN: enter the PIN (once: retrying a wrong PIN locks the SIM).
    SimPin,
    /// SIM PUK: locked, needs the PUK.
    SimPuk,
    /// SIM PIN2.
    SimPin2,
    /// SIM PUK2.
    SimPuk2,
    /// PH-SIM PIN: the modem is locked to another SIM.
    PhSimPin,
    /// No SIM (NOT INSERTED, +CME ERROR: 10).
    NotInserted,
    /// NOT READY or SIM busy (+CME ERROR: 14): ask again shortly.
    NotReady,
    /// SIM failure (+CME ERROR: 13).
    Failure,
    /// Any other state, as the modem wrote it.
    Other(String),
}

/// Parses `+CPIN: <code>`, or `+CME ERROR: 10/11/12/13/14` (numeric or verbose) as answers to
/// AT+CPIN? when the SIM is missing or locked.
pub fn parse_cpin(line: &str) -> Option<PinState> {
    let t = clean(line);
    if let Some(rest) = strip_prefix_ci(t, "+CPIN:") {
        let code = rest.trim().trim_matches('"').trim().to_ascii_uppercase();
        return Some(match code.as_str() {
            "READY" => PinState::Ready,
            "SIM PIN" => PinState::SimPin,
            "SIM PUK" => PinState::SimPuk,
            "SIM PIN2" => PinState::SimPin2,
            "SIM PUK2" => PinState::SimPuk2,
            "PH-SIM PIN" => PinState::PhSimPin,
            "NOT INSERTED" | "SIM REMOVED" => PinState::NotInserted,
            "NOT READY" => PinState::NotReady,
            "" => return None,
            _ => PinState::Other(code),
        });
    }
    if let LineKind::Final(FinalResult::CmeError(code)) = classify(t) {
        return PinState::from_cme(code.number()?);
    }
    None
}

impl PinState {
    /// The SIM state a `+CME ERROR: <code>` implies, for the codes that describe the SIM.
    pub fn from_cme(code: u16) -> Option<PinState> {
        match code {
            5 => Some(PinState::PhSimPin),
            10 => Some(PinState::NotInserted),
            11 => Some(PinState::SimPin),
            12 => Some(PinState::SimPuk),
            13 => Some(PinState::Failure),
            14 => Some(PinState::NotReady),
            17 => Some(PinState::SimPin2),
            18 => Some(PinState::SimPuk2),
            _ => None,
        }
    }
}

/// Parses `+CMGS: <mr>[,<scts>]`: the message reference to match status reports with.
pub fn parse_cmgs(line: &str) -> Option<u8> {
    let t = clean(line);
    strip_prefix_ci(t, "+CMGS:")?;
    field_num(fields(t).first())
}

/// Parses `+COPS: <mode>[,<format>,<oper>[,<AcT>]]` into the operator; None when not registered.
pub fn parse_cops(line: &str) -> Option<String> {
    let t = clean(line);
    strip_prefix_ci(t, "+COPS:")?;
    fields(t)
        .get(2)
        .map(|(s, _)| s.clone())
        .filter(|s| !s.is_empty())
}

/// Parses `+CSCA: "<sca>",<tosca>`; None when empty (sending would fail with +CMS ERROR: 330).
/// Modems left in AT+CSCS="UCS2" answer in hex UTF-16; that form is decoded too.
pub fn parse_csca(line: &str) -> Option<String> {
    let t = clean(line);
    strip_prefix_ci(t, "+CSCA:")?;
    let (sca, _) = fields(t).into_iter().next()?;
    let sca = if sca.len() >= 8 && sca.len() % 4 == 0 && sca.starts_with("00") && is_hex(&sca) {
        let units: Vec<u16> = sca
            .as_bytes()
            .chunks(4)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .filter_map(|c| u16::from_str_radix(c, 16).ok())
            .collect();
        String::from_utf16(&units).ok()?
    } else {
        sca
    };
    let ok = !sca.is_empty()
        && sca
            .strip_prefix('+')
            .unwrap_or(&sca)
            .bytes()
            .all(|b| b.is_ascii_digit());
    ok.then_some(sca)
}

/// Parses the `+CDS: <length>` header of a PDU-mode status report; None for the one-line
/// text-mode form.
pub fn parse_cds_len(line: &str) -> Option<usize> {
    let t = clean(line);
    strip_prefix_ci(t, "+CDS:")?;
    let f = fields(t);
    if f.len() != 1 {
        return None;
    }
    field_num(f.first())
}

/// Parses `+CMTI: <mem>,<index>` / `+CDSI: <mem>,<index>` into the storage index.
pub fn parse_stored_index(line: &str) -> Option<u32> {
    let t = clean(line);
    let upper = t.to_ascii_uppercase();
    if !(upper.starts_with("+CMTI:") || upper.starts_with("+CDSI:")) {
        return None;
    }
    field_num(fields(t).last())
}

/// What a `+CMS ERROR` / `+CME ERROR` means for the send and for the modem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmsClass {
    /// Back off and retry, on this modem, another modem or another channel.
    Transient,
    /// This message or number cannot be sent: retrying the same PDU will not help.
    PermanentForNumber,
    /// The modem or its SIM needs attention: take it out of the pool and alert.
    ModemProblem,
}

/// Classifies a `+CMS ERROR` code (27.005 3.2.5, RP causes of 24.011 E-2). Codes not listed
/// below are treated as transient, so an unknown code costs a bounded retry, not a lost SMS.
pub fn classify_cms(code: u16) -> CmsClass {
    match code {
        1 | 96 | 304 | 305 => CmsClass::PermanentForNumber,
        // TP-FCS values: the SMSC rejected the TPDU itself, i.e. our encoding.
        128..=255 => CmsClass::PermanentForNumber,
        314 => CmsClass::Transient,
        8 | 10 | 21 | 50 | 69 | 302 | 303 | 310..=318 | 320..=322 | 330 => CmsClass::ModemProblem,
        _ => CmsClass::Transient,
    }
}

/// Classifies a `+CME ERROR` code (27.007 9.2): SIM trouble takes the modem out; busy and
/// network trouble are transient; unknown codes are transient.
pub fn classify_cme(code: u16) -> CmsClass {
    match code {
        14 | 515 => CmsClass::Transient,
        5 | 10..=13 | 15..=18 => CmsClass::ModemProblem,
        30..=32 => CmsClass::Transient,
        _ => CmsClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(reader: &mut LineReader) -> Vec<AtToken> {
        std::iter::from_fn(|| reader.next()).collect()
    }

    fn lines(bytes: &[u8]) -> Vec<AtToken> {
        let mut r = LineReader::new();
        r.push(bytes);
        tokens(&mut r)
    }

    fn line(s: &str) -> AtToken {
        AtToken::Line(s.to_owned())
    }

    /// Runs a whole exchange the way the I/O layer would: `chunks` arrive in order.
    fn run(command: Option<&str>, chunks: &[&[u8]]) -> Vec<Event> {
        let mut reader = LineReader::new();
        let mut d = Dialogue::new();
        if let Some(c) = command {
            d.begin(c);
        }
        let mut events = Vec::new();
        for chunk in chunks {
            reader.expect_prompt(d.expects_prompt());
            reader.push(chunk);
            while let Some(tok) = reader.next() {
                events.extend(d.feed(tok));
                reader.expect_prompt(d.expects_prompt());
            }
        }
        events
    }

    fn info(s: &str) -> Event {
        Event::Info(s.to_owned())
    }

    const OK: Event = Event::Final(FinalResult::Ok);

    #[test]
    fn line_ends_of_every_kind() {
        let want = vec![line("A"), line("B"), line("C"), line("D")];
        assert_eq!(lines(b"A\r\nB\r\nC\r\nD\r\n"), want);
        assert_eq!(lines(b"A\rB\rC\rD\r"), want);
        assert_eq!(lines(b"A\nB\nC\nD\n"), want);
        assert_eq!(lines(b"\r\n\r\nA\n\rB\r\r\nC\n\n\nD\r"), want);
        // No line end yet: nothing.
        assert_eq!(lines(b"\r\nOK"), vec![]);
    }

    #[test]
    fn prompt_only_when_expected() {
        assert_eq!(lines(b"\r\n> "), vec![]);
        assert_eq!(lines(b"> hello\r\n"), vec![line("> hello")]);
        for input in [&b"\r\n> "[..], b"\r\n>", b"> ", b">"] {
            let mut r = LineReader::new();
            r.expect_prompt(true);
            r.push(input);
            assert_eq!(tokens(&mut r), vec![AtToken::Prompt], "{input:?}");
            assert_eq!(r.pending_len(), 0);
        }
        // Split across two pushes.
        let mut r = LineReader::new();
        r.expect_prompt(true);
        r.push(b"\r\n");
        assert_eq!(tokens(&mut r), vec![]);
        r.push(b">");
        assert_eq!(tokens(&mut r), vec![AtToken::Prompt]);
        r.push(b" ");
        assert_eq!(tokens(&mut r), vec![]);
        r.push(b"\r\n+CMGS: 7\r\n");
        assert_eq!(tokens(&mut r), vec![line("+CMGS: 7")]);
        // The prompt is taken once per expect_prompt(true).
        r.push(b"> x\r\n");
        assert_eq!(tokens(&mut r), vec![line("> x")]);
    }

    #[test]
    fn garbage_and_overlong_lines() {
        let toks = lines(b"\xFF\x00OK\xFE\r\n\x00\r\n");
        assert_eq!(toks.len(), 2);
        match &toks[0] {
            AtToken::Line(l) => assert!(l.contains("OK") && l.contains('\u{FFFD}')),
            AtToken::Prompt => panic!("prompt"),
        }
        assert_eq!(classify("\0"), LineKind::Info(String::new()));
        assert_eq!(run(None, &[b"\x00\r\n\x00OK\x00\r\n"]), vec![OK]);

        let mut r = LineReader::new();
        r.push(&[b'x'; 10_000]);
        let toks = tokens(&mut r);
        assert_eq!(
            toks,
            vec![line(&"x".repeat(MAX_LINE)), line(&"x".repeat(MAX_LINE))]
        );
        assert!(r.pending_len() < MAX_LINE);
        r.push(b"\r\nOK\r\n");
        assert_eq!(
            tokens(&mut r),
            vec![line(&"x".repeat(10_000 - 2 * MAX_LINE)), line("OK")]
        );
        // Fed byte by byte, memory stays bounded.
        let mut r = LineReader::new();
        for _ in 0..20_000 {
            r.push(b"\xFF");
            while r.next().is_some() {}
            assert!(r.pending_len() < MAX_LINE);
        }
    }

    #[test]
    fn finals_and_errors() {
        use FinalResult::*;
        let f = |s: &str| match classify(s) {
            LineKind::Final(f) => f,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(f("OK"), Ok);
        assert_eq!(f(" ok \r"), Ok);
        assert_eq!(f("ERROR"), Error);
        assert_eq!(f("COMMAND NOT SUPPORT"), CommandNotSupport);
        assert_eq!(f("+CME ERROR: 10"), CmeError(ErrorCode::Numeric(10)));
        assert_eq!(
            f("+CME ERROR: SIM PIN required"),
            CmeError(ErrorCode::Numeric(11))
        );
        assert_eq!(
            f("+CME ERROR: sim not inserted"),
            CmeError(ErrorCode::Numeric(10))
        );
        assert_eq!(
            f("+CME ERROR: phone failure"),
            CmeError(ErrorCode::Text("phone failure".into()))
        );
        assert_eq!(f("+CMS ERROR: 500"), CmsError(ErrorCode::Numeric(500)));
        assert_eq!(
            f("+CMS ERROR: SMSC address unknown"),
            CmsError(ErrorCode::Numeric(330))
        );
        assert_eq!(f("+CMS ERROR:304"), CmsError(ErrorCode::Numeric(304)));
        // Numeric result codes are not accepted.
        assert_eq!(classify("0"), LineKind::Info("0".into()));
        assert_eq!(classify("4"), LineKind::Info("4".into()));
        // NO CARRIER ends only a call command.
        assert_eq!(
            classify_in("NO CARRIER", Some("ATD123;")),
            LineKind::Final(NoCarrier)
        );
        assert_eq!(
            classify_in("NO CARRIER", Some("AT+CSQ")),
            LineKind::Urc(Urc::Other("NO CARRIER".into()))
        );
    }

    #[test]
    fn urcs_and_context() {
        assert_eq!(
            classify("+CREG: 5"),
            LineKind::Urc(Urc::Registration { stat: 5 })
        );
        // A late answer-form line (its AT+CREG? abandoned) still yields the right <stat>.
        assert_eq!(
            classify("+CREG: 0,1"),
            LineKind::Urc(Urc::Registration { stat: 1 })
        );
        assert_eq!(
            classify("+CEREG: 1,\"00C3\",\"0102AB3\",7"),
            LineKind::Urc(Urc::Registration { stat: 1 })
        );
        assert_eq!(
            classify_in("+CREG: 0,1", Some("AT+CREG?")),
            LineKind::Info("+CREG: 0,1".into())
        );
        assert_eq!(
            classify_in("+CGREG: 1", Some("AT+CREG?")),
            LineKind::Urc(Urc::Registration { stat: 1 })
        );
        assert_eq!(
            classify_in("+CMGS: 12", Some("AT+CMGS=23")),
            LineKind::Info("+CMGS: 12".into())
        );
        assert_eq!(
            classify_in("+CPIN: READY", Some("at+cpin?")),
            LineKind::Info("+CPIN: READY".into())
        );
        assert_eq!(
            classify("+CPIN: NOT READY"),
            LineKind::Urc(Urc::Other("+CPIN: NOT READY".into()))
        );
        assert_eq!(classify("+CMTI: \"SM\",3"), LineKind::Urc(Urc::NewMessage));
        assert_eq!(
            classify("+CDSI: \"SR\",17"),
            LineKind::Urc(Urc::StatusReportStored { index: 17 })
        );
        assert_eq!(classify("RING"), LineKind::Urc(Urc::Ring));
        assert_eq!(classify("RDY"), LineKind::Urc(Urc::Boot));
        assert_eq!(
            classify("^RSSI: 18"),
            LineKind::Urc(Urc::Signal(Signal { rssi: 18, ber: 99 }))
        );
        for other in [
            "^BOOT:20952548,0,0,0,72",
            "^MODE:5,4",
            "^HCSQ:\"LTE\",55,38,121,20",
            "^DSFLOWRPT:0000001D,00000000,00000000",
            "^SRVST:2",
            "^SIMST:1",
            "^NWTIME:26/11/28,18:30:00+4,0",
            "+QIND: SMS DONE",
            "+CFUN: 1",
            "PB DONE",
            "SMS DONE",
            "+CUSD: 0,\"x\",15",
            "+CLIP: \"+4917\",145",
        ] {
            assert_eq!(
                classify(other),
                LineKind::Urc(Urc::Other(other.into())),
                "{other}"
            );
        }
        // Unknown prefixes are answers, e.g. SIMCom's +ICCID to AT+CCID.
        assert_eq!(
            classify_in("+ICCID: 8949", Some("AT+CCID")),
            LineKind::Info("+ICCID: 8949".into())
        );
        assert_eq!(classify("Quectel"), LineKind::Info("Quectel".into()));
        assert_eq!(answer_prefix("AT^SYSINFO").as_deref(), Some("^SYSINFO:"));
        assert_eq!(answer_prefix("ATI"), None);
    }

    #[test]
    fn echo_on_and_off() {
        let want = vec![Event::Echo, info("+CSQ: 20,99"), OK];
        assert_eq!(
            run(Some("AT+CSQ"), &[b"AT+CSQ\r\r\n+CSQ: 20,99\r\n\r\nOK\r\n"]),
            want
        );
        assert_eq!(
            run(Some("AT+CSQ"), &[b"\r\n+CSQ: 20,99\r\n\r\nOK\r\n"]),
            want[1..]
        );
        // A plain command answered by a bare line.
        assert_eq!(
            run(
                Some("AT+CGSN"),
                &[b"AT+CGSN\r\r\n867962040000000\r\n\r\nOK\r\n"]
            ),
            vec![Event::Echo, info("867962040000000"), OK]
        );
    }

    #[test]
    fn creg_urc_after_ok_and_inside_answer() {
        let ev = run(
            Some("AT+CSQ"),
            &[b"\r\n+CSQ: 20,99\r\n\r\nOK\r\n\r\n+CREG: 1\r\n"],
        );
        assert_eq!(
            ev,
            vec![
                info("+CSQ: 20,99"),
                OK,
                Event::Urc(Urc::Registration { stat: 1 })
            ]
        );
        let ev = run(
            Some("AT+COPS?"),
            &[b"\r\n+COPS: 0,0,\"Vodafone.de\",7\r\n\r\n+CREG: 5\r\n\r\nOK\r\n"],
        );
        assert_eq!(
            ev,
            vec![
                info("+COPS: 0,0,\"Vodafone.de\",7"),
                Event::Urc(Urc::Registration { stat: 5 }),
                OK
            ]
        );
        // The same +CREG line is an answer while AT+CREG? is pending.
        let ev = run(
            Some("AT+CREG?"),
            &[b"\r\n+CREG: 0,1\r\n\r\nOK\r\n\r\n+CREG: 2\r\n"],
        );
        assert_eq!(
            ev,
            vec![
                info("+CREG: 0,1"),
                OK,
                Event::Urc(Urc::Registration { stat: 2 })
            ]
        );
    }

    const CDS_PDU: &str = "07911326040000F0060D0B911316325476F8112013511235401120135112354000";

    #[test]
    fn cds_in_the_middle_of_an_answer() {
        let bytes = format!("AT+CSQ\r\r\n+CDS: 26\r\n{CDS_PDU}\r\n+CSQ: 17,99\r\n\r\nOK\r\n");
        let ev = run(Some("AT+CSQ"), &[bytes.as_bytes()]);
        assert_eq!(
            ev,
            vec![
                Event::Echo,
                Event::Urc(Urc::StatusReport {
                    pdu_hex: CDS_PDU.into()
                }),
                info("+CSQ: 17,99"),
                OK
            ]
        );
        // Between commands, and with a lower-case PDU.
        let bytes = format!("\r\n+CDS: 26\r\n{}\r\n", CDS_PDU.to_lowercase());
        assert_eq!(
            run(None, &[bytes.as_bytes()]),
            vec![Event::Urc(Urc::StatusReport {
                pdu_hex: CDS_PDU.into()
            })]
        );
        // The report decodes.
        let r = super::super::pdu::decode_status_report(
            &super::super::pdu::hex_decode(CDS_PDU).unwrap(),
        )
        .unwrap();
        assert_eq!(r.message_reference, 13);
        // A header with no PDU after it is reported alone, and the next line still counts.
        assert_eq!(
            run(Some("AT"), &[b"+CDS: 26\r\nOK\r\n"]),
            vec![Event::Urc(Urc::Other("+CDS: 26".into())), OK]
        );
        // +CMT swallows its second line.
        assert_eq!(
            run(
                Some("AT"),
                &[b"+CMT: ,24\r\n0791947101670000040C9194\r\nOK\r\n"]
            ),
            vec![Event::Urc(Urc::NewMessage), OK]
        );
    }

    fn cmgs_dialogue() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"AT+CMGS=16\r\r\n> ");
        v.extend_from_slice(b"0011000B915155214365F700000102E834\x1a");
        v.extend_from_slice(
            b"\r\n^RSSI: 14\r\n\r\n+CMGS: 42\r\n\r\nOK\r\n\r\n^BOOT:1,0,0,0,72\r\n",
        );
        v
    }

    fn cmgs_events() -> Vec<Event> {
        vec![
            Event::Echo,
            Event::Prompt,
            Event::Echo,
            Event::Urc(Urc::Signal(Signal { rssi: 14, ber: 99 })),
            info("+CMGS: 42"),
            OK,
            Event::Urc(Urc::Other("^BOOT:1,0,0,0,72".into())),
        ]
    }

    #[test]
    fn cmgs_with_echo_prompt_and_noise() {
        assert_eq!(run(Some("AT+CMGS=16"), &[&cmgs_dialogue()]), cmgs_events());
        // No space after '>', no echo.
        let ev = run(
            Some("AT+CMGS=16"),
            &[b"\r\n>", b"\r\n+CMGS: 0\r\n\r\nOK\r\n"],
        );
        assert_eq!(ev, vec![Event::Prompt, info("+CMGS: 0"), OK]);
        // Echo merged with the prompt on one line.
        let ev = run(
            Some("AT+CMGS=16"),
            &[b"AT+CMGS=16\r\n> 0011AB\x1a\r\n+CMGS: 1\r\nOK\r\n"],
        );
        assert_eq!(
            ev,
            vec![
                Event::Echo,
                Event::Prompt,
                Event::Echo,
                info("+CMGS: 1"),
                OK
            ]
        );
        // A PDU echo garbled by line noise is still not handed on as information.
        let ev = run(
            Some("AT+CMGS=16"),
            &[b"> ", b"0011\xFF00zz\r\n+CMGS: 2\r\nOK\r\n"],
        );
        assert_eq!(ev, vec![Event::Prompt, Event::Echo, info("+CMGS: 2"), OK]);
        // Send refused.
        let ev = run(Some("AT+CMGS=16"), &[b"\r\n> ", b"\r\n+CMS ERROR: 330\r\n"]);
        assert_eq!(
            ev,
            vec![
                Event::Prompt,
                Event::Final(FinalResult::CmsError(ErrorCode::Numeric(330)))
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let cds = format!("\r\n+CDS: 26\r\n{CDS_PDU}\r\n");
        let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
            (Some("AT+CMGS=16"), cmgs_dialogue()),
            (
                Some("AT+CSQ"),
                [
                    b"AT+CSQ\r".as_slice(),
                    cds.as_bytes(),
                    b"\r+CSQ: 5,99\n\nOK\r\n+CREG: 1\r",
                ]
                .concat(),
            ),
            (None, [cds.as_bytes(), b"RING\r\n\xFF\x00\r\n"].concat()),
        ];
        for (cmd, bytes) in cases {
            let whole = run(cmd, &[&bytes]);
            assert!(!whole.is_empty());
            for split in 0..=bytes.len() {
                let (a, b) = bytes.split_at(split);
                assert_eq!(run(cmd, &[a, b]), whole, "split at {split}");
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(run(cmd, &singles), whole);
        }
    }

    #[test]
    fn stale_results_and_reboot() {
        let mut d = Dialogue::new();
        d.begin("AT+CSQ");
        assert_eq!(d.pending(), Some("AT+CSQ"));
        d.abandon();
        assert_eq!(d.pending(), None);
        // A late answer is just information, its OK a stale final.
        assert_eq!(d.feed(line("+CSQ: 3,99")), vec![info("+CSQ: 3,99")]);
        assert_eq!(d.feed(line("OK")), vec![OK]);
        // After a reboot the echo is back; it is still dropped.
        assert_eq!(d.feed(line("RDY")), vec![Event::Urc(Urc::Boot)]);
        d.begin("AT+CMGF=0");
        assert_eq!(d.feed(line("AT+CMGF=0")), vec![Event::Echo]);
        assert_eq!(d.feed(line("OK")), vec![OK]);
        d.begin("AT+CMGW=20");
        assert!(d.expects_prompt());
        assert_eq!(d.feed(AtToken::Prompt), vec![Event::Prompt]);
        assert!(!d.expects_prompt());
    }

    #[test]
    fn huawei_noise_between_commands() {
        let ev = run(
            None,
            &[b"\r\n^RSSI:99\r\n\r\n^MODE:0,0\r\n\r\n^SRVST:0\r\n"],
        );
        assert_eq!(
            ev,
            vec![
                Event::Urc(Urc::Signal(Signal { rssi: 99, ber: 99 })),
                Event::Urc(Urc::Other("^MODE:0,0".into())),
                Event::Urc(Urc::Other("^SRVST:0".into())),
            ]
        );
        let ev = run(Some("AT+CMMS=2"), &[b"\r\nCOMMAND NOT SUPPORT\r\n"]);
        assert_eq!(ev, vec![Event::Final(FinalResult::CommandNotSupport)]);
        let ev = run(Some("AT+CPIN?"), &[b"\r\n+CME ERROR: 10\r\n"]);
        assert_eq!(
            ev,
            vec![Event::Final(FinalResult::CmeError(ErrorCode::Numeric(10)))]
        );
    }

    #[test]
    fn creg_parser() {
        use Registration::*;
        assert_eq!(parse_creg("+CREG: 0,1"), Some(Home));
        assert_eq!(
            parse_creg("+CREG: 2,5,\"00C3\",\"0102AB3\",7"),
            Some(Roaming)
        );
        assert_eq!(parse_creg("+CREG: 1"), Some(Home));
        assert_eq!(parse_creg("+CREG: 2"), Some(Searching));
        assert_eq!(parse_creg("+CEREG: 1,\"00C3\",\"0102AB3\",7"), Some(Home));
        assert_eq!(parse_creg("+CEREG: 3,\"0102\",\"0102\",7"), Some(Denied));
        assert_eq!(parse_creg("+CGREG:  0 , 4 "), Some(Unknown));
        assert_eq!(parse_creg("+CEREG: 0,6"), Some(Other(6)));
        assert_eq!(parse_creg("+CREG: 1,,,"), Some(Home));
        assert_eq!(parse_creg("+CREG:"), None);
        assert_eq!(parse_creg("+CREG: x"), None);
        assert_eq!(parse_creg("+CSQ: 1,2"), None);
        assert!(
            Home.is_usable() && Roaming.is_usable() && Other(6).is_usable() && Other(7).is_usable()
        );
        assert!(!Searching.is_usable() && !Denied.is_usable() && !Other(8).is_usable());
        assert!(!NotRegistered.is_usable() && !Unknown.is_usable());
    }

    #[test]
    fn csq_parser() {
        let s = parse_csq("+CSQ: 21,99").unwrap();
        assert_eq!((s.rssi, s.ber, s.dbm(), s.bars()), (21, 99, Some(-71), 4));
        assert_eq!(parse_csq("+CSQ: 0,0").unwrap().dbm(), Some(-113));
        assert_eq!(parse_csq("+CSQ: 31,0").unwrap().dbm(), Some(-51));
        let unknown = parse_csq("+CSQ: 99,99").unwrap();
        assert_eq!((unknown.dbm(), unknown.bars()), (None, 0));
        assert_eq!(parse_csq("+CSQ: 1,99").unwrap().bars(), 0);
        assert_eq!(parse_csq("+CSQ: 9,99").unwrap().bars(), 1);
        assert_eq!(parse_csq("+CSQ: 14,99").unwrap().bars(), 2);
        assert_eq!(parse_csq("+CSQ: 15,99").unwrap().bars(), 3);
        assert_eq!(parse_csq("+CSQ:20"), Some(Signal { rssi: 20, ber: 99 }));
        assert_eq!(parse_csq("+CSQ: 32,99"), None);
        assert_eq!(parse_csq("+CSQ: -1,99"), None);
        assert_eq!(parse_csq("+CSQ: ,"), None);
        assert_eq!(parse_csq("+CREG: 1"), None);
    }

    #[test]
    fn cpin_parser() {
        assert_eq!(parse_cpin("+CPIN: READY"), Some(PinState::Ready));
        assert_eq!(parse_cpin("+CPIN: SIM PIN"), Some(PinState::SimPin));
        assert_eq!(parse_cpin("+CPIN:SIM PUK"), Some(PinState::SimPuk));
        assert_eq!(parse_cpin("+CPIN: SIM PIN2"), Some(PinState::SimPin2));
        assert_eq!(parse_cpin("+CPIN: PH-SIM PIN"), Some(PinState::PhSimPin));
        assert_eq!(
            parse_cpin("+CPIN: NOT INSERTED"),
            Some(PinState::NotInserted)
        );
        assert_eq!(parse_cpin("+CPIN: \"READY\""), Some(PinState::Ready));
        assert_eq!(
            parse_cpin("+CPIN: PH-NET PIN"),
            Some(PinState::Other("PH-NET PIN".into()))
        );
        assert_eq!(parse_cpin("+CME ERROR: 10"), Some(PinState::NotInserted));
        assert_eq!(
            parse_cpin("+CME ERROR: SIM not inserted"),
            Some(PinState::NotInserted)
        );
        assert_eq!(parse_cpin("+CME ERROR: 13"), Some(PinState::Failure));
        assert_eq!(parse_cpin("+CME ERROR: 100"), None);
        assert_eq!(parse_cpin("+CPIN:"), None);
        assert_eq!(parse_cpin("OK"), None);
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_cmgs("+CMGS: 42"), Some(42));
        assert_eq!(parse_cmgs("+CMGS: 255,\"26/11/28,18:00:00+04\""), Some(255));
        assert_eq!(parse_cmgs("+CMGS: 256"), None);
        assert_eq!(parse_cmgs("+CMGS:"), None);
        assert_eq!(
            parse_cops("+COPS: 0,0,\"Vodafone.de\",7"),
            Some("Vodafone.de".into())
        );
        assert_eq!(
            parse_cops("+COPS: 0,0,\"Tel, Co\",7"),
            Some("Tel, Co".into())
        );
        assert_eq!(parse_cops("+COPS: 0"), None);
        assert_eq!(parse_cops("+COPS: 0,0,\"\""), None);
        assert_eq!(
            parse_csca("+CSCA: \"+491710760000\",145"),
            Some("+491710760000".into())
        );
        assert_eq!(parse_csca("+CSCA: \"\",129"), None);
        assert_eq!(
            parse_csca("+CSCA: \"002B003400390031\",145"),
            Some("+491".into())
        );
        assert_eq!(parse_csca("+CSCA: \"junk\",145"), None);
        assert_eq!(parse_cds_len("+CDS: 26"), Some(26));
        assert_eq!(parse_cds_len("+CDS: 6,13,\"+4917\",145"), None);
        assert_eq!(parse_stored_index("+CMTI: \"SM\",3"), Some(3));
        assert_eq!(parse_stored_index("+CDSI: \"SR\",0"), Some(0));
        assert_eq!(parse_stored_index("+CSQ: 1"), None);
    }

    #[test]
    fn cms_and_cme_classes() {
        use CmsClass::*;
        for c in [
            22, 27, 38, 41, 42, 47, 300, 314, 331, 332, 500, 512, 515, 999, 65535,
        ] {
            assert_eq!(classify_cms(c), Transient, "{c}");
        }
        for c in [1, 96, 304, 305, 128, 196, 255] {
            assert_eq!(classify_cms(c), PermanentForNumber, "{c}");
        }
        for c in [
            8, 10, 21, 50, 69, 310, 311, 312, 313, 315, 316, 317, 318, 330,
        ] {
            assert_eq!(classify_cms(c), ModemProblem, "{c}");
        }
        for c in [14, 515, 30, 31, 32, 100] {
            assert_eq!(classify_cme(c), Transient, "{c}");
        }
        for c in [10, 11, 12, 13, 16, 18] {
            assert_eq!(classify_cme(c), ModemProblem, "{c}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: &[u8] = b"\r\n> +:,\"0123456789ABCDEFOKERRCDSMGREG^\x00\xFF\x1A";
        let mut reader = LineReader::new();
        let mut d = Dialogue::new();
        for i in 0..3000 {
            if i % 50 == 0 {
                d.begin(["AT+CSQ", "AT+CMGS=20", "AT+CREG?", "AT"][i / 50 % 4]);
            }
            let len = (next() % 64) as usize;
            let chunk: Vec<u8> = (0..len)
                .map(|_| alphabet[next() as usize % alphabet.len()])
                .collect();
            reader.expect_prompt(d.expects_prompt());
            reader.push(&chunk);
            while let Some(tok) = reader.next() {
                if let AtToken::Line(l) = &tok {
                    let _ = (parse_creg(l), parse_csq(l), parse_cpin(l), parse_cmgs(l));
                    let _ = (parse_cops(l), parse_csca(l), parse_cds_len(l), classify(l));
                }
                let _ = d.feed(tok);
            }
            assert!(reader.pending_len() <= MAX_LINE);
        }
    }
}
