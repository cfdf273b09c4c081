//! `autosign report` and the daemon's nightly report: the page's figures
//! against the exports and the run summaries of the same database (both
//! backends), the page in a real headless Chromium (no console error, no
//! request, every chart drawn, a screenshot kept under target/), the
//! daemon writing one after each run (and carrying on when it cannot), and
//! the command's refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate};

use crate::deliver::{at, free_port, t0, Gateway};
use crate::helpers::*;

const NIGHT1: &str = "2026-11-27";
const NIGHT2: &str = "2026-11-28";

fn sample(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data")
        .join(file)
}

fn date(s: &str) -> NaiveDate {
    for fmt in ["%Y-%m-%d", "%Y/%m/%d", "%Y%m%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(s.trim(), fmt) {
            return d;
        }
    }
    panic!("not a date: {s:?}")
}

/// The page's figures: `data-v` key → `data-n` number.
fn figures(page: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for rest in page.split("data-v=\"").skip(1) {
        let key = rest.split('"').next().expect("key").to_string();
        let tag = rest.split('>').next().expect("tag");
        let n = tag
            .split("data-n=\"")
            .nth(1)
            .and_then(|x| x.split('"').next())
            .unwrap_or_else(|| panic!("{key} has no data-n"))
            .to_string();
        assert!(out.insert(key.clone(), n).is_none(), "{key} twice");
    }
    out
}

/// The figures under `prefix/`, as numbers, keyed by the rest of the key;
/// zeros left out (the exports have no row for them).
fn under(figs: &BTreeMap<String, String>, prefix: &str) -> BTreeMap<String, i64> {
    figs.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(prefix)?.strip_prefix('/')?;
            let n: i64 = v.parse().unwrap_or_else(|_| panic!("{k} = {v}"));
            (n != 0).then(|| (rest.to_string(), n))
        })
        .collect()
}

/// CSV text as one map per row keyed by column.
fn records(csv_text: &str) -> Vec<BTreeMap<String, String>> {
    let rows = rows(csv_text);
    let header = rows[0].clone();
    rows[1..]
        .iter()
        .map(|r| header.iter().cloned().zip(r.iter().cloned()).collect())
        .collect()
}

/// The count a run summary prints for `kind` (`PENDING   5 …`).
fn summary_count(summary: &str, kind: &str) -> i64 {
    summary
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(kind)).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {kind} line in:\n{summary}"))
}

fn report(env: &Env, from: &str, to: &str) -> String {
    let out = env.path("report.html");
    env.ok(&[
        "report",
        "--from",
        from,
        "--to",
        to,
        "--out",
        &out.display().to_string(),
    ]);
    std::fs::read_to_string(out).expect("report written")
}

