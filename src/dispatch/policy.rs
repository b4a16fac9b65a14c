//! The routing policy: pure functions that own every decision about a message. [`decide`]
//! plans the channel attempts for a claimed message; [`after_attempt`] says what one attempt's
//! outcome means (next step, requeue, expire, fail, remember "not on WhatsApp");
//! [`after_receipt`] says what a provider's later receipt means. The dispatcher only carries
//! these verdicts out.
//!
//! Accepted is not delivered. With the webhook configured a WhatsApp code is done only on a
//! `delivered`/`read` receipt: the message stays sent with its code and is *watched* until
//! its delivery deadline, when [`decide`] sends the same code by SMS. Without the webhook the
//! signals are a user asking again while a WhatsApp code is unconfirmed (SMS for that number
//! for a while) and, for the Verify API, a code not checked in time. Nothing here does I/O or reads a clock, and the policy reads a narrow
//! [`Rules`] that tests build in memory.

use std::time::Duration;

use crate::channel::Outcome;
use crate::clock::Timestamp;
use crate::config::summary_readable as readable;
use crate::config::{ClientConfig, Config};
use crate::domain::{Attempt, FirstWhatsApp, Learned, RecipientInfo};
use crate::domain::{
    AttemptEnd, AttemptPurpose, ChannelKind, MessageKind, MessageState, ReceiptKind,
};

/// Longest single SMS attempt; the pool moves between modems inside it.
pub const SMS_ATTEMPT_CAP: Duration = Duration::from_secs(180);
/// How long to wait before looking again when every allowed channel is down.
pub const CHANNEL_DOWN_RETRY: Duration = Duration::from_secs(5);

/// The part of the configuration the policy reads, for one message's client.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// The client's name, for the reasons recorded.
    pub client: &'a str,
    /// Channel order (the client's override or the global one).
    pub order: &'a [ChannelKind],
    /// `whatsapp.enabled`.
    pub whatsapp_enabled: bool,
    /// The client's own WhatsApp switch.
    pub client_whatsapp: bool,
    /// Countries the client may send to; `None` = no client restriction.
    pub client_countries: Option<&'a [String]>,
    /// `policy.whatsapp_countries` (empty = all).
    pub whatsapp_countries: &'a [String],
    /// `policy.sms_countries` (empty = all).
    pub sms_countries: &'a [String],
    /// Time WhatsApp gets before SMS takes over.
    pub whatsapp_deadline: Duration,
    /// How long "not on WhatsApp" routes a number straight to SMS.
    pub no_whatsapp_memory: Duration,
    /// Send the one-time SMS pre-notice when a number's first WhatsApp code is confirmed.
    pub prenotify: bool,
    /// WhatsApp receipts reach us (the webhook has an app secret).
    pub receipts: bool,
    /// With receipts: the time a WhatsApp code gets to be delivered or read.
    pub delivery_deadline: Duration,
    /// Without receipts: how long a user who asked again gets their codes by SMS.
    pub unconfirmed_sms_for: Duration,
    /// For verifications: no successful check this long after a WhatsApp send -> SMS.
    pub escalate_after: Option<Duration>,
}

impl<'a> Rules<'a> {
    /// The rules for `client_name`'s messages. A client removed from the config after it
    /// handed in a message gets the global policy (no switch or country list of its own).
    pub fn new(cfg: &'a Config, client_name: &'a str, client: Option<&'a ClientConfig>) -> Self {
        Rules {
            client: client_name,
            order: client
                .and_then(|c| c.order.as_deref())
                .unwrap_or(&cfg.policy.order),
            whatsapp_enabled: cfg.whatsapp.enabled,
            client_whatsapp: client.is_none_or(|c| c.whatsapp),
            client_countries: client.and_then(|c| c.countries.as_deref()),
            whatsapp_countries: &cfg.policy.whatsapp_countries,
            sms_countries: &cfg.policy.sms_countries,
            whatsapp_deadline: cfg.policy.whatsapp_deadline,
            no_whatsapp_memory: cfg.policy.no_whatsapp_memory,
            prenotify: cfg.policy.prenotify,
            receipts: cfg.receipts_configured(),
            delivery_deadline: cfg.policy.delivery_deadline,
            unconfirmed_sms_for: cfg.policy.unconfirmed_sms_for,
            escalate_after: cfg.verify.escalate_after,
        }
    }

