//! The safety brake and the append-only audit trail (docs/rules.md,
//! "Safety brake", "The audit trail"): a stale feed, a sharp row drop or
//! too many VISIT_CENTER hold the run
//! (exit 4, nothing applied or queued); runs are refused while it is held,
//! imports are not; `release` applies exactly what an unheld run would;
//! `discard` voids the events and lets the date run afresh; events can be
//! neither updated nor deleted.

use crate::helpers::*;

/// Makes a feed's imports look `days` old (the brake measures feed age by
/// the run's clock, here the system clock), stamped as the database stores
/// timestamps in the default zone.
fn age(env: &Env, feed: &str, days: i64) {
    let clock = autosign::clock::Clock::system(chrono_tz::Asia::Shanghai);
    let at = clock.stamp(clock.now() - chrono::Duration::days(days));
    env.query(&format!(
        "UPDATE imports SET imported_at = '{at}' WHERE feed = '{feed}'"
    ));
}

/// The register as (permit_no, valid_until, status) lines.
fn register(env: &Env) -> Vec<String> {
    env.query(
        "SELECT permit_no || ' ' || CAST(valid_until AS TEXT) || ' ' || status FROM permits ORDER BY permit_no",
    )
}

fn audit_rows(env: &Env, from: &str, to: &str) -> Vec<Vec<String>> {
    rows(&env.audit(from, to))
}

/// Column index by header name.
fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

fn assert_held(o: &Out, run_id: u32, as_of: &str, why: &str) {
    assert_eq!(
        o.code, 4,
        "exit 4 for a held run:\n{}\n{}",
        o.stdout, o.stderr
    );
    let alerts: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("autosign: error:"))
        .collect();
    assert_eq!(alerts.len(), 1, "one alert line:\n{}", o.stderr);
    let alert = alerts[0];
    for part in [
        &format!("run {run_id} for {as_of} HELD by the safety brake: {why}"),
        "Nothing was applied to the permits and no notice was queued",
        &format!("`autosign release {run_id}`"),
        &format!("`autosign discard {run_id}`"),
    ] {
        assert!(alert.contains(part), "alert lacks {part:?}:\n{alert}");
    }
    assert!(
        o.stdout.contains(&format!(
            "run {run_id} for as_of {as_of}: HELD by the safety brake"
        )),
        "{}",
        o.stdout
    );
}

dbtest!(
    a_stale_feed_holds_the_run_and_release_gives_the_exports_of_an_unheld_run,
    |env| {
        import_day(&env, "day1");
        age(&env, "residence", 10);
        let before = register(&env);
        let o = env.cmd(&["run", "--as-of", "2026-11-01"]);
        assert_held(&o, 1, "2026-11-01", "feed residence is stale");
        assert!(
            o.stderr
                .contains("10 days old, more than brake.max_age_days.residence = 7"),
            "{}",
            o.stderr
        );
        // Held: recorded, nothing applied, nothing queued.
        assert_eq!(register(&env), before, "no permit changed");
        assert_eq!(env.query("SELECT count(*) FROM notifications"), ["0"]);
        let audit = audit_rows(&env, "2026-11-01", "2026-11-01");
        let (state, channel) = (
            col(&audit[0], "state"),
            col(&audit[0], "notification_channel"),
        );
        assert_eq!(audit.len(), 7, "the run's six events are in the trail");
        for r in &audit[1..] {
            assert_eq!(r[state], "held", "{r:?}");
            assert_eq!(r[channel], "", "no notice while held: {r:?}");
        }

        let out = env.ok(&["release", "1"]);
        assert!(
            out.contains("run 1 for 2026-11-01 released: 6 events applied, 0 not applied"),
            "{out}"
        );
        // The same exports as a world where the brake never tripped.
        let reference = Env::new(env.backend);
        import_day(&reference, "day1");
        reference.ok(&["run", "--as-of", "2026-11-01"]);
        assert_eq!(
            normalise_timestamps(&env.audit("2026-11-01", "2026-11-01"), TS),
            normalise_timestamps(&reference.audit("2026-11-01", "2026-11-01"), TS)
        );
        assert_eq!(
            normalise_timestamps(&env.notifications("2026-11-01", "2026-11-01"), TS),
            normalise_timestamps(&reference.notifications("2026-11-01", "2026-11-01"), TS)
        );
        assert_eq!(register(&env), register(&reference));

        // Released once: a second release or a discard is refused (exit 2).
        for cmd in ["release", "discard"] {
            let o = env.cmd(&[cmd, "1"]);
            assert_eq!(o.code, 2, "{cmd} again: {}", o.stderr);
            assert!(
                o.stderr
                    .contains("run 1 for 2026-11-01 is completed, not held"),
                "{}",
                o.stderr
            );
        }
        // The date is completed now (C8); the next one runs (the residence
        // feed is still stale, so re-import a fresh one first).
        assert!(env
            .ok(&["run", "--as-of", "2026-11-01"])
            .contains("already completed"));
        import_day(&env, "day2");
        env.ok(&["run", "--as-of", "2026-11-13"]);
        // event_releases is append-only too.
        for sql in [
            "UPDATE event_releases SET applied = false",
            "DELETE FROM event_releases",
        ] {
            let err = env.sql(sql).expect_err(sql);
            assert!(err.contains("append-only"), "{sql}: {err}");
        }
    }
);

