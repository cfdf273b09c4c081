//! The safety brake (docs/rules.md, "Safety brake"): a run that looks
//! wrong against the recent past is recorded but not carried out, since a
//! notice cannot be called back.
//!
//! Before a run applies or notifies anything it checks its inputs and its
//! outcome: a required feed whose newest import is older than
//! `brake.max_age_days` (by the run's clock), a snapshot feed whose newest
//! import brought far fewer rows than its snapshot before
//! (`brake.row_drop`; deltas are never compared), more than
//! `brake.max_lifecycle_share` of the live register lapsing at once (R3; a
//! wrong date), and — once its plan is known — a VISIT_CENTER share above
//! `brake.max_visit_center_share` among at least `brake.min_due` due permits.
//! If one trips, the run is **held**: its events are written (the audit
//! trail shows them, state `held`), no permit changes, no notice is queued,
//! the run ends with exit status 4 and one alert line, and every later run
//! is refused until an operator releases ([`release`]: apply exactly what
//! the run decided and queue its notices) or discards ([`discard`]: the
//! events become void and the same `as_of` may run again) it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::db::{
    Db, Effect, FeedImport, LifecycleCounts, ReleaseItem, Restore, RevertDone, RevertItem,
    RunRecord,
};
use crate::domain::{EventKind, PermitStatus, RunStatus};
use crate::error::{Error, Result};
use crate::feeds::Delivery;
use crate::outbox::notice::Notices;
use crate::settings::Settings;

/// The configuration key of a feed's limits (`social-insurance` is stored,
/// `social_insurance` is the key).
fn feed_key(feed: &str) -> String {
    feed.replace('-', "_")
}

/// Checks 2 and 3 on the imports table: each feed's newest import and its
/// two newest snapshot imports (`imports`, newest first within a feed),
/// the import mark of the last completed run (imports up to it were
/// accepted by a run already) and the clock. Returns why the run must be
/// held, one line, or `None`.
///
/// The row-drop check compares a snapshot import made since the last
/// completed run with the snapshot import before it. A delta import
/// (`[feeds.<feed>] delivery = "delta"`) holds what changed since the last
/// file, so its size says nothing: it is never compared, and never the
/// baseline of a later snapshot.
pub fn check_feeds(
    settings: &Settings,
    imports: &[FeedImport],
    completed_mark: i64,
    now: DateTime<Utc>,
) -> Option<String> {
    let b = &settings.brake;
    if !b.enabled {
        return None;
    }
    let mut by_feed: BTreeMap<&str, Vec<&FeedImport>> = BTreeMap::new();
    for i in imports {
        by_feed.entry(i.feed.as_str()).or_default().push(i);
    }
    let mut trips = Vec::new();
    for (feed, list) in &by_feed {
        let Some(newest) = list.first() else { continue };
        let limit = b.max_age_days.for_feed(feed);
        if limit > 0 {
            if let Ok(at) = DateTime::parse_from_rfc3339(&newest.imported_at) {
                let age = now.signed_duration_since(at.with_timezone(&Utc));
                if age > chrono::Duration::days(i64::from(limit)) {
                    trips.push(format!(
                        "feed {feed} is stale: its newest import ({}, import {}, at {}) is {} days old, \
                         more than brake.max_age_days.{} = {limit}",
                        newest.file_name,
                        newest.import_id,
                        newest.imported_at,
                        age.num_days(),
                        feed_key(feed)
                    ));
                }
            }
        }
        let mut snapshots = list.iter().filter(|i| i.delivery == Delivery::Snapshot);
        let (Some(newest), Some(previous)) = (snapshots.next(), snapshots.next()) else {
            continue;
        };
        let r = &b.row_drop;
        if newest.import_id > completed_mark
            && r.min_ratio > 0.0
            && previous.rows_imported >= 0
            && previous.rows_imported as u64 >= r.min_previous_rows
            && (newest.rows_imported as f64) < r.min_ratio * previous.rows_imported as f64
        {
            trips.push(format!(
                "feed {feed} dropped: import {} ({}) has {} rows against {} in import {} ({}), \
                 below brake.row_drop.min_ratio = {}",
                newest.import_id,
                newest.file_name,
                newest.rows_imported,
                previous.rows_imported,
                previous.import_id,
                previous.file_name,
                r.min_ratio
            ));
        }
    }
    (!trips.is_empty()).then(|| trips.join("; "))
}

