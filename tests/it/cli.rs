//! The command line (R11): help, usage errors, configuration errors and
//! their exit statuses, one clear line on stderr, never a panic.

use crate::helpers::*;

fn no_panic(o: &Out) {
    assert!(
        !o.stderr.contains("panicked") && !o.stderr.contains("RUST_BACKTRACE"),
        "{}",
        o.stderr
    );
}

#[test]
fn help_explains_commands_and_exit_statuses() {
    // Refused or answered before any database is opened: one backend.
    let env = Env::new(Backend::Sqlite);
    let out = env.ok(&["--help"]);
    for part in [
        "import",
        "run",
        "export",
        "status",
        "Exit status",
        "--database-url",
        "--config",
    ] {
        assert!(out.contains(part), "{part} missing from --help:\n{out}");
    }
    assert!(env.ok(&["run", "--help"]).contains("--as-of"));
}

#[test]
fn usage_errors_exit_2_r11() {
    // Refused or answered before any database is opened: one backend.
    let env = Env::new(Backend::Sqlite);
    for args in [
        vec!["frobnicate"],
        vec!["import", "passports", "x.csv"],
        vec!["run"],
        vec!["run", "--as-of", "2026-02-30"],
        vec!["run", "--as-of", "someday"],
        vec![
            "export",
            "audit",
            "--from",
            "2026-12-01",
            "--to",
            "2026-11-01",
            "--out",
            "-",
        ],
        vec!["import", "permits", "x.csv", "--encoding", "latin1"],
    ] {
        let o = env.cmd(&args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(!o.stderr.trim().is_empty(), "{args:?}: no message");
        no_panic(&o);
    }
}

#[test]
fn configuration_errors_exit_2_naming_the_key() {
    // Refused or answered before any database is opened: one backend.
    let mut env = Env::new(Backend::Sqlite);
    let cfg = env.write("bad.toml", "[rules]\nwindow_dayz = 30\n");
    let o = env.cmd(&[
        "--config",
        &cfg.display().to_string(),
        "run",
        "--as-of",
        "2026-11-01",
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("rules.window_dayz"), "{}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
    let cfg = env.write("bad2.toml", "[notices]\nauto_signed = \"{nmae}\"\n");
    let o = env.cmd(&[
        "--config",
        &cfg.display().to_string(),
        "run",
        "--as-of",
        "2026-11-01",
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("{nmae}"), "{}", o.stderr);
    env.set("AUTOSIGN_RULES__GRACE_DAYS", "sixty");
    let o = env.cmd(&["status", "X"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("AUTOSIGN_RULES__GRACE_DAYS"),
        "{}",
        o.stderr
    );
}

dbtest!(a_missing_input_file_is_a_runtime_error_exit_1, |env| {
    let o = env.cmd(&["import", "permits", "does-not-exist.csv"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("does-not-exist.csv"), "{}", o.stderr);
    no_panic(&o);
});

#[test]
fn an_unusable_database_url_is_refused() {
    // Refused or answered before any database is opened: one backend.
    let env = Env::new(Backend::Sqlite);
    let o = env.cmd(&["--database-url", "mysql://x", "status", "X"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("sqlite://"), "{}", o.stderr);
    let o = env.cmd(&[
        "--database-url",
        "sqlite:///proc/forbidden/x.sqlite",
        "status",
        "X",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    no_panic(&o);
}

dbtest!(
    the_default_database_is_an_sqlite_file_under_the_data_dir,
    |env| {
        // No URL at all: the embedded default.
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_autosign"));
        c.args(["status", "X"])
            .current_dir(env.dir.path())
            .env_remove("AUTOSIGN_DATABASE_URL")
            .env("AUTOSIGN_DATA_DIR", env.path("var"));
        let o = c.output().expect("run");
        assert_eq!(o.status.code(), Some(2), "unknown permit: {o:?}");
        assert!(
            env.path("var/autosign.sqlite").exists(),
            "database created on first use"
        );
    }
);
