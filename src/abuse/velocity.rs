//! Sliding-window counts for the limits keyed by something the outbox does not hold, or holds
//! only inside a number: a number block (`limits.per_prefix`), the end user and the end user's
//! address a caller names (`limits.per_user`, `limits.per_ip`).
//!
//! A check and its count happen under one lock, so concurrent requests cannot both take the
//! last place; a request the store then refuses gives its places back ([`Ticket`]). The counts
//! live in memory. The outbox holds every accepted number, so the block counts are rebuilt
//! from it at start ([`Velocity::seed`]); the end user and address are not stored, so those
//! counts start empty after a restart.
//!
//! This is the single box's (SQLite's) counter. On PostgreSQL these counts are not kept here:
//! the keys ([`super::velocity_keys`]) are stored on the message row and counted in the accept
//! transaction, so the limits hold across a pair (`store::postgres`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::config::Rate;

/// What a velocity limit counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The number less its last digits.
    Prefix,
    /// The end user the caller names.
    User,
    /// The end user's address the caller names.
    Ip,
}

impl Scope {
    /// The configuration key.
    pub fn key(self) -> &'static str {
        match self {
            Scope::Prefix => "limits.per_prefix",
            Scope::User => "limits.per_user",
            Scope::Ip => "limits.per_ip",
        }
    }

    /// The refusal's stable code.
    pub fn code(self) -> &'static str {
        match self {
            Scope::Prefix => "prefix_limited",
            Scope::User => "user_limited",
            Scope::Ip => "ip_limited",
        }
    }

    fn slot(self) -> usize {
        match self {
            Scope::Prefix => 0,
            Scope::User => 1,
            Scope::Ip => 2,
        }
    }
}

/// The places one accepted request took; [`Velocity::release`] gives them back.
#[derive(Debug, Default)]
pub struct Ticket {
    taken: Vec<(Scope, String, i64)>,
}

/// The counts, per scope and key: the newest send times (unix ms), oldest first, at most as
/// many as the limit's count.
#[derive(Default)]
pub struct Velocity {
    sends: HashMap<(Scope, String), VecDeque<i64>>,
    /// The longest window each scope was last checked with, for pruning.
    windows: [i64; 3],
    pruned_at: i64,
}

fn window_ms(rate: &Rate) -> i64 {
    i64::try_from(rate.window.as_millis()).unwrap_or(i64::MAX)
}

impl Velocity {
    /// Takes a place under every `(scope, key, rate)` at `now`, or none when one of them is
    /// full: then the scope and how long until a place frees.
    pub fn admit(
        &mut self,
        keys: &[(Scope, String, Rate)],
        now: i64,
    ) -> Result<Ticket, (Scope, Duration)> {
        self.prune(now);
        for (scope, key, rate) in keys {
            let window = window_ms(rate);
            self.windows[scope.slot()] = window;
            let since = now.saturating_sub(window);
            let Some(times) = self.sends.get(&(*scope, key.clone())) else {
                continue;
            };
            let inside = times.iter().filter(|&&t| t > since).count();
            if inside >= rate.count as usize {
                // The place frees when the count-th newest send leaves the window.
                let nth = times.len().saturating_sub(rate.count as usize);
                let leaves = times.get(nth).map_or(now, |t| t.saturating_add(window));
                let wait = u64::try_from(leaves.saturating_sub(now)).unwrap_or(0);
                return Err((*scope, Duration::from_millis(wait.max(1))));
            }
        }
        let mut ticket = Ticket::default();
        for (scope, key, rate) in keys {
            let times = self.sends.entry((*scope, key.clone())).or_default();
            times.push_back(now);
            while times.len() > rate.count as usize {
                times.pop_front();
            }
            ticket.taken.push((*scope, key.clone(), now));
        }
        Ok(ticket)
    }

    /// Counts sends made before this process started (`(key, unix ms)`, any order) under
    /// `scope`, keeping the newest `rate.count` of each key as [`Velocity::admit`] does.
    pub fn seed(&mut self, scope: Scope, rate: &Rate, mut sends: Vec<(String, i64)>) {
        self.windows[scope.slot()] = window_ms(rate);
        sends.sort_by_key(|(_, at)| *at);
        for (key, at) in sends {
            let times = self.sends.entry((scope, key)).or_default();
            times.push_back(at);
            while times.len() > rate.count as usize {
                times.pop_front();
            }
        }
    }

