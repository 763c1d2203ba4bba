//! `encrypt_fpe`: format-preserving encryption of the digits of a value (NIST SP 800-38G
//! FF1 over AES-256, from the `fpe` crate).
//!
//! Every ASCII digit of the value is encrypted as one FF1 numeral string of radix 10;
//! every other character (spaces, dashes, a leading `+`) stays where it is. The output
//! has the same length and alphabet as the input, the same value always gives the same
//! output under the same key (so encrypted columns still join), and only the key turns it
//! back (`sluice reveal`).
//!
//! With [`FpeFormat::Pan`] the last digit is treated as a Luhn check digit: the other
//! digits are encrypted and the check digit moves by the same amount the Luhn digit of
//! the body moves, so a Luhn-valid card number encrypts to a Luhn-valid card number, and
//! any digit string (valid or not) decrypts back exactly.
//!
//! FF1 needs a domain of at least a million values: a value with 1 to 5 digits to encrypt
//! (6 for a PAN) cannot be encrypted safely and its row is rejected (it goes to the
//! dead-letter table, sealed). A value with no digit at all is kept as it is.

use std::sync::Arc;

use aes::Aes256;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, SchemaRef};
use fpe::ff1::{FF1, FlexibleNumeralString, NumeralString};
use sluice_pipeline::{Result, Transform};

use crate::keys::derive_key;
use crate::memo::Memo;
use crate::path::{ColumnPath, check, column_at, map_column};

/// Fewest digits FF1 encrypts with radix 10 (10^6 = the minimum domain size).
pub const MIN_DIGITS: usize = 6;

/// Most digits encrypted in one value unless configured otherwise (`pii.max_fpe_digits`):
/// beyond 38 digits FF1 runs on big integers and its cost grows with the square of the
/// length, so a hostile value of 200,000 digits would take a minute.
pub const DEFAULT_MAX_DIGITS: usize = 64;

/// Which digits are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpeFormat {
    /// Every digit (account numbers, phone numbers, sort codes).
    Digits,
    /// A card number: every digit but the Luhn check digit, which is carried along so
    /// that Luhn validity is kept.
    Pan,
}

/// Most digits a [`Decimal`] half holds: 10^19 < 2^64, so every value and modulus fits a
/// `u128` with room for the carries of one round.
const MAX_HALF_DIGITS: usize = 19;

/// A radix-10 numeral string for FF1 whose halves are machine integers instead of big
/// integers (the `fpe` crate's `FlexibleNumeralString`), for strings of up to 38 digits:
/// the same cipher, far less arithmetic per round.
struct Decimal(Vec<u16>);

/// One half of a [`Decimal`]: its value and its number of digits.
struct Half {
    value: u128,
    len: usize,
}

/// Big-endian bytes of a [`Half`], the last `len` of a `u128`.
struct HalfBytes {
    buf: [u8; 16],
    len: usize,
}

impl AsRef<[u8]> for HalfBytes {
    fn as_ref(&self) -> &[u8] {
        &self.buf[16 - self.len..]
    }
}

impl Half {
    fn of(digits: &[u16]) -> Self {
        Half {
            value: digits
                .iter()
                .fold(0u128, |acc, d| acc * 10 + u128::from(*d)),
            len: digits.len(),
        }
    }
    fn digits(&self) -> Vec<u16> {
        let mut out = vec![0u16; self.len];
        let mut v = self.value;
        for d in out.iter_mut().rev() {
            *d = (v % 10) as u16;
            v /= 10;
        }
        out
    }
    /// `other` (big-endian bytes) reduced modulo `modulus`.
    fn reduce(other: impl Iterator<Item = u8>, modulus: u128) -> u128 {
        other.fold(0u128, |acc, b| (acc * 256 + u128::from(b)) % modulus)
    }
}

impl fpe::ff1::Operations for Half {
    type Bytes = HalfBytes;

    fn numeral_count(&self) -> usize {
        self.len
    }
    fn to_be_bytes(&self, _radix: u32, b: usize) -> HalfBytes {
        HalfBytes {
            buf: self.value.to_be_bytes(),
            len: b.min(16),
        }
    }
    fn add_mod_exp(self, other: impl Iterator<Item = u8>, _radix: u32, m: usize) -> Self {
        let modulus = 10u128.pow(m as u32);
        let y = Half::reduce(other, modulus);
        Half {
            value: (self.value % modulus + y) % modulus,
            len: m,
        }
    }
    fn sub_mod_exp(self, other: impl Iterator<Item = u8>, _radix: u32, m: usize) -> Self {
        let modulus = 10u128.pow(m as u32);
        let y = Half::reduce(other, modulus);
        Half {
            value: (self.value % modulus + modulus - y) % modulus,
            len: m,
        }
    }
}

