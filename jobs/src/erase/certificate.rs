//! Erasure certificates: what an erasure did per table and subject, the salted hashes
//! that name a subject and its erased values, and `sluice.erasures`, where certificates
//! are recorded (one commit per run) and looked up again by a run finishing a batch.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sluice_connectors::delta::table;
use sluice_pipeline::lake::Lake;

use super::{ERASURES, Request, STATS_COLUMNS};
use crate::error::{Error, Result};

/// What the erasure did to one table, for one subject.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TableErasure {
    pub table: String,
    pub version_before: i64,
    pub version_after: i64,
    /// Rows of this subject removed.
    pub rows_removed: u64,
    /// Files rewritten without the request's rows.
    pub files_rewritten: u64,
    /// Data and change-data files removed from storage.
    pub files_purged: u64,
    /// Files holding a subject that no commit names and that are younger than the safety
    /// window (a writer may still commit them): left for a later run.
    pub files_deferred: u64,
    /// Log entries rewritten and checkpoints removed in `_delta_log`.
    pub logs_purged: u64,
    /// Time travel to versions before this one is given up: their files or statistics
    /// were purged (none: the table's history is untouched).
    pub history_from_version: Option<i64>,
    /// Salted hashes of the text values (of [`MIN_VALUE_CHARS`](super::MIN_VALUE_CHARS) or more) the erased rows
    /// held, for `--verify`; never the values.
    pub value_hashes: Vec<String>,
    /// Seconds spent checkpointing and rewriting the log (not part of the certificate).
    #[serde(skip)]
    pub log_seconds: f64,
}

/// The certificate of one subject's erasure.
#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    pub request_id: String,
    /// HMAC-SHA256 of the subject under the certificate key: proves which subject was
    /// erased to whoever holds the key and the identifier, reveals nothing to others.
    pub subject_hash: String,
    pub erased_at: i64,
    pub tables: Vec<TableErasure>,
    /// Tombstones produced for the subject's keys on compacted topics.
    pub tombstones: u64,
    /// Why the request could not be carried out (a malformed request read from Kafka).
    pub invalid: Option<String>,
    /// A dry run: nothing was changed, the certificate says what would go.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Certificate {
    pub fn rows_removed(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_removed).sum()
    }
    pub fn files_purged(&self) -> u64 {
        self.tables.iter().map(|t| t.files_purged).sum()
    }
    pub fn logs_purged(&self) -> u64 {
        self.tables.iter().map(|t| t.logs_purged).sum()
    }
    pub fn files_deferred(&self) -> u64 {
        self.tables.iter().map(|t| t.files_deferred).sum()
    }
    /// `table@version` for each table whose time travel before `version` was given up.
    pub fn history_lost(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter_map(|t| Some(format!("{}@{}", t.table, t.history_from_version?)))
            .collect()
    }
    pub fn outcome(&self) -> String {
        if let Some(why) = &self.invalid {
            format!("invalid request: {why}")
        } else if self.dry_run {
            "dry run".into()
        } else if self.rows_removed() + self.files_purged() + self.logs_purged() == 0 {
            "nothing to erase".into()
        } else {
            "erased".into()
        }
    }
}

fn hmac_hex(key: &[u8], value: &[u8]) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(value);
    hex::encode(mac.finalize().into_bytes())
}

/// The salted hash of a subject recorded in certificates.
pub fn subject_hash(certificate_secret: &[u8], subject: &str) -> String {
    let key = sluice_transforms::keys::derive_key(certificate_secret, b"sluice erasure v1");
    hmac_hex(&key, subject.as_bytes())
}

/// The key salting the hashes of erased values in certificates.
pub fn value_key(certificate_secret: &[u8]) -> [u8; 32] {
    sluice_transforms::keys::derive_key(certificate_secret, b"sluice erasure values v1")
}

/// The salted hash of an erased value, as certificates keep it (128 bits, hex).
pub fn value_hash(key: &[u8], value: &str) -> String {
    let mut h = hmac_hex(key, value.as_bytes());
    h.truncate(32);
    h
}

