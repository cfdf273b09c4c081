//! Feed import (R1, R2): a file is hashed, parsed on a blocking thread,
//! validated row by row, and written in batches inside one transaction —
//! all of its accepted rows or nothing. Rejected rows go to a rejects CSV;
//! too many of them refuse the whole file.

mod parse;
mod reader;
pub mod rules;
mod sort;

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::Instrument;

pub use crate::domain::{Delivery, Encoding, Feed, HeaderNames};
pub use parse::MAX_FIELD_CHARS;

use crate::db::{Db, ImportCounts, ImportMark, ImportRecord, ImportTx, PermitRow, PriorPermit};
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
                let writer = PermitsWriter::default();
                run_import(db, feed, path, &sha, opts, parse::permit, writer).await
            }
            Feed::Residence => {
                let writer = FeedWriter::default();
                run_import(db, feed, path, &sha, opts, parse::residence, writer).await
            }
            Feed::SocialInsurance => {
                let writer = FeedWriter::default();
                run_import(db, feed, path, &sha, opts, parse::social_insurance, writer).await
            }
            Feed::CivilStatus => {
                let writer = FeedWriter::default();
                run_import(db, feed, path, &sha, opts, parse::civil_status, writer).await
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

/// One record as the reader thread sends it: its line and original fields.
struct RawRow {
    line: u64,
    raw: csv::StringRecord,
}

enum Msg {
    /// The header's cells and how they map to the feed's columns.
    Header(Vec<String>, Arc<reader::HeaderMap>),
    /// Records, in line order.
    Batch(Vec<RawRow>),
    Refused(String),
}

type ParseFn<T> = fn(&Fields) -> Result<Parsed<T>, Rejection>;

/// Validates one record into a row or a rejection (R1). Called a batch at
/// a time on a blocking thread of its own, neither the reader's (CSV
/// framing, decoding, line numbers: busy enough while a file is read) nor
/// the writer's, which meanwhile takes the batch before into the sort.
fn parse_row<T>(map: &reader::HeaderMap, feed: Feed, parse: ParseFn<T>, row: RawRow) -> Item<T> {
    let RawRow { line, raw } = row;
    let parsed = if raw.len() != map.width {
        Err(Rejection::wrong_field_count(raw.len(), map.width))
    } else if let Some(i) = raw.iter().position(|f| f.contains('\0')) {
        Err(Rejection::nul_character(&header_name(
            map,
            feed.columns(),
            i,
        )))
    } else {
        let values = map
            .positions
            .iter()
            .map(|p| p.and_then(|i| raw.get(i)).map(str::trim).unwrap_or(""))
            .collect();
        parse(&Fields { values })
    };
    Item { line, raw, parsed }
}

/// Reads `path` on the calling (blocking) thread and sends batches of
/// records, in line order.
fn read_file(
    feed: Feed,
    path: PathBuf,
    opts: ImportOptions,
    tx: mpsc::Sender<Msg>,
    recycled: Recycled,
) {
    let (encoding, batch_rows, progress) = (opts.encoding, opts.batch_rows, opts.progress);
    let header_names = opts.headers.of(feed);
    let send = |batch: Vec<RawRow>| {
        free_recycled(&recycled);
        tx.blocking_send(Msg::Batch(batch)).is_ok()
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
    let mut header: Option<Arc<reader::HeaderMap>> = None;
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
        if header.is_none() {
            let names: Vec<String> = raw.iter().map(str::to_string).collect();
            match reader::map_header(&names, columns, header_names) {
                Ok(m) => {
                    if !m.unknown.is_empty() {
                        tracing::warn!(columns = %m.unknown.join(","), "unknown columns ignored (R1)");
                    }
                    let m = Arc::new(m);
                    header = Some(Arc::clone(&m));
                    if tx.blocking_send(Msg::Header(names, m)).is_err() {
                        return;
                    }
                }
                Err(msg) => return refuse(format!("line {line}: {msg}")),
            }
            continue;
        }
        batch.push(RawRow { line, raw });
        if batch.len() >= batch_rows {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
            if !send(full) {
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
        let _ = send(batch);
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

    /// Completes the file once every batch is in (the writers decide and
    /// write here, in key order), before the reject ratio is checked.
    async fn finish(&mut self, tx: &mut ImportTx, tally: &mut Tally) -> Result<()>;
}

/// Hands what the writer is done with back to the reader thread that
/// allocated it, to be freed there: with mimalloc a free on the allocating
/// thread is local and cheap, one on the writer a cross-thread free, and
/// the writer (the one thread talking to the database) is the import's
/// bottleneck. If the reader has finished, the value is freed here.
struct Recycle(std::sync::mpsc::Sender<Box<dyn Send>>);

impl Recycle {
    /// A `Recycle` and the receiving end, for the thread that allocates.
    fn new() -> (Recycle, Recycled) {
        let (give, given) = std::sync::mpsc::channel();
        (Recycle(give), given)
    }

    fn give<V: Send + 'static>(&self, value: V) {
        let _ = self.0.send(Box::new(value));
    }
}

/// What a [`Recycle`] handed back, to be freed on the receiving thread.
type Recycled = std::sync::mpsc::Receiver<Box<dyn Send>>;

/// Frees, on this thread, whatever the writer has handed back so far.
fn free_recycled(recycled: &Recycled) {
    while let Ok(done) = recycled.try_recv() {
        drop(done);
    }
}

async fn run_import<T, W>(
    db: &Db,
    feed: Feed,
    path: &Path,
    sha: &str,
    opts: &ImportOptions,
    parse: ParseFn<T>,
    mut writer: W,
) -> Result<ImportReport>
where
    T: Send + 'static,
    W: BatchWriter<T>,
{
    let shown = path.display().to_string();
    let (sender, mut receiver) = mpsc::channel::<Msg>(4);
    let (p, o) = (path.to_path_buf(), opts.clone());
    let (recycle, recycled) = Recycle::new();
    let parser = tokio::task::spawn_blocking(move || read_file(feed, p, o, sender, recycled));

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
    let mut map: Option<Arc<reader::HeaderMap>> = None;
    // Each batch is validated on a blocking thread while the writer takes
    // the batch before it.
    let mut parsing: Option<tokio::task::JoinHandle<Vec<Item<T>>>> = None;
    let mut failed = None;
    while let Some(msg) = receiver.recv().await {
        let rows = match msg {
            Msg::Header(h, m) => {
                tally.header = h;
                map = Some(m);
                continue;
            }
            Msg::Refused(why) => {
                refused = Some(why);
                continue;
            }
            Msg::Batch(rows) => rows,
        };
        let Some(map) = map.clone() else {
            continue;
        };
        let next = tokio::task::spawn_blocking(move || {
            rows.into_iter()
                .map(|r| parse_row(&map, feed, parse, r))
                .collect::<Vec<_>>()
        });
        if let Some(done) = parsing.replace(next) {
            if let Err(e) = write_batch(&mut writer, &mut tx, done, &mut tally, &recycle).await {
                failed = Some(e);
                break;
            }
        }
    }
    if let (None, Some(done)) = (&failed, parsing.take()) {
        failed = write_batch(&mut writer, &mut tx, done, &mut tally, &recycle)
            .await
            .err();
    }
    if let Some(e) = failed {
        drop(receiver);
        let _ = tx.rollback().await;
        let _ = parser.await;
        return Err(e);
    }
    parser.await.map_err(|e| {
        Error::Runtime(anyhow::anyhow!("the reader thread failed for {shown}: {e}"))
    })?;
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

/// Hands a validated batch to the writer, once its validation is done.
async fn write_batch<T, W: BatchWriter<T>>(
    writer: &mut W,
    tx: &mut ImportTx,
    parsing: tokio::task::JoinHandle<Vec<Item<T>>>,
    tally: &mut Tally,
    recycle: &Recycle,
) -> Result<()> {
    let items = parsing
        .await
        .map_err(|e| Error::Runtime(anyhow::anyhow!("the import's row validation failed: {e}")))?;
    tally.counts.rows_read += items.len() as u64;
    let result = writer.write(tx, items, tally, recycle).await;
    crate::faults::point("import.batch_written");
    result
}

/// A feed row that replaces by key (R2): residence, social insurance,
/// civil status. Rows are held in an external sort by (key, line) while
/// the file is read, like the permits ([`PermitsWriter`]).
trait FeedRow: Sized + Send + 'static {
    /// Appends the row's key as bytes that sort as the table's key
    /// (`id_number`, then the second part as stored), each part ended by a
    /// zero byte (stored text never holds one: C9 rejects it), so that
    /// keys are equal exactly when their parts are and a key is never the
    /// prefix of another.
    fn key(&self, out: &mut Vec<u8>);
    /// The row's line in its file.
    fn line(&self) -> u64;
    fn encode(&self, line: u64) -> Vec<u8>;
    /// The line and the row [`FeedRow::encode`] encoded.
    fn decode(bytes: &[u8]) -> std::io::Result<Self>;
    /// Inserts these rows, each with a key new in this file, in key order;
    /// a stored row with the same key is replaced (R2: a later import
    /// wins).
    async fn upsert(tx: &mut ImportTx, rows: &[Self]) -> Result<()>;
}

fn key_part(out: &mut Vec<u8>, part: &str) {
    out.extend_from_slice(part.as_bytes());
    out.push(0);
}

impl FeedRow for crate::db::ResidenceRow {
    fn line(&self) -> u64 {
        self.line
    }
    fn key(&self, out: &mut Vec<u8>) {
        key_part(out, &self.id_number);
        key_part(out, &self.visited_on.to_string());
    }
    fn encode(&self, line: u64) -> Vec<u8> {
        let mut e = sort::Encoder::default();
        e.u64(line)
            .str(&self.id_number)
            .date(self.visited_on)
            .str(&self.result)
            .str(&self.address)
            .str(&self.officer_id);
        e.into_bytes()
    }
    fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        let mut d = sort::Decoder::new(bytes);
        Ok(crate::db::ResidenceRow {
            line: d.u64()?,
            id_number: d.str()?,
            visited_on: d.date()?,
            result: d.str()?,
            address: d.str()?,
            officer_id: d.str()?,
        })
    }
    async fn upsert(tx: &mut ImportTx, rows: &[Self]) -> Result<()> {
        tx.upsert_residence(rows).await
    }
}

impl FeedRow for crate::db::SocialInsuranceRow {
    fn line(&self) -> u64 {
        self.line
    }
    fn key(&self, out: &mut Vec<u8>) {
        key_part(out, &self.id_number);
        key_part(out, &self.month);
    }
    fn encode(&self, line: u64) -> Vec<u8> {
        let mut e = sort::Encoder::default();
        e.u64(line)
            .str(&self.id_number)
            .str(&self.month)
            .str(&self.status)
            .str(&self.employer_uscc)
            .str(&self.employer_name);
        e.into_bytes()
    }
    fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        let mut d = sort::Decoder::new(bytes);
        Ok(crate::db::SocialInsuranceRow {
            line: d.u64()?,
            id_number: d.str()?,
            month: d.str()?,
            status: d.str()?,
            employer_uscc: d.str()?,
            employer_name: d.str()?,
        })
    }
    async fn upsert(tx: &mut ImportTx, rows: &[Self]) -> Result<()> {
        tx.upsert_social_insurance(rows).await
    }
}

impl FeedRow for crate::db::CivilStatusRow {
    fn line(&self) -> u64 {
        self.line
    }
    fn key(&self, out: &mut Vec<u8>) {
        key_part(out, &self.id_number);
    }
    fn encode(&self, line: u64) -> Vec<u8> {
        let mut e = sort::Encoder::default();
        e.u64(line)
            .str(&self.id_number)
            .str(&self.marital_status)
            .opt_date(self.as_of);
        e.into_bytes()
    }
    fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        let mut d = sort::Decoder::new(bytes);
        Ok(crate::db::CivilStatusRow {
            line: d.u64()?,
            id_number: d.str()?,
            marital_status: d.str()?,
            as_of: d.opt_date()?,
        })
    }
    async fn upsert(tx: &mut ImportTx, rows: &[Self]) -> Result<()> {
        tx.upsert_civil_status(rows).await
    }
}

