//! The erasure journal: what an erasure has done so far, kept in the lake under
//! `_sluice/erasures_pending/<run>/` until its certificates are recorded, so a run
//! stopped at any moment (killed, out of memory, power lost) is finished by the next run
//! of the same requests, with the certificate an unbroken run would have written.
//!
//! `<run>` is a hash of the subjects' salted hashes, in any order: running the same
//! command again (with or without the same request id, the subjects in any order), or
//! reading the same batch of requests from Kafka, finds the journal. Runs of the same
//! subjects take the lock `erase.run.<run>` before reading the journal and hold it to
//! their end (a dry run keeps no journal and takes no lock): a second run waits, then
//! finds what the first left.
//! Per table it holds:
//!
//! - the *attempts* whose delete may have committed but is not yet accounted for: each
//!   delete commit carries its attempt id as commit metadata (`sluice.erasure_attempt`,
//!   random, naming nothing, kept by log scrubs), so the next run finds that commit in
//!   the log and counts the rows of the files it replaced as rows this erasure removed;
//! - once accounted: per request the rows removed and the salted hashes of their values,
//!   the files rewritten, and every file decided for purge (replaced files, older files
//!   and change-data files holding a subject), which the next run removes whatever the
//!   safety window: they were settled when decided.
//!
//! Then, before the certificates are recorded (one commit for all of them), the run
//! writes the time it certifies at. A run that finds the certificates of that time
//! recorded (the stopped run got that far) drops the journal and starts afresh, as any
//! run after a finished one does; otherwise it records them at that time.
//!
//! Requests read from Kafka add two things, so that the next run finds the same journal
//! and does not certify a request twice:
//!
//! - the batch a run takes is marked, before anything else is done, in
//!   `_sluice/erasures_pending/kafka-<hash of the consumer group and topic>.json`
//!   ([`BatchMarker`]): per partition the first and last offset taken, and the time the
//!   batch was taken. A run finding the marker takes exactly that batch again (from each
//!   first offset to each last, whatever was committed meanwhile; requests that arrived
//!   since wait for the run after), so the subjects, and with them the journal, are the
//!   same;
//! - in order: marker written, certificates recorded (the journal removed), offsets
//!   committed, marker removed. A run taking the batch again finds the certificates of
//!   these very requests (same subjects, same request ids) recorded since the batch was
//!   taken and returns them instead of erasing again (see
//!   [`crate::erase::Options::batch_at`]); or finds every offset committed and only
//!   removes the marker. Invalid requests are recorded at the time the batch was taken,
//!   all in one commit: certificates of invalid requests at that time mean they are
//!   recorded.
//!
//! The runs of one consumer group and topic take the lock `erase.requests.kafka-<hash>`
//! from before reading the marker to after removing it: one batch at a time.
//!
//! The journal names no subject: the run is named by a hash of salted subject hashes,
//! which also key each table's counts; values appear only as their salted hashes (which
//! the certificate holds too), files by path. The marker holds offsets and a time only.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_pipeline::lake::Lake;

use crate::error::{Error, Result};
use crate::purge::TableFiles;

/// Where journals live, relative to the lake.
pub const PENDING: &str = "_sluice/erasures_pending";

/// Commit metadata naming the attempt a delete belongs to.
pub const ATTEMPT_KEY: &str = "sluice.erasure_attempt";

/// A delete that may have committed without being accounted for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub id: String,
    /// The table's version before it: its commit, if any, comes after.
    pub after_version: i64,
}

/// What the erasure did to one table so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TableJournal {
    pub table: String,
    /// The salted subject hashes `rows` and `value_hashes` are in the order of.
    pub subjects: Vec<String>,
    /// The table's version before the first attempt.
    pub version_before: i64,
    pub pending: Vec<Attempt>,
    /// Per request, in the run's order: rows removed.
    pub rows: Vec<u64>,
    /// Per request: salted hashes of the erased rows' values.
    pub value_hashes: Vec<Vec<String>>,
    pub files_rewritten: u64,
    /// Files decided for purge (paths relative to the table).
    pub purge: Vec<String>,
    /// Log entries rewritten and checkpoints removed by earlier attempts.
    pub logs_purged: u64,
}

