//! The resume contract: a source resumes each partition from what its tables committed.
//!
//! Exactly-once rests on one rule: the offsets a sink commits travel in the same commit as
//! the rows they cover, and a source resumes from those offsets, never from Kafka's group
//! offsets (which the runner only forwards after a commit, for lag tools). When
//! partitions are assigned, the source asks its [`Checkpoints`] where each one resumes and
//! starts it there:
//!
//! ```text
//!   rebalance: partitions assigned ──► Checkpoints::resume ──► Resume per partition
//!                                       (the sink's commits:    After(offset): the next one
//!                                        every table a topic    Beginning: the whole backlog
//!                                        feeds)                 absent: auto_offset_reset
//! ```
//!
//! In `sluice run` the checkpoints are the Delta tables' transaction versions
//! (`sluice_connectors::delta::checkpoints`); tests give a source checkpoints held in
//! memory.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;

use crate::{Result, TopicPartition};

/// Where one partition resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// After this offset: the last one that every table the partition feeds holds (the
    /// lowest of theirs, so a table behind the others catches up).
    After(i64),
    /// From the partition's first offset still held: a table it feeds holds none of it yet
    /// while another does, so that table needs the whole backlog, whatever
    /// `auto_offset_reset` says.
    Beginning,
}

/// What the sink committed, as a source needs it to resume.
///
/// Contract:
/// * [`Checkpoints::resume`] answers for every given partition the partition's first
///   table (for Delta, bronze) holds; a partition it has committed nothing of is left out
///   (whatever later tables hold), and the source's `auto_offset_reset` decides where it
///   starts.
/// * [`Checkpoints::table_schema`] gives the schema a destination table has now, which
///   may have evolved past the declared one; the source's decoders start from it.
/// * Both block until they have the answer. `resume` is called from the source's own
///   thread (librdkafka's rebalance callback is synchronous), outside any async runtime;
///   `table_schema` is called while the source starts, from the caller's thread, which
///   may be a worker of a multi-threaded tokio runtime: an implementation that waits on
///   async code must not call `Handle::block_on` there directly (use
///   `tokio::task::block_in_place`, as the Delta implementation does). An error fails
///   the source: a guessed offset would lose or double rows.
pub trait Checkpoints: Send + Sync {
    /// Where each of `partitions` resumes; partitions no table has committed are left out.
    fn resume(&self, partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, Resume>>;

    /// The schema of the destination table `table` (a table the source's routes name) as
    /// committed, lineage columns included; `None` while the table does not exist.
    fn table_schema(&self, table: &str) -> Result<Option<SchemaRef>>;
}
