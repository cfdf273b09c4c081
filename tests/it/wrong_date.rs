//! After a wrong date: the brake holds a run that would lapse a mass of the
//! register (SUSPENDED and CANCELLED, R3), and `autosign revert` undoes a
//! completed run whose notices have not gone out — permits set back,
//! notices withdrawn, the run marked reverted in the append-only trail —
//! so that the intended date runs as if the wrong one never had.

use crate::deliver::{at, t0, Gateway};
use crate::helpers::*;

/// The register as (permit_no, valid_until, status) lines.
fn register(env: &Env) -> Vec<String> {
    env.query(
        "SELECT permit_no || ' ' || CAST(valid_until AS TEXT) || ' ' || status FROM permits ORDER BY permit_no",
    )
}

/// Column index by header name.
fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// An export's rows without the columns that differ between two worlds
/// with different histories (ids, timestamps) and without the rows `skip`
/// names, as lines.
fn comparable(
    csv_text: &str,
    drop: &[&str],
    skip: impl Fn(&[String], &[String]) -> bool,
) -> Vec<String> {
    let all = rows(csv_text);
    let header = &all[0];
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !drop.contains(&header[i].as_str()) && !TS.contains(&header[i].as_str()))
        .collect();
    all.iter()
        .filter(|r| std::ptr::eq(*r, header) || !skip(header, r))
        .map(|r| {
            keep.iter()
                .map(|&i| r[i].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

fn status_of(env: &Env, permit_no: &str) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", permit_no, "--json"])).expect("status JSON");
    (
        v["status"].as_str().unwrap_or_default().to_string(),
        v["valid_until"].as_str().unwrap_or_default().to_string(),
    )
}

fn refused(o: &Out, what: &str) {
    assert_eq!(o.code, 2, "exit 2:\n{}\n{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains(what),
        "stderr lacks {what:?}:\n{}",
        o.stderr
    );
}

dbtest!(
    a_run_that_would_lapse_a_mass_of_the_register_is_held_by_the_brake,
    |env| {
        let mut env = env;
        // The fixture's register has 8 permits: the check applies from 5
        // lapsing ones here (1,000 by default).
        env.set("AUTOSIGN_BRAKE__MIN_LIFECYCLE_COUNT", "5");
        import_day(&env, "day1");
        // The real first night lapses 3 of 8 (37 %), fewer than 5: it runs.
        assert!(env
            .ok(&["run", "--as-of", "2026-11-01"])
            .contains("run 1 for as_of 2026-11-01: completed"));
        let before = register(&env);
        let notices = env.query("SELECT count(*) FROM notifications");
        // A mistyped year, with the C17 guard overridden: every live permit
        // is past grace.
        let o = env.cmd(&["run", "--as-of", "2062-11-13", "--allow-future"]);
        assert_eq!(o.code, 4, "held:\n{}\n{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(
                "run 2 for 2062-11-13 HELD by the safety brake: SUSPENDED or CANCELLED for 7 of 7 \
                 permits in the register (100.0%: 0 suspended, 7 cancelled), more than \
                 brake.max_lifecycle_share = 0.25"
            ),
            "{}",
            o.stderr
        );
        assert_eq!(register(&env), before, "nothing applied");
        assert_eq!(env.query("SELECT count(*) FROM notifications"), notices);
        // A held run is discarded, not reverted.
        refused(
            &env.cmd(&["revert", "2"]),
            "run 2 for 2062-11-13 is held, not completed: nothing to revert (a held run applied \
             nothing: `autosign discard 2` voids it instead)",
        );
        env.ok(&["discard", "2"]);
        import_day(&env, "day2");
        assert!(env
            .ok(&["run", "--as-of", "2026-11-13"])
            .contains("run 3 for as_of 2026-11-13: completed"));
        // Out of range: exit 2 naming the key.
        env.set("AUTOSIGN_BRAKE__MAX_LIFECYCLE_SHARE", "1.5");
        refused(&env.cmd(&["status", "SH0001"]), "brake.max_lifecycle_share");
    }
);

dbtest!(
    the_brake_counts_the_suspensions_the_night_would_make_under_lapse_policy_suspend,
    |env| {
        let mut env = env;
        env.set("AUTOSIGN_RULES__LAPSE_POLICY", "suspend");
        import_day(&env, "day1");
        assert!(env
            .ok(&["run", "--as-of", "2026-11-01"])
            .contains("run 1 for as_of 2026-11-01: completed"));
        let before = register(&env);
        // Under "suspend" nothing is cancelled: the mistyped year suspends
        // every permit still active, and the suspended ones take no step.
        let active: u64 = env
            .query("SELECT count(*) FROM permits WHERE status = 'active'")
            .first()
            .and_then(|n| n.parse().ok())
            .expect("a count");
        let live: u64 = env
            .query("SELECT count(*) FROM permits WHERE status <> 'cancelled'")
            .first()
            .and_then(|n| n.parse().ok())
            .expect("a count");
        assert!(active >= 2 && active < live, "{active} active of {live}");
        // The real first night's lapses (a third of this small register)
        // ran under the default minimum; the check now applies from 2.
        env.set("AUTOSIGN_BRAKE__MIN_LIFECYCLE_COUNT", "2");
        let o = env.cmd(&["run", "--as-of", "2062-11-13", "--allow-future"]);
        assert_eq!(o.code, 4, "held:\n{}\n{}", o.stdout, o.stderr);
        let share = format!("{:.1}", active as f64 * 100.0 / live as f64);
        assert!(
            o.stderr.contains(&format!(
                "HELD by the safety brake: SUSPENDED or CANCELLED for {active} of {live} \
                 permits in the register ({share}%: {active} suspended, 0 cancelled)"
            )),
            "{}",
            o.stderr
        );
        assert_eq!(register(&env), before, "nothing applied");
    }
);

dbtest!(
    revert_undoes_a_wrong_date_and_the_real_dates_then_run_as_if_it_never_had,
    |env| {
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        let after_first = register(&env);
        // 2026-12-20 typed for 2026-11-13 (C17 overridden). Below
        // min_lifecycle_count the brake lets it through: 3 SUSPENDED, 2
        // CANCELLED (SH0003 suspended by run 1, SH0007 imported suspended,
        // C13), 5 notices queued.
        assert!(env
            .ok(&["run", "--as-of", "2026-12-20", "--allow-future"])
            .contains("run 2 for as_of 2026-12-20: completed"));
        assert_ne!(register(&env), after_first);
        assert_eq!(status_of(&env, "SH0007").0, "cancelled");

        let out = env.ok(&["revert", "2"]);
        assert!(
            out.contains(
                "run 2 for 2026-12-20 reverted: 5 events undone, 0 not undone, 5 notices withdrawn"
            ),
            "{out}"
        );
        assert!(out.contains("`autosign run --as-of DATE`"), "{out}");
        // The register as run 1 left it: the cancelled ones back to
        // suspended (SH0003 by its event, SH0007 as imported), the
        // suspended ones active.
        assert_eq!(register(&env), after_first);
        for (permit, status, valid_until) in [
            ("SH0001", "active", "2026-11-20"),
            ("SH0003", "suspended", "2026-10-20"),
            ("SH0006", "active", "2026-11-25"),
            ("SH0007", "suspended", "2026-09-15"),
        ] {
            assert_eq!(
                status_of(&env, permit),
                (status.to_string(), valid_until.to_string()),
                "{permit}"
            );
        }
        // The trail keeps the events, marked reverted; their notices are
        // withdrawn, not deleted.
        let audit = rows(&env.audit("2026-12-20", "2026-12-20"));
        let (state, nstatus) = (
            col(&audit[0], "state"),
            col(&audit[0], "notification_status"),
        );
        assert_eq!(audit.len(), 6, "{audit:?}");
        for r in &audit[1..] {
            assert_eq!(
                (r[state].as_str(), r[nstatus].as_str()),
                ("reverted", "withdrawn"),
                "{r:?}"
            );
        }
        assert_eq!(
            env.query("SELECT status || ' ' || CAST(count(*) AS TEXT) FROM notifications WHERE run_id = 2 GROUP BY status"),
            ["withdrawn 5"]
        );
        // Once only; the trail of reverts is append-only.
        refused(
            &env.cmd(&["revert", "2"]),
            "run 2 for 2026-12-20 is reverted, not completed: nothing to revert",
        );
        for sql in [
            "UPDATE event_reverts SET undone = false",
            "DELETE FROM event_reverts",
        ] {
            let err = env.sql(sql).expect_err(sql);
            assert!(err.contains("append-only"), "{sql}: {err}");
        }

        // The real dates run, 2026-12-20 among them again, and give what a
        // database that never saw the wrong date gives.
        import_day(&env, "day2");
        env.ok(&["run", "--as-of", "2026-11-13"]);
        import_day(&env, "day3");
        env.ok(&["run", "--as-of", "2026-12-20", "--allow-future"]);
        let reference = Env::new(env.backend);
        import_day(&reference, "day1");
        reference.ok(&["run", "--as-of", "2026-11-01"]);
        import_day(&reference, "day2");
        reference.ok(&["run", "--as-of", "2026-11-13"]);
        import_day(&reference, "day3");
        reference.ok(&["run", "--as-of", "2026-12-20", "--allow-future"]);
        let reverted = |h: &[String], r: &[String]| r[col(h, "state")] == "reverted";
        let withdrawn = |h: &[String], r: &[String]| r[col(h, "status")] == "withdrawn";
        assert_eq!(
            comparable(
                &env.audit("2026-11-01", "2026-12-20"),
                &["run_id"],
                reverted
            ),
            comparable(
                &reference.audit("2026-11-01", "2026-12-20"),
                &["run_id"],
                reverted
            )
        );
        assert_eq!(
            comparable(
                &env.notifications("2026-11-01", "2026-12-20"),
                &["notification_id"],
                withdrawn
            ),
            comparable(
                &reference.notifications("2026-11-01", "2026-12-20"),
                &["notification_id"],
                withdrawn
            )
        );
        assert_eq!(register(&env), register(&reference));
    }
);

dbtest!(
    revert_of_a_first_night_restores_the_register_as_imported_and_the_night_decides_afresh,
    |env| {
        import_day(&env, "day1");
        let imported = register(&env);
        env.ok(&["run", "--as-of", "2026-11-01"]);
        // Every kind: AUTO_SIGNED (valid_until back one year), VISIT_CENTER
        // (cycle open again), SUSPENDED, CANCELLED from active (C1).
        let out = env.ok(&["revert", "1"]);
        assert!(
            out.contains(
                "run 1 for 2026-11-01 reverted: 6 events undone, 0 not undone, 6 notices withdrawn"
            ),
            "{out}"
        );
        for (kind, n) in [
            ("AUTO_SIGNED", 1),
            ("VISIT_CENTER", 2),
            ("SUSPENDED", 2),
            ("CANCELLED", 1),
        ] {
            assert!(
                out.lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>()
                        == [kind, n.to_string().as_str()]),
                "{kind} {n}: {out}"
            );
        }
        assert_eq!(register(&env), imported);
        // The date is free again (C8 is about completed runs) and decides
        // the same cycles afresh, as a fresh database does.
        assert!(env
            .ok(&["run", "--as-of", "2026-11-01"])
            .contains("run 2 for as_of 2026-11-01: completed"));
        let reference = Env::new(env.backend);
        import_day(&reference, "day1");
        reference.ok(&["run", "--as-of", "2026-11-01"]);
        let reverted = |h: &[String], r: &[String]| r[col(h, "state")] == "reverted";
        assert_eq!(
            comparable(
                &env.audit("2026-11-01", "2026-11-01"),
                &["run_id"],
                reverted
            ),
            comparable(
                &reference.audit("2026-11-01", "2026-11-01"),
                &["run_id"],
                reverted
            )
        );
        assert_eq!(register(&env), register(&reference));
    }
);

