//! The runs and events family: the run ledger (`runs`), the events a run
//! writes, and what operators did with them afterwards (`event_releases`,
//! `event_reverts`).
//!
//! The statements here read and write the same way on both backends and
//! are written once; each backend's run transaction — a night's bulk
//! reads and writes — sits in its own file behind [`super::RunTx`], and
//! the operator's release and revert, which write many rows in one
//! transaction, likewise.

use chrono::NaiveDate;

use super::rows::*;
use super::{notice_of_event, on_pool, spelled, Db};
use crate::domain::{EventKind, PermitStatus, RunStatus};
use crate::error::{Error, Result};

/// A [`RunRecord`]'s columns.
macro_rules! run_columns {
    () => {
        "run_id, as_of, status, attempts, started_at, finished_at, pending, brake, import_mark, \
         duration_secs"
    };
}
pub(super) use run_columns;

macro_rules! run_select {
    ($rest:literal) => {
        concat!("SELECT ", run_columns!(), " FROM runs ", $rest)
    };
}

/// The live (neither discarded nor reverted) run of a date.
pub(super) const RUN_FOR: &str =
    run_select!("WHERE as_of = $1 AND status <> 'discarded' AND status <> 'reverted'");

/// The safety brake's reason (`$1`) on run `$2`, before it writes any
/// event.
pub(super) const HOLD_RUN: &str = "UPDATE runs SET brake = $1 WHERE run_id = $2";

/// A run's end (`$5`): its status (`$1`, [`end_status`]), when it finished,
/// its PENDING count and how long it took in seconds.
pub(super) const END_RUN: &str = "UPDATE runs SET status = $1, finished_at = $2, pending = $3, \
     duration_secs = $4 WHERE run_id = $5";

/// The status a run ends in: held if the brake held it, else completed.
pub(super) fn end_status(run: &RunRecord) -> RunStatus {
    if run.brake.is_some() {
        RunStatus::Held
    } else {
        RunStatus::Completed
    }
}

macro_rules! held_events {
    ($t:literal, $f:literal) => {
        concat!(
            "SELECT event_id, permit_no, kind, reasons, valid_until, new_valid_until
             FROM events WHERE run_id = $1 AND held = ",
            $t,
            " ORDER BY event_id"
        )
    };
}