dbtest!(
    while_a_run_is_held_runs_are_refused_imports_go_on_and_discard_lets_the_date_run_afresh,
    |env| {
        import_day(&env, "day1");
        age(&env, "residence", 10);
        assert_held(
            &env.cmd(&["run", "--as-of", "2026-11-01"]),
            1,
            "2026-11-01",
            "feed residence is stale",
        );
        // Any date is refused while run 1 is held (exit 2, naming it).
        for as_of in ["2026-11-01", "2026-11-02"] {
            let o = env.cmd(&["run", "--as-of", as_of]);
            assert_eq!(o.code, 2, "{as_of}: {}", o.stderr);
            assert!(
                o.stderr
                    .contains("run 1 for 2026-11-01 is held by the safety brake")
                    && o.stderr
                        .contains("`autosign release 1` or `autosign discard 1`"),
                "{}",
                o.stderr
            );
        }
        // Imports are allowed, so the feed can be fixed.
        import_day(&env, "day2");
        let held_events = env.query("SELECT count(*) FROM events");

        let out = env.ok(&["discard", "1"]);
        assert!(
            out.contains("run 1 for 2026-11-01 discarded")
                && out.contains("autosign run --as-of 2026-11-01"),
            "{out}"
        );
        for cmd in ["release", "discard"] {
            let o = env.cmd(&[cmd, "1"]);
            assert_eq!(o.code, 2, "{cmd} of a discarded run: {}", o.stderr);
            assert!(o.stderr.contains("is discarded, not held"), "{}", o.stderr);
        }
        // The same as_of runs again (C8 is about completed runs) and decides
        // afresh; the void events stay in the trail, without notices.
        let out = env.ok(&["run", "--as-of", "2026-11-01"]);
        assert!(
            out.contains("run 2 for as_of 2026-11-01: completed"),
            "{out}"
        );
        let audit = audit_rows(&env, "2026-11-01", "2026-11-01");
        let h = &audit[0];
        let (run, permit, decision, state, channel) = (
            col(h, "run_id"),
            col(h, "permit_no"),
            col(h, "decision"),
            col(h, "state"),
            col(h, "notification_channel"),
        );
        let void: Vec<&Vec<String>> = audit[1..].iter().filter(|r| r[run] == "1").collect();
        let fresh: Vec<&Vec<String>> = audit[1..].iter().filter(|r| r[run] == "2").collect();
        assert_eq!(
            void.len().to_string(),
            held_events[0],
            "every held event stays"
        );
        assert!(void
            .iter()
            .all(|r| r[state] == "void" && r[channel].is_empty()));
        assert!(fresh
            .iter()
            .all(|r| r[state] == "applied" && !r[channel].is_empty()));
        // Each voided decision was taken again by run 2.
        for v in &void {
            assert!(
                fresh
                    .iter()
                    .any(|f| f[permit] == v[permit] && f[decision] == v[decision]),
                "{v:?} decided afresh"
            );
        }
        // One notice per (permit, cycle, kind): run 2's only.
        assert_eq!(
            env.query("SELECT count(*) FROM notifications")[0],
            fresh.len().to_string()
        );
        let status = env.ok(&["status", "SH0002", "--json"]);
        assert!(status.contains("\"run_id\": 2"), "{status}");
    }
);

