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

pub mod anonymise;
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

use deltalake::DeltaTable;

/// A table's version, -1 before its first commit.
pub(crate) fn version(t: &DeltaTable) -> i64 {
    t.version().map_or(-1, |v| v as i64)
}
