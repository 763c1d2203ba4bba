//! `sluice job erase` on the demo bank: a customer present in every table before is absent
//! after, at every older version too; every byte of the lake is clean; the certificate is
//! written; other customers are untouched; a second run is a no-op with its own certificate;
//! copies of the customer's encrypted values no longer open (crypto-shredding).

use std::collections::BTreeMap;
use std::path::Path;
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
            Some(br#"{"subject": "7100004", "request_id": "DSAR-4"}"#),
            Some(br#"{"nope": 1}"#),
        ],
    );

    w.run_ok(&["job", "erase", "--requests"]);
    assert_eq!(
        w.sql("select id from bronze.events order by id"),
        vec!["7100001", "7100003", "7100005"]
    );
    assert_eq!(
        w.sql("select request_id, outcome, tombstones from sluice.erasures order by request_id"),
        vec![
            "DSAR-4,erased,1",
            "erasure-requests-0-0,erased,1",
            // CSV doubles the quotes inside a quoted field.
            r#"erasure-requests-0-2,"invalid request: a JSON request needs a non-empty string ""subject""",0"#,
        ]
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
    assert_eq!(w.count("sluice.erasures"), 3);

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
