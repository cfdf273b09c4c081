//! Masking of personal data for logs, `Debug` output and exports.
//!
//! The rules are character based (not byte based) so that Chinese names and
//! addresses are masked per character.

/// Masks a name: keeps the first character and replaces every other one with
/// `*` (`张三丰` → `张**`, `李四` → `李*`). An empty name stays empty.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    let mut out = String::with_capacity(name.len());
    if let Some(first) = chars.next() {
        out.push(first);
        out.extend(chars.map(|_| '*'));
    }
    out
}

/// Masks an ID number as R9 prescribes for exports: the first 6 and last
/// 4 characters with 8 `*` between (`110105********002X`). Text that is not
/// 18 characters long is masked completely, one `*` per character, so a
/// malformed value never leaks.
pub fn mask_id_str(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() == 18 {
        let mut out = String::with_capacity(18);
        out.extend(&chars[..6]);
        out.push_str("********");
        out.extend(&chars[14..]);
        out
    } else {
        chars.iter().map(|_| '*').collect()
    }
}

/// Masks free text such as an address: keeps the first 2 characters and
/// replaces the rest with `*` (`上海市浦东新区…` → `上海*****…`).
pub fn mask_text(s: &str) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < 2 { c } else { '*' })
        .collect()
}

/// Masks every mobile number and ID number in free text (an SMS gateway's
/// or relay's answer, an error): a mobile number in any of the forms a
/// gateway echoes (`13800138000`, `+86-138-0013-8000`, `138 0013 8000`,
/// `8613800138000`) becomes `138****8000`; 17 digits and a check character
/// become `110105********002X`. Other numbers (`HTTP 500`, a date) stay.
pub fn mask_numbers_in_text(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let starts = (c[i].is_ascii_digit() || c[i] == '+')
            && (i == 0 || !(c[i - 1].is_ascii_digit() || c[i - 1] == '+'));
        if starts {
            if let Some((end, masked)) = phone_at(&c, i).or_else(|| id_at(&c, i)) {
                out.push_str(&masked);
                i = end;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// The longest mobile number starting at `c[i]` (digits with single
/// separators between), as its end and masked form.
fn phone_at(c: &[char], i: usize) -> Option<(usize, String)> {
    let mut j = i;
    if c[j] == '+' {
        j += 1;
    }
    let mut digits = String::new();
    let mut best = None;
    while j < c.len() && digits.len() < 15 {
        if c[j].is_ascii_digit() {
            digits.push(c[j]);
            j += 1;
            let next_is_digit = c.get(j).is_some_and(|d| d.is_ascii_digit());
            if !next_is_digit && matches!(digits.len(), 11 | 13 | 15) {
                let national = digits
                    .strip_prefix("0086")
                    .filter(|_| digits.len() == 15)
                    .or_else(|| digits.strip_prefix("86").filter(|_| digits.len() == 13))
                    .unwrap_or(&digits);
                if let Ok(p) = crate::domain::Phone::parse(national) {
                    best = Some((j, p.masked()));
                }
            }
        } else if matches!(c[j], ' ' | '-' | '.' | '(' | ')')
            && c.get(j + 1).is_some_and(|d| d.is_ascii_digit())
        {
            j += 1;
        } else {
            break;
        }
    }
    best
}

/// An ID number (17 digits and a check character) starting at `c[i]`.
fn id_at(c: &[char], i: usize) -> Option<(usize, String)> {
    let end = i + 18;
    let s = c.get(i..end)?;
    let ok = s[..17].iter().all(char::is_ascii_digit)
        && (s[17].is_ascii_digit() || s[17] == 'X' || s[17] == 'x')
        && !c.get(end).is_some_and(|d| d.is_ascii_alphanumeric());
    ok.then(|| (end, mask_id_str(&s.iter().collect::<String>())))
}

/// Text fit for a terminal: control characters (C0, DEL, C1) and the
/// bidirectional overrides are written as escapes (`\u{1b}`, `\t`), so a
/// file name or permit number from a feed cannot move the cursor, clear the
/// screen or reorder what an operator reads. Newlines are escaped too:
/// this is for one value of a line.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, false)
}

/// [`escape_controls`] for text of several lines: the newlines stay.
pub fn escape_controls_in_lines(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
            continue;
        }
        match c {
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_free_text_are_masked_in_every_form_a_gateway_echoes() {
        for (text, want) in [
            ("bad phone 15549378348", "bad phone 155****8348"),
            ("to +86-155-4937-8348: blocked", "to 155****8348: blocked"),
            ("to 155 4937 8348 failed", "to 155****8348 failed"),
            ("8615549378348 unknown", "155****8348 unknown"),
            ("(+86) 155.4937.8348", "(+86) 155****8348"),
            ("id 11010519491231002X here", "id 110105********002X here"),
            (
                "HTTP 500 at 2026-11-27 12:00",
                "HTTP 500 at 2026-11-27 12:00",
            ),
            ("code 400 15549378348", "code 400 155****8348"),
            ("order 123456789012345678901", "order 123456789012345678901"),
        ] {
            assert_eq!(mask_numbers_in_text(text), want, "{text}");
        }
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(escape_controls("SH001"), "SH001");
        assert_eq!(escape_controls("张三"), "张三");
        assert_eq!(escape_controls("a\x1b[2Jb\x07"), "a\\u{1b}[2Jb\\u{7}");
        assert_eq!(escape_controls("a\tb\r\nc"), "a\\tb\\r\\nc");
        assert_eq!(escape_controls("x\u{202e}y\u{9b}"), "x\\u{202e}y\\u{9b}");
        assert_eq!(escape_controls_in_lines("a\x1b\nb\n"), "a\\u{1b}\nb\n");
    }

    #[test]
    fn masks_names_per_character() {
        assert_eq!(mask_name("张三丰"), "张**");
        assert_eq!(mask_name("李四"), "李*");
        assert_eq!(mask_name("王"), "王");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
        assert_eq!(mask_name(""), "");
    }

    #[test]
    fn masks_id_strings_keeping_six_and_four() {
        assert_eq!(mask_id_str("11010519491231002X"), "110105********002X");
        assert_eq!(mask_id_str("12345"), "*****");
        assert_eq!(mask_id_str(""), "");
    }

    #[test]
    fn masks_text_after_two_characters() {
        assert_eq!(mask_text("上海市浦东新区"), "上海*****");
        assert_eq!(mask_text("ab"), "ab");
        assert_eq!(mask_text("a"), "a");
    }
}
