//! The delivery step (R8): `autosign deliver` runs [`deliver`] once; the
//! daemon runs [`run_worker`], which repeats it.
//!
//! Per channel, in batches: claim due notices (one short transaction) →
//! send each, outside any transaction → record each outcome (one short
//! statement): `sent` with the time and the gateway's or relay's
//! reference; `failed` with the error and a retry time (exponential
//! backoff with jitter); `dead` with the error after a permanent failure
//! or the last allowed attempt. SMS is not sent during quiet hours; each
//! channel is paced to its rate limit; a channel that fails transiently
//! `breaker_failures` times in a row is stopped for the step, leaving the
//! rest of its notices queued with their attempts unspent.
//!
//! autosign never sends a notice twice by itself, with one exception: a
//! process killed between a send and its record. The claim then expires
//! and the notice is sent again — with the same idempotency key, by which
//! the gateway (and the Message-ID, by which a mail system) can drop the
//! repeat. docs/delivery.md explains this to operators.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::channel::{masked_recipient, Accepted, DeliveryError};
use super::email::Mailer;
use super::policy::{backoff, Pacer, QuietHours};
use super::sms::SmsGateway;
use crate::clock::Clock;
use crate::db::outbox::{ClaimedNotice, NoticeMark, OutboxCount};
use crate::db::Db;
use crate::domain::{Channel, NoticeStatus};
use crate::error::{Error, Result};
use crate::settings::Settings;

/// The configured channels; a channel left unconfigured is `None` and its
/// notices stay queued.
#[derive(Debug)]
pub struct Channels {
    pub sms: Option<SmsGateway>,
    pub email: Option<Mailer>,
}

impl Channels {
    /// Builds the clients. A bad URL, sender address or CA file is a
    /// configuration error (exit 2), found before any database work.
    /// Needs a tokio runtime (the SMTP pool runs a task).
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        // Validation refused these unless allowed; allowed, they are still
        // worth a warning at every start.
        for why in settings.insecure_transports() {
            tracing::warn!("insecure transport allowed: {why}");
        }
        Ok(Channels {
            sms: SmsGateway::from_settings(&settings.sms)?,
            email: Mailer::from_settings(&settings.email)?,
        })
    }

    /// Closes pooled SMTP connections.
    pub async fn shutdown(&self) {
        if let Some(m) = &self.email {
            m.shutdown().await;
        }
    }
}

/// What became of a channel in one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChannelState {
    /// Claimed and sent until nothing was due.
    #[default]
    Ran,
    /// No gateway/relay configured: its notices stay queued.
    NotConfigured,
    /// Quiet hours (SMS only): its notices wait for them to end.
    QuietHours,
    /// Stopped after `breaker_failures` transient failures in a row.
    Stopped,
    /// Asked to stop (signal or daemon shutdown).
    Interrupted,
}

/// Counts for one channel in one step.
#[derive(Debug, Clone, Default)]
pub struct ChannelOutcome {
    pub state: ChannelState,
    pub sent: u64,
    /// Transient failure; retry scheduled.
    pub retry: u64,
    /// Permanent failure or attempts exhausted.
    pub dead: u64,
    /// Claimed but not attempted (quiet hours began, lease ran short,
    /// channel stopped, interrupted): back in the queue, attempt unspent.
    pub released: u64,
    /// Sent or failed, but the claim had expired and another attempt had
    /// taken the notice over; that attempt records the outcome.
    pub lost: u64,
    /// Due notices of this channel left when the step ended.
    pub waiting: i64,
    /// The last transient error when the channel was stopped.
    pub stop_reason: Option<String>,
}

/// The summary of one delivery step.
#[derive(Debug, Clone)]
pub struct DeliveryOutcome {
    pub started_at: DateTime<Utc>,
    pub sms: ChannelOutcome,
    pub email: ChannelOutcome,
    /// Claims of a last attempt that expired unrecorded: now `dead`.
    pub buried: u64,
    pub quiet_hours: QuietHours,
    /// The whole outbox after the step, by status.
    pub outbox: Vec<OutboxCount>,
}

