//! The sink of `sluice run`: data-quality expectations on every batch, then bronze, then
//! silver for change events.
//!
//! Both layers commit the same flush: bronze first (with the dead letters), then each
//! silver table's MERGE, each with its own `txn` per partition. A crash in between leaves
//! silver behind bronze; the source then resumes from the lower of the two offsets
//! (see `delta::checkpoints`), bronze drops what it already holds and silver catches up.
//!
//! Under crypto-shredding the subject keys created for the flush are stored before
//! either layer commits, so no committed row lacks its key.

use std::collections::BTreeMap;

use sluice_pipeline::{Buffered, CommitOutcome, Sink, SourceBatch, TopicPartition};

use super::bronze::BronzeSink;
use super::quality::QualityGate;
use super::silver::SilverSink;
use super::subject_keys::SubjectKeyStore;

/// Expectations, then bronze plus silver.
pub struct LayeredSink {
    pub quality: QualityGate,
    pub bronze: BronzeSink,
    pub silver: SilverSink,
    /// The subject key store of `encrypt` rules, when the policy has any.
    pub keys: Option<SubjectKeyStore>,
    /// Added before every commit: a slow object store, for tests of backpressure.
    pub commit_delay: Option<std::time::Duration>,
}

impl Sink for LayeredSink {
    async fn write(&mut self, batch: SourceBatch) -> sluice_pipeline::Result<()> {
        let batch = self.quality.check(batch).await?;
        self.silver.write(&batch)?;
        self.bronze.write(batch).await
    }

    fn buffered(&self) -> Buffered {
        self.bronze.buffered()
    }

    async fn commit(&mut self) -> sluice_pipeline::Result<CommitOutcome> {
        if let Some(d) = self.commit_delay {
            tokio::time::sleep(d).await;
        }
        if let Some(keys) = &mut self.keys {
            keys.persist().await?;
        }
        let mut outcome = self.bronze.commit().await?;
        self.quality.commit().await?;
        let mut silver = CommitOutcome::default();
        let mut silver_fenced: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        self.silver.commit(&mut silver, &mut silver_fenced).await?;
        outcome.commits += silver.commits;
        // A partition may be skipped ahead only as far as every layer it feeds allows:
        // silver may still need what bronze already holds.
        outcome.fenced = outcome
            .fenced
            .into_iter()
            .filter_map(|(tp, next)| {
                if !self.silver.reads(&tp.topic) {
                    return Some((tp, next));
                }
                silver_fenced.get(&tp).map(|s| (tp, next.min(*s)))
            })
            .collect();
        Ok(outcome)
    }

    fn revoke(&mut self, partitions: &[TopicPartition]) {
        self.silver.revoke(partitions);
        self.bronze.revoke(partitions);
    }
}
