//! `sluice job erase`: the right to be forgotten. For one subject at a time, in every
//! table of the lake that can hold it (bronze, silver, SCD2 history, gold, dead letters,
//! quarantine, silver's tombstones, snapshot results):
//!
//! 1. the rows holding the subject are deleted (delta-rs rewrites only the files holding
//!    them; the predicate recorded in the log names a function, never the subject);
//! 2. exactly the files that held the subject are removed from storage at once, whatever
//!    the vacuum window: the files the delete replaced, files of older versions still
//!    awaiting vacuum, and change-data files holding the subject;
//! 3. log entries and checkpoints mentioning the subject (file statistics, operation
//!    parameters) are removed after a checkpoint of the new version, so time travel to an
//!    older version finds nothing or fails, and never brings the subject back;
//! 4. under crypto-shredding, the subject's data keys are erased the same way from the
//!    subject key store, so copies of its encrypted values out of reach (backups,
//!    exports) can no longer be decrypted;
//! 5. a certificate row goes to `_sluice/erasures`: request id, salted hash of the
//!    subject, tables with versions, rows removed, files purged.
//!
//! [`verify`] reads every byte of every file of the lake (log JSON, checkpoints, data
//! files raw and decoded, dead letters opened) and counts what still mentions the subject.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use futures::TryStreamExt as _;
use hmac::{Hmac, KeyInit, Mac};
use object_store::ObjectStoreExt as _;
use serde::Serialize;
use sha2::Sha256;
use sluice_connectors::delta::table;
use sluice_pipeline::erasure::ErasureConfig;
use sluice_pipeline::lake::Lake;
use sluice_sql::find_tables_in;

use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::purge::TableFiles;
use crate::subject::{LETTER_COLUMNS, Lookup, Subject, has_path};
use crate::version;

/// Where certificates live under the lake.
pub const ERASURES: &str = "_sluice/erasures";

/// Tables never searched: the job records, which hold hashes only.
const RECORD_TABLES: [&str; 2] = ["sluice.job_runs", "sluice.erasures"];

/// How certificates name the subject key store.
pub const KEY_STORE: &str = "keys.subjects";

/// What the erasure did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableErasure {
    pub table: String,
    pub version_before: i64,
    pub version_after: i64,
    pub rows_removed: u64,
    /// Files rewritten without the subject's rows.
    pub files_rewritten: u64,
    /// Data and change-data files removed from storage.
    pub files_purged: u64,
    /// Log entries and checkpoints removed from `_delta_log`.
    pub logs_purged: u64,
}

/// The certificate of one erasure.
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
    pub fn outcome(&self) -> String {
        if let Some(why) = &self.invalid {
            format!("invalid request: {why}")
        } else if self.rows_removed() + self.files_purged() + self.logs_purged() == 0 {
            "nothing to erase".into()
        } else {
            "erased".into()
        }
    }
}

