//! The primitives SQLite's bulk paths share, and the one module whose
//! signatures name rusqlite's types: the raw handle ([`with_raw`]), the
//! read-only connections beside a run's transaction ([`snapshot_reader`])
//! and the exports' ([`with_stream_reader`]), the run's checkpoint thread
//! ([`Checkpointer`]);
//! the row decoders; the bulk writes' statements, which bind their values
//! where they lie rather than copied ([`Prepared`], [`Arg`], [`SqlDate`]:
//! `insert.rs`), the multi-row INSERTs ([`insert_chunk`]) and the keyed
//! feeds' upsert built on them; the notices and the permit changes of a
//! run's page and of `release` ([`NoticeWriter`], [`EffectWriter`]); and what is handed
//! a connection or a row: the holders' evidence (read on the run's handle
//! and on a reader of its own), an export's plain stream, the due query's
//! column of cycle decisions ([`cycle_decisions!`]) beside the decoder of
//! its letters. The table families (`import.rs`, `run.rs`, `ledger.rs`,
//! `export.rs`) call these (their rows' values given with [`args!`]) and
//! prepare and step their own statements in their functions' bodies, which
//! name rusqlite's `params!` and a few of its types, never in a signature.
//!
//! Why two drivers: one prepared statement stepped per row through
//! rusqlite costs about a microsecond, where sqlx's multi-row statements
//! spent most of their time building SQL text and argument buffers
//! (measured: docs/benchmarks.md). The raw handle is sqlx's own
//! connection, taken with its lock, so these paths run inside whatever
//! transaction sqlx has open.
//!
//! The work is blocking (SQLite has no async interface): [`with_raw`] runs
//! it with `block_in_place`, so the async runtime's other tasks — the
//! daemon's scheduler, health endpoint and delivery worker — move to
//! another worker thread meanwhile instead of waiting behind a night's
//! writes. The readers beside a run's transaction are threads of their
//! own.

use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::sqlite::SqliteConnection;

use super::super::rows::*;
use super::{SqliteDb, SqliteImportTx};
use crate::domain::{CycleDecision, EventKind};
use crate::error::{Error, Result};

mod insert;
pub(super) use insert::{args, insert_chunk, Arg, Prepared, SqlDate, ROWS_PER_INSERT};

/// Runs `f` on the connection's raw SQLite handle through rusqlite, inside
/// whatever transaction sqlx has open on it, off the async runtime's
/// worker threads (see the module's doc).
pub(super) async fn with_raw<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T> {
    let mut handle = conn.lock_handle().await?;
    let ptr = handle.as_raw_handle();
    let work = || {
        // SAFETY: `handle` keeps sqlx's worker away from this connection
        // until it is dropped, and the wrapper does not own the handle (it
        // never closes it); the wrapper and its statements are dropped
        // before `handle`, and all of it happens on this thread.
        let raw = unsafe { rusqlite::Connection::from_handle(ptr.as_ptr()) }?;
        let out = f(&raw);
        drop(raw);
        out
    };
    let out = off_runtime(work);
    drop(handle);
    out.map_err(raw_err)
}

/// Runs blocking `work` where it keeps no async task waiting: on a
/// multi-threaded runtime (the binary's) through `block_in_place`, which
/// hands this worker's other tasks to another thread first; elsewhere (a
/// current-thread runtime, as in-process tests build, where
/// `block_in_place` is not allowed) in place.
fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The error a scoped helper thread ended with, if any (its panic is one).
pub(super) fn thread_error(joined: std::thread::Result<Result<()>>, thread: &str) -> Option<Error> {
    match joined {
        Ok(r) => r.err(),
        Err(_) => Some(Error::Runtime(anyhow::anyhow!(
            "internal: {thread} panicked"
        ))),
    }
}

pub(super) fn raw_err(e: rusqlite::Error) -> Error {
    Error::Runtime(anyhow::anyhow!("database error: {e}"))
}

/// Dates are stored as `YYYY-MM-DD` text. Read in place and parsed by
/// the feeds' own date parser rather than chrono's `parse_from_str`, which
/// interprets its format string again on every call (about 1 % of a first
/// night's CPU, most of it in the run's page reader).
pub(super) fn raw_date(row: &rusqlite::Row, i: usize) -> rusqlite::Result<NaiveDate> {
    stored_date(i, row.get_ref(i)?)
}

