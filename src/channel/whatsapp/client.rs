//! [`WhatsAppChannel`]: the Cloud API client behind the [`Channel`] trait.
//!
//! One reqwest client (so TLS sessions and connections are reused) on our own rustls config
//! (ring, webpki roots plus `ca_file`), an optional HTTP CONNECT proxy, a per-request timeout
//! of `min(timeout, remaining budget)`, at most one retry inside the budget, a global token
//! bucket and the circuit breaker from [`super::circuit`]. The token lives in a sensitive
//! header value built once per (re)load; it and the code never reach a log line, an error or
//! a Debug output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use super::circuit::{Admission, Circuit, CircuitStatus, LANGUAGE_QUARANTINE, Languages};
use super::errors::{
    Classified, ErrorClass, PAUSE, TransportFailure, classify_response, classify_transport,
};
use super::webhook::{self, WebhookError, WebhookEvents};
use crate::channel::{
    BoxFuture, Channel, ChannelKind, Content, Delivery, Health, Outcome, ReceiptTx,
};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{WhatsAppConfig, mask_userinfo};
use crate::content::MAX_CODE_LEN;

/// The least time worth starting a (second) request with.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Why the channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WhatsAppError {
    /// No token was loaded.
    #[error("whatsapp: no access token (set token_file or the whatsapp-token credential)")]
    NoToken,
    /// The token holds characters an HTTP header cannot carry (the token itself is not shown).
    #[error("whatsapp: the access token contains characters not allowed in an HTTP header")]
    BadToken,
    /// The extra trust anchors could not be used.
    #[error("whatsapp: ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The proxy URL is not usable (shown with its credentials masked).
    #[error("whatsapp: proxy {0} is not a valid proxy URL")]
    Proxy(String),
    /// rustls or reqwest refused the configuration.
    #[error("whatsapp: cannot build the HTTP client: {0}")]
    Client(String),
}

/// What can be swapped by a reload.
struct Settings {
    url: String,
    bearer: HeaderValue,
    template: String,
    languages: BTreeMap<String, String>,
    default_language: String,
    timeout: Duration,
    app_secret: Option<crate::secret::Secret>,
    verify_token: Option<crate::secret::Secret>,
}

impl Settings {
    fn from_config(cfg: &WhatsAppConfig) -> Result<Settings, WhatsAppError> {
        let token = cfg.token.as_ref().ok_or(WhatsAppError::NoToken)?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| WhatsAppError::BadToken)?;
        // Sensitive: hyper and reqwest print it as "Sensitive" in any Debug output.
        bearer.set_sensitive(true);
        Ok(Settings {
            url: format!(
                "{}/{}/messages",
                cfg.api_base.trim_end_matches('/'),
                cfg.phone_number_id
            ),
            bearer,
            template: cfg.template.clone(),
            languages: cfg.languages.clone(),
            default_language: cfg.default_language.clone(),
            timeout: cfg.timeout,
            app_secret: cfg.app_secret.clone(),
            verify_token: cfg.verify_token.clone(),
        })
    }

    /// The template language for a caller's locale, by [`crate::content::for_locale`]'s rule.
    fn language(&self, locale: Option<&str>) -> &str {
        locale
            .and_then(|l| crate::content::for_locale(&self.languages, l))
            .map_or(&self.default_language, String::as_str)
    }
}

/// A global send-rate cap (GCRA token bucket: `rate`/s with a burst of one second's worth).
#[derive(Debug)]
struct RateLimiter {
    interval: Option<Duration>,
    burst: u32,
    tat: Option<Instant>,
}

