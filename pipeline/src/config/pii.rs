//! `[pii]`: the PII policy — which column of which table gets which protection before
//! anything lands. The transforms themselves live in `sluice-transforms`; this is the
//! configuration they are built from and its validation.
//!
//! ```toml
//! [pii]
//! dead_letter_key = "vault"                  # dead letters are encrypted with it
//!
//! [pii.keys.pseudo]                          # secrets come from the environment...
//! env = "SLUICE_PSEUDONYM_KEY"
//! [pii.keys.vault]                           # ...or from a file, never from this text
//! file = "/run/secrets/sluice-vault"
//!
//! [pii.tables.customers]
//! email = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
//! "address.postcode" = { action = "generalize", to = "outward", tag = "quasi_identifier" }
//!
//! [pii.topics.card-payments]                 # by topic: applies to the topic's table
//! pan = { action = "encrypt_fpe", format = "pan", key = "vault", tag = "sensitive" }
//!
//! [pii.tables.accounts]                      # crypto-shredding: each customer's own key
//! holder_name = { action = "encrypt", subject = "customer_id", key = "shred" }
//! ```
//!
//! `encrypt` keeps a random data key per subject in the subject key store (a Delta table,
//! `subject_keys` below or `<lake>/_keys/subjects`), each key wrapped under the master
//! key named by `key`. Erasing the subject deletes its keys, so every copy of the values
//! left anywhere (backups, exports, older files) can no longer be decrypted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::check::Problem;
use crate::columns::LINEAGE_COLUMNS;
use crate::lake::Lake;

/// `[pii]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PiiConfig {
    /// Longest value (bytes) an action that reads values — hash, tokenize, encrypt,
    /// encrypt_fpe, redact — processes; a longer one makes its row a dead letter at stage
    /// `transform`, so no value costs more than a bounded amount of work.
    pub max_value_bytes: usize,
    /// Most digits `encrypt_fpe` encrypts in one value (its cost grows with the square of
    /// the digits beyond 38); more make the row a dead letter at stage `transform`.
    pub max_fpe_digits: usize,
    /// Named secrets, by key id (letters and digits).
    pub keys: BTreeMap<String, KeyConfig>,
    /// What happens to the raw bytes of dead letters when a policy is set.
    pub dead_letters: DeadLetterMode,
    /// Key id that encrypts dead-letter keys and payloads (`dead_letters = "encrypt"`).
    pub dead_letter_key: Option<String>,
    /// Rules by table name, then by column path.
    pub tables: BTreeMap<String, BTreeMap<String, ColumnRule>>,
    /// Rules by topic, applied to the table the topic lands in.
    pub topics: BTreeMap<String, BTreeMap<String, ColumnRule>>,
    /// Location (a directory or an object-store URL) of the subject key store of
    /// `encrypt` rules; default `<lake>/_keys/subjects`. Keep it out of the lake's
    /// backups: a restored key would undo an erasure.
    pub subject_keys: Option<String>,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self {
            max_value_bytes: 64 * 1024,
            max_fpe_digits: 64,
            keys: BTreeMap::new(),
            dead_letters: DeadLetterMode::default(),
            dead_letter_key: None,
            tables: BTreeMap::new(),
            topics: BTreeMap::new(),
            subject_keys: None,
        }
    }
}

/// Where a secret comes from: exactly one of `env` and `file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeyConfig {
    /// Name of an environment variable holding the secret.
    pub env: Option<String>,
    /// Path of a file holding the secret (trailing newline ignored).
    pub file: Option<PathBuf>,
}

/// Treatment of the raw key and payload of dead letters under a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterMode {
    /// AES-256-GCM under `dead_letter_key`; `sluice reveal --dead-letters` opens them.
    #[default]
    Encrypt,
    /// Kept as they came: only for a dead-letter table that is itself restricted.
    Raw,
}

