//! Data-quality expectations, checked on every batch before it reaches bronze and silver.
//!
//! Each expectation of the batch's table runs as `SELECT row FROM batch WHERE NOT (check)`
//! in DataFusion, with the batch registered as table `batch` and any lake table the check
//! names (`silver.customers`, `bronze.x`, `gold.y`) registered too, so referential checks
//! work. Rows failing a `drop` expectation leave the batch as dead letters at stage
//! `quality` (the sink commits them to `_sluice/quarantine`); a failing `fail`
//! expectation stops the pipeline. Pass and fail counts go to metrics at once and to the
//! `_sluice/quality` table at every commit, one row per table and expectation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::datafusion::common::TableReference;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Action;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use sluice_pipeline::config::quality::{ExpectationConfig, QualityAction};
use sluice_pipeline::lake::Lake;
use sluice_pipeline::lineage::payload_of;
use sluice_pipeline::metrics::{EXPECTATION_ROWS_FAILED_TOTAL, EXPECTATION_ROWS_PASSED_TOTAL};
use sluice_pipeline::{DeadLetter, SourceBatch, Stage};

use super::table;
use crate::error::{Error, Result, delta, query};

/// Where the per-commit quality counts live under the lake.
pub const QUALITY: &str = "_sluice/quality";
/// Where rows failing a `drop` expectation go.
pub const QUARANTINE: &str = "_sluice/quarantine";

/// Column added to the batch to name its rows in the checks' results.
const ROW: &str = "__sluice_row";
/// Lake tables a check reads are reopened at most this often.
const REFRESH: Duration = Duration::from_secs(5);

/// One expectation of a table.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub name: String,
    pub check: String,
    pub action: QualityAction,
}

impl From<&ExpectationConfig> for Expectation {
    fn from(e: &ExpectationConfig) -> Self {
        Self {
            name: e.name.clone(),
            check: e.check.clone(),
            action: e.action,
        }
    }
}

/// Passed and failed rows of one expectation since the last commit.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    passed: i64,
    failed: i64,
}

/// Checks batches against their table's expectations.
pub struct QualityGate {
    lake: Lake,
    pipeline: String,
    expectations: HashMap<String, Vec<Expectation>>,
    ctx: SessionContext,
    /// Lake tables registered for the checks, with when they were opened.
    opened: HashMap<(String, String), Instant>,
    counts: BTreeMap<(String, String), (QualityAction, Counts)>,
    table: Option<DeltaTable>,
}

/// The lake tables (`layer.name`) a check reads.
fn lake_tables(check: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for layer in ["bronze", "silver", "gold"] {
        let mut rest = check;
        while let Some(i) = rest.find(&format!("{layer}.")) {
            let before = rest[..i].chars().last();
            let after = &rest[i + layer.len() + 1..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty()
                && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                out.push((layer.to_string(), name));
            }
            rest = after;
        }
    }
    out.sort();
    out.dedup();
    out
}

impl QualityGate {
    pub fn new(
        lake: Lake,
        pipeline: &str,
        expectations: HashMap<String, Vec<Expectation>>,
    ) -> Self {
        Self {
            lake,
            pipeline: pipeline.to_string(),
            expectations,
            ctx: SessionContext::new(),
            opened: HashMap::new(),
            counts: BTreeMap::new(),
            table: None,
        }
    }

    /// The gate of the `[quality]` section (expectations by bronze table) for pipeline
    /// `pipeline`, with `lake` holding the tables checks read and the counts.
    pub fn from_config(
        section: &BTreeMap<String, Vec<ExpectationConfig>>,
        lake: &Lake,
        pipeline: &str,
    ) -> Self {
        let expectations = section
            .iter()
            .map(|(table, es)| (table.clone(), es.iter().map(Expectation::from).collect()))
            .collect();
        Self::new(lake.clone(), pipeline, expectations)
    }

