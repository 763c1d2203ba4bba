//! `sluice job erase`: subjects from the command line or the requests topic, their
//! erasure across the lake and Kafka, certificates and `--verify`.

use std::path::Path;
use std::sync::Arc;

use sluice_connectors::kafka::erasure::{self, KafkaClient};
use sluice_jobs::JobContext;
use sluice_jobs::erase;
use sluice_jobs::subject::Subject;
use sluice_pipeline::config::Config;
use sluice_pipeline::lake::Lake;
use sluice_transforms::policy::Policy;

use super::record;
use crate::output::Format;

/// The subjects named on the command line and in `file` (one per line, `-`: stdin).
pub fn subjects(args: &[String], file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = args.iter().map(|s| s.trim().to_string()).collect();
    if let Some(file) = file {
        let text = if file == Path::new("-") {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
        };
        out.extend(text.lines().map(|l| l.trim().to_string()));
    }
    out.retain(|s| !s.is_empty());
    out.dedup();
    if out.is_empty() {
        anyhow::bail!("no subject: give identifiers as arguments or --file FILE");
    }
    Ok(out)
}

/// Every form of each subject under the policy's keys (and of its tombstone keys, which
/// come back from Kafka as `_kafka_key`), with dead letters opened.
pub fn find_subjects(config: &Config, subjects: &[String]) -> anyhow::Result<Vec<Arc<Subject>>> {
    if config.erasure.columns.is_empty() && config.erasure.tables.is_empty() {
        anyhow::bail!(
            "[erasure] names no subject columns: set `columns` (e.g. [\"customer_id\"]) so the job knows where subjects are"
        );
    }
    let policy = Policy::load(config).map_err(sluice_pipeline::Error::Config)?;
    let seal = policy.dead_letter_seal().map(Arc::new);
    Ok(subjects
        .iter()
        .map(|raw| {
            let mut forms = policy.pseudonyms(raw.as_bytes());
            for t in &config.erasure.tombstones {
                let key = t.key_for(raw);
                forms.extend(policy.pseudonyms(key.as_bytes()));
                forms.push(key);
            }
            forms.sort();
            forms.dedup();
            Arc::new(Subject::new(raw, forms, seal.clone()))
        })
        .collect())
}

/// The subject key store, when the policy encrypts per subject (erasure deletes the
/// subject's keys from it).
fn key_store(config: &Config, lake: &Lake) -> Option<Lake> {
    config
        .uses_subject_keys()
        .then(|| config.subject_key_store(lake))
}

/// The secret salting subject hashes in certificates.
fn certificate_secret(config: &Config) -> anyhow::Result<sluice_transforms::keys::Secret> {
    let key_id = config.erasure.certificate_key.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "[erasure] certificate_key is not set: name a key of [pii.keys] to salt the subject hash in certificates"
        )
    })?;
    let key = config.pii.keys.get(key_id).ok_or_else(|| {
        anyhow::anyhow!("[erasure] certificate_key '{key_id}' is not a key of [pii.keys]")
    })?;
    sluice_transforms::keys::load(key_id, key).map_err(|e| anyhow::anyhow!(e))
}

/// The Kafka client of `[kafka]`, secrets resolved.
fn kafka_client(config: &Config) -> anyhow::Result<KafkaClient> {
    Ok(KafkaClient {
        bootstrap_servers: config.kafka.bootstrap_servers.clone(),
        properties: config
            .kafka
            .resolved_properties()
            .map_err(sluice_pipeline::Error::Config)?,
    })
}

/// The producer of `[[erasure.tombstones]]`, when there are any.
fn tombstone_producer(config: &Config) -> anyhow::Result<Option<erasure::Tombstones>> {
    if config.erasure.tombstones.is_empty() {
        return Ok(None);
    }
    Ok(Some(erasure::Tombstones::new(&kafka_client(config)?)?))
}

