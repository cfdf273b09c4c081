//! What `autosign run --dry-run` needs beyond a run's own reads: the id
//! the run would be given, and a run transaction that only reads.
//!
//! The dry run plans and makes its events with the run's code on a
//! [`RunTx`] that has no runs row: on SQLite a deferred transaction that
//! only reads (no write lock) and is rolled back; on PostgreSQL a
//! `REPEATABLE READ READ ONLY` transaction, so that a write could not
//! happen even by mistake.

use chrono::NaiveDate;

use super::{Db, RunRecord, RunTx};
use crate::error::Result;

/// The id `begin_run` would take now for `as_of`: that of a run left
/// `running` for the date (a crashed PostgreSQL run is taken over), else
/// the next one. SQLite's runs table is AUTOINCREMENT (a discarded or
/// reverted run's id is never given again, even once it is the largest
/// left); PostgreSQL allocates max + 1 under the job lock.
const NEXT_RUN_ID_SQLITE: &str = "SELECT coalesce(
       (SELECT run_id FROM runs WHERE as_of = $1 AND status = 'running'),
       max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'runs'), 0),
           coalesce((SELECT max(run_id) FROM runs), 0)) + 1)";
const NEXT_RUN_ID_PG: &str = "SELECT coalesce(
       (SELECT run_id FROM runs WHERE as_of = $1 AND status = 'running'),
       (SELECT coalesce(max(run_id), 0) + 1 FROM runs))";

impl Db {
    /// The run id a run for `as_of` would have if it began now. The caller
    /// holds the job lock, so no other run can take it meanwhile.
    pub async fn next_run_id(&self, as_of: NaiveDate) -> Result<i64> {
        Ok(match self {
            Db::Sqlite(db) => {
                sqlx::query_scalar(NEXT_RUN_ID_SQLITE)
                    .bind(as_of)
                    .fetch_one(db.pool())
                    .await?
            }
            Db::Postgres(db) => {
                sqlx::query_scalar(NEXT_RUN_ID_PG)
                    .bind(as_of)
                    .fetch_one(db.pool())
                    .await?
            }
        })
    }

    /// A run transaction for `run` (never stored) that reads as the run
    /// would and writes nothing; end it with [`RunTx::rollback`].
    pub async fn begin_dry_run(&self, run: RunRecord) -> Result<RunTx> {
        Ok(match self {
            Db::Sqlite(db) => RunTx::Sqlite(db.begin_dry_run(run).await?),
            Db::Postgres(db) => RunTx::Postgres(db.begin_dry_run(run).await?),
        })
    }
}
