//! Debezium change events in Avro with the Confluent wire format, schemas from a Schema
//! Registry (the embedded one, speaking the REST endpoints sluice calls): bronze and a
//! silver table kept current, unknown ids and unframed messages as dead letters, one
//! registry fetch per schema id, and a restart while the registry is down.

use apache_avro::types::Value;

use crate::harness::{Broker, Mock, Workdir, produce_keyed};
use sluice_connectors::demo::registry::EmbeddedRegistry;

/// The envelope Debezium's Postgres connector registers for `public.customers`.
const ENVELOPE: &str = r#"{
  "type": "record", "name": "Envelope", "namespace": "bank.public.customers",
  "fields": [
    {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": ["null", "string"], "default": null},
        {"name": "email", "type": ["null", "string"], "default": null},
        {"name": "opened", "type": ["null", {"type": "int", "connect.name": "io.debezium.time.Date", "logicalType": "date"}], "default": null}
      ]}], "default": null},
    {"name": "after", "type": ["null", "Value"], "default": null},
    {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
        {"name": "version", "type": "string"},
        {"name": "connector", "type": "string"},
        {"name": "name", "type": "string"},
        {"name": "ts_ms", "type": "long"},
        {"name": "db", "type": "string"},
        {"name": "schema", "type": "string"},
        {"name": "table", "type": "string"},
        {"name": "txId", "type": ["null", "long"], "default": null},
        {"name": "lsn", "type": ["null", "long"], "default": null}
      ]}},
    {"name": "op", "type": "string"},
    {"name": "ts_ms", "type": ["null", "long"], "default": null}
  ]
}"#;

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn some(v: Value) -> Value {
    Value::Union(1, Box::new(v))
}

fn none() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn row(id: i64, name: &str, email: &str) -> Value {
    some(record(vec![
        ("id", Value::Long(id)),
        ("name", some(Value::String(name.into()))),
        ("email", some(Value::String(email.into()))),
        ("opened", some(Value::Date(20_000))),
    ]))
}

fn source(lsn: i64) -> Value {
    record(vec![
        ("version", Value::String("2.7.3.Final".into())),
        ("connector", Value::String("postgresql".into())),
        ("name", Value::String("bank".into())),
        ("ts_ms", Value::Long(1_767_225_600_000 + lsn)),
        ("db", Value::String("bank".into())),
        ("schema", Value::String("public".into())),
        ("table", Value::String("customers".into())),
        ("txId", some(Value::Long(700 + lsn))),
        ("lsn", some(Value::Long(lsn))),
    ])
}