/// Two nights on the bundled sample: night 1 on the sample's four feeds,
/// its notices delivered (SMS sent by a gateway, e-mail dead: the relay is
/// not there and one attempt is allowed); night 2 after a residence file
/// with two bad rows, its notices tried once more (e-mail failed, to be
/// retried). Returns the two run summaries.
fn two_nights(env: &mut Env, gateway: &Gateway) -> (String, String) {
    gateway.configure(env);
    env.set("AUTOSIGN_EMAIL__HOST", "127.0.0.1");
    env.set("AUTOSIGN_EMAIL__PORT", &free_port().to_string());
    env.set("AUTOSIGN_EMAIL__TLS", "none");
    env.set(
        "AUTOSIGN_EMAIL__FROM",
        "上海市居住证 <noreply@example.gov.cn>",
    );
    env.set("AUTOSIGN_IMPORT__MAX_REJECT_RATIO", "0.5");
    for (feed, file) in [
        ("permits", "permits/permits.csv"),
        ("residence", "residence/residence.csv"),
        ("social-insurance", "social_insurance/social_insurance.csv"),
        ("civil-status", "civil_status/civil_status.csv"),
    ] {
        env.import(feed, &sample(file));
    }
    let night1 = env.ok(&["run", "--as-of", NIGHT1]);
    let out = env.cmd(&["deliver", "--now", &at(t0())]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // Night 2: a residence file with two rows refused for two reasons.
    let late = format!(
        "id_number,visited_on,result\n{},2026-11-27,consistent\n{},2026-11-27,consistent\n\
         110101197001011018,2026-11-27,consistent\n{},2026-13-40,consistent\n",
        id("19800101", 1),
        id("19800101", 2),
        id("19800101", 3),
    );
    let f = env.write("night2/residence.csv", late);
    env.import("residence", &f);
    let night2 = env.ok(&["run", "--as-of", NIGHT2]);
    let out = env
        .command(&["deliver", "--now", &at(t0())])
        .env("AUTOSIGN_DELIVERY__MAX_ATTEMPTS", "3")
        .output()
        .expect("deliver");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (night1, night2)
}

dbtest!(
    the_reports_figures_are_those_of_the_exports_and_the_runs,
    |mut env| {
        env.set("AUTOSIGN_DELIVERY__MAX_ATTEMPTS", "1");
        let gateway = Gateway::start();
        let (night1, night2) = two_nights(&mut env, &gateway);
        let page = report(&env, "2026-11-01", NIGHT2);
        let figs = figures(&page);
        assert!(page.contains("data-as-of=\"2026-11-28\""), "night reported");

        // Outcomes per night: the audit export's events (applied or held) and
        // the runs' PENDING.
        let audit = records(&env.audit("2026-11-01", NIGHT2));
        let mut want: BTreeMap<String, i64> = BTreeMap::new();
        for r in &audit {
            assert!(["applied", "held"].contains(&r["state"].as_str()), "{r:?}");
            *want
                .entry(format!("{}/{}", r["as_of"], r["decision"]))
                .or_default() += 1;
        }
        for (night, summary) in [(NIGHT1, &night1), (NIGHT2, &night2)] {
            want.insert(
                format!("{night}/PENDING"),
                summary_count(summary, "PENDING"),
            );
            for kind in ["AUTO_SIGNED", "VISIT_CENTER", "SUSPENDED", "CANCELLED"] {
                let from_summary = summary_count(summary, kind);
                let from_audit = want.get(&format!("{night}/{kind}")).copied().unwrap_or(0);
                assert_eq!(
                    from_summary, from_audit,
                    "{night} {kind}: summary and audit"
                );
            }
        }
        want.retain(|_, n| *n != 0);
        assert_eq!(under(&figs, "night"), want);
        assert!(
            want.keys().filter(|k| k.starts_with(NIGHT1)).count() >= 4,
            "a scenario with most outcomes on night 1: {want:?}"
        );

        // VISIT_CENTER of night 2 by reason, district and street.
        let permits =
            records(&std::fs::read_to_string(sample("permits/permits.csv")).expect("read"));
        let place: BTreeMap<&str, (&str, &str)> = permits
            .iter()
            .map(|p| {
                (
                    p["permit_no"].as_str(),
                    (p["district_code"].as_str(), p["street_code"].as_str()),
                )
            })
            .collect();
        let (mut reasons, mut districts, mut streets) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for r in audit
            .iter()
            .filter(|r| r["as_of"] == NIGHT2 && r["decision"] == "VISIT_CENTER")
        {
            for code in r["reasons"].split(';') {
                *reasons.entry(code.to_string()).or_insert(0i64) += 1;
            }
            let (d, s) = place[r["permit_no"].as_str()];
            *districts.entry(d.to_string()).or_insert(0i64) += 1;
            *streets.entry(s.to_string()).or_insert(0i64) += 1;
        }
        assert!(!reasons.is_empty(), "night 2 sends someone to a center");
        assert_eq!(under(&figs, "reason"), reasons);
        assert_eq!(under(&figs, "district"), districts);
        assert!(streets.len() <= 10, "all streets shown: {streets:?}");
        assert_eq!(under(&figs, "street"), streets);

        // PENDING by days left on night 2: active permits due between the
        // deadline and the window's end whose cycle has no decision.
        let decided: BTreeSet<(String, String)> = audit
            .iter()
            .filter(|r| ["AUTO_SIGNED", "VISIT_CENTER"].contains(&r["decision"].as_str()))
            .map(|r| (r["permit_no"].clone(), r["valid_until"].clone()))
            .collect();
        let mut pending: BTreeMap<String, i64> = BTreeMap::new();
        for p in &permits {
            let vu = date(&p["valid_until"]);
            let left = (vu - date(NIGHT2)).num_days();
            let active = matches!(p["status"].as_str(), "" | "active" | "有效");
            if active
                && (8..=30).contains(&left)
                && !decided.contains(&(p["permit_no"].clone(), vu.to_string()))
            {
                *pending.entry(left.to_string()).or_default() += 1;
            }
        }
        let total: i64 = pending.values().sum();
        assert_eq!(
            total,
            summary_count(&night2, "PENDING"),
            "the run's PENDING"
        );
        pending.insert("total".into(), total);
        assert_eq!(under(&figs, "pending"), {
            let mut p = pending.clone();
            p.insert("run".into(), total);
            p
        });

        // Delivery: the notification export, per night and status, per
        // channel and status (range and night 2).
        let notices = records(&env.notifications("2026-11-01", NIGHT2));
        let (mut nights, mut channels, mut last) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for n in &notices {
            *nights
                .entry(format!("{}/{}", n["as_of"], n["status"]))
                .or_insert(0i64) += 1;
            *channels
                .entry(format!("{}/{}", n["channel"], n["status"]))
                .or_insert(0i64) += 1;
            if n["as_of"] == NIGHT2 {
                *last
                    .entry(format!("{}/{}", n["channel"], n["status"]))
                    .or_insert(0i64) += 1;
            }
        }
        for status in ["sent", "dead", "undeliverable", "failed"] {
            assert!(
                channels.keys().any(|k| k.ends_with(&format!("/{status}"))),
                "the scenario has {status} notices: {channels:?}"
            );
        }
        assert_eq!(under(&figs, "delivery"), nights);
        assert_eq!(under(&figs, "channel"), channels);
        assert_eq!(under(&figs, "last"), last);

        // Queued to sent: count, nearest-rank median and p95.
        let mut delays: Vec<i64> = notices
            .iter()
            .filter(|n| n["status"] == "sent")
            .map(|n| {
                let q = DateTime::parse_from_rfc3339(&n["created_at"]).expect("created_at");
                let s = DateTime::parse_from_rfc3339(&n["sent_at"]).expect("sent_at");
                (s - q).num_seconds()
            })
            .collect();
        delays.sort_unstable();
        let rank = |pct: usize| delays[(pct * delays.len()).div_ceil(100).max(1) - 1];
        assert_eq!(figs["delay/count"], delays.len().to_string());
        let secs = |k: &str| figs[k].parse::<i64>().expect("seconds");
        // The exports' timestamps are whole seconds; SQLite's julianday
        // arithmetic rounds to the second as well.
        assert!((secs("delay/median_secs") - rank(50)).abs() <= 1, "median");
        assert!((secs("delay/p95_secs") - rank(95)).abs() <= 1, "p95");
        let buckets: i64 = under(&figs, "delay_bucket").values().sum();
        assert_eq!(buckets, delays.len() as i64);

        // Night 2's one import and its rejects by reason.
        let imports = under(&figs, "import");
        assert_eq!(
            imports.values().copied().collect::<Vec<_>>(),
            vec![2, 4, 2],
            "imported, read, rejected: {imports:?}"
        );
        assert_eq!(
            under(&figs, "reject"),
            BTreeMap::from([
                ("residence/INVALID_ID_NUMBER".to_string(), 1),
                ("residence/INVALID_VISITED_ON".to_string(), 1),
            ])
        );
        assert!(figs.contains_key("feed_age_hours/residence"));
        assert!(page.contains("data-brake=\"clear\""));
    }
);

dbtest!(
    a_held_run_is_reported_with_its_reason_and_its_events,
    |env| {
        for (feed, file) in [
            ("permits", "permits/permits.csv"),
            ("residence", "residence/residence.csv"),
        ] {
            env.import(feed, &sample(file));
        }
        env.query(
            "UPDATE imports SET imported_at = '2026-10-01T00:00:00+08:00' WHERE feed = 'residence'",
        );
        let out = env.cmd(&["run", "--as-of", NIGHT1]);
        assert_eq!(out.code, 4, "held: {}{}", out.stdout, out.stderr);
        let page = report(&env, NIGHT1, NIGHT1);
        assert!(page.contains("data-brake=\"held\""), "brake state");
        assert!(page.contains("data-run-status=\"held\""));
        assert!(
            page.contains("residence"),
            "the brake's reason names the feed"
        );
        let figs = figures(&page);
        let audit = records(&env.audit(NIGHT1, NIGHT1));
        assert!(!audit.is_empty());
        let held = audit
            .iter()
            .filter(|r| r["decision"] == "SUSPENDED")
            .count();
        assert_eq!(figs["night/2026-11-27/SUSPENDED"], held.to_string());
        assert_eq!(
            figs["night/2026-11-27/PENDING"],
            summary_count(&out.stdout, "PENDING").to_string()
        );
    }
);

dbtest!(
    report_refuses_bad_dates_empty_ranges_and_unwritable_paths,
    |env| {
        let o = env.cmd(&[
            "report",
            "--from",
            "2026-11-31",
            "--to",
            NIGHT1,
            "--out",
            "r.html",
        ]);
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains("--from \"2026-11-31\""), "{}", o.stderr);
        let o = env.cmd(&[
            "report", "--from", NIGHT2, "--to", NIGHT1, "--out", "r.html",
        ]);
        assert_eq!(o.code, 2);
        assert!(
            o.stderr
                .contains("--from 2026-11-28 is after --to 2026-11-27"),
            "{}",
            o.stderr
        );
        let o = env.cmd(&[
            "report", "--from", NIGHT1, "--to", NIGHT2, "--out", "r.html",
        ]);
        assert_eq!(o.code, 2);
        assert!(
        o.stderr.contains("no run for 2026-11-27 to 2026-11-28: nothing to report (no night has been run yet)"),
        "{}",
        o.stderr
    );
        env.import("permits", &sample("permits/permits.csv"));
        env.ok(&["run", "--as-of", NIGHT1]);
        let o = env.cmd(&[
            "report",
            "--from",
            "2026-12-01",
            "--to",
            "2026-12-02",
            "--out",
            "r.html",
        ]);
        assert_eq!(o.code, 2);
        assert!(
        o.stderr.contains("no run for 2026-12-01 to 2026-12-02: nothing to report (the latest completed or held run is for 2026-11-27)"),
        "{}",
        o.stderr
    );
        assert!(!env.path("r.html").exists(), "nothing written");
        // A path under a regular file cannot be created.
        env.write("blocker", "x");
        let o = env.cmd(&[
            "report",
            "--from",
            NIGHT1,
            "--to",
            NIGHT1,
            "--out",
            "blocker/r.html",
        ]);
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains("blocker"), "names the path: {}", o.stderr);
        // `-`: the page on standard output; the range's last night without a
        // run reports the latest night with one.
        let o = env.cmd(&["report", "--from", NIGHT1, "--to", NIGHT2, "--out", "-"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.starts_with("<!DOCTYPE html>"));
        assert!(o.stdout.contains("data-as-of=\"2026-11-27\""));
        assert!(o.stdout.contains("<html lang=\"zh-CN\">"));
    }
);

