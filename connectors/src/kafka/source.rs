//! The Kafka source: a consumer-group member that decodes messages into Arrow batches.
//!
//! It runs on a thread of its own, polling librdkafka (whose prefetch queue is bounded by
//! `kafka.max_prefetch_bytes`), feeding each message straight into the decoder of its
//! destination table and sending finished batches over a bounded channel; a full channel
//! blocks the thread, which is the pipeline's backpressure.
//!
//! Offsets come from the sink's commits, never from Kafka: when partitions are assigned,
//! the rebalance callback (see [`super::rebalance`]) asks the source's [`Checkpoints`]
//! where each partition resumes and assigns it there. The source never opens a table: in
//! `sluice run` the checkpoints are the Delta tables' (`delta::checkpoints`). Offsets the
//! sink has committed are forwarded to the group afterwards so that standard lag tools
//! see progress.
//!
//! The source builds itself from the configuration ([`KafkaSource::new`]): the consumer
//! from `[kafka]`, the routes and decoders from `[kafka]`, `[bronze]`, `[decode]` and the
//! silver tables reading change events, buffer sizes under
//! `pipeline.memory_budget_bytes`; a [`SourceContext`] brings what a run adds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_pipeline::config::Config;
use sluice_pipeline::config::kafka::OffsetReset;
use sluice_pipeline::health::Health;
use sluice_pipeline::lineage::{HeaderSpec, payload_of};
use sluice_pipeline::panic::guard_known;
use sluice_pipeline::{Checkpoints, SourceControl, SourceEvent, TopicPartition};
use tokio::sync::mpsc;

use super::limit::Limits;
use super::rebalance::RebalanceContext;
use crate::decode::avro::{AvroDecoder, AvroDecoderConfig, AvroSchemas};
use crate::decode::json::{JsonDecoder, JsonDecoderConfig};
use crate::decode::limits::DecodeLimits;
use crate::decode::{RawHeader, RawHeaders, RawMessage, TableDecoder};
use crate::error::{Error, Result, kafka};

/// What a run gives the Kafka source besides the configuration.
pub struct SourceContext {
    /// Where each assigned partition resumes, and the destination tables' schemas.
    pub checkpoints: Arc<dyn Checkpoints>,
    /// Tables whose topics are Avro, with where their writer schemas come from (the
    /// others are JSON).
    pub avro_tables: HashMap<String, AvroSchemas>,
    /// Shared with `/readyz`: assigned partitions, lag, last commit.
    pub health: Arc<Health>,
    /// Stop once every assigned partition is read to its end.
    pub until_caught_up: bool,
}

/// Batches in flight between source and sink.
const CHANNEL_CAPACITY: usize = 4;

/// What the consumer thread works by.
struct Settings {
    /// Topic → destination bronze table.
    routes: BTreeMap<String, String>,
    /// Bronze tables receiving change-event envelopes (Debezium).
    envelope_tables: BTreeSet<String>,
    /// Tables whose topics are Avro, with where their writer schemas come from.
    avro_tables: HashMap<String, AvroSchemas>,
    /// Declared payload schemas by table.
    declared: HashMap<String, SchemaRef>,
    /// The Kafka headers each table captures, for tables that capture some.
    headers: HashMap<String, Arc<HeaderSpec>>,
    /// Limits every message is held to (beyond: a dead letter).
    limits: DecodeLimits,
    schema_evolution: bool,
    decode_batch_max_messages: usize,
    decode_batch_max_latency_ms: u64,
    /// Rate limits of this source.
    max_messages_per_second: Option<u32>,
    max_bytes_per_second: Option<u32>,
    until_caught_up: bool,
}

/// The Kafka source of a pipeline, ready to [`start`](KafkaSource::start).
pub struct KafkaSource {
    /// The consumer's librdkafka settings, secret properties among them (so no `Debug`).
    client: ClientConfig,
    settings: Settings,
    reset: OffsetReset,
    checkpoints: Arc<dyn Checkpoints>,
    health: Arc<Health>,
}

