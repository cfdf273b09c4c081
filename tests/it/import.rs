//! Feed import (R1, R2, C5, C6, C9–C11, C15) through the real binary.

use crate::helpers::*;

fn permits_file(env: &Env, name: &str, rows: &[String]) -> std::path::PathBuf {
    let mut text = String::from(PERMITS_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    env.write(name, text)
}

/// A permit's (status, valid_until) from `status --json`.
fn permit_state(env: &Env, no: &str) -> (String, String) {
    let out = env.ok(&["status", no, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    (
        v["status"].as_str().expect("status").to_string(),
        v["valid_until"].as_str().expect("vu").to_string(),
    )
}

dbtest!(imports_a_valid_file_and_reports_counts_r2, |env| {
    let f = permits_file(
        &env,
        "p.csv",
        &[
            permit_row("P1", &id("19850315", 1), "2026-12-01"),
            permit_row("P2", &id("19850315", 2), "2027-01-01"),
        ],
    );
    let out = env.import("permits", &f);
    assert!(out.contains("2 rows read, 2 imported, 0 rejected"), "{out}");
    assert_eq!(
        permit_state(&env, "P1"),
        ("active".into(), "2026-12-01".into())
    );
});

dbtest!(
    rejects_each_invalid_field_with_its_line_and_reason_r2,
    |mut env| {
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "1");
        let good = id("19850315", 1);
        let mut bad_check = id("19850315", 2);
        let last = bad_check.pop().expect("char");
        bad_check.push(if last == '0' { '1' } else { '0' });
        let x_in_middle = format!("3201021985X315{}", &good[14..]);
        let mk = |no: &str, f: &dyn Fn(&mut Vec<String>)| {
            let mut cols: Vec<String> = permit_row(no, &good, "2026-12-01")
                .split(',')
                .map(str::to_string)
                .collect();
            f(&mut cols);
            cols.join(",")
        };
        let input = vec![
            mk("OK1", &|_| {}),                                  // line 2
            mk("B1", &|c| c[1] = bad_check.clone()),             // 3
            mk("B2", &|c| c[1] = x_in_middle.clone()),           // 4
            mk("B3", &|c| c[1] = "32010219850230001X".into()),   // 5 birth date 1985-02-30
            mk("B4", &|c| c[8] = "2026-02-30".into()),           // 6
            mk("B5", &|c| c[3] = "12800138000".into()),          // 7
            mk("B6", &|c| c[4] = "no-at-sign.cn".into()),        // 8
            mk("B7", &|c| c[5] = "31011".into()),                // 9
            mk("B8", &|c| c[6] = "310104003".into()),            // 10 street not in district
            mk("B9", &|c| c[11] = "sometimes".into()),           // 11
            mk("B10", &|c| c[2] = "".into()),                    // 12
            mk("B11", &|c| c[12] = "complicated".into()),        // 13
            mk("B12", &|c| c[10] = "91310115MA1H7GPJ4".into()),  // 14 USCC of 17 chars
            "B13,too,few".to_string(),                           // 15
            mk("OK2", &|c| c[10] = "91310000MA1FL0Q58N".into()), // 16 bad USCC check: accepted (C11)
        ];
        let f = permits_file(&env, "bad.csv", &input);
        let rejects = env.path("rejects.csv");
        let out = env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            &rejects.display().to_string(),
        ]);
        assert!(
            out.contains("15 rows read, 2 imported, 13 rejected"),
            "{out}"
        );
        assert!(out.contains("1 warnings"), "C11 warning counted: {out}");
        let got = rows(&env.read("rejects.csv"));
        assert_eq!(
            got[0][..3],
            ["line", "reason", "permit_no"],
            "header: line,reason, then the original header"
        );
        let expect = [
            ("3", "INVALID_ID_NUMBER"),
            ("4", "INVALID_ID_NUMBER"),
            ("5", "INVALID_ID_NUMBER"),
            ("6", "INVALID_VALID_UNTIL"),
            ("7", "INVALID_PHONE"),
            ("8", "INVALID_EMAIL"),
            ("9", "INVALID_DISTRICT_CODE"),
            ("10", "INVALID_STREET_CODE"),
            ("11", "INVALID_SI_STATUS"),
            ("12", "MISSING_NAME"),
            ("13", "INVALID_MARITAL_STATUS"),
            ("14", "INVALID_EMPLOYER_USCC"),
            ("15", "WRONG_FIELD_COUNT"),
        ];
        assert_eq!(got.len(), expect.len() + 1, "{got:?}");
        for (row, (line, code)) in got[1..].iter().zip(expect) {
            assert_eq!(row[0], line, "{row:?}");
            assert!(
                row[1].starts_with(code),
                "line {line}: {} should start with {code}",
                row[1]
            );
        }
        // The original fields follow, unchanged.
        assert_eq!(got[4][2], "B4");
        assert_eq!(got[4][2 + 8], "2026-02-30");
        // Reasons never echo a full ID number.
        assert!(!env
            .read("rejects.csv")
            .lines()
            .any(|l| l.split(',').nth(1).is_some_and(|r| r.contains(&bad_check))));
    }
);

