//! A schema declared in the config types the bronze table; values that do not fit it are
//! dead letters; a per-table `partition_by` replaces the default.

use crate::harness::{Broker, Mock, Workdir, produce_raw};

#[test]
fn declared_schema_types_the_table_and_rejects_what_does_not_fit() {
    let broker = Mock::start();
    broker.create_topic("payments", 1);
    produce_raw(
        &broker,
        "payments",
        &[
            Some(br#"{"id": 1, "amount": 12.5, "paid_at": "2026-01-02T03:04:05Z", "channel": "app"}"#),
            Some(br#"{"id": "two", "amount": 1.0, "paid_at": "2026-01-02T03:04:05Z"}"#),
            Some(br#"{"id": 3, "amount": 7, "paid_at": "2026-01-03T00:00:00Z", "device": "ios"}"#),
        ],
    );
    let w = Workdir::new();
    w.write_config(
        &broker,
        "declared",
        &["payments"],
        "[bronze.tables.payments]\npartition_by = []\nschema = [\n  {name = \"id\", type = \"long\"},\n  \
         {name = \"amount\", type = \"double\"},\n  {name = \"paid_at\", type = \"timestamp\"},\n  \
         {name = \"channel\", type = \"string\"},\n]\n",
    );
    w.run_ok(&["run", "--until-caught-up"]);
    let rows = w.sql(
        "select id, amount, cast(paid_at as varchar), channel, device, arrow_typeof(paid_at), arrow_typeof(id) \
         from bronze.payments order by id",
    );
    assert_eq!(
        rows,
        vec![
            "1,12.5,2026-01-02T03:04:05Z,app,,\"Timestamp(µs, \"\"UTC\"\")\",Int64",
            "3,7.0,2026-01-03T00:00:00Z,,ios,\"Timestamp(µs, \"\"UTC\"\")\",Int64",
        ]
    );
    let dead = w.sql("select kafka_offset, stage from sluice.dead_letters");
    assert_eq!(dead, vec!["1,schema"]);
    // No _ingest_date partition directories: the table is unpartitioned as configured.
    let dirs: Vec<String> = std::fs::read_dir(w.lake().join("bronze/payments"))
        .expect("table dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, vec!["_delta_log"]);
}
