//! Semantic validation: turns the [`raw`](super::raw) layer into a typed [`Config`], one
//! function per section, collecting every problem instead of stopping at the first.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

use super::load::{Origins, issue};
use super::raw;
use super::*;
use crate::channel::ChannelKind;
use crate::secret::{LoadedSecret, Secret, credential_path, read_secret_file};

/// `[radius]` and `[ldap]`.
mod channels;
mod directory;
mod store;

pub use store::split_postgres_url;

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s.trim())
        .map_err(|_| "expected 64 hexadecimal characters (see `otpgate key new`)".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "expected 64 hexadecimal characters (see `otpgate key new`)".to_string())
}

/// Collects issues, each named by the origin of its key.
struct V<'a> {
    issues: &'a mut Vec<ConfigIssue>,
    origins: &'a Origins<'a>,
}

impl V<'_> {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        let path = path.into();
        let origin = self.origins.of(&path);
        self.issues.push(issue(Some(&origin), path, msg));
    }
    fn dur(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|m| {
                self.err(path, m);
                default
            }),
        }
    }
    fn rate(&mut self, path: &str, v: &Option<String>) -> Option<Rate> {
        v.as_ref()
            .and_then(|s| parse_rate(s).map_err(|m| self.err(path, m)).ok())
    }
    fn countries(&mut self, path: &str, list: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            match parse_country(c) {
                Ok(id) => out.push(id.as_ref().to_owned()),
                Err(m) => self.err(format!("{path}[{i}]"), m),
            }
        }
        out
    }
    fn order(&mut self, path: &str, list: &[String]) -> Vec<ChannelKind> {
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            match ChannelKind::parse(c) {
                Some(k) if out.contains(&k) => {
                    self.err(format!("{path}[{i}]"), format!("\"{c}\" is listed twice"))
                }
                Some(k) => out.push(k),
                None => self.err(
                    format!("{path}[{i}]"),
                    format!("\"{c}\" is not a channel (expected \"whatsapp\" or \"sms\")"),
                ),
            }
        }
        if out.is_empty() && !list.is_empty() {
            return vec![ChannelKind::WhatsApp, ChannelKind::Sms];
        }
        if list.is_empty() {
            self.err(path, "must name at least one channel");
        }
        out
    }
    fn existing_file(&mut self, path: &str, v: &Option<String>) -> Option<PathBuf> {
        let s = v.as_ref()?;
        let p = PathBuf::from(s);
        if !p.is_file() {
            self.err(
                path,
                format!("file \"{s}\" does not exist or is not a regular file"),
            );
        }
        Some(p)
    }
    fn bounded(&mut self, path: &str, val: Option<u64>, default: u32, lo: u64, hi: u64) -> u32 {
        let n = val.unwrap_or(u64::from(default));
        if !(lo..=hi).contains(&n) {
            self.err(path, format!("{n} is out of range ({lo} to {hi})"));
            return default;
        }
        u32::try_from(n).unwrap_or(default)
    }
    fn secret(
        &mut self,
        path: &str,
        file: &Option<String>,
        credential: &str,
        warnings: &mut Vec<String>,
    ) -> Option<(Secret, PathBuf)> {
        let p = match file {
            Some(f) => PathBuf::from(f),
            None => credential_path(credential)?,
        };
        match read_secret_file(&p) {
            Ok(LoadedSecret {
                secret,
                path: loaded_path,
                world_readable,
            }) => {
                if world_readable {
                    warnings.push(format!(
                        "{path}: secret file {} is readable by other users; chmod 0640 and chown root:otpgate",
                        loaded_path.display()
                    ));
                }
                Some((secret, p))
            }
            Err(e) => {
                self.err(path, e.to_string());
                None
            }
        }
    }
}

