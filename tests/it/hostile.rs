//! Hostile surroundings (R11, docs/operations.md "Threat model"): what
//! autosign does with the files, devices, settings, servers and names
//! around it when they are wrong or malicious. For every case: a clear
//! one-line error with the documented exit status, files owner-only from
//! the first byte, personal data and credentials kept out of logs, errors,
//! exports and `status`, and no control character reaching a terminal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;

use crate::helpers::*;

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// One line on stderr, no panic.
fn one_line_error(o: &Out) {
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{o:?}");
    assert!(lines[0].starts_with("autosign: error: "), "{o:?}");
    assert!(!o.stderr.contains("panicked"), "{o:?}");
}

/// Two permits due on 2026-11-30 with no evidence: VISIT_CENTER for each
/// on 2026-11-27, with these names and phones.
fn two_due_permits(env: &Env, holders: &[(&str, &str, &str)]) {
    let mut csv = format!("{PERMITS_HEADER}\n");
    for (i, (no, name, phone)) in holders.iter().enumerate() {
        csv.push_str(&format!(
            "{no},{},{name},{phone},,310115,310115004,上海市浦东新区潍坊路1号,2026-11-30,,91310115MA1H7GPJ49,paying,single\n",
            id("19900101", i as u32 + 1)
        ));
    }
    let f = env.write("in/permits.csv", csv);
    env.import("permits", &f);
    env.ok(&["run", "--as-of", "2026-11-27", "--allow-future"]);
}

// ------------------------------------------------------- item: the WAL

#[cfg(unix)]
#[test]
fn a_new_sqlite_database_and_its_wal_and_shm_are_owner_only_after_the_first_import() {
    let env = Env::new(Backend::Sqlite);
    env.generate(20000, 3, "2026-11-27", "gen");
    let file = env.path("gen/permits/permits.csv").display().to_string();
    // The first import leaves its ID numbers in the WAL while it runs;
    // whether the file outlives the process depends on the last close's
    // checkpoint, so its mode is read while the import is under way.
    let wal = env.path("data/autosign.sqlite-wal");
    let mut child = env.spawn(&["import", "permits", &file], &[]);
    let mut wal_mode = None;
    loop {
        if let Ok(m) = std::fs::metadata(&wal) {
            wal_mode = Some(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
            break;
        }
        if child.try_wait().expect("import").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let out = finish(child);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        wal_mode,
        Some(0o600),
        "the WAL, seen while the first import ran"
    );
    let data = env.path("data");
    for e in std::fs::read_dir(&data).expect("data dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
}

// ------------------------------------------ item: the gateway's answers

/// An SMS gateway that refuses every request with HTTP 400, echoing the
/// phone in other forms, the token it was sent and the text.
struct EchoGateway {
    port: u16,
}

impl EchoGateway {
    fn start() -> EchoGateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    let (mut len, mut auth) = (0usize, String::new());
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if k.eq_ignore_ascii_case("authorization") {
                                auth = v.trim().to_string();
                            }
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                    let text = json["text"].as_str().unwrap_or_default();
                    let answer = format!(
                        "number +86-155-4937-8348 (155 4937 8348, 8615549378348) refused; \
                         credential {auth} not valid; text: {text}\u{1b}[2J"
                    );
                    let _ = write!(
                        conn,
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                });
            }
        });
        EchoGateway { port }
    }
}

dbtest!(
    a_gateway_answer_loses_phone_numbers_in_every_form_the_token_and_the_name_everywhere,
    |mut env| {
        two_due_permits(&env, &[("SH1", "欧阳娜娜", "15549378348")]);
        let gw = EchoGateway::start();
        env.set("NO_PROXY", "127.0.0.1,localhost");
        env.set(
            "AUTOSIGN_SMS__URL",
            &format!("http://127.0.0.1:{}/sms", gw.port),
        );
        env.set("AUTOSIGN_SMS__AUTH_TOKEN", "Bearer tok-SECRET-4242");
        env.set("AUTOSIGN_DELIVERY__SMS_PER_SECOND", "0");
        let tomorrow_10h = (chrono::Utc::now() + chrono::Duration::days(1))
            .date_naive()
            .and_hms_opt(2, 0, 0)
            .expect("time")
            .and_utc()
            .to_rfc3339();
        let deliver = env.cmd(&["deliver", "--now", &tomorrow_10h]);
        assert_eq!(deliver.code, 0, "{deliver:?}");
        let export = env.notifications("2026-11-27", "2026-11-27");
        let status = env.ok(&["status", "SH1"]);
        let status_json = env.ok(&["status", "SH1", "--json"]);
        assert!(
            status.contains("SMS gateway answered HTTP 400: number 155****8348 (155****8348, 155****8348) refused; credential *** not valid"),
            "{status}"
        );
        let rows = rows(&export);
        let col = rows[0]
            .iter()
            .position(|c| c == "last_error")
            .expect("column");
        let last_error = &rows[1][col];
        assert!(last_error.contains("155****8348"), "{last_error}");
        for (what, text) in [
            ("deliver stderr", &deliver.stderr),
            ("deliver stdout", &deliver.stdout),
            ("last_error", last_error),
            ("status", &status),
            ("status --json", &status_json),
        ] {
            for leak in [
                "4937",
                "15549378348",
                "tok-SECRET-4242",
                "欧阳娜娜",
                "\u{1b}[2J",
            ] {
                assert!(!text.contains(leak), "{what} holds {leak:?}:\n{text}");
            }
        }
    }
);

