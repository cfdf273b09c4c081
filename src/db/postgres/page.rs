//! A run's page on PostgreSQL: its events, notices and permit changes in
//! one transaction (R7, R8), which `run.rs` puts in flight and commits in
//! page order.

use chrono::NaiveDate;
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;

use super::super::rows::*;
use super::apply_effects;
use super::copy::{copy_in, CopyBinary};
use super::run::fence;
use crate::error::{Error, Result};

/// One page's events, notices and permit changes in one transaction on
/// `conn` (R7, R8): one statement each, whatever the page size. `ids`: the
/// ids the page's first event and first notice follow; a held run's page
/// has none (its events take max + 1 as they go in). `after`: the page
/// before, which commits first.
pub(super) async fn write_page(
    conn: &mut PgConnection,
    (run, owner): (&RunRecord, &str),
    batch: &RunBatch,
    ids: Option<(i64, i64)>,
    after: Option<oneshot::Receiver<()>>,
) -> Result<()> {
    let mut tx = conn.begin().await?;
    match (batch.held, ids) {
        (false, Some((events_after, notices_after))) => {
            copy_in(&mut tx, COPY_EVENTS, event_rows(batch, events_after)).await?;
            copy_in(&mut tx, COPY_NOTICES, notice_rows(batch, notices_after)).await?;
            // R7/R3 effects: a new valid_until or a new status per permit.
            let effects = batch.events.iter();
            apply_effects(&mut tx, effects.map(|e| (e.permit_no.as_str(), e.effect))).await?;
        }
        (true, _) => insert_held_events(&mut tx, batch).await?,
        (false, None) => {
            return Err(Error::Runtime(anyhow::anyhow!(
                "internal: a page of a run that is not held came without its ids"
            )))
        }
    }
    if let Some(d) = crate::faults::delay(crate::faults::Delay::PgPage) {
        tokio::time::sleep(d).await;
    }
    if let Some(after) = after {
        // The sender is dropped unsent if the page before failed.
        after.await.map_err(|_| {
            Error::Runtime(anyhow::anyhow!(
                "a page of the run was not written, so neither is the next"
            ))
        })?;
    }
    // The fence goes last, so that the run's pages in flight wait for one
    // another only to commit: from here to the commit the runs row is
    // locked (see `fence`). Taken over before, this page rolls back.
    fence(&mut tx, run, owner, &batch.decided_at).await?;
    tx.commit().await?;
    Ok(())
}

/// A page's events, binary (see the `copy` module): their columns, and
/// [`event_rows`] writes their values in this order.
const COPY_EVENTS: &str = "COPY events (event_id, run_id, as_of, permit_no, id_number, kind,
       reasons, valid_until, new_valid_until, residence_visited_on, residence_result, si_month,
       si_status, si_employer_uscc, marital_status, decided_at, prior_status)
     FROM STDIN (FORMAT binary)";

/// The rows of [`COPY_EVENTS`], their ids following `after` in page order.
fn event_rows(batch: &RunBatch, after: i64) -> Vec<u8> {
    let mut rows = CopyBinary::with_capacity(batch.events.len() * 240);
    let as_of = batch.as_of;
    for (event_id, e) in (after + 1..).zip(&batch.events) {
        let si_month = e.si_month.map(|m| m.to_string());
        rows.row(17)
            .bigint(event_id)
            .bigint(batch.run_id)
            .date(as_of)
            .text(&e.permit_no)
            .text(&e.id_number)
            .text(e.kind.code())
            .text(e.reasons.code())
            .date(e.valid_until)
            .opt_date(e.new_valid_until)
            .opt_date(e.residence_visited_on)
            .opt_text(e.residence_result.map(|r| r.code()))
            .opt_text(si_month.as_deref())
            .opt_text(e.si_status.map(|s| s.code()))
            .opt_text(e.si_employer_uscc.as_deref())
            .opt_text(e.marital_status.map(|m| m.code()))
            .text(&batch.decided_at)
            .opt_text(e.prior_status.map(|s| s.code()));
    }
    rows.finish()
}

/// A page's notices, one per event (R8), binary: their columns, and
/// [`notice_rows`] writes their values in this order. A queued notice is
/// due at once: fresh, with no `next_attempt_at` (migration 15), as in
/// [`super::queue_notices`].
const COPY_NOTICES: &str = "COPY notifications (notification_id, run_id, as_of, permit_no,
       cycle_valid_until, kind, channel, recipient, message, status, created_at)
     FROM STDIN (FORMAT binary)";

