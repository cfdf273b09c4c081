//! The exports' rows on PostgreSQL, streamed from the pool with the
//! statements SQLite runs too.

use chrono::NaiveDate;
use futures_util::TryStreamExt;

use super::super::outbox::NOTIFICATION_SELECT_RANGE;
use super::super::rows::*;
use super::super::runs::AUDIT_SELECT_RANGE;
use super::PgDb;
use crate::error::Result;

impl PgDb {
    pub async fn audit_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(&AuditCells<'_>) -> Result<()> + Send),
    ) -> Result<()> {
        let mut rows = sqlx::query_as::<_, AuditRow>(AUDIT_SELECT_RANGE)
            .bind(from)
            .bind(to)
            .fetch(&self.pool);
        while let Some(r) = rows.try_next().await? {
            let cells = r.to_cells();
            each(&cells.each_ref().map(String::as_str))?;
        }
        Ok(())
    }

    pub async fn notification_rows(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        each: &mut (dyn FnMut(NotificationRow) -> Result<()> + Send),
    ) -> Result<()> {
        let mut rows = sqlx::query_as::<_, NotificationRow>(NOTIFICATION_SELECT_RANGE)
            .bind(from)
            .bind(to)
            .fetch(&self.pool);
        while let Some(r) = rows.try_next().await? {
            each(r)?;
        }
        Ok(())
    }
}
