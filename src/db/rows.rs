//! Plain row types exchanged with the database layer. Values here have been
//! parsed at the edge already; codes are the English codes of R1 and R5–R8.
//! The register's statuses and the event kinds travel as domain types and
//! are read back from their stored codes exactly (`TryFrom<String>`, each
//! a column type of its own: `stored_code_columns!`); a row type read by a
//! shared statement maps once for both backends
//! (`sqlx::FromRow`, by column name). An event's reasons travel as
//! [`Reasons`], read back from their stored text exactly (the same way),
//! and so do an audit row's decision and state, a notice's kind, channel
//! and status, and a run's status; an audit row's evidence values stay
//! text: they are what the run recorded and the files say.

use chrono::NaiveDate;

use crate::domain::{
    Channel, CycleDecision, EventKind, EventState, MaritalStatus, Month, NoticeStatus,
    PaymentStatus, PermitStatus, Reasons, ResidenceResult, RunStatus, SiStatus,
};

/// Columns that hold a stored code (or an event's reasons, [`Reasons`]),
/// read back as their domain type with its `TryFrom<String>`, on either
/// backend: a column type of their own rather than `#[sqlx(try_from =
/// "String")]`, whose error sqlx 0.9's derive drops (it reports
/// "unprintable error"); this one's error names the stored value.
macro_rules! stored_code_columns {
    ($($ty:ty),+ $(,)?) => {$(
        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<$ty>::try_from(<String as sqlx::Decode<'r, DB>>::decode(value)?)?)
            }
        }

        // An array of them is read as one of text: PostgreSQL's run reads
        // a page as one row of arrays.
        impl sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::postgres::PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }
    )+};
}

stored_code_columns!(
    Reasons,
    PermitStatus,
    SiStatus,
    MaritalStatus,
    ResidenceResult,
    PaymentStatus,
    EventKind,
    EventState,
    Channel,
    NoticeStatus,
    RunStatus,
    Month,
    crate::feeds::Delivery,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ImportCounts {
    #[sqlx(try_from = "i64")]
    pub rows_read: u64,
    #[sqlx(try_from = "i64")]
    pub rows_imported: u64,
    #[sqlx(try_from = "i64")]
    pub rows_rejected: u64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImportRecord {
    pub import_id: i64,
    pub file_name: String,
    pub imported_at: String,
    #[sqlx(flatten)]
    pub counts: ImportCounts,
}

/// A permit as stored (and as written by an import).
#[derive(Clone, sqlx::FromRow)]
pub struct PermitRow {
    pub permit_no: String,
    pub id_number: String,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub district_code: String,
    pub street_code: String,
    pub address: String,
    pub valid_until: NaiveDate,
    pub status: PermitStatus,
    pub employer_uscc: String,
    pub si_status: SiStatus,
    pub marital_status: MaritalStatus,
}

impl PermitRow {
    /// The columns every statement that reads a whole permit selects
    /// (`permit_columns!()`), in this order: SQLite's raw reader
    /// (`raw_permit`) reads them by position.
    pub const COLUMNS: [&str; 13] = [
        "permit_no",
        "id_number",
        "name",
        "phone",
        "email",
        "district_code",
        "street_code",
        "address",
        "valid_until",
        "status",
        "employer_uscc",
        "si_status",
        "marital_status",
    ];
}

#[cfg(test)]
impl PermitRow {
    /// Fails unless `sql` selects [`Self::COLUMNS`] in that order (each
    /// maybe under a table's alias), as reading a permit by position needs.
    pub(crate) fn assert_selected_in_order(sql: &str) {
        let list = sql
            .split_once("SELECT")
            .and_then(|(_, rest)| rest.split_once("FROM"))
            .map(|(list, _)| list)
            .expect("a SELECT … FROM statement");
        let columns: Vec<&str> = list
            .split(',')
            .map(|c| c.trim())
            .map(|c| c.rsplit_once('.').map_or(c, |(_, name)| name))
            .collect();
        assert_eq!(columns, Self::COLUMNS, "in {sql}");
    }
}

impl std::fmt::Debug for PermitRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Personal data stays out of logs and panics.
        f.debug_struct("PermitRow")
            .field("permit_no", &self.permit_no)
            .field("id_number", &crate::domain::mask_id_str(&self.id_number))
            .field("valid_until", &self.valid_until)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What an import needs to know of a permit already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorPermit {
    pub valid_until: NaiveDate,
    pub status: crate::domain::PermitStatus,
}

/// Where a permit row an import writes comes from: its line, and the
/// permit as stored before the import (`None`: new), for C6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportMark {
    pub line: u64,
    pub prior: Option<PriorPermit>,
}

#[derive(Debug, Clone)]
pub struct ContactUpdate {
    pub permit_no: String,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub mark: ImportMark,
}

#[derive(Debug, Clone)]
pub struct ResidenceRow {
    pub id_number: String,
    pub visited_on: NaiveDate,
    pub result: String,
    pub address: String,
    pub officer_id: String,
    /// The row's line in its file.
    pub line: u64,
}

#[derive(Debug, Clone)]
pub struct SocialInsuranceRow {
    pub id_number: String,
    /// `YYYY-MM`
    pub month: String,
    pub status: String,
    pub employer_uscc: String,
    pub employer_name: String,
    /// The row's line in its file.
    pub line: u64,
}

#[derive(Debug, Clone)]
pub struct CivilStatusRow {
    pub id_number: String,
    pub marital_status: String,
    pub as_of: Option<NaiveDate>,
    /// The row's line in its file.
    pub line: u64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRecord {
    pub run_id: i64,
    pub as_of: NaiveDate,
    pub status: RunStatus,
    pub attempts: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub pending: i64,
    /// Why the safety brake held this run; `None` for a run it
    /// let through.
    pub brake: Option<String>,
    /// The newest import the run saw when it began (after its inbox).
    pub import_mark: Option<i64>,
    /// How long the last attempt took, from `started_at` to its end,
    /// measured by the process that ran it; `None` while it runs, and for
    /// runs made before it was recorded.
    pub duration_secs: Option<f64>,
}

/// A feed's import, as the safety brake looks at it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedImport {
    pub import_id: i64,
    pub feed: String,
    pub file_name: String,
    pub imported_at: String,
    pub rows_imported: i64,
    /// What its feed's delivery was when it was imported.
    pub delivery: crate::feeds::Delivery,
}

/// An event of a held run, as `autosign release` reads it back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HeldEvent {
    pub event_id: i64,
    pub permit_no: String,
    pub kind: EventKind,
    pub reasons: Reasons,
    pub valid_until: NaiveDate,
    pub new_valid_until: Option<NaiveDate>,
}

