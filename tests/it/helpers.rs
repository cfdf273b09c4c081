//! Test harness: each test gets its own folder and a fresh database, and
//! drives the real `autosign` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which database a test body runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
}

/// One test's world: a temp folder (data dir, inputs, outputs) and a
/// database URL.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub env: Vec<(String, String)>,
}

/// A finished command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    pub fn new(backend: Backend) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_url = match backend {
            Backend::Sqlite => format!(
                "sqlite://{}",
                dir.path().join("data/autosign.sqlite").display()
            ),
        };
        Env {
            dir,
            db_url,
            env: Vec::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file under the test folder and returns its path.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn cmd(&self, args: &[&str]) -> Out {
        let mut c = Command::new(env!("CARGO_BIN_EXE_autosign"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("AUTOSIGN_CONFIG")
            .env("AUTOSIGN_DATABASE_URL", &self.db_url)
            .env("AUTOSIGN_DATA_DIR", self.path("data"))
            .env("AUTOSIGN_LOG__FORMAT", "human")
            .env("AUTOSIGN_LOG__LEVEL", "warn");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let o = c.output().expect("run autosign");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert_eq!(
            o.code, 0,
            "autosign {args:?} failed:\n{}\n{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    pub fn import(&self, feed: &str, file: &Path) -> String {
        self.ok(&["import", feed, &file.display().to_string()])
    }

    /// The audit export for a range, as text.
    pub fn audit(&self, from: &str, to: &str) -> String {
        self.ok(&["export", "audit", "--from", from, "--to", to, "--out", "-"])
    }

    pub fn notifications(&self, from: &str, to: &str) -> String {
        self.ok(&[
            "export",
            "notifications",
            "--from",
            from,
            "--to",
            to,
            "--out",
            "-",
        ])
    }
}

/// Runs one test body against every backend (ripgrep's `rgtest!` idea).
macro_rules! dbtest {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sqlite() {
                let body: fn(crate::helpers::Env) = $body;
                body(crate::helpers::Env::new(crate::helpers::Backend::Sqlite));
            }
        }
    };
}
pub(crate) use dbtest;

/// Replaces the values of timestamp columns (checked to be RFC 3339 with an
/// offset, C14) with a placeholder so exports can be compared.
pub fn normalise_timestamps(csv_text: &str, columns: &[&str]) -> String {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv_text.as_bytes());
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    let mut idx = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.expect("csv");
        if i == 0 {
            idx = rec
                .iter()
                .enumerate()
                .filter(|(_, h)| columns.contains(h))
                .map(|(j, _)| j)
                .collect();
            w.write_record(&rec).expect("write");
            continue;
        }
        let out: Vec<String> = rec
            .iter()
            .enumerate()
            .map(|(j, v)| {
                if idx.contains(&j) && !v.is_empty() {
                    chrono::DateTime::parse_from_rfc3339(v)
                        .unwrap_or_else(|e| panic!("{v:?} is not RFC 3339: {e}"));
                    "<timestamp>".to_string()
                } else {
                    v.to_string()
                }
            })
            .collect();
        w.write_record(&out).expect("write");
    }
    String::from_utf8(w.into_inner().expect("flush")).expect("utf8")
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it instead.
pub fn assert_golden(actual: &str, golden: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(golden);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("golden {golden}: {e}"));
    if expected != actual {
        let mut diff = String::new();
        let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..e.len().max(a.len()) {
            let (x, y) = (
                e.get(i).copied().unwrap_or("<none>"),
                a.get(i).copied().unwrap_or("<none>"),
            );
            if x != y {
                diff.push_str(&format!(
                    "line {}:\n  expected: {x}\n  actual:   {y}\n",
                    i + 1
                ));
            }
        }
        panic!("{golden} differs (UPDATE_GOLDEN=1 rewrites it):\n{diff}");
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A valid citizen ID number for test data: region 320102, the given birth
/// date, sequence `seq`.
pub fn id(birth: &str, seq: u32) -> String {
    let first17 = format!("320102{birth}{seq:03}");
    let check = autosign::domain::id_check_char(&first17).expect("17 digits");
    format!("{first17}{check}")
}

pub const PERMITS_HEADER: &str = "permit_no,id_number,name,phone,email,district_code,street_code,address,valid_until,status,employer_uscc,si_status,marital_status";

/// One permits row with sensible defaults; `vu` is valid_until.
pub fn permit_row(no: &str, id: &str, vu: &str) -> String {
    format!("{no},{id},张三,13800138000,,310115,310115004,上海市浦东新区潍坊路1号,{vu},,91310115MA1H7GPJ49,paying,single")
}

/// Parses CSV text into rows of fields (header included).
pub fn rows(csv_text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(csv_text.as_bytes())
        .records()
        .map(|r| r.expect("csv").iter().map(str::to_string).collect())
        .collect()
}
