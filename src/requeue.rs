//! `autosign requeue`: after an SMS gateway or SMTP relay outage, an
//! operator queues the notices that went dead (or are waiting out a long
//! backoff) again, so that `autosign deliver` or the daemon's worker sends
//! them now (docs/operations.md, "After a gateway outage").
//!
//! A requeue is deliberate and traced: at least one selector (a run, a
//! date range on the run's `as_of`, a channel, notice ids, or `--all`),
//! the count printed before anything changes, `--dry-run` to stop there,
//! and otherwise a `--reason` that goes into the append-only
//! `notice_requeues` trail with the time and the OS user. The notices keep
//! their idempotency keys, so a gateway that did receive an attempt drops
//! the repeat. A sent or withdrawn notice, one that never had a channel,
//! one whose text retention has purged, or one of a run that is not
//! completed (discarded, reverted) is never requeued. One transaction,
//! under the job lock, as every command that writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cli::parse_date_arg;
use crate::clock::Clock;
use crate::db::requeue::{NoticeSelection, RequeueBy, RequeueDone, SelectedNotices};
use crate::db::Db;
use crate::domain::{Channel, NoticeStatus, RunStatus};
use crate::error::{Error, Result};
use crate::settings::Settings;

/// The channels a notice can be requeued on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RequeueChannel {
    Sms,
    Email,
}

// clap's own enumeration rather than `Channel`: it spells out the
// accepted values (`sms`, `email`) in `--help` and in the error for any
// other, and `none` is no channel a notice is sent by.
impl From<RequeueChannel> for Channel {
    fn from(c: RequeueChannel) -> Channel {
        match c {
            RequeueChannel::Sms => Channel::Sms,
            RequeueChannel::Email => Channel::Email,
        }
    }
}

/// `autosign requeue`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RequeueArgs {
    /// Notices of this run (its id: the run's summary, `export audit`).
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<i64>,
    /// Notices of runs whose as_of is on or after this date (YYYY-MM-DD,
    /// "today" or "yesterday"): the range `export notifications` uses.
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,
    /// Notices of runs whose as_of is on or before this date.
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,
    /// Notices of this channel only.
    #[arg(long, value_enum)]
    pub channel: Option<RequeueChannel>,
    /// This notice (notification_id, as `status` and `export
    /// notifications` show it); repeat for several. Not with the other
    /// selectors.
    #[arg(
        long = "notice",
        value_name = "ID",
        conflicts_with_all = ["run", "from", "to", "channel", "all"]
    )]
    pub notices: Vec<i64>,
    /// Every dead or failed notice, whatever its run, date or channel.
    #[arg(long, conflicts_with_all = ["run", "from", "to", "channel"])]
    pub all: bool,
    /// Print what would be requeued, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why (e.g. "gateway outage 2026-11-27 02:00-04:10, ticket 4711"):
    /// kept in the trail with the time and the OS user. Required unless
    /// --dry-run.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Longest reason kept (a sentence and a ticket number, not a document).
const MAX_REASON_CHARS: usize = 500;

/// The checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeueRequest {
    pub selection: NoticeSelection,
    /// `None`: dry run.
    pub reason: Option<String>,
}

/// Checks the arguments (exit 2 for each way they can be wrong) before
/// the database is touched.
pub fn request(args: &RequeueArgs, clock: Clock) -> Result<RequeueRequest> {
    let from = args
        .from
        .as_deref()
        .map(|d| parse_date_arg(d, "--from", clock))
        .transpose()?;
    let to = args
        .to
        .as_deref()
        .map(|d| parse_date_arg(d, "--to", clock))
        .transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(Error::Usage(format!("--from {f} is after --to {t}")));
        }
    }
    let selection = NoticeSelection {
        run_id: args.run,
        from,
        to,
        channel: args.channel.map(Channel::from),
        notice_ids: {
            let mut ids = args.notices.clone();
            ids.sort_unstable();
            ids.dedup();
            ids
        },
    };
    if selection == NoticeSelection::default() && !args.all {
        return Err(Error::Usage(
            "requeue needs a selector: --run RUN_ID, --from DATE/--to DATE, --channel sms|email, \
             --notice ID, or --all for every dead or failed notice"
                .into(),
        ));
    }
    let reason = match (&args.reason, args.dry_run) {
        (_, true) => None,
        (None, false) => {
            return Err(Error::Usage(
                "requeue needs --reason TEXT (kept in the trail with the time and your user), \
                 or --dry-run to see what would be requeued"
                    .into(),
            ))
        }
        (Some(r), false) => Some(check_reason(r)?),
    };
    Ok(RequeueRequest { selection, reason })
}

