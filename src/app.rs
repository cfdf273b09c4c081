//! Dispatch of a parsed command line to the jobs, and the human-readable
//! reports they print. Every job is a plain `async fn` elsewhere (import,
//! run, export, status) that tests and the scheduler call too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::audit::{self, ExportOptions};
use crate::cli::{parse_date_arg, Cli, Command, ExportKind};
use crate::clock::Clock;
use crate::db::Db;
use crate::domain::{escape_controls_in_lines, Channel, EventKind};
use crate::error::{Error, Result};
use crate::feeds::{self, ImportOptions, ImportOutcome};
use crate::outbox::notice::Notices;
use crate::reconcile::{self, RunOutcome, RunSummary};
use crate::settings::Settings;

/// Runs one command; the caller maps the error to an exit status.
pub async fn execute(cli: Cli, mut settings: Settings) -> Result<()> {
    if let Some(url) = &cli.database_url {
        settings.database_url = url.clone();
    }
    // The command's one clock (src/clock.rs), in the configured zone: the
    // system clock, or where the command has the hidden `--now`, a clock
    // starting there. Every job below takes it; none reads the time
    // itself.
    let clock = match cli.command.now() {
        Some(t) => Clock::starting_at(parse_now(t)?, settings.tz()),
        None => Clock::system(settings.tz()),
    };
    match cli.command {
        Command::Import {
            feed,
            file,
            encoding,
            rejects,
        } => {
            // A device or a pipe (`/dev/zero`) would be read forever: a feed
            // is a regular file (exit 3, like any refused input). A missing
            // file stays an I/O error (exit 1).
            if let Some(why) = crate::fsutil::special_file(&file) {
                return Err(Error::InputRefused(format!("{}: {why}", file.display())));
            }
            if let Some(r) = &rejects {
                if same_file(r, &file) {
                    return Err(Error::Usage(format!(
                        "--rejects {} is the input file itself: the import would overwrite it",
                        r.display()
                    )));
                }
            }
            let db = Db::connect(&settings.effective_database_url()).await?;
            let _lock = db
                .lock_jobs(|| {
                    eprintln!("autosign: waiting for a run or import in progress to finish")
                })
                .await?;
            let rejects = rejects.unwrap_or_else(|| {
                feeds::rejects_path_in(&settings.data_dir.join("rejects"), feed, &file)
            });
            let opts = ImportOptions {
                encoding,
                rejects: Some(rejects),
                max_reject_ratio: settings.import.max_reject_ratio,
                batch_rows: settings.import.batch_rows,
                progress: true,
                headers: settings.header_names()?,
                delivery: settings.delivery(feed),
                clock,
            };
            let outcome = feeds::import_file(&db, feed, &file, &opts).await?;
            db.close().await;
            print!(
                "{}",
                escape_controls_in_lines(&import_line(feed.name(), &file, &outcome))
            );
            Ok(())
        }
        Command::Run {
            as_of,
            audit: audit_out,
            allow_future,
            dry_run,
            now: _,
        } => {
            let as_of = parse_date_arg(&as_of, "--as-of", clock)?;
            let today = clock.today();
            if let Some(latest) = reconcile::rules::beyond_future_allowance(
                as_of,
                today,
                settings.run.future_allowance_days,
            ) {
                if !allow_future {
                    return Err(Error::Refused(format!(
                        "--as-of {as_of} is after today, {today} ({}), by more than \
                         run.future_allowance_days ({}; latest date allowed {latest}): \
                         refused so that a mistyped date cannot lapse the register (C17); \
                         give --allow-future for a rehearsal that replays a later date",
                        settings.timezone, settings.run.future_allowance_days
                    )));
                }
                tracing::warn!(%as_of, %today, "running a date from the future (--allow-future)");
            }
            let notices = Notices::from_settings(&settings)?;
            let db = Db::connect(&settings.effective_database_url()).await?;
            if dry_run {
                let outcome = reconcile::dry_run::dry_run(
                    &db,
                    &settings,
                    &notices,
                    clock,
                    as_of,
                    audit_out.as_deref(),
                )
                .await?;
                print!(
                    "{}",
                    escape_controls_in_lines(&reconcile::dry_run::report(&outcome))
                );
                return Ok(());
            }
            let outcome = reconcile::run(&db, &settings, &notices, clock, as_of).await?;
            match &outcome {
                RunOutcome::AlreadyCompleted(r) => println!(
                    "as_of {as_of} was already completed by run {} at {}; nothing to do (C8)",
                    r.run_id,
                    r.finished_at.as_deref().unwrap_or("?")
                ),
                RunOutcome::Completed(summary) | RunOutcome::Held(summary) => {
                    print!("{}", escape_controls_in_lines(&run_report(summary)))
                }
            }
            // The outbox by status (sent, failed, dead… from earlier
            // deliveries): what `autosign deliver` has left to do.
            if let Ok(counts) = db.outbox_counts().await {
                print!("{}", crate::outbox::delivery::outbox_line(&counts));
            }
            if let Some(path) = audit_out {
                let opts = ExportOptions {
                    from: as_of,
                    to: as_of,
                    out: Some(path.clone()),
                    unmasked: false,
                    notices: None,
                };
                let n = audit::export_audit(&db, &opts).await?;
                println!(
                    "audit: {n} rows for {as_of} written to {} (SHA-256 in {})",
                    path.display(),
                    crate::fsutil::sidecar_path(&path).display()
                );
            }
            db.close().await;
            match &outcome {
                // Exit 4 with the alert (docs/rules.md, "Exit status 4").
                RunOutcome::Held(summary) => Err(Error::Held(crate::brake::alert(&summary.run))),
                _ => Ok(()),
            }
        }
        Command::Release { run_id } => {
            let notices = Notices::from_settings(&settings)?;
            let db = Db::connect(&settings.effective_database_url()).await?;
            let outcome = crate::brake::release(&db, &notices, clock, run_id).await?;
            db.close().await;
            print!("{}", crate::brake::release_report(&outcome));
            Ok(())
        }
        Command::Discard { run_id } => {
            let db = Db::connect(&settings.effective_database_url()).await?;
            let run = crate::brake::discard(&db, clock, run_id).await?;
            db.close().await;
            println!(
                "run {} for {} discarded: its events stay in the audit trail marked void; nothing \
                 was applied or notified. Once the feed is fixed, `autosign run --as-of {}` \
                 decides those permits afresh.",
                run.run_id, run.as_of, run.as_of
            );
            Ok(())
        }
        Command::Revert { run_id } => {
            let db = Db::connect(&settings.effective_database_url()).await?;
            let outcome = crate::brake::revert(&db, clock, run_id).await?;
            db.close().await;
            print!(
                "{}",
                escape_controls_in_lines(&crate::brake::revert_report(&outcome))
            );
            Ok(())
        }
        Command::Deliver { now: _ } => {
            // Bad channel configuration fails here, before any database work.
            let channels = crate::outbox::Channels::from_settings(&settings)?;
            let db = Db::connect(&settings.effective_database_url()).await?;
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            // Ctrl-C / SIGTERM: finish the sends in flight, release the rest.
            tokio::spawn(async move {
                if wait_for_stop_signal().await {
                    eprintln!("autosign: stopping after the sends in flight");
                    let _ = stop_tx.send(true);
                }
            });
            let outcome = crate::outbox::deliver(&db, &settings, &channels, clock, &stop).await;
            channels.shutdown().await;
            print!("{}", crate::outbox::delivery::report(&outcome?));
            Ok(())
        }
        Command::Daemon { now: _, check } => {
            let opts = crate::daemon::DaemonOptions { clock, check };
            if check {
                print!("{}", crate::daemon::check(&settings, &opts).await?);
                return Ok(());
            }
            crate::daemon::serve(settings, opts).await
        }
        Command::Export {
            what,
            from,
            to,
            out,
            unmasked,
        } => {
            let from = parse_date_arg(&from, "--from", clock)?;
            let to = parse_date_arg(&to, "--to", clock)?;
            if from > to {
                return Err(Error::Usage(format!("--from {from} is after --to {to}")));
            }
            let out = (out != "-").then(|| PathBuf::from(&out));
            let db = Db::connect(&settings.effective_database_url()).await?;
            let notices = match what {
                ExportKind::Notifications if !unmasked => Some(Notices::from_settings(&settings)?),
                _ => None,
            };
            let opts = ExportOptions {
                from,
                to,
                out: out.clone(),
                unmasked,
                notices,
            };
            let n = match what {
                ExportKind::Audit => audit::export_audit(&db, &opts).await?,
                ExportKind::Notifications => audit::export_notifications(&db, &opts).await?,
            };
            if let Some(out) = out {
                eprintln!(
                    "autosign: {n} rows written to {} (SHA-256 in {})",
                    out.display(),
                    crate::fsutil::sidecar_path(&out).display()
                );
            }
            Ok(())
        }
        Command::Requeue(args) => crate::requeue::command(&settings, clock, &args).await,
        Command::Purge { dry_run, now: _ } => {
            let db = Db::connect(&settings.effective_database_url()).await?;
            let report = crate::purge::purge(&db, &settings, clock, dry_run).await?;
            db.close().await;
            print!("{}", crate::purge::render(&report));
            Ok(())
        }
        Command::Report { from, to, out } => {
            let from = parse_date_arg(&from, "--from", clock)?;
            let to = parse_date_arg(&to, "--to", clock)?;
            if from > to {
                return Err(Error::Usage(format!("--from {from} is after --to {to}")));
            }
            let language = settings.report.language;
            let dest = if out == "-" {
                crate::report::Destination::Stdout
            } else {
                crate::report::Destination::File(PathBuf::from(&out))
            };
            let notices = Notices::from_settings(&settings)?;
            let db = Db::connect(&settings.effective_database_url()).await?;
            let req = crate::report::ReportRequest { from, to, language };
            let report = crate::report::write(&db, &settings, &notices, clock, req, &dest).await?;
            if let crate::report::Destination::File(path) = &dest {
                eprintln!(
                    "autosign: report for {} ({} nights with a run, {} to {}) written to {}",
                    report.last.run.as_of,
                    report.nights.len(),
                    from,
                    to,
                    path.display()
                );
            }
            Ok(())
        }
        Command::Status { permit_no, json } => {
            let db = Db::connect(&settings.effective_database_url()).await?;
            let report = crate::status::status(&db, &settings, &permit_no).await?;
            if json {
                let text =
                    serde_json::to_string_pretty(&report).map_err(|e| Error::Runtime(e.into()))?;
                println!("{text}");
            } else {
                print!("{}", crate::status::render(&report));
            }
            Ok(())
        }
        Command::Explain {
            permit_no,
            as_of,
            json,
        } => {
            let permit_no = crate::explain::parse_permit_no(&permit_no)?;
            let as_of = match as_of {
                Some(a) => parse_date_arg(&a, "--as-of", clock)?,
                None => clock.today(),
            };
            let notices = Notices::from_settings(&settings)?;
            let db = Db::connect(&settings.effective_database_url()).await?;
            let x =
                crate::explain::explain(&db, &settings, &notices, clock, &permit_no, as_of).await?;
            if json {
                let text =
                    serde_json::to_string_pretty(&x).map_err(|e| Error::Runtime(e.into()))?;
                println!("{text}");
            } else {
                print!("{}", crate::explain::render(&x));
            }
            Ok(())
        }
    }
}

