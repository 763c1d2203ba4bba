//! Fuzz targets on stable Rust: generated and mutated inputs for the JSON decoder, the
//! Debezium envelope's way into silver, the Avro decoder (plain bodies and the Confluent
//! framing), every PII action and the config loader.
//!
//! Shared by `cargo bench --bench fuzz` (millions of inputs per target) and the test suite
//! (a bounded run). Each input runs under `catch_unwind`; a target reports:
//! - `escaped`: panics that got out of sluice's own code (a bug, and a crash in production);
//! - `contained`: dead letters naming an internal error, i.e. panics sluice's guards caught
//!   (the run went on, but a library panicked on the input);
//! - `broken`: a promise that failed (a message neither a row nor a dead letter, a row
//!   count changed by an action, a decoded batch silver cannot take).
//!
//! Inputs come from seeds (the demo bank's messages, hostile shapes) mutated byte by byte
//! and token by token, and from a generator of JSON values over all of Unicode, any depth
//! and width, and boundary numbers.

#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice_connectors::decode::avro::{AvroDecoder, AvroDecoderConfig, AvroSchemas};
use sluice_connectors::decode::debezium::{Sequence, change_rows};
use sluice_connectors::decode::json::{JsonDecoder, JsonDecoderConfig};
use sluice_connectors::decode::limits::DecodeLimits;
use sluice_connectors::decode::{RawHeaders, RawMessage};
use sluice_connectors::delta::silver::{SilverTableSpec, reduce};
use sluice_pipeline::key_cache::KeyCache;
use sluice_pipeline::lineage::HeaderSpec;
use sluice_pipeline::{SourceBatch, Transform};
use sluice_transforms::drop::Drop;
use sluice_transforms::encrypt::{Encrypt, Keyring};
use sluice_transforms::generalize::{Generalization, Generalize};
use sluice_transforms::keys::Secret;
use sluice_transforms::limit::Limited;
use sluice_transforms::mask::Mask;
use sluice_transforms::{ColumnPath, every_text_action};

/// The targets, by name.
pub const TARGETS: [&str; 5] = ["json", "envelope", "avro", "actions", "config"];

/// What a run of one target found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    pub escaped: u64,
    pub contained: u64,
    pub broken: u64,
    pub seconds: f64,
    /// The first few inputs that failed, with what failed (inputs as escaped text).
    pub findings: Vec<String>,
}

impl Report {
    fn finding(&mut self, what: &str, input: &[u8]) {
        if self.findings.len() < 5 {
            let shown: String = String::from_utf8_lossy(&input[..input.len().min(300)])
                .chars()
                .flat_map(char::escape_debug)
                .collect();
            self.findings
                .push(format!("{what}: {} bytes: {shown}", input.len()));
        }
    }

    /// Whether anything at all went wrong.
    pub fn clean(&self) -> bool {
        self.escaped == 0 && self.contained == 0 && self.broken == 0
    }
}

