//! # sluice-pipeline
//!
//! The spine of sluice: **Source → Transform → Sink** over Arrow record batches.
//!
//! * A source (the Kafka consumer in `sluice-connectors`) decodes messages into
//!   [`SourceBatch`]es and sends them, in order, as [`SourceEvent`]s over a bounded
//!   channel. A full channel makes the source wait, so memory stays bounded.
//! * [`Transform`]s rewrite whole columns. Each declares its output schema at start-up,
//!   so a bad policy fails before any data moves.
//! * A [`Sink`] buffers batches and commits them atomically with the offsets they cover.
//!   Only after a commit does the runner tell the source (through [`SourceControl`]) to
//!   commit the same offsets to Kafka, for lag monitoring; Kafka's offsets are never
//!   read back to resume.
//! * On assignment a source resumes each partition from what the sink committed, as its
//!   [`Checkpoints`] tell (see [`checkpoints`]).
//!
//! [`runner::run`] is the loop tying them together and applying the [`FlushPolicy`].

pub mod batch;
pub mod checkpoints;
pub mod columns;
pub mod config;
pub mod error;
pub mod health;
pub mod key_cache;
pub mod lake;
pub mod lineage;
pub mod metrics;
pub mod panic;
pub mod protection;
pub mod runner;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use batch::{DeadLetter, OffsetRange, SourceBatch, Stage, TopicPartition};
pub use checkpoints::{Checkpoints, Resume};
pub use error::{Error, Result};
pub use runner::{FlushPolicy, RunStats};

/// What a source sends to the runner, in the order it happened.
#[derive(Debug)]
pub enum SourceEvent {
    /// Decoded rows and the offsets they cover.
    Batch(SourceBatch),
    /// These partitions now belong to another consumer: drop what is buffered for them.
    Revoked(Vec<TopicPartition>),
}

/// Calls back into the source from the runner.
pub trait SourceControl: Send + Sync {
    /// Offsets durably committed to the sink: `offset` is the next offset to read.
    /// Sources forward them to the broker for lag tools.
    fn committed(&self, offsets: &[(TopicPartition, i64)]);
    /// Another writer already committed this partition up to `offset - 1`: read on from
    /// `offset` and discard anything older still in flight.
    fn seek(&self, partition: &TopicPartition, offset: i64);
}

/// A column-wise rewrite of record batches.
///
/// Contract: [`Transform::output_schema`] is called once per table at start-up with the
/// table's input schema and must reject any input the transform cannot handle;
/// [`Transform::apply`] must then return a batch of exactly that schema with the same
/// number of rows.
pub trait Transform: Send + Sync {
    /// Short name used in errors and metrics.
    fn name(&self) -> &str;
    /// The schema `apply` returns for `input`, or an error explaining why it cannot apply.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef>;
    /// Rows of `batch` this transform cannot handle, with the reason (never the value).
    /// The runner sends them to the dead-letter table, at stage `transform`, before
    /// calling [`Transform::apply`] on the rest.
    fn reject(&self, _batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
        Ok(Vec::new())
    }
    /// Rewrite one batch.
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch>;
}

/// Protects the raw key and payload of dead letters before they are buffered.
pub trait Seal: Send + Sync {
    /// Replace `letter.key` and `letter.payload` by their protected form.
    fn seal(&self, letter: &mut DeadLetter);
}

/// What is buffered in a sink, waiting for a commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buffered {
    pub rows: usize,
    pub bytes: usize,
    /// Messages accounted for, rows and dead letters.
    pub messages: usize,
}

/// What a commit achieved.
#[derive(Debug, Clone, Default)]
pub struct CommitOutcome {
    /// Next offset to read per partition, now durable.
    pub committed: Vec<(TopicPartition, i64)>,
    /// Partitions another writer had already committed further: resume from this offset.
    pub fenced: Vec<(TopicPartition, i64)>,
    pub rows: usize,
    pub dead_letters: usize,
    /// Delta commits made (one per table touched).
    pub commits: usize,
}

/// Durable, exactly-once storage of batches.
///
/// Contract: [`Sink::write`] only buffers; nothing is visible until [`Sink::commit`],
/// which makes every buffered row and the offsets covering them durable at once (per
/// table), or fails leaving nothing half-visible. Rows at offsets the destination already
/// holds must be dropped, never written twice.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// Buffer a batch.
    async fn write(&mut self, batch: SourceBatch) -> Result<()>;
    /// What is buffered now.
    fn buffered(&self) -> Buffered;
    /// Commit everything buffered.
    async fn commit(&mut self) -> Result<CommitOutcome>;
    /// Forget buffered data of partitions this process no longer owns.
    fn revoke(&mut self, partitions: &[TopicPartition]);
}
