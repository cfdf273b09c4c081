//! The feeds as values: which feed, its columns and the header names it
//! accepts (R1), the encodings a file may come in, and whether its files
//! are snapshots or deltas. Below the settings, which hold them, and the
//! import, which reads by them.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// The feeds and their columns (R1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feed {
    Permits,
    Residence,
    SocialInsurance,
    CivilStatus,
}

impl Feed {
    pub const ALL: [Feed; 4] = [
        Feed::Permits,
        Feed::Residence,
        Feed::SocialInsurance,
        Feed::CivilStatus,
    ];

    /// The feed's name on the command line and in the database.
    pub fn name(self) -> &'static str {
        match self {
            Feed::Permits => "permits",
            Feed::Residence => "residence",
            Feed::SocialInsurance => "social-insurance",
            Feed::CivilStatus => "civil-status",
        }
    }

    /// Expected columns and whether each is required, in a fixed order
    /// that the parsers below index.
    pub fn columns(self) -> &'static [(&'static str, bool)] {
        match self {
            Feed::Permits => &[
                ("permit_no", true),
                ("id_number", true),
                ("name", true),
                ("phone", false),
                ("email", false),
                ("district_code", true),
                ("street_code", true),
                ("address", true),
                ("valid_until", true),
                ("status", false),
                ("employer_uscc", false),
                ("si_status", true),
                ("marital_status", true),
            ],
            Feed::Residence => &[
                ("id_number", true),
                ("visited_on", true),
                ("result", true),
                ("address", false),
                ("officer_id", false),
            ],
            Feed::SocialInsurance => &[
                ("id_number", true),
                ("month", true),
                ("status", true),
                ("employer_uscc", false),
                ("employer_name", false),
            ],
            Feed::CivilStatus => &[
                ("id_number", true),
                ("marital_status", true),
                ("as_of", false),
            ],
        }
    }

    /// The feed's section under `[feeds]` in the configuration.
    pub fn config_key(self) -> &'static str {
        match self {
            Feed::Permits => "permits",
            Feed::Residence => "residence",
            Feed::SocialInsurance => "social_insurance",
            Feed::CivilStatus => "civil_status",
        }
    }

    /// Chinese header names accepted for each column, parallel to
    /// [`Feed::columns`], so that agency exports import without editing
    /// (docs/rules.md, "Header aliases"). More come from
    /// `[feeds.<feed>.aliases]`.
    pub fn builtin_aliases(self) -> &'static [&'static [&'static str]] {
        const ID: &[&str] = &["公民身份号码", "身份证号码", "身份证号"];
        const USCC: &[&str] = &["统一社会信用代码", "单位统一社会信用代码"];
        const MARITAL: &[&str] = &["婚姻状况", "婚姻状态"];
        match self {
            Feed::Permits => &[
                &["居住证号码", "居住证号", "许可证号"],
                ID,
                &["姓名"],
                &["手机号码", "手机号", "手机"],
                &["电子邮箱", "电子邮件", "邮箱"],
                &["区县代码", "区代码"],
                &["街道代码", "街镇代码", "街道乡镇代码"],
                &["居住地址", "登记居住地址"],
                &["有效期至", "签注有效期", "有效期截止日期"],
                &["状态", "证件状态"],
                USCC,
                &["社保状态", "社保缴费状态"],
                MARITAL,
            ],
            Feed::Residence => &[
                ID,
                &["走访日期", "核查日期"],
                &["核查结果", "走访结果"],
                &["核查地址", "走访地址"],
                &["核查人员", "走访人员", "核查人员编号"],
            ],
            Feed::SocialInsurance => &[
                ID,
                &["缴费月份", "所属期", "费款所属期"],
                &["缴费状态"],
                USCC,
                &["单位名称"],
            ],
            Feed::CivilStatus => &[ID, MARITAL, &["截至日期", "数据截至日期"]],
        }
    }
}

impl std::str::FromStr for Feed {
    type Err = String;

    /// A feed by its name on the command line and in the database.
    fn from_str(s: &str) -> Result<Self, String> {
        Feed::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("{s:?} is not a feed"))
    }
}

/// The encodings a feed may arrive in (`--encoding`, `inbox.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Encoding {
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// GB18030, which covers GBK and GB2312.
    #[serde(rename = "gb18030", alias = "gbk")]
    Gb18030,
}

impl std::str::FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "gb18030" | "gbk" => Ok(Encoding::Gb18030),
            other => Err(format!("{other:?} is not utf-8 or gb18030")),
        }
    }
}

