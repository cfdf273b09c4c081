//! The database layer: every SQL statement lives here, behind [`Db`].
//!
//! `Db` is an enum over backends rather than sqlx's `Any` driver (which
//! loses chrono support and rewrites placeholders wrongly, sqlx #3000).
//! SQLite is the embedded default, PostgreSQL the production one; each has
//! its own migration set of the same numbering and the same logical
//! tables. Callers never see a backend type.
//!
//! The files go by table family — `register.rs`, `feeds.rs`, `runs.rs`,
//! `outbox.rs` — and hold the statements both backends run alike, written
//! once ([`on_pool!`], [`spelled!`]) and mapped to the row types of
//! `rows.rs` once (`sqlx::FromRow`). What each backend does its own way —
//! the bulk paths of an import and a night, the exports' streams, the job
//! lock, the physical tables those need — is in `sqlite/` and
//! `postgres/`, behind [`ImportTx`] and [`RunTx`]; docs/architecture.md
//! ("Storage") names each difference and why.

pub mod dry_run;
pub mod explain;
mod feeds;
pub mod metrics;
pub mod outbox;
mod postgres;
mod register;
pub mod report;
pub mod requeue;
pub mod retention;
mod rows;
mod runs;
mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::NaiveDate;

pub use postgres::PgDb;
pub use rows::*;
pub use sqlite::SqliteDb;

use crate::error::{Error, Result};

/// Runs the same code on whichever pool `db` has: for a statement whose
/// text and rows are the same on both backends. Parameters are written
/// `$1`, which SQLite reads as PostgreSQL does.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite(db) => {
                let $pool = db.pool();
                $body
            }
            $crate::db::Db::Postgres(db) => {
                let $pool = db.pool();
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// A statement in both backends' spellings of its boolean literals, from a
/// macro taking `(true, false)`: SQLite stores booleans as 0 and 1, and its
/// planner uses a partial index (`WHERE held = 0`) only for a query that
/// spells the literal as the index does; PostgreSQL has a boolean type.
/// [`Db::spelling`] picks one.
macro_rules! spelled {
    ($statement:ident) => {
        [$statement!("1", "0"), $statement!("TRUE", "FALSE")]
    };
}
pub(crate) use spelled;

/// The join from an event `e` to the notice `n` its own run queued for it
/// (R8): the same permit, cycle and kind, in the same run. A notice takes
/// its run's as_of, so a night's notices are found through its events
/// (`events_as_of`, migration 14): the notices have no index by date of
/// their own, which cost every decision an entry.
macro_rules! notice_of_event {
    () => {
        "n.permit_no = e.permit_no AND n.cycle_valid_until = e.valid_until AND n.kind = e.kind \
         AND n.run_id = e.run_id"
    };
}
pub(crate) use notice_of_event;

/// A stored code of one of the domain's types (an enumeration's code,
/// [`crate::domain::Reasons`]), read back where a statement's row is
/// mapped by hand; the error names the value.
fn stored<T: TryFrom<String, Error = String>>(code: String) -> Result<T> {
    T::try_from(code).map_err(|e| Error::Runtime(anyhow::anyhow!(e)))
}

/// A connected, migrated database.
#[derive(Clone)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgDb),
}

/// A held job lock (see [`Db::lock_jobs`]); released on drop or when the
/// process dies.
pub enum JobLock {
    File(std::fs::File),
    /// A session holding a PostgreSQL advisory lock.
    Postgres(postgres::PgJobLock),
}

