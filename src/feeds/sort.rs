//! An external merge sort of records by a byte key, in bounded memory: the
//! permits import orders a file's rows by `permit_no` before they reach the
//! register, so that its lookups and writes walk the register's B-tree in
//! key order, once, whatever order the file came in.
//!
//! Records are kept in memory up to a byte budget, then sorted and written
//! as a run to an anonymous temporary file (unlinked at creation: nothing is
//! left behind by a crash, and no other user can open it); the runs are
//! merged when read back. A file that fits the budget never touches disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

/// Bytes of records held in memory before a run is written.
pub const RUN_BYTES: usize = 48 << 20;

/// What one record costs in memory beyond its bytes (two `Vec`s).
const RECORD_OVERHEAD: usize = 48;

/// Records sorted by key; equal keys keep no particular order, so callers
/// make keys unique (the permits import appends the line number).
pub struct ExternalSort {
    budget: usize,
    held: Vec<(Vec<u8>, Vec<u8>)>,
    held_bytes: usize,
    runs: Vec<File>,
}

impl ExternalSort {
    pub fn new(budget: usize) -> Self {
        ExternalSort {
            budget,
            held: Vec::new(),
            held_bytes: 0,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, key: Vec<u8>, record: Vec<u8>) -> io::Result<()> {
        self.held_bytes += key.len() + record.len() + RECORD_OVERHEAD;
        self.held.push((key, record));
        if self.held_bytes >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut w = BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
        for (key, record) in self.held.drain(..) {
            write_part(&mut w, &key)?;
            write_part(&mut w, &record)?;
        }
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        self.held_bytes = 0;
        Ok(())
    }

    /// The records in key order.
    pub fn finish(mut self) -> io::Result<Sorted> {
        if self.runs.is_empty() {
            self.held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            return Ok(Sorted::Memory(self.held.into_iter()));
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<BufReader<File>> = self
            .runs
            .into_iter()
            .map(|f| BufReader::with_capacity(1 << 18, f))
            .collect();
        let mut heads = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some((key, record)) = read_record(r)? {
                heads.push(Reverse((key, i, record)));
            }
        }
        Ok(Sorted::Runs { readers, heads })
    }
}

/// A run's next record: (key, run, record), smallest key first.
type Head = Reverse<(Vec<u8>, usize, Vec<u8>)>;

/// The sorted records, from memory or merged from runs.
pub enum Sorted {
    Memory(std::vec::IntoIter<(Vec<u8>, Vec<u8>)>),
    Runs {
        readers: Vec<BufReader<File>>,
        /// Each run's next record.
        heads: BinaryHeap<Head>,
    },
}

impl Sorted {
    /// The next (key, record), or `None` at the end.
    pub fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self {
            Sorted::Memory(it) => Ok(it.next()),
            Sorted::Runs { readers, heads } => {
                let Some(Reverse((key, i, record))) = heads.pop() else {
                    return Ok(None);
                };
                if let Some((k, r)) = read_record(&mut readers[i])? {
                    heads.push(Reverse((k, i, r)));
                }
                Ok(Some((key, record)))
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

fn read_part(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

fn read_record(r: &mut impl Read) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let Some(key) = read_part(r)? else {
        return Ok(None);
    };
    let record = read_part(r)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "sort run cut short"))?;
    Ok(Some((key, record)))
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
        while let Some(r) = s.next_record().unwrap() {
            out.push(r);
        }
        out
    }

    #[test]
    fn records_come_back_in_key_order_from_memory_and_from_merged_runs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..5000u32)
            .map(|i| {
                let key = format!("SH{:010}{i:08}", rng.random_range(0..1_000_000u32));
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
                s.push(k.clone(), r.clone()).unwrap();
            }
            let spilled = !s.runs.is_empty();
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
        let bytes = e.into_bytes();
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.u64().unwrap(), 42);
        assert_eq!(d.str().unwrap(), "SH1,\"x\"");
        assert_eq!(d.opt().unwrap(), None);
        assert_eq!(d.opt().unwrap(), Some(String::new()));
        assert_eq!(d.str().unwrap(), "上海市\u{1f}\n");
        assert!(d.is_empty());
        assert!(Decoder::new(&bytes[..5]).u64().is_err());
    }
}
