//! Feed import (R1, R2): a file is hashed, parsed on a blocking thread,
//! validated row by row, and written in batches inside one transaction —
//! all of its accepted rows or nothing. Rejected rows go to a rejects CSV;
//! too many of them refuse the whole file.

mod parse;
mod reader;
pub mod rules;
mod sort;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::Instrument;

pub use crate::domain::{Delivery, Encoding, Feed, HeaderNames};
pub use parse::MAX_FIELD_CHARS;

use crate::db::{
    Db, ImportCounts, ImportMark, ImportRecord, ImportTx, KeySuspect, PermitRow, PriorPermit,
};
use crate::domain::PermitStatus;
use crate::error::{Error, Result};
use parse::{Fields, Parsed};
use rules::{permit_write, same_key_warning, same_permit_warning, PermitWrite, Rejection};

/// Warnings logged one by one per file before they are only counted.
const WARNINGS_LOGGED: u64 = 20;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub encoding: Encoding,
    /// Rejects CSV path; `None` writes no rejects file.
    pub rejects: Option<PathBuf>,
    pub max_reject_ratio: f64,
    pub batch_rows: usize,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Accepted header names per column: built-in and configured aliases.
    pub headers: HeaderNames,
    /// Recorded with the import: whether the brake's row-drop check may
    /// compare it (`[feeds.<feed>] delivery`).
    pub delivery: Delivery,
    /// Stamps the import's `imported_at`, from which the brake reckons the
    /// feed's age: a run's inbox imports get the run's clock.
    pub clock: crate::clock::Clock,
}

#[derive(Debug, Clone)]
pub enum ImportOutcome {
    Imported(ImportReport),
    /// Same content (SHA-256) imported before: a no-op (R2).
    AlreadyImported(ImportRecord),
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    pub import_id: i64,
    pub counts: ImportCounts,
    pub warnings: u64,
    pub rejects: Option<PathBuf>,
}

