//! Crash safety (docs/rules.md, "One job at a time; crash safety"): a
//! night (inbox import, run, delivery) killed again and again — at every named fault point, and by SIGKILL
//! after a growing delay — then finished by reruns, ends with the audit and
//! notification exports of the same night run without interruption: no
//! decision lost or doubled, one notice per decision, each notice sent,
//! and repeated sends only inside the documented window (a process killed
//! between a send and its record, docs/delivery.md), each with the same
//! idempotency key.
//!
//! The SMS gateway is a real HTTP server in this process and e-mail goes to
//! a real aiosmtpd process (tests/it/deliver.rs).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Duration as Days;

use crate::deliver::{at, free_port, t0, Gateway, Smtp};
use crate::helpers::*;

/// Permits in the generated city: enough for several import batches and,
/// with 2,000 permits a run page, two run pages.
const PERMITS: u32 = 12000;
const RUN: [&str; 3] = ["run", "--as-of", "2026-11-27"];

/// A world whose inbox holds a generated city, with both channels
/// configured and small batches (many batches, many crash points).
struct Night {
    env: Env,
    gw: Gateway,
    smtp: Smtp,
}

fn night(mut env: Env) -> Option<Night> {
    env.set("NO_PROXY", "127.0.0.1,localhost");
    env.set("AUTOSIGN_IMPORT__BATCH_ROWS", "1000");
    env.set("AUTOSIGN_RUN__PAGE_PERMITS", "2000");
    env.set("AUTOSIGN_INBOX__DIR", "inbox");
    env.set("AUTOSIGN_DELIVERY__SMS_PER_SECOND", "0");
    env.set("AUTOSIGN_DELIVERY__EMAIL_PER_SECOND", "0");
    env.set("AUTOSIGN_DELIVERY__BATCH_SIZE", "20");
    env.set("AUTOSIGN_SMS__CONCURRENCY", "1");
    env.set("AUTOSIGN_EMAIL__CONCURRENCY", "1");
    env.generate(PERMITS, 7, "2026-11-27", "inbox");
    let gw = Gateway::start();
    gw.configure(&mut env);
    let port = free_port();
    let smtp = Smtp::start(&env, port, &[])?;
    Smtp::configure(port, &mut env);
    Some(Night { env, gw, smtp })
}

/// `deliver` at `t` (the injected clock), until a pass sends nothing.
fn deliver_all(env: &Env, mut t: chrono::DateTime<chrono::Utc>) {
    for _ in 0..50 {
        let out = env.ok(&["deliver", "--now", &at(t)]);
        let sent: u64 = out
            .lines()
            .filter(|l| matches!(l.split_whitespace().next(), Some("sms" | "email")))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        if sent == 0 {
            return;
        }
        t += Days::minutes(10);
    }
    panic!("delivery did not settle in 50 passes");
}

/// The uninterrupted night on SQLite: its exports are the reference.
fn reference() -> Option<(String, String)> {
    let n = night(Env::new(Backend::Sqlite))?;
    n.env.ok(&RUN);
    deliver_all(&n.env, t0());
    Some(exports(&n.env))
}

