//! The outbox's delivery statements (R8), behind [`Db`]: claim a batch of
//! due notices, then record each one's outcome — as separate short
//! transactions, so no transaction is ever open across an SMTP or HTTP
//! call (on SQLite that would block the only writer).
//!
//! A claim does not change `status` (the schema's CHECK has no `sending`):
//! it pushes `next_attempt_at` forward by a lease and increments
//! `attempts`. The incremented `attempts` is the claim's token: the marks
//! only apply while it still matches, so a worker whose lease ran out
//! cannot overwrite the outcome of the attempt that took the notice over.
//! A worker killed after claiming leaves its notices to be claimed again
//! once the lease expires — the one window in which a notice can be sent
//! twice, covered by the idempotency key (docs/delivery.md).
//!
//! Timestamps are RFC 3339 text in one offset with whole seconds
//! (`Clock::stamp`), the format every writer of `next_attempt_at`
//! uses, so text order is time order (on PostgreSQL too: the columns are
//! TEXT COLLATE "C"). The SQLite statements are in `outbox_sqlite.rs`, the
//! PostgreSQL ones (the claim with `FOR UPDATE SKIP LOCKED`) in
//! `postgres_outbox.rs`.

use chrono::NaiveDate;

use super::Db;
use crate::error::Result;

/// A notice claimed for one delivery attempt.
#[derive(Clone)]
pub struct ClaimedNotice {
    pub notification_id: i64,
    pub permit_no: String,
    pub cycle_valid_until: NaiveDate,
    pub kind: String,
    /// `sms` or `email`.
    pub channel: String,
    /// Phone number or e-mail address (personal data: never logged).
    pub recipient: String,
    pub message: String,
    /// This attempt's number, 1-based; also the claim's token.
    pub attempt: i64,
}

impl std::fmt::Debug for ClaimedNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedNotice")
            .field("notification_id", &self.notification_id)
            .field("kind", &self.kind)
            .field("channel", &self.channel)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// What to record for a claimed notice.
#[derive(Debug, Clone)]
pub enum NoticeMark {
    /// Accepted by the gateway or relay.
    Sent { at: String, provider_ref: String },
    /// Transient failure: `failed`, due again at `next_attempt_at`.
    Retry {
        next_attempt_at: String,
        error: String,
    },
    /// Permanent failure, or the last attempt failed: `dead`.
    Dead { error: String },
    /// Not attempted after all (quiet hours began, the lease ran short,
    /// the channel was stopped): the claim is undone — `attempts` back to
    /// what it was, due again at `next_attempt_at`.
    Release { next_attempt_at: String },
}

/// Due notices of one channel (for the summary of what a step left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCount {
    pub channel: String,
    pub count: i64,
}

/// Notices by status (the operator's view of the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxCount {
    pub status: String,
    pub count: i64,
}

impl Db {
    /// Claims up to `limit` due notices of `channel` for one attempt each:
    /// `status` queued or failed, `next_attempt_at <= now`, fewer than
    /// `max_attempts` attempts. Their `next_attempt_at` becomes
    /// `lease_until` and `attempts` goes up by one, in one short write
    /// transaction. Returned in `notification_id` order.
    pub async fn claim_notices(
        &self,
        channel: &str,
        now: &str,
        lease_until: &str,
        max_attempts: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedNotice>> {
        match self {
            Db::Sqlite(db) => {
                db.claim_notices(channel, now, lease_until, max_attempts, limit)
                    .await
            }
            Db::Postgres(db) => {
                db.claim_notices(channel, now, lease_until, max_attempts, limit)
                    .await
            }
        }
    }

    /// Records the outcome of attempt `attempt` of a notice. Returns false
    /// when the claim was lost (its lease expired and another attempt took
    /// the notice over) and nothing was written — except for `Sent`, which
    /// is always recorded unless the notice is already `sent`: a notice
    /// that reached the holder is sent, whatever else happened.
    pub async fn mark_notice(
        &self,
        notification_id: i64,
        attempt: i64,
        mark: &NoticeMark,
    ) -> Result<bool> {
        match self {
            Db::Sqlite(db) => db.mark_notice(notification_id, attempt, mark).await,
            Db::Postgres(db) => db.mark_notice(notification_id, attempt, mark).await,
        }
    }

    /// Notices whose last allowed attempt was claimed and never recorded
    /// (the worker died; the lease has expired) become `dead`: the outcome
    /// of that attempt is unknown, and no attempt is left. Returns how many.
    pub async fn bury_expired_claims(&self, now: &str, max_attempts: i64) -> Result<u64> {
        match self {
            Db::Sqlite(db) => db.bury_expired_claims(now, max_attempts).await,
            Db::Postgres(db) => db.bury_expired_claims(now, max_attempts).await,
        }
    }

    /// Notices due at `now` (queued or failed, `next_attempt_at <= now`,
    /// attempts left), by channel.
    pub async fn due_notices(&self, now: &str, max_attempts: i64) -> Result<Vec<DueCount>> {
        match self {
            Db::Sqlite(db) => db.due_notices(now, max_attempts).await,
            Db::Postgres(db) => db.due_notices(now, max_attempts).await,
        }
    }

    /// Every notice, counted by status. On SQLite this reads the
    /// `notifications_due (status, next_attempt_at)` index, not the table
    /// and its message texts: the count follows every run and grows with
    /// the outbox's history (3.3 s for 2.5 M notices when it read the table).
    pub async fn outbox_counts(&self) -> Result<Vec<OutboxCount>> {
        match self {
            Db::Sqlite(db) => db.outbox_counts().await,
            Db::Postgres(db) => db.outbox_counts().await,
        }
    }
}
