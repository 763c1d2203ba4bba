//! The one error type of `sluice-connectors`.

/// Errors of the Kafka source, the decoders and the Delta sinks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },

    #[error("delta table {table}: {context}: {source}")]
    Delta {
        table: String,
        context: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// A DataFusion session of the sinks (expectations, the subject key store); `context`
    /// says which.
    #[error("{context}: {source}")]
    Query {
        context: String,
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },

    #[error("decode: {0}")]
    Decode(String),

    #[error("schema registry: {0}")]
    Registry(String),

    /// The registry client could not be set up (its CA file, its HTTP client).
    #[error("schema registry: {context}: {source}")]
    RegistryClient {
        context: &'static str,
        #[source]
        source: sluice_pipeline::error::BoxError,
    },

    /// The runner no longer takes what the source sends: the run is ending.
    #[error("the sink stopped")]
    SinkStopped,

    /// Where assigned partitions resume could not be read; assigning a guessed offset would
    /// lose or double rows, so the run ends.
    #[error("reading the resume offsets at assignment: {source}")]
    Resume {
        #[source]
        source: sluice_pipeline::Error,
    },

    #[error("erasure requests: {0}")]
    Requests(String),

    #[error("table {table}: expectation '{expectation}': {message}")]
    Quality {
        table: String,
        expectation: String,
        message: String,
    },

    #[error(
        "table {table}: column '{column}' is {found} in the batch but {expected} in the table; change the table or the producer"
    )]
    SchemaConflict {
        table: String,
        column: String,
        found: String,
        expected: String,
    },

    #[error("table {table}: gave up after {attempts} commit attempts; last error: {last}")]
    CommitRetries {
        table: String,
        attempts: usize,
        last: String,
    },

    #[error("io: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("silver table {table}: {context}: {message}")]
    Silver {
        table: String,
        context: String,
        message: String,
    },

    #[error("demo: {0}")]
    Demo(String),

    #[error("subject key store: {0}")]
    KeyStore(String),

    /// An error of a pipeline contract (the checkpoints a source resumes from), as it is.
    #[error(transparent)]
    Pipeline(#[from] sluice_pipeline::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for sluice_pipeline::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Pipeline(e) => e,
            Error::Kafka { .. } | Error::SinkStopped | Error::Resume { .. } => {
                sluice_pipeline::Error::Source(Box::new(e))
            }
            other => sluice_pipeline::Error::Sink(Box::new(other)),
        }
    }
}

/// Wrap a librdkafka error with what sluice was doing.
pub(crate) fn kafka(
    context: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
    let context = context.into();
    move |source| Error::Kafka {
        context,
        source: Box::new(source),
    }
}

/// Wrap a DataFusion error with what sluice was doing.
pub(crate) fn query(
    context: impl Into<String>,
) -> impl FnOnce(deltalake::datafusion::error::DataFusionError) -> Error {
    let context = context.into();
    move |source| Error::Query {
        context,
        source: Box::new(source),
    }
}

pub(crate) fn delta(
    table: &str,
    context: &str,
) -> impl FnOnce(deltalake::DeltaTableError) -> Error {
    let (table, context) = (table.to_string(), context.to_string());
    move |source| Error::Delta {
        table,
        context,
        source: Box::new(source),
    }
}
