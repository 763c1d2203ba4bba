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

    /// Rows sluice made itself lack a column it puts there (the lineage columns, the
    /// change-event columns): a defect, never the data's fault.
    #[error("{rows} lack column {column}")]
    MissingColumn { rows: &'static str, column: String },

    /// The JSON decoder could not be built for a table's schema.
    #[error("building a JSON decoder: {source}")]
    JsonDecoder {
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A table's location cannot be written as a URL.
    #[error("{path} is not a usable table path")]
    TablePath { path: String },

    /// The bronze sink lost the state of a table it had just set up (a defect).
    #[error("bronze table {0}: its state vanished")]
    TableVanished(String),

    /// `[schema_registry]` names no URL.
    #[error("schema registry: no URL configured")]
    RegistryUnset,

    /// The registry did not answer for a schema id after every attempt.
    #[error("schema registry: fetching schema id {id} from {urls}: {reason}")]
    RegistryFetch {
        id: u32,
        urls: String,
        /// The registry client's error and cause, as it words them (its error type
        /// holds them as text).
        reason: String,
    },

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

    /// The erasure requests topic does not exist.
    #[error("erasure requests: no topic '{topic}'")]
    RequestsTopicMissing { topic: String },

    /// The erasure requests topic did not deliver up to the end of every partition in time.
    #[error("erasure requests: topic '{topic}' did not deliver up to its end within {seconds} s")]
    RequestsTimedOut { topic: String, seconds: u64 },

    /// An expectation's check cannot be planned (it names a column the table lacks, or
    /// is no SQL): an error of the configuration.
    #[error("table {table}: expectation '{expectation}': cannot evaluate `{check}`: {source}")]
    QualityCheck {
        table: String,
        expectation: String,
        check: String,
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },

    /// Rows failed an expectation whose action is `fail`: the run stops.
    #[error(
        "table {table}: expectation '{expectation}': {failed} of {rows} rows fail `{check}`; the pipeline stops and nothing of this batch is committed"
    )]
    QualityFailed {
        table: String,
        expectation: String,
        check: String,
        failed: usize,
        rows: usize,
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

    /// Every commit attempt was refused; the last attempt's error is the source.
    #[error(
        "table {table}: gave up after {attempts} commit attempts{}",
        .last.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    CommitRetries {
        table: String,
        attempts: usize,
        #[source]
        last: Option<Box<Error>>,
    },

    #[error("io: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("silver table {table}: {context}: {source}")]
    Silver {
        table: String,
        context: String,
        #[source]
        source: sluice_pipeline::error::BoxError,
    },

    #[error("subject key store: {context}: {source}")]
    KeyStore {
        context: &'static str,
        #[source]
        source: sluice_pipeline::error::BoxError,
    },

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
