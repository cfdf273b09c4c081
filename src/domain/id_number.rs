//! The citizen ID number (公民身份号码) of GB 11643-1999.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};

/// Weights of characters 1–17 for the ISO 7064 MOD 11-2 check (GB 11643-1999
/// §8.2: `2^(18-i) mod 11`).
const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

/// Check character for each value of `sum mod 11`.
const CHECK_CHARS: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// Earliest accepted birth year: holders born earlier are not plausible.
const MIN_BIRTH_YEAR: i32 = 1900;

/// An 18-character citizen ID number (公民身份号码) as defined by
/// GB 11643-1999: a 6-digit address code, an 8-digit birth date
/// (`YYYYMMDD`, characters 7–14), a 3-digit sequence code and a check
/// character (`0`–`9` or `X`) computed by ISO 7064 MOD 11-2.
///
/// A lowercase `x` is accepted and stored as `X` (R1). `Display`
/// prints the full number (for storage); `Debug` prints it masked.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdNumber(String);

/// Why a text is not a valid [`IdNumber`]. Messages never contain the number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdNumberError {
    #[error("is empty")]
    Empty,
    #[error("has {len} characters, expected 18")]
    Length { len: usize },
    /// `position` is 1-based.
    #[error("character {position} is not a digit{}", if *.position == 18 { " or X" } else { "" })]
    NonDigit { position: usize },
    #[error("check character is {found}, expected {expected}")]
    BadCheckChar { found: char, expected: char },
    #[error("birth date in characters 7-14 is not a valid calendar date")]
    BadBirthDate,
    #[error("birth year in characters 7-10 is before {MIN_BIRTH_YEAR}")]
    BirthYearTooEarly,
}

/// Computes the GB 11643-1999 check character (ISO 7064 MOD 11-2) for the
/// first 17 characters of an ID number. Returns `None` unless `first17` is
/// exactly 17 ASCII digits.
pub fn id_check_char(first17: &str) -> Option<char> {
    let bytes = first17.as_bytes();
    if bytes.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (b, w) in bytes.iter().zip(WEIGHTS) {
        if !b.is_ascii_digit() {
            return None;
        }
        sum += u32::from(b - b'0') * w;
    }
    CHECK_CHARS.get((sum % 11) as usize).copied()
}

impl IdNumber {
    /// Parses and validates an ID number (trimmed first): length, digits,
    /// check character, then the birth date (a real calendar date, year
    /// 1900 or later).
    pub fn parse(s: &str) -> Result<Self, IdNumberError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(IdNumberError::Empty);
        }
        let len = s.chars().count();
        if len != 18 {
            return Err(IdNumberError::Length { len });
        }
        let mut normalised = String::with_capacity(18);
        for (i, c) in s.chars().enumerate() {
            match c {
                '0'..='9' => normalised.push(c),
                'X' | 'x' if i == 17 => normalised.push('X'),
                _ => return Err(IdNumberError::NonDigit { position: i + 1 }),
            }
        }
        let expected =
            id_check_char(&normalised[..17]).ok_or(IdNumberError::NonDigit { position: 1 })?;
        let found = normalised[17..].chars().next().unwrap_or(' ');
        if found != expected {
            return Err(IdNumberError::BadCheckChar { found, expected });
        }
        let birth = birth_date_of(&normalised).ok_or(IdNumberError::BadBirthDate)?;
        if birth.year() < MIN_BIRTH_YEAR {
            return Err(IdNumberError::BirthYearTooEarly);
        }
        Ok(IdNumber(normalised))
    }

    /// The full number, for storage and binding.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 6 and last 4 characters with 8 `*` between
    /// (`110105********002X`), as exports show it (R9).
    pub fn masked(&self) -> String {
        super::mask_id_str(&self.0)
    }

    /// The holder's birth date (characters 7–14), validated by `parse`.
    pub fn birth_date(&self) -> NaiveDate {
        // `parse` guarantees a valid date; the fallback is unreachable.
        birth_date_of(&self.0).unwrap_or(NaiveDate::MIN)
    }

    /// The 6-digit administrative division code of the holder's registered
    /// permanent residence at the time of issue (characters 1–6).
    pub fn region_code(&self) -> &str {
        &self.0[..6]
    }
}

/// Reads `YYYYMMDD` from characters 7–14 of an 18-character ASCII string.
fn birth_date_of(s: &str) -> Option<NaiveDate> {
    let digits = s.get(6..14)?;
    let year: i32 = digits.get(0..4)?.parse().ok()?;
    let month: u32 = digits.get(4..6)?.parse().ok()?;
    let day: u32 = digits.get(6..8)?.parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

impl fmt::Display for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdNumber({})", self.masked())
    }
}

