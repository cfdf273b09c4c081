//! The nightly run (R2a, R3–R9, C1–C13) through the real binary, with
//! golden exports for a multi-day scenario.

use crate::helpers::*;

/// The multi-day scenario of tests/fixtures/multi_day (see its README):
/// PENDING turning into VISIT_CENTER at the deadline, SUSPENDED then
/// CANCELLED after the grace period, a suspended permit restored by
/// re-import, a closed cycle ignoring later evidence.
fn multi_day(env: &Env) -> (String, String) {
    import_day(env, "day1");
    let out = env.ok(&["run", "--as-of", "2026-11-01"]);
    assert!(out.contains("PENDING                1"), "{out}");
    import_day(env, "day2");
    env.ok(&["run", "--as-of", "2026-11-13"]);
    import_day(env, "day3");
    env.ok(&["run", "--as-of", "2026-12-20", "--allow-future"]);
    (
        normalise_timestamps(&env.audit("2026-11-01", "2026-12-31"), TS),
        normalise_timestamps(&env.notifications("2026-11-01", "2026-12-31"), TS),
    )
}

dbtest!(
    multi_day_scenario_matches_the_golden_audit_and_notifications_r3_r9,
    |env| {
        let (audit, notices) = multi_day(&env);
        assert_golden(&audit, "multi_day/expected/audit.csv");
        assert_golden(&notices, "multi_day/expected/notifications.csv");
    }
);

dbtest!(
    multi_day_scenario_decides_each_permit_as_the_rules_say,
    |env| {
        // The same scenario, checked rule by rule rather than by golden file.
        let (audit, _) = multi_day(&env);
        let got: Vec<(String, String, String, String)> = rows(&audit)[1..]
            .iter()
            .map(|r| (r[1].clone(), r[2].clone(), r[4].clone(), r[5].clone()))
            .collect();
        let want = [
            ("2026-11-01", "SH0002", "AUTO_SIGNED", ""), // R6 no reason
            ("2026-11-01", "SH0003", "SUSPENDED", ""),   // R3 lapsed
            ("2026-11-01", "SH0004", "CANCELLED", ""),   // R3/C1 past grace, directly
            ("2026-11-01", "SH0005", "SUSPENDED", ""),   // R3
            ("2026-11-01", "SH0006", "VISIT_CENTER", "ADDRESS_CHANGED"), // R6 change: at once
            (
                "2026-11-01",
                "SH0008",
                "VISIT_CENTER",
                "SOCIAL_INSURANCE_CHANGED;MARITAL_STATUS_CHANGED",
            ), // C2
            (
                "2026-11-13",
                "SH0001",
                "VISIT_CENTER",
                "ADDRESS_NOT_VERIFIED",
            ), // R6 deadline reached
            ("2026-12-20", "SH0001", "SUSPENDED", ""),   // R3 after VISIT_CENTER
            ("2026-12-20", "SH0003", "CANCELLED", ""),   // R3 suspended past grace
            ("2026-12-20", "SH0006", "SUSPENDED", ""),
            ("2026-12-20", "SH0007", "CANCELLED", ""), // C13 imported suspended
            ("2026-12-20", "SH0008", "SUSPENDED", ""),
        ];
        let want: Vec<(String, String, String, String)> = want
            .iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
            .collect();
        assert_eq!(got, want);
        // SH0005 was restored by a later valid_until and has no event on day 3
        // (C5); SH0002's new cycle (2027-11-10) is not due.
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["status", "SH0005", "--json"])).expect("json");
        assert_eq!(
            (v["status"].as_str(), v["valid_until"].as_str()),
            (Some("active"), Some("2027-10-25"))
        );
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["status", "SH0002", "--json"])).expect("json");
        assert_eq!(v["valid_until"], "2027-11-10", "R7 one year on");
        assert_eq!(v["latest_event"]["decision"], "AUTO_SIGNED");
    }
);

