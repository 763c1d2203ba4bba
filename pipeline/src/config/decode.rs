//! `[decode]`: turning message bytes into rows — the format of each topic (JSON, or Avro
//! with a Schema Registry or a schema file), and the limits a message must stay within.
//!
//! ```toml
//! [decode]
//! format = "avro"                     # every topic not listed below
//! max_message_bytes = 1048576         # larger: a dead letter at stage `limit`
//! [decode.schema_registry]
//! url = "http://registry:8081"
//! [decode.topics."card-payments"]
//! format = "json"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::check::Problem;

/// Most levels of nesting a table schema may have: delta-rs cannot read back a Delta
/// schema whose JSON nests deeper than its parser's recursion limit (128), and every level
/// of a schema takes up to three levels of that JSON.
pub const MAX_NESTING_DEPTH: usize = 40;

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

    /// Problems of the `[decode]` section: its limits, and its per-topic settings against
    /// `topics` (those of `[kafka]`) and `routes` (the bronze table of each topic).
    pub(crate) fn validate(
        &self,
        topics: &[String],
        routes: &BTreeMap<String, String>,
    ) -> Vec<Problem> {
        let mut p = Vec::new();
        for (key, v) in [
            ("decode.max_message_bytes", self.max_message_bytes),
            ("decode.max_fields", self.max_fields),
            ("decode.max_columns", self.max_columns),
            (
                "decode.max_new_columns_per_batch",
                self.max_new_columns_per_batch,
            ),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be greater than 0"));
            }
        }
        if self.max_nesting_depth > MAX_NESTING_DEPTH {
            p.push(Problem::new(
                "decode.max_nesting_depth",
                format!(
                    "at most {MAX_NESTING_DEPTH}: deeper table schemas cannot be read back from the Delta log"
                ),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::TopicFormat;
    use crate::config::Config;

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
}
