//! `sluice schedule`: run the configured jobs at their cron times until SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_jobs::JobContext;
use sluice_jobs::schedule::Scheduler;
use sluice_pipeline::config::Config;

use crate::output::Format;

/// Run the jobs of `config.schedule` at their times by the context's clock until `stop` is
/// set. A failed run is logged and recorded in `sluice.job_runs`; the scheduler goes on.
pub async fn schedule(
    config: &Config,
    cx: &JobContext,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    if config.schedule.is_empty() {
        anyhow::bail!(
            "nothing to schedule: add a [schedule] section, e.g. maintain = \"0 3 * * *\""
        );
    }
    let mut scheduler = Scheduler::new(&config.schedule, cx.now())?;
    tracing::info!(jobs = ?config.schedule, next = ?scheduler.next_due(), "scheduler started");
    while !stop.load(Ordering::Relaxed) {
        for job in scheduler.due(cx.now()) {
            tracing::info!(job = %job, "job due");
            let result = match job.as_str() {
                "maintain" => crate::job::maintain(config, cx, &[], Format::Table).await,
                "snapshot" => crate::job::snapshot(config, cx, Format::Table).await,
                "anonymise" => crate::job::anonymise(config, cx, &[], Format::Table).await,
                "gold" => crate::job::gold(config, cx, &[], Format::Table).await,
                other => Err(anyhow::anyhow!("no job '{other}'")),
            };
            match result {
                Ok(()) => tracing::info!(job = %job, next = ?scheduler.next_due(), "job done"),
                Err(e) => tracing::error!(job = %job, error = %crate::error_text(&e), "job failed"),
            }
        }
        // Wake at the next due time, or every second to notice a stop.
        let wait = scheduler
            .next_due()
            .and_then(|t| (t - cx.now()).to_std().ok())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(1));
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
    tracing::info!("scheduler stopped");
    Ok(())
}
