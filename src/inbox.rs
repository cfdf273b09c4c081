//! The inbox (R2a): the folder a run imports from before it decides
//! anything, one sub-folder per feed. A job of its own beside the run,
//! which calls it first, and the dry run, which lists what it would
//! import.

use std::path::{Path, PathBuf};

use crate::clock::Clock;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::feeds::{self, Feed, ImportOptions, ImportOutcome};
use crate::settings::Settings;

/// Imports every new file of the inbox, feed by feed in a fixed order
/// (the register first), files in name order; `progress`: bars on a
/// terminal. Any refusal stops the run before R3 (exit 3, naming the
/// file).
pub async fn import_new(
    db: &Db,
    settings: &Settings,
    clock: Clock,
    progress: bool,
) -> Result<Vec<(PathBuf, ImportOutcome)>> {
    let inbox = &settings.inbox;
    let Some(root) = root(settings)? else {
        return Ok(Vec::new());
    };
    let rejects_dir = if inbox.rejects_dir.trim().is_empty() {
        settings.data_dir.join("rejects")
    } else {
        PathBuf::from(inbox.rejects_dir.trim())
    };
    let encoding = inbox.encoding;
    let mut out = Vec::new();
    for feed in Feed::ALL {
        for file in feed_files(settings, root, feed)? {
            let opts = ImportOptions {
                encoding,
                rejects: Some(feeds::rejects_path_in(&rejects_dir, feed, &file)),
                max_reject_ratio: settings.import.max_reject_ratio,
                batch_rows: settings.import.batch_rows,
                progress,
                headers: settings.header_names()?,
                delivery: settings.delivery(feed),
                clock,
            };
            let outcome =
                feeds::import_file(db, feed, &file, &opts)
                    .await
                    .map_err(|e| match e {
                        Error::InputRefused(msg) => Error::InputRefused(format!(
                            "inbox file refused, run stopped before deciding anything: {msg}"
                        )),
                        other => other,
                    })?;
            out.push((file, outcome));
        }
    }
    Ok(out)
}

/// The inbox folder (R2a), `None` when none is configured.
pub fn root(settings: &Settings) -> Result<Option<&Path>> {
    let dir = settings.inbox.dir.trim();
    if dir.is_empty() {
        return Ok(None);
    }
    let root = Path::new(dir);
    if !root.is_dir() {
        return Err(Error::Config(format!(
            "inbox.dir {} is not a directory",
            root.display()
        )));
    }
    Ok(Some(root))
}

/// The `*.csv` files in `feed`'s folder of the inbox, in name order (none
/// when the folder does not exist).
pub fn feed_files(settings: &Settings, root: &Path, feed: Feed) -> Result<Vec<PathBuf>> {
    let inbox = &settings.inbox;
    let sub = match feed {
        Feed::Permits => &inbox.permits,
        Feed::Residence => &inbox.residence,
        Feed::SocialInsurance => &inbox.social_insurance,
        Feed::CivilStatus => &inbox.civil_status,
    };
    let dir = root.join(sub);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(format!("cannot list inbox folder {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        })
        .collect();
    files.sort();
    Ok(files)
}
