//! `tokenize`: a keyed pseudonym, HMAC-SHA256 of the value under a secret key.
//!
//! The same value under the same key always gives the same token, so joins across tables
//! still work; without the key the value cannot be recovered or guessed by hashing
//! candidates. Each token carries the id of its key (`tok_<key id>_<hex>`), so keys can
//! rotate: old rows keep their key id and a re-tokenisation job can find them.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sluice_pipeline::{Result, Transform};

use crate::hash::map_text;
use crate::memo::Memo;
use crate::path::{ColumnPath, check, map_column, replace_field, schema_error};

/// Keyed pseudonymisation of one column; the column becomes a string column.
#[derive(Clone)]
pub struct Tokenize {
    pub path: ColumnPath,
    /// Identifies the key in every token; letters and digits only.
    pub key_id: String,
    /// Secret key (from an environment variable or file, never from the config text).
    pub key: Vec<u8>,
    pub memo: Memo,
}

impl std::fmt::Debug for Tokenize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenize")
            .field("path", &self.path)
            .field("key_id", &self.key_id)
            .field("key", &"<secret>")
            .finish()
    }
}

/// HMAC-SHA256 keyed once; cloned for each value.
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

fn token_with(key_id: &str, mac: &Hmac<Sha256>, value: &[u8]) -> String {
    let mut mac = mac.clone();
    mac.update(value);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(5 + key_id.len() + 32);
    out.push_str("tok_");
    out.push_str(key_id);
    out.push('_');
    out.push_str(&hex::encode(&tag[..16]));
    out
}

/// `tok_<key id>_<first 128 bits of HMAC-SHA256(key, value), hex>`.
pub fn token(key_id: &str, key: &[u8], value: &[u8]) -> String {
    token_with(key_id, &keyed(key), value)
}

impl Transform for Tokenize {
    fn name(&self) -> &str {
        "tokenize"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if self.key.len() < 16 {
            return Err(schema_error(
                self.name(),
                "the key must be at least 16 bytes",
            ));
        }
        if self.key_id.is_empty() || !self.key_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(schema_error(
                self.name(),
                "the key id must be letters and digits",
            ));
        }
        check(self.name(), input, &self.path, &|dt| {
            dt.is_primitive()
                || matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary)
        })?;
        Ok(replace_field(input, &self.path, &|f| {
            f.clone().with_data_type(DataType::Utf8)
        }))
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let (id, mac, memo) = (&self.key_id, keyed(&self.key), &self.memo);
        map_column(&batch, &self.path, "tokenize", &move |a| {
            map_text("tokenize", a, memo, &|v| token_with(id, &mac, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, AsArray, StringArray};
    use proptest::prelude::*;
    use std::sync::Arc;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn rfc4231_case_2_prefix() {
        // HMAC-SHA256(key = "Jefe", "what do ya want for nothing?")
        assert_eq!(
            token("k1", b"Jefe", b"what do ya want for nothing?"),
            "tok_k1_5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn tokens_join_across_batches_and_keep_nulls() {
        let t = Tokenize {
            path: ColumnPath::parse("email").expect("path"),
            key_id: "k1".into(),
            key: KEY.to_vec(),
            memo: Memo::default(),
        };
        let mk = |v: Vec<Option<&str>>| {
            RecordBatch::try_from_iter([("email", Arc::new(StringArray::from(v)) as ArrayRef)])
                .expect("batch")
        };
        let a = t.apply(mk(vec![Some("a@b.c"), None])).expect("a");
        let b = t.apply(mk(vec![Some("x@y.z"), Some("a@b.c")])).expect("b");
        let (a, b) = (
            a.column(0).as_string::<i32>().clone(),
            b.column(0).as_string::<i32>().clone(),
        );
        assert_eq!(a.value(0), b.value(1));
        assert!(a.is_null(1));
        assert!(a.value(0).starts_with("tok_k1_"));
    }

    #[test]
    fn short_keys_are_refused_at_start_up() {
        let t = Tokenize {
            path: ColumnPath::parse("email").expect("path"),
            key_id: "k1".into(),
            key: b"short".to_vec(),
            memo: Memo::default(),
        };
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("email", DataType::Utf8, true),
        ]));
        assert!(t.output_schema(&schema).is_err());
    }

    proptest! {
        #[test]
        fn tokenize_is_deterministic_and_key_dependent(v in ".{0,40}") {
            prop_assert_eq!(token("k", KEY, v.as_bytes()), token("k", KEY, v.as_bytes()));
            prop_assert_ne!(token("k", KEY, v.as_bytes()), token("k", b"another key of 16 bytes", v.as_bytes()));
        }
    }
}
