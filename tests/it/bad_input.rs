//! Hostile input (R1, R2, R11; docs/rules.md, "What refuses a whole file"): the corpus in
//! `tests/fixtures/bad/` (its README says what an operator sees for each
//! file) run through the real binary, plus the huge cases generated here,
//! and header names in Chinese and from the configuration.
//!
//! For every case: the documented exit status; a refusal is one line on
//! stderr naming the file (and the line and field where there is one) and
//! leaves the database as it was; a row-level problem is a rejects line
//! with its physical line and reason code; never a panic.

use crate::helpers::*;

/// What a case must do.
enum Expect {
    /// Exit 3, one line on stderr containing each fragment, nothing imported.
    Refused(&'static [&'static str]),
    /// Exit 0 with this summary; the rejects file holds exactly these
    /// (line, reason prefix) pairs, in order.
    Imported(&'static str, &'static [(&'static str, &'static str)]),
}

struct Case {
    file: &'static str,
    feed: &'static str,
    args: &'static [&'static str],
    expect: Expect,
}

use Expect::{Imported, Refused};

const CASES: &[Case] = &[
    Case {
        file: "empty.csv",
        feed: "permits",
        args: &[],
        expect: Refused(&["empty file: no header row"]),
    },
    Case {
        file: "bom_and_blank_lines_only.csv",
        feed: "permits",
        args: &[],
        expect: Refused(&["empty file: no header row"]),
    },
    Case {
        file: "header_only.csv",
        feed: "residence",
        args: &[],
        expect: Imported("0 rows read, 0 imported, 0 rejected", &[]),
    },
    Case {
        file: "wrong_delimiter.csv",
        feed: "residence",
        args: &[],
        expect: Refused(&["line 1:", "not a header row", "separated by ';'"]),
    },
    Case {
        file: "truncated_last_line.csv",
        feed: "residence",
        args: &[],
        expect: Imported(
            "3 rows read, 2 imported, 1 rejected",
            &[("4", "WRONG_FIELD_COUNT: 2 fields, the header has 3")],
        ),
    },
    Case {
        file: "nul_byte.csv",
        feed: "civil-status",
        args: &[],
        expect: Imported(
            "3 rows read, 2 imported, 1 rejected",
            &[("3", "NUL_CHARACTER: field marital_status")],
        ),
    },
    Case {
        file: "invalid_utf8.csv",
        feed: "permits",
        args: &[],
        expect: Refused(&["line 3: field name: not valid UTF-8"]),
    },
    Case {
        file: "gb18030_as_utf8.csv",
        feed: "permits",
        args: &[],
        expect: Refused(&["line 2: field name: not valid UTF-8", "--encoding gb18030"]),
    },
    Case {
        file: "gb18030_as_utf8.csv",
        feed: "permits",
        args: &["--encoding", "gb18030"],
        expect: Imported("2 rows read, 2 imported, 0 rejected", &[]),
    },
    Case {
        file: "mixed_line_ends.csv",
        feed: "residence",
        args: &[],
        expect: Imported(
            "4 rows read, 3 imported, 1 rejected",
            &[("4", "INVALID_RESULT")],
        ),
    },
    Case {
        file: "unbalanced_quote_at_end.csv",
        feed: "residence",
        args: &[],
        expect: Refused(&["line 3: a quoted field starts here and is never closed"]),
    },
    Case {
        file: "stray_quote.csv",
        feed: "residence",
        args: &[],
        expect: Refused(&["line 3: text after the closing quote of a field opened on line 2"]),
    },
    Case {
        file: "duplicate_headers.csv",
        feed: "civil-status",
        args: &[],
        expect: Refused(&[
            "line 1: header cells 1 (\"id_number\") and 3 (\"身份证号\") both name column id_number",
        ]),
    },
    Case {
        file: "duplicate_unknown_headers.csv",
        feed: "civil-status",
        args: &[],
        expect: Imported("1 rows read, 1 imported, 0 rejected", &[]),
    },
    Case {
        file: "no_header.csv",
        feed: "civil-status",
        args: &[],
        expect: Refused(&["line 1:", "not a header row", "3 cells"]),
    },
    Case {
        file: "missing_column.csv",
        feed: "residence",
        args: &[],
        expect: Refused(&[
            "line 1: missing required column visited_on (or 走访日期/核查日期)",
            "header has: 身份证号, 走访结果",
        ]),
    },
    Case {
        file: "malformed_permits.csv",
        feed: "permits",
        args: &[],
        expect: Imported(
            "18 rows read, 1 imported, 17 rejected",
            &[
                ("3", "INVALID_ID_NUMBER: id_number: check character is 0, expected 9"),
                ("4", "INVALID_ID_NUMBER: id_number: character 11 is not a digit"),
                ("5", "INVALID_ID_NUMBER"),
                ("6", "INVALID_ID_NUMBER: id_number: has 15 characters"),
                ("7", "MISSING_NAME"),
                ("8", "INVALID_PHONE"),
                ("9", "INVALID_EMAIL"),
                ("10", "INVALID_DISTRICT_CODE"),
                ("11", "INVALID_STREET_CODE"),
                ("12", "MISSING_ADDRESS"),
                ("13", "INVALID_VALID_UNTIL: valid_until: 2026-02-30 is not a valid calendar date"),
                ("14", "INVALID_STATUS"),
                ("15", "INVALID_EMPLOYER_USCC"),
                ("16", "INVALID_SI_STATUS"),
                ("17", "INVALID_MARITAL_STATUS"),
                ("18", "WRONG_FIELD_COUNT"),
                ("19", "MISSING_PERMIT_NO"),
            ],
        ),
    },
    Case {
        file: "malformed_residence.csv",
        feed: "residence",
        args: &[],
        expect: Imported(
            "6 rows read, 1 imported, 5 rejected",
            &[
                ("3", "INVALID_VISITED_ON"),
                ("4", "INVALID_VISITED_ON"),
                ("5", "INVALID_RESULT"),
                ("6", "MISSING_ID_NUMBER"),
                ("7", "MISSING_VISITED_ON"),
            ],
        ),
    },
    Case {
        file: "malformed_social_insurance.csv",
        feed: "social-insurance",
        args: &[],
        expect: Imported(
            "6 rows read, 1 imported, 5 rejected",
            &[
                ("3", "INVALID_MONTH"),
                ("4", "INVALID_MONTH"),
                ("5", "INVALID_STATUS"),
                ("6", "MISSING_EMPLOYER_USCC"),
                ("7", "INVALID_EMPLOYER_USCC: employer_uscc: character 18 is not allowed"),
            ],
        ),
    },
    Case {
        file: "malformed_civil_status.csv",
        feed: "civil-status",
        args: &[],
        expect: Imported(
            "4 rows read, 1 imported, 3 rejected",
            &[
                ("3", "INVALID_MARITAL_STATUS"),
                ("4", "INVALID_AS_OF: as_of: 2026-02-29 is not a valid calendar date"),
                ("5", "INVALID_AS_OF"),
            ],
        ),
    },
    Case {
        file: "impossible_dates.csv",
        feed: "residence",
        args: &[],
        expect: Imported(
            "7 rows read, 1 imported, 6 rejected",
            &[
                ("3", "INVALID_VISITED_ON: visited_on: 2026-02-30 is not a valid"),
                ("4", "INVALID_VISITED_ON: visited_on: 2026-02-30 is not a valid"),
                ("5", "INVALID_VISITED_ON: visited_on: 2026-02-30 is not a valid"),
                ("6", "INVALID_VISITED_ON: visited_on: 2025-02-29 is not a valid"),
                ("7", "INVALID_VISITED_ON: visited_on: 2026-04-31 is not a valid"),
                ("8", "INVALID_VISITED_ON"),
            ],
        ),
    },
    Case {
        file: "id_numbers.csv",
        feed: "civil-status",
        args: &[],
        expect: Imported(
            "9 rows read, 2 imported, 7 rejected",
            &[
                ("3", "INVALID_ID_NUMBER: id_number: check character is 0, expected 9"),
                ("4", "INVALID_ID_NUMBER: id_number: character 11 is not a digit"),
                ("5", "INVALID_ID_NUMBER: id_number: character 1 is not a digit"),
                ("7", "INVALID_ID_NUMBER: id_number: birth year in characters 7-10 is before 1900"),
                ("8", "INVALID_ID_NUMBER: id_number: character 1 is not a digit"),
                ("9", "INVALID_ID_NUMBER: id_number: has 15 characters, expected 18"),
                ("10", "INVALID_ID_NUMBER: id_number: birth date in characters 7-14"),
            ],
        ),
    },
    Case {
        file: "formula_values.csv",
        feed: "permits",
        args: &[],
        expect: Imported(
            "3 rows read, 2 imported, 1 rejected",
            &[("4", "INVALID_PHONE")],
        ),
    },
];