dbtest!(
    the_database_still_refuses_a_status_or_channel_outside_its_enumeration,
    |env| {
        // SQLite's CHECKs are written without IN lists (migration 0004: an
        // IN list costs a temporary B-tree per written row): the same values
        // must pass and every other one fail.
        multi_day(&env);
        let permit = "(SELECT min(permit_no) FROM permits)";
        let notice = "(SELECT min(notification_id) FROM notifications)";
        for ok in ["active", "suspended", "cancelled"] {
            env.sql(&format!(
                "UPDATE permits SET status = '{ok}' WHERE permit_no = {permit}"
            ))
            .unwrap_or_else(|e| panic!("status {ok}: {e}"));
        }
        for ok in ["sms", "email", "none"] {
            env.sql(&format!(
                "UPDATE notifications SET channel = '{ok}' WHERE notification_id = {notice}"
            ))
            .unwrap_or_else(|e| panic!("channel {ok}: {e}"));
        }
        for ok in ["queued", "sent", "failed", "dead", "undeliverable"] {
            env.sql(&format!(
                "UPDATE notifications SET status = '{ok}' WHERE notification_id = {notice}"
            ))
            .unwrap_or_else(|e| panic!("status {ok}: {e}"));
        }
        for bad in [
            format!("UPDATE permits SET status = 'expired' WHERE permit_no = {permit}"),
            format!("UPDATE permits SET status = 'Active' WHERE permit_no = {permit}"),
            format!("UPDATE permits SET si_status = 'unknown' WHERE permit_no = {permit}"),
            format!("UPDATE notifications SET channel = 'fax' WHERE notification_id = {notice}"),
            format!("UPDATE notifications SET status = 'bounced' WHERE notification_id = {notice}"),
        ] {
            let err = env.sql(&bad).expect_err(&bad);
            assert!(err.to_lowercase().contains("check"), "{bad}: {err}");
        }
        if env.backend == crate::helpers::Backend::Sqlite {
            // A new SQLite database has 16 KiB pages (docs/benchmarks.md).
            assert_eq!(env.query("PRAGMA page_size"), ["16384"]);
        }
        {
            // On both backends the register is two tables behind the view
            // `permits` (SQLite's migration 5, PostgreSQL's 12): a write
            // through the view reaches both.
            env.sql(
                "INSERT INTO permits (permit_no, id_number, name, district_code, street_code, address,
                                      valid_until, status, si_status, marital_status, import_id)
                 VALUES ('ZZ1', '11010519491231002X', '赵六', '310115', '310115004', '潍坊路1号',
                         '2030-01-01', 'active', 'paying', 'single', 1)",
            )
            .expect("insert through the view");
            let both = "SELECT (SELECT CAST(valid_until AS TEXT) || ' ' || status FROM permit_state
                                WHERE permit_no = 'ZZ1')
                               || ' ' || (SELECT name FROM permit_details WHERE permit_no = 'ZZ1')";
            assert_eq!(env.query(both), ["2030-01-01 active 赵六"]);
            env.sql(
                "UPDATE permits SET status = 'suspended', name = '赵七' WHERE permit_no = 'ZZ1'",
            )
            .expect("update through the view");
            assert_eq!(env.query(both), ["2030-01-01 suspended 赵七"]);
            let err = env
                .sql("UPDATE permits SET permit_no = 'ZZ2' WHERE permit_no = 'ZZ1'")
                .expect_err("a permit_no is the key");
            assert!(err.contains("permit_no cannot be changed"), "{err}");
            env.sql("DELETE FROM permits WHERE permit_no = 'ZZ1'")
                .expect("delete through the view");
            assert_eq!(
                env.query(
                    "SELECT CAST((SELECT count(*) FROM permit_state WHERE permit_no = 'ZZ1')
                            + (SELECT count(*) FROM permit_details WHERE permit_no = 'ZZ1') AS TEXT)"
                ),
                ["0"]
            );
        }
    }
);

dbtest!(
    every_event_has_exactly_one_notice_with_the_right_channel_r8_c12,
    |env| {
        let (audit, notices) = multi_day(&env);
        let a = rows(&audit);
        let n = rows(&notices);
        assert_eq!(a.len(), n.len(), "one notice per event");
        for r in &a[1..] {
            let channel = &r[14];
            let status = &r[15];
            match r[2].as_str() {
                "SH0002" => assert_eq!((channel.as_str(), status.as_str()), ("email", "queued")),
                "SH0004" => assert_eq!(
                    (channel.as_str(), status.as_str()),
                    ("none", "undeliverable")
                ), // C12
                _ => assert_eq!((channel.as_str(), status.as_str()), ("sms", "queued")),
            }
        }
        // Keyed (permit, cycle, kind): no duplicates.
        let mut keys: Vec<_> = n[1..]
            .iter()
            .map(|r| (r[1].clone(), r[10].clone(), r[2].clone()))
            .collect();
        keys.sort();
        let len = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), len);
    }
);

