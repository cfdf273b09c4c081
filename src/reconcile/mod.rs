//! The nightly run for one `as_of`: inbox import (R2a), lifecycle (R3),
//! window (R4), evidence (R5), decision (R6), effects (R7) and notices (R8).
//!
//! A run holds the job lock, so no import or other run overlaps it: it sees
//! each feed file wholly or not at all. It is read and written in pages of
//! permits, and each page — its events, notices and permit changes —
//! commits on its own: a crash leaves the committed pages, which are
//! final, and the next run for that `as_of` resumes with the rest; the
//! `completed` mark commits last.
//! The queries exclude decided cycles by themselves (AUTO_SIGNED moved
//! `valid_until`, a lifecycle step changed `status`, VISIT_CENTER closed the
//! cycle) and unique keys on events and notices make a double write
//! impossible, so a run that commits page by page resumes correctly.

pub mod dry_run;
mod pages;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use tracing::Instrument;

use crate::clock::Clock;
use crate::db::{
    Candidate, Db, EvidenceBounds, EvidenceSink, LifecycleCounts, NewEvent, PermitRow, RunBatch,
    RunCount, RunRecord, RunTx, WalkSink, Walked,
};
use crate::domain::{
    Channel, EventKind, MaritalStatus, Month, PaymentStatus, Reason, Reasons, ResidenceResult,
    RunStatus, SiStatus,
};
use crate::error::{Error, Result};
use crate::feeds::ImportOutcome;
use crate::outbox::notice::Notices;
use crate::settings::Settings;
use pages::{PlanKeys, Steps};
use rules::{Baseline, Outcome, Payment, Selected, Visit};

/// Permits read per query by the plan's walk of the register.
const PAGE: u32 = 10_000;

static PROGRESS: AtomicBool = AtomicBool::new(true);

/// Whether runs, and the inbox imports they start, draw progress bars when
/// stderr is a terminal (they never do otherwise). The daemon turns them
/// off: its log lines go to the same stderr.
pub fn show_progress(on: bool) {
    PROGRESS.store(on, Ordering::Relaxed);
}

/// What the brake checks before a run writes anything, read the way the
/// run will find the database (after its inbox): the newest import (the
/// run's import mark), the feed checks' verdict, the live register's size
/// (the plan counts the lifecycle steps). The run and the dry run both
/// start from it.
pub(crate) struct BrakeInputs {
    pub mark: i64,
    pub feeds_trip: Option<String>,
    pub register: Option<RegisterCount>,
}

/// The live register's size for the brake's lifecycle check, counted on a
/// connection of its own while the run plans: the count and the plan each
/// walk the whole register, and on two cores they go at once. Nothing is
/// written before it is read (the run holds the job lock, and writes only
/// after the plan is checked), so it counts the register the run finds.
/// Dropped unread, it is abandoned.
pub(crate) struct RegisterCount(tokio::task::JoinHandle<Result<u64>>);

impl RegisterCount {
    fn start(db: &Db) -> Self {
        let db = db.clone();
        RegisterCount(tokio::spawn(async move { db.live_register().await }))
    }

    async fn count(mut self) -> Result<u64> {
        (&mut self.0).await.map_err(|e| {
            Error::Runtime(anyhow::anyhow!("the brake's register count failed: {e}"))
        })?
    }
}