enum Sender<'a> {
    Sms(&'a SmsGateway),
    Email(&'a Mailer),
}

impl Sender<'_> {
    async fn send(&self, n: &ClaimedNotice) -> Result<Accepted, DeliveryError> {
        match self {
            Sender::Sms(g) => g.send(n).await,
            Sender::Email(m) => m.send(n).await,
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            Sender::Sms(g) => g.timeout(),
            Sender::Email(m) => m.timeout(),
        }
    }
}

/// Everything one step needs, shared by its channels.
struct Step<'a> {
    db: &'a Db,
    settings: &'a Settings,
    clock: Clock,
    quiet: QuietHours,
    stop: &'a watch::Receiver<bool>,
}

/// What became of one claimed notice.
enum Done {
    Sent,
    Retry,
    Dead,
    Released,
    Lost,
}

/// One delivery step: every due notice of every configured channel is
/// attempted once (unless quiet hours, the breaker or `stop` intervene).
/// Errors are database errors (exit 1); send failures are counted, not
/// returned.
pub async fn deliver(
    db: &Db,
    settings: &Settings,
    channels: &Channels,
    clock: Clock,
    stop: &watch::Receiver<bool>,
) -> Result<DeliveryOutcome> {
    let d = &settings.delivery;
    let started_at = clock.now();
    let max = i64::from(d.max_attempts);
    let buried = db
        .bury_expired_claims(&clock.stamp(started_at), max)
        .await?;
    if buried > 0 {
        tracing::warn!(
            count = buried,
            "notices whose last attempt was interrupted are now dead"
        );
    }
    // A channel this step does not deliver: its notices wait, found by
    // their time like a retry's rather than by a mark that would not move.
    for (channel, configured) in [
        (Channel::Sms, channels.sms.is_some()),
        (Channel::Email, channels.email.is_some()),
    ] {
        if !configured {
            db.schedule_fresh_notices(channel).await?;
        }
    }
    let step = Step {
        db,
        settings,
        clock,
        quiet: QuietHours::from_settings(d, clock.tz()),
        stop,
    };
    let sms = async {
        match &channels.sms {
            None => Ok(ChannelOutcome {
                state: ChannelState::NotConfigured,
                ..Default::default()
            }),
            Some(g) => {
                run_channel(
                    &step,
                    Channel::Sms,
                    Sender::Sms(g),
                    d.sms_per_second,
                    settings.sms.concurrency,
                )
                .await
            }
        }
    };
    let email = async {
        match &channels.email {
            None => Ok(ChannelOutcome {
                state: ChannelState::NotConfigured,
                ..Default::default()
            }),
            Some(m) => {
                run_channel(
                    &step,
                    Channel::Email,
                    Sender::Email(m),
                    d.email_per_second,
                    settings.email.concurrency,
                )
                .await
            }
        }
    };
    let (sms, email) = tokio::join!(sms, email);
    let (mut sms, mut email) = (sms?, email?);
    let now = clock.now_rfc3339();
    for due in db.due_notices(&now, max).await? {
        match due.channel {
            Channel::Sms => sms.waiting = due.count,
            Channel::Email => email.waiting = due.count,
            // Never due: such a notice is undeliverable, not queued.
            Channel::None => {}
        }
    }
    Ok(DeliveryOutcome {
        started_at,
        sms,
        email,
        buried,
        quiet_hours: step.quiet,
        outbox: db.outbox_counts().await?,
    })
}

