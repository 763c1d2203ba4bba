//! Brokers, producers, tools, processes and checks shared by the integration tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use sluice_connectors::demo::broker::{EmbeddedBroker, Outgoing, SimpleProducer};

/// A Kafka-protocol broker a test can create topics on.
pub trait Broker {
    fn bootstrap(&self) -> String;
    fn create_topic(&self, name: &str, partitions: i32);
}

/// librdkafka's mock cluster, in this process.
pub struct Mock(pub EmbeddedBroker);

impl Mock {
    pub fn start() -> Self {
        Mock(EmbeddedBroker::start(1).expect("mock cluster"))
    }
}

impl Broker for Mock {
    fn bootstrap(&self) -> String {
        self.0.bootstrap_servers()
    }
    fn create_topic(&self, name: &str, partitions: i32) {
        self.0.create_topic(name, partitions).expect("create topic");
    }
}

/// A child process (a server the test started), killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real broker process: tansu with in-memory storage, on a free loopback port.
pub struct Tansu {
    _child: KillOnDrop,
    bin: PathBuf,
    url: String,
    bootstrap: String,
}

impl Tansu {
    /// Start tansu, or `None` when it is not installed outside CI (see [`require`]).
    pub fn start() -> Option<Self> {
        let bin = require(Tool::Tansu)?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let child = KillOnDrop(child);
        wait_for_port(port, "tansu");
        Some(Tansu {
            _child: child,
            bin,
            url,
            bootstrap: format!("127.0.0.1:{port}"),
        })
    }
}