/// Check every requested identifier against `[erasure]`'s rules before anything runs.
pub fn check_subjects(config: &Config, subjects: &[String]) -> anyhow::Result<()> {
    for (i, raw) in subjects.iter().enumerate() {
        sluice_jobs::subject::check_identifier(&config.erasure, raw).map_err(|why| {
            anyhow::anyhow!("subject {} of {}: refused: {why}", i + 1, subjects.len())
        })?;
    }
    Ok(())
}

/// Refuse a request id holding one of the subjects `found` (raw or pseudonymised, in any
/// case): certificates and job runs keep request ids in the clear.
pub fn check_request_id(found: &[Arc<Subject>], request_id: Option<&str>) -> anyhow::Result<()> {
    let Some(id) = request_id else {
        return Ok(());
    };
    for (i, s) in found.iter().enumerate() {
        if s.held_in(id) {
            anyhow::bail!(
                "--request-id refused: it holds subject {} of {} (certificates and job runs keep request ids in the clear)",
                i + 1,
                found.len()
            );
        }
    }
    Ok(())
}

/// A request id that holds a subject of the batch (any form, or the text given as a
/// subject even when refused), replaced by a keyed hash of it; the request is still
/// carried out (erasing is what was asked).
fn redacted_request_id(
    secret: &[u8],
    forms: &sluice_jobs::subject::FoldedForms,
    id: String,
) -> String {
    if forms.held_in(&id) {
        tracing::warn!("an erasure request's id holds a subject: recorded as redacted-…");
        format!("redacted-{}", &erase::subject_hash(secret, &id)[..16])
    } else {
        id
    }
}

