//! What every decoder keeps for the messages buffered between two flushes: their
//! bytes, their Kafka lineage, the offset range per partition and the dead letters, and
//! the bisection that isolates bad messages in `O(k log n)` decodes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, Date32Array, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use sluice_pipeline::lineage::with_lineage;
use sluice_pipeline::{DeadLetter, OffsetRange, SourceBatch, Stage, TopicPartition};

use super::RawMessage;
use crate::error::Result;

/// Where one message of the chunk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Bytes `start..end` of the chunk buffer.
    Row { start: usize, end: usize },
    /// A key with a null value: a row of nulls.
    Tombstone,
    /// A dead letter already (oversized, empty, undecodable).
    Rejected,
}

/// The buffered messages of one table.
pub(crate) struct Chunk {
    pub buf: Vec<u8>,
    pub slots: Vec<Slot>,
    pub dead: Vec<DeadLetter>,
    topics: StringBuilder,
    partitions: Int32Builder,
    offsets: Int64Builder,
    timestamps: TimestampMicrosecondBuilder,
    keys: BinaryBuilder,
    ranges: BTreeMap<TopicPartition, OffsetRange>,
    /// Bytes held beside `buf`: keys and the payloads of messages refused at admission.
    held_bytes: usize,
    /// A panic escaped the decoder while buffering: the chunk is abandoned at the flush.
    pub poisoned: Option<String>,
}

