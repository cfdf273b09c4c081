//! PostgreSQL backend: the production one, and the one several instances
//! can share (docs/scale-out.md). Same methods and same results as the
//! SQLite backend, with the bulk paths done the way PostgreSQL is fast:
//!
//! - imports get their rows a page at a time, one row per key, in key
//!   order (the import's external sort settles R2 within the file), and
//!   `COPY … FROM STDIN` each page into a temporary staging table (`ON
//!   COMMIT DROP`) and upsert it with one `INSERT … SELECT … ON CONFLICT`;
//!   stored permits are looked up with `permit_no = ANY($1)`. Loading a
//!   table that was empty when the import began (the initial load), the
//!   pages are COPYed straight into the table instead, and its key is
//!   built once at commit: an upsert costs PostgreSQL about twice a plain
//!   insert;
//! - the run looks its due holders' evidence up with one query per feed
//!   and chunk of holders (`id_number = ANY($1)`, bounded by the chunk's
//!   first and last key); a task on a pooled connection of its own reads
//!   the pages of permits with one keyset query each, a page ahead, while
//!   the run writes each page's events and notices with a binary `COPY`
//!   each and its permit changes with one `UNNEST` statement, in a
//!   transaction of its own, two pages at once on two connections: pages
//!   commit one by one, in page order.
//!   A run that dies keeps its committed pages; the plan skips decided
//!   cycles and unique keys forbid doubles, so the next run for that
//!   `as_of` does the rest (reconcile's module doc);
//! - the job lock is a session-level `pg_advisory_lock` on a connection of
//!   its own, released by the server when that session ends, however the
//!   process died. A run also writes a fencing token on its `runs` row and
//!   checks it in every page, so a process whose lock session was lost
//!   stops at its next page instead of writing beside its successor.
//!
//! Exports are byte-identical to SQLite's: text keys are `COLLATE "C"`
//! (bytewise, like SQLite), timestamps are the same RFC 3339 text, and ids
//! are allocated as max + 1 under the job lock (see the migration; a
//! run's pages take theirs in page order before they are written), so the
//! same inputs give the same ids, even across a crash.
//!
//! The files: this one opens the pool and takes the job lock;
//! `import.rs` loads the register and the feeds (COPY, staging tables);
//! `run.rs` is the night (its runs row and fencing, the walk, the due
//! read, the evidence, the page reader, the pages in flight); `page.rs`
//! writes one page (COPY and `UNNEST`); `ledger.rs` corrects
//! the run ledger (release, revert); `export.rs` streams the exports;
//! `copy.rs` writes COPY's two formats and sends them.

mod copy;
mod export;
mod import;
mod ledger;
mod page;
mod run;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub use import::PgImportTx;
pub use run::PgRunTx;

use chrono::NaiveDate;

use super::rows::{Effect, NewNotice};
use super::JobLock;
use crate::domain::EventKind;
use crate::error::{Error, Result};

/// Queues notices (`$4…$10`, one array per column) for run `$1` of date
/// `$2`, created at `$3`, with ids `$11` (else max) + 1 in array order.
const QUEUE_NOTICES: &str =
    "INSERT INTO notifications (notification_id, run_id, as_of, permit_no, cycle_valid_until, kind,
       channel, recipient, message, status, created_at)
     SELECT coalesce($11, (SELECT coalesce(max(notification_id), 0) FROM notifications)) + u.ord,
       $1, $2,
       u.permit_no, u.valid_until, u.kind, u.channel, u.recipient, u.message, u.status, $3
     FROM UNNEST($4::text[], $5::date[], $6::text[], $7::text[], $8::text[], $9::text[],
                 $10::text[])
          WITH ORDINALITY AS u (permit_no, valid_until, kind, channel, recipient, message, status,
                 ord)";

/// Queues the notices of a run's page or of `release` alike: for each,
/// the permit, the cycle's `valid_until` and the event's kind. A queued
/// notice is due at once: fresh, with no `next_attempt_at` (migration
/// 15). Their ids follow `after`, or the largest stored.
async fn queue_notices<'a>(
    tx: &mut PgConnection,
    (run_id, as_of, created_at): (i64, NaiveDate, &str),
    after: Option<i64>,
    notices: impl Iterator<Item = (&'a str, NaiveDate, EventKind, &'a NewNotice)>,
) -> Result<()> {
    let (mut nos, mut valid_until, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut channels, mut recipients, mut messages) = (Vec::new(), Vec::new(), Vec::new());
    let mut statuses = Vec::new();
    for (permit_no, vu, kind, n) in notices {
        nos.push(permit_no);
        valid_until.push(vu);
        kinds.push(kind.code());
        channels.push(n.channel.code());
        recipients.push(n.recipient.as_str());
        messages.push(n.message.as_str());
        statuses.push(n.status.code());
    }
    sqlx::query(QUEUE_NOTICES)
        .bind(run_id)
        .bind(as_of)
        .bind(created_at)
        .bind(&nos)
        .bind(&valid_until)
        .bind(&kinds)
        .bind(&channels)
        .bind(&recipients)
        .bind(&messages)
        .bind(&statuses)
        .bind(after)
        .execute(tx)
        .await?;
    Ok(())
}

