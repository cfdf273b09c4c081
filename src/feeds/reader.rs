//! Turning a feed file's bytes into records: strict decoding (UTF-8 with an
//! optional BOM, or GB18030), CSV framing, header matching (R1).
//!
//! Decoding is strict: an undecodable byte refuses the file, naming its
//! line, rather than importing mojibake (encoding_rs_io would silently
//! substitute U+FFFD).

use std::collections::HashMap;
use std::io::{self, Read};

use encoding_rs::{Decoder, DecoderResult, GB18030};

use crate::domain::normalise_header as normalise;

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
    /// Line ends in the input consumed so far.
    newlines: u64,
    after_cr: bool,
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
            after_cr: false,
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
            // Line ends as LineCounter counts them: LF, CRLF, lone CR (0x0D
            // and 0x0A are never trail bytes either).
            for &b in &src[..read] {
                if b == b'\r' || (b == b'\n' && !self.after_cr) {
                    self.newlines += 1;
                }
                self.after_cr = b == b'\r';
            }
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
                        InputError {
                            line: self.newlines + 1,
                            what: "bytes that are not valid GB18030",
                        },
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The payload of an `InvalidData` error from the readers here: input
/// that cannot be framed into records, with the line it starts on.
#[derive(Debug)]
pub struct InputError {
    pub line: u64,
    pub what: &'static str,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for InputError {}

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
/// remembers where each line end is and turns an offset into a line.
/// Memory stays bounded: line ends are forgotten once a later record has
/// been located.
///
/// A line ends at LF, CRLF or a lone CR (the csv crate ends a record at
/// each, so a file with mixed line ends still gets true line numbers).
///
/// It also follows the CSV quoting as the csv crate reads it, to catch a
/// quoted field that is never closed: the csv crate would silently make
/// the rest of the file that one field, and the rows in it would vanish
/// without a reject.
pub struct LineCounter<R> {
    inner: R,
    offset: u64,
    newlines: std::rc::Rc<std::cell::RefCell<Newlines>>,
    /// Whether the previous byte was a CR (a following LF ends no line).
    after_cr: bool,
    /// Line ends passed so far.
    lines: u64,
    quote: QuoteState,
    /// The line the currently open quoted field started on.
    quote_line: u64,
    /// Bytes of the record being read so far, and the line it starts on.
    record_bytes: u64,
    record_line: u64,
}

/// Longest record read, in bytes: far above any real one (13 fields of at
/// most 1,000 characters), low enough that a file without line ends, or
/// with a quote never closed, cannot make the import hold gigabytes.
pub const MAX_RECORD_BYTES: u64 = 16 << 20;

/// Where the reader is in the CSV quoting (RFC 4180 as the csv crate
/// reads it: a quote opens a quoted field only at the start of a field,
/// `""` inside one is a quote, anything after the closing quote continues
/// the field unquoted).
#[derive(Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: closing, or the first of `""`.
    QuoteInQuoted,
}

#[derive(Default)]
pub struct Newlines {
    /// Offsets of line-ending bytes not yet passed, and whether each ends a
    /// line (the LF of a CRLF does not).
    pending: std::collections::VecDeque<(u64, bool)>,
    passed: u64,
    /// The first quoting error: a quoted field never closed, or text after
    /// a closing quote (how a stray quote shows when a later one closes it).
    quoting_error: Option<String>,
}

impl Newlines {
    /// The 1-based line of the first byte of the record the csv reader
    /// says starts at `offset`. Its offset is where the previous record's
    /// terminator ended, so blank lines in between are skipped here.
    /// Offsets must not decrease.
    pub fn line_at(&mut self, offset: u64) -> u64 {
        let mut at = offset;
        while let Some(&(pos, ends)) = self.pending.front() {
            if pos < at {
                self.pending.pop_front();
                self.passed += u64::from(ends);
            } else if pos == at {
                self.pending.pop_front();
                self.passed += u64::from(ends);
                at += 1;
            } else {
                break;
            }
        }
        self.passed + 1
    }