async fn run_channel(
    step: &Step<'_>,
    channel: Channel,
    sender: Sender<'_>,
    per_second: f64,
    concurrency: u32,
) -> Result<ChannelOutcome> {
    let d = &step.settings.delivery;
    let max = i64::from(d.max_attempts);
    let lease = Duration::from_secs(d.lease_secs);
    let pacer = Pacer::new(per_second);
    let breaker = Breaker::new(d.breaker_failures);
    let mut out = ChannelOutcome::default();
    loop {
        if *step.stop.borrow() {
            out.state = ChannelState::Interrupted;
            break;
        }
        if breaker.tripped() {
            out.state = ChannelState::Stopped;
            break;
        }
        let now = step.clock.now();
        if channel == Channel::Sms && step.quiet.contains(now) {
            out.state = ChannelState::QuietHours;
            break;
        }
        let claimed_at = Instant::now();
        let lease_until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::zero());
        let batch = step
            .db
            .claim_notices(
                channel,
                &step.clock.stamp(now),
                &step.clock.stamp(lease_until),
                max,
                i64::from(d.batch_size),
            )
            .await?;
        if batch.is_empty() {
            break;
        }
        crate::faults::point("deliver.after_claim");
        tracing::debug!(
            channel = channel.code(),
            count = batch.len(),
            "claimed notices"
        );
        // The last moment a send may start and still be recorded inside
        // the lease, with a margin for the record itself.
        let latest_start =
            claimed_at + lease.saturating_sub(sender.timeout() + Duration::from_secs(5));
        let results: Vec<Result<Done>> = stream::iter(batch)
            .map(|n| one(step, channel, &sender, n, latest_start, &pacer, &breaker))
            .buffer_unordered(concurrency.max(1) as usize)
            .collect()
            .await;
        for r in results {
            match r? {
                Done::Sent => out.sent += 1,
                Done::Retry => out.retry += 1,
                Done::Dead => out.dead += 1,
                Done::Released => out.released += 1,
                Done::Lost => out.lost += 1,
            }
        }
    }
    out.stop_reason = breaker.reason();
    Ok(out)
}

/// Attempts one claimed notice and records the outcome.
async fn one(
    step: &Step<'_>,
    channel: Channel,
    sender: &Sender<'_>,
    n: ClaimedNotice,
    latest_start: Instant,
    pacer: &Pacer,
    breaker: &Breaker,
) -> Result<Done> {
    let d = &step.settings.delivery;
    let n = &n;
    let release = |why: &'static str| async move {
        tracing::debug!(
            notification_id = n.notification_id,
            channel = channel.code(),
            why,
            "claim released"
        );
        let mark = NoticeMark::Release {
            next_attempt_at: step.clock.now_rfc3339(),
        };
        record(step, n, &mark, latest_start).await?;
        Ok::<_, Error>(Done::Released)
    };
    let stop_now = || {
        *step.stop.borrow()
            || breaker.tripped()
            || (channel == Channel::Sms && step.quiet.contains(step.clock.now()))
            || Instant::now() > latest_start
    };
    if stop_now() {
        return release("step ending before this send").await;
    }
    pacer.wait().await;
    if stop_now() {
        return release("step ending before this send").await;
    }
    let result = sender.send(n).await;
    // A kill here is the one window in which a notice goes out twice: the
    // send happened, its record did not (docs/delivery.md).
    crate::faults::point("deliver.after_send");
    let now = step.clock.now();
    let to = masked_recipient(n);
    let (mark, done) = match result {
        Ok(accepted) => {
            breaker.success();
            tracing::info!(
                notification_id = n.notification_id,
                channel = channel.code(),
                to = %to,
                attempt = n.attempt,
                "notice sent"
            );
            (
                NoticeMark::Sent {
                    at: step.clock.stamp(now),
                    provider_ref: accepted.provider_ref,
                },
                Done::Sent,
            )
        }
        Err(e) => {
            let error = format!("attempt {}: {}", n.attempt, e.message());
            let last = n.attempt >= i64::from(d.max_attempts);
            if e.is_transient() {
                breaker.failure(&error);
            } else {
                breaker.success();
            }
            if e.is_transient() && !last {
                let wait = backoff(
                    n.attempt.clamp(1, i64::from(u32::MAX)) as u32,
                    Duration::from_secs(d.backoff_base_secs),
                    Duration::from_secs(d.backoff_max_secs),
                    d.backoff_jitter,
                    n.notification_id as u64,
                );
                let next =
                    now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
                tracing::warn!(
                    notification_id = n.notification_id,
                    channel = channel.code(),
                    to = %to,
                    attempt = n.attempt,
                    retry_at = %step.clock.stamp(next),
                    error = %error,
                    "send failed; retry scheduled"
                );
                (
                    NoticeMark::Retry {
                        next_attempt_at: step.clock.stamp(next),
                        error,
                    },
                    Done::Retry,
                )
            } else {
                let error = if e.is_transient() {
                    format!("{error} (no attempts left of {})", d.max_attempts)
                } else {
                    format!("{error} (permanent)")
                };
                tracing::error!(
                    notification_id = n.notification_id,
                    channel = channel.code(),
                    to = %to,
                    attempt = n.attempt,
                    error = %error,
                    "notice dead"
                );
                (NoticeMark::Dead { error }, Done::Dead)
            }
        }
    };
    if record(step, n, &mark, latest_start).await? {
        Ok(done)
    } else {
        tracing::warn!(
            notification_id = n.notification_id,
            channel = channel.code(),
            attempt = n.attempt,
            "claim had expired: a later attempt records this notice's outcome"
        );
        Ok(Done::Lost)
    }
}