/// What `autosign release` does with one held event: with a notice, it is
/// applied (its effect made, the notice queued); without, it is recorded
/// as not applied (the permit's cycle changed since the run).
#[derive(Debug, Clone)]
pub struct ReleaseItem {
    pub event_id: i64,
    pub permit_no: String,
    pub valid_until: NaiveDate,
    pub kind: EventKind,
    pub effect: Effect,
    pub notice: Option<NewNotice>,
}

/// The live register and the lifecycle steps R3 would take at a date
/// (the safety brake's lifecycle check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifecycleCounts {
    /// Active and suspended permits.
    pub register: u64,
    /// Active permits past `valid_until`, within grace.
    pub suspend: u64,
    /// Active or suspended permits past grace (lapse_policy cancel).
    pub cancel: u64,
}

/// An event in effect of a completed run (applied by the run, or by a
/// release), as `autosign revert` reads it back.
#[derive(Debug, Clone)]
pub struct RevertEvent {
    pub event_id: i64,
    pub permit_no: String,
    pub kind: EventKind,
    pub valid_until: NaiveDate,
    pub new_valid_until: Option<NaiveDate>,
    /// CANCELLED: the permit's status before the run (R3, C1), as the run
    /// recorded it; for an event written before it was recorded,
    /// `suspended` when a SUSPENDED event of another run is in the trail
    /// for the same cycle, else `active`. `None` for other kinds.
    pub prior_status: Option<PermitStatus>,
}

/// What `autosign revert` does with one event.
#[derive(Debug, Clone)]
pub struct RevertItem {
    pub event_id: i64,
    pub permit_no: String,
    /// The permit change to undo; `None` when the event changed no permit
    /// (VISIT_CENTER: only its cycle opens again).
    pub restore: Option<Restore>,
}

/// A permit set back to its state before a run, only if it is still as
/// the run left it (a permit changed since is not clobbered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore {
    /// As the run left it.
    pub left_valid_until: NaiveDate,
    pub left_status: PermitStatus,
    /// As it was before the run.
    pub valid_until: NaiveDate,
    pub status: PermitStatus,
}

/// What [`crate::db::Db::revert_run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevertDone {
    /// The run is reverted: this many notices withdrawn; these permits were
    /// not set back (changed since the run).
    Reverted {
        withdrawn: u64,
        not_undone: Vec<String>,
    },
    /// Nothing done: the run is not (or no longer) completed.
    NotCompleted,
    /// Nothing done: this many of the run's notices were sent already.
    Sent(u64),
}