impl RateLimiter {
    fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            interval: (rate > 0).then(|| Duration::from_secs(1) / rate),
            burst: rate.max(1),
            tat: None,
        }
    }

    fn tolerance(&self) -> Duration {
        self.interval
            .map(|i| i * self.burst.saturating_sub(1))
            .unwrap_or_default()
    }

    /// Reserves a slot: `Ok(wait)` when it comes within `max_wait`, else `Err(wait needed)`
    /// without reserving (the caller's budget cannot afford it).
    fn reserve(&mut self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        let Some(interval) = self.interval else {
            return Ok(Duration::ZERO);
        };
        let tat = self.tat.map_or(now, |t| t.max(now));
        let wait = tat
            .saturating_duration_since(now)
            .saturating_sub(self.tolerance());
        if wait > max_wait {
            return Err(wait);
        }
        self.tat = Some(tat + interval);
        Ok(wait)
    }

    /// Meta said "slow down": nobody sends for `d`.
    fn penalize(&mut self, now: Instant, d: Duration) {
        if self.interval.is_none() {
            return;
        }
        let floor = now + d + self.tolerance();
        self.tat = Some(self.tat.map_or(floor, |t| t.max(floor)));
    }
}

/// Lock that survives a poisoned mutex: the guarded state is always left consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts the half-open probe back if the send is dropped or ends without a verdict.
struct ProbeGuard<'a> {
    circuit: &'a Mutex<Circuit>,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.circuit).probe_abandoned();
        }
    }
}

/// The WhatsApp Cloud API channel.
pub struct WhatsAppChannel {
    http: reqwest::Client,
    settings: RwLock<Arc<Settings>>,
    circuit: Mutex<Circuit>,
    /// Template languages Meta refused with 132001 (owned here, like the circuit).
    languages: Mutex<Languages>,
    /// What the last template check found wrong (written by the check's task).
    template_problems: Arc<Mutex<Vec<String>>>,
    /// `otp.default_ttl` and `otp.max_ttl` once a template check was started, so a reload
    /// that changes the template, languages or account checks again.
    check_ttls: Mutex<Option<(Duration, Duration)>>,
    limiter: Mutex<RateLimiter>,
    clock: SharedClock,
    receipts: ReceiptTx,
    // Fixed at start (the client is built with them); reload warns when they change.
    proxy: Option<String>,
    ca_file: Option<PathBuf>,
}

impl fmt::Debug for WhatsAppChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.settings();
        f.debug_struct("WhatsAppChannel")
            .field("url", &s.url)
            .field("template", &s.template)
            .field("timeout", &s.timeout)
            .field("token", &"***")
            .field("proxy", &self.proxy.as_deref().map(mask_userinfo))
            .finish_non_exhaustive()
    }
}

/// Builds the reqwest client: our rustls config, the proxy, connection reuse.
pub(crate) fn build_http(cfg: &WhatsAppConfig) -> Result<reqwest::Client, WhatsAppError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let ca_err = |reason: String| WhatsAppError::CaFile {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificates found".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WhatsAppError::Client(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(cfg.timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        // Retries are ours (budget-aware, at most one); reqwest must not add any.
        .retry(reqwest::retry::never())
        .redirect(reqwest::redirect::Policy::none())
        .https_only(false);
    if let Some(p) = &cfg.proxy {
        // The error would echo the URL with its password: report it masked instead.
        let proxy =
            reqwest::Proxy::all(p.as_str()).map_err(|_| WhatsAppError::Proxy(mask_userinfo(p)))?;
        b = b.proxy(proxy);
    }
    // Without cfg.proxy reqwest reads HTTPS_PROXY / NO_PROXY from the environment.
    b.build().map_err(|e| WhatsAppError::Client(e.to_string()))
}

/// A transport failure in words that hold no URL, header or body (see [`transport_failure`]).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    transport_failure(e).1
}