/// The first and last of a list of keys (`None` for an empty list): what
/// an `UPDATE … FROM UNNEST` over the list is bounded by (why:
/// [`apply_effects`]).
fn key_span<'a>(keys: &[&'a str]) -> Option<(&'a str, &'a str)> {
    Some((*keys.iter().min()?, *keys.iter().max()?))
}

/// The permit changes (R3, R7) of a run's page or of `release`: a new
/// `valid_until` or a new status per permit, in one statement.
///
/// The statement is bounded by the list's first and last key as well as
/// joined to it, so whatever plan the server picks it reads only the
/// list's slice of the key. Joined alone, a page of 10,000 changes was
/// planned as a merge join walking `permit_state`'s key from its first
/// entry up to the page's last, so each page cost more than the one
/// before (measured at 1,000,000 permits: the last page of a first night
/// 210–350 ms, bounded 28–40 ms).
async fn apply_effects<'a>(
    tx: &mut PgConnection,
    effects: impl Iterator<Item = (&'a str, Effect)>,
) -> Result<()> {
    let (mut nos, mut valid_until, mut status) = (Vec::new(), Vec::new(), Vec::new());
    for (permit_no, effect) in effects {
        match effect {
            Effect::Extend(to) => {
                nos.push(permit_no);
                valid_until.push(Some(to));
                status.push(None);
            }
            Effect::SetStatus(s) => {
                nos.push(permit_no);
                valid_until.push(None);
                status.push(Some(s.code()));
            }
            Effect::None => {}
        }
    }
    let Some((first, last)) = key_span(&nos) else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE permit_state p SET valid_until = coalesce(u.valid_until, p.valid_until),
           status = coalesce(u.status, p.status)
         FROM UNNEST($1::text[], $2::date[], $3::text[]) AS u (permit_no, valid_until, status)
         WHERE p.permit_no = u.permit_no AND p.permit_no BETWEEN $4 AND $5",
    )
    .bind(&nos)
    .bind(&valid_until)
    .bind(&status)
    .bind(first)
    .bind(last)
    .execute(tx)
    .await?;
    Ok(())
}

/// The advisory-lock key of the job lock: "autosign" in ASCII. Advisory
/// locks are per database, so instances on other databases never meet.
const JOB_LOCK_KEY: i64 = 0x6175_746f_7369_676e;

/// A connected, migrated PostgreSQL database.
#[derive(Clone)]
pub struct PgDb {
    pool: PgPool,
    /// For the job lock's own session (boxed: `Db` stays small).
    options: Box<PgConnectOptions>,
}

/// The job lock: a session holding `pg_advisory_lock(JOB_LOCK_KEY)`.
/// Dropping it closes the session, which releases the lock; so does the
/// death of the process (the server sees the socket close) or of the
/// session (`pg_terminate_backend`).
pub struct PgJobLock {
    _conn: PgConnection,
}

fn where_is(o: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or(o.get_username())
    )
}

impl PgDb {
    pub async fn open(url: &str) -> Result<Self> {
        // The URL may hold a password: never echo it.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("invalid PostgreSQL database URL: {e}")))?
            .application_name("autosign")
            // Bulk statements legitimately take seconds at city scale.
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(10));
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                Error::Runtime(anyhow::anyhow!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    where_is(&options)
                ))
            })?;
        // sqlx takes an advisory lock of its own around migrations, so
        // instances starting together apply them once.
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgDb {
            pool,
            options: Box::new(options),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection of the pool's, taken out of it for a job's
    /// transactions: when the job fails or the server cuts it off, dropping
    /// it closes the session (the server rolls back what was open) instead
    /// of handing a broken connection back to the pool.
    async fn detached(&self) -> Result<PgConnection> {
        Ok(self.pool.acquire().await?.detach())
    }

    pub async fn lock_jobs(&self, on_wait: impl FnOnce()) -> Result<JobLock> {
        let mut conn = (*self.options)
            .clone()
            .application_name("autosign-lock")
            .connect()
            .await
            .map_err(|e| {
                Error::Runtime(anyhow::anyhow!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    where_is(&self.options)
                ))
            })?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(JOB_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            on_wait();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(JOB_LOCK_KEY)
                .execute(&mut conn)
                .await?;
        }
        Ok(JobLock::Postgres(PgJobLock { _conn: conn }))
    }
}
