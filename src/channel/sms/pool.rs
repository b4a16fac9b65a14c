//! The SMS [`Channel`]: a pool of modems, each run by its own owner task
//! ([`super::modem::Modem`]). A message goes to the next ready modem (round robin); a transient
//! failure or a sick modem moves it to another ready modem, and a transient one may get a second
//! try on the same modem, while the budget lasts. A permanent refusal is final; a message whose
//! fate is unknown (handed over, no answer) is never sent again.
//!
//! The pool owns the SMS deadline: it answers within `Delivery::budget` with its own verdict.
//! Each modem gets a share of the time left to take the message (one share per ready modem not
//! yet tried), so a modem that hangs before the hand-over ends transient while another modem
//! still has time; once a modem has taken the message, it may use what is left of the budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::modem::{Modem, ModemState, SendJob, SendResult};
use crate::channel::{
    BoxFuture, Channel, ChannelKind, Content, Delivery, Health, Outcome, PartHealth, ReceiptTx,
};
use crate::clock::SharedClock;
use crate::config::ModemConfig;

/// Wait suggested to the dispatcher when every modem failed transiently.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Tries per modem and message: a transient network error (CMS 41 "temporary failure")
/// often clears at once, so a modem gets a second go, after a short pause.
const ATTEMPTS_PER_MODEM: u32 = 2;
/// Pause before a modem's second try.
const SECOND_TRY_PAUSE: Duration = Duration::from_millis(500);

/// The SMS channel: one owner task per configured modem.
pub struct SmsPool {
    modems: Vec<Modem>,
    next: AtomicUsize,
}

impl SmsPool {
    /// Spawns one owner task per modem on the current tokio runtime.
    pub fn start(modems: Vec<ModemConfig>, receipts: ReceiptTx, clock: SharedClock) -> SmsPool {
        let modems = modems
            .into_iter()
            .map(|cfg| Modem::spawn(cfg, receipts.clone(), clock.clone()))
            .collect();
        SmsPool {
            modems,
            next: AtomicUsize::new(0),
        }
    }

    /// The modems, in configuration order.
    pub fn modems(&self) -> &[Modem] {
        &self.modems
    }

    /// Each modem's heartbeat (name, loop counter), for the systemd watchdog.
    pub fn progress(&self) -> Vec<(String, u64)> {
        self.modems
            .iter()
            .map(|m| (m.name().to_string(), m.progress()))
            .collect()
    }

    /// Closes every port and waits for the owner tasks to end.
    pub async fn shutdown(&self) {
        for m in &self.modems {
            m.shutdown().await;
        }
    }

    /// The next ready modem not used up for this message, fewest attempts first, round robin.
    fn pick(&self, attempts: &HashMap<usize, u32>) -> Option<usize> {
        let n = self.modems.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let used = |i: &usize| attempts.get(i).copied().unwrap_or(0);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| used(i) < ATTEMPTS_PER_MODEM)
            .filter(|i| self.modems[*i].status().state == ModemState::Ready)
            .min_by_key(used)
    }

    /// By when modem `i` must take the message: an equal share of the time left for it and
    /// each other ready modem not yet tried, so a modem that hangs cannot use up the budget.
    fn take_by(&self, i: usize, attempts: &HashMap<usize, u32>, deadline: Instant) -> Instant {
        let others = (0..self.modems.len())
            .filter(|j| *j != i && !attempts.contains_key(j))
            .filter(|j| self.modems[*j].status().state == ModemState::Ready)
            .count();
        let now = Instant::now();
        let share = deadline.saturating_duration_since(now) / (others as u32 + 1);
        now + share
    }

    fn states(&self) -> String {
        let list: Vec<String> = self
            .modems
            .iter()
            .map(|m| {
                let s = m.status();
                if s.detail.is_empty() || s.state == ModemState::Ready {
                    format!("{} {}", m.name(), s.state)
                } else {
                    format!("{} {} ({})", m.name(), s.state, s.detail)
                }
            })
            .collect();
        if list.is_empty() {
            "no modem configured".into()
        } else {
            list.join("; ")
        }
    }

    async fn deliver(&self, d: &Delivery) -> Outcome {
        let text = match &d.content {
            Content::Code { sms_text, .. } => sms_text.clone(),
            Content::Text(t) => t.clone(),
        };
        let deadline = Instant::now() + d.budget;
        let mut attempts: HashMap<usize, u32> = HashMap::new();
        let mut last: Option<(Option<String>, String)> = None;
        loop {
            let Some(i) = self.pick(&attempts) else {
                return match last {
                    Some((code, reason)) => Outcome::Retry {
                        after: RETRY_AFTER,
                        code,
                        reason,
                    },
                    None => Outcome::ChannelDown {
                        code: None,
                        reason: format!("no modem ready: {}", self.states()),
                    },
                };
            };
            let n = attempts.entry(i).or_insert(0);
            *n += 1;
            if *n > 1 {
                tokio::time::sleep_until((Instant::now() + SECOND_TRY_PAUSE).min(deadline)).await;
            }
            if Instant::now() >= deadline {
                return Outcome::Retry {
                    after: RETRY_AFTER,
                    code: last.and_then(|(c, _)| c),
                    reason: "SMS budget used up".into(),
                };
            }
            let job = SendJob {
                message_id: d.message_id.clone(),
                to: d.to.clone(),
                text: text.clone(),
                expires_at: d.expires_at,
                take_by: self.take_by(i, &attempts, deadline),
                deadline,
                departure: d.departure.clone(),
            };
            match self.modems[i].send(job).await {
                SendResult::Accepted { provider_id } => return Outcome::Accepted { provider_id },
                SendResult::Permanent { code, reason } => return Outcome::Failed { code, reason },
                SendResult::Unknown { reason } => return Outcome::Unknown { reason },
                SendResult::Transient { code, reason } | SendResult::Sick { code, reason } => {
                    tracing::info!(
                        modem = %self.modems[i].name(),
                        message_id = %d.message_id,
                        provider_error = code.as_deref().unwrap_or("-"),
                        "SMS not sent; trying again"
                    );
                    last = Some((code, reason));
                }
                SendResult::NotReady { state } => {
                    // Not ready after all (it changed since the pick): do not ask it again.
                    attempts.insert(i, ATTEMPTS_PER_MODEM);
                    last.get_or_insert((None, format!("{} {}", self.modems[i].name(), state)));
                }
            }
        }
    }
}

impl Channel for SmsPool {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Sms
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(self.deliver(delivery))
    }

    fn health(&self) -> Health {
        let parts: Vec<PartHealth> = self
            .modems
            .iter()
            .map(|m| {
                let s = m.status();
                let detail = match (&s.operator, s.state) {
                    (Some(op), ModemState::Ready) => op.clone(),
                    _ => s.detail.clone(),
                };
                PartHealth {
                    name: m.name().to_string(),
                    state: s.state.as_str().to_string(),
                    signal_dbm: s.signal_dbm,
                    detail,
                }
            })
            .collect();
        let usable = parts.iter().any(|p| p.state == "ready");
        let summary = if parts.is_empty() {
            "no modem configured".to_string()
        } else {
            parts
                .iter()
                .map(|p| match (p.state.as_str(), p.signal_dbm) {
                    ("ready", Some(dbm)) => format!("{} ready {dbm} dBm", p.name),
                    (state, _) => format!("{} {state}", p.name),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        Health {
            usable,
            summary,
            parts,
        }
    }
}