dbtest!(
    same_as_of_again_changes_nothing_and_earlier_is_refused_c8,
    |env| {
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        let before = env.audit("2026-01-01", "2027-12-31");
        // New evidence after the run does not reopen a completed as_of (C8).
        import_day(&env, "day2");
        let out = env.ok(&["run", "--as-of", "2026-11-01"]);
        assert!(out.contains("already completed"), "{out}");
        assert_eq!(env.audit("2026-01-01", "2027-12-31"), before);
        env.ok(&["run", "--as-of", "2026-11-02"]);
        let o = env.cmd(&["run", "--as-of", "2026-11-01"]);
        assert_eq!(o.code, 0, "completed as_of: a no-op, not a refusal");
        let o = env.cmd(&["run", "--as-of", "2026-10-31"]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("2026-11-02"), "{}", o.stderr);
    }
);

dbtest!(
    inbox_files_are_imported_once_in_order_before_the_run_r2a,
    |mut env| {
        for (sub, file) in [
            ("permits", "permits.csv"),
            ("residence", "residence.csv"),
            ("social_insurance", "social_insurance.csv"),
            ("civil_status", "civil_status.csv"),
        ] {
            let bytes = std::fs::read(fixture(&format!("multi_day/day1/{file}"))).expect("fixture");
            env.write(&format!("inbox/{sub}/{file}"), bytes);
        }
        env.write("inbox/residence/notes.txt", "not a feed");
        env.set("AUTOSIGN_INBOX__DIR", "inbox");
        let out = env.ok(&["run", "--as-of", "2026-11-01"]);
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("inbox")).collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(
            lines[0].contains("permits.csv") && lines[3].contains("civil_status.csv"),
            "register first: {out}"
        );
        // Next night: the same files are not imported again.
        let out = env.ok(&["run", "--as-of", "2026-11-02"]);
        assert!(
            out.lines()
                .filter(|l| l.starts_with("inbox"))
                .all(|l| l.contains("already imported")),
            "{out}"
        );
    }
);

dbtest!(
    a_refused_inbox_file_stops_the_run_before_deciding_r2a,
    |mut env| {
        let bytes = std::fs::read(fixture("multi_day/day1/permits.csv")).expect("fixture");
        env.write("inbox/permits/permits.csv", bytes);
        env.write("inbox/residence/broken.csv", "id_number,when\n1,2\n");
        env.set("AUTOSIGN_INBOX__DIR", "inbox");
        let o = env.cmd(&["run", "--as-of", "2026-11-01"]);
        assert_eq!(o.code, 3, "{o:?}");
        assert!(
            o.stderr.contains("broken.csv") && o.stderr.contains("visited_on"),
            "{}",
            o.stderr
        );
        let audit = env.audit("2026-01-01", "2027-12-31");
        assert_eq!(rows(&audit).len(), 1, "no decision was recorded: {audit}");
        // Fixed, the same night's run goes through.
        std::fs::remove_file(env.path("inbox/residence/broken.csv")).expect("rm");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        assert!(rows(&env.audit("2026-01-01", "2027-12-31")).len() > 1);
    }
);

/// Runs autosign with a crash point armed (`AUTOSIGN_TEST_FAULT`); the
/// process must die there.
fn crash(env: &Env, point: &str, args: &[&str]) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_autosign"));
    c.args(args)
        .current_dir(env.dir.path())
        .env("AUTOSIGN_DATABASE_URL", &env.db_url)
        .env("AUTOSIGN_DATA_DIR", env.path("data"))
        .env("AUTOSIGN_LOG__LEVEL", "error")
        .env("AUTOSIGN_TEST_FAULT", point);
    for (k, v) in &env.env {
        c.env(k, v);
    }
    let o = c.output().expect("spawn");
    assert!(
        !o.status.success(),
        "the fault at {point} must kill {args:?}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("fault injected"),
        "{point} was not reached"
    );
}

