//! `_sluice/job_runs`: one row per job run, tamper-evident. Each row carries the seal of
//! the previous row (`prev_hash`) and its own (`hash`, over `prev_hash` and every other
//! field), so changing, removing or reordering a row breaks the chain, which `sluice
//! audit verify` checks. Appends take the lake's `job_runs` lock, so two jobs never chain
//! onto the same row.
//!
//! With an audit key (`[audit] key_env`) a row is sealed with HMAC-SHA256 under it:
//! `hmac-sha256:<key id>:<hex>`. Someone who can write the lake but lacks the key can
//! recompute plain SHA-256 seals, not these. Without a key a row is sealed with SHA-256
//! (64 hex digits), as every row was before keys existed; such rows may only come first:
//! an unkeyed row after a keyed one was written without the key, and fails
//! verification. What no seal stored in the lake can show (the chain cut short, or
//! rewritten whole without keys) the exported head shows: `sluice audit head` prints the
//! last seal, and `sluice audit verify --head <seal>` requires the chain to hold it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::prelude::SessionContext;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use sluice_connectors::delta::table;
use sluice_pipeline::lake::Lake;

use crate::JobContext;
use crate::error::{Error, Result};

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
/// How a keyed seal begins.
const KEYED: &str = "hmac-sha256:";

/// The key sealing the chain.
#[derive(Clone)]
pub struct AuditKey {
    key: Vec<u8>,
    id: String,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("AuditKey").field("id", &self.id).finish()
    }
}

impl AuditKey {
    /// A key of any length (the configuration asks for 32 bytes or more).
    pub fn new(key: &[u8]) -> Self {
        let mut mac = Self::mac(key);
        mac.update(b"sluice.job_runs key id");
        let id = hex::encode(&mac.finalize().into_bytes()[..8]);
        Self {
            key: key.to_vec(),
            id,
        }
    }

    fn mac(key: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
    }

