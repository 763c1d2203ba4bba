//! `[sql]`: where the SQL definitions live.
//!
//! ```toml
//! [sql]
//! views_dir = "sql/views"    # one view per file: views.<file name>
//! gold_dir = "sql/gold"      # one gold table per file, built by `sluice job gold`
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// `[sql]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SqlConfig {
    /// Directory of view definitions, registered in every SQL session.
    pub views_dir: PathBuf,
    /// Directory of gold table definitions.
    pub gold_dir: PathBuf,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            views_dir: PathBuf::from("sql/views"),
            gold_dir: PathBuf::from("sql/gold"),
        }
    }
}
