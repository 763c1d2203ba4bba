//! `[audit]`: the key sealing the job-run chain (`sluice.job_runs`).
//!
//! ```toml
//! [audit]
//! key_env = "SLUICE_AUDIT_KEY"   # at least 32 bytes; every run recorded is sealed with it
//! ```
//!
//! Without a key each run is chained by SHA-256, which anyone who can write the lake can
//! recompute; with one, by HMAC-SHA256 under the key, which they cannot.

use serde::Deserialize;

use super::check::Problem;

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Environment variable holding the key that seals `sluice.job_runs`.
    pub key_env: Option<String>,
}

impl AuditConfig {
    /// Problems of the `[audit]` section.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        match &self.key_env {
            Some(name) if name.trim().is_empty() => vec![Problem::new(
                "audit.key_env",
                "name the environment variable holding the key",
            )],
            _ => Vec::new(),
        }
    }

    /// The audit key, read from the environment: none when `[audit]` names no variable;
    /// a problem naming the variable (never a value) when it is unset or too short.
    pub fn key(&self) -> Result<Option<Vec<u8>>, Problem> {
        let Some(name) = &self.key_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(v) if v.len() >= MIN_KEY_BYTES => Ok(Some(v.into_bytes())),
            Ok(_) => Err(Problem::new(
                "audit.key_env",
                format!("the key in {name} is shorter than {MIN_KEY_BYTES} bytes"),
            )),
            Err(_) => Err(Problem::new(
                "audit.key_env",
                format!("environment variable {name} is not set"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n";

    #[test]
    fn the_key_comes_from_the_environment_and_is_long_enough() {
        let c = Config::from_toml(&format!(
            "{BASE}[audit]\nkey_env = \"SLUICE_TEST_AUDIT_KEY_UNSET\"\n"
        ))
        .expect("valid");
        let e = c.audit.key().expect_err("unset");
        assert!(
            e.to_string()
                .contains("SLUICE_TEST_AUDIT_KEY_UNSET is not set"),
            "{e}"
        );
        assert_eq!(
            Config::from_toml(BASE).expect("valid").audit.key(),
            Ok(None)
        );
        assert!(Config::from_toml(&format!("{BASE}[audit]\nkey = \"x\"\n")).is_err());
        assert!(Config::from_toml(&format!("{BASE}[audit]\nkey_env = \" \"\n")).is_err());
    }
}
