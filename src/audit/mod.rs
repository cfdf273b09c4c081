//! Deterministic CSV exports for auditors (R9) and of the outbox: fixed
//! column order, stable row order, ID numbers masked unless asked, cells
//! that a spreadsheet would run as a formula neutralised, files written
//! atomically and owner-only.

use std::io::Write;
use std::path::Path;

use chrono::NaiveDate;

use crate::db::{AuditCells, Db, NotificationRow};
use crate::domain::{escape_controls, mask_id_str, mask_numbers_in_text, mask_text};
use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;
use crate::outbox::notice::Notices;

/// R9's leading columns, in order, then `state` (docs/rules.md, "The
/// audit trail"): `applied`;
/// `held` (its run is held by the safety brake: not applied, not notified);
/// `void` (its run was discarded); `not_applied` (its run was released but
/// the permit had changed since); `reverted` (its run was reverted and its
/// permit change undone; its notice shows `withdrawn`). The trail is
/// append-only: a correction is a new row, so a permit may show a void or
/// reverted event and a later applied one.
pub const AUDIT_COLUMNS: [&str; 18] = [
    "run_id",
    "as_of",
    "permit_no",
    "id_number",
    "decision",
    "reasons",
    "valid_until",
    "new_valid_until",
    "residence_visited_on",
    "residence_result",
    "si_month",
    "si_status",
    "si_employer_uscc",
    "marital_status",
    "notification_channel",
    "notification_status",
    "decided_at",
    "state",
];

pub const NOTIFICATION_COLUMNS: [&str; 14] = [
    "notification_id",
    "permit_no",
    "kind",
    "channel",
    "status",
    "attempts",
    "created_at",
    "sent_at",
    "message",
    "as_of",
    "cycle_valid_until",
    "next_attempt_at",
    "last_error",
    "provider_ref",
];

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// `None`: standard output.
    pub out: Option<std::path::PathBuf>,
    pub unmasked: bool,
    /// The notice templates, by which a masked notification export finds
    /// the holder's name in each message; `None`: masked messages are
    /// masked whole after two characters.
    pub notices: Option<Notices>,
}

/// R9: prefixes `'` to a cell a spreadsheet would evaluate (also the
/// full-width forms Excel accepts on Chinese Windows).
pub fn guard_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    const STARTS: [char; 10] = ['=', '+', '-', '@', '\t', '\r', '＝', '＋', '－', '＠'];
    match cell.chars().next() {
        Some(c) if STARTS.contains(&c) => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

fn notification_record(n: NotificationRow) -> [String; 14] {
    [
        n.notification_id.to_string(),
        n.permit_no,
        n.kind.code().to_string(),
        n.channel.code().to_string(),
        n.status.code().to_string(),
        n.attempts.to_string(),
        n.created_at,
        n.sent_at.unwrap_or_default(),
        n.message,
        n.as_of.to_string(),
        n.cycle_valid_until.to_string(),
        n.next_attempt_at.unwrap_or_default(),
        n.last_error.unwrap_or_default(),
        n.provider_ref.unwrap_or_default(),
    ]
}

/// Where an export writes: an atomic file, or standard output.
enum Sink {
    File(AtomicFile),
    Stdout(std::io::Stdout),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stdout(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout(s) => s.flush(),
        }
    }
}

fn open(out: Option<&Path>) -> Result<csv::Writer<std::io::BufWriter<Sink>>> {
    let sink = match out {
        Some(p) => Sink::File(AtomicFile::create(p)?),
        None => Sink::Stdout(std::io::stdout()),
    };
    Ok(csv::WriterBuilder::new().from_writer(std::io::BufWriter::with_capacity(1 << 20, sink)))
}

fn finish(w: csv::Writer<std::io::BufWriter<Sink>>, out: Option<&Path>) -> Result<()> {
    let shown = out
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "standard output".into());
    let buf = w
        .into_inner()
        .map_err(|e| Error::Runtime(anyhow::anyhow!("cannot write {shown}: {}", e.error())))?;
    let sink = buf
        .into_inner()
        .map_err(|e| Error::Runtime(anyhow::anyhow!("cannot write {shown}: {}", e.error())))?;
    match sink {
        // Every export file gets a SHA-256 sidecar, so a copy handed to an
        // auditor can be checked (docs/rules.md, "Export files").
        Sink::File(f) => f.commit_with_sidecar().map(drop),
        Sink::Stdout(mut s) => s
            .flush()
            .map_err(|e| Error::io(format!("cannot write {shown}"), e)),
    }
}

