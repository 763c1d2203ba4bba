//! `sluice demo`: the whole pipeline on an embedded broker and synthetic bank data.

use std::path::Path;

use anyhow::Context as _;
use sluice_connectors::demo::bank::{self, Scale};
use sluice_connectors::demo::broker::{EmbeddedBroker, Outgoing, SimpleProducer};
use sluice_pipeline::config::Config;

use crate::output::{self, Format};
use crate::run;

/// The built-in configuration of the demo; `bootstrap_servers` is replaced by the
/// embedded broker's address.
pub const DEMO_CONFIG: &str = r#"# sluice demo configuration (printed by `sluice demo --print-config`).
[pipeline]
name = "demo"

[kafka]
bootstrap_servers = "embedded"
group_id = "sluice-demo"
topics = ["customers", "accounts", "txn-events", "touchpoint-events"]
auto_offset_reset = "earliest"
max_prefetch_bytes = 33554432
decode_batch_max_messages = 8192
decode_batch_max_latency_ms = 100

[decode]
format = "json"
max_message_bytes = 1048576

[bronze]
flush_max_rows = 100000
flush_max_bytes = 67108864
flush_max_latency_ms = 2000
target_file_size_bytes = 134217728
partition_by = ["_ingest_date"]
schema_evolution = true

[bronze.routes]
"txn-events" = "card_transactions"
"touchpoint-events" = "touchpoints"
"#;

/// The query the demo ends with.
pub const DEMO_QUERY: &str = "select c.segment, count(*) as transactions, \
     cast(round(sum(t.amount_gbp), 2) as decimal(12, 2)) as spend_gbp \
     from bronze.card_transactions t join bronze.customers c on t.customer_id = c.customer_id \
     where t.status = 'approved' group by c.segment order by spend_gbp desc";

/// Produce the bank data set to an embedded broker, ingest it, report.
pub async fn demo(config: Option<Config>, lake: &Path, format: Format) -> anyhow::Result<()> {
    let mut config = match config {
        Some(c) => c,
        None => Config::from_toml(DEMO_CONFIG)
            .map_err(|p| anyhow::anyhow!("built-in demo config is invalid: {p:?}"))?,
    };
    let broker = EmbeddedBroker::start(1)?;
    for (topic, partitions) in bank::TOPICS {
        broker.create_topic(topic, partitions)?;
    }
    let started = std::time::Instant::now();
    let messages = bank::generate(Scale::default());
    let producer = SimpleProducer::new(&broker.bootstrap_servers())?;
    for m in &messages {
        producer.send(&Outgoing {
            topic: m.topic,
            key: Some(m.key.as_bytes()),
            payload: m.payload.as_deref(),
            timestamp_ms: Some(m.timestamp_ms),
        })?;
    }
    producer.flush()?;
    eprintln!(
        "demo: produced {} messages to an embedded Kafka broker in {:.1}s; ingesting into {}",
        messages.len(),
        started.elapsed().as_secs_f64(),
        lake.display()
    );
    config.kafka.bootstrap_servers = broker.bootstrap_servers();
    let stop = run::stop_on_signals();
    let summary = run::run_pipeline(&config, lake, true, stop).await?;
    eprintln!(
        "demo: {} new messages → {} rows, {} dead letters, {} commits ({:.1}s)",
        summary.messages,
        summary.rows,
        summary.dead_letters,
        summary.commits,
        started.elapsed().as_secs_f64()
    );
    let catalog = sluice_sql::Catalog::open(lake)
        .await
        .context("opening the lake for SQL")?;
    let mut counts = Vec::new();
    for t in catalog.tables() {
        counts.push((t.qualified(), catalog.count(t).await?));
    }
    println!("Tables in {}:", lake.display());
    for (name, n) in &counts {
        println!("  {name:<32} {n:>8} rows");
    }
    println!("\n{DEMO_QUERY}\n");
    let result = catalog.query(DEMO_QUERY).await?;
    output::print(&result, format)?;
    drop(broker);
    Ok(())
}