/// SHA-256 of a file's bytes, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Imports one feed file. The caller holds the job lock.
pub async fn import_file(
    db: &Db,
    feed: Feed,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportOutcome> {
    let shown = path.display().to_string();
    let sha = sha256_file(path)?;
    if let Some(done) = db.find_import(feed.name(), &sha).await? {
        tracing::info!(feed = feed.name(), file = %shown, import_id = done.import_id, "already imported; nothing to do");
        return Ok(ImportOutcome::AlreadyImported(done));
    }
    let span = tracing::info_span!("import", feed = feed.name(), file = %shown);
    let report = async {
        match feed {
            Feed::Permits => {
                let parser = RowParser::unsettled(parse::permit);
                run_import(db, feed, path, &sha, opts, parser, PermitsWriter::default()).await
            }
            Feed::Residence => {
                let parser = RowParser::keyed(parse::residence);
                run_import(db, feed, path, &sha, opts, parser, KeyedWriter::default()).await
            }
            Feed::SocialInsurance => {
                let parser = RowParser::keyed(parse::social_insurance);
                run_import(db, feed, path, &sha, opts, parser, KeyedWriter::default()).await
            }
            Feed::CivilStatus => {
                let parser = RowParser::keyed(parse::civil_status);
                run_import(db, feed, path, &sha, opts, parser, KeyedWriter::default()).await
            }
        }
    }
    .instrument(span.clone())
    .await?;
    let _enter = span.enter();
    tracing::info!(
        rows_read = report.counts.rows_read,
        rows_imported = report.counts.rows_imported,
        rows_rejected = report.counts.rows_rejected,
        "import committed"
    );
    Ok(ImportOutcome::Imported(report))
}

/// One parsed record on its way to the writer.
struct Item<T> {
    line: u64,
    raw: csv::StringRecord,
    parsed: Result<Parsed<T>, Rejection>,
}

enum Msg<T> {
    Header(Vec<String>),
    /// Parsed records for a writer that still needs the database to decide.
    Batch(Vec<Item<T>>),
    /// Rows settled on the parser thread (keyed feeds): de-duplicated,
    /// in key order, ready to write.
    Ready(ReadyBatch<T>),
    Refused(String),
}

struct ReadyBatch<T> {
    read: u64,
    /// Accepted rows, counting those a later line with the same key replaced.
    accepted: u64,
    rows: Vec<T>,
    rejects: Vec<(u64, Rejection, csv::StringRecord)>,
    warnings: Vec<(u64, String)>,
    /// Rows whose key may have come in an earlier batch of the file.
    suspects: Vec<KeySuspect>,
}

/// The parser thread's share of R2 for keyed feeds: rejects, warnings, the
/// later line with a key winning. It keeps the writer (the one thread that
/// talks to the database, the bottleneck) free for writing.
///
/// A key repeated within a batch is found exactly (a map bounded by the
/// batch); across batches, a fixed-size Bloom filter keeps the memory
/// bounded whatever the file's size: a key it may have seen in an earlier
/// batch makes its row a suspect, which the import confirms against the
/// rows it wrote ([`ImportTx::earlier_lines`]).
struct Settle<T> {
    seen: Bloom,
    _row: std::marker::PhantomData<T>,
}

impl<T: Keyed> Settle<T> {
    fn settle(&mut self, items: Vec<Item<T>>) -> ReadyBatch<T> {
        let mut out = ReadyBatch {
            read: items.len() as u64,
            accepted: 0,
            rows: Vec::with_capacity(items.len()),
            rejects: Vec::new(),
            warnings: Vec::new(),
            suspects: Vec::new(),
        };
        // First pass, borrowing the rows: the earlier line of each accepted
        // row's key (exact within the batch, bounded by its size; the Bloom
        // filter across batches) and the last row of each key, which is the
        // one written (R2: the later line wins).
        let mut earlier: Vec<Option<u64>> = vec![None; items.len()];
        let mut keep = vec![false; items.len()];
        {
            let mut in_batch: HashMap<(&str, u64), usize, foldhash::fast::FixedState> =
                HashMap::with_capacity_and_hasher(items.len(), Default::default());
            for (i, item) in items.iter().enumerate() {
                let Ok(p) = &item.parsed else { continue };
                let key = p.row.key_ref();
                let hash = pair_hash(key);
                let before = in_batch.insert(key, i);
                earlier[i] = match before {
                    Some(j) => {
                        self.seen.insert(hash);
                        Some(items[j].line)
                    }
                    None => {
                        if self.seen.insert(hash) {
                            let (id_number, second) = p.row.key_parts();
                            out.suspects.push(KeySuspect {
                                id_number: id_number.to_string(),
                                second,
                                line: item.line,
                            });
                        }
                        None
                    }
                };
            }
            for &i in in_batch.values() {
                keep[i] = true;
            }
        }
        // Second pass, moving each row once: rejects and warnings in line
        // order, the kept rows in line order.
        for ((item, earlier), keep) in items.into_iter().zip(earlier).zip(keep) {
            match item.parsed {
                Err(reason) => out.rejects.push((item.line, reason, item.raw)),
                Ok(mut p) => {
                    out.accepted += 1;
                    out.warnings
                        .extend(p.warnings.into_iter().map(|w| (item.line, w)));
                    if let Some(earlier) = earlier {
                        out.warnings.push((item.line, same_key_warning(earlier)));
                    }
                    if keep {
                        p.row.set_line(item.line);
                        out.rows.push(p.row);
                    }
                }
            }
        }
        out
    }
}

/// A blocked Bloom filter over 64-bit key hashes: each key sets 6 bits
/// inside one 512-bit block (one cache line), so an insert costs one
/// memory access however large the filter.
struct Bloom {
    blocks: Vec<[u64; 8]>,
}

impl Bloom {
    /// About 12 bits a row (a false positive rate near 1 %) for `rows`
    /// expected rows, between 2^20 and 2^30 bits (128 KB–128 MB).
    fn for_rows(rows: u64) -> Bloom {
        let bits = rows
            .saturating_mul(12)
            .clamp(1 << 20, 1 << 30)
            .next_power_of_two();
        Bloom {
            blocks: vec![[0; 8]; (bits / 512) as usize],
        }
    }

    /// Sized for a file of `file_len` bytes whose first `bytes` held
    /// `rows` rows.
    fn for_file(file_len: u64, bytes: u64, rows: u64) -> Bloom {
        let per_row = (bytes / rows.max(1)).max(16);
        Bloom::for_rows(file_len / per_row + rows)
    }

    /// Sets the key's bits; returns whether they were all set already
    /// (the key may have been inserted before).
    fn insert(&mut self, hash: u64) -> bool {
        let n = self.blocks.len() as u64;
        let Some(block) = self.blocks.get_mut((hash % n.max(1)) as usize) else {
            return false;
        };
        // Six 9-bit positions from the hash's other bits (mixed so they do
        // not repeat the block index's low bits).
        let mut h = hash.rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut all = true;
        for _ in 0..6 {
            let bit = (h & 511) as usize;
            h >>= 9;
            let (word, b) = (bit / 64, 1u64 << (bit % 64));
            all &= block[word] & b != 0;
            block[word] |= b;
        }
        all
    }
}

type ParseFn<T> = fn(&Fields) -> Result<Parsed<T>, Rejection>;

/// How a feed's records become rows on the parser thread: the row parser,
/// and for keyed feeds the settling of R2 there too.
struct RowParser<T> {
    parse: ParseFn<T>,
    settle: Option<Settle<T>>,
}

impl<T: Keyed> RowParser<T> {
    /// A feed whose rows replace by key and are settled on the parser
    /// thread, spotting repeated keys with a Bloom filter sized by the file
    /// (in [`parse_file`]).
    fn keyed(parse: ParseFn<T>) -> Self {
        RowParser {
            parse,
            settle: Some(Settle {
                seen: Bloom { blocks: Vec::new() },
                _row: std::marker::PhantomData,
            }),
        }
    }

    /// Permit rows: the writer settles R2 against the register itself.
    fn unsettled(parse: ParseFn<T>) -> Self {
        RowParser {
            parse,
            settle: None,
        }
    }
}

/// Reads `path` on the calling (blocking) thread and sends batches.
fn parse_file<T: Keyed + Send + 'static>(
    feed: Feed,
    path: PathBuf,
    opts: ImportOptions,
    parser: RowParser<T>,
    tx: mpsc::Sender<Msg<T>>,
    recycled: std::sync::mpsc::Receiver<Box<dyn Send>>,
) {
    let (encoding, batch_rows, progress) = (opts.encoding, opts.batch_rows, opts.progress);
    let header_names = opts.headers.of(feed);
    let RowParser { parse, mut settle } = parser;
    let send = |batch: Vec<Item<T>>, settle: &mut Option<Settle<T>>, bytes: u64, len: u64| {
        // Free what the writer has handed back ([`Recycle`]) on this thread.
        while let Ok(done) = recycled.try_recv() {
            drop(done);
        }
        let msg = match settle {
            Some(s) => {
                if s.seen.blocks.is_empty() {
                    s.seen = Bloom::for_file(len, bytes, batch.len() as u64);
                }
                Msg::Ready(s.settle(batch))
            }
            None => Msg::Batch(batch),
        };
        tx.blocking_send(msg).is_ok()
    };
    let shown = path.display().to_string();
    let refuse = |msg: String| {
        let _ = tx.blocking_send(Msg::Refused(format!("{shown}: {msg}")));
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return refuse(format!("cannot read: {e}")),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("import {}", feed.name()));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let decoded: Box<dyn Read> = match encoding {
        Encoding::Utf8 => Box::new(reader::SkipBom::new(bar.wrap_read(file))),
        Encoding::Gb18030 => Box::new(reader::Gb18030Reader::new(bar.wrap_read(file))),
    };
    let (input, newlines) = reader::LineCounter::new(decoded);
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(input);
    let columns = feed.columns();
    let mut record = csv::ByteRecord::new();
    let mut header: Option<reader::HeaderMap> = None;
    let mut batch = Vec::with_capacity(batch_rows);
    loop {
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return refuse(csv_error_message(&e)),
        }
        let line = newlines
            .borrow_mut()
            .line_at(record.position().map(|p| p.byte()).unwrap_or(0));
        // C9: blank (or whitespace-only) lines are skipped and not counted.
        if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        // One allocation per record: the original fields are kept for the
        // rejects file.
        let raw = match csv::StringRecord::from_byte_record(record.clone()) {
            Ok(r) => r,
            Err(e) => {
                let i = e.utf8_error().field();
                let col = match header.as_ref() {
                    Some(map) => header_name(map, columns, i),
                    None => format!("#{}", i + 1),
                };
                let hint = if encoding == Encoding::Utf8 {
                    " (is it GB18030/GBK? try --encoding gb18030)"
                } else {
                    ""
                };
                return refuse(format!("line {line}: field {col}: not valid UTF-8{hint}"));
            }
        };
        let Some(map) = header.as_ref() else {
            let names: Vec<String> = raw.iter().map(str::to_string).collect();
            match reader::map_header(&names, columns, header_names) {
                Ok(m) => {
                    if !m.unknown.is_empty() {
                        tracing::warn!(columns = %m.unknown.join(","), "unknown columns ignored (R1)");
                    }
                    header = Some(m);
                    if tx.blocking_send(Msg::Header(names)).is_err() {
                        return;
                    }
                }
                Err(msg) => return refuse(format!("line {line}: {msg}")),
            }
            continue;
        };
        let parsed = if raw.len() != map.width {
            Err(Rejection::wrong_field_count(raw.len(), map.width))
        } else if let Some(i) = raw.iter().position(|f| f.contains('\0')) {
            Err(Rejection::nul_character(&header_name(map, columns, i)))
        } else {
            let values = map
                .positions
                .iter()
                .map(|p| p.and_then(|i| raw.get(i)).map(str::trim).unwrap_or(""))
                .collect();
            parse(&Fields { values })
        };
        batch.push(Item { line, raw, parsed });
        if batch.len() >= batch_rows {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
            let bytes = record.position().map(|p| p.byte()).unwrap_or(0);
            if !send(full, &mut settle, bytes, len) {
                return;
            }
        }
    }
    bar.finish_and_clear();
    if let Some(msg) = newlines.borrow().quoting_error() {
        return refuse(msg.to_string());
    }
    if header.is_none() {
        return refuse("empty file: no header row".to_string());
    }
    if !batch.is_empty() {
        let _ = send(batch, &mut settle, len, len);
    }
}

