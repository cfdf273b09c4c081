//! `autosign daemon`: the nightly run on a schedule, catch-up after
//! downtime, the delivery worker beside it, graceful shutdown, and a small
//! health and metrics endpoint (docs/deployment.md).
//!
//! The pieces, and who owns what:
//! - tokio-cron-scheduler is the alarm clock. Its job is a few lines that
//!   send a tick to the runner; a tick that arrives while a run is going is
//!   dropped with a log line (never two runs at once).
//! - The runner (on the daemon's main task) decides what to run from the
//!   run ledger and the schedule ([`crate::schedule::plan`]): every date after the
//!   last completed run up to the date due, oldest first, one at a time,
//!   each through [`reconcile::run`] — the same function as `autosign run`,
//!   idempotent, holding the job lock. It does this at start-up and at
//!   every tick, and checks again after each run, so a tick dropped while
//!   it was busy loses nothing.
//! - The delivery worker ([`crate::outbox::run_worker`]) sends queued
//!   notices continuously on a task of its own.
//! - SIGTERM or SIGINT: no new run or send starts; the run and sends in
//!   flight get `daemon.shutdown_grace_secs` to finish, then are dropped (a
//!   dropped run's transaction rolls back; on PostgreSQL its committed
//!   pages stay and the next start resumes it) and the daemon exits 0. A
//!   second signal exits at once (status 1). Either way the database is
//!   consistent and the next start redoes what is left.

mod health;
mod purge;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate};
use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{Job, JobScheduler};

pub use crate::schedule::{plan, Plan, Schedule};
pub use health::{Metrics, RunResult};

use crate::clock::Clock;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::outbox::notice::Notices;
use crate::outbox::Channels;
use crate::reconcile::{self, RunOutcome};
use crate::settings::Settings;

/// Options of `autosign daemon` that are not settings.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The daemon's clock: the system clock, or (`--now`, for tests and
    /// rehearsals) one that read a given instant at start-up and advances
    /// in real time. Business dates, the runs (their timestamps, the
    /// brake's feed ages), delivery, readiness, the purge and the metrics'
    /// times follow it; the schedule's ticks still come in real time.
    pub clock: Clock,
    /// Check the configuration and the database, say what a start would
    /// run, and exit ([`check`]).
    pub check: bool,
}

/// A schedule that fires at all may still have no tick after the daemon's
/// now (a seven-field expression with a past year): refused at start-up,
/// naming its key, rather than a daemon that never runs.
fn fires_from(run: &Schedule, purge: Option<&Schedule>, clock: Clock) -> Result<()> {
    let now = clock.now();
    let schedules =
        std::iter::once(("daemon.schedule", run)).chain(purge.map(|s| ("retention.schedule", s)));
    for (key, schedule) in schedules {
        if schedule.next(now).is_none() {
            return Err(Error::Config(format!(
                "configuration key {key}: {:?} has no tick after {}",
                schedule.as_str(),
                clock.now_rfc3339()
            )));
        }
    }
    Ok(())
}

