//! SMS PDUs (3GPP TS 23.040): SMS-SUBMIT encoding with concatenation, validity period and
//! status report request; decoders for SMS-SUBMIT (the modem simulator checks what we send) and
//! SMS-STATUS-REPORT (delivery receipts from `+CDS`). The validity period's formats and the
//! choice between them live in [`super::vp`].
//!
//! Everything here is a pure function on bytes or strings. Decoders treat their input as
//! untrusted: any byte string gives a value or a [`PduError`], never a panic. Errors carry
//! lengths and positions only, never message text, because the text is a one-time code.

use super::gsm7;
use super::vp;
use crate::clock::Timestamp;

pub use super::vp::{Validity, validity_duration, validity_octet};

/// Why a PDU could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// The input ended before a field that starts at octet `at`.
    #[error("PDU truncated at octet {at}")]
    Truncated {
        /// Offset of the field that did not fit.
        at: usize,
    },
    /// The hex text has an odd length or a non-hex character.
    #[error("PDU hex is malformed")]
    BadHex,
    /// The destination or recipient number is empty, has non-digits or more than 20 digits.
    #[error("invalid phone number")]
    InvalidNumber,
    /// The SMSC address is empty, has non-digits or more than 20 digits.
    #[error("invalid SMSC address")]
    InvalidSmsc,
    /// The text needs more parts than an 8-bit concatenation header can number.
    #[error("text needs {parts} SMS parts, at most 255 are possible")]
    TooLong {
        /// Parts the text would need.
        parts: usize,
    },
    /// There is no text to send.
    #[error("empty SMS text")]
    Empty,
    /// A valid PDU using a feature this codec does not handle.
    #[error("unsupported PDU: {0}")]
    Unsupported(&'static str),
    /// Fields that contradict each other or the spec.
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
    /// The user data is UCS-2 but not valid UTF-16.
    #[error("user data is not valid UTF-16 ({units} units)")]
    BadUcs2 {
        /// Number of 16-bit units in the user data.
        units: usize,
    },
    /// Octets left over after the last field.
    #[error("{extra} octets after the end of the PDU")]
    TrailingData {
        /// How many.
        extra: usize,
    },
}

/// The user data alphabet (TP-DCS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GSM 7-bit default alphabet with the extension table, DCS 0x00.
    Gsm7,
    /// UCS-2, sent as UTF-16BE (surrogate pairs for characters outside the BMP), DCS 0x08.
    Ucs2,
}

/// GSM 7-bit when every character is in the default alphabet or extension table, else UCS-2.
pub fn choose_encoding(text: &str) -> Encoding {
    if gsm7::septet_len(text).is_some() {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// How to build the SMS-SUBMIT PDUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitOptions {
    /// "Now" by the caller's clock, when the PDU is built.
    pub now: Timestamp,
    /// When the code expires: the SMS's validity period never ends later (see
    /// [`vp::validity_for`]).
    pub expires_at: Timestamp,
    /// Ask the SMSC for a status report (TP-SRR).
    pub status_report: bool,
    /// SMSC address in "+4917..." form; None uses the SIM's SMSC (SCA octet `00`).
    pub smsc: Option<String>,
    /// The 8-bit concatenation reference, used only when the text needs several parts.
    pub concat_ref: u8,
}

/// One SMS-SUBMIT ready for `AT+CMGS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitPdu {
    /// The whole PDU, SCA included, as uppercase hex.
    pub hex: String,
    /// Octets excluding the SCA: the `<length>` of `AT+CMGS=<length>`.
    pub tpdu_len: usize,
}

/// 8-bit or 16-bit reference concatenation information from a user data header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concat {
    /// The reference shared by all parts of one message.
    pub reference: u16,
    /// Number of parts.
    pub total: u8,
    /// This part's number, from 1.
    pub seq: u8,
}

/// An SMS-SUBMIT taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedSubmit {
    /// SMSC address ("+..." when international); None for SCA `00`.
    pub smsc: Option<String>,
    /// Destination, "+..." for TOA 0x91, bare digits otherwise.
    pub to: String,
    /// TP-SRR was set.
    pub status_report: bool,
    /// TP-VP in whichever format it came; None when absent.
    pub validity: Option<Validity>,
    /// The user data alphabet.
    pub encoding: Encoding,
    /// Concatenation header, if any.
    pub concat: Option<Concat>,
    /// The text of this part.
    pub text: String,
}

/// Delivery class of a status report, from TP-ST (23.040 9.2.3.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportClass {
    /// Delivered to the handset (0x00-0x1F).
    Delivered,
    /// Temporary error, the SMSC is still trying (0x20-0x3F).
    Pending,
    /// Permanent error, or temporary error the SMSC gave up on (0x40-0x7F); reserved values too.
    Failed,
}

impl ReportClass {
    /// Classifies a TP-ST value.
    pub fn from_status(st: u8) -> ReportClass {
        match st {
            0x00..=0x1F => ReportClass::Delivered,
            0x20..=0x3F => ReportClass::Pending,
            // 0x80.. are reserved; 23.040 asks to treat unknown values as a failure.
            _ => ReportClass::Failed,
        }
    }
}

/// An SMS-STATUS-REPORT taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// TP-MR of the SMS-SUBMIT this report is about (the value `+CMGS:` returned).
    pub message_reference: u8,
    /// The recipient ("+..." when international).
    pub recipient: String,
    /// Raw TP-ST.
    pub status: u8,
    /// What TP-ST means for us.
    pub class: ReportClass,
}