/// Run `target` on `inputs` inputs from `seed`.
pub fn run(target: &str, inputs: u64, seed: u64) -> Report {
    let started = Instant::now();
    let mut report = match target {
        "json" => json(inputs, seed, false),
        "envelope" => json(inputs, seed, true),
        "avro" => avro(inputs, seed),
        "actions" => actions(inputs, seed),
        "config" => config(inputs, seed),
        other => panic!("no fuzz target '{other}'; targets: {TARGETS:?}"),
    };
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Tokens that break parsers and limits.
const TOKENS: [&str; 40] = [
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    ":",
    ",",
    "\\u0000",
    "\\ud800",
    "\\udfff",
    "\\uffff",
    "1e400",
    "-1e400",
    "99999999999999999999999",
    "-9223372036854775808",
    "9223372036854775807",
    "18446744073709551616",
    "-0",
    "0.000000000000000000001",
    "NaN",
    "null",
    "true",
    "\"_kafka_topic\"",
    "\"_ingest_date\"",
    "\"__sluice_row\"",
    "\"_cdc_op\"",
    "\"a b\"",
    "\"a.b\"",
    "\"EMAIL\"",
    "\"£\"",
    "\"😀\"",
    "\"\u{202e}\"",
    "\"\"",
    "\"op\"",
    "\"after\"",
    "\"before\"",
    "\"ts_ms\"",
    "{\"a\":",
    "[[[[[[[[",
];

/// Kafka headers of one generated message: `(name, value)`.
type OwnedHeaders = Vec<(String, Option<Vec<u8>>)>;

/// Seeds and a generator of inputs from them.
struct Mutator {
    rng: StdRng,
    seeds: Vec<Vec<u8>>,
}

impl Mutator {
    fn new(seed: u64, seeds: Vec<Vec<u8>>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            seeds,
        }
    }

    fn pick(&mut self) -> Vec<u8> {
        let i = self.rng.random_range(0..self.seeds.len());
        self.seeds[i].clone()
    }

    /// The next input: mostly a seed with a few mutations, sometimes a generated value,
    /// a splice of two seeds or random bytes.
    fn next(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..20) {
            0..=11 => {
                let mut v = self.pick();
                for _ in 0..self.rng.random_range(1..5) {
                    self.mutate(&mut v);
                }
                v
            }
            12..=15 => {
                let depth = if self.rng.random_range(0..10) == 0 {
                    150
                } else {
                    6
                };
                let mut out = String::new();
                // At most this many values: deep or wide, never both at once. Most inputs
                // are small (they are what makes millions of inputs affordable); one in
                // ten generated ones may be large.
                let mut budget = if self.rng.random_range(0..10) == 0 {
                    4000
                } else {
                    200
                };
                self.value(&mut out, depth, true, &mut budget);
                out.into_bytes()
            }
            16..=17 => {
                let (a, b) = (self.pick(), self.pick());
                let i = self.rng.random_range(0..=a.len());
                let j = self.rng.random_range(0..=b.len());
                let mut v = a[..i].to_vec();
                v.extend_from_slice(&b[j..]);
                v
            }
            18 => self.pick(),
            _ => (0..self.rng.random_range(0..64))
                .map(|_| self.rng.random::<u8>())
                .collect(),
        }
    }

    /// Kafka headers for one message: declared names, near misses and others, repeated
    /// or not, values null, text or random bytes; `None` (one in 64) stands for headers
    /// the client could not read.
    fn headers(&mut self) -> Option<OwnedHeaders> {
        const NAMES: [&str; 6] = ["traceparent", "x-sig", "TRACEPARENT", "x-sig ", "ü名", ""];
        if self.rng.random_range(0..64) == 0 {
            return None;
        }
        let n = [0, 0, 1, 2, 3, 8][self.rng.random_range(0..6)];
        Some(
            (0..n)
                .map(|_| {
                    let name = NAMES[self.rng.random_range(0..NAMES.len())].to_string();
                    let value = match self.rng.random_range(0..8) {
                        0 => None,
                        1..=3 => Some(self.pick()),
                        _ => Some(
                            (0..self.rng.random_range(0..40))
                                .map(|_| self.rng.random::<u8>())
                                .collect(),
                        ),
                    };
                    (name, value)
                })
                .collect(),
        )
    }

    fn mutate(&mut self, v: &mut Vec<u8>) {
        let at = |rng: &mut StdRng, v: &Vec<u8>| rng.random_range(0..=v.len());
        match self.rng.random_range(0..8) {
            0 if !v.is_empty() => {
                let i = self.rng.random_range(0..v.len());
                v[i] ^= 1 << self.rng.random_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = self.rng.random_range(0..v.len());
                v[i] = self.rng.random::<u8>();
            }
            2 | 3 => {
                let t = TOKENS[self.rng.random_range(0..TOKENS.len())];
                let i = at(&mut self.rng, v);
                v.splice(i..i, t.bytes());
            }
            4 if !v.is_empty() => {
                let i = self.rng.random_range(0..v.len());
                let n = self.rng.random_range(1..=(v.len() - i).min(32));
                v.drain(i..i + n);
            }
            5 if !v.is_empty() => {
                let i = self.rng.random_range(0..v.len());
                let n = self.rng.random_range(1..=(v.len() - i).min(64));
                let piece: Vec<u8> = v[i..i + n].to_vec();
                let times = self.rng.random_range(1..40);
                for _ in 0..times {
                    v.splice(i..i, piece.iter().copied());
                }
            }
            6 => {
                let mut s = String::from("\"");
                self.text(&mut s);
                s.push('"');
                let i = at(&mut self.rng, v);
                v.splice(i..i, s.bytes());
            }
            _ => {
                // A number at a boundary where a number was.
                if let Some(i) = v.iter().position(u8::is_ascii_digit) {
                    let t = TOKENS[self.rng.random_range(12..20)];
                    v.splice(i..i + 1, t.bytes());
                }
            }
        }
    }

    /// A character from anywhere in Unicode, weighted towards the awkward ones.
    fn char(&mut self) -> char {
        let c = match self.rng.random_range(0..8) {
            0 => self.rng.random_range(0..0x20),
            1 => self.rng.random_range(0x80..0x800),
            2 => self.rng.random_range(0x800..0x10000),
            3 => self.rng.random_range(0x10000..0x110000),
            4 => *[0x202e, 0xfeff, 0x200b, 0xa3, 0xb9, 0x0660, 0xfffd]
                .get(self.rng.random_range(0..7))
                .unwrap_or(&0x41),
            _ => self.rng.random_range(0x20..0x7f),
        };
        char::from_u32(c).unwrap_or('\u{fffd}')
    }

    /// JSON string contents (escaped), of any length up to a few kilobytes.
    fn text(&mut self, out: &mut String) {
        let n = match self.rng.random_range(0..100) {
            0 => self.rng.random_range(1000..5000),
            _ => self.rng.random_range(0..24),
        };
        let mut s = String::new();
        for _ in 0..n {
            s.push(self.char());
        }
        let quoted = serde_json::to_string(&s).unwrap_or_default();
        out.push_str(&quoted[1..quoted.len().saturating_sub(1)]);
    }

    fn value(&mut self, out: &mut String, depth: usize, object: bool, budget: &mut usize) {
        *budget = budget.saturating_sub(1);
        let kind = if object {
            0
        } else {
            self.rng.random_range(0..8)
        };
        match kind {
            0 | 1 if depth > 0 && *budget > 0 => {
                out.push('{');
                let n = if self.rng.random_range(0..30) == 0 {
                    self.rng.random_range(100..3000)
                } else {
                    self.rng.random_range(0..6)
                };
                for i in 0..n {
                    if *budget == 0 {
                        break;
                    }
                    if i > 0 {
                        out.push(',');
                    }
                    out.push('"');
                    match self.rng.random_range(0..6) {
                        0 => out.push_str(TOKENS[self.rng.random_range(23..40)].trim_matches('"')),
                        1 => out.push_str(&format!("f{i}")),
                        _ => self.text(out),
                    }
                    out.push_str("\":");
                    self.value(out, depth - 1, false, budget);
                }
                out.push('}');
            }
            2 if depth > 0 && *budget > 0 => {
                out.push('[');
                for i in 0..self.rng.random_range(0..5) {
                    if i > 0 {
                        out.push(',');
                    }
                    self.value(out, depth - 1, false, budget);
                }
                out.push(']');
            }
            3 => {
                out.push('"');
                self.text(out);
                out.push('"');
            }
            4 => out.push_str(TOKENS[self.rng.random_range(12..22)]),
            5 => out.push_str(&self.rng.random::<i64>().to_string()),
            6 => out.push_str(&format!("{:e}", self.rng.random::<f64>() * 1e300)),
            _ => out.push_str(["true", "false", "null"][self.rng.random_range(0..3)]),
        }
    }
}