// A completed run's events in effect (applied, or applied by a release),
// with the status a CANCELLED one found: recorded since migration 6, else
// `suspended` when another run's SUSPENDED event of the cycle is in the
// trail (C1), else `active`. The as_of index finds the run's events.
macro_rules! revert_events {
    ($t:literal, $f:literal) => {
        concat!(
            "SELECT e.event_id, e.permit_no, e.kind, e.valid_until, e.new_valid_until,
               CASE WHEN e.kind <> 'CANCELLED' THEN NULL
                    WHEN e.prior_status IS NOT NULL THEN e.prior_status
                    WHEN EXISTS (SELECT 1 FROM events s WHERE s.permit_no = e.permit_no
                                   AND s.valid_until = e.valid_until AND s.kind = 'SUSPENDED'
                                   AND s.held = ",
            $f,
            " AND s.run_id <> e.run_id) THEN 'suspended'
                    ELSE 'active' END AS prior_status
             FROM events e LEFT JOIN event_releases x ON x.event_id = e.event_id
             WHERE e.as_of = $1 AND e.run_id = $2 AND (e.held = ",
            $f,
            " OR x.applied = ",
            $t,
            ") ORDER BY e.event_id"
        )
    };
}

/// A row of the `revert_events!` statement: a [`RevertEvent`] with its prior status
/// as stored (an optional code, read as one after).
#[derive(sqlx::FromRow)]
struct RevertRow {
    event_id: i64,
    permit_no: String,
    kind: EventKind,
    valid_until: NaiveDate,
    new_valid_until: Option<NaiveDate>,
    prior_status: Option<String>,
}

// `autosign revert`'s statements on the run's ledger row and its notices,
// the same on both backends (each runs them in its own revert
// transaction). The run's notices are found through its events, which
// the as_of index finds.
/// Marks completed run `$1` reverted at `$2`; no row if it is not completed.
pub(super) const REVERT_MARK: &str =
    "UPDATE runs SET status = 'reverted', reverted_at = $2 WHERE run_id = $1 AND status = 'completed'";
/// How many notices of run `$2` (of date `$1`) were sent.
pub(super) const SENT_NOTICES: &str = concat!(
    "SELECT count(*) FROM events e JOIN notifications n ON ",
    notice_of_event!(),
    " WHERE e.as_of = $1 AND e.run_id = $2 AND n.status = 'sent'"
);
/// Withdraws the notices of run `$2` (of date `$1`).
pub(super) const WITHDRAW_NOTICES: &str = concat!(
    "UPDATE notifications SET status = 'withdrawn', live = NULL, next_attempt_at = NULL
     WHERE notification_id IN (SELECT n.notification_id FROM events e JOIN notifications n ON ",
    notice_of_event!(),
    " WHERE e.as_of = $1 AND e.run_id = $2)"
);

/// A run's events and their notices, counted by kind, reasons and channel
/// (NULL for events without a notice).
const RUN_COUNTS: &str = concat!(
    "SELECT e.kind, e.reasons, n.channel, count(*) AS count
     FROM events e LEFT JOIN notifications n ON ",
    notice_of_event!(),
    " WHERE e.as_of = (SELECT as_of FROM runs WHERE run_id = $1) AND e.run_id = $1
     GROUP BY e.kind, e.reasons, n.channel ORDER BY e.kind, e.reasons, n.channel"
);

/// Where an event comes among its permit's events of one date in the
/// audit export, in SQL ([`audit_select!`]) and as [`kind_rank`] reads it;
/// the notification export ranks a permit's notices of one cycle alike
/// (`kind_rank!("n")`). Without an alias, the events' (`e`).
macro_rules! kind_rank {
    () => {
        kind_rank!("e")
    };
    ($table:literal) => {
        concat!(
            "CASE ",
            $table,
            ".kind WHEN 'SUSPENDED' THEN 1 WHEN 'CANCELLED' THEN 2 WHEN 'VISIT_CENTER' THEN 3 \
             ELSE 4 END"
        )
    };
}
// Exported under its own name: the function below reads the same rank.
pub(super) use kind_rank as kind_rank_sql;

// The event's state (docs/rules.md, "The audit trail") comes from its run
// and, for a released run, from event_releases; the notice is the one its
// own run queued (a void event has none, though a later run may have
// queued one for the cycle). Booleans are read as truth values, which
// both backends take (no index is at stake in the CASE). Text keys sort
// bytewise on both (PostgreSQL's are COLLATE "C"). The export's order
// ranks a permit's events of one date by kind (`kind_rank!`), then by id.
macro_rules! audit_select {
    ($where:expr) => {
        audit_select!(
            $where,
            concat!(" ORDER BY e.as_of, e.permit_no, ", kind_rank!(), ", e.event_id")
        )
    };
    ($where:expr, $order:expr) => {
        concat!(
            "SELECT e.run_id, e.as_of, e.permit_no, e.id_number, e.kind AS decision, e.reasons,
                    e.valid_until, e.new_valid_until, e.residence_visited_on, e.residence_result,
                    e.si_month, e.si_status, e.si_employer_uscc, e.marital_status,
                    n.channel AS notification_channel, n.status AS notification_status, e.decided_at,
                    CASE WHEN r.status = 'reverted' AND EXISTS (SELECT 1 FROM event_reverts v
                              WHERE v.event_id = e.event_id AND v.undone) THEN 'reverted'
                         WHEN NOT e.held THEN 'applied' WHEN r.status = 'discarded' THEN 'void'
                         WHEN x.applied THEN 'applied'
                         WHEN r.status = 'completed' OR r.status = 'reverted' THEN 'not_applied'
                         ELSE 'held' END AS state
             FROM events e JOIN runs r ON r.run_id = e.run_id
             LEFT JOIN event_releases x ON x.event_id = e.event_id
             LEFT JOIN notifications n ON ",
            notice_of_event!(),
            "
             WHERE ",
            $where,
            $order
        )
    };
}

/// The audit rows (R9) of the runs with `$1 <= as_of <= $2`, in the
/// export's order: each backend streams it its own way.
pub(super) const AUDIT_SELECT_RANGE: &str = audit_select!("e.as_of BETWEEN $1 AND $2");

/// The same rows in the order of SQLite's `events_as_of` (a B-tree on
/// (as_of, permit_no), whose entries end with the event's id; on
/// PostgreSQL a BRIN index): SQLite reads them without a sort, and its export puts
/// each permit's rows of one date in the export's order itself
/// ([`kind_rank`]; rarely more than one). Ordered by the kind's rank in
/// SQL, SQLite sorted every (as_of, permit_no) group apart, one row each:
/// at 10M permits half of the export's query (1.3 of 2.6 s).
pub(super) const AUDIT_SELECT_RANGE_BY_ID: &str = audit_select!(
    "e.as_of BETWEEN $1 AND $2",
    " ORDER BY e.as_of, e.permit_no, e.event_id"
);

// One permit's audit rows (`$1`; R10's `status`, `explain`), found by one
// arm per partial cycle index (`events_cycle` over applied events,
// `events_held_cycle` over held ones), each read by permit number. Without
// the `held` term neither index applies, and the look-up read every event
// (at 10M permits after a first night: 0.20-0.57 s for one permit on
// SQLite, against 0.01 s this way).
macro_rules! audit_select_permit {
    ($t:literal, $f:literal) => {
        audit_select!(concat!(
            "e.event_id IN (SELECT event_id FROM events WHERE permit_no = $1 AND held = ",
            $f,
            " UNION ALL SELECT event_id FROM events WHERE permit_no = $1 AND held = ",
            $t,
            ")"
        ))
    };
}

/// [`kind_rank!`] for an event of `kind` (its code).
pub(super) fn kind_rank(kind: &str) -> u8 {
    match kind {
        k if k == EventKind::Suspended.code() => 1,
        k if k == EventKind::Cancelled.code() => 2,
        k if k == EventKind::VisitCenter.code() => 3,
        _ => 4,
    }
}

impl Db {
    pub async fn latest_completed_run(&self) -> Result<Option<RunRecord>> {
        let sql = run_select!("WHERE status = 'completed' ORDER BY as_of DESC LIMIT 1");
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .fetch_optional(pool)
            .await?))
    }

    /// The live (not discarded or reverted) run for `as_of`.
    pub async fn run_for(&self, as_of: NaiveDate) -> Result<Option<RunRecord>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(RUN_FOR)
            .bind(as_of)
            .fetch_optional(pool)
            .await?))
    }

    pub async fn run_by_id(&self, run_id: i64) -> Result<Option<RunRecord>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(run_select!(
            "WHERE run_id = $1"
        ))
        .bind(run_id)
        .fetch_optional(pool)
        .await?))
    }

    /// The oldest run held by the safety brake, if any.
    pub async fn held_run(&self) -> Result<Option<RunRecord>> {
        let sql = run_select!("WHERE status = 'held' ORDER BY run_id LIMIT 1");
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .fetch_optional(pool)
            .await?))
    }

    /// The first run after `run_id` that still counts (neither discarded
    /// nor reverted): `autosign revert` undoes the latest run only.
    pub async fn later_live_run(&self, run_id: i64) -> Result<Option<RunRecord>> {
        let sql = run_select!(
            "WHERE run_id > $1 AND status <> 'discarded' AND status <> 'reverted'
             ORDER BY run_id LIMIT 1"
        );
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(run_id)
            .fetch_optional(pool)
            .await?))
    }

    /// The import mark of the latest completed run (0 when none).
    pub async fn completed_import_mark(&self) -> Result<i64> {
        let sql =
            "SELECT import_mark FROM runs WHERE status = 'completed' ORDER BY run_id DESC LIMIT 1";
        let mark: Option<Option<i64>> = on_pool!(self, |pool| sqlx::query_scalar(sql)
            .fetch_optional(pool)
            .await?);
        Ok(mark.flatten().unwrap_or(0))
    }

    /// `autosign discard`: the held run becomes discarded, its events void.
    /// `false` if the run is not held.
    pub async fn discard_run(&self, run_id: i64, now: &str) -> Result<bool> {
        let sql = "UPDATE runs SET status = 'discarded', discarded_at = $2
                   WHERE run_id = $1 AND status = 'held'";
        let done = on_pool!(self, |pool| sqlx::query(sql)
            .bind(run_id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    /// The events a held run wrote, in the order it wrote them.
    pub async fn held_events(&self, run_id: i64) -> Result<Vec<HeldEvent>> {
        let sql = self.spelling(spelled!(held_events));
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(run_id)
            .fetch_all(pool)
            .await?))
    }

    /// The events of a completed run that took effect, in the order they
    /// were written.
    pub async fn revert_events(&self, run: &RunRecord) -> Result<Vec<RevertEvent>> {
        let sql = self.spelling(spelled!(revert_events));
        let rows: Vec<RevertRow> = on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(run.as_of)
            .bind(run.run_id)
            .fetch_all(pool)
            .await?);
        rows.into_iter()
            .map(|r| {
                let prior_status = r
                    .prior_status
                    .map(PermitStatus::try_from)
                    .transpose()
                    .map_err(|e| Error::Runtime(anyhow::anyhow!(e)))?;
                Ok(RevertEvent {
                    event_id: r.event_id,
                    permit_no: r.permit_no,
                    kind: r.kind,
                    valid_until: r.valid_until,
                    new_valid_until: r.new_valid_until,
                    prior_status,
                })
            })
            .collect()
    }

    pub async fn run_counts(&self, run_id: i64) -> Result<Vec<RunCount>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(RUN_COUNTS)
            .bind(run_id)
            .fetch_all(pool)
            .await?))
    }

    /// One permit's audit rows, in the export's order.
    pub async fn events_for(&self, permit_no: &str) -> Result<Vec<AuditRow>> {
        let sql = self.spelling(spelled!(audit_select_permit));
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(permit_no)
            .fetch_all(pool)
            .await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The export's reader ranks a date's events of one permit as the
    /// statement does: every kind, and a code no kind has.
    #[test]
    fn kind_rank_agrees_with_the_statements_rank() {
        let c = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        let sql = concat!("SELECT ", kind_rank!(), " FROM (SELECT ?1 AS kind) e");
        let kinds = [
            EventKind::AutoSigned,
            EventKind::VisitCenter,
            EventKind::Suspended,
            EventKind::Cancelled,
        ];
        for code in kinds.iter().map(|k| k.code()).chain(["OTHER"]) {
            let in_sql: u8 = c
                .query_row(sql, [code], |r| r.get(0))
                .expect("the statement's rank");
            assert_eq!(kind_rank(code), in_sql, "{code}");
        }
    }
}
