//! Avro messages → Arrow rows.
//!
//! Two framings: the Confluent wire format (magic byte `0`, the writer schema's id as a
//! 4-byte big-endian integer, then the Avro body), with schemas from a Schema Registry;
//! or plain Avro bodies written with one schema read from a `.avsc` file.
//!
//! Bodies are decoded by arrow-avro straight into Arrow builders, one decoder per writer
//! schema, kept between flushes. A chunk is decoded in runs of consecutive messages with
//! the same writer schema; a run that fails is decoded again by bisection, which isolates
//! each bad message. Rows of different writer schemas are merged into one batch by
//! additive evolution (new fields, nested ones included; ints widened to longs).
//!
//! Types are made ones a Delta table can hold: enums → strings, `uuid` → its text form,
//! `fixed` → binary, `time-millis`/`time-micros` → microseconds since midnight (long),
//! timestamps → microsecond timestamps in UTC (`local-timestamp-*` keep their wall-clock
//! reading), unions of several types → a struct with one field per branch.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, ListArray, MapArray, RecordBatch, RecordBatchOptions, StringArray,
    StructArray, UInt32Array, new_null_array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{
    DataType, Field, Fields, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType, UnionFields,
    UnionMode,
};
use arrow::error::ArrowError;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use sluice_pipeline::metrics::COLUMNS_REFUSED_TOTAL;
use sluice_pipeline::{SourceBatch, Stage};

use super::RawMessage;
use super::chunk::{Chunk, Slot, bisect};
use super::json::scrub_values;
use super::limits::{DecodeLimits, count_fields, name_problem};
use super::registry::{Lookup, SchemaRegistry};
use crate::error::Result;
use crate::evolve::{add_fields, conform_array, extend_fields, merge_fields, merge_types};
use sluice_pipeline::panic::guard;

/// Where the writer schemas come from.
#[derive(Debug, Clone)]
pub enum AvroSchemas {
    /// Confluent wire format; schemas by id from the registry.
    Registry(Arc<SchemaRegistry>),
    /// Plain Avro bodies, all written with this schema (the text of an `.avsc` file).
    File(Arc<str>),
}

/// Settings of an [`AvroDecoder`].
#[derive(Debug, Clone)]
pub struct AvroDecoderConfig {
    /// Destination table of the rows.
    pub table: String,
    /// Message size, nesting, fields and columns a writer schema may bring (beyond: its
    /// messages are dead letters).
    pub limits: DecodeLimits,
    /// The messages are change-event envelopes: the names of `before`/`after` fields
    /// become silver columns and are checked as such.
    pub envelope: bool,
    /// Most messages buffered before [`AvroDecoder::finish`].
    pub max_messages: usize,
    pub schemas: AvroSchemas,
}

/// The id under which the schema of an `.avsc` file is kept.
const FILE_SCHEMA_ID: u32 = 0;
/// Confluent framing: magic byte and 4-byte schema id.
const HEADER_LEN: usize = 5;

/// One writer schema.
enum Writer {
    /// Usable: its text and a decoder ready for the next run (`None` after a failure).
    Ready {
        text: Arc<str>,
        decoder: Option<Box<Decoder>>,
    },
    /// Every message written with it is a dead letter, with this stage and reason.
    Unusable { stage: Stage, error: String },
}

/// Decoded messages of a chunk: `msgs` in order, as `rows` (`None`: tombstones).
struct Part {
    msgs: Vec<usize>,
    rows: Option<RecordBatch>,
    schema_id: Option<u32>,
}

/// Decodes the Avro messages bound for one table into [`SourceBatch`]es.
pub struct AvroDecoder {
    config: AvroDecoderConfig,
    /// Payload schema of the table as known (read from the table or from decoded rows).
    schema: Option<SchemaRef>,
    chunk: Chunk,
    writers: HashMap<u32, Writer>,
}

impl std::fmt::Debug for AvroDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroDecoder")
            .field("table", &self.config.table)
            .field("buffered", &self.chunk.len())
            .finish()
    }
}

/// A decoder of bodies written with schema `text`, known as `id`.
fn build_decoder(id: u32, text: &str, rows: usize) -> std::result::Result<Decoder, String> {
    let fp = Fingerprint::Id(id);
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(fp, AvroSchema::new(text.to_string()))
        .map_err(|e| e.to_string())?;
    ReaderBuilder::new()
        .with_batch_size(rows.max(1) + 1)
        .with_writer_schema_store(store)
        .with_active_fingerprint(fp)
        .build_decoder()
        .map_err(|e| e.to_string())
}

impl AvroDecoder {
    /// A decoder for `config.table`; `schema` is the table's payload schema, if it exists.
    pub fn new(config: AvroDecoderConfig, schema: Option<SchemaRef>) -> Self {
        let mut writers = HashMap::new();
        if let AvroSchemas::File(text) = &config.schemas {
            writers.insert(
                FILE_SCHEMA_ID,
                Writer::Ready {
                    text: text.clone(),
                    decoder: None,
                },
            );
        }
        Self {
            config,
            schema,
            chunk: Chunk::new(),
            writers,
        }
    }