    /// (Re)register the lake tables `check` reads.
    async fn register(&mut self, check: &str) -> Result<()> {
        for (layer, name) in lake_tables(check) {
            let key = (layer.clone(), name.clone());
            if self.opened.get(&key).is_some_and(|t| t.elapsed() < REFRESH) {
                continue;
            }
            let location = format!("{layer}/{name}");
            let url = table::lake_url(&self.lake, &location)?;
            let t = table::open(&location, &url).await?;
            if !table::exists(&t) {
                continue;
            }
            let provider = t
                .table_provider()
                .await
                .map_err(query(format!("{location}: reading for an expectation")))?;
            if self
                .ctx
                .catalog("datafusion")
                .and_then(|c| c.schema(&layer))
                .is_none()
                && let Some(c) = self.ctx.catalog("datafusion")
            {
                c.register_schema(
                    &layer,
                    Arc::new(deltalake::datafusion::catalog::MemorySchemaProvider::new()),
                )
                .map_err(query(format!("{location}: registering for an expectation")))?;
            }
            let reference = TableReference::partial(layer.as_str(), name.as_str());
            let _ = self.ctx.deregister_table(reference.clone());
            self.ctx
                .register_table(reference, provider)
                .map_err(query(format!("{location}: registering for an expectation")))?;
            self.opened.insert(key, Instant::now());
        }
        Ok(())
    }