dbtest!(
    imports_and_runs_killed_mid_way_are_completed_by_the_rerun_with_nothing_doubled,
    |mut env| {
        // 12,000 permits: several import batches and several run pages
        // (of 1,000 candidates here: a rerun on PostgreSQL, which keeps the
        // pages committed before the kill, still has two to go).
        env.set("AUTOSIGN_IMPORT__BATCH_ROWS", "1000");
        env.set("AUTOSIGN_RUN__PAGE_PERMITS", "1000");
        let mut reference = Env::new(crate::helpers::Backend::Sqlite);
        reference.set("AUTOSIGN_IMPORT__BATCH_ROWS", "1000");
        for e in [&mut env, &mut reference] {
            e.generate(12000, 7, "2026-11-27", "inbox");
            e.set("AUTOSIGN_INBOX__DIR", "inbox");
        }
        reference.ok(&["run", "--as-of", "2026-11-27"]);
        let want_audit = normalise_timestamps(&reference.audit("2026-01-01", "2027-12-31"), TS);
        let want_notices =
            normalise_timestamps(&reference.notifications("2026-01-01", "2027-12-31"), TS);

        let run = ["run", "--as-of", "2026-11-27"];
        // Killed inside the inbox import (after its second batch), then
        // inside the run (after its first and second page), then just before
        // the run commits: every attempt leaves nothing the next one trips on.
        for point in [
            "import.batch_written@2",
            "run.page_written@1",
            "run.page_written@2",
            "run.before_complete",
        ] {
            crash(&env, point, &run);
        }
        let out = env.ok(&run);
        assert!(out.contains("completed"), "{out}");
        assert_eq!(
            normalise_timestamps(&env.audit("2026-01-01", "2027-12-31"), TS),
            want_audit
        );
        assert_eq!(
            normalise_timestamps(&env.notifications("2026-01-01", "2027-12-31"), TS),
            want_notices
        );
        assert!(
            rows(&want_audit).len() > 1000,
            "a realistic number of decisions"
        );
    }
);

dbtest!(
    audit_export_masks_ids_guards_formulas_and_keeps_the_column_order_r9,
    |env| {
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        let audit = env.audit("2026-11-01", "2026-11-01");
        let r = rows(&audit);
        // R9's columns first, in order; then the trailing `state`
        // (docs/rules.md, "The audit trail").
        assert_eq!(
        r[0].join(","),
        "run_id,as_of,permit_no,id_number,decision,reasons,valid_until,new_valid_until,residence_visited_on,residence_result,si_month,si_status,si_employer_uscc,marital_status,notification_channel,notification_status,decided_at,state"
    );
        assert_eq!(
            r[1][3], "320102********0027",
            "masked: first 6, 8 stars, last 4"
        );
        let unmasked = env.ok(&[
            "export",
            "audit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-01",
            "--out",
            "-",
            "--unmasked",
        ]);
        assert_eq!(rows(&unmasked)[1][3], "320102198503150027");
        // Written to a file: owner-only, and identical to stdout.
        env.ok(&[
            "export",
            "audit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-01",
            "--out",
            "a.csv",
        ]);
        assert_eq!(env.read("a.csv"), audit);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(env.path("a.csv"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A permit number that looks like a formula is neutralised (R9).
        let f = env.write(
            "evil.csv",
            format!(
                "{PERMITS_HEADER}\n{}\n",
                permit_row("=HYPERLINK(1)", &id("19850315", 50), "2026-11-05")
            ),
        );
        env.import("permits", &f);
        env.ok(&["run", "--as-of", "2026-11-02"]);
        let audit = env.audit("2026-11-02", "2026-11-02");
        assert!(audit.contains("'=HYPERLINK(1)"), "{audit}");
    }
);

dbtest!(status_tells_the_hotline_what_happened_r10, |env| {
    import_day(&env, "day1");
    env.ok(&["run", "--as-of", "2026-11-01"]);
    let text = env.ok(&["status", "SH0006"]);
    for part in [
        "VISIT_CENTER",
        "ADDRESS_CHANGED",
        "居住地址已变化",
        "sms",
        "queued",
        "decided",
        "潍坊",
    ] {
        assert!(text.contains(part), "{part} missing:\n{text}");
    }
    assert!(!text.contains("32010219850315006X"), "ID masked:\n{text}");
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "SH0006", "--json"])).expect("json");
    assert_eq!(v["cycle"]["state"], "decided");
    assert_eq!(v["notices"][0]["kind"], "VISIT_CENTER");
    let o = env.cmd(&["status", "NOPE"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("NOPE"), "{}", o.stderr);
});

/// The count a summary line `    LABEL    N …` gives.
fn summary_count(out: &str, label: &str) -> i64 {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(label))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label} line in:\n{out}"))
}

