//! The one error type of `sluice-jobs`.

use std::path::Path;

/// Errors of the batch jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Lake(#[from] sluice_connectors::Error),

    #[error("delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    #[error("query: {0}")]
    Query(#[from] deltalake::datafusion::error::DataFusionError),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("another run holds the lock '{name}' (process {holder}); runs never overlap")]
    Locked { name: String, holder: String },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn delta(table: &str) -> impl FnOnce(deltalake::DeltaTableError) -> Self {
        let table = table.to_string();
        move |source| Self::Delta {
            table,
            source: Box::new(source),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
