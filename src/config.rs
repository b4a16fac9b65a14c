//! Typed configuration: layering (main file, `conf.d/*.toml`, `OTPGATE__` environment),
//! strict parsing (unknown keys rejected) and validation that reports every problem at once,
//! each naming where it came from and the key path.
//!
//! Loading is two-phase: serde reads a [`raw`] tree of plain strings and numbers (so type
//! errors are rare and always located), then [`validate`] turns it into [`Config`], collecting
//! every semantic error instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

use crate::channel::ChannelKind;
use crate::secret::{LoadedSecret, Secret, credential_path, read_secret_file};

/// The default location of the main file.
pub const DEFAULT_PATH: &str = "/etc/otpgate/otpgate.toml";

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file or environment variable the offending value came from, when known.
    pub origin: Option<String>,
    /// The key path, e.g. `server.listen[0]`.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(o) => write!(f, "{o}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found while loading; never empty.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for i in &self.0 {
            writeln!(f, "  - {i}")?;
        }
        Ok(())
    }
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the main file was read from.
    pub source: PathBuf,
    /// `[server]`
    pub server: ServerConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[otp]`
    pub otp: OtpConfig,
    /// `[[clients]]`
    pub clients: Vec<ClientConfig>,
    /// `[whatsapp]`
    pub whatsapp: WhatsAppConfig,
    /// `[[modems]]`
    pub modems: Vec<ModemConfig>,
    /// `[policy]`
    pub policy: PolicyConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[verify]`
    pub verify: VerifyConfig,
    /// Non-fatal findings (world-readable secrets, ...), shown by check-config and logged at start.
    pub warnings: Vec<String>,
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// TLS files, when TLS is on.
    pub tls: Option<TlsFiles>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Time a client gets to send its request head.
    pub header_timeout: Duration,
    /// Time a whole request (head and body) may take.
    pub request_timeout: Duration,
    /// Keep-alive connections idle longer than this are closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// TLS certificate, key and optional client CA (mTLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

/// `[store]`: the SQLite outbox.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file.
    pub path: PathBuf,
    /// Finished messages and their attempts are purged after this long.
    pub retention: Duration,
}

/// `[otp]`: code lifetime, numbers and texts.
#[derive(Debug, Clone)]
pub struct OtpConfig {
    /// Lifetime of a code when the caller gives none.
    pub default_ttl: Duration,
    /// Longest lifetime a caller may ask for.
    pub max_ttl: Duration,
    /// Country for numbers written without a country code (ISO 3166 alpha-2).
    pub default_country: phonenumber::country::Id,
    /// SMS text for codes; `{code}`, `{minutes}`, `{org}` are replaced.
    pub sms_text: String,
    /// Per-locale SMS texts (locale -> template).
    pub sms_text_locales: BTreeMap<String, String>,
    /// The organisation's name for `{org}`.
    pub org: String,
    /// Finds the code inside a caller's text: one capture group.
    pub code_pattern: Regex,
}

/// One API client (an identity server).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Unique name; also the Basic-auth user name.
    pub name: String,
    /// SHA-256 of the client's key.
    pub key_sha256: [u8; 32],
    /// SHA-256 of a password for Kannel-style callers, if any.
    pub password_sha256: Option<[u8; 32]>,
    /// Source addresses allowed; empty allows any.
    pub allow_ips: Vec<IpNet>,
    /// `false` switches WhatsApp off for this client.
    pub whatsapp: bool,
    /// Channel order override.
    pub order: Option<Vec<ChannelKind>>,
    /// Countries this client may send to (ISO codes); `None` = the global policy.
    pub countries: Option<Vec<String>>,
}

/// `[whatsapp]`: the Cloud API channel.
#[derive(Debug, Clone)]
pub struct WhatsAppConfig {
    /// Master switch.
    pub enabled: bool,
    /// API base including the version, e.g. `https://graph.facebook.com/v24.0`.
    pub api_base: String,
    /// The business phone number id.
    pub phone_number_id: String,
    /// Bearer token (from `token_file` or credential `whatsapp-token`); required when enabled.
    pub token: Option<Secret>,
    /// Where the token came from, so reload can re-read it.
    pub token_path: Option<PathBuf>,
    /// Authentication template name.
    pub template: String,
    /// Our locale -> template language code.
    pub languages: BTreeMap<String, String>,
    /// Template language when the locale has no mapping.
    pub default_language: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// HTTP CONNECT proxy URL (`http://user:pass@host:port`); None = HTTPS_PROXY/NO_PROXY.
    pub proxy: Option<String>,
    /// Extra PEM trust anchors.
    pub ca_file: Option<PathBuf>,
    /// Global send rate cap, messages per second.
    pub max_rate: u32,
    /// How long the circuit stays open before a half-open probe.
    pub circuit_cooldown: Duration,
    /// App secret for webhook signatures; webhooks are off without it.
    pub app_secret: Option<Secret>,
    /// Token echoed in the webhook subscription handshake.
    pub verify_token: Option<Secret>,
}

