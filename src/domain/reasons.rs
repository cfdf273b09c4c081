//! The reasons of one decision (R5), as one value.
//!
//! A decision's reasons are a set: R5 names each reason at most once and
//! lists them in its own order, whatever order they were found in. The
//! audit trail stores them as one text column (`events.reasons`): the codes
//! joined by `;` in R5's order, empty for none. [`Reasons::code`] writes
//! that text and `TryFrom<String>` reads it back (the database layer calls
//! them); the rest of the crate passes the value.

use std::cmp::Ordering;
use std::fmt;
use std::sync::LazyLock;

use super::Reason;

// One bit per `Reason`, bit `i` for `Reason::ALL[i]` (R5's order).
const _: () = assert!(Reason::ALL.len() <= u8::BITS as usize);

/// How many different sets there are.
const SETS: usize = 1 << Reason::ALL.len();

/// Every set's stored text, by its bits: built once, so that writing a
/// night's events (one text each) allocates nothing for their reasons.
static CODES: LazyLock<[String; SETS]> = LazyLock::new(|| {
    std::array::from_fn(|bits| {
        let set = Reasons(u8::try_from(bits).unwrap_or_default());
        set.iter().map(|r| r.code()).collect::<Vec<_>>().join(";")
    })
});

/// The reasons of one decision (R5): each reason at most once, listed in
/// R5's order. Empty for AUTO_SIGNED and the lifecycle steps (R3).
///
/// One byte: a run's plan holds one per planned decision (~600,000 a night
/// at city scale). Ordered as its stored text sorts (bytewise), so counts
/// kept in memory list in the order of the database's `ORDER BY reasons`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Reasons(u8);

impl Reasons {
    /// No reason: AUTO_SIGNED, or a lifecycle step.
    pub const NONE: Reasons = Reasons(0);

    fn bit(r: Reason) -> u8 {
        // The enumeration's discriminants are its declaration order, the
        // order of `Reason::ALL`.
        1 << (r as u8)
    }

    /// The set of `reasons`, in whatever order (and however often) they
    /// come.
    pub fn of(reasons: &[Reason]) -> Reasons {
        reasons.iter().fold(Reasons::NONE, |mut set, &r| {
            set.insert(r);
            set
        })
    }

    pub fn insert(&mut self, r: Reason) {
        self.0 |= Reasons::bit(r);
    }

    pub fn contains(self, r: Reason) -> bool {
        self.0 & Reasons::bit(r) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The reasons in R5's order.
    pub fn iter(self) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |&r| self.contains(r))
    }

    /// The reasons in R5's order.
    pub fn to_vec(self) -> Vec<Reason> {
        self.iter().collect()
    }

    /// The text stored in the database and written to exports: the codes
    /// in R5's order joined by `;` (`ADDRESS_CHANGED;EMPLOYER_CHANGED`),
    /// empty for none.
    pub fn code(self) -> &'static str {
        &CODES[usize::from(self.0)]
    }
}

/// Every set's place when the sets are sorted by their stored text, by its
/// bits: a run tallies each event it writes under its reasons in a
/// `BTreeMap`, and comparing the texts themselves showed in a first
/// night's profile (1.6 % of its samples at 1,000,000 permits).
static RANKS: LazyLock<[u8; SETS]> = LazyLock::new(|| {
    let mut by_text: Vec<usize> = (0..SETS).collect();
    by_text.sort_by_key(|&bits| CODES[bits].as_str());
    let mut ranks = [0u8; SETS];
    for (rank, bits) in by_text.into_iter().enumerate() {
        ranks[bits] = u8::try_from(rank).unwrap_or(u8::MAX);
    }
    ranks
});

impl Ord for Reasons {
    fn cmp(&self, other: &Self) -> Ordering {
        RANKS[usize::from(self.0)].cmp(&RANKS[usize::from(other.0)])
    }
}

impl PartialOrd for Reasons {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Display for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A list of the codes, in R5's order (as `explain --json` shows them).
impl serde::Serialize for Reasons {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Stored reasons, as the database layer reads them back: exactly the text
/// [`Reasons::code`] writes. A code in another case or order, repeated, or
/// with an empty part is refused rather than read as the set it seems to
/// name: read back and written again (the PostgreSQL audit export does),
/// it would no longer be the stored text.
impl TryFrom<String> for Reasons {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let mut set = Reasons::NONE;
        if !s.is_empty() {
            for code in s.split(';') {
                let r = Reason::from_code(code).ok_or_else(|| {
                    format!("stored reasons {s:?}: {code:?} is not a reason code")
                })?;
                set.insert(r);
            }
        }
        if set.code() != s {
            return Err(format!(
                "stored reasons {s:?} are not distinct reason codes in R5's order"
            ));
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every set of reasons, each as the list of its reasons in R5's order.
    fn every_set() -> Vec<Vec<Reason>> {
        (0..SETS)
            .map(|bits| {
                Reason::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, r)| *r)
                    .collect()
            })
            .collect()
    }

