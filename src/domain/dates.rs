//! The window of dates backroom accepts from the outside.
//!
//! A date is input like any other, and an unbounded one is costly: forecasting builds a gap-free
//! daily series from a SKU's first day, so a single sale dated `0001-01-01` once meant 740,000
//! days per SKU (a 49 s, 400 MiB stall of the shared forecast worker, every night). Every entry
//! point (stock adjustments, sales imports) refuses dates outside [`DateWindow`], and the
//! forecast reads at most its own history window on top, so rows written before this rule
//! existed cannot do it either.

use chrono::{DateTime, Duration, NaiveDate, Utc};

/// How far back dates may go (`BACKROOM_MAX_PAST_DAYS`, default ten years) and how far ahead
/// (one day, for clocks a little ahead of ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateWindow {
    pub past_days: u32,
}

impl Default for DateWindow {
    fn default() -> Self {
        Self { past_days: 3650 }
    }
}

impl DateWindow {
    /// The oldest day accepted when today is `today`.
    pub fn oldest_day(&self, today: NaiveDate) -> NaiveDate {
        today - Duration::days(i64::from(self.past_days))
    }

    /// Checks a calendar day (imports: the future is today's own business, so not even one day
    /// ahead is accepted).
    pub fn check_day(&self, day: NaiveDate, today: NaiveDate) -> Result<NaiveDate, String> {
        if day > today {
            Err("is in the future".into())
        } else if day < self.oldest_day(today) {
            Err(self.too_old())
        } else {
            Ok(day)
        }
    }

    /// Checks a moment (stock adjustments' `occurred_at`), allowing a day of clock skew ahead.
    pub fn check_time(
        &self,
        t: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, String> {
        if t > now + Duration::days(1) {
            Err("must not be in the future".into())
        } else if t.date_naive() < self.oldest_day(now.date_naive()) {
            Err(self.too_old())
        } else {
            Ok(t)
        }
    }

    fn too_old(&self) -> String {
        format!(
            "is more than {} days in the past (BACKROOM_MAX_PAST_DAYS)",
            self.past_days
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_times_outside_the_window_are_refused() {
        let w = DateWindow { past_days: 10 };
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert!(w.check_day(today, today).is_ok());
        assert!(w.check_day(day(2026, 11, 22), today).is_ok());
        assert!(
            w.check_day(day(2026, 11, 21), today)
                .unwrap_err()
                .contains("10 days")
        );
        assert!(w.check_day(day(1, 1, 1), today).is_err());
        assert_eq!(
            w.check_day(day(2026, 12, 3), today).unwrap_err(),
            "is in the future"
        );

        let now = today.and_hms_opt(12, 0, 0).unwrap().and_utc();
        assert!(w.check_time(now + Duration::hours(23), now).is_ok());
        assert!(w.check_time(now + Duration::hours(25), now).is_err());
        assert!(w.check_time(now - Duration::days(10), now).is_ok());
        assert!(w.check_time(now - Duration::days(11), now).is_err());
        let ancient = day(1, 1, 1).and_hms_opt(0, 0, 0).unwrap().and_utc();
        assert!(
            w.check_time(ancient, now)
                .unwrap_err()
                .contains("in the past")
        );
    }
}
