//! The lineage columns of a [`SourceBatch`](crate::SourceBatch)'s rows: where each row
//! came from in Kafka and when it was ingested.
//!
//! Every row a decoder makes carries the [`LINEAGE_COLUMNS`](crate::columns::LINEAGE_COLUMNS) after its payload columns,
//! so a bronze table's schema is its payload schema plus lineage ([`with_lineage`]), and
//! the payload is what is left without them ([`payload_of`]). The sinks use the Kafka
//! columns to drop rows at offsets a table already holds.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::columns::{HEADERS_COLUMN, LINEAGE_COLUMNS};

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

/// The Kafka headers a table captures (`[bronze.tables.<t>] headers`): each declared
/// header becomes a field of the struct column [`HEADERS_COLUMN`], of type `string`
/// (UTF-8 checked) or `binary`, null where a message does not carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpec {
    /// Declared names and their types, sorted by name (byte order): see [`HeaderSpec::new`].
    headers: Vec<(String, DataType)>,
}

impl HeaderSpec {
    /// The spec of `headers` (name, type), sorted by name; a repeated name keeps its
    /// first type.
    pub fn new(mut headers: Vec<(String, DataType)>) -> Self {
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        headers.dedup_by(|b, a| a.0 == b.0);
        Self { headers }
    }

    /// The `_kafka_headers` column.
    pub fn field(&self) -> Field {
        Field::new(HEADERS_COLUMN, DataType::Struct(self.fields()), true)
    }

    /// The fields of the `_kafka_headers` struct, one per declared header.
    pub fn fields(&self) -> Fields {
        self.headers
            .iter()
            .map(|(name, dt)| Field::new(name, dt.clone(), true))
            .collect()
    }

    /// Declared names and their types, sorted by name.
    pub fn headers(&self) -> &[(String, DataType)] {
        &self.headers
    }

    /// Where the header called `name` sits among the declared ones.
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        self.headers
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
            .ok()
    }
}

/// Payload schema plus lineage columns, then the headers column when `headers` are
/// captured: the schema of a bronze table.
pub fn with_lineage_and_headers(payload: &Schema, headers: Option<&HeaderSpec>) -> SchemaRef {
    let lineage = with_lineage(payload);
    match headers {
        None => lineage,
        Some(h) => {
            let mut fields: Vec<Field> = lineage
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(h.field());
            Arc::new(Schema::new(fields))
        }
    }
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

/// The payload part of a table schema (every column but the lineage and headers ones).
pub fn payload_of(table: &Schema) -> SchemaRef {
    let fields: Vec<Field> = table
        .fields()
        .iter()
        .filter(|f| f.name() != HEADERS_COLUMN && !LINEAGE_COLUMNS.contains(&f.name().as_str()))
        .map(|f| f.as_ref().clone())
        .collect();
    Arc::new(Schema::new(fields))
}
