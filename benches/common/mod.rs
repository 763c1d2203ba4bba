//! What the benchmarks that write a lake directly share: pseudonymous customer ids as the
//! pipeline writes them, and one-commit table writes.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::RecordBatch;
use deltalake::kernel::Action;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use sluice_connectors::delta::table;
use sluice_transforms::tokenize::token;

const KEY: &[u8] = b"benchmark key of 32 bytes.......";

/// The pseudonym of customer `i` (`tok_pseudo_…`).
pub fn customer(i: usize) -> String {
    token("pseudo", KEY, format!("C{i:07}").as_bytes())
}

/// Write `batch` to the table at `relative` (created with `partition_by`), one commit.
pub async fn write(lake: &Path, relative: &str, batch: RecordBatch, partition_by: &[String]) {
    let url = table::table_url(lake, relative).expect("url");
    let mut t = table::create(relative, &url, &batch.schema(), partition_by, &[])
        .await
        .expect("create");
    let mut writer = RecordBatchWriter::for_table(&t)
        .expect("writer")
        .with_target_file_size(1 << 30);
    writer.write(batch).await.expect("write");
    let adds = writer.flush().await.expect("flush");
    let actions = adds.into_iter().map(Action::Add).collect();
    table::commit(relative, &mut t, "fill", actions, &BTreeMap::new(), &[])
        .await
        .expect("commit");
}

/// The sizes `--rows a,b,…` asks for (`default` without it).
pub fn sizes(args: &[String], default: &str) -> Vec<usize> {
    args.iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str)
        .split(',')
        .filter_map(|r| r.parse().ok())
        .collect()
}
