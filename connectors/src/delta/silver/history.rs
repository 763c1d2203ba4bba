//! SCD type 2 history of a silver table: `<lake>/silver/<table>_history` keeps every
//! version of every row, each with `_valid_from`, `_valid_to` (null while current) and
//! `_is_current`.
//!
//! Per commit, the changes of the batch (fenced like silver's) are folded per key, in
//! sequence order, onto the key's current version read from the table:
//!
//! - an insert or update whose *tracked* columns differ from the current version closes it
//!   (`_valid_to` = the change's source timestamp) and opens a new version; one that only
//!   changes untracked columns (or comes at the same instant) updates the current version
//!   in place;
//! - a delete closes the current version; a truncate closes every current version older
//!   than it;
//! - a change not newer than the newest the table holds for its key is ignored (history
//!   is not rewritten), so replays are no-ops;
//! - the placeholder of an unchanged TOASTed value takes the current version's value.
//!
//! The touched versions are written by one MERGE on (key, `_valid_from`) carrying the
//! `txn` per partition, so the history table is exactly-once like silver.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{SortColumn, lexsort_to_indices, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;

use super::{MergeCounts, SilverTableSpec, silver_error as error};
use crate::decode::debezium::{DELETE, TRUNCATE, is_unavailable};
use crate::delta::table::{self, quote};
use crate::error::{Error, Result, delta};
use crate::evolve::conform;

/// Columns a history table adds to the row.
pub const HISTORY_COLUMNS: [&str; 6] = [
    "_valid_from",
    "_valid_to",
    "_is_current",
    "_cdc_op",
    "_cdc_sequence",
    "_cdc_offset",
];

/// Relative location of a silver table's history.
pub fn location(table: &str) -> String {
    format!("silver/{table}_history")
}

/// One version of a row, as its column values' positions in the image batch.
#[derive(Debug, Clone)]
struct Version {
    values: Vec<u32>,
    valid_from: i64,
    valid_to: Option<i64>,
    op: String,
    sequence: i64,
    offset: i64,
    /// Stored in the table already (the MERGE updates it) or new (inserted).
    stored: bool,
    changed: bool,
}

/// The row columns of change rows: everything but `_cdc_*` and the Kafka lineage.
fn image_columns(changes: &SchemaRef) -> Vec<String> {
    changes
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !n.starts_with("_cdc_") && !n.starts_with("_kafka_"))
        .collect()
}

/// The current versions (and the newest sequence) the table holds for the keys of
/// `changes`, plus every current version older than `truncate_at`.
async fn stored(
    name: &str,
    t: &DeltaTable,
    key: &[String],
    changes: &RecordBatch,
    truncate_at: Option<i64>,
) -> Result<(Option<RecordBatch>, HashMap<Vec<u8>, i64>, RowConverter)> {
    let key_columns: Vec<ArrayRef> = key
        .iter()
        .map(|k| {
            changes
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| error(name, "reading keys")(format!("no key column {k}")))
        })
        .collect::<Result<_>>()?;
    let converter = super::reduce::key_converter(&key_columns)?;
    let mut newest = HashMap::new();
    if !table::exists(t) {
        return Ok((None, newest, converter));
    }
    let ctx = SessionContext::new();
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(
            key.iter()
                .zip(&key_columns)
                .map(|(k, c)| Field::new(k, c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        )),
        key_columns.clone(),
    )?;
    let on: Vec<String> = key
        .iter()
        .map(|k| format!("h.{0} = k.{0}", quote(k)))
        .collect();
    let on = on.join(" AND ");
    let run = async {
        ctx.register_table("h", t.table_provider().await?)?;
        ctx.register_batch("k", keys)?;
        let truncate = truncate_at.map_or(String::new(), |at| {
            format!(" UNION ALL SELECT * FROM h WHERE _is_current AND _cdc_sequence < {at}")
        });
        let current = ctx
            .sql(&format!(
                "SELECT DISTINCT * FROM (SELECT h.* FROM h WHERE _is_current AND EXISTS \
                 (SELECT 1 FROM k WHERE {on}){truncate})"
            ))
            .await?
            .collect()
            .await?;
        let cols: Vec<String> = key.iter().map(|k| format!("h.{}", quote(k))).collect();
        let newest = ctx
            .sql(&format!(
                "SELECT {0}, max(h._cdc_sequence) FROM h WHERE EXISTS (SELECT 1 FROM k WHERE {on}) GROUP BY {0}",
                cols.join(", ")
            ))
            .await?
            .collect()
            .await?;
        Ok::<_, deltalake::datafusion::error::DataFusionError>((current, newest))
    };
    let (current, newest_batches) = run
        .await
        .map_err(|e| error(name, "reading current versions")(e))?;
    for b in &newest_batches {
        let cols: Vec<ArrayRef> = (0..key.len())
            .map(|i| arrow::compute::cast(b.column(i), key_columns[i].data_type()))
            .collect::<std::result::Result<_, _>>()?;
        let rows = converter.convert_columns(&cols)?;
        let seq = b.column(key.len()).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            newest.insert(rows.row(i).as_ref().to_vec(), seq.value(i));
        }
    }
    let current = match current.first() {
        Some(first) => Some(arrow::compute::concat_batches(&first.schema(), &current)?),
        None => None,
    };
    Ok((current, newest, converter))
}

