//! SQLite backend: the embedded default. WAL, a busy timeout, `BEGIN
//! IMMEDIATE` for every write transaction (a deferred one that reads then
//! writes fails with SQLITE_BUSY without waiting, sqlx #451).
//!
//! The files: this one opens the database, takes the job lock and holds
//! the transactions through sqlx; the rows they carry in bulk go through
//! rusqlite on the same connections (the run's readers and the exports on
//! read-only connections of their own), by table family as on PostgreSQL:
//! `import.rs` writes the register and the feeds; `run.rs` is the night
//! (the brake's count, the walk, the evidence, the page reader, each
//! batch's writes); `ledger.rs` corrects the run ledger (release,
//! revert); `export.rs` streams the exports; `migrate.rs` applies the
//! migrations, each with its record in one transaction. `raw/` holds
//! the primitives they share (the raw handle, the run's readers and its
//! checkpoint thread, the exports' reader, row decoders; in `raw/insert.rs`
//! the bulk writes' statements, which bind their values by reference).
//! The table families use rusqlite's statements and rows inside their
//! functions (the walk's two ends, in `run.rs`, take a connection and a
//! statement); no rusqlite type leaves this backend.

mod export;
mod import;
mod ledger;
mod migrate;
mod raw;
mod run;

pub(in crate::db) use migrate::MIGRATOR;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Sqlite, SqlitePool, Transaction};

use super::rows::*;
use super::runs::{end_status, END_RUN, HOLD_RUN, RUN_FOR};
use super::JobLock;
use crate::error::{Error, Result};

/// Begins the write transaction of a bulk writer (an import, a run's
/// page, a release or a revert) with its statement journals in memory.
///
/// In a transaction, each statement that may fail half-way keeps the
/// pages it changes in a statement journal, held in memory up to 64 KiB
/// (SQLite's default, `SQLITE_STMTJRNL_SPILL`) and then in a temporary
/// file. Every multi-row INSERT of these writers keeps one; at 64 KiB
/// they all spilled, to a file rewritten for each statement: 2.0 GB of
/// writes for a 1M-permit import and 1.4 GB for its first night
/// (measured with strace; docs/benchmarks.md). With `temp_store = MEMORY`
/// their journals stay in memory, each as big as the pages one statement
/// changes: a statement writes at most `ROWS_PER_INSERT` rows, a few
/// MiB at most. The pragma also keeps a transaction's temporary tables
/// and sorts in memory; these writers have none. The setting must be
/// made outside a transaction, and SQLite reads it as the transaction
/// begins: hence before `BEGIN`, in the same call. The pool sets it
/// back on release (`DEFAULT_TEMP_STORE`), so a migration's or a purge's
/// statements, which are not bounded, spill to a file.
///
/// Why not a bigger threshold at build time: it is also the in-memory
/// journal's chunk size, and the spill writes a chunk in one call, which
/// the unix VFS cuts to 17 bits; any threshold above 128 KiB fails every
/// spill with "database or disk is full" (.cargo/config.toml).
const BULK_BEGIN: &str = "PRAGMA temp_store = MEMORY; BEGIN IMMEDIATE";

/// SQLite's own temporary storage again (files), set on every connection
/// the pool gets back.
const DEFAULT_TEMP_STORE: &str = "PRAGMA temp_store = DEFAULT";

