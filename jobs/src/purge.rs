//! Physical removal shared by the jobs that must make data unrecoverable (erasure,
//! anonymisation): the files a commit replaced, files of older versions, and log entries
//! older than a version, after a checkpoint so the table still opens.
//!
//! Everything goes through the table's own object store (a local directory is one too),
//! so the same code purges a local lake and one in S3, Azure or GCS.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray, new_null_array};
use bytes::Bytes;
use deltalake::DeltaTable;
use futures::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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

    /// A failure of the table's object store.
    fn failed(&self, e: object_store::Error) -> Error {
        Error::object_store(&self.name)(e)
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
            let action: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::json(format!("{}: {log}", self.name))(e))?;
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

    /// The bytes of `path`, if it exists.
    pub async fn read_if_exists(&self, path: &ObjectPath) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(|e| self.failed(e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Remove `files` from storage; the number actually removed.
    pub async fn remove(&self, files: &[ObjectPath]) -> Result<u64> {
        let missing = self.remove_missing(files).await?;
        Ok((files.len() - missing.len()) as u64)
    }

    /// Remove `files` from storage; the ones that were already gone.
    pub async fn remove_missing(&self, files: &[ObjectPath]) -> Result<Vec<ObjectPath>> {
        let mut missing = Vec::new();
        for file in files {
            match self.store.delete(file).await {
                Ok(()) => {}
                Err(object_store::Error::NotFound { .. }) => missing.push(file.clone()),
                Err(e) => return Err(self.failed(e)),
            }
        }
        Ok(missing)
    }

    /// Checkpoint `delta` at its version and read what its log says up to it: the commit
    /// entries not scrubbed yet, the checkpoints, and every file they name.
    pub async fn checkpoint_and_read(&self, delta: &DeltaTable) -> Result<LogView> {
        deltalake::protocol::checkpoints::create_checkpoint(delta, None)
            .await
            .map_err(Error::delta(&self.name))?;
        self.read_log(crate::version(delta)).await
    }

    /// What the log says up to `version` (which has a checkpoint): commit entries above the
    /// last scrub, every checkpoint, and the files named by them and by the checkpoint at
    /// `version` (current files and tombstones).
    pub async fn read_log(&self, version: i64) -> Result<LogView> {
        let scrubbed = self.scrubbed_through().await?;
        let prefix = ObjectPath::from("_delta_log");
        let listed: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.failed(e))?;
        let mut view = LogView {
            version,
            ..Default::default()
        };
        for m in listed {
            let Some(name) = m.location.filename() else {
                continue;
            };
            let Some(v) = log_version(name) else {
                continue;
            };
            if v > version {
                continue;
            }
            if name.ends_with(".json") {
                if scrubbed.is_none_or(|s| v > s) {
                    let bytes = self.read(&m.location).await?;
                    for (_, path) in named_in_entry(&bytes) {
                        if let Ok(p) = ObjectPath::from_url_path(&path) {
                            view.named.insert(p);
                        }
                    }
                    view.entries.push((m.location, bytes));
                }
            } else if name.contains(".checkpoint.") {
                if v == version {
                    let bytes = self.read(&m.location).await?;
                    for path in named_in_checkpoint(&self.name, bytes)? {
                        if let Ok(p) = ObjectPath::from_url_path(&path) {
                            view.named.insert(p);
                        }
                    }
                    view.checkpoint.push(m.location);
                } else {
                    view.old_checkpoints.push(m.location);
                }
            } else if name.ends_with(".crc") {
                view.old_checkpoints.push(m.location);
            }
        }
        view.entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(view)
    }

    /// The version through which this table's log was scrubbed, if ever.
    async fn scrubbed_through(&self) -> Result<Option<i64>> {
        match self.store.get(&ObjectPath::from(SCRUBBED)).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| self.failed(e))?;
                Ok(String::from_utf8_lossy(&bytes).trim().parse().ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Remove every trace of the files in `purged` (and every statistic) from the log up
    /// to `log.version`:
    ///
    /// - the checkpoint at that version keeps its tombstones' paths only (no statistics,
    ///   partition values or tags);
    /// - each commit entry read is rewritten in place without file statistics, without the
    ///   partition values of purged or removed files, and without commit parameters
    ///   (predicates of other engines may hold values) or request ids; the protocol action
    ///   goes too, so that versions before the checkpoint no longer open. Entries are never
    ///   deleted: a writer still holding an older snapshot then meets the existing entry and
    ///   retries on the new checkpoint, instead of committing into a hole below it;
    /// - older checkpoints and checksum files are deleted when `drop_old_checkpoints`.
    ///
    /// Returns how many log files were rewritten or removed.
    pub async fn scrub(
        &self,
        log: &LogView,
        purged: &HashSet<ObjectPath>,
        drop_old_checkpoints: bool,
    ) -> Result<u64> {
        let mut n = 0;
        for path in &log.checkpoint {
            let bytes = self.read(path).await?;
            let cleaned = scrub_checkpoint(&self.name, bytes)?;
            let size = cleaned.len();
            self.store
                .put(path, cleaned.into())
                .await
                .map_err(|e| self.failed(e))?;
            self.fix_last_checkpoint(log.version, size).await?;
            n += 1;
        }
        let purged: HashSet<String> = purged.iter().map(|p| p.as_ref().to_string()).collect();
        for (path, bytes) in &log.entries {
            if let Some(cleaned) = scrub_entry(bytes, &purged) {
                self.store
                    .put(path, cleaned.into())
                    .await
                    .map_err(|e| self.failed(e))?;
                n += 1;
            }
        }
        if drop_old_checkpoints {
            for path in &log.old_checkpoints {
                match self.store.delete(path).await {
                    Ok(()) => n += 1,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.failed(e)),
                }
            }
        }
        self.store
            .put(
                &ObjectPath::from(SCRUBBED),
                log.version.to_string().into_bytes().into(),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(n)
    }

    /// `_last_checkpoint` after the checkpoint at `version` was rewritten to `size` bytes.
    async fn fix_last_checkpoint(&self, version: i64, size: usize) -> Result<()> {
        let path = ObjectPath::from("_delta_log/_last_checkpoint");
        let Ok(got) = self.store.get(&path).await else {
            return Ok(());
        };
        let bytes = got.bytes().await.map_err(|e| self.failed(e))?;
        let Ok(mut last) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Ok(());
        };
        if last["version"].as_i64() != Some(version) {
            return Ok(());
        }
        if let Some(o) = last.as_object_mut() {
            if o.contains_key("sizeInBytes") {
                o.insert("sizeInBytes".into(), serde_json::Value::from(size));
            }
            o.remove("checksum");
        }
        let text =
            serde_json::to_vec(&last).map_err(Error::json(format!("{}: {path}", self.name)))?;
        self.store
            .put(&path, text.into())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}

/// Where a table records the version through which its log was scrubbed (inside
/// `_delta_log`, under a name no Delta reader takes for a log file).
pub const SCRUBBED: &str = "_delta_log/_sluice_scrubbed";

/// What a table's log says up to a version.
#[derive(Debug, Default)]
pub struct LogView {
    /// The version (it has a checkpoint).
    pub version: i64,
    /// Commit entries up to `version` not scrubbed yet, with their bytes, in order.
    pub entries: Vec<(ObjectPath, Bytes)>,
    /// The checkpoint (parts) at `version`.
    pub checkpoint: Vec<ObjectPath>,
    /// Checkpoints and checksum files older than `version`.
    pub old_checkpoints: Vec<ObjectPath>,
    /// Files named by add, remove and change-data actions of the entries read and of the
    /// checkpoint at `version`: files some writer committed.
    pub named: HashSet<ObjectPath>,
}

/// `(kind, path)` of every file action in a commit entry.
pub fn named_in_entry(bytes: &[u8]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        for kind in ["add", "remove", "cdc"] {
            if let Some(path) = action.get(kind).and_then(|a| a.get("path")?.as_str()) {
                out.push((kind, path.to_string()));
            }
        }
    }
    out
}