#[test]
fn the_language_setting_picks_english_and_a_bad_value_names_the_key() {
    let mut env = Env::new(Backend::Sqlite);
    env.import("permits", &sample("permits/permits.csv"));
    env.ok(&["run", "--as-of", NIGHT1]);
    env.set("AUTOSIGN_REPORT__LANGUAGE", "en");
    let page = report(&env, NIGHT1, NIGHT1);
    assert!(page.contains("<html lang=\"en\">"));
    assert!(page.contains("Auto-signed"));
    env.set("AUTOSIGN_REPORT__LANGUAGE", "fr");
    let o = env.cmd(&["report", "--from", NIGHT1, "--to", NIGHT1, "--out", "-"]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("configuration key report.language:")
            && o.stderr.contains("`zh-CN` or `en`")
            && o.stderr.trim().lines().count() == 1,
        "{}",
        o.stderr
    );
}

// ------------------------------------------------------- in a browser

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Chromium, or `None` (with a notice) outside CI; in CI its absence
/// fails the test (.ci/run installs it).
fn chromium() -> Option<PathBuf> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    assert!(
        !in_ci(),
        "chromium is missing and CI is set: .ci/run installs it"
    );
    eprintln!("notice: skipping the browser test of the report: chromium is not installed");
    None
}

/// What headless Chromium did with a page.
struct Browsed {
    stdout: String,
    stderr: String,
    /// The first line of every request offered to the proxy.
    requests: Vec<String>,
}