/// The rows of [`COPY_NOTICES`], their ids following `after` in page order.
fn notice_rows(batch: &RunBatch, after: i64) -> Vec<u8> {
    let mut rows = CopyBinary::with_capacity(batch.events.len() * 400);
    let at = batch.decided_at.as_str();
    for (notification_id, e) in (after + 1..).zip(&batch.events) {
        let n = &e.notice;
        rows.row(11)
            .bigint(notification_id)
            .bigint(batch.run_id)
            .date(batch.as_of)
            .text(&e.permit_no)
            .date(e.valid_until)
            .text(e.kind.code())
            .text(n.channel.code())
            .text(&n.recipient)
            .text(&n.message)
            .text(n.status.code())
            .text(at);
    }
    rows.finish()
}

/// A held run's page: its events only, ids max + 1 in page order; resumed
/// after a crash, the run skips those a committed page already holds.
async fn insert_held_events(tx: &mut PgConnection, batch: &RunBatch) -> Result<()> {
    let ev = &batch.events;
    let permit_nos: Vec<&str> = ev.iter().map(|e| e.permit_no.as_str()).collect();
    let id_numbers: Vec<&str> = ev.iter().map(|e| e.id_number.as_str()).collect();
    let kinds: Vec<&str> = ev.iter().map(|e| e.kind.code()).collect();
    let reasons: Vec<&str> = ev.iter().map(|e| e.reasons.code()).collect();
    let valid_until: Vec<NaiveDate> = ev.iter().map(|e| e.valid_until).collect();
    let new_valid_until: Vec<Option<NaiveDate>> = ev.iter().map(|e| e.new_valid_until).collect();
    let visited_on: Vec<Option<NaiveDate>> = ev.iter().map(|e| e.residence_visited_on).collect();
    let residence_result: Vec<Option<&str>> = ev
        .iter()
        .map(|e| e.residence_result.map(|r| r.code()))
        .collect();
    let si_month: Vec<Option<String>> = ev
        .iter()
        .map(|e| e.si_month.map(|m| m.to_string()))
        .collect();
    let si_status: Vec<Option<&str>> = ev.iter().map(|e| e.si_status.map(|s| s.code())).collect();
    let si_employer: Vec<Option<&str>> = ev.iter().map(|e| e.si_employer_uscc.as_deref()).collect();
    let marital: Vec<Option<&str>> = ev
        .iter()
        .map(|e| e.marital_status.map(|m| m.code()))
        .collect();
    let prior: Vec<Option<&str>> = ev
        .iter()
        .map(|e| e.prior_status.map(|s| s.code()))
        .collect();
    sqlx::query(
        "INSERT INTO events (event_id, run_id, as_of, permit_no, id_number, kind, reasons, valid_until,
           new_valid_until, residence_visited_on, residence_result, si_month, si_status,
           si_employer_uscc, marital_status, decided_at, prior_status, held)
         SELECT (SELECT coalesce(max(event_id), 0) FROM events) + u.ord, $1, $2, u.permit_no,
           u.id_number, u.kind, u.reasons, u.valid_until, u.new_valid_until, u.visited_on,
           u.residence_result, u.si_month, u.si_status, u.si_employer, u.marital, $3, u.prior, true
         FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::date[], $9::date[],
                     $10::date[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                     $16::text[])
              WITH ORDINALITY AS u (permit_no, id_number, kind, reasons, valid_until, new_valid_until,
                     visited_on, residence_result, si_month, si_status, si_employer, marital, prior,
                     ord)
         ON CONFLICT DO NOTHING",
    )
    .bind(batch.run_id)
    .bind(batch.as_of)
    .bind(batch.decided_at.as_str())
    .bind(&permit_nos)
    .bind(&id_numbers)
    .bind(&kinds)
    .bind(&reasons)
    .bind(&valid_until)
    .bind(&new_valid_until)
    .bind(&visited_on)
    .bind(&residence_result)
    .bind(&si_month)
    .bind(&si_status)
    .bind(&si_employer)
    .bind(&marital)
    .bind(&prior)
    .execute(tx)
    .await?;
    Ok(())
}
