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
            let mut writer = RecordBatchWriter::for_table(t)
                .map_err(delta(self.location, "opening writer"))?
                .with_writer_properties(writer_properties());
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

/// Snappy, as delta-rs writes, without dictionaries for the key and the payload: they
/// rarely repeat (and never when sealed), and a dictionary of megabyte payloads costs a
/// hash of every byte and a copy of each before it is given up.
fn writer_properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_column_dictionary_enabled("kafka_key".into(), false)
        .set_column_dictionary_enabled("payload".into(), false)
        .build()
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

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use sluice_pipeline::Stage;

    /// Payloads and keys are written whole and without a dictionary (a megabyte of bytes
    /// that are not UTF-8 among them); the other columns keep theirs.
    #[tokio::test]
    async fn payloads_and_keys_land_whole_without_a_dictionary() {
        let dir = tempfile::tempdir().expect("dir");
        let lake = Lake::Local(dir.path().join("lake"));
        let mut table = DeadLetterTable::new(&lake, "p").expect("table");
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 | 0x80).collect();
        let letter = |offset: i64, payload: Vec<u8>| {
            (
                "t".to_string(),
                DeadLetter {
                    topic: "events".into(),
                    partition: 0,
                    offset,
                    timestamp_ms: None,
                    key: Some(b"\xff\xfek".to_vec()),
                    payload: Some(payload),
                    stage: Stage::Limit,
                    error: "too big".into(),
                },
            )
        };
        let ranges = BTreeMap::from([(
            TopicPartition::new("events".to_string(), 0),
            OffsetRange { first: 0, last: 2 },
        )]);
        let n = table
            .commit(
                vec![
                    letter(0, big.clone()),
                    letter(1, b"{}".to_vec()),
                    letter(2, b"{}".to_vec()),
                ],
                &ranges,
            )
            .await
            .expect("commit");
        assert_eq!(n, 3);
        let files: Vec<_> = walkdir(&dir.path().join("lake"));
        assert_eq!(files.len(), 1, "{files:?}");
        let reader =
            SerializedFileReader::new(std::fs::File::open(&files[0]).expect("open")).expect("read");
        let rg = reader.metadata().row_group(0);
        let column = |name: &str| {
            (0..rg.num_columns())
                .map(|i| rg.column(i))
                .find(|c| c.column_path().string() == name)
                .expect(name)
        };
        assert!(column("payload").dictionary_page_offset().is_none());
        assert!(column("kafka_key").dictionary_page_offset().is_none());
        assert!(column("stage").dictionary_page_offset().is_some());
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect();
        let payload = |r: &parquet::record::Row| {
            r.get_column_iter()
                .find(|(n, _)| n.as_str() == "payload")
                .map(|(_, v)| v.clone())
                .expect("payload")
        };
        assert_eq!(payload(&rows[0]), parquet::record::Field::Bytes(big.into()));
    }

    fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
        out
    }
}
