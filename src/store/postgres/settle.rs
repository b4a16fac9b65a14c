//! An attempt's end and its message's move in one transaction, receipts on the shared rows
//! (a webhook may land on either node), cancellations and what the store knows about a
//! number. A move applies only while the message is this node's: a node whose lease ran out
//! (the message went back to the queue, maybe to another node) records its attempt's end
//! but moves nothing.

use deadpool_postgres::GenericClient;

use super::Cached;

use super::messages::{MESSAGE_COLUMNS, read_message};
use super::{PgStore, pg_err};
use crate::channel::{Outcome, ReceiptStatus};
use crate::clock::Timestamp;
use crate::domain::{
    AttemptPurpose, ChannelKind, E164, FirstWhatsApp, Learned, MessageId, MessageState,
    ReceiptKind, RecipientInfo,
};
use crate::store::{AttemptRow, Message, Move, ReceiptEffect, Settlement, StoreError};

/// Moves apply to a message in flight on this node, or one no node holds any more (sent
/// and watched, or ended). A queued message was released (its lease ran out): the node that
/// lost it must not move it. `param` names the node's parameter.
fn mine(param: &str) -> String {
    format!("(state NOT IN ('queued', 'sending') OR claimed_by = {param})")
}

impl PgStore {
    /// Records how an attempt ended, what it taught about the recipient, and moves the
    /// message: one transaction. True when this made the recipient's pre-notice due.
    pub async fn settle(
        &self,
        message: &Message,
        s: Settlement,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.settle_message(&message.id, &message.recipient, s, now)
            .await
    }