const MTI_SUBMIT: u8 = 0x01;
const MTI_STATUS_REPORT: u8 = 0x02;
const SRR: u8 = 0x20;
const UDHI: u8 = 0x40;
const TOA_INTERNATIONAL: u8 = 0x91;
const TOA_UNKNOWN: u8 = 0x81;
const DCS_GSM7: u8 = 0x00;
const DCS_UCS2: u8 = 0x08;
const MAX_DIGITS: usize = 20;

const SINGLE_SEPTETS: usize = 160;
const CONCAT_SEPTETS: usize = 153;
const SINGLE_UNITS: usize = 70;
const CONCAT_UNITS: usize = 67;

/// Parses "+digits" (TOA 0x91) or "digits" (TOA 0x81) into (TOA, digits).
fn parse_number(s: &str) -> Option<(u8, &str)> {
    let (toa, digits) = match s.strip_prefix('+') {
        Some(d) => (TOA_INTERNATIONAL, d),
        None => (TOA_UNKNOWN, s),
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((toa, digits))
}

/// Digits as swapped semi-octets with F padding.
fn semi_octets(digits: &str) -> Vec<u8> {
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let lo = pair[0] - b'0';
            let hi = pair.get(1).map_or(0x0F, |d| d - b'0');
            (hi << 4) | lo
        })
        .collect()
}

/// The SCA field: `00`, or length (TOA + digit octets), TOA, digits.
fn encode_sca(smsc: Option<&str>) -> Result<Vec<u8>, PduError> {
    let Some(s) = smsc else {
        return Ok(vec![0]);
    };
    let (toa, digits) = parse_number(s).ok_or(PduError::InvalidSmsc)?;
    let body = semi_octets(digits);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push((body.len() + 1) as u8);
    out.push(toa);
    out.extend(body);
    Ok(out)
}

/// An address field (TP-DA / TP-RA): digit count, TOA, digits.
fn encode_address(toa: u8, digits: &str) -> Vec<u8> {
    let mut out = vec![digits.len() as u8, toa];
    out.extend(semi_octets(digits));
    out
}

/// Splits encoded units (each 1 or 2 elements that must stay together) into parts of at most
/// `max` elements.
fn split_units<T: Copy>(units: &[Vec<T>], max: usize) -> Vec<Vec<T>> {
    let mut parts = Vec::new();
    let mut cur: Vec<T> = Vec::with_capacity(max);
    for u in units {
        if cur.len() + u.len() > max {
            parts.push(std::mem::take(&mut cur));
        }
        cur.extend_from_slice(u);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Part payloads: for 7-bit the unpacked septets, for UCS-2 the UTF-16BE octets.
fn split_text(text: &str) -> (Encoding, Vec<Vec<u8>>) {
    match choose_encoding(text) {
        Encoding::Gsm7 => {
            let units: Vec<Vec<u8>> = text
                .chars()
                .filter_map(|c| gsm7::encode(c.encode_utf8(&mut [0; 4])))
                .collect();
            let total: usize = units.iter().map(Vec::len).sum();
            let parts = if total <= SINGLE_SEPTETS {
                vec![units.concat()]
            } else {
                split_units(&units, CONCAT_SEPTETS)
            };
            (Encoding::Gsm7, parts)
        }
        Encoding::Ucs2 => {
            let units: Vec<Vec<u16>> = text
                .chars()
                .map(|c| c.encode_utf16(&mut [0; 2]).to_vec())
                .collect();
            let total: usize = units.iter().map(Vec::len).sum();
            let parts = if total <= SINGLE_UNITS {
                vec![units.concat()]
            } else {
                split_units(&units, CONCAT_UNITS)
            };
            let bytes = parts
                .into_iter()
                .map(|p| p.iter().flat_map(|u| u.to_be_bytes()).collect())
                .collect();
            (Encoding::Ucs2, bytes)
        }
    }
}

/// How many SMS parts `text` needs (0 for an empty text), without building them.
pub fn part_count(text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    split_text(text).1.len()
}

/// Builds the SMS-SUBMIT PDU(s) for `text` to `to` ("+E.164" gives TOA 0x91; bare digits 0x81).
/// Several PDUs mean a concatenated SMS; send them in order.
pub fn encode_submit(
    to: &str,
    text: &str,
    opts: &SubmitOptions,
) -> Result<Vec<SubmitPdu>, PduError> {
    let (toa, digits) = parse_number(to).ok_or(PduError::InvalidNumber)?;
    let sca = encode_sca(opts.smsc.as_deref())?;
    if text.is_empty() {
        return Err(PduError::Empty);
    }
    let (encoding, parts) = split_text(text);
    let total = parts.len();
    if total > 255 {
        return Err(PduError::TooLong { parts: total });
    }
    let concatenated = total > 1;
    let vp = vp::validity_for(opts.now, opts.expires_at)?;
    let mut first = MTI_SUBMIT | vp.vpf_bits();
    if opts.status_report {
        first |= SRR;
    }
    if concatenated {
        first |= UDHI;
    }
    let dcs = match encoding {
        Encoding::Gsm7 => DCS_GSM7,
        Encoding::Ucs2 => DCS_UCS2,
    };
    let mut out = Vec::with_capacity(total);
    for (i, payload) in parts.iter().enumerate() {
        let mut tpdu = vec![first, 0x00];
        tpdu.extend(encode_address(toa, digits));
        tpdu.extend([0x00, dcs]);
        vp.write(&mut tpdu);
        let udh: Vec<u8> = if concatenated {
            vec![
                0x05,
                0x00,
                0x03,
                opts.concat_ref,
                total as u8,
                (i + 1) as u8,
            ]
        } else {
            Vec::new()
        };
        match encoding {
            Encoding::Gsm7 => {
                // The header occupies whole septets; fill bits pad it up to the next boundary.
                let header_bits = udh.len() * 8;
                let header_septets = header_bits.div_ceil(7);
                let fill = (header_septets * 7 - header_bits) as u8;
                tpdu.push((header_septets + payload.len()) as u8);
                tpdu.extend(&udh);
                tpdu.extend(gsm7::pack(payload, fill));
            }
            Encoding::Ucs2 => {
                tpdu.push((udh.len() + payload.len()) as u8);
                tpdu.extend(&udh);
                tpdu.extend(payload);
            }
        }
        let mut pdu = sca.clone();
        pdu.extend(&tpdu);
        out.push(SubmitPdu {
            hex: hex::encode_upper(&pdu),
            tpdu_len: tpdu.len(),
        });
    }
    Ok(out)
}

/// Bounds-checked reading of untrusted octets.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    fn u8(&mut self) -> Result<u8, PduError> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or(PduError::Truncated { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PduError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PduError::Truncated { at: self.pos })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn rest(&self) -> usize {
        self.data.len() - self.pos
    }
}