/// The certificates recorded in `sluice.erasures`, to query; none before the first.
pub(super) async fn certificates_of(
    lake: &Lake,
) -> Result<Option<deltalake::datafusion::prelude::DataFrame>> {
    let url = table::lake_url(lake, ERASURES)?;
    let t = table::open(ERASURES, &url).await?;
    if !table::exists(&t) {
        return Ok(None);
    }
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    ctx.register_table(
        "erasures",
        t.table_provider().await.map_err(Error::query(ERASURES))?,
    )?;
    Ok(Some(ctx.table("erasures").await?))
}

/// A certificate as `sluice.erasures` holds it.
pub(super) struct Recorded {
    pub(super) request_id: String,
    pub(super) subject_hash: String,
    pub(super) erased_at: i64,
    pub(super) tombstones: u64,
    /// Per table, as JSON.
    pub(super) tables: String,
}

/// The certificates recorded at `at`: a run records all of its own at one time.
pub(super) async fn recorded_at(lake: &Lake, at: i64) -> Result<Vec<Recorded>> {
    recorded_where(lake, |erased_at, t| erased_at.eq(t), at).await
}

/// The certificates recorded at `since` or later, earliest first.
pub(super) async fn recorded_since(lake: &Lake, since: i64) -> Result<Vec<Recorded>> {
    let mut out = recorded_where(lake, |erased_at, t| erased_at.gt_eq(t), since).await?;
    out.sort_by_key(|c| c.erased_at);
    Ok(out)
}

/// The certificates whose `erased_at` compares with `at` as `compare` says.
async fn recorded_where(
    lake: &Lake,
    compare: impl FnOnce(
        deltalake::datafusion::prelude::Expr,
        deltalake::datafusion::prelude::Expr,
    ) -> deltalake::datafusion::prelude::Expr,
    at: i64,
) -> Result<Vec<Recorded>> {
    use deltalake::datafusion::prelude::{col, lit};
    let Some(certificates) = certificates_of(lake).await? else {
        return Ok(Vec::new());
    };
    let at = lit(
        deltalake::datafusion::scalar::ScalarValue::TimestampMicrosecond(
            Some(at),
            Some("UTC".into()),
        ),
    );
    let batches = certificates
        .filter(compare(col("erased_at"), at))?
        .select_columns(&[
            "request_id",
            "subject_hash",
            "tombstones",
            "tables",
            "erased_at",
        ])?
        .collect()
        .await?;
    let mut out = Vec::new();
    for b in batches {
        // Text may come back as views: read it as plain strings.
        let (ids, hashes, tables) = (
            cast(b.column(0), &DataType::Utf8)?,
            cast(b.column(1), &DataType::Utf8)?,
            cast(b.column(3), &DataType::Utf8)?,
        );
        let (ids, hashes, tables) = (
            ids.as_string::<i32>(),
            hashes.as_string::<i32>(),
            tables.as_string::<i32>(),
        );
        let tombstones = cast(b.column(2), &DataType::Int64)?;
        let tombstones = tombstones.as_primitive::<Int64Type>();
        let times = cast(b.column(4), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let text = |a: &StringArray| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            };
            out.push(Recorded {
                request_id: text(ids),
                subject_hash: text(hashes),
                erased_at: times.value(i),
                tombstones: if tombstones.is_null(i) {
                    0
                } else {
                    u64::try_from(tombstones.value(i)).unwrap_or(0)
                },
                tables: text(tables),
            });
        }
    }
    Ok(out)
}