impl Drop for RegisterCount {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The brake's lifecycle counts: the plan's steps against the live
/// register, once its [`RegisterCount`] is done (`None`: the check is
/// off).
async fn lifecycle_counts(
    register: Option<RegisterCount>,
    plan: &RunPlan,
) -> Result<Option<LifecycleCounts>> {
    let Some(register) = register else {
        return Ok(None);
    };
    Ok(Some(LifecycleCounts {
        register: register.count().await?,
        suspend: plan.steps.suspend,
        cancel: plan.steps.cancel,
    }))
}

pub(crate) async fn brake_inputs(
    db: &Db,
    settings: &Settings,
    clock: Clock,
) -> Result<BrakeInputs> {
    let imports = db.latest_imports().await?;
    let mark = imports.iter().map(|i| i.import_id).max().unwrap_or(0);
    let feeds_trip = crate::brake::check_feeds(
        settings,
        &imports,
        db.completed_import_mark().await?,
        clock.now(),
    );
    let register = crate::brake::lifecycle_checked(settings).then(|| RegisterCount::start(db));
    Ok(BrakeInputs {
        mark,
        feeds_trip,
        register,
    })
}

/// The run's bar on stderr, by permits written (rows, rate, ETA); hidden
/// unless stderr is a terminal. Its total is set once the plan knows it.
fn progress_bar(as_of: NaiveDate) -> indicatif::ProgressBar {
    if !PROGRESS.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {wide_bar} {pos}/{len} permits {rate} eta {eta}",
        )
        .map(|style| {
            style.with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", s.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("run {as_of}"));
    bar
}

#[derive(Debug)]
pub enum RunOutcome {
    Completed(RunSummary),
    /// The safety brake held the run: its events are recorded,
    /// nothing applied or notified; `run.brake` says why.
    Held(RunSummary),
    /// C8: this `as_of` was completed before; nothing was done.
    AlreadyCompleted(RunRecord),
}

#[derive(Debug)]
pub struct RunSummary {
    pub run: RunRecord,
    pub inbox: Vec<(PathBuf, ImportOutcome)>,
    /// Events of the whole run (all attempts), by kind, reasons, channel.
    pub counts: Vec<RunCount>,
    /// What this attempt planned (a resumed PostgreSQL run plans only the
    /// cycles its crashed attempt left undecided). `planned.pending` is the
    /// run's PENDING count.
    pub planned: PlanCounts,
}

/// Runs the nightly reconciliation for `as_of`. `clock` stamps the run,
/// its events and notices and its inbox imports, and is the "now" of the
/// brake's feed ages.
pub async fn run(
    db: &Db,
    settings: &Settings,
    notices: &Notices,
    clock: Clock,
    as_of: NaiveDate,
) -> Result<RunOutcome> {
    let _lock = db
        .lock_jobs(|| {
            tracing::info!("another autosign import or run holds the job lock; waiting for it")
        })
        .await?;
    // Nothing runs, for any date, while a run is held (docs/rules.md,
    // "Safety brake"): not even the no-op of a completed date (C8).
    crate::brake::refuse_if_held(db).await?;
    if let Some(done) = db
        .run_for(as_of)
        .await?
        .filter(|r| r.status == RunStatus::Completed)
    {
        return Ok(RunOutcome::AlreadyCompleted(done));
    }
    if let Some(last) = db.latest_completed_run().await? {
        if last.as_of > as_of {
            return Err(Error::Refused(format!(
                "refusing to run for {as_of}: a later date, {}, was already completed (run {})",
                last.as_of, last.run_id
            )));
        }
    }
    let inbox =
        crate::inbox::import_new(db, settings, clock, PROGRESS.load(Ordering::Relaxed)).await?;
    let BrakeInputs {
        mark,
        feeds_trip,
        register,
    } = brake_inputs(db, settings, clock).await?;
    let bar = progress_bar(as_of);
    // The attempt's duration, from the moment its `started_at` is taken
    // (the runs table keeps it: whole-second timestamps cannot measure a
    // short run).
    let started = std::time::Instant::now();
    let mut tx = db.begin_run(as_of, &clock.now_rfc3339(), mark).await?;
    // A run resumed after a crash stays held if it was.
    if let (None, Some(why)) = (&tx.run().brake, &feeds_trip) {
        if let Err(e) = tx.hold(why, &clock.now_rfc3339()).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
    }
    let run = tx.run().clone();
    let span = tracing::info_span!("run", run_id = run.run_id, %as_of);
    let ctx = Ctx {
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
    decide(db, ctx, tx, run, inbox, started)
        .instrument(span)
        .await
}

/// The run proper, inside its span (`.instrument`, not a guard held across
/// awaits, so the future stays `Send` and the span is exact).
async fn decide(
    db: &Db,
    mut ctx: Ctx<'_>,
    mut tx: RunTx,
    run: RunRecord,
    inbox: Vec<(PathBuf, ImportOutcome)>,
    started: std::time::Instant,
) -> Result<RunOutcome> {
    if run.attempts > 1 {
        tracing::warn!(
            attempt = run.attempts,
            "resuming a run that did not complete"
        );
    }
    tracing::info!("run started");
    let as_of = ctx.as_of;
    let result = evaluate(&mut ctx, &mut tx).await;
    ctx.bar.finish_and_clear();
    let planned = match result {
        Ok(counts) => counts,
        Err(e) => {
            let _ = tx.rollback().await;
            return Err(e);
        }
    };
    crate::faults::point("run.before_complete");
    let pending = planned.pending;
    tx.complete(pending, &ctx.clock.now_rfc3339(), started.elapsed())
        .await?;
    // The summary counts every event of the run. A first attempt wrote
    // them all and counted them as it wrote (no second pass over millions
    // of events and their notices); a resumed run asks the database, which
    // holds whatever its crashed attempts committed (pages, on PostgreSQL)
    // beside this attempt's events.
    let counts = if run.attempts == 1 {
        ctx.written_counts()
    } else {
        db.run_counts(run.run_id).await?
    };
    let run = db.run_for(as_of).await?.unwrap_or(run);
    let summary = RunSummary {
        run,
        inbox,
        counts,
        planned,
    };
    if summary.run.brake.is_some() {
        // The caller reports the alert (exit 4, or the daemon's log line).
        tracing::info!(
            events = summary.counts.iter().map(|c| c.count).sum::<i64>(),
            brake = summary.run.brake.as_deref().unwrap_or(""),
            "run held by the safety brake"
        );
        return Ok(RunOutcome::Held(summary));
    }
    tracing::info!(
        pending,
        events = summary.counts.iter().map(|c| c.count).sum::<i64>(),
        "run completed"
    );
    Ok(RunOutcome::Completed(summary))
}

struct Ctx<'a> {
    settings: &'a Settings,
    notices: &'a Notices,
    /// Stamps `decided_at` and the notices' `created_at`.
    clock: Clock,
    as_of: NaiveDate,
    run_id: i64,
    /// Held by the safety brake: events only.
    held: bool,
    /// The live register, for the brake's lifecycle check, being counted
    /// (`None`: the check is off, or the count was read).
    register: Option<RegisterCount>,
    bar: &'a indicatif::ProgressBar,
    /// Events this attempt wrote.
    written: std::cell::RefCell<Tally>,
}

/// Events counted by kind, reasons and notice channel (`None` when no
/// notice was queued: a held run), as [`RunCount`]s count them.
type Tally = BTreeMap<(EventKind, Reasons, Option<Channel>), i64>;

/// The event for `permit` with its notice (R7, R8).
fn event(
    notices: &Notices,
    kind: EventKind,
    permit: PermitRow,
    reasons: Reasons,
    selected: &Selected,
) -> NewEvent {
    let new_valid_until = rules::new_valid_until(kind, permit.valid_until);
    let effect = rules::effect(kind, new_valid_until, permit.valid_until);
    let notice = notices.compose(kind, &permit, reasons, new_valid_until);
    // What `autosign revert` restores: R3 cancels an active or a suspended
    // permit (C1), and only the event can say which it was (C13: a permit
    // imported suspended has no SUSPENDED event).
    let prior_status = match kind {
        EventKind::Cancelled => Some(permit.status),
        _ => None,
    };
    NewEvent {
        permit_no: permit.permit_no,
        id_number: permit.id_number,
        kind,
        reasons,
        valid_until: permit.valid_until,
        new_valid_until,
        residence_visited_on: selected.visit.as_ref().map(|v| v.visited_on),
        residence_result: selected.visit.as_ref().map(|v| v.result),
        si_month: selected.payment.as_ref().map(|p| p.month),
        si_status: selected.payment.as_ref().map(|p| p.status),
        si_employer_uscc: selected.payment.as_ref().map(|p| p.employer_uscc.clone()),
        marital_status: selected.marital_status,
        prior_status,
        effect,
        notice,
    }
}

impl Ctx<'_> {
    async fn write(&self, tx: &mut RunTx, events: Vec<NewEvent>) -> Result<()> {
        let mut tally = Tally::new();
        for e in &events {
            let channel = (!self.held).then_some(e.notice.channel);
            *tally.entry((e.kind, e.reasons, channel)).or_default() += 1;
        }
        let batch = RunBatch {
            run_id: self.run_id,
            held: self.held,
            as_of: self.as_of,
            decided_at: self.clock.now_rfc3339(),
            events,
        };
        tx.write(batch).await?;
        let mut written = self.written.borrow_mut();
        for (key, n) in tally {
            *written.entry(key).or_default() += n;
        }
        crate::faults::point("run.page_written");
        Ok(())
    }

    /// [`Self::written`] as the summary's rows: those [`Db::run_counts`]
    /// reads back, ordered by the enumerations rather than by their codes
    /// as the database orders them (the summary only sums them).
    fn written_counts(&self) -> Vec<RunCount> {
        self.written
            .borrow()
            .iter()
            .map(|(&(kind, reasons, channel), &count)| RunCount {
                kind,
                reasons,
                channel,
                count,
            })
            .collect()
    }
}

/// The selected social-insurance row, kept compact in a plan.
#[derive(Debug, Clone)]
struct PlannedPayment {
    month: Month,
    status: PaymentStatus,
    employer_uscc: Box<str>,
}

/// A due permit's final decision (R6) as planned, with the evidence it
/// rests on (R5) but no notice text: at 10M permits a night plans ~600,000
/// of these, so they stay small (about 100 bytes each).
#[derive(Debug, Clone)]
pub struct PlannedDecision {
    permit_no: Box<str>,
    valid_until: NaiveDate,
    kind: EventKind,
    reasons: Reasons,
    visit: Option<Visit>,
    payment: Option<PlannedPayment>,
    marital_status: Option<MaritalStatus>,
}

impl PlannedDecision {
    pub fn permit_no(&self) -> &str {
        &self.permit_no
    }

