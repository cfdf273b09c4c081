//! Property tests of the domain parsers: no
//! text makes a parser panic or echo personal data in its error; every
//! generated valid value parses and comes back normalised; a value one
//! change away from valid is rejected. Bounded by `PROPTEST_CASES` (default
//! 256; `.ci/run` sets the CI bound).

use chrono::{Datelike, NaiveDate};
use proptest::prelude::*;

use super::*;

/// Text of every kind: arbitrary Unicode, and shapes close to the formats
/// (digits, separators, X) where the interesting branches are.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9Xx]{15,19}",
        "[ 0-9Xx+/@.\\-]{0,24}",
        "[0-9]{4}[-/]?[0-9]{1,3}[-/]?[0-9]{0,3}",
        "[a-z0-9.@]{0,12}",
        "\\PC{0,40}",
    ]
}

fn date() -> impl Strategy<Value = NaiveDate> {
    (0i64..(200 * 365)).prop_map(|d| {
        NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN) + chrono::Days::new(d as u64)
    })
}

fn days_in_month(y: i32, m: u32) -> u32 {
    let next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    };
    next.and_then(|n| n.pred_opt()).map_or(28, |d| d.day())
}

/// A valid ID number born on `birth`.
fn id_for(region: u32, birth: NaiveDate, seq: u32) -> String {
    let first17 = format!("{region:06}{}{seq:03}", birth.format("%Y%m%d"));
    let check = id_check_char(&first17).unwrap_or('?');
    format!("{first17}{check}")
}

fn valid_id() -> impl Strategy<Value = (String, NaiveDate)> {
    (110_000u32..=659_999, date(), 0u32..1000)
        .prop_map(|(region, birth, seq)| (id_for(region, birth, seq), birth))
}

fn valid_uscc() -> impl Strategy<Value = String> {
    prop::collection::vec(0usize..31, 17).prop_map(|body| {
        let alphabet: Vec<char> = USCC_ALPHABET.chars().collect();
        let first17: String = body.iter().map(|&i| alphabet[i]).collect();
        let check = uscc_check_char(&first17).unwrap_or('?');
        format!("{first17}{check}")
    })
}

/// A mobile number, and how it may be written: +86 / 86 prefix, spaces
/// and hyphens between digits.
fn written_phone() -> impl Strategy<Value = (String, String)> {
    (
        3u8..=9,
        "[0-9]{9}",
        prop::sample::select(&["", "+86", "86", "+86 ", "86-"][..]),
        prop::collection::vec(prop::sample::select(&["", "", "", " ", "-"][..]), 11),
    )
        .prop_map(|(second, rest, prefix, seps)| {
            let national = format!("1{second}{rest}");
            let mut written = String::from(prefix);
            for (c, sep) in national.chars().zip(seps) {
                written.push(c);
                written.push_str(sep);
            }
            (national, written.trim_end_matches(['-', ' ']).to_string())
        })
}

fn valid_email() -> impl Strategy<Value = String> {
    (
        "[a-z0-9._+\\-]{1,16}",
        prop::collection::vec("[a-z0-9\\-]{1,10}", 2..4),
    )
        .prop_map(|(local, labels)| format!("{local}@{}", labels.join(".")))
}

