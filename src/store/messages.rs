//! The outbox: accepting a message (idempotency, limits, the INSERT), claiming due messages,
//! the attempt log, receipts, settling an attempt's outcome, what is known about recipients,
//! start-up recovery and housekeeping. Rows are converted to the domain's types here and
//! nowhere else.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::{Writer, exec};
use super::{SqliteStore, StoreError, recent};
use crate::channel::ReceiptStatus;
use crate::clock::Timestamp;
use crate::config::Rate;
use crate::domain::{
    Attempt, AttemptEnd, AttemptPurpose, ChannelKind, Content, E164, FirstWhatsApp, MessageId,
    MessageKind, MessageState, ReceiptKind, RecipientInfo,
};

/// A message to be accepted.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Its id.
    pub id: MessageId,
    /// The client that sent it.
    pub client: String,
    /// E.164 recipient.
    pub recipient: E164,
    /// Recipient's country.
    pub country: Option<String>,
    /// What to send.
    pub content: Content,
    /// Caller's locale.
    pub locale: Option<String>,
    /// Caller's reference, echoed back.
    pub reference: Option<String>,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Acceptance time.
    pub created_at: Timestamp,
    /// End of the code's lifetime.
    pub expires_at: Timestamp,
    /// Restrict delivery to this channel (Verify's "channel").
    pub only_channel: Option<ChannelKind>,
}

impl NewMessage {
    /// The message as it stands once inserted: queued, not yet tried (both backends).
    pub(crate) fn queued(self) -> Message {
        Message {
            kind: self.content.kind(),
            id: self.id,
            client: self.client,
            recipient: self.recipient,
            country: self.country,
            content: Some(self.content),
            locale: self.locale,
            reference: self.reference,
            idempotency_key: self.idempotency_key,
            created_at: self.created_at,
            expires_at: self.expires_at,
            state: MessageState::Queued,
            channel: None,
            reason: None,
            finished_at: None,
            only_channel: self.only_channel,
        }
    }
}

/// A stored message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// The client that sent it.
    pub client: String,
    /// E.164 recipient.
    pub recipient: E164,
    /// Recipient's country.
    pub country: Option<String>,
    /// The content while a channel may still need it; None once wiped.
    pub content: Option<Content>,
    /// Code or text, kept after the content is wiped.
    pub kind: MessageKind,
    /// Caller's locale.
    pub locale: Option<String>,
    /// Caller's reference.
    pub reference: Option<String>,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Acceptance time.
    pub created_at: Timestamp,
    /// End of lifetime.
    pub expires_at: Timestamp,
    /// Current state.
    pub state: MessageState,
    /// The channel that carried it.
    pub channel: Option<ChannelKind>,
    /// Why it is where it is.
    pub reason: Option<String>,
    /// When it reached a final state.
    pub finished_at: Option<Timestamp>,
    /// Delivery restricted to this channel.
    pub only_channel: Option<ChannelKind>,
}

/// Which counter a limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// Messages to one number.
    Recipient,
    /// Messages from one client.
    Client,
    /// Messages to one country.
    Country,
    /// All messages.
    Global,
}

impl LimitScope {
    /// The stable name shown in errors and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Recipient => "per_recipient",
            LimitScope::Client => "per_client",
            LimitScope::Country => "per_country",
            LimitScope::Global => "global",
        }
    }
}

/// The result of [`Store::insert`].
#[derive(Debug)]
pub enum InsertResult {
    /// Accepted and durable.
    Created(Message),
    /// The idempotency key was seen before from this client: the first message.
    Existing(Message),
    /// The idempotency key was used before for a different recipient.
    KeyConflict,
    /// A limit is reached; nothing was stored.
    Limited {
        /// Which limit.
        scope: LimitScope,
        /// When a retry can succeed.
        retry_after: Duration,
    },
}

/// The result of [`Store::insert_all`]: every message stored, or none.
#[derive(Debug)]
pub enum BatchResult {
    /// Every message, in order: each [`InsertResult::Created`] or [`InsertResult::Existing`].
    Stored(Vec<InsertResult>),
    /// The message at `index` was refused ([`InsertResult::Limited`] or
    /// [`InsertResult::KeyConflict`]); nothing of the batch was stored.
    Refused {
        /// Which message of the batch.
        index: usize,
        /// Why (boxed: the refusals are small, the type is not).
        why: Box<InsertResult>,
    },
}

/// What a receipt changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptEffect {
    /// The message the receipt belongs to.
    pub message_id: MessageId,
    /// Its client (whose rules apply).
    pub client: String,
    /// Its recipient.
    pub recipient: E164,
    /// The recipient's country.
    pub country: Option<String>,
    /// What the receipted attempt carried (a code, or the pre-notice).
    pub purpose: AttemptPurpose,
    /// The channel that carried the message so far (after the receipt).
    pub carried_by: Option<ChannelKind>,
    /// The message's state after the receipt.
    pub state: MessageState,
    /// The message's expiry (for fallback decisions).
    pub expires_at: Timestamp,
    /// False for a repeated or out-of-order receipt that changed nothing.
    pub changed: bool,
    /// This receipt moved the message to delivered (a later `read` does not).
    pub newly_delivered: bool,
}

