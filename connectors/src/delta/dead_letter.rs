//! The dead-letter table `_sluice/dead_letters`: every message that could not become a
//! row, whole, with its provenance.
//!
//! Dead letters are committed just before the rows of the same batch, with their own
//! `txn` per partition, so a restart after a crash between the two commits skips the
//! dead letters already landed instead of writing them twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use sluice_pipeline::lake::Lake;
use sluice_pipeline::{DeadLetter, OffsetRange, TopicPartition};

use super::{fence, table};
use crate::error::{Error, Result, delta};

/// Where the dead-letter table lives under the lake.
pub const DEAD_LETTERS: &str = "_sluice/dead_letters";

/// Columns carrying file statistics: provenance only, never key, payload or error text.
pub const STATS_COLUMNS: [&str; 8] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "stage",
    "destination_table",
    "pipeline",
    "dead_at",
];

/// Schema of the dead-letter table.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("kafka_topic", DataType::Utf8, true),
        Field::new("kafka_partition", DataType::Int32, true),
        Field::new("kafka_offset", DataType::Int64, true),
        Field::new("kafka_timestamp", ts.clone(), true),
        Field::new("kafka_key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, true),
        Field::new("stage", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("destination_table", DataType::Utf8, true),
        Field::new("pipeline", DataType::Utf8, true),
        Field::new("dead_at", ts, true),
    ]))
}

/// The dead-letter table of a lake (or a table of the same shape: the quarantine).
pub struct DeadLetterTable {
    location: &'static str,
    pipeline: String,
    url: url::Url,
    table: Option<DeltaTable>,
}

impl DeadLetterTable {
    pub fn new(lake: &Lake, pipeline: &str) -> Result<Self> {
        Self::at(lake, pipeline, DEAD_LETTERS)
    }

    /// A table of dead-letter shape at `location` under the lake.
    pub fn at(lake: &Lake, pipeline: &str, location: &'static str) -> Result<Self> {
        Ok(Self {
            location,
            pipeline: pipeline.to_string(),
            url: table::lake_url(lake, location)?,
            table: None,
        })
    }

    /// Commit `letters` (bound for `destination` tables) covering `ranges`; returns how many landed.
    pub async fn commit(
        &mut self,
        letters: Vec<(String, DeadLetter)>,
        ranges: &BTreeMap<TopicPartition, OffsetRange>,
    ) -> Result<usize> {
        if letters.is_empty() {
            return Ok(0);
        }
        if self.table.is_none() {
            let properties = super::stats::only(&schema(), &STATS_COLUMNS);
            let mut t =
                table::create(self.location, &self.url, &schema(), &[], &properties).await?;
            // A table made by an older version: its settings brought up to date.
            super::stats::ensure(self.location, &mut t, &properties, None).await?;
            self.table = Some(t);
        }
        let Some(t) = self.table.as_mut() else {
            return Ok(0);
        };
        let mut last_error: Option<Error> = None;
        for attempt in 0..super::COMMIT_ATTEMPTS {
            if attempt > 0 {
                table::refresh(self.location, t).await?;
            }
            let mut ranges = ranges.clone();
            let committed =
                table::committed_offsets(self.location, t, &self.pipeline, ranges.keys()).await?;
            fence::fence(&mut ranges, &committed);
            let keep: Vec<&(String, DeadLetter)> = letters
                .iter()
                .filter(|(_, d)| {
                    let tp = TopicPartition::new(d.topic.clone(), d.partition);
                    ranges.get(&tp).is_some_and(|r| d.offset >= r.first)
                })
                .collect();
            if keep.is_empty() {
                return Ok(0);
            }
            let batch = to_batch(&self.pipeline, &keep)?;
            let mut writer =
                RecordBatchWriter::for_table(t).map_err(delta(self.location, "opening writer"))?;
            writer
                .write(batch)
                .await
                .map_err(delta(self.location, "writing"))?;
            let adds = writer
                .flush()
                .await
                .map_err(delta(self.location, "writing"))?;
            let actions = adds.into_iter().map(Action::Add).collect();
            match table::commit(self.location, t, &self.pipeline, actions, &ranges, &[]).await {
                Ok(_) => return Ok(keep.len()),
                Err(e) => last_error = Some(e),
            }
        }
        Err(Error::CommitRetries {
            table: self.location.into(),
            attempts: super::COMMIT_ATTEMPTS,
            last: last_error.map(Box::new),
        })
    }
}

fn to_batch(pipeline: &str, letters: &[&(String, DeadLetter)]) -> Result<RecordBatch> {
    let now = chrono::Utc::now().timestamp_micros();
    let d = |f: &dyn Fn(&DeadLetter) -> Option<String>| -> ArrayRef {
        Arc::new(letters.iter().map(|(_, l)| f(l)).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        d(&|l| Some(l.topic.clone())),
        Arc::new(
            letters
                .iter()
                .map(|(_, l)| Some(l.partition))
                .collect::<Int32Array>(),
        ),
        Arc::new(
            letters
                .iter()
                .map(|(_, l)| Some(l.offset))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            letters
                .iter()
                .map(|(_, l)| l.timestamp_ms.map(|t| t * 1000))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        Arc::new(
            letters
                .iter()
                .map(|(_, l)| l.key.as_deref())
                .collect::<BinaryArray>(),
        ),
        Arc::new(
            letters
                .iter()
                .map(|(_, l)| l.payload.as_deref())
                .collect::<BinaryArray>(),
        ),
        d(&|l| Some(l.stage.as_str().to_string())),
        d(&|l| Some(l.error.clone())),
        Arc::new(
            letters
                .iter()
                .map(|(t, _)| Some(t.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(StringArray::from(vec![pipeline; letters.len()])),
        Arc::new(TimestampMicrosecondArray::from(vec![now; letters.len()]).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}
