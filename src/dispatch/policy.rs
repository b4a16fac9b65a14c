//! The routing policy: a pure function from a message, its client, what we know of the
//! recipient, the message's earlier attempts, channel health and "now" to a [`Decision`].
//! The worker carries decisions out; nothing here does I/O or reads a clock.

use std::time::Duration;

use crate::channel::ChannelKind;
use crate::clock::Timestamp;
use crate::config::{ClientConfig, Config};
use crate::domain::{Attempt, AttemptEnd, AttemptPurpose, ReceiptKind, RecipientInfo};

/// Longest single SMS attempt; the pool moves between modems inside it.
pub const SMS_ATTEMPT_CAP: Duration = Duration::from_secs(180);
/// How long to wait before looking again when every allowed channel is down.
pub const CHANNEL_DOWN_RETRY: Duration = Duration::from_secs(5);

/// What the message is, as far as routing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A code: may ride a WhatsApp authentication template.
    Code,
    /// Free text: SMS only.
    Text,
}

/// Why a message is refused at the front door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: &'static str,
    /// Explanation for the caller.
    pub message: String,
}

/// Channels a message to `country` from `client` may use, in order, with the reason for each
/// channel left out. Pure configuration; health and history come later.
pub fn allowed_channels(
    cfg: &Config,
    client: &ClientConfig,
    country: Option<&str>,
    kind: Kind,
    configured: &[ChannelKind],
) -> (Vec<ChannelKind>, Vec<(ChannelKind, String)>) {
    let order = client.order.as_ref().unwrap_or(&cfg.policy.order);
    let in_list =
        |list: &[String]| list.is_empty() || country.is_some_and(|c| list.iter().any(|x| x == c));
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for &ch in order {
        let why_not = match ch {
            ChannelKind::WhatsApp => {
                if !cfg.whatsapp.enabled {
                    Some("whatsapp is disabled globally".to_string())
                } else if !client.whatsapp {
                    Some(format!("whatsapp is disabled for client {}", client.name))
                } else if !in_list(&cfg.policy.whatsapp_countries) {
                    Some(format!(
                        "whatsapp is not rolled out to {}",
                        country.unwrap_or("this country")
                    ))
                } else if kind == Kind::Text {
                    Some("free text without a recognisable code cannot ride a WhatsApp authentication template".into())
                } else {
                    None
                }
            }
            ChannelKind::Sms => {
                if !in_list(&cfg.policy.sms_countries) {
                    Some(format!(
                        "sms to {} is not allowed",
                        country.unwrap_or("this country")
                    ))
                } else {
                    None
                }
            }
        };
        let why_not = why_not.or_else(|| {
            (!configured.contains(&ch)).then(|| format!("no {ch} channel is configured"))
        });
        match why_not {
            None => ok.push(ch),
            Some(w) => skipped.push((ch, w)),
        }
    }
    (ok, skipped)
}

/// The front-door check: refuse what no channel may ever carry.
pub fn admit(
    cfg: &Config,
    client: &ClientConfig,
    country: Option<&str>,
    kind: Kind,
    configured: &[ChannelKind],
    only_channel: Option<ChannelKind>,
) -> Result<(), Refusal> {
    if let Some(list) = &client.countries
        && !country.is_some_and(|c| list.iter().any(|x| x == c))
    {
        return Err(Refusal {
            code: "country_not_allowed",
            message: format!(
                "client {} may not send to {}",
                client.name,
                country.unwrap_or("this number's country")
            ),
        });
    }
    let (mut ok, mut skipped) = allowed_channels(cfg, client, country, kind, configured);
    if let Some(only) = only_channel
        && !ok.contains(&only)
    {
        skipped.push((only, format!("{only} may not carry it")));
        ok.clear();
    }
    if ok.is_empty() {
        let reasons: Vec<String> = skipped.into_iter().map(|(_, w)| w).collect();
        return Err(Refusal {
            code: "country_not_allowed",
            message: format!("no channel may carry this message: {}", reasons.join("; ")),
        });
    }
    Ok(())
}

/// One channel attempt the worker should make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The channel.
    pub channel: ChannelKind,
    /// The time it gets, retries inside the channel included.
    pub budget: Duration,
}

