//! The departure hook the dispatcher hands each attempt ([`crate::channel::Depart`]): the
//! attempt's row is opened when the channel is about to write to the provider, not when the
//! attempt is queued, so after a crash an open row means "may have been delivered" and a
//! message without one is simply sent again.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::channel::{BoxFuture, Depart, DepartError};
use crate::clock::SharedClock;
use crate::domain::{AttemptPurpose, ChannelKind};
use crate::store::{AttemptRow, Store};

/// Where an attempt stands with respect to leaving the box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leave {
    /// Not departed (yet).
    Waiting,
    /// Departed; its open row.
    Left(i64),
    /// A pre-notice that may not leave: another one left first. Nothing is recorded.
    Refused,
    /// The dispatcher has its verdict: a departure now is refused.
    Closed,
}

/// One attempt's departure: opens its row (one commit) the first time it is asked.
pub(super) struct Leaving {
    store: Store,
    clock: SharedClock,
    message_id: String,
    recipient: String,
    channel: ChannelKind,
    purpose: AttemptPurpose,
    state: Arc<Mutex<Leave>>,
    asked_at: crate::clock::Timestamp,
}

impl Leaving {
    /// A departure hook for an attempt of `message_id` to `recipient` on `channel`.
    pub(super) fn new(
        store: Store,
        clock: SharedClock,
        message_id: &str,
        recipient: &str,
        channel: ChannelKind,
        purpose: AttemptPurpose,
    ) -> Arc<Leaving> {
        let asked_at = clock.now();
        Arc::new(Leaving {
            store,
            clock,
            message_id: message_id.to_owned(),
            recipient: recipient.to_owned(),
            channel,
            purpose,
            state: Arc::new(Mutex::new(Leave::Waiting)),
            asked_at,
        })
    }

    /// Ends the attempt's chance to depart and tells how far it got. Waits for a departure
    /// being written, so its row is never left open behind the dispatcher's back.
    pub(super) async fn close(&self) -> Leave {
        std::mem::replace(&mut *self.state.lock().await, Leave::Closed)
    }

    /// The row to settle for an attempt that stood at `leave` when it was closed: the open
    /// one if it departed, otherwise a new one (a refused pre-notice is not settled at all).
    pub(super) fn row(&self, leave: Leave) -> AttemptRow {
        match leave {
            Leave::Left(id) => AttemptRow::Departed(id),
            Leave::Waiting | Leave::Refused | Leave::Closed => AttemptRow::Stayed {
                channel: self.channel,
                purpose: self.purpose,
                started_at: self.asked_at,
            },
        }
    }
}

