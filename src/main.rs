//! The `autosign` binary: parse the command line, load settings, start
//! logging, run the command, map its error to its exit status (R11).

use std::process::ExitCode;

use clap::Parser;

use autosign::{app, cli::Cli, settings::Settings, telemetry};

// Imports allocate and free millions of small strings across threads (the
// reader thread, row validation and the writer); mimalloc halves that cost against glibc's
// allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `autosign export … --out - | head` must end quietly like any Unix
    // tool, not panic on a closed pipe: restore the default SIGPIPE action
    // (Rust ignores it, turning every later write into an error).
    #[cfg(unix)]
    // SAFETY: called first thing, before any thread exists; SIG_DFL is a
    // valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // clap prints usage errors itself and exits 2 (help and version: 0).
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Err(e) = telemetry::init(&settings.log) {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&autosign::Error::io("cannot start the async runtime", e)),
    };
    match runtime.block_on(app::execute(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &autosign::Error) -> ExitCode {
    // One line, whatever a file name or a feed value in it holds.
    eprintln!(
        "autosign: error: {}",
        autosign::domain::escape_controls(&e.to_string())
    );
    ExitCode::from(e.exit_code())
}