dbtest!(missing_required_column_refuses_the_file_exit_3_r1, |env| {
    let f = env.write("p.csv", "permit_no,id_number,name\nP1,x,y\n");
    let o = env.cmd(&["import", "permits", &f.display().to_string()]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stderr.contains("p.csv") && o.stderr.contains("district_code"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("nothing imported"), "{}", o.stderr);
    assert_eq!(env.cmd(&["status", "P1"]).code, 2, "nothing imported");
});

dbtest!(too_many_rejected_rows_refuse_the_file_c9, |env| {
    // 1 bad of 20 = 5%: not strictly greater than 0.05, imported (C9).
    let mut rows: Vec<String> = (1..=19)
        .map(|i| permit_row(&format!("P{i}"), &id("19850315", i), "2026-12-01"))
        .collect();
    rows.push(permit_row("BAD", "123", "2026-12-01"));
    let f = permits_file(&env, "ok.csv", &rows);
    assert!(env
        .import("permits", &f)
        .contains("20 rows read, 19 imported, 1 rejected"));
    // 2 bad of 20 = 10%: refused, nothing imported, exit 3.
    rows[0] = permit_row("BAD2", "456", "2026-12-01");
    rows[1] = permit_row("NEW", &id("19850315", 99), "2026-12-01");
    let f = permits_file(&env, "bad.csv", &rows);
    let o = env.cmd(&["import", "permits", &f.display().to_string()]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("2 of 20 rows rejected"), "{}", o.stderr);
    assert_eq!(
        env.cmd(&["status", "NEW"]).code,
        2,
        "nothing of the refused file was imported"
    );
});

dbtest!(reimporting_the_same_content_is_a_no_op_r2, |env| {
    let f = permits_file(
        &env,
        "p.csv",
        &[permit_row("P1", &id("19850315", 1), "2026-12-01")],
    );
    env.import("permits", &f);
    let copy = env.write("copy.csv", std::fs::read(&f).expect("read"));
    let out = env.import("permits", &copy);
    assert!(out.contains("already imported"), "{out}");
});

dbtest!(
    later_rows_replace_by_key_and_valid_until_never_moves_back_r2_c6,
    |mut env| {
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.5");
        let idn = id("19850315", 1);
        let f = permits_file(
            &env,
            "a.csv",
            &[
                permit_row("P1", &idn, "2026-12-01"),
                permit_row("P2", &id("19850315", 2), "2026-12-01"),
            ],
        );
        env.import("permits", &f);
        // Same key twice in one file: the later line wins, with a warning; the
        // backwards check compares with the stored value only (C6).
        let f = permits_file(
            &env,
            "b.csv",
            &[
                permit_row("P1", &idn, "2027-06-01"),
                permit_row("P1", &idn, "2027-01-01"),
                permit_row("P2", &id("19850315", 2), "2026-11-01"),
            ],
        );
        let out = env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            "rj.csv",
        ]);
        assert!(out.contains("3 rows read, 2 imported, 1 rejected"), "{out}");
        assert!(out.contains("warnings"), "duplicate key warned: {out}");
        assert_eq!(permit_state(&env, "P1").1, "2027-01-01", "later line wins");
        assert_eq!(
            permit_state(&env, "P2").1,
            "2026-12-01",
            "backwards row rejected"
        );
        let rj = rows(&env.read("rj.csv"));
        assert_eq!(
            (rj[1][0].as_str(), &rj[1][1][..21]),
            ("4", "VALID_UNTIL_BACKWARDS")
        );
    }
);

