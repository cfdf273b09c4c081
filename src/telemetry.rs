//! Logging: tracing to stderr, human-readable on a terminal, JSON lines
//! otherwise (or as configured). Spans carry the run id and feed; personal
//! data is never logged in clear (domain types mask their `Debug`).
//!
//! The human format escapes control characters in every field value and
//! message (a file name or permit number from a feed could otherwise move
//! the cursor or clear an operator's screen); JSON escapes them already.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Installs the subscriber. `log.level` was checked when the settings
/// loaded; a filter that still does not build is a configuration error.
pub fn init(log: &LogSettings) -> Result<(), crate::Error> {
    let filter = EnvFilter::try_new(log.level.as_str())
        .map_err(|e| crate::Error::Config(format!("configuration key log.level: {e}")))?;
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
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
        builder
            .with_target(false)
            .compact()
            .fmt_fields(EscapedFields)
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Ok(())
}

/// The human format's fields, as tracing's default formats them (`name=value`
/// separated by spaces, the message bare, strings quoted) but with control
/// characters escaped.
struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl EscapingVisitor<'_, '_> {
    fn write(&mut self, field: &Field, text: &str) {
        // Log records bridged from the `log` crate carry their metadata as
        // `log.*` fields, which the line shows already.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let text = crate::domain::escape_controls(text);
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{text}")
        } else {
            write!(self.writer, "{sep}{}={text}", field.name())
        };
    }
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}
