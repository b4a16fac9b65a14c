//! One builder for the `otpgate.toml` files that tests, benches and `otpgate demo` run the
//! daemon on, so that a change to the configuration's shape is made in one place.
//!
//! ```no_run
//! # fn f(dir: &std::path::Path, sim: &otpgate::sim::cloud_api::CloudApiSim) -> std::io::Result<()> {
//! use otpgate::sim::config::TestConfig;
//! let path = TestConfig::new(dir)
//!     .org("ACME")
//!     .whatsapp_sim(sim)
//!     .modem("modem0", std::path::Path::new("/dev/pts/7"))
//!     .policy("prenotify = false")
//!     .client("idp", "test-key-0123456789")
//!     .write()?;
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::sim::cloud_api::CloudApiSim;

/// The WhatsApp account the Cloud API simulator knows by default.
pub const SIM_PHONE_NUMBER_ID: &str = "106540352242922";
/// The template the Cloud API simulator knows by default.
pub const SIM_TEMPLATE: &str = "otp_auth";
/// The access token written for a WhatsApp section that talks to the simulator.
pub const SIM_TOKEN: &str = "sim-token";
/// The token written for a WhatsApp section no test ever reaches.
pub const UNUSED_TOKEN: &str = "EAAtoken-not-for-logs";

/// A loopback port nothing listens on at the moment of asking.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `[whatsapp]` section.
#[derive(Debug, Clone)]
struct WhatsApp {
    api_base: Option<String>,
    phone_number_id: String,
    template: String,
    token: String,
    ca: Option<Ca>,
    /// App secret and verify token for the webhook, written to files beside the config.
    webhook: Option<(String, String)>,
    lines: String,
}

/// Where the CA the WhatsApp client trusts comes from.
#[derive(Debug, Clone)]
enum Ca {
    Pem(String),
    File(PathBuf),
}

/// An `otpgate.toml` under construction: the store, the token file and the CA live in `dir`.
#[derive(Debug, Clone)]
pub struct TestConfig {
    dir: PathBuf,
    header: String,
    listen: String,
    server: String,
    otp: String,
    whatsapp: Option<WhatsApp>,
    modems: Vec<String>,
    policy: String,
    limits: String,
    log: String,
    clients: Vec<String>,
    /// Lines after the last client (they join its table) and tables the builder does not own.
    tail: String,
}

impl TestConfig {
    /// A configuration with its files in `dir`: loopback on a port the OS picks, the store at
    /// `dir/otpgate.db`, numbers in India; no channel and no client yet.
    pub fn new(dir: &Path) -> TestConfig {
        TestConfig {
            dir: dir.to_path_buf(),
            header: String::new(),
            listen: "127.0.0.1:0".into(),
            server: String::new(),
            otp: "default_country = \"IN\"\n".into(),
            whatsapp: None,
            modems: Vec::new(),
            policy: String::new(),
            limits: String::new(),
            log: String::new(),
            clients: Vec::new(),
            tail: String::new(),
        }
    }

    /// A comment line at the top of the file.
    pub fn comment(mut self, text: &str) -> Self {
        self.header = format!("# {text}\n");
        self
    }

