//! Which columns of a table sluice writes may carry Delta file statistics: the one place
//! that decides it, for every table.
//!
//! Every data file a Delta commit adds carries the minimum and maximum of its columns in
//! the log (and in checkpoints). A value there outlives the row: it is copied into every
//! checkpoint, and only the log's own clean-up removes it. So statistics are kept to
//! columns whose values may be seen without the row:
//!
//! - lineage and bookkeeping columns (`_kafka_topic`, `_kafka_offset`, `_cdc_sequence`,
//!   `_valid_from`, …), never `_kafka_key` unless the policy pseudonymised it;
//! - columns whose values the PII policy replaced (`tokenize`, `hash`, `encrypt_fpe`,
//!   `mask`, `mask_partial`, `generalize`): pseudonyms and masks;
//! - columns the policy does not name at all (not classified as personal), except a
//!   subject column of `[erasure]` (an identifier the policy left raw); in bronze, where
//!   a column can appear before anyone classified it, a table the policy covers keeps
//!   statistics on lineage and replaced columns only;
//! - never a column kept, redacted, encrypted or dropped by the policy, nothing inside a
//!   list or map, and nothing whose name is not a plain identifier (`[A-Za-z0-9_]`);
//! - none at all in the subject key store.
//!
//! The properties set are `delta.dataSkippingStatsColumns` (the list; absent when it is
//! empty) and `delta.dataSkippingNumIndexedCols = 0`, so a reader or writer that cannot
//! use the list falls back to no statistics rather than to the first 32 columns.
//!
//! delta-rs 1.1 matches the list against the *leaf name* of each Parquet column, not its
//! path: `email` in the list gives statistics to `after.email` and `profile.email` alike.
//! A leaf name is therefore listed only when every column of that name in the table is
//! safe; dotted paths are listed too, for engines that follow the protocol's paths.

use std::collections::{BTreeMap, BTreeSet};

use arrow::datatypes::{DataType, Schema};
use deltalake::DeltaTable;
use deltalake::kernel::MetadataExt as _;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use sluice_pipeline::config::Config;
use sluice_pipeline::config::pii::{Action, ColumnRule};

use super::table;
use crate::error::{Error, Result, delta};

/// The list of columns with statistics.
pub const STATS_COLUMNS: &str = "delta.dataSkippingStatsColumns";
/// How many leading columns get statistics when there is no list: always 0 here.
pub const NUM_INDEXED_COLS: &str = "delta.dataSkippingNumIndexedCols";

/// Lineage and bookkeeping columns sluice adds: their values describe where a row came
/// from, never who it is about. `_kafka_key` is not one of them.
pub const BOOKKEEPING: [&str; 13] = [
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_kafka_timestamp",
    "_ingested_at",
    "_ingest_date",
    "_cdc_op",
    "_cdc_sequence",
    "_cdc_offset",
    "_cdc_source_ts",
    "_valid_from",
    "_valid_to",
    "_is_current",
];

/// Whether the policy's action leaves a value that may be seen without the row.
fn replaces(action: Action) -> bool {
    matches!(
        action,
        Action::Mask
            | Action::MaskPartial
            | Action::Hash
            | Action::Tokenize
            | Action::EncryptFpe
            | Action::Generalize
    )
}

/// What the policy says about each column, for statistics.
#[derive(Debug, Clone, Default)]
pub struct StatsPolicy {
    /// Bronze table → column path (as stored in bronze) → whether its values are replaced.
    bronze: BTreeMap<String, BTreeMap<String, bool>>,
    /// Silver table → column path of the row → whether its values are replaced.
    silver: BTreeMap<String, BTreeMap<String, bool>>,
    /// Leaf name → whether every rule naming a column of that name replaces it (for
    /// tables derived by SQL, whose columns are known by name only).
    names: BTreeMap<String, bool>,
    /// Paths and leaf names of `[erasure]` subject columns.
    subjects: BTreeSet<String>,
}

/// The kind of table whose statistics are decided.
#[derive(Debug, Clone, Copy)]
pub enum TableKind<'a> {
    /// `bronze/<name>`.
    Bronze(&'a str),
    /// `silver/<name>`, its SCD2 history and its tombstones.
    Silver(&'a str),
    /// A table derived by SQL (gold): columns judged by name.
    Derived,
    /// An internal table of fixed shape: these columns only.
    Only(&'a [&'a str]),
    /// No statistics at all (the subject key store).
    Nothing,
}

/// One leaf column of a schema: its path, and whether it lies inside a list or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub path: Vec<String>,
    pub repeated: bool,
}

