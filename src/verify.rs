//! The verification core every door shares (the HTTP Verify API, RADIUS): make a code with
//! the OS CSPRNG, store only HMAC-SHA256(key, id ":" code), deliver it through the one accept
//! pipeline (policy, limits, fallback), check a candidate in constant time within the attempt
//! limit, and resend. No transport here: a door turns its request into these calls and their
//! results (or the [`ApiError`] refusals, which carry stable codes) into its own answers.

use std::time::Duration;

use hmac::{KeyInit, Mac};

use crate::api::App;
use crate::api::error::ApiError;
use crate::api::submit::{self, Accepted, Intake, Submission};
use crate::channel::ChannelKind;
use crate::clock::Timestamp;
use crate::config::{ClientConfig, Config};
use crate::secret::Secret;
use crate::store::{CheckOutcome, InsertResult, NewVerification, Resend};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The stored form of a code: HMAC-SHA256 keyed with the verify key over "id:code".
pub fn code_hash(key: &Secret, id: &str, code: &str) -> [u8; 32] {
    let mut mac = match HmacSha256::new_from_slice(key.expose().as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => return [0; 32],
    };
    mac.update(id.as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    mac.finalize().into_bytes().into()
}

/// `length` uniformly random decimal digits from the OS CSPRNG (no modulo bias).
pub fn new_code(length: u32) -> String {
    (0..length)
        .map(|_| char::from(b'0' + rand::random_range(0..10u8)))
        .collect()
}

/// What a door asks for when it starts a verification.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The number as given (parsed to E.164 by the pipeline).
    pub to: String,
    /// "whatsapp", "sms" or None/"auto" (kept as given: it is stored and shown back).
    pub channel: Option<String>,
    /// Locale for the texts.
    pub locale: Option<String>,
    /// Code length; None = `verify.default_length`.
    pub length: Option<u32>,
    /// Code lifetime.
    pub ttl: Duration,
    /// The end user and address, for `limits.per_user` and `limits.per_ip`.
    pub caller: crate::abuse::Caller,
}

/// A started verification.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its id.
    pub id: String,
    /// The E.164 recipient.
    pub recipient: String,
    /// When the code stops working.
    pub expires_at: Timestamp,
    /// The message carrying the code.
    pub message_id: String,
}

/// The channel a caller asked for: None for "auto" or nothing.
pub fn parse_channel(c: Option<&str>) -> Result<Option<ChannelKind>, ApiError> {
    match c {
        None | Some("auto") => Ok(None),
        Some(s) => ChannelKind::parse(s).map(Some).ok_or_else(|| {
            ApiError::field(
                "invalid_field",
                "channel",
                "channel must be \"whatsapp\", \"sms\" or \"auto\"",
            )
        }),
    }
}

/// Makes a code, stores its hash and its delivery in one transaction (older pending
/// verifications of this client for this number are canceled), and wakes the dispatcher.
pub async fn start(
    app: &App,
    cfg: &Config,
    client: &ClientConfig,
    r: StartRequest,
) -> Result<Started, ApiError> {
    let only_channel = parse_channel(r.channel.as_deref())?;
    submit::check_locale(r.locale.as_deref())?;
    let length = r.length.unwrap_or(cfg.verify.default_length);
    if !(4..=10).contains(&length) {
        return Err(ApiError::field(
            "invalid_field",
            "length",
            "length must be between 4 and 10",
        ));
    }
    let id = submit::new_id("ver", app.clock.now());
    let code = new_code(length);
    let hash = code_hash(&app.verify_key(cfg), &id, &code);
    let (content, _) = submit::build_content(cfg, Some(code), None, r.locale.as_deref(), r.ttl)?;
    let intake = Intake { app, cfg, client };
    let p = intake.prepare_for(
        Submission {
            to: r.to,
            content,
            ttl: r.ttl,
            locale: r.locale,
            idempotency_key: None,
            reference: Some(id.clone()),
            only_channel,
        },
        &r.caller,
    )?;
    let expires_at = p.message.expires_at;
    let new = NewVerification {
        id: id.clone(),
        code_hash: hash,
        length,
        channel: r.channel,
        message: p.message,
    };
    let result = match app
        .store
        .create_verification_counted(new, p.limits, p.velocity)
        .await
    {
        Ok(Err(v)) => return Err(submit::velocity_limited(v)),
        Ok(Ok(r)) => Ok(r),
        Err(e) => Err(e),
    };
    if !matches!(result, Ok(InsertResult::Created(_))) {
        // Nothing was stored: the velocity place this request took is given back.
        app.abuse.release(p.ticket);
    }
    match intake.stored(result)? {
        Accepted::New(m) => Ok(Started {
            id,
            recipient: m.recipient.to_string(),
            expires_at,
            message_id: m.id.to_string(),
        }),
        // No idempotency key is given, so a repeat cannot happen; were it to, nothing new
        // was stored.
        Accepted::Repeat(_) => Err(ApiError::unavailable()),
    }
}

