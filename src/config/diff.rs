//! What a reload changes: a pure comparison of two configurations, each changed key classified
//! as applied live or needing a restart.
//!
//! Every settings struct is destructured without `..`, so a field added to the configuration
//! does not compile until it is classified here: a reload can never drop a change silently.

use super::{
    BreakerConfig, ClientConfig, Config, LdapConfig, LimitsConfig, LogConfig, ModemConfig,
    OtpConfig, PolicyConfig, RadiusClient, RadiusConfig, ServerConfig, StoreConfig, TlsFiles,
    VerifyConfig, WhatsAppConfig,
};

/// Whether a changed key takes effect on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The running daemon picks it up.
    Applied,
    /// It takes effect only after a restart.
    NeedsRestart,
}

use Verdict::{Applied, NeedsRestart};

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key path as an admin writes it, e.g. `server.listen`, `modems.modem0.smsc`; a whole
    /// entry (`clients.adfs`, `modems.modem1`) when it was added or removed.
    pub key: String,
    /// Whether the change takes effect on reload.
    pub verdict: Verdict,
}

/// Every key whose value differs between `old` and `new`, in configuration order, each once.
pub fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let Config {
        // The main file's path comes from the command line, not from the files.
        source: _,
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
        // Derived from the rest (a world-readable secret, no channel): not settings.
        warnings: _,
    } = old;
    let mut d = Diff::default();
    d.server(server, &new.server);
    d.store(store, &new.store);
    d.otp(otp, &new.otp);
    d.clients(clients, &new.clients);
    d.whatsapp(whatsapp, &new.whatsapp);
    d.modems(modems, &new.modems);
    d.policy(policy, &new.policy);
    d.limits(limits, &new.limits);
    d.log(log, &new.log);
    d.verify(verify, &new.verify);
    d.radius(radius, &new.radius);
    d.ldap(ldap, &new.ldap);
    d.out
}

#[derive(Default)]
struct Diff {
    out: Vec<Change>,
}

impl Diff {
    fn cmp<T: PartialEq + ?Sized>(&mut self, key: &str, a: &T, b: &T, verdict: Verdict) {
        if a != b {
            self.push(key.to_owned(), verdict);
        }
    }

    fn push(&mut self, key: String, verdict: Verdict) {
        // A secret and its file's path share one key: report it once.
        if !self.out.iter().any(|c| c.key == key) {
            self.out.push(Change { key, verdict });
        }
    }

    fn server(&mut self, old: &ServerConfig, new: &ServerConfig) {
        let ServerConfig {
            listen,
            tls,
            max_body_bytes,
            header_timeout,
            request_timeout,
            idle_timeout,
            max_connections,
        } = old;
        // Sockets are bound once, at start.
        self.cmp("server.listen", listen, &new.listen, NeedsRestart);
        match (tls, &new.tls) {
            (
                Some(TlsFiles {
                    cert,
                    key,
                    client_ca,
                }),
                Some(n),
            ) => {
                self.cmp("server.tls_cert", cert, &n.cert, Applied);
                self.cmp("server.tls_key", key, &n.key, Applied);
                self.cmp("server.client_ca", client_ca, &n.client_ca, Applied);
            }
            // Switched on or off: the next connection gets the new acceptor.
            (a, b) => self.cmp("server.tls", a, b, Applied),
        }
        self.cmp(
            "server.max_body_bytes",
            max_body_bytes,
            &new.max_body_bytes,
            Applied,
        );
        self.cmp(
            "server.header_timeout",
            header_timeout,
            &new.header_timeout,
            Applied,
        );
        self.cmp(
            "server.request_timeout",
            request_timeout,
            &new.request_timeout,
            Applied,
        );
        self.cmp(
            "server.idle_timeout",
            idle_timeout,
            &new.idle_timeout,
            Applied,
        );
        // Each listener sizes its connection semaphore once, at start.
        let max = &new.max_connections;
        self.cmp("server.max_connections", max_connections, max, NeedsRestart);
    }

