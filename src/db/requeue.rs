//! `autosign requeue` ([`crate::requeue`]): which notices an operator's
//! selection holds, queuing the dead and failed ones again in one
//! transaction with a row each in the append-only `notice_requeues`
//! trail, and reading that trail back for `status`.
//!
//! A requeued notice keeps its row, id, text, recipient and so its
//! idempotency key (derived from permit, cycle and kind: the SMS gateway
//! and the SMTP relay drop a repeat by it); it becomes `queued` with no
//! attempt counted and is due at once. Only a notice that is dead or
//! failed, of a completed run, with its text and recipient still there
//! (retention clears them) can be requeued: a sent, withdrawn (`revert`),
//! undeliverable or still queued notice never is.
//!
//! The statements are one text for both backends (`$N` placeholders, which
//! SQLite reads too), assembled from constant fragments; only values are
//! bound. PostgreSQL locks the chosen rows (`FOR UPDATE OF n`) so that a
//! delivery worker cannot change one between its trail row and its
//! update; SQLite's write transaction (`BEGIN IMMEDIATE`) excludes every
//! other writer.

use chrono::NaiveDate;
use sqlx::Row;

use super::{notice_of_event, on_pool, Db};
use crate::domain::{Channel, NoticeStatus, RunStatus};
use crate::error::Result;

/// An operator's selection of notices; every field given narrows it. With
/// none given it is every notice (`requeue --all`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoticeSelection {
    pub run_id: Option<i64>,
    /// The run's `as_of` (the notice's `as_of` column), inclusive.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// `sms` or `email`.
    pub channel: Option<Channel>,
    /// `notification_id`s; empty: any.
    pub notice_ids: Vec<i64>,
}

/// Selected notices with the same channel, status, run status and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedNotices {
    pub channel: Channel,
    pub status: NoticeStatus,
    /// The status of the run that queued them.
    pub run_status: RunStatus,
    /// Text or recipient cleared by `autosign purge` (retention).
    pub purged: bool,
    pub count: i64,
}

impl SelectedNotices {
    /// Whether [`Db::requeue_notices`] queues these again.
    pub fn requeueable(&self) -> bool {
        matches!(self.status, NoticeStatus::Dead | NoticeStatus::Failed)
            && self.run_status == RunStatus::Completed
            && !self.purged
    }
}

/// One notice of an explicit selection (`--notice ID`), to say why it
/// cannot be requeued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedNotice {
    pub notification_id: i64,
    pub permit_no: String,
    pub group: SelectedNotices,
}

/// What a requeue did: its id and the notices queued again, by channel
/// and the status they had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeueDone {
    pub requeue_id: i64,
    /// (channel, previous status, count).
    pub requeued: Vec<(Channel, NoticeStatus, i64)>,
}

/// One row of the `notice_requeues` trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeueRecord {
    pub requeue_id: i64,
    pub notification_id: i64,
    pub requeued_at: String,
    pub os_user: String,
    pub reason: String,
    pub previous_status: NoticeStatus,
    pub previous_attempts: i64,
    pub previous_error: Option<String>,
}

/// Who asked, when and why: the trail's fixed columns.
#[derive(Debug, Clone)]
pub struct RequeueBy<'a> {
    pub now: &'a str,
    pub os_user: &'a str,
    pub reason: &'a str,
}

/// The notices that can be queued again (module doc). `n`: notifications,
/// `r`: their run.
const REQUEUEABLE: &str = "(n.status = 'dead' OR n.status = 'failed') AND r.status = 'completed' \
     AND n.message <> '' AND n.recipient <> ''";

const FROM: &str = " FROM notifications n JOIN runs r ON r.run_id = n.run_id WHERE ";

/// [`FROM`] for a selection by date: the notices found through their
/// nights' events (`e`), as a notice takes its run's as_of; the notices
/// have no index by date of their own (migration 14).
const FROM_BY_DATE: &str = concat!(
    " FROM events e JOIN notifications n ON ",
    notice_of_event!(),
    " JOIN runs r ON r.run_id = n.run_id WHERE "
);

/// The notices and their runs for `sel`, up to its condition.
fn from(sel: &NoticeSelection) -> &'static str {
    match sel.from.is_some() || sel.to.is_some() {
        true => FROM_BY_DATE,
        false => FROM,
    }
}

/// A value bound to a placeholder of an assembled statement.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Date(NaiveDate),
    Text(String),
}

