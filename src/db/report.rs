//! Read-only statements for `autosign report` and the daemon's nightly
//! report (src/report/): the run ledger of a range of nights, and counts —
//! never rows about a person. Every figure is aggregated in SQL (`GROUP BY`,
//! an `ORDER BY … LIMIT 1 OFFSET k` for a percentile), so a report costs a
//! few index range reads over one range of nights plus one count over the
//! register's narrow state table (PENDING by days left), whatever the size
//! of the register.
//!
//! The SQLite and PostgreSQL texts sit side by side; they differ where the
//! schemas do (`held` is an integer on SQLite, a boolean on PostgreSQL;
//! dates are text on SQLite) and share one row mapping.

use chrono::NaiveDate;
use sqlx::Row;

use super::{notice_of_event, stored, Db};
use crate::domain::{Reasons, RunStatus};
use crate::error::Result;

/// A run of the range as the report shows it: completed or held (a
/// discarded, reverted or unfinished run is not a night's result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRun {
    pub run_id: i64,
    pub as_of: NaiveDate,
    /// Completed or held.
    pub status: RunStatus,
    /// PENDING permits of the run (R6: no event is written for them).
    pub pending: i64,
    /// Why the safety brake held the run, if it did.
    pub brake: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// The newest import the run saw when it began.
    pub import_mark: Option<i64>,
    /// When `autosign release` applied it (a run the brake held first).
    pub released_at: Option<String>,
}

/// A count under one or two labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub a: String,
    pub b: String,
    pub count: i64,
}

/// A count for one night (`as_of`) under two labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NightTally {
    pub as_of: NaiveDate,
    pub a: String,
    pub b: String,
    pub count: i64,
}

/// One imported feed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportImport {
    pub import_id: i64,
    pub feed: String,
    pub file_name: String,
    pub rows_read: i64,
    pub rows_imported: i64,
    pub rows_rejected: i64,
    pub imported_at: String,
}

/// Upper bounds (exclusive, in seconds) of the queued-to-sent histogram's
/// buckets; a last bucket takes the rest. Kept in step with the `CASE` of
/// [`delay_bucket!`].
pub const DELAY_BUCKETS: [i64; 7] = [60, 600, 3_600, 6 * 3_600, 12 * 3_600, 86_400, 2 * 86_400];

/// Time from queued (`created_at`) to `sent_at` of the sent notices of a
/// range of nights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelayStats {
    pub count: i64,
    /// Nearest-rank percentiles, in seconds (`None` when nothing was sent).
    pub median: Option<i64>,
    pub p95: Option<i64>,
    /// Counts per bucket of [`DELAY_BUCKETS`] (one more than the bounds).
    pub buckets: Vec<i64>,
}

/// Access to a result row's cells, the same on both backends.
trait Cells {
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn date(&self, i: usize) -> Result<NaiveDate>;
}

macro_rules! impl_cells {
    ($row:ty) => {
        impl Cells for $row {
            fn int(&self, i: usize) -> Result<i64> {
                Ok(self.try_get(i)?)
            }
            fn opt_int(&self, i: usize) -> Result<Option<i64>> {
                Ok(self.try_get(i)?)
            }
            fn text(&self, i: usize) -> Result<String> {
                Ok(self.try_get(i)?)
            }
            fn opt_text(&self, i: usize) -> Result<Option<String>> {
                Ok(self.try_get(i)?)
            }
            fn date(&self, i: usize) -> Result<NaiveDate> {
                Ok(self.try_get(i)?)
            }
        }
    };
}
impl_cells!(sqlx::sqlite::SqliteRow);
impl_cells!(sqlx::postgres::PgRow);

fn report_run(r: &impl Cells) -> Result<ReportRun> {
    Ok(ReportRun {
        run_id: r.int(0)?,
        as_of: r.date(1)?,
        status: stored(r.text(2)?)?,
        pending: r.int(3)?,
        brake: r.opt_text(4)?,
        started_at: r.text(5)?,
        finished_at: r.opt_text(6)?,
        import_mark: r.opt_int(7)?,
        released_at: r.opt_text(8)?,
    })
}