/// Check 1 on a run's plan: the share of VISIT_CENTER among the due
/// permits (decided or left PENDING), from `brake.min_due` due permits up.
pub fn check_share(settings: &Settings, due: u64, visit_center: u64) -> Option<String> {
    let b = &settings.brake;
    if !b.enabled || due == 0 || due < b.min_due {
        return None;
    }
    let share = visit_center as f64 / due as f64;
    (share > b.max_visit_center_share).then(|| {
        format!(
            "VISIT_CENTER for {visit_center} of {due} due permits ({:.1}%), more than \
             brake.max_visit_center_share = {}",
            share * 100.0,
            b.max_visit_center_share
        )
    })
}

/// Check 4, on the register before the run writes anything: the share of
/// the live register (active and suspended permits) that R3 would suspend
/// or cancel tonight, from `brake.min_lifecycle_count` such steps up. A
/// wrong `as_of` (a mistyped year, C17 overridden) lapses the whole
/// register in one night; an honest night lapses a few in a thousand.
pub fn check_lifecycle(settings: &Settings, counts: &LifecycleCounts) -> Option<String> {
    let b = &settings.brake;
    let steps = counts.suspend + counts.cancel;
    if !b.enabled || counts.register == 0 || steps < b.min_lifecycle_count {
        return None;
    }
    let share = steps as f64 / counts.register as f64;
    (share > b.max_lifecycle_share).then(|| {
        format!(
            "SUSPENDED or CANCELLED for {steps} of {} permits in the register ({:.1}%: {} \
             suspended, {} cancelled), more than brake.max_lifecycle_share = {}; is the date \
             right?",
            counts.register,
            share * 100.0,
            counts.suspend,
            counts.cancel,
            b.max_lifecycle_share
        )
    })
}

/// Whether [`check_lifecycle`] can trip at all (its count costs a pass
/// over the register).
pub fn lifecycle_checked(settings: &Settings) -> bool {
    settings.brake.enabled && settings.brake.max_lifecycle_share < 1.0
}

/// The alert of a held run: what tripped, and the two ways on.
pub fn alert(run: &RunRecord) -> String {
    format!(
        "run {id} for {as_of} HELD by the safety brake: {why}. Nothing was applied to the permits \
         and no notice was queued; further runs are refused until an operator decides. After \
         checking the feeds: `autosign release {id}` applies the decisions and queues their \
         notices, or `autosign discard {id}` voids them (fix the feed, then run {as_of} again)",
        id = run.run_id,
        as_of = run.as_of,
        why = run.brake.as_deref().unwrap_or("?"),
    )
}

/// Refuses (exit 2) while a run is held: no run, for any date, goes ahead
/// of the operator's decision. Imports stay allowed, so a feed can be
/// fixed.
pub async fn refuse_if_held(db: &Db) -> Result<()> {
    match db.held_run().await? {
        Some(run) => Err(Error::Refused(held_refusal(&run))),
        None => Ok(()),
    }
}

/// Why nothing runs while `run` is held (also the daemon's and /readyz's).
pub fn held_refusal(run: &RunRecord) -> String {
    format!(
        "refusing to run: run {id} for {as_of} is held by the safety brake ({why}); \
         `autosign release {id}` or `autosign discard {id}` first",
        id = run.run_id,
        as_of = run.as_of,
        why = run.brake.as_deref().unwrap_or("?"),
    )
}

/// What [`release`] did.
#[derive(Debug)]
pub struct ReleaseOutcome {
    pub run: RunRecord,
    /// Applied events by kind.
    pub applied: BTreeMap<String, u64>,
    /// Queued notices by channel (`none`: undeliverable, C12).
    pub channels: BTreeMap<String, u64>,
    /// Events not applied: (permit_no, kind), the permit's cycle having
    /// changed since the run.
    pub not_applied: Vec<(String, String)>,
}

async fn held_run(db: &Db, run_id: i64, verb: &str) -> Result<RunRecord> {
    let run = db
        .run_by_id(run_id)
        .await?
        .ok_or_else(|| Error::Refused(format!("there is no run {run_id}: nothing to {verb}")))?;
    if run.status != RunStatus::Held {
        return Err(Error::Refused(format!(
            "run {run_id} for {} is {}, not held by the safety brake: nothing to {verb}",
            run.as_of, run.status
        )));
    }
    Ok(run)
}

