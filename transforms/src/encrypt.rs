//! `encrypt`: crypto-shredding. Each value is encrypted (AES-256-GCM) under a data key of
//! its own subject, named by another column of the row (`subject = "customer_id"`).
//!
//! Data keys are random, one per subject, created the first time a subject is seen and
//! kept in the subject key store wrapped under a master key of `[pii.keys]`; the store
//! knows a subject only by a keyed hash of its identifier. Erasure deletes the subject's
//! keys from the store, after which every copy of its encrypted values, wherever it went
//! (backups, exports, files older than the erasure), is noise.
//!
//! A value is `enc_<master key id>_<data key id, hex>_<base64url of nonce, ciphertext and
//! tag>`; the data key id is bound to the ciphertext as associated data. `sluice reveal`
//! decrypts while the key exists.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, AeadInOut as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sluice_pipeline::key_cache::{KeyCache, StoredKey};
use sluice_pipeline::{Result, Transform};

use crate::keys::{Secret, derive_key};
use crate::path::{
    ColumnPath, arrow_error, check, column_at, is_unavailable, map_column, replace_field,
    schema_error,
};

const NONCE_BYTES: usize = 12;
const KEY_ID_BYTES: usize = 12;
/// Ciphers kept per batch (≈ 1 KiB each); beyond them a subject's cipher is set up per value.
const CACHED_CIPHERS: usize = 16_384;
/// Data keys kept in memory (≈ 100 bytes each with the map's overhead, so ≈ 100 MiB).
/// A producer sending a new subject in every message would otherwise grow the process
/// without bound. Beyond it the keys not used for longest are dropped; a subject whose
/// key was dropped gets a new data key when it is next seen (the store then holds two
/// for it: erasure removes every key of a subject, and each value names its own key).
pub const MAX_CACHED_KEYS: usize = 1 << 20;

/// A data key in memory: its id and the key.
#[derive(Clone, Copy)]
struct DataKey {
    id: [u8; KEY_ID_BYTES],
    key: [u8; 32],
}

struct State {
    /// At most this many data keys in `keys` and `older` together ([`MAX_CACHED_KEYS`]
    /// unless set).
    max_keys: usize,
    /// By keyed hash of the subject: the keys used since `older` was filled.
    keys: HashMap<[u8; 32], DataKey>,
    /// The keys of the generation before, dropped when `keys` fills up again; a key used
    /// meanwhile moves back to `keys`. Both together hold at most `max_keys`.
    older: HashMap<[u8; 32], DataKey>,
    /// Created since the last [`KeyCache::take_new`].
    new: Vec<StoredKey>,
}

impl State {
    fn new(max_keys: usize) -> Self {
        Self {
            max_keys,
            keys: HashMap::new(),
            older: HashMap::new(),
            new: Vec::new(),
        }
    }

    fn get(&mut self, subject: &[u8; 32]) -> Option<DataKey> {
        if let Some(k) = self.keys.get(subject) {
            return Some(*k);
        }
        let k = self.older.remove(subject)?;
        self.insert(*subject, k);
        Some(k)
    }

    /// Keep `key` for `subject`, dropping the older generation when the newer one holds
    /// half of `max_keys` (so neither ever holds more than half).
    fn insert(&mut self, subject: [u8; 32], key: DataKey) {
        if self.keys.len() >= self.max_keys / 2 {
            self.older = std::mem::take(&mut self.keys);
        }
        self.keys.insert(subject, key);
    }

    fn cached(&self) -> usize {
        self.keys.len() + self.older.len()
    }
}

