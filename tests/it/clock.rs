//! One clock per command (src/clock.rs): a run's hidden `--now` stamps
//! its events, notices and inbox imports and is the "now" of the safety
//! brake's feed ages (docs/rules.md, "Safety brake", "Timestamps"), so
//! that `run --now T` then `deliver --now T` rehearses a whole night; dates
//! and timestamps follow the configured `timezone`; the daemon's
//! `autosign_last_successful_run_duration_seconds` is measured, not the
//! difference of whole-second timestamps.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::daemon::Daemon;
use crate::deliver::{fast_delivery, Gateway};
use crate::helpers::*;

/// The multi_day fixture's first night.
const AS_OF: &str = "2026-11-01";

/// 10:00 in Shanghai on AS_OF: daytime (no quiet hours), and weeks before
/// any real clock these tests run by, so a notice stamped with the real
/// clock would not be due at it.
const T: &str = "2026-11-01T10:00:00+08:00";

fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .with_timezone(&Utc)
}

/// `export audit` or `export notifications` as one map per row.
fn table(csv_text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let rows = rows(csv_text);
    let header = rows[0].clone();
    rows[1..]
        .iter()
        .map(|r| header.iter().cloned().zip(r.iter().cloned()).collect())
        .collect()
}

/// `stamp` is a stored timestamp in `offset`, at or after `from` and
/// within a minute of it (the clock advances in real time from `--now`).
fn assert_stamped_from(stamp: &str, from: &str, offset: &str) {
    assert!(stamp.ends_with(offset), "{stamp} is not in {offset}");
    let (t, start) = (instant(stamp), instant(from));
    assert!(
        t >= start && t - start < chrono::Duration::seconds(60),
        "{stamp} is not from the clock started at {from}"
    );
}

dbtest!(
    a_run_with_now_stamps_its_events_notices_and_inbox_imports_from_that_instant,
    |mut env| {
        // Day 1's files in the inbox: the run imports them itself.
        for (sub, file) in [
            ("permits", "permits.csv"),
            ("residence", "residence.csv"),
            ("social_insurance", "social_insurance.csv"),
            ("civil_status", "civil_status.csv"),
        ] {
            let text = std::fs::read(fixture(&format!("multi_day/day1/{file}"))).expect("fixture");
            env.write(&format!("inbox/{sub}/{file}"), text);
        }
        env.set(
            "AUTOSIGN_INBOX__DIR",
            &env.path("inbox").display().to_string(),
        );
        env.ok(&["run", "--as-of", AS_OF, "--now", T]);

        let audit = table(&env.audit(AS_OF, AS_OF));
        assert!(!audit.is_empty(), "the run decided something");
        for row in &audit {
            assert_stamped_from(&row["decided_at"], T, "+08:00");
        }
        let notices = table(&env.notifications(AS_OF, AS_OF));
        assert_eq!(notices.len(), audit.len(), "one notice per event");
        for n in &notices {
            assert_stamped_from(&n["created_at"], T, "+08:00");
            if n["status"] == "queued" {
                assert_eq!(n["next_attempt_at"], n["created_at"], "due when queued");
            }
        }
        let imported = env.query("SELECT imported_at FROM imports ORDER BY import_id");
        assert_eq!(imported.len(), 4, "the four inbox files");
        for at in &imported {
            assert_stamped_from(at, T, "+08:00");
        }
        let runs = env.query("SELECT started_at || ' ' || finished_at FROM runs");
        let (started, finished) = runs[0].split_once(' ').expect("two stamps");
        assert_stamped_from(started, T, "+08:00");
        assert_stamped_from(finished, T, "+08:00");
        assert!(started <= finished, "{started} {finished}");
    }
);

dbtest!(
    timestamps_and_today_follow_the_configured_zone_not_shanghai,
    |mut env| {
        env.set("AUTOSIGN_TIMEZONE", "UTC");
        import_day(&env, "day1");
        // 23:30 UTC on 1 November is already 2 November in Shanghai:
        // "today" is the configured zone's date.
        let out = env.ok(&["run", "--as-of", "today", "--now", "2026-11-01T23:30:00Z"]);
        assert!(
            out.contains("run 1 for as_of 2026-11-01: completed"),
            "{out}"
        );
        let audit = table(&env.audit(AS_OF, AS_OF));
        assert!(!audit.is_empty(), "the run decided something");
        for row in &audit {
            assert_stamped_from(&row["decided_at"], "2026-11-01T23:30:00Z", "+00:00");
        }
    }
);

