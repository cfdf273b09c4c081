//! Logging: tracing to stderr, human-readable on a terminal, JSON lines
//! otherwise (or as configured). Spans carry the run id and feed; personal
//! data is never logged in clear (domain types mask their `Debug`).
//!
//! The human format escapes control characters in every field value and
//! message (a file name or permit number from a feed could otherwise move
//! the cursor or clear an operator's screen); JSON escapes them already.

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
        use tracing_subscriber::field::MakeExt;
        let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
            let text = format!("{value:?}");
            let text = crate::domain::escape_controls(&text);
            if field.name() == "message" {
                w.write_str(&text)
            } else {
                write!(w, "{field}={text}")
            }
        })
        .delimited(" ");
        builder
            .with_target(false)
            .compact()
            .fmt_fields(fields)
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
