//! The command line (R11): clap's raw arguments, then the typed values the
//! jobs take (dates resolved in the configured zone, paths checked).

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};

use crate::clock::Clock;
use crate::error::Error;
use crate::feeds::{Encoding, Feed};

/// autosign — nightly automatic endorsement (自动签注) of Shanghai residence
/// permits.
///
/// Loads the permit register and three feeds (residence verification visits,
/// social-insurance payments, civil status) from CSV, decides each permit
/// whose endorsement period ends within the window (AUTO_SIGNED or
/// VISIT_CENTER), queues one notice per decision in the same transaction, and
/// exports CSV for auditors.
///
/// Exit status: 0 success (also a no-op re-import or re-run); 1 runtime
/// failure (database unreachable, I/O error); 2 usage or configuration error,
/// or a refused operation (e.g. a run while another is held); 3 input file
/// refused (missing column, undecodable, too many rejected rows); 4 run held
/// by the safety brake (decisions recorded, nothing applied or notified:
/// `autosign release RUN_ID` or `autosign discard RUN_ID`).
///
/// The rules: docs/rules.md (R1–R11, C1–C17, and the project's choices);
/// how the code is laid out: docs/architecture.md.
#[derive(Debug, Parser)]
#[command(name = "autosign", version, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (TOML). Without it the documented defaults of
    /// config/autosign.toml apply; AUTOSIGN_* variables override either.
    #[arg(long, global = true, env = "AUTOSIGN_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Database: sqlite://PATH (created if missing) or postgres://… .
    /// Default: an SQLite file under the data directory.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import one feed file (R1, R2). Rows that fail validation go to the
    /// rejects file; the whole file is refused (exit 3, nothing imported) if
    /// a required column is missing, it cannot be decoded, or more than
    /// import.max_reject_ratio of its rows are rejected. Re-importing the
    /// same content is a no-op.
    Import {
        /// Which feed the file holds.
        #[arg(value_parser = feed_parser())]
        feed: Feed,
        /// The CSV file.
        file: PathBuf,
        /// Character encoding of the file (gb18030 also covers GBK).
        #[arg(long, value_parser = encoding_parser(), default_value = "utf-8")]
        encoding: Encoding,
        /// Where to write rejected rows (CSV: line,reason,original fields).
        /// Default: <data_dir>/rejects/<feed>/<file name>.rejects.csv
        #[arg(long, value_name = "PATH")]
        rejects: Option<PathBuf>,
    },
    /// The nightly run for one date (R2a, R3–R8): import new inbox files,
    /// then lifecycle, window, evidence, decision and notices. Running a
    /// completed date again does nothing; a date earlier than the last
    /// completed run is refused (exit 2), and so is any run while another
    /// is held. A date more than run.future_allowance_days after today is
    /// refused (exit 2, C17) unless --allow-future is given. If the safety
    /// brake trips ([brake]: a stale feed, a sharp
    /// drop in a snapshot feed's rows, too many VISIT_CENTER, more than a
    /// quarter of the register lapsing at once), the run is recorded
    /// as held — nothing applied, no notice queued — and exits 4 with an
    /// alert.
    Run {
        /// Business date: YYYY-MM-DD, "today" or "yesterday" (in the
        /// configured time zone).
        #[arg(long, value_name = "DATE")]
        as_of: String,
        /// Also write this date's audit CSV (as `export audit`) here.
        #[arg(long, value_name = "PATH")]
        audit: Option<PathBuf>,
        /// Accept an --as-of later than today plus
        /// run.future_allowance_days (C17): for rehearsals and tests that
        /// replay later dates on a copy of the register, never for the
        /// production database.
        #[arg(long)]
        allow_future: bool,
        /// Show what the run would do, writing nothing: the summary (as a
        /// real run prints it), what the safety brake would say, and with
        /// --audit the audit rows it would write. No run row, event,
        /// notice or permit change; inbox files are not imported (they are
        /// listed, and the plan is on what is already imported). The same
        /// refusals as a run (C17, an earlier date than the last completed
        /// run, a held run: exit 2; a completed date: nothing to do). Takes
        /// the job lock while it reads, like a run.
        #[arg(long)]
        dry_run: bool,
        /// Run as if the clock read this instant (RFC 3339), advancing in
        /// real time from there: "today", the brake's feed ages and every
        /// timestamp the run writes (its events, its notices, its inbox
        /// imports) follow it. For tests and rehearsals of whole nights,
        /// with `deliver --now`.
        #[arg(long, value_name = "RFC3339", hide = true)]
        now: Option<String>,
    },
    /// Send queued notices (R8): SMS through the HTTP gateway ([sms]),
    /// e-mail through the SMTP relay ([email]). Claims due notices in
    /// batches, sends each once, and records it as sent, failed (retried
    /// later with backoff) or dead (permanent error or max_attempts
    /// reached). No SMS during quiet hours. Exit 0 when the step ran, even
    /// if some notices failed (the summary says how many); 1 on a database
    /// failure; 2 on bad [sms]/[email] configuration.
    Deliver {
        /// Run as if the clock read this instant (RFC 3339), advancing in
        /// real time from there: for tests and rehearsals of quiet hours
        /// and retries.
        #[arg(long, value_name = "RFC3339", hide = true)]
        now: Option<String>,
    },
    /// Export CSV for auditors (R9) or of the notification outbox.
    Export {
        #[arg(value_enum)]
        what: ExportKind,
        /// First run date included (as_of), YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        from: String,
        /// Last run date included (as_of), YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        to: String,
        /// Output file, or - for standard output.
        #[arg(long, value_name = "PATH")]
        out: String,
        /// Show full ID numbers instead of 310115********1234.
        #[arg(long)]
        unmasked: bool,
    },
    /// Apply a run held by the safety brake: its permit changes and
    /// notices, exactly as the run would have made them. An event whose
    /// permit changed since the run is not applied (listed). Exit 2 if the
    /// run is not held.
    Release {
        /// The held run's id (in the alert and `export audit`).
        run_id: i64,
    },
    /// Void a run held by the safety brake: its events stay in the audit
    /// trail marked void, nothing is applied or notified, and its date may
    /// be run again (once the feed is fixed). Exit 2 if the run is not held.
    Discard {
        /// The held run's id.
        run_id: i64,
    },
    /// Undo a completed run whose notices have not gone out, e.g. a run
    /// for a wrong date given --allow-future (docs/operations.md, "After a
    /// wrong date"). Its permit changes are set back (a permit changed
    /// since the run is left as it is, and listed), its queued notices are
    /// withdrawn (kept, status withdrawn), and the run is marked reverted:
    /// its events stay in the audit trail with state reverted and its date
    /// may run again. One transaction; takes the job lock. Stop the
    /// delivery worker first. Exit 2, nothing changed, for an unknown run,
    /// a run that is not completed, a run that is not the latest (revert
    /// later runs first), or a run with any notice already sent (naming how
    /// many).
    Revert {
        /// The completed run's id (in the run's summary and `export
        /// audit`).
        run_id: i64,
    },
    /// Write the nightly report: one self-contained HTML page (inline CSS
    /// and SVG charts, no script, nothing fetched; prints on A4) for the
    /// last night of the range that has a run — the --to date's, or the
    /// latest before it — against the other nights of the range: outcome
    /// counts (AUTO_SIGNED, VISIT_CENTER, PENDING, SUSPENDED, CANCELLED),
    /// VISIT_CENTER by reason, district and street, PENDING by days left,
    /// delivery by channel and status with the time from queued to sent,
    /// the night's imports with rejects by reason and feed ages, and the
    /// safety brake. Counts only: no personal data. Language:
    /// report.language (zh-CN or en). The daemon writes one after each run
    /// under <data_dir>/reports/. Exit 2 for a bad date, --from after
    /// --to, or a range with no completed or held run; 1 if --out cannot
    /// be written.
    Report {
        /// First night of the range (as_of), YYYY-MM-DD, today or
        /// yesterday.
        #[arg(long, value_name = "DATE")]
        from: String,
        /// Last night of the range (as_of): the night reported, if it has
        /// a run.
        #[arg(long, value_name = "DATE")]
        to: String,
        /// The HTML file to write (replaced atomically), or - for standard
        /// output.
        #[arg(long, value_name = "PATH")]
        out: String,
    },
    /// A permit's state, current cycle, latest decision and notices (R10).
    Status {
        permit_no: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Why a permit got what it got, rule by rule: lifecycle (R3) and
    /// window (R4) with the dates that decided them, each piece of
    /// evidence (R5) with the file, line and import it came from, the
    /// decision and its deadline (R6), the new valid_until (R7), the
    /// notice and its delivery (R8). For a date whose run recorded an event
    /// for the permit, from what that run recorded; otherwise a what-if
    /// computed now with the same rules on the data as stored, labelled as
    /// such, that writes nothing and takes no lock. Masked like status.
    /// Exit 2 for an unknown or malformed permit number or a bad date.
    Explain {
        /// The permit number (permit_no in the register).
        permit_no: String,
        /// Business date: YYYY-MM-DD, "today" or "yesterday" (in the
        /// configured time zone). Default: today.
        #[arg(long, value_name = "DATE")]
        as_of: Option<String>,
        /// Machine-readable output (stable field names).
        #[arg(long)]
        json: bool,
    },
    /// Run as a service: the nightly run on daemon.schedule (02:00 daily by
    /// default, in the configured time zone), catching up dates missed
    /// while it was down (up to daemon.max_catch_up_days), the delivery
    /// worker beside it, and /healthz, /readyz and /metrics on
    /// daemon.health_addr. SIGTERM or SIGINT stops it gracefully (exit 0
    /// within daemon.shutdown_grace_secs); a second signal stops it at once.
    /// Exit 2 on a bad schedule, address or channel configuration.
    Daemon {
        /// Run as if the clock read this instant at start-up (RFC 3339),
        /// advancing in real time: for tests and rehearsals of catch-up.
        #[arg(long, value_name = "RFC3339", hide = true)]
        now: Option<String>,
        /// Check the configuration and the database, print what a start
        /// now would run (catch-up included), and exit: 0 if the daemon
        /// would start, 2 on a configuration error, 1 if the database is
        /// unreachable.
        #[arg(long)]
        check: bool,
    },
    /// Remove personal data past [retention] (docs/rules.md#retention): residence
    /// visits and social-insurance months older than retention.feed_days,
    /// civil-status rows replaced by a later row, rejects files of that
    /// age, and the text and recipient of finished notices older than
    /// retention.notice_days. Decisions and the audit trail are kept. One
    /// transaction; takes the job lock.
    Purge {
        /// Count what would be removed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Purge as if the clock read this instant (RFC 3339): for tests
        /// and rehearsals.
        #[arg(long, value_name = "RFC3339", hide = true)]
        now: Option<String>,
    },
    /// Queue dead or failed notices again, e.g. after an SMS gateway or
    /// SMTP relay outage (docs/operations.md, "After a gateway outage").
    /// Select by --run, --from/--to (the run's as_of, as `export
    /// notifications`), --channel, --notice (repeatable), or --all; at
    /// least one is required. Prints how many notices, by channel and
    /// status, before it changes anything; --dry-run stops there, otherwise
    /// --reason is required and is kept, with the time and the OS user, in
    /// the notice_requeues trail (`status` shows it). Requeued notices keep
    /// their idempotency keys, get their attempts reset and are due at
    /// once: `autosign deliver` (or the daemon's worker) sends them. A
    /// sent, withdrawn, undeliverable or purged notice, or one of a run
    /// that is not completed, is never requeued. One transaction; takes
    /// the job lock. Exit 2, nothing changed, for no selector, no reason,
    /// an unknown run or notice id, a run that is not completed, or a
    /// named notice that cannot be requeued.
    Requeue(crate::requeue::RequeueArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportKind {
    Audit,
    Notifications,
}

impl Command {
    /// The hidden `--now` of the commands that have one: the instant the
    /// command's clock starts from.
    pub fn now(&self) -> Option<&str> {
        match self {
            Command::Run { now, .. }
            | Command::Deliver { now }
            | Command::Daemon { now, .. }
            | Command::Purge { now, .. } => now.as_deref(),
            _ => None,
        }
    }
}

/// A feed by its name (`permits`, `residence`, `social-insurance`,
/// `civil-status`), listed in `--help` and in the usage error.
fn feed_parser() -> impl clap::builder::TypedValueParser<Value = Feed> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Feed::ALL.map(Feed::name))
        .try_map(|name| name.parse::<Feed>())
}

/// `utf-8` (alias `utf8`) or `gb18030` (alias `gbk`, which it covers).
fn encoding_parser() -> impl clap::builder::TypedValueParser<Value = Encoding> {
    use clap::builder::{PossibleValue, TypedValueParser as _};
    clap::builder::PossibleValuesParser::new([
        PossibleValue::new("utf-8").alias("utf8"),
        PossibleValue::new("gb18030").alias("gbk"),
    ])
    .try_map(|name| name.parse::<Encoding>())
}

/// A date argument: a date in one of R1's forms, or `today` /
/// `yesterday` by `clock` (in its zone).
pub fn parse_date_arg(arg: &str, what: &str, clock: Clock) -> Result<NaiveDate, Error> {
    let today = clock.today();
    match arg.trim() {
        "today" => Ok(today),
        "yesterday" => today
            .pred_opt()
            .ok_or_else(|| Error::Usage(format!("{what}: no date before {today}"))),
        s => crate::domain::parse_date(s).map_err(|e| Error::Usage(format!("{what} {s:?}: {e}"))),
    }
}
