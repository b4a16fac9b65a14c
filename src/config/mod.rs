//! Typed configuration: layering (main file, `conf.d/*.toml`, `OTPGATE__` environment),
//! strict parsing (unknown keys rejected) and validation that reports every problem at once,
//! each naming where it came from and the key path.
//!
//! What lives where:
//! - this file: the typed [`Config`] the daemon runs with, [`Live`] (the swappable snapshot),
//!   errors, defaults and the small value parsers shared with the CLI and the API;
//! - `raw`: the serde layer of plain strings and numbers (so type errors are rare and always
//!   located), unknown keys rejected;
//! - [`load`](mod@load): the sources and their layering, origin tracking, structural errors;
//! - `validate`: raw to typed, one function per section, every semantic error collected;
//! - `summary`: what `otpgate check-config` prints;
//! - [`diff`]: what a reload changes, each key applied live or needing a restart.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

use crate::channel::ChannelKind;
use crate::secret::Secret;

pub mod diff;
pub mod load;
pub(crate) mod raw;
mod summary;
mod validate;

pub use load::{Sources, drop_in_files, load};
pub(crate) use summary::readable as summary_readable;
pub use validate::split_postgres_url;

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
    /// `[radius]`
    pub radius: RadiusConfig,
    /// `[ldap]`
    pub ldap: LdapConfig,
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
    /// Which database holds the outbox: the embedded SQLite file or a shared PostgreSQL.
    pub backend: StoreBackend,
}

/// `store.backend`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// The embedded SQLite file at `store.path` (the default).
    Sqlite,
    /// A PostgreSQL database shared by the nodes of a pair.
    Postgres(Box<PostgresConfig>),
}

/// `[store]` keys of the PostgreSQL backend.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// `store.url` without a password (one in the URL is refused).
    pub url: String,
    /// From `store.password_file` or credential `postgres-password`.
    pub password: Option<crate::secret::Secret>,
    /// Where the password came from, for the summary.
    pub password_file: Option<PathBuf>,
    /// How the server's certificate is checked (the URL's `sslmode`, default `prefer`).
    pub sslmode: SslMode,
    /// CA bundle for `verify-ca` / `verify-full`; None: the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: u32,
    /// How long connecting (TCP, TLS, authentication) may take.
    pub connect_timeout: Duration,
    /// The server cancels a statement running longer than this.
    pub statement_timeout: Duration,
    /// This box's name among the nodes (default: the host name).
    pub node: String,
    /// How long a claim holds a message before another node may take it over.
    pub lease: Duration,
}

/// libpq's `sslmode` words, as the PostgreSQL backend honours them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, certificate not checked.
    Prefer,
    /// TLS always; the certificate is checked only when `store.ca_file` is set.
    Require,
    /// TLS, the certificate chain checked, the host name not.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// The libpq word.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses a libpq word.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
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
    /// The WhatsApp Business Account id, to read the template back (`otpgate whatsapp check`).
    pub business_account_id: Option<String>,
    /// The Meta app's id: with the app secret it makes the app token that may ask Meta when
    /// the access token expires (a system user's token may not ask about itself).
    pub app_id: Option<String>,
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
    /// Countries SMS may go to (empty = all, written `["*"]`): the toll-fraud allow list;
    /// `otp.default_country` alone when not set.
    pub sms_countries: Vec<String>,
    /// Time WhatsApp gets, retries included, before SMS takes over.
    pub whatsapp_deadline: Duration,
    /// How long "not on WhatsApp" routes a number straight to SMS.
    pub no_whatsapp_memory: Duration,
    /// Send an SMS pre-notice before the first WhatsApp code to a number.
    pub prenotify: bool,
    /// The pre-notice text; `{org}` is replaced.
    pub prenotify_text: String,
    /// With webhooks: the time a WhatsApp code gets to be confirmed (`delivered`/`read`)
    /// before the same code goes by SMS; capped by the code's remaining lifetime.
    pub delivery_deadline: Duration,
    /// Without webhooks: how long a number whose user asked again while a WhatsApp code was
    /// unconfirmed gets its codes by SMS.
    pub unconfirmed_sms_for: Duration,
    /// Number types any door accepts (mobile and fixed-line-or-mobile unless set).
    pub number_types: Vec<crate::phone::NumberType>,
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
    /// Per number block (the number less its last `prefix_digits` digits): sequential
    /// numbers, the shape of an SMS pumping run.
    pub per_prefix: Option<Rate>,
    /// Digits dropped from a number's end to make its block.
    pub prefix_digits: u32,
    /// Per end user the caller names (`user`).
    pub per_user: Option<Rate>,
    /// Per end-user address the caller names (`ip`).
    pub per_ip: Option<Rate>,
    /// The conversion breaker for Verify API traffic.
    pub breaker: BreakerConfig,
}

