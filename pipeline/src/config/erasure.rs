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

use super::check::{Problem, is_table_name};

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

    /// Problems of the `[erasure]` section; `known_key` tells the key ids of `[pii.keys]`.
    pub(crate) fn validate(&self, known_key: &dyn Fn(&str) -> bool) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(k) = &self.certificate_key
            && !known_key(k)
        {
            p.push(Problem::new(
                "erasure.certificate_key",
                format!("'{k}' is not a key of [pii.keys]"),
            ));
        }
        for (name, t) in &self.tables {
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
        for c in &self.columns {
            if c.trim().is_empty() {
                p.push(Problem::new("erasure.columns", "an empty column name"));
            }
        }
        if self.min_subject_length == 0 {
            p.push(Problem::new(
                "erasure.min_subject_length",
                "must be at least 1",
            ));
        }
        if matches!(&self.subject_pattern, Some(t) if t.trim().is_empty()) {
            p.push(Problem::new(
                "erasure.subject_pattern",
                "an empty pattern: remove it, or give the shape of an identifier",
            ));
        }
        if matches!(&self.requests_topic, Some(t) if t.trim().is_empty()) {
            p.push(Problem::new(
                "erasure.requests_topic",
                "an empty topic name",
            ));
        }
        for (i, t) in self.tombstones.iter().enumerate() {
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
}