/// `autosign daemon --check`: everything the daemon checks at start-up
/// (configuration, channels, database and migrations) and what it would
/// run now, without binding the health address (a running daemon holds
/// it) or running anything. The report is for stdout.
pub async fn check(settings: &Settings, opts: &DaemonOptions) -> Result<String> {
    use std::fmt::Write as _;
    let tz = settings.tz();
    let d = &settings.daemon;
    let schedule = settings.run_schedule();
    let clock = opts.clock;
    let purge_schedule = settings.purge_schedule();
    fires_from(&schedule, purge_schedule.as_ref(), clock)?;
    Notices::from_settings(settings)?;
    let channels = Channels::from_settings(settings)?;
    let channel_state = format!(
        "sms {}, email {}",
        if channels.sms.is_some() {
            "configured"
        } else {
            "not configured"
        },
        if channels.email.is_some() {
            "configured"
        } else {
            "not configured"
        }
    );
    channels.shutdown().await;
    let db = Db::connect(&settings.effective_database_url()).await?;
    let migrations = db.migration_state().await?;
    let last = db.latest_completed_run().await?;
    let now = clock.now();
    let mut out = String::new();
    let insecure = settings.insecure_transports();
    if insecure.is_empty() {
        let _ = writeln!(out, "configuration: ok ({channel_state})");
    } else {
        let _ = writeln!(
            out,
            "configuration: WARNING: insecure transport allowed ({channel_state})"
        );
        for why in &insecure {
            let _ = writeln!(out, "warning: {why}");
        }
    }
    let _ = writeln!(
        out,
        "database: ok, migrations at version {} of {}",
        migrations.applied, migrations.latest
    );
    let _ = writeln!(
        out,
        "schedule: {:?} in {tz}; next tick {}",
        schedule.as_str(),
        rfc3339(schedule.next(now))
    );
    let _ = writeln!(
        out,
        "{}",
        match &purge_schedule {
            Some(p) => format!(
                "purge: {:?} in {tz}; next purge {}",
                p.as_str(),
                rfc3339(p.next(now))
            ),
            None => "purge: not scheduled (retention.schedule is empty: `autosign purge` by hand)"
                .to_string(),
        }
    );
    let _ = writeln!(
        out,
        "health endpoint: {}",
        d.health_addr
            .map_or_else(|| "none".to_string(), |a| a.to_string())
    );
    match &last {
        Some(r) => {
            let _ = writeln!(
                out,
                "last completed run: as_of {} (run {})",
                r.as_of, r.run_id
            );
        }
        None => {
            let _ = writeln!(out, "last completed run: none");
        }
    }
    if let Some(held) = db.held_run().await? {
        let _ = writeln!(
            out,
            "a start now would run nothing: {}",
            crate::brake::held_refusal(&held)
        );
        return Ok(out);
    }
    let Some(due) = schedule.due_date(now) else {
        let _ = writeln!(out, "a start now would run nothing: no tick has come yet");
        return Ok(out);
    };
    let line = match plan(last.as_ref().map(|r| r.as_of), due, d.max_catch_up_days) {
        Plan::UpToDate { .. } => format!("a start now would run nothing: up to date (due {due})"),
        Plan::Run { as_of, behind } => {
            let dates: Vec<String> = (0..behind)
                .filter_map(|i| as_of.checked_add_signed(chrono::Duration::days(i)))
                .map(|d| d.to_string())
                .collect();
            format!("a start now would run: {}", dates.join(", "))
        }
        Plan::TooFarBehind { behind, .. } => format!(
            "a start now would refuse to catch up: {behind} dates due (through {due}), more than daemon.max_catch_up_days = {}",
            d.max_catch_up_days
        ),
    };
    let _ = writeln!(out, "{line}");
    Ok(out)
}

