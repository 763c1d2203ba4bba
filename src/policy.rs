//! The PII policy of a run: secrets loaded, transform chains built and checked against
//! every declared schema before anything is consumed.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_pipeline::config::{Config, Problem};
use sluice_pipeline::key_cache::KeyCache;
use sluice_pipeline::lineage::with_lineage;
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

/// Load the policy of `config` and check it against the declared schemas. Tables with an
/// inferred schema are checked when their first batch arrives, before it is written.
pub fn prepare(config: &Config) -> Result<Prepared, Vec<Problem>> {
    let policy = Policy::load(config)?;
    let protection = policy.protection();
    let mut problems = Vec::new();
    let mut properties = HashMap::new();
    for table in config.bronze_tables().values() {
        if let Some(declared) = config.declared_schema(table)
            && let Err(e) = protection.plan(table, &with_lineage(&declared), true)
        {
            problems.push(Problem {
                path: format!("pii.tables.{table}"),
                message: e.to_string(),
            });
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
