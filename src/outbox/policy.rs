//! The delivery policy as pure functions of the injected clock
//! ([`crate::clock::Clock`]): quiet hours, exponential backoff with jitter,
//! and a rate limiter.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::settings::DeliverySettings;

/// No SMS between `start` and `end` local time (a window that may span
/// midnight); `start == end` means no quiet hours.
#[derive(Debug, Clone, Copy)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub tz: Tz,
}

impl QuietHours {
    /// `delivery.quiet_hours_start` to `_end` in `tz`.
    pub fn from_settings(d: &DeliverySettings, tz: Tz) -> Self {
        QuietHours {
            start: d.quiet_hours_start,
            end: d.quiet_hours_end,
            tz,
        }
    }

    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let t = now.with_timezone(&self.tz).time();
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => self.start <= t && t < self.end,
            std::cmp::Ordering::Greater => t >= self.start || t < self.end,
        }
    }

    /// `21:00-08:00 Asia/Shanghai`, for summaries.
    pub fn describe(&self) -> String {
        format!(
            "{}-{} {}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.tz
        )
    }
}

/// How long to wait after failed attempt number `attempt` (1-based):
/// `base * 2^(attempt-1)`, capped at `max`, then spread by up to
/// ±`jitter` (a fraction) so notices that failed together (a gateway
/// outage) are not all retried in the same second. The spread is
/// pseudo-random but fixed per (`seed`, `attempt`) — the notice id is the
/// seed — so a test can reproduce it.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64, seed: u64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(max);
    if jitter <= 0.0 {
        return raw;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed.rotate_left(17) ^ u64::from(attempt));
    let factor = 1.0 + rng.random_range(-jitter..=jitter);
    raw.mul_f64(factor).max(Duration::from_secs(1))
}

/// Spaces the starts of sends on one channel to at most `per_second`.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<Duration>,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    /// `per_second` 0: no limit.
    pub fn new(per_second: f64) -> Self {
        let interval = (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second));
        Pacer {
            interval,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this send's slot.
    pub async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn shanghai(h: u32, m: u32) -> DateTime<Utc> {
        chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(2026, 11, 27, h, m, 0)
            .single()
            .expect("time")
            .with_timezone(&Utc)
    }

    fn quiet(start: &str, end: &str) -> QuietHours {
        QuietHours {
            start: NaiveTime::parse_from_str(start, "%H:%M").expect("start"),
            end: NaiveTime::parse_from_str(end, "%H:%M").expect("end"),
            tz: chrono_tz::Asia::Shanghai,
        }
    }

    #[test]
    fn quiet_hours_span_midnight_in_shanghai_time() {
        let q = quiet("21:00", "08:00");
        for (h, m, inside) in [
            (20, 59, false),
            (21, 0, true),
            (23, 59, true),
            (0, 0, true),
            (2, 0, true),
            (7, 59, true),
            (8, 0, false),
            (12, 0, false),
        ] {
            assert_eq!(q.contains(shanghai(h, m)), inside, "{h:02}:{m:02}");
        }
    }

    #[test]
    fn quiet_hours_within_a_day_and_disabled() {
        let q = quiet("12:00", "14:00");
        assert!(q.contains(shanghai(13, 0)));
        assert!(!q.contains(shanghai(14, 0)));
        assert!(!q.contains(shanghai(2, 0)));
        let off = quiet("00:00", "00:00");
        assert!(!off.contains(shanghai(0, 0)) && !off.contains(shanghai(22, 0)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_without_jitter() {
        let (b, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        let got: Vec<u64> = (1..=8)
            .map(|a| backoff(a, b, m, 0.0, 7).as_secs())
            .collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(200, b, m, 0.0, 7).as_secs(), 3600);
    }

    #[test]
    fn jitter_stays_within_bounds_is_reproducible_and_spreads_notices() {
        let (b, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        let mut seen = std::collections::BTreeSet::new();
        for id in 0..200u64 {
            let d = backoff(2, b, m, 0.2, id);
            assert!((96.0..=144.0).contains(&d.as_secs_f64()), "{d:?}");
            assert_eq!(d, backoff(2, b, m, 0.2, id));
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 150, "jitter spreads notices: {}", seen.len());
    }

    #[tokio::test]
    async fn pacer_spaces_sends() {
        let p = Pacer::new(50.0);
        let t = std::time::Instant::now();
        for _ in 0..6 {
            p.wait().await;
        }
        // 6 starts at 20 ms spacing: the last at >= 100 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t.elapsed()
        );
        let free = Pacer::new(0.0);
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            free.wait().await;
        }
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
