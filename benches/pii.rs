//! Every PII action on a column of 1 M values, column-at-a-time as the runner applies it.
//!
//! `cargo bench --bench pii`. Throughput is in values (rows); figures are per core (the
//! benchmark is single-threaded). Targets: mask/drop ≥ 50 M values/s,
//! tokenize ≥ 2 M/s, redact (free text of ~120 characters, all detectors) ≥ 500 k/s,
//! encrypt_fpe ≥ 300 k/s. `encrypt` (crypto-shredding) runs over 10 k and 1 M subjects,
//! their data keys already made (the steady state; a new subject costs one key, wrapped,
//! once). Every value is distinct and each action's memo (which spares
//! repeated values in a real stream) holds fewer entries than the column, so every value
//! is computed: these are worst-case figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_pipeline::Transform;
use sluice_pipeline::key_cache::KeyCache as _;
use sluice_transforms::ColumnPath;
use sluice_transforms::drop::Drop;
use sluice_transforms::encrypt::{Encrypt, Keyring};
use sluice_transforms::fpe::{EncryptFpe, Ff1Cipher, FpeFormat};
use sluice_transforms::generalize::{Generalization, Generalize};
use sluice_transforms::hash::Hash;
use sluice_transforms::keys::Secret;
use sluice_transforms::luhn;
use sluice_transforms::mask::{Mask, MaskPartial};
use sluice_transforms::memo::Memo;
use sluice_transforms::redact::{Redact, Redactor};
use sluice_transforms::tokenize::Tokenize;

const ROWS: usize = 1_000_000;
const SECRET: &[u8] = b"benchmark secret of 32 bytes....";

/// The columns the actions run on, 1 M rows each, 1 in 20 null.
fn batch() -> RecordBatch {
    let some = |i: usize| !i.is_multiple_of(20);
    let emails: StringArray = (0..ROWS)
        .map(|i| some(i).then(|| format!("customer.{i}@example.co.uk")))
        .collect();
    let pans: StringArray = (0..ROWS)
        .map(|i| some(i).then(|| luhn::complete(&format!("4{:014}", i as u64 * 7919))))
        .collect();
    // ~120 characters, one or two personal values among plain words.
    let notes: StringArray = (0..ROWS)
        .map(|i| {
            some(i).then(|| match i % 4 {
                0 => format!("Customer rang about a declined payment at the weekend; call back on 07700 9{:05} after 5pm today.", i % 100_000),
                1 => format!("Asked for statements to be sent to c.{i}@example.org instead of the branch; identity checked by KYC team."),
                2 => format!("Card ending {:04} reported lost near SW1A 1AA, replacement ordered and old card blocked at 14:05.", i % 10_000),
                _ => "Complained about the overdraft fee on the current account, refund of the charge agreed by the manager.".to_string(),
            })
        })
        .collect();
    let amounts: Int64Array = (0..ROWS)
        .map(|i| some(i).then_some(i as i64 * 37))
        .collect();
    let dates: Date32Array = (0..ROWS)
        .map(|i| some(i).then_some((i % 30_000) as i32))
        .collect();
    let customers_10k: StringArray = (0..ROWS)
        .map(|i| Some(format!("C{:07}", i % 10_000)))
        .collect();
    let customers_1m: StringArray = (0..ROWS).map(|i| Some(format!("C{i:07}"))).collect();
    RecordBatch::try_from_iter([
        ("customer_10k", Arc::new(customers_10k) as ArrayRef),
        ("customer_1m", Arc::new(customers_1m)),
        ("email", Arc::new(emails) as ArrayRef),
        ("pan", Arc::new(pans)),
        ("notes", Arc::new(notes)),
        ("amount", Arc::new(amounts)),
        ("dob", Arc::new(dates)),
    ])
    .expect("batch")
}

fn path(p: &str) -> ColumnPath {
    ColumnPath::parse(p).expect("path")
}

fn actions(rings: &[Arc<Keyring>; 2]) -> Vec<(&'static str, Box<dyn Transform>)> {
    vec![
        (
            "drop",
            Box::new(Drop {
                path: path("email"),
            }),
        ),
        (
            "mask_string",
            Box::new(Mask {
                path: path("email"),
                literal: None,
            }),
        ),
        (
            "mask_long",
            Box::new(Mask {
                path: path("amount"),
                literal: None,
            }),
        ),
        (
            "mask_partial",
            Box::new(MaskPartial {
                path: path("pan"),
                keep_last: 4,
                mask_char: '*',
            }),
        ),
        (
            "hash",
            Box::new(Hash {
                path: path("email"),
                salt: SECRET.to_vec(),
                memo: Memo::default(),
            }),
        ),
        (
            "tokenize",
            Box::new(Tokenize {
                path: path("email"),
                key_id: "k1".into(),
                key: SECRET.to_vec(),
                memo: Memo::default(),
            }),
        ),
        (
            "encrypt_fpe_pan",
            Box::new(EncryptFpe {
                path: path("pan"),
                cipher: Ff1Cipher::new(SECRET, FpeFormat::Pan),
                memo: Memo::default(),
            }),
        ),
        (
            "encrypt_10k_subjects",
            Box::new(Encrypt {
                path: path("email"),
                subject: path("customer_10k"),
                keyring: Arc::clone(&rings[0]),
            }),
        ),
        (
            "encrypt_1m_subjects",
            Box::new(Encrypt {
                path: path("email"),
                subject: path("customer_1m"),
                keyring: Arc::clone(&rings[1]),
            }),
        ),
        (
            "redact",
            Box::new(Redact {
                path: path("notes"),
                redactor: Arc::new(Redactor::new()),
            }),
        ),
        (
            "generalize_year",
            Box::new(Generalize {
                path: path("dob"),
                to: Generalization::Year,
            }),
        ),
        (
            "generalize_bucket",
            Box::new(Generalize {
                path: path("amount"),
                to: Generalization::Bucket(1000.0),
            }),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let input = batch();
    let mut g = c.benchmark_group("pii_1m_values");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(ROWS as u64));
    let secret = Secret::new(SECRET.to_vec());
    let rings = [
        Arc::new(Keyring::new("k1", &secret)),
        Arc::new(Keyring::new("k1", &secret)),
    ];
    for (name, t) in actions(&rings) {
        t.output_schema(&input.schema())
            .expect("the action accepts its column");
        // Subjects' keys are made before timing; the store would take them at each commit.
        t.apply(input.clone()).expect("apply");
        for r in &rings {
            r.take_new();
        }
        g.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            b.iter(|| {
                let rejected = t.reject(input).expect("reject");
                black_box(rejected);
                black_box(t.apply(input.clone()).expect("apply"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