/// Runs headless Chromium on `page` with `args`, every request it makes
/// sent to a proxy on 127.0.0.1 that records the request line and answers
/// nothing.
fn headless(browser: &Path, profile: &Path, page: &Path, args: &[&str]) -> Browsed {
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = proxy.local_addr().expect("addr").port();
    proxy.set_nonblocking(true).expect("nonblocking");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = {
        let (requests, stop) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match proxy.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut line = String::new();
                        let _ = BufReader::new(conn).read_line(&mut line);
                        requests
                            .lock()
                            .expect("lock")
                            .push(line.trim_end().to_string());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--proxy-server=http://127.0.0.1:{port}"),
            // Loopback through the proxy too: nothing may be fetched.
            "--proxy-bypass-list=<-loopback>",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    recorder.join().expect("proxy");
    let requests = requests.lock().expect("lock").clone();
    Browsed {
        stdout: out_reader.join().expect("stdout"),
        stderr: err_reader.join().expect("stderr"),
        requests,
    }
}

/// Requests that are not Chromium's own housekeeping (its clock, its
/// component updater, its account service — made whatever the page, to
/// Google's service domains). The page's own loads are refused before
/// any request by its Content-Security-Policy, and would be logged.
fn page_requests(b: &Browsed) -> Vec<&str> {
    b.requests
        .iter()
        .map(String::as_str)
        .filter(|line| {
            let target = line.split_whitespace().nth(1).unwrap_or("");
            let host = target
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .split(['/', ':'])
                .next()
                .unwrap_or("");
            !["google.com", "googleapis.com", "gvt1.com"]
                .iter()
                .any(|d| host == *d || host.ends_with(&format!(".{d}")))
        })
        .collect()
}

/// Lines of Chromium's log that speak of the page: console output, an
/// uncaught error, a failed load.
fn page_trouble(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            [
                "CONSOLE",
                "Uncaught",
                "net::ERR_",
                "Failed to load",
                "Refused to",
            ]
            .iter()
            .any(|m| l.contains(m))
        })
        .collect()
}

