//! The enumerations of the feeds (R1) and of the run's results
//! (R5–R8).
//!
//! Every enumeration parses its English code case-insensitively or any of
//! its Chinese labels, stores and prints the code (`Display`, `code()`), and
//! shows holders the first Chinese label (`label_zh()`).

use std::fmt;
use std::str::FromStr;

/// A value that is not one of an enumeration's codes or labels. The message
/// lists what is accepted and never echoes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of {}", accepted_list(.accepted))]
pub struct EnumError {
    /// What was being parsed, e.g. `"permit status"`.
    pub kind: &'static str,
    /// Each accepted code with its Chinese labels.
    pub accepted: &'static [(&'static str, &'static [&'static str])],
}

fn accepted_list(accepted: &[(&str, &[&str])]) -> String {
    let mut out = String::new();
    for (i, (code, labels)) in accepted.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(code);
        for label in labels.iter() {
            out.push('/');
            out.push_str(label);
        }
    }
    out
}

macro_rules! count {
    () => { 0usize };
    ($head:ident $($tail:ident)*) => { 1usize + count!($($tail)*) };
}

macro_rules! first {
    ($head:literal $(, $tail:literal)*) => {
        $head
    };
}

/// Defines an enumeration with its codes, Chinese labels, parsing, `Display`
/// (the code), `FromStr` and serde (as the code).
macro_rules! domain_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident => $code:literal, [$($label:literal),+ $(,)?]
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; count!($($variant)+)] = [$($name::$variant),+];

            const ACCEPTED: &'static [(&'static str, &'static [&'static str])] =
                &[$(($code, &[$($label),+])),+];

            /// Parses the English code (any case) or a Chinese label, trimmed
            /// first.
            pub fn parse(s: &str) -> Result<Self, EnumError> {
                let s = s.trim();
                Self::ALL
                    .into_iter()
                    .find(|v| v.code().eq_ignore_ascii_case(s) || v.labels_zh().contains(&s))
                    .ok_or(EnumError { kind: $kind, accepted: Self::ACCEPTED })
            }

            /// The value of a code exactly as [`Self::code`] writes it (a
            /// stored value: no labels, no other case).
            pub fn from_code(s: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.code() == s)
            }

            /// The code stored in the database and written to exports.
            pub fn code(&self) -> &'static str {
                match self {
                    $($name::$variant => $code),+
                }
            }

            /// The Chinese label shown to holders and clerks.
            pub fn label_zh(&self) -> &'static str {
                match self {
                    $($name::$variant => first!($($label),+)),+
                }
            }

            /// Every Chinese label `parse` accepts for this value.
            pub fn labels_zh(&self) -> &'static [&'static str] {
                match self {
                    $($name::$variant => &[$($label),+]),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.code())
            }
        }

        /// A stored code, as the database layer reads it back.
        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> std::result::Result<Self, String> {
                Self::from_code(&s).ok_or_else(|| format!("stored {} {s:?} is not a code of it", $kind))
            }
        }

        impl FromStr for $name {
            type Err = EnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = EnumError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.code())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

domain_enum! {
    /// A permit's status in the register (R1 `status`, R3).
    pub enum PermitStatus("permit status") {
        Active => "active", ["有效"],
        /// 使用功能中止: not endorsed by its end date.
        Suspended => "suspended", ["中止"],
        /// 注销: final (C5).
        Cancelled => "cancelled", ["注销"],
    }
}

domain_enum! {
    /// Social insurance at registration (R1 `si_status`).
    pub enum SiStatus("social insurance status") {
        Paying => "paying", ["缴费"],
        NotPaying => "not_paying", ["未缴费"],
    }
}

domain_enum! {
    /// Marital status (婚姻状况), in permits and the civil-status feed.
    pub enum MaritalStatus("marital status") {
        Single => "single", ["未婚"],
        Married => "married", ["已婚"],
        Divorced => "divorced", ["离婚", "离异"],
        Widowed => "widowed", ["丧偶"],
    }
}

domain_enum! {
    /// Outcome of a residence verification visit (上门走访, R1
    /// `residence.result`).
    pub enum ResidenceResult("residence result") {
        Consistent => "consistent", ["一致"],
        Changed => "changed", ["变化", "不一致"],
        NotFound => "not_found", ["查无此人"],
    }
}

