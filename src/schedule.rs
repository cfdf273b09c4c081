//! Schedules as values: a checked cron expression (a setting, parsed once
//! when the settings load), the same expression in a zone (what the daemon
//! wakes up on), and the catch-up policy.
//!
//! tokio-cron-scheduler only wakes the daemon up; what is due is worked out
//! here from the cron expression and the run ledger: the scheduler is an
//! alarm clock, not the source of truth (it never fires a missed tick
//! later, and forgets everything at a restart). The business
//! date due at an instant is the date, in the configured zone, of the
//! latest scheduled tick at or before it: with "0 0 2 * * *", 01:30 on
//! 27 November is still 26 November's turn.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A checked cron expression, as `daemon.schedule` and
/// `retention.schedule` hold it: six or seven fields with a leading seconds
/// field, read as tokio-cron-scheduler reads it, that fires at all.
#[derive(Debug, Clone)]
pub struct CronExpr {
    cron: Cron,
    text: String,
}

impl CronExpr {
    /// Parses `text` as tokio-cron-scheduler does (seconds field required,
    /// day-of-month AND day-of-week), and insists on the seconds field:
    /// a 5-field crontab line would otherwise be read with a shifted
    /// meaning (tokio-cron-scheduler #95). The error says why, for a
    /// one-line configuration error.
    pub fn parse(text: &str) -> Result<CronExpr, String> {
        let text = text.trim();
        if text.starts_with('@') {
            return Err(format!(
                "{text:?}: nicknames are not supported; write six fields, e.g. \"0 0 2 * * *\" for 02:00 daily"
            ));
        }
        let fields = text.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(format!(
                "{text:?} has {fields} fields; write six, with a leading seconds field \
                 (sec min hour day-of-month month day-of-week), e.g. \"0 0 2 * * *\" for 02:00 daily"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(text)
            .map_err(|e| format!("{text:?} is not a cron expression: {e}"))?;
        // Whether it fires at all does not depend on the zone or the clock
        // (an expression for 30 February never does); whether it still
        // fires after the daemon's now is the daemon's check.
        cron.find_next_occurrence(&DateTime::<Utc>::UNIX_EPOCH, false)
            .map_err(|e| format!("{text:?} never fires: {e}"))?;
        Ok(CronExpr {
            cron,
            text: text.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// This expression's ticks in `tz`.
    pub fn in_zone(&self, tz: Tz) -> Schedule {
        Schedule {
            cron: self.cron.clone(),
            text: self.text.clone(),
            tz,
        }
    }
}

impl<'de> serde::Deserialize<'de> for CronExpr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CronExpr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A cron expression's ticks in a zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
    tz: Tz,
}

impl Schedule {
    /// [`CronExpr::parse`] in `tz`.
    pub fn parse(text: &str, tz: Tz) -> Result<Schedule, String> {
        Ok(CronExpr::parse(text)?.in_zone(tz))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The latest tick at or before `now`.
    pub fn previous(&self, now: DateTime<Utc>) -> Option<DateTime<Tz>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
    }

    /// The first tick after `now`.
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Tz>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.tz), false)
            .ok()
    }

    /// The business date due at `now`: the date of the latest tick at or
    /// before it, in the zone. `None` if the schedule never fired before.
    pub fn due_date(&self, now: DateTime<Utc>) -> Option<NaiveDate> {
        self.previous(now).map(|t| t.date_naive())
    }
}

/// What the runner does next, given the ledger and the date due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The last completed run is for the date due (or later): nothing.
    UpToDate { last: NaiveDate },
    /// Run this date next. `behind` counts the dates not yet run up to the
    /// date due, this one and the date due included (1: tonight's run).
    Run { as_of: NaiveDate, behind: i64 },
    /// More dates are due than `max_catch_up_days`: run nothing and alert.
    TooFarBehind {
        last: NaiveDate,
        due: NaiveDate,
        behind: i64,
    },
}

/// The catch-up policy: every date after the last completed run, up to the
/// date due, in date order, one at a time — unless more than `max` are due.
/// With no completed run at all, the date due is the first.
pub fn plan(last: Option<NaiveDate>, due: NaiveDate, max: u32) -> Plan {
    let Some(last) = last else {
        return Plan::Run {
            as_of: due,
            behind: 1,
        };
    };
    if last >= due {
        return Plan::UpToDate { last };
    }
    let behind = (due - last).num_days();
    if behind > i64::from(max) {
        return Plan::TooFarBehind { last, due, behind };
    }
    match last.succ_opt() {
        Some(as_of) => Plan::Run { as_of, behind },
        None => Plan::UpToDate { last },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    const SH: Tz = chrono_tz::Asia::Shanghai;

    #[test]
    fn the_date_due_is_that_of_the_latest_tick_in_the_zone() {
        let s = Schedule::parse("0 0 2 * * *", SH).expect("parses");
        // 01:59 in Shanghai: the 02:00 tick of the 27th has not come yet.
        assert_eq!(
            s.due_date(at("2026-11-27T01:59:00+08:00")),
            Some(d("2026-11-26"))
        );
        assert_eq!(
            s.due_date(at("2026-11-27T02:00:00+08:00")),
            Some(d("2026-11-27"))
        );
        // 18:30 UTC on the 26th is 02:30 on the 27th in Shanghai: the
        // host's zone and UTC do not matter.
        assert_eq!(
            s.due_date(at("2026-11-26T18:30:00Z")),
            Some(d("2026-11-27"))
        );
        assert_eq!(
            s.next(at("2026-11-27T01:59:00+08:00"))
                .map(|t| t.to_rfc3339()),
            Some("2026-11-27T02:00:00+08:00".to_string())
        );
        let every_second = Schedule::parse("* * * * * *", SH).expect("parses");
        assert_eq!(
            every_second.due_date(at("2026-11-27T00:00:00.5+08:00")),
            Some(d("2026-11-27"))
        );
    }

    #[test]
    fn five_field_nickname_and_impossible_schedules_are_refused() {
        for bad in [
            "0 2 * * *",
            "@daily",
            "",
            "0 0 25 * * * * *",
            "0 0 2 * * xyz",
            "0 0 0 30 2 *",
        ] {
            assert!(Schedule::parse(bad, SH).is_err(), "{bad:?}");
        }
        assert!(Schedule::parse("0 30 1 * * Mon-Fri", SH).is_ok());
    }

    #[test]
    fn catch_up_runs_each_missed_date_in_order_up_to_the_limit() {
        let due = d("2026-11-27");
        assert_eq!(
            plan(None, due, 7),
            Plan::Run {
                as_of: due,
                behind: 1
            }
        );
        assert_eq!(
            plan(Some(due), due, 7),
            Plan::UpToDate { last: due },
            "C8: a completed date is not redone"
        );
        assert_eq!(
            plan(Some(d("2026-11-28")), due, 7),
            Plan::UpToDate {
                last: d("2026-11-28")
            },
            "a later manual run stands"
        );
        assert_eq!(
            plan(Some(d("2026-11-24")), due, 7),
            Plan::Run {
                as_of: d("2026-11-25"),
                behind: 3
            }
        );
        assert_eq!(
            plan(Some(d("2026-11-20")), due, 7),
            Plan::Run {
                as_of: d("2026-11-21"),
                behind: 7
            }
        );
        assert_eq!(
            plan(Some(d("2026-11-19")), due, 7),
            Plan::TooFarBehind {
                last: d("2026-11-19"),
                due,
                behind: 8
            }
        );
    }
}
