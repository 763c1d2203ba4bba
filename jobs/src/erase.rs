//! `sluice job erase`: the right to be forgotten. For the subjects of a request at once,
//! in every table of the lake that can hold them (bronze, silver, SCD2 history, gold,
//! dead letters, quarantine, silver's tombstones, snapshot results):
//!
//! 1. the rows holding a subject are deleted (delta-rs rewrites only the files holding
//!    them; the predicate recorded in the log names a function, never a subject, and the
//!    commit carries no request id);
//! 2. the files that held them are removed from storage at once, whatever the vacuum
//!    window: the files the delete replaced, files of older versions still awaiting
//!    vacuum and change-data files holding a subject. A file no commit names is removed
//!    only when older than the safety window (another writer may still commit it);
//! 3. the log loses every trace of those rows: a checkpoint of the new version is
//!    written (its tombstones reduced to paths), every commit entry up to it is rewritten
//!    without file statistics, partition values of removed files and commit parameters,
//!    and older checkpoints are deleted. Entries are rewritten, never deleted, so a
//!    writer holding an older snapshot still meets them and retries, instead of
//!    committing below the checkpoint. Time travel before the erasure is given up, and
//!    the certificate says from which version each table still reads. The log is
//!    scrubbed before the files of step 2 are removed: a run stopped in between leaves
//!    files still holding a subject, which the next run purges (stopped the other way
//!    round, it would leave statistics of files already gone). What each step did is
//!    kept in the erasure journal ([`crate::journal`]) until the certificates are
//!    recorded, so the next run of the same requests finishes a stopped one with the
//!    certificate an unbroken run would write. Runs of the same subjects take turns on
//!    the journal. A batch of requests taken again (see [`Options::batch_at`]) finds
//!    the certificates recorded for it since it was taken instead of certifying twice;
//! 4. under crypto-shredding, the subjects' data keys are erased the same way from the
//!    subject key store (which carries no file statistics at all);
//! 5. a certificate row per subject goes to `_sluice/erasures`: request id, salted hash
//!    of the subject, tables with versions, rows removed, files purged, and salted hashes
//!    of the text values the erased rows held (never the values), for [`verify`].
//!
//! [`verify`] reads every byte of every file of the lake (log JSON, checkpoints, data
//! files raw and decoded, dead letters opened) and counts what still mentions a subject
//! or holds a value of its erased rows that no remaining row holds.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use futures::TryStreamExt as _;
use hmac::{Hmac, KeyInit, Mac};
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sluice_connectors::delta::table;
use sluice_pipeline::config::erasure::ErasureConfig;
use sluice_pipeline::lake::Lake;
use sluice_sql::find_tables_in;

use crate::JobContext;
use crate::error::{Error, Result};
use crate::journal::{
    ATTEMPT_KEY, Attempt, Journal, RunJournal, TableJournal, abort_point, attempt_version,
};
use crate::lock::Lock;
use crate::purge::{LogView, TableFiles};
use crate::subject::{LETTER_COLUMNS, Lookup, Subject, has_path};
use crate::version;

/// Where certificates live under the lake.
pub const ERASURES: &str = "_sluice/erasures";

/// Columns of `sluice.erasures` with file statistics: all but the per-table JSON.
const STATS_COLUMNS: [&str; 9] = [
    "request_id",
    "subject_hash",
    "erased_at",
    "outcome",
    "rows_removed",
    "files_purged",
    "logs_purged",
    "tombstones",
    "versions",
];

/// Tables never searched: the job records, which hold hashes only.
const RECORD_TABLES: [&str; 2] = ["sluice.job_runs", "sluice.erasures"];

/// How certificates name the subject key store.
pub const KEY_STORE: &str = "keys.subjects";

/// Shortest text value whose salted hash a certificate keeps (shorter ones are words
/// every table holds).
pub const MIN_VALUE_CHARS: usize = 8;

/// Attempts at the delete of one table when other writers commit meanwhile.
const DELETE_ATTEMPTS: usize = 10;

/// How long an erasure waits for a lock (a table's maintenance, another run of the same
/// subjects) before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(600);

/// What the erasure did to one table, for one subject.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TableErasure {
    pub table: String,
    pub version_before: i64,
    pub version_after: i64,
    /// Rows of this subject removed.
    pub rows_removed: u64,
    /// Files rewritten without the request's rows.
    pub files_rewritten: u64,
    /// Data and change-data files removed from storage.
    pub files_purged: u64,
    /// Files holding a subject that no commit names and that are younger than the safety
    /// window (a writer may still commit them): left for a later run.
    pub files_deferred: u64,
    /// Log entries rewritten and checkpoints removed in `_delta_log`.
    pub logs_purged: u64,
    /// Time travel to versions before this one is given up: their files or statistics
    /// were purged (none: the table's history is untouched).
    pub history_from_version: Option<i64>,
    /// Salted hashes of the text values (of [`MIN_VALUE_CHARS`] or more) the erased rows
    /// held, for `--verify`; never the values.
    pub value_hashes: Vec<String>,
    /// Seconds spent checkpointing and rewriting the log (not part of the certificate).
    #[serde(skip)]
    pub log_seconds: f64,
}

/// The certificate of one subject's erasure.
#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    pub request_id: String,
    /// HMAC-SHA256 of the subject under the certificate key: proves which subject was
    /// erased to whoever holds the key and the identifier, reveals nothing to others.
    pub subject_hash: String,
    pub erased_at: i64,
    pub tables: Vec<TableErasure>,
    /// Tombstones produced for the subject's keys on compacted topics.
    pub tombstones: u64,
    /// Why the request could not be carried out (a malformed request read from Kafka).
    pub invalid: Option<String>,
    /// A dry run: nothing was changed, the certificate says what would go.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Certificate {
    pub fn rows_removed(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_removed).sum()
    }
    pub fn files_purged(&self) -> u64 {
        self.tables.iter().map(|t| t.files_purged).sum()
    }
    pub fn logs_purged(&self) -> u64 {
        self.tables.iter().map(|t| t.logs_purged).sum()
    }
    pub fn files_deferred(&self) -> u64 {
        self.tables.iter().map(|t| t.files_deferred).sum()
    }
    /// `table@version` for each table whose time travel before `version` was given up.
    pub fn history_lost(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter_map(|t| Some(format!("{}@{}", t.table, t.history_from_version?)))
            .collect()
    }
    pub fn outcome(&self) -> String {
        if let Some(why) = &self.invalid {
            format!("invalid request: {why}")
        } else if self.dry_run {
            "dry run".into()
        } else if self.rows_removed() + self.files_purged() + self.logs_purged() == 0 {
            "nothing to erase".into()
        } else {
            "erased".into()
        }
    }
}

fn hmac_hex(key: &[u8], value: &[u8]) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(value);
    hex::encode(mac.finalize().into_bytes())
}

/// The salted hash of a subject recorded in certificates.
pub fn subject_hash(certificate_secret: &[u8], subject: &str) -> String {
    let key = sluice_transforms::keys::derive_key(certificate_secret, b"sluice erasure v1");
    hmac_hex(&key, subject.as_bytes())
}

/// The key salting the hashes of erased values in certificates.
pub fn value_key(certificate_secret: &[u8]) -> [u8; 32] {
    sluice_transforms::keys::derive_key(certificate_secret, b"sluice erasure values v1")
}

/// The salted hash of an erased value, as certificates keep it (128 bits, hex).
pub fn value_hash(key: &[u8], value: &str) -> String {
    let mut h = hmac_hex(key, value.as_bytes());
    h.truncate(32);
    h
}

