//! The SMS validity period (TP-VP, 3GPP TS 23.040 9.2.3.12): how long the network may keep
//! trying to deliver an SMS. The promise is that no code is delivered after it expires, so the
//! period we send must never end after the code's expiry.
//!
//! Which format, and why:
//! - **Relative** (TP-VPF 10, one octet): understood by every SMSC and modem, and independent of
//!   anyone's clock, but its shortest value is 5 minutes and its steps grow to 30 minutes, a day
//!   and a week. It is used, rounded down, whenever it ends before the expiry with
//!   [`SUBMIT_SLACK`] to spare: the SMSC counts it from when it receives the SMS-SUBMIT, which is
//!   after we encode it (the AT+CMGS exchange, earlier parts of a long text, a slow network).
//! - **Absolute** (TP-VPF 11, the 7-octet TP-SCTS layout): used for everything shorter, the
//!   30-second code included. It carries the expiry instant itself, rounded down to the second,
//!   in UTC (time-zone octet 00, which 23.040 defines unambiguously), so neither a slow hand-over
//!   nor the step size can push delivery past the expiry. It is part of GSM 03.40 since phase 1;
//!   modems pass the TPDU through untouched, and text-mode AT+CSMP on Telit, Quectel and SIMCom
//!   documents it too. Its one weakness is that it trusts the host's and the SMSC's clocks: run
//!   NTP (a host clock that is early makes the SMS live longer than the code by that much).
//! - **Enhanced** (TP-VPF 01, relative seconds) would be the most precise, but it is the least
//!   implemented format: gammu, smstools, Kannel and Android's `SmsMessage` send only relative
//!   periods (gammu issue #532 asks for absolute, not enhanced), PDU libraries reject or misread
//!   VPF 01 (xlab/at #37), and an SMSC that does not know it answers TP-FCS C6 "TP-VPF not
//!   supported" or ignores the field and keeps the SMS for its default, often days. We decode
//!   it (raw) but never send it.
//!
//! Everything here is a pure function of its arguments; "now" comes from the caller's clock.

use std::time::Duration;

use super::pdu::PduError;
use crate::clock::Timestamp;

/// Time allowed between encoding an SMS-SUBMIT and the SMSC receiving it, for relative periods,
/// which the SMSC counts from its receipt: a relative period is used only if it ends this much
/// before the expiry (the default `send_timeout` is as long).
pub const SUBMIT_SLACK: Duration = Duration::from_secs(60);

/// The TP-VP field as we send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidityPeriod {
    /// TP-VPF 10: one octet, 5 minutes to 63 weeks (9.2.3.12.1).
    Relative(u8),
    /// TP-VPF 11: the 7 octets of an absolute expiry time (9.2.3.12.2).
    Absolute([u8; 7]),
}

impl ValidityPeriod {
    /// The TP-VPF bits of the first octet (bits 4 and 3).
    pub fn vpf_bits(&self) -> u8 {
        match self {
            ValidityPeriod::Relative(_) => 0x10,
            ValidityPeriod::Absolute(_) => 0x18,
        }
    }

    /// Appends the TP-VP octets.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            ValidityPeriod::Relative(vp) => out.push(*vp),
            ValidityPeriod::Absolute(t) => out.extend_from_slice(t),
        }
    }
}

/// A TP-VP field as decoded from an SMS-SUBMIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// TP-VPF 10: the period, counted from the SMSC's receipt.
    Relative(Duration),
    /// TP-VPF 11: the expiry instant, time zone applied, whole seconds.
    Absolute(Timestamp),
    /// TP-VPF 01: the 7 raw octets (we never send this format).
    Enhanced([u8; 7]),
}

/// Relative TP-VP value's duration (23.040 9.2.3.12.1).
pub fn validity_duration(vp: u8) -> Duration {
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let vp64 = u64::from(vp);
    match vp {
        0..=143 => minutes((vp64 + 1) * 5),
        144..=167 => minutes(12 * 60 + (vp64 - 143) * 30),
        168..=196 => minutes((vp64 - 166) * 24 * 60),
        197..=255 => minutes((vp64 - 192) * 7 * 24 * 60),
    }
}

