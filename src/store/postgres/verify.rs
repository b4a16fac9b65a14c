//! Verifications on PostgreSQL: as on SQLite, only a keyed hash of each code is stored. A
//! check locks the verification's row (`FOR UPDATE`) for its transaction, so a check on one
//! node and a check on the other are counted one after the other: the attempts limit and
//! single use hold across the pair.

use deadpool_postgres::GenericClient;

use super::Cached;
use subtle::ConstantTimeEq;

use super::messages::{insert_tx, lock_keys};
use super::{PgStore, pg_err};
use crate::clock::Timestamp;
use crate::config::Rate;
use crate::store::{
    CheckOutcome, InsertResult, LimitScope, NewMessage, NewVerification, Resend, StoreError,
    VelocityKeys, VelocityLimited, Verification,
};

const COLUMNS: &str =
    "id, recipient, message_id, channel, status, attempts, sends, created_at, expires_at, length";

fn count(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Ends the message carrying a verification's code: a queued one fails, a sent one loses
/// its code (no fallback carries a code that can no longer be used).
async fn retire_message(
    c: &impl GenericClient,
    message_id: Option<&str>,
    why: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    if let Some(mid) = message_id {
        c.exec(
            "UPDATE messages SET state = 'failed', reason = $2, finished_at = $3, body = NULL, sms_text = NULL
             WHERE id = $1 AND state = 'queued'",
            &[&mid, &why, &now.0],
        )
        .await
        .map_err(pg_err)?;
        c.exec(
            "UPDATE messages SET body = NULL, sms_text = NULL WHERE id = $1 AND state NOT IN ('queued', 'sending')",
            &[&mid],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

impl PgStore {
    /// Verifications made after `since` whose outcome is known at `now`, across the pair.
    pub async fn finished_verifications(
        &self,
        since: i64,
        now: i64,
    ) -> Result<Vec<crate::store::FinishedVerification>, StoreError> {
        let rows = self
            .conn()
            .await?
            .q(crate::store::verify::FINISHED_SINCE, &[&since, &now])
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get(1).map_err(pg_err)?;
                Ok(crate::store::FinishedVerification {
                    recipient: r.try_get(0).map_err(pg_err)?,
                    approved: status == "approved",
                    created_at: r.try_get(2).map_err(pg_err)?,
                    country: r.try_get(3).map_err(pg_err)?,
                })
            })
            .collect()
    }

    /// Stores a new verification and the message carrying its code, in one transaction; the
    /// number's earlier pending verifications of this client are canceled.
    pub async fn create_verification(
        &self,
        v: NewVerification,
        limits: Vec<(LimitScope, Rate)>,
        velocity: VelocityKeys,
    ) -> Result<Result<InsertResult, VelocityLimited>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let now = v.message.created_at;
        lock_keys(&tx, std::slice::from_ref(&v.message), &limits, &[&velocity]).await?;
        let older = tx
            .q(
                "SELECT id, message_id FROM verifications
                 WHERE client = $1 AND recipient = $2 AND status = 'pending' FOR UPDATE",
                &[&v.message.client, &&*v.message.recipient],
            )
            .await
            .map_err(pg_err)?;
        let result = match insert_tx(&tx, v.message.clone(), &limits, &velocity).await? {
            Ok(r @ InsertResult::Created(_)) => r,
            Ok(other) => return Ok(Ok(other)),
            Err((scope, retry_after)) => {
                return Ok(Err(VelocityLimited {
                    index: 0,
                    scope,
                    retry_after,
                }));
            }
        };
        for r in &older {
            let oid: &str = r.try_get(0).map_err(pg_err)?;
            let mid: Option<&str> = r.try_get(1).map_err(pg_err)?;
            tx.exec(
                "UPDATE verifications SET status = 'canceled', finished_at = $2 WHERE id = $1",
                &[&oid, &now.0],
            )
            .await
            .map_err(pg_err)?;
            retire_message(&tx, mid, "superseded by a newer verification", now).await?;
        }
        let length = i32::try_from(v.length).unwrap_or(i32::MAX);
        tx.exec(
            "INSERT INTO verifications (id, client, recipient, message_id, code_hash, length, channel,
                locale, created_at, expires_at, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending')",
            &[
                &v.id,
                &v.message.client,
                &&*v.message.recipient,
                &&*v.message.id,
                &v.code_hash.as_slice(),
                &length,
                &v.channel,
                &v.message.locale,
                &now.0,
                &v.message.expires_at.0,
            ],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Ok(result))
    }

    /// A verification, if `client` made it.
    pub async fn verification(
        &self,
        id: &str,
        client: &str,
    ) -> Result<Option<Verification>, StoreError> {
        let row = self
            .conn()
            .await?
            .q_opt(
                &format!("SELECT {COLUMNS} FROM verifications WHERE id = $1 AND client = $2"),
                &[&id, &client],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| {
            Ok(Verification {
                id: r.try_get(0).map_err(pg_err)?,
                recipient: r.try_get(1).map_err(pg_err)?,
                message_id: r.try_get(2).map_err(pg_err)?,
                channel: r.try_get(3).map_err(pg_err)?,
                status: r.try_get(4).map_err(pg_err)?,
                attempts: count(r.try_get(5).map_err(pg_err)?),
                sends: count(r.try_get(6).map_err(pg_err)?),
                created_at: Timestamp(r.try_get(7).map_err(pg_err)?),
                expires_at: Timestamp(r.try_get(8).map_err(pg_err)?),
                length: count(r.try_get(9).map_err(pg_err)?),
            })
        })
        .transpose()
    }

    /// Checks a candidate code's hash: counts the attempt, compares in constant time, single
    /// use; the row stays locked until the transaction ends.
    pub async fn check_verification(
        &self,
        id: &str,
        client: &str,
        candidate: [u8; 32],
        max_attempts: u32,
        now: Timestamp,
    ) -> Result<CheckOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        let row = tx
            .q_opt(
                "SELECT code_hash, status, attempts, expires_at, message_id, recipient
                 FROM verifications WHERE id = $1 AND client = $2 FOR UPDATE",
                &[&id, &client],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else {
            return Ok(CheckOutcome::NotFound);
        };
        let hash: &[u8] = row.try_get(0).map_err(pg_err)?;
        let status: &str = row.try_get(1).map_err(pg_err)?;
        let attempts = count(row.try_get(2).map_err(pg_err)?);
        let expires: i64 = row.try_get(3).map_err(pg_err)?;
        let message_id: Option<&str> = row.try_get(4).map_err(pg_err)?;
        let recipient: &str = row.try_get(5).map_err(pg_err)?;
        match status {
            "pending" => {}
            "expired" => return Ok(CheckOutcome::Expired),
            "max_attempts" => return Ok(CheckOutcome::MaxAttempts),
            other => return Ok(CheckOutcome::NotPending(other.to_owned())),
        }
        let set_status = |status: &'static str, attempts: u32| {
            let tx = &tx;
            async move {
                let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
                tx.exec(
                    "UPDATE verifications SET status = $2, attempts = $3,
                        finished_at = CASE WHEN $2 = 'pending' THEN finished_at ELSE $4 END
                     WHERE id = $1",
                    &[&id, &status, &attempts, &now.0],
                )
                .await
                .map_err(pg_err)
            }
        };
        let outcome = if now.0 >= expires {
            set_status("expired", attempts).await?;
            CheckOutcome::Expired
        } else if attempts >= max_attempts {
            set_status("max_attempts", attempts).await?;
            CheckOutcome::MaxAttempts
        } else {
            let attempts = attempts + 1;
            if bool::from(hash.ct_eq(candidate.as_slice())) {
                set_status("approved", attempts).await?;
                retire_message(&tx, message_id, "verification completed", now).await?;
                // The user had the code: asking again later is no sign WhatsApp fails them.
                tx.exec(
                    "UPDATE recipients SET unconfirmed_since = NULL, unconfirmed_until = NULL
                     WHERE number = $1",
                    &[&recipient],
                )
                .await
                .map_err(pg_err)?;
                CheckOutcome::Approved
            } else if attempts >= max_attempts {
                set_status("max_attempts", attempts).await?;
                let why = "verification locked after too many attempts";
                retire_message(&tx, message_id, why, now).await?;
                CheckOutcome::MaxAttempts
            } else {
                set_status("pending", attempts).await?;
                CheckOutcome::Denied {
                    left: max_attempts - attempts,
                }
            }
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(outcome)
    }

    /// Replaces a pending verification's code with a new one and its message, within
    /// `max_sends`.
    #[allow(clippy::too_many_arguments)]
    pub async fn resend_verification(
        &self,
        id: &str,
        client: &str,
        code_hash: [u8; 32],
        message: NewMessage,
        max_sends: u32,
        limits: Vec<(LimitScope, Rate)>,
        velocity: VelocityKeys,
    ) -> Result<Result<Resend, VelocityLimited>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_err)?;
        // The limit keys before the row, in the order create_verification takes them.
        lock_keys(&tx, std::slice::from_ref(&message), &limits, &[&velocity]).await?;
        let row = tx
            .q_opt(
                "SELECT status, sends, expires_at, message_id FROM verifications
                 WHERE id = $1 AND client = $2 FOR UPDATE",
                &[&id, &client],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else {
            return Ok(Ok(Resend::NotFound));
        };
        let status: &str = row.try_get(0).map_err(pg_err)?;
        let sends = count(row.try_get(1).map_err(pg_err)?);
        let expires: i64 = row.try_get(2).map_err(pg_err)?;
        let old_message: Option<&str> = row.try_get(3).map_err(pg_err)?;
        if status != "pending" || message.created_at.0 >= expires {
            return Ok(Ok(Resend::NotPending));
        }
        if sends >= max_sends {
            return Ok(Ok(Resend::MaxSends));
        }
        let now = message.created_at;
        let mid = message.id.clone();
        let result = match insert_tx(&tx, message, &limits, &velocity).await? {
            Ok(r) => r,
            Err((scope, retry_after)) => {
                return Ok(Err(VelocityLimited {
                    index: 0,
                    scope,
                    retry_after,
                }));
            }
        };
        if matches!(result, InsertResult::Created(_)) {
            retire_message(&tx, old_message, "replaced by a resend", now).await?;
            tx.exec(
                "UPDATE verifications SET code_hash = $2, message_id = $3, sends = sends + 1 WHERE id = $1",
                &[&id, &code_hash.as_slice(), &&*mid],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
        }
        Ok(Ok(Resend::Stored(result)))
    }

    /// Whether `message_id` carries a verification's code, and if so whether it is pending.
    pub async fn verification_pending(&self, message_id: &str) -> Result<Option<bool>, StoreError> {
        let row = self
            .conn()
            .await?
            .q_opt(
                "SELECT status FROM verifications WHERE message_id = $1",
                &[&message_id],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| Ok(r.try_get::<_, &str>(0).map_err(pg_err)? == "pending"))
            .transpose()
    }
}
