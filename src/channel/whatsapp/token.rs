//! When the WhatsApp access token expires, from Meta's token debugger
//! (`GET /<version>/debug_token?input_token=<token>`, asked with the app token
//! `whatsapp.app_id|app secret` when the app id is set, else the token itself), exported
//! as `otpgate_whatsapp_token_expiry_timestamp_seconds` for the near-expiry alerts.
//!
//! Asked at start, after a reload that changes the token, then every [`EVERY`]; never on the
//! send path. A token that never expires (Meta's `expires_at: 0`, a permanent system-user
//! token) and one whose expiry is not known leave the gauge at 0, which the alert rules skip.
//! Meta may refuse a token the right to inspect itself (code 100: only an app token or an
//! app developer's may); that is logged once per token at info, and the gauge stays 0.
//!
//! The token travels in the query string, so no error here carries a URL, and the body is
//! parsed for two fields only.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use super::errors::parse_error_body;
use crate::clock::SharedClock;
use crate::config::{Live, WhatsAppConfig};
use crate::metrics::Metrics;

/// How often the token is asked about once Meta has answered.
pub const EVERY: Duration = Duration::from_secs(6 * 3600);
/// How soon a question that got no answer is asked again.
pub const RETRY: Duration = Duration::from_secs(15 * 60);

/// What Meta says of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// `data.is_valid`.
    pub valid: bool,
    /// `data.expires_at` in unix seconds; `None` when it never expires (Meta's 0).
    pub expires_at: Option<i64>,
}

/// Why the token's expiry is not known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// No token is configured.
    #[error("no access token")]
    NoToken,
    /// The request did not get an answer (no URL in it: the URL holds the token).
    #[error("no answer from the token debugger: {0}")]
    Transport(String),
    /// Meta refused the question.
    #[error("the token debugger refused with HTTP {status} (error code {code})", code = .code.map_or("-".to_string(), |c| c.to_string()))]
    Refused {
        /// HTTP status.
        status: u16,
        /// Meta's `error.code`.
        code: Option<i64>,
    },
    /// The answer was not the debugger's JSON.
    #[error("unexpected answer from the token debugger: {0}")]
    Body(String),
}

#[derive(Deserialize)]
struct Envelope {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    is_valid: bool,
    #[serde(default)]
    expires_at: i64,
}

/// Reads a `debug_token` answer.
pub fn parse(body: &[u8]) -> Result<TokenInfo, TokenError> {
    let e: Envelope = serde_json::from_slice(body).map_err(|e| {
        // serde's message quotes no input, only positions and field names.
        TokenError::Body(e.to_string())
    })?;
    Ok(TokenInfo {
        valid: e.data.is_valid,
        expires_at: (e.data.expires_at > 0).then_some(e.data.expires_at),
    })
}

/// Asks Meta about the configured token with `http` (built like the channel's: proxy, trust
/// anchors).
pub async fn inspect(
    http: &reqwest::Client,
    cfg: &WhatsAppConfig,
) -> Result<TokenInfo, TokenError> {
    let token = cfg.token.as_ref().ok_or(TokenError::NoToken)?;
    // The app token (`app_id|app_secret`) may inspect any token of its app; without an app
    // id the access token asks about itself, which Meta allows for some tokens only.
    let asker = match (&cfg.app_id, &cfg.app_secret) {
        (Some(id), Some(secret)) => format!("Bearer {id}|{}", secret.expose()),
        _ => format!("Bearer {}", token.expose()),
    };
    let mut bearer = HeaderValue::from_str(&asker).map_err(|_| TokenError::NoToken)?;
    bearer.set_sensitive(true);
    let url = format!("{}/debug_token", cfg.api_base.trim_end_matches('/'));
    let transport = |e: reqwest::Error| TokenError::Transport(super::client::describe(&e));
    let resp = http
        .get(url)
        .header(AUTHORIZATION, bearer)
        .query(&[("input_token", token.expose())])
        .timeout(cfg.timeout.max(Duration::from_secs(5)))
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(transport)?;
    if !(200..300).contains(&status) {
        let code = parse_error_body(&body).and_then(|e| e.code);
        return Err(TokenError::Refused { status, code });
    }
    parse(&body)
}