/// The versions the batch touches, in the history table's columns; `None` when none.
pub(super) async fn versions(
    name: &str,
    spec: &SilverTableSpec,
    tracked: &[String],
    t: &DeltaTable,
    changes: &RecordBatch,
    truncate_at: Option<i64>,
    counts: &mut MergeCounts,
) -> Result<Option<RecordBatch>> {
    let key = &spec.key;
    let (current, newest, converter) = stored(name, t, key, changes, truncate_at).await?;
    let image_names = image_columns(&changes.schema());
    let image_schema: SchemaRef = Arc::new(Schema::new(
        image_names
            .iter()
            .map(|n| {
                let f = changes.schema().field_with_name(n).cloned();
                f.map(|f| f.with_nullable(true))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
    ));
    let image_indices: Vec<usize> = image_names
        .iter()
        .map(|n| changes.schema().index_of(n))
        .collect::<std::result::Result<_, _>>()?;
    let changed_images = RecordBatch::try_new(
        image_schema.clone(),
        image_indices
            .iter()
            .map(|i| changes.column(*i).clone())
            .collect(),
    )?;
    // Images: the stored current versions first, then the changes.
    let stored_n = current.as_ref().map_or(0, RecordBatch::num_rows);
    let images = match &current {
        Some(c) => {
            let c = conform(name, c, &image_schema)?;
            arrow::compute::concat_batches(&image_schema, &[c, changed_images])?
        }
        None => changed_images,
    };
    let key_cols: Vec<ArrayRef> = key
        .iter()
        .map(|k| images.column(image_schema.index_of(k).unwrap_or(0)).clone())
        .collect();
    let key_rows = converter.convert_columns(&key_cols)?;
    let tracked_idx: Vec<usize> = image_names
        .iter()
        .enumerate()
        .filter(|(_, n)| !key.contains(n) && (tracked.is_empty() || tracked.contains(n)))
        .map(|(i, _)| i)
        .collect();
    let tracked_rows: Vec<arrow::row::Rows> = tracked_idx
        .iter()
        .map(|&j| {
            let c = images.column(j).clone();
            RowConverter::new(vec![SortField::new(c.data_type().clone())])
                .and_then(|conv| conv.convert_columns(&[c]))
        })
        .collect::<std::result::Result<_, _>>()?;
    let same_tracked = |a: &[u32], b: &[u32]| {
        tracked_idx
            .iter()
            .zip(&tracked_rows)
            .all(|(&j, rows)| rows.row(a[j] as usize) == rows.row(b[j] as usize))
    };
    let text: Vec<Option<&StringArray>> = images
        .columns()
        .iter()
        .enumerate()
        .map(|(j, c)| {
            (!key.contains(&image_names[j]))
                .then(|| c.as_string_opt::<i32>())
                .flatten()
        })
        .collect();
    let placeholder = |j: usize, i: usize| text[j].is_some_and(|s| is_unavailable(s, i));

    // The open (current) version per key, from the table.
    let mut open: HashMap<Vec<u8>, Version> = HashMap::new();
    if let Some(c) = &current {
        let from = c.column_by_name("_valid_from").map(|a| {
            a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .clone()
        });
        let seq = c
            .column_by_name("_cdc_sequence")
            .map(|a| a.as_primitive::<Int64Type>().clone());
        let offset = c
            .column_by_name("_cdc_offset")
            .map(|a| a.as_primitive::<Int64Type>().clone());
        // Read back from the table, strings may be views.
        let op = match c.column_by_name("_cdc_op") {
            Some(a) => Some(
                arrow::compute::cast(a, &DataType::Utf8)?
                    .as_string::<i32>()
                    .clone(),
            ),
            None => None,
        };
        for i in 0..stored_n {
            open.insert(
                key_rows.row(i).as_ref().to_vec(),
                Version {
                    values: vec![i as u32; image_names.len()],
                    valid_from: from.as_ref().map_or(0, |f| f.value(i)),
                    valid_to: None,
                    op: op
                        .as_ref()
                        .map_or(String::new(), |o| o.value(i).to_string()),
                    sequence: seq.as_ref().map_or(0, |s| s.value(i)),
                    offset: offset.as_ref().map_or(0, |s| s.value(i)),
                    stored: true,
                    changed: false,
                },
            );
        }
    }
    let mut out: Vec<Version> = Vec::new();
    // A truncate closes every stored current version older than it.
    if let Some(at) = truncate_at {
        let ts = truncate_time(changes, at);
        open.retain(|_, v| {
            if v.sequence < at {
                let mut closed = v.clone();
                closed.valid_to = Some(ts.max(v.valid_from));
                closed.changed = true;
                out.push(closed);
                false
            } else {
                true
            }
        });
    }
    // The changes of each key in sequence order.
    let col = |n: &str| {
        changes
            .column_by_name(n)
            .cloned()
            .ok_or_else(|| error(name, "folding")(format!("no column {n}")))
    };
    let ops = col("_cdc_op")?;
    let ops = ops.as_string::<i32>();
    let seq_column = col("_cdc_sequence")?;
    let seqs = seq_column.as_primitive::<Int64Type>();
    let offset_column = col("_kafka_offset")?;
    let offsets = offset_column.as_primitive::<Int64Type>();
    let ts = col("_cdc_source_ts")?;
    let ts = ts.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let mut sort: Vec<SortColumn> = key_cols
        .iter()
        .map(|c| SortColumn {
            values: c.slice(stored_n, changes.num_rows()),
            options: None,
        })
        .collect();
    sort.push(SortColumn {
        values: seq_column.clone(),
        options: None,
    });
    sort.push(SortColumn {
        values: offset_column.clone(),
        options: None,
    });
    let order = lexsort_to_indices(&sort, None)?;
    let now = chrono::Utc::now().timestamp_micros();
    let mut newest = newest;
    let mut last_from: HashMap<Vec<u8>, i64> = HashMap::new();
    for &c in order.values() {
        let c = c as usize;
        let i = stored_n + c;
        if ops.value(c) == TRUNCATE || key_cols.iter().any(|k| k.is_null(i)) {
            continue;
        }
        let k = key_rows.row(i).as_ref().to_vec();
        let seq = seqs.value(c);
        let floor = newest.get(&k).copied();
        if floor.is_some_and(|f| seq <= f) || truncate_at.is_some_and(|at| seq < at) {
            counts.ignored += 1;
            continue;
        }
        newest.insert(k.clone(), seq);
        let at = if ts.is_valid(c) { ts.value(c) } else { now };
        if ops.value(c) == DELETE {
            if let Some(mut v) = open.remove(&k) {
                v.valid_to = Some(at.max(v.valid_from));
                v.changed = true;
                counts.deleted += 1;
                last_from.insert(k, v.valid_from);
                out.push(v);
            }
            continue;
        }
        let current = open.get(&k);
        let values: Vec<u32> = (0..image_names.len())
            .map(|j| match current {
                Some(v) if placeholder(j, i) => v.values[j],
                _ => i as u32,
            })
            .collect();
        let (op, offset) = (ops.value(c).to_string(), offsets.value(c));
        match open.remove(&k) {
            Some(mut v) if same_tracked(&v.values, &values) || at <= v.valid_from => {
                v.values = values;
                v.op = op;
                v.sequence = seq;
                v.offset = offset;
                v.changed = true;
                counts.updated += 1;
                open.insert(k, v);
            }
            previous => {
                let mut from = at;
                if let Some(mut v) = previous {
                    v.valid_to = Some(at);
                    v.changed = true;
                    from = from.max(v.valid_from + 1);
                    out.push(v);
                }
                if let Some(l) = last_from.get(&k) {
                    from = from.max(l + 1);
                }
                counts.inserted += 1;
                open.insert(
                    k,
                    Version {
                        values,
                        valid_from: from,
                        valid_to: None,
                        op,
                        sequence: seq,
                        offset,
                        stored: false,
                        changed: true,
                    },
                );
            }
        }
    }
    out.extend(open.into_values().filter(|v| v.changed));
    if out.is_empty() {
        return Ok(None);
    }
    // Zero-length versions never stored are dropped.
    out.retain(|v| v.stored || v.valid_to.is_none_or(|to| to > v.valid_from));
    let mut fields: Vec<Field> = image_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len() + HISTORY_COLUMNS.len());
    for j in 0..image_names.len() {
        let idx = UInt32Array::from_iter_values(out.iter().map(|v| v.values[j]));
        columns.push(take(images.column(j), &idx, None)?);
    }
    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    fields.extend([
        Field::new("_valid_from", ts_type.clone(), true),
        Field::new("_valid_to", ts_type, true),
        Field::new("_is_current", DataType::Boolean, true),
        Field::new("_cdc_op", DataType::Utf8, true),
        Field::new("_cdc_sequence", DataType::Int64, true),
        Field::new("_cdc_offset", DataType::Int64, true),
    ]);
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(out.iter().map(|v| v.valid_from))
            .with_timezone("UTC"),
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(out.iter().map(|v| v.valid_to).collect::<Vec<_>>())
            .with_timezone("UTC"),
    ));
    columns.push(Arc::new(BooleanArray::from(
        out.iter().map(|v| v.valid_to.is_none()).collect::<Vec<_>>(),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        out.iter().map(|v| v.op.as_str()),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(
        out.iter().map(|v| v.sequence),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(
        out.iter().map(|v| v.offset),
    )));
    Ok(Some(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?))
}

/// The source timestamp of the newest truncate at sequence `at`.
fn truncate_time(changes: &RecordBatch, at: i64) -> i64 {
    let (Some(ops), Some(seq), Some(ts)) = (
        changes
            .column_by_name("_cdc_op")
            .and_then(|c| c.as_string_opt::<i32>()),
        changes
            .column_by_name("_cdc_sequence")
            .and_then(|c| c.as_primitive_opt::<Int64Type>()),
        changes
            .column_by_name("_cdc_source_ts")
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()),
    ) else {
        return chrono::Utc::now().timestamp_micros();
    };
    (0..changes.num_rows())
        .find(|&i| ops.value(i) == TRUNCATE && seq.value(i) == at && ts.is_valid(i))
        .map_or_else(|| chrono::Utc::now().timestamp_micros(), |i| ts.value(i))
}

