//! Several processes on one database (docs/scale-out.md), with real processes and,
//! for PostgreSQL, the real server: runs started together, an import
//! during a run, a process killed or cut off mid-run, a process that lost
//! its lock session. The PostgreSQL tests slow the run down with
//! `AUTOSIGN_TEST_PG_PAGE_DELAY_MS` (each page's transaction stays open that
//! long before its commit) so that the moments they aim at are wide.

use std::time::{Duration, Instant};

use crate::helpers::*;

const AS_OF: &str = "2026-11-27";

/// The job lock's advisory key ("autosign"), as pg_locks shows it.
const LOCK_ROWS: &str = "FROM pg_locks WHERE locktype = 'advisory' AND classid = 1635087471 \
     AND objid = 1936287598 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

fn exports(env: &Env) -> (String, String) {
    (
        normalise_timestamps(&env.audit("2000-01-01", "2099-12-31"), TS),
        normalise_timestamps(&env.notifications("2000-01-01", "2099-12-31"), TS),
    )
}

/// The exports of one uninterrupted run over the same inputs, on SQLite.
fn reference(permits: u32) -> (String, String) {
    let env = Env::new(Backend::Sqlite);
    load_generated(&env, permits);
    env.ok(&["run", "--as-of", AS_OF]);
    exports(&env)
}