/// Rows in a table of the test's database.
fn count(env: &Env, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    match env.backend {
        Backend::Postgres => env.pg_query(&sql)[0]
            .as_deref()
            .expect("a count")
            .parse()
            .expect("a number"),
        Backend::Sqlite => {
            let path = env.db_url.trim_start_matches("sqlite://");
            let conn = rusqlite::Connection::open(path).expect("open sqlite");
            conn.query_row(&sql, [], |r| r.get(0)).expect("count")
        }
    }
}

/// Creates the database (any command migrates it) so that rows can be
/// counted before the first import.
fn migrate(env: &Env) {
    assert_eq!(env.cmd(&["status", "NO-SUCH-PERMIT"]).code, 2);
}

/// Rows of every feed table and of the import ledger: what a refused file
/// must leave unchanged.
fn counts(env: &Env) -> Vec<i64> {
    [
        "permits",
        "residence",
        "social_insurance",
        "civil_status",
        "imports",
    ]
    .iter()
    .map(|t| count(env, t))
    .collect()
}

/// Runs one import and checks the outcome; `file` is the path given.
fn check(env: &Env, name: &str, feed: &str, file: &str, args: &[&str], expect: &Expect) {
    let rejects = format!("rejects/{name}.csv");
    let mut argv = vec!["import", feed, file, "--rejects", &rejects];
    argv.extend_from_slice(args);
    let before = counts(env);
    let o = env.cmd(&argv);
    assert!(
        !o.stderr.contains("panicked") && o.code != 101,
        "{name}: panic\n{}",
        o.stderr
    );
    match expect {
        Refused(fragments) => {
            assert_eq!(o.code, 3, "{name}: exit status\n{o:?}");
            let lines: Vec<&str> = o.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{name}: one line on stderr\n{}", o.stderr);
            let line = lines[0];
            assert!(
                line.starts_with("autosign: error: ") && line.contains(file),
                "{name}: names the file: {line}"
            );
            for f in *fragments {
                assert!(line.contains(f), "{name}: {f:?} not in: {line}");
            }
            assert!(line.ends_with("nothing imported"), "{name}: {line}");
            assert_eq!(counts(env), before, "{name}: nothing imported");
            // A refused file is not remembered (C9): the same refusal again.
            let again = env.cmd(&argv);
            assert_eq!((again.code, again.stderr), (3, o.stderr), "{name}");
        }
        Imported(summary, rejects_expected) => {
            assert_eq!(o.code, 0, "{name}: exit status\n{o:?}");
            assert!(o.stdout.contains(summary), "{name}: {}", o.stdout);
            let got = if rejects_expected.is_empty() {
                Vec::new()
            } else {
                let all = rows(&env.read(&rejects));
                assert_eq!(all[0][..2], ["line", "reason"], "{name}");
                all[1..].to_vec()
            };
            let got: Vec<(&str, &str)> =
                got.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
            assert_eq!(got.len(), rejects_expected.len(), "{name}: rejects {got:?}");
            for ((line, reason), (want_line, want_reason)) in got.iter().zip(*rejects_expected) {
                assert_eq!(line, want_line, "{name}: {reason}");
                assert!(
                    reason.starts_with(want_reason),
                    "{name} line {line}: {reason:?} should start with {want_reason:?}"
                );
            }
        }
    }
}