    /// Whether a pre-notice may go to a number in `country` at all (the store adds "once"
    /// and "never after a first WhatsApp code that failed").
    pub fn notice_allowed(&self, country: Option<&str>, configured: &[ChannelKind]) -> bool {
        let (ok, _) = self.allowed_channels(country, MessageKind::Text, configured);
        self.prenotify && ok.contains(&ChannelKind::Sms)
    }

    /// When an accepted send of a code on `channel` at `at` must be looked at again: the
    /// delivery deadline (with receipts), the verification's escalation (while it is pending),
    /// at the latest the end of its lifetime. `None`: nothing can follow it.
    pub fn watch_end(
        &self,
        channel: ChannelKind,
        verification: Option<bool>,
        at: Timestamp,
        expires_at: Timestamp,
    ) -> Option<Timestamp> {
        if channel != ChannelKind::WhatsApp {
            return None;
        }
        let deadline = self.receipts.then(|| at.plus(self.delivery_deadline));
        let escalation = match (verification, self.escalate_after) {
            (Some(true), Some(after)) => Some(at.plus(after)),
            _ => None,
        };
        let end = match (deadline, escalation) {
            (Some(d), Some(e)) => Some(d.min(e)),
            (d, e) => d.or(e),
        };
        end.map(|t| t.min(expires_at))
    }

    /// Channels a message to `country` may use, in order, with the reason for each channel
    /// left out. Pure configuration; health and history come later.
    pub fn allowed_channels(
        &self,
        country: Option<&str>,
        kind: MessageKind,
        configured: &[ChannelKind],
    ) -> (Vec<ChannelKind>, Vec<(ChannelKind, String)>) {
        let in_list = |list: &[String]| {
            list.is_empty() || country.is_some_and(|c| list.iter().any(|x| x == c))
        };
        let place = country.unwrap_or("this country");
        let mut ok = Vec::new();
        let mut skipped = Vec::new();
        for &ch in self.order {
            let why_not = match ch {
                ChannelKind::WhatsApp if !self.whatsapp_enabled => {
                    Some("whatsapp is disabled globally".to_string())
                }
                ChannelKind::WhatsApp if !self.client_whatsapp => {
                    Some(format!("whatsapp is disabled for client {}", self.client))
                }
                ChannelKind::WhatsApp if !in_list(self.whatsapp_countries) => {
                    Some(format!("whatsapp is not rolled out to {place}"))
                }
                ChannelKind::WhatsApp if kind == MessageKind::Text => Some(
                    "free text without a recognisable code cannot ride a WhatsApp authentication template".into(),
                ),
                ChannelKind::Sms if !in_list(self.sms_countries) => {
                    Some(format!("sms to {place} is not allowed"))
                }
                _ if !configured.contains(&ch) => Some(format!("no {ch} channel is configured")),
                _ => None,
            };
            match why_not {
                None => ok.push(ch),
                Some(w) => skipped.push((ch, w)),
            }
        }
        (ok, skipped)
    }
}

/// Why a message is refused at the front door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: &'static str,
    /// Explanation for the caller.
    pub message: String,
}

/// The front-door check: refuse what no channel may ever carry.
pub fn admit(
    cfg: &Config,
    client: &ClientConfig,
    country: Option<&str>,
    kind: MessageKind,
    configured: &[ChannelKind],
    only_channel: Option<ChannelKind>,
) -> Result<(), Refusal> {
    admit_by(
        &Rules::new(cfg, &client.name, Some(client)),
        country,
        kind,
        configured,
        only_channel,
    )
}