/// Semi-octet digits; 0xA-0xE are the '*', '#', 'a', 'b', 'c' of 24.008 10.5.4.7, 0xF padding.
fn decode_digits(octets: &[u8], max_digits: usize) -> String {
    let mut s = String::with_capacity(max_digits);
    for &o in octets {
        for nibble in [o & 0x0F, o >> 4] {
            if s.len() == max_digits || nibble == 0x0F {
                return s;
            }
            s.push(match nibble {
                0..=9 => char::from(b'0' + nibble),
                0xA => '*',
                0xB => '#',
                0xC => 'a',
                0xD => 'b',
                _ => 'c',
            });
        }
    }
    s
}

fn with_plus(toa: u8, digits: String) -> String {
    // TON 001 = international, whatever the numbering plan bits say.
    if toa & 0x70 == 0x10 {
        format!("+{digits}")
    } else {
        digits
    }
}

fn read_sca(r: &mut Reader<'_>) -> Result<Option<String>, PduError> {
    let len = usize::from(r.u8()?);
    if len == 0 {
        return Ok(None);
    }
    if len > 1 + MAX_DIGITS / 2 {
        return Err(PduError::InvalidSmsc);
    }
    let body = r.take(len)?;
    let digits = decode_digits(&body[1..], MAX_DIGITS);
    Ok(Some(with_plus(body[0], digits)))
}

/// TP-DA / TP-RA: digit count, TOA, semi-octets.
fn read_address(r: &mut Reader<'_>) -> Result<String, PduError> {
    let n = usize::from(r.u8()?);
    if n > MAX_DIGITS {
        return Err(PduError::InvalidNumber);
    }
    let toa = r.u8()?;
    let octets = r.take(n.div_ceil(2))?;
    if toa & 0x70 == 0x50 {
        return Err(PduError::Unsupported("alphanumeric address"));
    }
    Ok(with_plus(toa, decode_digits(octets, n)))
}

fn encoding_of_dcs(dcs: u8) -> Result<Encoding, PduError> {
    match dcs >> 4 {
        // General data coding (with or without message class / auto-deletion).
        0x0..=0x7 => {
            if dcs & 0x20 != 0 {
                return Err(PduError::Unsupported("compressed user data"));
            }
            match (dcs >> 2) & 0x03 {
                0 => Ok(Encoding::Gsm7),
                2 => Ok(Encoding::Ucs2),
                1 => Err(PduError::Unsupported("8-bit data coding")),
                _ => Err(PduError::Malformed("reserved alphabet in DCS")),
            }
        }
        0xC | 0xD => Ok(Encoding::Gsm7),
        0xE => Ok(Encoding::Ucs2),
        0xF => {
            if dcs & 0x04 == 0 {
                Ok(Encoding::Gsm7)
            } else {
                Err(PduError::Unsupported("8-bit data coding"))
            }
        }
        _ => Err(PduError::Unsupported("reserved DCS group")),
    }
}

/// Concatenation information from the user data header's information elements.
fn parse_udh(header: &[u8]) -> Result<Option<Concat>, PduError> {
    let mut concat = None;
    let mut i = 0;
    while i < header.len() {
        let iei = header[i];
        let len = usize::from(*header.get(i + 1).ok_or(PduError::Malformed("UDH IE cut"))?);
        let data = header
            .get(i + 2..i + 2 + len)
            .ok_or(PduError::Malformed("UDH IE overruns header"))?;
        match (iei, data) {
            (0x00, &[reference, total, seq]) => {
                concat = Some(Concat {
                    reference: u16::from(reference),
                    total,
                    seq,
                });
            }
            (0x08, &[hi, lo, total, seq]) => {
                concat = Some(Concat {
                    reference: u16::from_be_bytes([hi, lo]),
                    total,
                    seq,
                });
            }
            (0x00 | 0x08, _) => return Err(PduError::Malformed("concatenation IE length")),
            _ => {}
        }
        i += 2 + len;
    }
    Ok(concat)
}

