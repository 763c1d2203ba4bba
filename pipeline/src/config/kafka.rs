//! `[kafka]`: the consumer — brokers, group, topics, how much it prefetches and decodes
//! at once, and its security settings.
//!
//! ```toml
//! [kafka]
//! bootstrap_servers = "broker-1:9093,broker-2:9093"
//! topics = ["card-payments", "bank.public.customers"]
//! auto_offset_reset = "earliest"      # where a partition Delta holds no offset for starts
//!
//! [kafka.properties]                  # passed to librdkafka as they are
//! "security.protocol" = "sasl_ssl"
//! "sasl.mechanism" = "SCRAM-SHA-512"
//! "sasl.username" = "sluice"
//!
//! [kafka.secret_properties]           # secrets, by the environment variable holding each
//! "sasl.password" = "KAFKA_SASL_PASSWORD"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::Problem;

/// Where to start a partition that no Delta table has offsets for yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

/// `[kafka]`: the consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group; default `sluice-<pipeline.name>`.
    pub group_id: Option<String>,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Start of a partition Delta holds no offset for.
    pub auto_offset_reset: OffsetReset,
    /// Upper bound of librdkafka's prefetch queue per consumer (`queued.max.messages.kbytes`).
    pub max_prefetch_bytes: u64,
    /// Group session timeout.
    pub session_timeout_ms: u64,
    /// Most messages decoded together into one Arrow batch.
    pub decode_batch_max_messages: usize,
    /// Longest time messages wait to be decoded together.
    pub decode_batch_max_latency_ms: u64,
    /// Extra librdkafka properties passed as they are (security, SASL, TLS ...).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, by the environment variable that
    /// holds each (`"sasl.password" = "KAFKA_SASL_PASSWORD"`): never in the config text.
    pub secret_properties: BTreeMap<String, String>,
    /// Most messages taken per second (all partitions together); none: no limit.
    pub max_messages_per_second: Option<u32>,
    /// Most payload bytes taken per second; none: no limit.
    pub max_bytes_per_second: Option<u32>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: String::new(),
            group_id: None,
            topics: Vec::new(),
            auto_offset_reset: OffsetReset::Earliest,
            max_prefetch_bytes: 64 * 1024 * 1024,
            session_timeout_ms: 10_000,
            decode_batch_max_messages: 8192,
            decode_batch_max_latency_ms: 100,
            properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
            max_messages_per_second: None,
            max_bytes_per_second: None,
        }
    }
}

/// librdkafka properties that hold secrets: refused in `kafka.properties`.
const SECRET_PROPERTIES: [&str; 5] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "ssl.key.pem",
];

impl KafkaConfig {
    /// Problems of the `[kafka]` section.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            p.push(Problem::new(
                "kafka.bootstrap_servers",
                "missing: give the brokers as host:port[,host:port]",
            ));
        }
        if self.topics.is_empty() {
            p.push(Problem::new(
                "kafka.topics",
                "missing: list at least one topic to consume",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.topics {
            if t.is_empty() || t.len() > 249 {
                p.push(Problem::new(
                    "kafka.topics",
                    format!("'{t}' is not a valid topic name"),
                ));
            } else if !seen.insert(t) {
                p.push(Problem::new(
                    "kafka.topics",
                    format!("'{t}' is listed twice"),
                ));
            }
        }
        if matches!(&self.group_id, Some(g) if g.is_empty()) {
            p.push(Problem::new("kafka.group_id", "must not be empty"));
        }
        if self.max_prefetch_bytes < 1024 {
            p.push(Problem::new(
                "kafka.max_prefetch_bytes",
                "must be at least 1024",
            ));
        }
        if self.session_timeout_ms < 1000 {
            p.push(Problem::new(
                "kafka.session_timeout_ms",
                "must be at least 1000",
            ));
        }
        p.extend(self.check_security());
        for (key, v) in [
            (
                "kafka.max_messages_per_second",
                self.max_messages_per_second,
            ),
            ("kafka.max_bytes_per_second", self.max_bytes_per_second),
        ] {
            if v == Some(0) {
                p.push(Problem::new(
                    key,
                    "must be greater than 0 (leave it out for no limit)",
                ));
            }
        }
        if self.decode_batch_max_messages == 0 {
            p.push(Problem::new(
                "kafka.decode_batch_max_messages",
                "must be greater than 0",
            ));
        }
        p
    }

    /// Problems of the security settings, named by their key.
    fn check_security(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let at = |k: &str| format!("kafka.properties.\"{k}\"");
        for k in SECRET_PROPERTIES {
            if self.properties.contains_key(k) {
                p.push(Problem::new(
                    at(k),
                    format!("a secret in the config text: name an environment variable in kafka.secret_properties.\"{k}\" instead"),
                ));
            }
        }
        let all = self.properties.iter().chain(self.secret_properties.iter());
        for (k, v) in all {
            if self.properties.contains_key(k) && self.secret_properties.contains_key(k) {
                p.push(Problem::new(
                    at(k),
                    "set both here and in kafka.secret_properties",
                ));
            }
            match k.as_str() {
                "security.protocol"
                    if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                        .contains(&v.to_ascii_lowercase().as_str()) =>
                {
                    p.push(Problem::new(
                        at(k),
                        format!("'{v}' is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
                    ))
                }
                "sasl.mechanism" | "sasl.mechanisms"
                    if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]
                        .contains(&v.to_ascii_uppercase().as_str()) =>
                {
                    p.push(Problem::new(
                        at(k),
                        format!("'{v}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI, OAUTHBEARER"),
                    ))
                }
                _ => {}
            }
        }
        p
    }

    /// `properties` plus the secret ones read from the environment; a variable that is not
    /// set is a problem naming the property and the variable, never a value.
    pub fn resolved_properties(
        &self,
    ) -> std::result::Result<BTreeMap<String, String>, Vec<Problem>> {
        let mut out = self.properties.clone();
        let mut problems = Vec::new();
        for (k, var) in &self.secret_properties {
            match std::env::var(var) {
                Ok(v) => {
                    out.insert(k.clone(), v);
                }
                Err(_) => problems.push(Problem::new(
                    format!("kafka.secret_properties.\"{k}\""),
                    format!("environment variable {var} is not set"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The consumer group, derived from the pipeline name when not set.
    pub fn group_id(&self, pipeline: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{pipeline}"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn kafka_security_mistakes_name_their_key_and_secrets_stay_out_of_the_text() {
        let problems = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9093\"\ntopics = [\"t\"]\n\
             [kafka.properties]\n\"security.protocol\" = \"SASL_TLS\"\n\"sasl.mechanism\" = \"SCRAM\"\n\
             \"sasl.password\" = \"hunter2\"\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(
            all.contains("kafka.properties.\"security.protocol\": 'SASL_TLS'"),
            "{all}"
        );
        assert!(all.contains("kafka.properties.\"sasl.mechanism\""), "{all}");
        assert!(
            all.contains("kafka.secret_properties.\"sasl.password\" instead"),
            "{all}"
        );
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9093\"\ntopics = [\"t\"]\n\
             [kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
             [kafka.secret_properties]\n\"sasl.password\" = \"SLUICE_TEST_UNSET_SASL_PASSWORD\"\n",
        )
        .expect("valid");
        let e = c.kafka.resolved_properties().expect_err("unset");
        assert!(
            e[0].to_string()
                .contains("SLUICE_TEST_UNSET_SASL_PASSWORD is not set"),
            "{}",
            e[0]
        );
    }
}
