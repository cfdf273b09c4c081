//! `autosign explain`: why a permit got what it got, rule by rule (R3–R8),
//! from what a run recorded, or as a what-if that writes nothing; every
//! piece of evidence with the file and line it came from.

use crate::helpers::*;

const AS_OF: &str = "2026-11-01";

/// Holders: P1 (no visit, 4 days left: VISIT_CENTER at once, R6), P2 (all
/// consistent: AUTO_SIGNED, R7), P3 (no visit, 24 days left: PENDING), and
/// a fourth holder whose visit fills lines 2-3 of the residence file (a
/// quoted address with a line break), so that P2's visit is on physical
/// line 4.
struct Scenario {
    p1: String,
    p2: String,
    p3: String,
}

fn scenario(env: &Env) -> Scenario {
    let s = Scenario {
        p1: id("19850315", 1),
        p2: id("19850315", 2),
        p3: id("19850315", 3),
    };
    let other = id("19850315", 4);
    let permits = format!(
        "{PERMITS_HEADER}\n{}\n{}\n{}\n",
        permit_row("P1", &s.p1, "2026-11-05"),
        permit_row("P2", &s.p2, "2026-11-20"),
        permit_row("P3", &s.p3, "2026-11-25"),
    );
    let residence = format!(
        "id_number,visited_on,result,address,officer_id\n\
         {other},2026-10-25,consistent,\"潍坊路9号\n后门\",P009\n\
         {},2026-10-25,consistent,潍坊路2号,P002\n",
        s.p2
    );
    let si = format!(
        "id_number,month,status,employer_uscc,employer_name\n\
         {},2026-10,paid,91310115MA1H7GPJ49,上海甲公司\n\
         {},2026-10,paid,91310115MA1H7GPJ49,上海甲公司\n\
         {},2026-10,paid,91310115MA1H7GPJ49,上海甲公司\n",
        s.p1, s.p2, s.p3
    );
    let civil = format!(
        "id_number,marital_status,as_of\n{},single,2026-10-01\n",
        s.p2
    );
    env.import("permits", &env.write("in/permits.csv", permits));
    env.import("residence", &env.write("in/residence.csv", residence));
    env.import(
        "social-insurance",
        &env.write("in/social_insurance.csv", si),
    );
    env.import("civil-status", &env.write("in/civil_status.csv", civil));
    s
}

