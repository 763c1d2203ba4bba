//! PII never reaches the lake: synthetic customers carrying planted canary values (names,
//! emails, card numbers, National Insurance numbers, phone numbers; in columns, in free
//! text, in message keys, in broken messages and in rows a transform rejects) are
//! ingested under a policy, then every byte under the lake directory is searched —
//! Parquet pages decoded, `_delta_log` JSON and checkpoints, the dead-letter table. No
//! canary may be found. The same data without the policy must show every kind of canary,
//! which proves the search itself works.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_connectors::demo::broker::{Outgoing, SimpleProducer};
use sluice_transforms::luhn;

use crate::harness::{Broker, Mock, Tool, Workdir, require_part};

const CUSTOMERS: usize = 120;

/// The canaries of customer `i`, by kind.
fn canaries(i: usize) -> [(&'static str, String); 5] {
    [
        ("name", format!("Zanaria Canarsdottir{i:03}")),
        ("email", format!("canary.{i:03}@canary-mail.example")),
        (
            "pan",
            luhn::complete(&format!("4929{:011}", 31_337_000 + i)),
        ),
        ("nino", format!("JG{:06}C", 500_000 + i)),
        ("phone", format!("+44 7700 91{i:04}")),
    ]
}

fn produce_customers(broker: &dyn Broker) {
    broker.create_topic("customers", 2);
    let producer = SimpleProducer::new(&broker.bootstrap()).expect("producer");
    let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..CUSTOMERS {
        let [(_, name), (_, email), (_, pan), (_, nino), (_, phone)] = canaries(i);
        // A phone too short to encrypt: the row is rejected by encrypt_fpe under the policy.
        let phone_field = if i % 40 == 7 {
            "12 34".to_string()
        } else {
            phone.clone()
        };
        let payload = serde_json::json!({
            "customer_id": format!("C{i:05}"),
            "full_name": name,
            "email": email,
            "card_number": pan,
            "nino": nino,
            "phone": phone_field,
            "segment": "retail",
            "profile": {"city": "Leeds", "mobile": phone},
            "notes": format!("Called from {phone}; card {pan}; NI {nino}; mail {email}."),
        });
        messages.push((nino, serde_json::to_vec(&payload).expect("json")));
    }
    // Broken messages full of personal data: they become dead letters.
    let [(_, name), (_, email), ..] = canaries(CUSTOMERS);
    messages.push((
        "JG999999C".into(),
        format!("{{\"full_name\": \"{name}\", \"email\": \"{email}\", ").into_bytes(),
    ));
    let [(_, _), (_, email2), (_, pan2), ..] = canaries(CUSTOMERS + 1);
    messages.push((
        "JG999998C".into(),
        format!(
            "{{\"email\": \"{email2}\", \"card_number\": \"{pan2}\", \"segment\": {{\"x\": 1}}}}"
        )
        .into_bytes(),
    ));
    for (key, payload) in &messages {
        producer
            .send(&Outgoing {
                topic: "customers",
                key: Some(key.as_bytes()),
                payload: Some(payload),
                timestamp_ms: None,
            })
            .expect("send");
    }
    producer.flush().expect("flush");
}

/// Every value of `a` as text: binary as (lossy) UTF-8, structs and lists flattened.
fn texts(a: &ArrayRef, out: &mut Vec<String>) {
    match a.data_type() {
        DataType::Struct(_) => {
            for c in a.as_struct().columns() {
                texts(c, out);
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let b = cast(a, &DataType::Binary).expect("binary");
            out.extend(
                b.as_binary::<i32>()
                    .iter()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            );
        }
        _ => {
            if let Ok(s) = cast(a, &DataType::Utf8) {
                out.extend(s.as_string::<i32>().iter().flatten().map(str::to_string));
            }
        }
    }
}

/// Canaries of each kind found anywhere under `dir`, with where they were found.
pub(crate) fn scan(
    dir: &Path,
    all: &[(&'static str, String)],
) -> BTreeMap<&'static str, Vec<String>> {
    let mut found: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).expect("read file");
            // Raw bytes: log JSON, Parquet footers and statistics, anything uncompressed.
            let mut haystacks = vec![String::from_utf8_lossy(&bytes).into_owned()];
            // Decoded Parquet: compressed pages hide their text from a raw search.
            if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).expect("open parquet");
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .expect("parquet")
                    .build()
                    .expect("reader");
                for batch in reader {
                    for c in batch.expect("batch").columns() {
                        texts(c, &mut haystacks);
                    }
                }
            }
            for (kind, canary) in all {
                if haystacks.iter().any(|h| h.contains(canary.as_str())) {
                    found
                        .entry(kind)
                        .or_default()
                        .push(path.display().to_string());
                }
            }
        }
    }
    assert!(files > 5, "the lake holds files to scan");
    found
}