proptest! {
    #[test]
    fn no_parser_panics_or_echoes_the_value_on_any_text(s in any_text()) {
        // Long enough that a message containing it is a leak, not chance.
        let leaks = |msg: String| s.trim().chars().count() >= 8 && msg.contains(s.trim());
        if let Err(e) = IdNumber::parse(&s) {
            prop_assert!(!leaks(e.to_string()), "{}", e);
        }
        match Uscc::parse(&s) {
            Ok(u) => { let _ = u.check_ok(); }
            Err(e) => prop_assert!(!leaks(e.to_string()), "{}", e),
        }
        match Phone::parse(&s) {
            Ok(p) => prop_assert!(!p.masked().contains(p.as_str())),
            Err(e) => prop_assert!(!leaks(e.to_string()), "{}", e),
        }
        match Email::parse(&s) {
            Ok(m) => { let _ = m.masked(); }
            Err(e) => prop_assert!(!leaks(e.to_string()), "{}", e),
        }
        let _ = parse_date(&s);
        let _ = Month::parse(&s);
        let _ = PermitStatus::parse(&s);
        let _ = SiStatus::parse(&s);
        let _ = MaritalStatus::parse(&s);
        let _ = ResidenceResult::parse(&s);
        let _ = PaymentStatus::parse(&s);
        let _ = (mask_id_str(&s), mask_name(&s), mask_text(&s));
    }

    #[test]
    fn generated_ids_parse_with_their_birth_date_and_mask_it((id, birth) in valid_id()) {
        let parsed = IdNumber::parse(&format!(" {} ", id.to_lowercase()));
        prop_assert!(parsed.is_ok(), "{}: {:?}", id, parsed);
        let parsed = parsed.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(parsed.as_str(), id.as_str());
        prop_assert_eq!(parsed.birth_date(), birth);
        let masked = format!("{:?}", parsed);
        prop_assert!(!masked.contains(&birth.format("%Y%m%d").to_string()), "{}", masked);
    }

    #[test]
    fn an_id_with_a_changed_check_character_is_rejected(
        (id, _) in valid_id(),
        shift in 1usize..11,
    ) {
        // Any of the 10 other check characters.
        const CHECKS: &str = "0123456789X";
        let at = CHECKS.find(&id[17..]).unwrap_or(0);
        let other = &CHECKS[(at + shift) % 11..][..1];
        let changed = format!("{}{other}", &id[..17]);
        let is_check_error = matches!(
            IdNumber::parse(&changed),
            Err(IdNumberError::BadCheckChar { .. })
        );
        prop_assert!(is_check_error);
    }

    #[test]
    fn an_x_anywhere_but_last_is_rejected((id, _) in valid_id(), position in 0usize..17) {
        let mut chars: Vec<char> = id.chars().collect();
        chars[position] = 'X';
        let changed: String = chars.into_iter().collect();
        prop_assert_eq!(
            IdNumber::parse(&changed),
            Err(IdNumberError::NonDigit { position: position + 1 })
        );
    }

    #[test]
    fn an_impossible_birth_date_is_rejected_even_with_a_right_check(
        region in 110_000u32..=659_999,
        y in 1900i32..2100,
        m in 1u32..=12,
        extra in 0u32..4,
        seq in 0u32..1000,
    ) {
        // From the day after the month's last up to 32 (two digits).
        let dim = days_in_month(y, m);
        let day = dim + 1 + extra % (32 - dim);
        let first17 = format!("{region:06}{y:04}{m:02}{day:02}{seq:03}");
        let id = format!("{first17}{}", id_check_char(&first17).unwrap_or('?'));
        prop_assert_eq!(IdNumber::parse(&id), Err(IdNumberError::BadBirthDate));
    }

    #[test]
    fn generated_usccs_parse_uppercased_and_pass_the_check(code in valid_uscc()) {
        let u = Uscc::parse(&code.to_lowercase());
        prop_assert!(u.is_ok(), "{}", code);
        let u = u.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(u.as_str(), code.as_str());
        prop_assert!(u.check_ok());
    }

    #[test]
    fn every_date_form_round_trips(d in date()) {
        for form in ["%Y-%m-%d", "%Y/%m/%d", "%Y%m%d", "%Y-%-m-%-d", "%Y/%-m/%-d"] {
            let text = d.format(form).to_string();
            prop_assert_eq!(parse_date(&text), Ok(d), "{}", text);
        }
    }

    #[test]
    fn a_day_past_the_end_of_its_month_is_rejected_in_every_form(
        y in 1900i32..2100,
        m in 1u32..=12,
        extra in 0u32..4,
    ) {
        // From the day after the month's last up to 32 (two digits).
        let dim = days_in_month(y, m);
        let day = dim + 1 + extra % (32 - dim);
        for text in [
            format!("{y}-{m:02}-{day:02}"),
            format!("{y}/{m}/{day}"),
            format!("{y}{m:02}{day:02}"),
        ] {
            prop_assert_eq!(
                parse_date(&text),
                Err(DateError::Impossible { year: y, month: m, day }),
                "{}", text
            );
        }
    }

    #[test]
    fn months_round_trip_and_month_13_is_rejected(y in 1900i32..2100, m in 1u32..=12) {
        let expected = format!("{y}-{m:02}");
        for text in [format!("{y}-{m:02}"), format!("{y}-{m}"), format!("{y}{m:02}")] {
            let parsed = Month::parse(&text);
            prop_assert_eq!(parsed.map(|p| p.to_string()), Ok(expected.clone()), "{}", text);
        }
        let bad = m + 12;
        for text in [format!("{y}-{bad}"), format!("{y}{bad:02}")] {
            prop_assert!(Month::parse(&text).is_err(), "{}", text);
        }
    }

    #[test]
    fn written_phones_normalise_to_the_national_number((national, written) in written_phone()) {
        let p = Phone::parse(&written);
        prop_assert_eq!(p.map(String::from), Ok(national.clone()), "{}", written);
        // A second digit of 0-2 is no mobile number; one digit less is too short.
        let landline = format!("10{}", &national[2..]);
        prop_assert!(Phone::parse(&landline).is_err(), "{}", landline);
        prop_assert!(Phone::parse(&national[1..]).is_err());
    }

    #[test]
    fn generated_emails_parse_and_broken_ones_do_not(email in valid_email()) {
        prop_assert_eq!(Email::parse(&email).map(String::from), Ok(email.clone()));
        let (local, domain) = email.split_once('@').unwrap_or_default();
        for broken in [
            format!("{local}@@{domain}"),
            format!("{local}{domain}"),
            format!("@{domain}"),
            format!("{local}@{}", domain.replace('.', "")),
        ] {
            prop_assert!(Email::parse(&broken).is_err(), "{}", broken);
        }
    }
}
