//! SQLite backend: the embedded default. WAL, a busy timeout, `BEGIN
//! IMMEDIATE` for every write transaction (a deferred one that reads then
//! writes fails with SQLITE_BUSY without waiting, sqlx #451), multi-row
//! statements sized under the bind limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::NaiveDate;
use futures_util::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};

use super::rows::*;
use super::JobLock;
use crate::domain::PermitStatus;
use crate::error::{Error, Result};

/// Rows per multi-row statement: under SQLite's 32766 bind variables for the
/// widest statement (16 columns).
const ROWS_PER_STATEMENT: usize = 1000;

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
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(60))
            .foreign_keys(true)
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
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
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
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
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("cannot open lock file {}", lock_path.display()), e))?;
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
    ) -> Result<SqliteImportTx> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let import_id: i64 = sqlx::query_scalar(
            "INSERT INTO imports (feed, file_name, sha256, imported_at) VALUES (?, ?, ?, ?) RETURNING import_id",
        )
        .bind(feed)
        .bind(file_name)
        .bind(sha256)
        .bind(crate::clock::now_rfc3339())
        .fetch_one(&mut *tx)
        .await?;
        Ok(SqliteImportTx { tx, import_id })
    }

    pub async fn latest_completed_run(&self) -> Result<Option<RunRecord>> {
        let row = sqlx::query(
            "SELECT run_id, as_of, status, attempts, started_at, finished_at, pending
             FROM runs WHERE status = 'completed' ORDER BY as_of DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_record(&r)).transpose()
    }

    pub async fn run_for(&self, as_of: NaiveDate) -> Result<Option<RunRecord>> {
        let row = sqlx::query(
            "SELECT run_id, as_of, status, attempts, started_at, finished_at, pending FROM runs WHERE as_of = ?",
        )
        .bind(as_of)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_record(&r)).transpose()
    }

    pub async fn start_run(&self, as_of: NaiveDate, now: &str) -> Result<RunRecord> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO runs (as_of, status, started_at) VALUES (?, 'running', ?)
             ON CONFLICT (as_of) DO UPDATE SET attempts = attempts + 1, started_at = excluded.started_at
             WHERE runs.status = 'running'",
        )
        .bind(as_of)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT run_id, as_of, status, attempts, started_at, finished_at, pending FROM runs WHERE as_of = ?",
        )
        .bind(as_of)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        run_record(&row)
    }

    pub async fn complete_run(&self, run_id: i64, pending: u64, now: &str) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET status = 'completed', finished_at = ?, pending = ? WHERE run_id = ?",
        )
        .bind(now)
        .bind(pending as i64)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn snapshot(&self) -> Result<SqliteSnapshot> {
        let tx = self.pool.begin().await?;
        Ok(SqliteSnapshot { tx })
    }

    pub async fn write_batch(&self, batch: &RunBatch) -> Result<()> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in batch.events.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (run_id, as_of, permit_no, id_number, kind, reasons, valid_until,
                 new_valid_until, residence_visited_on, residence_result, si_month, si_status,
                 si_employer_uscc, marital_status, decided_at) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(batch.run_id)
                    .push_bind(batch.as_of)
                    .push_bind(e.permit_no.as_str())
                    .push_bind(e.id_number.as_str())
                    .push_bind(e.kind)
                    .push_bind(e.reasons.as_str())
                    .push_bind(e.valid_until)
                    .push_bind(e.new_valid_until)
                    .push_bind(e.residence_visited_on)
                    .push_bind(e.residence_result.as_deref())
                    .push_bind(e.si_month.as_deref())
                    .push_bind(e.si_status.as_deref())
                    .push_bind(e.si_employer_uscc.as_deref())
                    .push_bind(e.marital_status.as_deref())
                    .push_bind(batch.decided_at.as_str());
            });
            q.build().execute(&mut *tx).await?;

            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO notifications (run_id, as_of, permit_no, cycle_valid_until, kind, channel,
                 recipient, message, status, next_attempt_at, created_at) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(batch.run_id)
                    .push_bind(batch.as_of)
                    .push_bind(e.permit_no.as_str())
                    .push_bind(e.valid_until)
                    .push_bind(e.kind)
                    .push_bind(e.notice.channel)
                    .push_bind(e.notice.recipient.as_str())
                    .push_bind(e.notice.message.as_str())
                    .push_bind(e.notice.status)
                    .push_bind((e.notice.status == "queued").then_some(batch.decided_at.as_str()))
                    .push_bind(batch.decided_at.as_str());
            });
            q.build().execute(&mut *tx).await?;

            let extend: Vec<(&str, NaiveDate)> = chunk
                .iter()
                .filter_map(|e| match e.effect {
                    Effect::Extend(to) => Some((e.permit_no.as_str(), to)),
                    _ => None,
                })
                .collect();
            if !extend.is_empty() {
                let mut q = QueryBuilder::<Sqlite>::new("WITH v(permit_no, valid_until) AS (");
                q.push_values(&extend, |mut b, (no, to)| {
                    b.push_bind(*no).push_bind(*to);
                });
                q.push(
                    ") UPDATE permits SET valid_until = v.valid_until FROM v WHERE permits.permit_no = v.permit_no",
                );
                q.build().execute(&mut *tx).await?;
            }
            let status: Vec<(&str, &str)> = chunk
                .iter()
                .filter_map(|e| match e.effect {
                    Effect::SetStatus(s) => Some((e.permit_no.as_str(), s)),
                    _ => None,
                })
                .collect();
            if !status.is_empty() {
                let mut q = QueryBuilder::<Sqlite>::new("WITH v(permit_no, status) AS (");
                q.push_values(&status, |mut b, (no, s)| {
                    b.push_bind(*no).push_bind(*s);
                });
                q.push(") UPDATE permits SET status = v.status FROM v WHERE permits.permit_no = v.permit_no");
                q.build().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn run_counts(&self, run_id: i64) -> Result<Vec<RunCount>> {
        let rows = sqlx::query(
            "SELECT e.kind, e.reasons, n.channel, count(*) AS n
             FROM events e JOIN notifications n
               ON n.permit_no = e.permit_no AND n.cycle_valid_until = e.valid_until AND n.kind = e.kind
             WHERE e.run_id = ? GROUP BY e.kind, e.reasons, n.channel ORDER BY e.kind, e.reasons, n.channel",
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

    pub async fn audit_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(AuditRow) -> Result<()> + Send),
    ) -> Result<()> {
        let mut rows = sqlx::query(AUDIT_SELECT_RANGE)
            .bind(from)
            .bind(to)
            .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            each(audit_row(&row)?)?;
        }
        Ok(())
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
        let mut rows = sqlx::query(NOTIFICATION_SELECT_RANGE)
            .bind(from)
            .bind(to)
            .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            each(notification_row(&row)?)?;
        }
        Ok(())
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

