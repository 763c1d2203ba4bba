//! The PII policy of a run: secrets loaded, transform chains built and checked against
//! every declared schema before anything is consumed.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::Schema;
use sluice_pipeline::columns::HEADERS_COLUMN;
use sluice_pipeline::config::{Config, Problem};
use sluice_pipeline::key_cache::KeyCache;
use sluice_pipeline::lineage::{HeaderSpec, with_lineage_and_headers};
use sluice_pipeline::protection::Protection;
use sluice_transforms::policy::Policy;

/// What a run needs from the policy.
pub struct Prepared {
    pub protection: Protection,
    /// Table properties by table: the policy record.
    pub properties: HashMap<String, Vec<(String, String)>>,
    /// The data keys of `encrypt` rules, for the subject key store.
    pub keyrings: Vec<Arc<dyn KeyCache>>,
}

/// Why a policy rule on `path` cannot apply to the Kafka headers a table captures
/// (`headers`), if the path names them at all.
fn header_rule_problem(path: &str, headers: Option<&HeaderSpec>) -> Option<String> {
    let field = match path.strip_prefix(HEADERS_COLUMN) {
        Some("") => None,
        Some(rest) => Some(rest.strip_prefix('.')?),
        None => return None,
    };
    let Some(spec) = headers else {
        return Some(format!(
            "the table captures no Kafka headers: declare them in bronze.tables.<table>.headers to protect {HEADERS_COLUMN}"
        ));
    };
    let name = field?;
    let top = name.split('.').next().unwrap_or(name);
    (spec.position(top.as_bytes()).is_none()).then(|| {
        format!("no header '{top}' is declared for the table (names match exactly, case and all)")
    })
}

/// Load the policy of `config` and check it against the declared schemas. Tables with an
/// inferred schema are checked when their first batch arrives, before it is written.
pub fn prepare(config: &Config) -> Result<Prepared, Vec<Problem>> {
    let policy = Policy::load(config)?;
    let protection = policy.protection();
    let mut problems = Vec::new();
    let mut properties = HashMap::new();
    let rules = config.pii_rules();
    for table in config.bronze_tables().values() {
        let headers = config.bronze.header_spec(table);
        // With a declared schema every rule is checked; without one, the rules on the
        // headers (whose fields the config declares) are, so a misspelt header name
        // cannot let its values land unprotected.
        let checked = match config.declared_schema(table) {
            Some(declared) => protection
                .plan(
                    table,
                    &with_lineage_and_headers(&declared, headers.as_ref()),
                    true,
                )
                .map(|_| ()),
            None => protection
                .plan(
                    table,
                    &with_lineage_and_headers(&Schema::empty(), headers.as_ref()),
                    false,
                )
                .map(|_| ()),
        };
        if let Err(e) = checked {
            problems.push(Problem {
                path: format!("pii.tables.{table}"),
                message: e.to_string(),
            });
        }
        for path in rules.get(table).into_iter().flat_map(|r| r.keys()) {
            if let Some(problem) = header_rule_problem(path, headers.as_ref()) {
                problems.push(Problem {
                    path: format!("pii.tables.{table}.\"{path}\""),
                    message: problem,
                });
            }
        }
        // Statistics columns are decided by the sinks from each table's schema
        // (`sluice_connectors::delta::stats`); the policy record goes here.
        if let Some(settings) = policy.table_settings(table) {
            properties.insert(table.clone(), settings.properties);
        }
    }
    if problems.is_empty() {
        Ok(Prepared {
            protection,
            properties,
            keyrings: policy
                .keyrings()
                .into_iter()
                .map(|k| k as Arc<dyn KeyCache>)
                .collect(),
        })
    } else {
        Err(problems)
    }
}