/// Every text value of `array` (nested values included; bytes that are UTF-8 text) with
/// at least [`MIN_VALUE_CHARS`] characters, per row.
pub fn text_values(array: &ArrayRef, out: &mut dyn FnMut(usize, &str)) {
    fn walk(array: &ArrayRef, rows: &dyn Fn(usize) -> usize, out: &mut dyn FnMut(usize, &str)) {
        let long = |v: &str| v.chars().count() >= MIN_VALUE_CHARS;
        match array.data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Dictionary(_, _) => {
                if let Ok(a) = cast(array, &DataType::Utf8) {
                    for (i, v) in a.as_string::<i32>().iter().enumerate() {
                        if let Some(v) = v.filter(|v| long(v)) {
                            out(rows(i), v);
                        }
                    }
                }
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                if let Ok(a) = cast(array, &DataType::Binary) {
                    for (i, v) in a.as_binary::<i32>().iter().enumerate() {
                        if let Some(v) = v.and_then(|v| std::str::from_utf8(v).ok())
                            && long(v)
                        {
                            out(rows(i), v);
                        }
                    }
                }
            }
            DataType::Struct(_) => {
                for c in array.as_struct().columns() {
                    walk(c, rows, out);
                }
            }
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                let offsets = l.value_offsets().to_vec();
                let row_of = |j: usize| {
                    let at = offsets.partition_point(|o| (*o as usize) <= j);
                    rows(at.saturating_sub(1))
                };
                walk(l.values(), &row_of, out);
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                let offsets = l.value_offsets().to_vec();
                let row_of = |j: usize| {
                    let at = offsets.partition_point(|o| (*o as usize) <= j);
                    rows(at.saturating_sub(1))
                };
                walk(l.values(), &row_of, out);
            }
            DataType::Map(_, _) => {
                let m = array.as_map();
                let offsets = m.value_offsets().to_vec();
                let row_of = |j: usize| {
                    let at = offsets.partition_point(|o| (*o as usize) <= j);
                    rows(at.saturating_sub(1))
                };
                walk(m.keys(), &row_of, out);
                walk(m.values(), &row_of, out);
            }
            _ => {}
        }
    }
    walk(array, &|i| i, out);
}

/// Where to look for the subject in a table of `schema`: the configured columns it has,
/// and its letters when it has the dead-letter shape.
pub fn lookup_for(config: &ErasureConfig, qualified: &str, schema: &Schema) -> Lookup {
    let wanted = config.for_table(qualified);
    Lookup {
        exact: wanted
            .exact
            .into_iter()
            .filter(|c| has_path(schema, c))
            .collect(),
        contains: wanted
            .contains
            .into_iter()
            .filter(|c| has_path(schema, c))
            .collect(),
        letters: LETTER_COLUMNS.iter().all(|c| has_path(schema, c)),
    }
}

fn report(done: &TableErasure, dry_run: bool) {
    let verb = if dry_run { "would go" } else { "erased" };
    eprintln!(
        "erase: {}: {} rows removed, {} files rewritten, {} files purged, {} files deferred, {} log entries purged (version {} → {}){}",
        done.table,
        done.rows_removed,
        done.files_rewritten,
        done.files_purged,
        done.files_deferred,
        done.logs_purged,
        done.version_before,
        done.version_after,
        if dry_run {
            format!(" [{verb}]")
        } else {
            String::new()
        }
    );
}

/// One subject of a request.
#[derive(Debug, Clone)]
pub struct Request {
    pub subject: Arc<Subject>,
    pub request_id: String,
    /// [`subject_hash`] of the identifier.
    pub subject_hash: String,
    /// Tombstones produced for its keys.
    pub tombstones: u64,
}

/// How an erasure runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Change nothing; the certificates (not recorded) say what would go.
    pub dry_run: bool,
    /// Files no commit names are purged only when older than this (clock skew included).
    pub orphan_min_age: Duration,
    /// Key of [`value_hash`].
    pub value_key: [u8; 32],
    /// How long to wait for a table's maintenance, or another run of the same subjects,
    /// to finish before giving up.
    pub lock_wait: Duration,
    /// The time the batch the requests belong to was taken. A run finding certificates
    /// of these very requests (same subject, same request id) recorded since then
    /// returns those instead of erasing and certifying again; when some request has
    /// none but every subject was certified since then by another run (a `sluice job
    /// erase` of the same subjects that finished this batch's stopped work), those
    /// certificates are recorded again under the batch's request ids. Requests read
    /// from Kafka set it: their offsets are committed after the certificates are
    /// recorded, and a batch taken again after a stop in between must not be certified
    /// twice, nor as having erased nothing.
    pub batch_at: Option<i64>,
}

impl Options {
    /// The options `config` sets, with `value_key` from the certificate secret.
    pub fn from_config(config: &ErasureConfig, value_key: [u8; 32]) -> Self {
        Self {
            dry_run: false,
            orphan_min_age: Duration::from_secs(
                config
                    .orphan_min_age_secs
                    .saturating_add(config.clock_skew_margin_secs),
            ),
            value_key,
            lock_wait: LOCK_WAIT,
            batch_at: None,
        }
    }
}

/// What one table gave for each request.
struct TableOutcome {
    shared: TableErasure,
    /// Per request: rows removed, value hashes.
    per_request: Vec<(u64, HashSet<String>)>,
}

/// Erase the subjects of `requests` from every table of the context's lake, and their
/// data keys from the subject key store at `key_store` (when the policy encrypts per
/// subject), in one pass over the lake; one certificate per request, recorded unless a
/// dry run, at the time of the context's clock.
pub async fn erase(
    cx: &JobContext,
    config: &ErasureConfig,
    key_store: Option<&Lake>,
    requests: &[Request],
    options: &Options,
) -> Result<Vec<Certificate>> {
    let lake = &cx.lake;
    let subjects: Vec<Arc<Subject>> = requests.iter().map(|r| Arc::clone(&r.subject)).collect();
    let all = Arc::new(Subject::union(&subjects));
    let owners = owners(requests);
    // A run stopped before recording its certificates: they are recorded at the time it
    // chose. A journal whose certificates are recorded belongs to a finished run (stopped
    // before it cleared it): this run starts afresh, as after any finished run.
    let mut earlier: Option<i64> = None;
    let mut run_lock: Option<Lock> = None;
    let journal = if options.dry_run {
        None
    } else {
        let subjects: Vec<&str> = requests.iter().map(|r| r.subject_hash.as_str()).collect();
        let j = Journal::of(lake, &subjects)?;
        // Runs of the same subjects share the journal: one at a time, the next finding
        // what the one before left.
        let lock = Lock::acquire_waiting(cx, &run_lock_name(&j), options.lock_wait).await?;
        earlier = j.run().await?.erased_at;
        if let Some(taken) = options.batch_at {
            let since = recorded_since(lake, taken).await?;
            let (certificates, again) = match recorded_certificates(requests, &since, true)? {
                Some(mine) => (Some(mine), false),
                None => (recorded_certificates(requests, &since, false)?, true),
            };
            if let Some(certificates) = certificates {
                if again {
                    tracing::warn!(
                        "the subjects of these requests were erased since their batch was taken, by a run that finished its work: that run's certificates are recorded for these requests"
                    );
                    record(lake, &certificates).await?;
                } else {
                    tracing::warn!(
                        "the certificates of these requests are recorded (by an earlier run of their batch): they are returned, none recorded again"
                    );
                }
                if earlier.is_some_and(|e| since.iter().any(|c| c.erased_at == e)) {
                    j.clear().await?;
                }
                lock.release().await;
                return Ok(certificates);
            }
        }
        if let Some(at) = earlier {
            let recorded = recorded_at(lake, at).await?;
            if requests
                .iter()
                .all(|r| recorded.iter().any(|c| c.subject_hash == r.subject_hash))
            {
                j.clear().await?;
                earlier = None;
            }
        }
        run_lock = Some(lock);
        Some(j)
    };
    // Before anything changes: a table whose rows another engine hid with deletion
    // vectors cannot be erased whole (the hidden rows stay in their files).
    for t in find_tables_in(lake).await? {
        let name = t.qualified();
        if RECORD_TABLES.contains(&name.as_str()) {
            continue;
        }
        let delta = table::open(&name, &t.url).await?;
        let schema = table::arrow_schema(&name, &delta)?;
        let files = files_with_deletion_vectors(&delta);
        if !lookup_for(config, &name, &schema).is_empty() && files > 0 {
            if let Some(lock) = run_lock {
                lock.release().await;
            }
            return Err(Error::DeletionVectors { table: name, files });
        }
    }
    let mut outcomes: Vec<TableOutcome> = Vec::new();
    let tables = find_tables_in(lake).await?;
    // Gold tables read one another: the rewrite locks of all of them are taken before the
    // first is erased and held until the last is, so no gold build can read a gold table
    // not yet erased into one already erased. (A build holds one such lock at a time and
    // takes it before reading: no deadlock.)
    let mut gold: BTreeMap<String, Lock> = BTreeMap::new();
    for t in &tables {
        let name = t.qualified();
        if RECORD_TABLES.contains(&name.as_str()) {
            continue;
        }
        let is_gold = t.schema == "gold";
        if is_gold && gold.is_empty() && !options.dry_run {
            for g in tables.iter().filter(|g| g.schema == "gold") {
                let lock = crate::lock::table_lock(&g.qualified());
                gold.insert(
                    g.qualified(),
                    Lock::acquire_waiting(cx, &lock, options.lock_wait).await?,
                );
            }
        }
        // Erasure, maintenance and anonymisation of a table never overlap: each waits
        // for the others.
        let locks = if options.dry_run {
            None
        } else {
            let erasing =
                Lock::acquire_waiting(cx, &format!("erase.{name}"), options.lock_wait).await?;
            let maintaining = if is_gold {
                None
            } else {
                Some(
                    Lock::acquire_waiting(cx, &crate::lock::table_lock(&name), options.lock_wait)
                        .await?,
                )
            };
            Some((erasing, maintaining))
        };
        let delta = table::open(&name, &t.url).await?;
        let schema = table::arrow_schema(&name, &delta)?;
        let lookup = lookup_for(config, &name, &schema);
        if !lookup.is_empty() {
            let held: Vec<&Lock> = locks
                .iter()
                .flat_map(|(e, m)| std::iter::once(e).chain(m.iter()))
                .chain(gold.get(&name))
                .collect();
            let done = erase_table(
                cx,
                &name,
                delta,
                &lookup,
                &all,
                requests,
                &owners,
                options,
                journal.as_ref(),
                &held,
            )
            .await?;
            report(&done.shared, options.dry_run);
            outcomes.push(done);
        }
        if let Some((erasing, maintaining)) = locks {
            if let Some(m) = maintaining {
                m.release().await;
            }
            erasing.release().await;
        }
        if is_gold && tables.iter().rfind(|g| g.schema == "gold") == Some(t) {
            for (_, lock) in std::mem::take(&mut gold) {
                lock.release().await;
            }
        }
    }
    for (_, lock) in gold {
        lock.release().await;
    }
    if let Some(store) = key_store
        && let Some(delta) = open_key_store(store).await?
    {
        let erasing = if options.dry_run {
            None
        } else {
            Some(Lock::acquire_waiting(cx, &format!("erase.{KEY_STORE}"), options.lock_wait).await?)
        };
        let lookup = Lookup {
            exact: vec!["subject".into()],
            contains: Vec::new(),
            letters: false,
        };
        let held: Vec<&Lock> = erasing.iter().collect();
        let done = erase_table(
            cx,
            KEY_STORE,
            delta,
            &lookup,
            &all,
            requests,
            &owners,
            options,
            journal.as_ref(),
            &held,
        )
        .await?;
        report(&done.shared, options.dry_run);
        outcomes.push(done);
        if let Some(l) = erasing {
            l.release().await;
        }
    }
    let erased_at = earlier.unwrap_or_else(|| cx.now().timestamp_micros());
    let mut certificates = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let tables = outcomes
            .iter()
            .map(|o| {
                let (rows, hashes) = &o.per_request[i];
                let mut hashes: Vec<String> = hashes.iter().cloned().collect();
                hashes.sort();
                TableErasure {
                    rows_removed: *rows,
                    value_hashes: hashes,
                    ..o.shared.clone()
                }
            })
            .collect();
        let certificate = Certificate {
            request_id: r.request_id.clone(),
            subject_hash: r.subject_hash.clone(),
            erased_at,
            tables,
            tombstones: r.tombstones,
            invalid: None,
            dry_run: options.dry_run,
        };
        certificates.push(certificate);
    }
    if let Some(j) = &journal {
        j.save_run(&RunJournal {
            erased_at: Some(erased_at),
        })
        .await?;
        abort_point("certifying", "run");
        record(lake, &certificates).await?;
        abort_point("recorded", "run");
        j.clear().await?;
    }
    if let Some(lock) = run_lock {
        lock.release().await;
    }
    Ok(certificates)
}