fn tally(r: &impl Cells) -> Result<Tally> {
    Ok(Tally {
        a: r.text(0)?,
        b: r.text(1)?,
        count: r.int(2)?,
    })
}

fn reasons_tally(r: &impl Cells) -> Result<(Reasons, i64)> {
    Ok((stored(r.text(0)?)?, r.int(1)?))
}

fn night_tally(r: &impl Cells) -> Result<NightTally> {
    Ok(NightTally {
        as_of: r.date(0)?,
        a: r.text(1)?,
        b: r.text(2)?,
        count: r.int(3)?,
    })
}

fn int_pair(r: &impl Cells) -> Result<(i64, i64)> {
    Ok((r.int(0)?, r.int(1)?))
}

fn single_int(r: &impl Cells) -> Result<i64> {
    r.int(0)
}

fn opt_single_int(r: &impl Cells) -> Result<Option<i64>> {
    r.opt_int(0)
}

fn report_import(r: &impl Cells) -> Result<ReportImport> {
    Ok(ReportImport {
        import_id: r.int(0)?,
        feed: r.text(1)?,
        file_name: r.text(2)?,
        rows_read: r.int(3)?,
        rows_imported: r.int(4)?,
        rows_rejected: r.int(5)?,
        imported_at: r.text(6)?,
    })
}

/// Runs one statement (SQLite text, PostgreSQL text; or `both:` one text
/// for both) with its binds and maps every row with `$map`.
macro_rules! rows {
    ($db:expr, both: $sql:expr, $map:expr $(, $bind:expr)* $(,)?) => {
        rows!($db, $sql, $sql, $map $(, $bind)*)
    };
    ($db:expr, $sqlite:expr, $pg:expr, $map:expr $(, $bind:expr)* $(,)?) => {
        match $db {
            Db::Sqlite(db) => sqlx::query($sqlite)
                $(.bind($bind))*
                .fetch_all(db.pool())
                .await?
                .iter()
                .map(|r| $map(r))
                .collect::<Result<Vec<_>>>()?,
            Db::Postgres(db) => sqlx::query($pg)
                $(.bind($bind))*
                .fetch_all(db.pool())
                .await?
                .iter()
                .map(|r| $map(r))
                .collect::<Result<Vec<_>>>()?,
        }
    };
}

/// The nights of a range: one live run per `as_of` (a unique index).
const RUNS: &str = "SELECT run_id, as_of, status, pending, brake, started_at, finished_at, \
     import_mark, released_at FROM runs \
     WHERE as_of BETWEEN $1 AND $2 AND status IN ('completed', 'held') ORDER BY as_of";

/// The night before a date: its import mark bounds the date's imports.
const PREVIOUS_MARK: &str = "SELECT import_mark FROM runs \
     WHERE as_of < $1 AND status IN ('completed', 'held') ORDER BY as_of DESC LIMIT 1";

/// The latest live run of any date (for the message when a range has none).
const LATEST_RUN: &str = "SELECT run_id, as_of, status, pending, brake, started_at, \
     finished_at, import_mark, released_at FROM runs \
     WHERE status IN ('completed', 'held') ORDER BY as_of DESC LIMIT 1";

// An event counts for its night when it is in effect — applied by its run
// or by a release — or written by a run the brake still holds: the audit
// export's states `applied` and `held` (void, not-applied and reverted
// events are corrections, not the night's result).
// The same text on both backends: SQLite reads its 0/1 flags as truth
// values.
macro_rules! in_effect {
    () => {
        "(r.status = 'held' OR (r.status = 'completed' AND (NOT e.held OR x.applied)))"
    };
}
macro_rules! events_from {
    () => {
        " FROM events e JOIN runs r ON r.run_id = e.run_id \
          LEFT JOIN event_releases x ON x.event_id = e.event_id "
    };
}

/// Events per night and kind (`b` empty).
const EVENTS: &str = concat!(
    "SELECT e.as_of, e.kind, '', count(*)",
    events_from!(),
    "WHERE e.as_of BETWEEN $1 AND $2 AND ",
    in_effect!(),
    " GROUP BY e.as_of, e.kind ORDER BY e.as_of, e.kind"
);