/// Whether a held event's cycle is still the permit's current one, in the
/// state the run saw: same `valid_until`, and a status from which the
/// event's step is taken (R3, R4).
fn still_current(
    kind: EventKind,
    held_valid_until: chrono::NaiveDate,
    p: &crate::db::PermitRow,
) -> bool {
    if p.valid_until != held_valid_until {
        return false;
    }
    let status = p.status;
    match kind {
        EventKind::AutoSigned | EventKind::VisitCenter | EventKind::Suspended => {
            status == PermitStatus::Active
        }
        EventKind::Cancelled => status != PermitStatus::Cancelled,
    }
}

/// `autosign release RUN_ID`: applies a held run's events — permit changes
/// and notices, as the run would have had the brake not held it — and marks
/// it completed, in one transaction under the job lock. An event whose
/// permit changed since (another `valid_until` or status) is recorded as
/// not applied. Refused (exit 2) for a run that is not held.
pub async fn release(
    db: &Db,
    notices: &Notices,
    clock: Clock,
    run_id: i64,
) -> Result<ReleaseOutcome> {
    let _lock = db
        .lock_jobs(|| {
            tracing::info!("another autosign import or run holds the job lock; waiting for it")
        })
        .await?;
    let run = held_run(db, run_id, "release").await?;
    let events = db.held_events(run_id).await?;
    let nos: Vec<&str> = events.iter().map(|e| e.permit_no.as_str()).collect();
    let permits = db.permits_by_no(&nos).await?;
    let mut items = Vec::with_capacity(events.len());
    let mut out = ReleaseOutcome {
        run: run.clone(),
        applied: BTreeMap::new(),
        channels: BTreeMap::new(),
        not_applied: Vec::new(),
    };
    for e in &events {
        let kind = e.kind;
        let permit = permits
            .get(&e.permit_no)
            .filter(|p| still_current(kind, e.valid_until, p));
        let (effect, notice) = match permit {
            Some(p) => {
                let effect =
                    crate::reconcile::rules::effect(kind, e.new_valid_until, e.valid_until);
                let notice = notices.compose(kind, p, e.reasons, e.new_valid_until);
                *out.applied.entry(kind.code().to_string()).or_default() += 1;
                *out.channels
                    .entry(notice.channel.code().to_string())
                    .or_default() += 1;
                (effect, Some(notice))
            }
            None => {
                out.not_applied
                    .push((e.permit_no.clone(), kind.code().to_string()));
                (Effect::None, None)
            }
        };
        items.push(ReleaseItem {
            event_id: e.event_id,
            permit_no: e.permit_no.clone(),
            valid_until: e.valid_until,
            kind,
            effect,
            notice,
        });
    }
    if !db.release_run(run_id, &items, &clock.now_rfc3339()).await? {
        return Err(Error::Refused(format!(
            "run {run_id} is no longer held: nothing released"
        )));
    }
    out.run = db.run_by_id(run_id).await?.unwrap_or(run);
    tracing::warn!(
        run_id,
        as_of = %out.run.as_of,
        applied = out.applied.values().sum::<u64>(),
        not_applied = out.not_applied.len(),
        "held run released by an operator"
    );
    Ok(out)
}

/// `autosign discard RUN_ID`: a held run's events become void (they stay
/// in the audit trail, state `void`), nothing is applied or notified, and
/// the same `as_of` may be run again. Refused (exit 2) for a run that is not
/// held.
pub async fn discard(db: &Db, clock: Clock, run_id: i64) -> Result<RunRecord> {
    let _lock = db
        .lock_jobs(|| {
            tracing::info!("another autosign import or run holds the job lock; waiting for it")
        })
        .await?;
    let run = held_run(db, run_id, "discard").await?;
    if !db.discard_run(run_id, &clock.now_rfc3339()).await? {
        return Err(Error::Refused(format!(
            "run {run_id} is no longer held: nothing discarded"
        )));
    }
    tracing::warn!(run_id, as_of = %run.as_of, "held run discarded by an operator");
    Ok(db.run_by_id(run_id).await?.unwrap_or(run))
}