/// Turns the raw layer into a [`Config`], pushing every problem into `issues`.
pub(super) fn validate(
    raw: &raw::RawConfig,
    origins: &Origins<'_>,
    issues: &mut Vec<ConfigIssue>,
) -> Config {
    let mut warnings = Vec::new();
    let mut v = V { issues, origins };
    let server = server(&mut v, &raw.server);
    let store = store::store(&mut v, &raw.store, &mut warnings);
    let otp = otp(&mut v, &raw.otp);
    let mut policy = policy(&mut v, &raw.policy);
    // Fail closed (issue 17): SMS goes to the home country only until an admin lists more.
    if raw.policy.sms_countries.is_none() {
        policy.sms_countries = vec![otp.default_country.as_ref().to_owned()];
    }
    let clients = clients(&mut v, &raw.clients);
    let whatsapp = channels::whatsapp(&mut v, &raw.whatsapp, &mut warnings);
    let modems = channels::modems(&mut v, &raw.modems, &mut warnings);
    let limits = limits(&mut v, &raw.limits);
    let log = log(&mut v, &raw.log);
    let verify = verify(&mut v, &raw.verify, &mut warnings);
    // Without a configured key each process hashes codes with its own random key, and a code
    // made on one node of a pair could never be checked on the other.
    if matches!(store.backend, StoreBackend::Postgres(_)) && verify.key.is_none() {
        v.err(
            "verify.key_file",
            "is required with store.backend = \"postgres\": every node of the pair must hash codes with the same key (e.g. `head -c 32 /dev/urandom | base64`, the same file on both)",
        );
    }
    let ldap = directory::ldap(&mut v, &raw.ldap, &mut warnings);
    let radius = directory::radius(&mut v, &raw.radius, &ldap, &mut warnings);
    if !whatsapp.enabled && modems.is_empty() {
        warnings.push("no channel is configured: enable [whatsapp] or add a [[modems]] entry; the API will answer 503 no_channel".into());
    }
    Config {
        source: origins.main().to_path_buf(),
        server,
        store,
        otp,
        clients,
        whatsapp,
        modems,
        policy,
        limits,
        log,
        verify,
        radius,
        ldap,
        warnings,
    }
}

/// `[server]`
fn server(v: &mut V<'_>, s: &raw::RawServer) -> ServerConfig {
    let listen_raw = s
        .listen
        .clone()
        .unwrap_or_else(|| vec!["127.0.0.1:8025".to_string()]);
    let mut listen = Vec::new();
    for (i, a) in listen_raw.iter().enumerate() {
        match a.trim().parse::<SocketAddr>() {
            Ok(sa) => listen.push(sa),
            Err(_) => v.err(
                format!("server.listen[{i}]"),
                format!(
                    "\"{a}\" is not a socket address (example: \"127.0.0.1:8025\" or \"[::]:8025\")"
                ),
            ),
        }
    }
    if listen_raw.is_empty() {
        v.err("server.listen", "must list at least one address");
    }
    let tls = tls(v, s);
    let max_body_bytes = s.max_body_bytes.unwrap_or(64 * 1024);
    if !(256..=16 * 1024 * 1024).contains(&max_body_bytes) {
        v.err(
            "server.max_body_bytes",
            format!("{max_body_bytes} is out of range (256 to 16777216)"),
        );
    }
    let max_connections = s.max_connections.unwrap_or(1024);
    if !(1..=65_536).contains(&max_connections) {
        v.err(
            "server.max_connections",
            format!("{max_connections} is out of range (1 to 65536)"),
        );
    }
    ServerConfig {
        listen,
        tls,
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(64 * 1024),
        header_timeout: v.dur(
            "server.header_timeout",
            &s.header_timeout,
            Duration::from_secs(5),
        ),
        request_timeout: v.dur(
            "server.request_timeout",
            &s.request_timeout,
            Duration::from_secs(30),
        ),
        idle_timeout: v.dur(
            "server.idle_timeout",
            &s.idle_timeout,
            Duration::from_secs(60),
        ),
        max_connections: usize::try_from(max_connections).unwrap_or(1024),
    }
}

/// `server.tls_cert`, `server.tls_key`, `server.client_ca`: all or nothing.
fn tls(v: &mut V<'_>, s: &raw::RawServer) -> Option<TlsFiles> {
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), Some(_)) => {
            let cert = v.existing_file("server.tls_cert", &s.tls_cert);
            let key = v.existing_file("server.tls_key", &s.tls_key);
            let client_ca = v.existing_file("server.client_ca", &s.client_ca);
            match (cert, key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca,
                }),
                _ => None,
            }
        }
        (Some(_), None) => {
            v.err("server.tls_key", "is required when server.tls_cert is set");
            None
        }
        (None, Some(_)) => {
            v.err("server.tls_cert", "is required when server.tls_key is set");
            None
        }
        (None, None) => {
            if s.client_ca.is_some() {
                v.err(
                    "server.client_ca",
                    "needs server.tls_cert and server.tls_key (mTLS is part of TLS)",
                );
            }
            None
        }
    }
}

