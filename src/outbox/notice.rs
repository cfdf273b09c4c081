//! Notice texts (zh-CN) from the configured templates, the service-center
//! table, and the channel choice of R8.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use chrono::{Duration, NaiveDate};

use crate::db::{NewNotice, PermitRow};
use crate::domain::{Channel, EventKind, NoticeStatus, Reason, Reasons};
use crate::error::{Error, Result};
use crate::settings::Settings;

/// A community affairs acceptance service center (社区事务受理服务中心).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Center {
    pub name: String,
    pub address: String,
    pub phone: String,
}

/// Everything needed to write a notice.
#[derive(Debug, Clone)]
pub struct Notices {
    centers: HashMap<String, Center>,
    signature: String,
    auto_signed: String,
    visit_center: String,
    suspended: String,
    cancelled: String,
    materials: String,
    materials_address: String,
    grace_days: u32,
}

/// Placeholders a template may use.
const PLACEHOLDERS: [&str; 10] = [
    "name",
    "permit_no",
    "valid_until",
    "new_valid_until",
    "reasons",
    "materials",
    "center",
    "deadline",
    "grace_until",
    "signature",
];

impl Notices {
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let n = &settings.notices;
        for (key, template) in [
            ("notices.auto_signed", &n.auto_signed),
            ("notices.visit_center", &n.visit_center),
            ("notices.suspended", &n.suspended),
            ("notices.cancelled", &n.cancelled),
        ] {
            check_template(key, template)?;
        }
        Ok(Notices {
            centers: load_centers(&n.service_centers)?,
            signature: n.signature.clone(),
            auto_signed: n.auto_signed.clone(),
            visit_center: n.visit_center.clone(),
            suspended: n.suspended.clone(),
            cancelled: n.cancelled.clone(),
            materials: n.materials.clone(),
            materials_address: n.materials_address.clone(),
            grace_days: settings.rules.grace_days,
        })
    }

    pub fn center(&self, street_code: &str) -> Option<&Center> {
        self.centers.get(street_code)
    }

    /// The template of a kind's notice (R8).
    fn template(&self, kind: EventKind) -> &str {
        match kind {
            EventKind::AutoSigned => &self.auto_signed,
            EventKind::VisitCenter => &self.visit_center,
            EventKind::Suspended => &self.suspended,
            EventKind::Cancelled => &self.cancelled,
        }
    }

    /// A stored notice text with the holder's name masked (`张**`), for a
    /// masked export. The name is found where the kind's template puts
    /// `{name}`: after the template's literal beginning (the signature) and
    /// before the literal text that follows it. A text that does not fit
    /// its template (the template changed since it was written) is masked
    /// whole after its first two characters: a masked export must not
    /// show a name it could not find.
    pub fn mask_name_in(&self, kind: EventKind, message: &str) -> String {
        let mut full = self.template(kind).to_string();
        if !full.contains("{signature}") {
            full.insert_str(0, &self.signature);
        }
        let full = full.replace("{signature}", &self.signature);
        let Some(at) = full.find("{name}") else {
            return message.to_string();
        };
        let (prefix, after) = (&full[..at], &full[at + "{name}".len()..]);
        let literal_after = &after[..after.find('{').unwrap_or(after.len())];
        let name = (!prefix.contains('{') && !literal_after.is_empty())
            .then(|| message.strip_prefix(prefix))
            .flatten()
            .and_then(|rest| rest.find(literal_after).map(|end| &rest[..end]));
        match name {
            Some("") => message.to_string(),
            Some(name) => message.replace(name, &crate::domain::mask_name(name)),
            None => crate::domain::mask_text(message),
        }
    }

    /// The notice for an event on `permit` (R7, R8).
    pub fn compose(
        &self,
        kind: EventKind,
        permit: &PermitRow,
        reasons: Reasons,
        new_valid_until: Option<NaiveDate>,
    ) -> NewNotice {
        let template = self.template(kind);
        // Each placeholder's value is made only if the template uses it.
        let value = |key: &str| -> Option<Cow<'_, str>> {
            Some(match key {
                "name" => Cow::Borrowed(permit.name.as_str()),
                "permit_no" => Cow::Borrowed(permit.permit_no.as_str()),
                "valid_until" | "deadline" => Cow::Owned(permit.valid_until.to_string()),
                "new_valid_until" => {
                    Cow::Owned(new_valid_until.map(|d| d.to_string()).unwrap_or_default())
                }
                "reasons" => Cow::Owned(
                    reasons
                        .iter()
                        .map(|r| r.label_zh())
                        .collect::<Vec<_>>()
                        .join("；"),
                ),
                "materials" => {
                    let mut materials = self.materials.clone();
                    if reasons.contains(Reason::AddressChanged)
                        || reasons.contains(Reason::AddressNotVerified)
                    {
                        materials
                            .push_str(&format!("，以及居住证明（{}）", self.materials_address));
                    }
                    Cow::Owned(materials)
                }
                "center" => Cow::Owned(match self.centers.get(&permit.street_code) {
                    Some(c) => {
                        let mut s = c.name.clone();
                        match (c.address.is_empty(), c.phone.is_empty()) {
                            (false, false) => {
                                s.push_str(&format!("（{}，电话{}）", c.address, c.phone))
                            }
                            (false, true) => s.push_str(&format!("（{}）", c.address)),
                            (true, false) => s.push_str(&format!("（电话{}）", c.phone)),
                            (true, true) => {}
                        }
                        s
                    }
                    None => "所在街道（乡镇）社区事务受理服务中心".to_string(),
                }),
                "grace_until" => Cow::Owned(
                    (permit.valid_until + Duration::days(i64::from(self.grace_days))).to_string(),
                ),
                "signature" => Cow::Borrowed(self.signature.as_str()),
                _ => return None,
            })
        };
        let mut message = fill(template, value);
        if !template.contains("{signature}") {
            message.insert_str(0, &self.signature);
        }
        let (channel, recipient, status) = match (&permit.phone, &permit.email) {
            (Some(p), _) => (Channel::Sms, p.clone(), NoticeStatus::Queued),
            (None, Some(e)) => (Channel::Email, e.clone(), NoticeStatus::Queued),
            // C12: no channel: recorded, never sent.
            (None, None) => (Channel::None, String::new(), NoticeStatus::Undeliverable),
        };
        NewNotice {
            channel,
            recipient,
            message,
            status,
        }
    }
}

