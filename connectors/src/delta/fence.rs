//! The exactly-once fence: which offsets a table already holds, and leaving them out of
//! the next commit.
//!
//! Every commit that lands Kafka data carries one `txn` per partition whose version is the
//! last offset it holds (see [`super::table`]). Before each commit attempt a sink reads
//! those versions back ([`TxnCache`]), narrows its offset ranges to what the table lacks
//! ([`fence`]) and drops its rows at offsets already held ([`filter_offsets_above`], by
//! the rows' lineage columns). A partition whose whole range is held is reported fenced,
//! so the source reads on from there. A commit racing another writer for the same
//! partition is refused by Delta's conflict checker (`ConcurrentTransaction`) and retried
//! against the fresh table, where the fence drops what the other writer already landed.

use std::collections::BTreeMap;

use arrow::array::{AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use deltalake::DeltaTable;
use sluice_pipeline::{OffsetRange, TopicPartition};

use crate::error::{Error, Result};

/// Transaction versions read from a table (`None`: no offset yet), exact for table
/// version `at`. Spares a log scan per partition on every commit.
#[derive(Default)]
pub(crate) struct TxnCache {
    versions: BTreeMap<TopicPartition, Option<i64>>,
    at: Option<i64>,
}

impl TxnCache {
    /// Offsets `table` holds for the partitions of `ranges`, as of the table version the
    /// next commit is built on; read from the log only for partitions not known at that
    /// version.
    pub(crate) async fn offsets(
        &mut self,
        name: &str,
        table: &DeltaTable,
        pipeline: &str,
        ranges: &BTreeMap<TopicPartition, OffsetRange>,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let version = table.version().map(|v| v as i64);
        if self.at != version {
            self.versions.clear();
            self.at = version;
        }
        let missing: Vec<TopicPartition> = ranges
            .keys()
            .filter(|tp| !self.versions.contains_key(*tp))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let read =
                super::table::committed_offsets(name, table, pipeline, missing.iter()).await?;
            for tp in missing {
                let v = read.get(&tp).copied();
                self.versions.insert(tp, v);
            }
        }
        Ok(ranges
            .keys()
            .filter_map(|tp| {
                self.versions
                    .get(tp)
                    .copied()
                    .flatten()
                    .map(|v| (tp.clone(), v))
            })
            .collect())
    }

    /// This process committed `ranges` as table version `version`. If only that commit
    /// lies between the versions read and this one, they are still exact with ours
    /// applied; otherwise they are read again next time.
    pub(crate) fn committed(
        &mut self,
        version: i64,
        ranges: &BTreeMap<TopicPartition, OffsetRange>,
    ) {
        let exact = self.at == Some(version - 1);
        self.at = exact.then_some(version);
        if !exact {
            self.versions.clear();
            return;
        }
        for (tp, r) in ranges {
            self.versions.insert(tp.clone(), Some(r.last));
        }
    }
}

/// Whether `committed` already holds some offset of `ranges`: only then do rows need
/// filtering and [`fence`] anything to do.
pub fn overlaps(
    ranges: &BTreeMap<TopicPartition, OffsetRange>,
    committed: &BTreeMap<TopicPartition, i64>,
) -> bool {
    ranges
        .iter()
        .any(|(tp, r)| committed.get(tp).is_some_and(|v| *v >= r.first))
}

/// Narrow `ranges` to what `committed` does not already hold.
///
/// Returns the partitions fully covered already, with the offset to resume from.
pub fn fence(
    ranges: &mut BTreeMap<TopicPartition, OffsetRange>,
    committed: &BTreeMap<TopicPartition, i64>,
) -> Vec<(TopicPartition, i64)> {
    let mut fenced = Vec::new();
    ranges.retain(|tp, r| match committed.get(tp) {
        Some(&v) if v >= r.last => {
            fenced.push((tp.clone(), v + 1));
            false
        }
        Some(&v) if v >= r.first => {
            r.first = v + 1;
            true
        }
        _ => true,
    });
    fenced
}

/// Drop what is buffered for `partitions` (revoked): their ranges and their rows.
pub(crate) fn forget_partitions(
    pending: &mut Vec<RecordBatch>,
    ranges: &mut BTreeMap<TopicPartition, OffsetRange>,
    partitions: &[TopicPartition],
) {
    let mut dropped = false;
    for tp in partitions {
        dropped |= ranges.remove(tp).is_some();
    }
    if dropped {
        let gone: BTreeMap<TopicPartition, i64> =
            partitions.iter().map(|tp| (tp.clone(), i64::MAX)).collect();
        *pending = pending
            .iter()
            // On a (theoretical) failure keep the batch: the commit-time fence still keeps
            // its rows from landing twice.
            .map(|b| filter_offsets_above(b, &gone).unwrap_or_else(|_| b.clone()))
            .filter(|b| b.num_rows() > 0)
            .collect();
    }
}

/// Keep the rows of `batch` whose `_kafka_offset` is above the floor of their partition in
/// `floors` (rows of partitions without a floor are kept).
pub fn filter_offsets_above(
    batch: &RecordBatch,
    floors: &BTreeMap<TopicPartition, i64>,
) -> Result<RecordBatch> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::MissingColumn {
                rows: "bronze rows",
                column: name.to_string(),
            })
    };
    let topics = col("_kafka_topic")?.as_string::<i32>().clone();
    let parts: Int32Array = col("_kafka_partition")?.as_primitive().clone();
    let offsets: Int64Array = col("_kafka_offset")?.as_primitive().clone();
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let floor = floors
                .iter()
                .find(|(tp, _)| tp.partition == parts.value(i) && tp.topic == topics.value(i))
                .map(|(_, f)| *f);
            Some(floor.is_none_or(|f| offsets.value(i) > f))
        })
        .collect();
    Ok(filter_record_batch(batch, &keep)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::Int64Type;
    use std::sync::Arc;

    fn r(first: i64, last: i64) -> OffsetRange {
        OffsetRange { first, last }
    }

    #[test]
    fn fence_drops_partitions_already_committed_and_trims_overlaps() {
        let a = TopicPartition::new("t", 0);
        let b = TopicPartition::new("t", 1);
        let c = TopicPartition::new("t", 2);
        let mut ranges = BTreeMap::from([
            (a.clone(), r(10, 19)),
            (b.clone(), r(10, 19)),
            (c.clone(), r(10, 19)),
        ]);
        let committed = BTreeMap::from([(a.clone(), 25), (b.clone(), 14), (c.clone(), 9)]);
        let fenced = fence(&mut ranges, &committed);
        assert_eq!(fenced, vec![(a, 26)]);
        assert_eq!(ranges[&b], r(15, 19));
        assert_eq!(ranges[&c], r(10, 19));
    }

    #[test]
    fn filter_offsets_above_keeps_only_newer_rows() {
        let rows = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from(vec![1; 5])) as ArrayRef),
            (
                "_kafka_topic",
                Arc::new(StringArray::from(vec!["events"; 5])),
            ),
            ("_kafka_partition", Arc::new(Int32Array::from(vec![3; 5]))),
            (
                "_kafka_offset",
                Arc::new(Int64Array::from_iter_values(0..5)),
            ),
        ])
        .expect("batch");
        let floors = BTreeMap::from([
            (TopicPartition::new("events", 3), 2),
            (TopicPartition::new("events", 4), 100),
        ]);
        let kept = filter_offsets_above(&rows, &floors).expect("filter");
        let offsets = kept
            .column_by_name("_kafka_offset")
            .expect("lineage")
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(offsets, vec![3, 4], "partition 3 keeps offsets above 2");
    }
}