/// What [`revert`] did.
#[derive(Debug)]
pub struct RevertOutcome {
    pub run: RunRecord,
    /// Events undone, by kind: their permit set back (AUTO_SIGNED,
    /// SUSPENDED, CANCELLED) or their cycle open again (VISIT_CENTER).
    pub undone: BTreeMap<String, u64>,
    /// The run's notices withdrawn (none had been sent).
    pub withdrawn: u64,
    /// Events not undone: (permit_no, kind), the permit having changed
    /// since the run.
    pub not_undone: Vec<(String, String)>,
}

/// The permit change that undoes `e`, or `None` when it changed no permit
/// (VISIT_CENTER, R7).
fn restore_of(e: &crate::db::RevertEvent) -> Result<Option<Restore>> {
    let stored = |what: &str| {
        Error::Runtime(anyhow::anyhow!(
            "stored event {} ({}) has {what}",
            e.event_id,
            e.kind
        ))
    };
    let kind = e.kind;
    let (active, suspended, cancelled) = (
        PermitStatus::Active,
        PermitStatus::Suspended,
        PermitStatus::Cancelled,
    );
    Ok(match kind {
        // R7: valid_until moved forward one year; it goes back to the
        // cycle's, which opens that cycle again.
        EventKind::AutoSigned => Some(Restore {
            left_valid_until: e
                .new_valid_until
                .ok_or_else(|| stored("no new_valid_until for kind"))?,
            left_status: active,
            valid_until: e.valid_until,
            status: active,
        }),
        EventKind::VisitCenter => None,
        // R3: only an active permit is suspended.
        EventKind::Suspended => Some(Restore {
            left_valid_until: e.valid_until,
            left_status: suspended,
            valid_until: e.valid_until,
            status: active,
        }),
        // R3/C1: an active or a suspended permit is cancelled; the event
        // says which (C13: a permit imported suspended has no SUSPENDED
        // event to tell).
        EventKind::Cancelled => Some(Restore {
            left_valid_until: e.valid_until,
            left_status: cancelled,
            valid_until: e.valid_until,
            status: match e.prior_status {
                Some(PermitStatus::Suspended) => suspended,
                _ => active,
            },
        }),
    })
}

/// `autosign revert RUN_ID`: undoes a completed run whose notices have not
/// gone out (after a run for a wrong date), in one transaction under the
/// job lock. Its permit changes are set back (a permit changed since the
/// run is left as it is, and listed), its notices withdrawn (kept, status
/// `withdrawn`), the run marked `reverted` and each event's fate recorded:
/// its events stay in the audit trail (state `reverted`), their cycles are
/// open again, and its date may run again. Refused (exit 2) for an unknown
/// run, a run that is not completed, a run with a later run that still
/// counts (only the latest can be undone: the permits are as it left them
/// only then), and a run any of whose notices was sent (a notice cannot be
/// called back).
pub async fn revert(db: &Db, clock: Clock, run_id: i64) -> Result<RevertOutcome> {
    let _lock = db
        .lock_jobs(|| {
            tracing::info!("another autosign import or run holds the job lock; waiting for it")
        })
        .await?;
    let run = db
        .run_by_id(run_id)
        .await?
        .ok_or_else(|| Error::Refused(format!("there is no run {run_id}: nothing to revert")))?;
    if run.status != RunStatus::Completed {
        let hint = if run.status == RunStatus::Held {
            format!(" (a held run applied nothing: `autosign discard {run_id}` voids it instead)")
        } else {
            String::new()
        };
        return Err(Error::Refused(format!(
            "run {run_id} for {} is {}, not completed: nothing to revert{hint}",
            run.as_of, run.status
        )));
    }
    if let Some(later) = db.later_live_run(run_id).await? {
        return Err(Error::Refused(format!(
            "refusing to revert run {run_id} for {}: run {} for {} ({}) came after it, and only \
             the latest run can be reverted (the permits are as a run left them only until the \
             next one); nothing was changed",
            run.as_of, later.run_id, later.as_of, later.status
        )));
    }
    let events = db.revert_events(&run).await?;
    let mut items = Vec::with_capacity(events.len());
    for e in &events {
        items.push(RevertItem {
            event_id: e.event_id,
            permit_no: e.permit_no.clone(),
            restore: restore_of(e)?,
        });
    }
    let done = db.revert_run(&run, &items, &clock.now_rfc3339()).await?;
    let (withdrawn, not_undone) = match done {
        RevertDone::Reverted {
            withdrawn,
            not_undone,
        } => (withdrawn, not_undone),
        RevertDone::NotCompleted => {
            return Err(Error::Refused(format!(
                "run {run_id} is no longer completed: nothing reverted"
            )))
        }
        RevertDone::Sent(n) => {
            return Err(Error::Refused(format!(
                "refusing to revert run {run_id} for {as_of}: {n} of its notices were sent \
                 already (`autosign export notifications --from {as_of} --to {as_of}` lists \
                 them) and a notice cannot be called back; nothing was changed",
                as_of = run.as_of
            )))
        }
    };
    let skipped: std::collections::HashSet<&str> = not_undone.iter().map(String::as_str).collect();
    let mut out = RevertOutcome {
        run: run.clone(),
        undone: BTreeMap::new(),
        withdrawn,
        not_undone: Vec::new(),
    };
    for e in &events {
        if skipped.contains(e.permit_no.as_str()) {
            out.not_undone
                .push((e.permit_no.clone(), e.kind.code().to_string()));
        } else {
            *out.undone.entry(e.kind.code().to_string()).or_default() += 1;
        }
    }
    out.run = db.run_by_id(run_id).await?.unwrap_or(run);
    tracing::warn!(
        run_id,
        as_of = %out.run.as_of,
        undone = out.undone.values().sum::<u64>(),
        not_undone = out.not_undone.len(),
        withdrawn,
        "completed run reverted by an operator"
    );
    Ok(out)
}