/// One `[[modems]]` entry.
#[derive(Debug, Clone)]
pub struct ModemConfig {
    /// Unique name ("modem0").
    pub name: String,
    /// Serial device; prefer a stable /dev/serial/by-id path.
    pub device: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// SIM PIN (from `pin_file` or credential `modem-<name>-pin`).
    pub pin: Option<Secret>,
    /// SMSC override in international form ("+4917...").
    pub smsc: Option<String>,
    /// Ask for and process status reports.
    pub status_reports: bool,
    /// Answer timeout for ordinary commands.
    pub command_timeout: Duration,
    /// Time the network gets to answer AT+CMGS after Ctrl-Z.
    pub send_timeout: Duration,
    /// Interval between health probes.
    pub probe_interval: Duration,
}

/// `[policy]`: routing decisions.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Channel order.
    pub order: Vec<ChannelKind>,
    /// Countries where WhatsApp is used (empty = all).
    pub whatsapp_countries: Vec<String>,
    /// Countries SMS may go to (empty = all): the toll-fraud allow list.
    pub sms_countries: Vec<String>,
    /// Time WhatsApp gets, retries included, before SMS takes over.
    pub whatsapp_deadline: Duration,
    /// How long "not on WhatsApp" routes a number straight to SMS.
    pub no_whatsapp_memory: Duration,
    /// Send an SMS pre-notice before the first WhatsApp code to a number.
    pub prenotify: bool,
    /// The pre-notice text; `{org}` is replaced.
    pub prenotify_text: String,
}

/// A rate: `count` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per window.
    pub count: u32,
    /// The window.
    pub window: Duration,
}

/// `[limits]`: anti-abuse limits; None = unlimited.
#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    /// Per recipient number (persisted: protects money).
    pub per_recipient: Option<Rate>,
    /// Per API client.
    pub per_client: Option<Rate>,
    /// For the whole gateway.
    pub global: Option<Rate>,
    /// Per destination country.
    pub per_country: Option<Rate>,
}

/// `[verify]`: the Verify API, where the gateway makes and checks the code.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// HMAC key for stored code hashes (from `key_file` or credential `verify-key`). None: a
    /// random key per process start, so pending verifications do not survive a restart.
    pub key: Option<Secret>,
    /// Checks allowed per verification before it locks.
    pub max_attempts: u32,
    /// Sends allowed per verification (the first plus resends).
    pub max_sends: u32,
    /// Code length when the caller gives none.
    pub default_length: u32,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter ("info", "otpgate=debug"); RUST_LOG wins when set.
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

