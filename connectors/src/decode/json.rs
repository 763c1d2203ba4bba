//! JSON messages → Arrow rows, with per-message isolation of bad input.
//!
//! Messages are fed to arrow-json's streaming [`Decoder`] as they are polled, so bytes
//! go straight into Arrow builders; no message is turned into a dynamic value on the
//! hot path. Each message must add exactly one row: the decoder is checked after every
//! message (one row more, no half-read record).
//!
//! When a chunk fails (a malformed message, a wrong type, an unknown field), the chunk is
//! decoded again by bisection, which isolates each bad message in `O(k log n)` decodes
//! for `k` bad messages among `n`. A bad message is then classified: not JSON, empty or
//! not an object → stage `decode`; beyond a limit (nesting depth, fields: see
//! [`super::limits`]) → stage `limit`; a JSON object with fields the table lacks → the
//! schema is widened with them (additive evolution) if allowed, once per chunk for all such
//! messages together and within the limits on columns; a field named like a column sluice
//! adds, or differing from another only in case, and anything else → stage `schema`.
//!
//! Every call into the JSON machinery runs under [`guard`]: a panic on some message
//! fails its decode like an error does, and bisection isolates the message.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, ReaderBuilder, infer_json_schema_from_iterator};
use sluice_pipeline::{SourceBatch, Stage};

pub use super::RawMessage;
use super::chunk::{Chunk, Slot, bisect};
use super::debezium::unify_images;
use super::limits::{DecodeLimits, count_fields, json_outline, name_problem, printable};
use super::screen::{Shape, Verdict};
use crate::error::{Error, Result};
use crate::evolve::{adds_only, case_twins, conform, merge_fields, with_new_fields};
pub use sluice_pipeline::error::scrub_values;
use sluice_pipeline::metrics::COLUMNS_REFUSED_TOTAL;
use sluice_pipeline::panic::guard;

/// Settings of a [`JsonDecoder`].
#[derive(Debug, Clone)]
pub struct JsonDecoderConfig {
    /// Destination table of the rows.
    pub table: String,
    /// Message size, nesting, fields and columns a message may bring (beyond: a dead
    /// letter).
    pub limits: DecodeLimits,
    /// Widen the schema with new fields of well-formed messages.
    pub schema_evolution: bool,
    /// Most messages buffered before [`JsonDecoder::finish`]; sizes the decoder's buffers.
    pub max_messages: usize,
    /// The messages are change-event envelopes (`before`/`after` row images): both images
    /// get one row type, inferred from either, so a first chunk of inserts (no `before`)
    /// does not fix `before` to a type later deletes cannot fit.
    pub envelope: bool,
}

/// The `payload` of a Kafka Connect JSON message written with schemas
/// (`{"schema": {...}, "payload": {...}}`, as Debezium emits by default); any other
/// message is returned as it is. A `null` payload reads as an empty object (a tombstone).
pub fn unwrap_connect_envelope(bytes: &[u8]) -> &[u8] {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        #[serde(rename = "schema")]
        _schema: serde::de::IgnoredAny,
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let rest = start.map_or(&[][..], |i| &bytes[i..]);
    let after_brace = rest.strip_prefix(b"{").map(|r| r.trim_ascii_start());
    if !after_brace.is_some_and(|r| r.starts_with(b"\"schema\"") || r.starts_with(b"\"payload\"")) {
        return bytes;
    }
    match serde_json::from_slice::<Envelope<'_>>(bytes) {
        Ok(e) => {
            let p = e.payload.get().as_bytes();
            if p == b"null" { b"{}" } else { p }
        }
        Err(_) => bytes,
    }
}

/// Decodes the JSON messages bound for one table into [`SourceBatch`]es.
pub struct JsonDecoder {
    config: JsonDecoderConfig,
    /// Payload schema; `None` until known (declared, read from the table, or inferred).
    schema: Option<SchemaRef>,
    decoder: Option<Decoder>,
    /// The fast path failed for this chunk: rebuild it by bisection at `finish`.
    dirty: bool,
    /// The last chunk held messages that did not fit: this one skips the fast path
    /// (which would likely fail too, wasting a pass) and goes straight to the screen.
    suspect_next: bool,
    chunk: Chunk,
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("table", &self.config.table)
            .field("buffered", &self.chunk.len())
            .finish()
    }
}

/// A strict decoder for `schema`, expecting up to `rows` rows between flushes.
pub(super) fn build_decoder(schema: &SchemaRef, rows: usize) -> Result<Decoder> {
    ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.max(1) + 1)
        .with_strict_mode(true)
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|source| Error::JsonDecoder { source })
}

impl JsonDecoder {
    /// A decoder for `config.table`, with a known payload schema or none (inferred later).
    pub fn new(config: JsonDecoderConfig, schema: Option<SchemaRef>) -> Self {
        Self {
            config,
            schema,
            decoder: None,
            dirty: false,
            suspect_next: false,
            chunk: Chunk::new(),
        }
    }

    /// The payload schema, once known.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// Messages buffered since the last [`JsonDecoder::finish`].
    pub fn len(&self) -> usize {
        self.chunk.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunk.len() == 0
    }

    /// Capture the Kafka headers `spec` declares into the `_kafka_headers` column.
    pub fn capture_headers(&mut self, spec: std::sync::Arc<sluice_pipeline::lineage::HeaderSpec>) {
        self.chunk.capture_headers(spec);
    }

    pub(crate) fn chunk_mut(&mut self) -> &mut Chunk {
        &mut self.chunk
    }

    /// The destination table.
    pub fn table(&self) -> &str {
        &self.config.table
    }

    /// Buffer one message.
    pub fn push(&mut self, m: &RawMessage<'_>) {
        if !self.chunk.admit(m, self.config.limits.max_message_bytes) {
            return;
        }
        // A tombstone is a row of nulls: the empty object.
        let bytes = self
            .chunk
            .push_row(m.payload.map_or(&b"{}"[..], unwrap_connect_envelope));
        if self.dirty {
            return;
        }
        if self.suspect_next {
            self.dirty = true;
            return;
        }
        let Some(schema) = self.schema.clone() else {
            self.dirty = true;
            return;
        };
        if self.decoder.is_none() {
            match build_decoder(&schema, self.config.max_messages) {
                Ok(d) => self.decoder = Some(d),
                Err(_) => {
                    self.dirty = true;
                    return;
                }
            }
        }
        if let Some(d) = self.decoder.as_mut() {
            let before = d.len();
            let ok = guard(|| {
                test_panic(bytes);
                matches!(d.decode(bytes), Ok(n) if n == bytes.len())
                    && d.len() == before + 1
                    && !d.has_partial_record()
            })
            .unwrap_or(false);
            if !ok {
                self.dirty = true;
                self.decoder = None;
            }
        }
    }

    /// Turn everything buffered into one batch (good rows with lineage, dead letters).
    pub fn finish(&mut self) -> Result<Option<SourceBatch>> {
        if self.chunk.len() == 0 {
            return Ok(None);
        }
        let any_row = self
            .chunk
            .slots
            .iter()
            .any(|s| matches!(s, Slot::Row { .. }));
        let fast = if self.dirty {
            None
        } else {
            match self.decoder.take().map(|mut d| {
                guard(move || d.flush())
                    .unwrap_or_else(|p| Err(ArrowError::ExternalError(Box::new(p))))
            }) {
                Some(Ok(Some(b))) => Some(b),
                Some(Ok(None)) if !any_row => None,
                _ => {
                    self.dirty = true;
                    None
                }
            }
        };
        let rows = match fast {
            Some(b) => Some(b),
            None if self.dirty => self.decode_slow()?,
            None => None,
        };
        tracing::debug!(table = %self.config.table, slots = self.chunk.len(), rows = rows.as_ref().map_or(0, RecordBatch::num_rows), dirty = self.dirty, "chunk decoded");
        self.dirty = false;
        self.decoder = None;
        self.chunk.finish(&self.config.table, rows).map(Some)
    }

