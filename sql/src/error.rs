//! The errors of `sluice-sql`, with their Postgres SQLSTATE.

use std::path::PathBuf;

use datafusion::error::DataFusionError;
use sluice_pipeline::error::BoxError;

use crate::limits;
use crate::readonly::{self, Refusal};

/// Errors of `sluice-sql`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("{0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("reading the lake at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A definition file that cannot be used as written (sluice's own words).
    #[error("{path}: {message}")]
    Definition { path: PathBuf, message: String },
    /// A view definition DataFusion cannot plan.
    #[error("{path}: {source}")]
    View {
        path: PathBuf,
        #[source]
        source: Box<DataFusionError>,
    },
    #[error("{0}")]
    Denied(String),
    /// Time travel named a table the lake does not have.
    #[error("time travel: no table {0} in the lake")]
    NoSuchTable(String),
    /// Time travel asked for a version the table cannot be opened at.
    #[error("time travel: {table} at version {version}: {source}")]
    Travel {
        table: String,
        version: u64,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// The server's TLS certificate or key could not be used.
    #[error("serve: {path}: {source}")]
    Tls {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// The certificate could not be used for SCRAM channel binding.
    #[error("serve: certificate for SCRAM channel binding: {source}")]
    ChannelBinding {
        #[source]
        source: BoxError,
    },
    #[error("listing the lake at {lake}: {source}")]
    Listing {
        lake: String,
        #[source]
        source: BoxError,
    },
    /// Refused, cancelled or over its memory, or a role's error without its values.
    #[error("{message}")]
    Sql {
        sqlstate: &'static str,
        message: String,
    },
}

impl Error {
    /// The Postgres SQLSTATE of the error, when it has a precise one.
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self {
            Error::Sql { sqlstate, .. } => Some(sqlstate),
            Error::Denied(_) => Some(readonly::PRIVILEGE),
            Error::Query(e) => limits::sqlstate(e),
            _ => None,
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Sql {
            sqlstate: r.sqlstate,
            message: r.message,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