/// The data keys of one master key: created, wrapped, cached, unwrapped.
pub struct Keyring {
    master: String,
    kek: Aes256Gcm,
    subject_mac: Hmac<Sha256>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

fn failure(reason: String) -> sluice_pipeline::Error {
    sluice_pipeline::Error::Transform {
        transform: "encrypt".into(),
        source: arrow::error::ArrowError::ComputeError(reason),
    }
}

fn fill_random(out: &mut [u8]) -> Result<()> {
    getrandom::fill(out).map_err(|e| failure(format!("no random source available: {e}")))
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

fn wrap_aad(master: &str, subject: &str, key_id: &str) -> Vec<u8> {
    format!("{master}\u{0}{subject}\u{0}{key_id}").into_bytes()
}

/// The parts of an encrypted value: master key id, data key id (hex), sealed bytes.
pub fn parse_value(value: &str) -> Option<(&str, &str, Vec<u8>)> {
    let rest = value.strip_prefix("enc_")?;
    let mut parts = rest.splitn(3, '_');
    let (master, key_id, sealed) = (parts.next()?, parts.next()?, parts.next()?);
    let sealed = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    (key_id.len() == 2 * KEY_ID_BYTES && sealed.len() > NONCE_BYTES)
        .then_some((master, key_id, sealed))
}

impl Keyring {
    /// The keyring of master key `master`.
    pub fn new(master: &str, secret: &Secret) -> Self {
        let mac_key = derive_key(secret.bytes(), b"sluice subject ids v1");
        Self {
            master: master.to_string(),
            kek: Aes256Gcm::new(&derive_key(secret.bytes(), b"sluice subject keys v1").into()),
            subject_mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
            state: Mutex::new(State::new(MAX_CACHED_KEYS)),
        }
    }

    /// The same keyring keeping at most `max_keys` data keys in memory.
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .max_keys = max_keys.max(2);
        self
    }

    /// Data keys held in memory now.
    pub fn cached_keys(&self) -> usize {
        self.lock().cached()
    }

    /// Id of the master key.
    pub fn master(&self) -> &str {
        &self.master
    }

    fn subject_ref(&self, subject: &[u8]) -> [u8; 32] {
        let mut mac = self.subject_mac.clone();
        mac.update(subject);
        mac.finalize().into_bytes().into()
    }

    /// How the store names `subject` (hex): what erasure looks for.
    pub fn subject_id(&self, subject: &[u8]) -> String {
        hex::encode(self.subject_ref(subject))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map: take it over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The data key of `subject`, created (and queued for the store) when it has none.
    fn key_for(&self, state: &mut State, subject: &[u8]) -> Result<DataKey> {
        let r = self.subject_ref(subject);
        if let Some(k) = state.get(&r) {
            return Ok(k);
        }
        let key = DataKey {
            id: random()?,
            key: random()?,
        };
        let (subject, key_id) = (hex::encode(r), hex::encode(key.id));
        let nonce: [u8; NONCE_BYTES] = random()?;
        let aad = wrap_aad(&self.master, &subject, &key_id);
        let wrapped = self
            .kek
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &key.key,
                    aad: &aad,
                },
            )
            .map_err(|_| failure("cannot wrap a key".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&wrapped);
        state.new.push(StoredKey {
            master: self.master.clone(),
            subject,
            key_id,
            wrapped: STANDARD.encode(sealed),
            created_at: chrono::Utc::now().timestamp_micros(),
        });
        state.insert(r, key);
        Ok(key)
    }

    fn unwrap_key(&self, stored: &StoredKey) -> std::result::Result<DataKey, String> {
        let bad = || {
            format!(
                "data key {} does not open under master key '{}' (wrong key?)",
                stored.key_id, self.master
            )
        };
        let sealed = STANDARD.decode(&stored.wrapped).map_err(|_| bad())?;
        if sealed.len() <= NONCE_BYTES {
            return Err(bad());
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| bad())?;
        let aad = wrap_aad(&self.master, &stored.subject, &stored.key_id);
        let key = self
            .kek
            .decrypt(&nonce, Payload { msg: ct, aad: &aad })
            .map_err(|_| bad())?;
        let id = hex::decode(&stored.key_id).map_err(|_| bad())?;
        Ok(DataKey {
            id: id.try_into().map_err(|_| bad())?,
            key: key.try_into().map_err(|_| bad())?,
        })
    }

    /// Decrypt `value` with the data key `stored` (the store's row for the value's key id).
    pub fn open(&self, value: &str, stored: &StoredKey) -> std::result::Result<String, String> {
        let (master, key_id, sealed) =
            parse_value(value).ok_or("not a value of an encrypt column")?;
        if master != self.master || key_id != stored.key_id {
            return Err(format!(
                "the value is under data key {key_id} of master key '{master}', not {} of '{}'",
                stored.key_id, self.master
            ));
        }
        let key = self.unwrap_key(stored)?;
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| "bad nonce")?;
        let plain = Aes256Gcm::new(&key.key.into())
            .decrypt(
                &nonce,
                Payload {
                    msg: ct,
                    aad: &key.id,
                },
            )
            .map_err(|_| "the value does not open under its data key (tampered?)".to_string())?;
        String::from_utf8(plain).map_err(|_| "the value is not text".to_string())
    }
}