/// The conversion breaker: SMS to a number block or country whose verification codes are
/// rarely checked correctly pauses for a while (WhatsApp is not affected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Finished verifications a block needs in the window before it is judged; 0 = off.
    pub min_codes: u32,
    /// Approval rate (percent) below which the block trips.
    pub min_approval_percent: u32,
    /// How far back verifications are counted.
    pub window: Duration,
    /// How long SMS stays paused after a trip.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            min_codes: 50,
            min_approval_percent: 10,
            window: Duration::from_secs(3600),
            cooldown: Duration::from_secs(3600),
        }
    }
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
    /// No successful check this long after a WhatsApp send: the same code by SMS, once.
    /// `None` ("off"): never.
    pub escalate_after: Option<Duration>,
}

/// `[radius]`: the RADIUS front door (UDP), off by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadiusConfig {
    /// Master switch.
    pub enabled: bool,
    /// UDP addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// `challenge` (password by LDAP bind, then a code) or `otp_only` (a code alone).
    pub mode: RadiusMode,
    /// What happens when no channel can take the code.
    pub failmode: FailMode,
    /// The Access-Challenge's Reply-Message; `{channel}` and `{last_digits}` are replaced.
    pub prompt: String,
    /// Drop requests without a Message-Authenticator (BlastRADIUS); on by default.
    pub require_message_authenticator: bool,
    /// The NASes allowed to ask.
    pub clients: Vec<RadiusClient>,
}

/// `radius.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RadiusMode {
    /// User-Password is the directory password; the code follows in a challenge.
    Challenge,
    /// The password was checked in front of us (NPS, a gateway); only the code is asked.
    OtpOnly,
}

/// `radius.failmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Reject when no channel can deliver the code (the default).
    Secure,
    /// Accept on the password alone when no channel can deliver, logged loudly.
    Safe,
}

/// One `[[radius.clients]]` entry: a NAS and its shared secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadiusClient {
    /// Name for logs and metrics.
    pub name: String,
    /// Source address or network.
    pub network: IpNet,
    /// The shared secret (from `secret_file` or credential `radius-<name>-secret`).
    pub secret: Secret,
}

/// `[ldap]`: the directory RADIUS asks for passwords and phone numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldaps://host:636` or `ldap://host:389`; None = no directory.
    pub url: Option<String>,
    /// StartTLS on an `ldap://` URL (default on).
    pub starttls: bool,
    /// Allows `ldap://` without StartTLS (passwords in the clear on the wire).
    pub allow_plain: bool,
    /// Service account for the search; None = anonymous search.
    pub bind_dn: Option<String>,
    /// Its password (from `bind_password_file` or credential `ldap-bind-password`).
    pub bind_password: Option<Secret>,
    /// Where users are searched.
    pub base_dn: String,
    /// Search filter; `{user}` is replaced by the RFC 4515-escaped user name.
    pub user_filter: String,
    /// Attributes tried in order for the phone number.
    pub phone_attributes: Vec<String>,
    /// Extra PEM trust anchors for the directory's certificate.
    pub ca_file: Option<PathBuf>,
    /// Connect, bind and search timeout.
    pub timeout: Duration,
    /// Connections kept open for searches, and as many for users' binds.
    pub pool_size: u32,
}

/// The default filter: Active Directory's logon name or UPN.
pub const DEFAULT_LDAP_FILTER: &str =
    "(&(objectClass=user)(|(sAMAccountName={user})(userPrincipalName={user})))";
/// The default Access-Challenge text.
pub const DEFAULT_RADIUS_PROMPT: &str =
    "Enter the code sent by {channel} to the number ending in {last_digits}";

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter ("info", "otpgate=debug"); RUST_LOG wins when set.
    pub level: String,
    /// "text" or "json".
    pub format: String,
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

/// The default SMS text for codes.
pub const DEFAULT_SMS_TEXT: &str =
    "{code} is your {org} verification code. It expires in {minutes} min. Do not share it.";
/// The default pre-notice text.
pub const DEFAULT_PRENOTIFY_TEXT: &str = "{org}: from now on your sign-in codes arrive on WhatsApp from our verified business account. If WhatsApp is unavailable they come by SMS as before.";
/// The default code pattern: a unique run of 4 to 10 digits, optionally grouped by one space or dash.
pub const DEFAULT_CODE_PATTERN: &str = r"(?:^|[^\d])(\d{3,5}[ -]?\d{1,5})(?:[^\d]|$)";

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
}

/// Helpers the configuration's unit tests share: a main file in a temporary directory.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use std::path::Path;

    pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, body).unwrap();
        p
    }

    pub fn load_with(
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

    /// The smallest valid main file.
    pub const MINIMAL: &str = "[otp]\ndefault_country = \"IN\"\n";
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
