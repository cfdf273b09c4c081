//! The run on PostgreSQL: its `runs` row and fencing token, the walk of
//! the register, the evidence look-up, the page reader, and the pages in
//! flight, each written by `page.rs` (the backend's module doc).

use std::collections::VecDeque;

use chrono::NaiveDate;
use sqlx::{Connection, FromRow, PgConnection, PgPool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::super::rows::*;
use super::super::runs::{end_status, run_columns, END_RUN, HOLD_RUN};
use super::super::{EventPage, EventPageReader, MakeEvents, PageKeys};
use super::page::write_page;
use super::PgDb;
use crate::domain::{
    CycleDecision, MaritalStatus, Month, PaymentStatus, PermitStatus, ResidenceResult, SiStatus,
};
use crate::error::{Error, Result};

impl PgDb {
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
        serial_plans(&mut conn).await?;
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
            writers: Writers::default(),
        })
    }

    /// `run --dry-run`: the run's reads without the run, in one read-only
    /// snapshot (a write would fail). No runs row; with no fencing token a
    /// page could not be committed either. Dropped, the session ends and
    /// the server rolls back. `run` is what the run would be, never stored.
    pub async fn begin_dry_run(&self, run: RunRecord) -> Result<PgRunTx> {
        let mut conn = self.detached().await?;
        serial_plans(&mut conn).await?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut conn)
            .await?;
        Ok(PgRunTx {
            conn,
            pool: self.pool.clone(),
            dry_run: true,
            run,
            owner: String::new(),
            writers: Writers::default(),
        })
    }
}

/// Keeps the server from planning a parallel scan on a session of the
/// run's reads (the walk, the evidence): they read by key, and a bounded
/// key range the server thought large enough was planned as a parallel
/// scan of the whole table, slower than the index and taking the cores
/// the run's other sessions use (measured at 1,000,000 permits: a chunk of
/// 10,000 holders' civil status 65–200 ms with two workers, 12 ms
/// without). Set for the session: the run's sessions are closed when it
/// ends, never given back to the pool.
async fn serial_plans(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SET max_parallel_workers_per_gather = 0")
        .execute(conn)
        .await?;
    Ok(())
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

/// The final decisions written for each cycle of a page (`$1` permits,
/// `$2` their valid_until) and what became of each: the facts C8 needs,
/// with the cycle's place in the page. Each cycle is a look-up by key in
/// both of the events' cycle indexes (held and unheld runs' events are in
/// two partial indexes); `OFFSET 0` keeps the look-up from being
/// flattened into a join. As a join, a page was planned as a merge join
/// over a scan of the whole events table, once per page (measured at
/// 1,000,000 permits after two nights: 153 ms a page of 3,000 cycles,
/// against 15 ms by key).
const CYCLE_DECISIONS: &str = "SELECT u.i, e.held, x.applied,
            EXISTS (SELECT 1 FROM event_reverts v WHERE v.event_id = e.event_id AND v.undone)
       FROM UNNEST($1::text[], $2::date[]) WITH ORDINALITY AS u (permit_no, valid_until, i)
       CROSS JOIN LATERAL (
            SELECT event_id, held FROM events
             WHERE permit_no = u.permit_no AND valid_until = u.valid_until
               AND kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND NOT held
            UNION ALL
            SELECT event_id, held FROM events
             WHERE permit_no = u.permit_no AND valid_until = u.valid_until
               AND kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND held
            OFFSET 0) e
       LEFT JOIN event_releases x ON x.event_id = e.event_id AND e.held";

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
    /// Its pages in flight ([`PgRunTx::write`]).
    writers: Writers,
}

/// A run's pages being written, each on a connection of its own.
#[derive(Default)]
struct Writers {
    /// Pages in flight, oldest first.
    pages: VecDeque<JoinHandle<(PgConnection, Result<()>)>>,
    /// Writer connections with no page in flight.
    idle: Vec<PgConnection>,
    /// The ids the next page's first event and first notice follow, once
    /// the first page has read them.
    next_ids: Option<(i64, i64)>,
    /// Resolves once the last page handed to a writer has committed.
    last_commit: Option<oneshot::Receiver<()>>,
}

/// A run dropped unfinished (a daemon's shutdown, an error elsewhere)
/// stops its pages in flight as well: their server sessions end and roll
/// back whatever has not committed, as the run's own connection's would.
impl Drop for Writers {
    fn drop(&mut self) {
        for page in &self.pages {
            page.abort();
        }
    }
}