    /// The cycle's `valid_until`.
    pub fn valid_until(&self) -> NaiveDate {
        self.valid_until
    }

    /// AUTO_SIGNED or VISIT_CENTER.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// Empty for AUTO_SIGNED.
    pub fn reasons(&self) -> Reasons {
        self.reasons
    }

    fn selected(&self) -> Selected {
        Selected {
            visit: self.visit.clone(),
            payment: self.payment.as_ref().map(|p| Payment {
                month: p.month,
                status: p.status,
                employer_uscc: p.employer_uscc.to_string(),
            }),
            marital_status: self.marital_status,
        }
    }
}

/// What a run will do, worked out before it writes anything: the due
/// permits with an open cycle (R4, C8), each decided in memory (R5, R6),
/// and the permits that take a lifecycle step (R3).
#[derive(Debug, Default)]
pub struct RunPlan {
    pub counts: PlanCounts,
    /// AUTO_SIGNED and VISIT_CENTER decisions in `permit_no` order.
    decisions: Vec<PlannedDecision>,
    /// The permits that take a lifecycle step, in `permit_no` order: the
    /// write pass reads them again by key and takes the step R3 gives.
    steps: Steps,
}

/// A plan's outcome counts (`due = auto_signed + visit_center + pending`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanCounts {
    /// Due permits with an undecided cycle.
    pub due: u64,
    pub auto_signed: u64,
    pub visit_center: u64,
    /// Due permits left PENDING (R6): nothing is written for them.
    pub pending: u64,
    pub pending_reasons: BTreeMap<Reason, u64>,
}