/// [`admit`] on the narrow rules.
pub fn admit_by(
    rules: &Rules<'_>,
    country: Option<&str>,
    kind: MessageKind,
    configured: &[ChannelKind],
    only_channel: Option<ChannelKind>,
) -> Result<(), Refusal> {
    if let Some(list) = rules.client_countries
        && !country.is_some_and(|c| list.iter().any(|x| x == c))
    {
        return Err(Refusal {
            code: "country_not_allowed",
            message: format!(
                "client {} may not send to {}",
                rules.client,
                country.unwrap_or("this number's country")
            ),
        });
    }
    let (mut ok, mut skipped) = rules.allowed_channels(country, kind, configured);
    if let Some(only) = only_channel
        && !ok.contains(&only)
    {
        skipped.push((only, format!("{only} may not carry it")));
        ok.clear();
    }
    if ok.is_empty() {
        let reasons: Vec<String> = skipped.into_iter().map(|(_, w)| w).collect();
        return Err(Refusal {
            code: "country_not_allowed",
            message: format!("no channel may carry this message: {}", reasons.join("; ")),
        });
    }
    Ok(())
}

/// One channel attempt the worker should make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The channel.
    pub channel: ChannelKind,
    /// The time it gets, retries inside the channel included. The channel owns it.
    pub budget: Duration,
}

/// What to do with a claimed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try these channels in order; [`after_attempt`] says when to move on.
    Send {
        /// Attempts, in order.
        steps: Vec<Step>,
        /// Channels passed over and why; recorded in the attempt history.
        skipped: Vec<(ChannelKind, String)>,
        /// The one-time SMS pre-notice follows once this WhatsApp code is confirmed.
        prenotice: bool,
        /// WhatsApp was passed over on a signal that it fails this user (no receipt in time,
        /// an unchecked verification, a repeated request).
        escalated: Option<Escalation>,
    },
    /// A provider already took it (before a restart, or its watch ended): do not send again.
    AlreadySent(ChannelKind),
    /// A provider took it and it is still watched: back to sent until `until`.
    Watch {
        /// The channel that took it.
        channel: ChannelKind,
        /// When to look again.
        until: Timestamp,
    },
    /// No allowed channel is usable now; look again at `retry_at` (still within the lifetime).
    Wait {
        /// When to look again.
        retry_at: Timestamp,
        /// Why.
        reason: String,
    },
    /// The message is over; see [`End`].
    End(End),
}

/// Why WhatsApp is passed over for a code it may have carried, or may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// The fallback metric's reason.
    pub reason: &'static str,
    /// For the attempt history (a skipped WhatsApp row).
    pub detail: String,
    /// What it teaches about the recipient.
    pub learned: Learned,
}

/// How a message leaves the dispatcher's hands after a decision or an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// A provider accepted it on `channel`. `watch_until`: a failure receipt, a missed
    /// delivery deadline or an unchecked verification may still send the same code on a later
    /// channel, so the content stays and the message is looked at again then.
    Sent {
        /// The channel that took it.
        channel: ChannelKind,
        /// Keep the content and look again then.
        watch_until: Option<Timestamp>,
    },
    /// Back to the queue, to be looked at again at `at`.
    Requeue {
        /// When.
        at: Timestamp,
        /// Why (shown in GET /v1/messages/{id}).
        reason: String,
    },
    /// Its lifetime is over.
    Expire,
    /// No channel can deliver it.
    Fail(String),
}

/// The facts about one message that the policy reads.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// Code or text.
    pub kind: MessageKind,
    /// Whether the content is still stored (it is wiped when a message ends).
    pub has_content: bool,
    /// Recipient's country.
    pub country: Option<&'a str>,
    /// End of the lifetime.
    pub expires_at: Timestamp,
    /// The caller restricted delivery to this channel.
    pub only_channel: Option<ChannelKind>,
    /// `Some` for a verification's code: whether it still waits for its successful check.
    pub verification: Option<bool>,
}

/// Everything [`decide`] looks at besides the rules.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The message.
    pub message: Facts<'a>,
    /// What the store knows of the recipient.
    pub recipient: &'a RecipientInfo,
    /// This message's earlier attempts (after a restart, a failure receipt, a retry).
    pub attempts: &'a [Attempt],
    /// Usable right now, per configured channel.
    pub health: &'a [(ChannelKind, bool)],
    /// Now.
    pub now: Timestamp,
}

