//! PostgreSQL as a backend: its migrations apply by themselves,
//! and the same inputs give byte-identical exports on both backends —
//! timestamps aside (they are the wall clock of each run), ids included.

use crate::helpers::*;

/// A PostgreSQL world, or `None` where [`Env::try_new`] skips.
fn pg() -> Option<Env> {
    Env::try_new(Backend::Postgres)
}

/// Everything a run leaves for people to read: both exports over all
/// dates, with timestamps normalised.
fn exports(env: &Env) -> (String, String) {
    (
        normalise_timestamps(&env.audit("2000-01-01", "2099-12-31"), TS),
        normalise_timestamps(&env.notifications("2000-01-01", "2099-12-31"), TS),
    )
}

fn assert_same(what: &str, sqlite: &str, postgres: &str) {
    if sqlite != postgres {
        let (s, p): (Vec<_>, Vec<_>) = (sqlite.lines().collect(), postgres.lines().collect());
        let first = (0..s.len().max(p.len()))
            .find(|&i| s.get(i) != p.get(i))
            .unwrap_or(0);
        panic!(
            "{what} differs between backends at line {}:\n  sqlite:   {}\n  postgres: {}",
            first + 1,
            s.get(first).copied().unwrap_or("<none>"),
            p.get(first).copied().unwrap_or("<none>")
        );
    }
}