impl NumeralString for Decimal {
    type Ops = Half;

    fn is_valid(&self, radix: u32) -> bool {
        radix == 10 && self.0.iter().all(|d| *d < 10)
    }
    fn numeral_count(&self) -> usize {
        self.0.len()
    }
    fn split(&self) -> (Half, Half) {
        let (a, b) = self.0.split_at(self.0.len() / 2);
        (Half::of(a), Half::of(b))
    }
    fn concat(a: Half, b: Half) -> Self {
        let mut digits = a.digits();
        digits.extend(b.digits());
        Decimal(digits)
    }
}

/// FF1 under a key derived from a secret; shared by `encrypt_fpe` and `sluice reveal`.
#[derive(Clone)]
pub struct Ff1Cipher {
    ff1: Arc<FF1<Aes256>>,
    format: FpeFormat,
    max_digits: usize,
}

impl std::fmt::Debug for Ff1Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ff1Cipher")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Why a value cannot go through FF1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FpeError {
    TooFewDigits { digits: usize, min: usize },
    TooManyDigits { digits: usize, max: usize },
}

impl std::fmt::Display for FpeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FpeError::TooFewDigits { digits, min } => write!(
                f,
                "{digits} digit(s) to encrypt; format-preserving encryption needs at least {min}"
            ),
            FpeError::TooManyDigits { digits, max } => {
                write!(f, "{digits} digits to encrypt; pii.max_fpe_digits is {max}")
            }
        }
    }
}

/// The Luhn check digit of `body`.
fn luhn_digit(body: &[u16]) -> u16 {
    crate::luhn::check_digit(body.iter().map(|d| u32::from(*d))) as u16
}

/// FF1 one way or the other over any numeral string. Callers check length and radix
/// first, so FF1 cannot refuse it.
fn ff1_run<NS: NumeralString>(ff1: &FF1<Aes256>, ns: NS, encrypt: bool) -> NS {
    let out = if encrypt {
        ff1.encrypt(&[], &ns)
    } else {
        ff1.decrypt(&[], &ns)
    };
    out.unwrap_or_else(|_| unreachable!("length and radix are checked first"))
}

impl Ff1Cipher {
    /// A cipher for `format` under the AES-256 key derived from `secret`.
    pub fn new(secret: &[u8], format: FpeFormat) -> Self {
        let key = derive_key(secret, b"sluice encrypt_fpe v1");
        // Radix 10 is always valid, so `new` cannot fail.
        let ff1 = FF1::<Aes256>::new(&key, 10).unwrap_or_else(|_| unreachable!("radix 10"));
        Self {
            ff1: Arc::new(ff1),
            format,
            max_digits: DEFAULT_MAX_DIGITS,
        }
    }

    /// The same cipher, refusing values with more than `max` digits.
    pub fn with_max_digits(mut self, max: usize) -> Self {
        self.max_digits = max;
        self
    }

    fn min_digits(&self) -> usize {
        match self.format {
            FpeFormat::Digits => MIN_DIGITS,
            FpeFormat::Pan => MIN_DIGITS + 1,
        }
    }

    /// Whether `value` can be encrypted.
    pub fn check(&self, value: &str) -> std::result::Result<(), FpeError> {
        let digits = value.bytes().filter(u8::is_ascii_digit).count();
        if digits > self.max_digits {
            Err(FpeError::TooManyDigits {
                digits,
                max: self.max_digits,
            })
        } else if digits == 0 || digits >= self.min_digits() {
            Ok(())
        } else {
            Err(FpeError::TooFewDigits {
                digits,
                min: self.min_digits(),
            })
        }
    }

    /// Encrypt the digits of `value`.
    pub fn encrypt(&self, value: &str) -> std::result::Result<String, FpeError> {
        self.run(value, true)
    }

    /// Decrypt what [`Ff1Cipher::encrypt`] produced.
    pub fn decrypt(&self, value: &str) -> std::result::Result<String, FpeError> {
        self.run(value, false)
    }

