//! An external merge sort of records by a byte key, in bounded memory: the
//! imports order a file's rows by key before they reach a table, so that
//! their lookups and writes walk the table's B-tree in key order, once,
//! whatever order the file came in.
//!
//! Records are kept in one buffer up to a byte budget; a full buffer is
//! sorted and written as a run to an anonymous temporary file (unlinked at
//! creation: nothing is left behind by a crash, and no other user can open
//! it) on a thread of its own, while the caller fills the next one; the
//! runs are merged when read back. A file that fits the budget never
//! touches disk.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::thread::JoinHandle;

use chrono::{Datelike, NaiveDate};

/// Bytes of records held in memory before a run is written. One more
/// buffer of this size may be held while the previous one is written.
pub const RUN_BYTES: usize = 48 << 20;

/// A held record: where its key and record lie in the buffer, and the
/// key's first 16 bytes as a big-endian number (zero-padded), which orders
/// most pairs of keys without reading the buffer: an ID number's region
/// and birth date, a permit number's digits.
#[derive(Clone, Copy)]
struct Entry {
    prefix: u128,
    at: usize,
    key_len: u32,
    record_len: u32,
}

/// What one record costs in memory beyond its bytes.
const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Records back to back in one buffer, and where each lies.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

impl Held {
    fn push(&mut self, key: &[u8], record: &[u8]) -> io::Result<()> {
        let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "record too long to sort");
        let key_len = u32::try_from(key.len()).map_err(|_| too_long())?;
        let record_len = u32::try_from(record.len()).map_err(|_| too_long())?;
        let mut prefix = [0u8; 16];
        let n = key.len().min(16);
        prefix[..n].copy_from_slice(&key[..n]);
        self.entries.push(Entry {
            prefix: u128::from_be_bytes(prefix),
            at: self.bytes.len(),
            key_len,
            record_len,
        });
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(record);
        Ok(())
    }

    fn size(&self) -> usize {
        self.bytes.len() + self.entries.len() * ENTRY_BYTES
    }

    fn key(&self, e: &Entry) -> &[u8] {
        key_in(&self.bytes, e)
    }

    fn record(&self, e: &Entry) -> &[u8] {
        let from = e.at + e.key_len as usize;
        &self.bytes[from..from + e.record_len as usize]
    }

    fn sort(&mut self) {
        let Held { bytes, entries } = self;
        entries.sort_unstable_by(|a, b| {
            (a.prefix.cmp(&b.prefix)).then_with(|| key_in(bytes, a).cmp(key_in(bytes, b)))
        });
    }

    /// Sorts the records and writes them as a run, rewound for reading;
    /// gives the buffers back emptied, for the next run.
    fn write_run(mut self) -> io::Result<(File, Held)> {
        self.sort();
        let mut w = BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
        for e in &self.entries {
            write_part(&mut w, self.key(e))?;
            write_part(&mut w, self.record(e))?;
        }
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.bytes.clear();
        self.entries.clear();
        Ok((file, self))
    }
}

/// An entry's key in the buffer it points into.
fn key_in<'a>(bytes: &'a [u8], e: &Entry) -> &'a [u8] {
    &bytes[e.at..e.at + e.key_len as usize]
}

/// Records sorted by key; equal keys keep no particular order, so callers
/// make keys unique (the imports append the line number).
pub struct ExternalSort {
    budget: usize,
    held: Held,
    /// The run being written on its own thread, if any.
    writing: Option<JoinHandle<io::Result<(File, Held)>>>,
    runs: Vec<File>,
}