fn message(offset: i64, payload: Option<&[u8]>) -> RawMessage<'_> {
    RawMessage {
        topic: "fuzz",
        partition: 0,
        offset,
        timestamp_ms: Some(1_767_225_600_000),
        key: Some(b"k"),
        payload,
        headers: Default::default(),
    }
}

/// Offsets a batch accounts for: rows and dead letters, each once.
fn accounted(batch: &SourceBatch) -> Vec<i64> {
    use arrow::array::AsArray;
    let mut seen: Vec<i64> = batch.dead_letters.iter().map(|d| d.offset).collect();
    if let Some(rows) = &batch.rows
        && let Some(c) = rows.column_by_name("_kafka_offset")
    {
        seen.extend(
            c.as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .iter(),
        );
    }
    seen.sort_unstable();
    seen
}

fn internal_errors(batch: &SourceBatch) -> u64 {
    batch
        .dead_letters
        .iter()
        .filter(|d| d.error.contains("internal error"))
        .count() as u64
}

/// The demo bank's messages of `topics`.
fn bank_seeds(topics: &[&str]) -> Vec<Vec<u8>> {
    let scale = sluice_connectors::demo::bank::Scale {
        customers: 40,
        transactions: 200,
        touchpoints: 100,
        with_bad_messages: true,
    };
    sluice_connectors::demo::bank::generate(scale)
        .into_iter()
        .filter(|m| topics.contains(&m.topic))
        .filter_map(|m| m.payload)
        .collect()
}

