//! The configuration model: one TOML file, every option with a unit in its name.
//!
//! [`Config::from_toml`] never stops at the first mistake: it collects every unknown key
//! and every bad value into a list of [`Problem`]s, so `sluice validate-config` can show
//! them all at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::lake::Lake;

pub mod anonymise;
pub mod audit;
pub mod erasure;
pub mod maintenance;
pub mod pii;
pub mod quality;
pub mod roles;
pub mod schedule;
pub mod serve;
pub mod silver;
pub mod snapshot;
pub mod sql;

/// Lineage columns every bronze table carries, in this order, after the payload columns.
pub const LINEAGE_COLUMNS: [&str; 7] = [
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_kafka_timestamp",
    "_kafka_key",
    "_ingested_at",
    "_ingest_date",
];

/// Most levels of nesting a table schema may have: delta-rs cannot read back a Delta
/// schema whose JSON nests deeper than its parser's recursion limit (128), and every level
/// of a schema takes up to three levels of that JSON.
pub const MAX_NESTING_DEPTH: usize = 40;

/// Prefixes of the columns sluice adds to its tables (lineage, change-event bookkeeping,
/// history versions). A payload field whose name starts with one of them, in any case,
/// would shadow or collide with them, so it is never made a column: its message goes to
/// the dead letters at stage `schema`.
pub const RESERVED_PREFIXES: [&str; 7] = [
    "_kafka_",
    "_ingest",
    "_cdc_",
    "_valid_",
    "_is_current",
    "_sluice",
    "__sluice",
];

/// Whether a payload field called `name` would collide with a column sluice adds (see
/// [`RESERVED_PREFIXES`]; compared without regard to ASCII case, as Delta readers
/// resolve column names).
pub fn is_reserved_name(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    })
}

/// One problem found in a configuration: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `bronze.flush_max_rows`.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

pub(crate) fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub pipeline: PipelineConfig,
    pub kafka: KafkaConfig,
    pub decode: DecodeConfig,
    pub bronze: BronzeConfig,
    pub pii: pii::PiiConfig,
    pub metrics: MetricsConfig,
    pub silver: silver::SilverConfig,
    /// Data-quality expectations by bronze table.
    pub quality: BTreeMap<String, Vec<quality::ExpectationConfig>>,
    /// What `sluice job maintain` does.
    pub maintenance: maintenance::MaintenanceConfig,
    /// Cron expressions of the jobs `sluice schedule` runs, by job.
    pub schedule: BTreeMap<String, String>,
    /// What `sluice job snapshot` pins and checks.
    pub snapshot: snapshot::SnapshotConfig,
    /// Where `sluice job erase` looks for a data subject.
    pub erasure: erasure::ErasureConfig,
    /// What `sluice job anonymise` does to aged data, and its k-anonymity checks.
    pub anonymise: anonymise::AnonymiseConfig,
    /// Where the SQL definitions (views, gold tables) live.
    pub sql: sql::SqlConfig,
    /// What each role may read through SQL.
    pub roles: BTreeMap<String, roles::RoleConfig>,
    /// The Postgres wire-protocol endpoint of `sluice serve`.
    pub serve: serve::ServeConfig,
    /// The key sealing the job-run chain.
    pub audit: audit::AuditConfig,
}

/// `[metrics]`: the HTTP endpoint of `sluice run` (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// `host:port` to serve on; none: no endpoint.
    pub address: Option<String>,
    /// How often librdkafka reports consumer lag.
    pub statistics_interval_ms: u64,
    /// `/readyz` fails when messages wait and the last commit is older than this.
    pub ready_max_commit_age_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            address: None,
            statistics_interval_ms: 5_000,
            ready_max_commit_age_seconds: 300,
        }
    }
}

