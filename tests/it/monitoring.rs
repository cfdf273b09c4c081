//! The monitoring kit of `config/monitoring/` (docs/deployment.md,
//! "Monitoring") against the real daemon: every `autosign_…` metric that
//! the alert rules, their unit tests and the Grafana dashboard name has
//! samples in a real scrape of `/metrics` on both backends; promtool's
//! lint finds nothing in that scrape; the dashboard is an importable
//! Grafana dashboard whose queries parse; every alert has a unit test.
//!
//! promtool comes with Debian's `prometheus` package, which `.ci/run`
//! installs. Without it the checks that need it are skipped with a notice,
//! except in CI (`CI` set), where they fail. `.ci/run` itself runs
//! `promtool check rules` and `promtool test rules` on the alert rules.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::daemon::Daemon;
use crate::helpers::*;

fn kit(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/monitoring")
        .join(file)
}

fn read_kit(file: &str) -> String {
    std::fs::read_to_string(kit(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The distinct `autosign_…` metric names in a text (an alert expression,
/// a dashboard, a comment naming a metric), first appearance first.
fn metric_names(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("autosign_") {
        let tail = &rest[at..];
        // Part of a longer word (`xautosign_`) is no metric name.
        let glued = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..len].trim_end_matches('_');
        if !glued && name.len() > "autosign_".len() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
        rest = &tail[len..];
    }
    out
}

/// Names that have at least one sample on a metrics page: each sample's
/// name, and a histogram's family name for its `_bucket`/`_sum`/`_count`.
fn sampled(page: &str) -> BTreeSet<String> {
    let histograms: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    let mut out = BTreeSet::new();
    for l in page
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = l.split(['{', ' ']).next().unwrap_or("");
        out.insert(name.to_string());
        for h in &histograms {
            if name
                .strip_prefix(h)
                .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
            {
                out.insert(h.to_string());
            }
        }
    }
    out
}

/// The value of one series on a metrics page.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` of a daemon that has imported day 1's four feeds and run
/// 2026-11-01 on `env`: its notices stay queued (no channel configured).
fn scrape(env: &Env) -> String {
    import_day(env, "day1");
    let mut d = Daemon::start(env, "2026-11-01T10:00:00+08:00", &[]);
    d.wait_for("up to date: nothing to run", 1);
    let (status, page) = d.get("/metrics");
    let end = d.stop(Duration::from_secs(20));
    assert_eq!(status, 200, "{page}");
    assert_eq!(end.code, 0, "{}", end.stderr);
    page
}

/// Unix time of stored RFC 3339 timestamps (what the exporter reads).
fn unix_times(texts: Vec<String>) -> Vec<i64> {
    texts
        .iter()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap_or_else(|e| panic!("{t:?}: {e}"))
                .timestamp()
        })
        .collect()
}

/// promtool, or `None` (with a notice) outside CI when it is missing.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("CI").is_none_or(|v| v.is_empty()),
        "promtool is missing and CI is set: .ci/run installs Debian's prometheus package"
    );
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    // libtest captures eprintln! of a passing test: write to the process's
    // stderr so that the skip shows.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: promtool is missing (apt-get install prometheus)"
    );
    None
}

/// Runs promtool with `args` and `stdin`; (success, stdout and stderr).
fn run_promtool(tool: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read_kit("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("grafana-dashboard.json is not JSON: {e}"))
}

/// Every query of the dashboard's panels.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_string())
        .collect()
}

dbtest!(
    a_real_scrape_has_every_metric_the_alerts_and_the_dashboard_use_and_passes_promtool,
    |env| {
        let page = scrape(&env);
        let have = sampled(&page);
        for file in ["alerts.yml", "alerts_test.yml", "grafana-dashboard.json"] {
            let names = metric_names(&read_kit(file));
            assert!(names.len() >= 8, "{file}: only {names:?}");
            for n in names {
                assert!(
                    have.contains(&n),
                    "{file} uses {n}, which has no sample in the daemon's /metrics:\n{page}"
                );
            }
        }

        // The figures the new alerts rest on are the database's: the
        // oldest queued SMS and the newest import of each feed, taken here
        // from every row rather than from the text order the exporter's
        // min()/max() relies on.
        let queued = unix_times(env.query(
            "SELECT created_at FROM notifications WHERE status = 'queued' AND channel = 'sms'",
        ));
        assert!(!queued.is_empty(), "day 1 queues SMS notices");
        assert_eq!(
            value(
                &page,
                "autosign_notices_backlog_oldest_created_timestamp_seconds{status=\"queued\",channel=\"sms\"}"
            ),
            queued.iter().min().map(|t| *t as f64),
            "{page}"
        );
        for feed in ["permits", "residence", "social-insurance", "civil-status"] {
            let q = format!("SELECT imported_at FROM imports WHERE feed = '{feed}'");
            let newest = unix_times(env.query(&q)).into_iter().max();
            assert!(newest.is_some(), "day 1 imports {feed}");
            assert_eq!(
                value(
                    &page,
                    &format!("autosign_feed_last_import_timestamp_seconds{{feed=\"{feed}\"}}")
                ),
                newest.map(|t| t as f64),
                "{page}"
            );
        }
        // The bundled brake limits (config/autosign.toml), in seconds.
        for (feed, days) in [
            ("permits", 7),
            ("residence", 7),
            ("social-insurance", 45),
            ("civil-status", 0),
        ] {
            assert_eq!(
                value(
                    &page,
                    &format!("autosign_feed_max_age_seconds{{feed=\"{feed}\"}}")
                ),
                Some(f64::from(days * 86_400)),
                "{page}"
            );
        }
        assert_eq!(
            value(&page, "autosign_runs{status=\"held\"}"),
            Some(0.0),
            "{page}"
        );

        let Some(tool) = promtool() else { return };
        let (ok, said) = run_promtool(tool, &["check", "metrics"], &page);
        assert!(ok, "promtool check metrics:\n{said}\n{page}");
        assert_eq!(
            said.trim(),
            "",
            "promtool check metrics has remarks:\n{page}"
        );
    }
);

