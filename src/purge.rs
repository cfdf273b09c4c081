//! `autosign purge` (docs/rules.md, "Retention and purge"): removes what
//! the service no longer needs after `[retention]` — old feed rows, finished notices' texts and
//! old rejects files — and keeps the decisions' audit trail. See
//! `db::retention` for exactly which rows go, and docs/operations.md.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Duration, Utc};

use crate::clock::Clock;
use crate::db::retention::{PurgeCounts, PurgeCutoffs};
use crate::db::Db;
use crate::domain::Month;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// What a purge did.
#[derive(Debug, Clone)]
pub struct PurgeReport {
    pub cutoffs: PurgeCutoffs,
    pub rows: PurgeCounts,
    pub rejects_files: u64,
    pub dry_run: bool,
}

/// The cutoffs for `now` under the settings' retention: dates in the
/// clock's zone, timestamps as the database stores them (compared as
/// text).
pub fn cutoffs(settings: &Settings, clock: Clock, now: DateTime<Utc>) -> PurgeCutoffs {
    let r = &settings.retention;
    let feed_edge = days_before(now, r.feed_days);
    let visited_before = clock.local(feed_edge).date_naive();
    PurgeCutoffs {
        visited_before,
        // Whole months only: the month holding the cutoff date stays.
        month_before: Month::of(visited_before).to_string(),
        imported_before: clock.stamp(feed_edge),
        notices_before: clock.stamp(days_before(now, r.notice_days)),
    }
}

/// `now` less `days`, or the earliest instant there is: retention is
/// range-checked (at most a century), so this only keeps purge total; an
/// edge at the start of time purges nothing.
fn days_before(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now.checked_sub_signed(Duration::days(i64::from(days)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Purges, under the job lock, as of `clock`'s now.
pub async fn purge(
    db: &Db,
    settings: &Settings,
    clock: Clock,
    dry_run: bool,
) -> Result<PurgeReport> {
    let _lock = db
        .lock_jobs(|| tracing::info!("an import or run holds the job lock; waiting for it"))
        .await?;
    // Once the lock is held: a purge that waited for a run cuts at the
    // time it starts.
    let now = clock.now();
    let cut = cutoffs(settings, clock, now);
    let rows = db.purge(&cut, dry_run).await?;
    let edge = SystemTime::from(days_before(now, settings.retention.feed_days));
    let mut rejects_files = 0;
    for dir in rejects_dirs(settings) {
        rejects_files += purge_rejects(&dir, edge, dry_run)?;
    }
    tracing::info!(
        dry_run,
        residence = rows.residence,
        social_insurance = rows.social_insurance,
        civil_status = rows.civil_status,
        notice_texts = rows.notice_texts,
        rejects_files,
        "purge finished"
    );
    Ok(PurgeReport {
        cutoffs: cut,
        rows,
        rejects_files,
        dry_run,
    })
}

/// Where rejects files are written: the default under the data directory
/// and the inbox's own folder, if set.
fn rejects_dirs(settings: &Settings) -> Vec<PathBuf> {
    let mut dirs = vec![settings.data_dir.join("rejects")];
    let inbox = settings.inbox.rejects_dir.trim();
    if !inbox.is_empty() && Path::new(inbox) != dirs[0] {
        dirs.push(PathBuf::from(inbox));
    }
    dirs
}

/// Removes `*.rejects.csv` files last written before `edge` in `dir` and
/// its per-feed sub-folders. A missing folder has nothing to purge.
fn purge_rejects(dir: &Path, edge: SystemTime, dry_run: bool) -> Result<u64> {
    let mut removed = 0;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("cannot list rejects folder {}", folder.display()),
                    e,
                ))
            }
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                // One level of per-feed folders (rejects/<feed>/).
                if folder == dir {
                    folders.push(path);
                }
                continue;
            }
            let is_rejects = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".rejects.csv"));
            let old = meta.modified().map(|m| m < edge).unwrap_or(false);
            if is_rejects && old {
                if !dry_run {
                    std::fs::remove_file(&path)
                        .map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
                }
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The report `autosign purge` prints.
pub fn render(r: &PurgeReport) -> String {
    let c = &r.cutoffs;
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut out = format!(
        "purge ({}): feed rows before {} (months before {}), finished notices created before {}\n",
        if r.dry_run {
            "dry run, nothing changed"
        } else {
            "done"
        },
        c.visited_before,
        c.month_before,
        c.notices_before,
    );
    for (what, n) in [
        ("residence visits", r.rows.residence),
        ("social-insurance months", r.rows.social_insurance),
        ("replaced civil-status rows", r.rows.civil_status),
        ("notice texts", r.rows.notice_texts),
        ("rejects files", r.rejects_files),
    ] {
        out.push_str(&format!("  {verb} {n:>9} {what}\n"));
    }
    out.push_str("  kept: the register, current records, decisions and their audit trail\n");
    out
}