fn check_reason(reason: &str) -> Result<String> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(Error::Usage(
            "--reason is empty: say why the notices are requeued".into(),
        ));
    }
    if r.chars().any(char::is_control) {
        return Err(Error::Usage(
            "--reason must be one line of text, without control characters".into(),
        ));
    }
    if r.chars().count() > MAX_REASON_CHARS {
        return Err(Error::Usage(format!(
            "--reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(r.to_string())
}

/// What `autosign requeue` did or, dry, would do.
#[derive(Debug, Clone)]
pub struct RequeueOutcome {
    /// The selection as the operator gave it, for the report.
    pub described: String,
    pub selected: Vec<SelectedNotices>,
    /// `None` for a dry run, or when nothing was requeueable.
    pub done: Option<RequeueDone>,
    pub os_user: String,
    pub at: String,
}

/// `autosign requeue`: checks that a named run or notice exists, counts
/// the selection and hands the count to `show` ([`selection_report`])
/// before anything changes, then, unless dry, queues the requeueable
/// notices again in one transaction under the job lock. Exit 2, nothing
/// changed, for an unknown run or notice, a run that is not completed, or
/// a named notice that cannot be requeued.
pub async fn requeue(
    db: &Db,
    clock: Clock,
    req: &RequeueRequest,
    show: impl FnOnce(&RequeueOutcome),
) -> Result<RequeueOutcome> {
    let _lock = db
        .lock_jobs(|| tracing::info!("another autosign command holds the job lock; waiting for it"))
        .await?;
    let sel = &req.selection;
    if let Some(id) = sel.run_id {
        let run = db
            .run_by_id(id)
            .await?
            .ok_or_else(|| Error::Refused(format!("there is no run {id}: nothing to requeue")))?;
        let why = match run.status {
            RunStatus::Completed => None,
            RunStatus::Reverted => Some("was reverted: its notices were withdrawn and are never requeued"),
            RunStatus::Discarded => Some("was discarded: it queued no notice"),
            RunStatus::Held => Some("is held by the safety brake: it queued no notice yet (`autosign release` queues them)"),
            RunStatus::Running => Some("has not completed: it queued no notice yet"),
        };
        if let Some(why) = why {
            return Err(Error::Refused(format!(
                "run {id} for {} {why}; nothing requeued",
                run.as_of
            )));
        }
    }
    if !sel.notice_ids.is_empty() {
        let found = db.selected_notices(sel).await?;
        let missing: Vec<String> = sel
            .notice_ids
            .iter()
            .filter(|id| !found.iter().any(|n| n.notification_id == **id))
            .map(i64::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(Error::Refused(format!(
                "there is no notice {}: nothing requeued",
                missing.join(", ")
            )));
        }
        let refused: Vec<String> = found
            .iter()
            .filter(|n| !n.group.requeueable())
            .map(|n| {
                format!(
                    "notice {} ({}) {}",
                    n.notification_id,
                    n.permit_no,
                    not_requeued_why(&n.group)
                )
            })
            .collect();
        if !refused.is_empty() {
            return Err(Error::Refused(format!(
                "{}; nothing requeued",
                refused.join("; ")
            )));
        }
    }
    let selected = db.select_notices(sel).await?;
    let os_user = os_user();
    let at = clock.now_rfc3339();
    let mut out = RequeueOutcome {
        described: describe(sel),
        selected,
        done: None,
        os_user,
        at,
    };
    let requeueable: i64 = out
        .selected
        .iter()
        .filter(|g| g.requeueable())
        .map(|g| g.count)
        .sum();
    // The count goes out before anything changes; a dry run or an empty
    // selection stops here.
    show(&out);
    let Some(reason) = &req.reason else {
        return Ok(out);
    };
    if requeueable == 0 {
        return Ok(out);
    }
    let done = db
        .requeue_notices(
            sel,
            &RequeueBy {
                now: &out.at,
                os_user: &out.os_user,
                reason,
            },
        )
        .await?;
    tracing::warn!(
        requeue_id = done.requeue_id,
        notices = done.requeued.iter().map(|r| r.2).sum::<i64>(),
        os_user = %out.os_user,
        "notices requeued by an operator"
    );
    out.done = Some(done);
    Ok(out)
}

/// Why a notice of this group is not requeued.
fn not_requeued_why(g: &SelectedNotices) -> &'static str {
    match g.status {
        NoticeStatus::Sent => "was sent: never requeued",
        NoticeStatus::Withdrawn => "was withdrawn by `autosign revert`: never requeued",
        NoticeStatus::Undeliverable => {
            "is undeliverable (no phone or e-mail): nothing to send it by"
        }
        NoticeStatus::Queued => "is queued already: delivery sends it when it is due",
        _ if g.run_status != RunStatus::Completed => {
            "belongs to a run that is not completed: never requeued"
        }
        _ if g.purged => "has had its text and recipient purged (retention): cannot be sent",
        _ => "cannot be requeued",
    }
}

fn describe(sel: &NoticeSelection) -> String {
    let mut parts = Vec::new();
    if let Some(id) = sel.run_id {
        parts.push(format!("run {id}"));
    }
    match (sel.from, sel.to) {
        (Some(f), Some(t)) => parts.push(format!("as_of {f} to {t}")),
        (Some(f), None) => parts.push(format!("as_of from {f}")),
        (None, Some(t)) => parts.push(format!("as_of up to {t}")),
        (None, None) => {}
    }
    if let Some(c) = sel.channel {
        parts.push(format!("channel {}", c.code()));
    }
    if !sel.notice_ids.is_empty() {
        let ids: Vec<String> = sel.notice_ids.iter().map(i64::to_string).collect();
        parts.push(format!("notice {}", ids.join(", ")));
    }
    if parts.is_empty() {
        "every notice (--all)".into()
    } else {
        parts.join(", ")
    }
}

/// The count, before anything changes: what will be requeued by channel
/// and status, and what in the selection will not, and why.
pub fn selection_report(o: &RequeueOutcome) -> String {
    let mut s = String::new();
    let total: i64 = o.selected.iter().map(|g| g.count).sum();
    let _ = writeln!(s, "requeue: {total} notices selected ({})", o.described);
    // Keyed by the codes: the lines are in their text order.
    let mut will: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut wont: BTreeMap<&str, i64> = BTreeMap::new();
    for g in &o.selected {
        if g.requeueable() {
            *will.entry((g.channel.code(), g.status.code())).or_default() += g.count;
        } else {
            *wont.entry(not_requeued_why(g)).or_default() += g.count;
        }
    }
    let _ = writeln!(s, "  to requeue: {}", will.values().sum::<i64>());
    for ((channel, status), n) in &will {
        let _ = writeln!(s, "    {channel:<6} {status:<7} {n:>9}");
    }
    if !wont.is_empty() {
        let _ = writeln!(s, "  not requeued: {}", wont.values().sum::<i64>());
        for (why, n) in &wont {
            let _ = writeln!(s, "    {n:>9}  {why}");
        }
    }
    s
}

/// The last lines: what was done, or why nothing was.
pub fn done_report(o: &RequeueOutcome, dry_run: bool) -> String {
    let requeueable: i64 = o
        .selected
        .iter()
        .filter(|g| g.requeueable())
        .map(|g| g.count)
        .sum();
    match &o.done {
        None if dry_run => "dry run: nothing changed\n".into(),
        None => format!(
            "nothing to requeue: no dead or failed notice in the selection{}\n",
            if requeueable == 0 { "" } else { " any more" }
        ),
        Some(d) => {
            let n: i64 = d.requeued.iter().map(|r| r.2).sum();
            let mut s = format!(
                "requeued {n} notices (requeue {}, at {}, by {}): queued again with their \
                 idempotency keys, attempts reset, due now; `autosign deliver` or the daemon's \
                 worker sends them\n",
                d.requeue_id, o.at, o.os_user
            );
            if n != requeueable {
                let _ = writeln!(
                    s,
                    "  {} of the {requeueable} counted above changed in between (a delivery \
                     worker is running) and were left as they are",
                    requeueable - n
                );
            }
            s
        }
    }
}

/// Runs the command for the CLI: checks, requeues, prints.
pub async fn command(settings: &Settings, clock: Clock, args: &RequeueArgs) -> Result<()> {
    let req = request(args, clock)?;
    let db = Db::connect(&settings.effective_database_url()).await?;
    let outcome = requeue(&db, clock, &req, |o| {
        print!(
            "{}",
            crate::domain::escape_controls_in_lines(&selection_report(o))
        )
    })
    .await?;
    print!(
        "{}",
        crate::domain::escape_controls_in_lines(&done_report(&outcome, args.dry_run))
    );
    Ok(())
}

/// Who is asking, for the trail: the name of the process's real user ID
/// from the user database, with the ID; where the database has no entry,
/// `$USER` (or `$LOGNAME`) marked as such. Under sudo the invoking user is
/// added, since the real user is then root.
pub fn os_user() -> String {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && !v.chars().any(char::is_control))
    };
    let from_env = || env("USER").or_else(|| env("LOGNAME"));
    #[cfg(unix)]
    let mut who = {
        // SAFETY: getuid takes no argument, cannot fail and touches no
        // memory of ours.
        let uid = unsafe { libc::getuid() };
        match user_name(uid) {
            Some(name) => format!("{name} (uid {uid})"),
            None => match from_env() {
                Some(name) => format!("{name} (uid {uid}, from $USER: not in the user database)"),
                None => format!("uid {uid}"),
            },
        }
    };
    #[cfg(not(unix))]
    let mut who = from_env().unwrap_or_else(|| "unknown".to_string());
    if let Some(by) = env("SUDO_USER") {
        who.push_str(&format!(" via sudo by {by}"));
    }
    who
}