/// `[pipeline]`: identity of this pipeline and where its lake lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    /// Name of the pipeline; part of every Delta transaction id (`<name>-<topic>-<partition>`).
    /// Two pipelines with different names keep separate offsets in the same table.
    pub name: String,
    /// Root of the lake: a directory, or an object store URL (`s3://bucket/prefix`,
    /// `abfss://…`, `gs://…`); `--lake` overrides it. Default `./lake`.
    pub lake: Option<String>,
    /// Upper bound of the process's resident memory (bytes) that `sluice run` sizes its
    /// buffers to: the prefetch queue, the batches in flight and the rows waiting for a
    /// commit. None: the buffer settings apply as they are.
    pub memory_budget_bytes: Option<u64>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            name: "sluice".into(),
            lake: None,
            memory_budget_bytes: None,
        }
    }
}

/// Resident memory of sluice before any data: the binary, the runtime, the Delta and
/// DataFusion machinery. A memory budget must leave room above it.
pub const MEMORY_BASELINE_BYTES: u64 = 96 * 1024 * 1024;

/// Buffer sizes under a memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    /// librdkafka's prefetch queue.
    pub prefetch_bytes: u64,
    /// Payload bytes buffered before a commit.
    pub flush_max_bytes: usize,
    /// Messages per decoded batch.
    pub decode_batch_max_messages: usize,
}

impl Config {
    /// The buffer sizes `sluice run` uses: the configured ones, lowered to fit
    /// `pipeline.memory_budget_bytes` when one is set. Above the baseline, a sixteenth of
    /// the budget goes to the prefetch queue, and the rows waiting for a commit get a
    /// sixth of it in payload bytes (their Arrow form, the Parquet being written and the
    /// batches in flight take about three times as much).
    pub fn buffer_sizes(&self) -> BufferSizes {
        let configured = BufferSizes {
            prefetch_bytes: self.kafka.max_prefetch_bytes,
            flush_max_bytes: self.bronze.flush_max_bytes,
            decode_batch_max_messages: self.kafka.decode_batch_max_messages,
        };
        let Some(budget) = self.pipeline.memory_budget_bytes else {
            return configured;
        };
        let room = budget.saturating_sub(MEMORY_BASELINE_BYTES);
        BufferSizes {
            prefetch_bytes: configured.prefetch_bytes.min((room / 16).max(1024 * 1024)),
            flush_max_bytes: configured
                .flush_max_bytes
                .min((room / 6).max(1024 * 1024) as usize),
            decode_batch_max_messages: configured.decode_batch_max_messages.min(
                // About 1 KiB per message: four batches in flight stay within a 64th.
                ((room / 64 / 1024) as usize).max(256),
            ),
        }
    }
}

/// Where to start a partition that no Delta table has offsets for yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

/// `[kafka]`: the consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group; default `sluice-<pipeline.name>`.
    pub group_id: Option<String>,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Start of a partition Delta holds no offset for.
    pub auto_offset_reset: OffsetReset,
    /// Upper bound of librdkafka's prefetch queue per consumer (`queued.max.messages.kbytes`).
    pub max_prefetch_bytes: u64,
    /// Group session timeout.
    pub session_timeout_ms: u64,
    /// Most messages decoded together into one Arrow batch.
    pub decode_batch_max_messages: usize,
    /// Longest time messages wait to be decoded together.
    pub decode_batch_max_latency_ms: u64,
    /// Extra librdkafka properties passed as they are (security, SASL, TLS ...).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, by the environment variable that
    /// holds each (`"sasl.password" = "KAFKA_SASL_PASSWORD"`): never in the config text.
    pub secret_properties: BTreeMap<String, String>,
    /// Most messages taken per second (all partitions together); none: no limit.
    pub max_messages_per_second: Option<u32>,
    /// Most payload bytes taken per second; none: no limit.
    pub max_bytes_per_second: Option<u32>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: String::new(),
            group_id: None,
            topics: Vec::new(),
            auto_offset_reset: OffsetReset::Earliest,
            max_prefetch_bytes: 64 * 1024 * 1024,
            session_timeout_ms: 10_000,
            decode_batch_max_messages: 8192,
            decode_batch_max_latency_ms: 100,
            properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
            max_messages_per_second: None,
            max_bytes_per_second: None,
        }
    }
}

