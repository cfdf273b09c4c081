//! The nightly rules R3–R7 as pure functions of (permit, evidence, as_of).
//! No clock, no database: everything a decision depends on is an argument,
//! so the tables in the tests below are the rules' specification.

use chrono::{Duration, NaiveDate};

use crate::db::CandidateBounds;
use crate::domain::{
    add_one_year, CycleDecision, Effect, EventKind, EventState, MaritalStatus, Month,
    PaymentStatus, PermitStatus, Reason, ResidenceResult, SiStatus,
};
use crate::settings::{LapsePolicy, Rules};

/// C17: an `as_of` more than `allowance_days` after `today` (both in the
/// configured zone) is refused, since one mistyped year would otherwise
/// suspend or cancel the whole register (R3) in a single run. Returns the
/// latest date allowed when `as_of` lies beyond it.
pub fn beyond_future_allowance(
    as_of: NaiveDate,
    today: NaiveDate,
    allowance_days: u32,
) -> Option<NaiveDate> {
    // `today` is a real calendar date and the allowance is bounded by the
    // settings, but a date at the end of chrono's range must not panic.
    let latest = today
        .checked_add_days(chrono::Days::new(u64::from(allowance_days)))
        .unwrap_or(NaiveDate::MAX);
    (as_of > latest).then_some(latest)
}

/// R3: the one lifecycle step a permit takes at this run, if any.
pub fn lifecycle(
    status: PermitStatus,
    valid_until: NaiveDate,
    as_of: NaiveDate,
    rules: &Rules,
) -> Option<EventKind> {
    if status == PermitStatus::Cancelled {
        return None;
    }
    // Checked: a grace end beyond the calendar's range is never passed
    // (settings are range-checked; this keeps the rule total).
    let past_grace = valid_until
        .checked_add_signed(Duration::days(i64::from(rules.grace_days)))
        .is_some_and(|end| as_of > end);
    if past_grace && rules.lapse_policy == LapsePolicy::Cancel {
        return Some(EventKind::Cancelled);
    }
    if status == PermitStatus::Active && valid_until < as_of {
        return Some(EventKind::Suspended);
    }
    None
}

/// The permits that may take a lifecycle step (R3) or be due (R4) at
/// `as_of`, as the ranges the run reads: active up to the window's end
/// (due, lapsing, or past grace), suspended only when past grace under
/// `lapse_policy = "cancel"`. A suspended permit within its grace takes no
/// step, so a night does not read the lapsed part of the register. The
/// suspended bound is never after the active one (the walk tests
/// `valid_until` against the active bound first).
pub fn candidate_bounds(as_of: NaiveDate, rules: &Rules) -> CandidateBounds {
    CandidateBounds {
        active_to: as_of
            .checked_add_signed(Duration::days(i64::from(rules.window_days)))
            .unwrap_or(NaiveDate::MAX),
        suspended_before: cancel_before(as_of, rules),
    }
}

/// R3: the date before which a permit's `valid_until` puts it past grace
/// at `as_of` (valid_until < as_of − grace_days exactly when as_of >
/// valid_until + grace_days); `None` under `lapse_policy = "suspend"`,
/// which cancels nothing, and when the subtraction leaves the calendar.
/// The run's candidates use it.
pub fn cancel_before(as_of: NaiveDate, rules: &Rules) -> Option<NaiveDate> {
    match rules.lapse_policy {
        LapsePolicy::Cancel => {
            as_of.checked_sub_signed(Duration::days(i64::from(rules.grace_days)))
        }
        LapsePolicy::Suspend => None,
    }
}

/// R4: due when active and `0 <= valid_until - as_of <= window_days`.
pub fn is_due(
    status: PermitStatus,
    valid_until: NaiveDate,
    as_of: NaiveDate,
    rules: &Rules,
) -> bool {
    let left = (valid_until - as_of).num_days();
    status == PermitStatus::Active && (0..=i64::from(rules.window_days)).contains(&left)
}

