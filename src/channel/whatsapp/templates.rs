//! Template preflight: reads the authentication template back from Meta
//! (`GET /<version>/<waba_id>/message_templates?name=...`) and checks, for every language the
//! gateway may ask for, what a code needs: approved, category AUTHENTICATION, a copy-code
//! button, a `message_send_ttl_seconds` no longer than `otp.max_ttl` (without one Meta keeps
//! trying for 10 minutes, or 30 days for older templates, so a code could arrive after it
//! expired) and a `code_expiration_minutes` that does not promise more than a code lives.
//!
//! [`parse_listing`] and [`check`] are pure and work on bytes; [`fetch`] is the one request.
//! `otpgate whatsapp check` prints the [`Report`]; the daemon runs the same at start and
//! shows the problems in its WhatsApp health.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use super::errors::parse_error_body;
use crate::config::{Config, WhatsAppConfig};

/// Why the template could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The check needs the account id.
    #[error(
        "whatsapp.business_account_id is not set (the WhatsApp Business Account id, digits, from Meta's app dashboard)"
    )]
    NoAccount,
    /// No token.
    #[error("whatsapp: no access token (set token_file or the whatsapp-token credential)")]
    NoToken,
    /// The HTTP client could not be built.
    #[error("{0}")]
    Client(String),
    /// Meta could not be reached.
    #[error("cannot read the template from the Cloud API: {0}")]
    Transport(String),
    /// Meta answered with an error.
    #[error("the Cloud API refused to read the template: HTTP {status}{}", code.map(|c| format!(", error {c}")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: u16,
        /// Meta's `error.code`.
        code: Option<i64>,
    },
    /// The answer was not the JSON Meta sends.
    #[error("the Cloud API's answer is not a template listing: {0}")]
    BadBody(String),
}

/// One language of a template, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateInfo {
    /// Template name.
    pub name: String,
    /// Language code.
    pub language: String,
    /// `APPROVED`, `PENDING`, `REJECTED`, `PAUSED`, `DISABLED`...
    pub status: String,
    /// `AUTHENTICATION`, `UTILITY`, `MARKETING`.
    pub category: String,
    /// The OTP button's type (`COPY_CODE`, `ONE_TAP`, `ZERO_TAP`), if it has one.
    pub otp_type: Option<String>,
    /// `message_send_ttl_seconds`.
    pub ttl_seconds: Option<u64>,
    /// The footer's `code_expiration_minutes`.
    pub code_expiration_minutes: Option<u64>,
}

#[derive(Deserialize)]
struct Listing {
    #[serde(default)]
    data: Vec<RawTemplate>,
}

#[derive(Deserialize)]
struct RawTemplate {
    #[serde(default)]
    name: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    message_send_ttl_seconds: Option<u64>,
    #[serde(default)]
    components: Vec<RawComponent>,
}

#[derive(Deserialize)]
struct RawComponent {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    code_expiration_minutes: Option<u64>,
    #[serde(default)]
    buttons: Vec<RawButton>,
}

#[derive(Deserialize)]
struct RawButton {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    otp_type: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// The OTP type of a button: created as `OTP` with `otp_type`, read back by Meta as a `URL`
/// button whose URL carries `otp_type=...`.
fn otp_type(b: &RawButton) -> Option<String> {
    if b.kind.eq_ignore_ascii_case("otp") {
        return b.otp_type.as_ref().map(|t| t.to_ascii_uppercase());
    }
    let url = b.url.as_deref()?;
    let (_, rest) = url.split_once("otp_type=")?;
    let t: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!t.is_empty()).then(|| t.to_ascii_uppercase())
}