dbtest!(
    revert_skips_a_permit_changed_since_the_run_and_lists_it,
    |env| {
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        // SH0005, suspended by run 1, endorsed at a center since: a later
        // valid_until makes it active again (C5). The revert leaves it so.
        import_day(&env, "day3");
        assert_eq!(
            status_of(&env, "SH0005"),
            ("active".into(), "2027-10-25".into())
        );
        let out = env.ok(&["revert", "1"]);
        assert!(
            out.contains("reverted: 5 events undone, 1 not undone, 6 notices withdrawn"),
            "{out}"
        );
        assert!(out.contains("    SH0005 SUSPENDED"), "{out}");
        assert_eq!(
            status_of(&env, "SH0005"),
            ("active".into(), "2027-10-25".into())
        );
        // Its event stands (state applied), its notice is withdrawn.
        let audit = rows(&env.audit("2026-11-01", "2026-11-01"));
        let h = &audit[0];
        let sh0005: Vec<_> = audit[1..]
            .iter()
            .filter(|r| r[col(h, "permit_no")] == "SH0005")
            .collect();
        assert_eq!(sh0005.len(), 1);
        assert_eq!(sh0005[0][col(h, "state")], "applied");
        assert_eq!(sh0005[0][col(h, "notification_status")], "withdrawn");
    }
);

