//! The configuration loader: a TOML file over the bundled defaults, then
//! validation. Any input must load or end in a configuration error, never a
//! panic.
#![no_main]

use std::io::Write;

use autosign::settings::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    if let Ok(s) = Settings::load_with_env(Some(file.path()), &[]) {
        // What the commands derive from loaded settings must not panic
        // either.
        let _ = s.header_names();
        let _ = s.tz();
        let _ = s.effective_database_url();
    }
});