/// `[otp]`
fn otp(v: &mut V<'_>, o: &raw::RawOtp) -> OtpConfig {
    let default_ttl = v.dur("otp.default_ttl", &o.default_ttl, Duration::from_secs(300));
    let max_ttl = v.dur("otp.max_ttl", &o.max_ttl, Duration::from_secs(900));
    if default_ttl > max_ttl {
        v.err("otp.default_ttl", "must not be longer than otp.max_ttl");
    }
    if default_ttl < Duration::from_secs(10) {
        v.err("otp.default_ttl", "must be at least 10s");
    }
    let default_country = match &o.default_country {
        Some(c) => parse_country(c).unwrap_or_else(|m| {
            v.err("otp.default_country", m);
            phonenumber::country::Id::US
        }),
        None => {
            v.err(
                "otp.default_country",
                "is required: the country for numbers written without a country code (e.g. \"IN\")",
            );
            phonenumber::country::Id::US
        }
    };
    let sms_text = o
        .sms_text
        .clone()
        .unwrap_or_else(|| DEFAULT_SMS_TEXT.into());
    if !sms_text.contains("{code}") {
        v.err("otp.sms_text", "must contain {code}");
    }
    for (loc, t) in &o.sms_text_locales {
        if !t.contains("{code}") {
            v.err(format!("otp.sms_text_locales.{loc}"), "must contain {code}");
        }
    }
    OtpConfig {
        default_ttl,
        max_ttl,
        default_country,
        sms_text,
        sms_text_locales: o.sms_text_locales.clone(),
        org: o.org.clone().unwrap_or_else(|| "Sign-in".into()),
        code_pattern: code_pattern(v, &o.code_pattern),
    }
}

/// `otp.code_pattern`: a regular expression with exactly one capture group.
fn code_pattern(v: &mut V<'_>, raw: &Option<String>) -> Regex {
    let pattern = raw.clone().unwrap_or_else(|| DEFAULT_CODE_PATTERN.into());
    match Regex::new(&pattern) {
        Ok(r) if r.captures_len() == 2 => r,
        Ok(_) => {
            v.err(
                "otp.code_pattern",
                "must have exactly one capture group (the code)",
            );
            default_code_regex()
        }
        Err(e) => {
            v.err(
                "otp.code_pattern",
                format!("is not a valid regular expression: {e}"),
            );
            default_code_regex()
        }
    }
}

/// `[policy]`
fn policy(v: &mut V<'_>, p: &raw::RawPolicy) -> PolicyConfig {
    for (key, value) in [
        ("policy.delivery_deadline", &p.delivery_deadline),
        ("policy.unconfirmed_sms_for", &p.unconfirmed_sms_for),
    ] {
        if value
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            v.err(key, "must be at least 1s");
        }
    }
    PolicyConfig {
        order: match &p.order {
            Some(l) => v.order("policy.order", l),
            None => vec![ChannelKind::WhatsApp, ChannelKind::Sms],
        },
        whatsapp_countries: v.countries(
            "policy.whatsapp_countries",
            p.whatsapp_countries.as_deref().unwrap_or(&[]),
        ),
        sms_countries: sms_countries(v, p.sms_countries.as_deref()),
        whatsapp_deadline: v.dur(
            "policy.whatsapp_deadline",
            &p.whatsapp_deadline,
            Duration::from_secs(8),
        ),
        no_whatsapp_memory: v.dur(
            "policy.no_whatsapp_memory",
            &p.no_whatsapp_memory,
            Duration::from_secs(7 * 86_400),
        ),
        prenotify: p.prenotify.unwrap_or(true),
        prenotify_text: p
            .prenotify_text
            .clone()
            .unwrap_or_else(|| DEFAULT_PRENOTIFY_TEXT.into()),
        delivery_deadline: v.dur(
            "policy.delivery_deadline",
            &p.delivery_deadline,
            Duration::from_secs(15),
        ),
        unconfirmed_sms_for: v.dur(
            "policy.unconfirmed_sms_for",
            &p.unconfirmed_sms_for,
            Duration::from_secs(86_400),
        ),
        number_types: number_types(v, p.number_types.as_deref()),
    }
}

/// `policy.sms_countries`: `["*"]` is every country; an empty list is a mistake (it used to
/// mean every country, so it is refused rather than read either way).
fn sms_countries(v: &mut V<'_>, list: Option<&[String]>) -> Vec<String> {
    match list {
        None => Vec::new(),
        Some([all]) if all == "*" => Vec::new(),
        Some([]) => {
            v.err(
                "policy.sms_countries",
                "must name at least one country (or [\"*\"] for every country)",
            );
            Vec::new()
        }
        Some(l) => v.countries("policy.sms_countries", l),
    }
}

