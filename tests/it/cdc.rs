//! Debezium change events (Postgres connector, JSON) into bronze and a silver table kept
//! current by MERGE: snapshot then streaming, updates with unchanged TOASTed columns,
//! deletes with tombstones, a primary-key change, late and replayed events, truncate.

use serde_json::{Value, json};

use crate::harness::{Broker, Mock, Workdir, produce_keyed};

const TOAST: &str = "__debezium_unavailable_value";

/// A Debezium Postgres envelope for table `public.customers`.
fn dbz(op: &str, before: Value, after: Value, lsn: i64) -> Value {
    json!({
        "before": before,
        "after": after,
        "source": {
            "version": "2.7.3.Final", "connector": "postgresql", "name": "bank",
            "ts_ms": 1_767_225_600_000i64 + lsn, "snapshot": if op == "r" { "true" } else { "false" },
            "db": "bank", "sequence": format!("[null,\"{lsn}\"]"), "schema": "public",
            "table": "customers", "txId": 700 + lsn, "lsn": lsn, "xmin": null
        },
        "op": op,
        "ts_ms": 1_767_225_600_100i64 + lsn,
        "transaction": null
    })
}

fn row(id: i64, name: &str, email: &str, bio: &str) -> Value {
    json!({"id": id, "name": name, "email": email, "bio": bio})
}

/// Produce `(key id, event)` pairs in order; `None` is a tombstone.
fn send(broker: &dyn Broker, topic: &str, events: &[(i64, Option<Value>)]) {
    let events: Vec<(i64, Option<Vec<u8>>)> = events
        .iter()
        .map(|(id, e)| (*id, e.as_ref().map(|v| v.to_string().into_bytes())))
        .collect();
    produce_keyed(broker, topic, &events);
}

fn config(w: &Workdir, broker: &dyn Broker, extra: &str) {
    let key = w.dir.path().join("pseudo.key");
    std::fs::write(&key, "an-integration-test-key-of-32-bytes").expect("key");
    w.write_config(
        broker,
        "cdc",
        &["bank.public.customers"],
        &format!(
            "[bronze.routes]\n\"bank.public.customers\" = \"customers_changes\"\n\
             [silver.tables.customers]\ntopics = [\"bank.public.customers\"]\nkey = [\"id\"]\n\
             [pii]\ndead_letters = \"raw\"\n[pii.keys.pseudo]\nfile = {:?}\n\
             [pii.tables.customers_changes]\nemail = {{ action = \"tokenize\", key = \"pseudo\" }}\n{extra}",
            key.display().to_string()
        ),
    );
}

fn silver(w: &Workdir) -> Vec<String> {
    w.sql("select id, name, bio, _cdc_op, email like 'tok_pseudo_%' as email_protected from silver.customers order by id")
}

