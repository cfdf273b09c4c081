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
//!   the run writes each page's events, notices and permit changes with
//!   one `UNNEST` statement each, in a transaction of its own: pages
//!   commit one by one. A run that dies
//!   keeps its committed pages; the plan skips decided cycles and unique
//!   keys forbid doubles, so the next run for that `as_of` does the rest
//!   (reconcile's module doc);
//! - the job lock is a session-level `pg_advisory_lock` on a connection of
//!   its own, released by the server when that session ends, however the
//!   process died. A run also writes a fencing token on its `runs` row and
//!   checks it in every page, so a process whose lock session was lost
//!   stops at its next page instead of writing beside its successor.
//!
//! Exports are byte-identical to SQLite's: text keys are `COLLATE "C"`
//! (bytewise, like SQLite), timestamps are the same RFC 3339 text, and ids
//! are allocated as max + 1 under the job lock (see the migration), so the
//! same inputs give the same ids, even across a crash.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::NaiveDate;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, FromRow, PgPool, Row};

use super::outbox::NOTIFICATION_SELECT_RANGE;
use super::register::permit_columns;
use super::rows::*;
use super::runs::{run_columns, AUDIT_SELECT_RANGE, REVERT_MARK, SENT_NOTICES, WITHDRAW_NOTICES};
use super::{stored, EventPage, EventPageReader, JobLock, MakeEvents};
use crate::domain::{CycleDecision, NoticeStatus, PermitStatus};
use crate::error::{Error, Result};

/// The advisory-lock key of the job lock: "autosign" in ASCII. Advisory
/// locks are per database, so instances on other databases never meet.
const JOB_LOCK_KEY: i64 = 0x6175_746f_7369_676e;