/// The largest relative TP-VP whose duration does not exceed `d`. Below 5 minutes the answer
/// is 0x00 (5 minutes), the shortest period the field can express, which is longer than `d`:
/// [`validity_for`] sends an absolute period then. Above 63 weeks it is 0xFF.
pub fn validity_octet(d: Duration) -> u8 {
    // Each range of the table is linear, so the octet is computed, not searched: this runs for
    // every message.
    let m = d.as_secs() / 60;
    match m {
        0..5 => 0,
        5..720 => (m / 5 - 1) as u8,
        720..1440 => (143 + (m - 720) / 30) as u8,
        1440..2880 => 167,
        2880..43_200 => (166 + m / 1440) as u8,
        43_200..50_400 => 196,
        _ => (192 + (m / 10_080).min(63)) as u8,
    }
}

/// The validity period for an SMS encoded at `now` for a code that expires at `expires_at`:
/// relative when a relative period ends by the expiry with [`SUBMIT_SLACK`] to spare, else the
/// expiry itself (absolute, UTC, rounded down to the second). Never later than the expiry.
pub fn validity_for(now: Timestamp, expires_at: Timestamp) -> Result<ValidityPeriod, PduError> {
    let budget = now.until(expires_at).saturating_sub(SUBMIT_SLACK);
    let vp = validity_octet(budget);
    if validity_duration(vp) <= budget {
        Ok(ValidityPeriod::Relative(vp))
    } else {
        Ok(ValidityPeriod::Absolute(absolute(expires_at, 0)?))
    }
}

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Two decimal digits as one swapped semi-octet: units in the high nibble, tens in the low.
fn swapped(v: i64) -> u8 {
    ((v % 10) as u8) << 4 | (v / 10) as u8
}

/// The 7-octet TP-SCTS layout (23.040 9.2.3.11) of instant `t` (rounded down to the second),
/// written as local time `tz_quarters` quarter-hours east of UTC: year (2000-2099), month, day,
/// hour, minute, second, each as swapped semi-octets, then the time zone with its sign in bit 3.
pub fn absolute(t: Timestamp, tz_quarters: i8) -> Result<[u8; 7], PduError> {
    if !(-79..=79).contains(&tz_quarters) {
        return Err(PduError::Unsupported("time zone beyond 79 quarter-hours"));
    }
    let local = t.0.div_euclid(1000) + i64::from(tz_quarters) * 900;
    let (days, secs) = (
        local.div_euclid(SECS_PER_DAY),
        local.rem_euclid(SECS_PER_DAY),
    );
    let (y, m, d) = civil_from_days(days);
    if !(2000..=2099).contains(&y) {
        return Err(PduError::Unsupported("validity period outside 2000-2099"));
    }
    let q = i64::from(tz_quarters.unsigned_abs());
    let sign = if tz_quarters < 0 { 0x08 } else { 0x00 };
    Ok([
        swapped(y - 2000),
        swapped(m),
        swapped(d),
        swapped(secs / 3600),
        swapped(secs / 60 % 60),
        swapped(secs % 60),
        swapped(q) | sign,
    ])
}

