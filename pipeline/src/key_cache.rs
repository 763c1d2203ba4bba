//! The subject key store's contract at run time: the data keys the `encrypt` transforms
//! create and use ([`KeyCache`]), as the store on the Delta side keeps them
//! ([`StoredKey`]). A key created for a row must be stored before the row commits, and a
//! key the store lost to an erasure must be forgotten.

/// One data key of the subject key store, as stored: never the key itself, never the
/// subject's identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Id of the master key (`[pii.keys]`) wrapping it.
    pub master: String,
    /// Keyed hash of the subject's identifier under the master key (hex).
    pub subject: String,
    /// Random id the encrypted values carry (hex).
    pub key_id: String,
    /// The data key encrypted under the master key, bound to master, subject and key id
    /// (base64 of nonce and ciphertext).
    pub wrapped: String,
    /// When it was created (microseconds since the epoch).
    pub created_at: i64,
}

/// The in-memory side of the subject key store, kept by the `encrypt` transforms: keys
/// they create must be stored before any row encrypted under them commits.
pub trait KeyCache: Send + Sync {
    /// Keys created since the last call.
    fn take_new(&self) -> Vec<StoredKey>;
    /// Cache keys read from the store (those of this cache's master key); an error names
    /// the key id that cannot be unwrapped (wrong master key), never a key.
    fn load(&self, keys: &[StoredKey]) -> std::result::Result<(), String>;
    /// The ids of the keys cached now (as many as the cache keeps, never the store's all).
    fn cached_ids(&self) -> Vec<String>;
    /// Forget every cached key whose id is not in `present`: the store lost it to an
    /// erasure, and nothing more may be encrypted under it.
    fn retain(&self, present: &std::collections::HashSet<String>);
}