/// Names a transport failure without echoing anything that could hold a secret:
/// only rustls and I/O errors are described.
fn transport_failure(e: &reqwest::Error) -> (TransportFailure, String) {
    let kind = if e.is_timeout() {
        TransportFailure::Timeout
    } else if e.is_connect() {
        TransportFailure::Connect
    } else {
        TransportFailure::Other
    };
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut detail = String::from("connection error");
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return (kind, format!("TLS: {t}"));
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return (TransportFailure::Timeout, "timed out".into());
            }
            if io.kind() != std::io::ErrorKind::Other {
                detail = io.kind().to_string();
            }
            // tokio-rustls and hyper-util nest io::Errors whose `source()` skips the
            // wrapped error: descend into it.
            if let Some(inner) = io.get_ref() {
                src = Some(inner);
                continue;
            }
        }
        src = s.source();
    }
    (kind, detail)
}

impl WhatsAppChannel {
    /// Builds the channel from its config, on the system clock.
    pub fn new(
        cfg: &WhatsAppConfig,
        receipts: ReceiptTx,
    ) -> Result<WhatsAppChannel, WhatsAppError> {
        WhatsAppChannel::with_clock(cfg, receipts, Arc::new(SystemClock))
    }

    /// Builds the channel with the given clock (the circuit's cooldown runs on it).
    pub fn with_clock(
        cfg: &WhatsAppConfig,
        receipts: ReceiptTx,
        clock: SharedClock,
    ) -> Result<WhatsAppChannel, WhatsAppError> {
        let settings = Settings::from_config(cfg)?;
        Ok(WhatsAppChannel {
            http: build_http(cfg)?,
            settings: RwLock::new(Arc::new(settings)),
            circuit: Mutex::new(Circuit::new(cfg.circuit_cooldown)),
            languages: Mutex::new(Languages::default()),
            template_problems: Arc::new(Mutex::new(Vec::new())),
            check_ttls: Mutex::new(None),
            limiter: Mutex::new(RateLimiter::new(cfg.max_rate)),
            clock,
            receipts,
            proxy: cfg.proxy.clone(),
            ca_file: cfg.ca_file.clone(),
        })
    }

    fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(s) => Arc::clone(&s),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Swaps token, template, languages, timeout, URL, rate cap, cooldown and webhook secrets
    /// live. Proxy and trust anchors need a restart (the client is built with them).
    pub fn reload(&self, cfg: &WhatsAppConfig) -> Result<(), WhatsAppError> {
        let new = Arc::new(Settings::from_config(cfg)?);
        if new.template != self.settings().template {
            // Another template may have the translations the old one lacked.
            lock(&self.languages).clear();
        }
        let ttls = *lock(&self.check_ttls);
        if let Some(ttls) = ttls {
            // Cheap (one GET) and a reload is rare: check whatever changed.
            self.spawn_template_check(cfg, ttls);
        }
        match self.settings.write() {
            Ok(mut s) => *s = new,
            Err(p) => *p.into_inner() = new,
        }
        lock(&self.circuit).set_cooldown(cfg.circuit_cooldown);
        *lock(&self.limiter) = RateLimiter::new(cfg.max_rate);
        if cfg.proxy != self.proxy || cfg.ca_file != self.ca_file {
            tracing::warn!("whatsapp: proxy or ca_file changed; they take effect after a restart");
        }
        tracing::info!("whatsapp: settings reloaded");
        Ok(())
    }

