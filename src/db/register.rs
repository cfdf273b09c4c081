//! The register family: the permits as the last import and the runs left
//! them. Logically one table, `permits`; on both backends it is stored as
//! two (SQLite's migration 5, PostgreSQL's 12): the narrow `permit_state`
//! (number, `valid_until`, status), which a run rewrites and every night
//! scans, and `permit_details` beside it, joined by the `permits` view.
//! Reads of whole permits go through the view, counts over the register
//! and the run's reads drive from the narrow table, and writes go to the
//! tables.

use super::rows::*;
use super::{on_pool, Db};
use crate::error::Result;

/// A [`PermitRow`]'s columns.
macro_rules! permit_columns {
    () => {
        "permit_no, id_number, name, phone, email, district_code, street_code, address, \
         valid_until, status, employer_uscc, si_status, marital_status"
    };
}
pub(super) use permit_columns;

macro_rules! permit_select {
    ($rest:literal) => {
        concat!("SELECT ", permit_columns!(), " FROM permits ", $rest)
    };
}

/// The live register: active and suspended permits.
const LIVE_REGISTER: &str = "SELECT count(*) FROM permit_state WHERE status <> 'cancelled'";

impl Db {
    pub async fn permit(&self, permit_no: &str) -> Result<Option<PermitRow>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(permit_select!(
            "WHERE permit_no = $1"
        ))
        .bind(permit_no)
        .fetch_optional(pool)
        .await?))
    }

    /// The live register's size (active and suspended permits): what the
    /// safety brake's lifecycle check weighs R3's steps against, before
    /// the run writes anything.
    pub async fn live_register(&self) -> Result<u64> {
        let n: i64 = match self {
            Db::Sqlite(db) => db.count_apart(LIVE_REGISTER).await?,
            Db::Postgres(db) => {
                sqlx::query_scalar(LIVE_REGISTER)
                    .fetch_one(db.pool())
                    .await?
            }
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