/// Why `ch` may not be tried again for this message, from its earlier code attempts.
fn excluded_by_history(ch: ChannelKind, attempts: &[Attempt]) -> Option<String> {
    let mut excluded = None;
    for a in attempts
        .iter()
        .filter(|a| a.purpose == AttemptPurpose::Code && a.channel == ch)
    {
        excluded = match (a.end, a.receipt) {
            (_, Some(ReceiptKind::Failed)) => {
                Some(format!("{ch} reported the earlier send as failed"))
            }
            (Some(AttemptEnd::Interrupted | AttemptEnd::Unknown), _) => Some(format!(
                "an earlier {ch} attempt may have been delivered; not repeated"
            )),
            (Some(AttemptEnd::FallBack), _) => Some(format!("{ch} cannot reach this recipient")),
            _ => excluded,
        };
    }
    excluded
}

/// What an accepted, unconfirmed send calls for now.
enum Watched {
    /// Send the same code on another channel.
    Due(Escalation),
    /// Nothing yet; look again then.
    Until(Timestamp),
    /// Nothing will follow it.
    Over,
}

/// Looks at the latest accepted code attempt `a` of a message that still has its code.
fn watched(rules: &Rules<'_>, m: &Facts<'_>, a: &Attempt, now: Timestamp) -> Watched {
    let confirmed = a.receipt.is_some_and(ReceiptKind::confirms_delivery);
    if a.channel != ChannelKind::WhatsApp || confirmed || m.verification == Some(false) {
        return Watched::Over;
    }
    let at = a.ended_at.unwrap_or(a.started_at);
    let failed = Learned {
        first_whatsapp: Some(FirstWhatsApp::Failed),
        ..Learned::default()
    };
    if rules.receipts && now >= at.plus(rules.delivery_deadline) {
        return Watched::Due(Escalation {
            reason: "no_receipt",
            detail: format!(
                "no delivered/read receipt from whatsapp within {}; the same code goes by sms",
                readable(rules.delivery_deadline)
            ),
            learned: failed,
        });
    }
    if let (Some(true), Some(after)) = (m.verification, rules.escalate_after)
        && now >= at.plus(after)
    {
        return Watched::Due(Escalation {
            reason: "unchecked_verification",
            detail: format!(
                "the verification was not checked within {} of the whatsapp send; the same code goes by sms",
                readable(after)
            ),
            learned: Learned::default(),
        });
    }
    match rules.watch_end(a.channel, m.verification, at, m.expires_at) {
        Some(t) if t > now => Watched::Until(t),
        _ => Watched::Over,
    }
}

/// Decides what to do with a message now.
pub fn decide(rules: &Rules<'_>, i: &Input<'_>) -> Decision {
    let m = &i.message;
    // A provider took it and no failure receipt followed: it is out, whatever we lost in a
    // crash, unless its watch says the same code must go by another channel now.
    let accepted = i.attempts.iter().rev().find(|a| {
        a.purpose == AttemptPurpose::Code
            && a.end == Some(AttemptEnd::Accepted)
            && a.receipt != Some(ReceiptKind::Failed)
    });
    let mut escalated = None;
    if let Some(a) = accepted {
        match watched(rules, m, a, i.now) {
            Watched::Due(e) if i.now < m.expires_at && m.has_content => escalated = Some(e),
            Watched::Until(until) if m.has_content => {
                return Decision::Watch {
                    channel: a.channel,
                    until,
                };
            }
            _ => return Decision::AlreadySent(a.channel),
        }
    }
    if i.now >= m.expires_at {
        return Decision::End(End::Expire);
    }
    if !m.has_content {
        return Decision::End(End::Fail("content missing (already wiped)".into()));
    }
    let configured: Vec<ChannelKind> = i.health.iter().map(|(c, _)| *c).collect();
    let (mut allowed, mut skipped) = rules.allowed_channels(m.country, m.kind, &configured);
    if let Some(only) = m.only_channel {
        for ch in allowed.iter().filter(|c| **c != only) {
            skipped.push((*ch, format!("the caller asked for {only} only")));
        }
        allowed.retain(|c| *c == only);
    }
    let mut candidates = Vec::new();
    for ch in allowed {
        if ch == ChannelKind::WhatsApp && escalated.is_some() {
            continue;
        }
        let mut excluded = excluded_by_history(ch, i.attempts);
        if ch == ChannelKind::WhatsApp
            && excluded.is_none()
            && i.recipient.no_whatsapp_until.is_some_and(|t| t > i.now)
        {
            excluded = Some("recipient recently reported as not on whatsapp".into());
        }
        match excluded {
            Some(w) => skipped.push((ch, w)),
            None => candidates.push(ch),
        }
    }
    if escalated.is_none() {
        escalated = asked_again(rules, i, &mut candidates, &mut skipped);
    }
    if candidates.is_empty() {
        if let Some(a) = accepted {
            return Decision::AlreadySent(a.channel);
        }
        let reasons: Vec<String> = skipped.iter().map(|(_, w)| w.clone()).collect();
        return Decision::End(End::Fail(format!(
            "no channel left: {}",
            reasons.join("; ")
        )));
    }
    let mut d = plan(rules, i, candidates, skipped);
    if let Decision::Send { escalated: e, .. } = &mut d {
        *e = escalated;
    }
    d
}