/// Checks a candidate code: constant time, counted, single use. A candidate that cannot be a
/// code (empty, longer than 16) is refused without counting.
pub async fn check(
    app: &App,
    cfg: &Config,
    client: &str,
    id: &str,
    candidate: &str,
) -> Result<CheckOutcome, ApiError> {
    let candidate = candidate.trim();
    if candidate.is_empty() || candidate.len() > 16 {
        return Err(ApiError::field(
            "invalid_code",
            "code",
            "code must be 1 to 16 characters",
        ));
    }
    let hash = code_hash(&app.verify_key(cfg), id, candidate);
    app.store
        .check_verification(id, client, hash, cfg.verify.max_attempts, app.clock.now())
        .await
        .map_err(|_| ApiError::unavailable())
}

/// What became of a resend, for the door to word.
#[derive(Debug)]
pub enum Resent {
    /// A new code went to the store; `sends` counts it.
    New {
        /// Codes sent so far, this one included.
        sends: u32,
    },
    /// The store answered with an existing message (no new code).
    Existing,
    /// Already `verify.max_sends` codes.
    MaxSends,
    /// No such verification for this client.
    NotFound,
    /// No longer pending, or too close to its expiry for a new code to be useful.
    NotPending,
}

/// Sends a new code for a pending verification; it lives only as long as the verification.
pub async fn resend(
    app: &App,
    cfg: &Config,
    client: &ClientConfig,
    id: &str,
) -> Result<Resent, ApiError> {
    let Some(v) = app
        .store
        .verification(id, &client.name)
        .await
        .map_err(|_| ApiError::unavailable())?
    else {
        return Ok(Resent::NotFound);
    };
    let remaining = app.clock.now().until(v.expires_at);
    if remaining < Duration::from_secs(10) || v.status != "pending" {
        return Ok(Resent::NotPending);
    }
    let code = new_code(v.length);
    let hash = code_hash(&app.verify_key(cfg), id, &code);
    let (content, _) = submit::build_content(cfg, Some(code), None, None, remaining)?;
    let only_channel = parse_channel(v.channel.as_deref())?;
    let intake = Intake { app, cfg, client };
    let mut p = intake.prepare(Submission {
        to: v.recipient.clone(),
        content,
        ttl: remaining,
        locale: None,
        idempotency_key: None,
        reference: Some(id.to_owned()),
        only_channel,
    })?;
    // The code lives as long as the verification, not longer.
    p.message.expires_at = v.expires_at;
    let r = app
        .store
        .resend_verification_counted(
            id,
            &client.name,
            hash,
            p.message,
            cfg.verify.max_sends,
            p.limits,
            p.velocity,
        )
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(submit::velocity_limited)?;
    match r {
        Resend::Stored(r @ InsertResult::Created(_)) => {
            intake.stored(Ok(r))?;
            Ok(Resent::New { sends: v.sends + 1 })
        }
        Resend::Stored(other) => intake.stored(Ok(other)).map(|_| Resent::Existing),
        Resend::MaxSends => Ok(Resent::MaxSends),
        Resend::NotFound => Ok(Resent::NotFound),
        Resend::NotPending => Ok(Resent::NotPending),
    }
}