    fn run(&self, value: &str, encrypt: bool) -> std::result::Result<String, FpeError> {
        self.check(value)?;
        let digits: Vec<u16> = value
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| u16::from(b - b'0'))
            .collect();
        if digits.is_empty() {
            return Ok(value.to_string());
        }
        let ff1 = |ns: Vec<u16>| -> Vec<u16> {
            if ns.len() <= 2 * MAX_HALF_DIGITS {
                ff1_run(&self.ff1, Decimal(ns), encrypt).0
            } else {
                ff1_run(&self.ff1, FlexibleNumeralString::from(ns), encrypt).into()
            }
        };
        let out = match self.format {
            FpeFormat::Digits => ff1(digits),
            FpeFormat::Pan => {
                let (body, check) = digits.split_at(digits.len() - 1);
                let shift = (check[0] + 10 - luhn_digit(body)) % 10;
                let mut new_body = ff1(body.to_vec());
                // Both ways the check digit keeps its offset from the body's Luhn digit.
                new_body.push((luhn_digit(&new_body) + shift) % 10);
                new_body
            }
        };
        let mut next = out.into_iter();
        Ok(value
            .chars()
            .map(|c| {
                if c.is_ascii_digit() {
                    next.next()
                        .and_then(|d| char::from_digit(u32::from(d), 10))
                        .unwrap_or(c)
                } else {
                    c
                }
            })
            .collect())
    }
}

/// Format-preserving encryption of one string column.
#[derive(Clone, Debug)]
pub struct EncryptFpe {
    pub path: ColumnPath,
    pub cipher: Ff1Cipher,
    pub memo: Memo,
}

