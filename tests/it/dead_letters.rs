//! Malformed messages land in `_sluice/dead_letters` with their provenance; the good ones
//! land in bronze; every offset is accounted for once.

use crate::harness::{Broker, Mock, Tansu, Workdir, produce_raw};

fn bad_messages_go_to_dead_letters_with_provenance(broker: &dyn Broker) {
    broker.create_topic("touchpoints", 1);
    let payloads: Vec<Option<&[u8]>> = vec![
        Some(br#"{"id": 1, "channel": "app"}"#),
        Some(br#"{"id": 2, "channel": "#),
        Some(br#"{"id": 3, "channel": "web"}"#),
        Some(b""),
        Some(br#"{"id": {"nested": true}, "channel": "branch"}"#),
        Some(b"[1, 2]"),
        None,
        Some(br#"{"id": 8, "channel": "app", "device": "ios"}"#),
    ];
    produce_raw(broker, "touchpoints", &payloads);
    let w = Workdir::new();
    w.write_config(broker, "dlq", &["touchpoints"], "");
    w.run_ok(&["run", "--until-caught-up"]);

    let dead = w.sql(
        "select kafka_topic, kafka_partition, kafka_offset, stage, destination_table, pipeline, length(payload), error is not null \
         from sluice.dead_letters order by kafka_offset",
    );
    assert_eq!(
        dead,
        vec![
            "touchpoints,0,1,decode,touchpoints,dlq,21,true",
            "touchpoints,0,3,decode,touchpoints,dlq,0,true",
            "touchpoints,0,4,schema,touchpoints,dlq,45,true",
            "touchpoints,0,5,decode,touchpoints,dlq,6,true",
        ]
    );
    // Good rows, the tombstone (a row of nulls) and the evolved row with a new column.
    let good = w.sql(
        "select _kafka_offset, id, channel, device from bronze.touchpoints order by _kafka_offset",
    );
    assert_eq!(good, vec!["0,1,app,", "2,3,web,", "6,,,", "7,8,app,ios"]);
    let raw =
        w.sql("select cast(payload as varchar) from sluice.dead_letters where kafka_offset = 1");
    assert_eq!(raw, vec![r#""{""id"": 2, ""channel"": ""#.to_string()]);
    // Re-running adds nothing to either table.
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(w.count("sluice.dead_letters"), 4);
    assert_eq!(w.count("bronze.touchpoints"), 4);
}

#[test]
fn bad_messages_go_to_dead_letters_with_provenance_on_mock_cluster() {
    bad_messages_go_to_dead_letters_with_provenance(&Mock::start());
}

#[test]
fn bad_messages_go_to_dead_letters_with_provenance_on_tansu() {
    if let Some(t) = Tansu::start() {
        bad_messages_go_to_dead_letters_with_provenance(&t);
    }
}
