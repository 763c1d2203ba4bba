//! The configuration model: one TOML file, every option with a unit in its name.
//!
//! [`Config::from_toml`] never stops at the first mistake: it collects every unknown key
//! and every bad value into a list of [`Problem`]s, so `sluice validate-config` can show
//! them all at once.
//!
//! Each section of the file has its module here, holding the section's structs, their
//! defaults and its own validation. A check that needs facts of another section (the
//! topics, the bronze table of each topic, the ids of the keys) is given them, so no
//! section reaches back into the whole [`Config`]. [`Config::validate`] runs every
//! section's checks, then those that need the rules of several sections at once; these,
//! and what the sections say together about each table of the lake (its PII rules,
//! declared schema, partition columns, tags and sources), are methods of [`Config`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

pub mod anonymise;
pub mod audit;
pub mod bronze;
pub(crate) mod check;
pub mod decode;
pub mod erasure;
pub mod kafka;
pub mod maintenance;
pub mod metrics;
pub mod pii;
pub mod pipeline;
pub mod quality;
pub mod roles;
pub mod schedule;
pub mod serve;
pub mod silver;
pub mod snapshot;
pub mod sql;
mod tables;

pub use check::Problem;

use anonymise::AnonymiseConfig;
use audit::AuditConfig;
use bronze::BronzeConfig;
use decode::DecodeConfig;
use erasure::ErasureConfig;
use kafka::KafkaConfig;
use maintenance::MaintenanceConfig;
use metrics::MetricsConfig;
use pii::PiiConfig;
use pipeline::{BufferSizes, PipelineConfig};
use quality::ExpectationConfig;
use roles::RoleConfig;
use serve::ServeConfig;
use silver::SilverConfig;
use snapshot::SnapshotConfig;
use sql::SqlConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub pipeline: PipelineConfig,
    pub kafka: KafkaConfig,
    pub decode: DecodeConfig,
    pub bronze: BronzeConfig,
    pub pii: PiiConfig,
    pub metrics: MetricsConfig,
    pub silver: SilverConfig,
    /// Data-quality expectations by bronze table.
    pub quality: BTreeMap<String, Vec<ExpectationConfig>>,
    /// What `sluice job maintain` does.
    pub maintenance: MaintenanceConfig,
    /// Cron expressions of the jobs `sluice schedule` runs, by job.
    pub schedule: BTreeMap<String, String>,
    /// What `sluice job snapshot` pins and checks.
    pub snapshot: SnapshotConfig,
    /// Where `sluice job erase` looks for a data subject.
    pub erasure: ErasureConfig,
    /// What `sluice job anonymise` does to aged data, and its k-anonymity checks.
    pub anonymise: AnonymiseConfig,
    /// Where the SQL definitions (views, gold tables) live.
    pub sql: SqlConfig,
    /// What each role may read through SQL.
    pub roles: BTreeMap<String, RoleConfig>,
    /// The Postgres wire-protocol endpoint of `sluice serve`.
    pub serve: ServeConfig,
    /// The key sealing the job-run chain.
    pub audit: AuditConfig,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(Error::Config)
    }

    /// Parse and validate, returning every problem found.
    pub fn from_toml(text: &str) -> std::result::Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let deserializer = match toml::Deserializer::parse(text) {
            Ok(d) => d,
            Err(e) => return Err(vec![Problem::new("", format!("not valid TOML: {e}"))]),
        };
        let parsed: std::result::Result<Config, _> =
            serde_ignored::deserialize(deserializer, |path| {
                problems.push(Problem::new(path.to_string(), "unknown key"));
            });
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                problems.push(Problem::new("", e.to_string().trim().to_string()));
                return Err(problems);
            }
        };
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Check the values; every problem is returned, none is fatal on its own. Each section
    /// checks itself first; the checks across sections come last.
    pub fn validate(&self) -> Vec<Problem> {
        let topics = &self.kafka.topics;
        let routes = self.bronze_tables();
        let bronze_tables = routes.values().cloned().collect();
        let known_key = |id: &str| self.pii.keys.contains_key(id);
        let known_role = |name: &str| self.roles.contains_key(name);
        let mut p = Vec::new();
        p.extend(self.pipeline.validate());
        p.extend(self.kafka.validate());
        p.extend(self.decode.validate(topics, &routes));
        p.extend(self.bronze.validate(topics));
        p.extend(self.metrics.validate());
        p.extend(self.pii.validate(&routes));
        p.extend(self.silver.validate(topics));
        p.extend(quality::validate(&self.quality, &bronze_tables));
        p.extend(self.maintenance.validate());
        p.extend(schedule::validate(&self.schedule));
        p.extend(self.snapshot.validate());
        p.extend(self.erasure.validate(&known_key));
        p.extend(self.anonymise.validate());
        p.extend(roles::validate(&self.roles));
        p.extend(self.serve.validate(&known_role));
        p.extend(self.audit.validate());
        p.extend(self.check_encrypted_keys());
        p.extend(self.check_personal_partitions());
        p
    }

    /// The buffer sizes `sluice run` uses: the configured ones (`kafka.max_prefetch_bytes`,
    /// `bronze.flush_max_bytes`, `kafka.decode_batch_max_messages`), lowered to fit
    /// `pipeline.memory_budget_bytes` when one is set ([`PipelineConfig::fit_buffers`]).
    pub fn buffer_sizes(&self) -> BufferSizes {
        self.pipeline.fit_buffers(BufferSizes {
            prefetch_bytes: self.kafka.max_prefetch_bytes,
            flush_max_bytes: self.bronze.flush_max_bytes,
            decode_batch_max_messages: self.kafka.decode_batch_max_messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_is_valid_and_takes_defaults() {
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"localhost:9092\"\ntopics = [\"txn-events\"]\n",
        )
        .expect("valid");
        assert_eq!(c.bronze.flush_max_rows, 500_000);
        assert_eq!(c.kafka.group_id("sluice"), "sluice-sluice");
        assert_eq!(c.bronze_tables()["txn-events"], "txn_events");
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"\"\ncolour = \"red\"\n[bronze]\nflush_max_rows = 0\nflush_latency = 5\n[bronze.routes]\nmissing = \"x\"\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"kafka.colour"), "{paths:?}");
        assert!(paths.contains(&"bronze.flush_latency"), "{paths:?}");
        assert!(paths.contains(&"kafka.bootstrap_servers"), "{paths:?}");
        assert!(paths.contains(&"kafka.topics"), "{paths:?}");
        assert!(paths.contains(&"bronze.flush_max_rows"), "{paths:?}");
        assert!(paths.contains(&"bronze.routes.missing"), "{paths:?}");
    }
}
