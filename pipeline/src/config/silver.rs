//! `[silver]`: current-state tables maintained from change-data-capture streams.
//!
//! Each `[silver.tables.<name>]` reads the change events (Debezium envelopes: `op`,
//! `before`, `after`, `source`, `ts_ms`) of some topics and keeps one row per primary key
//! in `<lake>/silver/<name>` by Delta MERGE. The events themselves land in the topics'
//! bronze tables as usual, protected by the PII policy first, so silver only ever sees
//! protected values.
//!
//! ```toml
//! [silver.tables.customers]
//! topics = ["bank.public.customers"]   # change events of the table
//! key = ["customer_id"]                # primary key columns of the row
//! sequence = "source.lsn"              # default "auto": source.lsn, else source.ts_ms
//!
//! [silver.tables.accounts]
//! topics = ["bank.all"]                # one topic carrying several tables:
//! source_table = "accounts"            # keep the events whose source.table is this
//! key = ["account_id"]
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::check::{Problem, is_identifier};

/// `[silver]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SilverConfig {
    /// Current-state tables by name.
    pub tables: BTreeMap<String, SilverTableConfig>,
}

/// `[silver.tables.<name>]`: one current-state table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SilverTableConfig {
    /// Topics whose change events feed the table (each must be in `kafka.topics`).
    pub topics: Vec<String>,
    /// Primary key: columns of the row image (`after`, or `before` for deletes).
    pub key: Vec<String>,
    /// Only events whose `source.table` equals this (topics carrying several tables).
    pub source_table: Option<String>,
    /// Order of the changes of one key: `auto` (default: `source.lsn` where present,
    /// else `source.ts_ms`), or the dotted path of an integer field of the envelope.
    /// Ties, and events without a sequence, are ordered by Kafka offset.
    pub sequence: Option<String>,
    /// Partition columns of the silver table (columns of the row); none by default.
    pub partition_by: Vec<String>,
    /// Keep an SCD type 2 history in `silver.<name>_history` as well.
    pub history: Option<HistoryConfig>,
}

/// `[silver.tables.<name>.history]`: SCD type 2 versions of every row.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HistoryConfig {
    /// A change of one of these columns opens a new version; a change of other columns
    /// updates the current version in place. Empty: every column is tracked.
    pub tracked: Vec<String>,
}

/// Fields of a Debezium envelope.
pub const ENVELOPE_FIELDS: [&str; 5] = ["op", "before", "after", "source", "ts_ms"];

impl SilverTableConfig {
    /// The sequence setting, `auto` when not given.
    pub fn sequence(&self) -> &str {
        self.sequence.as_deref().unwrap_or("auto")
    }
}

impl SilverConfig {
    /// Problems of the `[silver]` section, its topics checked against `topics` (those of
    /// `[kafka]`).
    pub(crate) fn validate(&self, topics: &[String]) -> Vec<Problem> {
        let mut p = Vec::new();
        for (name, t) in &self.tables {
            let at = format!("silver.tables.{name}");
            if !is_identifier(name) {
                p.push(Problem::new(
                    &at,
                    "not a table name: use [a-z0-9_], not starting with a digit",
                ));
            }
            if t.topics.is_empty() {
                p.push(Problem::new(
                    format!("{at}.topics"),
                    "missing: list the topics carrying the table's change events",
                ));
            }
            for topic in &t.topics {
                if !topics.contains(topic) {
                    p.push(Problem::new(
                        format!("{at}.topics"),
                        format!("'{topic}' is not one of kafka.topics"),
                    ));
                }
            }
            if t.key.is_empty() {
                p.push(Problem::new(
                    format!("{at}.key"),
                    "missing: name the primary key column(s) of the rows",
                ));
            }
            let mut seen = BTreeSet::new();
            for k in &t.key {
                if k.is_empty() || k.starts_with('_') || k.contains('.') {
                    p.push(Problem::new(
                        format!("{at}.key"),
                        format!("'{k}' is not a top-level column of the row"),
                    ));
                }
                if !seen.insert(k) {
                    p.push(Problem::new(
                        format!("{at}.key"),
                        format!("'{k}' is listed twice"),
                    ));
                }
            }
            if let Some(s) = &t.sequence
                && s != "auto"
                && (s.is_empty() || s.split('.').any(str::is_empty))
            {
                p.push(Problem::new(
                    format!("{at}.sequence"),
                    "give `auto` or the dotted path of an integer field, e.g. source.lsn",
                ));
            }
            for c in t.history.iter().flat_map(|h| &h.tracked) {
                if c.starts_with('_') || c.contains('.') || t.key.contains(c) {
                    p.push(Problem::new(
                        format!("{at}.history.tracked"),
                        format!("'{c}' is not a non-key column of the row"),
                    ));
                }
            }
            for c in &t.partition_by {
                if c.starts_with('_') || c.contains('.') {
                    p.push(Problem::new(
                        format!("{at}.partition_by"),
                        format!("'{c}' is not a column of the row"),
                    ));
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn silver_mistakes_are_listed_with_their_keys() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"cdc.customers\"]\n\
             [bronze.routes]\n\"cdc.customers\" = \"customers_changes\"\n\
             [silver.tables.customers]\ntopics = [\"cdc.customer\"]\nkey = []\ncolour = 1\n",
        )
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("silver.tables.customers.colour: unknown key"),
            "{all}"
        );
        assert!(
            all.contains(
                "silver.tables.customers.topics: 'cdc.customer' is not one of kafka.topics"
            ),
            "{all}"
        );
        assert!(
            all.contains("silver.tables.customers.key: missing"),
            "{all}"
        );
    }

    #[test]
    fn change_event_tables_are_the_bronze_tables_of_silver_topics() {
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"cdc.customers\", \"txn\"]\n\
             [silver.tables.customers]\ntopics = [\"cdc.customers\"]\nkey = [\"customer_id\"]\n",
        )
        .expect("valid");
        assert_eq!(
            c.cdc_bronze_tables().into_iter().collect::<Vec<_>>(),
            vec!["cdc_customers".to_string()]
        );
        assert_eq!(c.silver.tables["customers"].sequence(), "auto");
    }
}