/// The expected column at record position `i`, or `#n` for an unknown one.
fn header_name(map: &reader::HeaderMap, columns: &[(&str, bool)], i: usize) -> String {
    map.positions
        .iter()
        .position(|p| *p == Some(i))
        .map(|c| columns[c].0.to_string())
        .unwrap_or_else(|| format!("#{}", i + 1))
}

fn csv_error_message(e: &csv::Error) -> String {
    if let csv::ErrorKind::Io(io) = e.kind() {
        if let Some(inner) = io
            .get_ref()
            .and_then(|i| i.downcast_ref::<reader::InputError>())
        {
            return inner.to_string();
        }
        return format!("read error: {io}");
    }
    match e.position() {
        Some(p) => format!("line {}: malformed CSV: {e}", p.line()),
        None => format!("malformed CSV: {e}"),
    }
}

/// Per-file bookkeeping shared by the writers.
struct Tally {
    file: String,
    counts: ImportCounts,
    warnings: u64,
    rejects: Option<csv::Writer<std::fs::File>>,
    rejects_path: Option<PathBuf>,
    header: Vec<String>,
}

impl Tally {
    fn warn(&mut self, line: u64, msg: &str) {
        self.warnings += 1;
        if self.warnings <= WARNINGS_LOGGED {
            tracing::warn!(file = %self.file, line, "{msg}");
        } else if self.warnings == WARNINGS_LOGGED + 1 {
            tracing::warn!(file = %self.file, "further warnings for this file are counted, not logged");
        }
    }

    fn reject(&mut self, line: u64, reason: &str, raw: &csv::StringRecord) -> Result<()> {
        self.counts.rows_rejected += 1;
        let Some(path) = self.rejects_path.clone() else {
            return Ok(());
        };
        if self.rejects.is_none() {
            let file = crate::fsutil::create_private(&path)?;
            let mut w = csv::WriterBuilder::new().flexible(true).from_writer(file);
            let mut head = vec!["line".to_string(), "reason".to_string()];
            head.extend(
                self.header
                    .iter()
                    .map(|h| crate::audit::guard_formula(h).into_owned()),
            );
            w.write_record(&head).map_err(|e| rejects_error(&path, e))?;
            self.rejects = Some(w);
        }
        if let Some(w) = self.rejects.as_mut() {
            // Operators open rejects in a spreadsheet: a field that would run
            // as a formula gets R9's `'` prefix, as in the exports.
            let mut rec = vec![line.to_string(), reason.to_string()];
            rec.extend(
                raw.iter()
                    .map(|f| crate::audit::guard_formula(f).into_owned()),
            );
            w.write_record(&rec).map_err(|e| rejects_error(&path, e))?;
        }
        Ok(())
    }
}

fn rejects_error(path: &Path, e: csv::Error) -> Error {
    Error::Runtime(anyhow::anyhow!(
        "cannot write rejects file {}: {e}",
        path.display()
    ))
}

/// Hash of a row key, for spotting the same key twice in one file without
/// keeping every key in memory (8 bytes each plus the line).
fn key_hash(key: &str) -> u64 {
    KEY_HASH.hash_one(key)
}

/// [`key_hash`] of a key as [`Keyed::key_ref`] gives it.
fn pair_hash(key: (&str, u64)) -> u64 {
    KEY_HASH.hash_one(key)
}

/// A fixed seed (the same filter for the same file, run after run), and
/// foldhash's quality variant: the Bloom filter takes its block and bits
/// from the hash's bits, so they must all be well mixed.
const KEY_HASH: foldhash::quality::FixedState =
    foldhash::quality::FixedState::with_seed(0x6175_746f_7369_676e);

/// What a writer does with one batch inside the import transaction.
trait BatchWriter<T> {
    /// Decides and writes records that need the database to decide.
    async fn write(
        &mut self,
        tx: &mut ImportTx,
        items: Vec<Item<T>>,
        tally: &mut Tally,
        recycle: &Recycle,
    ) -> Result<()>;

    /// Writes rows already settled on the parser thread, with the rows of
    /// the batch whose key may have come in an earlier one.
    async fn write_ready(
        &mut self,
        tx: &mut ImportTx,
        rows: Vec<T>,
        suspects: Vec<KeySuspect>,
        recycle: &Recycle,
    ) -> Result<()>;

    /// Completes the file once every batch is in (a staging writer decides
    /// and writes here), before the reject ratio is checked.
    async fn finish(&mut self, _tx: &mut ImportTx, _tally: &mut Tally) -> Result<()> {
        Ok(())
    }
}

/// Hands what the writer is done with back to the parser thread that
/// allocated it, to be freed there: with mimalloc a free on the allocating
/// thread is local and cheap, one on the writer a cross-thread free, and
/// the writer (the one thread talking to the database) is the import's
/// bottleneck. If the parser has finished, the value is freed here.
struct Recycle(std::sync::mpsc::Sender<Box<dyn Send>>);

