//! autosign — the nightly automatic endorsement (自动签注) of Shanghai
//! residence permits. The contract is docs/rules.md (rules R1–R11,
//! clarifications C1–C17 and the choices made where they are silent); how
//! the modules below fit together, and how a night flows through them, is
//! docs/architecture.md. Modules are cut by capability:
//!
//! - [`domain`]: value types parsed once at the edge (ID numbers, USCC, …)
//! - [`feeds`]: CSV import of the register and the three feeds (R1, R2)
//! - [`inbox`]: the inbox a run imports first (R2a)
//! - [`reconcile`]: the nightly run (R3–R8), rules as pure functions
//! - [`outbox`]: notice texts and the outbox
//! - [`audit`]: CSV exports (R9); [`status`]: one permit's story (R10)
//! - [`db`]: every SQL statement, behind one `Db` type
//! - [`daemon`]: the schedule, catch-up, delivery worker, health and metrics

pub mod app;
pub mod audit;
pub mod brake;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod db;
pub mod domain;
pub mod error;
pub mod explain;
pub mod faults;
pub mod feeds;
pub mod fsutil;
pub mod inbox;
pub mod outbox;
pub mod purge;
pub mod reconcile;
pub mod report;
pub mod requeue;
pub mod schedule;
pub mod settings;
pub mod status;
pub mod telemetry;

pub use error::{Error, Result};
