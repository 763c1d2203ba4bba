//! `[maintenance]`: what `sluice job maintain` does to every table of the lake.
//!
//! ```toml
//! [maintenance]
//! target_file_size_bytes = 134217728   # compaction target (128 MiB)
//! vacuum_retention_hours = 720         # files unreferenced for 30 days are deleted
//!
//! [maintenance.tables."bronze.card_transactions"]
//! retention_days = 90                  # rows whose _ingest_date is older are deleted
//! vacuum_retention_hours = 168
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::Problem;

/// `[maintenance]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MaintenanceConfig {
    pub target_file_size_bytes: u64,
    pub vacuum_retention_hours: u64,
    /// Write a checkpoint and remove expired log files.
    pub checkpoint: bool,
    /// Per table, by `layer.name` (`bronze.card_transactions`).
    pub tables: BTreeMap<String, TableMaintenance>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            target_file_size_bytes: 128 * 1024 * 1024,
            vacuum_retention_hours: 30 * 24,
            checkpoint: true,
            tables: BTreeMap::new(),
        }
    }
}

/// `[maintenance.tables."<layer>.<name>"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TableMaintenance {
    pub target_file_size_bytes: Option<u64>,
    pub vacuum_retention_hours: Option<u64>,
    /// Delete rows whose `_ingest_date` is older than this many days.
    pub retention_days: Option<u32>,
}

/// The settings of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    pub target_file_size_bytes: u64,
    pub vacuum_retention_hours: u64,
    pub retention_days: Option<u32>,
    pub checkpoint: bool,
}

impl MaintenanceConfig {
    /// The settings of table `qualified` (`layer.name`).
    pub fn for_table(&self, qualified: &str) -> Maintenance {
        let t = self.tables.get(qualified);
        Maintenance {
            target_file_size_bytes: t
                .and_then(|t| t.target_file_size_bytes)
                .unwrap_or(self.target_file_size_bytes),
            vacuum_retention_hours: t
                .and_then(|t| t.vacuum_retention_hours)
                .unwrap_or(self.vacuum_retention_hours),
            retention_days: t.and_then(|t| t.retention_days),
            checkpoint: self.checkpoint,
        }
    }

    /// Problems of the `[maintenance]` section.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.target_file_size_bytes < 1024 * 1024 {
            p.push(Problem::new(
                "maintenance.target_file_size_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        for (name, t) in &self.tables {
            let at = format!("maintenance.tables.\"{name}\"");
            let layer = name.split_once('.').map(|(l, _)| l);
            if !matches!(layer, Some("bronze" | "silver" | "gold" | "sluice")) {
                p.push(Problem::new(
                    &at,
                    "name a table as <layer>.<name>, layer one of bronze, silver, gold, sluice",
                ));
            }
            if t.target_file_size_bytes.is_some_and(|s| s < 1024 * 1024) {
                p.push(Problem::new(
                    format!("{at}.target_file_size_bytes"),
                    "must be at least 1048576 (1 MiB)",
                ));
            }
            if t.retention_days == Some(0) {
                p.push(Problem::new(
                    format!("{at}.retention_days"),
                    "must be at least 1 (leave it out to keep every row)",
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn table_settings_override_the_defaults_and_bad_ones_are_named() {
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n\
             [maintenance]\nvacuum_retention_hours = 48\n\
             [maintenance.tables.\"bronze.t\"]\nretention_days = 90\n",
        )
        .expect("valid");
        let t = c.maintenance.for_table("bronze.t");
        assert_eq!((t.vacuum_retention_hours, t.retention_days), (48, Some(90)));
        assert_eq!(t.target_file_size_bytes, 128 * 1024 * 1024);
        assert_eq!(c.maintenance.for_table("silver.x").retention_days, None);
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n\
             [maintenance.tables.t]\nretention_days = 0\n",
        )
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("maintenance.tables.\"t\": name a table as <layer>.<name>"),
            "{all}"
        );
        assert!(all.contains("retention_days: must be at least 1"), "{all}");
    }
}