dbtest!(
    revert_is_refused_for_an_unknown_run_and_a_run_that_is_not_the_latest,
    |env| {
        refused(
            &env.cmd(&["revert", "99"]),
            "there is no run 99: nothing to revert",
        );
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        import_day(&env, "day2");
        env.ok(&["run", "--as-of", "2026-11-13"]);
        let before = register(&env);
        refused(
            &env.cmd(&["revert", "1"]),
            "refusing to revert run 1 for 2026-11-01: run 2 for 2026-11-13 (completed) came after \
             it, and only the latest run can be reverted",
        );
        assert_eq!(register(&env), before, "nothing changed");
        assert_eq!(
            env.query("SELECT count(*) FROM notifications WHERE status = 'withdrawn'"),
            ["0"]
        );
        // Reverted, run 2 no longer counts: for C16's "earlier than the
        // latest completed run" either, so an earlier date may run.
        env.ok(&["revert", "2"]);
        assert!(env
            .ok(&["run", "--as-of", "2026-11-05"])
            .contains("run 3 for as_of 2026-11-05: completed"));
        refused(
            &env.cmd(&["revert", "1"]),
            "run 3 for 2026-11-05 (completed) came after it",
        );
    }
);

dbtest!(
    revert_is_refused_once_a_notice_was_sent_naming_how_many,
    |env| {
        let mut env = env;
        let gw = Gateway::start();
        gw.configure(&mut env);
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        env.ok(&["deliver", "--now", &at(t0())]);
        let sent =
            env.query("SELECT count(*) FROM notifications WHERE run_id = 1 AND status = 'sent'");
        assert_eq!(sent, ["4"], "the SMS went out");
        assert_eq!(gw.requests().len(), 4);
        let before = register(&env);
        refused(
            &env.cmd(&["revert", "1"]),
            "refusing to revert run 1 for 2026-11-01: 4 of its notices were sent already",
        );
        assert_eq!(register(&env), before, "nothing changed");
        assert_eq!(
            env.query("SELECT count(*) FROM notifications WHERE status = 'withdrawn'"),
            ["0"]
        );
        assert_eq!(
            env.query("SELECT status FROM runs WHERE run_id = 1"),
            ["completed"]
        );
    }
);
