//! The dispatcher: claims due messages from the outbox, asks the [`policy`] what to do, runs
//! channel attempts under the message's deadline, records every attempt (its row opened when
//! the channel departs, in `depart`), and finishes or reschedules the message. It also applies
//! delivery receipts, and wakes callers waiting for a message's first outcome (`?wait=`).

mod depart;
pub mod policy;
mod prenotice;
mod receipts;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::channel::whatsapp;
use crate::channel::{
    Channel, Content, Delivery, Departure, Health, Outcome, Receipt, ReceiptStatus,
};
use crate::clock::{SharedClock, Timestamp};
use crate::config::Live;
use crate::domain::{
    Attempt, AttemptEnd, AttemptPurpose, ChannelKind, Learned, MessageKind, MessageState,
};
use crate::metrics::{self, Metrics, ReasonLabel};
use crate::store::{AttemptRow, Message, Move, ReceiptEffect, Settlement, Store, StoreError};

use depart::{Leave, Leaving};

use policy::{Decision, End, Facts, Input, ReceiptVerdict, Rules};

/// Messages worked on at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// The least extra time a channel gets past its budget before the dispatcher's hang guard
/// gives up on it. Channels answer within their budget; this only catches one that hangs.
const HANG_GUARD_MIN: Duration = Duration::from_secs(30);

/// How long the dispatcher waits for a channel that was given `budget`: long enough that the
/// channel's own verdict always comes first.
fn hang_guard(budget: Duration) -> Duration {
    budget + budget.max(HANG_GUARD_MIN)
}

/// Code attempts on `channel` in `history` that ended asking for a retry.
fn earlier_retries(history: &[Attempt], channel: ChannelKind) -> u32 {
    let n = history
        .iter()
        .filter(|a| {
            a.channel == channel
                && a.purpose == AttemptPurpose::Code
                && a.end == Some(AttemptEnd::Retry)
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The parts of a [`Decision::Send`] the attempts carry along.
#[derive(Clone, Copy)]
struct Plan<'a> {
    steps: &'a [policy::Step],
    prenotice: bool,
    verification: Option<bool>,
}

/// What a waiting caller learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstOutcome {
    /// State at that moment.
    pub state: MessageState,
    /// The channel that carried it, if one did.
    pub channel: Option<ChannelKind>,
}

struct Inner {
    store: Store,
    clock: SharedClock,
    live: Arc<Live>,
    channels: Vec<Arc<dyn Channel>>,
    metrics: Arc<Metrics>,
    wake: Notify,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<FirstOutcome>>>>,
    progress: AtomicU64,
    slots: Arc<Semaphore>,
    /// Recipients with a pre-notice handed to SMS and not finished: a recipient is marked
    /// notified only when a notice departs, so without this every code sent meanwhile would
    /// queue another notice (the store would refuse it at the modem's prompt).
    notifying: Mutex<HashSet<String>>,
}

/// The wait after `failures` failed claims in a row: 100 ms, doubling, at most 5 s.
fn claim_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    Duration::from_millis(100 << doublings).min(Duration::from_secs(5))
}

/// Handle to the dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher(Arc<Inner>);

impl Dispatcher {
    /// A dispatcher over these channels (at most one per kind).
    pub fn new(
        store: Store,
        clock: SharedClock,
        live: Arc<Live>,
        channels: Vec<Arc<dyn Channel>>,
        metrics: Arc<Metrics>,
    ) -> Dispatcher {
        Dispatcher(Arc::new(Inner {
            store,
            clock,
            live,
            channels,
            metrics,
            wake: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            progress: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            notifying: Mutex::new(HashSet::new()),
        }))
    }

    /// Tells the loop that new work is due now (after an accept). With every slot busy the
    /// loop could claim nothing, and the task that frees the next slot wakes it anyway: an
    /// accept then skips the wake, which would cost the loop a turn and a timer (while
    /// WhatsApp is slow and the slots stay full, one per accepted code).
    pub fn wake(&self) {
        if self.0.slots.available_permits() > 0 {
            self.0.wake.notify_one();
        }
    }

    /// A counter the loop bumps on every turn; the watchdog checks that it moves.
    pub fn progress(&self) -> u64 {
        self.0.progress.load(Ordering::Relaxed)
    }

    /// Kinds of the configured channels.
    pub fn configured(&self) -> Vec<ChannelKind> {
        self.0.channels.iter().map(|c| c.kind()).collect()
    }

