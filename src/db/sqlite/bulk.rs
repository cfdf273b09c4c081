//! SQLite's bulk paths, and the one module that talks to SQLite through
//! rusqlite: the import's writes, the run's reads and writes, the exports'
//! streams, and the operator's release and revert (many rows in one
//! transaction). Everything else on SQLite goes through sqlx.
//!
//! Why two drivers: one prepared statement stepped per row through
//! rusqlite costs about a microsecond, where sqlx's multi-row statements
//! spent most of their time building SQL text and argument buffers
//! (measured: docs/benchmarks.md). The raw handle is sqlx's own
//! connection, taken with its lock, so these paths run inside whatever
//! transaction sqlx has open. No rusqlite type leaves this module.
//!
//! The work is blocking (SQLite has no async interface): [`with_raw`] runs
//! it with `block_in_place`, so the async runtime's other tasks — the
//! daemon's scheduler, health endpoint and delivery worker — move to
//! another worker thread meanwhile instead of waiting behind a night's
//! writes. The readers beside a run's transaction are threads of their
//! own.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::sqlite::SqliteConnection;

use super::super::outbox::NOTIFICATION_SELECT_RANGE;
use super::super::rows::*;
use super::super::runs::{AUDIT_SELECT_RANGE, REVERT_MARK, SENT_NOTICES, WITHDRAW_NOTICES};
use super::super::{EventPage, EventPageReader, MakeEvents};
use super::{SqliteDb, SqliteImportTx, SqliteRunTx};
use crate::domain::{CycleDecision, NoticeStatus, PermitStatus};
use crate::error::{Error, Result};

