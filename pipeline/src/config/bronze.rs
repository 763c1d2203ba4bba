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
//! headers = { traceparent = "string", x-signature = "binary" }   # into `_kafka_headers`
//! ```

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, TimeUnit};
use serde::Deserialize;

use super::check::{Problem, is_identifier};
use crate::columns::REFUSED_NAME_CHARACTERS;
use crate::lineage::HeaderSpec;

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
    /// Kafka headers to capture, name → `string` or `binary`, as fields of the struct
    /// column `_kafka_headers`. Empty: headers are not read.
    pub headers: BTreeMap<String, String>,
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

/// The Arrow type of a captured header declared as `name` (`string` or `binary`).
fn header_type(name: &str) -> Option<DataType> {
    match name {
        "string" => Some(DataType::Utf8),
        "binary" => Some(DataType::Binary),
        _ => None,
    }
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

    /// The headers `table` captures, if it declares any.
    pub fn header_spec(&self, table: &str) -> Option<HeaderSpec> {
        let declared = &self.tables.get(table)?.headers;
        if declared.is_empty() {
            return None;
        }
        let headers = declared
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), header_type(t)?)))
            .collect();
        Some(HeaderSpec::new(headers))
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
            for (name, kind) in &t.headers {
                let hat = format!("{at}.headers.{name}");
                if name.is_empty()
                    || name
                        .chars()
                        .any(|c| c.is_control() || REFUSED_NAME_CHARACTERS.contains(c))
                {
                    p.push(Problem::new(&hat, "a header name must be non-empty and hold no space, none of ,;{}()=. and no control character (it names a column)"));
                }
                if let Some(other) = t
                    .headers
                    .keys()
                    .find(|o| *o < name && o.to_lowercase() == name.to_lowercase())
                {
                    p.push(Problem::new(&hat, format!("differs only in case from header '{other}' (Delta readers take them for one column)")));
                }
                if header_type(kind).is_none() {
                    p.push(Problem::new(
                        &hat,
                        format!("unknown header type '{kind}': use string or binary"),
                    ));
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

    #[test]
    fn declared_headers_become_one_sorted_struct_and_bad_ones_are_refused() {
        let base = "[kafka]\nbootstrap_servers = \"b:9092\"\ntopics = [\"t\"]\n[bronze.tables.t]\n";
        let c = Config::from_toml(&format!(
            "{base}headers = {{ \"x-sig\" = \"binary\", \"Trace-Id\" = \"string\", \"ü\" = \"string\" }}\n"
        ))
        .expect("valid");
        let spec = c.bronze.header_spec("t").expect("declared");
        let names: Vec<&str> = spec.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Trace-Id", "x-sig", "ü"], "byte order, case kept");
        assert_eq!(spec.position("ü".as_bytes()), Some(2));
        assert_eq!(spec.position(b"trace-id"), None, "names match exactly");
        assert!(c.bronze.header_spec("other").is_none());
        let problems = Config::from_toml(&format!(
            "{base}headers = {{ \"a.b\" = \"string\", \"\" = \"binary\", c = \"long\", \"x y\" = \"string\", \"tab\\t\" = \"string\", \"Ärger\" = \"string\", \"äRGER\" = \"binary\" }}\n"
        ))
        .expect_err("invalid");
        assert_eq!(problems.len(), 6, "{problems:?}");
    }
}
