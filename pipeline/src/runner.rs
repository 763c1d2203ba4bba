//! The runner loop: receive batches, transform them, buffer them in the sink, commit when
//! the [`FlushPolicy`] says so, and report committed offsets back to the source.
//!
//! The loop ends when the source closes its channel (on shutdown, or when a bounded run
//! has caught up); whatever is buffered is then committed before returning.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int32Type, Int64Type, SchemaRef, TimestampMicrosecondType};

use crate::error::scrub_values;
use crate::panic::guard;
use crate::{
    DeadLetter, Error, Result, Seal, Sink, SourceBatch, SourceControl, SourceEvent, Stage,
    Transform,
};

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

/// One transform of a table's chain and the column (dotted path) it works on.
pub struct Step {
    pub column: String,
    pub transform: Box<dyn Transform>,
}

/// What happens to batches between source and sink: the PII transforms of each table and
/// the seal of dead letters.
#[derive(Default)]
pub struct Protection {
    /// Transforms to apply, in order, by destination table.
    pub chains: HashMap<String, Vec<Step>>,
    /// Encrypts the raw key and payload of every dead letter, when set.
    pub seal: Option<Box<dyn Seal>>,
}

/// Whether `schema` has a column at the dotted `path`.
fn has_column(schema: &arrow::datatypes::Schema, path: &str) -> bool {
    let mut fields = schema.fields();
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let Some(f) = fields.iter().find(|f| f.name() == name) else {
            return false;
        };
        if parts.peek().is_some() {
            match f.data_type() {
                arrow::datatypes::DataType::Struct(children) => fields = children,
                _ => return false,
            }
        }
    }
    true
}

/// Which steps of a chain apply to an input schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Indexes of the steps whose column is present.
    pub steps: Vec<usize>,
    /// Columns the policy names that the schema lacks.
    pub missing: Vec<String>,
}

impl Protection {
    /// Check the chain of `table` against `input`: every transform whose column is
    /// present must handle its type. With `strict` (a declared schema) a missing column
    /// is an error too; otherwise (an inferred schema, which may gain the column later)
    /// its step is left out until a schema with the column arrives.
    pub fn plan(&self, table: &str, input: &SchemaRef, strict: bool) -> Result<Plan> {
        let mut schema = input.clone();
        let mut plan = Plan {
            steps: Vec::new(),
            missing: Vec::new(),
        };
        let with_table = |e: Error| match e {
            Error::TransformSchema {
                transform, reason, ..
            } => Error::TransformSchema {
                transform,
                table: table.to_string(),
                reason,
            },
            other => other,
        };
        for (i, step) in self.chains.get(table).into_iter().flatten().enumerate() {
            if !has_column(&schema, &step.column) {
                if strict {
                    return Err(Error::TransformSchema {
                        transform: step.transform.name().to_string(),
                        table: table.to_string(),
                        reason: format!("the data has no column '{}'", step.column),
                    });
                }
                plan.missing.push(step.column.clone());
                continue;
            }
            schema = step.transform.output_schema(&schema).map_err(with_table)?;
            plan.steps.push(i);
        }
        Ok(plan)
    }

    /// Apply the chain of `batch.table` and seal its dead letters. Rows a transform
    /// rejects become dead letters at stage `transform`.
    fn apply(
        &self,
        batch: &mut SourceBatch,
        plans: &mut HashMap<String, (SchemaRef, Plan)>,
    ) -> Result<()> {
        if let Some(chain) = self.chains.get(&batch.table)
            && let Some(mut rows) = batch.rows.take()
        {
            // A new input schema (first batch, or evolution) is checked before use.
            let schema = rows.schema();
            if plans.get(&batch.table).is_none_or(|(s, _)| *s != schema) {
                let plan = self.plan(&batch.table, &schema, false)?;
                if !plan.missing.is_empty() {
                    tracing::warn!(
                        table = %batch.table,
                        columns = %plan.missing.join(","),
                        "policy columns not in the data yet: they are protected as soon as they appear"
                    );
                }
                plans.insert(batch.table.clone(), (schema, plan));
            }
            let steps = plans
                .get(&batch.table)
                .map_or(&[][..], |(_, p)| &p.steps[..]);
            for &i in steps {
                rows = run_step(chain[i].transform.as_ref(), rows, &mut batch.dead_letters)?;
            }
            batch.rows = (rows.num_rows() > 0).then_some(rows);
        }
        if let Some(seal) = &self.seal {
            for letter in &mut batch.dead_letters {
                seal.seal(letter);
            }
        }
        Ok(())
    }
}

