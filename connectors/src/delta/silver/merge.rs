//! The Delta I/O of a silver commit: the reduced changes applied by one MERGE, deletes
//! recorded in the table's tombstones, and commits carrying only offsets.
//!
//! The MERGE matches on the key and applies a change only when it is newer than the stored
//! row (by `_cdc_sequence`, then `_cdc_offset`); a text column holding Debezium's
//! unavailable-value placeholder keeps the stored value. Changes older than a recorded
//! delete of their key are left out before it, so a late change never brings a deleted
//! row back.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{Action, Transaction};
use sluice_pipeline::lake::Lake;
use sluice_pipeline::{OffsetRange, TopicPartition};

use super::reduce::{not_removed_by, reduce, truncate_point};
use super::{CDC_COLUMNS, MergeCounts, SilverSink, SilverTableSpec, silver_error};
use crate::decode::debezium::{DELETE, UNAVAILABLE};
use crate::delta::table::{self, quote};
use crate::error::{Error, Result, delta};
use crate::evolve::merged_schema;

/// Create the table at `t`'s location with `schema`, the statistics `spec` allows and the
/// properties `created_with`, or bring an existing table's statistics settings up to date
/// for rows of `schema`.
pub(super) async fn prepared(
    name: &str,
    spec: &SilverTableSpec,
    mut t: DeltaTable,
    schema: &Schema,
    partition_by: &[String],
    created_with: &[(String, String)],
) -> Result<DeltaTable> {
    if table::exists(&t) {
        let stored = table::arrow_schema(name, &t)?;
        let wider = merged_schema(name, [stored.clone(), Arc::new(schema.clone())].into_iter())?;
        // A wider schema is committed before the MERGE: a struct column gaining a field
        // inside the MERGE would make delta-rs read that column from the changes for the
        // rows it only copies, nulling it in rows the batch does not touch.
        let widened = (wider.fields() != stored.fields()).then_some(wider.as_ref());
        crate::delta::stats::ensure(name, &mut t, &spec.stats_properties(&wider), widened).await?;
        return Ok(t);
    }
    let url = t.table_url().clone();
    let schema = table::nullable(schema);
    let mut properties = spec.stats_properties(&schema);
    properties.extend(created_with.iter().cloned());
    table::create(name, &url, &schema, partition_by, &properties).await
}

/// Apply `changes` to the table and commit `txns` with them. On failure the table is given
/// back (when still owned) for a retry.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply(
    lake: &Lake,
    pipeline: &str,
    name: &str,
    spec: &SilverTableSpec,
    mut t: DeltaTable,
    changes: Option<RecordBatch>,
    txns: Vec<Transaction>,
    ranges: &BTreeMap<TopicPartition, OffsetRange>,
    counts: &mut MergeCounts,
    created_with: &[(String, String)],
) -> std::result::Result<DeltaTable, (Option<DeltaTable>, Error)> {
    let Some(changes) = changes else {
        return commit_offsets_only(name, pipeline, spec, t, ranges).await;
    };
    let mut winners = match reduce(&changes, &spec.key) {
        Ok(w) => w,
        Err(e) => return Err((Some(t), e)),
    };
    // A truncate deletes everything older; changes older than it are moot.
    if let Some(at) = truncate_point(&winners) {
        if table::exists(&t) {
            let predicate = format!("_cdc_sequence < {at}");
            t = match t.delete().with_predicate(predicate).await {
                Ok((t, _)) => t,
                Err(e) => return Err((None, delta(name, "truncating")(e))),
            };
        }
        let keep = not_removed_by(&winners, at);
        winners = match filter_record_batch(&winners, &keep) {
            Ok(w) => w,
            Err(e) => return Err((Some(t), e.into())),
        };
    }
    counts.ignored = counts.changes.saturating_sub(winners.num_rows());
    let source = match to_silver_rows(&winners) {
        Ok(s) => s,
        Err(e) => return Err((Some(t), e)),
    };
    if source.num_rows() == 0 {
        return commit_offsets_only(name, pipeline, spec, t, ranges).await;
    }
    t = prepared(
        name,
        spec,
        t,
        &source.schema(),
        &spec.partition_by,
        created_with,
    )
    .await
    .map_err(|e| (None, e))?;
    let tombstoned = record_deletes(lake, name, spec, &source)
        .await
        .map_err(|e| (None, e))?;
    let ctx = SessionContext::new();
    let changes = ctx
        .read_batch(source.clone())
        .map_err(|e| (None, silver_error(name, "reading changes")(e)))?;
    let df = match tombstoned {
        Some(tombs) => {
            let provider = tombs
                .table_provider()
                .await
                .map_err(|e| (None, silver_error(name, "reading tombstones")(e)))?;
            let sql = not_tombstoned_sql(&spec.key);
            let run = async {
                ctx.register_table("changes", changes.into_view())?;
                ctx.register_table("tombstones", provider)?;
                ctx.sql(&sql).await
            };
            run.await
                .map_err(|e| (None, silver_error(name, "filtering by tombstones")(e)))?
        }
        None => changes,
    };
    let builder = merge_builder(t, df, &source.schema(), &spec.key, txns)
        .map_err(|e| (None, delta(name, "planning merge")(e)))?;
    match builder.await {
        Ok((t, m)) => {
            counts.inserted = m.num_target_rows_inserted;
            counts.updated = m.num_target_rows_updated;
            counts.deleted = m.num_target_rows_deleted;
            counts.ignored = counts
                .changes
                .saturating_sub(counts.inserted + counts.updated + counts.deleted);
            Ok(t)
        }
        Err(e) => Err((None, delta(name, "merging")(e))),
    }
}