impl Writers {
    /// A writer connection with no page in flight: an idle one, a new one
    /// while fewer than [`PAGE_WRITERS`] are in use, else the oldest page's
    /// once it is written.
    async fn connection(&mut self, pool: &PgPool) -> Result<PgConnection> {
        if let Some(conn) = self.idle.pop() {
            return Ok(conn);
        }
        if self.pages.len() < PAGE_WRITERS {
            return Ok(pool.acquire().await?.detach());
        }
        self.oldest_written().await
    }

    /// Waits for the oldest page in flight; its connection, or its error.
    async fn oldest_written(&mut self) -> Result<PgConnection> {
        let page = self.pages.pop_front().ok_or_else(|| {
            Error::Runtime(anyhow::anyhow!("internal: no page of the run in flight"))
        })?;
        let (conn, written) = page.await.map_err(|e| {
            Error::Runtime(anyhow::anyhow!(
                "a page of the run stopped while written: {e}"
            ))
        })?;
        written?;
        Ok(conn)
    }

    /// Waits until every page in flight is written: the first error, if
    /// any (the pages after it roll back on their own: each commits only
    /// after the one before it).
    async fn settle(&mut self) -> Result<()> {
        while !self.pages.is_empty() {
            let conn = self.oldest_written().await?;
            self.idle.push(conn);
        }
        Ok(())
    }
}

/// Pages a run writes at once, each on a connection (and so a server
/// process) of its own. One server process writing a page's rows and
/// index entries is the first night's limit; with two, a small server's
/// second core, idle otherwise, writes the next page meanwhile.
const PAGE_WRITERS: usize = 2;