impl KeyCache for Keyring {
    fn take_new(&self) -> Vec<StoredKey> {
        std::mem::take(&mut self.lock().new)
    }

    fn load(&self, keys: &[StoredKey]) -> std::result::Result<(), String> {
        let mut loaded = Vec::new();
        for k in keys.iter().filter(|k| k.master == self.master) {
            let key = self.unwrap_key(k)?;
            let subject: [u8; 32] = hex::decode(&k.subject)
                .ok()
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| format!("data key {}: malformed subject", k.key_id))?;
            loaded.push((subject, key));
        }
        let mut state = self.lock();
        for (subject, key) in loaded {
            if state.get(&subject).is_none() {
                state.insert(subject, key);
            }
        }
        Ok(())
    }

    fn cached_ids(&self) -> Vec<String> {
        // Copied under the lock, spelled out after it: encrypting waits only for the copy.
        let ids: Vec<[u8; KEY_ID_BYTES]> = {
            let state = self.lock();
            let keys = state.keys.values().chain(state.older.values());
            keys.map(|k| k.id).collect()
        };
        ids.iter().map(hex::encode).collect()
    }

    fn retain(&self, present: &HashSet<String>) {
        let mut state = self.lock();
        let State {
            keys, older, new, ..
        } = &mut *state;
        // Keys not stored yet are not lost: they are written with the next commit.
        let pending: HashSet<&str> = new.iter().map(|k| k.key_id.as_str()).collect();
        let kept = |k: &DataKey| {
            let id = hex::encode(k.id);
            present.contains(&id) || pending.contains(id.as_str())
        };
        keys.retain(|_, k| kept(k));
        older.retain(|_, k| kept(k));
    }
}

/// Encryption of one column under the data key of each row's subject; the column becomes
/// a string column.
#[derive(Debug, Clone)]
pub struct Encrypt {
    pub path: ColumnPath,
    /// The column naming the row's subject.
    pub subject: ColumnPath,
    pub keyring: Arc<Keyring>,
}

/// A subject of the batch being encrypted.
struct BatchSubject {
    key: DataKey,
    /// `enc_<master>_<key id>_`.
    prefix: String,
    cipher: Option<Box<Aes256Gcm>>,
}

/// `prefix` and the base64url of nonce, ciphertext and tag of `plain` into `out`.
fn seal_into(
    out: &mut String,
    buf: &mut Vec<u8>,
    subject: &BatchSubject,
    cipher: &Aes256Gcm,
    nonce: &[u8],
    plain: &[u8],
) -> Result<()> {
    buf.clear();
    buf.extend_from_slice(nonce);
    buf.extend_from_slice(plain);
    let nonce = Nonce::try_from(nonce).map_err(|_| failure("bad nonce".into()))?;
    let tag = cipher
        .encrypt_inout_detached(&nonce, &subject.key.id, (&mut buf[NONCE_BYTES..]).into())
        .map_err(|_| failure("value too long".into()))?;
    buf.extend_from_slice(&tag);
    out.clear();
    out.push_str(&subject.prefix);
    URL_SAFE_NO_PAD.encode_string(&buf, out);
    Ok(())
}

fn accepted(dt: &DataType) -> bool {
    dt.is_primitive()
        || matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
}

