//! `[roles.<name>]`: what a role may read through `sluice sql --role <name>` (and the
//! SQL endpoint's user of that name).
//!
//! ```toml
//! [roles.analyst]
//! tables = ["gold", "views", "silver.accounts"]   # layers, layer.name, or "views"
//! deny_tags = ["direct_identifier"]               # columns the PII policy tags so
//! deny_columns = ["notes", "silver.accounts.sort_code"]
//! allow_derived = ["gold.daily_spend_by_segment"] # derived from filtered rows, readable
//! [roles.analyst.row_filters]
//! "silver.accounts" = "product <> 'isa'"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::{Problem, is_identifier};

/// `[roles.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleConfig {
    /// Readable tables: a layer (`gold`), a table (`silver.accounts`), `views`, or `*`.
    pub tables: Vec<String>,
    /// Columns tagged so by the PII policy are unreadable.
    pub deny_tags: Vec<String>,
    /// Unreadable columns: `name` in every table, or `layer.table.name` (a field,
    /// `layer.table.name.field`, denies its whole column), and the same column of the
    /// tables derived from that table.
    pub deny_columns: Vec<String>,
    /// SQL conditions rows must meet, by table; a history table has the condition of the
    /// table it keeps the history of.
    pub row_filters: BTreeMap<String, String>,
    /// Tables (`layer.name`) computed from rows the row filters hide that the role may
    /// read all the same (a gold aggregate the role is meant to see).
    pub allow_derived: Vec<String>,
}

const TAGS: [&str; 4] = [
    "direct_identifier",
    "quasi_identifier",
    "sensitive",
    "free_text",
];

/// Problems of the `[roles]` section.
pub(crate) fn validate(roles: &BTreeMap<String, RoleConfig>) -> Vec<Problem> {
    let mut p = Vec::new();
    for (name, role) in roles {
        let at = format!("roles.{name}");
        if !is_identifier(name) {
            p.push(Problem::new(
                &at,
                "a role name is an identifier (a-z, 0-9, _)",
            ));
        }
        if role.tables.is_empty() {
            p.push(Problem::new(
                format!("{at}.tables"),
                "missing: the layers or tables the role may read",
            ));
        }
        for t in &role.tables {
            let layer = t.split('.').next().unwrap_or_default();
            if !matches!(
                layer,
                "bronze" | "silver" | "gold" | "sluice" | "views" | "*"
            ) {
                p.push(Problem::new(
                    format!("{at}.tables"),
                    format!("'{t}' is not a layer, <layer>.<name>, views or *"),
                ));
            }
        }
        for tag in &role.deny_tags {
            if !TAGS.contains(&tag.as_str()) {
                p.push(Problem::new(
                    format!("{at}.deny_tags"),
                    format!("'{tag}' is not a tag: {}", TAGS.join(", ")),
                ));
            }
        }
        for path in &role.deny_columns {
            let parts: Vec<&str> = path.split('.').collect();
            let layered = matches!(parts[0], "bronze" | "silver" | "gold" | "sluice");
            let named = parts.iter().all(|p| !p.is_empty())
                && (parts.len() == 1 || (layered && parts.len() >= 3));
            if !named {
                p.push(Problem::new(
                    format!("{at}.deny_columns"),
                    format!(
                        "'{path}' names no column: give a column name (every table) or \
                         <layer>.<table>.<column>"
                    ),
                ));
            }
        }
        for t in &role.allow_derived {
            let parts: Vec<&str> = t.split('.').collect();
            if parts.len() != 2
                || !matches!(parts[0], "bronze" | "silver" | "gold" | "sluice")
                || parts[1].is_empty()
            {
                p.push(Problem::new(
                    format!("{at}.allow_derived"),
                    format!("'{t}' is not <layer>.<table>"),
                ));
            }
        }
        for (table, filter) in &role.row_filters {
            if filter.trim().is_empty() {
                p.push(Problem::new(
                    format!("{at}.row_filters.\"{table}\""),
                    "an empty condition",
                ));
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"customers\"]\n";

    #[test]
    fn roles_name_known_tags_and_layers() {
        let problems = Config::from_toml(&format!(
            "{BASE}[roles.analyst]\ntables = [\"platinum\"]\ndeny_tags = [\"secret\"]\n\
             [roles.empty]\n"
        ))
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for expected in [
            "roles.analyst.tables: 'platinum' is not a layer",
            "roles.analyst.deny_tags: 'secret' is not a tag",
            "roles.empty.tables: missing",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn a_denied_column_path_must_name_a_column() {
        let problems = Config::from_toml(&format!(
            "{BASE}[roles.analyst]\ntables = [\"silver\"]\n\
             deny_columns = [\"email\", \"silver.accounts.sort_code\", \"bronze.customers.after.phone\", \
             \"customers.email\", \"silver.accounts\", \"platinum.x.y\", \"silver..x\", \"\"]\n\
             allow_derived = [\"gold.x\", \"gold\", \"x.y\"]\n"
        ))
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for bad in [
            "customers.email",
            "silver.accounts",
            "platinum.x.y",
            "silver..x",
            "''",
        ] {
            let quoted = if bad == "''" {
                "''".to_string()
            } else {
                format!("'{bad}'")
            };
            assert!(
                all.iter()
                    .any(|p| p.starts_with("roles.analyst.deny_columns") && p.contains(&quoted)),
                "{bad}: {all:?}"
            );
        }
        for good in [
            "'email'",
            "'silver.accounts.sort_code'",
            "'bronze.customers.after.phone'",
        ] {
            assert!(!all.iter().any(|p| p.contains(good)), "{good}: {all:?}");
        }
        assert_eq!(
            all.iter()
                .filter(|p| p.starts_with("roles.analyst.allow_derived"))
                .count(),
            2,
            "{all:?}"
        );
    }
}
