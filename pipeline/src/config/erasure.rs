//! `[erasure]`: where `sluice job erase` looks for a data subject.
//!
//! ```toml
//! [erasure]
//! # Columns holding a subject's identifier, in every table that has them (exact match of
//! # the raw value or of its pseudonym under any tokenize/hash key of the PII policy).
//! columns = ["customer_id", "after.customer_id", "before.customer_id"]
//! # Key of [pii.keys] for the certificate's salted hash of the subject.
//! certificate_key = "salt"
//!
//! [erasure.tables."gold.fraud_alerts"]
//! columns = ["customer_id", "counterparty_id"]   # replaces the list above for this table
//! contains = ["description"]                     # free text mentioning the subject
//! ```
//!
//! Requests can wait on a Kafka topic (`sluice job erase --requests`), and each erased
//! subject can leave tombstones for its keys on compacted topics:
//!
//! ```toml
//! [erasure]
//! requests_topic = "erasure-requests"
//! [[erasure.tombstones]]
//! topic = "customers"
//! key = '{"customer_id":"{subject}"}'
//! ```
//!
//! Identifiers are checked before anything is searched: `min_subject_length` (default 6)
//! and `subject_pattern` (a regular expression matched whole), and placeholder words
//! (`null`, `none`, `true`, …) are refused. Purging stays clear of files another writer
//! may still commit: a file no commit names is removed only when older than
//! `orphan_min_age_secs` (default 24 h) plus `clock_skew_margin_secs` (default 300).
//!
//! The dead-letter and quarantine tables need no entry: a letter is erased when its key
//! or payload (opened with the dead-letter key when sealed) mentions the subject.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::pii::Action;
use crate::config::{Config, Problem, is_table_name};

/// `[erasure]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ErasureConfig {
    /// Subject columns (dotted paths into structs) of every table that has them.
    pub columns: Vec<String>,
    /// Key of `[pii.keys]` for the salted subject hash in certificates.
    pub certificate_key: Option<String>,
    /// Per table (`layer.name`), columns replacing `columns`, and free-text columns.
    pub tables: BTreeMap<String, ErasureTable>,
    /// Topic `sluice job erase --requests` reads requests from.
    pub requests_topic: Option<String>,
    /// Tombstones produced for each erased subject.
    pub tombstones: Vec<TombstoneConfig>,
    /// Shortest subject identifier accepted (default 6): a request for `1` would match
    /// the word `1` in every dead letter and log entry.
    pub min_subject_length: usize,
    /// A regular expression every subject identifier must match whole (e.g.
    /// `C[0-9]{7}`); none: any identifier of `min_subject_length` or more that is not a
    /// placeholder word (`null`, `none`, `true`, …).
    pub subject_pattern: Option<String>,
    /// Files no commit names, younger than this, may belong to a commit still in flight
    /// (another writer's): erasure leaves them and counts them as deferred (default 24 h).
    pub orphan_min_age_secs: u64,
    /// Allowance for the difference between this host's clock and the object store's, added
    /// to `orphan_min_age_secs` (default 300 s).
    pub clock_skew_margin_secs: u64,
}

/// Default of `[erasure] min_subject_length`.
pub const MIN_SUBJECT_LENGTH: usize = 6;
/// Default of `[erasure] orphan_min_age_secs`.
pub const ORPHAN_MIN_AGE_SECS: u64 = 24 * 3600;
/// Default of `[erasure] clock_skew_margin_secs`.
pub const CLOCK_SKEW_MARGIN_SECS: u64 = 300;

impl Default for ErasureConfig {
    fn default() -> Self {
        Self {
            columns: Vec::new(),
            certificate_key: None,
            tables: BTreeMap::new(),
            requests_topic: None,
            tombstones: Vec::new(),
            min_subject_length: MIN_SUBJECT_LENGTH,
            subject_pattern: None,
            orphan_min_age_secs: ORPHAN_MIN_AGE_SECS,
            clock_skew_margin_secs: CLOCK_SKEW_MARGIN_SECS,
        }
    }
}

/// `[[erasure.tombstones]]`: one key of the subject on one compacted topic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TombstoneConfig {
    pub topic: String,
    /// The record key, `{subject}` standing for the identifier, byte for byte as the
    /// producer wrote it (e.g. Debezium's `{"id":{subject}}`).
    pub key: String,
}

impl TombstoneConfig {
    /// The key for `subject`.
    pub fn key_for(&self, subject: &str) -> String {
        self.key.replace("{subject}", subject)
    }
}

