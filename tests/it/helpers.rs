//! Test harness: each test gets its own folder and a fresh database, and
//! drives the real `autosign` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which database a test body runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file in the test's temp folder.
    Sqlite,
    /// A fresh database `autosign_test_<random>` on the PostgreSQL server
    /// at 127.0.0.1:5432 (or `AUTOSIGN_TEST_POSTGRES_URL`), dropped when the
    /// test ends.
    Postgres,
}

/// One test's world: a temp folder (data dir, inputs, outputs) and a
/// database URL.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub env: Vec<(String, String)>,
    pub backend: Backend,
    /// Declared last: the database is dropped after everything else.
    pg: Option<PgDatabase>,
}

/// A finished command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    /// A fresh world on `backend`. Panics where [`Env::try_new`] would skip.
    pub fn new(backend: Backend) -> Env {
        Env::try_new(backend).unwrap_or_else(|| panic!("{backend:?} is not available"))
    }

    /// A fresh world on `backend`, or `None` (with a notice on stderr) when
    /// PostgreSQL is unreachable outside CI. In CI (`CI` set) an unreachable
    /// PostgreSQL fails the test instead: the PostgreSQL tests must not
    /// skip there.
    pub fn try_new(backend: Backend) -> Option<Env> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db_url, pg) = match backend {
            Backend::Sqlite => (
                format!(
                    "sqlite://{}",
                    dir.path().join("data/autosign.sqlite").display()
                ),
                None,
            ),
            Backend::Postgres => {
                let pg = PgDatabase::create()?;
                (pg.url.clone(), Some(pg))
            }
        };
        Some(Env {
            dir,
            db_url,
            env: Vec::new(),
            backend,
            pg,
        })
    }

    /// Runs SQL on a PostgreSQL test database (from the test itself, not
    /// through autosign) and returns the first column of each row as text.
    pub fn pg_query(&self, sql: &str) -> Vec<Option<String>> {
        let pg = self.pg.as_ref().expect("a PostgreSQL test");
        pg_query(&pg.url, sql)
    }

    /// Runs one SQL statement on the test's database, whatever the backend,
    /// outside autosign (to age an import, or to try what autosign never
    /// does); the first column of each row as text.
    pub fn sql(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        match self.backend {
            Backend::Postgres => pg_try(&self.pg.as_ref().expect("PostgreSQL").url, sql),
            Backend::Sqlite => {
                let path = self.db_url.trim_start_matches("sqlite://");
                let c = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
                c.busy_timeout(std::time::Duration::from_secs(30))
                    .map_err(|e| e.to_string())?;
                let mut stmt = c.prepare(sql).map_err(|e| e.to_string())?;
                let columns = stmt.column_count();
                let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(|e| e.to_string())? {
                    if columns == 0 {
                        continue;
                    }
                    use rusqlite::types::ValueRef;
                    out.push(match r.get_ref(0).map_err(|e| e.to_string())? {
                        ValueRef::Null => None,
                        ValueRef::Integer(i) => Some(i.to_string()),
                        ValueRef::Real(f) => Some(f.to_string()),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            Some(String::from_utf8_lossy(t).into_owned())
                        }
                    });
                }
                Ok(out)
            }
        }
    }

    /// [`Env::sql`], panicking on error; the first column as strings
    /// (NULL as "").
    pub fn query(&self, sql: &str) -> Vec<String> {
        self.sql(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect()
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

    /// The `autosign` command for this world, not started.
    pub fn command(&self, args: &[&str]) -> Command {
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
        c
    }

    /// Starts `autosign` in the background with extra environment; collect
    /// it with [`finish`].
    pub fn spawn(&self, args: &[&str], extra_env: &[(&str, &str)]) -> std::process::Child {
        let mut c = self.command(args);
        c.envs(extra_env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().expect("spawn autosign")
    }

    pub fn cmd(&self, args: &[&str]) -> Out {
        let o = self.command(args).output().expect("run autosign");
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

    /// Writes a synthetic data set with `autosign-generate` (its own
    /// binary: the production one carries no generator) into `out` under
    /// the test folder; the data set is built around `as_of`.
    pub fn generate(&self, permits: u32, seed: u64, as_of: &str, out: &str) {
        let o = Command::new(env!("CARGO_BIN_EXE_autosign-generate"))
            .args([
                "--permits",
                &permits.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args(["--as-of", as_of, "--out", out])
            .current_dir(self.dir.path())
            .output()
            .expect("run autosign-generate");
        assert!(
            o.status.success(),
            "autosign-generate failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn import(&self, feed: &str, file: &Path) -> String {
        self.ok(&["import", feed, &file.display().to_string()])
    }

    /// The audit export for a range, as text.
    pub fn audit(&self, from: &str, to: &str) -> String {
        self.ok(&["export", "audit", "--from", from, "--to", to, "--out", "-"])
    }

    /// The notification export for a range, with the messages as sent
    /// (`--unmasked`): tests compare them with what the gateway and relay
    /// received. The masked default is tested in hostile.rs.
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
            "--unmasked",
        ])
    }
}

/// Says that a test skipped, where the test run shows it: libtest captures
/// `eprintln!` of a passing test, so the notice is written to the process's
/// stderr directly, with the test's name (CI never skips: its callers panic
/// there instead).
pub fn skipped(what: &str) {
    use std::io::Write as _;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {what}");
}

/// Waits for a process from [`Env::spawn`].
pub fn finish(child: std::process::Child) -> Out {
    let o = child.wait_with_output().expect("wait for autosign");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs one test body against every backend (ripgrep's `rgtest!` idea):
/// `<name>::sqlite` and `<name>::postgres`.
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

            #[test]
            fn postgres() {
                let body: fn(crate::helpers::Env) = $body;
                if let Some(env) = crate::helpers::Env::try_new(crate::helpers::Backend::Postgres) {
                    body(env);
                }
            }
        }
    };
}
pub(crate) use dbtest;

/// A throwaway PostgreSQL database for one test.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

/// Where the test server is: `AUTOSIGN_TEST_POSTGRES_URL` (a URL whose
/// database the tests may connect to for CREATE/DROP DATABASE), else
/// 127.0.0.1:5432 as user postgres, then as root (trust auth). Probed once
/// per test binary.
fn pg_admin_url() -> Option<&'static str> {
    static URL: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let found = URL.get_or_init(|| {
        let candidates = match std::env::var("AUTOSIGN_TEST_POSTGRES_URL") {
            Ok(u) if !u.trim().is_empty() => vec![u],
            _ => vec![
                "postgres://postgres@127.0.0.1:5432/postgres".to_string(),
                "postgres://root@127.0.0.1:5432/postgres".to_string(),
            ],
        };
        let mut errors = Vec::new();
        for url in candidates {
            match pg_try(&url, "SELECT 1") {
                Ok(_) => return Ok(url),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(errors.join("; "))
    });
    match found {
        Ok(url) => Some(url.as_str()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!(
                "PostgreSQL is unreachable and CI is set, so PostgreSQL tests must not skip: {why}"
            )
        }
        Err(why) => {
            skipped(&format!("a PostgreSQL test: no server reachable ({why})"));
            None
        }
    }
}

impl PgDatabase {
    fn create() -> Option<PgDatabase> {
        let admin_url = pg_admin_url()?.to_string();
        let name = format!("autosign_test_{:016x}", rand::random::<u64>());
        pg_query(&admin_url, &format!("CREATE DATABASE {name}"));
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .expect("a URL with a database");
        let url = format!("{base}/{name}");
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // FORCE: a process a test killed may still hold a session.
        if let Err(e) = pg_try(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs one statement on a fresh connection; the first column of each row
/// as text.
pub fn pg_try(url: &str, sql: &str) -> Result<Vec<Option<String>>, String> {
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut conn = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sqlx::PgConnection::connect(url),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let out = rows
            .iter()
            .map(|r| {
                if r.len() == 0 {
                    return None;
                }
                r.try_get::<Option<String>, _>(0)
                    .or_else(|_| {
                        r.try_get::<Option<i64>, _>(0)
                            .map(|v| v.map(|v| v.to_string()))
                    })
                    .or_else(|_| {
                        r.try_get::<Option<i32>, _>(0)
                            .map(|v| v.map(|v| v.to_string()))
                    })
                    .or_else(|_| {
                        r.try_get::<Option<bool>, _>(0)
                            .map(|v| v.map(|v| v.to_string()))
                    })
                    .unwrap_or(None)
            })
            .collect();
        let _ = conn.close().await;
        Ok(out)
    })
}

/// [`pg_try`], panicking on error.
pub fn pg_query(url: &str, sql: &str) -> Vec<Option<String>> {
    pg_try(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

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

/// Timestamp columns of the exports, normalised before comparing.
pub const TS: &[&str] = &["decided_at", "created_at", "sent_at", "next_attempt_at"];

/// Imports the files of one day of the multi_day fixture that exist, the
/// register first.
pub fn import_day(env: &Env, day: &str) {
    for (feed, file) in [
        ("permits", "permits.csv"),
        ("residence", "residence.csv"),
        ("social-insurance", "social_insurance.csv"),
        ("civil-status", "civil_status.csv"),
    ] {
        let p = fixture(&format!("multi_day/{day}/{file}"));
        if p.exists() {
            env.import(feed, &p);
        }
    }
}

/// Generates a city sample of `permits` (seed 5, as_of 2026-11-27) and imports its four feeds, as
/// separate commands (so a reference world gets the same import order).
pub fn load_generated(env: &Env, permits: u32) {
    env.generate(permits, 5, "2026-11-27", "gen");
    for (feed, file) in [
        ("permits", "permits"),
        ("residence", "residence"),
        ("social-insurance", "social_insurance"),
        ("civil-status", "civil_status"),
    ] {
        env.import(feed, &env.path(&format!("gen/{file}/{file}.csv")));
    }
}

/// The migration numbers of a backend's set (`sqlite`, `postgres`), in order.
fn migrations(backend: &str) -> Vec<u32> {
    let dir = format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .expect("migrations")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .split('_')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// The applied versions a fresh database should list, comma-separated.
pub fn migration_versions(backend: &str) -> String {
    let v: Vec<String> = migrations(backend).iter().map(u32::to_string).collect();
    v.join(",")
}

/// The highest migration number embedded in the binary (the same on both
/// backends: one numbering).
pub fn latest_migration() -> u32 {
    migrations("sqlite").into_iter().max().expect("a migration")
}