    fn store(&mut self, old: &StoreConfig, new: &StoreConfig) {
        let StoreConfig {
            path,
            retention,
            backend,
        } = old;
        self.cmp("store.path", path, &new.path, NeedsRestart);
        // The pool, the node's name and its claims are set up once, at start.
        self.cmp("store.backend", backend, &new.backend, NeedsRestart);
        self.cmp("store.retention", retention, &new.retention, Applied);
    }

    fn otp(&mut self, old: &OtpConfig, new: &OtpConfig) {
        let OtpConfig {
            default_ttl,
            max_ttl,
            default_country,
            sms_text,
            sms_text_locales,
            org,
            code_pattern,
        } = old;
        self.cmp("otp.default_ttl", default_ttl, &new.default_ttl, Applied);
        self.cmp("otp.max_ttl", max_ttl, &new.max_ttl, Applied);
        let country = &new.default_country;
        self.cmp("otp.default_country", default_country, country, Applied);
        self.cmp("otp.sms_text", sms_text, &new.sms_text, Applied);
        let locales = &new.sms_text_locales;
        self.cmp("otp.sms_text_locales", sms_text_locales, locales, Applied);
        self.cmp("otp.org", org, &new.org, Applied);
        let pattern = new.code_pattern.as_str();
        self.cmp("otp.code_pattern", code_pattern.as_str(), pattern, Applied);
    }

    /// Clients are matched by name; every client setting is read per request.
    fn clients(&mut self, old: &[ClientConfig], new: &[ClientConfig]) {
        for o in old {
            match new.iter().find(|n| n.name == o.name) {
                Some(n) => self.client(o, n),
                None => self.push(format!("clients.{}", o.name), Applied),
            }
        }
        for n in new.iter().filter(|n| !old.iter().any(|o| o.name == n.name)) {
            self.push(format!("clients.{}", n.name), Applied);
        }
    }

    fn client(&mut self, old: &ClientConfig, new: &ClientConfig) {
        let ClientConfig {
            name,
            key_sha256,
            password_sha256,
            allow_ips,
            whatsapp,
            order,
            countries,
        } = old;
        let at = |k: &str| format!("clients.{name}.{k}");
        self.cmp(&at("key_sha256"), key_sha256, &new.key_sha256, Applied);
        let password = &new.password_sha256;
        self.cmp(&at("password_sha256"), password_sha256, password, Applied);
        self.cmp(&at("allow_ips"), allow_ips, &new.allow_ips, Applied);
        self.cmp(&at("whatsapp"), whatsapp, &new.whatsapp, Applied);
        self.cmp(&at("order"), order, &new.order, Applied);
        self.cmp(&at("countries"), countries, &new.countries, Applied);
    }

    fn whatsapp(&mut self, old: &WhatsAppConfig, new: &WhatsAppConfig) {
        let WhatsAppConfig {
            enabled,
            api_base,
            phone_number_id,
            token,
            token_path,
            template,
            languages,
            default_language,
            timeout,
            proxy,
            ca_file,
            max_rate,
            circuit_cooldown,
            app_secret,
            verify_token,
            business_account_id,
            app_id,
        } = old;
        // The policy stops choosing WhatsApp at once; starting it needs a channel that is
        // built only at start.
        let on = if new.enabled { NeedsRestart } else { Applied };
        self.cmp("whatsapp.enabled", enabled, &new.enabled, on);
        // The channel's reload swaps these (URL, bearer, template, rate, circuit).
        self.cmp("whatsapp.api_base", api_base, &new.api_base, Applied);
        let id = &new.phone_number_id;
        self.cmp("whatsapp.phone_number_id", phone_number_id, id, Applied);
        self.cmp("whatsapp.token_file", token, &new.token, Applied);
        self.cmp("whatsapp.token_file", token_path, &new.token_path, Applied);
        self.cmp("whatsapp.template", template, &new.template, Applied);
        self.cmp("whatsapp.languages", languages, &new.languages, Applied);
        let lang = &new.default_language;
        self.cmp("whatsapp.default_language", default_language, lang, Applied);
        self.cmp("whatsapp.timeout", timeout, &new.timeout, Applied);
        self.cmp("whatsapp.max_rate", max_rate, &new.max_rate, Applied);
        let cooldown = &new.circuit_cooldown;
        self.cmp(
            "whatsapp.circuit_cooldown",
            circuit_cooldown,
            cooldown,
            Applied,
        );
        let secret = &new.app_secret;
        self.cmp("whatsapp.app_secret_file", app_secret, secret, Applied);
        let verify = &new.verify_token;
        self.cmp("whatsapp.verify_token_file", verify_token, verify, Applied);
        // Read only by `otpgate whatsapp check` and the check at start.
        let waba = &new.business_account_id;
        self.cmp(
            "whatsapp.business_account_id",
            business_account_id,
            waba,
            Applied,
        );
        // Read by the token-expiry question, which takes the configuration in force.
        self.cmp("whatsapp.app_id", app_id, &new.app_id, Applied);
        // Built into the HTTP client, which is made once.
        self.cmp("whatsapp.proxy", proxy, &new.proxy, NeedsRestart);
        self.cmp("whatsapp.ca_file", ca_file, &new.ca_file, NeedsRestart);
    }

