//! What every decoder keeps for the messages buffered between two flushes: their
//! bytes, their Kafka lineage, the offset range per partition and the dead letters, and
//! the bisection that isolates bad messages in `O(k log n)` decodes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, Date32Array, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, StructArray, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::DataType;
use sluice_pipeline::lineage::{HeaderSpec, with_lineage_and_headers};
use sluice_pipeline::{DeadLetter, OffsetRange, SourceBatch, Stage, TopicPartition};

use super::{RawHeaders, RawMessage};
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
    /// The Kafka headers the table captures, one builder per declared header.
    headers: Option<(Arc<HeaderSpec>, Vec<BinaryBuilder>)>,
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
            headers: None,
        }
    }

    /// Capture the headers `spec` declares, from the next message on.
    pub fn capture_headers(&mut self, spec: Arc<HeaderSpec>) {
        if self.headers.is_none() && self.slots.is_empty() {
            let builders = spec
                .headers()
                .iter()
                .map(|_| BinaryBuilder::new())
                .collect();
            self.headers = Some((spec, builders));
        }
    }

    /// The declared headers of `m` (the last one of each name, as Kafka's `lastHeader`
    /// reads them), the bytes of every header read, and why the message cannot become a
    /// row, if so. Errors name the declared headers, never values.
    fn read_declared<'m>(
        &self,
        m: &RawMessage<'m>,
    ) -> (Vec<Option<&'m [u8]>>, usize, Option<String>) {
        let Some((spec, _)) = self.headers.as_ref() else {
            return (Vec::new(), 0, None);
        };
        let mut picked: Vec<Option<&[u8]>> = vec![None; spec.headers().len()];
        let (mut bytes, mut problem) = (0, None);
        match m.headers {
            RawHeaders::Read(list) => {
                for (name, value) in list {
                    bytes += name.len() + value.map_or(0, <[u8]>::len);
                    if let Some(i) = spec.position(name.as_bytes()) {
                        picked[i] = *value;
                    }
                }
            }
            RawHeaders::Unreadable => {
                problem = Some("a Kafka header's name is not valid UTF-8".to_string());
            }
            RawHeaders::NotRead => {}
        }
        for ((name, dt), v) in spec.headers().iter().zip(&picked) {
            if *dt == DataType::Utf8 && v.is_some_and(|v| std::str::from_utf8(v).is_err()) {
                problem.get_or_insert_with(|| {
                    format!("Kafka header '{name}' is not valid UTF-8 (declared string)")
                });
            }
        }
        (picked, bytes, problem)
    }

    /// Append one message's declared headers (`None`: a refused message, all null);
    /// returns the bytes now held.
    fn append_headers(&mut self, picked: Option<&[Option<&[u8]>]>) -> usize {
        let Some((_, builders)) = self.headers.as_mut() else {
            return 0;
        };
        let mut held = 0;
        for (i, b) in builders.iter_mut().enumerate() {
            let v = picked.and_then(|p| p[i]);
            held += v.map_or(0, <[u8]>::len);
            b.append_option(v);
        }
        held
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
        let (picked, header_bytes, header_problem) = self.read_declared(m);
        // The key and the headers read count: a megabyte key costs what a megabyte value does.
        let size = m.payload.map_or(0, <[u8]>::len) + m.key.map_or(0, <[u8]>::len) + header_bytes;
        let refused = match m.payload {
            _ if size > max_message_bytes => Some((
                Stage::Limit,
                format!(
                    "message of {size} bytes (key, value and headers read) exceeds decode.max_message_bytes ({max_message_bytes})",
                ),
            )),
            _ if header_problem.is_some() => header_problem.map(|e| (Stage::Decode, e)),
            Some(p) if p.iter().all(u8::is_ascii_whitespace) => {
                Some((Stage::Decode, "empty payload".to_string()))
            }
            _ => None,
        };
        // Keys, captured headers and refused payloads are held until the flush too: they
        // count. A refused message's headers are not kept.
        let captured = self.append_headers(refused.is_none().then_some(&picked[..]));
        self.held_bytes += m.key.map_or(0, <[u8]>::len) + captured;
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
        let rows = match rows {
            Some(payload) => {
                let lineage = self.lineage(&good)?;
                let schema = with_lineage_and_headers(
                    &payload.schema(),
                    self.headers.as_ref().map(|(spec, _)| spec.as_ref()),
                );
                let mut columns: Vec<ArrayRef> = payload.columns().to_vec();
                columns.extend(lineage);
                Some(RecordBatch::try_new(schema, columns)?)
            }
            None => {
                self.clear_lineage();
                None
            }
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

    /// Drop the lineage buffered (no message became a row).
    fn clear_lineage(&mut self) {
        self.topics.finish();
        self.partitions.finish();
        self.offsets.finish();
        self.timestamps.finish();
        self.keys.finish();
        for b in self.headers.iter_mut().flat_map(|(_, b)| b.iter_mut()) {
            b.finish();
        }
    }

    /// Lineage columns of the messages marked good, in message order.
    fn lineage(&mut self, good: &[bool]) -> Result<Vec<ArrayRef>> {
        let n = good.len();
        let micros = chrono::Utc::now().timestamp_micros();
        let days = micros.div_euclid(86_400_000_000) as i32;
        let mut all: Vec<ArrayRef> = vec![
            Arc::new(self.topics.finish()),
            Arc::new(self.partitions.finish()),
            Arc::new(self.offsets.finish()),
            Arc::new(self.timestamps.finish()),
            Arc::new(self.keys.finish()),
            Arc::new(TimestampMicrosecondArray::from(vec![micros; n]).with_timezone("UTC")),
            Arc::new(Date32Array::from(vec![days; n])),
        ];
        if let Some((spec, builders)) = self.headers.as_mut() {
            let columns = builders
                .iter_mut()
                .zip(spec.headers())
                .map(|(b, (_, dt))| arrow::compute::cast(&b.finish(), dt))
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
            all.push(Arc::new(StructArray::try_new_with_length(
                spec.fields(),
                columns,
                None,
                n,
            )?));
        }
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
pub(crate) fn bisect<T>(
    msgs: &[usize],
    try_decode: &mut dyn FnMut(&[usize]) -> std::result::Result<T, String>,
    parts: &mut Vec<T>,
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