    /// The JSON body for one code in template language `language`. The code goes in twice
    /// (body text and URL button).
    fn body(s: &Settings, to: &str, code: &str, language: &str) -> serde_json::Value {
        serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "template": {
                "name": s.template,
                "language": {"code": language},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": code}]},
                    {"type": "button", "sub_type": "url", "index": "0",
                     "parameters": [{"type": "text", "text": code}]}
                ]
            }
        })
    }

    /// One HTTP exchange.
    async fn post(
        &self,
        s: &Settings,
        body: &[u8],
        timeout: Duration,
    ) -> Result<String, Classified> {
        let req = self
            .http
            .post(&s.url)
            .header(AUTHORIZATION, s.bearer.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body.to_vec());
        // reqwest enforces `timeout`; the outer one is only a hang guard.
        let exchange = async {
            let resp = req.send().await.map_err(|e| {
                let (k, d) = transport_failure(&e);
                classify_transport(k, &d)
            })?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(|e| {
                let (k, d) = transport_failure(&e);
                let k = if k == TransportFailure::Connect {
                    TransportFailure::Other
                } else {
                    k
                };
                classify_transport(k, &d)
            })?;
            classify_response(status, &bytes)
        };
        match tokio::time::timeout(timeout + Duration::from_millis(50), exchange).await {
            Ok(r) => r,
            Err(_) => Err(classify_transport(TransportFailure::Timeout, "")),
        }
    }

    /// What can be refused before anything is sent: free text, a code too long for a
    /// template, a number that is not E.164.
    fn precheck(d: &Delivery) -> Result<(&str, &str), Outcome> {
        let Content::Code { code, .. } = &d.content else {
            return Err(fall_back(
                None,
                "free text cannot ride an authentication template",
            ));
        };
        if code.chars().count() > MAX_CODE_LEN {
            return Err(fall_back(
                None,
                &format!("code longer than {MAX_CODE_LEN} characters cannot ride a template"),
            ));
        }
        if code.is_empty() {
            return Err(fall_back(None, "empty code"));
        }
        let Some(to) = crate::phone::digits_of_e164(&d.to) else {
            return Err(fall_back(None, "recipient is not an E.164 number"));
        };
        Ok((code, to))
    }

    /// Asks the circuit whether a send may go ahead; `Ok(true)` for the half-open probe.
    fn admit(&self, d: &Delivery) -> Result<bool, Outcome> {
        match lock(&self.circuit).admit(self.clock.now()) {
            Admission::Go { probe } => Ok(probe),
            Admission::Open { code, reason } => {
                tracing::debug!(message_id = %d.message_id, "whatsapp: circuit open, not sending");
                Err(Outcome::ChannelDown {
                    code,
                    reason: format!("circuit open: {reason}"),
                })
            }
            Admission::Paused { remaining } => Err(Outcome::FallBack {
                code: Some("131057".into()),
                reason: format!(
                    "WhatsApp paused for maintenance (131057), {}s left",
                    remaining.as_secs()
                ),
                not_on_channel: false,
            }),
        }
    }

    /// What a failed request means for this delivery: an outcome now, or one back-off and a
    /// second try while the budget allows.
    async fn after_failure(
        &self,
        c: Classified,
        attempt: u8,
        deadline: Instant,
        guard: &mut ProbeGuard<'_>,
    ) -> Result<Classified, Outcome> {
        match c.class {
            ErrorClass::FallBack { not_on_channel } => {
                // Meta answered about the recipient: the channel itself works.
                guard.armed = false;
                lock(&self.circuit).success();
                Err(Outcome::FallBack {
                    code: c.code,
                    reason: c.reason,
                    not_on_channel,
                })
            }
            ErrorClass::Paused => {
                guard.armed = false;
                let mut circuit = lock(&self.circuit);
                circuit.success();
                circuit.pause(self.clock.now(), PAUSE);
                Err(fall_back(c.code, &c.reason))
            }
            // Handled by `deliver` before it gets here; a fallback if it ever does.
            ErrorClass::LanguageMissing => {
                guard.armed = false;
                Err(fall_back(c.code, &c.reason))
            }
            ErrorClass::ChannelDown => {
                guard.armed = false;
                lock(&self.circuit).open(self.clock.now(), c.code.clone(), c.reason.clone());
                tracing::error!(provider_error = c.code.as_deref().unwrap_or("-"), reason = %c.reason, "whatsapp: circuit opened");
                Err(Outcome::ChannelDown {
                    code: c.code,
                    reason: c.reason,
                })
            }
            // Nothing reached Meta: the next channel gets the code now.
            ErrorClass::Unreachable => {
                self.transport_failure();
                Err(self.give_up(Some(c), guard))
            }
            // It may have reached Meta: one ambiguous send per code, never a second.
            ErrorClass::Ambiguous => {
                self.transport_failure();
                let _ = self.give_up(None, guard);
                Err(Outcome::Unknown { reason: c.reason })
            }
            ErrorClass::RateLimited | ErrorClass::Temporary => {
                let backoff = c.class.backoff();
                if c.class == ErrorClass::RateLimited {
                    // Everyone slows down, not only this message.
                    lock(&self.limiter).penalize(Instant::now(), backoff);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if attempt == 0 && left >= backoff + MIN_ATTEMPT {
                    tokio::time::sleep(backoff).await;
                    Ok(c)
                } else {
                    // No time for a back-off and a useful second try: hand back now.
                    Err(self.give_up(Some(c), guard))
                }
            }
        }
    }

    /// Counts a connection failure or a timeout toward opening the circuit.
    fn transport_failure(&self) {
        if lock(&self.circuit).transport_failure(self.clock.now()) {
            tracing::error!(
                "whatsapp: circuit opened: the Cloud API cannot be reached; codes go by SMS until a probe gets through"
            );
        }
    }

    /// The outcome once this delivery stops trying: a failed probe re-opens the circuit.
    fn give_up(&self, last: Option<Classified>, guard: &mut ProbeGuard<'_>) -> Outcome {
        if guard.armed {
            guard.armed = false;
            lock(&self.circuit).failure(self.clock.now(), true);
        }
        match last {
            Some(c) => retry(c),
            None => Outcome::Retry {
                after: Duration::from_secs(1),
                code: None,
                reason: "no time left in the budget".into(),
            },
        }
    }

    /// Announces the request's departure; when it is refused, nothing is sent and the answer
    /// is transient.
    async fn depart(d: &Delivery, last: &mut Option<Classified>) -> Result<(), Outcome> {
        let Err(e) = d.departure.depart().await else {
            return Ok(());
        };
        tracing::warn!(message_id = %d.message_id, reason = %e, "whatsapp: not sent: departure refused");
        Err(match last.take() {
            Some(c) => retry(c),
            None => Outcome::Retry {
                after: Duration::from_secs(1),
                code: None,
                reason: format!("not sent: {e}"),
            },
        })
    }

    /// Waits for a slot under the global rate cap, or hands back why not.
    async fn reserve(&self, deadline: Instant, last: &Option<Classified>) -> Result<(), Outcome> {
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        let reserved = lock(&self.limiter).reserve(now, remaining.saturating_sub(MIN_ATTEMPT));
        match reserved {
            Ok(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Ok(_) => {}
            Err(needed) => {
                // The probe (if any) never left: the guard hands it to the next message.
                return Err(match last {
                    Some(c) => retry(c.clone()),
                    None => Outcome::Retry {
                        after: needed,
                        code: None,
                        reason: "global WhatsApp rate cap reached".into(),
                    },
                });
            }
        }
        Ok(())
    }

    /// The template language for this code: the locale's, else the default when the locale's
    /// is missing at Meta, else none (SMS).
    fn pick_language(&self, s: &Settings, locale: Option<&str>) -> Result<String, Outcome> {
        let wanted = s.language(locale);
        let now = self.clock.now();
        let mut langs = lock(&self.languages);
        if langs.usable(wanted, now) {
            return Ok(wanted.to_string());
        }
        if langs.usable(&s.default_language, now) {
            return Ok(s.default_language.clone());
        }
        Err(fall_back(
            Some("132001".into()),
            &format!(
                "template \"{}\" is missing or not approved in {wanted} (132001)",
                s.template
            ),
        ))
    }

    /// Meta says the template is missing in `language` (132001): only that language is
    /// broken. Remembers it, keeps the circuit closed, and names the language to try next
    /// (the default), or hands the code to the next channel.
    fn language_missing(
        &self,
        s: &Settings,
        language: &str,
        c: Classified,
        retry_allowed: bool,
    ) -> Result<String, Outcome> {
        let now = self.clock.now();
        let mut langs = lock(&self.languages);
        langs.mark(language, now, LANGUAGE_QUARANTINE);
        tracing::warn!(
            template = %s.template,
            language,
            minutes = LANGUAGE_QUARANTINE.as_secs() / 60,
            "whatsapp: template missing or not approved in this language (132001); its codes go in the default language or by SMS meanwhile, the circuit stays closed"
        );
        if retry_allowed && language != s.default_language && langs.usable(&s.default_language, now)
        {
            return Ok(s.default_language.clone());
        }
        Err(Outcome::FallBack {
            code: c.code,
            reason: c.reason,
            not_on_channel: false,
        })
    }

    async fn deliver(&self, d: &Delivery) -> Outcome {
        let deadline = Instant::now() + d.budget;
        let (code, to) = match Self::precheck(d) {
            Ok(parts) => parts,
            Err(o) => return o,
        };
        let s = self.settings();
        let mut language = match self.pick_language(&s, d.locale.as_deref()) {
            Ok(l) => l,
            Err(o) => return o,
        };
        let mut guard = match self.admit(d) {
            Ok(probe) => ProbeGuard {
                circuit: &self.circuit,
                armed: probe,
            },
            Err(o) => return o,
        };
        let mut last: Option<Classified> = None;
        for attempt in 0..2u8 {
            let Ok(body) = serde_json::to_vec(&Self::body(&s, to, code, &language)) else {
                return fall_back(None, "cannot encode the request");
            };
            if let Err(o) = self.reserve(deadline, &last).await {
                return o;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_ATTEMPT && attempt > 0 {
                break;
            }
            let timeout = s.timeout.min(remaining).max(Duration::from_millis(1));
            // The rate cap and the circuit let it go: only now is the attempt recorded as one
            // that may reach WhatsApp. A second try finds it recorded already.
            if let Err(o) = Self::depart(d, &mut last).await {
                return o;
            }
            let t0 = Instant::now();
            let result = self.post(&s, &body, timeout).await;
            let ms = t0.elapsed().as_millis() as u64;
            let c = match result {
                Ok(wamid) => {
                    guard.armed = false;
                    lock(&self.circuit).success();
                    tracing::info!(message_id = %d.message_id, %wamid, attempt, ms, "whatsapp: accepted");
                    return Outcome::Accepted { provider_id: wamid };
                }
                Err(c) => c,
            };
            tracing::warn!(
                message_id = %d.message_id,
                provider_error = c.code.as_deref().unwrap_or("-"),
                status = c.status.unwrap_or(0),
                attempt,
                ms,
                reason = %c.reason,
                "whatsapp: send failed"
            );
            if c.class == ErrorClass::LanguageMissing {
                // Meta answered about the template, so the channel itself works.
                guard.armed = false;
                lock(&self.circuit).success();
                match self.language_missing(&s, &language, c, attempt == 0) {
                    Ok(next) => language = next,
                    Err(o) => return o,
                }
                continue;
            }
            match self.after_failure(c, attempt, deadline, &mut guard).await {
                Ok(c) => last = Some(c),
                Err(o) => return o,
            }
            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT {
                break;
            }
        }
        self.give_up(last, &mut guard)
    }

    /// Answers Meta's webhook subscription handshake (GET query string).
    pub fn webhook_handshake(&self, query: &str) -> Result<String, WebhookError> {
        let s = self.settings();
        let token = s.verify_token.as_ref().ok_or(WebhookError::Disabled)?;
        webhook::handshake(query, token)
    }

    /// Checks a webhook POST's signature, forwards its statuses as receipts and returns
    /// everything found (receipts and fraud signals) for the caller to record.
    pub fn handle_webhook(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<WebhookEvents, WebhookError> {
        let s = self.settings();
        let secret = s.app_secret.as_ref().ok_or(WebhookError::Disabled)?;
        webhook::verify_signature(body, signature, secret)?;
        let events = webhook::parse_events(body, self.clock.now())?;
        // A 200 is final for Meta: a receipt dropped after it would leave the delivery
        // deadline to guess (an SMS nobody needed, or a late one). So a POST whose receipts do
        // not all fit is refused with 503 and comes again; any already queued from it are
        // applied twice, which a replayed receipt never changes.
        if self.receipts.capacity() < events.receipts.len() {
            return Err(WebhookError::Busy);
        }
        for r in &events.receipts {
            if self.receipts.try_send(r.clone()).is_err() {
                return Err(WebhookError::Busy);
            }
        }
        Ok(events)
    }
}

fn fall_back(code: Option<String>, reason: &str) -> Outcome {
    Outcome::FallBack {
        code,
        reason: reason.to_string(),
        not_on_channel: false,
    }
}

fn retry(c: Classified) -> Outcome {
    Outcome::Retry {
        after: c.class.backoff().max(Duration::from_secs(1)),
        code: c.code,
        reason: c.reason,
    }
}

impl WhatsAppChannel {
    /// With `whatsapp.business_account_id` set, reads the template back in the background
    /// and checks it like `otpgate whatsapp check`: every problem is logged at warn and
    /// shown in the channel's health (and so in /readyz) until the next check. Codes are
    /// sent meanwhile as usual: a problem is a warning, not a refusal.
    pub fn start_template_check(&self, cfg: &crate::config::Config) {
        let ttls = (cfg.otp.default_ttl, cfg.otp.max_ttl);
        *lock(&self.check_ttls) = Some(ttls);
        self.spawn_template_check(&cfg.whatsapp, ttls);
    }

    fn spawn_template_check(
        &self,
        wa: &WhatsAppConfig,
        (default_ttl, max_ttl): (Duration, Duration),
    ) {
        // The last verdict stands until the new one is in, unless there is nothing to check.
        let rt = match tokio::runtime::Handle::try_current() {
            Ok(rt) if wa.business_account_id.is_some() => rt,
            _ => {
                lock(&self.template_problems).clear();
                return;
            }
        };
        let expect = super::templates::Expectations::new(wa, default_ttl, max_ttl);
        let (http, wa, out) = (
            self.http.clone(),
            wa.clone(),
            Arc::clone(&self.template_problems),
        );
        rt.spawn(async move {
            let problems = super::templates::problems(&http, &wa, &expect).await;
            *lock(&out) = problems;
        });
    }

    /// What the last template check found wrong, one line each (empty: nothing, or none ran).
    pub fn template_problems(&self) -> Vec<String> {
        lock(&self.template_problems).clone()
    }

    /// "ok", or which template languages are out and where their codes go instead, and what
    /// the template check found.
    fn languages_summary(&self) -> String {
        let problems = self.template_problems();
        let mut summary = self.missing_languages();
        if !problems.is_empty() {
            summary = format!("{summary}; template check: {}", problems.join("; "));
        }
        summary
    }

    fn missing_languages(&self) -> String {
        let missing = lock(&self.languages).unusable(self.clock.now());
        if missing.is_empty() {
            return "ok".to_string();
        }
        let s = self.settings();
        format!(
            "ok, but template \"{}\" is missing or not approved in {} (132001): those codes go in {} or by SMS",
            s.template,
            missing.join(", "),
            s.default_language
        )
    }
}

impl Channel for WhatsAppChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::WhatsApp
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            // Hard stop at budget + grace, whatever happens inside (the probe guard cleans up).
            let grace = Duration::from_millis(200);
            match tokio::time::timeout(delivery.budget + grace, self.deliver(delivery)).await {
                Ok(o) => o,
                Err(_) => Outcome::Retry {
                    after: Duration::from_secs(1),
                    code: None,
                    reason: "WhatsApp attempt ran out of budget (ambiguous: the message may still arrive)"
                        .into(),
                },
            }
        })
    }

    fn health(&self) -> Health {
        let status = lock(&self.circuit).status(self.clock.now());
        let (usable, summary) = match status {
            CircuitStatus::Closed => (true, self.languages_summary()),
            CircuitStatus::Open { reason } => (false, format!("circuit open: {reason}")),
            // Usable so the dispatcher offers the one probe message that can close it.
            CircuitStatus::HalfOpen { reason } => (
                true,
                format!("circuit half-open, next message probes: {reason}"),
            ),
            // Paused is brief, but the channel cannot take a message right now either.
            CircuitStatus::Paused { remaining } => (
                false,
                format!(
                    "paused: business account maintenance (131057), {}s left",
                    remaining.as_secs()
                ),
            ),
        };
        Health {
            usable,
            summary,
            parts: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    pub(crate) fn cfg() -> WhatsAppConfig {
        WhatsAppConfig {
            enabled: true,
            api_base: "https://127.0.0.1:9/v24.0/".into(),
            phone_number_id: "1055".into(),
            token: Some(Secret::new("EAAG-very-secret")),
            token_path: None,
            template: "otp_auth".into(),
            languages: [
                ("hi".to_string(), "hi".to_string()),
                ("en".to_string(), "en_GB".to_string()),
            ]
            .into_iter()
            .collect(),
            default_language: "en_US".into(),
            timeout: Duration::from_secs(2),
            proxy: Some("http://user:pw@127.0.0.1:3128".into()),
            ca_file: None,
            max_rate: 80,
            circuit_cooldown: Duration::from_secs(60),
            app_secret: None,
            verify_token: None,
            business_account_id: None,
            app_id: None,
        }
    }

    #[test]
    fn languages_and_url() {
        let s = Settings::from_config(&cfg()).unwrap();
        assert_eq!(s.url, "https://127.0.0.1:9/v24.0/1055/messages");
        assert_eq!(s.language(None), "en_US");
        assert_eq!(s.language(Some("hi")), "hi");
        assert_eq!(s.language(Some("en-GB")), "en_GB");
        assert_eq!(s.language(Some("id")), "en_US");
        assert!(s.bearer.is_sensitive());
    }

    #[test]
    fn debug_and_errors_hide_secrets() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let ch = WhatsAppChannel::new(&cfg(), tx).unwrap();
        let dbg = format!("{ch:?}");
        assert!(!dbg.contains("EAAG"), "{dbg}");
        assert!(!dbg.contains(":pw@"), "{dbg}");
        let mut bad = cfg();
        bad.token = Some(Secret::new("EAAG\nsecret"));
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let e = WhatsAppChannel::new(&bad, tx).unwrap_err().to_string();
        assert!(!e.contains("EAAG"), "{e}");
        let mut bad = cfg();
        bad.proxy = Some("http://user:pw@[bad".into());
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let e = WhatsAppChannel::new(&bad, tx).unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn rate_limiter_bursts_then_spaces() {
        let mut l = RateLimiter::new(2);
        let t = Instant::now();
        assert_eq!(l.reserve(t, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(l.reserve(t, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(
            l.reserve(t, Duration::ZERO),
            Err(Duration::from_millis(500))
        );
        assert_eq!(
            l.reserve(t, Duration::from_secs(1)),
            Ok(Duration::from_millis(500))
        );
        let t2 = t + Duration::from_secs(10);
        l.penalize(t2, Duration::from_secs(1));
        assert_eq!(l.reserve(t2, Duration::ZERO), Err(Duration::from_secs(1)));
        let mut free = RateLimiter::new(0);
        for _ in 0..1000 {
            assert_eq!(free.reserve(t, Duration::ZERO), Ok(Duration::ZERO));
        }
    }
}