const PERMIT_COLUMNS: &str =
    "permit_no, id_number, name, phone, email, district_code, street_code, address, \
     valid_until, status, employer_uscc, si_status, marital_status";

macro_rules! audit_select {
    ($where:literal) => {
        concat!(
            "SELECT e.run_id, e.as_of, e.permit_no, e.id_number, e.kind, e.reasons, e.valid_until,
                    e.new_valid_until, e.residence_visited_on, e.residence_result, e.si_month, e.si_status,
                    e.si_employer_uscc, e.marital_status, n.channel, n.status, e.decided_at
             FROM events e LEFT JOIN notifications n
               ON n.permit_no = e.permit_no AND n.cycle_valid_until = e.valid_until AND n.kind = e.kind
             WHERE ",
            $where,
            " ORDER BY e.as_of, e.permit_no,
               CASE e.kind WHEN 'SUSPENDED' THEN 1 WHEN 'CANCELLED' THEN 2 WHEN 'VISIT_CENTER' THEN 3 ELSE 4 END,
               e.event_id"
        )
    };
}
const AUDIT_SELECT_RANGE: &str = audit_select!("e.as_of BETWEEN ? AND ?");
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
const NOTIFICATION_SELECT_RANGE: &str = notification_select!("as_of BETWEEN ? AND ?");
const NOTIFICATION_SELECT_PERMIT: &str = notification_select!("permit_no = ?");

/// One import's transaction.
pub struct SqliteImportTx {
    tx: Transaction<'static, Sqlite>,
    pub import_id: i64,
}

