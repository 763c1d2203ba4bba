//! `sluice job maintain`: per table of the lake, retention deletes, compaction to a target
//! file size, vacuum of files no longer referenced (after a retention window), and a
//! checkpoint with expired log files removed. Each table is locked while it is maintained;
//! the pipeline may keep writing (compaction commits are conflict-checked by delta-rs).
//! Works on a local lake and on an object store alike.
//!
//! Every age is measured from the context's clock: the retention cutoff, the vacuum
//! window and the log retention.

use std::num::NonZeroU64;
use std::sync::Arc;

use deltalake::table::config::TablePropertiesExt as _;
use serde::Serialize;
use sluice_connectors::delta::table;
use sluice_pipeline::config::maintenance::{Maintenance, MaintenanceConfig};
use sluice_sql::find_tables_in;

use crate::JobContext;
use crate::clock::{Clock, DeltaClock};
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

/// Maintain every table of the context's lake (or those named in `only`, as
/// `layer.name`).
pub async fn maintain(
    cx: &JobContext,
    config: &MaintenanceConfig,
    only: &[String],
) -> Result<Vec<TableReport>> {
    let mut reports = Vec::new();
    let tables = find_tables_in(&cx.lake).await?;
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
        let lock = Lock::acquire_in(cx, &format!("maintain.{name}")).await?;
        let rewriting = Lock::acquire_waiting(cx, &table_lock(&name), LOCK_WAIT).await?;
        let settings = config.for_table(&name);
        let report =
            maintain_table(&t.url, &name, settings, &cx.clock, &[&lock, &rewriting]).await?;
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

async fn maintain_table(
    url: &url::Url,
    name: &str,
    m: Maintenance,
    clock: &Arc<dyn Clock>,
    held: &[&Lock],
) -> Result<TableReport> {
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
        let cutoff = clock.now().date_naive() - chrono::Duration::days(i64::from(days));
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
    // Vacuum deletes files: not beside a process that took this run's locks over.
    Lock::all_held(held, &format!("maintenance of {name}"))?;
    let retention = chrono::Duration::hours(m.vacuum_retention_hours as i64);
    let (next, metrics) = t
        .vacuum()
        .with_retention_period(retention)
        // The window is the config's decision; delta-rs's 7-day floor would override it.
        .with_enforce_retention_duration(false)
        .with_clock(Arc::new(DeltaClock(Arc::clone(clock))))
        .await
        .map_err(Error::delta(name))?;
    t = next;
    report.files_vacuumed = metrics.files_deleted.len() as u64;
    if m.checkpoint {
        deltalake::protocol::checkpoints::create_checkpoint(&t, None)
            .await
            .map_err(Error::delta(name))?;
        report.checkpoint = true;
        // As delta-rs's `cleanup_metadata`, the table's log retention counted back from the
        // clock's time.
        let snapshot = t.snapshot().map_err(Error::delta(name))?;
        let retention = snapshot.table_config().log_retention_duration();
        let cutoff = clock
            .now()
            .timestamp_millis()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        report.logs_removed = deltalake::protocol::checkpoints::cleanup_expired_logs_for(
            snapshot.version(),
            t.log_store().as_ref(),
            cutoff,
            None,
        )
        .await
        .map_err(Error::delta(name))? as u64;
    }
    report.version_after = version(&t);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use deltalake::DeltaTable;
    use sluice_pipeline::config::maintenance::TableMaintenance;
    use sluice_pipeline::lake::Lake;

    use crate::clock::TestClock;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&chrono::Utc)
    }

    /// One row ingested on `day`, in a commit (and a file) of its own.
    async fn ingest(t: DeltaTable, day: &str) -> DeltaTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_ingest_date", DataType::Date32, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let days = at(&format!("{day}T00:00:00Z")).date_naive()
            - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from(vec![
                    i32::try_from(days.num_days()).expect("days"),
                ])),
                Arc::new(StringArray::from(vec![format!("ingested {day}")])),
            ],
        )
        .expect("batch");
        t.write(vec![batch]).await.expect("write")
    }

    /// Data files left in the table's directory.
    fn data_files(dir: &std::path::Path) -> usize {
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    if !p.ends_with("_delta_log") {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    n += 1;
                }
            }
        }
        n
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retention_and_vacuum_go_by_the_jobs_clock() {
        let dir = tempfile::tempdir().expect("tmp");
        let lake = Lake::Local(dir.path().to_path_buf());
        let url = table::lake_url(&lake, "bronze/events").expect("url");
        let schema = Schema::new(vec![
            Field::new("_ingest_date", DataType::Date32, true),
            Field::new("note", DataType::Utf8, true),
        ]);
        let mut t = table::create("bronze.events", &url, &schema, &[], &[])
            .await
            .expect("create");
        for day in ["2020-01-01", "2020-01-10"] {
            t = ingest(t, day).await;
        }
        let mut config = MaintenanceConfig {
            vacuum_retention_hours: 24,
            ..Default::default()
        };
        config.tables.insert(
            "bronze.events".into(),
            TableMaintenance {
                retention_days: Some(5),
                ..Default::default()
            },
        );
        // On 2020-01-12 by the job's clock, five days back is 2020-01-07: the row of
        // 2020-01-01 goes, the one of 2020-01-10 stays (by the system's clock both would
        // go). The file it was in was removed now, well inside the vacuum window.
        let clock = Arc::new(TestClock::at(at("2020-01-12T00:00:00Z")));
        let cx = JobContext::new(lake, Arc::clone(&clock) as Arc<dyn Clock>);
        let first = maintain(&cx, &config, &[]).await.expect("maintain");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].rows_deleted, 1);
        assert_eq!(first[0].files_vacuumed, 0);
        let table_dir = dir.path().join("bronze/events");
        let before = data_files(&table_dir);
        assert!(before >= 2, "the removed file awaits vacuum");
        // Two days ahead of the system's clock: the other row is past retention, and every
        // file removed (seconds ago by the system's clock) is past the 24-hour window.
        clock.set(chrono::Utc::now() + chrono::Duration::days(2));
        let second = maintain(&cx, &config, &[]).await.expect("maintain");
        assert_eq!(second[0].rows_deleted, 1);
        assert!(second[0].files_vacuumed >= 2, "{:?}", second[0]);
        assert!(data_files(&table_dir) < before);
    }
}
