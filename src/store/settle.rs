//! The end of an attempt and where its message goes next. [`Store::settle`] writes both in one
//! job, so they commit together: a crash between them can no longer leave an ended attempt
//! beside a message still marked sending (or a moved message beside an open attempt), and a
//! message costs one commit fewer. The single-purpose calls below write the same rows the same
//! way, for callers that change only one of them.

use rusqlite::{Connection, params};

use super::writer::exec;
use super::{Message, SqliteStore, StoreError};
use crate::channel::Outcome;
use crate::clock::Timestamp;
use crate::domain::{
    AttemptEnd, AttemptPurpose, ChannelKind, E164, Learned, MessageId, MessageState,
};

/// Where a message goes once an attempt has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Move {
    /// Nowhere yet: the dispatcher goes on to its next step.
    Stay,
    /// Back to the queue, to be tried at `at`. Only a message that is sending or sent moves: one
    /// that ended meanwhile (a delivery receipt, a newer verification) stays ended.
    Requeue {
        /// When to try again.
        at: Timestamp,
        /// Why; `None` keeps the reason it has.
        reason: Option<String>,
    },
    /// Sent on `channel`, its code kept and the message due again at `until` (a delivery
    /// deadline, an unchecked verification, the end of its lifetime): the claim loop takes it
    /// back then, so the watch survives a restart.
    Watch {
        /// The channel that took it.
        channel: ChannelKind,
        /// When to look at it again.
        until: Timestamp,
    },
    /// To `state` (sent, or a final state, which also stamps `finished_at`). A message that
    /// ended meanwhile (a delivery receipt, a cancellation) keeps its end.
    Finish {
        /// The new state.
        state: MessageState,
        /// The channel that carried it; `None` keeps the one recorded.
        channel: Option<ChannelKind>,
        /// Why it is where it is.
        reason: Option<String>,
        /// Keep the content for a later fallback (a provider took it but a failure receipt may
        /// still come); otherwise it is wiped now.
        keep_content: bool,
    },
}

/// The row of an attempt that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptRow {
    /// It departed: the row [`Store::start_attempt`] opened then, ended now.
    Departed(i64),
    /// It never departed (circuit open, rate cap, no modem took it): nothing left the box, and
    /// the row is written only now, already ended, so a crash before it leaves no trace.
    Stayed {
        /// The channel that was asked.
        channel: ChannelKind,
        /// Code or pre-notice.
        purpose: AttemptPurpose,
        /// When the channel was asked.
        started_at: Timestamp,
    },
}

/// Everything one attempt's end changes, written by [`Store::settle`] in one commit.
#[derive(Clone, Debug)]
pub struct Settlement {
    /// The attempt that ended and how.
    pub attempt: Option<(AttemptRow, Outcome)>,
    /// Remember that the message's recipient is not on WhatsApp until then.
    pub no_whatsapp_until: Option<Timestamp>,
    /// What else it taught about the recipient.
    pub learned: Learned,
    /// Where the message goes.
    pub movement: Move,
}

impl Settlement {
    /// A move with no attempt behind it and nothing learned.
    pub fn moving(movement: Move) -> Settlement {
        Settlement {
            attempt: None,
            no_whatsapp_until: None,
            learned: Learned::default(),
            movement,
        }
    }
}

/// An attempt's end as its columns hold it.
struct Ending {
    end: AttemptEnd,
    provider_id: Option<String>,
    error_code: Option<String>,
    detail: Option<String>,
}

impl Ending {
    fn of(outcome: &Outcome) -> Ending {
        Ending {
            end: outcome.end(),
            provider_id: match outcome {
                Outcome::Accepted { provider_id } => Some(provider_id.clone()),
                _ => None,
            },
            error_code: outcome.error_code().map(str::to_owned),
            detail: outcome.reason().map(str::to_owned),
        }
    }
}

impl SqliteStore {
    /// Records how an attempt ended, remembers what it taught about the recipient and moves
    /// the message: one writer job, one commit, all or nothing. True when this made the
    /// recipient's pre-notice due (the caller sends it; [`Store::due_prenotices`] finds it
    /// again after a restart).
    pub async fn settle(
        &self,
        message: &Message,
        s: Settlement,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.settle_message(&message.id, &message.recipient, s, now)
            .await
    }

