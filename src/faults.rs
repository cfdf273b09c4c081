//! Test hooks, compiled only with the `test-hooks` feature (the test build
//! turns it on through the self dev-dependency in Cargo.toml; a release
//! build has none, and its hooks are empty inline functions).
//!
//! - Named crash points for tests of crash safety: when the environment
//!   variable `AUTOSIGN_TEST_FAULT` names a point (optionally `NAME@N` for
//!   the N-th time it is reached), the process aborts there — no unwinding,
//!   no cleanup, like a `kill -9` — so a test can prove that a rerun
//!   completes the work with nothing lost or doubled.
//! - Delays on PostgreSQL: `AUTOSIGN_TEST_PG_PAGE_DELAY_MS` holds each run
//!   page's transaction open that long after its writes and before its
//!   commit, `AUTOSIGN_TEST_PG_IMPORT_DELAY_MS` an import's, so the
//!   concurrency tests can cut a connection while a page is in flight or
//!   start a run while an import holds the job lock.

use std::time::Duration;

/// Where a hook may hold a transaction open before its commit.
#[derive(Debug, Clone, Copy)]
pub enum Delay {
    /// A PostgreSQL run page.
    PgPage,
    /// A PostgreSQL import.
    PgImport,
}

#[cfg(feature = "test-hooks")]
mod hooks {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::Delay;

    fn target() -> &'static Option<(String, u64)> {
        static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
        TARGET.get_or_init(|| {
            let v = std::env::var("AUTOSIGN_TEST_FAULT").ok()?;
            match v.split_once('@') {
                Some((name, n)) => Some((name.to_string(), n.parse().unwrap_or(1))),
                None => Some((v, 1)),
            }
        })
    }

    static HITS: AtomicU64 = AtomicU64::new(0);

    pub fn point(name: &str) {
        if let Some((want, nth)) = target() {
            if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
                eprintln!("autosign: fault injected at {name}");
                std::process::abort();
            }
        }
    }

    pub fn delay(which: Delay) -> Option<Duration> {
        static PAGE: OnceLock<Option<Duration>> = OnceLock::new();
        static IMPORT: OnceLock<Option<Duration>> = OnceLock::new();
        let (cell, var) = match which {
            Delay::PgPage => (&PAGE, "AUTOSIGN_TEST_PG_PAGE_DELAY_MS"),
            Delay::PgImport => (&IMPORT, "AUTOSIGN_TEST_PG_IMPORT_DELAY_MS"),
        };
        *cell.get_or_init(|| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
        })
    }
}

/// Aborts the process if this is the configured crash point.
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "test-hooks")]
    hooks::point(name);
    #[cfg(not(feature = "test-hooks"))]
    let _ = name;
}

/// How long to hold a transaction open at `which`, if a test asked.
#[inline]
pub fn delay(which: Delay) -> Option<Duration> {
    #[cfg(feature = "test-hooks")]
    return hooks::delay(which);
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = which;
        None
    }
}