    /// Every order of `items`.
    fn permutations(items: &[Reason]) -> Vec<Vec<Reason>> {
        if items.is_empty() {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, first);
                out.push(p);
            }
        }
        out
    }

    fn decode(s: &str) -> Result<Reasons, String> {
        Reasons::try_from(s.to_string())
    }

    #[test]
    fn reasons_are_listed_back_in_r5_order() {
        // R5: reasons are listed in R5's order whatever order they came in.
        let set = Reasons::of(&[Reason::MaritalStatusChanged, Reason::AddressNotVerified]);
        assert_eq!(
            set.to_vec(),
            vec![Reason::AddressNotVerified, Reason::MaritalStatusChanged]
        );
        assert_eq!(Reasons::of(&Reason::ALL).to_vec(), Reason::ALL.to_vec());
        assert!(Reasons::of(&[]).to_vec().is_empty());
    }

    #[test]
    fn every_set_in_every_order_is_stored_in_r5_order_and_read_back() {
        for set in every_set() {
            let text = set.iter().map(Reason::code).collect::<Vec<_>>().join(";");
            for order in permutations(&set) {
                let reasons = Reasons::of(&order);
                assert_eq!(reasons.to_vec(), set, "{order:?}");
                assert_eq!(reasons.len(), set.len(), "{order:?}");
                assert_eq!(reasons.code(), text, "{order:?}");
                assert_eq!(reasons.to_string(), text, "{order:?}");
                assert_eq!(decode(&text), Ok(reasons), "{text}");
                // Only R5's order is the stored text: another order of two
                // or more reasons is not something a run wrote.
                let other = order.iter().map(Reason::code).collect::<Vec<_>>().join(";");
                if other != text {
                    assert_eq!(
                        decode(&other),
                        Err(format!(
                            "stored reasons {other:?} are not distinct reason codes in R5's order"
                        ))
                    );
                }
            }
        }
    }

    #[test]
    fn no_reason_is_the_empty_text() {
        assert!(Reasons::NONE.is_empty());
        assert_eq!(Reasons::NONE, Reasons::default());
        assert_eq!(Reasons::NONE.len(), 0);
        assert_eq!(Reasons::NONE.code(), "");
        assert_eq!(Reasons::NONE.iter().count(), 0);
        assert_eq!(decode(""), Ok(Reasons::NONE));
        assert_eq!(format!("{:?}", Reasons::NONE), "[]");
    }

    #[test]
    fn the_stored_text_is_todays() {
        // The column's contents predate this type: the same text, byte for
        // byte, so no migration and unchanged exports.
        assert_eq!(
            Reasons::of(&[Reason::EmployerChanged, Reason::AddressChanged]).code(),
            "ADDRESS_CHANGED;EMPLOYER_CHANGED"
        );
        assert_eq!(
            Reasons::of(&Reason::ALL).code(),
            "ADDRESS_NOT_VERIFIED;ADDRESS_CHANGED;SOCIAL_INSURANCE_MISSING;\
             SOCIAL_INSURANCE_CHANGED;EMPLOYER_CHANGED;MARITAL_STATUS_CHANGED"
        );
        assert_eq!(
            decode("SOCIAL_INSURANCE_MISSING"),
            Ok(Reasons::of(&[Reason::SocialInsuranceMissing]))
        );
    }

    #[test]
    fn an_unknown_code_is_refused_naming_the_value() {
        assert_eq!(
            decode("ADDRESS_CHANGED;PET_CHANGED"),
            Err(r#"stored reasons "ADDRESS_CHANGED;PET_CHANGED": "PET_CHANGED" is not a reason code"#
                .to_string())
        );
        // Stored codes are read exactly: no other case, no Chinese label,
        // no spaces, no empty part.
        for bad in [
            "address_changed",
            "居住地址已变化",
            " ADDRESS_CHANGED",
            "ADDRESS_CHANGED;",
            ";ADDRESS_CHANGED",
            "ADDRESS_CHANGED;;EMPLOYER_CHANGED",
            ";",
        ] {
            let err = decode(bad).expect_err(bad);
            assert!(err.contains("is not a reason code"), "{bad}: {err}");
            assert!(err.starts_with(&format!("stored reasons {bad:?}")), "{err}");
        }
        assert_eq!(
            decode("ADDRESS_CHANGED;ADDRESS_CHANGED"),
            Err(r#"stored reasons "ADDRESS_CHANGED;ADDRESS_CHANGED" are not distinct reason codes in R5's order"#
                .to_string())
        );
    }

    #[test]
    fn sets_sort_as_their_stored_text() {
        // The database sorts the column bytewise (`ORDER BY reasons`); a
        // tally in memory must list in the same order.
        let mut sets: Vec<Reasons> = every_set().iter().map(|s| Reasons::of(s)).collect();
        let mut texts: Vec<&str> = sets.iter().map(|s| s.code()).collect();
        sets.sort();
        texts.sort();
        assert_eq!(sets.iter().map(|s| s.code()).collect::<Vec<_>>(), texts);
    }

    #[test]
    fn serde_lists_the_codes() {
        let set = Reasons::of(&[Reason::EmployerChanged, Reason::AddressChanged]);
        assert_eq!(
            serde_json::to_string(&set).expect("json"),
            r#"["ADDRESS_CHANGED","EMPLOYER_CHANGED"]"#
        );
        assert_eq!(serde_json::to_string(&Reasons::NONE).expect("json"), "[]");
    }

    #[test]
    fn contains_and_debug_name_the_reasons() {
        let set = Reasons::of(&[Reason::EmployerChanged, Reason::AddressNotVerified]);
        assert!(set.contains(Reason::AddressNotVerified));
        assert!(set.contains(Reason::EmployerChanged));
        assert!(!set.contains(Reason::AddressChanged));
        assert_eq!(format!("{set:?}"), "[AddressNotVerified, EmployerChanged]");
    }
}