    /// Modems are matched by name. The pool starts one owner per modem and cannot restart one
    /// alone yet, so every modem change waits for a restart, named by modem and key.
    fn modems(&mut self, old: &[ModemConfig], new: &[ModemConfig]) {
        for o in old {
            match new.iter().find(|n| n.name == o.name) {
                Some(n) => self.modem(o, n),
                None => self.push(format!("modems.{}", o.name), NeedsRestart),
            }
        }
        for n in new.iter().filter(|n| !old.iter().any(|o| o.name == n.name)) {
            self.push(format!("modems.{}", n.name), NeedsRestart);
        }
        let names = |l: &[ModemConfig]| l.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let (a, b) = (names(old), names(new));
        let same_set = a.len() == b.len() && a.iter().all(|x| b.contains(x));
        if same_set && a != b {
            // The same modems in another order: the pool's preference.
            self.push("modems".into(), NeedsRestart);
        }
    }

    fn modem(&mut self, old: &ModemConfig, new: &ModemConfig) {
        let ModemConfig {
            name,
            device,
            baud,
            pin,
            smsc,
            status_reports,
            command_timeout,
            send_timeout,
            probe_interval,
        } = old;
        let at = |k: &str| format!("modems.{name}.{k}");
        self.cmp(&at("device"), device, &new.device, NeedsRestart);
        self.cmp(&at("baud"), baud, &new.baud, NeedsRestart);
        self.cmp(&at("pin_file"), pin, &new.pin, NeedsRestart);
        self.cmp(&at("smsc"), smsc, &new.smsc, NeedsRestart);
        let reports = &new.status_reports;
        self.cmp(&at("status_reports"), status_reports, reports, NeedsRestart);
        let command = &new.command_timeout;
        self.cmp(
            &at("command_timeout"),
            command_timeout,
            command,
            NeedsRestart,
        );
        self.cmp(
            &at("send_timeout"),
            send_timeout,
            &new.send_timeout,
            NeedsRestart,
        );
        let probe = &new.probe_interval;
        self.cmp(&at("probe_interval"), probe_interval, probe, NeedsRestart);
    }

    /// The policy reads the configuration in force for every message.
    fn policy(&mut self, old: &PolicyConfig, new: &PolicyConfig) {
        let PolicyConfig {
            order,
            whatsapp_countries,
            sms_countries,
            whatsapp_deadline,
            no_whatsapp_memory,
            prenotify,
            prenotify_text,
            delivery_deadline,
            unconfirmed_sms_for,
            number_types,
        } = old;
        self.cmp("policy.order", order, &new.order, Applied);
        let wa = &new.whatsapp_countries;
        self.cmp("policy.whatsapp_countries", whatsapp_countries, wa, Applied);
        let sms = &new.sms_countries;
        self.cmp("policy.sms_countries", sms_countries, sms, Applied);
        let deadline = &new.whatsapp_deadline;
        self.cmp(
            "policy.whatsapp_deadline",
            whatsapp_deadline,
            deadline,
            Applied,
        );
        let memory = &new.no_whatsapp_memory;
        self.cmp(
            "policy.no_whatsapp_memory",
            no_whatsapp_memory,
            memory,
            Applied,
        );
        self.cmp("policy.prenotify", prenotify, &new.prenotify, Applied);
        let text = &new.prenotify_text;
        self.cmp("policy.prenotify_text", prenotify_text, text, Applied);
        let deadline = &new.delivery_deadline;
        self.cmp(
            "policy.delivery_deadline",
            delivery_deadline,
            deadline,
            Applied,
        );
        let unconfirmed = &new.unconfirmed_sms_for;
        self.cmp(
            "policy.unconfirmed_sms_for",
            unconfirmed_sms_for,
            unconfirmed,
            Applied,
        );
        let types = &new.number_types;
        self.cmp("policy.number_types", number_types, types, Applied);
    }

