//! The run ledger's corrections on SQLite: releasing a held run (and
//! reading the stored permits its release is worked out from) and
//! reverting a completed one, each in one transaction.

use std::collections::HashMap;

use super::super::register::permit_columns;
use super::super::rows::*;
use super::super::runs::{REVERT_MARK, SENT_NOTICES, WITHDRAW_NOTICES};
use super::raw::{raw_permit, with_raw, EffectWriter, NoticeRow, NoticeWriter, ROWS_PER_INSERT};
use super::SqliteDb;
use crate::error::Result;

impl SqliteDb {
    /// These permits as stored, by permit_no.
    pub async fn permits_by_no(&self, permit_nos: &[&str]) -> Result<HashMap<String, PermitRow>> {
        let mut conn = self.pool.acquire().await?;
        with_raw(&mut conn, |c| {
            let mut stmt = c.prepare(concat!(
                "SELECT ",
                permit_columns!(),
                " FROM permits WHERE permit_no = ?1"
            ))?;
            let mut out = HashMap::with_capacity(permit_nos.len());
            for no in permit_nos {
                let mut rows = stmt.query([no])?;
                if let Some(r) = rows.next()? {
                    out.insert(no.to_string(), raw_permit(r)?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Applies a held run (docs/rules.md, "Release and discard"): queues
    /// the notices and makes the permit changes of the items that have a
    /// notice, records what was done with each event, and marks the run
    /// completed — one transaction.
    /// `false` (nothing done) if the run is no longer held.
    pub async fn release_run(&self, run_id: i64, items: &[ReleaseItem], now: &str) -> Result<bool> {
        let Some(mut tx) = self
            .begin_run_transition(
                "UPDATE runs SET status = 'completed', released_at = ?2 WHERE run_id = ?1 AND status = 'held'",
                run_id,
                now,
            )
            .await?
        else {
            return Ok(false);
        };
        let as_of: chrono::NaiveDate =
            sqlx::query_scalar("SELECT as_of FROM runs WHERE run_id = ?1")
                .bind(run_id)
                .fetch_one(&mut *tx)
                .await?;
        with_raw(&mut tx, |c| {
            let applied: Vec<NoticeRow> = items
                .iter()
                .filter_map(|i| {
                    let n = i.notice.as_ref()?;
                    Some((i.permit_no.as_str(), i.valid_until, i.kind, n))
                })
                .collect();
            let mut notices = NoticeWriter::new(c, run_id, as_of, now);
            for chunk in applied.chunks(ROWS_PER_INSERT) {
                notices.insert(chunk)?;
            }
            let mut effects = EffectWriter::new(c)?;
            let mut release = c.prepare(
                "INSERT INTO event_releases (event_id, run_id, applied, released_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for item in items {
                if item.notice.is_some() {
                    effects.apply(&item.permit_no, item.effect)?;
                }
                release.execute(rusqlite::params![
                    item.event_id,
                    run_id,
                    item.notice.is_some(),
                    now
                ])?;
            }
            Ok(())
        })
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// `autosign revert` in one transaction: marks the completed run
    /// reverted, withdraws its notices, sets back each item's permit if it
    /// is still as the run left it, and records what was done with each
    /// event. Nothing is done if the run is not completed or one of its
    /// notices was sent.
    pub async fn revert_run(
        &self,
        run: &RunRecord,
        items: &[RevertItem],
        now: &str,
    ) -> Result<RevertDone> {
        let (as_of, run_id) = (run.as_of.to_string(), run.run_id);
        let Some(mut tx) = self.begin_run_transition(REVERT_MARK, run_id, now).await? else {
            return Ok(RevertDone::NotCompleted);
        };
        // The run's notices share its as_of: the as_of index finds them.
        let sent: i64 = sqlx::query_scalar(SENT_NOTICES)
            .bind(as_of.as_str())
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
        if sent > 0 {
            tx.rollback().await?;
            return Ok(RevertDone::Sent(sent as u64));
        }
        let withdrawn = sqlx::query(WITHDRAW_NOTICES)
            .bind(as_of.as_str())
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let not_undone = with_raw(&mut tx, |c| {
            let mut restore = c.prepare(
                "UPDATE permit_state SET valid_until = ?2, status = ?3
                 WHERE permit_no = ?1 AND valid_until = ?4 AND status = ?5",
            )?;
            let mut record = c.prepare(
                "INSERT INTO event_reverts (event_id, run_id, undone, reverted_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut not_undone = Vec::new();
            for item in items {
                let undone = match &item.restore {
                    None => true,
                    Some(r) => {
                        restore.execute(rusqlite::params![
                            item.permit_no,
                            r.valid_until.to_string(),
                            r.status.code(),
                            r.left_valid_until.to_string(),
                            r.left_status.code(),
                        ])? == 1
                    }
                };
                if !undone {
                    not_undone.push(item.permit_no.clone());
                }
                record.execute(rusqlite::params![item.event_id, run_id, undone, now])?;
            }
            Ok(not_undone)
        })
        .await?;
        tx.commit().await?;
        Ok(RevertDone::Reverted {
            withdrawn,
            not_undone,
        })
    }
}