/// Page cache of a pooled connection, KiB (negative: `PRAGMA cache_size`).
macro_rules! pool_cache {
    () => {
        "-65536"
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
            // A bulk writer's transaction keeps its statement journals in
            // memory (`BULK_BEGIN`); every connection goes back to the
            // pool with SQLite's default, so that any other statement's
            // journal, however big, spills to a file.
            .after_release(|conn, _| {
                Box::pin(async move {
                    sqlx::query(DEFAULT_TEMP_STORE).execute(conn).await?;
                    Ok(true)
                })
            })
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
        let migrated = migrate::run(&pool).await;
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

    pub async fn begin_import(
        &self,
        feed: &str,
        file_name: &str,
        sha256: &str,
        delivery: crate::feeds::Delivery,
        imported_at: &str,
    ) -> Result<SqliteImportTx> {
        let mut tx = self.pool.begin_with(BULK_BEGIN).await?;
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
        Ok(SqliteImportTx { tx, import_id })
    }

    /// Creates the run's `running` row, or takes over one left by a process
    /// that died (the caller holds the job lock, so none is alive), and
    /// commits it: each page then commits on its own.
    pub async fn begin_run(
        &self,
        as_of: NaiveDate,
        now: &str,
        import_mark: i64,
    ) -> Result<SqliteRunTx> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(RUN_CACHE).execute(&mut *conn).await?;
        sqlx::query(RUN_AUTOCHECKPOINT).execute(&mut *conn).await?;
        let checkpoints = Some(raw::Checkpointer::start(&self.path)?);
        let mut tx = conn.begin_with(BULK_BEGIN).await?;
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
        let run = sqlx::query_as(RUN_FOR)
            .bind(as_of)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(SqliteRunTx {
            conn: RunConn::Paged(conn),
            run,
            path: self.path.clone(),
            checkpoints,
        })
    }

    /// `run --dry-run`: the run's reads without the run. A deferred
    /// transaction that only ever reads (it takes no write lock and creates
    /// no runs row); the caller rolls it back. `run` is what the run would
    /// be, never stored.
    pub async fn begin_dry_run(&self, run: RunRecord) -> Result<SqliteRunTx> {
        let tx = self.pool.begin().await?;
        Ok(SqliteRunTx {
            conn: RunConn::Snapshot(tx),
            run,
            path: self.path.clone(),
            checkpoints: None,
        })
    }

    /// Opens a write transaction and moves run `run_id` on with `update`
    /// (its first parameter the run, its second now, guarded by the status
    /// it must have): `None`,
    /// nothing done, when the run is not in that status.
    async fn begin_run_transition(
        &self,
        update: &'static str,
        run_id: i64,
        now: &str,
    ) -> Result<Option<Transaction<'static, Sqlite>>> {
        let mut tx = self.pool.begin_with(BULK_BEGIN).await?;
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
}

/// One import's transaction.
pub struct SqliteImportTx {
    tx: Transaction<'static, Sqlite>,
    pub import_id: i64,
}