impl SqliteImportTx {
    pub async fn lookup_permits(
        &mut self,
        permit_nos: &[&str],
    ) -> Result<HashMap<String, PriorPermit>> {
        let json = serde_json::to_string(permit_nos).map_err(|e| Error::Runtime(e.into()))?;
        let rows = sqlx::query(
            "SELECT permit_no, valid_until, status FROM permits
             WHERE permit_no IN (SELECT value FROM json_each(?))",
        )
        .bind(json)
        .fetch_all(&mut *self.tx)
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

    pub async fn upsert_permits(&mut self, rows: Vec<PermitRow>) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO permits ({PERMIT_COLUMNS}, import_id) "
            ));
            q.push_values(chunk, |mut b, p| {
                b.push_bind(p.permit_no.as_str())
                    .push_bind(p.id_number.as_str())
                    .push_bind(p.name.as_str())
                    .push_bind(p.phone.as_deref())
                    .push_bind(p.email.as_deref())
                    .push_bind(p.district_code.as_str())
                    .push_bind(p.street_code.as_str())
                    .push_bind(p.address.as_str())
                    .push_bind(p.valid_until)
                    .push_bind(p.status.as_str())
                    .push_bind(p.employer_uscc.as_str())
                    .push_bind(p.si_status.as_str())
                    .push_bind(p.marital_status.as_str())
                    .push_bind(self.import_id);
            });
            q.push(
                " ON CONFLICT (permit_no) DO UPDATE SET id_number = excluded.id_number, name = excluded.name,
                  phone = excluded.phone, email = excluded.email, district_code = excluded.district_code,
                  street_code = excluded.street_code, address = excluded.address,
                  valid_until = excluded.valid_until, status = excluded.status,
                  employer_uscc = excluded.employer_uscc, si_status = excluded.si_status,
                  marital_status = excluded.marital_status, import_id = excluded.import_id",
            );
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    pub async fn update_contacts(&mut self, rows: Vec<ContactUpdate>) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new("WITH v(permit_no, name, phone, email) AS (");
            q.push_values(chunk, |mut b, c| {
                b.push_bind(c.permit_no.as_str())
                    .push_bind(c.name.as_str())
                    .push_bind(c.phone.as_deref())
                    .push_bind(c.email.as_deref());
            });
            q.push(") UPDATE permits SET name = v.name, phone = v.phone, email = v.email, import_id = ");
            q.push_bind(self.import_id);
            q.push(" FROM v WHERE permits.permit_no = v.permit_no");
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    pub async fn upsert_residence(&mut self, rows: Vec<ResidenceRow>) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO residence (id_number, visited_on, result, address, officer_id, import_id) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.id_number.as_str())
                    .push_bind(r.visited_on)
                    .push_bind(r.result.as_str())
                    .push_bind(r.address.as_str())
                    .push_bind(r.officer_id.as_str())
                    .push_bind(self.import_id);
            });
            q.push(
                " ON CONFLICT (id_number, visited_on) DO UPDATE SET result = excluded.result,
                  address = excluded.address, officer_id = excluded.officer_id, import_id = excluded.import_id",
            );
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    pub async fn upsert_social_insurance(&mut self, rows: Vec<SocialInsuranceRow>) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO social_insurance (id_number, month, status, employer_uscc, employer_name, import_id) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.id_number.as_str())
                    .push_bind(r.month.as_str())
                    .push_bind(r.status.as_str())
                    .push_bind(r.employer_uscc.as_str())
                    .push_bind(r.employer_name.as_str())
                    .push_bind(self.import_id);
            });
            q.push(
                " ON CONFLICT (id_number, month) DO UPDATE SET status = excluded.status,
                  employer_uscc = excluded.employer_uscc, employer_name = excluded.employer_name,
                  import_id = excluded.import_id",
            );
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    pub async fn upsert_civil_status(&mut self, rows: Vec<CivilStatusRow>) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO civil_status (id_number, marital_status, as_of, import_id) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.id_number.as_str())
                    .push_bind(r.marital_status.as_str())
                    .push_bind(r.as_of)
                    .push_bind(self.import_id);
            });
            q.push(
                " ON CONFLICT (id_number) DO UPDATE SET marital_status = excluded.marital_status,
                  as_of = excluded.as_of, import_id = excluded.import_id",
            );
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
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

/// A read transaction held for the length of a run.
pub struct SqliteSnapshot {
    tx: Transaction<'static, Sqlite>,
}

