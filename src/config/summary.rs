//! The one-screen summary `otpgate check-config` prints: what the daemon would run with, in
//! the words of the configuration, followed by warnings.

use std::time::Duration;

use super::*;

impl Config {
    /// The one-screen summary `otpgate check-config` prints.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let files = std::iter::once(self.source.clone())
            .chain(drop_in_files(&self.source))
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!("configuration OK ({files})\n"));
        self.summarise_server(&mut out);
        self.summarise_clients(&mut out);
        self.summarise_channels(&mut out);
        self.summarise_policy(&mut out);
        self.summarise_radius(&mut out);
        for w in self.warnings.iter().chain(&self.missing_devices()) {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }

    /// Configured modem devices that do not exist now. Not an error: a USB modem may be
    /// plugged in later, and the daemon keeps trying to open it.
    pub fn missing_devices(&self) -> Vec<String> {
        self.modems
            .iter()
            .filter(|m| !m.device.exists())
            .map(|m| {
                format!(
                    "modem {}: device {} does not exist (unplugged, or another path; prefer /dev/serial/by-id/...); the daemon starts without it and keeps trying",
                    m.name,
                    m.device.display()
                )
            })
            .collect()
    }

    fn summarise_server(&self, out: &mut String) {
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
        match &self.store.backend {
            super::StoreBackend::Sqlite => out.push_str(&format!(
                "  store       sqlite {} (retention {})\n",
                self.store.path.display(),
                readable(self.store.retention)
            )),
            super::StoreBackend::Postgres(pg) => out.push_str(&format!(
                "  store       postgres {} sslmode={} pool {} as node {} (lease {}, retention {}){}\n",
                pg.url,
                pg.sslmode.as_str(),
                pg.pool_size,
                pg.node,
                readable(pg.lease),
                readable(self.store.retention),
                if pg.password.is_some() {
                    ", password from a file"
                } else {
                    ""
                }
            )),
        }
        out.push_str(&format!(
            "  codes       ttl {} (max {}), default country {}\n",
            readable(self.otp.default_ttl),
            readable(self.otp.max_ttl),
            self.otp.default_country.as_ref()
        ));
    }

    fn summarise_radius(&self, out: &mut String) {
        let r = &self.radius;
        if !r.enabled {
            out.push_str("  radius      off\n");
            return;
        }
        let listen = r
            .listen
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "  radius      udp {listen}, mode {}, failmode {}, Message-Authenticator {}\n",
            match r.mode {
                RadiusMode::Challenge => "challenge (password by LDAP bind, then a code)",
                RadiusMode::OtpOnly => "otp_only",
            },
            match r.failmode {
                FailMode::Secure => "secure",
                FailMode::Safe => "safe (password alone when no channel delivers)",
            },
            if r.require_message_authenticator {
                "required"
            } else {
                "optional"
            }
        ));
        for c in &r.clients {
            out.push_str(&format!("  nas         {} from {}\n", c.name, c.network));
        }
        let l = &self.ldap;
        if let Some(url) = &l.url {
            let tls = if url.starts_with("ldaps://") {
                "TLS"
            } else if l.starttls {
                "StartTLS"
            } else {
                "PLAIN (passwords in the clear)"
            };
            out.push_str(&format!(
                "  ldap        {url} ({tls}), base {}, phone from {}\n",
                l.base_dn,
                l.phone_attributes.join(" then ")
            ));
        }
    }

    fn summarise_clients(&self, out: &mut String) {
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
    }

    fn summarise_channels(&self, out: &mut String) {
        if self.whatsapp.enabled {
            out.push_str(&format!(
                "  whatsapp    on: {} number {} template \"{}\" (timeout {}, {} msg/s)\n",
                self.whatsapp.api_base,
                self.whatsapp.phone_number_id,
                self.whatsapp.template,
                readable(self.whatsapp.timeout),
                self.whatsapp.max_rate
            ));
            if let Some(id) = &self.whatsapp.business_account_id {
                out.push_str(&format!(
                    "  whatsapp    template check against business account {id} (`otpgate whatsapp check`, and at start)\n"
                ));
            }
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
    }

    fn summarise_policy(&self, out: &mut String) {
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
            readable(self.policy.whatsapp_deadline),
            if self.policy.prenotify { "on" } else { "off" }
        ));
        out.push_str(&self.delivery_line());
        let r = |r: &Option<Rate>| match r {
            Some(r) => format!("{}/{}", r.count, readable(r.window)),
            None => "none".into(),
        };
        out.push_str(&format!(
            "  limits      per recipient {}, per client {}, per country {}, global {}\n",
            r(&self.limits.per_recipient),
            r(&self.limits.per_client),
            r(&self.limits.per_country),
            r(&self.limits.global)
        ));
        let types: Vec<&str> = self
            .policy
            .number_types
            .iter()
            .map(|t| t.as_str())
            .collect();
        out.push_str(&format!(
            "  abuse       number types {}; per prefix {} (last {} digits dropped), per user {}, per ip {}\n",
            types.join(","),
            r(&self.limits.per_prefix),
            self.limits.prefix_digits,
            r(&self.limits.per_user),
            r(&self.limits.per_ip)
        ));
        let b = &self.limits.breaker;
        if b.min_codes == 0 {
            out.push_str("  breaker     off\n");
        } else {
            out.push_str(&format!(
                "  breaker     SMS pauses for {} when {} verified codes in {} are under {}% approved\n",
                readable(b.cooldown),
                b.min_codes,
                readable(b.window),
                b.min_approval_percent
            ));
        }
    }
}