    /// Listens on `addr` instead of a port the OS picks.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr.to_string();
        self
    }

    /// Listens on a loopback port free now, so that it is known before the daemon starts
    /// (a separate process cannot report the port the OS picked).
    pub fn free_port(self) -> io::Result<Self> {
        let port = free_port()?;
        Ok(self.listen(SocketAddr::from(([127, 0, 0, 1], port))))
    }

    /// The address in `server.listen`.
    pub fn addr(&self) -> &str {
        &self.listen
    }

    /// Where the store lives.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("otpgate.db")
    }

    /// Where [`write`](Self::write) puts the file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("otpgate.toml")
    }

    /// Lines added to `[server]`.
    pub fn server(mut self, lines: &str) -> Self {
        push_lines(&mut self.server, lines);
        self
    }

    /// `otp.org`, the name SMS texts carry.
    pub fn org(mut self, org: &str) -> Self {
        push_lines(&mut self.otp, &format!("org = {}", quoted(org)));
        self
    }

    /// WhatsApp against the Cloud API at `api_base`, with the simulator's account, template
    /// and token.
    pub fn whatsapp(mut self, api_base: &str) -> Self {
        self.whatsapp = Some(WhatsApp {
            api_base: Some(api_base.into()),
            phone_number_id: SIM_PHONE_NUMBER_ID.into(),
            template: SIM_TEMPLATE.into(),
            token: SIM_TOKEN.into(),
            ca: None,
            webhook: None,
            lines: String::new(),
        });
        self
    }

    /// WhatsApp against `sim`, trusting its CA.
    pub fn whatsapp_sim(self, sim: &CloudApiSim) -> Self {
        self.whatsapp(&sim.base_url())
            .whatsapp_ca_pem(&sim.ca_pem())
    }

    /// A WhatsApp section that is valid but never reached (Meta's URL, a placeholder account):
    /// for a daemon whose channels a test supplies itself, or that must never get an answer.
    pub fn whatsapp_unused(mut self) -> Self {
        self.whatsapp = Some(WhatsApp {
            api_base: None,
            phone_number_id: "1234".into(),
            template: "otp".into(),
            token: UNUSED_TOKEN.into(),
            ca: None,
            webhook: None,
            lines: String::new(),
        });
        self
    }

    /// Trusts this CA (PEM, written beside the config) for the Cloud API.
    pub fn whatsapp_ca_pem(mut self, pem: &str) -> Self {
        if let Some(w) = self.whatsapp.as_mut() {
            w.ca = Some(Ca::Pem(pem.into()));
        }
        self
    }

    /// Trusts the CA in this existing file for the Cloud API.
    pub fn whatsapp_ca_file(mut self, path: &Path) -> Self {
        if let Some(w) = self.whatsapp.as_mut() {
            w.ca = Some(Ca::File(path.into()));
        }
        self
    }

    /// Turns the status webhook on: the app secret and verify token go to owner-only files
    /// beside the config (`whatsapp-app-secret`, `whatsapp-verify-token`).
    pub fn whatsapp_webhook(mut self, app_secret: &str, verify_token: &str) -> Self {
        if let Some(w) = self.whatsapp.as_mut() {
            w.webhook = Some((app_secret.into(), verify_token.into()));
        }
        self
    }

    /// Lines added to `[whatsapp]` (timeouts, rates, webhook secrets).
    pub fn whatsapp_lines(mut self, lines: &str) -> Self {
        if let Some(w) = self.whatsapp.as_mut() {
            push_lines(&mut w.lines, lines);
        }
        self
    }

    /// A modem named `name` on `device`.
    pub fn modem(mut self, name: &str, device: &Path) -> Self {
        self.modems.push(format!(
            "[[modems]]\nname = {}\ndevice = {}\n",
            quoted(name),
            quoted(&device.display().to_string())
        ));
        self
    }

    /// Lines added to the last modem's table.
    pub fn modem_lines(mut self, lines: &str) -> Self {
        if let Some(m) = self.modems.last_mut() {
            push_lines(m, lines);
        }
        self
    }

    /// Lines added to `[policy]`.
    pub fn policy(mut self, lines: &str) -> Self {
        push_lines(&mut self.policy, lines);
        self
    }

    /// Lines added to `[limits]`.
    pub fn limits(mut self, lines: &str) -> Self {
        push_lines(&mut self.limits, lines);
        self
    }

    /// `log.level`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log = format!("level = {}\n", quoted(level));
        self
    }

    /// A client named `name` whose key is `key` (its hash goes into the file).
    pub fn client(mut self, name: &str, key: &str) -> Self {
        let hash = hex::encode(crate::api::auth::sha256(key));
        self.clients.push(format!(
            "[[clients]]\nname = {}\nkey_sha256 = \"{hash}\"\n",
            quoted(name)
        ));
        self
    }

    /// TOML appended as written: lines before its first table join the last client's table;
    /// a `[server]`, `[otp]`, `[whatsapp]`, `[policy]`, `[limits]` or `[log]` table joins the
    /// one the builder writes (TOML forbids two); any other table follows the clients.
    pub fn extra(mut self, toml: &str) -> Self {
        let mut target: Option<String> = None;
        let mut own = String::new();
        let mut foreign = String::new();
        for line in toml.lines() {
            let t = line.trim();
            if t.starts_with('[') && !t.starts_with("[[") {
                let name = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
                if self.owns(&name) {
                    target = Some(name);
                    continue;
                }
                target = None;
            } else if t.starts_with("[[") {
                target = None;
            }
            match target.as_deref() {
                Some(name) => {
                    if let Some(section) = self.section_mut(name) {
                        push_lines(section, line);
                    }
                }
                None if foreign.is_empty() && !t.starts_with('[') => push_lines(&mut own, line),
                None => push_lines(&mut foreign, line),
            }
        }
        self.tail.push_str(&own);
        self.tail.push_str(&foreign);
        self
    }

    fn owns(&self, table: &str) -> bool {
        match table {
            "server" | "otp" | "policy" | "limits" | "log" => true,
            "whatsapp" => self.whatsapp.is_some(),
            _ => false,
        }
    }

    fn section_mut(&mut self, table: &str) -> Option<&mut String> {
        match table {
            "server" => Some(&mut self.server),
            "otp" => Some(&mut self.otp),
            "policy" => Some(&mut self.policy),
            "limits" => Some(&mut self.limits),
            "log" => Some(&mut self.log),
            "whatsapp" => self.whatsapp.as_mut().map(|w| &mut w.lines),
            _ => None,
        }
    }

    /// The file's text; `token` and `ca` are where the token and the CA are (to be) written.
    fn render(&self, token: &Path, ca: Option<&Path>) -> String {
        let mut s = self.header.clone();
        let _ = write!(
            s,
            "[server]\nlisten = [\"{}\"]\n{}",
            self.listen, self.server
        );
        let _ = write!(
            s,
            "[store]\npath = {}\n[otp]\n{}",
            quoted(&self.db_path().display().to_string()),
            self.otp
        );
        if let Some(w) = &self.whatsapp {
            s.push_str("[whatsapp]\nenabled = true\n");
            if let Some(base) = &w.api_base {
                let _ = writeln!(s, "api_base = {}", quoted(base));
            }
            let _ = write!(
                s,
                "phone_number_id = {}\ntemplate = {}\ntoken_file = {}\n",
                quoted(&w.phone_number_id),
                quoted(&w.template),
                quoted(&token.display().to_string())
            );
            if let Some(ca) = ca {
                let _ = writeln!(s, "ca_file = {}", quoted(&ca.display().to_string()));
            }
            if w.webhook.is_some() {
                let (secret, verify) = self.webhook_paths();
                let _ = write!(
                    s,
                    "app_secret_file = {}\nverify_token_file = {}\n",
                    quoted(&secret.display().to_string()),
                    quoted(&verify.display().to_string())
                );
            }
            s.push_str(&w.lines);
        }
        for m in &self.modems {
            s.push_str(m);
        }
        for (table, body) in [
            ("policy", &self.policy),
            ("limits", &self.limits),
            ("log", &self.log),
        ] {
            if !body.is_empty() {
                let _ = write!(s, "[{table}]\n{body}");
            }
        }
        for c in &self.clients {
            s.push_str(c);
        }
        s.push_str(&self.tail);
        s
    }

    /// Writes the token file (owner-only, as the daemon wants secrets), the CA if any and
    /// `otpgate.toml` into the directory; returns the config's path.
    pub fn write(&self) -> io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let token = self.dir.join("whatsapp-token");
        let mut ca = None;
        if let Some(w) = &self.whatsapp {
            std::fs::write(&token, &w.token)?;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
            if let Some((secret, verify)) = &w.webhook {
                let (secret_path, verify_path) = self.webhook_paths();
                for (p, text) in [(secret_path, secret), (verify_path, verify)] {
                    std::fs::write(&p, text)?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            ca = match &w.ca {
                Some(Ca::Pem(pem)) => {
                    let p = self.dir.join("cloud-api-ca.pem");
                    std::fs::write(&p, pem)?;
                    Some(p)
                }
                Some(Ca::File(p)) => Some(p.clone()),
                None => None,
            };
        }
        let path = self.path();
        std::fs::write(&path, self.render(&token, ca.as_deref()))?;
        Ok(path)
    }
}