/// The raw, string-typed layer serde reads; `deny_unknown_fields` everywhere.
pub mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    /// The whole file.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawConfig {
        pub server: RawServer,
        pub store: RawStore,
        pub otp: RawOtp,
        pub clients: Vec<RawClient>,
        pub whatsapp: RawWhatsApp,
        pub modems: Vec<RawModem>,
        pub policy: RawPolicy,
        pub limits: RawLimits,
        pub log: RawLog,
        pub verify: RawVerify,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawVerify {
        pub key_file: Option<String>,
        pub max_attempts: Option<u64>,
        pub max_sends: Option<u64>,
        pub default_length: Option<u64>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawServer {
        pub listen: Option<Vec<String>>,
        pub tls_cert: Option<String>,
        pub tls_key: Option<String>,
        pub client_ca: Option<String>,
        pub max_body_bytes: Option<u64>,
        pub header_timeout: Option<String>,
        pub request_timeout: Option<String>,
        pub idle_timeout: Option<String>,
        pub max_connections: Option<u64>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawStore {
        pub path: Option<String>,
        pub retention: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawOtp {
        pub default_ttl: Option<String>,
        pub max_ttl: Option<String>,
        pub default_country: Option<String>,
        pub sms_text: Option<String>,
        pub sms_text_locales: BTreeMap<String, String>,
        pub org: Option<String>,
        pub code_pattern: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawClient {
        pub name: Option<String>,
        pub key_sha256: Option<String>,
        pub password_sha256: Option<String>,
        pub allow_ips: Vec<String>,
        pub whatsapp: Option<bool>,
        pub order: Option<Vec<String>>,
        pub countries: Option<Vec<String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawWhatsApp {
        pub enabled: Option<bool>,
        pub api_base: Option<String>,
        pub phone_number_id: Option<String>,
        pub token_file: Option<String>,
        pub template: Option<String>,
        pub languages: BTreeMap<String, String>,
        pub default_language: Option<String>,
        pub timeout: Option<String>,
        pub proxy: Option<String>,
        pub ca_file: Option<String>,
        pub max_rate: Option<u64>,
        pub circuit_cooldown: Option<String>,
        pub app_secret_file: Option<String>,
        pub verify_token_file: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawModem {
        pub name: Option<String>,
        pub device: Option<String>,
        pub baud: Option<u64>,
        pub pin_file: Option<String>,
        pub smsc: Option<String>,
        pub status_reports: Option<bool>,
        pub command_timeout: Option<String>,
        pub send_timeout: Option<String>,
        pub probe_interval: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawPolicy {
        pub order: Option<Vec<String>>,
        pub whatsapp_countries: Option<Vec<String>>,
        pub sms_countries: Option<Vec<String>>,
        pub whatsapp_deadline: Option<String>,
        pub no_whatsapp_memory: Option<String>,
        pub prenotify: Option<bool>,
        pub prenotify_text: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawLimits {
        pub per_recipient: Option<String>,
        pub per_client: Option<String>,
        pub global: Option<String>,
        pub per_country: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawLog {
        pub level: Option<String>,
        pub format: Option<String>,
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The main file.
    pub main: PathBuf,
    /// Environment variables to consider (normally `std::env::vars()`), filtered by prefix.
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// The main file plus the process environment.
    pub fn from_process(main: &Path) -> Self {
        Sources {
            main: main.to_path_buf(),
            env: std::env::vars()
                .filter(|(k, _)| k.starts_with("OTPGATE__"))
                .collect(),
        }
    }
}

/// Loads, layers and validates. The main file must exist; `conf.d/*.toml` beside it is optional.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let (tree, mut issues) = layered_tree(sources)?;
    let files: Vec<PathBuf> = std::iter::once(sources.main.clone())
        .chain(drop_in_files(&sources.main))
        .collect();
    let raw = deserialize_all(tree, &files, &sources.env, &mut issues);
    let validated = validate(&raw, &sources.main, &mut issues);
    if issues.is_empty() {
        Ok(validated)
    } else {
        Err(ConfigError(issues))
    }
}

fn issue(origin: Option<&str>, path: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        origin: origin.map(str::to_owned),
        path: path.into(),
        message: message.into(),
    }
}

/// The files of `conf.d` beside `main`, in name order.
pub fn drop_in_files(main: &Path) -> Vec<PathBuf> {
    let dir = main.parent().unwrap_or(Path::new(".")).join("conf.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn layered_tree(sources: &Sources) -> Result<(config::Value, Vec<ConfigIssue>), ConfigError> {
    use config::{Environment, File, FileFormat};
    let main = &sources.main;
    if !main.exists() {
        return Err(ConfigError(vec![issue(
            Some(&main.display().to_string()),
            "(file)",
            "does not exist; pass --config PATH or create it (the package ships a commented default)",
        )]));
    }
    let mut builder = config::Config::builder().add_source(
        File::from(main.as_path())
            .format(FileFormat::Toml)
            .required(true),
    );
    for f in drop_in_files(main) {
        builder = builder.add_source(File::from(f.as_path()).format(FileFormat::Toml));
    }
    let env: config::Map<String, String> = sources
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut envsrc = Environment::with_prefix("OTPGATE")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env));
    for key in [
        "server.listen",
        "policy.order",
        "policy.whatsapp_countries",
        "policy.sms_countries",
    ] {
        envsrc = envsrc.with_list_parse_key(key);
    }
    builder = builder.add_source(envsrc);
    match builder.build() {
        Ok(c) => Ok((c.cache, Vec::new())),
        Err(e) => Err(ConfigError(vec![issue(None, "(syntax)", e.to_string())])),
    }
}

/// Deserializes the tree into the raw layer, collecting every structural error: after each
/// failure the offending key is removed and deserialization tried again.
fn deserialize_all(
    mut tree: config::Value,
    files: &[PathBuf],
    env: &BTreeMap<String, String>,
    issues: &mut Vec<ConfigIssue>,
) -> raw::RawConfig {
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, raw::RawConfig>(tree.clone()) {
            Ok(raw) => return raw,
            Err(err) => {
                let segments = segments_of(err.path());
                let inner = err.into_inner().to_string();
                let message = match unknown_field_name(&inner) {
                    Some(_) => unknown_key_message(&inner),
                    None => strip_config_suffix(&inner),
                };
                let origin =
                    origin_at(&tree, &segments, files).or_else(|| env_origin(&segments, env));
                issues.push(issue(
                    origin.as_deref(),
                    join_path(&segments, None),
                    message,
                ));
                if !remove_at(&mut tree, &segments) {
                    return raw::RawConfig::default();
                }
            }
        }
    }
    raw::RawConfig::default()
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn segments_of(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } | Segment::Enum { variant: key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Unknown => None,
        })
        .collect()
}

fn join_path(segs: &[Seg], extra: Option<&str>) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if let Some(e) = extra {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(e);
    }
    if out.is_empty() { "(root)".into() } else { out }
}

fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn unknown_key_message(msg: &str) -> String {
    match msg.split_once(", expected ") {
        Some((_, expected)) => format!("unknown key (expected {})", strip_config_suffix(expected)),
        None => "unknown key".into(),
    }
}

/// The config crate appends " for key `x` in y"; our messages carry path and origin already.
fn strip_config_suffix(msg: &str) -> String {
    match msg.find(" for key `") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The environment variable that set `segs`, if one did.
fn env_origin(segs: &[Seg], env: &BTreeMap<String, String>) -> Option<String> {
    let mut name = String::from("OTPGATE");
    for s in segs {
        match s {
            Seg::Key(k) => {
                name.push_str("__");
                name.push_str(&k.to_ascii_uppercase());
            }
            Seg::Index(_) => break,
        }
    }
    env.keys()
        .find(|k| k.eq_ignore_ascii_case(&name))
        .map(|k| format!("environment {k}"))
}

fn child<'a>(v: &'a config::Value, seg: &Seg) -> Option<&'a config::Value> {
    match (&v.kind, seg) {
        (config::ValueKind::Table(t), Seg::Key(k)) => t.get(k),
        (config::ValueKind::Array(a), Seg::Index(i)) => a.get(*i),
        _ => None,
    }
}

fn origin_at(tree: &config::Value, segs: &[Seg], files: &[PathBuf]) -> Option<String> {
    let mut cur = tree;
    let mut origin = cur.origin().map(str::to_owned);
    for s in segs {
        match child(cur, s) {
            Some(c) => {
                cur = c;
                if let Some(o) = c.origin() {
                    origin = Some(o.to_owned());
                }
            }
            None => break,
        }
    }
    let origin = origin?;
    // The config crate reports file origins relative to the working directory, and the
    // environment as one source: name the file as configured, and leave env to env_origin.
    let canon = std::fs::canonicalize(&origin).ok()?;
    files
        .iter()
        .find(|f| std::fs::canonicalize(f).ok().as_ref() == Some(&canon))
        .map(|f| f.display().to_string())
}

fn remove_at(tree: &mut config::Value, segs: &[Seg]) -> bool {
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = tree;
    for s in parents {
        let next = match (&mut cur.kind, s) {
            (config::ValueKind::Table(t), Seg::Key(k)) => t.get_mut(k),
            (config::ValueKind::Array(a), Seg::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (&mut cur.kind, last) {
        (config::ValueKind::Table(t), Seg::Key(k)) => t.remove(k).is_some(),
        (config::ValueKind::Array(a), Seg::Index(i)) if *i < a.len() => {
            // Keep indices of later entries stable in messages: blank it rather than shift.
            a[*i] = config::Value::new(None, config::ValueKind::Table(Default::default()));
            true
        }
        _ => false,
    }
}

/// Parses a human duration ("90s", "5m", "1h 30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("\"{s}\" is not a duration (examples: \"90s\", \"5m\", \"1h\")"))
}

/// Parses a rate such as "5/15m", "100/s", "80/1s".
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("\"{s}\" is not a rate (examples: \"5/15m\", \"100/1s\", \"10/h\")");
    let (n, w) = s.split_once('/').ok_or_else(bad)?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    let w = w.trim();
    let window = match w {
        "s" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => humantime::parse_duration(w).map_err(|_| bad())?,
    };
    if count == 0 || window.is_zero() {
        return Err(format!(
            "\"{s}\": count and window must be greater than zero"
        ));
    }
    Ok(Rate { count, window })
}

/// Parses an ISO 3166 alpha-2 country code into libphonenumber's region id.
pub fn parse_country(s: &str) -> Result<phonenumber::country::Id, String> {
    let up = s.trim().to_ascii_uppercase();
    up.parse::<phonenumber::country::Id>().map_err(|_| {
        format!("\"{s}\" is not an ISO 3166 country code (examples: \"IN\", \"DE\", \"ID\")")
    })
}

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s.trim())
        .map_err(|_| "expected 64 hexadecimal characters (see `otpgate key new`)".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "expected 64 hexadecimal characters (see `otpgate key new`)".to_string())
}

/// The default SMS text for codes.
pub const DEFAULT_SMS_TEXT: &str =
    "{code} is your {org} verification code. It expires in {minutes} min. Do not share it.";
/// The default pre-notice text.
pub const DEFAULT_PRENOTIFY_TEXT: &str = "{org}: from now on your sign-in codes arrive on WhatsApp from our verified business account. If WhatsApp is unavailable they come by SMS as before.";
/// The default code pattern: a unique run of 4 to 10 digits, optionally grouped by one space or dash.
pub const DEFAULT_CODE_PATTERN: &str = r"(?:^|[^\d])(\d{3,5}[ -]?\d{1,5})(?:[^\d]|$)";

struct V<'a> {
    issues: &'a mut Vec<ConfigIssue>,
    origin: Option<String>,
}

