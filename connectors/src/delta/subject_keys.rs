//! The subject key store of `encrypt` rules (crypto-shredding): a Delta table of data
//! keys, one row per key — master key id, keyed hash of the subject, key id, the key
//! wrapped under the master key, creation time. It never holds a subject's identifier or
//! an unwrapped key.
//!
//! `sluice run` loads the keys at start (a batch at a time, into caches that keep a bounded
//! number), then before each commit of data stores the keys created for it (a crash in
//! between leaves a key no row uses, never a row without its key). When another writer
//! changed the table by anything but an append (an erasure deleting a subject's keys), the
//! cache is cut down to the keys still stored, so nothing more is encrypted under an erased
//! key.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Action;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt as _;
use sluice_pipeline::key_cache::{KeyCache, StoredKey};
use sluice_pipeline::lake::Lake;
use sluice_pipeline::metrics::SUBJECT_KEYS_CREATED_TOTAL;

use super::table;
use crate::error::{Error, Result, delta, query};

const NAME: &str = "subject key store";

/// The store's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("master", DataType::Utf8, true),
        Field::new("subject", DataType::Utf8, true),
        Field::new("key_id", DataType::Utf8, true),
        Field::new("wrapped", DataType::Utf8, true),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn failure(context: &'static str, e: impl Into<sluice_pipeline::error::BoxError>) -> Error {
    Error::KeyStore {
        context,
        source: e.into(),
    }
}

/// The table at `location` as a URL (a local directory is created).
fn url(location: &Lake) -> Result<url::Url> {
    table::lake_url(location, "")
}