/// librdkafka properties that hold secrets: refused in `kafka.properties`.
const SECRET_PROPERTIES: [&str; 5] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "ssl.key.pem",
];

impl KafkaConfig {
    /// Problems of the security settings, named by their key.
    fn check_security(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let at = |k: &str| format!("kafka.properties.\"{k}\"");
        for k in SECRET_PROPERTIES {
            if self.properties.contains_key(k) {
                p.push(Problem::new(
                    at(k),
                    format!("a secret in the config text: name an environment variable in kafka.secret_properties.\"{k}\" instead"),
                ));
            }
        }
        let all = self.properties.iter().chain(self.secret_properties.iter());
        for (k, v) in all {
            if self.properties.contains_key(k) && self.secret_properties.contains_key(k) {
                p.push(Problem::new(
                    at(k),
                    "set both here and in kafka.secret_properties",
                ));
            }
            match k.as_str() {
                "security.protocol"
                    if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                        .contains(&v.to_ascii_lowercase().as_str()) =>
                {
                    p.push(Problem::new(
                        at(k),
                        format!("'{v}' is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
                    ))
                }
                "sasl.mechanism" | "sasl.mechanisms"
                    if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]
                        .contains(&v.to_ascii_uppercase().as_str()) =>
                {
                    p.push(Problem::new(
                        at(k),
                        format!("'{v}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI, OAUTHBEARER"),
                    ))
                }
                _ => {}
            }
        }
        p
    }

    /// `properties` plus the secret ones read from the environment; a variable that is not
    /// set is a problem naming the property and the variable, never a value.
    pub fn resolved_properties(
        &self,
    ) -> std::result::Result<BTreeMap<String, String>, Vec<Problem>> {
        let mut out = self.properties.clone();
        let mut problems = Vec::new();
        for (k, var) in &self.secret_properties {
            match std::env::var(var) {
                Ok(v) => {
                    out.insert(k.clone(), v);
                }
                Err(_) => problems.push(Problem::new(
                    format!("kafka.secret_properties.\"{k}\""),
                    format!("environment variable {var} is not set"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The consumer group, derived from the pipeline name when not set.
    pub fn group_id(&self, pipeline: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{pipeline}"))
    }
}

/// Message formats the decoder understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    /// Avro: Confluent wire format with a Schema Registry, or plain bodies with a schema file.
    Avro,
}

/// `[decode]`: turning message bytes into rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DecodeConfig {
    /// Format of every topic not listed in `decode.topics`.
    pub format: Format,
    /// A larger message (key and value together) goes to the dead-letter table whole, at
    /// stage `limit`.
    pub max_message_bytes: usize,
    /// Objects and arrays nested inside a message's top-level object, at most (a message
    /// deeper than this goes to the dead letters at stage `limit`). Also bounds the
    /// nesting of every table schema sluice creates or evolves; at most
    /// [`MAX_NESTING_DEPTH`].
    pub max_nesting_depth: usize,
    /// Fields of one message, counted at every level of nesting, at most (beyond: stage
    /// `limit`).
    pub max_fields: usize,
    /// Columns a table may hold, counted at every level of nesting: a message that would
    /// widen a table beyond this goes to the dead letters at stage `schema`.
    pub max_columns: usize,
    /// Columns one decoded batch may add to a table (beyond: stage `schema`), so a
    /// producer inventing a field name per message cannot make every message a schema
    /// change.
    pub max_new_columns_per_batch: usize,
    /// Where Avro writer schemas are fetched by id.
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// Per-topic settings, by topic name.
    pub topics: BTreeMap<String, TopicDecodeConfig>,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            format: Format::Json,
            max_message_bytes: 1024 * 1024,
            max_nesting_depth: 32,
            max_fields: 2_000,
            max_columns: 2_000,
            max_new_columns_per_batch: 100,
            schema_registry: None,
            topics: BTreeMap::new(),
        }
    }
}

/// `[decode.topics."<topic>"]`: how one topic's messages are written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TopicDecodeConfig {
    /// Overrides `decode.format`.
    pub format: Option<Format>,
    /// Avro without a registry: every message is a plain Avro body written with this
    /// schema (a `.avsc` file; relative paths are from the working directory).
    pub schema_file: Option<PathBuf>,
}

/// `[decode.schema_registry]`: a Confluent-compatible Schema Registry.
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaRegistryConfig {
    /// Base URL(s), comma-separated, tried in order.
    pub url: String,
    /// Environment variables holding basic-auth credentials (e.g. an API key and
    /// secret); read by `sluice run`, which stops if one is not set.
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// PEM file of a private CA to trust for an `https` registry.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_registry_timeout_ms() -> u64 {
    10_000
}

/// How one topic is decoded, resolved from `[decode]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicFormat {
    Json,
    /// Confluent wire format, schemas from the registry.
    AvroRegistry,
    /// Plain Avro bodies written with the schema of this file.
    AvroFile(PathBuf),
}

