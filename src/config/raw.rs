//! The raw, string-typed layer serde reads; `deny_unknown_fields` everywhere, so a typo in a
//! key is an error that names it. Validation into typed settings lives in `validate`.

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
    pub radius: RawRadius,
    pub ldap: RawLdap,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRadius {
    pub enabled: Option<bool>,
    pub listen: Option<Vec<String>>,
    pub mode: Option<String>,
    pub failmode: Option<String>,
    pub prompt: Option<String>,
    pub require_message_authenticator: Option<bool>,
    pub clients: Vec<RawRadiusClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRadiusClient {
    pub name: Option<String>,
    pub address: Option<String>,
    pub secret_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLdap {
    pub url: Option<String>,
    pub starttls: Option<bool>,
    pub allow_plain: Option<bool>,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<String>,
    pub base_dn: Option<String>,
    pub user_filter: Option<String>,
    pub phone_attributes: Option<Vec<String>>,
    pub ca_file: Option<String>,
    pub timeout: Option<String>,
    pub pool_size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawVerify {
    pub key_file: Option<String>,
    pub max_attempts: Option<u64>,
    pub max_sends: Option<u64>,
    pub default_length: Option<u64>,
    pub escalate_after: Option<String>,
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
    pub backend: Option<String>,
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
    pub pool_size: Option<u64>,
    pub connect_timeout: Option<String>,
    pub statement_timeout: Option<String>,
    pub node: Option<String>,
    pub lease: Option<String>,
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
    pub business_account_id: Option<String>,
    pub app_id: Option<String>,
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
    pub delivery_deadline: Option<String>,
    pub unconfirmed_sms_for: Option<String>,
    pub number_types: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub per_recipient: Option<String>,
    pub per_client: Option<String>,
    pub global: Option<String>,
    pub per_country: Option<String>,
    pub per_prefix: Option<String>,
    pub prefix_digits: Option<u64>,
    pub per_user: Option<String>,
    pub per_ip: Option<String>,
    pub breaker_min_codes: Option<u64>,
    pub breaker_min_approval_percent: Option<u64>,
    pub breaker_window: Option<String>,
    pub breaker_cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}