/// Checks, inside `tx`, that this process still owns the run (its fencing
/// token is on the row), and locks the row until commit, so a takeover
/// waits for this page and this page's successor sees it.
pub(super) async fn fence(
    tx: &mut PgConnection,
    run: &RunRecord,
    owner: &str,
    now: &str,
) -> Result<()> {
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
        keys: PageKeys,
        make: MakeEvents,
    ) -> Result<EventPageReader> {
        let mut conn = self.reader().await?;
        let (send, pages) = tokio::sync::mpsc::channel(1);
        let reader = tokio::spawn(async move {
            if let Err(e) = read_event_pages(&mut conn, keys, make, &send).await {
                let _ = send.send(Err(e)).await;
            }
        });
        Ok(EventPageReader::new(pages, reader))
    }

    /// A connection for a part of the run's reads beside the run's own
    /// ([`serial_plans`]); a dry run's imports the dry run's snapshot.
    async fn reader(&mut self) -> Result<PgConnection> {
        let mut conn = self.pool.acquire().await?.detach();
        serial_plans(&mut conn).await?;
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
        Ok(conn)
    }

    /// [`crate::db::RunTx::walk`]: the key's two halves at once, each a
    /// server process of its own (one walking the index and looking up
    /// details is the walk's limit, and a small server's second core is
    /// idle meanwhile), the later half into a [`WalkSink::part`]. The
    /// halves meet at the median key of a sample of `permit_state`'s pages
    /// (256 of them, or all of a smaller table; 10–20 ms at 1,000,000
    /// permits, within a few percent of the true median): where they meet
    /// changes only how the work is shared. An empty register is not
    /// walked; one of a single key is walked in one.
    pub async fn walk<S: WalkSink>(
        &mut self,
        bounds: CandidateBounds,
        due_from: NaiveDate,
        limit: u32,
        sink: &mut S,
    ) -> Result<()> {
        let (last, middle): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT (SELECT max(permit_no) FROM permit_state),
                    (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY permit_no)
                     FROM permit_state TABLESAMPLE SYSTEM (least(100, 100.0 * 256
                          / greatest(1, pg_relation_size('permit_state')
                                        / current_setting('block_size')::int)))
                     REPEATABLE (0))",
        )
        .fetch_one(&mut self.conn)
        .await?;
        let Some(last) = last else {
            return Ok(());
        };
        let Some(middle) = middle.filter(|m| !m.is_empty() && *m < last) else {
            return walk_range(&mut self.conn, bounds, due_from, ("", &last), limit, sink).await;
        };
        let mut later = sink.part();
        self.beside(
            true,
            async |conn| walk_range(conn, bounds, due_from, ("", &middle), limit, sink).await,
            async |conn| {
                let to = (middle.as_str(), last.as_str());
                walk_range(conn, bounds, due_from, to, limit, &mut later).await
            },
        )
        .await?;
        sink.merge_later(later)
    }

    /// The due holders' evidence by key, in two halves at once, as on
    /// SQLite: the later half into a [`EvidenceSink::part`] over a
    /// connection of its own ([`PgRunTx::reader`]), while the run's own
    /// reads the first half into `sink`,
    /// which then takes the part in (the halves hold different holders).
    /// Each half is a server process of its own, so the two use both of a
    /// small server's cores. Both see the same feeds: a run never writes
    /// them, and the job lock, which a dry run takes too, keeps imports out
    /// while it lasts.
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
        self.beside(
            !second.is_empty(),
            async |conn| holder_evidence(conn, first, b, sink).await,
            async |conn| holder_evidence(conn, second, b, &mut later).await,
        )
        .await?;
        sink.merge_later(later);
        Ok(())
    }

    /// Runs `here` on the run's own connection and, at once, `later` on a
    /// reader of its own ([`Self::reader`]), which is closed once both are
    /// done, whichever failed: the walk's and the evidence's two halves,
    /// each a server process, so that both of a small server's cores work.
    /// Without `later_needed` (an empty later half) no reader is opened.
    async fn beside(
        &mut self,
        later_needed: bool,
        here: impl AsyncFnOnce(&mut PgConnection) -> Result<()>,
        later: impl AsyncFnOnce(&mut PgConnection) -> Result<()>,
    ) -> Result<()> {
        let mut reader = match later_needed {
            true => Some(self.reader().await?),
            false => None,
        };
        let part = async {
            match reader.as_mut() {
                Some(conn) => later(conn).await,
                None => Ok(()),
            }
        };
        let done = tokio::try_join!(here(&mut self.conn), part);
        if let Some(conn) = reader {
            let _ = conn.close().await;
        }
        done.map(|_| ())
    }

    /// Writes a page's events, notices and permit changes, committed
    /// together (R7, R8), on a writer connection of its own: it returns
    /// once the page is under way, with up to [`PAGE_WRITERS`] pages in
    /// flight, and reports a page's failure at a later call ([`Self::hold`],
    /// [`Self::complete`] or the next `write`). The pages are written side
    /// by side but commit in page order, each after the one before it, and
    /// not at all if that one failed: whenever a run stops, what it leaves
    /// is its first pages, as on SQLite. Ids are given here, in page
    /// order, so a resumed run goes on with the ids an uninterrupted one
    /// would have given: the same as SQLite's for the same inputs.
    ///
    /// A held run's pages go one at a time on the run's connection: resumed
    /// after a crash, such a run makes again the events of pages it
    /// committed, which the insert skips, so their ids are only known to
    /// the database.
    pub async fn write(&mut self, batch: RunBatch) -> Result<()> {
        if batch.events.is_empty() {
            return Ok(());
        }
        if batch.held {
            self.writers.settle().await?;
            return write_page(&mut self.conn, (&self.run, &self.owner), &batch, None, None).await;
        }
        let ids = match self.writers.next_ids {
            Some(ids) => ids,
            None => {
                self.writers.settle().await?;
                sqlx::query_as(
                    "SELECT (SELECT coalesce(max(event_id), 0) FROM events),
                            (SELECT coalesce(max(notification_id), 0) FROM notifications)",
                )
                .fetch_one(&mut self.conn)
                .await?
            }
        };
        // Every event of a run that is not held has its notice (R8).
        let n = batch.events.len() as i64;
        self.writers.next_ids = Some((ids.0 + n, ids.1 + n));
        let mut conn = self.writers.connection(&self.pool).await?;
        let (run, owner) = (self.run.clone(), self.owner.clone());
        let (committed, this_commit) = oneshot::channel();
        let after = self.writers.last_commit.replace(this_commit);
        self.writers.pages.push_back(tokio::spawn(async move {
            let written = write_page(&mut conn, (&run, &owner), &batch, Some(ids), after).await;
            if written.is_ok() {
                let _ = committed.send(());
            }
            (conn, written)
        }));
        Ok(())
    }

    /// Marks the run held by the safety brake (if this process still owns
    /// it), before it writes any event.
    pub async fn hold(&mut self, why: &str, now: &str) -> Result<()> {
        self.writers.settle().await?;
        let mut tx = self.conn.begin().await?;
        fence(&mut tx, &self.run, &self.owner, now).await?;
        sqlx::query(HOLD_RUN)
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
        self.writers.settle().await?;
        let mut tx = self.conn.begin().await?;
        fence(&mut tx, &self.run, &self.owner, now).await?;
        sqlx::query(END_RUN)
            .bind(end_status(&self.run).code())
            .bind(now)
            .bind(pending as i64)
            .bind(duration.as_secs_f64())
            .bind(self.run.run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let _ = self.conn.close().await;
        for conn in std::mem::take(&mut self.writers.idle) {
            let _ = conn.close().await;
        }
        Ok(())
    }

    /// Pages already committed stay: the next run for this `as_of` resumes
    /// with the rest. A page in flight was rolled back when its transaction
    /// was dropped; one in flight on a writer connection commits or rolls
    /// back before this returns.
    pub async fn rollback(mut self) -> Result<()> {
        // The run already failed: a page's own error adds nothing to it.
        while !self.writers.pages.is_empty() {
            let _ = self.writers.oldest_written().await;
        }
        Ok(())
    }
}

