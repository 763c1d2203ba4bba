//! # sluice-jobs
//!
//! Batch jobs over the lake, run once by `sluice job <name>` (from cron, a Kubernetes
//! CronJob or Airflow). Each job takes a lock per job and table so two runs never
//! overlap, and appends a row per run to the tamper-evident `_sluice/job_runs`.
//!
//! Today: `maintain` (retention deletes, compaction, vacuum, checkpoints), `snapshot`
//! (versions pinned, row counts, checksums, invariants) and `erase` (right to be
//! forgotten: rows, files and log entries holding a subject purged, certificates, byte-scan
//! verification) and `anonymise` (aged rows nulled and generalised in place, old versions
//! purged, k-anonymity checked before publishing), run once or at cron times by
//! `sluice schedule`.
//!
//! Every job runs in a [`JobContext`]: the lake, and the [`clock::Clock`] it takes the
//! time from (the system's in `sluice job`, a set one in tests).

pub mod anonymise;
pub mod clock;
pub mod erase;
pub mod error;
pub mod gold;
pub mod journal;
pub mod lock;
pub mod maintain;
pub mod purge;
pub mod runs;
pub mod schedule;
pub mod snapshot;
pub mod subject;

pub use error::{Error, Result};

use std::sync::Arc;

use deltalake::DeltaTable;
use sluice_pipeline::lake::Lake;

use crate::clock::{Clock, SystemClock};

/// Where and when a job runs: the lake it works on and the clock it reads the time from.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub lake: Lake,
    pub clock: Arc<dyn Clock>,
}

impl JobContext {
    /// Jobs on `lake` going by `clock`.
    pub fn new(lake: impl Into<Lake>, clock: Arc<dyn Clock>) -> Self {
        Self {
            lake: lake.into(),
            clock,
        }
    }

    /// Jobs on `lake` going by the system's clock.
    pub fn with_system_clock(lake: impl Into<Lake>) -> Self {
        Self::new(lake, Arc::new(SystemClock))
    }

    /// Now, by the context's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
}

/// A table's version, -1 before its first commit.
pub(crate) fn version(t: &DeltaTable) -> i64 {
    t.version().map_or(-1, |v| v as i64)
}
