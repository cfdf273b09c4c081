//! The nightly report: one self-contained HTML page (inline CSS and SVG, no
//! script, no external resource) for a range of nights, that an operator
//! opens offline or prints on A4. `autosign report --from --to --out`
//! writes it for any range; the daemon writes one after each run it makes
//! (completed or held) under `<data_dir>/reports/<as_of>.html`, covering
//! that night and the `report.nights` before it.
//!
//! It shows, for the last night of the range against the nights before:
//! the outcome counts (R3, R6); VISIT_CENTER by reason, district and
//! street; PENDING by days left to the decision; delivery by channel and
//! status with the time from queued to sent; the night's imports with
//! their rejects by reason and each feed's age; and the safety brake.
//!
//! Only counts reach the page — no permit number, name, ID number or
//! address. The figures come from `db::report` (aggregated in SQL); this
//! module puts them in a [`Report`], `html` renders it and `charts` draws
//! its charts with plotters.

pub mod charts;
mod html;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, NaiveDate};

use crate::clock::Clock;
use crate::db::report::{DelayStats, ReportImport, ReportRun};
use crate::db::Db;
use crate::domain::{Reason, RunStatus};
use crate::error::{Error, Result};
use crate::feeds::Feed;
use crate::fsutil::AtomicFile;
use crate::outbox::notice::Notices;
use crate::settings::Settings;

pub use html::render;

/// The language of the page: the `report.language` setting.
pub use crate::settings::Language;

/// What a night counts, in the order shown: the decisions (R6), PENDING
/// (no event; the run's own count) and the lifecycle steps (R3).
pub const OUTCOMES: [&str; 5] = [
    "AUTO_SIGNED",
    "VISIT_CENTER",
    "PENDING",
    "SUSPENDED",
    "CANCELLED",
];

/// Notice statuses, in the order shown (R8; `withdrawn`: a reverted run's).
pub const STATUSES: [&str; 6] = [
    "sent",
    "queued",
    "failed",
    "dead",
    "undeliverable",
    "withdrawn",
];

/// Notice channels (R8; `none`: no phone and no e-mail).
pub const CHANNELS: [&str; 3] = ["sms", "email", "none"];

/// Streets shown by name in the VISIT_CENTER section.
pub const TOP_STREETS: usize = 10;

/// Shanghai's districts (GB/T 2260), for the district chart.
const DISTRICTS: [(&str, &str); 16] = [
    ("310101", "黄浦区"),
    ("310104", "徐汇区"),
    ("310105", "长宁区"),
    ("310106", "静安区"),
    ("310107", "普陀区"),
    ("310109", "虹口区"),
    ("310110", "杨浦区"),
    ("310112", "闵行区"),
    ("310113", "宝山区"),
    ("310114", "嘉定区"),
    ("310115", "浦东新区"),
    ("310116", "金山区"),
    ("310117", "松江区"),
    ("310118", "青浦区"),
    ("310120", "奉贤区"),
    ("310151", "崇明区"),
];

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub language: Language,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub generated_at: String,
    /// The completed and held runs of the range, oldest first; the last is
    /// the night reported.
    pub nights: Vec<Night>,
    pub last: LastNight,
    pub delivery: Delivery,
    /// `rules.window_days` and `rules.decision_deadline_days` (R4, R6).
    pub window_days: u32,
    pub deadline_days: u32,
    pub brake_enabled: bool,
}

/// One night's counts, in [`OUTCOMES`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Night {
    pub as_of: NaiveDate,
    pub run_id: i64,
    pub status: RunStatus,
    pub counts: [i64; 5],
}

/// The night reported, in detail.
#[derive(Debug, Clone)]
pub struct LastNight {
    pub run: ReportRun,
    /// VISIT_CENTER decisions naming each reason, in R5's order (a
    /// decision may name several).
    pub reasons: Vec<(Reason, i64)>,
    pub districts: Vec<Place>,
    /// The [`TOP_STREETS`] streets with the most VISIT_CENTER decisions.
    pub streets: Vec<Place>,
    /// How many streets had any.
    pub street_count: usize,
    /// PENDING permits by days left to `valid_until`, for every day after
    /// the decision deadline up to the window's end.
    pub pending_days: Vec<(i64, i64)>,
    /// `None` when the run predates import marks.
    pub imports: Option<Vec<ImportLine>>,
    pub feed_ages: Vec<FeedAge>,
}

