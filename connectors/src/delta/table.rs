//! Opening, creating and committing to Delta tables, with offsets as transaction ids.
//!
//! Every commit that lands Kafka data carries one `txn` action per (topic, partition)
//! with app id `<pipeline>-<topic>-<partition>` and version = the last offset it holds.
//! Reading those versions back tells where to resume; a commit racing another writer
//! for the same partition is refused by Delta's conflict checker (`ConcurrentTransaction`)
//! and retried against the fresh table, where [`super::fence`] drops what the other
//! writer already landed.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use sluice_pipeline::lake::Lake;
use sluice_pipeline::{OffsetRange, TopicPartition};

use crate::error::{Error, Result, delta};

/// `c` as a SQL identifier (double-quoted), for MERGE predicates and assignments.
pub fn quote(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

/// `merge` (source alias `s`) with every one of `columns` taken from the source: matched
/// rows updated, rows without a match inserted.
pub fn upsert_all(
    merge: deltalake::operations::merge::MergeBuilder,
    columns: &[String],
) -> std::result::Result<deltalake::operations::merge::MergeBuilder, deltalake::DeltaTableError> {
    merge
        .when_matched_update(|mut u| {
            for c in columns {
                u = u.update(quote(c), format!("s.{}", quote(c)));
            }
            u
        })?
        .when_not_matched_insert(|mut i| {
            for c in columns {
                i = i.set(quote(c), format!("s.{}", quote(c)));
            }
            i
        })
}

/// Transaction app id of a partition for a pipeline.
pub fn app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}-{}-{}", tp.topic, tp.partition)
}

/// `<lake>/<relative>` as a table URL: in a local lake the directory is created; in an
/// object store there are no directories to make.
pub fn lake_url(lake: &Lake, relative: &str) -> Result<url::Url> {
    match lake {
        Lake::Local(dir) => table_url(dir, relative),
        Lake::ObjectStore(_) => lake.object_url(relative).ok_or_else(|| Error::TablePath {
            path: format!("{lake}/{relative}"),
        }),
    }
}

/// The object store holding an object-store lake rooted at `root`, paths relative to it;
/// credentials and endpoint from the environment, as for its tables.
pub fn lake_store(root: &url::Url) -> Result<std::sync::Arc<dyn deltalake::ObjectStore>> {
    let store = deltalake::DeltaTableBuilder::from_url(root.clone())
        .and_then(|b| b.build_storage())
        .map_err(delta(root.as_str(), "opening the object store"))?;
    Ok(store.object_store(None))
}

/// The object store of a lake (or any location: a directory too), paths relative to it.
pub fn lake_root_store(lake: &Lake) -> Result<std::sync::Arc<dyn deltalake::ObjectStore>> {
    lake_store(&lake_url(lake, "")?)
}

/// `<lake>/<relative>` as a table URL, creating the directory.
pub fn table_url(lake: &Path, relative: &str) -> Result<url::Url> {
    let path = lake.join(relative);
    std::fs::create_dir_all(&path).map_err(|source| Error::Io {
        context: format!("creating {}", path.display()),
        source,
    })?;
    let abs = std::path::absolute(&path).map_err(|source| Error::Io {
        context: format!("resolving {}", path.display()),
        source,
    })?;
    url::Url::from_directory_path(&abs).map_err(|()| Error::TablePath {
        path: abs.display().to_string(),
    })
}

/// Open the table at `url`; a location with no table yet gives a table with no version.
pub async fn open(name: &str, url: &url::Url) -> Result<DeltaTable> {
    DeltaTable::try_from_url(url.clone())
        .await
        .map_err(delta(name, "opening"))
}

/// True once the table has a first commit.
pub fn exists(table: &DeltaTable) -> bool {
    table.version().is_some()
}

/// The table's schema in Arrow terms.
pub fn arrow_schema(name: &str, table: &DeltaTable) -> Result<SchemaRef> {
    let snapshot = table.snapshot().map_err(delta(name, "reading snapshot"))?;
    let schema: Schema = snapshot
        .schema()
        .as_ref()
        .try_into_arrow()
        .map_err(|e: arrow::error::ArrowError| Error::Arrow(e))?;
    Ok(std::sync::Arc::new(schema))
}