/// Without receipts, the user asking again is the signal: a new code for a number whose
/// WhatsApp code is unconfirmed and alive, and out for longer than the delivery deadline,
/// goes by SMS, and the number stays on SMS for a while. Only when SMS can take it.
fn asked_again(
    rules: &Rules<'_>,
    i: &Input<'_>,
    candidates: &mut Vec<ChannelKind>,
    skipped: &mut Vec<(ChannelKind, String)>,
) -> Option<Escalation> {
    let both =
        candidates.contains(&ChannelKind::WhatsApp) && candidates.contains(&ChannelKind::Sms);
    if !both || rules.receipts {
        return None;
    }
    let r = i.recipient;
    if let Some(until) = r.sms_until.filter(|t| *t > i.now) {
        candidates.retain(|c| *c != ChannelKind::WhatsApp);
        skipped.push((
            ChannelKind::WhatsApp,
            format!(
                "this user asked again while a whatsapp code was unconfirmed; sms until {}",
                until.to_rfc3339()
            ),
        ));
        return None;
    }
    // Asking again before a delivered code would have arrived is a double submit, not a
    // sign that WhatsApp failed: the delivery deadline is the time a code gets.
    r.unconfirmed
        .filter(|(since, until)| *until > i.now && since.plus(rules.delivery_deadline) <= i.now)?;
    candidates.retain(|c| *c != ChannelKind::WhatsApp);
    Some(Escalation {
        reason: "asked_again",
        detail: format!(
            "the previous whatsapp code to this number is unconfirmed and the user asked again; codes go by sms for {}",
            readable(rules.unconfirmed_sms_for)
        ),
        learned: Learned {
            sms_until: Some(i.now.plus(rules.unconfirmed_sms_for)),
            ..Learned::default()
        },
    })
}

/// Steps for the channels still in the running: the usable ones in order, each with its
/// budget; a wait when all of them are down; the pre-notice when WhatsApp goes first.
fn plan(
    rules: &Rules<'_>,
    i: &Input<'_>,
    candidates: Vec<ChannelKind>,
    mut skipped: Vec<(ChannelKind, String)>,
) -> Decision {
    let remaining = i.now.until(i.message.expires_at);
    let usable = |ch: ChannelKind| i.health.iter().any(|(c, up)| *c == ch && *up);
    let mut steps = Vec::new();
    let mut down = Vec::new();
    for ch in candidates {
        // A down channel after a usable one stays in the plan: it may be back by the time it
        // is reached, and if not its attempt says so and the message waits for it. Dropped,
        // a WhatsApp failure while the modem restarts would end the message although SMS is
        // seconds away (and on a pair, the node without a modem could never hand it on).
        if !usable(ch) && steps.is_empty() {
            down.push(ch);
            skipped.push((ch, format!("{ch} is down")));
            continue;
        }
        let budget = match ch {
            ChannelKind::WhatsApp => rules.whatsapp_deadline.min(remaining),
            ChannelKind::Sms => SMS_ATTEMPT_CAP.min(remaining),
        };
        steps.push(Step {
            channel: ch,
            budget,
        });
    }
    if steps.is_empty() {
        let names: Vec<&str> = down.iter().map(|c| c.as_str()).collect();
        return Decision::Wait {
            retry_at: i.now.plus(CHANNEL_DOWN_RETRY).min(i.message.expires_at),
            reason: format!("waiting: {} down", names.join(" and ")),
        };
    }
    let sms_possible =
        steps.iter().any(|s| s.channel == ChannelKind::Sms) || down.contains(&ChannelKind::Sms);
    let prenotice = rules.prenotify
        && steps.first().map(|s| s.channel) == Some(ChannelKind::WhatsApp)
        && i.recipient.prenotified_at.is_none()
        && i.recipient.first_whatsapp != Some(FirstWhatsApp::Failed)
        && sms_possible;
    Decision::Send {
        steps,
        skipped,
        prenotice,
        escalated: None,
    }
}

