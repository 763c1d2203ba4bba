//! The time jobs go by, injected: the real clock in `sluice job` and `sluice schedule`, a
//! set one in tests.
//!
//! Every decision a job takes by the time reads it from the [`Clock`] of its
//! [`JobContext`](crate::JobContext): the rows maintenance's retention deletes and the
//! files its vacuum removes, when a lock's lease runs out, the cutoff of anonymisation,
//! the time an erasure certifies at and the window before an unnamed file may go, when a
//! snapshot is taken, and the times `sluice job` records a run with. Tests set a
//! [`TestClock`] to the time they need instead of waiting for it. Only waiting itself (a
//! lock's polling, a lease's renewal) goes by tokio's timer, which tests pause and
//! advance.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: std::fmt::Debug + Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stays at the time it is set to, for tests.
#[derive(Debug)]
pub struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    /// A clock showing `now` until set or advanced.
    pub fn at(now: DateTime<Utc>) -> Self {
        Self(Mutex::new(now))
    }

    /// Show `now` from here on.
    pub fn set(&self, now: DateTime<Utc>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
    }

    /// Move the time on by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `clock` as delta-rs's vacuum takes one (`VacuumBuilder::with_clock`).
#[derive(Debug)]
pub(crate) struct DeltaClock(pub(crate) Arc<dyn Clock>);

impl deltalake::operations::vacuum::Clock for DeltaClock {
    fn current_timestamp_millis(&self) -> i64 {
        self.0.now().timestamp_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_clock_shows_what_it_is_set_to() {
        let start = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let clock = TestClock::at(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::hours(36));
        assert_eq!(clock.now(), start + chrono::Duration::hours(36));
        clock.set(start);
        assert_eq!(clock.now(), start);
        let delta = DeltaClock(Arc::new(clock));
        assert_eq!(
            deltalake::operations::vacuum::Clock::current_timestamp_millis(&delta),
            start.timestamp_millis()
        );
    }
}
