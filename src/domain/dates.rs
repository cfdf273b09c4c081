//! Calendar dates and contribution months as the feeds write them
//! (R1, C10, C15), and the one-year extension of R7.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};

/// Why a text is not a date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("is empty")]
    Empty,
    #[error("is not a date of the form YYYY-MM-DD, YYYY/MM/DD or YYYYMMDD")]
    Format,
    #[error("{year:04}-{month:02}-{day:02} is not a valid calendar date")]
    Impossible { year: i32, month: u32, day: u32 },
}

/// Parses a date (trimmed first) in one of the forms R1 allows:
/// `YYYY-MM-DD`, `YYYY/MM/DD` (month and day may have one digit, C10:
/// `2026/2/3`) or `YYYYMMDD`. The year always has 4 digits. An impossible
/// date such as `2026-02-30` is rejected.
pub fn parse_date(s: &str) -> Result<NaiveDate, DateError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DateError::Empty);
    }
    let (year, month, day) = if let Some(sep) = s.chars().find(|&c| c == '-' || c == '/') {
        let mut parts = s.split(sep);
        let (Some(y), Some(m), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DateError::Format);
        };
        (
            digits(Some(y), 4..=4).ok_or(DateError::Format)?,
            digits(Some(m), 1..=2).ok_or(DateError::Format)?,
            digits(Some(d), 1..=2).ok_or(DateError::Format)?,
        )
    } else if s.len() == 8 {
        (
            digits(s.get(..4), 4..=4).ok_or(DateError::Format)?,
            digits(s.get(4..6), 2..=2).ok_or(DateError::Format)?,
            digits(s.get(6..), 2..=2).ok_or(DateError::Format)?,
        )
    } else {
        return Err(DateError::Format);
    };
    // At most 4 digits, so the conversion cannot fail.
    let year = i32::try_from(year).map_err(|_| DateError::Format)?;
    NaiveDate::from_ymd_opt(year, month, day).ok_or(DateError::Impossible { year, month, day })
}

/// The value of `s` when it is all ASCII digits and its length lies in `len`.
/// Takes an `Option` so callers can slice with `str::get`, which never panics
/// on a non-ASCII input.
fn digits(s: Option<&str>, len: std::ops::RangeInclusive<usize>) -> Option<u32> {
    let s = s?;
    if !len.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The same month and day one year later; 29 February becomes 28 February
/// (R7: the extension is one year, 有效期限自动延长一年).
pub fn add_one_year(d: NaiveDate) -> NaiveDate {
    let next = d.year() + 1;
    d.with_year(next)
        .or_else(|| NaiveDate::from_ymd_opt(next, 2, 28))
        // Only reachable at the end of chrono's range.
        .unwrap_or(NaiveDate::MAX)
}

/// A calendar month, the period of a social-insurance contribution.
/// Ordered chronologically. `Display` and `Debug` print `YYYY-MM`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    // Field order matters: the derived `Ord` compares year first.
    year: i32,
    month: u32,
}

/// Why a text is not a month.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonthError {
    #[error("is empty")]
    Empty,
    #[error("is not a month of the form YYYY-MM or YYYYMM")]
    Format,
    #[error("month {month} is not between 1 and 12")]
    OutOfRange { month: u32 },
}

impl Month {
    /// The month `month` (1–12) of `year`; `None` when `month` is out of range.
    pub fn new(year: i32, month: u32) -> Option<Month> {
        (1..=12).contains(&month).then_some(Month { year, month })
    }

    /// Parses a month (trimmed first): `YYYY-MM`, `YYYY-M` (C15) or `YYYYMM`.
    pub fn parse(s: &str) -> Result<Month, MonthError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(MonthError::Empty);
        }
        let (year, month) = if let Some((y, m)) = s.split_once('-') {
            (
                digits(Some(y), 4..=4).ok_or(MonthError::Format)?,
                digits(Some(m), 1..=2).ok_or(MonthError::Format)?,
            )
        } else if s.len() == 6 {
            (
                digits(s.get(..4), 4..=4).ok_or(MonthError::Format)?,
                digits(s.get(4..), 2..=2).ok_or(MonthError::Format)?,
            )
        } else {
            return Err(MonthError::Format);
        };
        let year = i32::try_from(year).map_err(|_| MonthError::Format)?;
        Month::new(year, month).ok_or(MonthError::OutOfRange { month })
    }

    /// The month containing `date`.
    pub fn of(date: NaiveDate) -> Month {
        Month {
            year: date.year(),
            month: date.month(),
        }
    }

    /// The month `n` months earlier (`2026-01`.minus(2) = `2025-11`).
    pub fn minus(self, n: u32) -> Month {
        self.shift(-i64::from(n))
    }

    /// The month `n` months later.
    pub fn plus(self, n: u32) -> Month {
        self.shift(i64::from(n))
    }

    fn shift(self, delta: i64) -> Month {
        let index = i64::from(self.year) * 12 + i64::from(self.month) - 1 + delta;
        Month {
            year: i32::try_from(index.div_euclid(12)).unwrap_or(self.year),
            month: u32::try_from(index.rem_euclid(12) + 1).unwrap_or(self.month),
        }
    }

    pub fn year(self) -> i32 {
        self.year
    }

    /// 1–12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// The first day of the month.
    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or(NaiveDate::MIN)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl fmt::Debug for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Month {
    type Err = MonthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Month {
    type Error = MonthError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

/// A stored month, as the database layer reads it back (`YYYY-MM`, as
/// written): the error names the stored text.
impl TryFrom<String> for Month {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).map_err(|e| format!("stored month {s:?} {e}"))
    }
}

