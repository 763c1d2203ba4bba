//! The silver sink: current state per primary key, maintained by Delta MERGE from the
//! change events (Debezium envelopes) that land in bronze.
//!
//! The sink sees the same batches as bronze, after the PII transforms, so it only ever
//! holds protected values. On [`SilverSink::write`] the envelopes of each batch become
//! *change rows*: the row image (`after`, or the key from `before` for a delete), the
//! operation and the event's sequence. On [`SilverSink::commit`], per silver table:
//!
//! 1. fence: drop changes at offsets the silver table already holds (its own `txn`s);
//! 2. reduce: keep the newest change per key (by sequence, then Kafka offset). A column
//!    holding Debezium's unavailable-value placeholder (an unchanged TOASTed value) takes
//!    the value of an older change of the same key in the batch, or keeps the table's;
//! 3. a truncate (`op = t`) deletes every row older than it; older changes are dropped;
//! 4. deletes are recorded in `_sluice/tombstones_<table>` (key, sequence), so that a late
//!    change older than a delete never brings the row back;
//! 5. MERGE: a newer change updates or deletes the stored row, an insert adds it, an older
//!    one is ignored (counted). The commit carries one `txn` per partition, like bronze.
//!
//! Every step is idempotent by sequence, so replays and out-of-order delivery converge to
//! the same table, and a crash anywhere re-applies the batch without doubling anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, filter_record_batch, lexsort_to_indices};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{Action, Transaction};
use sluice_pipeline::lake::Lake;
use sluice_pipeline::{CommitOutcome, OffsetRange, SourceBatch, TopicPartition};

use super::bronze::{conform, merged_schema};
use super::fence::{self, TxnCache, filter_offsets_above};
use super::stats::StatsPolicy;
use super::table::{self, quote};
use crate::decode::debezium::{
    ChangeSpec, DELETE, Sequence, TRUNCATE, UNAVAILABLE, change_rows, is_unavailable,
};
use crate::error::{Error, Result, delta};

/// Columns sluice adds to every silver table.
pub const CDC_COLUMNS: [&str; 4] = ["_cdc_op", "_cdc_sequence", "_cdc_offset", "_cdc_source_ts"];

/// One silver table and where its changes come from.
#[derive(Debug, Clone)]
pub struct SilverTableSpec {
    pub name: String,
    /// Topics whose events feed the table.
    pub topics: BTreeSet<String>,
    /// Primary key columns of the row.
    pub key: Vec<String>,
    /// Only events whose `source.table` is this.
    pub source_table: Option<String>,
    pub sequence: Sequence,
    pub partition_by: Vec<String>,
    /// Tracked columns of an SCD type 2 history table (`None`: no history; empty: all).
    pub history: Option<Vec<String>>,
    /// Which columns carry file statistics (the table, its history and tombstones).
    pub stats: Arc<StatsPolicy>,
}

impl SilverTableSpec {
    /// Which change events feed the table, and how they are read.
    pub fn changes(&self) -> ChangeSpec<'_> {
        ChangeSpec {
            topics: &self.topics,
            source_table: self.source_table.as_deref(),
            key: &self.key,
            sequence: &self.sequence,
        }
    }

    /// The statistics properties of this table's tables with `schema`.
    pub fn stats_properties(&self, schema: &Schema) -> Vec<(String, String)> {
        self.stats
            .properties(super::stats::TableKind::Silver(&self.name), schema)
    }
}

/// Create the table at `t`'s location with `schema` and the statistics `spec` allows, or
/// bring an existing table's statistics settings up to date for rows of `schema`.
pub(super) async fn prepared(
    name: &str,
    spec: &SilverTableSpec,
    mut t: DeltaTable,
    schema: &Schema,
    partition_by: &[String],
) -> Result<DeltaTable> {
    if table::exists(&t) {
        let stored = table::arrow_schema(name, &t)?;
        let wider = merged_schema(name, [stored, Arc::new(schema.clone())].into_iter())?;
        super::stats::ensure(name, &mut t, &spec.stats_properties(&wider), None).await?;
        return Ok(t);
    }
    let url = t.table_url().clone();
    let schema = table::nullable(schema);
    table::create(
        name,
        &url,
        &schema,
        partition_by,
        &spec.stats_properties(&schema),
    )
    .await
}