domain_enum! {
    /// Status of a monthly social-insurance contribution (R1
    /// `social_insurance.status`).
    pub enum PaymentStatus("payment status") {
        Paid => "paid", ["正常", "正常缴费"],
        Arrears => "arrears", ["欠缴"],
        Stopped => "stopped", ["停保", "暂停"],
    }
}

domain_enum! {
    /// Why a due permit is not endorsed automatically (R5). The derived
    /// order is the order R5 lists reasons in.
    pub enum Reason("reason") {
        AddressNotVerified => "ADDRESS_NOT_VERIFIED", ["社区民警未能核实您的居住地址"],
        AddressChanged => "ADDRESS_CHANGED", ["居住地址已变化"],
        SocialInsuranceMissing => "SOCIAL_INSURANCE_MISSING", ["未查询到近期社会保险缴费记录"],
        SocialInsuranceChanged => "SOCIAL_INSURANCE_CHANGED", ["社会保险缴费状态已变化"],
        EmployerChanged => "EMPLOYER_CHANGED", ["就业单位已变化"],
        MaritalStatusChanged => "MARITAL_STATUS_CHANGED", ["婚姻状况已变化"],
    }
}

impl Reason {
    /// Whether the reason may still be cured by evidence arriving before the
    /// decision deadline (R6: only ADDRESS_NOT_VERIFIED and
    /// SOCIAL_INSURANCE_MISSING keep a permit PENDING).
    pub fn awaits_evidence(self) -> bool {
        matches!(
            self,
            Reason::AddressNotVerified | Reason::SocialInsuranceMissing
        )
    }
}

domain_enum! {
    /// A decision or lifecycle change, and the kind of notice it queues
    /// (R8). The derived order is the order listed here.
    pub enum EventKind("event kind") {
        AutoSigned => "AUTO_SIGNED", ["自动签注已通过"],
        VisitCenter => "VISIT_CENTER", ["请到社区事务受理服务中心办理"],
        Suspended => "SUSPENDED", ["居住证使用功能中止"],
        Cancelled => "CANCELLED", ["居住证注销"],
    }
}

domain_enum! {
    /// How a notice reaches the holder (R8, C12).
    pub enum Channel("channel") {
        Sms => "sms", ["短信"],
        Email => "email", ["电子邮件"],
        /// No phone and no e-mail: the notice is undeliverable.
        None => "none", ["无"],
    }
}

domain_enum! {
    /// Delivery state of a notice in the outbox (R8).
    pub enum NoticeStatus("notice status") {
        Queued => "queued", ["待发送"],
        Sent => "sent", ["已发送"],
        /// Failed at least once; will be retried.
        Failed => "failed", ["发送失败"],
        /// Gave up after `max_attempts`.
        Dead => "dead", ["已放弃"],
        Undeliverable => "undeliverable", ["无法送达"],
        /// Its run was reverted before it was sent (`autosign revert`):
        /// never claimed or requeued.
        Withdrawn => "withdrawn", ["已撤回"],
    }
}

domain_enum! {
    /// Where a run stands in the run ledger (`runs.status`): the values the
    /// ledger's CHECK allows, moved on by the run itself and by `release`,
    /// `discard` and `revert` (docs/rules.md, "Safety brake").
    pub enum RunStatus("run status") {
        /// In progress, or interrupted: the next run of its date resumes
        /// it.
        Running => "running", ["运行中"],
        Completed => "completed", ["已完成"],
        /// Its decisions are recorded, not applied: the safety brake holds
        /// it until `autosign release` or `autosign discard`.
        Held => "held", ["被安全闸暂停"],
        /// Voided by `autosign discard`: its date may run again.
        Discarded => "discarded", ["已作废"],
        /// Undone by `autosign revert`: its date may run again.
        Reverted => "reverted", ["已撤销"],
    }
}

/// What an event does to its permit (R3, R7); `reconcile::rules::effect`
/// says which for an event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// AUTO_SIGNED: valid_until moves to the given date (R7).
    Extend(chrono::NaiveDate),
    /// SUSPENDED / CANCELLED: the permit's status becomes this (R3).
    SetStatus(PermitStatus),
    /// VISIT_CENTER: the permit is unchanged.
    None,
}

