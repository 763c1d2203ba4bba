//! The Kafka source: a consumer-group member that decodes messages into Arrow batches.
//!
//! It runs on a thread of its own, polling librdkafka (whose prefetch queue is bounded by
//! `kafka.max_prefetch_bytes`), feeding each message straight into the decoder of its
//! destination table and sending finished batches over a bounded channel; a full channel
//! blocks the thread, which is the pipeline's backpressure.
//!
//! Offsets come from Delta, never from Kafka: when partitions are assigned, the rebalance
//! callback reads each partition's last committed offset from its bronze table and assigns
//! the partition at the next one. Offsets the sink has committed are forwarded to the
//! group afterwards so that standard lag tools see progress.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, error::KafkaError};
use sluice_pipeline::config::kafka::OffsetReset;
use sluice_pipeline::health::Health;
use sluice_pipeline::lake::Lake;
use sluice_pipeline::{SourceControl, SourceEvent, TopicPartition};
use tokio::sync::mpsc;

use super::limit::Limits;
use crate::decode::avro::{AvroDecoder, AvroDecoderConfig, AvroSchemas};
use crate::decode::json::{JsonDecoder, JsonDecoderConfig, payload_of};
use crate::decode::limits::DecodeLimits;
use crate::decode::{RawMessage, TableDecoder};
use crate::delta::{bronze, table};
use crate::error::{Error, Result, kafka};

/// Settings of the Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    /// Topic → destination bronze table.
    pub routes: BTreeMap<String, String>,
    /// Topic → further tables (lake-relative, e.g. `silver/customers`) that hold offsets of
    /// its partitions: a partition resumes after the lowest offset of all of them.
    pub resume_tables: BTreeMap<String, Vec<String>>,
    /// Bronze tables receiving change-event envelopes (Debezium).
    pub envelope_tables: std::collections::BTreeSet<String>,
    /// Tables whose topics are Avro, with where their writer schemas come from (the
    /// others are JSON).
    pub avro_tables: HashMap<String, AvroSchemas>,
    pub auto_offset_reset: OffsetReset,
    pub max_prefetch_bytes: u64,
    pub session_timeout_ms: u64,
    pub decode_batch_max_messages: usize,
    pub decode_batch_max_latency_ms: u64,
    pub properties: BTreeMap<String, String>,
    pub pipeline: String,
    pub lake: Lake,
    /// Declared payload schemas by table.
    pub declared: HashMap<String, SchemaRef>,
    /// Limits every message is held to (beyond: a dead letter).
    pub limits: DecodeLimits,
    pub schema_evolution: bool,
    /// Stop once every assigned partition is read to its end.
    pub until_caught_up: bool,
    /// Batches in flight between source and sink.
    pub channel_capacity: usize,
    /// Shared with `/readyz`: assigned partitions, lag, last commit.
    pub health: Arc<Health>,
    /// librdkafka statistics (lag per partition) every this many ms; 0: off.
    pub statistics_interval_ms: u64,
    /// Rate limits of this source.
    pub max_messages_per_second: Option<u32>,
    pub max_bytes_per_second: Option<u32>,
}

/// What the source did, reported when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceStats {
    /// Partition assignments and revocations seen. (Messages and bytes are counted by the
    /// runner, which sees every batch.)
    pub rebalances: u64,
}

enum Command {
    Commit(Vec<(TopicPartition, i64)>),
    Seek(TopicPartition, i64),
}

/// The runner's handle on the source: forwards commits and seeks to the consumer thread.
/// Dropping it tells the source thread the runner is done.
pub struct KafkaControl {
    tx: std_mpsc::Sender<Command>,
    health: Arc<Health>,
}

impl SourceControl for KafkaControl {
    fn committed(&self, offsets: &[(TopicPartition, i64)]) {
        self.health.committed();
        let _ = self.tx.send(Command::Commit(offsets.to_vec()));
    }
    fn seek(&self, partition: &TopicPartition, offset: i64) {
        let _ = self.tx.send(Command::Seek(partition.clone(), offset));
    }
}

