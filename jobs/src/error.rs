//! The one error type of `sluice-jobs`.
//!
//! Each variant keeps the error it comes from as its [`source`](std::error::Error::source),
//! and says where it happened (a table, a file, a lock, a query) in its text.

use std::path::Path;

/// Errors of the batch jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lake operation of `sluice-connectors` (opening, creating or appending to a table).
    #[error("{0}")]
    Lake(#[from] sluice_connectors::Error),

    /// A delta-rs operation on `table`.
    #[error("delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    /// The lake's SQL catalog: listing its tables, opening it, reading views or
    /// definitions.
    #[error(transparent)]
    Catalog(#[from] sluice_sql::Error),

    /// A query a job runs over the catalog; `context` says which.
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: Box<sluice_sql::Error>,
    },

    /// A DataFusion plan of a job; `context` says which (`query` when nothing more precise
    /// is known).
    #[error("{context}: {source}")]
    Query {
        context: String,
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// An Arrow operation on a file or table `context` names.
    #[error("{context}: {source}")]
    ArrowIn {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// Reading or writing Parquet; `context` names the file or table.
    #[error("{context}: {source}")]
    Parquet {
        context: String,
        #[source]
        source: Box<parquet::errors::ParquetError>,
    },

    /// The lake's object store; `context` names the lock, journal, table or file.
    #[error("{context}: {source}")]
    ObjectStore {
        context: String,
        #[source]
        source: Box<object_store::Error>,
    },

    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// JSON that does not read or write; `context` names what it is.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    /// The operating system gave no random bytes (for a lock's nonce, a journal's attempt).
    #[error("{context}: no random source: {source}")]
    Random {
        context: String,
        #[source]
        source: getrandom::Error,
    },

    /// A PII transform applied by a job (anonymisation); `context` names the table or
    /// column.
    #[error("{context}: {source}")]
    Transform {
        context: String,
        #[source]
        source: Box<sluice_pipeline::Error>,
    },

    #[error("another run holds the lock '{name}' (process {holder}); runs never overlap")]
    Locked { name: String, holder: String },

    /// Files of a table carry deletion vectors (written by another engine): the rows they
    /// hide keep their values in those files, which an erasure cannot rewrite.
    #[error(
        "{table}: {files} file(s) carry deletion vectors (written by another engine): the rows they hide keep their values in those files, which sluice cannot rewrite; purge them with that engine (e.g. REORG TABLE … APPLY (PURGE)) and run the erasure again. Nothing was erased"
    )]
    DeletionVectors { table: String, files: usize },

    /// Another process took over a lock this run held (its lease ran out while the run
    /// stalled): the run stops before changing anything more.
    #[error(
        "{what}: another process took over this run's lock while it ran (its lease ran out); stopped before changing the log or files, the next run finishes the work"
    )]
    LockLost { what: String },

    /// An erasure's delete of `table` kept conflicting with other writers.
    #[error("{table}: the delete was refused {attempts} times; last: {source}")]
    DeleteRefused {
        table: String,
        attempts: usize,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    /// The lake has no table of this name (`layer.name`).
    #[error("no table {table} in the lake")]
    NoTable { table: String },

    /// The configuration or the request cannot be carried out as given: a table, column,
    /// definition or expression it names is missing or unusable, or what the lake holds
    /// does not have the shape the job needs.
    #[error("{0}")]
    Invalid(String),
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

    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(sluice_sql::Error) -> Self {
        let context = context.into();
        move |source| Self::Sql {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn query(
        context: impl Into<String>,
    ) -> impl FnOnce(deltalake::datafusion::error::DataFusionError) -> Self {
        let context = context.into();
        move |source| Self::Query {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn arrow(
        context: impl Into<String>,
    ) -> impl FnOnce(arrow::error::ArrowError) -> Self {
        let context = context.into();
        move |source| Self::ArrowIn { context, source }
    }

    pub(crate) fn parquet(
        context: impl Into<String>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let context = context.into();
        move |source| Self::Parquet {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn object_store(
        context: impl Into<String>,
    ) -> impl FnOnce(object_store::Error) -> Self {
        let context = context.into();
        move |source| Self::ObjectStore {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn json(context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let context = context.into();
        move |source| Self::Json { context, source }
    }

    pub(crate) fn random(context: impl Into<String>) -> impl FnOnce(getrandom::Error) -> Self {
        let context = context.into();
        move |source| Self::Random { context, source }
    }

    pub(crate) fn transform(
        context: impl Into<String>,
    ) -> impl FnOnce(sluice_pipeline::Error) -> Self {
        let context = context.into();
        move |source| Self::Transform {
            context,
            source: Box::new(source),
        }
    }
}

impl From<deltalake::datafusion::error::DataFusionError> for Error {
    fn from(source: deltalake::datafusion::error::DataFusionError) -> Self {
        Self::query("query")(source)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
