//! Delivery receipts: what a `failed`, `delivered` or `read` from the provider changes, applied
//! to the attempt that holds its provider id, and the fallback it may start.

use super::*;

/// When a receipt whose provider id no attempt holds yet is looked at again: the attempt
/// records its wamid when it settles, moments after the Cloud API answered.
const RECEIPT_RETRIES: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

impl Dispatcher {
    /// Applies a receipt from the webhook, or looks again shortly when its attempt has not
    /// recorded the provider id yet.
    pub(super) async fn on_receipt(&self, r: Receipt) {
        if let ReceiptStatus::NotRequested { from } = &r.status {
            self.not_requested(from, &r.provider_id).await;
            return;
        }
        if self.apply(&r).await {
            return;
        }
        // Meta can report "sent" or even "failed" before the attempt that got the wamid has
        // recorded it: look again a little later rather than lose the receipt (Meta does not
        // resend what we answered 200 to).
        let me = self.clone();
        tokio::spawn(async move {
            for wait in RECEIPT_RETRIES {
                tokio::time::sleep(wait).await;
                if me.apply(&r).await {
                    return;
                }
            }
            tracing::debug!(channel = %r.channel, "receipt for an unknown provider id");
        });
    }

    /// Applies a status receipt and carries out what it means; false when no attempt has
    /// its provider id (yet).
    pub(super) async fn apply(&self, r: &Receipt) -> bool {
        let (channel, provider_id) = (r.channel, r.provider_id.clone());
        let Some(kind) = r.status.kind() else {
            return true;
        };
        let not_on_channel = channel == ChannelKind::WhatsApp
            && r.status
                .error_code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| {
                    matches!(
                        whatsapp::errors::class_of_code(c),
                        Some((
                            whatsapp::errors::ErrorClass::FallBack {
                                not_on_channel: true
                            },
                            _
                        ))
                    )
                });
        let effect = match self
            .0
            .store
            .apply_receipt(channel, provider_id, r.status.clone(), r.at)
            .await
        {
            Ok(Some(effect)) => effect,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, "cannot apply receipt");
                return true;
            }
        };
        if effect.newly_delivered {
            self.0
                .metrics
                .delivered
                .get_or_create(&metrics::channel(channel))
                .inc();
        }
        let cfg = self.0.live.get();
        let rules = Rules::new(&cfg, &effect.client, cfg.client(&effect.client));
        let now = self.0.clock.now();
        let facts = policy::AfterReceipt {
            channel,
            kind,
            not_on_channel,
            purpose: effect.purpose,
            changed: effect.changed,
            state: effect.state,
            carried_by: effect.carried_by,
            expires_at: effect.expires_at,
            notice_allowed: rules.notice_allowed(effect.country.as_deref(), &self.configured()),
        };
        let verdict = policy::after_receipt(&rules, facts, now);
        if verdict != ReceiptVerdict::default() {
            self.carry_out_receipt(&effect, verdict, now).await;
        }
        true
    }

    /// Carries out what a receipt means: the fallback (requeue) and what it taught about the
    /// recipient, in one commit; then the pre-notice it made due.
    pub(super) async fn carry_out_receipt(
        &self,
        effect: &ReceiptEffect,
        verdict: ReceiptVerdict,
        now: Timestamp,
    ) {
        let movement = match &verdict.fall_back {
            Some(reason) => {
                tracing::info!(message = %effect.message_id, "provider reported failure; falling back");
                self.count_fallback("failed_receipt");
                Move::Requeue {
                    at: now,
                    reason: Some(reason.clone()),
                }
            }
            None => Move::Stay,
        };
        let settlement = Settlement {
            attempt: None,
            no_whatsapp_until: verdict.no_whatsapp_until,
            learned: verdict.learned,
            movement,
        };
        match self
            .0
            .store
            .settle_message(&effect.message_id, &effect.recipient, settlement, now)
            .await
        {
            Ok(true) => self.send_due_prenotices().await,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot record what a receipt means"),
        }
        self.wake();
    }

    /// "I didn't request a code": cancels the number's pending verification and undelivered
    /// codes (wiped), counts it and warns. Neither the code nor the number is logged.
    pub(super) async fn not_requested(&self, from: &str, provider_id: &str) {
        let number = format!("+{from}");
        let now = self.0.clock.now();
        match self.0.store.cancel_not_requested(&number, now).await {
            Ok((codes, verifications)) => {
                self.0.metrics.not_requested.inc();
                tracing::warn!(
                    reply_to = %provider_id, codes, verifications,
                    "a recipient tapped \"I didn't request a code\": their pending codes and verifications are canceled"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot cancel the codes of a recipient who did not request one")
            }
        }
    }
}
