//! The RADIUS server on UDP: who may ask, the BlastRADIUS checks, retransmissions, and the
//! two-step challenge (password by LDAP bind, then a code delivered like a verification).
//!
//! Silence is an answer here: a datagram from an unknown address, one that does not decode,
//! one with a missing (when required) or wrong Message-Authenticator is dropped without a
//! reply, as RFC 2865 and 2869 ask. Every other request gets exactly one reply, cached so a
//! retransmission is answered with the same bytes and never sends a second code.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::packet::{self, Authenticity, Packet};
use super::state::{Challenges, Pending, Replies, Seen};
use crate::api::App;
use crate::channel::ChannelKind;
use crate::config::{ClientConfig, Config, FailMode, RadiusClient, RadiusMode};
use crate::ldap::{Directory, DirectoryError, Search, UserEntry};
use crate::store::CheckOutcome;
use crate::verify;

/// Requests answered at once; beyond this a datagram is dropped (the NAS retries), so a
/// flood cannot pile up tasks waiting on the directory.
const MAX_IN_FLIGHT: usize = 256;

/// How often the directory is probed for /readyz when no request has touched it.
const PROBE_EVERY: Duration = Duration::from_secs(15);

/// The RADIUS front door: the gateway, the directory and the two memories.
pub struct Radius {
    app: Arc<App>,
    directory: Option<Arc<Directory>>,
    challenges: Mutex<Challenges>,
    replies: Mutex<Replies>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// What a request is answered with, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    code: u8,
    attributes: Vec<(u8, Vec<u8>)>,
}

impl Answer {
    fn reject(message: &str) -> Answer {
        Answer {
            code: packet::ACCESS_REJECT,
            attributes: vec![(packet::REPLY_MESSAGE, message.as_bytes().to_vec())],
        }
    }

    fn accept() -> Answer {
        Answer {
            code: packet::ACCESS_ACCEPT,
            attributes: Vec::new(),
        }
    }

    fn result(&self) -> &'static str {
        match self.code {
            packet::ACCESS_ACCEPT => "accept",
            packet::ACCESS_CHALLENGE => "challenge",
            _ => "reject",
        }
    }
}

