//! The report as one HTML page: inline CSS, inline SVG charts, no script,
//! no link to anything outside the file, so it opens offline, mails as one
//! attachment and prints on A4 (one section a page, charts within the
//! page's width).
//!
//! Every figure on the page is in a table as well as (where there is one)
//! a chart, and each such cell carries `data-v` (what it counts, e.g.
//! `night/2026-11-27/AUTO_SIGNED`) and `data-n` (the number), so that
//! scripts and tests read the figures without scraping text. Every value
//! that is not a number written here is HTML-escaped.

use std::fmt::Write as _;

use chrono::NaiveDate;

use super::charts::{self, Bar, Rgb, PAGE_WIDTH};
use super::{FeedAge, Language, Place, Rejects, Report, OUTCOMES, STATUSES, TOP_STREETS};
use crate::db::report::DELAY_BUCKETS;
use crate::domain::{Reason, RunStatus};
use crate::error::Result;
use crate::feeds::Feed;

/// One colour per outcome, in [`OUTCOMES`] order.
const OUTCOME_COLORS: [Rgb; 5] = [
    Rgb(0x2E, 0x7D, 0x32),
    Rgb(0xE6, 0x51, 0x00),
    Rgb(0x45, 0x5A, 0x64),
    Rgb(0xF9, 0xA8, 0x25),
    Rgb(0xC6, 0x28, 0x28),
];

/// One colour per notice status, in [`STATUSES`] order.
const STATUS_COLORS: [Rgb; 6] = [
    Rgb(0x2E, 0x7D, 0x32),
    Rgb(0x90, 0xA4, 0xAE),
    Rgb(0xF9, 0xA8, 0x25),
    Rgb(0xC6, 0x28, 0x28),
    Rgb(0x6A, 0x1B, 0x9A),
    Rgb(0xBD, 0xBD, 0xBD),
];

const REASON_COLOR: Rgb = Rgb(0xE6, 0x51, 0x00);
const PLACE_COLOR: Rgb = Rgb(0xEF, 0x8A, 0x3C);
const PENDING_COLOR: Rgb = Rgb(0x45, 0x5A, 0x64);
const DELAY_COLOR: Rgb = Rgb(0x2E, 0x7D, 0x32);
const REJECT_COLOR: Rgb = Rgb(0x8D, 0x6E, 0x63);

/// The page may load nothing and run nothing: a report that travels by
/// mail or a shared folder cannot be made to fetch or report anything, even
/// if an element with a URL slipped into it (the browser refuses the load
/// and says so in its console).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'";

