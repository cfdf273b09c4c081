//! The Debian package's files (`packaging/deb/`, `[package.metadata.deb]`
//! in Cargo.toml) agree with each other and with the binary: the packaged
//! configuration passes `daemon --check` under the settings this binary
//! accepts (an unknown key is exit 2), and the unit, the configuration,
//! the maintainer scripts and the asset list name the same paths. Building,
//! installing and purging the package is `.ci/package-test` (root, dpkg,
//! a release build).

use std::path::PathBuf;

use crate::helpers::*;

fn source(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `Key=value` lines of a systemd unit (a key set twice: the last).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

#[test]
fn the_packaged_configuration_passes_daemon_check() {
    let env = Env::new(Backend::Sqlite);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/deb/autosign.toml");
    // The test's database and data directory stand in for /var/lib/autosign
    // (the environment overrides the file's data_dir).
    let out = env.ok(&[
        "--config",
        config.to_str().expect("utf-8 path"),
        "daemon",
        "--check",
    ]);
    assert!(out.contains("configuration: ok"), "{out}");
    assert!(
        out.contains("schedule: \"0 0 2 * * *\" in Asia/Shanghai"),
        "{out}"
    );
    assert!(out.contains("health endpoint: 127.0.0.1:9187"), "{out}");
}

#[test]
fn the_unit_the_configuration_the_scripts_and_the_assets_name_the_same_paths() {
    let config: toml::Table = source("packaging/deb/autosign.toml")
        .parse()
        .expect("packaged configuration is TOML");
    assert_eq!(config["data_dir"].as_str(), Some("/var/lib/autosign"));

    let unit = source("packaging/deb/autosign.service");
    assert_eq!(
        unit_value(&unit, "ExecStart").as_deref(),
        Some("/usr/bin/autosign --config /etc/autosign/autosign.toml daemon")
    );
    assert_eq!(unit_value(&unit, "User").as_deref(), Some("autosign"));
    assert_eq!(
        unit_value(&unit, "StateDirectory").as_deref(),
        Some("autosign")
    );
    assert_eq!(
        unit_value(&unit, "StateDirectoryMode").as_deref(),
        Some("0700")
    );
    assert_eq!(
        unit_value(&unit, "WorkingDirectory").as_deref(),
        Some("/var/lib/autosign")
    );
    assert_eq!(
        unit_value(&unit, "EnvironmentFile").as_deref(),
        Some("-/etc/autosign/secrets.env")
    );

    let manifest: toml::Table = source("Cargo.toml").parse().expect("Cargo.toml");
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let s = |i: usize| a[i].as_str().expect("asset field").to_string();
            (s(0), s(1), s(2))
        })
        .collect();
    for (src, dest, mode) in [
        ("target/release/autosign", "usr/bin/", "755"),
        (
            "packaging/deb/autosign.toml",
            "etc/autosign/autosign.toml",
            "640",
        ),
        (
            "packaging/deb/autosign.service",
            "lib/systemd/system/autosign.service",
            "644",
        ),
    ] {
        assert!(
            assets
                .iter()
                .any(|a| (a.0.as_str(), a.1.as_str(), a.2.as_str()) == (src, dest, mode)),
            "no asset {src} -> {dest} ({mode}): {assets:?}"
        );
    }
    for (src, _, _) in &assets {
        if !src.starts_with("target/") {
            assert!(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join(src)
                    .is_file(),
                "asset {src} does not exist"
            );
        }
    }
    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    let postinst = source(&format!("{scripts}postinst"));
    assert!(
        postinst.contains("install -d -m 0700 -o autosign -g autosign /var/lib/autosign"),
        "{postinst}"
    );
    // A container without systemd: no systemctl call outside the guard.
    for script in ["postinst", "prerm", "postrm"] {
        let text = source(&format!("{scripts}{script}"));
        // One entry per open `if`: whether it is the systemd guard.
        let mut open: Vec<bool> = Vec::new();
        for l in text.lines().map(str::trim) {
            if l.starts_with("if ") {
                open.push(l.starts_with("if [ -d /run/systemd/system ]"));
            } else if l == "fi" {
                open.pop();
            }
            assert!(
                !l.starts_with("systemctl") || open.contains(&true),
                "{script}: {l} outside the systemd guard"
            );
        }
        assert!(open.is_empty(), "{script}: unbalanced if/fi");
    }
    let postrm = source(&format!("{scripts}postrm"));
    assert!(postrm.contains("rm -rf /var/lib/autosign"), "{postrm}");
    assert!(
        postrm.contains("deluser --quiet --system autosign"),
        "{postrm}"
    );
}
