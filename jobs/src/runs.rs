//! `_sluice/job_runs`: one row per job run, tamper-evident. Each row carries the SHA-256
//! of the previous row (`prev_hash`) and its own (`hash`, over `prev_hash` and every
//! other field), so changing, removing or reordering a row breaks the chain, which
//! `sluice audit verify` checks. Appends take the lake's `job_runs` lock, so two jobs
//! never chain onto the same row.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};
use sluice_connectors::delta::table;
use sluice_pipeline::lake::Lake;

use crate::error::Result;

/// Where the job runs are recorded under the lake.
pub const JOB_RUNS: &str = "_sluice/job_runs";
/// Columns of `sluice.job_runs` with file statistics: all but the outcome's free text.
const STATS_COLUMNS: [&str; 8] = [
    "run_id",
    "job",
    "args_hash",
    "started_at",
    "ended_at",
    "tables",
    "prev_hash",
    "hash",
];
/// `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub run_id: String,
    pub job: String,
    /// SHA-256 of the job's arguments (never the arguments: they may name subjects).
    pub args_hash: String,
    pub started_at: i64,
    pub ended_at: i64,
    /// `ok` or `failed: <reason>`.
    pub outcome: String,
    /// The tables touched, with the versions written: `bronze.x@12, silver.y@3`.
    pub tables: String,
    pub prev_hash: String,
    pub hash: String,
}

impl JobRun {
    /// The hash of this row given `prev_hash` and its fields.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.prev_hash.as_str(),
            &self.run_id,
            &self.job,
            &self.args_hash,
            &self.started_at.to_string(),
            &self.ended_at.to_string(),
            &self.outcome,
            &self.tables,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// SHA-256 of the arguments of a run, hex.
pub fn args_hash(args: &[String]) -> String {
    let mut h = Sha256::new();
    for a in args {
        h.update((a.len() as u64).to_be_bytes());
        h.update(a.as_bytes());
    }
    hex::encode(h.finalize())
}

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        Field::new("job", DataType::Utf8, true),
        Field::new("args_hash", DataType::Utf8, true),
        Field::new("started_at", ts.clone(), true),
        Field::new("ended_at", ts, true),
        Field::new("outcome", DataType::Utf8, true),
        Field::new("tables", DataType::Utf8, true),
        Field::new("prev_hash", DataType::Utf8, true),
        Field::new("hash", DataType::Utf8, true),
    ]))
}

/// Every recorded run, in chain order.
pub async fn read(lake: &Lake) -> Result<Vec<JobRun>> {
    let url = table::lake_url(lake, JOB_RUNS)?;
    let t = table::open(JOB_RUNS, &url).await?;
    if !table::exists(&t) {
        return Ok(Vec::new());
    }
    let ctx = SessionContext::new();
    let provider = t.table_provider().await?;
    ctx.register_table("runs", provider)?;
    let batches = ctx
        .sql(
            "SELECT run_id, job, args_hash, CAST(started_at AS BIGINT), CAST(ended_at AS BIGINT), \
             outcome, tables, prev_hash, hash FROM runs",
        )
        .await?
        .collect()
        .await?;
    let mut runs = Vec::new();
    for b in batches {
        let text: Vec<StringArray> = [0, 1, 2, 5, 6, 7, 8]
            .iter()
            .map(|i| {
                arrow::compute::cast(b.column(*i), &DataType::Utf8)
                    .map(|a| a.as_string::<i32>().clone())
            })
            .collect::<std::result::Result<_, _>>()?;
        let started = b.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        let ended = b.column(4).as_primitive::<arrow::datatypes::Int64Type>();
        let s = |c: &StringArray, i: usize| {
            if c.is_valid(i) {
                c.value(i).to_string()
            } else {
                String::new()
            }
        };
        for i in 0..b.num_rows() {
            runs.push(JobRun {
                run_id: s(&text[0], i),
                job: s(&text[1], i),
                args_hash: s(&text[2], i),
                started_at: started.value(i),
                ended_at: ended.value(i),
                outcome: s(&text[3], i),
                tables: s(&text[4], i),
                prev_hash: s(&text[5], i),
                hash: s(&text[6], i),
            });
        }
    }
    Ok(order(runs))
}