/// What to do with a claimed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try these channels in order (the worker moves on per the outcome classes).
    Send {
        /// Attempts, in order.
        steps: Vec<Step>,
        /// Channels passed over and why; recorded in the attempt history.
        skipped: Vec<(ChannelKind, String)>,
        /// Send the one-time SMS pre-notice before the first WhatsApp code.
        prenotice: bool,
    },
    /// Its lifetime is over.
    Expire,
    /// A provider already took it before a restart: do not send again.
    AlreadySent(ChannelKind),
    /// No allowed channel is usable now; look again at `retry_at` (still within the lifetime).
    Wait {
        /// When to look again.
        retry_at: Timestamp,
        /// Why.
        reason: String,
    },
    /// No channel may carry it any more (all excluded by history or config).
    Fail(String),
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Configuration in force.
    pub cfg: &'a Config,
    /// The message's client.
    pub client: &'a ClientConfig,
    /// Recipient's country.
    pub country: Option<&'a str>,
    /// Code or text.
    pub kind: Kind,
    /// End of the lifetime.
    pub expires_at: Timestamp,
    /// What the store knows of the recipient.
    pub recipient: &'a RecipientInfo,
    /// This message's earlier attempts (after a restart, a failure receipt, a retry).
    pub attempts: &'a [Attempt],
    /// Usable right now, per configured channel.
    pub health: &'a [(ChannelKind, bool)],
    /// The caller restricted delivery to this channel.
    pub only_channel: Option<ChannelKind>,
    /// Now.
    pub now: Timestamp,
}

/// Decides what to do with a message now.
pub fn decide(i: Input<'_>) -> Decision {
    if i.now >= i.expires_at {
        return Decision::Expire;
    }
    let remaining = i.now.until(i.expires_at);
    let code_attempts = || {
        i.attempts
            .iter()
            .filter(|a| a.purpose == AttemptPurpose::Code)
    };
    // A provider took it and no failure receipt followed: it is out, whatever we lost in a crash.
    if let Some(a) = code_attempts()
        .find(|a| a.end == Some(AttemptEnd::Accepted) && a.receipt != Some(ReceiptKind::Failed))
    {
        return Decision::AlreadySent(a.channel);
    }
    let configured: Vec<ChannelKind> = i.health.iter().map(|(c, _)| *c).collect();
    let (mut allowed, mut skipped) =
        allowed_channels(i.cfg, i.client, i.country, i.kind, &configured);
    if let Some(only) = i.only_channel {
        for ch in allowed.iter().filter(|c| **c != only) {
            skipped.push((*ch, format!("the caller asked for {only} only")));
        }
        allowed.retain(|c| *c == only);
    }
    let mut candidates = Vec::new();
    for ch in allowed {
        let history = code_attempts().filter(|a| a.channel == ch);
        let mut excluded = None;
        for a in history {
            excluded = match (a.end, a.receipt) {
                (_, Some(ReceiptKind::Failed)) => {
                    Some(format!("{ch} reported the earlier send as failed"))
                }
                (Some(AttemptEnd::Interrupted) | Some(AttemptEnd::Unknown), _) => Some(format!(
                    "an earlier {ch} attempt may have been delivered; not repeated"
                )),
                (Some(AttemptEnd::FallBack), _) => {
                    Some(format!("{ch} cannot reach this recipient"))
                }
                _ => excluded,
            };
        }
        if ch == ChannelKind::WhatsApp
            && excluded.is_none()
            && i.recipient.no_whatsapp_until.is_some_and(|t| t > i.now)
        {
            excluded = Some("recipient recently reported as not on whatsapp".into());
        }
        match excluded {
            Some(w) => skipped.push((ch, w)),
            None => candidates.push(ch),
        }
    }
    if candidates.is_empty() {
        let reasons: Vec<String> = skipped.iter().map(|(_, w)| w.clone()).collect();
        return Decision::Fail(format!("no channel left: {}", reasons.join("; ")));
    }
    let usable = |ch: ChannelKind| i.health.iter().any(|(c, up)| *c == ch && *up);
    let mut steps = Vec::new();
    let mut down = Vec::new();
    for ch in candidates {
        if !usable(ch) {
            down.push(ch);
            skipped.push((ch, format!("{ch} is down")));
            continue;
        }
        let budget = match ch {
            ChannelKind::WhatsApp => i.cfg.policy.whatsapp_deadline.min(remaining),
            ChannelKind::Sms => SMS_ATTEMPT_CAP.min(remaining),
        };
        steps.push(Step {
            channel: ch,
            budget,
        });
    }
    if steps.is_empty() {
        let names: Vec<&str> = down.iter().map(|c| c.as_str()).collect();
        return Decision::Wait {
            retry_at: i.now.plus(CHANNEL_DOWN_RETRY).min(i.expires_at),
            reason: format!("waiting: {} down", names.join(" and ")),
        };
    }
    let sms_possible =
        steps.iter().any(|s| s.channel == ChannelKind::Sms) || down.contains(&ChannelKind::Sms);
    let prenotice = i.cfg.policy.prenotify
        && steps.first().map(|s| s.channel) == Some(ChannelKind::WhatsApp)
        && i.recipient.prenotified_at.is_none()
        && sms_possible;
    Decision::Send {
        steps,
        skipped,
        prenotice,
    }
}

