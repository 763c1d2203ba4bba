//! The columns sluice adds to the tables it writes, which the decoders, the sinks and the
//! PII policy all rely on: the lineage columns of every bronze row, the name prefixes
//! a payload field may not take because they belong to sluice, and the one value no
//! stage may change (Debezium's [`UNAVAILABLE`] placeholder).

/// Lineage columns every bronze table carries, in this order, after the payload columns.
pub const LINEAGE_COLUMNS: [&str; 7] = [
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_kafka_timestamp",
    "_kafka_key",
    "_ingested_at",
    "_ingest_date",
];

/// The column holding the Kafka headers a table captures (`[bronze.tables.<t>] headers`):
/// a struct with one field per declared header, after the lineage columns. Tables that
/// capture no headers have no such column.
pub const HEADERS_COLUMN: &str = "_kafka_headers";

/// Prefixes of the columns sluice adds to its tables (lineage, change-event bookkeeping,
/// history versions). A payload field whose name starts with one of them, in any case,
/// would shadow or collide with them, so it is never made a column: its message goes to
/// the dead letters at stage `schema`.
pub const RESERVED_PREFIXES: [&str; 7] = [
    "_kafka_",
    "_ingest",
    "_cdc_",
    "_valid_",
    "_is_current",
    "_sluice",
    "__sluice",
];

/// Whether a payload field called `name` would collide with a column sluice adds (see
/// [`RESERVED_PREFIXES`]; compared without regard to ASCII case, as Delta readers
/// resolve column names).
pub fn is_reserved_name(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    })
}

/// Characters no column name may hold: those Delta readers (Spark, Trino) refuse without
/// column mapping, the dot (the PII policy addresses nested columns by dotted paths, so a
/// field `user.id` would escape a rule for `user.id`), and control characters.
pub const REFUSED_NAME_CHARACTERS: &str = " ,;{}()=.";

/// Debezium's stand-in for an unchanged TOASTed value it did not read. It is not data:
/// the decoders keep it, every transform leaves it as it is, and the silver MERGE
/// recognises it and keeps the real value it stands for.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";
