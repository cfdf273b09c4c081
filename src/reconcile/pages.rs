//! The write pass's keys: the plan's lifecycle steps, kept compactly
//! until the pass reads them ([`Steps`]), and the pages of permits the
//! pass reads, its decisions and steps merged in `permit_no` order
//! ([`PlanKeys`]).

use std::sync::Arc;

use chrono::NaiveDate;

use super::RunPlan;
use crate::db::CandidateState;
use crate::domain::{EventKind, PermitStatus};
use crate::error::{Error, Result};

/// The permits that take a lifecycle step, as the walk found them, their
/// numbers in one buffer: a first night at 10M permits finds ~1.8M, which
/// this keeps in about 40 MB (with a heap block a number, about 90 MB).
#[derive(Debug, Default)]
pub(super) struct Steps {
    /// Of which R3 suspends this many and cancels this many ([`Steps::take`]
    /// counts them): the brake's lifecycle check.
    pub(super) suspend: u64,
    pub(super) cancel: u64,
    text: String,
    /// Where each number ends in `text`.
    ends: Vec<u32>,
    valid_until: Vec<NaiveDate>,
    status: Vec<PermitStatus>,
}

impl Steps {
    /// Keeps a permit that takes R3's step `kind` tonight, and counts it.
    pub(super) fn take(&mut self, c: &CandidateState, kind: EventKind) -> Result<()> {
        self.push(c)?;
        match kind {
            EventKind::Suspended => self.suspend += 1,
            EventKind::Cancelled => self.cancel += 1,
            // R3 takes no other step.
            _ => {}
        }
        Ok(())
    }

    fn push(&mut self, c: &CandidateState) -> Result<()> {
        self.push_parts(&c.permit_no, c.valid_until, c.status)
    }

    fn push_parts(
        &mut self,
        permit_no: &str,
        valid_until: NaiveDate,
        status: PermitStatus,
    ) -> Result<()> {
        self.text.push_str(permit_no);
        let end = u32::try_from(self.text.len()).map_err(|_| too_many(self.ends.len()))?;
        self.ends.push(end);
        self.valid_until.push(valid_until);
        self.status.push(status);
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Takes in `later`'s permits after this one's, with their counts.
    pub(super) fn append(&mut self, later: Steps) -> Result<()> {
        let permits = self.ends.len() + later.ends.len();
        let offset = u32::try_from(self.text.len()).map_err(|_| too_many(permits))?;
        u32::try_from(self.text.len() + later.text.len()).map_err(|_| too_many(permits))?;
        self.text.push_str(&later.text);
        self.ends.extend(later.ends.iter().map(|end| end + offset));
        self.valid_until.extend(later.valid_until);
        self.status.extend(later.status);
        self.suspend += later.suspend;
        self.cancel += later.cancel;
        Ok(())
    }

    /// Takes in `later`'s permits, kept in descending order of
    /// `permit_no` (the walk's upper end), after this one's and in
    /// ascending order, with their counts.
    pub(super) fn append_descending(&mut self, later: Steps) -> Result<()> {
        let permits = self.ends.len() + later.ends.len();
        u32::try_from(self.text.len() + later.text.len()).map_err(|_| too_many(permits))?;
        // Exactly: at city scale a doubled buffer would be tens of MB.
        self.text.reserve_exact(later.text.len());
        self.ends.reserve_exact(later.ends.len());
        self.valid_until.reserve_exact(later.valid_until.len());
        self.status.reserve_exact(later.status.len());
        // Each number copied from `later`'s buffer as it stands, not made
        // into a String of its own first (900,000 of them at 10M).
        for i in (0..later.len()).rev() {
            let (Some(no), Some(&valid_until), Some(&status)) = (
                later.permit_no(i),
                later.valid_until.get(i),
                later.status.get(i),
            ) else {
                return Err(Error::Runtime(anyhow::anyhow!(
                    "internal: lifecycle step {i} is missing"
                )));
            };
            self.push_parts(no, valid_until, status)?;
        }
        self.suspend += later.suspend;
        self.cancel += later.cancel;
        Ok(())
    }

    /// Gives back what the buffers grew beyond their contents (up to
    /// half of them, kept to the end of the run).
    pub(super) fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.valid_until.shrink_to_fit();
        self.status.shrink_to_fit();
    }

