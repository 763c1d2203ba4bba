//! A broker outage mid-run: the pipeline waits, resumes and loses nothing.

use std::time::Duration;

use crate::harness::{Broker, Mock, Workdir, assert_exactly_once, produce, terminate, wait_until};

#[test]
fn waits_out_a_broker_outage_and_loses_nothing() {
    let broker = Mock::start();
    broker.create_topic("audit", 2);
    produce(&broker, "audit", 0, 5_000);
    let w = Workdir::new();
    w.write_config(&broker, "outage", &["audit"], "");
    let child = w.sluice(&["run"]).spawn().expect("spawn");
    wait_until(Duration::from_secs(120), "first rows", || {
        w.count("bronze.audit") >= 5_000
    });
    broker.0.broker_down(1).expect("down");
    // The outage itself: long enough for the consumer's requests to fail and be retried
    // (the sleep is the point, not a wait for readiness).
    std::thread::sleep(Duration::from_secs(4));
    broker.0.broker_up(1).expect("up");
    produce(&broker, "audit", 5_000, 5_000);
    wait_until(Duration::from_secs(120), "rows after the outage", || {
        w.count("bronze.audit") >= 10_000
    });
    terminate(&child);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "run exited {}", out.status);
    assert_exactly_once(&w, "bronze.audit", "audit", 2, 10_000);
}