/// Parses Meta's `message_templates` answer.
pub fn parse_listing(body: &[u8]) -> Result<Vec<TemplateInfo>, TemplateError> {
    let l: Listing = serde_json::from_slice(body).map_err(|e| {
        // Position only: the message could quote the body.
        TemplateError::BadBody(format!(
            "JSON error at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    Ok(l.data
        .into_iter()
        .map(|t| {
            let buttons = t.components.iter().flat_map(|c| c.buttons.iter());
            let otp = buttons.filter_map(otp_type).next();
            let minutes = t
                .components
                .iter()
                .find(|c| c.kind.eq_ignore_ascii_case("footer"))
                .and_then(|c| c.code_expiration_minutes);
            TemplateInfo {
                name: t.name,
                language: t.language,
                status: t.status.to_ascii_uppercase(),
                category: t.category.to_ascii_uppercase(),
                otp_type: otp,
                ttl_seconds: t.message_send_ttl_seconds,
                code_expiration_minutes: minutes,
            }
        })
        .collect())
}

/// What the configuration needs of the template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectations {
    /// `whatsapp.template`.
    pub template: String,
    /// Every language the gateway may ask for: the default first, then the mapped ones.
    pub languages: Vec<String>,
    /// `otp.default_ttl`: what a code lives when the caller says nothing.
    pub default_ttl: Duration,
    /// `otp.max_ttl`: the longest a code may live.
    pub max_ttl: Duration,
}

impl Expectations {
    /// From the configuration.
    pub fn of(cfg: &Config) -> Expectations {
        Expectations::new(&cfg.whatsapp, cfg.otp.default_ttl, cfg.otp.max_ttl)
    }

    /// From the WhatsApp section and the code lifetimes.
    pub fn new(wa: &WhatsAppConfig, default_ttl: Duration, max_ttl: Duration) -> Expectations {
        let mut languages = vec![wa.default_language.clone()];
        for l in wa.languages.values() {
            if !languages.contains(l) {
                languages.push(l.clone());
            }
        }
        Expectations {
            template: wa.template.clone(),
            languages,
            default_ttl,
            max_ttl,
        }
    }
}

/// The verdict for one language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanguageReport {
    /// The language.
    pub language: String,
    /// What is wrong, one line each; empty when it is fit for codes.
    pub problems: Vec<String>,
    /// What was found, for the "ok" line.
    pub found: Option<String>,
}

/// The verdict for every configured language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The template checked.
    pub template: String,
    /// Per language, in [`Expectations::languages`] order.
    pub languages: Vec<LanguageReport>,
}

impl Report {
    /// Every problem as one line, prefixed with its language.
    pub fn problems(&self) -> Vec<String> {
        self.languages
            .iter()
            .flat_map(|l| {
                l.problems
                    .iter()
                    .map(move |p| format!("{}: {p}", l.language))
            })
            .collect()
    }