/// Writer for residence, social-insurance and civil-status rows (R2).
/// Accepted rows go into an external sort by (key, line) as the file is
/// read; once it is read they come back with each key's rows together, the
/// later line wins (a warning names the earlier one), and the winners are
/// written a page at a time in key order. Whatever order the file's keys
/// come in, the table's B-tree is then walked once, in order, and memory is
/// bounded by the sort's budget and the page.
struct FeedWriter<T> {
    rows: sort::ExternalSort,
    notes: Notes,
    _row: std::marker::PhantomData<T>,
}

impl<T> Default for FeedWriter<T> {
    fn default() -> Self {
        FeedWriter {
            rows: sort::ExternalSort::new(sort::RUN_BYTES),
            notes: Notes::default(),
            _row: std::marker::PhantomData,
        }
    }
}

impl<T: FeedRow + Send + 'static> BatchWriter<T> for FeedWriter<T> {
    async fn write(
        &mut self,
        _: &mut ImportTx,
        items: Vec<Item<T>>,
        tally: &mut Tally,
        recycle: &Recycle,
    ) -> Result<()> {
        let mut raws = Vec::with_capacity(items.len());
        for item in items {
            match item.parsed {
                Err(rejection) => self.notes.note(Note {
                    line: item.line,
                    rejected: Some(item.raw.iter().map(str::to_string).collect()),
                    text: rejection.to_string(),
                })?,
                Ok(p) => {
                    tally.counts.rows_imported += 1;
                    for text in p.warnings {
                        self.notes.note(Note {
                            line: item.line,
                            rejected: None,
                            text,
                        })?;
                    }
                    let mut key = Vec::with_capacity(40);
                    p.row.key(&mut key);
                    key.extend_from_slice(&item.line.to_be_bytes());
                    let record = p.row.encode(item.line);
                    self.rows.push(&key, &record).map_err(sort_error)?;
                }
            }
            raws.push(item.raw);
        }
        recycle.give(raws);
        Ok(())
    }

    /// The merge runs on a blocking thread of its own and hands pages over
    /// while the previous one is written: merging and decoding cost about
    /// a third of what writing does, and overlap it on a second core.
    async fn finish(&mut self, tx: &mut ImportTx, tally: &mut Tally) -> Result<()> {
        let rows = std::mem::replace(&mut self.rows, sort::ExternalSort::new(0));
        let notes = std::mem::take(&mut self.notes);
        let (send, mut pages) = mpsc::channel::<Vec<T>>(2);
        let (recycle, recycled) = Recycle::new();
        let merge =
            tokio::task::spawn_blocking(move || settle_sorted(rows, notes, &send, &recycled));
        let mut written = Ok(());
        while let Some(page) = pages.recv().await {
            written = T::upsert(tx, &page).await;
            recycle.give(page);
            if written.is_err() {
                break;
            }
        }
        // Dropping the receiver stops the merge at its next page.
        drop(pages);
        let merged = merge.await.map_err(|e| {
            Error::Runtime(anyhow::anyhow!("the import's merge thread failed: {e}"))
        })?;
        written?;
        self.notes = merged?;
        self.notes.replay(tally)
    }
}

