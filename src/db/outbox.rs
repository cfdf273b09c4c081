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
//! TEXT COLLATE "C"). Each statement is written once, for both backends;
//! the claim differs only in how it keeps two workers apart (below).

use chrono::NaiveDate;

use super::rows::NotificationRow;
use super::runs::kind_rank_sql;
use super::{notice_of_event, on_pool, Db};
use crate::domain::{Channel, EventKind, NoticeStatus};
use crate::error::{Error, Result};

/// A notice claimed for one delivery attempt.
#[derive(Clone, sqlx::FromRow)]
pub struct ClaimedNotice {
    pub notification_id: i64,
    pub permit_no: String,
    pub cycle_valid_until: NaiveDate,
    pub kind: EventKind,
    /// `sms` or `email`: a claim names its channel.
    pub channel: Channel,
    /// Phone number or e-mail address (personal data: never logged).
    pub recipient: String,
    pub message: String,
    /// This attempt's number, 1-based; also the claim's token.
    #[sqlx(rename = "attempts")]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueCount {
    pub channel: Channel,
    pub count: i64,
}

/// Notices by status (the operator's view of the outbox).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxCount {
    pub status: NoticeStatus,
    pub count: i64,
}

// Due notices are of two kinds (migration 15). A *fresh* notice — queued
// by a run or a release and never claimed — has no `next_attempt_at`: it
// is due since its `created_at`, and is found by id, above its channel's
// mark in `delivery_marks` (every notice of the channel at or below the
// mark has been claimed at least once or was never queued), so that
// writing a night's notices costs no entry in a due index. A *scheduled*
// notice — claimed, retried, released or requeued — is due at its
// `next_attempt_at` and found by `notifications_due`. A fresh notice only
// ever stops being fresh (no statement gives a notice back a NULL
// `next_attempt_at` while it is queued), and a new notice's id is above
// every committed one (ids are max + 1 under the job lock; a run's pages
// commit in id order), which is what lets the mark move.
//
// `fresh!`: notice `$n` is a fresh one of channel `$channel` above the
// mark `$mark` (SQL expressions), the one definition of "fresh" every
// statement below uses. The ids are bounded above as well, by the largest
// (which bounds nothing): PostgreSQL estimates a range with both ends
// unknown at half a percent of the table, where one end alone is a third,
// so that the counts read the ids above the mark by the key instead of
// the whole table (at 1M permits after a first night, 96 fresh notices
// left: the backlog's count in about 1 ms, against 125-190 ms as a scan).
macro_rules! fresh {
    ($n:literal, $mark:literal, $channel:literal) => {
        concat!(
            $n,
            ".notification_id > ",
            $mark,
            " AND ",
            $n,
            ".notification_id <= (SELECT max(notification_id) FROM notifications) AND ",
            $n,
            ".channel = ",
            $channel,
            " AND ",
            $n,
            ".status = 'queued' AND ",
            $n,
            ".next_attempt_at IS NULL"
        )
    };
}
pub(super) use fresh;

// `fresh_any!`: notice `n` is a fresh one of either deliverable channel,
// each above its own mark, in one pass over the ids above the lower mark
// (each channel's mark a value, so that the ids are read by the key; as a
// join to `delivery_marks` the server chose a scan of the whole table, the
// marks being unknown when it plans). A notice of neither channel is
// never fresh: the CASE gives it no mark.
macro_rules! fresh_any {
    () => {
        concat!(
            "n.notification_id > (SELECT min(fresh_after) FROM delivery_marks) AND ",
            $crate::db::outbox::fresh!(
                "n",
                "CASE n.channel
                    WHEN 'sms' THEN (SELECT fresh_after FROM delivery_marks WHERE channel = 'sms')
                    WHEN 'email' THEN (SELECT fresh_after FROM delivery_marks WHERE channel = 'email')
                 END",
                "n.channel"
            )
        )
    };
}
pub(super) use fresh_any;

// The mark of channel `$1` and where it may move: up to just below the
// channel's first fresh notice, or to the largest id when it has none (a
// look-up by id from the mark, which the claims before have left at or
// near that notice). No row when the mark's row is gone. Read before each
// claim, in its transaction on SQLite; on PostgreSQL in statements of
// their own, whose snapshot can only see fewer notices claimed and fewer
// written than there are, so the mark set from it is never too high (and
// setting it below where another worker has just moved it is safe).
const MARK_TARGET: &str = concat!(
    "SELECT fresh_after, coalesce(
         (SELECT n.notification_id - 1 FROM notifications n WHERE ",
    fresh!("n", "delivery_marks.fresh_after", "delivery_marks.channel"),
    " ORDER BY n.notification_id LIMIT 1),
         (SELECT max(notification_id) FROM notifications),
         fresh_after)
     FROM delivery_marks WHERE channel = $1"
);

