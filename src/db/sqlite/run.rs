//! The run on SQLite: the brake's register count, the walk of the
//! register, the evidence look-up, the page reader and each page's
//! writes. The writes go through the run's connection, each page's in a
//! write transaction of its own, and so do the lower end of the walk and
//! half the evidence; the count, the page reader, the walk's upper end and
//! the other half of the evidence read on read-only connections of their
//! own, on threads beside it (the backend's module doc).

use std::path::Path;

use chrono::NaiveDate;

use super::super::rows::*;
use super::super::{EventPage, EventPageReader, MakeEvents, PageKeys};
use super::raw::{
    args, cycle_decisions, decision_code, holder_evidence, insert_chunk, raw_code, raw_date,
    raw_err, raw_permit, reader, snapshot_reader, thread_error, with_raw, EffectWriter, NoticeRow,
    NoticeWriter, SqlDate, ROWS_PER_INSERT,
};
use super::{SqliteDb, SqliteRunTx};
use crate::error::{Error, Result};

const EVENT_INSERT: &str = "INSERT INTO events (run_id, as_of, permit_no, id_number, kind, reasons,
    valid_until, new_valid_until, residence_visited_on, residence_result, si_month, si_status,
    si_employer_uscc, marital_status, decided_at, prior_status, held) VALUES ";

/// The night's walk (R3, R4; [`CandidateBounds`]) from either end of the
/// key: permit_state in key order, and for each permit that may be due
/// (active, `valid_until` from `?5` on) its details and its cycle's
/// decisions ([`cycle_decisions!`]), between `?1` (exclusive, where this
/// end's walk has come to) and `?6` (exclusive, where the other end's
/// has). The details' key is NULL for the others, and SQLite skips the
/// look-up of a NULL key, so the walk reads no details it does not need:
/// as a plain join, with the details of every permit looked up and the
/// condition tested after, it took as long as reading every permit's (at
/// 10M permits, through Python's sqlite3, SQLite 3.40, on the benchmark's
/// database: 1.4 s against 0.8–1.0 s for the walk alone). `valid_until`
/// is tested first: most of a register ends after the window, and one
/// comparison turns those rows away (the suspended bound is never after
/// the active one); written as two arms on the status, the walk took
/// 0.82 s against 0.60 s, measured the same way.
macro_rules! candidates {
    ($range:literal, $order:literal) => {
        concat!(
            "SELECT p.permit_no, p.valid_until, p.status, d.id_number, d.employer_uscc,
                d.si_status, d.marital_status, CASE WHEN d.permit_no IS NOT NULL THEN ",
            cycle_decisions!(),
            " END
 FROM permit_state p
 LEFT JOIN permit_details d
   ON d.permit_no = CASE WHEN p.status = 'active' AND p.valid_until >= ?5 THEN p.permit_no END
 WHERE ",
            $range,
            "
   AND p.valid_until <= ?2
   AND (p.status = 'active' OR (p.status = 'suspended' AND p.valid_until < ?4))
 ORDER BY p.permit_no ",
            $order,
            " LIMIT ?3"
        )
    };
}

/// [`candidates!`] upwards, from the lowest key.
const CANDIDATES_UP: &str = candidates!("p.permit_no > ?1 AND p.permit_no < ?6", "ASC");
/// [`candidates!`] downwards, from the highest key.
const CANDIDATES_DOWN: &str = candidates!("p.permit_no < ?1 AND p.permit_no > ?6", "DESC");

/// Whole permits by key, `?1` a JSON array of permit numbers: the list
/// stays outer (CROSS JOIN), so each permit is one look-up in each table,
/// and rows come in the list's order. The state is read again rather than
/// carried in the list, as PostgreSQL's page reader does: SQLite's look-up
/// is cheaper than parsing it back out of JSON (at 1M permits, a first
/// night's run took 0.2–0.3 s more CPU with it in the list).
const PERMITS_BY_KEY: &str =
    "SELECT p.permit_no, d.id_number, d.name, d.phone, d.email, d.district_code,
        d.street_code, d.address, p.valid_until, p.status, d.employer_uscc, d.si_status,
        d.marital_status
 FROM json_each(?1) k CROSS JOIN permit_state p ON p.permit_no = k.value
      CROSS JOIN permit_details d ON d.permit_no = p.permit_no";

