//! `sluice reveal`: turn protected values back into the originals, for whoever holds the
//! key. Format-preserving encrypted values of a column are decrypted, and so are values of
//! an `encrypt` column while their subject's key is in the subject key store (after an
//! erasure they never open again); sealed dead letters (key and payload) are opened.
//! Nothing else can be reversed: masks, hashes, tokens, redactions and generalisations are
//! one-way by design.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use sluice_connectors::delta::subject_keys;
use sluice_pipeline::config::Config;
use sluice_pipeline::config::pii::Action;
use sluice_pipeline::key_cache::StoredKey;
use sluice_pipeline::lake::Lake;
use sluice_transforms::encrypt::parse_value;
use sluice_transforms::policy::Policy;
use sluice_transforms::seal::is_sealed;

use crate::output::{self, Format};

type Decrypt = dyn Fn(&str) -> anyhow::Result<String>;

/// Decrypt `values` (or stdin, one per line) of the `encrypt_fpe` or `encrypt` column
/// `column` of `table`.
pub async fn column_values(
    config: &Config,
    lake: &Lake,
    table: &str,
    column: &str,
    values: &[String],
) -> anyhow::Result<()> {
    let rules = config.pii_rules();
    // In a change-event table the rule of `c` protects `after.c` (and `before.c`).
    let rule = rules
        .get(table)
        .and_then(|r| r.get(column).or_else(|| r.get(&format!("after.{column}"))))
        .with_context(|| {
            format!("the policy has no rule for column '{column}' of table '{table}'")
        })?;
    if !matches!(rule.action, Action::EncryptFpe | Action::Encrypt) {
        bail!(
            "column '{column}' of table '{table}' is protected by {}, which cannot be reversed",
            rule.action.as_str()
        );
    }
    let key = rule.key.clone().unwrap_or_default();
    let policy =
        Policy::load_keys(config, &|id| id == key).map_err(sluice_pipeline::Error::Config)?;
    let decrypt: Box<Decrypt> = if rule.action == Action::Encrypt {
        let ring = policy
            .keyring(&key)
            .context("the master key of this column could not be loaded")?
            .clone();
        let store = config.subject_key_store(lake);
        let keys: HashMap<String, StoredKey> = subject_keys::read_all(&store)
            .await
            .with_context(|| format!("reading the subject key store {store}"))?
            .into_iter()
            .map(|k| (k.key_id.clone(), k))
            .collect();
        Box::new(move |v| {
            let (_, key_id, _) =
                parse_value(v).context("not a value of an encrypt column (enc_…)")?;
            let stored = keys.get(key_id).with_context(|| {
                format!(
                    "data key {key_id} is not in the subject key store: its subject was erased, the value can no longer be decrypted"
                )
            })?;
            ring.open(v, stored).map_err(|e| anyhow::anyhow!(e))
        })
    } else {
        let cipher = policy
            .fpe_cipher(rule)
            .context("the key of this column could not be loaded")?;
        Box::new(move |v| cipher.decrypt(v).map_err(|e| anyhow::anyhow!(e)))
    };
    let reveal = |v: &str| -> anyhow::Result<()> {
        match decrypt(v.trim()) {
            Ok(plain) => println!("{plain}"),
            Err(e) => bail!("cannot decrypt a value: {e}"),
        }
        Ok(())
    };
    if values.is_empty() {
        for line in std::io::stdin().lock().lines() {
            reveal(&line?)?;
        }
    } else {
        for v in values {
            reveal(v)?;
        }
    }
    Ok(())
}

/// Print the dead letters matching `filter` (a SQL predicate) with key and payload opened.
pub async fn dead_letters(
    config: &Config,
    lake: &Lake,
    filter: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let key = config.pii.dead_letter_key.clone().unwrap_or_default();
    let policy =
        Policy::load_keys(config, &|id| id == key).map_err(sluice_pipeline::Error::Config)?;
    let seal = policy.dead_letter_seal();
    let catalog = sluice_sql::Catalog::open(lake).await?;
    let query = format!(
        "SELECT kafka_topic, kafka_partition, kafka_offset, stage, error, kafka_key, payload \
         FROM sluice.dead_letters {} ORDER BY kafka_topic, kafka_partition, kafka_offset",
        filter.map(|f| format!("WHERE {f}")).unwrap_or_default()
    );
    let batches = catalog.query(&query).await?;
    let mut out = Vec::new();
    for b in &batches {
        // DataFusion may hand back view types: bring every column to one plain type.
        let plain = |i: usize, to: &DataType| cast(b.column(i), to);
        let (topic, partition, offset) = (
            plain(0, &DataType::Utf8)?,
            plain(1, &DataType::Int32)?,
            plain(2, &DataType::Int64)?,
        );
        let (topic, partition, offset) = (
            topic.as_string::<i32>(),
            partition.as_primitive::<Int32Type>(),
            offset.as_primitive::<Int64Type>(),
        );
        let (stage, error) = (plain(3, &DataType::Utf8)?, plain(4, &DataType::Utf8)?);
        let (raw_key, raw_payload) = (plain(5, &DataType::Binary)?, plain(6, &DataType::Binary)?);
        let opened = |raw: &ArrayRef| -> anyhow::Result<StringArray> {
            let raw = raw.as_binary::<i32>();
            (0..b.num_rows())
                .map(|i| {
                    if raw.is_null(i) {
                        return Ok(None);
                    }
                    let v = raw.value(i);
                    let plain = match (&seal, is_sealed(v)) {
                        (Some(s), true) => s
                            .open(v, topic.value(i), partition.value(i), offset.value(i))
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "dead letter {}[{}]@{}: {e}",
                                    topic.value(i),
                                    partition.value(i),
                                    offset.value(i)
                                )
                            })?,
                        (None, true) => {
                            bail!("dead letters are sealed: set pii.dead_letter_key and its secret")
                        }
                        (_, false) => v.to_vec(),
                    };
                    Ok(Some(String::from_utf8_lossy(&plain).into_owned()))
                })
                .collect()
        };
        let key = opened(&raw_key)?;
        let payload = opened(&raw_payload)?;
        out.push(RecordBatch::try_from_iter([
            ("kafka_topic", Arc::new(topic.clone()) as ArrayRef),
            ("kafka_partition", Arc::new(partition.clone())),
            ("kafka_offset", Arc::new(offset.clone())),
            ("stage", stage),
            ("error", error),
            ("kafka_key", Arc::new(key)),
            ("payload", Arc::new(payload)),
        ])?);
    }
    output::print(&out, format)
}