impl Leaf {
    fn dotted(&self) -> String {
        self.path.join(".")
    }
    fn name(&self) -> &str {
        self.path.last().map_or("", String::as_str)
    }
}

/// Every leaf column of `schema`, as Parquet stores them (list and map children by the
/// names their Arrow fields carry).
pub fn leaves(schema: &Schema) -> Vec<Leaf> {
    fn walk(dt: &DataType, path: &mut Vec<String>, repeated: bool, out: &mut Vec<Leaf>) {
        match dt {
            DataType::Struct(fields) => {
                for f in fields {
                    path.push(f.name().clone());
                    walk(f.data_type(), path, repeated, out);
                    path.pop();
                }
            }
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::FixedSizeList(f, _)
            | DataType::Map(f, _) => {
                path.push(f.name().clone());
                walk(f.data_type(), path, true, out);
                path.pop();
            }
            _ => out.push(Leaf {
                path: path.clone(),
                repeated,
            }),
        }
    }
    let mut out = Vec::new();
    for f in schema.fields() {
        let mut path = vec![f.name().clone()];
        walk(f.data_type(), &mut path, false, &mut out);
    }
    out
}

/// A name usable in the statistics list as it is, in every reader.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The statistics list for `schema` given which leaves are `safe`: leaf names whose
/// every column is safe, and dotted paths of safe nested leaves.
pub fn columns(schema: &Schema, safe: impl Fn(&Leaf) -> bool) -> Vec<String> {
    let all = leaves(schema);
    let mut by_name: BTreeMap<&str, bool> = BTreeMap::new();
    for leaf in &all {
        let ok = !leaf.repeated && leaf.path.iter().all(|p| plain(p)) && safe(leaf);
        by_name
            .entry(leaf.name())
            .and_modify(|e| *e &= ok)
            .or_insert(ok);
    }
    let mut out: Vec<String> = Vec::new();
    for leaf in &all {
        if by_name.get(leaf.name()) != Some(&true) {
            continue;
        }
        let name = leaf.name().to_string();
        if !out.contains(&name) {
            out.push(name);
        }
        if leaf.path.len() > 1 {
            let dotted = leaf.dotted();
            // delta-rs compares entries with leaf names: a dotted entry must not be one.
            if !by_name.contains_key(dotted.as_str()) && !out.contains(&dotted) {
                out.push(dotted);
            }
        }
    }
    out
}

/// The table properties giving statistics to exactly `columns`.
pub fn properties_for(columns: &[String]) -> Vec<(String, String)> {
    let mut out = vec![(NUM_INDEXED_COLS.to_string(), "0".to_string())];
    if !columns.is_empty() {
        out.push((STATS_COLUMNS.to_string(), columns.join(",")));
    }
    out
}

/// Strip the image prefix of a change-event column: `after.email` → `email`.
fn row_path(path: &str) -> Option<&str> {
    ["after.", "before."]
        .iter()
        .find_map(|p| path.strip_prefix(p))
        .or_else(|| (!path.starts_with("source.")).then_some(path))
}

/// The rule covering `path` in `rules`: its own, or the nearest enclosing struct's.
fn covering(rules: &BTreeMap<String, bool>, path: &str) -> Option<bool> {
    let mut at = path;
    loop {
        if let Some(r) = rules.get(at) {
            return Some(*r);
        }
        at = &at[..at.rfind('.')?];
    }
}

impl StatsPolicy {
    /// The policy and subject columns of `config`.
    pub fn from_config(config: &Config) -> Self {
        let rules = config.pii_rules();
        let flags = |r: &BTreeMap<String, ColumnRule>| -> BTreeMap<String, bool> {
            r.iter()
                .map(|(p, rule)| (p.clone(), replaces(rule.action)))
                .collect()
        };
        let bronze: BTreeMap<String, BTreeMap<String, bool>> =
            rules.iter().map(|(t, r)| (t.clone(), flags(r))).collect();
        let routes = config.bronze_tables();
        let mut silver: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        for (name, t) in &config.silver.tables {
            let row = silver.entry(name.clone()).or_default();
            for topic in &t.topics {
                let Some(source) = routes.get(topic).and_then(|b| bronze.get(b)) else {
                    continue;
                };
                for (path, ok) in source {
                    if let Some(p) = row_path(path) {
                        row.entry(p.to_string())
                            .and_modify(|e| *e &= *ok)
                            .or_insert(*ok);
                    }
                }
            }
        }
        let mut names: BTreeMap<String, bool> = BTreeMap::new();
        for r in bronze.values() {
            for (path, ok) in r {
                let leaf = path.rsplit('.').next().unwrap_or(path).to_string();
                names.entry(leaf).and_modify(|e| *e &= *ok).or_insert(*ok);
            }
        }
        let e = &config.erasure;
        let mut subjects = BTreeSet::new();
        let listed = e.columns.iter().chain(
            e.tables
                .values()
                .flat_map(|t| t.columns.iter().flatten().chain(&t.contains)),
        );
        for c in listed {
            subjects.insert(c.clone());
            subjects.insert(c.rsplit('.').next().unwrap_or(c).to_string());
            if let Some(p) = row_path(c) {
                subjects.insert(p.to_string());
            }
        }
        Self {
            bronze,
            silver,
            names,
            subjects,
        }
    }