dbtest!(
    later_valid_until_restores_a_suspended_permit_and_cancelled_takes_contacts_only_c5,
    |env| {
        let mut a = permit_row("P1", &id("19850315", 1), "2026-10-01");
        a = a.replace(",2026-10-01,,", ",2026-10-01,suspended,");
        let mut c = permit_row("P2", &id("19850315", 2), "2026-10-01");
        c = c.replace(",2026-10-01,,", ",2026-10-01,cancelled,");
        env.import("permits", &permits_file(&env, "a.csv", &[a, c]));
        assert_eq!(permit_state(&env, "P1").0, "suspended");
        // Same valid_until and status active: the stored status stays (C5).
        env.import(
            "permits",
            &permits_file(
                &env,
                "b.csv",
                &[permit_row("P1", &id("19850315", 1), "2026-10-01")],
            ),
        );
        assert_eq!(permit_state(&env, "P1").0, "suspended");
        // A later valid_until: endorsed at a center, active again.
        let c2 = permit_row("P2", &id("19850315", 2), "2027-10-01").replace("张三", "李四");
        env.import(
            "permits",
            &permits_file(
                &env,
                "c.csv",
                &[permit_row("P1", &id("19850315", 1), "2027-10-01"), c2],
            ),
        );
        assert_eq!(
            permit_state(&env, "P1"),
            ("active".into(), "2027-10-01".into())
        );
        // Cancelled: contact fields only; valid_until ignored, not rejected (C15).
        assert_eq!(
            permit_state(&env, "P2"),
            ("cancelled".into(), "2026-10-01".into())
        );
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["status", "P2", "--json"])).expect("json");
        assert_eq!(v["name"], "李*", "name updated (masked in status)");
    }
);

dbtest!(
    gb18030_needs_the_flag_and_a_refused_file_is_not_remembered_c9,
    |env| {
        let text = format!(
            "{PERMITS_HEADER}\n{}\n",
            permit_row("P1", &id("19850315", 1), "2026-12-01")
        );
        let (bytes, _, _) = encoding_rs::GB18030.encode(&text);
        let f = env.write("gbk.csv", &bytes[..]);
        let o = env.cmd(&["import", "permits", &f.display().to_string()]);
        assert_eq!(o.code, 3, "{o:?}");
        assert!(
            o.stderr.contains("line 2") && o.stderr.contains("gb18030"),
            "{}",
            o.stderr
        );
        let out = env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--encoding",
            "gb18030",
        ]);
        assert!(out.contains("1 imported"), "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["status", "P1", "--json"])).expect("json");
        assert_eq!(v["name"], "张*", "decoded, not mojibake");
    }
);

dbtest!(
    bom_crlf_quotes_and_blank_lines_are_handled_r1_c9,
    |mut env| {
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.5");
        let row1 = permit_row("P1", &id("19850315", 1), "2026-12-01").replace(
            "上海市浦东新区潍坊路1号",
            "\"上海市浦东新区,潍坊路1号\r\n2楼\"",
        );
        let text = format!(
            "\u{feff}{PERMITS_HEADER},extra_col\r\n{row1},x\r\n\r\n   \r\n{},y\r\n",
            permit_row("P2", "bad", "2026-12-01")
        );
        let f = env.write("p.csv", text);
        let out = env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            "rj.csv",
        ]);
        // Blank lines are skipped and not counted (C9): 2 data rows.
        assert!(out.contains("2 rows read, 1 imported, 1 rejected"), "{out}");
        // The rejected row's line is its physical line: header 1, P1 on 2–3,
        // blank 4 and 5, P2 on 6.
        let rj = rows(&env.read("rj.csv"));
        assert_eq!(rj[1][0], "6", "{rj:?}");
    }
);

dbtest!(
    header_only_imports_nothing_and_empty_file_is_refused_c15,
    |env| {
        let f = env.write("h.csv", format!("{PERMITS_HEADER}\n"));
        assert!(env
            .import("permits", &f)
            .contains("0 rows read, 0 imported"));
        let f = env.write("e.csv", "");
        let o = env.cmd(&["import", "permits", &f.display().to_string()]);
        assert_eq!(o.code, 3, "{o:?}");
        assert!(
            o.stderr.contains("e.csv") && o.stderr.contains("no header"),
            "{}",
            o.stderr
        );
    }
);