fn json(inputs: u64, seed: u64, envelope: bool) -> Report {
    let mut report = Report {
        target: if envelope { "envelope" } else { "json" },
        ..Report::default()
    };
    let topics: &[&str] = if envelope {
        &["customers", "accounts"]
    } else {
        &["txn-events", "touchpoint-events"]
    };
    let mut m = Mutator::new(seed, bank_seeds(topics));
    let spec = SilverTableSpec {
        name: "customers".into(),
        topics: ["fuzz".to_string()].into_iter().collect(),
        key: vec!["customer_id".into()],
        source_table: None,
        sequence: Sequence::Auto,
        partition_by: Vec::new(),
        history: None,
        stats: Default::default(),
    };
    // Plain events capture two headers: the headers are fuzzed with the payloads.
    let header_spec = Arc::new(HeaderSpec::new(vec![
        ("x-sig".into(), arrow::datatypes::DataType::Binary),
        ("traceparent".into(), arrow::datatypes::DataType::Utf8),
    ]));
    let new_decoder = || {
        let mut d = JsonDecoder::new(
            JsonDecoderConfig {
                table: "fuzz".into(),
                limits: DecodeLimits::default(),
                schema_evolution: true,
                max_messages: 256,
                envelope,
            },
            None,
        );
        if !envelope {
            d.capture_headers(header_spec.clone());
        }
        d
    };
    let mut decoder = new_decoder();
    let mut done = 0u64;
    let mut chunks = 0u64;
    while done < inputs {
        // A fresh table now and then: inference gets fuzzed too, and the schema stays small.
        chunks += 1;
        if chunks.is_multiple_of(64) {
            decoder = new_decoder();
        }
        let n = m.rng.random_range(1..64).min((inputs - done) as usize);
        let payloads: Vec<Vec<u8>> = (0..n).map(|_| m.next()).collect();
        let headers: Vec<Option<OwnedHeaders>> = (0..n).map(|_| m.headers()).collect();
        done += n as u64;
        report.inputs += n as u64;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            for (i, (p, h)) in payloads.iter().zip(&headers).enumerate() {
                let list: Vec<(&str, Option<&[u8]>)> = h
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect();
                let headers = match h {
                    Some(_) => RawHeaders::Read(&list),
                    None => RawHeaders::Unreadable,
                };
                decoder.push(&RawMessage {
                    headers,
                    ..message(i as i64, Some(p))
                });
            }
            decoder.finish()
        }));
        let batch = match outcome {
            Err(_) => {
                report.escaped += 1;
                report.finding("panic escaped the decoder", &payloads.concat());
                decoder = new_decoder();
                continue;
            }
            Ok(Err(e)) => {
                report.broken += 1;
                report.finding(&format!("decoder error {e}"), &payloads.concat());
                decoder = new_decoder();
                continue;
            }
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(b))) => b,
        };
        report.contained += internal_errors(&batch);
        if accounted(&batch) != (0..n as i64).collect::<Vec<_>>() {
            report.broken += 1;
            report.finding(
                "a message neither a row nor a dead letter",
                &payloads.concat(),
            );
        }
        if envelope && let Some(rows) = &batch.rows {
            let silver = catch_unwind(AssertUnwindSafe(|| {
                change_rows(rows, &spec.changes())
                    .and_then(|c| c.map(|c| reduce(&c, &spec.key)).transpose())
            }));
            match silver {
                Err(_) => {
                    report.escaped += 1;
                    report.finding("panic in silver's change rows", &payloads.concat());
                }
                Ok(Err(e)) => {
                    report.broken += 1;
                    report.finding(
                        &format!("silver cannot take a decoded batch: {e}"),
                        &payloads.concat(),
                    );
                }
                Ok(Ok(_)) => {}
            }
        }
    }
    report
}

/// A writer schema with every kind of Avro type sluice maps.
const AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Fuzz", "fields": [
  {"name": "id", "type": "long"},
  {"name": "n", "type": "int"},
  {"name": "name", "type": ["null", "string"], "default": null},
  {"name": "ratio", "type": "float"},
  {"name": "raw", "type": "bytes"},
  {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
  {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "limits", "type": {"type": "map", "values": "long"}},
  {"name": "either", "type": ["null", "string", "long"], "default": null},
  {"name": "balance", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
  {"name": "opened", "type": {"type": "int", "logicalType": "date"}},
  {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
  {"name": "code", "type": {"type": "fixed", "name": "Code", "size": 4}},
  {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
      {"name": "line1", "type": "string"}, {"name": "postcode", "type": ["null", "string"]}]}}
]}"#;