dbtest!(
    a_sharp_row_drop_since_the_last_run_holds_the_run_once,
    |mut env| {
        env.set("AUTOSIGN_BRAKE__ROW_DROP__MIN_PREVIOUS_ROWS", "3");
        // Residence comes as deltas by default, which are never compared.
        env.set("AUTOSIGN_FEEDS__RESIDENCE__DELIVERY", "snapshot");
        import_day(&env, "day1"); // residence: 3 rows (import 2)
        env.ok(&["run", "--as-of", "2026-11-01"]);
        import_day(&env, "day2"); // residence: 1 row (import 5)
        let o = env.cmd(&["run", "--as-of", "2026-11-13"]);
        assert_held(&o, 2, "2026-11-13", "feed residence dropped");
        assert!(
            o.stderr.contains("has 1 rows against 3 in import 2 (")
                && o.stderr
                    .contains("day1/residence.csv), below brake.row_drop.min_ratio = 0.5"),
            "{}",
            o.stderr
        );
        let out = env.ok(&["release", "2"]);
        assert!(out.contains("run 2 for 2026-11-13 released"), "{out}");
        // Accepted by the released run: the same import does not trip again.
        let out = env.ok(&["run", "--as-of", "2026-11-14"]);
        assert!(
            out.contains("run 3 for as_of 2026-11-14: completed"),
            "{out}"
        );
    }
);

dbtest!(
    checks_turned_off_by_configuration_do_not_hold_the_run,
    |mut env| {
        import_day(&env, "day1");
        age(&env, "residence", 10);
        env.set("AUTOSIGN_BRAKE__MAX_AGE_DAYS__RESIDENCE", "0");
        env.ok(&["run", "--as-of", "2026-11-01"]);
    }
);

