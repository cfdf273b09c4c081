//! Logging: tracing to stderr, human-readable on a terminal, JSON lines
//! otherwise (or as configured). Spans carry the run id and feed; personal
//! data is never logged in clear (domain types mask their `Debug`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogSettings;

pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match log.format.as_str() {
        "json" => true,
        "human" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_target(false).compact().try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
