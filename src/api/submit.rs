//! The accept pipeline every front door shares (native v1, Kannel, generic SMS, Verify):
//! validate -> admit -> build the row with its limits -> store insert (idempotency and limits
//! in the same transaction) -> wake the dispatcher -> the caller's answer. A door turns its
//! request into a [`Submission`] and its answer from an [`Accepted`]; everything between is
//! here, so limits, policy and durability cannot differ between doors.

use std::time::Duration;

use http::StatusCode;

use super::error::ApiError;
use super::{App, retry_after_secs};
use crate::abuse::{Caller, Scope, Ticket, breaker, prefix_of, velocity_keys};
use crate::channel::{ChannelKind, Content};
use crate::clock::Timestamp;
use crate::config::{ClientConfig, Config, Rate};
use crate::content::{self, ExtractError, MAX_CODE_LEN};
use crate::dispatch::policy;
use crate::domain::{E164, MessageId};
use crate::phone::{self, Number};
use crate::store::{
    BatchResult, InsertResult, LimitScope, Message, NewMessage, StoreError, VelocityKeys,
    VelocityLimited,
};

/// A validated request to accept a message, whichever front door it came through.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Raw number as given.
    pub to: String,
    /// The content, already built.
    pub content: Content,
    /// Lifetime.
    pub ttl: Duration,
    /// Locale.
    pub locale: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Caller's reference.
    pub reference: Option<String>,
    /// Restrict delivery to one channel.
    pub only_channel: Option<ChannelKind>,
}

impl Submission {
    /// A message from a compatibility caller: no locale, key, reference or channel choice.
    pub fn plain(to: String, content: Content, ttl: Duration) -> Submission {
        Submission {
            to,
            content,
            ttl,
            locale: None,
            idempotency_key: None,
            reference: None,
            only_channel: None,
        }
    }
}

/// The outcome of [`Intake::accept`].
pub enum Accepted {
    /// Newly stored.
    New(Message),
    /// The idempotency key's first message.
    Repeat(Message),
}

/// A message ready for the store, with the limits that apply to it.
pub struct Prepared {
    /// The row to insert.
    pub message: NewMessage,
    /// The limits to check in the same transaction.
    pub limits: Vec<(LimitScope, Rate)>,
    /// The places it took under the velocity limits; given back if the store refuses it.
    pub ticket: Ticket,
    /// The velocity limits and keys the store counts it under, in the accept transaction
    /// (a pair on PostgreSQL; empty on SQLite, which counted them in `ticket`).
    pub velocity: VelocityKeys,
}

/// The pipeline for one request: the gateway, the one config snapshot the request reads, and
/// the client it authenticated as.
#[derive(Clone, Copy)]
pub struct Intake<'r> {
    /// The gateway.
    pub app: &'r App,
    /// The configuration this request reads, start to end.
    pub cfg: &'r Config,
    /// The authenticated client.
    pub client: &'r ClientConfig,
}

impl<'r> Intake<'r> {
    /// Validates the number and applies the policy's admission; builds the row and its limits.
    pub fn prepare(&self, s: Submission) -> Result<Prepared, ApiError> {
        self.prepare_for(s, &Caller::default())
    }

    /// [`Intake::prepare`] for a caller that named its end user: number, number type,
    /// policy, the conversion breaker, then the velocity limits, which count it (so every
    /// refusal before them changes nothing).
    pub fn prepare_for(&self, mut s: Submission, caller: &Caller) -> Result<Prepared, ApiError> {
        let number = phone::parse(&s.to, self.cfg.otp.default_country)
            .map_err(|e| ApiError::field("invalid_phone_number", "to", format!("to {e}")))?;
        self.check_type(&number)?;
        self.admit(&number, &s)?;
        let now = self.app.clock.now();
        self.pause_sms(&number, &mut s, now)?;
        // A pair counts them in PostgreSQL (each node's memory sees half the traffic); counting
        // here as well would halve the limits.
        let (ticket, velocity) = if self.app.store.counts_velocity() {
            let keys = velocity_keys(self.cfg, &number.e164, caller);
            (Ticket::default(), keys)
        } else {
            let ticket = self
                .app
                .abuse
                .admit(self.cfg, &number.e164, caller, now.0)
                .map_err(|(scope, wait)| velocity_refusal(scope, wait))?;
            (ticket, Vec::new())
        };
        // The number's parts move into the row: it stays one typed value up to the store.
        let Number {
            e164,
            country,
            kind: _,
        } = number;
        let message = NewMessage {
            id: MessageId::new(new_id("msg", now)),
            client: self.client.name.clone(),
            recipient: e164,
            country,
            content: s.content,
            locale: s.locale,
            reference: s.reference,
            idempotency_key: s.idempotency_key,
            created_at: now,
            expires_at: now.plus(s.ttl),
            only_channel: s.only_channel,
        };
        let l = &self.cfg.limits;
        let limits = [
            (LimitScope::Recipient, l.per_recipient),
            (LimitScope::Client, l.per_client),
            (LimitScope::Country, l.per_country),
            (LimitScope::Global, l.global),
        ]
        .into_iter()
        .filter_map(|(s, r)| r.map(|r| (s, r)))
        .collect();
        Ok(Prepared {
            message,
            limits,
            ticket,
            velocity,
        })
    }