fn raw_opt_date(row: &rusqlite::Row, i: usize) -> rusqlite::Result<Option<NaiveDate>> {
    match row.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        v => stored_date(i, v).map(Some),
    }
}

fn stored_date(i: usize, v: rusqlite::types::ValueRef<'_>) -> rusqlite::Result<NaiveDate> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), e)
    };
    let text = v.as_str().map_err(|e| failed(Box::new(e)))?;
    crate::domain::parse_date(text).map_err(|e| failed(Box::new(e)))
}

/// A stored code of one of the domain's enumerations.
pub(super) fn raw_code<T: TryFrom<String, Error = String>>(
    row: &rusqlite::Row,
    i: usize,
) -> rusqlite::Result<T> {
    T::try_from(row.get::<_, String>(i)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

pub(super) fn raw_permit(r: &rusqlite::Row) -> rusqlite::Result<PermitRow> {
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
        status: raw_code(r, 9)?,
        employer_uscc: r.get(10)?,
        si_status: raw_code(r, 11)?,
        marital_status: raw_code(r, 12)?,
    })
}

pub(super) fn raw_notification_row(r: &rusqlite::Row) -> rusqlite::Result<NotificationRow> {
    Ok(NotificationRow {
        notification_id: r.get(0)?,
        run_id: r.get(1)?,
        as_of: raw_date(r, 2)?,
        permit_no: r.get(3)?,
        cycle_valid_until: raw_date(r, 4)?,
        kind: raw_code(r, 5)?,
        channel: raw_code(r, 6)?,
        recipient: r.get(7)?,
        status: raw_code(r, 8)?,
        attempts: r.get(9)?,
        next_attempt_at: r.get(10)?,
        last_error: r.get(11)?,
        provider_ref: r.get(12)?,
        created_at: r.get(13)?,
        sent_at: r.get(14)?,
        message: r.get(15)?,
    })
}

/// The final decisions written for the due permit `p`'s cycle and what
/// became of each — the facts C8 needs, not a verdict — one letter a
/// decision ([`decision_code`]), in one column of the due query: a
/// statement stepped per permit cost the first night 7 % more. Two arms,
/// as the events of held and unheld runs are in two partial indexes.
macro_rules! cycle_decisions {
    () => {
        "(SELECT group_concat(f, '') FROM (
            SELECT CASE WHEN EXISTS (SELECT 1 FROM event_reverts v
                                     WHERE v.event_id = e.event_id AND v.undone = 1)
                        THEN 'A' ELSE 'a' END AS f
              FROM events e
             WHERE e.permit_no = p.permit_no AND e.valid_until = p.valid_until
               AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held = 0
            UNION ALL
            SELECT CASE WHEN x.applied IS NULL THEN 'h' WHEN x.applied = 1 THEN 'r' ELSE 'n' END
                   || CASE WHEN EXISTS (SELECT 1 FROM event_reverts v
                                        WHERE v.event_id = e.event_id AND v.undone = 1)
                           THEN 'u' ELSE '' END
              FROM events e LEFT JOIN event_releases x ON x.event_id = e.event_id
             WHERE e.permit_no = p.permit_no AND e.valid_until = p.valid_until
               AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held = 1))"
    };
}
pub(super) use cycle_decisions;

/// The decisions of [`cycle_decisions!`]'s letters: `a` written by a run
/// the brake let through (`A`: reverted since); for a held one, `h` not
/// released, `r` applied by a release, `n` released as not applied, each
/// followed by `u` if reverted since.
pub(super) fn decision_code(code: &str) -> rusqlite::Result<Vec<CycleDecision>> {
    let mut out = Vec::new();
    let mut letters = code.chars().peekable();
    while let Some(c) = letters.next() {
        let (held, released) = match c {
            'a' | 'A' => (false, None),
            'h' => (true, None),
            'r' => (true, Some(true)),
            'n' => (true, Some(false)),
            _ => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Text,
                    format!("unknown cycle decision code {code:?}").into(),
                ))
            }
        };
        let undone = c == 'A' || (held && letters.next_if_eq(&'u').is_some());
        out.push(CycleDecision {
            held,
            released,
            undone,
        });
    }
    Ok(out)
}