/// Files of `delta` carrying a deletion vector.
fn files_with_deletion_vectors(delta: &DeltaTable) -> usize {
    delta.snapshot().map_or(0, |s| {
        s.log_data()
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .count()
    })
}

/// The lock of the runs of the subjects of `journal`.
fn run_lock_name(journal: &Journal) -> String {
    format!("erase.run.{}", journal.key())
}

/// The certificates recorded in `sluice.erasures`, to query; none before the first.
async fn certificates_of(lake: &Lake) -> Result<Option<deltalake::datafusion::prelude::DataFrame>> {
    let url = table::lake_url(lake, ERASURES)?;
    let t = table::open(ERASURES, &url).await?;
    if !table::exists(&t) {
        return Ok(None);
    }
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    ctx.register_table(
        "erasures",
        t.table_provider().await.map_err(Error::query(ERASURES))?,
    )?;
    Ok(Some(ctx.table("erasures").await?))
}

/// A certificate as `sluice.erasures` holds it.
struct Recorded {
    request_id: String,
    subject_hash: String,
    erased_at: i64,
    tombstones: u64,
    /// Per table, as JSON.
    tables: String,
}

/// The certificates recorded at `at`: a run records all of its own at one time.
async fn recorded_at(lake: &Lake, at: i64) -> Result<Vec<Recorded>> {
    recorded_where(lake, |erased_at, t| erased_at.eq(t), at).await
}

/// The certificates recorded at `since` or later, earliest first.
async fn recorded_since(lake: &Lake, since: i64) -> Result<Vec<Recorded>> {
    let mut out = recorded_where(lake, |erased_at, t| erased_at.gt_eq(t), since).await?;
    out.sort_by_key(|c| c.erased_at);
    Ok(out)
}

/// The certificates whose `erased_at` compares with `at` as `compare` says.
async fn recorded_where(
    lake: &Lake,
    compare: impl FnOnce(
        deltalake::datafusion::prelude::Expr,
        deltalake::datafusion::prelude::Expr,
    ) -> deltalake::datafusion::prelude::Expr,
    at: i64,
) -> Result<Vec<Recorded>> {
    use deltalake::datafusion::prelude::{col, lit};
    let Some(certificates) = certificates_of(lake).await? else {
        return Ok(Vec::new());
    };
    let at = lit(
        deltalake::datafusion::scalar::ScalarValue::TimestampMicrosecond(
            Some(at),
            Some("UTC".into()),
        ),
    );
    let batches = certificates
        .filter(compare(col("erased_at"), at))?
        .select_columns(&[
            "request_id",
            "subject_hash",
            "tombstones",
            "tables",
            "erased_at",
        ])?
        .collect()
        .await?;
    let mut out = Vec::new();
    for b in batches {
        // Text may come back as views: read it as plain strings.
        let (ids, hashes, tables) = (
            cast(b.column(0), &DataType::Utf8)?,
            cast(b.column(1), &DataType::Utf8)?,
            cast(b.column(3), &DataType::Utf8)?,
        );
        let (ids, hashes, tables) = (
            ids.as_string::<i32>(),
            hashes.as_string::<i32>(),
            tables.as_string::<i32>(),
        );
        let tombstones = cast(b.column(2), &DataType::Int64)?;
        let tombstones = tombstones.as_primitive::<Int64Type>();
        let times = cast(b.column(4), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let text = |a: &StringArray| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            };
            out.push(Recorded {
                request_id: text(ids),
                subject_hash: text(hashes),
                erased_at: times.value(i),
                tombstones: if tombstones.is_null(i) {
                    0
                } else {
                    u64::try_from(tombstones.value(i)).unwrap_or(0)
                },
                tables: text(tables),
            });
        }
    }
    Ok(out)
}

/// The certificates of `recorded` for `requests`, in their order: for each, the first
/// of the same subject (and with `same_id`, the same request id); `None` when a request
/// has none. Without `same_id` the certificates are another run's, given the requests'
/// own ids and tombstones.
fn recorded_certificates(
    requests: &[Request],
    recorded: &[Recorded],
    same_id: bool,
) -> Result<Option<Vec<Certificate>>> {
    let mut out = Vec::new();
    for r in requests {
        let Some(c) = recorded.iter().find(|c| {
            c.subject_hash == r.subject_hash && (!same_id || c.request_id == r.request_id)
        }) else {
            return Ok(None);
        };
        let tables: Vec<TableErasure> = serde_json::from_str(&c.tables).map_err(Error::json(
            format!("{ERASURES}: a certificate's tables do not read"),
        ))?;
        out.push(Certificate {
            request_id: r.request_id.clone(),
            subject_hash: c.subject_hash.clone(),
            erased_at: c.erased_at,
            tables,
            tombstones: if same_id { c.tombstones } else { r.tombstones },
            invalid: None,
            dry_run: false,
        });
    }
    Ok(Some(out))
}