/// Whether `a` and `b` name the same existing file (through links or
/// relative paths alike).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A hidden `--now` value: an RFC 3339 instant.
fn parse_now(t: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| Error::Usage(format!("--now {t:?}: not an RFC 3339 timestamp ({e})")))
}

/// Resolves on SIGINT or SIGTERM (true), or never on a platform without
/// them.
async fn wait_for_stop_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

pub fn import_line(feed: &str, file: &std::path::Path, outcome: &ImportOutcome) -> String {
    match outcome {
        ImportOutcome::AlreadyImported(r) => format!(
            "{feed} {}: already imported (import {} at {}); nothing to do\n",
            file.display(),
            r.import_id,
            r.imported_at
        ),
        ImportOutcome::Imported(r) => {
            let mut s = format!(
                "{feed} {}: {} rows read, {} imported, {} rejected",
                file.display(),
                r.counts.rows_read,
                r.counts.rows_imported,
                r.counts.rows_rejected
            );
            if r.warnings > 0 {
                let _ = write!(s, ", {} warnings", r.warnings);
            }
            if let Some(p) = &r.rejects {
                let _ = write!(s, " (rejects: {})", p.display());
            }
            s.push('\n');
            s
        }
    }
}

/// The run summary: counts per outcome, per reason and per channel.
pub fn run_report(s: &RunSummary) -> String {
    let mut out = String::new();
    for (file, outcome) in &s.inbox {
        out.push_str("inbox ");
        out.push_str(import_line("", file, outcome).trim_start());
    }
    let _ = writeln!(
        out,
        "run {} for as_of {}: {}{}",
        s.run.run_id,
        s.run.as_of,
        if s.run.brake.is_some() {
            "HELD by the safety brake (recorded; nothing applied, no notice queued)"
        } else {
            "completed"
        },
        if s.run.attempts > 1 {
            format!(" (resumed, attempt {})", s.run.attempts)
        } else {
            String::new()
        }
    );
    let mut by_kind: BTreeMap<EventKind, i64> = BTreeMap::new();
    let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_channel: BTreeMap<Option<Channel>, i64> = BTreeMap::new();
    for c in &s.counts {
        *by_kind.entry(c.kind).or_default() += c.count;
        *by_channel.entry(c.channel).or_default() += c.count;
        for r in c.reasons.iter() {
            *by_reason.entry(format!("{}/{r}", c.kind)).or_default() += c.count;
        }
    }
    let _ = writeln!(out, "  decisions and lifecycle changes:");
    for kind in EventKind::ALL {
        // The code as a `&str`: the enumeration's `Display` does not pad.
        let _ = writeln!(
            out,
            "    {:<14} {:>9}",
            kind.code(),
            by_kind.get(&kind).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "    {:<14} {:>9}   (no decision yet: evidence missing, deadline not reached)",
        "PENDING", s.planned.pending
    );
    if !by_reason.is_empty() || !s.planned.pending_reasons.is_empty() {
        let _ = writeln!(out, "  reasons:");
        for (k, n) in &by_reason {
            let _ = writeln!(out, "    {k:<45} {n:>9}");
        }
        for (r, n) in &s.planned.pending_reasons {
            let _ = writeln!(out, "    {:<45} {n:>9}", format!("PENDING/{}", r.code()));
        }
    }
    if s.run.brake.is_some() {
        let _ = writeln!(out, "  notices queued: none while the run is held");
        return out;
    }
    let _ = writeln!(out, "  notices queued:");
    for (ch, label) in [
        (Channel::Sms, "sms"),
        (Channel::Email, "email"),
        (Channel::None, "undeliverable"),
    ] {
        let _ = writeln!(
            out,
            "    {label:<14} {:>9}",
            by_channel.get(&Some(ch)).copied().unwrap_or(0)
        );
    }
    out
}
