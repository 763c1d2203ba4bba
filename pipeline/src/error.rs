//! The one error type of `sluice-pipeline`.

use std::path::PathBuf;

/// Errors raised while loading configuration or driving a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The configuration is invalid; every problem found is listed.
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, crate::config::render_problems(.0))]
    Config(Vec<crate::config::Problem>),

    /// A transform's input does not fit its policy; raised at start-up, before data moves.
    #[error("transform '{transform}' cannot apply to table '{table}': {reason}")]
    TransformSchema {
        transform: String,
        table: String,
        reason: String,
    },

    /// A transform failed on a batch.
    #[error("transform '{transform}' failed: {source}")]
    Transform {
        transform: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// The sink failed; the pipeline stops so nothing is acknowledged that was not written.
    #[error("sink failed: {0}")]
    Sink(String),

    /// The source failed in a way it cannot recover from.
    #[error("source failed: {0}")]
    Source(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