    fn permit_no(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = match i.checked_sub(1) {
            Some(j) => *self.ends.get(j)? as usize,
            None => 0,
        };
        self.text.get(start..end)
    }

    fn get(&self, i: usize) -> Option<CandidateState> {
        Some(CandidateState {
            permit_no: self.permit_no(i)?.to_string(),
            valid_until: *self.valid_until.get(i)?,
            status: *self.status.get(i)?,
        })
    }

    /// In byte order of `permit_no`, as the write pass's merge needs them.
    pub(super) fn sorted(self) -> Result<Self> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if order
            .windows(2)
            .all(|w| self.permit_no(w[0]) < self.permit_no(w[1]))
        {
            return Ok(self);
        }
        order.sort_unstable_by(|&a, &b| self.permit_no(a).cmp(&self.permit_no(b)));
        let mut out = Steps {
            suspend: self.suspend,
            cancel: self.cancel,
            ..Steps::default()
        };
        for c in order.into_iter().filter_map(|i| self.get(i)) {
            out.push(&c)?;
        }
        Ok(out)
    }
}

/// [`Steps`] past what its `u32` ends can address (4 GiB of numbers).
fn too_many(permits: usize) -> Error {
    Error::Runtime(anyhow::anyhow!(
        "more lifecycle steps in one night than a run can hold ({permits} permits)"
    ))
}

/// The pages of a plan's permits for step 2, as the walk found them: its
/// decisions (active, R4) and its lifecycle steps merged in `permit_no`
/// order, `limit` to a page.
pub(super) struct PlanKeys {
    plan: Arc<RunPlan>,
    decisions: usize,
    steps: usize,
    limit: usize,
}

impl PlanKeys {
    pub(super) fn new(plan: Arc<RunPlan>, limit: u32) -> Self {
        PlanKeys {
            plan,
            decisions: 0,
            steps: 0,
            limit: usize::try_from(limit).unwrap_or(usize::MAX).max(1),
        }
    }
}

impl Iterator for PlanKeys {
    type Item = Vec<CandidateState>;