    /// [`Store::settle`] for a message known by its id and recipient (a receipt's).
    pub async fn settle_message(
        &self,
        id: &MessageId,
        recipient: &E164,
        s: Settlement,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        let no_whatsapp = s.no_whatsapp_until.map(|until| (recipient.clone(), until));
        let ending = s.attempt.map(|(attempt, o)| (attempt, Ending::of(&o)));
        let recipient = recipient.to_string();
        self.write(move |c| {
            match &ending {
                Some((AttemptRow::Departed(attempt), ending)) => {
                    end_attempt(c, *attempt, ending, now)?;
                }
                Some((
                    AttemptRow::Stayed {
                        channel,
                        purpose,
                        started_at,
                    },
                    ending,
                )) => {
                    insert_ended_attempt(c, &id, *channel, *purpose, *started_at, ending, now)?;
                }
                None => {}
            }
            if let Some((number, until)) = &no_whatsapp {
                remember_no_whatsapp(c, number, *until)?;
            }
            let due = learn(c, &recipient, &id, &s.learned)?;
            move_message(c, &id, &s.movement, now)?;
            Ok(due)
        })
        .await
    }

    /// Records how an attempt ended.
    pub async fn finish_attempt(
        &self,
        attempt_id: i64,
        outcome: &Outcome,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let ending = Ending::of(outcome);
        self.write(move |c| Ok(end_attempt(c, attempt_id, &ending, now)?))
            .await
    }

    /// Moves a message to `state`. `keep_body` keeps the content for a possible later fallback
    /// (a provider accepted it but a failure receipt may still come); otherwise it is wiped.
    pub async fn finish(
        &self,
        message_id: &str,
        state: MessageState,
        channel: Option<ChannelKind>,
        reason: Option<String>,
        keep_body: bool,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let id = message_id.to_owned();
        let to = Move::Finish {
            state,
            channel,
            reason,
            keep_content: keep_body,
        };
        self.write(move |c| Ok(move_message(c, &id, &to, now)?))
            .await
    }

    /// Puts a message back in the queue to be tried at `at` (if it is sending or sent).
    pub async fn requeue(
        &self,
        message_id: &str,
        at: Timestamp,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let id = message_id.to_owned();
        let to = Move::Requeue { at, reason };
        self.write(move |c| Ok(move_message(c, &id, &to, at)?))
            .await
    }
}

fn end_attempt(
    c: &Connection,
    attempt_id: i64,
    e: &Ending,
    now: Timestamp,
) -> rusqlite::Result<()> {
    exec(c,
        "UPDATE attempts SET ended_at = ?2, outcome = ?3, provider_id = ?4, error_code = ?5, detail = ?6
         WHERE id = ?1",
        params![attempt_id, now.0, e.end.as_str(), e.provider_id, e.error_code, e.detail],
    )?;
    Ok(())
}

fn insert_ended_attempt(
    c: &Connection,
    message_id: &str,
    channel: ChannelKind,
    purpose: AttemptPurpose,
    started_at: Timestamp,
    e: &Ending,
    now: Timestamp,
) -> rusqlite::Result<()> {
    exec(c,
        "INSERT INTO attempts (message_id, channel, purpose, started_at, ended_at, outcome, provider_id, error_code, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![message_id, channel.as_str(), purpose.as_str(), started_at.0, now.0, e.end.as_str(), e.provider_id, e.error_code, e.detail],
    )?;
    Ok(())
}

fn remember_no_whatsapp(c: &Connection, number: &str, until: Timestamp) -> rusqlite::Result<()> {
    exec(
        c,
        "INSERT INTO recipients (number, no_whatsapp_until) VALUES (?1, ?2)
         ON CONFLICT (number) DO UPDATE SET no_whatsapp_until = ?2",
        params![number, until.0],
    )?;
    Ok(())
}