/// The walk of the keys after `from` up to `last`, into `sink` a page at
/// a time.
async fn walk_range(
    conn: &mut PgConnection,
    bounds: CandidateBounds,
    due_from: NaiveDate,
    (from, last): (&str, &str),
    limit: u32,
    sink: &mut (dyn WalkSink + Send),
) -> Result<()> {
    walk_pages(from, sink, async |after: &str| {
        candidates(conn, bounds, due_from, (after, last), limit).await
    })
    .await
}

/// [`candidates`]' statement: a page of the walk as one row of arrays,
/// or no row when the page is empty (over no rows `array_agg` gives
/// NULLs).
const WALK_PAGE: &str = "SELECT array_agg(p.permit_no) AS permit_no,
            array_agg(p.valid_until) AS valid_until, array_agg(p.status) AS status,
            array_agg(d.id_number) AS id_number, array_agg(d.employer_uscc) AS employer_uscc,
            array_agg(d.si_status) AS si_status, array_agg(d.marital_status) AS marital_status
     FROM (SELECT permit_no, valid_until, status FROM permit_state
           WHERE permit_no > $1 AND permit_no <= $6
             AND valid_until <= $2
             AND (status = 'active' OR (status = 'suspended' AND valid_until < $4))
           ORDER BY permit_no LIMIT $3) p
     LEFT JOIN LATERAL (SELECT id_number, employer_uscc, si_status, marital_status
                        FROM permit_details
                        WHERE permit_no = p.permit_no
                          AND p.status = 'active' AND p.valid_until >= $5
                        OFFSET 0) d ON TRUE
     HAVING count(*) > 0";

/// [`WALK_PAGE`]'s row: one array per column, each permit at the same
/// place in every one; a permit's details are NULL where they were not
/// read. A page as one row rather than a row per permit: at 1,000,000
/// permits a first night's walk is about 250,000 of them, each a message
/// for the server to send and a row for the client to decode. With the
/// evidence read the same way, a quarter of the client's CPU over a first
/// night, though not of its time, which is the server's writes
/// (docs/benchmarks-postgres.md).
#[derive(sqlx::FromRow)]
struct WalkPage {
    permit_no: Vec<String>,
    valid_until: Vec<NaiveDate>,
    status: Vec<PermitStatus>,
    id_number: Vec<Option<String>>,
    employer_uscc: Vec<Option<String>>,
    si_status: Vec<Option<SiStatus>>,
    marital_status: Vec<Option<MaritalStatus>>,
}

impl WalkPage {
    /// The page's permits, in key order.
    fn walked(mut self) -> Result<Vec<Walked>> {
        let n = self.permit_no.len();
        same_lengths(
            n,
            &[
                self.valid_until.len(),
                self.status.len(),
                self.id_number.len(),
                self.employer_uscc.len(),
                self.si_status.len(),
                self.marital_status.len(),
            ],
            "the walk",
        )?;
        let mut page = Vec::with_capacity(n);
        for j in 0..n {
            let state = CandidateState {
                permit_no: std::mem::take(&mut self.permit_no[j]),
                valid_until: self.valid_until[j],
                status: self.status[j],
            };
            let details = (
                self.id_number[j].take(),
                self.employer_uscc[j].take(),
                self.si_status[j],
                self.marital_status[j],
            );
            let due = match details {
                (None, None, None, None) => None,
                (Some(id_number), Some(employer_uscc), Some(si_status), Some(marital_status)) => {
                    Some(DueDetails {
                        id_number,
                        employer_uscc,
                        si_status,
                        marital_status,
                        decisions: Vec::new(),
                    })
                }
                _ => {
                    return Err(Error::Runtime(anyhow::anyhow!(
                        "internal: the walk read permit {}'s details in part",
                        state.permit_no
                    )))
                }
            };
            page.push(Walked { state, due });
        }
        // PostgreSQL aggregates a subquery's rows in the order it made
        // them, which SQL does not promise: the walk pages on from a
        // page's last key, so the order is checked here, and made if it
        // is not.
        if !page.is_sorted_by(|a, b| a.state.permit_no < b.state.permit_no) {
            page.sort_unstable_by(|a, b| a.state.permit_no.cmp(&b.state.permit_no));
        }
        Ok(page)
    }
}

