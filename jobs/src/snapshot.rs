//! `sluice job snapshot`: the end-of-day consistency snapshot. Every table of the
//! snapshot is pinned at its current version; its row count and an order-independent
//! checksum of its content are taken at that version, and the configured invariants are
//! run against the same versions. Results go to `_sluice/snapshots`, one row per table
//! and per invariant.
//!
//! The checksum is the wrapping sum, over rows, of the first 8 bytes of the SHA-256 of
//! each row's bytes in Arrow's row format: equal content gives an equal checksum
//! whatever the file layout or row order, and any changed, added or removed row moves it.
//!
//! Optionally the snapshot is exported (one Parquet file per table at its pinned version,
//! and a `manifest.json` with row counts, checksums and each file's SHA-256) and compared
//! with the previous snapshot: rows added, changed and removed per table (by key where
//! the table has one), recorded in `_sluice/snapshot_diffs`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_connectors::delta::table;
use sluice_pipeline::config::snapshot::SnapshotConfig;
use sluice_pipeline::lake::Lake;
use sluice_sql::Catalog;

use crate::JobContext;
use crate::error::{Error, Result};

/// Where snapshots are recorded under the lake.
pub const SNAPSHOTS: &str = "_sluice/snapshots";
/// Where the day-to-day differences are recorded.
pub const DIFFS: &str = "_sluice/snapshot_diffs";
/// Columns of `sluice.snapshots` with file statistics: all but the violating keys.
const SNAPSHOT_STATS: [&str; 8] = [
    "snapshot_id",
    "taken_at",
    "kind",
    "name",
    "table_version",
    "row_count",
    "checksum",
    "violations",
];
/// Columns of `sluice.snapshot_diffs` with file statistics: all but the free text.
const DIFF_STATS: [&str; 10] = [
    "snapshot_id",
    "taken_at",
    "table_name",
    "previous_snapshot_id",
    "previous_version",
    "table_version",
    "key",
    "rows_added",
    "rows_changed",
    "rows_removed",
];
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

/// What changed in one table since the previous snapshot.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TableDiff {
    pub table: String,
    pub previous_snapshot: String,
    pub previous_version: i64,
    pub version: i64,
    /// The key rows are matched by; none: whole rows (no `changed`, only added/removed).
    pub key: Vec<String>,
    pub rows_added: i64,
    pub rows_changed: Option<i64>,
    pub rows_removed: i64,
    /// Why the difference could not be taken (the previous version was vacuumed).
    pub unavailable: Option<String>,
}

/// A whole snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub taken_at: i64,
    pub tables: Vec<TableSnapshot>,
    pub invariants: Vec<InvariantResult>,
    pub diffs: Vec<TableDiff>,
    /// The manifest of the export, when one was written.
    pub manifest: Option<PathBuf>,
}

impl Snapshot {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.invariants.iter().all(|i| i.violations == 0)
    }
}

/// Take the snapshot of the context's lake, at the context's time, and record it; `keys`
/// gives the key of tables that have one (silver tables, from their config), for the
/// difference with the previous snapshot.
pub async fn snapshot(
    cx: &JobContext,
    config: &SnapshotConfig,
    keys: &BTreeMap<String, Vec<String>>,
) -> Result<Snapshot> {
    let lake = &cx.lake;
    let taken_at = cx.now().timestamp_micros();
    let catalog = Catalog::open(lake).await?;
    let previous = if config.diff {
        previous(&catalog).await?
    } else {
        None
    };
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
            .map_err(Error::sql(format!("invariant '{}'", inv.name)))?;
        let mut violations = 0i64;
        let mut keys = Vec::new();
        while let Some(b) = stream.next().await {
            let b = b?;
            violations += b.num_rows() as i64;
            if b.num_columns() > 0 && keys.len() < KEYS_SHOWN {
                let text = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
                let text = text.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                    Error::Invalid(format!(
                        "invariant '{}': its first column does not read as text",
                        inv.name
                    ))
                })?;
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
    let mut snapshot = Snapshot {
        snapshot_id: format!("snapshot-{taken_at}"),
        taken_at,
        tables,
        invariants,
        diffs: Vec::new(),
        manifest: None,
    };
    if let Some((id, before)) = previous {
        for t in &snapshot.tables {
            let Some(prev) = before.get(&t.table) else {
                continue;
            };
            let key = keys.get(&t.table).cloned().unwrap_or_default();
            let url = catalog
                .tables()
                .iter()
                .find(|r| r.qualified() == t.table)
                .map(|r| r.url.clone())
                .ok_or_else(|| Error::NoTable {
                    table: t.table.clone(),
                })?;
            snapshot.diffs.push(diff(&url, &id, prev, t, key).await?);
        }
    }
    if let Some(dir) = &config.export_to {
        snapshot.manifest =
            Some(export(&catalog, &dir.join(&snapshot.snapshot_id), &snapshot).await?);
    }
    record(lake, &snapshot).await?;
    record_diffs(lake, &snapshot).await?;
    Ok(snapshot)
}