dbtest!(events_are_append_only, |env| {
    import_day(&env, "day1");
    env.ok(&["run", "--as-of", "2026-11-01"]);
    let before = env.audit("2026-11-01", "2026-11-01");
    let mut tries = vec![
        "UPDATE events SET kind = 'AUTO_SIGNED'",
        "UPDATE events SET reasons = '' WHERE permit_no = 'SH0006'",
        "DELETE FROM events WHERE permit_no = 'SH0002'",
        "DELETE FROM events",
    ];
    if env.backend == Backend::Postgres {
        tries.push("TRUNCATE events");
    }
    for sql in tries {
        let err = env.sql(sql).expect_err(sql);
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(env.audit("2026-11-01", "2026-11-01"), before);
});

/// A civil-status file that gives every holder of the generated register
/// another marital status: every due permit is VISIT_CENTER
/// (MARITAL_STATUS_CHANGED), the broken-feed night the share check is for.
fn import_broken_civil_status(env: &Env) {
    let register = std::fs::read_to_string(env.path("gen/permits/permits.csv")).expect("register");
    let r = rows(&register);
    let (id, marital) = (col(&r[0], "id_number"), col(&r[0], "marital_status"));
    let mut out = String::from("id_number,marital_status\n");
    for row in &r[1..] {
        let other = if row[marital] == "widowed" {
            "single"
        } else {
            "widowed"
        };
        out.push_str(&format!("{},{other}\n", row[id]));
    }
    let f = env.write("broken/civil_status.csv", out);
    env.import("civil-status", &f);
}

dbtest!(
    too_many_visit_center_holds_the_run_and_release_gives_the_exports_of_an_unheld_run,
    |env| {
        load_generated(&env, 20000);
        import_broken_civil_status(&env);
        let before = register(&env);
        let o = env.cmd(&["run", "--as-of", "2026-11-27"]);
        assert_held(&o, 1, "2026-11-27", "VISIT_CENTER for ");
        assert!(
            o.stderr
                .contains("more than brake.max_visit_center_share = 0.3"),
            "{}",
            o.stderr
        );
        assert_eq!(register(&env), before, "no permit changed");
        assert_eq!(env.query("SELECT count(*) FROM notifications"), ["0"]);
        let audit = audit_rows(&env, "2026-11-27", "2026-11-27");
        let state = col(&audit[0], "state");
        assert!(audit.len() > 1000);
        assert!(audit[1..].iter().all(|r| r[state] == "held"));

        env.ok(&["release", "1"]);
        let mut reference = Env::new(env.backend);
        reference.set("AUTOSIGN_BRAKE__ENABLED", "false");
        load_generated(&reference, 20000);
        import_broken_civil_status(&reference);
        reference.ok(&["run", "--as-of", "2026-11-27"]);
        assert!(
            normalise_timestamps(&env.audit("2026-11-27", "2026-11-27"), TS)
                == normalise_timestamps(&reference.audit("2026-11-27", "2026-11-27"), TS),
            "release gives the unheld run's audit"
        );
        assert!(
            normalise_timestamps(&env.notifications("2026-11-27", "2026-11-27"), TS)
                == normalise_timestamps(&reference.notifications("2026-11-27", "2026-11-27"), TS),
            "release gives the unheld run's notices"
        );
        assert!(register(&env) == register(&reference), "and its permits");
    }
);

dbtest!(
    below_min_due_the_share_never_trips_and_a_discarded_share_trip_reruns_afresh,
    |mut env| {
        load_generated(&env, 20000);
        import_broken_civil_status(&env);
        assert_held(
            &env.cmd(&["run", "--as-of", "2026-11-27"]),
            1,
            "2026-11-27",
            "VISIT_CENTER for ",
        );
        env.ok(&["discard", "1"]);
        // The same night with min_due above its ~1,400 due permits: the
        // share is not checked (small runs and test data sets never trip).
        env.set("AUTOSIGN_BRAKE__MIN_DUE", "5000");
        let out = env.ok(&["run", "--as-of", "2026-11-27"]);
        assert!(
            out.contains("run 2 for as_of 2026-11-27: completed"),
            "{out}"
        );
        let audit = audit_rows(&env, "2026-11-27", "2026-11-27");
        let (run, state) = (col(&audit[0], "run_id"), col(&audit[0], "state"));
        let void = audit[1..].iter().filter(|r| r[run] == "1").count();
        let fresh = audit[1..].iter().filter(|r| r[run] == "2").count();
        assert_eq!(void, fresh, "run 2 decided every voided event afresh");
        assert!(audit[1..]
            .iter()
            .all(|r| r[state] == if r[run] == "1" { "void" } else { "applied" }));
    }
);

dbtest!(
    release_does_not_apply_an_event_whose_permit_changed_since_the_run,
    |env| {
        import_day(&env, "day1");
        age(&env, "residence", 10);
        assert_eq!(env.cmd(&["run", "--as-of", "2026-11-01"]).code, 4);
        // SH0002 (held AUTO_SIGNED for the cycle ending 2026-11-10) is
        // endorsed at a center meanwhile: a later valid_until.
        let f = env.write(
            "later/permits.csv",
            format!(
                "{PERMITS_HEADER}\n{}\n",
                permit_row("SH0002", "320102198503150027", "2027-06-30")
            ),
        );
        env.import("permits", &f);
        let out = env.ok(&["release", "1"]);
        assert!(
            out.contains("5 events applied, 1 not applied")
                && out.contains("    SH0002 AUTO_SIGNED"),
            "{out}"
        );
        let audit = audit_rows(&env, "2026-11-01", "2026-11-01");
        let h = &audit[0];
        let (permit, state, channel) = (
            col(h, "permit_no"),
            col(h, "state"),
            col(h, "notification_channel"),
        );
        for r in &audit[1..] {
            if r[permit] == "SH0002" {
                assert_eq!(
                    (r[state].as_str(), r[channel].as_str()),
                    ("not_applied", "")
                );
            } else {
                assert_eq!(r[state], "applied", "{r:?}");
                assert!(!r[channel].is_empty(), "{r:?}");
            }
        }
        assert_eq!(
            env.query("SELECT CAST(valid_until AS TEXT) FROM permits WHERE permit_no = 'SH0002'"),
            ["2027-06-30"],
            "the newer valid_until stays"
        );
        assert_eq!(
            env.query("SELECT count(*) FROM notifications WHERE permit_no = 'SH0002'"),
            ["0"]
        );
    }
);

dbtest!(
    a_held_run_killed_while_writing_ends_held_and_releases_as_an_unheld_run,
    |env| {
        // Three pages of held events; the process dies after the second,
        // with two pages and the hold committed.
        load_generated(&env, 20000);
        age(&env, "residence", 10);
        let crashed = finish(env.spawn(
            &["run", "--as-of", "2026-11-27"],
            &[
                ("AUTOSIGN_TEST_FAULT", "run.page_written@2"),
                ("AUTOSIGN_RUN__PAGE_PERMITS", "2000"),
            ],
        ));
        assert!(
            crashed
                .stderr
                .contains("fault injected at run.page_written"),
            "{crashed:?}"
        );
        assert_eq!(env.query("SELECT count(*) FROM notifications"), ["0"]);
        let kept = env.query("SELECT count(*) FROM events")[0]
            .parse::<u32>()
            .expect("count");
        // Committed pages of held events, and the run marked held.
        assert!(kept >= 2000, "{kept} events");
        assert_eq!(
            env.query("SELECT count(*) FROM runs WHERE status = 'running' AND brake IS NOT NULL"),
            ["1"]
        );
        // The rerun resumes the run, held, and exits 4.
        assert_held(
            &env.cmd(&["run", "--as-of", "2026-11-27"]),
            1,
            "2026-11-27",
            "feed residence is stale",
        );
        env.ok(&["release", "1"]);
        let mut reference = Env::new(env.backend);
        reference.set("AUTOSIGN_BRAKE__ENABLED", "false");
        load_generated(&reference, 20000);
        reference.ok(&["run", "--as-of", "2026-11-27"]);
        assert!(
            normalise_timestamps(&env.audit("2026-11-27", "2026-11-27"), TS)
                == normalise_timestamps(&reference.audit("2026-11-27", "2026-11-27"), TS),
            "audit as an unheld, uninterrupted run"
        );
        assert!(
            normalise_timestamps(&env.notifications("2026-11-27", "2026-11-27"), TS)
                == normalise_timestamps(&reference.notifications("2026-11-27", "2026-11-27"), TS),
            "notices as an unheld, uninterrupted run"
        );
        assert!(register(&env) == register(&reference), "and its permits");
    }
);

/// Held, void, applied and not-applied events in one trail.
fn every_state(env: &Env) {
    import_day(env, "day1");
    age(env, "residence", 10);
    assert_eq!(env.cmd(&["run", "--as-of", "2026-11-01"]).code, 4);
    env.ok(&["discard", "1"]);
    import_day(env, "day2");
    env.ok(&["run", "--as-of", "2026-11-01"]);
    age(env, "residence", 10);
    assert_eq!(env.cmd(&["run", "--as-of", "2026-11-13"]).code, 4);
    // SH0001 (held VISIT_CENTER for its cycle ending 2026-11-20) is
    // endorsed at a center meanwhile.
    let f = env.write(
        "later/permits.csv",
        format!(
            "{PERMITS_HEADER}\n{}\n",
            permit_row("SH0001", "320102198503150019", "2027-11-20")
        ),
    );
    env.import("permits", &f);
    env.ok(&["release", "3"]);
    age(env, "residence", 10);
    assert_eq!(
        env.cmd(&["run", "--as-of", "2026-12-20", "--allow-future"])
            .code,
        4
    );
}

#[test]
fn held_void_and_not_applied_states_export_byte_identical_on_both_backends() {
    let Some(pg) = Env::try_new(Backend::Postgres) else {
        return;
    };
    let sqlite = Env::new(Backend::Sqlite);
    every_state(&sqlite);
    every_state(&pg);
    let audit = |env: &Env| normalise_timestamps(&env.audit("2026-11-01", "2026-12-31"), TS);
    let notices =
        |env: &Env| normalise_timestamps(&env.notifications("2026-11-01", "2026-12-31"), TS);
    let a = audit(&sqlite);
    for state in [",held", ",void", ",applied", ",not_applied"] {
        assert!(a.contains(state), "{state} in\n{a}");
    }
    assert!(a == audit(&pg), "audit differs:\n{a}\n---\n{}", audit(&pg));
    assert!(notices(&sqlite) == notices(&pg), "notifications differ");
}

/// A database as the release before the brake left it: migration 1 only,
/// with a completed run, its events and notices.
fn database_before_the_brake(env: &Env) {
    use sha2::Digest;
    let dir = if env.backend == Backend::Postgres {
        "postgres"
    } else {
        "sqlite"
    };
    let initial = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("migrations/{dir}/0001_initial.sql")),
    )
    .expect("migration 1");
    let checksum = hex::encode(sha2::Sha384::digest(initial.as_bytes()));
    let (blob, ts, yes) = if env.backend == Backend::Postgres {
        ("BYTEA", "TIMESTAMPTZ NOT NULL DEFAULT now()", "true")
    } else {
        ("BLOB", "TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP", "1")
    };
    let checksum = if env.backend == Backend::Postgres {
        format!("'\\x{checksum}'")
    } else {
        format!("X'{checksum}'")
    };
    let data = format!(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
           installed_on {ts}, success BOOLEAN NOT NULL, checksum {blob} NOT NULL,
           execution_time BIGINT NOT NULL);
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
           VALUES (1, 'initial', {yes}, {checksum}, 0);
         INSERT INTO runs (run_id, as_of, status, attempts, started_at, finished_at, pending)
           VALUES (1, '2026-11-01', 'completed', 1, '2026-11-01T02:00:00+08:00', '2026-11-01T02:00:01+08:00', 0);
         INSERT INTO events (event_id, run_id, as_of, permit_no, id_number, kind, reasons, valid_until, decided_at)
           VALUES (1, 1, '2026-11-01', 'SH0006', '32010219850315006X', 'VISIT_CENTER', 'ADDRESS_CHANGED',
                   '2026-11-25', '2026-11-01T02:00:00+08:00');
         INSERT INTO notifications (notification_id, run_id, as_of, permit_no, cycle_valid_until, kind, channel,
                                    recipient, message, status, created_at)
           VALUES (1, 1, '2026-11-01', 'SH0006', '2026-11-25', 'VISIT_CENTER', 'sms', '13800138006', 'm',
                   'queued', '2026-11-01T02:00:00+08:00');
         INSERT INTO permits (permit_no, id_number, name, phone, email, district_code, street_code, address,
                              valid_until, status, employer_uscc, si_status, marital_status, import_id)
           VALUES ('SH9001', '32010219850315006X', '王五', '13800138009', NULL, '310115', '310115004',
                   '上海市浦东新区潍坊路9号', '2027-06-30', 'suspended', '', 'not_paying', 'married', 1);"
    );
    if env.backend == Backend::Postgres {
        env.sql(&initial).expect("migration 1");
        env.sql(&data).expect("data");
    } else {
        let path = env.db_url.trim_start_matches("sqlite://");
        std::fs::create_dir_all(std::path::Path::new(path).parent().expect("dir")).expect("mkdir");
        let c = rusqlite::Connection::open(path).expect("open");
        c.execute_batch(&initial).expect("migration 1");
        c.execute_batch(&data).expect("data");
    }
}

