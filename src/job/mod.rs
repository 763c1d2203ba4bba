//! `sluice job …` and `sluice audit verify`: batch jobs, each run recorded in the
//! tamper-evident `_sluice/job_runs`. Each job runs in a [`JobContext`]: the lake and the
//! clock (the system's) every time of the run is read from.

use sluice_connectors::delta::stats::StatsPolicy;
use sluice_jobs::JobContext;
use sluice_jobs::runs::{self, JobRun};
use sluice_pipeline::config::Config;
use sluice_pipeline::lake::Lake;

use crate::output::Format;

mod erase;
pub use self::erase::{
    check_request_id, check_subjects, erase, erase_requests, erase_verify, find_subjects, subjects,
};

/// The audit key of `[audit]`, if one is configured.
pub fn audit_key(config: &Config) -> anyhow::Result<Option<runs::AuditKey>> {
    let key = config.audit.key().map_err(|p| anyhow::anyhow!("{p}"))?;
    Ok(key.map(|k| runs::AuditKey::new(&k)))
}

/// Record a run of `job` that started at `started_at` (microseconds) and ends now in
/// `_sluice/job_runs`, sealed with the audit key when one is configured.
async fn record(
    config: &Config,
    cx: &JobContext,
    job: &str,
    args: &[String],
    started_at: i64,
    outcome: String,
    tables: String,
) -> anyhow::Result<JobRun> {
    let key = audit_key(config)?;
    Ok(runs::append(
        cx,
        JobRun {
            run_id: runs::run_id(job, started_at),
            job: job.into(),
            args_hash: runs::args_hash(args),
            started_at,
            ended_at: cx.now().timestamp_micros(),
            outcome,
            tables,
            prev_hash: String::new(),
            hash: String::new(),
        },
        key.as_ref(),
    )
    .await?)
}

/// A run's outcome and the tables it wrote (`table@version`), for `sluice.job_runs`.
fn outcome<T, E: std::error::Error>(
    result: &Result<Vec<T>, E>,
    written: impl Fn(&T) -> String,
) -> (String, String) {
    match result {
        Ok(items) => (
            "ok".to_string(),
            items.iter().map(written).collect::<Vec<_>>().join(", "),
        ),
        Err(e) => {
            // The error and its causes, each once (a cause already at the end of the text
            // is not repeated).
            let mut text = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                let said = c.to_string();
                if !said.is_empty() && !text.ends_with(&said) {
                    text.push_str(": ");
                    text.push_str(&said);
                }
                cause = c.source();
            }
            (format!("failed: {text}"), String::new())
        }
    }
}

/// Run `sluice job maintain` and record it.
pub async fn maintain(
    config: &Config,
    cx: &JobContext,
    tables: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let started_at = cx.now().timestamp_micros();
    let result = sluice_jobs::maintain::maintain(cx, &config.maintenance, tables).await;
    let (outcome, touched) = outcome(&result, |r| format!("{}@{}", r.table, r.version_after));
    let run = record(config, cx, "maintain", tables, started_at, outcome, touched).await?;
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
pub async fn snapshot(config: &Config, cx: &JobContext, format: Format) -> anyhow::Result<()> {
    let started_at = cx.now().timestamp_micros();
    let keys = config.snapshot.keys(&config.silver);
    let result = sluice_jobs::snapshot::snapshot(cx, &config.snapshot, &keys).await;
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
    record(config, cx, "snapshot", &[], started_at, outcome, pinned).await?;
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
            for d in &s.diffs {
                match &d.unavailable {
                    Some(why) => println!("since {}: {}: {why}", d.previous_snapshot, d.table),
                    None => println!(
                        "since {}: {} {}→{}: {} added, {} changed, {} removed",
                        d.previous_snapshot,
                        d.table,
                        d.previous_version,
                        d.version,
                        d.rows_added,
                        d.rows_changed
                            .map_or_else(|| "-".to_string(), |n| n.to_string()),
                        d.rows_removed
                    ),
                }
            }
            if let Some(m) = &s.manifest {
                println!("exported: {}", m.display());
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

/// Check the chain of `_sluice/job_runs` (with the audit key when one is configured),
/// and that it holds `head`, a seal exported earlier by `sluice audit head`.
pub async fn verify(config: &Config, lake: &Lake, head: Option<&str>) -> anyhow::Result<()> {
    let key = audit_key(config)?;
    let all = runs::read(lake).await?;
    let found =
        runs::verify(&all, key.as_ref()).map_err(|e| anyhow::anyhow!("sluice.job_runs: {e}"))?;
    let after = match head {
        Some(h) => {
            Some(runs::find_head(&all, h).map_err(|e| anyhow::anyhow!("sluice.job_runs: {e}"))?)
        }
        None => None,
    };
    // With the key set, a chain none of whose runs bears it vouches for nothing: it may
    // have been rewritten whole (or cut back to its unkeyed start) by anyone who can write
    // the lake. Only an exported head can vouch for it.
    if key.is_some() && found.keyed == 0 && after.is_none() {
        anyhow::bail!(
            "sluice.job_runs: {} runs, none sealed with the audit key: no job has run since [audit] key_env was set, or the chain was rewritten, cut back or removed by someone without the key; run a job to seal the chain, or give --head with a head exported earlier",
            found.runs
        );
    }
    let mut line = format!("sluice.job_runs: {} runs, chain intact", found.runs);
    if found.keyed > 0 {
        line.push_str(&format!("; {} sealed with the audit key", found.keyed));
    }
    if found.unkeyed > 0 && (key.is_some() || found.keyed > 0) {
        line.push_str(&format!(
            "; the first {} unkeyed (recorded before [audit] key_env was set, or rewritten whole by someone without the key: only an exported head vouches for them)",
            found.unkeyed
        ));
    }
    match after {
        Some(after) => line.push_str(&format!(
            "; the exported head is there, {after} run(s) after it"
        )),
        // Runs cut off the end of a keyed chain leave a chain that verifies.
        None if key.is_some() => line.push_str(
            "; runs removed from its end would not show without --head (an exported head)",
        ),
        None => {}
    }
    println!("{line}");
    Ok(())
}

/// Print the chain's head (its last seal), to keep outside the lake for `sluice audit
/// verify --head`.
pub async fn head(lake: &Lake, format: Format) -> anyhow::Result<()> {
    let all = runs::read(lake).await?;
    let last = all.last();
    let seal = last.map_or(runs::GENESIS, |r| r.hash.as_str());
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "runs": all.len(),
                "run_id": last.map(|r| r.run_id.as_str()),
                "head": seal,
                "keyed": runs::is_keyed(seal),
            })
        ),
        _ => println!("{seal}"),
    }
    Ok(())
}

