//! `[snapshot]`: what `sluice job snapshot` pins, sums up and checks.
//!
//! ```toml
//! [snapshot]
//! tables = ["silver", "gold"]        # layers or layer.name; default silver and gold
//!
//! [[snapshot.invariants]]
//! name = "account_has_customer"
//! # The violations: each row returned is one, its first column names it.
//! sql = """SELECT a.account_id FROM silver.accounts a
//!          LEFT JOIN silver.customers c ON a.customer_id = c.customer_id
//!          WHERE c.customer_id IS NULL"""
//!
//! export_to = "/archive/sluice"      # each snapshot as Parquet + manifest.json; optional
//! diff = true                        # rows added/changed/removed since the previous one
//!
//! [snapshot.keys]                    # keys of tables that are not silver (silver: its key)
//! "gold.daily_spend" = ["segment", "day"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::check::{Problem, is_identifier};
use super::silver::SilverConfig;

/// `[snapshot]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SnapshotConfig {
    /// Tables to pin and checksum: a layer (`silver`) or one table (`silver.customers`).
    pub tables: Vec<String>,
    pub invariants: Vec<InvariantConfig>,
    /// Directory each snapshot is exported to (`<dir>/<snapshot id>/`); none: no export.
    pub export_to: Option<PathBuf>,
    /// Compare each table with the previous snapshot.
    pub diff: bool,
    /// Keys by table (`layer.name`) for the comparison; silver tables default to theirs.
    pub keys: BTreeMap<String, Vec<String>>,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            tables: vec!["silver".into(), "gold".into()],
            invariants: Vec::new(),
            export_to: None,
            diff: true,
            keys: BTreeMap::new(),
        }
    }
}

/// `[[snapshot.invariants]]`: a query whose rows are the violations.
#[derive(Debug, Clone, Deserialize)]
pub struct InvariantConfig {
    pub name: String,
    pub sql: String,
}

impl SnapshotConfig {
    /// The key each table's rows are compared by: `[snapshot.keys]`, else the silver
    /// table's key (and `_valid_from` for its history).
    pub fn keys(&self, silver: &SilverConfig) -> BTreeMap<String, Vec<String>> {
        let mut keys = BTreeMap::new();
        for (name, t) in &silver.tables {
            keys.insert(format!("silver.{name}"), t.key.clone());
            if t.history.is_some() {
                let mut k = t.key.clone();
                k.push("_valid_from".into());
                keys.insert(format!("silver.{name}_history"), k);
            }
        }
        keys.extend(self.keys.clone());
        keys
    }

    /// Whether table `qualified` (`layer.name`) is part of the snapshot.
    pub fn includes(&self, qualified: &str) -> bool {
        let layer = qualified.split('.').next().unwrap_or_default();
        self.tables.iter().any(|t| t == qualified || t == layer)
    }

    /// Problems of the `[snapshot]` section.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut names = BTreeSet::new();
        for (i, inv) in self.invariants.iter().enumerate() {
            let at = format!("snapshot.invariants[{i}]");
            if !is_identifier(&inv.name) {
                p.push(Problem::new(
                    format!("{at}.name"),
                    format!("'{}' is not an identifier (a-z, 0-9, _)", inv.name),
                ));
            } else if !names.insert(inv.name.as_str()) {
                p.push(Problem::new(
                    format!("{at}.name"),
                    format!("'{}' is used twice", inv.name),
                ));
            }
            if inv.sql.trim().is_empty() {
                p.push(Problem::new(
                    format!("{at}.sql"),
                    "missing: a query returning the violating rows",
                ));
            }
        }
        for t in &self.tables {
            let layer = t.split('.').next().unwrap_or_default();
            if !matches!(layer, "bronze" | "silver" | "gold" | "sluice") {
                p.push(Problem::new(
                    "snapshot.tables",
                    format!("'{t}' is not a layer or <layer>.<name>"),
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
    fn snapshot_takes_silver_and_gold_by_default_and_names_bad_invariants() {
        let c = Config::from_toml("[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n")
            .expect("valid");
        assert!(c.snapshot.includes("silver.customers") && c.snapshot.includes("gold.x"));
        assert!(!c.snapshot.includes("bronze.t"));
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n\
             [snapshot]\ntables = [\"platinum\"]\n\
             [[snapshot.invariants]]\nname = \"a\"\nsql = \"select 1\"\n\
             [[snapshot.invariants]]\nname = \"a\"\nsql = \"\"\n",
        )
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for expected in [
            "snapshot.invariants[1].name: 'a' is used twice",
            "snapshot.invariants[1].sql: missing",
            "snapshot.tables: 'platinum' is not a layer",
        ] {
            assert!(all.contains(expected), "{expected} not in:\n{all}");
        }
    }
}