/// Rows of one table upserted in one import above which the import
/// refreshes the table's planner statistics before committing, so the run
/// that follows an initial load does not plan against an empty table.
const ANALYZE_AFTER_ROWS: u64 = 10_000;

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

    pub async fn begin_import(
        &self,
        feed: &str,
        file_name: &str,
        sha256: &str,
        delivery: crate::feeds::Delivery,
        imported_at: &str,
    ) -> Result<PgImportTx> {
        let mut conn = self.detached().await?;
        sqlx::query("BEGIN").execute(&mut conn).await?;
        let import_id: i64 = sqlx::query_scalar(
            "INSERT INTO imports (import_id, feed, file_name, sha256, imported_at, delivery)
             SELECT coalesce(max(import_id), 0) + 1, $1, $2, $3, $4, $5 FROM imports
             RETURNING import_id",
        )
        .bind(feed)
        .bind(file_name)
        .bind(sha256)
        .bind(imported_at)
        .bind(delivery.as_str())
        .fetch_one(&mut conn)
        .await?;
        Ok(PgImportTx {
            conn,
            import_id,
            staged: Vec::new(),
            upserted: HashMap::new(),
            direct: HashMap::new(),
        })
    }

    /// These permits as stored, by permit_no.
    pub async fn permits_by_no(&self, permit_nos: &[&str]) -> Result<HashMap<String, PermitRow>> {
        let mut out = HashMap::with_capacity(permit_nos.len());
        for chunk in permit_nos.chunks(10_000) {
            let rows = sqlx::query(concat!(
                "SELECT ",
                permit_columns!(),
                " FROM permits WHERE permit_no = ANY($1)"
            ))
            .bind(chunk)
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                let p = PermitRow::from_row(r)?;
                out.insert(p.permit_no.clone(), p);
            }
        }
        Ok(out)
    }

    /// Applies a held run (docs/rules.md, "Release and discard"): queues the notices and makes the
    /// permit changes of the items that have a notice, records what was
    /// done with each event, and marks the run completed — one
    /// transaction. `false` (nothing done) if the run is no longer held.
    pub async fn release_run(&self, run_id: i64, items: &[ReleaseItem], now: &str) -> Result<bool> {
        let mut conn = self.detached().await?;
        let mut tx = conn.begin().await?;
        let as_of: Option<NaiveDate> = sqlx::query_scalar(
            "UPDATE runs SET status = 'completed', released_at = $2
             WHERE run_id = $1 AND status = 'held' RETURNING as_of",
        )
        .bind(run_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(as_of) = as_of else {
            return Ok(false);
        };
        let applied: Vec<&ReleaseItem> = items.iter().filter(|i| i.notice.is_some()).collect();
        let notices: Vec<&NewNotice> = applied.iter().filter_map(|i| i.notice.as_ref()).collect();
        let permit_nos: Vec<&str> = applied.iter().map(|i| i.permit_no.as_str()).collect();
        let valid_until: Vec<NaiveDate> = applied.iter().map(|i| i.valid_until).collect();
        let kinds: Vec<&str> = applied.iter().map(|i| i.kind.code()).collect();
        let channels: Vec<&str> = notices.iter().map(|n| n.channel.code()).collect();
        let recipients: Vec<&str> = notices.iter().map(|n| n.recipient.as_str()).collect();
        let messages: Vec<&str> = notices.iter().map(|n| n.message.as_str()).collect();
        let statuses: Vec<&str> = notices.iter().map(|n| n.status.code()).collect();
        let next_attempt: Vec<Option<&str>> = notices
            .iter()
            .map(|n| (n.status == NoticeStatus::Queued).then_some(now))
            .collect();
        sqlx::query(
            "INSERT INTO notifications (notification_id, run_id, as_of, permit_no, cycle_valid_until, kind,
               channel, recipient, message, status, next_attempt_at, created_at)
             SELECT (SELECT coalesce(max(notification_id), 0) FROM notifications) + u.ord, $1, $2,
               u.permit_no, u.valid_until, u.kind, u.channel, u.recipient, u.message, u.status,
               u.next_attempt_at, $3
             FROM UNNEST($4::text[], $5::date[], $6::text[], $7::text[], $8::text[], $9::text[],
                         $10::text[], $11::text[])
                  WITH ORDINALITY AS u (permit_no, valid_until, kind, channel, recipient, message, status,
                         next_attempt_at, ord)",
        )
        .bind(run_id)
        .bind(as_of)
        .bind(now)
        .bind(&permit_nos)
        .bind(&valid_until)
        .bind(&kinds)
        .bind(&channels)
        .bind(&recipients)
        .bind(&messages)
        .bind(&statuses)
        .bind(&next_attempt)
        .execute(&mut *tx)
        .await?;
        let (mut eff_nos, mut eff_vu, mut eff_status) = (Vec::new(), Vec::new(), Vec::new());
        for i in &applied {
            match i.effect {
                Effect::Extend(to) => {
                    eff_nos.push(i.permit_no.as_str());
                    eff_vu.push(Some(to));
                    eff_status.push(None);
                }
                Effect::SetStatus(st) => {
                    eff_nos.push(i.permit_no.as_str());
                    eff_vu.push(None);
                    eff_status.push(Some(st.code()));
                }
                Effect::None => {}
            }
        }
        if !eff_nos.is_empty() {
            sqlx::query(
                "UPDATE permit_state p SET valid_until = coalesce(u.valid_until, p.valid_until),
                   status = coalesce(u.status, p.status)
                 FROM UNNEST($1::text[], $2::date[], $3::text[]) AS u (permit_no, valid_until, status)
                 WHERE p.permit_no = u.permit_no",
            )
            .bind(&eff_nos)
            .bind(&eff_vu)
            .bind(&eff_status)
            .execute(&mut *tx)
            .await?;
        }
        let event_ids: Vec<i64> = items.iter().map(|i| i.event_id).collect();
        let was_applied: Vec<bool> = items.iter().map(|i| i.notice.is_some()).collect();
        sqlx::query(
            "INSERT INTO event_releases (event_id, run_id, applied, released_at)
             SELECT u.event_id, $1, u.applied, $2 FROM UNNEST($3::bigint[], $4::bool[]) AS u (event_id, applied)",
        )
        .bind(run_id)
        .bind(now)
        .bind(&event_ids)
        .bind(&was_applied)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let _ = conn.close().await;
        Ok(true)
    }

    /// Creates the run's `running` row, or takes over one left by a process
    /// that died (the caller holds the job lock, so none is alive), and
    /// writes this process's fencing token on it.
    pub async fn begin_run(
        &self,
        as_of: NaiveDate,
        now: &str,
        import_mark: i64,
    ) -> Result<PgRunTx> {
        let owner = fencing_token();
        let mut conn = self.detached().await?;
        let taken_over = sqlx::query(concat!(
            "UPDATE runs SET attempts = attempts + 1, started_at = $2, owner = $3, import_mark = $4
             WHERE as_of = $1 AND status = 'running' RETURNING ",
            run_columns!()
        ))
        .bind(as_of)
        .bind(now)
        .bind(&owner)
        .bind(import_mark)
        .fetch_optional(&mut conn)
        .await?;
        let row = match taken_over {
            Some(row) => row,
            None => {
                let created = sqlx::query(concat!(
                    "INSERT INTO runs (run_id, as_of, status, started_at, owner, import_mark)
                     SELECT coalesce(max(run_id), 0) + 1, $1, 'running', $2, $3, $4 FROM runs
                     ON CONFLICT (as_of) WHERE status <> 'discarded' AND status <> 'reverted'
                     DO NOTHING RETURNING ",
                    run_columns!()
                ))
                .bind(as_of)
                .bind(now)
                .bind(&owner)
                .bind(import_mark)
                .fetch_optional(&mut conn)
                .await?;
                match created {
                    Some(row) => row,
                    // Completed meanwhile: the caller checked under the job
                    // lock, so only a process that lost its lock gets here.
                    None => {
                        return Err(Error::Refused(format!(
                            "as_of {as_of} was completed by another process meanwhile"
                        )))
                    }
                }
            }
        };
        let run = RunRecord::from_row(&row)?;
        Ok(PgRunTx {
            conn,
            pool: self.pool.clone(),
            dry_run: false,
            run,
            owner,
        })
    }

    /// `run --dry-run`: the run's reads without the run, in one read-only
    /// snapshot (a write would fail). No runs row; with no fencing token a
    /// page could not be committed either. Dropped, the session ends and
    /// the server rolls back. `run` is what the run would be, never stored.
    pub async fn begin_dry_run(&self, run: RunRecord) -> Result<PgRunTx> {
        let mut conn = self.detached().await?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut conn)
            .await?;
        Ok(PgRunTx {
            conn,
            pool: self.pool.clone(),
            dry_run: true,
            run,
            owner: String::new(),
        })
    }

    /// `autosign revert` in one transaction (see the SQLite twin). The
    /// permits are set back a chunk at a time, each chunk one statement; a
    /// run takes at most one step per permit (R3), so a permit is in one
    /// item at most.
    pub async fn revert_run(
        &self,
        run: &RunRecord,
        items: &[RevertItem],
        now: &str,
    ) -> Result<RevertDone> {
        let run_id = run.run_id;
        let mut conn = self.detached().await?;
        let mut tx = conn.begin().await?;
        let marked = sqlx::query(REVERT_MARK)
            .bind(run_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if marked != 1 {
            tx.rollback().await?;
            return Ok(RevertDone::NotCompleted);
        }
        let sent: i64 = sqlx::query_scalar(SENT_NOTICES)
            .bind(run.as_of)
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
        if sent > 0 {
            tx.rollback().await?;
            return Ok(RevertDone::Sent(sent as u64));
        }
        let withdrawn = sqlx::query(WITHDRAW_NOTICES)
            .bind(run.as_of)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut not_undone = Vec::new();
        for chunk in items.chunks(10_000) {
            let restores: Vec<(&str, Restore)> = chunk
                .iter()
                .filter_map(|i| i.restore.map(|r| (i.permit_no.as_str(), r)))
                .collect();
            let nos: Vec<&str> = restores.iter().map(|(n, _)| *n).collect();
            let left_vu: Vec<NaiveDate> =
                restores.iter().map(|(_, r)| r.left_valid_until).collect();
            let left_st: Vec<&str> = restores.iter().map(|(_, r)| r.left_status.code()).collect();
            let vu: Vec<NaiveDate> = restores.iter().map(|(_, r)| r.valid_until).collect();
            let st: Vec<&str> = restores.iter().map(|(_, r)| r.status.code()).collect();
            let set_back: Vec<String> = sqlx::query_scalar(
                "UPDATE permit_state p SET valid_until = u.valid_until, status = u.status
                 FROM UNNEST($1::text[], $2::date[], $3::text[], $4::date[], $5::text[])
                      AS u (permit_no, left_valid_until, left_status, valid_until, status)
                 WHERE p.permit_no = u.permit_no AND p.valid_until = u.left_valid_until
                   AND p.status = u.left_status
                 RETURNING p.permit_no",
            )
            .bind(&nos)
            .bind(&left_vu)
            .bind(&left_st)
            .bind(&vu)
            .bind(&st)
            .fetch_all(&mut *tx)
            .await?;
            let set_back: std::collections::HashSet<&str> =
                set_back.iter().map(String::as_str).collect();
            let ids: Vec<i64> = chunk.iter().map(|i| i.event_id).collect();
            let undone: Vec<bool> = chunk
                .iter()
                .map(|i| i.restore.is_none() || set_back.contains(i.permit_no.as_str()))
                .collect();
            for (i, done) in chunk.iter().zip(&undone) {
                if !done {
                    not_undone.push(i.permit_no.clone());
                }
            }
            sqlx::query(
                "INSERT INTO event_reverts (event_id, run_id, undone, reverted_at)
                 SELECT u.event_id, $3, u.undone, $4 FROM UNNEST($1::bigint[], $2::bool[]) AS u (event_id, undone)",
            )
            .bind(&ids)
            .bind(&undone)
            .bind(run_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(RevertDone::Reverted {
            withdrawn,
            not_undone,
        })
    }

    pub async fn audit_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(&AuditCells<'_>) -> Result<()> + Send),
    ) -> Result<()> {
        let mut rows = sqlx::query_as::<_, AuditRow>(AUDIT_SELECT_RANGE)
            .bind(from)
            .bind(to)
            .fetch(&self.pool);
        while let Some(r) = rows.try_next().await? {
            let cells = r.to_cells();
            each(&cells.each_ref().map(String::as_str))?;
        }
        Ok(())
    }

    pub async fn notification_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(NotificationRow) -> Result<()> + Send),
    ) -> Result<()> {
        let mut rows = sqlx::query_as::<_, NotificationRow>(NOTIFICATION_SELECT_RANGE)
            .bind(from)
            .bind(to)
            .fetch(&self.pool);
        while let Some(r) = rows.try_next().await? {
            each(r)?;
        }
        Ok(())
    }
}

