//! decode → Arrow → Parquet on ~300-byte JSON card transactions, and Avro → Arrow.
//!
//! `cargo bench --bench decode`. Three measurements over the same 8192 messages:
//! JSON → Arrow (the decoder on its fast path, lineage columns included), Arrow →
//! Parquet (snappy, in memory), and both together. Throughput is in payload bytes.
//! Then Avro → Arrow: 8192 Confluent-framed records of 20 fields (schema from the
//! embedded registry, fetched once while warming up); throughput in messages.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sluice_connectors::decode::json::{JsonDecoder, JsonDecoderConfig, RawMessage};
use sluice_connectors::demo::bank::{self, Scale};

const MESSAGES: usize = 8192;

fn messages() -> Vec<Vec<u8>> {
    let scale = Scale {
        customers: 1000,
        transactions: MESSAGES,
        touchpoints: 0,
        with_bad_messages: false,
    };
    bank::generate(scale)
        .into_iter()
        .filter(|m| m.topic == "txn-events")
        .filter_map(|m| m.payload)
        .collect()
}

fn decode(payloads: &[Vec<u8>], decoder: &mut JsonDecoder) -> arrow::array::RecordBatch {
    for (i, p) in payloads.iter().enumerate() {
        decoder.push(&RawMessage {
            topic: "txn-events",
            partition: 0,
            offset: i as i64,
            timestamp_ms: Some(1_767_225_600_000),
            key: Some(b"C0000001"),
            payload: Some(p),
            headers: Default::default(),
        });
    }
    decoder
        .finish()
        .expect("decode")
        .expect("batch")
        .rows
        .expect("rows")
}

fn to_parquet(batch: &arrow::array::RecordBatch) -> usize {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(Vec::with_capacity(1 << 20), batch.schema(), Some(props))
        .expect("writer");
    w.write(batch).expect("write");
    w.into_inner().expect("finish").len()
}

fn bench(c: &mut Criterion) {
    let payloads = messages();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let config = JsonDecoderConfig {
        table: "bench".into(),
        limits: sluice_connectors::decode::limits::DecodeLimits::default(),
        schema_evolution: true,
        max_messages: MESSAGES,
        envelope: false,
    };
    // Warm the decoder once so the schema is known and the fast path is measured.
    let mut decoder = JsonDecoder::new(config, None);
    let batch = decode(&payloads, &mut decoder);

    let mut g = c.benchmark_group("txn-events x8192");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("json_to_arrow", |b| {
        b.iter(|| black_box(decode(&payloads, &mut decoder)))
    });
    g.bench_function("arrow_to_parquet", |b| {
        b.iter(|| black_box(to_parquet(&batch)))
    });
    g.bench_function("json_to_parquet", |b| {
        b.iter(|| black_box(to_parquet(&decode(&payloads, &mut decoder))))
    });
    g.finish();
}

/// A 20-field card transaction, as a payments service would register it.
const AVRO_TXN: &str = r#"{"type": "record", "name": "CardTransaction", "namespace": "bank", "fields": [
    {"name": "txn_id", "type": "string"},
    {"name": "account_id", "type": "long"},
    {"name": "customer_id", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "currency", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "merchant", "type": "string"},
    {"name": "mcc", "type": "int"},
    {"name": "category", "type": "string"},
    {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["POS", "ECOM", "ATM"]}},
    {"name": "card_present", "type": "boolean"},
    {"name": "country", "type": "string"},
    {"name": "city", "type": ["null", "string"], "default": null},
    {"name": "device_id", "type": ["null", "string"], "default": null},
    {"name": "auth_code", "type": "string"},
    {"name": "balance_after", "type": "double"},
    {"name": "posted_date", "type": {"type": "int", "logicalType": "date"}},
    {"name": "fraud_score", "type": "float"},
    {"name": "is_refund", "type": "boolean"},
    {"name": "reference", "type": ["null", "string"], "default": null}
]}"#;