/// With `until_caught_up`: no message for this long, and the watermarks agree.
const CAUGHT_UP_QUIET: Duration = Duration::from_millis(500);
/// With `until_caught_up`: no message for this long, whatever the watermarks say.
const CAUGHT_UP_SILENCE: Duration = Duration::from_secs(5);

struct Ctx {
    handle: tokio::runtime::Handle,
    lake: Lake,
    pipeline: String,
    routes: BTreeMap<String, String>,
    resume_tables: BTreeMap<String, Vec<String>>,
    reset: OffsetReset,
    /// Assigned partitions and the offset each was assigned at.
    assigned: Mutex<BTreeMap<TopicPartition, Offset>>,
    revoked: Mutex<Vec<TopicPartition>>,
    failure: Mutex<Option<String>>,
    rebalances: std::sync::atomic::AtomicU64,
    health: Arc<Health>,
}

impl ClientContext for Ctx {
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
                    "sluice_consumer_lag_messages",
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

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_rebalances_total").increment(1);
        let parts: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.handle.block_on(self.resume_offsets(&parts)) {
                    Ok(offsets) => {
                        let mut starts = Vec::new();
                        for tp in &parts {
                            let offset = match offsets.get(tp) {
                                // A table fed by the partition holds nothing yet, while
                                // another does: that one needs the whole backlog.
                                Some(v) if *v < 0 => Offset::Beginning,
                                Some(v) => Offset::Offset(v + 1),
                                None if self.reset == OffsetReset::Latest => Offset::End,
                                None => Offset::Beginning,
                            };
                            let _ = tpl.set_partition_offset(&tp.topic, tp.partition, offset);
                            starts.push((tp.clone(), offset));
                        }
                        tracing::info!(
                            partitions = parts.len(),
                            from_delta = offsets.len(),
                            "partitions assigned"
                        );
                        if let Err(e) = consumer.assign(tpl) {
                            self.fail(format!("assigning partitions: {e}"));
                        }
                        if let Ok(mut a) = self.assigned.lock() {
                            a.extend(starts);
                            self.set_assigned(a.len());
                        }
                    }
                    Err(e) => self.fail(format!("reading offsets from Delta at assignment: {e}")),
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
                        "sluice_consumer_lag_messages",
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

impl Ctx {
    fn set_assigned(&self, n: usize) {
        self.health
            .assigned_partitions
            .store(n as u64, Ordering::Relaxed);
        metrics::gauge!("sluice_assigned_partitions").set(n as f64);
    }

    /// The partitions assigned now, with the offsets they were assigned at.
    fn assignment(&self) -> BTreeMap<TopicPartition, Offset> {
        self.assigned.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Whether any partition is assigned, without copying the assignment.
    fn has_assignment(&self) -> bool {
        self.assigned.lock().is_ok_and(|a| !a.is_empty())
    }

    fn fail(&self, msg: String) {
        tracing::error!("{msg}");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(msg);
        }
    }

    async fn resume_offsets(
        &self,
        parts: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let mut by_table: BTreeMap<&str, Vec<&TopicPartition>> = BTreeMap::new();
        for tp in parts {
            if let Some(t) = self.routes.get(&tp.topic) {
                by_table.entry(t.as_str()).or_default().push(tp);
            }
        }
        let mut out = BTreeMap::new();
        for (name, tps) in by_table {
            if let Some(t) = bronze::open_for_offsets(&self.lake, name).await? {
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

/// Start consuming. Returns the event channel for the runner, the control handle and the
/// thread, which yields its statistics when it ends.
pub fn start(
    config: KafkaSourceConfig,
    stop: Arc<AtomicBool>,
) -> Result<(
    mpsc::Receiver<SourceEvent>,
    KafkaControl,
    std::thread::JoinHandle<Result<SourceStats>>,
)> {
    let handle = tokio::runtime::Handle::current();
    let mut initial: HashMap<String, Option<SchemaRef>> = HashMap::new();
    for table_name in config.routes.values() {
        if initial.contains_key(table_name) {
            continue;
        }
        // The table's own schema wins over the declared one: it may have evolved.
        let existing = tokio::task::block_in_place(|| {
            handle.block_on(bronze::open_for_offsets(&config.lake, table_name))
        })?;
        let schema = match existing {
            Some(t) => Some(payload_of(table::arrow_schema(table_name, &t)?.as_ref())),
            None => config.declared.get(table_name).cloned(),
        };
        initial.insert(table_name.clone(), schema);
    }

    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match config.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "queued.max.messages.kbytes",
            (config.max_prefetch_bytes / 1024).max(1).to_string(),
        )
        .set(
            "fetch.max.bytes",
            config
                .max_prefetch_bytes
                .clamp(1024, 52_428_800)
                .to_string(),
        )
        .set("partition.assignment.strategy", "range,roundrobin");
    if config.statistics_interval_ms > 0 {
        client.set(
            "statistics.interval.ms",
            config.statistics_interval_ms.to_string(),
        );
    }
    for (k, v) in &config.properties {
        client.set(k, v);
    }
    let ctx = Ctx {
        handle: handle.clone(),
        lake: config.lake.clone(),
        pipeline: config.pipeline.clone(),
        routes: config.routes.clone(),
        resume_tables: config.resume_tables.clone(),
        reset: config.auto_offset_reset,
        assigned: Mutex::new(BTreeMap::new()),
        revoked: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        rebalances: Default::default(),
        health: config.health.clone(),
    };
    let health = config.health.clone();
    let consumer: BaseConsumer<Ctx> = client
        .create_with_context(ctx)
        .map_err(kafka("creating the consumer"))?;
    let topics: Vec<&str> = config.routes.keys().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(kafka("subscribing"))?;

    let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
    let (ctl_tx, ctl_rx) = std_mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("sluice-kafka".into())
        .spawn(move || {
            let mut state = WorkerState {
                config,
                tx,
                decoders: HashMap::new(),
                positions: Vec::new(),
                stats: SourceStats::default(),
            };
            for (table_name, schema) in initial {
                let d = state.new_decoder(&table_name, schema);
                state.decoders.insert(table_name, (d, None));
            }
            let result = run(&consumer, &mut state, &stop, &ctl_rx);
            state.stats.rebalances = consumer.context().rebalances.load(Ordering::Relaxed);
            // Keep forwarding the sink's commits until the runner drops its control handle.
            let WorkerState { tx, stats, .. } = state;
            drop(tx);
            while let Ok(cmd) = ctl_rx.recv() {
                // The consumer no longer polls: commit synchronously so the group sees
                // the final offsets before the consumer leaves it.
                apply(&consumer, cmd, CommitMode::Sync);
            }
            result.map(|()| stats)
        })
        .map_err(|source| Error::Io {
            context: "starting the consumer thread".into(),
            source,
        })?;
    Ok((rx, KafkaControl { tx: ctl_tx, health }, thread))
}

/// The consumer thread's state; the consumer itself is kept apart so that a message
/// borrowed from it can be decoded into this state.
struct WorkerState {
    config: KafkaSourceConfig,
    tx: mpsc::Sender<SourceEvent>,
    /// Decoder per table, with the time its oldest buffered message arrived.
    decoders: HashMap<String, (TableDecoder, Option<Instant>)>,
    /// Next offset to read per partition, from the messages seen.
    /// (A few entries: scanned, so no key is allocated per message.)
    positions: Vec<(TopicPartition, i64)>,
    stats: SourceStats,
}

fn apply(consumer: &BaseConsumer<Ctx>, cmd: Command, mode: CommitMode) {
    match cmd {
        Command::Commit(offsets) => {
            let assigned = consumer.context().assignment();
            let mut tpl = TopicPartitionList::new();
            for (tp, next) in offsets.iter().filter(|(tp, _)| assigned.contains_key(tp)) {
                let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next));
            }
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, mode)
            {
                tracing::debug!(error = %e, "offset commit to the group failed (lag reporting only)");
            }
        }
        Command::Seek(tp, offset) => {
            if let Err(e) = consumer.seek(
                &tp.topic,
                tp.partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::debug!(partition = %tp, error = %e, "seek after fencing failed; stale rows are dropped by the sink");
            }
        }
    }
}

fn take_revoked(consumer: &BaseConsumer<Ctx>) -> Vec<TopicPartition> {
    match consumer.context().revoked.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(_) => Vec::new(),
    }
}

fn run(
    consumer: &BaseConsumer<Ctx>,
    state: &mut WorkerState,
    stop: &AtomicBool,
    ctl: &std_mpsc::Receiver<Command>,
) -> Result<()> {
    let latency = Duration::from_millis(state.config.decode_batch_max_latency_ms);
    let mut last_caught_up_check = Instant::now();
    // Since when every poll has come back empty (reset by a message or a rebalance).
    // Time spent blocked on a full channel does not count: that is not quiet.
    let mut idle_since: Option<Instant> = None;
    let mut rebalances = 0;
    let mut assigned_once = false;
    let limits = Limits::new(
        state.config.max_messages_per_second,
        state.config.max_bytes_per_second,
        state.config.limits.max_message_bytes,
    );
    let mut throttled = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(cmd) = ctl.try_recv() {
            apply(consumer, cmd, CommitMode::Async);
        }
        let polled = consumer.poll(Duration::from_millis(50));
        // A revocation served inside this poll goes downstream before the polled message.
        let revoked = take_revoked(consumer);
        if !revoked.is_empty() {
            state.revoke(revoked)?;
        }
        if let Some(f) = consumer
            .context()
            .failure
            .lock()
            .ok()
            .and_then(|f| f.clone())
        {
            return Err(Error::Decode(f));
        }
        // `idle`: nothing to decode now, so buffered messages may be flushed. Only an empty
        // poll is quiet; an error (a broker outage) is not a sign of being caught up.
        let (idle, quiet_poll) = match polled {
            None => (true, true),
            Some(Ok(m)) => {
                if limits.is_active() {
                    let waited = limits.wait(m.payload_len(), stop);
                    if !waited.is_zero() {
                        throttled += waited;
                        // Time spent waiting for the rate limits since the start.
                        metrics::gauge!("sluice_throttled_seconds").set(throttled.as_secs_f64());
                    }
                }
                state.on_message(&m)?;
                (false, false)
            }
            Some(Err(KafkaError::PartitionEOF(_))) => (true, true),
            Some(Err(e)) => {
                // Broker outages and the like: librdkafka reconnects by itself.
                tracing::warn!(error = %e, "consumer error; retrying");
                (true, false)
            }
        };
        let now = Instant::now();
        if quiet_poll {
            idle_since.get_or_insert(now);
        } else {
            idle_since = None;
        }
        state.flush_due(idle, latency, now)?;
        // Checked once per poll: look under the lock, copy only for a caught-up check.
        let has_assignment = consumer.context().has_assignment();
        assigned_once |= has_assignment;
        let seen = consumer.context().rebalances.load(Ordering::Relaxed);
        if seen != rebalances {
            rebalances = seen;
            idle_since = None;
        }
        let quiet = idle_since.map_or(Duration::ZERO, |t| now.duration_since(t));
        if state.config.until_caught_up
            && idle
            && assigned_once
            && has_assignment
            && quiet >= CAUGHT_UP_QUIET
            && now.duration_since(last_caught_up_check) >= Duration::from_millis(300)
        {
            last_caught_up_check = now;
            // Watermarks first; some brokers report wrong ones, so a long enough silence
            // with partitions assigned counts as caught up too.
            let assigned = consumer.context().assignment();
            if quiet >= CAUGHT_UP_SILENCE || state.caught_up(consumer, &assigned) {
                tracing::info!("caught up with every assigned partition");
                break;
            }
        }
    }
    state.flush_all()
}

