//! Recent sends per recipient, for the per-recipient limit: a TEMP table on the writer's
//! connection rather than an index on the outbox.
//!
//! Nearly every message goes to a different number, so an outbox index on recipients put one
//! random B-tree page per accepted message into the WAL: half of all WAL frames, and a fifth
//! of the accept rate. A TEMP table lives in memory (`temp_store=MEMORY`), takes part in the
//! writer's transactions (a group that rolls back takes its rows with it), and is rebuilt
//! from the outbox whenever it does not cover the configured window: at the first insert after
//! a start, after a failed commit, and when a reload widens the window. Counting stays exact
//! and survives restarts, because the outbox rows remain the record.

use std::cell::Cell;

use rusqlite::{Connection, OptionalExtension, params};

use super::exec;

/// Creates the (empty) table on the writer's connection.
pub(super) fn create(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(
        "CREATE TEMP TABLE recent_sends (recipient TEXT NOT NULL, created_at INTEGER NOT NULL);
         CREATE INDEX temp.recent_by_recipient ON recent_sends (recipient, created_at);
         CREATE INDEX temp.recent_by_time ON recent_sends (created_at);",
    )
}

/// What the writer knows about the table's contents. Only the writer thread touches it.
#[derive(Default)]
pub(super) struct Recent {
    /// The table holds every send made after this instant (unix ms); `None`: rebuild first.
    complete_after: Cell<Option<i64>>,
    /// When rows older than the window were last deleted.
    pruned_at: Cell<i64>,
}

impl Recent {
    /// Makes the table hold every send to anyone in the `window_ms` before `now`.
    pub(super) fn cover(&self, c: &Connection, now: i64, window_ms: i64) -> rusqlite::Result<()> {
        let since = now.saturating_sub(window_ms);
        match self.complete_after.get() {
            Some(after) if after <= since => {
                // Keep the table about one window long, deleting a quarter window at a time.
                if now.saturating_sub(self.pruned_at.get()) >= (window_ms / 4).max(1000) {
                    exec(
                        c,
                        "DELETE FROM recent_sends WHERE created_at <= ?1",
                        [since],
                    )?;
                    self.complete_after.set(Some(since));
                    self.pruned_at.set(now);
                }
            }
            _ => {
                exec(c, "DELETE FROM recent_sends", [])?;
                exec(
                    c,
                    "INSERT INTO recent_sends (recipient, created_at)
                     SELECT recipient, created_at FROM messages WHERE created_at > ?1",
                    [since],
                )?;
                self.complete_after.set(Some(since));
                self.pruned_at.set(now);
            }
        }
        Ok(())
    }

    /// The `count`-th newest send to `recipient` after `since` (unix ms), if there is one:
    /// when it leaves the window, there is room again.
    pub(super) fn nth_newest(
        &self,
        c: &Connection,
        recipient: &str,
        since: i64,
        count: u32,
    ) -> rusqlite::Result<Option<i64>> {
        c.prepare_cached(
            "SELECT created_at FROM recent_sends WHERE recipient = ?1 AND created_at > ?2
             ORDER BY created_at DESC LIMIT 1 OFFSET ?3",
        )?
        .query_row(params![recipient, since, i64::from(count) - 1], |r| {
            r.get(0)
        })
        .optional()
    }

    /// Records a send; returns its row to [`Recent::unrecord`] should the message's own
    /// insert fail.
    pub(super) fn record(&self, c: &Connection, recipient: &str, at: i64) -> rusqlite::Result<i64> {
        exec(
            c,
            "INSERT INTO recent_sends (recipient, created_at) VALUES (?1, ?2)",
            params![recipient, at],
        )?;
        Ok(c.last_insert_rowid())
    }

    /// Takes back a send whose message was not stored.
    pub(super) fn unrecord(&self, c: &Connection, row: i64) {
        if exec(c, "DELETE FROM recent_sends WHERE rowid = ?1", [row]).is_err() {
            // Counting one send too many until it leaves the window errs on the safe side,
            // but a rebuild makes it exact again.
            self.forget();
        }
    }

    /// Per-recipient limits are off: stop recording, and rebuild if they come back.
    pub(super) fn disable(&self, c: &Connection) -> rusqlite::Result<()> {
        if self.complete_after.get().is_some() {
            exec(c, "DELETE FROM recent_sends", [])?;
            self.forget();
        }
        Ok(())
    }

    /// The table may not match the outbox (its group did not commit): rebuild before use.
    pub(super) fn forget(&self) {
        self.complete_after.set(None);
    }
}
