//! `COPY … FROM STDIN`, the way PostgreSQL takes rows in bulk: the data
//! in either of its two formats, and the sending.
//!
//! The imports write text ([`CopyText`]): their rows are mostly text
//! already, and a staging table takes whatever its columns parse. A run's
//! pages write the binary format ([`CopyBinary`]): the server copies each
//! value as it comes instead of parsing it, and a page's events and
//! notices, whose messages are the longest values a night writes, went
//! in measurably faster than as text or as `UNNEST` arrays (docs/
//! benchmarks-postgres.md). Binary values must match the column's type
//! exactly; each writer names its columns in its `COPY` statement, beside
//! the values it writes.

use chrono::{Datelike, NaiveDate};
use sqlx::PgConnection;

use crate::error::Result;

/// Sends `data`, one whole COPY's rows in `statement`'s format, on `conn`
/// (inside whatever transaction it has open). If sending fails, the COPY is
/// aborted so that the connection is left usable for the rollback.
pub(super) async fn copy_in(conn: &mut PgConnection, statement: &str, data: Vec<u8>) -> Result<()> {
    let mut copy = conn.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(data).await {
        let _ = copy.abort("autosign: sending the rows failed").await;
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

/// COPY's text format: one line per row, tab-separated, `\N` for NULL,
/// backslash escapes for the characters that would break the framing.
pub(super) struct CopyText {
    buf: Vec<u8>,
    fresh_row: bool,
}

impl CopyText {
    pub(super) fn with_capacity(n: usize) -> Self {
        CopyText {
            buf: Vec::with_capacity(n),
            fresh_row: true,
        }
    }

    fn sep(&mut self) {
        if !self.fresh_row {
            self.buf.push(b'\t');
        }
        self.fresh_row = false;
    }

    pub(super) fn text(&mut self, s: &str) -> &mut Self {
        self.sep();
        for &b in s.as_bytes() {
            match b {
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                b'\t' => self.buf.extend_from_slice(b"\\t"),
                b'\n' => self.buf.extend_from_slice(b"\\n"),
                b'\r' => self.buf.extend_from_slice(b"\\r"),
                _ => self.buf.push(b),
            }
        }
        self
    }

    pub(super) fn opt_text(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => {
                self.sep();
                self.buf.extend_from_slice(b"\\N");
                self
            }
        }
    }

    pub(super) fn date(&mut self, d: NaiveDate) -> &mut Self {
        self.sep();
        use std::io::Write;
        let _ = write!(self.buf, "{d}");
        self
    }

    pub(super) fn opt_date(&mut self, d: Option<NaiveDate>) -> &mut Self {
        match d {
            Some(d) => self.date(d),
            None => self.opt_text(None),
        }
    }

    pub(super) fn int(&mut self, v: i64) -> &mut Self {
        self.sep();
        use std::io::Write;
        let _ = write!(self.buf, "{v}");
        self
    }

    pub(super) fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.fresh_row = true;
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// COPY's binary format (`FORMAT binary`): a signature and two empty
/// header fields, then per row its field count and per field its length
/// in bytes (−1 for NULL) and its value in the type's binary form,
/// big-endian; a field count of −1 ends the data.
pub(super) struct CopyBinary {
    buf: Vec<u8>,
}

/// The binary format's signature, then its flags and header extension
/// length, both zero.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// A `date` is sent as its day count from 2000-01-01, the day that is
/// this many days from the start of the common era.
const DAYS_FROM_CE_TO_2000: i32 = 730_120;

impl CopyBinary {
    pub(super) fn with_capacity(n: usize) -> Self {
        let mut buf = Vec::with_capacity(BINARY_HEADER.len() + n + 2);
        buf.extend_from_slice(BINARY_HEADER);
        CopyBinary { buf }
    }

    /// Starts a row of `fields` values: as many as its COPY names columns.
    pub(super) fn row(&mut self, fields: i16) -> &mut Self {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    fn field(&mut self, value: &[u8]) -> &mut Self {
        // A value is at most a message or an address, far below 2 GiB; a
        // length that did not fit would break the framing, which the
        // server refuses, rather than pass as another value.
        let len = i32::try_from(value.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self
    }

    fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    /// A `bigint`.
    pub(super) fn bigint(&mut self, v: i64) -> &mut Self {
        self.field(&v.to_be_bytes())
    }

    /// A `text`: its UTF-8 bytes as they are.
    pub(super) fn text(&mut self, s: &str) -> &mut Self {
        self.field(s.as_bytes())
    }

    pub(super) fn opt_text(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    /// A `date`. Any `NaiveDate`'s day count from 2000 fits an `int4`; the
    /// run's dates have four-digit years (a year past an imported date at
    /// most), well within PostgreSQL's range, and the server refuses one
    /// outside it.
    pub(super) fn date(&mut self, d: NaiveDate) -> &mut Self {
        let days = d.num_days_from_ce() - DAYS_FROM_CE_TO_2000;
        self.field(&days.to_be_bytes())
    }

    pub(super) fn opt_date(&mut self, d: Option<NaiveDate>) -> &mut Self {
        match d {
            Some(d) => self.date(d),
            None => self.null(),
        }
    }

    /// The data with its end marker, ready for [`copy_in`].
    pub(super) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_framing_characters_and_writes_nulls() {
        let mut c = CopyText::with_capacity(64);
        c.text("a\tb\\c\nd\re")
            .opt_text(None)
            .date(NaiveDate::from_ymd_opt(2026, 2, 3).expect("date"))
            .text("上海")
            .end_row();
        c.text("x").end_row();
        assert_eq!(
            String::from_utf8(c.into_bytes()).expect("utf8"),
            "a\\tb\\\\c\\nd\\re\t\\N\t2026-02-03\t上海\nx\n"
        );
    }

    #[test]
    fn the_binary_date_epoch_is_2000_01_01() {
        let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).expect("date");
        assert_eq!(epoch.num_days_from_ce(), DAYS_FROM_CE_TO_2000);
    }

    #[test]
    fn copy_binary_frames_each_field_by_its_length() {
        let mut c = CopyBinary::with_capacity(64);
        c.row(4)
            .bigint(-2)
            .text("上海\t")
            .opt_text(None)
            .date(NaiveDate::from_ymd_opt(1999, 12, 31).expect("date"));
        c.row(1).opt_date(NaiveDate::from_ymd_opt(2000, 1, 3));
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[0, 4]);
        want.extend_from_slice(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        want.extend_from_slice(&[0, 0, 0, 7]);
        want.extend_from_slice("上海\t".as_bytes());
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0, 1]);
        want.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 2]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(c.finish(), want);
    }
}