/// A district or street and its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub code: String,
    pub name: String,
    pub count: i64,
}

/// One imported file of the night.
#[derive(Debug, Clone)]
pub struct ImportLine {
    pub import: ReportImport,
    pub rejects: Rejects,
}

/// A file's rejected rows by reason code, from its rejects file (the
/// database keeps the count, the rejects file the reasons: R2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejects {
    /// By code (`INVALID_ID_NUMBER`…); empty when nothing was rejected.
    Counted(Vec<(String, i64)>),
    /// No rejects file where autosign writes them by default (the import
    /// was given `--rejects`, or `purge` removed it).
    Missing,
    /// The rejects file there holds a different number of rows: a later
    /// file of the same name replaced it.
    Replaced {
        rows: i64,
    },
    Unreadable(String),
}

/// A feed's newest import when the run began.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedAge {
    pub feed: Feed,
    pub imported_at: Option<String>,
    /// Hours from that import to the run's start.
    pub age_hours: Option<f64>,
    /// `brake.max_age_days` for the feed (0: not checked).
    pub max_age_days: u32,
}

/// The outbox for the range's notices, as it stands when the page is made.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Per night with notices, counts in [`STATUSES`] order.
    pub nights: Vec<(NaiveDate, [i64; 6])>,
    /// Per channel ([`CHANNELS`] order), the whole range.
    pub channels: Vec<(&'static str, [i64; 6])>,
    /// Per channel, the night reported.
    pub last_channels: Vec<(&'static str, [i64; 6])>,
    pub delays: DelayStats,
}

/// The range a report covers and its language.
#[derive(Debug, Clone, Copy)]
pub struct ReportRequest {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub language: Language,
}

/// Reads the figures of `req` from the database. Refused (exit 2) when
/// the range holds no completed or held run.
pub async fn gather(
    db: &Db,
    settings: &Settings,
    notices: &Notices,
    clock: Clock,
    req: ReportRequest,
) -> Result<Report> {
    let runs = db.report_runs(req.from, req.to).await?;
    let Some(run) = runs.last().cloned() else {
        let latest = db.report_latest_run().await?;
        return Err(Error::Refused(no_run(req.from, req.to, latest.as_ref())));
    };
    let mut counts: BTreeMap<(NaiveDate, String), i64> = BTreeMap::new();
    for t in db.report_event_counts(req.from, req.to).await? {
        *counts.entry((t.as_of, t.a)).or_default() += t.count;
    }
    let nights: Vec<Night> = runs
        .iter()
        .map(|r| Night {
            as_of: r.as_of,
            run_id: r.run_id,
            status: r.status,
            counts: OUTCOMES.map(|kind| match kind {
                "PENDING" => r.pending,
                _ => counts
                    .get(&(r.as_of, kind.to_string()))
                    .copied()
                    .unwrap_or(0),
            }),
        })
        .collect();

    let mut by_reason: BTreeMap<Reason, i64> = BTreeMap::new();
    for (reasons, n) in db.report_visit_center_reasons(run.as_of).await? {
        for r in reasons.iter() {
            *by_reason.entry(r).or_default() += n;
        }
    }
    let reasons = Reason::ALL
        .iter()
        .map(|r| (*r, by_reason.get(r).copied().unwrap_or(0)))
        .collect();

    let (districts, streets, street_count) =
        places(&db.report_visit_center_places(run.as_of).await?, notices);

    let window = i64::from(settings.rules.window_days);
    let deadline = i64::from(settings.rules.decision_deadline_days);
    let pending: BTreeMap<i64, i64> = db
        .report_pending_days(
            run.as_of,
            run.as_of + Duration::days(deadline),
            run.as_of + Duration::days(window),
        )
        .await?
        .into_iter()
        .collect();
    let pending_days = (deadline + 1..=window)
        .map(|d| (d, pending.get(&d).copied().unwrap_or(0)))
        .collect();

    let imports = match run.import_mark {
        None => None,
        Some(mark) => {
            let after = db.report_previous_mark(run.as_of).await?.unwrap_or(0);
            let found = db.report_imports(after, mark).await?;
            let dirs = rejects_dirs(settings);
            let lines = tokio::task::spawn_blocking(move || {
                found
                    .into_iter()
                    .map(|import| ImportLine {
                        rejects: rejects_of(&dirs, &import),
                        import,
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| Error::Runtime(anyhow::anyhow!("reading rejects files: {e}")))?;
            Some(lines)
        }
    };
    let newest: BTreeMap<String, String> = match run.import_mark {
        Some(mark) => db
            .report_newest_imports(mark)
            .await?
            .into_iter()
            .map(|t| (t.a, t.b))
            .collect(),
        None => BTreeMap::new(),
    };
    let feed_ages = Feed::ALL
        .iter()
        .map(|f| {
            let imported_at = newest.get(f.name()).cloned();
            FeedAge {
                feed: *f,
                age_hours: imported_at
                    .as_deref()
                    .and_then(|t| hours_between(t, &run.started_at)),
                imported_at,
                max_age_days: settings.brake.max_age_days.for_feed(f.name()),
            }
        })
        .collect();

    let delivery = delivery(
        &db.report_notices(req.from, req.to).await?,
        run.as_of,
        db.report_delays(req.from, req.to).await?,
    );

    Ok(Report {
        language: req.language,
        from: req.from,
        to: req.to,
        generated_at: clock.now_rfc3339(),
        nights,
        last: LastNight {
            run,
            reasons,
            districts,
            streets,
            street_count,
            pending_days,
            imports,
            feed_ages,
        },
        delivery,
        window_days: settings.rules.window_days,
        deadline_days: settings.rules.decision_deadline_days,
        brake_enabled: settings.brake.enabled,
    })
}

/// The refusal for a range without a run, saying where runs are.
fn no_run(from: NaiveDate, to: NaiveDate, latest: Option<&ReportRun>) -> String {
    let range = if from == to {
        format!("{from}")
    } else {
        format!("{from} to {to}")
    };
    match latest {
        None => format!("no run for {range}: nothing to report (no night has been run yet)"),
        Some(r) => format!(
            "no run for {range}: nothing to report (the latest completed or held run is for {})",
            r.as_of
        ),
    }
}

/// Districts (by count, then code) and the top streets with names from
/// the district table and the service-center table.
fn places(
    tallies: &[crate::db::report::Tally],
    notices: &Notices,
) -> (Vec<Place>, Vec<Place>, usize) {
    let mut districts: BTreeMap<&str, i64> = BTreeMap::new();
    let mut streets: BTreeMap<&str, i64> = BTreeMap::new();
    for t in tallies {
        *districts.entry(&t.a).or_default() += t.count;
        *streets.entry(&t.b).or_default() += t.count;
    }
    let district_name = |code: &str| {
        DISTRICTS
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, n)| (*n).to_string())
            .unwrap_or_default()
    };
    let ranked = |m: BTreeMap<&str, i64>, name: &dyn Fn(&str) -> String| {
        let mut v: Vec<Place> = m
            .into_iter()
            .map(|(code, count)| Place {
                code: code.to_string(),
                name: name(code),
                count,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
        v
    };
    let districts = ranked(districts, &district_name);
    let street_name = |code: &str| {
        notices
            .center(code)
            .map(|c| {
                c.name
                    .strip_suffix("社区事务受理服务中心")
                    .unwrap_or(&c.name)
                    .to_string()
            })
            .unwrap_or_default()
    };
    let mut streets = ranked(streets, &street_name);
    let count = streets.len();
    streets.truncate(TOP_STREETS);
    (districts, streets, count)
}

/// Where rejects files are written by default: the inbox's folder (when
/// set) and `<data_dir>/rejects`.
fn rejects_dirs(settings: &Settings) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let inbox = settings.inbox.rejects_dir.trim();
    if !inbox.is_empty() {
        dirs.push(PathBuf::from(inbox));
    }
    dirs.push(settings.data_dir.join("rejects"));
    dirs
}

/// A file's rejects by reason, from its rejects file at the default place.
fn rejects_of(dirs: &[PathBuf], import: &ReportImport) -> Rejects {
    if import.rows_rejected == 0 {
        return Rejects::Counted(Vec::new());
    }
    let Some(feed) = Feed::ALL.into_iter().find(|f| f.name() == import.feed) else {
        return Rejects::Missing;
    };
    let file = Path::new(&import.file_name);
    let mut replaced = None;
    for dir in dirs {
        let path = crate::feeds::rejects_path_in(dir, feed, file);
        if !path.is_file() {
            continue;
        }
        match count_reasons(&path) {
            Ok(v) if v.iter().map(|(_, n)| n).sum::<i64>() == import.rows_rejected => {
                return Rejects::Counted(v)
            }
            Ok(v) => replaced = Some(v.iter().map(|(_, n)| n).sum()),
            Err(e) => return Rejects::Unreadable(e),
        }
    }
    match replaced {
        Some(rows) => Rejects::Replaced { rows },
        None => Rejects::Missing,
    }
}

/// Counts a rejects file's rows by the code of their `reason` (`CODE:
/// detail`); the original fields are not read.
fn count_reasons(path: &Path) -> std::result::Result<Vec<(String, i64)>, String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(|e| e.to_string())?;
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match r.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(e.to_string()),
        }
        let reason = record.get(1).unwrap_or_default();
        *counts.entry(reason_code(reason)).or_default() += 1;
    }
    Ok(counts.into_iter().collect())
}