impl SqliteStore {
    /// Accepts a message: checks idempotency and limits and inserts, atomically.
    pub async fn insert(
        &self,
        m: NewMessage,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<InsertResult, StoreError> {
        self.submit(move |w| insert_tx(w, m, &limits)).await
    }

    /// Accepts several messages as one: each checked against the limits as if the ones
    /// before it were already stored, all inserted in one job of one commit, or none at all.
    /// A multi-recipient request must not send to the first number and then refuse the
    /// second: the caller's retry would send the first a second copy.
    pub async fn insert_all(
        &self,
        ms: Vec<NewMessage>,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<BatchResult, StoreError> {
        self.submit(move |w| {
            exec(&w.conn, "SAVEPOINT batch", [])?;
            let undo = |recorded: bool| {
                let _ = exec(&w.conn, "ROLLBACK TO batch", []);
                let _ = exec(&w.conn, "RELEASE batch", []);
                // The tallies counted the messages now undone: rebuilt on their next use.
                if recorded {
                    w.recent.forget();
                }
            };
            let mut stored = Vec::with_capacity(ms.len());
            for (index, m) in ms.into_iter().enumerate() {
                match insert_tx(w, m, &limits) {
                    Ok(r @ (InsertResult::Created(_) | InsertResult::Existing(_))) => {
                        stored.push(r)
                    }
                    Ok(why) => {
                        undo(index > 0);
                        return Ok(BatchResult::Refused {
                            index,
                            why: Box::new(why),
                        });
                    }
                    Err(e) => {
                        undo(true);
                        return Err(e);
                    }
                }
            }
            exec(&w.conn, "RELEASE batch", [])?;
            Ok(BatchResult::Stored(stored))
        })
        .await
    }

    /// Claims up to `max` due messages (state -> sending) and expires queued ones past their
    /// lifetime. Returns the claimed messages and how many expired.
    pub async fn claim_due(
        &self,
        now: Timestamp,
        max: usize,
    ) -> Result<(Vec<Message>, usize), StoreError> {
        self.write(move |c| {
            let expired = exec(c,
                "UPDATE messages SET state = 'expired', body = NULL, sms_text = NULL,
                    reason = 'expired before it could be delivered' || COALESCE(' (last: ' || reason || ')', ''), finished_at = ?1
                 WHERE state = 'queued' AND expires_at <= ?1",
                params![now.0],
            )?;
            if max == 0 {
                return Ok((Vec::new(), expired));
            }
            // Codes whose delivery deadline has come first: their fallback is the late one.
            let mut out = Vec::new();
            let mut unreadable = Vec::new();
            for (sql, room) in [(CLAIM_WATCHED, max), (CLAIM_QUEUED, max)] {
                let room = room.saturating_sub(out.len());
                if room == 0 {
                    break;
                }
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(params![now.0, i64::try_from(room).unwrap_or(i64::MAX)])?;
                while let Some(r) = rows.next()? {
                    match read_message(r) {
                        Ok(m) => out.push(m),
                        // One damaged row must not stop the queue (the whole claim would fail,
                        // again and again): it fails on its own, below.
                        Err(StoreError::Corrupt(why)) => unreadable.push((r.get::<_, String>(0)?, why)),
                        Err(e) => return Err(e),
                    }
                }
            }
            for (id, why) in unreadable {
                tracing::error!(message = %id, %why, "store: a claimed message cannot be read; failing it");
                exec(c,
                    "UPDATE messages SET state = 'failed', reason = ?2, finished_at = ?3, body = NULL, sms_text = NULL
                     WHERE id = ?1",
                    params![id, format!("corrupt row: {why}"), now.0],
                )?;
            }
            Ok((out, expired))
        })
        .await
    }

    /// When the next queued message becomes due, if any.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(|c| {
            let t: Option<i64> = c.query_row(
                "SELECT MIN(t) FROM (
                     SELECT MIN(next_attempt_at) AS t FROM messages WHERE state = 'queued'
                     UNION ALL
                     SELECT MIN(next_attempt_at) FROM messages WHERE state = 'sent' AND body IS NOT NULL)",
                [],
                |r| r.get(0),
            )?;
            Ok(t.map(Timestamp))
        })
        .await
    }

    /// Every message stored after `since` (unix ms): its recipient and when it was accepted,
    /// newest first. For counts kept outside the store that must survive a restart (the
    /// velocity by number block). Reads back in rowid order and stops a minute past `since`,
    /// as the limit tallies do, so it needs no index on `created_at`.
    pub async fn recipients_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare("SELECT recipient, created_at FROM messages ORDER BY rowid DESC")?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let at: i64 = row.get(1)?;
                // Sends stored just after the clock stepped back sit behind older ones.
                if at <= since.saturating_sub(60_000) {
                    break;
                }
                if at > since {
                    out.push((row.get(0)?, at));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Records an attempt at the moment it departs (the channel's last step before the
    /// irreversible write): an attempt left open by a crash may have been delivered.
    pub async fn start_attempt(
        &self,
        message_id: &str,
        channel: ChannelKind,
        purpose: AttemptPurpose,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        let id = message_id.to_owned();
        self.write(move |c| insert_open_attempt(c, &id, channel, purpose, now))
            .await
    }

    /// [`Store::start_attempt`] for a code that is really leaving: refused (`None`, nothing
    /// written) when its message ended meanwhile (delivered, or canceled by a user who did not
    /// ask for it) or an earlier attempt of it is confirmed delivered or read. The receipts
    /// are read in the same commit that opens the row, so a receipt committed first always
    /// stops the send (the delivery deadline's SMS waiting for a modem), and one committed
    /// after it is a late receipt that only updates the record.
    pub async fn depart_attempt(
        &self,
        message_id: &str,
        channel: ChannelKind,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let id = message_id.to_owned();
        self.write(move |c| {
            let row: Option<(String, bool)> = c
                .query_row(
                    "SELECT state, EXISTS (SELECT 1 FROM attempts WHERE message_id = ?1
                         AND purpose = 'code' AND receipt IN ('delivered', 'read'))
                     FROM messages WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((state, confirmed)) = row else {
                return Ok(None);
            };
            match MessageState::read(&state)? {
                s if !s.is_final() && !confirmed => Ok(Some(insert_open_attempt(
                    c,
                    &id,
                    channel,
                    AttemptPurpose::Code,
                    now,
                )?)),
                _ => Ok(None),
            }
        })
        .await
    }

    /// The departure of a pre-notice to `number`: marks the recipient pre-notified and opens
    /// the attempt in one commit, or answers `None` (and writes nothing) when another notice
    /// left first. A notice that never departed leaves the recipient unmarked, to be sent with
    /// a later code.
    pub async fn start_prenotice(
        &self,
        message_id: &str,
        number: &str,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let (id, n) = (message_id.to_owned(), number.to_owned());
        self.write(move |c| {
            let changed = exec(c,
                "INSERT INTO recipients (number, prenotified_at) VALUES (?1, ?2)
                 ON CONFLICT (number) DO UPDATE SET prenotified_at = ?2 WHERE prenotified_at IS NULL",
                params![n, now.0],
            )?;
            if changed != 1 {
                return Ok(None);
            }
            let purpose = AttemptPurpose::Prenotice;
            Ok(Some(insert_open_attempt(c, &id, ChannelKind::Sms, purpose, now)?))
        })
        .await
    }

    /// Records a channel the plan passed over, and why (e.g. "whatsapp disabled for client adfs").
    pub async fn record_skip(
        &self,
        message_id: &str,
        channel: ChannelKind,
        why: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let id = message_id.to_owned();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO attempts (message_id, channel, started_at, ended_at, outcome, detail)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                params![
                    id,
                    channel.as_str(),
                    now.0,
                    AttemptEnd::Skipped.as_str(),
                    why
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Applies a provider receipt to the attempt with that provider id (latest first).
    /// Returns what it changed; repeated and out-of-order receipts never move a message back.
    /// A delivery receipt for a code makes its message delivered by the receipt's channel
    /// (a late WhatsApp `delivered` after the SMS fallback says WhatsApp delivered it too);
    /// a receipt for a pre-notice never moves the code's message.
    pub async fn apply_receipt(
        &self,
        channel: ChannelKind,
        provider_id: String,
        status: ReceiptStatus,
        at: Timestamp,
    ) -> Result<Option<ReceiptEffect>, StoreError> {
        self.write(move |c| {
            let row: Option<(i64, String, Option<String>, String)> = c
                .query_row(
                    "SELECT id, message_id, receipt, purpose FROM attempts WHERE channel = ?1 AND provider_id = ?2
                     ORDER BY started_at DESC LIMIT 1",
                    params![channel.as_str(), provider_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((attempt_id, message_id, previous, purpose)) = row else {
                return Ok(None);
            };
            let Some(kind) = status.kind() else {
                return Ok(None);
            };
            let purpose = AttemptPurpose::read(&purpose)?;
            let code = status.error_code();
            // A later "sent" must not hide an earlier "read" or "failed": receipts only rise.
            let previous = previous.as_deref().map(ReceiptKind::read).transpose()?;
            let changed = previous < Some(kind);
            if changed {
                exec(c,
                    "UPDATE attempts SET receipt = ?2, receipt_at = ?3, error_code = COALESCE(?4, error_code) WHERE id = ?1",
                    params![attempt_id, kind.as_str(), at.0, code],
                )?;
            }
            let mut newly_delivered = false;
            // Queued too: a deadline SMS that found no modem free waits there for its retry,
            // and the phone having the code ends it.
            if kind.confirms_delivery() && purpose == AttemptPurpose::Code {
                newly_delivered = exec(c,
                    "UPDATE messages SET state = 'delivered', channel = ?3, finished_at = ?2, body = NULL, sms_text = NULL
                     WHERE id = ?1 AND state IN ('queued', 'sent', 'sending')",
                    params![message_id, at.0, channel.as_str()],
                )? == 1;
            }
            let (client, recipient, country, state, carried_by, expires): (
                String,
                String,
                Option<String>,
                String,
                Option<String>,
                i64,
            ) = c.query_row(
                "SELECT client, recipient, country, state, channel, expires_at FROM messages WHERE id = ?1",
                params![message_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )?;
            Ok(Some(ReceiptEffect {
                message_id: MessageId::new(message_id),
                client,
                recipient: E164::new(&recipient)
                    .ok_or_else(|| StoreError::Corrupt("recipient is not E.164".into()))?,
                country,
                purpose,
                state: MessageState::read(&state)?,
                carried_by: carried_by.as_deref().map(ChannelKind::read).transpose()?,
                expires_at: Timestamp(expires),
                changed,
                newly_delivered,
            }))
        })
        .await
    }

    /// The sent code messages (with their code) and the pending verifications for `number`:
    /// its user says they did not ask for a code. Both are canceled and the codes wiped, in
    /// one commit. Returns (codes canceled, verifications canceled).
    pub async fn cancel_not_requested(
        &self,
        number: &str,
        now: Timestamp,
    ) -> Result<(usize, usize), StoreError> {
        let n = number.to_owned();
        self.write(move |c| {
            let reason = "canceled: the recipient said they did not request a code";
            // Codes still queued, in flight or watched: the due and watch indexes hold them.
            let codes = exec(c,
                "UPDATE messages SET state = 'failed', reason = ?2, finished_at = ?3, body = NULL, sms_text = NULL
                 WHERE recipient = ?1 AND kind = 'code'
                   AND (state IN ('queued', 'sending') OR (state = 'sent' AND body IS NOT NULL))",
                params![n, reason, now.0],
            )?;
            let verifications = exec(c,
                "UPDATE verifications SET status = 'canceled', finished_at = ?2
                 WHERE recipient = ?1 AND status = 'pending'",
                params![n, now.0],
            )?;
            Ok((codes, verifications))
        })
        .await
    }

    /// Whether `message_id` carries the code of a verification, and if so whether that
    /// verification is still waiting for its successful check.
    pub async fn verification_pending(&self, message_id: &str) -> Result<Option<bool>, StoreError> {
        let id = message_id.to_owned();
        self.read(move |c| {
            let status: Option<String> = c
                .query_row(
                    "SELECT status FROM verifications WHERE message_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(status.map(|s| s == "pending"))
        })
        .await
    }

    /// Pre-notices that are due (a first WhatsApp code was confirmed) and have not departed:
    /// the confirmed code's message, after a restart or a notice that never left.
    pub async fn due_prenotices(&self) -> Result<Vec<Message>, StoreError> {
        self.read(|c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN (
                     SELECT prenotice_message FROM recipients
                     WHERE prenotice_message IS NOT NULL AND prenotified_at IS NULL)"
            ))?;
            let rows = q.query_map([], row_to_message)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r??);
            }
            Ok(out)
        })
        .await
    }

    /// What the store knows about a number.
    pub async fn recipient(&self, number: &str) -> Result<RecipientInfo, StoreError> {
        let n = number.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT no_whatsapp_until, prenotified_at, unconfirmed_since, unconfirmed_until,
                        sms_until, first_whatsapp
                 FROM recipients WHERE number = ?1",
                params![n],
                |r| {
                    let first: Option<String> = r.get(5)?;
                    let since = r.get::<_, Option<i64>>(2)?.map(Timestamp);
                    let until = r.get::<_, Option<i64>>(3)?.map(Timestamp);
                    Ok((
                        RecipientInfo {
                            no_whatsapp_until: r.get::<_, Option<i64>>(0)?.map(Timestamp),
                            prenotified_at: r.get::<_, Option<i64>>(1)?.map(Timestamp),
                            unconfirmed: since.zip(until),
                            sms_until: r.get::<_, Option<i64>>(4)?.map(Timestamp),
                            first_whatsapp: None,
                        },
                        first,
                    ))
                },
            )
            .optional()?
            .map(|(mut info, first)| -> Result<RecipientInfo, StoreError> {
                info.first_whatsapp = first.as_deref().map(FirstWhatsApp::read).transpose()?;
                Ok(info)
            })
            .transpose()?
            .unwrap_or_default())
        })
        .await
    }

    /// A message and its attempts, if `client` sent it.
    pub async fn get(
        &self,
        id: &str,
        client: &str,
    ) -> Result<Option<(Message, Vec<Attempt>)>, StoreError> {
        let (id, client) = (id.to_owned(), client.to_owned());
        self.read(move |c| {
            let m = c
                .query_row(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND client = ?2"
                    ),
                    params![id, client],
                    row_to_message,
                )
                .optional()?;
            let Some(m) = m else { return Ok(None) };
            let m = m?;
            Ok(Some((m, attempts_of(c, &id)?)))
        })
        .await
    }

    /// A message's attempts, oldest first.
    pub async fn attempts(&self, message_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let id = message_id.to_owned();
        self.read(move |c| attempts_of(c, &id)).await
    }

    /// A message's current state.
    pub async fn state(
        &self,
        message_id: &str,
    ) -> Result<Option<(MessageState, Option<ChannelKind>)>, StoreError> {
        let id = message_id.to_owned();
        self.read(move |c| {
            let row: Option<(String, Option<String>)> = c
                .query_row(
                    "SELECT state, channel FROM messages WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(s, ch)| {
                Ok((
                    MessageState::read(&s)?,
                    ch.as_deref().map(ChannelKind::read).transpose()?,
                ))
            })
            .transpose()
        })
        .await
    }

    /// Number of messages waiting or in flight.
    pub async fn queue_depth(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM messages WHERE state IN ('queued', 'sending')",
                [],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Start-up recovery. An attempt is opened only when it departs, so one left open by a
    /// crash may have been delivered: it becomes 'interrupted' and the dispatcher never repeats
    /// it on that channel. Every message still sending goes back to the queue; one whose
    /// attempt had not departed (it waited for a modem or the rate cap) has no trace of it and
    /// is simply sent again. Returns how many messages were recovered.
    pub async fn recover(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.write(move |c| {
            exec(c,
                "UPDATE attempts SET ended_at = ?1, outcome = 'interrupted',
                    detail = 'the daemon stopped during this attempt; it may or may not have been delivered'
                 WHERE ended_at IS NULL",
                params![now.0],
            )?;
            let n = exec(c,
                "UPDATE messages SET state = 'queued', next_attempt_at = ?1 WHERE state = 'sending'",
                params![now.0],
            )?;
            Ok(n)
        })
        .await
    }

    /// Housekeeping: wipes content no channel can need any more (sent and past expiry) and
    /// deletes finished messages older than `retention`. Returns rows purged.
    pub async fn housekeeping(
        &self,
        now: Timestamp,
        retention: Duration,
    ) -> Result<usize, StoreError> {
        let cutoff = Timestamp(
            now.0
                .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)),
        );
        self.write(move |c| {
            exec(c,
                "UPDATE messages SET body = NULL, sms_text = NULL,
                    finished_at = COALESCE(finished_at, ?1)
                 WHERE state = 'sent' AND expires_at <= ?1 AND body IS NOT NULL",
                params![now.0],
            )?;
            // Rows older than the cutoff come first in rowid order, so the scan for the
            // boundary stops at the first young row instead of reading the whole outbox. A
            // row written after the clock stepped back waits for a later purge.
            let n = exec(c,
                "DELETE FROM messages
                 WHERE rowid < coalesce(
                         (SELECT rowid FROM messages WHERE created_at >= ?1 ORDER BY rowid LIMIT 1),
                         (SELECT max(rowid) FROM messages) + 1)
                   AND created_at < ?1 AND state NOT IN ('queued', 'sending')",
                params![cutoff.0],
            )?;
            exec(c,
                "UPDATE verifications SET status = 'expired', finished_at = ?1 WHERE status = 'pending' AND expires_at <= ?1",
                params![now.0],
            )?;
            exec(c, "DELETE FROM verifications WHERE created_at < ?1", params![cutoff.0])?;
            Ok(n)
        })
        .await
    }
}

