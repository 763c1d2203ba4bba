//! `sluice run` serves `/metrics`, `/healthz` and `/readyz`: scraped during a real run,
//! the counters match what landed and the lag falls to zero once caught up.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Broker, Mock, Workdir, free_port, produce, terminate, wait_until};

/// `GET path` on `address`: status code and body.
fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Sum of the samples of `metric` whose labels contain `labels`.
fn sample(metrics: &str, metric: &str, labels: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter(|l| l[metric.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[test]
fn metrics_count_what_landed_and_lag_falls_to_zero() {
    let broker = Mock::start();
    broker.create_topic("ops", 2);
    produce(&broker, "ops", 0, 3000);
    let address = format!("127.0.0.1:{}", free_port());
    let w = Workdir::new();
    w.write_config(
        &broker,
        "ops",
        &["ops"],
        &format!("[metrics]\naddress = \"{address}\"\nstatistics_interval_ms = 300\n"),
    );
    let child = w
        .sluice(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until(
        Duration::from_secs(60),
        "rows counted and lag at zero",
        || {
            let Some((200, m)) = get(&address, "/metrics") else {
                return false;
            };
            sample(&m, "sluice_rows_written_total", "table=\"ops\"") == Some(3000.0)
                && sample(&m, "sluice_consumer_lag_messages", "topic=\"ops\"") == Some(0.0)
        },
    );
    let (_, m) = get(&address, "/metrics").expect("metrics");
    assert_eq!(
        sample(&m, "sluice_messages_total", "table=\"ops\""),
        Some(3000.0)
    );
    assert_eq!(sample(&m, "sluice_assigned_partitions", ""), Some(2.0));
    assert!(sample(&m, "sluice_delta_commits_total", "table=\"ops\"").is_some_and(|c| c >= 1.0));
    assert!(sample(&m, "sluice_process_resident_memory_bytes", "").is_some_and(|b| b > 1e6));
    assert!(
        m.contains("sluice_delta_commit_duration_seconds_bucket"),
        "{m}"
    );
    assert_eq!(get(&address, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(&address, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(get(&address, "/nothing").map(|r| r.0), Some(404));

    // More messages: counted once landed.
    produce(&broker, "ops", 3000, 500);
    wait_until(Duration::from_secs(60), "the new rows counted", || {
        get(&address, "/metrics").is_some_and(|(_, m)| {
            sample(&m, "sluice_rows_written_total", "table=\"ops\"") == Some(3500.0)
        })
    });
    terminate(&child);
    let status = { child }.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert_eq!(w.count("bronze.ops"), 3500);
}