dbtest!(
    the_run_summary_counts_what_the_database_holds_r8,
    |mut env| {
        // The summary is counted while the events are written (no second
        // pass over a night's events): it must agree with the events and
        // notices the run left behind.
        env.generate(2000, 7, "2026-11-27", "inbox");
        env.set("AUTOSIGN_INBOX__DIR", "inbox");
        for as_of in ["2026-11-27", "2026-12-15"] {
            // Replays dates that may lie in the future (C17).
            let out = env.ok(&["run", "--as-of", as_of, "--allow-future"]);
            let run = format!("(SELECT run_id FROM runs WHERE as_of = '{as_of}')");
            for kind in ["AUTO_SIGNED", "VISIT_CENTER", "SUSPENDED", "CANCELLED"] {
                let db = env.query(&format!(
                    "SELECT count(*) FROM events WHERE run_id = {run} AND kind = '{kind}'"
                ));
                assert_eq!(
                    summary_count(&out, kind).to_string(),
                    db[0],
                    "{kind} {as_of}"
                );
            }
            for (label, channel) in [
                ("sms", "sms"),
                ("email", "email"),
                ("undeliverable", "none"),
            ] {
                let db = env.query(&format!(
                    "SELECT count(*) FROM notifications WHERE run_id = {run} AND channel = '{channel}'"
                ));
                assert_eq!(
                    summary_count(&out, label).to_string(),
                    db[0],
                    "{label} {as_of}"
                );
            }
            let reasons = env.query(&format!(
                "SELECT count(*) FROM events WHERE run_id = {run} AND reasons LIKE '%ADDRESS_NOT_VERIFIED%'"
            ));
            assert_eq!(
                summary_count(&out, "VISIT_CENTER/ADDRESS_NOT_VERIFIED").to_string(),
                reasons[0],
                "{out}"
            );
            assert!(summary_count(&out, "AUTO_SIGNED") + summary_count(&out, "VISIT_CENTER") > 0);
        }
    }
);

dbtest!(
    generated_sample_data_exercises_every_outcome_and_reason,
    |mut env| {
        env.generate(300, 42, "2026-11-27", "inbox");
        env.set("AUTOSIGN_INBOX__DIR", "inbox");
        let out = env.ok(&["run", "--as-of", "2026-11-27"]);
        for kind in [
            "AUTO_SIGNED",
            "VISIT_CENTER",
            "SUSPENDED",
            "CANCELLED",
            "PENDING",
        ] {
            let line = out
                .lines()
                .find(|l| l.trim_start().starts_with(kind))
                .unwrap_or_else(|| panic!("{kind}: {out}"));
            let n: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("count");
            assert!(n > 0, "{kind} never happens: {out}");
        }
        for reason in [
            "ADDRESS_NOT_VERIFIED",
            "ADDRESS_CHANGED",
            "SOCIAL_INSURANCE_MISSING",
            "SOCIAL_INSURANCE_CHANGED",
            "EMPLOYER_CHANGED",
            "MARITAL_STATUS_CHANGED",
        ] {
            assert!(
                out.contains(&format!("VISIT_CENTER/{reason}")),
                "{reason} never decided: {out}"
            );
        }
        for channel in ["sms", "email", "undeliverable"] {
            let line = out
                .lines()
                .find(|l| l.trim_start().starts_with(channel))
                .expect("channel line");
            assert!(!line.trim_end().ends_with(" 0"), "{channel} unused: {out}");
        }
    }
);

dbtest!(
    the_run_plans_every_decision_before_writing_and_writes_what_it_planned,
    |mut env| {
        // Plan before write (the safety brake needs the outcome counts before
        // anything is written): the plan's counts, logged as "run planned",
        // are what the write pass then writes.
        load_generated(&env, 3000);
        env.set("AUTOSIGN_LOG__LEVEL", "info");
        env.set("AUTOSIGN_LOG__FORMAT", "json");
        let o = env.cmd(&["run", "--as-of", "2026-11-27"]);
        assert_eq!(o.code, 0, "{o:?}");
        let planned: serde_json::Value = o
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "run planned")
            .unwrap_or_else(|| panic!("no plan line: {}", o.stderr))["fields"]
            .clone();
        let audit = env.audit("2026-11-27", "2026-11-27");
        let count = |kind: &str| rows(&audit)[1..].iter().filter(|r| r[4] == kind).count() as u64;
        let (auto, visit) = (count("AUTO_SIGNED"), count("VISIT_CENTER"));
        assert!(auto > 0 && visit > 0, "{audit}");
        assert_eq!(planned["auto_signed"].as_u64(), Some(auto));
        assert_eq!(planned["visit_center"].as_u64(), Some(visit));
        let pending = planned["pending"].as_u64().expect("pending");
        assert!(pending > 0);
        assert_eq!(planned["due"].as_u64(), Some(auto + visit + pending));
        let reported = o
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("PENDING "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok());
        assert_eq!(reported, Some(pending), "{}", o.stdout);
    }
);