/// A permit the run's write pass looks at (R3 lifecycle, or a planned
/// decision: the plan already left out decided cycles, C8).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub permit: PermitRow,
}

/// A permit within the run's [`CandidateBounds`], as the night's one walk
/// of the register finds it: what R3 and R4 look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateState {
    pub permit_no: String,
    pub valid_until: NaiveDate,
    pub status: PermitStatus,
}

/// A permit the night's walk read ([`crate::db::RunTx::walk`]): its
/// state, and, when it may be due (active, `valid_until` from the due
/// date on), what the plan needs to decide it.
#[derive(Debug, Clone)]
pub struct Walked {
    pub state: CandidateState,
    pub due: Option<DueDetails>,
}

/// What the plan needs of a permit that may be due (R4) beside its state:
/// its holder, the baseline R5 compares evidence with, and the decisions
/// already written for the cycle that ends on its `valid_until` (C8).
#[derive(Clone)]
pub struct DueDetails {
    pub id_number: String,
    pub employer_uscc: String,
    pub si_status: SiStatus,
    pub marital_status: MaritalStatus,
    /// The final decisions the trail holds for this cycle (C8 says whether
    /// one closes it).
    pub decisions: Vec<CycleDecision>,
}

impl std::fmt::Debug for DueDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDetails")
            .field("id_number", &crate::domain::mask_id_str(&self.id_number))
            .finish_non_exhaustive()
    }
}

/// The permits a run reads in its ordered pass (R3, R4): those that may
/// take a step or a decision tonight, by ranges of `valid_until` and
/// status. The rules decide what each one does (`reconcile/rules.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateBounds {
    /// Active permits with `valid_until` up to here: due (R4) or lapsing
    /// (R3).
    pub active_to: NaiveDate,
    /// Suspended permits with `valid_until` before this date: past their
    /// grace (R3, cancelled); `None` when lapsed permits stay suspended
    /// (`lapse_policy = "suspend"`).
    pub suspended_before: Option<NaiveDate>,
}

/// Bounds of the evidence a run may use (R5, C4).
#[derive(Debug, Clone)]
pub struct EvidenceBounds {
    pub visited_from: NaiveDate,
    pub visited_to: NaiveDate,
    /// `YYYY-MM`, inclusive.
    pub month_from: String,
    pub month_to: String,
    pub civil_as_of_max: NaiveDate,
}

/// Receives the feed rows a run may use for its due holders (within
/// [`EvidenceBounds`]; civil status unfiltered: C4's `as_of` filter applies
/// to the holder's latest row, after R2), their stored codes read back as
/// domain values by the backend, which reports a stored text that is no
/// code as an error. The feed tables hold one row per key, R2 settled when
/// written; a sink still lets a later row with a key it has seen replace
/// the earlier one.
pub trait EvidenceSink: Send {
    fn residence(&mut self, id_number: &str, visited_on: NaiveDate, result: ResidenceResult);
    fn payment(
        &mut self,
        id_number: &str,
        month: Month,
        status: PaymentStatus,
        employer_uscc: &str,
    );
    fn civil(&mut self, id_number: &str, marital_status: MaritalStatus, as_of: Option<NaiveDate>);
    /// An empty sink for the same holders, for rows read on another
    /// thread that all come after the ones this sink gets.
    fn part(&self) -> Self
    where
        Self: Sized;
    /// Takes in a [`EvidenceSink::part`]'s rows as having come after all of
    /// this sink's.
    fn merge_later(&mut self, later: Self)
    where
        Self: Sized;
}

/// Receives the night's walk of the register ([`crate::db::RunTx::walk`])
/// a page at a time, each page's permits in `permit_no` order and after
/// the page before's.
pub trait WalkSink: Send {
    fn page(&mut self, page: Vec<Walked>) -> crate::error::Result<()>;
    /// An empty sink for pages read on another connection, all of whose
    /// permits come after this sink's.
    fn part(&self) -> Self
    where
        Self: Sized;
    /// Takes in a [`WalkSink::part`]'s permits as coming after all of this
    /// sink's.
    fn merge_later(&mut self, later: Self) -> crate::error::Result<()>
    where
        Self: Sized;
    /// Takes in a [`WalkSink::part`] that was given its permits in
    /// descending key order (a walk from the upper end of the key), as
    /// coming after all of this sink's, in ascending order.
    fn merge_descending(&mut self, later: Self) -> crate::error::Result<()>
    where
        Self: Sized;
}