    /// Whether `leaf` of a table of `kind` may carry statistics.
    pub fn is_safe(&self, kind: TableKind<'_>, leaf: &Leaf) -> bool {
        let path = leaf.dotted();
        let top = leaf.path.first().map_or("", String::as_str);
        let bookkeeping = leaf.path.len() == 1 && BOOKKEEPING.contains(&top);
        let subject = self.subjects.contains(&path)
            || self.subjects.contains(leaf.name())
            || path == "_kafka_key";
        match kind {
            TableKind::Nothing => false,
            TableKind::Only(safe) => leaf.path.len() == 1 && safe.contains(&top),
            TableKind::Bronze(table) => {
                if bookkeeping {
                    return true;
                }
                match self.bronze.get(table) {
                    Some(rules) if !rules.is_empty() => covering(rules, &path).unwrap_or(false),
                    _ => !subject,
                }
            }
            TableKind::Silver(table) => {
                if bookkeeping {
                    return true;
                }
                let rules = self.silver.get(table);
                match rules.and_then(|r| covering(r, &path)) {
                    Some(replaced) => replaced,
                    None => !subject,
                }
            }
            TableKind::Derived => {
                if bookkeeping {
                    return true;
                }
                match self.names.get(leaf.name()) {
                    Some(replaced) => *replaced,
                    None => !subject,
                }
            }
        }
    }

    /// The statistics properties of a table of `kind` with `schema`.
    pub fn properties(&self, kind: TableKind<'_>, schema: &Schema) -> Vec<(String, String)> {
        properties_for(&columns(schema, |leaf| self.is_safe(kind, leaf)))
    }
}

/// The statistics properties of an internal table of fixed shape whose `safe` columns
/// (top-level) may carry statistics.
pub fn only(schema: &Schema, safe: &[&str]) -> Vec<(String, String)> {
    StatsPolicy::default().properties(TableKind::Only(safe), schema)
}

/// Whether `table`'s configuration already says what `wanted` says about statistics.
fn settled(table: &DeltaTable, wanted: &[(String, String)]) -> Result<bool> {
    let snapshot = table
        .snapshot()
        .map_err(delta("table", "reading snapshot"))?;
    let config = snapshot.metadata().configuration();
    let want = |k: &str| wanted.iter().find(|(w, _)| w == k).map(|(_, v)| v);
    Ok([STATS_COLUMNS, NUM_INDEXED_COLS]
        .iter()
        .all(|k| config.get(*k) == want(k)))
}

