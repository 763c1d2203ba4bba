//! The Debezium change-event format: envelopes, operation codes, sequences and the
//! placeholder of unchanged TOASTed values.
//!
//! A change event's value is an envelope (the JSON decoder first unwraps Kafka Connect's
//! `{"schema": ..., "payload": ...}` wrapper, see [`super::json::unwrap_connect_envelope`]):
//!
//! ```json
//! {"before": {"id": 1, "name": "a"}, "after": {"id": 1, "name": "b"},
//!  "source": {"table": "customers", "lsn": 2412, "ts_ms": 1700000000000},
//!  "op": "u", "ts_ms": 1700000000123}
//! ```
//!
//! * `before` and `after` are the row images: no `before` for an insert, no `after` for
//!   a delete. Decoders of tables of envelopes give both one row type ([`unify_images`])
//!   and check the images' field names as they check columns, since they become the
//!   columns of silver tables.
//! * `op` is one of [`OPS`]: create, update, delete, read (a snapshot row), truncate.
//! * The changes of one key are ordered by a [`Sequence`]: `source.lsn` by default.
//! * A TOASTed column the database did not log holds [`UNAVAILABLE`] instead of its value;
//!   it is not data, and the silver sink keeps the value it stands for.
//!
//! [`change_rows`] turns a batch of envelopes into the change rows the silver sink reduces
//! and merges.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};

use crate::error::{Error, Result};
use crate::evolve::merge_types;

/// The envelope's operation code.
pub const OP: &str = "op";
/// The row image before the change (`null` for an insert).
pub const BEFORE: &str = "before";
/// The row image after the change (`null` for a delete).
pub const AFTER: &str = "after";
/// Where the change was read: `table`, `lsn`, `ts_ms` and more, by connector.
pub const SOURCE: &str = "source";
/// When the connector processed the event, in milliseconds since the epoch.
pub const TS_MS: &str = "ts_ms";

/// `op` of an insert.
pub const CREATE: &str = "c";
/// `op` of an update.
pub const UPDATE: &str = "u";
/// `op` of a delete: the key is in `before`.
pub const DELETE: &str = "d";
/// `op` of a row read by a snapshot.
pub const READ: &str = "r";
/// `op` of a truncate of the whole table.
pub const TRUNCATE: &str = "t";
/// Every operation code.
pub const OPS: [&str; 5] = [CREATE, UPDATE, DELETE, READ, TRUNCATE];

pub use sluice_pipeline::columns::UNAVAILABLE;

/// Whether row `i` of `column` holds the [`UNAVAILABLE`] placeholder.
pub fn is_unavailable(column: &StringArray, i: usize) -> bool {
    column.is_valid(i) && column.value(i) == UNAVAILABLE
}

/// Whether `name` is a row image of the envelope (`before` or `after`).
pub fn is_image(name: &str) -> bool {
    name == BEFORE || name == AFTER
}

/// Give `before` and `after` one row type: the merge of both (each may be all null).
pub(crate) fn unify_images(fields: &mut [Field]) {
    let image = |f: &Field| is_image(f.name());
    let mut row = DataType::Null;
    for f in fields.iter().filter(|f| image(f)) {
        match merge_types(&row, f.data_type()) {
            Some(t) => row = t,
            None => return,
        }
    }
    for f in fields.iter_mut().filter(|f| image(f)) {
        *f = Field::new(f.name(), row.clone(), true);
    }
}

/// How the changes of one key are ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sequence {
    /// `source.lsn` where the envelope has it, else `source.ts_ms`, else `ts_ms`.
    Auto,
    /// An integer field of the envelope, by path.
    Path(Vec<String>),
}

impl Sequence {
    /// The `sequence` setting of a silver table: `auto`, or a dotted path.
    pub fn parse(s: &str) -> Self {
        if s == "auto" {
            Sequence::Auto
        } else {
            Sequence::Path(s.split('.').map(str::to_string).collect())
        }
    }
}

/// Which events of a batch of envelopes [`change_rows`] takes, and how it reads them.
#[derive(Debug, Clone, Copy)]
pub struct ChangeSpec<'a> {
    /// Topics whose events are taken (by `_kafka_topic`; all when the batch lacks it).
    pub topics: &'a BTreeSet<String>,
    /// Only events whose `source.table` is this.
    pub source_table: Option<&'a str>,
    /// Primary key columns of the row; a delete's come from `before`.
    pub key: &'a [String],
    /// How the changes of one key are ordered.
    pub sequence: &'a Sequence,
}