/// A page's arrays, `n` long, and `lengths` the others': one permit or
/// one row at each place in all of them, or the page is refused.
fn same_lengths(n: usize, lengths: &[usize], what: &str) -> Result<()> {
    match lengths.iter().all(|&len| len == n) {
        true => Ok(()),
        false => Err(Error::Runtime(anyhow::anyhow!(
            "internal: {what} came back in arrays of different lengths"
        ))),
    }
}

/// A page of the walk ([`PgRunTx::walk`]): up to `limit` permits after
/// `after`, up to `last`. The primary key's index walked in order, as
/// SQLite walks its table, and the details of each permit that may be due
/// looked up by key (the condition in the `LATERAL` look-up is tested
/// before it: the others' details are not read). The `OFFSET 0` keeps
/// PostgreSQL from flattening the look-up into a join, which it planned
/// as a merge join walking `permit_details`' key from its first entry for
/// every page (measured at 1M permits, all the pages of the due read:
/// 0.45 s against 0.24–0.30 s). The page comes back as one row of arrays
/// ([`WalkPage`]), or none when it is empty. Then the due ones' cycles'
/// decisions, for the page at once, each a look-up by key
/// ([`CYCLE_DECISIONS`]).
async fn candidates(
    conn: &mut PgConnection,
    bounds: CandidateBounds,
    due_from: NaiveDate,
    (after, last): (&str, &str),
    limit: u32,
) -> Result<Vec<Walked>> {
    let found: Option<WalkPage> = sqlx::query_as(WALK_PAGE)
        .bind(after)
        .bind(bounds.active_to)
        .bind(i64::from(limit))
        .bind(bounds.suspended_before)
        .bind(due_from)
        .bind(last)
        .fetch_optional(&mut *conn)
        .await?;
    let mut page = match found {
        Some(page) => page.walked()?,
        None => return Ok(Vec::new()),
    };
    // The cycles of the permits that may be due, in the page's order.
    let cycles = || page.iter().filter(|w| w.due.is_some()).map(|w| &w.state);
    let nos: Vec<&str> = cycles().map(|s| s.permit_no.as_str()).collect();
    if nos.is_empty() {
        return Ok(page);
    }
    let valid_until: Vec<NaiveDate> = cycles().map(|s| s.valid_until).collect();
    let found: Vec<(i64, bool, Option<bool>, bool)> = sqlx::query_as(CYCLE_DECISIONS)
        .bind(&nos)
        .bind(&valid_until)
        .fetch_all(&mut *conn)
        .await?;
    drop(nos);
    let mut due: Vec<&mut DueDetails> = page.iter_mut().filter_map(|w| w.due.as_mut()).collect();
    for (i, held, released, undone) in found {
        // WITH ORDINALITY counts from 1.
        if let Some(p) = usize::try_from(i - 1).ok().and_then(|i| due.get_mut(i)) {
            p.decisions.push(CycleDecision {
                held,
                released,
                undone,
            });
        }
    }
    drop(due);
    Ok(page)
}

/// The paging of each half of the walk ([`PgRunTx::walk`]): each
/// page `page_after` reads after the last key of the one before (the
/// first after `from`), into `sink`, until a page comes back empty.
async fn walk_pages(
    from: &str,
    sink: &mut (dyn WalkSink + Send),
    mut page_after: impl AsyncFnMut(&str) -> Result<Vec<Walked>>,
) -> Result<()> {
    let mut after = from.to_string();
    loop {
        let page = page_after(&after).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after.clone_from(&last.state.permit_no);
        sink.page(page)?;
    }
}

/// The details of a page's permits, `$1` their numbers, as one row of
/// arrays: each permit's details a look-up by key (`OFFSET 0`: see
/// [`candidates`]), `i` its place in the list. A page's 10,000 permits as
/// as many rows cost the server a message per row and the client a row to
/// decode per permit (at 1,000,000 permits, a quarter of the client's CPU
/// over a first night; docs/benchmarks-postgres.md).
const DETAILS_BY_KEY: &str = "SELECT array_agg(k.i) AS i, array_agg(d.id_number) AS id_number,
            array_agg(d.name) AS name, array_agg(d.phone) AS phone, array_agg(d.email) AS email,
            array_agg(d.district_code) AS district_code, array_agg(d.street_code) AS street_code,
            array_agg(d.address) AS address, array_agg(d.employer_uscc) AS employer_uscc,
            array_agg(d.si_status) AS si_status, array_agg(d.marital_status) AS marital_status
     FROM UNNEST($1::text[]) WITH ORDINALITY AS k (permit_no, i)
     CROSS JOIN LATERAL (SELECT id_number, name, phone, email, district_code, street_code,
                                address, employer_uscc, si_status, marital_status
                         FROM permit_details WHERE permit_no = k.permit_no OFFSET 0) d";

