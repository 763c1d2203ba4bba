//! Role-based access for a SQL session: which tables a role reads, which columns it may
//! not see (by the PII policy's tags or by name), and which rows (a condition per table).
//!
//! A restricted table is registered as a view over a scan of the Delta table that is
//! itself never registered: its denied columns are absent (from `information_schema`
//! too) and cannot be reached by any name. Selecting one fails with an error naming the
//! role's policy, never a silent null.

use std::collections::BTreeMap;

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
    /// the table itself records.
    pub fn denies(
        &self,
        qualified: &str,
        column: &str,
        recorded: &BTreeMap<String, String>,
    ) -> Option<String> {
        if self
            .deny_columns
            .iter()
            .any(|c| c == column || *c == format!("{qualified}.{column}"))
        {
            return Some(format!("roles.{}.deny_columns", self.role));
        }
        let tag = recorded
            .get(column)
            .or_else(|| self.tags.get(qualified).and_then(|t| t.get(column)))?;
        self.deny_tags
            .contains(tag)
            .then(|| format!("roles.{}.deny_tags ({tag})", self.role))
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
        let k = "sluice.pii.after.email".to_string();
        let v = "hash key=salt tag=direct_identifier".to_string();
        let recorded = recorded_tags([(&k, &v)]);
        assert_eq!(
            recorded.get("after").map(String::as_str),
            Some("direct_identifier")
        );
    }
}