impl ExternalSort {
    pub fn new(budget: usize) -> Self {
        ExternalSort {
            budget,
            held: Held::default(),
            writing: None,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, key: &[u8], record: &[u8]) -> io::Result<()> {
        if self.held.bytes.capacity() == 0 {
            // The buffer's whole size at once: growing it by doubling would
            // copy it and hold old and new at the same time.
            self.held.bytes.reserve_exact(self.budget.min(RUN_BYTES));
        }
        self.held.push(key, record)?;
        if self.held.size() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Hands the held records to a thread that sorts and writes them as a
    /// run, once the run before it is written; its buffers, emptied, take
    /// the next records (two sets of buffers in all, each grown once).
    fn spill(&mut self) -> io::Result<()> {
        let empty = self.wait_for_run()?.unwrap_or_default();
        let held = std::mem::replace(&mut self.held, empty);
        let writer = std::thread::Builder::new()
            .name("autosign-sort".into())
            .spawn(move || held.write_run())?;
        self.writing = Some(writer);
        Ok(())
    }

    /// Waits for the run being written, if any; its emptied buffers.
    fn wait_for_run(&mut self) -> io::Result<Option<Held>> {
        let Some(writing) = self.writing.take() else {
            return Ok(None);
        };
        let (run, empty) = writing
            .join()
            .map_err(|_| io::Error::other("the sort's run writer panicked"))??;
        self.runs.push(run);
        Ok(Some(empty))
    }

    /// The records in key order.
    pub fn finish(mut self) -> io::Result<Sorted> {
        self.wait_for_run()?;
        if self.runs.is_empty() {
            self.held.sort();
            return Ok(Sorted(Source::Memory {
                held: self.held,
                next: 0,
            }));
        }
        if !self.held.entries.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.runs.push(held.write_run()?.0);
        }
        let mut runs = Vec::with_capacity(self.runs.len());
        for file in self.runs {
            let mut run = Run {
                reader: BufReader::with_capacity(1 << 18, file),
                key: Vec::new(),
                record: Vec::new(),
            };
            if run.advance()? {
                runs.push(run);
            }
        }
        let mut heap: Vec<usize> = (0..runs.len()).collect();
        for i in (0..heap.len() / 2).rev() {
            sift_down(&mut heap, &runs, i);
        }
        Ok(Sorted(Source::Runs {
            runs,
            heap,
            returned: None,
        }))
    }
}

/// A run being merged, with its next record.
struct Run {
    reader: BufReader<File>,
    key: Vec<u8>,
    record: Vec<u8>,
}

impl Run {
    /// Reads the next record into `key` and `record`; false at the end.
    fn advance(&mut self) -> io::Result<bool> {
        if !read_part(&mut self.reader, &mut self.key)? {
            return Ok(false);
        }
        if !read_part(&mut self.reader, &mut self.record)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sort run cut short",
            ));
        }
        Ok(true)
    }
}

/// Restores the min-heap of runs (by their next key) below `i`.
fn sift_down(heap: &mut [usize], runs: &[Run], mut i: usize) {
    let less = |a: usize, b: usize| runs[a].key < runs[b].key;
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut least = i;
        if l < heap.len() && less(heap[l], heap[least]) {
            least = l;
        }
        if r < heap.len() && less(heap[r], heap[least]) {
            least = r;
        }
        if least == i {
            return;
        }
        heap.swap(i, least);
        i = least;
    }
}

/// The sorted records, from memory or merged from runs.
pub struct Sorted(Source);

enum Source {
    Memory {
        held: Held,
        next: usize,
    },
    Runs {
        runs: Vec<Run>,
        /// The runs with records left, as a min-heap by their next key.
        heap: Vec<usize>,
        /// The run whose record was returned last: it moves on at the
        /// next call, so that the record can be lent out until then.
        returned: Option<usize>,
    },
}

impl Sorted {
    /// The next (key, record), or `None` at the end; lent until the next
    /// call.
    pub fn next_record(&mut self) -> io::Result<Option<(&[u8], &[u8])>> {
        match &mut self.0 {
            Source::Memory { held, next } => {
                let Some(e) = held.entries.get(*next) else {
                    return Ok(None);
                };
                *next += 1;
                Ok(Some((held.key(e), held.record(e))))
            }
            Source::Runs {
                runs,
                heap,
                returned,
            } => {
                if let Some(i) = returned.take() {
                    if !runs[i].advance()? {
                        let last = heap.len() - 1;
                        heap.swap(0, last);
                        heap.pop();
                    }
                    sift_down(heap, runs, 0);
                }
                let Some(&top) = heap.first() else {
                    return Ok(None);
                };
                *returned = Some(top);
                let run = &runs[top];
                Ok(Some((&run.key, &run.record)))
            }
        }
    }
}

fn write_part(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too long to sort"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)
}

/// Reads a length and that many bytes into `out`; false at the end.
fn read_part(r: &mut impl Read, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    out.clear();
    out.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(out)?;
    Ok(true)
}

/// Writes a record's fields: each a length and its bytes, `None` as a
/// length no field can have.
#[derive(Default)]
pub struct Encoder(Vec<u8>);

const NONE: u32 = u32::MAX;