fn avro_messages(schema_id: u32) -> Vec<Vec<u8>> {
    use apache_avro::types::Value;
    let schema = apache_avro::Schema::parse_str(AVRO_TXN).expect("schema");
    let s = |v: String| Value::String(v);
    (0..MESSAGES)
        .map(|i| {
            let i64v = i as i64;
            let fields = vec![
                ("txn_id", s(format!("T{i:010}"))),
                ("account_id", Value::Long(10_000 + i64v % 997)),
                ("customer_id", s(format!("C{:07}", i % 1000))),
                ("amount", Value::Double(12.5 + (i % 300) as f64)),
                ("currency", s("GBP".into())),
                (
                    "ts",
                    Value::TimestampMicros(1_767_225_600_000_000 + i64v * 1_000),
                ),
                ("merchant", s(format!("Merchant {}", i % 50))),
                ("mcc", Value::Int(5411)),
                ("category", s("groceries".into())),
                (
                    "channel",
                    Value::Enum((i % 3) as u32, ["POS", "ECOM", "ATM"][i % 3].into()),
                ),
                ("card_present", Value::Boolean(i % 2 == 0)),
                ("country", s("GB".into())),
                ("city", Value::Union(1, Box::new(s("Leeds".into())))),
                ("device_id", Value::Union(0, Box::new(Value::Null))),
                ("auth_code", s(format!("{:06}", i % 999_999))),
                ("balance_after", Value::Double(1000.0 - i as f64)),
                ("posted_date", Value::Date(20_454)),
                ("fraud_score", Value::Float(0.01)),
                ("is_refund", Value::Boolean(false)),
                (
                    "reference",
                    Value::Union(1, Box::new(s(format!("ref-{i}")))),
                ),
            ];
            let record = Value::Record(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            );
            let mut out = vec![0];
            out.extend_from_slice(&schema_id.to_be_bytes());
            out.extend(apache_avro::to_avro_datum(&schema, record).expect("datum"));
            out
        })
        .collect()
}

fn bench_avro(c: &mut Criterion) {
    use sluice_connectors::decode::avro::{AvroDecoder, AvroDecoderConfig, AvroSchemas};
    use sluice_connectors::decode::registry::{RegistryConfig, SchemaRegistry};
    let registry = sluice_connectors::demo::registry::EmbeddedRegistry::start().expect("registry");
    let payloads = avro_messages(registry.register(AVRO_TXN));
    let client = SchemaRegistry::new(RegistryConfig {
        urls: vec![registry.url().to_string()],
        username: None,
        password: None,
        ca_pem: None,
        timeout: std::time::Duration::from_secs(5),
        cache_dir: None,
        attempts: 1,
    })
    .expect("client");
    let mut decoder = AvroDecoder::new(
        AvroDecoderConfig {
            table: "bench".into(),
            limits: sluice_connectors::decode::limits::DecodeLimits::default(),
            envelope: false,
            max_messages: MESSAGES,
            schemas: AvroSchemas::Registry(std::sync::Arc::new(client)),
        },
        None,
    );
    let mut decode = |payloads: &[Vec<u8>]| {
        for (i, p) in payloads.iter().enumerate() {
            decoder.push(&RawMessage {
                topic: "card-txns",
                partition: 0,
                offset: i as i64,
                timestamp_ms: Some(1_767_225_600_000),
                key: Some(b"C0000001"),
                payload: Some(p),
                headers: Default::default(),
            });
        }
        let batch = decoder.finish().expect("decode").expect("batch");
        assert!(batch.dead_letters.is_empty());
        batch.rows.expect("rows")
    };
    decode(&payloads);
    let mut g = c.benchmark_group("avro card-txns x8192");
    g.throughput(Throughput::Elements(MESSAGES as u64));
    g.bench_function("avro_to_arrow_20_fields", |b| {
        b.iter(|| black_box(decode(&payloads)))
    });
    g.finish();
}