/// Settings of the silver sink.
#[derive(Debug, Clone)]
pub struct SilverSinkConfig {
    pub lake: Lake,
    pub pipeline: String,
    pub tables: Vec<SilverTableSpec>,
}

struct State {
    spec: SilverTableSpec,
    location: String,
    /// This state keeps the table's SCD type 2 history (with these tracked columns).
    history: Option<Vec<String>>,
    table: Option<DeltaTable>,
    /// Change rows waiting for the next commit.
    pending: Vec<RecordBatch>,
    ranges: BTreeMap<TopicPartition, OffsetRange>,
    txns: TxnCache,
}

/// Maintains `<lake>/silver/<table>` for each configured table.
pub struct SilverSink {
    config: SilverSinkConfig,
    states: Vec<State>,
}

/// What one silver commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCounts {
    pub changes: usize,
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Changes older than the stored state (or a newer change in the same batch).
    pub ignored: usize,
}

impl SilverSink {
    pub fn new(config: SilverSinkConfig) -> Self {
        let state = |spec: &SilverTableSpec, history: Option<Vec<String>>| State {
            location: match history {
                Some(_) => super::history::location(&spec.name),
                None => Self::location(&spec.name),
            },
            spec: spec.clone(),
            history,
            table: None,
            pending: Vec::new(),
            ranges: BTreeMap::new(),
            txns: TxnCache::default(),
        };
        let states = config
            .tables
            .iter()
            .flat_map(|spec| {
                let history = spec.history.clone().map(|h| state(spec, Some(h)));
                std::iter::once(state(spec, None)).chain(history)
            })
            .collect();
        Self { config, states }
    }

    /// Relative location of a silver table in the lake.
    pub fn location(table: &str) -> String {
        format!("silver/{table}")
    }

    /// Relative location of a silver table's delete records.
    pub fn tombstones_location(table: &str) -> String {
        format!("_sluice/tombstones_{table}")
    }

    /// Whether any silver table reads `topic`.
    pub fn reads(&self, topic: &str) -> bool {
        self.states.iter().any(|s| s.spec.topics.contains(topic))
    }

    /// Take the change rows of `batch` (already protected) for every table its topics feed.
    pub fn write(&mut self, batch: &SourceBatch) -> Result<()> {
        for s in &mut self.states {
            let ranges: Vec<(TopicPartition, OffsetRange)> = batch
                .offsets
                .iter()
                .filter(|(tp, _)| s.spec.topics.contains(&tp.topic))
                .map(|(tp, r)| (tp.clone(), *r))
                .collect();
            if ranges.is_empty() {
                continue;
            }
            if let Some(rows) = &batch.rows
                && let Some(changes) = changes_of(rows, &s.spec, &s.location)?
                && changes.num_rows() > 0
            {
                s.pending.push(changes);
            }
            for (tp, r) in ranges {
                s.ranges.entry(tp).and_modify(|e| e.extend(r)).or_insert(r);
            }
        }
        Ok(())
    }

    /// Forget what is buffered for partitions this process no longer owns.
    pub fn revoke(&mut self, partitions: &[TopicPartition]) {
        for s in &mut self.states {
            fence::forget_partitions(&mut s.pending, &mut s.ranges, partitions);
        }
    }