    /// Limits are checked per request against the configuration in force.
    fn limits(&mut self, old: &LimitsConfig, new: &LimitsConfig) {
        let LimitsConfig {
            per_recipient,
            per_client,
            global,
            per_country,
            per_prefix,
            prefix_digits,
            per_user,
            per_ip,
            breaker,
        } = old;
        let recipient = &new.per_recipient;
        self.cmp("limits.per_recipient", per_recipient, recipient, Applied);
        self.cmp("limits.per_client", per_client, &new.per_client, Applied);
        self.cmp("limits.global", global, &new.global, Applied);
        self.cmp("limits.per_country", per_country, &new.per_country, Applied);
        self.cmp("limits.per_prefix", per_prefix, &new.per_prefix, Applied);
        let digits = &new.prefix_digits;
        self.cmp("limits.prefix_digits", prefix_digits, digits, Applied);
        self.cmp("limits.per_user", per_user, &new.per_user, Applied);
        self.cmp("limits.per_ip", per_ip, &new.per_ip, Applied);
        let BreakerConfig {
            min_codes,
            min_approval_percent,
            window,
            cooldown,
        } = breaker;
        let b = &new.breaker;
        self.cmp("limits.breaker_min_codes", min_codes, &b.min_codes, Applied);
        let percent = &b.min_approval_percent;
        self.cmp(
            "limits.breaker_min_approval_percent",
            min_approval_percent,
            percent,
            Applied,
        );
        self.cmp("limits.breaker_window", window, &b.window, Applied);
        self.cmp("limits.breaker_cooldown", cooldown, &b.cooldown, Applied);
    }

    /// The subscriber is installed once at start.
    fn log(&mut self, old: &LogConfig, new: &LogConfig) {
        let LogConfig { level, format } = old;
        self.cmp("log.level", level, &new.level, NeedsRestart);
        self.cmp("log.format", format, &new.format, NeedsRestart);
    }

    /// The Verify API reads the configuration in force per request. A new key makes codes
    /// sent before the reload fail their check: that is the point of rotating it.
    fn verify(&mut self, old: &VerifyConfig, new: &VerifyConfig) {
        let VerifyConfig {
            key,
            max_attempts,
            max_sends,
            default_length,
            escalate_after,
        } = old;
        self.cmp("verify.key_file", key, &new.key, Applied);
        self.cmp(
            "verify.max_attempts",
            max_attempts,
            &new.max_attempts,
            Applied,
        );
        self.cmp("verify.max_sends", max_sends, &new.max_sends, Applied);
        let length = &new.default_length;
        self.cmp("verify.default_length", default_length, length, Applied);
        let escalate = &new.escalate_after;
        self.cmp("verify.escalate_after", escalate_after, escalate, Applied);
    }

    /// The RADIUS server reads the configuration in force per datagram; only its sockets
    /// are bound once, at start.
    fn radius(&mut self, old: &RadiusConfig, new: &RadiusConfig) {
        let RadiusConfig {
            enabled,
            listen,
            mode,
            failmode,
            prompt,
            require_message_authenticator,
            clients,
        } = old;
        self.cmp("radius.enabled", enabled, &new.enabled, NeedsRestart);
        self.cmp("radius.listen", listen, &new.listen, NeedsRestart);
        self.cmp("radius.mode", mode, &new.mode, Applied);
        self.cmp("radius.failmode", failmode, &new.failmode, Applied);
        self.cmp("radius.prompt", prompt, &new.prompt, Applied);
        let rma = &new.require_message_authenticator;
        let key = "radius.require_message_authenticator";
        self.cmp(key, require_message_authenticator, rma, Applied);
        for c in clients {
            let RadiusClient {
                name,
                network,
                secret,
            } = c;
            match new.clients.iter().find(|n| &n.name == name) {
                None => self.push(format!("radius.clients.{name}"), Applied),
                Some(n) => {
                    let at = |k: &str| format!("radius.clients.{name}.{k}");
                    self.cmp(&at("address"), network, &n.network, Applied);
                    self.cmp(&at("secret_file"), secret, &n.secret, Applied);
                }
            }
        }
        for n in &new.clients {
            if !clients.iter().any(|c| c.name == n.name) {
                self.push(format!("radius.clients.{}", n.name), Applied);
            }
        }
    }