dbtest!(
    deliver_now_right_after_run_now_at_the_same_instant_sends_the_notices,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", AS_OF, "--now", T]);
        let sms: Vec<_> = table(&env.notifications(AS_OF, AS_OF))
            .into_iter()
            .filter(|n| n["channel"] == "sms" && n["status"] == "queued")
            .collect();
        assert!(!sms.is_empty(), "day 1 queues SMS notices");

        // The rehearsal's delivery, a second later on the same clock.
        let later = (instant(T) + chrono::Duration::seconds(1)).to_rfc3339();
        let o = env.cmd(&["deliver", "--now", &later]);
        assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
        assert_eq!(gw.requests().len(), sms.len(), "{}", o.stdout);
        let sent = table(&env.notifications(AS_OF, AS_OF))
            .into_iter()
            .filter(|n| n["channel"] == "sms" && n["status"] == "sent")
            .count();
        assert_eq!(sent, sms.len(), "{}", o.stdout);
    }
);

dbtest!(the_brakes_feed_age_follows_the_runs_clock, |env| {
    // Imported now, by the system clock.
    import_day(&env, "day1");
    let now = Utc::now();
    let at = |days: i64| (now + chrono::Duration::days(days)).to_rfc3339();
    // A day later the residence feed is fresh (brake.max_age_days.residence = 7).
    let o = env.cmd(&["run", "--as-of", "today", "--now", &at(1)]);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert!(o.stdout.contains(": completed"), "{}", o.stdout);
    // Ten days later it is stale: the run is held (exit 4).
    let o = env.cmd(&["run", "--as-of", "today", "--now", &at(10)]);
    assert_eq!(o.code, 4, "{}\n{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("feed residence is stale")
            && o.stderr
                .contains("is 10 days old, more than brake.max_age_days.residence = 7"),
        "{}",
        o.stderr
    );
});

dbtest!(
    the_daemons_last_run_duration_is_measured_for_a_short_run,
    |env| {
        import_day(&env, "day1");
        let mut d = Daemon::start(&env, T, &[]);
        d.wait_for("nightly run completed", 1);
        d.wait_for("up to date: nothing to run", 1);
        let (status, page) = d.get("/metrics");
        let end = d.stop(Duration::from_secs(20));
        assert_eq!((status, end.code), (200, 0), "{}", end.stderr);
        let secs: f64 = page
            .lines()
            .find_map(|l| l.strip_prefix("autosign_last_successful_run_duration_seconds "))
            .unwrap_or_else(|| panic!("no run duration:\n{page}"))
            .parse()
            .expect("a number");
        // A run of day 1's few permits takes well under a second: the
        // difference of its whole-second timestamps would say 0.
        assert!(secs > 0.0 && secs < 60.0, "{secs}");
        // The daemon's start time is its clock's, not the system's.
        let start = page
            .lines()
            .find_map(|l| l.strip_prefix("autosign_daemon_start_time_seconds "))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no start time:\n{page}"));
        let t = instant(T).timestamp();
        assert!((t..t + 60).contains(&start), "{start} is not near {t}");
    }
);

#[test]
fn a_bad_now_is_a_usage_error_naming_it() {
    let env = Env::new(Backend::Sqlite);
    for args in [
        &["run", "--as-of", AS_OF, "--now", "tomorrow"][..],
        &["deliver", "--now", "2026-11-01 10:00"][..],
    ] {
        let o = env.cmd(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(
            o.stderr.contains("--now") && o.stderr.contains("not an RFC 3339 timestamp"),
            "{args:?}: {}",
            o.stderr
        );
    }
    // Refused before anything opened the database.
    assert!(!env.path("data/autosign.sqlite").exists());
}
