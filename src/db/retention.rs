//! Retention (docs/rules.md, "Retention and purge"): `autosign purge`
//! removes personal data the service no longer needs, in one transaction, and keeps the decisions'
//! audit trail (events are append-only and never purged).
//!
//! - Residence visits older than the feed cutoff date and social-insurance
//!   months older than the cutoff month: no run can select them again (runs
//!   only move forward, and the cutoff lies behind the evidence horizon —
//!   checked by the settings). What a decision was based on stays in its
//!   event's evidence columns.
//! - Civil-status rows imported before the cutoff *and replaced by a later
//!   row of the same holder*. The latest row of a holder is that holder's
//!   current record and is kept however old it is: removing it would turn
//!   "married" back into "no record".
//! - Notice texts and recipients of notices created before the notice
//!   cutoff whose delivery is over (`sent`, `dead`, `undeliverable`,
//!   `withdrawn`): the
//!   row, its status and timestamps stay for the notification export.

use chrono::NaiveDate;

use super::{on_pool, Db};
use crate::error::Result;

/// Where retention ends: rows older than these go.
#[derive(Debug, Clone)]
pub struct PurgeCutoffs {
    /// Visits with `visited_on` before this date.
    pub visited_before: NaiveDate,
    /// Contribution months before this `YYYY-MM`.
    pub month_before: String,
    /// Replaced civil-status rows of imports before this RFC 3339 instant.
    pub imported_before: String,
    /// Finished notices created before this RFC 3339 instant.
    pub notices_before: String,
}

/// What a purge removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub residence: u64,
    pub social_insurance: u64,
    pub civil_status: u64,
    pub notice_texts: u64,
}

/// Replaced civil-status rows of old imports (`$1`: imported before). The
/// statements are written once with `$1`, which SQLite also reads as the
/// first parameter.
const CIVIL: &str = "DELETE FROM civil_status WHERE import_id IN \
       (SELECT import_id FROM imports WHERE feed = 'civil-status' AND imported_at < $1) \
     AND EXISTS (SELECT 1 FROM civil_status later \
       WHERE later.id_number = civil_status.id_number AND later.import_id > civil_status.import_id)";

/// Finished notices' texts and recipients (`$1`: created before); a
/// notice withdrawn by `autosign revert` is finished too.
const NOTICES: &str = "UPDATE notifications SET message = '', recipient = '' \
     WHERE created_at < $1 AND status IN ('sent', 'dead', 'undeliverable', 'withdrawn') \
     AND (message <> '' OR recipient <> '')";

/// The four statements of a purge in one transaction on `$pool`, rolled
/// back when dry; the backends differ only in SQL text and in how a date
/// is bound.
macro_rules! purge_in {
    ($pool:expr, $dry:expr, [$residence:expr, $visited:expr], [$si:expr, $month:expr], [$civil:expr, $imported:expr], [$notices:expr, $created:expr]) => {{
        let mut tx = $pool.begin().await?;
        let residence = sqlx::query($residence)
            .bind($visited)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let social_insurance = sqlx::query($si)
            .bind($month)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let civil_status = sqlx::query($civil)
            .bind($imported)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let notice_texts = sqlx::query($notices)
            .bind($created)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if $dry {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        PurgeCounts {
            residence,
            social_insurance,
            civil_status,
            notice_texts,
        }
    }};
}

impl Db {
    /// Deletes (or, with `dry_run`, counts and rolls back) the rows behind
    /// `cut`, in one transaction. The caller holds the job lock.
    pub async fn purge(&self, cut: &PurgeCutoffs, dry_run: bool) -> Result<PurgeCounts> {
        Ok(on_pool!(self, |pool| purge_in!(
            pool,
            dry_run,
            [
                "DELETE FROM residence WHERE visited_on < $1",
                cut.visited_before
            ],
            [
                "DELETE FROM social_insurance WHERE month < $1",
                &cut.month_before
            ],
            [CIVIL, &cut.imported_before],
            [NOTICES, &cut.notices_before]
        )))
    }
}