/// The subject key store at `store`, if it holds a table.
async fn open_key_store(store: &Lake) -> Result<Option<DeltaTable>> {
    if let Lake::Local(dir) = store
        && !dir.join("_delta_log").is_dir()
    {
        return Ok(None);
    }
    let delta = table::open(KEY_STORE, &table::lake_url(store, "")?).await?;
    Ok(table::exists(&delta).then_some(delta))
}

/// Record the requests of a batch that could not be carried out (`(request id, why)`),
/// so none is lost once skipped: all in one commit, at `at`, the time the batch was
/// taken. The same batch taken again after a stop (see [`crate::journal::BatchMarker`])
/// finds certificates of invalid requests at that time, so these were recorded, and
/// records nothing more.
pub async fn record_invalid(
    lake: &Lake,
    invalid: &[(String, String)],
    at: i64,
) -> Result<Vec<Certificate>> {
    let certificates: Vec<Certificate> = invalid
        .iter()
        .map(|(request_id, why)| Certificate {
            request_id: request_id.clone(),
            subject_hash: String::new(),
            erased_at: at,
            tables: Vec::new(),
            tombstones: 0,
            invalid: Some(why.clone()),
            dry_run: false,
        })
        .collect();
    if certificates.is_empty()
        || recorded_at(lake, at)
            .await?
            .iter()
            .any(|c| c.subject_hash.is_empty())
    {
        return Ok(certificates);
    }
    record(lake, &certificates).await?;
    Ok(certificates)
}

/// Delete the rows `lookup` finds for `all`, again against the refreshed table when
/// another writer committed meanwhile. Returns the table after the delete and the version
/// the delete committed, if it had anything to delete.
async fn delete_rows(
    name: &str,
    delta: DeltaTable,
    lookup: &Lookup,
    all: &Arc<Subject>,
    attempt_id: &str,
) -> Result<(DeltaTable, Option<i64>)> {
    let mut delta = delta;
    let mut attempt = 0;
    loop {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
            delta
                .update_incremental(None)
                .await
                .map_err(Error::delta(name))?;
        }
        let read = version(&delta);
        match delta
            .clone()
            .delete()
            .with_predicate(lookup.predicate(Arc::clone(all)))
            .with_commit_properties(
                CommitProperties::default().with_metadata([(
                    ATTEMPT_KEY.to_string(),
                    serde_json::Value::from(attempt_id),
                )]),
            )
            .await
        {
            Ok((t, metrics)) => {
                let committed =
                    (metrics.num_removed_files > 0 && version(&t) > read).then(|| version(&t));
                return Ok((t, committed));
            }
            Err(e) => {
                tracing::warn!(table = %name, attempt, error = %e, "erasure delete refused, retrying against the refreshed table");
                attempt += 1;
                if attempt == DELETE_ATTEMPTS {
                    return Err(Error::DeleteRefused {
                        table: name.to_string(),
                        attempts: DELETE_ATTEMPTS,
                        source: Box::new(e),
                    });
                }
            }
        }
    }
}

/// Which requests each form of an identifier belongs to.
type Owners = std::collections::HashMap<String, Vec<usize>>;

fn owners(requests: &[Request]) -> Owners {
    let mut out = Owners::new();
    for (i, r) in requests.iter().enumerate() {
        for f in r.subject.form_list() {
            out.entry(f.clone()).or_default().push(i);
        }
    }
    out
}

/// For each request, the rows of the Parquet file `bytes` holding its subject (among the
/// rows holding any of them) and the salted hashes of their text values. A row belongs to
/// every request whose subject it holds (in a subject column, a text column or a dead
/// letter), found in one pass for all of them.
#[allow(clippy::too_many_arguments)]
fn attribute(
    name: &str,
    bytes: bytes::Bytes,
    lookup: &Lookup,
    all: &Subject,
    requests: &[Request],
    owners: &Owners,
    key: &[u8],
    out: &mut [(u64, HashSet<String>)],
) -> Result<u64> {
    let mut found = 0;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(Error::parquet(name))?;
    for batch in reader {
        let batch = batch?;
        let any = lookup.mask(all, &batch)?;
        if any.true_count() == 0 {
            continue;
        }
        let rows = filter_record_batch(&batch, &any)?;
        let n = rows.num_rows();
        found += n as u64;
        let mut row_owners: Vec<Vec<usize>> = vec![Vec::new(); n];
        if requests.len() == 1 {
            row_owners.iter_mut().for_each(|o| o.push(0));
        } else {
            // One pass over the rows for every subject at once: each form found names
            // the requests it belongs to (a row may belong to several).
            lookup.forms_per_row(all, &rows, &mut |row, form| {
                if let Some(o) = owners.get(form) {
                    row_owners[row].extend(o);
                }
            })?;
            for o in &mut row_owners {
                o.sort_unstable();
                o.dedup();
            }
        }
        for o in row_owners.iter().flatten() {
            out[*o].0 += 1;
        }
        for column in rows.columns() {
            text_values(column, &mut |row, v| {
                if row_owners[row].is_empty() {
                    return;
                }
                let h = value_hash(key, v);
                for o in &row_owners[row] {
                    out[*o].1.insert(h.clone());
                }
            });
        }
    }
    Ok(found)
}