/// The run-level part: when the certificates were (about to be) recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunJournal {
    pub erased_at: Option<i64>,
}

impl TableJournal {
    /// Whether an earlier attempt accounted for anything here (rows, files, log entries).
    pub fn accounted(&self) -> bool {
        !self.purge.is_empty() || self.logs_purged > 0 || self.rows.iter().any(|r| *r > 0)
    }

    /// Rows and value hashes of the subject with salted hash `subject`.
    pub fn of_subject(&self, subject: &str) -> Option<(u64, &[String])> {
        let i = self.subjects.iter().position(|s| s == subject)?;
        Some((*self.rows.get(i)?, self.value_hashes.get(i)?.as_slice()))
    }
}

/// The journal of one run of a set of requests.
pub struct Journal {
    store: Arc<dyn ObjectStore>,
    /// The hash naming the run (of its sorted salted subject hashes).
    key: String,
    dir: String,
    /// This attempt's id.
    pub attempt: String,
}

fn object_error(e: object_store::Error) -> Error {
    Error::object_store(PENDING)(e)
}

/// The JSON object at `path`, if there is one. Objects are written whole (object stores
/// put whole objects, local lakes rename a finished file into place): one that does not
/// read is refused, not taken as absent.
async fn read_json<T: for<'de> Deserialize<'de>>(
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<Option<T>> {
    let got = match store.get(path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(object_error(e)),
    };
    let bytes = got.bytes().await.map_err(object_error)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(Error::json(format!(
            "{PENDING}: {path} does not read (move it away to start that erasure afresh)"
        )))
}

async fn write_json<T: Serialize>(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(Error::json(format!("{PENDING}: {path}")))?;
    store
        .put(path, PutPayload::from(bytes))
        .await
        .map_err(object_error)?;
    Ok(())
}

async fn delete(store: &dyn ObjectStore, path: &ObjectPath) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(object_error(e)),
    }
}

impl Journal {
    /// The journal of the requests for the subjects of `subject_hashes`, in `lake`.
    pub fn of(lake: &Lake, subject_hashes: &[&str]) -> Result<Self> {
        let store = sluice_connectors::delta::table::lake_root_store(lake)?;
        let mut sorted = subject_hashes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut h = Sha256::new();
        for subject in sorted {
            h.update(subject.as_bytes());
            h.update(b"\n");
        }
        let run = hex::encode(&h.finalize()[..16]);
        let mut attempt = [0u8; 16];
        getrandom::fill(&mut attempt).map_err(Error::random(PENDING))?;
        Ok(Self {
            store,
            dir: format!("{PENDING}/{run}"),
            key: run,
            attempt: hex::encode(attempt),
        })
    }

    /// The hash naming the run: the same for every run of the same subjects. Names the
    /// run's lock too.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn path(&self, file: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{file}", self.dir))
    }

    async fn read<T: for<'de> Deserialize<'de>>(&self, file: &str) -> Result<Option<T>> {
        read_json(self.store.as_ref(), &self.path(file)).await
    }

    async fn write<T: Serialize>(&self, file: &str, value: &T) -> Result<()> {
        write_json(self.store.as_ref(), &self.path(file), value).await
    }

    /// What an earlier attempt recorded for `table`.
    pub async fn table(&self, table: &str) -> Result<Option<TableJournal>> {
        self.read(&format!("{table}.json")).await
    }

    pub async fn save_table(&self, journal: &TableJournal) -> Result<()> {
        self.write(&format!("{}.json", journal.table), journal)
            .await
    }

    pub async fn run(&self) -> Result<RunJournal> {
        Ok(self.read("run.json").await?.unwrap_or_default())
    }

    pub async fn save_run(&self, run: &RunJournal) -> Result<()> {
        self.write("run.json", run).await
    }

    /// Forget `table`: nothing there to finish.
    pub async fn remove_table(&self, table: &str) -> Result<()> {
        delete(self.store.as_ref(), &self.path(&format!("{table}.json"))).await
    }

    /// Remove the journal: its certificates are recorded. The tables' parts go first and
    /// the run's last, so a run stopped midway still finds the run's part (and with it,
    /// that the certificates are recorded).
    pub async fn clear(&self) -> Result<()> {
        use futures::TryStreamExt as _;
        let prefix = ObjectPath::from(self.dir.as_str());
        let mut listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(object_error)?;
        listed.sort_by_key(|m| m.location.as_ref().ends_with("/run.json"));
        for m in listed {
            delete(self.store.as_ref(), &m.location).await?;
        }
        Ok(())
    }
}