dbtest!(a_held_run_shows_in_the_scrape_as_the_alert_expects, |env| {
    // The brake's freshness check holds the run: the residence feed's
    // newest import is years older than brake.max_age_days.residence.
    import_day(&env, "day1");
    env.query(
        "UPDATE imports SET imported_at = '2020-01-01T00:00:00+08:00' WHERE feed = 'residence'",
    );
    let o = env.cmd(&["run", "--as-of", "2026-11-01"]);
    assert_eq!(o.code, 4, "held: {}", o.stderr);
    let mut d = Daemon::start(&env, "2026-11-02T10:00:00+08:00", &[]);
    let (status, page) = d.get("/metrics");
    let end = d.stop(Duration::from_secs(20));
    assert_eq!((status, end.code), (200, 0), "{}", end.stderr);
    // AutosignRunHeld, AutosignFeedStale and AutosignNoCompletedRun read
    // these.
    assert_eq!(
        value(&page, "autosign_runs{status=\"held\"}"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            "autosign_feed_last_import_timestamp_seconds{feed=\"residence\"}"
        ),
        Some(1_577_808_000.0),
        "{page}"
    );
    assert!(
        !sampled(&page).contains("autosign_last_successful_run_as_of_timestamp_seconds"),
        "{page}"
    );
    assert_eq!(value(&page, "autosign_database_up"), Some(1.0), "{page}");
});

#[test]
fn the_grafana_dashboard_is_importable_and_its_queries_parse() {
    let d = dashboard();
    assert_eq!(d["uid"], "autosign-overview");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    // Grafana's import asks for the data source named by __inputs.
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "id twice: {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().expect("x"), g["w"].as_i64().expect("w"));
        assert!(x >= 0 && w > 0 && x + w <= 24, "{title}: {g}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("autosign_")),
                "{title}: {t}"
            );
        }
    }
    // What an operator looks at: runs, decisions by outcome, delivery by
    // status and channel, feed age, the brake, the backlog's age.
    let exprs = dashboard_exprs(&d).join("\n");
    let used = metric_names(&exprs);
    for needed in [
        "autosign_daemon_runs_total",
        "autosign_last_successful_run_as_of_timestamp_seconds",
        "autosign_last_run_decisions",
        "autosign_last_run_notices",
        "autosign_notices_backlog",
        "autosign_feed_last_import_timestamp_seconds",
        "autosign_runs",
        "autosign_notices_backlog_oldest_created_timestamp_seconds",
    ] {
        assert!(used.iter().any(|u| u == needed), "no panel shows {needed}");
    }

    // Each query as a recording rule: promtool parses its PromQL, with
    // Grafana's variables given values.
    let Some(tool) = promtool() else { return };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs(&d).iter().enumerate() {
        let e = e
            .replace("$__range", "1d")
            .replace("$instance", ".*")
            .replace('\'', "''");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{e}'\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).expect("write");
    let path = file.to_str().expect("utf-8 path");
    let (ok, said) = run_promtool(tool, &["check", "rules", path], "");
    assert!(ok, "a dashboard query does not parse:\n{said}\n{rules}");
}

#[test]
fn every_alert_rule_has_a_unit_test_that_sees_it_fire() {
    let rules = read_kit("alerts.yml");
    let tests = read_kit("alerts_test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for a in alerts {
        // A test that expects it firing: its alertname followed by a
        // non-empty exp_alerts list.
        let fires = tests.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {a}\n")) && case.contains("- exp_labels:")
        });
        assert!(fires, "alerts_test.yml never expects {a} to fire");
        let runbook = format!("runbook_url: \"docs/operations.md#{}\"", a.to_lowercase());
        assert!(rules.contains(&runbook), "{a}: no {runbook}");
    }
    // Each runbook anchor is a heading of docs/operations.md.
    let ops = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
    )
    .expect("docs/operations.md");
    for a in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            ops.lines().any(|l| l.trim() == format!("### {a}")),
            "docs/operations.md has no section \"### {a}\" for the alert's runbook_url"
        );
    }
}

#[test]
fn metric_names_are_found_whole_and_once() {
    assert_eq!(
        metric_names(
            "time() - autosign_a_b{x=\"1\"} > 2 and autosign_a_b\nxautosign_c autosign_d_"
        ),
        ["autosign_a_b", "autosign_d"]
    );
}
