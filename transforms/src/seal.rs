//! Sealed dead letters: under a PII policy the raw key and payload of a message that
//! could not become a row are encrypted (AES-256-GCM) before they are written, so the
//! dead-letter table holds no readable personal data; `sluice reveal --dead-letters`
//! opens them again with the key.
//!
//! A sealed value is `SLC1`, the key id's length (one byte) and the key id, a 96-bit
//! random nonce, then the ciphertext and tag. The message's topic, partition and offset
//! are bound as associated data, so a sealed value cannot be moved to another row.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sluice_pipeline::{DeadLetter, Seal};

use crate::keys::{Secret, derive_key};

const MAGIC: &[u8; 4] = b"SLC1";
const NONCE_BYTES: usize = 12;

/// Seals dead letters under one key.
pub struct DeadLetterSeal {
    key_id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for DeadLetterSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterSeal")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn associated_data(topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    format!("{topic}\u{0}{partition}\u{0}{offset}").into_bytes()
}

/// Whether `value` is a sealed value.
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

impl DeadLetterSeal {
    pub fn new(key_id: &str, secret: &Secret) -> Self {
        let key = derive_key(secret.bytes(), b"sluice dead letters v1");
        Self {
            key_id: key_id.to_string(),
            cipher: Aes256Gcm::new(&key.into()),
        }
    }

    /// Encrypt `plain` for the message at `topic`/`partition`/`offset`.
    pub fn seal_bytes(&self, plain: &[u8], topic: &str, partition: i32, offset: i64) -> Vec<u8> {
        let nonce = Nonce::generate();
        let aad = associated_data(topic, partition, offset);
        let sealed = self.cipher.encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad,
            },
        );
        let mut out = Vec::with_capacity(plain.len() + 64);
        out.extend_from_slice(MAGIC);
        out.push(self.key_id.len() as u8);
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(nonce.as_slice());
        match sealed {
            Ok(ct) => out.extend_from_slice(&ct),
            // AES-GCM refuses only messages of ~64 GB; never store the plaintext instead.
            Err(_) => out.truncate(0),
        }
        out
    }

    /// Decrypt a sealed value; errors say why without showing any of it.
    pub fn open(
        &self,
        sealed: &[u8],
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Vec<u8>, String> {
        let rest = sealed
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a sealed value")?;
        let (&len, rest) = rest.split_first().ok_or("truncated")?;
        let len = usize::from(len);
        if rest.len() < len + NONCE_BYTES {
            return Err("truncated".into());
        }
        let (id, rest) = rest.split_at(len);
        if id != self.key_id.as_bytes() {
            return Err(format!(
                "sealed under key '{}', not '{}'",
                String::from_utf8_lossy(id),
                self.key_id
            ));
        }
        let (nonce, ct) = rest.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| "bad nonce")?;
        let aad = associated_data(topic, partition, offset);
        self.cipher
            .decrypt(&nonce, Payload { msg: ct, aad: &aad })
            .map_err(|_| "wrong key or tampered value".to_string())
    }
}

impl Seal for DeadLetterSeal {
    fn seal(&self, letter: &mut DeadLetter) {
        let (topic, partition, offset) = (letter.topic.clone(), letter.partition, letter.offset);
        for v in [&mut letter.key, &mut letter.payload].into_iter().flatten() {
            *v = self.seal_bytes(v, &topic, partition, offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_pipeline::Stage;

    fn letter() -> DeadLetter {
        DeadLetter {
            topic: "customers".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: None,
            key: Some(b"C-0001".to_vec()),
            payload: Some(br#"{"email":"jane@example.com"}"#.to_vec()),
            stage: Stage::Decode,
            error: "malformed JSON".into(),
        }
    }

    #[test]
    fn sealed_letters_hide_and_restore_key_and_payload() {
        let seal = DeadLetterSeal::new("vault", &Secret::new(b"0123456789abcdef".to_vec()));
        let mut l = letter();
        seal.seal(&mut l);
        let payload = l.payload.clone().expect("payload");
        assert!(is_sealed(&payload));
        assert!(!payload.windows(4).any(|w| w == b"jane"));
        assert_eq!(
            seal.open(&payload, "customers", 3, 42).expect("open"),
            letter().payload.expect("payload")
        );
        assert!(
            seal.open(&payload, "customers", 3, 43).is_err(),
            "bound to its row"
        );
        let other = DeadLetterSeal::new("vault", &Secret::new(b"another secret!!".to_vec()));
        assert!(other.open(&payload, "customers", 3, 42).is_err());
        assert_eq!(
            seal.open(l.key.as_deref().expect("key"), "customers", 3, 42)
                .expect("key"),
            b"C-0001"
        );
    }
}
