//! `[radius]` and `[ldap]`: the RADIUS front door and the directory it asks.

use super::*;

/// `[ldap]`
pub(super) fn ldap(v: &mut V<'_>, l: &raw::RawLdap, warnings: &mut Vec<String>) -> LdapConfig {
    let starttls = l.starttls.unwrap_or(true);
    let allow_plain = l.allow_plain.unwrap_or(false);
    let url = l.url.clone();
    if let Some(u) = &url {
        if u.starts_with("ldap://") {
            if !starttls && !allow_plain {
                v.err(
                    "ldap.starttls",
                    "ldap:// without StartTLS sends passwords in the clear; use ldaps://, keep starttls = true, or set allow_plain = true",
                );
            }
        } else if !u.starts_with("ldaps://") {
            v.err(
                "ldap.url",
                format!("\"{u}\" must start with ldaps:// or ldap://"),
            );
        }
    }
    let bind_password = v
        .secret(
            "ldap.bind_password_file",
            &l.bind_password_file,
            "ldap-bind-password",
            warnings,
        )
        .map(|s| s.0);
    if l.bind_dn.is_some() != bind_password.is_some() {
        v.err(
            "ldap.bind_dn",
            "bind_dn and bind_password_file go together (both, or neither for an anonymous search)",
        );
    }
    let user_filter = l
        .user_filter
        .clone()
        .unwrap_or_else(|| DEFAULT_LDAP_FILTER.into());
    if !user_filter.contains("{user}") {
        v.err("ldap.user_filter", "must contain {user}");
    }
    if !(user_filter.starts_with('(') && user_filter.ends_with(')')) {
        v.err("ldap.user_filter", "must be an LDAP filter in parentheses");
    }
    let phone_attributes = l
        .phone_attributes
        .clone()
        .unwrap_or_else(|| vec!["mobile".into(), "telephoneNumber".into()]);
    if phone_attributes.is_empty()
        || phone_attributes
            .iter()
            .any(|a| a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        v.err(
            "ldap.phone_attributes",
            "must list attribute names (letters, digits, '-'), e.g. [\"mobile\", \"telephoneNumber\"]",
        );
    }
    let base_dn = l.base_dn.clone().unwrap_or_default();
    if url.is_some() && base_dn.trim().is_empty() {
        v.err("ldap.base_dn", "is required with ldap.url");
    }
    LdapConfig {
        url,
        starttls,
        allow_plain,
        bind_dn: l.bind_dn.clone(),
        bind_password,
        base_dn,
        user_filter,
        phone_attributes,
        ca_file: v.existing_file("ldap.ca_file", &l.ca_file),
        timeout: v.dur("ldap.timeout", &l.timeout, Duration::from_secs(5)),
        pool_size: v.bounded("ldap.pool_size", l.pool_size, 4, 1, 64),
    }
}

/// `[radius]`
pub(super) fn radius(
    v: &mut V<'_>,
    r: &raw::RawRadius,
    ldap: &LdapConfig,
    warnings: &mut Vec<String>,
) -> RadiusConfig {
    let enabled = r.enabled.unwrap_or(false);
    let listen = radius_listen(v, r);
    let mode = match r.mode.as_deref() {
        None | Some("challenge") => RadiusMode::Challenge,
        Some("otp_only") => RadiusMode::OtpOnly,
        Some(m) => {
            v.err(
                "radius.mode",
                format!("\"{m}\" is not a mode (expected \"challenge\" or \"otp_only\")"),
            );
            RadiusMode::Challenge
        }
    };
    let failmode = match r.failmode.as_deref() {
        None | Some("secure") => FailMode::Secure,
        Some("safe") => FailMode::Safe,
        Some(m) => {
            v.err(
                "radius.failmode",
                format!("\"{m}\" is not a failmode (expected \"secure\" or \"safe\")"),
            );
            FailMode::Secure
        }
    };
    let prompt = r
        .prompt
        .clone()
        .unwrap_or_else(|| DEFAULT_RADIUS_PROMPT.into());
    if prompt.is_empty() || prompt.len() > 200 {
        v.err("radius.prompt", "must be 1 to 200 bytes");
    }
    let clients = radius_clients(v, r, warnings);
    let require_message_authenticator = r.require_message_authenticator.unwrap_or(true);
    if enabled {
        if clients.is_empty() {
            v.err(
                "radius.clients",
                "RADIUS is enabled but no [[radius.clients]] entry may ask",
            );
        }
        if ldap.url.is_none() {
            v.err(
                "ldap.url",
                "RADIUS is enabled: a directory is needed for the phone numbers (and the passwords in mode \"challenge\")",
            );
        }
        if !require_message_authenticator {
            warnings.push("radius.require_message_authenticator = false: requests without a Message-Authenticator are accepted (BlastRADIUS, CVE-2024-3596)".into());
        }
        if failmode == FailMode::Safe {
            warnings.push("radius.failmode = \"safe\": when no channel can deliver a code, users are let in on their password alone".into());
        }
    }
    RadiusConfig {
        enabled,
        listen,
        mode,
        failmode,
        prompt,
        require_message_authenticator,
        clients,
    }
}

/// `radius.listen`: the UDP addresses, 0.0.0.0:1812 by default.
fn radius_listen(v: &mut V<'_>, r: &raw::RawRadius) -> Vec<SocketAddr> {
    let mut listen = Vec::new();
    let raw_listen = r
        .listen
        .clone()
        .unwrap_or_else(|| vec!["0.0.0.0:1812".into()]);
    for (i, a) in raw_listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(s) => listen.push(s),
            Err(_) => v.err(
                format!("radius.listen[{i}]"),
                format!("\"{a}\" is not an address:port (example: \"0.0.0.0:1812\")"),
            ),
        }
    }
    listen
}