/// The salted hash of a subject recorded in certificates.
pub fn subject_hash(certificate_secret: &[u8], subject: &str) -> String {
    let key = sluice_transforms::keys::derive_key(certificate_secret, b"sluice erasure v1");
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(subject.as_bytes());
    hex::encode(mac.finalize().into_bytes())
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

fn report(done: &TableErasure) {
    eprintln!(
        "erase: {}: {} rows removed, {} files rewritten, {} files purged, {} log entries purged (version {} → {})",
        done.table,
        done.rows_removed,
        done.files_rewritten,
        done.files_purged,
        done.logs_purged,
        done.version_before,
        done.version_after
    );
}

/// Erase `subject` from every table of `lake`, and its data keys from the subject key
/// store at `key_store` (when the policy encrypts per subject); `tombstones` were
/// produced for its keys.
pub async fn erase(
    lake: &Lake,
    config: &ErasureConfig,
    key_store: Option<&Lake>,
    subject: Arc<Subject>,
    request_id: &str,
    subject_hash: String,
    tombstones: u64,
) -> Result<Certificate> {
    let mut tables = Vec::new();
    for t in find_tables_in(lake)
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    {
        let name = t.qualified();
        if RECORD_TABLES.contains(&name.as_str()) {
            continue;
        }
        // Erasure and maintenance of a table never overlap.
        let erasing = Lock::acquire_in(lake, &format!("erase.{name}")).await?;
        let maintaining = Lock::acquire_in(lake, &format!("maintain.{name}")).await?;
        let delta = table::open(&name, &t.url).await?;
        let schema = table::arrow_schema(&name, &delta)?;
        let lookup = lookup_for(config, &name, &schema);
        if !lookup.is_empty() {
            let done = erase_table(&name, delta, &lookup, &subject, request_id).await?;
            report(&done);
            tables.push(done);
        }
        maintaining.release().await;
        erasing.release().await;
    }
    if let Some(store) = key_store
        && let Some(delta) = open_key_store(store).await?
    {
        let erasing = Lock::acquire_in(lake, &format!("erase.{KEY_STORE}")).await?;
        let lookup = Lookup {
            exact: vec!["subject".into()],
            contains: Vec::new(),
            letters: false,
        };
        let done = erase_table(KEY_STORE, delta, &lookup, &subject, request_id).await?;
        report(&done);
        tables.push(done);
        erasing.release().await;
    }
    let certificate = Certificate {
        request_id: request_id.to_string(),
        subject_hash,
        erased_at: chrono::Utc::now().timestamp_micros(),
        tables,
        tombstones,
        invalid: None,
    };
    record(lake, &certificate).await?;
    Ok(certificate)
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

/// Record a request that could not be carried out, so it is not lost once skipped.
pub async fn record_invalid(lake: &Lake, request_id: &str, why: &str) -> Result<Certificate> {
    let certificate = Certificate {
        request_id: request_id.to_string(),
        subject_hash: String::new(),
        erased_at: chrono::Utc::now().timestamp_micros(),
        tables: Vec::new(),
        tombstones: 0,
        invalid: Some(why.to_string()),
    };
    record(lake, &certificate).await?;
    Ok(certificate)
}

async fn erase_table(
    name: &str,
    delta: DeltaTable,
    lookup: &Lookup,
    subject: &Arc<Subject>,
    request_id: &str,
) -> Result<TableErasure> {
    let started = chrono::Utc::now();
    let mut done = TableErasure {
        table: name.to_string(),
        version_before: version(&delta),
        ..Default::default()
    };
    let (delta, metrics) = delta
        .delete()
        .with_predicate(lookup.predicate(Arc::clone(subject)))
        .with_commit_properties(CommitProperties::default().with_metadata([(
            "sluice.erasure".to_string(),
            serde_json::Value::from(request_id),
        )]))
        .await
        .map_err(Error::delta(name))?;
    done.version_after = version(&delta);
    done.rows_removed = metrics.num_deleted_rows.unwrap_or(0) as u64;
    done.files_rewritten = metrics.num_added_files as u64;
    let files = TableFiles::of(name, &delta);
    let mut purge = Vec::new();
    if done.version_after > done.version_before {
        purge.extend(files.replaced_files(done.version_after).await?);
    }
    // Files of older versions not yet vacuumed, and change-data files.
    let current: HashSet<_> = delta
        .get_file_uris()
        .map_err(Error::delta(name))?
        .filter_map(|u| files.relative(&u))
        .collect();
    for file in files.data_files().await? {
        if current.contains(&file.location) || purge.contains(&file.location) {
            continue;
        }
        // A file written since the job started belongs to a commit still in flight.
        if file.last_modified < started
            && lookup.holds_in(subject, &file.location, files.read(&file.location).await?)?
        {
            purge.push(file.location);
        }
    }
    done.files_purged = files.remove(&purge).await?;
    done.logs_purged = purge_log(&files, &delta, subject).await?;
    Ok(done)
}

/// Remove the log entries and checkpoints older than the table's version that mention
/// the subject, after checkpointing the version so the table still opens.
async fn purge_log(files: &TableFiles, delta: &DeltaTable, subject: &Subject) -> Result<u64> {
    let mut hits = Vec::new();
    for path in files.old_log_files(version(delta)).await? {
        let bytes = files.read(&path).await?;
        if subject.mentioned_in(&bytes)
            || (path.as_ref().ends_with(".parquet")
                && subject.count_in_parquet(path.as_ref(), bytes)? > 0)
        {
            hits.push(path);
        }
    }
    files.checkpoint_and_remove(delta, &hits).await
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
async fn record(lake: &Lake, c: &Certificate) -> Result<()> {
    let versions = c
        .tables
        .iter()
        .map(|t| format!("{}@{}", t.table, t.version_after))
        .collect::<Vec<_>>()
        .join(", ");
    let tables = serde_json::to_string(&c.tables).map_err(|e| Error::Other(e.to_string()))?;
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![c.request_id.clone()])),
            Arc::new(StringArray::from(vec![c.subject_hash.clone()])),
            Arc::new(TimestampMicrosecondArray::from(vec![c.erased_at]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![c.outcome()])),
            Arc::new(Int64Array::from(vec![c.rows_removed() as i64])),
            Arc::new(Int64Array::from(vec![c.files_purged() as i64])),
            Arc::new(Int64Array::from(vec![c.logs_purged() as i64])),
            Arc::new(Int64Array::from(vec![c.tombstones as i64])),
            Arc::new(StringArray::from(vec![versions])),
            Arc::new(StringArray::from(vec![tables])),
        ],
    )?;
    let url = table::lake_url(lake, ERASURES)?;
    table::append_record(ERASURES, &url, &schema(), batch).await?;
    Ok(())
}

