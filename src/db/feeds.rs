//! The feeds family: the import ledger (`imports`, one row per file) and
//! the feed tables an import writes. The ledger's statements are the same
//! on both backends and written once here; the import itself — a file's
//! rows written in one transaction — is each backend's bulk path, behind
//! [`super::ImportTx`].

use super::rows::*;
use super::{on_pool, Db};
use crate::error::Result;

/// Each feed's newest import (the brake's freshness check) and its two
/// newest snapshot imports (the row-drop check).
const LATEST_IMPORTS: &str =
    "SELECT import_id, feed, file_name, imported_at, rows_imported, delivery FROM (
       SELECT import_id, feed, file_name, imported_at, rows_imported, delivery,
              row_number() OVER (PARTITION BY feed ORDER BY import_id DESC) AS k,
              row_number() OVER (PARTITION BY feed, delivery ORDER BY import_id DESC) AS kd
       FROM imports) AS i WHERE k = 1 OR (delivery = 'snapshot' AND kd <= 2)
     ORDER BY feed, import_id DESC";

impl Db {
    /// The import of this feed's file with this content, if it was
    /// imported before (R2: a file is imported once).
    pub async fn find_import(&self, feed: &str, sha256: &str) -> Result<Option<ImportRecord>> {
        let sql =
            "SELECT import_id, file_name, imported_at, rows_read, rows_imported, rows_rejected
                   FROM imports WHERE feed = $1 AND sha256 = $2";
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(feed)
            .bind(sha256)
            .fetch_optional(pool)
            .await?))
    }

    /// Each feed's newest import and its two newest snapshot imports (one
    /// row where they are the same import), by feed, newest first.
    pub async fn latest_imports(&self) -> Result<Vec<FeedImport>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(LATEST_IMPORTS)
            .fetch_all(pool)
            .await?))
    }
}
