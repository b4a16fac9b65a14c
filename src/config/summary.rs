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
        out.push_str(&format!(
            "  store       {} (retention {})\n",
            self.store.path.display(),
            readable(self.store.retention)
        ));
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
}