impl DecodeConfig {
    /// How messages of `topic` are decoded.
    pub fn topic_format(&self, topic: &str) -> TopicFormat {
        let t = self.topics.get(topic);
        match t.and_then(|t| t.format).unwrap_or(self.format) {
            Format::Json => TopicFormat::Json,
            Format::Avro => match t.and_then(|t| t.schema_file.clone()) {
                Some(f) => TopicFormat::AvroFile(f),
                None => TopicFormat::AvroRegistry,
            },
        }
    }

    fn validate(&self, topics: &[String], routes: &BTreeMap<String, String>) -> Vec<Problem> {
        let mut p = Vec::new();
        for (topic, t) in &self.topics {
            let at = format!("decode.topics.\"{topic}\"");
            if !topics.contains(topic) {
                p.push(Problem::new(&at, "not one of kafka.topics"));
            }
            if let Some(f) = &t.schema_file {
                if t.format.unwrap_or(self.format) != Format::Avro {
                    p.push(Problem::new(
                        format!("{at}.schema_file"),
                        "only Avro topics take a schema file: add format = \"avro\"",
                    ));
                } else if let Err(e) = std::fs::read_to_string(f) {
                    p.push(Problem::new(
                        format!("{at}.schema_file"),
                        format!("cannot read {}: {e}", f.display()),
                    ));
                }
            }
        }
        let registry_needed = topics
            .iter()
            .any(|t| self.topic_format(t) == TopicFormat::AvroRegistry);
        match &self.schema_registry {
            None if registry_needed => p.push(Problem::new(
                "decode.schema_registry.url",
                "missing: Avro topics without a schema_file need a schema registry",
            )),
            None => {}
            Some(r) => {
                let urls: Vec<&str> = r.url.split(',').map(str::trim).collect();
                if urls.iter().any(|u| {
                    !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10
                }) {
                    p.push(Problem::new(
                        "decode.schema_registry.url",
                        format!("'{}' is not a list of http(s) URLs", r.url),
                    ));
                }
                if r.password_env.is_some() && r.username_env.is_none() {
                    p.push(Problem::new(
                        "decode.schema_registry.username_env",
                        "missing: a password needs a user name",
                    ));
                }
                if let Some(f) = &r.ca_file
                    && let Err(e) = std::fs::read(f)
                {
                    p.push(Problem::new(
                        "decode.schema_registry.ca_file",
                        format!("cannot read {}: {e}", f.display()),
                    ));
                }
                if r.timeout_ms == 0 {
                    p.push(Problem::new(
                        "decode.schema_registry.timeout_ms",
                        "must be greater than 0",
                    ));
                }
            }
        }
        // A table's decoder reads one format.
        let mut by_table: BTreeMap<&str, (&str, TopicFormat)> = BTreeMap::new();
        for (topic, table) in routes {
            let f = self.topic_format(topic);
            match by_table.get(table.as_str()) {
                Some((other, g)) if *g != f => p.push(Problem::new(
                    format!("decode.topics.\"{topic}\""),
                    format!(
                        "topic '{other}' feeds table '{table}' too but in another format or schema file; give a table one format"
                    ),
                )),
                Some(_) => {}
                None => {
                    by_table.insert(table, (topic, f));
                }
            }
        }
        p
    }
}

