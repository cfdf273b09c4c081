//! SQLite backend: the embedded default. WAL, a busy timeout, `BEGIN
//! IMMEDIATE` for every write transaction (a deferred one that reads then
//! writes fails with SQLITE_BUSY without waiting, sqlx #451), multi-row
//! statements sized under the bind limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row, Sqlite, SqlitePool, Transaction};

use super::rows::*;
use super::{JobLock, MakeEvents};
use crate::domain::PermitStatus;
use crate::error::{Error, Result};

/// Runs `f` on the connection's raw SQLite handle through rusqlite, inside
/// whatever transaction sqlx has open on it. Bulk paths (imports, the run's
/// writes and reads, exports) use this: one prepared statement stepped per
/// row costs about a microsecond, where sqlx's multi-row statements spent
/// most of their time building SQL text and argument buffers (measured:
/// docs/benchmarks.md).
async fn with_raw<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T> {
    let mut handle = conn.lock_handle().await?;
    let ptr = handle.as_raw_handle();
    // SAFETY: `handle` keeps sqlx's worker away from this connection until it
    // is dropped, and the wrapper does not own the handle (it never closes
    // it); the wrapper and its statements are dropped before `handle`.
    let raw = unsafe { rusqlite::Connection::from_handle(ptr.as_ptr()) }.map_err(raw_err)?;
    let out = f(&raw);
    drop(raw);
    drop(handle);
    out.map_err(raw_err)
}

/// The error a scoped helper thread ended with, if any (its panic is one).
fn thread_error(joined: std::thread::Result<Result<()>>, thread: &str) -> Option<Error> {
    match joined {
        Ok(r) => r.err(),
        Err(_) => Some(Error::Runtime(anyhow::anyhow!(
            "internal: {thread} panicked"
        ))),
    }
}

fn raw_err(e: rusqlite::Error) -> Error {
    Error::Runtime(anyhow::anyhow!("database error: {e}"))
}