impl Db {
    /// This backend's spelling of a [`spelled!`] statement.
    pub(crate) fn spelling(&self, [sqlite, postgres]: [&'static str; 2]) -> &'static str {
        match self {
            Db::Sqlite(_) => sqlite,
            Db::Postgres(_) => postgres,
        }
    }

    /// Connects to `url` (`sqlite://PATH` or `postgres://…`), creating an
    /// SQLite file (and its directory) if missing, and applies the
    /// embedded migrations.
    pub async fn connect(url: &str) -> Result<Db> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            // `sqlite://` with no path would open a throw-away database and
            // report an import of rows that went nowhere.
            if path.trim().is_empty() {
                return Err(Error::Config(
                    "database URL sqlite:// names no file: give sqlite://PATH".into(),
                ));
            }
            if path.starts_with(':') {
                return Err(Error::Config(format!(
                    "database URL sqlite://{path}: give the path of a database file \
                     (an in-memory database keeps nothing)"
                )));
            }
            return Ok(Db::Sqlite(SqliteDb::open(PathBuf::from(path)).await?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Db::Postgres(PgDb::open(url).await?));
        }
        Err(Error::Config(format!(
            "database URL must start with sqlite:// or postgres://, got {:?}",
            url.split(':').next().unwrap_or("")
        )))
    }

    /// Closes every pooled connection and waits until they are closed. A
    /// command that wrote calls it before it ends: SQLite checkpoints the
    /// write-ahead log and removes it when its last connection closes, and
    /// a log left behind is read whole by the next process to open the
    /// database before it can read anything (measured at 10,000,000
    /// permits: a 5 GB log after the social-insurance import, whose
    /// recovery and checkpoint were half of the next import's time).
    pub async fn close(&self) {
        match self {
            Db::Sqlite(d) => d.pool().close().await,
            Db::Postgres(d) => d.pool().close().await,
        }
    }

    /// Serialises imports and runs across processes: a run sees each feed
    /// file wholly or not at all, and two runs never overlap. Waits for the
    /// lock; `on_wait` is called once if it has to.
    pub async fn lock_jobs(&self, on_wait: impl FnOnce()) -> Result<JobLock> {
        match self {
            Db::Sqlite(db) => db.lock_jobs(on_wait).await,
            Db::Postgres(db) => db.lock_jobs(on_wait).await,
        }
    }

    /// Opens a feed file's import and records it, with the delivery its
    /// feed has (the brake's row-drop check compares snapshots only) and
    /// the time it was made (the brake's feed age).
    pub async fn begin_import(
        &self,
        feed: &str,
        file_name: &str,
        sha256: &str,
        delivery: crate::feeds::Delivery,
        imported_at: &str,
    ) -> Result<ImportTx> {
        match self {
            Db::Sqlite(db) => Ok(ImportTx::Sqlite(
                db.begin_import(feed, file_name, sha256, delivery, imported_at)
                    .await?,
            )),
            Db::Postgres(db) => Ok(ImportTx::Postgres(
                db.begin_import(feed, file_name, sha256, delivery, imported_at)
                    .await?,
            )),
        }
    }

    /// Begins the run for `as_of`: commits its `running`
    /// row (or takes over one left by a crashed process: the caller holds
    /// the job lock, so no live process owns it). `import_mark` is the
    /// newest import the run has seen (the brake's row-count check).
    pub async fn begin_run(&self, as_of: NaiveDate, now: &str, import_mark: i64) -> Result<RunTx> {
        match self {
            Db::Sqlite(db) => Ok(RunTx::Sqlite(db.begin_run(as_of, now, import_mark).await?)),
            Db::Postgres(db) => Ok(RunTx::Postgres(
                db.begin_run(as_of, now, import_mark).await?,
            )),
        }
    }

    pub async fn permits_by_no(&self, permit_nos: &[&str]) -> Result<HashMap<String, PermitRow>> {
        match self {
            Db::Sqlite(db) => db.permits_by_no(permit_nos).await,
            Db::Postgres(db) => db.permits_by_no(permit_nos).await,
        }
    }

    /// `autosign release`: in one transaction, queues the items' notices,
    /// makes their permit changes, records what was done with each event
    /// and marks the run completed. `false` if the run is not held.
    pub async fn release_run(&self, run_id: i64, items: &[ReleaseItem], now: &str) -> Result<bool> {
        match self {
            Db::Sqlite(db) => db.release_run(run_id, items, now).await,
            Db::Postgres(db) => db.release_run(run_id, items, now).await,
        }
    }

    /// `autosign revert`, in one transaction: the run becomes reverted,
    /// its notices withdrawn, each item's permit set back where it is still
    /// as the run left it, and what was done with each event recorded.
    /// Nothing is done if the run is not completed or a notice was sent.
    pub async fn revert_run(
        &self,
        run: &RunRecord,
        items: &[RevertItem],
        now: &str,
    ) -> Result<RevertDone> {
        match self {
            Db::Sqlite(db) => db.revert_run(run, items, now).await,
            Db::Postgres(db) => db.revert_run(run, items, now).await,
        }
    }

    /// Streams audit rows (R9) for runs with `from <= as_of <= to`, oldest
    /// first, in a deterministic order, as the text the export writes
    /// (SQLite hands out its stored text without a copy: an export at city
    /// scale is millions of cells).
    pub async fn audit_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(&AuditCells<'_>) -> Result<()> + Send),
    ) -> Result<()> {
        match self {
            Db::Sqlite(db) => db.audit_rows(from, to, each).await,
            Db::Postgres(db) => db.audit_rows(from, to, each).await,
        }
    }

    pub async fn notification_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(NotificationRow) -> Result<()> + Send),
    ) -> Result<()> {
        match self {
            Db::Sqlite(db) => db.notification_rows(from, to, each).await,
            Db::Postgres(db) => db.notification_rows(from, to, each).await,
        }
    }
}

