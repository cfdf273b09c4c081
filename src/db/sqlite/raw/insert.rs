//! The bulk writes' statements: multi-row INSERTs (and the keyed feeds'
//! upserts built on them) and the run's permit changes, whose values SQLite
//! reads where they lie.
//!
//! rusqlite binds every text as `SQLITE_TRANSIENT`: SQLite allocates a
//! buffer, copies the text into it and frees it at the next bind. A first
//! night at 10,000,000 permits binds about fifty million texts on the
//! writer's thread, which sets the night's pace, and a register load
//! about a hundred and thirty million. [`Prepared`] binds them
//! `SQLITE_STATIC`: SQLite reads each value in place while the statement
//! runs (the row it builds is its own copy), and forgets the pointers
//! before [`Prepared::execute`] returns, while the values are still
//! borrowed.

use std::ffi::c_int;
use std::marker::PhantomData;
use std::ptr::NonNull;

use chrono::NaiveDate;
use rusqlite::ffi;

/// Rows per multi-row INSERT of the run's writer and the feed imports (at
/// most 16 parameters a row: far below SQLite's limit of 32,766). Fewer
/// statements for the same rows: a 10M first night's write pass about
/// 0.4 s shorter at 256 rows than at 64 (docs/benchmarks.md). Each
/// statement keeps a journal of the pages it changes (16 KiB each), in
/// memory for the bulk writers (`BULK_BEGIN`, src/db/sqlite/mod.rs), and
/// this bounds it: 256 rows of a delta spread over a 10M register change
/// at most about 300 pages (under 5 MiB).
pub(in crate::db::sqlite) const ROWS_PER_INSERT: usize = 256;
const _: () = assert!(ROWS_PER_INSERT * 16 <= 32_766);

/// A date bound as its stored text, `YYYY-MM-DD` as chrono writes it,
/// from a buffer of its own: chrono's `Display` writes a character at a
/// time through the formatter into a new `String`, and a first night at
/// 10M permits binds about ten million dates on the writer's thread.
/// Years outside 0–9999, which no feed row carries, take chrono's way.
pub(in crate::db::sqlite) struct SqlDate {
    text: [u8; 10],
    other: Option<String>,
}

impl SqlDate {
    pub(in crate::db::sqlite) fn new(d: NaiveDate) -> SqlDate {
        use chrono::Datelike;
        let (y, m, day) = (d.year(), d.month(), d.day());
        let Ok(y @ 0..=9999) = u32::try_from(y) else {
            return SqlDate {
                text: [0; 10],
                other: Some(d.to_string()),
            };
        };
        let digit = |n: u32| b'0' + (n % 10) as u8;
        SqlDate {
            text: [
                digit(y / 1000),
                digit(y / 100),
                digit(y / 10),
                digit(y),
                b'-',
                digit(m / 10),
                digit(m),
                b'-',
                digit(day / 10),
                digit(day),
            ],
            other: None,
        }
    }

    /// The stored text (ASCII).
    fn bytes(&self) -> &[u8] {
        match &self.other {
            Some(s) => s.as_bytes(),
            None => &self.text,
        }
    }
}

impl rusqlite::ToSql for SqlDate {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.bytes()),
        ))
    }
}

/// One value a [`Prepared`] statement binds: SQLite reads a text where it
/// lies, in the row being written or here.
pub(in crate::db::sqlite) enum Arg<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Date(SqlDate),
    /// A text made for this statement (a month's).
    Owned(String),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::Text(s)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(s: &'a String) -> Self {
        Arg::Text(s)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(s: &'a Option<String>) -> Self {
        s.as_deref().into()
    }
}

impl From<String> for Arg<'_> {
    fn from(s: String) -> Self {
        Arg::Owned(s)
    }
}

impl From<i64> for Arg<'_> {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}

impl From<SqlDate> for Arg<'_> {
    fn from(d: SqlDate) -> Self {
        Arg::Date(d)
    }
}

impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}

