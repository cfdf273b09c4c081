//! Read-only statements for the daemon's `/readyz` and `/metrics`. Each is
//! cheap enough to answer a scrape every few seconds at city scale: counts
//! over indexed columns (the outbox backlog by `status`, one night's events
//! and notices by `as_of`), the `runs` and `imports` tables (one row per
//! night, per file), and sqlx's migration ledger. Nothing here scans the
//! register, the feeds or the whole audit trail.

use chrono::NaiveDate;
use sqlx::Row;

use super::outbox::fresh_any;
use super::{notice_of_event, on_pool, Db};
use crate::domain::{Channel, EventKind, NoticeStatus, Reasons, RunStatus};
use crate::error::Result;

/// Applied against embedded migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationState {
    /// Highest version applied successfully (0: none).
    pub applied: i64,
    /// Highest version this binary carries.
    pub latest: i64,
}

impl MigrationState {
    pub fn is_current(&self) -> bool {
        self.applied >= self.latest
    }
}

/// A count under up to two labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledCount {
    pub a: String,
    pub b: String,
    pub count: i64,
}

/// Events of one kind with the same reasons, counted.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventCount {
    pub kind: EventKind,
    pub reasons: Reasons,
    pub count: i64,
}

/// One feed's imports, all files together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedImports {
    pub feed: String,
    pub files: i64,
    pub rows_read: i64,
    pub rows_imported: i64,
    pub rows_rejected: i64,
    /// `imported_at` of the feed's newest import (RFC 3339): the safety
    /// brake's freshness check reads the same column.
    pub last_imported_at: String,
}

/// Undelivered notices of one status and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogGroup {
    pub status: NoticeStatus,
    pub channel: Channel,
    pub count: i64,
    /// `created_at` of the oldest of them (RFC 3339).
    pub oldest_created_at: String,
}

/// What `/metrics` reads from the database.
#[derive(Debug, Clone, Default)]
pub struct DbMetrics {
    /// The run ledger: how many runs of each status.
    pub runs: Vec<(RunStatus, i64)>,
    /// Events (decisions and lifecycle changes) of the last completed run's
    /// `as_of`, by kind and reasons.
    pub last_run_events: Vec<EventCount>,
    /// Notices created for the last completed run's `as_of`, by status
    /// (`a`) and channel (`b`).
    pub last_run_notices: Vec<LabelledCount>,
    /// The outbox's backlog — queued, failed and dead notices — by status
    /// and channel.
    pub backlog: Vec<BacklogGroup>,
    pub imports: Vec<FeedImports>,
}

const RUNS: &str = "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status";
// The completed run's own events: not those of a discarded run of the
// same date (void: docs/rules.md, "The audit trail").
const EVENTS: &str = "SELECT kind, reasons, count(*) AS count FROM events WHERE as_of = $1 \
     AND run_id IN (SELECT run_id FROM runs WHERE as_of = $1 AND status = 'completed') \
     GROUP BY kind, reasons ORDER BY kind, reasons";
// The night's notices, found through its events.
const NOTICES: &str = concat!(
    "SELECT n.status, n.channel, count(*) FROM events e JOIN notifications n ON ",
    notice_of_event!(),
    " WHERE e.as_of = $1 GROUP BY n.status, n.channel ORDER BY n.status, n.channel"
);
// The status index (status, next_attempt_at) bounds this to the backlog:
// the scheduled and dead notices, which on PostgreSQL are the ones it
// holds (its predicate is spelled out so that the server sees that), and
// the fresh ones above each channel's mark (src/db/outbox.rs, `claim!`).
// Timestamps are RFC 3339 text at one fixed offset (crate::clock), so the
// smallest string is the oldest instant; the oldest comes in the same pass
// as the count.
const BACKLOG: &str = concat!(
    "SELECT status, channel, count(*), min(created_at) FROM (
       SELECT status, channel, created_at FROM notifications
        WHERE status IN ('queued', 'failed', 'dead')
          AND (status = 'dead' OR next_attempt_at IS NOT NULL)
       UNION ALL
       SELECT n.status, n.channel, n.created_at FROM notifications n WHERE ",
    fresh_any!(),
    ") AS b GROUP BY status, channel ORDER BY status, channel"
);
// PostgreSQL's sum(bigint) is numeric: cast back.
// max(imported_at): RFC 3339 text at one fixed offset, as for BACKLOG.
const IMPORTS: &str = "SELECT feed, count(*), CAST(coalesce(sum(rows_read), 0) AS BIGINT), \
     CAST(coalesce(sum(rows_imported), 0) AS BIGINT), CAST(coalesce(sum(rows_rejected), 0) AS BIGINT), \
     max(imported_at) FROM imports GROUP BY feed ORDER BY feed";