/// Every key of the table.
async fn read(t: &DeltaTable) -> Result<Vec<StoredKey>> {
    let mut out = Vec::new();
    for_each_batch(t, |keys| {
        out.extend(keys);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Hand the keys of the table to `f` a batch at a time, so that a store of any size is
/// never held in memory whole; returns how many keys there were.
async fn for_each_batch(
    t: &DeltaTable,
    mut f: impl FnMut(Vec<StoredKey>) -> Result<()>,
) -> Result<usize> {
    if !table::exists(t) {
        return Ok(0);
    }
    let ctx = SessionContext::new();
    let reading = || query("subject key store: reading");
    let provider = t.table_provider().await.map_err(reading())?;
    ctx.register_table("k", provider).map_err(reading())?;
    let mut batches = ctx
        .sql("SELECT master, subject, key_id, wrapped, created_at FROM k")
        .await
        .map_err(reading())?
        .execute_stream()
        .await
        .map_err(reading())?;
    let mut n = 0;
    while let Some(b) = batches.next().await {
        let keys = keys_of(&b.map_err(reading())?)?;
        n += keys.len();
        f(keys)?;
    }
    Ok(n)
}

/// The keys of one batch of the table.
fn keys_of(b: &RecordBatch) -> Result<Vec<StoredKey>> {
    let columns: Vec<arrow::array::ArrayRef> = (0..4)
        .map(|i| arrow::compute::cast(b.column(i), &DataType::Utf8))
        .collect::<std::result::Result<_, _>>()?;
    let text = |i: usize| columns[i].as_string::<i32>();
    let (master, subject, key_id, wrapped) = (text(0), text(1), text(2), text(3));
    let created = b
        .column(4)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| failure("reading", "created_at is not a timestamp"))?;
    Ok((0..b.num_rows())
        .map(|i| StoredKey {
            master: master.value(i).to_string(),
            subject: subject.value(i).to_string(),
            key_id: key_id.value(i).to_string(),
            wrapped: wrapped.value(i).to_string(),
            created_at: if created.is_valid(i) {
                created.value(i)
            } else {
                0
            },
        })
        .collect())
}

/// Every key stored at `location` (for `sluice reveal`).
pub async fn read_all(location: &Lake) -> Result<Vec<StoredKey>> {
    let t = table::open(NAME, &url(location)?).await?;
    read(&t).await
}

/// The store as `sluice run` uses it: the table and the caches of the transforms.
pub struct SubjectKeyStore {
    url: url::Url,
    table: DeltaTable,
    caches: Vec<Arc<dyn KeyCache>>,
    /// The last version whose content the caches reflect.
    seen: Option<u64>,
    /// Whether the table's statistics settings were checked by this process.
    settled: bool,
}

impl std::fmt::Debug for SubjectKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeyStore")
            .field("url", &self.url.as_str())
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl SubjectKeyStore {
    /// Open the store at `location` and load every key into `caches`.
    pub async fn open(location: &Lake, caches: Vec<Arc<dyn KeyCache>>) -> Result<Self> {
        let url = url(location)?;
        let table = table::open(NAME, &url).await?;
        let keys = for_each_batch(&table, |keys| {
            for c in &caches {
                c.load(&keys).map_err(|e| failure("loading", e))?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(keys, "subject key store loaded");
        Ok(Self {
            url,
            seen: table.version(),
            table,
            caches,
            settled: false,
        })
    }

    /// Bring the caches in line with erasures by other writers, then store the keys
    /// created since the last call; returns how many were stored.
    pub async fn persist(&mut self) -> Result<usize> {
        self.follow_erasures().await?;
        let new: Vec<StoredKey> = self.caches.iter().flat_map(|c| c.take_new()).collect();
        if new.is_empty() {
            return Ok(0);
        }
        let properties = super::stats::properties_for(&[]);
        if !table::exists(&self.table) {
            self.table = table::create(NAME, &self.url, &schema(), &[], &properties).await?;
            self.seen = self.table.version();
        } else if !self.settled {
            // No statistics at all: a wrapped key in a file's min/max would outlive its
            // row. A store made by an older version is brought up to date first.
            let before = self.table.version();
            if super::stats::ensure(NAME, &mut self.table, &properties, None).await?
                && before == self.seen
            {
                self.seen = self.table.version();
            }
        }
        self.settled = true;
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(new.iter().map(|k| &k.master))),
                Arc::new(StringArray::from_iter_values(
                    new.iter().map(|k| &k.subject),
                )),
                Arc::new(StringArray::from_iter_values(new.iter().map(|k| &k.key_id))),
                Arc::new(StringArray::from_iter_values(
                    new.iter().map(|k| &k.wrapped),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(new.iter().map(|k| k.created_at))
                        .with_timezone("UTC"),
                ),
            ],
        )?;
        let mut writer =
            RecordBatchWriter::for_table(&self.table).map_err(delta(NAME, "opening writer"))?;
        writer.write(batch).await.map_err(delta(NAME, "writing"))?;
        let adds = writer.flush().await.map_err(delta(NAME, "writing"))?;
        let actions = adds.into_iter().map(Action::Add).collect();
        let before = self.seen;
        let version = table::commit(
            NAME,
            &mut self.table,
            "sluice",
            actions,
            &BTreeMap::new(),
            &[],
        )
        .await? as u64;
        // Our append follows what we had seen: nothing else happened in between.
        if before.is_some_and(|v| v + 1 == version) || before.is_none() && version == 0 {
            self.seen = Some(version);
        }
        metrics::counter!(SUBJECT_KEYS_CREATED_TOTAL).increment(new.len() as u64);
        Ok(new.len())
    }

    /// When the table moved past what the caches reflect by anything but appends, keep
    /// only the cached keys still stored.
    async fn follow_erasures(&mut self) -> Result<()> {
        if table::exists(&self.table) {
            table::refresh(NAME, &mut self.table).await?;
        } else {
            let t = table::open(NAME, &self.url).await?;
            if !table::exists(&t) {
                return Ok(());
            }
            self.table = t;
        }
        let latest = self.table.version();
        if latest == self.seen {
            return Ok(());
        }
        if !self.only_appends_since(self.seen).await {
            // Only the cached keys are looked for: memory grows with the caches (their ids,
            // for the moment of the read), never with the store.
            let cached: HashSet<String> = self.caches.iter().flat_map(|c| c.cached_ids()).collect();
            let mut present = HashSet::new();
            for_each_batch(&self.table, |keys| {
                present.extend(
                    keys.into_iter()
                        .map(|k| k.key_id)
                        .filter(|id| cached.contains(id)),
                );
                Ok(())
            })
            .await?;
            for c in &self.caches {
                c.retain(&present);
            }
            tracing::info!(
                cached = cached.len(),
                stored = present.len(),
                "subject key store changed by another writer: cached keys checked against it"
            );
        }
        self.seen = latest;
        Ok(())
    }

    /// Whether every commit after version `since` (none: from the start) only appended
    /// (writes by other replicas). A history that cannot be read (purged by an erasure)
    /// counts as not.
    async fn only_appends_since(&self, since: Option<u64>) -> bool {
        let Some(latest) = self.table.version() else {
            return true;
        };
        let wanted = since.map_or(latest + 1, |s| latest.saturating_sub(s)) as usize;
        let mut history = self.table.history(Some(wanted));
        let mut read = 0;
        while let Some(commit) = history.next().await {
            let Ok(commit) = commit else { return false };
            if commit.operation.as_deref() != Some("WRITE") {
                return false;
            }
            read += 1;
        }
        read == wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A cache that hands out given keys and records what it is told to keep.
    #[derive(Default)]
    struct Fake {
        new: Mutex<Vec<StoredKey>>,
        loaded: Mutex<Vec<StoredKey>>,
        /// The ids of the keys it made (and then handed out) or loaded.
        cached: Mutex<Vec<String>>,
        kept: Mutex<Option<HashSet<String>>>,
    }

    impl KeyCache for Fake {
        fn take_new(&self) -> Vec<StoredKey> {
            let new = std::mem::take(&mut *self.new.lock().expect("lock"));
            let ids = new.iter().map(|k| k.key_id.clone());
            self.cached.lock().expect("lock").extend(ids);
            new
        }
        fn load(&self, keys: &[StoredKey]) -> std::result::Result<(), String> {
            self.loaded.lock().expect("lock").extend_from_slice(keys);
            let ids = keys.iter().map(|k| k.key_id.clone());
            self.cached.lock().expect("lock").extend(ids);
            Ok(())
        }
        fn cached_ids(&self) -> Vec<String> {
            self.cached.lock().expect("lock").clone()
        }
        fn retain(&self, present: &HashSet<String>) {
            *self.kept.lock().expect("lock") = Some(present.clone());
        }
    }

    fn key(id: &str) -> StoredKey {
        StoredKey {
            master: "shred".into(),
            subject: format!("{id:0>64}"),
            key_id: id.into(),
            wrapped: "d3JhcHBlZA==".into(),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn keys_are_stored_reloaded_and_erasures_by_others_are_followed() {
        let dir = tempfile::tempdir().expect("dir");
        let location = Lake::Local(dir.path().join("keys"));
        let fake = Arc::new(Fake::default());
        let mut store = SubjectKeyStore::open(&location, vec![fake.clone()])
            .await
            .expect("open");
        assert_eq!(store.persist().await.expect("nothing"), 0);
        fake.new
            .lock()
            .expect("lock")
            .extend([key("a1"), key("b2")]);
        assert_eq!(store.persist().await.expect("persist"), 2);
        fake.new.lock().expect("lock").push(key("c3"));
        assert_eq!(store.persist().await.expect("persist"), 1);
        assert!(
            fake.kept.lock().expect("lock").is_none(),
            "only our appends"
        );

        // A restart loads every key.
        let again = Arc::new(Fake::default());
        SubjectKeyStore::open(&location, vec![again.clone()])
            .await
            .expect("reopen");
        let mut ids: Vec<String> = again
            .loaded
            .lock()
            .expect("lock")
            .iter()
            .map(|k| k.key_id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, ["a1", "b2", "c3"]);
        assert_eq!(read_all(&location).await.expect("read").len(), 3);

        // Another replica stores a key this one never had, then another writer erases a
        // subject's key: the next persist keeps only the rest, and the store was searched
        // for the cached keys only (the replica's key is none of this cache's business).
        let other = Arc::new(Fake::default());
        let mut replica = SubjectKeyStore::open(&location, vec![other.clone()])
            .await
            .expect("replica");
        other.new.lock().expect("lock").push(key("d4"));
        assert_eq!(replica.persist().await.expect("persist"), 1);
        let t = table::open(NAME, &url(&location).expect("url"))
            .await
            .expect("open");
        t.delete()
            .with_predicate("key_id = 'b2'")
            .await
            .expect("delete");
        store.persist().await.expect("persist");
        let kept = fake.kept.lock().expect("lock").clone().expect("retained");
        assert_eq!(kept, HashSet::from(["a1".to_string(), "c3".to_string()]));
    }
}