impl RunPlan {
    /// The planned final decision for this permit, if it gets one tonight.
    pub fn decision(&self, permit_no: &str) -> Option<&PlannedDecision> {
        self.decisions
            .binary_search_by(|d| (*d.permit_no).cmp(permit_no))
            .ok()
            .and_then(|i| self.decisions.get(i))
    }

    /// Every planned final decision, in `permit_no` order.
    pub fn decisions(&self) -> &[PlannedDecision] {
        &self.decisions
    }

    /// The permits step 2 writes an event for: decisions and lifecycle
    /// steps.
    pub fn permits(&self) -> usize {
        self.decisions.len() + self.steps.len()
    }
}

/// Plans the run, then carries it out. Returns the plan's counts (its
/// PENDING count and reasons go into the summary).
async fn evaluate(ctx: &mut Ctx<'_>, tx: &mut RunTx) -> Result<PlanCounts> {
    let plan = plan(ctx, tx).await?;
    tracing::info!(
        due = plan.counts.due,
        auto_signed = plan.counts.auto_signed,
        visit_center = plan.counts.visit_center,
        pending = plan.counts.pending,
        "run planned"
    );
    // The safety brake checks the plan here, before anything is written:
    // too many VISIT_CENTER holds the whole run (a run already held by its
    // feed checks, or resumed held, stays so).
    if !ctx.held {
        let lifecycle = lifecycle_counts(ctx.register.take(), &plan).await?;
        let trips = plan_trips(ctx, &plan.counts, lifecycle.as_ref());
        if !trips.is_empty() {
            tx.hold(&trips.join("; "), &ctx.clock.now_rfc3339()).await?;
            ctx.held = true;
        }
    }
    let counts = plan.counts.clone();
    apply(ctx, tx, plan).await?;
    Ok(counts)
}