/// Apply `protection` to one batch as the runner does, planning its chain on the way (for
/// benchmarks and tests of the protected path outside a run).
pub fn protect(protection: &Protection, batch: &mut SourceBatch) -> Result<()> {
    protection.apply(batch, &mut HashMap::new())
}

/// One step over `rows`: the rows the transform rejects become dead letters, the rest are
/// rewritten. Should the transform fail or panic on the batch, the batch is bisected down
/// to the rows it fails on alone, which become dead letters at stage `transform` naming
/// the failure (never a value); the others go on. A transform that fails on every row
/// thus dead-letters them all rather than stopping the run: nothing is lost either way.
fn run_step(
    t: &dyn Transform,
    rows: RecordBatch,
    dead: &mut Vec<DeadLetter>,
) -> Result<RecordBatch> {
    let attempt =
        |rows: RecordBatch| -> std::result::Result<(RecordBatch, Vec<DeadLetter>), String> {
            guard(|| {
                let rejected = t.reject(&rows)?;
                let (kept, letters) = if rejected.is_empty() {
                    (rows, Vec::new())
                } else {
                    split_rejected(rows, &rejected, t.name())?
                };
                Ok::<_, Error>((t.apply(kept)?, letters))
            })
            .map_err(|p| p.to_string())
            .and_then(|r| r.map_err(|e| scrub_values(&e.to_string())))
        };
    let n = rows.num_rows();
    match attempt(rows.clone()) {
        Ok((out, letters)) => {
            dead.extend(letters);
            Ok(out)
        }
        Err(error) => {
            tracing::warn!(
                transform = t.name(),
                rows = n,
                "Transform failed on a batch; isolating the rows it fails on."
            );
            let output = t.output_schema(&rows.schema())?;
            let mut parts = Vec::new();
            bisect_step(&attempt, rows, error, t.name(), &mut parts, dead)?;
            Ok(
                arrow::compute::concat_batches(&output, &parts).map_err(|source| {
                    Error::Transform {
                        transform: t.name().to_string(),
                        source,
                    }
                })?,
            )
        }
    }
}

/// `rows` failed with `error` as a whole: try each half, down to single rows, which
/// become dead letters.
fn bisect_step(
    attempt: &dyn Fn(RecordBatch) -> std::result::Result<(RecordBatch, Vec<DeadLetter>), String>,
    rows: RecordBatch,
    error: String,
    transform: &str,
    parts: &mut Vec<RecordBatch>,
    dead: &mut Vec<DeadLetter>,
) -> Result<()> {
    let n = rows.num_rows();
    if n <= 1 {
        let failed: Vec<(usize, String)> = (0..n).map(|i| (i, error.clone())).collect();
        let (_, letters) = split_rejected(rows, &failed, transform)?;
        dead.extend(letters);
        return Ok(());
    }
    for half in [rows.slice(0, n / 2), rows.slice(n / 2, n - n / 2)] {
        match attempt(half.clone()) {
            Ok((out, letters)) => {
                parts.push(out);
                dead.extend(letters);
            }
            Err(error) => bisect_step(attempt, half, error, transform, parts, dead)?,
        }
    }
    Ok(())
}

