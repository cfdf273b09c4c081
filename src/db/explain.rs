//! What `autosign explain` reads beyond `status`: where a permit's register
//! row and a holder's feed rows came from — the import (its feed, file name
//! and time) and the physical line in that file (R2's rejects count lines
//! the same way).
//!
//! Both backends keep the import and the line of every feed row and of each
//! permit's last register row (SQLite since migration 0003, PostgreSQL
//! since 0008); a row imported before its backend kept the line has line 0,
//! reported as not recorded. The statements are the same text on both
//! (`$1` is also SQLite's first parameter): each feed table holds one row
//! per key, looked up by the holder's ID number.
//!
//! Reads only, each statement on its own (as `status` does): no job lock,
//! no transaction held.

use chrono::NaiveDate;
use sqlx::Row;

use super::{on_pool, Db};
use crate::domain::{MaritalStatus, Month, PaymentStatus, ResidenceResult};
use crate::error::Result;

/// Where a stored row came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOrigin {
    pub import_id: i64,
    /// The row's physical line in the imported file; `None` when not
    /// recorded (imported before the backend kept lines).
    pub line: Option<u64>,
    /// The import's feed, file name (as given to `import`, or the inbox
    /// path) and time; `None` if the import record is gone.
    pub feed: Option<String>,
    pub file_name: Option<String>,
    pub imported_at: Option<String>,
}

/// A residence visit as stored (R5).
#[derive(Debug, Clone)]
pub struct StoredVisit {
    pub visited_on: NaiveDate,
    pub result: ResidenceResult,
    pub officer_id: String,
    pub origin: RowOrigin,
}

/// A social-insurance month as stored (R5).
#[derive(Debug, Clone)]
pub struct StoredPayment {
    pub month: Month,
    pub status: PaymentStatus,
    pub employer_uscc: String,
    pub employer_name: String,
    pub origin: RowOrigin,
}

/// A civil-status record as stored (R5, C4).
#[derive(Debug, Clone)]
pub struct StoredCivil {
    pub marital_status: MaritalStatus,
    pub as_of: Option<NaiveDate>,
    pub origin: RowOrigin,
}

/// A holder's stored feed rows, each feed's in key order: one row per key,
/// the one R2 kept (settled when the rows were written).
#[derive(Debug, Clone, Default)]
pub struct HolderRows {
    pub visits: Vec<StoredVisit>,
    pub payments: Vec<StoredPayment>,
    pub civil: Vec<StoredCivil>,
}

const PERMIT_ORIGIN: &str = "SELECT p.import_id, p.import_line, i.feed, i.file_name, i.imported_at
     FROM permits p LEFT JOIN imports i ON i.import_id = p.import_id WHERE p.permit_no = $1";

/// A holder's rows of one feed, with their origin, in key order (one row
/// per key on both backends: R2 is settled when rows are written).
macro_rules! holder_rows {
    ($columns:literal, $table:literal, $order:literal) => {
        concat!(
            "SELECT ",
            $columns,
            ", f.import_id, f.line, i.feed, i.file_name, i.imported_at FROM ",
            $table,
            " f LEFT JOIN imports i ON i.import_id = f.import_id WHERE f.id_number = $1 ORDER BY ",
            $order
        )
    };
}

const VISITS: &str = holder_rows!(
    "f.visited_on, f.result, f.officer_id",
    "residence",
    "f.visited_on"
);
const PAYMENTS: &str = holder_rows!(
    "f.month, f.status, f.employer_uscc, f.employer_name",
    "social_insurance",
    "f.month"
);
const CIVIL: &str = holder_rows!("f.marital_status, f.as_of", "civil_status", "f.import_id");

/// The origin in columns `at..at + 5` (import_id, line, feed, file name,
/// imported_at); the same mapping for either backend's row.
macro_rules! origin_at {
    ($r:expr, $at:expr) => {
        RowOrigin {
            import_id: $r.try_get($at)?,
            line: u64::try_from($r.try_get::<i64, _>($at + 1)?)
                .ok()
                .filter(|l| *l > 0),
            feed: $r.try_get($at + 2)?,
            file_name: $r.try_get($at + 3)?,
            imported_at: $r.try_get($at + 4)?,
        }
    };
}

/// The three feed queries of [`Db::holder_rows`] on `$pool`, mapped the
/// same way on either backend.
macro_rules! read_holder {
    ($pool:expr, $id:expr, $visits:expr, $payments:expr, $civil:expr) => {{
        let mut out = HolderRows::default();
        for r in sqlx::query($visits).bind($id).fetch_all($pool).await? {
            out.visits.push(StoredVisit {
                visited_on: r.try_get(0)?,
                result: r.try_get(1)?,
                officer_id: r.try_get(2)?,
                origin: origin_at!(r, 3),
            });
        }
        for r in sqlx::query($payments).bind($id).fetch_all($pool).await? {
            out.payments.push(StoredPayment {
                month: r.try_get(0)?,
                status: r.try_get(1)?,
                employer_uscc: r.try_get(2)?,
                employer_name: r.try_get(3)?,
                origin: origin_at!(r, 4),
            });
        }
        for r in sqlx::query($civil).bind($id).fetch_all($pool).await? {
            out.civil.push(StoredCivil {
                marital_status: r.try_get(0)?,
                as_of: r.try_get(1)?,
                origin: origin_at!(r, 2),
            });
        }
        out
    }};
}

impl Db {
    /// Where the permit's register row came from: the import that last
    /// wrote it and that row's line. `None` for an unknown permit.
    pub async fn permit_origin(&self, permit_no: &str) -> Result<Option<RowOrigin>> {
        Ok(on_pool!(self, |pool| {
            match sqlx::query(PERMIT_ORIGIN)
                .bind(permit_no)
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Some(origin_at!(r, 0)),
                None => None,
            }
        }))
    }

    /// Every stored residence, social-insurance and civil-status row of
    /// the holder with this ID number, with its origin.
    pub async fn holder_rows(&self, id_number: &str) -> Result<HolderRows> {
        Ok(on_pool!(self, |pool| read_holder!(
            pool, id_number, VISITS, PAYMENTS, CIVIL
        )))
    }
}
