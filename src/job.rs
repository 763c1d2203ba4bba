//! `sluice job …` and `sluice audit verify`: batch jobs, each run recorded in the
//! tamper-evident `_sluice/job_runs`.

use std::path::Path;

use sluice_jobs::runs::{self, JobRun};
use sluice_pipeline::config::Config;

use crate::output::Format;

/// Record a run of `job` that started at `started_at` (microseconds) in `_sluice/job_runs`.
async fn record(
    lake: &Path,
    job: &str,
    args: &[String],
    started_at: i64,
    outcome: String,
    tables: String,
) -> anyhow::Result<JobRun> {
    Ok(runs::append(
        lake,
        JobRun {
            run_id: runs::run_id(job, started_at),
            job: job.into(),
            args_hash: runs::args_hash(args),
            started_at,
            ended_at: chrono::Utc::now().timestamp_micros(),
            outcome,
            tables,
            prev_hash: String::new(),
            hash: String::new(),
        },
    )
    .await?)
}

/// Run `sluice job maintain` and record it.
pub async fn maintain(
    config: &Config,
    lake: &Path,
    tables: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now().timestamp_micros();
    let result = sluice_jobs::maintain::maintain(lake, &config.maintenance, tables).await;
    let (outcome, touched) = match &result {
        Ok(reports) => (
            "ok".to_string(),
            reports
                .iter()
                .map(|r| format!("{}@{}", r.table, r.version_after))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Err(e) => (format!("failed: {e}"), String::new()),
    };
    let run = record(lake, "maintain", tables, started_at, outcome, touched).await?;
    let reports = result?;
    match format {
        Format::Json => println!("{}", serde_json::to_string(&reports)?),
        _ => {
            println!(
                "table\tversion\trows_deleted\tfiles_compacted\tfiles_written\tfiles_vacuumed\tcheckpoint"
            );
            for r in &reports {
                println!(
                    "{}\t{}→{}\t{}\t{}\t{}\t{}\t{}",
                    r.table,
                    r.version_before,
                    r.version_after,
                    r.rows_deleted,
                    r.files_compacted,
                    r.files_written,
                    r.files_vacuumed,
                    r.checkpoint
                );
            }
            eprintln!("sluice: recorded run {} in sluice.job_runs", run.run_id);
        }
    }
    Ok(())
}

/// Run `sluice job snapshot` and record it; fails when an invariant does not hold.
pub async fn snapshot(config: &Config, lake: &Path, format: Format) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now().timestamp_micros();
    let result = sluice_jobs::snapshot::snapshot(lake, &config.snapshot).await;
    let (outcome, pinned) = match &result {
        Ok(s) if s.holds() => ("ok".to_string(), pinned(s)),
        Ok(s) => {
            let failed: Vec<&str> = s
                .invariants
                .iter()
                .filter(|i| i.violations > 0)
                .map(|i| i.name.as_str())
                .collect();
            (
                format!("failed: invariants {}", failed.join(", ")),
                pinned(s),
            )
        }
        Err(e) => (format!("failed: {e}"), String::new()),
    };
    record(lake, "snapshot", &[], started_at, outcome, pinned).await?;
    let s = result?;
    match format {
        Format::Json => println!("{}", serde_json::to_string(&s)?),
        _ => {
            println!("table\tversion\trows\tchecksum");
            for t in &s.tables {
                println!("{}\t{}\t{}\t{}", t.table, t.version, t.rows, t.checksum);
            }
            for i in &s.invariants {
                println!("invariant {}: {} violations", i.name, i.violations);
            }
        }
    }
    let failed: Vec<String> = s
        .invariants
        .iter()
        .filter(|i| i.violations > 0)
        .map(|i| {
            format!(
                "{} ({} rows; first keys: {})",
                i.name,
                i.violations,
                i.keys.join(", ")
            )
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "snapshot {}: invariants failed: {}",
            s.snapshot_id,
            failed.join("; ")
        );
    }
    Ok(())
}

fn pinned(s: &sluice_jobs::snapshot::Snapshot) -> String {
    s.tables
        .iter()
        .map(|t| format!("{}@{}", t.table, t.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check the chain of `_sluice/job_runs`.
pub async fn verify(lake: &Path) -> anyhow::Result<()> {
    let all = runs::read(lake).await?;
    match runs::verify(&all) {
        Ok(n) => {
            println!("sluice.job_runs: {n} runs, chain intact");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("sluice.job_runs: {e}")),
    }
}
