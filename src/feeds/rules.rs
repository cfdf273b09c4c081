//! The import rules as pure functions, beside each other: why a row is
//! refused (R1), what a permit row does to the register as stored before
//! the file (R2, C5, C6, C15), and the words for a key given twice in one
//! file (R2: the later line wins). The readers and writers in
//! `feeds/mod.rs` move rows to and from the database and ask these.

use std::fmt;

use chrono::NaiveDate;

use crate::db::{ContactUpdate, ImportMark, PermitRow};
use crate::domain::PermitStatus;

/// Why a row is refused (R1): the column it is about (if one), a stable
/// code and a detail for the operator. Rendered as `CODE: detail` only in
/// the rejects file and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The column (the feed's name for it, or the header's for a column
    /// the feed does not know); `None` for the record as a whole.
    pub field: Option<String>,
    /// Upper-case and stable: `MISSING_NAME`, `INVALID_PHONE`,
    /// `VALID_UNTIL_BACKWARDS`, …
    pub code: String,
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

fn code_of(column: &str) -> String {
    column.to_ascii_uppercase()
}

impl Rejection {
    /// A required column is empty.
    pub fn missing(column: &str) -> Rejection {
        Rejection {
            field: Some(column.to_string()),
            code: format!("MISSING_{}", code_of(column)),
            detail: format!("{column} is empty"),
        }
    }

    /// A column's value does not parse.
    pub fn invalid(column: &str, err: impl fmt::Display) -> Rejection {
        Rejection {
            field: Some(column.to_string()),
            code: format!("INVALID_{}", code_of(column)),
            detail: format!("{column}: {err}"),
        }
    }

    /// A value longer than any real one: a broken record or an attack.
    /// `column`: `None` for a value past the feed's columns (the reader
    /// never passes one; a parser called directly may), named by position.
    pub fn too_long(
        column: Option<&str>,
        position: usize,
        chars: usize,
        limit: usize,
    ) -> Rejection {
        let name = column.map_or_else(|| format!("value {position}"), str::to_string);
        Rejection {
            field: column.map(str::to_string),
            code: "FIELD_TOO_LONG".to_string(),
            detail: format!("{name} has {chars} characters, at most {limit}"),
        }
    }

    /// The record's field count differs from the header's.
    pub fn wrong_field_count(fields: usize, header: usize) -> Rejection {
        Rejection {
            field: None,
            code: "WRONG_FIELD_COUNT".to_string(),
            detail: format!("{fields} fields, the header has {header}"),
        }
    }

    /// A NUL is never data (PostgreSQL cannot even store it): a truncated
    /// or binary-corrupted record.
    pub fn nul_character(column: &str) -> Rejection {
        Rejection {
            field: Some(column.to_string()),
            code: "NUL_CHARACTER".to_string(),
            detail: format!("field {column} contains a NUL byte"),
        }
    }

    /// A paid social-insurance month names its employer (R1).
    pub fn missing_paying_employer() -> Rejection {
        Rejection {
            field: Some("employer_uscc".to_string()),
            code: "MISSING_EMPLOYER_USCC".to_string(),
            detail: "employer_uscc is required when status is paid".to_string(),
        }
    }

    /// C6: a permit's `valid_until` never moves backwards.
    pub fn valid_until_backwards(given: NaiveDate, stored: NaiveDate) -> Rejection {
        Rejection {
            field: Some("valid_until".to_string()),
            code: "VALID_UNTIL_BACKWARDS".to_string(),
            detail: format!("valid_until {given} is earlier than the stored {stored}"),
        }
    }
}

/// The warning for a feed row whose key an earlier line of the same file
/// had (R2: the later line wins).
pub fn same_key_warning(earlier: u64) -> String {
    format!("same key as line {earlier}; the later line wins (R2)")
}

/// The warning for a permit row whose permit_no an earlier line of the same
/// file had (R2, C6: each row is compared with the stored permit only; the
/// later accepted line wins).
pub fn same_permit_warning(earlier: u64) -> String {
    format!("same permit_no as line {earlier}; the later line wins (R2, C6)")
}

/// What a permit row does to the register. (No `Debug`: a permit row holds
/// personal data that must not reach a log by accident.)
pub enum PermitWrite {
    /// The whole row is stored (a new permit, or an update).
    Full(PermitRow, ImportMark),
    /// A cancelled permit takes its contact fields only (C5, C15).
    Contacts(ContactUpdate),
}