#[test]
fn change_events_keep_silver_equal_to_the_source_table() {
    let broker = Mock::start();
    let topic = "bank.public.customers";
    broker.create_topic(topic, 2);
    let long = "a long biography that Postgres keeps TOASTed";
    let events = vec![
        // Snapshot.
        (
            1,
            Some(dbz(
                "r",
                Value::Null,
                row(1, "Ann", "ann@example.com", long),
                100,
            )),
        ),
        (
            2,
            Some(dbz(
                "r",
                Value::Null,
                row(2, "Bob", "bob@example.com", "b"),
                100,
            )),
        ),
        (
            3,
            Some(dbz(
                "r",
                Value::Null,
                row(3, "Cat", "cat@example.com", "c"),
                100,
            )),
        ),
        // Streaming.
        (
            4,
            Some(dbz(
                "c",
                Value::Null,
                row(4, "Dan", "dan@example.com", "d0"),
                200,
            )),
        ),
        // Unchanged TOASTed bio: the placeholder must not overwrite the stored value.
        (
            1,
            Some(dbz(
                "u",
                Value::Null,
                row(1, "Ann B", "ann@example.com", TOAST),
                210,
            )),
        ),
        // Delete, then its tombstone.
        (
            2,
            Some(dbz(
                "d",
                json!({"id": 2, "name": null, "email": null, "bio": null}),
                Value::Null,
                220,
            )),
        ),
        (2, None),
        // Primary-key change 3 → 30: delete + tombstone + create.
        (
            3,
            Some(dbz(
                "d",
                json!({"id": 3, "name": null, "email": null, "bio": null}),
                Value::Null,
                230,
            )),
        ),
        (3, None),
        (
            30,
            Some(dbz(
                "c",
                Value::Null,
                row(30, "Cat", "cat@example.com", "c"),
                231,
            )),
        ),
        // Two updates in one flush, the second with the placeholder: the first one's bio wins.
        (
            4,
            Some(dbz(
                "u",
                Value::Null,
                row(4, "Dan", "dan@example.com", "d1"),
                240,
            )),
        ),
        (
            4,
            Some(dbz(
                "u",
                Value::Null,
                row(4, "Dan", "dan@example.com", TOAST),
                250,
            )),
        ),
    ];
    send(&broker, topic, &events);
    // The same update with Kafka Connect's schema/payload wrapper.
    let wrapped = json!({"schema": {"type": "struct", "optional": false, "name": "bank.public.customers.Envelope"},
                         "payload": dbz("u", Value::Null, row(30, "Cat C", "cat@example.com", "c"), 260)});
    send(&broker, topic, &[(30, Some(wrapped))]);

    let w = Workdir::new();
    config(&w, &broker, "");
    w.run_ok(&["run", "--until-caught-up"]);
    let expected = vec![
        format!("1,Ann B,{long},u,true"),
        "4,Dan,d1,u,true".to_string(),
        "30,Cat C,c,u,true".to_string(),
    ];
    assert_eq!(silver(&w), expected);
    // Bronze keeps every event, the email protected in both images.
    assert_eq!(w.count("bronze.customers_changes"), events.len() + 1);
    let raw = w.sql(
        "select count(*) from bronze.customers_changes \
         where after.email like '%@%' or before.email like '%@%'",
    );
    assert_eq!(raw, vec!["0".to_string()], "emails in bronze are tokenised");

    // Late and replayed events: older than what silver holds, so ignored; a change older
    // than a delete does not bring the row back.
    send(
        &broker,
        topic,
        &[
            (
                1,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(1, "Ann OLD", "ann@example.com", "old"),
                    205,
                )),
            ),
            (
                2,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(2, "Bob OLD", "bob@example.com", "old"),
                    215,
                )),
            ),
            (
                4,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(4, "Dan", "dan@example.com", "d1"),
                    240,
                )),
            ),
        ],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(silver(&w), expected, "late events change nothing");

    // A rerun reads nothing new and changes nothing.
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(silver(&w), expected);

    // Truncate, then a new row.
    send(
        &broker,
        topic,
        &[
            (0, Some(dbz("t", Value::Null, Value::Null, 300))),
            (
                5,
                Some(dbz(
                    "c",
                    Value::Null,
                    row(5, "Eve", "eve@example.com", "e"),
                    310,
                )),
            ),
        ],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(silver(&w), vec!["5,Eve,e,c,true".to_string()]);
}

