//! RADIUS packets on byte slices (RFC 2865, RFC 2869 Message-Authenticator, RFC 5080): decode,
//! encode, User-Password hiding, Response Authenticator and Message-Authenticator. No I/O.
//!
//! A small codec of our own: the `radius` crate on crates.io has not been maintained since
//! 2022, its dictionary machinery is much larger than the six attributes a front door needs,
//! and the BlastRADIUS rules (Message-Authenticator first in every reply, checked on every
//! request) are the part that has to be exactly right, so it lives here where it is tested.

use hmac::{KeyInit, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Access-Request.
pub const ACCESS_REQUEST: u8 = 1;
/// Access-Accept.
pub const ACCESS_ACCEPT: u8 = 2;
/// Access-Reject.
pub const ACCESS_REJECT: u8 = 3;
/// Access-Challenge.
pub const ACCESS_CHALLENGE: u8 = 11;
/// Status-Server (RFC 5997): a NAS asking whether the server is alive.
pub const STATUS_SERVER: u8 = 12;

/// User-Name.
pub const USER_NAME: u8 = 1;
/// User-Password (hidden per RFC 2865 5.2).
pub const USER_PASSWORD: u8 = 2;
/// CHAP-Password: not supported (the password must reach the directory).
pub const CHAP_PASSWORD: u8 = 3;
/// Reply-Message.
pub const REPLY_MESSAGE: u8 = 18;
/// State.
pub const STATE: u8 = 24;
/// Session-Timeout.
pub const SESSION_TIMEOUT: u8 = 27;
/// Message-Authenticator (RFC 2869 5.14).
pub const MESSAGE_AUTHENTICATOR: u8 = 80;

/// The smallest packet: the header.
pub const HEADER_LEN: usize = 20;
/// The largest packet RFC 2865 allows.
pub const MAX_LEN: usize = 4096;
/// The longest User-Password RFC 2865 allows, hidden.
pub const MAX_PASSWORD_LEN: usize = 128;

type HmacMd5 = hmac::Hmac<Md5>;

/// Why bytes are not a RADIUS packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than 20 bytes, or fewer than the Length field says.
    #[error("packet shorter than its header or its Length field")]
    Short,
    /// Length field below 20 or above 4096.
    #[error("Length field out of range")]
    BadLength,
    /// An attribute's length is below 2 or runs past the packet.
    #[error("attribute {0} has a bad length")]
    BadAttribute(u8),
    /// A Message-Authenticator that is not 16 bytes, or more than one.
    #[error("malformed Message-Authenticator")]
    BadMessageAuthenticator,
}

/// Why a packet cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An attribute value longer than 253 bytes.
    #[error("attribute {0} is longer than 253 bytes")]
    AttributeTooLong(u8),
    /// The whole packet would exceed 4096 bytes.
    #[error("packet longer than 4096 bytes")]
    TooLong,
}

/// A decoded packet. Attributes keep their order; values are copied out of the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The Code field.
    pub code: u8,
    /// The Identifier field.
    pub identifier: u8,
    /// The Authenticator field (Request Authenticator in a request).
    pub authenticator: [u8; 16],
    /// (type, value) pairs in wire order.
    pub attributes: Vec<(u8, Vec<u8>)>,
    /// Offset of the Message-Authenticator's value in the datagram, when present.
    pub message_authenticator_at: Option<usize>,
}