/// `[[radius.clients]]`: names unique.
fn radius_clients(
    v: &mut V<'_>,
    r: &raw::RawRadius,
    warnings: &mut Vec<String>,
) -> Vec<RadiusClient> {
    let mut clients: Vec<RadiusClient> = Vec::new();
    for (i, c) in r.clients.iter().enumerate() {
        if let Some(c) = radius_client(v, i, c, warnings) {
            if clients.iter().any(|o| o.name == c.name) {
                v.err(
                    format!("radius.clients[{i}].name"),
                    format!("\"{}\" is used by another RADIUS client", c.name),
                );
            }
            clients.push(c);
        }
    }
    clients
}

fn radius_client(
    v: &mut V<'_>,
    i: usize,
    c: &raw::RawRadiusClient,
    warnings: &mut Vec<String>,
) -> Option<RadiusClient> {
    let at = |k: &str| format!("radius.clients[{i}].{k}");
    let name = name_field(v, at("name"), c.name.as_deref())?;
    let network = match &c.address {
        Some(a) => match a
            .parse::<IpNet>()
            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => n,
            Err(_) => {
                v.err(
                    at("address"),
                    format!("\"{a}\" is not an address or network (example: \"192.0.2.10\" or \"10.0.0.0/24\")"),
                );
                return None;
            }
        },
        None => {
            v.err(at("address"), "is required");
            return None;
        }
    };
    let credential = format!("radius-{name}-secret");
    let Some((secret, _)) = v.secret(&at("secret_file"), &c.secret_file, &credential, warnings)
    else {
        if c.secret_file.is_none() {
            v.err(
                at("secret_file"),
                format!("is required (or a systemd credential named {credential})"),
            );
        }
        return None;
    };
    if secret.expose().len() < 16 {
        warnings.push(format!(
            "radius.clients[{i}] ({name}): the shared secret is shorter than 16 characters; use a long random one"
        ));
    }
    Some(RadiusClient {
        name,
        network,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testkit::{MINIMAL, load_with, write};
    use crate::config::{FailMode, RadiusMode};

    fn errors(body: &str) -> Vec<String> {
        let (_d, r) = load_with(&format!("{MINIMAL}{body}"), &[]);
        match r {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|i| format!("{}: {}", i.path, i.message))
                    .collect()
            }
        }
    }

    #[test]
    fn radius_is_off_by_default_with_safe_defaults() {
        let (_d, c) = load_with(MINIMAL, &[]);
        let c = c.unwrap();
        assert!(!c.radius.enabled);
        assert_eq!(c.radius.mode, RadiusMode::Challenge);
        assert_eq!(c.radius.failmode, FailMode::Secure);
        assert!(c.radius.require_message_authenticator);
        assert_eq!(c.radius.listen, vec!["0.0.0.0:1812".parse().unwrap()]);
        assert_eq!(c.ldap.phone_attributes, ["mobile", "telephoneNumber"]);
        assert!(c.ldap.user_filter.contains("sAMAccountName={user}"));
        assert!(c.summary().contains("radius      off"));
    }

    #[test]
    fn enabled_radius_needs_clients_and_a_directory() {
        let e = errors("[radius]\nenabled = true\n");
        assert!(e.iter().any(|m| m.starts_with("radius.clients:")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("ldap.url:")), "{e:?}");
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let e = errors(
            "[radius]\nmode = \"pap\"\nfailmode = \"open\"\nlisten = [\"1812\"]\n\
             [[radius.clients]]\nname = \"vpn\"\naddress = \"10.0.0.0/33\"\n\
             [ldap]\nurl = \"http://dc1\"\nuser_filter = \"(uid=alice)\"\nbind_dn = \"cn=x\"\n",
        );
        for key in [
            "radius.mode",
            "radius.failmode",
            "radius.listen[0]",
            "radius.clients[0].address",
            "ldap.url",
            "ldap.user_filter",
            "ldap.bind_dn",
            "ldap.base_dn",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(&format!("{key}:"))),
                "{key}: {e:?}"
            );
        }
        let e = errors("[ldap]\nurl = \"ldap://dc1\"\nbase_dn = \"dc=x\"\nstarttls = false\n");
        assert!(e.iter().any(|m| m.starts_with("ldap.starttls:")), "{e:?}");
    }

    #[test]
    fn a_complete_section_loads_and_summarises() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write(dir.path(), "s", "a-long-radius-shared-secret");
        let body = format!(
            "{MINIMAL}[radius]\nenabled = true\nmode = \"otp_only\"\n\
             [[radius.clients]]\nname = \"fw\"\naddress = \"192.0.2.10\"\nsecret_file = \"{}\"\n\
             [ldap]\nurl = \"ldaps://dc1.example.org\"\nbase_dn = \"DC=example,DC=org\"\n",
            secret.display()
        );
        let (_d, c) = load_with(&body, &[]);
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.radius.mode, RadiusMode::OtpOnly);
        assert_eq!(
            c.radius.clients[0].network,
            "192.0.2.10/32".parse().unwrap()
        );
        assert_eq!(
            c.radius.clients[0].secret.expose(),
            "a-long-radius-shared-secret"
        );
        let s = c.summary();
        assert!(s.contains("nas         fw from 192.0.2.10/32"), "{s}");
        assert!(s.contains("ldaps://dc1.example.org (TLS)"), "{s}");
        assert!(!s.contains("a-long-radius-shared-secret"));
    }
}