/// Write `source` (versions) by MERGE on key and `_valid_from`, committing `txns`.
pub(super) async fn merge(
    name: &str,
    spec: &SilverTableSpec,
    mut t: DeltaTable,
    source: RecordBatch,
    txns: Vec<Transaction>,
    created_with: &[(String, String)],
) -> std::result::Result<DeltaTable, (Option<DeltaTable>, Error)> {
    t = super::merge::prepared(
        name,
        spec,
        t,
        &source.schema(),
        &spec.partition_by,
        created_with,
    )
    .await
    .map_err(|e| (None, e))?;
    let df = match SessionContext::new().read_batch(source.clone()) {
        Ok(df) => df,
        Err(e) => return Err((Some(t), error(name, "reading versions")(e))),
    };
    let mut on: Vec<String> = spec
        .key
        .iter()
        .map(|k| format!("t.{0} = s.{0}", quote(k)))
        .collect();
    on.push("t._valid_from = s._valid_from".into());
    let columns: Vec<String> = source
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let builder = table::upsert_all(
        t.merge(df, on.join(" AND "))
            .with_source_alias("s")
            .with_target_alias("t")
            .with_merge_schema(true)
            .with_commit_properties(
                CommitProperties::default().with_application_transactions(txns),
            ),
        &columns,
    );
    match builder {
        Ok(b) => match b.await {
            Ok((t, _)) => Ok(t),
            Err(e) => Err((None, delta(name, "merging history")(e))),
        },
        Err(e) => Err((None, delta(name, "planning history merge")(e))),
    }
}