/// Bring `table`'s statistics settings (and any other property of `wanted`) in line
/// with `wanted` before its next write, in a commit of its own, with `schema` (the
/// table's, or a wider one the next write brings). Returns whether it committed.
pub async fn ensure(
    name: &str,
    t: &mut DeltaTable,
    wanted: &[(String, String)],
    schema: Option<&Schema>,
) -> Result<bool> {
    if !table::exists(t) {
        return Ok(false);
    }
    let mut last: Option<Error> = None;
    for attempt in 0..super::COMMIT_ATTEMPTS {
        if attempt > 0 {
            table::refresh(name, t).await?;
        }
        let others_settled = {
            let snapshot = t.snapshot().map_err(delta(name, "reading snapshot"))?;
            let config = snapshot.metadata().configuration();
            wanted.iter().all(|(k, v)| config.get(k) == Some(v))
        };
        let schema_settled = match schema {
            None => true,
            Some(s) => table::arrow_schema(name, t)?.fields() == s.fields(),
        };
        if settled(t, wanted)? && others_settled && schema_settled {
            return Ok(false);
        }
        let mut metadata = t
            .snapshot()
            .map_err(delta(name, "reading snapshot"))?
            .metadata()
            .clone();
        if let Some(schema) = schema {
            let kernel: deltalake::kernel::StructType = schema
                .try_into_kernel()
                .map_err(|e: arrow::error::ArrowError| Error::Arrow(e))?;
            metadata = metadata
                .with_schema(&kernel)
                .map_err(|e| delta(name, "evolving schema")(e.into()))?;
        }
        if !wanted.iter().any(|(k, _)| k == STATS_COLUMNS) {
            metadata = metadata
                .remove_config_key(STATS_COLUMNS)
                .map_err(|e| delta(name, &format!("removing {STATS_COLUMNS}"))(e.into()))?;
        }
        for (k, v) in wanted {
            metadata = metadata
                .add_config_key(k.clone(), v.clone())
                .map_err(|e| delta(name, &format!("setting {k}"))(e.into()))?;
        }
        let partition_by = t
            .snapshot()
            .map_err(delta(name, "reading snapshot"))?
            .metadata()
            .partition_columns()
            .to_vec();
        let actions = vec![deltalake::kernel::Action::Metadata(metadata)];
        let none = std::collections::BTreeMap::new();
        match table::commit(name, t, "sluice", actions, &none, &partition_by).await {
            Ok(_) => return Ok(true),
            Err(e) => {
                tracing::warn!(table = %name, attempt, error = %e, "property commit refused, retrying");
                last = Some(e);
            }
        }
    }
    Err(Error::CommitRetries {
        table: name.to_string(),
        attempts: super::COMMIT_ATTEMPTS,
        last: last.map(Box::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"customers\", \"events\"]\n\
             [silver.tables.customers]\ntopics = [\"customers\"]\nkey = [\"customer_id\"]\n\
             [erasure]\ncolumns = [\"customer_id\", \"after.customer_id\", \"holder\"]\n\
             [pii]\ndead_letters = \"raw\"\n[pii.keys.k]\nenv = \"K\"\n\
             [pii.tables.customers]\ncustomer_id = {{ action = \"tokenize\", key = \"k\" }}\n\
             notes = {{ action = \"redact\" }}\n\
             \"address.line1\" = {{ action = \"keep\", tag = \"direct_identifier\" }}\n\
             email = {{ action = \"hash\", key = \"k\" }}\n{extra}"
        ))
        .expect("config")
    }

    fn s(fields: Vec<Field>) -> Schema {
        Schema::new(fields)
    }

    fn text(n: &str) -> Field {
        Field::new(n, DataType::Utf8, true)
    }

    fn address() -> Field {
        Field::new(
            "address",
            DataType::Struct(vec![text("line1"), text("city")].into()),
            true,
        )
    }

    #[test]
    fn silver_keeps_statistics_on_pseudonyms_untagged_and_lineage_columns_only() {
        let p = StatsPolicy::from_config(&config(""));
        let schema = s(vec![
            text("customer_id"),
            text("email"),
            text("notes"),
            text("segment"),
            text("holder"),
            address(),
            Field::new("_cdc_sequence", DataType::Int64, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            text("odd name"),
        ]);
        let cols = columns(&schema, |l| p.is_safe(TableKind::Silver("customers"), l));
        assert_eq!(
            cols,
            vec![
                "customer_id",
                "email",
                "segment",
                "city",
                "address.city",
                "_cdc_sequence"
            ]
        );
    }

    #[test]
    fn a_leaf_name_is_listed_only_when_every_column_of_that_name_is_safe() {
        let p = StatsPolicy::from_config(&config(""));
        // `line1` is kept raw in `address`: the unrelated `shipping.line1` would share
        // delta-rs's leaf-name match, so neither is listed.
        let schema = s(vec![
            address(),
            Field::new(
                "shipping",
                DataType::Struct(vec![text("line1")].into()),
                true,
            ),
        ]);
        let cols = columns(&schema, |l| p.is_safe(TableKind::Silver("customers"), l));
        assert!(!cols.iter().any(|c| c.ends_with("line1")), "{cols:?}");
    }

    #[test]
    fn bronze_covered_by_the_policy_keeps_lineage_and_replaced_columns_only() {
        let p = StatsPolicy::from_config(&config(""));
        let after = Field::new(
            "after",
            DataType::Struct(vec![text("customer_id"), text("notes"), text("segment")].into()),
            true,
        );
        let schema = s(vec![
            after,
            Field::new("_kafka_offset", DataType::Int64, true),
            text("_kafka_key"),
        ]);
        let cols = columns(&schema, |l| p.is_safe(TableKind::Bronze("customers"), l));
        assert_eq!(
            cols,
            vec!["customer_id", "after.customer_id", "_kafka_offset"]
        );
        // A table the policy does not cover: everything but subjects and the raw key.
        let schema = s(vec![text("holder"), text("channel"), text("_kafka_key")]);
        let cols = columns(&schema, |l| p.is_safe(TableKind::Bronze("events"), l));
        assert_eq!(cols, vec!["channel"]);
    }

    /// Every `minValues`/`maxValues` key of every add action in the table's log.
    fn logged_stats(dir: &std::path::Path) -> (usize, Vec<String>) {
        let mut adds = 0;
        let mut keys = Vec::new();
        for e in std::fs::read_dir(dir.join("_delta_log")).expect("log") {
            let p = e.expect("entry").path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            for line in std::fs::read_to_string(&p).expect("read").lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("json");
                let Some(stats) = v["add"]["stats"].as_str() else {
                    continue;
                };
                adds += 1;
                let stats: serde_json::Value = serde_json::from_str(stats).expect("stats");
                fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
                    if let Some(o) = v.as_object() {
                        for (k, v) in o {
                            walk(&format!("{prefix}{k}."), v, out);
                        }
                    } else {
                        out.push(prefix.trim_end_matches('.').to_string());
                    }
                }
                walk("", &stats["minValues"], &mut keys);
                walk("", &stats["maxValues"], &mut keys);
            }
        }
        keys.sort();
        keys.dedup();
        (adds, keys)
    }

    #[tokio::test]
    async fn delta_rs_writes_statistics_for_the_listed_columns_only() {
        use arrow::array::{ArrayRef, RecordBatch, StringArray, StructArray};
        let p = StatsPolicy::from_config(&config(""));
        let after = StructArray::from(vec![
            (
                Arc::new(text("customer_id")),
                Arc::new(StringArray::from(vec!["tok_a", "tok_b"])) as ArrayRef,
            ),
            (
                Arc::new(text("notes")),
                Arc::new(StringArray::from(vec!["call Jane", "call John"])) as ArrayRef,
            ),
        ]);
        let batch = RecordBatch::try_from_iter([
            ("after", Arc::new(after) as ArrayRef),
            (
                "notes",
                Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef,
            ),
        ])
        .expect("batch");
        let dir = tempfile::tempdir().expect("dir");
        // Both of delta-rs's write paths: the record batch writer (sinks) and the
        // DataFusion operations (MERGE, DELETE, OPTIMIZE, gold's writes).
        for (i, kind) in [TableKind::Bronze("customers"), TableKind::Nothing]
            .into_iter()
            .enumerate()
        {
            let url = table::table_url(dir.path(), &format!("t{i}")).expect("url");
            let properties = p.properties(kind, &batch.schema());
            let t = table::create("t", &url, &batch.schema(), &[], &properties)
                .await
                .expect("create");
            let mut writer = deltalake::writer::RecordBatchWriter::for_table(&t).expect("writer");
            deltalake::writer::DeltaWriter::write(&mut writer, batch.clone())
                .await
                .expect("write");
            let adds = deltalake::writer::DeltaWriter::flush(&mut writer)
                .await
                .expect("flush");
            let mut t = t;
            table::commit(
                "t",
                &mut t,
                "p",
                adds.into_iter()
                    .map(deltalake::kernel::Action::Add)
                    .collect(),
                &BTreeMap::new(),
                &[],
            )
            .await
            .expect("commit");
            t.write(vec![batch.clone()]).await.expect("operation write");
            let (adds, keys) = logged_stats(&dir.path().join(format!("t{i}")));
            assert_eq!(adds, 2, "both writes logged");
            match kind {
                TableKind::Nothing => assert!(keys.is_empty(), "{keys:?}"),
                _ => assert_eq!(keys, vec!["after.customer_id"]),
            }
        }
    }

    #[test]
    fn derived_tables_judge_columns_by_name_and_the_key_store_has_none() {
        let p = StatsPolicy::from_config(&config(""));
        let schema = s(vec![
            text("customer_id"),
            text("notes"),
            text("line1"),
            text("day"),
        ]);
        assert_eq!(
            p.properties(TableKind::Derived, &schema),
            vec![
                (NUM_INDEXED_COLS.to_string(), "0".to_string()),
                (STATS_COLUMNS.to_string(), "customer_id,day".to_string())
            ]
        );
        assert_eq!(
            p.properties(TableKind::Nothing, &schema),
            vec![(NUM_INDEXED_COLS.to_string(), "0".to_string())]
        );
    }
}