/// What a byte scan found in one table (or other directory) of the lake.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub place: String,
    pub files: u64,
    pub bytes: u64,
    pub occurrences: u64,
    /// Files (relative to the lake) holding the subject.
    pub found_in: Vec<String>,
}

/// Count every mention of `subject` in every file under `lake` (and under `key_store`
/// when it lies outside the lake): raw bytes of every file, and every decoded value of
/// every Parquet file (compressed pages hide raw bytes).
pub async fn verify(
    lake: &Lake,
    key_store: Option<&Lake>,
    subject: &Subject,
) -> Result<Vec<ScanReport>> {
    let mut reports: Vec<ScanReport> = Vec::new();
    let mut places = vec![(table::lake_root_store(lake)?, String::new())];
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
        places.push((table::lake_root_store(store)?, "subject_keys/".to_string()));
    }
    for (store, label) in places {
        let mut files: Vec<object_store::ObjectMeta> = store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| Error::Other(format!("listing {lake}: {e}")))?;
        files.sort_by(|a, b| a.location.cmp(&b.location));
        for file in files {
            let relative = format!("{label}{}", file.location);
            // Reports group by table: `<layer>/<name>` (or the first two parts).
            let place = relative.split('/').take(2).collect::<Vec<_>>().join("/");
            let failed = |e: object_store::Error| Error::Other(format!("{relative}: {e}"));
            let got = store.get(&file.location).await.map_err(failed)?;
            let bytes = got.bytes().await.map_err(failed)?;
            let size = bytes.len() as u64;
            let mut n = subject.count_in(&bytes);
            if relative.ends_with(".parquet") {
                n += subject.count_in_parquet(&relative, bytes)?;
            }
            let report = match reports.iter_mut().find(|r| r.place == place) {
                Some(r) => r,
                None => {
                    reports.push(ScanReport {
                        place,
                        ..Default::default()
                    });
                    reports.last_mut().unwrap_or_else(|| unreachable!())
                }
            };
            report.files += 1;
            report.bytes += size;
            if n > 0 {
                report.occurrences += n as u64;
                report.found_in.push(relative);
            }
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

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
