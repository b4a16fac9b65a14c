//! WhatsApp webhook requests: the JSON body Meta posts, its signature header and the GET
//! subscription handshake's query. Nothing may panic; a body signed with the app secret
//! verifies, an error never echoes the body, and the handshake only ever echoes a plain challenge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otpgate::channel::whatsapp::webhook;
use otpgate::clock::Timestamp;
use otpgate::secret::Secret;

fuzz_target!(|data: &[u8]| {
    let now = Timestamp(1_764_000_000_000);
    if let Err(e) = webhook::parse_events(data, now) {
        // The error is logged: it names a position and a type, never a value from the body.
        let shown = e.to_string();
        let text = String::from_utf8_lossy(data);
        for run in text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|r| r.len() >= 6)
        {
            assert!(
                !shown.contains(run),
                "the webhook error echoes the body: {shown}"
            );
        }
    }
    let _ = webhook::parse_statuses(data, now);

    let secret = Secret::new("fuzz-app-secret");
    let sig = webhook::sign(data, &secret);
    assert!(webhook::verify_signature(data, Some(&sig), &secret).is_ok());
    let text = String::from_utf8_lossy(data);
    let _ = webhook::verify_signature(data, Some(&text), &secret);

    let token = Secret::new("fuzz-verify-token");
    if let Ok(challenge) = webhook::handshake(&text, &token) {
        assert!(!challenge.is_empty() && challenge.len() <= 128);
        assert!(
            challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
});