    /// [`PgStore::settle`] for a message known by its id and recipient.
    pub async fn settle_message(
        &self,
        id: &MessageId,
        recipient: &E164,
        s: Settlement,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        // The four parts touch different rows (the attempt, the recipient, the message) and
        // none reads what another writes, so they go to the server together, pipelined on the
        // connection: one round trip for all of them where each waited for the one before.
        let attempt = async {
            match &s.attempt {
                Some((AttemptRow::Departed(attempt), outcome)) => {
                    end_attempt(&tx, *attempt, outcome, now).await
                }
                Some((
                    AttemptRow::Stayed {
                        channel,
                        purpose,
                        started_at,
                    },
                    outcome,
                )) => {
                    let (end, provider, code, detail) = ending(outcome);
                    tx.exec(
                        "INSERT INTO attempts (message_id, channel, purpose, started_at, ended_at, outcome,
                            provider_id, error_code, detail, node)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        &[
                            &&**id,
                            &channel.as_str(),
                            &purpose.as_str(),
                            &started_at.0,
                            &now.0,
                            &end,
                            &provider,
                            &code,
                            &detail,
                            &self.node,
                        ],
                    )
                    .await
                    .map(|_| ())
                    .map_err(pg_err)
                }
                None => Ok(()),
            }
        };
        let recipient_row = async {
            if let Some(until) = s.no_whatsapp_until {
                tx.exec(
                    "INSERT INTO recipients (number, no_whatsapp_until) VALUES ($1, $2)
                     ON CONFLICT (number) DO UPDATE SET no_whatsapp_until = $2",
                    &[&&**recipient, &until.0],
                )
                .await
                .map_err(pg_err)?;
            }
            learn(&tx, recipient, id, &s.learned).await
        };
        let moved = move_message(&tx, id, &s.movement, now, &self.node);
        let ((), due, ()) = tokio::try_join!(attempt, recipient_row, moved)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(due)
    }

    /// Records how an attempt ended.
    pub async fn finish_attempt(
        &self,
        attempt_id: i64,
        outcome: &Outcome,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        end_attempt(&self.conn().await?, attempt_id, outcome, now).await
    }

    /// Moves a message to `state`, keeping its content only when `keep_body`.
    pub async fn finish(
        &self,
        message_id: &str,
        state: MessageState,
        channel: Option<ChannelKind>,
        reason: Option<String>,
        keep_body: bool,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let to = Move::Finish {
            state,
            channel,
            reason,
            keep_content: keep_body,
        };
        move_message(&self.conn().await?, message_id, &to, now, &self.node).await
    }

    /// Puts a message back in the queue to be tried at `at` (if it is sending or sent).
    pub async fn requeue(
        &self,
        message_id: &str,
        at: Timestamp,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let to = Move::Requeue { at, reason };
        move_message(&self.conn().await?, message_id, &to, at, &self.node).await
    }

    /// Applies a provider receipt to the attempt with that provider id, whichever node made
    /// it; receipts only rise, and a code's delivery receipt makes its message delivered.
    pub async fn apply_receipt(
        &self,
        channel: ChannelKind,
        provider_id: String,
        status: ReceiptStatus,
        at: Timestamp,
    ) -> Result<Option<ReceiptEffect>, StoreError> {
        let Some(kind) = status.kind() else {
            return Ok(None);
        };
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let row = tx
            .q_opt(
                "SELECT id, message_id, receipt, purpose FROM attempts
                 WHERE channel = $1 AND provider_id = $2
                 ORDER BY started_at DESC LIMIT 1 FOR UPDATE",
                &[&channel.as_str(), &provider_id],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else { return Ok(None) };
        let attempt_id: i64 = row.try_get(0).map_err(pg_err)?;
        let message_id: String = row.try_get(1).map_err(pg_err)?;
        let previous = row
            .try_get::<_, Option<&str>>(2)
            .map_err(pg_err)?
            .map(ReceiptKind::read)
            .transpose()?;
        let purpose = AttemptPurpose::read(row.try_get(3).map_err(pg_err)?)?;
        let changed = previous < Some(kind);
        if changed {
            tx.exec(
                "UPDATE attempts SET receipt = $2, receipt_at = $3, error_code = COALESCE($4, error_code)
                 WHERE id = $1",
                &[&attempt_id, &kind.as_str(), &at.0, &status.error_code()],
            )
            .await
            .map_err(pg_err)?;
        }
        let mut newly_delivered = false;
        if kind.confirms_delivery() && purpose == AttemptPurpose::Code {
            newly_delivered = tx
                .exec(
                    "UPDATE messages SET state = 'delivered', channel = $3, finished_at = $2,
                        body = NULL, sms_text = NULL, claimed_by = NULL, lease_until = NULL
                     WHERE id = $1 AND state IN ('sent', 'sending')",
                    &[&message_id, &at.0, &channel.as_str()],
                )
                .await
                .map_err(pg_err)?
                == 1;
        }
        let m = tx
            .q_one(
                "SELECT client, recipient, country, state, channel, expires_at FROM messages WHERE id = $1",
                &[&message_id],
            )
            .await
            .map_err(pg_err)?;
        let effect = ReceiptEffect {
            message_id: MessageId::new(message_id.as_str()),
            client: m.try_get(0).map_err(pg_err)?,
            recipient: E164::new(m.try_get::<_, &str>(1).map_err(pg_err)?)
                .ok_or_else(|| StoreError::Corrupt("recipient is not E.164".into()))?,
            country: m.try_get(2).map_err(pg_err)?,
            purpose,
            state: MessageState::read(m.try_get(3).map_err(pg_err)?)?,
            carried_by: m
                .try_get::<_, Option<&str>>(4)
                .map_err(pg_err)?
                .map(ChannelKind::read)
                .transpose()?,
            expires_at: Timestamp(m.try_get(5).map_err(pg_err)?),
            changed,
            newly_delivered,
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(effect))
    }

    /// Cancels the live codes and pending verifications of `number` (its user did not ask
    /// for a code), in one transaction. Returns (codes, verifications) canceled.
    pub async fn cancel_not_requested(
        &self,
        number: &str,
        now: Timestamp,
    ) -> Result<(usize, usize), StoreError> {
        let reason = "canceled: the recipient said they did not request a code";
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let codes = tx
            .exec(
                "UPDATE messages SET state = 'failed', reason = $2, finished_at = $3, body = NULL,
                    sms_text = NULL, claimed_by = NULL, lease_until = NULL
                 WHERE recipient = $1 AND kind = 'code'
                   AND (state IN ('queued', 'sending') OR (state = 'sent' AND body IS NOT NULL))",
                &[&number, &reason, &now.0],
            )
            .await
            .map_err(pg_err)?;
        let verifications = tx
            .exec(
                "UPDATE verifications SET status = 'canceled', finished_at = $2
                 WHERE recipient = $1 AND status = 'pending'",
                &[&number, &now.0],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let n = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        Ok((n(codes), n(verifications)))
    }

    /// Pre-notices that are due and have not departed (from either node).
    pub async fn due_prenotices(&self) -> Result<Vec<Message>, StoreError> {
        let rows = self
            .conn()
            .await?
            .q(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN (
                         SELECT prenotice_message FROM recipients
                         WHERE prenotice_message IS NOT NULL AND prenotified_at IS NULL)"
                ),
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(read_message).collect()
    }

    /// Every message stored after `since` (unix ms), newest first: recipient and accept time,
    /// through the index on `created_at`. On a pair the shared outbox holds both nodes' sends.
    pub async fn recipients_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .conn()
            .await?
            .q(
                "SELECT recipient, created_at FROM messages WHERE created_at > $1
                 ORDER BY created_at DESC",
                &[&since],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?)))
            .collect()
    }

    /// What the pair knows about a number.
    pub async fn recipient(&self, number: &str) -> Result<RecipientInfo, StoreError> {
        let row = self
            .conn()
            .await?
            .q_opt(
                "SELECT no_whatsapp_until, prenotified_at, unconfirmed_since, unconfirmed_until,
                        sms_until, first_whatsapp
                 FROM recipients WHERE number = $1",
                &[&number],
            )
            .await
            .map_err(pg_err)?;
        let Some(r) = row else {
            return Ok(RecipientInfo::default());
        };
        let t = |i: usize| {
            r.try_get::<_, Option<i64>>(i)
                .map(|v| v.map(Timestamp))
                .map_err(pg_err)
        };
        Ok(RecipientInfo {
            no_whatsapp_until: t(0)?,
            prenotified_at: t(1)?,
            unconfirmed: t(2)?.zip(t(3)?),
            sms_until: t(4)?,
            first_whatsapp: r
                .try_get::<_, Option<&str>>(5)
                .map_err(pg_err)?
                .map(FirstWhatsApp::read)
                .transpose()?,
        })
    }
}