/// The protections a column can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Drop,
    Mask,
    MaskPartial,
    Hash,
    Tokenize,
    EncryptFpe,
    /// AES-256-GCM under the data key of the row's subject (crypto-shredding).
    Encrypt,
    Redact,
    Generalize,
    /// Classified PII deliberately kept as it is (the table must be restricted).
    Keep,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Mask => "mask",
            Action::MaskPartial => "mask_partial",
            Action::Hash => "hash",
            Action::Tokenize => "tokenize",
            Action::EncryptFpe => "encrypt_fpe",
            Action::Encrypt => "encrypt",
            Action::Redact => "redact",
            Action::Generalize => "generalize",
            Action::Keep => "keep",
        }
    }
    fn needs_key(&self) -> bool {
        matches!(
            self,
            Action::Hash | Action::Tokenize | Action::EncryptFpe | Action::Encrypt
        )
    }
}

/// Classification of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    DirectIdentifier,
    QuasiIdentifier,
    Sensitive,
    FreeText,
}

impl Tag {
    pub fn as_str(&self) -> &'static str {
        match self {
            Tag::DirectIdentifier => "direct_identifier",
            Tag::QuasiIdentifier => "quasi_identifier",
            Tag::Sensitive => "sensitive",
            Tag::FreeText => "free_text",
        }
    }
}

/// The rule for one column.
#[derive(Debug, Clone, Deserialize)]
pub struct ColumnRule {
    pub action: Action,
    pub tag: Option<Tag>,
    /// Key id: the salt of `hash`, the key of `tokenize` and `encrypt_fpe`, the master key
    /// wrapping the subject keys of `encrypt`.
    pub key: Option<String>,
    /// `encrypt`: the column (of the same row) identifying the data subject.
    pub subject: Option<String>,
    /// `mask`: replacement of strings instead of `""`.
    pub literal: Option<String>,
    /// `mask_partial`: characters kept at the end (default 4).
    pub keep_last: Option<usize>,
    /// `mask_partial`: the masking character (default `*`).
    pub mask_char: Option<char>,
    /// `encrypt_fpe`: `digits` (default) or `pan`.
    pub format: Option<String>,
    /// `generalize`: `year`, `month`, `bucket` or `outward`.
    pub to: Option<String>,
    /// `generalize` with `to = "bucket"`: the bucket width.
    pub width: Option<f64>,
}

impl PiiConfig {
    /// Whether any column rule is configured.
    pub fn is_active(&self) -> bool {
        self.tables
            .values()
            .chain(self.topics.values())
            .any(|r| !r.is_empty())
    }
}

/// Where the subject key store lives under `lake` unless `[pii] subject_keys` says otherwise.
pub const SUBJECT_KEYS: &str = "_keys/subjects";