impl Recycle {
    fn give<V: Send + 'static>(&self, value: V) {
        let _ = self.0.send(Box::new(value));
    }
}

async fn run_import<T, W>(
    db: &Db,
    feed: Feed,
    path: &Path,
    sha: &str,
    opts: &ImportOptions,
    parser: RowParser<T>,
    mut writer: W,
) -> Result<ImportReport>
where
    T: Keyed + Send + 'static,
    W: BatchWriter<T>,
{
    let shown = path.display().to_string();
    let (sender, mut receiver) = mpsc::channel::<Msg<T>>(4);
    let (p, o) = (path.to_path_buf(), opts.clone());
    let (recycle, recycled) = std::sync::mpsc::channel();
    let recycle = Recycle(recycle);
    let parser =
        tokio::task::spawn_blocking(move || parse_file(feed, p, o, parser, sender, recycled));

    let mut tx = db
        .begin_import(
            feed.name(),
            &shown,
            sha,
            opts.delivery,
            &opts.clock.now_rfc3339(),
        )
        .await?;
    let mut tally = Tally {
        file: shown.clone(),
        counts: ImportCounts {
            rows_read: 0,
            rows_imported: 0,
            rows_rejected: 0,
        },
        warnings: 0,
        rejects: None,
        rejects_path: opts.rejects.clone(),
        header: Vec::new(),
    };
    let mut refused = None;
    while let Some(msg) = receiver.recv().await {
        match msg {
            Msg::Header(h) => tally.header = h,
            Msg::Batch(items) => {
                tally.counts.rows_read += items.len() as u64;
                let result = writer.write(&mut tx, items, &mut tally, &recycle).await;
                crate::faults::point("import.batch_written");
                if let Err(e) = result {
                    drop(receiver);
                    let _ = tx.rollback().await;
                    let _ = parser.await;
                    return Err(e);
                }
            }
            Msg::Ready(batch) => {
                tally.counts.rows_read += batch.read;
                tally.counts.rows_imported += batch.accepted;
                let mut step = || -> Result<()> {
                    for (line, reason, raw) in &batch.rejects {
                        tally.reject(*line, &reason.to_string(), raw)?;
                    }
                    for (line, w) in &batch.warnings {
                        tally.warn(*line, w);
                    }
                    Ok(())
                };
                let result = match step() {
                    Ok(()) => {
                        writer
                            .write_ready(&mut tx, batch.rows, batch.suspects, &recycle)
                            .await
                    }
                    Err(e) => Err(e),
                };
                crate::faults::point("import.batch_written");
                if let Err(e) = result {
                    drop(receiver);
                    let _ = tx.rollback().await;
                    let _ = parser.await;
                    return Err(e);
                }
            }
            Msg::Refused(why) => refused = Some(why),
        }
    }
    parser
        .await
        .map_err(|e| Error::Runtime(anyhow::anyhow!("parser thread failed for {shown}: {e}")))?;
    if refused.is_none() {
        let result = writer.finish(&mut tx, &mut tally).await;
        crate::faults::point("import.batch_written");
        if let Err(e) = result {
            let _ = tx.rollback().await;
            return Err(e);
        }
    }
    if let Some(w) = tally.rejects.as_mut() {
        w.flush()
            .map_err(|e| Error::io(format!("cannot write rejects file for {shown}"), e))?;
    }
    if let Some(why) = refused {
        tx.rollback().await?;
        return Err(Error::InputRefused(format!("{why}; nothing imported")));
    }
    let c = tally.counts;
    // C9: refused when rejected / data rows is strictly greater than the ratio.
    if c.rows_read > 0 && (c.rows_rejected as f64) > opts.max_reject_ratio * (c.rows_read as f64) {
        tx.rollback().await?;
        let rejects = match &tally.rejects_path {
            Some(p) if c.rows_rejected > 0 => format!("; rejects in {}", p.display()),
            _ => String::new(),
        };
        return Err(Error::InputRefused(format!(
            "{shown}: {} of {} rows rejected ({:.1}%), more than max_reject_ratio {}; nothing imported{rejects}",
            c.rows_rejected,
            c.rows_read,
            100.0 * c.rows_rejected as f64 / c.rows_read as f64,
            opts.max_reject_ratio
        )));
    }
    // R2: a suspect's key came earlier in the file if a row this import
    // wrote before it has the key (Bloom filter hits are only candidates).
    let mut repeated = tx.earlier_lines().await?;
    repeated.sort_unstable();
    for (line, earlier) in repeated {
        tally.warn(line, &same_key_warning(earlier));
    }
    let import_id = tx.import_id();
    tx.commit(c).await?;
    Ok(ImportReport {
        import_id,
        counts: c,
        warnings: tally.warnings,
        rejects: if c.rows_rejected > 0 {
            tally.rejects_path
        } else {
            None
        },
    })
}

/// The key a row replaces by (R2).
trait Keyed {
    /// The key without allocating: `id_number` (or `permit_no`) and the
    /// second part as a number that equals another row's exactly when the
    /// parts do (a date's day number, a month's packed bytes, or 0).
    fn key_ref(&self) -> (&str, u64);
    /// The key as (`id_number`, the second part as stored, or empty).
    fn key_parts(&self) -> (&str, String);
    fn set_line(&mut self, line: u64);
}

impl Keyed for crate::db::ResidenceRow {
    fn key_ref(&self) -> (&str, u64) {
        (
            &self.id_number,
            u64::from(chrono::Datelike::num_days_from_ce(&self.visited_on) as u32),
        )
    }
    fn key_parts(&self) -> (&str, String) {
        (&self.id_number, self.visited_on.to_string())
    }
    fn set_line(&mut self, line: u64) {
        self.line = line;
    }
}

impl Keyed for crate::db::SocialInsuranceRow {
    fn key_ref(&self) -> (&str, u64) {
        (&self.id_number, pack_month(&self.month))
    }
    fn key_parts(&self) -> (&str, String) {
        (&self.id_number, self.month.clone())
    }
    fn set_line(&mut self, line: u64) {
        self.line = line;
    }
}

impl Keyed for crate::db::CivilStatusRow {
    fn key_ref(&self) -> (&str, u64) {
        (&self.id_number, 0)
    }
    fn key_parts(&self) -> (&str, String) {
        (&self.id_number, String::new())
    }
    fn set_line(&mut self, line: u64) {
        self.line = line;
    }
}