/// The user database's name for `uid` (getpwuid_r: thread-safe, and NSS
/// sources such as LDAP answer too).
#[cfg(unix)]
fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids);
        // getpwuid_r fills it with pointers into `buf`, which outlives
        // every read of them below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is
        // the length of the buffer it points to.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast::<libc::c_char>(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string in
        // `buf`, still alive here.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        let name = name.to_string_lossy().trim().to_string();
        return (!name.is_empty()).then_some(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RequeueArgs {
        RequeueArgs {
            run: None,
            from: None,
            to: None,
            channel: None,
            notices: Vec::new(),
            all: false,
            dry_run: false,
            reason: Some("gateway outage".into()),
        }
    }

    fn clock() -> Clock {
        Clock::system(chrono_tz::Asia::Shanghai)
    }

    fn usage(r: Result<RequeueRequest>) -> String {
        match r {
            Err(Error::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn a_selector_is_required_and_all_counts_as_one() {
        assert!(usage(request(&args(), clock())).contains("requeue needs a selector"));
        let all = RequeueArgs {
            all: true,
            ..args()
        };
        let r = request(&all, clock()).expect("--all");
        assert_eq!(r.selection, NoticeSelection::default());
        let by_channel = RequeueArgs {
            channel: Some(RequeueChannel::Email),
            ..args()
        };
        assert_eq!(
            request(&by_channel, clock())
                .expect("channel")
                .selection
                .channel,
            Some(Channel::Email)
        );
    }

    #[test]
    fn a_reason_is_required_unless_dry_and_must_be_one_short_line() {
        let run = |reason: Option<&str>, dry_run| RequeueArgs {
            run: Some(1),
            reason: reason.map(String::from),
            dry_run,
            ..args()
        };
        assert!(usage(request(&run(None, false), clock())).contains("needs --reason"));
        assert_eq!(
            request(&run(None, true), clock()).expect("dry").reason,
            None
        );
        assert!(usage(request(&run(Some("  "), false), clock())).contains("--reason is empty"));
        assert!(usage(request(&run(Some("a\nb"), false), clock())).contains("one line"));
        let long = "字".repeat(MAX_REASON_CHARS + 1);
        assert!(usage(request(&run(Some(&long), false), clock())).contains("longer than 500"));
        assert_eq!(
            request(&run(Some(" outage "), false), clock())
                .expect("ok")
                .reason
                .as_deref(),
            Some("outage")
        );
    }

    #[test]
    fn dates_are_checked_and_ordered() {
        let range = |from: &str, to: &str| RequeueArgs {
            from: Some(from.into()),
            to: Some(to.into()),
            ..args()
        };
        assert!(usage(request(&range("2026-02-30", "2026-03-01"), clock())).contains("--from"));
        assert!(usage(request(&range("2026-12-02", "2026-12-01"), clock()))
            .contains("--from 2026-12-02 is after --to 2026-12-01"));
        let r = request(&range("2026/11/1", "20261130"), clock()).expect("range");
        assert_eq!(
            r.selection.from.map(|d| d.to_string()).as_deref(),
            Some("2026-11-01")
        );
        assert_eq!(
            r.selection.to.map(|d| d.to_string()).as_deref(),
            Some("2026-11-30")
        );
    }

    #[test]
    fn notice_ids_are_kept_once_each() {
        let ids = RequeueArgs {
            notices: vec![9, 3, 9],
            ..args()
        };
        assert_eq!(
            request(&ids, clock()).expect("ids").selection.notice_ids,
            [3, 9]
        );
    }

    #[test]
    fn the_os_user_names_someone() {
        let who = os_user();
        assert!(!who.trim().is_empty());
        #[cfg(unix)]
        {
            // SAFETY: as in os_user.
            let uid = unsafe { libc::getuid() };
            assert!(who.contains(&format!("uid {uid}")), "{who}");
        }
    }
}