#[allow(clippy::too_many_arguments)]
async fn erase_table(
    cx: &JobContext,
    name: &str,
    delta: DeltaTable,
    lookup: &Lookup,
    all: &Arc<Subject>,
    requests: &[Request],
    owners: &Owners,
    options: &Options,
    journal: Option<&Journal>,
    held: &[&Lock],
) -> Result<TableOutcome> {
    let started = cx.now();
    // Checked again under the table's locks: another engine may have added deletion
    // vectors since the check before the first table.
    let hidden = files_with_deletion_vectors(&delta);
    if hidden > 0 {
        return Err(Error::DeletionVectors {
            table: name.to_string(),
            files: hidden,
        });
    }
    let mut shared = TableErasure {
        table: name.to_string(),
        version_before: version(&delta),
        ..Default::default()
    };
    let mut per_request: Vec<(u64, HashSet<String>)> = vec![(0, HashSet::new()); requests.len()];
    let before_files: HashSet<ObjectPath> = {
        let files = TableFiles::of(name, &delta);
        delta
            .get_file_uris()
            .map_err(Error::delta(name))?
            .filter_map(|u| files.relative(&u))
            .collect()
    };
    // What an earlier run of these requests, stopped before its certificates, did here.
    let prior: Option<TableJournal> = match journal {
        Some(j) => j.table(name).await?.filter(|p| {
            p.rows.len() == p.subjects.len()
                && p.value_hashes.len() == p.subjects.len()
                && requests
                    .iter()
                    .all(|r| p.subjects.contains(&r.subject_hash))
        }),
        None => None,
    };
    if prior.is_some() {
        tracing::warn!(table = %name, "finishing an erasure of these requests that stopped before its certificates");
    }
    // Counts stay in the order of the subjects they were written with until this run
    // accounts for the table (then in its own order).
    let mut entry = prior.clone().unwrap_or_else(|| TableJournal {
        table: name.to_string(),
        version_before: shared.version_before,
        subjects: requests.iter().map(|r| r.subject_hash.clone()).collect(),
        rows: vec![0; requests.len()],
        value_hashes: vec![Vec::new(); requests.len()],
        ..Default::default()
    });
    let (delta, committed) = match journal {
        None => (delta, None),
        Some(j) => {
            entry.pending.push(Attempt {
                id: j.attempt.clone(),
                after_version: shared.version_before,
            });
            j.save_table(&entry).await?;
            abort_point("journaled", name);
            Lock::all_held(held, &format!("erasure of {name}"))?;
            let deleted = delete_rows(name, delta, lookup, all, &j.attempt).await?;
            abort_point("deleted", name);
            deleted
        }
    };
    shared.version_after = version(&delta);
    let files = TableFiles::of(name, &delta);
    let current: HashSet<ObjectPath> = delta
        .get_file_uris()
        .map_err(Error::delta(name))?
        .filter_map(|u| files.relative(&u))
        .collect();
    // The files the delete replaced (or, in a dry run, would): their rows holding a
    // subject are the rows erased. So are those of a delete an earlier run committed
    // without accounting for it.
    // The rows of a file's bytes holding each request's subject, and their value hashes.
    let count = |bytes: bytes::Bytes, into: &mut [(u64, HashSet<String>)]| {
        attribute(
            name,
            bytes,
            lookup,
            all,
            requests,
            owners,
            &options.value_key,
            into,
        )
    };
    let mut replaced: Vec<ObjectPath> = Vec::new();
    let mut earlier_delete = false;
    if options.dry_run {
        for file in &before_files {
            let bytes = files.read(file).await?;
            if lookup.holds_in(all, file, bytes.clone())? {
                shared.rows_removed += count(bytes, &mut per_request)?;
                replaced.push(file.clone());
            }
        }
    } else {
        let mut deletes: Vec<i64> = committed.into_iter().collect();
        for attempt in prior.iter().flat_map(|p| &p.pending) {
            if let Some(v) = attempt_version(&files, attempt, shared.version_after).await?
                && !deletes.contains(&v)
            {
                deletes.push(v);
                earlier_delete = true;
            }
        }
        for v in deletes {
            for file in files.replaced_files(v).await? {
                if replaced.contains(&file) {
                    continue;
                }
                let change_data = file.as_ref().starts_with("_change_data/");
                if !change_data
                    && !current.contains(&file)
                    && let Some(bytes) = files.read_if_exists(&file).await?
                {
                    shared.rows_removed += count(bytes, &mut per_request)?;
                }
                replaced.push(file);
            }
        }
    }
    shared.files_rewritten = replaced
        .iter()
        .filter(|f| !f.as_ref().starts_with("_change_data/"))
        .count() as u64;
    // Files of older versions not yet vacuumed (and change-data files) still holding a
    // subject: their values count too.
    let mut holders: Vec<object_store::ObjectMeta> = Vec::new();
    for file in files.data_files().await? {
        if current.contains(&file.location)
            || replaced.contains(&file.location)
            || (options.dry_run && before_files.contains(&file.location))
        {
            continue;
        }
        let bytes = files.read(&file.location).await?;
        if lookup.holds_in(all, &file.location, bytes.clone())? {
            // Rows of older versions are not counted as removed; their values are.
            let mut ignored = vec![(0, HashSet::new()); requests.len()];
            count(bytes, &mut ignored)?;
            for (mine, theirs) in per_request.iter_mut().zip(ignored) {
                mine.1.extend(theirs.1);
            }
            holders.push(file);
        }
    }
    // What the earlier run accounted for: its rows, values and files.
    let decided: HashSet<ObjectPath> = prior
        .iter()
        .flat_map(|p| &p.purge)
        .map(|f| ObjectPath::from(f.as_str()))
        .collect();
    if let Some(p) = &prior {
        shared.version_before = p.version_before;
        shared.rows_removed += p.rows.iter().sum::<u64>();
        shared.files_rewritten += p.files_rewritten;
        for (mine, r) in per_request.iter_mut().zip(requests) {
            if let Some((rows, hashes)) = p.of_subject(&r.subject_hash) {
                mine.0 += rows;
                mine.1.extend(hashes.iter().cloned());
            }
        }
    }
    // A table an earlier run only looked at (nothing deleted, accounted or scrubbed) is
    // as if never visited: its log is not scrubbed again for nothing.
    let touched = prior.as_ref().is_some_and(TableJournal::accounted)
        || earlier_delete
        || !replaced.is_empty()
        || !holders.is_empty()
        || log_mentions(&files, &delta, all).await?;
    if !touched {
        if let Some(j) = journal {
            j.remove_table(name).await?;
        }
        return Ok(TableOutcome {
            shared,
            per_request,
        });
    }
    if options.dry_run {
        shared.files_purged = holders.len() as u64;
        let log = files.read_log(shared.version_after).await?;
        shared.logs_purged = (log.entries.len() + log.old_checkpoints.len()) as u64;
        shared.history_from_version = Some(shared.version_after);
        return Ok(TableOutcome {
            shared,
            per_request,
        });
    }
    let log_started = Instant::now();
    let log: LogView = files.checkpoint_and_read(&delta).await?;
    let window =
        chrono::Duration::from_std(options.orphan_min_age).unwrap_or(chrono::Duration::MAX);
    let mut purge: Vec<ObjectPath> = replaced;
    for file in holders {
        // A file some commit named is settled; one no commit names may still be
        // committed by a writer in flight, unless it is older than the safety window or
        // an earlier run of this erasure decided it (the log it read named it).
        if log.named.contains(&file.location)
            || decided.contains(&file.location)
            || file.last_modified + window < started
        {
            purge.push(file.location);
        } else {
            shared.files_deferred += 1;
        }
    }
    for file in &decided {
        if !purge.contains(file) {
            purge.push(file.clone());
        }
    }
    // Accounted for: a run stopped from here on is finished by the next one with the same
    // rows, values and files.
    if let Some(j) = journal {
        entry.pending.clear();
        entry.subjects = requests.iter().map(|r| r.subject_hash.clone()).collect();
        entry.rows = per_request.iter().map(|(rows, _)| *rows).collect();
        entry.value_hashes = per_request
            .iter()
            .map(|(_, hashes)| {
                let mut v: Vec<String> = hashes.iter().cloned().collect();
                v.sort();
                v
            })
            .collect();
        entry.files_rewritten = shared.files_rewritten;
        entry.purge = purge.iter().map(|f| f.to_string()).collect();
        j.save_table(&entry).await?;
        abort_point("accounted", name);
    }
    // The log first, the files after: an erasure stopped in between leaves files that
    // still hold a subject, which the next run purges (the journal names them). The other
    // way round, it would leave statistics of files already gone, with nothing left to
    // find them by.
    // A run whose locks another process took over (its lease ran out while it stalled)
    // stops here: that process may be maintaining or erasing the same table.
    Lock::all_held(held, &format!("erasure of {name}"))?;
    let purged: HashSet<ObjectPath> = purge.iter().cloned().collect();
    shared.logs_purged = entry.logs_purged + files.scrub(&log, &purged, true).await?;
    if let Some(j) = journal {
        entry.logs_purged = shared.logs_purged;
        j.save_table(&entry).await?;
        abort_point("scrubbed", name);
    }
    // Files an earlier run removed count as purged; other files already gone (vacuumed
    // before the erasure) do not.
    Lock::all_held(held, &format!("erasure of {name}"))?;
    let missing = files.remove_missing(&purge).await?;
    let gone_before = missing.iter().filter(|f| !decided.contains(f)).count();
    shared.files_purged = (purge.len() - gone_before) as u64;
    abort_point("purged", name);
    shared.history_from_version = Some(log.version);
    shared.log_seconds = log_started.elapsed().as_secs_f64();
    Ok(TableOutcome {
        shared,
        per_request,
    })
}

/// Whether a log entry not scrubbed yet, or a checkpoint, mentions a subject.
async fn log_mentions(files: &TableFiles, delta: &DeltaTable, all: &Subject) -> Result<bool> {
    let log = files.read_log(version(delta)).await?;
    for (_, bytes) in &log.entries {
        if all.mentioned_in(bytes) {
            return Ok(true);
        }
    }
    for path in log.checkpoint.iter().chain(&log.old_checkpoints) {
        let bytes = files.read(path).await?;
        if all.mentioned_in(&bytes)
            || (path.as_ref().ends_with(".parquet")
                && all.count_in_parquet(path.as_ref(), bytes)? > 0)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, true),
        Field::new("subject_hash", DataType::Utf8, true),
        Field::new(
            "erased_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("outcome", DataType::Utf8, true),
        Field::new("rows_removed", DataType::Int64, true),
        Field::new("files_purged", DataType::Int64, true),
        Field::new("logs_purged", DataType::Int64, true),
        Field::new("tombstones", DataType::Int64, true),
        Field::new("versions", DataType::Utf8, true),
        Field::new("tables", DataType::Utf8, true),
    ]))
}