/// What a permit row does to the register, given the permit as stored
/// before this file (`mark.prior`; `None`: new) and the file's `status`
/// column if it had one, or why it is refused.
pub fn permit_write(
    mut row: PermitRow,
    given_status: Option<PermitStatus>,
    mark: ImportMark,
) -> Result<PermitWrite, Rejection> {
    Ok(match mark.prior {
        None => PermitWrite::Full(row, mark),
        // C5/C15: a cancelled permit takes contact fields only.
        Some(prior) if prior.status == PermitStatus::Cancelled => {
            PermitWrite::Contacts(ContactUpdate {
                permit_no: row.permit_no,
                name: row.name,
                phone: row.phone,
                email: row.email,
                mark,
            })
        }
        // R2, C6: compared with the stored value only.
        Some(prior) if row.valid_until < prior.valid_until => {
            return Err(Rejection::valid_until_backwards(
                row.valid_until,
                prior.valid_until,
            ))
        }
        Some(prior) => {
            // C5: the status column applies only when it says cancelled; a
            // later valid_until restores a suspended permit (endorsed at a
            // center).
            let status = if given_status == Some(PermitStatus::Cancelled) {
                PermitStatus::Cancelled
            } else if prior.status == PermitStatus::Suspended && row.valid_until > prior.valid_until
            {
                PermitStatus::Active
            } else {
                prior.status
            };
            row.status = status;
            PermitWrite::Full(row, mark)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PriorPermit;

    fn d(s: &str) -> NaiveDate {
        crate::domain::parse_date(s).expect("date")
    }

    fn row(valid_until: &str) -> PermitRow {
        PermitRow {
            permit_no: "SH0000000001".into(),
            id_number: "310115199001011234".into(),
            name: "张三".into(),
            phone: Some("13800000000".into()),
            email: None,
            district_code: "310115".into(),
            street_code: "310115001".into(),
            address: "浦东新区".into(),
            valid_until: d(valid_until),
            status: PermitStatus::Active,
            employer_uscc: String::new(),
            si_status: crate::domain::SiStatus::Paying,
            marital_status: crate::domain::MaritalStatus::Single,
        }
    }

    fn stored(status: PermitStatus, valid_until: &str) -> ImportMark {
        ImportMark {
            line: 7,
            prior: Some(PriorPermit {
                status,
                valid_until: d(valid_until),
            }),
        }
    }

    fn status_written(w: Result<PermitWrite, Rejection>) -> String {
        match w {
            Ok(PermitWrite::Full(r, _)) => r.status.code().to_string(),
            Ok(PermitWrite::Contacts(_)) => panic!("expected a full write, got contacts only"),
            Err(r) => panic!("expected a full write, got {r}"),
        }
    }

    #[test]
    fn a_new_permit_is_written_whole() {
        let w = permit_write(
            row("2027-01-01"),
            None,
            ImportMark {
                line: 2,
                prior: None,
            },
        );
        assert!(matches!(
            w,
            Ok(PermitWrite::Full(
                _,
                ImportMark {
                    line: 2,
                    prior: None
                }
            ))
        ));
    }

    #[test]
    fn c6_valid_until_never_moves_backwards() {
        let w = permit_write(
            row("2026-12-31"),
            None,
            stored(PermitStatus::Active, "2027-01-01"),
        );
        let Err(r) = w else {
            panic!("expected a refusal")
        };
        assert_eq!(r.code, "VALID_UNTIL_BACKWARDS");
        assert_eq!(r.field.as_deref(), Some("valid_until"));
        assert_eq!(
            r.to_string(),
            "VALID_UNTIL_BACKWARDS: valid_until 2026-12-31 is earlier than the stored 2027-01-01"
        );
    }

    #[test]
    fn c5_c15_a_cancelled_permit_takes_contacts_only_even_with_an_earlier_date() {
        let w = permit_write(
            row("2020-01-01"),
            None,
            stored(PermitStatus::Cancelled, "2027-01-01"),
        );
        match w {
            Ok(PermitWrite::Contacts(c)) => {
                assert_eq!(c.phone.as_deref(), Some("13800000000"));
                assert_eq!(c.mark.line, 7);
            }
            Ok(PermitWrite::Full(..)) => panic!("expected contacts only, got a full write"),
            Err(r) => panic!("expected contacts only, got {r}"),
        }
    }

    #[test]
    fn c5_status_column_applies_only_when_it_says_cancelled() {
        let active = PermitStatus::Active;
        let cancel = Some(PermitStatus::Cancelled);
        let suspend = Some(PermitStatus::Suspended);
        // The file says suspended: ignored, the stored status stays.
        let w = permit_write(row("2027-01-01"), suspend, stored(active, "2027-01-01"));
        assert_eq!(status_written(w), active.code());
        // The file says cancelled: applied.
        let w = permit_write(row("2027-01-01"), cancel, stored(active, "2027-01-01"));
        assert_eq!(status_written(w), PermitStatus::Cancelled.code());
    }

    #[test]
    fn c5_a_later_valid_until_restores_a_suspended_permit_and_the_same_one_does_not() {
        let suspended = PermitStatus::Suspended;
        let w = permit_write(row("2027-06-01"), None, stored(suspended, "2026-06-01"));
        assert_eq!(status_written(w), PermitStatus::Active.code());
        let w = permit_write(row("2026-06-01"), None, stored(suspended, "2026-06-01"));
        assert_eq!(status_written(w), suspended.code());
    }

    #[test]
    fn rejections_render_as_code_and_detail() {
        assert_eq!(
            Rejection::missing("name").to_string(),
            "MISSING_NAME: name is empty"
        );
        assert_eq!(
            Rejection::invalid("phone", "not a mobile number").to_string(),
            "INVALID_PHONE: phone: not a mobile number"
        );
        assert_eq!(
            Rejection::wrong_field_count(3, 13).to_string(),
            "WRONG_FIELD_COUNT: 3 fields, the header has 13"
        );
        assert_eq!(Rejection::wrong_field_count(3, 13).field, None);
    }
}
