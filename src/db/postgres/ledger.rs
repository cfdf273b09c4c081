//! The run ledger's corrections on PostgreSQL: releasing a held run (and
//! reading the stored permits its release is worked out from) and
//! reverting a completed one, each in one transaction.

use std::collections::HashMap;

use chrono::NaiveDate;
use sqlx::{Connection, FromRow};

use super::super::register::permit_columns;
use super::super::rows::*;
use super::super::runs::{REVERT_MARK, SENT_NOTICES, WITHDRAW_NOTICES};
use super::{apply_effects, queue_notices, PgDb};
use crate::error::Result;

impl PgDb {
    /// These permits as stored, by permit_no.
    pub async fn permits_by_no(&self, permit_nos: &[&str]) -> Result<HashMap<String, PermitRow>> {
        let mut out = HashMap::with_capacity(permit_nos.len());
        for chunk in permit_nos.chunks(10_000) {
            let rows = sqlx::query(concat!(
                "SELECT ",
                permit_columns!(),
                " FROM permits WHERE permit_no = ANY($1)"
            ))
            .bind(chunk)
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                let p = PermitRow::from_row(r)?;
                out.insert(p.permit_no.clone(), p);
            }
        }
        Ok(out)
    }

    /// Applies a held run (docs/rules.md, "Release and discard"): queues the notices and makes the
    /// permit changes of the items that have a notice, records what was
    /// done with each event, and marks the run completed — one
    /// transaction. `false` (nothing done) if the run is no longer held.
    pub async fn release_run(&self, run_id: i64, items: &[ReleaseItem], now: &str) -> Result<bool> {
        let mut conn = self.detached().await?;
        let mut tx = conn.begin().await?;
        let as_of: Option<NaiveDate> = sqlx::query_scalar(
            "UPDATE runs SET status = 'completed', released_at = $2
             WHERE run_id = $1 AND status = 'held' RETURNING as_of",
        )
        .bind(run_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(as_of) = as_of else {
            return Ok(false);
        };
        let applied: Vec<(&ReleaseItem, &NewNotice)> = items
            .iter()
            .filter_map(|i| i.notice.as_ref().map(|n| (i, n)))
            .collect();
        queue_notices(
            &mut tx,
            (run_id, as_of, now),
            None,
            applied
                .iter()
                .map(|(i, n)| (i.permit_no.as_str(), i.valid_until, i.kind, *n)),
        )
        .await?;
        apply_effects(
            &mut tx,
            applied
                .iter()
                .map(|(i, _)| (i.permit_no.as_str(), i.effect)),
        )
        .await?;
        let event_ids: Vec<i64> = items.iter().map(|i| i.event_id).collect();
        let was_applied: Vec<bool> = items.iter().map(|i| i.notice.is_some()).collect();
        sqlx::query(
            "INSERT INTO event_releases (event_id, run_id, applied, released_at)
             SELECT u.event_id, $1, u.applied, $2 FROM UNNEST($3::bigint[], $4::bool[]) AS u (event_id, applied)",
        )
        .bind(run_id)
        .bind(now)
        .bind(&event_ids)
        .bind(&was_applied)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let _ = conn.close().await;
        Ok(true)
    }

    /// `autosign revert` in one transaction (see the SQLite twin). The
    /// permits are set back a chunk at a time, each chunk one statement; a
    /// run takes at most one step per permit (R3), so a permit is in one
    /// item at most.
    pub async fn revert_run(
        &self,
        run: &RunRecord,
        items: &[RevertItem],
        now: &str,
    ) -> Result<RevertDone> {
        let run_id = run.run_id;
        let mut conn = self.detached().await?;
        let mut tx = conn.begin().await?;
        let marked = sqlx::query(REVERT_MARK)
            .bind(run_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if marked != 1 {
            tx.rollback().await?;
            return Ok(RevertDone::NotCompleted);
        }
        let sent: i64 = sqlx::query_scalar(SENT_NOTICES)
            .bind(run.as_of)
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
        if sent > 0 {
            tx.rollback().await?;
            return Ok(RevertDone::Sent(sent as u64));
        }
        let withdrawn = sqlx::query(WITHDRAW_NOTICES)
            .bind(run.as_of)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut not_undone = Vec::new();
        for chunk in items.chunks(10_000) {
            let restores: Vec<(&str, Restore)> = chunk
                .iter()
                .filter_map(|i| i.restore.map(|r| (i.permit_no.as_str(), r)))
                .collect();
            let nos: Vec<&str> = restores.iter().map(|(n, _)| *n).collect();
            let left_vu: Vec<NaiveDate> =
                restores.iter().map(|(_, r)| r.left_valid_until).collect();
            let left_st: Vec<&str> = restores.iter().map(|(_, r)| r.left_status.code()).collect();
            let vu: Vec<NaiveDate> = restores.iter().map(|(_, r)| r.valid_until).collect();
            let st: Vec<&str> = restores.iter().map(|(_, r)| r.status.code()).collect();
            let set_back: Vec<String> = sqlx::query_scalar(
                "UPDATE permit_state p SET valid_until = u.valid_until, status = u.status
                 FROM UNNEST($1::text[], $2::date[], $3::text[], $4::date[], $5::text[])
                      AS u (permit_no, left_valid_until, left_status, valid_until, status)
                 WHERE p.permit_no = u.permit_no AND p.valid_until = u.left_valid_until
                   AND p.status = u.left_status
                 RETURNING p.permit_no",
            )
            .bind(&nos)
            .bind(&left_vu)
            .bind(&left_st)
            .bind(&vu)
            .bind(&st)
            .fetch_all(&mut *tx)
            .await?;
            let set_back: std::collections::HashSet<&str> =
                set_back.iter().map(String::as_str).collect();
            let ids: Vec<i64> = chunk.iter().map(|i| i.event_id).collect();
            let undone: Vec<bool> = chunk
                .iter()
                .map(|i| i.restore.is_none() || set_back.contains(i.permit_no.as_str()))
                .collect();
            for (i, done) in chunk.iter().zip(&undone) {
                if !done {
                    not_undone.push(i.permit_no.clone());
                }
            }
            sqlx::query(
                "INSERT INTO event_reverts (event_id, run_id, undone, reverted_at)
                 SELECT u.event_id, $3, u.undone, $4 FROM UNNEST($1::bigint[], $2::bool[]) AS u (event_id, undone)",
            )
            .bind(&ids)
            .bind(&undone)
            .bind(run_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(RevertDone::Reverted {
            withdrawn,
            not_undone,
        })
    }
}
