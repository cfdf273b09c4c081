//! Turning a feed file's bytes into records: strict decoding (UTF-8 with an
//! optional BOM, or GB18030), CSV framing, header matching (R1).
//!
//! Decoding is strict: an undecodable byte refuses the file, naming its
//! line, rather than importing mojibake (encoding_rs_io would silently
//! substitute U+FFFD).

use std::io::{self, Read};

use encoding_rs::{Decoder, DecoderResult, GB18030};

/// The encodings a feed may arrive in (`--encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
    /// GB18030, which covers GBK and GB2312.
    #[value(name = "gb18030", alias = "gbk")]
    Gb18030,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Some(Encoding::Utf8),
            "gb18030" | "gbk" => Some(Encoding::Gb18030),
            _ => None,
        }
    }
}

/// A reader that transcodes GB18030 to UTF-8 and fails on the first
/// malformed sequence with the line it is on.
pub struct Gb18030Reader<R> {
    inner: R,
    decoder: Decoder,
    input: Vec<u8>,
    in_start: usize,
    in_end: usize,
    eof: bool,
    finished: bool,
    output: Vec<u8>,
    out_start: usize,
    out_end: usize,
    /// Newlines in the input consumed so far (0x0A is never a trail byte).
    newlines: u64,
}

impl<R: Read> Gb18030Reader<R> {
    pub fn new(inner: R) -> Self {
        Gb18030Reader {
            inner,
            decoder: GB18030.new_decoder_without_bom_handling(),
            input: vec![0; 64 * 1024],
            in_start: 0,
            in_end: 0,
            eof: false,
            finished: false,
            output: vec![0; 128 * 1024],
            out_start: 0,
            out_end: 0,
            newlines: 0,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.out_start == self.out_end && !self.finished {
            if self.in_start == self.in_end && !self.eof {
                let n = self.inner.read(&mut self.input)?;
                self.in_start = 0;
                self.in_end = n;
                self.eof = n == 0;
            }
            let src = &self.input[self.in_start..self.in_end];
            let (result, read, written) =
                self.decoder
                    .decode_to_utf8_without_replacement(src, &mut self.output, self.eof);
            self.newlines += src[..read].iter().filter(|&&b| b == b'\n').count() as u64;
            self.in_start += read;
            self.out_start = 0;
            self.out_end = written;
            match result {
                DecoderResult::InputEmpty => {
                    if self.eof {
                        self.finished = true;
                    }
                }
                DecoderResult::OutputFull => {}
                DecoderResult::Malformed(_, _) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        UndecodableLine(self.newlines + 1),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The payload of an `InvalidData` error from [`Gb18030Reader`].
#[derive(Debug)]
pub struct UndecodableLine(pub u64);

impl std::fmt::Display for UndecodableLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: bytes that are not valid GB18030", self.0)
    }
}

impl std::error::Error for UndecodableLine {}

impl<R: Read> Read for Gb18030Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let n = (self.out_end - self.out_start).min(buf.len());
        buf[..n].copy_from_slice(&self.output[self.out_start..self.out_start + n]);
        self.out_start += n;
        Ok(n)
    }
}

/// Skips a leading UTF-8 byte-order mark.
pub struct SkipBom<R> {
    inner: R,
    checked: bool,
    pending: Vec<u8>,
}

impl<R: Read> SkipBom<R> {
    pub fn new(inner: R) -> Self {
        SkipBom {
            inner,
            checked: false,
            pending: Vec::new(),
        }
    }
}

impl<R: Read> Read for SkipBom<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.checked {
            self.checked = true;
            let mut head = [0u8; 3];
            let mut got = 0;
            while got < 3 {
                let n = self.inner.read(&mut head[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            if head[..got] != [0xEF, 0xBB, 0xBF] {
                self.pending.extend_from_slice(&head[..got]);
            }
        }
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// Counts physical lines for record positions. The csv crate's own line
/// numbers skip blank lines and miscount CRLF, and C9 wants the physical
/// line a record starts on; its byte offsets are exact, so this adapter
/// remembers where each newline is and turns an offset into a line.
/// Memory stays bounded: newlines are forgotten once a later record has
/// been located.
pub struct LineCounter<R> {
    inner: R,
    offset: u64,
    newlines: std::rc::Rc<std::cell::RefCell<Newlines>>,
}

#[derive(Default)]
pub struct Newlines {
    /// Offsets of `\r` (false) and `\n` (true) bytes not yet passed.
    pending: std::collections::VecDeque<(u64, bool)>,
    passed: u64,
}

impl Newlines {
    /// The 1-based line of the first byte of the record the csv reader
    /// says starts at `offset`. Its offset is where the previous record's
    /// terminator ended, so blank lines in between are skipped here.
    /// Offsets must not decrease.
    pub fn line_at(&mut self, offset: u64) -> u64 {
        let mut at = offset;
        while let Some(&(pos, is_nl)) = self.pending.front() {
            if pos < at {
                self.pending.pop_front();
                self.passed += u64::from(is_nl);
            } else if pos == at {
                self.pending.pop_front();
                self.passed += u64::from(is_nl);
                at += 1;
            } else {
                break;
            }
        }
        self.passed + 1
    }
}

impl<R: Read> LineCounter<R> {
    pub fn new(inner: R) -> (Self, std::rc::Rc<std::cell::RefCell<Newlines>>) {
        let newlines = std::rc::Rc::new(std::cell::RefCell::new(Newlines::default()));
        (
            LineCounter {
                inner,
                offset: 0,
                newlines: newlines.clone(),
            },
            newlines,
        )
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut nl = self.newlines.borrow_mut();
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' || *b == b'\r' {
                nl.pending.push_back((self.offset + i as u64, *b == b'\n'));
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// Where each expected column sits in a file's header.
#[derive(Debug)]
pub struct HeaderMap {
    /// Index into the record for each expected column, in the feed's order.
    pub positions: Vec<Option<usize>>,
    /// Header names nobody asked for (R1: ignored with a warning).
    pub unknown: Vec<String>,
    pub width: usize,
}

/// Matches a header row against the feed's columns: trimmed,
/// case-insensitive, order free (R1). A missing required column or a
/// repeated one refuses the file.
pub fn map_header(header: &[String], columns: &[(&str, bool)]) -> Result<HeaderMap, String> {
    let names: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    for (i, n) in names.iter().enumerate() {
        if !n.is_empty() && names[..i].contains(n) {
            return Err(format!("column {n:?} appears more than once in the header"));
        }
    }
    let mut positions = Vec::with_capacity(columns.len());
    let mut missing = Vec::new();
    for (name, required) in columns {
        let pos = names.iter().position(|n| n == name);
        if pos.is_none() && *required {
            missing.push(*name);
        }
        positions.push(pos);
    }
    if !missing.is_empty() {
        return Err(format!(
            "missing required column{} {} (header has: {})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            names.join(", ")
        ));
    }
    let unknown = names
        .iter()
        .filter(|n| !columns.iter().any(|(c, _)| c == n))
        .cloned()
        .collect();
    Ok(HeaderMap {
        positions,
        unknown,
        width: header.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn header_matching_is_trimmed_case_insensitive_and_order_free_r1() {
        let cols = [
            ("id_number", true),
            ("visited_on", true),
            ("address", false),
        ];
        let m = map_header(&s(&[" Visited_On ", "ID_NUMBER", "extra"]), &cols).expect("maps");
        assert_eq!(m.positions, vec![Some(1), Some(0), None]);
        assert_eq!(m.unknown, vec!["extra".to_string()]);
    }

    #[test]
    fn missing_required_column_is_named_r1() {
        let cols = [("id_number", true), ("visited_on", true)];
        let err = map_header(&s(&["id_number"]), &cols).unwrap_err();
        assert!(err.contains("visited_on"), "{err}");
    }

    #[test]
    fn duplicate_header_is_refused() {
        let cols = [("id_number", true)];
        let err = map_header(&s(&["id_number", "ID_NUMBER"]), &cols).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn gb18030_reader_transcodes_and_reports_the_bad_line() {
        let (bytes, _, _) = GB18030.encode("id,name\n1,张三\n");
        let mut out = String::new();
        Gb18030Reader::new(&bytes[..])
            .read_to_string(&mut out)
            .expect("decodes");
        assert_eq!(out, "id,name\n1,张三\n");

        let mut bad = b"a\nb\n".to_vec();
        bad.extend_from_slice(&[0x81, 0x20]); // lead byte without a valid trail
        bad.push(b'\n');
        let err = Gb18030Reader::new(&bad[..])
            .read_to_string(&mut String::new())
            .unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn bom_is_skipped_once() {
        let mut out = Vec::new();
        SkipBom::new(&b"\xEF\xBB\xBFa,b"[..])
            .read_to_end(&mut out)
            .expect("reads");
        assert_eq!(out, b"a,b");
        let mut out = Vec::new();
        SkipBom::new(&b"ab"[..])
            .read_to_end(&mut out)
            .expect("reads");
        assert_eq!(out, b"ab");
    }
}
