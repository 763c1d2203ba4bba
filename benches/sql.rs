//! SQL over a lake of N card transactions: the gold definitions of `sql/gold` and five
//! typical analyst queries, by sluice (DataFusion over delta-rs) and by DuckDB's Delta
//! extension over the same Delta files, in the same run.
//!
//! `cargo bench --bench sql` (default 10 M transactions), or `cargo bench --bench sql --
//! --rows 1000000`; `--only NAME` keeps the queries whose name contains NAME, `--explain`
//! prints sluice's `EXPLAIN ANALYZE` of each. DuckDB comes from the Python named by `SLUICE_TEST_PYTHON` (the one
//! `scripts/setup.sh --test` prepares); without it only sluice is timed.
//!
//! The lake, shaped like the demo bank's: `bronze.card_transactions` (N rows over 30
//! `_ingest_date` partitions, one file each, in arrival order), `bronze.touchpoints`
//! (N/10), `silver.customers` (N/100) and `silver.accounts` (1.5 per customer); the view
//! of `sql/views` is registered in both engines. Each query runs three times in each
//! engine and the fastest is kept (results fetched whole, tables already open).
//!
//! Printed per query: seconds for sluice and DuckDB, their ratio and the rows returned;
//! for the queries naming one day, the data files scanned of the table's files. Then
//! `sluice job gold` for the incremental `daily_spend_by_segment`: a full build, a 31st
//! day appended, the incremental build (`--only incremental` runs this alone).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use common::{customer, write};
use deltalake::datafusion::physical_plan::ExecutionPlan;

const DAYS: usize = 30;
/// 2026-10-01 as days since the epoch.
const FIRST_DAY: i32 = 20_727;
const DAY: &str = "2026-10-15";