impl Packet {
    /// Decodes one datagram. Bytes past the Length field are padding and ignored (RFC 2865 3).
    pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Err(DecodeError::Short);
        };
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if !(HEADER_LEN..=MAX_LEN).contains(&len) {
            return Err(DecodeError::BadLength);
        }
        let Some(body) = buf.get(HEADER_LEN..len) else {
            return Err(DecodeError::Short);
        };
        let mut authenticator = [0u8; 16];
        authenticator.copy_from_slice(&header[4..20]);
        let mut attributes = Vec::new();
        let mut ma = None;
        let mut at = 0;
        while at < body.len() {
            let t = body[at];
            let l = usize::from(*body.get(at + 1).ok_or(DecodeError::BadAttribute(t))?);
            if l < 2 || at + l > body.len() {
                return Err(DecodeError::BadAttribute(t));
            }
            if t == MESSAGE_AUTHENTICATOR {
                if l != 18 || ma.is_some() {
                    return Err(DecodeError::BadMessageAuthenticator);
                }
                ma = Some(HEADER_LEN + at + 2);
            }
            attributes.push((t, body[at + 2..at + l].to_vec()));
            at += l;
        }
        Ok(Packet {
            code: header[0],
            identifier: header[1],
            authenticator,
            attributes,
            message_authenticator_at: ma,
        })
    }

    /// The first value of attribute `t`.
    pub fn attr(&self, t: u8) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| v.as_slice())
    }

    /// User-Name as text, when present and UTF-8.
    pub fn user_name(&self) -> Option<&str> {
        self.attr(USER_NAME)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The result of checking a request's Message-Authenticator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticity {
    /// The request carries none.
    Absent,
    /// It carries one and it matches the shared secret.
    Valid,
    /// It carries one that does not match: wrong secret or a forged packet.
    Invalid,
}

/// Checks the Message-Authenticator of a request datagram `raw` that decoded to `p`:
/// HMAC-MD5(secret, packet with the attribute's value zeroed) (RFC 2869 5.14).
pub fn check_request_authenticator(raw: &[u8], p: &Packet, secret: &[u8]) -> Authenticity {
    let Some(at) = p.message_authenticator_at else {
        return Authenticity::Absent;
    };
    let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
    let Some(packet) = raw.get(..len) else {
        return Authenticity::Invalid;
    };
    let Some(given) = packet.get(at..at + 16) else {
        return Authenticity::Invalid;
    };
    let mut zeroed = packet.to_vec();
    zeroed[at..at + 16].fill(0);
    if bool::from(hmac_md5(secret, &zeroed).ct_eq(given)) {
        Authenticity::Valid
    } else {
        Authenticity::Invalid
    }
}