/// The code before the colon of a reason; `OTHER` for anything that is
/// not a code (it would be a cell of someone's row).
fn reason_code(reason: &[u8]) -> String {
    let code = reason.split(|b| *b == b':').next().unwrap_or_default();
    let code = code.trim_ascii();
    let is_code = !code.is_empty()
        && code.len() <= 64
        && code
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    if is_code {
        String::from_utf8_lossy(code).into_owned()
    } else {
        "OTHER".to_string()
    }
}

/// Hours from `earlier` to `later` (RFC 3339 both).
fn hours_between(earlier: &str, later: &str) -> Option<f64> {
    let a = DateTime::parse_from_rfc3339(earlier).ok()?;
    let b = DateTime::parse_from_rfc3339(later).ok()?;
    Some((b - a).num_seconds() as f64 / 3600.0)
}

fn status_index(status: &str) -> Option<usize> {
    STATUSES.iter().position(|s| *s == status)
}

/// The notice tallies arranged per night and per channel.
fn delivery(
    tallies: &[crate::db::report::NightTally],
    last: NaiveDate,
    delays: DelayStats,
) -> Delivery {
    let mut nights: BTreeMap<NaiveDate, [i64; 6]> = BTreeMap::new();
    let mut channels = CHANNELS.map(|c| (c, [0i64; 6]));
    let mut last_channels = CHANNELS.map(|c| (c, [0i64; 6]));
    for t in tallies {
        let Some(s) = status_index(&t.b) else {
            continue;
        };
        nights.entry(t.as_of).or_default()[s] += t.count;
        if let Some(c) = channels.iter_mut().find(|(c, _)| *c == t.a) {
            c.1[s] += t.count;
        }
        if t.as_of == last {
            if let Some(c) = last_channels.iter_mut().find(|(c, _)| *c == t.a) {
                c.1[s] += t.count;
            }
        }
    }
    Delivery {
        nights: nights.into_iter().collect(),
        channels: channels.to_vec(),
        last_channels: last_channels.to_vec(),
        delays,
    }
}