    /// `policy.number_types`: premium-rate, shared-cost and the like are where pumped SMS go.
    fn check_type(&self, number: &Number) -> Result<(), ApiError> {
        let allowed = &self.cfg.policy.number_types;
        if allowed.contains(&number.kind) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|t| t.as_str()).collect();
        Err(ApiError::field(
            "number_type_not_allowed",
            "to",
            format!(
                "to is a {} number; this gateway sends to {} numbers only",
                number.kind,
                names.join(", ")
            ),
        ))
    }

    /// The conversion breaker: while SMS to this number's block or country is paused, the
    /// message may go by WhatsApp only, or not at all.
    fn pause_sms(
        &self,
        number: &Number,
        s: &mut Submission,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let abuse = &self.app.abuse;
        abuse.poll(&self.app.store, self.cfg, now.0);
        let prefix = prefix_of(&number.e164, self.cfg.limits.prefix_digits);
        let country = number.country.as_deref();
        let Some(left) = abuse.breaker.paused(prefix, country, now.0) else {
            return Ok(());
        };
        let whatsapp = Some(ChannelKind::WhatsApp);
        let by_whatsapp = s.only_channel != Some(ChannelKind::Sms)
            && policy::admit(
                self.cfg,
                self.client,
                country,
                s.content.kind(),
                &self.app.dispatcher.configured(),
                whatsapp,
            )
            .is_ok();
        if by_whatsapp {
            s.only_channel = whatsapp;
            return Ok(());
        }
        Err(ApiError {
            field: Some("to".into()),
            retry_after: Some(retry_after_secs(breaker::remaining(left))),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "sms_paused",
                "SMS to this number range is paused: too few of its recent verification codes were used; WhatsApp cannot carry this message",
            )
        })
    }

    /// The policy's admission: some configured channel may carry this content to this number.
    fn admit(&self, number: &Number, s: &Submission) -> Result<(), ApiError> {
        let configured = self.app.dispatcher.configured();
        if configured.is_empty() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_channel",
                "no delivery channel is configured on this gateway",
            ));
        }
        policy::admit(
            self.cfg,
            self.client,
            number.country.as_deref(),
            s.content.kind(),
            &configured,
            s.only_channel,
        )
        .map_err(|r| ApiError {
            field: Some("to".into()),
            ..ApiError::new(StatusCode::FORBIDDEN, r.code, r.message)
        })
    }

    /// Turns the store's answer into the caller's: wakes the dispatcher on a new message.
    pub fn stored(&self, r: Result<InsertResult, StoreError>) -> Result<Accepted, ApiError> {
        match r {
            Ok(InsertResult::Created(m)) => {
                self.app.metrics.accepted.inc();
                self.app.dispatcher.wake();
                tracing::info!(message = %m.id, client = %self.client.name, country = m.country.as_deref().unwrap_or("?"), kind = %m.kind, "accepted");
                Ok(Accepted::New(m))
            }
            Ok(InsertResult::Existing(m)) => Ok(Accepted::Repeat(m)),
            Ok(InsertResult::KeyConflict) => Err(ApiError {
                status: StatusCode::CONFLICT,
                ..ApiError::field(
                    "idempotency_key_conflict",
                    "idempotency_key",
                    "this idempotency_key was used for another recipient",
                )
            }),
            Ok(InsertResult::Limited { scope, retry_after }) => Err(ApiError {
                retry_after: Some(retry_after_secs(retry_after)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("the {} limit is reached; retry later", scope.as_str()),
                )
            }),
            Err(e) => {
                tracing::error!(error = %e, "store refused a message");
                Err(ApiError::unavailable())
            }
        }
    }

    /// [`Intake::accept`] for one content to several numbers, all or nothing: every number is
    /// parsed and admitted, numbers that are the same in E.164 become one message, and the
    /// messages are stored in one store job (each checked against the limits with the ones
    /// before it counted) or not at all. The refusal names the number and the limit. One
    /// number takes the single-message path, without the batch's savepoint.
    pub async fn accept_all(
        &self,
        numbers: Vec<String>,
        content: &Content,
        ttl: Duration,
    ) -> Result<Vec<Accepted>, ApiError> {
        self.accept_all_for(numbers, content, ttl, &Caller::default())
            .await
    }

    /// [`Intake::accept_all`] for a caller that named its end user.
    pub async fn accept_all_for(
        &self,
        numbers: Vec<String>,
        content: &Content,
        ttl: Duration,
        caller: &Caller,
    ) -> Result<Vec<Accepted>, ApiError> {
        if numbers.len() == 1 {
            let to = numbers.into_iter().next().unwrap_or_default();
            return Ok(vec![
                self.accept_for(Submission::plain(to, content.clone(), ttl), caller)
                    .await?,
            ]);
        }
        let mut prepared: Vec<Prepared> = Vec::with_capacity(numbers.len());
        let mut velocity = Vec::with_capacity(numbers.len());
        let mut tickets = Vec::with_capacity(numbers.len());
        for to in numbers {
            let mut p = match self.prepare_for(Submission::plain(to, content.clone(), ttl), caller)
            {
                Ok(p) => p,
                Err(e) => {
                    tickets.into_iter().for_each(|t| self.app.abuse.release(t));
                    return Err(e);
                }
            };
            let ticket = std::mem::take(&mut p.ticket);
            if prepared
                .iter()
                .any(|q| q.message.recipient == p.message.recipient)
            {
                self.app.abuse.release(ticket);
            } else {
                velocity.push(std::mem::take(&mut p.velocity));
                prepared.push(p);
                tickets.push(ticket);
            }
        }
        let limits = prepared
            .first()
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        let recipients: Vec<E164> = prepared
            .iter()
            .map(|p| p.message.recipient.clone())
            .collect();
        let messages = prepared.into_iter().map(|p| p.message).collect();
        let stored = self
            .app
            .store
            .insert_all_counted(messages, limits, velocity)
            .await;
        let stored = match stored {
            Ok(Err(v)) => return Err(velocity_limited(v)),
            Ok(Ok(r)) => Ok(r),
            Err(e) => Err(e),
        };
        match stored {
            Ok(BatchResult::Stored(results)) => {
                for (r, t) in results.iter().zip(tickets) {
                    if !matches!(r, InsertResult::Created(_)) {
                        self.app.abuse.release(t);
                    }
                }
                results.into_iter().map(|r| self.stored(Ok(r))).collect()
            }
            Ok(BatchResult::Refused { index, why }) => {
                tickets.into_iter().for_each(|t| self.app.abuse.release(t));
                let mut e = match self.stored(Ok(*why)) {
                    Err(e) => e,
                    // Refusals are never a stored message; should one be, nothing was stored.
                    Ok(_) => ApiError::unavailable(),
                };
                if let Some(to) = recipients.get(index) {
                    e.field = Some("to".into());
                    e.message = format!("{} for {}; no message was stored", e.message, &**to);
                }
                Err(e)
            }
            Err(e) => {
                tickets.into_iter().for_each(|t| self.app.abuse.release(t));
                self.stored(Err(e)).map(|a| vec![a])
            }
        }
    }

    /// Validates, admits, checks limits and stores: the one path every front door takes to
    /// put a message in the outbox. Resolves only after the row is committed.
    pub async fn accept(&self, s: Submission) -> Result<Accepted, ApiError> {
        self.accept_for(s, &Caller::default()).await
    }

    /// [`Intake::accept`] for a caller that named its end user.
    pub async fn accept_for(&self, s: Submission, caller: &Caller) -> Result<Accepted, ApiError> {
        let p = self.prepare_for(s, caller)?;
        let r = self
            .app
            .store
            .insert_counted(p.message, p.limits, p.velocity)
            .await;
        let r = match r {
            // Only a pair refuses here, and it took no place in memory.
            Ok(Err(v)) => return Err(velocity_limited(v)),
            Ok(Ok(r)) => Ok(r),
            Err(e) => Err(e),
        };
        if !matches!(r, Ok(InsertResult::Created(_))) {
            self.app.abuse.release(p.ticket);
        }
        self.stored(r)
    }
}