/// Runs the daemon until SIGTERM or SIGINT. Configuration errors (bad
/// schedule, address that cannot be bound, bad channel settings) come back
/// before anything starts (exit 2).
pub async fn serve(settings: Settings, opts: DaemonOptions) -> Result<()> {
    let tz = settings.tz();
    let d = settings.daemon.clone();
    let schedule = settings.run_schedule();
    let purge_schedule = settings.purge_schedule();
    let clock = opts.clock;
    fires_from(&schedule, purge_schedule.as_ref(), clock)?;
    let notices = Notices::from_settings(&settings)?;
    let channels = Channels::from_settings(&settings)?;
    let listener = match d.health_addr {
        None => None,
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::Config(format!(
                "configuration key daemon.health_addr: cannot listen on {addr}: {e}"
            ))
        })?),
    };
    let db = Db::connect(&settings.effective_database_url()).await?;
    // From here on SIGTERM and SIGINT are ours; before, they end the
    // process as usual (nothing has started that needs stopping).
    let mut signals = Signals::install()?;
    // Bars would interleave with the daemon's log lines.
    reconcile::show_progress(false);

    let metrics = Arc::new(Metrics::new(clock.now()));
    let health = match listener {
        None => None,
        Some(listener) => {
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| d.health_addr.map(|a| a.to_string()).unwrap_or_default());
            tracing::info!(addr = %addr, "health endpoint listening (/healthz, /readyz, /metrics)");
            let state = Arc::new(health::HealthState {
                db: db.clone(),
                tz,
                clock,
                ready_max_lag_days: d.ready_max_lag_days,
                metrics: metrics.clone(),
                feed_max_age_days: health::feed_max_age_days(&settings),
            });
            Some(tokio::spawn(health::serve(listener, state)))
        }
    };

    let (stop_tx, stop) = watch::channel(false);
    let worker = {
        let (db, settings, stop) = (db.clone(), settings.clone(), stop.clone());
        tokio::spawn(async move {
            crate::outbox::run_worker(&db, &settings, &channels, clock, stop).await;
        })
    };

    // The alarm clock. Capacity 1: a tick waiting is as good as several.
    let (tick_tx, ticks) = mpsc::channel::<()>(1);
    let mut scheduler = start_scheduler(&schedule, tick_tx, metrics.clone()).await?;
    // The scheduled purge, on a task of its own (none without a
    // schedule). Capacity 1, as for the runs.
    let purger = match purge_schedule {
        Some(p) => {
            let (purge_tx, purge_ticks) = mpsc::channel::<()>(1);
            purge::add_job(&scheduler, &p, purge_tx).await?;
            tracing::info!(
                schedule = p.as_str(),
                next_purge = %rfc3339(p.next(clock.now())),
                "scheduled purge on retention.schedule"
            );
            let runner = purge::PurgeRunner {
                db: db.clone(),
                settings: settings.clone(),
                schedule: p,
                clock,
                metrics: metrics.clone(),
            };
            Some(tokio::spawn(runner.run(purge_ticks, stop.clone())))
        }
        None => None,
    };
    tracing::info!(
        schedule = schedule.as_str(),
        timezone = %tz,
        next_tick = %rfc3339(schedule.next(clock.now())),
        max_catch_up_days = d.max_catch_up_days,
        "daemon started"
    );

    let runner = Runner {
        db: &db,
        settings: &settings,
        notices: &notices,
        schedule: &schedule,
        clock,
        metrics: &metrics,
    };
    // Boxed so that it can be dropped (cancelled) before the function ends.
    let mut running = Box::pin(runner.run(ticks, stop.clone()));

    let signal = tokio::select! {
        () = &mut running => None,
        s = signals.next() => Some(s),
    };
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(d.shutdown_grace_secs);
    tracing::info!(
        signal = signal.unwrap_or("none"),
        grace_secs = grace.as_secs(),
        busy = metrics.is_busy(),
        "shutting down: no new run or send; waiting for the work in flight"
    );
    match tokio::time::timeout(Duration::from_secs(2), scheduler.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = ?e, "scheduler shutdown"),
        Err(_) => tracing::debug!("scheduler shutdown timed out"),
    }
    let drain = async {
        (&mut running).await;
        let _ = worker.await;
        if let Some(p) = purger {
            let _ = p.await;
        }
    };
    let abandoned = tokio::select! {
        biased;
        () = drain => {
            tracing::info!("stopped cleanly");
            false
        }
        () = tokio::time::sleep(grace) => {
            if metrics.is_busy() {
                metrics.record(RunResult::Interrupted, None);
            }
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "grace period over: abandoning the work in flight (an unfinished run is rolled back, or resumed on PostgreSQL, at the next start)"
            );
            true
        }
        s = signals.next() => {
            tracing::warn!(signal = s, "second signal: exiting at once; an unfinished run is resumed at the next start");
            std::process::exit(1);
        }
    };
    // Dropping the run's future rolls its transaction back.
    drop(running);
    if let Some(h) = health {
        h.abort();
    }
    if abandoned {
        // A blocking task left behind (a wait for the job lock, a feed
        // parser thread) would hold up the runtime's shutdown, and the
        // database needs nothing more from this process: an uncommitted
        // transaction dies with it.
        std::process::exit(0);
    }
    Ok(())
}