impl Encrypt {
    /// The subject of each row as text (null where it has none).
    fn subjects(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        let column = column_at(batch, &self.subject, self.name())?;
        cast(&column, &DataType::Utf8).map_err(|e| arrow_error(self.name(), e))
    }
}

impl Transform for Encrypt {
    fn name(&self) -> &str {
        "encrypt"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.subject, &accepted).map_err(|e| match e {
            sluice_pipeline::Error::TransformSchema { reason, .. } => schema_error(
                self.name(),
                &format!("subject column '{}': {reason}", self.subject),
            ),
            other => other,
        })?;
        check(self.name(), input, &self.path, &accepted)?;
        Ok(replace_field(input, &self.path, &|f| {
            f.clone().with_data_type(DataType::Utf8)
        }))
    }

    fn reject(&self, batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
        let values = column_at(batch, &self.path, self.name())?;
        let subjects = self.subjects(batch)?;
        let subjects = subjects.as_string::<i32>();
        Ok((0..batch.num_rows())
            .filter(|&i| values.is_valid(i) && (subjects.is_null(i) || subjects.value(i).is_empty()))
            .map(|i| {
                (
                    i,
                    format!(
                        "column '{}' holds a value but the row has no subject in '{}' to encrypt it for",
                        self.path, self.subject
                    ),
                )
            })
            .collect())
    }

    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let subjects = self.subjects(&batch)?;
        let subjects = subjects.as_string::<i32>();
        let name = self.name();
        let ring = &self.keyring;
        map_column(&batch, &self.path, name, &|array| {
            let text = cast(array, &DataType::Utf8).map_err(|e| arrow_error(name, e))?;
            let text = text.as_string::<i32>();
            let mut nonces = vec![0u8; NONCE_BYTES * text.len()];
            fill_random(&mut nonces)?;
            // One key lookup per subject of the batch, and its cipher for the first many.
            let mut seen: HashMap<&str, BatchSubject> = HashMap::new();
            let mut state = ring.lock();
            let mut out = StringBuilder::with_capacity(text.len(), text.value_data().len() * 2);
            let (mut buf, mut value) = (Vec::new(), String::new());
            for i in 0..text.len() {
                let v = text.is_valid(i).then(|| text.value(i));
                let Some(v) = v.filter(|v| !is_unavailable(Some(v))) else {
                    out.append_option(v);
                    continue;
                };
                if subjects.is_null(i) {
                    return Err(schema_error(
                        name,
                        "a row without a subject reached encrypt",
                    ));
                }
                let subject = subjects.value(i);
                let cached = seen.len() < CACHED_CIPHERS;
                let entry = match seen.entry(subject) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let key = ring.key_for(&mut state, subject.as_bytes())?;
                        e.insert(BatchSubject {
                            prefix: format!("enc_{}_{}_", ring.master, hex::encode(key.id)),
                            cipher: cached.then(|| Box::new(Aes256Gcm::new(&key.key.into()))),
                            key,
                        })
                    }
                };
                let nonce = &nonces[i * NONCE_BYTES..(i + 1) * NONCE_BYTES];
                match &entry.cipher {
                    Some(c) => seal_into(&mut value, &mut buf, entry, c, nonce, v.as_bytes())?,
                    None => {
                        let c = Aes256Gcm::new(&entry.key.key.into());
                        seal_into(&mut value, &mut buf, entry, &c, nonce, v.as_bytes())?
                    }
                }
                out.append_value(&value);
            }
            Ok(Arc::new(out.finish()) as ArrayRef)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn ring(secret: &[u8]) -> Arc<Keyring> {
        Arc::new(Keyring::new("shred", &Secret::new(secret.to_vec())))
    }

    fn encrypt(ring: &Arc<Keyring>) -> Encrypt {
        Encrypt {
            path: ColumnPath::parse("name").expect("path"),
            subject: ColumnPath::parse("customer").expect("path"),
            keyring: Arc::clone(ring),
        }
    }

    fn batch(customers: Vec<Option<&str>>, names: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "customer",
                Arc::new(StringArray::from(customers)) as ArrayRef,
            ),
            ("name", Arc::new(StringArray::from(names)) as ArrayRef),
        ])
        .expect("batch")
    }

    fn values(b: &RecordBatch) -> Vec<Option<String>> {
        b.column(1)
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn each_subject_gets_one_key_and_values_open_only_with_it() {
        let ring = ring(b"0123456789abcdef0123");
        let t = encrypt(&ring);
        let input = batch(
            vec![Some("C1"), Some("C2"), Some("C1"), Some("C3")],
            vec![Some("Jane Doe"), Some("John Roe"), Some("Jane Doe"), None],
        );
        t.output_schema(&input.schema()).expect("schema");
        let out = values(&t.apply(input).expect("apply"));
        assert_eq!(out[3], None, "nulls stay null");
        let (a, b, c) = (
            out[0].clone().expect("a"),
            out[1].clone().expect("b"),
            out[2].clone().expect("c"),
        );
        assert!(a.starts_with("enc_shred_") && !a.contains("Jane"), "{a}");
        assert_ne!(a, c, "a fresh nonce for every value");
        let stored = ring.take_new();
        assert_eq!(stored.len(), 2, "one key per subject with a value");
        assert!(ring.take_new().is_empty());
        let key_of = |v: &str| {
            let id = parse_value(v).expect("parse").1.to_string();
            stored
                .iter()
                .find(|k| k.key_id == id)
                .expect("stored")
                .clone()
        };
        assert_eq!(ring.open(&a, &key_of(&a)).expect("open"), "Jane Doe");
        assert_eq!(ring.open(&c, &key_of(&c)).expect("open"), "Jane Doe");
        assert_eq!(ring.open(&b, &key_of(&b)).expect("open"), "John Roe");
        assert!(ring.open(&a, &key_of(&b)).is_err(), "another subject's key");
        // The store never sees the subject's identifier.
        for k in &stored {
            assert_eq!(k.subject.len(), 64);
            // `wrapped` is random base64 and may hold "C1" by chance: check the rest.
            let named = format!("{} {} {}", k.master, k.subject, k.key_id);
            assert!(!named.contains("C1"), "{named}");
        }
        // The same subject in a later batch keeps its key: nothing new to store.
        t.apply(batch(vec![Some("C2")], vec![Some("x")]))
            .expect("apply");
        assert!(ring.take_new().is_empty());
    }

    #[test]
    fn keys_in_memory_stay_bounded_and_a_subject_whose_key_was_dropped_gets_another() {
        let ring = Arc::new(
            Keyring::new("shred", &Secret::new(b"0123456789abcdef0123".to_vec())).with_max_keys(4),
        );
        let t = encrypt(&ring);
        let mut values_of = Vec::new();
        // A subject used in every batch beside a stream of new ones (non-ASCII ids too).
        for n in 0..40 {
            let fresh = format!("Zoë-{n}");
            let out = values(
                &t.apply(batch(
                    vec![Some("hot"), Some(fresh.as_str())],
                    vec![Some("warm"), Some("cold")],
                ))
                .expect("apply"),
            );
            assert!(ring.cached_keys() <= 4, "{} keys held", ring.cached_keys());
            values_of.push((fresh, out));
        }
        let stored = ring.take_new();
        let hot = ring.subject_id(b"hot");
        assert_eq!(
            stored.iter().filter(|k| k.subject == hot).count(),
            1,
            "a subject in every batch keeps its one key"
        );
        // The first new subject again: its key was dropped long ago, so it gets a second.
        let again = values(
            &t.apply(batch(vec![Some("Zoë-0")], vec![Some("cold again")]))
                .expect("apply"),
        );
        let second = ring.take_new();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].subject, ring.subject_id("Zoë-0".as_bytes()));
        // Every value opens with the key it names, old and new alike.
        let all: Vec<StoredKey> = stored.into_iter().chain(second).collect();
        let open = |v: &str| {
            let id = parse_value(v).expect("parse").1.to_string();
            let key = all.iter().find(|k| k.key_id == id).expect("stored key");
            ring.open(v, key).expect("open")
        };
        assert_eq!(open(values_of[0].1[1].as_deref().expect("v")), "cold");
        assert_eq!(open(values_of[39].1[0].as_deref().expect("v")), "warm");
        assert_eq!(open(again[0].as_deref().expect("v")), "cold again");
        // Loading a store larger than the bound keeps the bound.
        let fresh =
            Keyring::new("shred", &Secret::new(b"0123456789abcdef0123".to_vec())).with_max_keys(4);
        fresh.load(&all).expect("load");
        assert!(fresh.cached_keys() <= 4);
    }

    #[test]
    fn a_wrapped_key_opens_only_under_its_master_and_for_its_subject() {
        let ring = ring(b"0123456789abcdef0123");
        let t = encrypt(&ring);
        let out = values(
            &t.apply(batch(vec![Some("C1")], vec![Some("Jane")]))
                .expect("apply"),
        );
        let mut stored = ring.take_new().remove(0);
        let other = Keyring::new("shred", &Secret::new(b"another master secret".to_vec()));
        assert!(other.open(out[0].as_deref().expect("v"), &stored).is_err());
        assert!(other.load(std::slice::from_ref(&stored)).is_err());
        // Moving the wrapped key to another subject's row breaks it.
        stored.subject = ring.subject_id(b"C2");
        assert!(ring.open(out[0].as_deref().expect("v"), &stored).is_err());
    }

    #[test]
    fn rows_with_a_value_but_no_subject_are_rejected() {
        let ring = ring(b"0123456789abcdef0123");
        let t = encrypt(&ring);
        let input = batch(
            vec![None, Some("C1"), None, Some("")],
            vec![Some("orphan"), Some("ok"), None, Some("empty id")],
        );
        let rejected: Vec<usize> = t
            .reject(&input)
            .expect("reject")
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(rejected, vec![0, 3]);
    }

    #[test]
    fn a_forgotten_key_is_replaced_and_loaded_keys_are_reused() {
        let ring = ring(b"0123456789abcdef0123");
        let t = encrypt(&ring);
        t.apply(batch(vec![Some("C1")], vec![Some("a")]))
            .expect("apply");
        let first = ring.take_new();
        // A restart: a new keyring loads the store and encrypts under the same key.
        let restarted = self::ring(b"0123456789abcdef0123");
        restarted.load(&first).expect("load");
        let t2 = encrypt(&restarted);
        let v = values(
            &t2.apply(batch(vec![Some("C1")], vec![Some("b")]))
                .expect("apply"),
        );
        assert!(restarted.take_new().is_empty());
        // The ids it reports as cached are the stored ids of the keys it holds.
        assert_eq!(restarted.cached_ids(), [first[0].key_id.clone()]);
        assert_eq!(
            restarted
                .open(v[0].as_deref().expect("v"), &first[0])
                .expect("open"),
            "b"
        );
        // Erased from the store: the next value of the subject gets a new key.
        restarted.retain(&HashSet::new());
        let v = values(
            &t2.apply(batch(vec![Some("C1")], vec![Some("c")]))
                .expect("apply"),
        );
        let second = restarted.take_new();
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].key_id, first[0].key_id);
        assert_eq!(restarted.cached_ids(), [second[0].key_id.clone()]);
        assert!(
            restarted
                .open(v[0].as_deref().expect("v"), &first[0])
                .is_err()
        );
    }

    #[test]
    fn numbers_are_encrypted_as_text() {
        let ring = ring(b"0123456789abcdef0123");
        let t = Encrypt {
            path: ColumnPath::parse("n").expect("path"),
            subject: ColumnPath::parse("s").expect("path"),
            keyring: Arc::clone(&ring),
        };
        let input = RecordBatch::try_from_iter([
            ("s", Arc::new(Int64Array::from(vec![7])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![42])) as ArrayRef),
        ])
        .expect("batch");
        let schema = t.output_schema(&input.schema()).expect("schema");
        assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
        let out = t.apply(input).expect("apply");
        let v = out.column(1).as_string::<i32>().value(0).to_string();
        assert_eq!(ring.open(&v, &ring.take_new()[0]).expect("open"), "42");
    }
}