/// One feed file's import, in one transaction (R2).
pub enum ImportTx {
    Sqlite(sqlite::SqliteImportTx),
    Postgres(postgres::PgImportTx),
}

impl ImportTx {
    pub fn import_id(&self) -> i64 {
        match self {
            ImportTx::Sqlite(tx) => tx.import_id,
            ImportTx::Postgres(tx) => tx.import_id,
        }
    }

    /// Stored state of these permits, for `VALID_UNTIL_BACKWARDS` and C5.
    pub async fn lookup_permits(
        &mut self,
        permit_nos: &[&str],
    ) -> Result<HashMap<String, PriorPermit>> {
        match self {
            ImportTx::Sqlite(tx) => tx.lookup_permits(permit_nos).await,
            ImportTx::Postgres(tx) => tx.lookup_permits(permit_nos).await,
        }
    }

    /// Whether the register was empty when this import began.
    pub async fn register_is_empty(&mut self) -> Result<bool> {
        match self {
            ImportTx::Sqlite(tx) => tx.register_is_empty().await,
            ImportTx::Postgres(tx) => tx.register_is_empty().await,
        }
    }

    pub async fn upsert_permits(&mut self, rows: &[(PermitRow, ImportMark)]) -> Result<()> {
        match self {
            ImportTx::Sqlite(tx) => tx.upsert_permits(rows).await,
            ImportTx::Postgres(tx) => tx.upsert_permits(rows).await,
        }
    }

    /// C5: a row for a cancelled permit updates its contact fields only.
    pub async fn update_contacts(&mut self, rows: &[ContactUpdate]) -> Result<()> {
        match self {
            ImportTx::Sqlite(tx) => tx.update_contacts(rows).await,
            ImportTx::Postgres(tx) => tx.update_contacts(rows).await,
        }
    }

    // A keyed feed's page: one row per key, in key order (the import's
    // external sort settles R2 within the file); a stored row with the
    // key is replaced.

    pub async fn upsert_residence(&mut self, rows: &[ResidenceRow]) -> Result<()> {
        match self {
            ImportTx::Sqlite(tx) => tx.upsert_residence(rows).await,
            ImportTx::Postgres(tx) => tx.upsert_residence(rows).await,
        }
    }

    pub async fn upsert_social_insurance(&mut self, rows: &[SocialInsuranceRow]) -> Result<()> {
        match self {
            ImportTx::Sqlite(tx) => tx.upsert_social_insurance(rows).await,
            ImportTx::Postgres(tx) => tx.upsert_social_insurance(rows).await,
        }
    }

