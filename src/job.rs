//! `sluice job …` and `sluice audit verify`: batch jobs, each run recorded in the
//! tamper-evident `_sluice/job_runs`.

use std::path::Path;

use sluice_jobs::runs::{self, JobRun};
use sluice_pipeline::config::Config;

use crate::output::Format;

/// Run `sluice job maintain` and record it.
pub async fn maintain(
    config: &Config,
    lake: &Path,
    tables: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now().timestamp_micros();
    let mut args = vec!["maintain".to_string()];
    args.extend(tables.iter().cloned());
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
    let run = runs::append(
        lake,
        JobRun {
            run_id: runs::run_id("maintain", started_at),
            job: "maintain".into(),
            args_hash: runs::args_hash(&args),
            started_at,
            ended_at: chrono::Utc::now().timestamp_micros(),
            outcome,
            tables: touched,
            prev_hash: String::new(),
            hash: String::new(),
        },
    )
    .await?;
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
