//! `sluice demo`: the whole pipeline on an embedded broker and synthetic bank data.

use anyhow::Context as _;
use sluice_connectors::demo::bank::{self, Scale};
use sluice_connectors::demo::broker::{EmbeddedBroker, Outgoing, SimpleProducer};
use sluice_pipeline::config::Config;
use sluice_pipeline::lake::Lake;

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

# Current state of the bank's operational tables, from their Debezium change events (the
# `customers` and `accounts` topics): one row per key, kept by MERGE.
[silver.tables.customers]
topics = ["customers"]
key = ["customer_id"]

# Every version of a customer whose segment or email changed (SCD type 2).
[silver.tables.customers.history]
tracked = ["segment", "email"]

[silver.tables.accounts]
topics = ["accounts"]
key = ["account_id"]

# Data-quality expectations, checked on every batch before it lands (sluice.quality).
[[quality.card_transactions]]
name = "amount_positive"
check = "amount_gbp > 0"
action = "drop"                      # to sluice.quarantine

[[quality.card_transactions]]
name = "currency_known"
check = "currency IN ('GBP', 'EUR', 'USD')"
action = "warn"

# Right to be forgotten (`sluice job erase`): the columns holding a customer's id, raw or
# as its pseudonym; certificates carry the subject hashed under the `salt` key.
[erasure]
columns = ["customer_id", "after.customer_id", "before.customer_id"]
certificate_key = "salt"

# Aged data (`sluice job anonymise`): customers' change events 90 days old keep no email or
# phone. Published outside only when every segment has at least 5 customers.
[anonymise.tables."bronze.customers"]
after_days = 90
[anonymise.tables."bronze.customers".columns]
"after.email" = { action = "drop" }
"after.phone" = { action = "drop" }
"before.email" = { action = "drop" }
"before.phone" = { action = "drop" }

[anonymise.publish."silver.customers"]
quasi_identifiers = ["segment"]
k = 5

# PII policy: every column of personal data is protected before it lands, with every action
# sluice has. In change-event tables a rule protects the column in both images (`before`
# and `after`). The demo writes random keys into ./sluice-demo-keys/ the first time it runs.
[pii]
dead_letter_key = "vault"            # dead letters are encrypted (sluice reveal --dead-letters)

[pii.keys.pseudo]                    # keyed pseudonyms (HMAC-SHA256)
file = "sluice-demo-keys/pseudonym.key"
[pii.keys.salt]                      # salt of hashes
file = "sluice-demo-keys/salt.key"
[pii.keys.vault]                     # format-preserving encryption and dead letters
file = "sluice-demo-keys/vault.key"
[pii.keys.shred]                     # wraps each customer's own data key (crypto-shredding)
file = "sluice-demo-keys/shred.key"

[pii.tables.customers]
customer_id = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
_kafka_key = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
first_name = { action = "drop", tag = "direct_identifier" }
last_name = { action = "mask", literal = "***", tag = "direct_identifier" }
email = { action = "hash", key = "salt", tag = "direct_identifier" }
phone = { action = "encrypt_fpe", format = "digits", key = "vault", tag = "direct_identifier" }
date_of_birth = { action = "generalize", to = "year", tag = "quasi_identifier" }
# Encrypted under the customer's own key, kept in <lake>/_keys/subjects: erasing the
# customer deletes the key, and every copy of the line anywhere is unreadable.
"address.line1" = { action = "encrypt", subject = "customer_id", key = "shred", tag = "direct_identifier" }
"address.postcode" = { action = "generalize", to = "outward", tag = "quasi_identifier" }
notes = { action = "redact", tag = "free_text" }

[pii.tables.accounts]
customer_id = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
sort_code = { action = "mask_partial", keep_last = 2, tag = "quasi_identifier" }
account_number = { action = "encrypt_fpe", key = "vault", tag = "sensitive" }
balance_gbp = { action = "generalize", to = "bucket", width = 1000, tag = "sensitive" }

[pii.tables.card_transactions]
customer_id = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
_kafka_key = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
card_number = { action = "encrypt_fpe", format = "pan", key = "vault", tag = "sensitive" }

[pii.topics.touchpoint-events]
customer_id = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
_kafka_key = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
ip_address = { action = "mask", literal = "0.0.0.0", tag = "quasi_identifier" }
session_id = { action = "keep", tag = "quasi_identifier" }
note = { action = "redact", tag = "free_text" }
"#;

/// Create the demo's missing key files with random secrets (32 bytes, hex).
fn ensure_demo_keys(config: &Config) -> anyhow::Result<()> {
    for key in config.pii.keys.values() {
        let Some(path) = &key.file else { continue };
        if path.exists() || !path.starts_with("sluice-demo-keys") {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
        std::fs::write(path, hex::encode(secret))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The query the demo ends with.
pub const DEMO_QUERY: &str = "select c.segment, count(*) as transactions, \
     cast(round(sum(t.amount_gbp), 2) as decimal(12, 2)) as spend_gbp \
     from bronze.card_transactions t join silver.customers c on t.customer_id = c.customer_id \
     where t.status = 'approved' group by c.segment order by spend_gbp desc";

/// Produce the bank data set to an embedded broker, ingest it, report.
pub async fn demo(config: Option<Config>, lake: &Lake, format: Format) -> anyhow::Result<()> {
    let mut config = match config {
        Some(c) => c,
        None => Config::from_toml(DEMO_CONFIG)
            .map_err(|p| anyhow::anyhow!("built-in demo config is invalid: {p:?}"))?,
    };
    ensure_demo_keys(&config)?;
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
        lake
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
    println!("Tables in {lake}:");
    for (name, n) in &counts {
        println!("  {name:<32} {n:>8} rows");
    }
    println!("\n{DEMO_QUERY}\n");
    let result = catalog.query(DEMO_QUERY).await?;
    output::print(&result, format)?;
    drop(broker);
    Ok(())
}