    /// Check the rows of `batch`: count, drop to quarantine, or fail.
    pub async fn check(&mut self, mut batch: SourceBatch) -> Result<SourceBatch> {
        let Some(expectations) = self.expectations.get(&batch.table).cloned() else {
            return Ok(batch);
        };
        let Some(rows) = batch.rows.take().filter(|r| r.num_rows() > 0) else {
            return Ok(batch);
        };
        let n = rows.num_rows();
        let mut fields: Vec<Field> = rows
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW, DataType::UInt32, false));
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(UInt32Array::from_iter_values(0..n as u32)));
        let indexed = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        // Per row, the `drop` expectations it fails.
        let mut dropped: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for e in &expectations {
            self.register(&e.check).await?;
            let sql = format!("SELECT {ROW} FROM batch WHERE NOT ({})", e.check);
            let (failing, unevaluable) =
                self.failing(&sql, &indexed)
                    .await
                    .map_err(|source| Error::QualityCheck {
                        table: batch.table.clone(),
                        expectation: e.name.clone(),
                        check: e.check.clone(),
                        source: Box::new(source),
                    })?;
            if unevaluable > 0 {
                tracing::warn!(table = %batch.table, expectation = %e.name, rows = unevaluable, "The check cannot be evaluated on some rows (an error such as a division by zero); they count as failing it.");
            }
            let failed = failing.len() as i64;
            let entry = self
                .counts
                .entry((batch.table.clone(), e.name.clone()))
                .or_insert((e.action, Counts::default()));
            entry.1.passed += n as i64 - failed;
            entry.1.failed += failed;
            let labels = [
                ("table", batch.table.clone()),
                ("expectation", e.name.clone()),
            ];
            metrics::counter!(EXPECTATION_ROWS_PASSED_TOTAL, &labels)
                .increment((n as i64 - failed) as u64);
            metrics::counter!(EXPECTATION_ROWS_FAILED_TOTAL, &labels).increment(failed as u64);
            if failed == 0 {
                continue;
            }
            match e.action {
                QualityAction::Warn => {
                    tracing::warn!(table = %batch.table, expectation = %e.name, failed, "rows failed an expectation (kept)");
                }
                QualityAction::Drop => {
                    for i in failing {
                        dropped.entry(i).or_default().push(&e.name);
                    }
                }
                QualityAction::Fail => {
                    return Err(Error::QualityFailed {
                        table: batch.table.clone(),
                        expectation: e.name.clone(),
                        check: e.check.clone(),
                        failed: failed as usize,
                        rows: n,
                    });
                }
            }
        }
        if dropped.is_empty() {
            batch.rows = Some(rows);
            return Ok(batch);
        }
        batch.dead_letters.extend(quarantine(&rows, &dropped)?);
        let keep = BooleanArray::from(
            (0..n)
                .map(|i| !dropped.contains_key(&i))
                .collect::<Vec<bool>>(),
        );
        batch.rows = Some(filter_record_batch(&rows, &keep)?);
        Ok(batch)
    }

    /// Rows of `indexed` that `sql` (a check, negated) selects, and how many of them were
    /// selected because the check cannot be evaluated on them. A check whose evaluation
    /// fails on the batch (a division by zero, a failing cast: errors of the data) is
    /// evaluated again on halves, down to the rows it fails on alone, which count as
    /// failing it, so no row can stop the pipeline. A check that cannot be planned (it
    /// names a column the table lacks) is an error of the configuration: `Err`.
    async fn failing(
        &self,
        sql: &str,
        indexed: &RecordBatch,
    ) -> std::result::Result<(Vec<usize>, usize), DataFusionError> {
        let mut rows = Vec::new();
        let mut unevaluable = 0;
        let mut stack = vec![(0, indexed.num_rows())];
        while let Some((start, len)) = stack.pop() {
            match self.evaluate(sql, indexed.slice(start, len)).await? {
                Ok(failed) => rows.extend(failed),
                Err(()) if len <= 1 => {
                    rows.push(start);
                    unevaluable += 1;
                }
                Err(()) => {
                    stack.push((start + len / 2, len - len / 2));
                    stack.push((start, len / 2));
                }
            }
        }
        rows.sort_unstable();
        Ok((rows, unevaluable))
    }

    /// The row numbers `sql` selects from `part`, registered as the table `batch`:
    /// `Err` when it cannot be planned, `Ok(Err(()))` when its execution fails (the
    /// error, which may quote values, is dropped).
    async fn evaluate(
        &self,
        sql: &str,
        part: RecordBatch,
    ) -> std::result::Result<std::result::Result<Vec<usize>, ()>, DataFusionError> {
        let _ = self.ctx.deregister_table("batch");
        self.ctx.register_batch("batch", part)?;
        let df = self.ctx.sql(sql).await?;
        let Ok(batches) = df.collect().await else {
            return Ok(Err(()));
        };
        let mut rows = Vec::new();
        for b in batches {
            let c = b.column(0).as_primitive::<arrow::datatypes::UInt32Type>();
            rows.extend(c.values().iter().map(|v| *v as usize));
        }
        Ok(Ok(rows))
    }

    /// Append the counts since the last commit to `_sluice/quality`.
    pub async fn commit(&mut self) -> Result<()> {
        if self.counts.is_empty() {
            return Ok(());
        }
        let counts = std::mem::take(&mut self.counts);
        let now = chrono::Utc::now().timestamp_micros();
        let n = counts.len();
        let text = |f: fn(&(String, String), &(QualityAction, Counts)) -> String| {
            Arc::new(StringArray::from_iter_values(
                counts.iter().map(|(k, v)| f(k, v)),
            ))
        };
        let batch = RecordBatch::try_new(
            quality_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.pipeline.clone(); n])),
                text(|k, _| k.0.clone()),
                text(|k, _| k.1.clone()),
                text(|_, v| v.0.as_str().to_string()),
                Arc::new(Int64Array::from_iter_values(
                    counts.values().map(|v| v.1.passed),
                )),
                Arc::new(Int64Array::from_iter_values(
                    counts.values().map(|v| v.1.failed),
                )),
                Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
            ],
        )?;
        if self.table.is_none() {
            let url = table::lake_url(&self.lake, QUALITY)?;
            let t = table::open(QUALITY, &url).await?;
            let properties = super::stats::only(&quality_schema(), &QUALITY_STATS);
            self.table = Some(if table::exists(&t) {
                let mut t = t;
                super::stats::ensure(QUALITY, &mut t, &properties, None).await?;
                t
            } else {
                table::create(QUALITY, &url, &quality_schema(), &[], &properties).await?
            });
        }
        let Some(t) = self.table.as_mut() else {
            return Ok(());
        };
        let mut last: Option<Error> = None;
        for attempt in 0..super::COMMIT_ATTEMPTS {
            if attempt > 0 {
                table::refresh(QUALITY, t).await?;
            }
            let mut writer =
                RecordBatchWriter::for_table(t).map_err(delta(QUALITY, "opening writer"))?;
            writer
                .write(batch.clone())
                .await
                .map_err(delta(QUALITY, "writing"))?;
            let adds = writer.flush().await.map_err(delta(QUALITY, "writing"))?;
            let actions = adds.into_iter().map(Action::Add).collect();
            match table::commit(QUALITY, t, &self.pipeline, actions, &BTreeMap::new(), &[]).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::CommitRetries {
            table: QUALITY.into(),
            attempts: super::COMMIT_ATTEMPTS,
            last: last.map(Box::new),
        })
    }
}