dbtest!(
    later_rows_win_across_batches_and_imports_and_c4_filters_the_latest_civil_row_r2,
    |mut env| {
        // Two-row batches, so the repeated key below spans batches: SQLite
        // appends feed rows and finds the repeat with a Bloom filter
        // confirmed against the rows written; PostgreSQL upserts by key.
        // Both must warn once and let the later line win (R2).
        env.set("AUTOSIGN_IMPORT__BATCH_ROWS", "2");
        let (a, b) = (id("19850315", 1), id("19850315", 2));
        let permits = env.write(
            "p.csv",
            format!(
                "{PERMITS_HEADER}\n{}\n{}\n",
                permit_row("P1", &a, "2026-12-01"),
                permit_row("P2", &b, "2026-12-01")
            ),
        );
        env.import("permits", &permits);
        let res = env.write(
            "res.csv",
            format!(
                "id_number,visited_on,result\n{a},2026-11-20,changed\n{b},2026-11-20,consistent\n\
                 {b},2026-11-21,consistent\n{a},2026-11-20,consistent\n"
            ),
        );
        let out = env.import("residence", &res);
        assert!(
            out.contains("4 imported") && out.contains("1 warnings"),
            "{out}"
        );
        // A later import replaces the same (id_number, month).
        let uscc = "91310115MA1H7GPJ49";
        for (file, row) in [
            (
                "si1.csv",
                format!("{a},2026-11,arrears,\n{b},2026-11,paid,{uscc}"),
            ),
            ("si2.csv", format!("{a},2026-11,paid,{uscc}")),
        ] {
            let f = env.write(
                file,
                format!("id_number,month,status,employer_uscc\n{row}\n"),
            );
            env.import("social-insurance", &f);
        }
        // The holder's latest civil row is dated after the run: C4 ignores
        // it, and the earlier row (married) does not come back.
        for (file, row) in [
            ("c1.csv", format!("{a},married,2026-11-01")),
            ("c2.csv", format!("{a},single,2026-12-15")),
        ] {
            let f = env.write(file, format!("id_number,marital_status,as_of\n{row}\n"));
            env.import("civil-status", &f);
        }
        env.ok(&["run", "--as-of", "2026-11-27"]);
        let audit = env.audit("2026-11-27", "2026-11-27");
        let r = rows(&audit);
        let p1 = r.iter().find(|r| r[2] == "P1").expect("P1 decided");
        // decision, reasons, residence_result, si_status, marital_status
        assert_eq!(
            (&*p1[4], &*p1[5], &*p1[9], &*p1[11], &*p1[13]),
            ("AUTO_SIGNED", "", "consistent", "paid", ""),
            "{audit}"
        );
        let p2 = r.iter().find(|r| r[2] == "P2").expect("P2 decided");
        assert_eq!((&*p2[4], &*p2[8]), ("AUTO_SIGNED", "2026-11-21"), "{audit}");
    }
);

/// The SQLite migrations this binary carries: version, sqlx's description
/// and text, in version order.
fn sqlite_migrations() -> Vec<(i64, String, String)> {
    let dir = format!("{}/migrations/sqlite", env!("CARGO_MANIFEST_DIR"));
    let mut all: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations")
        .map(|e| {
            let file = e.expect("entry").file_name().into_string().expect("utf-8");
            let (version, name) = file.trim_end_matches(".sql").split_once('_').expect("name");
            let sql = std::fs::read_to_string(format!("{dir}/{file}")).expect("migration");
            (
                version.parse().expect("version"),
                name.replace('_', " "),
                sql,
            )
        })
        .collect();
    all.sort();
    all
}

/// A new SQLite database with migrations 1 to `upto` applied as an earlier
/// binary left them, each recorded as sqlx records it except `unrecorded`.
fn sqlite_migrated_by_hand(env: &Env, upto: i64, unrecorded: Option<i64>) -> rusqlite::Connection {
    use sha2::Digest;
    let path = env.db_url.trim_start_matches("sqlite://");
    std::fs::create_dir_all(std::path::Path::new(path).parent().expect("dir")).expect("mkdir");
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
           installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,
           checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);",
    )
    .expect("ledger");
    for (version, name, sql) in sqlite_migrations().into_iter().filter(|m| m.0 <= upto) {
        c.execute_batch(&sql).expect("apply");
        if Some(version) == unrecorded {
            continue;
        }
        c.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (?1, ?2, 1, ?3, 0)",
            rusqlite::params![version, name, sha2::Sha384::digest(sql.as_bytes()).to_vec()],
        )
        .expect("ledger row");
    }
    c
}

