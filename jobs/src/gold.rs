//! `sluice job gold`: every definition of the gold directory materialised as
//! `gold.<name>`, in dependency order (a definition reading `gold.other` runs after it).
//! Each table is replaced whole in one Delta commit (a full refresh), so a run, or a
//! re-run after a failure, leaves each table exactly as its query gives it: never half
//! written, never doubled. The commit records the SHA-256 of the definition.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_connectors::delta::table;
use sluice_sql::Catalog;
use sluice_sql::definitions::{self, Definition};

use crate::error::{Error, Result};
use crate::lock::Lock;

/// One gold table built.
#[derive(Debug, Clone, Serialize)]
pub struct GoldTable {
    pub table: String,
    pub version: i64,
    pub rows: u64,
    /// SHA-256 of the definition's text.
    pub definition_sha256: String,
}

/// `dt` as Delta stores it: string and binary views as plain types, timestamps in UTC
/// microseconds (a timestamp without zone is read as UTC).
fn without_views(dt: &DataType) -> DataType {
    match dt {
        DataType::Timestamp(_, tz) => DataType::Timestamp(
            arrow::datatypes::TimeUnit::Microsecond,
            Some(tz.clone().unwrap_or_else(|| "UTC".into())),
        ),
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| {
                    Arc::new(
                        f.as_ref()
                            .clone()
                            .with_data_type(without_views(f.data_type())),
                    )
                })
                .collect(),
        ),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => {
            DataType::List(Arc::new(
                f.as_ref()
                    .clone()
                    .with_data_type(without_views(f.data_type())),
            ))
        }
        other => other.clone(),
    }
}

fn plain(batch: &RecordBatch) -> Result<RecordBatch> {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| {
            f.as_ref()
                .clone()
                .with_data_type(without_views(f.data_type()))
                .with_nullable(true)
        })
        .collect();
    let columns = batch
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Build the gold tables of `gold_dir` (or those named in `only`, as `gold.<name>`),
/// with the views of `views_dir` registered.
pub async fn gold(
    lake: &Path,
    gold_dir: &Path,
    views_dir: &Path,
    only: &[String],
) -> Result<Vec<GoldTable>> {
    let defs = definitions::read_dir(gold_dir).map_err(|e| Error::Other(e.to_string()))?;
    if defs.is_empty() {
        return Err(Error::Other(format!(
            "no gold definitions in {} (one query per <name>.sql file)",
            gold_dir.display()
        )));
    }
    for name in only {
        if !defs.iter().any(|d| &format!("gold.{}", d.name) == name) {
            return Err(Error::Other(format!(
                "no definition for {name} in {}",
                gold_dir.display()
            )));
        }
    }
    let defs =
        definitions::in_dependency_order(defs, "gold").map_err(|e| Error::Other(e.to_string()))?;
    let mut built = Vec::new();
    for d in defs {
        let name = format!("gold.{}", d.name);
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let _lock = Lock::acquire(lake, &format!("gold.{}", d.name))?;
        // A fresh catalog: the gold tables built before this one are read as they are now.
        let catalog = Catalog::open(lake)
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        catalog
            .register_views(views_dir)
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        let t = build(lake, &catalog, &d).await?;
        eprintln!("gold: {} ({} rows, version {})", t.table, t.rows, t.version);
        built.push(t);
    }
    Ok(built)
}

async fn build(lake: &Path, catalog: &Catalog, d: &Definition) -> Result<GoldTable> {
    let name = format!("gold.{}", d.name);
    let failed = |e: &dyn std::fmt::Display| Error::Other(format!("{}: {e}", d.path.display()));
    let mut stream = catalog.stream(&d.sql).await.map_err(|e| failed(&e))?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| failed(&e))?;
        if b.num_rows() > 0 {
            batches.push(plain(&b)?);
        }
    }
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    let sha = hex::encode(Sha256::digest(d.sql.as_bytes()));
    let url = table::table_url(lake, &format!("gold/{}", d.name))?;
    let t = table::open(&name, &url).await?;
    if batches.is_empty() {
        // An empty result still replaces the table's rows.
        batches.push(plain(&RecordBatch::new_empty(schema))?);
    }
    let written = t.write(batches);
    let t = written
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
        .with_table_name(d.name.clone())
        .with_commit_properties(CommitProperties::default().with_metadata([(
            "sluice.gold".to_string(),
            serde_json::Value::from(format!("sha256:{sha}")),
        )]))
        .await
        .map_err(Error::delta(&name))?;
    Ok(GoldTable {
        table: name,
        version: crate::version(&t),
        rows,
        definition_sha256: sha,
    })
}