impl Config {
    /// Whether WhatsApp receipts reach the gateway: its webhook has an app secret.
    pub fn receipts_configured(&self) -> bool {
        self.whatsapp.enabled && self.whatsapp.app_secret.is_some()
    }

    /// What "delivered" means for WhatsApp with this configuration, in one line, for
    /// check-config, /readyz and the systemd status (empty with WhatsApp off).
    pub fn whatsapp_delivery_note(&self) -> Option<String> {
        if !self.whatsapp.enabled {
            return None;
        }
        Some(if self.receipts_configured() {
            format!(
                "whatsapp delivery confirmed by webhook receipts; no delivered/read within {} -> the code goes by SMS",
                readable(self.policy.delivery_deadline)
            )
        } else {
            format!(
                "whatsapp delivery unconfirmed: no webhook (whatsapp.app_secret_file), so a user without WhatsApp or offline gets no SMS unless they ask again (then SMS for {}){}",
                readable(self.policy.unconfirmed_sms_for),
                match self.verify.escalate_after {
                    Some(d) => format!(" or a verification stays unchecked for {}", readable(d)),
                    None => String::new(),
                }
            )
        })
    }

    fn delivery_line(&self) -> String {
        match self.whatsapp_delivery_note() {
            Some(n) if self.receipts_configured() => format!("  receipts    {n}\n"),
            Some(n) => format!("  receipts    none\nwarning: {n}\n"),
            None => String::new(),
        }
    }
}