/// The tables of the latest recorded snapshot: id, and version, rows and checksum by table.
async fn previous(catalog: &Catalog) -> Result<Option<(String, BTreeMap<String, TableSnapshot>)>> {
    if !catalog
        .tables()
        .iter()
        .any(|t| t.qualified() == "sluice.snapshots")
    {
        return Ok(None);
    }
    let batches = catalog
        .query(
            "SELECT snapshot_id, name, table_version, row_count, checksum FROM sluice.snapshots \
             WHERE kind = 'table' AND taken_at = \
             (SELECT max(taken_at) FROM sluice.snapshots WHERE kind = 'table')",
        )
        .await
        .map_err(Error::sql("previous snapshot"))?;
    let mut id = None;
    let mut tables = BTreeMap::new();
    for b in &batches {
        let text = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8);
        let (ids, names, sums) = (text(0)?, text(1)?, text(4)?);
        let versions = arrow::compute::cast(b.column(2), &DataType::Int64)?;
        let rows = arrow::compute::cast(b.column(3), &DataType::Int64)?;
        let versions = versions.as_primitive::<arrow::datatypes::Int64Type>();
        let rows = rows.as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            id = Some(ids.as_string::<i32>().value(i).to_string());
            let table = names.as_string::<i32>().value(i).to_string();
            tables.insert(
                table.clone(),
                TableSnapshot {
                    table,
                    version: versions.value(i),
                    rows: rows.value(i),
                    checksum: sums.as_string::<i32>().value(i).to_string(),
                },
            );
        }
    }
    Ok(id.map(|id| (id, tables)))
}

/// Rows of a table at one version, by digest: key → row when keyed, row → count otherwise.
type RowMap = HashMap<u64, u64>;