/// One change event in the Confluent wire format.
fn event(schema_id: u32, op: &str, before: Value, after: Value, lsn: i64) -> Vec<u8> {
    let value = record(vec![
        ("before", before),
        ("after", after),
        ("source", source(lsn)),
        ("op", Value::String(op.into())),
        ("ts_ms", some(Value::Long(1_767_225_600_100 + lsn))),
    ]);
    let schema = apache_avro::Schema::parse_str(ENVELOPE).expect("schema");
    let body = apache_avro::to_avro_datum(&schema, value).expect("datum");
    let mut out = vec![0];
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn avro_change_events_from_a_schema_registry_keep_silver_current() {
    let broker = Mock::start();
    let topic = "bank.public.customers";
    broker.create_topic(topic, 2);
    let registry = EmbeddedRegistry::start().expect("registry");
    registry.require_auth("sluice", "s3cret");
    let id = registry.register(ENVELOPE);
    let null = || none();
    let events = vec![
        (
            1,
            Some(event(
                id,
                "r",
                null(),
                row(1, "Ann", "ann@example.com"),
                100,
            )),
        ),
        (
            2,
            Some(event(
                id,
                "r",
                null(),
                row(2, "Bob", "bob@example.com"),
                100,
            )),
        ),
        (
            3,
            Some(event(
                id,
                "c",
                null(),
                row(3, "Cat", "cat@example.com"),
                200,
            )),
        ),
        (
            1,
            Some(event(
                id,
                "u",
                null(),
                row(1, "Ann B", "ann@example.com"),
                210,
            )),
        ),
        (
            2,
            Some(event(
                id,
                "d",
                row(2, "Bob", "bob@example.com"),
                null(),
                220,
            )),
        ),
        (2, None),
        // A schema id the registry does not know, and a message not in the wire format.
        (9, Some(vec![0, 0, 0, 0, 42, 2])),
        (9, Some(b"{\"id\": 9}".to_vec())),
    ];
    produce_keyed(&broker, topic, &events);

    let w = Workdir::new();
    let key = w.dir.path().join("pseudo.key");
    std::fs::write(&key, "an-integration-test-key-of-32-bytes").expect("key");
    w.write_config(
        &broker,
        "avro",
        &[topic],
        &format!(
            "[bronze.routes]\n\"{topic}\" = \"customers_changes\"\n\
             [silver.tables.customers]\ntopics = [\"{topic}\"]\nkey = [\"id\"]\n\
             [decode]\nformat = \"avro\"\n\
             [decode.schema_registry]\nurl = \"{}\"\nusername_env = \"TEST_SR_USER\"\npassword_env = \"TEST_SR_PASSWORD\"\n\
             [pii]\ndead_letters = \"raw\"\n[pii.keys.pseudo]\nfile = {:?}\n\
             [pii.tables.customers_changes]\nemail = {{ action = \"tokenize\", key = \"pseudo\" }}\n",
            registry.url(),
            key.display().to_string()
        ),
    );
    let run = |w: &Workdir| {
        w.run_ok_env(
            &["run", "--until-caught-up"],
            &[("TEST_SR_USER", "sluice"), ("TEST_SR_PASSWORD", "s3cret")],
        );
    };
    run(&w);
    // One fetch for the envelope's id, one for the unknown id.
    assert_eq!(registry.reads(id), 1);
    assert_eq!(registry.reads(42), 1);
    let silver = |w: &Workdir| {
        w.sql(
            "select id, name, cast(opened as varchar), _cdc_op, email like 'tok_pseudo_%' \
             from silver.customers order by id",
        )
    };
    assert_eq!(
        silver(&w),
        vec![
            "1,Ann B,2024-10-04,u,true".to_string(),
            "3,Cat,2024-10-04,c,true".to_string(),
        ]
    );
    assert_eq!(w.count("bronze.customers_changes"), 6);
    let raw = w.sql(
        "select count(*) from bronze.customers_changes \
         where after.email like '%@%' or before.email like '%@%'",
    );
    assert_eq!(raw, vec!["0".to_string()], "emails in bronze are tokenised");
    let dead = w.sql(
        "select kafka_offset >= 0, stage, error like '%schema id 42 is unknown%' or error like '%Confluent wire format%' \
         from sluice.dead_letters order by error",
    );
    assert_eq!(dead, vec!["true,decode,true".to_string(); 2]);

    // Restart while the registry is down: the schema cached on disk is enough.
    registry.set_down(true);
    produce_keyed(
        &broker,
        topic,
        &[(
            4,
            Some(event(
                id,
                "c",
                none(),
                row(4, "Dan", "dan@example.com"),
                300,
            )),
        )],
    );
    run(&w);
    assert_eq!(w.count("silver.customers"), 3);

    // The source table gains a column: the new schema version widens the nested row
    // type in bronze and adds a silver column; older rows read it as null.
    registry.set_down(false);
    let v2 = ENVELOPE.replace(
        r#"{"name": "opened""#,
        r#"{"name": "phone", "type": ["null", "string"], "default": null},
        {"name": "opened""#,
    );
    let id2 = registry.register(&v2);
    assert_ne!(id2, id);
    let schema = apache_avro::Schema::parse_str(&v2).expect("v2");
    let after = some(record(vec![
        ("id", Value::Long(3)),
        ("name", some(Value::String("Cat".into()))),
        ("email", some(Value::String("cat@example.com".into()))),
        ("phone", some(Value::String("07700 900123".into()))),
        ("opened", some(Value::Date(20_000))),
    ]));
    let value = record(vec![
        ("before", none()),
        ("after", after),
        ("source", source(400)),
        ("op", Value::String("u".into())),
        ("ts_ms", some(Value::Long(1_767_225_600_500))),
    ]);
    let mut message = vec![0];
    message.extend_from_slice(&id2.to_be_bytes());
    message.extend(apache_avro::to_avro_datum(&schema, value).expect("datum"));
    produce_keyed(&broker, topic, &[(3, Some(message))]);
    run(&w);
    assert_eq!(
        w.sql("select id, phone from silver.customers order by id"),
        vec![
            "1,".to_string(),
            "3,07700 900123".to_string(),
            "4,".to_string()
        ]
    );
    assert_eq!(
        w.sql("select count(*) from bronze.customers_changes where after.phone is not null"),
        vec!["1".to_string()]
    );
}
