//! A feed file as an import reads it: decoding, CSV framing, line numbers,
//! header mapping, row parsing and R2's settling. The first byte picks the
//! feed, the encoding and the batch size (its bit 8 is unused); the rest is
//! the file. Any input must end in rows, rejects or a refusal,
//! never a panic or a hang.
#![no_main]

use std::io::Write;

use autosign::feeds::{fuzzing, Encoding, Feed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let feed = match pick & 3 {
        0 => Feed::Permits,
        1 => Feed::Residence,
        2 => Feed::SocialInsurance,
        _ => Feed::CivilStatus,
    };
    let encoding = if pick & 4 == 0 {
        Encoding::Utf8
    } else {
        Encoding::Gb18030
    };
    let batch_rows = 1 + usize::from(pick >> 4);
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(body).is_err() {
        return;
    }
    fuzzing::read_file(feed, encoding, batch_rows, file.path());
});
