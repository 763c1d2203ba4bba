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

use crate::config::{Config, Problem, is_identifier};

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

impl Config {
    pub(crate) fn validate_roles(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (name, role) in &self.roles {
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

    /// Tags of the columns of the tables the policy protects, by `layer.name` and
    /// top-level column: bronze tables as the policy names them, and each silver table
    /// (and its history) from the rules of the bronze tables of its topics.
    pub fn column_tags(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let rules = self.pii_rules_as_written();
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let top = |path: &str| -> String {
            let path = path
                .strip_prefix("after.")
                .or_else(|| path.strip_prefix("before."))
                .unwrap_or(path);
            path.split('.').next().unwrap_or_default().to_string()
        };
        for (table, cols) in &rules {
            for (path, rule) in cols {
                if let Some(tag) = rule.tag {
                    let column = path.split('.').next().unwrap_or_default().to_string();
                    out.entry(format!("bronze.{table}"))
                        .or_default()
                        .insert(column, tag.as_str().to_string());
                }
            }
        }
        for (name, silver) in &self.silver.tables {
            for topic in &silver.topics {
                let bronze = self.bronze_table_of(topic);
                let Some(cols) = rules.get(&bronze) else {
                    continue;
                };
                for (path, rule) in cols {
                    let Some(tag) = rule.tag else { continue };
                    for t in [format!("silver.{name}"), format!("silver.{name}_history")] {
                        out.entry(t)
                            .or_default()
                            .insert(top(path), tag.as_str().to_string());
                    }
                }
            }
        }
        out
    }

    /// The bronze table a topic lands in (its route, else its name made a table name).
    fn bronze_table_of(&self, topic: &str) -> String {
        self.bronze
            .routes
            .get(topic)
            .cloned()
            .unwrap_or_else(|| crate::config::table_name_for_topic(topic))
    }

    /// The tables each table is computed from, by `layer.name`: a silver table from the
    /// bronze tables of its topics, its history from it.
    pub fn table_sources(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (name, silver) in &self.silver.tables {
            let bronze = silver
                .topics
                .iter()
                .map(|t| format!("bronze.{}", self.bronze_table_of(t)))
                .collect();
            out.insert(format!("silver.{name}"), bronze);
            if silver.history.is_some() {
                out.insert(
                    format!("silver.{name}_history"),
                    vec![format!("silver.{name}")],
                );
            }
        }
        out
    }
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

    #[test]
    fn silver_tables_fed_by_dotted_topics_get_their_tags() {
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"bank.public.customers\"]\n\
             [pii]\ndead_letter_key = \"k\"\n[pii.keys.k]\nenv = \"K\"\n\
             [pii.topics.\"bank.public.customers\"]\n\
             email = { action = \"hash\", key = \"k\", tag = \"direct_identifier\" }\n\
             [silver.tables.customers]\ntopics = [\"bank.public.customers\"]\nkey = [\"id\"]\n\
             [silver.tables.customers.history]\n",
        )
        .expect("valid");
        let tags = c.column_tags();
        for t in ["silver.customers", "silver.customers_history"] {
            assert_eq!(
                tags.get(t).and_then(|c| c.get("email")).map(String::as_str),
                Some("direct_identifier"),
                "{t}: {tags:?}"
            );
        }
        let sources = c.table_sources();
        assert_eq!(
            sources.get("silver.customers"),
            Some(&vec!["bronze.bank_public_customers".to_string()])
        );
        assert_eq!(
            sources.get("silver.customers_history"),
            Some(&vec!["silver.customers".to_string()])
        );
    }

    #[test]
    fn silver_tables_take_the_tags_of_their_topics_rules() {
        let c = Config::from_toml(&format!(
            "{BASE}[pii]\ndead_letter_key = \"k\"\n[pii.keys.k]\nenv = \"K\"\n\
             [pii.tables.customers]\nemail = {{ action = \"hash\", key = \"k\", tag = \"direct_identifier\" }}\n\
             [silver.tables.customers]\ntopics = [\"customers\"]\nkey = [\"id\"]\n\
             [silver.tables.customers.history]\n"
        ))
        .expect("valid");
        let tags = c.column_tags();
        for t in ["silver.customers", "silver.customers_history"] {
            assert_eq!(
                tags.get(t).and_then(|c| c.get("email")).map(String::as_str),
                Some("direct_identifier"),
                "{t}: {tags:?}"
            );
        }
    }
}