/// The report of `autosign revert`.
pub fn revert_report(o: &RevertOutcome) -> String {
    let mut s = String::new();
    let undone: u64 = o.undone.values().sum();
    let _ = writeln!(
        s,
        "run {} for {} reverted: {undone} events undone, {} not undone, {} notices withdrawn",
        o.run.run_id,
        o.run.as_of,
        o.not_undone.len(),
        o.withdrawn
    );
    for kind in ["AUTO_SIGNED", "VISIT_CENTER", "SUSPENDED", "CANCELLED"] {
        let _ = writeln!(
            s,
            "    {kind:<14} {:>9}",
            o.undone.get(kind).copied().unwrap_or(0)
        );
    }
    if !o.not_undone.is_empty() {
        let _ = writeln!(
            s,
            "  not undone, the permit having changed since the run (another valid_until or \
             status): left as they are"
        );
        const SHOWN: usize = 20;
        for (no, kind) in o.not_undone.iter().take(SHOWN) {
            let _ = writeln!(s, "    {no} {kind}");
        }
        if o.not_undone.len() > SHOWN {
            let _ = writeln!(s, "    … and {} more", o.not_undone.len() - SHOWN);
        }
    }
    let _ = writeln!(
        s,
        "  its events stay in the audit trail (state reverted); {} is no longer a completed \
         date. Run the intended date: `autosign run --as-of DATE`.",
        o.run.as_of
    );
    s
}