    /// The report as `otpgate whatsapp check` prints it.
    pub fn render(&self) -> String {
        let mut out = format!("template \"{}\":\n", self.template);
        for l in &self.languages {
            if l.problems.is_empty() {
                let found = l.found.as_deref().unwrap_or_default();
                out.push_str(&format!("  {}: ok ({found})\n", l.language));
            }
            for p in &l.problems {
                out.push_str(&format!("  {}: MISMATCH: {p}\n", l.language));
            }
        }
        out
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// Checks one language's entry.
fn check_one(t: &TemplateInfo, e: &Expectations) -> Vec<String> {
    let mut p = Vec::new();
    if t.status != "APPROVED" {
        p.push(format!(
            "status is {}, not APPROVED: Meta refuses sends in this language (132001)",
            t.status
        ));
    }
    if t.category != "AUTHENTICATION" {
        p.push(format!(
            "category is {}, not AUTHENTICATION: codes must ride an authentication template",
            t.category
        ));
    }
    match t.otp_type.as_deref() {
        Some("COPY_CODE") => {}
        Some(other) => p.push(format!(
            "the OTP button is {other}, not a copy-code button (one-tap and zero-tap need an Android app handshake; sign-ins on a PC cannot use them)"
        )),
        None => p.push("no copy-code (OTP) button".to_string()),
    }
    let max = secs(e.max_ttl);
    match t.ttl_seconds {
        None => p.push(format!(
            "message_send_ttl_seconds is not set: Meta keeps trying to deliver for 10 minutes (30 days for templates created before October 2024), so a code could arrive after it expired; set it to at most {max}s (otp.max_ttl)"
        )),
        Some(ttl) if ttl > max => p.push(format!(
            "message_send_ttl_seconds is {ttl}s, longer than otp.max_ttl ({max}s): a code could arrive after it expired"
        )),
        Some(_) => {}
    }
    if let Some(m) = t.code_expiration_minutes {
        let promised = m.saturating_mul(60);
        let default = secs(e.default_ttl);
        if promised > default {
            p.push(format!(
                "code_expiration_minutes is {m}: the message says the code expires in {m} minutes, but a code lives {default}s by default (otp.default_ttl)"
            ));
        }
        if let Some(ttl) = t.ttl_seconds
            && ttl > promised
        {
            p.push(format!(
                "message_send_ttl_seconds ({ttl}s) is longer than the {m} minutes the message promises: it could arrive after the time it states"
            ));
        }
    }
    p
}

/// Checks the listing against what the configuration needs (pure).
pub fn check(listing: &[TemplateInfo], e: &Expectations) -> Report {
    let languages = e
        .languages
        .iter()
        .map(|lang| {
            let found = listing
                .iter()
                .find(|t| t.name == e.template && &t.language == lang);
            match found {
                None => LanguageReport {
                    language: lang.clone(),
                    problems: vec![format!(
                        "the template does not exist in {lang}: Meta refuses these sends (132001)"
                    )],
                    found: None,
                },
                Some(t) => LanguageReport {
                    language: lang.clone(),
                    problems: check_one(t, e),
                    found: Some(format!(
                        "{}, {}, copy code, TTL {}s{}",
                        t.status,
                        t.category,
                        t.ttl_seconds.unwrap_or_default(),
                        t.code_expiration_minutes
                            .map(|m| format!(", expires in {m} min"))
                            .unwrap_or_default()
                    )),
                },
            }
        })
        .collect();
    Report {
        template: e.template.clone(),
        languages,
    }
}

/// Reads the template's languages from Meta with `http` (the channel's client or one built
/// like it: proxy, trust anchors).
pub async fn fetch(
    http: &reqwest::Client,
    cfg: &WhatsAppConfig,
) -> Result<Vec<TemplateInfo>, TemplateError> {
    let waba = cfg
        .business_account_id
        .as_deref()
        .ok_or(TemplateError::NoAccount)?;
    let token = cfg.token.as_ref().ok_or(TemplateError::NoToken)?;
    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| TemplateError::NoToken)?;
    bearer.set_sensitive(true);
    let url = format!(
        "{}/{waba}/message_templates",
        cfg.api_base.trim_end_matches('/')
    );
    let resp = http
        .get(url)
        .header(AUTHORIZATION, bearer)
        .query(&[
            ("name", cfg.template.as_str()),
            (
                "fields",
                "name,language,status,category,components,message_send_ttl_seconds",
            ),
            ("limit", "100"),
        ])
        .timeout(cfg.timeout.max(Duration::from_secs(5)))
        .send()
        .await
        // Without the URL: it could carry the token in a proxy's userinfo.
        .map_err(|e| TemplateError::Transport(e.without_url().to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| TemplateError::Transport(e.without_url().to_string()))?;
    if !(200..300).contains(&status) {
        let code = parse_error_body(&body).and_then(|e| e.code);
        return Err(TemplateError::Refused { status, code });
    }
    parse_listing(&body)
}

/// The check the daemon runs at start: every problem (or why the template could not be
/// read) as one line, each logged at warn.
pub async fn problems(
    http: &reqwest::Client,
    cfg: &WhatsAppConfig,
    expect: &Expectations,
) -> Vec<String> {
    let problems = match fetch(http, cfg).await {
        Ok(listing) => check(&listing, expect).problems(),
        Err(e) => vec![e.to_string()],
    };
    for p in &problems {
        tracing::warn!(template = %expect.template, problem = %p, "whatsapp: template check");
    }
    if problems.is_empty() {
        tracing::info!(template = %expect.template, languages = ?expect.languages, "whatsapp: template check passed");
    }
    problems
}

/// `otpgate whatsapp check`: reads the template with a client built from the configuration
/// and checks it.
pub async fn check_config(cfg: &Config) -> Result<Report, TemplateError> {
    if cfg.whatsapp.business_account_id.is_none() {
        return Err(TemplateError::NoAccount);
    }
    let http = super::client::build_http(&cfg.whatsapp)
        .map_err(|e| TemplateError::Client(e.to_string()))?;
    let listing = fetch(&http, &cfg.whatsapp).await?;
    Ok(check(&listing, &Expectations::of(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template read back as Meta shows it (the copy-code button as a URL button).
    const GOOD: &str = r#"{"data":[
      {"name":"otp_auth","language":"en_US","status":"APPROVED","category":"AUTHENTICATION",
       "message_send_ttl_seconds":300,"id":"1",
       "components":[
         {"type":"BODY","text":"*{{1}}* is your verification code.","add_security_recommendation":true},
         {"type":"FOOTER","text":"This code expires in 5 minutes.","code_expiration_minutes":5},
         {"type":"BUTTONS","buttons":[{"type":"URL","text":"Copy code",
           "url":"https://www.whatsapp.com/otp/code/?otp_type=COPY_CODE&code=otp{{1}}"}]}]},
      {"name":"otp_auth","language":"hi","status":"PENDING","category":"AUTHENTICATION","id":"2",
       "components":[{"type":"BUTTONS","buttons":[{"type":"OTP","otp_type":"copy_code","text":"Copy"}]}]},
      {"name":"otp_auth_old","language":"en_US","status":"APPROVED","category":"UTILITY","components":[]}
    ],"paging":{"cursors":{"before":"a","after":"b"}}}"#;

    fn exp(langs: &[&str]) -> Expectations {
        Expectations {
            template: "otp_auth".into(),
            languages: langs.iter().map(|l| l.to_string()).collect(),
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(900),
        }
    }

    #[test]
    fn parses_both_button_shapes_and_the_footer() {
        let l = parse_listing(GOOD.as_bytes()).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].otp_type.as_deref(), Some("COPY_CODE"));
        assert_eq!(l[0].ttl_seconds, Some(300));
        assert_eq!(l[0].code_expiration_minutes, Some(5));
        assert_eq!(l[1].otp_type.as_deref(), Some("COPY_CODE"));
        assert_eq!(l[1].ttl_seconds, None);
        assert_eq!(l[2].otp_type, None);
    }

    #[test]
    fn a_good_language_passes_and_every_mismatch_is_one_line() {
        let l = parse_listing(GOOD.as_bytes()).unwrap();
        let r = check(&l, &exp(&["en_US", "hi", "id"]));
        assert!(r.languages[0].problems.is_empty(), "{r:?}");
        let p = r.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].starts_with("hi: status is PENDING, not APPROVED"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("hi: message_send_ttl_seconds is not set"),
            "{p:?}"
        );
        assert!(
            p[2].starts_with("id: the template does not exist in id"),
            "{p:?}"
        );
        let text = r.render();
        assert!(
            text.contains(
                "  en_US: ok (APPROVED, AUTHENTICATION, copy code, TTL 300s, expires in 5 min)"
            ),
            "{text}"
        );
        assert!(text.contains("  hi: MISMATCH: status is PENDING"), "{text}");
    }