/// The selection as a condition on `n` (and, by date, on its event `e`:
/// [`from`]), its placeholders numbered from `$first`, and their values
/// in order.
fn condition(sel: &NoticeSelection, first: usize) -> (String, Vec<Arg>) {
    let mut parts: Vec<String> = Vec::new();
    let mut args = Vec::new();
    let next = |arg: Arg, args: &mut Vec<Arg>| {
        args.push(arg);
        format!("${}", first + args.len() - 1)
    };
    if let Some(id) = sel.run_id {
        let p = next(Arg::Int(id), &mut args);
        parts.push(format!("n.run_id = {p}"));
    }
    if let Some(d) = sel.from {
        let p = next(Arg::Date(d), &mut args);
        parts.push(format!("e.as_of >= {p}"));
    }
    if let Some(d) = sel.to {
        let p = next(Arg::Date(d), &mut args);
        parts.push(format!("e.as_of <= {p}"));
    }
    if let Some(c) = sel.channel {
        let p = next(Arg::Text(c.code().to_string()), &mut args);
        parts.push(format!("n.channel = {p}"));
    }
    if !sel.notice_ids.is_empty() {
        let list: Vec<String> = sel
            .notice_ids
            .iter()
            .map(|id| next(Arg::Int(*id), &mut args))
            .collect();
        parts.push(format!("n.notification_id IN ({})", list.join(", ")));
    }
    if parts.is_empty() {
        parts.push("1 = 1".into());
    }
    (parts.join(" AND "), args)
}

/// Binds `args` in order, on either backend.
fn bind_all<'q, DB: sqlx::Database>(
    mut q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    args: &[Arg],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> NaiveDate: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(*v),
            Arg::Date(d) => q.bind(*d),
            Arg::Text(t) => q.bind(t.clone()),
        };
    }
    q
}

/// A statement assembled from this module's constant fragments (values
/// are bound, never spliced in).
fn assembled(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

fn group_sql(from: &str, where_: &str) -> String {
    format!(
        "SELECT n.channel, n.status, r.status, \
                CAST(CASE WHEN n.message = '' OR n.recipient = '' THEN 1 ELSE 0 END AS BIGINT), \
                count(*){from}{where_} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )
}

fn notices_sql(from: &str, where_: &str) -> String {
    format!(
        "SELECT n.notification_id, n.permit_no, n.channel, n.status, r.status, \
                CAST(CASE WHEN n.message = '' OR n.recipient = '' THEN 1 ELSE 0 END AS BIGINT) \
         {from}{where_} ORDER BY n.notification_id"
    )
}

/// The trail's rows for one requeue: `$1` requeue id, `$2` now, `$3` OS
/// user, `$4` reason, the selection from `$5`.
fn trail_sql(from: &str, where_: &str, lock: &str) -> String {
    format!(
        "INSERT INTO notice_requeues (requeue_id, notification_id, requeued_at, os_user, reason, \
                previous_status, previous_attempts, previous_error) \
         SELECT $1, n.notification_id, $2, $3, $4, n.status, n.attempts, n.last_error\
         {from}{REQUEUEABLE} AND {where_}{lock}"
    )
}

/// Binds: requeue id, now.
const REQUEUE: &str =
    "UPDATE notifications SET status = 'queued', attempts = 0, next_attempt_at = $2 \
     WHERE notification_id IN (SELECT notification_id FROM notice_requeues WHERE requeue_id = $1)";

const NEXT_ID: &str = "SELECT coalesce(max(requeue_id), 0) + 1 FROM notice_requeues";

/// Binds: requeue id.
const DONE: &str = "SELECT n.channel, q.previous_status, count(*) FROM notice_requeues q \
     JOIN notifications n ON n.notification_id = q.notification_id \
     WHERE q.requeue_id = $1 GROUP BY 1, 2 ORDER BY 1, 2";

/// Binds: permit_no.
const TRAIL_OF_PERMIT: &str = "SELECT q.requeue_id, q.notification_id, q.requeued_at, q.os_user, \
            q.reason, q.previous_status, q.previous_attempts, q.previous_error \
     FROM notice_requeues q JOIN notifications n ON n.notification_id = q.notification_id \
     WHERE n.permit_no = $1 ORDER BY q.requeue_id, q.notification_id";

fn groups<R: Row>(rows: &[R]) -> Result<Vec<SelectedNotices>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(SelectedNotices {
                channel: r.try_get(0)?,
                status: r.try_get(1)?,
                run_status: r.try_get(2)?,
                purged: r.try_get::<i64, _>(3)? != 0,
                count: r.try_get(4)?,
            })
        })
        .collect()
}

fn notices<R: Row>(rows: &[R]) -> Result<Vec<SelectedNotice>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(SelectedNotice {
                notification_id: r.try_get(0)?,
                permit_no: r.try_get(1)?,
                group: SelectedNotices {
                    channel: r.try_get(2)?,
                    status: r.try_get(3)?,
                    run_status: r.try_get(4)?,
                    purged: r.try_get::<i64, _>(5)? != 0,
                    count: 1,
                },
            })
        })
        .collect()
}

fn done<R: Row>(requeue_id: i64, rows: &[R]) -> Result<RequeueDone>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RequeueDone {
        requeue_id,
        requeued: rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_>>()?,
    })
}

fn records<R: Row>(rows: &[R]) -> Result<Vec<RequeueRecord>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(RequeueRecord {
                requeue_id: r.try_get(0)?,
                notification_id: r.try_get(1)?,
                requeued_at: r.try_get(2)?,
                os_user: r.try_get(3)?,
                reason: r.try_get(4)?,
                previous_status: r.try_get(5)?,
                previous_attempts: r.try_get(6)?,
                previous_error: r.try_get(7)?,
            })
        })
        .collect()
}