/// The columns [`row_to_message`] reads, in order.
const MESSAGE_COLUMNS: &str = "id, client, recipient, country, kind, body, sms_text, locale, reference, \
    idempotency_key, created_at, expires_at, state, channel, reason, finished_at, only_channel";

/// Claims queued messages that are due.
const CLAIM_QUEUED: &str = "UPDATE messages SET state = 'sending'
     WHERE id IN (SELECT id FROM messages WHERE state = 'queued' AND next_attempt_at <= ?1
                  ORDER BY next_attempt_at LIMIT ?2)
     RETURNING id, client, recipient, country, kind, body, sms_text, locale, reference, \
    idempotency_key, created_at, expires_at, state, channel, reason, finished_at, only_channel";

/// Claims sent messages still holding their code whose watch ended (a delivery deadline, an
/// unchecked verification, the end of the lifetime): through the partial index `messages_watch`.
const CLAIM_WATCHED: &str = "UPDATE messages SET state = 'sending'
     WHERE id IN (SELECT id FROM messages WHERE state = 'sent' AND body IS NOT NULL
                  AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2)
     RETURNING id, client, recipient, country, kind, body, sms_text, locale, reference, \
    idempotency_key, created_at, expires_at, state, channel, reason, finished_at, only_channel";

fn insert_open_attempt(
    c: &Connection,
    message_id: &str,
    channel: ChannelKind,
    purpose: AttemptPurpose,
    now: Timestamp,
) -> Result<i64, StoreError> {
    exec(
        c,
        "INSERT INTO attempts (message_id, channel, purpose, started_at) VALUES (?1, ?2, ?3, ?4)",
        params![message_id, channel.as_str(), purpose.as_str(), now.0],
    )?;
    Ok(c.last_insert_rowid())
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Message, StoreError>> {
    Ok(read_message(r))
}

fn read_message(r: &rusqlite::Row<'_>) -> Result<Message, StoreError> {
    let kind = MessageKind::read(text(r, 4)?)?;
    let body: Option<String> = r.get(5)?;
    let content = body.map(|body| match kind {
        MessageKind::Code => Ok::<_, StoreError>(Content::Code {
            code: body,
            sms_text: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
        }),
        MessageKind::Text => Ok(Content::Text(body)),
    });
    let recipient = text(r, 2)?;
    Ok(Message {
        id: MessageId::new(r.get::<_, String>(0)?),
        client: r.get(1)?,
        recipient: E164::new(recipient)
            // The number itself stays out of the error: errors reach the log.
            .ok_or_else(|| StoreError::Corrupt("recipient is not an E.164 number".into()))?,
        country: r.get(3)?,
        content: content.transpose()?,
        kind,
        locale: r.get(7)?,
        reference: r.get(8)?,
        idempotency_key: r.get(9)?,
        created_at: Timestamp(r.get(10)?),
        expires_at: Timestamp(r.get(11)?),
        state: MessageState::read(text(r, 12)?)?,
        channel: opt_text(r, 13)?.map(ChannelKind::read).transpose()?,
        reason: r.get(14)?,
        finished_at: r.get::<_, Option<i64>>(15)?.map(Timestamp),
        only_channel: opt_text(r, 16)?.map(ChannelKind::read).transpose()?,
    })
}

/// A text column, borrowed from the row: enum words are parsed without a copy.
fn text<'r>(r: &'r rusqlite::Row<'_>, idx: usize) -> Result<&'r str, StoreError> {
    Ok(r.get_ref(idx)?.as_str().map_err(rusqlite::Error::from)?)
}

/// A nullable text column, borrowed from the row.
fn opt_text<'r>(r: &'r rusqlite::Row<'_>, idx: usize) -> Result<Option<&'r str>, StoreError> {
    Ok(r.get_ref(idx)?
        .as_str_or_null()
        .map_err(rusqlite::Error::from)?)
}

fn attempts_of(c: &Connection, message_id: &str) -> Result<Vec<Attempt>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, channel, purpose, started_at, ended_at, outcome, provider_id, error_code, detail, receipt, receipt_at
         FROM attempts WHERE message_id = ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query(params![message_id])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(Attempt {
            id: r.get(0)?,
            channel: ChannelKind::read(text(r, 1)?)?,
            purpose: AttemptPurpose::read(text(r, 2)?)?,
            started_at: Timestamp(r.get(3)?),
            ended_at: r.get::<_, Option<i64>>(4)?.map(Timestamp),
            end: opt_text(r, 5)?.map(AttemptEnd::read).transpose()?,
            provider_id: r.get(6)?,
            error_code: r.get(7)?,
            detail: r.get(8)?,
            receipt: opt_text(r, 9)?.map(ReceiptKind::read).transpose()?,
            receipt_at: r.get::<_, Option<i64>>(10)?.map(Timestamp),
        });
    }
    Ok(out)
}

