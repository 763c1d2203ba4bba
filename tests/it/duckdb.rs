//! Our Delta tables read back identically through an independent reader: DuckDB's
//! delta extension (delta-kernel-rs underneath, none of delta-rs's code).

use std::path::Path;
use std::process::Command;

use crate::harness::{Broker, Mock, Tool, Workdir, produce, produce_raw, require};

/// Rows of `select <select>` over the Delta table at `table`, read by DuckDB's delta
/// extension with `python` (the tests' Python, [`Tool::Python`]).
pub fn duckdb(python: &Path, table: &Path, select: &str) -> Vec<serde_json::Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/scripts/duckdb_read.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(table)
        .arg(select)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn duckdb_reads_bronze_and_dead_letters_identically() {
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let broker = Mock::start();
    broker.create_topic("ledger", 2);
    produce(&broker, "ledger", 0, 12_000);
    produce_raw(&broker, "ledger", &[Some(b"{oops"), Some(br#"{"id": 99999, "customer": "C1", "amount_gbp": 1.5, "channel": "web", "branch": "Leeds"}"#)]);
    let w = Workdir::new();
    w.write_config(&broker, "duck", &["ledger"], "flush_max_rows = 5000\n");
    w.run_ok(&["run", "--until-caught-up"]);

    let select = "count(*), sum(_kafka_offset), sum(id), count(distinct customer), \
                  cast(round(sum(amount_gbp), 2) as varchar), count(distinct _ingest_date), \
                  count(branch), min(_kafka_topic), sum(_kafka_partition)";
    let ours = w.sql(&format!("select {select} from bronze.ledger"));
    let theirs = duckdb(&py, &w.lake().join("bronze/ledger"), select);
    let theirs: Vec<String> = theirs
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(ours, vec![theirs.join(",")]);
    assert!(ours[0].starts_with("12001,"), "{ours:?}");

    let dl_ours = w.sql("select count(*), sum(kafka_offset), min(stage) from sluice.dead_letters");
    let dl_theirs = duckdb(
        &py,
        &w.lake().join("_sluice/dead_letters"),
        "count(*), sum(kafka_offset), min(stage)",
    );
    assert_eq!(
        dl_ours,
        vec![format!(
            "{},{},{}",
            dl_theirs[0],
            dl_theirs[1],
            dl_theirs[2].as_str().unwrap_or_default()
        )]
    );
    assert!(dl_ours[0].starts_with("1,"), "{dl_ours:?}");
}
