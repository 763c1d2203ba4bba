//! One table's part of an erasure: the rows deleted (again when another writer
//! commits meanwhile), attributed to the requests whose subjects they held, the log
//! scrubbed and the files that held them purged, each step kept in the journal.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::compute::filter_record_batch;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::JobContext;
use crate::error::{Error, Result};
use crate::journal::{ATTEMPT_KEY, Attempt, Journal, TableJournal, abort_point, attempt_version};
use crate::lock::Lock;
use crate::purge::{LogView, TableFiles};
use crate::subject::{Lookup, Subject};
use crate::version;

use super::{
    DELETE_ATTEMPTS, Options, Request, TableErasure, TableOutcome, files_with_deletion_vectors,
    text_values, value_hash,
};

/// Delete the rows `lookup` finds for `all`, again against the refreshed table when
/// another writer committed meanwhile. Returns the table after the delete and the version
/// the delete committed, if it had anything to delete.
async fn delete_rows(
    name: &str,
    delta: DeltaTable,
    lookup: &Lookup,
    all: &Arc<Subject>,
    attempt_id: &str,
) -> Result<(DeltaTable, Option<i64>)> {
    let mut delta = delta;
    let mut attempt = 0;
    loop {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
            delta
                .update_incremental(None)
                .await
                .map_err(Error::delta(name))?;
        }
        let read = version(&delta);
        match delta
            .clone()
            .delete()
            .with_predicate(lookup.predicate(Arc::clone(all)))
            .with_commit_properties(
                CommitProperties::default().with_metadata([(
                    ATTEMPT_KEY.to_string(),
                    serde_json::Value::from(attempt_id),
                )]),
            )
            .await
        {
            Ok((t, metrics)) => {
                let committed =
                    (metrics.num_removed_files > 0 && version(&t) > read).then(|| version(&t));
                return Ok((t, committed));
            }
            Err(e) => {
                tracing::warn!(table = %name, attempt, error = %e, "erasure delete refused, retrying against the refreshed table");
                attempt += 1;
                if attempt == DELETE_ATTEMPTS {
                    return Err(Error::DeleteRefused {
                        table: name.to_string(),
                        attempts: DELETE_ATTEMPTS,
                        source: Box::new(e),
                    });
                }
            }
        }
    }
}

/// Which requests each form of an identifier belongs to.
pub(super) type Owners = std::collections::HashMap<String, Vec<usize>>;

pub(super) fn owners(requests: &[Request]) -> Owners {
    let mut out = Owners::new();
    for (i, r) in requests.iter().enumerate() {
        for f in r.subject.form_list() {
            out.entry(f.clone()).or_default().push(i);
        }
    }
    out
}