    pub async fn upsert_civil_status(&mut self, rows: &[CivilStatusRow]) -> Result<()> {
        match self {
            ImportTx::Sqlite(tx) => tx.upsert_civil_status(rows).await,
            ImportTx::Postgres(tx) => tx.upsert_civil_status(rows).await,
        }
    }

    pub async fn commit(self, counts: ImportCounts) -> Result<()> {
        match self {
            ImportTx::Sqlite(tx) => tx.commit(counts).await,
            ImportTx::Postgres(tx) => tx.commit(counts).await,
        }
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            ImportTx::Sqlite(tx) => tx.rollback().await,
            ImportTx::Postgres(tx) => tx.rollback().await,
        }
    }
}

/// What a run makes of a page of candidates: its events, in `permit_no`
/// order ([`RunTx::event_pages`]).
pub type MakeEvents = Box<dyn FnMut(Vec<Candidate>) -> Result<Vec<NewEvent>> + Send>;

/// The permits of a run's pages as its walk found them, a page at a time,
/// each page in `permit_no` order and after the page before it
/// ([`RunTx::event_pages`]).
pub type PageKeys = Box<dyn Iterator<Item = Vec<CandidateState>> + Send>;

/// One page of a run's events in the making: the permits read, and their
/// events.
type EventPage = Result<(usize, Vec<NewEvent>)>;

/// A run's pages of events in the making ([`RunTx::event_pages`]), read
/// and made by a reader of their own (a thread over a second connection on
/// SQLite, a task over a pooled connection on PostgreSQL), at most one
/// page ahead of the writer; taken one at a time with
/// [`EventPageReader::next`].
pub struct EventPageReader {
    pages: tokio::sync::mpsc::Receiver<EventPage>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl EventPageReader {
    fn new(
        pages: tokio::sync::mpsc::Receiver<EventPage>,
        reader: tokio::task::JoinHandle<()>,
    ) -> Self {
        EventPageReader {
            pages,
            reader: Some(reader),
        }
    }

    /// The next page's candidate count and events; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<(usize, Vec<NewEvent>)>> {
        match self.pages.recv().await {
            Some(page) => page.map(Some),
            None => {
                // The reader is done and its connection closed, so its
                // snapshot holds nothing back after the run's commit (the
                // SQLite checkpoint).
                if let Some(reader) = self.reader.take() {
                    reader.await.map_err(|e| {
                        Error::Runtime(anyhow::anyhow!("the run's page reader failed: {e}"))
                    })?;
                }
                Ok(None)
            }
        }
    }
}

impl Drop for EventPageReader {
    /// A run that stops early (an error on the writer's side) stops its
    /// reader too: a PostgreSQL task would otherwise hold its pooled
    /// connection until its next send failed. A blocking thread cannot be
    /// aborted; it stops at its next send.
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// A run's work on the database. On both backends each page of events
/// commits on its own with its notices and permit changes (R7, R8); a
/// crashed run's committed pages stay (they are final) and the next run
/// for the date takes the `running` row over and writes the rest: what a
/// committed page did is in the register (a new valid_until, a new
/// status) or in the events the walk returns (C8), so nothing is
/// decided twice. PostgreSQL also checks a fencing token on the `runs`
/// row in each page's transaction, since its job lock is a session lock
/// that a lost connection gives up.
pub enum RunTx {
    Sqlite(sqlite::SqliteRunTx),
    Postgres(postgres::PgRunTx),
}

impl RunTx {
    pub fn run(&self) -> &RunRecord {
        match self {
            RunTx::Sqlite(t) => &t.run,
            RunTx::Postgres(t) => &t.run,
        }
    }

