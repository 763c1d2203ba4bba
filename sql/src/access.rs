//! Role-based access for a SQL session: which tables a role reads, which columns it may
//! not see (by the PII policy's tags or by name), and which rows (a condition per table).
//!
//! A restricted table is registered as a [`crate::restricted::RestrictedTable`] over the
//! Delta table, which is itself never registered: its denied columns are absent (from
//! `information_schema` too) and cannot be reached by any name, and its row filter runs
//! before anything of the query sees a row. Selecting a denied column fails with an
//! error naming the role's policy, never a silent null.
//!
//! Policies reach what is derived from a protected table: a history table has the row
//! filter of the table it keeps the history of; a column denied in a table is denied in
//! the tables computed from it (silver from bronze, a history from its table, a gold
//! column from the columns its definition computes it from); a table computed from rows
//! the role's filters hide (a gold aggregate over all accounts) is not readable unless
//! the role lists it in `allow_derived`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// What one role may read.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub role: String,
    /// Layers (`gold`), tables (`silver.accounts`), `views`, or `*`.
    pub tables: Vec<String>,
    pub deny_tags: Vec<String>,
    /// Column names (every table) or `layer.table.column`.
    pub deny_columns: Vec<String>,
    /// A SQL condition per table (`layer.name`).
    pub row_filters: BTreeMap<String, String>,
    /// Column tags the configuration knows, by table and top-level column (silver tables
    /// record none of their own).
    pub tags: BTreeMap<String, BTreeMap<String, String>>,
    /// The tables each table is computed from, as the configuration says (a silver table
    /// from the bronze tables of its topics, a history from its silver table).
    pub sources: BTreeMap<String, Vec<String>>,
    /// Derived tables the role may read although rows of what they are computed from are
    /// hidden from it.
    pub allow_derived: Vec<String>,
    /// Gold definitions (`<name>.sql`), read for the lineage of gold tables.
    pub gold_dir: Option<PathBuf>,
    /// View definitions, which gold definitions may read.
    pub views_dir: Option<PathBuf>,
}

/// A column a role may not read, and the policy that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub table: String,
    pub column: String,
    pub policy: String,
}

impl Access {
    /// Whether the role may read `qualified` (`layer.name`, or `views.name`).
    pub fn allows_table(&self, qualified: &str) -> bool {
        let layer = qualified.split('.').next().unwrap_or_default();
        self.tables
            .iter()
            .any(|t| t == "*" || t == qualified || t == layer)
    }

    /// The policy denying `column` of `qualified`, if one does; `recorded` are the tags
    /// the table itself records. A column is denied by name (in every table, or as
    /// `layer.table.column`, a field of it denying the whole column), by name in a table
    /// it is derived from, or by its tag.
    pub fn denies(
        &self,
        qualified: &str,
        column: &str,
        recorded: &BTreeMap<String, String>,
    ) -> Option<String> {
        let named = |table: &str, column: &str| {
            let exact = format!("{table}.{column}");
            let nested = format!("{exact}.");
            self.deny_columns
                .iter()
                .any(|c| *c == exact || c.starts_with(&nested))
        };
        if self.deny_columns.iter().any(|c| c == column) || named(qualified, column) {
            return Some(format!("roles.{}.deny_columns", self.role));
        }
        for source in self.derived_from(qualified) {
            // A silver column is the `after` (or `before`) field of the same name in the
            // bronze table of its topic, or its column of the same name.
            let in_source = [
                column.to_string(),
                format!("after.{column}"),
                format!("before.{column}"),
            ];
            if in_source.iter().any(|c| named(&source, c)) {
                return Some(format!(
                    "roles.{}.deny_columns (in {source}, which {qualified} is derived from)",
                    self.role
                ));
            }
        }
        let tag = recorded
            .get(column)
            .or_else(|| self.tags.get(qualified).and_then(|t| t.get(column)))?;
        self.deny_tags
            .contains(tag)
            .then(|| format!("roles.{}.deny_tags ({tag})", self.role))
    }

    /// Every table `qualified` is computed from, as the configuration says (transitively).
    pub fn derived_from(&self, qualified: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![qualified.to_string()];
        while let Some(t) = todo.pop() {
            for s in self.sources.get(&t).into_iter().flatten() {
                if out.insert(s.clone()) {
                    todo.push(s.clone());
                }
            }
        }
        out.remove(qualified);
        out
    }

    /// The row filter of `qualified` and the table it was written for: its own, or for
    /// a history table the filter of the table it keeps the history of.
    pub fn row_filter(&self, qualified: &str) -> Option<(&str, &str)> {
        if let Some((table, condition)) = self.row_filters.get_key_value(qualified) {
            return Some((condition.as_str(), table.as_str()));
        }
        let base = qualified.strip_suffix("_history")?;
        let is_history = self
            .sources
            .get(qualified)
            .is_some_and(|s| s.iter().any(|t| t == base));
        let (table, condition) = self.row_filters.get_key_value(base)?;
        is_history.then_some((condition.as_str(), table.as_str()))
    }

    /// Whether the role restricts anything (columns or rows).
    pub fn restricts(&self) -> bool {
        !self.deny_tags.is_empty() || !self.deny_columns.is_empty() || !self.row_filters.is_empty()
    }