/// Erase the subjects of one request: tombstones for their keys, then the lake in one
/// pass; a certificate per subject, and the run recorded with the request ids only (a
/// hash of a subject id is guessable). A dry run sends, changes and records nothing.
/// Requests of a batch (`batch_at`, the time it was taken) are certified once, however
/// often the batch is taken ([`erase::Options::batch_at`]).
async fn erase_all(
    config: &Config,
    cx: &JobContext,
    secret: &sluice_transforms::keys::Secret,
    tombstones: Option<&erasure::Tombstones>,
    subjects: &[(String, Arc<Subject>, String)],
    dry_run: bool,
    batch_at: Option<i64>,
) -> anyhow::Result<Vec<erase::Certificate>> {
    let started_at = cx.now().timestamp_micros();
    let mut requests = Vec::new();
    let mut produced_all: anyhow::Result<()> = Ok(());
    for (raw, subject, request_id) in subjects {
        let keys: Vec<(String, Vec<u8>)> = config
            .erasure
            .tombstones
            .iter()
            .map(|t| (t.topic.clone(), t.key_for(raw).into_bytes()))
            .collect();
        let produced = match tombstones {
            Some(producer) if !dry_run => tokio::task::block_in_place(|| producer.send(&keys)),
            _ => Ok(0),
        };
        let n = match produced {
            Ok(n) => n,
            Err(e) => {
                produced_all = Err(anyhow::Error::from(e));
                break;
            }
        };
        requests.push(erase::Request {
            subject: Arc::clone(subject),
            request_id: request_id.clone(),
            subject_hash: erase::subject_hash(secret.bytes(), raw),
            tombstones: n,
        });
    }
    let mut options =
        erase::Options::from_config(&config.erasure, erase::value_key(secret.bytes()));
    options.dry_run = dry_run;
    options.batch_at = batch_at;
    let result = match produced_all {
        Ok(()) => {
            let store = key_store(config, &cx.lake);
            erase::erase(cx, &config.erasure, store.as_ref(), &requests, &options)
                .await
                .map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    if dry_run {
        return result;
    }
    let (outcome, touched) = match &result {
        Ok(certs) => {
            let rows: u64 = certs.iter().map(erase::Certificate::rows_removed).sum();
            let first = certs.first();
            let erased = certs.iter().filter(|c| c.outcome() == "erased").count();
            (
                format!(
                    "{erased} of {} subjects erased: {rows} rows, {} files, {} log entries, {} deferred, {} tombstones",
                    certs.len(),
                    first.map_or(0, erase::Certificate::files_purged),
                    first.map_or(0, erase::Certificate::logs_purged),
                    first.map_or(0, erase::Certificate::files_deferred),
                    certs.iter().map(|c| c.tombstones).sum::<u64>(),
                ),
                first
                    .map(|c| {
                        c.tables
                            .iter()
                            .filter(|t| t.version_after != t.version_before || t.files_purged > 0)
                            .map(|t| format!("{}@{}", t.table, t.version_after))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
            )
        }
        Err(e) => (format!("failed: {e}"), String::new()),
    };
    let mut ids: Vec<String> = subjects.iter().map(|(_, _, r)| r.clone()).collect();
    ids.dedup();
    record(config, cx, "erase", &ids, started_at, outcome, touched).await?;
    result
}

fn print_certificates(certificates: &[erase::Certificate], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(certificates)?),
        _ => {
            println!(
                "request\tsubject_hash\toutcome\trows_removed\tfiles_purged\tlog_entries_purged\tfiles_deferred\ttombstones\thistory_from"
            );
            for c in certificates {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    c.request_id,
                    c.subject_hash,
                    c.outcome(),
                    c.rows_removed(),
                    c.files_purged(),
                    c.logs_purged(),
                    c.files_deferred(),
                    c.tombstones,
                    c.history_lost().join(", ")
                );
            }
            if certificates.iter().any(|c| c.dry_run) {
                eprintln!("sluice: dry run: nothing was changed, nothing recorded");
                for c in certificates {
                    for t in c
                        .tables
                        .iter()
                        .filter(|t| t.rows_removed + t.files_purged > 0)
                    {
                        println!(
                            "would go: {}: {} rows, {} files rewritten, {} older files purged, {} log files rewritten",
                            t.table,
                            t.rows_removed,
                            t.files_rewritten,
                            t.files_purged,
                            t.logs_purged
                        );
                    }
                }
            } else {
                eprintln!(
                    "sluice: {} certificate(s) in sluice.erasures; check with `sluice job erase --verify`",
                    certificates.len()
                );
                let lost: Vec<String> = certificates
                    .first()
                    .map(erase::Certificate::history_lost)
                    .unwrap_or_default();
                if !lost.is_empty() {
                    eprintln!(
                        "sluice: time travel before the erasure is given up for {}",
                        lost.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Run `sluice job erase`: one certificate per subject (`found`: the subjects'
/// forms, from [`find_subjects`]).
pub async fn erase(
    config: &Config,
    cx: &JobContext,
    subjects: &[String],
    found: Vec<Arc<Subject>>,
    request_id: Option<&str>,
    dry_run: bool,
    format: Format,
) -> anyhow::Result<()> {
    let secret = certificate_secret(config)?;
    let tombstones = if dry_run {
        None
    } else {
        tombstone_producer(config)?
    };
    let request_id = request_id.map_or_else(
        || format!("erase-{}", cx.now().format("%Y%m%dT%H%M%S%.6fZ")),
        str::to_string,
    );
    let all: Vec<(String, Arc<Subject>, String)> = subjects
        .iter()
        .zip(found)
        .map(|(raw, subject)| (raw.clone(), subject, request_id.clone()))
        .collect();
    let certificates = erase_all(
        config,
        cx,
        &secret,
        tombstones.as_ref(),
        &all,
        dry_run,
        None,
    )
    .await?;
    print_certificates(&certificates, format)
}

/// Run `sluice job erase --requests`: every request waiting on `[erasure] requests_topic`,
/// carried out in one pass over the lake, committed in Kafka once the certificates are
/// written; a malformed request (or an identifier the rules refuse) gets a certificate
/// saying why, and is committed too.
///
/// The batch is marked in the lake ([`sluice_jobs::journal::BatchMarker`]) before
/// anything is done, so a run stopped midway is finished by the next with the same
/// requests (the same subjects, so the same erasure journal) however many arrived since;
/// those wait for the run after. In order: the marker is written, the certificates are
/// recorded, the offsets are committed, then the marker is removed. A stop anywhere
/// leaves the marker, and the run taking the batch again finds the certificates recorded
/// for its requests since the batch was taken instead of certifying them a second time
/// (even when a `sluice job erase` of the same subjects ran in between).
pub async fn erase_requests(
    config: &Config,
    cx: &JobContext,
    format: Format,
) -> anyhow::Result<()> {
    let lake = &cx.lake;
    let topic = config.erasure.requests_topic.as_deref().ok_or_else(|| {
        anyhow::anyhow!("[erasure] requests_topic is not set: name the topic of erasure requests")
    })?;
    let secret = certificate_secret(config)?;
    let client = kafka_client(config)?;
    let group = format!("{}-erasure", config.kafka.group_id(&config.pipeline.name));
    let queue = erasure::RequestQueue::open(&client, &group, topic)?;
    let timeout = std::time::Duration::from_secs(10);
    let marker = sluice_jobs::journal::BatchMarker::of(lake, &group, topic)?;
    // One run of the group's requests at a time: a second waits, then finds the batch
    // (and marker) the first left.
    let batch_lock = sluice_jobs::lock::Lock::acquire_waiting(
        cx,
        &format!("erase.requests.{}", marker.key()),
        erase::LOCK_WAIT,
    )
    .await?;
    let marked = marker.read().await?;
    let resumed = marked.is_some();
    let (pending, batch) = match marked {
        Some(batch) => {
            let pending = tokio::task::block_in_place(|| queue.batch(timeout, &batch.offsets))?;
            eprintln!(
                "sluice: {} erasure request(s) of the batch a stopped run took from {topic}, taken again (requests since wait for the next run)",
                pending.len()
            );
            (pending, Some(batch))
        }
        None => {
            let pending = tokio::task::block_in_place(|| queue.pending(timeout))?;
            eprintln!(
                "sluice: {} erasure request(s) waiting on {topic}",
                pending.len()
            );
            let batch = (!pending.is_empty()).then(|| sluice_jobs::journal::MarkedBatch {
                offsets: erasure::offsets(&pending),
                taken_at: cx.now().timestamp_micros(),
            });
            if let Some(b) = &batch {
                marker.write(b).await?;
            }
            (pending, batch)
        }
    };
    let checked: Vec<Result<String, String>> = pending
        .iter()
        .map(|r| {
            let raw = r.subject.clone()?;
            sluice_jobs::subject::check_identifier(&config.erasure, &raw)?;
            Ok(raw)
        })
        .collect();
    // The policy's keys are read once for all the requests.
    let raws: Vec<String> = checked
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let found = find_subjects(config, &raws)?;
    // Every form of every subject of the batch, and whatever was given as a subject (when
    // long enough not to be found in any text).
    let mut forms: Vec<String> = found
        .iter()
        .flat_map(|s| s.form_list().iter().cloned())
        .collect();
    forms.extend(
        pending
            .iter()
            .filter_map(|r| r.subject.clone().ok())
            .filter(|s| s.chars().count() >= config.erasure.min_subject_length),
    );
    // Folded once for every request id of the batch.
    let forms = sluice_jobs::subject::FoldedForms::of(&forms);
    let valid: Vec<(String, Arc<Subject>, String)> = pending
        .iter()
        .zip(&checked)
        .filter_map(|(r, c)| {
            c.as_ref()
                .ok()
                .map(|raw| (raw.clone(), r.request_id.clone()))
        })
        .zip(found)
        .map(|((raw, id), subject)| {
            let id = redacted_request_id(secret.bytes(), &forms, id);
            (raw, subject, id)
        })
        .collect();
    let Some(batch) = batch else {
        batch_lock.release().await;
        return print_certificates(&[], format);
    };
    // A run stopped after committing every offset of the batch left only its journal or
    // marker to remove: its certificates are recorded.
    let committed = resumed
        && tokio::task::block_in_place(|| queue.committed_through(&batch.offsets, timeout))?;
    let mut certificates = Vec::new();
    if committed {
        eprintln!("sluice: that batch is certified and committed: nothing more to do for it");
    } else {
        let tombstones = tombstone_producer(config)?;
        let mut erased = if valid.is_empty() {
            Vec::new()
        } else {
            erase_all(
                config,
                cx,
                &secret,
                tombstones.as_ref(),
                &valid,
                false,
                Some(batch.taken_at),
            )
            .await?
        }
        .into_iter();
        let invalid: Vec<(String, String)> = pending
            .iter()
            .zip(&checked)
            .filter_map(|(request, check)| {
                let why = check.as_ref().err()?;
                let id = redacted_request_id(secret.bytes(), &forms, request.request_id.clone());
                Some((id, why.clone()))
            })
            .collect();
        let mut invalid = erase::record_invalid(lake, &invalid, batch.taken_at)
            .await?
            .into_iter();
        for check in &checked {
            let certificate = match check {
                Ok(_) => erased.next(),
                Err(_) => invalid.next(),
            };
            certificates.push(
                certificate.ok_or_else(|| anyhow::anyhow!("a request without its certificate"))?,
            );
        }
        sluice_jobs::journal::abort_point("committing", "run");
        for (partition, (_, last)) in &batch.offsets {
            tokio::task::block_in_place(|| queue.done(*partition, *last))?;
        }
    }
    // Every offset of the batch is committed: the marker goes (a run stopped before takes
    // the batch again, finds it committed and removes it).
    marker.remove().await?;
    batch_lock.release().await;
    print_certificates(&certificates, format)
}

/// Run `sluice job erase --verify`: exit 1 if any subject, or any value its erased rows
/// held that no remaining row holds, is still somewhere in the lake.
pub async fn erase_verify(
    config: &Config,
    cx: &JobContext,
    subjects: &[String],
    found: &[Arc<Subject>],
    format: Format,
) -> anyhow::Result<()> {
    let lake = &cx.lake;
    let started_at = cx.now().timestamp_micros();
    let secret = certificate_secret(config)?;
    let key = erase::value_key(secret.bytes());
    let mut checks = Vec::new();
    for (raw, subject) in subjects.iter().zip(found) {
        let values =
            erase::ErasedValues::of(lake, key, &erase::subject_hash(secret.bytes(), raw)).await?;
        checks.push(erase::Check {
            subject: Arc::clone(subject),
            values,
        });
    }
    let store = key_store(config, lake);
    let reports = erase::verify(lake, store.as_ref(), &checks).await?;
    let mut total = 0u64;
    let mut all = Vec::new();
    for (i, (check, reports)) in checks.iter().zip(reports).enumerate() {
        total += reports
            .iter()
            .map(|r| r.occurrences + r.value_occurrences)
            .sum::<u64>();
        all.push((i + 1, check.values.hashes.len(), reports));
    }
    let outcome = if total == 0 {
        "ok: 0 occurrences".to_string()
    } else {
        format!("failed: {total} occurrences")
    };
    record(
        config,
        cx,
        "erase-verify",
        &[],
        started_at,
        outcome,
        String::new(),
    )
    .await?;
    match format {
        Format::Json => {
            let json: Vec<_> = all
                .iter()
                .map(|(i, v, r)| serde_json::json!({"subject": i, "erased_values": v, "places": r}))
                .collect();
            println!("{}", serde_json::to_string(&json)?);
        }
        _ => {
            println!("subject\tplace\tfiles\tbytes\toccurrences\tvalue_occurrences");
            for (i, _, reports) in &all {
                for r in reports {
                    println!(
                        "{i}\t{}\t{}\t{}\t{}\t{}",
                        r.place, r.files, r.bytes, r.occurrences, r.value_occurrences
                    );
                }
            }
        }
    }
    if total > 0 {
        let places: Vec<String> = all
            .iter()
            .flat_map(|(i, _, r)| {
                r.iter()
                    .filter(|r| r.occurrences + r.value_occurrences > 0)
                    .map(move |r| format!("subject {i}: {} ({})", r.place, r.found_in.join(", ")))
            })
            .collect();
        anyhow::bail!("{total} occurrences remain: {}", places.join("; "));
    }
    let values: usize = all.iter().map(|(_, v, _)| v).sum();
    eprintln!(
        "sluice: every byte of every file scanned for the identifiers and {values} erased values; 0 occurrences"
    );
    Ok(())
}
