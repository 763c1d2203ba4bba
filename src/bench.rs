//! `sluice bench`: end-to-end ingest throughput on this machine.
//!
//! Pre-loads an embedded broker with card-transaction messages (~300 bytes of JSON each),
//! then runs `sluice run --until-caught-up` as a child process draining them into a fresh
//! lake, and reports the child's own figures: messages/s and MB/s over its active window,
//! CPU-seconds per million messages and peak RSS. The broker runs in this process, so its
//! CPU time is not counted against sluice.

use std::process::Stdio;

use anyhow::Context as _;
use sluice_connectors::demo::bank::{self, Scale};
use sluice_connectors::demo::broker::{EmbeddedBroker, Outgoing, SimpleProducer};
use sluice_pipeline::config::bronze::table_name_for_topic;

use crate::run::Summary;

/// Options of `sluice bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Messages to pre-load and drain.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Partitions of the topic. The embedded broker keeps at most 5 MiB or 100,000
    /// messages per partition, so 1 M messages of ~300 bytes need at least 58.
    #[arg(long, default_value_t = 80)]
    pub partitions: i32,
    /// Use this Kafka instead of the embedded broker (`host:port`); `--topic` must exist
    /// there, empty, with `--partitions` partitions.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// Topic to load and drain.
    #[arg(long, default_value = "txn-events")]
    pub topic: String,
    /// Apply the demo's PII policy for card transactions (customer id and message key
    /// tokenized, card number format-preserving encrypted), to measure what it costs.
    #[arg(long)]
    pub policy: bool,
    /// Distinct customers (and about 1.5 cards each) the transactions are spread over:
    /// more means fewer repeated values for the policy's memos.
    #[arg(long, default_value_t = 10_000)]
    pub customers: usize,
    /// Replace every N-th transaction by a hostile message (cycling through the kinds of
    /// `demo::hostile`: non-ASCII, lineage-named fields, deep nesting, 200,000 digits,
    /// invalid UTF-8, huge numbers, a new field name each, wrong shapes, 3,000 fields, not
    /// JSON), to compare the cost of a hostile mix with an ordinary one.
    #[arg(long, value_name = "N")]
    pub hostile_every: Option<usize>,
}

/// The demo's card-transaction policy, for `table`, with keys under `dir`.
fn policy(table: &str, dir: &std::path::Path) -> anyhow::Result<String> {
    for (name, secret) in [
        ("pseudo", "bench pseudonym secret, not a real one"),
        ("vault", "bench vault secret, not a real one"),
    ] {
        std::fs::write(dir.join(format!("{name}.key")), secret)?;
    }
    let d = dir.display();
    Ok(format!(
        "[pii]\ndead_letter_key = \"vault\"\n[pii.keys.pseudo]\nfile = \"{d}/pseudo.key\"\n\
         [pii.keys.vault]\nfile = \"{d}/vault.key\"\n[pii.tables.{table}]\n\
         customer_id = {{ action = \"tokenize\", key = \"pseudo\" }}\n\
         _kafka_key = {{ action = \"tokenize\", key = \"pseudo\" }}\n\
         card_number = {{ action = \"encrypt_fpe\", format = \"pan\", key = \"vault\" }}\n"
    ))
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let embedded = match &args.brokers {
        Some(_) => None,
        None => {
            let broker = EmbeddedBroker::start(1)?;
            broker.create_topic(&args.topic, args.partitions)?;
            Some(broker)
        }
    };
    let brokers = match (&args.brokers, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap_servers(),
        (None, None) => anyhow::bail!("no broker"),
    };
    let scale = Scale {
        customers: args.customers,
        transactions: args.messages,
        touchpoints: 0,
        with_bad_messages: false,
    };
    let producer = SimpleProducer::new(&brokers)?;
    let mut bytes = 0usize;
    let mut hostile = 0usize;
    for (i, m) in bank::generate(scale)
        .iter()
        .filter(|m| m.topic == "txn-events")
        .enumerate()
    {
        let replaced = args
            .hostile_every
            .filter(|n| *n > 0 && i % n == n - 1)
            .map(|_| {
                hostile += 1;
                let kinds = &sluice_connectors::demo::hostile::KINDS;
                (kinds[hostile % kinds.len()].make)(hostile)
            });
        let payload = replaced.as_deref().or(m.payload.as_deref());
        bytes += payload.map_or(0, <[u8]>::len);
        producer.send(&Outgoing {
            topic: &args.topic,
            key: Some(m.key.as_bytes()),
            payload,
            timestamp_ms: Some(m.timestamp_ms),
        })?;
    }
    producer.flush()?;
    if let Some(broker) = &embedded {
        let evicted = broker.evicted(&args.topic, args.partitions)?;
        anyhow::ensure!(
            evicted == 0,
            "the embedded broker evicted {evicted} messages (it keeps 5 MiB or 100,000 messages per \
             partition): run with more --partitions"
        );
    }
    eprintln!(
        "bench: pre-loaded {} messages ({:.1} MB, {hostile} hostile) into {} partitions",
        args.messages,
        bytes as f64 / 1e6,
        args.partitions
    );

    let dir = tempfile::tempdir().context("creating a scratch lake")?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"bench\"\n[kafka]\nbootstrap_servers = \"{brokers}\"\ntopics = [\"{}\"]\n\
             max_prefetch_bytes = 33554432\n[bronze]\nflush_max_rows = 500000\nflush_max_latency_ms = 10000\n{}",
            args.topic,
            if args.policy {
                policy(&table_name_for_topic(&args.topic), dir.path())?
            } else {
                String::new()
            }
        ),
    )?;
    let exe = std::env::current_exe()?;
    let child = tokio::process::Command::new(exe)
        .args(["run", "--until-caught-up", "--format", "json", "--config"])
        .arg(&config)
        .arg("--lake")
        .arg(dir.path().join("lake"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting sluice run")?;
    let out = child.wait_with_output().await?;
    anyhow::ensure!(out.status.success(), "sluice run failed: {}", out.status);
    let s: Summary = serde_json::from_slice(&out.stdout).context("reading the run summary")?;
    anyhow::ensure!(
        (s.rows + s.dead_letters) as usize == args.messages,
        "drained {} rows and {} dead letters of {} messages",
        s.rows,
        s.dead_letters,
        args.messages
    );
    let secs = s.active_seconds.max(1e-9);
    println!("messages           {}", s.messages);
    println!("payload MB         {:.1}", s.source_bytes as f64 / 1e6);
    println!("active seconds     {:.2}", s.active_seconds);
    println!("messages/s         {:.0}", s.messages as f64 / secs);
    println!(
        "MB/s               {:.1}",
        s.source_bytes as f64 / 1e6 / secs
    );
    println!(
        "cpu s / million    {:.2}",
        s.cpu_seconds / (s.messages as f64 / 1e6)
    );
    println!(
        "msgs per cpu-s     {:.0}",
        s.messages as f64 / s.cpu_seconds.max(1e-9)
    );
    println!(
        "peak RSS MiB       {:.0}",
        s.peak_rss_bytes as f64 / 1048576.0
    );
    println!("dead letters       {}", s.dead_letters);
    println!("commits            {}", s.commits);
    drop(embedded);
    Ok(())
}