/// [`DETAILS_BY_KEY`]'s row: one array per column, in the same order,
/// whatever order that is (`i` says).
#[derive(sqlx::FromRow)]
struct DetailsPage {
    i: Vec<i64>,
    id_number: Vec<String>,
    name: Vec<String>,
    phone: Vec<Option<String>>,
    email: Vec<Option<String>>,
    district_code: Vec<String>,
    street_code: Vec<String>,
    address: Vec<String>,
    employer_uscc: Vec<String>,
    si_status: Vec<SiStatus>,
    marital_status: Vec<MaritalStatus>,
}

impl DetailsPage {
    /// The page's permits in the keys' order: each key's number,
    /// `valid_until` and status as the walk found them, with its details.
    /// A key without details (no permit in `permit_details`) is an error.
    fn permits(mut self, keys: &[CandidateState]) -> Result<Vec<Candidate>> {
        let n = self.i.len();
        same_lengths(
            n,
            &[
                self.id_number.len(),
                self.name.len(),
                self.phone.len(),
                self.email.len(),
                self.district_code.len(),
                self.street_code.len(),
                self.address.len(),
                self.employer_uscc.len(),
                self.si_status.len(),
                self.marital_status.len(),
            ],
            "a page's details",
        )?;
        let mut slots: Vec<Option<PermitRow>> = (0..keys.len()).map(|_| None).collect();
        for j in 0..n {
            // WITH ORDINALITY counts from 1.
            let place = usize::try_from(self.i[j])
                .ok()
                .and_then(|i| i.checked_sub(1));
            let Some((key, slot)) = place.and_then(|p| Some((keys.get(p)?, slots.get_mut(p)?)))
            else {
                return Err(Error::Runtime(anyhow::anyhow!(
                    "internal: a page's details name no place in it"
                )));
            };
            *slot = Some(PermitRow {
                permit_no: key.permit_no.clone(),
                id_number: std::mem::take(&mut self.id_number[j]),
                name: std::mem::take(&mut self.name[j]),
                phone: self.phone[j].take(),
                email: self.email[j].take(),
                district_code: std::mem::take(&mut self.district_code[j]),
                street_code: std::mem::take(&mut self.street_code[j]),
                address: std::mem::take(&mut self.address[j]),
                valid_until: key.valid_until,
                status: key.status,
                employer_uscc: std::mem::take(&mut self.employer_uscc[j]),
                si_status: self.si_status[j],
                marital_status: self.marital_status[j],
            });
        }
        slots
            .into_iter()
            .zip(keys)
            .map(|(slot, key)| match slot {
                Some(permit) => Ok(Candidate { permit }),
                None => Err(Error::Runtime(anyhow::anyhow!(
                    "internal: permit {} has no details in the register",
                    key.permit_no
                ))),
            })
            .collect()
    }
}

/// The body of [`PgRunTx::event_pages`]'s task: each page of `keys`, read
/// by [`DETAILS_BY_KEY`] and made into its events. The same pages as
/// SQLite's, so the same ids.
async fn read_event_pages(
    conn: &mut PgConnection,
    keys: PageKeys,
    mut make: MakeEvents,
    send: &tokio::sync::mpsc::Sender<EventPage>,
) -> Result<()> {
    for page_keys in keys {
        // Over no rows, array_agg gives NULL rather than empty arrays.
        let page = match page_keys.is_empty() {
            true => Vec::new(),
            false => {
                let nos: Vec<&str> = page_keys.iter().map(|k| k.permit_no.as_str()).collect();
                let details: DetailsPage = sqlx::query_as(DETAILS_BY_KEY)
                    .bind(&nos)
                    .fetch_one(&mut *conn)
                    .await?;
                details.permits(&page_keys)?
            }
        };
        let events = make(page)?;
        if send.send(Ok((page_keys.len(), events))).await.is_err() {
            // The run stopped (an error on the writer's side).
            return Ok(());
        }
    }
    Ok(())
}