/// What one hostile message costs: chunks of 1,000 transactions of which every tenth is
/// of one hostile kind (`demo::hostile`), decoded into a table that knows the ordinary
/// schema, then protected with the demo's card policy (tokenize the customer, format-
/// preserving encryption of the card number) — against the same chunk without them. The
/// difference over 100 hostile messages is one message's cost (the goal: under 10 ms).
fn bench_hostile(c: &mut Criterion) {
    use sluice_connectors::demo::hostile::KINDS;
    use sluice_pipeline::protection::{Protection, Step};
    use sluice_transforms::ColumnPath;
    use sluice_transforms::fpe::{EncryptFpe, Ff1Cipher, FpeFormat};
    use sluice_transforms::limit::Limited;
    use sluice_transforms::memo::Memo;
    use sluice_transforms::tokenize::Tokenize;
    let ordinary: Vec<Vec<u8>> = messages().into_iter().take(1000).collect();
    let key = b"bench secret of enough bytes".to_vec();
    let step = |column: &str, t: Box<dyn sluice_pipeline::Transform>| Step {
        column: column.into(),
        transform: Box::new(Limited {
            inner: t,
            path: ColumnPath::parse(column).expect("path"),
            max_bytes: 64 * 1024,
        }),
    };
    let protection = Protection {
        chains: [(
            "bench".to_string(),
            vec![
                step(
                    "customer_id",
                    Box::new(Tokenize {
                        path: ColumnPath::parse("customer_id").expect("path"),
                        key_id: "k".into(),
                        key: key.clone(),
                        memo: Memo::default(),
                    }),
                ),
                step(
                    "card_number",
                    Box::new(EncryptFpe {
                        path: ColumnPath::parse("card_number").expect("path"),
                        cipher: Ff1Cipher::new(&key, FpeFormat::Pan),
                        memo: Memo::default(),
                    }),
                ),
            ],
        )]
        .into_iter()
        .collect(),
        seal: None,
    };
    let config = JsonDecoderConfig {
        table: "bench".into(),
        limits: sluice_connectors::decode::limits::DecodeLimits::default(),
        schema_evolution: true,
        max_messages: 1000,
        envelope: false,
    };
    let mut warm = JsonDecoder::new(config.clone(), None);
    decode(&ordinary, &mut warm);
    let schema = warm.schema().cloned();
    let run = |payloads: &[Vec<u8>]| {
        // A fresh decoder each time: "a new field name" must not widen the table for good.
        let mut d = JsonDecoder::new(config.clone(), schema.clone());
        for (i, p) in payloads.iter().enumerate() {
            d.push(&RawMessage {
                topic: "txn-events",
                partition: 0,
                offset: i as i64,
                timestamp_ms: Some(1_767_225_600_000),
                key: Some(b"C0000001"),
                payload: Some(p),
                headers: Default::default(),
            });
        }
        let mut batch = d.finish().expect("decode").expect("batch");
        sluice_pipeline::protection::protect(&protection, &mut batch).expect("protect");
        batch
    };
    let mut g = c.benchmark_group("hostile: 1,000 transactions, every tenth hostile");
    g.sample_size(10);
    g.bench_function("none hostile", |b| b.iter(|| black_box(run(&ordinary))));
    for kind in &KINDS {
        let mixed: Vec<Vec<u8>> = ordinary
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i % 10 == 9 {
                    (kind.make)(i)
                } else {
                    p.clone()
                }
            })
            .collect();
        let batch = run(&mixed);
        assert_eq!(
            batch.message_count(),
            1000,
            "{}: every message accounted for",
            kind.name
        );
        g.bench_function(kind.name, |b| b.iter(|| black_box(run(&mixed))));
    }
    g.finish();
}

criterion_group!(benches, bench, bench_avro, bench_hostile);
criterion_main!(benches);
