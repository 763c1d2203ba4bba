//! Delta Lake sinks: bronze append, the dead-letter table, and the shared commit logic;
//! the checkpoints a source resumes from.

pub mod bronze;
pub mod checkpoints;
pub mod dead_letter;
pub mod fence;
pub mod layered;
pub mod quality;
pub mod silver;
pub mod stats;
pub mod subject_keys;
pub mod table;

/// Commit attempts against a refreshed table before a sink gives up.
pub(crate) const COMMIT_ATTEMPTS: usize = 10;