dbtest!(
    the_bad_input_corpus_gets_its_documented_outcome_r2_c9,
    |mut env| {
        // Row-level cases would be refused whole with the default ratio: a
        // few bad rows in a small file are more than 5% (C9).
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "1");
        migrate(&env);
        for case in CASES {
            let path = fixture(&format!("bad/{}", case.file));
            let name = format!("{}{}", case.file, case.args.join(""));
            check(
                &env,
                &name,
                case.feed,
                &path.display().to_string(),
                case.args,
                &case.expect,
            );
        }
        // Values that look like formulas are data: the permit numbers were
        // imported as written, and the audit export neutralises them (R9).
        let o = env.ok(&["status", "@SUM(1)", "--json"]);
        assert!(o.contains("@SUM(1)"), "{o}");
        env.ok(&["run", "--as-of", "2026-11-27"]);
        let audit = env.audit("2026-11-27", "2026-11-27");
        let permit_nos: Vec<String> = rows(&audit)[1..].iter().map(|r| r[2].clone()).collect();
        assert!(
            permit_nos.contains(&"'=HYPERLINK(\"http://x\")".to_string())
                && permit_nos.contains(&"'@SUM(1)".to_string()),
            "{permit_nos:?}"
        );
        assert!(
            !audit
                .lines()
                .any(|l| l.starts_with('=') || l.contains(",=")),
            "{audit}"
        );
    }
);