    /// A public name of the key (not derivable into it), recorded in each seal.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Whether a seal was made with a key.
pub fn is_keyed(seal: &str) -> bool {
    seal.starts_with(KEYED)
}

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
    /// What a seal covers: `prev_hash` and every field, each preceded by its length.
    fn sealed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
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
            out.extend((part.len() as u64).to_be_bytes());
            out.extend(part.as_bytes());
        }
        out
    }

    /// The unkeyed seal of this row: SHA-256, hex.
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.sealed_bytes()))
    }

    /// The seal of this row under `key`: `hmac-sha256:<key id>:<hex>`.
    pub fn compute_mac(&self, key: &AuditKey) -> String {
        let mut mac = AuditKey::mac(&key.key);
        mac.update(key.id.as_bytes());
        mac.update(&self.sealed_bytes());
        format!(
            "{KEYED}{}:{}",
            key.id,
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// The seal of this row: keyed when a key is given.
    pub fn seal(&self, key: Option<&AuditKey>) -> String {
        match key {
            Some(k) => self.compute_mac(k),
            None => self.compute_hash(),
        }
    }
}

/// What verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub runs: usize,
    /// Runs sealed with the key.
    pub keyed: usize,
    /// Runs sealed without a key (they come first: recorded before the key was set).
    pub unkeyed: usize,
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

/// Check the chain under `key`; what it holds, or what is wrong. A keyed row needs the
/// key to be checked; an unkeyed row may not follow a keyed one.
pub fn verify(runs: &[JobRun], key: Option<&AuditKey>) -> std::result::Result<Verified, String> {
    let mut prev = GENESIS.to_string();
    let mut found = Verified {
        runs: runs.len(),
        keyed: 0,
        unkeyed: 0,
    };
    for (i, r) in runs.iter().enumerate() {
        let at = format!("run {} ({} at row {i})", r.run_id, r.job);
        if r.prev_hash != prev {
            return Err(format!(
                "{at} does not follow the previous run: the chain is broken (a run removed, reordered or inserted)"
            ));
        }
        if let Some(rest) = r.hash.strip_prefix(KEYED) {
            let id = rest.split(':').next().unwrap_or_default();
            let Some(k) = key else {
                return Err(format!(
                    "{at} is sealed with an audit key (id {id}): set [audit] key_env to check the chain"
                ));
            };
            if id != k.id() {
                return Err(format!(
                    "{at} is sealed with another key (id {id}; the configured key's id is {})",
                    k.id()
                ));
            }
            if r.compute_mac(k) != r.hash {
                return Err(format!(
                    "{at} was changed after it was recorded: its seal does not match its fields under the key"
                ));
            }
            found.keyed += 1;
        } else {
            if found.keyed > 0 {
                return Err(format!(
                    "{at} is not sealed with the key though runs before it are: it was rewritten by someone without the key"
                ));
            }
            if r.compute_hash() != r.hash {
                return Err(format!(
                    "{at} was changed after it was recorded: its hash does not match its fields"
                ));
            }
            found.unkeyed += 1;
        }
        prev = r.hash.clone();
    }
    Ok(found)
}

/// Where the exported `head` is in the chain: the number of runs after it; what is
/// wrong when the chain does not hold it.
pub fn find_head(runs: &[JobRun], head: &str) -> std::result::Result<usize, String> {
    let head = head.trim();
    match runs.iter().position(|r| r.hash == head) {
        Some(i) => Ok(runs.len() - i - 1),
        None => Err(format!(
            "the exported head {head} is not in the chain: runs were removed or the chain was rewritten"
        )),
    }
}

/// Append `run` (its `prev_hash` and `hash` are set here) to the context's lake under the
/// `job_runs` lock, waiting for another job recording its own run, sealed with `key` when
/// given. Without a key, a chain already keyed is not extended.
pub async fn append(cx: &JobContext, mut run: JobRun, key: Option<&AuditKey>) -> Result<JobRun> {
    let lake = &cx.lake;
    let lock =
        crate::lock::Lock::acquire_waiting(cx, "job_runs", std::time::Duration::from_secs(120))
            .await?;
    let runs = read(lake).await?;
    if key.is_none() && runs.iter().any(|r| is_keyed(&r.hash)) {
        lock.release().await;
        return Err(Error::Invalid(
            "sluice.job_runs is sealed with an audit key: set [audit] key_env (and the key in its variable) to record this run".into(),
        ));
    }
    run.prev_hash = runs.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
    run.hash = run.seal(key);
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
    lake.join(crate::lock::LOCKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<JobRun> {
        sealed(n, None)
    }

    fn sealed(n: usize, key: Option<&AuditKey>) -> Vec<JobRun> {
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
                r.hash = r.seal(key);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    /// The chain from row `from` on, rewritten as someone without the key would: the
    /// change made, every later seal recomputed unkeyed.
    fn rewritten(runs: &[JobRun], from: usize) -> Vec<JobRun> {
        let mut out = runs.to_vec();
        out[from].outcome = "ok".into();
        for i in from..out.len() {
            out[i].prev_hash = if i == 0 {
                GENESIS.to_string()
            } else {
                out[i - 1].hash.clone()
            };
            out[i].hash = out[i].compute_hash();
        }
        out
    }

    #[test]
    fn a_keyed_chain_detects_rows_resealed_without_the_key() {
        let key = AuditKey::new(&[7u8; 32]);
        let runs = sealed(4, Some(&key));
        assert_eq!(
            verify(&runs, Some(&key)),
            Ok(Verified {
                runs: 4,
                keyed: 4,
                unkeyed: 0
            })
        );
        assert!(format!("{key:?}").contains(key.id()) && !format!("{key:?}").contains("7, 7"));
        // Rewritten from row 2 with recomputed SHA-256 seals: the chain links, but the key
        // shows it.
        let forged = rewritten(&runs, 2);
        assert!(verify(&forged, None).is_err(), "keyed rows need the key");
        let e = verify(&forged, Some(&key)).expect_err("rewritten");
        assert!(e.contains("r2") && e.contains("without the key"), "{e}");
        // Rewritten whole, every seal unkeyed: it links and hashes; only the exported head
        // (the last keyed seal) shows it.
        let whole = rewritten(&runs, 0);
        assert!(verify(&whole, Some(&key)).is_ok());
        let head = runs.last().map(|r| r.hash.clone()).unwrap_or_default();
        assert_eq!(find_head(&runs, &head), Ok(0));
        assert!(find_head(&whole, &head).is_err());
        // A seal made with another key, or a field changed under a keyed seal.
        let other = AuditKey::new(&[8u8; 32]);
        let e = verify(&sealed(2, Some(&other)), Some(&key)).expect_err("another key");
        assert!(e.contains("another key"), "{e}");
        let mut changed = runs.clone();
        changed[3].tables = "bronze.t@99".into();
        assert!(
            verify(&changed, Some(&key))
                .expect_err("changed")
                .contains("changed after")
        );
        // Unkeyed runs first (before the key was configured), then keyed ones: fine.
        let mut mixed = chain(2);
        let mut prev = mixed[1].hash.clone();
        for mut r in sealed(2, Some(&key)) {
            r.prev_hash = prev.clone();
            r.hash = r.compute_mac(&key);
            prev = r.hash.clone();
            mixed.push(r);
        }
        assert_eq!(
            verify(&mixed, Some(&key)),
            Ok(Verified {
                runs: 4,
                keyed: 2,
                unkeyed: 2
            })
        );
        // Cut short: still a chain; the head shows what is missing.
        let head = mixed.last().map(|r| r.hash.clone()).unwrap_or_default();
        assert!(find_head(&mixed[..3], &head).is_err());
    }

    #[test]
    fn the_chain_verifies_and_any_change_removal_or_reordering_breaks_it() {
        let runs = chain(4);
        assert_eq!(verify(&runs, None).map(|v| v.runs), Ok(4));
        let mut changed = runs.clone();
        changed[1].outcome = "failed: nothing".into();
        assert!(
            verify(&changed, None)
                .expect_err("changed")
                .contains("changed after")
        );
        let mut removed = runs.clone();
        removed.remove(2);
        assert!(
            verify(&removed, None)
                .expect_err("removed")
                .contains("chain is broken")
        );
        let mut swapped = runs.clone();
        swapped.swap(1, 2);
        assert!(verify(&swapped, None).is_err());
        // Reading puts rows back in chain order whatever order storage gives.
        let mut shuffled = runs.clone();
        shuffled.reverse();
        assert_eq!(order(shuffled), runs);
    }
}