    fn next(&mut self) -> Option<Vec<CandidateState>> {
        let (decisions, steps) = (&self.plan.decisions, &self.plan.steps);
        let mut page = Vec::new();
        while page.len() < self.limit {
            let d = decisions.get(self.decisions);
            let s = steps.permit_no(self.steps);
            let step_first = match (d, s) {
                (Some(d), Some(s)) => s < &*d.permit_no,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => break,
            };
            let next = if step_first {
                self.steps += 1;
                steps.get(self.steps - 1)
            } else {
                self.decisions += 1;
                // Due, so active (R4).
                d.map(|d| CandidateState {
                    permit_no: d.permit_no.to_string(),
                    valid_until: d.valid_until,
                    status: PermitStatus::Active,
                })
            };
            page.extend(next);
        }
        (!page.is_empty()).then_some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A permit as the walk found it, valid until a day of November 2026.
    fn step(no: &str, day: u32, status: PermitStatus) -> CandidateState {
        CandidateState {
            permit_no: no.to_string(),
            valid_until: NaiveDate::from_ymd_opt(2026, 11, day).unwrap_or_default(),
            status,
        }
    }

    #[test]
    fn the_write_pass_pages_decisions_and_lifecycle_steps_merged_in_permit_no_order() {
        let mut steps = Steps::default();
        for s in [
            step("P01", 1, PermitStatus::Active),
            step("P04", 2, PermitStatus::Suspended),
            step("P08", 3, PermitStatus::Active),
            step("P05", 4, PermitStatus::Active),
        ] {
            steps.push(&s).expect("a few steps");
        }
        let plan = Arc::new(RunPlan {
            decisions: vec![
                super::super::tests::decision("P02"),
                super::super::tests::decision("P03"),
                super::super::tests::decision("P07"),
            ],
            steps: steps.sorted().expect("a few steps"),
            ..RunPlan::default()
        });
        let pages: Vec<Vec<CandidateState>> = PlanKeys::new(plan.clone(), 3).collect();
        let numbers: Vec<Vec<&str>> = pages
            .iter()
            .map(|p| p.iter().map(|c| c.permit_no.as_str()).collect())
            .collect();
        assert_eq!(
            numbers,
            [
                vec!["P01", "P02", "P03"],
                vec!["P04", "P05", "P07"],
                vec!["P08"]
            ]
        );
        // Each permit keeps the state the walk found, through the sort.
        assert_eq!(pages[1][0], step("P04", 2, PermitStatus::Suspended));
        assert_eq!(pages[1][1], step("P05", 4, PermitStatus::Active));
        assert_eq!(pages[2][0], step("P08", 3, PermitStatus::Active));
        // A decision's permit is due, so active, on its cycle's date.
        let due = CandidateState {
            permit_no: "P02".to_string(),
            valid_until: super::super::tests::decision("P02").valid_until,
            status: PermitStatus::Active,
        };
        assert_eq!(pages[0][1], due);
        assert_eq!(plan.permits(), 7);
        // A page limit of 0 (never configured: settings refuse it) still
        // makes progress.
        assert_eq!(PlanKeys::new(plan, 0).count(), 7);
        assert_eq!(PlanKeys::new(Arc::new(RunPlan::default()), 3).next(), None);
    }

    #[test]
    fn a_later_part_of_the_walk_appends_its_steps_and_counts_after_the_first() {
        let mut first = Steps::default();
        first
            .take(&step("P01", 1, PermitStatus::Active), EventKind::Suspended)
            .expect("a step");
        first
            .take(
                &step("P0003", 2, PermitStatus::Suspended),
                EventKind::Cancelled,
            )
            .expect("a step");
        let mut later = Steps::default();
        later
            .take(&step("P1", 3, PermitStatus::Active), EventKind::Suspended)
            .expect("a step");
        later
            .take(&step("P22", 4, PermitStatus::Active), EventKind::Suspended)
            .expect("a step");
        first.append(later).expect("four steps");
        // Numbers of other lengths than the first part's keep their ends.
        let all: Vec<CandidateState> = (0..first.len()).filter_map(|i| first.get(i)).collect();
        assert_eq!(
            all,
            [
                step("P01", 1, PermitStatus::Active),
                step("P0003", 2, PermitStatus::Suspended),
                step("P1", 3, PermitStatus::Active),
                step("P22", 4, PermitStatus::Active),
            ]
        );
        assert_eq!((first.suspend, first.cancel), (3, 1));
        // An empty part adds nothing, and appending to an empty one keeps it.
        first.append(Steps::default()).expect("nothing");
        assert_eq!(first.len(), 4);
        let mut empty = Steps::default();
        empty.append(first).expect("four steps");
        assert_eq!(empty.permit_no(3), Some("P22"));
        assert_eq!((empty.suspend, empty.cancel), (3, 1));
    }

    #[test]
    fn a_part_walked_downwards_is_appended_in_ascending_order() {
        let mut first = Steps::default();
        first
            .take(&step("P01", 1, PermitStatus::Active), EventKind::Suspended)
            .expect("a step");
        let mut later = Steps::default();
        for (no, day, kind) in [
            ("P9", 9, EventKind::Cancelled),
            ("P22", 4, EventKind::Suspended),
            ("P1", 3, EventKind::Cancelled),
        ] {
            later
                .take(&step(no, day, PermitStatus::Active), kind)
                .expect("a step");
        }
        first.append_descending(later).expect("four steps");
        let all: Vec<CandidateState> = (0..first.len()).filter_map(|i| first.get(i)).collect();
        assert_eq!(
            all,
            [
                step("P01", 1, PermitStatus::Active),
                step("P1", 3, PermitStatus::Active),
                step("P22", 4, PermitStatus::Active),
                step("P9", 9, PermitStatus::Active),
            ]
        );
        assert_eq!((first.suspend, first.cancel), (2, 2));
        let mut empty = Steps::default();
        empty.append_descending(Steps::default()).expect("nothing");
        assert_eq!((empty.len(), empty.suspend, empty.cancel), (0, 0, 0));
    }
}