const MIGRATIONS: &str =
    "SELECT CAST(coalesce(max(version), 0) AS BIGINT) FROM _sqlx_migrations WHERE success";

fn labelled<R: Row>(rows: &[R]) -> Result<Vec<LabelledCount>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(LabelledCount {
                a: r.try_get(0)?,
                b: r.try_get(1)?,
                count: r.try_get(2)?,
            })
        })
        .collect()
}

fn feed_imports<R: Row>(rows: &[R]) -> Result<Vec<FeedImports>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(FeedImports {
                feed: r.try_get(0)?,
                files: r.try_get(1)?,
                rows_read: r.try_get(2)?,
                rows_imported: r.try_get(3)?,
                rows_rejected: r.try_get(4)?,
                last_imported_at: r.try_get(5)?,
            })
        })
        .collect()
}

fn backlog<R: Row>(rows: &[R]) -> Result<Vec<BacklogGroup>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(BacklogGroup {
                status: r.try_get(0)?,
                channel: r.try_get(1)?,
                count: r.try_get(2)?,
                oldest_created_at: r.try_get(3)?,
            })
        })
        .collect()
}

fn latest_embedded(migrator: &sqlx::migrate::Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

impl Db {
    /// The cheapest round trip: is the database there?
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Whether every migration this binary carries has been applied (a
    /// newer binary started against an older database that it could not
    /// migrate, or an older one against a newer database, shows here).
    pub async fn migration_state(&self) -> Result<MigrationState> {
        match self {
            Db::Sqlite(db) => Ok(MigrationState {
                applied: sqlx::query_scalar(MIGRATIONS).fetch_one(db.pool()).await?,
                latest: latest_embedded(&super::sqlite::MIGRATOR),
            }),
            Db::Postgres(db) => Ok(MigrationState {
                applied: sqlx::query_scalar(MIGRATIONS).fetch_one(db.pool()).await?,
                latest: latest_embedded(&sqlx::migrate!("migrations/postgres")),
            }),
        }
    }

    /// The database's part of `/metrics`; `last_as_of` is the last
    /// completed run's date (its events and notices are counted).
    pub async fn metrics(&self, last_as_of: Option<NaiveDate>) -> Result<DbMetrics> {
        let mut m = DbMetrics::default();
        on_pool!(self, |pool| {
            m.runs = run_counts(&sqlx::query(RUNS).fetch_all(pool).await?)?;
            m.backlog = backlog(&sqlx::query(BACKLOG).fetch_all(pool).await?)?;
            m.imports = feed_imports(&sqlx::query(IMPORTS).fetch_all(pool).await?)?;
            if let Some(as_of) = last_as_of {
                m.last_run_events = sqlx::query_as(EVENTS).bind(as_of).fetch_all(pool).await?;
                m.last_run_notices =
                    labelled(&sqlx::query(NOTICES).bind(as_of).fetch_all(pool).await?)?;
            }
        });
        Ok(m)
    }
}

/// `runs` grouped by status.
fn run_counts<R: Row>(rows: &[R]) -> Result<Vec<(RunStatus, i64)>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