/// A commit holding only the offsets (every change was older, fenced or filtered out).
pub(super) async fn commit_offsets_only(
    name: &str,
    pipeline: &str,
    spec: &SilverTableSpec,
    mut t: DeltaTable,
    ranges: &BTreeMap<TopicPartition, OffsetRange>,
) -> std::result::Result<DeltaTable, (Option<DeltaTable>, Error)> {
    if !table::exists(&t) {
        // No schema to create the table with yet: the offsets are re-read next time and
        // bronze drops what it already holds.
        return Ok(t);
    }
    let actions = Vec::<Action>::new();
    match table::commit(name, &mut t, pipeline, actions, ranges, &spec.partition_by).await {
        Ok(_) => Ok(t),
        Err(e) => Err((Some(t), e)),
    }
}

/// Whether change `s` is newer than the stored row `t`.
fn newer(s: &str, t: &str) -> String {
    format!(
        "({s}._cdc_sequence > {t}._cdc_sequence OR ({s}._cdc_sequence = {t}._cdc_sequence AND {s}._cdc_offset > {t}._cdc_offset))"
    )
}

fn not_tombstoned_sql(key: &[String]) -> String {
    let on: Vec<String> = key
        .iter()
        .map(|k| format!("c.{} = d.{}", quote(k), quote(k)))
        .collect();
    format!(
        "SELECT c.* FROM changes c LEFT JOIN tombstones d ON {} \
         WHERE c._cdc_op = '{DELETE}' OR d._cdc_sequence IS NULL OR {}",
        on.join(" AND "),
        newer("c", "d")
    )
}

fn merge_builder(
    t: DeltaTable,
    df: deltalake::datafusion::prelude::DataFrame,
    schema: &SchemaRef,
    key: &[String],
    txns: Vec<Transaction>,
) -> std::result::Result<deltalake::operations::merge::MergeBuilder, deltalake::DeltaTableError> {
    let on: Vec<String> = key
        .iter()
        .map(|k| format!("t.{} = s.{}", quote(k), quote(k)))
        .collect();
    let newer = newer("s", "t");
    let columns: Vec<(String, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type() == &DataType::Utf8))
        .collect();
    // A column the rows add (the source table gained one) has no stored value to keep.
    let stored: Vec<String> = table::arrow_schema("silver", &t)
        .map(|s| s.fields().iter().map(|f| f.name().clone()).collect())
        .unwrap_or_default();
    let keep = |c: &str, text: bool, fallback: &str| {
        let q = quote(c);
        let fallback = if stored.iter().any(|s| s == c) {
            fallback
        } else {
            "NULL"
        };
        if text && !CDC_COLUMNS.contains(&c) {
            format!("CASE WHEN s.{q} = '{UNAVAILABLE}' THEN {fallback} ELSE s.{q} END")
        } else {
            format!("s.{q}")
        }
    };
    let cols = columns.clone();
    let cols2 = columns;
    t.merge(df, on.join(" AND "))
        .with_source_alias("s")
        .with_target_alias("t")
        .with_merge_schema(true)
        .with_commit_properties(CommitProperties::default().with_application_transactions(txns))
        .when_matched_delete(|d| d.predicate(format!("s._cdc_op = '{DELETE}' AND {newer}")))?
        .when_matched_update(|mut u| {
            u = u.predicate(format!("s._cdc_op <> '{DELETE}' AND {newer}"));
            for (c, text) in &cols {
                u = u.update(quote(c), keep(c, *text, &format!("t.{}", quote(c))));
            }
            u
        })?
        .when_not_matched_insert(|mut i| {
            i = i.predicate(format!("s._cdc_op <> '{DELETE}'"));
            for (c, text) in &cols2 {
                i = i.set(quote(c), keep(c, *text, "NULL"));
            }
            i
        })
}

