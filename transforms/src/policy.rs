//! The `[pii]` policy turned into transform chains, the dead-letter seal and the Delta
//! table settings that keep statistics from leaking raw values.
//!
//! Loading reads every secret the policy names; a missing or short secret stops start-up
//! with a message naming the variable or file, never the value.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sluice_pipeline::columns::LINEAGE_COLUMNS;
use sluice_pipeline::config::pii::{Action, ColumnRule, DeadLetterMode};
use sluice_pipeline::config::{Config, Problem};
use sluice_pipeline::protection::{Protection, Step};
use sluice_pipeline::{Seal, Transform};

use crate::drop::Drop;
use crate::encrypt::{Encrypt, Keyring};
use crate::fpe::{EncryptFpe, Ff1Cipher, FpeFormat};
use crate::generalize::{Generalization, Generalize};
use crate::hash::Hash;
use crate::keys::{self, Secret};
use crate::limit::Limited;
use crate::mask::{Mask, MaskPartial};
use crate::memo::Memo;
use crate::path::ColumnPath;
use crate::redact::{Redact, Redactor};
use crate::seal::DeadLetterSeal;
use crate::tokenize::Tokenize;

/// Table property recording the rule applied to a column: `sluice.pii.<path>`.
pub const PROPERTY_PREFIX: &str = "sluice.pii.";

/// A loaded policy.
pub struct Policy {
    /// Secrets by key id.
    secrets: BTreeMap<String, Secret>,
    rules: BTreeMap<String, BTreeMap<String, ColumnRule>>,
    dead_letter_key: Option<String>,
    /// Data keys of `encrypt` rules, by master key id.
    keyrings: BTreeMap<String, Arc<Keyring>>,
    /// `pii.max_value_bytes` and `pii.max_fpe_digits`.
    max_value_bytes: usize,
    max_fpe_digits: usize,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("keys", &self.secrets.keys().collect::<Vec<_>>())
            .field("tables", &self.rules.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where a table's statistics and policy record come from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSettings {
    /// `delta.dataSkippingStatsColumns`: lineage columns and protected columns only.
    pub stats_columns: Vec<String>,
    /// `sluice.pii.<path>` → `<action>[ key=<id>][ tag=<tag>]`.
    pub properties: Vec<(String, String)>,
}

impl Policy {
    /// Load the secrets `config`'s policy names. A config without `[pii]` rules gives an
    /// empty policy (nothing to load).
    pub fn load(config: &Config) -> Result<Self, Vec<Problem>> {
        Self::load_keys(config, &|_| true)
    }