/// How a feed's files relate to each other (`[feeds.<feed>] delivery`):
/// a **snapshot** file holds the feed's whole content for its period (the
/// register as a whole, every contribution of a month), so one file's row
/// count can be compared with the previous one's; a **delta** file holds
/// what changed since the last one (new visits, endorsements at a center,
/// a registry's changes), and its size says nothing about the feed's
/// health. Each import records the delivery its feed had when it was
/// imported; the safety brake's row-drop check compares snapshot imports
/// only (docs/operations.md, "The safety brake").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Snapshot,
    Delta,
}

impl Delivery {
    /// The stored and configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Snapshot => "snapshot",
            Delivery::Delta => "delta",
        }
    }

    /// A stored name. Imports recorded before the setting existed were
    /// compared as snapshots by the brake, and are stored as such.
    pub fn parse(s: &str) -> Option<Delivery> {
        match s {
            "snapshot" => Some(Delivery::Snapshot),
            "delta" => Some(Delivery::Delta),
            _ => None,
        }
    }
}

/// A stored name, as the database layer reads it back.
impl TryFrom<String> for Delivery {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Delivery::parse(&s).ok_or_else(|| format!("unknown feed delivery {s:?}"))
    }
}

/// The names a feed's header may give each of its columns: the column's own
/// name, the built-in Chinese aliases ([`Feed::builtin_aliases`]) and the
/// configured ones (`[feeds.<feed>.aliases]`), trimmed and lowercased.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// Per feed, per column (in [`Feed::columns`] order): accepted names.
    feeds: HashMap<Feed, Vec<Vec<String>>>,
}

/// Header cells are matched trimmed and case-insensitively (R1).
pub fn normalise(name: &str) -> String {
    name.trim().to_lowercase()
}

impl HeaderNames {
    /// Column names and the built-in aliases only.
    pub fn builtin() -> Self {
        let feeds = Feed::ALL
            .into_iter()
            .map(|feed| {
                let names = feed
                    .columns()
                    .iter()
                    .zip(feed.builtin_aliases())
                    .map(|((name, _), aliases)| {
                        std::iter::once(*name)
                            .chain(aliases.iter().copied())
                            .map(normalise)
                            .collect()
                    })
                    .collect();
                (feed, names)
            })
            .collect();
        HeaderNames { feeds }
    }

    /// The built-in names plus configured aliases: per feed, column name →
    /// aliases. An alias for a column the feed does not have, an empty one,
    /// or one that already names another column (its own name, a built-in
    /// alias or another configured alias) is an error naming the
    /// configuration key, e.g. `feeds.residence.aliases.visited_on`.
    pub fn with_aliases<'a>(
        configured: impl IntoIterator<Item = (Feed, &'a BTreeMap<String, Vec<String>>)>,
    ) -> Result<Self, String> {
        let mut out = HeaderNames::builtin();
        for (feed, aliases) in configured {
            let columns = feed.columns();
            let Some(names) = out.feeds.get_mut(&feed) else {
                continue;
            };
            for (column, list) in aliases {
                let key = format!("feeds.{}.aliases.{column}", feed.config_key());
                let Some(c) = columns.iter().position(|(n, _)| n == column) else {
                    return Err(format!(
                        "{key}: the {} feed has no column {column:?} (columns: {})",
                        feed.name(),
                        columns
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                };
                for alias in list {
                    let alias = normalise(alias);
                    if alias.is_empty() {
                        return Err(format!("{key}: an alias is empty"));
                    }
                    match names.iter().position(|ns| ns.contains(&alias)) {
                        Some(other) if other == c => {}
                        Some(other) => {
                            return Err(format!(
                                "{key}: alias {alias:?} already names column {} of the {} feed",
                                columns[other].0,
                                feed.name()
                            ));
                        }
                        None => names[c].push(alias),
                    }
                }
            }
        }
        Ok(out)
    }

    /// The accepted names of each of `feed`'s columns.
    pub fn of(&self, feed: Feed) -> &[Vec<String>] {
        self.feeds.get(&feed).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_nothing_else_parses() {
        for d in [Delivery::Snapshot, Delivery::Delta] {
            assert_eq!(Delivery::parse(d.as_str()), Some(d));
        }
        assert_eq!(Delivery::parse("Snapshot"), None);
        assert_eq!(Delivery::parse(""), None);
    }
}