dbtest!(
    a_one_megabyte_field_and_ten_thousand_columns_are_handled,
    |mut env| {
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "1");
        migrate(&env);
        let a = id("19850315", 1);
        let b = id("19900101", 2);
        // 1 MB in the address: the row is rejected, the others imported.
        let huge = "路".repeat(1 << 20);
        let f = env.write(
            "huge_field.csv",
            format!(
                "id_number,visited_on,result,address\n{a},2026-11-03,consistent,上海\n{b},2026-11-03,consistent,{huge}\n"
            ),
        );
        check(
            &env,
            "huge_field",
            "residence",
            &f.display().to_string(),
            &[],
            &Imported(
                "2 rows read, 1 imported, 1 rejected",
                &[(
                    "3",
                    "FIELD_TOO_LONG: address has 1048576 characters, at most 1000",
                )],
            ),
        );
        // 1 MB in a header cell: the file is refused without echoing it.
        let f = env.write("huge_header.csv", format!("id_number,{huge}\n{a},single\n"));
        let o = env.cmd(&["import", "civil-status", &f.display().to_string()]);
        assert_eq!(o.code, 3, "{o:?}");
        assert!(
            o.stderr.len() < 1000 && o.stderr.contains("marital_status"),
            "{}",
            &o.stderr[..o.stderr.len().min(2000)]
        );

        // A 17 MiB record (a file without line ends): refused when the
        // bound is passed, not read whole into memory.
        let long = "x".repeat(17 << 20);
        let f = env.write(
            "no_line_ends.csv",
            format!("id_number,marital_status\n{a},{long}"),
        );
        let before = counts(&env);
        let o = env.cmd(&["import", "civil-status", &f.display().to_string()]);
        assert_eq!(o.code, 3, "{}", &o.stderr[..o.stderr.len().min(2000)]);
        assert!(
            o.stderr
                .contains("no_line_ends.csv: line 2: a record longer than 16 MiB")
                && o.stderr.lines().count() == 1,
            "{}",
            &o.stderr[..o.stderr.len().min(2000)]
        );
        assert_eq!(counts(&env), before, "nothing imported");

        // 10,000 columns: the header's extra 9,998 are unknown (a warning
        // naming 20 of them), the rows import; a row with 10,000 fields
        // under a 2-column header is WRONG_FIELD_COUNT.
        let extra: Vec<String> = (3..=10_000).map(|i| format!("c{i}")).collect();
        let values = vec!["v"; extra.len()].join(",");
        let f = env.write(
            "wide.csv",
            format!(
                "id_number,marital_status,{}\n{a},single,{values}\n{b},married,{values}\n",
                extra.join(",")
            ),
        );
        let o = env.cmd(&["import", "civil-status", &f.display().to_string()]);
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.contains("2 rows read, 2 imported"), "{}", o.stdout);
        assert!(
            o.stderr.contains("unknown columns ignored")
                && o.stderr.contains("c22,… 9978 more")
                && o.stderr.len() < 1000,
            "{}",
            &o.stderr[..o.stderr.len().min(2000)]
        );
        let f = env.write(
            "wide_row.csv",
            format!("id_number,marital_status\n{a},divorced\n{b},single,{values}\n"),
        );
        check(
            &env,
            "wide_row",
            "civil-status",
            &f.display().to_string(),
            &[],
            &Imported(
                "2 rows read, 1 imported, 1 rejected",
                &[("3", "WRONG_FIELD_COUNT: 10000 fields, the header has 2")],
            ),
        );
    }
);

