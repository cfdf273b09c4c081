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

/// Masks an ID number as SPEC R9 prescribes for exports: the first 6 and last
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

#[cfg(test)]
mod tests {
    use super::*;

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