    /// The first quoting error met so far, as a message naming its lines:
    /// checked once the input has been read to its end. Either refuses the
    /// file, because records around it would be cut in the wrong places
    /// and rows would vanish into one field without a reject.
    pub fn quoting_error(&self) -> Option<&str> {
        self.quoting_error.as_deref()
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
                after_cr: false,
                lines: 0,
                quote: QuoteState::FieldStart,
                quote_line: 0,
                record_bytes: 0,
                record_line: 1,
            },
            newlines,
        )
    }
}

/// The bytes [`LineCounter`] looks at one by one.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b',' as usize] = true;
    t[b'\r' as usize] = true;
    t[b'\n' as usize] = true;
    t
};

fn too_long(line: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        InputError {
            line,
            what: "a record longer than 16 MiB (no line ends, or a quote never closed?)",
        },
    )
}

fn text_after_quote(line: u64, opened: u64) -> String {
    format!(
        "line {line}: text after the closing quote of a field opened on \
         line {opened} (a stray or unbalanced \"?); quote the whole field \
         and double quotes inside it (\"\")"
    )
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut nl = self.newlines.borrow_mut();
        if n == 0 && !buf.is_empty() && self.quote == QuoteState::Quoted {
            let line = self.quote_line;
            nl.quoting_error.get_or_insert_with(|| {
                format!(
                    "line {line}: a quoted field starts here and is never closed \
                     (unbalanced \"), so the rest of the file would be one field"
                )
            });
        }
        let bytes = &buf[..n];
        let mut i = 0;
        while i < n {
            // A run of bytes that are none of `"`, `,`, CR, LF: no line or
            // record ends, no quoting change but leaving the field start
            // (or a closing quote: text after it). Scanned in a tight loop;
            // the state machine below sees only the special bytes.
            let start = i;
            while i < n && !SPECIAL[usize::from(bytes[i])] {
                i += 1;
            }
            if i > start {
                self.after_cr = false;
                self.record_bytes += (i - start) as u64;
                if self.record_bytes > MAX_RECORD_BYTES {
                    return Err(too_long(self.record_line));
                }
                self.quote = match self.quote {
                    QuoteState::Quoted => QuoteState::Quoted,
                    QuoteState::QuoteInQuoted => {
                        let (opened, line) = (self.quote_line, self.lines + 1);
                        nl.quoting_error
                            .get_or_insert_with(|| text_after_quote(line, opened));
                        QuoteState::Unquoted
                    }
                    QuoteState::FieldStart | QuoteState::Unquoted => QuoteState::Unquoted,
                };
            }
            if i == n {
                break;
            }
            let b = bytes[i];
            let ends_line = match b {
                b'\r' => true,
                b'\n' => !self.after_cr,
                _ => false,
            };
            self.after_cr = b == b'\r';
            let record_ends = (b == b'\n' || b == b'\r') && self.quote != QuoteState::Quoted;
            if b == b'\n' || b == b'\r' {
                nl.pending.push_back((self.offset + i as u64, ends_line));
            }
            if record_ends {
                self.record_bytes = 0;
                self.record_line = self.lines + 1 + u64::from(ends_line);
            } else {
                self.record_bytes += 1;
            }
            if self.record_bytes > MAX_RECORD_BYTES {
                return Err(too_long(self.record_line));
            }
            self.quote = match (self.quote, b) {
                (QuoteState::Quoted, b'"') => QuoteState::QuoteInQuoted,
                (QuoteState::Quoted, _) => QuoteState::Quoted,
                (QuoteState::QuoteInQuoted, b'"') => QuoteState::Quoted,
                (QuoteState::FieldStart, b'"') => {
                    self.quote_line = self.lines + 1;
                    QuoteState::Quoted
                }
                (_, b',' | b'\r' | b'\n') => QuoteState::FieldStart,
                (QuoteState::QuoteInQuoted, _) => {
                    let (opened, line) = (self.quote_line, self.lines + 1);
                    nl.quoting_error
                        .get_or_insert_with(|| text_after_quote(line, opened));
                    QuoteState::Unquoted
                }
                _ => QuoteState::Unquoted,
            };
            self.lines += u64::from(ends_line);
            i += 1;
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
    /// Header cells that name no column (R1: ignored with a warning): at
    /// most [`UNKNOWN_LISTED`] of them, then a count of the rest.
    pub unknown: Vec<String>,
    pub width: usize,
}

/// Unknown header cells named one by one in the warning.
const UNKNOWN_LISTED: usize = 20;

/// A header cell as quoted in a message: trimmed, at most 40 characters, or
/// its position when empty.
fn shown_cell(cell: &str, i: usize) -> String {
    let t = cell.trim();
    if t.is_empty() {
        return format!("#{}", i + 1);
    }
    if t.chars().count() > 40 {
        let head: String = t.chars().take(40).collect();
        format!("{head}…")
    } else {
        t.to_string()
    }
}

/// Matches a header row against the feed's columns: trimmed,
/// case-insensitive, order free, by a column's name or any alias (R1).
/// `names` is [`HeaderNames::of`] for the feed. A missing required column,
/// or two cells naming the same column, refuses the file.
///
/// Cells are echoed in messages only when the row is recognisably a header
/// (it names at least one column): a file without a header row has data —
/// ID numbers, names — in its first line, which must not reach a log.
pub fn map_header(
    header: &[String],
    columns: &[(&str, bool)],
    names: &[Vec<String>],
) -> Result<HeaderMap, String> {
    let lookup: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .flat_map(|(c, ns)| ns.iter().map(move |n| (n.as_str(), c)))
        .collect();
    let mut positions: Vec<Option<usize>> = vec![None; columns.len()];
    let mut unknown = Vec::new();
    let mut unknown_count = 0usize;
    for (i, cell) in header.iter().enumerate() {
        match lookup.get(normalise(cell).as_str()) {
            Some(&c) => match positions.get(c).copied().flatten() {
                Some(j) => {
                    return Err(format!(
                        "header cells {} ({:?}) and {} ({:?}) both name column {}; keep one",
                        j + 1,
                        shown_cell(&header[j], j),
                        i + 1,
                        shown_cell(cell, i),
                        columns[c].0
                    ));
                }
                None => positions[c] = Some(i),
            },
            None => {
                unknown_count += 1;
                if unknown.len() < UNKNOWN_LISTED {
                    unknown.push(shown_cell(cell, i));
                }
            }
        }
    }
    let missing: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(c, (_, required))| *required && positions[*c].is_none())
        .map(|(c, _)| c)
        .collect();
    if positions.iter().all(Option::is_none) {
        let hint = match header {
            [only] => [';', '\t', '|']
                .into_iter()
                .find(|d| only.contains(*d))
                .map(|d| {
                    format!(
                        "; its only cell contains {:?}: is the file separated by {:?} instead of commas?",
                        d, d
                    )
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        return Err(format!(
            "the first line names none of the expected columns ({}), so it is not a header row \
             ({} cell{}{hint}); add the header row, or check that this is the right feed",
            columns
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            header.len(),
            if header.len() == 1 { "" } else { "s" }
        ));
    }
    if !missing.is_empty() {
        let wanted: Vec<String> = missing
            .iter()
            .map(|&c| {
                let aliases: Vec<&str> = names
                    .get(c)
                    .map(|ns| ns.iter().skip(1).map(String::as_str).collect())
                    .unwrap_or_default();
                if aliases.is_empty() {
                    columns[c].0.to_string()
                } else {
                    format!("{} (or {})", columns[c].0, aliases.join("/"))
                }
            })
            .collect();
        let mut has: Vec<String> = header
            .iter()
            .enumerate()
            .take(UNKNOWN_LISTED)
            .map(|(i, h)| shown_cell(h, i))
            .collect();
        if header.len() > UNKNOWN_LISTED {
            has.push(format!("… {} more", header.len() - UNKNOWN_LISTED));
        }
        return Err(format!(
            "missing required column{} {} (header has: {})",
            if missing.len() > 1 { "s" } else { "" },
            wanted.join(", "),
            has.join(", ")
        ));
    }
    if unknown_count > unknown.len() {
        unknown.push(format!("… {} more", unknown_count - unknown.len()));
    }
    Ok(HeaderMap {
        positions,
        unknown,
        width: header.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Feed, HeaderNames};
    use std::collections::BTreeMap;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn names(feed: Feed) -> Vec<Vec<String>> {
        HeaderNames::builtin().of(feed).to_vec()
    }

    #[test]
    fn header_matching_is_trimmed_case_insensitive_and_order_free_r1() {
        let feed = Feed::Residence;
        let m = map_header(
            &s(&[" Visited_On ", "ID_NUMBER", "extra", "RESULT"]),
            feed.columns(),
            &names(feed),
        )
        .expect("maps");
        assert_eq!(m.positions, vec![Some(1), Some(0), Some(3), None, None]);
        assert_eq!(m.unknown, vec!["extra".to_string()]);
    }

    #[test]
    fn chinese_header_names_map_out_of_the_box() {
        let feed = Feed::Residence;
        let m = map_header(
            &s(&[
                "公民身份号码",
                " 走访日期 ",
                "核查结果",
                "核查地址",
                "核查人员",
            ]),
            feed.columns(),
            &names(feed),
        )
        .expect("maps");
        assert_eq!(
            m.positions,
            vec![Some(0), Some(1), Some(2), Some(3), Some(4)]
        );
        assert!(m.unknown.is_empty());
    }

    #[test]
    fn every_column_of_every_feed_has_a_chinese_alias_and_none_is_shared() {
        for feed in Feed::ALL {
            assert_eq!(
                feed.columns().len(),
                feed.builtin_aliases().len(),
                "{feed:?}: one alias list per column"
            );
            let all = names(feed);
            for (c, ns) in all.iter().enumerate() {
                assert!(ns.len() >= 2, "{feed:?} {}: no alias", feed.columns()[c].0);
                for n in ns {
                    let owners = all.iter().filter(|o| o.contains(n)).count();
                    assert_eq!(owners, 1, "{feed:?}: {n} names {owners} columns");
                }
            }
        }
    }

    #[test]
    fn missing_required_column_is_named_with_its_aliases_r1() {
        let feed = Feed::Residence;
        let err =
            map_header(&s(&["id_number", "result"]), feed.columns(), &names(feed)).unwrap_err();
        assert!(err.contains("visited_on (or 走访日期/核查日期)"), "{err}");
        assert!(err.contains("header has: id_number, result"), "{err}");
    }

    #[test]
    fn a_column_named_twice_is_refused_naming_both_cells() {
        let feed = Feed::CivilStatus;
        for header in [
            &["id_number", "marital_status", "ID_NUMBER"][..],
            &["身份证号", "marital_status", "id_number"][..],
        ] {
            let err = map_header(&s(header), feed.columns(), &names(feed)).unwrap_err();
            assert!(
                err.contains("cells 1 (") && err.contains(") and 3 (") && err.contains("id_number"),
                "{err}"
            );
        }
        // Two unknown cells with one name are harmless: ignored with the rest.
        let m = map_header(
            &s(&["id_number", "备注", "marital_status", "备注"]),
            feed.columns(),
            &names(feed),
        )
        .expect("maps");
        assert_eq!(m.unknown, vec!["备注".to_string(), "备注".to_string()]);
    }

    #[test]
    fn a_data_line_without_header_is_refused_without_echoing_it() {
        let feed = Feed::CivilStatus;
        let err = map_header(
            &s(&["11010519491231002X", "张三丰", "已婚"]),
            feed.columns(),
            &names(feed),
        )
        .unwrap_err();
        assert!(err.contains("not a header row"), "{err}");
        assert!(
            !err.contains("11010519491231002X") && !err.contains("张三丰"),
            "{err}"
        );
        let err = map_header(
            &s(&["id_number;marital_status"]),
            feed.columns(),
            &names(feed),
        )
        .unwrap_err();
        assert!(err.contains("separated by ';'"), "{err}");
    }

    #[test]
    fn unknown_cells_are_listed_up_to_a_bound() {
        let feed = Feed::CivilStatus;
        let mut header = s(&["id_number", "marital_status"]);
        header.extend((0..10_000).map(|i| format!("c{i}")));
        let m = map_header(&header, feed.columns(), &names(feed)).expect("maps");
        assert_eq!(m.unknown.len(), UNKNOWN_LISTED + 1);
        assert_eq!(m.unknown[UNKNOWN_LISTED], "… 9980 more");
        assert_eq!(m.width, 10_002);
    }

    #[test]
    fn configured_aliases_add_names_and_bad_ones_are_refused() {
        let conf = |col: &str, alias: &str| {
            let mut m = BTreeMap::new();
            m.insert(col.to_string(), vec![alias.to_string()]);
            m
        };
        let ok = conf("visited_on", " 走访时间 ");
        let h = HeaderNames::with_aliases([(Feed::Residence, &ok)]).expect("valid");
        let m = map_header(
            &s(&["身份证号", "走访时间", "结果", "核查结果"]),
            Feed::Residence.columns(),
            h.of(Feed::Residence),
        )
        .expect("maps");
        assert_eq!(m.positions[1], Some(1));
        // Its own name or built-in alias again: harmless.
        let same = conf("visited_on", "走访日期");
        assert!(HeaderNames::with_aliases([(Feed::Residence, &same)]).is_ok());
        let unknown = conf("visit_date", "走访时间");
        let err = HeaderNames::with_aliases([(Feed::Residence, &unknown)]).unwrap_err();
        assert!(
            err.starts_with("feeds.residence.aliases.visit_date:"),
            "{err}"
        );
        let taken = conf("visited_on", "核查结果");
        let err = HeaderNames::with_aliases([(Feed::Residence, &taken)]).unwrap_err();
        assert!(err.contains("already names column result"), "{err}");
        let taken = conf("address", "ID_Number");
        let err = HeaderNames::with_aliases([(Feed::Residence, &taken)]).unwrap_err();
        assert!(err.contains("already names column id_number"), "{err}");
        let empty = conf("address", "  ");
        assert!(HeaderNames::with_aliases([(Feed::Residence, &empty)]).is_err());
    }

    /// Reads `text` with the csv crate as the import does; the line of each
    /// record and the unclosed-quote line.
    fn lines_of(text: &[u8]) -> (Vec<(u64, Vec<String>)>, Option<String>) {
        let (input, newlines) = LineCounter::new(text);
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(input);
        let mut out = Vec::new();
        let mut rec = csv::ByteRecord::new();
        while csv.read_byte_record(&mut rec).expect("reads") {
            let line = newlines
                .borrow_mut()
                .line_at(rec.position().map_or(0, |p| p.byte()));
            let fields = rec
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            out.push((line, fields));
        }
        let unclosed = newlines.borrow().quoting_error().map(str::to_string);
        (out, unclosed)
    }

    #[test]
    fn lf_crlf_and_lone_cr_each_end_a_physical_line_c9() {
        let (recs, unclosed) = lines_of(b"h\r\na\nb\rc\r\n\r\nd\n\ne");
        let lines: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 6, 8]);
        assert_eq!(unclosed, None);
    }

    #[test]
    fn an_unclosed_quote_is_found_and_well_formed_quotes_are_not() {
        // Closed quotes, "" escapes, a line break inside quotes, a quote
        // inside an unquoted field (literal): all fine.
        let (recs, err) = lines_of(b"a,b\n\"x,\"\"y\"\"\r\nz\",2\nab\"c,3\n\"\",\"\"\"\"\n");
        assert_eq!(err, None);
        assert_eq!(
            recs[1],
            (2, vec!["x,\"y\"\r\nz".to_string(), "2".to_string()])
        );
        assert_eq!(recs[2], (4, vec!["ab\"c".to_string(), "3".to_string()]));
        assert_eq!(recs[3].1, vec!["".to_string(), "\"".to_string()]);
        // A quote opened on line 3 and never closed.
        let (_, err) = lines_of(b"a,b\n1,2\n3,\"4\n5,6\n");
        assert!(err.is_some_and(|e| e.starts_with("line 3: a quoted field")));
        // Even when the file ends right after the opening quote.
        let (_, err) = lines_of(b"a,b\r\n1,\"");
        assert!(err.is_some_and(|e| e.starts_with("line 2: a quoted field")));
        // A stray quote on line 2 that a quote on line 3 closes, text after.
        let (_, err) = lines_of(b"a,b\n1,\"x\n2,\"y\"\n");
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("line 3: text after the closing quote")
                    && e.contains("opened on line 2")),
            "{err:?}"
        );
        // A closing quote as the last byte closes.
        let (_, err) = lines_of(b"a,b\n1,\"2\"");
        assert_eq!(err, None);
    }

    #[test]
    fn a_record_over_16_mib_stops_the_reading_naming_its_line() {
        let mut text = b"a,b\n1,2\r\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES as usize + 1));
        let (mut input, _) = LineCounter::new(&text[..]);
        let err = input.read_to_end(&mut Vec::new()).unwrap_err();
        let line = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<InputError>())
            .map(|e| e.line);
        assert_eq!(line, Some(3), "{err}");
        // Inside quotes, line ends do not end the record.
        let mut text = b"a,b\n\"".to_vec();
        text.extend((0..MAX_RECORD_BYTES / 2 + 1).flat_map(|_| *b"x\n"));
        let (mut input, _) = LineCounter::new(&text[..]);
        let err = input.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().starts_with("line 2: a record longer"),
            "{err}"
        );
        // Just under the bound is fine.
        let mut text = b"a\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES as usize));
        let (mut input, _) = LineCounter::new(&text[..]);
        assert!(input.read_to_end(&mut Vec::new()).is_ok());
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
        // Lone CR and CRLF end a line as in LineCounter.
        let mut bad = b"a\rb\r\nc\n".to_vec();
        bad.extend_from_slice(&[0x81, 0x20]);
        let err = Gb18030Reader::new(&bad[..])
            .read_to_string(&mut String::new())
            .unwrap_err();
        assert!(err.to_string().starts_with("line 4: "), "{err}");
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

    mod fuzz {
        //! The framing layer on arbitrary bytes: decoding, line
        //! counting, quote tracking and header matching never panic, and
        //! line numbers only grow. Bounded by `PROPTEST_CASES`.

        use proptest::prelude::*;

        use super::*;

        /// Bytes that look like CSV: mostly delimiters, quotes, line ends,
        /// digits, some multi-byte and invalid sequences.
        fn csvish() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(&b",\"\r\n0X a"[..]),
                    1 => any::<u8>(),
                ],
                0..400,
            )
        }

        fn lines_ends(bytes: &[u8]) -> u64 {
            let mut n = 0;
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'\r' || (*b == b'\n' && (i == 0 || bytes[i - 1] != b'\r')) {
                    n += 1;
                }
            }
            n
        }

        proptest! {
            #[test]
            fn records_get_growing_lines_and_headers_map_or_refuse(
                bytes in prop_oneof![csvish(), prop::collection::vec(any::<u8>(), 0..400)],
                feed in prop::sample::select(&Feed::ALL[..]),
            ) {
                let (input, newlines) = LineCounter::new(SkipBom::new(&bytes[..]));
                let mut csv = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(input);
                let mut rec = csv::ByteRecord::new();
                let mut last = 0;
                let mut first = true;
                let names = HeaderNames::builtin();
                while csv.read_byte_record(&mut rec).unwrap_or(false) {
                    let line = newlines
                        .borrow_mut()
                        .line_at(rec.position().map_or(0, |p| p.byte()));
                    prop_assert!(line >= last.max(1) && line <= lines_ends(&bytes) + 1);
                    last = line;
                    if first {
                        first = false;
                        let header: Vec<String> = rec
                            .iter()
                            .map(|f| String::from_utf8_lossy(f).into_owned())
                            .collect();
                        if let Ok(m) = map_header(&header, feed.columns(), names.of(feed)) {
                            let mut used: Vec<usize> = m.positions.iter().flatten().copied().collect();
                            let n = used.len();
                            used.sort_unstable();
                            used.dedup();
                            prop_assert_eq!(used.len(), n, "one cell per column");
                            prop_assert!(used.iter().all(|&i| i < m.width));
                        }
                    }
                }
                let _ = newlines.borrow().quoting_error();
            }

            #[test]
            fn gb18030_decoding_gives_text_or_an_undecodable_line(
                bytes in prop::collection::vec(any::<u8>(), 0..300),
            ) {
                let mut out = String::new();
                match Gb18030Reader::new(&bytes[..]).read_to_string(&mut out) {
                    Ok(_) => {}
                    Err(e) => {
                        let line = e
                            .get_ref()
                            .and_then(|i| i.downcast_ref::<InputError>())
                            .map(|u| u.line);
                        prop_assert!(
                            line.is_some_and(|l| l >= 1 && l <= lines_ends(&bytes) + 1),
                            "{}", e
                        );
                    }
                }
            }
        }
    }
}