/// Writes what was learned about `number`; true when the pre-notice became due with this
/// message's confirmed code. The SQL guards "once per number" and "never after a first
/// WhatsApp code that failed", whatever the caller believed.
fn learn(c: &Connection, number: &str, message_id: &str, l: &Learned) -> rusqlite::Result<bool> {
    if l.is_empty() {
        return Ok(false);
    }
    exec(
        c,
        "INSERT INTO recipients (number) VALUES (?1) ON CONFLICT (number) DO NOTHING",
        params![number],
    )?;
    if let Some(first) = l.first_whatsapp {
        exec(
            c,
            "UPDATE recipients SET first_whatsapp = ?2 WHERE number = ?1 AND first_whatsapp IS NULL",
            params![number, first.as_str()],
        )?;
    }
    let mut due = false;
    if l.prenotice_due {
        due = exec(
            c,
            "UPDATE recipients SET prenotice_message = ?2
             WHERE number = ?1 AND prenotified_at IS NULL AND prenotice_message IS NULL
               AND first_whatsapp = 'confirmed'",
            params![number, message_id],
        )? == 1;
    }
    if let Some((since, until)) = l.unconfirmed {
        exec(
            c,
            "UPDATE recipients SET unconfirmed_since = ?2, unconfirmed_until = ?3 WHERE number = ?1",
            params![number, since.0, until.0],
        )?;
    }
    if let Some(until) = l.sms_until {
        exec(
            c,
            "UPDATE recipients SET sms_until = ?2 WHERE number = ?1",
            params![number, until.0],
        )?;
    }
    Ok(due)
}