/// Permit rows are decided against the register by [`PermitsWriter`], not
/// settled on the parser thread; the key is for its Bloom filter.
impl Keyed for (PermitRow, Option<PermitStatus>) {
    fn key_ref(&self) -> (&str, u64) {
        (&self.0.permit_no, 0)
    }
    fn key_parts(&self) -> (&str, String) {
        (&self.0.permit_no, String::new())
    }
    fn set_line(&mut self, _: u64) {}
}

/// A month as stored (`YYYY-MM`, 7 bytes) packed into a number, byte for
/// byte: two months pack equal exactly when they are equal. (A longer text
/// cannot come from the row parser; its bytes past the eighth are folded
/// in by hash so that it still packs deterministically.)
fn pack_month(month: &str) -> u64 {
    let bytes = month.as_bytes();
    if bytes.len() <= 8 {
        bytes.iter().fold(0, |acc, &b| acc << 8 | u64::from(b))
    } else {
        key_hash(month) | 1 << 63
    }
}

/// Rows that insert or replace by key.
trait Upsert: Sized {
    async fn upsert(tx: &mut ImportTx, rows: &[Self], suspects: &[KeySuspect]) -> Result<()>;
}

impl Upsert for crate::db::ResidenceRow {
    async fn upsert(tx: &mut ImportTx, rows: &[Self], suspects: &[KeySuspect]) -> Result<()> {
        tx.upsert_residence(rows, suspects).await
    }
}

impl Upsert for crate::db::SocialInsuranceRow {
    async fn upsert(tx: &mut ImportTx, rows: &[Self], suspects: &[KeySuspect]) -> Result<()> {
        tx.upsert_social_insurance(rows, suspects).await
    }
}

impl Upsert for crate::db::CivilStatusRow {
    async fn upsert(tx: &mut ImportTx, rows: &[Self], suspects: &[KeySuspect]) -> Result<()> {
        tx.upsert_civil_status(rows, suspects).await
    }
}

/// Writer for residence, social-insurance and civil-status rows, which are
/// settled on the parser thread ([`Settle`]): it only writes.
struct KeyedWriter<T> {
    _row: std::marker::PhantomData<T>,
}

impl<T> Default for KeyedWriter<T> {
    fn default() -> Self {
        KeyedWriter {
            _row: std::marker::PhantomData,
        }
    }
}

impl<T: Keyed + Upsert + Send + 'static> BatchWriter<T> for KeyedWriter<T> {
    async fn write(
        &mut self,
        _: &mut ImportTx,
        _: Vec<Item<T>>,
        _: &mut Tally,
        _: &Recycle,
    ) -> Result<()> {
        Err(Error::Runtime(anyhow::anyhow!(
            "internal: keyed feed rows arrived unsettled"
        )))
    }

    async fn write_ready(
        &mut self,
        tx: &mut ImportTx,
        rows: Vec<T>,
        suspects: Vec<KeySuspect>,
        recycle: &Recycle,
    ) -> Result<()> {
        let written = T::upsert(tx, &rows, &suspects).await;
        recycle.give(rows);
        written
    }
}

/// A permit row parsed and held for sorting: its line, the parsed row, the
/// file's `status` column if given (C5), the parser's warnings (logged if
/// the row is accepted) and the original fields (for the rejects file).
struct HeldPermit {
    line: u64,
    row: PermitRow,
    given_status: Option<PermitStatus>,
    warnings: Vec<String>,
    raw: Vec<String>,
}

impl HeldPermit {
    /// (permit_no, line): the rows of one permit together, in line order.
    fn sort_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.row.permit_no.len() + 8);
        key.extend_from_slice(self.row.permit_no.as_bytes());
        key.extend_from_slice(&self.line.to_be_bytes());
        key
    }

    fn encode(&self) -> Vec<u8> {
        let p = &self.row;
        let mut e = sort::Encoder::default();
        e.u64(self.line)
            .str(&p.permit_no)
            .str(&p.id_number)
            .str(&p.name)
            .opt(p.phone.as_deref())
            .opt(p.email.as_deref())
            .str(&p.district_code)
            .str(&p.street_code)
            .str(&p.address)
            .str(&p.valid_until.format("%Y-%m-%d").to_string())
            .str(p.status.code())
            .str(&p.employer_uscc)
            .str(p.si_status.code())
            .str(p.marital_status.code())
            .opt(self.given_status.map(|s| s.code()))
            .u64(self.warnings.len() as u64);
        for w in &self.warnings {
            e.str(w);
        }
        for f in &self.raw {
            e.str(f);
        }
        e.into_bytes()
    }

    fn decode(bytes: &[u8]) -> std::io::Result<HeldPermit> {
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let mut d = sort::Decoder::new(bytes);
        let line = d.u64()?;
        let row = PermitRow {
            permit_no: d.str()?,
            id_number: d.str()?,
            name: d.str()?,
            phone: d.opt()?,
            email: d.opt()?,
            district_code: d.str()?,
            street_code: d.str()?,
            address: d.str()?,
            valid_until: crate::domain::parse_date(&d.str()?).map_err(|e| bad(e.to_string()))?,
            status: d.str()?.try_into().map_err(bad)?,
            employer_uscc: d.str()?,
            si_status: d.str()?.try_into().map_err(bad)?,
            marital_status: d.str()?.try_into().map_err(bad)?,
        };
        let given_status = d
            .opt()?
            .map(|s| PermitStatus::parse(&s).map_err(|e| bad(e.to_string())))
            .transpose()?;
        let warnings = (0..d.u64()?)
            .map(|_| d.str())
            .collect::<std::io::Result<_>>()?;
        let mut raw = Vec::new();
        while !d.is_empty() {
            raw.push(d.str()?);
        }
        Ok(HeldPermit {
            line,
            row,
            given_status,
            warnings,
            raw,
        })
    }
}

/// A rejected row or a warning, held until the file is decided so that
/// the rejects file and the log read in line order.
struct Note {
    line: u64,
    /// The original fields of a rejected row; `None` for a warning.
    rejected: Option<Vec<String>>,
    text: String,
}

impl Note {
    /// What [`PermitsWriter::note`] encoded: whether it is a reject, the
    /// line, the text, then a reject's fields.
    fn decode(bytes: &[u8]) -> std::io::Result<Note> {
        let mut d = sort::Decoder::new(bytes);
        let rejected = d.u64()? == 1;
        let line = d.u64()?;
        let text = d.str()?;
        let fields = if rejected {
            let mut fields = Vec::new();
            while !d.is_empty() {
                fields.push(d.str()?);
            }
            Some(fields)
        } else {
            None
        };
        Ok(Note {
            line,
            rejected: fields,
            text,
        })
    }
}

