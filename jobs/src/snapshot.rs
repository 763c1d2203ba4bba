//! `sluice job snapshot`: the end-of-day consistency snapshot. Every table of the
//! snapshot is pinned at its current version; its row count and an order-independent
//! checksum of its content are taken at that version, and the configured invariants are
//! run against the same versions. Results go to `_sluice/snapshots`, one row per table
//! and per invariant.
//!
//! The checksum is the wrapping sum, over rows, of the first 8 bytes of the SHA-256 of
//! each row's bytes in Arrow's row format: equal content gives an equal checksum
//! whatever the file layout or row order, and any changed, added or removed row moves it.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_connectors::delta::table;
use sluice_pipeline::snapshot::SnapshotConfig;
use sluice_sql::Catalog;

use crate::error::{Error, Result};

/// Where snapshots are recorded under the lake.
pub const SNAPSHOTS: &str = "_sluice/snapshots";
/// Most violating keys kept per invariant.
const KEYS_SHOWN: usize = 20;

/// One table at its pinned version.
#[derive(Debug, Clone, Serialize)]
pub struct TableSnapshot {
    pub table: String,
    pub version: i64,
    pub rows: i64,
    pub checksum: String,
}

/// One invariant's result.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    pub name: String,
    pub violations: i64,
    /// The first violating rows' first column.
    pub keys: Vec<String>,
}

/// A whole snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub taken_at: i64,
    pub tables: Vec<TableSnapshot>,
    pub invariants: Vec<InvariantResult>,
}

impl Snapshot {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.invariants.iter().all(|i| i.violations == 0)
    }
}

/// Take the snapshot of `lake` and record it.
pub async fn snapshot(lake: &Path, config: &SnapshotConfig) -> Result<Snapshot> {
    let taken_at = chrono::Utc::now().timestamp_micros();
    let catalog = Catalog::open(lake)
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut tables = Vec::new();
    for t in catalog.tables() {
        let name = t.qualified();
        if !config.includes(&name) {
            continue;
        }
        let (rows, checksum) = checksum(&catalog, &name).await?;
        tables.push(TableSnapshot {
            table: name,
            version: catalog.version(t).unwrap_or(-1),
            rows,
            checksum,
        });
    }
    let mut invariants = Vec::new();
    for inv in &config.invariants {
        let mut stream = catalog
            .stream(&inv.sql)
            .await
            .map_err(|e| Error::Other(format!("invariant '{}': {e}", inv.name)))?;
        let mut violations = 0i64;
        let mut keys = Vec::new();
        while let Some(b) = stream.next().await {
            let b = b?;
            violations += b.num_rows() as i64;
            if b.num_columns() > 0 && keys.len() < KEYS_SHOWN {
                let text = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
                let text = text
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| Error::Other("key column".into()))?;
                for i in 0..text.len().min(KEYS_SHOWN - keys.len()) {
                    keys.push(if text.is_valid(i) {
                        text.value(i).to_string()
                    } else {
                        "NULL".into()
                    });
                }
            }
        }
        invariants.push(InvariantResult {
            name: inv.name.clone(),
            violations,
            keys,
        });
    }
    let snapshot = Snapshot {
        snapshot_id: format!("snapshot-{taken_at}"),
        taken_at,
        tables,
        invariants,
    };
    record(lake, &snapshot).await?;
    Ok(snapshot)
}

/// Row count and order-independent checksum of `table`.
async fn checksum(catalog: &Catalog, table: &str) -> Result<(i64, String)> {
    let mut stream = catalog
        .stream(&format!("SELECT * FROM {table}"))
        .await
        .map_err(|e| Error::Other(format!("{table}: {e}")))?;
    let mut rows = 0i64;
    let mut sum = 0u64;
    let mut converter: Option<RowConverter> = None;
    while let Some(b) = stream.next().await {
        let b = b?;
        // Strings may come as views or plain; hash one form.
        let columns = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8View | DataType::LargeUtf8 => {
                    arrow::compute::cast(c, &DataType::Utf8)
                }
                DataType::BinaryView | DataType::LargeBinary => {
                    arrow::compute::cast(c, &DataType::Binary)
                }
                _ => Ok(c.clone()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if converter.is_none() {
            converter = Some(RowConverter::new(
                columns
                    .iter()
                    .map(|c| SortField::new(c.data_type().clone()))
                    .collect(),
            )?);
        }
        let Some(conv) = converter.as_ref() else {
            continue;
        };
        let converted = conv.convert_columns(&columns)?;
        for row in converted.iter() {
            let digest = Sha256::digest(row.as_ref());
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            sum = sum.wrapping_add(u64::from_be_bytes(first));
        }
        rows += b.num_rows() as i64;
    }
    Ok((rows, format!("{sum:016x}")))
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("snapshot_id", DataType::Utf8, true),
        Field::new(
            "taken_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("kind", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("table_version", DataType::Int64, true),
        Field::new("row_count", DataType::Int64, true),
        Field::new("checksum", DataType::Utf8, true),
        Field::new("violations", DataType::Int64, true),
        Field::new("violating_keys", DataType::Utf8, true),
    ]))
}

/// Append the snapshot's rows to `_sluice/snapshots`.
async fn record(lake: &Path, s: &Snapshot) -> Result<()> {
    let n = s.tables.len() + s.invariants.len();
    if n == 0 {
        return Ok(());
    }
    let mut kind = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut rows = Vec::with_capacity(n);
    let mut checksum = Vec::with_capacity(n);
    let mut violations = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for t in &s.tables {
        kind.push("table");
        name.push(t.table.clone());
        version.push(Some(t.version));
        rows.push(Some(t.rows));
        checksum.push(Some(t.checksum.clone()));
        violations.push(None);
        keys.push(None);
    }
    for i in &s.invariants {
        kind.push("invariant");
        name.push(i.name.clone());
        version.push(None);
        rows.push(None);
        checksum.push(None);
        violations.push(Some(i.violations));
        keys.push(Some(i.keys.join(", ")));
    }
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![s.snapshot_id.clone(); n])),
            Arc::new(TimestampMicrosecondArray::from(vec![s.taken_at; n]).with_timezone("UTC")),
            Arc::new(StringArray::from(kind)),
            Arc::new(StringArray::from(name)),
            Arc::new(Int64Array::from(version)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(StringArray::from(checksum)),
            Arc::new(Int64Array::from(violations)),
            Arc::new(StringArray::from(keys)),
        ],
    )?;
    let url = table::table_url(lake, SNAPSHOTS)?;
    table::append_record(SNAPSHOTS, &url, &schema(), batch).await?;
    Ok(())
}
