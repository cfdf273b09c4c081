//! `autosign run --dry-run`: the whole plan, the summary and the audit rows
//! a run would write, with nothing written, queued or imported; the run's
//! refusals (C8, C16, C17, a held run) still apply.

use crate::helpers::*;

const DAY1: &str = "2026-11-01";

/// Everything a dry run must leave as it found it: the table counts, the
/// register, the audit and notification exports, and what `status` says of
/// a few permits.
fn snapshot(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["runs", "events", "notifications", "imports"] {
        out.push(format!(
            "{table} {}",
            env.query(&format!("SELECT count(*) FROM {table}"))[0]
        ));
    }
    out.extend(env.query(
        "SELECT permit_no || ' ' || CAST(valid_until AS TEXT) || ' ' || status FROM permits ORDER BY permit_no",
    ));
    out.push(env.audit("2026-01-01", "2099-12-31"));
    out.push(env.notifications("2026-01-01", "2099-12-31"));
    for p in ["SH0001", "SH0002", "SH0004", "SH0006"] {
        out.push(env.ok(&["status", p, "--json"]));
    }
    out
}

/// The lines of a run's summary after its `run N for as_of D: …` line,
/// up to the lines that are not the run's own (the outbox, the audit file).
fn summary_body(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("run "))
        .skip(1)
        .take_while(|l| !l.starts_with("  outbox:") && !l.starts_with("audit:"))
        .map(str::to_string)
        .collect()
}

/// Audit rows without `decided_at`, the one column a dry run cannot know.
fn without_decided_at(csv_text: &str) -> Vec<Vec<String>> {
    let all = rows(csv_text);
    let at = all[0]
        .iter()
        .position(|h| h == "decided_at")
        .expect("decided_at column");
    all.into_iter()
        .map(|mut r| {
            r.remove(at);
            r
        })
        .collect()
}