/// The template with each `{key}` the value function knows replaced, in
/// one pass: a value is never scanned again, so a holder's name that looks
/// like a placeholder stays as written. Unknown `{…}` stay as they are.
fn fill<'a>(template: &str, value: impl Fn(&str) -> Option<Cow<'a, str>>) -> String {
    let mut out = String::with_capacity(template.len() + 128);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let known = after
            .find('}')
            .and_then(|close| value(&after[..close]).map(|v| (close, v)));
        match known {
            Some((close, v)) => {
                out.push_str(&v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A template may only use known placeholders: a typo fails at start-up,
/// not in a citizen's SMS at 02:00.
fn check_template(key: &str, template: &str) -> Result<()> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(Error::Config(format!(
                "configuration key {key}: unclosed {{ in template"
            )));
        };
        let name = &after[..end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(Error::Config(format!(
                "configuration key {key}: unknown placeholder {{{name}}} (known: {})",
                PLACEHOLDERS.join(", ")
            )));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// Largest service-center table read: the bundled one of all Shanghai
/// streets is about 30 KiB.
const MAX_CENTERS_BYTES: u64 = 16 << 20;

/// Reads the service-center table: `street_code,center_name,address,phone`.
/// A path to something other than a regular file, or a huge file, is a
/// configuration error, not an endless read.
fn load_centers(path: &Path) -> Result<HashMap<String, Center>> {
    if path.as_os_str().is_empty() {
        return parse_centers(
            csv::Reader::from_reader(BUNDLED_CENTERS.as_bytes()),
            "bundled service_centers.csv",
        );
    }
    let text = crate::fsutil::read_regular_text(path, MAX_CENTERS_BYTES).map_err(|why| {
        Error::Config(format!(
            "configuration key notices.service_centers: {}: {why}",
            path.display()
        ))
    })?;
    parse_centers(
        csv::Reader::from_reader(text.as_bytes()),
        &path.display().to_string(),
    )
}

/// The bundled table, built from the NBS 2023 street list (see README).
const BUNDLED_CENTERS: &str = include_str!("../../config/service_centers.csv");

fn parse_centers<R: std::io::Read>(
    mut reader: csv::Reader<R>,
    shown: &str,
) -> Result<HashMap<String, Center>> {
    let mut out = HashMap::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| Error::Config(format!("{shown}: {e}")))?;
        let line = i + 2;
        let get = |j: usize| rec.get(j).map(str::trim).unwrap_or("").to_string();
        let code = get(0);
        if code.len() != 9 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Config(format!(
                "{shown} line {line}: street_code must be 9 digits"
            )));
        }
        let name = get(1);
        if name.is_empty() {
            return Err(Error::Config(format!(
                "{shown} line {line}: center_name is empty"
            )));
        }
        out.insert(
            code,
            Center {
                name,
                address: get(2),
                phone: get(3),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(phone: Option<&str>, email: Option<&str>) -> PermitRow {
        PermitRow {
            permit_no: "SH0000000001".into(),
            id_number: "11010519491231002X".into(),
            name: "张三".into(),
            phone: phone.map(Into::into),
            email: email.map(Into::into),
            district_code: "310115".into(),
            street_code: "310115004".into(),
            address: "上海市浦东新区".into(),
            valid_until: NaiveDate::from_ymd_opt(2026, 12, 1).expect("date"),
            status: crate::domain::PermitStatus::Active,
            employer_uscc: String::new(),
            si_status: crate::domain::SiStatus::Paying,
            marital_status: crate::domain::MaritalStatus::Single,
        }
    }

    fn notices() -> Notices {
        let s = Settings::load_with_env(None, &[]).expect("defaults");
        Notices::from_settings(&s).expect("notices")
    }

    #[test]
    fn fill_replaces_each_known_placeholder_once_and_leaves_values_as_written() {
        let value = |key: &str| match key {
            "name" => Some(Cow::Borrowed("{permit_no}")),
            "permit_no" => Some(Cow::Borrowed("SH1")),
            _ => None,
        };
        assert_eq!(
            fill(
                "{name}/{permit_no}/{unknown}/{{permit_no}}/{permit_no",
                value
            ),
            "{permit_no}/SH1/{unknown}/{SH1}/{permit_no"
        );
        // The same through compose: a holder's name is never filled in.
        let mut p = permit(Some("13800138000"), None);
        p.name = "{valid_until}".into();
        let msg = notices()
            .compose(EventKind::AutoSigned, &p, Reasons::NONE, None)
            .message;
        assert!(msg.contains("{valid_until}"), "{msg}");
    }

    #[test]
    fn a_masked_text_shows_the_family_name_only_and_an_unmatched_text_is_masked_whole() {
        let n = notices();
        let mut p = permit(Some("13800138000"), None);
        p.name = "欧阳娜娜".into();
        for kind in [
            EventKind::AutoSigned,
            EventKind::VisitCenter,
            EventKind::Suspended,
            EventKind::Cancelled,
        ] {
            let msg = n
                .compose(kind, &p, Reasons::of(&[Reason::AddressChanged]), None)
                .message;
            let masked = n.mask_name_in(kind, &msg);
            assert!(!masked.contains("欧阳娜娜"), "{masked}");
            assert_eq!(masked, msg.replace("欧阳娜娜", "欧***"));
        }
        let masked = n.mask_name_in(EventKind::AutoSigned, "王五你好，另一个模板");
        assert_eq!(masked, "王五********");
    }

    #[test]
    fn r8_channel_is_sms_then_email_then_undeliverable() {
        let n = notices();
        let sms = n.compose(
            EventKind::AutoSigned,
            &permit(Some("13800138000"), Some("a@b.cn")),
            Reasons::NONE,
            None,
        );
        assert_eq!((sms.channel.code(), sms.status.code()), ("sms", "queued"));
        let mail = n.compose(
            EventKind::AutoSigned,
            &permit(None, Some("a@b.cn")),
            Reasons::NONE,
            None,
        );
        assert_eq!(
            (mail.channel.code(), mail.recipient.as_str()),
            ("email", "a@b.cn")
        );
        let none = n.compose(
            EventKind::AutoSigned,
            &permit(None, None),
            Reasons::NONE,
            None,
        );
        assert_eq!(
            (none.channel.code(), none.status.code()),
            ("none", "undeliverable")
        );
    }

    #[test]
    fn r7_visit_center_text_names_reasons_deadline_materials_and_center() {
        let n = notices();
        let msg = n
            .compose(
                EventKind::VisitCenter,
                &permit(Some("13800138000"), None),
                Reasons::of(&[Reason::AddressChanged, Reason::EmployerChanged]),
                None,
            )
            .message;
        let center = n.center("310115004").expect("center exists").name.clone();
        for part in [
            "张三",
            "2026-12-01",
            Reason::AddressChanged.label_zh(),
            Reason::EmployerChanged.label_zh(),
            "实有人口居住登记表",
            "房屋租赁合同登记备案证明",
            center.as_str(),
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
        assert!(!msg.contains('{'), "unfilled placeholder in {msg}");
    }

    #[test]
    fn r7_auto_signed_text_names_new_date() {
        let n = notices();
        let d = NaiveDate::from_ymd_opt(2027, 12, 1).expect("date");
        let msg = n
            .compose(
                EventKind::AutoSigned,
                &permit(Some("13800138000"), None),
                Reasons::NONE,
                Some(d),
            )
            .message;
        assert!(
            msg.contains("2027-12-01") && msg.contains("自动签注"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_placeholder_is_a_config_error() {
        let err = check_template("notices.cancelled", "{nmae}").unwrap_err();
        assert!(err.to_string().contains("{nmae}"), "{err}");
    }
}
