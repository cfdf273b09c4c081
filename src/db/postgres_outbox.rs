//! The outbox's delivery statements on PostgreSQL (see `outbox.rs` for what
//! they mean): the SQLite statements of `outbox_sqlite.rs`, ported. The one
//! difference is the claim: its inner SELECT takes `FOR UPDATE SKIP
//! LOCKED`, so several workers — threads, processes or instances on other
//! machines — claim disjoint batches without waiting on each other, and a
//! notice is never claimed twice while its lease runs.

use chrono::NaiveDate;
use sqlx::Row;

use super::outbox::{ClaimedNotice, DueCount, NoticeMark, OutboxCount};
use super::PgDb;
use crate::error::Result;

/// Binds: channel, now, max_attempts, limit, lease_until. A row another
/// worker's claim has locked is skipped; once that claim commits, the
/// row's `next_attempt_at` is its lease, so it is not due any more.
const CLAIM: &str = "
UPDATE notifications
   SET attempts = attempts + 1, next_attempt_at = $5
 WHERE notification_id IN (
       SELECT notification_id FROM notifications
        WHERE status IN ('queued', 'failed') AND channel = $1
          AND next_attempt_at <= $2 AND attempts < $3
        ORDER BY next_attempt_at, notification_id
        LIMIT $4
        FOR UPDATE SKIP LOCKED)
RETURNING notification_id, permit_no, cycle_valid_until, kind, channel, recipient, message, attempts";

/// Binds: sent_at, provider_ref, notification_id.
const MARK_SENT: &str = "
UPDATE notifications
   SET status = 'sent', sent_at = $1, provider_ref = $2, next_attempt_at = NULL
 WHERE notification_id = $3 AND status IN ('queued', 'failed', 'dead')";

/// Binds: next_attempt_at, last_error, notification_id, attempt.
const MARK_RETRY: &str = "
UPDATE notifications
   SET status = 'failed', next_attempt_at = $1, last_error = $2
 WHERE notification_id = $3 AND attempts = $4 AND status IN ('queued', 'failed')";

/// Binds: last_error, notification_id, attempt.
const MARK_DEAD: &str = "
UPDATE notifications
   SET status = 'dead', next_attempt_at = NULL, last_error = $1
 WHERE notification_id = $2 AND attempts = $3 AND status IN ('queued', 'failed')";

/// Binds: next_attempt_at, notification_id, attempt.
const RELEASE: &str = "
UPDATE notifications
   SET attempts = attempts - 1, next_attempt_at = $1
 WHERE notification_id = $2 AND attempts = $3 AND status IN ('queued', 'failed')";

/// Binds: now, max_attempts.
const BURY_EXPIRED: &str = "
UPDATE notifications
   SET status = 'dead', next_attempt_at = NULL,
       last_error = 'attempt ' || attempts || ': outcome unknown (claimed, never recorded: the worker stopped); no attempts left'
                    || COALESCE('; before: ' || last_error, '')
 WHERE status IN ('queued', 'failed') AND next_attempt_at <= $1 AND attempts >= $2";

/// Binds: now, max_attempts.
const DUE: &str = "
SELECT channel, count(*) FROM notifications
 WHERE status IN ('queued', 'failed') AND next_attempt_at <= $1 AND attempts < $2
 GROUP BY channel ORDER BY channel";

const COUNTS: &str = "
SELECT status, count(*) FROM notifications GROUP BY status ORDER BY status";

impl PgDb {
    pub async fn claim_notices(
        &self,
        channel: &str,
        now: &str,
        lease_until: &str,
        max_attempts: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedNotice>> {
        // One statement: its own short transaction.
        let rows = sqlx::query(CLAIM)
            .bind(channel)
            .bind(now)
            .bind(max_attempts)
            .bind(limit)
            .bind(lease_until)
            .fetch_all(self.pool())
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(ClaimedNotice {
                    notification_id: r.try_get(0)?,
                    permit_no: r.try_get(1)?,
                    cycle_valid_until: r.try_get::<NaiveDate, _>(2)?,
                    kind: r.try_get(3)?,
                    channel: r.try_get(4)?,
                    recipient: r.try_get(5)?,
                    message: r.try_get(6)?,
                    attempt: r.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // RETURNING gives no order.
        out.sort_by_key(|n| n.notification_id);
        Ok(out)
    }

    pub async fn mark_notice(
        &self,
        notification_id: i64,
        attempt: i64,
        mark: &NoticeMark,
    ) -> Result<bool> {
        let q = match mark {
            NoticeMark::Sent { at, provider_ref } => sqlx::query(MARK_SENT)
                .bind(at)
                .bind(provider_ref)
                .bind(notification_id),
            NoticeMark::Retry {
                next_attempt_at,
                error,
            } => sqlx::query(MARK_RETRY)
                .bind(next_attempt_at)
                .bind(error)
                .bind(notification_id)
                .bind(attempt),
            NoticeMark::Dead { error } => sqlx::query(MARK_DEAD)
                .bind(error)
                .bind(notification_id)
                .bind(attempt),
            NoticeMark::Release { next_attempt_at } => sqlx::query(RELEASE)
                .bind(next_attempt_at)
                .bind(notification_id)
                .bind(attempt),
        };
        let done = q.execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn bury_expired_claims(&self, now: &str, max_attempts: i64) -> Result<u64> {
        let done = sqlx::query(BURY_EXPIRED)
            .bind(now)
            .bind(max_attempts)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn due_notices(&self, now: &str, max_attempts: i64) -> Result<Vec<DueCount>> {
        let rows = sqlx::query(DUE)
            .bind(now)
            .bind(max_attempts)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DueCount {
                    channel: r.try_get(0)?,
                    count: r.try_get(1)?,
                })
            })
            .collect()
    }

    pub async fn outbox_counts(&self) -> Result<Vec<OutboxCount>> {
        let rows = sqlx::query(COUNTS).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxCount {
                    status: r.try_get(0)?,
                    count: r.try_get(1)?,
                })
            })
            .collect()
    }
}