impl WorkerState {
    fn new_decoder(&self, table_name: &str, schema: Option<SchemaRef>) -> TableDecoder {
        if let Some(schemas) = self.config.avro_tables.get(table_name) {
            return TableDecoder::Avro(AvroDecoder::new(
                AvroDecoderConfig {
                    table: table_name.to_string(),
                    limits: self.config.limits,
                    envelope: self.config.envelope_tables.contains(table_name),
                    max_messages: self.config.decode_batch_max_messages,
                    schemas: schemas.clone(),
                },
                schema,
            ));
        }
        TableDecoder::Json(JsonDecoder::new(
            JsonDecoderConfig {
                table: table_name.to_string(),
                limits: self.config.limits,
                schema_evolution: self.config.schema_evolution,
                max_messages: self.config.decode_batch_max_messages,
                envelope: self.config.envelope_tables.contains(table_name),
            },
            schema,
        ))
    }

    fn on_message<M: Message>(&mut self, m: &M) -> Result<()> {
        // `topic()` checks the name's UTF-8 on every call: once per message is enough.
        let topic = m.topic();
        let next = m.offset() + 1;
        match self
            .positions
            .iter_mut()
            .find(|(tp, _)| tp.partition == m.partition() && tp.topic == topic)
        {
            Some((_, p)) => *p = next,
            None => self
                .positions
                .push((TopicPartition::new(topic, m.partition()), next)),
        }
        let Some(table_name) = self.config.routes.get(topic) else {
            return Ok(());
        };
        let raw = RawMessage {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key(),
            payload: m.payload(),
        };
        let full = match self.decoders.get_mut(table_name) {
            Some((d, since)) => {
                d.push(&raw);
                since.get_or_insert_with(Instant::now);
                d.len() >= self.config.decode_batch_max_messages
            }
            None => false,
        };
        if full {
            let name = table_name.clone();
            self.flush_table(&name)?;
        }
        Ok(())
    }