/// Measures every `svg` of the page once laid out, and what the page
/// fetched, into `<pre id="probe">` (test-only: the report has no script).
/// Runs where it stands, at the end of the body: measuring forces the
/// layout, so the sizes are those the page is drawn at.
const PROBE: &str = r#"<script>
(function () {
  var out = [];
  document.querySelectorAll('svg').forEach(function (s) {
    var r = s.getBoundingClientRect();
    out.push(Math.round(r.width) + 'x' + Math.round(r.height));
  });
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = 'svgs=' + out.join(',') + ';resources=' +
    performance.getEntriesByType('resource').length;
  document.body.appendChild(pre);
})();
</script>"#;

#[test]
fn the_report_opens_offline_in_chromium_with_every_chart_drawn_and_nothing_fetched() {
    let Some(browser) = chromium() else {
        return;
    };
    let mut env = Env::new(Backend::Sqlite);
    env.set("AUTOSIGN_DELIVERY__MAX_ATTEMPTS", "1");
    let gateway = Gateway::start();
    two_nights(&mut env, &gateway);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).expect("target");
    for (language, shot) in [
        ("zh-CN", "report-screenshot.png"),
        ("en", "report-screenshot-en.png"),
    ] {
        env.set("AUTOSIGN_REPORT__LANGUAGE", language);
        let page = report(&env, "2026-11-01", NIGHT2);
        let charts = page.matches("<svg class=\"chart\"").count();
        assert!(charts >= 12, "{charts} charts");
        let bare = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        for reference in ["http://", "https://", "src=", "href=", "url("] {
            assert!(!bare.contains(reference), "{reference} in the page");
        }
        let report_path = env.path(&format!("report-{language}.html"));
        std::fs::write(&report_path, &page).expect("write");

        // The page as delivered: no console line (an error, or a load its
        // Content-Security-Policy refused), no request, and a screenshot
        // to look at.
        let shot_path = target.join(shot);
        let _ = std::fs::remove_file(&shot_path);
        let b = headless(
            &browser,
            &env.path(&format!("profile-{language}-a")),
            &report_path,
            &[
                &format!("--screenshot={}", shot_path.display()),
                "--window-size=1240,3500",
                "--hide-scrollbars",
            ],
        );
        assert!(
            page_trouble(&b.stderr).is_empty(),
            "{language}: {:?}",
            page_trouble(&b.stderr)
        );
        assert!(
            page_requests(&b).is_empty(),
            "{language}: requests {:?}",
            page_requests(&b)
        );
        let png = std::fs::read(&shot_path)
            .unwrap_or_else(|e| panic!("screenshot {}: {e}\n{}", shot_path.display(), b.stderr));
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 20_000,
            "a real screenshot"
        );

        // A copy with a probe (its policy letting the probe run): every
        // chart has a size once laid out, and the page fetched nothing,
        // not even from disk.
        let probe_path = env.path(&format!("probe-{language}.html"));
        let probed = page
            .replacen(
                "default-src 'none';",
                "default-src 'none'; script-src 'unsafe-inline';",
                1,
            )
            .replace("</body>", &format!("{PROBE}</body>"));
        std::fs::write(&probe_path, probed).expect("write");
        let b = headless(
            &browser,
            &env.path(&format!("profile-{language}-b")),
            &probe_path,
            &["--dump-dom", "--window-size=1240,3500"],
        );
        assert!(
            page_trouble(&b.stderr).is_empty(),
            "{language}: {:?}",
            page_trouble(&b.stderr)
        );
        assert!(page_requests(&b).is_empty(), "{:?}", page_requests(&b));
        let probe = b
            .stdout
            .split("<pre id=\"probe\">")
            .nth(1)
            .and_then(|p| p.split("</pre>").next())
            .unwrap_or_else(|| panic!("no probe in the DOM:\n{}\n{}", b.stdout, b.stderr));
        let mut parts = probe.split(';');
        let svgs: Vec<(f64, f64)> = parts
            .next()
            .and_then(|s| s.strip_prefix("svgs="))
            .expect("svgs")
            .split(',')
            .map(|wh| {
                let (w, h) = wh.split_once('x').expect("WxH");
                (w.parse().expect("w"), h.parse().expect("h"))
            })
            .collect();
        assert_eq!(svgs.len(), charts, "{probe}");
        for (w, h) in &svgs {
            assert!(*w > 100.0 && *h > 50.0, "a chart drawn at {w}x{h}: {probe}");
            assert!(*w <= 680.0, "within the A4 width: {probe}");
        }
        assert_eq!(parts.next(), Some("resources=0"), "{probe}");
    }
}