/// Where the report goes: a file (written atomically, owner-only) or
/// standard output.
#[derive(Debug, Clone)]
pub enum Destination {
    File(PathBuf),
    Stdout,
}

/// `autosign report`: gathers, renders and writes the page. Returns the
/// report (for the caller's summary line).
pub async fn write(
    db: &Db,
    settings: &Settings,
    notices: &Notices,
    clock: Clock,
    req: ReportRequest,
    out: &Destination,
) -> Result<Report> {
    // Opened first: a path that cannot be written fails before the work,
    // and a failed report leaves no temp file (dropped, it is removed).
    let file = match out {
        Destination::File(path) => Some((AtomicFile::create(path)?, path)),
        Destination::Stdout => None,
    };
    let report = gather(db, settings, notices, clock, req).await?;
    let page = render(&report)?;
    match file {
        // Through a temp file and a rename: a reader (or a browser
        // refreshing) never sees half a page.
        Some((mut f, path)) => {
            f.write_all(page.as_bytes())
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
            f.commit()?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(page.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| Error::io("cannot write the report to standard output", e))?;
        }
    }
    Ok(report)
}

/// Where the daemon writes the report of the run for `as_of`.
pub fn nightly_path(settings: &Settings, as_of: NaiveDate) -> PathBuf {
    settings
        .data_dir
        .join("reports")
        .join(format!("{as_of}.html"))
}