/// `[Arg; N]` of the values given, for [`Prepared::execute`] or a row of
/// [`insert_chunk`]; a `String` field is given by reference (`&r.name`).
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        [$($crate::db::sqlite::raw::Arg::from($value)),*]
    };
}
pub(in crate::db::sqlite) use args;

/// A prepared statement that binds [`Arg`]s by reference (the module's
/// doc), on a connection borrowed for as long as it lives.
pub(in crate::db::sqlite) struct Prepared<'c> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: NonNull<ffi::sqlite3>,
    _conn: PhantomData<&'c rusqlite::Connection>,
}

impl<'c> Prepared<'c> {
    pub(in crate::db::sqlite) fn new(
        c: &'c rusqlite::Connection,
        sql: &str,
    ) -> rusqlite::Result<Self> {
        // SAFETY: `c` is open for 'c, and the statement, which SQLite ties
        // to it, is finalized when this is dropped, within 'c.
        let db = unsafe { c.handle() };
        let db = NonNull::new(db).ok_or(rusqlite::Error::InvalidQuery)?;
        let len = c_int::try_from(sql.len()).map_err(|_| failure(None, ffi::SQLITE_TOOBIG))?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: the text is valid for `len` bytes (SQLite copies what it
        // keeps); `stmt` is written by SQLite.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                sql.as_ptr().cast(),
                len,
                0,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(failure(Some(db), rc));
        }
        // Text without a statement (empty or a comment) prepares to null.
        let stmt = NonNull::new(stmt).ok_or(rusqlite::Error::InvalidQuery)?;
        Ok(Self {
            stmt,
            db,
            _conn: PhantomData,
        })
    }

