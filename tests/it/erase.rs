//! `sluice job erase` on the demo bank: a customer present in every table before is absent
//! after, at every older version too; every byte of the lake is clean; the certificate is
//! written; other customers are untouched; a second run is a no-op with its own certificate;
//! copies of the customer's encrypted values no longer open (crypto-shredding).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deltalake::datafusion::prelude::SessionContext;

/// Tables of the demo holding customers, with the SQL condition finding one by token.
const TABLES: [(&str, &str); 7] = [
    (
        "bronze.customers",
        "after.customer_id = '{t}' or before.customer_id = '{t}'",
    ),
    (
        "bronze.accounts",
        "after.customer_id = '{t}' or before.customer_id = '{t}'",
    ),
    ("bronze.card_transactions", "customer_id = '{t}'"),
    ("bronze.touchpoints", "customer_id = '{t}'"),
    ("silver.customers", "customer_id = '{t}'"),
    ("silver.accounts", "customer_id = '{t}'"),
    ("silver.customers_history", "customer_id = '{t}'"),
];

pub(crate) struct Demo {
    pub(crate) dir: tempfile::TempDir,
}

impl Demo {
    pub(crate) fn lake(&self) -> std::path::PathBuf {
        self.dir.path().join("lake")
    }
    /// `sluice <args>` with the demo's config and lake, from the directory holding its keys.
    pub(crate) fn sluice(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(args)
            .arg("--config")
            .arg(self.dir.path().join("demo.toml"))
            .arg("--lake")
            .arg(self.lake())
            .current_dir(self.dir.path())
            .env("SLUICE_LOG", "warn,buoyant_kernel=off");
        c
    }
    pub(crate) fn ok(&self, args: &[&str]) -> Output {
        let out = self.sluice(args).output().expect("run sluice");
        assert!(
            out.status.success(),
            "sluice {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    /// The first row of a query's result, as CSV.
    pub(crate) fn one(&self, q: &str) -> String {
        let out = self.ok(&["sql", "--format", "csv", q]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }
    pub(crate) fn count(&self, table: &str, condition: &str) -> u64 {
        let q = format!("select count(*) from {table} where {condition}");
        let out = self.ok(&["sql", "--format", "csv", &q]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count for {q}"))
    }
    fn counts(&self, token: &str) -> BTreeMap<&'static str, (u64, u64)> {
        TABLES
            .iter()
            .map(|(t, cond)| {
                let subject = self.count(t, &cond.replace("{t}", token));
                (*t, (subject, self.count(t, "true")))
            })
            .collect()
    }
}

pub(crate) fn demo() -> Demo {
    let demo = Demo {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--print-config"])
        .output()
        .expect("print config");
    std::fs::write(demo.dir.path().join("demo.toml"), &out.stdout).expect("config");
    // Fixed keys (the demo keeps key files it finds): the tokens, and so which customer
    // holds the smallest one, are the same on every run. With keys drawn at random that
    // customer was now and then one the data set deletes, and tests that pick it failed.
    let keys = demo.dir.path().join("sluice-demo-keys");
    std::fs::create_dir_all(&keys).expect("keys");
    for (i, name) in ["pseudonym", "salt", "vault", "shred"].iter().enumerate() {
        let secret: String = (0..32)
            .map(|b| format!("{:02x}", (b * 7 + i * 61 + 3) % 256))
            .collect();
        std::fs::write(keys.join(format!("{name}.key")), secret).expect("key");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("demo")
        .arg("--lake")
        .arg(demo.lake())
        .current_dir(demo.dir.path())
        .output()
        .expect("demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    demo
}

/// Every older version of the table at `dir` either cannot be read (its files or log
/// entries were purged) or holds no `token`.
async fn older_versions_lack(dir: &Path, token: &str, current: u64) -> (u64, u64) {
    let url = url::Url::from_directory_path(dir).expect("absolute");
    let (mut readable, mut unreadable) = (0, 0);
    for v in 0..current {
        let Ok(t) = deltalake::open_table_with_version(url.clone(), v).await else {
            unreadable += 1;
            continue;
        };
        let ctx = SessionContext::new();
        t.update_datafusion_session(&ctx.state()).expect("session");
        ctx.register_table("t", t.table_provider().await.expect("provider"))
            .expect("register");
        let Ok(batches) = ctx
            .sql("select * from t")
            .await
            .expect("plan")
            .collect()
            .await
        else {
            unreadable += 1;
            continue;
        };
        let mut json = arrow::json::LineDelimitedWriter::new(Vec::new());
        for b in &batches {
            json.write(b).expect("json");
        }
        json.finish().expect("json");
        let text = String::from_utf8(json.into_inner()).expect("utf-8");
        assert!(
            !text.contains(token),
            "version {v} of {} brings the subject back",
            dir.display()
        );
        readable += 1;
    }
    (readable, unreadable)
}

fn erasures(d: &Demo) -> Vec<serde_json::Value> {
    let out = d.ok(&[
        "sql",
        "--format",
        "json",
        "select request_id, subject_hash, outcome, rows_removed, logs_purged from sluice.erasures order by erased_at",
    ]);
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn erasure_removes_a_customer_everywhere_and_leaves_a_certificate() {
    let d = demo();
    let key =
        std::fs::read_to_string(d.dir.path().join("sluice-demo-keys/pseudonym.key")).expect("key");
    let token = |raw: &str| {
        sluice_transforms::tokenize::token("pseudo", key.trim().as_bytes(), raw.as_bytes())
    };
    // The customer whose token is the smallest among card transactions: it is the
    // minimum of that table's file statistics, so the log mentions it too.
    let smallest = d.count("bronze.card_transactions", "true");
    assert!(smallest > 0);
    let out = d.ok(&[
        "sql",
        "--format",
        "csv",
        "select min(customer_id) from bronze.card_transactions",
    ]);
    let min_token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .expect("min")
        .trim()
        .to_string();
    let subject = (1..=3_000)
        .map(|i| format!("C{i:07}"))
        .find(|raw| token(raw) == min_token)
        .expect("the customer behind the smallest token");
    let tok = token(&subject);
    let other = if subject == "C0000002" {
        "C0000003"
    } else {
        "C0000002"
    };

    // Crypto-shredding: the address line is encrypted under the customer's own key. Copies
    // of the values taken now (what a backup or an export holds) open until the erasure.
    let line = |t: &str| {
        d.one(&format!(
            "select address.line1 from silver.customers where customer_id = '{t}'"
        ))
    };
    let reveal = |v: &str| {
        d.sluice(&[
            "reveal",
            "--table",
            "customers",
            "--column",
            "address.line1",
            v,
        ])
        .output()
        .expect("reveal")
    };
    let (mine, theirs) = (line(&tok), line(&token(other)));
    assert!(mine.starts_with("enc_shred_"), "{mine}");
    let opened = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (my_line, their_line) = (opened(&reveal(&mine)), opened(&reveal(&theirs)));
    assert!(
        !my_line.is_empty() && !my_line.starts_with("enc_"),
        "{my_line}"
    );

    let before = d.counts(&tok);
    for t in [
        "bronze.customers",
        "bronze.card_transactions",
        "silver.customers",
        "silver.customers_history",
    ] {
        assert!(before[t].0 > 0, "{t} should hold the subject: {before:?}");
    }
    let other_before = d.counts(&token(other));
    // Before erasure the byte scan finds the subject and fails.
    let found = d
        .sluice(&["job", "erase", "--verify", &subject])
        .output()
        .expect("verify");
    assert_eq!(
        found.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert!(String::from_utf8_lossy(&found.stderr).contains("occurrences remain"));

    let logs = d.lake().join("bronze/card_transactions/_delta_log");
    let mentioned = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("log")
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .any(|bytes| bytes.windows(tok.len()).any(|w| w == tok.as_bytes()))
    };
    assert!(
        mentioned(&logs),
        "the log's statistics name the smallest token"
    );

    let out = d.ok(&[
        "--format",
        "json",
        "job",
        "erase",
        "--request-id",
        "REQ-1",
        &subject,
    ]);
    let certs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let cert = &certs[0];
    let removed: u64 = before.values().map(|(s, _)| s).sum();
    let certified: u64 = cert["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter(|t| TABLES.iter().any(|(n, _)| t["table"] == *n))
        .map(|t| t["rows_removed"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(certified, removed, "{cert}");
    assert!(
        !mentioned(&logs),
        "log entries naming the subject are purged"
    );
    // The subject's data key is gone: its copied values never open again; others still do.
    let keys = cert["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "keys.subjects")
        .unwrap_or_else(|| panic!("the key store is in the certificate: {cert}"));
    assert_eq!(keys["rows_removed"], 1, "{keys}");
    let shredded = reveal(&mine);
    assert!(!shredded.status.success());
    assert!(
        String::from_utf8_lossy(&shredded.stderr).contains("its subject was erased"),
        "{}",
        String::from_utf8_lossy(&shredded.stderr)
    );
    assert_eq!(opened(&reveal(&theirs)), their_line);

    // Absent now, other customers untouched, totals down by the subject's rows only.
    let after = d.counts(&tok);
    let other_after = d.counts(&token(other));
    for (t, (subject_rows, total)) in &before {
        assert_eq!(after[t], (0, total - subject_rows), "{t}");
        assert_eq!(
            other_after[t].0, other_before[t].0,
            "{t}: another customer changed"
        );
    }
    // Every byte of every file is clean; older versions cannot bring the subject back.
    d.ok(&["job", "erase", "--verify", &subject]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (t, _) in TABLES {
        let dir = d.lake().join(t.replace('.', "/"));
        let url = url::Url::from_directory_path(&dir).expect("absolute");
        let current = rt
            .block_on(deltalake::open_table(url))
            .expect("open")
            .version()
            .expect("version") as u64;
        let (_, unreadable) = rt.block_on(older_versions_lack(&dir, &tok, current));
        if before[t].0 > 0 {
            assert!(
                unreadable > 0,
                "{t}: the version before erasure must not read"
            );
        }
    }

    // The certificate names the request and a salted hash, never the subject.
    let rows = erasures(&d);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], "REQ-1");
    assert_eq!(rows[0]["outcome"], "erased");
    let hash = rows[0]["subject_hash"].as_str().expect("hash");
    assert_eq!(hash.len(), 64);
    assert!(!hash.contains(&subject) && !hash.contains(&tok));

    // A second run finds nothing and says so in a certificate of its own.
    d.ok(&["job", "erase", "--request-id", "REQ-2", &subject]);
    let rows = erasures(&d);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["outcome"], "nothing to erase");
    assert_eq!(rows[1]["rows_removed"], 0);
    assert_eq!(rows[1]["subject_hash"], rows[0]["subject_hash"]);
    assert_eq!(d.counts(&token(other)), other_after);
    // The runs are in the audit chain, which records the request, not the subject.
    let out = d.ok(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain intact"));
}

/// Every message of partition 0 of `topic`: (key, payload).
fn read_topic(bootstrap: &str, topic: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "erase-test-reader")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, std::time::Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (out.len() as i64) < high && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(200)) {
            out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().map(<[u8]>::to_vec),
            ));
        }
    }
    out
}

#[test]
fn erasure_requests_from_kafka_are_certified_once_and_leave_tombstones() {
    use crate::harness::{Broker, Mock, Workdir, produce_keyed, produce_raw};
    let broker = Mock::start();
    broker.create_topic("events", 1);
    broker.create_topic("erasure-requests", 1);
    let w = Workdir::new();
    let key = w.dir.path().join("pseudo.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("key");
    w.write_config(
        &broker,
        "erase",
        &["events"],
        &format!(
            "partition_by = []\n\
             [pii]\ndead_letter_key = \"pseudo\"\n\
             [pii.keys.pseudo]\nfile = {key:?}\n\
             [pii.tables.events]\n_kafka_key = {{ action = \"tokenize\", key = \"pseudo\", tag = \"direct_identifier\" }}\n\
             [erasure]\ncolumns = [\"id\", \"_kafka_key\"]\ncertificate_key = \"pseudo\"\n\
             requests_topic = \"erasure-requests\"\n\
             [[erasure.tombstones]]\ntopic = \"events\"\nkey = '{{\"id\":{{subject}}}}'\n"
        ),
    );
    // Identifiers long enough not to stand as words in the log's numbers.
    let events: Vec<(i64, Option<Vec<u8>>)> = (7_100_001..=7_100_005)
        .map(|i| {
            (
                i,
                Some(format!(r#"{{"id": {i}, "name": "Customer {i}"}}"#).into_bytes()),
            )
        })
        .collect();
    produce_keyed(&broker, "events", &events);
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(w.count("bronze.events"), 5);
    produce_raw(
        &broker,
        "erasure-requests",
        &[
            Some(b"7100002"),
            // Its id holds its subject: carried out, recorded under a keyed hash of the id.
            Some(br#"{"subject": "7100004", "request_id": "DSAR-7100004"}"#),
            Some(br#"{"nope": 1}"#),
            // Refused (an identifier too short), its id holding another subject of the batch.
            Some(br#"{"subject": "1", "request_id": "erase 7100-004"}"#),
        ],
    );

    w.run_ok(&["job", "erase", "--requests"]);
    assert_eq!(
        w.sql("select id from bronze.events order by id"),
        vec!["7100001", "7100003", "7100005"]
    );
    let certified =
        w.sql("select request_id, outcome, tombstones from sluice.erasures order by request_id");
    assert_eq!(
        certified[..2],
        [
            "erasure-requests-0-0,erased,1",
            // CSV doubles the quotes inside a quoted field.
            r#"erasure-requests-0-2,"invalid request: a JSON request needs a non-empty string ""subject""",0"#,
        ]
    );
    assert_eq!(certified.len(), 4, "{certified:?}");
    for c in &certified[2..] {
        assert!(
            c.starts_with("redacted-") && !c.contains("7100") && !c.contains("erase "),
            "{certified:?}"
        );
    }
    assert!(
        certified[2..].iter().any(|c| c.ends_with(",erased,1")),
        "{certified:?}"
    );
    // The tombstones compact the subjects' keys away in Kafka.
    let tombstones: Vec<String> = read_topic(&broker.bootstrap(), "events")
        .into_iter()
        .filter(|(_, payload)| payload.is_none())
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect();
    assert_eq!(tombstones, vec![r#"{"id":7100002}"#, r#"{"id":7100004}"#]);
    // Requests are committed once certified: a second run finds none.
    w.run_ok(&["job", "erase", "--requests"]);
    assert_eq!(w.count("sluice.erasures"), 4);

    // The pipeline reads the tombstones back as rows of nulls keyed by the subject; the
    // byte scan sees that, and erasing again removes them.
    w.run_ok(&["run", "--until-caught-up"]);
    let found = w
        .sluice(&["job", "erase", "--verify", "7100002"])
        .output()
        .expect("verify");
    assert_eq!(found.status.code(), Some(1));
    w.run_ok(&["job", "erase", "7100002", "7100004"]);
    w.run_ok(&["job", "erase", "--verify", "7100002", "7100004"]);
    assert_eq!(w.count("bronze.events"), 3);
}

/// Per table of a certificate's `tables`: rows removed, version before, value hashes.
fn per_table(tables: &serde_json::Value) -> BTreeMap<String, (u64, i64, Vec<String>)> {
    tables
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            let hashes = t["value_hashes"]
                .as_array()
                .expect("hashes")
                .iter()
                .map(|h| h.as_str().expect("hash").to_string())
                .collect();
            (
                t["table"].as_str().expect("table").to_string(),
                (
                    t["rows_removed"].as_u64().expect("rows"),
                    t["version_before"].as_i64().expect("version"),
                    hashes,
                ),
            )
        })
        .collect()
}

#[test]
fn an_erasure_batch_stopped_midway_is_finished_with_the_same_requests_after_more_arrive() {
    use crate::harness::{Broker, Mock, Workdir, produce_keyed, produce_raw};
    let broker = Mock::start();
    broker.create_topic("events", 1);
    broker.create_topic("erasure-requests", 1);
    let w = Workdir::new();
    let key = w.dir.path().join("pseudo.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("key");
    w.write_config(
        &broker,
        "erase",
        &["events"],
        &format!(
            "partition_by = []\n\
             [pii]\ndead_letter_key = \"pseudo\"\n\
             [pii.keys.pseudo]\nfile = {key:?}\n\
             [erasure]\ncolumns = [\"id\"]\ncertificate_key = \"pseudo\"\n\
             requests_topic = \"erasure-requests\"\n"
        ),
    );
    let events: Vec<(i64, Option<Vec<u8>>)> = (7_200_001..=7_200_006)
        .map(|i| {
            (
                i,
                Some(format!(r#"{{"id": {i}, "name": "Customer {i}"}}"#).into_bytes()),
            )
        })
        .collect();
    produce_keyed(&broker, "events", &events);
    w.run_ok(&["run", "--until-caught-up"]);
    assert_eq!(w.count("bronze.events"), 6);
    let json = |out: std::process::Output| -> Vec<serde_json::Value> {
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let requests = ["job", "erase", "--requests"];
    let stopped_at = |at: &str| {
        let out = w
            .sluice(&requests)
            .env("SLUICE_TEST_ERASE_ABORT_AT", at)
            .output()
            .expect("erase");
        assert_eq!(
            out.status.code(),
            None,
            "the run meant to stop at {at} ran to its end: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // What an unbroken erasure of the first two subjects removes, as a dry run says.
    let dry = json(w.run_ok(&[
        "--format",
        "json",
        "job",
        "erase",
        "--dry-run",
        "7200002",
        "7200004",
    ]));
    assert_eq!(dry.len(), 2);

    // Two requests, stopped once the rows of bronze.events are deleted and accounted for;
    // a third arrives before the next run.
    produce_raw(
        &broker,
        "erasure-requests",
        &[
            Some(b"7200002"),
            Some(br#"{"subject": "7200004", "request_id": "DSAR-B"}"#),
        ],
    );
    stopped_at("accounted:bronze.events");
    produce_raw(&broker, "erasure-requests", &[Some(b"7200005")]);

    // The next run finishes the stopped batch, the two requests only: each with the one
    // certificate an unbroken run would have written.
    let done = json(w.run_ok(&["--format", "json", "job", "erase", "--requests"]));
    let ids: Vec<&str> = done
        .iter()
        .map(|c| c["request_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["erasure-requests-0-0", "DSAR-B"]);
    let recorded = json(w.run_ok(&[
        "sql",
        "--format",
        "json",
        "select subject_hash, outcome, tables from sluice.erasures",
    ]));
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    for unbroken in &dry {
        let hash = unbroken["subject_hash"].as_str().expect("hash");
        let mine: Vec<&serde_json::Value> = recorded
            .iter()
            .filter(|r| r["subject_hash"] == hash)
            .collect();
        assert_eq!(mine.len(), 1, "{recorded:?}");
        assert_eq!(mine[0]["outcome"], "erased");
        let tables: serde_json::Value =
            serde_json::from_str(mine[0]["tables"].as_str().expect("tables")).expect("json");
        assert_eq!(per_table(&tables), per_table(&unbroken["tables"]));
        assert_eq!(per_table(&tables)["bronze.events"].0, 1);
    }
    assert_eq!(
        w.sql("select id from bronze.events order by id"),
        vec!["7200001", "7200003", "7200005", "7200006"]
    );

    // The third request waited for the run after.
    let third = json(w.run_ok(&["--format", "json", "job", "erase", "--requests"]));
    assert_eq!(third.len(), 1);
    assert_eq!(third[0]["request_id"], "erasure-requests-0-2");
    assert_eq!(
        w.sql("select id from bronze.events order by id"),
        vec!["7200001", "7200003", "7200006"]
    );
    assert_eq!(w.count("sluice.erasures"), 3);

    // Stopped after the certificates are recorded, before the offsets are committed; a
    // `sluice job erase` of the batch's subject runs meanwhile (a request of its own, with
    // its own certificate): the next run commits the batch and certifies nothing a second
    // time, invalid requests included.
    produce_raw(
        &broker,
        "erasure-requests",
        &[Some(b"7200001"), Some(br#"{"nope": 1}"#)],
    );
    stopped_at("committing:run");
    assert_eq!(w.count("sluice.erasures"), 5);
    w.run_ok(&["job", "erase", "--request-id", "DSAR-CLI", "7200001"]);
    assert_eq!(w.count("sluice.erasures"), 6);
    let again = json(w.run_ok(&["--format", "json", "job", "erase", "--requests"]));
    let ids: Vec<&str> = again
        .iter()
        .map(|c| c["request_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["erasure-requests-0-3", "erasure-requests-0-4"]);
    // The batch's own certificate (its row), not one of a second erasure finding nothing.
    assert_eq!(rows_of(&again[0]), 1, "{again:?}");
    assert_eq!(w.count("sluice.erasures"), 6);
    assert_eq!(
        w.sql("select id from bronze.events order by id"),
        vec!["7200003", "7200006"]
    );

    // Stopped before its certificates, then a `sluice job erase` of the same subject
    // finishes its work (the same journal) under its own request id: the batch taken
    // again is certified with the rows that run erased, not as having found nothing.
    produce_raw(&broker, "erasure-requests", &[Some(b"7200006")]);
    stopped_at("certifying:run");
    w.run_ok(&["job", "erase", "--request-id", "DSAR-TAKEOVER", "7200006"]);
    assert_eq!(w.count("sluice.erasures"), 7);
    let taken = json(w.run_ok(&["--format", "json", "job", "erase", "--requests"]));
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0]["request_id"], "erasure-requests-0-5");
    assert_eq!(rows_of(&taken[0]), 1, "{taken:?}");
    assert_eq!(w.count("sluice.erasures"), 8);
    assert_eq!(
        w.sql("select count(*) from sluice.erasures where request_id = 'erasure-requests-0-5'"),
        vec!["1"]
    );

    // Two runs started together on new requests: one takes the batch, the other waits for
    // it and finds nothing left; each request is certified once.
    produce_raw(
        &broker,
        "erasure-requests",
        &[
            Some(b"7200003"),
            Some(br#"{"subject": "7200004", "request_id": "DSAR-C"}"#),
        ],
    );
    let runs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            w.sluice(&["--format", "json", "job", "erase", "--requests"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("erase")
        })
        .collect();
    let mut ids: Vec<String> = Vec::new();
    for run in runs {
        let out = run.wait_with_output().expect("erase");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.extend(
            json(out)
                .iter()
                .map(|c| c["request_id"].as_str().expect("id").to_string()),
        );
    }
    ids.sort();
    assert_eq!(ids, ["DSAR-C", "erasure-requests-0-6"]);
    assert_eq!(w.count("sluice.erasures"), 10);
    assert!(w.sql("select id from bronze.events").is_empty());
    // Committed: nothing left to take, no journal or marker left, no lock held.
    let none = json(w.run_ok(&["--format", "json", "job", "erase", "--requests"]));
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(w.count("sluice.erasures"), 10);
    let pending = w.lake().join("_sluice/erasures_pending");
    assert!(
        !pending.exists() || crate::residue::files_under(&pending).is_empty(),
        "{:?}",
        crate::residue::files_under(&pending)
    );
    let held: Vec<_> = crate::residue::files_under(&w.lake().join("_sluice/locks"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
        .collect();
    assert!(held.is_empty(), "{held:?}");
}

/// The rows a certificate (as `--format json` prints it) says were removed.
fn rows_of(certificate: &serde_json::Value) -> u64 {
    certificate["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["rows_removed"].as_u64().unwrap_or(0))
        .sum()
}

/// The (pseudonymised) id of the first demo customer found only among card
/// transactions: no customer or account row in silver.
pub(crate) const ONLY_IN_CARD_TRANSACTIONS: &str = "select t.customer_id from bronze.card_transactions t \
     where t.customer_id not in (select customer_id from silver.accounts where customer_id is not null) \
     and t.customer_id not in (select customer_id from silver.customers where customer_id is not null) \
     order by 1 limit 1";

/// The raw customer id behind `token` among the demo's customers.
pub(crate) fn raw_of(token: &dyn Fn(&str) -> String, wanted: &str) -> String {
    (1..=3_000)
        .map(|i| format!("C{i:07}"))
        .chain((1..=9).map(|i| format!("C900000{i}")))
        .find(|raw| token(raw) == wanted)
        .unwrap_or_else(|| panic!("no demo customer has the token {wanted}"))
}

#[test]
fn erasure_leaves_no_value_of_the_erased_rows_anywhere_and_statistics_stay_safe() {
    use crate::residue;
    let d = demo();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/sql"),
        d.dir.path().join("sql"),
    )
    .expect("the gold definitions");
    d.ok(&["job", "gold"]);
    d.ok(&["job", "snapshot"]);
    // Every table the demo made keeps statistics to safe columns.
    residue::assert_safe_statistics(&d.lake());

    let key =
        std::fs::read_to_string(d.dir.path().join("sluice-demo-keys/pseudonym.key")).expect("key");
    let token = |raw: &str| {
        sluice_transforms::tokenize::token("pseudo", key.trim().as_bytes(), raw.as_bytes())
    };
    // One customer with accounts, one found only among card transactions (no customer or
    // account row left in silver), one with a dead letter (the demo's broken messages are
    // keyed by the first customers).
    let with_accounts = "C0000010".to_string();
    assert!(
        d.count(
            "silver.accounts",
            &format!("customer_id = '{}'", token(&with_accounts))
        ) > 0
    );
    let only_cards = d.one(ONLY_IN_CARD_TRANSACTIONS);
    let only_cards = raw_of(&token, only_cards.trim());
    let with_letter = "C0000002".to_string();
    let subjects = [
        with_accounts.clone(),
        only_cards.clone(),
        with_letter.clone(),
    ];

    // Identifiers that would match words everywhere are refused before anything runs, and
    // so is a request id holding a subject (it is kept in the clear), in any case.
    for bad in ["1", "null", "C01"] {
        let out = d.sluice(&["job", "erase", bad]).output().expect("erase");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    }
    for id in [
        "DSAR-c0000010".to_string(),
        format!("re-{}", token(&with_accounts)),
    ] {
        let out = d
            .sluice(&["job", "erase", "--request-id", &id, &with_accounts])
            .output()
            .expect("erase");
        assert_eq!(out.status.code(), Some(2), "{id}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--request-id refused"), "{err}");
        assert!(!err.contains(&with_accounts), "{err}");
    }
    // A dry run lists what would go and changes nothing.
    let listing = || -> Vec<(PathBuf, u64)> {
        let mut all: Vec<(PathBuf, u64)> = residue::files_under(&d.lake())
            .into_iter()
            .map(|p| {
                let n = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, n)
            })
            .collect();
        all.sort();
        all
    };
    let files_before = listing();
    let mut args = vec!["job", "erase", "--dry-run"];
    args.extend(subjects.iter().map(String::as_str));
    let out = d.ok(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dry run") && text.contains("would go: bronze.card_transactions"),
        "{text}"
    );
    assert_eq!(listing(), files_before, "a dry run changes no file");

    let before = residue::record(&d.lake());
    let mut args = vec!["--format", "json", "job", "erase", "--request-id", "RES-1"];
    args.extend(subjects.iter().map(String::as_str));
    let out = d.ok(&args);
    let certs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(certs.len(), 3);
    for c in &certs {
        assert_eq!(c["request_id"], "RES-1");
        let tables = c["tables"].as_array().expect("tables");
        let cards = tables
            .iter()
            .find(|t| t["table"] == "bronze.card_transactions")
            .expect("card transactions");
        assert!(cards["history_from_version"].as_i64().is_some(), "{cards}");
        let text = c.to_string();
        for s in &subjects {
            assert!(
                !text.contains(s.as_str()) && !text.contains(&token(s)),
                "{text}"
            );
        }
    }
    let after = residue::record(&d.lake());
    let gone = residue::disappeared(&before, &after);
    for t in [
        "bronze/card_transactions",
        "silver/accounts",
        "silver/customers",
        "_sluice/dead_letters",
        "_keys/subjects",
    ] {
        assert!(
            gone.contains_key(t),
            "nothing disappeared from {t}: {:?}",
            gone.keys()
        );
    }
    let values = residue::distinctive(&gone, &after);
    for s in &subjects {
        if s != &with_letter {
            assert!(
                values.contains(&token(s)),
                "{s}'s token is among the values"
            );
        }
    }
    // The wrapped data keys of the erased customers are among them: nowhere in the key
    // store's files or log after.
    let wrapped: Vec<&String> = values
        .iter()
        .filter(|v| {
            gone["_keys/subjects"]
                .iter()
                .any(|r| r.contains(&format!("\"wrapped\":\"{v}\"")))
        })
        .collect();
    assert!(!wrapped.is_empty(), "the key store lost the subjects' keys");
    let hits = residue::scan(&d.lake(), &values);
    assert!(
        hits.is_empty(),
        "{} of {} values of the erased rows remain: {:?}",
        hits.len(),
        values.len(),
        hits.iter().take(20).collect::<Vec<_>>()
    );
    assert_eq!(
        residue::count_mentions(&after, "bronze/card_transactions", &token(&only_cards)),
        0
    );
    // Commit information names no request: outside the certificates and the job runs
    // (which keep request ids by design), no log entry of any table holds "RES-1".
    let mut logs = vec![d.lake()];
    let mut named = Vec::new();
    while let Some(dir) = logs.pop() {
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                logs.push(p);
            } else if p.components().any(|c| c.as_os_str() == "_delta_log")
                && !p.starts_with(d.lake().join("_sluice/erasures"))
                && !p.starts_with(d.lake().join("_sluice/job_runs"))
                && String::from_utf8_lossy(&std::fs::read(&p).expect("read")).contains("RES-1")
            {
                named.push(p);
            }
        }
    }
    assert!(
        named.is_empty(),
        "log entries naming the request: {named:?}"
    );
    // --verify finds neither identifiers nor values.
    let mut args = vec!["job", "erase", "--verify"];
    args.extend(subjects.iter().map(String::as_str));
    d.ok(&args);
    // A value of an erased row planted back in a log entry's statistics is found.
    let txn = gone["bronze/card_transactions"]
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).ok()?;
            v["txn_id"].as_str().map(str::to_string)
        })
        .find(|t| values.contains(t))
        .expect("a distinctive transaction id");
    let planted = d
        .lake()
        .join("bronze/card_transactions/_delta_log/_planted.json");
    std::fs::write(
        &planted,
        format!(
            "{{\"add\":{{\"path\":\"x.parquet\",\"stats\":\"{{\\\"minValues\\\":{{\\\"txn_id\\\":\\\"{txn}\\\"}}}}\"}}}}\n"
        ),
    )
    .expect("plant");
    let mut args = vec!["job", "erase", "--verify"];
    args.extend(subjects.iter().map(String::as_str));
    let found = d.sluice(&args).output().expect("verify");
    let err = String::from_utf8_lossy(&found.stderr);
    assert_eq!(found.status.code(), Some(1), "{err}");
    assert!(err.contains("_planted.json"), "{err}");
    std::fs::remove_file(&planted).expect("unplant");
}

/// `(partition, offset)` of every row of `table` from `topic`, and of the topic's dead
/// letters.
fn offsets(w: &crate::harness::Workdir, table: &str, topic: &str) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    let mut queries = vec![format!(
        "select _kafka_partition, _kafka_offset from {table} where _kafka_topic = '{topic}'"
    )];
    // The dead-letter table exists once a first message failed.
    if w.lake().join("_sluice/dead_letters/_delta_log").is_dir() {
        queries.push(format!(
            "select kafka_partition, kafka_offset from sluice.dead_letters where kafka_topic = '{topic}'"
        ));
    }
    for q in queries {
        for r in w.sql(&q) {
            let (p, o) = r.split_once(',').expect("two columns");
            out.push((p.parse().expect("partition"), o.parse().expect("offset")));
        }
    }
    out
}

/// Every offset of every partition from 0, once.
fn assert_contiguous(topic: &str, mut seen: Vec<(i32, i64)>, produced: usize) {
    seen.sort_unstable();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in &seen {
        let want = next.entry(*p).or_insert(0);
        assert_eq!(
            *o, *want,
            "{topic}[{p}]: offset {o} where {want} was due (a gap or a duplicate)"
        );
        *want += 1;
    }
    assert_eq!(seen.len(), produced, "{topic}: every message once");
}

#[test]
fn erasure_during_a_live_run_and_maintenance_keeps_every_table_whole_and_every_offset_once() {
    use crate::harness::{Broker, Logged, Mock, Workdir, terminate, wait_until};
    use sluice_connectors::demo::bank::{self, Scale};
    use sluice_connectors::demo::broker::{Outgoing, SimpleProducer};
    use std::time::Duration;

    let broker = Mock::start();
    for (topic, partitions) in bank::TOPICS {
        broker.create_topic(topic, partitions);
    }
    let w = Workdir::new();
    let config = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--print-config"])
        .output()
        .expect("config");
    let config = String::from_utf8(config.stdout)
        .expect("utf-8")
        .replace("\"embedded\"", &format!("\"{}\"", broker.bootstrap()))
        .replace("flush_max_latency_ms = 2000", "flush_max_latency_ms = 300");
    std::fs::write(w.config(), config).expect("config");
    std::fs::create_dir_all(w.dir.path().join("sluice-demo-keys")).expect("keys");
    for (i, k) in ["pseudonym", "salt", "vault", "shred"].iter().enumerate() {
        std::fs::write(
            w.dir.path().join(format!("sluice-demo-keys/{k}.key")),
            format!("{:064x}", 0x5eed_0000 + i),
        )
        .expect("key");
    }
    let sluice = |args: &[&str]| {
        let mut c = w.sluice(args);
        c.current_dir(w.dir.path());
        c
    };
    let ok = |args: &[&str]| {
        let out = sluice(args).output().expect("sluice");
        assert!(
            out.status.success(),
            "sluice {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // The subject's messages all come first; the rest arrives while the erasure runs.
    let subject = "C0000010";
    let messages = bank::generate(Scale {
        customers: 300,
        transactions: 6_000,
        touchpoints: 2_000,
        with_bad_messages: true,
    });
    let mentions = |m: &bank::BankMessage| {
        m.key.contains(subject)
            || m.payload
                .as_ref()
                .is_some_and(|p| String::from_utf8_lossy(p).contains(subject))
    };
    let (mut first, mut second): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    let others: Vec<&bank::BankMessage> = messages.iter().filter(|m| !mentions(m)).collect();
    first.extend(messages.iter().filter(|m| mentions(m)));
    first.extend(&others[..others.len() / 2]);
    second.extend(&others[others.len() / 2..]);
    let bootstrap = broker.bootstrap();
    let produce = |batch: &[&bank::BankMessage]| {
        let producer = SimpleProducer::new(&bootstrap).expect("producer");
        for m in batch {
            producer
                .send(&Outgoing {
                    topic: m.topic,
                    key: Some(m.key.as_bytes()),
                    payload: m.payload.as_deref(),
                    timestamp_ms: Some(m.timestamp_ms),
                })
                .expect("send");
        }
        producer.flush().expect("flush");
    };
    produce(&first);
    ok(&["run", "--until-caught-up"]);
    let key = format!("{:064x}", 0x5eed_0000);
    let token = sluice_transforms::tokenize::token("pseudo", key.as_bytes(), subject.as_bytes());
    let tables = [
        (
            "bronze.customers",
            "customers",
            "after.customer_id = '{t}' or before.customer_id = '{t}'",
        ),
        (
            "bronze.accounts",
            "accounts",
            "after.customer_id = '{t}' or before.customer_id = '{t}'",
        ),
        (
            "bronze.card_transactions",
            "txn-events",
            "customer_id = '{t}'",
        ),
        (
            "bronze.touchpoints",
            "touchpoint-events",
            "customer_id = '{t}'",
        ),
    ];
    // The subject's offsets, which the erasure removes.
    let mut erased: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for (table, topic, cond) in tables {
        let q = format!(
            "select _kafka_partition, _kafka_offset from {table} where {}",
            cond.replace("{t}", &token)
        );
        let rows: Vec<(i32, i64)> = w
            .sql(&q)
            .iter()
            .map(|r| {
                let (p, o) = r.split_once(',').expect("two");
                (p.parse().expect("p"), o.parse().expect("o"))
            })
            .collect();
        erased.insert(topic, rows);
    }
    assert!(
        erased.values().map(Vec::len).sum::<usize>() > 0,
        "the subject landed"
    );

    // A live run with slowed commits; the rest of the stream arrives while it runs.
    let mut command = sluice(&["run"]);
    command
        .env("SLUICE_TEST_COMMIT_DELAY_MS", "400")
        .stdout(std::process::Stdio::null());
    let mut run = Logged::spawn(command);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // The stream arrives in pieces over two seconds (the sleeps are the point).
            for chunk in second.chunks(second.len() / 8 + 1) {
                produce(chunk);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        // Once the run has committed some of it: an erasure and a maintenance run beside
        // the run, at the same time.
        run.wait_for("committed", Duration::from_secs(120));
        let erase = sluice(&["job", "erase", "--request-id", "LIVE-1", subject])
            .output()
            .expect("spawn erase");
        let maintain = scope.spawn(|| sluice(&["job", "maintain"]).output().expect("maintain"));
        assert!(
            erase.status.success(),
            "erase: {}",
            String::from_utf8_lossy(&erase.stderr)
        );
        let maintain = maintain.join().expect("maintain thread");
        assert!(
            maintain.status.success(),
            "maintain: {}",
            String::from_utf8_lossy(&maintain.stderr)
        );
    });
    let produced = |topic: &str| messages.iter().filter(|m| m.topic == topic).count();
    wait_until(Duration::from_secs(240), "the whole stream landed", || {
        tables.iter().all(|(table, topic, _)| {
            offsets(&w, table, topic).len() + erased[topic].len() >= produced(topic)
        })
    });
    terminate(run.child());
    let status = run.child().wait().expect("wait");
    assert!(status.success(), "run exited {status}");

    // Every table reads (no missing file), every offset landed once (the erased ones
    // aside), silver keeps one row per key, and the subject is nowhere.
    crate::residue::record(&w.lake());
    for (table, topic, _) in tables {
        let mut seen = offsets(&w, table, topic);
        for o in &erased[topic] {
            assert!(!seen.contains(o), "{table}: an erased row is back at {o:?}");
        }
        seen.extend(&erased[topic]);
        assert_contiguous(topic, seen, produced(topic));
    }
    for (t, k) in [
        ("silver.customers", "customer_id"),
        ("silver.accounts", "account_id"),
    ] {
        let r = w.sql(&format!("select count(*), count(distinct {k}) from {t}"));
        let (n, d) = r[0].split_once(',').expect("two");
        assert_eq!(n, d, "{t}: a key twice");
    }
    ok(&["job", "erase", "--verify", subject]);
}

#[test]
fn two_hosts_racing_for_a_stale_lock_one_wins() {
    use crate::harness::{Mock, Workdir};
    let broker = Mock::start();
    let w = Workdir::new();
    let gold = w.dir.path().join("gold");
    std::fs::create_dir_all(&gold).expect("gold");
    std::fs::create_dir_all(w.dir.path().join("views")).expect("views");
    std::fs::write(gold.join("numbers.sql"), "select 1 as n").expect("definition");
    w.write_config(
        &broker,
        "race",
        &["t"],
        &format!(
            "[sql]\ngold_dir = {:?}\nviews_dir = {:?}\n",
            gold.display().to_string(),
            w.dir.path().join("views").display().to_string()
        ),
    );
    let locks = w.lake().join("_sluice/locks");
    std::fs::create_dir_all(&locks).expect("locks");
    // A lock of a host that stopped renewing it an hour ago.
    std::fs::write(
        locks.join("gold_numbers.lock"),
        serde_json::json!({
            "host": "crashed-host", "pid": 7, "started": 1, "nonce": "dead",
            "acquired_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T00:02:00Z"
        })
        .to_string(),
    )
    .expect("stale lock");
    // Both read the stale lock, wait, then race to take it over.
    let racer = |host: &str| {
        w.sluice(&["job", "gold"])
            .env("SLUICE_HOST_ID", host)
            .env("SLUICE_TEST_LOCK_TAKEOVER_DELAY_MS", "1500")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (racer("host-a"), racer("host-b"));
    let outs = [
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    ];
    let won: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one wins: {:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect::<Vec<_>>()
    );
    let lost = outs.iter().find(|o| !o.status.success()).expect("a loser");
    assert_eq!(lost.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&lost.stderr).contains("holds the lock 'gold.numbers'"),
        "{}",
        String::from_utf8_lossy(&lost.stderr)
    );
    assert!(
        !locks.join("gold_numbers.lock").exists(),
        "the winner released it"
    );
}

#[test]
fn an_erasure_stopped_at_any_step_is_finished_by_the_next_run_with_the_same_certificate() {
    use crate::residue;
    let d = demo();
    let key =
        std::fs::read_to_string(d.dir.path().join("sluice-demo-keys/pseudonym.key")).expect("key");
    let token = sluice_transforms::tokenize::token("pseudo", key.trim().as_bytes(), b"C0000010");
    let certificate = |out: std::process::Output| -> serde_json::Value {
        let mut all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(all.len(), 1);
        all.remove(0)
    };
    // What an unbroken run removes, as a dry run says.
    let dry = certificate(d.ok(&[
        "--format",
        "json",
        "job",
        "erase",
        "--dry-run",
        "--request-id",
        "STOP",
        "C0000010",
    ]));
    let before = residue::record(&d.lake());
    // Stopped (aborted, as a kill would) at every step of the erasure in turn, each run
    // taking over from the one before: before and after a table's delete, after its rows
    // are accounted for, after its log scrub, after its files are removed, before and after
    // the certificates are recorded. The same command, with or without the request id:
    // the journal is the subject's.
    for at in [
        "deleted:silver.accounts",
        "journaled:silver.accounts",
        "accounted:bronze.accounts",
        "scrubbed:silver.customers",
        "purged:silver.customers_history",
        "certifying:run",
        "recorded:run",
    ] {
        let args: &[&str] = if at == "recorded:run" {
            &["job", "erase", "--request-id", "STOP", "C0000010"]
        } else {
            &["job", "erase", "C0000010"]
        };
        let out = d
            .sluice(args)
            .env("SLUICE_TEST_ERASE_ABORT_AT", at)
            .output()
            .expect("erase");
        assert_eq!(
            out.status.code(),
            None,
            "the run meant to stop at {at} ran to its end: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The stopped runs recorded one certificate, the one an unbroken run would write:
    // every table, every row, every value hash, nothing left for later.
    let hash = dry["subject_hash"].as_str().expect("hash").to_string();
    let recorded: Vec<serde_json::Value> = serde_json::from_slice(
        &d.ok(&[
            "sql",
            "--format",
            "json",
            &format!(
                "select request_id, outcome, tables from sluice.erasures where subject_hash = '{hash}'"
            ),
        ])
        .stdout,
    )
    .expect("json");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["request_id"], "STOP");
    assert_eq!(recorded[0]["outcome"], "erased");
    let done = serde_json::json!({
        "tables": serde_json::from_str::<serde_json::Value>(
            recorded[0]["tables"].as_str().expect("tables")
        )
        .expect("tables json")
    });
    let tables = |c: &serde_json::Value| -> BTreeMap<String, (u64, i64, Vec<String>)> {
        c["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .map(|t| {
                let hashes = t["value_hashes"]
                    .as_array()
                    .expect("hashes")
                    .iter()
                    .map(|h| h.as_str().expect("hash").to_string())
                    .collect();
                (
                    t["table"].as_str().expect("table").to_string(),
                    (
                        t["rows_removed"].as_u64().expect("rows"),
                        t["version_before"].as_i64().expect("version"),
                        hashes,
                    ),
                )
            })
            .collect()
    };
    assert_eq!(tables(&done), tables(&dry));
    assert!(
        tables(&done)["silver.accounts"].0 > 0,
        "{:?}",
        tables(&done)
    );
    for t in done["tables"].as_array().expect("tables") {
        assert_eq!(t["files_deferred"], 0, "{t}");
    }
    // The run stopped after recording is a finished run: the next one starts afresh and
    // finds nothing left.
    d.ok(&["job", "erase", "C0000010"]);
    let outcomes = d.ok(&[
        "sql",
        "--format",
        "csv",
        &format!(
            "select outcome from sluice.erasures where subject_hash = '{hash}' order by erased_at"
        ),
    ]);
    let outcomes = String::from_utf8_lossy(&outcomes.stdout).into_owned();
    assert_eq!(
        outcomes
            .lines()
            .filter(|l| l.contains("erase"))
            .collect::<Vec<_>>(),
        vec!["erased", "nothing to erase"],
        "{outcomes}"
    );
    let pending = d.lake().join("_sluice/erasures_pending");
    assert!(
        !pending.exists() || residue::files_under(&pending).is_empty(),
        "the journal is removed once the certificate is recorded"
    );
    // Every table reads, the customer is gone, and so is every value its rows held.
    let after = residue::record(&d.lake());
    let gone = residue::disappeared(&before, &after);
    assert!(
        gone.contains_key("silver/accounts"),
        "nothing disappeared from silver/accounts: {:?}",
        gone.keys()
    );
    for (t, _) in TABLES {
        let table = t.replace('.', "/");
        assert_eq!(residue::count_mentions(&after, &table, &token), 0, "{t}");
    }
    let values = residue::distinctive(&gone, &after);
    assert!(values.contains(&token));
    let hits = residue::scan(&d.lake(), &values);
    assert!(
        hits.is_empty(),
        "{} of {} values of the erased rows remain after a killed erasure: {:?}",
        hits.len(),
        values.len(),
        hits.iter().take(20).collect::<Vec<_>>()
    );
    d.ok(&["job", "erase", "--verify", "C0000010"]);
}
