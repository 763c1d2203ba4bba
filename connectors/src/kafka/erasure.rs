//! Kafka for `sluice job erase`: erasure requests read from a topic (committed only once
//! their certificates are written; a batch can be read again by its offsets, so a run
//! stopped midway is finished with the same requests), and tombstones for an erased
//! subject's keys on compacted topics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};

/// How to reach the cluster: `kafka.bootstrap_servers` and the resolved properties.
#[derive(Debug, Clone)]
pub struct KafkaClient {
    pub bootstrap_servers: String,
    /// `kafka.properties` with `kafka.secret_properties` resolved (never logged).
    pub properties: BTreeMap<String, String>,
}

impl KafkaClient {
    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn kafka(context: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> Error + '_ {
    move |e| Error::Kafka {
        context: context.to_string(),
        source: Box::new(e),
    }
}

/// One message of the requests topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureRequest {
    pub partition: i32,
    pub offset: i64,
    /// The subject, or why the message is not a request.
    pub subject: std::result::Result<String, String>,
    /// `request_id` of a JSON request; otherwise `<topic>-<partition>-<offset>`.
    pub request_id: String,
}

/// Read a request body: a bare identifier, or `{"subject": "…", "request_id": "…"}`.
pub fn parse_request(body: Option<&[u8]>) -> std::result::Result<(String, Option<String>), String> {
    let body = body.ok_or("an empty message (a tombstone) is not a request")?;
    let text = std::str::from_utf8(body).map_err(|_| "the request is not UTF-8 text")?;
    let text = text.trim();
    if text.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let subject = v
            .get("subject")
            .and_then(|s| s.as_str())
            .filter(|s| !s.trim().is_empty())
            .ok_or("a JSON request needs a non-empty string \"subject\"")?;
        let id = v
            .get("request_id")
            .and_then(|s| s.as_str())
            .map(str::to_string);
        return Ok((subject.trim().to_string(), id));
    }
    if text.is_empty() || text.contains(char::is_whitespace) {
        return Err("a request is one identifier, or a JSON object with \"subject\"".into());
    }
    Ok((text.to_string(), None))
}

/// Per partition, the first and last offset of a batch of requests.
pub type Offsets = BTreeMap<i32, (i64, i64)>;

/// The offsets `requests` span, per partition.
pub fn offsets(requests: &[ErasureRequest]) -> Offsets {
    let mut out = Offsets::new();
    for r in requests {
        out.entry(r.partition)
            .and_modify(|(first, last)| {
                *first = (*first).min(r.offset);
                *last = (*last).max(r.offset);
            })
            .or_insert((r.offset, r.offset));
    }
    out
}

/// The requests of one topic for one consumer group: everything up to the end of each
/// partition at the time [`RequestQueue::pending`] is called, or a batch taken before
/// again ([`RequestQueue::batch`]).
pub struct RequestQueue {
    consumer: BaseConsumer,
    topic: String,
}

