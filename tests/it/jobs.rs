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