/// Sorted rows decided and written per round trip.
const DECIDE_ROWS: usize = 10_000;

/// Writer for the permit register (R2, C5, C6). Parsed rows are held in an
/// external sort by (permit_no, line) while the file is read; once it is
/// read, they come back in key order and are decided against the permit
/// as stored before the file and written, a page at a time. The register's
/// lookups and writes then walk its pages in key order, once, whatever
/// order the file's keys come in (a file in random key order would
/// otherwise touch a random page of the register per row), a permit's rows
/// are decided together (no per-key state across the file), and memory is
/// bounded by the sort's budget and the page, not the file.
struct PermitsWriter {
    rows: sort::ExternalSort,
    notes: sort::ExternalSort,
    /// Notes so far: their order among notes of the same line.
    noted: u64,
    /// The permit being decided (its rows may span pages).
    current: Option<Deciding>,
    /// The register was empty when this file began: nothing to look up.
    empty_register: Option<bool>,
}

/// A permit whose rows are being decided.
struct Deciding {
    permit_no: String,
    /// As stored before the file (`None`: new).
    stored: Option<PriorPermit>,
    /// The line of its latest accepted row so far.
    earlier: Option<u64>,
    /// That row's write (R2: the later line wins).
    write: Option<PermitWrite>,
}

impl Default for PermitsWriter {
    fn default() -> Self {
        PermitsWriter {
            rows: sort::ExternalSort::new(sort::RUN_BYTES),
            notes: sort::ExternalSort::new(sort::RUN_BYTES / 8),
            noted: 0,
            current: None,
            empty_register: None,
        }
    }
}

fn sort_error(e: std::io::Error) -> Error {
    Error::io("cannot sort the permit rows in temporary files (TMPDIR)", e)
}

impl PermitsWriter {
    /// Whether the register was empty when this file began (asked once).
    async fn register_was_empty(&mut self, tx: &mut ImportTx) -> Result<bool> {
        match self.empty_register {
            Some(e) => Ok(e),
            None => Ok(*self.empty_register.insert(tx.register_is_empty().await?)),
        }
    }

    fn note(&mut self, note: Note) -> Result<()> {
        let mut key = note.line.to_be_bytes().to_vec();
        key.extend_from_slice(&self.noted.to_be_bytes());
        self.noted += 1;
        let mut e = sort::Encoder::default();
        e.u64(u64::from(note.rejected.is_some()))
            .u64(note.line)
            .str(&note.text);
        for f in note.rejected.iter().flatten() {
            e.str(f);
        }
        self.notes.push(key, e.into_bytes()).map_err(sort_error)
    }

    /// Decides one row (rows come in (permit_no, line) order); the write
    /// of a permit whose rows are all seen goes to `done`. Returns 1 if the
    /// row is accepted.
    fn decide(
        &mut self,
        held: HeldPermit,
        stored: Option<PriorPermit>,
        done: &mut Vec<PermitWrite>,
    ) -> Result<u64> {
        if self
            .current
            .as_ref()
            .is_some_and(|d| d.permit_no != held.row.permit_no)
        {
            done.extend(self.current.take().and_then(|d| d.write));
        }
        let d = self.current.get_or_insert_with(|| Deciding {
            permit_no: held.row.permit_no.clone(),
            stored,
            earlier: None,
            write: None,
        });
        let mark = ImportMark {
            line: held.line,
            prior: d.stored,
        };
        match permit_write(held.row, held.given_status, mark) {
            Err(rejection) => {
                let text = rejection.to_string();
                self.note(Note {
                    line: held.line,
                    rejected: Some(held.raw),
                    text,
                })?;
                Ok(0)
            }
            Ok(w) => {
                d.write = Some(w);
                let earlier = d.earlier.replace(held.line);
                for text in held.warnings {
                    self.note(Note {
                        line: held.line,
                        rejected: None,
                        text,
                    })?;
                }
                if let Some(earlier) = earlier {
                    self.note(Note {
                        line: held.line,
                        rejected: None,
                        text: same_permit_warning(earlier),
                    })?;
                }
                Ok(1)
            }
        }
    }

    /// Looks up, decides and writes one page of sorted rows.
    async fn decide_page(
        &mut self,
        tx: &mut ImportTx,
        page: Vec<HeldPermit>,
        last: bool,
        tally: &mut Tally,
    ) -> Result<()> {
        let empty = self.register_was_empty(tx).await?;
        // Into an empty register no row has a stored value to look up.
        let stored = if empty || page.is_empty() {
            HashMap::new()
        } else {
            let mut keys: Vec<&str> = page.iter().map(|h| h.row.permit_no.as_str()).collect();
            keys.dedup();
            tx.lookup_permits(&keys).await?
        };
        let mut done = Vec::with_capacity(page.len());
        for held in page {
            // A permit whose rows span pages keeps what the first page
            // found: this import has not written it yet.
            let prior = stored.get(&held.row.permit_no).copied();
            tally.counts.rows_imported += self.decide(held, prior, &mut done)?;
        }
        if last {
            done.extend(self.current.take().and_then(|d| d.write));
        }
        let (mut full, mut contacts) = (Vec::new(), Vec::new());
        for w in done {
            match w {
                PermitWrite::Full(r, mark) => full.push((r, mark)),
                PermitWrite::Contacts(c) => contacts.push(c),
            }
        }
        if !full.is_empty() {
            tx.upsert_permits(&full).await?;
        }
        if !contacts.is_empty() {
            tx.update_contacts(&contacts).await?;
        }
        Ok(())
    }
}

impl BatchWriter<(PermitRow, Option<PermitStatus>)> for PermitsWriter {
    async fn write(
        &mut self,
        tx: &mut ImportTx,
        items: Vec<Item<(PermitRow, Option<PermitStatus>)>>,
        _: &mut Tally,
        recycle: &Recycle,
    ) -> Result<()> {
        let empty = self.register_was_empty(tx).await?;
        let mut raws = Vec::with_capacity(items.len());
        for item in items {
            let raw = || item.raw.iter().map(str::to_string).collect();
            match item.parsed {
                Err(rejection) => self.note(Note {
                    line: item.line,
                    rejected: Some(raw()),
                    text: rejection.to_string(),
                })?,
                Ok(p) => {
                    let held = HeldPermit {
                        line: item.line,
                        row: p.row.0,
                        given_status: p.row.1,
                        warnings: p.warnings,
                        // Only a stored permit can reject a parsed row
                        // (VALID_UNTIL_BACKWARDS): into an empty register
                        // the original fields are not kept, halving what
                        // an initial load sorts.
                        raw: if empty { Vec::new() } else { raw() },
                    };
                    self.rows
                        .push(held.sort_key(), held.encode())
                        .map_err(sort_error)?;
                }
            }
            raws.push(item.raw);
        }
        recycle.give(raws);
        Ok(())
    }