/// One query per feed for each chunk of `ids` (in key order), by key
/// (PostgreSQL keeps one row per key: R2 was applied at import), each
/// answered as one row of arrays ([`Visits`], [`Payments`], [`Civil`]),
/// or none: a chunk's rows as many messages cost what they do for the
/// walk ([`WalkPage`]). The sink takes a holder's rows in any order.
///
/// Each chunk's query is bounded by its first and last key as well as
/// listing them: whatever plan the server picks for a chunk (index
/// probes, or a scan where the chunk's holders are dense), it reads only
/// that chunk's slice of the table, so a night reads each feed table at
/// most once in all. With the list alone, the server planned a chunk of
/// 10,000 holders as a scan of the whole table (measured at 1,000,000
/// permits: 190 ms a chunk of social insurance, against 30–46 ms
/// bounded), and the number of chunks grows with the register.
async fn holder_evidence(
    conn: &mut PgConnection,
    ids: &[&str],
    b: &EvidenceBounds,
    sink: &mut (dyn EvidenceSink + Send),
) -> Result<()> {
    for ids in ids.chunks(10_000) {
        let (first, last) = (ids[0], ids[ids.len() - 1]);
        let visits: Option<Visits> = sqlx::query_as(
            "SELECT array_agg(id_number) AS id_number, array_agg(visited_on) AS visited_on,
                    array_agg(result) AS result
             FROM residence
             WHERE id_number BETWEEN $4 AND $5 AND id_number = ANY($1)
               AND visited_on BETWEEN $2 AND $3
             HAVING count(*) > 0",
        )
        .bind(ids)
        .bind(b.visited_from)
        .bind(b.visited_to)
        .bind(first)
        .bind(last)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(v) = visits {
            let n = v.id_number.len();
            same_lengths(n, &[v.visited_on.len(), v.result.len()], "residence")?;
            for j in 0..n {
                sink.residence(&v.id_number[j], v.visited_on[j], v.result[j]);
            }
        }
        let payments: Option<Payments> = sqlx::query_as(
            "SELECT array_agg(id_number) AS id_number, array_agg(month) AS month,
                    array_agg(status) AS status, array_agg(employer_uscc) AS employer_uscc
             FROM social_insurance
             WHERE id_number BETWEEN $4 AND $5 AND id_number = ANY($1)
               AND month BETWEEN $2 AND $3
             HAVING count(*) > 0",
        )
        .bind(ids)
        .bind(&b.month_from)
        .bind(&b.month_to)
        .bind(first)
        .bind(last)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(p) = payments {
            let n = p.id_number.len();
            same_lengths(
                n,
                &[p.month.len(), p.status.len(), p.employer_uscc.len()],
                "social insurance",
            )?;
            for j in 0..n {
                sink.payment(
                    &p.id_number[j],
                    p.month[j],
                    p.status[j],
                    &p.employer_uscc[j],
                );
            }
        }
        let civil: Option<Civil> = sqlx::query_as(
            "SELECT array_agg(id_number) AS id_number, array_agg(marital_status) AS marital_status,
                    array_agg(as_of) AS as_of
             FROM civil_status
             WHERE id_number BETWEEN $2 AND $3 AND id_number = ANY($1)
             HAVING count(*) > 0",
        )
        .bind(ids)
        .bind(first)
        .bind(last)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(c) = civil {
            let n = c.id_number.len();
            same_lengths(n, &[c.marital_status.len(), c.as_of.len()], "civil status")?;
            for j in 0..n {
                sink.civil(&c.id_number[j], c.marital_status[j], c.as_of[j]);
            }
        }
    }
    Ok(())
}

/// A chunk's residence visits ([`holder_evidence`]): each visit at the
/// same place in the three arrays.
#[derive(sqlx::FromRow)]
struct Visits {
    id_number: Vec<String>,
    visited_on: Vec<NaiveDate>,
    result: Vec<ResidenceResult>,
}

/// A chunk's social-insurance months ([`holder_evidence`]).
#[derive(sqlx::FromRow)]
struct Payments {
    id_number: Vec<String>,
    month: Vec<Month>,
    status: Vec<PaymentStatus>,
    employer_uscc: Vec<String>,
}

/// A chunk's civil status ([`holder_evidence`]).
#[derive(sqlx::FromRow)]
struct Civil {
    id_number: Vec<String>,
    marital_status: Vec<MaritalStatus>,
    as_of: Vec<Option<NaiveDate>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(no: &str) -> CandidateState {
        CandidateState {
            permit_no: no.to_string(),
            valid_until: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default(),
            status: PermitStatus::Active,
        }
    }

    /// A page's details for the keys at these places (from 1), each
    /// named after its place.
    fn details(places: &[i64]) -> DetailsPage {
        let text = |what: &str| places.iter().map(|p| format!("{what}{p}")).collect();
        DetailsPage {
            i: places.to_vec(),
            id_number: text("id"),
            name: text("name"),
            phone: places.iter().map(|p| Some(format!("phone{p}"))).collect(),
            email: places.iter().map(|_| None).collect(),
            district_code: text("d"),
            street_code: text("s"),
            address: text("a"),
            employer_uscc: text("u"),
            si_status: places.iter().map(|_| SiStatus::Paying).collect(),
            marital_status: places.iter().map(|_| MaritalStatus::Married).collect(),
        }
    }