impl FromStr for IdNumber {
    type Err = IdNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for IdNumber {
    type Error = IdNumberError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for IdNumber {
    type Error = IdNumberError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for IdNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<IdNumber> for String {
    fn from(id: IdNumber) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a valid ID from its first 17 digits.
    fn with_check(first17: &str) -> String {
        format!("{first17}{}", id_check_char(first17).unwrap())
    }

    #[test]
    fn computes_check_characters_of_known_numbers() {
        // The example of GB 11643-1999 itself.
        assert_eq!(id_check_char("11010519491231002"), Some('X'));
        assert_eq!(id_check_char("44052418800101001"), Some('4'));
        assert_eq!(id_check_char("1101051949123100"), None);
        assert_eq!(id_check_char("1101051949123100A"), None);
    }

    #[test]
    fn accepts_valid_numbers() {
        let valid = [
            "11010519491231002X",
            "11010519491231002x",
            "  11010519491231002X\t",
            &with_check("32058219850312241"),
            &with_check("34122119920229006"), // 1992 is a leap year
            &with_check("51132120040101123"),
            &with_check("41152119000101001"), // earliest accepted year
        ];
        for s in valid {
            let id = IdNumber::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.as_str(), s.trim().to_uppercase());
        }
    }

    #[test]
    fn stores_lowercase_x_as_uppercase() {
        let id = IdNumber::parse("11010519491231002x").unwrap();
        assert_eq!(id.to_string(), "11010519491231002X");
        assert_eq!(
            id.birth_date(),
            NaiveDate::from_ymd_opt(1949, 12, 31).unwrap()
        );
        assert_eq!(id.region_code(), "110105");
    }

    #[test]
    fn rejects_invalid_numbers_with_a_reason() {
        let cases: Vec<(String, IdNumberError)> = vec![
            ("".into(), IdNumberError::Empty),
            ("   ".into(), IdNumberError::Empty),
            (
                "11010519491231002".into(),
                IdNumberError::Length { len: 17 },
            ),
            (
                "11010519491231002X1".into(),
                IdNumberError::Length { len: 19 },
            ),
            (
                "110105194912310021".into(),
                IdNumberError::BadCheckChar {
                    found: '1',
                    expected: 'X',
                },
            ),
            (
                "1101051949X231002X".into(),
                IdNumberError::NonDigit { position: 11 },
            ),
            (
                "X10105194912310021".into(),
                IdNumberError::NonDigit { position: 1 },
            ),
            (
                "11010519491231002Y".into(),
                IdNumberError::NonDigit { position: 18 },
            ),
            (
                "１10105194912310021".into(),
                IdNumberError::NonDigit { position: 1 },
            ),
            (with_check("11010519900230001"), IdNumberError::BadBirthDate),
            (with_check("11010519901301001"), IdNumberError::BadBirthDate),
            (with_check("11010520230229001"), IdNumberError::BadBirthDate),
            (
                with_check("44052418800101001"),
                IdNumberError::BirthYearTooEarly,
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(IdNumber::parse(&s), Err(expected), "{s}");
        }
    }

    #[test]
    fn error_messages_do_not_echo_the_number() {
        let s = "110105194912310021";
        let err = IdNumber::parse(s).unwrap_err();
        assert_eq!(err.to_string(), "check character is 1, expected X");
        assert!(!err.to_string().contains(s));
        assert_eq!(
            IdNumberError::NonDigit { position: 18 }.to_string(),
            "character 18 is not a digit or X"
        );
        assert_eq!(
            IdNumberError::Length { len: 17 }.to_string(),
            "has 17 characters, expected 18"
        );
    }

    #[test]
    fn debug_output_is_masked() {
        let id = IdNumber::parse("11010519491231002X").unwrap();
        let debug = format!("{id:?}");
        assert!(!debug.contains("11010519491231002X"));
        assert!(!debug.contains("19491231"));
        assert_eq!(debug, "IdNumber(110105********002X)");
        assert_eq!(id.masked(), "110105********002X");
        let nested = format!("{:?}", Some(&id));
        assert!(!nested.contains("19491231"));
    }

    #[test]
    fn parses_through_from_str_and_try_from() {
        let a: IdNumber = "11010519491231002X".parse().unwrap();
        let b = IdNumber::try_from(String::from("11010519491231002x")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_ref(), "11010519491231002X");
    }

    fn valid_id() -> impl Strategy<Value = String> {
        (100_000u32..=659_999, 0i64..(365 * 100), 0u32..1000).prop_map(|(region, day, seq)| {
            let birth =
                NaiveDate::from_ymd_opt(1920, 1, 1).unwrap() + chrono::Days::new(day as u64);
            with_check(&format!("{region:06}{}{seq:03}", birth.format("%Y%m%d")))
        })
    }

    proptest! {
        #[test]
        fn generated_valid_ids_parse(id in valid_id()) {
            prop_assert!(IdNumber::parse(&id).is_ok());
        }

        #[test]
        fn changing_any_one_character_breaks_parsing(
            id in valid_id(),
            position in 0usize..18,
            shift in 1usize..11,
            lowercase in any::<bool>(),
        ) {
            // One of the 10 other characters (an X in either case), chosen
            // without rejecting cases, so that any PROPTEST_CASES works.
            let pool: Vec<char> = "0123456789X".chars().collect();
            let mut chars: Vec<char> = id.chars().collect();
            let at = pool.iter().position(|c| *c == chars[position]).unwrap_or(0);
            let replacement = match pool[(at + shift) % 11] {
                'X' if lowercase => 'x',
                c => c,
            };
            chars[position] = replacement;
            let changed: String = chars.into_iter().collect();
            prop_assert!(IdNumber::parse(&changed).is_err(), "{} parsed", changed);
        }
    }
}
