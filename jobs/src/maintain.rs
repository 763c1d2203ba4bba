//! `sluice job maintain`: per table of the lake, retention deletes, compaction to a target
//! file size, vacuum of files no longer referenced (after a retention window), and a
//! checkpoint with expired log files removed. Each table is locked while it is maintained;
//! the pipeline may keep writing (compaction commits are conflict-checked by delta-rs).
//! Works on a local lake and on an object store alike.

use std::num::NonZeroU64;

use serde::Serialize;
use sluice_connectors::delta::table;
use sluice_pipeline::config::maintenance::{Maintenance, MaintenanceConfig};
use sluice_pipeline::lake::Lake;
use sluice_sql::find_tables_in;

use crate::error::{Error, Result};
use crate::lock::{Lock, table_lock};
use crate::version;

/// How long maintenance waits for an erasure of a table to finish before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// What maintenance did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    pub table: String,
    pub version_before: i64,
    pub version_after: i64,
    pub rows_deleted: u64,
    pub files_compacted: u64,
    pub files_written: u64,
    pub files_vacuumed: u64,
    pub checkpoint: bool,
    pub logs_removed: u64,
}

/// Maintain every table of `lake` (or those named in `only`, as `layer.name`).
pub async fn maintain(
    lake: &Lake,
    config: &MaintenanceConfig,
    only: &[String],
) -> Result<Vec<TableReport>> {
    let mut reports = Vec::new();
    let tables = find_tables_in(lake).await?;
    for t in tables {
        let name = t.qualified();
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        // The job's own audit table is left alone while this job appends to it.
        if name == "sluice.job_runs" {
            continue;
        }
        // Another maintenance run is refused; an erasure or anonymisation of the table
        // finishes first.
        let lock = Lock::acquire_in(lake, &format!("maintain.{name}")).await?;
        let rewriting = Lock::acquire_waiting(lake, &table_lock(&name), LOCK_WAIT).await?;
        let settings = config.for_table(&name);
        let report = maintain_table(&t.url, &name, settings).await?;
        rewriting.release().await;
        lock.release().await;
        tracing::info!(table = %name, version = report.version_after, compacted = report.files_compacted, vacuumed = report.files_vacuumed, deleted = report.rows_deleted, "maintained");
        reports.push(report);
    }
    for name in only {
        if !reports.iter().any(|r| &r.table == name) {
            return Err(Error::NoTable {
                table: name.clone(),
            });
        }
    }
    Ok(reports)
}

async fn maintain_table(url: &url::Url, name: &str, m: Maintenance) -> Result<TableReport> {
    let mut t = table::open(name, url).await?;
    let mut report = TableReport {
        table: name.to_string(),
        version_before: version(&t),
        ..Default::default()
    };
    let has_ingest_date = table::arrow_schema(name, &t)?
        .field_with_name("_ingest_date")
        .is_ok();
    if let Some(days) = m.retention_days
        && has_ingest_date
    {
        let cutoff = chrono::Utc::now().date_naive() - chrono::Duration::days(i64::from(days));
        let (next, metrics) = t
            .delete()
            .with_predicate(format!("_ingest_date < '{cutoff}'"))
            .await
            .map_err(Error::delta(name))?;
        t = next;
        report.rows_deleted = metrics.num_deleted_rows.unwrap_or(0) as u64;
    }
    let target = NonZeroU64::new(m.target_file_size_bytes).unwrap_or(NonZeroU64::MIN);
    let (next, metrics) = t
        .optimize()
        .with_target_size(target)
        .await
        .map_err(Error::delta(name))?;
    t = next;
    report.files_compacted = metrics.num_files_removed;
    report.files_written = metrics.num_files_added;
    let retention = chrono::Duration::hours(m.vacuum_retention_hours as i64);
    let (next, metrics) = t
        .vacuum()
        .with_retention_period(retention)
        // The window is the config's decision; delta-rs's 7-day floor would override it.
        .with_enforce_retention_duration(false)
        .await
        .map_err(Error::delta(name))?;
    t = next;
    report.files_vacuumed = metrics.files_deleted.len() as u64;
    if m.checkpoint {
        deltalake::protocol::checkpoints::create_checkpoint(&t, None)
            .await
            .map_err(Error::delta(name))?;
        report.checkpoint = true;
        report.logs_removed = deltalake::protocol::checkpoints::cleanup_metadata(&t, None)
            .await
            .map_err(Error::delta(name))? as u64;
    }
    report.version_after = version(&t);
    Ok(report)
}