    /// Like [`Policy::load`], reading only the secrets `wanted` selects (`sluice reveal`
    /// needs one key, not all of them); transforms needing another key are left out.
    pub fn load_keys(config: &Config, wanted: &dyn Fn(&str) -> bool) -> Result<Self, Vec<Problem>> {
        let pii = &config.pii;
        let rules = config.pii_rules();
        let mut used: Vec<&str> = rules
            .values()
            .flat_map(|r| r.values())
            .filter_map(|r| r.key.as_deref())
            .collect();
        let dead_letter_key = (pii.is_active() && pii.dead_letters == DeadLetterMode::Encrypt)
            .then(|| pii.dead_letter_key.clone())
            .flatten();
        used.extend(dead_letter_key.as_deref());
        used.retain(|id| wanted(id));
        used.sort_unstable();
        used.dedup();
        let mut secrets = BTreeMap::new();
        let mut problems = Vec::new();
        for id in used {
            let Some(source) = pii.keys.get(id) else {
                problems.push(Problem {
                    path: format!("pii.keys.{id}"),
                    message: "missing".into(),
                });
                continue;
            };
            match keys::load(id, source) {
                Ok(s) => {
                    secrets.insert(id.to_string(), s);
                }
                Err(message) => problems.push(Problem {
                    path: format!("pii.keys.{id}"),
                    message,
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let keyrings = rules
            .values()
            .flat_map(BTreeMap::values)
            .filter(|r| r.action == Action::Encrypt)
            .filter_map(|r| r.key.as_deref())
            .filter_map(|id| Some((id.to_string(), secrets.get(id)?)))
            .map(|(id, secret)| {
                let ring = Arc::new(Keyring::new(&id, secret));
                (id, ring)
            })
            .collect();
        Ok(Self {
            secrets,
            rules,
            dead_letter_key,
            keyrings,
            max_value_bytes: pii.max_value_bytes,
            max_fpe_digits: pii.max_fpe_digits,
        })
    }

    /// The secret of key `id`, if the policy uses it.
    pub fn secret(&self, id: &str) -> Option<&Secret> {
        self.secrets.get(id)
    }

    /// The keyrings of the `encrypt` rules: the subject key store loads and saves them.
    pub fn keyrings(&self) -> Vec<Arc<Keyring>> {
        self.keyrings.values().cloned().collect()
    }

    /// The keyring of master key `id`.
    pub fn keyring(&self, id: &str) -> Option<&Arc<Keyring>> {
        self.keyrings.get(id)
    }

    /// The rule for `path` in `table`.
    pub fn rule(&self, table: &str, path: &str) -> Option<&ColumnRule> {
        self.rules.get(table)?.get(path)
    }

    /// The transform chains and dead-letter seal for the runner.
    pub fn protection(&self) -> Protection {
        let mut chains: HashMap<String, Vec<Step>> = HashMap::new();
        for (table, rules) in &self.rules {
            // `encrypt` goes first: it must see the raw subject, before a rule of the
            // subject column pseudonymises it.
            let (first, rest): (Vec<_>, Vec<_>) =
                rules.iter().partition(|(_, r)| r.action == Action::Encrypt);
            let chain = first
                .into_iter()
                .chain(rest)
                .filter_map(|(path, rule)| {
                    Some(Step {
                        column: path.clone(),
                        transform: self.transform(path, rule)?,
                    })
                })
                .collect();
            chains.insert(table.clone(), chain);
        }
        Protection {
            chains,
            seal: self
                .dead_letter_seal()
                .map(|s| Box::new(s) as Box<dyn Seal>),
        }
    }

    /// Every form `value` takes in the lake under this policy's one-way rules: its token
    /// under each `tokenize` key and its hash under each `hash` salt, so a job can find a
    /// subject in tables that hold only the pseudonym.
    pub fn pseudonyms(&self, value: &[u8]) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for rule in self.rules.values().flat_map(BTreeMap::values) {
            let Some(id) = rule.key.as_deref() else {
                continue;
            };
            let Some(secret) = self.secrets.get(id) else {
                continue;
            };
            match rule.action {
                Action::Tokenize => {
                    out.insert(crate::tokenize::token(id, secret.bytes(), value));
                }
                Action::Hash => {
                    out.insert(crate::hash::salted_sha256(secret.bytes(), value));
                }
                _ => {}
            }
        }
        // How the subject key store names the subject.
        for ring in self.keyrings.values() {
            out.insert(ring.subject_id(value));
        }
        out.into_iter().collect()
    }

    /// The transform of a rule needing no key (drop, mask, mask_partial, redact,
    /// generalize); none for keyed actions and keep.
    pub fn keyless_transform(path: &str, rule: &ColumnRule) -> Option<Box<dyn Transform>> {
        if matches!(
            rule.action,
            Action::Hash | Action::Tokenize | Action::EncryptFpe | Action::Encrypt | Action::Keep
        ) {
            return None;
        }
        let defaults = sluice_pipeline::config::pii::PiiConfig::default();
        let empty = Policy {
            secrets: BTreeMap::new(),
            rules: BTreeMap::new(),
            dead_letter_key: None,
            keyrings: BTreeMap::new(),
            max_value_bytes: defaults.max_value_bytes,
            max_fpe_digits: defaults.max_fpe_digits,
        };
        empty.transform(path, rule)
    }

    /// The seal of dead letters, when the policy encrypts them.
    pub fn dead_letter_seal(&self) -> Option<DeadLetterSeal> {
        let id = self.dead_letter_key.as_deref()?;
        Some(DeadLetterSeal::new(id, self.secrets.get(id)?))
    }

    /// The FF1 cipher of an `encrypt_fpe` rule.
    pub fn fpe_cipher(&self, rule: &ColumnRule) -> Option<Ff1Cipher> {
        if rule.action != Action::EncryptFpe {
            return None;
        }
        let secret = self.secrets.get(rule.key.as_deref()?)?;
        let format = match rule.format.as_deref() {
            Some("pan") => FpeFormat::Pan,
            _ => FpeFormat::Digits,
        };
        Some(Ff1Cipher::new(secret.bytes(), format).with_max_digits(self.max_fpe_digits))
    }

    /// The transform of `rule` on `path`; actions that read whole values (keyed ones and
    /// redact) refuse values longer than `pii.max_value_bytes`.
    fn transform(&self, path: &str, rule: &ColumnRule) -> Option<Box<dyn Transform>> {
        let action = self.action(path, rule)?;
        Some(match rule.action {
            Action::Hash
            | Action::Tokenize
            | Action::EncryptFpe
            | Action::Encrypt
            | Action::Redact => Box::new(Limited {
                inner: action,
                path: ColumnPath::parse(path)?,
                max_bytes: self.max_value_bytes,
            }),
            _ => action,
        })
    }

    fn action(&self, path: &str, rule: &ColumnRule) -> Option<Box<dyn Transform>> {
        let path = ColumnPath::parse(path)?;
        let secret = || {
            rule.key
                .as_deref()
                .and_then(|k| self.secrets.get(k))
                .map(|s| s.bytes().to_vec())
        };
        Some(match rule.action {
            Action::Keep => return None,
            Action::Drop => Box::new(Drop { path }),
            Action::Mask => Box::new(Mask {
                path,
                literal: rule.literal.clone(),
            }),
            Action::MaskPartial => Box::new(MaskPartial {
                path,
                keep_last: rule.keep_last.unwrap_or(4),
                mask_char: rule.mask_char.unwrap_or('*'),
            }),
            Action::Hash => Box::new(Hash {
                path,
                salt: secret()?,
                memo: Memo::default(),
            }),
            Action::Tokenize => Box::new(Tokenize {
                path,
                key_id: rule.key.clone()?,
                key: secret()?,
                memo: Memo::default(),
            }),
            Action::EncryptFpe => Box::new(EncryptFpe {
                path,
                cipher: self.fpe_cipher(rule)?,
                memo: Memo::default(),
            }),
            Action::Encrypt => Box::new(Encrypt {
                path,
                subject: ColumnPath::parse(rule.subject.as_deref()?)?,
                keyring: Arc::clone(self.keyrings.get(rule.key.as_deref()?)?),
            }),
            Action::Redact => Box::new(Redact {
                path,
                redactor: Arc::new(Redactor::new()),
            }),
            Action::Generalize => Box::new(Generalize {
                path,
                to: match (rule.to.as_deref(), rule.width) {
                    (Some("year"), _) => Generalization::Year,
                    (Some("month"), _) => Generalization::Month,
                    (Some("outward"), _) => Generalization::Outward,
                    (_, Some(w)) => Generalization::Bucket(w),
                    _ => return None,
                },
            }),
        })
    }

    /// Statistics columns and policy record of `table`, if the policy covers it.
    pub fn table_settings(&self, table: &str) -> Option<TableSettings> {
        let rules = self.rules.get(table)?;
        let mut stats: Vec<String> = LINEAGE_COLUMNS
            .iter()
            .filter(|c| **c != "_kafka_key" && **c != "_ingest_date")
            .map(|c| c.to_string())
            .collect();
        let mut properties = Vec::new();
        for (path, rule) in rules {
            // Values that are replaced whole may carry statistics; dropped columns have
            // none, kept and redacted ones (free text keeps what no detector matched) never.
            if matches!(
                rule.action,
                Action::Mask
                    | Action::MaskPartial
                    | Action::Hash
                    | Action::Tokenize
                    | Action::EncryptFpe
                    | Action::Generalize
            ) {
                stats.push(path.clone());
            }
            let mut record = rule.action.as_str().to_string();
            if let Some(k) = &rule.key {
                record.push_str(&format!(" key={k}"));
            }
            if let Some(s) = &rule.subject {
                record.push_str(&format!(" subject={s}"));
            }
            if let Some(t) = rule.tag {
                record.push_str(&format!(" tag={}", t.as_str()));
            }
            properties.push((format!("{PROPERTY_PREFIX}{path}"), record));
        }
        Some(TableSettings {
            stats_columns: stats,
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    fn config(policy: &str) -> Config {
        Config::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"customers\"]\n{policy}"
        ))
        .expect("valid config")
    }

    #[test]
    fn a_missing_secret_stops_start_up_naming_the_variable() {
        let c = config(
            "[pii]\ndead_letter_key = \"k1\"\n[pii.keys.k1]\nenv = \"SLUICE_TEST_NO_SUCH_VAR\"\n\
             [pii.tables.customers]\nemail = { action = \"tokenize\", key = \"k1\" }\n",
        );
        let e = Policy::load(&c).expect_err("missing secret");
        assert!(e[0].message.contains("SLUICE_TEST_NO_SUCH_VAR is not set"));
    }

    #[test]
    fn the_chain_protects_nested_columns_and_settings_list_only_protected_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("k");
        std::fs::write(&key, "0123456789abcdef0123").expect("write");
        let c = config(&format!(
            "[pii]\ndead_letter_key = \"k1\"\n[pii.keys.k1]\nfile = {:?}\n\
             [pii.tables.customers]\n\"after.email\" = {{ action = \"tokenize\", key = \"k1\" }}\n\
             \"after.notes\" = {{ action = \"redact\" }}\n",
            key.display().to_string()
        ));
        let policy = Policy::load(&c).expect("policy");
        let protection = policy.protection();
        assert!(protection.seal.is_some());
        let chain = &protection.chains["customers"];
        assert_eq!(chain.len(), 2);
        let after = StructArray::from(vec![
            (
                Arc::new(Field::new("email", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["jane@example.com"])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("notes", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["call 07700 900123"])) as ArrayRef,
            ),
        ]);
        let mut batch =
            RecordBatch::try_from_iter([("after", Arc::new(after) as ArrayRef)]).expect("batch");
        let mut schema = batch.schema();
        for step in chain {
            schema = step.transform.output_schema(&schema).expect("schema");
            batch = step.transform.apply(batch).expect("apply");
        }
        let after = batch.column(0).as_struct();
        let email = after.column(0).as_string::<i32>().value(0).to_string();
        assert!(email.starts_with("tok_k1_"), "{email}");
        assert_eq!(after.column(1).as_string::<i32>().value(0), "call [PHONE]");
        let settings = policy.table_settings("customers").expect("settings");
        assert!(settings.stats_columns.contains(&"after.email".to_string()));
        assert!(!settings.stats_columns.iter().any(|c| c == "after.notes"));
        assert!(
            settings
                .properties
                .contains(&("sluice.pii.after.email".into(), "tokenize key=k1".into()))
        );
    }
}
