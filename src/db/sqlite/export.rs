//! The exports' rows on SQLite, with the statements PostgreSQL runs too:
//! the audit export's cells read on one thread, put in the export's order
//! within each permit's rows of a date (read in id order, which needs no
//! sort here) and handed a page at a time to the writing one; the
//! notifications streamed row by row.

use chrono::NaiveDate;

use super::super::outbox::NOTIFICATION_SELECT_RANGE;
use super::super::rows::*;
use super::super::runs::{kind_rank, AUDIT_SELECT_RANGE_BY_ID};
use super::raw::{raw_notification_row, thread_error, with_stream_reader};
use super::SqliteDb;
use crate::error::Result;

/// The audit export's columns that put its rows in order.
const AS_OF: usize = 1;
const PERMIT_NO: usize = 2;
const DECISION: usize = 4;

/// Audit rows in transit from the reading thread to the writing one: the
/// cells' text back to back, and where each cell ends.
#[derive(Default)]
struct CellPage {
    text: String,
    ends: Vec<usize>,
}

impl CellPage {
    /// A row's cells: the audit export's columns.
    const COLUMNS: usize = crate::audit::AUDIT_COLUMNS.len();

    /// Cells a page holds before it is handed over (4,096 rows).
    const CELLS: usize = Self::COLUMNS * 4096;

    fn push(&mut self, cell: &str) {
        self.text.push_str(cell);
        self.ends.push(self.text.len());
    }

    fn rows_len(&self) -> usize {
        self.ends.len() / Self::COLUMNS
    }

    /// Where cell `i` (counted over the whole page) begins in `text`.
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    fn cell(&self, row: usize, column: usize) -> &str {
        let i = row * Self::COLUMNS + column;
        &self.text[self.start(i)..self.ends[i]]
    }

    /// Moves the last row up to position `to`; the rows from `to` on move
    /// down one.
    fn move_last_row(&mut self, to: usize) {
        let last = self.rows_len() - 1;
        if to >= last {
            return;
        }
        let at = self.start(to * Self::COLUMNS);
        let last_at = self.start(last * Self::COLUMNS);
        let mut moved = self.text.split_off(at);
        let last_text = moved.split_off(last_at - at);
        self.text.push_str(&last_text);
        self.text.push_str(&moved);
        let last_ends: Vec<usize> = self.ends[last * Self::COLUMNS..]
            .iter()
            .map(|e| at + e - last_at)
            .collect();
        let moved_ends: Vec<usize> = self.ends[to * Self::COLUMNS..last * Self::COLUMNS]
            .iter()
            .map(|e| e + last_text.len())
            .collect();
        self.ends.truncate(to * Self::COLUMNS);
        self.ends.extend(last_ends);
        self.ends.extend(moved_ends);
    }

    /// Puts the last row in the export's order among the rows of its
    /// group, from row `group` on (the same date and permit, in id order
    /// as read, and the last the latest): before the first that ranks
    /// after it by kind ([`kind_rank`]), so rows of one rank stay in id
    /// order.
    fn rank_last_row(&mut self, group: usize) {
        let last = self.rows_len() - 1;
        let rank = kind_rank(self.cell(last, DECISION));
        if let Some(to) = (group..last).find(|&row| kind_rank(self.cell(row, DECISION)) > rank) {
            self.move_last_row(to);
        }
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// The page's rows as [`AuditCells`].
    fn rows(&self) -> impl Iterator<Item = AuditCells<'_>> {
        self.ends
            .chunks_exact(Self::COLUMNS)
            .enumerate()
            .map(move |(r, ends)| {
                let mut start = self.start(r * Self::COLUMNS);
                std::array::from_fn(|i| {
                    let cell = &self.text[start..ends[i]];
                    start = ends[i];
                    cell
                })
            })
    }
}

