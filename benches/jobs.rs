//! The batch jobs on a lake of N rows: the end-of-day snapshot (checksums of every
//! table), the next day's snapshot with its difference, and the right-to-be-forgotten
//! erasure of one customer across bronze, silver and gold.
//!
//! `cargo bench --bench jobs` (defaults: 1 M and 10 M rows in total), or
//! `cargo bench --bench jobs -- --rows 10000000`.
//!
//! The lake, written directly: `bronze.card_transactions` (80% of the rows, one file per
//! `_ingest_date` partition over 30 days, in arrival order), `silver.customers` (10%,
//! one row per customer, files of 1 M rows sorted by key) and `gold.daily_spend` (10%,
//! files of 1 M rows sorted by customer). Customer ids are pseudonyms (`tok_pseudo_…`)
//! as the pipeline writes them; a customer has ~8 transactions, on different days.
//! The bronze table then gets 500 small commits (a live pipeline's log), one customer is
//! erased through the job (delete, purge of the files that held it, checkpoint and log
//! rewrite, certificate), then 1,000 customers in one request.
//!
//! Printed: seconds of the first snapshot; of the second, taken after one more day of
//! transactions, with its difference from the first; then seconds for the whole
//! erasure of one subject with the log rewrite's share, rows removed, files rewritten of
//! the files in the lake and the bytes they held; then seconds for the 1,000 subjects.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_connectors::delta::table;
use sluice_jobs::JobContext;
use sluice_jobs::erase;
use sluice_jobs::subject::Subject;
use sluice_pipeline::config::erasure::ErasureConfig;
use sluice_pipeline::config::snapshot::SnapshotConfig;

mod common;

use common::{customer, write};

const DAYS: usize = 30;
const ROWS_PER_FILE: usize = 1_000_000;
/// Small commits added before the erasures, so that the log has entries to rewrite.
const LOG_COMMITS: usize = 500;
/// Subjects of the batch request.
const SUBJECTS: usize = 1_000;

fn transactions(
    schema: &SchemaRef,
    day: usize,
    rows: usize,
    customers: usize,
    seq: &mut usize,
) -> RecordBatch {
    let ids: Vec<usize> = (0..rows)
        .map(|_| {
            *seq += 1;
            // A customer's transactions fall on every day.
            (*seq * 7_919) % customers
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("T{day:02}-{i:09}")),
        )),
        Arc::new(StringArray::from_iter_values(
            ids.iter().map(|c| customer(*c)),
        )),
        Arc::new(Float64Array::from_iter_values(
            ids.iter().map(|c| (*c % 500) as f64 + 0.99),
        )),
        Arc::new(StringArray::from_iter_values(
            ids.iter().map(|c| format!("M{:04}", c % 2_000)),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..rows).map(|_| format!("2026-10-{:02}", day + 1)),
        )),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns).expect("batch")
}

fn transactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("txn_id", DataType::Utf8, true),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("amount_gbp", DataType::Float64, true),
        Field::new("merchant", DataType::Utf8, true),
        Field::new("_ingest_date", DataType::Utf8, true),
    ]))
}

async fn fill(lake: &Path, rows: usize) -> usize {
    let bronze_rows = rows * 8 / 10;
    let customers = (rows / 10).max(1);
    let schema = transactions_schema();
    let mut seq = 0;
    for day in 0..DAYS {
        let batch = transactions(&schema, day, bronze_rows / DAYS, customers, &mut seq);
        write(
            lake,
            "bronze/card_transactions",
            batch,
            &["_ingest_date".into()],
        )
        .await;
    }
    // Silver and gold: sorted by customer token, files of ROWS_PER_FILE rows.
    let mut sorted: Vec<(String, usize)> = (0..customers).map(|c| (customer(c), c)).collect();
    sorted.sort();
    for chunk in sorted.chunks(ROWS_PER_FILE) {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("customer_id", DataType::Utf8, true),
                Field::new("segment", DataType::Utf8, true),
                Field::new("postcode", DataType::Utf8, true),
                Field::new("_cdc_sequence", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|(t, _)| t.clone()),
                )),
                Arc::new(StringArray::from_iter_values(
                    chunk
                        .iter()
                        .map(|(_, c)| ["mass", "affluent", "premier", "student"][c % 4]),
                )),
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|(_, c)| format!("LS{}", c % 30)),
                )),
                Arc::new(Int64Array::from_iter_values(
                    chunk.iter().map(|(_, c)| *c as i64),
                )),
            ],
        )
        .expect("batch");
        write(lake, "silver/customers", batch, &[]).await;
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("customer_id", DataType::Utf8, true),
                Field::new("month", DataType::Utf8, true),
                Field::new("spend_gbp", DataType::Float64, true),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|(t, _)| t.clone()),
                )),
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|_| "2026-10"),
                )),
                Arc::new(Float64Array::from_iter_values(
                    chunk.iter().map(|(_, c)| (*c % 900) as f64),
                )),
            ],
        )
        .expect("batch");
        write(lake, "gold/daily_spend", batch, &[]).await;
    }
    customers
}

/// Data files and their bytes in the current versions of the lake's tables.
async fn files(lake: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for relative in [
        "bronze/card_transactions",
        "silver/customers",
        "gold/daily_spend",
    ] {
        let url = table::table_url(lake, relative).expect("url");
        let t = table::open(relative, &url).await.expect("open");
        for uri in t.get_file_uris().expect("files") {
            // A `file://` URL, or a plain path.
            let path = match url::Url::parse(&uri) {
                Ok(u) => u.to_file_path().expect("local file"),
                Err(_) => std::path::PathBuf::from(&uri),
            };
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            out.insert(uri, bytes);
        }
    }
    out
}