fn explain(env: &Env, permit: &str, as_of: &str) -> serde_json::Value {
    let out = env.ok(&["explain", permit, "--as-of", as_of, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain JSON: {e}\n{out}"))
}

/// Asserts a source names the file (by its last path component), line and
/// import, with an RFC 3339 import time (C14).
fn assert_source(v: &serde_json::Value, file: &str, line: u64, import_id: i64) {
    let f = v["file"].as_str().unwrap_or_default();
    assert!(f.ends_with(&format!("in/{file}")), "file {f:?} in {v}");
    assert_eq!(v["line"].as_u64(), Some(line), "line in {v}");
    assert_eq!(v["import_id"].as_i64(), Some(import_id), "import in {v}");
    let at = v["imported_at"].as_str().unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("{at:?}: {e}"));
}

/// The database's own record of what is stored: a what-if or an explain
/// must leave it as it was.
fn stored_state(env: &Env) -> Vec<String> {
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
    out.push(env.audit("2026-01-01", "2027-12-31"));
    out.push(env.notifications("2026-01-01", "2027-12-31"));
    out
}

dbtest!(
    explain_names_the_missing_visit_behind_a_visit_center_r5_r6,
    |env| {
        let s = scenario(&env);
        env.ok(&["run", "--as-of", AS_OF]);
        let v = explain(&env, "P1", AS_OF);
        assert_eq!(v["mode"], "recorded");
        assert_eq!(v["run"]["run_id"], 1);
        assert_eq!(v["lifecycle"]["step"], serde_json::Value::Null);
        assert_eq!(v["window"]["due"], true);
        assert_eq!(v["window"]["days_left"], 4);
        assert_eq!(v["decision"]["outcome"], "VISIT_CENTER");
        assert_eq!(
            v["decision"]["reasons"],
            serde_json::json!(["ADDRESS_NOT_VERIFIED"])
        );
        // R6: 4 days left is past the deadline of valid_until − 7 days.
        assert_eq!(v["decision"]["decision_deadline"], "2026-10-29");
        let r = &v["evidence"]["residence"];
        assert_eq!(r["visit"], serde_json::Value::Null);
        assert_eq!(r["reason"], "ADDRESS_NOT_VERIFIED");
        assert_eq!(
            (r["from"].as_str(), r["to"].as_str()),
            (Some("2026-10-06"), Some(AS_OF))
        );
        // The payment that did count, with its row.
        let si = &v["evidence"]["social_insurance"];
        assert_eq!(si["reason"], serde_json::Value::Null);
        assert_eq!(si["payment"]["month"], "2026-10");
        assert_source(&si["payment"]["source"], "social_insurance.csv", 2, 3);
        assert_eq!(v["effect"]["status_after"], "active");
        assert_eq!(v["effect"]["new_valid_until"], serde_json::Value::Null);
        let n = &v["notices"][0];
        assert_eq!(
            (
                n["recorded"].as_bool(),
                n["kind"].as_str(),
                n["channel"].as_str()
            ),
            (Some(true), Some("VISIT_CENTER"), Some("sms"))
        );
        assert_eq!(
            (n["recipient"].as_str(), n["status"].as_str()),
            (Some("138****8000"), Some("queued"))
        );
        assert_eq!(n["attempts"], 0);
        // The text for the hotline names the reason; personal data is masked
        // as `status` masks it.
        let text = env.ok(&["explain", "P1", "--as-of", AS_OF]);
        assert!(text.contains("R6 decision: VISIT_CENTER"), "{text}");
        assert!(
            text.contains("no visit within the window → ADDRESS_NOT_VERIFIED"),
            "{text}"
        );
        assert!(
            text.contains("in/social_insurance.csv line 2 (import 3"),
            "{text}"
        );
        for secret in [s.p1.as_str(), "13800138000", "张三"] {
            assert!(!text.contains(secret), "{secret} shown in clear:\n{text}");
        }
        assert!(
            text.contains("320102********") && text.contains("张*"),
            "{text}"
        );
    }
);

dbtest!(
    explain_shows_the_file_line_and_import_of_each_evidence_row_r5_r7,
    |env| {
        scenario(&env);
        env.ok(&["run", "--as-of", AS_OF]);
        let v = explain(&env, "P2", AS_OF);
        assert_eq!(v["decision"]["outcome"], "AUTO_SIGNED");
        assert_eq!(v["decision"]["reasons"], serde_json::json!([]));
        assert_eq!(
            v["effect"]["new_valid_until"], "2027-11-20",
            "R7 one year on"
        );
        assert_source(&v["permit"]["source"], "permits.csv", 3, 1);
        let e = &v["evidence"];
        assert_eq!(e["residence"]["visit"]["visited_on"], "2026-10-25");
        assert_eq!(e["residence"]["visit"]["officer_id"], "P002");
        // The physical line: the row before it spans lines 2 and 3.
        assert_source(&e["residence"]["visit"]["source"], "residence.csv", 4, 2);
        assert_source(
            &e["social_insurance"]["payment"]["source"],
            "social_insurance.csv",
            3,
            3,
        );
        assert_eq!(e["civil_status"]["counted"], true);
        assert_eq!(e["civil_status"]["record"]["marital_status"], "single");
        assert_source(
            &e["civil_status"]["record"]["source"],
            "civil_status.csv",
            2,
            4,
        );

        // A later import replaces the visit's row (R2). The recorded
        // explanation keeps the run's values, and says the row it read was
        // replaced (both backends keep one row per key).
        let p2 = id("19850315", 2);
        env.import(
            "residence",
            &env.write(
                "in/residence_later.csv",
                format!("id_number,visited_on,result\n{p2},2026-10-25,changed\n"),
            ),
        );
        let v = explain(&env, "P2", AS_OF);
        let visit = &v["evidence"]["residence"]["visit"];
        assert_eq!(visit["result"], "consistent", "the run's value: {v}");
        let notes = v["notes"].to_string();
        assert_eq!(visit["source"], serde_json::Value::Null, "{v}");
        assert!(notes.contains("replaced since by import 5"), "{notes}");
    }
);

dbtest!(
    a_what_if_writes_nothing_and_agrees_with_the_run_that_follows,
    |env| {
        scenario(&env);
        let before = stored_state(&env);
        let mut what_if = Vec::new();
        for p in ["P1", "P2", "P3"] {
            let v = explain(&env, p, AS_OF);
            assert_eq!(v["mode"], "what_if", "{v}");
            assert!(
                v["basis"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("WHAT-IF"),
                "{v}"
            );
            what_if.push(v);
        }
        let text = env.ok(&["explain", "P2", "--as-of", AS_OF]);
        assert!(
            text.contains("WHAT-IF") && text.contains("nothing was written"),
            "{text}"
        );
        assert!(
            text.contains("R8 notice (what-if, not queued): AUTO_SIGNED via sms"),
            "{text}"
        );
        assert_eq!(stored_state(&env), before, "explain wrote something");
        // R8: the notice a run would queue is shown, not queued.
        assert_eq!(what_if[1]["notices"][0]["recorded"], false);
        assert_eq!(
            what_if[1]["notices"][0]["notification_id"],
            serde_json::Value::Null
        );
        // R6: P3 has 24 days left, beyond the deadline: PENDING.
        assert_eq!(what_if[2]["decision"]["outcome"], "PENDING");
        assert_eq!(what_if[2]["decision"]["decision_deadline"], "2026-11-18");
        assert_eq!(what_if[2]["notices"], serde_json::json!([]));

        env.ok(&["run", "--as-of", AS_OF]);
        for (p, w) in ["P1", "P2"].iter().zip(&what_if) {
            let v = explain(&env, p, AS_OF);
            assert_eq!(v["mode"], "recorded", "{v}");
            // The same rules on the same rows: the same decision, and the
            // same evidence from the same file lines.
            assert_eq!(v["decision"]["outcome"], w["decision"]["outcome"], "{p}");
            assert_eq!(v["decision"]["reasons"], w["decision"]["reasons"], "{p}");
            assert_eq!(v["evidence"], w["evidence"], "{p}");
            assert_eq!(
                v["effect"]["new_valid_until"], w["effect"]["new_valid_until"],
                "{p}"
            );
        }
        // PENDING is not recorded per permit: still a what-if, saying so.
        let v = explain(&env, "P3", AS_OF);
        assert_eq!(
            (v["mode"].as_str(), v["decision"]["outcome"].as_str()),
            (Some("what_if"), Some("PENDING"))
        );
        assert!(
            v["notes"]
                .to_string()
                .contains("completed without an event"),
            "{v}"
        );

        // Later dates: C8 (a decided cycle), R4 (a new cycle not yet due),
        // R3 (past valid_until).
        let v = explain(&env, "P1", "2026-11-02");
        assert_eq!(v["decision"]["outcome"], "ALREADY_DECIDED");
        assert_eq!(v["cycle"]["decided_by"]["run_id"], 1);
        assert_eq!(v["cycle"]["decided_by"]["decision"], "VISIT_CENTER");
        let v = explain(&env, "P2", "2026-11-02");
        assert_eq!(v["decision"]["outcome"], "NOT_DUE");
        assert_eq!(v["window"]["window_opens"], "2027-10-21");
        let v = explain(&env, "P1", "2026-11-06");
        assert_eq!(v["lifecycle"]["step"], "SUSPENDED");
        assert_eq!(v["decision"]["outcome"], "SUSPENDED");
        assert_eq!(v["effect"]["status_after"], "suspended");
        assert_eq!(v["notices"][0]["kind"], "SUSPENDED");
        // A date earlier than the completed run: a run would refuse it.
        let v = explain(&env, "P3", "2026-10-31");
        assert!(v["notes"].to_string().contains("would be refused"), "{v}");
        // The history lists the recorded events, for the clerk to pick a date.
        assert_eq!(v["history"], serde_json::json!([]));
        let v = explain(&env, "P1", "2026-11-06");
        assert_eq!(v["history"][0]["as_of"], AS_OF);
        assert_eq!(v["history"][0]["decision"], "VISIT_CENTER");
    }
);

dbtest!(
    explain_refuses_an_unknown_or_malformed_permit_and_a_bad_date,
    |env| {
        scenario(&env);
        let o = env.cmd(&["explain", "NOPE"]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("no permit \"NOPE\""), "{}", o.stderr);
        // An ID number given instead is not echoed in clear.
        let p1 = id("19850315", 1);
        let o = env.cmd(&["explain", &p1]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(
            !o.stderr.contains(&p1) && o.stderr.contains("ID number"),
            "{}",
            o.stderr
        );
        let o = env.cmd(&["explain", "  "]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("PERMIT_NO is empty"), "{}", o.stderr);
        for bad in ["2026-02-30", "2026-13-01", "soon"] {
            let o = env.cmd(&["explain", "P1", "--as-of", bad]);
            assert_eq!(o.code, 2, "{bad}: {o:?}");
            assert!(o.stderr.contains("--as-of"), "{bad}: {}", o.stderr);
            assert_eq!(o.stderr.lines().count(), 1, "one line: {}", o.stderr);
        }
        // A permit number with spaces around it is found (C10).
        let v = explain(&env, " P1 ", AS_OF);
        assert_eq!(v["permit_no"], "P1");
        let help = env.ok(&["explain", "--help"]);
        assert!(
            help.contains("what-if") && help.contains("--as-of"),
            "{help}"
        );
    }
);

dbtest!(
    a_row_imported_before_lines_were_kept_shows_its_import_and_no_line,
    |env| {
        scenario(&env);
        env.ok(&["run", "--as-of", AS_OF]);
        // As a PostgreSQL row imported before migration 8 (and a SQLite one
        // before migration 3) is stored: line 0.
        env.sql("UPDATE residence SET line = 0")
            .expect("age the rows");
        let v = explain(&env, "P2", AS_OF);
        let src = &v["evidence"]["residence"]["visit"]["source"];
        assert_eq!(src["line"], serde_json::Value::Null, "{src}");
        assert_eq!(src["import_id"], 2, "{src}");
        let text = env.ok(&["explain", "P2", "--as-of", AS_OF]);
        assert!(
            text.contains("in/residence.csv line not recorded (import 2"),
            "{text}"
        );
    }
);

dbtest!(
    stored_reasons_that_are_not_reason_codes_are_refused_naming_the_value,
    |env| {
        scenario(&env);
        env.ok(&["run", "--as-of", AS_OF]);
        // P3 is PENDING: no event of its own. One is added by hand, with a
        // reason no run writes (the column does not check its codes).
        env.sql(&format!(
            "INSERT INTO events (event_id, run_id, as_of, permit_no, id_number, kind, reasons,
                                 valid_until, decided_at)
             SELECT max(event_id) + 1, 1, '{AS_OF}', 'P3', '{}', 'VISIT_CENTER',
                    'ADDRESS_NOT_VERIFIED;PET_CHANGED', '2026-11-25', '2026-11-01T02:00:00+08:00'
             FROM events",
            id("19850315", 3)
        ))
        .expect("insert");
        for args in [
            &["status", "P3"][..],
            &["explain", "P3", "--as-of", AS_OF][..],
        ] {
            let o = env.cmd(args);
            assert_ne!(o.code, 0, "{args:?}: {}", o.stdout);
            assert!(
                o.stderr.contains(
                    r#"stored reasons "ADDRESS_NOT_VERIFIED;PET_CHANGED": "PET_CHANGED" is not a reason code"#
                ),
                "{args:?}: {}",
                o.stderr
            );
        }
        // The other permits' reasons read back as before.
        let v = explain(&env, "P1", AS_OF);
        assert_eq!(
            v["decision"]["reasons"],
            serde_json::json!(["ADDRESS_NOT_VERIFIED"])
        );
    }
);