/// The certificates of `recorded` for `requests`, in their order: for each, the first
/// of the same subject (and with `same_id`, the same request id); `None` when a request
/// has none. Without `same_id` the certificates are another run's, given the requests'
/// own ids and tombstones.
pub(super) fn recorded_certificates(
    requests: &[Request],
    recorded: &[Recorded],
    same_id: bool,
) -> Result<Option<Vec<Certificate>>> {
    let mut out = Vec::new();
    for r in requests {
        let Some(c) = recorded.iter().find(|c| {
            c.subject_hash == r.subject_hash && (!same_id || c.request_id == r.request_id)
        }) else {
            return Ok(None);
        };
        let tables: Vec<TableErasure> = serde_json::from_str(&c.tables).map_err(Error::json(
            format!("{ERASURES}: a certificate's tables do not read"),
        ))?;
        out.push(Certificate {
            request_id: r.request_id.clone(),
            subject_hash: c.subject_hash.clone(),
            erased_at: c.erased_at,
            tables,
            tombstones: if same_id { c.tombstones } else { r.tombstones },
            invalid: None,
            dry_run: false,
        });
    }
    Ok(Some(out))
}

/// Record the requests of a batch that could not be carried out (`(request id, why)`),
/// so none is lost once skipped: all in one commit, at `at`, the time the batch was
/// taken. The same batch taken again after a stop (see [`crate::journal::BatchMarker`])
/// finds certificates of invalid requests at that time, so these were recorded, and
/// records nothing more.
pub async fn record_invalid(
    lake: &Lake,
    invalid: &[(String, String)],
    at: i64,
) -> Result<Vec<Certificate>> {
    let certificates: Vec<Certificate> = invalid
        .iter()
        .map(|(request_id, why)| Certificate {
            request_id: request_id.clone(),
            subject_hash: String::new(),
            erased_at: at,
            tables: Vec::new(),
            tombstones: 0,
            invalid: Some(why.clone()),
            dry_run: false,
        })
        .collect();
    if certificates.is_empty()
        || recorded_at(lake, at)
            .await?
            .iter()
            .any(|c| c.subject_hash.is_empty())
    {
        return Ok(certificates);
    }
    record(lake, &certificates).await?;
    Ok(certificates)
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, true),
        Field::new("subject_hash", DataType::Utf8, true),
        Field::new(
            "erased_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("outcome", DataType::Utf8, true),
        Field::new("rows_removed", DataType::Int64, true),
        Field::new("files_purged", DataType::Int64, true),
        Field::new("logs_purged", DataType::Int64, true),
        Field::new("tombstones", DataType::Int64, true),
        Field::new("versions", DataType::Utf8, true),
        Field::new("tables", DataType::Utf8, true),
    ]))
}

/// Append the certificate to `_sluice/erasures`.
/// Record `certificates` in `sluice.erasures`, all in one commit.
pub(super) async fn record(lake: &Lake, certificates: &[Certificate]) -> Result<()> {
    if certificates.is_empty() {
        return Ok(());
    }
    let mut tables = Vec::new();
    let mut versions = Vec::new();
    for c in certificates {
        versions.push(
            c.tables
                .iter()
                .map(|t| format!("{}@{}", t.table, t.version_after))
                .collect::<Vec<_>>()
                .join(", "),
        );
        tables.push(
            serde_json::to_string(&c.tables)
                .map_err(Error::json(format!("{ERASURES}: a certificate's tables")))?,
        );
    }
    let each = |f: &dyn Fn(&Certificate) -> i64| -> Arc<Int64Array> {
        Arc::new(Int64Array::from_iter_values(certificates.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                certificates.iter().map(|c| c.request_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                certificates.iter().map(|c| c.subject_hash.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    certificates.iter().map(|c| c.erased_at),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                certificates.iter().map(Certificate::outcome),
            )),
            each(&|c| c.rows_removed() as i64),
            each(&|c| c.files_purged() as i64),
            each(&|c| c.logs_purged() as i64),
            each(&|c| c.tombstones as i64),
            Arc::new(StringArray::from_iter_values(versions)),
            Arc::new(StringArray::from_iter_values(tables)),
        ],
    )?;
    let url = table::lake_url(lake, ERASURES)?;
    table::append_record(ERASURES, &url, &schema(), batch, &STATS_COLUMNS).await?;
    Ok(())
}