    async fn write_ready(
        &mut self,
        _: &mut ImportTx,
        _: Vec<(PermitRow, Option<PermitStatus>)>,
        _: Vec<KeySuspect>,
        _: &Recycle,
    ) -> Result<()> {
        Err(Error::Runtime(anyhow::anyhow!(
            "internal: permit rows must be decided against the register"
        )))
    }

    async fn finish(&mut self, tx: &mut ImportTx, tally: &mut Tally) -> Result<()> {
        let rows = std::mem::replace(&mut self.rows, sort::ExternalSort::new(0));
        let mut sorted = rows.finish().map_err(sort_error)?;
        loop {
            let mut page = Vec::with_capacity(DECIDE_ROWS);
            while page.len() < DECIDE_ROWS {
                match sorted.next_record().map_err(sort_error)? {
                    Some((_, record)) => {
                        page.push(HeldPermit::decode(&record).map_err(sort_error)?)
                    }
                    None => break,
                }
            }
            let last = page.len() < DECIDE_ROWS;
            self.decide_page(tx, page, last, tally).await?;
            if last {
                break;
            }
        }
        // Rejects and warnings in line order, as the file reads.
        let notes = std::mem::replace(&mut self.notes, sort::ExternalSort::new(0));
        let mut sorted = notes.finish().map_err(sort_error)?;
        while let Some((_, record)) = sorted.next_record().map_err(sort_error)? {
            let note = Note::decode(&record).map_err(sort_error)?;
            match note.rejected {
                None => tally.warn(note.line, &note.text),
                Some(fields) => {
                    let raw = csv::StringRecord::from(fields);
                    tally.reject(note.line, &note.text, &raw)?;
                }
            }
        }
        Ok(())
    }
}

/// Where an inbox file's rejects go: `<dir>/<feed>/<file name>.rejects.csv`.
pub fn rejects_path_in(dir: &Path, feed: Feed, file: &Path) -> PathBuf {
    let mut name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".rejects.csv");
    dir.join(feed.name()).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(no: &str, line: u64, valid_until: &str) -> HeldPermit {
        HeldPermit {
            line,
            row: PermitRow {
                permit_no: no.into(),
                id_number: "110101198503150019".into(),
                name: "测试".into(),
                phone: Some("13800138000".into()),
                email: None,
                district_code: "310115".into(),
                street_code: "310115004".into(),
                address: "上海市浦东新区".into(),
                valid_until: crate::domain::parse_date(valid_until).unwrap(),
                status: PermitStatus::Active,
                employer_uscc: String::new(),
                si_status: crate::domain::SiStatus::NotPaying,
                marital_status: crate::domain::MaritalStatus::Single,
            },
            given_status: None,
            warnings: vec!["USCC check".into()],
            raw: vec![no.into(), "a,b".into(), String::new()],
        }
    }

    #[test]
    fn a_held_permit_row_decodes_to_what_was_encoded() {
        let mut h = held("SH1", 7, "2027-02-28");
        h.given_status = Some(PermitStatus::Cancelled);
        h.row.email = Some("a@example.com".into());
        let back = HeldPermit::decode(&h.encode()).unwrap();
        assert_eq!(back.line, 7);
        assert_eq!(format!("{:?}", back.row), format!("{:?}", h.row));
        assert_eq!(back.row.email, h.row.email);
        assert_eq!(back.row.phone, h.row.phone);
        assert_eq!(back.given_status, h.given_status);
        assert_eq!(back.warnings, h.warnings);
        assert_eq!(back.raw, h.raw);
        // Sort keys order by permit_no, then line.
        assert!(held("SH1", 9, "2027-01-01").sort_key() < held("SH1", 10, "2027-01-01").sort_key());
        assert!(held("SH1", 10, "2027-01-01").sort_key() < held("SH2", 2, "2027-01-01").sort_key());
    }

    #[test]
    fn notes_come_back_in_line_order_as_noted_whatever_their_line() {
        // Lines whose low byte is zero (256, 512) once read as warnings.
        let mut w = PermitsWriter::default();
        for (line, rejected) in [
            (512, None),
            (256, Some(vec!["SH1".to_string(), String::new()])),
            (1, None),
            (256, None),
        ] {
            w.note(Note {
                line,
                rejected,
                text: format!("note {line}"),
            })
            .unwrap();
        }
        let mut notes = std::mem::replace(&mut w.notes, sort::ExternalSort::new(0))
            .finish()
            .unwrap();
        let mut got = Vec::new();
        while let Some((_, record)) = notes.next_record().unwrap() {
            let n = Note::decode(&record).unwrap();
            got.push((n.line, n.rejected, n.text));
        }
        let fields = Some(vec!["SH1".to_string(), String::new()]);
        assert_eq!(
            got,
            [
                (1, None, "note 1".to_string()),
                (256, fields, "note 256".to_string()),
                (256, None, "note 256".to_string()),
                (512, None, "note 512".to_string()),
            ]
        );
    }

    #[test]
    fn a_permits_rows_are_decided_together_against_the_value_before_the_file_c6() {
        let mut w = PermitsWriter::default();
        let stored = Some(PriorPermit {
            valid_until: crate::domain::parse_date("2027-01-01").unwrap(),
            status: PermitStatus::Suspended,
        });
        let mut done = Vec::new();
        // SH1's rows span two pages: the second page's lookup (here: none)
        // does not replace what the first found.
        assert_eq!(
            w.decide(held("SH1", 2, "2027-06-01"), stored, &mut done)
                .unwrap(),
            1
        );
        assert_eq!(
            w.decide(held("SH1", 5, "2026-06-01"), None, &mut done)
                .unwrap(),
            0
        );
        assert_eq!(
            w.decide(held("SH1", 8, "2027-03-01"), None, &mut done)
                .unwrap(),
            1
        );
        assert!(done.is_empty(), "SH1 is written once all its rows are seen");
        assert_eq!(
            w.decide(held("SH2", 3, "2027-01-01"), None, &mut done)
                .unwrap(),
            1
        );
        let [PermitWrite::Full(row, mark)] = done.as_slice() else {
            panic!("one full write for SH1");
        };
        // R2: the later accepted line wins; C5: it restores the suspended
        // permit; C6: line 5 went backwards from the stored value.
        assert_eq!((row.permit_no.as_str(), mark.line), ("SH1", 8));
        assert_eq!(row.valid_until.to_string(), "2027-03-01");
        assert_eq!(row.status, PermitStatus::Active);
        assert_eq!(mark.prior, stored);
        // Notes: line 2's warning; line 5 rejected; line 8's warning and
        // its repeat of line 2; SH2's warning.
        let mut notes = std::mem::replace(&mut w.notes, sort::ExternalSort::new(0))
            .finish()
            .unwrap();
        let mut got = Vec::new();
        while let Some((_, record)) = notes.next_record().unwrap() {
            let n = Note::decode(&record).unwrap();
            got.push((n.line, n.rejected.is_none(), n.text));
        }
        let got: Vec<(u64, bool, &str)> = got
            .iter()
            .map(|(l, w, t)| (*l, *w, t.split(':').next().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (2, true, "USCC check"),
                (3, true, "USCC check"),
                (5, false, "VALID_UNTIL_BACKWARDS"),
                (8, true, "USCC check"),
                (
                    8,
                    true,
                    "same permit_no as line 2; the later line wins (R2, C6)"
                ),
            ]
        );
    }

    #[test]
    fn key_ref_is_equal_exactly_when_the_key_is() {
        // R2 settles repeats by key_ref on the parser thread; it must never
        // merge two keys nor split one.
        let si = |id: &str, month: &str| crate::db::SocialInsuranceRow {
            id_number: id.to_string(),
            month: month.to_string(),
            status: "paid".to_string(),
            employer_uscc: String::new(),
            employer_name: String::new(),
            line: 0,
        };
        let visit = |id: &str, day: u32| crate::db::ResidenceRow {
            id_number: id.to_string(),
            visited_on: chrono::NaiveDate::from_ymd_opt(2026, 1, day).expect("date"),
            result: "verified".to_string(),
            address: String::new(),
            officer_id: String::new(),
            line: 0,
        };
        let si_rows = [
            si("110101197001011019", "2026-09"),
            si("110101197001011019", "2026-10"),
            si("110101197007311020", "2026-09"),
            si("110101197001011019", "2026-09"),
            si("110101197001011019", "2025-09"),
        ];
        let visits = [
            visit("110101197001011019", 1),
            visit("110101197001011019", 2),
            visit("110101197007311020", 1),
            visit("110101197001011019", 1),
        ];
        fn check<T: Keyed>(rows: &[T]) {
            for a in rows {
                for b in rows {
                    assert_eq!(
                        a.key_ref() == b.key_ref(),
                        a.key_parts() == b.key_parts(),
                        "{:?}",
                        a.key_parts()
                    );
                }
            }
        }
        check(&si_rows);
        check(&visits);
        assert_ne!(pack_month("2026-09"), pack_month("2026-10"));
        assert_eq!(pack_month("2026-09"), pack_month("2026-09"));
    }

    #[test]
    fn bloom_filter_says_a_key_may_have_come_before_only_after_it_did() {
        // R2 duplicate-key warning: a miss is exact, a hit is a candidate.
        let mut bloom = Bloom::for_rows(0);
        let keys: Vec<u64> = (0..10_000u64).map(|i| key_hash(&format!("k{i}"))).collect();
        let hits_first = keys.iter().filter(|h| bloom.insert(**h)).count();
        assert!(hits_first < 10, "false positives: {hits_first}");
        assert!(
            keys.iter().all(|h| bloom.insert(*h)),
            "every repeat is a hit"
        );
    }
}