// ------------------------------------------------------------ the daemon

/// A daemon with JSON logs; its stderr collected as it comes.
struct Daemon {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(env: &Env, now: &str) -> Daemon {
        let mut child = env.spawn(
            &["daemon", "--now", now],
            &[
                ("AUTOSIGN_LOG__FORMAT", "json"),
                ("AUTOSIGN_LOG__LEVEL", "info"),
                ("AUTOSIGN_DAEMON__HEALTH_ADDR", "127.0.0.1:0"),
            ],
        );
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                sink.lock().expect("lines").push(line);
            }
        });
        Daemon { child, lines }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first record whose message is `msg`, waiting up to 60 s.
    fn wait_for(&mut self, msg: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(r) = self
                .records()
                .into_iter()
                .find(|r| r["fields"]["message"] == msg)
            {
                return r;
            }
            assert!(
                self.child.try_wait().expect("wait").is_none(),
                "the daemon exited before {msg:?}:\n{}",
                self.lines.lock().expect("lines").join("\n")
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {msg:?} within 60 s:\n{}",
                self.lines.lock().expect("lines").join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A plain HTTP/1.1 GET; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

dbtest!(the_daemon_writes_the_nights_report_after_its_run, |env| {
    for (feed, file) in [
        ("permits", "permits/permits.csv"),
        ("residence", "residence/residence.csv"),
    ] {
        env.import(feed, &sample(file));
    }
    // 03:00 in Shanghai on 11-27: the 02:00 run of that date is due.
    let mut d = Daemon::start(&env, "2026-11-27T03:00:00+08:00");
    d.wait_for("nightly run completed");
    let written = d.wait_for("nightly report written");
    d.stop();
    let path = env.path("data/reports/2026-11-27.html");
    assert_eq!(
        written["fields"]["path"].as_str(),
        Some(path.display().to_string().as_str())
    );
    let page = std::fs::read_to_string(&path).expect("the report");
    assert!(page.contains("data-as-of=\"2026-11-27\""));
    assert!(
        page.contains("data-from=\"2026-10-28\""),
        "30 nights before"
    );
    assert!(page.contains("<html lang=\"zh-CN\">"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "owner-only like every file autosign writes"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(env.path("data/reports"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "2026-11-27.html")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
});

#[test]
fn a_report_that_cannot_be_written_is_logged_and_the_run_stands() {
    let env = Env::new(Backend::Sqlite);
    env.import("permits", &sample("permits/permits.csv"));
    // `reports` is a file: no report can be written under it.
    env.write("data/reports", "not a folder");
    let mut d = Daemon::start(&env, "2026-11-27T03:00:00+08:00");
    d.wait_for("nightly run completed");
    let failed = d.wait_for("cannot write the nightly report; the run is not affected");
    assert_eq!(failed["fields"]["alert"], "report_failed");
    assert!(
        failed["fields"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("reports"),
        "{failed}"
    );
    d.wait_for("up to date: nothing to run");
    let listening = d.wait_for("health endpoint listening (/healthz, /readyz, /metrics)");
    let metrics = http_get(
        listening["fields"]["addr"].as_str().expect("addr"),
        "/metrics",
    );
    assert!(
        metrics.contains("autosign_daemon_reports_total{outcome=\"failed\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("autosign_daemon_reports_total{outcome=\"written\"} 0\n"));
    d.stop();
    assert_eq!(
        env.query("SELECT status FROM runs"),
        ["completed"],
        "the run is not undone by its report"
    );
}