/// Reads the sorted rows back, settles R2 (each key's later line wins; a
/// warning at that line names the earlier one) and sends pages of
/// [`DECIDE_ROWS`] rows, one row per key, in key order; frees the pages the
/// writer hands back. Returns the notes with the warnings added; stops
/// early, with them, if the writer is gone.
fn settle_sorted<T: FeedRow>(
    rows: sort::ExternalSort,
    mut notes: Notes,
    send: &mpsc::Sender<Vec<T>>,
    recycled: &Recycled,
) -> Result<Notes> {
    let mut sorted = rows.finish().map_err(sort_error)?;
    let mut page: Vec<T> = Vec::with_capacity(DECIDE_ROWS);
    // The key of the row last pushed to the page (without its line).
    let mut last_key: Vec<u8> = Vec::new();
    while let Some((key, record)) = sorted.next_record().map_err(sort_error)? {
        let row = T::decode(record).map_err(sort_error)?;
        let key = &key[..key.len() - 8];
        if !page.is_empty() && key == last_key.as_slice() {
            // R2: the later line with the key replaces the earlier.
            if let Some(earlier) = page.pop() {
                notes.note(Note {
                    line: row.line(),
                    rejected: None,
                    text: same_key_warning(earlier.line()),
                })?;
            }
        } else {
            // A new key: every key on the page is complete.
            if page.len() >= DECIDE_ROWS {
                let full = std::mem::replace(&mut page, Vec::with_capacity(DECIDE_ROWS));
                free_recycled(recycled);
                if send.blocking_send(full).is_err() {
                    return Ok(notes);
                }
            }
            last_key.clear();
            last_key.extend_from_slice(key);
        }
        page.push(row);
    }
    if !page.is_empty() {
        let _ = send.blocking_send(page);
    }
    Ok(notes)
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
            .date(p.valid_until)
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
            valid_until: d.date()?,
            status: d.str()?.try_into().map_err(bad)?,
            employer_uscc: d.str()?,
            si_status: d.str()?.try_into().map_err(bad)?,
            marital_status: d.str()?.try_into().map_err(bad)?,
        };
        let given_status = d
            .opt()?
            .map(|s| PermitStatus::try_from(s).map_err(bad))
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

