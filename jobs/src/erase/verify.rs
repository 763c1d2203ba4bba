//! `sluice job erase --verify`: a byte scan of the whole lake for a subject's identifier
//! forms and for the values its erased rows held, and the text values of a column that
//! certificates hash.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use sluice_connectors::delta::table;
use sluice_pipeline::lake::Lake;
use sluice_sql::find_tables_in;

use super::MIN_VALUE_CHARS;
use super::certificate::{certificates_of, value_hash};
use crate::error::{Error, Result};
use crate::purge::TableFiles;
use crate::subject::Subject;

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
pub(super) fn candidates(bytes: &[u8], batches: Option<&[RecordBatch]>) -> Vec<String> {
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