/// An event (decision or lifecycle change) with the evidence it rests on.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub permit_no: String,
    pub id_number: String,
    pub kind: EventKind,
    pub reasons: Reasons,
    pub valid_until: NaiveDate,
    pub new_valid_until: Option<NaiveDate>,
    /// The evidence the decision rests on (R5, R9), as the rules selected
    /// it; stored as its codes.
    pub residence_visited_on: Option<NaiveDate>,
    pub residence_result: Option<ResidenceResult>,
    pub si_month: Option<Month>,
    pub si_status: Option<PaymentStatus>,
    pub si_employer_uscc: Option<String>,
    pub marital_status: Option<MaritalStatus>,
    /// CANCELLED: the permit's status before this step (active or
    /// suspended, R3/C1), kept so that `autosign revert` can restore it.
    pub prior_status: Option<PermitStatus>,
    /// The permit change this event carries out (R3, R7).
    pub effect: Effect,
    pub notice: NewNotice,
}

pub use crate::domain::Effect;

#[derive(Clone)]
pub struct NewNotice {
    pub channel: Channel,
    pub recipient: String,
    pub message: String,
    /// Queued, or undeliverable when there is no channel (C12).
    pub status: NoticeStatus,
}

impl std::fmt::Debug for NewNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewNotice")
            .field("channel", &self.channel)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// One committed unit of a run.
#[derive(Debug)]
pub struct RunBatch {
    pub run_id: i64,
    /// The run is held by the safety brake: events only, no permit change,
    /// no notice (docs/rules.md, "Safety brake").
    pub held: bool,
    pub as_of: NaiveDate,
    pub decided_at: String,
    pub events: Vec<NewEvent>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunCount {
    pub kind: EventKind,
    pub reasons: Reasons,
    /// The channel of the notice the event queued; `None` when it queued
    /// none (a run the safety brake holds).
    pub channel: Option<Channel>,
    pub count: i64,
}

/// One row of the audit export, in R9's column order.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub run_id: i64,
    pub as_of: NaiveDate,
    pub permit_no: String,
    pub id_number: String,
    pub decision: EventKind,
    pub reasons: Reasons,
    pub valid_until: NaiveDate,
    pub new_valid_until: Option<NaiveDate>,
    pub residence_visited_on: Option<NaiveDate>,
    pub residence_result: Option<ResidenceResult>,
    pub si_month: Option<Month>,
    pub si_status: Option<PaymentStatus>,
    pub si_employer_uscc: Option<String>,
    pub marital_status: Option<MaritalStatus>,
    /// The notice the event's own run queued; `None` when it queued none
    /// (a run the safety brake holds, or a void event).
    pub notification_channel: Option<Channel>,
    pub notification_status: Option<NoticeStatus>,
    pub decided_at: String,
    /// What became of the event, derived from its run, release and revert.
    pub state: EventState,
}

/// One audit row as the export writes it (R9), in [`AuditRow`]'s column
/// order: every cell as text, dates `YYYY-MM-DD`, an absent value empty,
/// the ID number as stored (the export masks it).
pub type AuditCells<'a> = [&'a str; 18];

