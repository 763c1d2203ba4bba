//! A lake in an object store. moto's S3 server (from PyPI, in the tests' Python
//! environment) stands in for S3 and S3-compatible stores such as MinIO; Azurite (from
//! npm) for Azure Blob Storage. Both honour conditional writes (`If-None-Match: *`), which
//! delta-rs commits with, so concurrent writers are tested for real: two `sluice run`
//! processes share one lake exactly once, in each store.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::group::two_processes_ingest;
use crate::harness::{
    Broker, KillOnDrop, Mock, Tool, Workdir, free_port, python_stdout, require, wait_for_port,
};

/// An object store server the tests write a lake to.
trait Store {
    /// `--lake` for a lake under `bucket`.
    fn lake(&self, bucket: &str) -> String;
    /// What a `sluice` process needs to reach the server, from the environment as in
    /// production.
    fn env(&self) -> Vec<(String, String)>;
    /// Object names under `prefix` of `bucket`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String>;
}

/// A moto S3 server on a free port, with one bucket; stopped on drop.
struct S3 {
    _child: KillOnDrop,
    endpoint: String,
    python: PathBuf,
}

impl S3 {
    /// The server, or `None` when moto is not installed outside CI (see
    /// [`require`]).
    fn start(bucket: &str) -> Option<Self> {
        let python = require(Tool::Python)?;
        let bin = require(Tool::MotoServer)?;
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let s3 = S3 {
            _child: KillOnDrop(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            python,
        };
        wait_for_port(port, "moto_server");
        s3.boto(&format!("s3.create_bucket(Bucket='{bucket}')"));
        Some(s3)
    }

    /// Run `statement` with `s3` a boto3 client of this server; its stdout.
    fn boto(&self, statement: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{statement}\n",
            self.endpoint
        );
        python_stdout(&self.python, &script)
    }
}

impl S3 {
    /// Copy every object under `prefix` of `bucket` into `dir` (paths after the prefix).
    fn download(&self, bucket: &str, prefix: &str, dir: &std::path::Path) {
        self.boto(&format!(
            "import os\n\
             p = s3.get_paginator('list_objects_v2')\n\
             for page in p.paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    \
             for o in page.get('Contents', []):\n        \
             k = o['Key']\n        \
             dest = os.path.join({dir:?}, k[len('{prefix}'):])\n        \
             os.makedirs(os.path.dirname(dest), exist_ok=True)\n        \
             s3.download_file('{bucket}', k, dest)",
            dir = dir.display().to_string()
        ));
    }
}

impl Store for S3 {
    fn lake(&self, bucket: &str) -> String {
        format!("s3://{bucket}/lake")
    }

    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.boto(&format!(
            "p = s3.get_paginator('list_objects_v2')\n\
             for page in p.paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    \
             for o in page.get('Contents', []): print(o['Key'])"
        ))
        .lines()
        .map(str::to_string)
        .collect()
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// Azurite's Blob service on a free port, with one container; stopped on drop.
struct Azurite {
    _child: KillOnDrop,
    endpoint: String,
    python: PathBuf,
    _data: tempfile::TempDir,
}

/// Azurite's well-known development account.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    /// The server, or `None` when Azurite is not installed outside CI (see
    /// [`require`]).
    fn start(container: &str) -> Option<Self> {
        let python = require(Tool::Python)?;
        let bin = require(Tool::Azurite)?;
        let data = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
            ])
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let az = Azurite {
            _child: KillOnDrop(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            python,
            _data: data,
        };
        wait_for_port(port, "azurite");
        az.blob(&format!("c.create_container('{container}')"));
        Some(az)
    }

    /// Run `statement` with `c` a Blob service client of this server; its stdout.
    fn blob(&self, statement: &str) -> String {
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};\
             AccountKey={AZURITE_KEY};BlobEndpoint={}/{AZURITE_ACCOUNT};",
            self.endpoint
        );
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\n\
             c = BlobServiceClient.from_connection_string('{connection}')\n{statement}\n"
        );
        python_stdout(&self.python, &script)
    }
}