dbtest!(
    a_database_with_runs_and_events_from_before_migrates_to_the_append_only_schema,
    |env| {
        database_before_the_brake(&env);
        // The first command applies migration 2 over the existing rows.
        let audit = audit_rows(&env, "2026-11-01", "2026-11-01");
        assert_eq!(audit.len(), 2, "{audit:?}");
        let r = &audit[1];
        assert_eq!(
            (
                r[0].as_str(),
                r[2].as_str(),
                r[4].as_str(),
                r[14].as_str(),
                r[17].as_str()
            ),
            ("1", "SH0006", "VISIT_CENTER", "sms", "applied")
        );
        assert_eq!(
            env.query("SELECT CAST(max(version) AS TEXT) FROM _sqlx_migrations WHERE success"),
            [latest_migration().to_string()]
        );
        // The register reads as it did (on SQLite through the view over
        // permit_details and permit_state, migration 5).
        let sh9001 = "SELECT permit_no || ' ' || CAST(valid_until AS TEXT) || ' ' || status || ' ' || name \
                      || ' ' || coalesce(phone, '-') || ' ' || coalesce(email, '-') || ' ' || address \
                      || ' ' || si_status || ' ' || marital_status FROM permits";
        assert_eq!(
            env.query(sh9001),
            ["SH9001 2027-06-30 suspended 王五 13800138009 - 上海市浦东新区潍坊路9号 not_paying married"]
        );
        // The old decision still closes its cycle (C8) and the next run
        // gets the next ids; the trail is append-only from now on.
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-02"]);
        let audit = audit_rows(&env, "2026-11-01", "2026-11-02");
        let sh0006: Vec<_> = audit[1..].iter().filter(|r| r[2] == "SH0006").collect();
        assert_eq!(sh0006.len(), 1, "decided once: {sh0006:?}");
        assert_eq!(
            env.query("SELECT CAST(min(run_id) AS TEXT) FROM events WHERE as_of = '2026-11-02'"),
            ["2"]
        );
        // Event and notice ids go on above the old ones (SQLite rebuilt
        // both tables without AUTOINCREMENT in migration 4: max + 1).
        for (table, id) in [("events", "event_id"), ("notifications", "notification_id")] {
            let first_new = env.query(&format!(
                "SELECT CAST(min({id}) AS TEXT) FROM {table} WHERE as_of = '2026-11-02'"
            ));
            let n: i64 = first_new[0].parse().expect("a new id");
            assert!(n > 1, "{table}: the next id after 1 is {n}");
        }
        assert!(env
            .sql("DELETE FROM events")
            .expect_err("append-only")
            .contains("append-only"));
    }
);
