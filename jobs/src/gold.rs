//! `sluice job gold`: every definition of the gold directory materialised as
//! `gold.<name>`, in dependency order (a definition reading `gold.other` runs after it).
//! Each table is replaced whole in one Delta commit (a full refresh), so a run, or a
//! re-run after a failure, leaves each table exactly as its query gives it: never half
//! written, never doubled. The commit records the SHA-256 of the definition.
//!
//! A definition declaring `-- sluice: key = …` and `-- sluice: watermark = …` is built
//! incrementally once its table exists: the run reads the table's highest watermark W,
//! computes only the definition's rows with watermark ≥ W (the filter reaches the scans
//! where it can), and MERGEs them on the key in one commit: rows updated or added, rows
//! at or after W that the query no longer gives deleted, rows before W untouched. When
//! the definition's text changed (its SHA-256 differs from the last build's), or the
//! table is empty, the run is a full refresh.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::scalar::ScalarValue;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_connectors::delta::stats::{self, StatsPolicy, TableKind};
use sluice_connectors::delta::table;
use sluice_pipeline::lake::Lake;
use sluice_sql::Catalog;
use sluice_sql::definitions::{self, Definition};

use crate::JobContext;
use crate::error::{Error, Result};
use crate::lock::{Lock, table_lock};

/// One gold table built.
#[derive(Debug, Clone, Serialize)]
pub struct GoldTable {
    pub table: String,
    pub version: i64,
    pub rows: u64,
    /// SHA-256 of the definition's text.
    pub definition_sha256: String,
    /// `full` (the table replaced) or `incremental` (rows from the watermark MERGEd).
    pub mode: String,
    /// The watermark an incremental build started from.
    pub from_watermark: Option<String>,
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

/// Build the gold tables of `gold_dir` (or those named in `only`, as `gold.<name>`) in the
/// context's lake, with the views of `views_dir` registered.
pub async fn gold(
    cx: &JobContext,
    gold_dir: &Path,
    views_dir: &Path,
    only: &[String],
    stats: &StatsPolicy,
) -> Result<Vec<GoldTable>> {
    let lake = &cx.lake;
    let defs = definitions::read_dir(gold_dir)?;
    if defs.is_empty() {
        return Err(Error::Invalid(format!(
            "no gold definitions in {} (one query per <name>.sql file)",
            gold_dir.display()
        )));
    }
    for name in only {
        if !defs.iter().any(|d| &format!("gold.{}", d.name) == name) {
            return Err(Error::Invalid(format!(
                "no definition for {name} in {}",
                gold_dir.display()
            )));
        }
    }
    let defs = definitions::in_dependency_order(defs, "gold")?;
    let mut built = Vec::new();
    for d in defs {
        let name = format!("gold.{}", d.name);
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let lock = Lock::acquire_in(cx, &format!("gold.{}", d.name)).await?;
        // The table's rewrite lock from before its sources are read to after its commit:
        // an erasure (which visits gold after bronze and silver) waits for the build, then
        // finds what it committed, so a build that read a subject's rows before they were
        // erased cannot bring them back. Maintenance and anonymisation wait likewise.
        let rewriting =
            Lock::acquire_waiting(cx, &table_lock(&name), crate::erase::LOCK_WAIT).await?;
        // A fresh catalog: the gold tables built before this one are read as they are now.
        let mut catalog = Catalog::open(lake).await?;
        catalog.register_views(views_dir).await?;
        let t = build(lake, &catalog, &d, stats).await?;
        rewriting.release().await;
        lock.release().await;
        eprintln!("gold: {} ({} rows, version {})", t.table, t.rows, t.version);
        built.push(t);
    }
    Ok(built)
}

async fn build(
    lake: &Lake,
    catalog: &Catalog,
    d: &Definition,
    stats: &StatsPolicy,
) -> Result<GoldTable> {
    let name = format!("gold.{}", d.name);
    let sha = hex::encode(Sha256::digest(d.sql.as_bytes()));
    let url = table::lake_url(lake, &format!("gold/{}", d.name))?;
    let t = table::open(&name, &url).await?;
    if let Some(w) = &d.watermark
        && table::exists(&t)
        && last_definition(&t).await.as_deref() == Some(sha.as_str())
        && let Some(from) = high_watermark(catalog, &name, w).await
    {
        return incremental(catalog, d, t, sha, w, from, stats).await;
    }
    let stream = catalog
        .stream(&d.sql)
        .await
        .map_err(Error::sql(d.path.display().to_string()))?;
    let (batches, rows) = plain_rows(d, stream).await?;
    // A new table is created by its first write (one commit), with the statistics
    // settings its columns allow; an existing one has them brought up to date first.
    let properties = stats.properties(TableKind::Derived, &batches[0].schema());
    let mut t = t;
    let created = !table::exists(&t);
    if !created {
        stats::ensure(&name, &mut t, &properties, None).await?;
    }
    let mut written = t.write(batches);
    if created {
        written = written.with_configuration(properties.into_iter().map(|(k, v)| (k, Some(v))));
    }
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
        mode: "full".into(),
        from_watermark: None,
    })
}