/// The report of `autosign release`.
pub fn release_report(o: &ReleaseOutcome) -> String {
    let mut s = String::new();
    let applied: u64 = o.applied.values().sum();
    let _ = writeln!(
        s,
        "run {} for {} released: {applied} events applied, {} not applied",
        o.run.run_id,
        o.run.as_of,
        o.not_applied.len()
    );
    for kind in ["AUTO_SIGNED", "VISIT_CENTER", "SUSPENDED", "CANCELLED"] {
        let _ = writeln!(
            s,
            "    {kind:<14} {:>9}",
            o.applied.get(kind).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(s, "  notices queued:");
    for (ch, label) in [
        ("sms", "sms"),
        ("email", "email"),
        ("none", "undeliverable"),
    ] {
        let _ = writeln!(
            s,
            "    {label:<14} {:>9}",
            o.channels.get(ch).copied().unwrap_or(0)
        );
    }
    if !o.not_applied.is_empty() {
        let _ = writeln!(
            s,
            "  not applied, the permit having changed since the run (another valid_until or status); \
             the next run evaluates them afresh:"
        );
        const SHOWN: usize = 20;
        for (no, kind) in o.not_applied.iter().take(SHOWN) {
            let _ = writeln!(s, "    {no} {kind}");
        }
        if o.not_applied.len() > SHOWN {
            let _ = writeln!(
                s,
                "    … and {} more (export audit: state not_applied)",
                o.not_applied.len() - SHOWN
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::load_with_env(None, &[]).expect("defaults")
    }

    fn import(id: i64, feed: &str, at: &str, rows: i64) -> FeedImport {
        FeedImport {
            import_id: id,
            feed: feed.to_string(),
            file_name: format!("{feed}-{id}.csv"),
            imported_at: at.to_string(),
            rows_imported: rows,
            delivery: Delivery::Snapshot,
        }
    }

    fn delta(id: i64, feed: &str, at: &str, rows: i64) -> FeedImport {
        FeedImport {
            delivery: Delivery::Delta,
            ..import(id, feed, at, rows)
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T02:00:00+08:00")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn share_trips_above_the_limit_from_min_due_only() {
        // The defaults: > 30% VISIT_CENTER, checked from 1,000 due permits.
        let s = settings();
        assert!(check_share(&s, 1000, 301).is_some());
        assert!(
            check_share(&s, 1000, 300).is_none(),
            "30% exactly is not above"
        );
        assert!(
            check_share(&s, 999, 999).is_none(),
            "below min_due never trips"
        );
        assert!(check_share(&s, 0, 0).is_none());
        let why = check_share(&s, 2000, 1000).expect("trips");
        assert!(
            why.contains("1000 of 2000") && why.contains("50.0%"),
            "{why}"
        );
    }

    #[test]
    fn lifecycle_trips_above_a_quarter_of_the_register_from_min_lifecycle_count_only() {
        // A wrong date lapses the register; a first night (~19 %) does not trip.
        let s = settings();
        let counts = |register, suspend, cancel| LifecycleCounts {
            register,
            suspend,
            cancel,
        };
        assert!(check_lifecycle(&s, &counts(10_000, 1_900, 0)).is_none());
        assert!(
            check_lifecycle(&s, &counts(10_000, 2_000, 500)).is_none(),
            "25% is not above"
        );
        let why = check_lifecycle(&s, &counts(10_000, 1_000, 9_000)).expect("trips");
        assert!(
            why.contains(
                "10000 of 10000 permits in the register (100.0%: 1000 suspended, 9000 cancelled)"
            ) && why.contains("brake.max_lifecycle_share = 0.25"),
            "{why}"
        );
        assert!(
            check_lifecycle(&s, &counts(1_200, 999, 0)).is_none(),
            "below min_lifecycle_count never trips"
        );
        assert!(check_lifecycle(&s, &counts(0, 0, 0)).is_none());
        let mut off = settings();
        off.brake.enabled = false;
        assert!(check_lifecycle(&off, &counts(10_000, 0, 10_000)).is_none());
        assert!(!lifecycle_checked(&off));
    }

    #[test]
    fn a_revert_sets_each_kind_back_as_r3_and_r7_changed_it() {
        let d = |t: &str| chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").expect("date");
        let event = |kind: &str, new: Option<&str>, prior: Option<&str>| crate::db::RevertEvent {
            event_id: 1,
            permit_no: "SH1".into(),
            kind: EventKind::from_code(kind).expect("a kind"),
            valid_until: d("2026-11-10"),
            new_valid_until: new.map(d),
            prior_status: prior.map(|p| PermitStatus::from_code(p).expect("a status")),
        };
        let r = |lv: &str, ls: &str, v: &str, st: &str| {
            let status = |s: &str| PermitStatus::from_code(s).expect("a status");
            Some(Restore {
                left_valid_until: d(lv),
                left_status: status(ls),
                valid_until: d(v),
                status: status(st),
            })
        };
        assert_eq!(
            restore_of(&event("AUTO_SIGNED", Some("2027-11-10"), None)).expect("ok"),
            r("2027-11-10", "active", "2026-11-10", "active")
        );
        assert_eq!(
            restore_of(&event("VISIT_CENTER", None, None)).expect("ok"),
            None
        );
        assert_eq!(
            restore_of(&event("SUSPENDED", None, None)).expect("ok"),
            r("2026-11-10", "suspended", "2026-11-10", "active")
        );
        // C1: cancelled from active or suspended, as the event recorded.
        assert_eq!(
            restore_of(&event("CANCELLED", None, Some("suspended"))).expect("ok"),
            r("2026-11-10", "cancelled", "2026-11-10", "suspended")
        );
        assert_eq!(
            restore_of(&event("CANCELLED", None, Some("active"))).expect("ok"),
            r("2026-11-10", "cancelled", "2026-11-10", "active")
        );
        assert!(restore_of(&event("AUTO_SIGNED", None, None)).is_err());
        // An unknown stored kind is refused where the row is read.
        assert!(EventKind::try_from("EXPIRED".to_string()).is_err());
    }

    #[test]
    fn a_required_feed_older_than_its_limit_trips_and_others_do_not() {
        // A required feed is stale.
        let s = settings();
        let fresh = "2026-11-26T23:00:00+08:00";
        let old = "2026-11-10T23:00:00+08:00";
        let why = check_feeds(&s, &[import(3, "residence", old, 10)], 0, now()).expect("stale");
        assert!(
            why.contains("feed residence is stale") && why.contains("16 days"),
            "{why}"
        );
        assert!(why.contains("brake.max_age_days.residence = 7"), "{why}");
        assert!(check_feeds(&s, &[import(3, "residence", fresh, 10)], 0, now()).is_none());
        // civil_status is not required by default; social insurance is monthly.
        assert!(check_feeds(&s, &[import(3, "civil-status", old, 10)], 0, now()).is_none());
        assert!(check_feeds(&s, &[import(3, "social-insurance", old, 10)], 0, now()).is_none());
    }

    #[test]
    fn a_sharp_row_drop_since_the_last_run_trips_only_above_min_previous_rows() {
        // A feed's row count dropped sharply.
        let s = settings();
        let at = "2026-11-26T23:00:00+08:00";
        let drop = [
            import(5, "residence", at, 400),
            import(2, "residence", at, 1000),
        ];
        let why = check_feeds(&s, &drop, 4, now()).expect("drop");
        assert!(why.contains("400 rows against 1000"), "{why}");
        // Already seen by a completed run: not again.
        assert!(check_feeds(&s, &drop, 5, now()).is_none());
        // Half exactly is not below half; a small previous import is not checked.
        let half = [
            import(5, "residence", at, 500),
            import(2, "residence", at, 1000),
        ];
        assert!(check_feeds(&s, &half, 0, now()).is_none());
        let small = [
            import(5, "residence", at, 1),
            import(2, "residence", at, 999),
        ];
        assert!(check_feeds(&s, &small, 0, now()).is_none());
    }

    #[test]
    fn a_delta_import_is_never_compared_nor_the_baseline_of_a_later_snapshot() {
        let s = settings();
        let at = "2026-11-26T23:00:00+08:00";
        // A night's delta after a full load.
        let night = [
            delta(5, "permits", at, 30),
            import(2, "permits", at, 100_000),
        ];
        assert!(check_feeds(&s, &night, 4, now()).is_none());
        // A snapshot after deltas is compared with the snapshot before
        // them, not with the last (small) delta.
        let grown = [
            import(9, "permits", at, 99_000),
            delta(8, "permits", at, 30),
            import(2, "permits", at, 100_000),
        ];
        assert!(check_feeds(&s, &grown, 8, now()).is_none());
        let shrunk = [
            import(9, "permits", at, 400),
            delta(8, "permits", at, 30),
            import(2, "permits", at, 100_000),
        ];
        let why = check_feeds(&s, &shrunk, 8, now()).expect("drop");
        assert!(
            why.contains("import 9 (permits-9.csv) has 400 rows against 100000 in import 2"),
            "{why}"
        );
        // A truncated snapshot followed by a delta the same night is still
        // seen: the newest snapshot, not the newest import, is compared.
        let hidden = [
            delta(10, "permits", at, 30),
            import(9, "permits", at, 400),
            import(2, "permits", at, 100_000),
        ];
        assert!(check_feeds(&s, &hidden, 8, now()).is_some());
        // Freshness still reads the newest import, whatever its delivery.
        let old = "2026-11-10T23:00:00+08:00";
        let stale = [delta(5, "residence", old, 3)];
        assert!(check_feeds(&s, &stale, 0, now())
            .expect("stale")
            .contains("feed residence is stale"));
    }
}