/// C8: a cycle is decided once. A final decision closes its cycle when it
/// took effect — written by a run the brake let through, or applied by
/// `autosign release` — and `autosign revert` has not undone it. A held
/// decision not (or not yet) applied, or one a discard voided, leaves the
/// cycle open.
pub fn cycle_decided(decisions: &[CycleDecision]) -> bool {
    decisions
        .iter()
        .any(|d| !d.undone && (!d.held || d.released == Some(true)))
}

/// C8 as an audit row shows it: whether an event of `kind` in `state`
/// closes its cycle — a final decision whose state [`cycle_decided`]
/// counts. `explain` reads it this way; a run reads the same from the
/// events and their releases and reverts.
pub fn closes_cycle(kind: EventKind, state: EventState) -> bool {
    matches!(kind, EventKind::AutoSigned | EventKind::VisitCenter)
        && cycle_decided(&[state.as_cycle_decision()])
}

/// What the permit said at registration (the baseline R5 compares with).
#[derive(Debug, Clone)]
pub struct Baseline<'a> {
    pub valid_until: NaiveDate,
    pub si_status: SiStatus,
    pub marital_status: MaritalStatus,
    pub employer_uscc: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub visited_on: NaiveDate,
    pub result: ResidenceResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub month: Month,
    pub status: PaymentStatus,
    pub employer_uscc: String,
}

/// The evidence rows a decision rests on (exported in the audit row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    pub visit: Option<Visit>,
    pub payment: Option<Payment>,
    pub marital_status: Option<MaritalStatus>,
}

/// R5: the visit that counts: latest `visited_on` with
/// `valid_until - window_days <= visited_on <= as_of` (C4: no future rows).
pub fn select_visit(
    visits: &[Visit],
    valid_until: NaiveDate,
    as_of: NaiveDate,
    rules: &Rules,
) -> Option<Visit> {
    let from = valid_until
        .checked_sub_signed(Duration::days(i64::from(rules.window_days)))
        .unwrap_or(NaiveDate::MIN);
    visits
        .iter()
        .filter(|v| v.visited_on >= from && v.visited_on <= as_of)
        .max_by_key(|v| v.visited_on)
        .cloned()
}

/// R5: the payment that counts: latest `month` with
/// `month(as_of) - si_max_lag_months <= month <= month(as_of)`.
pub fn select_payment(payments: &[Payment], as_of: NaiveDate, rules: &Rules) -> Option<Payment> {
    let to = Month::of(as_of);
    let from = to.minus(rules.si_max_lag_months);
    payments
        .iter()
        .filter(|p| p.month >= from && p.month <= to)
        .max_by_key(|p| p.month)
        .cloned()
}

/// R5: the reasons against automatic endorsement, in the order R5 lists them.
pub fn reasons(baseline: &Baseline, selected: &Selected) -> Vec<Reason> {
    let mut out = Vec::new();
    match &selected.visit {
        None => out.push(Reason::AddressNotVerified),
        Some(v) if v.result != ResidenceResult::Consistent => out.push(Reason::AddressChanged),
        Some(_) => {}
    }
    match (baseline.si_status, &selected.payment) {
        (SiStatus::Paying, None) => out.push(Reason::SocialInsuranceMissing),
        (SiStatus::Paying, Some(p)) if p.status != PaymentStatus::Paid => {
            out.push(Reason::SocialInsuranceChanged)
        }
        // C3: employer equality is literal, empty included.
        (SiStatus::Paying, Some(p)) if p.employer_uscc != baseline.employer_uscc => {
            out.push(Reason::EmployerChanged)
        }
        // C2: for a not-paying permit only the selected row counts.
        (SiStatus::NotPaying, Some(p)) if p.status == PaymentStatus::Paid => {
            out.push(Reason::SocialInsuranceChanged)
        }
        _ => {}
    }
    if let Some(m) = selected.marital_status {
        if m != baseline.marital_status {
            out.push(Reason::MaritalStatusChanged);
        }
    }
    out.sort();
    out
}

