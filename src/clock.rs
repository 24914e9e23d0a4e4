//! The platform's one clock. Retries, schedules, leases, rate windows and "today" (of imports,
//! invoices and forecast runs) all read it, so a test can move time forward (`advance`) to make
//! a retry or a due job come due at once, instead of sleeping. Production reads the system
//! clock; clones share their shift, so shifting the settings' clock shifts every part built from
//! them.

use chrono::{DateTime, NaiveDate, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock (0 in production).
    shift_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.shift_ms.load(Ordering::Relaxed))
    }

    /// Milliseconds since the Unix epoch: the time every queue script is given.
    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// Today's date, UTC.
    pub fn today(&self) -> NaiveDate {
        self.now().date_naive()
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        self.shift_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_moves_every_clone() {
        let clock = Clock::default();
        let clone = clock.clone();
        let before = clone.now_ms();
        clock.advance(std::time::Duration::from_secs(3600));
        let after = clone.now_ms();
        assert!(after - before >= 3_600_000, "{after} - {before}");
        assert!(
            after - before < 3_660_000,
            "only the shift and the test's own time"
        );
    }
}