// --------------------------------------------------- item: rejects path

dbtest!(
    import_refuses_its_input_as_the_rejects_file_and_narrows_an_existing_rejects_file,
    |mut env| {
        let content = format!(
            "{PERMITS_HEADER}\n{}\nSH2,bad-id,张三,,,310115,310115004,addr,2027-06-30,,,paying,single\n",
            permit_row("SH1", &id("19900101", 1), "2027-06-30")
        );
        let input = env.write("in/permits.csv", &content);
        let shown = input.display().to_string();
        // The same file by another name.
        let o = env.cmd(&[
            "import",
            "permits",
            &shown,
            "--rejects",
            "in/../in/permits.csv",
        ]);
        assert_eq!(o.code, 2, "{o:?}");
        one_line_error(&o);
        assert!(o.stderr.contains("is the input file itself"), "{o:?}");
        assert_eq!(env.read("in/permits.csv"), content, "input untouched");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let rejects = env.write("out/rejects.csv", "old\n");
            std::fs::set_permissions(&rejects, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.9");
            let o = env.cmd(&["import", "permits", &shown, "--rejects", "out/rejects.csv"]);
            assert_eq!(o.code, 0, "{o:?}");
            assert_eq!(mode(&rejects), 0o600);
            assert!(env.read("out/rejects.csv").contains("SH2"));
        }
    }
);

// ----------------------------------------------------- item: --out

dbtest!(
    export_refuses_a_symlink_or_a_device_as_out_and_leaves_it_alone,
    |env| {
        std::fs::create_dir_all(env.path("out")).expect("mkdir");
        let target = env.write("out/target.txt", "keep me\n");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, env.path("out/link.csv")).expect("symlink");
        // A special file of the test's own (a pipe) stands for a device
        // such as /dev/full: a regression must not turn a real device into
        // a regular file.
        let fifo = std::process::Command::new("mkfifo")
            .arg(env.path("out/pipe"))
            .status()
            .expect("mkfifo is part of coreutils");
        assert!(fifo.success());
        for out in ["out/pipe", "out/link.csv", "out"] {
            let o = env.cmd(&[
                "export",
                "audit",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-30",
                "--out",
                out,
            ]);
            assert_eq!(o.code, 2, "{out}: {o:?}");
            one_line_error(&o);
            assert!(
                o.stderr.contains("an export replaces a regular file only"),
                "{o:?}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let pipe = std::fs::symlink_metadata(env.path("out/pipe")).expect("pipe");
            assert!(pipe.file_type().is_fifo());
            let link = std::fs::symlink_metadata(env.path("out/link.csv")).expect("link");
            assert!(link.file_type().is_symlink());
        }
        assert_eq!(env.read("out/target.txt"), "keep me\n");
        // A regular file is still replaced.
        env.write("out/audit.csv", "old");
        env.ok(&[
            "export",
            "audit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-30",
            "--out",
            "out/audit.csv",
        ]);
        assert!(env.read("out/audit.csv").starts_with("run_id,"));
    }
);

// ------------------------------------------ item: concurrent first starts