    /// Messages buffered since the last [`AvroDecoder::finish`].
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
        match m.payload {
            Some(p) => {
                self.chunk.push_row(p);
            }
            None => self.chunk.push_tombstone(),
        }
    }

    /// Turn everything buffered into one batch (good rows with lineage, dead letters).
    /// Fails only when a schema is needed that the registry cannot give right now.
    pub fn finish(&mut self) -> Result<Option<SourceBatch>> {
        if self.chunk.len() == 0 {
            return Ok(None);
        }
        // Runs of consecutive messages by writer schema (`None`: tombstones).
        let mut runs: Vec<(Option<u32>, Vec<usize>)> = Vec::new();
        for i in 0..self.chunk.len() {
            let key = match self.chunk.slots[i] {
                Slot::Rejected => continue,
                Slot::Tombstone => None,
                Slot::Row { .. } => match self.schema_id(i) {
                    Ok(id) => Some(id),
                    Err(error) => {
                        self.chunk.reject(i, Stage::Decode, error);
                        continue;
                    }
                },
            };
            match runs.last_mut() {
                Some((k, msgs)) if *k == key => msgs.push(i),
                _ => runs.push((key, vec![i])),
            }
        }
        let mut parts = Vec::new();
        for (key, msgs) in runs {
            match key {
                None => parts.push(Part {
                    msgs,
                    rows: None,
                    schema_id: None,
                }),
                Some(id) => self.decode_run(id, msgs, &mut parts)?,
            }
        }
        let rows = self.assemble(parts)?;
        tracing::debug!(table = %self.config.table, slots = self.chunk.len(), rows = rows.as_ref().map_or(0, RecordBatch::num_rows), "avro chunk decoded");
        self.chunk.finish(&self.config.table, rows).map(Some)
    }

    /// The writer schema id of message `i`, or why it has none.
    fn schema_id(&self, i: usize) -> std::result::Result<u32, String> {
        if matches!(self.config.schemas, AvroSchemas::File(_)) {
            return Ok(FILE_SCHEMA_ID);
        }
        match self.chunk.payload(i) {
            Some([0, a, b, c, d, ..]) => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(
                "not in the Confluent wire format (magic byte 0, 4-byte schema id, Avro body)"
                    .into(),
            ),
        }
    }

    /// Feed message `i` to `d`; true when it added exactly one row and used every byte
    /// (false on a panic too: the caller then drops `d`).
    fn feed(&self, d: &mut Decoder, i: usize) -> bool {
        let bytes = self.chunk.payload(i).unwrap_or_default();
        let file = matches!(self.config.schemas, AvroSchemas::File(_));
        let prefix = [0u8; HEADER_LEN];
        guard(|| {
            let room = d.capacity();
            if file && !matches!(d.decode(&prefix), Ok(HEADER_LEN)) {
                return false;
            }
            matches!(d.decode(bytes), Ok(n) if n == bytes.len()) && d.capacity() + 1 == room
        })
        .unwrap_or(false)
    }

    /// Decode the messages `msgs`, all written with schema `id`, into `parts`.
    fn decode_run(&mut self, id: u32, msgs: Vec<usize>, parts: &mut Vec<Part>) -> Result<()> {
        let mut writer = match self.writers.remove(&id) {
            Some(w) => w,
            None => self.resolve(id)?,
        };
        let text = match &mut writer {
            Writer::Unusable { stage, error } => {
                for &i in &msgs {
                    self.chunk.reject(i, *stage, error.clone());
                }
                self.writers.insert(id, writer);
                return Ok(());
            }
            Writer::Ready { text, decoder } => {
                if decoder.is_none() {
                    match build_decoder(id, text, self.config.max_messages) {
                        Ok(d) => *decoder = Some(Box::new(d)),
                        Err(e) => {
                            writer = Writer::Unusable {
                                stage: Stage::Schema,
                                error: format!("Avro schema id {id} cannot be read: {e}"),
                            };
                            self.writers.insert(id, writer);
                            return self.decode_run(id, msgs, parts);
                        }
                    }
                }
                // Fast path: the whole run through the kept decoder.
                if let Some(d) = decoder.as_mut()
                    && msgs.iter().all(|&i| self.feed(d, i))
                    && let Ok(Ok(Some(b))) = guard(|| d.flush())
                {
                    let rows = self.normalise_part(id, &msgs, &b);
                    if let Some(rows) = rows {
                        parts.push(Part {
                            msgs,
                            rows: Some(rows),
                            schema_id: Some(id),
                        });
                    }
                    self.writers.insert(id, writer);
                    return Ok(());
                }
                // The decoder may hold half a row now: start afresh next time.
                *decoder = None;
                text.clone()
            }
        };
        self.writers.insert(id, writer);
        let mut batches = Vec::new();
        let mut bad = Vec::new();
        bisect(
            &msgs,
            &mut |run| {
                let mut d = build_decoder(id, &text, run.len())?;
                if !run.iter().all(|&i| self.feed(&mut d, i)) {
                    return Err("not a single Avro record of the writer schema".into());
                }
                match guard(|| d.flush()) {
                    Ok(Ok(Some(b))) => Ok(b),
                    Ok(Ok(None)) => Err("no rows".into()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(p) => Err(p.to_string()),
                }
            },
            &mut batches,
            &mut bad,
        );
        let bad_msgs: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        for (i, error) in bad {
            let error = format!(
                "Avro body does not match writer schema id {id}: {}",
                scrub_values(&error)
            );
            self.chunk.reject(i, Stage::Decode, error);
        }
        let mut good = msgs.into_iter().filter(|i| !bad_msgs.contains(i));
        for b in batches {
            let these: Vec<usize> = good.by_ref().take(b.num_rows()).collect();
            if let Some(rows) = self.normalise_part(id, &these, &b) {
                parts.push(Part {
                    msgs: these,
                    rows: Some(rows),
                    schema_id: Some(id),
                });
            }
        }
        Ok(())
    }

    /// `b` in Delta-compatible types, within the limits on nesting and fields and with
    /// names that may become columns; otherwise its messages are dead letters.
    fn normalise_part(&mut self, id: u32, msgs: &[usize], b: &RecordBatch) -> Option<RecordBatch> {
        let refused = match guard(|| normalise(b)) {
            Ok(Ok(rows)) => {
                let fields: Vec<Field> = rows
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let known = self
                    .schema
                    .clone()
                    .unwrap_or_else(|| Arc::new(Schema::empty()));
                let new: Vec<Field> = fields
                    .iter()
                    .filter(|f| known.field_with_name(f.name()).is_err())
                    .cloned()
                    .collect();
                // Every field's characters are checked, the new ones' names against the table's.
                let problem = name_problem(&fields, &known, self.config.envelope)
                    .or_else(|| name_problem(&new, &known, self.config.envelope));
                match self
                    .config
                    .limits
                    .check_message_fields(rows.schema().fields())
                {
                    Err((stage, error)) => Some((stage, error)),
                    Ok(()) => match problem {
                        Some(problem) => Some((Stage::Schema, problem)),
                        None => return Some(rows),
                    },
                }
            }
            Ok(Err(e)) => Some((
                Stage::Schema,
                format!("has a type sluice cannot store: {e}"),
            )),
            Err(p) => Some((Stage::Decode, p.to_string())),
        };
        if let Some((stage, error)) = refused {
            let error = format!("Avro schema id {id}: {error}");
            for &i in msgs {
                self.chunk.reject(i, stage, error.clone());
            }
        }
        None
    }

    /// The writer schema `id`, from the registry.
    fn resolve(&self, id: u32) -> Result<Writer> {
        let AvroSchemas::Registry(registry) = &self.config.schemas else {
            return Ok(Writer::Unusable {
                stage: Stage::Decode,
                error: format!("schema id {id} is not the schema file's"),
            });
        };
        Ok(match registry.lookup(id)? {
            Lookup::Found(text) => Writer::Ready {
                text,
                decoder: None,
            },
            Lookup::Unusable(error) => Writer::Unusable {
                stage: Stage::Decode,
                error,
            },
        })
    }

    /// One batch of the parts in message order, under the table schema widened by theirs.
    /// Before the table has a schema, parts may widen each other's types (int → long);
    /// after, a column's type is fixed (Delta cannot widen it, and batches already
    /// decoded carry it) and only new fields are added: a part whose type does not fit is
    /// a dead letter (`schema`).
    fn assemble(&mut self, parts: Vec<Part>) -> Result<Option<RecordBatch>> {
        let fixed = self.schema.is_some();
        let merge = |a: &[Field], b: &[Field]| {
            if fixed {
                extend_fields(a, b)
            } else {
                merge_fields(a, b)
            }
        };
        let mut fields: Vec<Field> = self
            .schema
            .as_ref()
            .map(|s| s.fields().iter().map(|f| f.as_ref().clone()).collect())
            .unwrap_or_default();
        let limits = self.config.limits;
        let mut columns = count_fields(&fields.clone().into());
        let mut added = 0;
        let mut kept = Vec::with_capacity(parts.len());
        for part in parts {
            let Some(rows) = &part.rows else {
                kept.push(part);
                continue;
            };
            let theirs: Vec<Field> = rows
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            match merge(&fields, &theirs) {
                Some(m) => {
                    // As for JSON: the first part bringing columns may bring any number
                    // within `max_columns`, later ones at most the batch's allowance.
                    let wider = count_fields(&m.clone().into());
                    let n = wider.saturating_sub(columns);
                    let over = if added > 0 && added + n > limits.max_new_columns_per_batch {
                        Some(format!(
                            "would add {n} column(s) to table '{}' after {added} this batch; decode.max_new_columns_per_batch is {}",
                            self.config.table, limits.max_new_columns_per_batch
                        ))
                    } else if wider > limits.max_columns {
                        Some(format!(
                            "would widen table '{}' to {wider} columns; decode.max_columns is {}",
                            self.config.table, limits.max_columns
                        ))
                    } else {
                        None
                    };
                    if let Some(error) = over {
                        let error = format!(
                            "Avro schema id {}: {error}",
                            part.schema_id.unwrap_or_default()
                        );
                        metrics::counter!(COLUMNS_REFUSED_TOTAL, "table" => self.config.table.clone())
                            .increment(part.msgs.len() as u64);
                        tracing::warn!(table = %self.config.table, messages = part.msgs.len(), "Messages refused: their writer schema would break a limit on the table's columns (see the dead letters).");
                        for i in part.msgs {
                            self.chunk.reject(i, Stage::Schema, error.clone());
                        }
                        continue;
                    }
                    added += n;
                    columns = wider;
                    fields = m;
                    kept.push(part);
                }
                None => {
                    let column = theirs
                        .iter()
                        .find(|f| {
                            fields.iter().any(|g| {
                                g.name() == f.name()
                                    && if fixed {
                                        add_fields(g.data_type(), f.data_type()).is_none()
                                    } else {
                                        merge_types(g.data_type(), f.data_type()).is_none()
                                    }
                            })
                        })
                        .map_or_else(String::new, |f| f.name().clone());
                    let error = format!(
                        "Avro schema id {} changes the type of field '{column}' of table '{}'",
                        part.schema_id.unwrap_or_default(),
                        self.config.table
                    );
                    for i in part.msgs {
                        self.chunk.reject(i, Stage::Schema, error.clone());
                    }
                }
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        self.schema = Some(schema.clone());
        let options = |n| RecordBatchOptions::new().with_row_count(Some(n));
        let mut batches = Vec::with_capacity(kept.len());
        for part in &kept {
            let n = part.msgs.len();
            let columns = schema
                .fields()
                .iter()
                .map(
                    |f| match part.rows.as_ref().and_then(|r| r.column_by_name(f.name())) {
                        Some(c) => conform_array(c, f.data_type()),
                        None => Ok(new_null_array(f.data_type(), n)),
                    },
                )
                .collect::<std::result::Result<Vec<_>, _>>()?;
            batches.push(RecordBatch::try_new_with_options(
                schema.clone(),
                columns,
                &options(n),
            )?);
        }
        let total = batches.iter().map(RecordBatch::num_rows).sum();
        let batch = if schema.fields().is_empty() {
            RecordBatch::try_new_with_options(schema, vec![], &options(total))?
        } else {
            concat_batches(&schema, &batches)?
        };
        Ok(Some(batch))
    }
}

/// `batch` with Delta-compatible types, every field nullable.
pub fn normalise(batch: &RecordBatch) -> std::result::Result<RecordBatch, ArrowError> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let c = to_delta(c, f)?;
        fields.push(Field::new(f.name(), c.data_type().clone(), true));
        columns.push(c);
    }
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

fn nullable_fields(columns: &[ArrayRef], names: &Fields) -> Fields {
    names
        .iter()
        .zip(columns)
        .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
        .collect()
}

fn to_delta(a: &ArrayRef, f: &Field) -> std::result::Result<ArrayRef, ArrowError> {
    use DataType::*;
    Ok(match a.data_type() {
        Struct(fields) => {
            let s = a.as_struct();
            let columns = fields
                .iter()
                .zip(s.columns())
                .map(|(f, c)| to_delta(c, f))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let fields = nullable_fields(&columns, fields);
            Arc::new(StructArray::try_new(fields, columns, s.nulls().cloned())?)
        }
        List(item) => {
            let l = a.as_list::<i32>();
            let values = to_delta(l.values(), item)?;
            let item = Field::new(item.name(), values.data_type().clone(), true);
            Arc::new(ListArray::try_new(
                Arc::new(item),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?)
        }
        Map(entries, sorted) => {
            let m = a.as_map();
            let DataType::Struct(parts) = entries.data_type() else {
                return Err(ArrowError::SchemaError("map without entries".into()));
            };
            let keys = to_delta(m.keys(), &parts[0])?;
            let values = to_delta(m.values(), &parts[1])?;
            let parts = Fields::from(vec![
                Field::new(parts[0].name(), keys.data_type().clone(), false),
                Field::new(parts[1].name(), values.data_type().clone(), true),
            ]);
            let inner = StructArray::try_new(parts.clone(), vec![keys, values], None)?;
            Arc::new(MapArray::try_new(
                Arc::new(Field::new(entries.name(), DataType::Struct(parts), false)),
                m.offsets().clone(),
                inner,
                m.nulls().cloned(),
                *sorted,
            )?)
        }
        FixedSizeBinary(16)
            if f.metadata().get("logicalType").map(String::as_str) == Some("uuid") =>
        {
            uuid_text(a)
        }
        FixedSizeBinary(_) => cast(a, &Binary)?,
        Dictionary(_, _) | Utf8View | LargeUtf8 => cast(a, &Utf8)?,
        Time32(_) | Time64(_) => cast(&cast(a, &Time64(TimeUnit::Microsecond))?, &Int64)?,
        Timestamp(_, tz) => {
            let micros = cast(a, &Timestamp(TimeUnit::Microsecond, tz.clone()))?;
            Arc::new(
                micros
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone()
                    .with_timezone("UTC"),
            )
        }
        Decimal256(_, _) | Interval(_) | Duration(_) | Date64 => cast(a, &Utf8)?,
        Union(fields, mode) => union_to_struct(a, fields, *mode)?,
        Null => new_null_array(&Utf8, a.len()),
        _ => a.clone(),
    })
}

/// 16-byte UUIDs in their canonical text form.
fn uuid_text(a: &ArrayRef) -> ArrayRef {
    let b = a.as_fixed_size_binary();
    let text: StringArray = (0..b.len())
        .map(|i| {
            b.is_valid(i).then(|| {
                let h: String = b.value(i).iter().map(|x| format!("{x:02x}")).collect();
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            })
        })
        .collect();
    Arc::new(text)
}

/// A union of several types as a struct with one nullable field per non-null branch,
/// set in the rows holding that branch.
fn union_to_struct(
    a: &ArrayRef,
    fields: &UnionFields,
    mode: UnionMode,
) -> std::result::Result<ArrayRef, ArrowError> {
    let u = a.as_union();
    let mut out_fields = Vec::new();
    let mut columns = Vec::new();
    let mut null_branch = None;
    for (type_id, f) in fields.iter() {
        if f.data_type() == &DataType::Null {
            null_branch = Some(type_id);
            continue;
        }
        let rows: UInt32Array = (0..u.len())
            .map(|i| {
                (u.type_id(i) == type_id).then(|| match mode {
                    UnionMode::Dense => u.value_offset(i) as u32,
                    UnionMode::Sparse => i as u32,
                })
            })
            .collect();
        let c = to_delta(&take(u.child(type_id), &rows, None)?, f)?;
        out_fields.push(Field::new(f.name(), c.data_type().clone(), true));
        columns.push(c);
    }
    let nulls = null_branch.map(|n| {
        NullBuffer::from(
            (0..u.len())
                .map(|i| u.type_id(i) != n)
                .collect::<Vec<bool>>(),
        )
    });
    Ok(Arc::new(StructArray::try_new(
        out_fields.into(),
        columns,
        nulls,
    )?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use apache_avro::types::Value;
    use arrow::array::{
        Date32Array, Decimal128Array, Int32Array, Int64Array, ListArray, MapArray,
        TimestampMicrosecondArray,
    };
    use arrow::util::display::array_value_to_string;

    use super::*;
    use crate::decode::registry::RegistryConfig;
    use crate::demo::registry::EmbeddedRegistry;

    const ALL_TYPES: &str = r#"{"type":"record","name":"Account","namespace":"bank","fields":[
        {"name":"id","type":"long"},
        {"name":"n","type":"int"},
        {"name":"name","type":"string"},
        {"name":"active","type":"boolean"},
        {"name":"score","type":"double"},
        {"name":"ratio","type":"float"},
        {"name":"raw","type":"bytes"},
        {"name":"address","type":{"type":"record","name":"Address","fields":[
            {"name":"city","type":"string"},
            {"name":"zip","type":["null","string"],"default":null}]}},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"limits","type":{"type":"map","values":"long"}},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["CURRENT","SAVINGS"]}},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"either","type":["int","string"]},
        {"name":"balance","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
        {"name":"opened","type":{"type":"int","logicalType":"date"}},
        {"name":"at_ms","type":{"type":"int","logicalType":"time-millis"}},
        {"name":"at_us","type":{"type":"long","logicalType":"time-micros"}},
        {"name":"ts_ms","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"ts_us","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"uid","type":{"type":"string","logicalType":"uuid"}},
        {"name":"code","type":{"type":"fixed","name":"Code","size":4}}
    ]}"#;

    fn record(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    fn all_types_value(id: i64, note: Option<&str>) -> Value {
        record(vec![
            ("id", Value::Long(id)),
            ("n", Value::Int(7)),
            ("name", Value::String("Ada".into())),
            ("active", Value::Boolean(true)),
            ("score", Value::Double(1.5)),
            ("ratio", Value::Float(0.25)),
            ("raw", Value::Bytes(vec![1, 2, 3])),
            (
                "address",
                record(vec![
                    ("city", Value::String("Leeds".into())),
                    ("zip", Value::Union(0, Box::new(Value::Null))),
                ]),
            ),
            (
                "tags",
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
            (
                "limits",
                Value::Map(HashMap::from([("atm".to_string(), Value::Long(500))])),
            ),
            ("kind", Value::Enum(1, "SAVINGS".into())),
            (
                "note",
                match note {
                    Some(n) => Value::Union(1, Box::new(Value::String(n.into()))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            (
                "either",
                Value::Union(1, Box::new(Value::String("x".into()))),
            ),
            // 12345 hundredths: 123.45
            (
                "balance",
                Value::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39])),
            ),
            ("opened", Value::Date(19_000)),
            ("at_ms", Value::TimeMillis(3_600_000)),
            ("at_us", Value::TimeMicros(1_500_000)),
            ("ts_ms", Value::TimestampMillis(1_700_000_000_000)),
            ("ts_us", Value::TimestampMicros(1_700_000_000_000_001)),
            (
                "uid",
                Value::Uuid(apache_avro::Uuid::from_u128(
                    0x550e8400_e29b_41d4_a716_446655440000,
                )),
            ),
            ("code", Value::Fixed(4, vec![9, 8, 7, 6])),
        ])
    }

    fn encode(schema: &str, value: Value) -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(schema).expect("schema");
        apache_avro::to_avro_datum(&schema, value).expect("datum")
    }

    /// The Confluent wire format: magic byte, big-endian schema id, Avro body.
    fn framed(id: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn msg(offset: i64, payload: Option<&[u8]>) -> RawMessage<'_> {
        RawMessage {
            topic: "accounts",
            partition: 0,
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k"),
            payload,
            headers: Default::default(),
        }
    }

    fn file_decoder(schema: &str) -> AvroDecoder {
        AvroDecoder::new(
            AvroDecoderConfig {
                table: "accounts".into(),
                limits: DecodeLimits::default(),
                envelope: false,
                max_messages: 100,
                schemas: AvroSchemas::File(schema.into()),
            },
            None,
        )
    }

    fn registry_decoder(
        registry: &EmbeddedRegistry,
        cache: Option<std::path::PathBuf>,
    ) -> AvroDecoder {
        let client = SchemaRegistry::new(RegistryConfig {
            urls: vec![registry.url().to_string()],
            username: None,
            password: None,
            ca_pem: None,
            timeout: Duration::from_secs(5),
            cache_dir: cache,
            attempts: 2,
        })
        .expect("client");
        AvroDecoder::new(
            AvroDecoderConfig {
                table: "accounts".into(),
                limits: DecodeLimits::default(),
                envelope: false,
                max_messages: 100,
                schemas: AvroSchemas::Registry(Arc::new(client)),
            },
            None,
        )
    }

    fn text(batch: &RecordBatch, column: &str, row: usize) -> String {
        let c = batch.column_by_name(column).expect("column");
        array_value_to_string(c, row).expect("display")
    }

    #[test]
    fn every_avro_type_lands_as_a_type_delta_can_store() {
        let mut d = file_decoder(ALL_TYPES);
        let a = encode(ALL_TYPES, all_types_value(1, Some("vip")));
        let b = encode(ALL_TYPES, all_types_value(2, None));
        d.push(&msg(0, Some(&a)));
        d.push(&msg(1, Some(&b)));
        let batch = d.finish().expect("finish").expect("batch");
        assert!(batch.dead_letters.is_empty(), "{:?}", batch.dead_letters);
        let rows = batch.rows.expect("rows");
        assert_eq!(rows.num_rows(), 2);
        let s = rows.schema();
        let ty = |c: &str| s.field_with_name(c).expect(c).data_type().clone();
        assert_eq!(ty("id"), DataType::Int64);
        assert_eq!(ty("n"), DataType::Int32);
        assert_eq!(ty("name"), DataType::Utf8);
        assert_eq!(ty("ratio"), DataType::Float32);
        assert_eq!(ty("raw"), DataType::Binary);
        assert!(matches!(ty("address"), DataType::Struct(_)));
        assert!(matches!(ty("tags"), DataType::List(_)));
        assert!(matches!(ty("limits"), DataType::Map(_, _)));
        assert_eq!(ty("kind"), DataType::Utf8);
        assert_eq!(ty("note"), DataType::Utf8);
        assert!(matches!(ty("either"), DataType::Struct(_)));
        assert_eq!(ty("balance"), DataType::Decimal128(10, 2));
        assert_eq!(ty("opened"), DataType::Date32);
        assert_eq!(ty("at_ms"), DataType::Int64);
        assert_eq!(ty("at_us"), DataType::Int64);
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert_eq!(ty("ts_ms"), utc);
        assert_eq!(ty("ts_us"), utc);
        assert_eq!(ty("uid"), DataType::Utf8);
        assert_eq!(ty("code"), DataType::Binary);
        assert!(s.fields().iter().all(|f| f.is_nullable()));

        let ids: &Int64Array = rows.column_by_name("id").expect("id").as_primitive();
        assert_eq!(ids.values(), &[1, 2]);
        assert_eq!(text(&rows, "name", 0), "Ada");
        assert_eq!(text(&rows, "kind", 0), "SAVINGS");
        assert_eq!(text(&rows, "note", 0), "vip");
        assert!(rows.column_by_name("note").expect("note").is_null(1));
        assert_eq!(text(&rows, "address", 0), "{city: Leeds, zip: }");
        let tags: &ListArray = rows.column_by_name("tags").expect("tags").as_list();
        assert_eq!(tags.value_length(0), 2);
        let limits: &MapArray = rows.column_by_name("limits").expect("limits").as_map();
        assert_eq!(limits.value_length(0), 1);
        assert_eq!(text(&rows, "either", 0), "{int: , string: x}");
        let balance: &Decimal128Array = rows.column_by_name("balance").expect("b").as_primitive();
        assert_eq!(balance.value(0), 12345);
        let opened: &Date32Array = rows.column_by_name("opened").expect("o").as_primitive();
        assert_eq!(opened.value(0), 19_000);
        let at: &Int64Array = rows.column_by_name("at_ms").expect("t").as_primitive();
        assert_eq!(at.value(0), 3_600_000_000);
        let ts: &TimestampMicrosecondArray =
            rows.column_by_name("ts_ms").expect("ts").as_primitive();
        assert_eq!(ts.value(0), 1_700_000_000_000_000);
        let ts: &TimestampMicrosecondArray =
            rows.column_by_name("ts_us").expect("ts").as_primitive();
        assert_eq!(ts.value(0), 1_700_000_000_000_001);
        assert_eq!(
            text(&rows, "uid", 0),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        let offsets: &Int64Array = rows
            .column_by_name("_kafka_offset")
            .expect("o")
            .as_primitive();
        assert_eq!(offsets.values(), &[0, 1]);
    }

    #[test]
    fn a_bad_body_is_a_decode_dead_letter_and_its_neighbours_land() {
        let mut d = file_decoder(ALL_TYPES);
        let good = encode(ALL_TYPES, all_types_value(1, None));
        let truncated = &good[..good.len() / 2];
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xyz");
        d.push(&msg(0, Some(&good)));
        d.push(&msg(1, Some(truncated)));
        d.push(&msg(2, Some(&good)));
        d.push(&msg(3, Some(&trailing)));
        d.push(&msg(4, None));
        let batch = d.finish().expect("finish").expect("batch");
        let rows = batch.rows.expect("rows");
        let offsets: &Int64Array = rows
            .column_by_name("_kafka_offset")
            .expect("o")
            .as_primitive();
        assert_eq!(
            offsets.values(),
            &[0, 2, 4],
            "the tombstone is a row of nulls"
        );
        assert!(rows.column_by_name("id").expect("id").is_null(2));
        let dead: Vec<(i64, Stage)> = batch
            .dead_letters
            .iter()
            .map(|l| (l.offset, l.stage))
            .collect();
        assert_eq!(dead, vec![(1, Stage::Decode), (3, Stage::Decode)]);
        assert_eq!(batch.dead_letters[0].payload.as_deref(), Some(truncated));
        // The kept decoder was reset: the next chunk decodes cleanly.
        d.push(&msg(5, Some(&good)));
        let batch = d.finish().expect("finish").expect("batch");
        assert_eq!(batch.rows.expect("rows").num_rows(), 1);
    }

    #[test]
    fn a_later_schema_widening_a_column_the_table_has_is_a_schema_dead_letter() {
        // Once a table's column is an int, a long cannot land in it (Delta cannot widen
        // the column, and batches already decoded carry the int): the run must go on.
        let registry = EmbeddedRegistry::start().expect("registry");
        let v1 = r#"{"type":"record","name":"C","fields":[{"name":"id","type":"int"}]}"#;
        let v2 = r#"{"type":"record","name":"C","fields":[{"name":"id","type":"long"},
            {"name":"email","type":["null","string"],"default":null}]}"#;
        let (id1, id2) = (registry.register(v1), registry.register(v2));
        let m1 = framed(id1, &encode(v1, record(vec![("id", Value::Int(1))])));
        let m2 = framed(
            id2,
            &encode(
                v2,
                record(vec![
                    ("id", Value::Long(1 << 40)),
                    ("email", Value::Union(0, Box::new(Value::Null))),
                ]),
            ),
        );
        let mut d = registry_decoder(&registry, None);
        d.push(&msg(0, Some(&m1)));
        let first = d.finish().expect("finish").expect("batch");
        assert_eq!(first.rows.expect("rows").num_rows(), 1);
        d.push(&msg(1, Some(&m2)));
        d.push(&msg(2, Some(&m1)));
        let second = d.finish().expect("finish").expect("batch");
        let rows = second.rows.expect("rows");
        assert_eq!(rows.num_rows(), 1);
        assert_eq!(
            rows.schema().field_with_name("id").expect("id").data_type(),
            &DataType::Int32,
            "the table's type stays"
        );
        assert_eq!(second.dead_letters.len(), 1);
        assert_eq!(second.dead_letters[0].stage, Stage::Schema);
        assert!(
            second.dead_letters[0].error.contains("'id'"),
            "{}",
            second.dead_letters[0].error
        );
    }

    #[test]
    fn confluent_messages_of_two_schema_versions_make_one_widened_batch() {
        let registry = EmbeddedRegistry::start().expect("registry");
        let v1 = r#"{"type":"record","name":"Customer","fields":[
            {"name":"id","type":"int"},
            {"name":"address","type":{"type":"record","name":"A","fields":[{"name":"city","type":"string"}]}}]}"#;
        let v2 = r#"{"type":"record","name":"Customer","fields":[
            {"name":"id","type":"long"},
            {"name":"address","type":{"type":"record","name":"A","fields":[
                {"name":"city","type":"string"},{"name":"country","type":"string"}]}},
            {"name":"email","type":["null","string"],"default":null}]}"#;
        let (id1, id2) = (registry.register(v1), registry.register(v2));
        let m1 = framed(
            id1,
            &encode(
                v1,
                record(vec![
                    ("id", Value::Int(1)),
                    (
                        "address",
                        record(vec![("city", Value::String("York".into()))]),
                    ),
                ]),
            ),
        );
        let m2 = framed(
            id2,
            &encode(
                v2,
                record(vec![
                    ("id", Value::Long(2)),
                    (
                        "address",
                        record(vec![
                            ("city", Value::String("Hull".into())),
                            ("country", Value::String("UK".into())),
                        ]),
                    ),
                    (
                        "email",
                        Value::Union(1, Box::new(Value::String("e".into()))),
                    ),
                ]),
            ),
        );
        let unknown = framed(99, &[2]);
        let not_framed = b"\x07abc".to_vec();
        let cache = tempfile::tempdir().expect("tmp");
        let mut d = registry_decoder(&registry, Some(cache.path().to_path_buf()));
        for (i, m) in [&m1, &m2, &m1, &unknown, &not_framed, &m2]
            .iter()
            .enumerate()
        {
            d.push(&msg(i as i64, Some(m)));
        }
        let batch = d.finish().expect("finish").expect("batch");
        let rows = batch.rows.expect("rows");
        assert_eq!(rows.num_rows(), 4);
        assert_eq!(
            rows.schema().field_with_name("id").expect("id").data_type(),
            &DataType::Int64
        );
        assert_eq!(text(&rows, "address", 0), "{city: York, country: }");
        assert_eq!(text(&rows, "address", 1), "{city: Hull, country: UK}");
        assert!(rows.column_by_name("email").expect("email").is_null(0));
        assert_eq!(text(&rows, "email", 3), "e");
        let dead: Vec<(i64, Stage)> = batch
            .dead_letters
            .iter()
            .map(|l| (l.offset, l.stage))
            .collect();
        assert_eq!(dead, vec![(3, Stage::Decode), (4, Stage::Decode)]);
        assert!(
            batch.dead_letters[0]
                .error
                .contains("unknown to the schema registry")
        );
        assert!(
            batch.dead_letters[1]
                .error
                .contains("Confluent wire format")
        );
        // One fetch per id per process, however many messages use it.
        assert_eq!((registry.reads(id1), registry.reads(id2)), (1, 1));
        for i in 0..3 {
            d.push(&msg(10 + i, Some(&m2)));
        }
        d.finish().expect("finish");
        assert_eq!(registry.reads(id2), 1);

        // A new process while the registry is down goes on with the schemas on disk.
        registry.set_down(true);
        let mut d = registry_decoder(&registry, Some(cache.path().to_path_buf()));
        d.push(&msg(20, Some(&m1)));
        let batch = d.finish().expect("cached schema").expect("batch");
        assert_eq!(batch.rows.expect("rows").num_rows(), 1);
        // ... but an id it never saw stops the pipeline rather than dead-letter good data.
        let m3 = framed(3, &[2]);
        d.push(&msg(21, Some(&m3)));
        let err = d.finish().expect_err("registry down, id not cached");
        assert!(err.to_string().contains("schema id 3"), "{err}");
    }

    /// A schema whose named types are registered on their own (schema references, as
    /// Debezium and many producers register them) is decoded: the types are fetched
    /// through the registry, recursively, and put in place. A reference the registry
    /// does not know makes its messages dead letters naming it; references that go round
    /// in a circle end (a recursive type is refused at stage `schema`).
    #[test]
    fn confluent_messages_whose_schema_references_other_subjects_are_decoded() {
        let registry = EmbeddedRegistry::start().expect("registry");
        let country =
            r#"{"type":"enum","name":"Country","namespace":"com.acme","symbols":["UK","IE"]}"#;
        let address = r#"{"type":"record","name":"Address","namespace":"com.acme","fields":[
            {"name":"city","type":"string"},{"name":"country","type":"Country"}]}"#;
        let customer = r#"{"type":"record","name":"Customer","namespace":"com.acme","fields":[
            {"name":"id","type":"long"},
            {"name":"home","type":"com.acme.Address"},
            {"name":"work","type":["null","Address"],"default":null}]}"#;
        registry.register_under("country", country, &[]);
        registry.register_under("address", address, &[("com.acme.Country", "country", 1)]);
        let (id, version) = registry.register_under(
            "customer-value",
            customer,
            &[("com.acme.Address", "address", 1)],
        );
        assert_eq!(version, 1);
        // The same schema written out whole, as a producer's library encodes with it.
        let whole = r#"{"type":"record","name":"Customer","namespace":"com.acme","fields":[
            {"name":"id","type":"long"},
            {"name":"home","type":{"type":"record","name":"Address","fields":[
                {"name":"city","type":"string"},
                {"name":"country","type":{"type":"enum","name":"Country","symbols":["UK","IE"]}}]}},
            {"name":"work","type":["null","Address"],"default":null}]}"#;
        let place = |city: &str, symbol: u32, name: &str| {
            record(vec![
                ("city", Value::String(city.into())),
                ("country", Value::Enum(symbol, name.into())),
            ])
        };
        let m = framed(
            id,
            &encode(
                whole,
                record(vec![
                    ("id", Value::Long(7)),
                    ("home", place("York", 0, "UK")),
                    ("work", Value::Union(1, Box::new(place("Cork", 1, "IE")))),
                ]),
            ),
        );
        let orphan = r#"{"type":"record","name":"Orphan","namespace":"com.acme","fields":[
            {"name":"gone","type":"com.acme.Gone"}]}"#;
        let (orphan_id, _) =
            registry.register_under("orphan-value", orphan, &[("com.acme.Gone", "gone", 1)]);
        // `A` and `B` reference each other: a recursive type.
        let a = r#"{"type":"record","name":"A","fields":[{"name":"b","type":"B"}]}"#;
        let b = r#"{"type":"record","name":"B","fields":[{"name":"a","type":["null","A"]}]}"#;
        registry.register_under("a", a, &[("B", "b", 1)]);
        registry.register_under("b", b, &[("A", "a", 1)]);
        let looped = r#"{"type":"record","name":"M","fields":[{"name":"x","type":"A"}]}"#;
        let (looped_id, _) = registry.register_under("m-value", looped, &[("A", "a", 1)]);
        // A "named" array that uses itself twice: put in place once per use, it would
        // double at every level. It names no type Avro can reference: refused.
        let doubling = r#"{"type":"array","name":"X","items":["X","X"]}"#;
        registry.register_under("x", doubling, &[]);
        let uses_x = r#"{"type":"record","name":"U","fields":[{"name":"x","type":"X"}]}"#;
        let (doubling_id, _) = registry.register_under("u-value", uses_x, &[("X", "x", 1)]);

        let mut d = registry_decoder(&registry, None);
        d.push(&msg(0, Some(&m)));
        d.push(&msg(1, Some(&framed(orphan_id, &[2]))));
        d.push(&msg(2, Some(&framed(looped_id, &[0]))));
        d.push(&msg(3, Some(&m)));
        d.push(&msg(4, Some(&framed(doubling_id, &[0]))));
        let batch = d.finish().expect("finish").expect("batch");
        let rows = batch.rows.expect("rows");
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(text(&rows, "id", 1), "7");
        assert_eq!(text(&rows, "home", 0), "{city: York, country: UK}");
        assert_eq!(text(&rows, "work", 0), "{city: Cork, country: IE}");
        let dead: Vec<(i64, Stage)> = batch
            .dead_letters
            .iter()
            .map(|l| (l.offset, l.stage))
            .collect();
        assert_eq!(
            dead,
            vec![(1, Stage::Decode), (2, Stage::Schema), (4, Stage::Decode)]
        );
        let error = &batch.dead_letters[0].error;
        assert!(
            error.contains("com.acme.Gone (subject gone, version 1) is unknown"),
            "{error}"
        );
        let error = &batch.dead_letters[2].error;
        assert!(error.contains("is not a named type"), "{error}");
        assert_eq!(
            registry.reads(id),
            1,
            "one fetch per id, references included"
        );
    }

    #[test]
    fn a_type_change_between_versions_sends_the_new_rows_to_dead_letters() {
        let registry = EmbeddedRegistry::start().expect("registry");
        let v1 = r#"{"type":"record","name":"R","fields":[{"name":"amount","type":"long"}]}"#;
        let v2 = r#"{"type":"record","name":"R","fields":[{"name":"amount","type":"string"}]}"#;
        let (id1, id2) = (registry.register(v1), registry.register(v2));
        let rec = |v: Value| Value::Record(vec![("amount".to_string(), v)]);
        let m1 = framed(id1, &encode(v1, rec(Value::Long(5))));
        let m2 = framed(id2, &encode(v2, rec(Value::String("5".into()))));
        let mut d = registry_decoder(&registry, None);
        d.push(&msg(0, Some(&m1)));
        d.push(&msg(1, Some(&m2)));
        let batch = d.finish().expect("finish").expect("batch");
        assert_eq!(batch.rows.expect("rows").num_rows(), 1);
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(batch.dead_letters[0].stage, Stage::Schema);
        assert!(
            batch.dead_letters[0].error.contains("'amount'"),
            "{}",
            batch.dead_letters[0].error
        );
    }

    #[test]
    fn only_tombstones_make_rows_of_lineage_alone() {
        let mut d = file_decoder(ALL_TYPES);
        d.push(&msg(0, None));
        let batch = d.finish().expect("finish").expect("batch");
        let rows = batch.rows.expect("rows");
        assert_eq!(rows.num_rows(), 1);
        let n: &Int32Array = rows
            .column_by_name("_kafka_partition")
            .expect("p")
            .as_primitive();
        assert_eq!(n.value(0), 0);
    }
}
