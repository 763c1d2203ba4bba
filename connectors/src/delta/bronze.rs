//! The bronze sink: append-only Delta tables, one commit per table per flush, each
//! carrying the offsets of the rows it adds.
//!
//! On [`Sink::commit`] every table with buffered rows goes through the same steps:
//! 1. create the table if missing (schema of the first batch, partitioned as configured);
//! 2. widen the table schema with new nullable columns the batches bring (additive
//!    evolution: a `metaData` action in the same commit);
//! 3. fence: drop rows at offsets the table already holds for this pipeline;
//! 4. write Parquet files, then commit them with one `txn` per partition. A commit
//!    refused because another writer committed the same partitions is retried from
//!    step 3 against the refreshed table.
//!
//! Dead letters of the batch are committed to `_sluice/dead_letters` before the rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{Action, MetadataExt, StructType};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use sluice_pipeline::config::Config;
use sluice_pipeline::lake::Lake;
use sluice_pipeline::metrics::{
    DELTA_COMMIT_CONFLICTS_TOTAL, DELTA_COMMIT_DURATION_SECONDS, DELTA_COMMITS_TOTAL,
    DELTA_TABLE_VERSION, QUARANTINED_ROWS_TOTAL, ROWS_WRITTEN_TOTAL,
};
use sluice_pipeline::{
    Buffered, CommitOutcome, DeadLetter, OffsetRange, Sink, SourceBatch, Stage, TopicPartition,
};

use super::dead_letter::DeadLetterTable;
use super::fence::{self, TxnCache, filter_offsets_above};
use super::stats::{self, StatsPolicy, TableKind};
use super::table;
use crate::error::{Error, Result, delta};
use crate::evolve::{conform, merged_schema};

/// Settings of the bronze sink, taken from the configuration.
#[derive(Debug)]
struct Settings {
    lake: Lake,
    /// Pipeline name: the prefix of every transaction app id.
    pipeline: String,
    /// Partition columns per routed table (tables not listed: `default_partition_by`).
    partition_by: HashMap<String, Vec<String>>,
    default_partition_by: Vec<String>,
    target_file_size_bytes: u64,
    /// Table properties per table name (the PII record).
    properties: HashMap<String, Vec<(String, String)>>,
    /// Which columns carry file statistics.
    stats: Arc<StatsPolicy>,
}

struct TableState {
    name: String,
    /// The table's name in the configuration (`<name>` of `bronze/<name>`).
    configured: String,
    url: url::Url,
    table: Option<DeltaTable>,
    partition_by: Vec<String>,
    properties: Vec<(String, String)>,
    pending: Vec<RecordBatch>,
    ranges: BTreeMap<TopicPartition, OffsetRange>,
    /// Last offset this process knows the table holds, per partition.
    committed: BTreeMap<TopicPartition, i64>,
    txns: TxnCache,
}

/// Appends batches to `<lake>/bronze/<table>`.
pub struct BronzeSink {
    settings: Settings,
    tables: BTreeMap<String, TableState>,
    dead: Vec<(String, DeadLetter)>,
    buffered: Buffered,
    dead_letters: DeadLetterTable,
    /// Rows failing a `drop` expectation (dead letters at stage `quality`).
    quarantine: DeadLetterTable,
}

impl BronzeSink {
    /// The sink of `config`'s bronze tables in `lake`: partitioned and sized as its
    /// `[bronze]` section says, committing under the transaction ids of
    /// `pipeline.name`.
    ///
    /// `properties` are the table properties per table name (the PII record): set at
    /// creation and brought up to date on existing tables before their next write.
    /// `stats` says which columns carry file statistics (see [`super::stats`]); the
    /// statistics properties follow each table's schema as it evolves.
    pub fn new(
        config: &Config,
        lake: &Lake,
        properties: HashMap<String, Vec<(String, String)>>,
        stats: Arc<StatsPolicy>,
    ) -> Result<Self> {
        let settings = Settings {
            lake: lake.clone(),
            pipeline: config.pipeline.name.clone(),
            partition_by: config
                .bronze_tables()
                .values()
                .map(|t| (t.clone(), config.partition_by(t)))
                .collect(),
            default_partition_by: config.bronze.partition_by.clone(),
            target_file_size_bytes: config.bronze.target_file_size_bytes,
            properties,
            stats,
        };
        let dead_letters = DeadLetterTable::new(&settings.lake, &settings.pipeline)?;
        let quarantine = DeadLetterTable::at(
            &settings.lake,
            &settings.pipeline,
            super::quality::QUARANTINE,
        )?;
        Ok(Self {
            settings,
            tables: BTreeMap::new(),
            dead: Vec::new(),
            buffered: Buffered::default(),
            dead_letters,
            quarantine,
        })
    }

