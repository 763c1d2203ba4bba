//! The name of every metric sluice exports, in one place.
//!
//! Metrics go through the `metrics` crate (`metrics::counter!(MESSAGES_TOTAL, "table" =>
//! …)`) and are served in the Prometheus text format on `/metrics`. Names follow
//! `sluice_<what>_<unit>[_total]`; a counter ends in `_total`, a histogram is exported
//! with `_bucket`, `_sum` and `_count`. Each name says what it measures and its labels;
//! the alert rules and the Grafana dashboard under `deploy/` query only these (the
//! integration test `deploy` checks it).
//!
//! `table` labels carry a table's name, never a value of its rows.

// The pipeline loop (`runner`).

/// Counter: messages read from Kafka, per destination table. Labels: `table`.
pub const MESSAGES_TOTAL: &str = "sluice_messages_total";

/// Counter: bytes of the messages read (payloads and keys, dead letters' too), per
/// destination table. Labels: `table`.
pub const SOURCE_BYTES_TOTAL: &str = "sluice_source_bytes_total";

/// Counter: messages sent to the dead letters, per table and the stage that refused them
/// (`decode`, `schema`, `transform`, `limit`, `write`, `quality`). Labels: `table`,
/// `stage`.
pub const DEAD_LETTERS_TOTAL: &str = "sluice_dead_letters_total";

/// Histogram: seconds from the first batch buffered since the last commit to the next
/// commit starting. No labels.
pub const BATCH_LATENCY_SECONDS: &str = "sluice_batch_latency_seconds";

/// Gauge: when the last commit of the sinks ended, in seconds since the Unix epoch. No
/// labels.
pub const LAST_COMMIT_TIMESTAMP_SECONDS: &str = "sluice_last_commit_timestamp_seconds";

// The Kafka source.

/// Gauge: messages of a partition not yet committed by this consumer group (the
/// partition's high watermark minus its committed offset). Labels: `topic`, `partition`.
pub const CONSUMER_LAG_MESSAGES: &str = "sluice_consumer_lag_messages";

/// Counter: rebalances of the consumer group seen by this consumer. No labels.
pub const REBALANCES_TOTAL: &str = "sluice_rebalances_total";

/// Gauge: partitions assigned to this consumer now. No labels.
pub const ASSIGNED_PARTITIONS: &str = "sluice_assigned_partitions";

/// Gauge: seconds spent waiting for the rate limits since the start. No labels.
pub const THROTTLED_SECONDS: &str = "sluice_throttled_seconds";

// The decoders.

/// Counter: messages refused because their columns would break a limit on the table's
/// columns (they go to the dead letters). Labels: `table`.
pub const COLUMNS_REFUSED_TOTAL: &str = "sluice_columns_refused_total";

/// Counter: requests to the Schema Registry (each attempt). No labels.
pub const SCHEMA_REGISTRY_REQUESTS_TOTAL: &str = "sluice_schema_registry_requests_total";

/// Counter: schema lookups that failed after every attempt. No labels.
pub const SCHEMA_REGISTRY_FAILURES_TOTAL: &str = "sluice_schema_registry_failures_total";

// The Delta sinks.

/// Counter: rows committed to a bronze table. Labels: `table` (the table's name without
/// its layer).
pub const ROWS_WRITTEN_TOTAL: &str = "sluice_rows_written_total";

/// Counter: commits to a bronze table. Labels: `table` (without its layer).
pub const DELTA_COMMITS_TOTAL: &str = "sluice_delta_commits_total";

/// Histogram: seconds a bronze commit took, retries included. Labels: `table` (without
/// its layer).
pub const DELTA_COMMIT_DURATION_SECONDS: &str = "sluice_delta_commit_duration_seconds";

/// Gauge: the version of a table after this process's last commit to it. Labels: `table`.
pub const DELTA_TABLE_VERSION: &str = "sluice_delta_table_version";

/// Counter: commits refused because another writer committed first (each is retried
/// against the refreshed table). Labels: `table`.
pub const DELTA_COMMIT_CONFLICTS_TOTAL: &str = "sluice_delta_commit_conflicts_total";

/// Counter: rows moved to the quarantine table by an expectation. No labels.
pub const QUARANTINED_ROWS_TOTAL: &str = "sluice_quarantined_rows_total";

/// Counter: rows that passed an expectation. Labels: `table`, `expectation`.
pub const EXPECTATION_ROWS_PASSED_TOTAL: &str = "sluice_expectation_rows_passed_total";

/// Counter: rows that failed an expectation. Labels: `table`, `expectation`.
pub const EXPECTATION_ROWS_FAILED_TOTAL: &str = "sluice_expectation_rows_failed_total";

/// Counter: data keys created in the subject key store (one per new subject). No labels.
pub const SUBJECT_KEYS_CREATED_TOTAL: &str = "sluice_subject_keys_created_total";

// Silver (CDC MERGE).

/// Counter: change events merged into a silver table. Labels: `table` (without its
/// layer).
pub const CDC_CHANGES_TOTAL: &str = "sluice_cdc_changes_total";

/// Counter: rows a silver MERGE inserted. Labels: `table` (without its layer).
pub const CDC_ROWS_INSERTED_TOTAL: &str = "sluice_cdc_rows_inserted_total";

/// Counter: rows a silver MERGE updated. Labels: `table` (without its layer).
pub const CDC_ROWS_UPDATED_TOTAL: &str = "sluice_cdc_rows_updated_total";

/// Counter: rows a silver MERGE deleted. Labels: `table` (without its layer).
pub const CDC_ROWS_DELETED_TOTAL: &str = "sluice_cdc_rows_deleted_total";

/// Counter: change events a silver MERGE ignored (older than the stored row, or than a
/// newer change in the same batch). Labels: `table` (without its layer).
pub const CDC_CHANGES_IGNORED_TOTAL: &str = "sluice_cdc_changes_ignored_total";

/// Counter: change events refused by a silver table (they stay in bronze; a warning names
/// their offsets).
/// Labels: `table`.
pub const CDC_CHANGES_REFUSED_TOTAL: &str = "sluice_cdc_changes_refused_total";

// The process.

/// Gauge: the process's resident memory, in bytes, taken when `/metrics` is read. No
/// labels.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "sluice_process_resident_memory_bytes";