/// An outcome as the attempt's columns hold it: (outcome, provider id, error code, detail).
fn ending(o: &Outcome) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
    let provider = match o {
        Outcome::Accepted { provider_id } => Some(provider_id.as_str()),
        _ => None,
    };
    (o.end().as_str(), provider, o.error_code(), o.reason())
}

async fn end_attempt(
    c: &impl GenericClient,
    attempt_id: i64,
    outcome: &Outcome,
    now: Timestamp,
) -> Result<(), StoreError> {
    let (end, provider, code, detail) = ending(outcome);
    c.exec(
        "UPDATE attempts SET ended_at = $2, outcome = $3, provider_id = $4, error_code = $5, detail = $6
         WHERE id = $1",
        &[&attempt_id, &now.0, &end, &provider, &code, &detail],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// What was learned about `number`; true when the pre-notice became due with this message.
/// The SQL keeps "once per number" and "never after a failed first WhatsApp code" across the
/// nodes, whatever the caller believed.
async fn learn(
    c: &impl GenericClient,
    number: &str,
    message_id: &str,
    l: &Learned,
) -> Result<bool, StoreError> {
    if l.is_empty() {
        return Ok(false);
    }
    c.exec(
        "INSERT INTO recipients (number) VALUES ($1) ON CONFLICT (number) DO NOTHING",
        &[&number],
    )
    .await
    .map_err(pg_err)?;
    if let Some(first) = l.first_whatsapp {
        c.exec(
            "UPDATE recipients SET first_whatsapp = $2 WHERE number = $1 AND first_whatsapp IS NULL",
            &[&number, &first.as_str()],
        )
        .await
        .map_err(pg_err)?;
    }
    let mut due = false;
    if l.prenotice_due {
        due = c
            .exec(
                "UPDATE recipients SET prenotice_message = $2
                 WHERE number = $1 AND prenotified_at IS NULL AND prenotice_message IS NULL
                   AND first_whatsapp = 'confirmed'",
                &[&number, &message_id],
            )
            .await
            .map_err(pg_err)?
            == 1;
    }
    if let Some((since, until)) = l.unconfirmed {
        c.exec(
            "UPDATE recipients SET unconfirmed_since = $2, unconfirmed_until = $3 WHERE number = $1",
            &[&number, &since.0, &until.0],
        )
        .await
        .map_err(pg_err)?;
    }
    if let Some(until) = l.sms_until {
        c.exec(
            "UPDATE recipients SET sms_until = $2 WHERE number = $1",
            &[&number, &until.0],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(due)
}

async fn move_message(
    c: &impl GenericClient,
    id: &str,
    to: &Move,
    now: Timestamp,
    node: &str,
) -> Result<(), StoreError> {
    let r = match to {
        Move::Stay => return Ok(()),
        Move::Watch { channel, until } => {
            c.exec(
                &format!(
                    "UPDATE messages SET state = 'sent', channel = $2, reason = NULL, next_attempt_at = $3,
                        claimed_by = NULL, lease_until = NULL
                     WHERE id = $1 AND state IN ('queued', 'sending', 'sent') AND {}",
                    mine("$4")
                ),
                &[&id, &channel.as_str(), &until.0, &node],
            )
            .await
        }
        Move::Requeue { at, reason } => {
            c.exec(
                &format!(
                    "UPDATE messages SET state = 'queued', next_attempt_at = $2,
                        reason = COALESCE($3, reason), claimed_by = NULL, lease_until = NULL
                     WHERE id = $1 AND state IN ('sending', 'sent') AND {}",
                    mine("$4")
                ),
                &[&id, &at.0, reason, &node],
            )
            .await
        }
        Move::Finish {
            state,
            channel,
            reason,
            keep_content,
        } => {
            let finished = state.is_final().then_some(now.0);
            // An end reached meanwhile (a receipt, a cancellation) stands; a code whose
            // message ended is wiped all the same.
            let sql = if *keep_content {
                format!(
                    "UPDATE messages SET state = $2, channel = COALESCE($3, channel), reason = $4,
                        finished_at = $5, claimed_by = NULL, lease_until = NULL
                     WHERE id = $1 AND state IN ('queued', 'sending', 'sent') AND {}",
                    mine("$6")
                )
            } else {
                format!(
                    "UPDATE messages SET
                        state = CASE WHEN state IN ('queued', 'sending', 'sent') THEN $2 ELSE state END,
                        channel = CASE WHEN state IN ('queued', 'sending', 'sent') THEN COALESCE($3, channel) ELSE channel END,
                        reason = CASE WHEN state IN ('queued', 'sending', 'sent') THEN $4 ELSE reason END,
                        finished_at = CASE WHEN state IN ('queued', 'sending', 'sent') THEN $5 ELSE finished_at END,
                        claimed_by = NULL, lease_until = NULL, body = NULL, sms_text = NULL
                     WHERE id = $1 AND {}",
                    mine("$6")
                )
            };
            c.exec(
                &sql,
                &[
                    &id,
                    &state.as_str(),
                    &channel.map(ChannelKind::as_str),
                    reason,
                    &finished,
                    &node,
                ],
            )
            .await
        }
    };
    r.map_err(pg_err)?;
    Ok(())
}