/// Rejects and warnings held in an external sort by (line, order noted),
/// replayed once the file is decided.
struct Notes {
    sort: sort::ExternalSort,
    /// Notes so far: their order among notes of the same line.
    noted: u64,
}

impl Default for Notes {
    fn default() -> Self {
        Notes {
            sort: sort::ExternalSort::new(sort::RUN_BYTES / 8),
            noted: 0,
        }
    }
}

impl Notes {
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
        self.sort.push(&key, &e.into_bytes()).map_err(sort_error)
    }

    /// The notes in line order.
    fn sorted(&mut self) -> Result<sort::Sorted> {
        let notes = std::mem::replace(&mut self.sort, sort::ExternalSort::new(0));
        notes.finish().map_err(sort_error)
    }

    /// Rejects and warnings in line order, as the file reads.
    fn replay(&mut self, tally: &mut Tally) -> Result<()> {
        let mut sorted = self.sorted()?;
        while let Some((_, record)) = sorted.next_record().map_err(sort_error)? {
            let note = Note::decode(record).map_err(sort_error)?;
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
    notes: Notes,
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
            notes: Notes::default(),
            current: None,
            empty_register: None,
        }
    }
}

fn sort_error(e: std::io::Error) -> Error {
    Error::io("cannot sort the file's rows in temporary files (TMPDIR)", e)
}