/// Binds the `[radius]` listeners and starts serving them (nothing when RADIUS is off). The
/// error names the address that could not be bound.
pub async fn start(
    app: Arc<App>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, (SocketAddr, std::io::Error)> {
    let cfg = app.live.get();
    if !cfg.radius.enabled {
        return Ok(Vec::new());
    }
    let mut sockets = Vec::new();
    for addr in &cfg.radius.listen {
        sockets.push(Arc::new(
            UdpSocket::bind(addr).await.map_err(|e| (*addr, e))?,
        ));
    }
    let directory = match Directory::new(&cfg.ldap, app.metrics.clone()) {
        Ok(d) => Some(Arc::new(d)),
        Err(e) => {
            tracing::error!(error = %e, "radius: the directory cannot be used; every request is rejected");
            app.metrics.set_ldap_status(Some(e.to_string()));
            None
        }
    };
    for r in ["accept", "reject", "challenge", "dropped", "retransmit"] {
        // Present from the first scrape, at zero.
        app.metrics
            .radius_requests
            .get_or_create(&crate::metrics::ResultLabel { result: r.into() })
            .inc_by(0);
    }
    let radius = Arc::new(Radius {
        app,
        directory,
        challenges: Mutex::new(Challenges::default()),
        replies: Mutex::new(Replies::default()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    });
    let mut tasks = Vec::new();
    for s in sockets {
        if let Ok(a) = s.local_addr() {
            tracing::info!(addr = %a, "radius: listening");
        }
        tasks.push(tokio::spawn(radius.clone().serve(s, shutdown.clone())));
    }
    tasks.push(tokio::spawn(radius.probe_loop(shutdown)));
    Ok(tasks)
}

impl Radius {
    async fn serve(self: Arc<Self>, socket: Arc<UdpSocket>, mut shutdown: watch::Receiver<bool>) {
        let mut buf = vec![0u8; packet::MAX_LEN];
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.changed() => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "radius: receive failed");
                        continue;
                    }
                },
            };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                self.drop_it(from, "too many requests in flight");
                continue;
            };
            let datagram = buf[..n].to_vec();
            let me = self.clone();
            let socket = socket.clone();
            // A request may wait on the directory for seconds: each runs on its own.
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(reply) = me.handle(&datagram, from).await
                    && let Err(e) = socket.send_to(&reply, from).await
                {
                    tracing::warn!(error = %e, to = %from, "radius: reply not sent");
                }
            });
        }
    }

    async fn probe_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(dir) = self.directory.clone() else {
            return;
        };
        loop {
            if let Err(e) = dir.probe().await {
                tracing::warn!(error = %e, "radius: directory probe failed");
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    }

    fn drop_it(&self, from: SocketAddr, why: &str) -> Option<Vec<u8>> {
        self.app.metrics.radius("dropped");
        tracing::warn!(from = %from, why, "radius: request dropped");
        None
    }

    /// One datagram in, at most one datagram out.
    pub async fn handle(&self, raw: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let cfg = self.app.live.get();
        let Some(nas) = cfg
            .radius
            .clients
            .iter()
            .find(|c| c.network.contains(&from.ip()))
        else {
            return self.drop_it(from, "unknown client address");
        };
        let p = match Packet::decode(raw) {
            Ok(p) => p,
            Err(e) => return self.drop_it(from, &e.to_string()),
        };
        if p.code != packet::ACCESS_REQUEST && p.code != packet::STATUS_SERVER {
            return self.drop_it(from, "neither Access-Request nor Status-Server");
        }
        let secret = nas.secret.expose().as_bytes();
        match packet::check_request_authenticator(raw, &p, secret) {
            Authenticity::Invalid => {
                return self.drop_it(from, "bad Message-Authenticator (wrong shared secret?)");
            }
            // RFC 5997 makes it mandatory on Status-Server whatever the setting.
            Authenticity::Absent
                if cfg.radius.require_message_authenticator || p.code == packet::STATUS_SERVER =>
            {
                return self.drop_it(from, "no Message-Authenticator (BlastRADIUS protection)");
            }
            _ => {}
        }
        if p.code == packet::STATUS_SERVER {
            // A NAS's health check (RFC 5997): alive, with nothing cached or counted.
            return packet::encode_reply(
                packet::ACCESS_ACCEPT,
                p.identifier,
                &p.authenticator,
                &[],
                secret,
            )
            .ok();
        }
        let key = (from, p.identifier, p.authenticator);
        let now = self.app.clock.now();
        match self.replies.lock().map(|mut r| r.seen(key, now)) {
            Ok(Seen::New) => {}
            Ok(Seen::Answered(reply)) => {
                self.app.metrics.radius("retransmit");
                tracing::info!(from = %from, id = p.identifier, "radius: retransmission answered from cache");
                return Some(reply);
            }
            Ok(Seen::InFlight) | Err(_) => {
                self.app.metrics.radius("retransmit");
                return None;
            }
        }
        let answer = self.decide(&cfg, nas, &p).await;
        self.app.metrics.radius(answer.result());
        let attrs: Vec<(u8, &[u8])> = answer
            .attributes
            .iter()
            .map(|(t, v)| (*t, v.as_slice()))
            .collect();
        let reply =
            packet::encode_reply(answer.code, p.identifier, &p.authenticator, &attrs, secret)
                .map_err(|e| tracing::error!(error = %e, "radius: reply not encodable"))
                .ok();
        if let Ok(mut r) = self.replies.lock() {
            r.finish(key, reply.clone(), self.app.clock.now());
        }
        reply
    }

    async fn decide(&self, cfg: &Config, nas: &RadiusClient, p: &Packet) -> Answer {
        let Some(user) = p.user_name().filter(|u| !u.is_empty() && u.len() <= 253) else {
            return Answer::reject("User-Name is required");
        };
        if p.attr(packet::CHAP_PASSWORD).is_some() {
            tracing::warn!(user, nas = %nas.name, "radius: CHAP is not supported; configure PAP");
            return Answer::reject("Only PAP is supported");
        }
        let password = p.attr(packet::USER_PASSWORD).and_then(|h| {
            packet::unhide_password(h, nas.secret.expose().as_bytes(), &p.authenticator)
        });
        match p.attr(packet::STATE) {
            Some(state) => {
                let code = password.unwrap_or_default();
                self.answer_code(cfg, nas, user, state, &code).await
            }
            None => self.challenge(cfg, nas, user, password.as_deref()).await,
        }
    }

    /// The first request: the password (mode `challenge`), the phone, a code, a State.
    async fn challenge(
        &self,
        cfg: &Config,
        nas: &RadiusClient,
        user: &str,
        password: Option<&[u8]>,
    ) -> Answer {
        let entry = match self.lookup(cfg, nas, user, password).await {
            Ok(e) => e,
            Err(refusal) => return refusal,
        };
        let Some(phone) = entry.phone else {
            tracing::warn!(user, dn = %entry.dn, attributes = ?cfg.ldap.phone_attributes, "radius: no phone number in the directory for this user; rejected");
            return Answer::reject(
                "No phone number is on file for your account; ask your administrator",
            );
        };
        let usable: Vec<ChannelKind> = self
            .app
            .dispatcher
            .health()
            .into_iter()
            .filter(|(_, h)| h.usable)
            .map(|(k, _)| k)
            .collect();
        if usable.is_empty() {
            return self.no_channel(cfg, nas, user);
        }
        let started = verify::start(
            &self.app,
            cfg,
            &radius_client(nas),
            verify::StartRequest {
                to: phone,
                channel: None,
                locale: None,
                length: None,
                ttl: cfg.otp.default_ttl,
                // The RADIUS user is the end user: `limits.per_user` counts sign-ins per name.
                caller: crate::abuse::Caller {
                    user: Some(user.to_owned()),
                    ip: None,
                },
            },
        )
        .await;
        let s = match started {
            Ok(s) => s,
            Err(e) if e.code == "invalid_phone_number" => {
                tracing::warn!(user, dn = %entry.dn, "radius: the phone number in the directory is not valid; rejected");
                return Answer::reject(
                    "The phone number on file is not valid; ask your administrator",
                );
            }
            Err(e) if e.code == "no_channel" => return self.no_channel(cfg, nas, user),
            Err(e) if e.code == "rate_limited" => {
                tracing::warn!(user, nas = %nas.name, "radius: code limit reached; rejected");
                return Answer::reject("Too many codes were requested; try again later");
            }
            Err(e) => {
                tracing::warn!(user, nas = %nas.name, code = e.code, reason = %e.message, "radius: no code could be sent; rejected");
                return Answer::reject("A code cannot be sent to your phone");
            }
        };
        let prompt = cfg
            .radius
            .prompt
            .replace("{channel}", first_channel(&cfg.policy.order, &usable))
            .replace("{last_digits}", last_digits(&s.recipient));
        tracing::info!(user, nas = %nas.name, verification = %s.id, "radius: code sent; challenge");
        self.open_challenge(nas, user, &s.id, s.expires_at, prompt)
    }

    /// The user's entry: found with the service account, and in mode `challenge` its
    /// password checked by a bind. A refusal comes back as the Reject to send.
    async fn lookup(
        &self,
        cfg: &Config,
        nas: &RadiusClient,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<UserEntry, Answer> {
        let Some(dir) = &self.directory else {
            return Err(Answer::reject("The directory is not available"));
        };
        let search = Search {
            base_dn: &cfg.ldap.base_dn,
            user_filter: &cfg.ldap.user_filter,
            phone_attributes: &cfg.ldap.phone_attributes,
        };
        let found = match (cfg.radius.mode, password) {
            (RadiusMode::Challenge, Some(pw)) => dir.authenticate(&search, user, pw).await,
            (RadiusMode::Challenge, None) => {
                return Err(Answer::reject("User-Password is required"));
            }
            (RadiusMode::OtpOnly, _) => dir.find(&search, user).await,
        };
        found.map_err(|e| match e {
            DirectoryError::BadCredentials {
                reason: Some(r), ..
            } if crate::ldap::is_account_state(r) => {
                tracing::warn!(user, nas = %nas.name, reason = %e, "radius: the directory refuses this account; rejected");
                Answer::reject(&format!("Sign-in refused: {r}; ask your administrator"))
            }
            DirectoryError::BadCredentials { .. } | DirectoryError::NoSuchUser(_) => {
                tracing::info!(user, nas = %nas.name, reason = %e, "radius: rejected");
                Answer::reject("Invalid user name or password")
            }
            e => {
                tracing::error!(user, nas = %nas.name, error = %e, "radius: directory failed; rejected");
                Answer::reject("Sign-in is not possible right now (directory unavailable)")
            }
        })
    }

    fn no_channel(&self, cfg: &Config, nas: &RadiusClient, user: &str) -> Answer {
        match cfg.radius.failmode {
            FailMode::Safe => {
                tracing::error!(user, nas = %nas.name, "radius: NO CHANNEL CAN DELIVER A CODE; accepted on the password alone (failmode = safe)");
                Answer::accept()
            }
            FailMode::Secure => {
                tracing::error!(user, nas = %nas.name, "radius: no channel can deliver a code; rejected (failmode = secure)");
                Answer::reject("Codes cannot be delivered right now; try again later")
            }
        }
    }

    fn open_challenge(
        &self,
        nas: &RadiusClient,
        user: &str,
        verification: &str,
        expires_at: crate::clock::Timestamp,
        message: String,
    ) -> Answer {
        let now = self.app.clock.now();
        let pending = Pending {
            verification: verification.to_owned(),
            user: user.to_owned(),
            nas: nas.name.clone(),
            expires_at,
        };
        let Some(state) = self
            .challenges
            .lock()
            .ok()
            .and_then(|mut c| c.open(pending, now))
        else {
            return Answer::reject("The gateway is busy; try again later");
        };
        let timeout = u32::try_from(now.until(expires_at).as_secs()).unwrap_or(u32::MAX);
        Answer {
            code: packet::ACCESS_CHALLENGE,
            attributes: vec![
                (packet::STATE, state.to_vec()),
                (packet::REPLY_MESSAGE, message.into_bytes()),
                (packet::SESSION_TIMEOUT, timeout.to_be_bytes().to_vec()),
            ],
        }
    }

    /// The second request: the State names the challenge, User-Password carries the code.
    async fn answer_code(
        &self,
        cfg: &Config,
        nas: &RadiusClient,
        user: &str,
        state: &[u8],
        code: &[u8],
    ) -> Answer {
        let Some(pending) = self.challenges.lock().ok().and_then(|mut c| c.take(state)) else {
            tracing::info!(user, nas = %nas.name, "radius: unknown, used or expired State; rejected");
            return Answer::reject("This sign-in has expired; start again");
        };
        if pending.user != user || pending.nas != nas.name {
            tracing::warn!(user, nas = %nas.name, "radius: a State presented by another user or client; rejected");
            return Answer::reject("This sign-in has expired; start again");
        }
        if self.app.clock.now() >= pending.expires_at {
            tracing::info!(user, nas = %nas.name, "radius: the code expired; rejected");
            return Answer::reject("The code has expired; start again");
        }
        let code = String::from_utf8_lossy(code);
        let client = radius_client(nas);
        let outcome =
            verify::check(&self.app, cfg, &client.name, &pending.verification, &code).await;
        let retry = |left: Option<u32>| {
            let msg = match left {
                Some(1) => "Wrong code; 1 attempt left".to_string(),
                Some(n) => format!("Wrong code; {n} attempts left"),
                None => "Enter the code you received".to_string(),
            };
            self.open_challenge(nas, user, &pending.verification, pending.expires_at, msg)
        };
        let log = |result: &str| {
            tracing::info!(user, nas = %nas.name, verification = %pending.verification, result, "radius: code checked");
        };
        match outcome {
            Ok(CheckOutcome::Approved) => {
                log("approved");
                Answer::accept()
            }
            Ok(CheckOutcome::Denied { left }) if left > 0 => {
                log("wrong code");
                retry(Some(left))
            }
            Ok(CheckOutcome::Denied { .. } | CheckOutcome::MaxAttempts) => {
                log("too many wrong codes");
                Answer::reject("Too many wrong codes; start again")
            }
            Ok(CheckOutcome::Expired) => {
                log("expired");
                Answer::reject("The code has expired; start again")
            }
            Ok(CheckOutcome::NotFound | CheckOutcome::NotPending(_)) => {
                log("not pending");
                Answer::reject("This sign-in has expired; start again")
            }
            // Empty or too long to be a code: not counted, asked again.
            Err(e) if e.code == "invalid_code" => retry(None),
            Err(e) => {
                tracing::error!(user, nas = %nas.name, reason = %e.message, "radius: the check failed; rejected");
                Answer::reject("Sign-in is not possible right now")
            }
        }
    }
}

/// The channel the prompt names: the first in the policy's order that can carry a code now
/// (the code may still fall back to the next; the prompt is a hint, not a promise).
fn first_channel(order: &[ChannelKind], usable: &[ChannelKind]) -> &'static str {
    match order.iter().find(|k| usable.contains(k)) {
        Some(ChannelKind::WhatsApp) => "WhatsApp",
        _ => "SMS",
    }
}