fn avro_seeds(rng: &mut StdRng, count: usize) -> Vec<Vec<u8>> {
    use apache_avro::types::Value;
    let schema = apache_avro::Schema::parse_str(AVRO_SCHEMA).expect("schema");
    (0..count)
        .map(|i| {
            let text: String = (0..rng.random_range(0..12))
                .map(|_| char::from_u32(rng.random_range(0x20..0x3000)).unwrap_or('x'))
                .collect();
            let big = [i64::MIN, i64::MAX, 0, -1, rng.random::<i64>()][i % 5];
            let value = Value::Record(vec![
                ("id".into(), Value::Long(big)),
                ("n".into(), Value::Int(rng.random::<i32>())),
                (
                    "name".into(),
                    Value::Union(1, Box::new(Value::String(text.clone()))),
                ),
                ("ratio".into(), Value::Float(rng.random::<f32>())),
                ("raw".into(), Value::Bytes(text.clone().into_bytes())),
                ("kind".into(), Value::Enum(1, "B".into())),
                (
                    "tags".into(),
                    Value::Array(vec![Value::String(text.clone())]),
                ),
                (
                    "limits".into(),
                    Value::Map([("k".to_string(), Value::Long(big))].into_iter().collect()),
                ),
                ("either".into(), Value::Union(2, Box::new(Value::Long(big)))),
                (
                    "balance".into(),
                    Value::Decimal(apache_avro::Decimal::from(vec![0x01, 0x02])),
                ),
                (
                    "opened".into(),
                    Value::Date([i32::MIN, i32::MAX, 0, 20_000][i % 4]),
                ),
                ("at".into(), Value::TimestampMicros(big)),
                (
                    "uid".into(),
                    Value::Uuid(apache_avro::Uuid::from_u128(rng.random::<u64>() as u128)),
                ),
                ("code".into(), Value::Fixed(4, vec![1, 2, 3, 4])),
                (
                    "address".into(),
                    Value::Record(vec![
                        ("line1".into(), Value::String(text)),
                        ("postcode".into(), Value::Union(0, Box::new(Value::Null))),
                    ]),
                ),
            ]);
            apache_avro::to_avro_datum(&schema, value).expect("datum")
        })
        .collect()
}