fn is_key_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl PiiConfig {
    /// Column rules by bronze table, topics resolved to their tables through `routes`
    /// (topic → bronze table).
    ///
    /// In tables of change events (`change_event_tables`: Debezium envelopes feeding a
    /// silver table) a rule names a column of the row and protects it in both images:
    /// `email` becomes `before.email` and `after.email`. Paths already under `before.`,
    /// `after.` or `source.`, and `_kafka_key`, are kept as they are.
    pub(crate) fn rules(
        &self,
        routes: &BTreeMap<String, String>,
        change_event_tables: &BTreeSet<String>,
    ) -> BTreeMap<String, BTreeMap<String, ColumnRule>> {
        let mut out = self.rules_as_written(routes);
        for table in change_event_tables {
            if let Some(rules) = out.get_mut(table) {
                let mut expanded = BTreeMap::new();
                for (path, rule) in std::mem::take(rules) {
                    let envelope = ["before.", "after.", "source."]
                        .iter()
                        .any(|p| path.starts_with(p));
                    if envelope || path.starts_with('_') {
                        expanded.insert(path, rule);
                    } else {
                        for image in ["before", "after"] {
                            let mut rule = rule.clone();
                            // The subject of an image's column is in the same image.
                            if let Some(s) = &rule.subject
                                && !s.starts_with('_')
                                && !["before.", "after.", "source."]
                                    .iter()
                                    .any(|p| s.starts_with(p))
                            {
                                rule.subject = Some(format!("{image}.{s}"));
                            }
                            expanded.insert(format!("{image}.{path}"), rule);
                        }
                    }
                }
                *rules = expanded;
            }
        }
        out
    }

    /// Column rules by bronze table as the policy writes them: by table, and by topic for
    /// the topic's table in `routes` (topic → bronze table).
    pub(crate) fn rules_as_written(
        &self,
        routes: &BTreeMap<String, String>,
    ) -> BTreeMap<String, BTreeMap<String, ColumnRule>> {
        let mut out = self.tables.clone();
        for (topic, rules) in &self.topics {
            if let Some(table) = routes.get(topic) {
                let entry = out.entry(table.clone()).or_default();
                for (path, rule) in rules {
                    entry.entry(path.clone()).or_insert_with(|| rule.clone());
                }
            }
        }
        out
    }

    /// Problems of the `[pii]` section, its topics and tables checked against `routes`
    /// (topic → bronze table).
    pub(crate) fn validate(&self, routes: &BTreeMap<String, String>) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.max_value_bytes == 0 {
            p.push(Problem::new(
                "pii.max_value_bytes",
                "must be greater than 0",
            ));
        }
        if self.max_fpe_digits < 7 {
            p.push(Problem::new(
                "pii.max_fpe_digits",
                "must be at least 7 (a card number's body needs six digits and its check digit)",
            ));
        }
        for (id, k) in &self.keys {
            let at = format!("pii.keys.{id}");
            if !is_key_id(id) {
                p.push(Problem::new(&at, "key ids use only letters and digits"));
            }
            match (&k.env, &k.file) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => p.push(Problem::new(&at, "give exactly one of `env` and `file`")),
            }
        }
        if let Some(Err(e)) = self.subject_keys.as_deref().map(Lake::parse) {
            p.push(Problem::new("pii.subject_keys", e));
        }
        let known_key = |id: &str| self.keys.contains_key(id);
        if self.is_active() && self.dead_letters == DeadLetterMode::Encrypt {
            match &self.dead_letter_key {
                None => p.push(Problem::new(
                    "pii.dead_letter_key",
                    "missing: dead letters carry whole messages, so under a PII policy they are \
                     encrypted; name a key here (or set pii.dead_letters = \"raw\" for a restricted \
                     dead-letter table)",
                )),
                Some(k) if !known_key(k) => p.push(Problem::new(
                    "pii.dead_letter_key",
                    format!("no key '{k}' under [pii.keys]"),
                )),
                Some(_) => {}
            }
        }
        for table in self.tables.keys() {
            if !routes.values().any(|t| t == table) {
                p.push(Problem::new(
                    format!("pii.tables.{table}"),
                    "no topic lands in this table",
                ));
            }
        }
        for (topic, rules) in &self.topics {
            let Some(table) = routes.get(topic) else {
                p.push(Problem::new(
                    format!("pii.topics.{topic}"),
                    "not one of kafka.topics",
                ));
                continue;
            };
            for path in rules.keys() {
                let by_table = self.tables.get(table).and_then(|r| r.get(path));
                let other = self
                    .topics
                    .iter()
                    .filter(|(t, _)| *t != topic && routes.get(*t) == Some(table))
                    .find_map(|(_, r)| r.get(path));
                if by_table.is_some() || other.is_some() {
                    p.push(Problem::new(
                        format!("pii.topics.{topic}.{path}"),
                        format!("table '{table}' has another rule for this column"),
                    ));
                }
            }
        }
        let sections = self
            .tables
            .iter()
            .map(|(t, r)| (format!("pii.tables.{t}"), r))
            .chain(
                self.topics
                    .iter()
                    .map(|(t, r)| (format!("pii.topics.{t}"), r)),
            );
        for (section, rules) in sections {
            for (path, rule) in rules {
                p.extend(validate_rule(
                    &format!("{section}.\"{path}\""),
                    path,
                    rule,
                    rules,
                    &known_key,
                ));
            }
        }
        p
    }
}