/// Binds: channel, the mark's new place.
const SET_MARK: &str = "UPDATE delivery_marks SET fresh_after = $2 WHERE channel = $1";

/// Moves channel `$channel`'s mark on executor `$ex` ([`MARK_TARGET`]),
/// writing only when it moves: an idle worker's claims leave the database
/// as it was.
macro_rules! advance_mark {
    ($ex:expr, $channel:expr) => {{
        let found: Option<(i64, i64)> = sqlx::query_as(MARK_TARGET)
            .bind($channel.code())
            .fetch_optional($ex)
            .await?;
        let (at, to) = found.ok_or_else(|| no_mark($channel))?;
        if to != at {
            sqlx::query(SET_MARK)
                .bind($channel.code())
                .bind(to)
                .execute($ex)
                .await?;
        }
    }};
}

// The first `$2` fresh notices of channel `$1` made scheduled, at the time
// they were due from: for a channel that no worker of a step delivers,
// whose mark would otherwise stay below them while every later notice of
// the other channels piles up above it for the counts (`DUE`, the
// metrics' backlog) to read through. Followed by `advance_mark!`. The
// outer condition repeats what makes a notice fresh, so that on
// PostgreSQL a notice another process claimed meanwhile (its row
// rechecked once that claim commits) keeps its lease.
const SCHEDULE_FRESH: &str = concat!(
    "UPDATE notifications SET next_attempt_at = created_at
      WHERE status = 'queued' AND next_attempt_at IS NULL AND notification_id IN (
            SELECT n.notification_id FROM notifications n WHERE ",
    fresh!(
        "n",
        "(SELECT fresh_after FROM delivery_marks WHERE channel = $1)",
        "$1"
    ),
    " ORDER BY n.notification_id LIMIT $2)"
);

/// How many fresh notices [`Db::schedule_fresh_notices`] schedules in one
/// transaction: a first night's whole channel in one (2.1 million SMS
/// notices at 10M permits) would hold SQLite's only writer for many seconds.
const SCHEDULE_CHUNK: i64 = 10_000;

// The claim: one statement, the oldest due of both kinds (above) in the
// order of their due times, then ids. Binds: channel, now, max_attempts,
// limit, lease_until. On SQLite it runs inside `BEGIN IMMEDIATE`, so the
// read of the due rows and their update cannot interleave with another
// writer; on PostgreSQL each kind's SELECT takes `FOR UPDATE SKIP LOCKED`,
// so several workers — threads, processes or instances on other machines
// — claim disjoint batches without waiting on each other (a row another
// claim has locked is skipped; once that claim commits, the row's
// `next_attempt_at` is its lease, so it is not due any more).
macro_rules! claim {
    ($lock:literal) => {
        concat!(
            "WITH scheduled AS (
                   SELECT notification_id, next_attempt_at AS due_at FROM notifications
                    WHERE status IN ('queued', 'failed') AND channel = $1
                      AND next_attempt_at <= $2 AND attempts < $3
                    ORDER BY next_attempt_at, notification_id
                    LIMIT $4 ",
            $lock,
            "), fresh AS (
                   SELECT notification_id, created_at AS due_at FROM notifications n
                    WHERE ",
            // The mark as a value, so that the ids from it are read in
            // order up to the limit.
            fresh!(
                "n",
                "(SELECT fresh_after FROM delivery_marks WHERE channel = $1)",
                "$1"
            ),
            " AND n.created_at <= $2 AND n.attempts < $3
                    ORDER BY notification_id
                    LIMIT $4 ",
            $lock,
            ")
             UPDATE notifications
               SET attempts = attempts + 1, next_attempt_at = $5
             WHERE notification_id IN (
                   SELECT notification_id FROM (
                          SELECT notification_id, due_at FROM scheduled
                          UNION ALL
                          SELECT notification_id, due_at FROM fresh) AS d
                    ORDER BY due_at, notification_id
                    LIMIT $4)
            RETURNING notification_id, permit_no, cycle_valid_until, kind, channel, recipient,
                      message, attempts"
        )
    };
}

/// Sent wins over everything but an earlier `sent`: the holder got it.
/// Binds: sent_at, provider_ref, notification_id.
const MARK_SENT: &str = "
UPDATE notifications
   SET status = 'sent', sent_at = $1, provider_ref = $2, next_attempt_at = NULL
 WHERE notification_id = $3 AND status IN ('queued', 'failed', 'dead')";

/// Binds: next_attempt_at, last_error, notification_id, attempt (the claim token).
const MARK_RETRY: &str = "
UPDATE notifications
   SET status = 'failed', next_attempt_at = $1, last_error = $2
 WHERE notification_id = $3 AND attempts = $4 AND status IN ('queued', 'failed')";

/// Binds: last_error, notification_id, attempt.
const MARK_DEAD: &str = "
UPDATE notifications
   SET status = 'dead', next_attempt_at = NULL, last_error = $1
 WHERE notification_id = $2 AND attempts = $3 AND status IN ('queued', 'failed')";

/// Undoes a claim that was not attempted. Binds: next_attempt_at,
/// notification_id, attempt.
const RELEASE: &str = "
UPDATE notifications
   SET attempts = attempts - 1, next_attempt_at = $1
 WHERE notification_id = $2 AND attempts = $3 AND status IN ('queued', 'failed')";

/// A claim of the last allowed attempt that expired unrecorded. Binds:
/// now, max_attempts.
const BURY_EXPIRED: &str = "
UPDATE notifications
   SET status = 'dead', next_attempt_at = NULL,
       last_error = 'attempt ' || attempts || ': outcome unknown (claimed, never recorded: the worker stopped); no attempts left'
                    || COALESCE('; before: ' || last_error, '')
 WHERE status IN ('queued', 'failed') AND next_attempt_at <= $1 AND attempts >= $2";

/// Both kinds of due notices (see `claim!`), by channel. Binds: now,
/// max_attempts.
const DUE: &str = concat!(
    "SELECT channel, count(*) AS count FROM (
       SELECT channel FROM notifications
        WHERE status IN ('queued', 'failed') AND next_attempt_at <= $1 AND attempts < $2
       UNION ALL
       SELECT n.channel FROM notifications n WHERE ",
    fresh_any!(),
    " AND n.created_at <= $1 AND n.attempts < $2) AS d
     GROUP BY channel ORDER BY channel"
);

/// A notice's `next_attempt_at` as the exports and `status` show it: a
/// fresh notice's is its `created_at` (it is due since then; migration 15
/// stores it as NULL).
macro_rules! next_attempt_at {
    ($n:literal) => {
        concat!(
            "CASE WHEN ",
            $n,
            ".status = 'queued' AND ",
            $n,
            ".next_attempt_at IS NULL THEN ",
            $n,
            ".created_at ELSE ",
            $n,
            ".next_attempt_at END"
        )
    };
}

const COUNTS: &str = "
SELECT status, count(*) AS count FROM notifications GROUP BY status ORDER BY status";

/// The notification export's columns and order, after `FROM` and `WHERE`:
/// by date and permit, then by cycle and the kind's rank. `$date` and
/// `$permit` name those columns in the table the rows are found through,
/// so that a backend can read them in its index's order.
macro_rules! notification_select {
    ($from:expr, $date:literal, $permit:literal) => {
        concat!(
            "SELECT n.notification_id, n.run_id, n.as_of, n.permit_no, n.cycle_valid_until, n.kind,
                    n.channel, n.recipient, n.status, n.attempts, ",
            next_attempt_at!("n"),
            " AS next_attempt_at, n.last_error,
                    n.provider_ref, n.created_at, n.sent_at, n.message
             FROM ",
            $from,
            " ORDER BY ",
            $date,
            ", ",
            $permit,
            ", n.cycle_valid_until, ",
            kind_rank_sql!("n")
        )
    };
}

/// The notification export's rows of the runs with `$1 <= as_of <= $2`,
/// in its order: each backend streams it its own way. Found through the
/// night's events (a notice's as_of and permit are its event's), in the
/// events' order by date and permit.
pub(super) const NOTIFICATION_SELECT_RANGE: &str = notification_select!(
    concat!(
        "events e JOIN notifications n ON ",
        notice_of_event!(),
        " WHERE e.as_of BETWEEN $1 AND $2"
    ),
    "e.as_of",
    "e.permit_no"
);
const NOTIFICATION_SELECT_PERMIT: &str = notification_select!(
    "notifications n WHERE n.permit_no = $1",
    "n.as_of",
    "n.permit_no"
);

/// A channel without its row in `delivery_marks` (removed by hand): its
/// fresh notices could not be found, so an error, rather than a channel
/// that quietly sends nothing new.
fn no_mark(channel: Channel) -> Error {
    Error::Runtime(anyhow::anyhow!(
        "delivery_marks has no row for channel {0} (migration 15 made one per channel), so its \
         new notices cannot be found; restore it with: INSERT INTO delivery_marks (channel, \
         fresh_after) VALUES ('{0}', 0)",
        channel.code()
    ))
}

impl Db {
    /// Claims up to `limit` due notices of `channel` for one attempt each:
    /// `status` queued or failed, due at `now` (fresh, or scheduled at or
    /// before it: see `claim!`), fewer than `max_attempts` attempts. Their
    /// `next_attempt_at` becomes `lease_until` and `attempts` goes up by
    /// one, in one short write transaction, after the channel's mark has
    /// moved up past the notices claimed before. Returned in
    /// `notification_id` order.
    pub async fn claim_notices(
        &self,
        channel: Channel,
        now: &str,
        lease_until: &str,
        max_attempts: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedNotice>> {
        let rows: Vec<ClaimedNotice> = match self {
            Db::Sqlite(db) => {
                let mut tx = db.pool().begin_with("BEGIN IMMEDIATE").await?;
                advance_mark!(&mut *tx, channel);
                let rows = sqlx::query_as(claim!(""))
                    .bind(channel.code())
                    .bind(now)
                    .bind(max_attempts)
                    .bind(limit)
                    .bind(lease_until)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows
            }
            // Each statement its own short transaction: the mark's row lock
            // is not held while the notices are claimed.
            Db::Postgres(db) => {
                advance_mark!(db.pool(), channel);
                sqlx::query_as(claim!("FOR UPDATE SKIP LOCKED"))
                    .bind(channel.code())
                    .bind(now)
                    .bind(max_attempts)
                    .bind(limit)
                    .bind(lease_until)
                    .fetch_all(db.pool())
                    .await?
            }
        };
        let mut out = rows;
        // RETURNING gives no order.
        out.sort_by_key(|n| n.notification_id);
        Ok(out)
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
        // One statement: its own short transaction.
        let done = on_pool!(self, |pool| {
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
            q.execute(pool).await?.rows_affected()
        });
        Ok(done == 1)
    }

    /// Makes the fresh notices of `channel` scheduled, due when they were
    /// created as before, and moves its mark past them (`SCHEDULE_FRESH`, `advance_mark!`),
    /// [`SCHEDULE_CHUNK`] at a time: for a channel a delivery step does not
    /// deliver. Returns how many.
    pub async fn schedule_fresh_notices(&self, channel: Channel) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = self.schedule_fresh_chunk(channel).await?;
            total += n;
            if n < SCHEDULE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn schedule_fresh_chunk(&self, channel: Channel) -> Result<u64> {
        // One transaction, whose mark then sees its own updates; on SQLite
        // a write transaction from the start, as the claim's.
        macro_rules! both {
            ($tx:expr) => {{
                let mut tx = $tx;
                let n = sqlx::query(SCHEDULE_FRESH)
                    .bind(channel.code())
                    .bind(SCHEDULE_CHUNK)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                advance_mark!(&mut *tx, channel);
                tx.commit().await?;
                n
            }};
        }
        Ok(match self {
            Db::Sqlite(db) => both!(db.pool().begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(db) => both!(db.pool().begin().await?),
        })
    }

    /// Notices whose last allowed attempt was claimed and never recorded
    /// (the worker died; the lease has expired) become `dead`: the outcome
    /// of that attempt is unknown, and no attempt is left. Returns how many.
    pub async fn bury_expired_claims(&self, now: &str, max_attempts: i64) -> Result<u64> {
        Ok(on_pool!(self, |pool| sqlx::query(BURY_EXPIRED)
            .bind(now)
            .bind(max_attempts)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Notices due at `now` (queued or failed, `next_attempt_at <= now`,
    /// attempts left), by channel.
    pub async fn due_notices(&self, now: &str, max_attempts: i64) -> Result<Vec<DueCount>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(DUE)
            .bind(now)
            .bind(max_attempts)
            .fetch_all(pool)
            .await?))
    }

    /// Every notice, counted by status. On SQLite this reads the
    /// `notifications_due (status, next_attempt_at)` index, not the table
    /// and its message texts: the count follows every run and grows with
    /// the outbox's history (3.3 s for 2.5 M notices when it read the table).
    pub async fn outbox_counts(&self) -> Result<Vec<OutboxCount>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(COUNTS)
            .fetch_all(pool)
            .await?))
    }

    /// One permit's notices, in the notification export's order.
    pub async fn notifications_for(&self, permit_no: &str) -> Result<Vec<NotificationRow>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(
            NOTIFICATION_SELECT_PERMIT
        )
        .bind(permit_no)
        .fetch_all(pool)
        .await?))
    }
}
