//! `[anonymise]`: what `sluice job anonymise` does to aged data, and which tables it
//! checks for k-anonymity before publishing them.
//!
//! ```toml
//! [anonymise.tables."bronze.customers"]
//! after_days = 90                      # rows ingested 90 or more days ago
//! age_column = "_ingest_date"          # default; a date or timestamp column
//! [anonymise.tables."bronze.customers".columns]
//! "after.email" = { action = "drop" }  # nulled (a Delta column cannot vanish from old rows)
//! "after.date_of_birth" = { action = "generalize", to = "year" }
//! "after.address.line1" = { action = "mask", literal = "" }
//!
//! [anonymise.publish."silver.customers"]
//! quasi_identifiers = ["segment", "date_of_birth"]
//! k = 5
//! to = "/srv/public/customers.parquet" # written only when every group has ≥ k rows
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::check::{Problem, is_table_name};
use super::pii::{Action, ColumnRule, validate_rule};

/// `[anonymise]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AnonymiseConfig {
    /// Aged-data policies by table (`layer.name`).
    pub tables: BTreeMap<String, AnonymiseTable>,
    /// k-anonymity checks by table (`layer.name`).
    pub publish: BTreeMap<String, PublishConfig>,
}

/// `[anonymise.tables."<layer>.<name>"]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AnonymiseTable {
    /// Rows this many days old or older are anonymised.
    pub after_days: u32,
    /// The column dating a row: a date or a timestamp.
    #[serde(default = "default_age_column")]
    pub age_column: String,
    /// What happens to each column (dotted paths), with the PII policy's one-way actions.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnRule>,
}

fn default_age_column() -> String {
    "_ingest_date".into()
}

/// `[anonymise.publish."<layer>.<name>"]`.
#[derive(Debug, Clone, Deserialize)]
pub struct PublishConfig {
    /// Columns that together could single a person out.
    pub quasi_identifiers: Vec<String>,
    /// Fewest rows any combination of their values may have.
    pub k: u64,
    /// Where the table goes (one Parquet file) when the check passes.
    pub to: Option<PathBuf>,
}

impl AnonymiseConfig {
    /// Problems of the `[anonymise]` section.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (name, t) in &self.tables {
            let at = format!("anonymise.tables.\"{name}\"");
            if !is_table_name(name) {
                p.push(Problem::new(&at, "not <layer>.<name>"));
            }
            if t.columns.is_empty() {
                p.push(Problem::new(
                    format!("{at}.columns"),
                    "no column to anonymise",
                ));
            }
            for (path, rule) in &t.columns {
                let col = format!("{at}.columns.\"{path}\"");
                match rule.action {
                    Action::Hash | Action::Tokenize | Action::EncryptFpe | Action::Encrypt => {
                        p.push(Problem::new(
                        &col,
                        format!(
                            "{} is pseudonymisation, not anonymisation: use drop, mask, mask_partial, redact or generalize",
                            rule.action.as_str()
                        ),
                    ))
                    }
                    Action::Keep => p.push(Problem::new(&col, "keep anonymises nothing")),
                    _ => p.extend(validate_rule(
                        &col,
                        path,
                        rule,
                        &t.columns,
                        &|_| false,
                    )),
                }
            }
        }
        for (name, publish) in &self.publish {
            let at = format!("anonymise.publish.\"{name}\"");
            if !is_table_name(name) {
                p.push(Problem::new(&at, "not <layer>.<name>"));
            }
            if publish.quasi_identifiers.is_empty() {
                p.push(Problem::new(
                    format!("{at}.quasi_identifiers"),
                    "name the columns that together could single a person out",
                ));
            }
            if publish.k < 2 {
                p.push(Problem::new(
                    format!("{at}.k"),
                    "k must be at least 2 (k = 1 protects no one)",
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n";

    #[test]
    fn aged_data_policies_take_one_way_actions_only() {
        let c = Config::from_toml(&format!(
            "{BASE}[anonymise.tables.\"bronze.customers\"]\nafter_days = 90\n\
             [anonymise.tables.\"bronze.customers\".columns]\n\
             \"after.email\" = {{ action = \"drop\" }}\n\
             \"after.date_of_birth\" = {{ action = \"generalize\", to = \"year\" }}\n"
        ))
        .expect("valid");
        let t = &c.anonymise.tables["bronze.customers"];
        assert_eq!((t.after_days, t.age_column.as_str()), (90, "_ingest_date"));
        let problems = Config::from_toml(&format!(
            "{BASE}[anonymise.tables.customers]\nafter_days = 1\n\
             [anonymise.tables.customers.columns]\nemail = {{ action = \"tokenize\", key = \"k\" }}\n\
             [anonymise.publish.\"gold.x\"]\nquasi_identifiers = []\nk = 1\n"
        ))
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for expected in [
            "anonymise.tables.\"customers\": not <layer>.<name>",
            "pseudonymisation, not anonymisation",
            "anonymise.publish.\"gold.x\".quasi_identifiers",
            "anonymise.publish.\"gold.x\".k",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }
}
