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
                    AttemptPurpose::Code => store
                        .start_attempt(&id, channel, purpose, now)
                        .await
                        .map(Some),
                    AttemptPurpose::Prenotice => store.start_prenotice(&id, &to, now).await,
                };
                match opened {
                    Ok(Some(row)) => {
                        *guard = Leave::Left(row);
                        Ok(())
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
