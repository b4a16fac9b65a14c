//! Recent sends per limit key (recipient, client, country, everyone), for the sliding-window
//! limits of `[limits]`: counted in the writer's memory rather than through outbox indexes.
//!
//! Nearly every message goes to a different number, so an outbox index on recipients put one
//! random B-tree page per accepted message into the WAL, and the client and country indexes
//! existed only for these counts: together a quarter of the WAL and of the writer's CPU. The
//! tallies here belong to the writer thread alone. The outbox stays the record: a tally is
//! rebuilt from it when it cannot answer for the configured rate (the first insert after a
//! start, a reload that widens the window or raises the count, a limit switched back on) and
//! whenever a transaction it saw may not have committed. So counting is exact across
//! restarts and failed groups.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use rusqlite::Connection;

use super::{LimitScope, Message, NewMessage, StoreError};
use crate::config::Rate;

/// Every limit scope, in the order of [`slot`].
const SCOPES: [LimitScope; 4] = [
    LimitScope::Recipient,
    LimitScope::Client,
    LimitScope::Country,
    LimitScope::Global,
];

fn slot(scope: LimitScope) -> usize {
    match scope {
        LimitScope::Recipient => 0,
        LimitScope::Client => 1,
        LimitScope::Country => 2,
        LimitScope::Global => 3,
    }
}

/// What a send is counted under.
pub(super) struct Keys<'a> {
    recipient: &'a str,
    client: &'a str,
    country: Option<&'a str>,
    at: i64,
}

impl<'a> Keys<'a> {
    /// A message about to be stored.
    pub(super) fn new(m: &'a NewMessage) -> Self {
        Keys {
            recipient: &m.recipient,
            client: &m.client,
            country: m.country.as_deref(),
            at: m.created_at.0,
        }
    }

    /// A message just stored.
    pub(super) fn stored(m: &'a Message) -> Self {
        Keys {
            recipient: &m.recipient,
            client: &m.client,
            country: m.country.as_deref(),
            at: m.created_at.0,
        }
    }

    /// The key counted in `scope`; `None`: the scope does not apply (no known country).
    fn key(&self, scope: LimitScope) -> Option<&'a str> {
        match scope {
            LimitScope::Recipient => Some(self.recipient),
            LimitScope::Client => Some(self.client),
            LimitScope::Country => self.country,
            LimitScope::Global => Some(""),
        }
    }
}

/// How far past the window a rebuild keeps reading: sends stored just after the clock
/// stepped back sit behind older ones in rowid order.
const CLOCK_STEP_SLACK_MS: i64 = 60_000;

fn window_ms(rate: &Rate) -> i64 {
    i64::try_from(rate.window.as_millis()).unwrap_or(i64::MAX)
}

/// One scope's sends: for every key, the newest `depth` send times after `complete_after`.
struct Tally {
    /// Holds every send made after this instant (unix ms)...
    complete_after: i64,
    /// ...but only the newest `depth` of them per key: a limit of `count` needs no more.
    depth: u32,
    /// When keys with nothing left in the window were last dropped.
    pruned_at: i64,
    /// Send times per key, oldest first.
    sends: HashMap<String, VecDeque<i64>>,
}

impl Tally {
    /// Whether this tally answers for `rate` at `since` (the window's start).
    fn covers(&self, rate: &Rate, since: i64) -> bool {
        self.depth >= rate.count && self.complete_after <= since
    }

    fn record(&mut self, key: &str, at: i64) {
        let times = match self.sends.get_mut(key) {
            Some(t) => t,
            None => self.sends.entry(key.to_owned()).or_default(),
        };
        // In time order even if the clock stepped back.
        let at_or_after = times.iter().rposition(|&t| t <= at).map_or(0, |i| i + 1);
        times.insert(at_or_after, at);
        while times.len() > self.depth as usize {
            times.pop_front();
        }
    }