    /// Tables with rows hidden from the role that `qualified` is computed from, by
    /// `sources` (the configuration's derivations and the lineage of gold tables); none
    /// when `qualified` has a row filter of its own or the role allows it as derived.
    pub fn hidden_sources(
        &self,
        qualified: &str,
        sources: &BTreeMap<String, BTreeSet<String>>,
    ) -> BTreeSet<String> {
        if self.row_filter(qualified).is_some() || self.allow_derived.iter().any(|t| t == qualified)
        {
            return BTreeSet::new();
        }
        let mut seen = BTreeSet::new();
        let mut todo = vec![qualified.to_string()];
        let mut hidden = BTreeSet::new();
        while let Some(t) = todo.pop() {
            for s in sources.get(&t).into_iter().flatten() {
                if !seen.insert(s.clone()) {
                    continue;
                }
                if self.row_filter(s).is_some() {
                    hidden.insert(s.clone());
                }
                todo.push(s.clone());
            }
        }
        hidden.remove(qualified);
        hidden
    }
}

/// The tags a table records (`sluice.pii.<path>` = `<action>[ key=<id>] tag=<tag>`), by
/// top-level column: a tagged nested field tags its whole top-level column.
pub fn recorded_tags<'a>(
    configuration: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in configuration {
        let Some(path) = k.strip_prefix("sluice.pii.") else {
            continue;
        };
        let Some(tag) = v.split_whitespace().find_map(|w| w.strip_prefix("tag=")) else {
            continue;
        };
        let column = path.split('.').next().unwrap_or_default().to_string();
        out.insert(column, tag.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_denied_by_tag_or_name_and_say_which_policy() {
        let access = Access {
            role: "analyst".into(),
            tables: vec!["silver".into(), "gold.x".into()],
            deny_tags: vec!["direct_identifier".into()],
            deny_columns: vec!["notes".into(), "silver.accounts.sort_code".into()],
            tags: [(
                "silver.customers".to_string(),
                [("email".to_string(), "direct_identifier".to_string())]
                    .into_iter()
                    .collect(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert!(access.allows_table("silver.customers") && access.allows_table("gold.x"));
        assert!(!access.allows_table("gold.y") && !access.allows_table("bronze.t"));
        let none = BTreeMap::new();
        assert_eq!(
            access.denies("silver.customers", "email", &none).as_deref(),
            Some("roles.analyst.deny_tags (direct_identifier)")
        );
        assert!(
            access
                .denies("silver.customers", "segment", &none)
                .is_none()
        );
        assert!(access.denies("gold.x", "notes", &none).is_some());
        assert!(
            access
                .denies("silver.accounts", "sort_code", &none)
                .is_some()
        );
        assert!(
            access
                .denies("silver.customers", "sort_code", &none)
                .is_none()
        );
        // Named in a table a derived table is computed from; a field names its column.
        let derived = Access {
            role: "analyst".into(),
            deny_columns: vec![
                "bronze.customers.after.phone".into(),
                "silver.customers.notes".into(),
            ],
            row_filters: [(
                "silver.customers".to_string(),
                "segment <> 'vip'".to_string(),
            )]
            .into_iter()
            .collect(),
            sources: [
                (
                    "silver.customers".to_string(),
                    vec!["bronze.customers".to_string()],
                ),
                (
                    "silver.customers_history".to_string(),
                    vec!["silver.customers".to_string()],
                ),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert!(derived.denies("bronze.customers", "after", &none).is_some());
        assert!(derived.denies("silver.customers", "phone", &none).is_some());
        assert!(
            derived
                .denies("silver.customers_history", "phone", &none)
                .is_some()
        );
        assert!(
            derived
                .denies("silver.customers_history", "notes", &none)
                .is_some()
        );
        assert!(
            derived
                .denies("silver.customers_history", "segment", &none)
                .is_none()
        );
        assert!(derived.denies("silver.accounts", "phone", &none).is_none());
        // A history has the filter of its table; what is computed from either is hidden.
        assert_eq!(
            derived.row_filter("silver.customers_history"),
            Some(("segment <> 'vip'", "silver.customers"))
        );
        assert_eq!(derived.row_filter("silver.other_history"), None);
        let gold: BTreeMap<String, BTreeSet<String>> = [(
            "gold.by_segment".to_string(),
            BTreeSet::from(["silver.customers_history".to_string()]),
        )]
        .into_iter()
        .collect();
        assert_eq!(
            derived.hidden_sources("gold.by_segment", &gold),
            BTreeSet::from(["silver.customers_history".to_string()])
        );
        let allowed = Access {
            allow_derived: vec!["gold.by_segment".into()],
            ..derived.clone()
        };
        assert!(allowed.hidden_sources("gold.by_segment", &gold).is_empty());

        let k = "sluice.pii.after.email".to_string();
        let v = "hash key=salt tag=direct_identifier".to_string();
        let recorded = recorded_tags([(&k, &v)]);
        assert_eq!(
            recorded.get("after").map(String::as_str),
            Some("direct_identifier")
        );
    }
}