/// The change rows of the envelopes in `batch` that `spec` selects, or `None` when the
/// batch has no `op` column (not change events).
///
/// A change row is the row image (`after`; for a delete the key columns come from
/// `before`), then `_cdc_op` (the operation code), `_cdc_sequence` (by `spec.sequence`;
/// `i64::MIN` where the event has none), `_cdc_source_ts` (`source.ts_ms`, or `ts_ms`
/// where the envelope has no `source`) and the Kafka lineage (`_kafka_topic`,
/// `_kafka_partition`, `_kafka_offset`). Events with another or no operation code are
/// left out.
pub fn change_rows(batch: &RecordBatch, spec: &ChangeSpec<'_>) -> Result<Option<RecordBatch>> {
    let Some(op) = batch
        .column_by_name(OP)
        .and_then(|c| c.as_string_opt::<i32>())
    else {
        return Ok(None);
    };
    let topic = batch
        .column_by_name("_kafka_topic")
        .and_then(|c| c.as_string_opt::<i32>());
    let source = batch.column_by_name(SOURCE).and_then(|c| c.as_struct_opt());
    let source_table = source
        .and_then(|s| s.column_by_name("table"))
        .and_then(|c| c.as_string_opt::<i32>());
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let op_ok = op.is_valid(i) && OPS.contains(&op.value(i));
            let topic_ok = topic.is_none_or(|t| spec.topics.contains(t.value(i)));
            let table_ok = match spec.source_table {
                None => true,
                Some(want) => source_table.is_some_and(|t| t.is_valid(i) && t.value(i) == want),
            };
            Some(op_ok && topic_ok && table_ok)
        })
        .collect();
    let batch = filter_record_batch(batch, &keep)?;
    let n = batch.num_rows();
    let op = batch
        .column_by_name(OP)
        .and_then(|c| c.as_string_opt::<i32>())
        .cloned()
        .unwrap_or_else(|| StringArray::from(Vec::<Option<&str>>::new()));
    let image = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_struct_opt())
            .cloned()
    };
    let after = image(AFTER);
    let before = image(BEFORE);
    let is_delete = BooleanArray::from(
        (0..n)
            .map(|i| Some(op.value(i) == DELETE))
            .collect::<Vec<_>>(),
    );
    // The row's columns: those of `after`, or only the key when no event had one.
    let mut row_fields: Vec<Field> = match &after {
        Some(a) => a.fields().iter().map(|f| f.as_ref().clone()).collect(),
        None => Vec::new(),
    };
    for k in spec.key {
        if !row_fields.iter().any(|f| f.name() == k) {
            let dt = before
                .as_ref()
                .and_then(|b| b.column_by_name(k))
                .map(|c| c.data_type().clone())
                .unwrap_or(DataType::Utf8);
            row_fields.push(Field::new(k, dt, true));
        }
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for f in &row_fields {
        let from = |image: &Option<StructArray>| -> Result<Option<ArrayRef>> {
            let Some(s) = image else { return Ok(None) };
            let Some(c) = s.column_by_name(f.name()) else {
                return Ok(None);
            };
            let c = if c.data_type() == f.data_type() {
                c.clone()
            } else {
                cast(c, f.data_type())?
            };
            // A child of a null struct may hold anything: null it where the image is null.
            Ok(Some(match s.logical_nulls() {
                Some(nulls) if nulls.null_count() > 0 => {
                    let valid = BooleanArray::from(nulls.inner().clone());
                    arrow::compute::nullif(&c, &arrow::compute::not(&valid)?)?
                }
                _ => c,
            }))
        };
        let a = from(&after)?.unwrap_or_else(|| new_null_array(f.data_type(), n));
        let column = if spec.key.contains(f.name()) {
            match from(&before)? {
                Some(b) => zip(&is_delete, &b, &a)?,
                None => a,
            }
        } else {
            a
        };
        fields.push(f.clone().with_nullable(true));
        columns.push(column);
    }
    let source_ts = source
        .map(|_| nested_i64(&batch, &[SOURCE, TS_MS]))
        .unwrap_or_else(|| nested_i64(&batch, &[TS_MS]));
    let sequence = match spec.sequence {
        Sequence::Auto => {
            let lsn = nested_i64(&batch, &[SOURCE, "lsn"]);
            if lsn.null_count() < n {
                lsn
            } else {
                source_ts.clone()
            }
        }
        Sequence::Path(p) => {
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            nested_i64(&batch, &p)
        }
    };
    let sequence: Int64Array = sequence
        .iter()
        .map(|v| Some(v.unwrap_or(i64::MIN)))
        .collect();
    let micros: TimestampMicrosecondArray = source_ts
        .iter()
        .map(|v| v.map(|ms| ms.saturating_mul(1000)))
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    let lineage = |name: &str| -> Result<ArrayRef> {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::MissingColumn {
                rows: "change events",
                column: name.to_string(),
            })
    };
    let extra: [(Field, ArrayRef); 6] = [
        (Field::new("_cdc_op", DataType::Utf8, true), Arc::new(op)),
        (
            Field::new("_cdc_sequence", DataType::Int64, true),
            Arc::new(sequence),
        ),
        (
            Field::new(
                "_cdc_source_ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Arc::new(micros),
        ),
        (
            Field::new("_kafka_topic", DataType::Utf8, true),
            lineage("_kafka_topic")?,
        ),
        (
            Field::new("_kafka_partition", DataType::Int32, true),
            lineage("_kafka_partition")?,
        ),
        (
            Field::new("_kafka_offset", DataType::Int64, true),
            lineage("_kafka_offset")?,
        ),
    ];
    for (f, c) in extra {
        fields.push(f);
        columns.push(c);
    }
    Ok(Some(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?))
}

/// The integer field at `path` (through structs), as Int64; nulls where absent.
fn nested_i64(batch: &RecordBatch, path: &[&str]) -> Int64Array {
    let n = batch.num_rows();
    let mut column = batch.column_by_name(path[0]).cloned();
    let mut nulls = column.as_ref().and_then(|c| c.logical_nulls());
    for name in &path[1..] {
        column = column
            .as_ref()
            .and_then(|c| c.as_struct_opt())
            .and_then(|s| s.column_by_name(name))
            .cloned();
        if let Some(c) = &column {
            nulls = arrow::buffer::NullBuffer::union(nulls.as_ref(), c.logical_nulls().as_ref());
        }
    }
    match column.and_then(|c| cast(&c, &DataType::Int64).ok()) {
        Some(c) => {
            let a = c.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| {
                    nulls
                        .as_ref()
                        .is_none_or(|m| m.is_valid(i))
                        .then(|| a.value(i))
                })
                .collect()
        }
        None => Int64Array::from(vec![None; n]),
    }
}
