//! Silver MERGE: change events into a silver table of N rows, through the real sink
//! (decode of Debezium envelopes, reduce, tombstones, MERGE with `txn`s).
//!
//! `cargo bench --bench merge` (defaults: 100,000 changes into 1 M and 10 M rows), or
//! `cargo bench --bench merge -- --rows 1000000 --changes 100000 --layouts spread`.
//!
//! The table is first filled with N rows written directly (files of ~1 M rows, sorted
//! by key), then one batch of changes is merged: 80% updates of existing keys, 10% new
//! keys, 10% deletes. Two key layouts of the changes are measured:
//! - `spread`: keys drawn from the whole table, so nearly every file holds one;
//! - `recent`: keys from the newest 5% of the key range (the usual shape of a change
//!   stream: recent accounts move), so file statistics let MERGE skip most files.
//!
//! Printed: seconds per MERGE commit, changes per second, and files rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::kernel::Action;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice_connectors::decode::debezium::Sequence;
use sluice_connectors::decode::json::{JsonDecoder, JsonDecoderConfig, RawMessage};
use sluice_connectors::delta::silver::{SilverSink, SilverSinkConfig, SilverTableSpec};
use sluice_connectors::delta::table;
use sluice_pipeline::CommitOutcome;

const ROWS_PER_FILE: usize = 1_000_000;

fn envelope(op: &str, id: i64, lsn: i64) -> String {
    let row = format!(
        r#"{{"id": {id}, "name": "Customer {id}", "email": "c{id}@example.com", "segment": "retail", "balance": {}, "branch": "B{:03}"}}"#,
        id % 10_000,
        id % 200
    );
    let (before, after) = if op == "d" {
        (row, "null".to_string())
    } else {
        ("null".to_string(), row)
    };
    format!(
        r#"{{"before": {before}, "after": {after}, "source": {{"table": "customers", "lsn": {lsn}, "ts_ms": 1767225600000}}, "op": "{op}", "ts_ms": 1767225600000}}"#
    )
}

fn decode(events: &[String], first_offset: i64) -> sluice_pipeline::SourceBatch {
    let mut decoder = JsonDecoder::new(
        JsonDecoderConfig {
            table: "customers_changes".into(),
            limits: sluice_connectors::decode::limits::DecodeLimits::default(),
            schema_evolution: true,
            max_messages: events.len(),
            envelope: true,
        },
        None,
    );
    for (i, e) in events.iter().enumerate() {
        decoder.push(&RawMessage {
            topic: "cdc",
            partition: 0,
            offset: first_offset + i as i64,
            timestamp_ms: None,
            key: None,
            payload: Some(e.as_bytes()),
            headers: Default::default(),
        });
    }
    decoder.finish().expect("decode").expect("batch")
}

async fn merge(sink: &mut SilverSink, events: &[String], first_offset: i64) -> f64 {
    let batch = decode(events, first_offset);
    assert!(batch.dead_letters.is_empty());
    let start = Instant::now();
    sink.write(&batch).expect("write");
    let mut outcome = CommitOutcome::default();
    sink.commit(&mut outcome, &mut BTreeMap::new())
        .await
        .expect("commit");
    start.elapsed().as_secs_f64()
}

/// Fill `silver/customers` with keys `0..rows` in files of `ROWS_PER_FILE`, in the
/// table's own schema.
async fn fill(lake: &std::path::Path, rows: usize) {
    let url = table::table_url(lake, "silver/customers").expect("url");
    let mut t = table::open("customers", &url).await.expect("open");
    let schema = table::arrow_schema("customers", &t).expect("schema");
    let mut start = 1_000i64;
    while (start as usize) < rows {
        let end = (start as usize + ROWS_PER_FILE).min(rows) as i64;
        let ids: Vec<i64> = (start..end).collect();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "id" => Arc::new(Int64Array::from_iter_values(ids.iter().copied())),
                    // Older than every change of the run (sequences from 10).
                    "_cdc_sequence" => {
                        Arc::new(Int64Array::from_iter_values(ids.iter().map(|_| 1)))
                    }
                    "_cdc_offset" => Arc::new(Int64Array::from_iter_values(ids.iter().map(|_| -1))),
                    "balance" => {
                        Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 10_000)))
                    }
                    "_cdc_source_ts" => Arc::new(
                        TimestampMicrosecondArray::from_iter_values(
                            ids.iter().map(|_| 1_767_225_600_000_000),
                        )
                        .with_timezone("UTC"),
                    ),
                    "_cdc_op" => Arc::new(StringArray::from_iter_values(ids.iter().map(|_| "r"))),
                    name => Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|i| format!("{name} {i}")),
                    )),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let mut writer = RecordBatchWriter::for_table(&t)
            .expect("writer")
            .with_target_file_size(1 << 30);
        writer.write(batch).await.expect("write");
        let adds = writer.flush().await.expect("flush");
        let actions = adds.into_iter().map(Action::Add).collect();
        table::commit("customers", &mut t, "fill", actions, &BTreeMap::new(), &[])
            .await
            .expect("commit");
        start = end;
    }
}

