//! Hostile input on a real broker: messages chosen to crash, stall or bloat `sluice run`,
//! interleaved with ordinary ones. Every offset lands exactly once, in bronze or in the
//! dead letters (at the stage docs/guide/ingest.md names), the ordinary messages land,
//! the process exits 0 only when caught up, a restart adds nothing, and peak RSS stays
//! under the configured memory budget.

use std::collections::BTreeMap;

use sluice_connectors::demo::broker::{Outgoing, SimpleProducer};
use sluice_connectors::demo::registry::EmbeddedRegistry;

use crate::harness::{Broker, Tansu, Workdir};

const BUDGET: u64 = 256 * 1_048_576;
/// Messages each bringing a field name of their own.
const NEW_FIELDS: usize = 8192;

fn ordinary(i: usize) -> Vec<u8> {
    format!(
        r#"{{"id": {i}, "postcode": "SW1A 1AA", "account": "4000123412341234", "email": "c{i}@example.com", "note": "ok", "meta": {{"k": 1}}}}"#
    )
    .into_bytes()
}

fn nested(levels: usize) -> Vec<u8> {
    format!(
        "{{\"id\": 1, \"deep\": {}1{}}}",
        "{\"a\": ".repeat(levels),
        "}".repeat(levels)
    )
    .into_bytes()
}

/// Offsets of hostile messages: their case's name and the stage they must die at.
type Hostile = BTreeMap<i64, (&'static str, Option<&'static str>)>;

/// One hostile message: its name, key, payload and the stage it must die at (`None`: it
/// must land in bronze).
struct Case {
    name: &'static str,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
    stage: Option<&'static str>,
}

fn case(name: &'static str, payload: Option<Vec<u8>>, stage: Option<&'static str>) -> Case {
    Case {
        name,
        key: b"k".to_vec(),
        payload,
        stage,
    }
}

