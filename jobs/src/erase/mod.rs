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
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::Schema;
use deltalake::DeltaTable;
use sluice_connectors::delta::table;
use sluice_pipeline::config::erasure::ErasureConfig;
use sluice_pipeline::lake::Lake;
use sluice_sql::{TableRef, find_tables_in};

use crate::JobContext;
use crate::error::{Error, Result};
use crate::journal::{Journal, RunJournal, abort_point};
use crate::lock::{Lock, held_with_prefix, lock_key, table_lock};
use crate::subject::{LETTER_COLUMNS, Lookup, Subject, has_path};

mod certificate;
mod per_table;
mod verify;

pub use certificate::{
    Certificate, TableErasure, record_invalid, subject_hash, value_hash, value_key,
};
use certificate::{record, recorded_at, recorded_certificates, recorded_since};
use per_table::{erase_table, owners};
#[cfg(test)]
use verify::candidates;
pub use verify::{Check, ErasedValues, ScanReport, text_values, verify};

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
    // Gold tables read one another: the rewrite locks of all of them are taken before the
    // first is erased and held until the last is, so no gold build can read a gold table
    // not yet erased into one already erased. (A build holds one such lock at a time and
    // takes it before reading: no deadlock.) By lock key.
    let mut gold: BTreeMap<String, Lock> = BTreeMap::new();
    // Every table but gold first; then gold, which is computed from the others, listed
    // once the builds in flight have committed.
    for gold_phase in [false, true] {
        let tables: Vec<TableRef> = if gold_phase {
            gold_tables(cx, lake, options, &mut gold).await?
        } else {
            find_tables_in(lake)
                .await?
                .into_iter()
                .filter(|t| t.schema != "gold")
                .collect()
        };
        for t in tables {
            let name = t.qualified();
            if RECORD_TABLES.contains(&name.as_str()) {
                continue;
            }
            let is_gold = t.schema == "gold";
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
                    Some(Lock::acquire_waiting(cx, &table_lock(&name), options.lock_wait).await?)
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
                    .chain(gold.get(&lock_key(&table_lock(&name))))
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

/// The gold tables of the lake, once the builds in flight have committed. A build takes
/// its table's rewrite lock before it reads its sources and holds it until it commits,
/// so a build that read a subject's rows before the erasure deleted them still holds its
/// lock, or has committed. Its table may be new, so (unless a dry run) the locks of the
/// gold tables listed and every gold table lock held now are taken (into `held`, by
/// [`lock_key`]), and again for what the next listing shows, until a listing shows no
/// table and no lock not held: every table returned is then held, and every build in
/// flight when the gold tables were reached has committed (a build of a new table that
/// starts after the last listing is not waited for).
async fn gold_tables(
    cx: &JobContext,
    lake: &Lake,
    options: &Options,
    held: &mut BTreeMap<String, Lock>,
) -> Result<Vec<TableRef>> {
    loop {
        let listed: Vec<TableRef> = find_tables_in(lake)
            .await?
            .into_iter()
            .filter(|t| t.schema == "gold")
            .collect();
        if options.dry_run {
            return Ok(listed);
        }
        let mut keys: std::collections::BTreeSet<String> = listed
            .iter()
            .map(|t| lock_key(&table_lock(&t.qualified())))
            .collect();
        keys.extend(held_with_prefix(cx, &table_lock("gold.")).await?);
        keys.retain(|k| !held.contains_key(k));
        if keys.is_empty() {
            return Ok(listed);
        }
        for key in keys {
            let lock = Lock::acquire_waiting(cx, &key, options.lock_wait).await?;
            held.insert(key, lock);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::path::Path;

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

    /// A gold build reads its sources under its table's lock and commits before letting
    /// go: when it read a subject's rows before the erasure deleted them and makes its
    /// table for the first time, the erasure waits for it and erases the new table too.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_gold_table_first_built_while_an_erasure_runs_is_erased_too() {
        let dir = tempfile::tempdir().expect("dir");
        let lake = Lake::Local(dir.path().to_path_buf());
        let cx = JobContext::with_system_clock(&lake);
        let schema = notes_schema();
        let create = async |path: &str| {
            let url = table::lake_url(&lake, path).expect("url");
            table::create(path, &url, &schema, &[], &[])
                .await
                .expect("create")
        };
        write_notes(
            create("bronze/t").await,
            &[("C0000001", "a note Qxbronze1"), ("C0000002", "other")],
        )
        .await;
        // The build of gold.fresh (its table not there yet) has read its sources.
        let build = Lock::acquire_in(&cx, &table_lock("gold.fresh"))
            .await
            .expect("the build's lock");
        let (config, requests) = customer_request();
        let options = Options::from_config(&config, value_key(b"0123456789abcdef"));
        let erasing = tokio::spawn({
            let (cx, config, options) = (
                JobContext::with_system_clock(&lake),
                config.clone(),
                options.clone(),
            );
            async move { erase(&cx, &config, None, &requests, &options).await }
        });
        // The erasure deletes from bronze, then waits for the build.
        let bronze = table::lake_url(&lake, "bronze/t").expect("url");
        for _ in 0..200 {
            // The log may be mid-rewrite: a failed open is tried again.
            if let Ok(t) = table::open("bronze/t", &bronze).await
                && crate::version(&t) > 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!erasing.is_finished(), "the erasure waits for the build");
        // The build commits what it read (the subject's rows among them) and goes on to
        // the next table, built from the first before the erasure reached it.
        write_notes(
            create("gold/fresh").await,
            &[("C0000001", "a note Qxbronze1"), ("C0000003", "kept")],
        )
        .await;
        let next = Lock::acquire_in(&cx, &table_lock("gold.from_fresh"))
            .await
            .expect("the next build's lock");
        build.release().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !erasing.is_finished(),
            "the erasure waits for the next build"
        );
        write_notes(
            create("gold/from_fresh").await,
            &[("C0000001", "a note Qxbronze1")],
        )
        .await;
        next.release().await;
        let certs = erasing.await.expect("join").expect("erase");
        for table in ["gold.fresh", "gold.from_fresh"] {
            let done = certs[0]
                .tables
                .iter()
                .find(|t| t.table == table)
                .unwrap_or_else(|| panic!("{table} is not erased"));
            assert_eq!(done.rows_removed, 1, "{done:?}");
        }
        let text = everything(dir.path());
        assert!(
            !text.contains("Qxbronze1"),
            "a value of the erased rows remains"
        );
        assert!(text.contains("kept"));
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