/// A token naming this process's attempt at a run (docs/scale-out.md:
/// fencing).
fn fencing_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}:{}:{nanos:x}:{:016x}",
        hostname(),
        std::process::id(),
        rand::random::<u64>()
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// COPY's text format: one line per row, tab-separated, `\N` for NULL,
/// backslash escapes for the characters that would break the framing.
struct CopyText {
    buf: Vec<u8>,
    fresh_row: bool,
}

impl CopyText {
    fn with_capacity(n: usize) -> Self {
        CopyText {
            buf: Vec::with_capacity(n),
            fresh_row: true,
        }
    }

    fn sep(&mut self) {
        if !self.fresh_row {
            self.buf.push(b'\t');
        }
        self.fresh_row = false;
    }

    fn text(&mut self, s: &str) -> &mut Self {
        self.sep();
        for &b in s.as_bytes() {
            match b {
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                b'\t' => self.buf.extend_from_slice(b"\\t"),
                b'\n' => self.buf.extend_from_slice(b"\\n"),
                b'\r' => self.buf.extend_from_slice(b"\\r"),
                _ => self.buf.push(b),
            }
        }
        self
    }

    fn opt_text(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => {
                self.sep();
                self.buf.extend_from_slice(b"\\N");
                self
            }
        }
    }

    fn date(&mut self, d: NaiveDate) -> &mut Self {
        self.sep();
        use std::io::Write;
        let _ = write!(self.buf, "{}", d.format("%Y-%m-%d"));
        self
    }

    fn opt_date(&mut self, d: Option<NaiveDate>) -> &mut Self {
        match d {
            Some(d) => self.date(d),
            None => self.opt_text(None),
        }
    }

    fn int(&mut self, v: i64) -> &mut Self {
        self.sep();
        use std::io::Write;
        let _ = write!(self.buf, "{v}");
        self
    }

    fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.fresh_row = true;
    }
}

/// The staging tables an import COPYs into, one per target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stage {
    Permits,
    Residence,
    SocialInsurance,
    CivilStatus,
}

