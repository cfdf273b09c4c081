//! The one clock of a process: what "now" and "today" are, in the
//! configured zone (`timezone`). `app::execute` builds it once per command
//! and every job takes it as an argument — the run (`decided_at`, its
//! notices' `created_at`, the brake's feed ages, its inbox imports), the
//! delivery step, release, discard, revert, requeue, purge, explain and
//! the daemon — so that a hidden `--now` moves all of them together: a
//! rehearsal's `run --now T` stamps its notices at T, and `deliver --now T`
//! then finds them due. Nothing else reads the system time for a business
//! purpose. Durations are measured with [`std::time::Instant`], never by
//! subtracting timestamps.
//!
//! Business dates are never read from here inside the rules: a run gets
//! its `as_of` as an argument.

use std::time::Instant;

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::{OffsetComponents, Tz};

/// The system clock, or (`--now`, for tests and rehearsals) a clock that
/// read a given instant when it was made and advances in real time from
/// there. Carries the configured zone. `Copy`: pass it by value.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: Source,
    tz: Tz,
    /// The offset stored timestamps are written in: see [`Clock::stamp`].
    stored: FixedOffset,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    System,
    /// Read `start` at `at`; advances with the monotonic clock, so a step
    /// of the system clock does not move it.
    From {
        start: DateTime<Utc>,
        at: Instant,
    },
}

impl Clock {
    /// The system clock, in `tz`.
    pub fn system(tz: Tz) -> Clock {
        Clock::new(Source::System, Utc::now(), tz)
    }

    /// A clock reading `start` now and advancing in real time (`--now`).
    pub fn starting_at(start: DateTime<Utc>, tz: Tz) -> Clock {
        let source = Source::From {
            start,
            at: Instant::now(),
        };
        Clock::new(source, start, tz)
    }

    fn new(source: Source, now: DateTime<Utc>, tz: Tz) -> Clock {
        Clock {
            source,
            tz,
            stored: standard_offset(tz, now),
        }
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        match self.source {
            Source::System => Utc::now(),
            Source::From { start, at } => {
                // An elapsed time beyond chrono's range (≈ 292 million
                // years) cannot happen; saturate rather than panic.
                let elapsed =
                    chrono::Duration::from_std(at.elapsed()).unwrap_or(chrono::Duration::MAX);
                start.checked_add_signed(elapsed).unwrap_or(start)
            }
        }
    }

    /// The configured zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// `t` as a wall-clock time in the configured zone, for people (a
    /// summary, a log line).
    pub fn local(&self, t: DateTime<Utc>) -> DateTime<Tz> {
        t.with_timezone(&self.tz)
    }

    /// Today's date in the configured zone.
    pub fn today(&self) -> NaiveDate {
        self.local(self.now()).date_naive()
    }

    /// `t` as the database stores timestamps (`decided_at`, `created_at`,
    /// `next_attempt_at`, `imported_at`, …): RFC 3339 with whole seconds,
    /// always in one offset, the configured zone's standard offset (+08:00
    /// for Asia/Shanghai), so that comparing two of them as text compares
    /// the instants (docs/rules.md, "Timestamps"). The zone's local offset
    /// would not do where it has daylight saving time: it changes twice a
    /// year, and an hour of timestamps would sort out of order.
    pub fn stamp(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.stored)
            .to_rfc3339_opts(SecondsFormat::Secs, false)
    }

    /// [`Clock::stamp`] of now.
    pub fn now_rfc3339(&self) -> String {
        self.stamp(self.now())
    }
}

/// `tz`'s standard (not daylight saving) offset from UTC at `at`.
fn standard_offset(tz: Tz, at: DateTime<Utc>) -> FixedOffset {
    let base = tz
        .offset_from_utc_datetime(&at.naive_utc())
        .base_utc_offset();
    i32::try_from(base.num_seconds())
        .ok()
        .and_then(FixedOffset::east_opt)
        // Every zone's offset is within ±24 h: never taken.
        .unwrap_or_else(|| Utc.fix())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_clock_from_an_instant_reads_it_and_advances_in_real_time() {
        let start = at("2026-11-27T02:00:00+08:00");
        let clock = Clock::starting_at(start, chrono_tz::Asia::Shanghai);
        let first = clock.now();
        assert!(first >= start && first - start < chrono::Duration::seconds(5));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = clock.now();
        assert!(later - first >= chrono::Duration::milliseconds(20));
        // A copy is the same clock.
        let copy = clock;
        assert!(copy.now() >= later);
    }

    #[test]
    fn today_and_local_are_in_the_configured_zone() {
        // 18:30 UTC on the 26th: the 27th in Shanghai, still the 26th in
        // New York, and the 27th in Kiritimati (UTC+14) from 10:00 UTC.
        let t = at("2026-11-26T18:30:00Z");
        for (tz, date) in [
            (chrono_tz::Asia::Shanghai, "2026-11-27"),
            (chrono_tz::America::New_York, "2026-11-26"),
            (chrono_tz::Pacific::Kiritimati, "2026-11-27"),
        ] {
            let clock = Clock::starting_at(t, tz);
            assert_eq!(clock.today().to_string(), date, "{tz}");
            assert_eq!(clock.local(t).date_naive().to_string(), date, "{tz}");
            assert_eq!(clock.tz(), tz);
        }
    }

    #[test]
    fn stamps_are_whole_seconds_in_the_zones_standard_offset() {
        let sh = Clock::starting_at(at("2026-11-27T02:00:00+08:00"), chrono_tz::Asia::Shanghai);
        assert_eq!(
            sh.stamp(at("2026-11-26T18:00:00.75Z")),
            "2026-11-27T02:00:00+08:00"
        );
        assert!(sh.now_rfc3339().starts_with("2026-11-27T02:00:0"));
        assert!(sh.now_rfc3339().ends_with("+08:00"));
        let utc = Clock::starting_at(at("2026-11-27T02:00:00Z"), chrono_tz::UTC);
        assert_eq!(
            utc.stamp(at("2026-11-27T02:00:00Z")),
            "2026-11-27T02:00:00+00:00"
        );
    }

    #[test]
    fn stamps_sort_as_their_instants_across_a_daylight_saving_change() {
        // Berlin leaves summer time at 03:00 CEST on 25 October 2026
        // (01:00 UTC). In local time 02:30 CEST (00:30 UTC) would sort
        // after 02:10 CET (01:10 UTC), which is later; stamps keep the
        // standard offset, +01:00, the whole year.
        let clock = Clock::starting_at(at("2026-07-01T12:00:00Z"), chrono_tz::Europe::Berlin);
        let earlier = at("2026-10-25T00:30:00Z");
        let later = at("2026-10-25T01:10:00Z");
        let (a, b) = (clock.stamp(earlier), clock.stamp(later));
        assert_eq!(a, "2026-10-25T01:30:00+01:00");
        assert_eq!(b, "2026-10-25T02:10:00+01:00");
        assert!(a < b);
        assert_eq!(
            clock.stamp(at("2026-07-01T12:00:00Z")),
            "2026-07-01T13:00:00+01:00"
        );
        // People still read local time.
        assert_eq!(
            clock.local(earlier).to_rfc3339(),
            "2026-10-25T02:30:00+02:00"
        );
    }

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let before = Utc::now();
        let now = Clock::system(chrono_tz::UTC).now();
        assert!(now >= before && now - before < chrono::Duration::seconds(5));
    }
}
