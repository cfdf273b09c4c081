//! R10: what a clerk or the 962222 hotline needs to answer "did my
//! endorsement go through?" — the permit's state, its current cycle, the
//! latest decision with reasons, and its notices.

use chrono::{Duration, NaiveDate};
use serde::Serialize;

use crate::db::Db;
use crate::domain::{
    mask_id_str, mask_name, Channel, EventKind, EventState, NoticeStatus, PermitStatus,
};
use crate::error::{Error, Result};
use crate::reconcile::rules::closes_cycle;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub permit_no: String,
    /// Masked: first 6 and last 4 characters.
    pub id_number: String,
    /// Masked: family name only.
    pub name: String,
    pub status: PermitStatus,
    pub valid_until: NaiveDate,
    pub street_code: String,
    pub service_center: Option<String>,
    pub cycle: Cycle,
    pub latest_event: Option<EventView>,
    pub notices: Vec<NoticeView>,
}

#[derive(Debug, Serialize)]
pub struct Cycle {
    /// The cycle's key with permit_no: the current valid_until.
    pub valid_until: NaiveDate,
    pub window_opens: NaiveDate,
    pub decision_deadline: NaiveDate,
    /// `open`, `decided` (VISIT_CENTER), `not_applicable` (suspended or
    /// cancelled permit).
    pub state: String,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub run_id: i64,
    pub as_of: NaiveDate,
    pub decision: String,
    pub reasons: Vec<String>,
    pub reasons_zh: Vec<String>,
    pub valid_until: NaiveDate,
    pub new_valid_until: Option<NaiveDate>,
    pub decided_at: String,
}

#[derive(Debug, Serialize)]
pub struct NoticeView {
    pub notification_id: i64,
    pub kind: EventKind,
    pub channel: Channel,
    pub status: NoticeStatus,
    pub attempts: i64,
    pub created_at: String,
    pub sent_at: Option<String>,
    pub last_error: Option<String>,
    /// Each time an operator queued it again (`autosign requeue`), oldest
    /// first; left out of the JSON when there is none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requeues: Vec<RequeueView>,
}

#[derive(Debug, Serialize)]
pub struct RequeueView {
    pub requeued_at: String,
    pub os_user: String,
    pub reason: String,
    pub previous_status: NoticeStatus,
    pub previous_attempts: i64,
}