/// `[bronze]`: the raw, append-only tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BronzeConfig {
    /// Commit when this many rows are buffered (all tables together).
    pub flush_max_rows: usize,
    /// Commit when this many payload bytes are buffered.
    pub flush_max_bytes: usize,
    /// Commit at the latest this long after the first buffered row arrived.
    pub flush_max_latency_ms: u64,
    /// Parquet files roll over at about this size.
    pub target_file_size_bytes: u64,
    /// Partition columns of bronze tables created by sluice; `[]` for none.
    pub partition_by: Vec<String>,
    /// Add new nullable fields seen in messages to the table schema.
    pub schema_evolution: bool,
    /// Topic → table name. Topics not listed go to a table named after the topic.
    pub routes: BTreeMap<String, String>,
    /// Per-table settings, by table name.
    pub tables: BTreeMap<String, TableConfig>,
}

impl Default for BronzeConfig {
    fn default() -> Self {
        Self {
            flush_max_rows: 500_000,
            flush_max_bytes: 128 * 1024 * 1024,
            flush_max_latency_ms: 10_000,
            target_file_size_bytes: 128 * 1024 * 1024,
            partition_by: vec!["_ingest_date".into()],
            schema_evolution: true,
            routes: BTreeMap::new(),
            tables: BTreeMap::new(),
        }
    }
}

/// `[bronze.tables.<name>]`: settings of one table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TableConfig {
    /// Payload columns. Empty: inferred from the first batch, then fixed (and evolved).
    pub schema: Vec<ColumnConfig>,
    /// Overrides `bronze.partition_by` for this table.
    pub partition_by: Option<Vec<String>>,
}

/// One payload column of a declared schema.
#[derive(Debug, Clone, Deserialize)]
pub struct ColumnConfig {
    pub name: String,
    /// One of `string`, `long`, `integer`, `double`, `boolean`, `timestamp`, `date`, `binary`.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// Map a config type name to the Arrow type used in the table.
pub fn parse_type(name: &str) -> Option<DataType> {
    Some(match name {
        "string" => DataType::Utf8,
        "long" => DataType::Int64,
        "integer" => DataType::Int32,
        "double" => DataType::Float64,
        "boolean" => DataType::Boolean,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "date" => DataType::Date32,
        "binary" => DataType::Binary,
        _ => return None,
    })
}

/// Normalise a topic name into a table name: lower case, `[a-z0-9_]` only.
pub fn table_name_for_topic(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `name` is `<layer>.<table>` with a layer of the lake.
pub(crate) fn is_table_name(name: &str) -> bool {
    let mut parts = name.splitn(2, '.');
    matches!(parts.next(), Some("bronze" | "silver" | "gold" | "sluice"))
        && parts.next().is_some_and(|n| !n.is_empty())
}

pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(Error::Config)
    }

