//! `autosign daemon` (docs/rules.md, "The daemon's schedule and
//! catch-up"): one run per as_of under a per-second
//! schedule, catch-up of missed dates in order, the catch-up limit, a
//! failing run retried at the next tick, SIGTERM during a run, /readyz and
//! /metrics, start-up configuration errors; and `run --as-of today` in the
//! configured zone (the cron set-up).
//!
//! The daemon's business clock is injected with its hidden `--now` option,
//! so no test waits for 02:00; ticks come from a per-second schedule where
//! a test needs them. Tests wait for the daemon's JSON log lines rather than
//! sleep.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// A daemon started in the background, its stderr (JSON log lines)
/// collected as it comes.
pub(crate) struct Daemon {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How a daemon ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) code: i32,
    pub(crate) stderr: String,
}

impl Daemon {
    /// `autosign daemon --now NOW` with JSON logs at info, the health
    /// endpoint on a free port, and `extra` environment.
    pub(crate) fn start(env: &Env, now: &str, extra: &[(&str, &str)]) -> Daemon {
        let mut vars = vec![
            ("AUTOSIGN_LOG__FORMAT", "json"),
            ("AUTOSIGN_LOG__LEVEL", "info"),
            ("AUTOSIGN_DAEMON__HEALTH_ADDR", "127.0.0.1:0"),
        ];
        vars.extend_from_slice(extra);
        let mut child = env.spawn(&["daemon", "--now", now], &vars);
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        Daemon {
            child: Some(child),
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Log records (JSON lines) so far.
    fn records(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Records whose message is `msg`.
    fn said(&self, msg: &str) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| message(r) == msg)
            .collect()
    }

    /// Waits (up to 60 s; the daemon is usually much faster) until `n`
    /// records with message `msg` have been logged; returns them.
    pub(crate) fn wait_for(&mut self, msg: &str, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let got = self.said(msg);
            if got.len() >= n {
                return got;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the daemon exited ({status}) before logging {msg:?} {n} times:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {msg:?} ×{n}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The health endpoint's address, from the start-up log line.
    fn addr(&mut self) -> String {
        let r = self.wait_for("health endpoint listening (/healthz, /readyz, /metrics)", 1);
        r[0]["fields"]["addr"]
            .as_str()
            .expect("addr field")
            .to_string()
    }

    pub(crate) fn get(&mut self, path: &str) -> (u16, String) {
        http_get(&self.addr(), path)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// SIGTERM, then wait for the exit (it must come within `within`).
    pub(crate) fn stop(mut self, within: Duration) -> Ended {
        self.signal("TERM");
        self.wait(within)
    }

    fn wait(&mut self, within: Duration) -> Ended {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if start.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not exit within {within:?}:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ended {
            code: status.code().unwrap_or(-1),
            stderr: self.lines().join("\n"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn message(r: &serde_json::Value) -> &str {
    r["fields"]["message"].as_str().unwrap_or("")
}

fn field<'a>(r: &'a serde_json::Value, name: &str) -> &'a str {
    r["fields"][name].as_str().unwrap_or("")
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {raw}"));
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The value of one sample line of a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One SQL query on the test's database; the first column as text.
fn sql(env: &Env, query: &'static str) -> Vec<String> {
    if env.backend == Backend::Postgres {
        return env.pg_query(query).into_iter().flatten().collect();
    }
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&env.db_url)
            .await
            .expect("open SQLite");
        let rows = sqlx::query(query)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let out = rows
            .iter()
            .map(|r| {
                r.try_get::<String, _>(0)
                    .or_else(|_| r.try_get::<i64, _>(0).map(|v| v.to_string()))
                    .expect("text or integer")
            })
            .collect();
        let _ = conn.close().await;
        out
    })
}

/// The run ledger: `as_of status` per run, by run id.
fn ledger(env: &Env) -> Vec<String> {
    if env.backend == Backend::Postgres {
        return sql(
            env,
            "SELECT as_of::text || ' ' || status FROM runs ORDER BY run_id",
        );
    }
    sql(
        env,
        "SELECT as_of || ' ' || status FROM runs ORDER BY run_id",
    )
}

fn import_day1(env: &Env) {
    import_day(env, "day1");
}

fn exports(env: &Env) -> (String, String) {
    (
        normalise_timestamps(&env.audit("2000-01-01", "2099-12-31"), TS),
        normalise_timestamps(&env.notifications("2000-01-01", "2099-12-31"), TS),
    )
}

/// The exports of `autosign run` for these dates after day 1's imports,
/// on a fresh SQLite database: what the daemon must have done.
fn reference_day1(dates: &[&str]) -> (String, String) {
    let env = Env::new(Backend::Sqlite);
    import_day1(&env);
    for d in dates {
        env.ok(&["run", "--as-of", d]);
    }
    exports(&env)
}

/// No cycle has two decisions, and every decision has one notice (R8).
fn assert_no_doubles(env: &Env) {
    let (audit, notices) = exports(env);
    let a = rows(&audit);
    let n = rows(&notices);
    assert_eq!(a.len(), n.len(), "one notice per event");
    let mut keys: Vec<_> = a[1..]
        .iter()
        .map(|r| (r[2].clone(), r[6].clone(), r[4].clone()))
        .collect();
    let all = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        all,
        "an event twice for one (permit, cycle, kind)"
    );
}

dbtest!(
    a_per_second_schedule_makes_exactly_one_run_per_as_of,
    |env| {
        import_day1(&env);
        // Three seconds before midnight in Shanghai: the run for 11-01 at
        // start-up, then ticks every second, the 11-02 run once the
        // (injected) clock passes midnight, and ticks with nothing to do.
        let mut d = Daemon::start(
            &env,
            "2026-11-01T23:59:57+08:00",
            &[("AUTOSIGN_DAEMON__SCHEDULE", "* * * * * *")],
        );
        d.wait_for("nightly run completed", 2);
        let idle = d.said("up to date: nothing to run").len();
        d.wait_for("up to date: nothing to run", idle + 2);
        let (status, page) = d.get("/metrics");
        assert_eq!(status, 200);
        let end = d.stop(Duration::from_secs(20));
        assert_eq!(end.code, 0, "{}", end.stderr);

        let runs: Vec<String> = end
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| message(r) == "nightly run completed")
            .map(|r| field(&r, "as_of").to_string())
            .collect();
        assert_eq!(runs, ["2026-11-01", "2026-11-02"], "{}", end.stderr);
        assert_eq!(
            ledger(&env),
            ["2026-11-01 completed", "2026-11-02 completed"]
        );
        assert_eq!(
            sample(&page, "autosign_daemon_runs_total{outcome=\"completed\"}"),
            Some(2.0)
        );
        assert!(
            sample(&page, "autosign_daemon_ticks_total").unwrap_or(0.0) >= 3.0,
            "{page}"
        );
        assert_eq!(exports(&env), reference_day1(&["2026-11-01", "2026-11-02"]));
    }
);

dbtest!(
    after_three_days_down_the_daemon_runs_the_missed_dates_in_order_then_idles,
    |env| {
        import_day1(&env);
        env.ok(&["run", "--as-of", "2026-11-01"]);
        // Started on 11-04 at 10:00, after that day's 02:00 tick: 11-02,
        // 11-03 and 11-04 are due.
        let check = env.ok(&["daemon", "--check", "--now", "2026-11-04T10:00:00+08:00"]);
        assert!(
            check.contains("a start now would run: 2026-11-02, 2026-11-03, 2026-11-04"),
            "{check}"
        );
        assert!(
            check.contains("last completed run: as_of 2026-11-01 (run 1)"),
            "{check}"
        );
        let mut d = Daemon::start(&env, "2026-11-04T10:00:00+08:00", &[]);
        d.wait_for("up to date: nothing to run", 1);
        let (ready, body) = d.get("/readyz");
        let end = d.stop(Duration::from_secs(20));
        assert_eq!(end.code, 0, "{}", end.stderr);

        let records: Vec<serde_json::Value> = end
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let done: Vec<&str> = records
            .iter()
            .filter(|r| message(r) == "nightly run completed")
            .map(|r| field(r, "as_of"))
            .collect();
        assert_eq!(done, ["2026-11-02", "2026-11-03", "2026-11-04"]);
        let caught_up: Vec<&str> = records
            .iter()
            .filter(|r| message(r) == "catching up a missed date")
            .map(|r| field(r, "as_of"))
            .collect();
        assert_eq!(caught_up, ["2026-11-02", "2026-11-03"]);
        // Then idle: nothing after the first "up to date" but the shutdown.
        let idle_at = records
            .iter()
            .position(|r| message(r) == "up to date: nothing to run")
            .expect("idle");
        assert!(
            records[idle_at + 1..]
                .iter()
                .all(|r| !message(r).starts_with("nightly run")),
            "{}",
            end.stderr
        );
        assert_eq!(
            ledger(&env),
            [
                "2026-11-01 completed",
                "2026-11-02 completed",
                "2026-11-03 completed",
                "2026-11-04 completed"
            ]
        );
        assert_eq!((ready, body.lines().next()), (200, Some("ready")), "{body}");
        assert!(body.contains("as_of 2026-11-04"), "{body}");
        assert_eq!(
            exports(&env),
            reference_day1(&["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"])
        );
    }
);

dbtest!(
    more_missed_dates_than_max_catch_up_days_are_refused_with_an_alert,
    |env| {
        import_day1(&env);
        env.ok(&["run", "--as-of", "2026-10-20"]);
        let check = env.ok(&["daemon", "--check", "--now", "2026-11-01T10:00:00+08:00"]);
        assert!(
            check.contains(
                "a start now would refuse to catch up: 12 dates due (through 2026-11-01)"
            ),
            "{check}"
        );
        let mut d = Daemon::start(
            &env,
            "2026-11-01T10:00:00+08:00",
            &[("AUTOSIGN_DAEMON__MAX_CATCH_UP_DAYS", "7")],
        );
        let alert = d.wait_for(
            "12 dates are due since the last completed run, more than daemon.max_catch_up_days: \
             running none of them rather than send stale notices; an operator runs them (or only \
             today) with `autosign run --as-of` (docs/deployment.md)",
            1,
        );
        assert_eq!(alert[0]["level"], "ERROR");
        assert_eq!(field(&alert[0], "alert"), "catch_up_refused");
        let (ready, body) = d.get("/readyz");
        let (_, page) = d.get("/metrics");
        let end = d.stop(Duration::from_secs(20));
        assert_eq!(end.code, 0, "{}", end.stderr);
        assert_eq!(ready, 503, "{body}");
        assert!(body.contains("overdue"), "{body}");
        assert_eq!(
            sample(&page, "autosign_daemon_runs_total{outcome=\"refused\"}"),
            Some(1.0)
        );
        assert_eq!(ledger(&env), ["2026-10-20 completed"], "nothing run");
    }
);

dbtest!(
    a_failed_run_is_an_alert_and_the_next_tick_tries_again,
    |env| {
        // R2a: an inbox file with a missing column is refused (exit-3 class)
        // and stops the run before R3.
        env.write(
            "inbox/permits/01.csv",
            "permit_no,id_number\nSH1,320102198503150019\n",
        );
        let mut d = Daemon::start(
            &env,
            "2026-11-01T10:00:00+08:00",
            &[
                ("AUTOSIGN_DAEMON__SCHEDULE", "* * * * * *"),
                ("AUTOSIGN_INBOX__DIR", "inbox"),
            ],
        );
        let failed = d.wait_for(
            "nightly run failed; the daemon keeps running and tries again at the next tick",
            1,
        );
        assert_eq!(failed[0]["level"], "ERROR");
        assert_eq!(field(&failed[0], "alert"), "run_failed");
        assert_eq!(failed[0]["fields"]["exit_status"], 3);
        assert!(
            field(&failed[0], "error").contains("01.csv"),
            "{}",
            failed[0]
        );
        // The operator puts the right file in and takes the bad one out; a
        // later tick imports it and runs (01.csv, first in name order, keeps
        // failing the run until it is gone).
        std::fs::copy(
            fixture("multi_day/day1/permits.csv"),
            env.path("inbox/permits/02.csv"),
        )
        .expect("copy");
        std::fs::remove_file(env.path("inbox/permits/01.csv")).expect("rm");
        let done = d.wait_for("nightly run completed", 1);
        assert_eq!(field(&done[0], "as_of"), "2026-11-01");
        let (_, page) = d.get("/metrics");
        let end = d.stop(Duration::from_secs(20));
        assert_eq!(end.code, 0, "{}", end.stderr);
        assert!(
            sample(&page, "autosign_daemon_runs_total{outcome=\"failed\"}").unwrap_or(0.0) >= 1.0,
            "{page}"
        );
        assert_eq!(
            sample(
                &page,
                "autosign_import_rows_total{feed=\"permits\",result=\"accepted\"}"
            ),
            Some(8.0),
            "{page}"
        );
        assert_eq!(ledger(&env), ["2026-11-01 completed"]);
    }
);

dbtest!(
    readyz_and_metrics_answer_with_the_figures_of_the_last_run,
    |env| {
        import_day1(&env);
        let mut d = Daemon::start(&env, "2026-11-01T10:00:00+08:00", &[]);
        let (status, body) = d.get("/readyz");
        // Probably before the run; either way it answers.
        assert!(status == 200 || status == 503, "{status} {body}");
        d.wait_for("up to date: nothing to run", 1);
        assert_eq!(d.get("/healthz"), (200, "ok\n".to_string()));
        let (status, body) = d.get("/readyz");
        assert_eq!(status, 200, "{body}");
        let migrations = format!("migrations: ok (version {})", latest_migration());
        assert_eq!(
            body.lines().collect::<Vec<_>>()[..4],
            [
                "ready",
                "database: ok",
                migrations.as_str(),
                "brake: ok (no run held)"
            ],
            "{body}"
        );
        assert!(body.contains("last run: as_of 2026-11-01 (run 1"), "{body}");
        let (status, page) = d.get("/metrics");
        assert_eq!(status, 200);
        let end = d.stop(Duration::from_secs(20));
        assert_eq!(end.code, 0, "{}", end.stderr);

        // The figures, against the audit export of the same run (the
        // multi_day scenario's first day: tests/fixtures/multi_day).
        let m = |s: &str| sample(&page, s).unwrap_or_else(|| panic!("no {s}:\n{page}"));
        assert_eq!(m("autosign_daemon_runs_total{outcome=\"completed\"}"), 1.0);
        assert_eq!(m("autosign_run_duration_seconds_count"), 1.0);
        assert_eq!(m("autosign_database_up"), 1.0);
        assert_eq!(m("autosign_runs{status=\"completed\"}"), 1.0);
        assert_eq!(
            m("autosign_last_successful_run_info{as_of=\"2026-11-01\",run_id=\"1\"}"),
            1.0
        );
        // 2026-11-01T00:00:00+08:00
        assert_eq!(
            m("autosign_last_successful_run_as_of_timestamp_seconds"),
            1_793_462_400.0
        );
        assert!(m("autosign_last_successful_run_timestamp_seconds") > 1.7e9);
        assert_eq!(m("autosign_last_run_pending"), 1.0, "SH0001");
        let audit = rows(&env.audit("2026-11-01", "2026-11-01"));
        for kind in ["AUTO_SIGNED", "VISIT_CENTER", "SUSPENDED", "CANCELLED"] {
            let n = audit[1..].iter().filter(|r| r[4] == kind).count();
            assert_eq!(
                m(&format!("autosign_last_run_decisions{{kind=\"{kind}\"}}")),
                n as f64,
                "{kind}"
            );
        }
        for (kind, reason, n) in [
            ("VISIT_CENTER", "ADDRESS_CHANGED", 1.0),
            ("VISIT_CENTER", "SOCIAL_INSURANCE_CHANGED", 1.0),
            ("VISIT_CENTER", "MARITAL_STATUS_CHANGED", 1.0),
        ] {
            assert_eq!(
                m(&format!(
                    "autosign_last_run_decision_reasons{{kind=\"{kind}\",reason=\"{reason}\"}}"
                )),
                n
            );
        }
        let mut by_channel = std::collections::BTreeMap::<(String, String), f64>::new();
        for r in &audit[1..] {
            *by_channel
                .entry((r[15].clone(), r[14].clone()))
                .or_default() += 1.0;
        }
        for ((status, channel), n) in by_channel {
            assert_eq!(
                m(&format!(
                    "autosign_last_run_notices{{status=\"{status}\",channel=\"{channel}\"}}"
                )),
                n
            );
        }
        // No channel is configured: the SMS and e-mail notices wait.
        assert_eq!(
            m("autosign_notices_backlog{status=\"queued\",channel=\"sms\"}"),
            4.0
        );
        assert_eq!(
            m("autosign_notices_backlog{status=\"queued\",channel=\"email\"}"),
            1.0
        );
        assert_eq!(
            m("autosign_import_rows_total{feed=\"permits\",result=\"accepted\"}"),
            8.0
        );
        for feed in ["permits", "residence", "social-insurance", "civil-status"] {
            assert!(
                m(&format!(
                    "autosign_import_rows_total{{feed=\"{feed}\",result=\"accepted\"}}"
                )) > 0.0,
                "{feed}"
            );
            assert_eq!(
                m(&format!(
                    "autosign_import_rows_total{{feed=\"{feed}\",result=\"rejected\"}}"
                )),
                0.0
            );
        }
    }
);

/// Holds SQLite's write lock (`BEGIN IMMEDIATE`) from outside autosign
/// until released: a run then waits inside its transaction's start.
struct SqliteWriter {
    rt: tokio::runtime::Runtime,
    conn: sqlx::SqliteConnection,
}

impl SqliteWriter {
    fn hold(url: &str) -> SqliteWriter {
        use sqlx::Connection;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let conn = rt.block_on(async {
            let mut conn = sqlx::SqliteConnection::connect(url).await.expect("open");
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .expect("write lock");
            conn
        });
        SqliteWriter { rt, conn }
    }

    fn release(mut self) {
        use sqlx::Connection;
        self.rt.block_on(async {
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut self.conn)
                .await
                .expect("rollback");
            let _ = self.conn.close().await;
        });
    }
}

dbtest!(
    sigterm_during_a_run_exits_0_and_the_next_start_completes_it_without_doubles,
    |env| {
        let shutdown_within = Duration::from_secs(10);
        let (now, want) = if env.backend == Backend::Sqlite {
            // SQLite: another writer holds the write lock, so the run is
            // stuck at its first write inside `reconcile::run` when SIGTERM
            // comes; after the grace period it is dropped, having written
            // nothing.
            import_day1(&env);
            let writer = SqliteWriter::hold(&env.db_url);
            let mut d = Daemon::start(
                &env,
                "2026-11-01T10:00:00+08:00",
                &[("AUTOSIGN_DAEMON__SHUTDOWN_GRACE_SECS", "1")],
            );
            d.wait_for("nightly run starting", 1);
            std::thread::sleep(Duration::from_millis(300));
            let end = d.stop(shutdown_within);
            writer.release();
            assert_eq!(end.code, 0, "{}", end.stderr);
            assert!(end.stderr.contains("grace period over"), "{}", end.stderr);
            assert!(
                !end.stderr.contains("nightly run completed"),
                "{}",
                end.stderr
            );
            assert_eq!(ledger(&env), Vec::<String>::new(), "rolled back");
            ("2026-11-01T10:00:00+08:00", reference_day1(&["2026-11-01"]))
        } else {
            // PostgreSQL commits the run page by page: SIGTERM once the
            // first page is committed and the second is in flight; with no
            // grace the second page is rolled back, the first stays.
            load_generated(&env, 20000);
            let mut d = Daemon::start(
                &env,
                "2026-11-27T10:00:00+08:00",
                &[
                    ("AUTOSIGN_DAEMON__SHUTDOWN_GRACE_SECS", "0"),
                    ("AUTOSIGN_TEST_PG_PAGE_DELAY_MS", "1500"),
                    // Several pages at 20,000 permits.
                    ("AUTOSIGN_RUN__PAGE_PERMITS", "2000"),
                ],
            );
            d.wait_for("run started", 1);
            let start = Instant::now();
            while sql(&env, "SELECT count(*) FROM events") == ["0"] {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no page committed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let end = d.stop(shutdown_within);
            assert_eq!(end.code, 0, "{}", end.stderr);
            assert!(end.stderr.contains("grace period over"), "{}", end.stderr);
            assert_eq!(ledger(&env), ["2026-11-27 running"], "interrupted mid-run");
            let reference = Env::new(Backend::Sqlite);
            load_generated(&reference, 20000);
            reference.ok(&["run", "--as-of", "2026-11-27"]);
            let want = exports(&reference);
            let events = sql(&env, "SELECT count(*) FROM events")[0]
                .parse::<usize>()
                .expect("count");
            assert!(events < rows(&want.0).len() - 1, "some pages left to do");
            ("2026-11-27T10:00:00+08:00", want)
        };
        // The next start completes the work: every decision and notice
        // once, as an uninterrupted run would have made them.
        let mut d = Daemon::start(&env, now, &[]);
        let done = d.wait_for("nightly run completed", 1);
        if env.backend == Backend::Postgres {
            assert_eq!(done[0]["fields"]["attempt"], 2, "resumed");
        }
        d.wait_for("up to date: nothing to run", 1);
        let end = d.stop(shutdown_within);
        assert_eq!(end.code, 0, "{}", end.stderr);
        assert_no_doubles(&env);
        assert_eq!(exports(&env), want);
    }
);

#[test]
fn a_second_signal_exits_at_once() {
    let env = Env::new(Backend::Sqlite);
    import_day1(&env);
    let writer = SqliteWriter::hold(&env.db_url);
    let mut d = Daemon::start(
        &env,
        "2026-11-01T10:00:00+08:00",
        &[("AUTOSIGN_DAEMON__SHUTDOWN_GRACE_SECS", "600")],
    );
    d.wait_for("nightly run starting", 1);
    d.signal("TERM");
    d.wait_for(
        "shutting down: no new run or send; waiting for the work in flight",
        1,
    );
    d.signal("INT");
    let end = d.wait(Duration::from_secs(10));
    writer.release();
    assert_eq!(end.code, 1, "{}", end.stderr);
    assert!(end.stderr.contains("second signal"), "{}", end.stderr);
    assert_eq!(ledger(&env), Vec::<String>::new());
}

#[test]
fn bad_schedule_or_address_fails_at_start_up_with_exit_2() {
    let mut env = Env::new(Backend::Sqlite);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = listener.local_addr().expect("addr").to_string();
    for (var, value, says) in [
        ("AUTOSIGN_DAEMON__SCHEDULE", "0 2 * * *", "daemon.schedule"),
        ("AUTOSIGN_DAEMON__SCHEDULE", "at two", "daemon.schedule"),
        (
            "AUTOSIGN_DAEMON__HEALTH_ADDR",
            "localhost",
            "daemon.health_addr",
        ),
        (
            "AUTOSIGN_DAEMON__HEALTH_ADDR",
            taken.as_str(),
            "cannot listen",
        ),
    ] {
        env.env.clear();
        env.set(var, value);
        let o = env.cmd(&["daemon"]);
        assert_eq!(o.code, 2, "{value}: {o:?}");
        assert!(o.stderr.contains(says), "{value}: {}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
    }
}

/// Today in `tz` now, and a moment later: a test running across midnight
/// accepts either.
fn todays(tz: chrono_tz::Tz) -> [chrono::NaiveDate; 2] {
    let now = chrono::Utc::now().with_timezone(&tz).date_naive();
    [
        now,
        (chrono::Utc::now() + chrono::Duration::seconds(60))
            .with_timezone(&tz)
            .date_naive(),
    ]
}

#[test]
fn run_as_of_today_and_yesterday_are_dates_in_the_configured_zone() {
    // UTC+14 and UTC-11 are always on different dates: the host's zone
    // cannot be what decides.
    for (zone, arg, back) in [
        ("Pacific/Kiritimati", "today", 0),
        ("Pacific/Pago_Pago", "today", 0),
        ("Pacific/Kiritimati", "yesterday", 1),
        ("Asia/Shanghai", "yesterday", 1),
    ] {
        let mut env = Env::new(Backend::Sqlite);
        env.set("AUTOSIGN_TIMEZONE", zone);
        let tz: chrono_tz::Tz = zone.parse().expect("zone");
        let out = env.ok(&["run", "--as-of", arg]);
        let want: Vec<String> = todays(tz)
            .iter()
            .map(|d| format!("for as_of {}: completed", *d - chrono::Duration::days(back)))
            .collect();
        assert!(
            want.iter().any(|w| out.contains(w.as_str())),
            "{zone} {arg}: {out} (want {want:?})"
        );
    }
}

dbtest!(the_delivery_worker_sends_beside_the_runs, |env| {
    import_day1(&env);
    // An SMS gateway that refuses connections: each send fails
    // transiently and is scheduled for a retry (R8), which shows the worker
    // at work without a gateway. The real clock (notices are due from
    // their real creation time), no quiet hours.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/sms");
    let now = chrono::Utc::now().to_rfc3339();
    let mut d = Daemon::start(
        &env,
        &now,
        &[
            ("AUTOSIGN_SMS__URL", url.as_str()),
            ("AUTOSIGN_DELIVERY__POLL_SECS", "1"),
            ("AUTOSIGN_DELIVERY__QUIET_HOURS_START", "00:00"),
            ("AUTOSIGN_DELIVERY__QUIET_HOURS_END", "00:00"),
        ],
    );
    d.wait_for("nightly run completed", 1);
    let failed = d.wait_for("send failed; retry scheduled", 1);
    assert!(
        failed
            .iter()
            .all(|r| !field(r, "to").contains("1380013800")),
        "recipients masked: {failed:?}"
    );
    // The log line comes just before the outcome is recorded: poll.
    let series = "autosign_notices_backlog{status=\"failed\",channel=\"sms\"}";
    let start = Instant::now();
    loop {
        let (_, page) = d.get("/metrics");
        if sample(&page, series).unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{page}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let end = d.stop(Duration::from_secs(20));
    assert_eq!(end.code, 0, "{}", end.stderr);
});

dbtest!(
    while_a_run_is_held_the_daemon_alerts_runs_nothing_and_is_not_ready,
    |env| {
        import_day1(&env);
        let clock = autosign::clock::Clock::system(chrono_tz::Asia::Shanghai);
        let old = clock.stamp(clock.now() - chrono::Duration::days(10));
        env.query(&format!(
            "UPDATE imports SET imported_at = '{old}' WHERE feed = 'residence'"
        ));
        let o = env.cmd(&["run", "--as-of", "2026-11-01"]);
        assert_eq!(o.code, 4, "held: {}", o.stderr);
        let check = env.ok(&["daemon", "--check", "--now", "2026-11-02T10:00:00+08:00"]);
        assert!(
            check.contains("a start now would run nothing: refusing to run: run 1 for 2026-11-01"),
            "{check}"
        );
        let mut d = Daemon::start(&env, "2026-11-02T10:00:00+08:00", &[]);
        let start = Instant::now();
        let alert = loop {
            if let Some(r) = d
                .records()
                .into_iter()
                .find(|r| field(r, "alert") == "run_held")
            {
                break r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no run_held alert:\n{}",
                d.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            message(&alert).contains("run 1 for 2026-11-01 is held by the safety brake"),
            "{alert}"
        );
        let (status, body) = d.get("/readyz");
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("brake: FAIL (refusing to run: run 1 for 2026-11-01 is held")
                && body.contains("`autosign release 1` or `autosign discard 1`"),
            "{body}"
        );
        let ended = d.stop(Duration::from_secs(30));
        assert_eq!(ended.code, 0, "{}", ended.stderr);
        // Nothing ran: the ledger still has the one held run.
        assert_eq!(ledger(&env), ["2026-11-01 held"]);
    }
);