    /// Relative location of a bronze table in the lake.
    pub fn location(table: &str) -> String {
        format!("bronze/{table}")
    }

    fn state(&mut self, name: &str) -> Result<&mut TableState> {
        if !self.tables.contains_key(name) {
            let partition_by = self
                .settings
                .partition_by
                .get(name)
                .cloned()
                .unwrap_or_else(|| self.settings.default_partition_by.clone());
            let url = table::lake_url(&self.settings.lake, &Self::location(name))?;
            self.tables.insert(
                name.to_string(),
                TableState {
                    name: Self::location(name),
                    configured: name.to_string(),
                    url,
                    table: None,
                    partition_by,
                    properties: self
                        .settings
                        .properties
                        .get(name)
                        .cloned()
                        .unwrap_or_default(),
                    pending: Vec::new(),
                    ranges: BTreeMap::new(),
                    committed: BTreeMap::new(),
                    txns: TxnCache::default(),
                },
            );
        }
        self.tables
            .get_mut(name)
            .ok_or_else(|| Error::TableVanished(name.to_string()))
    }

    async fn commit_table(&self, s: &mut TableState, outcome: &mut CommitOutcome) -> Result<()> {
        let batch_schema = merged_schema(&s.name, s.pending.iter().map(|b| b.schema()))?;
        if s.table.is_none() {
            let t = table::open(&s.name, &s.url).await?;
            if table::exists(&t) {
                s.table = Some(t);
            } else if s.pending.is_empty() {
                // Only dead letters so far and no schema to create the table with. Their
                // offsets are recorded in the dead-letter table, whose own transaction ids
                // keep a re-read from landing them twice.
                return Ok(());
            } else {
                let mut properties = s.properties.clone();
                properties.extend(
                    self.settings
                        .stats
                        .properties(TableKind::Bronze(&s.configured), &batch_schema),
                );
                s.table = Some(
                    table::create(&s.name, &s.url, &batch_schema, &s.partition_by, &properties)
                        .await?,
                );
            }
        }
        let Some(t) = s.table.as_mut() else {
            return Ok(());
        };
        let mut last_error: Option<Error> = None;
        let started = std::time::Instant::now();
        for attempt in 0..super::COMMIT_ATTEMPTS {
            if attempt > 0 {
                table::refresh(&s.name, t).await?;
            }
            let table_schema = table::arrow_schema(&s.name, t)?;
            let target = merged_schema(
                &s.name,
                [table_schema.clone(), batch_schema.clone()].into_iter(),
            )?;
            // Schema evolution and property changes are committed on their own first,
            // so that the data commit is written with the table's own statistics settings.
            let current = t
                .snapshot()
                .map_err(delta(&s.name, "reading snapshot"))?
                .metadata()
                .clone();
            let mut wanted = s.properties.clone();
            wanted.extend(
                self.settings
                    .stats
                    .properties(TableKind::Bronze(&s.configured), &target),
            );
            let stale: Vec<&(String, String)> = wanted
                .iter()
                .filter(|(k, v)| current.configuration().get(k) != Some(v))
                .collect();
            let drop_list = !wanted.iter().any(|(k, _)| k == stats::STATS_COLUMNS)
                && current.configuration().contains_key(stats::STATS_COLUMNS);
            let evolved = target
                .fields()
                .iter()
                .filter(|f| {
                    table_schema
                        .field_with_name(f.name())
                        .map_or(true, |g| g.data_type() != f.data_type())
                })
                .count();
            if evolved > 0 || !stale.is_empty() || drop_list {
                let kernel: StructType = target
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|e: arrow::error::ArrowError| Error::Arrow(e))?;
                let mut metadata = current
                    .with_schema(&kernel)
                    .map_err(|e| delta(&s.name, "evolving schema")(e.into()))?;
                if drop_list {
                    metadata = metadata
                        .remove_config_key(stats::STATS_COLUMNS)
                        .map_err(|e| delta(&s.name, "dropping statistics")(e.into()))?;
                }
                for (k, v) in stale {
                    metadata = metadata
                        .add_config_key(k.clone(), v.clone())
                        .map_err(|e| delta(&s.name, &format!("setting property {k}"))(e.into()))?;
                }
                match table::commit(
                    &s.name,
                    t,
                    &self.settings.pipeline,
                    vec![Action::Metadata(metadata)],
                    &BTreeMap::new(),
                    &s.partition_by,
                )
                .await
                {
                    Ok(_) => {
                        tracing::info!(table = %s.name, evolved_columns = evolved, "table metadata updated")
                    }
                    Err(e) => last_error = Some(e),
                }
                continue;
            }
            let mut ranges = s.ranges.clone();
            let committed = s
                .txns
                .offsets(&s.name, t, &self.settings.pipeline, &ranges)
                .await?;
            s.committed
                .extend(committed.iter().map(|(k, v)| (k.clone(), *v)));
            // Rows need filtering only where another writer already landed some of them.
            let overlap = fence::overlaps(&ranges, &committed);
            let fenced = fence::fence(&mut ranges, &committed);
            let mut rows = Vec::with_capacity(s.pending.len());
            for b in &s.pending {
                let b = if overlap {
                    filter_offsets_above(b, &committed)?
                } else {
                    b.clone()
                };
                if b.num_rows() > 0 {
                    rows.push(conform(&s.name, &b, &target)?);
                }
            }
            let row_count: usize = rows.iter().map(RecordBatch::num_rows).sum();
            if ranges.is_empty() {
                outcome.fenced.extend(fenced);
                return Ok(());
            }
            let mut actions = Vec::new();
            if !rows.is_empty() {
                let mut writer = RecordBatchWriter::for_table(t)
                    .map_err(delta(&s.name, "opening writer"))?
                    .with_target_file_size(self.settings.target_file_size_bytes);
                for b in rows {
                    writer
                        .write(b)
                        .await
                        .map_err(delta(&s.name, "writing parquet"))?;
                }
                let adds = writer
                    .flush()
                    .await
                    .map_err(delta(&s.name, "writing parquet"))?;
                actions.extend(adds.into_iter().map(Action::Add));
            }
            match table::commit(
                &s.name,
                t,
                &self.settings.pipeline,
                actions,
                &ranges,
                &s.partition_by,
            )
            .await
            {
                Ok(version) => {
                    let label = s.name.rsplit('/').next().unwrap_or(&s.name).to_string();
                    metrics::counter!(ROWS_WRITTEN_TOTAL, "table" => label.clone())
                        .increment(row_count as u64);
                    metrics::counter!(DELTA_COMMITS_TOTAL, "table" => label.clone()).increment(1);
                    metrics::histogram!(DELTA_COMMIT_DURATION_SECONDS, "table" => label.clone())
                        .record(started.elapsed().as_secs_f64());
                    metrics::gauge!(DELTA_TABLE_VERSION, "table" => label).set(version as f64);
                    s.txns.committed(version, &ranges);
                    for (tp, r) in &ranges {
                        s.committed.insert(tp.clone(), r.last);
                        outcome.committed.push((tp.clone(), r.last + 1));
                    }
                    outcome.fenced.extend(fenced);
                    outcome.rows += row_count;
                    outcome.commits += 1;
                    tracing::debug!(table = %s.name, version, rows = row_count, "bronze commit");
                    return Ok(());
                }
                Err(e) => {
                    metrics::counter!(DELTA_COMMIT_CONFLICTS_TOTAL, "table" => s.name.rsplit('/').next().unwrap_or(&s.name).to_string())
                        .increment(1);
                    tracing::warn!(table = %s.name, attempt, "commit refused, retrying against the refreshed table");
                    last_error = Some(e);
                }
            }
        }
        Err(Error::CommitRetries {
            table: s.name.clone(),
            attempts: super::COMMIT_ATTEMPTS,
            last: last_error.map(Box::new),
        })
    }
}

