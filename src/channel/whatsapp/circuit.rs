//! The WhatsApp circuit breaker, pure (time is passed in) so it is tested with a manual clock.
//!
//! closed --ChannelDown-class error--> open(reason) --cooldown--> half-open: the next real
//! message is the one probe (others are refused meanwhile); probe success closes, probe
//! failure re-opens with a fresh cooldown. Separately, 131057 pauses WhatsApp for about a
//! minute without opening the circuit (Meta is in maintenance; nothing is broken on our side).
//! Transport failures (no connection, no answer) open it too once [`TRANSPORT_THRESHOLD`] of
//! them fall within [`TRANSPORT_WINDOW`] with no success between: a dead network or a hung
//! Cloud API is then learned once, and later codes go straight to SMS instead of each waiting
//! out the WhatsApp timeout.
//!
//! A template missing in one language (132001) is no outage: [`Languages`] remembers that
//! language as unusable for [`LANGUAGE_QUARANTINE`] while the circuit stays closed, so other
//! languages keep using WhatsApp.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::Timestamp;

/// The breaker's state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        code: Option<String>,
        reason: String,
        until: Timestamp,
    },
    HalfOpen {
        code: Option<String>,
        reason: String,
        probing: bool,
    },
}

/// Whether a send may go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `probe` is true for the single half-open probe.
    Go {
        /// This request decides whether the circuit closes.
        probe: bool,
    },
    /// The circuit is open (or half-open with its probe in flight): no request.
    Open {
        /// The error code that opened it.
        code: Option<String>,
        /// Why it opened.
        reason: String,
    },
    /// WhatsApp is paused (131057) for `remaining`.
    Paused {
        /// Time left.
        remaining: Duration,
    },
}

/// What health shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CircuitStatus {
    /// All good.
    Closed,
    /// Open, with the reason: no request goes out.
    Open {
        /// Why it opened.
        reason: String,
    },
    /// Cooldown over: the next message is the probe (so the channel must be offered one).
    HalfOpen {
        /// Why it opened.
        reason: String,
    },
    /// Paused for `remaining`.
    Paused {
        /// Time left.
        remaining: Duration,
    },
}

/// The circuit breaker with the 131057 pause.
#[derive(Clone, Debug)]
pub struct Circuit {
    state: State,
    cooldown: Duration,
    paused_until: Option<Timestamp>,
    /// Transport failures since the last success, oldest first, within the window.
    transport: Vec<Timestamp>,
}

/// Transport failures within [`TRANSPORT_WINDOW`] that open the circuit.
pub const TRANSPORT_THRESHOLD: usize = 3;
/// How far back transport failures count.
pub const TRANSPORT_WINDOW: Duration = Duration::from_secs(60);

impl Circuit {
    /// A closed circuit that waits `cooldown` before probing once opened.
    pub fn new(cooldown: Duration) -> Circuit {
        Circuit {
            state: State::Closed,
            cooldown,
            paused_until: None,
            transport: Vec::new(),
        }
    }

    /// Changes the cooldown (config reload); an open circuit keeps its current deadline.
    pub fn set_cooldown(&mut self, cooldown: Duration) {
        self.cooldown = cooldown;
    }

    /// Asks to send at `now`. A `Go { probe: true }` must be answered with
    /// [`Circuit::success`], [`Circuit::failure`] or [`Circuit::probe_abandoned`].
    pub fn admit(&mut self, now: Timestamp) -> Admission {
        self.tick(now);
        match &mut self.state {
            State::Open { code, reason, .. } => {
                return Admission::Open {
                    code: code.clone(),
                    reason: reason.clone(),
                };
            }
            State::HalfOpen {
                code,
                reason,
                probing,
            } => {
                if *probing {
                    return Admission::Open {
                        code: code.clone(),
                        reason: reason.clone(),
                    };
                }
                *probing = true;
                return Admission::Go { probe: true };
            }
            State::Closed => {}
        }
        if let Some(until) = self.paused_until {
            return Admission::Paused {
                remaining: now.until(until),
            };
        }
        Admission::Go { probe: false }
    }

    /// Moves open -> half-open once the cooldown is over; ends an expired pause.
    fn tick(&mut self, now: Timestamp) {
        if let State::Open {
            code,
            reason,
            until,
        } = &self.state
            && now >= *until
        {
            self.state = State::HalfOpen {
                code: code.clone(),
                reason: reason.clone(),
                probing: false,
            };
        }
        if self.paused_until.is_some_and(|u| now >= u) {
            self.paused_until = None;
        }
    }

    /// Meta answered in a way that proves the channel works (accepted, or a recipient
    /// problem): closes a half-open circuit.
    pub fn success(&mut self) {
        self.transport.clear();
        if matches!(self.state, State::HalfOpen { .. }) {
            self.state = State::Closed;
        }
    }