impl RequestQueue {
    /// Open `topic` for `group` (offsets committed in Kafka, as for any consumer group).
    pub fn open(client: &KafkaClient, group: &str, topic: &str) -> Result<Self> {
        let consumer: BaseConsumer = client
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka("erasure requests"))?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
        })
    }

    /// Every request not yet committed, in order per partition.
    pub fn pending(&self, timeout: Duration) -> Result<Vec<ErasureRequest>> {
        self.read(timeout, None)
    }

    /// The requests of `batch` again, in order per partition: from each partition's first
    /// offset to its last, whatever the group committed meanwhile, and none after. A run
    /// stopped midway is finished with the same requests however many arrived since.
    pub fn batch(&self, timeout: Duration, batch: &Offsets) -> Result<Vec<ErasureRequest>> {
        self.read(timeout, Some(batch))
    }

    /// Whether the group committed every offset of `batch` (each partition past its last).
    pub fn committed_through(&self, batch: &Offsets, timeout: Duration) -> Result<bool> {
        let committed = self.committed(batch.keys().copied(), timeout)?;
        Ok(batch.iter().all(|(p, (_, last))| {
            matches!(
                committed.find_partition(&self.topic, *p).map(|e| e.offset()),
                Some(Offset::Offset(o)) if o > *last
            )
        }))
    }

    fn committed(
        &self,
        partitions: impl IntoIterator<Item = i32>,
        timeout: Duration,
    ) -> Result<TopicPartitionList> {
        let mut wanted = TopicPartitionList::new();
        for p in partitions {
            wanted.add_partition(&self.topic, p);
        }
        self.consumer
            .committed_offsets(wanted, timeout)
            .map_err(kafka("erasure requests: committed offsets"))
    }

    /// The requests from the committed offset to the end of each partition, or those of
    /// `batch` only.
    fn read(&self, timeout: Duration, batch: Option<&Offsets>) -> Result<Vec<ErasureRequest>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(kafka("erasure requests: metadata"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(Error::RequestsTopicMissing {
                topic: self.topic.clone(),
            });
        }
        let committed = self.committed(partitions.iter().copied(), timeout)?;
        let mut start = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in &partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, timeout)
                .map_err(kafka("erasure requests: watermarks"))?;
            let (from, end) = match batch {
                None => {
                    let from = match committed
                        .find_partition(&self.topic, *p)
                        .map(|e| e.offset())
                    {
                        Some(Offset::Offset(o)) => o.max(low),
                        _ => low,
                    };
                    (from, high)
                }
                Some(batch) => match batch.get(p) {
                    Some(&(first, last)) => {
                        if first < low {
                            tracing::warn!(
                                topic = %self.topic,
                                partition = *p,
                                first,
                                low,
                                "the batch of a stopped erasure run is no longer whole (retention removed its first requests): the requests left are taken"
                            );
                        }
                        (first.max(low), (last + 1).min(high))
                    }
                    // Not in the batch: nothing from this partition.
                    None => (high, high),
                },
            };
            if from < end {
                ends.insert(*p, end);
            }
            start
                .add_partition_offset(&self.topic, *p, Offset::Offset(from))
                .map_err(kafka("erasure requests"))?;
        }
        self.consumer
            .assign(&start)
            .map_err(kafka("erasure requests: assign"))?;
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout * 4;
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::RequestsTimedOut {
                    topic: self.topic.clone(),
                    seconds: (timeout * 4).as_secs(),
                });
            }
            let Some(m) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.map_err(kafka("erasure requests: fetch"))?;
            let (partition, offset) = (m.partition(), m.offset());
            let Some(end) = ends.get(&partition).copied() else {
                continue;
            };
            if offset >= end {
                ends.remove(&partition);
                continue;
            }
            let parsed = parse_request(m.payload());
            let fallback = format!("{}-{partition}-{offset}", self.topic);
            out.push(ErasureRequest {
                partition,
                offset,
                request_id: parsed
                    .as_ref()
                    .ok()
                    .and_then(|(_, id)| id.clone())
                    .unwrap_or(fallback),
                subject: parsed.map(|(s, _)| s),
            });
            if offset + 1 >= end {
                ends.remove(&partition);
            }
        }
        Ok(out)
    }

    /// Mark the request at `partition`/`offset` (and those before it) done.
    pub fn done(&self, partition: i32, offset: i64) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset + 1))
            .map_err(kafka("erasure requests"))?;
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(kafka("erasure requests: commit"))
    }
}

/// Produces tombstones (a key, no value) on compacted topics; one producer for a run.
pub struct Tombstones {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Tombstones {
    pub fn new(client: &KafkaClient) -> Result<Self> {
        let producer = client
            .config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(kafka("tombstones"))?;
        Ok(Self { producer })
    }

    /// Produce a tombstone for each `(topic, key)`, waiting for every acknowledgement;
    /// how many were written.
    pub fn send(&self, tombstones: &[(String, Vec<u8>)]) -> Result<u64> {
        for (topic, key) in tombstones {
            self.producer
                .send(BaseRecord::<[u8], [u8]>::to(topic).key(key.as_slice()))
                .map_err(|(e, _)| Error::Kafka {
                    context: format!("tombstone to {topic}"),
                    source: Box::new(e),
                })?;
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(kafka("tombstones: flush"))?;
        Ok(tombstones.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_an_identifier_or_json_with_a_subject() {
        assert_eq!(
            parse_request(Some(b"C0000001\n")),
            Ok(("C0000001".into(), None))
        );
        assert_eq!(
            parse_request(Some(br#"{"subject": "C2", "request_id": "DSAR-7"}"#)),
            Ok(("C2".into(), Some("DSAR-7".into())))
        );
        assert!(parse_request(Some(br#"{"nope": 1}"#)).is_err());
        assert!(parse_request(Some(b"two words")).is_err());
        assert!(parse_request(None).is_err());
        assert!(parse_request(Some(&[0xff, 0xfe])).is_err());
    }

    #[test]
    fn a_batch_spans_the_first_and_last_offset_of_each_partition() {
        let request = |partition, offset| ErasureRequest {
            partition,
            offset,
            subject: Ok("C0000001".into()),
            request_id: format!("r-{partition}-{offset}"),
        };
        let batch = offsets(&[request(0, 4), request(1, 9), request(0, 2), request(0, 7)]);
        assert_eq!(batch, Offsets::from([(0, (2, 7)), (1, (9, 9))]));
        assert!(offsets(&[]).is_empty());
    }
}