    /// Decode the chunk by bisection; bad messages become dead letters. With evolution
    /// on, the fields the bad messages bring widen the schema once: the rows already
    /// decoded gain the new columns as nulls, and only the bad messages are decoded again.
    fn decode_slow(&mut self) -> Result<Option<RecordBatch>> {
        let mut looks = Inspections::default();
        if self.schema.is_none() {
            self.schema = self.infer(&self.chunk.candidates(), &mut looks);
        }
        let Some(schema) = self.schema.clone() else {
            // Nothing parsed as a JSON object within the limits: every candidate is a dead
            // letter.
            for i in self.chunk.candidates() {
                let (stage, error) = self.classify(i, None, &mut looks);
                self.chunk.reject(i, stage, error);
            }
            return Ok(None);
        };
        let (mut parts, mut bad) = self.decode_screened(&schema, &self.chunk.candidates())?;
        let mut schema = schema;
        if self.config.schema_evolution && !bad.is_empty() {
            let (wider, refused) = self.widen(&schema, &bad, &mut looks);
            for (i, stage, error) in refused {
                self.chunk.reject(i, stage, error);
            }
            if let Some(wider) = wider {
                self.schema = Some(wider.clone());
                (parts, bad) = self.decode_widened(&schema, &wider, parts, bad)?;
                schema = wider;
            }
        }
        self.suspect_next = !bad.is_empty();
        for (i, err) in bad {
            if self.chunk.is_rejected(i) {
                continue;
            }
            let (stage, error) = self.classify(i, Some(err), &mut looks);
            self.chunk.reject(i, stage, error);
        }
        in_message_order(&schema, &parts)
    }

    /// After `wider` replaced `schema`, the schema `parts` were decoded with: the parts with
    /// the new columns as nulls, and the `bad` messages (those not refused meanwhile)
    /// decoded again. When `wider` changed a type (the row images of change events unified
    /// to a wider number) or a part does not convert, the whole chunk is decoded again
    /// instead: values are read from the messages, never cast.
    #[allow(clippy::type_complexity)]
    fn decode_widened(
        &self,
        schema: &SchemaRef,
        wider: &SchemaRef,
        parts: Vec<Part>,
        bad: Vec<(usize, String)>,
    ) -> Result<(Vec<Part>, Vec<(usize, String)>)> {
        let as_struct = |s: &SchemaRef| DataType::Struct(s.fields().clone());
        let table = &self.config.table;
        let conformed = adds_only(&as_struct(schema), &as_struct(wider)).then(|| {
            parts
                .into_iter()
                .map(|p| {
                    let rows = conform(table, &p.rows, wider).ok()?;
                    Some(Part { rows, msgs: p.msgs })
                })
                .collect::<Option<Vec<Part>>>()
        });
        let Some(Some(mut parts)) = conformed else {
            return self.decode_screened(wider, &self.chunk.candidates());
        };
        let again: Vec<usize> = bad
            .into_iter()
            .map(|(i, _)| i)
            .filter(|i| !self.chunk.is_rejected(*i))
            .collect();
        let (more, bad) = self.decode_screened(wider, &again)?;
        parts.extend(more);
        Ok((parts, bad))
    }

    /// Decode `candidates`: the messages the screen passes in one go (bisected only if
    /// that fails after all), each suspect on its own. The rows in parts, and the messages
    /// that did not decode with their errors.
    #[allow(clippy::type_complexity)]
    fn decode_screened(
        &self,
        schema: &SchemaRef,
        candidates: &[usize],
    ) -> Result<(Vec<Part>, Vec<(usize, String)>)> {
        let shape = Shape::of(schema.fields());
        let mut likely = Vec::with_capacity(candidates.len());
        let mut suspects = Vec::new();
        let mut bad = Vec::new();
        for i in candidates {
            match self
                .chunk
                .payload(*i)
                .map_or(Verdict::MayFit, |b| shape.look(b))
            {
                Verdict::MayFit => likely.push(*i),
                Verdict::Suspect => suspects.push(*i),
                // Not tried alone: the strict decoder refuses it.
                Verdict::SurelyNot(error) => bad.push((*i, error)),
            }
        }
        let mut parts = Vec::new();
        bisect(
            &likely,
            &mut |msgs| {
                self.try_decode(schema, msgs).map(|rows| Part {
                    rows,
                    msgs: msgs.to_vec(),
                })
            },
            &mut parts,
            &mut bad,
        );
        for i in suspects {
            match self.try_decode(schema, &[i]) {
                Ok(rows) => parts.push(Part {
                    rows,
                    msgs: vec![i],
                }),
                Err(e) => bad.push((i, e)),
            }
        }
        // In message order: the first message bringing new fields widens the table first.
        bad.sort_unstable_by_key(|(i, _)| *i);
        Ok((parts, bad))
    }

    /// Decode `msgs` with a fresh decoder; any message not adding exactly one row fails,
    /// and so does a panic.
    fn try_decode(
        &self,
        schema: &SchemaRef,
        msgs: &[usize],
    ) -> std::result::Result<RecordBatch, String> {
        guard(|| {
            let mut d = build_decoder(schema, msgs.len()).map_err(|e| e.to_string())?;
            for (n, i) in msgs.iter().enumerate() {
                let bytes = self.chunk.payload(*i).unwrap_or_default();
                test_panic(bytes);
                let used = d.decode(bytes).map_err(|e| e.to_string())?;
                if used != bytes.len() || d.len() != n + 1 || d.has_partial_record() {
                    return Err("a message must hold exactly one JSON object".into());
                }
            }
            match d.flush() {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err("no rows".into()),
                Err(e) => Err(e.to_string()),
            }
        })
        .unwrap_or_else(|p| Err(p.to_string()))
    }

