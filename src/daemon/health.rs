//! The daemon's HTTP endpoint: `/healthz` (the process answers), `/readyz`
//! (database reachable, migrations applied, last run not overdue) and
//! `/metrics` (Prometheus text format 0.0.4). Small on purpose: three GET
//! routes on axum, plain-text bodies, figures read from the run ledger at
//! scrape time plus the counters this process keeps.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::clock::Clock;
use crate::db::metrics::DbMetrics;
use crate::db::{Db, RunRecord};
use crate::domain::{Channel, EventKind, NoticeStatus, RunStatus};
use crate::feeds::Feed;
use crate::settings::Settings;

/// Upper bounds of the run-duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// How the daemon's own runs ended, as `autosign_daemon_runs_total`
/// counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunResult {
    Completed,
    /// Completed before (C8), e.g. by a manual `autosign run`.
    AlreadyCompleted,
    /// Failed (inbox file refused, database error…); retried at the next
    /// tick.
    Failed,
    /// Abandoned at shutdown; resumed at the next start.
    Interrupted,
    /// Catch-up refused: more than `max_catch_up_days` dates due.
    Refused,
    /// Held by the safety brake, or not started because a run is held
    /// (docs/rules.md, "Safety brake"): an operator releases or discards it.
    Held,
}

impl RunResult {
    pub const ALL: [RunResult; 6] = [
        RunResult::Completed,
        RunResult::AlreadyCompleted,
        RunResult::Failed,
        RunResult::Interrupted,
        RunResult::Refused,
        RunResult::Held,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RunResult::Completed => "completed",
            RunResult::AlreadyCompleted => "already_completed",
            RunResult::Failed => "failed",
            RunResult::Interrupted => "interrupted",
            RunResult::Refused => "refused",
            RunResult::Held => "held",
        }
    }
}

/// Counters kept by this process (reset when it restarts, as Prometheus
/// counters may be).
#[derive(Debug)]
pub struct Metrics {
    started_at: DateTime<Utc>,
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    runs: BTreeMap<RunResult, u64>,
    ticks: u64,
    ticks_skipped: u64,
    /// Nightly reports written after a run, and those that failed (a
    /// failure is logged and never fails the run).
    reports_written: u64,
    reports_failed: u64,
    busy: bool,
    /// Cumulative histogram counts, one per bucket of DURATION_BUCKETS.
    buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    /// Scheduled purges (`[retention] schedule`) by outcome, and when the
    /// last one completed.
    purges_completed: u64,
    purges_failed: u64,
    last_purge: Option<DateTime<Utc>>,
}

