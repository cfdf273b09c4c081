//! Integration tests: one binary, driving the real `autosign` executable
//! against a real database per test. Test names cite the rule they check
//! (docs/rules.md: R1–R11, C1–C17).

mod helpers;

mod bad_input;
mod brake;
mod brake_delta;
mod cli;
mod clock;
mod concurrency;
mod crash;
mod daemon;
mod daemon_purge;
mod deliver;
mod dry_run;
mod explain;
mod hostile;
mod import;
mod monitoring;
mod ops;
mod packaging;
mod postgres;
mod report;
mod requeue;
mod run;
mod wrong_date;
