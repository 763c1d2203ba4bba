//! Physical removal shared by the jobs that must make data unrecoverable (erasure,
//! anonymisation): the files a commit replaced, files of older versions, and log entries
//! older than a version, after a checkpoint so the table still opens.
//!
//! Everything goes through the table's own object store (a local directory is one too),
//! so the same code purges a local lake and one in S3, Azure or GCS.

use std::sync::Arc;

use bytes::Bytes;
use deltalake::DeltaTable;
use futures::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _};

use crate::error::{Error, Result};

/// The files of one table, paths relative to its root.
pub struct TableFiles {
    name: String,
    store: Arc<dyn ObjectStore>,
    /// The table's URL, ending in `/`.
    url: String,
}

impl TableFiles {
    /// The files of `delta` (named `name` in errors).
    pub fn of(name: &str, delta: &DeltaTable) -> Self {
        let mut url = delta.table_url().to_string();
        if !url.ends_with('/') {
            url.push('/');
        }
        Self {
            name: name.to_string(),
            store: delta.log_store().object_store(None),
            url,
        }
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        Error::Other(format!("{}: {e}", self.name))
    }

    /// The bytes of `path`.
    pub async fn read(&self, path: &ObjectPath) -> Result<Bytes> {
        let got = self.store.get(path).await.map_err(|e| self.failed(e))?;
        got.bytes().await.map_err(|e| self.failed(e))
    }

    /// `uri` (as delta-rs gives a file: the table's URL and the file's path, or for a
    /// local table a plain path) relative to the table.
    pub fn relative(&self, uri: &str) -> Option<ObjectPath> {
        if let Some(rest) = uri.strip_prefix(&self.url) {
            return ObjectPath::from_url_path(rest).ok();
        }
        let root = url::Url::parse(&self.url).ok()?.to_file_path().ok()?;
        let rest = std::path::Path::new(uri).strip_prefix(&root).ok()?;
        Some(ObjectPath::from(rest.to_str()?))
    }

    /// The data and change-data files the commit at `version` removed (the ones a delete
    /// or update rewrote).
    pub async fn replaced_files(&self, version: i64) -> Result<Vec<ObjectPath>> {
        let log = ObjectPath::from(format!("_delta_log/{version:020}.json"));
        let bytes = self.read(&log).await?;
        let text = String::from_utf8_lossy(&bytes);
        let mut out = Vec::new();
        for line in text.lines() {
            let action: serde_json::Value =
                serde_json::from_str(line).map_err(|e| self.failed(format!("{log}: {e}")))?;
            for kind in ["remove", "cdc"] {
                if let Some(path) = action.get(kind).and_then(|a| a.get("path")?.as_str())
                    && let Ok(file) = ObjectPath::from_url_path(path)
                {
                    out.push(file);
                }
            }
        }
        Ok(out)
    }

    /// Every data file of the table (Parquet outside `_delta_log`), with its metadata.
    pub async fn data_files(&self) -> Result<Vec<ObjectMeta>> {
        let all: Vec<ObjectMeta> = self
            .store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| self.failed(e))?;
        Ok(all
            .into_iter()
            .filter(|m| {
                m.location.as_ref().ends_with(".parquet")
                    && !m.location.as_ref().starts_with("_delta_log/")
            })
            .collect())
    }

    /// Remove `files` from storage; the number actually removed.
    pub async fn remove(&self, files: &[ObjectPath]) -> Result<u64> {
        let mut n = 0;
        for file in files {
            match self.store.delete(file).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed(e)),
            }
        }
        Ok(n)
    }

    /// Log entries and checkpoints older than version `before`.
    pub async fn old_log_files(&self, before: i64) -> Result<Vec<ObjectPath>> {
        let prefix = ObjectPath::from("_delta_log");
        let listed: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.failed(e))?;
        Ok(listed
            .into_iter()
            .filter(|m| {
                m.location
                    .filename()
                    .and_then(log_version)
                    .is_some_and(|v| v < before)
            })
            .map(|m| m.location)
            .collect())
    }

    /// Checkpoint the table's version, then remove `old` log files (all older than it).
    pub async fn checkpoint_and_remove(
        &self,
        delta: &DeltaTable,
        old: &[ObjectPath],
    ) -> Result<u64> {
        if old.is_empty() {
            return Ok(0);
        }
        deltalake::protocol::checkpoints::create_checkpoint(delta, None)
            .await
            .map_err(Error::delta(&self.name))?;
        for path in old {
            self.store.delete(path).await.map_err(|e| self.failed(e))?;
        }
        Ok(old.len() as u64)
    }
}

/// The version a log file belongs to (`00000000000000000012.json`, `….checkpoint.parquet`).
pub fn log_version(name: &str) -> Option<i64> {
    let digits = name.get(..20)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use sluice_connectors::delta::table;

    #[tokio::test]
    async fn every_current_file_is_known_by_the_name_the_store_lists() {
        let dir = tempfile::tempdir().expect("dir");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let url = table::table_url(dir.path(), "bronze/t").expect("url");
        for n in 0..2 {
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(vec![n]))],
            )
            .expect("batch");
            table::append_record("t", &url, &schema, batch)
                .await
                .expect("append");
        }
        let delta = table::open("t", &url).await.expect("open");
        let files = TableFiles::of("t", &delta);
        let listed: Vec<ObjectPath> = files
            .data_files()
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.location)
            .collect();
        let current: Vec<ObjectPath> = delta
            .get_file_uris()
            .expect("uris")
            .map(|u| {
                files
                    .relative(&u)
                    .unwrap_or_else(|| panic!("{u} is not under the table"))
            })
            .collect();
        assert_eq!(current.len(), 2);
        for c in &current {
            assert!(listed.contains(c), "{c} not among {listed:?}");
        }
    }
}