const STYLE: &str = r#"
@page { size: A4; margin: 15mm; }
* { box-sizing: border-box; }
html { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei", sans-serif; font-size: 13px; color: #222; background: #f3f3f3; }
body { width: 680px; max-width: 100%; margin: 0 auto; padding: 16px 0 32px; }
main, header, footer { background: #fff; }
header { padding: 16px 20px 8px; border-bottom: 3px solid #1565C0; }
h1 { font-size: 22px; margin: 0 0 6px; color: #0D47A1; }
h2 { font-size: 17px; margin: 0 0 8px; color: #0D47A1; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
h2, h3, caption, figcaption { break-after: avoid; page-break-after: avoid; }
section { padding: 16px 20px; border-bottom: 1px solid #ddd; break-before: page; page-break-before: always; }
section.first { break-before: auto; page-break-before: auto; }
p { margin: 4px 0 8px; line-height: 1.5; }
.meta { color: #444; }
.note { color: #555; font-size: 12px; }
.empty { color: #777; font-style: italic; }
code { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 11px; color: #555; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei", sans-serif; }
figure { margin: 6px 0 10px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-weight: bold; margin-bottom: 2px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 16px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; margin: 4px 0 10px; }
caption { text-align: left; font-weight: bold; padding: 2px 0 4px; }
th, td { border-bottom: 1px solid #e2e2e2; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr { break-inside: avoid; page-break-inside: avoid; }
tr.reported td { font-weight: bold; background: #fff8e1; }
.swatch { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 0; vertical-align: baseline; }
.legend { font-size: 12px; margin: 2px 0 6px; }
.legend span.item { margin-right: 12px; white-space: nowrap; }
.brake { padding: 8px 12px; margin: 8px 0; border-left: 6px solid #2E7D32; background: #f1f8e9; }
.brake.held { border-left-color: #C62828; background: #ffebee; }
.brake.released { border-left-color: #F9A825; background: #fffde7; }
footer { padding: 12px 20px; color: #666; font-size: 11px; }
@media print {
  html { background: #fff; font-size: 11px; }
  body { width: auto; padding: 0; }
  header, section, footer { padding-left: 0; padding-right: 0; border-bottom: none; }
}
"#;

/// Picks the text of the page's language.
#[derive(Clone, Copy)]
struct T(Language);

impl T {
    fn s(self, zh: &'static str, en: &'static str) -> &'static str {
        match self.0 {
            Language::ZhCn => zh,
            Language::En => en,
        }
    }

    fn outcome(self, kind: &str) -> &'static str {
        match kind {
            "AUTO_SIGNED" => self.s("自动签注通过", "Auto-signed"),
            "VISIT_CENTER" => self.s("需到中心办理", "Visit a center"),
            "PENDING" => self.s("待定（证据未到）", "Pending (evidence missing)"),
            "SUSPENDED" => self.s("使用功能中止", "Suspended"),
            "CANCELLED" => self.s("注销", "Cancelled"),
            _ => self.s("其他", "Other"),
        }
    }

    fn reason(self, r: Reason) -> &'static str {
        match r {
            Reason::AddressNotVerified => self.s("居住地址未核实", "Address not verified"),
            Reason::AddressChanged => self.s("居住地址已变化", "Address changed"),
            Reason::SocialInsuranceMissing => {
                self.s("无近期社保缴费记录", "Social insurance missing")
            }
            Reason::SocialInsuranceChanged => {
                self.s("社保缴费状态变化", "Social insurance changed")
            }
            Reason::EmployerChanged => self.s("就业单位变化", "Employer changed"),
            Reason::MaritalStatusChanged => self.s("婚姻状况变化", "Marital status changed"),
        }
    }

    fn status(self, status: &str) -> &'static str {
        match status {
            "sent" => self.s("已发送", "sent"),
            "queued" => self.s("待发送", "queued"),
            "failed" => self.s("失败待重试", "failed, to retry"),
            "dead" => self.s("已放弃", "dead"),
            "undeliverable" => self.s("无法送达", "undeliverable"),
            "withdrawn" => self.s("已撤回", "withdrawn"),
            _ => self.s("其他", "other"),
        }
    }

    fn channel(self, channel: &str) -> &'static str {
        match channel {
            "sms" => self.s("短信", "SMS"),
            "email" => self.s("电子邮件", "e-mail"),
            "none" => self.s("无联系方式", "no contact"),
            _ => self.s("其他", "other"),
        }
    }

    fn feed(self, feed: Feed) -> &'static str {
        match feed {
            Feed::Permits => self.s("居住证登记", "permits"),
            Feed::Residence => self.s("居住核查", "residence"),
            Feed::SocialInsurance => self.s("社会保险", "social insurance"),
            Feed::CivilStatus => self.s("婚姻状况", "civil status"),
        }
    }

    fn feed_name(self, name: &str) -> String {
        match Feed::ALL.into_iter().find(|f| f.name() == name) {
            Some(f) => self.feed(f).to_string(),
            None => name.to_string(),
        }
    }

    fn run_status(self, status: RunStatus) -> &'static str {
        match status {
            RunStatus::Completed => self.s("已完成", "completed"),
            RunStatus::Held => self.s("被安全闸暂停", "held by the safety brake"),
            _ => self.s("其他", "other"),
        }
    }

    fn delay_bucket(self, i: usize) -> &'static str {
        const ZH: [&str; 8] = [
            "<1分钟",
            "1–10分钟",
            "10–60分钟",
            "1–6小时",
            "6–12小时",
            "12–24小时",
            "1–2天",
            "≥2天",
        ];
        const EN: [&str; 8] = [
            "<1 min",
            "1–10 min",
            "10–60 min",
            "1–6 h",
            "6–12 h",
            "12–24 h",
            "1–2 d",
            "≥2 d",
        ];
        let i = i.min(ZH.len() - 1);
        self.s(ZH[i], EN[i])
    }

    /// A duration in words: `2 小时 05 分` / `2 h 05 min`.
    fn duration(self, secs: i64) -> String {
        let secs = secs.max(0);
        let (d, h, m, s) = (
            secs / 86_400,
            secs % 86_400 / 3_600,
            secs % 3_600 / 60,
            secs % 60,
        );
        match self.0 {
            Language::ZhCn if d > 0 => format!("{d} 天 {h} 小时"),
            Language::ZhCn if h > 0 => format!("{h} 小时 {m:02} 分"),
            Language::ZhCn if m > 0 => format!("{m} 分 {s:02} 秒"),
            Language::ZhCn => format!("{s} 秒"),
            Language::En if d > 0 => format!("{d} d {h} h"),
            Language::En if h > 0 => format!("{h} h {m:02} min"),
            Language::En if m > 0 => format!("{m} min {s:02} s"),
            Language::En => format!("{s} s"),
        }
    }
}

/// HTML-escapes text (control characters shown escaped first).
fn esc(s: &str) -> String {
    let s = crate::domain::escape_controls(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number cell: what it counts (`key`) and the number, machine-readable.
fn num(key: &str, n: i64) -> String {
    format!(
        "<td class=\"n\" data-v=\"{}\" data-n=\"{n}\">{n}</td>",
        esc(key)
    )
}

/// A chart, with a class for the stylesheet and its caption as the
/// accessible name.
fn chart(svg: &str, label: &str) -> String {
    svg.replacen(
        "<svg ",
        &format!(
            "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" ",
            esc(label)
        ),
        1,
    )
}

fn swatch(color: Rgb) -> String {
    format!(
        "<span class=\"swatch\" style=\"background:{}\"></span>",
        color.hex()
    )
}

fn legend(t: T) -> String {
    let mut out = String::from("<p class=\"legend\">");
    for (s, c) in STATUSES.iter().zip(STATUS_COLORS) {
        let _ = write!(
            out,
            "<span class=\"item\">{}{}</span>",
            swatch(c),
            esc(t.status(s))
        );
    }
    out.push_str("</p>");
    out
}

fn night_label(d: NaiveDate) -> String {
    d.format("%m-%d").to_string()
}

/// The whole page.
pub fn render(r: &Report) -> Result<String> {
    let t = T(r.language);
    let mut o = String::with_capacity(256 * 1024);
    let run = &r.last.run;
    let title = t.s(
        "居住证自动签注 · 夜间报告",
        "Residence permit auto-endorsement · nightly report",
    );
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} {as_of}</title>\n<style>{STYLE}</style>\n</head>\n\
         <body data-from=\"{from}\" data-to=\"{to}\" data-as-of=\"{as_of}\" data-run-id=\"{id}\" \
         data-run-status=\"{status}\">",
        lang = r.language.tag(),
        title = esc(title),
        as_of = run.as_of,
        from = r.from,
        to = r.to,
        id = run.run_id,
        status = run.status.code(),
    );
    header(&mut o, t, r, title);
    o.push_str("<main>\n");
    outcomes(&mut o, t, r)?;
    visit_center(&mut o, t, r)?;
    pending(&mut o, t, r)?;
    delivery(&mut o, t, r)?;
    imports(&mut o, t, r)?;
    o.push_str("</main>\n");
    let _ = writeln!(
        o,
        "<footer><p>{}</p></footer>\n</body>\n</html>",
        esc(t.s(
            "本报告只含统计数字，不含任何个人信息（无证号、姓名、身份证号或地址）。数字来自运行记录、审计记录和通知发件箱，与 autosign export audit / export notifications 的导出一致。",
            "This report holds counts only, no personal data (no permit or ID number, name or address). The figures come from the run ledger, the audit trail and the notice outbox, as autosign export audit / export notifications export them."
        ))
    );
    Ok(o)
}

fn header(o: &mut String, t: T, r: &Report, title: &str) {
    let run = &r.last.run;
    let _ = writeln!(
        o,
        "<header>\n<h1>{}</h1>\n<p class=\"meta\">{} <b>{}</b> · {} {} · {} · {} {} – {} ({} {}) · {} {}</p>",
        esc(title),
        esc(t.s("报告之夜：", "Night reported:")),
        run.as_of,
        esc(t.s("运行", "run")),
        run.run_id,
        esc(t.run_status(run.status)),
        esc(t.s("统计区间：", "range:")),
        r.from,
        r.to,
        r.nights.len(),
        esc(t.s("夜有运行", "nights with a run")),
        esc(t.s("生成于", "generated")),
        esc(&r.generated_at),
    );
    if run.as_of != r.to {
        let _ = writeln!(
            o,
            "<p class=\"note\">{} {} {} {}</p>",
            esc(t.s("区间末日", "There is no run for the range's last day,")),
            r.to,
            esc(t.s(
                "没有运行记录；报告的是区间内最近一次运行：",
                "so the latest run in the range is reported:"
            )),
            run.as_of
        );
    }
    if run.status == RunStatus::Held {
        let _ = writeln!(
            o,
            "<div class=\"brake held\"><b>{}</b> {}</div>",
            esc(t.s("安全闸暂停了本次运行：", "The safety brake held this run:")),
            esc(t.s(
                "决定已记录，但未生效、未发通知。见第 5 节。",
                "its decisions are recorded, not applied, not notified. See section 5."
            ))
        );
    }
    o.push_str("</header>\n");
}

fn outcomes(o: &mut String, t: T, r: &Report) -> Result<()> {
    let _ = writeln!(
        o,
        "<section id=\"outcomes\" class=\"first\">\n<h2>1. {}</h2>\n<p>{}</p>\n<div class=\"grid\">",
        esc(t.s("当夜结果与往夜对比", "The night's outcomes against the nights before")),
        esc(t.s(
            "每张图一夜一柱，深色为报告之夜，横线为此前各夜的平均数。PENDING 不写入审计记录，取自运行记录。",
            "One bar a night, the night reported darker; the line is the average of the nights before. PENDING is not an audit event: it is the run's own count."
        )),
    );
    let (last, earlier) = r
        .nights
        .split_last()
        .map(|(l, e)| (Some(l), e))
        .unwrap_or((None, &[]));
    for (k, kind) in OUTCOMES.iter().enumerate() {
        let bars: Vec<Bar> = r
            .nights
            .iter()
            .map(|n| Bar::new(night_label(n.as_of), n.counts[k]))
            .collect();
        let values: Vec<i64> = earlier.iter().map(|n| n.counts[k]).collect();
        let mean =
            (!values.is_empty()).then(|| values.iter().sum::<i64>() as f64 / values.len() as f64);
        let svg = charts::nights(&bars, OUTCOME_COLORS[k], mean, 330, 170)?;
        let tonight = last.map_or(0, |n| n.counts[k]);
        let (lo, hi) = (values.iter().min(), values.iter().max());
        let _ = writeln!(
            o,
            "<figure data-chart=\"night-{kind}\">\n<figcaption>{}{} <code>{kind}</code></figcaption>\n{}\n\
             <table><tr><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr>\
             <tr>{}<td class=\"n\">{}</td><td class=\"n\">{}</td></tr></table>\n</figure>",
            swatch(OUTCOME_COLORS[k]),
            esc(t.outcome(kind)),
            chart(&svg, t.outcome(kind)),
            esc(t.s("当夜", "tonight")),
            esc(t.s("往夜平均", "earlier mean")),
            esc(t.s("往夜最少–最多", "earlier min–max")),
            num(&format!("tonight/{kind}"), tonight),
            mean.map_or_else(|| "—".to_string(), |m| format!("{m:.1}")),
            match (lo, hi) {
                (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
                _ => "—".to_string(),
            },
        );
    }
    o.push_str("</div>\n");
    let _ = write!(
        o,
        "<table>\n<caption>{}</caption>\n<thead><tr><th>{}</th><th class=\"n\">{}</th>",
        esc(t.s("各夜明细", "Night by night")),
        esc(t.s("日期", "as_of")),
        esc(t.s("运行", "run")),
    );
    for kind in OUTCOMES {
        let _ = write!(o, "<th class=\"n\">{}</th>", esc(t.outcome(kind)));
    }
    o.push_str("</tr></thead>\n<tbody>\n");
    let last_id = last.map(|n| n.run_id);
    for n in &r.nights {
        let _ = write!(
            o,
            "<tr{}><td>{}</td><td class=\"n\">{}{}</td>",
            if Some(n.run_id) == last_id {
                " class=\"reported\""
            } else {
                ""
            },
            n.as_of,
            n.run_id,
            if n.status == RunStatus::Held {
                esc(t.s("（暂停）", " (held)"))
            } else {
                String::new()
            },
        );
        for (k, kind) in OUTCOMES.iter().enumerate() {
            o.push_str(&num(&format!("night/{}/{kind}", n.as_of), n.counts[k]));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn place_table(o: &mut String, t: T, places: &[Place], kind: &str, with_district: bool) {
    let _ = writeln!(
        o,
        "<table><thead><tr><th>{}</th>{}<th>{}</th><th class=\"n\">{}</th></tr></thead><tbody>",
        esc(if kind == "district" {
            t.s("区", "District")
        } else {
            t.s("街道/乡镇", "Street or town")
        }),
        if with_district {
            format!("<th>{}</th>", esc(t.s("所属区", "District")))
        } else {
            String::new()
        },
        esc(t.s("代码", "Code")),
        esc(t.s("人数", "Permits")),
    );
    for p in places {
        let district = if with_district {
            let code = p.code.get(..6).unwrap_or("");
            let name = super::DISTRICTS
                .iter()
                .find(|(c, _)| *c == code)
                .map_or("", |(_, n)| *n);
            format!("<td>{}</td>", esc(name))
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "<tr><td>{}</td>{district}<td><code>{}</code></td>{}</tr>",
            esc(if p.name.is_empty() { "—" } else { &p.name }),
            esc(&p.code),
            num(&format!("{kind}/{}", p.code), p.count),
        );
    }
    o.push_str("</tbody></table>\n");
}

fn place_bars(places: &[Place]) -> Vec<Bar> {
    places
        .iter()
        .map(|p| {
            Bar::new(
                if p.name.is_empty() {
                    p.code.clone()
                } else {
                    p.name.clone()
                },
                p.count,
            )
        })
        .collect()
}

fn visit_center(o: &mut String, t: T, r: &Report) -> Result<()> {
    let total = r.nights.last().map_or(0, |n| n.counts[1]);
    let _ = writeln!(
        o,
        "<section id=\"visit-center\">\n<h2>2. {}</h2>\n<p>{} <b>{}</b></p>",
        esc(t.s(
            "需到中心办理（VISIT_CENTER）：原因与地区",
            "VISIT_CENTER: why and where"
        )),
        esc(t.s(
            "当夜需到中心办理的人数：",
            "Permits sent to a center tonight:"
        )),
        total,
    );
    if total == 0 {
        let _ = writeln!(
            o,
            "<p class=\"empty\">{}</p>\n</section>",
            esc(t.s(
                "当夜没有需到中心办理的决定。",
                "No VISIT_CENTER decision tonight."
            ))
        );
        return Ok(());
    }
    let bars: Vec<Bar> = r
        .last
        .reasons
        .iter()
        .map(|(reason, n)| Bar::new(t.reason(*reason), *n))
        .collect();
    let caption = t.s("按原因", "By reason");
    let _ = writeln!(
        o,
        "<h3>{}</h3>\n<figure>{}</figure>\n<table><thead><tr><th>{}</th><th>{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr></thead><tbody>",
        esc(caption),
        chart(&charts::horizontal(&bars, REASON_COLOR, PAGE_WIDTH)?, caption),
        esc(t.s("原因", "Reason")),
        esc(t.s("代码", "Code")),
        esc(t.s("人数", "Permits")),
        esc(t.s("占比", "Share")),
    );
    for (reason, n) in &r.last.reasons {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td>{}<td class=\"n\">{:.1} %</td></tr>",
            esc(t.reason(*reason)),
            reason.code(),
            num(&format!("reason/{}", reason.code()), *n),
            *n as f64 * 100.0 / total as f64,
        );
    }
    let _ = writeln!(
        o,
        "</tbody></table>\n<p class=\"note\">{}</p>",
        esc(t.s(
            "一个决定可列出多个原因，故各原因人数之和可大于总人数。",
            "A decision may name several reasons, so the reasons may add up to more than the total."
        ))
    );
    let caption = t.s("按区", "By district");
    let _ = writeln!(
        o,
        "<h3>{}</h3>\n<figure>{}</figure>",
        esc(caption),
        chart(
            &charts::horizontal(&place_bars(&r.last.districts), PLACE_COLOR, PAGE_WIDTH)?,
            caption
        ),
    );
    place_table(o, t, &r.last.districts, "district", false);
    let caption = match t.0 {
        Language::ZhCn => format!(
            "人数最多的街道/乡镇（前 {} 个，共 {} 个）",
            TOP_STREETS.min(r.last.street_count),
            r.last.street_count
        ),
        Language::En => format!(
            "Streets and towns with the most (top {} of {})",
            TOP_STREETS.min(r.last.street_count),
            r.last.street_count
        ),
    };
    let _ = writeln!(
        o,
        "<h3>{}</h3>\n<figure>{}</figure>",
        esc(&caption),
        chart(
            &charts::horizontal(&place_bars(&r.last.streets), PLACE_COLOR, PAGE_WIDTH)?,
            &caption
        ),
    );
    place_table(o, t, &r.last.streets, "street", true);
    let _ = writeln!(
        o,
        "<p class=\"note\">{}</p>\n</section>",
        esc(t.s(
            "区和街道按登记册中居住证当前登记的代码统计。",
            "Districts and streets are those the register holds for each permit now."
        ))
    );
    Ok(())
}

fn pending(o: &mut String, t: T, r: &Report) -> Result<()> {
    let run = &r.last.run;
    let total: i64 = r.last.pending_days.iter().map(|(_, n)| n).sum();
    let lead = match t.0 {
        Language::ZhCn => format!(
            "证据未到、离有效期截止还有 {} 天以上的居住证暂不决定（R6），在截止前 {} 天仍无证据的将被通知到中心办理。下图按距有效期截止的天数统计当夜的待定人数。",
            r.deadline_days, r.deadline_days
        ),
        Language::En => format!(
            "A permit whose evidence is missing waits while more than {} days are left (R6); one still without evidence {} days before its valid_until is sent to a center. Pending permits of the night by days left to valid_until:",
            r.deadline_days, r.deadline_days
        ),
    };
    let bars: Vec<Bar> = r
        .last
        .pending_days
        .iter()
        .map(|(d, n)| Bar::new(d.to_string(), *n))
        .collect();
    let caption = t.s("待定人数（按剩余天数）", "Pending by days left");
    let _ = writeln!(
        o,
        "<section id=\"pending\">\n<h2>3. {}</h2>\n<p>{}</p>\n<figure>{}</figure>\n\
         <table><thead><tr><th class=\"n\">{}</th><th class=\"n\">{}</th></tr></thead><tbody>",
        esc(t.s("待定（PENDING）", "PENDING")),
        esc(&lead),
        chart(
            &charts::vertical(&bars, PENDING_COLOR, 12, PAGE_WIDTH, 200)?,
            caption
        ),
        esc(t.s("剩余天数", "Days left")),
        esc(t.s("人数", "Permits")),
    );
    for (d, n) in r.last.pending_days.iter().filter(|(_, n)| *n > 0) {
        let _ = writeln!(
            o,
            "<tr><td class=\"n\">{d}</td>{}</tr>",
            num(&format!("pending/{d}"), *n)
        );
    }
    let _ = writeln!(
        o,
        "<tr class=\"reported\"><td class=\"n\">{}</td>{}</tr>\n</tbody></table>",
        esc(t.s("合计", "Total")),
        num("pending/total", total)
    );
    let note = if total == run.pending {
        match t.0 {
            Language::ZhCn => format!("与运行记录的待定人数（{}）一致。", run.pending),
            Language::En => format!("The same as the run's own PENDING count ({}).", run.pending),
        }
    } else {
        match t.0 {
            Language::ZhCn => format!(
                "运行记录的待定人数为 {}：此后登记册已有变化（之后的决定或导入），上表按登记册现状统计。",
                run.pending
            ),
            Language::En => format!(
                "The run itself counted {} pending: the register has changed since (later decisions or imports), and the table counts it as it is now.",
                run.pending
            ),
        }
    };
    let _ = writeln!(
        o,
        "<p class=\"note\" data-v=\"pending/run\" data-n=\"{}\">{}</p>\n</section>",
        run.pending,
        esc(&note)
    );
    Ok(())
}

fn channel_table(o: &mut String, t: T, rows: &[(&'static str, [i64; 6])], prefix: &str) {
    let _ = write!(
        o,
        "<table><thead><tr><th>{}</th>",
        esc(t.s("渠道", "Channel"))
    );
    for s in STATUSES {
        let _ = write!(o, "<th class=\"n\">{}</th>", esc(t.status(s)));
    }
    let _ = writeln!(
        o,
        "<th class=\"n\">{}</th></tr></thead><tbody>",
        esc(t.s("合计", "Total"))
    );
    for (channel, counts) in rows {
        let _ = write!(o, "<tr><td>{}</td>", esc(t.channel(channel)));
        for (s, n) in STATUSES.iter().zip(counts) {
            o.push_str(&num(&format!("{prefix}/{channel}/{s}"), *n));
        }
        let _ = writeln!(
            o,
            "<td class=\"n\">{}</td></tr>",
            counts.iter().sum::<i64>()
        );
    }
    o.push_str("</tbody></table>\n");
}

fn channel_chart(t: T, rows: &[(&'static str, [i64; 6])]) -> Result<String> {
    let cats: Vec<(String, Vec<i64>)> = rows
        .iter()
        .map(|(c, counts)| (t.channel(c).to_string(), counts.to_vec()))
        .collect();
    charts::stacked(&cats, &STATUS_COLORS, true, PAGE_WIDTH, 130)
}

fn delivery(o: &mut String, t: T, r: &Report) -> Result<()> {
    let d = &r.delivery;
    let lead = match t.0 {
        Language::ZhCn => format!(
            "区间内各夜通知在发件箱中的状态（截至 {}）。夜间运行后通知先为待发送，静默时段（21:00–08:00）后发出。",
            r.generated_at
        ),
        Language::En => format!(
            "The outbox state of the range's notices as of {}. A night's notices are queued by its run and go out after quiet hours (21:00–08:00).",
            r.generated_at
        ),
    };
    let _ = writeln!(
        o,
        "<section id=\"delivery\">\n<h2>4. {}</h2>\n<p>{}</p>\n{}",
        esc(t.s("通知送达", "Delivery of notices")),
        esc(&lead),
        legend(t)
    );
    let caption = match t.0 {
        Language::ZhCn => format!("{} 的通知（按渠道）", r.last.run.as_of),
        Language::En => format!("Notices of {}, by channel", r.last.run.as_of),
    };
    let _ = writeln!(
        o,
        "<h3>{}</h3>\n<figure>{}</figure>",
        esc(&caption),
        chart(&channel_chart(t, &d.last_channels)?, &caption)
    );
    channel_table(o, t, &d.last_channels, "last");
    let caption = t.s(
        "整个区间的通知（按渠道）",
        "Notices of the whole range, by channel",
    );
    let _ = writeln!(
        o,
        "<h3>{}</h3>\n<figure>{}</figure>",
        esc(caption),
        chart(&channel_chart(t, &d.channels)?, caption)
    );
    channel_table(o, t, &d.channels, "channel");

    let caption = t.s("各夜通知", "Notices night by night");
    let _ = writeln!(o, "<h3>{}</h3>", esc(caption));
    if d.nights.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"empty\">{}</p>",
            esc(t.s("区间内没有通知。", "No notice in the range."))
        );
    } else {
        let cats: Vec<(String, Vec<i64>)> = d
            .nights
            .iter()
            .map(|(day, counts)| (night_label(*day), counts.to_vec()))
            .collect();
        let _ = write!(
            o,
            "<figure>{}</figure>\n<table><thead><tr><th>{}</th>",
            chart(
                &charts::stacked(&cats, &STATUS_COLORS, false, PAGE_WIDTH, 190)?,
                caption
            ),
            esc(t.s("日期", "as_of"))
        );
        for s in STATUSES {
            let _ = write!(o, "<th class=\"n\">{}</th>", esc(t.status(s)));
        }
        o.push_str("</tr></thead><tbody>\n");
        for (day, counts) in &d.nights {
            let _ = write!(o, "<tr><td>{day}</td>");
            for (s, n) in STATUSES.iter().zip(counts) {
                o.push_str(&num(&format!("delivery/{day}/{s}"), *n));
            }
            o.push_str("</tr>\n");
        }
        o.push_str("</tbody></table>\n");
    }

    let delays = &d.delays;
    let caption = t.s("从入队到发出的时间", "Time from queued to sent");
    let _ = writeln!(o, "<h3>{}</h3>", esc(caption));
    if delays.count == 0 {
        let _ = writeln!(
            o,
            "<p class=\"empty\" data-v=\"delay/count\" data-n=\"0\">{}</p>\n</section>",
            esc(t.s(
                "区间内还没有已发送的通知。",
                "No notice of the range has been sent yet."
            ))
        );
        return Ok(());
    }
    let figure = |key: &str, secs: Option<i64>| match secs {
        Some(s) => format!(
            "<td class=\"n\" data-v=\"{key}\" data-n=\"{s}\">{}</td>",
            esc(&t.duration(s))
        ),
        None => "<td class=\"n\">—</td>".to_string(),
    };
    let _ = writeln!(
        o,
        "<table><thead><tr><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">P95</th></tr></thead>\
         <tbody><tr>{}{}{}</tr></tbody></table>",
        esc(t.s("已发送", "Sent")),
        esc(t.s("中位数", "Median")),
        num("delay/count", delays.count),
        figure("delay/median_secs", delays.median),
        figure("delay/p95_secs", delays.p95),
    );
    let bars: Vec<Bar> = delays
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| Bar::new(t.delay_bucket(i), *n))
        .collect();
    let _ = write!(
        o,
        "<figure>{}</figure>\n<table><thead><tr>",
        chart(
            &charts::vertical(&bars, DELAY_COLOR, 8, PAGE_WIDTH, 180)?,
            caption
        )
    );
    for i in 0..=DELAY_BUCKETS.len() {
        let _ = write!(o, "<th class=\"n\">{}</th>", esc(t.delay_bucket(i)));
    }
    o.push_str("</tr></thead><tbody><tr>");
    for (i, n) in delays.buckets.iter().enumerate() {
        o.push_str(&num(&format!("delay_bucket/{i}"), *n));
    }
    o.push_str("</tr></tbody></table>\n</section>\n");
    Ok(())
}

fn brake(o: &mut String, t: T, r: &Report) {
    let run = &r.last.run;
    let why = run.brake.as_deref().unwrap_or("");
    let (class, state, text) = if run.status == RunStatus::Held {
        (
            "held",
            "held",
            match t.0 {
                Language::ZhCn => format!(
                    "安全闸已暂停本次运行：决定已记录，未生效，未发通知；在处理前所有运行都会被拒绝。原因：{why}。处理：autosign release {id}（生效并通知）或 autosign discard {id}（作废，修正数据后重跑）。",
                    id = run.run_id
                ),
                Language::En => format!(
                    "The safety brake held this run: its decisions are recorded, not applied, not notified, and every run is refused until an operator acts. Why: {why}. Next: autosign release {id} (apply and notify) or autosign discard {id} (void; fix the feed and run again).",
                    id = run.run_id
                ),
            },
        )
    } else if let (Some(_), Some(at)) = (&run.brake, &run.released_at) {
        (
            "released",
            "released",
            match t.0 {
                Language::ZhCn => format!("安全闸曾暂停本次运行（原因：{why}），已于 {at} 放行。"),
                Language::En => {
                    format!("The safety brake held this run ({why}); it was released at {at}.")
                }
            },
        )
    } else {
        (
            "clear",
            "clear",
            if r.brake_enabled {
                t.s(
                    "安全闸未触发：本次运行的决定已生效。",
                    "The safety brake did not trip: the run's decisions took effect.",
                )
                .to_string()
            } else {
                t.s(
                    "安全闸未启用（brake.enabled = false）。",
                    "The safety brake is off (brake.enabled = false).",
                )
                .to_string()
            },
        )
    };
    let _ = writeln!(
        o,
        "<h3>{}</h3>\n<div class=\"brake {class}\" data-brake=\"{state}\">{}</div>",
        esc(t.s("安全闸", "Safety brake")),
        esc(&text)
    );
}

fn imports(o: &mut String, t: T, r: &Report) -> Result<()> {
    let _ = writeln!(
        o,
        "<section id=\"imports\">\n<h2>5. {}</h2>",
        esc(t.s(
            "当夜导入与安全闸",
            "The night's imports and the safety brake"
        ))
    );
    brake(o, t, r);
    let _ = writeln!(
        o,
        "<h3>{}</h3>",
        esc(t.s("当夜导入的文件", "Files imported for the night"))
    );
    let mut by_reason: std::collections::BTreeMap<(String, String), i64> = Default::default();
    let mut notes = Vec::new();
    match &r.last.imports {
        None => {
            let _ = writeln!(
                o,
                "<p class=\"empty\">{}</p>",
                esc(t.s(
                    "本次运行早于导入标记的记录，无法确定其导入。",
                    "This run predates import marks: its imports are not known."
                ))
            );
        }
        Some(lines) if lines.is_empty() => {
            let _ = writeln!(
                o,
                "<p class=\"empty\" data-v=\"imports/count\" data-n=\"0\">{}</p>",
                esc(t.s(
                    "自上一次运行以来没有导入文件。",
                    "No file was imported since the run before."
                ))
            );
        }
        Some(lines) => {
            let _ = writeln!(
                o,
                "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr></thead><tbody>",
                esc(t.s("数据", "Feed")),
                esc(t.s("文件", "File")),
                esc(t.s("导入时间", "Imported at")),
                esc(t.s("读取行数", "Rows read")),
                esc(t.s("导入", "Imported")),
                esc(t.s("拒绝", "Rejected")),
            );
            for l in lines {
                let i = &l.import;
                let _ = writeln!(
                    o,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td>{}{}{}</tr>",
                    esc(&t.feed_name(&i.feed)),
                    esc(&i.file_name),
                    esc(&i.imported_at),
                    num(&format!("import/{}/read", i.import_id), i.rows_read),
                    num(&format!("import/{}/imported", i.import_id), i.rows_imported),
                    num(&format!("import/{}/rejected", i.import_id), i.rows_rejected),
                );
                match &l.rejects {
                    Rejects::Counted(v) => {
                        for (code, n) in v {
                            *by_reason.entry((i.feed.clone(), code.clone())).or_default() += n;
                        }
                    }
                    Rejects::Missing => notes.push(format!(
                        "{} {}: {}",
                        i.file_name,
                        i.rows_rejected,
                        t.s(
                            "行被拒绝；默认位置没有其拒绝文件（导入时另指定了 --rejects，或已被 purge 清理），原因未计入。",
                            "rows rejected; no rejects file at the default place (the import was given --rejects, or purge removed it), so their reasons are not counted."
                        )
                    )),
                    Rejects::Replaced { rows } => notes.push(format!(
                        "{}: {} {} {}",
                        i.file_name,
                        i.rows_rejected,
                        t.s(
                            "行被拒绝，但默认位置的拒绝文件有不同行数（被同名的后来文件覆盖）：",
                            "rows rejected, but the rejects file at the default place has another count (a later file of the same name replaced it):"
                        ),
                        rows
                    )),
                    Rejects::Unreadable(why) => notes.push(format!(
                        "{}: {} {why}",
                        i.file_name,
                        t.s("拒绝文件无法读取：", "rejects file unreadable:")
                    )),
                }
            }
            o.push_str("</tbody></table>\n");
        }
    }
    let caption = t.s("被拒绝的行（按原因）", "Rejected rows by reason");
    let _ = writeln!(o, "<h3>{}</h3>", esc(caption));
    if by_reason.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"empty\">{}</p>",
            esc(t.s(
                "没有按原因统计的拒绝行。",
                "No rejected row counted by reason."
            ))
        );
    } else {
        let bars: Vec<Bar> = by_reason
            .iter()
            .map(|((feed, code), n)| Bar::new(format!("{} · {code}", t.feed_name(feed)), *n))
            .collect();
        let _ = writeln!(
            o,
            "<figure>{}</figure>\n<table><thead><tr><th>{}</th><th>{}</th><th class=\"n\">{}</th></tr></thead><tbody>",
            chart(&charts::horizontal(&bars, REJECT_COLOR, PAGE_WIDTH)?, caption),
            esc(t.s("数据", "Feed")),
            esc(t.s("原因代码", "Reason code")),
            esc(t.s("行数", "Rows")),
        );
        for ((feed, code), n) in &by_reason {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td><code>{}</code></td>{}</tr>",
                esc(&t.feed_name(feed)),
                esc(code),
                num(&format!("reject/{feed}/{code}"), *n)
            );
        }
        o.push_str("</tbody></table>\n");
    }
    for n in notes {
        let _ = writeln!(o, "<p class=\"note\">{}</p>", esc(&n));
    }
    feed_ages(o, t, &r.last.feed_ages);
    o.push_str("</section>\n");
    Ok(())
}

fn feed_ages(o: &mut String, t: T, ages: &[FeedAge]) {
    let _ = writeln!(
        o,
        "<h3>{}</h3>\n<table><thead><tr><th>{}</th><th>{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr></thead><tbody>",
        esc(t.s("各数据源的新鲜度（运行开始时）", "Each feed's age when the run began")),
        esc(t.s("数据", "Feed")),
        esc(t.s("最近一次导入", "Newest import")),
        esc(t.s("时长", "Age")),
        esc(t.s("安全闸上限（天）", "Brake limit (days)")),
    );
    for a in ages {
        let age = match a.age_hours {
            Some(h) => format!(
                "<td class=\"n\" data-v=\"feed_age_hours/{}\" data-n=\"{h:.1}\">{}</td>",
                a.feed.name(),
                esc(&t.duration((h * 3600.0).round() as i64))
            ),
            None => "<td class=\"n\">—</td>".to_string(),
        };
        let limit = if a.max_age_days == 0 {
            t.s("不检查", "not checked").to_string()
        } else {
            a.max_age_days.to_string()
        };
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td>{age}<td class=\"n\">{}</td></tr>",
            esc(t.feed(a.feed)),
            esc(a
                .imported_at
                .as_deref()
                .unwrap_or(t.s("从未导入", "never imported"))),
            esc(&limit)
        );
    }
    o.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::super::{Delivery, ImportLine, LastNight, Night};
    use super::*;
    use crate::db::report::{DelayStats, ReportImport, ReportRun};

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    fn report(language: Language) -> Report {
        let run = ReportRun {
            run_id: 2,
            as_of: d("2026-11-28"),
            status: RunStatus::Completed,
            pending: 3,
            brake: None,
            started_at: "2026-11-28T02:00:00+08:00".into(),
            finished_at: Some("2026-11-28T02:01:00+08:00".into()),
            import_mark: Some(4),
            released_at: None,
        };
        Report {
            language,
            from: d("2026-11-27"),
            to: d("2026-11-28"),
            generated_at: "2026-11-28T02:01:05+08:00".into(),
            nights: vec![
                Night {
                    as_of: d("2026-11-27"),
                    run_id: 1,
                    status: RunStatus::Completed,
                    counts: [29, 17, 5, 34, 17],
                },
                Night {
                    as_of: d("2026-11-28"),
                    run_id: 2,
                    status: RunStatus::Completed,
                    counts: [2, 1, 3, 0, 0],
                },
            ],
            last: LastNight {
                run,
                reasons: Reason::ALL
                    .iter()
                    .map(|r| (*r, i64::from(*r == Reason::EmployerChanged)))
                    .collect(),
                districts: vec![Place {
                    code: "310115".into(),
                    name: "浦东新区".into(),
                    count: 1,
                }],
                streets: vec![Place {
                    code: "310115004".into(),
                    name: "潍坊新村街道<b>".into(),
                    count: 1,
                }],
                street_count: 1,
                pending_days: vec![(8, 0), (9, 3)],
                imports: Some(vec![ImportLine {
                    import: ReportImport {
                        import_id: 4,
                        feed: "residence".into(),
                        file_name: "in/<script>.csv".into(),
                        rows_read: 10,
                        rows_imported: 9,
                        rows_rejected: 1,
                        imported_at: "2026-11-27T23:00:00+08:00".into(),
                    },
                    rejects: Rejects::Counted(vec![("INVALID_VISITED_ON".into(), 1)]),
                }]),
                feed_ages: vec![FeedAge {
                    feed: Feed::Residence,
                    imported_at: Some("2026-11-27T23:00:00+08:00".into()),
                    age_hours: Some(3.0),
                    max_age_days: 7,
                }],
            },
            delivery: Delivery {
                nights: vec![(d("2026-11-27"), [90, 0, 1, 2, 4, 0])],
                channels: vec![
                    ("sms", [80, 0, 0, 2, 0, 0]),
                    ("email", [10, 0, 1, 0, 0, 0]),
                    ("none", [0, 0, 0, 0, 4, 0]),
                ],
                last_channels: vec![
                    ("sms", [0, 2, 0, 0, 0, 0]),
                    ("email", [0, 1, 0, 0, 0, 0]),
                    ("none", [0, 0, 0, 0, 0, 0]),
                ],
                delays: DelayStats {
                    count: 90,
                    median: Some(6 * 3600 + 5 * 60),
                    p95: Some(30 * 3600),
                    buckets: vec![0, 0, 0, 10, 70, 0, 10, 0],
                },
            },
            window_days: 30,
            deadline_days: 7,
            brake_enabled: true,
        }
    }

    /// `data-v` keys and their `data-n` numbers, in page order.
    fn figures(page: &str) -> Vec<(String, String)> {
        page.split("data-v=\"")
            .skip(1)
            .map(|rest| {
                let key = rest.split('"').next().unwrap_or_default().to_string();
                let n = rest
                    .split("data-n=\"")
                    .nth(1)
                    .and_then(|x| x.split('"').next())
                    .unwrap_or_default()
                    .to_string();
                (key, n)
            })
            .collect()
    }

    fn figure(page: &str, key: &str) -> String {
        figures(page)
            .into_iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
    }

    #[test]
    fn the_page_is_self_contained_with_no_script_link_or_remote_reference() {
        for language in [Language::ZhCn, Language::En] {
            let page = render(&report(language)).expect("page");
            for banned in [
                "<script", "<link", "src=", "href=", "url(", "@import", "<img", "<iframe",
                "http://", "https://",
            ] {
                // The SVG namespace is an identifier, never fetched.
                let page = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
                assert!(!page.contains(banned), "{banned} in the {language:?} page");
            }
            assert!(page.contains("@page { size: A4"), "A4 print rule");
            assert!(
                page.contains(&format!(
                    "<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
                )),
                "the page forbids itself any load"
            );
            assert!(page.starts_with("<!DOCTYPE html>"));
        }
    }

    #[test]
    fn every_value_from_outside_is_escaped() {
        let page = render(&report(Language::ZhCn)).expect("page");
        assert!(page.contains("in/&lt;script&gt;.csv"), "file name escaped");
        assert!(
            page.contains("潍坊新村街道&lt;b&gt;"),
            "street name escaped"
        );
        assert!(!page.contains("<script>"));
        assert!(!page.contains("街道<b>"));
    }

    #[test]
    fn each_figure_is_machine_readable_beside_its_chart() {
        let page = render(&report(Language::ZhCn)).expect("page");
        assert_eq!(figure(&page, "night/2026-11-27/AUTO_SIGNED"), "29");
        assert_eq!(figure(&page, "night/2026-11-28/PENDING"), "3");
        assert_eq!(figure(&page, "tonight/VISIT_CENTER"), "1");
        assert_eq!(figure(&page, "reason/EMPLOYER_CHANGED"), "1");
        assert_eq!(figure(&page, "reason/ADDRESS_CHANGED"), "0");
        assert_eq!(figure(&page, "district/310115"), "1");
        assert_eq!(figure(&page, "street/310115004"), "1");
        assert_eq!(figure(&page, "pending/9"), "3");
        assert_eq!(figure(&page, "pending/total"), "3");
        assert_eq!(figure(&page, "channel/sms/dead"), "2");
        assert_eq!(figure(&page, "last/email/queued"), "1");
        assert_eq!(figure(&page, "delivery/2026-11-27/undeliverable"), "4");
        assert_eq!(figure(&page, "delay/median_secs"), "21900");
        assert_eq!(figure(&page, "delay_bucket/4"), "70");
        assert_eq!(figure(&page, "import/4/rejected"), "1");
        assert_eq!(figure(&page, "reject/residence/INVALID_VISITED_ON"), "1");
        assert_eq!(figure(&page, "feed_age_hours/residence"), "3.0");
        // Days with no pending permit have no row.
        assert!(!figures(&page).iter().any(|(k, _)| k == "pending/8"));
    }

    #[test]
    fn one_chart_per_outcome_and_per_breakdown() {
        let page = render(&report(Language::ZhCn)).expect("page");
        // 5 outcomes, reasons, districts, streets, pending, 3 delivery,
        // the delay histogram, rejects.
        assert_eq!(
            page.matches("<svg class=\"chart\"").count(),
            5 + 3 + 1 + 3 + 1 + 1
        );
    }

    #[test]
    fn chinese_by_default_and_english_on_request() {
        let zh = render(&report(Language::ZhCn)).expect("page");
        assert!(zh.contains("<html lang=\"zh-CN\">"));
        assert!(zh.contains("自动签注通过"));
        assert!(zh.contains("6 小时 05 分"));
        let en = render(&report(Language::En)).expect("page");
        assert!(en.contains("<html lang=\"en\">"));
        assert!(en.contains("Auto-signed"));
        assert!(en.contains("6 h 05 min"));
        assert!(!en.contains("自动签注通过"));
    }

    #[test]
    fn a_held_run_is_announced_at_the_top_and_in_the_brake_section() {
        let mut r = report(Language::ZhCn);
        r.last.run.status = RunStatus::Held;
        r.last.run.brake = Some("feed residence is 9 days old".into());
        let page = render(&r).expect("page");
        assert!(page.contains("data-brake=\"held\""));
        assert!(page.contains("feed residence is 9 days old"));
        assert!(page.contains("autosign release 2"));
        assert!(page.find("brake held").expect("banner") < page.find("<main>").expect("main"));
        let clear = render(&report(Language::ZhCn)).expect("page");
        assert!(clear.contains("data-brake=\"clear\""));
    }

    #[test]
    fn durations_read_in_the_largest_units() {
        let zh = T(Language::ZhCn);
        let en = T(Language::En);
        assert_eq!(zh.duration(42), "42 秒");
        assert_eq!(en.duration(125), "2 min 05 s");
        assert_eq!(en.duration(90_000), "1 d 1 h");
        assert_eq!(en.duration(-5), "0 s");
    }
}