/// `policy.number_types`: names from libphonenumber's types; `["*"]` is every type.
fn number_types(v: &mut V<'_>, list: Option<&[String]>) -> Vec<crate::phone::NumberType> {
    use crate::phone::NumberType;
    match list {
        None => NumberType::DEFAULT_ALLOWED.to_vec(),
        Some([all]) if all == "*" => NumberType::ALL.to_vec(),
        Some([]) => {
            v.err("policy.number_types", "must name at least one number type");
            NumberType::DEFAULT_ALLOWED.to_vec()
        }
        Some(l) => {
            let mut out = Vec::new();
            for (i, word) in l.iter().enumerate() {
                match NumberType::parse(word) {
                    Some(t) if !out.contains(&t) => out.push(t),
                    Some(_) => {}
                    None => v.err(
                        format!("policy.number_types[{i}]"),
                        format!(
                            "\"{word}\" is not a number type (one of {})",
                            NumberType::ALL.map(NumberType::as_str).join(", ")
                        ),
                    ),
                }
            }
            out
        }
    }
}

/// `[[clients]]`: names unique; an entry without a usable name is skipped (after reporting).
fn clients(v: &mut V<'_>, raw: &[raw::RawClient]) -> Vec<ClientConfig> {
    let mut clients = Vec::new();
    let mut names = HashSet::new();
    for (i, c) in raw.iter().enumerate() {
        let Some(client) = client(v, i, c) else {
            continue;
        };
        if !names.insert(client.name.clone()) {
            v.err(
                format!("clients[{i}].name"),
                format!("\"{}\" is used by another client", client.name),
            );
        }
        clients.push(client);
    }
    clients
}

/// A name that ends up in logs, metrics labels and file names: required, and only letters,
/// digits, '-', '_' or '.'.
fn name_field(v: &mut V<'_>, key: String, name: Option<&str>) -> Option<String> {
    match name {
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) =>
        {
            Some(n.to_owned())
        }
        Some(n) => {
            v.err(
                key,
                format!("\"{n}\" must be non-empty letters, digits, '-', '_' or '.'"),
            );
            None
        }
        None => {
            v.err(key, "is required");
            None
        }
    }
}

/// One `[[clients]]` entry, the `i`th.
fn client(v: &mut V<'_>, i: usize, c: &raw::RawClient) -> Option<ClientConfig> {
    let at = |k: &str| format!("clients[{i}].{k}");
    let name = name_field(v, at("name"), c.name.as_deref())?;
    let key_sha256 = match &c.key_sha256 {
        Some(k) => parse_sha256(k).unwrap_or_else(|m| {
            v.err(at("key_sha256"), m);
            [0; 32]
        }),
        None => {
            v.err(at("key_sha256"), "is required (run `otpgate key new`)");
            [0; 32]
        }
    };
    let password_sha256 = c.password_sha256.as_ref().and_then(|k| {
        parse_sha256(k)
            .map_err(|m| v.err(at("password_sha256"), m))
            .ok()
    });
    let mut allow_ips = Vec::new();
    for (j, a) in c.allow_ips.iter().enumerate() {
        let parsed = a
            .parse::<IpNet>()
            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => allow_ips.push(n),
            Err(_) => v.err(
                format!("clients[{i}].allow_ips[{j}]"),
                format!("\"{a}\" is not an IP network (example: \"10.0.0.0/8\" or \"192.0.2.7\")"),
            ),
        }
    }
    let order = c.order.as_ref().map(|l| v.order(&at("order"), l));
    let countries = c
        .countries
        .as_ref()
        .map(|l| v.countries(&at("countries"), l));
    Some(ClientConfig {
        name,
        key_sha256,
        password_sha256,
        allow_ips,
        whatsapp: c.whatsapp.unwrap_or(true),
        order,
        countries,
    })
}

/// `[limits]`
fn limits(v: &mut V<'_>, l: &raw::RawLimits) -> LimitsConfig {
    LimitsConfig {
        per_recipient: v.rate("limits.per_recipient", &l.per_recipient),
        per_client: v.rate("limits.per_client", &l.per_client),
        global: v.rate("limits.global", &l.global),
        per_country: v.rate("limits.per_country", &l.per_country),
        per_prefix: v.rate("limits.per_prefix", &l.per_prefix),
        prefix_digits: v.bounded("limits.prefix_digits", l.prefix_digits, 3, 1, 8),
        per_user: v.rate("limits.per_user", &l.per_user),
        per_ip: v.rate("limits.per_ip", &l.per_ip),
        breaker: breaker(v, l),
    }
}