/// Checks idempotency and limits, then stores. Runs without a savepoint (one copies every
/// page a job touches first, a tenth of an insert's cost): everything before the final INSERT
/// only reads, and the send is counted only once that INSERT succeeded.
pub(super) fn insert_tx(
    w: &Writer,
    m: NewMessage,
    limits: &[(LimitScope, Rate)],
) -> Result<InsertResult, StoreError> {
    let c = &w.conn;
    if let Some(key) = &m.idempotency_key {
        let existing = c
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE client = ?1 AND idempotency_key = ?2"
            ))?
            .query_row(params![m.client, key], row_to_message)
            .optional()?;
        if let Some(e) = existing {
            let e = e?;
            return Ok(if e.recipient == m.recipient {
                InsertResult::Existing(e)
            } else {
                InsertResult::KeyConflict
            });
        }
    }
    if let Some((scope, oldest)) = w.recent.check(c, limits, &recent::Keys::new(&m))? {
        let window = limits
            .iter()
            .find(|(s, _)| *s == scope)
            .map_or(Duration::ZERO, |(_, r)| r.window);
        return Ok(InsertResult::Limited {
            scope,
            retry_after: m
                .created_at
                .until(Timestamp(oldest).plus(window))
                .max(Duration::from_secs(1)),
        });
    }
    let stored = insert_row(c, m)?;
    if let InsertResult::Created(created) = &stored {
        w.recent.record(&recent::Keys::stored(created));
    }
    Ok(stored)
}