/// Polls `sql` (first column of the first row) until `ok` holds.
fn wait_for(env: &Env, what: &str, sql: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let v = env
            .pg_query(sql)
            .into_iter()
            .next()
            .flatten()
            .unwrap_or_default();
        if ok(&v) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what} (last: {v:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(env: &Env, sql: &str) -> i64 {
    env.pg_query(sql)[0]
        .as_deref()
        .expect("a count")
        .parse()
        .expect("a number")
}

/// No cycle has two decisions or two notices, and every event has its
/// notice (R8).
fn assert_no_doubles(audit: &str, notices: &str) {
    let a = rows(audit);
    let n = rows(notices);
    assert_eq!(a.len(), n.len(), "one notice per event");
    let mut keys: Vec<_> = a[1..]
        .iter()
        .map(|r| (r[2].clone(), r[6].clone(), r[4].clone()))
        .collect();
    keys.sort();
    let all = keys.len();
    keys.dedup();
    assert_eq!(
        keys.len(),
        all,
        "an event twice for one (permit, cycle, kind)"
    );
}

dbtest!(two_runs_started_together_do_the_work_once, |env| {
    load_generated(&env, 3000);
    let slow = [("AUTOSIGN_TEST_PG_PAGE_DELAY_MS", "1000")];
    let a = env.spawn(&["run", "--as-of", AS_OF], &slow);
    let b = env.spawn(&["run", "--as-of", AS_OF], &slow);
    if env.backend == Backend::Postgres {
        // One holds the lock, the other waits for it.
        wait_for(
            &env,
            "one run holding the job lock and one waiting",
            &format!("SELECT count(*) FILTER (WHERE granted) || ',' || count(*) FILTER (WHERE NOT granted) {LOCK_ROWS}"),
            |v| v == "1,1",
        );
    }
    let (a, b) = (finish(a), finish(b));
    assert_eq!((a.code, b.code), (0, 0), "{a:?}\n{b:?}");
    let did = [&a, &b]
        .iter()
        .filter(|o| o.stdout.contains(": completed"))
        .count();
    let skipped = [&a, &b]
        .iter()
        .filter(|o| o.stdout.contains("already completed"))
        .count();
    assert_eq!((did, skipped), (1, 1), "{a:?}\n{b:?}");
    let (audit, notices) = exports(&env);
    assert_no_doubles(&audit, &notices);
    assert_eq!((audit, notices), reference(3000));
});

#[test]
fn an_import_during_a_run_waits_for_it_and_a_run_during_an_import_sees_all_of_it() {
    let Some(env) = Env::try_new(Backend::Postgres) else {
        return;
    };
    load_generated(&env, 3000);
    // 40 new permits due in 3 days with no visit: decided VISIT_CENTER by
    // any run that sees them (R6: deadline reached).
    let batch = |prefix: &str, vu: &str, seq0: u32| {
        let rows: Vec<String> = (0..40)
            .map(|i| permit_row(&format!("{prefix}{i:03}"), &id("19700101", seq0 + i), vu))
            .collect();
        format!("{PERMITS_HEADER}\n{}\n", rows.join("\n"))
    };
    let late = env.write("late.csv", batch("ZZLATE", "2026-11-30", 0));

    // 1. A run holds the lock; an import started meanwhile waits, and the
    //    run sees none of its rows.
    let run = env.spawn(
        &["run", "--as-of", AS_OF],
        &[("AUTOSIGN_TEST_PG_PAGE_DELAY_MS", "1500")],
    );
    wait_for(
        &env,
        "the run holding the lock",
        &format!("SELECT count(*) {LOCK_ROWS} AND granted"),
        |v| v == "1",
    );
    let import = env.spawn(&["import", "permits", &late.display().to_string()], &[]);
    wait_for(
        &env,
        "the import waiting",
        &format!("SELECT count(*) {LOCK_ROWS} AND NOT granted"),
        |v| v == "1",
    );
    let (run, import) = (finish(run), finish(import));
    assert_eq!((run.code, import.code), (0, 0), "{run:?}\n{import:?}");
    assert!(import.stderr.contains("waiting"), "{import:?}");
    assert!(import.stdout.contains("40 imported"), "{import:?}");
    assert!(
        !env.audit(AS_OF, AS_OF).contains("ZZLATE"),
        "the run saw part of a later file"
    );

    // 2. An import holds the lock (slowed before its commit); a run
    //    started meanwhile waits and then sees the whole file.
    let early = env.write("early.csv", batch("ZZEARLY", "2026-12-01", 100));
    let import = env.spawn(
        &["import", "permits", &early.display().to_string()],
        &[("AUTOSIGN_TEST_PG_IMPORT_DELAY_MS", "1500")],
    );
    wait_for(
        &env,
        "the import holding the lock",
        &format!("SELECT count(*) {LOCK_ROWS} AND granted"),
        |v| v == "1",
    );
    let run = env.spawn(&["run", "--as-of", "2026-11-28"], &[]);
    wait_for(
        &env,
        "the run waiting",
        &format!("SELECT count(*) {LOCK_ROWS} AND NOT granted"),
        |v| v == "1",
    );
    let (import, run) = (finish(import), finish(run));
    assert_eq!((run.code, import.code), (0, 0), "{run:?}\n{import:?}");
    let audit = env.audit("2026-11-28", "2026-11-28");
    for prefix in ["ZZLATE", "ZZEARLY"] {
        assert_eq!(
            audit.lines().filter(|l| l.contains(prefix)).count(),
            40,
            "{prefix}: the run saw the whole file"
        );
    }
}

/// Starts a slowed run and waits until one page is committed and a later
/// one is in flight (written, not committed; a PostgreSQL run writes two
/// pages at once). Returns the process.
fn run_until_a_page_is_in_flight(env: &Env, delay_ms: &str) -> std::process::Child {
    // Pages of 2,000 permits: several pages at 20,000 permits.
    let child = env.spawn(
        &["run", "--as-of", AS_OF],
        &[
            ("AUTOSIGN_TEST_PG_PAGE_DELAY_MS", delay_ms),
            ("AUTOSIGN_RUN__PAGE_PERMITS", "2000"),
        ],
    );
    wait_for(
        env,
        "a committed page",
        "SELECT count(*) FROM events",
        |v| v.parse::<i64>().unwrap_or(0) > 0,
    );
    wait_for(
        env,
        "a page in flight",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'autosign' AND state = 'idle in transaction'",
        |v| v != "0",
    );
    child
}

/// What a run cut off mid-way must leave: whole pages (each event with its
/// notice and its permit change), the run not completed.
fn assert_whole_pages(env: &Env, complete_events: usize) {
    let events = count(env, "SELECT count(*) FROM events");
    assert!(
        events > 0 && (events as usize) < complete_events,
        "cut mid-run: {events} of {complete_events} events"
    );
    assert_eq!(count(env, "SELECT count(*) FROM notifications"), events);
    assert_eq!(
        count(
            env,
            "SELECT count(*) FROM events e LEFT JOIN notifications n ON n.permit_no = e.permit_no
             AND n.cycle_valid_until = e.valid_until AND n.kind = e.kind WHERE n.notification_id IS NULL"
        ),
        0,
        "an event without its notice"
    );
    assert_eq!(
        count(
            env,
            "SELECT count(*) FROM events e JOIN permits p USING (permit_no)
             WHERE (e.kind = 'AUTO_SIGNED' AND p.valid_until <> e.new_valid_until)
                OR (e.kind IN ('SUSPENDED', 'CANCELLED') AND p.status = 'active')"
        ),
        0,
        "an event without its permit change"
    );
    assert_eq!(
        env.pg_query("SELECT status FROM runs"),
        vec![Some("running".to_string())]
    );
}

#[test]
fn a_connection_lost_mid_run_leaves_whole_pages_and_the_next_run_completes_the_work() {
    let Some(env) = Env::try_new(Backend::Postgres) else {
        return;
    };
    let (want_audit, want_notices) = reference(20000);
    let complete = rows(&want_audit).len() - 1;
    load_generated(&env, 20000);
    let run = run_until_a_page_is_in_flight(&env, "500");
    // Every session of the run: its work connection and its lock.
    let killed = count(
        &env,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name IN ('autosign', 'autosign-lock')",
    );
    assert!(killed >= 2, "{killed}");
    let out = finish(run);
    assert_eq!(
        out.code, 1,
        "a lost connection is a runtime failure: {out:?}"
    );
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line: {}",
        out.stderr
    );
    assert_whole_pages(&env, complete);

    let out = env.ok(&["run", "--as-of", AS_OF]);
    assert!(out.contains("resumed, attempt 2"), "{out}");
    let (audit, notices) = exports(&env);
    assert_eq!(audit, want_audit, "the same audit as an uninterrupted run");
    assert_eq!(notices, want_notices, "ids included");
}

#[test]
fn a_run_killed_mid_way_releases_the_lock_and_the_next_run_resumes() {
    let Some(env) = Env::try_new(Backend::Postgres) else {
        return;
    };
    let (want_audit, want_notices) = reference(20000);
    let complete = rows(&want_audit).len() - 1;
    load_generated(&env, 20000);
    let mut run = run_until_a_page_is_in_flight(&env, "500");
    run.kill().expect("kill -9");
    run.wait().expect("reaped");
    // The server ends the dead process's sessions, releasing its lock; no
    // lease to wait out.
    wait_for(
        &env,
        "the lock released",
        &format!("SELECT count(*) {LOCK_ROWS}"),
        |v| v == "0",
    );
    assert_whole_pages(&env, complete);
    let started = Instant::now();
    let out = env.ok(&["run", "--as-of", AS_OF]);
    assert!(out.contains("resumed, attempt 2"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(exports(&env), (want_audit, want_notices));
}

#[test]
fn a_process_that_lost_its_lock_session_is_fenced_off_by_the_one_that_took_over() {
    let Some(env) = Env::try_new(Backend::Postgres) else {
        return;
    };
    let (want_audit, want_notices) = reference(20000);
    load_generated(&env, 20000);
    let first = run_until_a_page_is_in_flight(&env, "700");
    // Only the lock session dies (a network blip, an administrator): the
    // first process does not notice and goes on.
    let killed = count(
        &env,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'autosign-lock'",
    );
    assert_eq!(killed, 1);
    // A second process gets the lock and takes the run over; the first is
    // stopped by the fencing token at its next page.
    let second = env.spawn(&["run", "--as-of", AS_OF], &[]);
    let (first, second) = (finish(first), finish(second));
    assert_eq!(second.code, 0, "{second:?}");
    assert!(second.stdout.contains("resumed, attempt 2"), "{second:?}");
    assert_eq!(first.code, 1, "{first:?}");
    assert!(first.stderr.contains("taken over"), "{first:?}");
    assert_eq!(exports(&env), (want_audit, want_notices));
}

/// A PostgreSQL run writes two pages at once, but they commit in page
/// order: a page that fails takes the page after it down too, though that
/// one's writes were fine and done first. What a stopped run leaves is its first pages,
/// and the rerun gives every event and notice the id an uninterrupted run
/// would have.
#[test]
fn a_page_that_fails_stops_the_page_after_it_and_the_run_leaves_its_first_pages() {
    let Some(env) = Env::try_new(Backend::Postgres) else {
        return;
    };
    let (want_audit, want_notices) = reference(20000);
    let mut decided: Vec<String> = rows(&want_audit)[1..]
        .iter()
        .map(|r| r[2].clone())
        .collect();
    decided.sort_unstable();
    // A permit about halfway: pages of 2,000 permits leave several before
    // its page and several after it.
    let failing = decided[decided.len() / 2].clone();
    load_generated(&env, 20000);
    env.pg_query(&format!(
        "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.permit_no = '{failing}' THEN
             PERFORM pg_sleep(2);
             RAISE EXCEPTION 'refused by the test';
           END IF;
           RETURN NEW;
         END $$"
    ));
    // Slow to fail: the page after it is written and ready to commit
    // well before.
    env.pg_query(
        "CREATE TRIGGER refuse_one BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_one()",
    );
    let out = finish(env.spawn(
        &["run", "--as-of", AS_OF],
        &[
            ("AUTOSIGN_RUN__PAGE_PERMITS", "2000"),
            // Each page waits this long before its commit.
            ("AUTOSIGN_TEST_PG_PAGE_DELAY_MS", "300"),
        ],
    ));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("refused by the test"), "{out:?}");
    let committed = count(&env, "SELECT count(*) FROM events");
    assert!(committed > 0, "the pages before the failing one stay");
    assert_eq!(
        count(
            &env,
            &format!("SELECT count(*) FROM events WHERE permit_no >= '{failing}'")
        ),
        0,
        "a page after the failing one committed"
    );
    // Only whole pages: the failing page's earlier permits went with it.
    let before = decided.iter().filter(|p| **p < failing).count() as i64;
    assert!(committed < before, "{committed} of {before}");

    env.pg_query("DROP TRIGGER refuse_one ON events");
    let out = env.ok(&["run", "--as-of", AS_OF]);
    assert!(out.contains("resumed, attempt 2"), "{out}");
    assert_eq!(exports(&env), (want_audit, want_notices), "ids included");
}

/// Delivery workers (R8) on PostgreSQL: four workers, each with its own
/// connection pool as separate processes or instances would have, claim
/// small batches of the same outbox as fast as they can. Every notice is
/// claimed exactly once (`FOR UPDATE SKIP LOCKED`; without the row locks
/// two workers would take the same rows from one snapshot).
/// (Sending itself is tests/it/deliver.rs's business; this is the claim.)
#[test]
fn delivery_workers_never_claim_the_same_notice() {
    let Some(env) = Env::try_new(Backend::Postgres) else {
        return;
    };
    load_generated(&env, 3000);
    env.ok(&["run", "--as-of", AS_OF]);
    let due = count(
        &env,
        "SELECT count(*) FROM notifications WHERE channel = 'sms' AND status = 'queued'",
    );
    assert!(due > 100, "{due}");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = env.db_url.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let db = autosign::db::Db::connect(&url).await.expect("connect");
                    let mut mine = Vec::new();
                    loop {
                        let batch = db
                            .claim_notices(
                                autosign::domain::Channel::Sms,
                                "2099-01-01T00:00:00+08:00",
                                "2099-01-01T00:05:00+08:00",
                                5,
                                3,
                            )
                            .await
                            .expect("claim");
                        if batch.is_empty() {
                            break;
                        }
                        for n in batch {
                            assert_eq!(n.attempt, 1);
                            mine.push(n.notification_id);
                        }
                    }
                    mine
                })
            })
        })
        .collect();
    let per_worker: Vec<Vec<i64>> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    let busy = per_worker.iter().filter(|w| !w.is_empty()).count();
    let mut all: Vec<i64> = per_worker.into_iter().flatten().collect();
    let claimed = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), claimed, "a notice claimed twice");
    assert_eq!(claimed as i64, due, "every due notice claimed");
    assert!(busy >= 2, "the workers ran side by side");
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM notifications WHERE channel = 'sms' AND attempts <> 1"
        ),
        0
    );
}