    /// The night's one walk of the register: the permits within `bounds`
    /// (R3, R4), into `sink` in pages of `limit` in `permit_no` order.
    /// Those that may be due — active, `valid_until` from `due_from` on —
    /// come with their holder, their baseline (R5) and the AUTO_SIGNED and
    /// VISIT_CENTER events written for their cycle and what became of them
    /// (held, released, reverted), for `rules::cycle_decided` (C8) to
    /// judge; the others with their state alone, their details not read.
    /// What the rest of the night reads, it reads by key. Each backend
    /// walks on two connections at once, the second into a
    /// [`WalkSink::part`]: SQLite from both ends of the key until they
    /// meet, the upper end's permits downwards
    /// ([`WalkSink::merge_descending`]); PostgreSQL the two halves of the
    /// key, split at a sampled median.
    pub async fn walk<S: WalkSink>(
        &mut self,
        bounds: CandidateBounds,
        due_from: NaiveDate,
        limit: u32,
        sink: &mut S,
    ) -> Result<()> {
        match self {
            RunTx::Sqlite(t) => t.walk(bounds, due_from, limit, sink).await,
            RunTx::Postgres(t) => t.walk(bounds, due_from, limit, sink).await,
        }
    }

    /// Step 2's pages: the permits of each page of `keys`, their details
    /// read by key beside the state the walk found, each page turned into
    /// its events by `make`, taken one page at a time with
    /// [`EventPageReader::next`].
    ///
    /// A reader of their own reads the pages over a second connection and
    /// makes their events while the run writes the page before (the read
    /// and the writes overlap on two cores). It sees the register as this
    /// run found it: the run holds the job lock from its start, and a
    /// page's writes change only the page's own permits, which come before
    /// the rest in key order. On PostgreSQL a dry run's reader imports the
    /// dry run's snapshot.
    pub async fn event_pages(
        &mut self,
        keys: PageKeys,
        make: MakeEvents,
    ) -> Result<EventPageReader> {
        match self {
            RunTx::Sqlite(t) => Ok(t.event_pages(keys, make)),
            RunTx::Postgres(t) => t.event_pages(keys, make).await,
        }
    }

    /// Feeds `sink` the feed rows of these holders (`id_numbers`) within
    /// `bounds` (R5, C4): each feed table holds one row per key (R2 is
    /// settled when rows are written), looked up by the holder's ID number,
    /// so the cost follows the due holders, not the feeds' size. Both
    /// backends read the holders in key order, half of them on a second
    /// connection into an [`EvidenceSink::part`]; PostgreSQL 10,000 at a
    /// time, each query bounded by its chunk's first and last key.
    pub async fn feed_evidence<S: EvidenceSink>(
        &mut self,
        id_numbers: &[&str],
        bounds: &EvidenceBounds,
        sink: &mut S,
    ) -> Result<()> {
        match self {
            RunTx::Sqlite(t) => t.feed_evidence(id_numbers, bounds, sink).await,
            RunTx::Postgres(t) => t.feed_evidence(id_numbers, bounds, sink).await,
        }
    }

    /// Writes events, their notices and the permit changes they imply
    /// (R7, R8).
    pub async fn write(&mut self, batch: RunBatch) -> Result<()> {
        match self {
            RunTx::Sqlite(t) => t.write(&batch).await,
            RunTx::Postgres(t) => t.write(batch).await,
        }
    }

    /// Marks the run held by the safety brake before it writes
    /// anything: its batches then carry events only, and `complete` marks
    /// it `held`. `now` is the run's heartbeat on PostgreSQL, whose run
    /// checks that it still owns the run (SQLite's job lock is a file lock
    /// on this host, held until the process ends).
    pub async fn hold(&mut self, why: &str, now: &str) -> Result<()> {
        match self {
            RunTx::Sqlite(t) => t.hold(why, now).await,
            RunTx::Postgres(t) => t.hold(why, now).await,
        }
    }

    /// Marks the run completed (or held) at `now`, with the attempt's
    /// measured `duration`, and commits.
    pub async fn complete(
        self,
        pending: u64,
        now: &str,
        duration: std::time::Duration,
    ) -> Result<()> {
        match self {
            RunTx::Sqlite(t) => t.complete(pending, now, duration).await,
            RunTx::Postgres(t) => t.complete(pending, now, duration).await,
        }
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            RunTx::Sqlite(t) => t.rollback().await,
            RunTx::Postgres(t) => t.rollback().await,
        }
    }
}
