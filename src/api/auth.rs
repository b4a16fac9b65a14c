//! Client authentication. A key arrives as `Authorization: Bearer`, `X-API-Key`, HTTP Basic
//! (client name : key) or, for Kannel-style callers, a user/password pair. It is hashed and
//! compared with every configured client in constant time; failures say nothing more than 401.

use std::net::IpAddr;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientConfig;

/// Credentials found in a request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A bare key (Bearer, X-API-Key, an access-token header).
    Key(String),
    /// A name and a secret (HTTP Basic, Kannel username/password).
    Pair {
        /// Client name.
        user: String,
        /// Key or password.
        secret: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Key(_) => f.write_str("Key(***)"),
            Credentials::Pair { user, .. } => write!(f, "Pair({user}, ***)"),
        }
    }
}

/// Why authentication failed; 401 or 403 to the caller, detail only in our log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials at all.
    Missing,
    /// Credentials that match no client.
    Invalid,
    /// A valid client calling from an address outside its allow list.
    AddressNotAllowed,
}

/// The SHA-256 of a key, as `key_sha256` stores it.
pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Reads credentials from the standard headers.
pub fn from_headers(headers: &http::HeaderMap) -> Option<Credentials> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(token) = strip_prefix_ci(v, "bearer ") {
            return Some(Credentials::Key(token.trim().to_owned()));
        }
        if let Some(b64) = strip_prefix_ci(v, "basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, secret) = text.split_once(':')?;
            return Some(Credentials::Pair {
                user: user.to_owned(),
                secret: secret.to_owned(),
            });
        }
    }
    for name in ["x-api-key", "access-token", "x-access-token"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(Credentials::Key(v.trim().to_owned()));
        }
    }
    None
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// Finds the client these credentials belong to and checks its address allow list.
/// A `Pair` matches the named client's key, or its Kannel password when `allow_password`.
pub fn authenticate<'a>(
    clients: &'a [ClientConfig],
    creds: Option<&Credentials>,
    remote: IpAddr,
    allow_password: bool,
) -> Result<&'a ClientConfig, AuthError> {
    let creds = creds.ok_or(AuthError::Missing)?;
    let mut found: Option<&ClientConfig> = None;
    match creds {
        Credentials::Key(key) => {
            let h = sha256(key);
            // Compare against every client so the time taken does not depend on which matched.
            for c in clients {
                if bool::from(c.key_sha256.ct_eq(&h)) && found.is_none() {
                    found = Some(c);
                }
            }
        }
        Credentials::Pair { user, secret } => {
            let h = sha256(secret);
            for c in clients {
                let key_ok = bool::from(c.key_sha256.ct_eq(&h));
                let pw_ok = allow_password
                    && c.password_sha256
                        .map(|p| bool::from(p.ct_eq(&h)))
                        .unwrap_or(false);
                let name_ok = bool::from(c.name.as_bytes().ct_eq(user.as_bytes()));
                if name_ok && (key_ok || pw_ok) && found.is_none() {
                    found = Some(c);
                }
            }
        }
    }
    let client = found.ok_or(AuthError::Invalid)?;
    let remote = canonical(remote);
    if !client.allow_ips.is_empty() && !client.allow_ips.iter().any(|n| n.contains(&remote)) {
        return Err(AuthError::AddressNotAllowed);
    }
    Ok(client)
}

/// IPv4 clients on a dual-stack socket appear as ::ffff:a.b.c.d; allow lists are written in v4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A fresh random client key and its `key_sha256`, for `otpgate key new`.
pub fn new_key() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "og_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(sha256(&key));
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, key: &str, ips: &[&str]) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            key_sha256: sha256(key),
            password_sha256: Some(sha256("pw")),
            allow_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            whatsapp: true,
            order: None,
            countries: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_style_authenticates() {
        let clients = vec![
            client("adfs", "k1", &[]),
            client("nps", "k2", &["10.0.0.0/8"]),
        ];
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let ten: IpAddr = "10.1.2.3".parse().unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("nps:k2")
        );
        for (h, ip, want) in [
            (headers(&[("authorization", "Bearer k1")]), lo, Ok("adfs")),
            (headers(&[("Authorization", "bearer  k1 ")]), lo, Ok("adfs")),
            (headers(&[("x-api-key", "k2")]), ten, Ok("nps")),
            (
                headers(&[("authorization", basic.as_str())]),
                ten,
                Ok("nps"),
            ),
            (
                headers(&[("x-api-key", "k2")]),
                lo,
                Err(AuthError::AddressNotAllowed),
            ),
            (
                headers(&[("x-api-key", "nope")]),
                lo,
                Err(AuthError::Invalid),
            ),
            (headers(&[]), lo, Err(AuthError::Missing)),
        ] {
            let got = authenticate(&clients, from_headers(&h).as_ref(), ip, false)
                .map(|c| c.name.as_str());
            assert_eq!(got, want, "{h:?}");
        }
        let mapped: IpAddr = "::ffff:10.9.9.9".parse().unwrap();
        assert!(
            authenticate(
                &clients,
                Some(&Credentials::Key("k2".into())),
                mapped,
                false
            )
            .is_ok()
        );
        // A password works only where the caller style allows it, and only with the right name.
        let pw = Credentials::Pair {
            user: "adfs".into(),
            secret: "pw".into(),
        };
        assert_eq!(
            authenticate(&clients, Some(&pw), lo, false).err(),
            Some(AuthError::Invalid)
        );
        assert!(authenticate(&clients, Some(&pw), lo, true).is_ok());
        let wrong_user = Credentials::Pair {
            user: "nps".into(),
            secret: "k1".into(),
        };
        assert!(authenticate(&clients, Some(&wrong_user), ten, false).is_err());
    }

    #[test]
    fn new_keys_are_random_and_hash_matches() {
        let (k1, h1) = new_key();
        let (k2, _) = new_key();
        assert_ne!(k1, k2);
        assert!(k1.starts_with("og_") && k1.len() > 40);
        assert_eq!(h1, hex::encode(sha256(&k1)));
        assert!(!format!("{:?}", Credentials::Key(k1.clone())).contains(&k1));
    }
}