fn avro(inputs: u64, seed: u64) -> Report {
    let mut report = Report {
        target: "avro",
        ..Report::default()
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let bodies = avro_seeds(&mut rng, 64);
    // Plain bodies with the schema file, and the Confluent framing with a registry.
    let registry = sluice_connectors::demo::registry::EmbeddedRegistry::start().expect("registry");
    let id = registry.register(AVRO_SCHEMA);
    let client = sluice_connectors::decode::registry::SchemaRegistry::new(
        sluice_connectors::decode::registry::RegistryConfig {
            urls: vec![registry.url().to_string()],
            username: None,
            password: None,
            ca_pem: None,
            timeout: std::time::Duration::from_secs(5),
            cache_dir: None,
            attempts: 1,
        },
    )
    .expect("registry client");
    let client = Arc::new(client);
    let framed: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| {
            let mut out = vec![0];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(b);
            out
        })
        .collect();
    let new_decoder = |registry: bool| {
        AvroDecoder::new(
            AvroDecoderConfig {
                table: "fuzz".into(),
                limits: DecodeLimits::default(),
                envelope: false,
                max_messages: 256,
                schemas: if registry {
                    AvroSchemas::Registry(client.clone())
                } else {
                    AvroSchemas::File(AVRO_SCHEMA.into())
                },
            },
            None,
        )
    };
    let mut plain = Mutator::new(seed, bodies);
    let mut wire = Mutator::new(seed ^ 1, framed);
    // Writer schemas as a registry might answer them: the schema text mutated.
    let mut schemas = Mutator::new(seed ^ 2, vec![AVRO_SCHEMA.as_bytes().to_vec()]);
    let mut decoders = [new_decoder(false), new_decoder(true)];
    let mut done = 0u64;
    let mut round = 0u64;
    while done < inputs {
        round += 1;
        // One round in eight: a mutated writer schema, with ordinary bodies.
        if round.is_multiple_of(8) {
            let text = schemas.next();
            let n = plain.rng.random_range(1..16).min((inputs - done) as usize);
            let payloads: Vec<Vec<u8>> = (0..n).map(|_| plain.pick()).collect();
            done += n as u64;
            report.inputs += n as u64;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let mut d = AvroDecoder::new(
                    AvroDecoderConfig {
                        table: "fuzz".into(),
                        limits: DecodeLimits::default(),
                        envelope: false,
                        max_messages: 256,
                        schemas: AvroSchemas::File(String::from_utf8_lossy(&text).into()),
                    },
                    None,
                );
                for (i, p) in payloads.iter().enumerate() {
                    d.push(&message(i as i64, Some(p)));
                }
                d.finish()
            }));
            match outcome {
                Err(_) => {
                    report.escaped += 1;
                    report.finding("panic escaped the Avro decoder (a writer schema)", &text);
                }
                Ok(Err(e)) => {
                    report.broken += 1;
                    report.finding(&format!("decoder error {e} (a writer schema)"), &text);
                }
                Ok(Ok(None)) => {}
                Ok(Ok(Some(batch))) => {
                    report.contained += internal_errors(&batch);
                    if accounted(&batch) != (0..n as i64).collect::<Vec<_>>() {
                        report.broken += 1;
                        report.finding("a message neither a row nor a dead letter", &text);
                    }
                }
            }
            continue;
        }
        let which = (done / 64 % 2) as usize;
        let n = plain.rng.random_range(1..64).min((inputs - done) as usize);
        let m = if which == 0 { &mut plain } else { &mut wire };
        let payloads: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let mut v = m.pick();
                // Body bytes mostly; the framing (and so the registry) now and then.
                for _ in 0..m.rng.random_range(0..4) {
                    let lo = if which == 1 && m.rng.random_range(0..50) != 0 {
                        5
                    } else {
                        0
                    };
                    if v.len() > lo {
                        let i = m.rng.random_range(lo..v.len());
                        match m.rng.random_range(0..4) {
                            0 => v[i] ^= 1 << m.rng.random_range(0..8),
                            1 => v.truncate(i),
                            2 => v.insert(i, m.rng.random::<u8>()),
                            _ => v[i] = [0x00, 0x7f, 0x80, 0xff, 0x01][m.rng.random_range(0..5)],
                        }
                    }
                }
                v
            })
            .collect();
        done += n as u64;
        report.inputs += n as u64;
        let decoder = &mut decoders[which];
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            for (i, p) in payloads.iter().enumerate() {
                decoder.push(&message(i as i64, Some(p)));
            }
            decoder.finish()
        }));
        match outcome {
            Err(_) => {
                report.escaped += 1;
                report.finding("panic escaped the Avro decoder", &payloads.concat());
                decoders[which] = new_decoder(which == 1);
            }
            Ok(Err(e)) => {
                report.broken += 1;
                report.finding(&format!("decoder error {e}"), &payloads.concat());
                decoders[which] = new_decoder(which == 1);
            }
            Ok(Ok(None)) => {}
            Ok(Ok(Some(batch))) => {
                report.contained += internal_errors(&batch);
                if accounted(&batch) != (0..n as i64).collect::<Vec<_>>() {
                    report.broken += 1;
                    report.finding(
                        "a message neither a row nor a dead letter",
                        &payloads.concat(),
                    );
                }
            }
        }
    }
    report
}

/// Every action, limited as the policy limits them (`Policy::transform`: the actions that
/// read whole values), and the keyring of `encrypt`, whose new keys the caller takes as a
/// sink would store them.
fn all_actions() -> (Vec<Box<dyn Transform>>, Arc<Keyring>) {
    let secret = b"a fuzzing secret of enough bytes";
    let keyring = Arc::new(Keyring::new("k", &Secret::new(secret.to_vec())));
    let path = || ColumnPath::parse("v").expect("path");
    let limited = |t: Box<dyn Transform>| -> Box<dyn Transform> {
        if !matches!(
            t.name(),
            "hash" | "tokenize" | "encrypt_fpe" | "encrypt" | "redact"
        ) {
            return t;
        }
        Box::new(Limited {
            inner: t,
            path: path(),
            max_bytes: 64 * 1024,
        })
    };
    let mut actions: Vec<Box<dyn Transform>> = vec![Box::new(Drop { path: path() })];
    actions.extend(
        every_text_action("v", secret)
            .into_iter()
            .filter(|t| t.name() != "encrypt")
            .map(limited),
    );
    actions.push(limited(Box::new(Encrypt {
        path: path(),
        subject: path(),
        keyring: keyring.clone(),
    })));
    actions.push(Box::new(Generalize {
        path: path(),
        to: Generalization::Year,
    }));
    actions.push(Box::new(Generalize {
        path: path(),
        to: Generalization::Month,
    }));
    (actions, keyring)
}