impl SqliteImportTx {
    /// Whether the register was empty when this import began (then no
    /// stored state needs looking up: the initial load's fast path).
    pub async fn register_is_empty(&mut self) -> Result<bool> {
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM permit_state LIMIT 1")
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(any.is_none())
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

/// Page cache of a run's transaction while it lasts, KiB: its reads are
/// sequential passes and its writes append in key order, so a larger cache
/// buys it nothing, but the connection's memory grows to about twice its
/// cache while another connection reads the pages (at 1M permits: 248 MB
/// with 64 MiB, 118–137 MB with 16 MiB; docs/benchmarks.md).
const RUN_CACHE: &str = "PRAGMA cache_size = -16384";

/// The log size, in pages, past which the run's writer checkpoints at its
/// commit, while the run lasts (SQLite's default, which the pool keeps, is
/// 1,000): its [`raw::Checkpointer`] copies the log beside it, and the
/// writer only copies what the thread has not, and restarts the log. At
/// 1,000 pages the writer checkpointed every other page of a first night
/// and copied about half the log itself, on the run's critical path; at
/// 4,000 (64 MiB) its commits took half the time and the log peaked at
/// about 90 MB. Without the writer's checkpoints the thread never caught
/// up with a busy writer, the log never restarted and grew to 2.3 GB at
/// 10M permits (measurements in docs/benchmarks.md).
const RUN_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 4000";
const POOL_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 1000";

/// The connection a run works on.
enum RunConn {
    /// A run's: between its statements no transaction is open; the runs
    /// row, the hold, each page and the end commit one by one.
    Paged(PoolConnection<Sqlite>),
    /// A dry run's one read transaction, rolled back at the end.
    Snapshot(Transaction<'static, Sqlite>),
}

/// A run on SQLite: its reads on its own connection, and each page's
/// writes in a write transaction of their own (BEGIN IMMEDIATE), as on
/// PostgreSQL. A run that stops keeps the pages it committed (they are
/// final) and stays `running`; the next run for the date takes it over
/// and writes the rest (`RunTx`).
pub struct SqliteRunTx {
    conn: RunConn,
    pub run: RunRecord,
    /// The database file, for [`SqliteRunTx::event_pages`]'s reader.
    path: PathBuf,
    /// A run's log checkpoints, beside its writer (none in a dry run).
    checkpoints: Option<raw::Checkpointer>,
}

impl RunConn {
    /// The connection, for a read (a run's reads between its commits, or
    /// inside the dry run's snapshot).
    fn get(&mut self) -> &mut SqliteConnection {
        match self {
            RunConn::Paged(c) => c,
            RunConn::Snapshot(tx) => tx,
        }
    }
}

impl SqliteRunTx {
    /// A write transaction of its own on the run's connection; a dry run
    /// writes nothing.
    async fn begin_write(&mut self) -> Result<Transaction<'_, Sqlite>> {
        match &mut self.conn {
            RunConn::Paged(c) => Ok(c.begin_with(BULK_BEGIN).await?),
            RunConn::Snapshot(_) => Err(Error::Runtime(anyhow::anyhow!(
                "internal: a dry run does not write"
            ))),
        }
    }

    /// Marks the run held by the safety brake, before it writes any event.
    /// `_now`: the job lock is a file lock on this host, so there is no
    /// heartbeat to keep.
    pub async fn hold(&mut self, why: &str, _now: &str) -> Result<()> {
        let run_id = self.run.run_id;
        let mut tx = self.begin_write().await?;
        sqlx::query(HOLD_RUN)
            .bind(why)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.run.brake = Some(why.to_string());
        Ok(())
    }

    /// Marks the run completed (or held, if the brake held it).
    pub async fn complete(
        mut self,
        pending: u64,
        now: &str,
        duration: std::time::Duration,
    ) -> Result<()> {
        let (status, run_id) = (end_status(&self.run), self.run.run_id);
        let mut tx = self.begin_write().await?;
        sqlx::query(END_RUN)
            .bind(status.code())
            .bind(now)
            .bind(pending as i64)
            .bind(duration.as_secs_f64())
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.restore_pool_settings().await
    }

    /// Ends the run's work without completing it: its committed pages stay
    /// and the run stays `running`, for the next run to resume. A dry
    /// run's snapshot is rolled back.
    pub async fn rollback(mut self) -> Result<()> {
        // The rollback matters, the cache size does not: its failure is no
        // reason to skip the rollback.
        let _ = self.restore_pool_settings().await;
        if let RunConn::Snapshot(tx) = self.conn {
            tx.rollback().await?;
        }
        Ok(())
    }

    /// The pooled connection's page cache, checkpoint threshold and
    /// temporary storage again (not transactional; the pool also resets
    /// the last as it gets the connection back); the run's checkpoint
    /// thread ends. Between its pages the run's connection keeps its
    /// pages' `temp_store = MEMORY` (`BULK_BEGIN`): the walk reads in the
    /// primary key's order and the evidence by key, with no sort.
    async fn restore_pool_settings(&mut self) -> Result<()> {
        self.checkpoints = None;
        sqlx::query(DEFAULT_TEMP_STORE)
            .execute(self.conn.get())
            .await?;
        sqlx::query(POOL_AUTOCHECKPOINT)
            .execute(self.conn.get())
            .await?;
        sqlx::query(concat!("PRAGMA cache_size = ", pool_cache!()))
            .execute(self.conn.get())
            .await?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A new database in a directory of its own, removed when dropped.
    pub(super) async fn new_db() -> (tempfile::TempDir, SqliteDb) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = SqliteDb::open(dir.path().join("autosign.sqlite"))
            .await
            .expect("a new database");
        (dir, db)
    }

    /// The settings of every pooled connection, all held at once so that
    /// each is a different one.
    async fn pooled_settings(db: &SqliteDb) -> Vec<(i64, i64, i64)> {
        let mut all = Vec::new();
        for _ in 0..4 {
            all.push(db.pool.acquire().await.expect("a pooled connection"));
        }
        let mut out = Vec::new();
        for c in &mut all {
            out.push(settings(c).await);
        }
        out
    }

    async fn settings(c: &mut SqliteConnection) -> (i64, i64, i64) {
        let ckpt = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut *c)
            .await
            .expect("the checkpoint threshold");
        let cache = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&mut *c)
            .await
            .expect("the page cache");
        let temp_store = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&mut *c)
            .await
            .expect("the temporary storage");
        (ckpt, cache, temp_store)
    }

    /// A statement in a transaction keeps the pages it changes in its
    /// statement journal, in case it fails half-way; past SQLite's
    /// threshold the journal goes on in a temporary file. Here an UPDATE
    /// (a CHECK makes it able to fail half-way) changes about 8 MiB of
    /// pages inside a transaction and must succeed: with the threshold
    /// built at 4 MiB the spill wrote nothing and failed with "database or
    /// disk is full" (`SQLITE_STMTJRNL_SPILL`, .cargo/config.toml).
    #[tokio::test]
    async fn a_statement_journal_too_big_for_memory_goes_on_in_a_file() {
        let (_dir, db) = new_db().await;
        let mut c = db.pool.acquire().await.expect("a pooled connection");
        sqlx::query(
            "CREATE TABLE big (k INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (length(v) > 0))",
        )
        .execute(&mut *c)
        .await
        .expect("a table");
        sqlx::query(
            "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 2000)
             INSERT INTO big SELECT k, printf('%.4000c', 'a') FROM n",
        )
        .execute(&mut *c)
        .await
        .expect("8 MB of rows");
        let mut tx = c
            .begin_with("BEGIN IMMEDIATE")
            .await
            .expect("a transaction");
        sqlx::query("INSERT INTO big VALUES (0, 'first')")
            .execute(&mut *tx)
            .await
            .expect("a first statement");
        let changed = sqlx::query("UPDATE big SET v = v || 'b'")
            .execute(&mut *tx)
            .await
            .expect("a statement whose journal spills")
            .rows_affected();
        tx.commit().await.expect("the commit");
        assert_eq!(changed, 2001);
        let longer: i64 = sqlx::query_scalar("SELECT count(*) FROM big WHERE length(v) = 4001")
            .fetch_one(&mut *c)
            .await
            .expect("a count");
        assert_eq!(longer, 2000);
    }

    /// A run's own connection settings (its page cache, its checkpoint
    /// threshold, its statement journals in memory) last as long as the
    /// run: its pooled connection goes back with the pool's, whether the
    /// run completes or stops.
    #[tokio::test]
    async fn a_run_gives_its_connection_back_with_the_pools_settings() {
        let (_dir, db) = new_db().await;
        let pool: i64 = pool_cache!().parse().expect("a number");
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).expect("a date");
        for (as_of, completes) in [(day(27), true), (day(28), false)] {
            let mut run = db
                .begin_run(as_of, "2026-11-27T02:00:00+08:00", 0)
                .await
                .expect("a run");
            assert_eq!(settings(run.conn.get()).await, (4000, -16384, 2));
            if completes {
                run.complete(0, "2026-11-27T02:00:01+08:00", Duration::ZERO)
                    .await
                    .expect("the run completed");
            } else {
                run.rollback().await.expect("the run stopped");
            }
            for s in pooled_settings(&db).await {
                assert_eq!(s, (1000, pool, 0), "completed: {completes}");
            }
        }
    }

    /// An import keeps its statement journals in memory for its
    /// transaction only: its connection goes back to the pool with
    /// SQLite's default, whether the import commits, rolls back or is
    /// dropped half-way (an error's path).
    #[tokio::test]
    async fn an_import_gives_its_connection_back_with_the_default_temporary_storage() {
        let (_dir, db) = new_db().await;
        let pool: i64 = pool_cache!().parse().expect("a number");
        for end in ["commit", "rollback", "drop"] {
            let mut import = db
                .begin_import(
                    "permits",
                    "permits.csv",
                    end,
                    crate::feeds::Delivery::Snapshot,
                    "2026-11-27T01:00:00+08:00",
                )
                .await
                .expect("an import");
            assert_eq!(settings(&mut import.tx).await, (1000, pool, 2), "{end}");
            match end {
                "commit" => import
                    .commit(ImportCounts {
                        rows_read: 0,
                        rows_imported: 0,
                        rows_rejected: 0,
                    })
                    .await
                    .expect("committed"),
                "rollback" => import.rollback().await.expect("rolled back"),
                _ => drop(import),
            }
            for s in pooled_settings(&db).await {
                assert_eq!(s, (1000, pool, 0), "{end}");
            }
        }
    }
}