dbtest!(feed_rows_validate_and_replace_by_key_r2, |env| {
    let a = id("19850315", 1);
    let f = env.write(
        "si.csv",
        format!(
            "ID_Number, month ,status,employer_uscc\n{a},2026-10,paid,91310115MA1H7GPJ49\n{a},202610,欠缴,\n{a},2026-13,paid,91310115MA1H7GPJ49\n{a},2026-9,paid,\n"
        ),
    );
    let o = env.cmd(&[
        "import",
        "social-insurance",
        &f.display().to_string(),
        "--rejects",
        "rj.csv",
    ]);
    // 2 of 4 rejected: refused (50% > 5%).
    assert_eq!(o.code, 3, "{o:?}");
    let rj = rows(&env.read("rj.csv"));
    assert!(rj[1][1].starts_with("INVALID_MONTH"), "{rj:?}");
    assert!(rj[2][1].starts_with("MISSING_EMPLOYER_USCC"), "{rj:?}");
    let f = env.write(
        "res.csv",
        format!("id_number,visited_on,result\n{a},2026/11/3,一致\n{a},20261103,不一致\n"),
    );
    let out = env.import("residence", &f);
    assert!(
        out.contains("2 imported") && out.contains("1 warnings"),
        "same key twice warned: {out}"
    );
    let f = env.write("civ.csv", format!("id_number,marital_status\n{a},丧偶\n"));
    assert!(env.import("civil-status", &f).contains("1 imported"));
});

dbtest!(a_nul_byte_rejects_the_row_on_every_backend_r2, |mut env| {
    env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.5");
    let a = id("19850315", 1);
    let b = id("19850315", 2);
    let f = env.write(
        "civ.csv",
        format!("id_number,marital_status\n{a},single\n{b},mar\0ried\n"),
    );
    let out = env.ok(&[
        "import",
        "civil-status",
        &f.display().to_string(),
        "--rejects",
        "rj.csv",
    ]);
    assert!(out.contains("2 rows read, 1 imported, 1 rejected"), "{out}");
    let rj = rows(&env.read("rj.csv"));
    assert_eq!(rj[1][0], "3");
    assert!(
        rj[1][1].starts_with("NUL_CHARACTER: field marital_status"),
        "{rj:?}"
    );
});

dbtest!(
    a_permit_repeated_across_batches_compares_with_the_value_stored_before_the_file_c6,
    |mut env| {
        // Two-row batches: every repeat below is in a later batch than the
        // line it repeats. The rows are sorted by key across batches before
        // they are decided; both backends must warn, reject and keep the
        // same rows (R2, C6).
        env.set("AUTOSIGN_IMPORT__BATCH_ROWS", "2");
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.5");
        let ids: Vec<String> = (1..=4).map(|i| id("19850315", i)).collect();
        // Initial load: P1 again two batches later, with an earlier date (no
        // stored value to go backwards from): the later line wins.
        let f = permits_file(
            &env,
            "a.csv",
            &[
                permit_row("P1", &ids[0], "2026-12-01"),
                permit_row("P2", &ids[1], "2026-12-01"),
                permit_row("P3", &ids[2], "2026-12-01"),
                permit_row("P1", &ids[0], "2026-11-01"),
            ],
        );
        let out = env.import("permits", &f);
        assert!(
            out.contains("4 rows read, 4 imported, 0 rejected") && out.contains("1 warnings"),
            "{out}"
        );
        assert_eq!(permit_state(&env, "P1").1, "2026-11-01", "later line wins");
        // An update: P2 repeated with a date before its first line's but
        // after the stored one (accepted: C6 compares with the stored
        // value); P3 repeated going back before the stored value (rejected).
        let f = permits_file(
            &env,
            "b.csv",
            &[
                permit_row("P2", &ids[1], "2027-06-01"),
                permit_row("P3", &ids[2], "2027-06-01"),
                permit_row("P4", &ids[3], "2026-12-01"),
                permit_row("P2", &ids[1], "2027-01-01"),
                permit_row("P3", &ids[2], "2026-10-01"),
            ],
        );
        let out = env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            "rj.csv",
        ]);
        assert!(
            out.contains("5 rows read, 4 imported, 1 rejected") && out.contains("1 warnings"),
            "{out}"
        );
        assert_eq!(permit_state(&env, "P2").1, "2027-01-01");
        assert_eq!(permit_state(&env, "P3").1, "2027-06-01");
        let rj = rows(&env.read("rj.csv"));
        assert_eq!(rj[1][0], "6", "{rj:?}");
        assert!(
            rj[1][1].starts_with("VALID_UNTIL_BACKWARDS: valid_until 2026-10-01 is earlier than the stored 2026-12-01"),
            "{rj:?}"
        );
    }
);