    /// Parse and validate, returning every problem found.
    pub fn from_toml(text: &str) -> std::result::Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let deserializer = match toml::Deserializer::parse(text) {
            Ok(d) => d,
            Err(e) => return Err(vec![Problem::new("", format!("not valid TOML: {e}"))]),
        };
        let parsed: std::result::Result<Config, _> =
            serde_ignored::deserialize(deserializer, |path| {
                problems.push(Problem::new(path.to_string(), "unknown key"));
            });
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                problems.push(Problem::new("", e.to_string().trim().to_string()));
                return Err(problems);
            }
        };
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Check the values; every problem is returned, none is fatal on its own.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(lake) = &self.pipeline.lake
            && let Err(e) = Lake::parse(lake)
        {
            p.push(Problem::new("pipeline.lake", e));
        }
        let name = &self.pipeline.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            p.push(Problem::new(
                "pipeline.name",
                "must be non-empty and use only letters, digits, '-' and '_'",
            ));
        }
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            p.push(Problem::new(
                "kafka.bootstrap_servers",
                "missing: give the brokers as host:port[,host:port]",
            ));
        }
        if k.topics.is_empty() {
            p.push(Problem::new(
                "kafka.topics",
                "missing: list at least one topic to consume",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &k.topics {
            if t.is_empty() || t.len() > 249 {
                p.push(Problem::new(
                    "kafka.topics",
                    format!("'{t}' is not a valid topic name"),
                ));
            } else if !seen.insert(t) {
                p.push(Problem::new(
                    "kafka.topics",
                    format!("'{t}' is listed twice"),
                ));
            }
        }
        if matches!(&k.group_id, Some(g) if g.is_empty()) {
            p.push(Problem::new("kafka.group_id", "must not be empty"));
        }
        if k.max_prefetch_bytes < 1024 {
            p.push(Problem::new(
                "kafka.max_prefetch_bytes",
                "must be at least 1024",
            ));
        }
        if k.session_timeout_ms < 1000 {
            p.push(Problem::new(
                "kafka.session_timeout_ms",
                "must be at least 1000",
            ));
        }
        p.extend(k.check_security());
        for (key, v) in [
            ("kafka.max_messages_per_second", k.max_messages_per_second),
            ("kafka.max_bytes_per_second", k.max_bytes_per_second),
        ] {
            if v == Some(0) {
                p.push(Problem::new(
                    key,
                    "must be greater than 0 (leave it out for no limit)",
                ));
            }
        }
        if k.decode_batch_max_messages == 0 {
            p.push(Problem::new(
                "kafka.decode_batch_max_messages",
                "must be greater than 0",
            ));
        }
        if let Some(b) = self.pipeline.memory_budget_bytes
            && b < 2 * MEMORY_BASELINE_BYTES
        {
            p.push(Problem::new(
                "pipeline.memory_budget_bytes",
                format!(
                    "must be at least {} (sluice itself needs about {} MiB)",
                    2 * MEMORY_BASELINE_BYTES,
                    MEMORY_BASELINE_BYTES / 1024 / 1024
                ),
            ));
        }
        for (key, v) in [
            ("decode.max_message_bytes", self.decode.max_message_bytes),
            ("decode.max_fields", self.decode.max_fields),
            ("decode.max_columns", self.decode.max_columns),
            (
                "decode.max_new_columns_per_batch",
                self.decode.max_new_columns_per_batch,
            ),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be greater than 0"));
            }
        }
        if self.decode.max_nesting_depth > MAX_NESTING_DEPTH {
            p.push(Problem::new(
                "decode.max_nesting_depth",
                format!(
                    "at most {MAX_NESTING_DEPTH}: deeper table schemas cannot be read back from the Delta log"
                ),
            ));
        }
        p.extend(self.decode.validate(&k.topics, &self.bronze_tables()));
        let b = &self.bronze;
        if b.flush_max_rows == 0 {
            p.push(Problem::new(
                "bronze.flush_max_rows",
                "must be greater than 0",
            ));
        }
        if b.flush_max_bytes == 0 {
            p.push(Problem::new(
                "bronze.flush_max_bytes",
                "must be greater than 0",
            ));
        }
        if b.flush_max_latency_ms == 0 {
            p.push(Problem::new(
                "bronze.flush_max_latency_ms",
                "must be greater than 0",
            ));
        }
        if b.target_file_size_bytes < 1024 * 1024 {
            p.push(Problem::new(
                "bronze.target_file_size_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        for (topic, table) in &b.routes {
            if !k.topics.contains(topic) {
                p.push(Problem::new(
                    format!("bronze.routes.{topic}"),
                    "routes a topic that kafka.topics does not list",
                ));
            }
            if !is_identifier(table) {
                p.push(Problem::new(
                    format!("bronze.routes.{topic}"),
                    format!(
                        "'{table}' is not a table name: use [a-z0-9_], not starting with a digit"
                    ),
                ));
            }
        }
        for topic in &k.topics {
            if !b.routes.contains_key(topic) && !is_identifier(&table_name_for_topic(topic)) {
                p.push(Problem::new(
                    "kafka.topics",
                    format!("topic '{topic}' makes no valid table name: add a bronze.routes entry"),
                ));
            }
        }
        let tables: Vec<String> = self.bronze_tables().into_values().collect();
        self.check_partition_columns("bronze.partition_by", &b.partition_by, &[], &mut p);
        for (name, t) in &b.tables {
            let at = format!("bronze.tables.{name}");
            if !tables.contains(name) {
                p.push(Problem::new(&at, "no topic is routed to this table"));
            }
            let mut cols = std::collections::BTreeSet::new();
            for (i, c) in t.schema.iter().enumerate() {
                let cat = format!("{at}.schema[{i}]");
                if c.name.is_empty() || c.name.starts_with('_') {
                    p.push(Problem::new(&cat, "column names must be non-empty and not start with '_' (reserved for lineage)"));
                }
                if !cols.insert(c.name.as_str()) {
                    p.push(Problem::new(
                        &cat,
                        format!("column '{}' is declared twice", c.name),
                    ));
                }
                if parse_type(&c.data_type).is_none() {
                    p.push(Problem::new(&cat, format!("unknown type '{}': use string, long, integer, double, boolean, timestamp, date or binary", c.data_type)));
                }
            }
            if let Some(parts) = &t.partition_by {
                let declared: Vec<&str> = t.schema.iter().map(|c| c.name.as_str()).collect();
                self.check_partition_columns(
                    &format!("{at}.partition_by"),
                    parts,
                    &declared,
                    &mut p,
                );
            }
        }
        if let Some(a) = &self.metrics.address
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(Problem::new(
                "metrics.address",
                "not an address: give host:port, e.g. 0.0.0.0:9898",
            ));
        }
        p.extend(self.validate_pii());
        p.extend(self.validate_silver());
        p.extend(self.validate_quality());
        p.extend(self.validate_maintenance());
        p.extend(self.validate_schedule());
        p.extend(self.validate_snapshot());
        p.extend(self.validate_erasure());
        p.extend(self.validate_anonymise());
        p.extend(self.validate_roles());
        p.extend(self.validate_serve());
        p.extend(self.validate_audit());
        p
    }

    fn check_partition_columns(
        &self,
        at: &str,
        parts: &[String],
        declared: &[&str],
        p: &mut Vec<Problem>,
    ) {
        for c in parts {
            let lineage = ["_kafka_topic", "_kafka_partition", "_ingest_date"];
            if !lineage.contains(&c.as_str()) && !declared.contains(&c.as_str()) {
                p.push(Problem::new(at, format!("cannot partition by '{c}': use _ingest_date, _kafka_topic, _kafka_partition or a declared column")));
            }
        }
    }

    /// Topic → bronze table name, for every configured topic.
    pub fn bronze_tables(&self) -> BTreeMap<String, String> {
        self.kafka
            .topics
            .iter()
            .map(|t| {
                let table = self
                    .bronze
                    .routes
                    .get(t)
                    .cloned()
                    .unwrap_or_else(|| table_name_for_topic(t));
                (t.clone(), table)
            })
            .collect()
    }

    /// The payload schema declared for a table, if any.
    pub fn declared_schema(&self, table: &str) -> Option<SchemaRef> {
        let t = self.bronze.tables.get(table)?;
        if t.schema.is_empty() {
            return None;
        }
        let fields: Vec<Field> = t
            .schema
            .iter()
            .filter_map(|c| parse_type(&c.data_type).map(|dt| Field::new(&c.name, dt, true)))
            .collect();
        Some(Arc::new(Schema::new(fields)))
    }

    /// Partition columns of a table.
    pub fn partition_by(&self, table: &str) -> Vec<String> {
        self.bronze
            .tables
            .get(table)
            .and_then(|t| t.partition_by.clone())
            .unwrap_or_else(|| self.bronze.partition_by.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_lake_scheme_is_refused_and_object_stores_accepted() {
        let config = |lake: &str| {
            Config::from_toml(&format!(
                "[pipeline]\nlake = \"{lake}\"\n\
                 [kafka]\nbootstrap_servers = \"localhost:9092\"\ntopics = [\"t\"]\n"
            ))
        };
        let Err(problems) = config("ftp://bank/lake") else {
            panic!("an ftp:// lake was accepted");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = problems[0].to_string();
        assert!(
            text.starts_with("pipeline.lake: 'ftp://' is not a supported lake location"),
            "{text}"
        );
        assert!(config("s3://bank/lake").is_ok());
    }

    #[test]
    fn minimal_config_is_valid_and_takes_defaults() {
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"localhost:9092\"\ntopics = [\"txn-events\"]\n",
        )
        .expect("valid");
        assert_eq!(c.bronze.flush_max_rows, 500_000);
        assert_eq!(c.kafka.group_id("sluice"), "sluice-sluice");
        assert_eq!(c.bronze_tables()["txn-events"], "txn_events");
    }

    #[test]
    fn kafka_security_mistakes_name_their_key_and_secrets_stay_out_of_the_text() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9093\"\ntopics = [\"t\"]\n\
             [kafka.properties]\n\"security.protocol\" = \"SASL_TLS\"\n\"sasl.mechanism\" = \"SCRAM\"\n\
             \"sasl.password\" = \"hunter2\"\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(
            all.contains("kafka.properties.\"security.protocol\": 'SASL_TLS'"),
            "{all}"
        );
        assert!(all.contains("kafka.properties.\"sasl.mechanism\""), "{all}");
        assert!(
            all.contains("kafka.secret_properties.\"sasl.password\" instead"),
            "{all}"
        );
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9093\"\ntopics = [\"t\"]\n\
             [kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
             [kafka.secret_properties]\n\"sasl.password\" = \"SLUICE_TEST_UNSET_SASL_PASSWORD\"\n",
        )
        .expect("valid");
        let e = c.kafka.resolved_properties().expect_err("unset");
        assert!(
            e[0].to_string()
                .contains("SLUICE_TEST_UNSET_SASL_PASSWORD is not set"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn avro_topics_need_a_registry_or_a_schema_file_and_a_table_reads_one_format() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"a\", \"b\", \"c\"]\n\
             [bronze.routes]\na = \"t\"\nb = \"t\"\n\
             [decode]\nformat = \"avro\"\n\
             [decode.topics.b]\nformat = \"json\"\n\
             [decode.topics.c]\nformat = \"json\"\nschema_file = \"c.avsc\"\n\
             [decode.topics.d]\nformat = \"avro\"\n",
        )
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for expected in [
            "decode.schema_registry.url: missing",
            "decode.topics.\"d\": not one of kafka.topics",
            "decode.topics.\"c\".schema_file: only Avro topics take a schema file",
            "topic 'a' feeds table 't' too but in another format",
        ] {
            assert!(all.contains(expected), "{expected} not in:\n{all}");
        }
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"a\", \"b\"]\n\
             [decode]\nformat = \"avro\"\n[decode.schema_registry]\nurl = \"http://sr:8081\"\n\
             [decode.topics.b]\nformat = \"json\"\n",
        )
        .expect("valid");
        assert_eq!(c.decode.topic_format("a"), TopicFormat::AvroRegistry);
        assert_eq!(c.decode.topic_format("b"), TopicFormat::Json);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"\"\ncolour = \"red\"\n[bronze]\nflush_max_rows = 0\nflush_latency = 5\n[bronze.routes]\nmissing = \"x\"\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"kafka.colour"), "{paths:?}");
        assert!(paths.contains(&"bronze.flush_latency"), "{paths:?}");
        assert!(paths.contains(&"kafka.bootstrap_servers"), "{paths:?}");
        assert!(paths.contains(&"kafka.topics"), "{paths:?}");
        assert!(paths.contains(&"bronze.flush_max_rows"), "{paths:?}");
        assert!(paths.contains(&"bronze.routes.missing"), "{paths:?}");
    }

    #[test]
    fn declared_schema_rejects_unknown_types_and_reserved_names() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"b:9092\"\ntopics = [\"t\"]\n[bronze.tables.t]\nschema = [{name = \"a\", type = \"text\"}, {name = \"_x\", type = \"long\"}]\n",
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