domain_enum! {
    /// What became of a recorded event (R9's `state` column; docs/rules.md,
    /// "The audit trail").
    pub enum EventState("event state") {
        /// In effect: written by a run the brake let through, or applied by
        /// `autosign release`.
        Applied => "applied", ["已生效"],
        /// Written by a run the safety brake holds: nothing applied yet.
        Held => "held", ["暂缓生效"],
        /// Its run was discarded.
        Void => "void", ["已作废"],
        /// Its run was released, but the permit's cycle had changed since.
        NotApplied => "not_applied", ["未生效"],
        /// Its run was reverted and its permit change undone.
        Reverted => "reverted", ["已撤销"],
    }
}

impl EventState {
    /// What the state says of a final decision, as C8 weighs it
    /// (`reconcile::rules::cycle_decided`). An applied decision counts as
    /// one the brake let through: applied by `release` weighs the same.
    pub fn as_cycle_decision(self) -> CycleDecision {
        let (held, released, undone) = match self {
            EventState::Applied => (false, None, false),
            EventState::Held | EventState::Void => (true, None, false),
            EventState::NotApplied => (true, Some(false), false),
            EventState::Reverted => (false, None, true),
        };
        CycleDecision {
            held,
            released,
            undone,
        }
    }
}

/// A final decision (AUTO_SIGNED or VISIT_CENTER) the audit trail holds
/// for a permit's cycle, with what became of it; C8 (`reconcile::rules::
/// cycle_decided`) says whether it closes the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleDecision {
    /// Written by a run the safety brake held.
    pub held: bool,
    /// For a held one: whether `autosign release` applied it (`None`: not
    /// released).
    pub released: Option<bool>,
    /// `autosign revert` undid it.
    pub undone: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_codes_in_any_case_and_chinese_labels() {
        let cases: &[(&str, MaritalStatus)] = &[
            ("single", MaritalStatus::Single),
            ("SINGLE", MaritalStatus::Single),
            (" Married ", MaritalStatus::Married),
            ("未婚", MaritalStatus::Single),
            ("已婚", MaritalStatus::Married),
            ("离婚", MaritalStatus::Divorced),
            ("离异", MaritalStatus::Divorced),
            ("丧偶", MaritalStatus::Widowed),
        ];
        for &(s, expected) in cases {
            assert_eq!(MaritalStatus::parse(s), Ok(expected), "{s}");
        }
        assert_eq!(PermitStatus::parse("有效"), Ok(PermitStatus::Active));
        assert_eq!(
            PermitStatus::parse("Cancelled"),
            Ok(PermitStatus::Cancelled)
        );
        assert_eq!(SiStatus::parse("NOT_PAYING"), Ok(SiStatus::NotPaying));
        assert_eq!(SiStatus::parse("未缴费"), Ok(SiStatus::NotPaying));
        assert_eq!(
            ResidenceResult::parse("不一致"),
            Ok(ResidenceResult::Changed)
        );
        assert_eq!(
            ResidenceResult::parse("查无此人"),
            Ok(ResidenceResult::NotFound)
        );
        assert_eq!(PaymentStatus::parse("正常缴费"), Ok(PaymentStatus::Paid));
        assert_eq!(PaymentStatus::parse("暂停"), Ok(PaymentStatus::Stopped));
        assert_eq!(
            Reason::parse("employer_changed"),
            Ok(Reason::EmployerChanged)
        );
        assert_eq!(EventKind::parse("AUTO_SIGNED"), Ok(EventKind::AutoSigned));
        assert_eq!(Channel::parse("none"), Ok(Channel::None));
        assert_eq!(
            NoticeStatus::parse("undeliverable"),
            Ok(NoticeStatus::Undeliverable)
        );
    }

    #[test]
    fn rejects_unknown_values_listing_the_accepted_ones() {
        let err = PermitStatus::parse("expired").unwrap_err();
        assert_eq!(err.kind, "permit status");
        assert_eq!(
            err.to_string(),
            "expected one of active/有效, suspended/中止, cancelled/注销"
        );
        let err = MaritalStatus::parse("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected one of single/未婚, married/已婚, divorced/离婚/离异, widowed/丧偶"
        );
        assert!(SiStatus::parse("not paying").is_err());
        assert!(PaymentStatus::parse("正 常").is_err());
    }

    #[test]
    fn every_value_round_trips_through_code_and_labels() {
        fn check<T: Copy + PartialEq + fmt::Debug + fmt::Display>(
            all: &[T],
            parse: fn(&str) -> Result<T, EnumError>,
            code: fn(&T) -> &'static str,
            labels: fn(&T) -> &'static [&'static str],
        ) {
            for v in all {
                assert_eq!(parse(code(v)), Ok(*v));
                assert_eq!(v.to_string(), code(v));
                for label in labels(v) {
                    assert_eq!(parse(label), Ok(*v), "{label}");
                }
            }
        }
        check(
            &PermitStatus::ALL,
            PermitStatus::parse,
            PermitStatus::code,
            PermitStatus::labels_zh,
        );
        check(
            &SiStatus::ALL,
            SiStatus::parse,
            SiStatus::code,
            SiStatus::labels_zh,
        );
        check(
            &MaritalStatus::ALL,
            MaritalStatus::parse,
            MaritalStatus::code,
            MaritalStatus::labels_zh,
        );
        check(
            &ResidenceResult::ALL,
            ResidenceResult::parse,
            ResidenceResult::code,
            ResidenceResult::labels_zh,
        );
        check(
            &PaymentStatus::ALL,
            PaymentStatus::parse,
            PaymentStatus::code,
            PaymentStatus::labels_zh,
        );
        check(&Reason::ALL, Reason::parse, Reason::code, Reason::labels_zh);
        check(
            &EventKind::ALL,
            EventKind::parse,
            EventKind::code,
            EventKind::labels_zh,
        );
        check(
            &Channel::ALL,
            Channel::parse,
            Channel::code,
            Channel::labels_zh,
        );
        check(
            &NoticeStatus::ALL,
            NoticeStatus::parse,
            NoticeStatus::code,
            NoticeStatus::labels_zh,
        );
        check(
            &RunStatus::ALL,
            RunStatus::parse,
            RunStatus::code,
            RunStatus::labels_zh,
        );
    }

    #[test]
    fn reasons_sort_in_spec_order() {
        let mut reasons = vec![
            Reason::MaritalStatusChanged,
            Reason::AddressNotVerified,
            Reason::EmployerChanged,
            Reason::SocialInsuranceMissing,
            Reason::AddressChanged,
            Reason::SocialInsuranceChanged,
        ];
        reasons.sort();
        assert_eq!(reasons, Reason::ALL);
        let codes: Vec<&str> = Reason::ALL.iter().map(Reason::code).collect();
        assert_eq!(
            codes.join(";"),
            "ADDRESS_NOT_VERIFIED;ADDRESS_CHANGED;SOCIAL_INSURANCE_MISSING;\
             SOCIAL_INSURANCE_CHANGED;EMPLOYER_CHANGED;MARITAL_STATUS_CHANGED"
        );
        assert!(EventKind::AutoSigned < EventKind::VisitCenter);
        assert!(EventKind::Suspended < EventKind::Cancelled);
    }

    #[test]
    fn labels_are_plain_chinese() {
        assert_eq!(
            Reason::AddressNotVerified.label_zh(),
            "社区民警未能核实您的居住地址"
        );
        assert_eq!(Reason::MaritalStatusChanged.label_zh(), "婚姻状况已变化");
        assert_eq!(
            EventKind::VisitCenter.label_zh(),
            "请到社区事务受理服务中心办理"
        );
        assert_eq!(MaritalStatus::Divorced.label_zh(), "离婚");
        assert!(Reason::SocialInsuranceMissing.awaits_evidence());
        assert!(!Reason::EmployerChanged.awaits_evidence());
    }

    #[test]
    fn serde_uses_the_code() {
        let json = serde_json::to_string(&[Reason::EmployerChanged]).unwrap();
        assert_eq!(json, r#"["EMPLOYER_CHANGED"]"#);
        let back: Vec<MaritalStatus> = serde_json::from_str(r#"["married","离异"]"#).unwrap();
        assert_eq!(back, vec![MaritalStatus::Married, MaritalStatus::Divorced]);
        assert!(serde_json::from_str::<MaritalStatus>(r#""x""#).is_err());
        let json = serde_json::to_string(&[RunStatus::Completed, RunStatus::Held]).unwrap();
        assert_eq!(json, r#"["completed","held"]"#);
    }
}