/// Asks about the token now, after `recheck` is notified (a reload), and every [`EVERY`];
/// until `shutdown`. Each answer sets `metrics.whatsapp_token_expiry`. `boot` is the
/// WhatsApp configuration the process started with: its proxy and trust anchors build a
/// client for each question (its own, so the send path's connections are not touched),
/// dropped after it, so an idle daemon does not hold a second set of roots for a question
/// asked four times a day.
pub async fn watch(
    boot: WhatsAppConfig,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    recheck: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The refusal to self-inspect is logged once per token, not every six hours.
    let mut told_refusal = false;
    loop {
        let cfg = live.get();
        let wait = if cfg.whatsapp.enabled {
            // A question in flight does not hold up the shutdown.
            let answer = match super::client::build_http(&boot) {
                Ok(http) => tokio::select! {
                    a = inspect(&http, &cfg.whatsapp) => a,
                    _ = shutdown.changed() => return,
                },
                Err(e) => Err(TokenError::Transport(e.to_string())),
            };
            match answer {
                Ok(info) => {
                    metrics
                        .whatsapp_token_expiry
                        .set(info.expires_at.unwrap_or(0));
                    report(info, clock.now().0 / 1000);
                    EVERY
                }
                Err(TokenError::Refused {
                    code: Some(100), ..
                }) => {
                    metrics.whatsapp_token_expiry.set(0);
                    if !told_refusal {
                        tracing::info!(
                            "whatsapp: Meta does not let this access token inspect itself (code 100); its expiry is not exported"
                        );
                        told_refusal = true;
                    }
                    EVERY
                }
                Err(e) => {
                    // The last answer still holds: an expiry does not move by itself.
                    tracing::warn!(error = %e, "whatsapp: cannot learn when the access token expires");
                    RETRY
                }
            }
        } else {
            metrics.whatsapp_token_expiry.set(0);
            EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = recheck.notified() => {
                told_refusal = false;
                metrics.whatsapp_token_expiry.set(0);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Logs what Meta said, louder as the end nears.
fn report(info: TokenInfo, now_secs: i64) {
    match info.expires_at {
        _ if !info.valid => {
            tracing::error!("whatsapp: Meta says the access token is not valid; renew it");
        }
        None => tracing::info!("whatsapp: the access token does not expire"),
        Some(at) => {
            let days = (at - now_secs).div_euclid(86_400);
            if days < 14 {
                tracing::warn!(
                    days_left = days,
                    "whatsapp: the access token expires soon; renew it"
                );
            } else {
                tracing::info!(days_left = days, "whatsapp: access token expiry known");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_metas_answers() {
        let valid = br#"{"data":{"app_id":"1","type":"SYSTEM_USER","application":"a",
            "data_access_expires_at":1576687825,"expires_at":1570820400,"is_valid":true,
            "scopes":["whatsapp_business_messaging"],"user_id":"2"}}"#;
        assert_eq!(
            parse(valid),
            Ok(TokenInfo {
                valid: true,
                expires_at: Some(1570820400)
            })
        );
        let never = br#"{"data":{"expires_at":0,"is_valid":true}}"#;
        assert_eq!(parse(never).unwrap().expires_at, None);
        let invalid =
            br#"{"data":{"error":{"code":190,"message":"Invalid"},"is_valid":false,"scopes":[]}}"#;
        assert_eq!(
            parse(invalid),
            Ok(TokenInfo {
                valid: false,
                expires_at: None
            })
        );
        assert!(matches!(parse(b"<html>"), Err(TokenError::Body(_))));
        assert!(matches!(
            parse(br#"{"error":{}}"#),
            Err(TokenError::Body(_))
        ));
    }
}
