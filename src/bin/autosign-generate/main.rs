//! `autosign-generate`: a consistent synthetic data set for the sample data,
//! the tests and the benchmarks. A binary of its own so that the production
//! `autosign` binary and library carry no generator: an operator's
//! installation has nothing that writes made-up holders.

mod generate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use generate::{GenerateOptions, Layout};

/// autosign-generate — write a consistent synthetic data set (the four
/// feeds of docs/rules.md, real Shanghai streets), deterministic by seed,
/// laid out as an inbox for `autosign run`.
///
/// Laid out as real exports arrive: permit numbers in no order, every
/// feed's rows shuffled (--sorted for sequential numbers in order). The
/// first permits are fixed scenarios with a known outcome at --as-of.
///
/// Exit status: 0 written; 1 the data set cannot be made (too many
/// permits, a date out of range) or written; 2 a bad argument.
#[derive(Debug, Parser)]
#[command(name = "autosign-generate", version, max_term_width = 100)]
struct Args {
    /// Number of permits.
    #[arg(long, default_value_t = 300)]
    permits: usize,
    /// Seed of the random generator: the same seed writes the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The date the data set is built around (YYYY-MM-DD): the run date
    /// its fixed scenarios are decided for.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    as_of: chrono::NaiveDate,
    /// Output folder (gets permits/, residence/, social_insurance/,
    /// civil_status/ — an inbox).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number permits SH0000000001, SH0000000002, … and write each holder's
    /// rows together in that order, instead of the realistic shuffled
    /// layout. The same rows either way, permit numbers aside.
    #[arg(long)]
    sorted: bool,
    /// Write nothing; print the fixed scenario permits of this data set as
    /// CSV (permit_no, expected outcome at --as-of under the default
    /// settings, reasons, channel, description): what a tester checks a
    /// run against.
    #[arg(long)]
    list_scenarios: bool,
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    autosign::domain::parse_date(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (help and version: 0).
    let args = Args::parse();
    let opts = GenerateOptions {
        permits: args.permits,
        seed: args.seed,
        as_of: args.as_of,
        layout: if args.sorted {
            Layout::Sorted
        } else {
            Layout::Shuffled
        },
    };
    if args.list_scenarios {
        return match print_scenarios(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("autosign-generate: error: cannot write the scenarios: {e}");
                ExitCode::from(1)
            }
        };
    }
    match generate::generate(&opts, &args.out) {
        Ok(s) => {
            println!(
                "wrote {} permits, {} residence visits, {} social-insurance rows, {} civil-status rows to {} \
                 (the first {} permits are fixed scenarios: --list-scenarios)",
                s.permits,
                s.residence,
                s.social_insurance,
                s.civil_status,
                args.out.display(),
                generate::SCENARIO_COUNT.min(s.permits),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "autosign-generate: error: {}",
                autosign::domain::escape_controls(&format!("{e:#}"))
            );
            ExitCode::from(1)
        }
    }
}

fn print_scenarios(opts: &GenerateOptions) -> std::io::Result<()> {
    use generate::ScenarioOutcome;
    let join = |reasons: &[autosign::domain::Reason]| {
        reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";")
    };
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(["permit_no", "expected", "reasons", "channel", "description"])?;
    for s in generate::scenarios(opts) {
        let (expected, reasons) = match s.outcome {
            ScenarioOutcome::Event(kind, reasons) => (kind.to_string(), join(reasons)),
            ScenarioOutcome::Pending(reasons) => ("PENDING".to_string(), join(reasons)),
            ScenarioOutcome::Nothing => ("NOTHING".to_string(), String::new()),
        };
        let channel = s.channel.to_string();
        out.write_record([&s.permit_no, &expected, &reasons, &channel, s.description])?;
    }
    out.flush()
}