/// Run `sluice job anonymise` and record it; fails when a publication is refused.
pub async fn anonymise(
    config: &Config,
    cx: &JobContext,
    tables: &[String],
    format: Format,
) -> anyhow::Result<()> {
    if config.anonymise.tables.is_empty() && config.anonymise.publish.is_empty() {
        anyhow::bail!("[anonymise] has no tables and no publish checks: nothing to do");
    }
    let started = cx.now();
    let result = sluice_jobs::anonymise::anonymise(cx, &config.anonymise, tables).await;
    let (outcome, touched) = match &result {
        Ok(r) => {
            let refused: Vec<&str> = r.refused().iter().map(|p| p.table.as_str()).collect();
            let outcome = if refused.is_empty() {
                "ok".to_string()
            } else {
                format!("refused: {}", refused.join(", "))
            };
            let touched = r
                .tables
                .iter()
                .filter(|t| t.version_after != t.version_before)
                .map(|t| format!("{}@{}", t.table, t.version_after))
                .collect::<Vec<_>>()
                .join(", ");
            (outcome, touched)
        }
        Err(e) => (format!("failed: {e}"), String::new()),
    };
    record(
        config,
        cx,
        "anonymise",
        tables,
        started.timestamp_micros(),
        outcome,
        touched,
    )
    .await?;
    let r = result?;
    match format {
        Format::Json => println!("{}", serde_json::to_string(&r)?),
        _ => {
            println!(
                "table\tcutoff\tversion\trows_anonymised\tfiles_rewritten\tfiles_purged\tlog_entries_purged"
            );
            for t in &r.tables {
                println!(
                    "{}\t{}\t{}→{}\t{}\t{}\t{}\t{}",
                    t.table,
                    t.cutoff,
                    t.version_before,
                    t.version_after,
                    t.rows_anonymised,
                    t.files_rewritten,
                    t.files_purged,
                    t.logs_purged
                );
            }
            for p in &r.publications {
                println!(
                    "publish {} (version {}): {} rows in {} groups of ({}); smallest group {}, k = {}: {}",
                    p.table,
                    p.version,
                    p.rows,
                    p.groups,
                    p.quasi_identifiers.join(", "),
                    p.smallest_group,
                    p.k,
                    match (&p.published_to, p.refused) {
                        (_, true) => "refused".to_string(),
                        (Some(to), false) => format!("written to {}", to.display()),
                        (None, false) => "passes".to_string(),
                    }
                );
            }
        }
    }
    let refused: Vec<String> = r
        .refused()
        .iter()
        .map(|p| {
            format!(
                "{}: smallest group {} < k = {} ({} groups, {} rows below k)",
                p.table, p.smallest_group, p.k, p.groups_below_k, p.rows_below_k
            )
        })
        .collect();
    if !refused.is_empty() {
        anyhow::bail!("refusing to publish {}", refused.join("; "));
    }
    Ok(())
}

/// Run `sluice job gold` and record it.
pub async fn gold(
    config: &Config,
    cx: &JobContext,
    tables: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let started_at = cx.now().timestamp_micros();
    let result = sluice_jobs::gold::gold(
        cx,
        &config.sql.gold_dir,
        &config.sql.views_dir,
        tables,
        &StatsPolicy::from_config(config),
    )
    .await;
    let (outcome, touched) = outcome(&result, |t| format!("{}@{}", t.table, t.version));
    record(config, cx, "gold", tables, started_at, outcome, touched).await?;
    let built = result?;
    match format {
        Format::Json => println!("{}", serde_json::to_string(&built)?),
        _ => {
            println!("table\tversion\trows\tmode\tdefinition_sha256");
            for t in &built {
                let mode = match &t.from_watermark {
                    Some(w) => format!("{} from {w}", t.mode),
                    None => t.mode.clone(),
                };
                println!(
                    "{}\t{}\t{}\t{mode}\t{}",
                    t.table, t.version, t.rows, t.definition_sha256
                );
            }
        }
    }
    Ok(())
}
