//! `sluice run`: assemble the Kafka source, the runner and the bronze sink.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sluice_connectors::decode::avro::AvroSchemas;
use sluice_connectors::decode::registry::{self, RegistryConfig, SchemaRegistry};
use sluice_connectors::delta::bronze::BronzeSink;
use sluice_connectors::delta::checkpoints::DeltaCheckpoints;
use sluice_connectors::delta::layered::LayeredSink;
use sluice_connectors::delta::quality::QualityGate;
use sluice_connectors::delta::silver::SilverSink;
use sluice_connectors::delta::stats::StatsPolicy;
use sluice_connectors::delta::subject_keys::SubjectKeyStore;
use sluice_connectors::kafka::source::{KafkaSource, SourceContext};
use sluice_pipeline::config::Config;
use sluice_pipeline::config::decode::TopicFormat;
use sluice_pipeline::health::Health;
use sluice_pipeline::lake::Lake;
use sluice_pipeline::runner;
use sluice_pipeline::{FlushPolicy, RunStats};

/// What a run did, printed at the end.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub messages: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub source_bytes: u64,
    pub rebalances: u64,
    /// Seconds from the first batch to the last commit.
    pub active_seconds: f64,
    /// CPU time (user + system) of this process.
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

impl Summary {
    fn new(stats: RunStats, rebalances: u64) -> Self {
        let (cpu_seconds, peak_rss_bytes) = resource_usage();
        Self {
            messages: stats.messages,
            rows: stats.rows,
            dead_letters: stats.dead_letters,
            commits: stats.commits,
            source_bytes: stats.source_bytes,
            rebalances,
            active_seconds: stats.active.as_secs_f64(),
            cpu_seconds,
            peak_rss_bytes,
        }
    }
}

/// CPU seconds and peak resident set of this process, from /proc (Linux).
pub fn resource_usage() -> (f64, u64) {
    // Clock ticks per second: 100 on every Linux platform sluice targets.
    const TICKS: f64 = 100.0;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0);
    (cpu, rss)
}

/// Stop flag set by SIGINT or SIGTERM.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: flushing and committing what was read");
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// The tables whose topics are Avro, with where their writer schemas come from.
fn avro_tables(config: &Config, lake: &Lake) -> anyhow::Result<HashMap<String, AvroSchemas>> {
    let mut registry: Option<Arc<SchemaRegistry>> = None;
    let mut tables = HashMap::new();
    for (topic, table) in config.bronze_tables() {
        let schemas = match config.decode.topic_format(&topic) {
            TopicFormat::Json => continue,
            TopicFormat::AvroFile(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading Avro schema file {}", path.display()))?;
                AvroSchemas::File(text.into())
            }
            TopicFormat::AvroRegistry => {
                if registry.is_none() {
                    let r = config
                        .decode
                        .schema_registry
                        .as_ref()
                        .context("Avro topics need decode.schema_registry")?;
                    let urls: Vec<String> =
                        r.url.split(',').map(|u| u.trim().to_string()).collect();
                    let env = |key: &str, v: &Option<String>| -> anyhow::Result<Option<String>> {
                        v.as_ref()
                            .map(|v| {
                                std::env::var(v).with_context(|| {
                                    format!("decode.schema_registry.{key}: environment variable {v} is not set")
                                })
                            })
                            .transpose()
                    };
                    let ca_pem = match &r.ca_file {
                        Some(f) => Some(
                            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
                        ),
                        None => None,
                    };
                    // Schemas survive a registry outage on disk, in a local lake only.
                    let cache_dir = lake.local().map(|l| {
                        l.join("_sluice/schema_registry")
                            .join(registry::cache_dir_name(&urls[0]))
                    });
                    registry = Some(Arc::new(SchemaRegistry::new(RegistryConfig {
                        urls,
                        username: env("username_env", &r.username_env)?,
                        password: env("password_env", &r.password_env)?,
                        ca_pem,
                        timeout: Duration::from_millis(r.timeout_ms),
                        cache_dir,
                        attempts: 4,
                    })?));
                }
                AvroSchemas::Registry(registry.clone().context("registry")?)
            }
        };
        tables.insert(table, schemas);
    }
    Ok(tables)
}

/// Run the bronze pipeline of `config` into `lake` until stopped (or caught up).
pub async fn run_pipeline(
    config: &Config,
    lake: &Lake,
    until_caught_up: bool,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Summary> {
    let prepared = crate::policy::prepare(config).map_err(sluice_pipeline::Error::Config)?;
    let health = Arc::new(Health::new());
    if let Some(address) = &config.metrics.address {
        crate::ops::serve(
            address,
            health.clone(),
            Duration::from_secs(config.metrics.ready_max_commit_age_seconds),
        )
        .await?;
    }
    let avro_tables = avro_tables(config, lake)?;
    let sizes = config.buffer_sizes();
    if let Some(budget) = config.pipeline.memory_budget_bytes {
        tracing::info!(
            budget_mib = budget / 1_048_576,
            prefetch_mib = sizes.prefetch_bytes / 1_048_576,
            flush_max_mib = sizes.flush_max_bytes / 1_048_576,
            decode_batch_max_messages = sizes.decode_batch_max_messages,
            "buffers sized to the memory budget"
        );
    }
    let source = KafkaSource::new(
        config,
        SourceContext {
            checkpoints: Arc::new(DeltaCheckpoints::new(config, lake)),
            avro_tables,
            health,
            until_caught_up,
        },
    )?;
    let stats = Arc::new(StatsPolicy::from_config(config));
    let bronze = BronzeSink::new(config, lake, prepared.properties, Arc::clone(&stats))?;
    let silver = SilverSink::from_config(&config.silver, lake, &config.pipeline.name, &stats);
    let quality = QualityGate::from_config(&config.quality, lake, &config.pipeline.name);
    let keys = if prepared.keyrings.is_empty() {
        None
    } else {
        let location = config.subject_key_store(lake);
        Some(
            SubjectKeyStore::open(&location, prepared.keyrings.clone())
                .await
                .with_context(|| format!("opening the subject key store {location}"))?,
        )
    };
    let mut sink = LayeredSink {
        quality,
        bronze,
        silver,
        keys,
        // Test hook: slow Delta writes down to check that memory stays bounded.
        commit_delay: std::env::var("SLUICE_TEST_COMMIT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
    };
    let policy = FlushPolicy {
        max_rows: config.bronze.flush_max_rows,
        max_bytes: sizes.flush_max_bytes,
        max_latency: Duration::from_millis(config.bronze.flush_max_latency_ms),
    };
    let (events, control, thread) = source
        .start(stop.clone())
        .context("starting the Kafka source")?;
    let result = runner::run(events, &control, &prepared.protection, &mut sink, policy).await;
    // Whatever happened, let the consumer thread finish: it forwards the last offsets to the
    // group, then leaves it.
    stop.store(true, Ordering::Relaxed);
    drop(control);
    let source_result = tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("joining the consumer thread")?
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?;
    let stats = result.context("pipeline failed; nothing uncommitted was acknowledged, a restart resumes from the last commit")?;
    let source_stats = source_result.context("the Kafka source failed")?;
    Ok(Summary::new(stats, source_stats.rebalances))
}
