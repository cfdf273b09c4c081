//! `autosign explain PERMIT_NO [--as-of DATE]`: why a permit got what it
//! got, rule by rule (R3 lifecycle, R4 window, C8 cycle, R5 evidence with
//! the file and line each row came from, R6 decision and deadline, R7
//! effect, R8 notice and its delivery) — for the auditor and the 962222
//! hotline clerk.
//!
//! Two modes, and the output says which:
//! - **recorded**: a run for that `as_of` wrote an event for the permit.
//!   The decision, reasons and evidence values are the run's own (its
//!   event, R9's columns); the file and line are those of the stored row
//!   the run read (the latest row for the key among the imports it had
//!   seen, `runs.import_mark`).
//! - **what-if**: no event for that date (a later date, a date with no run
//!   yet, or one whose run wrote nothing for this permit). The rules are
//!   the run's pure functions (`reconcile::rules`) applied to the register
//!   and feeds as stored now. Nothing is written: no run row, no event, no
//!   notice, no import, and no lock is taken.
//!
//! Personal data is masked as `status` masks it: the name to its first
//! character, the ID number to its first 6 and last 4 characters, the
//! recipient to `138****8000` / `z***@example.com`, the name inside a
//! notice text to `张**`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{Duration, NaiveDate};
use serde::Serialize;

use crate::clock::Clock;
use crate::db::explain::{HolderRows, RowOrigin, StoredCivil, StoredPayment, StoredVisit};
use crate::db::{AuditRow, Db, NotificationRow, PermitRow, RunRecord};
use crate::domain::{
    mask_id_str, mask_name, Channel, EventKind, EventState, MaritalStatus, Month, NoticeStatus,
    PaymentStatus, PermitStatus, Reason, Reasons, ResidenceResult, RunStatus, SiStatus,
};
use crate::error::{Error, Result};
use crate::outbox::notice::Notices;
use crate::reconcile::rules::{self, Baseline, Outcome, Payment, Selected, Visit};
use crate::settings::{LapsePolicy, Rules, Settings};

/// The whole answer; `--json` prints it as is. Field names are stable.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub permit_no: String,
    pub as_of: NaiveDate,
    /// `recorded` (from what a run wrote) or `what_if` (computed now,
    /// nothing written).
    pub mode: &'static str,
    /// One line saying which, and on what data.
    pub basis: String,
    /// Context: a run that wrote nothing for this permit, a date a run
    /// would refuse, a register row rewritten since the run, settings that
    /// may differ from the run's.
    pub notes: Vec<String>,
    pub holder: Holder,
    pub permit: PermitView,
    /// The run that recorded the explained event (recorded mode).
    pub run: Option<RunView>,
    pub lifecycle: LifecycleView,
    /// `None` when R3 took a step (the window is not looked at).
    pub window: Option<WindowView>,
    /// `None` when the permit is not due.
    pub cycle: Option<CycleView>,
    /// `None` unless the permit's cycle was (or would be) decided from
    /// evidence.
    pub evidence: Option<EvidenceView>,
    pub decision: DecisionView,
    pub effect: Option<EffectView>,
    /// The notice of the explained event and its delivery, or the notice a
    /// run would queue (what-if: `recorded` false).
    pub notices: Vec<NoticeView>,
    /// Every event recorded for this permit, oldest first: the dates that
    /// have a recorded explanation.
    pub history: Vec<EventRef>,
}

#[derive(Debug, Serialize)]
pub struct Holder {
    /// Family name only.
    pub name: String,
    /// First 6 and last 4 characters.
    pub id_number: String,
}

#[derive(Debug, Serialize)]
pub struct PermitView {
    /// As stored now.
    pub status: PermitStatus,
    pub valid_until: NaiveDate,
    /// The registration baseline R5 compares with.
    pub si_status: SiStatus,
    pub employer_uscc: String,
    pub marital_status: MaritalStatus,
    pub street_code: String,
    pub service_center: Option<String>,
    /// The register row's last import.
    pub source: Option<Source>,
}

/// Where a row came from: its import and its line in the imported file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Source {
    pub feed: Option<String>,
    pub file: Option<String>,
    /// Physical line in the file; `None` when not recorded (imported
    /// before lines were kept).
    pub line: Option<u64>,
    pub import_id: i64,
    pub imported_at: Option<String>,
}

