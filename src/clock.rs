//! Wall-clock time for timestamps (`decided_at`, `created_at`). Business
//! dates are never taken from here inside the rules: a run gets its
//! `as_of` as an argument.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

/// Now, as RFC 3339 with the Asia/Shanghai offset (C14).
pub fn now_rfc3339() -> String {
    Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// Now, for comparisons with stored timestamps (the safety brake's feed
/// ages).
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Today's date in `tz`.
pub fn today(tz: Tz) -> NaiveDate {
    Utc::now().with_timezone(&tz).date_naive()
}

pub fn to_rfc3339(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono_tz::Asia::Shanghai)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}
