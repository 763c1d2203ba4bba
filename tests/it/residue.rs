//! What an erasure leaves behind, seen from outside: every table of a lake recorded row by
//! row before and after, the rows that disappeared, every text value of eight or more
//! characters they held that no remaining row holds, and every byte of the lake searched
//! for those values — raw bytes of every file, log entries opened (statistics are JSON in
//! JSON), Parquet files (data, checkpoints, change data) decoded value by value.
//!
//! Independent of sluice's own scanner: tables are read with delta-rs and DataFusion,
//! values are searched with an Aho-Corasick automaton.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::SessionContext;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Rows (as JSON objects, one line each) by table directory relative to the lake.
pub(crate) type Rows = BTreeMap<String, Vec<String>>;

/// Every directory under `dir` holding a Delta table.
pub(crate) fn tables_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if p.join("_delta_log").is_dir() {
            out.push(p.clone());
        }
        if p.file_name().is_some_and(|n| n != "_delta_log") {
            out.extend(tables_under(&p));
        }
    }
    out.sort();
    out
}

/// Every file under `dir`.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `batch` with binary columns as hex text (the JSON writer's choice would be ours).
fn printable(batch: &RecordBatch) -> RecordBatch {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(
            f.data_type(),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        ) {
            let b = cast(c, &DataType::Binary).expect("binary");
            let hex: StringArray = b
                .as_binary::<i32>()
                .iter()
                .map(|v| v.map(hex::encode))
                .collect();
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            columns.push(std::sync::Arc::new(hex));
        } else {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).expect("batch")
}

async fn rows_of(dir: &Path) -> Vec<String> {
    let url = url::Url::from_directory_path(dir).expect("absolute");
    let Ok(t) = deltalake::open_table(url).await else {
        return Vec::new();
    };
    let ctx = SessionContext::new();
    t.update_datafusion_session(&ctx.state()).expect("session");
    ctx.register_table("t", t.table_provider().await.expect("provider"))
        .expect("register");
    let batches = ctx
        .sql("select * from t")
        .await
        .expect("plan")
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{} does not read: {e}", dir.display()));
    let mut json = arrow::json::LineDelimitedWriter::new(Vec::new());
    for b in &batches {
        json.write(&printable(b)).expect("json");
    }
    json.finish().expect("json");
    String::from_utf8(json.into_inner())
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every row of every table under `lake` (each table must read: no missing file).
pub(crate) fn record(lake: &Path) -> Rows {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    tables_under(lake)
        .into_iter()
        .map(|dir| {
            let rel = dir
                .strip_prefix(lake)
                .expect("under the lake")
                .display()
                .to_string();
            let rows = rt.block_on(rows_of(&dir));
            (rel, rows)
        })
        .collect()
}

/// Every string of a JSON document (strings that are JSON themselves opened too).
fn json_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => {
            out.push(s.clone());
            if (s.starts_with('{') || s.starts_with('['))
                && let Ok(inner) = serde_json::from_str::<serde_json::Value>(s)
            {
                json_strings(&inner, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                json_strings(x, out);
            }
        }
        _ => {}
    }
}

fn long_strings(row: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(row).expect("row json");
    let mut all = Vec::new();
    json_strings(&v, &mut all);
    all.retain(|s| s.chars().count() >= 8);
    all
}

/// Rows of `before` missing from `after` (as a multiset), by table.
pub(crate) fn disappeared(before: &Rows, after: &Rows) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (table, rows) in before {
        let mut left: BTreeMap<&str, usize> = BTreeMap::new();
        for r in after.get(table).into_iter().flatten() {
            *left.entry(r.as_str()).or_default() += 1;
        }
        let mut gone = Vec::new();
        for r in rows {
            match left.get_mut(r.as_str()) {
                Some(n) if *n > 0 => *n -= 1,
                _ => gone.push(r.clone()),
            }
        }
        if !gone.is_empty() {
            out.insert(table.clone(), gone);
        }
    }
    out
}

/// Every text value of eight or more characters the `gone` rows held that no row of
/// `after` holds, whole or within a longer value (the scan looks for substrings: an
/// erased account number `00036991` is inside a kept transaction id `T0000036991`).
pub(crate) fn distinctive(gone: &BTreeMap<String, Vec<String>>, after: &Rows) -> BTreeSet<String> {
    let mut values: BTreeSet<String> = gone
        .values()
        .flatten()
        .flat_map(|r| long_strings(r))
        .collect();
    let candidates: Vec<String> = values.iter().cloned().collect();
    if candidates.is_empty() {
        return values;
    }
    let ac = aho_corasick::AhoCorasick::new(&candidates).expect("automaton");
    for held in after.values().flatten().flat_map(|r| long_strings(r)) {
        for m in ac.find_overlapping_iter(&held) {
            values.remove(&candidates[m.pattern().as_usize()]);
        }
    }
    values
}

