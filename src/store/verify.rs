//! Verifications: the gateway's own codes. Only a keyed hash of each code is stored; checks
//! count attempts, compare in constant time and are single use, all inside one transaction.

use rusqlite::{Connection, OptionalExtension, params};
use subtle::ConstantTimeEq;

use super::{InsertResult, LimitScope, NewMessage, SqliteStore, StoreError, exec, insert_tx};
use crate::clock::Timestamp;
use crate::config::Rate;

/// A verification to create, with its first message.
#[derive(Clone, Debug)]
pub struct NewVerification {
    /// Its id.
    pub id: String,
    /// Keyed hash of the code.
    pub code_hash: [u8; 32],
    /// Code length.
    pub length: u32,
    /// Requested channel, if any.
    pub channel: Option<String>,
    /// The message that delivers the code.
    pub message: NewMessage,
}

/// What became of a resend.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per resend and matched at once; boxing would only add an allocation"
)]
pub enum Resend {
    /// The new code's message went to the store (or a limit refused it): the insert's result.
    Stored(InsertResult),
    /// No such verification for this client.
    NotFound,
    /// The verification is no longer pending (or ends before the new message could start).
    NotPending,
    /// It already had `max_sends` codes.
    MaxSends,
}

/// A stored verification, as shown to its client (no hash, no code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Its id.
    pub id: String,
    /// E.164 recipient.
    pub recipient: String,
    /// The message that delivered the latest code.
    pub message_id: Option<String>,
    /// Requested channel.
    pub channel: Option<String>,
    /// pending, approved, canceled, max_attempts, expired.
    pub status: String,
    /// Checks made.
    pub attempts: u32,
    /// Codes sent.
    pub sends: u32,
    /// Code length.
    pub length: u32,
    /// Creation.
    pub created_at: Timestamp,
    /// Expiry.
    pub expires_at: Timestamp,
}

/// The answer to a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// No such verification for this client.
    NotFound,
    /// The code matched; the verification is now used up.
    Approved,
    /// Wrong code; `left` checks remain.
    Denied {
        /// Checks left.
        left: u32,
    },
    /// Past its lifetime.
    Expired,
    /// Locked after too many wrong codes.
    MaxAttempts,
    /// Already approved once, or replaced by a newer verification: never approves again.
    NotPending(String),
}

fn row_to_verification(r: &rusqlite::Row<'_>) -> rusqlite::Result<Verification> {
    Ok(Verification {
        id: r.get(0)?,
        recipient: r.get(1)?,
        message_id: r.get(2)?,
        channel: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        sends: r.get(6)?,
        created_at: Timestamp(r.get(7)?),
        expires_at: Timestamp(r.get(8)?),
        length: r.get(9)?,
    })
}

/// What a check reads: hash, status, attempts, expiry, message id.
type CheckRow = (Vec<u8>, String, u32, i64, Option<String>);

const COLUMNS: &str =
    "id, recipient, message_id, channel, status, attempts, sends, created_at, expires_at, length";

/// Stops the delivery of a superseded code that has not gone out yet, and wipes its content.
fn retire_message(
    c: &Connection,
    message_id: Option<&str>,
    why: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    if let Some(mid) = message_id {
        exec(c,
            "UPDATE messages SET state = 'failed', reason = ?2, finished_at = ?3, body = NULL, sms_text = NULL
             WHERE id = ?1 AND state = 'queued'",
            params![mid, why, now.0],
        )?;
        exec(
            c,
            "UPDATE messages SET body = NULL, sms_text = NULL WHERE id = ?1 AND state NOT IN ('queued', 'sending')",
            params![mid],
        )?;
    }
    Ok(())
}

/// A verification whose outcome is known, for the conversion breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedVerification {
    /// The number the code went to (E.164).
    pub recipient: String,
    /// Whether a check approved it.
    pub approved: bool,
    /// When it was made (unix ms).
    pub created_at: i64,
    /// The number's country, as the accept path found it.
    pub country: Option<String>,
}

/// The query both backends run for [`FinishedVerification`]s: made after `since`, not
/// canceled, and either checked or expired at `now`. The country comes from the
/// verification's message.
pub(crate) const FINISHED_SINCE: &str = "SELECT v.recipient, v.status, v.created_at, m.country
     FROM verifications v LEFT JOIN messages m ON m.id = v.message_id
     WHERE v.created_at > $1 AND v.status <> 'canceled'
       AND (v.status <> 'pending' OR v.expires_at <= $2)";

