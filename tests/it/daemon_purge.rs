//! The daemon's scheduled purge (`[retention] schedule`): a per-second
//! schedule fires within seconds, the purge removes what `autosign purge`
//! would at the daemon's clock (`--now`, years after the data), a failed
//! purge is logged and counted and the daemon goes on, `daemon --check`
//! says when the next purge runs, and a bad schedule stops autosign at
//! start-up naming the key.

use std::time::Duration;

use crate::daemon::Daemon;
use crate::helpers::*;

/// Two years after the multi_day fixture: every visit and month of day 1
/// is older than retention.feed_days (400). The nightly schedule's
/// catch-up refuses that many missed dates, so the daemon runs nothing
/// but the purge.
const LATER: &str = "2028-06-01T10:00:00+08:00";

const EVERY_SECOND: (&str, &str) = ("AUTOSIGN_RETENTION__SCHEDULE", "* * * * * *");

/// The value of one sample line of a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn counts(env: &Env) -> [String; 2] {
    [
        env.query("SELECT count(*) FROM residence").remove(0),
        env.query("SELECT count(*) FROM social_insurance").remove(0),
    ]
}

dbtest!(
    a_scheduled_purge_fires_within_seconds_and_removes_old_feed_rows,
    |env| {
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        let register = env.query("SELECT count(*) FROM permits");
        assert_eq!(counts(&env), ["3", "5"], "day 1's visits and months");

        let mut d = Daemon::start(&env, LATER, &[EVERY_SECOND]);
        let done = d.wait_for("scheduled purge completed", 1);
        let first = &done[0]["fields"];
        assert_eq!(first["residence"].as_u64(), Some(3), "{first}");
        assert_eq!(first["social_insurance"].as_u64(), Some(5), "{first}");
        assert_eq!(first["visited_before"].as_str(), Some("2027-04-28"));
        let (status, page) = d.get("/metrics");
        assert_eq!(status, 200);
        assert!(
            sample(&page, "autosign_daemon_purges_total{outcome=\"completed\"}")
                .is_some_and(|n| n >= 1.0),
            "{page}"
        );
        assert_eq!(
            sample(&page, "autosign_daemon_purges_total{outcome=\"failed\"}"),
            Some(0.0)
        );
        assert!(
            sample(&page, "autosign_last_purge_timestamp_seconds").is_some(),
            "{page}"
        );
        let end = d.stop(Duration::from_secs(20));
        assert_eq!(end.code, 0, "{}", end.stderr);

        assert_eq!(counts(&env), ["0", "0"], "old feed rows are gone");
        // The register and the decisions are never purged.
        assert_eq!(env.query("SELECT count(*) FROM permits"), register);
        assert!(
            rows(&env.audit("2026-11-01", "2026-11-01")).len() > 1,
            "the audit trail stays"
        );
        // The nightly schedule ran nothing: too many dates missed.
        assert_eq!(
            env.query("SELECT count(*) FROM runs"),
            ["1"],
            "{}",
            end.stderr
        );
    }
);

dbtest!(without_a_schedule_the_daemon_never_purges, |env| {
    import_day(&env, "day1");
    env.ok(&["run", "--as-of", "2026-11-01"]);
    let mut d = Daemon::start(&env, LATER, &[("AUTOSIGN_DAEMON__SCHEDULE", "* * * * * *")]);
    // Three nightly ticks (each refusing the catch-up) are three
    // seconds in which a per-second purge would have run.
    d.wait_for("daemon started", 1);
    let ticks = |page: &str| sample(page, "autosign_daemon_ticks_total").unwrap_or(0.0);
    let start = std::time::Instant::now();
    let mut page = d.get("/metrics").1;
    while ticks(&page) < 3.0 {
        assert!(start.elapsed() < Duration::from_secs(60), "{page}");
        std::thread::sleep(Duration::from_millis(200));
        page = d.get("/metrics").1;
    }
    assert_eq!(
        sample(&page, "autosign_daemon_purges_total{outcome=\"completed\"}"),
        Some(0.0)
    );
    let end = d.stop(Duration::from_secs(20));
    assert_eq!(end.code, 0, "{}", end.stderr);
    assert!(!end.stderr.contains("scheduled purge"), "{}", end.stderr);
    assert_eq!(counts(&env), ["3", "5"]);
});

dbtest!(
    a_failed_purge_is_logged_and_counted_and_the_daemon_goes_on,
    |env| {
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        // A rejects folder that is a file: the purge cannot list it.
        let not_a_dir = env.write("rejects-is-a-file", "x");
        let dir = not_a_dir.display().to_string();
        let mut d = Daemon::start(
            &env,
            LATER,
            &[EVERY_SECOND, ("AUTOSIGN_INBOX__REJECTS_DIR", &dir)],
        );
        let failed = d.wait_for("scheduled purge failed; the daemon keeps running and purges again at the next purge tick", 2);
        assert_eq!(failed[0]["fields"]["alert"].as_str(), Some("purge_failed"));
        assert!(
            failed[0]["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot list rejects folder")),
            "{}",
            failed[0]
        );
        let (status, page) = d.get("/metrics");
        assert_eq!(status, 200, "the daemon still answers");
        assert!(
            sample(&page, "autosign_daemon_purges_total{outcome=\"failed\"}")
                .is_some_and(|n| n >= 2.0),
            "{page}"
        );
        let (status, _) = d.get("/healthz");
        assert_eq!(status, 200);
        let end = d.stop(Duration::from_secs(20));
        assert_eq!(end.code, 0, "{}", end.stderr);
    }
);

#[test]
fn daemon_check_says_when_the_next_purge_runs_or_that_none_is_scheduled() {
    let mut env = Env::new(Backend::Sqlite);
    // A Saturday morning: the next Sunday 04:30 is the next day.
    let now = "2026-12-05T10:00:00+08:00";
    let out = env.ok(&["daemon", "--check", "--now", now]);
    assert!(
        out.contains(
            "purge: not scheduled (retention.schedule is empty: `autosign purge` by hand)"
        ),
        "{out}"
    );
    env.set("AUTOSIGN_RETENTION__SCHEDULE", "0 30 4 * * Sun");
    let out = env.ok(&["daemon", "--check", "--now", now]);
    assert!(
        out.contains(
            "purge: \"0 30 4 * * Sun\" in Asia/Shanghai; next purge 2026-12-06T04:30:00+08:00"
        ),
        "{out}"
    );
}

#[test]
fn a_bad_retention_schedule_stops_autosign_at_start_up_naming_the_key() {
    for bad in ["0 4 * * *", "not a schedule", "@weekly"] {
        let mut env = Env::new(Backend::Sqlite);
        env.set("AUTOSIGN_RETENTION__SCHEDULE", bad);
        for args in [&["daemon", "--check"][..], &["daemon"][..]] {
            let o = env.cmd(args);
            assert_eq!(o.code, 2, "{bad:?} {args:?}: {}\n{}", o.stdout, o.stderr);
            assert!(
                o.stderr
                    .contains("autosign: error: configuration key retention.schedule: "),
                "{bad:?}: {}",
                o.stderr
            );
        }
    }
}