/// A SQLite database as migrations 1 and 2 left it (keyed feed tables),
/// with feed rows in it: what the append-only migration starts from.
fn sqlite_before_append_only_feeds(env: &Env) {
    let c = sqlite_migrated_by_hand(env, 2, None);
    let (a, b) = (id("19850315", 1), id("19850315", 2));
    c.execute_batch(&format!(
        "INSERT INTO imports (import_id, feed, file_name, sha256, imported_at)
           VALUES (1, 'permits', 'p', 'p', 't'), (2, 'residence', 'r', 'r', 't'),
                  (3, 'social-insurance', 's', 's', 't'), (4, 'civil-status', 'c', 'c', 't');
         INSERT INTO permits (permit_no, id_number, name, phone, district_code, street_code, address,
                              valid_until, status, employer_uscc, si_status, marital_status, import_id)
           VALUES ('P1', '{a}', '张三', '13800138000', '310115', '310115004', '上海市浦东新区潍坊路1号',
                   '2026-12-01', 'active', '91310115MA1H7GPJ49', 'paying', 'single', 1),
                  ('P2', '{b}', '李四', '13800138001', '310115', '310115004', '上海市浦东新区潍坊路2号',
                   '2026-12-01', 'active', '91310115MA1H7GPJ49', 'paying', 'single', 1);
         INSERT INTO residence VALUES ('{a}', '2026-11-20', 'consistent', '', '', 2),
                                      ('{b}', '2026-11-20', 'changed', '', '', 2);
         INSERT INTO social_insurance VALUES ('{a}', '2026-11', 'paid', '91310115MA1H7GPJ49', '', 3),
                                             ('{b}', '2026-11', 'paid', '91310115MA1H7GPJ49', '', 3);
         INSERT INTO civil_status VALUES ('{b}', 'married', '2026-11-01', 4);"
    ))
    .expect("rows");
}

#[test]
fn feed_rows_stored_before_the_append_only_tables_still_decide_the_run() {
    // Upgrading applies migration 3 over existing keyed feed rows: the run
    // reads them as it read them before (R5).
    let env = Env::new(Backend::Sqlite);
    sqlite_before_append_only_feeds(&env);
    env.ok(&["run", "--as-of", "2026-11-27"]);
    let audit = env.audit("2026-11-27", "2026-11-27");
    let r = rows(&audit);
    let p1 = r.iter().find(|r| r[2] == "P1").expect("P1");
    assert_eq!(
        (&*p1[4], &*p1[9], &*p1[11]),
        ("AUTO_SIGNED", "consistent", "paid"),
        "{audit}"
    );
    let p2 = r.iter().find(|r| r[2] == "P2").expect("P2");
    assert_eq!(
        (&*p2[4], &*p2[5], &*p2[13]),
        (
            "VISIT_CENTER",
            "ADDRESS_CHANGED;MARITAL_STATUS_CHANGED",
            "married"
        ),
        "{audit}"
    );
}

#[test]
fn a_migration_an_earlier_binary_applied_but_did_not_record_is_recorded_not_applied_again() {
    // Earlier binaries recorded a migration that opens its own transaction
    // (2, 4, 6) after its COMMIT. One killed in between left migration 6
    // applied and unrecorded, and every later start failed on its ADD
    // COLUMN. The table that migration made shows its change committed, so
    // a start now records it and applies the rest.
    use sha2::Digest;
    let env = Env::new(Backend::Sqlite);
    let path = env.db_url.trim_start_matches("sqlite://");
    let c = sqlite_migrated_by_hand(&env, 6, Some(6));
    let migrations = sqlite_migrations();
    let (_, _, sql_6) = migrations.iter().find(|m| m.0 == 6).expect("migration 6");
    let checksum_6 = sha2::Sha384::digest(sql_6.as_bytes()).to_vec();
    drop(c);
    import_day(&env, "day1");
    let out = env.ok(&["run", "--as-of", "2026-11-27"]);
    assert!(out.contains("completed"), "{out}");
    assert_eq!(
        env.query("SELECT CAST(count(*) AS TEXT) FROM _sqlx_migrations"),
        [migrations.len().to_string()]
    );
    let c = rusqlite::Connection::open(path).expect("reopen");
    let recorded: Vec<u8> = c
        .query_row(
            "SELECT checksum FROM _sqlx_migrations WHERE version = 6",
            [],
            |r| r.get(0),
        )
        .expect("migration 6 recorded");
    assert_eq!(recorded, checksum_6);
    let columns: i64 = c
        .query_row(
            "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'prior_status'",
            [],
            |r| r.get(0),
        )
        .expect("columns");
    assert_eq!(columns, 1, "migration 6 applied once");
}

