//! Liveness and readiness of a run, shared by the source, the runner and the HTTP
//! endpoint: lock-free counters anyone may update and `/readyz` reads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `/readyz` decides on.
#[derive(Debug, Default)]
pub struct Health {
    /// Partitions assigned to this process now.
    pub assigned_partitions: AtomicU64,
    /// Messages behind the brokers' high watermarks, all assigned partitions together
    /// (-1: not known yet).
    pub lag_messages: AtomicI64,
    /// When the last Delta commit finished, milliseconds since the epoch (0: none yet).
    pub last_commit_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn new() -> Self {
        Self {
            lag_messages: AtomicI64::new(-1),
            ..Self::default()
        }
    }

    /// A Delta commit just finished.
    pub fn committed(&self) {
        self.last_commit_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Ready: partitions are assigned, and either nothing is waiting (lag 0) or the last
    /// commit is younger than `max_commit_age`. `Err` says why not.
    pub fn ready(&self, max_commit_age: Duration) -> Result<(), String> {
        if self.assigned_partitions.load(Ordering::Relaxed) == 0 {
            return Err("no partition assigned".into());
        }
        if self.lag_messages.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let last = self.last_commit_ms.load(Ordering::Relaxed);
        let age = Duration::from_millis(now_ms().saturating_sub(last));
        if last > 0 && age <= max_commit_age {
            Ok(())
        } else if last == 0 {
            Err("messages are waiting and nothing has been committed yet".into())
        } else {
            Err(format!(
                "messages are waiting and the last commit was {}s ago",
                age.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_partitions_and_either_no_lag_or_a_recent_commit() {
        let h = Health::new();
        let age = Duration::from_secs(300);
        assert!(h.ready(age).is_err());
        h.assigned_partitions.store(3, Ordering::Relaxed);
        assert!(h.ready(age).is_err(), "lag unknown, no commit");
        h.committed();
        assert!(h.ready(age).is_ok());
        h.last_commit_ms.store(1, Ordering::Relaxed);
        assert!(h.ready(age).expect_err("stale").contains("last commit"));
        h.lag_messages.store(0, Ordering::Relaxed);
        assert!(h.ready(age).is_ok(), "caught up: an old commit is fine");
    }
}