/// Renders the SMS text for a code: `{code}`, `{minutes}` (whole minutes left, at least 1), `{org}`.
/// One pass, so a value is never read as a placeholder (an `{org}` named "{code}" stays so).
pub fn render_sms(template: &str, code: &str, lifetime: Duration, org: &str) -> String {
    let minutes = lifetime.as_secs().div_ceil(60).max(1).to_string();
    let mut out = String::with_capacity(template.len() + code.len() + org.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (value, len) = [("{code}", code), ("{minutes}", &minutes), ("{org}", org)]
            .into_iter()
            .find(|(name, _)| rest.starts_with(name))
            .map_or(("{", 1), |(name, value)| (value, name.len()));
        out.push_str(value);
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

/// Finds the code in a caller's text with `pattern` (one capture group). Only a unique match
/// counts: two different candidates mean we cannot know which is the code.
pub fn extract_code(pattern: &regex::Regex, text: &str) -> Result<String, &'static str> {
    let mut found: Option<String> = None;
    for caps in pattern.captures_iter(text) {
        let Some(m) = caps.get(1) else { continue };
        let code: String = m
            .as_str()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .collect();
        if code.is_empty() {
            continue;
        }
        match &found {
            Some(f) if *f != code => {
                return Err("ambiguous: the text holds more than one candidate code");
            }
            _ => found = Some(code),
        }
    }
    match found {
        Some(c) if c.chars().count() <= 15 => Ok(c),
        Some(_) => Err("the candidate code is longer than 15 characters"),
        None => Err("no code found in the text"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Sources, load};
    use std::collections::BTreeMap;

    fn cfg(extra: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "t").unwrap();
        let body = format!(
            "[otp]\ndefault_country = \"IN\"\n[whatsapp]\nenabled = true\nphone_number_id = \"1\"\ntemplate = \"otp\"\ntoken_file = \"{}\"\n{extra}",
            tok.display()
        );
        let main = dir.path().join("otpgate.toml");
        std::fs::write(&main, body).unwrap();
        let c = load(&Sources {
            main,
            env: BTreeMap::new(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        (dir, c)
    }

    fn client(whatsapp: bool) -> ClientConfig {
        ClientConfig {
            name: "adfs".into(),
            key_sha256: [0; 32],
            password_sha256: None,
            allow_ips: vec![],
            whatsapp,
            order: None,
            countries: None,
        }
    }

    fn attempt(channel: &str, outcome: &str, receipt: Option<&str>) -> Attempt {
        Attempt {
            id: 1,
            channel: ChannelKind::read(channel).unwrap(),
            purpose: AttemptPurpose::Code,
            started_at: Timestamp(0),
            ended_at: Some(Timestamp(1)),
            end: Some(AttemptEnd::read(outcome).unwrap()),
            provider_id: None,
            error_code: None,
            detail: None,
            receipt: receipt.map(|r| ReceiptKind::read(r).unwrap()),
            receipt_at: None,
        }
    }

    const BOTH_UP: &[(ChannelKind, bool)] =
        &[(ChannelKind::WhatsApp, true), (ChannelKind::Sms, true)];

    fn input<'a>(
        c: &'a Config,
        cl: &'a ClientConfig,
        r: &'a RecipientInfo,
        a: &'a [Attempt],
        h: &'a [(ChannelKind, bool)],
    ) -> Input<'a> {
        Input {
            cfg: c,
            client: cl,
            country: Some("IN"),
            kind: Kind::Code,
            expires_at: Timestamp(300_000),
            recipient: r,
            attempts: a,
            health: h,
            only_channel: None,
            now: Timestamp(0),
        }
    }

    fn channels(d: &Decision) -> Vec<ChannelKind> {
        match d {
            Decision::Send { steps, .. } => steps.iter().map(|s| s.channel).collect(),
            other => panic!("not a send: {other:?}"),
        }
    }

    #[test]
    fn whatsapp_first_then_sms_with_prenotice_once() {
        let (_d, c) = cfg("");
        let cl = client(true);
        let r = RecipientInfo::default();
        let d = decide(input(&c, &cl, &r, &[], BOTH_UP));
        assert_eq!(channels(&d), vec![ChannelKind::WhatsApp, ChannelKind::Sms]);
        let Decision::Send {
            steps, prenotice, ..
        } = &d
        else {
            unreachable!()
        };
        assert!(prenotice);
        assert_eq!(steps[0].budget, Duration::from_secs(8));
        assert_eq!(steps[1].budget, Duration::from_secs(180));
        let r2 = RecipientInfo {
            prenotified_at: Some(Timestamp(1)),
            ..Default::default()
        };
        let Decision::Send { prenotice, .. } = decide(input(&c, &cl, &r2, &[], BOTH_UP)) else {
            unreachable!()
        };
        assert!(!prenotice);
    }

    #[test]
    fn every_switch_turns_whatsapp_off_and_says_why() {
        let r = RecipientInfo::default();
        let cases: Vec<(&str, bool, &str)> = vec![
            ("", false, "disabled for client adfs"),
            (
                "[policy]\nwhatsapp_countries = [\"DE\"]\n",
                true,
                "not rolled out to IN",
            ),
            ("[policy]\nprenotify = false\n", true, ""),
        ];
        for (extra, wa_for_client, why) in cases {
            let (_d, c) = cfg(extra);
            let cl = client(wa_for_client);
            let d = decide(input(&c, &cl, &r, &[], BOTH_UP));
            if why.is_empty() {
                assert_eq!(channels(&d), vec![ChannelKind::WhatsApp, ChannelKind::Sms]);
                let Decision::Send { prenotice, .. } = d else {
                    unreachable!()
                };
                assert!(!prenotice, "prenotify = false");
                continue;
            }
            assert_eq!(channels(&d), vec![ChannelKind::Sms], "{extra}");
            let Decision::Send {
                skipped, prenotice, ..
            } = d
            else {
                unreachable!()
            };
            assert!(!prenotice);
            assert!(
                skipped
                    .iter()
                    .any(|(ch, w)| *ch == ChannelKind::WhatsApp && w.contains(why)),
                "{skipped:?}"
            );
        }
        let (_d, mut c) = cfg("");
        c.whatsapp.enabled = false;
        let cl = client(true);
        let d = decide(input(&c, &cl, &r, &[], BOTH_UP));
        assert_eq!(channels(&d), vec![ChannelKind::Sms]);
        // Free text never goes to WhatsApp.
        let mut i = input(&c, &cl, &r, &[], BOTH_UP);
        i.kind = Kind::Text;
        assert_eq!(channels(&decide(i)), vec![ChannelKind::Sms]);
    }

    #[test]
    fn history_and_memory_exclude_channels() {
        let (_d, c) = cfg("");
        let cl = client(true);
        let r = RecipientInfo {
            no_whatsapp_until: Some(Timestamp(10)),
            ..Default::default()
        };
        assert_eq!(
            channels(&decide(input(&c, &cl, &r, &[], BOTH_UP))),
            vec![ChannelKind::Sms]
        );
        let expired_memory = RecipientInfo {
            no_whatsapp_until: Some(Timestamp(0)),
            prenotified_at: Some(Timestamp(0)),
        };
        assert_eq!(
            channels(&decide(input(&c, &cl, &expired_memory, &[], BOTH_UP))).len(),
            2
        );
        let none = RecipientInfo::default();
        for (a, want) in [
            (
                attempt("whatsapp", "interrupted", None),
                vec![ChannelKind::Sms],
            ),
            (
                attempt("whatsapp", "fallback", None),
                vec![ChannelKind::Sms],
            ),
            (
                attempt("whatsapp", "retry", None),
                vec![ChannelKind::WhatsApp, ChannelKind::Sms],
            ),
            (
                attempt("whatsapp", "channel_down", None),
                vec![ChannelKind::WhatsApp, ChannelKind::Sms],
            ),
        ] {
            assert_eq!(
                channels(&decide(input(
                    &c,
                    &cl,
                    &none,
                    std::slice::from_ref(&a),
                    BOTH_UP
                ))),
                want,
                "{a:?}"
            );
        }
        let sent = [attempt("whatsapp", "accepted", Some("delivered"))];
        assert_eq!(
            decide(input(&c, &cl, &none, &sent, BOTH_UP)),
            Decision::AlreadySent(ChannelKind::WhatsApp)
        );
        let failed_receipt = [attempt("whatsapp", "accepted", Some("failed"))];
        assert_eq!(
            channels(&decide(input(&c, &cl, &none, &failed_receipt, BOTH_UP))),
            vec![ChannelKind::Sms]
        );
        let both = [
            attempt("whatsapp", "fallback", None),
            attempt("sms", "unknown", None),
        ];
        assert!(matches!(
            decide(input(&c, &cl, &none, &both, BOTH_UP)),
            Decision::Fail(_)
        ));
    }

    #[test]
    fn health_expiry_and_budgets() {
        let (_d, c) = cfg("");
        let cl = client(true);
        let r = RecipientInfo::default();
        let wa_down = [(ChannelKind::WhatsApp, false), (ChannelKind::Sms, true)];
        let d = decide(input(&c, &cl, &r, &[], &wa_down));
        assert_eq!(channels(&d), vec![ChannelKind::Sms]);
        let Decision::Send { prenotice, .. } = d else {
            unreachable!()
        };
        assert!(!prenotice, "no pre-notice when WhatsApp is not tried");
        let all_down = [(ChannelKind::WhatsApp, false), (ChannelKind::Sms, false)];
        assert!(matches!(
            decide(input(&c, &cl, &r, &[], &all_down)),
            Decision::Wait {
                retry_at: Timestamp(5000),
                ..
            }
        ));
        let mut i = input(&c, &cl, &r, &[], BOTH_UP);
        i.now = Timestamp(300_000);
        assert_eq!(decide(i), Decision::Expire);
        i.now = Timestamp(296_000);
        let Decision::Send { steps, .. } = decide(i) else {
            unreachable!()
        };
        assert_eq!(
            steps[0].budget,
            Duration::from_secs(4),
            "WhatsApp never gets more than the lifetime left"
        );
        // The caller's channel restriction.
        let mut only = input(&c, &cl, &r, &[], BOTH_UP);
        only.only_channel = Some(ChannelKind::Sms);
        assert_eq!(channels(&decide(only)), vec![ChannelKind::Sms]);
        // Only SMS configured: WhatsApp is skipped as unconfigured.
        let sms_only = [(ChannelKind::Sms, true)];
        assert_eq!(
            channels(&decide(input(&c, &cl, &r, &[], &sms_only))),
            vec![ChannelKind::Sms]
        );
    }

    #[test]
    fn admission_refuses_what_no_channel_may_carry() {
        let (_d, c) =
            cfg("[policy]\nsms_countries = [\"IN\"]\nwhatsapp_countries = [\"IN\", \"ID\"]\n");
        let cl = client(true);
        let both = [ChannelKind::WhatsApp, ChannelKind::Sms];
        assert!(admit(&c, &cl, Some("IN"), Kind::Code, &both, None).is_ok());
        assert!(
            admit(&c, &cl, Some("ID"), Kind::Code, &both, None).is_ok(),
            "WhatsApp may carry it"
        );
        assert_eq!(
            admit(&c, &cl, Some("ID"), Kind::Text, &both, None)
                .unwrap_err()
                .code,
            "country_not_allowed"
        );
        assert_eq!(
            admit(&c, &cl, Some("DE"), Kind::Code, &both, None)
                .unwrap_err()
                .code,
            "country_not_allowed"
        );
        let mut narrow = client(true);
        narrow.countries = Some(vec!["ID".into()]);
        assert!(admit(&c, &narrow, Some("IN"), Kind::Code, &both, None).is_err());
    }

    #[test]
    fn sms_text_and_code_extraction() {
        assert_eq!(
            render_sms(
                "{code} for {org}, {minutes} min",
                "4711",
                Duration::from_secs(61),
                "ACME"
            ),
            "4711 for ACME, 2 min"
        );
        // Unknown and unclosed braces stay; a placeholder may come twice; a value is never
        // read as a placeholder; multi-byte text around them survives.
        assert_eq!(
            render_sms(
                "{{code}} {x} {code} é{org}{ {minutes",
                "12",
                Duration::ZERO,
                "{code}"
            ),
            "{12} {x} 12 é{code}{ {minutes"
        );
        assert_eq!(
            render_sms("{minutes}", "1", Duration::from_secs(600), ""),
            "10"
        );
        let re = regex::Regex::new(crate::config::DEFAULT_CODE_PATTERN).unwrap();
        assert_eq!(extract_code(&re, "Your OTP is 123456").unwrap(), "123456");
        assert_eq!(extract_code(&re, "123456 is your code").unwrap(), "123456");
        assert_eq!(extract_code(&re, "Code: 123 456.").unwrap(), "123456");
        assert_eq!(
            extract_code(&re, "Code 123456, again: 123456").unwrap(),
            "123456"
        );
        assert!(extract_code(&re, "Code 123456 or 654321").is_err());
        assert!(extract_code(&re, "no digits here").is_err());
        assert!(extract_code(&re, "12").is_err());
    }
}
