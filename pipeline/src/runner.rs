//! The runner loop: receive batches, protect them ([`Protection`]), buffer them in the
//! sink, commit when the [`FlushPolicy`] says so, and report committed offsets back to the
//! source.
//!
//! The loop ends when the source closes its channel (on shutdown, or when a bounded run
//! has caught up); whatever is buffered is then committed before returning.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;

use arrow::datatypes::SchemaRef;

use crate::protection::{Plan, Protection};
use crate::{Result, Sink, SourceControl, SourceEvent};

/// When to commit what is buffered.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_latency: Duration,
}

impl FlushPolicy {
    fn due(&self, rows: usize, bytes: usize, since: Option<Instant>, now: Instant) -> bool {
        rows >= self.max_rows
            || bytes >= self.max_bytes
            || since.is_some_and(|t| now.duration_since(t) >= self.max_latency)
    }
}

/// Counters of a run, exported at the end and after every commit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunStats {
    pub messages: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub source_bytes: u64,
    /// From the first batch received to the last commit.
    pub active: Duration,
}

/// Drive `sink` from `events` until the source closes the channel.
pub async fn run<S: Sink>(
    mut events: mpsc::Receiver<SourceEvent>,
    control: &dyn SourceControl,
    protection: &Protection,
    sink: &mut S,
    policy: FlushPolicy,
) -> Result<RunStats> {
    let mut stats = RunStats::default();
    // Input schema each table's chain was last checked against, and the resulting plan.
    let mut plans: HashMap<String, (SchemaRef, Plan)> = HashMap::new();
    let mut first_batch: Option<Instant> = None;
    // When the oldest uncommitted message arrived.
    let mut oldest: Option<Instant> = None;
    let mut tick = tokio::time::interval(policy.max_latency.min(Duration::from_millis(250)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(SourceEvent::Batch(mut batch)) => {
                    first_batch.get_or_insert_with(Instant::now);
                    stats.messages += batch.message_count() as u64;
                    stats.source_bytes += batch.source_bytes as u64;
                    let table = batch.table.clone();
                    metrics::counter!(crate::metrics::MESSAGES_TOTAL, "table" => table.clone())
                        .increment(batch.message_count() as u64);
                    metrics::counter!(crate::metrics::SOURCE_BYTES_TOTAL, "table" => table.clone())
                        .increment(batch.source_bytes as u64);
                    protection.apply(&mut batch, &mut plans)?;
                    for d in &batch.dead_letters {
                        metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "table" => table.clone(), "stage" => d.stage.as_str())
                            .increment(1);
                    }
                    sink.write(batch).await?;
                    oldest.get_or_insert_with(Instant::now);
                }
                Some(SourceEvent::Revoked(parts)) => sink.revoke(&parts),
                None => break,
            },
            _ = tick.tick() => {}
        }
        let b = sink.buffered();
        if b.messages > 0 && policy.due(b.rows, b.bytes, oldest, Instant::now()) {
            if let Some(t) = oldest {
                metrics::histogram!(crate::metrics::BATCH_LATENCY_SECONDS)
                    .record(t.elapsed().as_secs_f64());
            }
            commit(sink, control, &mut stats).await?;
            oldest = None;
        } else if b.messages == 0 {
            oldest = None;
        }
    }
    if sink.buffered().messages > 0 {
        commit(sink, control, &mut stats).await?;
    }
    stats.active = first_batch.map(|t| t.elapsed()).unwrap_or_default();
    Ok(stats)
}

