//! Named crash points for tests of crash safety. When the environment
//! variable `AUTOSIGN_TEST_FAULT` names a point (optionally `NAME@N` for the
//! N-th time it is reached), the process aborts there — no unwinding, no
//! cleanup, like a `kill -9` — so a test can prove that a rerun completes
//! the work with nothing lost or doubled. Unset, a point costs one load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

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

/// Aborts the process if this is the configured fault point.
pub fn point(name: &str) {
    if let Some((want, nth)) = target() {
        if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            eprintln!("autosign: fault injected at {name}");
            std::process::abort();
        }
    }
}
