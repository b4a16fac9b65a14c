//! SMS-SUBMIT encoding of any Unicode text: every PDU decodes again, the parts put together
//! give back the text exactly, and each part stays within 3GPP TS 23.040's limits (160 GSM
//! 7-bit septets or 70 UCS-2 units alone; 153 or 67 per part behind a concatenation header).
//! Status reports round-trip too.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use otpgate::channel::sms::gsm7;
use otpgate::channel::sms::pdu::{self, Encoding, PduError, SubmitOptions};
use otpgate::clock::Timestamp;

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    validity_secs: u32,
    status_report: bool,
    smsc: Option<u64>,
    concat_ref: u8,
    to: u64,
    international: bool,
    mr: u8,
    status: u8,
}

/// Octets of user data a single SMS can carry (TP-UDL's upper bound, 23.040 9.2.3.16).
const MAX_UD_OCTETS: usize = 140;

fuzz_target!(|input: Input| {
    let to = format!("{}{}", if input.international { "+" } else { "" }, input.to);
    let opts = SubmitOptions {
        // A fixed "now" in 2026; the code lives up to 30 days (relative VP reaches 441 days,
        // the absolute format covers the short lives).
        now: Timestamp(1_795_000_000_000),
        expires_at: Timestamp(1_795_000_000_000).plus(Duration::from_secs(u64::from(
            input.validity_secs % (30 * 86_400),
        ))),
        status_report: input.status_report,
        smsc: input.smsc.map(|s| format!("+{s}")),
        concat_ref: input.concat_ref,
    };
    let text = input.text.as_str();
    let pdus = match pdu::encode_submit(&to, text, &opts) {
        Ok(p) => p,
        Err(PduError::Empty) => {
            assert!(text.is_empty());
            return;
        }
        Err(e) => panic!("encode_submit refused a valid message: {e}"),
    };
    assert_eq!(
        pdus.len(),
        pdu::part_count(text),
        "part_count disagrees with the encoder"
    );
    let total = pdus.len();
    assert!((1..=255).contains(&total));
    let mut joined = String::new();
    for (i, p) in pdus.iter().enumerate() {
        let bytes = pdu::hex_decode(&p.hex).expect("our own hex decodes");
        let sca_len = 1 + usize::from(bytes[0]);
        assert_eq!(
            bytes.len() - sca_len,
            p.tpdu_len,
            "tpdu_len excludes exactly the SCA"
        );
        let d = pdu::decode_submit(&bytes).expect("our own PDU decodes");
        assert_eq!(d.to.trim_start_matches('+'), input.to.to_string());
        assert_eq!(d.status_report, input.status_report);
        assert_eq!(d.encoding, pdu::choose_encoding(text));
        let (single, concat) = match d.encoding {
            Encoding::Gsm7 => (160, 153),
            Encoding::Ucs2 => (70, 67),
        };
        let len = match d.encoding {
            Encoding::Gsm7 => gsm7::septet_len(&d.text).expect("a GSM 7-bit part is GSM 7-bit"),
            Encoding::Ucs2 => d.text.encode_utf16().count(),
        };
        match d.concat {
            None => {
                assert_eq!(total, 1, "a part of several lacks its header");
                assert!(len <= single, "single part of {len} units");
            }
            Some(c) => {
                assert!(total > 1, "a single part carries a header");
                assert!(len <= concat, "part of {len} units behind a header");
                assert_eq!(usize::from(c.total), total);
                assert_eq!(usize::from(c.seq), i + 1);
                assert_eq!(c.reference, u16::from(input.concat_ref));
            }
        }
        // User data octets: what follows TP-UDL is bounded by 140. The header before it: first
        // octet, MR, the address (at most 12), PID, DCS, the validity period (7 octets in the
        // absolute format a short-lived code gets) and UDL.
        assert!(
            p.tpdu_len <= 1 + 1 + 12 + 1 + 1 + 7 + 1 + MAX_UD_OCTETS,
            "TPDU of {} octets",
            p.tpdu_len
        );
        joined.push_str(&d.text);
    }
    assert!(joined == text, "decode(encode(text)) != text");

    // The simulator's status reports decode to what was put in.
    let recipient = format!("+{}", input.to);
    let smsc = opts.smsc.as_deref();
    let hex = pdu::encode_status_report(smsc, input.mr, &recipient, input.status);
    let bytes = pdu::hex_decode(&hex).expect("our own hex decodes");
    let r = pdu::decode_status_report(&bytes).expect("our own status report decodes");
    assert_eq!(r.message_reference, input.mr);
    assert_eq!(r.status, input.status);
    assert_eq!(r.recipient.trim_start_matches('+'), input.to.to_string());
});