impl PermitsWriter {
    /// Whether the register was empty when this file began (asked once).
    async fn register_was_empty(&mut self, tx: &mut ImportTx) -> Result<bool> {
        match self.empty_register {
            Some(e) => Ok(e),
            None => Ok(*self.empty_register.insert(tx.register_is_empty().await?)),
        }
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
                self.notes.note(Note {
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
                    self.notes.note(Note {
                        line: held.line,
                        rejected: None,
                        text,
                    })?;
                }
                if let Some(earlier) = earlier {
                    self.notes.note(Note {
                        line: held.line,
                        rejected: None,
                        text: same_permit_warning(earlier),
                    })?;
                }
                Ok(1)
            }
        }
    }

    /// Looks up, decides and writes one page of sorted rows, and hands the
    /// rows written back to the merge thread that decoded them.
    async fn decide_page(
        &mut self,
        tx: &mut ImportTx,
        page: Vec<HeldPermit>,
        last: bool,
        tally: &mut Tally,
        recycle: &Recycle,
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
        recycle.give((full, contacts));
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
                Err(rejection) => self.notes.note(Note {
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
                        .push(&held.sort_key(), &held.encode())
                        .map_err(sort_error)?;
                }
            }
            raws.push(item.raw);
        }
        recycle.give(raws);
        Ok(())
    }

    /// The merge and the decoding run on a blocking thread of its own and
    /// hand pages over while the previous one is decided and written, as
    /// for the feeds ([`FeedWriter`]).
    async fn finish(&mut self, tx: &mut ImportTx, tally: &mut Tally) -> Result<()> {
        let rows = std::mem::replace(&mut self.rows, sort::ExternalSort::new(0));
        let (send, mut pages) = mpsc::channel::<Vec<HeldPermit>>(2);
        let (recycle, recycled) = Recycle::new();
        let merge = tokio::task::spawn_blocking(move || held_pages(rows, &send, &recycled));
        let mut written = Ok(());
        while let Some(page) = pages.recv().await {
            written = self.decide_page(tx, page, false, tally, &recycle).await;
            if written.is_err() {
                break;
            }
        }
        // Dropping the receiver stops the merge at its next page.
        drop(pages);
        let merged = merge.await.map_err(|e| {
            Error::Runtime(anyhow::anyhow!("the import's merge thread failed: {e}"))
        })?;
        written?;
        merged?;
        // Every row is decided: the last permit's rows are complete.
        self.decide_page(tx, Vec::new(), true, tally, &recycle)
            .await?;
        self.notes.replay(tally)
    }
}