/// Record the deletes among `rows` in the table's tombstones (newest per key wins);
/// returns the tombstone table when there is one, for filtering older changes.
async fn record_deletes(
    lake: &Lake,
    silver: &str,
    spec: &SilverTableSpec,
    rows: &RecordBatch,
) -> Result<Option<DeltaTable>> {
    let location = SilverSink::tombstones_location(&spec.name);
    let url = table::lake_url(lake, &location)?;
    let t = table::open(&location, &url).await?;
    let ops = rows
        .column_by_name("_cdc_op")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| silver_error(silver, "recording deletes")("no _cdc_op column"))?;
    let deletes = BooleanArray::from(
        ops.iter()
            .map(|o| Some(o == Some(DELETE)))
            .collect::<Vec<_>>(),
    );
    if deletes.true_count() == 0 {
        return Ok(table::exists(&t).then_some(t));
    }
    let mut columns: Vec<usize> = Vec::new();
    for c in spec
        .key
        .iter()
        .map(String::as_str)
        .chain(["_cdc_sequence", "_cdc_offset"])
    {
        columns.push(rows.schema().index_of(c)?);
    }
    let tombs = filter_record_batch(&rows.project(&columns)?, &deletes)?;
    let t = prepared(&location, spec, t, &tombs.schema(), &[], &[]).await?;
    let on: Vec<String> = spec
        .key
        .iter()
        .map(|k| format!("t.{} = s.{}", quote(k), quote(k)))
        .collect();
    let newer = newer("s", "t");
    let df = SessionContext::new()
        .read_batch(tombs)
        .map_err(silver_error(&location, "reading deletes"))?;
    let (t, _) = t
        .merge(df, on.join(" AND "))
        .with_source_alias("s")
        .with_target_alias("t")
        .when_matched_update(|u| {
            u.predicate(newer.clone())
                .update("_cdc_sequence", "s._cdc_sequence")
                .update("_cdc_offset", "s._cdc_offset")
        })
        .and_then(|m| {
            m.when_not_matched_insert(|mut i| {
                for c in spec
                    .key
                    .iter()
                    .map(String::as_str)
                    .chain(["_cdc_sequence", "_cdc_offset"])
                {
                    i = i.set(quote(c), format!("s.{}", quote(c)));
                }
                i
            })
        })
        .map_err(delta(&location, "planning"))?
        .await
        .map_err(delta(&location, "recording deletes"))?;
    Ok(Some(t))
}

/// The columns a silver table stores: the row, then `_cdc_*` (the Kafka lineage used for
/// fencing is left out; `_kafka_offset` becomes `_cdc_offset`).
fn to_silver_rows(winners: &RecordBatch) -> Result<RecordBatch> {
    let schema = winners.schema();
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in schema.fields().iter().zip(winners.columns()) {
        match f.name().as_str() {
            "_kafka_topic" | "_kafka_partition" => {}
            "_kafka_offset" => {
                fields.push(Field::new("_cdc_offset", DataType::Int64, true));
                columns.push(c.clone());
            }
            _ => {
                fields.push(f.as_ref().clone());
                columns.push(c.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}
