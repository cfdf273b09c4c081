//! `autosign run --as-of DATE --dry-run [--audit PATH]`: what the run would
//! do, with nothing written, queued or imported — for an operator before a
//! first night.
//!
//! It is the run's own code up to the first write: the same refusals that
//! do not depend on writing, the brake's feed and lifecycle checks, the
//! plan (R4–R6, [`super::plan`]) and its brake checks
//! ([`super::plan_trips`]), then the same pass over the register that
//! makes each page's events and notices ([`super::event_maker`], R3, R7,
//! R8). The events are counted and, with `--audit`, written as the audit
//! rows the run would record (R9, through the export's own writer); they
//! go nowhere else. The run transaction it reads through has no runs row
//! and only reads ([`Db::begin_dry_run`]); it is rolled back.
//!
//! Refusals, as a run: a date more than `run.future_allowance_days` ahead
//! without `--allow-future` (C17, checked by the caller), any date while a
//! run is held by the brake, a date earlier than the latest completed run
//! (C16): exit 2. A completed date is a no-op (C8). Inbox files not yet
//! imported are listed and not imported (R2a would import them first): the
//! plan is on what is already imported, and the brake's feed checks look at
//! the imports as they are.
//!
//! The dry run holds the job lock while it reads, as a run does: an import
//! or run started meanwhile waits, and the plan is on one state of the
//! database.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::{Ctx, PlanCounts, RunSummary};
use crate::audit::AuditWriter;
use crate::clock::Clock;
use crate::db::{AuditRow, Db, NewEvent, RunRecord, RunTx};
use crate::domain::{EventState, RunStatus};
use crate::error::{Error, Result};
use crate::feeds::{self, Feed};
use crate::outbox::notice::Notices;
use crate::settings::Settings;

#[derive(Debug)]
pub enum DryRunOutcome {
    /// C8: the date is completed; a run would do nothing.
    AlreadyCompleted(RunRecord),
    /// What a run started now would do.
    Planned(Box<DryRun>),
}

#[derive(Debug)]
pub struct DryRun {
    /// The run as it would begin: its id, attempt, and `brake` if the
    /// brake would hold it. Never stored.
    pub run: RunRecord,
    /// A run left `running` for the date that the run would resume
    /// (PostgreSQL, after a crash): the plan covers what it left undecided.
    pub resumes: Option<RunRecord>,
    /// Inbox files not imported yet, which a run would import first.
    pub waiting: Vec<(Feed, PathBuf)>,
    /// The summary a real run would print (counts of what it would write).
    pub summary: RunSummary,
    /// Where the audit rows went, and how many.
    pub audit: Option<(PathBuf, u64)>,
}

