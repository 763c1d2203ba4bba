//! The lineage columns of a [`SourceBatch`](crate::SourceBatch)'s rows: where each row
//! came from in Kafka and when it was ingested.
//!
//! Every row a decoder makes carries the [`LINEAGE_COLUMNS`](crate::columns::LINEAGE_COLUMNS) after its payload columns,
//! so a bronze table's schema is its payload schema plus lineage ([`with_lineage`]), and
//! the payload is what is left without them ([`payload_of`]). The sinks use the Kafka
//! columns to drop rows at offsets a table already holds.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::columns::LINEAGE_COLUMNS;

/// The Arrow type of the lineage column `name`.
pub fn lineage_field(name: &str) -> Field {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let dt = match name {
        "_kafka_topic" => DataType::Utf8,
        "_kafka_partition" => DataType::Int32,
        "_kafka_offset" => DataType::Int64,
        "_kafka_timestamp" | "_ingested_at" => ts,
        "_kafka_key" => DataType::Binary,
        _ => DataType::Date32,
    };
    Field::new(name, dt, true)
}

/// Payload schema plus lineage columns: the schema of a bronze table.
pub fn with_lineage(payload: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = payload
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(LINEAGE_COLUMNS.iter().map(|n| lineage_field(n)));
    Arc::new(Schema::new(fields))
}

/// The payload part of a table schema (every column but the lineage ones).
pub fn payload_of(table: &Schema) -> SchemaRef {
    let fields: Vec<Field> = table
        .fields()
        .iter()
        .filter(|f| !LINEAGE_COLUMNS.contains(&f.name().as_str()))
        .map(|f| f.as_ref().clone())
        .collect();
    Arc::new(Schema::new(fields))
}
