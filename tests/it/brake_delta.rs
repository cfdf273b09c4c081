//! The safety brake's row-drop check and `[feeds.<feed>] delivery`: a
//! snapshot import is compared with the snapshot import before it; a
//! delta import is never compared, and never the baseline of a later
//! snapshot. Defaults: permits, residence and civil status come as
//! deltas, social insurance as monthly snapshots (config/autosign.toml).

use crate::helpers::*;

/// A social-insurance file of `n` paid rows for `month`, holders numbered
/// from `first`.
fn si_file(env: &Env, name: &str, month: &str, first: u32, n: u32) -> std::path::PathBuf {
    let mut csv = String::from("id_number,month,status,employer_uscc,employer_name\n");
    for i in first..first + n {
        csv.push_str(&format!(
            "{},{month},paid,91310115MA1H7GPJ49,上海甲公司\n",
            id("19900101", i)
        ));
    }
    env.write(&format!("in/{name}"), csv)
}

fn deliveries(env: &Env) -> Vec<String> {
    env.query("SELECT feed || ' ' || delivery FROM imports ORDER BY import_id")
}

dbtest!(
    a_night_of_deltas_after_a_full_load_is_not_held,
    |mut env| {
        env.set("AUTOSIGN_BRAKE__ROW_DROP__MIN_PREVIOUS_ROWS", "3");
        import_day(&env, "day1"); // residence: 3 rows (import 2)
        env.ok(&["run", "--as-of", "2026-11-01"]);
        import_day(&env, "day2"); // residence: 1 row (import 5)
        let out = env.ok(&["run", "--as-of", "2026-11-13"]);
        assert!(
            out.contains("run 2 for as_of 2026-11-13: completed"),
            "{out}"
        );
        assert_eq!(
            deliveries(&env),
            [
                "permits delta",
                "residence delta",
                "social-insurance snapshot",
                "civil-status delta",
                "residence delta"
            ]
        );
    }
);

dbtest!(
    with_the_feed_set_to_snapshot_the_same_night_is_held,
    |mut env| {
        env.set("AUTOSIGN_BRAKE__ROW_DROP__MIN_PREVIOUS_ROWS", "3");
        env.set("AUTOSIGN_FEEDS__RESIDENCE__DELIVERY", "snapshot");
        import_day(&env, "day1");
        env.ok(&["run", "--as-of", "2026-11-01"]);
        import_day(&env, "day2");
        let o = env.cmd(&["run", "--as-of", "2026-11-13"]);
        assert_eq!(o.code, 4, "held:\n{}\n{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains("feed residence dropped: import 5 (")
                && o.stderr.contains("has 1 rows against 3 in import 2 ("),
            "{}",
            o.stderr
        );
    }
);

dbtest!(
    a_snapshot_feed_that_drops_sharply_is_still_held_by_default,
    |mut env| {
        env.set("AUTOSIGN_BRAKE__ROW_DROP__MIN_PREVIOUS_ROWS", "3");
        env.import(
            "social-insurance",
            &si_file(&env, "si-10.csv", "2026-10", 1, 6),
        );
        env.ok(&["run", "--as-of", "2026-11-01"]);
        env.import(
            "social-insurance",
            &si_file(&env, "si-11.csv", "2026-11", 1, 2),
        );
        let o = env.cmd(&["run", "--as-of", "2026-11-02"]);
        assert_eq!(o.code, 4, "held:\n{}\n{}", o.stdout, o.stderr);
        assert!(
            o.stderr
                .contains("feed social-insurance dropped: import 2 (")
                && o.stderr
                    .contains("/in/si-11.csv) has 2 rows against 6 in import 1 (")
                && o.stderr
                    .contains("/in/si-10.csv), below brake.row_drop.min_ratio = 0.5"),
            "{}",
            o.stderr
        );
    }
);

dbtest!(
    a_delta_import_is_not_the_baseline_of_a_later_snapshot,
    |mut env| {
        env.set("AUTOSIGN_BRAKE__ROW_DROP__MIN_PREVIOUS_ROWS", "3");
        env.import(
            "social-insurance",
            &si_file(&env, "si-10.csv", "2026-10", 1, 6),
        );
        env.ok(&["run", "--as-of", "2026-11-01"]);
        // One file of corrections, imported as a delta for that command
        // only: a sixth of the snapshot, and not held.
        let fix = si_file(&env, "si-fix.csv", "2026-09", 1, 1);
        let o = finish(env.spawn(
            &["import", "social-insurance", &fix.display().to_string()],
            &[("AUTOSIGN_FEEDS__SOCIAL_INSURANCE__DELIVERY", "delta")],
        ));
        assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
        env.ok(&["run", "--as-of", "2026-11-02"]);
        // The next snapshot is compared with the snapshot of 6 rows, not
        // with the delta of 1: 4 rows pass.
        env.import(
            "social-insurance",
            &si_file(&env, "si-11.csv", "2026-11", 1, 4),
        );
        env.ok(&["run", "--as-of", "2026-11-03"]);
        // And 1 row against that snapshot of 4 holds the run.
        env.import(
            "social-insurance",
            &si_file(&env, "si-12.csv", "2026-12", 1, 1),
        );
        let o = env.cmd(&["run", "--as-of", "2026-11-04"]);
        assert_eq!(o.code, 4, "held:\n{}\n{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains("dropped: import 4 (")
                && o.stderr
                    .contains("/in/si-12.csv) has 1 rows against 4 in import 3 (")
                && o.stderr.contains("/in/si-11.csv), below"),
            "{}",
            o.stderr
        );
        assert_eq!(
            deliveries(&env),
            [
                "social-insurance snapshot",
                "social-insurance delta",
                "social-insurance snapshot",
                "social-insurance snapshot"
            ]
        );
    }
);

#[test]
fn a_delivery_other_than_snapshot_or_delta_stops_autosign_naming_the_key() {
    let mut env = Env::new(Backend::Sqlite);
    env.set("AUTOSIGN_FEEDS__PERMITS__DELIVERY", "full");
    let o = env.cmd(&["status", "SH0001"]);
    assert_eq!(o.code, 2, "{}\n{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("feeds.permits.delivery")
            && o.stderr.contains("expected `snapshot` or `delta`"),
        "{}",
        o.stderr
    );
}