    /// [`Self::inspect`] of message `i`, done once per chunk.
    fn inspected<'a>(&self, i: usize, looks: &'a mut Inspections) -> &'a Inspection {
        looks.0.entry(i).or_insert_with(|| self.inspect(i))
    }

    /// The fields of message `i` as inferred, or why it is refused before any attempt to
    /// fit it to the table: not JSON, not an object (stage `decode`); too deep or too
    /// many fields (stage `limit`).
    fn inspect(&self, i: usize) -> Inspection {
        let bytes = self.chunk.payload(i).unwrap_or_default();
        let limits = &self.config.limits;
        let outline = json_outline(bytes);
        limits.check_depth(outline.depth)?;
        limits.check_members(outline.members)?;
        let parsed = guard(|| {
            test_panic(bytes);
            let value: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| (Stage::Decode, format!("malformed JSON: {e}")))?;
            if !value.is_object() {
                return Err((
                    Stage::Decode,
                    format!("expected a JSON object, found {}", json_kind(&value)),
                ));
            }
            infer_json_schema_from_iterator(std::iter::once(Ok::<_, ArrowError>(value))).map_err(
                |e| {
                    (
                        Stage::Schema,
                        format!(
                            "cannot infer column types: {}",
                            scrub_values(&e.to_string())
                        ),
                    )
                },
            )
        })
        .unwrap_or_else(|p| Err((Stage::Decode, p.to_string())))?;
        limits.check_message_fields(parsed.fields())?;
        Ok(parsed.fields().iter().map(|f| f.as_ref().clone()).collect())
    }

    /// Why message `i` cannot be decoded.
    fn classify(
        &self,
        i: usize,
        decode_error: Option<String>,
        looks: &mut Inspections,
    ) -> (Stage, String) {
        let fields = match self.inspected(i, looks) {
            Ok(f) => f,
            Err(refused) => return refused.clone(),
        };
        if let Some(schema) = &self.schema {
            let new: Vec<Field> = fields
                .iter()
                .filter(|f| schema.field_with_name(f.name()).is_err())
                .cloned()
                .collect();
            if let Some(problem) = name_problem(&new, schema, self.config.envelope) {
                return (Stage::Schema, problem);
            }
        }
        (
            Stage::Schema,
            format!(
                "does not fit the schema of table '{}': {}",
                self.config.table,
                decode_error.map_or_else(|| "no schema".into(), |e| scrub_values(&e))
            ),
        )
    }

    /// The schema widened by the fields the `bad` messages have and `schema` lacks, all
    /// at once, and the messages refused because their fields would break a limit or a
    /// naming rule. A message's fields are added only if it then fits; the first message
    /// bringing new fields may bring any number within `decode.max_columns`, after it the
    /// chunk adds at most `decode.max_new_columns_per_batch`.
    fn widen(
        &self,
        schema: &SchemaRef,
        bad: &[(usize, String)],
        looks: &mut Inspections,
    ) -> (Option<SchemaRef>, Vec<(usize, Stage, String)>) {
        let limits = &self.config.limits;
        let table = &self.config.table;
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns = count_fields(schema.fields());
        let mut added = 0;
        let mut attempts = 0;
        let mut refused = Vec::new();
        for (i, _) in bad {
            let Ok(theirs) = self.inspected(*i, looks) else {
                continue;
            };
            // New fields at any depth: a column added to the source table widens the
            // row images of change events as a new top-level field widens a table.
            let (mut wider, new) = with_new_fields(&fields, theirs);
            if new.count == 0 {
                continue;
            }
            if self.config.envelope {
                unify_images(&mut wider);
            }
            // Counted after both images took the new fields.
            let n = count_fields(&wider.clone().into()).saturating_sub(columns);
            let current = Schema::new(wider.clone());
            if let Some(problem) = name_problem(&new.fields, &current, self.config.envelope) {
                refused.push((*i, Stage::Schema, problem));
                continue;
            }
            if let Some((a, b)) = case_twins(&wider).filter(|_| case_twins(&fields).is_none()) {
                refused.push((
                    *i,
                    Stage::Schema,
                    format!(
                        "field '{}' differs only in case from field '{}' (Delta readers take them for one column)",
                        printable(&b),
                        printable(&a)
                    ),
                ));
                continue;
            }
            let error = if added > 0 && added + n > limits.max_new_columns_per_batch {
                Some(format!(
                    "would add {n} column(s) to table '{table}' after {added} this batch; decode.max_new_columns_per_batch is {}",
                    limits.max_new_columns_per_batch
                ))
            } else if columns + n > limits.max_columns {
                Some(format!(
                    "would widen table '{table}' to {} columns; decode.max_columns is {}",
                    columns + n,
                    limits.max_columns
                ))
            } else {
                None
            };
            if let Some(error) = error {
                refused.push((*i, Stage::Schema, error));
                continue;
            }
            // A message whose other fields do not fit either must not leave columns behind:
            // each candidate is tried alone (a bounded number of times per chunk).
            if attempts >= 2 * limits.max_new_columns_per_batch.max(1) {
                continue;
            }
            attempts += 1;
            let candidate: SchemaRef = Arc::new(nullable_without_null_types(&current));
            if self.try_decode(&candidate, &[*i]).is_ok() {
                fields = candidate
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                columns += n;
                added += n;
            }
        }
        if !refused.is_empty() {
            metrics::counter!(COLUMNS_REFUSED_TOTAL, "table" => table.clone())
                .increment(refused.len() as u64);
            tracing::warn!(
                table = %table,
                messages = refused.len(),
                columns = columns,
                "Messages refused: their new fields break a naming rule or a limit on the table's columns (see the dead letters)."
            );
        }
        let wider = (added > 0).then(|| Arc::new(Schema::new(fields)) as SchemaRef);
        (wider, refused)
    }

    /// Infer a payload schema from the well-formed objects among `msgs`, message by
    /// message: the first object sets the types and each later one may only widen them
    /// losslessly; a message that conflicts, or would break a limit or a naming rule, is
    /// left out (it becomes a dead letter).
    fn infer(&self, msgs: &[usize], looks: &mut Inspections) -> Option<SchemaRef> {
        let limits = &self.config.limits;
        let mut acc: Option<Vec<Field>> = None;
        let mut added = 0;
        for i in msgs {
            let Ok(fields) = self.inspected(*i, looks) else {
                continue;
            };
            let fields = fields.clone();
            if fields.is_empty() {
                continue;
            }
            let current = Schema::new(acc.clone().unwrap_or_default());
            let new: Vec<Field> = fields
                .iter()
                .filter(|f| current.field_with_name(f.name()).is_err())
                .cloned()
                .collect();
            let merged = match &acc {
                None => Some(fields),
                Some(current) => merge_fields(current, &fields),
            };
            let Some(merged) = merged else {
                continue;
            };
            // Checked against the merge: the row images of change events gain fields too.
            if name_problem(&new, &Schema::new(merged.clone()), self.config.envelope).is_some() {
                continue;
            }
            let n = count_fields(&new.into());
            if (added > 0 && added + n > limits.max_new_columns_per_batch)
                || count_fields(&merged.clone().into()) > limits.max_columns
            {
                continue;
            }
            added += n;
            acc = Some(merged);
        }
        let mut fields = acc?;
        if self.config.envelope {
            unify_images(&mut fields);
        }
        Some(Arc::new(nullable_without_null_types(&Schema::new(fields))))
    }
}

/// A message's fields as inferred, or why it is refused before any attempt to fit it.
type Inspection = std::result::Result<Vec<Field>, (Stage, String)>;

/// The inspections of a chunk's messages, each done once.
#[derive(Default)]
struct Inspections(std::collections::HashMap<usize, Inspection, foldhash::fast::RandomState>);

/// Rows decoded from some messages of a chunk: row `r` of `rows` is message `msgs[r]`.
struct Part {
    rows: RecordBatch,
    msgs: Vec<usize>,
}

/// The rows of `parts` (each of `schema`) as one batch in message order, copied once:
/// as runs of consecutive rows concatenated when the parts interleave in few runs (one
/// large part and a few rows decoded again after a widening: a copy per column, not a
/// gather per value), row by row otherwise.
fn in_message_order(schema: &SchemaRef, parts: &[Part]) -> Result<Option<RecordBatch>> {
    match parts {
        [] => Ok(None),
        [only] if only.msgs.is_sorted() => Ok(Some(only.rows.clone())),
        _ => {
            let mut at: Vec<(usize, usize, usize)> = parts
                .iter()
                .enumerate()
                .flat_map(|(p, part)| part.msgs.iter().enumerate().map(move |(r, m)| (*m, p, r)))
                .collect();
            at.sort_unstable_by_key(|(m, ..)| *m);
            if schema.fields().is_empty() {
                return Ok(Some(RecordBatch::try_new_with_options(
                    schema.clone(),
                    vec![],
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(at.len())),
                )?));
            }
            // Runs of rows consecutive in one part: (part, first row, rows).
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            for (_, p, r) in &at {
                match runs.last_mut() {
                    Some((q, first, n)) if q == p && *first + *n == *r => *n += 1,
                    _ => runs.push((*p, *r, 1)),
                }
            }
            if runs.len() * 64 <= at.len() {
                let slices: Vec<RecordBatch> = runs
                    .iter()
                    .map(|(p, first, n)| parts[*p].rows.slice(*first, *n))
                    .collect();
                return Ok(Some(arrow::compute::concat_batches(schema, &slices)?));
            }
            let at: Vec<(usize, usize)> = at.into_iter().map(|(_, p, r)| (p, r)).collect();
            let batches: Vec<&RecordBatch> = parts.iter().map(|p| &p.rows).collect();
            Ok(Some(interleave_record_batch(&batches, &at)?))
        }
    }
}