/// The safety brake's checks of a plan, before anything is written: what
/// trips, if anything (the dry run reports the same).
fn plan_trips(ctx: &Ctx<'_>, c: &PlanCounts, lifecycle: Option<&LifecycleCounts>) -> Vec<String> {
    // A mass of lifecycle steps is checked beside the share: a wrong
    // date lapses the register whatever the evidence says. A PostgreSQL
    // run resumed after a crash passed both before its first page, and
    // its remaining steps are a smaller share, so it never trips here.
    [
        crate::brake::check_share(ctx.settings, c.due, c.visit_center),
        lifecycle.and_then(|l| crate::brake::check_lifecycle(ctx.settings, l)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The evidence horizon of a run (R5, C4): what any due permit may use.
fn evidence_bounds(rules: &crate::settings::Rules, as_of: NaiveDate) -> EvidenceBounds {
    let month_to = Month::of(as_of);
    EvidenceBounds {
        // The earliest window start of any due permit (valid_until >= as_of).
        visited_from: as_of - Duration::days(i64::from(rules.window_days)),
        visited_to: as_of,
        month_from: month_to.minus(rules.si_max_lag_months).to_string(),
        month_to: month_to.to_string(),
        civil_as_of_max: as_of,
    }
}

/// A due permit as the plan keeps it until its evidence is in.
struct DueEntry {
    permit_no: Box<str>,
    /// [`id_key`] of the holder's ID number.
    id: u64,
    /// The ID number itself, for the holders `RunTx::feed_evidence` looks
    /// up by key.
    id_number: Box<str>,
    valid_until: NaiveDate,
    si_status: SiStatus,
    marital_status: MaritalStatus,
    employer_uscc: Box<str>,
}

/// A holder's evidence as the feeds are read (R2 applied as rows arrive:
/// a later row with the same key replaces the earlier one). Visits, which
/// few holders have, are kept beside ([`DueEvidence::visits`]).
#[derive(Default)]
struct Slot {
    /// The latest month's row: the only one R5 selects.
    payment: Option<PlannedPayment>,
    /// The holder's latest row and its `as_of` (C4 applies after R2).
    civil: Option<(MaritalStatus, Option<NaiveDate>)>,
}

/// The due holders' evidence, keyed by [`id_key`].
struct DueEvidence {
    /// Each due holder's position in `slots`, by [`id_key`]; shared with
    /// [`DueEvidence::part`]s, which then cost a `Vec` of slots each (at
    /// 10M permits a map per part would add 30–40 MB to the run's peak:
    /// docs/benchmarks.md).
    index: Arc<HashMap<u64, u32>>,
    slots: Vec<Slot>,
    /// One per `visited_on`, for the due holders that have any.
    visits: HashMap<u64, Vec<Visit>>,
}

/// A citizen ID number as a number: the 17 digits times 11 plus the check
/// character (X = 10), below 2^63. Anything else (never stored: imports
/// validate) hashes into the upper half.
fn id_key(id: &str) -> u64 {
    let b = id.as_bytes();
    if b.len() == 18 && b[..17].iter().all(u8::is_ascii_digit) {
        let check = match b[17] {
            d @ b'0'..=b'9' => Some(u64::from(d - b'0')),
            b'X' => Some(10),
            _ => None,
        };
        if let Some(check) = check {
            let digits = b[..17]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            return digits * 11 + check;
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(id, &mut h);
    std::hash::Hasher::finish(&h) | (1 << 63)
}

impl DueEvidence {
    /// Evidence to be gathered for these holders ([`id_key`]s).
    fn for_holders(ids: impl Iterator<Item = u64>) -> Self {
        let mut index = HashMap::new();
        for id in ids {
            let next = index.len() as u32;
            index.entry(id).or_insert(next);
        }
        Self::empty(Arc::new(index))
    }

    fn empty(index: Arc<HashMap<u64, u32>>) -> Self {
        DueEvidence {
            slots: (0..index.len()).map(|_| Slot::default()).collect(),
            index,
            visits: HashMap::new(),
        }
    }

    fn slot(&self, id: u64) -> Option<&Slot> {
        let i = *self.index.get(&id)?;
        self.slots.get(i as usize)
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut Slot> {
        let i = *self.index.get(&id)?;
        self.slots.get_mut(i as usize)
    }
}

impl EvidenceSink for DueEvidence {
    /// Empty evidence for the same holders: what a part of a split read
    /// fills on another thread (the index is shared: a part costs a `Vec`
    /// of slots).
    fn part(&self) -> Self {
        Self::empty(Arc::clone(&self.index))
    }

    /// Takes in `later`, a part read from rows that came after all of this
    /// one's (R2: of two rows with the same key, the later wins; R5: the
    /// latest month counts).
    fn merge_later(&mut self, later: DueEvidence) {
        for (mine, theirs) in self.slots.iter_mut().zip(later.slots) {
            if let Some(p) = theirs.payment {
                if mine.payment.as_ref().is_none_or(|q| p.month >= q.month) {
                    mine.payment = Some(p);
                }
            }
            if theirs.civil.is_some() {
                mine.civil = theirs.civil;
            }
        }
        for (key, visits) in later.visits {
            let mine = self.visits.entry(key).or_default();
            for v in visits {
                match mine.iter_mut().find(|m| m.visited_on == v.visited_on) {
                    Some(m) => m.result = v.result,
                    None => mine.push(v),
                }
            }
        }
    }

    fn residence(&mut self, id_number: &str, visited_on: NaiveDate, result: ResidenceResult) {
        let key = id_key(id_number);
        if self.index.contains_key(&key) {
            let visits = self.visits.entry(key).or_default();
            match visits.iter_mut().find(|v| v.visited_on == visited_on) {
                Some(v) => v.result = result,
                None => visits.push(Visit { visited_on, result }),
            }
        }
    }

    fn payment(
        &mut self,
        id_number: &str,
        month: Month,
        status: PaymentStatus,
        employer_uscc: &str,
    ) {
        if let Some(slot) = self.slot_mut(id_key(id_number)) {
            // The same month again is a later row for the key: it wins.
            if slot.payment.as_ref().is_none_or(|p| month >= p.month) {
                slot.payment = Some(PlannedPayment {
                    month,
                    status,
                    employer_uscc: employer_uscc.into(),
                });
            }
        }
    }

    fn civil(&mut self, id_number: &str, marital_status: MaritalStatus, as_of: Option<NaiveDate>) {
        if let Some(slot) = self.slot_mut(id_key(id_number)) {
            slot.civil = Some((marital_status, as_of));
        }
    }
}

/// The night's walk as the plan keeps it: the permits that take a
/// lifecycle step (R3), and those due (R4) whose cycle is open (C8).
struct Walk<'a> {
    as_of: NaiveDate,
    rules: &'a crate::settings::Rules,
    steps: Steps,
    due: Vec<DueEntry>,
}

impl<'a> Walk<'a> {
    fn new(as_of: NaiveDate, rules: &'a crate::settings::Rules) -> Self {
        Walk {
            as_of,
            rules,
            steps: Steps::default(),
            due: Vec::new(),
        }
    }
}

impl WalkSink for Walk<'_> {
    fn page(&mut self, page: Vec<Walked>) -> Result<()> {
        let (as_of, rules) = (self.as_of, self.rules);
        for Walked {
            state: c,
            due: details,
        } in page
        {
            if let Some(kind) = rules::lifecycle(c.status, c.valid_until, as_of, rules) {
                self.steps.take(&c, kind)?;
                continue;
            }
            if !rules::is_due(c.status, c.valid_until, as_of, rules) {
                continue;
            }
            // The walk reads the details of every permit that may be due.
            let Some(p) = details else {
                return Err(Error::Runtime(anyhow::anyhow!(
                    "internal: permit {} is due but the walk did not read it",
                    c.permit_no
                )));
            };
            // C8: a cycle with a final decision in effect is not decided again.
            if rules::cycle_decided(&p.decisions) {
                continue;
            }
            self.due.push(DueEntry {
                si_status: p.si_status,
                marital_status: p.marital_status,
                permit_no: c.permit_no.into(),
                id: id_key(&p.id_number),
                id_number: p.id_number.into(),
                valid_until: c.valid_until,
                employer_uscc: p.employer_uscc.into(),
            });
        }
        Ok(())
    }

    fn part(&self) -> Self {
        Walk::new(self.as_of, self.rules)
    }

    fn merge_later(&mut self, later: Self) -> Result<()> {
        self.steps.append(later.steps)?;
        self.due.extend(later.due);
        Ok(())
    }

    fn merge_descending(&mut self, later: Self) -> Result<()> {
        self.steps.append_descending(later.steps)?;
        // In key order, as the plan keeps its decisions without sorting;
        // grown exactly, not doubled (676,029 due permits at 10M).
        self.due.reserve_exact(later.due.len());
        self.due.extend(later.due.into_iter().rev());
        Ok(())
    }
}

/// Step 1: walks the register once for the permits within the night's
/// bounds and sorts them by the rules: a lifecycle step (R3), kept for
/// the write pass, or due (R4), read with its holder and its cycle's
/// decisions and kept if its cycle is open (C8: `rules::cycle_decided`).
/// Then it reads the due holders' evidence (R5) by key in each feed
/// table, and decides each in memory (R6). Writes nothing. Memory: the
/// due permits and their holders' evidence (a few hundred bytes a due
/// permit: ~190 MB at 676,000) and the lifecycle steps, not the register
/// or the feeds.
async fn plan(ctx: &Ctx<'_>, tx: &mut RunTx) -> Result<RunPlan> {
    let rules = &ctx.settings.rules;
    let as_of = ctx.as_of;
    let bounds = evidence_bounds(rules, as_of);
    let candidates = rules::candidate_bounds(as_of, rules);
    let mut walk = Walk::new(as_of, rules);
    tx.walk(candidates, as_of, PAGE, &mut walk).await?;
    let Walk { mut steps, due, .. } = walk;
    steps.shrink_to_fit();
    tracing::debug!(steps = steps.len(), "lifecycle steps found");
    tracing::debug!(due = due.len(), "due permits read");
    let mut evidence = DueEvidence::for_holders(due.iter().map(|d| d.id));
    let ids: Vec<&str> = due.iter().map(|d| &*d.id_number).collect();
    tx.feed_evidence(&ids, &bounds, &mut evidence).await?;
    drop(ids);
    tracing::debug!("their evidence read");
    let mut plan = RunPlan {
        steps,
        ..RunPlan::default()
    };
    // At most one decision per due permit: sized once, the list does not
    // double (and briefly take three times its size) as it grows.
    plan.decisions.reserve_exact(due.len());
    for permit in due {
        let slot = evidence.slot(permit.id);
        let visits = evidence
            .visits
            .get(&permit.id)
            .map_or(&[][..], Vec::as_slice);
        let (outcome, selected) = decide_due(&permit, slot, visits, as_of, rules);
        let counts = &mut plan.counts;
        counts.due += 1;
        let (kind, reasons) = match outcome {
            Outcome::AutoSigned { .. } => {
                counts.auto_signed += 1;
                (EventKind::AutoSigned, Vec::new())
            }
            Outcome::VisitCenter { reasons } => {
                counts.visit_center += 1;
                (EventKind::VisitCenter, reasons)
            }
            Outcome::Pending { reasons } => {
                counts.pending += 1;
                for r in reasons {
                    *counts.pending_reasons.entry(r).or_insert(0) += 1;
                }
                continue;
            }
        };
        plan.decisions.push(PlannedDecision {
            permit_no: permit.permit_no,
            valid_until: permit.valid_until,
            kind,
            reasons: Reasons::of(&reasons),
            visit: selected.visit,
            payment: selected.payment.map(|p| PlannedPayment {
                month: p.month,
                status: p.status,
                employer_uscc: p.employer_uscc.into(),
            }),
            marital_status: selected.marital_status,
        });
    }
    // The walk returns permit_no in byte order; `decision` and the write
    // pass's merge ([`PlanKeys`]) rely on it.
    if !plan
        .decisions
        .windows(2)
        .all(|w| w[0].permit_no < w[1].permit_no)
    {
        plan.decisions.sort_by(|a, b| a.permit_no.cmp(&b.permit_no));
    }
    plan.steps = std::mem::take(&mut plan.steps).sorted()?;
    Ok(plan)
}

/// R5 and R6 for one due permit: the evidence that counts and the outcome.
fn decide_due(
    permit: &DueEntry,
    slot: Option<&Slot>,
    visits: &[Visit],
    as_of: NaiveDate,
    rules: &crate::settings::Rules,
) -> (Outcome, Selected) {
    let payments: Vec<Payment> = slot
        .and_then(|s| s.payment.as_ref())
        .map(|p| Payment {
            month: p.month,
            status: p.status,
            employer_uscc: p.employer_uscc.to_string(),
        })
        .into_iter()
        .collect();
    // C4: the holder's latest row counts only if it is not from the future.
    let civil = slot
        .and_then(|s| s.civil)
        .filter(|(_, at)| at.is_none_or(|at| at <= as_of))
        .map(|(m, _)| m);
    let baseline = Baseline {
        valid_until: permit.valid_until,
        si_status: permit.si_status,
        marital_status: permit.marital_status,
        employer_uscc: &permit.employer_uscc,
    };
    let selected = Selected {
        visit: rules::select_visit(visits, permit.valid_until, as_of, rules),
        payment: rules::select_payment(&payments, as_of, rules),
        marital_status: civil,
    };
    let reasons = rules::reasons(&baseline, &selected);
    (
        rules::decide(permit.valid_until, as_of, reasons, rules),
        selected,
    )
}

/// Step 2: the plan's permits in `permit_no` order (R3, R7, R8), read by
/// key a page at a time: each takes its lifecycle step (R3), or its
/// planned decision is written with its notice. The events come in the
/// order of the permits, so the audit trail's ids follow `permit_no`
/// however the night is paged. A page's events are made where the page
/// is read ([`RunTx::event_pages`]: a reader of its own, while this one
/// writes the page before).
async fn apply(ctx: &Ctx<'_>, tx: &mut RunTx, plan: RunPlan) -> Result<()> {
    let mut pages = plan_pages(ctx, tx, plan).await?;
    while let Some((read, events)) = pages.next().await? {
        ctx.write(tx, events).await?;
        ctx.bar.inc(read as u64);
    }
    Ok(())
}

/// Step 2's pages of events for `plan`, as the run writes them and the
/// dry run counts them; the progress bar's total is the plan's permits.
async fn plan_pages(
    ctx: &Ctx<'_>,
    tx: &mut RunTx,
    plan: RunPlan,
) -> Result<crate::db::EventPageReader> {
    let plan = Arc::new(plan);
    ctx.bar.set_length(plan.permits() as u64);
    let keys = PlanKeys::new(plan.clone(), ctx.settings.run.page_permits);
    tx.event_pages(Box::new(keys), event_maker(ctx, plan)).await
}

/// What step 2 makes of a page of candidates: each permit's lifecycle step
/// (R3), or its planned decision (R6), as an event with its notice (R7,
/// R8), in `permit_no` order.
fn event_maker(ctx: &Ctx<'_>, plan: Arc<RunPlan>) -> crate::db::MakeEvents {
    let rules = ctx.settings.rules.clone();
    let notices = ctx.notices.clone();
    let as_of = ctx.as_of;
    let make = move |page: Vec<Candidate>| -> Result<Vec<NewEvent>> {
        let mut events = Vec::new();
        for c in page {
            let status = c.permit.status;
            if let Some(kind) = rules::lifecycle(status, c.permit.valid_until, as_of, &rules) {
                events.push(event(
                    &notices,
                    kind,
                    c.permit,
                    Reasons::NONE,
                    &Selected::default(),
                ));
            } else if rules::is_due(status, c.permit.valid_until, as_of, &rules) {
                // C8: the plan left out cycles with a final decision, and
                // holds no decision for PENDING permits.
                if let Some(d) = plan
                    .decision(&c.permit.permit_no)
                    .filter(|d| d.valid_until == c.permit.valid_until)
                {
                    events.push(event(
                        &notices,
                        d.kind,
                        c.permit,
                        d.reasons(),
                        &d.selected(),
                    ));
                }
            }
        }
        // Events in permit_no order: the audit trail's insertion order is its
        // export order.
        events.sort_by(|a, b| a.permit_no.cmp(&b.permit_no));
        Ok(events)
    };
    Box::new(make)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn decision(no: &str) -> PlannedDecision {
        PlannedDecision {
            permit_no: no.into(),
            valid_until: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default(),
            kind: EventKind::AutoSigned,
            reasons: Reasons::default(),
            visit: None,
            payment: None,
            marital_status: None,
        }
    }

    #[test]
    fn plan_finds_a_decision_by_permit_no() {
        let plan = RunPlan {
            decisions: vec![decision("P1"), decision("P10"), decision("P2")],
            ..RunPlan::default()
        };
        assert_eq!(plan.decision("P10").map(|d| d.permit_no()), Some("P10"));
        assert_eq!(plan.decision("P2").map(|d| d.permit_no()), Some("P2"));
        assert!(plan.decision("P3").is_none());
    }

    /// The latest month's payment of a holder, or `None`.
    fn paid(e: &DueEvidence, id: &str) -> Option<(String, PaymentStatus, String)> {
        e.slot(id_key(id))
            .and_then(|s| s.payment.as_ref())
            .map(|p| (p.month.to_string(), p.status, p.employer_uscc.to_string()))
    }

    #[test]
    fn payments_read_in_two_parts_merge_as_if_read_in_one_pass() {
        // R2 and R5 across SQLite's split social-insurance scan: `later`
        // holds rows that came after all of `first`'s.
        const A: &str = "11010519491231002X";
        const B: &str = "110105194912310029";
        const C: &str = "110105194912310037";
        const USCC: &str = "91310000MA1FL0000X";
        let ids = [A, B, C, "110105194912310045"].map(id_key);
        let mut first = DueEvidence::for_holders(ids.into_iter());
        let mut later = first.part();
        let mut one_pass = DueEvidence::for_holders(ids.into_iter());
        let rows_first = [
            (A, "2026-11", "paid", "E1"),
            (B, "2026-11", "paid", "E1"),
            (C, "2026-10", "paid", "E1"),
        ];
        let rows_later = [
            // The same month again: the later row wins.
            (A, "2026-11", "stopped", "E2"),
            // An earlier month: the latest month still counts.
            (B, "2026-09", "stopped", "E2"),
            // A later month: it counts.
            (C, "2026-11", "stopped", USCC),
            // Not a due holder: ignored.
            ("110105194912310053", "2026-11", "paid", "E1"),
        ];
        let typed = |m: &str, st: &str| {
            let month = Month::parse(m).expect("a month");
            (month, PaymentStatus::parse(st).expect("a payment status"))
        };
        for (id, m, st, e) in rows_first {
            let (m, st) = typed(m, st);
            first.payment(id, m, st, e);
            one_pass.payment(id, m, st, e);
        }
        for (id, m, st, e) in rows_later {
            let (m, st) = typed(m, st);
            later.payment(id, m, st, e);
            one_pass.payment(id, m, st, e);
        }
        first.merge_later(later);
        for id in [A, B, C] {
            assert_eq!(paid(&first, id), paid(&one_pass, id), "{id}");
        }
        let stopped = PaymentStatus::parse("stopped").ok();
        assert_eq!(
            paid(&first, A).map(|p| (p.1, p.2)),
            stopped.map(|s| (s, "E2".into()))
        );
        assert_eq!(paid(&first, B).map(|p| p.0), Some("2026-11".to_string()));
        assert_eq!(paid(&first, C).map(|p| p.2), Some(USCC.to_string()));
        assert_eq!(paid(&first, "110105194912310045"), None);
    }

    #[test]
    fn visits_and_civil_status_read_in_a_later_part_win_as_later_rows() {
        // R2: the same visit day again, and a holder's civil status again,
        // in the part read after: the later rows win; a new day is added.
        const A: &str = "11010519491231002X";
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let mut first = DueEvidence::for_holders([id_key(A)].into_iter());
        let mut later = first.part();
        first.residence(A, day(1), ResidenceResult::Consistent);
        first.civil(A, MaritalStatus::Married, None);
        later.residence(A, day(1), ResidenceResult::NotFound);
        later.residence(A, day(2), ResidenceResult::Consistent);
        later.civil(A, MaritalStatus::Divorced, Some(day(3)));
        first.merge_later(later);
        let visits = &first.visits[&id_key(A)];
        let mut got: Vec<(NaiveDate, String)> = visits
            .iter()
            .map(|v| (v.visited_on, v.result.code().to_string()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (day(1), "not_found".to_string()),
                (day(2), "consistent".to_string())
            ]
        );
        let civil = first.slot(id_key(A)).and_then(|s| s.civil);
        assert_eq!(civil, Some((MaritalStatus::Divorced, Some(day(3)))));
    }
}
