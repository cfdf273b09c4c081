//! The daemon's scheduled purge: `autosign purge` ([`crate::purge::purge`])
//! on `[retention] schedule`, the same cron syntax and zone as
//! `daemon.schedule`. Unset, the daemon never purges (an operator runs
//! `autosign purge` by hand or from a timer).
//!
//! As for the nightly run, tokio-cron-scheduler is only the alarm clock:
//! its job wakes a task of its own, which purges with the daemon's clock
//! (`--now` included). The purge takes the job lock, so it waits for a run
//! or an import in progress and a run waits for it; it is one transaction,
//! so a purge abandoned at shutdown leaves nothing half done. A failed
//! purge is logged (`alert = "purge_failed"`) and counted in `/metrics`;
//! the daemon goes on, and the next tick purges what is due then. Missed
//! ticks (the daemon was down) are not caught up: a purge removes
//! everything older than the cutoffs, so the next one does the work of
//! every tick missed.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{Job, JobScheduler};

use super::{rfc3339, Metrics, Schedule};
use crate::clock::Clock;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// Adds the purge's alarm to the daemon's scheduler. A tick that finds the
/// previous purge still waiting or running is dropped: one purge does
/// the work of both.
pub(super) async fn add_job(
    scheduler: &JobScheduler,
    schedule: &Schedule,
    ticks: mpsc::Sender<()>,
) -> Result<()> {
    let job = Job::new_async_tz(schedule.as_str(), schedule.tz(), move |_id, _sched| {
        let ticks = ticks.clone();
        Box::pin(async move {
            if let Err(mpsc::error::TrySendError::Full(())) = ticks.try_send(()) {
                tracing::info!("purge tick skipped: the previous purge has not finished");
            }
        })
    })
    .map_err(|e| {
        Error::Config(format!(
            "configuration key retention.schedule: {:?} is not accepted by the scheduler ({e:?})",
            schedule.as_str()
        ))
    })?;
    scheduler.add(job).await.map_err(|e| {
        Error::Runtime(anyhow::anyhow!(
            "cannot add the purge to the scheduler: {e:?}"
        ))
    })?;
    Ok(())
}

/// Purges once per tick, until `stop`.
pub(super) struct PurgeRunner {
    pub db: Db,
    pub settings: Settings,
    pub schedule: Schedule,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

impl PurgeRunner {
    pub async fn run(self, mut ticks: mpsc::Receiver<()>, mut stop: watch::Receiver<bool>) {
        loop {
            let tick = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                tick = ticks.recv() => tick,
            };
            if tick.is_none() {
                return;
            }
            self.purge_once().await;
        }
    }

    async fn purge_once(&self) {
        let started = Instant::now();
        let now = self.clock.now();
        let next_purge = rfc3339(self.schedule.next(now));
        tracing::info!("scheduled purge starting");
        match crate::purge::purge(&self.db, &self.settings, self.clock, false).await {
            Ok(r) => {
                self.metrics.purge_completed(self.clock.now());
                tracing::info!(
                    residence = r.rows.residence,
                    social_insurance = r.rows.social_insurance,
                    civil_status = r.rows.civil_status,
                    notice_texts = r.rows.notice_texts,
                    rejects_files = r.rejects_files,
                    visited_before = %r.cutoffs.visited_before,
                    duration_secs = started.elapsed().as_secs_f64(),
                    next_purge = %next_purge,
                    "scheduled purge completed"
                );
            }
            Err(e) => {
                self.metrics.purge_failed();
                tracing::error!(
                    alert = "purge_failed",
                    exit_status = e.exit_code(),
                    error = %e,
                    next_purge = %next_purge,
                    "scheduled purge failed; the daemon keeps running and purges again at the next purge tick"
                );
            }
        }
    }
}