impl SqliteDb {
    /// Steps the query on this thread and hands the rows, a page at a time,
    /// to `each` on a second one (the CSV writing, masking and hashing
    /// overlap the reading on two cores); pages go back for reuse.
    pub async fn audit_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(&AuditCells<'_>) -> Result<()> + Send),
    ) -> Result<()> {
        let mut failed = None;
        with_stream_reader(&self.path, |c| {
            let (full, pages) = std::sync::mpsc::sync_channel::<CellPage>(2);
            let (give_back, spare) = std::sync::mpsc::channel::<CellPage>();
            std::thread::scope(|scope| {
                let writer = scope.spawn(move || -> Result<()> {
                    for mut page in pages {
                        for cells in page.rows() {
                            each(&cells)?;
                        }
                        page.clear();
                        let _ = give_back.send(page);
                    }
                    Ok(())
                });
                let read = (|| -> rusqlite::Result<()> {
                    let mut stmt = c.prepare(AUDIT_SELECT_RANGE_BY_ID)?;
                    let mut rows =
                        stmt.query(rusqlite::params![from.to_string(), to.to_string()])?;
                    let mut page = CellPage::default();
                    // The first row of the group (one date, one permit)
                    // the last row belongs to: a group is put in the
                    // export's order here, and never split between pages.
                    let mut group = 0;
                    while let Some(r) = rows.next()? {
                        let same_group = match page.rows_len() {
                            0 => false,
                            n => {
                                r.get_ref(AS_OF)?.as_str()? == page.cell(n - 1, AS_OF)
                                    && r.get_ref(PERMIT_NO)?.as_str()?
                                        == page.cell(n - 1, PERMIT_NO)
                            }
                        };
                        if !same_group {
                            if page.ends.len() >= CellPage::CELLS {
                                let next = spare.try_recv().unwrap_or_default();
                                if full.send(std::mem::replace(&mut page, next)).is_err() {
                                    // The writer stopped: its error is reported.
                                    return Ok(());
                                }
                            }
                            group = page.rows_len();
                        }
                        // Dates are stored as the export writes them
                        // (YYYY-MM-DD): the cells are the stored text, not
                        // parsed and formatted again.
                        page.push(&r.get::<_, i64>(0)?.to_string());
                        for i in 1..CellPage::COLUMNS {
                            match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => page.push(""),
                                v => page.push(v.as_str().map_err(|e| {
                                    rusqlite::Error::FromSqlConversionFailure(
                                        i,
                                        v.data_type(),
                                        e.into(),
                                    )
                                })?),
                            }
                        }
                        if same_group {
                            page.rank_last_row(group);
                        }
                    }
                    if !page.ends.is_empty() {
                        let _ = full.send(page);
                    }
                    Ok(())
                })();
                drop(full);
                failed = thread_error(writer.join(), "the export's writer thread");
                read
            })
        })?;
        failed.map_or(Ok(()), Err)
    }

    pub async fn notification_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(NotificationRow) -> Result<()> + Send),
    ) -> Result<()> {
        self.stream_range(
            NOTIFICATION_SELECT_RANGE,
            from,
            to,
            raw_notification_row,
            each,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_page_gives_back_each_row_of_18_cells_as_pushed() {
        let mut page = CellPage::default();
        let rows: Vec<Vec<String>> = (0..3)
            .map(|r| {
                (0..18)
                    .map(|i| {
                        if i == 5 {
                            String::new()
                        } else {
                            format!("r{r}c{i}，")
                        }
                    })
                    .collect()
            })
            .collect();
        for row in &rows {
            for cell in row {
                page.push(cell);
            }
        }
        let back: Vec<Vec<String>> = page
            .rows()
            .map(|cells| cells.iter().map(|c| c.to_string()).collect())
            .collect();
        assert_eq!(back, rows);
        page.clear();
        assert_eq!(page.rows().count(), 0);
        page.push("x");
        assert_eq!(page.text, "x");
    }

    /// Rows read in id order come out in the export's: within a group
    /// (one date, one permit) by kind's rank, ids in order within a rank;
    /// the rows before the group and every cell stay as they were.
    #[test]
    fn a_permits_rows_of_one_date_are_put_in_the_exports_order() {
        let row = |id: usize, permit: &str, kind: &str| -> Vec<String> {
            (0..CellPage::COLUMNS)
                .map(|i| match i {
                    AS_OF => "2026-11-27".to_string(),
                    PERMIT_NO => permit.to_string(),
                    DECISION => kind.to_string(),
                    _ => format!("{id}:{i}，"),
                })
                .collect()
        };
        let read = [
            row(1, "SH1", "AUTO_SIGNED"),
            row(2, "SH2", "AUTO_SIGNED"),
            row(3, "SH2", "SUSPENDED"),
            row(4, "SH2", "VISIT_CENTER"),
            row(5, "SH2", "CANCELLED"),
            row(6, "SH2", "SUSPENDED"),
            row(7, "SH2", "AUTO_SIGNED"),
        ];
        let mut page = CellPage::default();
        for (n, r) in read.iter().enumerate() {
            for cell in r {
                page.push(cell);
            }
            if n >= 2 {
                page.rank_last_row(1);
            }
        }
        let back: Vec<Vec<String>> = page
            .rows()
            .map(|cells| cells.iter().map(|c| c.to_string()).collect())
            .collect();
        assert_eq!(
            [AS_OF, PERMIT_NO, DECISION].map(|i| crate::audit::AUDIT_COLUMNS[i]),
            ["as_of", "permit_no", "decision"],
            "the columns the order reads"
        );
        let expected: Vec<Vec<String>> = [0, 2, 5, 4, 3, 1, 6]
            .iter()
            .map(|&i| read[i].clone())
            .collect();
        assert_eq!(back, expected);
    }
}