fn move_message(c: &Connection, id: &str, to: &Move, now: Timestamp) -> rusqlite::Result<()> {
    match to {
        Move::Stay => {}
        Move::Watch { channel, until } => {
            exec(c,
                "UPDATE messages SET state = 'sent', channel = ?2, reason = NULL, next_attempt_at = ?3
                 WHERE id = ?1 AND state IN ('queued', 'sending', 'sent')",
                params![id, channel.as_str(), until.0],
            )?;
        }
        Move::Requeue { at, reason } => {
            exec(c,
                "UPDATE messages SET state = 'queued', next_attempt_at = ?2, reason = COALESCE(?3, reason)
                 WHERE id = ?1 AND state IN ('sending', 'sent')",
                params![id, at.0, reason],
            )?;
        }
        Move::Finish {
            state,
            channel,
            reason,
            keep_content,
        } => {
            let finished = state.is_final().then_some(now.0);
            // An end reached meanwhile (a delivery receipt, a cancellation) stands; a code
            // whose message ended is wiped all the same.
            let sql = if *keep_content {
                "UPDATE messages SET state = ?2, channel = COALESCE(?3, channel), reason = ?4, finished_at = ?5
                 WHERE id = ?1 AND state IN ('queued', 'sending', 'sent')"
            } else {
                "UPDATE messages SET
                    state = CASE WHEN state IN ('queued', 'sending', 'sent') THEN ?2 ELSE state END,
                    channel = CASE WHEN state IN ('queued', 'sending', 'sent') THEN COALESCE(?3, channel) ELSE channel END,
                    reason = CASE WHEN state IN ('queued', 'sending', 'sent') THEN ?4 ELSE reason END,
                    finished_at = CASE WHEN state IN ('queued', 'sending', 'sent') THEN ?5 ELSE finished_at END,
                    body = NULL, sms_text = NULL WHERE id = ?1"
            };
            exec(
                c,
                sql,
                params![
                    id,
                    state.as_str(),
                    channel.map(ChannelKind::as_str),
                    reason,
                    finished
                ],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::new_msg;

    const SENT_SMS: Move = Move::Finish {
        state: MessageState::Sent,
        channel: Some(ChannelKind::Sms),
        reason: None,
        keep_content: false,
    };

    fn ended(attempt: i64, outcome: Outcome, movement: Move) -> Settlement {
        Settlement {
            attempt: Some((AttemptRow::Departed(attempt), outcome)),
            no_whatsapp_until: None,
            learned: Learned::default(),
            movement,
        }
    }

    /// A store with the given messages accepted at 1 s and claimed (sending).
    async fn claimed(dir: &tempfile::TempDir, ids: &[&str]) -> (Store, Vec<Message>) {
        let s = Store::open(&dir.path().join("db")).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let m = new_msg(id, &format!("+91{i}"), 1000, None);
            s.insert(m, vec![]).await.unwrap();
        }
        let (mut claimed, _) = s.claim_due(Timestamp(1000), 100).await.unwrap();
        claimed.sort_by(|a, b| a.id.cmp(&b.id));
        (s, claimed)
    }

    fn not_on_whatsapp() -> Outcome {
        Outcome::FallBack {
            code: Some("131026".into()),
            reason: "not on whatsapp".into(),
            not_on_channel: true,
        }
    }

    #[tokio::test]
    async fn the_attempt_and_the_move_land_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ms) = claimed(&dir, &["m1", "m2"]).await;
        let a = s
            .start_attempt(
                &ms[0].id,
                ChannelKind::Sms,
                AttemptPurpose::Code,
                Timestamp(1001),
            )
            .await
            .unwrap();
        let accepted = Outcome::Accepted {
            provider_id: "modem0/7".into(),
        };
        s.settle(&ms[0], ended(a, accepted, SENT_SMS), Timestamp(1002))
            .await
            .unwrap();
        let (m, atts) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!(
            (m.state, m.channel),
            (MessageState::Sent, Some(ChannelKind::Sms))
        );
        assert!(m.content.is_none() && m.finished_at.is_none());
        assert_eq!(atts[0].end, Some(AttemptEnd::Accepted));
        assert_eq!(atts[0].provider_id.as_deref(), Some("modem0/7"));
        assert_eq!(atts[0].ended_at, Some(Timestamp(1002)));

        // The message cannot move: neither does the attempt end, nor is the recipient
        // remembered, although those statements ran first.
        let b = s
            .start_attempt(
                &ms[1].id,
                ChannelKind::WhatsApp,
                AttemptPurpose::Code,
                Timestamp(1001),
            )
            .await
            .unwrap();
        let trigger = |sql: &'static str| {
            s.write(move |c| {
                c.execute_batch(sql)?;
                Ok(())
            })
        };
        trigger(
            "CREATE TRIGGER refuse BEFORE UPDATE OF state ON messages
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .await
        .unwrap();
        let failed = Move::Finish {
            state: MessageState::Failed,
            channel: None,
            reason: Some("no channel left".into()),
            keep_content: false,
        };
        let settlement = Settlement {
            no_whatsapp_until: Some(Timestamp(9_000)),
            ..ended(b, not_on_whatsapp(), failed)
        };
        let refused = s.settle(&ms[1], settlement.clone(), Timestamp(1003)).await;
        assert!(refused.is_err());
        let (m, atts) = s.get("m2", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Sending);
        assert!(m.content.is_some());
        assert_eq!((atts[0].end, atts[0].ended_at), (None, None));
        let r = s.recipient(&ms[1].recipient).await.unwrap();
        assert_eq!(r.no_whatsapp_until, None);

        trigger("DROP TRIGGER refuse").await.unwrap();
        s.settle(&ms[1], settlement, Timestamp(1003)).await.unwrap();
        let (m, atts) = s.get("m2", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Failed);
        assert_eq!(m.finished_at, Some(Timestamp(1003)));
        assert_eq!(atts[0].end, Some(AttemptEnd::FallBack));
        assert_eq!(atts[0].error_code.as_deref(), Some("131026"));
        let r = s.recipient(&ms[1].recipient).await.unwrap();
        assert_eq!(r.no_whatsapp_until, Some(Timestamp(9_000)));
    }

    #[tokio::test]
    async fn a_requeue_moves_only_a_message_that_is_sending_or_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ms) = claimed(&dir, &["m1", "m2", "m3"]).await;
        let due_at = |id: &'static str| {
            s.read(move |c| {
                Ok(c.query_row(
                    "SELECT state, next_attempt_at, reason FROM messages WHERE id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )?)
            })
        };
        let busy = || Move::Requeue {
            at: Timestamp(5_000),
            reason: Some("sms busy; retrying".into()),
        };
        let retry = || Outcome::Retry {
            after: std::time::Duration::from_secs(4),
            code: None,
            reason: "modem busy".into(),
        };
        // Sending: back to the queue, with its attempt ended.
        let a = s
            .start_attempt(
                &ms[0].id,
                ChannelKind::Sms,
                AttemptPurpose::Code,
                Timestamp(1001),
            )
            .await
            .unwrap();
        s.settle(&ms[0], ended(a, retry(), busy()), Timestamp(1002))
            .await
            .unwrap();
        let reason = Some("sms busy; retrying".to_owned());
        assert_eq!(
            due_at("m1").await.unwrap(),
            ("queued".into(), 5_000, reason.clone())
        );
        assert_eq!(
            s.attempts("m1").await.unwrap()[0].end,
            Some(AttemptEnd::Retry)
        );
        // Sent (a failure receipt sends it elsewhere): back to the queue too.
        s.settle(&ms[1], Settlement::moving(SENT_SMS), Timestamp(1002))
            .await
            .unwrap();
        let requeue = Settlement::moving(busy());
        s.settle(&ms[1], requeue.clone(), Timestamp(1003))
            .await
            .unwrap();
        assert_eq!(
            due_at("m2").await.unwrap(),
            ("queued".into(), 5_000, reason)
        );
        // Ended meanwhile, or still queued: it stays where it is.
        s.finish(
            &ms[2].id,
            MessageState::Delivered,
            None,
            None,
            false,
            Timestamp(1002),
        )
        .await
        .unwrap();
        s.settle(&ms[2], requeue.clone(), Timestamp(1003))
            .await
            .unwrap();
        assert_eq!(
            due_at("m3").await.unwrap(),
            ("delivered".into(), 1_000, None)
        );
        s.insert(new_msg("m4", "+914", 2000, None), vec![])
            .await
            .unwrap();
        let (m4, _) = s.get("m4", "c").await.unwrap().unwrap();
        s.settle(&m4, requeue, Timestamp(2001)).await.unwrap();
        assert_eq!(due_at("m4").await.unwrap(), ("queued".into(), 2_000, None));
    }

    #[tokio::test]
    async fn a_finish_wipes_the_content_unless_told_to_keep_it_and_stay_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ms) = claimed(&dir, &["m1", "m2"]).await;
        let kept = Move::Finish {
            state: MessageState::Sent,
            channel: Some(ChannelKind::Sms),
            reason: None,
            keep_content: true,
        };
        let unknown = || Outcome::Unknown {
            reason: "no answer".into(),
        };
        let a = s
            .start_attempt(
                &ms[0].id,
                ChannelKind::WhatsApp,
                AttemptPurpose::Code,
                Timestamp(1001),
            )
            .await
            .unwrap();
        s.settle(&ms[0], ended(a, unknown(), Move::Stay), Timestamp(1002))
            .await
            .unwrap();
        let (m, atts) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Sending);
        assert!(m.content.is_some());
        assert_eq!(atts[0].end, Some(AttemptEnd::Unknown));
        s.settle(&ms[0], Settlement::moving(kept), Timestamp(1003))
            .await
            .unwrap();
        let (m, _) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Sent);
        assert_eq!(m.content, ms[0].content);
        s.settle(&ms[1], Settlement::moving(SENT_SMS), Timestamp(1003))
            .await
            .unwrap();
        let (m, _) = s.get("m2", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Sent);
        assert!(m.content.is_none());
    }

    fn learned(l: Learned, movement: Move) -> Settlement {
        Settlement {
            learned: l,
            ..Settlement::moving(movement)
        }
    }

    #[tokio::test]
    async fn a_watched_code_is_claimed_again_at_its_deadline_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ms) = claimed(&dir, &["m1", "m2"]).await;
        let watch = Move::Watch {
            channel: ChannelKind::WhatsApp,
            until: Timestamp(16_000),
        };
        s.settle(&ms[0], Settlement::moving(watch), Timestamp(1_001))
            .await
            .unwrap();
        s.settle(&ms[1], Settlement::moving(SENT_SMS), Timestamp(1_001))
            .await
            .unwrap();
        let (m, _) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Sent);
        assert_eq!(m.content, ms[0].content, "kept for the fallback");
        assert_eq!(s.next_due().await.unwrap(), Some(Timestamp(16_000)));
        // kill -9: the deadline is a row, not a timer.
        drop(s);
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.recover(Timestamp(2_000)).await.unwrap();
        let (early, _) = s.claim_due(Timestamp(15_999), 10).await.unwrap();
        assert!(early.is_empty());
        let (due, _) = s.claim_due(Timestamp(16_000), 10).await.unwrap();
        let ids: Vec<&str> = due.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["m1"],
            "the sent SMS without its code is never claimed"
        );
        assert_eq!(due[0].state, MessageState::Sending);
        assert!(due[0].content.is_some());
        // A delivery receipt meanwhile stands against a later finish.
        s.write(|c| {
            c.execute_batch("UPDATE messages SET state = 'delivered' WHERE id = 'm1'")?;
            Ok(())
        })
        .await
        .unwrap();
        s.settle(&due[0], Settlement::moving(SENT_SMS), Timestamp(16_001))
            .await
            .unwrap();
        let (m, _) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Delivered);
        assert!(m.content.is_none(), "wiped all the same");
    }

    #[tokio::test]
    async fn the_prenotice_is_due_once_per_number_and_never_after_a_failed_first_code() {
        use crate::domain::FirstWhatsApp::{Confirmed, Failed};
        let dir = tempfile::tempdir().unwrap();
        let (s, ms) = claimed(&dir, &["m1", "m2", "m3"]).await;
        let confirmed = Learned {
            first_whatsapp: Some(Confirmed),
            prenotice_due: true,
            ..Learned::default()
        };
        let now = Timestamp(2_000);
        assert!(
            s.settle(&ms[0], learned(confirmed, Move::Stay), now)
                .await
                .unwrap()
        );
        // The same number's next confirmed code: not due again.
        let mut again = ms[0].clone();
        again.id = ms[1].id.clone();
        assert!(
            !s.settle(&again, learned(confirmed, Move::Stay), now)
                .await
                .unwrap()
        );
        let due = s.due_prenotices().await.unwrap();
        assert_eq!(
            due.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m1"]
        );
        // Once it departed it is no longer due.
        s.start_prenotice("m1", &ms[0].recipient, now)
            .await
            .unwrap();
        assert!(s.due_prenotices().await.unwrap().is_empty());
        // A number whose first WhatsApp code failed: a later confirmed code brings nothing.
        let failed = Learned {
            first_whatsapp: Some(Failed),
            ..Learned::default()
        };
        s.settle(&ms[2], learned(failed, Move::Stay), now)
            .await
            .unwrap();
        assert!(
            !s.settle(&ms[2], learned(confirmed, Move::Stay), now)
                .await
                .unwrap()
        );
        let r = s.recipient(&ms[2].recipient).await.unwrap();
        assert_eq!(r.first_whatsapp, Some(Failed));
        // The escalation's facts land with it.
        let asked = Learned {
            unconfirmed: Some((Timestamp(1_000), Timestamp(9_000))),
            sms_until: Some(Timestamp(99_000)),
            ..Learned::default()
        };
        s.settle(&ms[2], learned(asked, Move::Stay), now)
            .await
            .unwrap();
        let r = s.recipient(&ms[2].recipient).await.unwrap();
        assert_eq!(r.unconfirmed, Some((Timestamp(1_000), Timestamp(9_000))));
        assert_eq!(r.sms_until, Some(Timestamp(99_000)));
    }

    #[tokio::test]
    async fn not_requested_cancels_and_wipes_the_numbers_live_codes_only() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ms) = claimed(&dir, &["m1", "m2"]).await;
        let to = ms[0].recipient.to_string();
        // m1 watched (sent, code kept); a third, queued, to the same number; m2 elsewhere.
        let watch = Move::Watch {
            channel: ChannelKind::WhatsApp,
            until: Timestamp(16_000),
        };
        s.settle(&ms[0], Settlement::moving(watch), Timestamp(1_001))
            .await
            .unwrap();
        let mut m3 = new_msg("m3", "+90", 1_500, None);
        m3.recipient = ms[0].recipient.clone();
        s.insert(m3, vec![]).await.unwrap();
        let (codes, verifications) = s.cancel_not_requested(&to, Timestamp(3_000)).await.unwrap();
        assert_eq!((codes, verifications), (2, 0));
        for id in ["m1", "m3"] {
            let (m, _) = s.get(id, "c").await.unwrap().unwrap();
            assert_eq!(m.state, MessageState::Failed, "{id}");
            assert!(m.content.is_none(), "{id}");
        }
        let (m, _) = s.get("m2", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Sending);
        assert!(m.content.is_some());
        let (due, _) = s.claim_due(Timestamp(20_000), 10).await.unwrap();
        assert!(due.is_empty(), "a canceled code is never claimed again");
    }
}