/// `[erasure.tables."<layer>.<name>"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErasureTable {
    /// Columns whose whole value is a subject identifier; none: the default `columns`.
    pub columns: Option<Vec<String>>,
    /// Text columns in which a subject identifier may appear among other words.
    pub contains: Vec<String>,
}

/// Where to look for the subject in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectColumns {
    /// Whole-value matches.
    pub exact: Vec<String>,
    /// Substring matches (an identifier standing as a word of its own).
    pub contains: Vec<String>,
}

impl ErasureConfig {
    /// The columns to search in table `qualified`; columns the table lacks are dropped by the job.
    pub fn for_table(&self, qualified: &str) -> SubjectColumns {
        let t = self.tables.get(qualified);
        let exact = t
            .and_then(|t| t.columns.clone())
            .unwrap_or_else(|| self.columns.clone());
        let mut contains = t.map(|t| t.contains.clone()).unwrap_or_default();
        // Snapshot results list the keys breaking an invariant.
        if qualified == "sluice.snapshots" && contains.is_empty() {
            contains.push("violating_keys".into());
        }
        SubjectColumns { exact, contains }
    }
}

impl Config {
    /// Partition columns whose values are personal: a subject column of `[erasure]`, or a
    /// column the PII policy names and leaves distinctive (anything but `mask` and
    /// `generalize`). A partition value is part of every file's path, and paths stay in
    /// the Delta log (in the remove actions a stale writer must still meet) and in
    /// directory names after an erasure purged the files: refused.
    fn personal_partitions(&self) -> Vec<Problem> {
        let mut personal: BTreeMap<String, &'static str> = BTreeMap::new();
        for rules in self.pii_rules_as_written().values() {
            for (path, rule) in rules {
                if !matches!(rule.action, Action::Mask | Action::Generalize) {
                    let leaf = path.rsplit('.').next().unwrap_or(path);
                    personal.insert(leaf.to_string(), rule.action.as_str());
                }
            }
        }
        let mut tables: Vec<(String, String, Vec<String>)> = Vec::new();
        for table in self.bronze_tables().into_values() {
            let at = if self
                .bronze
                .tables
                .get(&table)
                .is_some_and(|t| t.partition_by.is_some())
            {
                format!("bronze.tables.{table}.partition_by")
            } else {
                "bronze.partition_by".to_string()
            };
            let parts = self.partition_by(&table);
            tables.push((format!("bronze.{table}"), at, parts));
        }
        for (name, t) in &self.silver.tables {
            tables.push((
                format!("silver.{name}"),
                format!("silver.tables.{name}.partition_by"),
                t.partition_by.clone(),
            ));
        }
        let mut p = Vec::new();
        for (qualified, at, parts) in tables {
            let subject = self.erasure.for_table(&qualified);
            for c in &parts {
                let leaf = c.rsplit('.').next().unwrap_or(c);
                let why = if subject
                    .exact
                    .iter()
                    .chain(&subject.contains)
                    .any(|s| s == c)
                {
                    Some("a subject column of [erasure]".to_string())
                } else {
                    personal
                        .get(leaf)
                        .map(|a| format!("a column the PII policy names ({a})"))
                };
                if let Some(why) = why {
                    let problem = Problem::new(
                        &at,
                        format!(
                            "cannot partition {qualified} by '{c}', {why}: partition values are part of file paths, which stay in the Delta log after an erasure; partition by a lineage, masked or generalised column"
                        ),
                    );
                    if !p.contains(&problem) {
                        p.push(problem);
                    }
                }
            }
        }
        p
    }