impl Sink for BronzeSink {
    async fn write(&mut self, batch: SourceBatch) -> sluice_pipeline::Result<()> {
        let SourceBatch {
            table,
            rows,
            offsets,
            dead_letters,
            source_bytes,
        } = batch;
        let messages = rows.as_ref().map_or(0, RecordBatch::num_rows) + dead_letters.len();
        tracing::debug!(table = %table, rows = rows.as_ref().map_or(0, RecordBatch::num_rows), dead_letters = dead_letters.len(), "batch received");
        let state = self.state(&table)?;
        // Drop what this process already knows the table holds (a re-read after a seek).
        let known = &state.committed;
        let stale = fence::overlaps(&offsets, known);
        let rows = match (rows, stale) {
            (Some(r), true) => Some(filter_offsets_above(&r, known)?),
            (r, _) => r,
        };
        let mut offsets = offsets;
        if stale {
            fence::fence(&mut offsets, known);
        }
        let dead_letters: Vec<DeadLetter> = dead_letters
            .into_iter()
            .filter(|d| {
                offsets
                    .get(&TopicPartition::new(d.topic.clone(), d.partition))
                    .is_some_and(|r| d.offset >= r.first)
            })
            .collect();
        for (tp, r) in offsets {
            state
                .ranges
                .entry(tp)
                .and_modify(|e| e.extend(r))
                .or_insert(r);
        }
        let mut new_rows = 0;
        if let Some(r) = rows.filter(|r| r.num_rows() > 0) {
            new_rows = r.num_rows();
            state.pending.push(r);
        }
        self.buffered.rows += new_rows;
        self.dead
            .extend(dead_letters.into_iter().map(|d| (table.clone(), d)));
        self.buffered.bytes += source_bytes;
        self.buffered.messages += messages;
        Ok(())
    }