/// Every text value of a decoded Parquet file (nested values too).
fn parquet_strings(path: &Path, out: &mut Vec<String>) {
    fn walk(a: &ArrayRef, out: &mut Vec<String>) {
        match a.data_type() {
            DataType::Struct(_) => a.as_struct().columns().iter().for_each(|c| walk(c, out)),
            DataType::List(_) => walk(a.as_list::<i32>().values(), out),
            DataType::LargeList(_) => walk(a.as_list::<i64>().values(), out),
            DataType::Map(_, _) => {
                let m = a.as_map();
                walk(m.keys(), out);
                walk(m.values(), out);
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                if let Ok(b) = cast(a, &DataType::Binary) {
                    for v in b.as_binary::<i32>().iter().flatten() {
                        out.push(String::from_utf8_lossy(v).into_owned());
                        // As `record` shows binary values: the erased rows' keys and
                        // payloads are looked for in this form.
                        out.push(hex::encode(v));
                    }
                }
            }
            _ => {
                if let Ok(s) = cast(a, &DataType::Utf8) {
                    for v in s.as_string::<i32>().iter().flatten() {
                        out.push(v.to_string());
                        if v.starts_with('{')
                            && let Ok(j) = serde_json::from_str::<serde_json::Value>(v)
                        {
                            json_strings(&j, out);
                        }
                    }
                }
            }
        }
    }
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let Ok(reader) = ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()) else {
        return;
    };
    for b in reader.flatten() {
        for c in b.columns() {
            walk(c, out);
        }
    }
}

/// Where each of `values` still appears under `dir`: (value, file) pairs.
pub(crate) fn scan(dir: &Path, values: &BTreeSet<String>) -> Vec<(String, String)> {
    let values: Vec<&String> = values.iter().collect();
    if values.is_empty() {
        return Vec::new();
    }
    let ac = aho_corasick::AhoCorasick::new(&values).expect("automaton");
    let mut hits = BTreeSet::new();
    for file in files_under(dir) {
        let bytes = std::fs::read(&file).expect("read");
        let mut texts = vec![String::from_utf8_lossy(&bytes).into_owned()];
        if file.extension().is_some_and(|e| e == "parquet") {
            parquet_strings(&file, &mut texts);
        } else {
            for line in bytes.split(|b| *b == b'\n') {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                    json_strings(&v, &mut texts);
                }
            }
        }
        let name = file
            .strip_prefix(dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        for t in &texts {
            for m in ac.find_overlapping_iter(t) {
                hits.insert((values[m.pattern().as_usize()].clone(), name.clone()));
            }
        }
    }
    hits.into_iter().collect()
}

/// Column names (dotted) with statistics in any add action of the table's log JSON, and
/// the configuration of its last metadata action.
pub(crate) fn logged_statistics(
    table: &Path,
) -> (BTreeSet<String>, serde_json::Map<String, serde_json::Value>) {
    fn keys(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v.as_object() {
            Some(o) => {
                for (k, x) in o {
                    keys(&format!("{prefix}{k}."), x, out);
                }
            }
            None => {
                out.insert(prefix.trim_end_matches('.').to_string());
            }
        }
    }
    let mut entries: Vec<PathBuf> = files_under(&table.join("_delta_log"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    let mut stats = BTreeSet::new();
    let mut configuration = serde_json::Map::new();
    for e in entries {
        for line in std::fs::read_to_string(&e).expect("read").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if let Some(c) = v["metaData"]["configuration"].as_object() {
                configuration = c.clone();
            }
            if let Some(s) = v["add"]["stats"].as_str() {
                let s: serde_json::Value = serde_json::from_str(s).expect("stats");
                keys("", &s["minValues"], &mut stats);
                keys("", &s["maxValues"], &mut stats);
            }
        }
    }
    stats.retain(|k| !k.is_empty());
    (stats, configuration)
}

/// Every table of a demo lake keeps statistics to safe columns: never a column the policy
/// keeps, redacts or encrypts, nor a dead letter's key, payload or error, nor anything in
/// the key store; the keys MERGE prunes by keep theirs.
pub(crate) fn assert_safe_statistics(lake: &Path) {
    const NEVER: [&str; 11] = [
        "notes",
        "note",
        "line1",
        "session_id",
        "first_name",
        "kafka_key",
        "payload",
        "error",
        "wrapped",
        "violating_keys",
        "outcome",
    ];
    let mut checked = Vec::new();
    for dir in tables_under(lake) {
        let rel = dir.strip_prefix(lake).expect("under").display().to_string();
        let (stats, config) = logged_statistics(&dir);
        assert_eq!(
            config
                .get("delta.dataSkippingNumIndexedCols")
                .and_then(|v| v.as_str()),
            Some("0"),
            "{rel}: {config:?}"
        );
        for s in &stats {
            let leaf = s.rsplit('.').next().unwrap_or(s);
            assert!(
                !NEVER.contains(&leaf),
                "{rel} has statistics on {s}: {stats:?}"
            );
        }
        if rel.starts_with("_keys") {
            assert!(stats.is_empty(), "the key store has statistics: {stats:?}");
        }
        checked.push((rel, stats));
    }
    let of = |t: &str| {
        checked
            .iter()
            .find(|(r, _)| r == t)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no table {t}"))
    };
    assert!(
        of("silver/accounts").contains("account_id"),
        "{:?}",
        of("silver/accounts")
    );
    assert!(of("silver/customers").contains("customer_id"));
    assert!(of("bronze/card_transactions").contains("customer_id"));
    assert!(of("_keys/subjects").is_empty());
    assert!(checked.len() >= 12, "{checked:?}");
}

/// Rows of `table` in `rows` whose JSON mentions `needle`.
pub(crate) fn count_mentions(rows: &Rows, table: &str, needle: &str) -> usize {
    rows.get(table)
        .map_or(0, |r| r.iter().filter(|r| r.contains(needle)).count())
}