async fn commit<S: Sink>(
    sink: &mut S,
    control: &dyn SourceControl,
    stats: &mut RunStats,
) -> Result<()> {
    let started = Instant::now();
    let outcome = sink.commit().await?;
    metrics::gauge!(crate::metrics::LAST_COMMIT_TIMESTAMP_SECONDS).set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    stats.rows += outcome.rows as u64;
    stats.dead_letters += outcome.dead_letters as u64;
    stats.commits += outcome.commits as u64;
    for (tp, offset) in &outcome.fenced {
        control.seek(tp, *offset);
    }
    if !outcome.committed.is_empty() {
        control.committed(&outcome.committed);
    }
    tracing::info!(
        rows = outcome.rows,
        dead_letters = outcome.dead_letters,
        commits = outcome.commits,
        fenced = outcome.fenced.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "committed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Buffered, CommitOutcome, OffsetRange, SourceBatch, TopicPartition};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct CountingSink {
        buffered: Buffered,
        commits: Vec<usize>,
        last: Option<(TopicPartition, i64)>,
    }

    impl Sink for CountingSink {
        async fn write(&mut self, batch: SourceBatch) -> Result<()> {
            self.buffered.messages += batch.message_count();
            self.buffered.rows += batch.message_count();
            for (tp, r) in batch.offsets {
                self.last = Some((tp, r.last + 1));
            }
            Ok(())
        }
        fn buffered(&self) -> Buffered {
            self.buffered
        }
        async fn commit(&mut self) -> Result<CommitOutcome> {
            self.commits.push(self.buffered.rows);
            let rows = self.buffered.rows;
            self.buffered = Buffered::default();
            Ok(CommitOutcome {
                committed: self.last.clone().into_iter().collect(),
                rows,
                commits: 1,
                ..Default::default()
            })
        }
        fn revoke(&mut self, _: &[TopicPartition]) {}
    }

    #[derive(Default)]
    struct Control(Mutex<Vec<i64>>);
    impl SourceControl for Control {
        fn committed(&self, offsets: &[(TopicPartition, i64)]) {
            self.0
                .lock()
                .expect("lock")
                .extend(offsets.iter().map(|o| o.1));
        }
        fn seek(&self, _: &TopicPartition, _: i64) {}
    }

    fn batch(first: i64, n: usize) -> SourceEvent {
        let mut offsets = BTreeMap::new();
        offsets.insert(
            TopicPartition::new("t", 0),
            OffsetRange {
                first,
                last: first + n as i64 - 1,
            },
        );
        let dead_letters = (0..n)
            .map(|i| crate::DeadLetter {
                topic: "t".into(),
                partition: 0,
                offset: first + i as i64,
                timestamp_ms: None,
                key: None,
                payload: None,
                stage: crate::Stage::Decode,
                error: "x".into(),
            })
            .collect();
        SourceEvent::Batch(SourceBatch {
            table: "t".into(),
            rows: None,
            offsets,
            dead_letters,
            source_bytes: 0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn commits_by_row_count_then_reports_offsets_to_the_source() {
        let (tx, rx) = mpsc::channel(8);
        let policy = FlushPolicy {
            max_rows: 10,
            max_bytes: usize::MAX,
            max_latency: Duration::from_secs(3600),
        };
        let mut sink = CountingSink::default();
        let control = Control::default();
        tx.send(batch(0, 6)).await.expect("send");
        tx.send(batch(6, 6)).await.expect("send");
        tx.send(batch(12, 3)).await.expect("send");
        drop(tx);
        let stats = run(rx, &control, &Protection::default(), &mut sink, policy)
            .await
            .expect("run");
        assert_eq!(
            sink.commits,
            vec![12, 3],
            "one commit at the threshold, one at the end"
        );
        assert_eq!(stats.messages, 15);
        assert_eq!(*control.0.lock().expect("lock"), vec![12, 15]);
    }

    #[derive(Default)]
    struct RowSink(Vec<usize>);
    impl Sink for RowSink {
        async fn write(&mut self, batch: SourceBatch) -> Result<()> {
            self.0.push(batch.rows.map_or(0, |r| r.num_rows()));
            Ok(())
        }
        fn buffered(&self) -> Buffered {
            Buffered::default()
        }
        async fn commit(&mut self) -> Result<CommitOutcome> {
            Ok(CommitOutcome::default())
        }
        fn revoke(&mut self, _: &[TopicPartition]) {}
    }

    #[tokio::test]
    async fn rows_of_a_table_without_transforms_reach_the_sink() {
        use arrow::array::Int32Array;
        let (tx, rx) = mpsc::channel(1);
        let rows = arrow::array::RecordBatch::try_from_iter([(
            "x",
            std::sync::Arc::new(Int32Array::from(vec![1, 2, 3])) as _,
        )])
        .expect("batch");
        tx.send(SourceEvent::Batch(SourceBatch {
            table: "t".into(),
            rows: Some(rows),
            offsets: BTreeMap::new(),
            dead_letters: vec![],
            source_bytes: 0,
        }))
        .await
        .expect("send");
        drop(tx);
        let mut sink = RowSink::default();
        let policy = FlushPolicy {
            max_rows: 10,
            max_bytes: 10,
            max_latency: Duration::from_secs(1),
        };
        run(
            rx,
            &Control::default(),
            &Protection::default(),
            &mut sink,
            policy,
        )
        .await
        .expect("run");
        assert_eq!(sink.0, vec![3]);
    }

    #[tokio::test(start_paused = true)]
    async fn commits_after_max_latency_while_the_source_is_idle() {
        let (tx, rx) = mpsc::channel(8);
        let policy = FlushPolicy {
            max_rows: 1000,
            max_bytes: usize::MAX,
            max_latency: Duration::from_secs(2),
        };
        let mut sink = CountingSink::default();
        let control = Control::default();
        let runner = async {
            run(rx, &control, &Protection::default(), &mut sink, policy)
                .await
                .expect("run")
        };
        let feeder = async {
            tx.send(batch(0, 3)).await.expect("send");
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(
                *control.0.lock().expect("lock"),
                vec![3],
                "latency flush happened while idle"
            );
            drop(tx);
        };
        let (stats, ()) = tokio::join!(runner, feeder);
        assert_eq!(stats.commits, 1);
    }
}