async fn start_scheduler(
    schedule: &Schedule,
    ticks: mpsc::Sender<()>,
    metrics: Arc<Metrics>,
) -> Result<JobScheduler> {
    let failed = |what: &str, e: tokio_cron_scheduler::JobSchedulerError| {
        Error::Runtime(anyhow::anyhow!("cannot {what} the scheduler: {e:?}"))
    };
    let scheduler = JobScheduler::new().await.map_err(|e| failed("create", e))?;
    // The `_tz` constructor: the plain one reads the expression in UTC.
    // It freezes the zone's current offset (tokio-cron-scheduler #87),
    // which is exact for Asia/Shanghai (no DST).
    let job = Job::new_async_tz(schedule.as_str(), schedule.tz(), move |_id, _sched| {
        let (ticks, metrics) = (ticks.clone(), metrics.clone());
        Box::pin(async move { send_tick(&ticks, &metrics) })
    })
    .map_err(|e| {
        Error::Config(format!(
            "configuration key daemon.schedule: {:?} is not accepted by the scheduler ({e:?})",
            schedule.as_str()
        ))
    })?;
    scheduler
        .add(job)
        .await
        .map_err(|e| failed("add a job to", e))?;
    scheduler.start().await.map_err(|e| failed("start", e))?;
    Ok(scheduler)
}

/// A tick's time for the log, to the second.
fn rfc3339(t: Option<DateTime<chrono_tz::Tz>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
        .unwrap_or_else(|| "never".to_string())
}

/// The cron job's whole body: wake the runner, unless it is busy.
fn send_tick(ticks: &mpsc::Sender<()>, metrics: &Metrics) {
    metrics.tick();
    if metrics.is_busy() {
        metrics.tick_skipped();
        tracing::warn!(
            "tick skipped: a run is in progress (the ledger is checked again when it ends)"
        );
        return;
    }
    match ticks.try_send(()) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(())) => {}
        Err(mpsc::error::TrySendError::Full(())) => {
            metrics.tick_skipped();
            tracing::info!("tick skipped: the previous tick has not been taken up yet");
        }
    }
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| Error::io("cannot handle SIGTERM", e))?;
            let int = signal(SignalKind::interrupt())
                .map_err(|e| Error::io("cannot handle SIGINT", e))?;
            Ok(Signals { term, int })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

/// Decides and performs the runs, one at a time.
struct Runner<'a> {
    db: &'a Db,
    settings: &'a Settings,
    notices: &'a Notices,
    schedule: &'a Schedule,
    clock: Clock,
    metrics: &'a Metrics,
}

