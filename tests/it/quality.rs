//! Data-quality expectations: `warn` keeps and counts, `drop` quarantines with the
//! expectation's name, `fail` stops the run with nothing committed; a referential check
//! reads another lake table; counts land in `_sluice/quality`.

use crate::harness::{Broker, Mock, Workdir, produce_raw};

const EXPECTATIONS: &str = r#"
[[quality.txns]]
name = "amount_not_negative"
check = "amount >= 0"
action = "drop"

[[quality.txns]]
name = "currency_known"
check = "currency IN ('GBP', 'EUR')"
action = "warn"

[[quality.txns]]
name = "known_customer"
check = "customer IN (SELECT id FROM bronze.customers)"
action = "warn"
"#;

#[test]
fn expectations_warn_drop_to_quarantine_and_fail() {
    let broker = Mock::start();
    broker.create_topic("customers", 1);
    broker.create_topic("txns", 1);
    produce_raw(
        &broker,
        "customers",
        &[Some(br#"{"id": "C1"}"#), Some(br#"{"id": "C2"}"#)],
    );
    let w = Workdir::new();
    w.write_config(&broker, "dq", &["customers", "txns"], EXPECTATIONS);
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(w.count("bronze.customers"), 2);

    produce_raw(
        &broker,
        "txns",
        &[
            Some(br#"{"id": 1, "customer": "C1", "amount": 10.5, "currency": "GBP"}"#),
            Some(br#"{"id": 2, "customer": "C2", "amount": -3.0, "currency": "GBP"}"#),
            Some(br#"{"id": 3, "customer": "C9", "amount": 7.0, "currency": "XXX"}"#),
            Some(br#"{"id": 4, "customer": "C1", "amount": null, "currency": "EUR"}"#),
        ],
    );
    w.run_ok(&["run", "--until-caught-up"]);
    // The negative amount is quarantined; a NULL amount passes (SQL CHECK semantics);
    // the unknown currency and customer are kept and counted.
    assert_eq!(
        w.sql("select id from bronze.txns order by id"),
        vec!["1", "3", "4"]
    );
    assert_eq!(
        w.sql(
            "select kafka_topic, kafka_offset, stage, destination_table, error, cast(payload as varchar) \
             from sluice.quarantine"
        ),
        vec![
            r#"txns,1,quality,txns,failed expectation amount_not_negative,"{""amount"":-3.0,""currency"":""GBP"",""customer"":""C2"",""id"":2}""#
        ]
    );
    assert_eq!(
        w.sql(
            "select expectation, action, sum(rows_passed), sum(rows_failed) from sluice.quality \
             where table_name = 'txns' group by expectation, action order by expectation"
        ),
        vec![
            "amount_not_negative,drop,3,1",
            "currency_known,warn,3,1",
            "known_customer,warn,3,1",
        ]
    );
    assert_eq!(w.count("sluice.dead_letters"), 0);

    // A `fail` expectation stops the run and commits nothing of the batch.
    w.write_config(
        &broker,
        "dq",
        &["customers", "txns"],
        &format!("{EXPECTATIONS}\n[[quality.txns]]\nname = \"small\"\ncheck = \"amount < 1000\"\naction = \"fail\"\n"),
    );
    produce_raw(
        &broker,
        "txns",
        &[Some(
            br#"{"id": 5, "customer": "C1", "amount": 5000.0, "currency": "GBP"}"#,
        )],
    );
    let out = w
        .sluice(&["run", "--until-caught-up"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expectation 'small'") && stderr.contains("1 of 1 rows fail"),
        "{stderr}"
    );
    assert!(!stderr.contains("5000"), "no values in errors: {stderr}");
    assert_eq!(w.count("bronze.txns"), 3);
}
