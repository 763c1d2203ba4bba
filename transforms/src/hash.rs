//! `hash`: SHA-256 of a configured salt and the value, as lower-case hex.
//!
//! Deterministic (the same value and salt give the same hash), so hashed columns still
//! join; not reversible. Values of any primitive type are hashed through their text form.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use sha2::{Digest, Sha256};
use sluice_pipeline::{Result, Transform};

use crate::memo::Memo;
use crate::path::{ColumnPath, arrow_error, check, map_column, replace_field};

/// Salted SHA-256 of one column; the column becomes a string column.
#[derive(Clone)]
pub struct Hash {
    pub path: ColumnPath,
    /// Secret salt (from an environment variable or file, never from the config text).
    pub salt: Vec<u8>,
    pub memo: Memo,
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hash")
            .field("path", &self.path)
            .field("salt", &"<secret>")
            .finish()
    }
}

/// Hex SHA-256 of `salt` then `value`.
pub fn salted_sha256(salt: &[u8], value: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(value);
    hex::encode(h.finalize())
}

fn hashable(dt: &DataType) -> bool {
    dt.is_primitive()
        || matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Boolean | DataType::Binary
        )
}

/// Apply `f` to the bytes of every non-null value of `a` (binary values as they are,
/// others through their text form), giving a string column; each distinct value is
/// computed once per `memo` generation.
pub(crate) fn map_text(
    name: &str,
    a: &ArrayRef,
    memo: &Memo,
    f: &dyn Fn(&[u8]) -> String,
) -> Result<ArrayRef> {
    let mut memo = memo.lock();
    let mut out = StringBuilder::with_capacity(a.len(), a.len() * 48);
    let mut one = |v: Option<&[u8]>| match v.and_then(|v| memo.get_or(v, || Some(f(v)))) {
        Some(s) => out.append_value(s),
        None => out.append_null(),
    };
    if let Some(b) = a.as_binary_opt::<i32>() {
        b.iter().for_each(&mut one);
    } else {
        let text = cast(a, &DataType::Utf8).map_err(|e| arrow_error(name, e))?;
        text.as_string::<i32>()
            .iter()
            .for_each(|v| one(v.map(str::as_bytes)));
    }
    let out = out.finish();
    debug_assert_eq!(out.null_count(), a.null_count());
    Ok(Arc::new(out))
}

impl Transform for Hash {
    fn name(&self) -> &str {
        "hash"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.path, &hashable)?;
        Ok(replace_field(input, &self.path, &|f| {
            f.clone().with_data_type(DataType::Utf8)
        }))
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let (salt, memo) = (&self.salt, &self.memo);
        map_column(&batch, &self.path, "hash", &move |a| {
            map_text("hash", a, memo, &|v| salted_sha256(salt, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // sha256("abc")
        assert_eq!(
            salted_sha256(b"", b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hash_turns_numbers_into_hashes_of_their_text_and_keeps_nulls() {
        let b = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from(vec![Some(7), None])) as ArrayRef,
        )])
        .expect("batch");
        let h = Hash {
            path: ColumnPath::parse("n").expect("path"),
            salt: b"s".to_vec(),
            memo: Memo::default(),
        };
        let out = h.apply(b).expect("hash");
        let s = out.column(0).as_string::<i32>();
        assert_eq!(s.value(0), salted_sha256(b"s", b"7"));
        assert!(s.is_null(1));
        assert_eq!(out.schema().field(0).data_type(), &DataType::Utf8);
    }

    proptest! {
        #[test]
        fn hash_is_deterministic_and_salt_dependent(v in ".{0,40}", salt in proptest::collection::vec(any::<u8>(), 1..16)) {
            prop_assert_eq!(salted_sha256(&salt, v.as_bytes()), salted_sha256(&salt, v.as_bytes()));
            let mut other = salt.clone();
            other[0] ^= 1;
            prop_assert_ne!(salted_sha256(&salt, v.as_bytes()), salted_sha256(&other, v.as_bytes()));
        }
    }
}