#[test]
fn silver_survives_kills_without_losing_or_reordering_changes() {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use std::time::Duration;
    const KEYS: i64 = 300;
    const ROUNDS: i64 = 40;
    let broker = Mock::start();
    let topic = "bank.public.customers";
    broker.create_topic(topic, 3);
    // Every key is created, then updated ROUNDS times; every 7th key is deleted at the end.
    let mut events = Vec::new();
    let mut lsn = 1000;
    for k in 0..KEYS {
        lsn += 1;
        events.push((
            k,
            Some(dbz(
                "c",
                Value::Null,
                row(k, "v0", "x@example.com", "b"),
                lsn,
            )),
        ));
    }
    for r in 1..=ROUNDS {
        for k in 0..KEYS {
            lsn += 1;
            let name = format!("v{r}");
            events.push((
                k,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(k, &name, "x@example.com", "b"),
                    lsn,
                )),
            ));
        }
    }
    for k in (0..KEYS).step_by(7) {
        lsn += 1;
        events.push((k, Some(dbz("d", json!({"id": k}), Value::Null, lsn))));
        events.push((k, None));
    }
    send(&broker, topic, &events);
    let w = Workdir::new();
    let mut rng = StdRng::seed_from_u64(4);
    for attempt in 0..6 {
        config(
            &w,
            &broker,
            &format!("[kafka.properties]\n\"group.id\" = \"cdc-crash-{attempt}\"\n"),
        );
        // Small flushes so that kills land between bronze and silver commits too.
        let text = std::fs::read_to_string(w.config())
            .expect("config")
            .replace("[bronze]\n", "[bronze]\nflush_max_rows = 700\n");
        std::fs::write(w.config(), text).expect("config");
        let mut child = w.sluice(&["run"]).spawn().expect("spawn");
        // A kill at a random moment of the run, start-up included (the sleep is the point).
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..5000)));
        let _ = child.kill();
        let _ = child.wait();
    }
    config(
        &w,
        &broker,
        "[kafka.properties]\n\"group.id\" = \"cdc-final\"\n",
    );
    w.run_ok(&["run", "--until-caught-up"]);
    let rows = w.sql("select id, name from silver.customers order by id");
    let expected: Vec<String> = (0..KEYS)
        .filter(|k| k % 7 != 0)
        .map(|k| format!("{k},v{ROUNDS}"))
        .collect();
    assert_eq!(rows, expected);
    assert_eq!(w.count("bronze.customers_changes"), events.len());
}

#[test]
fn history_keeps_a_version_per_change_of_tracked_columns() {
    let broker = Mock::start();
    let topic = "bank.public.customers";
    broker.create_topic(topic, 1);
    let w = Workdir::new();
    config(
        &w,
        &broker,
        "[silver.tables.customers.history]\ntracked = [\"name\", \"email\"]\n",
    );
    send(
        &broker,
        topic,
        &[
            (
                1,
                Some(dbz(
                    "r",
                    Value::Null,
                    row(1, "Ann", "ann@example.com", "a"),
                    100,
                )),
            ),
            (
                2,
                Some(dbz(
                    "r",
                    Value::Null,
                    row(2, "Bob", "bob@example.com", "b"),
                    100,
                )),
            ),
            (
                1,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(1, "Ann B", "ann@example.com", "a"),
                    210,
                )),
            ),
        ],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    send(
        &broker,
        topic,
        &[
            // Only the untracked bio changes: the current version is updated in place.
            (
                1,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(1, "Ann B", "ann@example.com", "b2"),
                    220,
                )),
            ),
            // A tracked column changes and the bio is TOASTed: a new version keeps b2.
            (
                1,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(1, "Ann B", "ann.b@example.com", TOAST),
                    230,
                )),
            ),
            (
                2,
                Some(dbz(
                    "d",
                    json!({"id": 2, "name": null, "email": null, "bio": null}),
                    Value::Null,
                    240,
                )),
            ),
            (2, None),
            // A replayed old change is ignored: history is not rewritten.
            (
                1,
                Some(dbz(
                    "u",
                    Value::Null,
                    row(1, "Ann B", "ann@example.com", "a"),
                    210,
                )),
            ),
        ],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    let ms = |lsn: i64| (1_767_225_600_000 + lsn).to_string();
    let history = w.sql(
        "select id, name, bio, cast(cast(_valid_from as bigint) / 1000 as varchar), \
         coalesce(cast(cast(_valid_to as bigint) / 1000 as varchar), '-'), _is_current, \
         email like 'tok_pseudo_%' from silver.customers_history order by id, _valid_from",
    );
    assert_eq!(
        history,
        vec![
            format!("1,Ann,a,{},{},false,true", ms(100), ms(210)),
            format!("1,Ann B,b2,{},{},false,true", ms(210), ms(230)),
            format!("1,Ann B,b2,{},-,true,true", ms(230)),
            format!("2,Bob,b,{},{},false,true", ms(100), ms(240)),
        ]
    );
    // The two emails of customer 1 are different tokens, and silver agrees with the
    // current version.
    assert_eq!(
        w.sql("select count(distinct email) from silver.customers_history where id = 1"),
        vec!["2".to_string()]
    );
    assert_eq!(
        w.sql("select id, name, bio from silver.customers order by id"),
        vec!["1,Ann B,b2".to_string()]
    );
    // A rerun changes nothing.
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(w.count("silver.customers_history"), 4);
}

