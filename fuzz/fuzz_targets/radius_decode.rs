//! Arbitrary bytes as a RADIUS datagram from a NAS: a packet or an error, never a panic; and
//! what decodes survives the server's own steps (authenticator check, password unhiding, a
//! reply to it that decodes and verifies).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otpgate::radius::packet::{self, Packet};

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::decode(data) else {
        return;
    };
    let _ = packet::check_request_authenticator(data, &p, SECRET);
    let _ = p.user_name();
    if let Some(hidden) = p.attr(packet::USER_PASSWORD)
        && let Some(clear) = packet::unhide_password(hidden, SECRET, &p.authenticator)
    {
        // Hiding what came out gives bytes that unhide to it again.
        let again = packet::hide_password(&clear, SECRET, &p.authenticator).unwrap();
        assert_eq!(
            packet::unhide_password(&again, SECRET, &p.authenticator).unwrap(),
            clear
        );
    }
    // A reply carrying the request's attributes back decodes, with a valid Response
    // Authenticator and the Message-Authenticator first.
    let attrs: Vec<(u8, &[u8])> = p
        .attributes
        .iter()
        .filter(|(t, _)| *t != packet::MESSAGE_AUTHENTICATOR)
        .map(|(t, v)| (*t, v.as_slice()))
        .collect();
    if let Ok(reply) = packet::encode_reply(
        packet::ACCESS_CHALLENGE,
        p.identifier,
        &p.authenticator,
        &attrs,
        SECRET,
    ) {
        let r = Packet::decode(&reply).unwrap();
        assert_eq!(r.attributes[0].0, packet::MESSAGE_AUTHENTICATOR);
        assert!(packet::check_response_authenticator(&reply, &p.authenticator, SECRET));
    }
});