fn all_canaries() -> Vec<(&'static str, String)> {
    (0..CUSTOMERS + 2).flat_map(canaries).collect()
}

const POLICY: &str = r#"
[pii]
dead_letter_key = "vault"
[pii.keys.pseudo]
env = "SLUICE_TEST_PSEUDONYM_KEY"
[pii.keys.vault]
file = "KEYDIR/vault.key"

[pii.tables.customers]
_kafka_key = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
full_name = { action = "mask", tag = "direct_identifier" }
email = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
card_number = { action = "encrypt_fpe", format = "pan", key = "vault", tag = "sensitive" }
nino = { action = "hash", key = "pseudo", tag = "direct_identifier" }
phone = { action = "encrypt_fpe", key = "vault", tag = "direct_identifier" }
"profile.mobile" = { action = "drop", tag = "direct_identifier" }
notes = { action = "redact", tag = "free_text" }
"#;

fn workdir_with_policy(broker: &dyn Broker, policy: bool) -> Workdir {
    let w = Workdir::new();
    let extra = if policy {
        std::fs::write(
            w.dir.path().join("vault.key"),
            "a vault secret of some length\n",
        )
        .expect("key file");
        POLICY.replace("KEYDIR", &w.dir.path().display().to_string())
    } else {
        String::new()
    };
    w.write_config(broker, "canary", &["customers"], &extra);
    w
}

