//! The one-screen summary `otpgate check-config` prints.

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