    /// The `count`-th newest send of `key` after `since`, if there is one: when it leaves
    /// the window, there is room again.
    fn nth_newest(&self, key: &str, since: i64, count: u32) -> Option<i64> {
        let times = self.sends.get(key)?;
        let nth = times.len().checked_sub(usize::try_from(count).ok()?)?;
        times.get(nth).copied().filter(|&t| t > since)
    }

    /// Drops keys whose every send is at or before `since`, now and then.
    fn prune(&mut self, now: i64, since: i64, window: i64) {
        if now.saturating_sub(self.pruned_at) >= (window / 4).max(1000) {
            self.sends
                .retain(|_, times| times.back().is_some_and(|&t| t > since));
            self.complete_after = self.complete_after.max(since);
            self.pruned_at = now;
        }
    }
}

/// The tallies of the writer thread; one per configured scope.
#[derive(Default)]
pub(super) struct Recent {
    tallies: RefCell<[Option<Tally>; 4]>,
}

impl Recent {
    /// The first limit in `limits` that `send` would exceed: its scope and the send time that
    /// has to leave the window first. Scopes not in `limits` are dropped (and rebuilt if they
    /// come back); the others are brought up to date first.
    pub(super) fn check(
        &self,
        c: &Connection,
        limits: &[(LimitScope, Rate)],
        send: &Keys<'_>,
    ) -> Result<Option<(LimitScope, i64)>, StoreError> {
        let now = send.at;
        let mut tallies = self.tallies.borrow_mut();
        for scope in SCOPES {
            if !limits.iter().any(|(s, _)| *s == scope) {
                tallies[slot(scope)] = None;
            }
        }
        for (scope, rate) in limits {
            let since = now.saturating_sub(window_ms(rate));
            let tally = &mut tallies[slot(*scope)];
            match tally {
                Some(t) if t.covers(rate, since) => t.prune(now, since, window_ms(rate)),
                _ => *tally = Some(rebuild(c, *scope, rate, since, now)?),
            }
            if let (Some(t), Some(k)) = (tally.as_ref(), send.key(*scope))
                && let Some(oldest) = t.nth_newest(k, since, rate.count)
            {
                return Ok(Some((*scope, oldest)));
            }
        }
        Ok(None)
    }

    /// Counts a send that has just been inserted in every tally kept.
    pub(super) fn record(&self, send: &Keys<'_>) {
        let mut tallies = self.tallies.borrow_mut();
        for scope in SCOPES {
            if let (Some(t), Some(k)) = (tallies[slot(scope)].as_mut(), send.key(scope)) {
                t.record(k, send.at);
            }
        }
    }

    /// The tallies may not match the outbox (a group or savepoint was rolled back): rebuild
    /// each before its next use.
    pub(super) fn forget(&self) {
        *self.tallies.borrow_mut() = Default::default();
    }
}

/// A tally of `scope` for `rate`, read from the outbox's sends after `since`.
fn rebuild(
    c: &Connection,
    scope: LimitScope,
    rate: &Rate,
    since: i64,
    now: i64,
) -> Result<Tally, StoreError> {
    let column = match scope {
        LimitScope::Recipient => "recipient",
        LimitScope::Client => "client",
        LimitScope::Country => "country",
        LimitScope::Global => "''",
    };
    let mut tally = Tally {
        complete_after: since,
        depth: rate.count,
        pruned_at: now,
        sends: HashMap::new(),
    };
    // Rowids grow with every insert, so the newest sends come first in descending rowid
    // order and the read stops once past the window, without an index on created_at.
    let mut stmt = c.prepare(&format!(
        "SELECT {column}, created_at FROM messages ORDER BY rowid DESC"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let at: i64 = row.get(1)?;
        if at <= since.saturating_sub(CLOCK_STEP_SLACK_MS) {
            break;
        }
        // No country, no per-country count (the message's country was unknown).
        if at > since
            && let Some(k) = row.get::<_, Option<String>>(0)?
        {
            tally.record(&k, at);
        }
    }
    Ok(tally)
}