async fn row_map(url: &url::Url, version: i64, key: &[String]) -> Result<RowMap> {
    use deltalake::datafusion::prelude::SessionContext;
    let name = url.to_string();
    let table = deltalake::open_table_with_version(url.clone(), version.max(0) as u64)
        .await
        .map_err(Error::delta(&name))?;
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(Error::delta(&name))?;
    ctx.register_table("t", table.table_provider().await?)?;
    let mut stream = ctx.sql("SELECT * FROM t").await?.execute_stream().await?;
    let mut rows = RowMap::new();
    let (mut all, mut keyed) = (None, None);
    while let Some(b) = stream.next().await {
        let b = b?;
        let digests = row_digests(b.columns(), &mut all)?;
        if key.is_empty() {
            for d in digests {
                *rows.entry(d).or_default() += 1;
            }
            continue;
        }
        let key_columns = key
            .iter()
            .map(|k| {
                b.column_by_name(k)
                    .cloned()
                    .ok_or_else(|| Error::Invalid(format!("{name}: no key column '{k}'")))
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        for (k, d) in row_digests(&key_columns, &mut keyed)?
            .into_iter()
            .zip(digests)
        {
            rows.insert(k, d);
        }
    }
    Ok(rows)
}

/// Added, changed (keyed only) and removed rows from `before` to `after`.
fn compare(before: &RowMap, after: &RowMap, keyed: bool) -> (i64, Option<i64>, i64) {
    if keyed {
        let added = after.keys().filter(|k| !before.contains_key(k)).count() as i64;
        let removed = before.keys().filter(|k| !after.contains_key(k)).count() as i64;
        let changed = after
            .iter()
            .filter(|(k, row)| before.get(k).is_some_and(|b| b != *row))
            .count() as i64;
        return (added, Some(changed), removed);
    }
    let (mut added, mut removed) = (0i64, 0i64);
    for (row, n) in after {
        let was = before.get(row).copied().unwrap_or(0);
        added += n.saturating_sub(was) as i64;
    }
    for (row, n) in before {
        let now = after.get(row).copied().unwrap_or(0);
        removed += n.saturating_sub(now) as i64;
    }
    (added, None, removed)
}

async fn diff(
    url: &url::Url,
    previous_snapshot: &str,
    prev: &TableSnapshot,
    now: &TableSnapshot,
    key: Vec<String>,
) -> Result<TableDiff> {
    let mut d = TableDiff {
        table: now.table.clone(),
        previous_snapshot: previous_snapshot.to_string(),
        previous_version: prev.version,
        version: now.version,
        rows_changed: (!key.is_empty()).then_some(0),
        key,
        ..Default::default()
    };
    // Same content, same checksum: nothing to read.
    if prev.checksum == now.checksum && prev.rows == now.rows {
        return Ok(d);
    }
    let before = match row_map(url, prev.version, &d.key).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(table = %now.table, version = prev.version, error = %e, "previous version unreadable");
            d.unavailable = Some(format!(
                "version {} can no longer be read (its files were removed by vacuum, erasure or anonymisation)",
                prev.version
            ));
            d.rows_changed = None;
            return Ok(d);
        }
    };
    let after = row_map(url, now.version, &d.key).await?;
    let (added, changed, removed) = compare(&before, &after, !d.key.is_empty());
    d.rows_added = added;
    d.rows_changed = changed;
    d.rows_removed = removed;
    Ok(d)
}

/// A table's export in the manifest.
#[derive(Debug, Clone, Serialize)]
struct ExportedTable<'a> {
    table: &'a str,
    version: i64,
    rows: i64,
    checksum: &'a str,
    file: String,
    bytes: u64,
    sha256: String,
}

