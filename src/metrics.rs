//! Prometheus metrics. Labels carry only channels, reasons, scopes and modem names: never a
//! number, a code or a client key.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label with one channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// "whatsapp" or "sms".
    pub channel: String,
}

/// A label with one reason word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A stable reason word.
    pub reason: String,
}

/// Channel and outcome class of an attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    /// "whatsapp" or "sms".
    pub channel: String,
    /// The outcome class.
    pub outcome: String,
}

/// One modem.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModemLabel {
    /// The modem's configured name.
    pub modem: String,
}

/// The result of one RADIUS request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// accept, reject, challenge, dropped, retransmit.
    pub result: String,
}

/// One certificate the daemon loads ([`crate::expiry::CERTIFICATES`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// listener, client_ca, ldap_ca, whatsapp_ca.
    pub certificate: String,
}

/// Every metric otpgate exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Messages accepted (202).
    pub accepted: Counter,
    /// Requests refused, by reason (invalid_phone_number, rate_limited, unauthorized...).
    pub rejected: Family<ReasonLabel, Counter>,
    /// Messages a provider accepted, by channel.
    pub sent: Family<ChannelLabel, Counter>,
    /// Messages a receipt confirmed delivered, by channel.
    pub delivered: Family<ChannelLabel, Counter>,
    /// Fallbacks from one channel to the next, by reason.
    pub fallbacks: Family<ReasonLabel, Counter>,
    /// Messages that expired undelivered.
    pub expired: Counter,
    /// Messages that failed on every channel.
    pub failed: Counter,
    /// Attempts by channel and outcome.
    pub attempts: Family<AttemptLabel, Counter>,
    /// Attempt latency by channel, seconds.
    pub attempt_seconds: Family<ChannelLabel, Histogram>,
    /// Time from acceptance to the first provider acceptance, seconds.
    pub accept_to_sent_seconds: Family<ChannelLabel, Histogram>,
    /// Messages queued or in flight.
    pub queue_depth: Gauge,
    /// 1 when the WhatsApp circuit is open.
    pub whatsapp_circuit_open: Gauge,
    /// Channel usable (1) or not (0).
    pub channel_up: Family<ChannelLabel, Gauge>,
    /// Modem signal in dBm.
    pub modem_signal_dbm: Family<ModemLabel, Gauge>,
    /// 1 when the modem is registered and ready.
    pub modem_ready: Family<ModemLabel, Gauge>,
    /// Taps on "I didn't request a code" (a fraud signal): codes and verifications canceled.
    pub not_requested: Counter,
    /// Number blocks and countries whose SMS the conversion breaker has paused now.
    pub sms_breaker_open: Gauge,
    /// Times the conversion breaker tripped.
    pub sms_breaker_trips: Counter,
    /// RADIUS requests by result.
    pub radius_requests: Family<ResultLabel, Counter>,
    /// 1 when the directory answered the last call, 0 when it did not (RADIUS on only).
    pub ldap_up: Gauge,
    /// Why the directory is unreachable, for /readyz and STATUS; None while it answers.
    ldap_problem: Mutex<Option<String>>,
    /// notAfter (unix seconds) of each certificate the daemon loads; no series when not loaded.
    pub certificate_expiry: Family<CertificateLabel, Gauge>,
    /// When Meta says the WhatsApp access token expires (unix seconds); 0 while that is not
    /// known or the token never expires.
    pub whatsapp_token_expiry: Gauge,
}

/// The channels every channel-labelled family starts with.
pub const CHANNELS: [&str; 2] = ["whatsapp", "sms"];

/// Attempt outcome classes (`AttemptEnd`'s words).
pub const OUTCOMES: [&str; 8] = [
    "accepted",
    "fallback",
    "retry",
    "channel_down",
    "failed",
    "unknown",
    "skipped",
    "interrupted",
];

/// Why the dispatcher moves on to the next channel (the policy's and the receipts' words).
pub const FALLBACK_REASONS: [&str; 6] = [
    "not_on_whatsapp",
    "recipient_unreachable",
    "retry_exhausted",
    "channel_down",
    "unknown_outcome",
    "failed_receipt",
];