/// Runs `f` on the connection's raw SQLite handle through rusqlite, inside
/// whatever transaction sqlx has open on it, off the async runtime's
/// worker threads (see the module's doc).
async fn with_raw<T>(
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

/// A stored code of one of the domain's enumerations.
fn raw_code<T: TryFrom<String, Error = String>>(
    row: &rusqlite::Row,
    i: usize,
) -> rusqlite::Result<T> {
    T::try_from(row.get::<_, String>(i)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
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
        status: raw_code(r, 9)?,
        employer_uscc: r.get(10)?,
        si_status: raw_code(r, 11)?,
        marital_status: raw_code(r, 12)?,
    })
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

/// The decisions of [`cycle_decisions!`]'s letters: `a` written by a run
/// the brake let through (`A`: reverted since); for a held one, `h` not
/// released, `r` applied by a release, `n` released as not applied, each
/// followed by `u` if reverted since.
fn decision_code(code: &str) -> rusqlite::Result<Vec<CycleDecision>> {
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

/// Rows per multi-row INSERT of the run's writer and the feed imports (at
/// most 16 parameters a row: far below SQLite's limit of 32,766).
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

/// Step 2's candidates (R3, R4; [`CandidateBounds`]): the narrow
/// permit_state table drives (CROSS JOIN keeps it outer), and only a
/// candidate's details are looked up by key — not those of the lapsed
/// permits that take no step tonight, of which a register holds many.
const CANDIDATES: &str =
    "SELECT p.permit_no, d.id_number, d.name, d.phone, d.email, d.district_code,
        d.street_code, d.address, p.valid_until, p.status, d.employer_uscc, d.si_status,
        d.marital_status
 FROM permit_state p CROSS JOIN permit_details d ON d.permit_no = p.permit_no
 WHERE p.permit_no > ?1
   AND ((p.status = 'active' AND p.valid_until <= ?2)
        OR (p.status = 'suspended' AND p.valid_until < ?4))
 ORDER BY p.permit_no LIMIT ?3";

/// The body of [`SqliteRunTx::event_pages`]'s thread.
fn read_event_pages(
    path: &Path,
    bounds: CandidateBounds,
    limit: u32,
    mut make: MakeEvents,
    send: &tokio::sync::mpsc::Sender<EventPage>,
) -> Result<()> {
    let c = snapshot_reader(path)?;
    let mut stmt = c.prepare(CANDIDATES).map_err(raw_err)?;
    let to = bounds.active_to.to_string();
    let before = bounds.suspended_before.map(|d| d.to_string());
    let mut after = String::new();
    loop {
        let page: Vec<Candidate> = stmt
            .query_map(rusqlite::params![after, to, limit, before], |r| {
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

/// Page cache of the run's readers beside its transaction, KiB: enough to
/// keep the interior pages of a 10M-permit register's tables and feed
/// tables (a few MiB each at 16 KiB pages), which each look-up by key
/// walks; with less, every look-up read them again from the file
/// (measured at 10M permits: a steady night's run 7.75 s with 1 MiB,
/// 7.1 s with 16 MiB).
/// The process's memory bound counts every connection's.
const READER_CACHE: &str = "PRAGMA cache_size = -16384";

/// A read-only connection of the run's own, in a read transaction of its
/// own (the run's readers beside its write transaction).
fn snapshot_reader(path: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let c = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(raw_err)?;
    c.execute_batch(&format!("PRAGMA query_only = 1; {READER_CACHE}; BEGIN"))
        .map_err(raw_err)?;
    c.busy_timeout(Duration::from_secs(60)).map_err(raw_err)?;
    Ok(c)
}

/// The evidence of these holders (in key order, so that each table's
/// B-tree is walked once, forwards) within the bounds: one indexed lookup
/// per holder and feed table (each holds one row per key: R2 is settled
/// when rows are written).
fn holder_evidence(
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
            sink.residence(id, raw_date(r, 0)?, r.get_ref(1)?.as_str()?);
        }
        let mut rows = payments.query(rusqlite::params![id, mf, mt])?;
        while let Some(r) = rows.next()? {
            sink.payment(
                id,
                r.get_ref(0)?.as_str()?,
                r.get_ref(1)?.as_str()?,
                r.get_ref(2)?.as_str()?,
            );
        }
        let mut rows = civil.query([id])?;
        while let Some(r) = rows.next()? {
            sink.civil(id, r.get_ref(0)?.as_str()?, raw_opt_date(r, 1)?);
        }
    }
    Ok(())
}

fn raw_notification_row(r: &rusqlite::Row) -> rusqlite::Result<NotificationRow> {
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

impl SqliteDb {
    /// The brake's lifecycle count (`sql`, binding `$1` as_of and `$2`
    /// cancel_before) on a read-only connection of its own, with the run
    /// readers' small page cache, closed when done. The count walks the
    /// whole register once, which a large cache does not speed up; on a
    /// pooled connection it filled that connection's 64 MiB cache beside
    /// the run's plan and kept it until the pool closed (measured at
    /// 10,000,000 permits: the first night's peak, at the end of the plan,
    /// 545–552 MB).
    pub async fn count_apart(
        &self,
        sql: &'static str,
        as_of: NaiveDate,
        cancel_before: Option<NaiveDate>,
    ) -> Result<[i64; 3]> {
        let path = self.path.clone();
        let count = tokio::task::spawn_blocking(move || -> Result<[i64; 3]> {
            let c = snapshot_reader(&path)?;
            let as_of = as_of.to_string();
            let cancel_before = cancel_before.map(|d| d.to_string());
            c.query_row(
                sql,
                rusqlite::named_params! { "$1": as_of, "$2": cancel_before },
                |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]),
            )
            .map_err(raw_err)
        });
        count.await.map_err(|e| {
            Error::Runtime(anyhow::anyhow!("the brake's lifecycle count stopped: {e}"))
        })?
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
                        item.kind.code(),
                        n.channel.code(),
                        n.recipient,
                        n.message,
                        n.status.code(),
                        (n.status == NoticeStatus::Queued).then_some(now),
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
        let Some(mut tx) = self.begin_run_transition(REVERT_MARK, run_id, now).await? else {
            return Ok(RevertDone::NotCompleted);
        };
        // The run's notices share its as_of: the as_of index finds them.
        let sent: i64 = sqlx::query_scalar(SENT_NOTICES)
            .bind(as_of.as_str())
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
        if sent > 0 {
            tx.rollback().await?;
            return Ok(RevertDone::Sent(sent as u64));
        }
        let withdrawn = sqlx::query(WITHDRAW_NOTICES)
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
                            r.status.code(),
                            r.left_valid_until.to_string(),
                            r.left_status.code(),
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
                                p.si_status.code(),
                                p.marital_status.code(),
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
                            rusqlite::params![
                                p.permit_no,
                                p.valid_until.to_string(),
                                p.status.code()
                            ],
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

    /// Writes a keyed feed's page (one row per key, in key order) as
    /// multi-row upserts (`head`, the row's `columns` ending with the
    /// import's id, then `on_conflict`), each row's values but the last
    /// bound by `bind`: each row inserted, or replacing the stored row with
    /// its key (R2).
    async fn upsert<T>(
        &mut self,
        (head, columns, on_conflict): (&str, usize, &str),
        rows: &[T],
        bind: impl Fn(&mut rusqlite::Statement<'_>, &mut usize, &T) -> rusqlite::Result<()>,
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
                    |stmt, next, r| {
                        bind(stmt, next, r)?;
                        bind_row(stmt, next, rusqlite::params![import_id])
                    },
                )?;
            }
            Ok(())
        })
        .await
    }

    pub async fn upsert_residence(&mut self, rows: &[ResidenceRow]) -> Result<()> {
        let head = "INSERT INTO residence (id_number, visited_on, result, address, officer_id, line, import_id) VALUES ";
        let on_conflict =
            " ON CONFLICT (id_number, visited_on) DO UPDATE SET result = excluded.result,
            address = excluded.address, officer_id = excluded.officer_id,
            import_id = excluded.import_id, line = excluded.line";
        self.upsert((head, 7, on_conflict), rows, |stmt, next, r| {
            bind_row(
                stmt,
                next,
                rusqlite::params![
                    r.id_number,
                    r.visited_on.to_string(),
                    r.result,
                    r.address,
                    r.officer_id,
                    r.line as i64,
                ],
            )
        })
        .await
    }

    pub async fn upsert_social_insurance(&mut self, rows: &[SocialInsuranceRow]) -> Result<()> {
        let head = "INSERT INTO social_insurance (id_number, month, status, employer_uscc, employer_name, line, import_id) VALUES ";
        let on_conflict = " ON CONFLICT (id_number, month) DO UPDATE SET status = excluded.status,
            employer_uscc = excluded.employer_uscc, employer_name = excluded.employer_name,
            import_id = excluded.import_id, line = excluded.line";
        self.upsert((head, 7, on_conflict), rows, |stmt, next, r| {
            bind_row(
                stmt,
                next,
                rusqlite::params![
                    r.id_number,
                    r.month,
                    r.status,
                    r.employer_uscc,
                    r.employer_name,
                    r.line as i64,
                ],
            )
        })
        .await
    }

    pub async fn upsert_civil_status(&mut self, rows: &[CivilStatusRow]) -> Result<()> {
        let head =
            "INSERT INTO civil_status (id_number, marital_status, as_of, line, import_id) VALUES ";
        let on_conflict =
            " ON CONFLICT (id_number) DO UPDATE SET marital_status = excluded.marital_status,
            as_of = excluded.as_of, import_id = excluded.import_id, line = excluded.line";
        self.upsert((head, 5, on_conflict), rows, |stmt, next, r| {
            bind_row(
                stmt,
                next,
                rusqlite::params![
                    r.id_number,
                    r.marital_status,
                    r.as_of.map(|d| d.to_string()),
                    r.line as i64,
                ],
            )
        })
        .await
    }
}

impl SqliteRunTx {
    /// [`crate::db::RunTx::event_pages`]: a blocking thread reads the pages
    /// over its own connection, in one read transaction, and makes their
    /// events, at most one page ahead of the writer.
    pub fn event_pages(
        &self,
        bounds: CandidateBounds,
        limit: u32,
        make: MakeEvents,
    ) -> EventPageReader {
        let (send, pages) = tokio::sync::mpsc::channel(1);
        let path = self.path.clone();
        let thread = tokio::task::spawn_blocking(move || {
            if let Err(e) = read_event_pages(&path, bounds, limit, make, &send) {
                let _ = send.blocking_send(Err(e));
            }
        });
        EventPageReader::new(pages, thread)
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
                "SELECT p.permit_no, d.id_number, p.valid_until, d.employer_uscc, d.si_status,
                        d.marital_status, ",
                cycle_decisions!(),
                " FROM permit_state p CROSS JOIN permit_details d ON d.permit_no = p.permit_no
                 WHERE p.permit_no > ?1 AND p.status = 'active' AND p.valid_until BETWEEN ?2 AND ?3
                 ORDER BY p.permit_no LIMIT ?4"
            ))?;
            let mut rows = stmt.query(rusqlite::params![
                after,
                from.to_string(),
                to.to_string(),
                limit
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(DuePermit {
                    permit_no: r.get(0)?,
                    id_number: r.get(1)?,
                    valid_until: raw_date(r, 2)?,
                    employer_uscc: r.get(3)?,
                    si_status: raw_code(r, 4)?,
                    marital_status: raw_code(r, 5)?,
                    decisions: match r.get_ref(6)?.as_str_or_null()? {
                        Some(code) => decision_code(code)?,
                        None => Vec::new(),
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    /// The due holders' evidence by key, in key order, in two halves at
    /// once: the later half into a [`EvidenceSink::part`] on a thread of
    /// its own, over a second read-only connection, while this one reads
    /// the first half into `sink`, which then takes the part in (the
    /// halves hold different holders). The second connection sees what
    /// this transaction sees: the run holds the only write lock and has
    /// not written the feeds.
    pub async fn feed_evidence<S: EvidenceSink>(
        &mut self,
        id_numbers: &[&str],
        b: &EvidenceBounds,
        sink: &mut S,
    ) -> Result<()> {
        let mut ids = id_numbers.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let (first, second) = ids.split_at(ids.len() / 2);
        let mut later = sink.part();
        let path = self.path.as_path();
        let mut failed = None;
        with_raw(&mut self.tx, |c| {
            let later = &mut later;
            std::thread::scope(|scope| {
                let part = scope.spawn(move || -> Result<()> {
                    if second.is_empty() {
                        return Ok(());
                    }
                    let c = snapshot_reader(path)?;
                    holder_evidence(&c, second, b, later).map_err(raw_err)
                });
                let here = holder_evidence(c, first, b, sink);
                failed = thread_error(part.join(), "the run's evidence reader thread");
                here
            })
        })
        .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        sink.merge_later(later);
        Ok(())
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
                                e.kind.code(),
                                e.reasons.code(),
                                e.valid_until.to_string(),
                                e.new_valid_until.map(|d| d.to_string()),
                                e.residence_visited_on.map(|d| d.to_string()),
                                e.residence_result,
                                e.si_month,
                                e.si_status,
                                e.si_employer_uscc,
                                e.marital_status,
                                at,
                                e.prior_status.map(|s| s.code()),
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
                                e.kind.code(),
                                e.notice.channel.code(),
                                e.notice.recipient,
                                e.notice.message,
                                e.notice.status.code(),
                                (e.notice.status == NoticeStatus::Queued).then_some(at),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_11_keeps_the_latest_row_per_key_of_the_append_only_feed_tables() {
        // R2 as the run read the append-only tables: the highest seq per
        // key wins. The keyed tables keep exactly those rows.
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE residence (seq INTEGER PRIMARY KEY, id_number TEXT NOT NULL,
               visited_on TEXT NOT NULL, result TEXT NOT NULL, address TEXT NOT NULL DEFAULT '',
               officer_id TEXT NOT NULL DEFAULT '', import_id INTEGER NOT NULL,
               line INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE social_insurance (seq INTEGER PRIMARY KEY, id_number TEXT NOT NULL,
               month TEXT NOT NULL, status TEXT NOT NULL, employer_uscc TEXT NOT NULL DEFAULT '',
               employer_name TEXT NOT NULL DEFAULT '', import_id INTEGER NOT NULL,
               line INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE civil_status (seq INTEGER PRIMARY KEY, id_number TEXT NOT NULL,
               marital_status TEXT NOT NULL, as_of TEXT, import_id INTEGER NOT NULL,
               line INTEGER NOT NULL DEFAULT 0);
             INSERT INTO residence (id_number, visited_on, result, import_id, line) VALUES
               ('B', '2026-10-01', 'consistent', 1, 2), ('A', '2026-10-01', 'changed', 1, 3),
               ('B', '2026-10-01', 'not_found', 2, 2), ('B', '2026-10-02', 'consistent', 2, 3);
             INSERT INTO social_insurance (id_number, month, status, import_id, line) VALUES
               ('A', '2026-10', 'paid', 1, 2), ('A', '2026-10', 'stopped', 1, 9),
               ('A', '2026-09', 'paid', 1, 4);
             INSERT INTO civil_status (id_number, marital_status, import_id, line) VALUES
               ('A', 'single', 1, 2), ('A', 'married', 3, 2), ('B', 'divorced', 2, 7);",
        )
        .unwrap();
        c.execute_batch(include_str!(
            "../../../migrations/sqlite/0011_keyed_feeds.sql"
        ))
        .unwrap();
        let rows = |sql: &str| -> Vec<String> {
            let mut stmt = c.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(
            rows("SELECT id_number || visited_on || result || import_id FROM residence"),
            [
                "A2026-10-01changed1",
                "B2026-10-01not_found2",
                "B2026-10-02consistent2"
            ]
        );
        assert_eq!(
            rows("SELECT id_number || month || status || line FROM social_insurance"),
            ["A2026-09paid4", "A2026-10stopped9"]
        );
        assert_eq!(
            rows("SELECT id_number || marital_status || import_id FROM civil_status"),
            ["Amarried3", "Bdivorced2"]
        );
        // One row per key from now on.
        let again = c.execute(
            "INSERT INTO civil_status (id_number, marital_status, import_id) VALUES ('A', 'single', 4)",
            [],
        );
        assert!(again.is_err(), "the key is unique");
    }

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