impl V<'_> {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.issues.push(issue(self.origin.as_deref(), path, msg));
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
pub fn validate(raw: &raw::RawConfig, main: &Path, issues: &mut Vec<ConfigIssue>) -> Config {
    let mut warnings = Vec::new();
    let mut v = V {
        issues,
        origin: None,
    };

    // [server]
    let s = &raw.server;
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
    let tls = match (&s.tls_cert, &s.tls_key) {
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
    };
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
    let server = ServerConfig {
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
    };

    // [store]
    let store = StoreConfig {
        path: PathBuf::from(
            raw.store
                .path
                .clone()
                .unwrap_or_else(|| "/var/lib/otpgate/otpgate.db".into()),
        ),
        retention: v.dur(
            "store.retention",
            &raw.store.retention,
            Duration::from_secs(30 * 86_400),
        ),
    };

    // [otp]
    let o = &raw.otp;
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
    let pattern = o
        .code_pattern
        .clone()
        .unwrap_or_else(|| DEFAULT_CODE_PATTERN.into());
    let code_pattern = match Regex::new(&pattern) {
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
    };
    let otp = OtpConfig {
        default_ttl,
        max_ttl,
        default_country,
        sms_text,
        sms_text_locales: o.sms_text_locales.clone(),
        org: o.org.clone().unwrap_or_else(|| "Sign-in".into()),
        code_pattern,
    };

    // [policy]
    let p = &raw.policy;
    let policy = PolicyConfig {
        order: match &p.order {
            Some(l) => v.order("policy.order", l),
            None => vec![ChannelKind::WhatsApp, ChannelKind::Sms],
        },
        whatsapp_countries: v.countries(
            "policy.whatsapp_countries",
            p.whatsapp_countries.as_deref().unwrap_or(&[]),
        ),
        sms_countries: v.countries(
            "policy.sms_countries",
            p.sms_countries.as_deref().unwrap_or(&[]),
        ),
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
    };

    // [[clients]]
    let mut clients = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, c) in raw.clients.iter().enumerate() {
        let at = |k: &str| format!("clients[{i}].{k}");
        let name = match &c.name {
            Some(n)
                if !n.is_empty()
                    && n.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) =>
            {
                n.clone()
            }
            Some(n) => {
                v.err(
                    at("name"),
                    format!("\"{n}\" must be non-empty letters, digits, '-', '_' or '.'"),
                );
                continue;
            }
            None => {
                v.err(at("name"), "is required");
                continue;
            }
        };
        if !names.insert(name.clone()) {
            v.err(at("name"), format!("\"{name}\" is used by another client"));
        }
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
                    format!(
                        "\"{a}\" is not an IP network (example: \"10.0.0.0/8\" or \"192.0.2.7\")"
                    ),
                ),
            }
        }
        let order = c.order.as_ref().map(|l| v.order(&at("order"), l));
        let countries = c
            .countries
            .as_ref()
            .map(|l| v.countries(&at("countries"), l));
        clients.push(ClientConfig {
            name,
            key_sha256,
            password_sha256,
            allow_ips,
            whatsapp: c.whatsapp.unwrap_or(true),
            order,
            countries,
        });
    }

    // [whatsapp]
    let w = &raw.whatsapp;
    let enabled = w.enabled.unwrap_or(false);
    let token = v.secret(
        "whatsapp.token_file",
        &w.token_file,
        "whatsapp-token",
        &mut warnings,
    );
    let app_secret = v.secret(
        "whatsapp.app_secret_file",
        &w.app_secret_file,
        "whatsapp-app-secret",
        &mut warnings,
    );
    let verify_token = v.secret(
        "whatsapp.verify_token_file",
        &w.verify_token_file,
        "whatsapp-verify-token",
        &mut warnings,
    );
    let api_base = w
        .api_base
        .clone()
        .unwrap_or_else(|| "https://graph.facebook.com/v24.0".into())
        .trim_end_matches('/')
        .to_string();
    if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
        v.err(
            "whatsapp.api_base",
            format!("\"{api_base}\" is not an http(s) URL"),
        );
    }
    let phone_number_id = w.phone_number_id.clone().unwrap_or_default();
    let template = w.template.clone().unwrap_or_default();
    if enabled {
        if token.is_none() && w.token_file.is_none() {
            v.err(
                "whatsapp.token_file",
                "is required when whatsapp.enabled = true (or provide systemd credential \"whatsapp-token\")",
            );
        }
        if phone_number_id.is_empty() || !phone_number_id.chars().all(|c| c.is_ascii_digit()) {
            v.err(
                "whatsapp.phone_number_id",
                "is required when whatsapp.enabled = true and must be digits",
            );
        }
        if template.is_empty() {
            v.err(
                "whatsapp.template",
                "is required when whatsapp.enabled = true (the authentication template's name)",
            );
        }
    }
    if let Some(px) = &w.proxy
        && !(px.starts_with("http://") || px.starts_with("https://"))
    {
        v.err(
            "whatsapp.proxy",
            format!(
                "\"{}\" must start with http:// (an HTTP CONNECT proxy)",
                mask_userinfo(px)
            ),
        );
    }
    let max_rate = w.max_rate.unwrap_or(80);
    if !(1..=1000).contains(&max_rate) {
        v.err(
            "whatsapp.max_rate",
            format!("{max_rate} is out of range (1 to 1000)"),
        );
    }
    let whatsapp = WhatsAppConfig {
        enabled,
        api_base,
        phone_number_id,
        token_path: token.as_ref().map(|t| t.1.clone()),
        token: token.map(|t| t.0),
        template,
        languages: w.languages.clone(),
        default_language: w.default_language.clone().unwrap_or_else(|| "en_US".into()),
        timeout: v.dur("whatsapp.timeout", &w.timeout, Duration::from_secs(4)),
        proxy: w.proxy.clone(),
        ca_file: v.existing_file("whatsapp.ca_file", &w.ca_file),
        max_rate: u32::try_from(max_rate).unwrap_or(80),
        circuit_cooldown: v.dur(
            "whatsapp.circuit_cooldown",
            &w.circuit_cooldown,
            Duration::from_secs(60),
        ),
        app_secret: app_secret.map(|s| s.0),
        verify_token: verify_token.map(|s| s.0),
    };

    // [[modems]]
    let mut modems = Vec::new();
    let mut modem_names = std::collections::HashSet::new();
    for (i, m) in raw.modems.iter().enumerate() {
        let at = |k: &str| format!("modems[{i}].{k}");
        let name = m.name.clone().unwrap_or_else(|| format!("modem{i}"));
        if !modem_names.insert(name.clone()) {
            v.err(at("name"), format!("\"{name}\" is used by another modem"));
        }
        let Some(device) = m.device.clone() else {
            v.err(
                at("device"),
                "is required (prefer a /dev/serial/by-id/... path)",
            );
            continue;
        };
        let baud = m.baud.unwrap_or(115_200);
        if ![
            9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600,
        ]
        .contains(&baud)
        {
            v.err(at("baud"), format!("{baud} is not a standard baud rate"));
        }
        if let Some(smsc) = &m.smsc
            && !(smsc.starts_with('+')
                && smsc.len() > 3
                && smsc[1..].chars().all(|c| c.is_ascii_digit()))
        {
            v.err(
                at("smsc"),
                format!("\"{smsc}\" must be an international number such as \"+491722270333\""),
            );
        }
        let pin = v
            .secret(
                &at("pin_file"),
                &m.pin_file,
                &format!("modem-{name}-pin"),
                &mut warnings,
            )
            .map(|s| s.0);
        modems.push(ModemConfig {
            device: PathBuf::from(device),
            baud: u32::try_from(baud).unwrap_or(115_200),
            pin,
            smsc: m.smsc.clone(),
            status_reports: m.status_reports.unwrap_or(true),
            command_timeout: v.dur(
                &at("command_timeout"),
                &m.command_timeout,
                Duration::from_secs(5),
            ),
            send_timeout: v.dur(
                &at("send_timeout"),
                &m.send_timeout,
                Duration::from_secs(60),
            ),
            probe_interval: v.dur(
                &at("probe_interval"),
                &m.probe_interval,
                Duration::from_secs(30),
            ),
            name,
        });
    }

    // [limits]
    let l = &raw.limits;
    let limits = LimitsConfig {
        per_recipient: v.rate("limits.per_recipient", &l.per_recipient),
        per_client: v.rate("limits.per_client", &l.per_client),
        global: v.rate("limits.global", &l.global),
        per_country: v.rate("limits.per_country", &l.per_country),
    };

    // [log]
    let format = raw.log.format.clone().unwrap_or_else(|| "text".into());
    if format != "text" && format != "json" {
        v.err(
            "log.format",
            format!("\"{format}\" is not \"text\" or \"json\""),
        );
    }
    let log = LogConfig {
        level: raw.log.level.clone().unwrap_or_else(|| "info".into()),
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

    // [verify]
    let rv = &raw.verify;
    let vkey = v
        .secret("verify.key_file", &rv.key_file, "verify-key", &mut warnings)
        .map(|s| s.0);
    if let Some(k) = &vkey
        && k.expose().len() < 32
    {
        v.err(
            "verify.key_file",
            "the key must be at least 32 characters (e.g. `head -c 32 /dev/urandom | base64`)",
        );
    }
    let bounded =
        |v: &mut V<'_>, path: &str, val: Option<u64>, default: u32, lo: u64, hi: u64| -> u32 {
            let n = val.unwrap_or(u64::from(default));
            if !(lo..=hi).contains(&n) {
                v.err(path, format!("{n} is out of range ({lo} to {hi})"));
                return default;
            }
            u32::try_from(n).unwrap_or(default)
        };
    let verify = VerifyConfig {
        key: vkey,
        max_attempts: bounded(&mut v, "verify.max_attempts", rv.max_attempts, 5, 1, 20),
        max_sends: bounded(&mut v, "verify.max_sends", rv.max_sends, 3, 1, 10),
        default_length: bounded(&mut v, "verify.default_length", rv.default_length, 6, 4, 10),
    };

    if !whatsapp.enabled && modems.is_empty() {
        warnings.push("no channel is configured: enable [whatsapp] or add a [[modems]] entry; the API will answer 503 no_channel".into());
    }

    Config {
        source: main.to_path_buf(),
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
        warnings,
    }
}

