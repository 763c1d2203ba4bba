//! The resume contract on the Delta side: where each partition resumes, read from the
//! `txn` versions of the tables its topic feeds.
//!
//! A topic's partitions are committed in several tables: its bronze table, and, when
//! silver tables read the topic, each of those and its history table. Each commits on its
//! own (bronze first, then every silver MERGE), so after a crash between two commits the
//! layers disagree. A partition therefore resumes after the **lowest** offset of the
//! tables that hold it:
//!
//! * bronze holds nothing of it (or does not exist): no table has read it, and
//!   `kafka.auto_offset_reset` decides (silver offsets alone do not count);
//! * bronze and every other table hold offsets: after the lowest of them;
//! * bronze holds offsets and another table none (a silver table added later, or one not
//!   created yet): from the beginning, so that table gets the whole backlog.
//!
//! Bronze then drops the rows it already holds and the layers behind it catch up.
//!
//! The source calls these checkpoints from librdkafka's rebalance callback, on its own
//! thread, so reads block on the runtime the checkpoints were made in.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use sluice_pipeline::config::Config;
use sluice_pipeline::lake::Lake;
use sluice_pipeline::{Checkpoints, Resume, TopicPartition};

use super::bronze::BronzeSink;
use super::silver::{SilverSink, history};
use super::table;
use crate::error::Result;

/// The resume offsets and table schemas of a pipeline's tables in a lake.
pub struct DeltaCheckpoints {
    /// The runtime the table reads run on.
    handle: tokio::runtime::Handle,
    lake: Lake,
    /// Pipeline name: the prefix of every transaction app id.
    pipeline: String,
    /// Topic → its bronze table.
    routes: BTreeMap<String, String>,
    /// Topic → further tables (lake-relative, e.g. `silver/customers`) that hold offsets
    /// of its partitions.
    resume_tables: BTreeMap<String, Vec<String>>,
}

impl DeltaCheckpoints {
    /// The checkpoints of `config`'s pipeline in `lake`: its bronze tables, and the silver
    /// and history tables fed by the same topics.
    ///
    /// # Panics
    /// Outside a Tokio runtime, whose handle the reads are run on.
    pub fn new(config: &Config, lake: &Lake) -> Self {
        let mut resume_tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, t) in &config.silver.tables {
            for topic in &t.topics {
                resume_tables
                    .entry(topic.clone())
                    .or_default()
                    .push(SilverSink::location(name));
                if t.history.is_some() {
                    resume_tables
                        .entry(topic.clone())
                        .or_default()
                        .push(history::location(name));
                }
            }
        }
        Self {
            handle: tokio::runtime::Handle::current(),
            lake: lake.clone(),
            pipeline: config.pipeline.name.clone(),
            routes: config.bronze_tables(),
            resume_tables,
        }
    }

    /// Run `read` to its end from synchronous code: on the consumer's own thread directly,
    /// on a runtime worker (at start-up) after handing the worker's other tasks away.
    fn block_on<T>(&self, read: impl Future<Output = T>) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.handle.block_on(read))
        } else {
            self.handle.block_on(read)
        }
    }

    /// Last offset committed per partition (-1: before the first, the table fed by the
    /// partition holds none of it while bronze does); partitions bronze holds nothing of
    /// are left out.
    async fn committed(&self, parts: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, i64>> {
        let mut by_table: BTreeMap<&str, Vec<&TopicPartition>> = BTreeMap::new();
        for tp in parts {
            if let Some(t) = self.routes.get(&tp.topic) {
                by_table.entry(t.as_str()).or_default().push(tp);
            }
        }
        let mut out = BTreeMap::new();
        for (name, tps) in by_table {
            if let Some(t) = open_bronze(&self.lake, name).await? {
                out.extend(table::committed_offsets(name, &t, &self.pipeline, tps).await?);
            }
        }
        // Other layers fed by the same partitions may be behind bronze (a crash between
        // their commits) or new: resume from the lowest; none at all means from the start.
        let mut by_location: BTreeMap<&str, Vec<&TopicPartition>> = BTreeMap::new();
        for tp in parts {
            for location in self.resume_tables.get(&tp.topic).into_iter().flatten() {
                by_location.entry(location.as_str()).or_default().push(tp);
            }
        }
        for (location, tps) in by_location {
            let url = table::lake_url(&self.lake, location)?;
            let t = table::open(location, &url).await?;
            let held = if table::exists(&t) {
                table::committed_offsets(location, &t, &self.pipeline, tps.iter().copied()).await?
            } else {
                BTreeMap::new()
            };
            // A table without offsets for a partition bronze has read needs it from the
            // start (-1: before the first offset), whatever `auto_offset_reset` says:
            // that setting is for partitions no table has read yet.
            for tp in tps {
                match (out.get(tp).copied(), held.get(tp)) {
                    (Some(b), Some(v)) => {
                        out.insert(tp.clone(), b.min(*v));
                    }
                    (Some(_), None) => {
                        out.insert(tp.clone(), -1);
                    }
                    (None, _) => {}
                }
            }
        }
        Ok(out)
    }
}

impl Checkpoints for DeltaCheckpoints {
    fn resume(
        &self,
        partitions: &[TopicPartition],
    ) -> sluice_pipeline::Result<BTreeMap<TopicPartition, Resume>> {
        let committed = self
            .block_on(self.committed(partitions))
            .map_err(|e| sluice_pipeline::Error::Checkpoints(Box::new(e)))?;
        Ok(committed
            .into_iter()
            .map(|(tp, last)| {
                let resume = if last < 0 {
                    Resume::Beginning
                } else {
                    Resume::After(last)
                };
                (tp, resume)
            })
            .collect())
    }

    fn table_schema(&self, table: &str) -> sluice_pipeline::Result<Option<SchemaRef>> {
        let schema = self.block_on(async {
            match open_bronze(&self.lake, table).await? {
                Some(t) => table::arrow_schema(table, &t).map(Some),
                None => Ok(None),
            }
        });
        schema.map_err(|e| sluice_pipeline::Error::Checkpoints(Box::new(e)))
    }
}

/// The bronze table `table_name`, if it exists.
async fn open_bronze(lake: &Lake, table_name: &str) -> Result<Option<DeltaTable>> {
    let url = table::lake_url(lake, &BronzeSink::location(table_name))?;
    let t = table::open(table_name, &url).await?;
    Ok(table::exists(&t).then_some(t))
}
