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
//! format-preserving encryption, Luhn-valid for card numbers). [`policy::Policy`] builds
//! them from the `[pii]` config, with the keys it names and the [`seal::DeadLetterSeal`]
//! that encrypts dead letters. Secrets are
//! never printed: their `Debug` forms hide them.

pub mod drop;
pub mod fpe;
pub mod generalize;
pub mod hash;
pub mod keys;
pub mod mask;
pub mod memo;
pub mod path;
pub mod policy;
pub mod redact;
pub mod seal;
pub mod tokenize;

pub use path::ColumnPath;
pub use sluice_pipeline::Transform;
