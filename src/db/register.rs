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

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's raw reader reads a [`PermitRow`] by position: a statement
    /// that selected the same columns in another order would swap its
    /// values unnoticed.
    #[test]
    fn the_permit_columns_are_selected_in_the_order_a_permit_row_is_read() {
        assert_eq!(permit_columns!(), PermitRow::COLUMNS.join(", "));
        PermitRow::assert_selected_in_order(permit_select!("WHERE permit_no = $1"));
    }

    #[test]
    fn a_statement_that_selects_the_columns_in_another_order_is_caught() {
        let swapped = "SELECT permit_no, id_number, phone, name, email, district_code, \
            street_code, address, valid_until, status, employer_uscc, si_status, marital_status \
            FROM permits";
        let caught = std::panic::catch_unwind(|| PermitRow::assert_selected_in_order(swapped));
        assert!(caught.is_err());
    }
}