impl Metrics {
    /// Counters of a process that started at `started_at` (by the daemon's
    /// clock).
    pub fn new(started_at: DateTime<Utc>) -> Self {
        Metrics {
            started_at,
            inner: Mutex::new(Counters::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        // A panic while holding the lock cannot leave counters inconsistent
        // in a way that matters: keep counting.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn record(&self, result: RunResult, duration: Option<Duration>) {
        self.with(|c| {
            *c.runs.entry(result).or_default() += 1;
            if let Some(d) = duration {
                let secs = d.as_secs_f64();
                for (i, le) in DURATION_BUCKETS.iter().enumerate() {
                    if secs <= *le {
                        c.buckets[i] += 1;
                    }
                }
                c.duration_sum += secs;
                c.duration_count += 1;
            }
        });
    }

    /// A scheduled purge completed at `at` (by the daemon's clock).
    pub fn purge_completed(&self, at: DateTime<Utc>) {
        self.with(|c| {
            c.purges_completed += 1;
            c.last_purge = Some(at);
        });
    }

    /// A scheduled purge failed.
    pub fn purge_failed(&self) {
        self.with(|c| c.purges_failed += 1);
    }

    pub fn tick(&self) {
        self.with(|c| c.ticks += 1);
    }

    pub fn tick_skipped(&self) {
        self.with(|c| c.ticks_skipped += 1);
    }

    /// The report after a run was written (`ok`) or not.
    pub fn report_written(&self, ok: bool) {
        self.with(|c| {
            if ok {
                c.reports_written += 1;
            } else {
                c.reports_failed += 1;
            }
        });
    }

    pub fn set_busy(&self, busy: bool) {
        self.with(|c| c.busy = busy);
    }

    pub fn is_busy(&self) -> bool {
        self.with(|c| c.busy)
    }
}

/// What the handlers share.
pub struct HealthState {
    pub db: Db,
    pub tz: Tz,
    pub clock: Clock,
    pub ready_max_lag_days: u32,
    pub metrics: Arc<Metrics>,
    /// What `autosign_feed_max_age_seconds` shows: [`feed_max_age_days`].
    pub feed_max_age_days: Vec<(&'static str, u32)>,
}

/// The safety brake's freshness limit of each feed, in days, by the name
/// the `imports` table stores (0: not checked, also when the brake is
/// off). Exported beside each feed's newest import so that an alert can
/// warn before a stale feed holds the night's run.
pub fn feed_max_age_days(settings: &Settings) -> Vec<(&'static str, u32)> {
    let b = &settings.brake;
    Feed::ALL
        .iter()
        .map(|f| {
            let days = if b.enabled {
                b.max_age_days.for_feed(f.name())
            } else {
                0
            };
            (f.name(), days)
        })
        .collect()
}

/// Serves until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<HealthState>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "health endpoint stopped");
    }
}

type Reply = (StatusCode, [(header::HeaderName, &'static str); 1], String);

fn text(status: StatusCode, body: String) -> Reply {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

async fn healthz() -> Reply {
    text(StatusCode::OK, "ok\n".to_string())
}

/// A database call that must not hang a probe.
async fn quick<T>(f: impl std::future::Future<Output = crate::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".to_string()),
    }
}

async fn readyz(State(s): State<Arc<HealthState>>) -> Reply {
    let today = s.clock.today();
    let mut lines = Vec::new();
    let mut ready = true;
    match quick(s.db.ping()).await {
        Ok(()) => lines.push("database: ok".to_string()),
        Err(e) => {
            ready = false;
            lines.push(format!("database: FAIL ({e})"));
        }
    }
    match quick(s.db.migration_state()).await {
        Ok(m) if m.is_current() => lines.push(format!("migrations: ok (version {})", m.applied)),
        Ok(m) => {
            ready = false;
            lines.push(format!(
                "migrations: FAIL (database at version {}, this binary expects {})",
                m.applied, m.latest
            ));
        }
        Err(e) => {
            ready = false;
            lines.push(format!("migrations: FAIL ({e})"));
        }
    }
    match quick(s.db.held_run()).await {
        Ok(Some(held)) => {
            ready = false;
            lines.push(format!(
                "brake: FAIL ({})",
                crate::brake::held_refusal(&held)
            ));
        }
        Ok(None) => lines.push("brake: ok (no run held)".to_string()),
        Err(e) => {
            ready = false;
            lines.push(format!("brake: FAIL ({e})"));
        }
    }
    match quick(s.db.latest_completed_run()).await {
        Ok(Some(r)) => {
            let lag = (today - r.as_of).num_days();
            let line = format!(
                "last run: as_of {} (run {}, finished {}), {lag} day(s) before today {today}",
                r.as_of,
                r.run_id,
                r.finished_at.as_deref().unwrap_or("?")
            );
            if lag > i64::from(s.ready_max_lag_days) {
                ready = false;
                lines.push(format!(
                    "{line}: FAIL (overdue: more than daemon.ready_max_lag_days = {})",
                    s.ready_max_lag_days
                ));
            } else {
                lines.push(format!("{line}: ok"));
            }
        }
        Ok(None) => {
            ready = false;
            lines.push("last run: FAIL (no completed run yet)".to_string());
        }
        Err(e) => {
            ready = false;
            lines.push(format!("last run: FAIL ({e})"));
        }
    }
    let (status, head) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    text(status, format!("{head}\n{}\n", lines.join("\n")))
}

async fn metrics(State(s): State<Arc<HealthState>>) -> Reply {
    let last = quick(s.db.latest_completed_run()).await;
    let db = match &last {
        Ok(last) => quick(s.db.metrics(last.as_ref().map(|r| r.as_of)))
            .await
            .map_err(|e| tracing::warn!(error = %e, "metrics: database query failed"))
            .ok(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database unreachable");
            None
        }
    };
    let last = last.ok().flatten();
    let body = render(
        &s.metrics,
        s.tz,
        &s.feed_max_age_days,
        last.as_ref(),
        db.as_ref(),
    );
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// A label value, escaped as the text format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn unix(t: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.timestamp())
}

fn midnight(d: NaiveDate, tz: Tz) -> Option<i64> {
    d.and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(tz).earliest())
        .map(|t| t.timestamp())
}

/// The whole `/metrics` page. `db` is `None` when the database did not
/// answer (`autosign_database_up 0`; the process counters still show).
/// `feed_max_age_days` comes from [`feed_max_age_days`].
pub fn render(
    m: &Metrics,
    tz: Tz,
    feed_max_age_days: &[(&str, u32)],
    last: Option<&RunRecord>,
    db: Option<&DbMetrics>,
) -> String {
    let mut o = String::new();
    let c = m.with(|c| {
        (
            c.runs.clone(),
            c.ticks,
            c.ticks_skipped,
            c.busy,
            c.buckets,
            c.duration_sum,
            c.duration_count,
        )
    });
    let (runs, ticks, skipped, busy, buckets, sum, count) = c;

    head(
        &mut o,
        "autosign_daemon_start_time_seconds",
        "gauge",
        "When this daemon process started (Unix time).",
    );
    let _ = writeln!(
        o,
        "autosign_daemon_start_time_seconds {}",
        m.started_at.timestamp()
    );
    head(&mut o, "autosign_daemon_runs_total", "counter", "Nightly runs attempted by this process, by outcome (refused: catch-up over max_catch_up_days).");
    for r in RunResult::ALL {
        let n = runs.get(&r).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "autosign_daemon_runs_total{{outcome=\"{}\"}} {n}",
            r.label()
        );
    }
    head(
        &mut o,
        "autosign_daemon_ticks_total",
        "counter",
        "Scheduler ticks received.",
    );
    let _ = writeln!(o, "autosign_daemon_ticks_total {ticks}");
    head(
        &mut o,
        "autosign_daemon_ticks_skipped_total",
        "counter",
        "Ticks dropped because a run was in progress.",
    );
    let _ = writeln!(o, "autosign_daemon_ticks_skipped_total {skipped}");
    let (reports, reports_failed) = m.with(|c| (c.reports_written, c.reports_failed));
    head(
        &mut o,
        "autosign_daemon_reports_total",
        "counter",
        "Nightly reports written after a run, by outcome (failed: logged, the run unaffected).",
    );
    let _ = writeln!(
        o,
        "autosign_daemon_reports_total{{outcome=\"written\"}} {reports}"
    );
    let _ = writeln!(
        o,
        "autosign_daemon_reports_total{{outcome=\"failed\"}} {reports_failed}"
    );
    head(
        &mut o,
        "autosign_daemon_run_in_progress",
        "gauge",
        "1 while this process is running a nightly run.",
    );
    let _ = writeln!(o, "autosign_daemon_run_in_progress {}", u8::from(busy));
    head(
        &mut o,
        "autosign_run_duration_seconds",
        "histogram",
        "Duration of the nightly runs this process completed.",
    );
    for (le, n) in DURATION_BUCKETS.iter().zip(buckets) {
        let _ = writeln!(o, "autosign_run_duration_seconds_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "autosign_run_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(o, "autosign_run_duration_seconds_sum {sum}");
    let _ = writeln!(o, "autosign_run_duration_seconds_count {count}");
    let (purged, purge_failed, last_purge) =
        m.with(|c| (c.purges_completed, c.purges_failed, c.last_purge));
    head(
        &mut o,
        "autosign_daemon_purges_total",
        "counter",
        "Scheduled purges (retention.schedule) run by this process, by outcome.",
    );
    let _ = writeln!(
        o,
        "autosign_daemon_purges_total{{outcome=\"completed\"}} {purged}"
    );
    let _ = writeln!(
        o,
        "autosign_daemon_purges_total{{outcome=\"failed\"}} {purge_failed}"
    );
    if let Some(t) = last_purge {
        head(
            &mut o,
            "autosign_last_purge_timestamp_seconds",
            "gauge",
            "When this process's last scheduled purge completed (Unix time).",
        );
        let _ = writeln!(o, "autosign_last_purge_timestamp_seconds {}", t.timestamp());
    }

    head(
        &mut o,
        "autosign_database_up",
        "gauge",
        "1 when the database answered this scrape.",
    );
    let _ = writeln!(o, "autosign_database_up {}", u8::from(db.is_some()));
    head(&mut o, "autosign_feed_max_age_seconds", "gauge", "The safety brake's freshness limit of each feed (brake.max_age_days): a run that starts when the feed's newest import is older is held (0: not checked).");
    for (feed, days) in feed_max_age_days {
        let _ = writeln!(
            o,
            "autosign_feed_max_age_seconds{{feed=\"{}\"}} {}",
            esc(feed),
            u64::from(*days) * 86_400
        );
    }
    let Some(db) = db else {
        return o;
    };

    head(&mut o, "autosign_runs", "gauge", "Runs in the ledger, by status (running: in progress or interrupted, resumed at the next run; held: stopped by the safety brake until released or discarded).");
    for status in [
        RunStatus::Completed,
        RunStatus::Running,
        RunStatus::Held,
        RunStatus::Discarded,
        RunStatus::Reverted,
    ] {
        let n: i64 = db
            .runs
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| n)
            .sum();
        let _ = writeln!(o, "autosign_runs{{status=\"{}\"}} {n}", status.code());
    }
    if let Some(r) = last {
        head(
            &mut o,
            "autosign_last_successful_run_timestamp_seconds",
            "gauge",
            "When the last completed run finished (Unix time).",
        );
        if let Some(t) = r.finished_at.as_deref().and_then(unix) {
            let _ = writeln!(o, "autosign_last_successful_run_timestamp_seconds {t}");
        }
        head(&mut o, "autosign_last_successful_run_as_of_timestamp_seconds", "gauge", "The business date (as_of) of the last completed run: its midnight in the configured zone (Unix time).");
        if let Some(t) = midnight(r.as_of, tz) {
            let _ = writeln!(
                o,
                "autosign_last_successful_run_as_of_timestamp_seconds {t}"
            );
        }
        head(
            &mut o,
            "autosign_last_successful_run_info",
            "gauge",
            "The last completed run: its as_of and run id as labels.",
        );
        let _ = writeln!(
            o,
            "autosign_last_successful_run_info{{as_of=\"{}\",run_id=\"{}\"}} 1",
            r.as_of, r.run_id
        );
        head(
            &mut o,
            "autosign_last_successful_run_duration_seconds",
            "gauge",
            "Duration of the last completed run's last attempt, as the process that ran it measured it.",
        );
        // Measured with a monotonic clock and kept with the run; a run
        // recorded before that has only its whole-second timestamps.
        let measured = r.duration_secs.or_else(|| {
            let (a, b) = (unix(&r.started_at)?, unix(r.finished_at.as_deref()?)?);
            Some((b - a).max(0) as f64)
        });
        if let Some(secs) = measured {
            let _ = writeln!(o, "autosign_last_successful_run_duration_seconds {secs}");
        }
        head(&mut o, "autosign_last_run_pending", "gauge", "Due permits left PENDING by the last completed run (evidence missing, deadline not reached).");
        let _ = writeln!(o, "autosign_last_run_pending {}", r.pending);
    }

    // Decisions of the last completed run by kind, and by kind and reason.
    // Keyed by the codes, not the kind's R8 order or the reason's R5 rank:
    // the samples are listed in the order of their label text.
    let mut kinds: BTreeMap<&str, i64> =
        EventKind::ALL.into_iter().map(|k| (k.code(), 0)).collect();
    let mut reasons: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for e in &db.last_run_events {
        *kinds.entry(e.kind.code()).or_default() += e.count;
        for reason in e.reasons.iter() {
            *reasons.entry((e.kind.code(), reason.code())).or_default() += e.count;
        }
    }
    head(
        &mut o,
        "autosign_last_run_decisions",
        "gauge",
        "Decisions and lifecycle changes of the last completed run's as_of, by kind.",
    );
    for (k, n) in &kinds {
        let _ = writeln!(o, "autosign_last_run_decisions{{kind=\"{}\"}} {n}", esc(k));
    }
    head(&mut o, "autosign_last_run_decision_reasons", "gauge", "Decisions of the last completed run's as_of, by kind and reason (a decision with two reasons counts under each).");
    for ((k, r), n) in &reasons {
        let _ = writeln!(
            o,
            "autosign_last_run_decision_reasons{{kind=\"{}\",reason=\"{}\"}} {n}",
            esc(k),
            esc(r)
        );
    }
    head(&mut o, "autosign_last_run_notices", "gauge", "Notices queued by the last completed run's as_of, by current status and channel (channel none: undeliverable).");
    for n in &db.last_run_notices {
        let _ = writeln!(
            o,
            "autosign_last_run_notices{{status=\"{}\",channel=\"{}\"}} {}",
            esc(&n.a),
            esc(&n.b),
            n.count
        );
    }
    head(
        &mut o,
        "autosign_notices_backlog",
        "gauge",
        "Notices not delivered, all runs: queued, failed (retry scheduled) and dead, by channel.",
    );
    for status in [
        NoticeStatus::Queued,
        NoticeStatus::Failed,
        NoticeStatus::Dead,
    ] {
        for channel in [Channel::Sms, Channel::Email] {
            let n: i64 = db
                .backlog
                .iter()
                .filter(|b| b.status == status && b.channel == channel)
                .map(|b| b.count)
                .sum();
            let _ = writeln!(
                o,
                "autosign_notices_backlog{{status=\"{status}\",channel=\"{channel}\"}} {n}"
            );
        }
    }
    head(&mut o, "autosign_notices_backlog_oldest_created_timestamp_seconds", "gauge", "When the oldest notice still to be sent was queued (Unix time), by status (queued, failed: retry scheduled) and channel; no sample when there is none.");
    for b in &db.backlog {
        if b.status == NoticeStatus::Dead {
            continue;
        }
        if let Some(t) = unix(&b.oldest_created_at) {
            let _ = writeln!(
                o,
                "autosign_notices_backlog_oldest_created_timestamp_seconds{{status=\"{}\",channel=\"{}\"}} {t}",
                esc(b.status.code()),
                esc(b.channel.code())
            );
        }
    }
    head(
        &mut o,
        "autosign_feed_last_import_timestamp_seconds",
        "gauge",
        "When each feed's newest file was imported (Unix time).",
    );
    for f in &db.imports {
        if let Some(t) = unix(&f.last_imported_at) {
            let _ = writeln!(
                o,
                "autosign_feed_last_import_timestamp_seconds{{feed=\"{}\"}} {t}",
                esc(&f.feed)
            );
        }
    }
    head(
        &mut o,
        "autosign_import_files_total",
        "counter",
        "Feed files imported, by feed.",
    );
    for f in &db.imports {
        let _ = writeln!(
            o,
            "autosign_import_files_total{{feed=\"{}\"}} {}",
            esc(&f.feed),
            f.files
        );
    }
    head(&mut o, "autosign_import_rows_total", "counter", "Rows of imported feed files, by feed and result (accepted: imported; rejected: written to the rejects file). Refused files are not counted.");
    for f in &db.imports {
        let feed = esc(&f.feed);
        let _ = writeln!(
            o,
            "autosign_import_rows_total{{feed=\"{feed}\",result=\"accepted\"}} {}",
            f.rows_imported
        );
        let _ = writeln!(
            o,
            "autosign_import_rows_total{{feed=\"{feed}\",result=\"rejected\"}} {}",
            f.rows_rejected
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::metrics::{BacklogGroup, EventCount, FeedImports, LabelledCount};
    use crate::domain::{Reason, Reasons};

    /// When the process of these tests started (Unix time 1795700000).
    fn started() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_700_000, 0).expect("instant")
    }

    fn lc(a: &str, b: &str, count: i64) -> LabelledCount {
        LabelledCount {
            a: a.into(),
            b: b.into(),
            count,
        }
    }

    fn ec(kind: EventKind, reasons: &[Reason], count: i64) -> EventCount {
        EventCount {
            kind,
            reasons: Reasons::of(reasons),
            count,
        }
    }

    #[test]
    fn metrics_page_has_runs_decisions_notices_and_imports() {
        let m = Metrics::new(started());
        m.record(RunResult::Completed, Some(Duration::from_secs(3)));
        m.record(RunResult::Failed, None);
        let last = RunRecord {
            run_id: 4,
            as_of: NaiveDate::from_ymd_opt(2026, 11, 27).expect("date"),
            status: RunStatus::Completed,
            attempts: 1,
            started_at: "2026-11-27T02:00:00+08:00".into(),
            finished_at: Some("2026-11-27T02:00:03+08:00".into()),
            pending: 2,
            brake: None,
            import_mark: None,
            // Measured: not the timestamps' whole three seconds.
            duration_secs: Some(2.75),
        };
        let db = DbMetrics {
            runs: vec![(RunStatus::Completed, 4)],
            last_run_events: vec![
                ec(EventKind::AutoSigned, &[], 10),
                ec(
                    EventKind::VisitCenter,
                    &[Reason::AddressChanged, Reason::EmployerChanged],
                    2,
                ),
                ec(EventKind::VisitCenter, &[Reason::AddressChanged], 1),
            ],
            last_run_notices: vec![lc("queued", "sms", 12), lc("undeliverable", "none", 1)],
            backlog: vec![
                BacklogGroup {
                    status: NoticeStatus::Dead,
                    channel: Channel::Email,
                    count: 1,
                    oldest_created_at: "2026-11-20T02:00:00+08:00".into(),
                },
                BacklogGroup {
                    status: NoticeStatus::Queued,
                    channel: Channel::Sms,
                    count: 12,
                    oldest_created_at: "2026-11-27T02:00:01+08:00".into(),
                },
            ],
            imports: vec![FeedImports {
                feed: "permits".into(),
                files: 2,
                rows_read: 110,
                rows_imported: 100,
                rows_rejected: 10,
                last_imported_at: "2026-11-26T18:30:00+08:00".into(),
            }],
        };
        let limits = [("permits", 7), ("civil-status", 0)];
        let page = render(
            &m,
            chrono_tz::Asia::Shanghai,
            &limits,
            Some(&last),
            Some(&db),
        );
        for line in [
            "autosign_daemon_runs_total{outcome=\"completed\"} 1",
            "autosign_daemon_runs_total{outcome=\"failed\"} 1",
            "autosign_run_duration_seconds_bucket{le=\"1\"} 0",
            "autosign_run_duration_seconds_bucket{le=\"5\"} 1",
            "autosign_run_duration_seconds_count 1",
            "autosign_database_up 1",
            "autosign_runs{status=\"completed\"} 4",
            "autosign_last_successful_run_info{as_of=\"2026-11-27\",run_id=\"4\"} 1",
            // 2026-11-27T00:00:00+08:00
            "autosign_last_successful_run_as_of_timestamp_seconds 1795708800",
            "autosign_last_successful_run_duration_seconds 2.75",
            "autosign_daemon_start_time_seconds 1795700000",
            "autosign_last_run_pending 2",
            "autosign_last_run_decisions{kind=\"AUTO_SIGNED\"} 10",
            "autosign_last_run_decisions{kind=\"VISIT_CENTER\"} 3",
            "autosign_last_run_decisions{kind=\"CANCELLED\"} 0",
            "autosign_last_run_decision_reasons{kind=\"VISIT_CENTER\",reason=\"ADDRESS_CHANGED\"} 3",
            "autosign_last_run_decision_reasons{kind=\"VISIT_CENTER\",reason=\"EMPLOYER_CHANGED\"} 2",
            "autosign_last_run_notices{status=\"undeliverable\",channel=\"none\"} 1",
            "autosign_notices_backlog{status=\"queued\",channel=\"sms\"} 12",
            "autosign_notices_backlog{status=\"dead\",channel=\"email\"} 1",
            "autosign_notices_backlog{status=\"dead\",channel=\"sms\"} 0",
            "autosign_runs{status=\"held\"} 0",
            // 2026-11-27T02:00:01+08:00
            "autosign_notices_backlog_oldest_created_timestamp_seconds{status=\"queued\",channel=\"sms\"} 1795716001",
            // 2026-11-26T18:30:00+08:00
            "autosign_feed_last_import_timestamp_seconds{feed=\"permits\"} 1795689000",
            "autosign_feed_max_age_seconds{feed=\"permits\"} 604800",
            "autosign_feed_max_age_seconds{feed=\"civil-status\"} 0",
            "autosign_import_rows_total{feed=\"permits\",result=\"rejected\"} 10",
        ] {
            assert!(page.lines().any(|l| l == line), "missing {line}:\n{page}");
        }
        // A dead notice is no longer waiting: its age is not the backlog's.
        assert!(
            !page.contains(
                "autosign_notices_backlog_oldest_created_timestamp_seconds{status=\"dead\""
            ),
            "{page}"
        );
        // Every sample belongs to a declared metric family.
        let declared: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for l in page.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            assert!(
                declared.iter().any(|d| name == *d
                    || name
                        .strip_prefix(d)
                        .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                "undeclared {name}"
            );
        }
        // A run recorded before durations were measured: its timestamps.
        let older = RunRecord {
            duration_secs: None,
            ..last
        };
        let page = render(
            &m,
            chrono_tz::Asia::Shanghai,
            &limits,
            Some(&older),
            Some(&db),
        );
        assert!(
            page.lines()
                .any(|l| l == "autosign_last_successful_run_duration_seconds 3"),
            "{page}"
        );
    }

    #[test]
    fn without_a_database_the_process_counters_still_show() {
        let page = render(
            &Metrics::new(started()),
            chrono_tz::Asia::Shanghai,
            &[("residence", 7)],
            None,
            None,
        );
        assert!(page.contains("autosign_database_up 0"), "{page}");
        assert!(page.contains("autosign_daemon_ticks_total 0"), "{page}");
        assert!(!page.contains("autosign_runs{"), "{page}");
        // The configured limits are no database figure.
        assert!(
            page.contains("autosign_feed_max_age_seconds{feed=\"residence\"} 604800"),
            "{page}"
        );
    }
}