pub(crate) fn validate_rule(
    at: &str,
    path: &str,
    rule: &ColumnRule,
    siblings: &BTreeMap<String, ColumnRule>,
    known_key: &dyn Fn(&str) -> bool,
) -> Vec<Problem> {
    let mut p = Vec::new();
    let a = rule.action;
    if path.split('.').any(str::is_empty) {
        p.push(Problem::new(
            at,
            "not a column path (`name` or `parent.child`)",
        ));
    }
    if LINEAGE_COLUMNS.contains(&path) && path != "_kafka_key" {
        p.push(Problem::new(
            at,
            "lineage columns other than _kafka_key hold no message data",
        ));
    }
    for other in siblings.keys() {
        if path.starts_with(&format!("{other}.")) {
            p.push(Problem::new(
                at,
                format!("'{other}' has its own rule; one rule per column, parents included"),
            ));
        }
    }
    match (&rule.key, a.needs_key()) {
        (None, true) => p.push(Problem::new(
            at,
            format!(
                "{} needs `key`, the id of a key under [pii.keys]",
                a.as_str()
            ),
        )),
        (Some(k), true) if !known_key(k) => {
            p.push(Problem::new(at, format!("no key '{k}' under [pii.keys]")))
        }
        (Some(_), false) => p.push(Problem::new(
            at,
            format!("`key` does not apply to {}", a.as_str()),
        )),
        _ => {}
    }
    let only = |set: bool, option: &str, action: Action, p: &mut Vec<Problem>| {
        if set && a != action {
            p.push(Problem::new(
                at,
                format!("`{option}` applies only to {}", action.as_str()),
            ));
        }
    };
    only(rule.literal.is_some(), "literal", Action::Mask, &mut p);
    only(
        rule.keep_last.is_some(),
        "keep_last",
        Action::MaskPartial,
        &mut p,
    );
    only(
        rule.mask_char.is_some(),
        "mask_char",
        Action::MaskPartial,
        &mut p,
    );
    only(rule.format.is_some(), "format", Action::EncryptFpe, &mut p);
    only(rule.subject.is_some(), "subject", Action::Encrypt, &mut p);
    if a == Action::Encrypt {
        match rule.subject.as_deref() {
            None => p.push(Problem::new(
                at,
                "encrypt needs `subject`, the column identifying whose data the row holds",
            )),
            Some(s) if s == path || s.split('.').any(str::is_empty) => p.push(Problem::new(
                at,
                "`subject` must be another column of the row (`name` or `parent.child`)",
            )),
            Some(_) => {}
        }
    }
    only(rule.to.is_some(), "to", Action::Generalize, &mut p);
    only(rule.width.is_some(), "width", Action::Generalize, &mut p);
    if let Some(f) = &rule.format
        && !matches!(f.as_str(), "digits" | "pan")
    {
        p.push(Problem::new(at, "format must be \"digits\" or \"pan\""));
    }
    if a == Action::Generalize {
        match (rule.to.as_deref(), rule.width) {
            (Some("year" | "month" | "outward"), None) => {}
            (Some("bucket"), Some(w)) if w > 0.0 && w.is_finite() => {}
            (Some("bucket"), _) => {
                p.push(Problem::new(at, "to = \"bucket\" needs a positive `width`"))
            }
            (Some("year" | "month" | "outward"), Some(_)) => {
                p.push(Problem::new(at, "`width` applies only to to = \"bucket\""))
            }
            _ => p.push(Problem::new(
                at,
                "generalize needs `to`: \"year\", \"month\", \"bucket\" or \"outward\"",
            )),
        }
    }
    if a == Action::Keep && rule.tag.is_none() {
        p.push(Problem::new(
            at,
            "keep needs a `tag`: keeping classified data raw is a recorded decision",
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str =
        "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"customers\", \"card-payments\"]\n";

    #[test]
    fn a_full_policy_is_valid_and_topics_resolve_to_tables() {
        let c = Config::from_toml(&format!(
            "{BASE}
[pii]
dead_letter_key = \"vault\"
[pii.keys.pseudo]
env = \"K1\"
[pii.keys.vault]
file = \"/run/k\"
[pii.tables.customers]
email = {{ action = \"tokenize\", key = \"pseudo\", tag = \"direct_identifier\" }}
\"address.postcode\" = {{ action = \"generalize\", to = \"outward\" }}
[pii.topics.card-payments]
pan = {{ action = \"encrypt_fpe\", format = \"pan\", key = \"vault\" }}
"
        ))
        .expect("valid");
        let rules = c.pii_rules();
        assert_eq!(rules["customers"].len(), 2);
        assert!(rules["card_payments"].contains_key("pan"));
    }

    #[test]
    fn encrypt_needs_a_subject_and_cannot_key_silver() {
        let problems = Config::from_toml(&format!(
            "{BASE}
[pii]
dead_letter_key = \"shred\"
[pii.keys.shred]
env = \"K\"
[pii.tables.customers]
customer_id = {{ action = \"encrypt\", subject = \"email\", key = \"shred\" }}
name = {{ action = \"encrypt\", key = \"shred\" }}
phone = {{ action = \"encrypt\", subject = \"phone\", key = \"shred\" }}
email = {{ action = \"tokenize\", subject = \"x\", key = \"shred\" }}
[silver.tables.customers]
topics = [\"customers\"]
key = [\"customer_id\"]
"
        ))
        .expect_err("invalid");
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for needle in [
            "\"name\": encrypt needs `subject`",
            "\"phone\": `subject` must be another column",
            "\"email\": `subject` applies only to encrypt",
            "silver.tables.customers: column 'customer_id' is a key or tracked column",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
        // In change-event tables the subject follows the column into each image.
        let c = Config::from_toml(&format!(
            "{BASE}
[pii]
dead_letter_key = \"shred\"
[pii.keys.shred]
env = \"K\"
[pii.tables.customers]
name = {{ action = \"encrypt\", subject = \"customer_id\", key = \"shred\" }}
[silver.tables.customers]
topics = [\"customers\"]
key = [\"customer_id\"]
"
        ))
        .expect("valid");
        assert!(c.uses_subject_keys());
        let rules = &c.pii_rules()["customers"];
        assert_eq!(
            rules["after.name"].subject.as_deref(),
            Some("after.customer_id")
        );
        assert_eq!(
            rules["before.name"].subject.as_deref(),
            Some("before.customer_id")
        );
    }

    #[test]
    fn policy_mistakes_are_all_reported() {
        let problems = Config::from_toml(&format!(
            "{BASE}
[pii.keys.k1]
env = \"A\"
file = \"/b\"
[pii.tables.customers]
email = {{ action = \"tokenize\" }}
name = {{ action = \"mask\", keep_last = 4 }}
dob = {{ action = \"generalize\", to = \"decade\" }}
address = {{ action = \"drop\" }}
\"address.city\" = {{ action = \"mask\" }}
ssn = {{ action = \"keep\" }}
[pii.tables.nowhere]
x = {{ action = \"drop\" }}
"
        ))
        .expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        for needle in [
            "pii.keys.k1: give exactly one",
            "pii.dead_letter_key: missing",
            "tokenize needs `key`",
            "`keep_last` applies only to mask_partial",
            "generalize needs `to`",
            "'address' has its own rule",
            "keep needs a `tag`",
            "pii.tables.nowhere: no topic lands",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }
}
