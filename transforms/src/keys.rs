//! Secrets named by the policy: read from an environment variable or a file, never from
//! the config text, never printed.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sluice_pipeline::config::pii::KeyConfig;

/// Fewest bytes a secret may have.
pub const MIN_SECRET_BYTES: usize = 16;

/// A secret's bytes; `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Read the secret `config` points at. Errors name the variable or file, never the value.
pub fn load(id: &str, config: &KeyConfig) -> Result<Secret, String> {
    let bytes = match (&config.env, &config.file) {
        (Some(var), None) => match std::env::var_os(var) {
            Some(v) => v.into_encoded_bytes(),
            None => return Err(format!("key '{id}': environment variable {var} is not set")),
        },
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("key '{id}': cannot read {}: {e}", path.display()))?,
        _ => return Err(format!("key '{id}': give exactly one of `env` and `file`")),
    };
    let mut bytes = bytes;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "key '{id}': the secret has {} bytes; at least {MIN_SECRET_BYTES} are needed",
            bytes.len()
        ));
    }
    Ok(Secret(bytes))
}

/// A 256-bit key for one purpose, derived from a secret of any length (HMAC-SHA256 of the
/// purpose label under the secret), so one secret never keys two algorithms directly.
pub fn derive_key(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(label);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_short_secrets_are_refused_without_their_value() {
        let missing = KeyConfig {
            env: Some("SLUICE_TEST_SURELY_UNSET_VARIABLE".into()),
            file: None,
        };
        let e = load("k1", &missing).expect_err("unset");
        assert!(
            e.contains("SLUICE_TEST_SURELY_UNSET_VARIABLE is not set"),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("short");
        std::fs::write(&path, "tiny-secret\n").expect("write");
        let e = load(
            "k1",
            &KeyConfig {
                env: None,
                file: Some(path.clone()),
            },
        )
        .expect_err("short");
        assert!(e.contains("11 bytes") && !e.contains("tiny"), "{e}");
        std::fs::write(&path, "a secret long enough\n").expect("write");
        let s = load(
            "k1",
            &KeyConfig {
                env: None,
                file: Some(path),
            },
        )
        .expect("ok");
        assert_eq!(s.bytes(), b"a secret long enough");
        assert_eq!(format!("{s:?}"), "Secret(<20 bytes>)");
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        assert_ne!(derive_key(b"s", b"a"), derive_key(b"s", b"b"));
    }
}