/// Create the table with `schema` unless another writer created it first.
pub async fn create(
    name: &str,
    url: &url::Url,
    schema: &Schema,
    partition_by: &[String],
    properties: &[(String, String)],
) -> Result<DeltaTable> {
    let kernel: StructType = schema
        .try_into_kernel()
        .map_err(|e: arrow::error::ArrowError| Error::Arrow(e))?;
    let table = open(name, url).await?;
    if exists(&table) {
        return Ok(table);
    }
    let created = table
        .create()
        .with_table_name(name.rsplit('/').next().unwrap_or(name))
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(partition_by.to_vec())
        .with_configuration(properties.iter().map(|(k, v)| (k.clone(), Some(v.clone()))))
        // `sluice.pii.*` records are ours; delta-rs knows only `delta.*` keys.
        .with_raise_if_key_not_exists(false)
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => Ok(t),
        // Lost a creation race: the other writer's table is as good as ours.
        Err(e) => {
            let t = open(name, url).await?;
            if exists(&t) {
                Ok(t)
            } else {
                Err(delta(name, "creating")(e))
            }
        }
    }
}

/// Last offset committed per partition, for `pipeline`, as the table's snapshot says.
pub async fn committed_offsets(
    name: &str,
    table: &DeltaTable,
    pipeline: &str,
    partitions: impl IntoIterator<Item = &TopicPartition>,
) -> Result<BTreeMap<TopicPartition, i64>> {
    let mut out = BTreeMap::new();
    if !exists(table) {
        return Ok(out);
    }
    let snapshot = table.snapshot().map_err(delta(name, "reading snapshot"))?;
    let log_store = table.log_store();
    for tp in partitions {
        let v = snapshot
            .transaction_version(log_store.as_ref(), app_id(pipeline, tp))
            .await
            .map_err(delta(name, "reading transaction versions"))?;
        if let Some(v) = v {
            out.insert(tp.clone(), v);
        }
    }
    Ok(out)
}

/// `schema` with every field nullable (what a table created by sluice holds).
pub(crate) fn nullable(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    )
}

/// Commit `actions` with one `txn` per partition in `ranges` (version = last offset).
pub async fn commit(
    name: &str,
    table: &mut DeltaTable,
    pipeline: &str,
    actions: Vec<Action>,
    ranges: &BTreeMap<TopicPartition, OffsetRange>,
    partition_by: &[String],
) -> Result<i64> {
    let now = chrono::Utc::now().timestamp_millis();
    let txns: Vec<Transaction> = ranges
        .iter()
        .map(|(tp, r)| Transaction::new_with_last_update(app_id(pipeline, tp), r.last, Some(now)))
        .collect();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: (!partition_by.is_empty()).then(|| partition_by.to_vec()),
        predicate: None,
    };
    let snapshot = table.snapshot().map_err(delta(name, "reading snapshot"))?;
    let finalized =
        CommitBuilder::from(CommitProperties::default().with_application_transactions(txns))
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(delta(name, "committing"))?;
    let version = finalized.version();
    table
        .update_incremental(Some(version))
        .await
        .map_err(delta(name, "reloading after commit"))?;
    Ok(version as i64)
}

/// Append `batch` to `table` (created with `schema` if it does not exist yet) in one
/// commit without offsets: the internal record tables (job runs, snapshots). Only the
/// top-level `stats_columns` carry file statistics.
pub async fn append_record(
    name: &str,
    url: &url::Url,
    schema: &SchemaRef,
    batch: RecordBatch,
    stats_columns: &[&str],
) -> Result<i64> {
    let mut t = open(name, url).await?;
    let properties = super::stats::only(schema, stats_columns);
    if exists(&t) {
        super::stats::ensure(name, &mut t, &properties, None).await?;
    } else {
        t = create(name, url, schema, &[], &properties).await?;
    }
    let mut writer = RecordBatchWriter::for_table(&t).map_err(delta(name, "opening writer"))?;
    writer.write(batch).await.map_err(delta(name, "writing"))?;
    let adds = writer.flush().await.map_err(delta(name, "writing"))?;
    let actions = adds.into_iter().map(Action::Add).collect();
    commit(name, &mut t, "sluice", actions, &BTreeMap::new(), &[]).await
}

/// Bring the table up to date with other writers.
pub async fn refresh(name: &str, table: &mut DeltaTable) -> Result<()> {
    table
        .update_incremental(None)
        .await
        .map_err(delta(name, "refreshing"))
}