    /// Gives back the places a request took (the store refused it after all).
    pub fn release(&mut self, ticket: Ticket) {
        for (scope, key, at) in ticket.taken {
            if let Some(times) = self.sends.get_mut(&(scope, key))
                && let Some(i) = times.iter().rposition(|&t| t == at)
            {
                times.remove(i);
            }
        }
    }

    /// Drops keys with nothing left in their window, at most every ten seconds.
    fn prune(&mut self, now: i64) {
        if now.saturating_sub(self.pruned_at) < 10_000 {
            return;
        }
        let windows = self.windows;
        self.sends.retain(|(scope, _), times| {
            let since = now.saturating_sub(windows[scope.slot()]);
            times.back().is_some_and(|&t| t > since)
        });
        self.pruned_at = now;
    }
}

/// A number's block: its E.164 form less the last `digits` digits ("+91987654" for
/// "+919876543210" and 4). `None` when nothing would be left but the '+'.
pub fn prefix_of(e164: &str, digits: u32) -> Option<&str> {
    let keep = e164.len().checked_sub(usize::try_from(digits).ok()?)?;
    (keep > 1).then(|| &e164[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, secs: u64) -> Rate {
        Rate {
            count,
            window: Duration::from_secs(secs),
        }
    }

    fn prefix(p: &str, r: Rate) -> Vec<(Scope, String, Rate)> {
        vec![(Scope::Prefix, p.to_owned(), r)]
    }

    #[test]
    fn a_sequential_run_trips_its_block_and_others_flow() {
        let mut v = Velocity::default();
        let r = rate(3, 60);
        let mut took = Vec::new();
        for n in 0..3 {
            let to = format!("+9198765432{n:02}");
            let p = prefix_of(&to, 3).unwrap().to_owned();
            took.push(v.admit(&prefix(&p, r), 1_000 + n).unwrap());
        }
        let (scope, wait) = v.admit(&prefix("+919876543", r), 2_000).unwrap_err();
        assert_eq!(scope, Scope::Prefix);
        // The first of the three leaves the window at 61.0 s.
        assert_eq!(wait, Duration::from_millis(59_000));
        assert!(v.admit(&prefix("+919876544", r), 2_000).is_ok());
        // Past the window there is room again.
        assert!(v.admit(&prefix("+919876543", r), 61_001).is_ok());
    }

    #[test]
    fn a_refused_request_takes_nothing_and_a_released_one_gives_back() {
        let mut v = Velocity::default();
        let r = rate(1, 60);
        let both = |user: &str| {
            vec![
                (Scope::User, user.to_owned(), r),
                (Scope::Ip, "192.0.2.7".to_owned(), rate(2, 60)),
            ]
        };
        let t = v.admit(&both("alice"), 0).unwrap();
        // alice is full; the address must not be counted for the refused request.
        assert_eq!(v.admit(&both("alice"), 1).unwrap_err().0, Scope::User);
        v.admit(&both("bob"), 2).unwrap();
        assert_eq!(v.admit(&both("carol"), 3).unwrap_err().0, Scope::Ip);
        v.release(t);
        assert!(v.admit(&both("alice"), 4).is_ok());
    }

    #[test]
    fn seeded_sends_count_like_admitted_ones() {
        let r = rate(2, 60);
        let mut v = Velocity::default();
        // Out of order, one outside the window, more than the count for one block.
        v.seed(
            Scope::Prefix,
            &r,
            vec![
                ("+919876543".into(), 30_000),
                ("+919876543".into(), 10_000),
                ("+919876543".into(), 20_000),
                ("+919876544".into(), 1_000),
            ],
        );
        let (scope, wait) = v.admit(&prefix("+919876543", r), 65_000).unwrap_err();
        // The two newest (20 s, 30 s) fill it; the first leaves at 80 s.
        assert_eq!(
            (scope, wait),
            (Scope::Prefix, Duration::from_millis(15_000))
        );
        assert!(v.admit(&prefix("+919876544", r), 65_000).is_ok());
    }

    #[test]
    fn blocks_drop_the_last_digits() {
        assert_eq!(prefix_of("+919876543210", 4), Some("+91987654"));
        assert_eq!(prefix_of("+12", 1), Some("+1"));
        assert_eq!(prefix_of("+12", 2), None);
        assert_eq!(prefix_of("+1", 5), None);
    }
}