/// The audit export and the notification export's stable columns
/// (attempts, provider references, errors and timestamps depend on how
/// often a notice was tried, not on what was decided and sent).
fn exports(env: &Env) -> (String, String) {
    let audit = normalise_timestamps(&env.audit("2026-01-01", "2027-12-31"), TS);
    let notices = rows(&env.notifications("2026-01-01", "2027-12-31"));
    let keep = [
        "notification_id",
        "permit_no",
        "kind",
        "channel",
        "status",
        "message",
        "as_of",
        "cycle_valid_until",
    ];
    let idx: Vec<usize> = keep
        .iter()
        .map(|k| {
            notices[0]
                .iter()
                .position(|h| h == k)
                .unwrap_or_else(|| panic!("no column {k}"))
        })
        .collect();
    let projected = notices
        .iter()
        .map(|r| {
            idx.iter()
                .map(|&i| r[i].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    (audit, projected)
}

/// Runs `args` with a fault point armed. True when the process died there;
/// false when it finished (exit 0) without reaching it.
fn crash_at(env: &Env, point: &str, args: &[&str]) -> bool {
    let mut c = env.command(args);
    c.env("AUTOSIGN_TEST_FAULT", point);
    let o = c.output().expect("spawn autosign");
    let stderr = String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        return false;
    }
    assert!(
        stderr.contains(&format!(
            "fault injected at {}",
            point.split('@').next().unwrap_or(point)
        )),
        "{args:?} with {point} failed otherwise: {stderr}"
    );
    true
}

#[test]
fn a_start_killed_inside_or_after_a_self_transacted_migration_applies_it_once() {
    // Migrations 2, 4 and 6 open their own transaction; sqlx would record
    // them after their COMMIT, and a kill in between made every later start
    // apply migration 6 again and fail on its ADD COLUMN. Killed just before
    // or just after the COMMIT of each, the next start opens the database
    // with every migration applied once.
    for point in ["migrate.recorded", "migrate.committed"] {
        for nth in 1..=3 {
            let env = Env::new(Backend::Sqlite);
            let armed = format!("{point}@{nth}");
            // Any command opens (and migrates) the database.
            let status = ["status", "NO-SUCH-PERMIT"];
            assert!(crash_at(&env, &armed, &status), "{armed} not reached");
            let o = env.cmd(&status);
            assert_eq!(o.code, 2, "{armed}: {o:?}");
            assert!(o.stderr.contains("NO-SUCH-PERMIT"), "{armed}: {}", o.stderr);
            assert_eq!(
                env.query("SELECT CAST(count(*) AS TEXT) FROM _sqlx_migrations"),
                [latest_migration().to_string()],
                "{armed}"
            );
            assert_eq!(
                env.query(
                    "SELECT CAST(count(*) AS TEXT) FROM pragma_table_info('events') \
                     WHERE name = 'prior_status'"
                ),
                ["1"],
                "{armed}"
            );
        }
    }
}

/// SIGKILLs `args` after `delay`. True when the kill landed (the process
/// was still running); false when it had already finished with exit 0.
fn kill_after(env: &Env, args: &[&str], delay: Duration) -> bool {
    let mut child = env.spawn(args, &[]);
    std::thread::sleep(delay);
    match child.try_wait().expect("try_wait") {
        Some(status) => {
            let o = finish(child);
            assert!(status.success(), "{args:?} failed before the kill: {o:?}");
            false
        }
        None => {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            true
        }
    }
}

/// Repeated sends: how many times each idempotency key reached a channel,
/// and how many notices each channel received at all.
fn repeats(n: &Night) -> (usize, usize) {
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in n.gw.requests() {
        *per_key.entry(format!("sms {}", r.key)).or_default() += 1;
    }
    for m in n.smtp.messages() {
        let id = m["message_id"].as_str().unwrap_or_default().to_string();
        *per_key.entry(format!("email {id}")).or_default() += 1;
    }
    let repeated = per_key.values().map(|&c| c - 1).sum();
    (per_key.len(), repeated)
}

/// How many notices the notification export shows as sent.
fn sent(notices: &str) -> usize {
    notices.lines().filter(|l| l.contains(",sent,")).count()
}

dbtest!(
    a_night_killed_at_every_fault_point_of_import_run_and_deliver_ends_as_an_uninterrupted_one,
    |env| {
        let Some((want_audit, want_notices)) = reference() else {
            return;
        };
        let Some(n) = night(env) else { return };
        let env = &n.env;

        // Each feed file's import: killed after its 1st batch, then after
        // its 3rd, 7th … (every attempt starts the file over: nothing of a
        // killed import stays) until an attempt gets through.
        let mut import_kills = 0;
        for (feed, dir) in [
            ("permits", "permits"),
            ("residence", "residence"),
            ("social-insurance", "social_insurance"),
            ("civil-status", "civil_status"),
        ] {
            let file = std::fs::read_dir(env.path("inbox").join(dir))
                .expect("inbox folder")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "csv"))
                .expect("a generated file");
            let file = file.display().to_string();
            let args = ["import", feed, file.as_str()];
            for nth in [1, 3, 7, 15, 31] {
                if !crash_at(env, &format!("import.batch_written@{nth}"), &args) {
                    break;
                }
                import_kills += 1;
            }
        }
        assert!(import_kills >= 6, "only {import_kills} import kills landed");
        // The run (the inbox is imported now: nothing new to import): killed
        // after its first page, again after the first page of the rerun, and
        // just before the commit. On SQLite a page is committed when the
        // point is reached; on PostgreSQL it has been handed to a writer
        // and may still be in flight.
        for point in [
            "run.page_written@1",
            "run.page_written@1",
            "run.before_complete",
        ] {
            assert!(crash_at(env, point, &RUN), "{point} was not reached");
        }
        let out = env.ok(&RUN);
        assert!(out.contains("completed"), "{out}");
        assert!(env.ok(&RUN).contains("already"), "C8 after the reruns");

        // Delivery: killed after a claim, and after the 1st, 25th and 100th
        // send; each rerun starts after the killed one's lease (300 s).
        let mut t = t0();
        assert!(crash_at(
            env,
            "deliver.after_claim",
            &["deliver", "--now", &at(t)]
        ));
        let mut send_kills = 0;
        for nth in [1, 25, 100] {
            t += Days::minutes(10);
            if crash_at(
                env,
                &format!("deliver.after_send@{nth}"),
                &["deliver", "--now", &at(t)],
            ) {
                send_kills += 1;
            }
        }
        assert_eq!(send_kills, 3, "every send kill landed");
        deliver_all(env, t + Days::minutes(10));

        let (audit, notices) = exports(env);
        assert_eq!(audit, want_audit, "the audit trail differs");
        assert_eq!(notices, want_notices, "the notices differ");
        let total = sent(&notices);
        assert!(total > 1000, "a realistic night: {total} notices sent");
        let (distinct, repeated) = repeats(&n);
        assert_eq!(distinct, total, "every sent notice reached its channel");
        // Each send kill leaves its notice sent but unrecorded, sent again
        // with the same key after the lease; the other channel may have had
        // one send in flight too.
        assert!(
            (send_kills..=2 * send_kills).contains(&repeated),
            "{repeated} repeated sends for {send_kills} kills between send and record"
        );
    }
);