impl SqliteStore {
    /// Verifications made after `since` whose outcome is known at `now`.
    pub async fn finished_verifications(
        &self,
        since: i64,
        now: i64,
    ) -> Result<Vec<FinishedVerification>, StoreError> {
        self.read(move |c| {
            // SQLite reads `$1` as the first parameter, as PostgreSQL does.
            let mut stmt = c.prepare_cached(FINISHED_SINCE)?;
            let mut rows = stmt.query(rusqlite::params![since, now])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let status: String = row.get(1)?;
                out.push(FinishedVerification {
                    recipient: row.get(0)?,
                    approved: status == "approved",
                    created_at: row.get(2)?,
                    country: row.get(3)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Creates a verification and its message atomically; older pending verifications of the
    /// same client for the same number are canceled (and their undelivered codes withdrawn).
    pub async fn create_verification(
        &self,
        v: NewVerification,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<InsertResult, StoreError> {
        self.write_with_writer(move |w| {
            let c = &w.conn;
            let now = v.message.created_at;
            let mut stmt = c.prepare_cached("SELECT id, message_id FROM verifications WHERE client = ?1 AND recipient = ?2 AND status = 'pending'")?;
            let older: Vec<(String, Option<String>)> = stmt
                .query_map(params![v.message.client, &*v.message.recipient], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let result = insert_tx(w, v.message.clone(), &limits)?;
            if !matches!(result, InsertResult::Created(_)) {
                return Ok(result);
            }
            for (oid, mid) in older {
                exec(c, "UPDATE verifications SET status = 'canceled', finished_at = ?2 WHERE id = ?1", params![oid, now.0])?;
                retire_message(c, mid.as_deref(), "superseded by a newer verification", now)?;
            }
            exec(c,
                "INSERT INTO verifications (id, client, recipient, message_id, code_hash, length, channel, locale, created_at, expires_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending')",
                params![v.id, v.message.client, &*v.message.recipient, &*v.message.id, v.code_hash.to_vec(), v.length, v.channel, v.message.locale, now.0, v.message.expires_at.0],
            )?;
            Ok(result)
        })
        .await
    }

    /// A verification, if `client` made it.
    pub async fn verification(
        &self,
        id: &str,
        client: &str,
    ) -> Result<Option<Verification>, StoreError> {
        let (id, client) = (id.to_owned(), client.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM verifications WHERE id = ?1 AND client = ?2"),
                params![id, client],
                row_to_verification,
            )
            .optional()?)
        })
        .await
    }

    /// Checks a candidate (as its keyed hash): counts the attempt, compares in constant time,
    /// and on success marks the verification used so it never approves twice.
    pub async fn check_verification(
        &self,
        id: &str,
        client: &str,
        candidate: [u8; 32],
        max_attempts: u32,
        now: Timestamp,
    ) -> Result<CheckOutcome, StoreError> {
        let (id, client) = (id.to_owned(), client.to_owned());
        self.write(move |c| {
            let row: Option<CheckRow> = c
                .query_row(
                    "SELECT code_hash, status, attempts, expires_at, message_id FROM verifications WHERE id = ?1 AND client = ?2",
                    params![id, client],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((hash, status, attempts, expires, message_id)) = row else {
                return Ok(CheckOutcome::NotFound);
            };
            match status.as_str() {
                "pending" => {}
                "expired" => return Ok(CheckOutcome::Expired),
                "max_attempts" => return Ok(CheckOutcome::MaxAttempts),
                other => return Ok(CheckOutcome::NotPending(other.to_owned())),
            }
            if now.0 >= expires {
                exec(c, "UPDATE verifications SET status = 'expired', finished_at = ?2 WHERE id = ?1", params![id, now.0])?;
                return Ok(CheckOutcome::Expired);
            }
            if attempts >= max_attempts {
                exec(c, "UPDATE verifications SET status = 'max_attempts', finished_at = ?2 WHERE id = ?1", params![id, now.0])?;
                return Ok(CheckOutcome::MaxAttempts);
            }
            let attempts = attempts + 1;
            let matched = bool::from(hash.as_slice().ct_eq(candidate.as_slice()));
            if matched {
                exec(c, "UPDATE verifications SET status = 'approved', attempts = ?2, finished_at = ?3 WHERE id = ?1", params![id, attempts, now.0])?;
                retire_message(c, message_id.as_deref(), "verification completed", now)?;
                // The user had the code: the WhatsApp code is confirmed after all, so asking
                // again later is no sign that WhatsApp fails them.
                exec(c,
                    "UPDATE recipients SET unconfirmed_since = NULL, unconfirmed_until = NULL
                     WHERE number = (SELECT recipient FROM verifications WHERE id = ?1)",
                    params![id],
                )?;
                return Ok(CheckOutcome::Approved);
            }
            if attempts >= max_attempts {
                exec(c, "UPDATE verifications SET status = 'max_attempts', attempts = ?2, finished_at = ?3 WHERE id = ?1", params![id, attempts, now.0])?;
                retire_message(c, message_id.as_deref(), "verification locked after too many attempts", now)?;
                return Ok(CheckOutcome::MaxAttempts);
            }
            exec(c, "UPDATE verifications SET attempts = ?2 WHERE id = ?1", params![id, attempts])?;
            Ok(CheckOutcome::Denied { left: max_attempts - attempts })
        })
        .await
    }

    /// Replaces the code of a pending verification with a new one and its message (a resend),
    /// within `max_sends`. Returns the new message's insert result, or why there was none.
    pub async fn resend_verification(
        &self,
        id: &str,
        client: &str,
        code_hash: [u8; 32],
        message: NewMessage,
        max_sends: u32,
        limits: Vec<(LimitScope, Rate)>,
    ) -> Result<Resend, StoreError> {
        let (id, client) = (id.to_owned(), client.to_owned());
        self.write_with_writer(move |w| {
            let c = &w.conn;
            let row: Option<(String, u32, i64, Option<String>)> = c
                .query_row("SELECT status, sends, expires_at, message_id FROM verifications WHERE id = ?1 AND client = ?2", params![id, client], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            let Some((status, sends, expires, old_message)) = row else { return Ok(Resend::NotFound) };
            if status != "pending" || message.created_at.0 >= expires {
                return Ok(Resend::NotPending);
            }
            if sends >= max_sends {
                return Ok(Resend::MaxSends);
            }
            let now = message.created_at;
            let mid = message.id.clone();
            let result = insert_tx(w, message, &limits)?;
            if matches!(result, InsertResult::Created(_)) {
                retire_message(c, old_message.as_deref(), "replaced by a resend", now)?;
                exec(c,
                    "UPDATE verifications SET code_hash = ?2, message_id = ?3, sends = sends + 1 WHERE id = ?1",
                    params![id, code_hash.to_vec(), &*mid],
                )?;
            }
            Ok(Resend::Stored(result))
        })
        .await
    }
}