/// The final INSERT of [`insert_tx`].
fn insert_row(c: &Connection, m: NewMessage) -> Result<InsertResult, StoreError> {
    let kind = m.content.kind();
    let (body, sms_text) = match &m.content {
        Content::Code { code, sms_text } => (code.clone(), Some(sms_text.clone())),
        Content::Text(t) => (t.clone(), None),
    };
    exec(c,
        "INSERT INTO messages (id, client, recipient, country, kind, body, sms_text, locale, reference,
            idempotency_key, created_at, expires_at, state, next_attempt_at, only_channel)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'queued', ?11, ?13)",
        params![
            &*m.id,
            m.client,
            &*m.recipient,
            m.country,
            kind.as_str(),
            body,
            sms_text,
            m.locale,
            m.reference,
            m.idempotency_key,
            m.created_at.0,
            m.expires_at.0,
            m.only_channel.map(ChannelKind::as_str)
        ],
    )?;
    Ok(InsertResult::Created(m.queued()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Outcome;
    use crate::store::Store;
    use crate::store::tests::{new_msg, num};

    #[tokio::test]
    async fn insert_claim_finish_wipes_body() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let r = s
            .insert(new_msg("m1", "+911", 1000, None), vec![])
            .await
            .unwrap();
        assert!(matches!(r, InsertResult::Created(_)));
        let (claimed, expired) = s.claim_due(Timestamp(1000), 10).await.unwrap();
        assert_eq!((claimed.len(), expired), (1, 0));
        assert_eq!(claimed[0].state, MessageState::Sending);
        assert!(claimed[0].content.is_some());
        let a = s
            .start_attempt(
                "m1",
                ChannelKind::Sms,
                AttemptPurpose::Code,
                Timestamp(1001),
            )
            .await
            .unwrap();
        s.finish_attempt(
            a,
            &Outcome::Accepted {
                provider_id: "modem0/1".into(),
            },
            Timestamp(1002),
        )
        .await
        .unwrap();
        s.finish(
            &claimed[0].id,
            MessageState::Sent,
            Some(ChannelKind::Sms),
            None,
            false,
            Timestamp(1002),
        )
        .await
        .unwrap();
        let (m, atts) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Sent);
        assert!(m.content.is_none(), "body wiped");
        assert_eq!(atts[0].provider_id.as_deref(), Some("modem0/1"));
        assert!(s.get("m1", "other-client").await.unwrap().is_none());
        let eff = s
            .apply_receipt(
                ChannelKind::Sms,
                "modem0/1".into(),
                ReceiptStatus::Delivered,
                Timestamp(2000),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(eff.state, MessageState::Delivered);
        // A late, repeated "sent" does not move it back.
        s.apply_receipt(
            ChannelKind::Sms,
            "modem0/1".into(),
            ReceiptStatus::Sent,
            Timestamp(2100),
        )
        .await
        .unwrap();
        let (m, atts) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!(m.state, MessageState::Delivered);
        assert_eq!(atts[0].receipt, Some(ReceiptKind::Delivered));
    }

    #[tokio::test]
    async fn rows_come_back_typed_and_a_stranger_word_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.insert(new_msg("m1", "+911", 1000, None), vec![])
            .await
            .unwrap();
        s.record_skip("m1", ChannelKind::WhatsApp, "off".into(), Timestamp(1001))
            .await
            .unwrap();
        let (m, atts) = s.get("m1", "c").await.unwrap().unwrap();
        assert_eq!((m.kind, &m.recipient), (MessageKind::Code, &num("+911")));
        assert_eq!(atts[0].channel, ChannelKind::WhatsApp);
        assert_eq!(atts[0].end, Some(AttemptEnd::Skipped));
        s.write(|c| {
            c.execute_batch("UPDATE attempts SET outcome = 'lost'")?;
            Ok(())
        })
        .await
        .unwrap();
        let err = s.attempts("m1").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(w) if w.contains("\"lost\"")),
            "{err}"
        );
        s.write(|c| {
            c.execute_batch("UPDATE messages SET recipient = '12345'")?;
            Ok(())
        })
        .await
        .unwrap();
        assert!(matches!(
            s.get("m1", "c").await,
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn a_claimed_row_that_cannot_be_read_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        for (id, to) in [("m1", "+911"), ("m2", "+912")] {
            s.insert(new_msg(id, to, 1000, None), vec![]).await.unwrap();
        }
        s.write(|c| {
            c.execute_batch("UPDATE messages SET kind = 'fax' WHERE id = 'm1'")?;
            Ok(())
        })
        .await
        .unwrap();
        let (claimed, _) = s.claim_due(Timestamp(2000), 10).await.unwrap();
        let ids: Vec<&str> = claimed.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m2"]);
        let row = s
            .read(|c| {
                Ok(c.query_row(
                    "SELECT state, reason, body FROM messages WHERE id = 'm1'",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )?)
            })
            .await
            .unwrap();
        assert_eq!(
            row,
            (
                "failed".into(),
                "corrupt row: unknown message kind \"fax\"".into(),
                None
            )
        );
    }

    #[tokio::test]
    async fn idempotency_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let a = s
            .insert(new_msg("m1", "+911", 1000, Some("k")), vec![])
            .await
            .unwrap();
        assert!(matches!(a, InsertResult::Created(_)));
        let b = s
            .insert(new_msg("m2", "+911", 1001, Some("k")), vec![])
            .await
            .unwrap();
        assert!(matches!(b, InsertResult::Existing(ref m) if m.id.as_str() == "m1"));
        let c = s
            .insert(new_msg("m3", "+912", 1002, Some("k")), vec![])
            .await
            .unwrap();
        assert!(matches!(c, InsertResult::KeyConflict));
        let rate = Rate {
            count: 2,
            window: Duration::from_secs(60),
        };
        let lim = vec![(LimitScope::Recipient, rate)];
        assert!(matches!(
            s.insert(new_msg("m4", "+911", 2000, None), lim.clone())
                .await
                .unwrap(),
            InsertResult::Created(_)
        ));
        assert!(matches!(
            s.insert(new_msg("m4b", "+911", 2001, None), lim.clone())
                .await
                .unwrap(),
            InsertResult::Limited {
                scope: LimitScope::Recipient,
                ..
            }
        ));
        // Another number is fine; after the window the first number is too.
        assert!(matches!(
            s.insert(new_msg("m5", "+913", 2000, None), lim.clone())
                .await
                .unwrap(),
            InsertResult::Created(_)
        ));
        match s
            .insert(new_msg("m6", "+911", 30_000, None), lim.clone())
            .await
            .unwrap()
        {
            InsertResult::Limited { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_millis(31_000))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.insert(new_msg("m7", "+911", 61_001, None), lim)
                .await
                .unwrap(),
            InsertResult::Created(_)
        ));
    }

    /// Limit counting lives in memory; it must still see every stored message.
    #[tokio::test]
    async fn limits_survive_restarts_wider_windows_and_being_switched_off() {
        // Every test message has the same recipient, client and country, so each scope sees
        // the same sends; each runs the same story on its own database.
        for scope in [
            LimitScope::Recipient,
            LimitScope::Client,
            LimitScope::Country,
            LimitScope::Global,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let per = |count, secs| {
                vec![(
                    scope,
                    Rate {
                        count,
                        window: Duration::from_secs(secs),
                    },
                )]
            };
            let created = |r: InsertResult| matches!(r, InsertResult::Created(_));
            let mut n = 0;
            let mut send = async |s: &Store, at: i64, limits| {
                n += 1;
                s.insert(new_msg(&format!("m{n}"), "+911", at, None), limits)
                    .await
                    .unwrap()
            };
            let s = Store::open(&path).unwrap();
            assert!(created(send(&s, 1000, per(3, 60)).await), "{scope:?}");
            assert!(created(send(&s, 2000, per(3, 60)).await), "{scope:?}");
            drop(s);
            // A restart: the tally is rebuilt from the outbox.
            let s = Store::open(&path).unwrap();
            assert!(created(send(&s, 3000, per(3, 60)).await), "{scope:?}");
            assert!(!created(send(&s, 4000, per(3, 60)).await), "{scope:?}");
            // A tally built for a limit of one (after a restart) keeps one send per key;
            // raised back to three, the limit must see all three again.
            drop(s);
            let s = Store::open(&path).unwrap();
            assert!(!created(send(&s, 4001, per(1, 60)).await), "{scope:?}");
            assert!(!created(send(&s, 4002, per(3, 60)).await), "{scope:?}");
            // Later, the three have left the minute; a reload widens the window to ten
            // minutes, which must count them again.
            assert!(created(send(&s, 100_000, per(3, 60)).await), "{scope:?}");
            assert!(!created(send(&s, 100_001, per(4, 600)).await), "{scope:?}");
            // Switched off, the limit lets everything through; switched back on, it counts
            // what was stored meanwhile.
            for at in [700_000, 700_001, 700_002] {
                assert!(created(send(&s, at, vec![]).await), "{scope:?}");
            }
            assert!(!created(send(&s, 700_003, per(3, 60)).await), "{scope:?}");
            // Old sends are pruned as time moves on, and counting stays right.
            for at in [900_000, 900_001, 900_002] {
                assert!(created(send(&s, at, per(3, 60)).await), "{scope:?}");
            }
            assert!(!created(send(&s, 900_003, per(3, 60)).await), "{scope:?}");
            assert!(created(send(&s, 960_001, per(3, 60)).await), "{scope:?}");
        }
    }

    #[tokio::test]
    async fn housekeeping_purges_finished_messages_past_retention_with_their_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        const DAY: i64 = 86_400_000;
        for (id, at) in [
            ("old-sent", 1_000),
            ("old-failed", 2_000),
            ("old-queued", 3_000),
        ] {
            s.insert(new_msg(id, "+911", at, None), vec![])
                .await
                .unwrap();
        }
        let a = s
            .start_attempt(
                "old-sent",
                ChannelKind::Sms,
                AttemptPurpose::Code,
                Timestamp(1_500),
            )
            .await
            .unwrap();
        s.finish_attempt(
            a,
            &Outcome::Accepted {
                provider_id: "p1".into(),
            },
            Timestamp(1_600),
        )
        .await
        .unwrap();
        s.finish(
            "old-sent",
            MessageState::Delivered,
            None,
            None,
            false,
            Timestamp(1_700),
        )
        .await
        .unwrap();
        s.finish(
            "old-failed",
            MessageState::Failed,
            None,
            None,
            false,
            Timestamp(2_500),
        )
        .await
        .unwrap();
        // Finished, but younger than the retention.
        s.insert(new_msg("recent", "+912", 9 * DAY, None), vec![])
            .await
            .unwrap();
        s.finish(
            "recent",
            MessageState::Delivered,
            None,
            None,
            false,
            Timestamp(9 * DAY),
        )
        .await
        .unwrap();
        let count =
            |sql: &'static str| s.read(move |c| Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))?));
        assert_eq!(count("SELECT count(*) FROM attempts").await.unwrap(), 1);

        let purged = s
            .housekeeping(Timestamp(10 * DAY), Duration::from_secs(7 * 86_400))
            .await
            .unwrap();
        assert_eq!(purged, 2);
        let left: Vec<String> = s
            .read(|c| {
                let mut q = c.prepare("SELECT id FROM messages ORDER BY id")?;
                let ids = q.query_map([], |r| r.get(0))?;
                Ok(ids.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        // A queued message is never purged from under the dispatcher, however old.
        assert_eq!(left, ["old-queued", "recent"]);
        assert_eq!(count("SELECT count(*) FROM attempts").await.unwrap(), 0);
        // Nothing more to do on the next run.
        let again = s
            .housekeeping(
                Timestamp(10 * DAY + 60_000),
                Duration::from_secs(7 * 86_400),
            )
            .await
            .unwrap();
        assert_eq!(again, 0);
    }

    #[tokio::test]
    async fn a_rebuilt_tally_sees_sends_behind_a_clock_that_stepped_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = Store::open(&path).unwrap();
        s.insert(new_msg("m1", "+911", 50_000, None), vec![])
            .await
            .unwrap();
        // The clock stepped back 20 s: this row is newer by rowid, older by its time.
        s.insert(new_msg("m2", "+911", 30_000, None), vec![])
            .await
            .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        let one_a_minute = vec![(
            LimitScope::Recipient,
            Rate {
                count: 1,
                window: Duration::from_secs(60),
            },
        )];
        // The window starts at 40.5 s: m2 is outside it, m1 inside, behind m2.
        let r = s
            .insert(new_msg("m3", "+911", 100_500, None), one_a_minute)
            .await
            .unwrap();
        assert!(matches!(r, InsertResult::Limited { .. }), "{r:?}");
    }

    #[tokio::test]
    async fn limits_count_each_key_apart_and_unknown_countries_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let one = |scope| {
            vec![(
                scope,
                Rate {
                    count: 1,
                    window: Duration::from_secs(60),
                },
            )]
        };
        let created = |r: InsertResult| matches!(r, InsertResult::Created(_));
        let msg = |id: &str, to: &str, client: &str, country: Option<&str>| NewMessage {
            client: client.into(),
            country: country.map(Into::into),
            ..new_msg(id, to, 1000, None)
        };
        let ins = async |m, l| s.insert(m, l).await.unwrap();
        let (r, c, k) = (
            LimitScope::Recipient,
            LimitScope::Client,
            LimitScope::Country,
        );
        assert!(created(
            ins(msg("a1", "+911", "a", Some("IN")), one(r)).await
        ));
        assert!(created(
            ins(msg("a2", "+912", "a", Some("IN")), one(r)).await
        ));
        assert!(!created(
            ins(msg("a3", "+911", "b", Some("IN")), one(r)).await
        ));
        assert!(created(
            ins(msg("b1", "+913", "b", Some("IN")), one(c)).await
        ));
        assert!(!created(
            ins(msg("b2", "+914", "a", Some("DE")), one(c)).await
        ));
        assert!(created(
            ins(msg("c1", "+915", "c", Some("DE")), one(k)).await
        ));
        assert!(!created(
            ins(msg("c2", "+916", "c", Some("IN")), one(k)).await
        ));
        // A number whose country is unknown has no country to count against.
        assert!(created(ins(msg("c3", "+917", "c", None), one(k)).await));
        assert!(created(ins(msg("c4", "+918", "c", None), one(k)).await));
    }
}