/// For each request, the rows of the Parquet file `bytes` holding its subject (among the
/// rows holding any of them) and the salted hashes of their text values. A row belongs to
/// every request whose subject it holds (in a subject column, a text column or a dead
/// letter), found in one pass for all of them.
#[allow(clippy::too_many_arguments)]
fn attribute(
    name: &str,
    bytes: bytes::Bytes,
    lookup: &Lookup,
    all: &Subject,
    requests: &[Request],
    owners: &Owners,
    key: &[u8],
    out: &mut [(u64, HashSet<String>)],
) -> Result<u64> {
    let mut found = 0;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(Error::parquet(name))?;
    for batch in reader {
        let batch = batch?;
        let any = lookup.mask(all, &batch)?;
        if any.true_count() == 0 {
            continue;
        }
        let rows = filter_record_batch(&batch, &any)?;
        let n = rows.num_rows();
        found += n as u64;
        let mut row_owners: Vec<Vec<usize>> = vec![Vec::new(); n];
        if requests.len() == 1 {
            row_owners.iter_mut().for_each(|o| o.push(0));
        } else {
            // One pass over the rows for every subject at once: each form found names
            // the requests it belongs to (a row may belong to several).
            lookup.forms_per_row(all, &rows, &mut |row, form| {
                if let Some(o) = owners.get(form) {
                    row_owners[row].extend(o);
                }
            })?;
            for o in &mut row_owners {
                o.sort_unstable();
                o.dedup();
            }
        }
        for o in row_owners.iter().flatten() {
            out[*o].0 += 1;
        }
        for column in rows.columns() {
            text_values(column, &mut |row, v| {
                if row_owners[row].is_empty() {
                    return;
                }
                let h = value_hash(key, v);
                for o in &row_owners[row] {
                    out[*o].1.insert(h.clone());
                }
            });
        }
    }
    Ok(found)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn erase_table(
    cx: &JobContext,
    name: &str,
    delta: DeltaTable,
    lookup: &Lookup,
    all: &Arc<Subject>,
    requests: &[Request],
    owners: &Owners,
    options: &Options,
    journal: Option<&Journal>,
    held: &[&Lock],
) -> Result<TableOutcome> {
    let started = cx.now();
    // Checked again under the table's locks: another engine may have added deletion
    // vectors since the check before the first table.
    let hidden = files_with_deletion_vectors(&delta);
    if hidden > 0 {
        return Err(Error::DeletionVectors {
            table: name.to_string(),
            files: hidden,
        });
    }
    let mut shared = TableErasure {
        table: name.to_string(),
        version_before: version(&delta),
        ..Default::default()
    };
    let mut per_request: Vec<(u64, HashSet<String>)> = vec![(0, HashSet::new()); requests.len()];
    let before_files: HashSet<ObjectPath> = {
        let files = TableFiles::of(name, &delta);
        delta
            .get_file_uris()
            .map_err(Error::delta(name))?
            .filter_map(|u| files.relative(&u))
            .collect()
    };
    // What an earlier run of these requests, stopped before its certificates, did here.
    let prior: Option<TableJournal> = match journal {
        Some(j) => j.table(name).await?.filter(|p| {
            p.rows.len() == p.subjects.len()
                && p.value_hashes.len() == p.subjects.len()
                && requests
                    .iter()
                    .all(|r| p.subjects.contains(&r.subject_hash))
        }),
        None => None,
    };
    if prior.is_some() {
        tracing::warn!(table = %name, "finishing an erasure of these requests that stopped before its certificates");
    }
    // Counts stay in the order of the subjects they were written with until this run
    // accounts for the table (then in its own order).
    let mut entry = prior.clone().unwrap_or_else(|| TableJournal {
        table: name.to_string(),
        version_before: shared.version_before,
        subjects: requests.iter().map(|r| r.subject_hash.clone()).collect(),
        rows: vec![0; requests.len()],
        value_hashes: vec![Vec::new(); requests.len()],
        ..Default::default()
    });
    let (delta, committed) = match journal {
        None => (delta, None),
        Some(j) => {
            entry.pending.push(Attempt {
                id: j.attempt.clone(),
                after_version: shared.version_before,
            });
            j.save_table(&entry).await?;
            abort_point("journaled", name);
            Lock::all_held(held, &format!("erasure of {name}"))?;
            let deleted = delete_rows(name, delta, lookup, all, &j.attempt).await?;
            abort_point("deleted", name);
            deleted
        }
    };
    shared.version_after = version(&delta);
    let files = TableFiles::of(name, &delta);
    let current: HashSet<ObjectPath> = delta
        .get_file_uris()
        .map_err(Error::delta(name))?
        .filter_map(|u| files.relative(&u))
        .collect();
    // The files the delete replaced (or, in a dry run, would): their rows holding a
    // subject are the rows erased. So are those of a delete an earlier run committed
    // without accounting for it.
    // The rows of a file's bytes holding each request's subject, and their value hashes.
    let count = |bytes: bytes::Bytes, into: &mut [(u64, HashSet<String>)]| {
        attribute(
            name,
            bytes,
            lookup,
            all,
            requests,
            owners,
            &options.value_key,
            into,
        )
    };
    let mut replaced: Vec<ObjectPath> = Vec::new();
    let mut earlier_delete = false;
    if options.dry_run {
        for file in &before_files {
            let bytes = files.read(file).await?;
            if lookup.holds_in(all, file, bytes.clone())? {
                shared.rows_removed += count(bytes, &mut per_request)?;
                replaced.push(file.clone());
            }
        }
    } else {
        let mut deletes: Vec<i64> = committed.into_iter().collect();
        for attempt in prior.iter().flat_map(|p| &p.pending) {
            if let Some(v) = attempt_version(&files, attempt, shared.version_after).await?
                && !deletes.contains(&v)
            {
                deletes.push(v);
                earlier_delete = true;
            }
        }
        for v in deletes {
            for file in files.replaced_files(v).await? {
                if replaced.contains(&file) {
                    continue;
                }
                let change_data = file.as_ref().starts_with("_change_data/");
                if !change_data
                    && !current.contains(&file)
                    && let Some(bytes) = files.read_if_exists(&file).await?
                {
                    shared.rows_removed += count(bytes, &mut per_request)?;
                }
                replaced.push(file);
            }
        }
    }
    shared.files_rewritten = replaced
        .iter()
        .filter(|f| !f.as_ref().starts_with("_change_data/"))
        .count() as u64;
    // Files of older versions not yet vacuumed (and change-data files) still holding a
    // subject: their values count too.
    let mut holders: Vec<object_store::ObjectMeta> = Vec::new();
    for file in files.data_files().await? {
        if current.contains(&file.location)
            || replaced.contains(&file.location)
            || (options.dry_run && before_files.contains(&file.location))
        {
            continue;
        }
        let bytes = files.read(&file.location).await?;
        if lookup.holds_in(all, &file.location, bytes.clone())? {
            // Rows of older versions are not counted as removed; their values are.
            let mut ignored = vec![(0, HashSet::new()); requests.len()];
            count(bytes, &mut ignored)?;
            for (mine, theirs) in per_request.iter_mut().zip(ignored) {
                mine.1.extend(theirs.1);
            }
            holders.push(file);
        }
    }
    // What the earlier run accounted for: its rows, values and files.
    let decided: HashSet<ObjectPath> = prior
        .iter()
        .flat_map(|p| &p.purge)
        .map(|f| ObjectPath::from(f.as_str()))
        .collect();
    if let Some(p) = &prior {
        shared.version_before = p.version_before;
        shared.rows_removed += p.rows.iter().sum::<u64>();
        shared.files_rewritten += p.files_rewritten;
        for (mine, r) in per_request.iter_mut().zip(requests) {
            if let Some((rows, hashes)) = p.of_subject(&r.subject_hash) {
                mine.0 += rows;
                mine.1.extend(hashes.iter().cloned());
            }
        }
    }
    // A table an earlier run only looked at (nothing deleted, accounted or scrubbed) is
    // as if never visited: its log is not scrubbed again for nothing.
    let touched = prior.as_ref().is_some_and(TableJournal::accounted)
        || earlier_delete
        || !replaced.is_empty()
        || !holders.is_empty()
        || log_mentions(&files, &delta, all).await?;
    if !touched {
        if let Some(j) = journal {
            j.remove_table(name).await?;
        }
        return Ok(TableOutcome {
            shared,
            per_request,
        });
    }
    if options.dry_run {
        shared.files_purged = holders.len() as u64;
        let log = files.read_log(shared.version_after).await?;
        shared.logs_purged = (log.entries.len() + log.old_checkpoints.len()) as u64;
        shared.history_from_version = Some(shared.version_after);
        return Ok(TableOutcome {
            shared,
            per_request,
        });
    }
    let log_started = Instant::now();
    let log: LogView = files.checkpoint_and_read(&delta).await?;
    let window =
        chrono::Duration::from_std(options.orphan_min_age).unwrap_or(chrono::Duration::MAX);
    let mut purge: Vec<ObjectPath> = replaced;
    for file in holders {
        // A file some commit named is settled; one no commit names may still be
        // committed by a writer in flight, unless it is older than the safety window or
        // an earlier run of this erasure decided it (the log it read named it).
        if log.named.contains(&file.location)
            || decided.contains(&file.location)
            || file.last_modified + window < started
        {
            purge.push(file.location);
        } else {
            shared.files_deferred += 1;
        }
    }
    for file in &decided {
        if !purge.contains(file) {
            purge.push(file.clone());
        }
    }
    // Accounted for: a run stopped from here on is finished by the next one with the same
    // rows, values and files.
    if let Some(j) = journal {
        entry.pending.clear();
        entry.subjects = requests.iter().map(|r| r.subject_hash.clone()).collect();
        entry.rows = per_request.iter().map(|(rows, _)| *rows).collect();
        entry.value_hashes = per_request
            .iter()
            .map(|(_, hashes)| {
                let mut v: Vec<String> = hashes.iter().cloned().collect();
                v.sort();
                v
            })
            .collect();
        entry.files_rewritten = shared.files_rewritten;
        entry.purge = purge.iter().map(|f| f.to_string()).collect();
        j.save_table(&entry).await?;
        abort_point("accounted", name);
    }
    // The log first, the files after: an erasure stopped in between leaves files that
    // still hold a subject, which the next run purges (the journal names them). The other
    // way round, it would leave statistics of files already gone, with nothing left to
    // find them by.
    // A run whose locks another process took over (its lease ran out while it stalled)
    // stops here: that process may be maintaining or erasing the same table.
    Lock::all_held(held, &format!("erasure of {name}"))?;
    let purged: HashSet<ObjectPath> = purge.iter().cloned().collect();
    shared.logs_purged = entry.logs_purged + files.scrub(&log, &purged, true).await?;
    if let Some(j) = journal {
        entry.logs_purged = shared.logs_purged;
        j.save_table(&entry).await?;
        abort_point("scrubbed", name);
    }
    // Files an earlier run removed count as purged; other files already gone (vacuumed
    // before the erasure) do not.
    Lock::all_held(held, &format!("erasure of {name}"))?;
    let missing = files.remove_missing(&purge).await?;
    let gone_before = missing.iter().filter(|f| !decided.contains(f)).count();
    shared.files_purged = (purge.len() - gone_before) as u64;
    abort_point("purged", name);
    shared.history_from_version = Some(log.version);
    shared.log_seconds = log_started.elapsed().as_secs_f64();
    Ok(TableOutcome {
        shared,
        per_request,
    })
}

/// Whether a log entry not scrubbed yet, or a checkpoint, mentions a subject.
async fn log_mentions(files: &TableFiles, delta: &DeltaTable, all: &Subject) -> Result<bool> {
    let log = files.read_log(version(delta)).await?;
    for (_, bytes) in &log.entries {
        if all.mentioned_in(bytes) {
            return Ok(true);
        }
    }
    for path in log.checkpoint.iter().chain(&log.old_checkpoints) {
        let bytes = files.read(path).await?;
        if all.mentioned_in(&bytes)
            || (path.as_ref().ends_with(".parquet")
                && all.count_in_parquet(path.as_ref(), bytes)? > 0)
        {
            return Ok(true);
        }
    }
    Ok(false)
}