/// Permit numbers as the JSON array `json_each` reads, in the list's order.
fn json_list(permit_nos: &[&str]) -> Result<String> {
    serde_json::to_string(permit_nos)
        .map_err(|e| Error::Runtime(anyhow::anyhow!("internal: a page of permits: {e}")))
}

/// The body of [`SqliteRunTx::event_pages`]'s thread. Each page is read
/// in a read transaction of its own, not all of them in one: a snapshot
/// held across the pass would keep every page the run commits meanwhile
/// in the write-ahead log (a checkpoint cannot pass a reader's snapshot),
/// and the log would grow by the whole first night (about 2 GB at
/// 10,000,000 permits) before one checkpoint copied it all.
fn read_event_pages(
    path: &Path,
    keys: PageKeys,
    mut make: MakeEvents,
    send: &tokio::sync::mpsc::Sender<EventPage>,
) -> Result<()> {
    let c = reader(path)?;
    let mut stmt = c.prepare(PERMITS_BY_KEY).map_err(raw_err)?;
    for page_keys in keys {
        let list: Vec<&str> = page_keys.iter().map(|k| k.permit_no.as_str()).collect();
        let page: Vec<Candidate> = stmt
            .query_map([json_list(&list)?], |r| {
                Ok(Candidate {
                    permit: raw_permit(r)?,
                })
            })
            .map_err(raw_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(raw_err)?;
        let events = make(page)?;
        if send.blocking_send(Ok((page_keys.len(), events))).is_err() {
            // The run stopped (an error on the writer's side).
            return Ok(());
        }
    }
    Ok(())
}

impl SqliteDb {
    /// A count over the register (`sql`, one row, one column: the brake's
    /// live register) on a read-only connection of its own, with the run
    /// readers' small page cache, closed when done. The count walks the
    /// whole register once, which a large cache does not speed up; on a
    /// pooled connection it filled that connection's 64 MiB cache beside
    /// the run's plan and kept it until the pool closed (measured at
    /// 10,000,000 permits: the first night's peak, at the end of the plan,
    /// 545–552 MB).
    pub async fn count_apart(&self, sql: &'static str) -> Result<i64> {
        let path = self.path.clone();
        let count = tokio::task::spawn_blocking(move || -> Result<i64> {
            let c = snapshot_reader(&path)?;
            c.query_row(sql, [], |r| r.get(0)).map_err(raw_err)
        });
        count.await.map_err(|e| {
            Error::Runtime(anyhow::anyhow!("the brake's register count stopped: {e}"))
        })?
    }
}

impl SqliteRunTx {
    /// [`crate::db::RunTx::walk`] from both ends of the key at once: the
    /// lower end on the run's connection into `sink`, the upper end on a
    /// read-only connection of its own, on a thread beside it, into a
    /// [`WalkSink::part`] that `sink` takes in downwards
    /// ([`WalkSink::merge_descending`]). One end reading and sorting the
    /// register is the walk's limit, and with it alone a small machine's
    /// second core had only the brake's count to do. The ends meet
    /// wherever their work puts them ([`Meeting`]), so no median key is
    /// needed: permit numbers are opaque text, and SQLite samples no
    /// table. Both ends see the same register: nothing writes it before
    /// the plan is checked, and the job lock keeps imports out.
    pub async fn walk<S: WalkSink>(
        &mut self,
        bounds: CandidateBounds,
        due_from: NaiveDate,
        limit: u32,
        sink: &mut S,
    ) -> Result<()> {
        let params = WalkParams {
            active_to: bounds.active_to.to_string(),
            suspended_before: bounds.suspended_before.map(|d| d.to_string()),
            due_from: due_from.to_string(),
            limit: limit.max(1),
        };
        let path = self.path.as_path();
        let mut later = sink.part();
        let mut walked = Ok(());
        with_raw(self.conn.get(), |c| {
            let highest: Option<String> =
                c.query_row("SELECT max(permit_no) FROM permit_state", [], |r| r.get(0))?;
            let Some(highest) = highest else {
                return Ok(());
            };
            // Above the highest key (a string sorts after its prefixes)
            // and below any other, there being none.
            let meeting = std::sync::Mutex::new(Meeting {
                low: String::new(),
                high: format!("{highest} "),
                met: false,
            });
            let (params, meeting, later) = (&params, &meeting, &mut later);
            std::thread::scope(|scope| {
                let upper = scope.spawn(move || -> Result<()> {
                    snapshot_reader(path)
                        .and_then(|c| walk_end(&c, End::High, params, meeting, later))
                        .inspect_err(|_| stop(meeting))
                });
                let lower =
                    walk_end(c, End::Low, params, meeting, sink).inspect_err(|_| stop(meeting));
                walked = match thread_error(upper.join(), "the walk's upper end") {
                    Some(e) => Err(e),
                    None => lower,
                };
            });
            Ok(())
        })
        .await?;
        walked?;
        sink.merge_descending(later)
    }

    /// [`crate::db::RunTx::event_pages`]: a blocking thread reads the pages
    /// over its own connection and makes their events, at most one page
    /// ahead of the writer.
    pub fn event_pages(&self, keys: PageKeys, make: MakeEvents) -> EventPageReader {
        let (send, pages) = tokio::sync::mpsc::channel(1);
        let path = self.path.clone();
        let thread = tokio::task::spawn_blocking(move || {
            if let Err(e) = read_event_pages(&path, keys, make, &send) {
                let _ = send.blocking_send(Err(e));
            }
        });
        EventPageReader::new(pages, thread)
    }

    /// The due holders' evidence by key, in key order, in two halves at
    /// once: the later half into a [`EvidenceSink::part`] on a thread of
    /// its own, over a second read-only connection, while this one reads
    /// the first half into `sink`, which then takes the part in (the
    /// halves hold different holders). Both see the same feeds: a run
    /// never writes them, and the job lock keeps imports out while it
    /// lasts.
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
        with_raw(self.conn.get(), |c| {
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

    /// Writes a page's events, notices and permit changes and commits them
    /// together (R7, R8).
    pub async fn write(&mut self, batch: &RunBatch) -> Result<()> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let held = batch.held;
        let mut tx = self.begin_write().await?;
        with_raw(&mut tx, |c| {
            let as_of = batch.as_of.to_string();
            let at = batch.decided_at.as_str();
            // Events and notices go in as multi-row INSERTs of up to
            // ROWS_PER_INSERT rows: one statement execution (and its
            // per-statement work) per chunk rather than per row.
            // `held` is the events' last column. A held run's events
            // change nothing, so a held run resumed after a crash makes
            // again the events of the pages it committed; its cycles'
            // unique index (events_held_cycle) keeps the first of each, as
            // on PostgreSQL.
            let (held_tail, held_end) = if held {
                (", 1", " ON CONFLICT DO NOTHING")
            } else {
                (", 0", "")
            };
            let mut full_events = None;
            let mut notices = NoticeWriter::new(c, batch.run_id, batch.as_of, at);
            let mut effects = EffectWriter::new(c)?;
            for chunk in batch.events.chunks(ROWS_PER_INSERT) {
                insert_chunk(
                    c,
                    &mut full_events,
                    (EVENT_INSERT, 16, held_tail, held_end),
                    chunk,
                    |out, e| {
                        out.extend(args![
                            batch.run_id,
                            as_of.as_str(),
                            &e.permit_no,
                            &e.id_number,
                            e.kind.code(),
                            e.reasons.code(),
                            SqlDate::new(e.valid_until),
                            e.new_valid_until.map(SqlDate::new),
                            e.residence_visited_on.map(SqlDate::new),
                            e.residence_result.map(|r| r.code()),
                            e.si_month.map(|m| m.to_string()),
                            e.si_status.map(|s| s.code()),
                            &e.si_employer_uscc,
                            e.marital_status.map(|m| m.code()),
                            at,
                            e.prior_status.map(|s| s.code()),
                        ]);
                    },
                )?;
                // A held run writes its events only (the brake): no notice, no
                // permit change until `autosign release`.
                if held {
                    continue;
                }
                let queued: Vec<NoticeRow> = chunk
                    .iter()
                    .map(|e| (e.permit_no.as_str(), e.valid_until, e.kind, &e.notice))
                    .collect();
                notices.insert(&queued)?;
                for e in chunk {
                    effects.apply(&e.permit_no, e.effect)?;
                }
            }
            Ok(())
        })
        .await?;
        tx.commit().await?;
        if let Some(c) = &self.checkpoints {
            c.nudge();
        }
        Ok(())
    }
}

/// Where the walk's two ends have come to: each end has taken every
/// permit up to its own key (the lower end up to `low`, the upper end down
/// to `high`), and neither takes a key the other has. Each reads its next
/// page between the two keys as they stand, then, holding the lock, takes
/// only what the other end has not taken meanwhile.
struct Meeting {
    /// The last key the lower end took ("" before its first: no permit
    /// number is empty).
    low: String,
    /// The last key the upper end took (before its first, a key above the
    /// highest permit's).
    high: String,
    /// The ends have met (or one failed): neither reads further.
    met: bool,
}

/// One end of the walk: which way it goes.
#[derive(Clone, Copy)]
enum End {
    Low,
    High,
}

/// The bounds of one night's walk, as the statements bind them.
struct WalkParams {
    active_to: String,
    suspended_before: Option<String>,
    due_from: String,
    limit: u32,
}

/// Walks the register from one end ([`End`]) page by page into `sink`,
/// until the two ends meet. Each page is read between this end's key and
/// the other's as they stand, and cut where the other end's key stands
/// when the page is taken (it only moves towards this end). A page that
/// was cut, or that came back shorter than `limit` (it read all that lay
/// between the two keys), is this end's last: the ends have met.
fn walk_end(
    c: &rusqlite::Connection,
    end: End,
    w: &WalkParams,
    meeting: &std::sync::Mutex<Meeting>,
    sink: &mut (dyn WalkSink + Send),
) -> Result<()> {
    let poisoned = || Error::Runtime(anyhow::anyhow!("internal: the walk's other end panicked"));
    let _stop = StopOnPanic(meeting);
    let sql = match end {
        End::Low => CANDIDATES_UP,
        End::High => CANDIDATES_DOWN,
    };
    let mut stmt = c.prepare(sql).map_err(raw_err)?;
    loop {
        let (from, to) = {
            let m = meeting.lock().map_err(|_| poisoned())?;
            if m.met {
                return Ok(());
            }
            match end {
                End::Low => (m.low.clone(), m.high.clone()),
                End::High => (m.high.clone(), m.low.clone()),
            }
        };
        let mut page = candidates_page(&mut stmt, w, &from, &to).map_err(raw_err)?;
        let read = page.len();
        let mut m = meeting.lock().map_err(|_| poisoned())?;
        let keep = match end {
            End::Low => page.partition_point(|p| p.state.permit_no < m.high),
            End::High => page.partition_point(|p| p.state.permit_no > m.low),
        };
        page.truncate(keep);
        let done = keep < read || read < w.limit as usize;
        if let Some(last) = page.last() {
            match end {
                End::Low => m.low.clone_from(&last.state.permit_no),
                End::High => m.high.clone_from(&last.state.permit_no),
            }
        }
        m.met |= done;
        drop(m);
        sink.page(page)?;
        if done {
            return Ok(());
        }
    }
}

/// Stops both ends of the walk: one failed or panicked, and the run fails
/// with its error. A panic while the lock was held poisoned it; the ends
/// are stopped all the same.
fn stop(meeting: &std::sync::Mutex<Meeting>) {
    let mut m = meeting.lock().unwrap_or_else(|p| p.into_inner());
    m.met = true;
}

/// Stops both ends of the walk when dropped by a panicking thread: an end
/// that panics stops the other, as one that fails does, instead of
/// leaving it to walk the rest of the register for a run that will fail.
struct StopOnPanic<'a>(&'a std::sync::Mutex<Meeting>);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            stop(self.0);
        }
    }
}