/// Refusals an operator alerts on, present at zero from the first scrape.
pub const REJECT_REASONS: [&str; 18] = [
    "invalid_phone_number",
    "number_type_not_allowed",
    "country_not_allowed",
    "rate_limited",
    "prefix_limited",
    "user_limited",
    "ip_limited",
    "sms_paused",
    "unauthorized",
    "forbidden",
    "invalid_field",
    "missing_field",
    "invalid_json",
    "invalid_code",
    "invalid_text",
    "invalid_ttl",
    "idempotency_key_conflict",
    "no_channel",
];

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("otpgate");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            accepted: Counter::default(),
            rejected: Family::default(),
            sent: Family::default(),
            delivered: Family::default(),
            fallbacks: Family::default(),
            expired: Counter::default(),
            failed: Counter::default(),
            attempts: Family::default(),
            attempt_seconds: Family::new_with_constructor(latency_histogram),
            accept_to_sent_seconds: Family::new_with_constructor(latency_histogram),
            queue_depth: Gauge::default(),
            whatsapp_circuit_open: Gauge::default(),
            channel_up: Family::default(),
            modem_signal_dbm: Family::default(),
            modem_ready: Family::default(),
            not_requested: Counter::default(),
            sms_breaker_open: Gauge::default(),
            sms_breaker_trips: Counter::default(),
            radius_requests: Family::default(),
            ldap_up: Gauge::default(),
            ldap_problem: Mutex::new(None),
            certificate_expiry: Family::default(),
            whatsapp_token_expiry: Gauge::default(),
        };
        r.register(
            "messages_accepted",
            "Messages accepted for delivery",
            m.accepted.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "messages_sent",
            "Messages a provider accepted, by channel",
            m.sent.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages confirmed delivered by a receipt",
            m.delivered.clone(),
        );
        r.register(
            "fallbacks",
            "Fallbacks to the next channel, by reason",
            m.fallbacks.clone(),
        );
        r.register(
            "messages_expired",
            "Messages that expired undelivered",
            m.expired.clone(),
        );
        r.register(
            "messages_failed",
            "Messages no channel could deliver",
            m.failed.clone(),
        );
        r.register(
            "attempts",
            "Channel attempts by outcome",
            m.attempts.clone(),
        );
        r.register(
            "attempt_duration_seconds",
            "Channel attempt latency",
            m.attempt_seconds.clone(),
        );
        r.register(
            "accept_to_sent_seconds",
            "Time from acceptance to the provider's acceptance",
            m.accept_to_sent_seconds.clone(),
        );
        r.register(
            "queue_depth",
            "Messages queued or in flight",
            m.queue_depth.clone(),
        );
        r.register(
            "whatsapp_circuit_open",
            "1 while the WhatsApp circuit breaker is open",
            m.whatsapp_circuit_open.clone(),
        );
        r.register(
            "channel_up",
            "1 when the channel can take messages",
            m.channel_up.clone(),
        );
        r.register(
            "modem_signal_dbm",
            "Modem signal strength",
            m.modem_signal_dbm.clone(),
        );
        r.register(
            "modem_ready",
            "1 when the modem is registered and ready",
            m.modem_ready.clone(),
        );
        r.register(
            "not_requested",
            "Recipients who tapped \"I didn't request a code\"; their pending codes were canceled",
            m.not_requested.clone(),
        );
        r.register(
            "sms_breaker_open",
            "Number blocks and countries whose SMS the conversion breaker has paused",
            m.sms_breaker_open.clone(),
        );
        r.register(
            "sms_breaker_trips",
            "Times the conversion breaker paused SMS to a number block or country",
            m.sms_breaker_trips.clone(),
        );
        r.register(
            "radius_requests",
            "RADIUS requests by result",
            m.radius_requests.clone(),
        );
        r.register(
            "ldap_up",
            "1 when the directory answered the last call",
            m.ldap_up.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When each certificate the daemon loads expires (notAfter, unix seconds)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "whatsapp_token_expiry_timestamp_seconds",
            "When Meta says the WhatsApp access token expires (unix seconds); 0: never, or not known",
            m.whatsapp_token_expiry.clone(),
        );
        if let Ok(mut reg) = m.registry.lock() {
            *reg = r;
        }
        m.init_known();
        m
    }

    /// Creates every labelled series for its known labels at zero, so a restart does not
    /// hide a family until its first event (`rate()` and alerts need the zero).
    fn init_known(&self) {
        for channel in CHANNELS {
            let label = ChannelLabel {
                channel: channel.to_owned(),
            };
            drop(self.sent.get_or_create(&label));
            drop(self.delivered.get_or_create(&label));
            drop(self.attempt_seconds.get_or_create(&label));
            drop(self.accept_to_sent_seconds.get_or_create(&label));
            for outcome in OUTCOMES {
                drop(self.attempts.get_or_create(&AttemptLabel {
                    channel: channel.to_owned(),
                    outcome: outcome.to_owned(),
                }));
            }
        }
        for reason in FALLBACK_REASONS {
            drop(self.fallbacks.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            }));
        }
        for reason in REJECT_REASONS {
            drop(self.rejected.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            }));
        }
    }

    /// Creates the series of configured modems at zero (not ready until they say so).
    pub fn init_modems<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            drop(self.modem_ready.get_or_create(&ModemLabel {
                modem: name.to_owned(),
            }));
        }
    }

    /// Counts a refusal.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a RADIUS request by its result.
    pub fn radius(&self, result: &str) {
        self.radius_requests
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Records whether the directory answers (`None`) or why not.
    pub fn set_ldap_status(&self, problem: Option<String>) {
        self.ldap_up.set(i64::from(problem.is_none()));
        if let Ok(mut p) = self.ldap_problem.lock() {
            *p = problem;
        }
    }

    /// Why the directory is unreachable, when it is (RADIUS configured only).
    pub fn ldap_problem(&self) -> Option<String> {
        self.ldap_problem.lock().ok().and_then(|p| p.clone())
    }

    /// Sets a certificate's notAfter, or drops its series (`None`: not loaded, or unreadable).
    pub fn set_certificate_expiry(&self, certificate: &str, not_after: Option<i64>) {
        let label = CertificateLabel {
            certificate: certificate.to_owned(),
        };
        match not_after {
            Some(t) => {
                self.certificate_expiry.get_or_create(&label).set(t);
            }
            None => {
                self.certificate_expiry.remove(&label);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }
}

/// Label helper.
pub fn channel(c: crate::channel::ChannelKind) -> ChannelLabel {
    ChannelLabel {
        channel: c.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_families() {
        let m = Metrics::new();
        m.accepted.inc();
        m.reject("rate_limited");
        m.attempt_seconds
            .get_or_create(&channel(crate::channel::ChannelKind::Sms))
            .observe(0.2);
        let text = m.render();
        assert!(text.contains("otpgate_messages_accepted_total 1"), "{text}");
        assert!(
            text.contains("otpgate_requests_rejected_total{reason=\"rate_limited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("otpgate_attempt_duration_seconds_bucket{le=\"0.25\",channel=\"sms\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn labelled_families_are_present_at_zero_before_any_event() {
        let m = Metrics::new();
        m.init_modems(["modem0"]);
        let text = m.render();
        for line in [
            "otpgate_messages_delivered_total{channel=\"whatsapp\"} 0",
            "otpgate_messages_delivered_total{channel=\"sms\"} 0",
            "otpgate_fallbacks_total{reason=\"not_on_whatsapp\"} 0",
            "otpgate_messages_sent_total{channel=\"sms\"} 0",
            "otpgate_requests_rejected_total{reason=\"prefix_limited\"} 0",
            "otpgate_attempts_total{channel=\"whatsapp\",outcome=\"fallback\"} 0",
            "otpgate_modem_ready{modem=\"modem0\"} 0",
            "otpgate_sms_breaker_open 0",
            "otpgate_sms_breaker_trips_total 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