/// The daemon's report after its run for `as_of`: that night and the
/// `report.nights` before it, in `report.language`, to
/// [`nightly_path`]. The caller logs a failure; it never fails the run.
pub async fn write_nightly(
    db: &Db,
    settings: &Settings,
    notices: &Notices,
    clock: Clock,
    as_of: NaiveDate,
) -> Result<PathBuf> {
    let req = ReportRequest {
        from: as_of - Duration::days(i64::from(settings.report.nights)),
        to: as_of,
        language: settings.report.language,
    };
    let path = nightly_path(settings, as_of);
    write(
        db,
        settings,
        notices,
        clock,
        req,
        &Destination::File(path.clone()),
    )
    .await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reject_reason_counts_by_its_code_and_anything_else_is_other() {
        assert_eq!(
            reason_code(b"INVALID_ID_NUMBER: id_number: check character is 5, expected X"),
            "INVALID_ID_NUMBER"
        );
        assert_eq!(
            reason_code(b"VALID_UNTIL_BACKWARDS"),
            "VALID_UNTIL_BACKWARDS"
        );
        assert_eq!(reason_code("张三: x".as_bytes()), "OTHER");
        assert_eq!(reason_code(b""), "OTHER");
    }

    #[test]
    fn a_rejects_file_is_counted_by_reason_without_reading_the_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.csv");
        std::fs::write(
            &path,
            "line,reason,permit_no,id_number\n\
             3,\"INVALID_ID_NUMBER: id_number: bad\",SH1,x\n\
             5,MISSING_NAME: name: empty,SH2,y\n\
             9,\"INVALID_ID_NUMBER: id_number: bad, again\",SH3,\"multi\nline\"\n",
        )
        .expect("write");
        assert_eq!(
            count_reasons(&path).expect("count"),
            vec![
                ("INVALID_ID_NUMBER".to_string(), 2),
                ("MISSING_NAME".to_string(), 1)
            ]
        );
    }

    #[test]
    fn a_rejects_file_of_another_size_is_reported_as_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rejects = dir.path().join("permits");
        std::fs::create_dir_all(&rejects).expect("mkdir");
        std::fs::write(
            rejects.join("p.csv.rejects.csv"),
            "line,reason\n2,MISSING_NAME: x\n",
        )
        .expect("write");
        let import = |rejected| ReportImport {
            import_id: 1,
            feed: "permits".into(),
            file_name: "/in/p.csv".into(),
            rows_read: 10,
            rows_imported: 10 - rejected,
            rows_rejected: rejected,
            imported_at: "2026-11-27T01:00:00+08:00".into(),
        };
        let dirs = vec![dir.path().to_path_buf()];
        assert_eq!(
            rejects_of(&dirs, &import(1)),
            Rejects::Counted(vec![("MISSING_NAME".into(), 1)])
        );
        assert_eq!(rejects_of(&dirs, &import(2)), Rejects::Replaced { rows: 1 });
        assert_eq!(rejects_of(&dirs, &import(0)), Rejects::Counted(vec![]));
        let elsewhere = vec![dir.path().join("none")];
        assert_eq!(rejects_of(&elsewhere, &import(1)), Rejects::Missing);
    }

    #[test]
    fn a_feed_age_is_the_hours_from_its_import_to_the_run() {
        assert_eq!(
            hours_between("2026-11-26T20:00:00+08:00", "2026-11-27T02:00:00+08:00"),
            Some(6.0)
        );
        assert_eq!(hours_between("garbage", "2026-11-27T02:00:00+08:00"), None);
    }

    #[test]
    fn the_refusal_names_the_latest_run_when_there_is_one() {
        let d = |s: &str| s.parse::<NaiveDate>().expect("date");
        let latest = ReportRun {
            run_id: 3,
            as_of: d("2026-11-27"),
            status: RunStatus::Completed,
            pending: 0,
            brake: None,
            started_at: String::new(),
            finished_at: None,
            import_mark: None,
            released_at: None,
        };
        assert_eq!(
            no_run(d("2026-12-01"), d("2026-12-03"), Some(&latest)),
            "no run for 2026-12-01 to 2026-12-03: nothing to report (the latest completed or \
             held run is for 2026-11-27)"
        );
        assert_eq!(
            no_run(d("2026-12-01"), d("2026-12-01"), None),
            "no run for 2026-12-01: nothing to report (no night has been run yet)"
        );
    }
}