    /// The directory's connections (URL, TLS, service account, pool) are made once, at
    /// start; what a search asks for is read per request.
    fn ldap(&mut self, old: &LdapConfig, new: &LdapConfig) {
        let LdapConfig {
            url,
            starttls,
            allow_plain,
            bind_dn,
            bind_password,
            base_dn,
            user_filter,
            phone_attributes,
            ca_file,
            timeout,
            pool_size,
        } = old;
        self.cmp("ldap.url", url, &new.url, NeedsRestart);
        self.cmp("ldap.starttls", starttls, &new.starttls, NeedsRestart);
        self.cmp(
            "ldap.allow_plain",
            allow_plain,
            &new.allow_plain,
            NeedsRestart,
        );
        self.cmp("ldap.bind_dn", bind_dn, &new.bind_dn, NeedsRestart);
        let pw = &new.bind_password;
        self.cmp("ldap.bind_password_file", bind_password, pw, NeedsRestart);
        self.cmp("ldap.base_dn", base_dn, &new.base_dn, Applied);
        self.cmp("ldap.user_filter", user_filter, &new.user_filter, Applied);
        let attrs = &new.phone_attributes;
        self.cmp("ldap.phone_attributes", phone_attributes, attrs, Applied);
        self.cmp("ldap.ca_file", ca_file, &new.ca_file, NeedsRestart);
        self.cmp("ldap.timeout", timeout, &new.timeout, NeedsRestart);
        self.cmp("ldap.pool_size", pool_size, &new.pool_size, NeedsRestart);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{MINIMAL, load_with};
    use super::*;
    use crate::config::Rate;
    use crate::secret::Secret;

    fn base() -> Config {
        let (_d, c) = load_with(MINIMAL, &[]);
        let mut c = c.unwrap();
        c.modems = vec![modem("modem0")];
        c.clients = vec![client("adfs")];
        c
    }

    fn modem(name: &str) -> ModemConfig {
        ModemConfig {
            name: name.into(),
            device: format!("/dev/{name}").into(),
            baud: 115_200,
            pin: None,
            smsc: None,
            status_reports: true,
            command_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(60),
            probe_interval: Duration::from_secs(30),
        }
    }

    fn client(name: &str) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            key_sha256: [1; 32],
            password_sha256: None,
            allow_ips: Vec::new(),
            whatsapp: true,
            order: None,
            countries: None,
        }
    }

    fn tls(cert: &str) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: cert.into(),
            key: "/k.pem".into(),
            client_ca: None,
        })
    }

    type Edit = fn(&mut Config);
    /// A row: name, edit to both, edit to the new one, the changes expected.
    type Row = (&'static str, Edit, Edit, Vec<(&'static str, Verdict)>);

    #[test]
    fn every_change_is_classified() {
        let a = Applied;
        let r = NeedsRestart;
        let rows: Vec<Row> = vec![
            ("no change", |_| {}, |_| {}, vec![]),
            (
                "warnings are not settings",
                |_| {},
                |c| c.warnings.push("w".into()),
                vec![],
            ),
            (
                "listen",
                |_| {},
                |c| c.server.listen.push("127.0.0.1:9".parse().unwrap()),
                vec![("server.listen", r)],
            ),
            (
                "tls on",
                |_| {},
                |c| c.server.tls = tls("/c.pem"),
                vec![("server.tls", a)],
            ),
            (
                "tls off",
                |c| c.server.tls = tls("/c.pem"),
                |c| c.server.tls = None,
                vec![("server.tls", a)],
            ),
            (
                "tls cert",
                |c| c.server.tls = tls("/c.pem"),
                |c| c.server.tls = tls("/d.pem"),
                vec![("server.tls_cert", a)],
            ),
            (
                "max_connections",
                |_| {},
                |c| c.server.max_connections = 7,
                vec![("server.max_connections", r)],
            ),
            (
                "header_timeout",
                |_| {},
                |c| c.server.header_timeout = Duration::from_secs(1),
                vec![("server.header_timeout", a)],
            ),
            (
                "max_body_bytes",
                |_| {},
                |c| c.server.max_body_bytes = 300,
                vec![("server.max_body_bytes", a)],
            ),
            (
                "store path",
                |_| {},
                |c| c.store.path = "/x.db".into(),
                vec![("store.path", r)],
            ),
            (
                "retention",
                |_| {},
                |c| c.store.retention = Duration::from_secs(9),
                vec![("store.retention", a)],
            ),
            (
                "org",
                |_| {},
                |c| c.otp.org = "ACME".into(),
                vec![("otp.org", a)],
            ),
            (
                "code pattern",
                |_| {},
                |c| c.otp.code_pattern = regex::Regex::new("(x)").unwrap(),
                vec![("otp.code_pattern", a)],
            ),
            (
                "country",
                |_| {},
                |c| c.otp.default_country = phonenumber::country::Id::DE,
                vec![("otp.default_country", a)],
            ),
            (
                "client added",
                |_| {},
                |c| c.clients.push(client("idp")),
                vec![("clients.idp", a)],
            ),
            (
                "client removed",
                |_| {},
                |c| c.clients.clear(),
                vec![("clients.adfs", a)],
            ),
            (
                "client key",
                |_| {},
                |c| c.clients[0].key_sha256 = [2; 32],
                vec![("clients.adfs.key_sha256", a)],
            ),
            (
                "client ips",
                |_| {},
                |c| c.clients[0].allow_ips = vec!["10.0.0.0/8".parse().unwrap()],
                vec![("clients.adfs.allow_ips", a)],
            ),
            (
                "whatsapp on",
                |_| {},
                |c| c.whatsapp.enabled = true,
                vec![("whatsapp.enabled", r)],
            ),
            (
                "whatsapp off",
                |c| c.whatsapp.enabled = true,
                |c| c.whatsapp.enabled = false,
                vec![("whatsapp.enabled", a)],
            ),
            (
                "token rotated in place",
                |c| c.whatsapp.token = Some(Secret::new("a")),
                |c| c.whatsapp.token = Some(Secret::new("b")),
                vec![("whatsapp.token_file", a)],
            ),
            (
                "token moved",
                |_| {},
                |c| {
                    c.whatsapp.token = Some(Secret::new("b"));
                    c.whatsapp.token_path = Some("/t".into())
                },
                vec![("whatsapp.token_file", a)],
            ),
            (
                "template",
                |_| {},
                |c| c.whatsapp.template = "otp2".into(),
                vec![("whatsapp.template", a)],
            ),
            (
                "max_rate",
                |_| {},
                |c| c.whatsapp.max_rate = 1000,
                vec![("whatsapp.max_rate", a)],
            ),
            (
                "proxy",
                |_| {},
                |c| c.whatsapp.proxy = Some("http://p:3128".into()),
                vec![("whatsapp.proxy", r)],
            ),
            (
                "ca_file",
                |_| {},
                |c| c.whatsapp.ca_file = Some("/ca.pem".into()),
                vec![("whatsapp.ca_file", r)],
            ),
            (
                "business account id",
                |_| {},
                |c| c.whatsapp.business_account_id = Some("1022".into()),
                vec![("whatsapp.business_account_id", a)],
            ),
            (
                "smsc",
                |_| {},
                |c| c.modems[0].smsc = Some("+4917".into()),
                vec![("modems.modem0.smsc", r)],
            ),
            (
                "pin",
                |_| {},
                |c| c.modems[0].pin = Some(Secret::new("1234")),
                vec![("modems.modem0.pin_file", r)],
            ),
            (
                "device",
                |_| {},
                |c| c.modems[0].device = "/dev/ttyUSB9".into(),
                vec![("modems.modem0.device", r)],
            ),
            (
                "modem timeouts",
                |_| {},
                |c| {
                    c.modems[0].command_timeout = Duration::from_secs(1);
                    c.modems[0].send_timeout = Duration::from_secs(2)
                },
                vec![
                    ("modems.modem0.command_timeout", r),
                    ("modems.modem0.send_timeout", r),
                ],
            ),
            (
                "probe, baud, reports",
                |_| {},
                |c| {
                    c.modems[0].probe_interval = Duration::from_secs(1);
                    c.modems[0].baud = 9600;
                    c.modems[0].status_reports = false
                },
                vec![
                    ("modems.modem0.baud", r),
                    ("modems.modem0.status_reports", r),
                    ("modems.modem0.probe_interval", r),
                ],
            ),
            (
                "modem added",
                |_| {},
                |c| c.modems.push(modem("modem1")),
                vec![("modems.modem1", r)],
            ),
            (
                "modem removed",
                |_| {},
                |c| c.modems.clear(),
                vec![("modems.modem0", r)],
            ),
            (
                "modems reordered",
                |c| c.modems.push(modem("modem1")),
                |c| c.modems.reverse(),
                vec![("modems", r)],
            ),
            (
                "policy order",
                |_| {},
                |c| c.policy.order.reverse(),
                vec![("policy.order", a)],
            ),
            (
                "sms countries",
                |_| {},
                |c| c.policy.sms_countries = vec!["IN".into(), "ID".into()],
                vec![("policy.sms_countries", a)],
            ),
            (
                "limit",
                |_| {},
                |c| {
                    c.limits.global = Some(Rate {
                        count: 1,
                        window: Duration::from_secs(1),
                    })
                },
                vec![("limits.global", a)],
            ),
            (
                "number types",
                |_| {},
                |c| c.policy.number_types = vec![crate::phone::NumberType::Mobile],
                vec![("policy.number_types", a)],
            ),
            (
                "abuse limits and breaker",
                |_| {},
                |c| {
                    c.limits.prefix_digits = 4;
                    c.limits.breaker.cooldown = Duration::from_secs(1)
                },
                vec![("limits.prefix_digits", a), ("limits.breaker_cooldown", a)],
            ),
            (
                "log level",
                |_| {},
                |c| c.log.level = "debug".into(),
                vec![("log.level", r)],
            ),
            (
                "log format",
                |_| {},
                |c| c.log.format = "json".into(),
                vec![("log.format", r)],
            ),
            (
                "verify attempts",
                |_| {},
                |c| c.verify.max_attempts = 9,
                vec![("verify.max_attempts", a)],
            ),
            (
                "verify key",
                |_| {},
                |c| c.verify.key = Some(Secret::new("k".repeat(32))),
                vec![("verify.key_file", a)],
            ),
            (
                "radius listen and a client's secret",
                |c| {
                    c.radius.clients.push(crate::config::RadiusClient {
                        name: "vpn".into(),
                        network: "10.0.0.0/24".parse().unwrap(),
                        secret: Secret::new("s1"),
                    })
                },
                |c| {
                    c.radius.listen.clear();
                    c.radius.clients[0].secret = Secret::new("s2")
                },
                vec![("radius.listen", r), ("radius.clients.vpn.secret_file", a)],
            ),
            (
                "ldap url and filter",
                |_| {},
                |c| {
                    c.ldap.url = Some("ldaps://dc1".into());
                    c.ldap.user_filter = "(uid={user})".into()
                },
                vec![("ldap.url", r), ("ldap.user_filter", a)],
            ),
            (
                "several sections",
                |_| {},
                |c| {
                    c.otp.org = "B".into();
                    c.server.listen.clear();
                    c.modems[0].smsc = Some("+1".into())
                },
                vec![
                    ("server.listen", r),
                    ("otp.org", a),
                    ("modems.modem0.smsc", r),
                ],
            ),
        ];
        for (name, before, after, want) in rows {
            let mut old = base();
            before(&mut old);
            let mut new = old.clone();
            after(&mut new);
            let got: Vec<(String, Verdict)> = changes(&old, &new)
                .into_iter()
                .map(|c| (c.key, c.verdict))
                .collect();
            let want: Vec<(String, Verdict)> =
                want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