/// Columns of `_sluice/quality` with file statistics: all of them (counts and names,
/// never a row's value).
const QUALITY_STATS: [&str; 7] = [
    "pipeline",
    "table_name",
    "expectation",
    "action",
    "rows_passed",
    "rows_failed",
    "checked_at",
];

/// Schema of `_sluice/quality`.
pub fn quality_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pipeline", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("expectation", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, true),
        Field::new("rows_passed", DataType::Int64, true),
        Field::new("rows_failed", DataType::Int64, true),
        Field::new(
            "checked_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

/// The rows of `rows` named in `dropped`, as quarantine letters: the row (payload
/// columns, already protected) as JSON, the expectations it failed, its provenance.
fn quarantine(rows: &RecordBatch, dropped: &BTreeMap<usize, Vec<&str>>) -> Result<Vec<DeadLetter>> {
    let payload_schema = payload_of(&rows.schema());
    let indices: Vec<usize> = payload_schema
        .fields()
        .iter()
        .filter_map(|f| rows.schema().index_of(f.name()).ok())
        .collect();
    let payload = rows.project(&indices)?;
    let lineage = |name: &str| rows.column_by_name(name).cloned();
    let topics = lineage("_kafka_topic");
    let partitions = lineage("_kafka_partition");
    let offsets = lineage("_kafka_offset");
    let timestamps = lineage("_kafka_timestamp");
    let keys = lineage("_kafka_key");
    let mut out = Vec::with_capacity(dropped.len());
    for (&i, names) in dropped {
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(&payload.slice(i, 1))?;
        writer.finish()?;
        let mut json = writer.into_inner();
        if json.last() == Some(&b'\n') {
            json.pop();
        }
        out.push(DeadLetter {
            topic: topics
                .as_ref()
                .map(|c| c.as_string::<i32>().value(i).to_string())
                .unwrap_or_default(),
            partition: partitions.as_ref().map_or(0, |c| {
                c.as_primitive::<arrow::datatypes::Int32Type>().value(i)
            }),
            offset: offsets.as_ref().map_or(0, |c| {
                c.as_primitive::<arrow::datatypes::Int64Type>().value(i)
            }),
            timestamp_ms: timestamps.as_ref().and_then(|c| {
                c.is_valid(i).then(|| {
                    c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .value(i)
                        / 1000
                })
            }),
            key: keys.as_ref().and_then(|c| {
                c.is_valid(i)
                    .then(|| c.as_binary::<i32>().value(i).to_vec())
            }),
            payload: Some(json),
            stage: Stage::Quality,
            error: format!("failed expectation {}", names.join(", ")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_lake_tables_they_read() {
        assert_eq!(
            lake_tables(
                "customer_id IN (SELECT customer_id FROM silver.customers) AND x.silver.y = 1 OR gold.daily_spend.a > 0"
            ),
            vec![
                ("gold".to_string(), "daily_spend".to_string()),
                ("silver".to_string(), "customers".to_string()),
            ]
        );
        assert!(lake_tables("amount >= 0").is_empty());
    }
}