    /// Merge everything buffered. Partitions whose every change the silver tables already
    /// hold are reported in `outcome.fenced` only through `fenced`, which the caller
    /// combines with bronze's.
    pub async fn commit(
        &mut self,
        outcome: &mut CommitOutcome,
        fenced: &mut BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let Self { config, states } = self;
        // A partition may be skipped ahead only when every table it feeds is fenced, and
        // only as far as the least advanced one.
        let mut skip: BTreeMap<TopicPartition, Option<i64>> = BTreeMap::new();
        for s in states {
            if s.ranges.is_empty() {
                continue;
            }
            let mut own = BTreeMap::new();
            let needed: Vec<TopicPartition> = s.ranges.keys().cloned().collect();
            let counts = commit_table(&config.lake, &config.pipeline, s, outcome, &mut own).await?;
            for tp in needed {
                let next = own.get(&tp).copied();
                let e = skip.entry(tp).or_insert(next);
                *e = match (*e, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
            }
            s.pending.clear();
            s.ranges.clear();
            let label = s.location.trim_start_matches("silver/").to_string();
            metrics::counter!("sluice_cdc_changes_total", "table" => label.clone())
                .increment(counts.changes as u64);
            metrics::counter!("sluice_cdc_rows_inserted_total", "table" => label.clone())
                .increment(counts.inserted as u64);
            metrics::counter!("sluice_cdc_rows_updated_total", "table" => label.clone())
                .increment(counts.updated as u64);
            metrics::counter!("sluice_cdc_rows_deleted_total", "table" => label.clone())
                .increment(counts.deleted as u64);
            metrics::counter!("sluice_cdc_changes_ignored_total", "table" => label)
                .increment(counts.ignored as u64);
            tracing::debug!(table = %s.location, changes = counts.changes, inserted = counts.inserted, updated = counts.updated, deleted = counts.deleted, ignored = counts.ignored, "silver merge");
        }
        fenced.extend(skip.into_iter().filter_map(|(tp, n)| n.map(|n| (tp, n))));
        Ok(())
    }
}

pub(super) fn silver_error(table: &str, context: &str) -> impl FnOnce(String) -> Error {
    let (table, context) = (table.to_string(), context.to_string());
    move |message| Error::Silver {
        table,
        context,
        message,
    }
}

async fn commit_table(
    lake: &Lake,
    pipeline: &str,
    s: &mut State,
    outcome: &mut CommitOutcome,
    fenced_out: &mut BTreeMap<TopicPartition, i64>,
) -> Result<MergeCounts> {
    let name = s.location.clone();
    let url = table::lake_url(lake, &name)?;
    let mut t = match s.table.take() {
        Some(t) => t,
        None => table::open(&name, &url).await?,
    };
    let mut last_error = String::new();
    for attempt in 0..super::COMMIT_ATTEMPTS {
        if attempt > 0 {
            table::refresh(&name, &mut t).await?;
        }
        let mut ranges = s.ranges.clone();
        let committed = s.txns.offsets(&name, &t, pipeline, &ranges).await?;
        let fenced = fence::fence(&mut ranges, &committed);
        for (tp, next) in fenced {
            fenced_out.insert(tp, next);
        }
        if ranges.is_empty() {
            s.table = Some(t);
            return Ok(MergeCounts::default());
        }
        let mut changes: Vec<RecordBatch> = Vec::with_capacity(s.pending.len());
        for b in &s.pending {
            let b = filter_offsets_above(b, &committed)?;
            if b.num_rows() > 0 {
                changes.push(b);
            }
        }
        let changes = if changes.is_empty() {
            None
        } else {
            let schema = merged_schema(&name, changes.iter().map(|b| b.schema()))?;
            let conformed = changes
                .iter()
                .map(|b| conform(&name, b, &schema))
                .collect::<Result<Vec<_>>>()?;
            Some(concat_batches(&schema, &conformed)?)
        };
        let mut counts = MergeCounts {
            changes: changes.as_ref().map_or(0, RecordBatch::num_rows),
            ..Default::default()
        };
        let now = chrono::Utc::now().timestamp_millis();
        let txns: Vec<Transaction> = ranges
            .iter()
            .map(|(tp, r)| {
                Transaction::new_with_last_update(table::app_id(pipeline, tp), r.last, Some(now))
            })
            .collect();
        let result = match (&s.history, changes) {
            (None, changes) => {
                apply(
                    lake,
                    pipeline,
                    &name,
                    &s.spec,
                    t,
                    changes,
                    txns,
                    &ranges,
                    &mut counts,
                )
                .await
            }
            (Some(_), None) => commit_offsets_only(&name, pipeline, &s.spec, t, &ranges).await,
            (Some(tracked), Some(changes)) => {
                let at = truncate_point(&changes);
                match super::history::versions(
                    &name,
                    &s.spec,
                    tracked,
                    &t,
                    &changes,
                    at,
                    &mut counts,
                )
                .await
                {
                    Ok(Some(v)) => super::history::merge(&name, &s.spec, t, v, txns).await,
                    Ok(None) => commit_offsets_only(&name, pipeline, &s.spec, t, &ranges).await,
                    Err(e) => Err((Some(t), e)),
                }
            }
        };
        match result {
            Ok(done) => {
                t = done;
                for (tp, r) in &ranges {
                    outcome.committed.push((tp.clone(), r.last + 1));
                }
                outcome.commits += 1;
                if let Some(v) = t.version() {
                    s.txns.committed(v as i64, &ranges);
                    metrics::gauge!("sluice_delta_table_version", "table" => s.spec.name.clone())
                        .set(v as f64);
                }
                s.table = Some(t);
                return Ok(counts);
            }
            Err((table, e)) => {
                metrics::counter!("sluice_delta_commit_conflicts_total", "table" => s.spec.name.clone())
                    .increment(1);
                tracing::warn!(table = %name, attempt, error = %e, "silver merge refused, retrying against the refreshed table");
                last_error = e.to_string();
                t = match table {
                    Some(t) => t,
                    None => table::open(&name, &url).await?,
                };
            }
        }
    }
    Err(Error::CommitRetries {
        table: name,
        attempts: super::COMMIT_ATTEMPTS,
        last: last_error,
    })
}

/// Apply `changes` to the table and commit `txns` with them. On failure the table is given
/// back (when still owned) for a retry.
#[allow(clippy::too_many_arguments)]
async fn apply(
    lake: &Lake,
    pipeline: &str,
    name: &str,
    spec: &SilverTableSpec,
    mut t: DeltaTable,
    changes: Option<RecordBatch>,
    txns: Vec<Transaction>,
    ranges: &BTreeMap<TopicPartition, OffsetRange>,
    counts: &mut MergeCounts,
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
        let keep = newer_than(&winners, at);
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
    t = prepared(name, spec, t, &source.schema(), &spec.partition_by)
        .await
        .map_err(|e| (None, e))?;
    let tombstoned = record_deletes(lake, name, spec, &source)
        .await
        .map_err(|e| (None, e))?;
    let ctx = SessionContext::new();
    let changes = ctx
        .read_batch(source.clone())
        .map_err(|e| (None, silver_error(name, "reading changes")(e.to_string())))?;
    let df = match tombstoned {
        Some(tombs) => {
            let provider = tombs.table_provider().await.map_err(|e| {
                (
                    None,
                    silver_error(name, "reading tombstones")(e.to_string()),
                )
            })?;
            let sql = not_tombstoned_sql(&spec.key);
            let run = async {
                ctx.register_table("changes", changes.into_view())?;
                ctx.register_table("tombstones", provider)?;
                ctx.sql(&sql).await
            };
            run.await.map_err(|e| {
                (
                    None,
                    silver_error(name, "filtering by tombstones")(e.to_string()),
                )
            })?
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
async fn commit_offsets_only(
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
        .ok_or_else(|| silver_error(silver, "recording deletes")("no _cdc_op column".into()))?;
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
    let t = prepared(&location, spec, t, &tombs.schema(), &[]).await?;
    let on: Vec<String> = spec
        .key
        .iter()
        .map(|k| format!("t.{} = s.{}", quote(k), quote(k)))
        .collect();
    let newer = newer("s", "t");
    let df = SessionContext::new()
        .read_batch(tombs)
        .map_err(|e| silver_error(&location, "reading deletes")(e.to_string()))?;
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

/// The highest sequence of a truncate among `rows`, if any.
fn truncate_point(rows: &RecordBatch) -> Option<i64> {
    let ops = rows.column_by_name("_cdc_op")?.as_string_opt::<i32>()?;
    let seq = rows
        .column_by_name("_cdc_sequence")?
        .as_primitive_opt::<Int64Type>()?;
    (0..rows.num_rows())
        .filter(|i| ops.value(*i) == TRUNCATE)
        .map(|i| seq.value(i))
        .max()
}

/// Rows whose sequence is above `at` (and that are not truncates themselves).
fn newer_than(rows: &RecordBatch, at: i64) -> BooleanArray {
    let seq = rows
        .column_by_name("_cdc_sequence")
        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
    let ops = rows
        .column_by_name("_cdc_op")
        .and_then(|c| c.as_string_opt::<i32>().cloned());
    (0..rows.num_rows())
        .map(|i| {
            let newer = seq.as_ref().is_some_and(|s| s.value(i) > at);
            let truncate = ops.as_ref().is_some_and(|o| o.value(i) == TRUNCATE);
            Some(newer && !truncate)
        })
        .collect()
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

/// The newest change per key of `changes` (by `_cdc_sequence`, then `_kafka_offset`).
/// Changes without a full key are left out. A text column holding the unavailable-value
/// placeholder takes the value of the newest older change of the key that had one, back to
/// the key's last delete; with none in the batch the placeholder stays (the MERGE keeps the
/// table's value). Truncates are kept as they are, apart from the keys.
pub fn reduce(changes: &RecordBatch, key: &[String]) -> Result<RecordBatch> {
    let col = |name: &str| -> Result<ArrayRef> {
        changes
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::Decode(format!("change rows lack column {name}")))
    };
    let ops = col("_cdc_op")?;
    let ops = ops.as_string::<i32>();
    let key_columns: Vec<ArrayRef> = key.iter().map(|k| col(k)).collect::<Result<_>>()?;
    let mut sort: Vec<SortColumn> = key_columns
        .iter()
        .map(|c| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect();
    for c in ["_cdc_sequence", "_kafka_offset"] {
        sort.push(SortColumn {
            values: col(c)?,
            options: None,
        });
    }
    let order = lexsort_to_indices(&sort, None)?;
    let converter = RowConverter::new(
        key_columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let keys = converter.convert_columns(&key_columns)?;
    let full_key = |i: usize| key_columns.iter().all(|c| c.is_valid(i));
    // Groups of equal keys in sorted order; truncates each form their own group.
    let mut winners: Vec<u32> = Vec::new();
    let mut groups: Vec<(usize, usize)> = Vec::new(); // [start, end) into `order`
    let order: Vec<usize> = order.values().iter().map(|i| *i as usize).collect();
    let mut start = 0;
    for pos in 1..=order.len() {
        let boundary = pos == order.len()
            || ops.value(order[pos]) == TRUNCATE
            || ops.value(order[pos - 1]) == TRUNCATE
            || keys.row(order[pos]) != keys.row(order[pos - 1]);
        if boundary {
            let last = order[pos - 1];
            if ops.value(last) == TRUNCATE || full_key(last) {
                winners.push(last as u32);
                groups.push((start, pos));
            }
            start = pos;
        }
    }
    let schema = changes.schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(changes.columns()) {
        let text = c.as_string_opt::<i32>();
        let fill = match text {
            Some(s) if !key.contains(f.name()) && !f.name().starts_with('_') => {
                let mut idx: Vec<u32> = Vec::with_capacity(winners.len());
                let mut changed = false;
                for (w, (start, end)) in winners.iter().zip(&groups) {
                    let w = *w as usize;
                    let mut chosen = w;
                    if is_unavailable(s, w) {
                        for &j in order[*start..*end - 1].iter().rev() {
                            if ops.value(j) == DELETE {
                                break;
                            }
                            if !is_unavailable(s, j) {
                                chosen = j;
                                changed = true;
                                break;
                            }
                        }
                    }
                    idx.push(chosen as u32);
                }
                changed.then_some(idx)
            }
            _ => None,
        };
        let indices = UInt32Array::from(fill.unwrap_or_else(|| winners.clone()));
        columns.push(arrow::compute::take(c, &indices, None)?);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The change rows of `rows` for `spec`, checked to reduce. Rows the change rows cannot
/// be made of (a panic or an error on them alone, found by bisection) stay in bronze but
/// are left out of silver, counted and logged with their provenance (never their values),
/// so no event can stop the pipeline.
fn changes_of(
    rows: &RecordBatch,
    spec: &SilverTableSpec,
    location: &str,
) -> Result<Option<RecordBatch>> {
    let attempt = |b: &RecordBatch| -> std::result::Result<Option<RecordBatch>, ()> {
        sluice_pipeline::panic::guard(|| {
            let changes = change_rows(b, &spec.changes())?;
            if let Some(c) = &changes {
                reduce(c, &spec.key)?;
            }
            Ok::<_, Error>(changes)
        })
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ()))
    };
    if let Ok(changes) = attempt(rows) {
        return Ok(changes);
    }
    let mut parts: Vec<RecordBatch> = Vec::new();
    let mut refused: Vec<usize> = Vec::new();
    let mut stack = vec![(0, rows.num_rows())];
    while let Some((start, len)) = stack.pop() {
        match attempt(&rows.slice(start, len)) {
            Ok(Some(c)) => parts.push(c),
            Ok(None) => {}
            Err(()) if len <= 1 => refused.extend(start..start + len),
            Err(()) => {
                stack.push((start + len / 2, len - len / 2));
                stack.push((start, len / 2));
            }
        }
    }
    let offsets = rows
        .column_by_name("_kafka_offset")
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .map(|o| refused.iter().map(|i| o.value(*i)).collect::<Vec<_>>())
        .unwrap_or_default();
    metrics::counter!("sluice_cdc_changes_refused_total", "table" => location.to_string())
        .increment(refused.len() as u64);
    tracing::warn!(
        table = %location,
        events = refused.len(),
        offsets = ?offsets.iter().take(20).collect::<Vec<_>>(),
        "Change events that cannot be applied to silver (they are kept in bronze)."
    );
    if parts.is_empty() {
        return Ok(None);
    }
    // (The left half is always taken first: the parts are in row order.)
    let schema = merged_schema(location, parts.iter().map(RecordBatch::schema))?;
    let conformed = parts
        .iter()
        .map(|b| conform(location, b, &schema))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(concat_batches(&schema, &conformed)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::json::{JsonDecoder, JsonDecoderConfig, RawMessage};
    use arrow::array::{Int64Array, StringArray};
    use arrow::compute::cast;
    use proptest::prelude::*;

    /// One change of key `id`: `Some(name)` an upsert, `None` a delete.
    type Change = (i64, Option<String>, i64);

    fn envelope((id, name, lsn): &Change) -> String {
        let image = |n: &str| format!(r#"{{"id": {id}, "name": "{n}", "bio": "{UNAVAILABLE}"}}"#);
        match name {
            Some(n) => format!(
                r#"{{"before": null, "after": {}, "source": {{"table": "t", "lsn": {lsn}}}, "op": "u", "ts_ms": 1}}"#,
                image(n)
            ),
            None => format!(
                r#"{{"before": {{"id": {id}, "name": null, "bio": null}}, "after": null, "source": {{"table": "t", "lsn": {lsn}}}, "op": "d", "ts_ms": 1}}"#
            ),
        }
    }

    fn spec() -> SilverTableSpec {
        SilverTableSpec {
            name: "t".into(),
            topics: BTreeSet::from(["cdc".to_string()]),
            key: vec!["id".into()],
            source_table: None,
            sequence: Sequence::Auto,
            partition_by: Vec::new(),
            history: None,
            stats: Arc::default(),
        }
    }

    /// Deliver `events` (split into commits at `cuts`) and read the silver table back.
    async fn deliver(lake: &std::path::Path, events: &[Change], cuts: &[usize]) -> Vec<String> {
        let mut sink = SilverSink::new(SilverSinkConfig {
            lake: Lake::Local(lake.to_path_buf()),
            pipeline: "p".into(),
            tables: vec![spec()],
        });
        let config = JsonDecoderConfig {
            table: "cdc".into(),
            limits: crate::decode::limits::DecodeLimits::default(),
            schema_evolution: true,
            max_messages: 1000,
            envelope: true,
        };
        let mut decoder = JsonDecoder::new(config, None);
        for (offset, e) in events.iter().enumerate() {
            let payload = envelope(e);
            decoder.push(&RawMessage {
                topic: "cdc",
                partition: 0,
                offset: offset as i64,
                timestamp_ms: None,
                key: None,
                payload: Some(payload.as_bytes()),
            });
            if cuts.contains(&offset) || offset + 1 == events.len() {
                let batch = decoder.finish().expect("decode").expect("batch");
                assert!(batch.dead_letters.is_empty(), "{:?}", batch.dead_letters);
                sink.write(&batch).expect("write");
                let mut outcome = CommitOutcome::default();
                sink.commit(&mut outcome, &mut BTreeMap::new())
                    .await
                    .expect("commit");
            }
        }
        let url = table::table_url(lake, "silver/t").expect("url");
        let t = table::open("t", &url).await.expect("open");
        let ctx = SessionContext::new();
        ctx.register_table("t", t.table_provider().await.expect("provider"))
            .expect("register");
        let batches = ctx
            .sql("select id, name, bio from t order by id")
            .await
            .expect("sql")
            .collect()
            .await
            .expect("collect");
        let mut out = Vec::new();
        for b in batches {
            let ids = b.column(0).as_primitive::<Int64Type>();
            let text = |i: usize| cast(b.column(i), &DataType::Utf8).expect("cast");
            let (names, bios) = (text(1), text(2));
            let (names, bios) = (names.as_string::<i32>(), bios.as_string::<i32>());
            for i in 0..b.num_rows() {
                let bio = if bios.is_null(i) {
                    "null"
                } else {
                    bios.value(i)
                };
                out.push(format!("{}={}/{bio}", ids.value(i), names.value(i)));
            }
        }
        out
    }

    /// Changes of a few keys with increasing sequences: upserts and deletes.
    fn history() -> impl Strategy<Value = Vec<Change>> {
        prop::collection::vec((0i64..4, prop::option::weighted(0.75, "[a-z]{1,3}")), 1..14)
            .prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (id, name))| (id, name, 100 + i as i64))
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn any_permutation_or_duplication_converges_to_the_ordered_result(
            ordered in history(),
            shuffle in prop::collection::vec(any::<u32>(), 30),
            dups in prop::collection::vec(0usize..14, 0..4),
            cuts in prop::collection::vec(0usize..20, 0..3),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let a = tempfile::tempdir().expect("dir");
            let b = tempfile::tempdir().expect("dir");
            let mut messy: Vec<Change> = ordered.clone();
            for d in dups {
                if let Some(e) = ordered.get(d % ordered.len()) {
                    messy.push(e.clone());
                }
            }
            for i in (1..messy.len()).rev() {
                let j = shuffle[i % shuffle.len()] as usize % (i + 1);
                messy.swap(i, j);
            }
            let expected = rt.block_on(deliver(a.path(), &ordered, &[]));
            let got = rt.block_on(deliver(b.path(), &messy, &cuts));
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn the_placeholder_takes_the_newest_real_value_of_the_batch() {
        let rows = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 1, 1])) as ArrayRef),
            (
                "bio",
                Arc::new(StringArray::from(vec!["old", "new", UNAVAILABLE])),
            ),
            ("_cdc_op", Arc::new(StringArray::from(vec!["c", "u", "u"]))),
            ("_cdc_sequence", Arc::new(Int64Array::from(vec![1, 2, 3]))),
            ("_kafka_offset", Arc::new(Int64Array::from(vec![9, 8, 7]))),
        ])
        .expect("batch");
        let w = reduce(&rows, &["id".to_string()]).expect("reduce");
        assert_eq!(w.num_rows(), 1);
        assert_eq!(w.column(1).as_string::<i32>().value(0), "new");
        assert_eq!(
            w.column_by_name("_cdc_sequence")
                .expect("seq")
                .as_primitive::<Int64Type>()
                .value(0),
            3
        );
    }
}