/// A page of the walk: up to `limit` permits from `from` towards `to`
/// (both exclusive), in the statement's order.
fn candidates_page(
    stmt: &mut rusqlite::Statement,
    w: &WalkParams,
    from: &str,
    to: &str,
) -> rusqlite::Result<Vec<Walked>> {
    let mut rows = stmt.query(rusqlite::params![
        from,
        w.active_to,
        w.limit,
        w.suspended_before,
        w.due_from,
        to
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let state = CandidateState {
            permit_no: r.get(0)?,
            valid_until: raw_date(r, 1)?,
            status: raw_code(r, 2)?,
        };
        let due = match r.get_ref(3)?.as_str_or_null()? {
            None => None,
            Some(id_number) => Some(DueDetails {
                id_number: id_number.to_string(),
                employer_uscc: r.get(4)?,
                si_status: raw_code(r, 5)?,
                marital_status: raw_code(r, 6)?,
                decisions: match r.get_ref(7)?.as_str_or_null()? {
                    Some(code) => decision_code(code)?,
                    None => Vec::new(),
                },
            }),
        };
        out.push(Walked { state, due });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::new_db;
    use super::*;

    #[test]
    fn the_page_reader_selects_a_permit_s_columns_in_the_order_they_are_read() {
        PermitRow::assert_selected_in_order(PERMITS_BY_KEY);
    }

    /// The permit numbers a walk gave, in the order its sink took them.
    struct Keys(Vec<String>);

    impl WalkSink for Keys {
        fn page(&mut self, page: Vec<Walked>) -> Result<()> {
            self.0.extend(page.into_iter().map(|w| w.state.permit_no));
            Ok(())
        }
        fn part(&self) -> Self {
            Keys(Vec::new())
        }
        fn merge_later(&mut self, later: Self) -> Result<()> {
            self.0.extend(later.0);
            Ok(())
        }
        fn merge_descending(&mut self, later: Self) -> Result<()> {
            self.0.extend(later.0.into_iter().rev());
            Ok(())
        }
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
    }

    /// The walk from both ends gives every permit within the bounds once,
    /// in key order, whatever the page size and wherever the ends meet
    /// (each size walked several times: the ends race), and nothing
    /// outside them. Permit numbers are opaque text: of several lengths
    /// and scripts, in no order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_walk_from_both_ends_gives_every_candidate_once_in_key_order() {
        let (_dir, db) = new_db().await;
        let bounds = CandidateBounds {
            active_to: day(2026, 12, 31),
            suspended_before: Some(day(2026, 10, 1)),
        };
        // Due from after the window: no permit's details are looked up.
        let due_from = day(2027, 1, 1);
        let mut expected = Vec::new();
        let mut rows = Vec::new();
        for i in 0..240u32 {
            let prefix = ["SH", "粤B", "a", "SH0", "Z"][(i % 5) as usize];
            let no = format!("{prefix}{}", (i * 7919) % 10007);
            // A candidate (active, or suspended past its grace) or not
            // (valid after the window, within its grace, cancelled).
            let (valid_until, status, candidate) = match i % 6 {
                0 | 1 => ("2026-12-01", "active", true),
                2 => ("2026-09-01", "suspended", true),
                3 => ("2027-06-01", "active", false),
                4 => ("2026-11-01", "suspended", false),
                _ => ("2026-09-01", "cancelled", false),
            };
            if candidate {
                expected.push(no.clone());
            }
            rows.push((no, valid_until, status));
        }
        expected.sort();
        let mut c = db.pool.acquire().await.expect("a connection");
        for (no, valid_until, status) in &rows {
            sqlx::query(
                "INSERT INTO permit_state (permit_no, valid_until, status) VALUES (?, ?, ?)",
            )
            .bind(no)
            .bind(valid_until)
            .bind(status)
            .execute(&mut *c)
            .await
            .expect("a permit");
        }
        drop(c);
        let mut run = db
            .begin_run(day(2026, 11, 27), "2026-11-27T02:00:00+08:00", 0)
            .await
            .expect("a run");
        for limit in [1, 2, 3, 5, 8, 33, 10_000] {
            for round in 0..4 {
                let mut keys = Keys(Vec::new());
                run.walk(bounds, due_from, limit, &mut keys)
                    .await
                    .expect("the walk");
                assert_eq!(keys.0, expected, "pages of {limit}, round {round}");
            }
        }
        run.rollback().await.expect("the run stopped");
    }

    /// Keys, as [`Keys`], from a sink whose parts panic on their first
    /// page: the walk's upper end fails that way.
    struct PartPanics {
        keys: Vec<String>,
        is_part: bool,
    }

    impl WalkSink for PartPanics {
        fn page(&mut self, page: Vec<Walked>) -> Result<()> {
            assert!(!self.is_part, "a sink that panics");
            self.keys
                .extend(page.into_iter().map(|w| w.state.permit_no));
            Ok(())
        }
        fn part(&self) -> Self {
            PartPanics {
                keys: Vec::new(),
                is_part: true,
            }
        }
        fn merge_later(&mut self, later: Self) -> Result<()> {
            self.keys.extend(later.keys);
            Ok(())
        }
        fn merge_descending(&mut self, later: Self) -> Result<()> {
            self.keys.extend(later.keys.into_iter().rev());
            Ok(())
        }
    }

    /// An end that panics stops the other, as one that fails does: the
    /// walk fails, and the lower end, walking pages of one permit, stops
    /// long before the top of a register of 40,000 (it walked all but the
    /// upper end's one before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_that_panics_stops_the_other() {
        let (_dir, db) = new_db().await;
        sqlx::query(
            "INSERT INTO permit_state (permit_no, valid_until, status)
             WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000)
             SELECT printf('SH%06d', i), '2026-12-01', 'active' FROM n",
        )
        .execute(&db.pool)
        .await
        .expect("the permits");
        let bounds = CandidateBounds {
            active_to: day(2026, 12, 31),
            suspended_before: None,
        };
        let mut run = db
            .begin_run(day(2026, 11, 27), "2026-11-27T02:00:00+08:00", 0)
            .await
            .expect("a run");
        let mut sink = PartPanics {
            keys: Vec::new(),
            is_part: false,
        };
        let walked = run.walk(bounds, day(2027, 1, 1), 1, &mut sink).await;
        let err = walked.expect_err("the walk fails").to_string();
        assert!(err.contains("upper end panicked"), "{err}");
        assert!(
            sink.keys.len() < 20_000,
            "the lower end walked on to {} permits",
            sink.keys.len()
        );
        run.rollback().await.expect("the run stopped");
    }

    /// An empty register is walked in no page; one permit, in one.
    #[tokio::test]
    async fn an_empty_register_and_a_register_of_one_are_walked_whole() {
        let (_dir, db) = new_db().await;
        let bounds = CandidateBounds {
            active_to: day(2026, 12, 31),
            suspended_before: None,
        };
        let as_of = day(2026, 11, 27);
        let mut run = db
            .begin_run(as_of, "2026-11-27T02:00:00+08:00", 0)
            .await
            .expect("a run");
        let mut keys = Keys(Vec::new());
        run.walk(bounds, day(2027, 1, 1), 10, &mut keys)
            .await
            .expect("the walk");
        assert!(keys.0.is_empty());
        run.rollback().await.expect("the run stopped");
        sqlx::query("INSERT INTO permit_state VALUES ('SH1', '2026-12-01', 'active')")
            .execute(&db.pool)
            .await
            .expect("a permit");
        let mut run = db
            .begin_run(as_of, "2026-11-27T02:00:00+08:00", 0)
            .await
            .expect("a run");
        for limit in [1, 10] {
            let mut keys = Keys(Vec::new());
            run.walk(bounds, day(2027, 1, 1), limit, &mut keys)
                .await
                .expect("the walk");
            assert_eq!(keys.0, ["SH1"], "pages of {limit}");
        }
        run.rollback().await.expect("the run stopped");
    }
}