impl Broker for Tansu {
    fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }
    fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(&self.bin)
            .args([
                "topic",
                "create",
                "--broker",
                &self.url,
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A free loopback port, for a server the test starts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Wait until a server the test started (`what`) listens on loopback `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A program from outside the workspace that some tests need. `scripts/setup.sh --test`
/// installs every one, and CI (`CI=true`) runs with every one: see [`require`].
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    /// tansu, a Kafka-protocol broker process.
    Tansu,
    /// `SLUICE_TEST_PYTHON`: a Python with duckdb and its Delta extension, PyYAML, psycopg,
    /// moto and the Azure Blob client.
    Python,
    /// Debian's psql, the Postgres client.
    Psql,
    /// moto's S3 server, installed beside the tests' Python.
    MotoServer,
    /// Azurite's Blob Storage emulator, installed with npm.
    Azurite,
}

impl Tool {
    /// Where the tool is, if it is there.
    fn find(self) -> Option<PathBuf> {
        match self {
            Tool::Tansu => on_path("tansu").or_else(|| {
                let home = std::env::var_os("HOME")?;
                Some(Path::new(&home).join(".cargo/bin/tansu")).filter(|p| p.is_file())
            }),
            Tool::Python => std::env::var_os("SLUICE_TEST_PYTHON")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            Tool::Psql => on_path("psql"),
            Tool::MotoServer => {
                let python = Tool::Python.find()?;
                Some(python.parent()?.join("moto_server")).filter(|p| p.is_file())
            }
            Tool::Azurite => {
                let cache = std::env::var_os("SLUICE_CACHE")
                    .map(PathBuf::from)
                    .or_else(|| Some(Path::new(&std::env::var_os("HOME")?).join(".cache")))?;
                Some(cache.join("sluice-npm/node_modules/.bin/azurite-blob")).filter(|p| p.exists())
            }
        }
    }

    /// What the tool is, and how to get it.
    fn describe(self) -> &'static str {
        match self {
            Tool::Tansu => {
                "tansu (`cargo install --locked tansu --features dynostore`, or scripts/setup.sh --test)"
            }
            Tool::Python => {
                "SLUICE_TEST_PYTHON, a Python with duckdb, duckdb-ext-delta, PyYAML, psycopg and moto \
                 (scripts/setup.sh --test makes one in ~/.cache/sluice-venv; scripts/test.sh sets it)"
            }
            Tool::Psql => "psql (`apt-get install postgresql-client`, or scripts/setup.sh --test)",
            Tool::MotoServer => {
                "moto_server beside SLUICE_TEST_PYTHON (`pip install 'moto[server]'`, or scripts/setup.sh --test)"
            }
            Tool::Azurite => {
                "azurite-blob in ~/.cache/sluice-npm (`npm install azurite@3`, or scripts/setup.sh --test)"
            }
        }
    }
}

/// `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `tool`, for a test that cannot run without it. When it is missing, a test in CI
/// (`CI=true`) fails; elsewhere it prints `SKIPPED: <test>, for want of <tool>` where it
/// shows, past the test harness's capture, and gets `None`, to return at once.
pub fn require(tool: Tool) -> Option<PathBuf> {
    found_or_skipped(tool, None)
}

/// [`require`] for a part of a test (`part` says which) that the rest of the test runs
/// without.
pub fn require_part(tool: Tool, part: &str) -> Option<PathBuf> {
    found_or_skipped(tool, Some(part))
}

fn found_or_skipped(tool: Tool, part: Option<&str>) -> Option<PathBuf> {
    if let Some(path) = tool.find() {
        return Some(path);
    }
    // libtest runs each test on a thread named after it.
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("this test")
        .to_string();
    let what = match part {
        Some(part) => format!("{part} in {test}"),
        None => test,
    };
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "{what}: {} is missing (CI=true: every tool must be installed)",
        tool.describe()
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of tests
    // that pass, and a skip must show.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED: {what}, for want of {}",
        tool.describe()
    );
    None
}

/// Run `script` with `python -c`; its standard output, failing the test when the script
/// fails.
pub fn python_stdout(python: &Path, script: &str) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A JSON event of about 100 bytes.
pub fn event(i: usize) -> Vec<u8> {
    format!(
        r#"{{"id": {i}, "customer": "C{:07}", "amount_gbp": {}.{:02}, "channel": "app"}}"#,
        i % 5000,
        i % 700,
        i % 100
    )
    .into_bytes()
}

/// Produce `count` events (ids `start..start+count`) to `topic`.
pub fn produce(broker: &dyn Broker, topic: &str, start: usize, count: usize) {
    let producer = SimpleProducer::new(&broker.bootstrap()).expect("producer");
    for i in start..start + count {
        let key = format!("k{i}");
        let payload = event(i);
        producer
            .send(&Outgoing {
                topic,
                key: Some(key.as_bytes()),
                payload: Some(&payload),
                timestamp_ms: Some(1_767_225_600_000 + i as i64),
            })
            .expect("send");
    }
    producer.flush().expect("flush");
}

/// Produce `(id, payload)` pairs in order, keyed `{"id":<id>}` as Debezium keys a row;
/// `None` is a tombstone.
pub fn produce_keyed(broker: &dyn Broker, topic: &str, events: &[(i64, Option<Vec<u8>>)]) {
    let producer = SimpleProducer::new(&broker.bootstrap()).expect("producer");
    for (id, payload) in events {
        let key = format!("{{\"id\":{id}}}");
        producer
            .send(&Outgoing {
                topic,
                key: Some(key.as_bytes()),
                payload: payload.as_deref(),
                timestamp_ms: None,
            })
            .expect("send");
    }
    producer.flush().expect("flush");
}

/// Produce raw payloads, in order.
pub fn produce_raw(broker: &dyn Broker, topic: &str, payloads: &[Option<&[u8]>]) {
    let producer = SimpleProducer::new(&broker.bootstrap()).expect("producer");
    for p in payloads {
        producer
            .send(&Outgoing {
                topic,
                key: Some(b"key"),
                payload: *p,
                timestamp_ms: None,
            })
            .expect("send");
    }
    producer.flush().expect("flush");
}

/// A scratch directory with a config file and a lake (in the directory, or elsewhere:
/// an object store's URL, with the environment its client needs).
pub struct Workdir {
    pub dir: tempfile::TempDir,
    /// `--lake` when the lake is not `<dir>/lake`.
    pub lake_url: Option<String>,
    /// Environment of every `sluice` the workdir starts.
    pub env: Vec<(String, String)>,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::tempdir().expect("tempdir"),
            lake_url: None,
            env: Vec::new(),
        }
    }
    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }
    /// Write a config consuming `topics` from `broker`, plus `extra` TOML.
    pub fn write_config(&self, broker: &dyn Broker, pipeline: &str, topics: &[&str], extra: &str) {
        let topics = topics
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "[pipeline]\nname = \"{pipeline}\"\n\n[kafka]\nbootstrap_servers = \"{}\"\ntopics = [{topics}]\n\
             session_timeout_ms = 6000\ndecode_batch_max_latency_ms = 50\n\n[bronze]\n\
             flush_max_latency_ms = 500\n{extra}",
            broker.bootstrap()
        );
        std::fs::write(self.config(), text).expect("write config");
    }
    /// `sluice <args> --config <config> --lake <lake>` ready to run.
    pub fn sluice(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(args)
            .arg("--config")
            .arg(self.config())
            .arg("--lake");
        match &self.lake_url {
            Some(url) => c.arg(url),
            None => c.arg(self.lake()),
        };
        c.env("SLUICE_LOG", "warn,buoyant_kernel=off");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
    /// Run to completion and return the output, failing the test on a non-zero exit.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.sluice(args).output().expect("run sluice");
        assert!(
            out.status.success(),
            "sluice {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    /// `run_ok` with environment variables set for the child.
    pub fn run_ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self
            .sluice(args)
            .envs(env.iter().copied())
            .output()
            .expect("run sluice");
        assert!(
            out.status.success(),
            "sluice {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    /// Rows of a SQL query as CSV lines, header dropped.
    pub fn sql(&self, query: &str) -> Vec<String> {
        let out = self.run_ok(&["sql", "--format", "csv", query]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    }
    /// Number of rows of a table, 0 when it does not exist yet.
    pub fn count(&self, table: &str) -> usize {
        let out = self
            .sluice(&[
                "sql",
                "--format",
                "csv",
                &format!("select count(*) from {table}"),
            ])
            .output()
            .expect("sql");
        if !out.status.success() {
            return 0;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Assert `table` holds `produced` rows of `topic`, and every partition's offsets run
/// from 0 with no gap and no duplicate: every message landed exactly once. (Broker
/// watermarks are not used: some brokers report wrong ones.)
pub fn assert_exactly_once(
    w: &Workdir,
    table: &str,
    topic: &str,
    partitions: i32,
    produced: usize,
) {
    let rows = w.sql(&format!(
        "select _kafka_partition, _kafka_offset from {table} where _kafka_topic = '{topic}' order by 1, 2"
    ));
    let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &rows {
        let (p, o) = r.split_once(',').expect("two columns");
        seen.entry(p.parse().expect("partition"))
            .or_default()
            .push(o.parse().expect("offset"));
    }
    for (p, offsets) in &seen {
        assert!(
            (0..partitions).contains(p),
            "{topic}[{p}] is not a partition of the topic"
        );
        if let Some(bad) = offsets.iter().enumerate().find(|(i, o)| **o != *i as i64) {
            panic!(
                "{topic}[{p}]: offset #{} is {} (a gap or a duplicate); {} rows",
                bad.0,
                bad.1,
                offsets.len()
            );
        }
    }
    assert_eq!(
        rows.len(),
        produced,
        "{topic}: {} rows for {produced} messages",
        rows.len()
    );
}

/// Wait until `cond` holds, polling; panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A `sluice` process whose log lines (its stderr, at info level for sluice's own crates)
/// the test reads as they come, so that it waits for what the process says it did
/// (partitions assigned, a commit) rather than sleeping and hoping. Killed and reaped when
/// dropped, unless waited for.
pub struct Logged {
    child: Option<Child>,
    lines: Receiver<String>,
    /// Every line read so far: a later wait finds a line an earlier one read past.
    read: std::cell::RefCell<Vec<String>>,
}

impl Logged {
    /// Spawn `command` (a `sluice` command; its stdout as the caller set it).
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .env(
                "SLUICE_LOG",
                "warn,buoyant_kernel=off,sluice=info,sluice_connectors=info,sluice_pipeline=info",
            )
            // Plain text: the needles of `wait_for` meet no colour codes.
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end whether or not anyone still listens: a full pipe would stall
            // the process.
            let mut line = Vec::new();
            while stderr.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
                line.clear();
            }
        });
        Logged {
            child: Some(child),
            lines,
            read: Default::default(),
        }
    }

    /// Wait for a log line containing `needle` (the first such line the process logged,
    /// however long ago), and return it. Panics after `timeout`, or when the process ends
    /// its log (exits) without such a line, showing the last lines it logged.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.read.borrow().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Checked before every line too: a process logging without pause never
            // leaves the channel empty.
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match self.lines.recv_timeout(left) {
                Ok(_) if left.is_zero() => format!("within {timeout:?}"),
                Ok(line) => {
                    let found = line.contains(needle);
                    self.read.borrow_mut().push(line.clone());
                    if found {
                        return line;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => format!("within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => "before it exited".to_string(),
            };
            let read = self.read.borrow();
            panic!(
                "sluice logged no line with {needle:?} {why}; its last lines:\n{}",
                read[read.len().saturating_sub(20)..].join("\n")
            );
        }
    }

    /// The process.
    pub fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the process is not waited for yet")
    }

    /// Wait for the process to exit: its status and standard output (when piped).
    pub fn wait_with_output(mut self) -> Output {
        let child = self
            .child
            .take()
            .expect("the process is not waited for yet");
        child.wait_with_output().expect("wait")
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Send SIGTERM (graceful stop) to a child.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}
