//! Protection against SMS pumping (toll fraud) beyond the store's limits: velocity limits by
//! number block, end user and end-user address ([`velocity`]), and the conversion breaker on
//! Verify API traffic ([`breaker`]). Country and number-type rules are the policy's and the
//! accept pipeline's (`policy.sms_countries`, `policy.number_types` in `api::submit`).

pub mod breaker;
pub mod velocity;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use breaker::Breaker;
pub use velocity::{Scope, Ticket, Velocity, prefix_of};

use crate::config::{Config, Rate};

/// Who the caller says the code is for: its end user and that user's address. Optional; a
/// caller that names them gets `limits.per_user` and `limits.per_ip`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The end user's name or id at the caller.
    pub user: Option<String>,
    /// The end user's IP address (an IPv6 address counts by its /64).
    pub ip: Option<IpAddr>,
}

/// Why a caller's `user` or `ip` was refused: the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerError {
    /// "user" or "ip".
    pub field: &'static str,
    /// The rule.
    pub message: &'static str,
}

impl Caller {
    /// Checks the fields as a caller sent them.
    pub fn new(user: Option<String>, ip: Option<&str>) -> Result<Caller, CallerError> {
        if let Some(u) = &user
            && (u.is_empty() || u.len() > 128 || u.chars().any(char::is_control))
        {
            return Err(CallerError {
                field: "user",
                message: "user must be 1 to 128 characters without control characters",
            });
        }
        let ip = match ip {
            None => None,
            Some(s) => Some(s.trim().parse::<IpAddr>().map_err(|_| CallerError {
                field: "ip",
                message: "ip must be an IPv4 or IPv6 address",
            })?),
        };
        Ok(Caller { user, ip })
    }

    /// The key `limits.per_ip` counts under.
    fn ip_key(&self) -> Option<String> {
        self.ip.map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        })
    }
}

/// The velocity limits configured for this number and caller, each with the key it counts
/// under: one function for the in-memory counts ([`Abuse::admit`]) and the shared ones a pair
/// keeps on the message row in PostgreSQL.
pub fn velocity_keys(cfg: &Config, e164: &str, caller: &Caller) -> Vec<(Scope, String, Rate)> {
    let l = &cfg.limits;
    let mut keys = Vec::new();
    if let Some(r) = l.per_prefix
        && let Some(p) = prefix_of(e164, l.prefix_digits)
    {
        keys.push((Scope::Prefix, p.to_owned(), r));
    }
    if let (Some(r), Some(u)) = (l.per_user, &caller.user) {
        keys.push((Scope::User, u.clone(), r));
    }
    if let (Some(r), Some(ip)) = (l.per_ip, caller.ip_key()) {
        keys.push((Scope::Ip, ip, r));
    }
    keys
}

/// The gateway's abuse state: velocity counts and the conversion breaker.
#[derive(Default)]
pub struct Abuse {
    velocity: Mutex<Velocity>,
    /// The conversion breaker.
    pub breaker: Arc<Breaker>,
}

impl Abuse {
    /// Takes a place under every velocity limit configured for this number and caller, or
    /// says which limit is full and for how long.
    pub fn admit(
        &self,
        cfg: &Config,
        e164: &str,
        caller: &Caller,
        now: i64,
    ) -> Result<Ticket, (Scope, Duration)> {
        let keys = velocity_keys(cfg, e164, caller);
        if keys.is_empty() {
            return Ok(Ticket::default());
        }
        match self.velocity.lock() {
            Ok(mut v) => v.admit(&keys, now),
            // A panic while counting: fail open rather than refuse every message.
            Err(_) => Ok(Ticket::default()),
        }
    }

    /// Rebuilds the number-block counts (`limits.per_prefix`) from the outbox's sends inside
    /// the window, so a restart does not hand a pumping run a fresh allowance.
    pub async fn rebuild(
        &self,
        store: &crate::store::Store,
        cfg: &Config,
        now: i64,
    ) -> Result<usize, crate::store::StoreError> {
        let Some(rate) = cfg.limits.per_prefix else {
            return Ok(0);
        };
        if store.is_shared() {
            // A pair counts in PostgreSQL, from the rows themselves.
            return Ok(0);
        }
        let window = i64::try_from(rate.window.as_millis()).unwrap_or(i64::MAX);
        let sends: Vec<(String, i64)> = store
            .recipients_since(now.saturating_sub(window))
            .await?
            .into_iter()
            .filter_map(|(to, at)| Some((prefix_of(&to, cfg.limits.prefix_digits)?.to_owned(), at)))
            .collect();
        let n = sends.len();
        if let Ok(mut v) = self.velocity.lock() {
            v.seed(Scope::Prefix, &rate, sends);
        }
        Ok(n)
    }

    /// Gives back what [`Abuse::admit`] took for a request the store refused.
    pub fn release(&self, ticket: Ticket) {
        if let Ok(mut v) = self.velocity.lock() {
            v.release(ticket);
        }
    }

    /// Starts a refresh of the conversion breaker when one is due (a task; returns at once).
    pub fn poll(&self, store: &crate::store::Store, cfg: &Config, now: i64) {
        if !self.breaker.due(now) {
            return;
        }
        let (breaker, store) = (self.breaker.clone(), store.clone());
        let settings = breaker::Settings::of(cfg);
        tokio::spawn(async move { breaker.refresh(&store, settings, now).await });
    }
}

/// Sets the breaker's metrics and starts a refresh when due (for `/metrics`, so a breaker
/// closes and shows on time even while nothing is accepted).
pub fn observe(app: &crate::api::App, m: &crate::metrics::Metrics) {
    let now = app.clock.now().0;
    app.abuse.poll(&app.store, &app.live.get(), now);
    let b = &app.abuse.breaker;
    m.sms_breaker_open
        .set(i64::try_from(b.open(now).len()).unwrap_or(i64::MAX));
    m.sms_breaker_trips
        .inc_by(b.trips().saturating_sub(m.sms_breaker_trips.get()));
}

/// The breakers open now, for `/readyz` (which also starts a refresh when one is due).
pub fn paused(app: &crate::api::App) -> Vec<breaker::Trip> {
    let now = app.clock.now().0;
    app.abuse.poll(&app.store, &app.live.get(), now);
    app.abuse.breaker.open(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_fields_are_checked_and_v6_counts_by_its_64() {
        let c = Caller::new(Some("alice".into()), Some("2001:db8:1:2:3::9")).unwrap();
        assert_eq!(c.ip_key().as_deref(), Some("2001:db8:1:2::/64"));
        let c = Caller::new(None, Some(" 192.0.2.7")).unwrap();
        assert_eq!(c.ip_key().as_deref(), Some("192.0.2.7"));
        assert_eq!(Caller::new(None, Some("nope")).unwrap_err().field, "ip");
        assert_eq!(
            Caller::new(Some(String::new()), None).unwrap_err().field,
            "user"
        );
        assert_eq!(Caller::new(None, None).unwrap(), Caller::default());
    }
}
