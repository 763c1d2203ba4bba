//! # sluice-transforms
//!
//! PII transforms over Arrow record batches: one file per action, each implementing
//! [`sluice_pipeline::Transform`] on one column, addressed by a [`ColumnPath`] that may
//! reach into structs (`after.email`). Every action works on whole Arrow arrays, keeps the
//! row count and keeps nulls null, and checks at start-up that its column exists with a
//! type it handles, so a policy naming a column the data lacks fails before data moves.
//!
//! Actions: [`drop::Drop`], [`mask::Mask`], [`mask::MaskPartial`], [`hash::Hash`]
//! (salted SHA-256), [`tokenize::Tokenize`] (keyed HMAC-SHA256 pseudonyms with a key id)
//! [`redact::Redact`] (typed placeholders for emails, cards, IBANs, NINOs, IPs, phones
//! and postcodes in free text) and [`generalize::Generalize`] (dates to year or month,
//! numbers to buckets, postcodes to outward codes) and [`fpe::EncryptFpe`] (FF1
//! format-preserving encryption, Luhn-valid for card numbers) and [`encrypt::Encrypt`]
//! (crypto-shredding: AES-256-GCM under a data key of the row's subject). [`policy::Policy`] builds
//! them from the `[pii]` config, with the keys it names and the [`seal::DeadLetterSeal`]
//! that encrypts dead letters. Secrets are
//! never printed: their `Debug` forms hide them.

pub mod drop;
pub mod encrypt;
pub mod fpe;
pub mod generalize;
pub mod hash;
pub mod keys;
pub mod limit;
pub mod luhn;
pub mod mask;
pub mod memo;
pub mod path;
pub mod policy;
pub mod redact;
pub mod seal;
pub mod tokenize;

pub use path::ColumnPath;
pub use sluice_pipeline::Transform;

use std::sync::Arc;

use crate::encrypt::{Encrypt, Keyring};
use crate::fpe::{EncryptFpe, Ff1Cipher, FpeFormat};
use crate::generalize::{Generalization, Generalize};
use crate::hash::Hash;
use crate::keys::Secret;
use crate::mask::{Mask, MaskPartial};
use crate::memo::Memo;
use crate::redact::{Redact, Redactor};
use crate::tokenize::Tokenize;

/// Every action that rewrites a text column in place, in each form it takes on text, on
/// `column`, keyed by `key` where it needs a key (`encrypt` takes the column as its own
/// subject): mask (empty and to a literal), mask_partial (with an ASCII and a non-ASCII
/// mask), hash, tokenize, encrypt_fpe (card numbers and digits), redact, encrypt and
/// generalize to an outward code. `drop` (which removes the column) and the
/// generalizations of dates and numbers are left out. Unlimited: the policy wraps the
/// actions that read whole values in [`limit::Limited`].
///
/// What the property tests and the fuzz target run every value through.
///
/// # Panics
///
/// If `column` is not a column path.
pub fn every_text_action(column: &str, key: &[u8]) -> Vec<Box<dyn Transform>> {
    let path = || ColumnPath::parse(column).expect("a column path");
    vec![
        Box::new(Mask {
            path: path(),
            literal: None,
        }),
        Box::new(Mask {
            path: path(),
            literal: Some("x".into()),
        }),
        Box::new(MaskPartial {
            path: path(),
            keep_last: 4,
            mask_char: '*',
        }),
        Box::new(MaskPartial {
            path: path(),
            keep_last: 0,
            mask_char: '😀',
        }),
        Box::new(Hash {
            path: path(),
            salt: key.to_vec(),
            memo: Memo::default(),
        }),
        Box::new(Tokenize {
            path: path(),
            key_id: "k".into(),
            key: key.to_vec(),
            memo: Memo::default(),
        }),
        Box::new(EncryptFpe {
            path: path(),
            cipher: Ff1Cipher::new(key, FpeFormat::Pan),
            memo: Memo::default(),
        }),
        Box::new(EncryptFpe {
            path: path(),
            cipher: Ff1Cipher::new(key, FpeFormat::Digits),
            memo: Memo::default(),
        }),
        Box::new(Redact {
            path: path(),
            redactor: Arc::new(Redactor::new()),
        }),
        Box::new(Encrypt {
            path: path(),
            subject: path(),
            keyring: Arc::new(Keyring::new("k", &Secret::new(key.to_vec()))),
        }),
        Box::new(Generalize {
            path: path(),
            to: Generalization::Outward,
        }),
    ]
}

#[cfg(test)]
mod tests {
    //! Properties every action shares: one output row per input row, nulls stay null.

    use std::sync::Arc;

    use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
    use proptest::prelude::*;

    fn actions() -> Vec<Box<dyn crate::Transform>> {
        crate::every_text_action("v", b"property test secret")
    }

    proptest! {
        #[test]
        fn every_action_keeps_rows_and_nulls(
            values in proptest::collection::vec(
                // Shapes the actions look for, and any text at all: every character of
                // Unicode, any length (up to a kilobyte).
                proptest::option::of(prop_oneof![
                    "[0-9]{7,19}|[A-Z]{1,2}[0-9] [0-9][A-Z]{2}|[a-z .@]{0,30}",
                    "\\PC{0,40}",
                    any::<String>(),
                    "[0-9\\p{Nd} -]{0,80}",
                    "\\PC{0,1024}",
                ]),
                0..60,
            )
        ) {
            let column: ArrayRef = Arc::new(StringArray::from(values.clone()));
            let batch = RecordBatch::try_from_iter([("v", column)]).expect("batch");
            for action in actions() {
                action.output_schema(&batch.schema()).expect("accepted");
                // Rows an action cannot handle are set aside first, as the runner does.
                let rejected = action.reject(&batch).expect("reject");
                let keep: Vec<bool> = (0..batch.num_rows()).map(|i| !rejected.iter().any(|r| r.0 == i)).collect();
                let input = arrow::compute::filter_record_batch(&batch, &keep.clone().into()).expect("filter");
                let out = action.apply(input.clone()).expect("apply");
                prop_assert_eq!(out.num_rows(), input.num_rows(), "{}", action.name());
                let (a, b) = (input.column(0), out.column(0));
                for i in 0..a.len() {
                    prop_assert_eq!(a.is_null(i), b.is_null(i), "{} row {}", action.name(), i);
                }
            }
        }
    }
}