/// The table at `url` ready for rows of `schema`: created with the statistics `stats`
/// allows for them, or its settings brought up to date.
async fn with_statistics(
    name: &str,
    mut t: deltalake::DeltaTable,
    url: &url::Url,
    schema: &Schema,
    stats: &StatsPolicy,
) -> Result<deltalake::DeltaTable> {
    let properties = stats.properties(TableKind::Derived, schema);
    if table::exists(&t) {
        stats::ensure(name, &mut t, &properties, None).await?;
        Ok(t)
    } else {
        Ok(table::create(name, url, schema, &[], &properties).await?)
    }
}

/// The query's rows as Delta stores them (see [`plain`]) and their count; an empty result
/// is one empty batch, so that it still replaces (or merges into) the table's rows.
async fn plain_rows(
    d: &Definition,
    mut stream: deltalake::datafusion::physical_plan::SendableRecordBatchStream,
) -> Result<(Vec<RecordBatch>, u64)> {
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(b) = stream.next().await {
        let b = b.map_err(Error::query(d.path.display().to_string()))?;
        if b.num_rows() > 0 {
            batches.push(plain(&b)?);
        }
    }
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    if batches.is_empty() {
        batches.push(plain(&RecordBatch::new_empty(schema))?);
    }
    Ok((batches, rows))
}

/// The definition hash recorded by the table's last build.
async fn last_definition(t: &deltalake::DeltaTable) -> Option<String> {
    let mut history = t.history(Some(50));
    while let Some(commit) = history.next().await {
        let Ok(commit) = commit else { return None };
        if let Some(v) = commit.info.get("sluice.gold").and_then(|v| v.as_str()) {
            return Some(v.trim_start_matches("sha256:").to_string());
        }
    }
    None
}

/// The table's highest watermark; none when the table is empty or lacks the column.
async fn high_watermark(catalog: &Catalog, name: &str, column: &str) -> Option<ScalarValue> {
    let batches = catalog
        .query(&format!("select max({}) from {name}", table::quote(column)))
        .await
        .ok()?;
    let b = batches.first()?;
    let v = ScalarValue::try_from_array(b.column(0), 0).ok()?;
    (!v.is_null()).then_some(v)
}