impl Runner<'_> {
    /// Catch-up at start-up, then once per tick, until `stop`.
    async fn run(&self, mut ticks: mpsc::Receiver<()>, mut stop: watch::Receiver<bool>) {
        self.catch_up("start-up", &stop).await;
        loop {
            let tick = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                tick = ticks.recv() => tick,
            };
            match tick {
                Some(()) => self.catch_up("tick", &stop).await,
                None => return,
            }
        }
    }

    /// Runs every date due, oldest first, re-reading the ledger before each:
    /// it, not this process, says what is done.
    async fn catch_up(&self, why: &'static str, stop: &watch::Receiver<bool>) {
        self.metrics.set_busy(true);
        let max = self.settings.daemon.max_catch_up_days;
        // Each pass completes a date or stops, so this bound is never met;
        // it keeps a surprise from becoming a busy loop.
        for _ in 0..=max + 1 {
            if *stop.borrow() {
                break;
            }
            // A held run waits for an operator; nothing runs (docs/rules.md,
            // "Safety brake").
            match self.db.held_run().await {
                Ok(Some(held)) => {
                    self.metrics.record(RunResult::Held, None);
                    tracing::error!(
                        alert = "run_held",
                        run_id = held.run_id,
                        as_of = %held.as_of,
                        "not running: {}",
                        crate::brake::held_refusal(&held)
                    );
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    self.metrics.record(RunResult::Failed, None);
                    tracing::error!(
                        alert = "run_failed",
                        error = %e,
                        "cannot read the run ledger; trying again at the next tick"
                    );
                    break;
                }
            }
            let now = self.clock.now();
            let Some(due) = self.schedule.due_date(now) else {
                tracing::info!(why, "no tick has come yet: nothing is due");
                break;
            };
            let last = match self.db.latest_completed_run().await {
                Ok(last) => last,
                Err(e) => {
                    self.metrics.record(RunResult::Failed, None);
                    tracing::error!(
                        alert = "run_failed",
                        error = %e,
                        "cannot read the run ledger; trying again at the next tick"
                    );
                    break;
                }
            };
            match plan(last.as_ref().map(|r| r.as_of), due, max) {
                Plan::UpToDate { last } => {
                    tracing::info!(
                        why,
                        last_completed = %last,
                        next_tick = %self.next_tick(),
                        "up to date: nothing to run"
                    );
                    break;
                }
                Plan::TooFarBehind { last, due, behind } => {
                    self.metrics.record(RunResult::Refused, None);
                    tracing::error!(
                        alert = "catch_up_refused",
                        last_completed = %last,
                        due = %due,
                        dates_due = behind,
                        max_catch_up_days = max,
                        "{behind} dates are due since the last completed run, more than \
                         daemon.max_catch_up_days: running none of them rather than send stale \
                         notices; an operator runs them (or only today) with `autosign run --as-of` \
                         (docs/deployment.md)"
                    );
                    break;
                }
                Plan::Run { as_of, behind } => {
                    if behind > 1 {
                        tracing::info!(%as_of, dates_due = behind, "catching up a missed date");
                    }
                    if !self.run_one(as_of).await {
                        break;
                    }
                }
            }
        }
        self.metrics.set_busy(false);
    }

    fn next_tick(&self) -> String {
        rfc3339(self.schedule.next(self.clock.now()))
    }

    /// The nightly report of the run just made (src/report/). A failure
    /// is logged and counted; the run stands either way.
    async fn report(&self, as_of: NaiveDate) {
        match crate::report::write_nightly(self.db, self.settings, self.notices, self.clock, as_of)
            .await
        {
            Ok(path) => {
                self.metrics.report_written(true);
                tracing::info!(%as_of, path = %path.display(), "nightly report written");
            }
            Err(e) => {
                self.metrics.report_written(false);
                tracing::error!(
                    alert = "report_failed",
                    %as_of,
                    error = %e,
                    "cannot write the nightly report; the run is not affected"
                );
            }
        }
    }

    /// One nightly run; false if it failed (the rest waits for the next
    /// tick).
    async fn run_one(&self, as_of: NaiveDate) -> bool {
        let started = Instant::now();
        tracing::info!(%as_of, "nightly run starting");
        match reconcile::run(self.db, self.settings, self.notices, self.clock, as_of).await {
            Ok(RunOutcome::Completed(s)) => {
                let elapsed = started.elapsed();
                self.metrics.record(RunResult::Completed, Some(elapsed));
                tracing::info!(
                    run_id = s.run.run_id,
                    %as_of,
                    attempt = s.run.attempts,
                    events = s.counts.iter().map(|c| c.count).sum::<i64>(),
                    pending = s.planned.pending,
                    inbox_files = s.inbox.len(),
                    duration_secs = elapsed.as_secs_f64(),
                    "nightly run completed"
                );
                self.report(as_of).await;
                true
            }
            Ok(RunOutcome::Held(s)) => {
                self.metrics.record(RunResult::Held, None);
                tracing::error!(
                    alert = "run_held",
                    run_id = s.run.run_id,
                    %as_of,
                    "{}",
                    crate::brake::alert(&s.run)
                );
                self.report(as_of).await;
                false
            }
            Ok(RunOutcome::AlreadyCompleted(r)) => {
                self.metrics.record(RunResult::AlreadyCompleted, None);
                tracing::info!(run_id = r.run_id, %as_of, "already completed (C8); nothing to do");
                true
            }
            Err(e) => {
                self.metrics.record(RunResult::Failed, None);
                tracing::error!(
                    alert = "run_failed",
                    %as_of,
                    exit_status = e.exit_code(),
                    error = %e,
                    "nightly run failed; the daemon keeps running and tries again at the next tick"
                );
                false
            }
        }
    }
}