/// The data files of the table's current version.
async fn files(lake: &std::path::Path) -> BTreeSet<String> {
    let url = table::table_url(lake, "silver/customers").expect("url");
    let t = table::open("customers", &url).await.expect("open");
    t.get_file_uris().expect("files").collect()
}

/// Rows and distinct keys of the table.
async fn counts(lake: &std::path::Path) -> (i64, i64) {
    let url = table::table_url(lake, "silver/customers").expect("url");
    let t = table::open("customers", &url).await.expect("open");
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    ctx.register_table("t", t.table_provider().await.expect("provider"))
        .expect("register");
    let b = ctx
        .sql("select count(*), count(distinct id) from t")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    let v = |i: usize| {
        b[0].column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map_or(-1, |a| a.value(0))
    };
    (v(0), v(1))
}

fn sink(lake: &std::path::Path) -> SilverSink {
    SilverSink::new(SilverSinkConfig {
        lake: sluice_pipeline::lake::Lake::Local(lake.to_path_buf()),
        pipeline: "bench".into(),
        tables: vec![SilverTableSpec {
            name: "customers".into(),
            topics: BTreeSet::from(["cdc".to_string()]),
            key: vec!["id".into()],
            source_table: None,
            sequence: Sequence::Auto,
            partition_by: Vec::new(),
            history: None,
            stats: Default::default(),
        }],
    })
}

async fn run(rows: usize, changes: usize, layout: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let lake = dir.path();
    let mut seeding = sink(lake);
    // The table with its real schema: the first 1,000 keys through the sink.
    let seed: Vec<String> = (0..1_000).map(|id| envelope("r", id, 1)).collect();
    merge(&mut seeding, &seed, 0).await;
    let started = Instant::now();
    fill(lake, rows).await;
    let fill_secs = started.elapsed().as_secs_f64();
    let before = files(lake).await;

    let mut rng = StdRng::seed_from_u64(7);
    let span = match layout {
        "recent" => (rows as i64 / 20).max(1),
        _ => rows as i64,
    };
    let low = rows as i64 - span;
    let mut next_new = rows as i64;
    let events: Vec<String> = (0..changes)
        .map(|i| {
            let lsn = 10 + i as i64;
            match i % 10 {
                0 => {
                    next_new += 1;
                    envelope("c", next_new, lsn)
                }
                1 => envelope("d", low + rng.random_range(0..span), lsn),
                _ => envelope("u", low + rng.random_range(0..span), lsn),
            }
        })
        .collect();
    // A fresh sink: nothing cached from the fill, as after a restart.
    let secs = merge(&mut sink(lake), &events, 1_000).await;
    let after = files(lake).await;
    let (n, distinct) = counts(lake).await;
    assert_eq!(n, distinct, "one row per key");
    let rewritten = before.difference(&after).count();
    println!(
        "merge rows={rows} changes={changes} layout={layout}: {secs:.2} s ({:.0} changes/s), \
         files rewritten {rewritten} of {} (fill {fill_secs:.1} s), rows after {n}",
        changes as f64 / secs,
        before.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rows: Vec<usize> = value("--rows")
        .unwrap_or_else(|| "1000000,10000000".into())
        .split(',')
        .filter_map(|r| r.parse().ok())
        .collect();
    let changes: usize = value("--changes")
        .and_then(|c| c.parse().ok())
        .unwrap_or(100_000);
    let layouts = value("--layouts").unwrap_or_else(|| "spread,recent".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in &rows {
        for layout in layouts.split(',') {
            runtime.block_on(run(*r, changes, layout));
        }
    }
}
