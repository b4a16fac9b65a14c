//! The outbox on PostgreSQL: accepting (idempotency and limits exact across the nodes),
//! reading messages and their attempts. Rows become the domain's types here.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::Cached;
use tokio_postgres::Row;

use super::{PgStore, pg_err};
use crate::abuse::Scope;
use crate::clock::Timestamp;
use crate::config::Rate;
use crate::domain::{
    Attempt, AttemptEnd, AttemptPurpose, ChannelKind, Content, E164, MessageId, MessageKind,
    MessageState, ReceiptKind,
};
use crate::store::{
    BatchResult, InsertResult, LimitScope, Message, NewMessage, StoreError, VelocityKeys,
    VelocityLimited,
};

/// The columns [`read_message`] reads, in order.
pub(super) const MESSAGE_COLUMNS: &str = "id, client, recipient, country, kind, body, sms_text, locale, reference, \
    idempotency_key, created_at, expires_at, state, channel, reason, finished_at, only_channel";

impl PgStore {
    /// Accepts a message: checks idempotency, the limits and the velocity limits (counted on
    /// the rows, so they hold across the pair) and inserts, in one transaction.
    pub async fn insert(
        &self,
        m: NewMessage,
        limits: Vec<(LimitScope, Rate)>,
        velocity: VelocityKeys,
    ) -> Result<Result<InsertResult, VelocityLimited>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        lock_keys(&tx, std::slice::from_ref(&m), &limits, &[&velocity]).await?;
        let r = insert_tx(&tx, m, &limits, &velocity).await?;
        if matches!(r, Ok(InsertResult::Created(_))) {
            // The caller answers 202 only after this returned: the row is durable.
            tx.commit().await.map_err(pg_err)?;
        }
        Ok(r.map_err(|(scope, retry_after)| VelocityLimited {
            index: 0,
            scope,
            retry_after,
        }))
    }

    /// Accepts several messages as one: each counted as if the ones before it were stored,
    /// all inserted in one transaction, or none. `velocity` has the keys of each message, in
    /// order (none: no velocity limit applies).
    pub async fn insert_all(
        &self,
        ms: Vec<NewMessage>,
        limits: Vec<(LimitScope, Rate)>,
        velocity: Vec<VelocityKeys>,
    ) -> Result<Result<BatchResult, VelocityLimited>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let keys: Vec<&VelocityKeys> = velocity.iter().collect();
        lock_keys(&tx, &ms, &limits, &keys).await?;
        let mut stored = Vec::with_capacity(ms.len());
        for (index, m) in ms.into_iter().enumerate() {
            let v = velocity.get(index).map_or(&[][..], Vec::as_slice);
            match insert_tx(&tx, m, &limits, v).await? {
                Ok(r @ (InsertResult::Created(_) | InsertResult::Existing(_))) => stored.push(r),
                // Dropping the transaction rolls back what the batch stored so far.
                Ok(why) => {
                    return Ok(Ok(BatchResult::Refused {
                        index,
                        why: Box::new(why),
                    }));
                }
                Err((scope, retry_after)) => {
                    return Ok(Err(VelocityLimited {
                        index,
                        scope,
                        retry_after,
                    }));
                }
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(Ok(BatchResult::Stored(stored)))
    }

    /// A message and its attempts, if `client` sent it.
    pub async fn get(
        &self,
        id: &str,
        client: &str,
    ) -> Result<Option<(Message, Vec<Attempt>)>, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .q_opt(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND client = $2"),
                &[&id, &client],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else { return Ok(None) };
        let m = read_message(&row)?;
        Ok(Some((m, attempts_of(&conn, id).await?)))
    }

    /// A message's attempts, oldest first.
    pub async fn attempts(&self, message_id: &str) -> Result<Vec<Attempt>, StoreError> {
        attempts_of(&self.conn().await?, message_id).await
    }

    /// A message's current state.
    pub async fn state(
        &self,
        message_id: &str,
    ) -> Result<Option<(MessageState, Option<ChannelKind>)>, StoreError> {
        let row = self
            .conn()
            .await?
            .q_opt(
                "SELECT state, channel FROM messages WHERE id = $1",
                &[&message_id],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| {
            Ok((
                MessageState::read(r.try_get(0).map_err(pg_err)?)?,
                r.try_get::<_, Option<&str>>(1)
                    .map_err(pg_err)?
                    .map(ChannelKind::read)
                    .transpose()?,
            ))
        })
        .transpose()
    }

    /// Number of messages waiting or in flight, on every node.
    pub async fn queue_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()
            .await?
            .q_one(
                "SELECT count(*) FROM messages WHERE state IN ('queued', 'sending')",
                &[],
            )
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// The key a limit scope counts a message under; None: the scope does not apply.
fn limit_key(scope: LimitScope, m: &NewMessage) -> Option<&str> {
    match scope {
        LimitScope::Recipient => Some(&m.recipient),
        LimitScope::Client => Some(&m.client),
        LimitScope::Country => m.country.as_deref(),
        LimitScope::Global => Some(""),
    }
}

/// The advisory-lock name of a velocity key (`limits.per_prefix`, `per_user`, `per_ip`).
fn velocity_lock(scope: Scope, key: &str) -> String {
    format!("otpgate:velocity:{}:{key}", scope.code())
}

/// Takes the transaction's advisory locks on every limit key, velocity key and idempotency
/// key the messages touch, in one statement and in hash order (two nodes locking the same
/// keys in different orders would deadlock). A second accept for the same number waits here
/// until the first has committed or rolled back, so its count includes the first: "5 per 15
/// minutes" holds across the nodes. Only the scopes with a limit are locked; a global limit
/// makes every accept of the pair take turns.
pub(super) async fn lock_keys(
    tx: &impl GenericClient,
    ms: &[NewMessage],
    limits: &[(LimitScope, Rate)],
    velocity: &[&VelocityKeys],
) -> Result<(), StoreError> {
    let mut keys: Vec<String> = Vec::new();
    for m in ms {
        for (scope, _) in limits {
            if let Some(k) = limit_key(*scope, m) {
                keys.push(format!("otpgate:limit:{}:{k}", scope.as_str()));
            }
        }
        if let Some(k) = &m.idempotency_key {
            keys.push(format!("otpgate:key:{}:{k}", m.client));
        }
    }
    for v in velocity {
        keys.extend(v.iter().map(|(scope, k, _)| velocity_lock(*scope, k)));
    }
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    tx.q(
        "SELECT pg_advisory_xact_lock(h) FROM
             (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k) AS keys
         ORDER BY h",
        &[&keys],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// When the window's `rate.count`-th newest send of `key` leaves it, if the window is full:
/// the query shared by every limit, on the column that holds the key.
async fn window_full(
    tx: &impl GenericClient,
    column: &str,
    key: &str,
    rate: &Rate,
    now: Timestamp,
) -> Result<Option<Duration>, StoreError> {
    if rate.count == 0 {
        return Ok(None);
    }
    let window = i64::try_from(rate.window.as_millis()).unwrap_or(i64::MAX);
    let since = now.0.saturating_sub(window);
    // The global limit has no key column: every row counts.
    let filter = if column.is_empty() {
        "$1::text IS NOT NULL".to_owned()
    } else {
        format!("{column} = $1")
    };
    let sql = format!(
        "SELECT created_at FROM messages WHERE {filter} AND created_at > $2
         ORDER BY created_at DESC OFFSET $3 LIMIT 1"
    );
    let offset = i64::from(rate.count - 1);
    let nth = tx
        .q_opt(&sql, &[&key, &since, &offset])
        .await
        .map_err(pg_err)?;
    match nth {
        None => Ok(None),
        Some(row) => {
            let oldest: i64 = row.try_get(0).map_err(pg_err)?;
            Ok(Some(
                now.until(Timestamp(oldest).plus(rate.window))
                    .max(Duration::from_secs(1)),
            ))
        }
    }
}

/// The column a velocity scope's key is stored in.
fn velocity_column(scope: Scope) -> &'static str {
    match scope {
        Scope::Prefix => "prefix_key",
        Scope::User => "end_user",
        Scope::Ip => "end_ip",
    }
}

/// Idempotency, velocity limits, limits, INSERT, inside the caller's transaction (its locks
/// already taken). `Err((scope, wait))`: a velocity limit is full; nothing was written.
pub(super) async fn insert_tx(
    tx: &impl GenericClient,
    m: NewMessage,
    limits: &[(LimitScope, Rate)],
    velocity: &[(Scope, String, Rate)],
) -> Result<Result<InsertResult, (Scope, Duration)>, StoreError> {
    if let Some(key) = &m.idempotency_key {
        let existing = tx
            .q_opt(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE client = $1 AND idempotency_key = $2"
                ),
                &[&m.client, key],
            )
            .await
            .map_err(pg_err)?;
        if let Some(row) = existing {
            let e = read_message(&row)?;
            return Ok(Ok(if e.recipient == m.recipient {
                InsertResult::Existing(e)
            } else {
                InsertResult::KeyConflict
            }));
        }
    }
    // In the order a single box checks them: its velocity counts come before the store's.
    for (scope, key, rate) in velocity {
        if let Some(wait) =
            window_full(tx, velocity_column(*scope), key, rate, m.created_at).await?
        {
            return Ok(Err((*scope, wait)));
        }
    }
    for (scope, rate) in limits {
        let Some(key) = limit_key(*scope, &m) else {
            continue;
        };
        let column = match scope {
            LimitScope::Recipient => "recipient",
            LimitScope::Client => "client",
            LimitScope::Country => "country",
            LimitScope::Global => "",
        };
        if let Some(retry_after) = window_full(tx, column, key, rate, m.created_at).await? {
            return Ok(Ok(InsertResult::Limited {
                scope: *scope,
                retry_after,
            }));
        }
    }
    insert_row(tx, m, velocity).await.map(Ok)
}

/// The final INSERT of [`insert_tx`].
async fn insert_row(
    tx: &impl GenericClient,
    m: NewMessage,
    velocity: &[(Scope, String, Rate)],
) -> Result<InsertResult, StoreError> {
    let kind = m.content.kind();
    // The velocity keys live on the row, and go with it when housekeeping purges it.
    let key = |scope: Scope| {
        velocity
            .iter()
            .find(|(s, _, _)| *s == scope)
            .map(|(_, k, _)| k.as_str())
    };
    let (body, sms_text) = match &m.content {
        Content::Code { code, sms_text } => (code.as_str(), Some(sms_text.as_str())),
        Content::Text(t) => (t.as_str(), None),
    };
    tx.exec(
        "INSERT INTO messages (id, client, recipient, country, kind, body, sms_text, locale, reference,
            idempotency_key, created_at, expires_at, state, next_attempt_at, only_channel,
            prefix_key, end_user, end_ip)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'queued', $11, $13, $14, $15, $16)",
        &[
            &&*m.id,
            &m.client,
            &&*m.recipient,
            &m.country,
            &kind.as_str(),
            &body,
            &sms_text,
            &m.locale,
            &m.reference,
            &m.idempotency_key,
            &m.created_at.0,
            &m.expires_at.0,
            &m.only_channel.map(ChannelKind::as_str),
            &key(Scope::Prefix),
            &key(Scope::User),
            &key(Scope::Ip),
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(InsertResult::Created(m.queued()))
}

/// A row of [`MESSAGE_COLUMNS`] as a [`Message`].
pub(super) fn read_message(r: &Row) -> Result<Message, StoreError> {
    let get_s = |i: usize| r.try_get::<_, Option<String>>(i).map_err(pg_err);
    let get_t = |i: usize| r.try_get::<_, Option<i64>>(i).map_err(pg_err);
    let kind = MessageKind::read(r.try_get(4).map_err(pg_err)?)?;
    let content = get_s(5)?.map(|body| match kind {
        MessageKind::Code => Content::Code {
            code: body,
            sms_text: r
                .try_get::<_, Option<String>>(6)
                .ok()
                .flatten()
                .unwrap_or_default(),
        },
        MessageKind::Text => Content::Text(body),
    });
    let recipient: &str = r.try_get(2).map_err(pg_err)?;
    Ok(Message {
        id: MessageId::new(r.try_get::<_, String>(0).map_err(pg_err)?),
        client: r.try_get(1).map_err(pg_err)?,
        // The number itself stays out of the error: errors reach the log.
        recipient: E164::new(recipient)
            .ok_or_else(|| StoreError::Corrupt("recipient is not an E.164 number".into()))?,
        country: get_s(3)?,
        content,
        kind,
        locale: get_s(7)?,
        reference: get_s(8)?,
        idempotency_key: get_s(9)?,
        created_at: Timestamp(r.try_get(10).map_err(pg_err)?),
        expires_at: Timestamp(r.try_get(11).map_err(pg_err)?),
        state: MessageState::read(r.try_get(12).map_err(pg_err)?)?,
        channel: get_s(13)?.as_deref().map(ChannelKind::read).transpose()?,
        reason: get_s(14)?,
        finished_at: get_t(15)?.map(Timestamp),
        only_channel: get_s(16)?.as_deref().map(ChannelKind::read).transpose()?,
    })
}

/// A message's attempts, oldest first.
pub(super) async fn attempts_of(
    c: &impl GenericClient,
    message_id: &str,
) -> Result<Vec<Attempt>, StoreError> {
    let rows = c
        .q(
            "SELECT id, channel, purpose, started_at, ended_at, outcome, provider_id, error_code,
                    detail, receipt, receipt_at
             FROM attempts WHERE message_id = $1 ORDER BY id",
            &[&message_id],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            let opt = |i: usize| r.try_get::<_, Option<&str>>(i).map_err(pg_err);
            Ok(Attempt {
                id: r.try_get(0).map_err(pg_err)?,
                channel: ChannelKind::read(r.try_get(1).map_err(pg_err)?)?,
                purpose: AttemptPurpose::read(r.try_get(2).map_err(pg_err)?)?,
                started_at: Timestamp(r.try_get(3).map_err(pg_err)?),
                ended_at: r
                    .try_get::<_, Option<i64>>(4)
                    .map_err(pg_err)?
                    .map(Timestamp),
                end: opt(5)?.map(AttemptEnd::read).transpose()?,
                provider_id: opt(6)?.map(str::to_owned),
                error_code: opt(7)?.map(str::to_owned),
                detail: opt(8)?.map(str::to_owned),
                receipt: opt(9)?.map(ReceiptKind::read).transpose()?,
                receipt_at: r
                    .try_get::<_, Option<i64>>(10)
                    .map_err(pg_err)?
                    .map(Timestamp),
            })
        })
        .collect()
}