fn event_cases() -> Vec<Case> {
    let mut cases = vec![
        case(
            "non-ASCII postcode under generalize outward",
            Some(br#"{"id": 1, "postcode": "\u00a3\u00a3"}"#.to_vec()),
            None,
        ),
        case(
            "field named like a lineage column",
            Some(br#"{"id": 2, "_kafka_topic": 1}"#.to_vec()),
            Some("schema"),
        ),
        case(
            "field named like the partition column",
            Some(br#"{"id": 3, "_ingest_date": "2099-01-01"}"#.to_vec()),
            Some("schema"),
        ),
        case("120 levels of nesting", Some(nested(120)), Some("limit")),
        case(
            "200,000 digits under encrypt_fpe",
            Some(format!(r#"{{"id": 4, "account": "{}"}}"#, "7".repeat(200_000)).into_bytes()),
            Some("transform"),
        ),
        case(
            "invalid UTF-8",
            Some(b"{\"id\": 5, \"note\": \"\xff\xfe\xc3\x28\"}".to_vec()),
            Some("decode"),
        ),
        case(
            "integer beyond i64",
            Some(br#"{"id": 99999999999999999999999}"#.to_vec()),
            Some("schema"),
        ),
        case(
            "float beyond f64",
            Some(br#"{"id": 6, "amount": 1e400}"#.to_vec()),
            Some("decode"),
        ),
        case(
            "string where an object was inferred",
            Some(br#"{"id": 7, "meta": "a string"}"#.to_vec()),
            Some("schema"),
        ),
        case(
            "object where a string was inferred",
            Some(br#"{"id": 8, "note": {"an": "object"}}"#.to_vec()),
            Some("schema"),
        ),
        case(
            "a 1 MiB string",
            Some(format!(r#"{{"id": 9, "note": "{}"}}"#, "x".repeat(1 << 20)).into_bytes()),
            Some("limit"),
        ),
        case("a tombstone on a topic without silver", None, None),
        case(
            "Unicode everywhere",
            Some("{\"id\": 10, \"note\": \"名前 😀 \\u0000 \\ud83d\\ude00 \u{202e}\", \"postcode\": \"M1 ¹AA\", \"emoji_😀\": 1}".as_bytes().to_vec()),
            None,
        ),
        case(
            "a field name no Delta reader takes",
            Some(br#"{"id": 12, "first name": "x"}"#.to_vec()),
            Some("schema"),
        ),
        case(
            "a dotted field name that would escape a dotted policy path",
            Some(br#"{"id": 13, "meta.k": "x"}"#.to_vec()),
            Some("schema"),
        ),
    ];
    cases.push(Case {
        name: "a 1 MiB key",
        key: vec![b'k'; 1 << 20],
        payload: Some(br#"{"id": 11}"#.to_vec()),
        stage: Some("limit"),
    });
    cases
}

fn change(op: Option<&str>, after: Option<&str>) -> Vec<u8> {
    let mut fields = vec![
        r#""before": null"#.to_string(),
        r#""source": {"table": "customers", "lsn": 100, "ts_ms": 1767225600000}"#.to_string(),
    ];
    if let Some(op) = op {
        fields.push(format!(r#""op": "{op}""#));
    }
    if let Some(after) = after {
        fields.push(format!(r#""after": {after}"#));
    }
    format!("{{{}}}", fields.join(", ")).into_bytes()
}

fn change_cases() -> Vec<Case> {
    vec![
        case(
            "an envelope without op",
            Some(change(None, Some(r#"{"id": 2, "name": "b"}"#))),
            None,
        ),
        case(
            "an envelope without after",
            Some(change(Some("c"), None)),
            None,
        ),
        case(
            "a row image with a column named like silver's",
            Some(change(Some("c"), Some(r#"{"id": 3, "_cdc_op": "x"}"#))),
            Some("schema"),
        ),
        case(
            "a row image nested too deep",
            Some(change(
                Some("c"),
                Some(&format!(
                    r#"{{"id": 4, "x": {}1{}}}"#,
                    "[".repeat(60),
                    "]".repeat(60)
                )),
            )),
            Some("limit"),
        ),
    ]
}

const AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Payment", "fields": [
    {"name": "id", "type": "long"}, {"name": "name", "type": "string"}]}"#;

fn avro(id: u32, n: i64) -> Vec<u8> {
    use apache_avro::types::Value;
    let schema = apache_avro::Schema::parse_str(AVRO_SCHEMA).expect("schema");
    let value = Value::Record(vec![
        ("id".into(), Value::Long(n)),
        ("name".into(), Value::String(format!("payment {n}"))),
    ]);
    let body = apache_avro::to_avro_datum(&schema, value).expect("datum");
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn avro_cases(id: u32) -> Vec<Case> {
    let mut truncated = avro(id, 3);
    truncated.truncate(truncated.len() - 3);
    vec![
        case(
            "the magic byte and an unknown schema id",
            Some(vec![0, 0, 0, 0x27, 0x0f, 2, 4]),
            Some("decode"),
        ),
        case("a truncated Avro body", Some(truncated), Some("decode")),
        case("bare bytes", Some(b"\x01\x02".to_vec()), Some("decode")),
    ]
}

/// Produce each case followed by an ordinary message; returns the offsets of the cases by
/// name and of the ordinary messages.
fn produce_cases(
    producer: &SimpleProducer,
    topic: &str,
    cases: &[Case],
    ordinary: &dyn Fn(usize) -> Vec<u8>,
    first: i64,
) -> (Hostile, Vec<i64>) {
    let mut offset = first;
    let mut hostile = BTreeMap::new();
    let mut plain = Vec::new();
    let send = |key: &[u8], payload: Option<&[u8]>| {
        producer
            .send(&Outgoing {
                topic,
                key: Some(key),
                payload,
                timestamp_ms: None,
            })
            .expect("send");
    };
    for (i, c) in cases.iter().enumerate() {
        send(b"plain", Some(&ordinary(i)));
        plain.push(offset);
        send(&c.key, c.payload.as_deref());
        hostile.insert(offset + 1, (c.name, c.stage));
        offset += 2;
    }
    send(b"plain", Some(&ordinary(cases.len())));
    plain.push(offset);
    (hostile, plain)
}

/// Offsets of `topic` in `table` and in the dead letters (with their stage).
fn landed(w: &Workdir, table: &str, topic: &str) -> (Vec<i64>, BTreeMap<i64, String>) {
    let rows: Vec<i64> = w
        .sql(&format!(
            "select _kafka_offset from {table} where _kafka_topic = '{topic}' order by 1"
        ))
        .iter()
        .map(|o| o.parse().expect("offset"))
        .collect();
    let dead = w
        .sql(&format!(
            "select kafka_offset, stage from sluice.dead_letters where kafka_topic = '{topic}' order by 1"
        ))
        .iter()
        .map(|r| {
            let (o, s) = r.split_once(',').expect("two columns");
            (o.parse().expect("offset"), s.to_string())
        })
        .collect();
    (rows, dead)
}

fn check_topic(
    w: &Workdir,
    table: &str,
    topic: &str,
    total: i64,
    hostile: &Hostile,
    plain: &[i64],
) {
    let (rows, dead) = landed(w, table, topic);
    let mut all: Vec<i64> = rows.clone();
    all.extend(dead.keys());
    all.sort_unstable();
    assert_eq!(
        all,
        (0..total).collect::<Vec<_>>(),
        "{topic}: every offset exactly once in {table} or the dead letters"
    );
    for o in plain {
        assert!(
            rows.contains(o),
            "{topic}: the ordinary message at {o} landed"
        );
    }
    for (o, (name, stage)) in hostile {
        match stage {
            None => assert!(rows.contains(o), "{topic}: '{name}' lands in {table}"),
            Some(stage) => assert_eq!(
                dead.get(o).map(String::as_str),
                Some(*stage),
                "{topic}: '{name}' is a dead letter at stage {stage}"
            ),
        }
    }
}

#[test]
fn hostile_messages_never_stop_crash_or_bloat_a_run_on_tansu() {
    let Some(broker) = Tansu::start() else {
        return;
    };
    let registry = EmbeddedRegistry::start().expect("registry");
    let schema_id = registry.register(AVRO_SCHEMA);
    let (events, changes, payments) = ("h-events", "h-changes", "h-payments");
    for t in [events, changes, payments] {
        broker.create_topic(t, 1);
    }
    let producer = SimpleProducer::new(&broker.bootstrap()).expect("producer");
    let w = Workdir::new();
    let key = w.dir.path().join("policy.key");
    std::fs::write(&key, "a hostile-input test key of 32 bytes").expect("key");
    w.write_config(
        &broker,
        "hostile",
        &[events, changes, payments],
        &format!(
            "[bronze.routes]\n\"{events}\" = \"events\"\n\"{changes}\" = \"changes\"\n\"{payments}\" = \"payments\"\n\
             [silver.tables.customers]\ntopics = [\"{changes}\"]\nkey = [\"id\"]\n\
             [decode.topics.\"{payments}\"]\nformat = \"avro\"\n\
             [decode.schema_registry]\nurl = \"{}\"\n\
             [pii]\ndead_letters = \"raw\"\n[pii.keys.k]\nfile = {:?}\n\
             [pii.tables.events]\npostcode = {{ action = \"generalize\", to = \"outward\" }}\n\
             account = {{ action = \"encrypt_fpe\", key = \"k\" }}\n\
             email = {{ action = \"tokenize\", key = \"k\" }}\n",
            registry.url(),
            key.display().to_string()
        ),
    );
    let text = std::fs::read_to_string(w.config()).expect("config");
    std::fs::write(
        w.config(),
        text.replacen(
            "[pipeline]\n",
            &format!("[pipeline]\nmemory_budget_bytes = {BUDGET}\n"),
            1,
        ),
    )
    .expect("budget");
    let change_ok = |i: usize| {
        change(
            Some("c"),
            Some(&format!(r#"{{"id": {}, "name": "n{i}"}}"#, 100 + i)),
        )
    };
    let avro_ok = |i: usize| avro(schema_id, i as i64);

    // A pipeline running on ordinary traffic: its tables exist when the hostile wave comes.
    for (topic, payload) in [
        (events, ordinary(0)),
        (changes, change_ok(0)),
        (payments, avro_ok(0)),
    ] {
        producer
            .send(&Outgoing {
                topic,
                key: Some(b"plain"),
                payload: Some(&payload),
                timestamp_ms: None,
            })
            .expect("send");
    }
    producer.flush().expect("flush");
    w.run_ok(&["run", "--until-caught-up"]);

    let (event_hostile, event_plain) =
        produce_cases(&producer, events, &event_cases(), &ordinary, 1);
    // A field name of its own per message, then one more ordinary message.
    let mut event_total = 1 + event_cases().len() as i64 * 2 + 1;
    for i in 0..NEW_FIELDS {
        let payload = format!(r#"{{"id": {i}, "field_{i}": {i}}}"#);
        producer
            .send(&Outgoing {
                topic: events,
                key: None,
                payload: Some(payload.as_bytes()),
                timestamp_ms: None,
            })
            .expect("send");
    }
    event_total += NEW_FIELDS as i64;
    producer
        .send(&Outgoing {
            topic: events,
            key: None,
            payload: Some(&ordinary(99)),
            timestamp_ms: None,
        })
        .expect("send");
    let mut event_plain = event_plain;
    event_plain.extend([0, event_total]);
    event_total += 1;
    let (change_hostile, mut change_plain) =
        produce_cases(&producer, changes, &change_cases(), &change_ok, 1);
    change_plain.push(0);
    let (avro_hostile, mut avro_plain) =
        produce_cases(&producer, payments, &avro_cases(schema_id), &avro_ok, 1);
    avro_plain.push(0);
    producer.flush().expect("flush");

    let out = w.run_ok(&["run", "--until-caught-up", "--format", "json"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let rss = summary["peak_rss_bytes"].as_u64().expect("rss");
    // Each topic: the first message, then a case and an ordinary message in turn.
    let change_total = change_plain.len() as i64 * 2 - 2;
    let avro_total = avro_plain.len() as i64 * 2 - 2;
    let total = event_total + change_total + avro_total;
    assert_eq!(summary["messages"].as_i64(), Some(total - 3), "{summary}");
    assert!(
        rss < BUDGET,
        "peak RSS {} MiB over the {} MiB budget",
        rss >> 20,
        BUDGET >> 20
    );
    eprintln!(
        "hostile mix: {total} messages, {} dead letters, peak RSS {} MiB, {:.2} CPU-s",
        summary["dead_letters"],
        rss >> 20,
        summary["cpu_seconds"].as_f64().unwrap_or_default()
    );

    let check = |w: &Workdir| {
        check_topic(
            w,
            "bronze.events",
            events,
            event_total,
            &event_hostile,
            &event_plain,
        );
        check_topic(
            w,
            "bronze.changes",
            changes,
            change_total,
            &change_hostile,
            &change_plain,
        );
        check_topic(
            w,
            "bronze.payments",
            payments,
            avro_total,
            &avro_hostile,
            &avro_plain,
        );
    };
    check(&w);
    // No library panicked on any of it (a contained panic reads "internal error"), and no
    // error quotes a value the messages held.
    assert_eq!(
        w.sql("select count(*) from sluice.dead_letters where error like '%internal error%'"),
        vec!["0".to_string()],
        "a panic was contained: a decoder or action panicked on a hostile message"
    );
    // (Values of messages that became dead letters: their errors are where a value
    // could be quoted.)
    for value in ["7777777777", "99999999999999999999999", "2099-01-01"] {
        assert_eq!(
            w.sql(&format!(
                "select count(*) from sluice.dead_letters where strpos(error, '{value}') > 0"
            )),
            vec!["0".to_string()],
            "an error quotes the value {value}"
        );
    }
    // The new field names: the table gains a bounded number of columns, the rest wait in
    // the dead letters with the limit named.
    let columns = w.run_ok(&[
        "sql",
        "--format",
        "csv",
        "select * from bronze.events limit 0",
    ]);
    let header = String::from_utf8_lossy(&columns.stdout);
    let width = header.lines().next().unwrap_or_default().split(',').count();
    assert!(width < 2_100, "bronze.events has {width} columns");
    let refused = w.sql(
        "select count(*) from sluice.dead_letters where error like '%decode.max_new_columns_per_batch%' or error like '%decode.max_columns%'",
    );
    assert_ne!(
        refused,
        vec!["0".to_string()],
        "new columns beyond the limits are refused"
    );
    // What landed is protected: the outward code of a non-ASCII postcode, encrypted accounts.
    assert_eq!(
        w.sql("select postcode from bronze.events where id = 1 and postcode is not null and account is null"),
        vec!["££".to_string()]
    );
    assert_eq!(
        w.sql("select count(*) from bronze.events where account = '4000123412341234'"),
        vec!["0".to_string()],
        "accounts are encrypted"
    );
    // Silver took the ordinary change events.
    assert_eq!(
        w.sql("select count(*) from silver.customers where name like 'n%'"),
        vec![(change_plain.len() - 1).to_string()],
        "one row per id (the first two ordinary events share one)"
    );
    // And the table kept its type for ids: an integer beyond 64 bits did not turn it into
    // a double.
    assert_eq!(
        w.sql("select arrow_typeof(id) from bronze.events limit 1"),
        vec!["Int64".to_string()]
    );

    // A restart finds nothing new and loses nothing.
    let out = w.run_ok(&["run", "--until-caught-up", "--format", "json"]);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(again["rows"].as_i64(), Some(0), "{again}");
    assert_eq!(again["dead_letters"].as_i64(), Some(0), "{again}");
    check(&w);
}