pub async fn status(db: &Db, settings: &Settings, permit_no: &str) -> Result<StatusReport> {
    let permit = db
        .permit(permit_no)
        .await?
        .ok_or_else(|| Error::Refused(not_found(permit_no)))?;
    // Only applied events decide anything: a held, void or not-applied one
    // (docs/rules.md, "The audit trail") changed nothing for the holder.
    let events: Vec<_> = db
        .events_for(permit_no)
        .await?
        .into_iter()
        .filter(|e| e.state == EventState::Applied)
        .collect();
    let notices = db.notifications_for(permit_no).await?;
    let requeues = db.requeues_for(permit_no).await?;
    let rules = &settings.rules;
    // C8, as the run weighs it: a final decision in effect for the
    // current cycle closes it.
    let closed = events
        .iter()
        .any(|e| e.valid_until == permit.valid_until && closes_cycle(e.decision, e.state));
    let state = if permit.status != PermitStatus::Active {
        "not_applicable"
    } else if closed {
        "decided"
    } else {
        "open"
    };
    let latest = events
        .iter()
        .max_by_key(|e| (e.as_of, e.decided_at.clone()))
        .map(|e| EventView {
            run_id: e.run_id,
            as_of: e.as_of,
            decision: e.decision.code().to_string(),
            reasons: e.reasons.iter().map(|r| r.code().to_string()).collect(),
            reasons_zh: e.reasons.iter().map(|r| r.label_zh().to_string()).collect(),
            valid_until: e.valid_until,
            new_valid_until: e.new_valid_until,
            decided_at: e.decided_at.clone(),
        });
    let notices_center = crate::outbox::notice::Notices::from_settings(settings)?;
    // A gateway's answer stored before it was scrubbed at the source may
    // still hold a number or a credential: never shown here.
    let secrets =
        crate::outbox::channel::Secrets::new(&[&settings.sms.auth_token, &settings.email.password]);
    let clean_error = |e: String| secrets.redact(&crate::domain::mask_numbers_in_text(&e));
    Ok(StatusReport {
        permit_no: permit.permit_no.clone(),
        id_number: mask_id_str(&permit.id_number),
        name: mask_name(&permit.name),
        status: permit.status,
        valid_until: permit.valid_until,
        street_code: permit.street_code.clone(),
        service_center: notices_center
            .center(&permit.street_code)
            .map(|c| c.name.clone()),
        cycle: Cycle {
            valid_until: permit.valid_until,
            // Settings are range-checked; a stored date near chrono's limit
            // shows as the cycle's own date rather than panicking.
            window_opens: permit
                .valid_until
                .checked_sub_signed(Duration::days(i64::from(rules.window_days)))
                .unwrap_or(permit.valid_until),
            decision_deadline: permit
                .valid_until
                .checked_sub_signed(Duration::days(i64::from(rules.decision_deadline_days)))
                .unwrap_or(permit.valid_until),
            state: state.to_string(),
        },
        latest_event: latest,
        notices: notices
            .into_iter()
            .map(|n| NoticeView {
                notification_id: n.notification_id,
                kind: n.kind,
                channel: n.channel,
                status: n.status,
                attempts: n.attempts,
                created_at: n.created_at,
                sent_at: n.sent_at,
                last_error: n.last_error.map(clean_error),
                requeues: requeues
                    .iter()
                    .filter(|q| q.notification_id == n.notification_id)
                    .map(|q| RequeueView {
                        requeued_at: q.requeued_at.clone(),
                        os_user: q.os_user.clone(),
                        reason: q.reason.clone(),
                        previous_status: q.previous_status,
                        previous_attempts: q.previous_attempts,
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// The refusal for an unknown permit number. A clerk may type the
/// holder's ID number or phone instead: that is not echoed in clear
/// (docs/rules.md, "Personal data"), and the message says what `status`
/// takes.
fn not_found(permit_no: &str) -> String {
    if let Ok(id) = crate::domain::IdNumber::parse(permit_no) {
        return format!(
            "no permit {:?} in the register: that is an ID number; status takes a permit number",
            id.masked()
        );
    }
    if let Ok(phone) = crate::domain::Phone::parse(permit_no) {
        return format!(
            "no permit {:?} in the register: that is a phone number; status takes a permit number",
            phone.masked()
        );
    }
    format!("no permit {permit_no:?} in the register")
}

/// The report for a terminal. Every value from the database or a feed (a
/// permit number, a gateway's answer) has its control characters escaped.
pub fn render(r: &StatusReport) -> String {
    crate::domain::escape_controls_in_lines(&render_raw(r)).into_owned()
}

fn render_raw(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "permit {}  holder {} ({})",
        r.permit_no, r.name, r.id_number
    );
    let _ = writeln!(s, "  status        {}", r.status);
    let _ = writeln!(s, "  valid until   {}", r.valid_until);
    let _ = writeln!(
        s,
        "  current cycle ends {}: {} (window opens {}, decision deadline {})",
        r.cycle.valid_until, r.cycle.state, r.cycle.window_opens, r.cycle.decision_deadline
    );
    if let Some(c) = &r.service_center {
        let _ = writeln!(s, "  center        {c}");
    }
    match &r.latest_event {
        None => {
            let _ = writeln!(s, "  latest decision: none yet");
        }
        Some(e) => {
            let _ = writeln!(
                s,
                "  latest decision: {} for the cycle ending {} (run {}, as_of {}, at {})",
                e.decision, e.valid_until, e.run_id, e.as_of, e.decided_at
            );
            if let Some(n) = e.new_valid_until {
                let _ = writeln!(s, "    new valid until {n}");
            }
            for (code, zh) in e.reasons.iter().zip(&e.reasons_zh) {
                let _ = writeln!(s, "    reason {code}: {zh}");
            }
        }
    }
    if r.notices.is_empty() {
        let _ = writeln!(s, "  notices: none");
    } else {
        let _ = writeln!(s, "  notices:");
        for n in &r.notices {
            let _ = writeln!(
                s,
                "    #{} {} via {}: {} (attempts {}, created {}{}{})",
                n.notification_id,
                n.kind,
                n.channel,
                n.status,
                n.attempts,
                n.created_at,
                n.sent_at
                    .as_deref()
                    .map(|t| format!(", sent {t}"))
                    .unwrap_or_default(),
                n.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default(),
            );
            for q in &n.requeues {
                let _ = writeln!(
                    s,
                    "      requeued {} by {} (was {}, attempts {}): {}",
                    q.requeued_at, q.os_user, q.previous_status, q.previous_attempts, q.reason
                );
            }
        }
    }
    s
}
