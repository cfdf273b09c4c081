//! The unified social credit code (统一社会信用代码) of GB 32100-2015.

use std::fmt;
use std::str::FromStr;

/// The 31 characters a code may use (GB 32100-2015 Table 1): digits and
/// capital letters except I, O, S, V and Z. A character's code value is its
/// index here.
pub const USCC_ALPHABET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";

/// Weights of characters 1–17 (GB 32100-2015 §5.3: `3^(i-1) mod 31`).
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// An employer's unified social credit code (统一社会信用代码) as defined by
/// GB 32100-2015: 18 characters from [`USCC_ALPHABET`], the last being a check
/// character (MOD 31).
///
/// Lowercase letters are accepted and stored uppercase. A wrong check
/// character is accepted (C11: some early pilot-area codes are legal yet
/// fail it); callers warn when [`Uscc::check_ok`] is false. A USCC identifies
/// an organisation, not a person, so `Debug` shows it in full.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uscc(String);

/// Why a text is not a valid [`Uscc`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsccError {
    #[error("is empty")]
    Empty,
    #[error("has {len} characters, expected 18")]
    Length { len: usize },
    /// `position` is 1-based.
    #[error("character {position} is not allowed (digits and letters except I, O, S, V, Z)")]
    BadChar { position: usize },
}

/// Code value of an uppercase character, or `None` outside the alphabet.
fn code_value(c: u8) -> Option<u32> {
    USCC_ALPHABET.bytes().position(|a| a == c).map(|p| p as u32)
}

/// Computes the GB 32100-2015 check character for the first 17 characters of
/// a code (uppercase or lowercase). Returns `None` unless `first17` is exactly
/// 17 characters from [`USCC_ALPHABET`].
pub fn uscc_check_char(first17: &str) -> Option<char> {
    let bytes = first17.as_bytes();
    if bytes.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (b, w) in bytes.iter().zip(WEIGHTS) {
        sum += code_value(b.to_ascii_uppercase())? * w;
    }
    let check = (31 - sum % 31) % 31;
    USCC_ALPHABET
        .as_bytes()
        .get(check as usize)
        .map(|&b| char::from(b))
}

impl Uscc {
    /// Parses a code (trimmed first): 18 characters from the alphabet; the
    /// check character is *not* enforced (C11).
    pub fn parse(s: &str) -> Result<Self, UsccError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(UsccError::Empty);
        }
        let len = s.chars().count();
        if len != 18 {
            return Err(UsccError::Length { len });
        }
        let mut normalised = String::with_capacity(18);
        for (i, c) in s.chars().enumerate() {
            let upper = c.to_ascii_uppercase();
            if !upper.is_ascii() || code_value(upper as u8).is_none() {
                return Err(UsccError::BadChar { position: i + 1 });
            }
            normalised.push(upper);
        }
        Ok(Uscc(normalised))
    }

    /// Whether the 18th character is the GB 32100-2015 check character.
    pub fn check_ok(&self) -> bool {
        uscc_check_char(&self.0[..17]).is_some_and(|c| self.0.ends_with(c))
    }

    /// The full code, uppercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uscc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uscc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uscc({})", self.0)
    }
}

impl FromStr for Uscc {
    type Err = UsccError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Uscc {
    type Error = UsccError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Uscc {
    type Error = UsccError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for Uscc {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Uscc> for String {
    fn from(u: Uscc) -> String {
        u.0
    }
}

impl serde::Serialize for Uscc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_check(first17: &str) -> String {
        format!("{first17}{}", uscc_check_char(first17).unwrap())
    }

    #[test]
    fn alphabet_has_31_characters_without_i_o_s_v_z() {
        assert_eq!(USCC_ALPHABET.len(), 31);
        for c in ['I', 'O', 'S', 'V', 'Z'] {
            assert!(!USCC_ALPHABET.contains(c));
        }
    }

    #[test]
    fn computes_check_characters_of_published_codes() {
        // Codes printed on business licences of well-known companies.
        for code in [
            "914403001922038216", // 华为技术有限公司
            "9144030071526726XG", // 深圳市腾讯计算机系统有限公司
            "91330100799655058B", // 阿里巴巴(中国)网络技术有限公司
        ] {
            assert!(Uscc::parse(code).unwrap().check_ok(), "{code}");
        }
        assert_eq!(uscc_check_char("91310000MA1FL0Q58"), Some('W'));
        assert_eq!(uscc_check_char("91310115MA1K3YJ12"), Some('G'));
        assert_eq!(
            uscc_check_char("9131000013221158X"),
            Some(uscc_check_char("9131000013221158x").unwrap())
        );
        assert_eq!(uscc_check_char("9131000013221158"), None);
        assert_eq!(uscc_check_char("9131000013221158I"), None);
    }

    #[test]
    fn accepts_valid_codes_and_uppercases_them() {
        let code = with_check("91310115MA1K3YJ12");
        let lower = code.to_lowercase();
        let u = Uscc::parse(&format!("  {lower} ")).unwrap();
        assert_eq!(u.as_str(), code);
        assert!(u.check_ok());
        assert_eq!(format!("{u:?}"), format!("Uscc({code})"));
    }

    #[test]
    fn accepts_a_wrong_check_character_but_reports_it() {
        let u = Uscc::parse("91310000MA1FL0Q58N").unwrap();
        assert!(!u.check_ok());
        assert!(Uscc::parse("91310000MA1FL0Q58W").unwrap().check_ok());
        let code = with_check("91310000MA1FL0Q58");
        let last = code.chars().last().unwrap();
        let wrong = if last == '0' { '1' } else { '0' };
        let u = Uscc::parse(&format!("{}{wrong}", &code[..17])).unwrap();
        assert!(!u.check_ok());
    }

    #[test]
    fn rejects_bad_length_and_characters() {
        let cases = [
            ("", UsccError::Empty),
            ("91310000MA1FL0Q58", UsccError::Length { len: 17 }),
            ("91310000MA1FL0Q58NN", UsccError::Length { len: 19 }),
            ("91310000MA1FL0Q5IN", UsccError::BadChar { position: 17 }),
            ("O1310000MA1FL0Q58N", UsccError::BadChar { position: 1 }),
            ("91310000MA1FL0Q58-", UsccError::BadChar { position: 18 }),
            ("91310000MA1FL0Q58中", UsccError::BadChar { position: 18 }),
        ];
        for (s, e) in cases {
            assert_eq!(Uscc::parse(s), Err(e), "{s}");
        }
    }

    proptest! {
        #[test]
        fn changing_one_character_breaks_the_check(
            body in prop::collection::vec(0usize..31, 17),
            position in 0usize..18,
            replacement in 0usize..31,
        ) {
            let alphabet: Vec<char> = USCC_ALPHABET.chars().collect();
            let first17: String = body.iter().map(|&i| alphabet[i]).collect();
            let mut chars: Vec<char> = with_check(&first17).chars().collect();
            prop_assume!(chars[position] != alphabet[replacement]);
            chars[position] = alphabet[replacement];
            let changed: String = chars.into_iter().collect();
            prop_assert!(!Uscc::parse(&changed).unwrap().check_ok());
        }
    }
}
