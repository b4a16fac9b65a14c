//! The routing policy: pure functions that own every decision about a message. [`decide`]
//! plans the channel attempts for a claimed message; [`after_attempt`] says what one attempt's
//! outcome means (next step, requeue, expire, fail, remember "not on WhatsApp");
//! [`after_receipt`] says what a provider's later receipt means. The dispatcher only carries
//! these verdicts out. Nothing here does I/O or reads a clock, and the policy reads a narrow
//! [`Rules`] that tests build in memory.

use std::time::Duration;

use crate::channel::Outcome;
use crate::clock::Timestamp;
use crate::config::{ClientConfig, Config};
use crate::domain::{Attempt, RecipientInfo};
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
    /// Send the one-time SMS pre-notice before a number's first WhatsApp code.
    pub prenotify: bool,
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
        }
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
        /// Send the one-time SMS pre-notice before the first WhatsApp code.
        prenotice: bool,
    },
    /// A provider already took it before a restart: do not send again.
    AlreadySent(ChannelKind),
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

/// How a message leaves the dispatcher's hands after a decision or an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// A provider accepted it on `channel`. `keep_content`: a failure receipt may still send
    /// the same code on a later channel, so the content stays until then.
    Sent {
        /// The channel that took it.
        channel: ChannelKind,
        /// Keep the content for a receipt-driven fallback.
        keep_content: bool,
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

/// Decides what to do with a message now.
pub fn decide(rules: &Rules<'_>, i: &Input<'_>) -> Decision {
    let m = &i.message;
    if i.now >= m.expires_at {
        return Decision::End(End::Expire);
    }
    // A provider took it and no failure receipt followed: it is out, whatever we lost in a crash.
    if let Some(a) = i.attempts.iter().find(|a| {
        a.purpose == AttemptPurpose::Code
            && a.end == Some(AttemptEnd::Accepted)
            && a.receipt != Some(ReceiptKind::Failed)
    }) {
        return Decision::AlreadySent(a.channel);
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
    if candidates.is_empty() {
        let reasons: Vec<String> = skipped.iter().map(|(_, w)| w.clone()).collect();
        return Decision::End(End::Fail(format!(
            "no channel left: {}",
            reasons.join("; ")
        )));
    }
    plan(rules, i, candidates, skipped)
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
        if !usable(ch) {
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
        && sms_possible;
    Decision::Send {
        steps,
        skipped,
        prenotice,
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
}

/// Longest wait a growing back-off reaches.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// The channel's suggested wait, doubled for every earlier retry, at most [`MAX_RETRY_WAIT`]
/// (never shorter than the suggestion).
fn grown(after: Duration, earlier_retries: u32) -> Duration {
    let grown = after.saturating_mul(1u32 << earlier_retries.min(16));
    grown.min(MAX_RETRY_WAIT).max(after)
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
            keep_content: a.more && a.kind == MessageKind::Code,
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

/// What a receipt means for its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptVerdict {
    /// Recorded; nothing else to do.
    Nothing,
    /// The provider gave up on a send we counted as sent: try the next channel now.
    FallBackNow {
        /// Why, for the message's record.
        reason: String,
    },
}

/// The message as the store left it after recording a receipt.
#[derive(Clone, Copy, Debug)]
pub struct AfterReceipt {
    /// The receipt's channel.
    pub channel: ChannelKind,
    /// What the receipt said.
    pub kind: ReceiptKind,
    /// False for a repeated or out-of-order receipt that changed nothing.
    pub changed: bool,
    /// The message's state after the receipt.
    pub state: MessageState,
    /// The message's expiry.
    pub expires_at: Timestamp,
}

/// Says what a receipt means, at `now`.
pub fn after_receipt(r: AfterReceipt, now: Timestamp) -> ReceiptVerdict {
    if r.kind == ReceiptKind::Failed
        && r.changed
        && r.state == MessageState::Sent
        && now < r.expires_at
    {
        ReceiptVerdict::FallBackNow {
            reason: format!("{} reported the send as failed", r.channel),
        }
    } else {
        ReceiptVerdict::Nothing
    }
}

#[cfg(test)]
mod tests;
