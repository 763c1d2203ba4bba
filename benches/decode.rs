//! decode → Arrow → Parquet on ~300-byte JSON card transactions.
//!
//! `cargo bench --bench decode`. Three measurements over the same 8192 messages:
//! JSON → Arrow (the decoder on its fast path, lineage columns included), Arrow →
//! Parquet (snappy, in memory), and both together. Throughput is in payload bytes.

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
        max_message_bytes: 1 << 20,
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

criterion_group!(benches, bench);
criterion_main!(benches);