/// Plans `as_of` as a run would, writing nothing to the database; with
/// `audit`, writes the audit rows the run would record there.
pub async fn dry_run(
    db: &Db,
    settings: &Settings,
    notices: &Notices,
    clock: Clock,
    as_of: NaiveDate,
    audit: Option<&Path>,
) -> Result<DryRunOutcome> {
    let _lock = db
        .lock_jobs(|| {
            tracing::info!("another autosign import or run holds the job lock; waiting for it")
        })
        .await?;
    // The run's refusals, in its order: a held run, C8, C16.
    crate::brake::refuse_if_held(db).await?;
    let existing = db.run_for(as_of).await?;
    if let Some(done) = existing
        .clone()
        .filter(|r| r.status == RunStatus::Completed)
    {
        return Ok(DryRunOutcome::AlreadyCompleted(done));
    }
    if let Some(last) = db.latest_completed_run().await? {
        if last.as_of > as_of {
            return Err(Error::Refused(format!(
                "refusing to run for {as_of}: a later date, {}, was already completed (run {}); \
                 the dry run shows nothing a run could do (C16)",
                last.as_of, last.run_id
            )));
        }
    }
    let waiting = waiting_inbox_files(db, settings).await?;
    let super::BrakeInputs {
        mark,
        feeds_trip,
        register,
    } = super::brake_inputs(db, settings, clock).await?;
    let resumes = existing.filter(|r| r.status == RunStatus::Running);
    let run = RunRecord {
        run_id: db.next_run_id(as_of).await?,
        as_of,
        status: RunStatus::Running,
        attempts: resumes.as_ref().map_or(1, |r| r.attempts + 1),
        started_at: clock.now_rfc3339(),
        finished_at: None,
        pending: 0,
        // A resumed run stays held if it was.
        brake: resumes
            .as_ref()
            .and_then(|r| r.brake.clone())
            .or(feeds_trip),
        import_mark: Some(mark),
        duration_secs: None,
    };
    let bar = super::progress_bar(as_of);
    let mut tx = db.begin_dry_run(run.clone()).await?;
    let mut ctx = Ctx {
        settings,
        notices,
        clock,
        as_of,
        run_id: run.run_id,
        held: run.brake.is_some(),
        register,
        bar: &bar,
        written: Default::default(),
    };
    let result = plan_and_make(&mut ctx, &mut tx, audit).await;
    bar.finish_and_clear();
    // Nothing to undo: the transaction only read.
    let rolled_back = tx.rollback().await;
    let (planned, trips, audit_rows) = result?;
    rolled_back?;
    let mut run = run;
    if run.brake.is_none() && !trips.is_empty() {
        run.brake = Some(trips.join("; "));
    }
    run.pending = i64::try_from(planned.pending).unwrap_or(i64::MAX);
    let summary = RunSummary {
        run: run.clone(),
        inbox: Vec::new(),
        counts: ctx.written_counts(),
        planned,
    };
    Ok(DryRunOutcome::Planned(Box::new(DryRun {
        run,
        resumes,
        waiting,
        summary,
        audit: audit.map(Path::to_path_buf).zip(audit_rows),
    })))
}

/// The plan, the brake's verdict on it, and each page's events counted
/// (and written as audit rows to `audit`) instead of stored.
async fn plan_and_make(
    ctx: &mut Ctx<'_>,
    tx: &mut RunTx,
    audit: Option<&Path>,
) -> Result<(PlanCounts, Vec<String>, Option<u64>)> {
    let plan = super::plan(ctx, tx).await?;
    let trips = if ctx.held {
        Vec::new()
    } else {
        let lifecycle = super::lifecycle_counts(ctx.register.take(), &plan).await?;
        super::plan_trips(ctx, &plan.counts, lifecycle.as_ref())
    };
    ctx.held |= !trips.is_empty();
    let counts = plan.counts.clone();
    let mut audit = audit
        .map(|p| AuditWriter::create(Some(p), false))
        .transpose()?;
    let mut pages = super::plan_pages(ctx, tx, plan).await?;
    while let Some((read, events)) = pages.next().await? {
        // What `Ctx::write` would count, and the rows the audit export
        // would show for them right after the run.
        let decided_at = ctx.clock.now_rfc3339();
        let mut written = ctx.written.borrow_mut();
        for e in &events {
            let channel = (!ctx.held).then_some(e.notice.channel);
            *written.entry((e.kind, e.reasons, channel)).or_default() += 1;
            if let Some(w) = &mut audit {
                let cells = audit_row(ctx, e, &decided_at).to_cells();
                w.write(&cells.each_ref().map(String::as_str))?;
            }
        }
        drop(written);
        ctx.bar.inc(read as u64);
    }
    let rows = audit.map(AuditWriter::finish).transpose()?;
    Ok((counts, trips, rows))
}

