//! The exports' rows on SQLite, with the statements PostgreSQL runs too:
//! the audit export's cells read on one thread and handed a page at a
//! time to the writing one, the notifications streamed row by row.

use chrono::NaiveDate;

use super::super::outbox::NOTIFICATION_SELECT_RANGE;
use super::super::rows::*;
use super::super::runs::AUDIT_SELECT_RANGE;
use super::raw::{raw_notification_row, thread_error, with_stream_reader};
use super::SqliteDb;
use crate::error::Result;

/// Audit rows in transit from the reading thread to the writing one: the
/// cells' text back to back, and where each cell ends.
#[derive(Default)]
struct CellPage {
    text: String,
    ends: Vec<usize>,
}

impl CellPage {
    /// Cells a page holds before it is handed over (4,096 rows).
    const CELLS: usize = 18 * 4096;

    fn push(&mut self, cell: &str) {
        self.text.push_str(cell);
        self.ends.push(self.text.len());
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// The page's rows as [`AuditCells`].
    fn rows(&self) -> impl Iterator<Item = AuditCells<'_>> {
        self.ends
            .chunks_exact(18)
            .enumerate()
            .map(move |(r, ends)| {
                let mut start = if r == 0 { 0 } else { self.ends[r * 18 - 1] };
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
                    let mut stmt = c.prepare(AUDIT_SELECT_RANGE)?;
                    let mut rows =
                        stmt.query(rusqlite::params![from.to_string(), to.to_string()])?;
                    let mut page = CellPage::default();
                    while let Some(r) = rows.next()? {
                        // Dates are stored as the export writes them
                        // (YYYY-MM-DD): the cells are the stored text, not
                        // parsed and formatted again.
                        page.push(&r.get::<_, i64>(0)?.to_string());
                        for i in 1..18 {
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
                        if page.ends.len() >= CellPage::CELLS {
                            let next = spare.try_recv().unwrap_or_default();
                            if full.send(std::mem::replace(&mut page, next)).is_err() {
                                // The writer stopped: its error is reported.
                                return Ok(());
                            }
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
}