/// One night's VISIT_CENTER events by their reasons.
const REASONS: &str = concat!(
    "SELECT e.reasons, count(*)",
    events_from!(),
    "WHERE e.as_of = $1 AND e.kind = 'VISIT_CENTER' AND ",
    in_effect!(),
    " GROUP BY e.reasons ORDER BY e.reasons"
);

/// One night's VISIT_CENTER events by the permit's district and street as
/// the register holds them (its details half).
const PLACES: &str = concat!(
    "SELECT d.district_code, d.street_code, count(*)",
    events_from!(),
    "JOIN permit_details d ON d.permit_no = e.permit_no \
     WHERE e.as_of = $1 AND e.kind = 'VISIT_CENTER' AND ",
    in_effect!(),
    " GROUP BY d.district_code, d.street_code ORDER BY d.district_code, d.street_code"
);

// PENDING by days left at a night ($1), for `$2 < valid_until <= $3`:
// active permits due then whose cycle has no decision from a live run of
// that night or before (R4, R6). Right after the run this is exactly the
// run's PENDING set; for an older night the register may have moved on
// (a later decision moved valid_until, an import changed it), which the
// report shows by comparing the total with the run's own count. The two
// NOT EXISTS each match one of the partial cycle indexes (held or not).
const PENDING_SQLITE: &str =
    "SELECT CAST(julianday(s.valid_until) - julianday($1) AS INTEGER) AS d, count(*) \
     FROM permit_state s \
     WHERE s.status = 'active' AND s.valid_until > $2 AND s.valid_until <= $3 \
       AND NOT EXISTS (SELECT 1 FROM events e JOIN runs r ON r.run_id = e.run_id \
             WHERE e.permit_no = s.permit_no AND e.valid_until = s.valid_until \
               AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held = 0 \
               AND r.status IN ('completed', 'held') AND r.as_of <= $1) \
       AND NOT EXISTS (SELECT 1 FROM events e JOIN runs r ON r.run_id = e.run_id \
             WHERE e.permit_no = s.permit_no AND e.valid_until = s.valid_until \
               AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held = 1 \
               AND r.status IN ('completed', 'held') AND r.as_of <= $1) \
     GROUP BY d ORDER BY d";
const PENDING_PG: &str = "SELECT CAST(p.valid_until - $1::date AS BIGINT) AS d, count(*) \
     FROM permit_state p \
     WHERE p.status = 'active' AND p.valid_until > $2 AND p.valid_until <= $3 \
       AND NOT EXISTS (SELECT 1 FROM events e JOIN runs r ON r.run_id = e.run_id \
             WHERE e.permit_no = p.permit_no AND e.valid_until = p.valid_until \
               AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND NOT e.held \
               AND r.status IN ('completed', 'held') AND r.as_of <= $1) \
       AND NOT EXISTS (SELECT 1 FROM events e JOIN runs r ON r.run_id = e.run_id \
             WHERE e.permit_no = p.permit_no AND e.valid_until = p.valid_until \
               AND e.kind IN ('AUTO_SIGNED', 'VISIT_CENTER') AND e.held \
               AND r.status IN ('completed', 'held') AND r.as_of <= $1) \
     GROUP BY d ORDER BY d";

/// Notices per night, channel and status (the notification export's rows
/// of the range, counted), found through the nights' events.
const NOTICES: &str = concat!(
    "SELECT e.as_of, n.channel, n.status, count(*) FROM events e JOIN notifications n ON ",
    notice_of_event!(),
    " WHERE e.as_of BETWEEN $1 AND $2 \
     GROUP BY e.as_of, n.channel, n.status ORDER BY e.as_of, n.channel, n.status"
);