impl TestConfig {
    /// Where [`whatsapp_webhook`](Self::whatsapp_webhook)'s secrets are written.
    fn webhook_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("whatsapp-app-secret"),
            self.dir.join("whatsapp-verify-token"),
        )
    }
}

/// Appends `lines` to a section body, one trailing newline.
fn push_lines(section: &mut String, lines: &str) {
    let lines = lines.trim_end_matches('\n');
    if !lines.is_empty() {
        section.push_str(lines);
        section.push('\n');
    }
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.into()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_tables_join_the_builders_own_and_the_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TestConfig::new(dir.path())
            .org("ACME")
            .whatsapp_unused()
            .policy("whatsapp_deadline = \"3s\"")
            .client("idp", "test-key-0123456789")
            .extra("allow_ips = [\"10.0.0.0/8\"]\n[server]\nmax_body_bytes = 1024\n[policy]\nprenotify = false\n[verify]\nmax_attempts = 3\n");
        let main = cfg.write().unwrap();
        let text = std::fs::read_to_string(&main).unwrap();
        let v: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(v["server"]["max_body_bytes"].as_integer(), Some(1024));
        assert_eq!(v["policy"]["prenotify"].as_bool(), Some(false));
        assert_eq!(v["policy"]["whatsapp_deadline"].as_str(), Some("3s"));
        assert_eq!(v["verify"]["max_attempts"].as_integer(), Some(3));
        assert_eq!(v["clients"][0]["allow_ips"][0].as_str(), Some("10.0.0.0/8"));
        assert_eq!(v["otp"]["org"].as_str(), Some("ACME"));
        let token = v["whatsapp"]["token_file"].as_str().unwrap();
        assert_eq!(std::fs::read_to_string(token).unwrap(), UNUSED_TOKEN);
        crate::config::load(&crate::config::Sources {
            main,
            env: Default::default(),
        })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn strings_are_quoted_as_toml() {
        for s in ["a\"b\\c", "it's", "/tmp/x y"] {
            let t: toml::Table = format!("k = {}", quoted(s)).parse().unwrap();
            assert_eq!(t["k"].as_str(), Some(s));
        }
    }
}