/// MERGE the definition's rows at or after `from` into the table, on the key.
async fn incremental(
    catalog: &Catalog,
    d: &Definition,
    t: deltalake::DeltaTable,
    sha: String,
    w: &str,
    from: ScalarValue,
    stats: &StatsPolicy,
) -> Result<GoldTable> {
    use deltalake::datafusion::prelude::{Column, Expr, SessionContext, col, ident, lit};
    let name = format!("gold.{}", d.name);
    let failed = |e| Error::query(d.path.display().to_string())(e);
    let df = catalog.context().sql(&d.sql).await.map_err(failed)?;
    for c in d.key.iter().map(String::as_str).chain([w]) {
        if df.schema().field_with_unqualified_name(c).is_err() {
            return Err(Error::Invalid(format!(
                "{}: the query gives no column {c} (sluice: key / watermark)",
                d.path.display()
            )));
        }
    }
    let as_query = df
        .schema()
        .field_with_unqualified_name(w)
        .map(|f| f.data_type().clone())
        .map_err(failed)?;
    let start = from.cast_to(&as_query).map_err(failed)?;
    let df = df.filter(ident(w).gt_eq(lit(start))).map_err(failed)?;
    let stream = df.execute_stream().await.map_err(failed)?;
    let (batches, rows) = plain_rows(d, stream).await?;
    let columns: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let url = t.table_url().clone();
    let t = with_statistics(&name, t, &url, &batches[0].schema(), stats).await?;
    let source = SessionContext::new()
        .read_batches(batches)
        .map_err(failed)?;
    let on: Vec<String> = d
        .key
        .iter()
        .map(|k| format!("t.{} = s.{}", table::quote(k), table::quote(k)))
        .collect();
    let stale: Expr = col(Column::new(Some("t"), w)).gt_eq(lit(from.clone()));
    let merge = t
        .merge(source, on.join(" AND "))
        .with_source_alias("s")
        .with_target_alias("t")
        .with_commit_properties(CommitProperties::default().with_metadata([
            (
                "sluice.gold".to_string(),
                serde_json::Value::from(format!("sha256:{sha}")),
            ),
            (
                "sluice.gold.from_watermark".to_string(),
                serde_json::Value::from(from.to_string()),
            ),
        ]));
    let (t, _) = table::upsert_all(merge, &columns)
        .and_then(|m| m.when_not_matched_by_source_delete(|del| del.predicate(stale)))
        .map_err(Error::delta(&name))?
        .await
        .map_err(Error::delta(&name))?;
    Ok(GoldTable {
        table: name,
        version: crate::version(&t),
        rows,
        definition_sha256: sha,
        mode: "incremental".into(),
        from_watermark: Some(from.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Float64Array, Int64Array};

    /// Append rows (day as days since the epoch, amount) to `bronze.spend`.
    async fn append(lake: &Path, rows: &[(i32, f64)]) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Date32, true),
            Field::new("amount", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch");
        let url = table::table_url(lake, "bronze/spend").expect("url");
        table::open("bronze.spend", &url)
            .await
            .expect("open")
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("append");
    }

    /// (day, n) of gold.daily, by day.
    async fn daily(lake: &Path) -> Vec<(i32, i64)> {
        let catalog = Catalog::open(lake).await.expect("catalog");
        let batches = catalog
            .query("select day, n from gold.daily order by day")
            .await
            .expect("query");
        let mut out = Vec::new();
        for b in batches {
            let days = b
                .column(0)
                .as_any()
                .downcast_ref::<Date32Array>()
                .expect("day");
            let n = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("n");
            out.extend((0..b.num_rows()).map(|i| (days.value(i), n.value(i))));
        }
        out
    }

    #[tokio::test]
    async fn incremental_gold_recomputes_from_the_watermark_and_a_new_definition_rebuilds() {
        let dir = tempfile::tempdir().expect("tmp");
        let lake = dir.path().join("lake");
        let defs = dir.path().join("gold");
        std::fs::create_dir_all(&defs).expect("dir");
        let definition = "-- sluice: key = day\n-- sluice: watermark = day\n\
             select day, count(*) as n, sum(amount) as total from bronze.spend group by day";
        std::fs::write(defs.join("daily.sql"), definition).expect("definition");
        let views = dir.path().join("views");
        let (d1, d2, d3) = (20_000, 20_001, 20_002);
        let cx = JobContext::with_system_clock(&lake);

        append(&lake, &[(d1, 1.0), (d1, 2.0), (d2, 3.0)]).await;
        let first = gold(&cx, &defs, &views, &[], &StatsPolicy::default())
            .await
            .expect("gold");
        assert_eq!((first[0].mode.as_str(), first[0].rows), ("full", 2));
        assert_eq!(daily(&lake).await, vec![(d1, 2), (d2, 1)]);

        // A late row for the first day, one more for the watermark's day, a new day.
        append(&lake, &[(d1, 4.0), (d2, 5.0), (d3, 6.0)]).await;
        let second = gold(&cx, &defs, &views, &[], &StatsPolicy::default())
            .await
            .expect("gold");
        assert_eq!(
            (second[0].mode.as_str(), second[0].rows),
            ("incremental", 2)
        );
        assert_eq!(second[0].from_watermark.as_deref(), Some("2024-10-05"));
        // Days before the watermark are left as they were: the late row is not counted.
        assert_eq!(daily(&lake).await, vec![(d1, 2), (d2, 2), (d3, 1)]);
        // A re-run changes nothing but the version.
        let again = gold(&cx, &defs, &views, &[], &StatsPolicy::default())
            .await
            .expect("gold");
        assert_eq!(again[0].rows, 1);
        assert_eq!(daily(&lake).await, vec![(d1, 2), (d2, 2), (d3, 1)]);

        // A changed definition is a full refresh.
        std::fs::write(defs.join("daily.sql"), format!("-- v2\n{definition}")).expect("v2");
        let rebuilt = gold(&cx, &defs, &views, &[], &StatsPolicy::default())
            .await
            .expect("gold");
        assert_eq!(rebuilt[0].mode, "full");
        assert_eq!(daily(&lake).await, vec![(d1, 3), (d2, 2), (d3, 1)]);
    }
}