impl Transform for EncryptFpe {
    fn name(&self) -> &str {
        "encrypt_fpe"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.path, &|dt| {
            matches!(dt, DataType::Utf8)
        })?;
        Ok(input.clone())
    }
    fn reject(&self, batch: &RecordBatch) -> Result<Vec<(usize, String)>> {
        let column = column_at(batch, &self.path, self.name())?;
        let s = column.as_string::<i32>();
        Ok(s.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                if crate::path::is_unavailable(v) {
                    return None;
                }
                let e = self.cipher.check(v?).err()?;
                Some((i, format!("column '{}': {e}", self.path)))
            })
            .collect())
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let (cipher, memo) = (&self.cipher, &self.memo);
        map_column(&batch, &self.path, "encrypt_fpe", &move |a| {
            let s = a.as_string::<i32>();
            let mut memo = memo.lock();
            let mut out = StringBuilder::with_capacity(s.len(), s.value_data().len());
            for v in s.iter() {
                // Values `reject` refused never reach here; should one, it is nulled, never kept.
                match v.and_then(|v| memo.get_or(v.as_bytes(), || cipher.encrypt(v).ok())) {
                    Some(e) => out.append_value(e),
                    None => out.append_null(),
                }
            }
            let out = out.finish();
            debug_assert_eq!(out.null_count(), a.null_count());
            Ok(Arc::new(out) as ArrayRef)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::luhn_valid;
    use arrow::array::StringArray;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"a test secret of enough bytes";

    #[test]
    fn nist_sp800_38g_ff1_aes256_sample_7() {
        let key = hex::decode("2B7E151628AED2A6ABF7158809CF4F3CEF4359D8D580AA4F7F036D6F04FC6A94")
            .expect("hex");
        let ff1 = FF1::<Aes256>::new(&key, 10).expect("ff1");
        let ct = ff1
            .encrypt(&[], &Decimal((0..10).collect()))
            .expect("encrypt")
            .0;
        assert_eq!(ct, vec![6, 6, 5, 7, 6, 6, 7, 0, 0, 9]);
    }

    #[test]
    fn keeps_length_separators_and_luhn_validity() {
        let c = Ff1Cipher::new(SECRET, FpeFormat::Pan);
        let pan = "4111 1111 1111 1111";
        let enc = c.encrypt(pan).expect("encrypt");
        assert_ne!(enc, pan);
        assert_eq!(enc.len(), pan.len());
        assert_eq!(enc.find(' '), Some(4));
        assert!(luhn_valid(&enc), "{enc}");
        assert_eq!(c.decrypt(&enc).expect("decrypt"), pan);
    }

    #[test]
    fn short_values_are_refused_and_digitless_values_kept() {
        let c = Ff1Cipher::new(SECRET, FpeFormat::Digits);
        assert!(c.encrypt("12-34").is_err());
        assert_eq!(c.encrypt("n/a").expect("no digits"), "n/a");
        assert!(c.encrypt("123456").is_ok());
    }

    #[test]
    fn rejected_rows_are_named_and_others_encrypted() {
        let t = EncryptFpe {
            path: ColumnPath::parse("phone").expect("path"),
            cipher: Ff1Cipher::new(SECRET, FpeFormat::Digits),
            memo: Memo::default(),
        };
        let b = RecordBatch::try_from_iter([(
            "phone",
            Arc::new(StringArray::from(vec![
                Some("+44 7700 900123"),
                Some("999"),
                None,
            ])) as ArrayRef,
        )])
        .expect("batch");
        let rejected = t.reject(&b).expect("reject");
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, 1);
        assert!(!rejected[0].1.contains("999"), "errors never carry values");
        let keep = arrow::array::BooleanArray::from(vec![true, false, true]);
        let b = arrow::compute::filter_record_batch(&b, &keep).expect("filter");
        let out = t.apply(b).expect("apply");
        let s = out.column(0).as_string::<i32>();
        assert!(s.value(0).starts_with('+') && s.value(0).chars().nth(3) == Some(' '));
        assert_ne!(s.value(0), "+44 7700 900123");
        assert!(s.is_null(1));
    }

    #[test]
    fn values_with_too_many_digits_are_rejected_before_any_work() {
        let t = EncryptFpe {
            path: ColumnPath::parse("n").expect("path"),
            cipher: Ff1Cipher::new(SECRET, FpeFormat::Digits).with_max_digits(64),
            memo: Memo::default(),
        };
        let huge = "9".repeat(200_000);
        let b = RecordBatch::try_from_iter([(
            "n",
            Arc::new(StringArray::from(vec![
                Some(huge.as_str()),
                Some(&huge[..64]),
                Some(&huge[..65]),
            ])) as ArrayRef,
        )])
        .expect("batch");
        let rejected = t.reject(&b).expect("reject");
        assert_eq!(
            rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![0, 2],
            "64 digits pass, 65 and 200,000 do not"
        );
        assert!(
            rejected[0].1.contains("pii.max_fpe_digits"),
            "{}",
            rejected[0].1
        );
        assert!(t.cipher.encrypt(&huge[..64]).is_ok());
    }

    proptest! {
        #[test]
        fn machine_integer_halves_give_the_crates_own_results(v in proptest::collection::vec(0u16..10, 6..=38)) {
            let c = Ff1Cipher::new(SECRET, FpeFormat::Digits);
            let ours = c.ff1.encrypt(&[], &Decimal(v.clone())).expect("ours").0;
            let theirs: Vec<u16> = c.ff1.encrypt(&[], &FlexibleNumeralString::from(v)).expect("theirs").into();
            prop_assert_eq!(&ours, &theirs);
            let back = c.ff1.decrypt(&[], &Decimal(ours)).expect("decrypt").0;
            let theirs_back: Vec<u16> = c.ff1.decrypt(&[], &FlexibleNumeralString::from(theirs)).expect("theirs").into();
            prop_assert_eq!(back, theirs_back);
        }

        #[test]
        fn round_trips_and_is_deterministic(v in "[0-9 -]{0,8}[0-9]{6,20}") {
            let c = Ff1Cipher::new(SECRET, FpeFormat::Digits);
            let e = c.encrypt(&v).expect("encrypt");
            prop_assert_eq!(e.len(), v.len());
            prop_assert_eq!(&c.encrypt(&v).expect("again"), &e);
            prop_assert_eq!(c.decrypt(&e).expect("decrypt"), v);
        }

        #[test]
        fn pans_stay_luhn_valid_and_round_trip(body in "[0-9]{12,18}") {
            let check = luhn_digit(&body.bytes().map(|b| u16::from(b - b'0')).collect::<Vec<_>>());
            let pan = format!("{body}{check}");
            prop_assume!(luhn_valid(&pan));
            let c = Ff1Cipher::new(SECRET, FpeFormat::Pan);
            let e = c.encrypt(&pan).expect("encrypt");
            prop_assert!(luhn_valid(&e));
            prop_assert_eq!(c.decrypt(&e).expect("decrypt"), pan);
        }

        #[test]
        fn any_digit_string_round_trips_as_a_pan(v in "[0-9]{7,19}") {
            let c = Ff1Cipher::new(SECRET, FpeFormat::Pan);
            let e = c.encrypt(&v).expect("encrypt");
            prop_assert_eq!(c.decrypt(&e).expect("decrypt"), v);
        }
    }
}