/// Every field nullable; fields only ever seen as `null` become strings (Delta has no null type).
fn nullable_without_null_types(schema: &Schema) -> Schema {
    fn fix(dt: &DataType) -> DataType {
        match dt {
            DataType::Null => DataType::Utf8,
            DataType::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|f| Arc::new(Field::new(f.name(), fix(f.data_type()), true)))
                    .collect(),
            ),
            DataType::List(item) => DataType::List(Arc::new(Field::new(
                item.name(),
                fix(item.data_type()),
                true,
            ))),
            other => other.clone(),
        }
    }
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), fix(f.data_type()), true))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
thread_local! {
    /// A payload the decoder panics on, for the tests of panic containment.
    static PANIC_ON: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// In tests, panic as a library might on the payload [`PANIC_ON`] names.
#[cfg(test)]
fn test_panic(bytes: &[u8]) {
    if PANIC_ON.with(|p| p.borrow().as_deref() == Some(bytes)) {
        panic!("a library panicked on this payload");
    }
}

#[cfg(not(test))]
fn test_panic(_: &[u8]) {}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_pipeline::{OffsetRange, TopicPartition};

    #[test]
    fn errors_keep_field_and_type_names_but_never_values() {
        assert_eq!(
            scrub_values(
                "Json error: whilst decoding field 'amount': failed to parse \"4111 1111\" as Int64"
            ),
            "Json error: whilst decoding field 'amount': failed to parse <value> as Int64"
        );
        assert_eq!(
            scrub_values("whilst decoding field 'a': expected string got {\"x\": 1}, then -12.5e3"),
            "whilst decoding field 'a': expected string got <value>, then <value>"
        );
        assert_eq!(
            scrub_values("failed to parse 07700900123 as Int32"),
            "failed to parse <value> as Int32"
        );
    }
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::Int64Type;

    fn decoder(schema: Option<SchemaRef>) -> JsonDecoder {
        JsonDecoder::new(
            JsonDecoderConfig {
                table: "t".into(),
                limits: DecodeLimits {
                    max_message_bytes: 1024,
                    ..DecodeLimits::default()
                },
                schema_evolution: true,
                max_messages: 1000,
                envelope: false,
            },
            schema,
        )
    }

    fn msg(offset: i64, payload: Option<&[u8]>) -> RawMessage<'_> {
        RawMessage {
            topic: "events",
            partition: 3,
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k"),
            payload,
            headers: Default::default(),
        }
    }

    fn schema_ab() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]))
    }

    fn offsets(b: &RecordBatch) -> Vec<i64> {
        b.column_by_name("_kafka_offset")
            .expect("lineage")
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    /// Every message is accounted for exactly once: as a row or as a dead letter.
    fn assert_accounted(batch: &SourceBatch, n: usize) {
        let rows = batch.rows.as_ref().map_or(0, RecordBatch::num_rows);
        assert_eq!(
            rows + batch.dead_letters.len(),
            n,
            "rows {rows} + dead {}",
            batch.dead_letters.len()
        );
    }

    /// A decoder panicking on one message (as a library might on hostile bytes) costs
    /// that message alone: it becomes a `decode` dead letter saying "internal error",
    /// quoting nothing of it, and the rest of its chunk lands, in order.
    #[test]
    fn a_decoder_panicking_on_one_message_dead_letters_only_that_message() {
        let trigger = br#"{"a": 3, "b": "secret-value"}"#;
        PANIC_ON.with(|p| *p.borrow_mut() = Some(trigger.to_vec()));
        for schema in [Some(schema_ab()), None] {
            let mut d = decoder(schema);
            d.push(&msg(0, Some(br#"{"a": 1, "b": "x"}"#)));
            d.push(&msg(1, Some(br#"{"a": 2}"#)));
            d.push(&msg(2, Some(trigger)));
            d.push(&msg(3, Some(br#"{"a": 4, "b": "y"}"#)));
            let batch = d.finish().expect("finish").expect("batch");
            assert_accounted(&batch, 4);
            let rows = batch.rows.as_ref().expect("rows");
            assert_eq!(offsets(rows), vec![0, 1, 3]);
            assert_eq!(batch.dead_letters.len(), 1);
            let dead = &batch.dead_letters[0];
            assert_eq!((dead.offset, dead.stage), (2, Stage::Decode));
            assert!(dead.error.contains("internal error"), "{}", dead.error);
            assert!(!dead.error.contains("secret"), "{}", dead.error);
            assert_eq!(dead.payload.as_deref(), Some(&trigger[..]), "kept whole");
        }
        PANIC_ON.with(|p| *p.borrow_mut() = None);
    }

    /// Declared headers land in one struct column, the last of each name winning, binary
    /// values byte for byte; a string header that is not UTF-8, headers the client could
    /// not read and headers past the size limit make dead letters naming the header and
    /// limit, never a value; a payload field called `_kafka_headers` cannot shadow it.
    #[test]
    fn declared_headers_land_in_one_column_and_bad_ones_make_dead_letters() {
        use crate::decode::RawHeaders;
        use sluice_pipeline::lineage::HeaderSpec;
        // Out of order: the spec sorts them.
        let spec = HeaderSpec::new(vec![
            ("ü-名前".into(), DataType::Utf8),
            ("x-sig".into(), DataType::Binary),
            ("traceparent".into(), DataType::Utf8),
        ]);
        let mut d = decoder(None);
        d.chunk_mut().capture_headers(Arc::new(spec));
        let big = vec![b'z'; 2000];
        let with = |offset, headers| RawMessage {
            headers,
            ..msg(offset, Some(br#"{"a": 1}"#))
        };
        let h0: &[(&str, Option<&[u8]>)] = &[
            ("traceparent", Some(b"00-abc")),
            ("x-sig", Some(&[1, 2])),
            ("Ünknown", Some(b"ignored")),
            ("TRACEPARENT", Some(b"not this one: names match exactly")),
            ("x-sig", Some(&[0xff, 0x00, 0xfe])),
            ("ü-名前", Some("Zoë".as_bytes())),
        ];
        let h2: &[(&str, Option<&[u8]>)] = &[("traceparent", Some(&[0xc3, 0x28, b'Q']))];
        let h4: &[(&str, Option<&[u8]>)] = &[("undeclared", Some(&big))];
        let h5: &[(&str, Option<&[u8]>)] =
            &[("traceparent", Some(b"first")), ("traceparent", None)];
        d.push(&with(0, RawHeaders::Read(h0)));
        d.push(&with(1, RawHeaders::Read(&[])));
        d.push(&with(2, RawHeaders::Read(h2)));
        d.push(&with(3, RawHeaders::Unreadable));
        d.push(&with(4, RawHeaders::Read(h4)));
        d.push(&with(5, RawHeaders::Read(h5)));
        d.push(&RawMessage {
            headers: RawHeaders::Read(h0),
            ..msg(6, Some(br#"{"_kafka_headers": {"traceparent": "forged"}}"#))
        });
        d.push(&RawMessage {
            headers: RawHeaders::Read(h0),
            ..msg(7, None)
        });
        let batch = d.finish().expect("finish").expect("batch");
        assert_accounted(&batch, 8);
        let rows = batch.rows.as_ref().expect("rows");
        assert_eq!(offsets(rows), vec![0, 1, 5, 7]);
        let last = rows.schema().field(rows.num_columns() - 1).clone();
        assert_eq!(last.name(), "_kafka_headers");
        let h = rows.column(rows.num_columns() - 1).as_struct();
        let names: Vec<&str> = h.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["traceparent", "x-sig", "ü-名前"]);
        let trace = h.column(0).as_string::<i32>();
        assert_eq!(
            trace.iter().collect::<Vec<_>>(),
            [Some("00-abc"), None, None, Some("00-abc")],
            "the last one wins, a null too; a tombstone keeps its headers"
        );
        let sig = h.column(1).as_binary::<i32>();
        let first: &[u8] = &[0xff, 0x00, 0xfe];
        assert_eq!(
            sig.iter().collect::<Vec<_>>(),
            [Some(first), None, None, Some(first)],
            "binary byte for byte"
        );
        let uni = h.column(2).as_string::<i32>();
        assert_eq!(uni.value(0), "Zoë");
        let dead: Vec<(i64, Stage, &str)> = batch
            .dead_letters
            .iter()
            .map(|d| (d.offset, d.stage, d.error.as_str()))
            .collect();
        assert_eq!(dead.len(), 4, "{dead:?}");
        assert_eq!((dead[0].0, dead[0].1), (2, Stage::Decode));
        assert!(
            dead[0].2.contains("'traceparent'") && !dead[0].2.contains("(Q"),
            "{dead:?}"
        );
        assert_eq!((dead[1].0, dead[1].1), (3, Stage::Decode));
        assert!(dead[1].2.contains("not valid UTF-8"), "{dead:?}");
        assert_eq!((dead[2].0, dead[2].1), (4, Stage::Limit));
        assert!(dead[2].2.contains("headers"), "{dead:?}");
        assert_eq!((dead[3].0, dead[3].1), (6, Stage::Schema), "{dead:?}");
        assert!(!dead[3].2.contains("forged"), "{dead:?}");
    }

    #[test]
    fn good_messages_become_rows_with_lineage() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(10, Some(br#"{"a": 1, "b": "x"}"#)));
        d.push(&msg(11, Some(br#"{"a": 2}"#)));
        let batch = d.finish().expect("finish").expect("batch");
        let rows = batch.rows.expect("rows");
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(offsets(&rows), vec![10, 11]);
        let a: &Int64Array = rows.column(0).as_primitive();
        assert_eq!(a.values().to_vec(), vec![1, 2]);
        assert_eq!(
            rows.schema().field(rows.num_columns() - 1).name(),
            "_ingest_date"
        );
        assert_eq!(
            batch.offsets[&TopicPartition::new("events", 3)],
            OffsetRange {
                first: 10,
                last: 11
            }
        );
        assert!(batch.dead_letters.is_empty());
    }

    #[test]
    fn schema_is_inferred_from_the_first_chunk() {
        let mut d = decoder(None);
        d.push(&msg(
            0,
            Some(br#"{"id": "A1", "balance": 10.5, "open": true}"#),
        ));
        d.push(&msg(
            1,
            Some(br#"{"id": "A2", "balance": -3.25, "open": false, "note": null}"#),
        ));
        let batch = d.finish().expect("finish").expect("batch");
        assert_accounted(&batch, 2);
        let rows = batch.rows.expect("rows");
        assert_eq!(rows.num_rows(), 2);
        let schema = d.schema().expect("schema now known");
        assert_eq!(
            schema
                .field_with_name("balance")
                .expect("balance")
                .data_type(),
            &DataType::Float64
        );
        assert_eq!(
            schema.field_with_name("note").expect("note").data_type(),
            &DataType::Utf8
        );
    }

    #[test]
    fn malformed_json_is_a_decode_dead_letter_and_neighbours_survive() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(0, Some(br#"{"a": 1}"#)));
        d.push(&msg(1, Some(br#"{"a": 2, "b": "#)));
        d.push(&msg(2, Some(br#"{"a": 3}"#)));
        let batch = d.finish().expect("finish").expect("batch");
        assert_accounted(&batch, 3);
        assert_eq!(offsets(batch.rows.as_ref().expect("rows")), vec![0, 2]);
        let dl = &batch.dead_letters[0];
        assert_eq!(
            (dl.offset, dl.partition, dl.topic.as_str(), dl.stage),
            (1, 3, "events", Stage::Decode)
        );
        assert!(dl.error.starts_with("malformed JSON"), "{}", dl.error);
        assert_eq!(dl.payload.as_deref(), Some(&br#"{"a": 2, "b": "#[..]));
        assert_eq!(dl.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(dl.timestamp_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn wrong_type_is_a_schema_dead_letter() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(0, Some(br#"{"a": {"nested": 1}}"#)));
        d.push(&msg(1, Some(br#"{"a": 5}"#)));
        let batch = d.finish().expect("finish").expect("batch");
        assert_accounted(&batch, 2);
        assert_eq!(batch.dead_letters[0].stage, Stage::Schema);
        assert_eq!(batch.dead_letters[0].offset, 0);
    }

    #[test]
    fn empty_payload_is_a_decode_dead_letter() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(0, Some(b"")));
        d.push(&msg(1, Some(b"  \n")));
        let batch = d.finish().expect("finish").expect("batch");
        assert!(batch.rows.is_none());
        assert_eq!(batch.dead_letters.len(), 2);
        assert!(
            batch
                .dead_letters
                .iter()
                .all(|d| d.stage == Stage::Decode && d.error == "empty payload")
        );
    }

    #[test]
    fn tombstone_lands_as_a_row_of_nulls_with_its_key() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(7, None));
        let batch = d.finish().expect("finish").expect("batch");
        let rows = batch.rows.expect("rows");
        assert_eq!(rows.num_rows(), 1);
        assert!(rows.column(0).is_null(0));
        let keys = rows
            .column_by_name("_kafka_key")
            .expect("key")
            .as_binary::<i32>();
        assert_eq!(keys.value(0), b"k");
    }

    #[test]
    fn oversized_message_is_kept_whole_in_the_dead_letter() {
        let mut d = decoder(Some(schema_ab()));
        let big = format!("{{\"b\": \"{}\"}}", "x".repeat(2000));
        d.push(&msg(0, Some(big.as_bytes())));
        let batch = d.finish().expect("finish").expect("batch");
        assert!(batch.rows.is_none());
        assert_eq!(
            batch.dead_letters[0].payload.as_ref().map(Vec::len),
            Some(big.len())
        );
        assert!(
            batch.dead_letters[0]
                .error
                .contains("exceeds decode.max_message_bytes")
        );
    }

    #[test]
    fn rows_decoded_out_of_order_are_put_back_in_message_order() {
        let part = |values: Vec<i64>, msgs: Vec<usize>| Part {
            rows: RecordBatch::try_from_iter([(
                "n",
                Arc::new(arrow::array::Int64Array::from(values)) as _,
            )])
            .expect("batch"),
            msgs,
        };
        let parts = [
            part(vec![10, 30, 50], vec![1, 3, 5]),
            part(vec![40, 20], vec![4, 2]),
        ];
        let schema = parts[0].rows.schema();
        let ordered = |parts: &[Part]| -> Vec<i64> {
            let sorted = in_message_order(&schema, parts)
                .expect("sorted")
                .expect("rows");
            sorted
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .expect("ints")
                .values()
                .to_vec()
        };
        assert_eq!(ordered(&parts), [10, 20, 30, 40, 50]);
        // One large part and a few rows between its runs (concatenated by runs), and the
        // same rows scattered over many parts (gathered row by row): message order both
        // ways, every row once.
        for scattered in [false, true] {
            let big: Vec<usize> = (0..1000).filter(|m| m % 100 != 7).collect();
            let few: Vec<usize> = (0..1000).filter(|m| m % 100 == 7).rev().collect();
            let mut parts = vec![
                part(big.iter().map(|m| *m as i64).collect(), big.clone()),
                part(few.iter().map(|m| *m as i64).collect(), few),
            ];
            if scattered {
                parts = (0..1000)
                    .rev()
                    .map(|m| part(vec![m as i64], vec![m as usize]))
                    .collect();
            }
            assert_eq!(ordered(&parts), (0..1000).collect::<Vec<i64>>());
        }
        // Rows of a schema without columns keep their count.
        let empty = Arc::new(Schema::empty());
        let none = |msgs: Vec<usize>| Part {
            rows: RecordBatch::try_new_with_options(
                empty.clone(),
                vec![],
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(msgs.len())),
            )
            .expect("batch"),
            msgs,
        };
        let rows = in_message_order(&empty, &[none(vec![2]), none(vec![0, 1])]).expect("rows");
        assert_eq!(rows.map(|b| b.num_rows()), Some(3));
    }

    #[test]
    fn two_objects_in_one_message_are_rejected() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(0, Some(br#"{"a": 1}{"a": 2}"#)));
        d.push(&msg(1, Some(br#"{"a": 3}"#)));
        let batch = d.finish().expect("finish").expect("batch");
        assert_accounted(&batch, 2);
        assert_eq!(batch.dead_letters[0].offset, 0);
        assert_eq!(batch.dead_letters[0].stage, Stage::Decode);
    }

    #[test]
    fn non_object_json_is_rejected() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(0, Some(b"[1,2]")));
        d.push(&msg(1, Some(b"42")));
        let batch = d.finish().expect("finish").expect("batch");
        assert_accounted(&batch, 2);
        assert!(batch.rows.is_none());
    }

    #[test]
    fn new_fields_widen_the_schema_and_old_rows_get_nulls() {
        let mut d = decoder(Some(schema_ab()));
        d.push(&msg(0, Some(br#"{"a": 1}"#)));
        d.push(&msg(1, Some(br#"{"a": 2, "c": 2.5}"#)));
        let batch = d.finish().expect("finish").expect("batch");
        assert_accounted(&batch, 2);
        let rows = batch.rows.expect("rows");
        let c = rows.column_by_name("c").expect("c added");
        assert!(c.is_null(0) && !c.is_null(1));
        // The wider schema stays for later chunks, which take the fast path again.
        d.push(&msg(2, Some(br#"{"a": 3, "c": 1.0}"#)));
        assert!(!d.dirty);
    }

    #[test]
    fn evolution_off_sends_unknown_fields_to_dead_letters() {
        let mut d = JsonDecoder::new(
            JsonDecoderConfig {
                table: "t".into(),
                limits: DecodeLimits {
                    max_message_bytes: 1024,
                    ..DecodeLimits::default()
                },
                schema_evolution: false,
                max_messages: 100,
                envelope: false,
            },
            Some(schema_ab()),
        );
        d.push(&msg(0, Some(br#"{"a": 2, "c": 2.5}"#)));
        let batch = d.finish().expect("finish").expect("batch");
        assert_eq!(batch.dead_letters[0].stage, Stage::Schema);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, every message ends up exactly once: a row or a dead letter.
        #[test]
        fn every_message_is_a_row_or_a_dead_letter(payloads in proptest::collection::vec(
            prop_oneof![
                Just(br#"{"a": 1, "b": "x"}"#.to_vec()),
                Just(br#"{"a": "not a number"}"#.to_vec()),
                Just(br#"{"a": 2, "z": [1, 2]}"#.to_vec()),
                Just(b"".to_vec()),
                Just(b"{".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
                // Any Unicode in names and values, any key, nested.
                (any::<String>(), "\\PC{0,30}", any::<i64>()).prop_map(|(k, v, n)| {
                    let mut o = serde_json::Map::new();
                    o.insert(k, serde_json::json!({"v": v, "n": n}));
                    o.insert("a".into(), serde_json::json!(n));
                    serde_json::Value::Object(o).to_string().into_bytes()
                }),
            ], 1..60)) {
            let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("b", DataType::Utf8, true)]));
            let mut d = JsonDecoder::new(
                JsonDecoderConfig { table: "t".into(), limits: DecodeLimits { max_message_bytes: 1024, ..DecodeLimits::default() }, schema_evolution: true, max_messages: 100, envelope: false },
                Some(schema),
            );
            for (i, p) in payloads.iter().enumerate() {
                d.push(&RawMessage { topic: "t", partition: 0, offset: i as i64, timestamp_ms: None, key: None, payload: Some(p), headers: Default::default() });
            }
            let batch = d.finish().expect("finish").expect("batch");
            let mut seen: Vec<i64> = batch.dead_letters.iter().map(|d| d.offset).collect();
            if let Some(rows) = &batch.rows {
                use arrow::array::AsArray;
                seen.extend(rows.column_by_name("_kafka_offset").expect("offset").as_primitive::<arrow::datatypes::Int64Type>().values().iter());
            }
            seen.sort();
            prop_assert_eq!(seen, (0..payloads.len() as i64).collect::<Vec<_>>());
        }
    }
}

#[cfg(test)]
mod inference_tests {
    use super::*;

    #[test]
    fn first_message_sets_types_and_a_conflicting_one_becomes_a_dead_letter() {
        let mut d = JsonDecoder::new(
            JsonDecoderConfig {
                table: "t".into(),
                limits: DecodeLimits {
                    max_message_bytes: 1024,
                    ..DecodeLimits::default()
                },
                schema_evolution: true,
                max_messages: 100,
                envelope: false,
            },
            None,
        );
        let payloads: [&[u8]; 4] = [
            br#"{"id": 1, "amount": 2}"#,
            br#"{"id": {"x": 1}}"#,
            br#"{"id": 3, "amount": 2.5}"#,
            br#"{"id": 4}"#,
        ];
        let batch = super::hostile_tests::push_all(&mut d, &payloads);
        assert_eq!(batch.rows.as_ref().map(RecordBatch::num_rows), Some(3));
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(
            (batch.dead_letters[0].offset, batch.dead_letters[0].stage),
            (1, Stage::Schema)
        );
        let schema = d.schema().expect("schema");
        assert_eq!(
            schema.field_with_name("id").expect("id").data_type(),
            &DataType::Int64
        );
        assert_eq!(
            schema
                .field_with_name("amount")
                .expect("amount")
                .data_type(),
            &DataType::Float64
        );
    }
}

#[cfg(test)]
mod hostile_tests {
    //! Messages chosen to break the decoder: each becomes a dead letter at its stage, or a
    //! row, and never stops the others.

    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    fn decoder(schema: Option<SchemaRef>, limits: DecodeLimits, envelope: bool) -> JsonDecoder {
        JsonDecoder::new(
            JsonDecoderConfig {
                table: "t".into(),
                limits,
                schema_evolution: true,
                max_messages: 10_000,
                envelope,
            },
            schema,
        )
    }

    pub(super) fn push_all(d: &mut JsonDecoder, payloads: &[impl AsRef<[u8]>]) -> SourceBatch {
        for (i, p) in payloads.iter().enumerate() {
            d.push(&RawMessage {
                topic: "t",
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: None,
                payload: Some(p.as_ref()),
                headers: Default::default(),
            });
        }
        d.finish().expect("finish").expect("batch")
    }

    fn offsets(b: &SourceBatch) -> Vec<i64> {
        b.rows.as_ref().map_or_else(Vec::new, |r| {
            r.column_by_name("_kafka_offset")
                .expect("lineage")
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
    }

    fn dead(b: &SourceBatch) -> Vec<(i64, Stage, String)> {
        b.dead_letters
            .iter()
            .map(|d| (d.offset, d.stage, d.error.clone()))
            .collect()
    }

    fn schema_id() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]))
    }

    /// When a chunk's new fields widen a type the rows decoded before had (the row images
    /// unified to a float), those rows are read again from their messages: 1.5 stays 1.5,
    /// never the integer the narrower column held cast back to a float.
    #[test]
    fn rows_of_a_chunk_whose_widening_changes_a_type_are_read_again_not_cast() {
        let image = DataType::Struct(vec![Field::new("x", DataType::Int64, true)].into());
        let schema = Arc::new(Schema::new(vec![
            Field::new("after", image, true),
            Field::new("op", DataType::Utf8, true),
        ]));
        let mut d = decoder(Some(schema), DecodeLimits::default(), true);
        let batch = push_all(
            &mut d,
            &[
                r#"{"after": {"x": 1.5}, "op": "u"}"#,
                r#"{"before": {"x": 2.5}, "after": {"x": 2}, "op": "u"}"#,
            ],
        );
        assert_eq!(offsets(&batch), vec![0, 1], "{:?}", dead(&batch));
        let rows = batch.rows.as_ref().expect("rows");
        let x = |image: &str| -> Vec<Option<f64>> {
            use arrow::array::Array as _;
            let s = rows.column_by_name(image).expect("image").as_struct();
            let x = s.column_by_name("x").expect("x");
            let x = x.as_primitive::<arrow::datatypes::Float64Type>();
            (0..s.len())
                .map(|i| (s.is_valid(i) && x.is_valid(i)).then(|| x.value(i)))
                .collect()
        };
        assert_eq!(x("after"), [Some(1.5), Some(2.0)]);
        assert_eq!(x("before"), [None, Some(2.5)]);
    }

    /// When the new columns a batch may add run out, the earlier message keeps its
    /// fields: a field new inside a struct (a suspect, decoded alone) before a new
    /// top-level field (refused by the screen without a decode).
    #[test]
    fn the_earliest_message_bringing_new_fields_widens_the_table_first() {
        let inner = DataType::Struct(vec![Field::new("a", DataType::Int64, true)].into());
        let mut d = decoder(
            Some(Arc::new(Schema::new(vec![Field::new("s", inner, true)]))),
            DecodeLimits {
                max_new_columns_per_batch: 1,
                ..DecodeLimits::default()
            },
            false,
        );
        let batch = push_all(
            &mut d,
            &[r#"{"s": {"a": 1, "b": 2}}"#, r#"{"s": {"a": 3}, "c": 4}"#],
        );
        assert_eq!(offsets(&batch), vec![0], "{:?}", dead(&batch));
        let letters = dead(&batch);
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].0, 1);
        assert!(
            letters[0]
                .2
                .contains("decode.max_new_columns_per_batch is 1"),
            "{letters:?}"
        );
    }

    /// A widening lands the messages its fields fit: one whose new field another message
    /// brought, one holding that field as null (inferred as no type at all), one holding
    /// it inside a struct; one that fails for another reason keeps its error. Without
    /// evolution, a field the screen knows the table lacks is a dead letter naming the
    /// field (the message was not tried on its own).
    #[test]
    fn a_widening_lands_the_messages_its_fields_fit_and_others_keep_their_errors() {
        let mut d = decoder(Some(schema_id()), DecodeLimits::default(), false);
        let batch = push_all(
            &mut d,
            &[
                r#"{"id": 1}"#,
                r#"{"id": 2, "ñame": "x"}"#,
                r#"{"id": {"nested": true}}"#,
                r#"{"id": 3, "ñame": "y"}"#,
                r#"{"id": "four"}"#,
                r#"{"id": 5}"#,
                r#"{"id": 6, "ñame": null}"#,
            ],
        );
        assert_eq!(offsets(&batch), vec![0, 1, 3, 5, 6], "{:?}", dead(&batch));
        let letters = dead(&batch);
        assert_eq!(letters.len(), 2, "{letters:?}");
        assert!(letters.iter().all(|(o, stage, e)| [2, 4].contains(o)
            && *stage == Stage::Schema
            && e.starts_with("does not fit the schema of table 't'")));
        let rows = batch.rows.as_ref().expect("rows");
        let new = rows
            .column_by_name("ñame")
            .expect("widened")
            .as_string::<i32>();
        assert_eq!(
            new.iter().collect::<Vec<_>>(),
            [None, Some("x"), Some("y"), None, None]
        );

        // The same inside a struct: a field new to it, and the same field as null.
        let inner = DataType::Struct(vec![Field::new("id", DataType::Int64, true)].into());
        let mut d = decoder(
            Some(Arc::new(Schema::new(vec![Field::new("s", inner, true)]))),
            DecodeLimits::default(),
            false,
        );
        let batch = push_all(
            &mut d,
            &[
                r#"{"s": {"id": 1, "k": "x"}}"#,
                r#"{"s": {"id": 2, "k": null}}"#,
                r#"{"s": {"id": 3}}"#,
            ],
        );
        assert_eq!(offsets(&batch), vec![0, 1, 2], "{:?}", dead(&batch));

        // With evolution off the same field is a dead letter naming it, escaped.
        let mut d = JsonDecoder::new(
            JsonDecoderConfig {
                schema_evolution: false,
                ..d.config.clone()
            },
            Some(schema_id()),
        );
        let batch = push_all(&mut d, &[r#"{"id": 1}"#, r#"{"id": 2, "ñame": "x"}"#]);
        assert_eq!(offsets(&batch), vec![0]);
        assert_eq!(
            batch.dead_letters[0].error,
            "does not fit the schema of table 't': column 'ñame' missing from schema"
        );
    }

    /// A column added to the source table mid-stream (top level of the row, and inside a
    /// nested struct) widens `before` and `after` alike, in a later chunk and within one;
    /// a changed type, a reserved name and a case twin inside the images stay dead letters.
    #[test]
    fn change_events_gaining_nested_fields_widen_both_images_and_type_changes_stay_dead() {
        let env = |op: &str, before: &str, after: &str, lsn: i64| {
            format!(
                r#"{{"before": {before}, "after": {after}, "source": {{"table": "t", "lsn": {lsn}}}, "op": "{op}", "ts_ms": 1}}"#
            )
        };
        let row = |id: i64| {
            format!(r#"{{"id": {id}, "name": "n{id}", "address": {{"line1": "l{id}"}}}}"#)
        };
        let mut d = decoder(None, DecodeLimits::default(), true);
        let first = push_all(
            &mut d,
            &[env("c", "null", &row(1), 1), env("u", &row(1), &row(1), 2)],
        );
        assert!(first.dead_letters.is_empty(), "{:?}", dead(&first));
        let wider_after = r#"{"id": 2, "name": "n2", "email": "e2", "address": {"line1": "l2", "postcode": "LS1 4AP", "geo": {"lat": 53.8}}}"#.to_string();
        let second = push_all(
            &mut d,
            &[
                env("c", "null", &wider_after, 3),
                env("u", &row(1), &row(1), 4),
                env(
                    "c",
                    "null",
                    r#"{"id": "three", "name": "n3", "address": {"line1": "l3"}}"#,
                    5,
                ),
                env(
                    "c",
                    "null",
                    r#"{"id": 6, "_cdc_op": "x", "address": {"line1": "l6"}}"#,
                    6,
                ),
                env(
                    "c",
                    "null",
                    r#"{"id": 7, "Name": "twin", "address": {"line1": "l7"}}"#,
                    7,
                ),
                env("d", &wider_after, "null", 8),
            ],
        );
        assert_eq!(offsets(&second), vec![0, 1, 5], "{:?}", dead(&second));
        let stages: Vec<(i64, Stage)> = dead(&second).iter().map(|(o, s, _)| (*o, *s)).collect();
        assert_eq!(
            stages,
            [(2, Stage::Schema), (3, Stage::Schema), (4, Stage::Schema)]
        );
        let rows = second.rows.as_ref().expect("rows");
        for image in ["before", "after"] {
            let DataType::Struct(f) = rows
                .schema()
                .field_with_name(image)
                .expect(image)
                .data_type()
                .clone()
            else {
                panic!("{image} is a struct");
            };
            let names: Vec<&str> = f.iter().map(|f| f.name().as_str()).collect();
            // Inferred fields come in name order, added ones after them.
            assert_eq!(names, ["address", "id", "name", "email"], "{image}");
            let DataType::Struct(address) = f[0].data_type().clone() else {
                panic!("address is a struct");
            };
            let names: Vec<&str> = address.iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names, ["line1", "geo", "postcode"], "{image}.address");
        }
        let after = rows.column_by_name("after").expect("after").as_struct();
        let email = after
            .column_by_name("email")
            .expect("email")
            .as_string::<i32>();
        assert_eq!(email.iter().collect::<Vec<_>>(), [Some("e2"), None, None]);
        for (_, _, e) in dead(&second) {
            assert!(!e.contains("three") && !e.contains("twin"), "{e}");
        }

        // Plain events widen nested objects the same way; a nested case twin is refused.
        let mut d = decoder(None, DecodeLimits::default(), false);
        let first = push_all(&mut d, &[r#"{"a": 1, "p": {"x": 1}}"#]);
        assert!(first.dead_letters.is_empty());
        let second = push_all(
            &mut d,
            &[
                r#"{"a": 2, "p": {"x": 2, "y": "z"}}"#,
                r#"{"a": 3, "p": {"x": 3, "X": 4}}"#,
            ],
        );
        assert_eq!(offsets(&second), vec![0], "{:?}", dead(&second));
        assert_eq!(dead(&second)[0].1, Stage::Schema);
        let rows = second.rows.as_ref().expect("rows");
        let p = rows.column_by_name("p").expect("p").as_struct();
        assert_eq!(
            p.column_by_name("y")
                .expect("y")
                .as_string::<i32>()
                .value(0),
            "z"
        );
    }

    #[test]
    fn a_tenth_of_hostile_messages_leaves_every_ordinary_row_whole_and_in_order() {
        use crate::demo::hostile::KINDS;
        for kind in &KINDS {
            let schema = Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("merchant", DataType::Utf8, true),
            ]));
            let mut d = decoder(Some(schema), DecodeLimits::default(), false);
            // Two chunks: the second skips the fast path after the first met suspects.
            for chunk in 0..2 {
                let payloads: Vec<Vec<u8>> = (0..200)
                    .map(|i| {
                        if i % 10 == 3 {
                            (kind.make)(chunk * 1000 + i)
                        } else {
                            format!(r#"{{"id": {i}, "merchant": "m{i}"}}"#).into_bytes()
                        }
                    })
                    .collect();
                let b = push_all(&mut d, &payloads);
                let rows = b.rows.as_ref().expect("rows");
                let ids = rows
                    .column_by_name("id")
                    .expect("id")
                    .as_primitive::<Int64Type>();
                let mut landed = Vec::new();
                for (row, offset) in offsets(&b).into_iter().enumerate() {
                    if offset % 10 != 3 {
                        assert_eq!(ids.value(row), offset, "{}: row {row}", kind.name);
                    }
                    landed.push(offset);
                }
                landed.extend(dead(&b).iter().map(|(o, _, _)| *o));
                landed.sort_unstable();
                assert_eq!(landed, (0..200).collect::<Vec<_>>(), "{}", kind.name);
                assert!(
                    dead(&b).iter().all(|(o, _, _)| o % 10 == 3),
                    "{}: {:?}",
                    kind.name,
                    dead(&b)
                );
            }
        }
    }

    #[test]
    fn fields_named_like_sluice_columns_are_schema_dead_letters_in_any_case() {
        for schema in [None, Some(schema_id())] {
            let mut d = decoder(schema, DecodeLimits::default(), false);
            let b = push_all(
                &mut d,
                &[
                    br#"{"id": 1}"#.to_vec(),
                    br#"{"id": 2, "_kafka_topic": 1}"#.to_vec(),
                    br#"{"id": 3, "_ingest_date": "2099-01-01"}"#.to_vec(),
                    br#"{"id": 4, "_KAFKA_OFFSET": 9}"#.to_vec(),
                    br#"{"id": 5, "ID": 5}"#.to_vec(),
                    br#"{"id": 6}"#.to_vec(),
                ],
            );
            assert_eq!(offsets(&b), vec![0, 5]);
            let dead = dead(&b);
            assert_eq!(
                dead.iter().map(|d| d.0).collect::<Vec<_>>(),
                vec![1, 2, 3, 4]
            );
            for (o, stage, error) in &dead {
                assert_eq!(*stage, Stage::Schema, "{o}: {error}");
            }
            assert!(dead[0].2.contains("reserved"), "{}", dead[0].2);
            assert!(dead[3].2.contains("differs only in case"), "{}", dead[3].2);
            let rows = b.rows.expect("rows");
            let names: Vec<&str> = rows
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .into_iter()
                .collect();
            assert_eq!(
                names
                    .iter()
                    .filter(|n| n.eq_ignore_ascii_case("_kafka_topic"))
                    .count(),
                1,
                "only the lineage column: {names:?}"
            );
        }
    }

    #[test]
    fn change_events_may_not_bring_columns_named_like_silver_bookkeeping() {
        let mut d = decoder(None, DecodeLimits::default(), true);
        let b = push_all(
            &mut d,
            &[
                br#"{"op": "c", "after": {"id": 1, "name": "a"}}"#.to_vec(),
                br#"{"op": "c", "after": {"id": 2, "_cdc_op": "x"}}"#.to_vec(),
            ],
        );
        assert_eq!(offsets(&b), vec![0]);
        assert_eq!(dead(&b)[0].1, Stage::Schema);
    }

    #[test]
    fn nesting_beyond_the_limit_is_a_limit_dead_letter() {
        let deep = |n: usize| {
            format!(
                "{{\"id\": 1, \"x\": {}1{}}}",
                "{\"a\":".repeat(n),
                "}".repeat(n)
            )
            .into_bytes()
        };
        let limits = DecodeLimits::default();
        for schema in [None, Some(schema_id())] {
            let mut d = decoder(schema, limits, false);
            let b = push_all(
                &mut d,
                &[
                    deep(120),
                    deep(200),
                    deep(limits.max_nesting_depth),
                    br#"{"id": 2}"#.to_vec(),
                ],
            );
            assert_eq!(offsets(&b), vec![2, 3], "{:?}", dead(&b));
            for (_, stage, error) in dead(&b) {
                assert_eq!(stage, Stage::Limit, "{error}");
                assert!(error.contains("decode.max_nesting_depth"), "{error}");
            }
        }
    }

    #[test]
    fn a_new_field_per_message_widens_a_table_a_bounded_amount_per_batch() {
        let limits = DecodeLimits {
            max_new_columns_per_batch: 10,
            max_columns: 30,
            ..DecodeLimits::default()
        };
        let mut d = decoder(Some(schema_id()), limits, false);
        let payloads: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("{{\"id\": {i}, \"f{i}\": 1}}").into_bytes())
            .collect();
        let b = push_all(&mut d, &payloads);
        assert_eq!(offsets(&b).len(), 10, "ten new columns this batch");
        assert_eq!(d.schema().expect("schema").fields().len(), 11);
        assert_eq!(b.dead_letters.len(), 490);
        assert!(
            b.dead_letters.iter().all(|l| l.stage == Stage::Schema
                && l.error.contains("decode.max_new_columns_per_batch"))
        );
        // Later batches go on, up to the table's total.
        for _ in 0..5 {
            push_all(&mut d, &payloads);
        }
        assert_eq!(d.schema().expect("schema").fields().len(), 30);
        let fresh: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("{{\"id\": {i}, \"g{i}\": 1}}").into_bytes())
            .collect();
        let b = push_all(&mut d, &fresh);
        assert!(offsets(&b).is_empty(), "no more columns");
        assert!(
            b.dead_letters
                .iter()
                .any(|l| l.error.contains("decode.max_columns"))
        );
        // Messages with the known fields still land.
        let b = push_all(&mut d, &[br#"{"id": 7, "f3": 2}"#.to_vec()]);
        assert_eq!(offsets(&b), vec![0]);
    }

    #[test]
    fn one_message_may_bring_many_columns_at_once_within_the_totals() {
        let limits = DecodeLimits {
            max_new_columns_per_batch: 10,
            ..DecodeLimits::default()
        };
        let mut d = decoder(Some(schema_id()), limits, false);
        let wide: String = (0..150).map(|i| format!(",\"c{i}\": {i}")).collect();
        let b = push_all(
            &mut d,
            &[
                format!("{{\"id\": 1{wide}}}").into_bytes(),
                br#"{"id": 2, "late": 1}"#.to_vec(),
            ],
        );
        assert_eq!(offsets(&b), vec![0], "{:?}", dead(&b));
        assert_eq!(d.schema().expect("schema").fields().len(), 151);
        assert_eq!(
            dead(&b)[0].1,
            Stage::Schema,
            "the second message waits for a batch of its own"
        );
    }

    #[test]
    fn too_many_fields_in_one_message_is_a_limit_dead_letter() {
        let wide: String = (0..3000).map(|i| format!(",\"c{i}\": 1")).collect();
        let mut d = decoder(None, DecodeLimits::default(), false);
        let b = push_all(
            &mut d,
            &[
                format!("{{\"id\": 1{wide}}}").into_bytes(),
                br#"{"id": 2}"#.to_vec(),
            ],
        );
        assert_eq!(offsets(&b), vec![1]);
        assert_eq!(dead(&b)[0].1, Stage::Limit);
        assert!(dead(&b)[0].2.contains("decode.max_fields"));
    }

    #[test]
    fn boundary_numbers_wrong_shapes_and_odd_bytes_never_stop_the_batch() {
        let mut d = decoder(None, DecodeLimits::default(), false);
        let mut payloads: Vec<Vec<u8>> = vec![
            br#"{"id": 1, "obj": {"a": 1}, "s": "x", "f": 1.5}"#.to_vec(),
            br#"{"id": 99999999999999999999999}"#.to_vec(),
            br#"{"id": 2, "f": 1e400}"#.to_vec(),
            br#"{"id": 3, "obj": "a string"}"#.to_vec(),
            br#"{"id": 4, "s": {"an": "object"}}"#.to_vec(),
            b"{\"id\": 5, \"s\": \"\xff\xfe\"}".to_vec(),
            b"\xc3\x28\xa0\xa1".to_vec(),
            format!("{{\"id\": 6, \"s\": \"{}\"}}", "x".repeat(1 << 20)).into_bytes(),
            br#"{"id": -9223372036854775808, "f": -0.0}"#.to_vec(),
            "{\"id\": 7, \"s\": \"名前 😀 \\u0000 \\ud800\"}"
                .as_bytes()
                .to_vec(),
            br#"{"id": 8}"#.to_vec(),
        ];
        payloads.push(br#"{"": 1, "id": 9}"#.to_vec());
        let b = push_all(&mut d, &payloads);
        let landed = offsets(&b);
        let mut all: Vec<i64> = landed.clone();
        all.extend(b.dead_letters.iter().map(|d| d.offset));
        all.sort_unstable();
        assert_eq!(
            all,
            (0..payloads.len() as i64).collect::<Vec<_>>(),
            "each once"
        );
        for must_land in [0, 8, 10] {
            assert!(landed.contains(&must_land), "{must_land}: {:?}", dead(&b));
        }
        for (o, _, error) in dead(&b) {
            assert!(
                !error.contains("9999999") && !error.contains("an\""),
                "{o}: {error}"
            );
        }
    }
}