/// The instant a TP-SCTS-layout field names (years 00-99 are 2000-2099). Every digit must be
/// decimal and every field in range, the day included; the result is in whole seconds.
pub fn decode_absolute(o: &[u8; 7]) -> Result<Timestamp, PduError> {
    let digits = |b: u8| -> Result<i64, PduError> {
        let (tens, units) = (b & 0x0F, b >> 4);
        if tens > 9 || units > 9 {
            return Err(PduError::Malformed("non-decimal digit in a time stamp"));
        }
        Ok(i64::from(tens) * 10 + i64::from(units))
    };
    let y = 2000 + digits(o[0])?;
    let m = digits(o[1])?;
    let d = digits(o[2])?;
    let (hh, mm, ss) = (digits(o[3])?, digits(o[4])?, digits(o[5])?);
    let q = digits(o[6] & !0x08)?;
    let east = if o[6] & 0x08 != 0 { -q } else { q };
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 => 29,
        2 => 28,
        _ => return Err(PduError::Malformed("month out of range in a time stamp")),
    };
    if d == 0 || d > month_days || hh > 23 || mm > 59 || ss > 59 {
        return Err(PduError::Malformed("time stamp field out of range"));
    }
    let local = days_from_civil(y, m, d) * SECS_PER_DAY + hh * 3600 + mm * 60 + ss;
    Ok(Timestamp((local - east * 900) * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;
    /// 2026-12-02T19:00:00Z.
    const T0: Timestamp = Timestamp(1_796_238_000 * S);

    fn at(secs: u64) -> Timestamp {
        T0.plus(Duration::from_secs(secs))
    }

    #[test]
    fn validity_rounding_table() {
        let m = |x: u64| Duration::from_secs(x * 60);
        let h = |x: u64| m(x * 60);
        let d = |x: u64| h(x * 24);
        for (dur, vp) in [
            (Duration::ZERO, 0x00),
            (m(4), 0x00),
            (m(5), 0x00),
            (m(9), 0x00),
            (m(10), 0x01),
            (m(11), 0x01),
            (h(12), 143),
            (h(12) + m(29), 143),
            (h(12) + m(30), 144),
            (h(13), 145),
            (h(24), 167),
            (h(47), 167),
            (d(2), 168),
            (d(30), 196),
            (d(34), 196),
            (d(35), 197),
            (d(365), 244),
            (d(441), 255),
            (d(3650), 255),
        ] {
            assert_eq!(validity_octet(dur), vp, "{dur:?}");
        }
        for vp in 0..=255u8 {
            let exact = validity_duration(vp);
            assert_eq!(validity_octet(exact), vp);
            assert!(exact >= m(5));
            // Just under a step rounds down to the step before.
            if vp > 0 {
                assert_eq!(validity_octet(exact - Duration::from_secs(1)), vp - 1);
            }
        }
        assert_eq!(validity_duration(0xFF), d(441));
        // Against the plain search it replaced, minute by minute over the whole range.
        for min in 0..(d(450).as_secs() / 60) {
            let dur = m(min);
            let search = (0..=255u8)
                .rev()
                .find(|&vp| validity_duration(vp) <= dur)
                .unwrap_or(0);
            assert_eq!(validity_octet(dur), search, "{min} min");
        }
    }

    #[test]
    fn short_lifetimes_get_the_expiry_itself() {
        // 19:00:00 + remaining, time zone 00.
        for (remaining, octets) in [
            (0, [0x62, 0x21, 0x20, 0x91, 0x00, 0x00, 0x00]),
            (1, [0x62, 0x21, 0x20, 0x91, 0x00, 0x10, 0x00]),
            (30, [0x62, 0x21, 0x20, 0x91, 0x00, 0x03, 0x00]),
            (4 * 60 + 59, [0x62, 0x21, 0x20, 0x91, 0x40, 0x95, 0x00]),
            (5 * 60, [0x62, 0x21, 0x20, 0x91, 0x50, 0x00, 0x00]),
            // 5 min + slack - 1 s: a relative 5 min could end after the expiry.
            (6 * 60 - 1, [0x62, 0x21, 0x20, 0x91, 0x50, 0x95, 0x00]),
        ] {
            assert_eq!(
                validity_for(T0, at(remaining)),
                Ok(ValidityPeriod::Absolute(octets)),
                "{remaining} s"
            );
        }
        // Milliseconds are cut, never rounded up.
        assert_eq!(
            validity_for(T0, Timestamp(T0.0 + 1_999)),
            Ok(ValidityPeriod::Absolute([
                0x62, 0x21, 0x20, 0x91, 0x00, 0x10, 0x00
            ]))
        );
        // Already expired: the past instant, which the SMSC discards.
        assert_eq!(
            validity_for(T0, Timestamp(T0.0 - 5 * S)),
            Ok(ValidityPeriod::Absolute([
                0x62, 0x21, 0x20, 0x81, 0x95, 0x55, 0x00
            ]))
        );
    }

    #[test]
    fn longer_lifetimes_stay_relative_and_end_before_the_expiry() {
        let min = |x: u64| x * 60;
        for (remaining, vp) in [
            (min(6), 0x00),
            (min(10), 0x00),
            (min(11), 0x01),
            (min(15), 0x01),
            (min(61), 11),
            (min(12 * 60), 142),
            (min(12 * 60 + 1), 143),
            (min(24 * 60), 166),
            (min(24 * 60 + 1), 167),
            (min(25 * 60), 167),
            (min(3 * 24 * 60), 168),
            (min(500 * 24 * 60), 255),
        ] {
            let got = validity_for(T0, at(remaining));
            assert_eq!(got, Ok(ValidityPeriod::Relative(vp)), "{remaining} s");
            assert!(validity_duration(vp) + SUBMIT_SLACK <= Duration::from_secs(remaining));
        }
        // Every second of the first 13 hours: whatever is chosen never outlives the code.
        for remaining in 0..13 * 3600 {
            match validity_for(T0, at(remaining)).unwrap() {
                ValidityPeriod::Relative(vp) => {
                    assert!(validity_duration(vp) + SUBMIT_SLACK <= Duration::from_secs(remaining))
                }
                ValidityPeriod::Absolute(o) => {
                    assert!(remaining < 6 * 60, "{remaining}");
                    assert_eq!(decode_absolute(&o), Ok(at(remaining)));
                }
            }
        }
    }

    #[test]
    fn time_zone_nibbles_and_sign() {
        let t = T0; // 19:00:00Z
        for (q, hour, tz) in [
            (0, 0x91, 0x00),
            // +05:30 (22 quarters): 00:30 next day, "22" swapped.
            (22, 0x00, 0x22),
            // +08:00 (32 quarters): 03:00 next day.
            (32, 0x30, 0x23),
            // -05:00 (20 quarters): 14:00, "20" swapped with the sign bit.
            (-20, 0x41, 0x0A),
            // -03:30 (14 quarters): 15:30.
            (-14, 0x51, 0x49),
            // +00:15 and -00:15.
            (1, 0x91, 0x10),
            (-1, 0x81, 0x18),
            // The extremes a sign bit leaves room for.
            (79, 0x41, 0x97),
            (-79, 0x32, 0x9F),
        ] {
            let o = absolute(t, q).unwrap();
            assert_eq!(o[3], hour, "hour at {q}");
            assert_eq!(o[6], tz, "tz at {q}");
            assert_eq!(decode_absolute(&o), Ok(t), "round trip at {q}");
        }
        let o = absolute(t, 22).unwrap();
        assert_eq!(o, [0x62, 0x21, 0x30, 0x00, 0x03, 0x00, 0x22]);
        assert!(absolute(t, 80).is_err());
        assert!(absolute(t, -80).is_err());
    }

    #[test]
    fn semi_octets_are_swapped_and_dates_are_right() {
        // 2027-11-28T00:00:00Z, as in a hand-built PDU: 72 11 82 00 00 00 00.
        let o = [0x72, 0x11, 0x82, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(decode_absolute(&o), Ok(Timestamp(1_827_360_000 * S)));
        assert_eq!(absolute(Timestamp(1_827_360_000 * S), 0), Ok(o));
        // 2000-01-01, 2024-02-29 (leap), 2099-12-31T23:59:59.
        for (secs, o) in [
            (946_684_800, [0x00, 0x10, 0x10, 0, 0, 0, 0]),
            (1_709_164_800, [0x42, 0x20, 0x92, 0, 0, 0, 0]),
            (4_102_444_799, [0x99, 0x21, 0x13, 0x32, 0x95, 0x95, 0]),
        ] {
            assert_eq!(absolute(Timestamp(secs * S), 0), Ok(o), "{secs}");
            assert_eq!(decode_absolute(&o), Ok(Timestamp(secs * S)));
        }
        assert!(absolute(Timestamp(946_684_799 * S), 0).is_err());
        assert!(absolute(Timestamp(4_102_444_800 * S), 0).is_err());
        // Every day from 2000 to 2099 survives the round trip.
        for day in 10_957..47_482 {
            let t = Timestamp((day * SECS_PER_DAY + 12 * 3600 + 34 * 60 + 56) * S);
            assert_eq!(decode_absolute(&absolute(t, 0).unwrap()), Ok(t), "{day}");
        }
    }

    #[test]
    fn bad_time_stamps_are_refused() {
        for bad in [
            [0x62, 0x21, 0x20, 0x91, 0x00, 0x0A, 0x00], // digit A
            [0x62, 0x31, 0x20, 0x91, 0x00, 0x00, 0x00], // month 13
            [0x62, 0x00, 0x20, 0x91, 0x00, 0x00, 0x00], // month 0
            [0x62, 0x20, 0x03, 0x91, 0x00, 0x00, 0x00], // 30 February
            [0x52, 0x20, 0x92, 0x00, 0x00, 0x00, 0x00], // 29 February 2025
            [0x62, 0x21, 0x00, 0x91, 0x00, 0x00, 0x00], // day 0
            [0x62, 0x21, 0x20, 0x42, 0x00, 0x00, 0x00], // hour 24
            [0x62, 0x21, 0x20, 0x91, 0x06, 0x00, 0x00], // minute 60
            [0x62, 0x21, 0x20, 0x91, 0x00, 0x06, 0x00], // second 60
            [0x62, 0x21, 0x20, 0x91, 0x00, 0x00, 0xF0], // tz digit F
        ] {
            assert!(decode_absolute(&bad).is_err(), "{bad:02X?}");
        }
        assert!(decode_absolute(&[0x42, 0x20, 0x92, 0, 0, 0, 0]).is_ok());
    }
}
