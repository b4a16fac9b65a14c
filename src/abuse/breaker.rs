//! The conversion breaker: Verify API codes to a number block (or a country) that are
//! rarely checked correctly are the signature of SMS pumping, where the "users" are numbers
//! an attacker is paid for. When a block has at least `breaker_min_codes` finished
//! verifications in `breaker_window` and fewer than `breaker_min_approval_percent` of them
//! were approved, new messages to it may not use SMS for `breaker_cooldown` (WhatsApp, which
//! costs nothing per message to a fraudulent range, still carries them).
//!
//! Approvals are read from the verifications table (the Verify API's own record), every few
//! seconds at most, by one task at a time; this module owns the open breakers. A verification
//! counts once it is finished: approved, locked after too many attempts, or past its expiry
//! unchecked. After a trip (or a lift) only verifications created later count for that block,
//! so a block reopens to SMS once its cool-down is over and trips again only on new evidence.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::{BreakerConfig, Config};
use crate::store::Store;

/// How often the verifications are read again, at most.
const REFRESH_MS: i64 = 2_000;

/// One open breaker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trip {
    /// The number block ("+9198765") or the country ("IN").
    pub key: String,
    /// Finished verifications counted when it tripped.
    pub codes: u32,
    /// Of which approved.
    pub approved: u32,
    /// Unix ms when it tripped.
    pub since: i64,
    /// Unix ms when SMS resumes.
    pub until: i64,
}

#[derive(Default)]
struct State {
    open: BTreeMap<String, Trip>,
    /// Per key: only verifications created after this instant count (set by a trip or a lift).
    counted_from: HashMap<String, i64>,
    trips: u64,
}

/// A finished verification as the breaker counts it.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The number's block.
    pub prefix: Option<String>,
    /// The number's country.
    pub country: Option<String>,
    /// Unix ms it was created.
    pub created_at: i64,
    /// Whether a check approved it.
    pub approved: bool,
}

/// The open breakers and their evidence; one per gateway.
#[derive(Default)]
pub struct Breaker {
    state: Mutex<State>,
    /// Whether any breaker is open: every accept asks, nearly always for nothing, so the
    /// answer "none" costs one load instead of the lock.
    any_open: AtomicBool,
    refreshing: AtomicBool,
    next_refresh: AtomicI64,
}

/// What a refresh reads from the configuration in force.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The thresholds.
    pub breaker: BreakerConfig,
    /// `limits.prefix_digits`.
    pub digits: u32,
    /// Where `otpgate breaker lift` leaves its keys.
    pub lift_file: PathBuf,
}

impl Settings {
    /// The settings in `cfg`.
    pub fn of(cfg: &Config) -> Settings {
        Settings {
            breaker: cfg.limits.breaker.clone(),
            digits: cfg.limits.prefix_digits,
            lift_file: lift_file(&cfg.store.path),
        }
    }
}

/// The file `otpgate breaker lift` writes keys to, next to the store; the daemon reads and
/// removes it on its next refresh.
pub fn lift_file(store_path: &Path) -> PathBuf {
    store_path.with_file_name("breaker-lift")
}

impl Breaker {
    /// How long SMS to this block or country stays paused; `None`: not paused.
    pub fn paused(&self, prefix: Option<&str>, country: Option<&str>, now: i64) -> Option<i64> {
        if !self.any_open.load(Ordering::Acquire) {
            return None;
        }
        let state = self.state.lock().ok()?;
        [prefix, country]
            .into_iter()
            .flatten()
            .filter_map(|k| state.open.get(k))
            .filter(|t| t.until > now)
            .map(|t| t.until - now)
            .max()
    }

    /// The breakers open at `now`.
    pub fn open(&self, now: i64) -> Vec<Trip> {
        self.state
            .lock()
            .map(|s| s.open.values().filter(|t| t.until > now).cloned().collect())
            .unwrap_or_default()
    }

    /// Trips so far.
    pub fn trips(&self) -> u64 {
        self.state.lock().map(|s| s.trips).unwrap_or(0)
    }

