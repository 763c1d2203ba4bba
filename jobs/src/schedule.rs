//! `sluice schedule`: which jobs are due, by cron expression, at the times the caller
//! reads from its [`Clock`](crate::clock::Clock) (the system's in `sluice schedule`, a
//! set one in tests).
//!
//! Expressions as `[schedule]` takes them (see `sluice_pipeline::config::schedule`). A job fires once per due time; if a run outlasts the next due time, the
//! missed times are skipped, not queued (the lock would refuse an overlapping run anyway).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cron::Schedule;
use sluice_pipeline::config::schedule::parse;

use crate::error::{Error, Result};

/// The schedule of every job.
#[derive(Debug, Clone)]
pub struct Scheduler {
    entries: BTreeMap<String, (Schedule, DateTime<Utc>)>,
}

impl Scheduler {
    /// Jobs by name with their cron expressions, starting from `now`: nothing is due
    /// before the first due time after `now`.
    pub fn new(jobs: &BTreeMap<String, String>, now: DateTime<Utc>) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for (job, expression) in jobs {
            let schedule = parse(expression).map_err(Error::Invalid)?;
            let next = schedule
                .after(&now)
                .next()
                .ok_or_else(|| Error::Invalid(format!("'{expression}' never fires")))?;
            entries.insert(job.clone(), (schedule, next));
        }
        Ok(Self { entries })
    }

    /// The jobs due at `now`, each once; their next due time moves past `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let mut out = Vec::new();
        for (job, (schedule, next)) in &mut self.entries {
            if *next <= now {
                out.push(job.clone());
                if let Some(n) = schedule.after(&now).next() {
                    *next = n;
                }
            }
        }
        out
    }

    /// When the next job is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.entries.values().map(|(_, n)| *n).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn jobs_fire_at_their_cron_times_once_and_missed_times_are_skipped() {
        let jobs = BTreeMap::from([
            ("maintain".to_string(), "0 3 * * *".to_string()),
            ("snapshot".to_string(), "30 23 * * MON-FRI".to_string()),
        ]);
        // Friday 2026-11-20, 12:00.
        let mut s = Scheduler::new(&jobs, at("2026-11-20T12:00:00Z")).expect("scheduler");
        assert_eq!(s.next_due(), Some(at("2026-11-20T23:30:00Z")));
        assert!(s.due(at("2026-11-20T23:29:59Z")).is_empty());
        assert_eq!(s.due(at("2026-11-20T23:30:00Z")), vec!["snapshot"]);
        assert!(s.due(at("2026-11-20T23:30:01Z")).is_empty(), "fires once");
        assert_eq!(s.due(at("2026-11-21T03:00:00Z")), vec!["maintain"]);
        // The weekend has no snapshot; a run that lasted past Sunday's 03:00 and Monday's
        // is not caught up twice.
        assert_eq!(s.next_due(), Some(at("2026-11-22T03:00:00Z")));
        assert_eq!(
            s.due(at("2026-11-24T04:00:00Z")),
            vec!["maintain", "snapshot"]
        );
        assert_eq!(s.next_due(), Some(at("2026-11-24T23:30:00Z")));
    }

    #[test]
    fn the_next_run_is_the_first_cron_time_after_the_clocks_now() {
        use crate::clock::{Clock, TestClock};
        let jobs = BTreeMap::from([("maintain".to_string(), "0 3 * * *".to_string())]);
        // Started a second after 03:00 by the clock: today's run is past, tomorrow's next.
        let clock = TestClock::at(at("2027-02-01T03:00:01Z"));
        let mut s = Scheduler::new(&jobs, clock.now()).expect("scheduler");
        assert_eq!(s.next_due(), Some(at("2027-02-02T03:00:00Z")));
        clock.advance(chrono::Duration::hours(23));
        assert!(s.due(clock.now()).is_empty());
        // 03:00:00 the next day.
        clock.advance(chrono::Duration::seconds(59 * 60 + 59));
        assert_eq!(s.due(clock.now()), vec!["maintain"]);
        assert_eq!(s.next_due(), Some(at("2027-02-03T03:00:00Z")));
    }
}