/// Append the certificate to `_sluice/erasures`.
/// Record `certificates` in `sluice.erasures`, all in one commit.
async fn record(lake: &Lake, certificates: &[Certificate]) -> Result<()> {
    if certificates.is_empty() {
        return Ok(());
    }
    let mut tables = Vec::new();
    let mut versions = Vec::new();
    for c in certificates {
        versions.push(
            c.tables
                .iter()
                .map(|t| format!("{}@{}", t.table, t.version_after))
                .collect::<Vec<_>>()
                .join(", "),
        );
        tables.push(
            serde_json::to_string(&c.tables)
                .map_err(Error::json(format!("{ERASURES}: a certificate's tables")))?,
        );
    }
    let each = |f: &dyn Fn(&Certificate) -> i64| -> Arc<Int64Array> {
        Arc::new(Int64Array::from_iter_values(certificates.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                certificates.iter().map(|c| c.request_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                certificates.iter().map(|c| c.subject_hash.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    certificates.iter().map(|c| c.erased_at),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                certificates.iter().map(Certificate::outcome),
            )),
            each(&|c| c.rows_removed() as i64),
            each(&|c| c.files_purged() as i64),
            each(&|c| c.logs_purged() as i64),
            each(&|c| c.tombstones as i64),
            Arc::new(StringArray::from_iter_values(versions)),
            Arc::new(StringArray::from_iter_values(tables)),
        ],
    )?;
    let url = table::lake_url(lake, ERASURES)?;
    table::append_record(ERASURES, &url, &schema(), batch, &STATS_COLUMNS).await?;
    Ok(())
}

/// What a byte scan found in one table (or other directory) of the lake.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub place: String,
    pub files: u64,
    pub bytes: u64,
    /// Mentions of the subject's identifier (raw or pseudonymised).
    pub occurrences: u64,
    /// Values of the subject's erased rows that no remaining row holds.
    pub value_occurrences: u64,
    /// Files (relative to the lake) holding the subject or one of its erased values.
    pub found_in: Vec<String>,
}

/// The erased values of a subject to look for: salted hashes from its certificates.
#[derive(Debug, Clone, Default)]
pub struct ErasedValues {
    pub key: [u8; 32],
    pub hashes: HashSet<String>,
}

impl ErasedValues {
    /// The value hashes of every certificate of the subject whose hash is `subject_hash`.
    pub async fn of(lake: &Lake, key: [u8; 32], subject_hash: &str) -> Result<Self> {
        let mut hashes = HashSet::new();
        if let Some(certificates) = certificates_of(lake).await? {
            let batches = certificates
                .select_columns(&["subject_hash", "tables"])?
                .collect()
                .await?;
            for b in batches {
                // Text may come back as views: read it as plain strings.
                let h = cast(b.column(0), &DataType::Utf8)?;
                let tables = cast(b.column(1), &DataType::Utf8)?;
                let (h, tables) = (h.as_string::<i32>(), tables.as_string::<i32>());
                for i in 0..b.num_rows() {
                    if h.is_null(i) || h.value(i) != subject_hash || tables.is_null(i) {
                        continue;
                    }
                    let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(tables.value(i))
                    else {
                        continue;
                    };
                    for t in list {
                        for v in t["value_hashes"].as_array().into_iter().flatten() {
                            if let Some(v) = v.as_str() {
                                hashes.insert(v.to_string());
                            }
                        }
                    }
                }
            }
        }
        Ok(Self { key, hashes })
    }
}