impl AuditRow {
    /// The row's cells as owned text, for [`AuditCells`].
    pub fn to_cells(&self) -> [String; 18] {
        let date = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
        let code = |c: Option<&str>| c.unwrap_or_default().to_string();
        [
            self.run_id.to_string(),
            self.as_of.to_string(),
            self.permit_no.clone(),
            self.id_number.clone(),
            self.decision.code().to_string(),
            self.reasons.code().to_string(),
            self.valid_until.to_string(),
            date(self.new_valid_until),
            date(self.residence_visited_on),
            code(self.residence_result.map(|r| r.code())),
            self.si_month.map(|m| m.to_string()).unwrap_or_default(),
            code(self.si_status.map(|s| s.code())),
            code(self.si_employer_uscc.as_deref()),
            code(self.marital_status.map(|m| m.code())),
            code(self.notification_channel.map(|c| c.code())),
            code(self.notification_status.map(|s| s.code())),
            self.decided_at.clone(),
            self.state.code().to_string(),
        ]
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub notification_id: i64,
    pub run_id: i64,
    pub as_of: NaiveDate,
    pub permit_no: String,
    pub cycle_valid_until: NaiveDate,
    pub kind: EventKind,
    pub channel: Channel,
    pub recipient: String,
    pub status: NoticeStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub provider_ref: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    #[tokio::test]
    async fn a_stored_code_reads_back_as_its_domain_value_and_an_unknown_one_is_named() {
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        let (status, kind, reasons): (PermitStatus, EventKind, Reasons) = sqlx::query_as(
            "SELECT 'suspended', 'VISIT_CENTER', 'ADDRESS_CHANGED;EMPLOYER_CHANGED'",
        )
        .fetch_one(&mut c)
        .await
        .expect("known codes");
        assert_eq!(status, PermitStatus::Suspended);
        assert_eq!(kind, EventKind::VisitCenter);
        assert_eq!(reasons.code(), "ADDRESS_CHANGED;EMPLOYER_CHANGED");
        let e = sqlx::query_as::<_, (PermitStatus,)>("SELECT 'frozen'")
            .fetch_one(&mut c)
            .await
            .expect_err("an unknown status");
        assert!(e.to_string().contains(r#""frozen""#), "{e}");
        let e = sqlx::query_as::<_, (EventState,)>("SELECT 'APPLIED'")
            .fetch_one(&mut c)
            .await
            .expect_err("a code in another case");
        assert!(e.to_string().contains(r#""APPLIED""#), "{e}");
        let (channel, status, no_notice): (Channel, NoticeStatus, Option<Channel>) =
            sqlx::query_as("SELECT 'email', 'withdrawn', NULL")
                .fetch_one(&mut c)
                .await
                .expect("a notice's codes");
        assert_eq!(channel, Channel::Email);
        assert_eq!(status, NoticeStatus::Withdrawn);
        assert_eq!(no_notice, None);
        let e = sqlx::query_as::<_, (Channel,)>("SELECT 'fax'")
            .fetch_one(&mut c)
            .await
            .expect_err("an unknown channel");
        assert!(e.to_string().contains(r#""fax""#), "{e}");
        let e = sqlx::query_as::<_, (NoticeStatus,)>("SELECT '已发送'")
            .fetch_one(&mut c)
            .await
            .expect_err("a label, not a stored code");
        assert!(e.to_string().contains(r#""已发送""#), "{e}");
        let (run, paid, civil): (RunStatus, PaymentStatus, MaritalStatus) =
            sqlx::query_as("SELECT 'reverted', 'arrears', 'divorced'")
                .fetch_one(&mut c)
                .await
                .expect("a run's and the feeds' codes");
        assert_eq!(run, RunStatus::Reverted);
        assert_eq!(paid, PaymentStatus::Arrears);
        assert_eq!(civil, MaritalStatus::Divorced);
        let e = sqlx::query_as::<_, (RunStatus,)>("SELECT 'paused'")
            .fetch_one(&mut c)
            .await
            .expect_err("an unknown run status");
        assert!(e.to_string().contains(r#""paused""#), "{e}");
        let e = sqlx::query_as::<_, (ResidenceResult,)>("SELECT '一致'")
            .fetch_one(&mut c)
            .await
            .expect_err("a feed's label, not a stored code");
        assert!(e.to_string().contains(r#""一致""#), "{e}");
        let (month, none): (Month, Option<Month>) = sqlx::query_as("SELECT '2026-09', NULL")
            .fetch_one(&mut c)
            .await
            .expect("a stored month");
        assert_eq!(month, Month::new(2026, 9).expect("a month"));
        assert_eq!(none, None);
        let e = sqlx::query_as::<_, (Month,)>("SELECT '2026-13'")
            .fetch_one(&mut c)
            .await
            .expect_err("a month out of range");
        assert!(e.to_string().contains(r#""2026-13""#), "{e}");
    }

    #[tokio::test]
    async fn every_run_status_is_one_the_ledger_allows_and_reads_back() {
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        crate::db::sqlite::MIGRATOR
            .run(&mut c)
            .await
            .expect("migrations");
        let insert = "INSERT INTO runs (as_of, status, started_at) VALUES ($1, $2, '')";
        for (day, status) in (1..).zip(RunStatus::ALL) {
            sqlx::query(insert)
                .bind(format!("2026-11-{day:02}"))
                .bind(status.code())
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{status}: {e}"));
        }
        sqlx::query(insert)
            .bind("2026-12-01")
            .bind("paused")
            .execute(&mut c)
            .await
            .expect_err("a status the ledger does not allow");
        let back: Vec<RunStatus> = sqlx::query_scalar("SELECT status FROM runs ORDER BY run_id")
            .fetch_all(&mut c)
            .await
            .expect("the statuses read back");
        assert_eq!(back, RunStatus::ALL);
    }
}
