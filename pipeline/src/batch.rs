//! The unit of work: an Arrow [`RecordBatch`] plus the Kafka offsets it covers.
//!
//! A [`SourceBatch`] carries, beside the rows, the range of offsets it covers for every
//! (topic, partition) and the messages that could not become rows ([`DeadLetter`]s).
//! The offsets travel with the rows all the way into the Delta commit, which is what
//! makes ingestion exactly-once: a sink records the last offset of each partition in the
//! same commit as the files holding its rows.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

/// A Kafka topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// The inclusive range of offsets a batch covers in one partition.
///
/// `first..=last` counts every message consumed, including those that became dead
/// letters, so that a restart resumes after `last` and never sees them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    pub first: i64,
    pub last: i64,
}

impl OffsetRange {
    /// Widen the range to take in `other`.
    pub fn extend(&mut self, other: OffsetRange) {
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// The stage of the pipeline at which a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The bytes are not a message of the configured format (malformed, empty, not
    /// UTF-8, an unknown schema id).
    Decode,
    /// The message is well formed but does not fit the table schema: a type that does
    /// not fit, a name sluice reserves, more columns than a table may gain.
    Schema,
    /// A transform rejected the row (a value longer than an action processes, a panic or
    /// error of an action on it).
    Transform,
    /// The message is beyond a configured limit on its shape: its bytes (key and value),
    /// nesting depth, fields per message.
    Limit,
    /// The row could not be written.
    Write,
    /// The row failed a data-quality expectation with action `drop` (it goes to the
    /// quarantine table, not the dead-letter table).
    Quality,
}

impl Stage {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Schema => "schema",
            Stage::Transform => "transform",
            Stage::Limit => "limit",
            Stage::Write => "write",
            Stage::Quality => "quality",
        }
    }
}

/// A message that could not become a row, with its provenance.
///
/// The raw bytes are kept whole so that nothing is lost; they go to the dead-letter
/// table, never to logs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Message timestamp in milliseconds since the epoch, if the broker gave one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub stage: Stage,
    pub error: String,
}

/// Rows bound for one table, the offsets they cover and the messages rejected on the way.
#[derive(Debug, Clone)]
pub struct SourceBatch {
    /// The destination table (e.g. `bronze/txn_events`).
    pub table: String,
    /// The good rows, or `None` when every message of the batch was rejected.
    pub rows: Option<RecordBatch>,
    /// Offsets covered per partition, good and rejected messages alike.
    pub offsets: BTreeMap<TopicPartition, OffsetRange>,
    pub dead_letters: Vec<DeadLetter>,
    /// Bytes of the messages the batch was made from, held until the commit: payloads
    /// (those of dead letters too) and keys. They count against the flush's byte budget.
    pub source_bytes: usize,
}

impl SourceBatch {
    /// Number of messages the batch accounts for (rows plus dead letters).
    pub fn message_count(&self) -> usize {
        self.rows.as_ref().map_or(0, |b| b.num_rows()) + self.dead_letters.len()
    }
}
