//! `[bronze]`: the raw, append-only tables — when buffered rows are committed, how files
//! are sized and partitioned, which topic lands in which table, and the schemas declared
//! for tables that should not be inferred.
//!
//! ```toml
//! [bronze]
//! flush_max_rows = 500000             # commit at this many rows buffered...
//! flush_max_latency_ms = 10000        # ...or this long after the first one arrived
//! partition_by = ["_ingest_date"]
//! [bronze.routes]
//! "bank.public.customers" = "customers_changes"   # default: the topic's name, normalised
//! [bronze.tables.card_transactions]
//! schema = [{ name = "amount_gbp", type = "double" }, { name = "merchant", type = "string" }]
//! ```

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, TimeUnit};
use serde::Deserialize;

use super::check::{Problem, is_identifier};

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

impl BronzeConfig {
    /// The table `topic` lands in: its route, else its name made a table name.
    pub fn table_of(&self, topic: &str) -> String {
        self.routes
            .get(topic)
            .cloned()
            .unwrap_or_else(|| table_name_for_topic(topic))
    }

    /// Problems of the `[bronze]` section, its routes checked against `topics` (those of
    /// `[kafka]`).
    pub(crate) fn validate(&self, topics: &[String]) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.flush_max_rows == 0 {
            p.push(Problem::new(
                "bronze.flush_max_rows",
                "must be greater than 0",
            ));
        }
        if self.flush_max_bytes == 0 {
            p.push(Problem::new(
                "bronze.flush_max_bytes",
                "must be greater than 0",
            ));
        }
        if self.flush_max_latency_ms == 0 {
            p.push(Problem::new(
                "bronze.flush_max_latency_ms",
                "must be greater than 0",
            ));
        }
        if self.target_file_size_bytes < 1024 * 1024 {
            p.push(Problem::new(
                "bronze.target_file_size_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        for (topic, table) in &self.routes {
            if !topics.contains(topic) {
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
        for topic in topics {
            if !self.routes.contains_key(topic) && !is_identifier(&table_name_for_topic(topic)) {
                p.push(Problem::new(
                    "kafka.topics",
                    format!("topic '{topic}' makes no valid table name: add a bronze.routes entry"),
                ));
            }
        }
        check_partition_columns("bronze.partition_by", &self.partition_by, &[], &mut p);
        for (name, t) in &self.tables {
            let at = format!("bronze.tables.{name}");
            if !topics.iter().any(|topic| self.table_of(topic) == *name) {
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
                check_partition_columns(&format!("{at}.partition_by"), parts, &declared, &mut p);
            }
        }
        p
    }
}

/// Partition columns `parts` (at `at`) must be lineage columns or `declared` ones.
fn check_partition_columns(at: &str, parts: &[String], declared: &[&str], p: &mut Vec<Problem>) {
    for c in parts {
        let lineage = ["_kafka_topic", "_kafka_partition", "_ingest_date"];
        if !lineage.contains(&c.as_str()) && !declared.contains(&c.as_str()) {
            p.push(Problem::new(at, format!("cannot partition by '{c}': use _ingest_date, _kafka_topic, _kafka_partition or a declared column")));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn declared_schema_rejects_unknown_types_and_reserved_names() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"b:9092\"\ntopics = [\"t\"]\n[bronze.tables.t]\nschema = [{name = \"a\", type = \"text\"}, {name = \"_x\", type = \"long\"}]\n",
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