dbtest!(
    a_night_sigkilled_after_growing_delays_ends_as_an_uninterrupted_one,
    |env| {
        let Some((want_audit, want_notices)) = reference() else {
            return;
        };
        let Some(n) = night(env) else { return };
        let env = &n.env;

        // kill -9 the run (inbox import included) after 50 ms, 80 ms, …
        // until one attempt finishes first: each kill lands wherever the
        // process happens to be.
        let mut delay = Duration::from_millis(50);
        let mut run_kills = 0;
        while kill_after(env, &RUN, delay) {
            run_kills += 1;
            delay = delay * 8 / 5;
            assert!(run_kills < 40, "the run never finished");
        }
        assert!(run_kills >= 3, "only {run_kills} kills landed");
        assert!(env.ok(&RUN).contains("already"), "C8: completed once");

        // The same for delivery, each attempt after the last one's lease.
        let mut t = t0();
        let mut delay = Duration::from_millis(100);
        let mut deliver_kills = 0;
        loop {
            let args = ["deliver", "--now", &at(t)];
            t += Days::minutes(10);
            if !kill_after(env, &args, delay) {
                break;
            }
            deliver_kills += 1;
            delay = delay * 8 / 5;
            assert!(deliver_kills < 40, "delivery never finished");
        }
        deliver_all(env, t);

        let (audit, notices) = exports(env);
        assert_eq!(audit, want_audit, "the audit trail differs");
        assert_eq!(notices, want_notices, "the notices differ");
        let total = sent(&notices);
        let (distinct, repeated) = repeats(&n);
        assert_eq!(distinct, total, "every sent notice reached its channel");
        // A kill can land between a send and its record on each channel.
        assert!(
            repeated <= 2 * deliver_kills,
            "{repeated} repeated sends for {deliver_kills} delivery kills"
        );
    }
);