    pub(crate) fn validate_erasure(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let e = &self.erasure;
        if let Some(k) = &e.certificate_key
            && !self.pii.keys.contains_key(k)
        {
            p.push(Problem::new(
                "erasure.certificate_key",
                format!("'{k}' is not a key of [pii.keys]"),
            ));
        }
        for (name, t) in &e.tables {
            let at = format!("erasure.tables.\"{name}\"");
            if !is_table_name(name) {
                p.push(Problem::new(&at, "not <layer>.<name>"));
            }
            let cols = t.columns.iter().flatten().chain(&t.contains);
            for c in cols {
                if c.trim().is_empty() {
                    p.push(Problem::new(&at, "an empty column name"));
                }
            }
        }
        for c in &e.columns {
            if c.trim().is_empty() {
                p.push(Problem::new("erasure.columns", "an empty column name"));
            }
        }
        p.extend(self.personal_partitions());
        if e.min_subject_length == 0 {
            p.push(Problem::new(
                "erasure.min_subject_length",
                "must be at least 1",
            ));
        }
        if matches!(&e.subject_pattern, Some(t) if t.trim().is_empty()) {
            p.push(Problem::new(
                "erasure.subject_pattern",
                "an empty pattern: remove it, or give the shape of an identifier",
            ));
        }
        if matches!(&e.requests_topic, Some(t) if t.trim().is_empty()) {
            p.push(Problem::new(
                "erasure.requests_topic",
                "an empty topic name",
            ));
        }
        for (i, t) in e.tombstones.iter().enumerate() {
            let at = format!("erasure.tombstones[{i}]");
            if t.topic.trim().is_empty() {
                p.push(Problem::new(
                    format!("{at}.topic"),
                    "missing: the compacted topic",
                ));
            }
            if !t.key.contains("{subject}") {
                p.push(Problem::new(
                    format!("{at}.key"),
                    "the key must contain {subject}, where the identifier goes",
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn tables_take_the_default_columns_unless_they_name_their_own() {
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n\
             [erasure]\ncolumns = [\"customer_id\"]\n\
             [erasure.tables.\"gold.alerts\"]\ncolumns = [\"party\"]\ncontains = [\"note\"]\n",
        )
        .expect("valid");
        assert_eq!(c.erasure.for_table("silver.x").exact, vec!["customer_id"]);
        let gold = c.erasure.for_table("gold.alerts");
        assert_eq!(
            (gold.exact, gold.contains),
            (vec!["party".into()], vec!["note".into()])
        );
        assert_eq!(
            c.erasure.for_table("sluice.snapshots").contains,
            vec!["violating_keys"]
        );
    }

    #[test]
    fn a_certificate_key_must_be_a_policy_key_and_tables_must_be_qualified() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n\
             [erasure]\ncertificate_key = \"nope\"\n\
             [erasure.tables.customers]\ncolumns = [\"id\"]\n\
             [[erasure.tombstones]]\ntopic = \"customers\"\nkey = \"id\"\n",
        )
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(all.contains("erasure.certificate_key"), "{all}");
        assert!(all.contains("erasure.tables.\"customers\""), "{all}");
        assert!(all.contains("erasure.tombstones[0].key"), "{all}");
    }

    #[test]
    fn tables_cannot_be_partitioned_by_a_subject_or_a_personal_column() {
        let base = "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"cdc.customers\", \"payments\"]\n\
             [bronze.routes]\n\"cdc.customers\" = \"customers_changes\"\n\
             [pii.keys.pseudo]\nenv = \"K\"\n\
             [pii.tables.customers_changes]\ncustomer_id = { action = \"tokenize\", key = \"pseudo\" }\n\
             \"after.città_ünïcode\" = { action = \"keep\", tag = \"sensitive\" }\n\
             segment = { action = \"generalize\", to = \"year\" }\n\
             [erasure]\ncolumns = [\"customer_id\", \"after.customer_id\", \"account_ref\"]\n";
        let problems = |extra: &str| -> String {
            match Config::from_toml(&format!("{base}{extra}")) {
                Ok(_) => String::new(),
                Err(p) => p
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            }
        };
        // Silver by the pseudonymised subject, by a kept (non-ASCII) column, by a subject
        // column the policy does not name: each refused, naming where.
        for (column, why) in [
            ("customer_id", "subject column"),
            ("città_ünïcode", "PII policy names (keep)"),
            ("account_ref", "subject column"),
        ] {
            let all = problems(&format!(
                "[silver.tables.customers]\ntopics = [\"cdc.customers\"]\nkey = [\"id\"]\npartition_by = [\"{column}\"]\n"
            ));
            assert!(
                all.contains("silver.tables.customers.partition_by")
                    && all.contains(&format!("'{column}'"))
                    && all.contains(why),
                "{column}: {all}"
            );
        }
        // A declared bronze column that is a subject.
        let all = problems(
            "[bronze.tables.payments]\npartition_by = [\"account_ref\"]\n\
             schema = [{name = \"account_ref\", type = \"string\"}]\n",
        );
        assert!(all.contains("bronze.tables.payments.partition_by"), "{all}");
        // Generalised and lineage columns are fine.
        let all = problems(
            "[silver.tables.customers]\ntopics = [\"cdc.customers\"]\nkey = [\"id\"]\npartition_by = [\"segment\"]\n",
        );
        assert!(!all.contains("partition"), "{all}");
        assert!(!problems("").contains("partition"));
    }
}