dbtest!(
    processes_started_together_on_a_new_database_all_succeed,
    |env| {
        let children: Vec<_> = (0..16)
            .map(|_| {
                env.spawn(
                    &[
                        "export",
                        "audit",
                        "--from",
                        "2026-11-01",
                        "--to",
                        "2026-11-30",
                        "--out",
                        "-",
                    ],
                    &[],
                )
            })
            .collect();
        for child in children {
            let o = finish(child);
            assert_eq!(o.code, 0, "{o:?}");
            assert_eq!(o.stdout.lines().count(), 1, "{o:?}");
        }
        let versions = env.query("SELECT version FROM _sqlx_migrations ORDER BY version");
        let backend = match env.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        assert_eq!(versions.join(","), migration_versions(backend));
    }
);

// ------------------------------------------------- item: setting ranges

#[test]
fn out_of_range_settings_exit_2_naming_the_key_never_panic() {
    let env = Env::new(Backend::Sqlite);
    for (var, value, key, args) in [
        (
            "AUTOSIGN_RULES__GRACE_DAYS",
            "4294967295",
            "rules.grace_days",
            &["run", "--as-of", "2026-11-27", "--allow-future"][..],
        ),
        (
            "AUTOSIGN_RULES__SI_MAX_LAG_MONTHS",
            "4294967295",
            "rules.si_max_lag_months",
            &["run", "--as-of", "2026-11-27", "--allow-future"][..],
        ),
        (
            "AUTOSIGN_RULES__WINDOW_DAYS",
            "4294967295",
            "rules.window_days",
            &["status", "SH1"][..],
        ),
        (
            "AUTOSIGN_RETENTION__FEED_DAYS",
            "4294967295",
            "retention.feed_days",
            &["purge", "--dry-run"][..],
        ),
        (
            "AUTOSIGN_RETENTION__NOTICE_DAYS",
            "4294967295",
            "retention.notice_days",
            &["purge", "--dry-run"][..],
        ),
        (
            "AUTOSIGN_DELIVERY__POLL_SECS",
            "86400000",
            "delivery.poll_secs",
            &["deliver"][..],
        ),
    ] {
        let o = env
            .command(args)
            .env(var, value)
            .output()
            .expect("run autosign");
        let o = Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        assert_eq!(o.code, 2, "{var}={value}: {o:?}");
        one_line_error(&o);
        assert!(o.stderr.contains(key), "{var}={value}: {o:?}");
    }
}

// ---------------------------------------------------- item: bounded reads

#[test]
fn a_device_is_refused_as_a_feed_a_configuration_or_a_center_table() {
    let env = Env::new(Backend::Sqlite);
    let started = std::time::Instant::now();
    let o = env.cmd(&["import", "permits", "/dev/zero"]);
    assert_eq!(o.code, 3, "{o:?}");
    one_line_error(&o);
    assert!(
        o.stderr
            .contains("/dev/zero: not a regular file (a device)"),
        "{o:?}"
    );
    env.write("in/x.csv", "x");
    let o = env.cmd(&["import", "residence", "in"]);
    assert_eq!(o.code, 3, "a directory: {o:?}");
    let o = env.cmd(&["--config", "/dev/zero", "status", "SH1"]);
    assert_eq!(o.code, 2, "{o:?}");
    one_line_error(&o);
    assert!(o.stderr.contains("/dev/zero: not a regular file"), "{o:?}");
    let o = env
        .command(&["run", "--as-of", "2026-11-27", "--allow-future"])
        .env("AUTOSIGN_NOTICES__SERVICE_CENTERS", "/dev/zero")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("notices.service_centers") && stderr.contains("not a regular file"),
        "{stderr}"
    );
    for (url, ca) in [
        ("AUTOSIGN_SMS__URL", "AUTOSIGN_SMS__CA_FILE"),
        ("AUTOSIGN_EMAIL__HOST", "AUTOSIGN_EMAIL__CA_FILE"),
    ] {
        let host = if url.contains("SMS") {
            "https://127.0.0.1:1/sms"
        } else {
            "127.0.0.1"
        };
        let o = env
            .command(&["deliver"])
            .env(url, host)
            .env("AUTOSIGN_EMAIL__FROM", "noreply@example.gov.cn")
            .env(ca, "/dev/zero")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{ca}: {stderr}");
        let key = ca
            .trim_start_matches("AUTOSIGN_")
            .replace("__", ".")
            .to_lowercase();
        assert!(
            stderr.contains(&key) && stderr.contains("/dev/zero: not a regular file"),
            "{stderr}"
        );
    }
    // Each was refused at once, not after reading gigabytes.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A huge configuration file is refused by its size.
    let big = env.write("big.toml", "#".repeat(2 << 20));
    let o = env.cmd(&["--config", &big.display().to_string(), "status", "SH1"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("larger than"), "{o:?}");
}