impl From<&RowOrigin> for Source {
    fn from(o: &RowOrigin) -> Self {
        Source {
            feed: o.feed.clone(),
            file: o.file_name.clone(),
            line: o.line,
            import_id: o.import_id,
            imported_at: o.imported_at.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RunView {
    pub run_id: i64,
    pub as_of: NaiveDate,
    pub status: RunStatus,
    /// The newest import the run had seen.
    pub import_mark: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct LifecycleView {
    pub rule: &'static str,
    /// `SUSPENDED`, `CANCELLED`, or `None`: no step.
    pub step: Option<String>,
    pub valid_until: NaiveDate,
    /// The last day of the grace period (`valid_until + grace_days`).
    pub grace_until: Option<NaiveDate>,
    pub lapse_policy: &'static str,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct WindowView {
    pub rule: &'static str,
    pub due: bool,
    pub valid_until: NaiveDate,
    pub window_opens: Option<NaiveDate>,
    /// `valid_until - as_of`.
    pub days_left: i64,
    pub window_days: u32,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct CycleView {
    /// The cycle's key with the permit number.
    pub valid_until: NaiveDate,
    /// The final decision that closed it (C8), if any.
    pub decided_by: Option<EventRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRef {
    pub run_id: i64,
    pub as_of: NaiveDate,
    pub decision: String,
    /// Listed as codes.
    pub reasons: Reasons,
    pub valid_until: NaiveDate,
    /// `applied`, `held`, `void`, `not_applied` or `reverted` (as in the
    /// audit export).
    pub state: String,
}

#[derive(Debug, Serialize)]
pub struct EvidenceView {
    pub residence: ResidenceEvidence,
    pub social_insurance: SocialInsuranceEvidence,
    pub civil_status: CivilEvidence,
}

#[derive(Debug, Serialize)]
pub struct ResidenceEvidence {
    pub rule: &'static str,
    /// Visits on these days count (`valid_until - window_days` to `as_of`).
    pub from: Option<NaiveDate>,
    pub to: NaiveDate,
    pub visit: Option<VisitView>,
    pub reason: Option<String>,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct VisitView {
    pub visited_on: NaiveDate,
    pub result: ResidenceResult,
    pub officer_id: Option<String>,
    /// The stored row; `None` when it is no longer stored.
    pub source: Option<Source>,
}

#[derive(Debug, Serialize)]
pub struct SocialInsuranceEvidence {
    pub rule: &'static str,
    /// Months that count (`month(as_of) - si_max_lag_months` to
    /// `month(as_of)`).
    pub from_month: String,
    pub to_month: String,
    pub payment: Option<PaymentView>,
    pub reason: Option<String>,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct PaymentView {
    pub month: Month,
    pub status: PaymentStatus,
    pub employer_uscc: String,
    pub employer_name: Option<String>,
    pub source: Option<Source>,
}

#[derive(Debug, Serialize)]
pub struct CivilEvidence {
    pub rule: &'static str,
    /// The holder's latest civil-status record (R2), counted or not.
    pub record: Option<CivilView>,
    /// Whether the record counted (C4: not when dated after `as_of`).
    pub counted: bool,
    pub reason: Option<String>,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct CivilView {
    pub marital_status: MaritalStatus,
    pub as_of: Option<NaiveDate>,
    pub source: Option<Source>,
}

#[derive(Debug, Serialize)]
pub struct DecisionView {
    pub rule: &'static str,
    /// `AUTO_SIGNED`, `VISIT_CENTER`, `PENDING`, `SUSPENDED`, `CANCELLED`,
    /// `NOT_DUE` (no step, not in the window) or `ALREADY_DECIDED` (C8).
    pub outcome: String,
    pub reasons: Vec<String>,
    pub reasons_zh: Vec<String>,
    /// R6: from this day missing evidence alone sends the holder to the
    /// center (`valid_until - decision_deadline_days`).
    pub decision_deadline: Option<NaiveDate>,
    /// Recorded events: `applied`, `held`, `void`, `not_applied`,
    /// `reverted`; what-if: `None`.
    pub state: Option<String>,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct EffectView {
    pub rule: &'static str,
    pub valid_until: NaiveDate,
    pub new_valid_until: Option<NaiveDate>,
    /// The permit's status after the event.
    pub status_after: PermitStatus,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct NoticeView {
    /// Whether the notice is in the outbox (`false`: what a run would
    /// queue).
    pub recorded: bool,
    pub notification_id: Option<i64>,
    pub kind: EventKind,
    pub channel: Channel,
    /// Masked.
    pub recipient: String,
    pub status: NoticeStatus,
    pub attempts: i64,
    pub created_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub sent_at: Option<String>,
    /// Scrubbed of numbers and credentials.
    pub last_error: Option<String>,
    /// The text, the holder's name masked.
    pub message: String,
}

/// A permit number as `explain` takes it: trimmed like every feed value
/// (C10), non-empty, and no longer than any stored one can be.
pub fn parse_permit_no(arg: &str) -> Result<String> {
    let no = arg.trim();
    if no.is_empty() {
        return Err(Error::Usage(
            "PERMIT_NO is empty: give a permit number (permit_no in the register)".into(),
        ));
    }
    let n = no.chars().count();
    if n > crate::feeds::MAX_FIELD_CHARS {
        return Err(Error::Usage(format!(
            "PERMIT_NO has {n} characters; a stored permit number has at most {}",
            crate::feeds::MAX_FIELD_CHARS
        )));
    }
    Ok(no.to_string())
}

/// The refusal for a permit number not in the register (exit 2). An ID
/// or phone number typed instead is not echoed in clear.
fn not_found(permit_no: &str) -> String {
    if let Ok(id) = crate::domain::IdNumber::parse(permit_no) {
        return format!(
            "no permit {:?} in the register: that is an ID number; explain takes a permit number",
            id.masked()
        );
    }
    if let Ok(phone) = crate::domain::Phone::parse(permit_no) {
        return format!(
            "no permit {:?} in the register: that is a phone number; explain takes a permit number",
            phone.masked()
        );
    }
    format!("no permit {permit_no:?} in the register")
}

/// Explains `permit_no` at `as_of`: from what a run recorded for that date
/// if it recorded an event for the permit, else as a what-if. Reads only.
pub async fn explain(
    db: &Db,
    settings: &Settings,
    notices: &Notices,
    clock: Clock,
    permit_no: &str,
    as_of: NaiveDate,
) -> Result<Explanation> {
    let permit = db
        .permit(permit_no)
        .await?
        .ok_or_else(|| Error::Refused(not_found(permit_no)))?;
    let origin = db.permit_origin(permit_no).await?;
    let events = db.events_for(permit_no).await?;
    let outbox = db.notifications_for(permit_no).await?;
    let rows = db.holder_rows(&permit.id_number).await?;
    let ctx = Ctx {
        settings,
        rules: &settings.rules,
        notices,
        clock,
        permit: &permit,
        as_of,
    };
    let mut out = ctx.skeleton(origin.as_ref(), &events);
    // The event that counts for the date: an applied one if any (a void,
    // held or reverted one may sit beside it), else the latest.
    let on_date: Vec<&AuditRow> = events.iter().filter(|e| e.as_of == as_of).collect();
    let chosen = on_date
        .iter()
        .rev()
        .find(|e| e.state == EventState::Applied)
        .or(on_date.last());
    match chosen {
        Some(e) => {
            let run = db.run_by_id(e.run_id).await?;
            ctx.recorded(&mut out, e, run.as_ref(), origin.as_ref(), &rows, &outbox)?;
            for other in on_date.iter().filter(|o| !std::ptr::eq(**o, *e)) {
                out.notes.push(format!(
                    "run {} also recorded {} for this date ({}): not the one explained",
                    other.run_id, other.decision, other.state
                ));
            }
        }
        None => {
            ctx.what_if_notes(db, &mut out).await?;
            ctx.what_if(&mut out, &events, &rows)?;
        }
    }
    Ok(out)
}

struct Ctx<'a> {
    settings: &'a Settings,
    rules: &'a Rules,
    notices: &'a Notices,
    /// Today, for a what-if's note on C17.
    clock: Clock,
    permit: &'a PermitRow,
    as_of: NaiveDate,
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

fn event_ref(e: &AuditRow) -> EventRef {
    EventRef {
        run_id: e.run_id,
        as_of: e.as_of,
        decision: e.decision.code().to_string(),
        reasons: e.reasons,
        valid_until: e.valid_until,
        state: e.state.code().to_string(),
    }
}

/// The recipient as `status` and the logs show it.
fn mask_recipient(channel: Channel, recipient: &str) -> String {
    if recipient.is_empty() {
        return String::new();
    }
    match channel {
        Channel::Sms => crate::domain::Phone::parse(recipient)
            .map(|p| p.masked())
            .unwrap_or_else(|_| "***".into()),
        Channel::Email => crate::domain::Email::parse(recipient)
            .map(|e| e.masked())
            .unwrap_or_else(|_| "***".into()),
        Channel::None => "***".into(),
    }
}

/// The row per key among those `visible` (the feed tables hold one per
/// key; of two with the same key, the later in `rows` would win, as R2).
fn latest_by_key<T, K: Ord>(
    rows: &[T],
    key: impl Fn(&T) -> K,
    visible: impl Fn(&T) -> bool,
) -> BTreeMap<K, &T> {
    let mut out = BTreeMap::new();
    for r in rows.iter().filter(|r| visible(r)) {
        out.insert(key(r), r);
    }
    out
}

/// Whether a run that had seen imports up to `mark` could have read a row
/// of this import (`None`: a run recorded before marks were kept, or the
/// what-if, which sees everything stored).
fn seen(mark: Option<i64>, origin: &RowOrigin) -> bool {
    mark.is_none_or(|m| origin.import_id <= m)
}

/// What an evidence row's absence from the stored feed means.
fn gone_note(key: &str, mark: Option<i64>, later: Option<&RowOrigin>) -> String {
    match later {
        Some(o) => format!(
            "the row the run read for {key} was replaced since by import {}{} (R2); \
             the values shown are the run's",
            o.import_id,
            o.file_name
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        ),
        None => format!(
            "the row the run read for {key} is no longer stored{} (purged by retention?); \
             the values shown are the run's",
            mark.map(|m| format!(" among imports up to {m}"))
                .unwrap_or_default()
        ),
    }
}

impl Ctx<'_> {
    fn window_opens(&self) -> Option<NaiveDate> {
        self.permit
            .valid_until
            .checked_sub_signed(days(self.rules.window_days))
    }

    fn deadline(&self, valid_until: NaiveDate) -> Option<NaiveDate> {
        valid_until.checked_sub_signed(days(self.rules.decision_deadline_days))
    }

    fn grace_until(&self, valid_until: NaiveDate) -> Option<NaiveDate> {
        valid_until.checked_add_signed(days(self.rules.grace_days))
    }

    fn lapse_policy(&self) -> &'static str {
        match self.rules.lapse_policy {
            LapsePolicy::Cancel => "cancel",
            LapsePolicy::Suspend => "suspend",
        }
    }

    fn month_bounds(&self) -> (Month, Month) {
        let to = Month::of(self.as_of);
        (to.minus(self.rules.si_max_lag_months), to)
    }

    /// Everything that does not depend on the mode.
    fn skeleton(&self, origin: Option<&RowOrigin>, events: &[AuditRow]) -> Explanation {
        let p = self.permit;
        Explanation {
            permit_no: p.permit_no.clone(),
            as_of: self.as_of,
            mode: "what_if",
            basis: String::new(),
            notes: Vec::new(),
            holder: Holder {
                name: mask_name(&p.name),
                id_number: mask_id_str(&p.id_number),
            },
            permit: PermitView {
                status: p.status,
                valid_until: p.valid_until,
                si_status: p.si_status,
                employer_uscc: p.employer_uscc.clone(),
                marital_status: p.marital_status,
                street_code: p.street_code.clone(),
                service_center: self.notices.center(&p.street_code).map(|c| c.name.clone()),
                source: origin.map(Source::from),
            },
            run: None,
            lifecycle: LifecycleView {
                rule: "R3",
                step: None,
                valid_until: p.valid_until,
                grace_until: self.grace_until(p.valid_until),
                lapse_policy: self.lapse_policy(),
                why: String::new(),
            },
            window: None,
            cycle: None,
            evidence: None,
            decision: DecisionView {
                rule: "R6",
                outcome: String::new(),
                reasons: Vec::new(),
                reasons_zh: Vec::new(),
                decision_deadline: None,
                state: None,
                why: String::new(),
            },
            effect: None,
            notices: Vec::new(),
            history: events.iter().map(event_ref).collect(),
        }
    }

    fn lifecycle_why(
        &self,
        step: Option<EventKind>,
        status: PermitStatus,
        valid_until: NaiveDate,
    ) -> String {
        let as_of = self.as_of;
        let grace = self.rules.grace_days;
        let grace_until = self
            .grace_until(valid_until)
            .map(|d| d.to_string())
            .unwrap_or_else(|| "beyond the calendar".into());
        match step {
            Some(EventKind::Cancelled) => format!(
                "as_of {as_of} is more than grace_days ({grace}) after valid_until \
                 {valid_until} (grace ended {grace_until}): cancelled directly, whether \
                 active or suspended (R3, C1)"
            ),
            Some(_) => format!(
                "valid_until {valid_until} is before as_of {as_of}, within the grace period \
                 (ends {grace_until}): the active permit is suspended (R3)"
            ),
            None if status == PermitStatus::Cancelled => {
                "cancelled: final, never evaluated again (R3, C5)".to_string()
            }
            None if valid_until >= as_of => {
                format!("no step: valid_until {valid_until} is not before as_of {as_of}")
            }
            None if status == PermitStatus::Suspended => format!(
                "no step: already suspended; cancelled once as_of is after {grace_until} \
                 (lapse_policy {})",
                self.lapse_policy()
            ),
            None => format!(
                "no step: lapse_policy {} keeps a lapsed permit suspended",
                self.lapse_policy()
            ),
        }
    }

    fn window_view(&self, valid_until: NaiveDate, status: PermitStatus) -> WindowView {
        let days_left = (valid_until - self.as_of).num_days();
        let w = self.rules.window_days;
        let opens = valid_until.checked_sub_signed(days(w));
        let due = status == PermitStatus::Active && (0..=i64::from(w)).contains(&days_left);
        let opens_text = opens.map(|d| d.to_string()).unwrap_or_default();
        let why = if status != PermitStatus::Active {
            format!("not due: the permit is {status}; only active permits are due (R4)")
        } else if due {
            format!(
                "due: valid_until {valid_until} is {days_left} days after as_of {} \
                 (window {w} days, opened {opens_text})",
                self.as_of
            )
        } else if days_left > i64::from(w) {
            format!(
                "not due: valid_until {valid_until} is {days_left} days away; the window of \
                 {w} days opens {opens_text}"
            )
        } else {
            format!("not due: valid_until {valid_until} has passed")
        };
        WindowView {
            rule: "R4",
            due,
            valid_until,
            window_opens: opens,
            days_left,
            window_days: w,
            why,
        }
    }

    /// R6's explanation of a final decision or PENDING.
    fn decision_why(&self, outcome: &str, reasons: &[Reason], valid_until: NaiveDate) -> String {
        let deadline = self
            .deadline(valid_until)
            .map(|d| d.to_string())
            .unwrap_or_default();
        let n = self.rules.decision_deadline_days;
        let codes = reasons
            .iter()
            .map(|r| r.code())
            .collect::<Vec<_>>()
            .join(", ");
        match outcome {
            "AUTO_SIGNED" => "no reason against it (R5): endorsed automatically".to_string(),
            "PENDING" => format!(
                "only missing evidence ({codes}) and the decision deadline {deadline} \
                 (valid_until − {n} days) not reached: no decision, evaluated again at the next \
                 run; still missing on {deadline}, it becomes VISIT_CENTER"
            ),
            _ if reasons.iter().any(|r| !r.awaits_evidence()) => format!(
                "{codes}: a change sends the holder to the center at once, whatever the deadline"
            ),
            _ => format!(
                "evidence still missing ({codes}) with the decision deadline {deadline} \
                 (valid_until − {n} days) reached"
            ),
        }
    }

    fn effect_view(
        &self,
        kind: EventKind,
        valid_until: NaiveDate,
        new: Option<NaiveDate>,
    ) -> EffectView {
        let center = self
            .notices
            .center(&self.permit.street_code)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "the service center of the holder's street".into());
        let (status_after, why) = match kind {
            EventKind::AutoSigned => (
                PermitStatus::Active,
                format!(
                    "valid_until moves one year, {valid_until} → {}; the cycle ends",
                    new.map(|d| d.to_string()).unwrap_or_default()
                ),
            ),
            EventKind::VisitCenter => (
                PermitStatus::Active,
                format!(
                    "permit unchanged; the holder goes to {center} by {valid_until} with the card \
                     and the materials the notice lists; the cycle is closed (C8)"
                ),
            ),
            EventKind::Suspended => (
                PermitStatus::Suspended,
                format!(
                    "use of the permit is suspended; endorsing at a center by {} restores it",
                    self.grace_until(valid_until)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ),
            ),
            EventKind::Cancelled => (
                PermitStatus::Cancelled,
                "the permit is cancelled (final)".to_string(),
            ),
        };
        EffectView {
            rule: "R7",
            valid_until,
            new_valid_until: new,
            status_after,
            why,
        }
    }

    fn notice_view(&self, n: &NotificationRow) -> NoticeView {
        let s = self.settings;
        let secrets = crate::outbox::channel::Secrets::new(&[&s.sms.auth_token, &s.email.password]);
        NoticeView {
            recorded: true,
            notification_id: Some(n.notification_id),
            kind: n.kind,
            channel: n.channel,
            recipient: mask_recipient(n.channel, &n.recipient),
            status: n.status,
            attempts: n.attempts,
            created_at: Some(n.created_at.clone()),
            next_attempt_at: n.next_attempt_at.clone(),
            sent_at: n.sent_at.clone(),
            last_error: n
                .last_error
                .as_deref()
                .map(|e| secrets.redact(&crate::domain::mask_numbers_in_text(e))),
            message: self.notices.mask_name_in(n.kind, &n.message),
        }
    }

    /// The notice a run would queue for `kind` (R8), not stored.
    fn would_notice(
        &self,
        kind: EventKind,
        reasons: &[Reason],
        new: Option<NaiveDate>,
    ) -> NoticeView {
        let n = self
            .notices
            .compose(kind, self.permit, Reasons::of(reasons), new);
        NoticeView {
            recorded: false,
            notification_id: None,
            kind,
            channel: n.channel,
            recipient: mask_recipient(n.channel, &n.recipient),
            status: n.status,
            attempts: 0,
            created_at: None,
            next_attempt_at: None,
            sent_at: None,
            last_error: None,
            message: self.notices.mask_name_in(kind, &n.message),
        }
    }

    fn set_decision(
        &self,
        out: &mut Explanation,
        outcome: &str,
        reasons: &[Reason],
        valid_until: NaiveDate,
        why: String,
    ) {
        out.decision.outcome = outcome.to_string();
        out.decision.reasons = reasons.iter().map(|r| r.code().to_string()).collect();
        out.decision.reasons_zh = reasons.iter().map(|r| r.label_zh().to_string()).collect();
        out.decision.why = why;
        if matches!(outcome, "AUTO_SIGNED" | "VISIT_CENTER" | "PENDING") {
            out.decision.decision_deadline = self.deadline(valid_until);
        }
    }

    // ----- recorded -----

    fn recorded(
        &self,
        out: &mut Explanation,
        e: &AuditRow,
        run: Option<&RunRecord>,
        permit_origin: Option<&RowOrigin>,
        rows: &HolderRows,
        outbox: &[NotificationRow],
    ) -> Result<()> {
        let kind = e.decision;
        let mark = run.and_then(|r| r.import_mark);
        out.mode = "recorded";
        out.basis = format!(
            "recorded: run {} for as_of {} wrote this {} event ({}); the decision, reasons and \
             evidence values are the run's, each file and line the stored row it read",
            e.run_id, e.as_of, e.decision, e.state
        );
        out.run = run.map(|r| RunView {
            run_id: r.run_id,
            as_of: r.as_of,
            status: r.status,
            import_mark: r.import_mark,
        });
        out.notes.push(
            "dates derived from settings (window, deadline, grace) use the current \
             configuration"
                .into(),
        );
        if let (Some(o), Some(m)) = (permit_origin, mark) {
            if o.import_id > m {
                out.notes.push(format!(
                    "the register row was rewritten by import {} after this run; the baseline \
                     shown (si_status, employer, marital status) is today's",
                    o.import_id
                ));
            }
        }
        out.decision.state = Some(e.state.code().to_string());
        let reasons = e.reasons.to_vec();
        match kind {
            EventKind::Suspended | EventKind::Cancelled => {
                out.lifecycle.step = Some(kind.code().to_string());
                out.lifecycle.valid_until = e.valid_until;
                out.lifecycle.grace_until = self.grace_until(e.valid_until);
                // A SUSPENDED step is taken on an active permit only (R3).
                out.lifecycle.why =
                    self.lifecycle_why(Some(kind), PermitStatus::Active, e.valid_until);
                let why = "a lifecycle step (R3, above), not a decision on evidence".to_string();
                self.set_decision(out, kind.code(), &[], e.valid_until, why);
            }
            EventKind::AutoSigned | EventKind::VisitCenter => {
                out.lifecycle.valid_until = e.valid_until;
                out.lifecycle.grace_until = self.grace_until(e.valid_until);
                out.lifecycle.why = self.lifecycle_why(None, PermitStatus::Active, e.valid_until);
                out.window = Some(self.window_view(e.valid_until, PermitStatus::Active));
                out.cycle = Some(CycleView {
                    valid_until: e.valid_until,
                    decided_by: Some(event_ref(e)),
                });
                out.evidence =
                    Some(self.recorded_evidence(e, &reasons, mark, rows, &mut out.notes)?);
                let why = self.decision_why(kind.code(), &reasons, e.valid_until);
                self.set_decision(out, kind.code(), &reasons, e.valid_until, why);
            }
        }
        out.effect = Some(self.effect_view(kind, e.valid_until, e.new_valid_until));
        if e.state != EventState::Applied {
            if let Some(f) = out.effect.as_mut() {
                f.why = format!("not in effect ({}): {}", e.state, state_meaning(e.state));
                f.status_after = self.permit.status;
            }
        }
        out.notices = outbox
            .iter()
            .filter(|n| {
                n.run_id == e.run_id && n.kind == e.decision && n.cycle_valid_until == e.valid_until
            })
            .map(|n| self.notice_view(n))
            .collect();
        Ok(())
    }

    fn recorded_evidence(
        &self,
        e: &AuditRow,
        reasons: &[Reason],
        mark: Option<i64>,
        rows: &HolderRows,
        notes: &mut Vec<String>,
    ) -> Result<EvidenceView> {
        let has = |r: Reason| reasons.contains(&r).then_some(r);
        // Residence: the recorded visit, and the stored row for its key
        // the run could have read.
        let visit = match (e.residence_visited_on, &e.residence_result) {
            (Some(day), Some(result)) => {
                let key = |v: &&StoredVisit| v.visited_on == day;
                let read = rows
                    .visits
                    .iter()
                    .rev()
                    .filter(key)
                    .find(|v| seen(mark, &v.origin));
                if read.is_none() {
                    let later = rows.visits.iter().rev().find(key).map(|v| &v.origin);
                    notes.push(gone_note(&format!("the visit of {day}"), mark, later));
                }
                Some(VisitView {
                    visited_on: day,
                    result: *result,
                    officer_id: read.map(|v| v.officer_id.clone()).filter(|o| !o.is_empty()),
                    source: read.map(|v| Source::from(&v.origin)),
                })
            }
            _ => None,
        };
        let residence_reason = has(Reason::AddressNotVerified).or(has(Reason::AddressChanged));
        let payment = match (&e.si_month, &e.si_status) {
            (Some(month), Some(status)) => {
                let key = |p: &&StoredPayment| p.month == *month;
                let read = rows
                    .payments
                    .iter()
                    .rev()
                    .filter(key)
                    .find(|p| seen(mark, &p.origin));
                if read.is_none() {
                    let later = rows.payments.iter().rev().find(key).map(|p| &p.origin);
                    notes.push(gone_note(&format!("the month {month}"), mark, later));
                }
                Some(PaymentView {
                    month: *month,
                    status: *status,
                    employer_uscc: e.si_employer_uscc.clone().unwrap_or_default(),
                    employer_name: read
                        .map(|p| p.employer_name.clone())
                        .filter(|n| !n.is_empty()),
                    source: read.map(|p| Source::from(&p.origin)),
                })
            }
            _ => None,
        };
        let si_reason = has(Reason::SocialInsuranceMissing)
            .or(has(Reason::SocialInsuranceChanged))
            .or(has(Reason::EmployerChanged));
        // Civil status: the holder's latest record among what the run saw.
        let latest = rows.civil.iter().rev().find(|c| seen(mark, &c.origin));
        let record = match (&e.marital_status, latest) {
            (Some(m), Some(c)) if c.marital_status == *m => Some(civil_view(c)),
            (Some(m), _) => {
                notes.push(gone_note(
                    "the civil-status record",
                    mark,
                    rows.civil.last().map(|c| &c.origin),
                ));
                Some(CivilView {
                    marital_status: *m,
                    as_of: None,
                    source: None,
                })
            }
            // Recorded as none: either no record, or a record dated after
            // the run's as_of (C4); the stored one says which.
            (None, Some(c)) if c.as_of.is_some_and(|d| d > e.as_of) => Some(civil_view(c)),
            (None, _) => None,
        };
        let counted = e.marital_status.is_some();
        let civil_reason = has(Reason::MaritalStatusChanged);
        let (from_month, to_month) = self.month_bounds();
        Ok(EvidenceView {
            residence: ResidenceEvidence {
                rule: "R5",
                from: e
                    .valid_until
                    .checked_sub_signed(days(self.rules.window_days)),
                to: e.as_of,
                why: self.residence_why(visit.as_ref(), residence_reason, None),
                visit,
                reason: residence_reason.map(|r| r.code().to_string()),
            },
            social_insurance: SocialInsuranceEvidence {
                rule: "R5",
                from_month: from_month.to_string(),
                to_month: to_month.to_string(),
                why: self.payment_why(payment.as_ref(), si_reason, None),
                payment,
                reason: si_reason.map(|r| r.code().to_string()),
            },
            civil_status: CivilEvidence {
                rule: "R5",
                why: self.civil_why(record.as_ref(), counted, civil_reason),
                record,
                counted,
                reason: civil_reason.map(|r| r.code().to_string()),
            },
        })
    }

    // ----- what-if -----

    /// Context for a what-if: what a run for this date would meet.
    async fn what_if_notes(&self, db: &Db, out: &mut Explanation) -> Result<()> {
        let as_of = self.as_of;
        out.basis = format!(
            "WHAT-IF for as_of {as_of}: computed now with the run's rules from the register and \
             feeds as stored; nothing was written (no run, no event, no notice, no import)"
        );
        let today = self.clock.today();
        match db.run_for(as_of).await? {
            Some(r) if r.status == RunStatus::Completed => out.notes.push(format!(
                "run {} for {as_of} completed without an event for this permit (not due, \
                 PENDING — which is not recorded per permit —, or its cycle decided before); \
                 this recomputes it from the data stored now, which may differ from what that \
                 run read",
                r.run_id
            )),
            Some(r) => out.notes.push(format!(
                "run {} for {as_of} is {} and wrote no event for this permit",
                r.run_id, r.status
            )),
            None => {
                if let Some(last) = db.latest_completed_run().await? {
                    if last.as_of > as_of {
                        out.notes.push(format!(
                            "a run for {as_of} would be refused: a later date, {}, was \
                             completed (run {}; C16)",
                            last.as_of, last.run_id
                        ));
                    }
                }
            }
        }
        if let Some(latest) =
            rules::beyond_future_allowance(as_of, today, self.settings.run.future_allowance_days)
        {
            out.notes.push(format!(
                "as_of is after today, {today}, by more than run.future_allowance_days \
                 (latest {latest}): a run would refuse it without --allow-future (C17)"
            ));
        }
        if let Some(h) = db.held_run().await? {
            out.notes.push(format!(
                "run {} for {} is held by the safety brake: no run goes ahead until it is \
                 released or discarded",
                h.run_id, h.as_of
            ));
        }
        Ok(())
    }

    fn what_if(&self, out: &mut Explanation, events: &[AuditRow], rows: &HolderRows) -> Result<()> {
        let p = self.permit;
        let status = p.status;
        let step = rules::lifecycle(status, p.valid_until, self.as_of, self.rules);
        out.lifecycle.step = step.map(|k| k.code().to_string());
        out.lifecycle.why = self.lifecycle_why(step, p.status, p.valid_until);
        if let Some(kind) = step {
            let why = "a lifecycle step (R3, above), not a decision on evidence".to_string();
            self.set_decision(out, kind.code(), &[], p.valid_until, why);
            out.effect = Some(self.effect_view(kind, p.valid_until, None));
            out.notices.push(self.would_notice(kind, &[], None));
            return Ok(());
        }
        let window = self.window_view(p.valid_until, p.status);
        if !window.due {
            let why = window.why.clone();
            out.window = Some(window);
            self.set_decision(out, "NOT_DUE", &[], p.valid_until, why);
            return Ok(());
        }
        out.window = Some(window);
        // C8: a cycle with a final decision that counts is not evaluated
        // again (the run's candidates leave it out).
        let decided = events
            .iter()
            .rev()
            .find(|e| e.valid_until == p.valid_until && rules::closes_cycle(e.decision, e.state));
        out.cycle = Some(CycleView {
            valid_until: p.valid_until,
            decided_by: decided.map(event_ref),
        });
        if let Some(d) = decided {
            let why = format!(
                "the cycle ending {} was decided by run {} on {} ({}): a run decides a cycle \
                 once (C8); `autosign explain {} --as-of {}` shows why",
                p.valid_until, d.run_id, d.as_of, d.decision, p.permit_no, d.as_of
            );
            self.set_decision(out, "ALREADY_DECIDED", &[], p.valid_until, why);
            return Ok(());
        }
        let (selected, evidence) = self.evaluate_evidence(rows)?;
        let baseline = Baseline {
            valid_until: p.valid_until,
            si_status: p.si_status,
            marital_status: p.marital_status,
            employer_uscc: &p.employer_uscc,
        };
        let reasons = rules::reasons(&baseline, &selected);
        let outcome = rules::decide(p.valid_until, self.as_of, reasons.clone(), self.rules);
        out.evidence = Some(self.evidence_view(&selected, &reasons, evidence));
        let (code, kind, new) = match outcome {
            Outcome::AutoSigned { new_valid_until } => (
                "AUTO_SIGNED",
                Some(EventKind::AutoSigned),
                Some(new_valid_until),
            ),
            Outcome::VisitCenter { .. } => ("VISIT_CENTER", Some(EventKind::VisitCenter), None),
            Outcome::Pending { .. } => ("PENDING", None, None),
        };
        let why = self.decision_why(code, &reasons, p.valid_until);
        self.set_decision(out, code, &reasons, p.valid_until, why);
        if let Some(kind) = kind {
            out.effect = Some(self.effect_view(kind, p.valid_until, new));
            out.notices.push(self.would_notice(kind, &reasons, new));
        }
        Ok(())
    }

    /// R5 on the stored rows, as the run gathers them (R2 applied per key,
    /// C4 on the holder's latest civil-status record), with the rows the
    /// selection came from.
    fn evaluate_evidence<'r>(&self, rows: &'r HolderRows) -> Result<(Selected, StoredPick<'r>)> {
        let as_of = self.as_of;
        let visits_by_day = latest_by_key(&rows.visits, |v| v.visited_on, |_| true);
        let mut visits = Vec::with_capacity(visits_by_day.len());
        for v in visits_by_day.values() {
            visits.push(Visit {
                visited_on: v.visited_on,
                result: v.result,
            });
        }
        let visit = rules::select_visit(&visits, self.permit.valid_until, as_of, self.rules);
        let mut by_month: BTreeMap<Month, &StoredPayment> = BTreeMap::new();
        for p in &rows.payments {
            by_month.insert(p.month, p);
        }
        let mut payments = Vec::with_capacity(by_month.len());
        for (m, p) in &by_month {
            payments.push(Payment {
                month: *m,
                status: p.status,
                employer_uscc: p.employer_uscc.clone(),
            });
        }
        let payment = rules::select_payment(&payments, as_of, self.rules);
        let latest_civil = rows.civil.last();
        let civil = latest_civil.map(|c| (c.marital_status, c.as_of));
        // C4: the holder's latest record counts only if not from the future.
        let marital_status = civil
            .filter(|(_, at)| at.is_none_or(|at| at <= as_of))
            .map(|(m, _)| m);
        let pick = StoredPick {
            visit: visit
                .as_ref()
                .and_then(|v| visits_by_day.get(&v.visited_on).copied()),
            // The latest stored visit that did not count, to say why none did.
            other_visit: visits_by_day
                .values()
                .last()
                .copied()
                .filter(|_| visit.is_none()),
            payment: payment
                .as_ref()
                .and_then(|p| by_month.get(&p.month).copied()),
            other_payment: by_month
                .values()
                .last()
                .copied()
                .filter(|_| payment.is_none()),
            civil: latest_civil,
        };
        Ok((
            Selected {
                visit,
                payment,
                marital_status,
            },
            pick,
        ))
    }

    fn evidence_view(
        &self,
        s: &Selected,
        reasons: &[Reason],
        pick: StoredPick<'_>,
    ) -> EvidenceView {
        let has = |r: Reason| reasons.contains(&r).then_some(r);
        let visit = s.visit.as_ref().map(|v| VisitView {
            visited_on: v.visited_on,
            result: v.result,
            officer_id: pick
                .visit
                .map(|r| r.officer_id.clone())
                .filter(|o| !o.is_empty()),
            source: pick.visit.map(|r| Source::from(&r.origin)),
        });
        let residence_reason = has(Reason::AddressNotVerified).or(has(Reason::AddressChanged));
        let payment = s.payment.as_ref().map(|p| PaymentView {
            month: p.month,
            status: p.status,
            employer_uscc: p.employer_uscc.clone(),
            employer_name: pick
                .payment
                .map(|r| r.employer_name.clone())
                .filter(|n| !n.is_empty()),
            source: pick.payment.map(|r| Source::from(&r.origin)),
        });
        let si_reason = has(Reason::SocialInsuranceMissing)
            .or(has(Reason::SocialInsuranceChanged))
            .or(has(Reason::EmployerChanged));
        let civil_reason = has(Reason::MaritalStatusChanged);
        let record = pick.civil.map(civil_view);
        let counted = s.marital_status.is_some();
        let (from_month, to_month) = self.month_bounds();
        EvidenceView {
            residence: ResidenceEvidence {
                rule: "R5",
                from: self.window_opens(),
                to: self.as_of,
                why: self.residence_why(visit.as_ref(), residence_reason, pick.other_visit),
                visit,
                reason: residence_reason.map(|r| r.code().to_string()),
            },
            social_insurance: SocialInsuranceEvidence {
                rule: "R5",
                from_month: from_month.to_string(),
                to_month: to_month.to_string(),
                why: self.payment_why(payment.as_ref(), si_reason, pick.other_payment),
                payment,
                reason: si_reason.map(|r| r.code().to_string()),
            },
            civil_status: CivilEvidence {
                rule: "R5",
                why: self.civil_why(record.as_ref(), counted, civil_reason),
                record,
                counted,
                reason: civil_reason.map(|r| r.code().to_string()),
            },
        }
    }

    // ----- the words for R5, the same in both modes -----

    fn residence_why(
        &self,
        visit: Option<&VisitView>,
        reason: Option<Reason>,
        other: Option<&StoredVisit>,
    ) -> String {
        match (visit, reason) {
            (Some(v), Some(r)) => format!("visit on {}: {} → {}", v.visited_on, v.result, r.code()),
            (Some(v), None) => {
                format!("visit on {}: {} — address verified", v.visited_on, v.result)
            }
            (None, _) => {
                let mut s = "no visit within the window → ADDRESS_NOT_VERIFIED".to_string();
                if let Some(o) = other {
                    let when = if o.visited_on > self.as_of {
                        "after as_of: not counted yet (C4)"
                    } else {
                        "before the window"
                    };
                    let _ = write!(s, " (latest stored visit {}, {when})", o.visited_on);
                }
                s
            }
        }
    }

    fn payment_why(
        &self,
        payment: Option<&PaymentView>,
        reason: Option<Reason>,
        other: Option<&StoredPayment>,
    ) -> String {
        let p = self.permit;
        let employer = if p.employer_uscc.is_empty() {
            "no employer".to_string()
        } else {
            format!("employer {}", p.employer_uscc)
        };
        match (payment, reason) {
            (None, Some(r)) => {
                let mut s = format!("permit {} with {employer}; no month within the range → {}", p.si_status, r.code());
                if let Some(o) = other {
                    let _ = write!(s, " (latest stored month {}, outside the range)", o.month);
                }
                s
            }
            (None, None) => format!(
                "permit registered {}: no month within the range, nothing to compare (C2)",
                p.si_status
            ),
            (Some(m), Some(Reason::EmployerChanged)) => format!(
                "{}: paid by {} but the permit names {employer} → EMPLOYER_CHANGED (C3: compared literally)",
                m.month,
                if m.employer_uscc.is_empty() { "no employer" } else { &m.employer_uscc }
            ),
            (Some(m), Some(r)) if p.si_status == SiStatus::NotPaying => format!(
                "{}: {}, but the permit was registered not paying → {} (C2)",
                m.month, m.status, r.code()
            ),
            (Some(m), Some(r)) => format!("{}: {} → {}", m.month, m.status, r.code()),
            (Some(m), None) if p.si_status == SiStatus::NotPaying => format!(
                "{}: {}; the permit was registered not paying — unchanged (C2)",
                m.month, m.status
            ),
            (Some(m), None) => format!("{}: {} by the permit's {employer} — unchanged", m.month, m.status),
        }
    }

    fn civil_why(
        &self,
        record: Option<&CivilView>,
        counted: bool,
        reason: Option<Reason>,
    ) -> String {
        let mine = &self.permit.marital_status;
        let dated = |c: &CivilView| c.as_of.map(|d| format!(" (as of {d})")).unwrap_or_default();
        match (record, counted, reason) {
            (Some(c), true, Some(r)) => format!(
                "registry: {}{} but the permit says {mine} → {}",
                c.marital_status,
                dated(c),
                r.code()
            ),
            (Some(c), true, None) => format!("registry: {}{} — unchanged", c.marital_status, dated(c)),
            (Some(c), false, _) => format!(
                "the registry's latest record ({}{}) is dated after as_of: not counted (C4); unchanged",
                c.marital_status,
                dated(c)
            ),
            (None, _, _) => "no civil-status record: unchanged (R5)".to_string(),
        }
    }
}

/// The stored rows behind a what-if's selection.
struct StoredPick<'r> {
    visit: Option<&'r StoredVisit>,
    other_visit: Option<&'r StoredVisit>,
    payment: Option<&'r StoredPayment>,
    other_payment: Option<&'r StoredPayment>,
    civil: Option<&'r StoredCivil>,
}

fn civil_view(c: &StoredCivil) -> CivilView {
    CivilView {
        marital_status: c.marital_status,
        as_of: c.as_of,
        source: Some(Source::from(&c.origin)),
    }
}

fn state_meaning(state: EventState) -> &'static str {
    match state {
        EventState::Held => {
            "its run is held by the safety brake; nothing applied, no notice queued"
        }
        EventState::Void => "its run was discarded",
        EventState::NotApplied => "its run was released but the permit had changed since",
        EventState::Reverted => "its run was reverted and this change undone",
        EventState::Applied => "",
    }
}

fn source_text(s: &Source) -> String {
    let file = s.file.as_deref().unwrap_or("(import record gone)");
    let line = s
        .line
        .map(|l| format!("line {l}"))
        .unwrap_or_else(|| "line not recorded".into());
    format!(
        "{file} {line} (import {}{})",
        s.import_id,
        s.imported_at
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default()
    )
}

/// The explanation for a terminal; values from the database have their
/// control characters escaped.
pub fn render(x: &Explanation) -> String {
    crate::domain::escape_controls_in_lines(&render_raw(x)).into_owned()
}

fn render_raw(x: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "permit {}  holder {} ({})  as_of {}",
        x.permit_no, x.holder.name, x.holder.id_number, x.as_of
    );
    let _ = writeln!(s, "{}", x.basis);
    for n in &x.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    let p = &x.permit;
    let _ = writeln!(
        s,
        "register: {} until {}, registered {} / {} / marital {}{}",
        p.status,
        p.valid_until,
        p.si_status,
        if p.employer_uscc.is_empty() {
            "no employer"
        } else {
            &p.employer_uscc
        },
        p.marital_status,
        p.source
            .as_ref()
            .map(|o| format!(" — from {}", source_text(o)))
            .unwrap_or_default()
    );
    let l = &x.lifecycle;
    let _ = writeln!(s, "R3 lifecycle: {}", l.why);
    if let Some(w) = &x.window {
        let _ = writeln!(s, "R4 window: {}", w.why);
    }
    if let Some(c) = &x.cycle {
        match &c.decided_by {
            Some(d) if x.mode == "recorded" => {
                let _ = writeln!(
                    s,
                    "C8 cycle ending {}: decided by this event (run {})",
                    c.valid_until, d.run_id
                );
            }
            Some(d) => {
                let _ = writeln!(
                    s,
                    "C8 cycle ending {}: decided by run {} on {} ({})",
                    c.valid_until, d.run_id, d.as_of, d.decision
                );
            }
            None => {
                let _ = writeln!(s, "C8 cycle ending {}: open", c.valid_until);
            }
        }
    }
    if let Some(e) = &x.evidence {
        let _ = writeln!(s, "R5 evidence:");
        let r = &e.residence;
        let _ = writeln!(
            s,
            "  residence (visits {} to {}): {}",
            r.from.map(|d| d.to_string()).unwrap_or_default(),
            r.to,
            r.why
        );
        if let Some(v) = &r.visit {
            if let Some(o) = &v.officer_id {
                let _ = writeln!(s, "    verified by officer {o}");
            }
            if let Some(src) = &v.source {
                let _ = writeln!(s, "    from {}", source_text(src));
            }
        }
        let si = &e.social_insurance;
        let _ = writeln!(
            s,
            "  social insurance (months {} to {}): {}",
            si.from_month, si.to_month, si.why
        );
        if let Some(m) = &si.payment {
            if let Some(n) = &m.employer_name {
                let _ = writeln!(s, "    employer name {n}");
            }
            if let Some(src) = &m.source {
                let _ = writeln!(s, "    from {}", source_text(src));
            }
        }
        let c = &e.civil_status;
        let _ = writeln!(s, "  civil status: {}", c.why);
        if let Some(src) = c.record.as_ref().and_then(|r| r.source.as_ref()) {
            let _ = writeln!(s, "    from {}", source_text(src));
        }
    }
    let d = &x.decision;
    let _ = write!(s, "R6 decision: {}", d.outcome);
    if let Some(state) = &d.state {
        let _ = write!(s, " ({state})");
    }
    let _ = writeln!(s, " — {}", d.why);
    for (code, zh) in d.reasons.iter().zip(&d.reasons_zh) {
        let _ = writeln!(s, "  reason {code}: {zh}");
    }
    if let Some(dl) = d.decision_deadline {
        let _ = writeln!(s, "  decision deadline {dl}");
    }
    if let Some(f) = &x.effect {
        let _ = writeln!(s, "R7 effect: {}", f.why);
    }
    if x.notices.is_empty() {
        let _ = writeln!(s, "R8 notice: none");
    }
    for n in &x.notices {
        if n.recorded {
            let _ = writeln!(
                s,
                "R8 notice #{} {} via {}{}: {} (attempts {}, created {}{}{}{})",
                n.notification_id.unwrap_or_default(),
                n.kind,
                n.channel,
                if n.recipient.is_empty() {
                    String::new()
                } else {
                    format!(" to {}", n.recipient)
                },
                n.status,
                n.attempts,
                n.created_at.as_deref().unwrap_or(""),
                n.sent_at
                    .as_deref()
                    .map(|t| format!(", sent {t}"))
                    .unwrap_or_default(),
                n.next_attempt_at
                    .as_deref()
                    .filter(|_| matches!(n.status, NoticeStatus::Queued | NoticeStatus::Failed))
                    .map(|t| format!(", next attempt {t}"))
                    .unwrap_or_default(),
                n.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default(),
            );
        } else {
            let _ = writeln!(
                s,
                "R8 notice (what-if, not queued): {} via {}{}: would be {}",
                n.kind,
                n.channel,
                if n.recipient.is_empty() {
                    String::new()
                } else {
                    format!(" to {}", n.recipient)
                },
                n.status
            );
        }
        if !n.message.is_empty() {
            let _ = writeln!(s, "  text: {}", n.message);
        }
    }
    if !x.history.is_empty() {
        let _ = writeln!(s, "recorded events of this permit:");
        for h in &x.history {
            let _ = writeln!(
                s,
                "  {} run {}: {}{} for the cycle ending {} ({})",
                h.as_of,
                h.run_id,
                h.decision,
                if h.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" {}", h.reasons)
                },
                h.valid_until,
                h.state
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permit_number_is_trimmed_and_must_not_be_empty_or_too_long() {
        assert_eq!(parse_permit_no("  SH0001 ").ok().as_deref(), Some("SH0001"));
        for bad in ["", "   ", "\t"] {
            let e = parse_permit_no(bad).expect_err(bad);
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        let long = "P".repeat(crate::feeds::MAX_FIELD_CHARS + 1);
        let e = parse_permit_no(&long).expect_err("too long");
        assert!(e.to_string().contains("at most"), "{e}");
        assert!(parse_permit_no(&"P".repeat(crate::feeds::MAX_FIELD_CHARS)).is_ok());
    }

    #[test]
    fn an_unknown_id_or_phone_number_is_not_echoed_in_clear() {
        let id = "11010519491231002X";
        let m = not_found(id);
        assert!(!m.contains(id) && m.contains("110105********002X"), "{m}");
        let m = not_found("13800138000");
        assert!(
            !m.contains("13800138000") && m.contains("138****8000"),
            "{m}"
        );
        assert_eq!(not_found("SH9"), "no permit \"SH9\" in the register");
    }

    #[test]
    fn r2_the_later_row_for_a_key_is_the_one_kept() {
        let rows = [(1, "a"), (2, "b"), (1, "c"), (3, "d")];
        let got = latest_by_key(&rows, |r| r.0, |r| r.1 != "d");
        let got: Vec<_> = got.into_iter().map(|(k, r)| (k, r.1)).collect();
        assert_eq!(got, [(1, "c"), (2, "b")]);
    }

    #[test]
    fn recipients_are_masked_by_channel() {
        assert_eq!(mask_recipient(Channel::Sms, "13800138000"), "138****8000");
        assert_eq!(
            mask_recipient(Channel::Email, "zhang@example.com"),
            "z***@example.com"
        );
        assert_eq!(mask_recipient(Channel::None, ""), "");
        assert_eq!(mask_recipient(Channel::Sms, "garbage"), "***");
    }
}