/// Rows in chain order: from the genesis, each followed by the row naming its hash
/// (rows off the chain keep their time order at the end, where verification finds them).
fn order(mut runs: Vec<JobRun>) -> Vec<JobRun> {
    runs.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
    let mut out = Vec::with_capacity(runs.len());
    let mut prev = GENESIS.to_string();
    while let Some(i) = runs.iter().position(|r| r.prev_hash == prev) {
        let r = runs.remove(i);
        prev = r.hash.clone();
        out.push(r);
    }
    out.extend(runs);
    out
}

/// Check the chain; returns the number of runs, or what is wrong.
pub fn verify(runs: &[JobRun]) -> std::result::Result<usize, String> {
    let mut prev = GENESIS.to_string();
    for (i, r) in runs.iter().enumerate() {
        if r.prev_hash != prev {
            return Err(format!(
                "run {} ({} at row {i}) does not follow the previous run: the chain is broken (a run removed, reordered or inserted)",
                r.run_id, r.job
            ));
        }
        if r.compute_hash() != r.hash {
            return Err(format!(
                "run {} ({} at row {i}) was changed after it was recorded: its hash does not match its fields",
                r.run_id, r.job
            ));
        }
        prev = r.hash.clone();
    }
    Ok(runs.len())
}

/// Append `run` (its `prev_hash` and `hash` are set here) under the `job_runs` lock,
/// waiting for another job recording its own run.
pub async fn append(lake: &Lake, mut run: JobRun) -> Result<JobRun> {
    let lock =
        crate::lock::Lock::acquire_waiting(lake, "job_runs", std::time::Duration::from_secs(120))
            .await?;
    let runs = read(lake).await?;
    run.prev_hash = runs.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
    run.hash = run.compute_hash();
    let ts = |v: i64| Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"));
    let text = |v: &str| Arc::new(StringArray::from(vec![v]));
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            text(&run.run_id),
            text(&run.job),
            text(&run.args_hash),
            ts(run.started_at),
            ts(run.ended_at),
            text(&run.outcome),
            text(&run.tables),
            text(&run.prev_hash),
            text(&run.hash),
        ],
    )?;
    let url = table::lake_url(lake, JOB_RUNS)?;
    table::append_record(JOB_RUNS, &url, &schema(), batch, &STATS_COLUMNS).await?;
    lock.release().await;
    Ok(run)
}

/// A fresh run id: start time and process id.
pub fn run_id(job: &str, started_at: i64) -> String {
    format!("{job}-{started_at}-{}", std::process::id())
}

/// Where the lake's locks live.
pub fn locks_dir(lake: &Path) -> PathBuf {
    lake.join("_sluice/locks")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<JobRun> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|i| {
                let mut r = JobRun {
                    run_id: format!("r{i}"),
                    job: "maintain".into(),
                    args_hash: args_hash(&[format!("--table=t{i}")]),
                    started_at: i as i64,
                    ended_at: i as i64 + 1,
                    outcome: "ok".into(),
                    tables: format!("bronze.t@{i}"),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn the_chain_verifies_and_any_change_removal_or_reordering_breaks_it() {
        let runs = chain(4);
        assert_eq!(verify(&runs), Ok(4));
        let mut changed = runs.clone();
        changed[1].outcome = "failed: nothing".into();
        assert!(
            verify(&changed)
                .expect_err("changed")
                .contains("changed after")
        );
        let mut removed = runs.clone();
        removed.remove(2);
        assert!(
            verify(&removed)
                .expect_err("removed")
                .contains("chain is broken")
        );
        let mut swapped = runs.clone();
        swapped.swap(1, 2);
        assert!(verify(&swapped).is_err());
        // Reading puts rows back in chain order whatever order storage gives.
        let mut shuffled = runs.clone();
        shuffled.reverse();
        assert_eq!(order(shuffled), runs);
    }
}