/// The conversion breaker's keys in `[limits]`.
fn breaker(v: &mut V<'_>, l: &raw::RawLimits) -> BreakerConfig {
    let d = BreakerConfig::default();
    let b = BreakerConfig {
        min_codes: v.bounded(
            "limits.breaker_min_codes",
            l.breaker_min_codes,
            d.min_codes,
            0,
            1_000_000,
        ),
        min_approval_percent: v.bounded(
            "limits.breaker_min_approval_percent",
            l.breaker_min_approval_percent,
            d.min_approval_percent,
            1,
            100,
        ),
        window: v.dur("limits.breaker_window", &l.breaker_window, d.window),
        cooldown: v.dur("limits.breaker_cooldown", &l.breaker_cooldown, d.cooldown),
    };
    if b.window.is_zero() {
        v.err("limits.breaker_window", "must be longer than 0s");
    }
    b
}

/// `[log]`
fn log(v: &mut V<'_>, l: &raw::RawLog) -> LogConfig {
    let format = l.format.clone().unwrap_or_else(|| "text".into());
    if format != "text" && format != "json" {
        v.err(
            "log.format",
            format!("\"{format}\" is not \"text\" or \"json\""),
        );
    }
    let log = LogConfig {
        level: l.level.clone().unwrap_or_else(|| "info".into()),
        format,
    };
    if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
        v.err(
            "log.level",
            format!(
                "\"{}\" is not a log filter (examples: \"info\", \"otpgate=debug\")",
                log.level
            ),
        );
    }
    log
}

/// `[verify]`
fn verify(v: &mut V<'_>, rv: &raw::RawVerify, warnings: &mut Vec<String>) -> VerifyConfig {
    let key = v
        .secret("verify.key_file", &rv.key_file, "verify-key", warnings)
        .map(|s| s.0);
    if let Some(k) = &key
        && k.expose().len() < 32
    {
        v.err(
            "verify.key_file",
            "the key must be at least 32 characters (e.g. `head -c 32 /dev/urandom | base64`)",
        );
    }
    VerifyConfig {
        key,
        max_attempts: v.bounded("verify.max_attempts", rv.max_attempts, 5, 1, 20),
        max_sends: v.bounded("verify.max_sends", rv.max_sends, 3, 1, 10),
        default_length: v.bounded("verify.default_length", rv.default_length, 6, 4, 10),
        escalate_after: match rv.escalate_after.as_deref() {
            Some("off") => None,
            raw => {
                let d = v.dur(
                    "verify.escalate_after",
                    &raw.map(str::to_owned),
                    Duration::from_secs(60),
                );
                if d < Duration::from_secs(1) {
                    v.err("verify.escalate_after", "must be at least 1s, or \"off\"");
                }
                Some(d)
            }
        },
    }
}

