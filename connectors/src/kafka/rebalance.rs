//! The consumer's librdkafka context: partition assignment and what the consumer thread
//! learns of it.
//!
//! librdkafka calls [`ConsumerContext::rebalance`] from inside `poll`, on the consumer
//! thread. On an assignment the context asks the source's [`Checkpoints`] where each
//! partition resumes and assigns it there: after the offset the tables hold, from the
//! beginning when a table it feeds holds none of it yet, and where `auto_offset_reset`
//! says when no table has read it. On a revocation it records the partitions, which the
//! consumer thread sends downstream after the poll so that the sink drops what it buffered
//! for them. A failure to read the checkpoints is kept for the thread to end the run with:
//! assigning a guessed offset would lose or double rows.
//!
//! The context also turns librdkafka's statistics into the consumer-lag gauges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use sluice_pipeline::config::kafka::OffsetReset;
use sluice_pipeline::health::Health;
use sluice_pipeline::{Checkpoints, Resume, TopicPartition};

use crate::error::Error;

/// The source consumer's context: where assigned partitions start, and the assignment
/// bookkeeping the consumer thread reads after each poll.
pub(crate) struct RebalanceContext {
    checkpoints: Arc<dyn Checkpoints>,
    reset: OffsetReset,
    /// Assigned partitions and the offset each was assigned at.
    assigned: Mutex<BTreeMap<TopicPartition, Offset>>,
    revoked: Mutex<Vec<TopicPartition>>,
    failure: Mutex<Option<Error>>,
    rebalances: AtomicU64,
    health: Arc<Health>,
}

impl ClientContext for RebalanceContext {
    /// Consumer lag per assigned partition: high watermark minus the group's committed
    /// offset, which follows the Delta commits (before any commit: minus the low one).
    fn stats(&self, statistics: Statistics) {
        let mut total = 0i64;
        let mut known = false;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || !p.desired || p.hi_offset < 0 {
                    continue;
                }
                let lag = if p.committed_offset >= 0 {
                    (p.hi_offset - p.committed_offset).max(0)
                } else {
                    (p.hi_offset - p.lo_offset.max(0)).max(0)
                };
                metrics::gauge!(
                    sluice_pipeline::metrics::CONSUMER_LAG_MESSAGES,
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(lag as f64);
                total += lag;
                known = true;
            }
        }
        if known {
            self.health.lag_messages.store(total, Ordering::Relaxed);
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(sluice_pipeline::metrics::REBALANCES_TOTAL).increment(1);
        let parts: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.checkpoints.resume(&parts) {
                    Ok(resume) => {
                        let mut starts = Vec::new();
                        for tp in &parts {
                            let offset = start_offset(resume.get(tp).copied(), self.reset);
                            let _ = tpl.set_partition_offset(&tp.topic, tp.partition, offset);
                            starts.push((tp.clone(), offset));
                        }
                        tracing::info!(
                            partitions = parts.len(),
                            from_delta = resume.len(),
                            "partitions assigned"
                        );
                        if let Err(e) = consumer.assign(tpl) {
                            self.fail(Error::Kafka {
                                context: "assigning partitions".into(),
                                source: Box::new(e),
                            });
                        }
                        if let Ok(mut a) = self.assigned.lock() {
                            a.extend(starts);
                            self.set_assigned(a.len());
                        }
                    }
                    Err(source) => self.fail(Error::Resume { source }),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = parts.len(), "partitions revoked");
                if let Ok(mut r) = self.revoked.lock() {
                    r.extend(parts.iter().cloned());
                }
                if let Ok(mut a) = self.assigned.lock() {
                    a.clear();
                    self.set_assigned(0);
                }
                // The new owner reports these partitions' lag from now on.
                for tp in &parts {
                    metrics::gauge!(
                        sluice_pipeline::metrics::CONSUMER_LAG_MESSAGES,
                        "topic" => tp.topic.clone(),
                        "partition" => tp.partition.to_string()
                    )
                    .set(0.0);
                }
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Where a partition is assigned: after what its tables hold, or, for a partition no
/// table has read, where `auto_offset_reset` says.
fn start_offset(resume: Option<Resume>, reset: OffsetReset) -> Offset {
    match resume {
        // A table fed by the partition holds nothing yet, while another does: that one
        // needs the whole backlog.
        Some(Resume::Beginning) => Offset::Beginning,
        Some(Resume::After(v)) => Offset::Offset(v + 1),
        None if reset == OffsetReset::Latest => Offset::End,
        None => Offset::Beginning,
    }
}

impl RebalanceContext {
    pub(crate) fn new(
        checkpoints: Arc<dyn Checkpoints>,
        reset: OffsetReset,
        health: Arc<Health>,
    ) -> Self {
        Self {
            checkpoints,
            reset,
            assigned: Mutex::new(BTreeMap::new()),
            revoked: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            rebalances: AtomicU64::new(0),
            health,
        }
    }

    fn set_assigned(&self, n: usize) {
        self.health
            .assigned_partitions
            .store(n as u64, Ordering::Relaxed);
        metrics::gauge!(sluice_pipeline::metrics::ASSIGNED_PARTITIONS).set(n as f64);
    }

    /// The partitions assigned now, with the offsets they were assigned at.
    pub(crate) fn assignment(&self) -> BTreeMap<TopicPartition, Offset> {
        self.assigned.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Whether any partition is assigned, without copying the assignment.
    pub(crate) fn has_assignment(&self) -> bool {
        self.assigned.lock().is_ok_and(|a| !a.is_empty())
    }

    /// The partitions revoked since the last call.
    pub(crate) fn take_revoked(&self) -> Vec<TopicPartition> {
        match self.revoked.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Vec::new(),
        }
    }

    /// Assignments and revocations seen so far.
    pub(crate) fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }

    /// The first failure of a rebalance, taken to end the run with.
    pub(crate) fn failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    fn fail(&self, error: Error) {
        tracing::error!(error = %error, "rebalance failed; the run ends");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_start_after_their_checkpoint_or_where_the_reset_says() {
        for reset in [OffsetReset::Earliest, OffsetReset::Latest] {
            assert_eq!(
                start_offset(Some(Resume::After(41)), reset),
                Offset::Offset(42)
            );
            assert_eq!(
                start_offset(Some(Resume::After(0)), reset),
                Offset::Offset(1)
            );
            // A table that holds none of a partition another holds reads all of it,
            // whatever `auto_offset_reset` says.
            assert_eq!(
                start_offset(Some(Resume::Beginning), reset),
                Offset::Beginning
            );
        }
        assert_eq!(start_offset(None, OffsetReset::Earliest), Offset::Beginning);
        assert_eq!(start_offset(None, OffsetReset::Latest), Offset::End);
    }
}