impl Depart for Leaving {
    fn depart(&self) -> BoxFuture<'_, Result<(), DepartError>> {
        Box::pin(async move {
            let guard = self.state.clone().lock_owned().await;
            match *guard {
                Leave::Left(_) => return Ok(()),
                Leave::Refused => return Err(DepartError("a pre-notice left already".into())),
                Leave::Closed => return Err(DepartError("the attempt is over".into())),
                Leave::Waiting => {}
            }
            let (store, now) = (self.store.clone(), self.clock.now());
            let (id, to) = (self.message_id.clone(), self.recipient.clone());
            let (channel, purpose) = (self.channel, self.purpose);
            // The write runs in a task of its own that holds the state: a channel that gives
            // up waiting (its deadline) cannot leave a row open that the dispatcher never
            // hears of, and the dispatcher's close waits for the write to land.
            let write = tokio::spawn(async move {
                let mut guard = guard;
                let opened = match purpose {
                    AttemptPurpose::Code => store.depart_attempt(&id, channel, now).await,
                    AttemptPurpose::Prenotice => store.start_prenotice(&id, &to, now).await,
                };
                match opened {
                    Ok(Some(row)) => {
                        *guard = Leave::Left(row);
                        Ok(())
                    }
                    // Delivered or canceled while it waited: nothing more may leave.
                    Ok(None) if purpose == AttemptPurpose::Code => {
                        Err(DepartError("the message ended meanwhile".into()))
                    }
                    Ok(None) => {
                        *guard = Leave::Refused;
                        Err(DepartError("a pre-notice left already".into()))
                    }
                    Err(e) => Err(DepartError(format!("cannot record the departure: {e}"))),
                }
            });
            write
                .await
                .map_err(|_| DepartError("recording the departure failed".into()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Outcome;
    use std::time::Duration;

    use crate::clock::{ManualClock, Timestamp};
    use crate::domain::{AttemptEnd, Content, E164, MessageId, MessageState};
    use crate::store::{Message, Move, NewMessage, Settlement};

    fn new_msg(id: &str, to: &str) -> NewMessage {
        NewMessage {
            id: MessageId::new(id),
            client: "c".into(),
            recipient: E164::new(to).unwrap(),
            country: Some("IN".into()),
            content: Content::Code {
                code: "123456".into(),
                sms_text: "code 123456".into(),
            },
            locale: None,
            reference: None,
            idempotency_key: None,
            created_at: Timestamp(1000),
            expires_at: Timestamp(301_000),
            only_channel: None,
        }
    }

    /// A store at `path` holding these messages (id, recipient), claimed (sending).
    async fn claimed(path: &std::path::Path, msgs: &[(&str, &str)]) -> (Store, Vec<Message>) {
        let s = Store::open(path).unwrap();
        for (id, to) in msgs {
            s.insert(new_msg(id, to), vec![]).await.unwrap();
        }
        let (mut ms, _) = s.claim_due(Timestamp(1000), 100).await.unwrap();
        ms.sort_by(|a, b| a.id.cmp(&b.id));
        (s, ms)
    }

    fn leaving(s: &Store, m: &Message, purpose: AttemptPurpose) -> Arc<Leaving> {
        let clock: SharedClock = ManualClock::new(Timestamp(1001));
        Leaving::new(
            s.clone(),
            clock,
            &m.id,
            &m.recipient,
            ChannelKind::Sms,
            purpose,
        )
    }

    #[tokio::test]
    async fn only_an_attempt_that_departed_survives_a_crash_as_possibly_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let msgs = [
            ("m1", "+919800000001"),
            ("m2", "+919800000002"),
            ("m3", "+919800000003"),
        ];
        let (s, ms) = claimed(&path, &msgs).await;
        let code = AttemptPurpose::Code;
        let (left, queued, refused) = (
            leaving(&s, &ms[0], code),
            leaving(&s, &ms[1], code),
            leaving(&s, &ms[2], code),
        );
        // m1 departs (its PDU is about to be written): one open row, however often asked.
        left.depart().await.unwrap();
        left.depart().await.unwrap();
        let atts = s.attempts("m1").await.unwrap();
        assert_eq!((atts.len(), atts[0].end), (1, None));
        // m2 still waits for a modem: nothing is written.
        assert!(s.attempts("m2").await.unwrap().is_empty());
        // m3's channel never let it go (circuit open): one row, written ended at settle time,
        // and a departure after the verdict is refused and writes nothing.
        let leave = refused.close().await;
        assert_eq!(leave, Leave::Waiting);
        let down = Outcome::ChannelDown {
            code: None,
            reason: "circuit open".into(),
        };
        let settlement = Settlement {
            attempt: Some((refused.row(leave), down)),
            no_whatsapp_until: None,
            learned: crate::domain::Learned::default(),
            movement: Move::Requeue {
                at: Timestamp(5000),
                reason: None,
            },
        };
        s.settle(&ms[2], settlement, Timestamp(1002)).await.unwrap();
        assert!(refused.depart().await.is_err());
        let atts = s.attempts("m3").await.unwrap();
        assert_eq!(atts.len(), 1);
        assert_eq!(
            (atts[0].end, atts[0].started_at, atts[0].ended_at),
            (
                Some(AttemptEnd::ChannelDown),
                Timestamp(1001),
                Some(Timestamp(1002))
            )
        );

        // kill -9: no settle for m1 and m2; the next process opens the same file.
        drop((left, queued, refused, ms, s));
        let s = Store::open(&path).unwrap();
        assert_eq!(s.recover(Timestamp(2000)).await.unwrap(), 2);
        let atts = s.attempts("m1").await.unwrap();
        assert_eq!(atts[0].end, Some(AttemptEnd::Interrupted));
        assert!(atts[0].end.unwrap().may_have_reached_provider());
        // m2 never left: back in the queue with a clean history, so it is sent again.
        assert!(s.attempts("m2").await.unwrap().is_empty());
        let (again, _) = s.claim_due(Timestamp(2000), 10).await.unwrap();
        let mut ids: Vec<&str> = again.iter().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["m1", "m2"]);
        assert!(again.iter().all(|m| m.state == MessageState::Sending));
    }

    #[tokio::test]
    async fn a_prenotice_marks_its_recipient_only_when_it_departs() {
        let dir = tempfile::tempdir().unwrap();
        let to = "+919800000001";
        let msgs = [("m1", to), ("m2", to), ("m3", "+919800000003")];
        let (s, ms) = claimed(&dir.path().join("db"), &msgs).await;
        let notice = AttemptPurpose::Prenotice;
        let (first, second, stuck) = (
            leaving(&s, &ms[0], notice),
            leaving(&s, &ms[1], notice),
            leaving(&s, &ms[2], notice),
        );
        assert_eq!(s.recipient(to).await.unwrap().prenotified_at, None);
        first.depart().await.unwrap();
        assert_eq!(
            s.recipient(to).await.unwrap().prenotified_at,
            Some(Timestamp(1001))
        );
        let atts = s.attempts("m1").await.unwrap();
        assert_eq!(
            (atts.len(), atts[0].purpose, atts[0].end),
            (1, notice, None)
        );
        // A second notice to the same recipient, queued meanwhile, may not leave.
        assert!(second.depart().await.is_err());
        assert_eq!(second.close().await, Leave::Refused);
        assert!(s.attempts("m2").await.unwrap().is_empty());
        // One that never departs (no modem took it) leaves its recipient to a later code.
        assert_eq!(stuck.close().await, Leave::Waiting);
        let other = s.recipient("+919800000003").await.unwrap();
        assert_eq!(other.prenotified_at, None);
    }

    #[tokio::test]
    async fn a_code_whose_message_ended_meanwhile_may_not_depart() {
        let dir = tempfile::tempdir().unwrap();
        let msgs = [("m1", "+919800000001"), ("m2", "+919800000002")];
        let (s, ms) = claimed(&dir.path().join("db"), &msgs).await;
        // m1: a delivery receipt for WhatsApp (or a cancellation) while its SMS fallback
        // waited for a modem.
        let now = Timestamp(1001);
        s.finish("m1", MessageState::Delivered, None, None, false, now)
            .await
            .unwrap();
        let code = AttemptPurpose::Code;
        let late = leaving(&s, &ms[0], code);
        assert!(late.depart().await.is_err());
        assert!(s.attempts("m1").await.unwrap().is_empty(), "nothing left");
        assert_eq!(late.close().await, Leave::Waiting);
        // A message still in the dispatcher's hands departs as before.
        leaving(&s, &ms[1], code).depart().await.unwrap();
        assert_eq!(s.attempts("m2").await.unwrap().len(), 1);
    }

    /// The delivery deadline's SMS against a `delivered` that lands at each point of its way
    /// out, in the order the dispatcher and the webhook would interleave them.
    #[tokio::test]
    async fn a_delivered_receipt_stops_the_deadline_sms_until_the_sms_departs() {
        use crate::channel::ReceiptStatus;
        use crate::domain::{Learned, ReceiptKind};
        use crate::store::AttemptRow;
        let dir = tempfile::tempdir().unwrap();
        let msgs = [
            ("m1", "+919800000001"),
            ("m2", "+919800000002"),
            ("m3", "+919800000003"),
            ("m4", "+919800000004"),
        ];
        let (s, ms) = claimed(&dir.path().join("db"), &msgs).await;
        let wa = ChannelKind::WhatsApp;
        // Each code accepted by WhatsApp at 1.001 s and watched until its deadline at 16 s.
        for (i, m) in ms.iter().enumerate() {
            let row = AttemptRow::Stayed {
                channel: wa,
                purpose: AttemptPurpose::Code,
                started_at: Timestamp(1001),
            };
            let accepted = Outcome::Accepted {
                provider_id: format!("wamid.{}", i + 1),
            };
            let settlement = Settlement {
                attempt: Some((row, accepted)),
                no_whatsapp_until: None,
                learned: Learned::default(),
                movement: Move::Watch {
                    channel: wa,
                    until: Timestamp(16_000),
                },
            };
            s.settle(m, settlement, Timestamp(1001)).await.unwrap();
        }
        let delivered = async |wamid: &str| {
            let at = Timestamp(16_500);
            let status = ReceiptStatus::Delivered;
            s.apply_receipt(wa, wamid.into(), status, at).await.unwrap()
        };
        let sms_rows = async |id: &str| {
            let atts = s.attempts(id).await.unwrap();
            atts.iter()
                .filter(|a| a.channel == ChannelKind::Sms)
                .count()
        };
        // The deadline: the claim loop takes all four back for their SMS.
        let (due, _) = s.claim_due(Timestamp(16_000), 10).await.unwrap();
        assert_eq!(due.len(), 4);
        let sms = |m: &Message| {
            let clock: SharedClock = ManualClock::new(Timestamp(16_001));
            Leaving::new(
                s.clone(),
                clock,
                &m.id,
                &m.recipient,
                ChannelKind::Sms,
                AttemptPurpose::Code,
            )
        };

        // m1: the receipt commits while the SMS waits for a modem: it never departs.
        let effect = delivered("wamid.1").await.unwrap();
        assert!(effect.newly_delivered);
        let m1 = sms(&due[0]);
        assert!(m1.depart().await.is_err());
        assert_eq!(m1.close().await, Leave::Waiting);
        assert_eq!(sms_rows("m1").await, 0, "nothing left the box");

        // m2: no modem was free; the SMS went back to the queue for its retry, and the
        // receipt lands there. The code is delivered; the retry never comes.
        let m2 = sms(&due[1]);
        assert_eq!(m2.close().await, Leave::Waiting);
        let busy = Outcome::Retry {
            after: Duration::from_secs(5),
            code: None,
            reason: "modem0 busy".into(),
        };
        let retry = Settlement {
            attempt: Some((m2.row(Leave::Waiting), busy)),
            no_whatsapp_until: None,
            learned: Learned::default(),
            movement: Move::Requeue {
                at: Timestamp(21_000),
                reason: None,
            },
        };
        s.settle(&due[1], retry, Timestamp(16_002)).await.unwrap();
        assert_eq!(
            s.state("m2").await.unwrap().map(|x| x.0),
            Some(MessageState::Queued)
        );
        assert!(delivered("wamid.2").await.unwrap().newly_delivered);
        assert_eq!(
            s.state("m2").await.unwrap(),
            Some((MessageState::Delivered, Some(wa)))
        );
        let (again, _) = s.claim_due(Timestamp(21_000), 10).await.unwrap();
        assert!(again.is_empty(), "a delivered code is not claimed again");
        assert!(sms(&due[1]).depart().await.is_err());

        // m3: the departure reads the receipt itself, in its own commit: a confirmed attempt
        // stops it even with the message row still open (as a store written before the
        // receipt moved messages could leave it).
        delivered("wamid.3").await.unwrap();
        s.write(|c| {
            c.execute_batch("UPDATE messages SET state = 'sending' WHERE id = 'm3'")?;
            Ok(())
        })
        .await
        .unwrap();
        assert!(sms(&due[2]).depart().await.is_err());
        assert_eq!(sms_rows("m3").await, 0);

        // m4: the SMS departed first; the receipt is late. It updates the record (WhatsApp
        // delivered it too) and the SMS's own end does not move the message back.
        let m4 = sms(&due[3]);
        m4.depart().await.unwrap();
        let late = delivered("wamid.4").await.unwrap();
        assert_eq!(late.state, MessageState::Delivered);
        let leave = m4.close().await;
        assert!(matches!(leave, Leave::Left(_)));
        let sent = Outcome::Accepted {
            provider_id: "modem0/9".into(),
        };
        let settlement = Settlement {
            attempt: Some((m4.row(leave), sent)),
            no_whatsapp_until: None,
            learned: Learned::default(),
            movement: Move::Finish {
                state: MessageState::Sent,
                channel: Some(ChannelKind::Sms),
                reason: None,
                keep_content: false,
            },
        };
        s.settle(&due[3], settlement, Timestamp(16_600))
            .await
            .unwrap();
        assert_eq!(
            s.state("m4").await.unwrap(),
            Some((MessageState::Delivered, Some(wa)))
        );
        let atts = s.attempts("m4").await.unwrap();
        let rows: Vec<_> = atts.iter().map(|a| (a.channel, a.end, a.receipt)).collect();
        assert_eq!(
            rows,
            [
                (wa, Some(AttemptEnd::Accepted), Some(ReceiptKind::Delivered)),
                (ChannelKind::Sms, Some(AttemptEnd::Accepted), None),
            ]
        );
    }
}