/// Reads the sorted permit rows back and sends them decoded, in pages of
/// [`DECIDE_ROWS`], and frees what the writer hands back of them; stops
/// early if the writer is gone.
fn held_pages(
    rows: sort::ExternalSort,
    send: &mpsc::Sender<Vec<HeldPermit>>,
    recycled: &Recycled,
) -> Result<()> {
    let mut sorted = rows.finish().map_err(sort_error)?;
    let mut page = Vec::with_capacity(DECIDE_ROWS);
    while let Some((_, record)) = sorted.next_record().map_err(sort_error)? {
        page.push(HeldPermit::decode(record).map_err(sort_error)?);
        if page.len() == DECIDE_ROWS {
            let full = std::mem::replace(&mut page, Vec::with_capacity(DECIDE_ROWS));
            free_recycled(recycled);
            if send.blocking_send(full).is_err() {
                return Ok(());
            }
        }
    }
    if !page.is_empty() {
        let _ = send.blocking_send(page);
    }
    Ok(())
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
            w.notes
                .note(Note {
                    line,
                    rejected,
                    text: format!("note {line}"),
                })
                .unwrap();
        }
        let mut notes = w.notes.sorted().unwrap();
        let mut got = Vec::new();
        while let Some((_, record)) = notes.next_record().unwrap() {
            let n = Note::decode(record).unwrap();
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
        let mut notes = w.notes.sorted().unwrap();
        let mut got = Vec::new();
        while let Some((_, record)) = notes.next_record().unwrap() {
            let n = Note::decode(record).unwrap();
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

    fn si(id: &str, month: &str) -> crate::db::SocialInsuranceRow {
        crate::db::SocialInsuranceRow {
            id_number: id.to_string(),
            month: month.to_string(),
            status: "paid".to_string(),
            employer_uscc: "91310000MA1FL0AB1X".to_string(),
            employer_name: "上海,某某".to_string(),
            line: 0,
        }
    }

    fn visit(id: &str, day: u32) -> crate::db::ResidenceRow {
        crate::db::ResidenceRow {
            id_number: id.to_string(),
            visited_on: chrono::NaiveDate::from_ymd_opt(2026, 1, day).expect("date"),
            result: "consistent".to_string(),
            address: "上海市".to_string(),
            officer_id: String::new(),
            line: 0,
        }
    }

    fn key_of<T: FeedRow>(row: &T) -> Vec<u8> {
        let mut key = Vec::new();
        row.key(&mut key);
        key
    }

    #[test]
    fn feed_keys_are_equal_exactly_when_the_r2_key_is_and_sort_as_the_table_does() {
        // R2 settles repeats by these keys after the sort: they must never
        // merge two keys nor split one, and the rows must come out in the
        // order of the table's primary key (id_number, then the second part).
        let a = "110101197001011019";
        let b = "110101197007311020";
        let si_rows = [
            si(a, "2026-09"),
            si(a, "2026-10"),
            si(b, "2026-09"),
            si(a, "2026-09"),
            si(a, "2025-09"),
        ];
        let visits = [visit(a, 1), visit(a, 2), visit(b, 1), visit(a, 1)];
        fn check<T: FeedRow>(rows: &[T], parts: impl Fn(&T) -> (String, String)) {
            for x in rows {
                for y in rows {
                    assert_eq!(key_of(x) == key_of(y), parts(x) == parts(y));
                    assert_eq!(key_of(x).cmp(&key_of(y)), parts(x).cmp(&parts(y)));
                }
            }
        }
        check(&si_rows, |r| (r.id_number.clone(), r.month.clone()));
        check(&visits, |r| (r.id_number.clone(), r.visited_on.to_string()));
        // A shorter ID number is never a prefix of a longer one's key.
        assert!(key_of(&si("1101", "2026-12")) < key_of(&si("11010", "2026-01")));
    }

    #[test]
    fn a_feed_row_decodes_to_what_was_encoded() {
        let mut s = si("110101197001011019", "2026-09");
        s.line = 3;
        let back = crate::db::SocialInsuranceRow::decode(&s.encode(3)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
        let mut v = visit("110101197001011019", 31);
        v.line = 9;
        let back = crate::db::ResidenceRow::decode(&v.encode(9)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{v:?}"));
        for as_of in [None, chrono::NaiveDate::from_ymd_opt(2026, 2, 28)] {
            let c = crate::db::CivilStatusRow {
                id_number: "110101197001011019".to_string(),
                marital_status: "married".to_string(),
                as_of,
                line: 12,
            };
            let back = crate::db::CivilStatusRow::decode(&c.encode(12)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{c:?}"));
        }
    }
}

/// Entry points for `cargo fuzz` (fuzz/): the import's reading side, from
/// bytes to rows, rejects and refusals, without a database.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// Reads `path` as a file of `feed` the way an import does (decoding,
    /// CSV framing, line numbers, header mapping, row parsing), in batches
    /// of `batch_rows`,
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
            Feed::Permits => run(feed, path, opts, parse::permit),
            Feed::Residence => run(feed, path, opts, parse::residence),
            Feed::SocialInsurance => run(feed, path, opts, parse::social_insurance),
            Feed::CivilStatus => run(feed, path, opts, parse::civil_status),
        }
    }

    fn run<T: Send + 'static>(feed: Feed, path: &Path, opts: ImportOptions, parse: ParseFn<T>) {
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let (_recycle, recycled) = std::sync::mpsc::channel();
        super::read_file(feed, path.to_path_buf(), opts, tx, recycled);
        let mut last_line = 0;
        let mut refused = false;
        let mut map = None;
        while let Ok(msg) = rx.try_recv() {
            assert!(!refused, "nothing follows a refusal");
            match msg {
                Msg::Header(_, m) => {
                    assert_eq!(last_line, 0, "the header comes first");
                    map = Some(m);
                }
                Msg::Batch(rows) => {
                    let map = map.as_deref().expect("the header comes first");
                    for row in rows {
                        let item = parse_row(map, feed, parse, row);
                        assert!(
                            item.line > last_line,
                            "lines grow: {} after {last_line}",
                            item.line
                        );
                        last_line = item.line;
                        if let Err(reason) = &item.parsed {
                            assert!(!reason.code.is_empty(), "{} {reason}", item.line);
                        }
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