impl Stage {
    fn table(self) -> &'static str {
        match self {
            Stage::Permits => "permits",
            Stage::Residence => "residence",
            Stage::SocialInsurance => "social_insurance",
            Stage::CivilStatus => "civil_status",
        }
    }

    /// Creates the staging table (dropped at commit or rollback).
    fn create(self) -> &'static str {
        match self {
            Stage::Permits => concat!(
                "CREATE TEMP TABLE stage_permits ON COMMIT DROP AS SELECT ",
                permit_columns!(),
                ", import_line, import_id FROM permits WITH NO DATA"
            ),
            Stage::Residence => "CREATE TEMP TABLE stage_residence ON COMMIT DROP AS
                SELECT id_number, visited_on, result, address, officer_id, line, import_id FROM residence WITH NO DATA",
            Stage::SocialInsurance => "CREATE TEMP TABLE stage_social_insurance ON COMMIT DROP AS
                SELECT id_number, month, status, employer_uscc, employer_name, line, import_id FROM social_insurance WITH NO DATA",
            Stage::CivilStatus => "CREATE TEMP TABLE stage_civil_status ON COMMIT DROP AS
                SELECT id_number, marital_status, as_of, line, import_id FROM civil_status WITH NO DATA",
        }
    }

    fn is_empty(self) -> &'static str {
        match self {
            Stage::Permits => "SELECT NOT EXISTS (SELECT 1 FROM permit_state)",
            Stage::Residence => "SELECT NOT EXISTS (SELECT 1 FROM residence)",
            Stage::SocialInsurance => "SELECT NOT EXISTS (SELECT 1 FROM social_insurance)",
            Stage::CivilStatus => "SELECT NOT EXISTS (SELECT 1 FROM civil_status)",
        }
    }

    /// COPY straight into the table (initial load, key new in the file);
    /// for the register, into `permit_details` ([`PERMIT_STATE_COPY`] takes
    /// the rest).
    fn copy_direct(self) -> &'static str {
        match self {
            Stage::Permits => {
                "COPY permit_details (permit_no, id_number, name, phone, email, district_code,
                   street_code, address, employer_uscc, si_status, marital_status, import_line,
                   import_id) FROM STDIN"
            }
            Stage::Residence => {
                "COPY residence (id_number, visited_on, result, address, officer_id, line, import_id) FROM STDIN"
            }
            Stage::SocialInsurance => {
                "COPY social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id) FROM STDIN"
            }
            Stage::CivilStatus => {
                "COPY civil_status (id_number, marital_status, as_of, line, import_id) FROM STDIN"
            }
        }
    }

    /// An initial load builds the primary key once, after the rows are in
    /// (a sort), instead of inserting a million keys one by one into it
    /// (measured at 1M permits: 18 s with the key, 4 s without it and then
    /// building it). Transactional: a refused import gets its key back.
    fn drop_key(self) -> &'static [&'static str] {
        match self {
            Stage::Permits => &[
                "ALTER TABLE permit_state DROP CONSTRAINT permit_state_pkey",
                "ALTER TABLE permit_details DROP CONSTRAINT permit_details_pkey",
            ],
            Stage::Residence => &["ALTER TABLE residence DROP CONSTRAINT residence_pkey"],
            Stage::SocialInsurance => {
                &["ALTER TABLE social_insurance DROP CONSTRAINT social_insurance_pkey"]
            }
            Stage::CivilStatus => &["ALTER TABLE civil_status DROP CONSTRAINT civil_status_pkey"],
        }
    }

    fn add_key(self) -> &'static [&'static str] {
        match self {
            Stage::Permits => &[
                "ALTER TABLE permit_state ADD CONSTRAINT permit_state_pkey PRIMARY KEY (permit_no)",
                "ALTER TABLE permit_details ADD CONSTRAINT permit_details_pkey PRIMARY KEY (permit_no)",
            ],
            Stage::Residence => &[
                "ALTER TABLE residence ADD CONSTRAINT residence_pkey PRIMARY KEY (id_number, visited_on)",
            ],
            Stage::SocialInsurance => &[
                "ALTER TABLE social_insurance ADD CONSTRAINT social_insurance_pkey PRIMARY KEY (id_number, month)",
            ],
            Stage::CivilStatus => {
                &["ALTER TABLE civil_status ADD CONSTRAINT civil_status_pkey PRIMARY KEY (id_number)"]
            }
        }
    }

    fn truncate(self) -> &'static str {
        match self {
            Stage::Permits => "TRUNCATE stage_permits",
            Stage::Residence => "TRUNCATE stage_residence",
            Stage::SocialInsurance => "TRUNCATE stage_social_insurance",
            Stage::CivilStatus => "TRUNCATE stage_civil_status",
        }
    }

    fn copy(self) -> &'static str {
        match self {
            Stage::Permits => concat!(
                "COPY stage_permits (",
                permit_columns!(),
                ", import_line, import_id) FROM STDIN"
            ),
            Stage::Residence => {
                "COPY stage_residence (id_number, visited_on, result, address, officer_id, line, import_id) FROM STDIN"
            }
            Stage::SocialInsurance => {
                "COPY stage_social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id) FROM STDIN"
            }
            Stage::CivilStatus => {
                "COPY stage_civil_status (id_number, marital_status, as_of, line, import_id) FROM STDIN"
            }
        }
    }

    /// Moves the staged rows into the table; a later row or import with
    /// the same key replaces the earlier one (R2). The feeds code keeps one
    /// row per key per batch: PostgreSQL refuses to touch a row twice in one
    /// statement.
    fn upsert(self) -> &'static [&'static str] {
        match self {
            Stage::Permits => &[
                "INSERT INTO permit_details (permit_no, id_number, name, phone, email, district_code,
                   street_code, address, employer_uscc, si_status, marital_status, import_line,
                   import_id)
                 SELECT permit_no, id_number, name, phone, email, district_code, street_code, address,
                   employer_uscc, si_status, marital_status, import_line, import_id FROM stage_permits
                 ON CONFLICT (permit_no) DO UPDATE SET id_number = excluded.id_number, name = excluded.name,
                  phone = excluded.phone, email = excluded.email, district_code = excluded.district_code,
                  street_code = excluded.street_code, address = excluded.address,
                  employer_uscc = excluded.employer_uscc, si_status = excluded.si_status,
                  marital_status = excluded.marital_status, import_id = excluded.import_id,
                  import_line = excluded.import_line",
                "INSERT INTO permit_state (permit_no, valid_until, status)
                 SELECT permit_no, valid_until, status FROM stage_permits
                 ON CONFLICT (permit_no) DO UPDATE SET valid_until = excluded.valid_until,
                  status = excluded.status",
            ],
            Stage::Residence => &[
                "INSERT INTO residence (id_number, visited_on, result, address, officer_id, line, import_id)
                 SELECT id_number, visited_on, result, address, officer_id, line, import_id FROM stage_residence
                 ON CONFLICT (id_number, visited_on) DO UPDATE SET result = excluded.result,
                  address = excluded.address, officer_id = excluded.officer_id, import_id = excluded.import_id,
                  line = excluded.line",
            ],
            Stage::SocialInsurance => &[
                "INSERT INTO social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id)
                 SELECT id_number, month, status, employer_uscc, employer_name, line, import_id FROM stage_social_insurance
                 ON CONFLICT (id_number, month) DO UPDATE SET status = excluded.status,
                  employer_uscc = excluded.employer_uscc, employer_name = excluded.employer_name,
                  import_id = excluded.import_id, line = excluded.line",
            ],
            Stage::CivilStatus => &[
                "INSERT INTO civil_status (id_number, marital_status, as_of, line, import_id)
                 SELECT id_number, marital_status, as_of, line, import_id FROM stage_civil_status
                 ON CONFLICT (id_number) DO UPDATE SET marital_status = excluded.marital_status,
                  as_of = excluded.as_of, import_id = excluded.import_id, line = excluded.line",
            ],
        }
    }

    fn analyze(self) -> &'static str {
        match self {
            Stage::Permits => "ANALYZE permit_state, permit_details",
            Stage::Residence => "ANALYZE residence",
            Stage::SocialInsurance => "ANALYZE social_insurance",
            Stage::CivilStatus => "ANALYZE civil_status",
        }
    }
}

/// The register's state half, during an initial load ([`Stage::copy_direct`]
/// takes its details).
const PERMIT_STATE_COPY: &str = "COPY permit_state (permit_no, valid_until, status) FROM STDIN";

/// One import's transaction, on a connection of its own (BEGIN … COMMIT;
/// dropped unfinished, the session ends and the server rolls back).
pub struct PgImportTx {
    conn: PgConnection,
    pub import_id: i64,
    staged: Vec<Stage>,
    upserted: HashMap<Stage, u64>,
    /// Per table: whether it was empty when this import began (an initial
    /// load: rows whose key is new in the file go straight in).
    direct: HashMap<Stage, bool>,
}

/// One page's COPY text, for the table itself or its staging table.
struct Page {
    stage: Stage,
    /// Straight into the table (an initial load), else staged and upserted.
    direct: bool,
    text: CopyText,
    rows: u64,
}