#[test]
fn a_silver_table_added_later_reads_the_backlog_even_when_new_partitions_start_at_the_end() {
    let broker = Mock::start();
    let topic = "bank.public.customers";
    broker.create_topic(topic, 2);
    let events: Vec<(i64, Option<Value>)> = (1..=6)
        .map(|id| {
            let name = format!("C{id}");
            (
                id,
                Some(dbz(
                    "c",
                    Value::Null,
                    row(id, &name, "c@example.com", "b"),
                    100 + id,
                )),
            )
        })
        .collect();
    send(&broker, topic, &events);
    let w = Workdir::new();
    // Bronze alone first.
    w.write_config(
        &broker,
        "cdc",
        &[topic],
        "[bronze.routes]\n\"bank.public.customers\" = \"customers_changes\"\n",
    );
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(w.count("bronze.customers_changes"), 6);
    // Then a silver table, with partitions no table has read starting at the end: silver
    // holds nothing of these partitions yet, so they are read from the start for it.
    config(&w, &broker, "");
    let text = std::fs::read_to_string(w.config()).expect("config");
    std::fs::write(
        w.config(),
        text.replacen("[kafka]\n", "[kafka]\nauto_offset_reset = \"latest\"\n", 1),
    )
    .expect("latest");
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(
        w.sql("select count(*) from silver.customers"),
        vec!["6".to_string()],
        "silver caught up with the backlog bronze already held"
    );
    assert_eq!(
        w.count("bronze.customers_changes"),
        6,
        "and bronze took nothing twice"
    );
}

/// A truncate is remembered across runs: a change older than it that arrives later stays
/// out. A column the source table gains mid-stream, at the top of the row and inside a
/// nested object, widens bronze and silver; every event lands, and rows the batch does
/// not touch keep their values.
#[test]
fn a_truncate_is_remembered_and_columns_added_mid_stream_widen_bronze_and_silver() {
    let broker = Mock::start();
    let topic = "bank.public.customers";
    broker.create_topic(topic, 2);
    let w = Workdir::new();
    config(&w, &broker, "");
    let with_prefs = |id: i64, name: &str, prefs: Value| {
        let mut r = row(id, name, &format!("{id}@example.com"), "b");
        r["prefs"] = prefs;
        r
    };
    let create = |id: i64, name: &str, lsn: i64| {
        (
            id,
            Some(dbz(
                "c",
                Value::Null,
                with_prefs(id, name, json!({"mail": true})),
                lsn,
            )),
        )
    };
    send(
        &broker,
        topic,
        &[create(1, "Ann", 100), create(2, "Bob", 110)],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    send(
        &broker,
        topic,
        &[
            (0, Some(dbz("t", Value::Null, Value::Null, 120))),
            create(3, "Cat", 130),
            create(6, "Fay", 131),
        ],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(silver(&w), ["3,Cat,b,c,true", "6,Fay,b,c,true"]);

    let mut wide = with_prefs(4, "Dan", json!({"mail": true, "sms": false}));
    wide["segment"] = json!("retail");
    let cat = with_prefs(3, "Cat", json!({"mail": false}));
    send(
        &broker,
        topic,
        &[
            // Older than the truncate, arriving in a later run.
            (
                1,
                Some(dbz(
                    "u",
                    Value::Null,
                    with_prefs(1, "Ann late", json!({"mail": true})),
                    115,
                )),
            ),
            (4, Some(dbz("c", Value::Null, wide, 140))),
            (3, Some(dbz("u", Value::Null, cat, 150))),
        ],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(
        silver(&w),
        ["3,Cat,b,u,true", "4,Dan,b,c,true", "6,Fay,b,c,true"]
    );
    assert_eq!(
        w.sql("select id, segment, prefs['sms'], prefs['mail'] from silver.customers order by id"),
        ["3,,,false", "4,retail,false,true", "6,,,true"],
        "Fay's row, copied by the MERGE, keeps its prefs"
    );
    assert_eq!(w.count("bronze.customers_changes"), 8);
    assert_eq!(w.count("sluice.dead_letters"), 0);
}