/// R6: the outcome for a due permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// R7: valid one more year.
    AutoSigned {
        new_valid_until: NaiveDate,
    },
    VisitCenter {
        reasons: Vec<Reason>,
    },
    /// Only missing evidence and the deadline not reached: nothing decided.
    Pending {
        reasons: Vec<Reason>,
    },
}

pub fn decide(
    valid_until: NaiveDate,
    as_of: NaiveDate,
    reasons: Vec<Reason>,
    rules: &Rules,
) -> Outcome {
    if reasons.is_empty() {
        return Outcome::AutoSigned {
            new_valid_until: add_one_year(valid_until),
        };
    }
    let only_missing = reasons.iter().all(|r| {
        matches!(
            r,
            Reason::AddressNotVerified | Reason::SocialInsuranceMissing
        )
    });
    if only_missing && (valid_until - as_of).num_days() > i64::from(rules.decision_deadline_days) {
        Outcome::Pending { reasons }
    } else {
        Outcome::VisitCenter { reasons }
    }
}

/// R7: the new valid_until an event of `kind` gives a permit valid until
/// `valid_until` (AUTO_SIGNED only: one year on).
pub fn new_valid_until(kind: EventKind, valid_until: NaiveDate) -> Option<NaiveDate> {
    match kind {
        EventKind::AutoSigned => Some(add_one_year(valid_until)),
        EventKind::VisitCenter | EventKind::Suspended | EventKind::Cancelled => None,
    }
}

