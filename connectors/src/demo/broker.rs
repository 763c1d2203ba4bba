//! An in-process Kafka broker for the demo, the benchmark and the tests: librdkafka's
//! mock cluster, which speaks the real Kafka protocol over TCP on a loopback port.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};

use crate::error::{Result, kafka};

/// A running mock cluster. Dropping it stops the broker.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Start a cluster of `brokers` brokers on loopback.
    pub fn start(brokers: i32) -> Result<Self> {
        let cluster = MockCluster::new(brokers).map_err(kafka("starting the embedded broker"))?;
        Ok(Self { cluster })
    }

    /// `host:port,...` of the brokers.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Create a topic (the mock cluster has no CreateTopics API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.cluster
            .create_topic(name, partitions, 1)
            .map_err(kafka(format!("creating topic {name}")))
    }

    /// Messages the broker has dropped from the start of `topic`'s partitions (it keeps at
    /// most 5 MiB or 100,000 messages per partition): the sum of the low watermarks.
    pub fn evicted(&self, topic: &str, partitions: i32) -> Result<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()
            .map_err(kafka("creating a consumer"))?;
        let mut evicted = 0;
        for p in 0..partitions {
            let (low, _) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(kafka(format!("reading watermarks of {topic}")))?;
            evicted += low;
        }
        Ok(evicted)
    }

    /// Take broker `id` (1-based) down, as in an outage.
    pub fn broker_down(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_down(id)
            .map_err(kafka("stopping a broker"))
    }

    /// Bring broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_up(id)
            .map_err(kafka("starting a broker"))
    }
}

/// A producer to any broker, in the order messages are given (idempotent).
pub struct SimpleProducer {
    producer: BaseProducer,
}

/// One message to produce.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
}

impl SimpleProducer {
    pub fn new(bootstrap_servers: &str) -> Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("batch.num.messages", "10000")
            // Room for the megabyte keys and values the hostile-input tests send.
            .set("message.max.bytes", "4194304")
            .create()
            .map_err(kafka("creating a producer"))?;
        Ok(Self { producer })
    }

    /// Queue one message, waiting while the local queue is full.
    pub fn send(&self, m: &Outgoing<'_>) -> Result<()> {
        self.send_with_headers(m, &[])
    }

    /// [`send`](Self::send) with Kafka headers, `(name, value)` in order (names may
    /// repeat, values may be null).
    pub fn send_with_headers(
        &self,
        m: &Outgoing<'_>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<()> {
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(m.topic);
            if !headers.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(headers.len());
                for (key, value) in headers {
                    h = h.insert(Header { key, value: *value });
                }
                record = record.headers(h);
            }
            if let Some(k) = m.key {
                record = record.key(k);
            }
            if let Some(p) = m.payload {
                record = record.payload(p);
            }
            if let Some(t) = m.timestamp_ms {
                record = record.timestamp(t);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((source, _)) => {
                    return Err(kafka(format!("producing to {}", m.topic))(source));
                }
            }
        }
    }

    /// Wait until every queued message is acknowledged.
    pub fn flush(&self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(120))
            .map_err(kafka("flushing the producer"))
    }
}