impl Db {
    /// The selected notices, counted by channel, status, run status and
    /// whether their text was purged.
    pub async fn select_notices(&self, sel: &NoticeSelection) -> Result<Vec<SelectedNotices>> {
        let (where_, args) = condition(sel, 1);
        let sql = group_sql(from(sel), &where_);
        on_pool!(self, |pool| {
            let q = bind_all(sqlx::query(assembled(sql)), &args);
            groups(&q.fetch_all(pool).await?)
        })
    }

    /// The selected notices one by one, by id (for a selection by id).
    pub async fn selected_notices(&self, sel: &NoticeSelection) -> Result<Vec<SelectedNotice>> {
        let (where_, args) = condition(sel, 1);
        let sql = notices_sql(from(sel), &where_);
        on_pool!(self, |pool| {
            let q = bind_all(sqlx::query(assembled(sql)), &args);
            notices(&q.fetch_all(pool).await?)
        })
    }

    /// Queues the requeueable notices of `sel` again, in one transaction:
    /// a trail row for each (its status, attempts and last error before),
    /// then `queued`, no attempt counted, due at `by.now`. The caller
    /// holds the job lock.
    pub async fn requeue_notices(
        &self,
        sel: &NoticeSelection,
        by: &RequeueBy<'_>,
    ) -> Result<RequeueDone> {
        let (where_, args) = condition(sel, 5);
        match self {
            Db::Sqlite(db) => {
                let mut tx = db.pool().begin_with("BEGIN IMMEDIATE").await?;
                let id: i64 = sqlx::query_scalar(NEXT_ID).fetch_one(&mut *tx).await?;
                let trail = sqlx::query(assembled(trail_sql(from(sel), &where_, "")))
                    .bind(id)
                    .bind(by.now)
                    .bind(by.os_user)
                    .bind(by.reason);
                bind_all(trail, &args).execute(&mut *tx).await?;
                sqlx::query(REQUEUE)
                    .bind(id)
                    .bind(by.now)
                    .execute(&mut *tx)
                    .await?;
                let rows = sqlx::query(DONE).bind(id).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                done(id, &rows)
            }
            Db::Postgres(db) => {
                let mut tx = db.pool().begin().await?;
                let id: i64 = sqlx::query_scalar(NEXT_ID).fetch_one(&mut *tx).await?;
                let trail =
                    sqlx::query(assembled(trail_sql(from(sel), &where_, " FOR UPDATE OF n")))
                        .bind(id)
                        .bind(by.now)
                        .bind(by.os_user)
                        .bind(by.reason);
                bind_all(trail, &args).execute(&mut *tx).await?;
                sqlx::query(REQUEUE)
                    .bind(id)
                    .bind(by.now)
                    .execute(&mut *tx)
                    .await?;
                let rows = sqlx::query(DONE).bind(id).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                done(id, &rows)
            }
        }
    }

    /// The requeue trail of a permit's notices, oldest first.
    pub async fn requeues_for(&self, permit_no: &str) -> Result<Vec<RequeueRecord>> {
        on_pool!(self, |pool| records(
            &sqlx::query(TRAIL_OF_PERMIT)
                .bind(permit_no)
                .fetch_all(pool)
                .await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selection_narrows_with_each_field_and_numbers_its_placeholders() {
        let (w, args) = condition(&NoticeSelection::default(), 1);
        assert_eq!(w, "1 = 1");
        assert!(args.is_empty());
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
        let sel = NoticeSelection {
            run_id: Some(3),
            from: Some(d("2026-11-01")),
            to: Some(d("2026-11-30")),
            channel: Some(Channel::Sms),
            notice_ids: vec![7, 9],
        };
        let (w, args) = condition(&sel, 5);
        // By date, through the notices' events.
        assert_eq!(from(&sel), FROM_BY_DATE);
        assert!(FROM_BY_DATE.contains(" FROM events e JOIN notifications n ON "));
        assert_eq!(from(&NoticeSelection::default()), FROM);
        assert_eq!(
            w,
            "n.run_id = $5 AND e.as_of >= $6 AND e.as_of <= $7 AND n.channel = $8 \
             AND n.notification_id IN ($9, $10)"
        );
        assert_eq!(args.len(), 6);
    }

    #[test]
    fn only_dead_or_failed_notices_of_completed_runs_with_their_text_are_requeueable() {
        let g = |status, run_status, purged| SelectedNotices {
            channel: Channel::Sms,
            status,
            run_status,
            purged,
            count: 1,
        };
        assert!(g(NoticeStatus::Dead, RunStatus::Completed, false).requeueable());
        assert!(g(NoticeStatus::Failed, RunStatus::Completed, false).requeueable());
        for no in [
            g(NoticeStatus::Sent, RunStatus::Completed, false),
            g(NoticeStatus::Queued, RunStatus::Completed, false),
            g(NoticeStatus::Withdrawn, RunStatus::Reverted, false),
            g(NoticeStatus::Undeliverable, RunStatus::Completed, false),
            g(NoticeStatus::Dead, RunStatus::Reverted, false),
            g(NoticeStatus::Dead, RunStatus::Completed, true),
        ] {
            assert!(!no.requeueable(), "{no:?}");
        }
    }
}