/// Paths of the add and remove actions of a checkpoint.
fn named_in_checkpoint(table: &str, bytes: Bytes) -> Result<Vec<String>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(Error::parquet(format!("{table}: reading a checkpoint")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        for kind in ["add", "remove"] {
            let Some(s) = batch.column_by_name(kind).and_then(|c| c.as_struct_opt()) else {
                continue;
            };
            let Some(paths) = s
                .column_by_name("path")
                .and_then(|c| c.as_string_opt::<i32>())
            else {
                continue;
            };
            for i in 0..s.len() {
                if s.is_valid(i) && paths.is_valid(i) {
                    out.push(paths.value(i).to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Fields of a `remove` action (and of `add` and `cdc` actions of purged files) that
/// describe the file's content, dropped by [`scrub_entry`] and [`scrub_checkpoint`].
const DESCRIBING: [&str; 5] = [
    "stats",
    "stats_parsed",
    "partitionValues",
    "partitionValues_parsed",
    "tags",
];

/// `bytes` (a commit entry) without file statistics, without what describes removed and
/// purged files, and without commit parameters and request ids; `None` when nothing
/// changes. Lines that are not JSON are kept as they are.
pub fn scrub_entry(bytes: &[u8], purged: &HashSet<String>) -> Option<Vec<u8>> {
    let mut changed = false;
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let ends_with_newline = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .split(|b| *b == b'\n')
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let mut action: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) => {
                out.extend_from_slice(line);
                if i + 1 < lines.len() || ends_with_newline {
                    out.push(b'\n');
                }
                continue;
            }
        };
        // Without its protocol the log up to here no longer opens as a table: time travel
        // before the scrub fails rather than reading a version whose files or statistics
        // are gone. Readers and writers go through the checkpoint, which has it.
        if action.get("protocol").is_some() {
            changed = true;
            continue;
        }
        let mut touched = false;
        if let Some(o) = action.as_object_mut() {
            for (kind, a) in o.iter_mut() {
                let Some(a) = a.as_object_mut() else { continue };
                let is_purged = a
                    .get("path")
                    .and_then(|p| p.as_str())
                    .and_then(|p| object_store::path::Path::from_url_path(p).ok())
                    .is_some_and(|p| purged.contains(p.as_ref()));
                match kind.as_str() {
                    "add" | "cdc" => {
                        for f in ["stats", "stats_parsed"] {
                            touched |= a.remove(f).is_some();
                        }
                        if is_purged {
                            for f in DESCRIBING.iter().filter(|f| **f != "partitionValues") {
                                touched |= a.remove(*f).is_some();
                            }
                            // Required in add and cdc actions: kept, empty.
                            let empty = a
                                .get("partitionValues")
                                .and_then(|v| v.as_object())
                                .is_some_and(serde_json::Map::is_empty);
                            if !empty {
                                a.insert("partitionValues".into(), serde_json::json!({}));
                                touched = true;
                            }
                        }
                    }
                    "remove" => {
                        for f in DESCRIBING {
                            touched |= a.remove(f).is_some();
                        }
                        if a.get("extendedFileMetadata") == Some(&serde_json::Value::Bool(true)) {
                            a.insert("extendedFileMetadata".into(), false.into());
                            touched = true;
                        }
                    }
                    "commitInfo" => {
                        // The erasure attempt's random id stays: it names nothing, and a
                        // stopped erasure finds its delete by it.
                        for f in ["operationParameters", "userMetadata", "sluice.erasure"] {
                            touched |= a.remove(f).is_some();
                        }
                    }
                    _ => {}
                }
            }
        }
        if touched {
            changed = true;
            match serde_json::to_vec(&action) {
                Ok(v) => out.extend_from_slice(&v),
                Err(_) => out.extend_from_slice(line),
            }
        } else {
            out.extend_from_slice(line);
        }
        if i + 1 < lines.len() || ends_with_newline {
            out.push(b'\n');
        }
    }
    changed.then_some(out)
}

/// A checkpoint (Parquet) whose tombstones keep only their paths: every field of
/// [`DESCRIBING`] in the `remove` column is nulled (where the schema allows), as is
/// `extendedFileMetadata`. Current files (`add`) keep their statistics.
pub fn scrub_checkpoint(table: &str, bytes: Bytes) -> Result<Vec<u8>> {
    let failed = |e| Error::parquet(format!("{table}: checkpoint"))(e);
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(failed)?;
    let schema = Arc::clone(builder.schema());
    let reader = builder.build().map_err(failed)?;
    let mut out = Vec::new();
    {
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, Arc::clone(&schema), None)
            .map_err(failed)?;
        let arrow_failed = || Error::arrow(format!("{table}: checkpoint"));
        for batch in reader {
            let batch = batch.map_err(arrow_failed())?;
            let mut columns = batch.columns().to_vec();
            if let Some(i) = batch.schema().index_of("remove").ok()
                && let Some(s) = columns[i].as_struct_opt()
            {
                let (fields, children, nulls) = s.clone().into_parts();
                let children: Vec<ArrayRef> = fields
                    .iter()
                    .zip(children)
                    .map(|(f, c)| {
                        let describing = DESCRIBING.contains(&f.name().as_str())
                            || f.name() == "extendedFileMetadata";
                        if describing && f.is_nullable() {
                            new_null_array(f.data_type(), c.len())
                        } else {
                            c
                        }
                    })
                    .collect();
                columns[i] = Arc::new(
                    StructArray::try_new(fields, children, nulls).map_err(arrow_failed())?,
                );
            }
            let batch =
                RecordBatch::try_new(Arc::clone(&schema), columns).map_err(arrow_failed())?;
            writer.write(&batch).map_err(failed)?;
        }
        writer.close().map_err(failed)?;
    }
    Ok(out)
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

    /// Every byte under `dir`, Parquet decoded too, as one lossy text.
    fn everything(dir: &std::path::Path) -> String {
        let mut out = String::new();
        for e in walk(dir) {
            let bytes = std::fs::read(&e).expect("read");
            out.push_str(&String::from_utf8_lossy(&bytes));
            if e.extension().is_some_and(|x| x == "parquet") {
                let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
                    .and_then(|b| b.build())
                    .expect("parquet");
                let mut json = arrow::json::LineDelimitedWriter::new(Vec::new());
                for b in reader {
                    json.write(&b.expect("batch")).expect("json");
                }
                json.finish().expect("json");
                out.push_str(&String::from_utf8_lossy(&json.into_inner()));
            }
        }
        out
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    async fn names(t: &DeltaTable) -> Vec<String> {
        use deltalake::datafusion::prelude::SessionContext;
        let ctx = SessionContext::new();
        ctx.register_table("t", t.table_provider().await.expect("provider"))
            .expect("register");
        let batches = ctx
            .sql("select name from t order by name")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("read");
        batches
            .iter()
            .flat_map(|b| {
                let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
                    .expect("text");
                c.as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_scrubbed_log_names_no_deleted_value_and_a_stale_writer_still_lands() {
        let dir = tempfile::tempdir().expect("dir");
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let url = table::table_url(dir.path(), "silver/t").expect("url");
        // Statistics on every column, as tables made before statistics were restricted.
        let mut t = table::create("t", &url, &schema, &[], &[])
            .await
            .expect("create");
        let batch = |n: i64, name: &str| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(vec![n])),
                    Arc::new(arrow::array::StringArray::from(vec![name])),
                ],
            )
            .expect("batch")
        };
        for (n, name) in [
            (1, "Aaron Zzsecretvalue"),
            (2, "Mary Smith"),
            (3, "Zed Other"),
        ] {
            let mut w = deltalake::writer::RecordBatchWriter::for_table(&t).expect("writer");
            deltalake::writer::DeltaWriter::write(&mut w, batch(n, name))
                .await
                .expect("write");
            let adds = deltalake::writer::DeltaWriter::flush(&mut w)
                .await
                .expect("flush");
            table::commit(
                "t",
                &mut t,
                "p",
                adds.into_iter()
                    .map(deltalake::kernel::Action::Add)
                    .collect(),
                &std::collections::BTreeMap::new(),
                &[],
            )
            .await
            .expect("commit");
        }
        // A writer that loaded the table before the erasure and commits after it.
        let stale = table::open("t", &url).await.expect("open");
        let (t, _) = t
            .delete()
            .with_predicate("name = 'Aaron Zzsecretvalue'")
            .await
            .expect("delete");
        let root = dir.path().join("silver/t");
        assert!(
            everything(&root).contains("Zzsecretvalue"),
            "the test sees it"
        );
        let files = TableFiles::of("t", &t);
        let replaced = files
            .replaced_files(crate::version(&t))
            .await
            .expect("replaced");
        let log = files.checkpoint_and_read(&t).await.expect("log");
        assert!(
            replaced.iter().all(|r| log.named.contains(r)),
            "committed files are named"
        );
        files.remove(&replaced).await.expect("remove");
        let purged: HashSet<ObjectPath> = replaced.into_iter().collect();
        let n = files.scrub(&log, &purged, true).await.expect("scrub");
        assert!(n > 0);
        assert!(
            !everything(&root).contains("Zzsecretvalue"),
            "no file, entry, statistic or checkpoint names the deleted value"
        );
        // Every entry is still there: none was deleted.
        let entries = walk(&root.join("_delta_log"))
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .count();
        assert_eq!(entries as i64, crate::version(&t) + 1);
        // Versions before the erasure no longer open (their log lost its protocol).
        assert!(
            deltalake::open_table_with_version(url.clone(), 1)
                .await
                .is_err()
        );
        // The stale writer's append lands above the erasure, not in a hole below it.
        // Refused as any append racing a delete is (a sink then refreshes and retries):
        // the refresh reads the new checkpoint, and the retry lands.
        let mut stale = stale;
        let mut w = deltalake::writer::RecordBatchWriter::for_table(&stale).expect("writer");
        deltalake::writer::DeltaWriter::write(&mut w, batch(4, "Late Writer"))
            .await
            .expect("write");
        let adds: Vec<deltalake::kernel::Action> = deltalake::writer::DeltaWriter::flush(&mut w)
            .await
            .expect("flush")
            .into_iter()
            .map(deltalake::kernel::Action::Add)
            .collect();
        let mut committed = None;
        for attempt in 0..3 {
            if attempt > 0 {
                table::refresh("t", &mut stale)
                    .await
                    .expect("refresh over the scrubbed log");
            }
            let at = table::commit(
                "t",
                &mut stale,
                "p",
                adds.clone(),
                &std::collections::BTreeMap::new(),
                &[],
            )
            .await;
            if let Ok(v) = at {
                committed = Some(v);
                break;
            }
        }
        let v = committed.expect("the stale writer's append lands");
        assert!(v > crate::version(&t), "committed at {v}");
        let fresh = table::open("t", &url).await.expect("reopen");
        assert_eq!(
            names(&fresh).await,
            vec!["Late Writer", "Mary Smith", "Zed Other"]
        );
        // A second scrub reads only the entries written since.
        let log = files.read_log(crate::version(&fresh)).await.expect("log");
        assert_eq!(
            log.entries.len(),
            1,
            "{:?}",
            log.entries.iter().map(|e| &e.0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn scrubbing_an_entry_keeps_paths_offsets_and_metadata_but_no_statistics_or_parameters() {
        let entry = concat!(
            r#"{"commitInfo":{"timestamp":1,"operation":"DELETE","operationParameters":{"predicate":"id = 'C1'"},"sluice.erasure":"REQ-1","sluice.gold":"sha256:x"}}"#,
            "\n",
            r#"{"txn":{"appId":"demo-t-0","version":41}}"#,
            "\n",
            r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}"#,
            "\n",
            r#"{"add":{"path":"a.parquet","partitionValues":{"d":"2026-01-01"},"size":1,"modificationTime":1,"dataChange":true,"stats":"{\"minValues\":{\"id\":\"C1\"}}"}}"#,
            "\n",
            r#"{"remove":{"path":"b.parquet","deletionTimestamp":1,"dataChange":true,"extendedFileMetadata":true,"partitionValues":{"d":"2026-01-02"},"size":1,"stats":"{}"}}"#,
            "\n",
            r#"{"add":{"path":"c%20d.parquet","partitionValues":{"d":"secretday"},"size":1,"modificationTime":1,"dataChange":true}}"#,
            "\n"
        );
        let purged = HashSet::from(["c d.parquet".to_string()]);
        let out = scrub_entry(entry.as_bytes(), &purged).expect("changed");
        let text = String::from_utf8(out).expect("utf-8");
        for gone in [
            "C1",
            "REQ-1",
            "2026-01-02",
            "secretday",
            "stats",
            "predicate",
            "protocol",
        ] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        for kept in [
            "demo-t-0",
            "\"version\":41",
            "a.parquet",
            "2026-01-01",
            "b.parquet",
            "sha256:x",
            "DELETE",
        ] {
            assert!(text.contains(kept), "{kept} not in {text}");
        }
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 5);
        assert!(
            scrub_entry(text.as_bytes(), &purged).is_none(),
            "scrubbing twice changes nothing"
        );
    }

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
            table::append_record("t", &url, &schema, batch, &["n"])
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