    /// Each channel's health.
    pub fn health(&self) -> Vec<(ChannelKind, Health)> {
        self.0
            .channels
            .iter()
            .map(|c| (c.kind(), c.health()))
            .collect()
    }

    /// Waits up to `limit` for the message's first provider acceptance or final state.
    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
    ) -> Result<Option<FirstOutcome>, StoreError> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.0.waiters.lock() {
            w.entry(id.to_owned()).or_default().push(tx);
        }
        // It may have finished before we registered.
        if let Some((state, channel)) = self.0.store.state(id).await?
            && (state != MessageState::Queued && state != MessageState::Sending)
        {
            return Ok(Some(FirstOutcome { state, channel }));
        }
        Ok(tokio::time::timeout(limit, rx)
            .await
            .ok()
            .and_then(Result::ok))
    }

    fn announce(&self, id: &str, state: MessageState, channel: Option<ChannelKind>) {
        let senders = self.0.waiters.lock().ok().and_then(|mut w| w.remove(id));
        for s in senders.into_iter().flatten() {
            let _ = s.send(FirstOutcome { state, channel });
        }
    }

    fn channel(&self, kind: ChannelKind) -> Option<&Arc<dyn Channel>> {
        self.0.channels.iter().find(|c| c.kind() == kind)
    }

    /// Runs the claim loop until `shutdown`; then lets attempts in flight end (up to `drain`).
    pub async fn run(
        self,
        mut receipts: mpsc::Receiver<Receipt>,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let mut last_housekeeping = Timestamp(0);
        let mut last_sweep = Timestamp(0);
        // Consecutive failed claims. A store that reads but cannot write (disk full, a dead
        // writer) would otherwise be asked again every millisecond while messages are due,
        // and each failure would be a log line.
        let mut failures: u32 = 0;
        // Notices a crash interrupted between a first confirmed code and their departure.
        self.send_due_prenotices().await;
        loop {
            self.0.progress.fetch_add(1, Ordering::Relaxed);
            let now = self.0.clock.now();
            match self.claim_and_spawn(now).await {
                Ok(()) if failures > 0 => {
                    tracing::info!(failures, "dispatcher: claiming due messages works again");
                    failures = 0;
                }
                Ok(()) => {}
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures.is_power_of_two() {
                        tracing::error!(failures, error = %e, "dispatcher: cannot claim due messages; backing off");
                    }
                }
            }
            // With every slot busy nothing is claimed, but queued codes still expire on time.
            if self.0.slots.available_permits() == 0 && now.0 - last_sweep.0 >= 1_000 {
                last_sweep = now;
                match self.0.store.claim_due(now, 0).await {
                    Ok((_, n)) if n > 0 => {
                        self.0.metrics.expired.inc_by(u64::try_from(n).unwrap_or(0));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "dispatcher: cannot expire queued messages")
                    }
                }
            }
            if now.0 - last_housekeeping.0 >= 60_000 {
                last_housekeeping = now;
                self.housekeeping(now).await;
            }
            // With every slot busy there is nothing to claim: wait for a slot (its task wakes
            // us) instead of asking the store on every accept.
            let sleep = if failures > 0 {
                claim_backoff(failures)
            } else if self.0.slots.available_permits() == 0 {
                Duration::from_secs(1)
            } else {
                match self.0.store.next_due().await.ok().flatten() {
                    Some(t) => now.until(t).min(Duration::from_secs(1)),
                    None => Duration::from_secs(1),
                }
            };
            tokio::select! {
                _ = self.0.wake.notified() => {}
                _ = tokio::time::sleep(sleep.max(Duration::from_millis(1))) => {}
                Some(r) = receipts.recv() => self.on_receipt(r).await,
                _ = shutdown.changed() => break,
            }
        }
        // Wait for attempts in flight: every slot back means every task ended.
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        if tokio::time::timeout(drain, self.0.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "dispatcher: attempts still running at shutdown; those that departed resume as 'interrupted' on restart, the rest are sent again"
            );
        }
    }

    async fn housekeeping(&self, now: Timestamp) {
        let retention = self.0.live.get().store.retention;
        match self.0.store.housekeeping(now, retention).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "store: purged old messages"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "store: housekeeping failed"),
        }
        // A notice no modem took is tried again.
        self.send_due_prenotices().await;
        if let Ok(depth) = self.0.store.queue_depth().await {
            self.0
                .metrics
                .queue_depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }

    async fn claim_and_spawn(&self, now: Timestamp) -> Result<(), StoreError> {
        let free = self.0.slots.available_permits();
        if free == 0 {
            return Ok(());
        }
        let (messages, expired) = self.0.store.claim_due(now, free).await?;
        if expired > 0 {
            self.0
                .metrics
                .expired
                .inc_by(u64::try_from(expired).unwrap_or(0));
            tracing::info!(count = expired, "messages expired in the queue");
        }
        for m in messages {
            let Ok(permit) = self.0.slots.clone().try_acquire_owned() else {
                // Cannot happen (we asked for at most `free`); put it back rather than drop it.
                self.0.store.requeue(&m.id, now, None).await?;
                self.0.store.release_claim(&m.id);
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let id = m.id.clone();
                if let Err(e) = me.process(m).await {
                    tracing::error!(message = %id, error = %e, "dispatcher: store error while processing; retrying shortly");
                    let retry = me.0.clock.now().plus(Duration::from_secs(1));
                    let _ = me.0.store.requeue(&id, retry, None).await;
                }
                // No longer worked on here: on a pair its lease is not renewed any more, so a
                // message a store outage left 'sending' is taken back when the lease runs out.
                me.0.store.release_claim(&id);
                drop(permit);
                me.wake();
            });
        }
        Ok(())
    }

    fn count_fallback(&self, reason: &str) {
        self.0
            .metrics
            .fallbacks
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Each channel and whether it can take a message now, as the policy reads it.
    fn usable(&self) -> Vec<(ChannelKind, bool)> {
        let mut health: Vec<(ChannelKind, bool)> = self
            .0
            .channels
            .iter()
            .map(|c| (c.kind(), c.health().usable))
            .collect();
        // On a pair, SMS exists on the node with the modem: here it is "down", so the plan
        // keeps it after WhatsApp and the step goes back to the queue for that node.
        if self.0.store.is_shared() && !health.iter().any(|(c, _)| *c == ChannelKind::Sms) {
            health.push((ChannelKind::Sms, false));
        }
        health
    }

    /// Works one claimed message through the policy's decisions.
    async fn process(&self, m: Message) -> Result<(), StoreError> {
        let cfg = self.0.live.get();
        let rules = Rules::new(&cfg, &m.client, cfg.client(&m.client));
        let recipient = self.0.store.recipient(&m.recipient).await?;
        let attempts = self.0.store.attempts(&m.id).await?;
        let health = self.usable();
        // Only a code that may ride WhatsApp can be escalated for an unchecked verification.
        let verification = if rules.escalate_after.is_some() && m.kind == MessageKind::Code {
            self.0.store.verification_pending(&m.id).await?
        } else {
            None
        };
        let now = self.0.clock.now();
        let input = Input {
            message: Facts {
                kind: m.kind,
                has_content: m.content.is_some(),
                country: m.country.as_deref(),
                expires_at: m.expires_at,
                only_channel: m.only_channel,
                verification,
            },
            recipient: &recipient,
            attempts: &attempts,
            health: &health,
            now,
        };
        match (policy::decide(&rules, &input), m.content.clone()) {
            (Decision::End(end), _) => {
                self.settle(&m, None, None, Learned::default(), Some(end))
                    .await
            }
            (Decision::AlreadySent(ch), _) => self.already_sent(&m, ch, now).await,
            (Decision::Watch { channel, until }, _) => {
                let movement = Move::Watch { channel, until };
                let settlement = Settlement::moving(movement);
                self.0.store.settle(&m, settlement, now).await.map(|_| ())
            }
            (Decision::Wait { retry_at, reason }, _) => {
                tracing::debug!(message = %m.id, %reason, "no usable channel; waiting");
                self.0.store.requeue(&m.id, retry_at, Some(reason)).await
            }
            (Decision::Send { .. }, None) => {
                // decide() fails a message whose content is gone; a send needs it.
                let end = End::Fail("content missing (already wiped)".into());
                self.settle(&m, None, None, Learned::default(), Some(end))
                    .await
            }
            (
                Decision::Send {
                    steps,
                    skipped,
                    prenotice,
                    escalated,
                },
                Some(content),
            ) => {
                // The channels passed over are recorded once, before the first attempt.
                let skipped = if attempts.is_empty() {
                    skipped
                } else {
                    Vec::new()
                };
                for (ch, why) in skipped {
                    self.0.store.record_skip(&m.id, ch, why, now).await?;
                }
                if let Some(e) = escalated {
                    self.escalate(&m, e, now).await?;
                }
                let plan = Plan {
                    steps: &steps,
                    prenotice,
                    verification,
                };
                self.run_steps(&m, content, plan, &rules, &attempts).await
            }
        }
    }

    /// Ends a message a provider already accepted (after a restart, or at the end of a
    /// watch): the code goes nowhere else.
    async fn already_sent(
        &self,
        m: &Message,
        ch: ChannelKind,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let why = Some("a provider accepted it; not sent again".to_string());
        self.0
            .store
            .finish(&m.id, MessageState::Sent, Some(ch), why, false, now)
            .await?;
        self.announce(&m.id, MessageState::Sent, Some(ch));
        Ok(())
    }

    /// Records why WhatsApp was passed over for this code (a skipped row, the fallback metric)
    /// and what that taught about the recipient.
    async fn escalate(
        &self,
        m: &Message,
        e: policy::Escalation,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        tracing::info!(message = %m.id, reason = e.reason, "whatsapp passed over: {}", e.detail);
        self.count_fallback(e.reason);
        let wa = ChannelKind::WhatsApp;
        self.0.store.record_skip(&m.id, wa, e.detail, now).await?;
        if !e.learned.is_empty() {
            let settlement = Settlement {
                attempt: None,
                no_whatsapp_until: None,
                learned: e.learned,
                movement: Move::Stay,
            };
            self.0.store.settle(m, settlement, now).await?;
        }
        Ok(())
    }

    /// Runs the planned steps in order until the policy says the message leaves.
    async fn run_steps(
        &self,
        m: &Message,
        content: Content,
        plan: Plan<'_>,
        rules: &Rules<'_>,
        history: &[Attempt],
    ) -> Result<(), StoreError> {
        let steps = plan.steps;
        for (idx, step) in steps.iter().enumerate() {
            let (attempt, outcome, end_at) = self.attempt(m, &content, step).await?;
            let attempted = policy::Attempted {
                channel: step.channel,
                more: idx + 1 < steps.len(),
                kind: content.kind(),
                expires_at: m.expires_at,
                earlier_retries: earlier_retries(history, step.channel),
                prenotice: plan.prenotice,
                verification: plan.verification,
            };
            let verdict = policy::after_attempt(rules, attempted, &outcome, end_at);
            if let Some(reason) = verdict.fallback {
                self.count_fallback(reason);
            }
            let ends = verdict.end.is_some();
            let settled = Some((attempt, outcome));
            let learned = verdict.learned;
            self.settle(m, settled, verdict.no_whatsapp_until, learned, verdict.end)
                .await?;
            if ends {
                return Ok(());
            }
        }
        // Steps are planned only for configured channels and the last one always ends the
        // message, so this is reached only with an empty plan.
        let end = End::Fail("no channel could reach the recipient".into());
        self.settle(m, None, None, Learned::default(), Some(end))
            .await
    }

    /// Makes one attempt. Its row is opened by the channel's departure (see `depart`), so a
    /// crash while it waits for a modem or the rate cap leaves no trace and the message is
    /// sent after the restart; one that never departs is recorded, ended, when it settles.
    /// The channel owns the step's budget and answers within it; the guard here only catches
    /// a channel that breaks that promise, and never fires before the channel's own verdict.
    async fn attempt(
        &self,
        m: &Message,
        content: &Content,
        step: &policy::Step,
    ) -> Result<(AttemptRow, Outcome, Timestamp), StoreError> {
        let now = self.0.clock.now();
        let leaving = Leaving::new(
            self.0.store.clone(),
            self.0.clock.clone(),
            &m.id,
            &m.recipient,
            step.channel,
            AttemptPurpose::Code,
        );
        let delivery = Delivery {
            message_id: m.id.to_string(),
            to: m.recipient.to_string(),
            content: content.clone(),
            locale: m.locale.clone(),
            validity: now.until(m.expires_at),
            expires_at: m.expires_at,
            budget: step.budget.min(now.until(m.expires_at)),
            departure: Departure::new(leaving.clone()),
        };
        let started = tokio::time::Instant::now();
        let Some(channel) = self.channel(step.channel).cloned() else {
            let row = leaving.row(leaving.close().await);
            return Ok((row, self.no_channel(step.channel), now));
        };
        let answer =
            tokio::time::timeout(hang_guard(delivery.budget), channel.send(&delivery)).await;
        let leave = leaving.close().await;
        let outcome = match answer {
            Ok(o) => o,
            // Closed before it departed: it never will, so nothing left the box.
            Err(_) if leave == Leave::Waiting => {
                tracing::error!(message = %m.id, channel = %step.channel, "channel did not answer long after its budget; it had sent nothing");
                Outcome::Retry {
                    after: Duration::from_secs(1),
                    code: None,
                    reason: format!("{} did not answer within its deadline", step.channel),
                }
            }
            Err(_) => {
                tracing::error!(message = %m.id, channel = %step.channel, "channel did not answer long after its budget; counting the attempt as unknown");
                Outcome::Unknown {
                    reason: format!("{} did not answer within its deadline", step.channel),
                }
            }
        };
        self.count_attempt(m, step.channel, &outcome, started.elapsed());
        let row = leaving.row(leave);
        Ok((row, outcome, self.0.clock.now()))
    }

    /// What a step on a channel this process does not have comes to.
    fn no_channel(&self, kind: ChannelKind) -> Outcome {
        if self.0.store.is_shared() {
            // Back to the queue at once, where only a node with a ready modem claims an
            // SMS step: a retry with no wait, nothing having left this box.
            return Outcome::Retry {
                after: Duration::ZERO,
                code: None,
                reason: format!("no {kind} channel on this node; handed to the pair"),
            };
        }
        let reason = format!("no {kind} channel is configured");
        Outcome::ChannelDown { code: None, reason }
    }

    /// An attempt's metrics and its log line.
    fn count_attempt(&self, m: &Message, kind: ChannelKind, outcome: &Outcome, took: Duration) {
        let label = metrics::channel(kind);
        self.0
            .metrics
            .attempt_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        self.0
            .metrics
            .attempts
            .get_or_create(&metrics::AttemptLabel {
                channel: kind.as_str().into(),
                outcome: outcome.class().into(),
            })
            .inc();
        tracing::info!(
            message = %m.id, channel = %kind, outcome = outcome.class(),
            provider_error = outcome.error_code().unwrap_or("-"), ms = took.as_millis() as u64,
            "attempt finished"
        );
    }

    /// Carries out the end the policy chose: the attempt that led to it, what it taught about
    /// the recipient and the message's move are written in one commit.
    async fn settle(
        &self,
        m: &Message,
        attempt: Option<(AttemptRow, Outcome)>,
        no_whatsapp_until: Option<Timestamp>,
        learned: Learned,
        end: Option<End>,
    ) -> Result<(), StoreError> {
        let now = self.0.clock.now();
        let finish = |state, channel, reason: Option<String>, keep_content| Move::Finish {
            state,
            channel,
            reason,
            keep_content,
        };
        let movement = match &end {
            None => Move::Stay,
            Some(End::Sent {
                channel,
                watch_until: Some(until),
            }) => Move::Watch {
                channel: *channel,
                until: *until,
            },
            Some(End::Sent {
                channel,
                watch_until: None,
            }) => finish(MessageState::Sent, Some(*channel), None, false),
            Some(End::Requeue { at, reason }) => Move::Requeue {
                at: *at,
                reason: Some(reason.clone()),
            },
            Some(End::Expire) => {
                let why = "expired before it could be delivered";
                finish(MessageState::Expired, None, Some(why.into()), false)
            }
            Some(End::Fail(reason)) => {
                finish(MessageState::Failed, None, Some(reason.clone()), false)
            }
        };
        let settlement = Settlement {
            attempt,
            no_whatsapp_until,
            learned,
            movement,
        };
        if self.0.store.settle(m, settlement, now).await? {
            self.send_due_prenotices().await;
        }
        match end {
            Some(End::Sent { channel, .. }) => {
                let label = metrics::channel(channel);
                self.0.metrics.sent.get_or_create(&label).inc();
                self.0
                    .metrics
                    .accept_to_sent_seconds
                    .get_or_create(&label)
                    .observe(m.created_at.until(now).as_secs_f64());
                self.announce(&m.id, MessageState::Sent, Some(channel));
            }
            Some(End::Expire) => {
                self.0.metrics.expired.inc();
                self.announce(&m.id, MessageState::Expired, None);
            }
            Some(End::Fail(reason)) => {
                tracing::warn!(message = %m.id, %reason, "message failed");
                self.0.metrics.failed.inc();
                self.announce(&m.id, MessageState::Failed, None);
            }
            Some(End::Requeue { .. }) | None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_claims_back_off_to_a_ceiling() {
        let ms = |n| claim_backoff(n).as_millis();
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7, 8, 1000, u32::MAX].map(ms),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
    }
}