/// Writes a mark. The database may be busy for a while (on SQLite a
/// nightly run's page or an import holds the only write lock): a mark is
/// retried until the
/// claim's lease is nearly over rather than lost, because a lost `sent`
/// mark means a second send.
async fn record(
    step: &Step<'_>,
    n: &ClaimedNotice,
    mark: &NoticeMark,
    latest_start: Instant,
) -> Result<bool> {
    let give_up = latest_start + Duration::from_secs(4);
    loop {
        match step
            .db
            .mark_notice(n.notification_id, n.attempt, mark)
            .await
        {
            Ok(applied) => return Ok(applied),
            Err(Error::Db(e)) if Instant::now() < give_up => {
                tracing::warn!(
                    notification_id = n.notification_id,
                    error = %e,
                    "cannot record the outcome yet; retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Stops a channel after `limit` transient failures in a row (0: never).
struct Breaker {
    limit: u32,
    run: AtomicU32,
    tripped: AtomicBool,
    reason: std::sync::Mutex<Option<String>>,
}

impl Breaker {
    fn new(limit: u32) -> Self {
        Breaker {
            limit,
            run: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            reason: std::sync::Mutex::new(None),
        }
    }

    fn success(&self) {
        self.run.store(0, Ordering::SeqCst);
    }

    fn failure(&self, error: &str) {
        let n = self.run.fetch_add(1, Ordering::SeqCst) + 1;
        if self.limit > 0 && n >= self.limit && !self.tripped.swap(true, Ordering::SeqCst) {
            if let Ok(mut r) = self.reason.lock() {
                *r = Some(error.to_string());
            }
        }
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }

    fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

/// The daemon's delivery worker: a step, then a pause of `poll_secs`, until
/// `stop` turns true (in-flight sends finish; claims not yet attempted are
/// released). A database error is logged and the next step tries again.
pub async fn run_worker(
    db: &Db,
    settings: &Settings,
    channels: &Channels,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let poll = Duration::from_secs(settings.delivery.poll_secs);
    loop {
        match deliver(db, settings, channels, clock, &stop).await {
            Ok(o) => {
                if o.sms.sent
                    + o.email.sent
                    + o.sms.retry
                    + o.email.retry
                    + o.sms.dead
                    + o.email.dead
                    > 0
                {
                    tracing::info!(
                        sms_sent = o.sms.sent,
                        sms_retry = o.sms.retry,
                        sms_dead = o.sms.dead,
                        email_sent = o.email.sent,
                        email_retry = o.email.retry,
                        email_dead = o.email.dead,
                        "delivery step done"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "delivery step failed; next step in {} s", poll.as_secs())
            }
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    channels.shutdown().await;
}

/// The human summary `autosign deliver` prints.
pub fn report(o: &DeliveryOutcome) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    // Local time in the configured zone, the quiet hours' zone.
    let started = o.started_at.with_timezone(&o.quiet_hours.tz);
    let _ = writeln!(
        s,
        "deliver at {}:",
        started.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    );
    let _ = writeln!(
        s,
        "  {:<7} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "channel", "sent", "retry", "dead", "released", "waiting"
    );
    for (name, c) in [("sms", &o.sms), ("email", &o.email)] {
        let _ = writeln!(
            s,
            "  {:<7} {:>8} {:>8} {:>8} {:>9} {:>9}",
            name, c.sent, c.retry, c.dead, c.released, c.waiting
        );
    }
    for (name, c) in [("sms", &o.sms), ("email", &o.email)] {
        match c.state {
            ChannelState::Ran => {}
            ChannelState::NotConfigured => {
                let key = if name == "sms" {
                    "sms.url"
                } else {
                    "email.host"
                };
                let _ = writeln!(
                    s,
                    "  {name}: not configured ({key} is empty): {} due notices stay queued",
                    c.waiting
                );
            }
            ChannelState::QuietHours => {
                let _ = writeln!(
                    s,
                    "  {name}: quiet hours ({}): {} due notices deferred until they end",
                    o.quiet_hours.describe(),
                    c.waiting
                );
            }
            ChannelState::Stopped => {
                let _ = writeln!(
                    s,
                    "  {name}: stopped after repeated transient failures ({}); {} due notices stay queued",
                    c.stop_reason.as_deref().unwrap_or("?"),
                    c.waiting
                );
            }
            ChannelState::Interrupted => {
                let _ = writeln!(
                    s,
                    "  {name}: interrupted; {} due notices stay queued",
                    c.waiting
                );
            }
        }
        if c.lost > 0 {
            let _ = writeln!(
                s,
                "  {name}: {} outcomes not recorded (their claims had expired; a later attempt records them)",
                c.lost
            );
        }
    }
    if o.buried > 0 {
        let _ = writeln!(
            s,
            "  {} notices dead: their last attempt was interrupted (outcome unknown)",
            o.buried
        );
    }
    s.push_str(&outbox_line(&o.outbox));
    s
}

/// `outbox: queued 3, failed 1, sent 290, dead 2, undeliverable 10` — the
/// whole outbox by status (also printed after a run).
pub fn outbox_line(counts: &[OutboxCount]) -> String {
    let mut by_status = std::collections::BTreeMap::<NoticeStatus, i64>::new();
    for c in counts {
        *by_status.entry(c.status).or_default() += c.count;
    }
    // Withdrawn notices (a reverted run's) are not part of the line.
    let parts: Vec<String> = [
        NoticeStatus::Queued,
        NoticeStatus::Failed,
        NoticeStatus::Sent,
        NoticeStatus::Dead,
        NoticeStatus::Undeliverable,
    ]
    .iter()
    .map(|st| format!("{st} {}", by_status.get(st).copied().unwrap_or(0)))
    .collect();
    format!("  outbox: {}\n", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_trips_after_a_run_of_failures_and_resets_on_success() {
        let b = Breaker::new(3);
        b.failure("a");
        b.failure("b");
        b.success();
        b.failure("c");
        b.failure("d");
        assert!(!b.tripped());
        b.failure("e");
        assert!(b.tripped());
        assert_eq!(b.reason().as_deref(), Some("e"));
        let never = Breaker::new(0);
        for _ in 0..100 {
            never.failure("x");
        }
        assert!(!never.tripped());
    }

    #[test]
    fn outbox_line_lists_every_status() {
        let c = |status, count| OutboxCount { status, count };
        // In the database's order (by status name); absent statuses are 0.
        let line = outbox_line(&[c(NoticeStatus::Sent, 5), c(NoticeStatus::Undeliverable, 1)]);
        assert_eq!(
            line,
            "  outbox: queued 0, failed 0, sent 5, dead 0, undeliverable 1\n"
        );
    }
}
