//! Two `sluice run` processes in one consumer group split the partitions between them.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{
    Broker, Logged, Mock, Tansu, Workdir, assert_exactly_once, produce, terminate, wait_until,
};

/// Two `sluice run` processes of `w` in one consumer group ingest 20,000 messages of the
/// 4-partition topic `events`; every message lands exactly once. Their JSON summaries.
pub(crate) fn two_processes_ingest(broker: &dyn Broker, w: &Workdir) -> Vec<serde_json::Value> {
    let spawn = || {
        let mut command = w.sluice(&["run", "--format", "json"]);
        command.stdout(Stdio::piped());
        Logged::spawn(command)
    };
    // The second process joins once the first holds the partitions, and the messages come
    // once the second holds its share (it is given it in the same rebalance as the first
    // its own): neither can ingest them all before the other is there.
    let mut a = spawn();
    a.wait_for("partitions assigned", Duration::from_secs(120));
    let mut b = spawn();
    b.wait_for("partitions assigned", Duration::from_secs(120));
    produce(broker, "events", 0, 20_000);
    wait_until(Duration::from_secs(180), "all rows landed", || {
        w.count("bronze.events") >= 20_000
    });
    terminate(a.child());
    terminate(b.child());
    let summaries = [a, b]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output();
            assert!(out.status.success(), "run exited {}", out.status);
            serde_json::from_slice(&out.stdout).expect("summary json")
        })
        .collect();
    assert_exactly_once(w, "bronze.events", "events", 4, 20_000);
    summaries
}

fn two_processes_split_the_partitions(broker: &dyn Broker) {
    broker.create_topic("events", 4);
    let w = Workdir::new();
    w.write_config(broker, "grp", &["events"], "");
    let summaries = two_processes_ingest(broker, &w);
    let per_process: Vec<u64> = summaries
        .iter()
        .map(|s| s["rows"].as_u64().expect("rows"))
        .collect();
    assert!(
        per_process.iter().all(|n| *n > 0),
        "both processes must ingest: {per_process:?}"
    );
    assert_eq!(per_process.iter().sum::<u64>(), 20_000, "{per_process:?}");
}

#[test]
fn two_processes_split_the_partitions_on_mock_cluster() {
    two_processes_split_the_partitions(&Mock::start());
}

#[test]
fn two_processes_split_the_partitions_on_tansu() {
    if let Some(t) = Tansu::start() {
        two_processes_split_the_partitions(&t);
    }
}