    /// Closes the breaker on `key` now; only verifications created after now count for it.
    pub fn lift(&self, key: &str, now: i64) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        state.counted_from.insert(key.to_owned(), now);
        let was_open = state.open.remove(key).is_some();
        self.any_open
            .store(!state.open.is_empty(), Ordering::Release);
        if was_open {
            tracing::warn!(key, "conversion breaker lifted by the admin: SMS resumes");
        }
        was_open
    }

    /// Judges the finished verifications in the window: closes breakers whose cool-down is
    /// over and trips those whose approval rate is too low. Returns the keys tripped now.
    pub fn judge(&self, finished: &[Finished], b: &BreakerConfig, now: i64) -> Vec<String> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let closed: Vec<Trip> = state
            .open
            .values()
            .filter(|t| t.until <= now)
            .cloned()
            .collect();
        for t in closed {
            state.open.remove(&t.key);
            tracing::info!(key = %t.key, "conversion breaker cool-down over: SMS resumes");
        }
        self.any_open
            .store(!state.open.is_empty(), Ordering::Release);
        if b.min_codes == 0 {
            return Vec::new();
        }
        let mut tallies: HashMap<&str, (u32, u32)> = HashMap::new();
        for f in finished {
            for key in [f.prefix.as_deref(), f.country.as_deref()]
                .into_iter()
                .flatten()
            {
                if state
                    .counted_from
                    .get(key)
                    .is_some_and(|&from| f.created_at <= from)
                {
                    continue;
                }
                let t = tallies.entry(key).or_default();
                t.0 += 1;
                t.1 += u32::from(f.approved);
            }
        }
        let cooldown = i64::try_from(b.cooldown.as_millis()).unwrap_or(i64::MAX);
        let mut tripped = Vec::new();
        for (key, (codes, approved)) in tallies {
            let low =
                u64::from(approved) * 100 < u64::from(b.min_approval_percent) * u64::from(codes);
            if codes < b.min_codes || !low || state.open.contains_key(key) {
                continue;
            }
            tracing::warn!(
                key,
                codes,
                approved,
                cooldown_s = b.cooldown.as_secs(),
                "conversion breaker tripped: SMS to this range pauses (verification codes are not being checked; SMS pumping?)"
            );
            state.open.insert(
                key.to_owned(),
                Trip {
                    key: key.to_owned(),
                    codes,
                    approved,
                    since: now,
                    until: now.saturating_add(cooldown),
                },
            );
            state.counted_from.insert(key.to_owned(), now);
            state.trips += 1;
            tripped.push(key.to_owned());
        }
        self.any_open
            .store(!state.open.is_empty(), Ordering::Release);
        tripped
    }

    /// Claims the next refresh if one is due at `now` (one at a time, every few seconds).
    pub fn due(&self, now: i64) -> bool {
        if now < self.next_refresh.load(Ordering::Relaxed)
            || self.refreshing.swap(true, Ordering::AcqRel)
        {
            return false;
        }
        self.next_refresh
            .store(now.saturating_add(REFRESH_MS), Ordering::Relaxed);
        true
    }

    /// Reads the lifts the admin asked for and the finished verifications, then judges.
    /// Call only after [`Breaker::due`] said so.
    pub async fn refresh(&self, store: &Store, s: Settings, now: i64) {
        for key in take_lifts(&s.lift_file) {
            self.lift(&key, now);
        }
        if s.breaker.min_codes == 0 {
            self.judge(&[], &s.breaker, now);
            self.refreshing.store(false, Ordering::Release);
            return;
        }
        let window = i64::try_from(s.breaker.window.as_millis()).unwrap_or(i64::MAX);
        let digits = s.digits;
        let since = now.saturating_sub(window);
        match store.finished_verifications(since, now).await {
            Ok(rows) => {
                let finished: Vec<Finished> = rows
                    .into_iter()
                    .map(|v| Finished {
                        prefix: super::velocity::prefix_of(&v.recipient, digits).map(str::to_owned),
                        country: v.country,
                        created_at: v.created_at,
                        approved: v.approved,
                    })
                    .collect();
                self.judge(&finished, &s.breaker, now);
            }
            Err(e) => tracing::error!(error = %e, "conversion breaker: cannot read verifications"),
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

/// The keys in the lift file, which is removed; nothing when there is none.
fn take_lifts(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    if let Err(e) = std::fs::remove_file(path) {
        tracing::error!(path = %path.display(), error = %e, "conversion breaker: cannot remove the lift file");
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Remaining cool-down as a duration.
pub fn remaining(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min_codes: u32) -> BreakerConfig {
        BreakerConfig {
            min_codes,
            min_approval_percent: 20,
            window: Duration::from_secs(3600),
            cooldown: Duration::from_secs(60),
        }
    }

    fn wave(prefix: &str, n: u32, approved: u32, at: i64) -> Vec<Finished> {
        (0..n)
            .map(|i| Finished {
                prefix: Some(prefix.to_owned()),
                country: Some("IN".into()),
                created_at: at,
                approved: i < approved,
            })
            .collect()
    }

    #[test]
    fn an_unchecked_wave_trips_its_block_and_the_cool_down_ends_it() {
        let b = Breaker::default();
        let mut rows = wave("+9198765", 10, 1, 1_000);
        rows.extend(wave("+9199999", 10, 9, 1_000));
        // Country IN: 10 of 20 approved, above 20 %: only the bad block trips.
        assert_eq!(b.judge(&rows, &cfg(10), 5_000), ["+9198765"]);
        assert_eq!(b.paused(Some("+9198765"), Some("IN"), 6_000), Some(59_000));
        assert_eq!(b.paused(Some("+9199999"), Some("IN"), 6_000), None);
        assert_eq!(b.trips(), 1);
        // Still open while the same evidence is read again.
        assert!(b.judge(&rows, &cfg(10), 30_000).is_empty());
        assert!(b.paused(Some("+9198765"), None, 30_000).is_some());
        // Over: the old wave no longer counts, so it stays closed...
        assert!(b.judge(&rows, &cfg(10), 65_001).is_empty());
        assert_eq!(b.paused(Some("+9198765"), None, 65_001), None);
        // ...until a new one.
        rows.extend(wave("+9198765", 10, 0, 70_000));
        assert_eq!(b.judge(&rows, &cfg(10), 80_000), ["+9198765"]);
    }

    #[test]
    fn too_few_codes_or_a_lift_keep_sms_flowing() {
        let b = Breaker::default();
        let rows = wave("+9198765", 9, 0, 1_000);
        assert!(b.judge(&rows, &cfg(10), 5_000).is_empty());
        assert!(b.judge(&rows, &cfg(0), 5_000).is_empty());
        assert_eq!(b.judge(&rows, &cfg(5), 5_000).len(), 2);
        assert!(b.lift("+9198765", 6_000));
        assert!(!b.lift("+9198765", 6_000));
        assert_eq!(b.open(6_000).len(), 1);
        assert!(b.judge(&rows, &cfg(5), 7_000).is_empty());
        assert_eq!(b.paused(Some("+9198765"), None, 7_000), None);
    }
}