impl serde::Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn parses_every_allowed_date_form() {
        let cases = [
            ("2026-11-27", d(2026, 11, 27)),
            ("2026/11/27", d(2026, 11, 27)),
            ("20261127", d(2026, 11, 27)),
            ("2026/2/3", d(2026, 2, 3)),
            ("2026-2-03", d(2026, 2, 3)),
            ("2026-02-3", d(2026, 2, 3)),
            (" 2024-02-29 ", d(2024, 2, 29)),
            ("20240229", d(2024, 2, 29)),
            ("2000-02-29", d(2000, 2, 29)),
        ];
        for (s, expected) in cases {
            assert_eq!(parse_date(s), Ok(expected), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_and_impossible_dates() {
        let impossible = |year, month, day| DateError::Impossible { year, month, day };
        let cases = [
            ("", DateError::Empty),
            ("2026-02-30", impossible(2026, 2, 30)),
            ("20260230", impossible(2026, 2, 30)),
            ("2026/2/30", impossible(2026, 2, 30)),
            ("2025-02-29", impossible(2025, 2, 29)),
            ("1900-02-29", impossible(1900, 2, 29)),
            ("2026-13-01", impossible(2026, 13, 1)),
            ("2026-00-10", impossible(2026, 0, 10)),
            ("2026-01-00", impossible(2026, 1, 0)),
            ("26-11-27", DateError::Format),
            ("02026-11-27", DateError::Format),
            ("2026-011-27", DateError::Format),
            ("2026-11/27", DateError::Format),
            ("2026-11", DateError::Format),
            ("2026-11-27-1", DateError::Format),
            ("2026.11.27", DateError::Format),
            ("2026112", DateError::Format),
            ("202611277", DateError::Format),
            ("2026-+1-27", DateError::Format),
            ("2026年11月27日", DateError::Format),
            ("27/11/2026", DateError::Format),
            ("2026年1", DateError::Format),
            ("年年2026", DateError::Format),
        ];
        for (s, e) in cases {
            assert_eq!(parse_date(s), Err(e), "{s}");
        }
        assert_eq!(
            parse_date("2026-02-30").unwrap_err().to_string(),
            "2026-02-30 is not a valid calendar date"
        );
    }

    #[test]
    fn adds_one_year_keeping_month_and_day() {
        assert_eq!(add_one_year(d(2026, 11, 27)), d(2027, 11, 27));
        assert_eq!(add_one_year(d(2024, 2, 29)), d(2025, 2, 28));
        assert_eq!(add_one_year(d(2023, 2, 28)), d(2024, 2, 28));
        assert_eq!(add_one_year(d(2026, 12, 31)), d(2027, 12, 31));
    }

    #[test]
    fn parses_months() {
        let m = |y, mo| Month::new(y, mo).unwrap();
        let cases = [
            ("2026-11", m(2026, 11)),
            ("2026-2", m(2026, 2)),
            ("2026-02", m(2026, 2)),
            ("202602", m(2026, 2)),
            (" 202612 ", m(2026, 12)),
        ];
        for (s, expected) in cases {
            assert_eq!(Month::parse(s), Ok(expected), "{s}");
        }
        let bad = [
            ("", MonthError::Empty),
            ("2026-13", MonthError::OutOfRange { month: 13 }),
            ("202600", MonthError::OutOfRange { month: 0 }),
            ("26-11", MonthError::Format),
            ("2026-111", MonthError::Format),
            ("20261", MonthError::Format),
            ("2026-11-01", MonthError::Format),
            ("2026/11", MonthError::Format),
            ("2026年", MonthError::Format),
            ("20年1", MonthError::Format),
        ];
        for (s, e) in bad {
            assert_eq!(Month::parse(s), Err(e), "{s}");
        }
    }

    #[test]
    fn month_arithmetic_and_formatting() {
        let nov = Month::of(d(2026, 11, 27));
        assert_eq!((nov.year(), nov.month()), (2026, 11));
        assert_eq!(nov.minus(2).to_string(), "2026-09");
        assert_eq!(nov.minus(11).to_string(), "2025-12");
        assert_eq!(nov.minus(23).to_string(), "2024-12");
        assert_eq!(nov.plus(2).to_string(), "2027-01");
        assert_eq!(
            Month::parse("2026-01").unwrap().minus(1).to_string(),
            "2025-12"
        );
        assert_eq!(format!("{:?}", Month::parse("2026-3").unwrap()), "2026-03");
        assert!(nov.minus(1) < nov);
        assert!(Month::parse("2025-12").unwrap() < Month::parse("2026-01").unwrap());
        assert_eq!(nov.first_day(), d(2026, 11, 1));
        assert_eq!(Month::new(2026, 0), None);
    }
}
