//! `sluice job maintain`: small files compacted, unreferenced files vacuumed, checkpoint
//! written, rows and exactly-once resume untouched; runs recorded in the hash chain that
//! `sluice audit verify` checks; a run holding the lock refuses a second one.

use std::time::Duration;

use crate::harness::{Broker, Mock, Workdir, assert_exactly_once, produce, terminate, wait_until};

fn maintain(w: &Workdir) -> serde_json::Value {
    let out = w.run_ok(&["--format", "json", "job", "maintain"]);
    serde_json::from_slice(&out.stdout).expect("report")
}

fn report<'a>(reports: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    reports
        .as_array()
        .expect("reports")
        .iter()
        .find(|r| r["table"] == table)
        .unwrap_or_else(|| panic!("no report for {table}: {reports}"))
}

#[test]
fn maintain_compacts_vacuums_and_records_its_runs() {
    let broker = Mock::start();
    broker.create_topic("events", 2);
    let w = Workdir::new();
    w.write_config(
        &broker,
        "jobs",
        &["events"],
        "partition_by = []\n[maintenance]\nvacuum_retention_hours = 0\n",
    );
    // Four runs, four small files.
    for i in 0..4 {
        produce(&broker, "events", i * 750, 750);
        w.run_ok(&["run", "--until-caught-up"]);
    }
    let committed = w.sql("select count(*) from bronze.events");

    let first = maintain(&w);
    let events = report(&first, "bronze.events");
    assert!(
        events["files_compacted"].as_u64().unwrap_or(0) >= 2,
        "{events}"
    );
    assert_eq!(events["files_written"], 1, "{events}");
    assert!(
        events["files_vacuumed"].as_u64().unwrap_or(0) >= 2,
        "{events}"
    );
    assert_eq!(events["checkpoint"], true);
    assert_eq!(w.sql("select count(*) from bronze.events"), committed);
    // Nothing left to compact: a second run changes no file.
    let second = maintain(&w);
    assert_eq!(report(&second, "bronze.events")["files_compacted"], 0);

    // The pipeline resumes exactly where it was after compaction and checkpoint.
    produce(&broker, "events", 3_000, 1_000);
    w.run_ok(&["run", "--until-caught-up"]);
    assert_exactly_once(&w, "bronze.events", "events", 2, 4_000);

    let out = w.run_ok(&["audit", "verify"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 runs, chain intact"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        w.sql("select job, outcome, tables like '%bronze.events@%' from sluice.job_runs order by started_at"),
        vec!["maintain,ok,true", "maintain,ok,true"]
    );

    // A run in progress (this test process holds its lock) refuses a second one.
    let locks = w.lake().join("_sluice/locks");
    std::fs::write(
        locks.join("maintain_bronze_events.lock"),
        format!("{}\n", std::process::id()),
    )
    .expect("lock");
    let out = w
        .sluice(&["job", "maintain", "--table", "bronze.events"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another run holds the lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refused run is recorded too, and the chain still holds.
    let out = w.run_ok(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 runs, chain intact"));
}

#[test]
fn the_scheduler_runs_jobs_at_their_cron_times_until_stopped() {
    let broker = Mock::start();
    broker.create_topic("events", 1);
    produce(&broker, "events", 0, 100);
    let w = Workdir::new();
    // Every two seconds (six fields: seconds first).
    w.write_config(
        &broker,
        "jobs",
        &["events"],
        "[schedule]\nmaintain = \"*/2 * * * * *\"\n",
    );
    w.run_ok(&["run", "--until-caught-up"]);
    let mut child = w
        .sluice(&["schedule"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("schedule");
    let runs = |w: &Workdir| {
        w.sluice(&["audit", "verify"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .and_then(|s| {
                s.split(": ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), "two scheduled runs", || {
        runs(&w) >= 2
    });
    terminate(&child);
    let status = child.wait().expect("wait");
    assert!(status.success(), "schedule exits 0 on SIGTERM: {status}");
    assert_eq!(
        w.sql("select distinct job, outcome from sluice.job_runs"),
        vec!["maintain,ok"]
    );
}

#[test]
fn snapshot_pins_checksums_and_names_the_keys_breaking_an_invariant() {
    use crate::harness::produce_raw;
    let broker = Mock::start();
    broker.create_topic("customers", 1);
    broker.create_topic("accounts", 1);
    let w = Workdir::new();
    let archive = w.dir.path().join("archive");
    w.write_config(
        &broker,
        "snap",
        &["customers", "accounts"],
        &format!("partition_by = []\n[snapshot]\ntables = [\"bronze\"]\nexport_to = {:?}\n\
         [snapshot.keys]\n\"bronze.accounts\" = [\"id\"]\n\
         [[snapshot.invariants]]\nname = \"account_has_customer\"\n\
         sql = \"SELECT a.id FROM bronze.accounts a LEFT JOIN bronze.customers c ON a.customer = c.id WHERE c.id IS NULL\"\n\
         [[snapshot.invariants]]\nname = \"customer_ids_unique\"\n\
         sql = \"SELECT id FROM bronze.customers GROUP BY id HAVING count(*) > 1\"\n",
            archive.display().to_string()
        ),
    );
    produce_raw(
        &broker,
        "customers",
        &[Some(br#"{"id": "C1"}"#), Some(br#"{"id": "C2"}"#)],
    );
    produce_raw(
        &broker,
        "accounts",
        &[Some(br#"{"id": "A1", "customer": "C1"}"#)],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    produce_raw(
        &broker,
        "accounts",
        &[Some(br#"{"id": "A2", "customer": "C2"}"#)],
    );
    w.run_ok(&["run", "--until-caught-up"]);

    let snap = |w: &Workdir| -> serde_json::Value {
        let out = w.run_ok(&["--format", "json", "job", "snapshot"]);
        serde_json::from_slice(&out.stdout).expect("snapshot")
    };
    let table = |s: &serde_json::Value, name: &str| {
        s["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .find(|t| t["table"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {s}"))
    };
    let first = snap(&w);
    assert_eq!(table(&first, "bronze.accounts")["rows"], 2);
    // A time between the first snapshot's versions and everything after: the timestamp
    // is to the second, so a second passes on either side of it (the sleeps are the point).
    std::thread::sleep(Duration::from_millis(1100));
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        first["diffs"],
        serde_json::json!([]),
        "nothing to compare with yet"
    );
    assert!(
        first["invariants"]
            .as_array()
            .expect("invariants")
            .iter()
            .all(|i| i["violations"] == 0)
    );
    // Compaction rewrites the files; the content, hence the checksum, is unchanged.
    w.run_ok(&["job", "maintain"]);
    let second = snap(&w);
    assert_eq!(
        table(&second, "bronze.accounts")["checksum"],
        table(&first, "bronze.accounts")["checksum"]
    );
    assert_ne!(
        table(&second, "bronze.accounts")["version"],
        table(&first, "bronze.accounts")["version"]
    );
    // Same content: no difference, by key for accounts, by whole rows for customers.
    for d in second["diffs"].as_array().expect("diffs") {
        assert_eq!(
            (&d["rows_added"], &d["rows_removed"]),
            (&0.into(), &0.into()),
            "{d}"
        );
    }
    let accounts = |s: &serde_json::Value| {
        s["diffs"]
            .as_array()
            .expect("diffs")
            .iter()
            .find(|d| d["table"] == "bronze.accounts")
            .cloned()
            .expect("accounts diff")
    };
    assert_eq!(accounts(&second)["rows_changed"], 0);
    assert_eq!(accounts(&second)["key"], serde_json::json!(["id"]));

    // A planted inconsistency: an account whose customer does not exist.
    produce_raw(
        &broker,
        "accounts",
        &[Some(br#"{"id": "A3", "customer": "C9"}"#)],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    let out = w.sluice(&["job", "snapshot"]).output().expect("snapshot");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("account_has_customer (1 rows; first keys: A3)"),
        "{stderr}"
    );
    assert_eq!(
        w.sql(
            "select name, violations, violating_keys from sluice.snapshots \
             where kind = 'invariant' and violations > 0"
        ),
        vec!["account_has_customer,1,A3"]
    );
    assert_eq!(
        w.sql("select count(distinct snapshot_id) from sluice.snapshots"),
        vec!["3"]
    );
    // Time travel: the first snapshot's version, and the lake as it was in between,
    // still read two accounts; the latest reads three.
    let first_version = table(&first, "bronze.accounts")["version"].to_string();
    let at_version = w.run_ok(&[
        "sql",
        "--format",
        "csv",
        "--version",
        &format!("bronze.accounts={first_version}"),
        "select count(*) from bronze.accounts",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&at_version.stdout).lines().nth(1),
        Some("2")
    );
    let as_of = w.run_ok(&[
        "sql",
        "--format",
        "csv",
        "--as-of",
        &between,
        "select count(*) from bronze.accounts",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&as_of.stdout).lines().nth(1),
        Some("2")
    );
    assert_eq!(w.sql("select count(*) from bronze.accounts"), vec!["3"]);
    let missing = w
        .sluice(&["sql", "--version", "bronze.nope=1", "select 1"])
        .output()
        .expect("sql");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no table bronze.nope"));
    // The day-to-day difference names the planted account as the one row added.
    assert_eq!(
        w.sql(
            "select table_name, rows_added, rows_changed, rows_removed from sluice.snapshot_diffs \
             where taken_at = (select max(taken_at) from sluice.snapshot_diffs) order by table_name"
        ),
        vec!["bronze.accounts,1,0,0", "bronze.customers,0,,0"]
    );
    // Each snapshot was exported: Parquet per table and a manifest whose SHA-256 match.
    let exports: Vec<std::path::PathBuf> = std::fs::read_dir(&archive)
        .expect("archive")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(exports.len(), 3);
    let last = exports.iter().max().expect("last export");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(last.join("manifest.json")).expect("manifest"))
            .expect("json");
    let entry = manifest["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "bronze.accounts")
        .cloned()
        .expect("accounts exported");
    assert_eq!(entry["rows"], 3);
    let file = last.join(entry["file"].as_str().expect("file"));
    let sum = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        Some(entry["sha256"].as_str().expect("sha")),
        sum.split_whitespace().next()
    );
    let reader = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(&file).expect("export"),
    )
    .expect("parquet");
    use parquet::file::reader::FileReader as _;
    assert_eq!(reader.metadata().file_metadata().num_rows(), 3);
    let out = w.run_ok(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 runs, chain intact"));
}

/// The job runs of the lake at `lake`, rewritten as someone with write access to the lake
/// but not the audit key would: `change` applied to the runs from `from` on (in chain
/// order), each of their seals recomputed as plain SHA-256, the table overwritten.
fn reseal_without_key(
    lake: &std::path::Path,
    from: usize,
    change: impl Fn(&mut sluice_jobs::runs::JobRun),
) {
    use deltalake::arrow::array::{StringArray, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use deltalake::arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let at = sluice_pipeline::lake::Lake::Local(lake.to_path_buf());
        let mut runs = sluice_jobs::runs::read(&at).await.expect("runs");
        for i in from..runs.len() {
            change(&mut runs[i]);
            runs[i].prev_hash = if i == 0 {
                sluice_jobs::runs::GENESIS.to_string()
            } else {
                runs[i - 1].hash.clone()
            };
            runs[i].hash = runs[i].compute_hash();
        }
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let text = |f: fn(&sluice_jobs::runs::JobRun) -> &str| {
            Arc::new(StringArray::from(runs.iter().map(f).collect::<Vec<_>>()))
        };
        let time = |f: fn(&sluice_jobs::runs::JobRun) -> i64| {
            Arc::new(
                TimestampMicrosecondArray::from(runs.iter().map(f).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            )
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, true),
            Field::new("job", DataType::Utf8, true),
            Field::new("args_hash", DataType::Utf8, true),
            Field::new("started_at", ts.clone(), true),
            Field::new("ended_at", ts, true),
            Field::new("outcome", DataType::Utf8, true),
            Field::new("tables", DataType::Utf8, true),
            Field::new("prev_hash", DataType::Utf8, true),
            Field::new("hash", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                text(|r| &r.run_id),
                text(|r| &r.job),
                text(|r| &r.args_hash),
                time(|r| r.started_at),
                time(|r| r.ended_at),
                text(|r| &r.outcome),
                text(|r| &r.tables),
                text(|r| &r.prev_hash),
                text(|r| &r.hash),
            ],
        )
        .expect("batch");
        let url = url::Url::from_directory_path(lake.join("_sluice/job_runs")).expect("url");
        let table = deltalake::open_table(url).await.expect("table");
        table
            .write(vec![batch])
            .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
            .await
            .expect("overwrite");
    });
}

#[test]
fn the_keyed_job_run_chain_detects_runs_resealed_without_the_key() {
    let w = Workdir::new();
    let key = (
        "SLUICE_TEST_AUDIT_KEY",
        "an audit key of forty bytes, not stored",
    );
    let plain = "[kafka]\nbootstrap_servers = \"localhost:9092\"\ntopics = [\"t\"]\n";
    std::fs::write(w.config(), plain).expect("config");
    // Two runs recorded before a key was configured, three after.
    for _ in 0..2 {
        w.run_ok(&["job", "maintain"]);
    }
    std::fs::write(
        w.config(),
        format!("{plain}[audit]\nkey_env = \"{}\"\n", key.0),
    )
    .expect("config");
    for _ in 0..3 {
        w.run_ok_env(&["job", "maintain"], &[key]);
    }
    let out = w.run_ok_env(&["audit", "verify"], &[key]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("5 runs, chain intact; 3 sealed with the audit key; the first 2 unkeyed"),
        "{said}"
    );
    let head = String::from_utf8_lossy(&w.run_ok(&["audit", "head"]).stdout)
        .trim()
        .to_string();
    assert!(head.starts_with("hmac-sha256:"), "{head}");
    let out = w.run_ok_env(&["audit", "verify", "--head", &head], &[key]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 run(s) after it"));

    // Without the key nothing can be checked or recorded; a short key is refused.
    let out = w.sluice(&["audit", "verify"]).output().expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_TEST_AUDIT_KEY is not set"));
    let out = w
        .sluice(&["job", "maintain"])
        .env(key.0, "short")
        .output()
        .expect("maintain");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than 32 bytes"));

    // A run rewritten (its outcome, say) by someone who recomputed the unkeyed hashes of
    // it and every later run: the chain links, the key shows it.
    let lake = w.lake();
    let backup = tempfile::tempdir().expect("backup");
    copy_dir(&lake, backup.path());
    reseal_without_key(&lake, 3, |r| r.outcome = "ok (rewritten)".into());
    let out = w
        .sluice(&["audit", "verify"])
        .env(key.0, key.1)
        .output()
        .expect("verify");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rewritten by someone without the key"),
        "{stderr}"
    );
    // The same change to a chain that was never keyed goes unnoticed: that is what the key
    // is for.
    let unkeyed = Workdir::new();
    std::fs::write(unkeyed.config(), plain).expect("config");
    for _ in 0..3 {
        unkeyed.run_ok(&["job", "maintain"]);
    }
    reseal_without_key(&unkeyed.lake(), 1, |r| r.outcome = "ok (rewritten)".into());
    unkeyed.run_ok(&["audit", "verify"]);

    // The whole chain resealed unkeyed links and hashes; the exported head shows it.
    std::fs::remove_dir_all(&lake).expect("restore");
    copy_dir(backup.path(), &lake);
    reseal_without_key(&lake, 0, |r| r.tables = "nothing".into());
    // Without the head: a keyed configuration finds no run sealed with its key.
    let out = w
        .sluice(&["audit", "verify"])
        .env(key.0, key.1)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("none sealed with the audit key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w
        .sluice(&["audit", "verify", "--head", &head])
        .env(key.0, key.1)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not in the chain"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("read").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}
