//! A source rate limit holds: 100,000 messages under `max_messages_per_second = 10000`
//! take at least ~10 s. Only the upper bound of the rate is asserted, so a slow machine
//! cannot make the test fail; the measured rate is printed.

use crate::harness::{Broker, Mock, Workdir, produce};

#[test]
fn a_message_rate_limit_holds_within_ten_percent() {
    let broker = Mock::start();
    broker.create_topic("limited", 2);
    produce(&broker, "limited", 0, 100_000);
    let w = Workdir::new();
    std::fs::write(
        w.config(),
        format!(
            "[pipeline]\nname = \"limited\"\n[kafka]\nbootstrap_servers = \"{}\"\ntopics = [\"limited\"]\n\
             max_messages_per_second = 10000\n[bronze]\nflush_max_rows = 50000\n",
            broker.bootstrap()
        ),
    )
    .expect("config");
    let out = w.run_ok(&["run", "--until-caught-up", "--format", "json"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let messages = summary["messages"].as_f64().expect("messages");
    let seconds = summary["active_seconds"].as_f64().expect("seconds");
    let rate = messages / seconds;
    eprintln!("rate limit 10,000 msg/s: measured {rate:.0} msg/s over {seconds:.1} s");
    assert_eq!(messages, 100_000.0);
    assert!(
        rate <= 11_000.0,
        "{rate:.0} msg/s exceeds the limit by more than 10%"
    );
}