/// The range's sent notices, after the seconds each took (`$secs`).
macro_rules! sent_notices {
    ($secs:literal) => {
        concat!(
            "(SELECT ",
            $secs,
            " AS secs FROM events e JOIN notifications n ON ",
            notice_of_event!(),
            " WHERE e.as_of BETWEEN $1 AND $2 AND n.status = 'sent' AND n.sent_at IS NOT NULL) d"
        )
    };
}
// Seconds from created_at to sent_at of the range's sent notices (both are
// RFC 3339 with an offset; julianday reads the offset).
macro_rules! delays_sqlite {
    () => {
        sent_notices!(
            "CAST(round((julianday(n.sent_at) - julianday(n.created_at)) * 86400.0) AS INTEGER)"
        )
    };
}
macro_rules! delays_pg {
    () => {
        sent_notices!(
            "CAST(round(extract(epoch FROM (n.sent_at::timestamptz - n.created_at::timestamptz))) AS BIGINT)"
        )
    };
}
/// The bucket of DELAY_BUCKETS a delay falls in (a negative one — clocks
/// of two hosts — in the first).
macro_rules! delay_bucket {
    () => {
        "CAST(CASE WHEN secs < 60 THEN 0 WHEN secs < 600 THEN 1 WHEN secs < 3600 THEN 2 \
              WHEN secs < 21600 THEN 3 WHEN secs < 43200 THEN 4 WHEN secs < 86400 THEN 5 \
              WHEN secs < 172800 THEN 6 ELSE 7 END AS BIGINT)"
    };
}
const DELAY_HISTOGRAM_SQLITE: &str = concat!(
    "SELECT ",
    delay_bucket!(),
    " AS b, count(*) FROM ",
    delays_sqlite!(),
    " GROUP BY b ORDER BY b"
);
const DELAY_HISTOGRAM_PG: &str = concat!(
    "SELECT ",
    delay_bucket!(),
    " AS b, count(*) FROM ",
    delays_pg!(),
    " GROUP BY b ORDER BY b"
);
/// The delay at 0-based rank $3 in ascending order.
const DELAY_AT_SQLITE: &str = concat!(
    "SELECT secs FROM ",
    delays_sqlite!(),
    " ORDER BY secs LIMIT 1 OFFSET $3"
);
const DELAY_AT_PG: &str = concat!(
    "SELECT secs FROM ",
    delays_pg!(),
    " ORDER BY secs LIMIT 1 OFFSET $3"
);

/// Imports with `$1 < import_id <= $2`: the files a night's run saw first.
const IMPORTS: &str =
    "SELECT import_id, feed, file_name, rows_read, rows_imported, rows_rejected, \
     imported_at FROM imports WHERE import_id > $1 AND import_id <= $2 ORDER BY import_id";

/// Each feed's newest import up to a mark (`b` empty): the feed's age when
/// the run began (as the safety brake measures it).
const NEWEST_IMPORTS: &str = "SELECT i.feed, i.imported_at, CAST(0 AS BIGINT) FROM imports i \
     JOIN (SELECT feed, max(import_id) AS newest FROM imports WHERE import_id <= $1 GROUP BY feed) n \
       ON n.newest = i.import_id ORDER BY i.feed";

impl Db {
    /// The completed and held runs with `from <= as_of <= to`, oldest
    /// first.
    pub async fn report_runs(&self, from: NaiveDate, to: NaiveDate) -> Result<Vec<ReportRun>> {
        Ok(rows!(self, RUNS, RUNS, report_run, from, to))
    }

    /// The latest completed or held run of any date.
    pub async fn report_latest_run(&self) -> Result<Option<ReportRun>> {
        let v = rows!(self, LATEST_RUN, LATEST_RUN, report_run);
        Ok(v.into_iter().next())
    }

    /// The import mark of the last completed or held run before `as_of`
    /// (`None`: no such run, or one from before marks were kept).
    pub async fn report_previous_mark(&self, as_of: NaiveDate) -> Result<Option<i64>> {
        let v = rows!(self, PREVIOUS_MARK, PREVIOUS_MARK, opt_single_int, as_of);
        Ok(v.into_iter().next().flatten())
    }