impl SqliteSnapshot {
    pub async fn lapsed(
        &mut self,
        status: &str,
        before: NaiveDate,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<PermitRow>> {
        let rows = match after {
            None => {
                sqlx::query(concat!(
                    "SELECT permit_no, id_number, name, phone, email, district_code, street_code, address, ",
                    "valid_until, status, employer_uscc, si_status, marital_status FROM permits ",
                    "WHERE status = ? AND valid_until < ? ORDER BY valid_until, permit_no LIMIT ?"
                ))
                .bind(status)
                .bind(before)
                .bind(limit)
                .fetch_all(&mut *self.tx)
                .await?
            }
            Some(k) => {
                sqlx::query(concat!(
                    "SELECT permit_no, id_number, name, phone, email, district_code, street_code, address, ",
                    "valid_until, status, employer_uscc, si_status, marital_status FROM permits ",
                    "WHERE status = ? AND valid_until < ? AND (valid_until, permit_no) > (?, ?) ",
                    "ORDER BY valid_until, permit_no LIMIT ?"
                ))
                .bind(status)
                .bind(before)
                .bind(k.valid_until)
                .bind(k.permit_no.as_str())
                .bind(limit)
                .fetch_all(&mut *self.tx)
                .await?
            }
        };
        rows.iter().map(permit_row).collect()
    }

    pub async fn due(
        &mut self,
        from: NaiveDate,
        to: NaiveDate,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<PermitRow>> {
        // A cycle with a final decision (AUTO_SIGNED moves valid_until, so
        // in practice VISIT_CENTER) is closed (C8).
        let (after_vu, after_no) = match after {
            Some(k) => (k.valid_until, k.permit_no.as_str()),
            None => (from.pred_opt().unwrap_or(from), ""),
        };
        let rows = sqlx::query(concat!(
            "SELECT p.permit_no, p.id_number, p.name, p.phone, p.email, p.district_code, p.street_code, ",
            "p.address, p.valid_until, p.status, p.employer_uscc, p.si_status, p.marital_status ",
            "FROM permits p WHERE p.status = 'active' AND p.valid_until BETWEEN ? AND ? ",
            "AND (p.valid_until, p.permit_no) > (?, ?) ",
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.permit_no = p.permit_no ",
            "AND e.valid_until = p.valid_until AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER')) ",
            "ORDER BY p.valid_until, p.permit_no LIMIT ?"
        ))
        .bind(from)
        .bind(to)
        .bind(after_vu)
        .bind(after_no)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(permit_row).collect()
    }

    pub async fn evidence(&mut self, id_numbers: &[&str], b: &EvidenceBounds) -> Result<Evidence> {
        let mut out = Evidence::default();
        if id_numbers.is_empty() {
            return Ok(out);
        }
        let json = serde_json::to_string(id_numbers).map_err(|e| Error::Runtime(e.into()))?;
        let rows = sqlx::query(
            "SELECT id_number, visited_on, result FROM residence
             WHERE id_number IN (SELECT value FROM json_each(?)) AND visited_on BETWEEN ? AND ?",
        )
        .bind(json.as_str())
        .bind(b.visited_from)
        .bind(b.visited_to)
        .fetch_all(&mut *self.tx)
        .await?;
        for r in rows {
            out.residence
                .entry(r.try_get(0)?)
                .or_default()
                .push(ResidenceEvidence {
                    visited_on: r.try_get(1)?,
                    result: r.try_get(2)?,
                });
        }
        let rows = sqlx::query(
            "SELECT id_number, month, status, employer_uscc FROM social_insurance
             WHERE id_number IN (SELECT value FROM json_each(?)) AND month BETWEEN ? AND ?",
        )
        .bind(json.as_str())
        .bind(b.month_from.as_str())
        .bind(b.month_to.as_str())
        .fetch_all(&mut *self.tx)
        .await?;
        for r in rows {
            out.social_insurance
                .entry(r.try_get(0)?)
                .or_default()
                .push(SiEvidence {
                    month: r.try_get(1)?,
                    status: r.try_get(2)?,
                    employer_uscc: r.try_get(3)?,
                });
        }
        let rows = sqlx::query(
            "SELECT id_number, marital_status FROM civil_status
             WHERE id_number IN (SELECT value FROM json_each(?)) AND (as_of IS NULL OR as_of <= ?)",
        )
        .bind(json.as_str())
        .bind(b.civil_as_of_max)
        .fetch_all(&mut *self.tx)
        .await?;
        for r in rows {
            out.civil_status.insert(r.try_get(0)?, r.try_get(1)?);
        }
        Ok(out)
    }

    pub async fn close(self) -> Result<()> {
        self.tx.rollback().await?;
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
/// creates.
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}