#[test]
fn no_canary_reaches_the_lake_under_a_policy_and_all_do_without_one() {
    let broker = Mock::start();
    produce_customers(&broker);
    let total = CUSTOMERS + 2;

    let protected = workdir_with_policy(&broker, true);
    let out = protected.run_ok_env(
        &["run", "--until-caught-up"],
        &[("SLUICE_TEST_PSEUDONYM_KEY", "0123456789abcdef-pseudonyms")],
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    let rows = protected.count("bronze.customers");
    let dead = protected.count("sluice.dead_letters");
    assert_eq!(
        rows + dead,
        total,
        "every message is a row or a dead letter"
    );
    assert_eq!(
        dead,
        2 + CUSTOMERS.div_ceil(40),
        "broken messages and short phones"
    );
    let leaks = scan(&protected.lake(), &all_canaries());
    assert!(leaks.is_empty(), "canaries in the lake: {leaks:#?}");
    for (_, c) in all_canaries() {
        assert!(!logs.contains(&c), "a canary was logged");
    }
    // The protected values are still useful: tokens join, card numbers keep their shape.
    let sample = protected.sql(
        "select full_name, substr(email, 1, 11), length(card_number), length(nino), notes \
         from bronze.customers where customer_id = 'C00000'",
    );
    assert_eq!(sample.len(), 1);
    assert!(
        sample[0].starts_with(
            ",tok_pseudo_,16,64,Called from [PHONE]; card [CARD]; NI [NINO]; mail [EMAIL]."
        ),
        "{sample:?}"
    );
    let stages = protected
        .sql("select stage, count(*) from sluice.dead_letters group by stage order by stage");
    assert_eq!(stages, vec!["decode,1", "schema,1", "transform,3"]);

    // An independent reader reads the protected table (properties, restricted statistics).
    if let Some(py) = require_part(Tool::Python, "reading the protected table with DuckDB") {
        let select = "count(*), count(distinct email), min(length(card_number))";
        let theirs = crate::duckdb::duckdb(&py, &protected.lake().join("bronze/customers"), select);
        let ours = protected.sql(&format!("select {select} from bronze.customers"));
        let theirs: Vec<String> = theirs.iter().map(ToString::to_string).collect();
        assert_eq!(ours, vec![theirs.join(",")]);
    }
    // With the vault key, and only it, the originals come back.
    let encrypted =
        protected.sql("select card_number from bronze.customers where customer_id = 'C00001'");
    let revealed = protected.run_ok(&[
        "reveal",
        "--table",
        "customers",
        "--column",
        "card_number",
        &encrypted[0],
    ]);
    assert_eq!(
        String::from_utf8_lossy(&revealed.stdout).trim(),
        canaries(1)[2].1
    );
    let letters = protected.run_ok(&[
        "reveal",
        "--dead-letters",
        "--where",
        "stage = 'decode'",
        "--format",
        "csv",
    ]);
    let letters = String::from_utf8_lossy(&letters.stdout);
    assert!(letters.contains(&canaries(CUSTOMERS)[1].1), "{letters}");
    assert!(letters.contains("JG999999C"), "the key is opened too");

    let raw = workdir_with_policy(&broker, false);
    raw.run_ok(&["run", "--until-caught-up"]);
    let found = scan(&raw.lake(), &all_canaries());
    for kind in ["name", "email", "pan", "nino", "phone"] {
        assert!(
            found.contains_key(kind),
            "without a policy the scan must find {kind} canaries: {found:?}"
        );
    }
}

#[test]
fn a_missing_key_or_a_policy_column_the_declared_schema_lacks_stops_start_up() {
    let w = Workdir::new();
    let base = "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ntopics = [\"customers\"]\n";
    let policy = "[pii]\ndead_letter_key = \"k1\"\n[pii.keys.k1]\nenv = \"SLUICE_TEST_UNSET_KEY\"\n\
                  [pii.tables.customers]\nemail = { action = \"tokenize\", key = \"k1\" }\n";
    std::fs::write(w.config(), format!("{base}{policy}")).expect("config");
    let out = w
        .sluice(&["run", "--until-caught-up"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("environment variable SLUICE_TEST_UNSET_KEY is not set"),
        "{err}"
    );

    let declared = "[bronze.tables.customers]\nschema = [{ name = \"mail\", type = \"string\" }]\n";
    std::fs::write(w.config(), format!("{base}{policy}{declared}")).expect("config");
    let out = w
        .sluice(&["run", "--until-caught-up"])
        .env("SLUICE_TEST_UNSET_KEY", "a secret long enough")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the data has no column 'email'"), "{err}");
    assert!(
        !err.contains("a secret long enough"),
        "secrets are never printed"
    );
}

#[test]
fn a_policy_added_to_an_existing_table_restricts_its_statistics_from_the_next_write() {
    let broker = Mock::start();
    broker.create_topic("people", 1);
    let people = |from: usize| -> Vec<Vec<u8>> {
        (from..from + 20)
            .map(|i| {
                format!("{{\"id\": {i}, \"full_name\": \"Person {i}\", \"city\": \"Leeds\"}}")
                    .into_bytes()
            })
            .collect()
    };
    let produce = |payloads: Vec<Vec<u8>>| {
        let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
        crate::harness::produce_raw(&broker, "people", &refs);
    };
    produce(people(0));
    let w = Workdir::new();
    w.write_config(&broker, "late", &["people"], "");
    w.run_ok(&["run", "--until-caught-up"]);

    produce(people(20));
    let policy = "[pii]\ndead_letters = \"raw\"\n[pii.tables.people]\n\
                  full_name = { action = \"mask\", tag = \"direct_identifier\" }\n\
                  city = { action = \"keep\", tag = \"quasi_identifier\" }\n";
    w.write_config(&broker, "late", &["people"], policy);
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(
        w.sql("select count(*), count(distinct full_name) from bronze.people"),
        vec!["40,21"],
        "20 raw names from before the policy, then one masked value"
    );
    let log = w.lake().join("bronze/people/_delta_log");
    let mut versions: Vec<_> = std::fs::read_dir(&log)
        .expect("log")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    versions.sort();
    let text: Vec<String> = versions
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    let metadata = text
        .iter()
        .rposition(|t| t.contains("\"metaData\""))
        .expect("a metadata action");
    assert!(
        metadata > 1,
        "the policy came in its own commit after the first data"
    );
    assert!(
        text[metadata].contains("sluice.pii.full_name"),
        "{}",
        text[metadata]
    );
    let last = text.last().expect("last commit");
    assert!(last.contains("\"add\""), "{last}");
    assert!(
        last.contains("full_name"),
        "masked columns keep statistics: {last}"
    );
    assert!(
        !last.contains("\\\"city\\\""),
        "kept columns carry no statistics: {last}"
    );
}