/// A velocity limit counted in the store (a pair) refused the message: the same answer as
/// when this process counted it.
pub fn velocity_limited(v: VelocityLimited) -> ApiError {
    velocity_refusal(v.scope, v.retry_after)
}

/// A velocity limit's refusal: 429 with the scope's own code, the field it counts by, and
/// when a place frees.
fn velocity_refusal(scope: Scope, wait: Duration) -> ApiError {
    let field = match scope {
        Scope::Prefix => "to",
        Scope::User => "user",
        Scope::Ip => "ip",
    };
    ApiError {
        field: Some(field.into()),
        retry_after: Some(retry_after_secs(wait)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            scope.code(),
            format!("the {} limit is reached; retry later", scope.key()),
        )
    }
}

/// Validates a caller's locale ("en", "hi", "pt_BR").
pub fn check_locale(locale: Option<&str>) -> Result<(), ApiError> {
    if let Some(l) = locale
        && (l.is_empty()
            || l.len() > 16
            || !l
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(ApiError::field(
            "invalid_field",
            "locale",
            "locale must look like \"en\", \"hi\" or \"pt_BR\"",
        ));
    }
    Ok(())
}

/// Validates a code: what WhatsApp's template can carry.
pub fn check_code(code: &str) -> Result<(), ApiError> {
    let n = code.chars().count();
    if n == 0 || n > MAX_CODE_LEN || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::field(
            "invalid_code",
            "code",
            format!("code must be 1 to {MAX_CODE_LEN} letters or digits"),
        ));
    }
    Ok(())
}

