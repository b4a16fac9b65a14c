//! The one-time pre-notice ("your codes now arrive on WhatsApp"): sent by SMS the first time a
//! number gets a code on WhatsApp, recorded when it departs.

use super::*;

impl Dispatcher {
    /// Sends every pre-notice that is due and has not departed (after a confirmation, and
    /// after a restart for those a crash interrupted).
    pub(super) async fn send_due_prenotices(&self) {
        let due = match self.0.store.due_prenotices().await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the due pre-notices");
                return;
            }
        };
        let cfg = self.0.live.get();
        for m in due {
            self.spawn_prenotice(&m, &cfg).await;
        }
    }

    /// Hands the one-time pre-notice to the SMS channel. Like a code attempt it is recorded
    /// when it departs, which also marks the recipient notified; one that never departs
    /// leaves the recipient unmarked, so a later code brings it again.
    pub(super) async fn spawn_prenotice(&self, m: &Message, cfg: &crate::config::Config) {
        let Some(sms) = self.channel(ChannelKind::Sms).cloned() else {
            return;
        };
        let first = self
            .0
            .notifying
            .lock()
            .is_ok_and(|mut n| n.insert(m.recipient.to_string()));
        if !first {
            return;
        }
        let text = cfg.policy.prenotify_text.replace("{org}", &cfg.otp.org);
        let now = self.0.clock.now();
        let leaving = Leaving::new(
            self.0.store.clone(),
            self.0.clock.clone(),
            &m.id,
            &m.recipient,
            ChannelKind::Sms,
            AttemptPurpose::Prenotice,
        );
        let delivery = Delivery {
            message_id: m.id.to_string(),
            to: m.recipient.to_string(),
            content: Content::Text(text),
            locale: m.locale.clone(),
            // The notice stays useful for a day, unlike the code.
            validity: Duration::from_secs(86_400),
            expires_at: now.plus(Duration::from_secs(86_400)),
            budget: policy::SMS_ATTEMPT_CAP,
            departure: Departure::new(leaving.clone()),
        };
        let me = self.clone();
        let m = m.clone();
        // The notice is handed to the SMS channel before the code's first attempt starts, so it
        // never trails the code, but the code does not wait for it.
        let (started_tx, started_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let fut = sms.send(&delivery);
            tokio::pin!(fut);
            let outcome = tokio::select! {
                biased;
                o = &mut fut => { let _ = started_tx.send(()); o }
                _ = tokio::task::yield_now() => { let _ = started_tx.send(()); fut.await }
            };
            if let Err(e) = me.record_prenotice(&m, &leaving, &outcome).await {
                tracing::error!(error = %e, "cannot record the pre-notice attempt");
            }
            if let Ok(mut n) = me.0.notifying.lock() {
                n.remove(m.recipient.as_str());
            }
            tracing::info!(message = %delivery.message_id, outcome = outcome.class(), "pre-notice sent");
        });
        let _ = started_rx.await;
    }

    /// Records how a pre-notice ended: nothing for one refused because another left first.
    pub(super) async fn record_prenotice(
        &self,
        m: &Message,
        leaving: &Leaving,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let now = self.0.clock.now();
        let mut leave = leaving.close().await;
        if leave == Leave::Waiting && outcome.end().may_have_reached_provider() {
            // A channel that answered without departing: count it as departed now, so the
            // recipient is marked and not notified twice.
            leave = match self
                .0
                .store
                .start_prenotice(&m.id, &m.recipient, now)
                .await?
            {
                Some(id) => Leave::Left(id),
                None => Leave::Refused,
            };
        }
        match leave {
            Leave::Refused => Ok(()),
            Leave::Left(id) => self.0.store.finish_attempt(id, outcome, now).await,
            Leave::Waiting | Leave::Closed => {
                let settlement = Settlement {
                    attempt: Some((leaving.row(leave), outcome.clone())),
                    no_whatsapp_until: None,
                    learned: Learned::default(),
                    movement: Move::Stay,
                };
                self.0.store.settle(m, settlement, now).await.map(|_| ())
            }
        }
    }
}