    #[test]
    fn ttl_category_button_and_expiry_bounds() {
        let base = TemplateInfo {
            name: "otp_auth".into(),
            language: "en_US".into(),
            status: "APPROVED".into(),
            category: "AUTHENTICATION".into(),
            otp_type: Some("COPY_CODE".into()),
            ttl_seconds: Some(300),
            code_expiration_minutes: Some(5),
        };
        let e = exp(&["en_US"]);
        assert!(check_one(&base, &e).is_empty());
        let with = |f: &dyn Fn(&mut TemplateInfo)| {
            let mut t = base.clone();
            f(&mut t);
            check_one(&t, &e)
        };
        let p = with(&|t| t.ttl_seconds = Some(901));
        assert!(
            p.iter()
                .any(|x| x.contains("longer than otp.max_ttl (900s)")),
            "{p:?}"
        );
        assert!(
            with(&|t| t.ttl_seconds = Some(900))
                .iter()
                .any(|x| x.contains("longer than the 5 minutes"))
        );
        let p = with(&|t| t.code_expiration_minutes = Some(10));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("a code lives 300s by default"), "{p:?}");
        assert!(with(&|t| t.code_expiration_minutes = None).is_empty());
        let p = with(&|t| t.category = "MARKETING".into());
        assert!(p[0].contains("not AUTHENTICATION"), "{p:?}");
        let p = with(&|t| t.otp_type = Some("ONE_TAP".into()));
        assert!(p[0].contains("ONE_TAP, not a copy-code button"), "{p:?}");
        let p = with(&|t| t.otp_type = None);
        assert_eq!(p, ["no copy-code (OTP) button"]);
    }

    #[test]
    fn bodies_that_are_not_a_listing() {
        for bad in [
            &b"<html>"[..],
            b"",
            br#"{"data":"x"}"#,
            br#"{"data":[{"components":"secret-123"}]}"#,
        ] {
            let e = parse_listing(bad).unwrap_err();
            assert!(!e.to_string().contains("secret-123"), "{e}");
        }
        assert_eq!(parse_listing(b"{}").unwrap(), vec![]);
        // Unknown fields and missing ones are fine.
        let l = parse_listing(br#"{"data":[{"name":"x","extra":1}]}"#).unwrap();
        assert_eq!(l[0].status, "");
    }
}