    fn flush_due(&mut self, idle: bool, latency: Duration, now: Instant) -> Result<()> {
        let due: Vec<String> = self
            .decoders
            .iter()
            .filter(|(_, (d, since))| {
                !d.is_empty() && (idle || since.is_some_and(|t| now.duration_since(t) >= latency))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for name in due {
            self.flush_table(&name)?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.decoders.keys().cloned().collect();
        for name in names {
            self.flush_table(&name)?;
        }
        Ok(())
    }

    fn flush_table(&mut self, name: &str) -> Result<()> {
        let Some((d, since)) = self.decoders.get_mut(name) else {
            return Ok(());
        };
        *since = None;
        if let Some(batch) = d.finish()?
            && self.tx.blocking_send(SourceEvent::Batch(batch)).is_err()
        {
            return Err(Error::Decode("the sink stopped".into()));
        }
        Ok(())
    }

    /// Send what was decoded before a revocation, then the revocation itself.
    fn revoke(&mut self, revoked: Vec<TopicPartition>) -> Result<()> {
        self.flush_all()?;
        for tp in &revoked {
            self.positions.retain(|(p, _)| p != tp);
        }
        if self
            .tx
            .blocking_send(SourceEvent::Revoked(revoked))
            .is_err()
        {
            return Err(Error::Decode("the sink stopped".into()));
        }
        Ok(())
    }

    fn caught_up(
        &self,
        consumer: &BaseConsumer<Ctx>,
        assigned: &BTreeMap<TopicPartition, Offset>,
    ) -> bool {
        assigned.iter().all(|(tp, start)| {
            let Ok((low, high)) =
                consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(2))
            else {
                return false;
            };
            let seen = self.positions.iter().find(|(p, _)| p == tp).map(|(_, o)| o);
            let position = match (seen, start) {
                (Some(p), _) => *p,
                (None, Offset::Offset(o)) => *o,
                (None, Offset::End) => high,
                (None, _) => low,
            };
            tracing::debug!(partition = %tp, position, low, high, "caught-up check");
            position >= high
        })
    }
}
