//! Contact details of a holder: mobile phone number and e-mail address
//! (R1 `phone`, `email`; C10).

use std::fmt;
use std::str::FromStr;

/// A mainland China mobile number: 11 digits, `1`, then `3`–`9`, then 9
/// digits (the numbering plan of the Ministry of Industry and Information
/// Technology). A `+86`/`86` country prefix, spaces and hyphens are accepted
/// and stripped (R1), so `+86 138-0013-8000` is stored `13800138000`.
/// `Debug` is masked (`138****8000`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

/// Why a text is not a valid [`Phone`]. Messages never contain the number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is empty")]
    Empty,
    #[error("contains a character other than digits, spaces, hyphens and a leading +86")]
    BadChar,
    #[error("has {len} digits, expected 11")]
    Length { len: usize },
    #[error("does not start with 13-19")]
    BadPrefix,
}

impl Phone {
    /// Parses a mobile number (trimmed first), normalising it to 11 digits.
    pub fn parse(s: &str) -> Result<Self, PhoneError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PhoneError::Empty);
        }
        let (plus, rest) = match s.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let mut digits = String::with_capacity(13);
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                _ => return Err(PhoneError::BadChar),
            }
        }
        // `+` must introduce the country code; `86` without `+` is a prefix
        // only when 11 digits follow (no mobile number starts with 8).
        let national = if plus {
            digits.strip_prefix("86").ok_or(PhoneError::BadChar)?
        } else if digits.len() == 13 {
            digits.strip_prefix("86").unwrap_or(&digits)
        } else {
            &digits
        };
        if national.is_empty() {
            return Err(PhoneError::Empty);
        }
        if national.len() != 11 {
            return Err(PhoneError::Length {
                len: national.len(),
            });
        }
        let b = national.as_bytes();
        if b[0] != b'1' || !(b'3'..=b'9').contains(&b[1]) {
            return Err(PhoneError::BadPrefix);
        }
        Ok(Phone(national.to_owned()))
    }

    /// The 11-digit number.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 3 and last 4 digits with `****` between (`138****8000`).
    pub fn masked(&self) -> String {
        format!("{}****{}", &self.0[..3], &self.0[7..])
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

impl FromStr for Phone {
    type Err = PhoneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Phone {
    type Error = PhoneError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Phone {
    type Error = PhoneError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for Phone {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

/// An e-mail address as C10 accepts it: exactly one `@`, a non-empty
/// local part, a domain containing a dot with no empty label, and no
/// whitespace. This is deliberately looser than RFC 5322: the address only
/// has to be worth handing to the SMTP relay. `Debug` is masked
/// (`z***@example.com`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

/// Why a text is not a valid [`Email`]. Messages never contain the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("is empty")]
    Empty,
    #[error("contains whitespace")]
    Whitespace,
    #[error("has no @")]
    MissingAt,
    #[error("has more than one @")]
    MultipleAt,
    #[error("has nothing before the @")]
    EmptyLocalPart,
    #[error("domain after the @ has no dot")]
    DomainWithoutDot,
    #[error("domain after the @ has an empty label")]
    EmptyDomainLabel,
}

impl Email {
    /// Parses an e-mail address (trimmed first).
    pub fn parse(s: &str) -> Result<Self, EmailError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.chars().any(char::is_whitespace) {
            return Err(EmailError::Whitespace);
        }
        let (local, domain) = s.split_once('@').ok_or(EmailError::MissingAt)?;
        if domain.contains('@') {
            return Err(EmailError::MultipleAt);
        }
        if local.is_empty() {
            return Err(EmailError::EmptyLocalPart);
        }
        if !domain.contains('.') {
            return Err(EmailError::DomainWithoutDot);
        }
        if domain.split('.').any(str::is_empty) {
            return Err(EmailError::EmptyDomainLabel);
        }
        Ok(Email(s.to_owned()))
    }

    /// The full address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, d)| d)
    }

    /// First character of the local part, `***@`, then the domain
    /// (`z***@example.com`).
    pub fn masked(&self) -> String {
        let first = self.0.chars().next().unwrap_or('*');
        format!("{first}***@{}", self.domain())
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

impl FromStr for Email {
    type Err = EmailError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Email {
    type Error = EmailError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Email {
    type Error = EmailError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_phone_numbers() {
        let cases = [
            ("13800138000", "13800138000"),
            (" 13800138000 ", "13800138000"),
            ("+86 138-0013-8000", "13800138000"),
            ("+8613800138000", "13800138000"),
            ("8613800138000", "13800138000"),
            ("86 138 0013 8000", "13800138000"),
            ("+86-199-0000-0000", "19900000000"),
            ("138 0013 8000", "13800138000"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Phone::parse(input).map(String::from),
                Ok(expected.to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_invalid_phone_numbers() {
        let cases = [
            ("", PhoneError::Empty),
            ("+86", PhoneError::Empty),
            ("12800138000", PhoneError::BadPrefix),
            ("23800138000", PhoneError::BadPrefix),
            ("1380013800", PhoneError::Length { len: 10 }),
            ("138001380001", PhoneError::Length { len: 12 }),
            ("+1 13800138000", PhoneError::BadChar),
            ("138.0013.8000", PhoneError::BadChar),
            ("１3800138000", PhoneError::BadChar),
            ("021-12345678", PhoneError::BadPrefix),
        ];
        for (input, expected) in cases {
            assert_eq!(Phone::parse(input), Err(expected), "{input}");
        }
    }

    #[test]
    fn phone_debug_is_masked() {
        let p = Phone::parse("13800135678").unwrap();
        assert_eq!(p.masked(), "138****5678");
        assert_eq!(format!("{p:?}"), "Phone(138****5678)");
        assert!(!format!("{p:?}").contains("13800135678"));
        assert_eq!(p.to_string(), "13800135678");
    }

    #[test]
    fn accepts_valid_emails() {
        for s in [
            "a@b.cn",
            "zhang.san@example.com",
            " li+si@mail.example.org ",
            "王@例子.中国",
        ] {
            let e = Email::parse(s).unwrap_or_else(|err| panic!("{s}: {err}"));
            assert_eq!(e.as_str(), s.trim());
        }
    }

    #[test]
    fn rejects_invalid_emails() {
        let cases = [
            ("", EmailError::Empty),
            ("zhang san@example.com", EmailError::Whitespace),
            ("example.com", EmailError::MissingAt),
            ("a@b@example.com", EmailError::MultipleAt),
            ("@example.com", EmailError::EmptyLocalPart),
            ("zhang@localhost", EmailError::DomainWithoutDot),
            ("zhang@", EmailError::DomainWithoutDot),
            ("zhang@example.", EmailError::EmptyDomainLabel),
            ("zhang@.com", EmailError::EmptyDomainLabel),
        ];
        for (s, e) in cases {
            assert_eq!(Email::parse(s), Err(e), "{s}");
        }
    }

    #[test]
    fn email_debug_is_masked() {
        let e = Email::parse("zhangsan@example.com").unwrap();
        assert_eq!(e.masked(), "z***@example.com");
        assert_eq!(format!("{e:?}"), "Email(z***@example.com)");
        assert!(!format!("{e:?}").contains("zhangsan"));
    }
}