/// Today in Asia/Shanghai, the configured zone, as the binary reckons it.
fn shanghai_today() -> chrono::NaiveDate {
    chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive()
}

dbtest!(
    a_future_as_of_is_refused_naming_both_dates_and_leaves_the_register_alone_c17,
    |env| {
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        let audit = env.audit("2000-01-01", "2099-12-31");
        let notices = env.notifications("2000-01-01", "2099-12-31");
        let today = shanghai_today();
        // The mistyped year of the incident: 2026 became 2062.
        let typo = today + chrono::Duration::days(36 * 365);
        let o = env.cmd(&["run", "--as-of", &typo.to_string()]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains(&typo.to_string()), "{}", o.stderr);
        assert!(o.stderr.contains(&today.to_string()), "{}", o.stderr);
        assert!(o.stderr.contains("--allow-future"), "{}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
        assert_eq!(env.audit("2000-01-01", "2099-12-31"), audit);
        assert_eq!(env.notifications("2000-01-01", "2099-12-31"), notices);
        // Nothing was recorded for the refused date: the real next night
        // still runs (C16 would refuse it after a completed later date).
        let out = env.ok(&["run", "--as-of", "2026-11-13"]);
        assert!(out.contains("for as_of 2026-11-13: completed"), "{out}");
    }
);

dbtest!(
    the_future_allowance_is_configured_and_allow_future_overrides_it_c17,
    |mut env| {
        import_day(&env, "day1");
        let tomorrow = (shanghai_today() + chrono::Duration::days(1)).to_string();
        env.set("AUTOSIGN_RUN__FUTURE_ALLOWANCE_DAYS", "0");
        let o = env.cmd(&["run", "--as-of", &tomorrow]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(
            o.stderr.contains("run.future_allowance_days"),
            "{}",
            o.stderr
        );
        // The default allowance of one day admits tomorrow (a run started
        // just before midnight for the coming night).
        env.set("AUTOSIGN_RUN__FUTURE_ALLOWANCE_DAYS", "1");
        let out = env.ok(&["run", "--as-of", &tomorrow]);
        assert!(
            out.contains(&format!("for as_of {tomorrow}: completed")),
            "{out}"
        );
        let later = (shanghai_today() + chrono::Duration::days(400)).to_string();
        let out = env.ok(&["run", "--as-of", &later, "--allow-future"]);
        assert!(
            out.contains(&format!("for as_of {later}: completed")),
            "{out}"
        );
        env.set("AUTOSIGN_RUN__FUTURE_ALLOWANCE_DAYS", "8");
        let o = env.cmd(&["run", "--as-of", "2026-11-01"]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(
            o.stderr.contains("run.future_allowance_days"),
            "{}",
            o.stderr
        );
    }
);

dbtest!(
    a_damaged_stored_feed_value_stops_the_run_before_it_writes_and_mended_it_runs,
    |env| {
        // Stored codes are read back as domain values by the database
        // layer: one that is none of its enumeration's codes is named, with
        // its value, and the run stops in its plan, before any page. Once
        // the value is mended, the same night runs as it would have.
        import_day(&env, "day1");
        env.query("UPDATE social_insurance SET status = status || '?'");
        let o = env.cmd(&["run", "--as-of", "2026-11-01"]);
        assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
        assert!(
            o.stderr
                .contains("stored payment status \"paid?\" is not a code of it"),
            "{}",
            o.stderr
        );
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
        assert_eq!(env.query("SELECT count(*) FROM events"), ["0"]);
        assert_eq!(env.query("SELECT count(*) FROM notifications"), ["0"]);
        env.query("UPDATE social_insurance SET status = substr(status, 1, length(status) - 1)");
        let out = env.ok(&["run", "--as-of", "2026-11-01"]);
        assert!(out.contains("PENDING                1"), "{out}");
        assert!(out.contains("AUTO_SIGNED            1"), "{out}");
    }
);