    /// Events in effect (or held) per night and kind, `a` the kind.
    pub async fn report_event_counts(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<NightTally>> {
        Ok(rows!(self, both: EVENTS, night_tally, from, to))
    }

    /// One night's VISIT_CENTER events by their reasons.
    pub async fn report_visit_center_reasons(
        &self,
        as_of: NaiveDate,
    ) -> Result<Vec<(Reasons, i64)>> {
        Ok(rows!(self, both: REASONS, reasons_tally, as_of))
    }

    /// One night's VISIT_CENTER events by district (`a`) and street (`b`).
    pub async fn report_visit_center_places(&self, as_of: NaiveDate) -> Result<Vec<Tally>> {
        Ok(rows!(self, both: PLACES, tally, as_of))
    }

    /// Permits PENDING at `as_of`, by days left to `valid_until`, for
    /// `after < valid_until <= until` (the window beyond the decision
    /// deadline). One count over the register's state.
    pub async fn report_pending_days(
        &self,
        as_of: NaiveDate,
        after: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<(i64, i64)>> {
        Ok(rows!(
            self,
            PENDING_SQLITE,
            PENDING_PG,
            int_pair,
            as_of,
            after,
            until
        ))
    }

    /// Notices per night, channel (`a`) and status (`b`).
    pub async fn report_notices(&self, from: NaiveDate, to: NaiveDate) -> Result<Vec<NightTally>> {
        Ok(rows!(self, NOTICES, NOTICES, night_tally, from, to))
    }

    /// Queued-to-sent times of the range's sent notices.
    pub async fn report_delays(&self, from: NaiveDate, to: NaiveDate) -> Result<DelayStats> {
        let histogram = rows!(
            self,
            DELAY_HISTOGRAM_SQLITE,
            DELAY_HISTOGRAM_PG,
            int_pair,
            from,
            to
        );
        let mut buckets = vec![0i64; DELAY_BUCKETS.len() + 1];
        for (b, n) in histogram {
            if let Some(slot) = usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) {
                *slot += n;
            }
        }
        let count: i64 = buckets.iter().sum();
        let (median, p95) = if count == 0 {
            (None, None)
        } else {
            (
                self.delay_at(from, to, nearest_rank(count, 50) - 1).await?,
                self.delay_at(from, to, nearest_rank(count, 95) - 1).await?,
            )
        };
        Ok(DelayStats {
            count,
            median,
            p95,
            buckets,
        })
    }

    /// The delay at 0-based `rank` in ascending order.
    async fn delay_at(&self, from: NaiveDate, to: NaiveDate, rank: i64) -> Result<Option<i64>> {
        let v = rows!(
            self,
            DELAY_AT_SQLITE,
            DELAY_AT_PG,
            single_int,
            from,
            to,
            rank
        );
        Ok(v.into_iter().next())
    }

    /// Imports with `after < import_id <= upto`, in order.
    pub async fn report_imports(&self, after: i64, upto: i64) -> Result<Vec<ReportImport>> {
        Ok(rows!(self, IMPORTS, IMPORTS, report_import, after, upto))
    }

    /// Each feed's newest import up to `upto`: feed (`a`), imported_at
    /// (`b`).
    pub async fn report_newest_imports(&self, upto: i64) -> Result<Vec<Tally>> {
        Ok(rows!(self, NEWEST_IMPORTS, NEWEST_IMPORTS, tally, upto))
    }
}

/// The 1-based nearest rank of the `pct` percentile of `n` values:
/// ⌈pct/100 × n⌉, at least 1 (PostgreSQL's `percentile_disc`).
pub fn nearest_rank(n: i64, pct: i64) -> i64 {
    ((pct * n + 99) / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_is_the_ceiling_of_the_share_and_at_least_one() {
        assert_eq!(nearest_rank(1, 50), 1);
        assert_eq!(nearest_rank(2, 50), 1);
        assert_eq!(nearest_rank(3, 50), 2);
        assert_eq!(nearest_rank(10, 95), 10);
        assert_eq!(nearest_rank(20, 95), 19);
        assert_eq!(nearest_rank(100, 95), 95);
        assert_eq!(nearest_rank(0, 50), 1);
    }

    #[test]
    fn the_delay_buckets_match_the_sql_case() {
        let case = delay_bucket!();
        for (i, bound) in DELAY_BUCKETS.iter().enumerate() {
            let arm = format!("WHEN secs < {bound} THEN {i}");
            assert!(case.contains(&arm), "{arm} missing from {case}");
        }
        assert!(case.contains(&format!("ELSE {} END", DELAY_BUCKETS.len())));
    }
}