/// R3, R7: what an event of `kind` does to its permit. `new_valid_until`
/// is R7's date for AUTO_SIGNED, as the run computed and recorded it.
pub fn effect(
    kind: EventKind,
    new_valid_until: Option<NaiveDate>,
    valid_until: NaiveDate,
) -> Effect {
    match kind {
        EventKind::AutoSigned => Effect::Extend(new_valid_until.unwrap_or(valid_until)),
        EventKind::VisitCenter => Effect::None,
        EventKind::Suspended => Effect::SetStatus(PermitStatus::Suspended),
        EventKind::Cancelled => Effect::SetStatus(PermitStatus::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use Reason::*;

    fn rules() -> Rules {
        Settings::load_with_env(None, &[]).expect("defaults").rules
    }

    fn d(s: &str) -> NaiveDate {
        crate::domain::parse_date(s).expect("date")
    }

    #[test]
    fn cancel_before_is_as_of_minus_grace_under_the_cancel_policy_only() {
        // R3: cancelled when as_of > valid_until + grace_days.
        let mut r = rules();
        assert_eq!(cancel_before(d("2026-12-20"), &r), Some(d("2026-10-21")));
        r.lapse_policy = LapsePolicy::Suspend;
        assert_eq!(cancel_before(d("2026-12-20"), &r), None);
    }

    #[test]
    fn the_candidates_are_every_permit_that_steps_or_is_due_and_no_lapsed_one_within_grace() {
        // R3, R4: whatever a permit does tonight, the run reads it; a
        // suspended permit within its grace (most of a register's lapsed
        // ones) does nothing, and is not read.
        let as_of = d("2026-11-27");
        for policy in [LapsePolicy::Cancel, LapsePolicy::Suspend] {
            let mut r = rules();
            r.lapse_policy = policy;
            let b = candidate_bounds(as_of, &r);
            let read = |status: PermitStatus, v: NaiveDate| match status {
                PermitStatus::Active => v <= b.active_to,
                PermitStatus::Suspended => b.suspended_before.is_some_and(|s| v < s),
                PermitStatus::Cancelled => false,
            };
            for status in [
                PermitStatus::Active,
                PermitStatus::Suspended,
                PermitStatus::Cancelled,
            ] {
                for offset in -400..400 {
                    let v = as_of + Duration::days(offset);
                    let acts =
                        lifecycle(status, v, as_of, &r).is_some() || is_due(status, v, as_of, &r);
                    if acts {
                        assert!(
                            read(status, v),
                            "{policy:?} {status:?} {v} acts but is not read"
                        );
                    }
                    if status == PermitStatus::Suspended && !acts {
                        assert!(
                            !read(status, v),
                            "{policy:?} {v}: a suspended permit that does nothing is read"
                        );
                    }
                }
            }
        }
        // The suspended bound is never after the active one, whatever the
        // settings (the walk's SQL relies on it).
        for (window, grace) in [(0, 0), (30, 0), (0, 90), (365, 3650)] {
            let mut r = rules();
            r.window_days = window;
            r.grace_days = grace;
            for as_of in [as_of, NaiveDate::MIN, NaiveDate::MAX] {
                let b = candidate_bounds(as_of, &r);
                assert!(b.suspended_before.is_none_or(|s| s <= b.active_to));
            }
        }
        // At the calendar's ends the bounds stay total.
        let b = candidate_bounds(NaiveDate::MIN, &rules());
        assert_eq!(b.suspended_before, None);
        assert_eq!(
            candidate_bounds(NaiveDate::MAX, &rules()).active_to,
            NaiveDate::MAX
        );
    }

    fn m(s: &str) -> Month {
        Month::parse(s).expect("month")
    }

    const AS_OF: &str = "2026-11-27";

    #[test]
    fn r3_a_grace_beyond_the_calendar_never_panics_and_never_cancels() {
        let mut rules = crate::settings::Settings::load_with_env(None, &[])
            .expect("defaults")
            .rules;
        rules.grace_days = u32::MAX;
        rules.window_days = u32::MAX;
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).expect("date");
        assert_eq!(
            lifecycle(PermitStatus::Active, d(2026, 1, 1), d(2026, 11, 27), &rules),
            Some(EventKind::Suspended)
        );
        assert_eq!(
            lifecycle(
                PermitStatus::Suspended,
                NaiveDate::MAX,
                d(2026, 11, 27),
                &rules
            ),
            None
        );
        assert_eq!(
            select_visit(&[], NaiveDate::MIN, d(2026, 11, 27), &rules),
            None
        );
    }

    #[test]
    fn c8_a_cycle_is_closed_by_a_decision_in_effect_only() {
        let dec = |held, released, undone| CycleDecision {
            held,
            released,
            undone,
        };
        let cases: &[(&[CycleDecision], bool, &str)] = &[
            (&[], false, "no decision"),
            (&[dec(false, None, false)], true, "applied by its run"),
            (&[dec(false, None, true)], false, "applied, then reverted"),
            (
                &[dec(true, None, false)],
                false,
                "held, not released (or discarded)",
            ),
            (
                &[dec(true, Some(true), false)],
                true,
                "held, applied by a release",
            ),
            (
                &[dec(true, Some(false), false)],
                false,
                "held, released as not applied",
            ),
            (
                &[dec(true, Some(true), true)],
                false,
                "released, then reverted",
            ),
            (
                &[dec(false, None, true), dec(false, None, false)],
                true,
                "reverted, then decided again",
            ),
            (
                &[dec(true, None, false), dec(true, Some(false), false)],
                false,
                "held twice, never applied",
            ),
        ];
        for (decisions, closed, what) in cases {
            assert_eq!(cycle_decided(decisions), *closed, "{what}");
        }
    }

    #[test]
    fn c8_an_audit_row_closes_its_cycle_when_a_final_decision_is_applied() {
        use EventState::*;
        // (state, closes when the kind is a final decision, why)
        let table: &[(EventState, bool, &str)] = &[
            (Applied, true, "in effect"),
            (Held, false, "its run is held by the brake"),
            (Void, false, "its run was discarded"),
            (NotApplied, false, "released after the cycle changed"),
            (Reverted, false, "undone by a revert"),
        ];
        assert_eq!(table.len(), EventState::ALL.len());
        for &(state, closes, why) in table {
            for kind in EventKind::ALL {
                let final_decision = matches!(kind, EventKind::AutoSigned | EventKind::VisitCenter);
                assert_eq!(
                    closes_cycle(kind, state),
                    closes && final_decision,
                    "{kind} {state}: {why}"
                );
            }
        }
    }

    #[test]
    fn c17_future_as_of_beyond_the_allowance_is_refused() {
        let today = d("2026-12-05");
        // (as_of, allowance, latest allowed date if refused)
        let table: &[(&str, u32, Option<&str>)] = &[
            ("2026-12-05", 0, None),
            ("2026-11-27", 0, None),
            ("2026-12-06", 0, Some("2026-12-05")),
            ("2026-12-06", 1, None),
            ("2026-12-07", 1, Some("2026-12-06")),
            ("2062-11-27", 1, Some("2026-12-06")),
            ("2036-12-05", 7, Some("2026-12-12")),
        ];
        for &(as_of, allowance, latest) in table {
            assert_eq!(
                beyond_future_allowance(d(as_of), today, allowance),
                latest.map(d),
                "C17 as_of {as_of}, allowance {allowance}"
            );
        }
        assert_eq!(
            beyond_future_allowance(NaiveDate::MAX, NaiveDate::MAX, 3),
            None
        );
    }

    #[test]
    fn r3_lifecycle_table() {
        use EventKind::{Cancelled as C, Suspended as S};
        use PermitStatus::*;
        let r = rules();
        // (rule, status, valid_until, expected)
        let table: &[(&str, PermitStatus, &str, Option<EventKind>)] = &[
            ("R3 not yet lapsed", Active, "2026-11-27", None),
            (
                "R3 lapsed yesterday: suspend",
                Active,
                "2026-11-26",
                Some(S),
            ),
            (
                "R3 exactly grace_days past: still suspend",
                Active,
                "2026-09-28",
                Some(S),
            ),
            (
                "R3/C1 past grace, active: cancel directly",
                Active,
                "2026-09-27",
                Some(C),
            ),
            (
                "R3/C1 past grace, suspended: cancel",
                Suspended,
                "2026-09-27",
                Some(C),
            ),
            (
                "R3 suspended within grace: no step",
                Suspended,
                "2026-10-01",
                None,
            ),
            ("R3 cancelled is final", Cancelled, "2020-01-01", None),
        ];
        for (rule, status, vu, want) in table {
            assert_eq!(lifecycle(*status, d(vu), d(AS_OF), &r), *want, "{rule}");
        }
    }

    #[test]
    fn r3_suspend_policy_keeps_lapsed_permits_suspended() {
        let mut r = rules();
        r.lapse_policy = LapsePolicy::Suspend;
        assert_eq!(
            lifecycle(PermitStatus::Active, d("2026-01-01"), d(AS_OF), &r),
            Some(EventKind::Suspended)
        );
        assert_eq!(
            lifecycle(PermitStatus::Suspended, d("2026-01-01"), d(AS_OF), &r),
            None
        );
    }

    #[test]
    fn r4_window_table() {
        let r = rules();
        let table: &[(&str, PermitStatus, &str, bool)] = &[
            (
                "R4 ends today: due",
                PermitStatus::Active,
                "2026-11-27",
                true,
            ),
            (
                "R4 ends in 30 days: due",
                PermitStatus::Active,
                "2026-12-27",
                true,
            ),
            (
                "R4 ends in 31 days: not due",
                PermitStatus::Active,
                "2026-12-28",
                false,
            ),
            (
                "R4 ended yesterday: not due",
                PermitStatus::Active,
                "2026-11-26",
                false,
            ),
            (
                "R4 suspended: not due",
                PermitStatus::Suspended,
                "2026-12-01",
                false,
            ),
        ];
        for (rule, status, vu, want) in table {
            assert_eq!(is_due(*status, d(vu), d(AS_OF), &r), *want, "{rule}");
        }
    }

    #[test]
    fn r5_visit_selection_uses_the_window_and_ignores_future_visits() {
        let r = rules();
        let vu = d("2026-12-10"); // window starts 2026-11-10
        let v = |s: &str, res| Visit {
            visited_on: d(s),
            result: res,
        };
        let visits = vec![
            v("2026-11-09", ResidenceResult::Consistent), // before the window
            v("2026-11-15", ResidenceResult::Changed),
            v("2026-11-20", ResidenceResult::Consistent),
            v("2026-11-28", ResidenceResult::NotFound), // C4: after as_of
        ];
        let got = select_visit(&visits, vu, d(AS_OF), &r).expect("a visit");
        assert_eq!(got.visited_on, d("2026-11-20"), "R5 latest in window");
        assert_eq!(
            select_visit(&visits[..1], vu, d(AS_OF), &r),
            None,
            "R5 none in window"
        );
    }

    #[test]
    fn r5_payment_selection_uses_the_lag() {
        let r = rules();
        let p = |s: &str| Payment {
            month: m(s),
            status: PaymentStatus::Paid,
            employer_uscc: String::new(),
        };
        let rows = vec![p("2026-08"), p("2026-09"), p("2026-10"), p("2026-12")];
        assert_eq!(
            select_payment(&rows, d(AS_OF), &r).map(|x| x.month),
            Some(m("2026-10")),
            "R5 latest, no future"
        );
        assert_eq!(
            select_payment(&rows[..1], d(AS_OF), &r),
            None,
            "R5 2026-08 is older than the lag"
        );
        assert_eq!(
            select_payment(&rows[1..2], d(AS_OF), &r).map(|x| x.month),
            Some(m("2026-09")),
            "R5 lag edge"
        );
    }

    #[test]
    fn r5_reasons_table() {
        let emp = "91310000MA1FL0Q58N";
        let base = |si, marital, employer| Baseline {
            valid_until: d("2026-12-10"),
            si_status: si,
            marital_status: marital,
            employer_uscc: employer,
        };
        let visit = |res| {
            Some(Visit {
                visited_on: d("2026-11-20"),
                result: res,
            })
        };
        let pay = |st, e: &str| {
            Some(Payment {
                month: m("2026-10"),
                status: st,
                employer_uscc: e.to_string(),
            })
        };
        use MaritalStatus::*;
        use PaymentStatus::*;
        use ResidenceResult::*;
        use SiStatus::*;
        let table: Vec<(&str, Baseline, Selected, Vec<Reason>)> = vec![
            (
                "R5 everything consistent",
                base(Paying, Married, emp),
                Selected {
                    visit: visit(Consistent),
                    payment: pay(Paid, emp),
                    marital_status: Some(Married),
                },
                vec![],
            ),
            (
                "R5 no visit, no payment",
                base(Paying, Single, emp),
                Selected {
                    visit: None,
                    payment: None,
                    marital_status: None,
                },
                vec![AddressNotVerified, SocialInsuranceMissing],
            ),
            (
                "R5 not_found counts as changed",
                base(Paying, Single, emp),
                Selected {
                    visit: visit(NotFound),
                    payment: pay(Paid, emp),
                    marital_status: None,
                },
                vec![AddressChanged],
            ),
            (
                "R5 arrears",
                base(Paying, Single, emp),
                Selected {
                    visit: visit(Consistent),
                    payment: pay(Arrears, emp),
                    marital_status: None,
                },
                vec![SocialInsuranceChanged],
            ),
            (
                "R5 other employer",
                base(Paying, Single, emp),
                Selected {
                    visit: visit(Consistent),
                    payment: pay(Paid, "91310115MA1H7GPJ4X"),
                    marital_status: None,
                },
                vec![EmployerChanged],
            ),
            (
                "C3 paying with no employer, paid row names one",
                base(Paying, Single, ""),
                Selected {
                    visit: visit(Consistent),
                    payment: pay(Paid, emp),
                    marital_status: None,
                },
                vec![EmployerChanged],
            ),
            (
                "C2 not paying, latest row paid",
                base(NotPaying, Single, ""),
                Selected {
                    visit: visit(Consistent),
                    payment: pay(Paid, emp),
                    marital_status: None,
                },
                vec![SocialInsuranceChanged],
            ),
            (
                "C2 not paying, latest row stopped",
                base(NotPaying, Single, ""),
                Selected {
                    visit: visit(Consistent),
                    payment: pay(Stopped, ""),
                    marital_status: None,
                },
                vec![],
            ),
            (
                "R5 not paying and no rows: nothing",
                base(NotPaying, Single, ""),
                Selected {
                    visit: visit(Consistent),
                    payment: None,
                    marital_status: None,
                },
                vec![],
            ),
            (
                "R5 marital status differs; all reasons in R5 order",
                base(Paying, Single, emp),
                Selected {
                    visit: visit(Changed),
                    payment: pay(Stopped, emp),
                    marital_status: Some(Married),
                },
                vec![AddressChanged, SocialInsuranceChanged, MaritalStatusChanged],
            ),
        ];
        for (rule, b, s, want) in table {
            assert_eq!(reasons(&b, &s), want, "{rule}");
        }
    }

    #[test]
    fn r6_decision_table() {
        let r = rules();
        let as_of = d(AS_OF);
        let table: Vec<(&str, &str, Vec<Reason>, Outcome)> = vec![
            (
                "R6 no reason: auto-signed, one year on (R7)",
                "2026-12-10",
                vec![],
                Outcome::AutoSigned {
                    new_valid_until: d("2027-12-10"),
                },
            ),
            (
                "R6 a change: visit center at once",
                "2026-12-27",
                vec![EmployerChanged],
                Outcome::VisitCenter {
                    reasons: vec![EmployerChanged],
                },
            ),
            (
                "R6 only missing evidence, 8 days left: pending",
                "2026-12-05",
                vec![AddressNotVerified],
                Outcome::Pending {
                    reasons: vec![AddressNotVerified],
                },
            ),
            (
                "R6 only missing evidence, 7 days left: deadline reached",
                "2026-12-04",
                vec![AddressNotVerified, SocialInsuranceMissing],
                Outcome::VisitCenter {
                    reasons: vec![AddressNotVerified, SocialInsuranceMissing],
                },
            ),
            (
                "R6 missing and a change: visit center at once",
                "2026-12-27",
                vec![AddressNotVerified, MaritalStatusChanged],
                Outcome::VisitCenter {
                    reasons: vec![AddressNotVerified, MaritalStatusChanged],
                },
            ),
        ];
        for (rule, vu, reasons, want) in table {
            assert_eq!(decide(d(vu), as_of, reasons, &r), want, "{rule}");
        }
    }

    #[test]
    fn r7_leap_day_moves_to_28_february() {
        let r = rules();
        assert_eq!(
            decide(d("2028-02-29"), d("2028-02-01"), vec![], &r),
            Outcome::AutoSigned {
                new_valid_until: d("2029-02-28")
            }
        );
    }

    #[test]
    fn r3_r7_each_event_kind_has_one_effect() {
        let vu = d("2027-01-31");
        let table = [
            (
                EventKind::AutoSigned,
                Some(d("2028-01-31")),
                Effect::Extend(d("2028-01-31")),
            ),
            (EventKind::VisitCenter, None, Effect::None),
            (
                EventKind::Suspended,
                None,
                Effect::SetStatus(PermitStatus::Suspended),
            ),
            (
                EventKind::Cancelled,
                None,
                Effect::SetStatus(PermitStatus::Cancelled),
            ),
        ];
        for (kind, new, effect_wanted) in table {
            assert_eq!(new_valid_until(kind, vu), new, "{kind:?}");
            assert_eq!(effect(kind, new, vu), effect_wanted, "{kind:?}");
        }
    }
}