fn default_code_regex() -> Regex {
    // The default is a constant checked by the unit tests; fall back to a trivially valid one.
    Regex::new(DEFAULT_CODE_PATTERN)
        .unwrap_or_else(|_| Regex::new("(x)").unwrap_or_else(|_| unreachable!()))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{MINIMAL, load_with, write};
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_postgres_backend_needs_a_url_without_a_password() {
        let body = |extra: &str| format!("{MINIMAL}[store]\nbackend = \"postgres\"\n{extra}");
        let issues = |extra: &str| {
            let (_d, r) = load_with(&body(extra), &[]);
            r.unwrap_err().0
        };
        let missing = issues("node = \"a\"\n");
        assert!(missing.iter().any(|i| i.path == "store.url"), "{missing:?}");
        let with_pw = issues("url = \"postgres://u:hunter2@db/otp\"\n");
        let text = format!("{with_pw:?}");
        assert!(text.contains("must not contain a password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let bad_mode = issues("url = \"postgres://u@db/otp?sslmode=verify\"\n");
        assert!(
            format!("{bad_mode:?}").contains("sslmode \\\"verify\\\""),
            "{bad_mode:?}"
        );
        let sqlite_with_url = {
            let (_d, r) = load_with(
                &format!("{MINIMAL}[store]\nurl = \"postgres://u@db/otp\"\n"),
                &[],
            );
            r.unwrap_err().0
        };
        assert!(sqlite_with_url.iter().any(|i| i.path == "store.url"));
        let pair = "url = \"postgres://u@db:5433/otp?sslmode=verify-full&connect_timeout=3\"\nnode = \"a\"\nlease = \"20s\"\n";
        // A pair must share the verify key, or a code made on one node fails on the other.
        let no_key = issues(pair);
        assert!(
            no_key.iter().any(|i| i.path == "verify.key_file"),
            "{no_key:?}"
        );
        let keys = tempfile::tempdir().unwrap();
        let key = write(keys.path(), "verify.key", &"k".repeat(32));
        let (_d, ok) = load_with(
            &body(&format!(
                "{pair}[verify]\nkey_file = \"{}\"\n",
                key.display()
            )),
            &[],
        );
        let c = ok.unwrap();
        let StoreBackend::Postgres(pg) = &c.store.backend else {
            panic!("not postgres")
        };
        assert_eq!(pg.sslmode, SslMode::VerifyFull);
        assert_eq!(pg.url, "postgres://u@db:5433/otp?connect_timeout=3");
        assert_eq!((pg.node.as_str(), pg.lease), ("a", Duration::from_secs(20)));
        assert!(
            c.summary()
                .contains("store       postgres postgres://u@db:5433/otp"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn defaults_are_sane() {
        let (_d, c) = load_with(MINIMAL, &[]);
        let c = c.unwrap();
        assert_eq!(
            c.server.listen,
            vec!["127.0.0.1:8025".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.otp.default_ttl, Duration::from_secs(300));
        assert_eq!(
            c.policy.order,
            vec![ChannelKind::WhatsApp, ChannelKind::Sms]
        );
        assert!(!c.whatsapp.enabled);
        assert!(c.otp.code_pattern.captures_len() == 2);
    }

    #[test]
    fn secrets_come_from_files_and_warn_when_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tok = write(dir.path(), "token", "EAAG-secret\n");
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
        let body = format!(
            "[otp]\ndefault_country = \"IN\"\n[whatsapp]\nenabled = true\nphone_number_id = \"123\"\ntemplate = \"otp\"\ntoken_file = \"{}\"\n",
            tok.display()
        );
        let main = write(dir.path(), "otpgate.toml", &body);
        let c = load(&Sources {
            main,
            env: BTreeMap::new(),
        })
        .unwrap();
        assert_eq!(c.whatsapp.token.as_ref().unwrap().expose(), "EAAG-secret");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("readable by other users"))
        );
        assert!(!format!("{c:?}").contains("EAAG-secret"));
        assert!(!c.summary().contains("EAAG-secret"));
    }

    #[test]
    fn whatsapp_enabled_needs_its_fields() {
        let (_d, r) = load_with(
            "[otp]\ndefault_country = \"IN\"\n[whatsapp]\nenabled = true\n",
            &[],
        );
        let e = r.unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|i| i.path.as_str()).collect();
        assert!(paths.contains(&"whatsapp.token_file"));
        assert!(paths.contains(&"whatsapp.phone_number_id"));
        assert!(paths.contains(&"whatsapp.template"));
    }

    #[test]
    fn business_account_id_is_digits() {
        let body = |id: &str| {
            format!("[otp]\ndefault_country = \"IN\"\n[whatsapp]\nbusiness_account_id = \"{id}\"\n")
        };
        let (_d, r) = load_with(&body("1022901293"), &[]);
        let c = r.unwrap();
        assert_eq!(
            c.whatsapp.business_account_id.as_deref(),
            Some("1022901293")
        );
        for bad in ["", "waba-1"] {
            let (_d, r) = load_with(&body(bad), &[]);
            let e = r.unwrap_err();
            let i =
                e.0.iter()
                    .find(|i| i.path == "whatsapp.business_account_id");
            assert!(
                i.is_some_and(|i| i.to_string().contains("digits only")),
                "{e}"
            );
        }
    }

    #[test]
    fn app_id_is_digits() {
        let body =
            |id: &str| format!("[otp]\ndefault_country = \"IN\"\n[whatsapp]\napp_id = \"{id}\"\n");
        let (_d, r) = load_with(&body("1234567890"), &[]);
        assert_eq!(r.unwrap().whatsapp.app_id.as_deref(), Some("1234567890"));
        for bad in ["", "my-app"] {
            let (_d, r) = load_with(&body(bad), &[]);
            let e = r.unwrap_err();
            let hit = e.0.iter().find(|i| i.path == "whatsapp.app_id");
            assert!(
                hit.is_some_and(|i| i.to_string().contains("digits only")),
                "{e}"
            );
        }
    }
}