/// Every string of a JSON document that could be an erased value (statistics inside log
/// entries and checkpoints are JSON in JSON: opened too).
fn json_candidates(v: &serde_json::Value, out: &mut Vec<String>) {
    let mut push = |s: &str| {
        if s.chars().count() >= MIN_VALUE_CHARS {
            out.push(s.to_string());
        }
    };
    match v {
        serde_json::Value::String(s) => {
            push(s);
            if (s.starts_with('{') || s.starts_with('['))
                && let Ok(inner) = serde_json::from_str::<serde_json::Value>(s)
            {
                json_candidates(&inner, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_candidates(x, out)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                if k.chars().count() >= MIN_VALUE_CHARS {
                    out.push(k.clone());
                }
                json_candidates(x, out);
            }
        }
        serde_json::Value::Number(n) => push(&n.to_string()),
        _ => {}
    }
}

/// Every string of a file that could be an erased value: every JSON line of a log entry,
/// every decoded text value of a Parquet file (`batches`).
fn candidates(bytes: &[u8], batches: Option<&[RecordBatch]>) -> Vec<String> {
    let mut out = Vec::new();
    match batches {
        Some(batches) => {
            for batch in batches {
                for column in batch.columns() {
                    text_values(column, &mut |_, v| {
                        out.push(v.to_string());
                        if v.starts_with('{')
                            && let Ok(j) = serde_json::from_str::<serde_json::Value>(v)
                        {
                            json_candidates(&j, &mut out);
                        }
                    });
                }
            }
        }
        None => {
            for line in bytes.split(|b| *b == b'\n') {
                match serde_json::from_slice::<serde_json::Value>(line) {
                    Ok(v) => json_candidates(&v, &mut out),
                    Err(_) => {
                        if let Ok(text) = std::str::from_utf8(line)
                            && text.trim().chars().count() >= MIN_VALUE_CHARS
                        {
                            out.push(text.trim().to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// The current data files of every table under `store` (relative to it), read from
/// their logs: the rows that remain.
async fn current_files(lake: &Lake, prefix: &str) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    let tables = find_tables_in(lake).await?;
    let mut urls: Vec<url::Url> = tables.into_iter().map(|t| t.url).collect();
    if prefix.is_empty() {
        // Tables outside the catalog (the subject key store in its default place).
        for extra in [sluice_pipeline::config::pii::SUBJECT_KEYS] {
            if let Ok(url) = table::lake_url(lake, extra)
                && let Ok(t) = table::open(extra, &url).await
                && table::exists(&t)
            {
                urls.push(url);
            }
        }
    } else if let Ok(url) = table::lake_url(lake, "")
        && let Ok(t) = table::open("keys", &url).await
        && table::exists(&t)
    {
        urls.push(url);
    }
    let root = table::lake_url(lake, "")?.to_string();
    for url in urls {
        let Ok(t) = table::open(url.as_str(), &url).await else {
            continue;
        };
        let files = TableFiles::of(url.as_str(), &t);
        let table_prefix = url.as_str().strip_prefix(&root).unwrap_or("").to_string();
        for uri in t.get_file_uris().map_err(Error::delta(url.as_str()))? {
            if let Some(p) = files.relative(&uri) {
                out.insert(format!("{prefix}{table_prefix}{p}"));
            }
        }
    }
    Ok(out)
}

/// What `verify` looks for: a subject's identifier forms and its erased values.
#[derive(Debug)]
pub struct Check {
    pub subject: Arc<Subject>,
    pub values: ErasedValues,
}

/// Count every mention of each subject of `checks` in every file under `lake` (and under
/// `key_store` when it lies outside the lake), in one pass: raw bytes of every file, and
/// every decoded value of every Parquet file (compressed pages hide raw bytes). Count too
/// every value of a subject's erased rows found anywhere — data files, log entries,
/// statistics, checkpoints — unless a remaining row (a current file of a table) holds it.
/// One list of reports per check.
pub async fn verify(
    lake: &Lake,
    key_store: Option<&Lake>,
    checks: &[Check],
) -> Result<Vec<Vec<ScanReport>>> {
    let mut reports: Vec<Vec<ScanReport>> = vec![Vec::new(); checks.len()];
    let mut places = vec![(table::lake_root_store(lake)?, String::new(), lake.clone())];
    let outside = match (lake, key_store) {
        (Lake::Local(l), Some(Lake::Local(k))) => {
            let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            k.is_dir() && !canonical(k).starts_with(canonical(l))
        }
        (Lake::ObjectStore(l), Some(Lake::ObjectStore(k))) => !k.as_str().starts_with(l.as_str()),
        (_, Some(Lake::Local(k))) => k.is_dir(),
        (_, Some(Lake::ObjectStore(_))) => true,
        (_, None) => false,
    };
    if let Some(store) = key_store.filter(|_| outside) {
        places.push((
            table::lake_root_store(store)?,
            "subject_keys/".to_string(),
            store.clone(),
        ));
    }
    // Erased values by hash (every check's values share the certificate key).
    let mut wanted: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, c) in checks.iter().enumerate() {
        for h in &c.values.hashes {
            wanted.entry(h.as_str()).or_default().push(i);
        }
    }
    let key = checks.first().map(|c| c.values.key).unwrap_or_default();
    // Values held by remaining rows are not residue: found in current data files.
    let mut remaining: HashSet<String> = HashSet::new();
    let mut value_hits: Vec<(String, usize, String)> = Vec::new();
    for (store, label, location) in places {
        let current = if wanted.is_empty() {
            HashSet::new()
        } else {
            current_files(&location, &label).await?
        };
        let mut files: Vec<object_store::ObjectMeta> = store
            .list(None)
            .try_collect()
            .await
            .map_err(Error::object_store(format!("listing {lake}")))?;
        files.sort_by(|a, b| a.location.cmp(&b.location));
        for file in files {
            let relative = format!("{label}{}", file.location);
            // Reports group by table: `<layer>/<name>` (or the first two parts).
            let place = relative.split('/').take(2).collect::<Vec<_>>().join("/");
            let failed = |e| Error::object_store(relative.as_str())(e);
            let got = store.get(&file.location).await.map_err(failed)?;
            let bytes = got.bytes().await.map_err(failed)?;
            let size = bytes.len() as u64;
            let batches: Option<Vec<RecordBatch>> = if relative.ends_with(".parquet") {
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                    .and_then(|b| b.build())
                    .map_err(Error::parquet(relative.as_str()))?;
                Some(reader.collect::<std::result::Result<Vec<_>, _>>()?)
            } else {
                None
            };
            if !wanted.is_empty() {
                for v in candidates(&bytes, batches.as_deref()) {
                    let h = value_hash(&key, &v);
                    let Some(who) = wanted.get(h.as_str()) else {
                        continue;
                    };
                    if current.contains(&relative) {
                        remaining.insert(h);
                    } else {
                        for i in who {
                            value_hits.push((h.clone(), *i, relative.clone()));
                        }
                    }
                }
            }
            for (i, check) in checks.iter().enumerate() {
                let mut n = check.subject.count_in(&bytes);
                for b in batches.iter().flatten() {
                    n += check.subject.count_in_batch(b)?;
                }
                let list = &mut reports[i];
                let report = match list.iter_mut().find(|r| r.place == place) {
                    Some(r) => r,
                    None => {
                        list.push(ScanReport {
                            place: place.clone(),
                            ..Default::default()
                        });
                        list.last_mut().unwrap_or_else(|| unreachable!())
                    }
                };
                report.files += 1;
                report.bytes += size;
                if n > 0 {
                    report.occurrences += n as u64;
                    report.found_in.push(relative.clone());
                }
            }
        }
    }
    for (hash, i, file) in value_hits {
        if remaining.contains(&hash) {
            continue;
        }
        let place = file.split('/').take(2).collect::<Vec<_>>().join("/");
        if let Some(r) = reports[i].iter_mut().find(|r| r.place == place) {
            r.value_occurrences += 1;
            if !r.found_in.contains(&file) {
                r.found_in.push(file);
            }
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_of_eight_characters_or_more_are_found_in_nested_columns_per_row() {
        use arrow::array::{ListArray, StructArray};
        use arrow::datatypes::Int32Type;
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("Zoë Ünalü"), Some("short")]));
        let tags: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1)]),
            None,
        ]));
        let inner = StructArray::from(vec![(
            Arc::new(Field::new("line1", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![None, Some("135 High Street")])) as ArrayRef,
        )]);
        let mut found = Vec::new();
        for a in [names, tags, Arc::new(inner) as ArrayRef] {
            text_values(&a, &mut |row, v| found.push((row, v.to_string())));
        }
        // Characters, not bytes: "Zoë Ünalü" has 9.
        assert_eq!(
            found,
            vec![
                (0, "Zoë Ünalü".to_string()),
                (1, "135 High Street".to_string())
            ]
        );
        let key = value_key(b"0123456789abcdef");
        let h = value_hash(&key, "135 High Street");
        assert_eq!(h.len(), 32);
        assert_ne!(
            h,
            value_hash(&value_key(b"0123456789abcdeX"), "135 High Street")
        );
        // A value inside statistics (JSON in a JSON string) is a candidate too.
        let entry = br#"{"add":{"stats":"{\"minValues\":{\"line1\":\"135 High Street\"}}"}}"#;
        assert!(candidates(entry, None).contains(&"135 High Street".to_string()));
    }

    /// Every byte of every file under `dir`, Parquet decoded, as one lossy text.
    /// The schema of the test tables: `(customer_id, note)`.
    fn notes_schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, true),
            Field::new("note", DataType::Utf8, true),
        ]))
    }

    /// `rows` of `(customer_id, note)` written to `t` in one commit.
    async fn write_notes(t: DeltaTable, rows: &[(&str, &str)]) -> DeltaTable {
        t.write(vec![
            RecordBatch::try_new(
                notes_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                ],
            )
            .expect("batch"),
        ])
        .await
        .expect("write")
    }

    fn everything(dir: &Path) -> String {
        let mut out = String::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let bytes = std::fs::read(&p).expect("read");
                out.push_str(&String::from_utf8_lossy(&bytes));
                if p.extension().is_some_and(|x| x == "parquet") {
                    let reader =
                        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                            .and_then(|b| b.build())
                            .expect("parquet");
                    for b in reader {
                        for c in b.expect("batch").columns() {
                            text_values(c, &mut |_, v| {
                                out.push_str(v);
                                out.push('\n');
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// An erasure of `customer_id` and one request for customer C0000001.
    fn customer_request() -> (ErasureConfig, [Request; 1]) {
        let config = ErasureConfig {
            columns: vec!["customer_id".into()],
            ..Default::default()
        };
        let requests = [Request {
            subject: Arc::new(Subject::new("C0000001", vec![], None)),
            request_id: "T-1".into(),
            subject_hash: "h".into(),
            tombstones: 0,
        }];
        (config, requests)
    }

    /// Rows another engine hid with a deletion vector stay in their file, which sluice
    /// cannot rewrite: the erasure refuses, naming the table, before anything changes.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_table_whose_files_carry_deletion_vectors_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let lake = Lake::Local(dir.path().to_path_buf());
        let cx = JobContext::with_system_clock(&lake);
        let url = table::lake_url(&lake, "bronze/t").expect("url");
        let t = table::create(
            "bronze/t",
            &url,
            &notes_schema(),
            &[],
            &[("delta.enableDeletionVectors".into(), "true".into())],
        )
        .await
        .expect("create");
        let t = write_notes(t, &[("C0000001", "hidden visit Qxsecret4")]).await;
        let version = t.version().expect("version");
        // Another engine hides the row with a deletion vector: the file is removed and
        // added again with it (the descriptor of the protocol's own example).
        let file = std::fs::read_dir(dir.path().join("bronze/t"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(".parquet"))
            .expect("a data file");
        let size = std::fs::metadata(dir.path().join("bronze/t").join(&file))
            .expect("size")
            .len();
        let dv = r#"{"storageType":"u","pathOrInlineDv":"ab^-aqEH.-t@S}K{vb[*k^","offset":4,"sizeInBytes":40,"cardinality":1}"#;
        let entry = format!(
            "{{\"remove\":{{\"path\":\"{file}\",\"deletionTimestamp\":1,\"dataChange\":true}}}}\n\
             {{\"add\":{{\"path\":\"{file}\",\"partitionValues\":{{}},\"size\":{size},\"modificationTime\":1,\"dataChange\":true,\"deletionVector\":{dv}}}}}\n"
        );
        std::fs::write(
            dir.path()
                .join(format!("bronze/t/_delta_log/{:020}.json", version + 1)),
            entry,
        )
        .expect("commit");
        let (config, requests) = customer_request();
        let options = Options::from_config(&config, value_key(b"0123456789abcdef"));
        let e = erase(&cx, &config, None, &requests, &options)
            .await
            .expect_err("refused");
        assert!(
            matches!(&e, Error::DeletionVectors { table, files: 1 } if table == "bronze.t"),
            "{e}"
        );
        let t = table::open("bronze/t", &url).await.expect("open");
        assert_eq!(t.version(), Some(version + 1), "nothing committed");
        assert!(
            everything(dir.path()).contains("Qxsecret4"),
            "nothing purged"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn change_data_files_and_older_files_holding_a_subject_are_purged() {
        let dir = tempfile::tempdir().expect("dir");
        let lake = Lake::Local(dir.path().to_path_buf());
        let cx = JobContext::with_system_clock(&lake);
        let schema = notes_schema();
        let url = table::lake_url(&lake, "bronze/t").expect("url");
        // Change data feed on: every delete writes the deleted rows to `_change_data`.
        let mut t = table::create(
            "bronze/t",
            &url,
            &schema,
            &[],
            &[("delta.enableChangeDataFeed".into(), "true".into())],
        )
        .await
        .expect("create");
        for (id, note) in [
            ("C0000001", "first visit Qxsecret1"),
            ("C0000002", "other customer"),
            ("C0000001", "second visit Qxsecret2"),
        ] {
            t = write_notes(t, &[(id, note)]).await;
        }
        // Another engine already deleted one of the subject's rows: its old file and a
        // change-data file still hold it.
        let (_, m) = t
            .delete()
            .with_predicate("note = 'first visit Qxsecret1'")
            .await
            .expect("delete");
        assert!(m.num_deleted_rows.unwrap_or(0) == 1);
        assert!(everything(dir.path()).contains("Qxsecret1"));
        let (config, requests) = customer_request();
        let mut options = Options::from_config(&config, value_key(b"0123456789abcdef"));
        // Every file is fresh here: the window would defer the ones no commit names.
        options.orphan_min_age = Duration::from_secs(3600);
        let certs = erase(&cx, &config, None, &requests, &options)
            .await
            .expect("erase");
        let t = &certs[0].tables[0];
        assert_eq!(t.rows_removed, 1, "{t:?}");
        assert!(t.files_purged >= 3, "{t:?}");
        assert_eq!(
            t.files_deferred, 0,
            "committed files are never deferred: {t:?}"
        );
        assert!(t.history_from_version.is_some());
        assert!(
            t.value_hashes
                .contains(&value_hash(&options.value_key, "second visit Qxsecret2"))
        );
        let all = everything(dir.path());
        for gone in ["Qxsecret1", "Qxsecret2"] {
            assert!(!all.contains(gone), "{gone} remains");
        }
        assert!(all.contains("other customer"));
        // A file no commit names (a writer's, not committed yet) holding the subject is
        // left alone while younger than the window.
        let orphan = dir.path().join("bronze/t/part-99999-orphan.parquet");
        {
            let mut w = parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&orphan).expect("create"),
                Arc::clone(&schema),
                None,
            )
            .expect("writer");
            w.write(
                &RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from(vec!["C0000001"])),
                        Arc::new(StringArray::from(vec!["in flight"])),
                    ],
                )
                .expect("batch"),
            )
            .expect("write");
            w.close().expect("close");
        }
        let certs = erase(&cx, &config, None, &requests, &options)
            .await
            .expect("erase");
        assert_eq!(certs[0].tables[0].files_deferred, 1);
        assert!(orphan.exists(), "a file a writer may still commit is kept");
        options.orphan_min_age = Duration::ZERO;
        let certs = erase(&cx, &config, None, &requests, &options)
            .await
            .expect("erase");
        assert_eq!(certs[0].tables[0].files_deferred, 0);
        assert!(!orphan.exists(), "older than the window: purged");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_erasure_stopped_after_its_delete_is_finished_by_the_next_run() {
        let dir = tempfile::tempdir().expect("dir");
        let lake = Lake::Local(dir.path().to_path_buf());
        let cx = JobContext::with_system_clock(&lake);
        let schema = notes_schema();
        let url = table::lake_url(&lake, "silver/t").expect("url");
        // Statistics on every column (a table made by another engine): the note of the
        // erased row sits in the log beside its file.
        let t = table::create("silver/t", &url, &schema, &[], &[])
            .await
            .expect("create");
        let t = write_notes(
            t,
            &[
                ("C0000001", "Zoë's secret Qxstopped1"),
                ("C0000002", "another customer"),
            ],
        )
        .await;
        let config = ErasureConfig {
            columns: vec!["customer_id".into()],
            ..Default::default()
        };
        let subject = Arc::new(Subject::new("C0000001", vec![], None));
        let lookup = lookup_for(&config, "silver.t", &schema);
        // A first run committed its delete and was killed: its file, the log's statistics
        // and no certificate are left.
        let (_, m) = t
            .delete()
            .with_predicate(lookup.predicate(Arc::clone(&subject)))
            .await
            .expect("delete");
        assert_eq!(m.num_deleted_rows, Some(1));
        assert!(everything(dir.path()).contains("Qxstopped1"));
        let requests = [Request {
            subject: Arc::clone(&subject),
            request_id: "K-1".into(),
            subject_hash: "h-stopped".into(),
            tombstones: 0,
        }];
        let options = Options::from_config(&config, value_key(b"0123456789abcdef"));
        let certs = erase(&cx, &config, None, &requests, &options)
            .await
            .expect("erase");
        let done = &certs[0].tables[0];
        assert!(done.files_purged >= 1, "{done:?}");
        assert!(done.history_from_version.is_some(), "{done:?}");
        assert!(
            done.value_hashes
                .contains(&value_hash(&options.value_key, "Zoë's secret Qxstopped1"))
        );
        let all = everything(dir.path());
        assert!(
            !all.contains("Qxstopped1"),
            "the stopped run's residue remains"
        );
        assert!(all.contains("another customer"));
        // --verify agrees, from the certificate of the second run.
        let values = ErasedValues::of(&lake, options.value_key, "h-stopped")
            .await
            .expect("values");
        assert!(!values.hashes.is_empty());
        let reports = verify(&lake, None, &[Check { subject, values }])
            .await
            .expect("verify");
        let found: u64 = reports[0]
            .iter()
            .map(|r| r.occurrences + r.value_occurrences)
            .sum();
        assert_eq!(found, 0, "{reports:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_of_several_subjects_certifies_each_its_own_rows_and_values() {
        let dir = tempfile::tempdir().expect("dir");
        let lake = Lake::Local(dir.path().to_path_buf());
        let cx = JobContext::with_system_clock(&lake);
        let schema = notes_schema();
        let url = table::lake_url(&lake, "silver/t").expect("url");
        let t = table::create("silver/t", &url, &schema, &[], &[])
            .await
            .expect("create");
        let rows = [
            ("C0000001", "note of one, first"),
            ("C0000002", "note of two, only"),
            ("C0000001", "note of one, second"),
            ("C0000003", "note of three"),
            ("C0000003", "three wrote: ask C0000002 or tok_C0000001"),
        ];
        write_notes(t, &rows).await;
        let mut config = ErasureConfig {
            columns: vec!["customer_id".into()],
            ..Default::default()
        };
        config.tables.insert(
            "silver.t".into(),
            sluice_pipeline::config::erasure::ErasureTable {
                columns: None,
                contains: vec!["note".into()],
            },
        );
        let request = |raw: &str| Request {
            subject: Arc::new(Subject::new(raw, vec![format!("tok_{raw}")], None)),
            request_id: "R".into(),
            subject_hash: raw.into(),
            tombstones: 0,
        };
        let options = Options::from_config(&config, value_key(b"0123456789abcdef"));
        let certs = erase(
            &cx,
            &config,
            None,
            &[request("C0000001"), request("C0000002")],
            &options,
        )
        .await
        .expect("erase");
        let (one, two) = (&certs[0].tables[0], &certs[1].tables[0]);
        // The row naming both in free text (one by its pseudonym) belongs to both.
        assert_eq!((one.rows_removed, two.rows_removed), (3, 2));
        let h = |v: &str| value_hash(&options.value_key, v);
        assert!(one.value_hashes.contains(&h("note of one, second")));
        assert!(!one.value_hashes.contains(&h("note of two, only")));
        assert!(two.value_hashes.contains(&h("note of two, only")));
        assert!(!two.value_hashes.contains(&h("note of three")));
        let both = h("three wrote: ask C0000002 or tok_C0000001");
        assert!(one.value_hashes.contains(&both) && two.value_hashes.contains(&both));
        // Files and log are the request's, shared by its certificates.
        assert_eq!(one.files_purged, two.files_purged);
        assert!(one.files_purged > 0);
    }

    #[test]
    fn the_subject_hash_is_keyed_and_stable() {
        let a = subject_hash(b"0123456789abcdef", "C0000001");
        assert_eq!(a, subject_hash(b"0123456789abcdef", "C0000001"));
        assert_ne!(a, subject_hash(b"0123456789abcdeX", "C0000001"));
        assert_ne!(a, subject_hash(b"0123456789abcdef", "C0000002"));
        assert!(!a.contains("C0000001"));
    }

    #[test]
    fn log_files_are_dated_by_their_version() {
        assert_eq!(
            crate::purge::log_version("00000000000000000012.json"),
            Some(12)
        );
        assert_eq!(
            crate::purge::log_version("00000000000000000010.checkpoint.parquet"),
            Some(10)
        );
        assert_eq!(crate::purge::log_version("_last_checkpoint"), None);
    }
}