dbtest!(
    rejects_are_written_in_line_order_whatever_order_the_keys_come_in_r2,
    |mut env| {
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.9");
        let ids: Vec<String> = (1..=3).map(|i| id("19850315", i)).collect();
        let f = permits_file(
            &env,
            "a.csv",
            &[
                permit_row("P1", &ids[0], "2027-01-01"),
                permit_row("P2", &ids[1], "2027-01-01"),
            ],
        );
        env.import("permits", &f);
        // Keys in descending order; rejects of the row parser (bad ID
        // numbers) and of the register (VALID_UNTIL_BACKWARDS) alternate.
        let f = permits_file(
            &env,
            "b.csv",
            &[
                permit_row("Z9", "110101198503150011", "2027-01-01"),
                permit_row("P2", &ids[1], "2026-01-01"),
                permit_row("M5", "110101198503150012", "2027-01-01"),
                permit_row("P1", &ids[0], "2026-01-01"),
                permit_row("A0", &ids[2], "2027-03-01"),
            ],
        );
        let out = env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            "rj.csv",
        ]);
        assert!(out.contains("5 rows read, 1 imported, 4 rejected"), "{out}");
        let rj = rows(&env.read("rj.csv"));
        let got: Vec<(&str, &str, &str)> = rj[1..]
            .iter()
            .map(|r| {
                (
                    r[0].as_str(),
                    r[1].split(':').next().unwrap_or(""),
                    r[2].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("2", "INVALID_ID_NUMBER", "Z9"),
                ("3", "VALID_UNTIL_BACKWARDS", "P2"),
                ("4", "INVALID_ID_NUMBER", "M5"),
                ("5", "VALID_UNTIL_BACKWARDS", "P1"),
            ],
            "{rj:?}"
        );
        assert_eq!(permit_state(&env, "A0").1, "2027-03-01");
    }
);

dbtest!(
    a_key_repeated_in_a_later_batch_is_warned_with_the_latest_earlier_line_of_this_file_r2,
    |mut env| {
        // Two-row batches: each repeat below is in a later batch than the
        // line it repeats, so the import's Bloom filter suspects it and the
        // rows written confirm it. Twice: into an empty table (on
        // PostgreSQL the initial load, confirmed once the file is read) and
        // into the same keys loaded (confirmed by key before each batch),
        // where only this file's rows count as earlier.
        env.set("AUTOSIGN_IMPORT__BATCH_ROWS", "2");
        let (a, b, c, d) = (
            id("19850315", 1),
            id("19850315", 2),
            id("19850315", 3),
            id("19850315", 4),
        );
        for (name, last) in [("r1.csv", "consistent"), ("r2.csv", "changed")] {
            // Lines 2-3, 4-5, 6-7: a repeats at 5 (of 2) and at 7 (of 5).
            let f = env.write(
                name,
                format!(
                    "id_number,visited_on,result\n{a},2026-11-01,consistent\n\
                     {b},2026-11-01,consistent\n{c},2026-11-01,consistent\n\
                     {a},2026-11-01,changed\n{d},2026-11-01,consistent\n{a},2026-11-01,{last}\n"
                ),
            );
            let o = env.cmd(&["import", "residence", &f.display().to_string()]);
            assert_eq!(o.code, 0, "{o:?}");
            assert!(o.stdout.contains("2 warnings"), "{}", o.stdout);
            let warned: Vec<&str> = o
                .stderr
                .lines()
                .filter(|l| l.contains("same key as line"))
                .collect();
            assert_eq!(warned.len(), 2, "{}", o.stderr);
            assert!(
                warned[0].contains("line=5") && warned[0].contains("same key as line 2"),
                "{warned:?}"
            );
            assert!(
                warned[1].contains("line=7") && warned[1].contains("same key as line 5"),
                "{warned:?}"
            );
        }
    }
);

#[test]
fn a_command_that_wrote_leaves_no_write_ahead_log_behind() {
    // SQLite checkpoints its write-ahead log and removes it when the last
    // connection closes. Each command closes its connections before it
    // ends (`Db::close`); a log left behind would be read whole by the
    // next process to open the database before it could read anything.
    let env = Env::new(Backend::Sqlite);
    let wal = env.path("data/autosign.sqlite-wal");
    load_generated(&env, 300);
    assert!(env.path("data/autosign.sqlite").exists());
    assert!(!wal.exists(), "an import left {}", wal.display());
    env.ok(&["run", "--as-of", "2026-11-27"]);
    assert!(!wal.exists(), "a run left {}", wal.display());
    // The run wrote (otherwise it would prove nothing about a log).
    assert_ne!(env.query("SELECT count(*) FROM events"), ["0"]);
}