    /// No connection or no answer at `now`. Returns true when this one opened the circuit.
    pub fn transport_failure(&mut self, now: Timestamp) -> bool {
        let oldest = Timestamp(
            now.0
                .saturating_sub(i64::try_from(TRANSPORT_WINDOW.as_millis()).unwrap_or(i64::MAX)),
        );
        self.transport.retain(|t| *t > oldest);
        self.transport.push(now);
        if self.transport.len() < TRANSPORT_THRESHOLD || !matches!(self.state, State::Closed) {
            return false;
        }
        let n = self.transport.len();
        self.transport.clear();
        let reason = format!(
            "the Cloud API cannot be reached ({n} connection failures or timeouts within {}s)",
            TRANSPORT_WINDOW.as_secs()
        );
        self.open(now, None, reason);
        true
    }

    /// A ChannelDown-class error: opens the circuit (or re-opens it) until `now + cooldown`.
    pub fn open(&mut self, now: Timestamp, code: Option<String>, reason: String) {
        self.state = State::Open {
            code,
            reason,
            until: now.plus(self.cooldown),
        };
    }

    /// A probe that failed without proving anything (timeout, 5xx): re-open with the old
    /// reason. Outside a probe this does nothing: one temporary error is no reason to open.
    pub fn failure(&mut self, now: Timestamp, probe: bool) {
        if !probe {
            return;
        }
        if let State::HalfOpen { code, reason, .. } = &self.state {
            let (code, reason) = (code.clone(), reason.clone());
            self.open(now, code, reason);
        }
    }

    /// The probe never reached Meta (rate cap, cancelled): let the next message probe.
    pub fn probe_abandoned(&mut self) {
        if let State::HalfOpen { probing, .. } = &mut self.state {
            *probing = false;
        }
    }

    /// 131057: pause WhatsApp for `d` from `now`.
    pub fn pause(&mut self, now: Timestamp, d: Duration) {
        self.paused_until = Some(now.plus(d));
    }

    /// The state as health shows it.
    pub fn status(&mut self, now: Timestamp) -> CircuitStatus {
        self.tick(now);
        match &self.state {
            State::Open { reason, .. } => CircuitStatus::Open {
                reason: reason.clone(),
            },
            State::HalfOpen { reason, .. } => CircuitStatus::HalfOpen {
                reason: reason.clone(),
            },
            State::Closed => match self.paused_until {
                Some(u) => CircuitStatus::Paused {
                    remaining: now.until(u),
                },
                None => CircuitStatus::Closed,
            },
        }
    }
}

/// How long a language Meta refused with 132001 is not asked for again. Long enough not to
/// pay a refused request per code, short enough to pick up a translation approved meanwhile.
pub const LANGUAGE_QUARANTINE: Duration = Duration::from_secs(10 * 60);

/// Template languages found missing or unapproved (132001), each until a time.
#[derive(Clone, Debug, Default)]
pub struct Languages {
    unusable: BTreeMap<String, Timestamp>,
}

impl Languages {
    /// `language` is missing at `now`: not asked for again for `d`.
    pub fn mark(&mut self, language: &str, now: Timestamp, d: Duration) {
        self.unusable.insert(language.to_string(), now.plus(d));
    }

    /// Whether `language` may be asked for at `now`.
    pub fn usable(&mut self, language: &str, now: Timestamp) -> bool {
        self.prune(now);
        !self.unusable.contains_key(language)
    }

    /// The languages unusable at `now`, in order.
    pub fn unusable(&mut self, now: Timestamp) -> Vec<String> {
        self.prune(now);
        self.unusable.keys().cloned().collect()
    }

    /// Forgets every mark (another template was configured).
    pub fn clear(&mut self) {
        self.unusable.clear();
    }