/// A run's permit changes (R3, R7), applied to the narrow `permit_state`
/// table (migration 5) by a run and by `release`.
pub(super) struct EffectWriter<'c> {
    extend: Prepared<'c>,
    status: Prepared<'c>,
}

impl<'c> EffectWriter<'c> {
    pub(super) fn new(c: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            extend: Prepared::new(
                c,
                "UPDATE permit_state SET valid_until = ?2 WHERE permit_no = ?1",
            )?,
            status: Prepared::new(
                c,
                "UPDATE permit_state SET status = ?2 WHERE permit_no = ?1",
            )?,
        })
    }

    pub(super) fn apply(&mut self, permit_no: &str, effect: Effect) -> rusqlite::Result<()> {
        match effect {
            Effect::Extend(to) => self.extend.execute(&args![permit_no, SqlDate::new(to)]),
            Effect::SetStatus(s) => self.status.execute(&args![permit_no, s.code()]),
            Effect::None => Ok(()),
        }
    }
}

const NOTICE_INSERT: &str =
    "INSERT INTO notifications (run_id, as_of, permit_no, cycle_valid_until,
    kind, channel, recipient, message, status, created_at) VALUES ";

/// One notice to queue: its permit, the cycle it closes (`valid_until`),
/// the decision's kind and what the notice says to whom.
pub(super) type NoticeRow<'a> = (&'a str, NaiveDate, EventKind, &'a NewNotice);

/// The notices (R8) of a run's page or of `release`, queued in the
/// transaction that writes their decisions, as multi-row INSERTs of up to
/// [`ROWS_PER_INSERT`] rows; PostgreSQL's counterpart is one statement.
pub(super) struct NoticeWriter<'c> {
    c: &'c rusqlite::Connection,
    full: Option<Prepared<'c>>,
    run_id: i64,
    as_of: String,
    created_at: &'c str,
}

impl<'c> NoticeWriter<'c> {
    pub(super) fn new(
        c: &'c rusqlite::Connection,
        run_id: i64,
        as_of: NaiveDate,
        created_at: &'c str,
    ) -> Self {
        Self {
            c,
            full: None,
            run_id,
            as_of: as_of.to_string(),
            created_at,
        }
    }