/// What one attempt's outcome means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `None`: go on with the next planned step now. `Some`: the message leaves this way.
    pub end: Option<End>,
    /// Remember until then that the recipient is not on WhatsApp.
    pub no_whatsapp_until: Option<Timestamp>,
    /// Why the dispatcher moved on to another channel (the fallback metric's reason).
    pub fallback: Option<&'static str>,
    /// What it taught about the recipient (first WhatsApp code, pre-notice, unconfirmed).
    pub learned: Learned,
}

/// Where the attempt sat in the plan.
#[derive(Clone, Copy, Debug)]
pub struct Attempted {
    /// The channel tried.
    pub channel: ChannelKind,
    /// Another planned step follows.
    pub more: bool,
    /// Code or text.
    pub kind: MessageKind,
    /// End of the message's lifetime.
    pub expires_at: Timestamp,
    /// Earlier attempts on this channel for this message that ended in Retry: each one
    /// doubles the wait before the next, so a failing provider is not hammered.
    pub earlier_retries: u32,
    /// The plan's [`Decision::Send::prenotice`]: a confirmed WhatsApp code brings the notice.
    pub prenotice: bool,
    /// [`Facts::verification`].
    pub verification: Option<bool>,
}

/// Longest wait a growing back-off reaches.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// The channel's suggested wait, doubled for every earlier retry, at most [`MAX_RETRY_WAIT`]
/// (never shorter than the suggestion).
fn grown(after: Duration, earlier_retries: u32) -> Duration {
    let grown = after.saturating_mul(1u32 << earlier_retries.min(16));
    grown.min(MAX_RETRY_WAIT).max(after)
}

/// What a code attempt on WhatsApp teaches about its recipient: a fallback means its first
/// WhatsApp code failed; without receipts the Cloud API's acceptance is all the confirmation
/// there is (and the code stays unconfirmed for the repeat-request escalation).
fn learned_from(rules: &Rules<'_>, a: Attempted, outcome: &Outcome, now: Timestamp) -> Learned {
    if a.channel != ChannelKind::WhatsApp || a.kind != MessageKind::Code {
        return Learned::default();
    }
    match outcome {
        Outcome::Accepted { .. } if !rules.receipts => Learned {
            first_whatsapp: Some(FirstWhatsApp::Confirmed),
            prenotice_due: a.prenotice,
            unconfirmed: Some((now, a.expires_at)),
            sms_until: None,
        },
        Outcome::FallBack { .. } => Learned {
            first_whatsapp: Some(FirstWhatsApp::Failed),
            ..Learned::default()
        },
        _ => Learned::default(),
    }
}