fn hmac_md5(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut mac = match HmacMd5::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => return [0; 16],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Recovers a User-Password hidden with `secret` and the request's authenticator (RFC 2865
/// 5.2). `None` when the length is not a multiple of 16 in 16..=128. Trailing NULs (padding)
/// are removed.
pub fn unhide_password(hidden: &[u8], secret: &[u8], authenticator: &[u8; 16]) -> Option<Vec<u8>> {
    if hidden.is_empty() || hidden.len() % 16 != 0 || hidden.len() > MAX_PASSWORD_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(hidden.len());
    let mut prev: &[u8] = authenticator;
    for chunk in hidden.chunks(16) {
        let b = md5(&[secret, prev]);
        out.extend(chunk.iter().zip(b).map(|(c, k)| c ^ k));
        prev = chunk;
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    Some(out)
}

/// Hides a password as a client does (RFC 2865 5.2); `None` when longer than 128 bytes.
pub fn hide_password(password: &[u8], secret: &[u8], authenticator: &[u8; 16]) -> Option<Vec<u8>> {
    if password.len() > MAX_PASSWORD_LEN {
        return None;
    }
    let padded_len = password.len().div_ceil(16).max(1) * 16;
    let mut padded = password.to_vec();
    padded.resize(padded_len, 0);
    let mut out: Vec<u8> = Vec::with_capacity(padded_len);
    for (i, chunk) in padded.chunks(16).enumerate() {
        let prev: &[u8] = if i == 0 {
            authenticator
        } else {
            &out[(i - 1) * 16..i * 16]
        };
        let b = md5(&[secret, prev]);
        let c: Vec<u8> = chunk.iter().zip(b).map(|(p, k)| p ^ k).collect();
        out.extend(c);
    }
    Some(out)
}

fn encode_raw(
    code: u8,
    identifier: u8,
    authenticator: &[u8; 16],
    attributes: &[(u8, &[u8])],
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[code, identifier, 0, 0]);
    out.extend_from_slice(authenticator);
    for (t, v) in attributes {
        let l = u8::try_from(v.len() + 2).map_err(|_| EncodeError::AttributeTooLong(*t))?;
        out.push(*t);
        out.push(l);
        out.extend_from_slice(v);
    }
    let len = u16::try_from(out.len())
        .ok()
        .filter(|l| usize::from(*l) <= MAX_LEN)
        .ok_or(EncodeError::TooLong)?;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Builds a reply to a request with authenticator `request_auth`: a Message-Authenticator
/// first (BlastRADIUS: a forged reply cannot be spliced in front of it), then `attributes`,
/// then the Response Authenticator MD5(Code+ID+Length+RequestAuth+Attributes+Secret).
pub fn encode_reply(
    code: u8,
    identifier: u8,
    request_auth: &[u8; 16],
    attributes: &[(u8, &[u8])],
    secret: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let mut all: Vec<(u8, &[u8])> = Vec::with_capacity(attributes.len() + 1);
    all.push((MESSAGE_AUTHENTICATOR, &[0u8; 16]));
    all.extend(
        attributes
            .iter()
            .filter(|(t, _)| *t != MESSAGE_AUTHENTICATOR),
    );
    let mut out = encode_raw(code, identifier, request_auth, &all)?;
    // The Message-Authenticator of a reply is computed with the Request Authenticator in
    // the header (RFC 2869 5.14), before the Response Authenticator replaces it.
    let mac = hmac_md5(secret, &out);
    out[HEADER_LEN + 2..HEADER_LEN + 18].copy_from_slice(&mac);
    let response = md5(&[&out, secret]);
    out[4..20].copy_from_slice(&response);
    Ok(out)
}

/// Builds an Access-Request with a Message-Authenticator (first) as a client does: for tests,
/// the fuzz target and the benchmark. `attributes` must already hold a hidden password.
pub fn encode_request(
    identifier: u8,
    authenticator: &[u8; 16],
    attributes: &[(u8, &[u8])],
    secret: &[u8],
    with_message_authenticator: bool,
) -> Result<Vec<u8>, EncodeError> {
    let mut all: Vec<(u8, &[u8])> = Vec::with_capacity(attributes.len() + 1);
    if with_message_authenticator {
        all.push((MESSAGE_AUTHENTICATOR, &[0u8; 16]));
    }
    all.extend(attributes.iter().copied());
    let mut out = encode_raw(ACCESS_REQUEST, identifier, authenticator, &all)?;
    if with_message_authenticator {
        let mac = hmac_md5(secret, &out);
        out[HEADER_LEN + 2..HEADER_LEN + 18].copy_from_slice(&mac);
    }
    Ok(out)
}

/// Checks a reply's Response Authenticator against the request it answers (client side: tests
/// and the fuzz target).
pub fn check_response_authenticator(reply: &[u8], request_auth: &[u8; 16], secret: &[u8]) -> bool {
    let Some(header) = reply.get(..HEADER_LEN) else {
        return false;
    };
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let Some(packet) = reply.get(..len).filter(|p| p.len() >= HEADER_LEN) else {
        return false;
    };
    let expected = md5(&[&packet[..4], request_auth, &packet[HEADER_LEN..], secret]);
    bool::from(expected.ct_eq(&packet[4..20]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    const SECRET: &[u8] = b"xyzzy5461";

    /// RFC 2865 7.1: the Access-Request from NAS 192.168.1.16 for user "nemo".
    fn rfc_request() -> Vec<u8> {
        unhex(
            "01 00 00 38 0f 40 3f 94 73 97 80 57 bd 83 d5 cb
             98 f4 22 7a 01 06 6e 65 6d 6f 02 12 0d be 70 8d
             93 d4 13 ce 31 96 e4 3f 78 2a 0a ee 04 06 c0 a8
             01 10 05 06 00 00 00 03",
        )
    }

    /// RFC 2865 7.1: the Access-Accept that answers it.
    fn rfc_accept() -> Vec<u8> {
        unhex(
            "02 00 00 26 86 fe 22 0e 76 24 ba 2a 10 05 f6 bf
             9b 55 e0 b2 06 06 00 00 00 01 0f 06 00 00 00 00
             0e 06 c0 a8 01 03",
        )
    }

    fn auth_of(p: &Packet) -> [u8; 16] {
        p.authenticator
    }

    #[test]
    fn rfc2865_request_decodes_and_its_password_unhides() {
        let raw = rfc_request();
        let p = Packet::decode(&raw).unwrap();
        assert_eq!((p.code, p.identifier), (ACCESS_REQUEST, 0));
        assert_eq!(p.user_name(), Some("nemo"));
        assert_eq!(p.attributes.len(), 4);
        assert_eq!(p.message_authenticator_at, None);
        let hidden = p.attr(USER_PASSWORD).unwrap();
        let clear = unhide_password(hidden, SECRET, &auth_of(&p)).unwrap();
        assert_eq!(clear, b"arctangent");
        // And hiding it again gives the RFC's bytes.
        assert_eq!(
            hide_password(b"arctangent", SECRET, &auth_of(&p)).unwrap(),
            hidden
        );
        assert_eq!(
            check_request_authenticator(&raw, &p, SECRET),
            Authenticity::Absent
        );
    }

    #[test]
    fn rfc2865_accept_has_the_rfc_response_authenticator() {
        let req = Packet::decode(&rfc_request()).unwrap();
        let accept = rfc_accept();
        assert!(check_response_authenticator(
            &accept,
            &req.authenticator,
            SECRET
        ));
        assert!(!check_response_authenticator(
            &accept,
            &req.authenticator,
            b"wrong"
        ));
        let mut tampered = accept.clone();
        tampered[25] ^= 1;
        assert!(!check_response_authenticator(
            &tampered,
            &req.authenticator,
            SECRET
        ));
    }

    /// An Access-Request FreeRADIUS 3.2.1's radclient sent (secret "testing123testing"),
    /// its Message-Authenticator last: another implementation's HMAC-MD5 and hiding.
    #[test]
    fn radclient_request_verifies() {
        let raw = unhex(
            "016b003f42b4232e7f4f5267814a0e86eea5bd120107616c69636502123ad9669f1a61c1be9f8291
             e5ade967da501288164ac149c2e219f02e4b6ead0d8522",
        );
        let p = Packet::decode(&raw).unwrap();
        assert_eq!(p.user_name(), Some("alice"));
        assert_eq!(p.message_authenticator_at, Some(47));
        let secret = b"testing123testing";
        assert_eq!(
            check_request_authenticator(&raw, &p, secret),
            Authenticity::Valid
        );
        assert_eq!(
            check_request_authenticator(&raw, &p, b"testing123"),
            Authenticity::Invalid
        );
        let pw = unhide_password(p.attr(USER_PASSWORD).unwrap(), secret, &p.authenticator);
        assert_eq!(pw.as_deref(), Some(&b"alicepw"[..]));
    }

    #[test]
    fn long_passwords_chain_blocks_and_round_trip() {
        let auth = [7u8; 16];
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 128] {
            let pw: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let hidden = hide_password(&pw, b"s3cret", &auth).unwrap();
            assert_eq!(hidden.len(), len.div_ceil(16).max(1) * 16, "{len}");
            assert_eq!(unhide_password(&hidden, b"s3cret", &auth).unwrap(), pw);
            // The wrong secret does not give the password back.
            assert_ne!(unhide_password(&hidden, b"other", &auth), Some(pw));
        }
        assert!(hide_password(&[b'x'; 129], b"s", &auth).is_none());
        for bad in [0usize, 15, 17, 144] {
            assert!(
                unhide_password(&vec![1; bad], b"s", &auth).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn requests_with_message_authenticator_verify_and_tampering_is_seen() {
        let auth = [0x42u8; 16];
        let pw = hide_password(b"pw", b"sec", &auth).unwrap();
        let raw = encode_request(
            9,
            &auth,
            &[(USER_NAME, b"alice"), (USER_PASSWORD, &pw)],
            b"sec",
            true,
        )
        .unwrap();
        let p = Packet::decode(&raw).unwrap();
        assert_eq!(p.message_authenticator_at, Some(22));
        assert_eq!(
            check_request_authenticator(&raw, &p, b"sec"),
            Authenticity::Valid
        );
        assert_eq!(
            check_request_authenticator(&raw, &p, b"other"),
            Authenticity::Invalid
        );
        // Any flipped byte (header, attributes or the authenticator itself) is caught.
        for i in [1usize, 5, 24, 30, raw.len() - 1] {
            let mut t = raw.clone();
            t[i] ^= 0x80;
            let q = Packet::decode(&t).unwrap();
            assert_eq!(
                check_request_authenticator(&t, &q, b"sec"),
                Authenticity::Invalid,
                "{i}"
            );
        }
        let without = encode_request(9, &auth, &[(USER_NAME, b"alice")], b"sec", false).unwrap();
        let q = Packet::decode(&without).unwrap();
        assert_eq!(
            check_request_authenticator(&without, &q, b"sec"),
            Authenticity::Absent
        );
    }

    #[test]
    fn replies_carry_message_authenticator_first_and_a_valid_response_authenticator() {
        let req_auth = [0x11u8; 16];
        let reply = encode_reply(
            ACCESS_CHALLENGE,
            77,
            &req_auth,
            &[
                (STATE, b"0123456789abcdef"),
                (REPLY_MESSAGE, b"Enter the code"),
                (SESSION_TIMEOUT, &300u32.to_be_bytes()),
            ],
            b"sec",
        )
        .unwrap();
        let p = Packet::decode(&reply).unwrap();
        assert_eq!((p.code, p.identifier), (ACCESS_CHALLENGE, 77));
        assert_eq!(p.attributes[0].0, MESSAGE_AUTHENTICATOR);
        assert_eq!(p.attr(STATE), Some(&b"0123456789abcdef"[..]));
        assert_eq!(p.attr(SESSION_TIMEOUT), Some(&[0, 0, 1, 44][..]));
        assert!(check_response_authenticator(&reply, &req_auth, b"sec"));
        // The reply's Message-Authenticator is over the packet with the Request Authenticator.
        let mut with_req = reply.clone();
        with_req[4..20].copy_from_slice(&req_auth);
        with_req[22..38].fill(0);
        assert_eq!(hmac_md5(b"sec", &with_req), reply[22..38]);
    }

    #[test]
    fn malformed_packets_are_refused_with_the_reason() {
        let ok = rfc_request();
        assert_eq!(Packet::decode(&ok[..19]), Err(DecodeError::Short));
        assert_eq!(Packet::decode(&ok[..40]), Err(DecodeError::Short));
        let mut l = ok.clone();
        l[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(Packet::decode(&l), Err(DecodeError::BadLength));
        l[2..4].copy_from_slice(&4097u16.to_be_bytes());
        assert_eq!(Packet::decode(&l), Err(DecodeError::BadLength));
        let mut a = ok.clone();
        a[21] = 1; // User-Name length below 2
        assert_eq!(Packet::decode(&a), Err(DecodeError::BadAttribute(1)));
        a[21] = 200; // runs past the packet
        assert_eq!(Packet::decode(&a), Err(DecodeError::BadAttribute(1)));
        // Padding past the Length field is ignored.
        let mut padded = ok.clone();
        padded.extend_from_slice(&[0xff; 7]);
        assert_eq!(
            Packet::decode(&padded).unwrap(),
            Packet::decode(&ok).unwrap()
        );
        // A short or doubled Message-Authenticator.
        let short_ma = encode_raw(1, 0, &[0; 16], &[(MESSAGE_AUTHENTICATOR, &[0; 15])]).unwrap();
        assert_eq!(
            Packet::decode(&short_ma),
            Err(DecodeError::BadMessageAuthenticator)
        );
        let two = encode_raw(
            1,
            0,
            &[0; 16],
            &[
                (MESSAGE_AUTHENTICATOR, &[0; 16]),
                (MESSAGE_AUTHENTICATOR, &[0; 16]),
            ],
        )
        .unwrap();
        assert_eq!(
            Packet::decode(&two),
            Err(DecodeError::BadMessageAuthenticator)
        );
        // A lone type byte at the end.
        let mut lone = encode_raw(1, 0, &[0; 16], &[]).unwrap();
        lone.push(1);
        lone[3] = 21;
        assert_eq!(Packet::decode(&lone), Err(DecodeError::BadAttribute(1)));
    }

    #[test]
    fn encoding_refuses_oversized_values() {
        let big = [0u8; 254];
        assert_eq!(
            encode_reply(ACCESS_REJECT, 1, &[0; 16], &[(REPLY_MESSAGE, &big)], b"s"),
            Err(EncodeError::AttributeTooLong(REPLY_MESSAGE))
        );
        let v = [0u8; 253];
        let many: Vec<(u8, &[u8])> = (0..17).map(|_| (REPLY_MESSAGE, &v[..])).collect();
        assert_eq!(
            encode_reply(ACCESS_REJECT, 1, &[0; 16], &many, b"s"),
            Err(EncodeError::TooLong)
        );
    }
}