    fn buffered(&self) -> Buffered {
        self.buffered
    }

    async fn commit(&mut self) -> sluice_pipeline::Result<CommitOutcome> {
        let mut outcome = CommitOutcome::default();
        // Dead letters first, each table's rows after: a crash in between re-reads the batch,
        // and the dead-letter table's own offsets keep its rows from doubling.
        let (quarantined, dead): (Vec<_>, Vec<_>) = std::mem::take(&mut self.dead)
            .into_iter()
            .partition(|(_, d)| d.stage == Stage::Quality);
        for (letters, quarantine) in [(dead, false), (quarantined, true)] {
            if letters.is_empty() {
                continue;
            }
            let mut ranges: BTreeMap<TopicPartition, OffsetRange> = BTreeMap::new();
            for (_, d) in &letters {
                let tp = TopicPartition::new(d.topic.clone(), d.partition);
                if let Some(r) = self.tables.values().find_map(|s| s.ranges.get(&tp)) {
                    ranges.insert(tp, *r);
                }
            }
            if quarantine {
                let n = self.quarantine.commit(letters, &ranges).await?;
                metrics::counter!(QUARANTINED_ROWS_TOTAL).increment(n as u64);
            } else {
                outcome.dead_letters = self.dead_letters.commit(letters, &ranges).await?;
            }
            outcome.commits += 1;
        }
        let mut tables = std::mem::take(&mut self.tables);
        let mut result = Ok(());
        for s in tables.values_mut() {
            if s.ranges.is_empty() {
                continue;
            }
            if let Err(e) = self.commit_table(s, &mut outcome).await {
                result = Err(e);
                break;
            }
            s.pending.clear();
            s.ranges.clear();
        }
        self.tables = tables;
        result?;
        self.buffered = Buffered::default();
        Ok(outcome)
    }

    fn revoke(&mut self, partitions: &[TopicPartition]) {
        for s in self.tables.values_mut() {
            fence::forget_partitions(&mut s.pending, &mut s.ranges, partitions);
        }
        self.dead.retain(|(_, d)| {
            !partitions
                .iter()
                .any(|tp| tp.topic == d.topic && tp.partition == d.partition)
        });
        let rows = self
            .tables
            .values()
            .flat_map(|s| s.pending.iter())
            .map(RecordBatch::num_rows)
            .sum();
        self.buffered.rows = rows;
        self.buffered.messages = rows + self.dead.len();
        if self.buffered.messages == 0 {
            self.buffered.bytes = 0;
        }
    }
}
