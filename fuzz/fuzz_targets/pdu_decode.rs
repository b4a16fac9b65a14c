//! Arbitrary bytes as the PDUs a modem hands back (`+CDS` status reports, SMS-SUBMITs as the
//! simulator reads them) and as hex text: a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otpgate::channel::sms::{gsm7, pdu};

fuzz_target!(|data: &[u8]| {
    let _ = pdu::decode_status_report(data);
    if let Ok(d) = pdu::decode_submit(data) {
        // A decoded GSM 7-bit text re-encodes (what the encoder produces it can read back).
        if d.encoding == pdu::Encoding::Gsm7 {
            assert!(gsm7::septet_len(&d.text).is_some());
        }
    }
    let _ = gsm7::decode(data);
    if let Some((&fill, rest)) = data.split_first() {
        let _ = gsm7::unpack(rest, fill, rest.len() * 2);
        // Packing is undone by unpacking, whatever the fill bits (0..=6) before the text.
        let fill = fill % 7;
        let septets: Vec<u8> = rest.iter().map(|s| s & 0x7F).collect();
        let packed = gsm7::pack(&septets, fill);
        assert_eq!(gsm7::unpack(&packed, fill, septets.len()), septets);
    }
    // The same bytes as the hex line after `+CDS: <len>`.
    let text = String::from_utf8_lossy(data);
    if let Ok(bytes) = pdu::hex_decode(&text) {
        let _ = pdu::decode_status_report(&bytes);
        let _ = pdu::decode_submit(&bytes);
    }
});