impl PgImportTx {
    /// The permits' current values only: PostgreSQL's import remembers
    /// what it wrote itself (C6).
    pub async fn lookup_permits(
        &mut self,
        permit_nos: &[&str],
    ) -> Result<HashMap<String, PriorPermit>> {
        let rows = sqlx::query(
            "SELECT permit_no, valid_until, status FROM permit_state WHERE permit_no = ANY($1)",
        )
        .bind(permit_nos)
        .fetch_all(&mut self.conn)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let status: String = r.try_get(2)?;
            let status = PermitStatus::parse(&status).map_err(|_| {
                Error::Runtime(anyhow::anyhow!(
                    "stored permit has unknown status {status:?}"
                ))
            })?;
            out.insert(
                r.try_get(0)?,
                PriorPermit {
                    valid_until: r.try_get(1)?,
                    status,
                },
            );
        }
        Ok(out)
    }

    pub async fn register_is_empty(&mut self) -> Result<bool> {
        let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM permit_state LIMIT 1")
            .fetch_optional(&mut self.conn)
            .await?;
        Ok(any.is_none())
    }

    /// Whether rows of `stage`'s table go straight in with COPY: the table
    /// was empty when this import began (an initial load). Asked once per
    /// table; the job lock keeps other writers out meanwhile. The table's
    /// key is dropped until [`PgImportTx::commit`] builds it again (readers
    /// of that table wait for the import meanwhile: it had no rows).
    async fn direct(&mut self, stage: Stage) -> Result<bool> {
        if let Some(direct) = self.direct.get(&stage) {
            return Ok(*direct);
        }
        let empty: bool = sqlx::query_scalar(stage.is_empty())
            .fetch_one(&mut self.conn)
            .await?;
        if empty {
            for &statement in stage.drop_key() {
                sqlx::query(statement).execute(&mut self.conn).await?;
            }
        }
        self.direct.insert(stage, empty);
        Ok(empty)
    }

    /// Starts one page's COPY text for `stage`. Every row ends with the
    /// import's id, in the table or in the staging table alike.
    async fn page(&mut self, stage: Stage, rows: usize, row_bytes: usize) -> Result<Page> {
        Ok(Page {
            stage,
            direct: self.direct(stage).await?,
            text: CopyText::with_capacity(rows * row_bytes),
            rows: rows as u64,
        })
    }

    async fn copy(&mut self, statement: &'static str, data: CopyText) -> Result<()> {
        let mut copy = self.conn.copy_in_raw(statement).await?;
        if let Err(e) = copy.send(data.buf).await {
            let _ = copy.abort("autosign: sending the batch failed").await;
            return Err(e.into());
        }
        copy.finish().await?;
        Ok(())
    }

    /// Writes one page (one row per key, in key order: the import's
    /// external sort settles R2 within the file): COPY straight into the
    /// table during an initial load, else COPY into the stage's temporary
    /// table and upsert from there (R2: a later import replaces a stored
    /// row).
    async fn flush(&mut self, p: Page) -> Result<()> {
        let stage = p.stage;
        if p.direct {
            self.copy(stage.copy_direct(), p.text).await?;
        } else {
            if !self.staged.contains(&stage) {
                sqlx::query(stage.create()).execute(&mut self.conn).await?;
                self.staged.push(stage);
            } else {
                sqlx::query(stage.truncate())
                    .execute(&mut self.conn)
                    .await?;
            }
            self.copy(stage.copy(), p.text).await?;
            for &statement in stage.upsert() {
                sqlx::query(statement).execute(&mut self.conn).await?;
            }
        }
        *self.upserted.entry(stage).or_insert(0) += p.rows;
        Ok(())
    }

    pub async fn upsert_permits(&mut self, rows: &[(PermitRow, ImportMark)]) -> Result<()> {
        let mut page = self.page(Stage::Permits, rows.len(), 200).await?;
        if page.direct {
            // Straight into the register's two tables: its state here, its
            // details by `flush`.
            let mut state = CopyText::with_capacity(rows.len() * 32);
            for (p, mark) in rows {
                state
                    .text(&p.permit_no)
                    .date(p.valid_until)
                    .text(p.status.code())
                    .end_row();
                page.text
                    .text(&p.permit_no)
                    .text(&p.id_number)
                    .text(&p.name)
                    .opt_text(p.phone.as_deref())
                    .opt_text(p.email.as_deref())
                    .text(&p.district_code)
                    .text(&p.street_code)
                    .text(&p.address)
                    .text(&p.employer_uscc)
                    .text(p.si_status.code())
                    .text(p.marital_status.code())
                    .int(mark.line as i64)
                    .int(self.import_id)
                    .end_row();
            }
            self.copy(PERMIT_STATE_COPY, state).await?;
            return self.flush(page).await;
        }
        for (p, mark) in rows {
            page.text
                .text(&p.permit_no)
                .text(&p.id_number)
                .text(&p.name)
                .opt_text(p.phone.as_deref())
                .opt_text(p.email.as_deref())
                .text(&p.district_code)
                .text(&p.street_code)
                .text(&p.address)
                .date(p.valid_until)
                .text(p.status.code())
                .text(&p.employer_uscc)
                .text(p.si_status.code())
                .text(p.marital_status.code())
                .int(mark.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    /// C5: a row for a cancelled permit updates its contact fields only.
    /// Rare (cancelled permits only), so arrays rather than a staging table.
    pub async fn update_contacts(&mut self, rows: &[ContactUpdate]) -> Result<()> {
        let nos: Vec<&str> = rows.iter().map(|r| r.permit_no.as_str()).collect();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let phones: Vec<Option<&str>> = rows.iter().map(|r| r.phone.as_deref()).collect();
        let emails: Vec<Option<&str>> = rows.iter().map(|r| r.email.as_deref()).collect();
        let lines: Vec<i64> = rows.iter().map(|r| r.mark.line as i64).collect();
        sqlx::query(
            "UPDATE permit_details p SET name = u.name, phone = u.phone, email = u.email, import_id = $5,
               import_line = u.line
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $6::bigint[])
                  AS u (permit_no, name, phone, email, line)
             WHERE p.permit_no = u.permit_no",
        )
        .bind(&nos)
        .bind(&names)
        .bind(&phones)
        .bind(&emails)
        .bind(self.import_id)
        .bind(&lines)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    pub async fn upsert_residence(&mut self, rows: &[ResidenceRow]) -> Result<()> {
        let mut page = self.page(Stage::Residence, rows.len(), 80).await?;
        for r in rows {
            page.text
                .text(&r.id_number)
                .date(r.visited_on)
                .text(&r.result)
                .text(&r.address)
                .text(&r.officer_id)
                .int(r.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    pub async fn upsert_social_insurance(&mut self, rows: &[SocialInsuranceRow]) -> Result<()> {
        let mut page = self.page(Stage::SocialInsurance, rows.len(), 80).await?;
        for r in rows {
            page.text
                .text(&r.id_number)
                .text(&r.month)
                .text(&r.status)
                .text(&r.employer_uscc)
                .text(&r.employer_name)
                .int(r.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    pub async fn upsert_civil_status(&mut self, rows: &[CivilStatusRow]) -> Result<()> {
        let mut page = self.page(Stage::CivilStatus, rows.len(), 40).await?;
        for r in rows {
            page.text
                .text(&r.id_number)
                .text(&r.marital_status)
                .opt_date(r.as_of)
                .int(r.line as i64)
                .int(self.import_id)
                .end_row();
        }
        self.flush(page).await
    }

    pub async fn commit(mut self, counts: ImportCounts) -> Result<()> {
        sqlx::query(
            "UPDATE imports SET rows_read = $1, rows_imported = $2, rows_rejected = $3 WHERE import_id = $4",
        )
        .bind(counts.rows_read as i64)
        .bind(counts.rows_imported as i64)
        .bind(counts.rows_rejected as i64)
        .bind(self.import_id)
        .execute(&mut self.conn)
        .await?;
        // Initial loads: the key, built once the rows are in.
        for (stage, direct) in &self.direct {
            if *direct {
                for &statement in stage.add_key() {
                    sqlx::query(statement).execute(&mut self.conn).await?;
                }
            }
        }
        // ANALYZE inside the transaction samples its own new rows too.
        for (stage, n) in &self.upserted {
            if *n >= ANALYZE_AFTER_ROWS {
                sqlx::query(stage.analyze()).execute(&mut self.conn).await?;
                tracing::debug!(table = stage.table(), rows = n, "statistics refreshed");
            }
        }
        if let Some(d) = crate::faults::delay(crate::faults::Delay::PgImport) {
            tokio::time::sleep(d).await;
        }
        sqlx::query("COMMIT").execute(&mut self.conn).await?;
        let _ = self.conn.close().await;
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<()> {
        sqlx::query("ROLLBACK").execute(&mut self.conn).await?;
        let _ = self.conn.close().await;
        Ok(())
    }
}

/// The final decisions written for each cycle of a page (`$1` permits,
/// `$2` their valid_until) and what became of each: the facts C8 needs,
/// with the cycle's place in the page. Two arms, as the events of held
/// and unheld runs are in two partial indexes.
const CYCLE_DECISIONS: &str = "SELECT u.i, FALSE, NULL::boolean,
            EXISTS (SELECT 1 FROM event_reverts v WHERE v.event_id = e.event_id AND v.undone)
       FROM UNNEST($1::text[], $2::date[]) WITH ORDINALITY AS u (permit_no, valid_until, i)
       JOIN events e ON e.permit_no = u.permit_no AND e.valid_until = u.valid_until
        AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND NOT e.held
     UNION ALL
     SELECT u.i, TRUE, x.applied,
            EXISTS (SELECT 1 FROM event_reverts v WHERE v.event_id = e.event_id AND v.undone)
       FROM UNNEST($1::text[], $2::date[]) WITH ORDINALITY AS u (permit_no, valid_until, i)
       JOIN events e ON e.permit_no = u.permit_no AND e.valid_until = u.valid_until
        AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held
       LEFT JOIN event_releases x ON x.event_id = e.event_id";

/// The run on PostgreSQL: reads on the run's own connection, each page's
/// writes in a transaction of their own (see the module doc).
pub struct PgRunTx {
    /// Detached from the pool (see [`PgDb::detached`]).
    conn: PgConnection,
    /// For the page reader's connection ([`PgRunTx::event_pages`]).
    pool: PgPool,
    /// `run --dry-run`: `conn` holds one read-only snapshot.
    dry_run: bool,
    pub run: RunRecord,
    owner: String,
}

/// Checks, inside `tx`, that this process still owns the run (its fencing
/// token is on the row), and locks the row until commit, so a takeover
/// waits for this page and this page's successor sees it.
async fn fence(tx: &mut PgConnection, run: &RunRecord, owner: &str, now: &str) -> Result<()> {
    let owned = sqlx::query("UPDATE runs SET heartbeat_at = $3 WHERE run_id = $1 AND owner = $2")
        .bind(run.run_id)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if owned != 1 {
        return Err(Error::Runtime(anyhow::anyhow!(
            "run {} for {} was taken over by another process (this one lost the job lock); stopping without writing",
            run.run_id,
            run.as_of
        )));
    }
    Ok(())
}

impl PgRunTx {
    /// [`crate::db::RunTx::event_pages`]: a task reads the pages over a
    /// connection of its own, at most one page ahead of the writer. A
    /// run's pages commit one by one and the reader reads what is
    /// committed, which for its pages is what the run found (see there);
    /// a dry run's reader imports the dry run's snapshot.
    pub async fn event_pages(
        &mut self,
        bounds: CandidateBounds,
        limit: u32,
        make: MakeEvents,
    ) -> Result<EventPageReader> {
        let mut conn = self.pool.acquire().await?.detach();
        if self.dry_run {
            let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut self.conn)
                .await?;
            // SET TRANSACTION SNAPSHOT takes a literal, not a parameter;
            // the server's snapshot names are hex digits and dashes.
            if !snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return Err(Error::Runtime(anyhow::anyhow!(
                    "internal: unexpected snapshot name {snapshot:?}"
                )));
            }
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut conn)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET TRANSACTION SNAPSHOT '{snapshot}'"
            )))
            .execute(&mut conn)
            .await?;
        }
        let (send, pages) = tokio::sync::mpsc::channel(1);
        let reader = tokio::spawn(async move {
            if let Err(e) = read_event_pages(&mut conn, bounds, limit, make, &send).await {
                let _ = send.send(Err(e)).await;
            }
        });
        Ok(EventPageReader::new(pages, reader))
    }

    /// Same rows and order as SQLite's, read the same way: a page of the
    /// narrow `permit_state`, then each of its permits' details by key, as
    /// SQLite's `CROSS JOIN` does. The `OFFSET 0` keeps PostgreSQL from
    /// flattening that `LATERAL` look-up into a join, which it planned as a
    /// merge join walking `permit_details`' key from its first entry for
    /// every page (at 1M permits, all the pages of the due read 0.45 s
    /// against 0.24–0.30 s; of the candidates 1.4–1.6 s against
    /// 0.4–0.6 s). The decided probe is a
    /// `LIMIT 1` look-up of the events key rather than `EXISTS`: PostgreSQL
    /// may plan an `EXISTS` as a hash of the whole events table, rebuilt
    /// for every page (measured: 0.2 s a page at 250,000 events).
    pub async fn due_permits(
        &mut self,
        from: NaiveDate,
        to: NaiveDate,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DuePermit>> {
        let rows = sqlx::query(
            "SELECT p.permit_no, d.id_number, p.valid_until, d.employer_uscc, d.si_status, d.marital_status
             FROM (SELECT permit_no, valid_until FROM permit_state
                   WHERE permit_no > $1 AND status = 'active' AND valid_until BETWEEN $2 AND $3
                   ORDER BY permit_no LIMIT $4) p
             CROSS JOIN LATERAL (SELECT id_number, employer_uscc, si_status, marital_status
                                 FROM permit_details WHERE permit_no = p.permit_no OFFSET 0) d
             ORDER BY p.permit_no",
        )
        .bind(after.unwrap_or(""))
        .bind(from)
        .bind(to)
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await?;
        let mut page = rows
            .iter()
            .map(|r| {
                Ok(DuePermit {
                    permit_no: r.try_get(0)?,
                    id_number: r.try_get(1)?,
                    valid_until: r.try_get(2)?,
                    employer_uscc: r.try_get(3)?,
                    si_status: stored(r.try_get(4)?)?,
                    marital_status: stored(r.try_get(5)?)?,
                    decisions: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let nos: Vec<&str> = page.iter().map(|p| p.permit_no.as_str()).collect();
        let valid_until: Vec<NaiveDate> = page.iter().map(|p| p.valid_until).collect();
        let found: Vec<(i64, bool, Option<bool>, bool)> = sqlx::query_as(CYCLE_DECISIONS)
            .bind(&nos)
            .bind(&valid_until)
            .fetch_all(&mut self.conn)
            .await?;
        drop(nos);
        for (i, held, released, undone) in found {
            // WITH ORDINALITY counts from 1.
            if let Some(p) = usize::try_from(i - 1).ok().and_then(|i| page.get_mut(i)) {
                p.decisions.push(CycleDecision {
                    held,
                    released,
                    undone,
                });
            }
        }
        Ok(page)
    }

    /// One query per feed for each chunk of holders, by key (PostgreSQL
    /// keeps one row per key: R2 was applied at import).
    ///
    /// The holders go in key order, and each chunk's query is bounded by
    /// its first and last key as well as listing them: whatever plan the
    /// server picks for a chunk (index probes, or a scan where the chunk's
    /// holders are dense), it reads only that chunk's slice of the table,
    /// so a night reads each feed table at most once in all. With the
    /// list alone, the server planned a chunk of 10,000 holders as a scan
    /// of the whole table (measured at 1,000,000 permits: 190 ms a chunk
    /// of social insurance, against 30–46 ms bounded), and the number of
    /// chunks grows with the register.
    pub async fn feed_evidence(
        &mut self,
        id_numbers: &[&str],
        b: &EvidenceBounds,
        sink: &mut (dyn EvidenceSink + Send),
    ) -> Result<()> {
        let mut ids = id_numbers.to_vec();
        ids.sort_unstable();
        ids.dedup();
        for ids in ids.chunks(10_000) {
            let (first, last) = (ids[0], ids[ids.len() - 1]);
            let rows = sqlx::query(
                "SELECT id_number, visited_on, result FROM residence
                 WHERE id_number BETWEEN $4 AND $5 AND id_number = ANY($1)
                   AND visited_on BETWEEN $2 AND $3",
            )
            .bind(ids)
            .bind(b.visited_from)
            .bind(b.visited_to)
            .bind(first)
            .bind(last)
            .fetch_all(&mut self.conn)
            .await?;
            for r in rows {
                let id: &str = r.try_get(0)?;
                sink.residence(id, r.try_get(1)?, r.try_get(2)?);
            }
            let rows = sqlx::query(
                "SELECT id_number, month, status, employer_uscc FROM social_insurance
                 WHERE id_number BETWEEN $4 AND $5 AND id_number = ANY($1)
                   AND month BETWEEN $2 AND $3",
            )
            .bind(ids)
            .bind(&b.month_from)
            .bind(&b.month_to)
            .bind(first)
            .bind(last)
            .fetch_all(&mut self.conn)
            .await?;
            for r in rows {
                let id: &str = r.try_get(0)?;
                sink.payment(id, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            }
            let rows = sqlx::query(
                "SELECT id_number, marital_status, as_of FROM civil_status
                 WHERE id_number BETWEEN $2 AND $3 AND id_number = ANY($1)",
            )
            .bind(ids)
            .bind(first)
            .bind(last)
            .fetch_all(&mut self.conn)
            .await?;
            for r in rows {
                let id: &str = r.try_get(0)?;
                sink.civil(id, r.try_get(1)?, r.try_get(2)?);
            }
        }
        Ok(())
    }

    /// Writes a page's events, notices and permit changes and commits them
    /// together (R7, R8): one statement each, whatever the page size.
    pub async fn write(&mut self, batch: &RunBatch) -> Result<()> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let ev = &batch.events;
        let permit_nos: Vec<&str> = ev.iter().map(|e| e.permit_no.as_str()).collect();
        let id_numbers: Vec<&str> = ev.iter().map(|e| e.id_number.as_str()).collect();
        let kinds: Vec<&str> = ev.iter().map(|e| e.kind.code()).collect();
        let reasons: Vec<&str> = ev.iter().map(|e| e.reasons.code()).collect();
        let valid_until: Vec<NaiveDate> = ev.iter().map(|e| e.valid_until).collect();
        let new_valid_until: Vec<Option<NaiveDate>> =
            ev.iter().map(|e| e.new_valid_until).collect();
        let visited_on: Vec<Option<NaiveDate>> =
            ev.iter().map(|e| e.residence_visited_on).collect();
        let residence_result: Vec<Option<&str>> =
            ev.iter().map(|e| e.residence_result.as_deref()).collect();
        let si_month: Vec<Option<&str>> = ev.iter().map(|e| e.si_month.as_deref()).collect();
        let si_status: Vec<Option<&str>> = ev.iter().map(|e| e.si_status.as_deref()).collect();
        let si_employer: Vec<Option<&str>> =
            ev.iter().map(|e| e.si_employer_uscc.as_deref()).collect();
        let marital: Vec<Option<&str>> = ev.iter().map(|e| e.marital_status.as_deref()).collect();
        let prior: Vec<Option<&str>> = ev
            .iter()
            .map(|e| e.prior_status.map(|s| s.code()))
            .collect();
        let channels: Vec<&str> = ev.iter().map(|e| e.notice.channel.code()).collect();
        let recipients: Vec<&str> = ev.iter().map(|e| e.notice.recipient.as_str()).collect();
        let messages: Vec<&str> = ev.iter().map(|e| e.notice.message.as_str()).collect();
        let statuses: Vec<&str> = ev.iter().map(|e| e.notice.status.code()).collect();
        let at = batch.decided_at.as_str();
        let next_attempt: Vec<Option<&str>> = ev
            .iter()
            .map(|e| (e.notice.status == NoticeStatus::Queued).then_some(at))
            .collect();
        // R7/R3 effects: a new valid_until or a new status per permit.
        let (mut eff_nos, mut eff_vu, mut eff_status) = (Vec::new(), Vec::new(), Vec::new());
        for e in ev {
            match e.effect {
                Effect::Extend(to) => {
                    eff_nos.push(e.permit_no.as_str());
                    eff_vu.push(Some(to));
                    eff_status.push(None);
                }
                Effect::SetStatus(s) => {
                    eff_nos.push(e.permit_no.as_str());
                    eff_vu.push(None);
                    eff_status.push(Some(s.code()));
                }
                Effect::None => {}
            }
        }

        let mut tx = self.conn.begin().await?;
        fence(&mut tx, &self.run, &self.owner, at).await?;
        // Ids are max + 1 in page order (the job lock makes this the only
        // writer): the same ids as SQLite for the same inputs. A held run
        // (the brake) writes its events only; resumed after a crash, it skips
        // those a committed page already holds.
        sqlx::query(if batch.held {
            "INSERT INTO events (event_id, run_id, as_of, permit_no, id_number, kind, reasons, valid_until,
               new_valid_until, residence_visited_on, residence_result, si_month, si_status,
               si_employer_uscc, marital_status, decided_at, prior_status, held)
             SELECT (SELECT coalesce(max(event_id), 0) FROM events) + u.ord, $1, $2, u.permit_no,
               u.id_number, u.kind, u.reasons, u.valid_until, u.new_valid_until, u.visited_on,
               u.residence_result, u.si_month, u.si_status, u.si_employer, u.marital, $3, u.prior, true
             FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::date[], $9::date[],
                         $10::date[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                         $16::text[])
                  WITH ORDINALITY AS u (permit_no, id_number, kind, reasons, valid_until, new_valid_until,
                         visited_on, residence_result, si_month, si_status, si_employer, marital, prior,
                         ord)
             ON CONFLICT DO NOTHING"
        } else {
            "INSERT INTO events (event_id, run_id, as_of, permit_no, id_number, kind, reasons, valid_until,
               new_valid_until, residence_visited_on, residence_result, si_month, si_status,
               si_employer_uscc, marital_status, decided_at, prior_status)
             SELECT (SELECT coalesce(max(event_id), 0) FROM events) + u.ord, $1, $2, u.permit_no,
               u.id_number, u.kind, u.reasons, u.valid_until, u.new_valid_until, u.visited_on,
               u.residence_result, u.si_month, u.si_status, u.si_employer, u.marital, $3, u.prior
             FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::date[], $9::date[],
                         $10::date[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                         $16::text[])
                  WITH ORDINALITY AS u (permit_no, id_number, kind, reasons, valid_until, new_valid_until,
                         visited_on, residence_result, si_month, si_status, si_employer, marital, prior,
                         ord)"
        })
        .bind(batch.run_id)
        .bind(batch.as_of)
        .bind(at)
        .bind(&permit_nos)
        .bind(&id_numbers)
        .bind(&kinds)
        .bind(&reasons)
        .bind(&valid_until)
        .bind(&new_valid_until)
        .bind(&visited_on)
        .bind(&residence_result)
        .bind(&si_month)
        .bind(&si_status)
        .bind(&si_employer)
        .bind(&marital)
        .bind(&prior)
        .execute(&mut *tx)
        .await?;
        if batch.held {
            tx.commit().await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO notifications (notification_id, run_id, as_of, permit_no, cycle_valid_until, kind,
               channel, recipient, message, status, next_attempt_at, created_at)
             SELECT (SELECT coalesce(max(notification_id), 0) FROM notifications) + u.ord, $1, $2,
               u.permit_no, u.valid_until, u.kind, u.channel, u.recipient, u.message, u.status,
               u.next_attempt_at, $3
             FROM UNNEST($4::text[], $5::date[], $6::text[], $7::text[], $8::text[], $9::text[],
                         $10::text[], $11::text[])
                  WITH ORDINALITY AS u (permit_no, valid_until, kind, channel, recipient, message, status,
                         next_attempt_at, ord)",
        )
        .bind(batch.run_id)
        .bind(batch.as_of)
        .bind(at)
        .bind(&permit_nos)
        .bind(&valid_until)
        .bind(&kinds)
        .bind(&channels)
        .bind(&recipients)
        .bind(&messages)
        .bind(&statuses)
        .bind(&next_attempt)
        .execute(&mut *tx)
        .await?;
        if !eff_nos.is_empty() {
            sqlx::query(
                "UPDATE permit_state p SET valid_until = coalesce(u.valid_until, p.valid_until),
                   status = coalesce(u.status, p.status)
                 FROM UNNEST($1::text[], $2::date[], $3::text[]) AS u (permit_no, valid_until, status)
                 WHERE p.permit_no = u.permit_no",
            )
            .bind(&eff_nos)
            .bind(&eff_vu)
            .bind(&eff_status)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(d) = crate::faults::delay(crate::faults::Delay::PgPage) {
            tokio::time::sleep(d).await;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks the run held by the safety brake (if this process still owns
    /// it), before it writes any event.
    pub async fn hold(&mut self, why: &str, now: &str) -> Result<()> {
        let mut tx = self.conn.begin().await?;
        fence(&mut tx, &self.run, &self.owner, now).await?;
        sqlx::query("UPDATE runs SET brake = $1 WHERE run_id = $2")
            .bind(why)
            .bind(self.run.run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.run.brake = Some(why.to_string());
        Ok(())
    }

    /// Marks the run completed, or held if the brake held it (if this
    /// process still owns it).
    pub async fn complete(
        mut self,
        pending: u64,
        now: &str,
        duration: std::time::Duration,
    ) -> Result<()> {
        let mut tx = self.conn.begin().await?;
        fence(&mut tx, &self.run, &self.owner, now).await?;
        sqlx::query(
            "UPDATE runs SET status = $4, finished_at = $1, pending = $2, duration_secs = $5 \
             WHERE run_id = $3",
        )
        .bind(now)
        .bind(pending as i64)
        .bind(self.run.run_id)
        .bind(if self.run.brake.is_some() {
            "held"
        } else {
            "completed"
        })
        .bind(duration.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let _ = self.conn.close().await;
        Ok(())
    }

    /// Pages already committed stay: the next run for this `as_of` resumes
    /// after them. A page in flight was rolled back when its transaction
    /// was dropped.
    pub async fn rollback(self) -> Result<()> {
        Ok(())
    }
}

/// The body of [`PgRunTx::event_pages`]'s task: the run's candidates, a
/// page at a time in `permit_no` order (active or suspended permits with
/// `valid_until <= to`), each made into its events. The same rows and
/// order as SQLite's (permit_no is COLLATE "C"), read the same way
/// (see [`PgRunTx::due_permits`]), so pages, and so ids, come out the same.
async fn read_event_pages(
    conn: &mut PgConnection,
    bounds: CandidateBounds,
    limit: u32,
    mut make: MakeEvents,
    send: &tokio::sync::mpsc::Sender<EventPage>,
) -> Result<()> {
    let mut after = String::new();
    loop {
        let rows = sqlx::query(
            "SELECT p.permit_no, d.id_number, d.name, d.phone, d.email, d.district_code, d.street_code,
                    d.address, p.valid_until, p.status, d.employer_uscc, d.si_status, d.marital_status
             FROM (SELECT permit_no, valid_until, status FROM permit_state
                   WHERE permit_no > $1
                     AND ((status = 'active' AND valid_until <= $2)
                          OR (status = 'suspended' AND valid_until < $4))
                   ORDER BY permit_no LIMIT $3) p
             CROSS JOIN LATERAL (SELECT id_number, name, phone, email, district_code, street_code,
                                        address, employer_uscc, si_status, marital_status
                                 FROM permit_details WHERE permit_no = p.permit_no OFFSET 0) d
             ORDER BY p.permit_no",
        )
        .bind(&after)
        .bind(bounds.active_to)
        .bind(i64::from(limit))
        .bind(bounds.suspended_before)
        .fetch_all(&mut *conn)
        .await?;
        let page = rows
            .iter()
            .map(|r| {
                Ok(Candidate {
                    permit: PermitRow::from_row(r)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.permit.permit_no.clone();
        let read = page.len();
        let events = make(page)?;
        if send.send(Ok((read, events))).await.is_err() {
            // The run stopped (an error on the writer's side).
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_framing_characters_and_writes_nulls() {
        let mut c = CopyText::with_capacity(64);
        c.text("a\tb\\c\nd\re")
            .opt_text(None)
            .date(NaiveDate::from_ymd_opt(2026, 2, 3).expect("date"))
            .text("上海")
            .end_row();
        c.text("x").end_row();
        assert_eq!(
            String::from_utf8(c.buf).expect("utf8"),
            "a\\tb\\\\c\\nd\\re\t\\N\t2026-02-03\t上海\nx\n"
        );
    }
}