fn default_code_regex() -> Regex {
    // The default is a constant checked by the unit tests; fall back to a trivially valid one.
    Regex::new(DEFAULT_CODE_PATTERN)
        .unwrap_or_else(|_| Regex::new("(x)").unwrap_or_else(|_| unreachable!()))
}

/// Hides `user:password@` in a URL for display.
pub fn mask_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***@{}", &url[..s + 3], &url[a + 1..]),
        _ => url.to_string(),
    }
}

/// The configuration in force, swapped whole on reload; readers take a cheap `Arc`.
#[derive(Debug)]
pub struct Live(std::sync::RwLock<std::sync::Arc<Config>>);

impl Live {
    /// Starts with `c`.
    pub fn new(c: Config) -> std::sync::Arc<Live> {
        std::sync::Arc::new(Live(std::sync::RwLock::new(std::sync::Arc::new(c))))
    }

    /// The current configuration.
    pub fn get(&self) -> std::sync::Arc<Config> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the configuration.
    pub fn set(&self, c: Config) {
        match self.0.write() {
            Ok(mut g) => *g = std::sync::Arc::new(c),
            Err(p) => *p.into_inner() = std::sync::Arc::new(c),
        }
    }
}

impl Config {
    /// A client by name.
    pub fn client(&self, name: &str) -> Option<&ClientConfig> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// The one-screen summary `otpgate check-config` prints.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let files = std::iter::once(self.source.clone())
            .chain(drop_in_files(&self.source))
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!("configuration OK ({files})\n"));
        let scheme = if self.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        for l in &self.server.listen {
            out.push_str(&format!("  listen      {scheme}://{l}"));
            if let Some(t) = &self.server.tls
                && t.client_ca.is_some()
            {
                out.push_str(" (client certificates required)");
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "  store       {} (retention {})\n",
            self.store.path.display(),
            humantime::format_duration(self.store.retention)
        ));
        out.push_str(&format!(
            "  codes       ttl {} (max {}), default country {}\n",
            humantime::format_duration(self.otp.default_ttl),
            humantime::format_duration(self.otp.max_ttl),
            self.otp.default_country.as_ref()
        ));
        if self.clients.is_empty() {
            out.push_str("  clients     none: every API call will be refused (add [[clients]])\n");
        }
        for c in &self.clients {
            let ips = if c.allow_ips.is_empty() {
                "any address".to_string()
            } else {
                c.allow_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "  client      {} from {ips}{}\n",
                c.name,
                if c.whatsapp { "" } else { ", WhatsApp off" }
            ));
        }
        if self.whatsapp.enabled {
            out.push_str(&format!(
                "  whatsapp    on: {} number {} template \"{}\" (timeout {}, {} msg/s)\n",
                self.whatsapp.api_base,
                self.whatsapp.phone_number_id,
                self.whatsapp.template,
                humantime::format_duration(self.whatsapp.timeout),
                self.whatsapp.max_rate
            ));
        } else {
            out.push_str("  whatsapp    off\n");
        }
        if self.modems.is_empty() {
            out.push_str("  sms         no modems\n");
        }
        for m in &self.modems {
            out.push_str(&format!(
                "  modem       {} on {} at {} baud{}{}\n",
                m.name,
                m.device.display(),
                m.baud,
                if m.pin.is_some() { ", PIN set" } else { "" },
                if m.status_reports {
                    ", status reports"
                } else {
                    ""
                }
            ));
        }
        let order: Vec<&str> = self.policy.order.iter().map(|k| k.as_str()).collect();
        let list = |l: &[String]| {
            if l.is_empty() {
                "all".to_string()
            } else {
                l.join(",")
            }
        };
        out.push_str(&format!(
            "  policy      order {}; whatsapp countries {}; sms countries {}; whatsapp deadline {}; pre-notice {}\n",
            order.join(" > "),
            list(&self.policy.whatsapp_countries),
            list(&self.policy.sms_countries),
            humantime::format_duration(self.policy.whatsapp_deadline),
            if self.policy.prenotify { "on" } else { "off" }
        ));
        let r = |r: &Option<Rate>| match r {
            Some(r) => format!("{}/{}", r.count, humantime::format_duration(r.window)),
            None => "none".into(),
        };
        out.push_str(&format!(
            "  limits      per recipient {}, per client {}, per country {}, global {}\n",
            r(&self.limits.per_recipient),
            r(&self.limits.per_client),
            r(&self.limits.per_country),
            r(&self.limits.global)
        ));
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, body).unwrap();
        p
    }

    fn load_with(
        body: &str,
        env: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "otpgate.toml", body);
        let sources = Sources {
            main,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let r = load(&sources);
        (dir, r)
    }

    const MINIMAL: &str = "[otp]\ndefault_country = \"IN\"\n";

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
    fn every_error_is_reported_with_its_path_and_origin() {
        let body = r#"
[server]
listen = ["127.0.0.1:88a", "[::1]:8025"]
bogus = 1
[otp]
default_country = "XX"
default_ttl = "soon"
[[clients]]
name = "adfs"
key_sha256 = "abc"
allow_ips = ["10.0.0.0/33"]
"#;
        let (_d, r) = load_with(body, &[("OTPGATE__LIMITS__PER_RECIPIENT", "lots")]);
        let e = r.unwrap_err();
        let text = e.to_string();
        let paths: Vec<&str> = e.0.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "server.bogus",
            "server.listen[0]",
            "otp.default_country",
            "otp.default_ttl",
            "clients[0].key_sha256",
            "clients[0].allow_ips[0]",
            "limits.per_recipient",
        ] {
            assert!(paths.contains(&want), "missing {want} in {text}");
        }
        assert!(
            text.contains("\"127.0.0.1:88a\" is not a socket address"),
            "{text}"
        );
        let bogus = e.0.iter().find(|i| i.path == "server.bogus").unwrap();
        assert!(
            bogus
                .origin
                .as_deref()
                .unwrap_or("")
                .ends_with("otpgate.toml"),
            "{bogus:?}"
        );
        assert!(bogus.message.starts_with("unknown key"), "{bogus:?}");
    }

    #[test]
    fn layering_drop_ins_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "otpgate.toml",
            "[otp]\ndefault_country = \"IN\"\ndefault_ttl = \"2m\"\n",
        );
        write(
            dir.path(),
            "conf.d/10-a.toml",
            "[otp]\ndefault_ttl = \"3m\"\n",
        );
        write(
            dir.path(),
            "conf.d/20-b.toml",
            "[otp]\ndefault_ttl = \"4m\"\n[store]\npath = \"/tmp/x.db\"\n",
        );
        write(dir.path(), "conf.d/ignored.txt", "garbage");
        let env = [
            ("OTPGATE__STORE__PATH".to_string(), "/tmp/y.db".to_string()),
            (
                "OTPGATE__SERVER__LISTEN".to_string(),
                "127.0.0.1:1,127.0.0.1:2".to_string(),
            ),
        ];
        let c = load(&Sources {
            main,
            env: env.into_iter().collect(),
        })
        .unwrap();
        assert_eq!(c.otp.default_ttl, Duration::from_secs(240));
        assert_eq!(c.store.path, PathBuf::from("/tmp/y.db"));
        assert_eq!(c.server.listen.len(), 2);
    }

    #[test]
    fn unknown_env_key_names_the_variable() {
        let (_d, r) = load_with(MINIMAL, &[("OTPGATE__SERVER__LISTN", "x")]);
        let e = r.unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "server.listn");
        assert!(
            e.0[0]
                .message
                .starts_with("unknown key (expected one of `listen`"),
            "{:?}",
            e.0[0]
        );
        assert!(
            e.0[0]
                .origin
                .as_deref()
                .unwrap_or("")
                .contains("OTPGATE__SERVER__LISTN"),
            "{:?}",
            e.0[0]
        );
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
    fn rates_and_durations() {
        assert_eq!(
            parse_rate("5/15m").unwrap(),
            Rate {
                count: 5,
                window: Duration::from_secs(900)
            }
        );
        assert_eq!(parse_rate("100/s").unwrap().window, Duration::from_secs(1));
        assert!(parse_rate("0/1s").is_err());
        assert!(parse_rate("five/1s").is_err());
        assert!(parse_duration("90s").is_ok());
        assert!(parse_duration("ninety").is_err());
        assert_eq!(
            mask_userinfo("http://u:p@proxy:3128"),
            "http://***@proxy:3128"
        );
    }

    #[test]
    fn shipped_default_config_is_valid() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/otpgate.toml");
        let c = load(&Sources {
            main: shipped,
            env: BTreeMap::new(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.server.listen.is_empty());
    }
}