/// Decodes TP-UDL + TP-UD; returns (concat, text). `r` is positioned at TP-UDL.
fn read_user_data(
    r: &mut Reader<'_>,
    encoding: Encoding,
    udhi: bool,
) -> Result<(Option<Concat>, String), PduError> {
    let udl = usize::from(r.u8()?);
    let ud_octets = match encoding {
        Encoding::Gsm7 => (udl * 7).div_ceil(8),
        Encoding::Ucs2 => udl,
    };
    // TP-UD holds at most 140 octets (160 septets); more is an encoder bug, not a long SMS.
    if ud_octets > 140 {
        return Err(PduError::Malformed("user data longer than 140 octets"));
    }
    let ud = r.take(ud_octets)?;
    let (concat, header_len) = if udhi {
        let udhl = usize::from(
            *ud.first()
                .ok_or(PduError::Malformed("UDHI without header"))?,
        );
        let header = ud
            .get(1..1 + udhl)
            .ok_or(PduError::Malformed("UDH longer than user data"))?;
        (parse_udh(header)?, 1 + udhl)
    } else {
        (None, 0)
    };
    let text = match encoding {
        Encoding::Gsm7 => {
            let header_bits = header_len * 8;
            let header_septets = header_bits.div_ceil(7);
            let fill = (header_septets * 7 - header_bits) as u8;
            let count = udl
                .checked_sub(header_septets)
                .ok_or(PduError::Malformed("UDL shorter than header"))?;
            let septets = gsm7::unpack(&ud[header_len..], fill, count);
            if septets.len() != count {
                return Err(PduError::Malformed("7-bit user data shorter than UDL"));
            }
            gsm7::decode(&septets)
        }
        Encoding::Ucs2 => {
            let body = &ud[header_len..];
            if body.len() % 2 != 0 {
                return Err(PduError::Malformed("odd UCS-2 length"));
            }
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| PduError::BadUcs2 { units: units.len() })?
        }
    };
    Ok((concat, text))
}

/// Decodes a whole SMS-SUBMIT PDU, SCA first, as written after `AT+CMGS`.
pub fn decode_submit(pdu: &[u8]) -> Result<DecodedSubmit, PduError> {
    let mut r = Reader::new(pdu);
    let smsc = read_sca(&mut r)?;
    let first = r.u8()?;
    if first & 0x03 != MTI_SUBMIT {
        return Err(PduError::Unsupported("not an SMS-SUBMIT"));
    }
    let _mr = r.u8()?;
    let to = read_address(&mut r)?;
    if to.trim_start_matches('+').is_empty() {
        return Err(PduError::InvalidNumber);
    }
    let _pid = r.u8()?;
    let encoding = encoding_of_dcs(r.u8()?)?;
    let validity = match (first >> 3) & 0x03 {
        0 => None,
        2 => Some(Validity::Relative(validity_duration(r.u8()?))),
        vpf => {
            let mut octets = [0u8; 7];
            octets.copy_from_slice(r.take(7)?);
            if vpf == 3 {
                Some(Validity::Absolute(vp::decode_absolute(&octets)?))
            } else {
                Some(Validity::Enhanced(octets))
            }
        }
    };
    let (concat, text) = read_user_data(&mut r, encoding, first & UDHI != 0)?;
    if r.rest() != 0 {
        return Err(PduError::TrailingData { extra: r.rest() });
    }
    Ok(DecodedSubmit {
        smsc,
        to,
        status_report: first & SRR != 0,
        validity,
        encoding,
        concat,
        text,
    })
}

/// Decodes an SMS-STATUS-REPORT PDU, SCA first, as it follows a `+CDS: <len>` line. Optional
/// fields after TP-ST (TP-PI and what it announces) are ignored.
pub fn decode_status_report(pdu: &[u8]) -> Result<StatusReport, PduError> {
    let mut r = Reader::new(pdu);
    let _smsc = read_sca(&mut r)?;
    let first = r.u8()?;
    if first & 0x03 != MTI_STATUS_REPORT {
        return Err(PduError::Unsupported("not an SMS-STATUS-REPORT"));
    }
    let message_reference = r.u8()?;
    let recipient = read_address(&mut r)?;
    let _scts = r.take(7)?;
    let _discharge = r.take(7)?;
    let status = r.u8()?;
    Ok(StatusReport {
        message_reference,
        recipient,
        status,
        class: ReportClass::from_status(status),
    })
}

/// Builds an SMS-STATUS-REPORT as hex, for the modem simulator. Non-digit characters in the
/// numbers are skipped (a '+' selects TOA 0x91); an SMSC with no digits gives SCA `00`.
pub fn encode_status_report(smsc: Option<&str>, mr: u8, recipient: &str, status: u8) -> String {
    let clean = |s: &str| -> (u8, String) {
        let toa = if s.starts_with('+') {
            TOA_INTERNATIONAL
        } else {
            TOA_UNKNOWN
        };
        let digits: String = s
            .chars()
            .filter(char::is_ascii_digit)
            .take(MAX_DIGITS)
            .collect();
        (toa, digits)
    };
    let mut pdu = match smsc.map(clean) {
        Some((toa, d)) if !d.is_empty() => {
            let body = semi_octets(&d);
            let mut v = vec![(body.len() + 1) as u8, toa];
            v.extend(body);
            v
        }
        _ => vec![0],
    };
    // MTI=10, TP-MMS set (no more messages waiting).
    pdu.extend([0x06, mr]);
    let (toa, digits) = clean(recipient);
    pdu.extend(encode_address(toa, &digits));
    // SCTS 2026-11-28 18:00:00 UTC, discharge one minute later, swapped semi-octets.
    pdu.extend([0x62, 0x11, 0x82, 0x81, 0x00, 0x00, 0x00]);
    pdu.extend([0x62, 0x11, 0x82, 0x81, 0x10, 0x00, 0x00]);
    pdu.push(status);
    hex::encode_upper(pdu)
}