impl Encoder {
    pub fn str(&mut self, s: &str) -> &mut Self {
        // Fields are bounded far below 4 GiB by the CSV reader's record
        // limit; a longer one would be cut, never misread.
        let len = u32::try_from(s.len()).unwrap_or(NONE - 1).min(NONE - 1);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..len as usize]);
        self
    }

    pub fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.str(s),
            None => {
                self.0.extend_from_slice(&NONE.to_le_bytes());
                self
            }
        }
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }

    /// A date as its day number: neither written out as text nor parsed
    /// back (at 10M civil-status rows, formatting and parsing the dates
    /// took about 6 % of the import's samples).
    pub fn date(&mut self, d: NaiveDate) -> &mut Self {
        self.0
            .extend_from_slice(&d.num_days_from_ce().to_le_bytes());
        self
    }

    pub fn opt_date(&mut self, d: Option<NaiveDate>) -> &mut Self {
        match d {
            Some(d) => {
                self.0.push(1);
                self.date(d)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads back what an [`Encoder`] wrote, in the same order.
pub struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Decoder(bytes)
    }

    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "sorted record cut short",
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    pub fn opt(&mut self) -> io::Result<Option<String>> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let len = u32::from_le_bytes(b);
        if len == NONE {
            return Ok(None);
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    pub fn str(&mut self) -> io::Result<String> {
        self.opt()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "missing field"))
    }

    pub fn date(&mut self) -> io::Result<NaiveDate> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        NaiveDate::from_num_days_from_ce_opt(i32::from_le_bytes(b)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "sorted record's date out of range",
            )
        })
    }

    pub fn opt_date(&mut self) -> io::Result<Option<NaiveDate>> {
        match self.take(1)? {
            [0] => Ok(None),
            _ => self.date().map(Some),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn drain(mut s: Sorted) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((k, r)) = s.next_record().unwrap() {
            out.push((k.to_vec(), r.to_vec()));
        }
        out
    }

    #[test]
    fn records_come_back_in_key_order_from_memory_and_from_merged_runs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Keys that differ within their first 16 bytes, keys that share
        // them and differ after, and keys shorter than 16 bytes, some a
        // prefix of others.
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..5000u32)
            .map(|i| {
                let key = match i % 3 {
                    0 => format!("SH{:010}{i:08}", rng.random_range(0..1_000_000u32)),
                    1 => format!("310101199001011{}{i:08}", rng.random_range(0..10u32)),
                    _ => format!(
                        "{:x}",
                        rng.random_range(0..1_000_000_000u64) * 8192 + u64::from(i)
                    ),
                };
                (key.into_bytes(), i.to_le_bytes().repeat(i as usize % 7))
            })
            .collect();
        let mut want = records.clone();
        want.sort();
        // Small budgets spill many runs (about 25 and 5); a large one never
        // spills.
        for budget in [20_000, 100_000, usize::MAX] {
            let mut s = ExternalSort::new(budget);
            for (k, r) in &records {
                s.push(k, r).unwrap();
            }
            let spilled = !s.runs.is_empty() || s.writing.is_some();
            assert_eq!(spilled, budget < usize::MAX, "budget {budget}");
            assert_eq!(drain(s.finish().unwrap()), want, "budget {budget}");
        }
        assert!(drain(ExternalSort::new(20_000).finish().unwrap()).is_empty());
    }

    #[test]
    fn a_record_decodes_to_the_fields_encoded() {
        let mut e = Encoder::default();
        e.u64(42)
            .str("SH1,\"x\"")
            .opt(None)
            .opt(Some(""))
            .str("上海市\u{1f}\n");
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        e.date(day(2026, 11, 27))
            .opt_date(None)
            .opt_date(Some(day(1, 1, 1)))
            .date(day(-44, 3, 15))
            .opt_date(Some(NaiveDate::MAX));
        let bytes = e.into_bytes();
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.u64().unwrap(), 42);
        assert_eq!(d.str().unwrap(), "SH1,\"x\"");
        assert_eq!(d.opt().unwrap(), None);
        assert_eq!(d.opt().unwrap(), Some(String::new()));
        assert_eq!(d.str().unwrap(), "上海市\u{1f}\n");
        assert_eq!(d.date().unwrap(), day(2026, 11, 27));
        assert_eq!(d.opt_date().unwrap(), None);
        assert_eq!(d.opt_date().unwrap(), Some(day(1, 1, 1)));
        assert_eq!(d.date().unwrap(), day(-44, 3, 15));
        assert_eq!(d.opt_date().unwrap(), Some(NaiveDate::MAX));
        assert!(d.is_empty());
        assert!(Decoder::new(&bytes[..5]).u64().is_err());
        assert!(
            Decoder::new(&[1, 0, 0]).opt_date().is_err(),
            "a date cut short"
        );
        let out_of_range = i32::MAX.to_le_bytes();
        assert!(Decoder::new(&out_of_range).date().is_err());
    }
}