/// Remove `rejected` rows from `rows`, turning each into a dead letter whose payload is
/// the row as JSON (lineage columns left out) and whose provenance comes from them.
fn split_rejected(
    rows: RecordBatch,
    rejected: &[(usize, String)],
    transform: &str,
) -> Result<(RecordBatch, Vec<DeadLetter>)> {
    let arrow_err = |source| Error::Transform {
        transform: transform.to_string(),
        source,
    };
    let mut keep = vec![true; rows.num_rows()];
    for (i, _) in rejected {
        if let Some(k) = keep.get_mut(*i) {
            *k = false;
        }
    }
    let rejected: Vec<&(usize, String)> = rejected
        .iter()
        .filter(|(i, _)| *i < rows.num_rows())
        .collect();
    let kept = filter_record_batch(&rows, &BooleanArray::from(keep)).map_err(arrow_err)?;
    let schema = rows.schema();
    let payload_columns: Vec<usize> = (0..schema.fields().len())
        .filter(|i| {
            !schema.field(*i).name().starts_with("_kafka_")
                && !schema.field(*i).name().starts_with("_ingest")
        })
        .collect();
    let payload = rows.project(&payload_columns).map_err(arrow_err)?;
    let col = |name: &str| rows.column_by_name(name).cloned();
    let topic = col("_kafka_topic");
    let partition = col("_kafka_partition");
    let offset = col("_kafka_offset");
    let timestamp = col("_kafka_timestamp");
    let key = col("_kafka_key");
    let mut letters = Vec::with_capacity(rejected.len());
    for (i, reason) in rejected {
        let row = payload.slice(*i, 1);
        let mut json = arrow::json::LineDelimitedWriter::new(Vec::new());
        json.write(&row).map_err(arrow_err)?;
        json.finish().map_err(arrow_err)?;
        let mut bytes = json.into_inner();
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        letters.push(DeadLetter {
            topic: topic
                .as_ref()
                .and_then(|c| c.as_string_opt::<i32>().map(|s| s.value(*i).to_string()))
                .unwrap_or_default(),
            partition: partition
                .as_ref()
                .and_then(|c| c.as_primitive_opt::<Int32Type>().map(|a| a.value(*i)))
                .unwrap_or(-1),
            offset: offset
                .as_ref()
                .and_then(|c| c.as_primitive_opt::<Int64Type>().map(|a| a.value(*i)))
                .unwrap_or(-1),
            timestamp_ms: timestamp.as_ref().and_then(|c| {
                let a = c.as_primitive_opt::<TimestampMicrosecondType>()?;
                a.is_valid(*i).then(|| a.value(*i) / 1000)
            }),
            // Raw bytes, or the key's text if an earlier step already pseudonymised it.
            key: key.as_ref().and_then(|c| {
                if let Some(a) = c.as_binary_opt::<i32>() {
                    a.is_valid(*i).then(|| a.value(*i).to_vec())
                } else {
                    let a = c.as_string_opt::<i32>()?;
                    a.is_valid(*i).then(|| a.value(*i).as_bytes().to_vec())
                }
            }),
            payload: Some(bytes),
            stage: Stage::Transform,
            error: format!("{transform}: {reason}"),
        });
    }
    Ok((kept, letters))
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
                    metrics::counter!("sluice_messages_total", "table" => table.clone())
                        .increment(batch.message_count() as u64);
                    metrics::counter!("sluice_source_bytes_total", "table" => table.clone())
                        .increment(batch.source_bytes as u64);
                    protection.apply(&mut batch, &mut plans)?;
                    for d in &batch.dead_letters {
                        metrics::counter!("sluice_dead_letters_total", "table" => table.clone(), "stage" => d.stage.as_str())
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
                metrics::histogram!("sluice_batch_latency_seconds")
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
    metrics::gauge!("sluice_last_commit_timestamp_seconds").set(
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
    use std::sync::{Arc, Mutex};

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

    /// Rejects odd values of `v`, keeps the rest.
    struct RejectOdd;
    impl Transform for RejectOdd {
        fn name(&self) -> &str {
            "reject_odd"
        }
        fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
            match input.field_with_name("v").map(|f| f.data_type().clone()) {
                Ok(arrow::datatypes::DataType::Int64) => Ok(input.clone()),
                _ => Err(Error::TransformSchema {
                    transform: "reject_odd".into(),
                    table: String::new(),
                    reason: "v must be a long".into(),
                }),
            }
        }
        fn reject(&self, batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
            let v = batch
                .column_by_name("v")
                .map(|c| c.as_primitive::<Int64Type>().clone());
            Ok(v.into_iter()
                .flat_map(|v| {
                    v.iter()
                        .enumerate()
                        .filter(|(_, x)| x.is_some_and(|x| x % 2 == 1))
                        .map(|(i, _)| (i, "odd".to_string()))
                        .collect::<Vec<_>>()
                })
                .collect())
        }
        fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
            Ok(batch)
        }
    }

    struct Stamp;
    impl Seal for Stamp {
        fn seal(&self, letter: &mut DeadLetter) {
            letter.payload = Some(b"sealed".to_vec());
        }
    }

    fn rows_batch(values: Vec<i64>) -> SourceBatch {
        use arrow::array::{ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray};
        let n = values.len();
        let rows = RecordBatch::try_from_iter([
            ("v", Arc::new(Int64Array::from(values)) as ArrayRef),
            ("_kafka_topic", Arc::new(StringArray::from(vec!["t"; n]))),
            ("_kafka_partition", Arc::new(Int32Array::from(vec![3; n]))),
            (
                "_kafka_offset",
                Arc::new(Int64Array::from((100..100 + n as i64).collect::<Vec<_>>())),
            ),
            (
                "_kafka_key",
                Arc::new(BinaryArray::from(vec![Some(&b"k"[..]); n])),
            ),
        ])
        .expect("batch");
        SourceBatch {
            table: "t".into(),
            rows: Some(rows),
            offsets: BTreeMap::new(),
            dead_letters: Vec::new(),
            source_bytes: 0,
        }
    }

    /// Table `t` with one `RejectOdd` step on `column`.
    fn reject_odd_on(column: &str, seal: Option<Box<dyn Seal>>) -> Protection {
        Protection {
            chains: HashMap::from([(
                "t".to_string(),
                vec![Step {
                    column: column.into(),
                    transform: Box::new(RejectOdd),
                }],
            )]),
            seal,
        }
    }

    #[test]
    fn rejected_rows_become_sealed_dead_letters_with_their_provenance() {
        let protection = reject_odd_on("v", Some(Box::new(Stamp)));
        let mut b = rows_batch(vec![2, 3, 4, 5]);
        protection
            .apply(&mut b, &mut HashMap::new())
            .expect("apply");
        assert_eq!(b.rows.as_ref().map(|r| r.num_rows()), Some(2));
        assert_eq!(b.dead_letters.len(), 2);
        let d = &b.dead_letters[0];
        assert_eq!((d.topic.as_str(), d.partition, d.offset), ("t", 3, 101));
        assert_eq!(d.stage, Stage::Transform);
        assert_eq!(d.error, "reject_odd: odd");
        assert_eq!(d.payload.as_deref(), Some(&b"sealed"[..]));
        assert_eq!(
            b.message_count(),
            4,
            "every message is a row or a dead letter"
        );
    }

    /// Panics on the value 13, fails (an error) on 7, doubles the rest.
    struct Fragile;
    impl Transform for Fragile {
        fn name(&self) -> &str {
            "fragile"
        }
        fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
            Ok(input.clone())
        }
        fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
            use arrow::array::{ArrayRef, Int64Array};
            let v = batch
                .column_by_name("v")
                .map(|c| c.as_primitive::<Int64Type>().clone())
                .expect("v");
            if v.iter().any(|x| x == Some(7)) {
                return Err(Error::Transform {
                    transform: "fragile".into(),
                    source: arrow::error::ArrowError::ComputeError(
                        "cannot handle \"secret-7\"".into(),
                    ),
                });
            }
            let doubled: Int64Array = v
                .iter()
                .map(|x| {
                    x.map(|x| {
                        assert!(x != 13, "a value that must not reach a log: 13");
                        x * 2
                    })
                })
                .collect();
            let mut columns = batch.columns().to_vec();
            columns[0] = Arc::new(doubled) as ArrayRef;
            Ok(RecordBatch::try_new(batch.schema(), columns).expect("batch"))
        }
    }

    #[test]
    fn a_transform_panicking_or_failing_on_some_rows_dead_letters_only_those() {
        let protection = Protection {
            chains: HashMap::from([(
                "t".to_string(),
                vec![Step {
                    column: "v".into(),
                    transform: Box::new(Fragile),
                }],
            )]),
            seal: None,
        };
        let mut b = rows_batch(vec![1, 13, 2, 7, 3, 4, 13, 5]);
        protection
            .apply(&mut b, &mut HashMap::new())
            .expect("the run goes on");
        let rows = b.rows.as_ref().expect("rows");
        let v: Vec<i64> = rows.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(
            v,
            vec![2, 4, 6, 8, 10],
            "the other rows, in order, transformed"
        );
        let mut dead: Vec<(i64, String)> = b
            .dead_letters
            .iter()
            .map(|d| (d.offset, d.error.clone()))
            .collect();
        dead.sort();
        assert_eq!(
            dead.iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![101, 103, 106],
            "offsets of 13, 7 and 13"
        );
        for (_, e) in &dead {
            assert!(e.starts_with("fragile: "), "{e}");
            assert!(
                !e.contains("13") && !e.contains("secret"),
                "no value in {e}"
            );
        }
        assert!(dead[0].1.contains("internal error"), "{}", dead[0].1);
        assert_eq!(
            b.message_count(),
            8,
            "every message is a row or a dead letter"
        );
    }

    #[test]
    fn a_policy_column_missing_from_an_inferred_schema_waits_but_a_declared_one_fails() {
        let protection = reject_odd_on("absent", None);
        let schema = rows_batch(vec![1]).rows.expect("rows").schema();
        let plan = protection.plan("t", &schema, false).expect("inferred");
        assert_eq!(plan.missing, vec!["absent".to_string()]);
        assert!(plan.steps.is_empty());
        assert!(
            protection.plan("t", &schema, true).is_err(),
            "declared: a config error"
        );
    }
}