async fn run(rows: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let lake = dir.path();
    let started = Instant::now();
    let customers = fill(lake, rows).await;
    let fill_secs = started.elapsed().as_secs_f64();
    let snapshots = SnapshotConfig {
        tables: vec!["bronze".into(), "silver".into(), "gold".into()],
        ..Default::default()
    };
    let keys: BTreeMap<String, Vec<String>> = [
        (
            "silver.customers".to_string(),
            vec!["customer_id".to_string()],
        ),
        (
            "gold.daily_spend".to_string(),
            vec!["customer_id".to_string()],
        ),
    ]
    .into_iter()
    .collect();
    let started = Instant::now();
    let cx = JobContext::with_system_clock(lake);
    let first = sluice_jobs::snapshot::snapshot(&cx, &snapshots, &keys)
        .await
        .expect("snapshot");
    let snapshot_secs = started.elapsed().as_secs_f64();
    let pinned: i64 = first.tables.iter().map(|t| t.rows).sum();
    println!(
        "snapshot rows={rows}: {snapshot_secs:.2} s for {pinned} rows in {} tables (checksums)",
        first.tables.len()
    );
    // The next day's transactions, then the next snapshot compares with the first.
    let day = transactions(
        &transactions_schema(),
        DAYS,
        rows * 8 / 10 / DAYS,
        customers,
        &mut (rows * 8 / 10),
    );
    write(
        lake,
        "bronze/card_transactions",
        day,
        &["_ingest_date".into()],
    )
    .await;
    let started = Instant::now();
    let second = sluice_jobs::snapshot::snapshot(&cx, &snapshots, &keys)
        .await
        .expect("snapshot");
    let secs = started.elapsed().as_secs_f64();
    let added: i64 = second.diffs.iter().map(|d| d.rows_added).sum();
    println!(
        "snapshot with difference rows={rows}: {secs:.2} s, {added} rows added since the first{}",
        second
            .diffs
            .iter()
            .filter_map(|d| d.unavailable.as_deref())
            .map(|u| format!(" ({u})"))
            .collect::<String>()
    );
    // A live table's log: many small commits (the pipeline's flushes), whose entries the
    // erasure rewrites.
    let small = transactions(&transactions_schema(), DAYS, 10, customers, &mut 0);
    let started = Instant::now();
    for _ in 0..LOG_COMMITS {
        write(
            lake,
            "bronze/card_transactions",
            small.clone(),
            &["_ingest_date".into()],
        )
        .await;
    }
    println!(
        "log: {LOG_COMMITS} more commits to bronze.card_transactions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let config = ErasureConfig {
        columns: vec!["customer_id".into()],
        ..Default::default()
    };
    let options = erase::Options::from_config(&config, [7u8; 32]);
    let request = |i: usize| erase::Request {
        subject: Arc::new(Subject::new(&format!("C{i:07}"), vec![customer(i)], None)),
        request_id: "bench".into(),
        subject_hash: format!("hash-{i}"),
        tombstones: 0,
    };
    // One subject.
    let before = files(lake).await;
    let started = Instant::now();
    let certs = erase::erase(
        &JobContext::with_system_clock(lake),
        &config,
        None,
        &[request(customers / 2)],
        &options,
    )
    .await
    .expect("erase");
    let secs = started.elapsed().as_secs_f64();
    let after = files(lake).await;
    let cert = &certs[0];
    let rewritten: Vec<&String> = before.keys().filter(|f| !after.contains_key(*f)).collect();
    let rewritten_bytes: u64 = rewritten.iter().map(|f| before[*f]).sum();
    let log_secs: f64 = cert.tables.iter().map(|t| t.log_seconds).sum();
    println!(
        "erase 1 subject rows={rows}: {secs:.2} s (of which log rewrite {log_secs:.2} s), {} rows removed, files rewritten {} of {} ({:.0} MiB of {:.0} MiB), fill {fill_secs:.1} s",
        cert.rows_removed(),
        rewritten.len(),
        before.len(),
        rewritten_bytes as f64 / 1048576.0,
        before.values().sum::<u64>() as f64 / 1048576.0,
    );
    for t in &cert.tables {
        println!(
            "  {}: {} rows, {} files rewritten, {} purged, {} log files rewritten ({:.2} s)",
            t.table,
            t.rows_removed,
            t.files_rewritten,
            t.files_purged,
            t.logs_purged,
            t.log_seconds
        );
    }
    // A thousand subjects in one request, over the same lake.
    let many: Vec<erase::Request> = (0..SUBJECTS)
        .map(|k| request((k * 104_729 + 1) % customers))
        .collect();
    let started = Instant::now();
    let certs = erase::erase(
        &JobContext::with_system_clock(lake),
        &config,
        None,
        &many,
        &options,
    )
    .await
    .expect("erase");
    let secs = started.elapsed().as_secs_f64();
    let rows_removed: u64 = certs.iter().map(erase::Certificate::rows_removed).sum();
    let log_secs: f64 = certs
        .first()
        .map_or(0.0, |c| c.tables.iter().map(|t| t.log_seconds).sum());
    println!(
        "erase {} subjects in one request rows={rows}: {secs:.2} s (of which log rewrite {log_secs:.2} s), {rows_removed} rows removed",
        many.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows = common::sizes(&args, "1000000,10000000");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in rows {
        runtime.block_on(run(r));
    }
}
