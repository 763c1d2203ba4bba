//! `[[quality.<table>]]`: data-quality expectations on the rows bound for a bronze table.
//!
//! Each expectation is a SQL boolean expression over the row (the columns after the PII
//! policy, lineage included), evaluated with DataFusion over every batch. A row passes
//! when the expression is true or NULL (SQL `CHECK` semantics: write `x IS NOT NULL` to
//! demand a value). What a failure does is the expectation's `action`:
//!
//! - `warn`: the row is kept and counted;
//! - `drop`: the row goes to `_sluice/quarantine` (named with the expectation) instead of
//!   the table, and is not applied to silver;
//! - `fail`: the pipeline stops with an error naming the expectation; the batch is not
//!   committed.
//!
//! ```toml
//! [[quality.txn_events]]
//! name = "amount_not_negative"
//! check = "amount_gbp >= 0"
//! action = "drop"
//!
//! [[quality.txn_events]]
//! name = "known_customer"
//! check = "customer_id IN (SELECT customer_id FROM silver.customers)"
//! action = "warn"
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::check::{Problem, is_identifier};

/// What a failed expectation does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QualityAction {
    /// Keep the row, count it.
    #[default]
    Warn,
    /// Send the row to the quarantine table.
    Drop,
    /// Stop the pipeline; nothing of the batch is committed.
    Fail,
}

impl QualityAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Drop => "drop",
            Self::Fail => "fail",
        }
    }
}

/// One expectation.
#[derive(Debug, Clone, Deserialize)]
pub struct ExpectationConfig {
    /// Identifier, unique within the table; in metrics, quarantine and `_sluice/quality`.
    pub name: String,
    /// A SQL boolean expression over the row's columns.
    pub check: String,
    #[serde(default)]
    pub action: QualityAction,
}

/// Problems of the `[quality]` section: the expectations of each table, which must be one
/// of the bronze `tables` of the pipeline.
pub(crate) fn validate(
    quality: &BTreeMap<String, Vec<ExpectationConfig>>,
    tables: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut p = Vec::new();
    for (table, expectations) in quality {
        let at = format!("quality.{table}");
        if !tables.contains(table) {
            p.push(Problem::new(
                &at,
                format!(
                    "'{table}' is not a bronze table of this pipeline (tables: {})",
                    tables.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, e) in expectations.iter().enumerate() {
            let at = format!("{at}[{i}]");
            if !is_identifier(&e.name) {
                p.push(Problem::new(
                    format!("{at}.name"),
                    format!("'{}' is not an identifier (a-z, 0-9, _)", e.name),
                ));
            } else if !names.insert(e.name.as_str()) {
                p.push(Problem::new(
                    format!("{at}.name"),
                    format!("'{}' is used twice in this table", e.name),
                ));
            }
            if e.check.trim().is_empty() {
                p.push(Problem::new(
                    format!("{at}.check"),
                    "missing: a SQL boolean expression over the row",
                ));
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn expectation_mistakes_name_their_place() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"txns\"]\n\
             [[quality.txns]]\nname = \"positive\"\ncheck = \"amount > 0\"\naction = \"drop\"\n\
             [[quality.txns]]\nname = \"positive\"\ncheck = \" \"\n\
             [[quality.payments]]\nname = \"Bad Name\"\ncheck = \"x\"\naction = \"fail\"\n",
        )
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for expected in [
            "quality.txns[1].name: 'positive' is used twice",
            "quality.txns[1].check: missing",
            "quality.payments: 'payments' is not a bronze table of this pipeline (tables: txns)",
            "quality.payments[0].name: 'Bad Name' is not an identifier",
        ] {
            assert!(all.contains(expected), "{expected} not in:\n{all}");
        }
        let bad_action = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"txns\"]\n\
             [[quality.txns]]\nname = \"a\"\ncheck = \"x\"\naction = \"explode\"\n",
        )
        .expect_err("invalid");
        assert!(
            bad_action[0].to_string().contains("explode"),
            "{bad_action:?}"
        );
    }
}