/// Validates a caller's free text.
pub fn check_text(text: &str) -> Result<(), ApiError> {
    let n = text.chars().count();
    if text.trim().is_empty() {
        return Err(ApiError::field(
            "invalid_text",
            "text",
            "text must not be empty",
        ));
    }
    if n > 1000 {
        return Err(ApiError::field(
            "invalid_text",
            "text",
            format!("text is {n} characters; at most 1000 are sent"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r')
    {
        return Err(ApiError::field(
            "invalid_text",
            "text",
            "text contains control characters",
        ));
    }
    Ok(())
}

/// Builds the content for a code or a text: texts with a unique code in them ride WhatsApp
/// too; for a text without one, says why it goes by SMS only.
pub fn build_content(
    cfg: &Config,
    code: Option<String>,
    text: Option<String>,
    locale: Option<&str>,
    ttl: Duration,
) -> Result<(Content, Option<ExtractError>), ApiError> {
    match (code, text) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "invalid_field",
            "code",
            "give either code or text, not both",
        )),
        (None, None) => Err(ApiError::field(
            "missing_field",
            "code",
            "code (or text) is required",
        )),
        (Some(code), None) => {
            check_code(&code)?;
            let template = locale
                .and_then(|l| content::for_locale(&cfg.otp.sms_text_locales, l))
                .unwrap_or(&cfg.otp.sms_text);
            let sms_text = content::render_sms(template, &code, ttl, &cfg.otp.org);
            Ok((Content::Code { code, sms_text }, None))
        }
        (None, Some(text)) => {
            check_text(&text)?;
            match content::extract_code(&cfg.otp.code_pattern, &text) {
                Ok(code) => Ok((
                    Content::Code {
                        code,
                        sms_text: text,
                    },
                    None,
                )),
                Err(why) => Ok((Content::Text(text), Some(why))),
            }
        }
    }
}

/// Checks the lifetime a caller asked for.
pub fn ttl_of(cfg: &Config, ttl_seconds: Option<u64>) -> Result<Duration, ApiError> {
    match ttl_seconds {
        None => Ok(cfg.otp.default_ttl),
        Some(s) => {
            let d = Duration::from_secs(s);
            if s < 10 || d > cfg.otp.max_ttl {
                Err(ApiError::field(
                    "invalid_ttl",
                    "ttl_seconds",
                    format!(
                        "ttl_seconds must be between 10 and {}",
                        cfg.otp.max_ttl.as_secs()
                    ),
                ))
            } else {
                Ok(d)
            }
        }
    }
}

/// A fresh id with a type prefix ("msg", "ver"): the creation time in milliseconds, then 80
/// random bits, 32 hex digits in all.
///
/// Ids are primary keys: new ones landing next to each other keep a group commit's index
/// writes on a few B-tree pages instead of one random page per message, which roughly halved
/// the WAL bytes per accepted message. The random part keeps them unguessable; a message is
/// visible only to its own client anyway.
pub fn new_id(prefix: &str, now: crate::clock::Timestamp) -> String {
    let random: [u8; 10] = rand::random();
    let millis = u64::try_from(now.0).unwrap_or(0) & 0xffff_ffff_ffff;
    format!("{prefix}_{millis:012x}{}", hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    #[test]
    fn ids_sort_by_creation_and_differ_within_a_millisecond() {
        let t = Timestamp(1_795_000_000_000);
        let (a, b) = (new_id("msg", t), new_id("msg", t));
        let later = new_id("msg", Timestamp(t.0 + 1));
        assert_ne!(a, b);
        for id in [&a, &b, &later] {
            let hex = id.strip_prefix("msg_").unwrap();
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert!(a < later && b < later, "{a} {b} {later}");
        assert_eq!(&a[4..16], &format!("{:012x}", t.0));
    }

    fn cfg() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("otpgate.toml");
        std::fs::write(
            &main,
            "[otp]\ndefault_country = \"IN\"\norg = \"ACME\"\nsms_text = \"{code} is your {org} code\"\n\
             [otp.sms_text_locales]\nhi = \"{code} hi\"\npt_br = \"{code} pt\"\n",
        )
        .unwrap();
        let c = crate::config::load(&crate::config::Sources {
            main,
            env: Default::default(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        (dir, c)
    }

    fn sms_text(c: &Config, locale: Option<&str>) -> String {
        let ttl = Duration::from_secs(300);
        match build_content(c, Some("4711".into()), None, locale, ttl).unwrap() {
            (Content::Code { sms_text, .. }, None) => sms_text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sms_texts_follow_the_locale_rule_whatsapp_uses() {
        let (_dir, c) = cfg();
        assert_eq!(sms_text(&c, None), "4711 is your ACME code");
        assert_eq!(sms_text(&c, Some("hi")), "4711 hi");
        // Upper case and region subtags fall back as the template language does.
        assert_eq!(sms_text(&c, Some("HI-IN")), "4711 hi");
        assert_eq!(sms_text(&c, Some("pt_BR")), "4711 pt");
        assert_eq!(sms_text(&c, Some("id")), "4711 is your ACME code");
    }

    #[test]
    fn a_text_rides_whatsapp_only_with_one_code_in_it() {
        let (_dir, c) = cfg();
        let ttl = Duration::from_secs(300);
        let text = |t: &str| build_content(&c, None, Some(t.into()), None, ttl).unwrap();
        match text("Your code is 123456") {
            (Content::Code { code, sms_text }, None) => {
                assert_eq!(
                    (code.as_str(), sms_text.as_str()),
                    ("123456", "Your code is 123456")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            text("Code 123456 or 654321"),
            (Content::Text(_), Some(ExtractError::Ambiguous))
        ));
        assert!(build_content(&c, Some("1".into()), Some("1".into()), None, ttl).is_err());
        assert!(build_content(&c, None, None, None, ttl).is_err());
    }

    #[test]
    fn codes_are_checked_against_the_one_length_limit() {
        assert!(check_code(&"7".repeat(MAX_CODE_LEN)).is_ok());
        let e = check_code(&"7".repeat(MAX_CODE_LEN + 1)).unwrap_err();
        assert_eq!(e.code, "invalid_code");
        assert!(
            e.message.contains(&MAX_CODE_LEN.to_string()),
            "{}",
            e.message
        );
        assert!(check_code("").is_err());
        assert!(check_code("12 34").is_err());
    }
}