/// The audit row (R9) an event would have once written: its notice's
/// channel and status as queued (none while held), state `applied`, or
/// `held` when the brake would hold the run.
fn audit_row(ctx: &Ctx<'_>, e: &NewEvent, decided_at: &str) -> AuditRow {
    AuditRow {
        run_id: ctx.run_id,
        as_of: ctx.as_of,
        permit_no: e.permit_no.clone(),
        id_number: e.id_number.clone(),
        decision: e.kind,
        reasons: e.reasons,
        valid_until: e.valid_until,
        new_valid_until: e.new_valid_until,
        residence_visited_on: e.residence_visited_on,
        residence_result: e.residence_result,
        si_month: e.si_month,
        si_status: e.si_status,
        si_employer_uscc: e.si_employer_uscc.clone(),
        marital_status: e.marital_status,
        notification_channel: (!ctx.held).then_some(e.notice.channel),
        notification_status: (!ctx.held).then_some(e.notice.status),
        decided_at: decided_at.to_string(),
        state: if ctx.held {
            EventState::Held
        } else {
            EventState::Applied
        },
    }
}

/// R2a's files a run would import first: those of the inbox whose content
/// (SHA-256) is not imported yet for their feed.
async fn waiting_inbox_files(db: &Db, settings: &Settings) -> Result<Vec<(Feed, PathBuf)>> {
    let mut out = Vec::new();
    let Some(root) = crate::inbox::root(settings)? else {
        return Ok(out);
    };
    for feed in Feed::ALL {
        for file in crate::inbox::feed_files(settings, root, feed)? {
            let sha = feeds::sha256_file(&file)?;
            if db.find_import(feed.name(), &sha).await?.is_none() {
                out.push((feed, file));
            }
        }
    }
    Ok(out)
}

/// The dry run's report: what it did not do, the run it would be, the
/// brake's verdict, then the summary exactly as the run would print it.
pub fn report(outcome: &DryRunOutcome) -> String {
    use std::fmt::Write;
    let d = match outcome {
        DryRunOutcome::AlreadyCompleted(r) => {
            return format!(
                "dry run: as_of {} was already completed by run {} at {}; a run would do \
                 nothing (C8)\n",
                r.as_of,
                r.run_id,
                r.finished_at.as_deref().unwrap_or("?")
            );
        }
        DryRunOutcome::Planned(d) => d,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "DRY RUN for as_of {}: nothing was written, queued or imported",
        d.run.as_of
    );
    if d.waiting.is_empty() {
        let _ = writeln!(out, "inbox: no file waiting to be imported");
    } else {
        let _ = writeln!(
            out,
            "inbox: {} file(s) not imported yet; a run would import them first (R2a). The dry \
             run does not import them: the plan below is on what is already imported.",
            d.waiting.len()
        );
        for (feed, file) in &d.waiting {
            let _ = writeln!(out, "  {} {}", feed.name(), file.display());
        }
    }
    match &d.resumes {
        Some(r) => {
            let _ = writeln!(
                out,
                "a run now would resume run {} (attempt {}): the counts below are what it \
                 would add to the pages its crashed attempt committed",
                r.run_id, d.run.attempts
            );
        }
        None => {
            let _ = writeln!(out, "a run now would be run {}", d.run.run_id);
        }
    }
    match &d.run.brake {
        Some(why) => {
            let _ = writeln!(
                out,
                "safety brake: would HOLD the run: {why}. The run would record its decisions, \
                 apply and notify nothing, and exit 4 (docs/operations.md, \"The safety brake\")"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "safety brake: no check trips; the run would go through"
            );
        }
    }
    // The run's own summary; its first line ("run N for as_of D:
    // completed") is the one thing a dry run cannot say.
    let summary = crate::app::run_report(&d.summary);
    let body = summary.split_once('\n').map_or("", |(_, body)| body);
    let _ = writeln!(
        out,
        "run {} for as_of {}: {}",
        d.run.run_id,
        d.run.as_of,
        if d.run.brake.is_some() {
            "would be HELD by the safety brake"
        } else {
            "would complete"
        }
    );
    out.push_str(body);
    if let Some((path, rows)) = &d.audit {
        let _ = writeln!(
            out,
            "audit: {rows} rows the run would write for {}, written to {} (SHA-256 in {}); \
             decided_at is the dry run's time",
            d.run.as_of,
            path.display(),
            crate::fsutil::sidecar_path(path).display()
        );
    }
    out
}