/// Entry points for `cargo fuzz` (fuzz/): the import's reading side, from
/// bytes to rows, rejects and refusals, without a database.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// Reads `path` as a file of `feed` the way an import does (decoding,
    /// CSV framing, line numbers, header mapping, row parsing, R2 settling
    /// with the Bloom filter), in batches of `batch_rows`,
    /// and checks what comes out: lines only grow, every record read is
    /// one accepted row, one reject or part of a refusal.
    pub fn read_file(feed: Feed, encoding: Encoding, batch_rows: usize, path: &Path) {
        let opts = ImportOptions {
            encoding,
            rejects: None,
            max_reject_ratio: 1.0,
            batch_rows: batch_rows.max(1),
            progress: false,
            headers: HeaderNames::builtin(),
            delivery: Delivery::Snapshot,
            clock: crate::clock::Clock::system(chrono_tz::UTC),
        };
        match feed {
            Feed::Permits => run(feed, path, opts, RowParser::unsettled(parse::permit)),
            Feed::Residence => run(feed, path, opts, RowParser::keyed(parse::residence)),
            Feed::SocialInsurance => {
                run(feed, path, opts, RowParser::keyed(parse::social_insurance))
            }
            Feed::CivilStatus => run(feed, path, opts, RowParser::keyed(parse::civil_status)),
        }
    }

    fn run<T: Keyed + Send + 'static>(
        feed: Feed,
        path: &Path,
        opts: ImportOptions,
        parser: RowParser<T>,
    ) {
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let (_recycle, recycled) = std::sync::mpsc::channel();
        parse_file(feed, path.to_path_buf(), opts, parser, tx, recycled);
        let mut last_line = 0;
        let mut refused = false;
        while let Ok(msg) = rx.try_recv() {
            assert!(!refused, "nothing follows a refusal");
            match msg {
                Msg::Header(_) => assert_eq!(last_line, 0, "the header comes first"),
                Msg::Batch(items) => {
                    for item in items {
                        assert!(
                            item.line > last_line,
                            "lines grow: {} after {last_line}",
                            item.line
                        );
                        last_line = item.line;
                    }
                }
                Msg::Ready(batch) => {
                    assert!(batch.accepted + batch.rejects.len() as u64 == batch.read);
                    assert!(batch.rows.len() as u64 <= batch.accepted);
                    for (line, reason, _) in &batch.rejects {
                        assert!(*line > 0 && !reason.code.is_empty(), "{line} {reason}");
                    }
                }
                Msg::Refused(why) => {
                    assert!(!why.is_empty());
                    refused = true;
                }
            }
        }
    }
}