// ------------------------------------------ item: an empty SQLite path

#[test]
fn an_sqlite_url_without_a_path_is_refused_not_a_throwaway_database() {
    let env = Env::new(Backend::Sqlite);
    let f = env.write(
        "in/permits.csv",
        format!(
            "{PERMITS_HEADER}\n{}\n",
            permit_row("SH1", &id("19900101", 1), "2027-06-30")
        ),
    );
    for url in ["sqlite://", "sqlite:", "sqlite://:memory:"] {
        let o = env.cmd(&[
            "--database-url",
            url,
            "import",
            "permits",
            &f.display().to_string(),
        ]);
        assert_eq!(o.code, 2, "{url}: {o:?}");
        one_line_error(&o);
        assert!(!o.stdout.contains("imported"), "{url}: {o:?}");
    }
}

// ------------------------------------------- item: rejects in a spreadsheet

dbtest!(
    rejects_cells_a_spreadsheet_would_run_get_the_formula_guard,
    |env| {
        let good = permit_row("SH1", &id("19900101", 1), "2027-06-30");
        let text = format!(
        "{PERMITS_HEADER}\n{good}\n\"=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",bad,张三,,,310115,310115004,addr,2027-06-30,,,paying,single\n=1+2,bad,@x,,,310115,310115004,-3,2027-06-30,,,paying,single\n"
    );
        let f = env.write("in/permits.csv", text);
        let mut env = env;
        env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.9");
        env.ok(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            "out/rejects.csv",
        ]);
        let rejects = rows(&env.read("out/rejects.csv"));
        assert_eq!(rejects.len(), 3, "{rejects:?}");
        assert_eq!(rejects[1][2], "'=HYPERLINK(\"http://x\",\"y\")");
        assert_eq!(rejects[2][2], "'=1+2");
        assert_eq!(rejects[2][4], "'@x");
        assert_eq!(rejects[2][9], "'-3");
        assert_eq!(rejects[1][0], "3", "line numbers stay numbers");
    }
);

// ------------------------------------------------ item: insecure transport

