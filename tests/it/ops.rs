//! Privacy and the integrity of the audit trail (docs/rules.md, "Export
//! files", "Retention and purge"): the SHA-256
//! sidecar of every export file, owner-only files, and `autosign purge`
//! with its retention.

use std::path::Path;

use chrono::{Duration, Utc};

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

/// `sha256sum -c FILE` in `dir`: the real tool an auditor would use.
fn sha256sum_check(dir: &Path, sidecar: &str) -> (bool, String) {
    let o = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg(sidecar)
        .current_dir(dir)
        .output()
        .expect("sha256sum is part of coreutils");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

dbtest!(
    every_export_file_gets_a_sha256_sidecar_that_sha256sum_verifies,
    |env| {
        import_day(&env, "day1");
        // The run's own --audit file gets one too.
        let out = env.ok(&["run", "--as-of", "2026-11-01", "--audit", "out/run.csv"]);
        assert!(out.contains("SHA-256 in"), "{out}");
        for what in ["audit", "notifications"] {
            let file = format!("out/{what}.csv");
            let o = env.cmd(&[
                "export",
                what,
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-01",
                "--out",
                &file,
            ]);
            assert_eq!(o.code, 0, "{o:?}");
            assert!(o.stderr.contains(&format!("{file}.sha256")), "{o:?}");
        }
        let out_dir = env.path("out");
        for name in ["run.csv", "audit.csv", "notifications.csv"] {
            let sidecar = format!("{name}.sha256");
            let text = std::fs::read_to_string(out_dir.join(&sidecar)).expect("sidecar");
            assert!(text.ends_with(&format!("  {name}\n")), "{text:?}");
            assert_eq!(text.split_whitespace().next().map(str::len), Some(64));
            let (ok, said) = sha256sum_check(&out_dir, &sidecar);
            assert!(ok, "{name}: {said}");
            #[cfg(unix)]
            assert_eq!(mode(&out_dir.join(&sidecar)), 0o600, "{sidecar}");
        }
        // The run's file and a later export of the same date are the same
        // content, so the same digest.
        assert_eq!(
            std::fs::read_to_string(out_dir.join("run.csv.sha256"))
                .expect("run sidecar")
                .split_whitespace()
                .next(),
            std::fs::read_to_string(out_dir.join("audit.csv.sha256"))
                .expect("audit sidecar")
                .split_whitespace()
                .next()
        );
        // One changed byte is caught.
        let audit = out_dir.join("audit.csv");
        let mut bytes = std::fs::read(&audit).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(&audit, bytes).expect("tamper");
        let (ok, said) = sha256sum_check(&out_dir, "audit.csv.sha256");
        assert!(!ok, "a tampered export must fail the check: {said}");
    }
);

dbtest!(
    the_database_rejects_exports_and_sidecars_are_owner_only,
    |env| {
        let f = env.write(
            "in/permits.csv",
            format!(
                "{PERMITS_HEADER}\n{}\n{}\n",
                permit_row("SH1", &id("19850315", 1), "2026-11-20"),
                permit_row("SH2", "not-an-id", "2026-11-20"),
            ),
        );
        let o = env.cmd(&[
            "import",
            "permits",
            &f.display().to_string(),
            "--rejects",
            "out/rejects.csv",
        ]);
        // One row in two rejected: refused by the default ratio, but the
        // rejects file is still written for the operator.
        assert_eq!(o.code, 3, "{o:?}");
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
        #[cfg(unix)]
        {
            for rel in ["out/rejects.csv", "out/audit.csv", "out/audit.csv.sha256"] {
                assert_eq!(mode(&env.path(rel)), 0o600, "{rel}");
            }
            if env.backend == Backend::Sqlite {
                assert_eq!(mode(&env.path("data/autosign.sqlite")), 0o600);
            }
        }
    }
);

/// The hidden `--now` of `purge`, as RFC 3339.
fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.with_timezone(&chrono_tz::Asia::Shanghai).to_rfc3339()
}