dbtest!(
    a_dry_run_writes_nothing_and_shows_the_audit_rows_the_run_then_writes_r9,
    |env| {
        import_day(&env, "day1");
        let before = snapshot(&env);
        let dry = env.ok(&["run", "--as-of", DAY1, "--dry-run", "--audit", "dry.csv"]);
        assert!(
            dry.starts_with("DRY RUN for as_of 2026-11-01: nothing was written"),
            "{dry}"
        );
        assert!(dry.contains("a run now would be run 1"), "{dry}");
        assert!(dry.contains("safety brake: no check trips"), "{dry}");
        assert!(
            dry.contains("run 1 for as_of 2026-11-01: would complete"),
            "{dry}"
        );
        assert!(dry.contains("audit: 6 rows the run would write"), "{dry}");
        assert_eq!(snapshot(&env), before, "the dry run wrote something");
        // Twice: still nothing, and the same plan.
        let again = env.ok(&["run", "--as-of", DAY1, "--dry-run"]);
        assert_eq!(summary_body(&again), summary_body(&dry));
        assert_eq!(snapshot(&env), before);

        // The real run afterwards decides everything the fixture's README
        // says (R3, R6, C1, C2), prints the same summary, and writes the
        // same audit rows: only decided_at differs (the time each was made).
        let real = env.ok(&["run", "--as-of", DAY1, "--audit", "real.csv"]);
        assert_eq!(summary_body(&real), summary_body(&dry), "{real}\n{dry}");
        let (dry_csv, real_csv) = (env.read("dry.csv"), env.read("real.csv"));
        assert_eq!(without_decided_at(&dry_csv), without_decided_at(&real_csv));
        let decided: Vec<(String, String, String)> = rows(&real_csv)[1..]
            .iter()
            .map(|r| (r[2].clone(), r[4].clone(), r[5].clone()))
            .collect();
        let want = [
            ("SH0002", "AUTO_SIGNED", ""),
            ("SH0003", "SUSPENDED", ""),
            ("SH0004", "CANCELLED", ""),
            ("SH0005", "SUSPENDED", ""),
            ("SH0006", "VISIT_CENTER", "ADDRESS_CHANGED"),
            (
                "SH0008",
                "VISIT_CENTER",
                "SOCIAL_INSURANCE_CHANGED;MARITAL_STATUS_CHANGED",
            ),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(decided, want);
        // Byte for byte: the two files differ in decided_at cells only, and
        // the dry run's are RFC 3339 (C14).
        let (d, r) = (rows(&dry_csv), rows(&real_csv));
        for (dr, rr) in d.iter().zip(&r).skip(1) {
            for (i, (a, b)) in dr.iter().zip(rr).enumerate() {
                if a != b {
                    assert_eq!(d[0][i], "decided_at", "{a} vs {b}");
                    chrono::DateTime::parse_from_rfc3339(a).expect("RFC 3339");
                }
            }
        }
        // The dry run's file is complete, with its sidecar, like an export.
        assert!(env.path("dry.csv.sha256").exists());
    }
);

dbtest!(
    a_dry_run_lists_waiting_inbox_files_without_importing_them_r2a,
    |mut env| {
        let inbox = env.path("inbox");
        for (sub, file) in [
            ("permits", "permits.csv"),
            ("residence", "residence.csv"),
            ("social_insurance", "social_insurance.csv"),
            ("civil_status", "civil_status.csv"),
        ] {
            let text = std::fs::read(fixture(&format!("multi_day/day1/{file}"))).expect("fixture");
            env.write(&format!("inbox/{sub}/{file}"), text);
        }
        env.set("AUTOSIGN_INBOX__DIR", &inbox.display().to_string());
        // The register is already imported; the three feeds wait.
        env.import("permits", &env.path("inbox/permits/permits.csv"));
        let before = snapshot(&env);
        let dry = env.ok(&["run", "--as-of", DAY1, "--dry-run"]);
        assert!(dry.contains("inbox: 3 file(s) not imported yet"), "{dry}");
        assert!(dry.contains("does not import them"), "{dry}");
        assert!(
            dry.contains("residence ") && dry.contains("inbox/residence/residence.csv"),
            "{dry}"
        );
        assert!(
            !dry.contains("inbox/permits/permits.csv"),
            "already imported: {dry}"
        );
        assert_eq!(
            snapshot(&env),
            before,
            "the dry run imported or wrote something"
        );
        // On the register alone, no visit counts: the plan says so.
        assert!(dry.contains("PENDING/ADDRESS_NOT_VERIFIED"), "{dry}");
        // The run imports them (R2a) and decides on them.
        let real = env.ok(&["run", "--as-of", DAY1]);
        assert!(
            real.contains("inbox ") && real.contains("residence.csv: 3 rows read"),
            "{real}"
        );
        assert_eq!(env.query("SELECT count(*) FROM imports"), ["4"]);
    }
);

dbtest!(
    a_dry_run_reports_what_the_safety_brake_would_say_and_holds_nothing,
    |mut env| {
        import_day(&env, "day1");
        // Two VISIT_CENTER of four due permits trips a 10 % share.
        env.set("AUTOSIGN_BRAKE__MIN_DUE", "1");
        env.set("AUTOSIGN_BRAKE__MAX_VISIT_CENTER_SHARE", "0.1");
        let before = snapshot(&env);
        let dry = env.ok(&["run", "--as-of", DAY1, "--dry-run", "--audit", "dry.csv"]);
        assert!(
            dry.contains("safety brake: would HOLD the run: VISIT_CENTER for 2 of 4"),
            "{dry}"
        );
        assert!(dry.contains("would be HELD by the safety brake"), "{dry}");
        assert!(
            dry.contains("notices queued: none while the run is held"),
            "{dry}"
        );
        assert_eq!(snapshot(&env), before);
        // The real run is held (exit 4) and records the same rows: state
        // held, no notice.
        let o = env.cmd(&["run", "--as-of", DAY1, "--audit", "real.csv"]);
        assert_eq!(o.code, 4, "{o:?}");
        let (dry_csv, real_csv) = (env.read("dry.csv"), env.read("real.csv"));
        assert_eq!(without_decided_at(&dry_csv), without_decided_at(&real_csv));
        let held = rows(&dry_csv);
        assert!(
            held[1..]
                .iter()
                .all(|r| r[17] == "held" && r[14].is_empty()),
            "{dry_csv}"
        );
        // While a run is held no run goes ahead, nor does a dry run.
        let o = env.cmd(&["run", "--as-of", "2026-11-02", "--dry-run"]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(
            o.stderr.contains("held by the safety brake"),
            "{}",
            o.stderr
        );
    }
);

dbtest!(a_dry_run_obeys_the_refusals_of_a_run_c8_c16_c17, |env| {
    import_day(&env, "day1");
    // C17: a date from the future needs --allow-future, as a run does.
    let o = env.cmd(&["run", "--as-of", "2099-01-01", "--dry-run"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("C17"), "{}", o.stderr);
    let before = snapshot(&env);
    let future = env.ok(&[
        "run",
        "--as-of",
        "2099-01-01",
        "--dry-run",
        "--allow-future",
    ]);
    assert!(future.contains("DRY RUN for as_of 2099-01-01"), "{future}");
    // R3 on a date that far: every live permit lapses (the brake's
    // lifecycle check starts at 1,000 steps, so it does not trip here).
    assert!(future.contains("CANCELLED              8"), "{future}");
    assert_eq!(snapshot(&env), before);

    env.ok(&["run", "--as-of", DAY1]);
    // C8: a completed date is a no-op.
    let done = env.ok(&["run", "--as-of", DAY1, "--dry-run", "--audit", "none.csv"]);
    assert!(done.contains("already completed by run 1"), "{done}");
    assert!(!env.path("none.csv").exists(), "no audit rows to write");
    // C16: an earlier date than the last completed run is refused.
    let o = env.cmd(&["run", "--as-of", "2026-10-31", "--dry-run"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("a later date, 2026-11-01"),
        "{}",
        o.stderr
    );
    // The next date plans as run 2, and a real run then is run 2.
    let next = env.ok(&["run", "--as-of", "2026-11-13", "--dry-run"]);
    assert!(next.contains("a run now would be run 2"), "{next}");
    let real = env.ok(&["run", "--as-of", "2026-11-13"]);
    assert!(
        real.contains("run 2 for as_of 2026-11-13: completed"),
        "{real}"
    );
    assert_eq!(summary_body(&real), summary_body(&next));
    let help = env.ok(&["run", "--help"]);
    assert!(help.contains("--dry-run"), "{help}");
});