/// The last four characters of an E.164 number, for the prompt.
fn last_digits(e164: &str) -> &str {
    e164.get(e164.len().saturating_sub(4)..).unwrap_or("")
}

/// The API client a NAS acts as: its verifications, limits and messages are its own.
fn radius_client(nas: &RadiusClient) -> ClientConfig {
    ClientConfig {
        name: format!("radius:{}", nas.name),
        // Never matched: this client exists only here, never in the API's client list.
        key_sha256: [0; 32],
        password_sha256: None,
        allow_ips: vec![nas.network],
        whatsapp: true,
        order: None,
        countries: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_names_the_first_usable_channel_and_the_number_end() {
        let order = [ChannelKind::WhatsApp, ChannelKind::Sms];
        assert_eq!(first_channel(&order, &order), "WhatsApp");
        assert_eq!(first_channel(&order, &[ChannelKind::Sms]), "SMS");
        assert_eq!(
            first_channel(&[ChannelKind::Sms, ChannelKind::WhatsApp], &order),
            "SMS"
        );
        assert_eq!(last_digits("+919876543210"), "3210");
        assert_eq!(last_digits("+12"), "+12");
    }

    #[test]
    fn a_nas_acts_as_its_own_client() {
        let nas = RadiusClient {
            name: "vpn".into(),
            network: "10.0.0.0/24".parse().unwrap(),
            secret: crate::secret::Secret::new("s"),
        };
        let c = radius_client(&nas);
        assert_eq!(c.name, "radius:vpn");
        assert!(c.whatsapp && c.order.is_none() && c.countries.is_none());
    }

    #[test]
    fn answers_name_their_result() {
        assert_eq!(Answer::accept().result(), "accept");
        assert_eq!(Answer::reject("no").result(), "reject");
        let r = Answer::reject("Invalid user name or password");
        assert_eq!(
            r.attributes,
            vec![(
                packet::REPLY_MESSAGE,
                b"Invalid user name or password".to_vec()
            )]
        );
    }
}