    /// Queues `rows`, at most [`ROWS_PER_INSERT`] of them, in one
    /// statement: due now (fresh, with no `next_attempt_at`: migration 15),
    /// or undeliverable when there is no channel (C12).
    pub(super) fn insert(&mut self, rows: &[NoticeRow<'_>]) -> rusqlite::Result<()> {
        let (run_id, as_of, at) = (self.run_id, self.as_of.as_str(), self.created_at);
        insert_chunk(
            self.c,
            &mut self.full,
            (NOTICE_INSERT, 10, "", ""),
            rows,
            |out, &(permit_no, valid_until, kind, n)| {
                out.extend(args![
                    run_id,
                    as_of,
                    permit_no,
                    SqlDate::new(valid_until),
                    kind.code(),
                    n.channel.code(),
                    &n.recipient,
                    &n.message,
                    n.status.code(),
                    at,
                ]);
            },
        )
    }
}

/// Page cache of the run's readers beside its transaction, KiB: enough to
/// keep the interior pages of a 10M-permit register's tables and feed
/// tables (a few MiB each at 16 KiB pages), which each look-up by key
/// walks; with less, every look-up read them again from the file
/// (measured at 10M permits: a steady night's run 7.75 s with 1 MiB,
/// 7.1 s with 16 MiB).
/// The process's memory bound counts every connection's.
const READER_CACHE: &str = "PRAGMA cache_size = -16384";

/// Page cache of the exports' reader ([`with_stream_reader`]), KiB.
const STREAM_CACHE: &str = "PRAGMA cache_size = -4096";

/// A connection to the database beside the pool's, for one thread: the
/// run's readers, the exports' and the run's checkpoints.
fn open_beside(path: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(raw_err)
}

/// A read-only connection of the run's own, each of whose statements
/// reads what is committed when it starts (the run's page reader, beside
/// the pages the run commits).
pub(super) fn reader(path: &Path) -> Result<rusqlite::Connection> {
    reader_with_cache(path, READER_CACHE)
}

/// A read-only connection with the page cache `cache` (a pragma).
fn reader_with_cache(path: &Path, cache: &str) -> Result<rusqlite::Connection> {
    let c = open_beside(path)?;
    c.execute_batch(&format!("PRAGMA query_only = 1; {cache}"))
        .map_err(raw_err)?;
    c.busy_timeout(Duration::from_secs(60)).map_err(raw_err)?;
    Ok(c)
}

/// Checkpoints the write-ahead log beside a run's writer, on a thread and
/// a connection of its own. SQLite checkpoints in the connection whose
/// commit takes the log past `wal_autocheckpoint` (1,000 pages): the
/// run's writer, which then copied the log into the database and waited
/// on its fsyncs before it went on to the next page (at 1M permits about
/// 40 fsyncs, 0.4 s, of a 2.5 s first night). Nudged after each page's
/// commit, this thread checkpoints meanwhile, PASSIVE (it never waits for
/// or blocks the writer or a reader). The writer still checkpoints, less
/// often (the run raises its threshold: `RUN_AUTOCHECKPOINT`): it finds
/// the log mostly copied, copies the rest, and the log starts again from
/// its beginning at the next page; this thread alone never catches up
/// with a busy writer. Best effort: a failed checkpoint is left to the
/// next nudge and to the writer's own.
///
/// Dropped, it waits for the thread to close its connection: SQLite
/// removes the log when the last connection to the database closes, which
/// must be the pool's as the command ends (`Db::close`), not this one's
/// after the process has gone.
pub(super) struct Checkpointer {
    nudge: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Result<Self> {
        let c = open_beside(path)?;
        // As the pool's connections: the checkpoint syncs the log before it
        // copies and the database after.
        c.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(raw_err)?;
        // One nudge waiting is enough: a checkpoint copies all there is.
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("autosign-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    if let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::debug!("checkpoint beside the run: {e}");
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the run's checkpoint thread".to_string(), e))?;
        Ok(Checkpointer {
            nudge: Some(nudge),
            thread: Some(thread),
        })
    }

    /// A page was committed: checkpoint it (unless a nudge already waits).
    pub(super) fn nudge(&self) {
        if let Some(n) = &self.nudge {
            let _ = n.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Ends the thread (after the checkpoint under way, if any) and waits
    /// until its connection is closed.
    fn drop(&mut self) {
        self.nudge = None;
        if let Some(thread) = self.thread.take() {
            let _ = off_runtime(|| thread.join());
        }
    }
}

/// Runs `f` on a [`reader`] of its own with a small page cache, off the
/// async runtime's worker threads: for the exports' long reads, which
/// visit each page once and in order. On a pooled connection they filled
/// its 64 MiB cache, fresh memory the kernel zeroes page by page, for no
/// page they read twice (measured at 10M permits, the audit export of a
/// first night: 4.78–4.94 s with it, 4.47–4.82 s with 4 MiB, peak 107 MB
/// against 42 MB). Each statement reads what is committed when it starts.
pub(super) fn with_stream_reader<T>(
    path: &Path,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T> {
    off_runtime(|| {
        let c = reader_with_cache(path, STREAM_CACHE)?;
        f(&c).map_err(raw_err)
    })
}

/// A [`reader`] in a read transaction of its own: all its statements see
/// one snapshot.
pub(super) fn snapshot_reader(path: &Path) -> Result<rusqlite::Connection> {
    let c = reader(path)?;
    c.execute_batch("BEGIN").map_err(raw_err)?;
    Ok(c)
}

/// The evidence of these holders (in key order, so that each table's
/// B-tree is walked once, forwards) within the bounds: one indexed lookup
/// per holder and feed table (each holds one row per key: R2 is settled
/// when rows are written).
pub(super) fn holder_evidence(
    c: &rusqlite::Connection,
    ids: &[&str],
    b: &EvidenceBounds,
    sink: &mut (dyn EvidenceSink + Send),
) -> rusqlite::Result<()> {
    let (vf, vt) = (b.visited_from.to_string(), b.visited_to.to_string());
    let (mf, mt) = (b.month_from.as_str(), b.month_to.as_str());
    let mut visits = c.prepare(
        "SELECT visited_on, result FROM residence
         WHERE id_number = ?1 AND visited_on BETWEEN ?2 AND ?3",
    )?;
    let mut payments = c.prepare(
        "SELECT month, status, employer_uscc FROM social_insurance
         WHERE id_number = ?1 AND month BETWEEN ?2 AND ?3",
    )?;
    let mut civil =
        c.prepare("SELECT marital_status, as_of FROM civil_status WHERE id_number = ?1")?;
    for &id in ids {
        let mut rows = visits.query(rusqlite::params![id, vf, vt])?;
        while let Some(r) = rows.next()? {
            sink.residence(id, raw_date(r, 0)?, raw_code(r, 1)?);
        }
        let mut rows = payments.query(rusqlite::params![id, mf, mt])?;
        while let Some(r) = rows.next()? {
            sink.payment(
                id,
                raw_code(r, 0)?,
                raw_code(r, 1)?,
                r.get_ref(2)?.as_str()?,
            );
        }
        let mut rows = civil.query([id])?;
        while let Some(r) = rows.next()? {
            sink.civil(id, raw_code(r, 0)?, raw_opt_date(r, 1)?);
        }
    }
    Ok(())
}

impl SqliteDb {
    /// Streams the rows of an export query over an `as_of` range (?1, ?2)
    /// to `each`, stopping at the first error it returns.
    pub(super) async fn stream_range<T>(
        &self,
        sql: &str,
        from: NaiveDate,
        to: NaiveDate,
        map: fn(&rusqlite::Row) -> rusqlite::Result<T>,
        each: &mut (dyn FnMut(T) -> Result<()> + Send),
    ) -> Result<()> {
        let mut failed = None;
        with_stream_reader(&self.path, |c| {
            let mut stmt = c.prepare(sql)?;
            let mut rows = stmt.query(rusqlite::params![from.to_string(), to.to_string()])?;
            while let Some(r) = rows.next()? {
                if let Err(e) = each(map(r)?) {
                    failed = Some(e);
                    break;
                }
            }
            Ok(())
        })?;
        failed.map_or(Ok(()), Err)
    }
}

impl SqliteImportTx {
    /// Writes a keyed feed's page (one row per key, in key order) as
    /// multi-row upserts (`head`, the row's `columns` ending with the
    /// import's id, then `on_conflict`), each row's values but the last
    /// given by `row` (with [`args!`]): each row inserted, or replacing the
    /// stored row with its key (R2).
    pub(super) async fn upsert<'r, T>(
        &mut self,
        (head, columns, on_conflict): (&str, usize, &str),
        rows: &'r [T],
        row: impl Fn(&mut Vec<Arg<'r>>, &'r T),
    ) -> Result<()> {
        let import_id = self.import_id;
        with_raw(&mut self.tx, |c| {
            let mut full = None;
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                insert_chunk(
                    c,
                    &mut full,
                    (head, columns, "", on_conflict),
                    chunk,
                    |out, r| {
                        row(out, r);
                        out.push(Arg::Int(import_id));
                    },
                )?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cycle_decision_letter_reads_back_as_the_decision_it_stands_for() {
        let d = |held, released, undone| CycleDecision {
            held,
            released,
            undone,
        };
        assert_eq!(decision_code("").expect("empty"), vec![]);
        assert_eq!(
            decision_code("aAhrnhuruns").ok(),
            None,
            "an unknown letter is an error"
        );
        assert_eq!(
            decision_code("aAhrnhurunu").expect("letters"),
            vec![
                d(false, None, false),
                d(false, None, true),
                d(true, None, false),
                d(true, Some(true), false),
                d(true, Some(false), false),
                d(true, None, true),
                d(true, Some(true), true),
                d(true, Some(false), true),
            ]
        );
    }
}