dbtest!(
    chinese_header_names_import_out_of_the_box_and_config_adds_aliases_r1,
    |mut env| {
        let a = id("19850315", 1);
        let permits = env.write(
            "permits.csv",
            format!(
                "居住证号码,公民身份号码,姓名,手机号码,电子邮箱,区县代码,街道代码,登记居住地址,签注有效期,状态,单位统一社会信用代码,社保缴费状态,婚姻状况\n\
                 P1,{a},张三,13800138000,,310115,310115004,上海市浦东新区潍坊路1号,2026-12-01,有效,91310115MA1H7GPJ49,缴费,未婚\n"
            ),
        );
        assert!(env
            .import("permits", &permits)
            .contains("1 rows read, 1 imported"));
        let residence = env.write(
            "residence.csv",
            format!("身份证号,走访日期,走访结果,核查地址,核查人员\n{a},2026-11-03,一致,上海,O1\n"),
        );
        assert!(env.import("residence", &residence).contains("1 imported"));
        let si = env.write(
            "si.csv",
            format!(
                " 身份证号码 ,所属期,缴费状态,统一社会信用代码,单位名称\n{a},2026-11,正常,91310115MA1H7GPJ49,某公司\n"
            ),
        );
        assert!(env.import("social-insurance", &si).contains("1 imported"));
        let civil = env.write(
            "civil.csv",
            format!("公民身份号码,婚姻状况,截至日期\n{a},未婚,2026-11-01\n"),
        );
        assert!(env.import("civil-status", &civil).contains("1 imported"));
        // The evidence is used: AUTO_SIGNED (R5, R6).
        env.ok(&["run", "--as-of", "2026-11-27"]);
        assert!(env
            .audit("2026-11-27", "2026-11-27")
            .contains(",AUTO_SIGNED,"));

        // An alias from the configuration (here the environment).
        let f = env.write(
            "visits.csv",
            format!("身份证号,走访时间,核查结果\n{a},2026-11-04,一致\n"),
        );
        let o = env.cmd(&["import", "residence", &f.display().to_string()]);
        assert_eq!(o.code, 3, "not known yet: {o:?}");
        env.set("AUTOSIGN_FEEDS__RESIDENCE__ALIASES__VISITED_ON", "走访时间");
        assert!(env.import("residence", &f).contains("1 imported"));
        // An alias for a column the feed does not have: exit 2, naming it.
        env.set("AUTOSIGN_FEEDS__RESIDENCE__ALIASES__VISIT_DATE", "日期");
        let o = env.cmd(&["import", "residence", &f.display().to_string()]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(
            o.stderr.contains("feeds.residence.aliases.visit_date"),
            "{}",
            o.stderr
        );
    }
);

dbtest!(
    personal_data_never_reaches_logs_or_errors_in_clear,
    |mut env| {
        // Everything logged: JSON lines at trace level, every crate.
        env.set("AUTOSIGN_LOG__FORMAT", "json");
        env.set("AUTOSIGN_LOG__LEVEL", "trace");
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "1");
        // Both channels configured and failing (nothing listens on port 1),
        // so delivery logs its retries; no quiet hours, whatever the time.
        env.set("AUTOSIGN_SMS__URL", "http://127.0.0.1:1/sms");
        env.set("AUTOSIGN_EMAIL__HOST", "127.0.0.1");
        env.set("AUTOSIGN_EMAIL__PORT", "1");
        env.set("AUTOSIGN_EMAIL__TLS", "none");
        env.set("AUTOSIGN_EMAIL__FROM", "noreply@example.gov.cn");
        env.set("AUTOSIGN_DELIVERY__QUIET_HOURS_START", "00:00");
        env.set("AUTOSIGN_DELIVERY__QUIET_HOURS_END", "00:00");

        let (a, b, c) = (id("19850315", 11), id("19900101", 12), id("19751231", 13));
        let mut bad_id = b.clone();
        let last = bad_id.pop().expect("char");
        bad_id.push(if last == '0' { '1' } else { '0' });
        // Values that occur nowhere else, to grep for.
        let clear: Vec<String> = vec![
            a.clone(),
            b.clone(),
            c.clone(),
            bad_id.clone(),
            "欧阳测试".into(),
            "司马隐私".into(),
            "诸葛秘密".into(),
            "13912345678".into(),
            "1591234567".into(),
            "leak.test@example.cn".into(),
            "no-at-sign.example.cn".into(),
            "上海市隐私路999号".into(),
            "上海市秘密路888号".into(),
            "上海市走访路777号".into(),
        ];
        let permits = env.write(
            "permits.csv",
            format!(
                "{PERMITS_HEADER},备注\n\
                 P1,{a},欧阳测试,13912345678,,310115,310115004,上海市隐私路999号,2026-12-01,,91310000MA1FL0Q58N,paying,single,x\n\
                 P2,{c},诸葛秘密,,leak.test@example.cn,310115,310115004,上海市秘密路888号,2026-11-30,,,not_paying,married,x\n\
                 P2,{c},诸葛秘密,,leak.test@example.cn,310115,310115004,上海市秘密路888号,2026-11-30,,,not_paying,married,x\n\
                 P3,{bad_id},司马隐私,13912345678,,310115,310115004,上海市隐私路999号,2026-12-01,,,paying,single,x\n\
                 P4,{b},司马隐私,1591234567,,310115,310115004,上海市隐私路999号,2026-12-01,,,paying,single,x\n\
                 P5,{b},司马隐私,,no-at-sign.example.cn,310115,310115004,上海市隐私路999号,2026-12-01,,,paying,single,x\n"
            ),
        );
        let residence = env.write(
            "residence.csv",
            format!(
                "身份证号,走访日期,走访结果,核查地址\n{a},2026-11-20,不一致,上海市走访路777号\n{bad_id},2026-11-20,一致,上海市走访路777号\n"
            ),
        );
        // A file whose header row is missing, and one in the wrong encoding.
        let headerless = env.write("headerless.csv", format!("{a},欧阳测试,13912345678\n"));
        let text = format!(
            "{PERMITS_HEADER}\nP9,{a},欧阳测试,13912345678,,310115,310115004,上海市隐私路999号,2026-12-01,,,paying,single\n"
        );
        let (gbk, _, _) = encoding_rs::GB18030.encode(&text);
        let gbk = env.write("gbk.csv", &gbk[..]);

        let mut stderr = String::new();
        let mut run = |args: &[&str], want: i32| {
            let o = env.cmd(args);
            assert_eq!(o.code, want, "{args:?}: {o:?}");
            stderr.push_str(&o.stderr);
        };
        let p = |f: &std::path::Path| f.display().to_string();
        run(
            &["import", "permits", &p(&permits), "--rejects", "rj.csv"],
            0,
        );
        run(
            &[
                "import",
                "residence",
                &p(&residence),
                "--rejects",
                "rj2.csv",
            ],
            0,
        );
        run(&["import", "permits", &p(&headerless)], 3);
        run(&["import", "permits", &p(&gbk)], 3);
        run(&["import", "residence", &p(&headerless)], 3);
        run(&["run", "--as-of", "2026-11-27"], 0);
        run(&["deliver"], 0);
        run(&["status", "P1"], 0);
        run(&["status", "P2", "--json"], 0);
        run(&["status", &a], 2);
        run(&["status", "13912345678"], 2);
        run(&["daemon", "--check"], 0);

        assert!(
            stderr.contains("\"level\":\"TRACE\"") || stderr.contains("\"level\":\"DEBUG\""),
            "debug logging was on: {stderr}"
        );
        assert!(
            stderr.contains("that is an ID number; status takes a permit number"),
            "{stderr}"
        );
        // Both channels failed and said so (with the recipient masked).
        assert!(
            stderr.contains("\"channel\":\"sms\",\"to\":\"139****5678\"")
                && stderr.contains("\"channel\":\"email\",\"to\":\"l***@example.cn\""),
            "{stderr}"
        );
        for value in &clear {
            assert!(
                !stderr.contains(value.as_str()),
                "{value} appears in clear on stderr:\n{}",
                stderr
                    .lines()
                    .filter(|l| l.contains(value.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // The rejects files keep the original fields by contract (0600).
        let rj = env.read("rj.csv");
        assert!(rj.contains(&bad_id) && rj.contains("1591234567"), "{rj}");
    }
);
