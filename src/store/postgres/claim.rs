//! Claims that several nodes share: due rows are taken with `FOR UPDATE SKIP LOCKED` and
//! leased to this node (`claimed_by`, `lease_until`); the node's heartbeat renews its leases.
//! A lease that ran out (its node died or lost the database) is taken back by whichever
//! node claims next, under the rule `recover` keeps on SQLite: an attempt that departed and
//! has no end is marked interrupted and never repeated on its channel. Also the attempt log's
//! openings, the nodes table and housekeeping.

use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::Cached;

use super::messages::{MESSAGE_COLUMNS, read_message};
use super::{PgStore, pg_err};
use crate::clock::Timestamp;
use crate::domain::{AttemptEnd, AttemptPurpose, ChannelKind};
use crate::store::{Message, StoreError};

/// What an interrupted attempt's detail says.
const INTERRUPTED: &str =
    "the node working on it stopped during this attempt; it may or may not have been delivered";

/// A peer as its heartbeat row shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its `store.node`.
    pub node: String,
    /// "whatsapp+sms" or "whatsapp".
    pub role: String,
    /// Whether it had a ready modem at its last heartbeat.
    pub has_modem: bool,
    /// Its last heartbeat (its own clock).
    pub last_seen: Timestamp,
}

/// Rows that are SMS steps: a node without a ready modem leaves them to one that has one.
/// A message restricted to SMS, one whose WhatsApp code attempt already happened (its next
/// step is the fallback), one to a number remembered as not on WhatsApp or switched to SMS.
const NOT_AN_SMS_STEP: &str = "(m.only_channel IS DISTINCT FROM 'sms'
       AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id
                       AND a.channel = 'whatsapp' AND a.purpose = 'code')
       AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.number = m.recipient
                       AND (r.no_whatsapp_until > $1 OR r.sms_until > $1)))";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Takes back expired leases, expires queued messages past their lifetime, and claims up
    /// to `max` due messages for this node (watched ones first, as on SQLite). `can_sms`:
    /// this node has a ready modem; without one it claims only WhatsApp steps.
    pub async fn claim_due(
        &self,
        now: Timestamp,
        max: usize,
        can_sms: bool,
    ) -> Result<(Vec<Message>, usize), StoreError> {
        let mut conn = self.conn().await?;
        // Leases and lifetimes run out on a scale of seconds: looking for them once a second
        // is enough, where every claim did (two more statements in its transaction each time
        // a message was accepted or ended). A claim never takes a message past its expiry.
        let mut expired = 0;
        let last = self.swept_at.load(Ordering::Relaxed);
        if now.0.saturating_sub(last) >= 1_000 || max == 0 {
            self.swept_at.store(now.0, Ordering::Relaxed);
            let tx = conn.transaction().await.map_err(pg_err)?;
            take_back_expired(&tx, now).await?;
            expired = tx
                .exec(
                    "UPDATE messages SET state = 'expired', body = NULL, sms_text = NULL,
                        reason = 'expired before it could be delivered' || COALESCE(' (last: ' || reason || ')', ''), finished_at = $1
                     WHERE state = 'queued' AND expires_at <= $1",
                    &[&now.0],
                )
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
        }
        let mut out = Vec::new();
        if max == 0 {
            return Ok((out, usize::try_from(expired).unwrap_or(usize::MAX)));
        }
        // One statement (its own transaction): the watched messages first, then the queued
        // ones, as on SQLite.
        let sql = format!(
            "UPDATE messages SET state = 'sending', claimed_by = $3, lease_until = $1::bigint + $4::bigint
             WHERE id IN (SELECT m.id FROM messages m
                          WHERE ((m.state = 'sent' AND m.body IS NOT NULL AND m.next_attempt_at <= $1)
                                 OR (m.state = 'queued' AND m.next_attempt_at <= $1 AND m.expires_at > $1))
                            AND ($5 OR {NOT_AN_SMS_STEP})
                          ORDER BY m.state = 'sent' DESC, m.next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING {MESSAGE_COLUMNS}"
        );
        let room = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = conn
            .q(
                &sql,
                &[&now.0, &room, &self.node, &ms(self.lease), &can_sms],
            )
            .await
            .map_err(pg_err)?;
        for r in rows {
            match read_message(&r) {
                Ok(m) => out.push(m),
                // One damaged row must not stop the queue: it fails on its own.
                Err(StoreError::Corrupt(why)) => {
                    let id: String = r.try_get(0).map_err(pg_err)?;
                    tracing::error!(message = %id, %why, "store: a claimed message cannot be read; failing it");
                    conn.exec(
                        "UPDATE messages SET state = 'failed', reason = $2, finished_at = $3,
                            body = NULL, sms_text = NULL WHERE id = $1",
                        &[&id, &format!("corrupt row: {why}"), &now.0],
                    )
                    .await
                    .map_err(pg_err)?;
                }
                Err(e) => return Err(e),
            }
        }
        if let Ok(mut w) = self.working.lock() {
            w.extend(out.iter().map(|m| m.id.to_string()));
        }
        Ok((out, usize::try_from(expired).unwrap_or(usize::MAX)))
    }

    /// When the next queued message (or watched one, or lease) comes due, on any node.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let t: Option<i64> = self
            .conn()
            .await?
            .q_one(
                "SELECT LEAST(
                     (SELECT min(next_attempt_at) FROM messages WHERE state = 'queued'),
                     (SELECT min(next_attempt_at) FROM messages WHERE state = 'sent' AND body IS NOT NULL),
                     (SELECT min(lease_until) FROM messages WHERE state = 'sending'))",
                &[],
            )
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        Ok(t.map(Timestamp))
    }

    /// Start-up recovery of this node: what it had claimed goes back to the queue at once
    /// (its leases would run out anyway), its open attempts interrupted; expired leases of
    /// other nodes are taken back too. Returns how many messages were recovered.
    pub async fn recover(&self, now: Timestamp) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let mine = tx
            .q(
                "SELECT id FROM messages WHERE state = 'sending' AND claimed_by = $1 FOR UPDATE",
                &[&self.node],
            )
            .await
            .map_err(pg_err)?;
        let ids: Vec<String> = mine
            .iter()
            .map(|r| r.try_get(0).map_err(pg_err))
            .collect::<Result<_, _>>()?;
        let n = release(&tx, &ids, now).await? + take_back_expired(&tx, now).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n)
    }

    /// Records an attempt at the moment it departs.
    pub async fn start_attempt(
        &self,
        message_id: &str,
        channel: ChannelKind,
        purpose: AttemptPurpose,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        insert_open_attempt(&c, message_id, channel, purpose, now, &self.node).await
    }

    /// [`PgStore::start_attempt`] for a code really leaving; `None` when its message ended
    /// meanwhile or another node took it over (its lease ran out).
    pub async fn depart_attempt(
        &self,
        message_id: &str,
        channel: ChannelKind,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        // One statement, so one round trip and its own transaction: the row lock the
        // subquery takes holds until the attempt is in, so a receipt or a cancellation that
        // ends the message meanwhile either comes first (nothing departs) or waits.
        let row = self
            .conn()
            .await?
            .q_opt(
                "WITH m AS (SELECT id FROM messages WHERE id = $1
                              AND state NOT IN ('delivered', 'failed', 'expired')
                              AND (state <> 'sending' OR claimed_by = $5)
                            FOR UPDATE)
                 INSERT INTO attempts (message_id, channel, purpose, started_at, node)
                 SELECT id, $2, $3, $4, $5 FROM m RETURNING id",
                &[
                    &message_id,
                    &channel.as_str(),
                    &AttemptPurpose::Code.as_str(),
                    &now.0,
                    &self.node,
                ],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| r.try_get(0).map_err(pg_err)).transpose()
    }

    /// The departure of a pre-notice: marks the number pre-notified and opens the attempt in
    /// one transaction, or `None` when another notice (from either node) left first.
    pub async fn start_prenotice(
        &self,
        message_id: &str,
        number: &str,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let changed = tx
            .exec(
                "INSERT INTO recipients (number, prenotified_at) VALUES ($1, $2)
                 ON CONFLICT (number) DO UPDATE SET prenotified_at = $2
                 WHERE recipients.prenotified_at IS NULL",
                &[&number, &now.0],
            )
            .await
            .map_err(pg_err)?;
        if changed != 1 {
            return Ok(None);
        }
        let purpose = AttemptPurpose::Prenotice;
        let id = insert_open_attempt(&tx, message_id, ChannelKind::Sms, purpose, now, &self.node)
            .await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(id))
    }

    /// Records a channel the plan passed over, and why.
    pub async fn record_skip(
        &self,
        message_id: &str,
        channel: ChannelKind,
        why: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn()
            .await?
            .exec(
                "INSERT INTO attempts (message_id, channel, started_at, ended_at, outcome, detail, node)
                 VALUES ($1, $2, $3, $3, $4, $5, $6)",
                &[
                    &message_id,
                    &channel.as_str(),
                    &now.0,
                    &AttemptEnd::Skipped.as_str(),
                    &why,
                    &self.node,
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    /// This node's heartbeat: its row in `nodes`, and the leases of what its dispatcher is
    /// still working on renewed (that stays its own while it lives; a message an outage left
    /// 'sending' after its task ended is not renewed, and is taken back). Call it well within
    /// a lease.
    pub async fn heartbeat(&self, now: Timestamp, has_modem: bool) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let role = if has_modem {
            "whatsapp+sms"
        } else {
            "whatsapp"
        };
        tx.exec(
            "INSERT INTO nodes (node, role, has_modem, last_seen) VALUES ($1, $2, $3, $4)
             ON CONFLICT (node) DO UPDATE SET role = $2, has_modem = $3, last_seen = $4",
            &[&self.node, &role, &has_modem, &now.0],
        )
        .await
        .map_err(pg_err)?;
        let renewed = tx
            .exec(
                "UPDATE messages SET lease_until = $2::bigint + $3::bigint
                 WHERE state = 'sending' AND claimed_by = $1 AND id = ANY($4)",
                &[&self.node, &now.0, &ms(self.lease), &self.working()],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(renewed)
    }

    /// Every node's last heartbeat, this one included, by name.
    pub async fn nodes(&self) -> Result<Vec<Peer>, StoreError> {
        let rows = self
            .conn()
            .await?
            .q(
                "SELECT node, role, has_modem, last_seen FROM nodes ORDER BY node",
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(Peer {
                    node: r.try_get(0).map_err(pg_err)?,
                    role: r.try_get(1).map_err(pg_err)?,
                    has_modem: r.try_get(2).map_err(pg_err)?,
                    last_seen: Timestamp(r.try_get(3).map_err(pg_err)?),
                })
            })
            .collect()
    }

    /// Housekeeping, as on SQLite: wipes content no channel can need, deletes finished
    /// messages older than `retention`, expires and purges verifications. Any node may run it.
    pub async fn housekeeping(
        &self,
        now: Timestamp,
        retention: Duration,
    ) -> Result<usize, StoreError> {
        let cutoff = now.0.saturating_sub(ms(retention));
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        tx.exec(
            "UPDATE messages SET body = NULL, sms_text = NULL, finished_at = COALESCE(finished_at, $1)
             WHERE state = 'sent' AND expires_at <= $1 AND body IS NOT NULL",
            &[&now.0],
        )
        .await
        .map_err(pg_err)?;
        let n = tx
            .exec(
                "DELETE FROM messages WHERE created_at < $1 AND state NOT IN ('queued', 'sending')",
                &[&cutoff],
            )
            .await
            .map_err(pg_err)?;
        tx.exec(
            "UPDATE verifications SET status = 'expired', finished_at = $1
             WHERE status = 'pending' AND expires_at <= $1",
            &[&now.0],
        )
        .await
        .map_err(pg_err)?;
        tx.exec(
            "DELETE FROM verifications WHERE created_at < $1",
            &[&cutoff],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Messages whose lease ran out go back to the queue, their open attempts interrupted (the
/// dispatcher never repeats an interrupted attempt on its channel). Rows another node is
/// taking back at this moment are skipped, not waited for.
async fn take_back_expired(tx: &impl GenericClient, now: Timestamp) -> Result<usize, StoreError> {
    let rows = tx
        .q(
            "SELECT id FROM messages WHERE state = 'sending' AND lease_until < $1
             FOR UPDATE SKIP LOCKED",
            &[&now.0],
        )
        .await
        .map_err(pg_err)?;
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get(0).map_err(pg_err))
        .collect::<Result<_, _>>()?;
    if !ids.is_empty() {
        tracing::warn!(
            count = ids.len(),
            "store: taking over messages whose node's lease ran out"
        );
    }
    release(tx, &ids, now).await
}

/// Interrupts the open attempts of `ids` and queues them again, unclaimed.
async fn release(
    tx: &impl GenericClient,
    ids: &[String],
    now: Timestamp,
) -> Result<usize, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    tx.exec(
        "UPDATE attempts SET ended_at = $2, outcome = 'interrupted', detail = $3
         WHERE ended_at IS NULL AND message_id = ANY($1)",
        &[&ids, &now.0, &INTERRUPTED],
    )
    .await
    .map_err(pg_err)?;
    let n = tx
        .exec(
            "UPDATE messages SET state = 'queued', next_attempt_at = $2, claimed_by = NULL,
                lease_until = NULL
             WHERE id = ANY($1) AND state = 'sending'",
            &[&ids, &now.0],
        )
        .await
        .map_err(pg_err)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

async fn insert_open_attempt(
    c: &impl GenericClient,
    message_id: &str,
    channel: ChannelKind,
    purpose: AttemptPurpose,
    now: Timestamp,
    node: &str,
) -> Result<i64, StoreError> {
    c.q_one(
        "INSERT INTO attempts (message_id, channel, purpose, started_at, node)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
        &[
            &message_id,
            &channel.as_str(),
            &purpose.as_str(),
            &now.0,
            &node,
        ],
    )
    .await
    .map_err(pg_err)?
    .try_get(0)
    .map_err(pg_err)
}