/// A batch of erasure requests a run took from Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkedBatch {
    /// Per partition, `[first, last]` offset taken.
    pub offsets: BTreeMap<i32, (i64, i64)>,
    /// When the batch was taken (microseconds): the time its invalid requests are
    /// certified at, which tells a run taking the batch again that they are recorded.
    pub taken_at: i64,
}

/// Where a run reading erasure requests from Kafka marks the batch it took, until every
/// offset of the batch is committed: `_sluice/erasures_pending/kafka-<hash>.json`, the
/// hash of the consumer group and topic.
pub struct BatchMarker {
    store: Arc<dyn ObjectStore>,
    key: String,
}

impl BatchMarker {
    /// The marker of the requests `group` reads from `topic`, in `lake`.
    pub fn of(lake: &Lake, group: &str, topic: &str) -> Result<Self> {
        let store = sluice_connectors::delta::table::lake_root_store(lake)?;
        let mut h = Sha256::new();
        h.update(group.as_bytes());
        h.update(b"\n");
        h.update(topic.as_bytes());
        Ok(Self {
            store,
            key: format!("kafka-{}", hex::encode(&h.finalize()[..16])),
        })
    }

    /// `kafka-<hash>`: names the marker and the lock of the group's runs.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn path(&self) -> ObjectPath {
        ObjectPath::from(format!("{PENDING}/{}.json", self.key))
    }

    /// The batch a stopped run took, if one did.
    pub async fn read(&self) -> Result<Option<MarkedBatch>> {
        read_json(self.store.as_ref(), &self.path()).await
    }

    pub async fn write(&self, batch: &MarkedBatch) -> Result<()> {
        write_json(self.store.as_ref(), &self.path(), batch).await
    }

    /// Forget the batch: every offset of it is committed.
    pub async fn remove(&self) -> Result<()> {
        delete(self.store.as_ref(), &self.path()).await
    }
}

/// The version of the table of `files` after `attempt.after_version` (up to `until`)
/// whose commit carries the attempt's id, if any.
pub async fn attempt_version(
    files: &TableFiles,
    attempt: &Attempt,
    until: i64,
) -> Result<Option<i64>> {
    for v in (attempt.after_version + 1)..=until {
        let path = ObjectPath::from(format!("_delta_log/{v:020}.json"));
        let Some(bytes) = files.read_if_exists(&path).await? else {
            continue;
        };
        for line in bytes.split(|b| *b == b'\n') {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if action
                .get("commitInfo")
                .and_then(|c| c.get(ATTEMPT_KEY))
                .and_then(|a| a.as_str())
                == Some(attempt.id.as_str())
            {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

/// For tests of crash safety: abort the process (as a kill would) when the environment
/// names this step, `SLUICE_TEST_ERASE_ABORT_AT=<step>:<table>`. Steps of a table:
/// `journaled` (before its delete), `deleted`, `accounted`, `scrubbed`, `purged`; of the
/// run (`<table>` is `run`): `certifying` (before the certificates are recorded),
/// `recorded` (after), and for requests read from Kafka `committing` (after the
/// certificates, before the offsets are committed).
pub fn abort_point(step: &str, table: &str) {
    if let Ok(at) = std::env::var("SLUICE_TEST_ERASE_ABORT_AT")
        && at.split_once(':') == Some((step, table))
    {
        std::process::abort();
    }
}