impl KafkaSource {
    /// The source of `config`: a member of `kafka.group_id` reading `kafka.topics`, each
    /// into the bronze table `bronze.routes` names, with the buffers `config.buffer_sizes()`
    /// gives; librdkafka's statistics are on when `metrics.address` is set.
    ///
    /// # Errors
    /// A `kafka.secret_properties` variable that is not set ([`sluice_pipeline::Error::Config`]).
    pub fn new(config: &Config, context: SourceContext) -> sluice_pipeline::Result<Self> {
        let kafka = &config.kafka;
        let sizes = config.buffer_sizes();
        let properties = kafka
            .resolved_properties()
            .map_err(sluice_pipeline::Error::Config)?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &kafka.bootstrap_servers)
            .set("group.id", kafka.group_id(&config.pipeline.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match kafka.auto_offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            )
            .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
            .set(
                "queued.max.messages.kbytes",
                (sizes.prefetch_bytes / 1024).max(1).to_string(),
            )
            .set(
                "fetch.max.bytes",
                sizes.prefetch_bytes.clamp(1024, 52_428_800).to_string(),
            )
            .set("partition.assignment.strategy", "range,roundrobin");
        // librdkafka statistics (lag per partition), only when there is an endpoint to
        // show them.
        if config.metrics.address.is_some() && config.metrics.statistics_interval_ms > 0 {
            client.set(
                "statistics.interval.ms",
                config.metrics.statistics_interval_ms.to_string(),
            );
        }
        for (k, v) in &properties {
            client.set(k, v);
        }
        let routes = config.bronze_tables();
        let declared = routes
            .values()
            .filter_map(|t| config.declared_schema(t).map(|s| (t.clone(), s)))
            .collect();
        let headers = routes
            .values()
            .filter_map(|t| {
                config
                    .bronze
                    .header_spec(t)
                    .map(|h| (t.clone(), Arc::new(h)))
            })
            .collect();
        Ok(Self {
            client,
            settings: Settings {
                routes,
                envelope_tables: config.cdc_bronze_tables(),
                avro_tables: context.avro_tables,
                declared,
                headers,
                limits: DecodeLimits::from_config(&config.decode),
                schema_evolution: config.bronze.schema_evolution,
                decode_batch_max_messages: sizes.decode_batch_max_messages,
                decode_batch_max_latency_ms: kafka.decode_batch_max_latency_ms,
                max_messages_per_second: kafka.max_messages_per_second,
                max_bytes_per_second: kafka.max_bytes_per_second,
                until_caught_up: context.until_caught_up,
            },
            reset: kafka.auto_offset_reset,
            checkpoints: context.checkpoints,
            health: context.health,
        })
    }
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
/// How long one caught-up check may ask the brokers for watermarks.
const CAUGHT_UP_CHECK_BUDGET: Duration = Duration::from_secs(2);

impl KafkaSource {
    /// Start consuming. Returns the event channel for the runner, the control handle and
    /// the thread, which yields its statistics when it ends.
    ///
    /// # Errors
    /// The checkpoints cannot tell a destination table's schema, or librdkafka refuses
    /// the consumer or its subscription.
    pub fn start(
        self,
        stop: Arc<AtomicBool>,
    ) -> Result<(
        mpsc::Receiver<SourceEvent>,
        KafkaControl,
        std::thread::JoinHandle<Result<SourceStats>>,
    )> {
        let Self {
            client,
            settings,
            reset,
            checkpoints,
            health,
        } = self;
        let mut initial: HashMap<String, Option<SchemaRef>> = HashMap::new();
        for table_name in settings.routes.values() {
            if initial.contains_key(table_name) {
                continue;
            }
            // The table's own schema wins over the declared one: it may have evolved.
            let schema = match checkpoints.table_schema(table_name)? {
                Some(t) => Some(payload_of(t.as_ref())),
                None => settings.declared.get(table_name).cloned(),
            };
            initial.insert(table_name.clone(), schema);
        }

        let ctx = RebalanceContext::new(checkpoints, reset, health.clone());
        let consumer: BaseConsumer<RebalanceContext> = client
            .create_with_context(ctx)
            .map_err(kafka("creating the consumer"))?;
        let topics: Vec<&str> = settings.routes.keys().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(kafka("subscribing"))?;

        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (ctl_tx, ctl_rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sluice-kafka".into())
            .spawn(move || {
                let mut state = WorkerState {
                    settings,
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
                state.stats.rebalances = consumer.context().rebalances();
                // Keep forwarding the sink's commits until the runner drops its control
                // handle.
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
}

/// The consumer thread's state; the consumer itself is kept apart so that a message
/// borrowed from it can be decoded into this state.
struct WorkerState {
    settings: Settings,
    tx: mpsc::Sender<SourceEvent>,
    /// Decoder per table, with the time its oldest buffered message arrived.
    decoders: HashMap<String, (TableDecoder, Option<Instant>)>,
    /// Next offset to read per partition, from the messages seen.
    /// (A few entries: scanned, so no key is allocated per message.)
    positions: Vec<(TopicPartition, i64)>,
    stats: SourceStats,
}

fn apply(consumer: &BaseConsumer<RebalanceContext>, cmd: Command, mode: CommitMode) {
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

fn run(
    consumer: &BaseConsumer<RebalanceContext>,
    state: &mut WorkerState,
    stop: &AtomicBool,
    ctl: &std_mpsc::Receiver<Command>,
) -> Result<()> {
    let latency = Duration::from_millis(state.settings.decode_batch_max_latency_ms);
    let mut last_caught_up_check = Instant::now();
    // Since when every poll has come back empty (reset by a message or a rebalance).
    // Time spent blocked on a full channel does not count: that is not quiet.
    let mut idle_since: Option<Instant> = None;
    let mut rebalances = 0;
    let mut assigned_once = false;
    let limits = Limits::new(
        state.settings.max_messages_per_second,
        state.settings.max_bytes_per_second,
        state.settings.limits.max_message_bytes,
    );
    let mut throttled = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(cmd) = ctl.try_recv() {
            apply(consumer, cmd, CommitMode::Async);
        }
        let polled = consumer.poll(Duration::from_millis(50));
        // A revocation served inside this poll goes downstream before the polled message.
        let revoked = consumer.context().take_revoked();
        if !revoked.is_empty() {
            state.revoke(revoked)?;
        }
        if let Some(e) = consumer.context().failure() {
            return Err(e);
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
                        metrics::gauge!(sluice_pipeline::metrics::THROTTLED_SECONDS)
                            .set(throttled.as_secs_f64());
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
        let seen = consumer.context().rebalances();
        if seen != rebalances {
            rebalances = seen;
            idle_since = None;
        }
        let quiet = idle_since.map_or(Duration::ZERO, |t| now.duration_since(t));
        if state.settings.until_caught_up
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

/// Every header of a message, in order. rdkafka's accessor panics on a header name that
/// is not UTF-8, which any producer can send (and this crate forbids the `unsafe` a byte
/// reader would need): the panic is contained here and the headers are `None`
/// (unreadable), which makes the message a dead letter.
fn read_headers<H: Headers>(h: &H) -> Option<Vec<RawHeader<'_>>> {
    guard_known(|| h.iter().map(|h| (h.key, h.value)).collect()).ok()
}

impl WorkerState {
    fn new_decoder(&self, table_name: &str, schema: Option<SchemaRef>) -> TableDecoder {
        let mut d = self.decoder_of(table_name, schema);
        if let Some(spec) = self.settings.headers.get(table_name) {
            d.capture_headers(spec.clone());
        }
        d
    }

    fn decoder_of(&self, table_name: &str, schema: Option<SchemaRef>) -> TableDecoder {
        if let Some(schemas) = self.settings.avro_tables.get(table_name) {
            return TableDecoder::Avro(AvroDecoder::new(
                AvroDecoderConfig {
                    table: table_name.to_string(),
                    limits: self.settings.limits,
                    envelope: self.settings.envelope_tables.contains(table_name),
                    max_messages: self.settings.decode_batch_max_messages,
                    schemas: schemas.clone(),
                },
                schema,
            ));
        }
        TableDecoder::Json(JsonDecoder::new(
            JsonDecoderConfig {
                table: table_name.to_string(),
                limits: self.settings.limits,
                schema_evolution: self.settings.schema_evolution,
                max_messages: self.settings.decode_batch_max_messages,
                envelope: self.settings.envelope_tables.contains(table_name),
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
        let Some(table_name) = self.settings.routes.get(topic) else {
            return Ok(());
        };
        let read;
        // Headers are parsed (and copied by librdkafka) only for tables that capture some.
        let headers = if !self.settings.headers.contains_key(table_name) {
            RawHeaders::NotRead
        } else {
            match m.headers() {
                None => RawHeaders::Read(&[]),
                Some(h) => match read_headers(h) {
                    Some(list) => {
                        read = list;
                        RawHeaders::Read(&read)
                    }
                    None => RawHeaders::Unreadable,
                },
            }
        };
        let raw = RawMessage {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key(),
            payload: m.payload(),
            headers,
        };
        let full = match self.decoders.get_mut(table_name) {
            Some((d, since)) => {
                d.push(&raw);
                since.get_or_insert_with(Instant::now);
                d.len() >= self.settings.decode_batch_max_messages
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
            return Err(Error::SinkStopped);
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
            return Err(Error::SinkStopped);
        }
        Ok(())
    }

    fn caught_up(
        &self,
        consumer: &BaseConsumer<RebalanceContext>,
        assigned: &BTreeMap<TopicPartition, Offset>,
    ) -> bool {
        // One broker round trip per partition: with hundreds of partitions the check
        // would block for minutes. Past its budget it says "not known yet", and the
        // silence rule ends the run instead.
        let deadline = Instant::now() + CAUGHT_UP_CHECK_BUDGET;
        assigned.iter().all(|(tp, start)| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let Ok((low, high)) = consumer.fetch_watermarks(&tp.topic, tp.partition, left) else {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use arrow::datatypes::{DataType, Field, Schema};

    /// Headers as rdkafka serves them: its accessor unwraps the UTF-8 check of a name.
    struct FakeHeaders(Vec<(Vec<u8>, Option<Vec<u8>>)>);

    impl Headers for FakeHeaders {
        fn count(&self) -> usize {
            self.0.len()
        }

        fn try_get(&self, idx: usize) -> Option<rdkafka::message::Header<'_, &[u8]>> {
            let (name, value) = self.0.get(idx)?;
            Some(rdkafka::message::Header {
                key: std::str::from_utf8(name).expect("what rdkafka does: unwrap"),
                value: value.as_deref(),
            })
        }
    }

    #[test]
    fn a_header_name_that_is_not_utf8_makes_the_headers_unreadable_not_a_panic() {
        let good = FakeHeaders(vec![
            (b"traceparent".to_vec(), Some(b"00-1".to_vec())),
            ("名前".as_bytes().to_vec(), None),
            (b"traceparent".to_vec(), Some(vec![0xff])),
        ]);
        let read = read_headers(&good).expect("readable");
        assert_eq!(
            read,
            vec![
                ("traceparent", Some(&b"00-1"[..])),
                ("名前", None),
                ("traceparent", Some(&[0xff][..])),
            ],
            "every header, in order, repeats and nulls kept"
        );
        let bad = FakeHeaders(vec![
            (b"ok".to_vec(), Some(b"1".to_vec())),
            (vec![0xc3, 0x28], Some(b"v".to_vec())),
        ]);
        assert_eq!(read_headers(&bad), None);
    }
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use sluice_pipeline::Resume;

    use super::*;
    use crate::demo::broker::EmbeddedBroker;

    /// What a sink committed, held in memory: where each partition resumes and the
    /// destination tables' schemas, with the partitions the source asked about.
    struct MemoryCheckpoints {
        resume: BTreeMap<TopicPartition, Resume>,
        schemas: HashMap<String, SchemaRef>,
        asked: Mutex<BTreeSet<TopicPartition>>,
    }

    impl Checkpoints for MemoryCheckpoints {
        fn resume(
            &self,
            partitions: &[TopicPartition],
        ) -> sluice_pipeline::Result<BTreeMap<TopicPartition, Resume>> {
            self.asked
                .lock()
                .expect("the lock")
                .extend(partitions.iter().cloned());
            Ok(partitions
                .iter()
                .filter_map(|tp| self.resume.get(tp).map(|r| (tp.clone(), *r)))
                .collect())
        }

        fn table_schema(&self, table: &str) -> sluice_pipeline::Result<Option<SchemaRef>> {
            Ok(self.schemas.get(table).cloned())
        }
    }

    const TOPIC: &str = "resume-test";

    /// Ten messages `{"n": 0}` … `{"n": 9}` at offsets 0 to 9 of each of `partitions`.
    fn produce(bootstrap_servers: &str, partitions: i32) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .create()
            .expect("a producer");
        for p in 0..partitions {
            for n in 0..10 {
                let payload = format!("{{\"n\": {n}}}");
                producer
                    .send(
                        BaseRecord::<'_, [u8], [u8]>::to(TOPIC)
                            .partition(p)
                            .payload(payload.as_bytes()),
                    )
                    .map_err(|(e, _)| e)
                    .expect("queued");
            }
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("every message acknowledged");
    }

    /// The source resumes every partition where its checkpoints say, with no table
    /// anywhere: after the committed offset, from the beginning, or (a partition no table
    /// has read) where `auto_offset_reset` says; decoders start from the table's schema.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resumes_each_partition_from_its_checkpoint() {
        let broker = EmbeddedBroker::start(1).expect("a mock cluster");
        broker.create_topic(TOPIC, 4).expect("the topic");
        produce(&broker.bootstrap_servers(), 4);
        let config = Config::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ntopics = [\"{TOPIC}\"]\n\
             auto_offset_reset = \"latest\"\nsession_timeout_ms = 6000\n\
             decode_batch_max_latency_ms = 50\n\
             [bronze.routes]\n\"{TOPIC}\" = \"events\"\n\
             [bronze.tables.events]\nschema = [{{name = \"n\", type = \"string\"}}]\n",
            broker.bootstrap_servers()
        ))
        .expect("a valid config");
        let tp = |p| TopicPartition::new(TOPIC, p);
        // The table has evolved past its declared schema: `n` is a long now, and `note`
        // came later. Its lineage columns are the table's, not the payload's.
        let table = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("_kafka_offset", DataType::Int64, true),
        ]));
        let checkpoints = Arc::new(MemoryCheckpoints {
            resume: BTreeMap::from([
                (tp(0), Resume::After(4)),
                (tp(1), Resume::Beginning),
                // Partition 2 has no checkpoint: `latest`, nothing old is read.
                (tp(3), Resume::After(9)),
            ]),
            schemas: HashMap::from([("events".to_string(), table)]),
            asked: Mutex::new(BTreeSet::new()),
        });
        let source = KafkaSource::new(
            &config,
            SourceContext {
                checkpoints: checkpoints.clone(),
                avro_tables: HashMap::new(),
                health: Arc::new(Health::new()),
                until_caught_up: true,
            },
        )
        .expect("the source");
        let (mut events, control, thread) = source
            .start(Arc::new(AtomicBool::new(false)))
            .expect("started");

        let mut read: BTreeMap<TopicPartition, BTreeSet<i64>> = BTreeMap::new();
        let mut rows = 0;
        let collect = async {
            while let Some(event) = events.recv().await {
                let SourceEvent::Batch(batch) = event else {
                    continue;
                };
                assert_eq!(batch.table, "events");
                assert!(batch.dead_letters.is_empty(), "{:?}", batch.dead_letters);
                let got = batch.rows.expect("rows");
                let schema = got.schema();
                assert_eq!(
                    schema.field_with_name("n").expect("n").data_type(),
                    &DataType::Int64,
                    "the table's schema wins over the declared one"
                );
                assert!(schema.field_with_name("note").is_ok(), "{schema:?}");
                rows += got.num_rows();
                for (tp, r) in batch.offsets {
                    read.entry(tp).or_default().extend(r.first..=r.last);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), collect)
            .await
            .expect("caught up within a minute");
        drop(control);
        let stats = tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("joined")
            .expect("no panic")
            .expect("the source ended cleanly");

        assert_eq!(
            read,
            BTreeMap::from([(tp(0), (5..=9).collect()), (tp(1), (0..=9).collect())])
        );
        assert_eq!(rows, 15);
        assert_eq!(
            *checkpoints.asked.lock().expect("the lock"),
            (0..4).map(tp).collect::<BTreeSet<_>>(),
            "every assigned partition is looked up"
        );
        assert!(stats.rebalances >= 1);
    }

    /// Checkpoints that cannot be read at assignment end the run with their error, and
    /// nothing is read: a partition started at a guessed offset would lose or double rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreadable_checkpoints_at_assignment_end_the_run_before_anything_is_read() {
        struct Unreadable;
        impl Checkpoints for Unreadable {
            fn resume(
                &self,
                _: &[TopicPartition],
            ) -> sluice_pipeline::Result<BTreeMap<TopicPartition, Resume>> {
                Err(sluice_pipeline::Error::Checkpoints(
                    "the table's log does not read".into(),
                ))
            }

            fn table_schema(&self, _: &str) -> sluice_pipeline::Result<Option<SchemaRef>> {
                Ok(None)
            }
        }
        let broker = EmbeddedBroker::start(1).expect("a mock cluster");
        broker.create_topic(TOPIC, 2).expect("the topic");
        produce(&broker.bootstrap_servers(), 2);
        let config = Config::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ntopics = [\"{TOPIC}\"]\n\
             auto_offset_reset = \"earliest\"\nsession_timeout_ms = 6000\n\
             decode_batch_max_latency_ms = 50\n\
             [bronze.routes]\n\"{TOPIC}\" = \"events\"\n",
            broker.bootstrap_servers()
        ))
        .expect("a valid config");
        let source = KafkaSource::new(
            &config,
            SourceContext {
                checkpoints: Arc::new(Unreadable),
                avro_tables: HashMap::new(),
                health: Arc::new(Health::new()),
                until_caught_up: true,
            },
        )
        .expect("the source");
        let (mut events, control, thread) = source
            .start(Arc::new(AtomicBool::new(false)))
            .expect("started");
        let mut batches = 0;
        let collect = async {
            while let Some(event) = events.recv().await {
                if let SourceEvent::Batch(_) = event {
                    batches += 1;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), collect)
            .await
            .expect("the source ended within a minute");
        drop(control);
        let ended = tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("joined")
            .expect("no panic");
        let error = ended.expect_err("the run ends");
        assert!(matches!(error, Error::Resume { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("reading the resume offsets") && text.contains("does not read"),
            "{text}"
        );
        assert_eq!(batches, 0, "nothing is read from a guessed offset");
    }
}