/// Says what the outcome of the attempt `a` means, at `now` (when it ended).
pub fn after_attempt(
    rules: &Rules<'_>,
    a: Attempted,
    outcome: &Outcome,
    now: Timestamp,
) -> Verdict {
    let ch = a.channel;
    let mut v = Verdict {
        end: None,
        no_whatsapp_until: None,
        fallback: None,
        learned: learned_from(rules, a, outcome, now),
    };
    // Moving on to the next step, or, on the last one, what `last` says.
    let mut move_on = |reason: &'static str, last: End| {
        if a.more && now < a.expires_at {
            v.fallback = Some(reason);
            None
        } else if a.more {
            Some(End::Expire)
        } else {
            Some(last)
        }
    };
    // Trying the same channel later, unless the lifetime is over by then.
    let later = |after: Duration, reason: String| {
        let at = now.plus(after);
        if at >= a.expires_at {
            End::Expire
        } else {
            End::Requeue { at, reason }
        }
    };
    let end = match outcome {
        Outcome::Accepted { .. } => Some(End::Sent {
            channel: ch,
            watch_until: (a.more && a.kind == MessageKind::Code)
                .then(|| rules.watch_end(ch, a.verification, now, a.expires_at))
                .flatten(),
        }),
        Outcome::FallBack { not_on_channel, .. } => {
            let not_on_whatsapp = *not_on_channel && ch == ChannelKind::WhatsApp;
            if not_on_whatsapp {
                v.no_whatsapp_until = Some(now.plus(rules.no_whatsapp_memory));
            }
            let reason = if not_on_whatsapp {
                "not_on_whatsapp"
            } else {
                "recipient_unreachable"
            };
            move_on(
                reason,
                End::Fail("no channel could reach the recipient".into()),
            )
        }
        Outcome::Retry { after, .. } => move_on(
            "retry_exhausted",
            later(
                grown(*after, a.earlier_retries),
                format!("{ch} busy; retrying"),
            ),
        ),
        Outcome::ChannelDown { .. } => move_on(
            "channel_down",
            later(CHANNEL_DOWN_RETRY, format!("{ch} down; waiting")),
        ),
        Outcome::Failed { reason, .. } => Some(End::Fail(reason.clone())),
        Outcome::Unknown { reason } => move_on(
            "unknown_outcome",
            End::Fail(format!(
                "outcome unknown, it may have been delivered: {reason}"
            )),
        ),
    };
    v.end = end;
    v
}

/// What a receipt means for its message and its recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiptVerdict {
    /// The provider gave up on a send we counted as sent: try the next channel now, for this
    /// reason (shown with the message).
    pub fall_back: Option<String>,
    /// Remember "not on WhatsApp" until then (a 131026 in a `failed` receipt).
    pub no_whatsapp_until: Option<Timestamp>,
    /// What it taught about the recipient.
    pub learned: Learned,
}

/// The message as the store left it after recording a receipt.
#[derive(Clone, Copy, Debug)]
pub struct AfterReceipt {
    /// The receipt's channel.
    pub channel: ChannelKind,
    /// What the receipt said.
    pub kind: ReceiptKind,
    /// The provider's error code says the recipient is not on this channel (131026).
    pub not_on_channel: bool,
    /// What the receipted attempt carried.
    pub purpose: AttemptPurpose,
    /// False for a repeated or out-of-order receipt that changed nothing.
    pub changed: bool,
    /// The message's state after the receipt.
    pub state: MessageState,
    /// The channel that carried the message so far.
    pub carried_by: Option<ChannelKind>,
    /// The message's expiry.
    pub expires_at: Timestamp,
    /// [`Rules::notice_allowed`] for the message's recipient.
    pub notice_allowed: bool,
}

/// Says what a receipt means, at `now`. A repeated receipt changes nothing; one about a
/// channel that no longer carries the message (the SMS fallback went out) only updates the
/// record.
pub fn after_receipt(rules: &Rules<'_>, r: AfterReceipt, now: Timestamp) -> ReceiptVerdict {
    let mut v = ReceiptVerdict::default();
    if !r.changed || r.purpose != AttemptPurpose::Code {
        return v;
    }
    let whatsapp = r.channel == ChannelKind::WhatsApp;
    if r.kind == ReceiptKind::Failed {
        if whatsapp {
            v.learned.first_whatsapp = Some(FirstWhatsApp::Failed);
            if r.not_on_channel {
                v.no_whatsapp_until = Some(now.plus(rules.no_whatsapp_memory));
            }
        }
        if r.state == MessageState::Sent && r.carried_by == Some(r.channel) && now < r.expires_at {
            v.fall_back = Some(format!("{} reported the send as failed", r.channel));
        }
    } else if whatsapp && r.kind.confirms_delivery() {
        v.learned.first_whatsapp = Some(FirstWhatsApp::Confirmed);
        v.learned.prenotice_due = r.notice_allowed;
    }
    v
}

#[cfg(test)]
mod tests;