#[test]
fn insecure_transports_to_remote_hosts_are_refused_unless_allowed_and_then_flagged() {
    let env = Env::new(Backend::Sqlite);
    let run = |extra: &[(&str, &str)], args: &[&str]| {
        let o = env
            .command(args)
            .envs(extra.iter().copied())
            .output()
            .expect("run");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    let sms = [
        ("AUTOSIGN_SMS__URL", "http://sms.example.com/send"),
        ("AUTOSIGN_SMS__AUTH_TOKEN", "Bearer t"),
    ];
    let email = [
        ("AUTOSIGN_EMAIL__HOST", "smtp.example.com"),
        ("AUTOSIGN_EMAIL__TLS", "none"),
        ("AUTOSIGN_EMAIL__PORT", "25"),
        ("AUTOSIGN_EMAIL__USERNAME", "u"),
        ("AUTOSIGN_EMAIL__PASSWORD", "p"),
        ("AUTOSIGN_EMAIL__FROM", "noreply@example.gov.cn"),
    ];
    for (vars, key) in [(&sms[..], "sms.url"), (&email[..], "email.tls")] {
        for args in [&["daemon", "--check"][..], &["deliver"][..]] {
            let o = run(vars, args);
            assert_eq!(o.code, 2, "{args:?}: {o:?}");
            one_line_error(&o);
            assert!(
                o.stderr.contains(key) && o.stderr.contains("allow_insecure"),
                "{o:?}"
            );
        }
    }
    // Allowed: started, and flagged by daemon --check.
    let mut allowed: Vec<(&str, &str)> = sms.iter().chain(email.iter()).copied().collect();
    allowed.push(("AUTOSIGN_SMS__ALLOW_INSECURE", "true"));
    allowed.push(("AUTOSIGN_EMAIL__ALLOW_INSECURE", "true"));
    let o = run(&allowed, &["daemon", "--check"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(!o.stdout.contains("configuration: ok"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains("configuration: WARNING: insecure transport allowed"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("warning: sms.allow_insecure = true"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("warning: email.allow_insecure = true"),
        "{}",
        o.stdout
    );
    // Loopback needs no permission.
    let local = [
        ("AUTOSIGN_SMS__URL", "http://127.0.0.1:9/send"),
        ("AUTOSIGN_EMAIL__HOST", "localhost"),
        ("AUTOSIGN_EMAIL__TLS", "none"),
        ("AUTOSIGN_EMAIL__PORT", "2525"),
        ("AUTOSIGN_EMAIL__FROM", "noreply@example.gov.cn"),
    ];
    let o = run(&local, &["daemon", "--check"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("configuration: ok"), "{}", o.stdout);
}

// ------------------------------------------- item: control characters

dbtest!(
    control_characters_in_file_names_and_permit_numbers_never_reach_the_terminal_raw,
    |mut env| {
        let nasty_no = "SH\u{1b}[2J1\u{7}";
        let row = permit_row(nasty_no, &id("19900101", 1), "2026-11-30");
        // The register through the inbox, under a file name with an escape,
        // and a header whose unknown column is logged.
        env.write(
            "inbox/permits/a\u{1b}[7mrev.csv",
            format!("{PERMITS_HEADER},extra\u{1b}[5m\n{row},x\n"),
        );
        env.set("AUTOSIGN_INBOX__DIR", "inbox");
        env.set("AUTOSIGN_LOG__LEVEL", "info");
        let run = env.cmd(&["run", "--as-of", "2026-11-27", "--allow-future"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("a\\u{1b}[7mrev.csv"), "{}", run.stdout);
        assert!(run.stderr.contains("extra\\u{1b}[5m"), "{}", run.stderr);
        let status = env.cmd(&["status", nasty_no]);
        assert_eq!(status.code, 0, "{status:?}");
        assert!(
            status.stdout.contains("permit SH\\u{1b}[2J1\\u{7}"),
            "{}",
            status.stdout
        );
        let refused = env.cmd(&["import", "permits", "missing\u{1b}[2J.csv"]);
        assert_eq!(
            refused.code, 1,
            "a missing file is an I/O error: {refused:?}"
        );
        // Its last line (PostgreSQL may log a notice before it at info).
        assert!(
            refused.stderr.ends_with(
                "autosign: error: cannot read missing\\u{1b}[2J.csv: No such file or directory (os error 2)\n"
            ),
            "{refused:?}"
        );
        for (what, o) in [("run", &run), ("status", &status), ("import", &refused)] {
            // The human log colours its own output (ESC [ … m); nothing
            // from a file name, header or permit number comes through raw.
            for text in [&o.stdout, &o.stderr] {
                for raw in ["\u{1b}[2J", "\u{1b}[5m", "\u{1b}[7m", "\u{7}"] {
                    assert!(!text.contains(raw), "{what}: {raw:?} in {text:?}");
                }
            }
        }
    }
);

// ------------------------------------------------ item: stale temp files

dbtest!(
    an_export_removes_the_temp_files_of_killed_exports_of_the_same_file,
    |env| {
        // A PID far above any in use here, and this test's own (alive).
        let dead = env.write("out/audit.csv.tmp-4194000", "permit_no\nSH1,张三\n");
        let alive_name = format!("out/audit.csv.tmp-{}", std::process::id());
        let alive = env.write(&alive_name, "in progress");
        let other = env.write("out/other.csv.tmp-4194000", "not ours");
        env.ok(&[
            "export",
            "audit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-30",
            "--out",
            "out/audit.csv",
        ]);
        assert!(!dead.exists(), "a dead export's temp file stays");
        assert!(alive.exists(), "a live export's temp file was removed");
        assert!(other.exists(), "another file's temp file was removed");
        assert!(env.read("out/audit.csv").starts_with("run_id,"));
    }
);

// ---------------------------------------- item: names in the message text

dbtest!(
    a_masked_notification_export_shows_only_the_family_name_in_the_message,
    |env| {
        two_due_permits(
            &env,
            &[("SH1", "欧阳娜娜", "13800138000"), ("SH2", "李四", "")],
        );
        let masked = env.ok(&[
            "export",
            "notifications",
            "--from",
            "2026-11-27",
            "--to",
            "2026-11-27",
            "--out",
            "-",
        ]);
        let unmasked = env.notifications("2026-11-27", "2026-11-27");
        assert_ne!(masked, unmasked);
        for name in ["欧阳娜娜", "李四"] {
            assert!(!masked.contains(name), "{masked}");
            assert!(unmasked.contains(name), "{unmasked}");
        }
        assert!(masked.contains("欧***您好"), "{masked}");
        assert!(masked.contains("李*您好"), "{masked}");
    }
);