fn write_guarded<const N: usize, W: Write>(w: &mut csv::Writer<W>, rec: [String; N]) -> Result<()> {
    w.write_record(rec.iter().map(|c| guard_formula(c).into_owned()))
        .map_err(|e| Error::Runtime(anyhow::anyhow!("cannot write export: {e}")))
}

/// R9: `export audit`. Returns the number of rows written.
pub async fn export_audit(db: &Db, opts: &ExportOptions) -> Result<u64> {
    let mut w = AuditWriter::create(opts.out.as_deref(), opts.unmasked)?;
    db.audit_rows(opts.from, opts.to, &mut |cells| w.write(cells))
        .await?;
    w.finish()
}

/// R9 rows as `export audit` writes them, one at a time: the header, the
/// ID number masked unless `unmasked`, every cell formula-guarded; to a
/// file (atomically, with its SHA-256 sidecar) or to standard output.
/// `run --dry-run --audit` writes the rows a run would record with it, so
/// the two are the same bytes for the same rows.
pub struct AuditWriter {
    w: csv::Writer<std::io::BufWriter<Sink>>,
    out: Option<std::path::PathBuf>,
    unmasked: bool,
    rows: u64,
}

impl AuditWriter {
    /// Starts the CSV (`out` `None`: standard output) with its header.
    pub fn create(out: Option<&Path>, unmasked: bool) -> Result<Self> {
        let mut w = open(out)?;
        w.write_record(AUDIT_COLUMNS)
            .map_err(|e| Error::Runtime(e.into()))?;
        Ok(AuditWriter {
            w,
            out: out.map(Path::to_path_buf),
            unmasked,
            rows: 0,
        })
    }

    pub fn write(&mut self, cells: &AuditCells<'_>) -> Result<()> {
        self.rows += 1;
        let id = if self.unmasked {
            cells[3].into()
        } else {
            std::borrow::Cow::Owned(mask_id_str(cells[3]))
        };
        for (i, cell) in cells.iter().enumerate() {
            let cell: &str = if i == 3 { &id } else { cell };
            self.w
                .write_field(guard_formula(cell).as_bytes())
                .map_err(|e| Error::Runtime(anyhow::anyhow!("cannot write export: {e}")))?;
        }
        self.w
            .write_record(None::<&[u8]>)
            .map_err(|e| Error::Runtime(anyhow::anyhow!("cannot write export: {e}")))
    }

    /// Completes the file (and its sidecar); the number of rows written.
    pub fn finish(self) -> Result<u64> {
        finish(self.w, self.out.as_deref())?;
        Ok(self.rows)
    }
}

/// `export notifications`: one row per notice of runs in the range.
/// Unless `--unmasked`, the message shows the holder's family name only
/// (like `status`). `last_error` holds what a gateway or relay answered:
/// any mobile or ID number left in it (an error stored before such numbers
/// were masked at the source) is masked whether or not `--unmasked`.
pub async fn export_notifications(db: &Db, opts: &ExportOptions) -> Result<u64> {
    let mut w = open(opts.out.as_deref())?;
    w.write_record(NOTIFICATION_COLUMNS)
        .map_err(|e| Error::Runtime(e.into()))?;
    let mut n = 0u64;
    let (unmasked, notices) = (opts.unmasked, opts.notices.as_ref());
    db.notification_rows(opts.from, opts.to, &mut |mut row| {
        n += 1;
        if !unmasked {
            row.message = match notices {
                Some(t) => t.mask_name_in(row.kind, &row.message),
                None => mask_text(&row.message),
            };
        }
        row.last_error = row
            .last_error
            .map(|e| escape_controls(&mask_numbers_in_text(&e)).into_owned());
        write_guarded(&mut w, notification_record(row))
    })
    .await?;
    finish(w, opts.out.as_deref())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r9_formula_guard_prefixes_dangerous_cells_only() {
        for cell in ["=1+1", "+86", "-3", "@SUM(A1)", "\tx", "\rx", "＝1"] {
            assert_eq!(guard_formula(cell), format!("'{cell}"), "{cell:?}");
        }
        for cell in ["", "2026-11-27", "AUTO_SIGNED", "张三=1"] {
            assert_eq!(guard_formula(cell), cell, "{cell:?}");
        }
    }
}
