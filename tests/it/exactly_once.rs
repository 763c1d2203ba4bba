//! Every (topic, partition, offset) lands in bronze exactly once: after a clean run, a
//! re-run, and twenty SIGKILLs at random moments.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::harness::{Broker, Logged, Mock, Tansu, Workdir, assert_exactly_once, produce};

fn lands_every_offset_once_and_reruns_add_nothing(broker: &dyn Broker) {
    broker.create_topic("orders", 3);
    produce(broker, "orders", 0, 30_000);
    let w = Workdir::new();
    w.write_config(broker, "it", &["orders"], "");
    w.run_ok(&["run", "--until-caught-up"]);
    assert_exactly_once(&w, "bronze.orders", "orders", 3, 30_000);
    // A second run resumes from the offsets in Delta: nothing is read twice.
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(w.count("bronze.orders"), 30_000);
    // New messages after the restart are picked up from where Delta says.
    produce(broker, "orders", 30_000, 500);
    w.run_ok(&["run", "--until-caught-up"]);
    assert_exactly_once(&w, "bronze.orders", "orders", 3, 30_500);
}

#[test]
fn lands_every_offset_once_and_reruns_add_nothing_on_mock_cluster() {
    lands_every_offset_once_and_reruns_add_nothing(&Mock::start());
}

#[test]
fn lands_every_offset_once_and_reruns_add_nothing_on_tansu() {
    if let Some(t) = Tansu::start() {
        lands_every_offset_once_and_reruns_add_nothing(&t);
    }
}

#[test]
fn survives_twenty_sigkills_without_loss_or_duplicates() {
    const MESSAGES: usize = 200_000;
    let broker = Mock::start();
    broker.create_topic("payments", 4);
    produce(&broker, "payments", 0, MESSAGES);
    let w = Workdir::new();
    let mut rng = StdRng::seed_from_u64(20);
    // Rows landed after each kill: must never go down, and most kills must land mid-ingest.
    let mut landed = Vec::new();
    for attempt in 0..20 {
        // A fresh consumer group each time: a killed member would otherwise hold its
        // partitions until its session expires. Offsets come from Delta, not the group.
        let extra = format!(
            "flush_max_rows = 2000\n[kafka.properties]\n\"group.id\" = \"crash-{attempt}\"\n"
        );
        w.write_config(&broker, "crash", &["payments"], &extra);
        let mut run = Logged::spawn(w.sluice(&["run"]));
        // Kill at a random moment after ingestion has started (the sleep is the point).
        run.wait_for("partitions assigned", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
        let child = run.child();
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "`sluice run` exited by itself"
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        landed.push(w.count("bronze.payments"));
    }
    eprintln!("rows landed after each of the 20 kills: {landed:?}");
    assert!(
        landed.windows(2).all(|p| p[0] <= p[1]),
        "rows went down: {landed:?}"
    );
    let mid_ingest = landed.iter().filter(|n| **n > 0 && **n < MESSAGES).count();
    assert!(
        mid_ingest >= 10,
        "only {mid_ingest} of 20 kills landed mid-ingest: {landed:?}"
    );
    w.write_config(
        &broker,
        "crash",
        &["payments"],
        "[kafka.properties]\n\"group.id\" = \"crash-final\"\n",
    );
    w.run_ok(&["run", "--until-caught-up"]);
    assert_exactly_once(&w, "bronze.payments", "payments", 4, MESSAGES);
}

#[test]
fn reports_committed_offsets_to_the_consumer_group_for_lag_tools() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let broker = Mock::start();
    broker.create_topic("lag", 2);
    produce(&broker, "lag", 0, 3_000);
    let w = Workdir::new();
    w.write_config(&broker, "lagcheck", &["lag"], "");
    w.run_ok(&["run", "--until-caught-up"]);
    let per_partition =
        w.sql("select _kafka_partition, count(*) from bronze.lag group by 1 order by 1");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "sluice-lagcheck")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("lag", 0);
    tpl.add_partition("lag", 1);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let got: Vec<String> = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{},{o}", e.partition()),
            other => format!("{},{other:?}", e.partition()),
        })
        .collect();
    // The group's committed offset is the next to read: the row count of each partition.
    assert_eq!(got, per_partition);
}