    fn prune(&mut self, now: Timestamp) {
        self.unusable.retain(|_, until| now < *until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const COOL: Duration = Duration::from_secs(30);

    #[test]
    fn transport_failures_open_only_in_a_row_within_the_window() {
        let mut c = Circuit::new(COOL);
        let t = |s: i64| Timestamp(s * 1000);
        assert!(!c.transport_failure(t(0)));
        assert!(!c.transport_failure(t(1)));
        c.success();
        assert!(
            !c.transport_failure(t(2)),
            "a success starts the count again"
        );
        assert!(!c.transport_failure(t(3)));
        // Failures further apart than the window never add up.
        let mut spread = Circuit::new(COOL);
        for s in [0, 61, 122, 183] {
            assert!(!spread.transport_failure(t(s)), "{s}");
        }
        assert!(
            c.transport_failure(t(4)),
            "third in a row within the window"
        );
        assert!(
            matches!(c.admit(t(5)), Admission::Open { code: None, reason } if reason.contains("cannot be reached"))
        );
        // The cooldown ends with one probe; its success closes the circuit.
        assert_eq!(c.admit(t(34)), Admission::Go { probe: true });
        c.success();
        assert_eq!(c.admit(t(35)), Admission::Go { probe: false });
    }

    fn open(c: &mut Circuit, now: Timestamp) {
        c.open(
            now,
            Some("190".into()),
            "access token expired or invalid (190)".into(),
        );
    }

    #[test]
    fn closed_lets_everything_through() {
        let mut c = Circuit::new(COOL);
        assert_eq!(c.admit(Timestamp(0)), Admission::Go { probe: false });
        c.failure(Timestamp(0), false);
        assert_eq!(c.admit(Timestamp(1)), Admission::Go { probe: false });
        assert_eq!(c.status(Timestamp(1)), CircuitStatus::Closed);
    }

    #[test]
    fn open_refuses_until_cooldown_then_one_probe_closes() {
        let clock = ManualClock::new(Timestamp(1_000));
        let mut c = Circuit::new(COOL);
        open(&mut c, clock.now());
        let refused = c.admit(clock.now());
        assert!(
            matches!(&refused, Admission::Open { code: Some(k), reason } if k == "190" && reason.contains("token")),
            "{refused:?}"
        );
        clock.advance(COOL - Duration::from_millis(1));
        assert!(matches!(c.admit(clock.now()), Admission::Open { .. }));
        assert!(matches!(c.status(clock.now()), CircuitStatus::Open { .. }));
        clock.advance(Duration::from_millis(1));
        assert!(matches!(
            c.status(clock.now()),
            CircuitStatus::HalfOpen { .. }
        ));
        assert_eq!(c.admit(clock.now()), Admission::Go { probe: true });
        // Only one probe at a time.
        assert!(matches!(c.admit(clock.now()), Admission::Open { .. }));
        c.success();
        assert_eq!(c.admit(clock.now()), Admission::Go { probe: false });
        assert_eq!(c.status(clock.now()), CircuitStatus::Closed);
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cooldown() {
        let clock = ManualClock::new(Timestamp(0));
        let mut c = Circuit::new(COOL);
        open(&mut c, clock.now());
        clock.advance(COOL);
        assert_eq!(c.admit(clock.now()), Admission::Go { probe: true });
        c.failure(clock.now(), true);
        clock.advance(COOL - Duration::from_millis(1));
        let a = c.admit(clock.now());
        assert!(
            matches!(&a, Admission::Open { reason, .. } if reason.contains("190")),
            "{a:?}"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(c.admit(clock.now()), Admission::Go { probe: true });
        // A ChannelDown answer to the probe re-opens with the new reason.
        c.open(
            clock.now(),
            Some("132001".into()),
            "template missing (132001)".into(),
        );
        assert_eq!(
            c.status(clock.now()),
            CircuitStatus::Open {
                reason: "template missing (132001)".into()
            }
        );
    }

    #[test]
    fn abandoned_probe_lets_the_next_message_probe() {
        let mut c = Circuit::new(COOL);
        open(&mut c, Timestamp(0));
        let t = Timestamp(0).plus(COOL);
        assert_eq!(c.admit(t), Admission::Go { probe: true });
        c.probe_abandoned();
        assert_eq!(c.admit(t), Admission::Go { probe: true });
    }

    #[test]
    fn pause_lasts_its_time_and_does_not_open() {
        let clock = ManualClock::new(Timestamp(0));
        let mut c = Circuit::new(COOL);
        c.pause(clock.now(), Duration::from_secs(60));
        assert_eq!(
            c.admit(clock.now()),
            Admission::Paused {
                remaining: Duration::from_secs(60)
            }
        );
        clock.advance(Duration::from_secs(59));
        assert_eq!(
            c.status(clock.now()),
            CircuitStatus::Paused {
                remaining: Duration::from_secs(1)
            }
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(c.admit(clock.now()), Admission::Go { probe: false });
        assert_eq!(c.status(clock.now()), CircuitStatus::Closed);
    }

    #[test]
    fn a_missing_language_is_remembered_for_its_time_only() {
        let mut l = Languages::default();
        let t = |s: i64| Timestamp(s * 1000);
        assert!(l.usable("hi", t(0)));
        l.mark("hi", t(0), Duration::from_secs(600));
        assert!(!l.usable("hi", t(1)));
        assert!(l.usable("en_US", t(1)), "other languages are untouched");
        assert_eq!(l.unusable(t(599)), ["hi"]);
        assert!(l.usable("hi", t(600)), "the quarantine ends");
        assert!(l.unusable(t(600)).is_empty());
        l.mark("id", t(700), Duration::from_secs(600));
        l.clear();
        assert!(l.usable("id", t(701)));
    }

    #[test]
    fn cooldown_change_applies_to_the_next_opening() {
        let mut c = Circuit::new(COOL);
        c.set_cooldown(Duration::from_secs(1));
        open(&mut c, Timestamp(0));
        assert_eq!(c.admit(Timestamp(1_000)), Admission::Go { probe: true });
    }
}