    /// Whatever order the server's rows came in, each permit's details go
    /// with its own key, in the keys' order.
    #[test]
    fn a_page_s_details_are_put_in_the_keys_order() {
        let keys = [key("SH3"), key("SH1"), key("SH2")];
        let page = details(&[2, 3, 1]).permits(&keys).expect("the page");
        let got: Vec<(&str, &str, &str, Option<&str>)> = page
            .iter()
            .map(|c| {
                let p = &c.permit;
                (
                    p.permit_no.as_str(),
                    p.id_number.as_str(),
                    p.address.as_str(),
                    p.phone.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("SH3", "id1", "a1", Some("phone1")),
                ("SH1", "id2", "a2", Some("phone2")),
                ("SH2", "id3", "a3", Some("phone3")),
            ]
        );
        assert_eq!(page[0].permit.si_status, SiStatus::Paying);
        assert_eq!(page[2].permit.email, None);
    }

    /// A key the server found no details for, a place outside the page,
    /// or arrays of different lengths are errors, not a shorter page.
    #[test]
    fn a_page_with_details_missing_or_misplaced_is_refused() {
        let keys = [key("SH1"), key("SH2")];
        let missing = details(&[1]).permits(&keys).err().map(|e| e.to_string());
        assert!(missing.is_some_and(|e| e.contains("SH2")));
        assert!(details(&[1, 3]).permits(&keys).is_err());
        assert!(details(&[0, 1]).permits(&keys).is_err());
        assert!(details(&[i64::MIN, 1]).permits(&keys).is_err());
        let mut uneven = details(&[1, 2]);
        uneven.address.pop();
        assert!(uneven.permits(&keys).is_err());
    }

    /// A page of the walk with these permits, in this order; the odd ones
    /// with their details read, as a permit that may be due.
    fn walk_page(nos: &[u32]) -> WalkPage {
        let due = |n: &u32| n % 2 == 1;
        let detail = |n: &u32, what: &str| due(n).then(|| format!("{what}{n}"));
        WalkPage {
            permit_no: nos.iter().map(|n| format!("SH{n:02}")).collect(),
            valid_until: nos
                .iter()
                .map(|n| NaiveDate::from_ymd_opt(2026, 12, *n).unwrap_or_default())
                .collect(),
            status: nos.iter().map(|_| PermitStatus::Active).collect(),
            id_number: nos.iter().map(|n| detail(n, "id")).collect(),
            employer_uscc: nos.iter().map(|n| detail(n, "u")).collect(),
            si_status: nos
                .iter()
                .map(|n| due(n).then_some(SiStatus::Paying))
                .collect(),
            marital_status: nos
                .iter()
                .map(|n| due(n).then_some(MaritalStatus::Single))
                .collect(),
        }
    }

    /// The walk pages on from a page's last key: a page whose arrays come
    /// in another order is put in key order, each permit with its own
    /// details.
    #[test]
    fn a_walk_page_is_put_in_key_order_with_each_permit_s_details() {
        let page = walk_page(&[3, 10, 1, 2]).walked().expect("the page");
        let got: Vec<(&str, u32, Option<&str>)> = page
            .iter()
            .map(|w| {
                use chrono::Datelike;
                let id = w.due.as_ref().map(|d| d.id_number.as_str());
                (w.state.permit_no.as_str(), w.state.valid_until.day(), id)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("SH01", 1, Some("id1")),
                ("SH02", 2, None),
                ("SH03", 3, Some("id3")),
                ("SH10", 10, None),
            ]
        );
        let due = page[2].due.as_ref().expect("details");
        assert_eq!(due.employer_uscc, "u3");
        assert_eq!(due.marital_status, MaritalStatus::Single);
    }

    /// Details read in part, or arrays of different lengths, are errors.
    #[test]
    fn a_walk_page_with_details_in_part_or_uneven_arrays_is_refused() {
        let mut part = walk_page(&[1, 2]);
        part.si_status[0] = None;
        let e = part.walked().err().map(|e| e.to_string());
        assert!(e.as_ref().is_some_and(|e| e.contains("SH01")), "{e:?}");
        let mut uneven = walk_page(&[1, 2]);
        uneven.status.pop();
        assert!(uneven.walked().is_err());
        assert!(walk_page(&[]).walked().is_ok_and(|p| p.is_empty()));
    }
}