fn batch(fields: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = Schema::new(
        fields
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        fields.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("batch")
}

fn strings<I: IntoIterator<Item = S>, S: AsRef<str>>(values: I) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// Day `day` (0 = 2026-10-01) of `bronze.card_transactions`: `per_day` transactions.
async fn write_day(lake: &Path, day: usize, per_day: usize, customers: usize, accounts: usize) {
    // Transaction k of the lake: account (k * 7919) % accounts, whose customer is
    // account % customers; except that each 10,007th transaction starts a burst, the
    // next four on the same account within four seconds (for rapid_card_use to find).
    let ks: Vec<usize> = (day * per_day..(day + 1) * per_day).collect();
    let burst = |k: &usize| if k % 10_007 < 5 { k - k % 10_007 } else { *k };
    let account = |k: &usize| (burst(k) * 7_919) % accounts;
    let t = batch(vec![
        ("txn_id", strings(ks.iter().map(|k| format!("T{k:010}")))),
        (
            "customer_id",
            strings(ks.iter().map(|k| customer(account(k) % customers))),
        ),
        (
            "account_id",
            strings(ks.iter().map(|k| format!("A{:08}", account(k)))),
        ),
        (
            "amount_gbp",
            Arc::new(Float64Array::from_iter_values(
                ks.iter().map(|k| ((k * 31) % 50_000) as f64 / 100.0),
            )),
        ),
        (
            "channel",
            strings(
                ks.iter()
                    .map(|k| ["pos", "online", "contactless", "atm"][k % 4]),
            ),
        ),
        (
            "merchant",
            strings(ks.iter().map(|k| format!("M{:04}", (k * 13) % 2_000))),
        ),
        (
            "mcc",
            Arc::new(Int64Array::from_iter_values(
                ks.iter().map(|k| 5_000 + (k % 40) as i64),
            )),
        ),
        (
            "status",
            strings(
                ks.iter()
                    .map(|k| if k % 20 == 0 { "declined" } else { "approved" }),
            ),
        ),
        (
            "event_time",
            strings(ks.iter().map(|k| {
                let s = ((burst(k) % per_day) * 86_400 / per_day.max(1) + k - burst(k)).min(86_399);
                format!(
                    "2026-10-{:02}T{:02}:{:02}:{:02}.000Z",
                    day + 1,
                    s / 3_600,
                    s / 60 % 60,
                    s % 60
                )
            })),
        ),
        (
            "_ingest_date",
            Arc::new(Date32Array::from_iter_values(
                ks.iter().map(|_| FIRST_DAY + day as i32),
            )),
        ),
    ]);
    write(
        lake,
        "bronze/card_transactions",
        t,
        &["_ingest_date".into()],
    )
    .await;
}

/// The tables; returns the customer looked up by the point query.
async fn fill(lake: &Path, rows: usize) -> String {
    let customers = (rows / 100).max(4);
    let accounts = customers * 3 / 2;
    let per_day = rows / DAYS;
    for day in 0..DAYS {
        write_day(lake, day, per_day, customers, accounts).await;
    }
    let tp: Vec<usize> = (0..rows / 10).collect();
    let touchpoints = batch(vec![
        ("event_id", strings(tp.iter().map(|i| format!("E{i:09}")))),
        (
            "customer_id",
            strings(tp.iter().map(|i| customer((i * 17) % customers))),
        ),
        (
            "channel",
            strings(tp.iter().map(|i| ["app", "web", "branch", "phone"][i % 4])),
        ),
        (
            "action",
            strings(tp.iter().map(|i| {
                [
                    "login",
                    "view_statement",
                    "payment_setup",
                    "address_change",
                    "card_freeze",
                    "complaint",
                ][i % 6]
            })),
        ),
        (
            "event_time",
            strings(
                tp.iter()
                    .map(|i| format!("2026-10-{:02}T12:00:00.000Z", i % DAYS + 1)),
            ),
        ),
    ]);
    write(lake, "bronze/touchpoints", touchpoints, &[]).await;
    let cs: Vec<usize> = (0..customers).collect();
    let customers_batch = batch(vec![
        ("customer_id", strings(cs.iter().map(|c| customer(*c)))),
        (
            "segment",
            strings(
                cs.iter()
                    .map(|c| ["mass", "affluent", "premier", "student"][c % 4]),
            ),
        ),
        (
            "postcode",
            strings(cs.iter().map(|c| format!("LS{}", c % 30))),
        ),
    ]);
    write(lake, "silver/customers", customers_batch, &[]).await;
    let accs: Vec<usize> = (0..accounts).collect();
    let accounts_batch = batch(vec![
        (
            "account_id",
            strings(accs.iter().map(|a| format!("A{a:08}"))),
        ),
        (
            "customer_id",
            strings(accs.iter().map(|a| customer(a % customers))),
        ),
        (
            "product",
            strings(
                accs.iter()
                    .map(|a| ["current", "savings", "isa", "credit_card"][a % 4]),
            ),
        ),
        (
            "balance_gbp",
            Arc::new(Float64Array::from_iter_values(
                accs.iter().map(|a| ((a * 37) % 2_000_000) as f64 / 100.0),
            )),
        ),
    ]);
    write(lake, "silver/accounts", accounts_batch, &[]).await;
    customer(customers / 3)
}

/// Data files the plan reads (after partition pruning); a file split into byte ranges
/// across partitions counts once.
fn files_scanned(plan: &Arc<dyn ExecutionPlan>) -> usize {
    fn collect(plan: &Arc<dyn ExecutionPlan>, into: &mut std::collections::HashSet<String>) {
        use deltalake::datafusion::datasource::physical_plan::FileScanConfig;
        use deltalake::datafusion::datasource::source::DataSourceExec;
        if let Some(config) = plan
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
        {
            for group in &config.file_groups {
                into.extend(group.iter().map(|f| f.object_meta.location.to_string()));
            }
        }
        for child in plan.children() {
            collect(child, into);
        }
    }
    let mut files = std::collections::HashSet::new();
    collect(plan, &mut files);
    files.len()
}

/// DuckDB's fastest of three runs per query, with the rows it returned.
fn duckdb(python: &str, lake: &Path, views: &Path, queries: &[String]) -> Vec<(f64, usize)> {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/scripts/duckdb_query.py"
    );
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(lake)
        .arg(views)
        .arg("--time")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(queries).expect("json").as_bytes())
        .expect("queries");
    let out = child.wait_with_output().expect("duckdb");
    assert!(out.status.success(), "duckdb failed");
    let timings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    timings
        .iter()
        .map(|t| {
            if let Some(e) = t.get("error") {
                panic!("DuckDB: {e}");
            }
            (
                t["seconds"].as_f64().unwrap_or(f64::NAN),
                t["rows"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect()
}

/// What `main` was asked for beyond the sizes.
struct Options {
    /// Only the queries whose name contains this.
    only: Option<String>,
    /// Print sluice's `EXPLAIN ANALYZE` of each query.
    explain: bool,
}

async fn run(rows: usize, options: &Options) {
    let dir = tempfile::tempdir().expect("tmp");
    let lake = dir.path();
    let started = Instant::now();
    let someone = fill(lake, rows).await;
    println!(
        "sql rows={rows}: lake written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sql_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut catalog = sluice_sql::Catalog::open(lake).await.expect("catalog");
    catalog
        .register_views(&sql_dir.join("views"))
        .await
        .expect("views");

    let mut queries: Vec<(String, String)> = vec![
        (
            "one customer, one day".into(),
            format!(
                "select txn_id, amount_gbp, merchant from bronze.card_transactions \
                 where _ingest_date = DATE '{DAY}' and customer_id = '{someone}'"
            ),
        ),
        (
            "month x channel".into(),
            "select substr(event_time, 1, 7) as month, channel, count(*) as n, \
             sum(amount_gbp) as spend from bronze.card_transactions group by 1, 2"
                .into(),
        ),
        (
            "top 10 merchants".into(),
            "select merchant, sum(amount_gbp) as spend from bronze.card_transactions \
             where status = 'approved' group by merchant order by spend desc limit 10"
                .into(),
        ),
        (
            "customers-accounts-transactions".into(),
            "select c.segment, a.product, count(*) as n, sum(t.amount_gbp) as spend \
             from bronze.card_transactions t \
             join silver.accounts a on t.account_id = a.account_id \
             join silver.customers c on a.customer_id = c.customer_id group by 1, 2"
                .into(),
        ),
        (
            "one day by channel".into(),
            format!(
                "select channel, count(*) as n, sum(amount_gbp) as spend \
                 from bronze.card_transactions where _ingest_date = DATE '{DAY}' group by channel"
            ),
        ),
    ];
    let mut gold: Vec<_> = std::fs::read_dir(sql_dir.join("gold"))
        .expect("gold")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    gold.sort();
    for g in gold {
        let name = g.file_stem().and_then(|n| n.to_str()).unwrap_or("?");
        queries.push((
            format!("gold {name}"),
            std::fs::read_to_string(&g).expect("definition"),
        ));
    }

    if let Some(only) = &options.only {
        queries.retain(|(name, _)| name.contains(only.as_str()));
    }

    let url =
        sluice_connectors::delta::table::table_url(lake, "bronze/card_transactions").expect("url");
    let table = sluice_connectors::delta::table::open("bronze/card_transactions", &url)
        .await
        .expect("open");
    let total_files = table.get_file_uris().expect("files").count();

    let mut ours = Vec::new();
    for (name, q) in &queries {
        let mut best = f64::INFINITY;
        let mut returned = 0;
        let mut scanned = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let df = catalog.context().sql(q).await.expect("plan");
            let plan = df.create_physical_plan().await.expect("physical plan");
            scanned = files_scanned(&plan);
            let task = catalog.context().task_ctx();
            let batches = deltalake::datafusion::physical_plan::collect(plan, task)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            best = best.min(started.elapsed().as_secs_f64());
            returned = batches.iter().map(RecordBatch::num_rows).sum();
        }
        ours.push((best, returned, scanned));
        if options.explain {
            let df = catalog
                .context()
                .sql(&format!("explain analyze {q}"))
                .await
                .expect("explain");
            let plan = df.collect().await.expect("explain analyze");
            println!("{name}:");
            println!(
                "{}",
                arrow::util::pretty::pretty_format_batches(&plan).expect("format")
            );
        }
    }
    let theirs = match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(py) if !py.is_empty() => {
            let sqls: Vec<String> = queries.iter().map(|(_, q)| q.clone()).collect();
            Some(duckdb(&py, lake, &sql_dir.join("views"), &sqls))
        }
        _ => {
            println!("  (SLUICE_TEST_PYTHON unset: DuckDB not run)");
            None
        }
    };
    println!(
        "  {:<34} {:>9} {:>9} {:>7} {:>9}  files scanned",
        "query", "sluice s", "duckdb s", "ratio", "rows"
    );
    for (i, (name, q)) in queries.iter().enumerate() {
        let (s, n, scanned) = ours[i];
        let (d, ratio) = match &theirs {
            Some(t) => {
                let (d, their_rows) = t[i];
                if their_rows != n {
                    println!("  ! {name}: DuckDB returned {their_rows} rows, sluice {n}");
                }
                (format!("{d:.3}"), format!("{:.2}", s / d))
            }
            None => ("-".into(), "-".into()),
        };
        assert!(n > 0 || !q.contains(DAY), "{name} returned no rows");
        let files = if q.contains(DAY) {
            format!("  {scanned} of {total_files}")
        } else {
            String::new()
        };
        println!("  {name:<34} {s:>9.3} {d:>9} {ratio:>7} {n:>9}{files}");
    }
    if options
        .only
        .as_deref()
        .is_none_or(|o| "incremental".contains(o))
    {
        incremental_gold(lake, rows, &sql_dir).await;
    }
}

/// `sluice job gold` for the incremental definition: a full build of the 30 days, then a
/// 31st day and the incremental build it takes.
async fn incremental_gold(lake: &Path, rows: usize, sql_dir: &Path) {
    let (gold_dir, views) = (sql_dir.join("gold"), sql_dir.join("views"));
    let only = ["gold.daily_spend_by_segment".to_string()];
    let stats = sluice_connectors::delta::stats::StatsPolicy::default();
    let cx = sluice_jobs::JobContext::with_system_clock(lake);
    let build = || sluice_jobs::gold::gold(&cx, &gold_dir, &views, &only, &stats);
    let started = Instant::now();
    let full = build().await.expect("full build");
    let full_s = started.elapsed().as_secs_f64();
    let customers = (rows / 100).max(4);
    write_day(lake, DAYS, rows / DAYS, customers, customers * 3 / 2).await;
    let started = Instant::now();
    let next = build().await.expect("incremental build");
    let next_s = started.elapsed().as_secs_f64();
    assert_eq!(next[0].mode, "incremental");
    println!(
        "  sluice job gold, daily_spend_by_segment: full build {full_s:.3} s ({} rows); \
         a 31st day, then an incremental build {next_s:.3} s (from {}, {} rows recomputed)",
        full[0].rows,
        next[0].from_watermark.as_deref().unwrap_or("?"),
        next[0].rows
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows = common::sizes(&args, "10000000");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let options = Options {
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned(),
        explain: args.iter().any(|a| a == "--explain"),
    };
    for r in rows {
        runtime.block_on(run(r, &options));
    }
}
