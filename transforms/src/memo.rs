//! A bounded memo of an expensive keyed function (tokenize, hash, encrypt_fpe) from input
//! value to output. Streams repeat their identifiers — a customer id on every event, a
//! card on every payment — so most values are computed once while they are recent.
//!
//! Direct-mapped: a value's hash picks one of [`SLOTS`] slots, which holds the last value
//! that landed there and its output. A lookup is one hash and one comparison; a miss
//! overwrites the slot, reusing its buffers, so memory is fixed and there is nothing to
//! clear. The memo lives in process memory only, where the values are anyway.
//!
//! A lookup that misses costs more than no memo at all (the slot is cold in the CPU
//! cache), so the memo watches its hit rate: after a batch of at least [`MIN_LOOKUPS`]
//! lookups with fewer than one hit in [`MIN_HIT_RATIO`], it stands aside for the next
//! [`REST_BATCHES`] batches, then tries again.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

/// Number of slots (a power of two).
pub const SLOTS: usize = 1 << 16;

/// Longest value kept: identifiers are short, and a slot keeps the longest value it ever
/// held, so longer ones (a megabyte of text in a tokenised field) are computed without
/// the memo. A memo thus holds at most `SLOTS × (MAX_VALUE_BYTES + output)` bytes.
pub const MAX_VALUE_BYTES: usize = 64;

#[derive(Default)]
struct Slot {
    used: bool,
    value: Vec<u8>,
    out: String,
}

/// Lookups a batch needs before its hit rate is judged.
pub const MIN_LOOKUPS: u64 = 1024;
/// A batch with fewer than one hit in this many lookups puts the memo at rest.
pub const MIN_HIT_RATIO: u64 = 5;
/// Batches the memo stays at rest.
pub const REST_BATCHES: u32 = 8;

#[derive(Default)]
struct Table {
    hasher: RandomState,
    slots: Vec<Slot>,
    /// Output of the last lookup while at rest.
    scratch: String,
    lookups: u64,
    hits: u64,
    /// Batches left at rest.
    rest: u32,
}

/// Value → output, bounded.
#[derive(Default)]
pub struct Memo(Mutex<Table>);

impl Clone for Memo {
    /// A clone starts empty: memos are caches, not state.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

/// The memo, locked for one batch.
pub struct Locked<'a>(MutexGuard<'a, Table>);

impl Drop for Locked<'_> {
    /// End of a batch: judge the hit rate.
    fn drop(&mut self) {
        let t = &mut *self.0;
        if t.rest > 0 {
            t.rest -= 1;
        } else if t.lookups >= MIN_LOOKUPS && t.hits * MIN_HIT_RATIO < t.lookups {
            t.rest = REST_BATCHES;
        }
        t.lookups = 0;
        t.hits = 0;
    }
}

impl Memo {
    pub fn lock(&self) -> Locked<'_> {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if t.slots.is_empty() {
            t.slots.resize_with(SLOTS, Slot::default);
        }
        Locked(t)
    }
}

impl Locked<'_> {
    /// The output for `value`, computed by `f` unless the memo holds it.
    pub fn get_or(&mut self, value: &[u8], f: impl FnOnce() -> Option<String>) -> Option<&str> {
        let t = &mut *self.0;
        if t.rest > 0 || value.len() > MAX_VALUE_BYTES {
            t.scratch = f()?;
            return Some(&t.scratch);
        }
        t.lookups += 1;
        let i = (t.hasher.hash_one(value) as usize) & (SLOTS - 1);
        let slot = &mut t.slots[i];
        if slot.used && slot.value == value {
            t.hits += 1;
        } else {
            slot.out = f()?;
            slot.value.clear();
            slot.value.extend_from_slice(value);
            slot.used = true;
        }
        Some(&slot.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_repeated_values_once_and_never_mixes_them_up() {
        let memo = Memo::default();
        let mut calls = 0;
        let mut m = memo.lock();
        for v in [&b"a"[..], b"b", b"a", b"a"] {
            let out = m
                .get_or(v, || {
                    calls += 1;
                    Some(String::from_utf8_lossy(v).into_owned())
                })
                .map(str::to_string);
            assert_eq!(out.as_deref(), Some(std::str::from_utf8(v).expect("utf8")));
        }
        assert_eq!(calls, 2);
        // Far more values than slots: every answer is still the value's own.
        for i in 0..SLOTS * 3 {
            let v = i.to_le_bytes();
            let out = m.get_or(&v, || Some(i.to_string())).map(str::to_string);
            assert_eq!(out, Some(i.to_string()));
        }
        assert_eq!(m.0.slots.len(), SLOTS);
    }

    #[test]
    fn long_values_are_computed_but_never_kept() {
        let memo = Memo::default();
        let mut m = memo.lock();
        let long = vec![b'x'; MAX_VALUE_BYTES + 1];
        let mut calls = 0;
        for _ in 0..2 {
            let out = m
                .get_or(&long, || {
                    calls += 1;
                    Some("out".into())
                })
                .map(str::to_string);
            assert_eq!(out.as_deref(), Some("out"));
        }
        assert_eq!(calls, 2, "computed each time");
        assert!(m.0.slots.iter().all(|s| s.value.len() <= MAX_VALUE_BYTES));
    }

    #[test]
    fn rests_after_a_batch_of_misses_and_tries_again_later() {
        let memo = Memo::default();
        {
            let mut m = memo.lock();
            for i in 0..MIN_LOOKUPS * 2 {
                m.get_or(&i.to_le_bytes(), || Some(i.to_string()));
            }
        }
        for _ in 0..REST_BATCHES {
            let mut m = memo.lock();
            assert_eq!(m.get_or(b"x", || Some("y".into())), Some("y"));
            assert_eq!(m.0.lookups, 0, "at rest");
        }
        let mut m = memo.lock();
        m.get_or(b"x", || Some("y".into()));
        assert_eq!(m.0.lookups, 1, "back at work");
    }
}