/// Replaces RFC 3339 timestamps in a line of text (`… at
/// 2026-11-27T02:00:00+08:00`) with a placeholder.
fn scrub_timestamps(line: &str) -> String {
    line.split(' ')
        .map(|w| {
            let core = w.trim_end_matches([')', ';', ',']);
            if chrono::DateTime::parse_from_rfc3339(core).is_ok() {
                w.replacen(core, "<timestamp>", 1)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Normalises the timestamp fields of `status --json`.
fn status_json(env: &Env, permit_no: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", permit_no, "--json"])).expect("json");
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k.ends_with("_at") && x.is_string() {
                        *x = "<timestamp>".into();
                    } else {
                        scrub(x);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut v);
    v
}

#[test]
fn migrations_are_applied_by_themselves_once() {
    let Some(env) = pg() else { return };
    // Any command on a fresh database applies them; three instances
    // starting together apply them once (sqlx's migration lock).
    let children: Vec<_> = (0..3)
        .map(|_| env.spawn(&["status", "NOPE"], &[]))
        .collect();
    for c in children {
        let o = finish(c);
        assert_eq!(o.code, 2, "unknown permit, not a migration failure: {o:?}");
    }
    assert_eq!(
        env.pg_query("SELECT string_agg(version::text, ',' ORDER BY version) FROM _sqlx_migrations WHERE success"),
        vec![Some(migration_versions("postgres"))]
    );
    let tables = env.pg_query(
        "SELECT string_agg(table_name::text, ',' ORDER BY table_name) FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'",
    );
    assert_eq!(
        tables,
        vec![Some(
            "civil_status,delivery_marks,event_releases,event_reverts,events,imports,notice_requeues,notifications,permit_details,permit_state,permits,residence,runs,social_insurance"
                .to_string()
        )]
    );
}

#[test]
fn both_backends_have_the_same_secondary_indexes() {
    // One logical schema: the indexes a query may rely on are the same on
    // both (keys and unique constraints are named differently by each
    // backend and are checked by the tests above).
    let Some(pg) = pg() else { return };
    let sqlite = Env::new(Backend::Sqlite);
    for env in [&sqlite, &pg] {
        let o = env.cmd(&["status", "NOPE"]);
        assert_eq!(o.code, 2, "unknown permit, migrations applied: {o:?}");
    }
    let on_sqlite = sqlite.query(
        "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master
         WHERE type = 'index' AND name NOT LIKE 'sqlite\\_autoindex%' ESCAPE '\\' ORDER BY name)",
    );
    let on_pg = pg.pg_query(
        "SELECT string_agg(indexname::text, ',' ORDER BY indexname) FROM pg_indexes
         WHERE schemaname = 'public' AND indexname NOT LIKE '%\\_pkey'
           AND indexname NOT LIKE '%\\_key' AND indexname NOT LIKE '\\_sqlx%'",
    );
    assert_eq!(on_pg, vec![Some(on_sqlite[0].clone())]);
    assert!(on_sqlite[0].contains("events_held_run"), "{on_sqlite:?}");
    // A night's notices are found through its events (migration 14).
    assert!(
        !on_sqlite[0].contains("notifications_as_of"),
        "{on_sqlite:?}"
    );
    // The indexes built differently (docs/architecture.md, "Storage"):
    // the events by night, a B-tree on SQLite and a BRIN index here.
    let method = "SELECT a.amname::text FROM pg_class c JOIN pg_am a ON a.oid = c.relam
                  WHERE c.relname = 'events_as_of'";
    assert_eq!(pg.pg_query(method), vec![Some("brin".to_string())]);
    // And the delivery worker's, partial here (migration 15): it leaves a
    // night's fresh notices out; SQLite's keeps every notice.
    let predicate = "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i
                     JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'notifications_due'";
    let predicate = pg.pg_query(predicate);
    assert!(
        matches!(&predicate[..], [Some(p)] if p.contains("next_attempt_at IS NOT NULL")),
        "{predicate:?}"
    );
    let sql = "SELECT sql FROM sqlite_master WHERE name = 'notifications_due'";
    let on_sqlite = sqlite.query(sql);
    assert!(!on_sqlite[0].contains("WHERE"), "{on_sqlite:?}");
}

#[test]
fn the_multi_day_scenario_exports_byte_identical_on_both_backends() {
    let Some(pg) = pg() else { return };
    let sqlite = Env::new(Backend::Sqlite);
    for env in [&sqlite, &pg] {
        import_day(env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        import_day(env, "day2");
        env.ok(&["run", "--as-of", "2026-11-13"]);
        import_day(env, "day3");
        env.ok(&["run", "--as-of", "2026-12-20", "--allow-future"]);
    }
    let (sa, sn) = exports(&sqlite);
    let (pa, pn) = exports(&pg);
    assert!(sa.lines().count() > 10, "the scenario decides things: {sa}");
    assert_same("audit export", &sa, &pa);
    assert_same("notification export", &sn, &pn);
    // Masked and unmasked alike, and to a file.
    for env in [&sqlite, &pg] {
        env.ok(&[
            "export",
            "audit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-31",
            "--out",
            "unmasked.csv",
            "--unmasked",
        ]);
    }
    assert_same(
        "unmasked audit",
        &normalise_timestamps(&sqlite.read("unmasked.csv"), TS),
        &normalise_timestamps(&pg.read("unmasked.csv"), TS),
    );
    for permit in ["SH0001", "SH0002", "SH0005", "SH0006", "SH0007"] {
        assert_eq!(
            status_json(&sqlite, permit),
            status_json(&pg, permit),
            "status {permit} (R10)"
        );
    }
}

#[test]
fn a_generated_city_sample_over_several_nights_is_identical_on_both_backends() {
    let Some(mut pg) = pg() else { return };
    let mut sqlite = Env::new(Backend::Sqlite);
    // 5000 permits: more than two run pages, every outcome and reason.
    for env in [&mut sqlite, &mut pg] {
        env.generate(5000, 11, "2026-11-27", "inbox");
        env.set("AUTOSIGN_INBOX__DIR", "inbox");
    }
    let mut reports = Vec::new();
    for env in [&sqlite, &pg] {
        let mut out = String::new();
        for as_of in ["2026-11-27", "2026-11-28", "2026-12-05", "2027-01-30"] {
            // Replays dates that may lie in the future (C17).
            out.push_str(&env.ok(&["run", "--as-of", as_of, "--allow-future"]));
        }
        let out: Vec<String> = out.lines().map(scrub_timestamps).collect();
        reports.push(out.join("\n"));
    }
    assert_same("run reports", &reports[0], &reports[1]);
    let (sa, sn) = exports(&sqlite);
    let (pa, pn) = exports(&pg);
    assert!(sa.lines().count() > 1000, "{}", sa.lines().count());
    assert_same("audit export", &sa, &pa);
    assert_same("notification export", &sn, &pn);
}

#[test]
fn awkward_text_survives_copy_and_sorts_bytewise_on_both_backends() {
    let Some(pg) = pg() else { return };
    let sqlite = Env::new(Backend::Sqlite);
    // COPY's text format escapes tabs, backslashes and line breaks; the
    // permit numbers differ only in case and script, so the export order
    // shows the collation (bytewise on both: 'SH…' < 'sh…' < '上…').
    let mut csv = format!("{PERMITS_HEADER}\n");
    let nos = ["sh0002", "SH0002", "上海0001", "Sh0003", "sh0001", "SH0001"];
    for (i, no) in nos.iter().enumerate() {
        let row = permit_row(no, &id("19850315", 100 + i as u32), "2026-11-05");
        csv.push_str(&row.replace(
            "上海市浦东新区潍坊路1号",
            "\"上海市\\浦东新区\t潍坊路\r\n1号 \\N\"",
        ));
        csv.push('\n');
    }
    for env in [&sqlite, &pg] {
        let f = env.write("awkward.csv", &csv);
        let out = env.import("permits", &f);
        assert!(out.contains("6 imported"), "{out}");
        env.ok(&["run", "--as-of", "2026-11-02"]);
    }
    let (sa, sn) = exports(&sqlite);
    let (pa, pn) = exports(&pg);
    assert_same("audit export", &sa, &pa);
    assert_same("notification export", &sn, &pn);
    let order: Vec<String> = rows(&pa)[1..].iter().map(|r| r[2].clone()).collect();
    assert_eq!(
        order,
        ["SH0001", "SH0002", "Sh0003", "sh0001", "sh0002", "上海0001"],
        "bytewise order"
    );
    let s = status_json(&sqlite, "SH0001");
    let p = status_json(&pg, "SH0001");
    assert_eq!(s, p);
}

#[test]
fn rejects_and_refusals_are_the_same_on_both_backends() {
    let Some(pg) = pg() else { return };
    let sqlite = Env::new(Backend::Sqlite);
    let good = permit_row("SH1", &id("19850315", 1), "2026-12-01");
    let backwards = permit_row("SH1", &id("19850315", 1), "2026-11-01");
    // A wrong check character (GB 11643-1999).
    let mut wrong = id("19850315", 2);
    let last = if wrong.ends_with('1') { '2' } else { '1' };
    wrong.pop();
    wrong.push(last);
    let bad_id = permit_row("SH2", &wrong, "2026-12-01");
    for env in [&sqlite, &pg] {
        let f = env.write("p1.csv", format!("{PERMITS_HEADER}\n{good}\n"));
        env.import("permits", &f);
        let mut rows = vec![backwards.clone(), bad_id.clone()];
        for i in 0..40 {
            rows.push(permit_row(
                &format!("SH{}", 100 + i),
                &id("19900101", i),
                "2026-12-01",
            ));
        }
        let f = env.write("p2.csv", format!("{PERMITS_HEADER}\n{}\n", rows.join("\n")));
        let out = env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            "rejects.csv",
        ]);
        assert!(out.contains("2 rejected"), "{out}");
        // Refused: too many rejects, nothing imported (C9), exit 3.
        let f = env.write("p3.csv", format!("{PERMITS_HEADER}\n{bad_id}\n{good}\n"));
        assert_eq!(
            env.cmd(&["import", "permits", &f.display().to_string()])
                .code,
            3
        );
        // And re-importing the same content is a no-op (R2).
        let f = env.path("p2.csv");
        let out = env.import("permits", &f);
        assert!(out.contains("already imported"), "{out}");
    }
    assert_same(
        "rejects file",
        &sqlite.read("rejects.csv"),
        &pg.read("rejects.csv"),
    );
    assert_eq!(status_json(&sqlite, "SH1"), status_json(&pg, "SH1"));
    assert_eq!(
        pg.pg_query("SELECT count(*)::text FROM permits"),
        vec![Some("41".to_string())]
    );
}

#[test]
fn an_unreachable_server_is_a_runtime_error_that_hides_the_password() {
    let Some(env) = pg() else { return };
    let o = env.cmd(&[
        "--database-url",
        "postgres://someone:s3cret@127.0.0.1:1/nowhere",
        "status",
        "X",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("127.0.0.1:1/nowhere"), "{}", o.stderr);
    assert!(!o.stderr.contains("s3cret"), "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "one line: {}", o.stderr);
    // A database that does not exist is not created behind the operator's
    // back (unlike an SQLite file): it is an error too.
    let missing = env.db_url.rsplit_once('/').expect("url").0.to_string() + "/autosign_no_such_db";
    let o = env.cmd(&["--database-url", &missing, "status", "X"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("autosign_no_such_db"), "{}", o.stderr);
}

#[test]
fn an_initial_load_keeps_the_later_line_of_a_key_repeated_across_batches_r2() {
    let Some(mut pg) = pg() else { return };
    let mut sqlite = Env::new(Backend::Sqlite);
    // Batches of 2 rows: each repeated key lands in another batch than its
    // first line, on an empty table (PostgreSQL's initial-load path: COPY
    // straight in, the key built at commit, repeats applied after it).
    let (a, b) = (id("19850315", 1), id("19850315", 2));
    let permits = format!(
        "{PERMITS_HEADER}\n{}\n{}\n{}\n{}\n{}\n",
        permit_row("SH1", &a, "2026-11-20"),
        permit_row("SH2", &b, "2026-11-21"),
        permit_row("SH1", &a, "2026-11-25").replace("张三", "李四"),
        permit_row("SH3", &b, "2026-11-22"),
        permit_row("SH1", &a, "2026-11-24").replace("张三", "王五"),
    );
    let residence = format!(
        "id_number,visited_on,result\n{a},2026-11-01,changed\n{b},2026-11-01,consistent\n\
         {a},2026-11-01,consistent\n{b},2026-11-02,changed\n{b},2026-11-01,changed\n"
    );
    let civil = format!(
        "id_number,marital_status\n{a},married\n{b},single\n{a},single\n{b},married\n{a},divorced\n"
    );
    for env in [&mut sqlite, &mut pg] {
        env.set("AUTOSIGN_IMPORT__BATCH_ROWS", "2");
        for (feed, name, text) in [
            ("permits", "p.csv", &permits),
            ("residence", "r.csv", &residence),
            ("civil-status", "c.csv", &civil),
        ] {
            let f = env.write(name, text);
            let out = env.import(feed, &f);
            assert!(out.contains("0 rejected"), "{out}");
        }
        env.ok(&["run", "--as-of", "2026-11-18"]);
    }
    let p = status_json(&pg, "SH1");
    assert_eq!(p["valid_until"], "2026-11-24", "the later line wins: {p}");
    assert_eq!(p, status_json(&sqlite, "SH1"));
    let (sa, sn) = exports(&sqlite);
    let (pa, pn) = exports(&pg);
    assert!(sa.contains("ADDRESS_CHANGED"), "{sa}");
    assert_same("audit export", &sa, &pa);
    assert_same("notification export", &sn, &pn);
    assert_eq!(
        pg.pg_query(
            "SELECT string_agg(conname::text, ',' ORDER BY conname) FROM pg_constraint
             WHERE contype = 'p' AND connamespace = 'public'::regnamespace AND conname NOT LIKE '\\_sqlx%'"
        ),
        vec![Some(
            "civil_status_pkey,delivery_marks_pkey,event_releases_pkey,event_reverts_pkey,events_pkey,imports_pkey,notice_requeues_pkey,notifications_pkey,permit_details_pkey,permit_state_pkey,residence_pkey,runs_pkey,social_insurance_pkey"
                .to_string()
        )],
        "every key is back after the initial loads"
    );
}