/// Dates are stored as `YYYY-MM-DD` text.
fn raw_date(row: &rusqlite::Row, i: usize) -> rusqlite::Result<NaiveDate> {
    let s: String = row.get(i)?;
    NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn raw_opt_date(row: &rusqlite::Row, i: usize) -> rusqlite::Result<Option<NaiveDate>> {
    let s: Option<String> = row.get(i)?;
    s.map(|s| {
        NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn raw_permit(r: &rusqlite::Row) -> rusqlite::Result<PermitRow> {
    Ok(PermitRow {
        permit_no: r.get(0)?,
        id_number: r.get(1)?,
        name: r.get(2)?,
        phone: r.get(3)?,
        email: r.get(4)?,
        district_code: r.get(5)?,
        street_code: r.get(6)?,
        address: r.get(7)?,
        valid_until: raw_date(r, 8)?,
        status: r.get(9)?,
        employer_uscc: r.get(10)?,
        si_status: r.get(11)?,
        marital_status: r.get(12)?,
    })
}

/// Page cache of a pooled connection, KiB (negative: `PRAGMA cache_size`).
macro_rules! pool_cache {
    () => {
        "-65536"
    };
}

macro_rules! run_columns {
    () => {
        "run_id, as_of, status, attempts, started_at, finished_at, pending, brake, import_mark, \
         duration_secs"
    };
}

#[derive(Clone)]
pub struct SqliteDb {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteDb {
    pub async fn open(path: PathBuf) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::io(
                    format!("cannot create database directory {}", dir.display()),
                    e,
                )
            })?;
        }
        // Created owner-only before SQLite opens it: SQLite gives its `-wal`
        // and `-shm` files the database file's mode, and the first import
        // writes ID numbers into the WAL before any chmod could run.
        create_database_file(&path)?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .page_size(16384)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(60))
            .foreign_keys(true)
            // 64 MiB of page cache per connection (a run's transaction
            // takes less: RUN_CACHE), which keeps the whole process under
            // 500 MB at city scale (docs/benchmarks.md).
            .pragma("cache_size", pool_cache!())
            // No `temp_store` pragma: temporary storage (statement journals,
            // sorts too big for the cache) stays in files, SQLite's default.
            // In memory, migration 4 over a 10M-permit database would take
            // 1.2 GB (docs/benchmarks.md).
            //
            // As on PostgreSQL: a first night or an import at city scale
            // legitimately runs statements for seconds (a migration, the
            // run's commit); sqlx's default would log each at WARN with its
            // whole SQL text.
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| {
                Error::Runtime(anyhow::anyhow!(
                    "cannot open SQLite database {}: {e}",
                    path.display()
                ))
            })?;
        // sqlx takes no lock around SQLite migrations (it does on
        // PostgreSQL): processes started together on a new file would each
        // apply migration 1. A file lock makes the later ones wait and then
        // find the migrations applied.
        let migrate_lock = lock_file(&sibling(&path, ".migrate.lock")).await?;
        let migrated = sqlx::migrate!("migrations/sqlite").run(&pool).await;
        drop(migrate_lock);
        migrated?;
        restrict_permissions(&path);
        Ok(SqliteDb { pool, path })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn lock_jobs(&self, on_wait: impl FnOnce()) -> Result<JobLock> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file = open_lock_file(&lock_path)?;
        match file.try_lock() {
            Ok(()) => Ok(JobLock::File(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait();
                let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                    .await
                    .map_err(|e| Error::Runtime(anyhow::anyhow!("lock task failed: {e}")))?
                    .map_err(|e| Error::io(format!("cannot lock {}", lock_path.display()), e))?;
                Ok(JobLock::File(file))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock {}", lock_path.display()), e))
            }
        }
    }

    pub async fn find_import(&self, feed: &str, sha256: &str) -> Result<Option<ImportRecord>> {
        let row = sqlx::query(
            "SELECT import_id, file_name, imported_at, rows_read, rows_imported, rows_rejected
             FROM imports WHERE feed = ? AND sha256 = ?",
        )
        .bind(feed)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| import_record(&r)).transpose()
    }

    pub async fn begin_import(
        &self,
        feed: &str,
        file_name: &str,
        sha256: &str,
        delivery: crate::feeds::Delivery,
        imported_at: &str,
    ) -> Result<SqliteImportTx> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let import_id: i64 = sqlx::query_scalar(
            "INSERT INTO imports (feed, file_name, sha256, imported_at, delivery) VALUES (?, ?, ?, ?, ?) RETURNING import_id",
        )
        .bind(feed)
        .bind(file_name)
        .bind(sha256)
        .bind(imported_at)
        .bind(delivery.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let feed_table = match feed {
            "residence" => Some(FeedTable::Residence),
            "social-insurance" => Some(FeedTable::SocialInsurance),
            "civil-status" => Some(FeedTable::CivilStatus),
            _ => None,
        };
        let first_seq = match feed_table {
            Some(t) => sqlx::query_scalar(t.max_seq()).fetch_one(&mut *tx).await?,
            None => 0,
        };
        Ok(SqliteImportTx {
            tx,
            import_id,
            feed_table,
            first_seq,
        })
    }

    pub async fn latest_completed_run(&self) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE status = 'completed' ORDER BY as_of DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_record(&r)).transpose()
    }

    /// The live (not discarded or reverted) run for `as_of`.
    pub async fn run_for(&self, as_of: NaiveDate) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE as_of = ? AND status <> 'discarded' AND status <> 'reverted'"
        ))
        .bind(as_of)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_record(&r)).transpose()
    }

    pub async fn run_by_id(&self, run_id: i64) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE run_id = ?"
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_record(&r)).transpose()
    }

    /// The oldest run the safety brake holds, if any.
    pub async fn held_run(&self) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE status = 'held' ORDER BY run_id LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_record(&r)).transpose()
    }

    /// The import mark of the latest completed run (0 when none has one).
    pub async fn completed_import_mark(&self) -> Result<i64> {
        let mark: Option<i64> = sqlx::query_scalar(
            "SELECT import_mark FROM runs WHERE status = 'completed' ORDER BY run_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Ok(mark.unwrap_or(0))
    }

    /// Each feed's newest import and its two newest snapshot imports,
    /// newest first within a feed.
    pub async fn latest_imports(&self) -> Result<Vec<FeedImport>> {
        let rows = sqlx::query(LATEST_IMPORTS).fetch_all(&self.pool).await?;
        rows.iter().map(feed_import).collect()
    }

    pub async fn begin_run(
        &self,
        as_of: NaiveDate,
        now: &str,
        import_mark: i64,
    ) -> Result<SqliteRunTx> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(RUN_CACHE).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO runs (as_of, status, started_at, import_mark) VALUES (?1, 'running', ?2, ?3)
             ON CONFLICT (as_of) WHERE status <> 'discarded' AND status <> 'reverted'
             DO UPDATE SET attempts = attempts + 1,
               started_at = excluded.started_at, import_mark = excluded.import_mark
             WHERE runs.status = 'running'",
        )
        .bind(as_of)
        .bind(now)
        .bind(import_mark)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE as_of = ? AND status <> 'discarded' AND status <> 'reverted'"
        ))
        .bind(as_of)
        .fetch_one(&mut *tx)
        .await?;
        let run = run_record(&row)?;
        Ok(SqliteRunTx {
            tx,
            run,
            path: self.path.clone(),
        })
    }

    /// `run --dry-run`: the run's reads without the run. A deferred
    /// transaction that only ever reads (it takes no write lock and creates
    /// no runs row); the caller rolls it back. `run` is what the run would
    /// be, never stored.
    pub async fn begin_dry_run(&self, run: RunRecord) -> Result<SqliteRunTx> {
        let tx = self.pool.begin().await?;
        Ok(SqliteRunTx {
            tx,
            run,
            path: self.path.clone(),
        })
    }

    /// A held run's events in the order they were written.
    pub async fn held_events(&self, run_id: i64) -> Result<Vec<HeldEvent>> {
        let mut conn = self.pool.acquire().await?;
        with_raw(&mut conn, |c| {
            let mut stmt = c.prepare(
                "SELECT event_id, permit_no, kind, reasons, valid_until, new_valid_until
                 FROM events WHERE run_id = ?1 AND held = 1 ORDER BY event_id",
            )?;
            let rows = stmt.query_map([run_id], |r| {
                Ok(HeldEvent {
                    event_id: r.get(0)?,
                    permit_no: r.get(1)?,
                    kind: r.get(2)?,
                    reasons: r.get(3)?,
                    valid_until: raw_date(r, 4)?,
                    new_valid_until: raw_opt_date(r, 5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// These permits as stored, by permit_no.
    pub async fn permits_by_no(&self, permit_nos: &[&str]) -> Result<HashMap<String, PermitRow>> {
        let mut conn = self.pool.acquire().await?;
        with_raw(&mut conn, |c| {
            let mut stmt = c.prepare(concat!(
                "SELECT permit_no, id_number, name, phone, email, district_code, street_code, address, ",
                "valid_until, status, employer_uscc, si_status, marital_status FROM permits WHERE permit_no = ?1"
            ))?;
            let mut out = HashMap::with_capacity(permit_nos.len());
            for no in permit_nos {
                let mut rows = stmt.query([no])?;
                if let Some(r) = rows.next()? {
                    out.insert(no.to_string(), raw_permit(r)?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Applies a held run (docs/rules.md, "Release and discard"): queues
    /// the notices and makes the permit changes of the items that have a
    /// notice, records what was done with each event, and marks the run
    /// completed — one transaction.
    /// `false` (nothing done) if the run is no longer held.
    pub async fn release_run(&self, run_id: i64, items: &[ReleaseItem], now: &str) -> Result<bool> {
        let Some(mut tx) = self
            .begin_run_transition(
                "UPDATE runs SET status = 'completed', released_at = ?2 WHERE run_id = ?1 AND status = 'held'",
                run_id,
                now,
            )
            .await?
        else {
            return Ok(false);
        };
        with_raw(&mut tx, |c| {
            let mut notice = c.prepare(
                "INSERT INTO notifications (run_id, as_of, permit_no, cycle_valid_until, kind, channel,
                 recipient, message, status, next_attempt_at, created_at)
                 SELECT ?1, as_of, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 FROM runs WHERE run_id = ?1",
            )?;
            let mut effects = EffectWriter::new(c)?;
            let mut release = c.prepare(
                "INSERT INTO event_releases (event_id, run_id, applied, released_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for item in items {
                if let Some(n) = &item.notice {
                    notice.execute(rusqlite::params![
                        run_id,
                        item.permit_no,
                        item.valid_until.to_string(),
                        item.kind,
                        n.channel,
                        n.recipient,
                        n.message,
                        n.status,
                        (n.status == "queued").then_some(now),
                        now,
                    ])?;
                    effects.apply(&item.permit_no, item.effect)?;
                }
                release.execute(rusqlite::params![
                    item.event_id,
                    run_id,
                    item.notice.is_some(),
                    now
                ])?;
            }
            Ok(())
        })
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Marks a held run discarded (its events void). `false` if it is not
    /// held.
    /// Opens a write transaction and moves run `run_id` on with `update`
    /// (`?1` the run, `?2` now, guarded by the status it must have): `None`,
    /// nothing done, when the run is not in that status.
    async fn begin_run_transition(
        &self,
        update: &'static str,
        run_id: i64,
        now: &str,
    ) -> Result<Option<Transaction<'static, Sqlite>>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let marked = sqlx::query(update)
            .bind(run_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if marked != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        Ok(Some(tx))
    }

    pub async fn discard_run(&self, run_id: i64, now: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE runs SET status = 'discarded', discarded_at = ?2 WHERE run_id = ?1 AND status = 'held'",
        )
        .bind(run_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The live register (active and suspended permits) and how many of
    /// them R3 would suspend and cancel at `as_of`: active with
    /// `valid_until < as_of`; active or suspended with `valid_until <
    /// cancel_before` (`None`: lapse_policy suspend, nothing cancelled).
    pub async fn lifecycle_counts(
        &self,
        as_of: NaiveDate,
        cancel_before: Option<NaiveDate>,
    ) -> Result<LifecycleCounts> {
        let row = sqlx::query(
            "SELECT count(*),
                    coalesce(sum(CASE WHEN ?2 IS NOT NULL AND valid_until < ?2 THEN 0
                                      WHEN status = 'active' AND valid_until < ?1 THEN 1 ELSE 0 END), 0),
                    coalesce(sum(CASE WHEN ?2 IS NOT NULL AND valid_until < ?2 THEN 1 ELSE 0 END), 0)
             FROM permit_state WHERE status <> 'cancelled'",
        )
        .bind(as_of.to_string())
        .bind(cancel_before.map(|d| d.to_string()))
        .fetch_one(&self.pool)
        .await?;
        Ok(LifecycleCounts {
            register: row.try_get::<i64, _>(0)?.max(0) as u64,
            suspend: row.try_get::<i64, _>(1)?.max(0) as u64,
            cancel: row.try_get::<i64, _>(2)?.max(0) as u64,
        })
    }

    /// The first run after `run_id` that is neither discarded nor reverted.
    pub async fn later_live_run(&self, run_id: i64) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE run_id > ? AND status <> 'discarded' AND status <> 'reverted'
              ORDER BY run_id LIMIT 1"
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_record(&r)).transpose()
    }

    /// The events of a completed run that took effect (applied by the run,
    /// or by its release), in the order they were written.
    pub async fn revert_events(&self, run: &RunRecord) -> Result<Vec<RevertEvent>> {
        let mut conn = self.pool.acquire().await?;
        let (as_of, run_id) = (run.as_of.to_string(), run.run_id);
        with_raw(&mut conn, |c| {
            let mut stmt = c.prepare(REVERT_EVENTS_SQLITE)?;
            let rows = stmt.query_map(rusqlite::params![as_of, run_id], |r| {
                Ok(RevertEvent {
                    event_id: r.get(0)?,
                    permit_no: r.get(1)?,
                    kind: r.get(2)?,
                    valid_until: raw_date(r, 3)?,
                    new_valid_until: raw_opt_date(r, 4)?,
                    prior_status: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// `autosign revert` in one transaction: marks the completed run
    /// reverted, withdraws its notices, sets back each item's permit if it
    /// is still as the run left it, and records what was done with each
    /// event. Nothing is done if the run is not completed or one of its
    /// notices was sent.
    pub async fn revert_run(
        &self,
        run: &RunRecord,
        items: &[RevertItem],
        now: &str,
    ) -> Result<RevertDone> {
        let (as_of, run_id) = (run.as_of.to_string(), run.run_id);
        let Some(mut tx) = self
            .begin_run_transition(
                "UPDATE runs SET status = 'reverted', reverted_at = ?2 WHERE run_id = ?1 AND status = 'completed'",
                run_id,
                now,
            )
            .await?
        else {
            return Ok(RevertDone::NotCompleted);
        };
        // The run's notices share its as_of: the as_of index finds them.
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE as_of = ?1 AND run_id = ?2 AND status = 'sent'",
        )
        .bind(as_of.as_str())
        .bind(run_id)
        .fetch_one(&mut *tx)
        .await?;
        if sent > 0 {
            tx.rollback().await?;
            return Ok(RevertDone::Sent(sent as u64));
        }
        let withdrawn = sqlx::query(
            "UPDATE notifications SET status = 'withdrawn', live = NULL, next_attempt_at = NULL
             WHERE as_of = ?1 AND run_id = ?2",
        )
        .bind(as_of.as_str())
        .bind(run_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let not_undone = with_raw(&mut tx, |c| {
            let mut restore = c.prepare(
                "UPDATE permit_state SET valid_until = ?2, status = ?3
                 WHERE permit_no = ?1 AND valid_until = ?4 AND status = ?5",
            )?;
            let mut record = c.prepare(
                "INSERT INTO event_reverts (event_id, run_id, undone, reverted_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut not_undone = Vec::new();
            for item in items {
                let undone = match &item.restore {
                    None => true,
                    Some(r) => {
                        restore.execute(rusqlite::params![
                            item.permit_no,
                            r.valid_until.to_string(),
                            r.status,
                            r.left_valid_until.to_string(),
                            r.left_status,
                        ])? == 1
                    }
                };
                if !undone {
                    not_undone.push(item.permit_no.clone());
                }
                record.execute(rusqlite::params![item.event_id, run_id, undone, now])?;
            }
            Ok(not_undone)
        })
        .await?;
        tx.commit().await?;
        Ok(RevertDone::Reverted {
            withdrawn,
            not_undone,
        })
    }

    pub async fn run_counts(&self, run_id: i64) -> Result<Vec<RunCount>> {
        let rows = sqlx::query(
            "SELECT e.kind, e.reasons, coalesce(n.channel, ''), count(*) AS n
             FROM events e LEFT JOIN notifications n
               ON n.permit_no = e.permit_no AND n.cycle_valid_until = e.valid_until AND n.kind = e.kind
              AND n.run_id = e.run_id
             WHERE e.as_of = (SELECT as_of FROM runs WHERE run_id = ?1) AND e.run_id = ?1
             GROUP BY e.kind, e.reasons, n.channel ORDER BY e.kind, e.reasons, n.channel",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RunCount {
                    kind: r.try_get(0)?,
                    reasons: r.try_get(1)?,
                    channel: r.try_get(2)?,
                    count: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Steps the query on this thread and hands the rows, a page at a time,
    /// to `each` on a second one (the CSV writing, masking and hashing
    /// overlap the reading on two cores); pages go back for reuse.
    pub async fn audit_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(&AuditCells<'_>) -> Result<()> + Send),
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut failed = None;
        with_raw(&mut conn, |c| {
            let (full, pages) = std::sync::mpsc::sync_channel::<CellPage>(2);
            let (give_back, spare) = std::sync::mpsc::channel::<CellPage>();
            std::thread::scope(|scope| {
                let writer = scope.spawn(move || -> Result<()> {
                    for mut page in pages {
                        for cells in page.rows() {
                            each(&cells)?;
                        }
                        page.clear();
                        let _ = give_back.send(page);
                    }
                    Ok(())
                });
                let read = (|| -> rusqlite::Result<()> {
                    let mut stmt = c.prepare(AUDIT_SELECT_RANGE)?;
                    let mut rows =
                        stmt.query(rusqlite::params![from.to_string(), to.to_string()])?;
                    let mut page = CellPage::default();
                    while let Some(r) = rows.next()? {
                        // Dates are stored as the export writes them
                        // (YYYY-MM-DD): the cells are the stored text, not
                        // parsed and formatted again.
                        page.push(&r.get::<_, i64>(0)?.to_string());
                        for i in 1..18 {
                            match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => page.push(""),
                                v => page.push(v.as_str().map_err(|e| {
                                    rusqlite::Error::FromSqlConversionFailure(
                                        i,
                                        v.data_type(),
                                        e.into(),
                                    )
                                })?),
                            }
                        }
                        if page.ends.len() >= CellPage::CELLS {
                            let next = spare.try_recv().unwrap_or_default();
                            if full.send(std::mem::replace(&mut page, next)).is_err() {
                                // The writer stopped: its error is reported.
                                return Ok(());
                            }
                        }
                    }
                    if !page.ends.is_empty() {
                        let _ = full.send(page);
                    }
                    Ok(())
                })();
                drop(full);
                failed = thread_error(writer.join(), "the export's writer thread");
                read
            })
        })
        .await?;
        failed.map_or(Ok(()), Err)
    }

    pub async fn events_for(&self, permit_no: &str) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(AUDIT_SELECT_PERMIT)
            .bind(permit_no)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_row).collect()
    }

    pub async fn notification_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(NotificationRow) -> Result<()> + Send),
    ) -> Result<()> {
        self.stream_range(
            NOTIFICATION_SELECT_RANGE,
            from,
            to,
            raw_notification_row,
            each,
        )
        .await
    }

    /// Streams the rows of an export query over an `as_of` range (?1, ?2)
    /// to `each`, stopping at the first error it returns.
    async fn stream_range<T>(
        &self,
        sql: &str,
        from: NaiveDate,
        to: NaiveDate,
        map: fn(&rusqlite::Row) -> rusqlite::Result<T>,
        each: &mut (dyn FnMut(T) -> Result<()> + Send),
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut failed = None;
        with_raw(&mut conn, |c| {
            let mut stmt = c.prepare(sql)?;
            let mut rows = stmt.query(rusqlite::params![from.to_string(), to.to_string()])?;
            while let Some(r) = rows.next()? {
                if let Err(e) = each(map(r)?) {
                    failed = Some(e);
                    break;
                }
            }
            Ok(())
        })
        .await?;
        failed.map_or(Ok(()), Err)
    }

    pub async fn notifications_for(&self, permit_no: &str) -> Result<Vec<NotificationRow>> {
        let rows = sqlx::query(NOTIFICATION_SELECT_PERMIT)
            .bind(permit_no)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(notification_row).collect()
    }

    pub async fn permit(&self, permit_no: &str) -> Result<Option<PermitRow>> {
        let row = sqlx::query(concat!(
            "SELECT permit_no, id_number, name, phone, email, district_code, street_code, address, ",
            "valid_until, status, employer_uscc, si_status, marital_status FROM permits WHERE permit_no = ?"
        ))
            .bind(permit_no)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| permit_row(&r)).transpose()
    }
}

/// Audit rows in transit from the reading thread to the writing one: the
/// cells' text back to back, and where each cell ends.
#[derive(Default)]
struct CellPage {
    text: String,
    ends: Vec<usize>,
}

impl CellPage {
    /// Cells a page holds before it is handed over (4,096 rows).
    const CELLS: usize = 18 * 4096;

    fn push(&mut self, cell: &str) {
        self.text.push_str(cell);
        self.ends.push(self.text.len());
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// The page's rows as [`AuditCells`].
    fn rows(&self) -> impl Iterator<Item = AuditCells<'_>> {
        self.ends
            .chunks_exact(18)
            .enumerate()
            .map(move |(r, ends)| {
                let mut start = if r == 0 { 0 } else { self.ends[r * 18 - 1] };
                std::array::from_fn(|i| {
                    let cell = &self.text[start..ends[i]];
                    start = ends[i];
                    cell
                })
            })
    }
}

/// Each feed's newest import (the brake's freshness check) and its two
/// newest snapshot imports (the row-drop check); the same text on both
/// backends.
pub(super) const LATEST_IMPORTS: &str =
    "SELECT import_id, feed, file_name, imported_at, rows_imported, delivery FROM (
       SELECT import_id, feed, file_name, imported_at, rows_imported, delivery,
              row_number() OVER (PARTITION BY feed ORDER BY import_id DESC) AS k,
              row_number() OVER (PARTITION BY feed, delivery ORDER BY import_id DESC) AS kd
       FROM imports) AS i WHERE k = 1 OR (delivery = 'snapshot' AND kd <= 2)
     ORDER BY feed, import_id DESC";

// The event's state (docs/rules.md, "The audit trail") comes from its run
// and, for a released run,
// from event_releases; the notice is the one its own run queued (a void
// event has none, though a later run may have queued one for the cycle).
macro_rules! audit_select {
    ($where:literal) => {
        concat!(
            "SELECT e.run_id, e.as_of, e.permit_no, e.id_number, e.kind, e.reasons, e.valid_until,
                    e.new_valid_until, e.residence_visited_on, e.residence_result, e.si_month, e.si_status,
                    e.si_employer_uscc, e.marital_status, n.channel, n.status, e.decided_at,
                    CASE WHEN r.status = 'reverted' AND EXISTS (SELECT 1 FROM event_reverts v
                              WHERE v.event_id = e.event_id AND v.undone = 1) THEN 'reverted'
                         WHEN e.held = 0 THEN 'applied' WHEN r.status = 'discarded' THEN 'void'
                         WHEN x.applied = 1 THEN 'applied'
                         WHEN r.status = 'completed' OR r.status = 'reverted' THEN 'not_applied'
                         ELSE 'held' END
             FROM events e JOIN runs r ON r.run_id = e.run_id
             LEFT JOIN event_releases x ON x.event_id = e.event_id
             LEFT JOIN notifications n
               ON n.permit_no = e.permit_no AND n.cycle_valid_until = e.valid_until AND n.kind = e.kind
              AND n.run_id = e.run_id
             WHERE ",
            $where,
            " ORDER BY e.as_of, e.permit_no,
               CASE e.kind WHEN 'SUSPENDED' THEN 1 WHEN 'CANCELLED' THEN 2 WHEN 'VISIT_CENTER' THEN 3 ELSE 4 END,
               e.event_id"
        )
    };
}
const AUDIT_SELECT_RANGE: &str = audit_select!("e.as_of BETWEEN ?1 AND ?2");
const AUDIT_SELECT_PERMIT: &str = audit_select!("e.permit_no = ?");

macro_rules! notification_select {
    ($where:literal) => {
        concat!(
            "SELECT notification_id, run_id, as_of, permit_no, cycle_valid_until, kind, channel, recipient,
                    status, attempts, next_attempt_at, last_error, provider_ref, created_at, sent_at, message
             FROM notifications WHERE ",
            $where,
            " ORDER BY as_of, permit_no, cycle_valid_until,
               CASE kind WHEN 'SUSPENDED' THEN 1 WHEN 'CANCELLED' THEN 2 WHEN 'VISIT_CENTER' THEN 3 ELSE 4 END"
        )
    };
}
const NOTIFICATION_SELECT_RANGE: &str = notification_select!("as_of BETWEEN ?1 AND ?2");
const NOTIFICATION_SELECT_PERMIT: &str = notification_select!("permit_no = ?");

/// A completed run's events in effect (applied, or applied by a release),
/// with the status a CANCELLED one found: recorded since migration 6, else
/// `suspended` when another run's SUSPENDED event of the cycle is in the
/// trail (C1), else `active`.
const REVERT_EVENTS_SQLITE: &str =
    "SELECT e.event_id, e.permit_no, e.kind, e.valid_until, e.new_valid_until,
       CASE WHEN e.kind <> 'CANCELLED' THEN NULL
            WHEN e.prior_status IS NOT NULL THEN e.prior_status
            WHEN EXISTS (SELECT 1 FROM events s WHERE s.permit_no = e.permit_no
                           AND s.valid_until = e.valid_until AND s.kind = 'SUSPENDED'
                           AND s.held = 0 AND s.run_id <> e.run_id) THEN 'suspended'
            ELSE 'active' END
     FROM events e LEFT JOIN event_releases x ON x.event_id = e.event_id
     WHERE e.as_of = ?1 AND e.run_id = ?2 AND (e.held = 0 OR x.applied = 1)
     ORDER BY e.event_id";

/// Whether the permit's current cycle has a final decision (C8) that
/// counts: an applied one, or one a release applied. A held or void event
/// does not close the cycle (it took no effect), nor one a revert undid (the probe
/// of event_reverts runs only for a cycle that has a decision).
macro_rules! decided_sqlite {
    () => {
        "(EXISTS (SELECT 1 FROM events e WHERE e.permit_no = p.permit_no AND e.valid_until = p.valid_until
                  AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held = 0
                  AND NOT EXISTS (SELECT 1 FROM event_reverts v WHERE v.event_id = e.event_id AND v.undone = 1))
          OR EXISTS (SELECT 1 FROM events e JOIN event_releases x ON x.event_id = e.event_id
                     WHERE e.permit_no = p.permit_no AND e.valid_until = p.valid_until
                       AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held = 1 AND x.applied = 1
                       AND NOT EXISTS (SELECT 1 FROM event_reverts v
                                       WHERE v.event_id = e.event_id AND v.undone = 1)))"
    };
}

/// Rows per multi-row INSERT of the run's writer (16 parameters an event:
/// far below SQLite's limit of 32,766).
const ROWS_PER_INSERT: usize = 64;
const _: () = assert!(ROWS_PER_INSERT * 16 <= 32_766);

const PERMIT_DETAILS_UPSERT: &str = "INSERT INTO permit_details (permit_no, id_number, name, phone,
    email, district_code, street_code, address, employer_uscc, si_status, marital_status, import_id,
    import_line, prior_valid_until, prior_status) VALUES ";
const PERMIT_DETAILS_ON_CONFLICT: &str = " ON CONFLICT (permit_no) DO UPDATE SET
    id_number = excluded.id_number, name = excluded.name, phone = excluded.phone,
    email = excluded.email, district_code = excluded.district_code,
    street_code = excluded.street_code, address = excluded.address,
    employer_uscc = excluded.employer_uscc, si_status = excluded.si_status,
    marital_status = excluded.marital_status, import_id = excluded.import_id,
    import_line = excluded.import_line, prior_valid_until = excluded.prior_valid_until,
    prior_status = excluded.prior_status";
const PERMIT_STATE_UPSERT: &str =
    "INSERT INTO permit_state (permit_no, valid_until, status) VALUES ";
const PERMIT_STATE_ON_CONFLICT: &str = " ON CONFLICT (permit_no) DO UPDATE SET
    valid_until = excluded.valid_until, status = excluded.status";
const EVENT_INSERT: &str = "INSERT INTO events (run_id, as_of, permit_no, id_number, kind, reasons,
    valid_until, new_valid_until, residence_visited_on, residence_result, si_month, si_status,
    si_employer_uscc, marital_status, decided_at, prior_status, held) VALUES ";
const NOTICE_INSERT: &str =
    "INSERT INTO notifications (run_id, as_of, permit_no, cycle_valid_until,
    kind, channel, recipient, message, status, next_attempt_at, created_at) VALUES ";

/// `head` followed by `rows` groups of `columns` anonymous parameters, each
/// group ending in the literal `tail` (e.g. `, 1` for a constant column).
fn multi_row_insert(head: &str, columns: usize, tail: &str, rows: usize) -> String {
    let mut group = String::from("(?");
    for _ in 1..columns {
        group.push_str(", ?");
    }
    group.push_str(tail);
    group.push(')');
    let mut sql = String::from(head);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&group);
    }
    sql
}

/// A run's permit changes (R3, R7), applied to the narrow `permit_state`
/// table (migration 5) by a run and by `release`.
struct EffectWriter<'c> {
    extend: rusqlite::Statement<'c>,
    status: rusqlite::Statement<'c>,
}

impl<'c> EffectWriter<'c> {
    fn new(c: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            extend: c.prepare("UPDATE permit_state SET valid_until = ?2 WHERE permit_no = ?1")?,
            status: c.prepare("UPDATE permit_state SET status = ?2 WHERE permit_no = ?1")?,
        })
    }

    fn apply(&mut self, permit_no: &str, effect: Effect) -> rusqlite::Result<()> {
        match effect {
            Effect::Extend(to) => {
                self.extend
                    .execute(rusqlite::params![permit_no, to.to_string()])?;
            }
            Effect::SetStatus(s) => {
                self.status
                    .execute(rusqlite::params![permit_no, s.code()])?;
            }
            Effect::None => {}
        }
        Ok(())
    }
}

/// Executes the multi-row INSERT (`head`, `columns`, `tail` as for
/// [`multi_row_insert`], then `end`, e.g. an upsert's ON CONFLICT clause)
/// for a chunk of `rows`, each bound by `bind` (with [`bind_row`]): a full
/// chunk's statement is prepared once and kept in `full`, a shorter last
/// chunk's for that chunk only.
fn insert_chunk<'c, T>(
    c: &'c rusqlite::Connection,
    full: &mut Option<rusqlite::Statement<'c>>,
    (head, columns, tail, end): (&str, usize, &str, &str),
    rows: &[T],
    mut bind: impl FnMut(&mut rusqlite::Statement<'c>, &mut usize, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let sql = || multi_row_insert(head, columns, tail, rows.len()) + end;
    let mut partial = None;
    let stmt = if rows.len() == ROWS_PER_INSERT {
        match full {
            Some(s) => s,
            None => full.insert(c.prepare(&sql())?),
        }
    } else {
        partial.insert(c.prepare(&sql())?)
    };
    let mut next = 0;
    for row in rows {
        bind(stmt, &mut next, row)?;
    }
    stmt.raw_execute()?;
    Ok(())
}

/// Binds one row's values at parameters `*next + 1 ..` of a multi-row
/// statement and moves `*next` past them.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    next: &mut usize,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    for v in values {
        *next += 1;
        stmt.raw_bind_parameter(*next, v)?;
    }
    Ok(())
}

/// An append-only feed table (migration 0003).
#[derive(Debug, Clone, Copy)]
enum FeedTable {
    Residence,
    SocialInsurance,
    CivilStatus,
}

impl FeedTable {
    fn max_seq(self) -> &'static str {
        match self {
            FeedTable::Residence => "SELECT coalesce(max(seq), 0) FROM residence",
            FeedTable::SocialInsurance => "SELECT coalesce(max(seq), 0) FROM social_insurance",
            FeedTable::CivilStatus => "SELECT coalesce(max(seq), 0) FROM civil_status",
        }
    }

    /// The key and line of the rows after seq ?1 (this import's), in order.
    fn keys_after(self) -> &'static str {
        match self {
            FeedTable::Residence => {
                "SELECT id_number, visited_on, line FROM residence WHERE seq > ?1 ORDER BY seq"
            }
            FeedTable::SocialInsurance => {
                "SELECT id_number, month, line FROM social_insurance WHERE seq > ?1 ORDER BY seq"
            }
            FeedTable::CivilStatus => {
                "SELECT id_number, '', line FROM civil_status WHERE seq > ?1 ORDER BY seq"
            }
        }
    }
}

/// One import's transaction.
pub struct SqliteImportTx {
    tx: Transaction<'static, Sqlite>,
    pub import_id: i64,
    /// The feed table this import appends to, and its highest seq before.
    feed_table: Option<FeedTable>,
    first_seq: i64,
}

impl SqliteImportTx {
    pub async fn lookup_permits(
        &mut self,
        permit_nos: &[&str],
    ) -> Result<HashMap<String, PriorPermit>> {
        // The narrow half of the register holds all an import compares.
        let found: Vec<(String, NaiveDate, String)> = with_raw(&mut self.tx, |c| {
            let mut stmt =
                c.prepare("SELECT valid_until, status FROM permit_state WHERE permit_no = ?1")?;
            let mut out = Vec::with_capacity(permit_nos.len());
            for no in permit_nos {
                let mut rows = stmt.query([no])?;
                if let Some(r) = rows.next()? {
                    out.push((no.to_string(), raw_date(r, 0)?, r.get(1)?));
                }
            }
            Ok(out)
        })
        .await?;
        found
            .into_iter()
            .map(|(no, valid_until, status)| {
                let status = PermitStatus::parse(&status).map_err(|_| {
                    Error::Runtime(anyhow::anyhow!(
                        "stored permit has unknown status {status:?}"
                    ))
                })?;
                Ok((
                    no,
                    PriorPermit {
                        valid_until,
                        status,
                    },
                ))
            })
            .collect()
    }

    /// Whether the register was empty when this import began (then no
    /// stored state needs looking up: the initial load's fast path).
    pub async fn register_is_empty(&mut self) -> Result<bool> {
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM permit_state LIMIT 1")
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(any.is_none())
    }

    /// Writes the rows with their import mark: the line, and the value
    /// from before this import (C6, read back by [`Self::lookup_permits`]).
    pub async fn upsert_permits(&mut self, rows: &[(PermitRow, ImportMark)]) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            // The register is two tables (migration 0005): the run rewrites
            // permit_state only. Multi-row upserts of up to ROWS_PER_INSERT
            // rows (a batch holds one row per permit_no: R2 is settled
            // before).
            let (mut full_details, mut full_state) = (None, None);
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                insert_chunk(
                    c,
                    &mut full_details,
                    (PERMIT_DETAILS_UPSERT, 15, "", PERMIT_DETAILS_ON_CONFLICT),
                    chunk,
                    |stmt, next, (p, mark)| {
                        bind_row(
                            stmt,
                            next,
                            rusqlite::params![
                                p.permit_no,
                                p.id_number,
                                p.name,
                                p.phone,
                                p.email,
                                p.district_code,
                                p.street_code,
                                p.address,
                                p.employer_uscc,
                                p.si_status,
                                p.marital_status,
                                import_id,
                                mark.line as i64,
                                mark.prior.map(|x| x.valid_until.to_string()),
                                mark.prior.map(|x| x.status.code()),
                            ],
                        )
                    },
                )?;
                insert_chunk(
                    c,
                    &mut full_state,
                    (PERMIT_STATE_UPSERT, 3, "", PERMIT_STATE_ON_CONFLICT),
                    chunk,
                    |stmt, next, (p, _)| {
                        bind_row(
                            stmt,
                            next,
                            rusqlite::params![p.permit_no, p.valid_until.to_string(), p.status],
                        )
                    },
                )?;
            }
            Ok(())
        })
        .await
    }

    pub async fn update_contacts(&mut self, rows: &[ContactUpdate]) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            let mut stmt = c.prepare(
                "UPDATE permit_details SET name = ?2, phone = ?3, email = ?4, import_id = ?5, import_line = ?6,
                 prior_valid_until = ?7, prior_status = ?8 WHERE permit_no = ?1",
            )?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.permit_no,
                    r.name,
                    r.phone,
                    r.email,
                    import_id,
                    r.mark.line as i64,
                    r.mark.prior.map(|x| x.valid_until.to_string()),
                    r.mark.prior.map(|x| x.status.code()),
                ])?;
            }
            Ok(())
        })
        .await
    }

    /// Feed rows are appended in the order given (line order: R2's later
    /// row is the one with the higher seq), with no key to maintain.
    pub async fn upsert_residence(&mut self, rows: &[ResidenceRow]) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            let mut stmt = c.prepare(
                "INSERT INTO residence (id_number, visited_on, result, address, officer_id, import_id, line)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.id_number,
                    r.visited_on.to_string(),
                    r.result,
                    r.address,
                    r.officer_id,
                    import_id,
                    r.line as i64,
                ])?;
            }
            Ok(())
        })
        .await
    }

    pub async fn upsert_social_insurance(&mut self, rows: &[SocialInsuranceRow]) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            let mut stmt = c.prepare(
                "INSERT INTO social_insurance (id_number, month, status, employer_uscc, employer_name, import_id, line)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.id_number,
                    r.month,
                    r.status,
                    r.employer_uscc,
                    r.employer_name,
                    import_id,
                    r.line as i64,
                ])?;
            }
            Ok(())
        })
        .await
    }

    pub async fn upsert_civil_status(&mut self, rows: &[CivilStatusRow]) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            let mut stmt = c.prepare(
                "INSERT INTO civil_status (id_number, marital_status, as_of, import_id, line)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.id_number,
                    r.marital_status,
                    r.as_of.map(|d| d.to_string()),
                    import_id,
                    r.line as i64,
                ])?;
            }
            Ok(())
        })
        .await
    }

    /// One sequential pass over this import's rows (those after
    /// `first_seq`), keeping the lines of the suspects' keys only.
    pub async fn earlier_lines(&mut self, suspects: &[KeySuspect]) -> Result<Vec<(u64, u64)>> {
        let Some(table) = self.feed_table else {
            return Ok(Vec::new());
        };
        // Per suspect id_number: its distinct second key parts and the
        // lines of this import's rows with that key.
        let mut by_id: HashMap<&str, Vec<(&str, Vec<u64>)>> = HashMap::new();
        for s in suspects {
            let keys = by_id.entry(s.id_number.as_str()).or_default();
            if !keys.iter().any(|(second, _)| *second == s.second) {
                keys.push((s.second.as_str(), Vec::new()));
            }
        }
        let first_seq = self.first_seq;
        with_raw(&mut self.tx, |c| {
            let mut stmt = c.prepare(table.keys_after())?;
            let mut rows = stmt.query([first_seq])?;
            while let Some(r) = rows.next()? {
                if let Some(keys) = by_id.get_mut(r.get_ref(0)?.as_str()?) {
                    let second = r.get_ref(1)?.as_str()?;
                    if let Some((_, lines)) = keys.iter_mut().find(|(s, _)| *s == second) {
                        lines.push(r.get::<_, i64>(2)? as u64);
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(suspects
            .iter()
            .filter_map(|s| {
                let (_, lines) = by_id
                    .get(s.id_number.as_str())?
                    .iter()
                    .find(|(second, _)| *second == s.second)?;
                let earlier = lines.iter().filter(|l| **l < s.line).max()?;
                Some((s.line, *earlier))
            })
            .collect())
    }

    pub async fn commit(mut self, counts: ImportCounts) -> Result<()> {
        sqlx::query("UPDATE imports SET rows_read = ?, rows_imported = ?, rows_rejected = ? WHERE import_id = ?")
            .bind(counts.rows_read as i64)
            .bind(counts.rows_imported as i64)
            .bind(counts.rows_rejected as i64)
            .bind(self.import_id)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// Step 2's candidates (R3, R4): the narrow permit_state table drives
/// (CROSS JOIN keeps it outer) and a candidate's details are looked up by
/// key.
const CANDIDATES: &str =
    "SELECT p.permit_no, d.id_number, d.name, d.phone, d.email, d.district_code,
        d.street_code, d.address, p.valid_until, p.status, d.employer_uscc, d.si_status,
        d.marital_status
 FROM permit_state p CROSS JOIN permit_details d ON d.permit_no = p.permit_no
 WHERE p.permit_no > ?1 AND p.status IN ('active', 'suspended') AND p.valid_until <= ?2
 ORDER BY p.permit_no LIMIT ?3";

type EventPage = Result<(usize, Vec<NewEvent>)>;

/// A run's pages of events, read and made on a thread of their own
/// ([`SqliteRunTx::event_pages`]).
pub struct EventPageReader {
    pages: tokio::sync::mpsc::Receiver<EventPage>,
    thread: Option<tokio::task::JoinHandle<()>>,
}

impl EventPageReader {
    pub async fn next(&mut self) -> Result<Option<(usize, Vec<NewEvent>)>> {
        match self.pages.recv().await {
            Some(page) => page.map(Some),
            None => {
                // The thread is done and its connection closed, so its
                // snapshot does not hold back the checkpoint after the
                // run's commit.
                if let Some(thread) = self.thread.take() {
                    thread.await.map_err(|e| {
                        Error::Runtime(anyhow::anyhow!("the run's page reader failed: {e}"))
                    })?;
                }
                Ok(None)
            }
        }
    }
}

/// The body of [`SqliteRunTx::event_pages`]'s thread.
fn read_event_pages(
    path: &Path,
    to: NaiveDate,
    limit: u32,
    mut make: MakeEvents,
    send: &tokio::sync::mpsc::Sender<EventPage>,
) -> Result<()> {
    let c = snapshot_reader(path)?;
    let mut stmt = c.prepare(CANDIDATES).map_err(raw_err)?;
    let to = to.to_string();
    let mut after = String::new();
    loop {
        let page: Vec<Candidate> = stmt
            .query_map(rusqlite::params![after, to, limit], |r| {
                Ok(Candidate {
                    permit: raw_permit(r)?,
                })
            })
            .map_err(raw_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(raw_err)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.permit.permit_no.clone();
        let read = page.len();
        let events = make(page)?;
        if send.blocking_send(Ok((read, events))).is_err() {
            // The run stopped (an error on the writer's side).
            return Ok(());
        }
    }
}

/// A read-only connection of the run's own, in a read transaction of its
/// own (the run's readers beside its write transaction): a small cache,
/// as its reads are sequential passes (the process's memory bound counts
/// every connection's).
fn snapshot_reader(path: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let c = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(raw_err)?;
    c.execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -1024; BEGIN")
        .map_err(raw_err)?;
    c.busy_timeout(Duration::from_secs(60)).map_err(raw_err)?;
    Ok(c)
}

/// The social-insurance rows with `seqs.0 < seq <= seqs.1` and a month
/// within `months`, in seq order, that `sink` wants.
fn scan_payments(
    c: &rusqlite::Connection,
    months: (&str, &str),
    seqs: (i64, i64),
    sink: &mut (dyn EvidenceSink + Send),
) -> rusqlite::Result<()> {
    let mut stmt = c.prepare(
        "SELECT id_number, month, status, employer_uscc FROM social_insurance
         WHERE seq > ?1 AND seq <= ?2 AND month BETWEEN ?3 AND ?4 ORDER BY seq",
    )?;
    let mut rows = stmt.query(rusqlite::params![seqs.0, seqs.1, months.0, months.1])?;
    while let Some(r) = rows.next()? {
        let id = r.get_ref(0)?.as_str()?;
        if sink.wants(id) {
            sink.payment(
                id,
                r.get_ref(1)?.as_str()?,
                r.get_ref(2)?.as_str()?,
                r.get_ref(3)?.as_str()?,
            );
        }
    }
    Ok(())
}

/// Page cache of a run's transaction while it lasts, KiB: its reads are
/// sequential passes and its writes append in key order, so a larger cache
/// buys it nothing, but the connection's memory grows to about twice its
/// cache while another connection reads the pages (at 1M permits: 248 MB
/// with 64 MiB, 118–137 MB with 16 MiB; docs/benchmarks.md).
const RUN_CACHE: &str = "PRAGMA cache_size = -16384";

/// The run's one write transaction (BEGIN IMMEDIATE).
pub struct SqliteRunTx {
    tx: Transaction<'static, Sqlite>,
    pub run: RunRecord,
    /// The database file, for [`SqliteRunTx::event_pages`]'s reader.
    path: PathBuf,
}

impl SqliteRunTx {
    /// [`crate::db::RunTx::event_pages`]: a blocking thread reads the pages
    /// over its own connection, in one read transaction, and makes their
    /// events, at most one page ahead of the writer.
    pub fn event_pages(&self, to: NaiveDate, limit: u32, make: MakeEvents) -> EventPageReader {
        let (send, pages) = tokio::sync::mpsc::channel(1);
        let path = self.path.clone();
        let thread = tokio::task::spawn_blocking(move || {
            if let Err(e) = read_event_pages(&path, to, limit, make, &send) {
                let _ = send.blocking_send(Err(e));
            }
        });
        EventPageReader {
            pages,
            thread: Some(thread),
        }
    }

    pub async fn due_permits(
        &mut self,
        from: NaiveDate,
        to: NaiveDate,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DuePermit>> {
        let after = after.unwrap_or("");
        with_raw(&mut self.tx, |c| {
            let mut stmt = c.prepare(concat!(
                "SELECT p.permit_no, d.id_number, p.valid_until, d.employer_uscc, d.si_status, d.marital_status
                 FROM permit_state p CROSS JOIN permit_details d ON d.permit_no = p.permit_no
                 WHERE p.permit_no > ?1 AND p.status = 'active' AND p.valid_until BETWEEN ?2 AND ?3
                   AND NOT ",
                decided_sqlite!(),
                " ORDER BY p.permit_no LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                rusqlite::params![after, from.to_string(), to.to_string(), limit],
                |r| {
                    Ok(DuePermit {
                        permit_no: r.get(0)?,
                        id_number: r.get(1)?,
                        valid_until: raw_date(r, 2)?,
                        employer_uscc: r.get(3)?,
                        si_status: r.get(4)?,
                        marital_status: r.get(5)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    /// One sequential scan per feed table in seq order (R2: a later row
    /// follows the earlier one), no random reads; rows outside the bounds
    /// are skipped by the scan, rows of other holders by `sink.wants`.
    ///
    /// Social insurance, the largest feed by far, is read in two parts at
    /// once: its later rows (by seq) go to `later` on a thread of its own,
    /// over a second read-only connection, while this one reads residence,
    /// civil status and the earlier rows into `sink`. The caller merges the
    /// two (a row of `later` is a later row). The second connection sees
    /// what this transaction sees: the run holds the only write lock and
    /// has not written the feeds.
    pub async fn feed_evidence(
        &mut self,
        b: &EvidenceBounds,
        sink: &mut (dyn EvidenceSink + Send),
        later: &mut (dyn EvidenceSink + Send),
    ) -> Result<()> {
        let (vf, vt, mf, mt) = (
            b.visited_from.to_string(),
            b.visited_to.to_string(),
            b.month_from.as_str(),
            b.month_to.as_str(),
        );
        let path = self.path.as_path();
        let mut failed = None;
        with_raw(&mut self.tx, |c| {
            let (first, last): (Option<i64>, Option<i64>) =
                c.query_row("SELECT min(seq), max(seq) FROM social_insurance", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            // This thread also reads the two smaller feeds: it takes the
            // first third of the rows, the other thread the rest (about
            // even at 1M permits: 0.38 s and 0.32 s with two fifths here).
            let split = match (first, last) {
                (Some(first), Some(last)) => first + (last - first) / 3,
                _ => i64::MAX,
            };
            std::thread::scope(|scope| {
                let part = scope.spawn(move || -> Result<()> {
                    let c = snapshot_reader(path)?;
                    scan_payments(&c, (mf, mt), (split, i64::MAX), later).map_err(raw_err)
                });
                let here = (|| -> rusqlite::Result<()> {
                    let mut stmt = c.prepare(
                        "SELECT id_number, visited_on, result FROM residence
                         WHERE visited_on BETWEEN ?1 AND ?2 ORDER BY seq",
                    )?;
                    let mut rows = stmt.query([&vf, &vt])?;
                    while let Some(r) = rows.next()? {
                        let id = r.get_ref(0)?.as_str()?;
                        if sink.wants(id) {
                            sink.residence(id, raw_date(r, 1)?, r.get_ref(2)?.as_str()?);
                        }
                    }
                    let mut stmt = c.prepare(
                        "SELECT id_number, marital_status, as_of FROM civil_status ORDER BY seq",
                    )?;
                    let mut rows = stmt.query([])?;
                    while let Some(r) = rows.next()? {
                        let id = r.get_ref(0)?.as_str()?;
                        if sink.wants(id) {
                            sink.civil(id, r.get_ref(1)?.as_str()?, raw_opt_date(r, 2)?);
                        }
                    }
                    scan_payments(c, (mf, mt), (i64::MIN, split), sink)
                })();
                failed = thread_error(part.join(), "the run's social-insurance reader thread");
                here
            })
        })
        .await?;
        failed.map_or(Ok(()), Err)
    }

    pub async fn write(&mut self, batch: &RunBatch) -> Result<()> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let held = batch.held;
        with_raw(&mut self.tx, |c| {
            let as_of = batch.as_of.to_string();
            let at = batch.decided_at.as_str();
            // Events and notices go in as multi-row INSERTs of up to
            // ROWS_PER_INSERT rows: one statement execution (and its
            // per-statement work) per chunk rather than per row.
            // `held` is the events' last column.
            let held_tail = if held { ", 1" } else { ", 0" };
            let mut full_events = None;
            let mut full_notices = None;
            let mut effects = EffectWriter::new(c)?;
            for chunk in batch.events.chunks(ROWS_PER_INSERT) {
                insert_chunk(
                    c,
                    &mut full_events,
                    (EVENT_INSERT, 16, held_tail, ""),
                    chunk,
                    |stmt, next, e| {
                        bind_row(
                            stmt,
                            next,
                            rusqlite::params![
                                batch.run_id,
                                as_of,
                                e.permit_no,
                                e.id_number,
                                e.kind,
                                e.reasons,
                                e.valid_until.to_string(),
                                e.new_valid_until.map(|d| d.to_string()),
                                e.residence_visited_on.map(|d| d.to_string()),
                                e.residence_result,
                                e.si_month,
                                e.si_status,
                                e.si_employer_uscc,
                                e.marital_status,
                                at,
                                e.prior_status,
                            ],
                        )
                    },
                )?;
                // A held run writes its events only (the brake): no notice, no
                // permit change until `autosign release`.
                if held {
                    continue;
                }
                insert_chunk(
                    c,
                    &mut full_notices,
                    (NOTICE_INSERT, 11, "", ""),
                    chunk,
                    |stmt, next, e| {
                        bind_row(
                            stmt,
                            next,
                            rusqlite::params![
                                batch.run_id,
                                as_of,
                                e.permit_no,
                                e.valid_until.to_string(),
                                e.kind,
                                e.notice.channel,
                                e.notice.recipient,
                                e.notice.message,
                                e.notice.status,
                                (e.notice.status == "queued").then_some(at),
                                at,
                            ],
                        )
                    },
                )?;
                for e in chunk {
                    effects.apply(&e.permit_no, e.effect)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Marks the run held by the safety brake, before it writes any event.
    /// `_now`: the run is one transaction, with no heartbeat to keep.
    pub async fn hold(&mut self, why: &str, _now: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET brake = ? WHERE run_id = ?")
            .bind(why)
            .bind(self.run.run_id)
            .execute(&mut *self.tx)
            .await?;
        self.run.brake = Some(why.to_string());
        Ok(())
    }

    /// Marks the run completed (or held, if the brake held it) and commits.
    pub async fn complete(
        mut self,
        pending: u64,
        now: &str,
        duration: std::time::Duration,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET status = ?, finished_at = ?, pending = ?, duration_secs = ? WHERE run_id = ?",
        )
        .bind(if self.run.brake.is_some() {
            "held"
        } else {
            "completed"
        })
        .bind(now)
        .bind(pending as i64)
        .bind(duration.as_secs_f64())
        .bind(self.run.run_id)
            .execute(&mut *self.tx)
            .await?;
        self.restore_cache().await?;
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<()> {
        // The rollback matters, the cache size does not: its failure is no
        // reason to skip the rollback.
        let _ = self.restore_cache().await;
        self.tx.rollback().await?;
        Ok(())
    }

    /// The pooled connection's page cache again (not transactional).
    async fn restore_cache(&mut self) -> Result<()> {
        sqlx::query(concat!("PRAGMA cache_size = ", pool_cache!()))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}

fn permit_row(r: &SqliteRow) -> Result<PermitRow> {
    Ok(PermitRow {
        permit_no: r.try_get(0)?,
        id_number: r.try_get(1)?,
        name: r.try_get(2)?,
        phone: r.try_get(3)?,
        email: r.try_get(4)?,
        district_code: r.try_get(5)?,
        street_code: r.try_get(6)?,
        address: r.try_get(7)?,
        valid_until: r.try_get(8)?,
        status: r.try_get(9)?,
        employer_uscc: r.try_get(10)?,
        si_status: r.try_get(11)?,
        marital_status: r.try_get(12)?,
    })
}

fn import_record(r: &SqliteRow) -> Result<ImportRecord> {
    Ok(ImportRecord {
        import_id: r.try_get(0)?,
        file_name: r.try_get(1)?,
        imported_at: r.try_get(2)?,
        counts: ImportCounts {
            rows_read: r.try_get::<i64, _>(3)? as u64,
            rows_imported: r.try_get::<i64, _>(4)? as u64,
            rows_rejected: r.try_get::<i64, _>(5)? as u64,
        },
    })
}

fn run_record(r: &SqliteRow) -> Result<RunRecord> {
    Ok(RunRecord {
        run_id: r.try_get(0)?,
        as_of: r.try_get(1)?,
        status: r.try_get(2)?,
        attempts: r.try_get(3)?,
        started_at: r.try_get(4)?,
        finished_at: r.try_get(5)?,
        pending: r.try_get(6)?,
        brake: r.try_get(7)?,
        import_mark: r.try_get(8)?,
        duration_secs: r.try_get(9)?,
    })
}

fn audit_row(r: &SqliteRow) -> Result<AuditRow> {
    Ok(AuditRow {
        run_id: r.try_get(0)?,
        as_of: r.try_get(1)?,
        permit_no: r.try_get(2)?,
        id_number: r.try_get(3)?,
        decision: r.try_get(4)?,
        reasons: r.try_get(5)?,
        valid_until: r.try_get(6)?,
        new_valid_until: r.try_get(7)?,
        residence_visited_on: r.try_get(8)?,
        residence_result: r.try_get(9)?,
        si_month: r.try_get(10)?,
        si_status: r.try_get(11)?,
        si_employer_uscc: r.try_get(12)?,
        marital_status: r.try_get(13)?,
        notification_channel: r.try_get(14)?,
        notification_status: r.try_get(15)?,
        decided_at: r.try_get(16)?,
        state: r.try_get(17)?,
    })
}

fn notification_row(r: &SqliteRow) -> Result<NotificationRow> {
    Ok(NotificationRow {
        notification_id: r.try_get(0)?,
        run_id: r.try_get(1)?,
        as_of: r.try_get(2)?,
        permit_no: r.try_get(3)?,
        cycle_valid_until: r.try_get(4)?,
        kind: r.try_get(5)?,
        channel: r.try_get(6)?,
        recipient: r.try_get(7)?,
        status: r.try_get(8)?,
        attempts: r.try_get(9)?,
        next_attempt_at: r.try_get(10)?,
        last_error: r.try_get(11)?,
        provider_ref: r.try_get(12)?,
        created_at: r.try_get(13)?,
        sent_at: r.try_get(14)?,
        message: r.try_get(15)?,
    })
}

/// The database holds personal data: owner-only, like every file autosign
/// creates, and so are its WAL and shared-memory files.
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [
            path.to_path_buf(),
            sibling(path, "-wal"),
            sibling(path, "-shm"),
        ] {
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

/// Creates the database file, empty and owner-only, if it does not exist.
fn create_database_file(path: &Path) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(
            format!("cannot create SQLite database {}", path.display()),
            e,
        )),
    }
}

/// `PATH` with `suffix` appended to its file name (`x.sqlite-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

/// Opens `lock_path`, creating it owner-only.
fn open_lock_file(lock_path: &Path) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(lock_path)
        .map_err(|e| Error::io(format!("cannot open lock file {}", lock_path.display()), e))
}

/// Opens and locks `lock_path`, waiting for the lock on a blocking thread.
async fn lock_file(lock_path: &Path) -> Result<std::fs::File> {
    let file = open_lock_file(lock_path)?;
    let shown = lock_path.display().to_string();
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| Error::Runtime(anyhow::anyhow!("lock task failed: {e}")))?
        .map_err(|e| Error::io(format!("cannot lock {shown}"), e))
}

fn raw_notification_row(r: &rusqlite::Row) -> rusqlite::Result<NotificationRow> {
    Ok(NotificationRow {
        notification_id: r.get(0)?,
        run_id: r.get(1)?,
        as_of: raw_date(r, 2)?,
        permit_no: r.get(3)?,
        cycle_valid_until: raw_date(r, 4)?,
        kind: r.get(5)?,
        channel: r.get(6)?,
        recipient: r.get(7)?,
        status: r.get(8)?,
        attempts: r.get(9)?,
        next_attempt_at: r.get(10)?,
        last_error: r.get(11)?,
        provider_ref: r.get(12)?,
        created_at: r.get(13)?,
        sent_at: r.get(14)?,
        message: r.get(15)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_page_gives_back_each_row_of_18_cells_as_pushed() {
        let mut page = CellPage::default();
        let rows: Vec<Vec<String>> = (0..3)
            .map(|r| {
                (0..18)
                    .map(|i| {
                        if i == 5 {
                            String::new()
                        } else {
                            format!("r{r}c{i}，")
                        }
                    })
                    .collect()
            })
            .collect();
        for row in &rows {
            for cell in row {
                page.push(cell);
            }
        }
        let back: Vec<Vec<String>> = page
            .rows()
            .map(|cells| cells.iter().map(|c| c.to_string()).collect())
            .collect();
        assert_eq!(back, rows);
        page.clear();
        assert_eq!(page.rows().count(), 0);
        page.push("x");
        assert_eq!(page.text, "x");
    }

    #[test]
    fn a_multi_row_insert_has_one_group_of_parameters_per_row() {
        assert_eq!(
            multi_row_insert("INSERT INTO t (a, b, held) VALUES ", 2, ", 1", 3),
            "INSERT INTO t (a, b, held) VALUES (?, ?, 1), (?, ?, 1), (?, ?, 1)"
        );
        assert_eq!(
            multi_row_insert("INSERT INTO t (a) VALUES ", 1, "", 1),
            "INSERT INTO t (a) VALUES (?)"
        );
    }
}