/// Write every table of the snapshot at its pinned version to `dir` (one Parquet file
/// each) and a `manifest.json`; the manifest's path.
async fn export(catalog: &Catalog, dir: &Path, s: &Snapshot) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut exported = Vec::new();
    for t in &s.tables {
        let file = format!("{}.parquet", t.table);
        let path = dir.join(&file);
        let mut stream = catalog
            .stream(&format!("SELECT * FROM {}", t.table))
            .await
            .map_err(Error::sql(format!("exporting {}", t.table)))?;
        let out = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let failed = |e| Error::parquet(path.display().to_string())(e);
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(out, stream.schema(), None).map_err(failed)?;
        while let Some(b) = stream.next().await {
            writer.write(&b?).map_err(failed)?;
        }
        writer.close().map_err(failed)?;
        let written = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (bytes, sha256) = (written.len() as u64, hex::encode(Sha256::digest(&written)));
        exported.push(ExportedTable {
            table: &t.table,
            version: t.version,
            rows: t.rows,
            checksum: &t.checksum,
            file,
            bytes,
            sha256,
        });
    }
    let manifest = serde_json::json!({
        "snapshot_id": s.snapshot_id,
        "taken_at": chrono::DateTime::from_timestamp_micros(s.taken_at).map(|t| t.to_rfc3339()),
        "tables": exported,
        "invariants": s.invariants,
        "diffs": s.diffs,
    });
    let path = dir.join("manifest.json");
    let partial = dir.join("manifest.json.partial");
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(Error::json(path.display().to_string()))?;
    std::fs::write(&partial, text).map_err(|e| Error::io(&partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Each row's digest: the first 8 bytes of the SHA-256 of its bytes in Arrow's row
/// format, strings and bytes normalised from views so both forms hash alike.
fn row_digests(columns: &[ArrayRef], converter: &mut Option<RowConverter>) -> Result<Vec<u64>> {
    let columns = columns
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => arrow::compute::cast(c, &DataType::Utf8),
            DataType::BinaryView | DataType::LargeBinary => {
                arrow::compute::cast(c, &DataType::Binary)
            }
            _ => Ok(c.clone()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if converter.is_none() {
        *converter = Some(RowConverter::new(
            columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?);
    }
    let Some(conv) = converter.as_ref() else {
        return Ok(Vec::new());
    };
    let converted = conv.convert_columns(&columns)?;
    Ok(converted
        .iter()
        .map(|row| {
            let digest = Sha256::digest(row.as_ref());
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(first)
        })
        .collect())
}

/// Row count and order-independent checksum of `table`.
async fn checksum(catalog: &Catalog, table: &str) -> Result<(i64, String)> {
    let mut stream = catalog
        .stream(&format!("SELECT * FROM {table}"))
        .await
        .map_err(Error::sql(table))?;
    let mut rows = 0i64;
    let mut sum = 0u64;
    let mut converter: Option<RowConverter> = None;
    while let Some(b) = stream.next().await {
        let b = b?;
        for d in row_digests(b.columns(), &mut converter)? {
            sum = sum.wrapping_add(d);
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
async fn record(lake: &Lake, s: &Snapshot) -> Result<()> {
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
    let url = table::lake_url(lake, SNAPSHOTS)?;
    table::append_record(SNAPSHOTS, &url, &schema(), batch, &SNAPSHOT_STATS).await?;
    Ok(())
}

fn diff_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("snapshot_id", DataType::Utf8, true),
        Field::new(
            "taken_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("previous_snapshot_id", DataType::Utf8, true),
        Field::new("previous_version", DataType::Int64, true),
        Field::new("table_version", DataType::Int64, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("rows_added", DataType::Int64, true),
        Field::new("rows_changed", DataType::Int64, true),
        Field::new("rows_removed", DataType::Int64, true),
        Field::new("unavailable", DataType::Utf8, true),
    ]))
}

/// Append the snapshot's differences to `_sluice/snapshot_diffs`.
async fn record_diffs(lake: &Lake, s: &Snapshot) -> Result<()> {
    let n = s.diffs.len();
    if n == 0 {
        return Ok(());
    }
    let d = &s.diffs;
    let batch = RecordBatch::try_new(
        diff_schema(),
        vec![
            Arc::new(StringArray::from(vec![s.snapshot_id.clone(); n])),
            Arc::new(TimestampMicrosecondArray::from(vec![s.taken_at; n]).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(
                d.iter().map(|d| d.table.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                d.iter().map(|d| d.previous_snapshot.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                d.iter().map(|d| d.previous_version),
            )),
            Arc::new(Int64Array::from_iter_values(d.iter().map(|d| d.version))),
            Arc::new(StringArray::from_iter_values(
                d.iter().map(|d| d.key.join(",")),
            )),
            Arc::new(Int64Array::from_iter_values(d.iter().map(|d| d.rows_added))),
            Arc::new(Int64Array::from_iter(d.iter().map(|d| d.rows_changed))),
            Arc::new(Int64Array::from_iter_values(
                d.iter().map(|d| d.rows_removed),
            )),
            Arc::new(StringArray::from_iter(
                d.iter().map(|d| d.unavailable.as_deref()),
            )),
        ],
    )?;
    let url = table::lake_url(lake, DIFFS)?;
    table::append_record(DIFFS, &url, &diff_schema(), batch, &DIFF_STATS).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_by_key_tell_changed_rows_from_added_and_removed() {
        let before: RowMap = [(1, 10), (2, 20), (3, 30)].into_iter().collect();
        let after: RowMap = [(1, 10), (2, 21), (4, 40)].into_iter().collect();
        assert_eq!(compare(&before, &after, true), (1, Some(1), 1));
        assert_eq!(compare(&before, &before, true), (0, Some(0), 0));
    }

    #[test]
    fn differences_of_whole_rows_count_duplicates() {
        // Row digest → how many times it occurs.
        let before: RowMap = [(7, 2), (8, 1)].into_iter().collect();
        let after: RowMap = [(7, 3), (9, 1)].into_iter().collect();
        assert_eq!(compare(&before, &after, false), (2, None, 1));
    }
}
