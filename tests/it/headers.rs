//! Kafka headers: only declared ones are read; they land in `_kafka_headers` byte for
//! byte (the last of a repeated name winning), a table gains the column or a field when a
//! header is declared later, and the PII policy protects a header like any column. An
//! independent reader (DuckDB) reads the struct.

use std::ops::Range;

use sluice_connectors::demo::broker::{Outgoing, SimpleProducer};

use crate::harness::{Broker, Mock, Tool, Workdir, require_part};

fn actor(i: usize) -> String {
    format!("actor.{i:03}@canary-mail.example")
}

fn secret(i: usize) -> String {
    format!("undeclared-secret-{i:03}-zq")
}

/// Audit events `ids`, each with headers: a trace id, the actor's email (a canary), a
/// signature sent twice (the second, binary with a NUL, wins), an undeclared header
/// holding a canary and a non-ASCII name. `bad` gets a trace id that is not UTF-8.
fn produce_audit(broker: &dyn Broker, ids: Range<usize>, bad: Option<usize>) {
    let producer = SimpleProducer::new(&broker.bootstrap()).expect("producer");
    for i in ids {
        let payload = format!(r#"{{"id": {i}, "action": "login"}}"#);
        let trace = format!("00-{i:032x}-01");
        let (actor, secret) = (actor(i), secret(i));
        let sig = [0x00, 0xff, i as u8];
        let mut headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("traceparent", Some(trace.as_bytes())),
            ("x-actor-email", Some(actor.as_bytes())),
            ("x-sig", Some(b"first")),
            ("x-secret", Some(secret.as_bytes())),
            ("Ünïcödé-名前", Some("Zoë".as_bytes())),
            ("x-sig", Some(&sig)),
        ];
        if bad == Some(i) {
            headers[0].1 = Some(&[0xc3, 0x28]);
        }
        producer
            .send_with_headers(
                &Outgoing {
                    topic: "audit",
                    key: Some(b"k"),
                    payload: Some(payload.as_bytes()),
                    timestamp_ms: None,
                },
                &headers,
            )
            .expect("send");
    }
    producer.flush().expect("flush");
}

const POLICY: &str = r#"
[pii]
dead_letter_key = "vault"
[pii.keys.pseudo]
env = "SLUICE_TEST_PSEUDONYM_KEY"
[pii.keys.vault]
file = "KEYDIR/vault.key"
[pii.tables.audit]
"_kafka_headers.x-actor-email" = { action = "tokenize", key = "pseudo", tag = "direct_identifier" }
"#;

#[test]
fn declared_headers_land_byte_for_byte_and_the_policy_protects_them() {
    let broker = Mock::start();
    broker.create_topic("audit", 2);
    let w = Workdir::new();
    let key = [("SLUICE_TEST_PSEUDONYM_KEY", "0123456789abcdef-pseudonyms")];
    let run = |extra: &str| {
        w.write_config(&broker, "headers", &["audit"], extra);
        w.run_ok_env(&["run", "--until-caught-up"], &key);
    };

    // Nothing declared: headers are not read, the table has no column for them.
    produce_audit(&broker, 0..10, None);
    run("");
    assert_eq!(w.count("bronze.audit"), 10);
    let columns =
        w.sql("select column_name from information_schema.columns where table_name = 'audit'");
    assert!(
        !columns.iter().any(|c| c.contains("_kafka_headers")),
        "{columns:?}"
    );

    // One header declared on the existing table: the column comes, older rows hold null.
    produce_audit(&broker, 10..20, None);
    run("[bronze.tables.audit]\nheaders = { traceparent = \"string\" }\n");

    // Two more, one binary, under a policy: the struct widens; a trace id that is not
    // UTF-8 makes its message a dead letter naming the header.
    std::fs::write(
        w.dir.path().join("vault.key"),
        "a vault secret of some length\n",
    )
    .expect("key file");
    let policy = POLICY.replace("KEYDIR", &w.dir.path().display().to_string());
    produce_audit(&broker, 20..60, Some(33));
    run(&format!(
        "[bronze.tables.audit]\nheaders = {{ traceparent = \"string\", \"x-actor-email\" = \"string\", \"x-sig\" = \"binary\", \"Ünïcödé-名前\" = \"string\" }}\n{policy}"
    ));

    assert_eq!(w.count("bronze.audit"), 59);
    let dead = w.sql("select kafka_offset is not null, stage, error from sluice.dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].starts_with("true,decode,") && dead[0].contains("'traceparent'"),
        "{dead:?}"
    );
    let counts = w.sql(
        "select count(_kafka_headers['traceparent']), count(_kafka_headers['x-sig']), \
         count(_kafka_headers['Ünïcödé-名前']) from bronze.audit",
    );
    assert_eq!(counts, ["49,39,39"], "null before each header was declared");
    let row = w.sql(
        "select _kafka_headers['traceparent'], substr(_kafka_headers['x-actor-email'], 1, 11), \
         encode(_kafka_headers['x-sig'], 'hex'), _kafka_headers['Ünïcödé-名前'] \
         from bronze.audit where id = 42",
    );
    assert_eq!(
        row,
        [format!("00-{:032x}-01,tok_pseudo_,00ff2a,Zoë", 42)],
        "the last x-sig wins, byte for byte"
    );
    // The actor's email is a token everywhere; undeclared headers were never read.
    let canaries: Vec<(&'static str, String)> = (0..60)
        .flat_map(|i| [("actor", actor(i)), ("undeclared", secret(i))])
        .collect();
    let leaks = crate::pii::scan(&w.lake(), &canaries);
    assert!(leaks.is_empty(), "header values in the lake: {leaks:#?}");

    if let Some(py) = require_part(Tool::Python, "reading headers with DuckDB") {
        let theirs = crate::duckdb::duckdb(
            &py,
            &w.lake().join("bronze/audit"),
            "count(*), count(_kafka_headers.traceparent), max(hex(_kafka_headers.\"x-sig\"))",
        );
        let theirs: Vec<String> = theirs.iter().map(ToString::to_string).collect();
        assert_eq!(theirs, ["59", "49", "\"00FF3B\""]);
    }
}

/// A rule on a header the table does not declare (misspelt, another case, or no headers
/// captured at all) would let the real header's values land unprotected: start-up refuses
/// it, whether or not the payload schema is declared.
#[test]
fn a_policy_rule_on_a_header_not_declared_stops_start_up() {
    let w = Workdir::new();
    let base = "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ntopics = [\"audit\"]\n\
                [pii]\ndead_letter_key = \"k1\"\n[pii.keys.k1]\nenv = \"SLUICE_TEST_HEADER_KEY\"\n";
    let cases = [
        (
            "[bronze.tables.audit]\nheaders = { \"x-actor-email\" = \"string\" }\n",
            "\"_kafka_headers.X-Actor-Email\" = { action = \"tokenize\", key = \"k1\" }",
            "no header 'X-Actor-Email' is declared",
        ),
        (
            "",
            "\"_kafka_headers.x-actor-email\" = { action = \"tokenize\", key = \"k1\" }",
            "captures no Kafka headers",
        ),
    ];
    for (declared, rule, expected) in cases {
        std::fs::write(
            w.config(),
            format!("{base}[pii.tables.audit]\n{rule}\n{declared}"),
        )
        .expect("config");
        let out = w
            .sluice(&["run", "--until-caught-up"])
            .env("SLUICE_TEST_HEADER_KEY", "a secret long enough")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
}