fn numeric_actions() -> Vec<Box<dyn Transform>> {
    let path = || ColumnPath::parse("v").expect("path");
    vec![
        Box::new(Generalize {
            path: path(),
            to: Generalization::Year,
        }),
        Box::new(Generalize {
            path: path(),
            to: Generalization::Month,
        }),
        Box::new(Generalize {
            path: path(),
            to: Generalization::Bucket(10.0),
        }),
        Box::new(Generalize {
            path: path(),
            to: Generalization::Bucket(1e-300),
        }),
        Box::new(Generalize {
            path: path(),
            to: Generalization::Bucket(1e300),
        }),
        Box::new(Mask {
            path: path(),
            literal: None,
        }),
        Box::new(Drop { path: path() }),
    ]
}

/// Apply `action` as the runner does (rejected rows set aside first); `Err` names what broke.
fn protect(action: &dyn Transform, batch: &RecordBatch) -> Result<(), String> {
    // Batches always carry lineage beside the protected column.
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Int64Array::from_iter_values(
        0..batch.num_rows() as i64,
    )));
    let mut fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(arrow::datatypes::Field::new(
        "_kafka_offset",
        arrow::datatypes::DataType::Int64,
        true,
    ));
    let batch = &RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
        .map_err(|e| e.to_string())?;
    if action.output_schema(&batch.schema()).is_err() {
        return Ok(());
    }
    let rejected = action.reject(batch).map_err(|e| e.to_string())?;
    let keep: Vec<bool> = (0..batch.num_rows())
        .map(|i| !rejected.iter().any(|r| r.0 == i))
        .collect();
    let input =
        arrow::compute::filter_record_batch(batch, &keep.into()).map_err(|e| e.to_string())?;
    let out = action
        .apply(input.clone())
        .map_err(|e| format!("{}: {e}", action.name()))?;
    if out.num_rows() != input.num_rows() {
        return Err(format!("{} changed the row count", action.name()));
    }
    let (a, b) = (input.column(0), out.column(0));
    if action.name() != "drop" && (0..a.len()).any(|i| a.is_null(i) != b.is_null(i)) {
        return Err(format!("{} changed which values are null", action.name()));
    }
    Ok(())
}