/// Hex text to octets, ignoring surrounding whitespace (and a trailing Ctrl-Z as written after
/// a PDU).
pub fn hex_decode(s: &str) -> Result<Vec<u8>, PduError> {
    let t = s.trim().trim_end_matches('\u{1A}').trim();
    hex::decode(t).map_err(|_| PduError::BadHex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GAMMU: &str =
        "07910100000000F0 11 00 0B915155214365F7 00 00 FF 13 D9775D0E1ABFC965507A0E8AC966B49A0D";

    /// 2026-12-02T19:00:00Z.
    const NOW: Timestamp = Timestamp(1_796_238_000_000);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn opts() -> SubmitOptions {
        SubmitOptions {
            // 11 minutes left: a relative 5 minutes (0x00) would do; 10 (0x01) ends just in time
            // with the hand-over slack to spare.
            now: NOW,
            expires_at: NOW.plus(secs(11 * 60)),
            status_report: false,
            smsc: None,
            concat_ref: 0x42,
        }
    }

    fn dec(p: &SubmitPdu) -> DecodedSubmit {
        let bytes = hex_decode(&p.hex).unwrap();
        // tpdu_len excludes the SCA: its length octet plus what it announces.
        assert_eq!(bytes.len() - 1 - usize::from(bytes[0]), p.tpdu_len);
        assert_eq!(p.hex, p.hex.to_uppercase());
        decode_submit(&bytes).unwrap()
    }

    fn udl(p: &SubmitPdu) -> u8 {
        // With SCA 00 and a 12-digit number: SCA 1, FO 1, MR 1, DA 2+6, PID, DCS, VP = 14.
        hex_decode(&p.hex).unwrap()[14]
    }

    fn roundtrip(text: &str) -> Vec<SubmitPdu> {
        roundtrip_with(text, &opts())
    }

    fn roundtrip_with(text: &str, o: &SubmitOptions) -> Vec<SubmitPdu> {
        let parts = encode_submit("+919876543210", text, o).unwrap();
        let mut joined = String::new();
        for (i, p) in parts.iter().enumerate() {
            let d = dec(p);
            assert_eq!(d.to, "+919876543210");
            if parts.len() > 1 {
                assert_eq!(
                    d.concat,
                    Some(Concat {
                        reference: 0x42,
                        total: parts.len() as u8,
                        seq: i as u8 + 1
                    })
                );
            } else {
                assert_eq!(d.concat, None);
            }
            joined.push_str(&d.text);
        }
        assert_eq!(joined, text);
        parts
    }

    #[test]
    fn gammu_vector_decodes() {
        let d = decode_submit(&hex_decode(&GAMMU.replace(' ', "")).unwrap()).unwrap();
        assert_eq!(d.text, "Your code is 123456");
        assert_eq!(d.to, "+15551234567");
        assert_eq!(d.smsc.as_deref(), Some("+10000000000"));
        assert!(!d.status_report);
        assert_eq!(d.encoding, Encoding::Gsm7);
        assert_eq!(
            d.validity,
            Some(Validity::Relative(secs(63 * 7 * 24 * 3600)))
        );
        assert_eq!(d.concat, None);
    }

    #[test]
    fn gammu_vector_encodes_identically() {
        let o = SubmitOptions {
            now: NOW,
            expires_at: NOW.plus(secs(100 * 7 * 24 * 3600)),
            status_report: false,
            smsc: Some("+10000000000".into()),
            concat_ref: 0,
        };
        let p = encode_submit("+15551234567", "Your code is 123456", &o).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].hex, GAMMU.replace(' ', ""));
        assert_eq!(p[0].tpdu_len, p[0].hex.len() / 2 - 8);
    }

    #[test]
    fn first_octet_and_header_fields() {
        let mut o = opts();
        let p = encode_submit("+15551234567", "hi", &o).unwrap();
        assert_eq!(p[0].hex, "0011000B915155214365F700000102E834");
        assert_eq!(p[0].tpdu_len, 16);
        o.status_report = true;
        let p = encode_submit("+15551234567", "hi", &o).unwrap();
        assert!(p[0].hex.starts_with("0031000B915155214365F7000001"));
        assert!(dec(&p[0]).status_report);
        let p = encode_submit("+15551234567", &"x".repeat(161), &o).unwrap();
        assert!(p[0].hex.starts_with("0071000B915155214365F7000001"));
        assert!(p.iter().all(|p| dec(p).status_report));
        let p = encode_submit("0170123", "hi", &o).unwrap();
        assert!(p[0].hex.starts_with("0031000781100721F3"));
        assert_eq!(dec(&p[0]).to, "0170123");
    }

    #[test]
    fn smsc_field() {
        let mut o = opts();
        o.smsc = Some("+491710760000".into());
        let p = encode_submit("+15551234567", "hi", &o).unwrap();
        assert!(p[0].hex.starts_with("0791947101670000"));
        assert_eq!(p[0].tpdu_len, p[0].hex.len() / 2 - 8);
        assert_eq!(dec(&p[0]).smsc.as_deref(), Some("+491710760000"));
        for bad in ["", "+", "+49x", "+123456789012345678901"] {
            o.smsc = Some(bad.into());
            assert_eq!(
                encode_submit("+15551234567", "hi", &o),
                Err(PduError::InvalidSmsc)
            );
        }
    }

    #[test]
    fn invalid_destinations_and_empty_text() {
        for bad in ["", "+", "+49 170", "abc", "+123456789012345678901", "++49"] {
            assert_eq!(
                encode_submit(bad, "hi", &opts()),
                Err(PduError::InvalidNumber),
                "{bad:?}"
            );
        }
        assert!(encode_submit("+12345678901234567890", "hi", &opts()).is_ok());
        assert_eq!(encode_submit("+4917", "", &opts()), Err(PduError::Empty));
    }

    #[test]
    fn too_long_is_refused() {
        // 255 parts of 153 septets fit; one more septet does not.
        let max = "a".repeat(255 * 153);
        assert_eq!(encode_submit("+4917", &max, &opts()).unwrap().len(), 255);
        let over = format!("{max}a");
        assert_eq!(
            encode_submit("+4917", &over, &opts()),
            Err(PduError::TooLong { parts: 256 })
        );
        let msg = encode_submit("+4917", &over, &opts())
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("aaa"));
    }

    #[test]
    fn gsm7_boundaries() {
        let p = roundtrip(&"a".repeat(160));
        assert_eq!(p.len(), 1);
        assert_eq!(udl(&p[0]), 160);
        assert_eq!(p[0].tpdu_len, 14 + 140);
        let p = roundtrip(&"a".repeat(161));
        assert_eq!(p.len(), 2);
        assert_eq!(udl(&p[0]), 160);
        assert_eq!(udl(&p[1]), 7 + 8);
        assert_eq!(dec(&p[0]).text.len(), 153);
        let p = roundtrip(&"b".repeat(153 * 2));
        assert_eq!(p.len(), 2);
        let p = roundtrip(&"b".repeat(153 * 2 + 1));
        assert_eq!(p.len(), 3);
        assert_eq!(udl(&p[2]), 8);
    }

    #[test]
    fn part_counts() {
        assert_eq!(part_count(""), 0);
        assert_eq!(part_count(&"a".repeat(160)), 1);
        assert_eq!(part_count(&"a".repeat(161)), 2);
        assert_eq!(part_count(&"आ".repeat(70)), 1);
        assert_eq!(part_count(&"आ".repeat(135)), 3);
        assert_eq!(part_count(&"a".repeat(256 * 153)), 256);
    }

    #[test]
    fn extension_chars_cost_two_septets() {
        let t = format!("{}€", "a".repeat(159));
        assert_eq!(gsm7::septet_len(&t), Some(161));
        let p = roundtrip(&t);
        assert_eq!(p.len(), 2);
        let t = format!("{}€", "a".repeat(158));
        let p = roundtrip(&t);
        assert_eq!(p.len(), 1);
        assert_eq!(udl(&p[0]), 160);
    }

    #[test]
    fn escape_pair_never_straddles() {
        // 152 'a' then '€': the pair would occupy septets 153-154, so it moves to part 2.
        let t = format!("{}€{}", "a".repeat(152), "b".repeat(20));
        let p = roundtrip(&t);
        assert_eq!(p.len(), 2);
        assert_eq!(udl(&p[0]), 7 + 152);
        assert_eq!(dec(&p[0]).text, "a".repeat(152));
        assert_eq!(dec(&p[1]).text, format!("€{}", "b".repeat(20)));
        // 151 'a' then '€' fits exactly.
        let t = format!("{}€{}", "a".repeat(151), "b".repeat(20));
        let p = roundtrip(&t);
        assert_eq!(udl(&p[0]), 160);
    }

    #[test]
    fn ucs2_boundaries() {
        let p = roundtrip(&"आ".repeat(70));
        assert_eq!(p.len(), 1);
        assert_eq!(udl(&p[0]), 140);
        let p = roundtrip(&"आ".repeat(71));
        assert_eq!(p.len(), 2);
        assert_eq!(udl(&p[0]), 6 + 134);
        assert_eq!(udl(&p[1]), 6 + 8);
        assert_eq!(roundtrip(&"आ".repeat(67 * 2)).len(), 2);
        assert_eq!(roundtrip(&"आ".repeat(67 * 2 + 1)).len(), 3);
    }

    #[test]
    fn surrogate_pair_never_straddles() {
        let t = format!("{}😀xyz", "आ".repeat(66));
        let p = roundtrip(&t);
        assert_eq!(p.len(), 2);
        assert_eq!(udl(&p[0]), 6 + 132);
        assert_eq!(dec(&p[1]).text, "😀xyz");
        let p = roundtrip("😀");
        assert_eq!(dec(&p[0]).encoding, Encoding::Ucs2);
        assert!(p[0].hex.ends_with("00080104D83DDE00"));
        assert_eq!(udl(&p[0]), 4);
        // 35 emoji = 70 units: still one part; 36 need two.
        assert_eq!(roundtrip(&"😀".repeat(35)).len(), 1);
        assert_eq!(roundtrip(&"😀".repeat(36)).len(), 2);
    }

    #[test]
    fn ucs2_texts() {
        for t in [
            "आपका कोड 123456 है",
            "Kode Anda adalah 123456. Jangan berikan kode ini kepada siapa pun.",
            "Ваш код: 123456",
            "code 😀 123456",
            "ç 123456",
        ] {
            let p = roundtrip(t);
            let d = dec(&p[0]);
            let expect = if gsm7::encode(t).is_some() {
                Encoding::Gsm7
            } else {
                Encoding::Ucs2
            };
            assert_eq!(d.encoding, expect);
        }
        assert_eq!(choose_encoding("Kode Anda 123456"), Encoding::Gsm7);
        assert_eq!(choose_encoding("आपका कोड"), Encoding::Ucs2);
        assert_eq!(choose_encoding("x😀"), Encoding::Ucs2);
        let p = roundtrip("आपका कोड 123456 है");
        assert!(p[0].hex.contains("0008"));
    }

    #[test]
    fn seven_bit_with_udh_starts_on_septet_boundary() {
        let t = "0123456789".repeat(17);
        let p = roundtrip(&t);
        let bytes = hex_decode(&p[0].hex).unwrap();
        let ud = &bytes[15..];
        assert_eq!(&ud[..6], &[0x05, 0x00, 0x03, 0x42, 0x02, 0x01]);
        // One fill bit: '0' (0x30) shifted left by one.
        assert_eq!(ud[6], 0x60);
    }

    #[test]
    fn validity_reaches_the_pdu() {
        let mut o = opts();
        let rel = |d: Duration| Some(Validity::Relative(d));
        o.expires_at = NOW.plus(secs(3600 + 60));
        let p = encode_submit("+15551234567", "x", &o).unwrap();
        assert_eq!(dec(&p[0]).validity, rel(secs(3600)));
        o.expires_at = NOW.plus(secs(3600 + 59));
        let p = encode_submit("+15551234567", "x", &o).unwrap();
        assert_eq!(dec(&p[0]).validity, rel(secs(55 * 60)));
        // 30 s left: the absolute expiry, 7 octets, VPF 11 (0x18) in the first octet.
        o.expires_at = NOW.plus(secs(30));
        let p = encode_submit("+15551234567", "hi", &o).unwrap();
        assert_eq!(p[0].hex, "0019000B915155214365F700006221209100030002E834");
        assert_eq!(p[0].tpdu_len, 22);
        assert_eq!(
            dec(&p[0]).validity,
            Some(Validity::Absolute(NOW.plus(secs(30))))
        );
        // Every part of a long text carries the same expiry; the parts' layout is unchanged.
        o.expires_at = NOW.plus(secs(299));
        let p = roundtrip_with(&"a".repeat(400), &o);
        assert_eq!(p.len(), 3);
        for part in &p {
            assert!(
                part.hex
                    .starts_with("0059000C91198967452301000062212091409500")
            );
            assert_eq!(
                dec(part).validity,
                Some(Validity::Absolute(NOW.plus(secs(299))))
            );
        }
        // UDL after the 7 VP octets: 7 header septets + 153.
        assert_eq!(hex_decode(&p[0].hex).unwrap()[20], 160);
        // A time stamp the codec cannot write is an error, not a wrong date.
        o.expires_at = Timestamp(4_102_444_800_000);
        o.now = o.expires_at.plus(secs(0));
        assert!(matches!(
            encode_submit("+15551234567", "x", &o),
            Err(PduError::Unsupported(_))
        ));
    }

    #[test]
    fn decode_submit_other_layouts() {
        // No VP, 16-bit reference UDH, 7-bit: 7 octets header -> 56 bits -> 8 septets, no fill.
        let mut tpdu = vec![0x41, 0x00, 0x04, 0x81, 0x21, 0x43, 0x00, 0x00];
        let text = gsm7::encode("hello").unwrap();
        tpdu.push((8 + text.len()) as u8);
        tpdu.extend([0x06, 0x08, 0x04, 0x12, 0x34, 0x03, 0x02]);
        tpdu.extend(gsm7::pack(&text, 0));
        let mut pdu = vec![0x00];
        pdu.extend(&tpdu);
        let d = decode_submit(&pdu).unwrap();
        assert_eq!(d.text, "hello");
        assert_eq!(d.to, "1234");
        assert_eq!(d.validity, None);
        assert_eq!(
            d.concat,
            Some(Concat {
                reference: 0x1234,
                total: 3,
                seq: 2
            })
        );
        // Absolute VP (VPF 11): 2027-11-28T00:00:00Z.
        let d =
            decode_submit(&hex_decode("0019000481214300007211820000000002E834").unwrap()).unwrap();
        assert_eq!(
            (d.text.as_str(), d.to.as_str(), d.validity),
            (
                "hi",
                "1234",
                Some(Validity::Absolute(Timestamp(1_827_360_000_000)))
            )
        );
        // An impossible date in an absolute VP is refused.
        assert!(
            decode_submit(&hex_decode("0019000481214300007231820000000002E834").unwrap()).is_err()
        );
        // Enhanced VP (VPF 01), relative 30 s: kept raw.
        let d =
            decode_submit(&hex_decode("0009000481214300000230000000000002E834").unwrap()).unwrap();
        assert_eq!(
            d.validity,
            Some(Validity::Enhanced([0x02, 0x30, 0, 0, 0, 0, 0]))
        );
    }

    #[test]
    fn decode_submit_rejections() {
        let good = hex_decode(&GAMMU.replace(' ', "")).unwrap();
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(
            decode_submit(&extra),
            Err(PduError::TrailingData { extra: 1 })
        );
        assert_eq!(decode_submit(&[]), Err(PduError::Truncated { at: 0 }));
        assert_eq!(
            decode_submit(&hex_decode("001100008100000000").unwrap()),
            Err(PduError::InvalidNumber)
        );
        // UDL 161 septets (141 octets) is more than TP-UD can hold.
        let mut long = hex_decode("0011000481214300000100").unwrap();
        long[10] = 161;
        long.extend([0u8; 141]);
        assert_eq!(
            decode_submit(&long),
            Err(PduError::Malformed("user data longer than 140 octets"))
        );
        for n in 0..good.len() {
            assert!(decode_submit(&good[..n]).is_err(), "{n}");
        }
        let mut deliver = good.clone();
        deliver[8] = 0x04;
        assert_eq!(
            decode_submit(&deliver),
            Err(PduError::Unsupported("not an SMS-SUBMIT"))
        );
        let mut eight_bit = good.clone();
        eight_bit[19] = 0x04;
        assert!(matches!(
            decode_submit(&eight_bit),
            Err(PduError::Unsupported(_))
        ));
        assert_eq!(hex_decode("0G"), Err(PduError::BadHex));
        assert_eq!(hex_decode("0"), Err(PduError::BadHex));
        assert_eq!(hex_decode("  0a0B\r\n").unwrap(), vec![0x0A, 0x0B]);
        assert_eq!(hex_decode("0A\u{1A}").unwrap(), vec![0x0A]);
    }

    #[test]
    fn status_report_round_trip_and_classes() {
        let hex = encode_status_report(Some("+491710760000"), 42, "+15551234567", 0x00);
        let r = decode_status_report(&hex_decode(&hex).unwrap()).unwrap();
        assert_eq!(
            r,
            StatusReport {
                message_reference: 42,
                recipient: "+15551234567".into(),
                status: 0,
                class: ReportClass::Delivered
            }
        );
        let hex = encode_status_report(None, 255, "0170123", 0x46);
        assert!(hex.starts_with("0006FF07"));
        let r = decode_status_report(&hex_decode(&hex).unwrap()).unwrap();
        assert_eq!(r.recipient, "0170123");
        assert_eq!(r.class, ReportClass::Failed);
        for (st, class) in [
            (0x00, ReportClass::Delivered),
            (0x02, ReportClass::Delivered),
            (0x1F, ReportClass::Delivered),
            (0x20, ReportClass::Pending),
            (0x30, ReportClass::Pending),
            (0x3F, ReportClass::Pending),
            (0x40, ReportClass::Failed),
            (0x5F, ReportClass::Failed),
            (0x60, ReportClass::Failed),
            (0x7F, ReportClass::Failed),
            (0x80, ReportClass::Failed),
        ] {
            assert_eq!(ReportClass::from_status(st), class);
            let hex = encode_status_report(None, 1, "+1555", st);
            assert_eq!(
                decode_status_report(&hex_decode(&hex).unwrap())
                    .unwrap()
                    .class,
                class
            );
        }
        // A report is not a submit and vice versa.
        let hex = encode_status_report(None, 1, "+1555", 0);
        assert!(decode_submit(&hex_decode(&hex).unwrap()).is_err());
        let good = hex_decode(&GAMMU.replace(' ', "")).unwrap();
        assert!(decode_status_report(&good).is_err());
    }

    #[test]
    fn status_report_hand_built() {
        // Built by hand, independently of encode_status_report: SCA +31624000000, MR 0x0D,
        // RA +31612345678, SCTS/DT 2011-02-31 15:21:53, ST 00.
        let r = decode_status_report(
            &hex_decode("07911326040000F0060D0B911316325476F8112013511235401120135112354000")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.message_reference, 0x0D);
        assert_eq!(r.recipient, "+31612345678");
        assert_eq!(r.class, ReportClass::Delivered);
    }

    #[test]
    fn decoders_never_panic_on_garbage() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: Vec<Vec<u8>> = vec![
            hex_decode(&GAMMU.replace(' ', "")).unwrap(),
            hex_decode(&encode_status_report(Some("+4917"), 1, "+1555", 0)).unwrap(),
            hex_decode(&encode_submit("+4917", &"€x".repeat(90), &opts()).unwrap()[1].hex).unwrap(),
            hex_decode(&encode_submit("+4917", &"😀".repeat(40), &opts()).unwrap()[0].hex).unwrap(),
        ];
        for _ in 0..5000 {
            let r = next();
            let mut input = if r % 3 == 0 {
                let len = (next() % 200) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                let mut v = seeds[(r as usize / 3) % seeds.len()].clone();
                for _ in 0..(next() % 4) {
                    let i = next() as usize % v.len();
                    v[i] = next() as u8;
                }
                v
            };
            let cut = next() as usize % (input.len() + 1);
            if r % 5 == 0 {
                input.truncate(cut);
            }
            let _ = decode_submit(&input);
            let _ = decode_status_report(&input);
            let _ = hex_decode(&String::from_utf8_lossy(&input));
            let fill = (next() % 8) as u8;
            let septets = gsm7::unpack(&input, fill, (next() % 300) as usize);
            assert!(septets.len() * 7 <= input.len() * 8);
            let _ = gsm7::decode(&septets);
            let _ = gsm7::decode(&input);
            for n in 0..input.len().min(40) {
                let _ = decode_submit(&input[..n]);
                let _ = decode_status_report(&input[..n]);
            }
        }
    }
}
