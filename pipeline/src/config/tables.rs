//! What the sections say together about the tables of the lake: the bronze table of each
//! topic, the tables of change events, each table's declared schema and partition columns,
//! the PII rules each table gets and the tags and sources that follow from them, where
//! the subject key store lives; and the checks that need several sections at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};

use super::Config;
use super::bronze::parse_type;
use super::check::Problem;
use super::pii::{Action, ColumnRule, SUBJECT_KEYS};
use crate::lake::Lake;

impl Config {
    /// Topic → bronze table name, for every configured topic.
    pub fn bronze_tables(&self) -> BTreeMap<String, String> {
        self.kafka
            .topics
            .iter()
            .map(|t| (t.clone(), self.bronze.table_of(t)))
            .collect()
    }

    /// The payload schema declared for a table, if any.
    pub fn declared_schema(&self, table: &str) -> Option<SchemaRef> {
        let t = self.bronze.tables.get(table)?;
        if t.schema.is_empty() {
            return None;
        }
        let fields: Vec<Field> = t
            .schema
            .iter()
            .filter_map(|c| parse_type(&c.data_type).map(|dt| Field::new(&c.name, dt, true)))
            .collect();
        Some(Arc::new(Schema::new(fields)))
    }

    /// Partition columns of a table.
    pub fn partition_by(&self, table: &str) -> Vec<String> {
        self.bronze
            .tables
            .get(table)
            .and_then(|t| t.partition_by.clone())
            .unwrap_or_else(|| self.bronze.partition_by.clone())
    }

    /// Bronze tables that receive change events (the topics of a silver table).
    pub fn cdc_bronze_tables(&self) -> BTreeSet<String> {
        let routes = self.bronze_tables();
        self.silver
            .tables
            .values()
            .flat_map(|t| t.topics.iter())
            .filter_map(|topic| routes.get(topic).cloned())
            .collect()
    }

    /// Column rules by bronze table, topics resolved to their tables.
    ///
    /// In tables of change events (Debezium envelopes feeding a silver table) a rule names
    /// a column of the row and protects it in both images: `email` becomes `before.email`
    /// and `after.email`. Paths already under `before.`, `after.` or `source.`, and
    /// `_kafka_key`, are kept as they are.
    pub fn pii_rules(&self) -> BTreeMap<String, BTreeMap<String, ColumnRule>> {
        self.pii
            .rules(&self.bronze_tables(), &self.cdc_bronze_tables())
    }

    /// Column rules by bronze table as the policy writes them (no change-event images).
    fn pii_rules_as_written(&self) -> BTreeMap<String, BTreeMap<String, ColumnRule>> {
        self.pii.rules_as_written(&self.bronze_tables())
    }

    /// Whether any rule encrypts per subject (and so needs the subject key store).
    pub fn uses_subject_keys(&self) -> bool {
        self.pii_rules_as_written()
            .values()
            .flat_map(BTreeMap::values)
            .any(|r| r.action == Action::Encrypt)
    }

    /// Where the subject key store of `lake` lives (a directory or an object-store URL).
    pub fn subject_key_store(&self, lake: &Lake) -> Lake {
        if let Some(Ok(at)) = self.pii.subject_keys.as_deref().map(Lake::parse) {
            return at;
        }
        match lake {
            Lake::Local(dir) => Lake::Local(dir.join(SUBJECT_KEYS)),
            Lake::ObjectStore(_) => match lake.object_url(SUBJECT_KEYS) {
                Some(url) => Lake::ObjectStore(url),
                None => lake.clone(),
            },
        }
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
                let bronze = self.bronze.table_of(topic);
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

    /// The tables each table is computed from, by `layer.name`: a silver table from the
    /// bronze tables of its topics, its history from it.
    pub fn table_sources(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (name, silver) in &self.silver.tables {
            let bronze = silver
                .topics
                .iter()
                .map(|t| format!("bronze.{}", self.bronze.table_of(t)))
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

    /// Silver tables keyed or tracked by a column the policy encrypts per subject.
    pub(super) fn check_encrypted_keys(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let tables = self.bronze_tables();
        // Encrypted values differ every time (a fresh nonce): they cannot identify a row or
        // tell a change.
        let written = self.pii_rules_as_written();
        for (name, t) in &self.silver.tables {
            for topic in &t.topics {
                let Some(rules) = tables.get(topic).and_then(|b| written.get(b)) else {
                    continue;
                };
                let tracked = t.history.iter().flat_map(|h| &h.tracked);
                for column in t.key.iter().chain(tracked) {
                    if rules
                        .get(column)
                        .is_some_and(|r| r.action == Action::Encrypt)
                    {
                        p.push(Problem::new(
                            format!("silver.tables.{name}"),
                            format!(
                                "column '{column}' is a key or tracked column but the policy encrypts it per subject (a different value every time); use tokenize for it"
                            ),
                        ));
                    }
                }
            }
        }
        p
    }

    /// Partition columns whose values are personal: a subject column of `[erasure]`, or a
    /// column the PII policy names and leaves distinctive (anything but `mask` and
    /// `generalize`). A partition value is part of every file's path, and paths stay in
    /// the Delta log (in the remove actions a stale writer must still meet) and in
    /// directory names after an erasure purged the files: refused.
    pub(super) fn check_personal_partitions(&self) -> Vec<Problem> {
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
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"customers\"]\n";

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