impl Chunk {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            slots: Vec::new(),
            dead: Vec::new(),
            topics: StringBuilder::new(),
            partitions: Int32Builder::new(),
            offsets: Int64Builder::new(),
            timestamps: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            keys: BinaryBuilder::new(),
            ranges: BTreeMap::new(),
            held_bytes: 0,
            poisoned: None,
        }
    }

    /// Record the lineage of `m`. Returns `false` when its payload is refused outright
    /// (too large, blank): it is then a dead letter at stage `decode` already.
    pub fn admit(&mut self, m: &RawMessage<'_>, max_message_bytes: usize) -> bool {
        let r = OffsetRange {
            first: m.offset,
            last: m.offset,
        };
        // A chunk spans few partitions: a scan avoids allocating a key per message.
        match self
            .ranges
            .iter_mut()
            .find(|(tp, _)| tp.partition == m.partition && tp.topic == m.topic)
        {
            Some((_, e)) => e.extend(r),
            None => {
                self.ranges
                    .insert(TopicPartition::new(m.topic, m.partition), r);
            }
        }
        self.topics.append_value(m.topic);
        self.partitions.append_value(m.partition);
        self.offsets.append_value(m.offset);
        self.timestamps
            .append_option(m.timestamp_ms.map(|t| t * 1000));
        self.keys.append_option(m.key);
        // The key counts: a megabyte key costs what a megabyte value does.
        let size = m.payload.map_or(0, <[u8]>::len) + m.key.map_or(0, <[u8]>::len);
        let refused = match m.payload {
            _ if size > max_message_bytes => Some((
                Stage::Limit,
                format!(
                    "message of {size} bytes (key and value) exceeds decode.max_message_bytes ({max_message_bytes})",
                ),
            )),
            Some(p) if p.iter().all(u8::is_ascii_whitespace) => {
                Some((Stage::Decode, "empty payload".to_string()))
            }
            _ => None,
        };
        // Keys and refused payloads are held until the flush too: they count.
        self.held_bytes += m.key.map_or(0, <[u8]>::len);
        match refused {
            Some((stage, error)) => {
                self.held_bytes += m.payload.map_or(0, <[u8]>::len);
                self.dead.push(dead_letter(m, stage, error));
                self.slots.push(Slot::Rejected);
                false
            }
            None => true,
        }
    }

    /// Buffer the bytes of an admitted message; returns them as stored.
    pub fn push_row(&mut self, bytes: &[u8]) -> &[u8] {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.slots.push(Slot::Row {
            start,
            end: self.buf.len(),
        });
        &self.buf[start..]
    }

    pub fn push_tombstone(&mut self) {
        self.slots.push(Slot::Tombstone);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether message `i` is a dead letter already.
    pub fn is_rejected(&self, i: usize) -> bool {
        matches!(self.slots.get(i), Some(Slot::Rejected))
    }

    /// Bytes the chunk holds for its messages: payloads, keys, refused payloads.
    pub fn bytes(&self) -> usize {
        self.buf.len() + self.held_bytes
    }

    /// Give up on decoding: every message not rejected yet becomes a dead letter at
    /// `stage` with `error`, and the batch holds no rows. For a decoder that failed in a
    /// way it could not isolate to messages; nothing is lost.
    pub fn abandon(&mut self, table: &str, stage: Stage, error: &str) -> Result<SourceBatch> {
        for i in self.candidates() {
            self.reject(i, stage, error.to_string());
        }
        self.finish(table, None)
    }

    pub fn payload(&self, i: usize) -> Option<&[u8]> {
        match self.slots[i] {
            Slot::Row { start, end } => Some(&self.buf[start..end]),
            Slot::Tombstone | Slot::Rejected => None,
        }
    }

    /// Messages still to decode (rows and tombstones), in order.
    pub fn candidates(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| !matches!(self.slots[*i], Slot::Rejected))
            .collect()
    }

    /// Make message `i` a dead letter.
    pub fn reject(&mut self, i: usize, stage: Stage, error: String) {
        let payload = self.payload(i).map(<[u8]>::to_vec);
        self.dead.push(DeadLetter {
            topic: self.topic_value(i),
            partition: self.partitions.values_slice()[i],
            offset: self.offsets.values_slice()[i],
            timestamp_ms: self.timestamp_value(i),
            key: self.key_value(i),
            payload,
            stage,
            error,
        });
        self.slots[i] = Slot::Rejected;
    }

    /// The batch of everything buffered: `rows` (one per message not rejected, in message
    /// order) with their lineage, and the dead letters. The chunk is empty afterwards.
    pub fn finish(&mut self, table: &str, rows: Option<RecordBatch>) -> Result<SourceBatch> {
        let good: Vec<bool> = self
            .slots
            .iter()
            .map(|s| !matches!(s, Slot::Rejected))
            .collect();
        let lineage = self.lineage(&good)?;
        let rows = match rows {
            Some(payload) => {
                let schema = with_lineage(&payload.schema());
                let mut columns: Vec<ArrayRef> = payload.columns().to_vec();
                columns.extend(lineage);
                Some(RecordBatch::try_new(schema, columns)?)
            }
            None => None,
        };
        let mut dead = std::mem::take(&mut self.dead);
        dead.sort_by_key(|d| (d.topic.clone(), d.partition, d.offset));
        let batch = SourceBatch {
            table: table.to_string(),
            rows,
            offsets: std::mem::take(&mut self.ranges),
            dead_letters: dead,
            source_bytes: self.bytes(),
        };
        self.buf.clear();
        self.slots.clear();
        self.held_bytes = 0;
        Ok(batch)
    }

    /// Lineage columns of the messages marked good, in message order.
    fn lineage(&mut self, good: &[bool]) -> Result<Vec<ArrayRef>> {
        let n = good.len();
        let micros = chrono::Utc::now().timestamp_micros();
        let days = micros.div_euclid(86_400_000_000) as i32;
        let all: Vec<ArrayRef> = vec![
            Arc::new(self.topics.finish()),
            Arc::new(self.partitions.finish()),
            Arc::new(self.offsets.finish()),
            Arc::new(self.timestamps.finish()),
            Arc::new(self.keys.finish()),
            Arc::new(TimestampMicrosecondArray::from(vec![micros; n]).with_timezone("UTC")),
            Arc::new(Date32Array::from(vec![days; n])),
        ];
        if good.iter().all(|g| *g) {
            return Ok(all);
        }
        let mask = BooleanArray::from(good.to_vec());
        all.iter()
            .map(|a| arrow::compute::filter(a, &mask).map_err(Into::into))
            .collect()
    }

    fn topic_value(&self, i: usize) -> String {
        let offsets = self.topics.offsets_slice();
        let (s, e) = (offsets[i] as usize, offsets[i + 1] as usize);
        String::from_utf8_lossy(&self.topics.values_slice()[s..e]).into_owned()
    }

    fn timestamp_value(&self, i: usize) -> Option<i64> {
        let valid = self
            .timestamps
            .validity_slice()
            .is_none_or(|v| v[i / 8] & (1 << (i % 8)) != 0);
        valid.then(|| self.timestamps.values_slice()[i] / 1000)
    }

    fn key_value(&self, i: usize) -> Option<Vec<u8>> {
        let valid = self
            .keys
            .validity_slice()
            .is_none_or(|v| v[i / 8] & (1 << (i % 8)) != 0);
        let offsets = self.keys.offsets_slice();
        let (s, e) = (offsets[i] as usize, offsets[i + 1] as usize);
        valid.then(|| self.keys.values_slice()[s..e].to_vec())
    }
}

/// Decode `msgs` with `try_decode`; when that fails, split them in halves and recurse, so
/// `k` bad messages among `n` cost `O(k log n)` decodes. Good runs go to `parts` in
/// message order, each bad message to `bad` with its error.
pub(crate) fn bisect(
    msgs: &[usize],
    try_decode: &mut dyn FnMut(&[usize]) -> std::result::Result<RecordBatch, String>,
    parts: &mut Vec<RecordBatch>,
    bad: &mut Vec<(usize, String)>,
) {
    if msgs.is_empty() {
        return;
    }
    match try_decode(msgs) {
        Ok(b) => parts.push(b),
        Err(e) if msgs.len() == 1 => bad.push((msgs[0], e)),
        Err(_) => {
            let (l, r) = msgs.split_at(msgs.len() / 2);
            bisect(l, try_decode, parts, bad);
            bisect(r, try_decode, parts, bad);
        }
    }
}

pub(crate) fn dead_letter(m: &RawMessage<'_>, stage: Stage, error: String) -> DeadLetter {
    DeadLetter {
        topic: m.topic.to_string(),
        partition: m.partition,
        offset: m.offset,
        timestamp_ms: m.timestamp_ms,
        key: m.key.map(<[u8]>::to_vec),
        payload: m.payload.map(<[u8]>::to_vec),
        stage,
        error,
    }
}