/// Parses the purge report's "removed N what" lines.
fn purged(report: &str, what: &str) -> u64 {
    report
        .lines()
        .find(|l| l.trim_end().ends_with(what))
        .and_then(|l| {
            l.split_whitespace()
                .nth(if l.contains("would") { 2 } else { 1 })
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} line in:\n{report}"))
}

dbtest!(
    purge_removes_feed_rows_and_notice_texts_past_retention_and_keeps_the_audit_trail,
    |mut env| {
        env.set("AUTOSIGN_RETENTION__FEED_DAYS", "400");
        env.set("AUTOSIGN_RETENTION__NOTICE_DAYS", "30");
        // Purge as if 600 days from now: feed rows dated before now + 200
        // days are past retention, as is every notice created today.
        let now = Utc::now();
        let purge_at = now + Duration::days(600);
        let edge = (purge_at - Duration::days(400))
            .with_timezone(&chrono_tz::Asia::Shanghai)
            .date_naive();
        let old = edge - Duration::days(40);
        let kept = edge + Duration::days(1);
        let month = |d: chrono::NaiveDate| d.format("%Y-%m").to_string();

        // Two permits decided today: one undeliverable (no phone, no
        // e-mail: finished at once), one queued for SMS (not finished).
        let mut permits = String::from(PERMITS_HEADER);
        permits.push('\n');
        permits.push_str(&format!(
            "SH1,{},张三,,,310115,310115004,上海市浦东新区潍坊路1号,2026-11-05,,91310115MA1H7GPJ49,paying,single\n",
            id("19850315", 1)
        ));
        permits.push_str(&permit_row("SH2", &id("19850315", 2), "2026-11-05"));
        permits.push('\n');
        env.import("permits", &env.write("in/permits.csv", permits));
        let holder = id("19850315", 1);
        env.import(
            "residence",
            &env.write(
                "in/residence.csv",
                format!(
                    "id_number,visited_on,result\n{holder},{old},consistent\n{holder},{kept},consistent\n{holder},2026-11-01,consistent\n"
                ),
            ),
        );
        env.import(
            "social-insurance",
            &env.write(
                "in/si.csv",
                format!(
                    "id_number,month,status,employer_uscc\n{holder},{},paid,91310115MA1H7GPJ49\n{holder},{},paid,91310115MA1H7GPJ49\n{holder},2026-10,paid,91310115MA1H7GPJ49\n",
                    month(old),
                    month(kept + Duration::days(31)),
                ),
            ),
        );
        // The civil registry said married, then divorced: the first row is
        // replaced, the second is the holder's current record.
        for (file, status) in [("in/civil1.csv", "married"), ("in/civil2.csv", "divorced")] {
            env.import(
                "civil-status",
                &env.write(
                    file,
                    format!("id_number,marital_status\n{holder},{status}\n"),
                ),
            );
        }
        // A rejects file from a bad row.
        let bad = env.write(
            "in/residence-bad.csv",
            format!(
                "id_number,visited_on,result\n{holder},2026-11-02,consistent\n{holder},2026-11-03,consistent\n{holder},2026-11-04,consistent\n{holder},2026-11-05,consistent\n{holder},2026-11-06,consistent\n{holder},2026-11-07,consistent\n{holder},2026-11-08,consistent\n{holder},2026-11-09,consistent\n{holder},2026-11-10,consistent\n{holder},2026-11-11,consistent\n{holder},2026-11-12,consistent\n{holder},2026-11-13,consistent\n{holder},2026-11-14,consistent\n{holder},2026-11-15,consistent\n{holder},2026-11-16,consistent\n{holder},2026-11-17,consistent\n{holder},2026-11-18,consistent\n{holder},2026-11-19,consistent\n{holder},2026-11-20,consistent\n{holder},2026-13-01,consistent\n"
            ),
        );
        env.import("residence", &bad);
        let rejects = env.path("data/rejects/residence/residence-bad.csv.rejects.csv");
        assert!(rejects.exists(), "the bad row was written to {rejects:?}");

        env.ok(&["run", "--as-of", "2026-11-01"]);
        let audit_before = env.audit("2026-01-01", "2027-12-31");
        let notices_before = env.notifications("2026-01-01", "2027-12-31");
        assert_eq!(rows(&audit_before).len(), 3, "{audit_before}");

        // A dry run says what would go and changes nothing.
        let at = rfc3339(purge_at);
        let dry = env.ok(&["purge", "--dry-run", "--now", &at]);
        assert!(dry.contains("dry run"), "{dry}");
        // The visit dated `old`, the one of 2026-11-01 and the 19 accepted
        // rows of residence-bad.csv lie before the edge; `kept` does not.
        assert_eq!(purged(&dry, "residence visits"), 21, "{dry}");
        assert_eq!(
            env.notifications("2026-01-01", "2027-12-31"),
            notices_before
        );
        assert!(rejects.exists());

        let report = env.ok(&["purge", "--now", &at]);
        assert_eq!(purged(&report, "residence visits"), 21, "{report}");
        assert_eq!(purged(&report, "social-insurance months"), 2, "{report}");
        // "married" was replaced by "divorced": it goes where the storage
        // kept it at all.
        assert!(
            purged(&report, "replaced civil-status rows") <= 1,
            "{report}"
        );
        assert_eq!(purged(&report, "notice texts"), 1, "{report}");
        assert_eq!(purged(&report, "rejects files"), 1, "{report}");
        assert!(!rejects.exists(), "the rejects file holds feed rows");

        // The audit trail is untouched.
        assert_eq!(env.audit("2026-01-01", "2027-12-31"), audit_before);
        let notices = rows(&env.notifications("2026-01-01", "2027-12-31"));
        let col = |name: &str| {
            notices[0]
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let (no, status, message) = (col("permit_no"), col("status"), col("message"));
        for n in &notices[1..] {
            match n[status].as_str() {
                "undeliverable" => assert_eq!(n[message], "", "finished: text purged"),
                "queued" => assert!(!n[message].is_empty(), "still to send: text kept"),
                other => panic!("unexpected status {other} for {}", n[no]),
            }
        }
        // The holder's current civil record is kept, however old: the
        // next purge finds nothing more.
        let again = env.ok(&["purge", "--now", &at]);
        for what in [
            "residence visits",
            "social-insurance months",
            "replaced civil-status rows",
            "notice texts",
            "rejects files",
        ] {
            assert_eq!(purged(&again, what), 0, "{what}: {again}");
        }
        let status = env.ok(&["status", "SH1"]);
        assert!(status.contains("VISIT_CENTER"), "{status}");
        // The current record still counts: a new permit of the same holder
        // registered as single is told their marital status changed.
        env.import(
            "permits",
            &env.write(
                "in/permits2.csv",
                format!(
                    "{PERMITS_HEADER}\n{}\n",
                    permit_row("SH3", &holder, "2026-11-05")
                ),
            ),
        );
        env.ok(&["run", "--as-of", "2026-11-02"]);
        let audit = env.audit("2026-11-02", "2026-11-02");
        let r = rows(&audit);
        assert_eq!(r.len(), 2, "{audit}");
        assert!(r[1][5].contains("MARITAL_STATUS_CHANGED"), "{audit}");
    }
);

#[test]
fn a_retention_shorter_than_the_evidence_a_run_reads_is_refused() {
    let mut env = Env::new(Backend::Sqlite);
    env.set("AUTOSIGN_RETENTION__FEED_DAYS", "60");
    let o = env.cmd(&["purge", "--dry-run"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("retention.feed_days"), "{}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
}