    /// Binds `args` to the statement's parameters, in order, and runs it
    /// to its end. SQLite forgets the values before this returns, whether
    /// it succeeded or not.
    pub(in crate::db::sqlite) fn execute(&mut self, args: &[Arg<'_>]) -> rusqlite::Result<()> {
        let stmt = self.stmt.as_ptr();
        // SAFETY: `stmt` is a live statement of this connection.
        let expected = unsafe { ffi::sqlite3_bind_parameter_count(stmt) };
        if usize::try_from(expected).ok() != Some(args.len()) {
            return Err(rusqlite::Error::InvalidParameterCount(
                args.len(),
                usize::try_from(expected).unwrap_or(0),
            ));
        }
        let mut rc = ffi::SQLITE_OK;
        for (i, arg) in (1..).zip(args) {
            // SAFETY: `i` is a parameter's index (counted above). A text's
            // pointer and length come from a live `&str` or `[u8]` that
            // `args` borrows until this returns; SQLite reads it during
            // the step only, and `sqlite3_clear_bindings` below drops it
            // before this returns (SQLITE_STATIC promises no more).
            rc = unsafe {
                match arg {
                    Arg::Null => ffi::sqlite3_bind_null(stmt, i),
                    Arg::Int(n) => ffi::sqlite3_bind_int64(stmt, i, *n),
                    Arg::Text(s) => bind_text(stmt, i, s.as_bytes()),
                    Arg::Date(d) => bind_text(stmt, i, d.bytes()),
                    Arg::Owned(s) => bind_text(stmt, i, s.as_bytes()),
                }
            };
            if rc != ffi::SQLITE_OK {
                break;
            }
        }
        if rc == ffi::SQLITE_OK {
            // SAFETY: as above; every parameter is bound.
            rc = unsafe { ffi::sqlite3_step(stmt) };
        }
        let done = match rc {
            ffi::SQLITE_DONE => Ok(()),
            ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
            rc => Err(failure(Some(self.db), rc)),
        };
        // SAFETY: as above. The reset returns the step's error again,
        // already taken (with its message) into `done`.
        unsafe {
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
        }
        done
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and is not used again.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// Binds `text` at `i` for SQLite to read in place.
///
/// # Safety
/// `stmt` is a live statement with a parameter `i`, and `text` outlives
/// its next step, before which the bindings are not cleared.
unsafe fn bind_text(stmt: *mut ffi::sqlite3_stmt, i: c_int, text: &[u8]) -> c_int {
    ffi::sqlite3_bind_text64(
        stmt,
        i,
        text.as_ptr().cast(),
        text.len() as ffi::sqlite3_uint64,
        ffi::SQLITE_STATIC(),
        ffi::SQLITE_UTF8 as std::ffi::c_uchar,
    )
}

/// The error SQLite reports for `rc`, with the connection's message when
/// it has one for it (as rusqlite's own calls report it).
fn failure(db: Option<NonNull<ffi::sqlite3>>, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is a live connection; SQLite's messages are
    // NUL-terminated and read before any other call on it.
    let message = unsafe {
        let text = match db {
            Some(db) if ffi::sqlite3_errcode(db.as_ptr()) == rc => ffi::sqlite3_errmsg(db.as_ptr()),
            _ => ffi::sqlite3_errstr(rc),
        };
        (!text.is_null()).then(|| {
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        })
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message)
}

/// `head` followed by `rows` groups of `columns` anonymous parameters, each
/// group ending in the literal `tail` (e.g. `, 1` for a constant column).
fn multi_row_insert(head: &str, columns: usize, tail: &str, rows: usize) -> String {
    let mut group = String::from("(?");
    for _ in 1..columns {
        group.push_str(", ?");
    }
    group.push_str(tail);
    group.push(')');
    let mut sql = String::from(head);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&group);
    }
    sql
}

/// Executes the multi-row INSERT (`head`, `columns`, `tail` as for
/// [`multi_row_insert`], then `end`, e.g. an upsert's ON CONFLICT clause)
/// for a chunk of `rows`, each row's values given by `row` (with
/// [`args!`]): a full chunk's statement is prepared once and kept in
/// `full`, a shorter last chunk's for that chunk only.
pub(in crate::db::sqlite) fn insert_chunk<'c, 'r, T>(
    c: &'c rusqlite::Connection,
    full: &mut Option<Prepared<'c>>,
    (head, columns, tail, end): (&str, usize, &str, &str),
    rows: &'r [T],
    mut row: impl FnMut(&mut Vec<Arg<'r>>, &'r T),
) -> rusqlite::Result<()> {
    let mut args = Vec::with_capacity(rows.len() * columns);
    for r in rows {
        row(&mut args, r);
    }
    let sql = || multi_row_insert(head, columns, tail, rows.len()) + end;
    let mut partial = None;
    let stmt = if rows.len() == ROWS_PER_INSERT {
        match full {
            Some(s) => s,
            None => full.insert(Prepared::new(c, &sql())?),
        }
    } else {
        partial.insert(Prepared::new(c, &sql())?)
    };
    stmt.execute(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bound, a date is the text chrono writes for it, the stored form
    /// every query compares with: every day of five centuries, and the
    /// years at either end of the buffer's range and beyond it.
    #[test]
    fn a_date_binds_as_the_text_chrono_writes_for_it() {
        let c = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        let mut stmt = c.prepare("SELECT ?1").expect("a statement");
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("a date");
        let days = std::iter::successors(Some(day(1800, 1, 1)), |d| d.succ_opt())
            .take_while(|d| *d < day(2300, 1, 1))
            .chain([
                day(0, 1, 1),
                day(9, 12, 31),
                day(999, 6, 15),
                day(9999, 12, 31),
                day(10000, 1, 1),
                day(-1, 12, 31),
                NaiveDate::MIN,
                NaiveDate::MAX,
            ]);
        for d in days {
            let bound: String = stmt
                .query_row([SqlDate::new(d)], |r| r.get(0))
                .expect("the date read back");
            assert_eq!(bound, d.to_string());
        }
    }

    #[test]
    fn a_multi_row_insert_has_one_group_of_parameters_per_row() {
        assert_eq!(
            multi_row_insert("INSERT INTO t (a, b, held) VALUES ", 2, ", 1", 3),
            "INSERT INTO t (a, b, held) VALUES (?, ?, 1), (?, ?, 1), (?, ?, 1)"
        );
        assert_eq!(
            multi_row_insert("INSERT INTO t (a) VALUES ", 1, "", 1),
            "INSERT INTO t (a) VALUES (?)"
        );
    }

    /// What a statement stored is what it was given, each kind of value,
    /// though SQLite read the texts in place: a chunk of rows and a
    /// shorter one, the full chunk's statement kept and used again with
    /// other values (the first chunk's are forgotten: its texts are
    /// dropped before the second runs).
    #[test]
    fn rows_inserted_by_reference_store_the_values_given() {
        let c = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        c.execute_batch("CREATE TABLE t (n INTEGER, s TEXT, d TEXT, o TEXT, x TEXT, k INTEGER)")
            .expect("the table");
        let row = |n: i64| {
            (
                n,
                format!("名字{n}"),
                NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date") + chrono::Days::new(n as u64),
                (n % 2 == 0).then(|| format!("optional {n}")),
            )
        };
        type Row = (i64, String, NaiveDate, Option<String>);
        fn write<'c>(
            c: &'c rusqlite::Connection,
            full: &mut Option<Prepared<'c>>,
            rows: &[Row],
        ) -> rusqlite::Result<()> {
            let spec = ("INSERT INTO t (n, s, d, o, x, k) VALUES ", 5, ", 7", "");
            insert_chunk(c, full, spec, rows, |out, (n, s, d, o)| {
                out.extend(args![*n, s, SqlDate::new(*d), o, format!("made {n}")]);
            })
        }
        let mut full = None;
        let first: Vec<_> = (0..ROWS_PER_INSERT as i64).map(row).collect();
        write(&c, &mut full, &first).expect("a full chunk");
        drop(first);
        let second: Vec<_> = (10_000..10_000 + ROWS_PER_INSERT as i64)
            .chain(20_000..20_003)
            .map(row)
            .collect();
        write(&c, &mut full, &second[..ROWS_PER_INSERT]).expect("the kept statement again");
        write(&c, &mut full, &second[ROWS_PER_INSERT..]).expect("a shorter chunk");
        drop(second);
        let mut stmt = c
            .prepare("SELECT n, s, d, o, x, k FROM t ORDER BY n")
            .expect("a query");
        let stored: Vec<(i64, String, String, Option<String>, String, i64)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .expect("the rows")
            .collect::<rusqlite::Result<_>>()
            .expect("each row");
        let expected: Vec<_> = (0..ROWS_PER_INSERT as i64)
            .chain(10_000..10_000 + ROWS_PER_INSERT as i64)
            .chain(20_000..20_003)
            .map(|n| {
                let (n, s, d, o) = row(n);
                (n, s, d.to_string(), o, format!("made {n}"), 7)
            })
            .collect();
        assert_eq!(stored, expected);
    }

    /// A statement's failure is SQLite's, with its message, and leaves
    /// the statement ready for the next values; a wrong count of values
    /// is refused before anything runs.
    #[test]
    fn a_failed_insert_reports_sqlites_error_and_the_statement_runs_again() {
        let c = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .expect("the table");
        let mut stmt = Prepared::new(&c, "INSERT INTO t (k) VALUES (?)").expect("a statement");
        stmt.execute(&args!["a"]).expect("the first row");
        let e = stmt.execute(&args!["a"]).expect_err("a duplicate key");
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
        assert!(
            e.to_string().contains("UNIQUE constraint failed: t.k"),
            "{e}"
        );
        assert!(matches!(
            stmt.execute(&args!["b", "c"]),
            Err(rusqlite::Error::InvalidParameterCount(2, 1))
        ));
        stmt.execute(&args!["b"]).expect("the statement again");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("a count");
        assert_eq!(n, 2);
        assert!(Prepared::new(&c, "INSERT INTO nowhere VALUES (?)").is_err());
    }
}