/// A duration as an admin writes it: "30 days", "1 day 12h", "15m", "1m 30s", "500ms".
pub(crate) fn readable(d: Duration) -> String {
    let secs = d.as_secs();
    let days = secs / 86_400;
    let mut parts = Vec::new();
    match days {
        0 => {}
        1 => parts.push("1 day".to_string()),
        n => parts.push(format!("{n} days")),
    }
    for (n, unit) in [
        ((secs % 86_400) / 3600, "h"),
        ((secs % 3600) / 60, "m"),
        (secs % 60, "s"),
        (u64::from(d.subsec_millis()), "ms"),
    ] {
        if n > 0 {
            parts.push(format!("{n}{unit}"));
        }
    }
    if parts.is_empty() {
        return "0s".into();
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{MINIMAL, load_with};
    use super::*;

    #[test]
    fn durations_read_as_an_admin_writes_them() {
        for (secs, millis, want) in [
            (30 * 86_400, 0, "30 days"),
            (86_400 + 12 * 3600, 0, "1 day 12h"),
            (900, 0, "15m"),
            (90, 0, "1m 30s"),
            (4, 0, "4s"),
            (0, 500, "500ms"),
            (0, 0, "0s"),
        ] {
            let d = Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(readable(d), want);
        }
    }

    #[test]
    fn the_summary_reads_durations_and_warns_of_a_missing_modem_device() {
        let body = format!(
            "{MINIMAL}[[modems]]\nname = \"modem0\"\ndevice = \"/dev/otpgate-test-no-such-modem\"\n[limits]\nper_recipient = \"5/15m\"\n"
        );
        let (_d, c) = load_with(&body, &[]);
        let s = c.unwrap().summary();
        assert!(s.contains("(retention 30 days)"), "{s}");
        assert!(s.contains("ttl 5m (max 15m)"), "{s}");
        assert!(s.contains("per recipient 5/15m"), "{s}");
        assert!(
            s.contains(
                "warning: modem modem0: device /dev/otpgate-test-no-such-modem does not exist"
            ),
            "{s}"
        );
        let (_d, c) = load_with(MINIMAL, &[]);
        assert!(!c.unwrap().summary().contains("does not exist"));
    }

    #[test]
    fn delivery_keys_default_and_validate_naming_the_key() {
        let (_d, c) = load_with(MINIMAL, &[]);
        let c = c.unwrap();
        assert_eq!(c.policy.delivery_deadline, Duration::from_secs(15));
        assert_eq!(c.policy.unconfirmed_sms_for, Duration::from_secs(86_400));
        assert_eq!(c.verify.escalate_after, Some(Duration::from_secs(60)));
        let body = format!(
            "{MINIMAL}[policy]\ndelivery_deadline = \"5s\"\nunconfirmed_sms_for = \"2h\"\n[verify]\nescalate_after = \"off\"\n"
        );
        let (_d, c) = load_with(&body, &[]);
        let c = c.unwrap();
        assert_eq!(c.policy.delivery_deadline, Duration::from_secs(5));
        assert_eq!(c.policy.unconfirmed_sms_for, Duration::from_secs(7200));
        assert_eq!(c.verify.escalate_after, None);
        for (section, key, value) in [
            ("policy", "delivery_deadline", "500ms"),
            ("policy", "unconfirmed_sms_for", "soon"),
            ("verify", "escalate_after", "0s"),
        ] {
            let body = format!("{MINIMAL}[{section}]\n{key} = \"{value}\"\n");
            let (_d, c) = load_with(&body, &[]);
            let err = c.err().unwrap().to_string();
            assert!(err.contains(&format!("{section}.{key}")), "{err}");
        }
        // WhatsApp off: nothing to say about its receipts.
        assert!(!c.summary().contains("receipts"), "{}", c.summary());
    }

    #[test]
    fn sms_goes_to_the_home_country_only_until_more_are_listed() {
        let (_d, c) = load_with(MINIMAL, &[]);
        let s = c.unwrap().summary();
        assert!(s.contains("sms countries IN;"), "{s}");
        assert!(
            s.contains("number types mobile,fixed_line_or_mobile;"),
            "{s}"
        );
        let body = format!("{MINIMAL}[policy]\nsms_countries = [\"IN\", \"ID\"]\n");
        let (_d, c) = load_with(&body, &[]);
        assert!(c.unwrap().summary().contains("sms countries IN,ID;"));
        let body = format!("{MINIMAL}[policy]\nsms_countries = [\"*\"]\n");
        let (_d, c) = load_with(&body, &[]);
        assert!(c.unwrap().summary().contains("sms countries all;"));
        let body = format!(
            "{MINIMAL}[policy]\nsms_countries = []\nnumber_types = [\"mobile\", \"premium\"]\n[limits]\nprefix_digits = 0\n"
        );
        let (_d, c) = load_with(&body, &[]);
        let e = c.unwrap_err().to_string();
        for key in [
            "policy.sms_countries",
            "policy.number_types[1]",
            "limits.prefix_digits",
        ] {
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