impl Store for Azurite {
    fn lake(&self, container: &str) -> String {
        format!("az://{container}/lake")
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("AZURITE_BLOB_STORAGE_URL", self.endpoint.as_str()),
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn keys(&self, container: &str, prefix: &str) -> Vec<String> {
        self.blob(&format!(
            "for b in c.get_container_client('{container}').list_blobs(name_starts_with='{prefix}'): print(b.name)"
        ))
        .lines()
        .map(str::to_string)
        .collect()
    }
}

fn workdir(store: &dyn Store, broker: &dyn Broker, bucket: &str, topics: &[&str]) -> Workdir {
    let mut w = Workdir::new();
    w.lake_url = Some(store.lake(bucket));
    w.env = store.env();
    w.write_config(broker, "shared", topics, "");
    w
}

/// Two `sluice run` processes in one group write the same tables of a lake in `store`.
fn two_processes_share_a_lake_exactly_once(store: &dyn Store, bucket: &str) {
    let broker = Mock::start();
    broker.create_topic("events", 4);
    let w = workdir(store, &broker, bucket, &["events"]);
    // Every message once, though both wrote the same table through conditional puts.
    let summaries = two_processes_ingest(&broker, &w);
    let commits: u64 = summaries
        .iter()
        .map(|s| s["commits"].as_u64().expect("commits"))
        .sum();
    assert!(commits >= 2, "both processes committed to the one table");
    let keys = store.keys(bucket, "lake/bronze/events/_delta_log/");
    assert!(
        keys.iter().filter(|k| k.ends_with(".json")).count() as u64 > commits,
        "one log entry per commit (plus the table's creation): {keys:?}"
    );
    assert!(
        !w.lake().exists(),
        "nothing was written to a local directory"
    );
}

#[test]
fn two_processes_share_an_s3_lake_exactly_once() {
    if let Some(s3) = S3::start("shared") {
        two_processes_share_a_lake_exactly_once(&s3, "shared");
    }
}

#[test]
fn two_processes_share_an_azure_lake_exactly_once() {
    if let Some(az) = Azurite::start("shared") {
        two_processes_share_a_lake_exactly_once(&az, "shared");
    }
}

#[test]
fn the_demo_lands_in_s3_resumes_there_and_every_job_runs_there() {
    let Some(s3) = S3::start("bank") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .current_dir(dir.path())
            .envs(s3.env())
            .env("SLUICE_LOG", "warn,buoyant_kernel=off")
            .output()
            .expect("sluice");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = demo(&["demo", "--lake", "s3://bank/lake"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("Tables in s3://bank/lake/"), "{stdout}");
    assert!(stdout.contains("silver.customers"), "{stdout}");
    let keys = s3.keys("bank", "lake/");
    for table in ["bronze/customers", "silver/customers", "_keys/subjects"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("lake/{table}/_delta_log/"))),
            "{table} has no log in the bucket"
        );
    }
    // A second run resumes from the offsets in the bucket's tables: nothing new.
    let (code, _, stderr) = demo(&["demo", "--lake", "s3://bank/lake"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("demo: 0 new messages"), "{stderr}");
    // SQL reads the bucket directly.
    let (code, stdout, stderr) = demo(&[
        "sql",
        "--lake",
        "s3://bank/lake",
        "--format",
        "csv",
        "select count(*) from silver.customers",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let n: u64 = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("a count");
    assert!(n > 1_000, "{stdout}");
    // The batch jobs run there too, under locks that are objects, and record their runs.
    let config = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--print-config"])
        .output()
        .expect("config");
    std::fs::write(dir.path().join("demo.toml"), &config.stdout).expect("config");
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/sql"),
        dir.path().join("sql"),
    )
    .expect("the gold definitions");
    let job = |args: &[&str]| {
        let mut all = vec!["--config", "demo.toml", "--lake", "s3://bank/lake"];
        all.extend_from_slice(args);
        demo(&all)
    };
    let (code, stdout, stderr) = job(&["job", "maintain"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("silver.customers"), "{stdout}");
    let (code, stdout, stderr) = job(&["job", "gold"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("gold.daily_spend_by_segment"), "{stdout}");
    let (code, _, stderr) = job(&["job", "snapshot"]);
    assert_eq!(code, Some(0), "{stderr}");
    // Erasure of three subjects (one with accounts, one found only among card
    // transactions, one with a dead letter): found before, purged from the bucket's
    // files and logs, clean after: the rows that disappeared left none of their values
    // in any object (copied out and read as the local residue test reads a lake).
    let key = std::fs::read_to_string(dir.path().join("sluice-demo-keys/pseudonym.key"))
        .expect("the demo's key");
    let token = |raw: &str| {
        sluice_transforms::tokenize::token("pseudo", key.trim().as_bytes(), raw.as_bytes())
    };
    let (code, stdout, stderr) = job(&[
        "sql",
        "--format",
        "csv",
        crate::erase::ONLY_IN_CARD_TRANSACTIONS,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let only_cards = crate::erase::raw_of(&token, stdout.lines().nth(1).expect("a row").trim());
    let subjects = ["C0000010", only_cards.as_str(), "C0000002"];
    for s in subjects {
        let (code, _, stderr) = job(&["job", "erase", "--verify", s]);
        assert_eq!(code, Some(1), "{s} is not found before: {stderr}");
    }
    let copy_before = tempfile::tempdir().expect("tempdir");
    s3.download("bank", "lake/", copy_before.path());
    let before = crate::residue::record(copy_before.path());
    let mut args = vec!["job", "erase", "--request-id", "S3-1"];
    args.extend(subjects);
    let (code, stdout, stderr) = job(&args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("S3-1") && stdout.contains("erased"),
        "{stdout}"
    );
    assert!(
        stderr.contains("erase: keys.subjects: 3 rows removed"),
        "{stderr}"
    );
    let copy_after = tempfile::tempdir().expect("tempdir");
    s3.download("bank", "lake/", copy_after.path());
    let after = crate::residue::record(copy_after.path());
    let gone = crate::residue::disappeared(&before, &after);
    assert!(gone.contains_key("_keys/subjects"), "{:?}", gone.keys());
    for t in [
        "bronze/card_transactions",
        "silver/accounts",
        "_sluice/dead_letters",
    ] {
        assert!(gone.contains_key(t), "{t}: {:?}", gone.keys());
    }
    let values = crate::residue::distinctive(&gone, &after);
    for s in &subjects[..2] {
        assert!(
            values.contains(&token(s)),
            "{s}'s token is among the values"
        );
    }
    let hits = crate::residue::scan(copy_after.path(), &values);
    assert!(
        hits.is_empty(),
        "values of erased rows remain in the bucket: {hits:?}"
    );
    for s in subjects {
        let (code, stdout, stderr) = job(&["job", "erase", "--verify", s]);
        assert_eq!(code, Some(0), "{s}: {stderr}");
        assert!(
            stdout.contains("0 occurrences") || stderr.contains("0 occurrences"),
            "{stdout}{stderr}"
        );
    }
    let (code, _, stderr) = job(&["job", "anonymise"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        s3.keys("bank", "lake/_sluice/locks/").is_empty(),
        "locks are released"
    );
    let (code, stdout, stderr) = job(&["audit", "verify"]);
    // maintain, gold, snapshot, the erasure, anonymise and six verifications.
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("11 runs, chain intact"), "{stdout}");
    // A lock held by another run (another host) is respected.
    s3.boto(
        "s3.put_object(Bucket='bank', Key='lake/_sluice/locks/maintain_silver_customers.lock', \
         Body=b'other-host:42 since 2026-11-23T00:00:00Z')",
    );
    let (code, _, stderr) = job(&["job", "maintain"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "another run holds the lock 'maintain.silver.customers' (process other-host:42"
        ),
        "{stderr}"
    );
    assert!(!dir.path().join("lake").exists());
    assert!(!dir.path().join("s3:").exists());
}