fn actions(inputs: u64, seed: u64) -> Report {
    let mut report = Report {
        target: "actions",
        ..Report::default()
    };
    let mut seeds: Vec<Vec<u8>> = [
        "4000 1234 5678 9010",
        "4111111111111111",
        "+44 7700 900123",
        "07700 900123",
        "SW1A 1AA",
        "M1 ¹AA",
        "££",
        "ÄÖÜ",
        "QQ 12 34 56 C",
        "GB82 WEST 1234 5698 7654 32",
        "GB1٣",
        "jane.doe@example.com",
        "call me on 020 7946 0958 or at 10.0.0.1",
        "1985-07-23",
        "1985-07-23T10:00:00Z",
        "fe80::1",
        "",
        "0",
        "٣٣٣٣٣٣٣٣٣٣٣٣٣",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    seeds.extend(bank_seeds(&["customers"]).into_iter().take(20));
    let mut m = Mutator::new(seed, seeds);
    let (text, keyring) = all_actions();
    let numeric = numeric_actions();
    let mut done = 0u64;
    while done < inputs {
        let n = m.rng.random_range(1..32).min((inputs - done) as usize);
        done += n as u64;
        report.inputs += n as u64;
        let values: Vec<Option<String>> = (0..n)
            .map(|_| {
                (m.rng.random_range(0..10) != 0)
                    .then(|| String::from_utf8_lossy(&m.next()).into_owned())
            })
            .collect();
        let strings = RecordBatch::try_from_iter([(
            "v",
            Arc::new(StringArray::from(values.clone())) as ArrayRef,
        )])
        .expect("batch");
        let boundary = [i64::MIN, i64::MAX, 0, -1, 1, i64::MIN + 1];
        let longs: Vec<Option<i64>> = (0..n)
            .map(|i| {
                Some(if i % 3 == 0 {
                    boundary[m.rng.random_range(0..boundary.len())]
                } else {
                    m.rng.random::<i64>()
                })
            })
            .collect();
        let dates: Vec<Option<i32>> = longs.iter().map(|v| v.map(|v| v as i32)).collect();
        let numbers: Vec<RecordBatch> = vec![
            RecordBatch::try_from_iter([(
                "v",
                Arc::new(Int64Array::from(longs.clone())) as ArrayRef,
            )])
            .expect("batch"),
            RecordBatch::try_from_iter([("v", Arc::new(Date32Array::from(dates)) as ArrayRef)])
                .expect("batch"),
            RecordBatch::try_from_iter([(
                "v",
                Arc::new(TimestampMicrosecondArray::from(longs).with_timezone("UTC")) as ArrayRef,
            )])
            .expect("batch"),
        ];
        let runs = text.iter().map(|a| (a, &strings)).chain(
            numeric
                .iter()
                .flat_map(|a| numbers.iter().map(move |b| (a, b))),
        );
        for (action, batch) in runs {
            match catch_unwind(AssertUnwindSafe(|| protect(action.as_ref(), batch))) {
                Err(_) => {
                    report.escaped += 1;
                    let shown = format!("{:?}", batch.column(0));
                    report.finding(&format!("panic in {}", action.name()), shown.as_bytes());
                }
                Ok(Err(e)) => {
                    report.broken += 1;
                    let shown = format!("{:?}", batch.column(0));
                    report.finding(&e, shown.as_bytes());
                }
                Ok(Ok(())) => {}
            }
        }
        // The keys made for new subjects, stored as the sink stores them at each commit:
        // only the bounded cache stays in memory.
        keyring.take_new();
    }
    report
}

/// Configs covering every section, to be mutated.
const CONFIGS: [&str; 3] = [
    r#"[pipeline]
name = "bank"
memory_budget_bytes = 536870912
[kafka]
bootstrap_servers = "localhost:9092"
topics = ["customers", "txn-events", "bank.public.accounts"]
auto_offset_reset = "earliest"
max_messages_per_second = 10000
[decode]
max_message_bytes = 1048576
max_nesting_depth = 32
[decode.topics."bank.public.accounts"]
format = "avro"
[decode.schema_registry]
url = "http://localhost:8081"
[bronze]
flush_max_rows = 100000
partition_by = ["_ingest_date"]
[bronze.routes]
"bank.public.accounts" = "accounts_changes"
[bronze.tables.customers]
schema = [{ name = "id", type = "long" }, { name = "email", type = "string" }]
[silver.tables.accounts]
topics = ["bank.public.accounts"]
key = ["account_id"]
history = { tracked = ["status"] }
[pii]
dead_letter_key = "vault"
max_value_bytes = 65536
[pii.keys.vault]
env = "SLUICE_VAULT_KEY"
[pii.tables.customers]
email = { action = "tokenize", key = "vault", tag = "direct_identifier" }
"address.postcode" = { action = "generalize", to = "outward" }
[quality]
customers = [{ name = "id_present", check = "id is not null", action = "drop" }]
[roles.analyst]
tables = ["silver.*", "gold.*"]
deny_tags = ["direct_identifier"]
row_filters = { "silver.accounts" = "status = 'open'" }
[erasure]
columns = ["customer_id"]
[schedule]
maintain = "0 0 3 * * *"
"#,
    r#"[kafka]
bootstrap_servers = "a:1,b:2"
topics = ["t"]
[pii.topics.t]
n = { action = "encrypt_fpe", format = "pan", key = "k" }
x = { action = "generalize", to = "bucket", width = 1e308 }
[pii.keys.k]
file = "/nonexistent"
[serve]
address = "127.0.0.1:5433"
[serve.users.ann]
role = "analyst"
password_env = "ANN"
"#,
    "[kafka]\nbootstrap_servers = \"x:1\"\ntopics = [\"\u{1F600}\", \"a.b\"]\n[snapshot]\n[anonymise]\n[maintenance]\n",
];

fn config(inputs: u64, seed: u64) -> Report {
    let mut report = Report {
        target: "config",
        ..Report::default()
    };
    let mut m = Mutator::new(
        seed,
        CONFIGS.iter().map(|c| c.as_bytes().to_vec()).collect(),
    );
    for _ in 0..inputs {
        report.inputs += 1;
        let input = m.next();
        let text = String::from_utf8_lossy(&input).into_owned();
        if catch_unwind(AssertUnwindSafe(|| {
            let _ = sluice_pipeline::config::Config::from_toml(&text);
        }))
        .is_err()
        {
            report.escaped += 1;
            report.finding("panic loading a config", &input);
        }
    }
    report
}
