//! `sluice serve` with real Postgres clients: Debian's `psql` (simple protocol, SQL
//! `PREPARE`/`EXECUTE`, SCRAM, TLS) and psycopg (extended protocol: bound parameters, a
//! named prepared statement, binary results) against the demo bank, as an unrestricted
//! user and as a role.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::erase::{Demo, demo};
use crate::harness::{KillOnDrop, Tool, python_stdout, require, require_part};

const USERS_MARK: &str = "\n# serve test\n";
const USERS: &str = r#"
[roles.analyst]
tables = ["silver", "gold", "views"]
deny_tags = ["direct_identifier"]
[roles.analyst.row_filters]
"silver.accounts" = "product <> 'isa'"
"silver.customers" = "segment <> 'premier'"

[serve]
tls_cert = "tls/server.crt"
tls_key = "tls/server.key"
{serve}
[serve.users.ops]
password_env = "SLUICE_TEST_PASSWORD_OPS"
[serve.users.ana]
role = "analyst"
password_env = "SLUICE_TEST_PASSWORD_ANA"
[serve.users.ann]
role = "analyst"
password_env = "SLUICE_TEST_PASSWORD_ANN"
"#;

/// `sluice serve` on a port of its choosing, and the psql the test reaches it with.
struct Server {
    _child: KillOnDrop,
    port: u16,
    psql: PathBuf,
}

/// `sluice serve` on a free port of `d`'s lake, with the users' passwords in its
/// environment.
fn serve_command(d: &Demo) -> Command {
    let mut c = d.sluice(&["serve", "--address", "127.0.0.1:0"]);
    c.env("SLUICE_TEST_PASSWORD_OPS", "ops-secret")
        .env("SLUICE_TEST_PASSWORD_ANA", "ana-secret")
        .env("SLUICE_TEST_PASSWORD_ANN", "ann-secret");
    c
}

/// `sluice serve` on a free port, with the users' passwords in its environment, once it
/// listens; `extra` goes into `[serve]`.
fn serve(d: &Demo, psql: &Path, extra: &str) -> Server {
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let base = config
        .split(USERS_MARK)
        .next()
        .unwrap_or_default()
        .to_string();
    let users = USERS.replace("{serve}", extra);
    std::fs::write(&path, format!("{base}{USERS_MARK}{users}")).expect("config");
    let tls = d.dir.path().join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    for f in ["server.crt", "server.key"] {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tls");
        std::fs::copy(from.join(f), tls.join(f)).expect("copy tls");
    }
    let mut child = serve_command(d)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sluice serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let port = line
        .split("listening on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    Server {
        _child: KillOnDrop(child),
        port,
        psql: psql.to_path_buf(),
    }
}

/// psql connecting to `s` as `user` with `password`, `sslmode` as given, unaligned and
/// tuples only, without a startup file.
fn psql_command(s: &Server, user: &str, password: &str, sslmode: &str) -> Command {
    let mut c = Command::new(&s.psql);
    c.arg(format!(
        "host=127.0.0.1 port={} user={user} dbname=lake sslmode={sslmode} connect_timeout=10",
        s.port
    ))
    .args(["-X", "-A", "-t"])
    .env("PGPASSWORD", password)
    .env_remove("PGSERVICE");
    c
}

/// `psql` as `user` with `password`; `sslmode` as given; statements from `-c`.
fn psql(s: &Server, user: &str, password: &str, sslmode: &str, commands: &[&str]) -> Output {
    let mut c = psql_command(s, user, password, sslmode);
    c.args(["-v", "ON_ERROR_STOP=1"]);
    for cmd in commands {
        c.args(["-c", cmd]);
    }
    c.output().expect("run psql")
}

fn lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn psql_and_a_driver_query_the_lake_as_their_role() {
    let Some(psql_bin) = require(Tool::Psql) else {
        return;
    };
    let d = demo();
    let s = serve(&d, &psql_bin, "");
    let customers = d.one("select count(*) from silver.customers");
    let isa = d.one("select count(*) from silver.accounts where product = 'isa'");
    let not_isa = d.one("select count(*) from silver.accounts where product <> 'isa'");
    assert_ne!(isa, "0");

    // Unrestricted user, TLS when offered (sslmode=prefer is psql's default).
    let out = psql(
        &s,
        "ops",
        "ops-secret",
        "require",
        &["select count(*) from silver.customers"],
    );
    assert_eq!(lines(&out), vec![customers.clone()]);
    let out = psql(
        &s,
        "ops",
        "ops-secret",
        "disable",
        &[
            "select segment, count(*) from silver.customers group by segment order by segment limit 2",
            "select count(*) from bronze.card_transactions",
        ],
    );
    let rows = lines(&out);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows[0].contains('|'), "{rows:?}");
    assert_eq!(
        rows[2],
        d.one("select count(*) from bronze.card_transactions")
    );

    // SQL-level prepared statement (simple protocol); PREPARE answers with its command
    // tag, as Postgres does.
    let out = psql(
        &s,
        "ops",
        "ops-secret",
        "prefer",
        &[
            "PREPARE by_product(VARCHAR) AS select count(*) from silver.accounts where product = $1",
            "EXECUTE by_product('isa')",
        ],
    );
    assert_eq!(lines(&out), vec!["PREPARE".to_string(), isa.clone()]);

    // A wrong password, and an unknown user, are refused.
    for (user, password) in [("ops", "guess"), ("mallory", "ops-secret")] {
        let out = psql(&s, user, password, "disable", &["select 1"]);
        assert_eq!(out.status.code(), Some(2), "{user} got in");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Password authentication failed"),
            "{stderr}"
        );
    }

    // The role: row filter, denied column (naming the policy), denied table.
    let out = psql(
        &s,
        "ana",
        "ana-secret",
        "prefer",
        &[
            "select count(*) from silver.accounts",
            "select count(*) from silver.accounts where product = 'isa'",
        ],
    );
    assert_eq!(lines(&out), vec![not_isa.clone(), "0".to_string()]);
    let out = psql(
        &s,
        "ana",
        "ana-secret",
        "prefer",
        &["select email from silver.customers"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("column email of silver.customers is not readable by role 'analyst'"),
        "{stderr}"
    );
    let out = psql(
        &s,
        "ana",
        "ana-secret",
        "prefer",
        &["select count(*) from bronze.card_transactions"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("table bronze.card_transactions is not readable by role 'analyst'"),
        "{stderr}"
    );

    // Read-only: nothing is created, written or read from the server's files.
    let out = psql(
        &s,
        "ops",
        "ops-secret",
        "prefer",
        &["COPY (select 1) TO '/tmp/sluice-serve-copy.csv'"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::path::Path::new("/tmp/sluice-serve-copy.csv").exists());

    // Extended protocol from a driver: bound parameters, a named prepared statement run
    // twice, binary results; the role applies.
    if let Some(python) = require_part(Tool::Python, "the psycopg checks") {
        let script = format!(
            r#"
import psycopg
url = "host=127.0.0.1 port={port} dbname=lake sslmode=prefer"
with psycopg.connect(url + " user=ops password=ops-secret") as c:
    cur = c.cursor()
    cur.execute("select count(*) from silver.accounts where product = %s", ("isa",), prepare=True)
    print(cur.fetchone()[0])
    cur.execute("select count(*) from silver.accounts where product = %s", ("isa",), prepare=True)
    print(cur.fetchone()[0])
    bcur = c.cursor(binary=True)
    bcur.execute("select count(*) from silver.customers where segment is not null and 1 = %s", (1,))
    print(bcur.fetchone()[0])
with psycopg.connect(url + " user=ana password=ana-secret") as c:
    cur = c.cursor()
    cur.execute("select count(*) from silver.accounts where product <> %s", ("nothing",))
    print(cur.fetchone()[0])
"#,
            port = s.port
        );
        let got: Vec<String> = python_stdout(&python, &script)
            .lines()
            .map(str::to_string)
            .collect();
        let with_segment = d.one("select count(*) from silver.customers where segment is not null");
        assert_eq!(got, vec![isa.clone(), isa, with_segment, not_isa]);
    }

    // Required TLS: a plain connection is refused before authentication.
    drop(s);
    let s = serve(&d, &psql_bin, "require_tls = true");
    let out = psql(&s, "ops", "ops-secret", "disable", &["select 1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");
    let out = psql(&s, "ops", "ops-secret", "require", &["select 1"]);
    assert_eq!(lines(&out), vec!["1"]);
}

/// Every file under `dir` with its size (the lake's logs and data included).
fn files(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, u64> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(path),
                Ok(m) => {
                    out.insert(path, m.len());
                }
                Err(_) => {}
            }
        }
    }
    out
}

/// Entries of /tmp whose name holds `marker`.
fn in_tmp(marker: &str) -> Vec<String> {
    std::fs::read_dir("/tmp")
        .expect("/tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(marker))
        .collect()
}

/// Statements that would write (rows, files, objects, the catalog, the session's runtime),
/// bare and wrapped in every form a client can send: `EXPLAIN`, `EXPLAIN ANALYZE`,
/// `PREPARE`, a CTE, a cursor.
fn write_attempts(lake: &std::path::Path, marker: &str) -> Vec<String> {
    let commit = lake.join("bronze/touchpoints/_delta_log/00000000000000000999.json");
    let copy = |s: &str| format!("COPY ({s}) TO '{}'", commit.display());
    let writes = vec![
        "INSERT INTO bronze.touchpoints SELECT * FROM bronze.touchpoints LIMIT 1".to_string(),
        "INSERT INTO bronze.touchpoints (channel) VALUES ('web')".to_string(),
        "UPDATE bronze.touchpoints SET channel = 'x'".to_string(),
        "DELETE FROM bronze.touchpoints WHERE channel <> ''".to_string(),
        "MERGE INTO bronze.touchpoints t USING bronze.touchpoints s ON t._kafka_offset = s._kafka_offset \
         WHEN MATCHED THEN DELETE"
            .to_string(),
        format!("COPY (SELECT 1 AS x) TO '{marker}-copy.csv'"),
        format!("COPY (SELECT 1 AS x) TO '/tmp/{marker}-copy.csv'"),
        format!("COPY bronze.touchpoints TO '/tmp/{marker}-table.parquet'"),
        copy("SELECT '{\"commitInfo\":{}}' AS line"),
    ];
    let mut all = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        all.push(w.clone());
        all.push(format!("EXPLAIN {w}"));
        all.push(format!("EXPLAIN ANALYZE {w}"));
        all.push(format!("EXPLAIN (ANALYZE, VERBOSE) {w}"));
        all.push(format!("PREPARE w{i} AS {w}"));
    }
    all.extend([
        "WITH a AS (SELECT 1 AS x) INSERT INTO bronze.touchpoints SELECT * FROM bronze.touchpoints LIMIT 1"
            .to_string(),
        "WITH a AS (INSERT INTO bronze.touchpoints SELECT * FROM bronze.touchpoints LIMIT 1 RETURNING *) \
         SELECT count(*) FROM a"
            .to_string(),
        "WITH a AS (DELETE FROM bronze.touchpoints RETURNING *) SELECT count(*) FROM a".to_string(),
        "EXPLAIN ANALYZE WITH a AS (UPDATE bronze.touchpoints SET channel = 'x' RETURNING *) SELECT * FROM a"
            .to_string(),
        "DECLARE w CURSOR FOR WITH a AS (DELETE FROM bronze.touchpoints RETURNING *) SELECT * FROM a"
            .to_string(),
        "CREATE TABLE bronze.scratch AS SELECT 1 AS x".to_string(),
        "CREATE VIEW views.scratch AS SELECT 1 AS x".to_string(),
        "CREATE SCHEMA scratch".to_string(),
        "CREATE INDEX i ON bronze.touchpoints (channel)".to_string(),
        "CREATE FUNCTION f() RETURNS INT AS 'select 1' LANGUAGE SQL".to_string(),
        "DROP TABLE bronze.touchpoints".to_string(),
        "DROP VIEW views.approved_card_spend".to_string(),
        "DROP SCHEMA bronze CASCADE".to_string(),
        "ALTER TABLE bronze.touchpoints ADD COLUMN x INT".to_string(),
        "TRUNCATE bronze.touchpoints".to_string(),
        "VACUUM".to_string(),
        format!("SET datafusion.runtime.temp_directory = '/tmp/{marker}-spill'"),
        "SET datafusion.runtime.memory_limit = '64G'".to_string(),
        "SELECT * FROM read_csv('/etc/passwd')".to_string(),
        format!("SELECT * FROM read_parquet('{}')", lake.join("bronze/touchpoints").display()),
    ]);
    all
}

/// psql (simple protocol) runs `statements` as `user`, each on its line of a script, and
/// says the SQLSTATE each failed with (none: it ran).
fn psql_sqlstates(
    s: &Server,
    user: &str,
    password: &str,
    statements: &[String],
) -> Vec<Option<String>> {
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("attempts.sql");
    let mut text = String::from("\\set VERBOSITY verbose\n");
    for st in statements {
        text.push_str(&st.replace('\n', " "));
        text.push_str(";\n");
    }
    std::fs::write(&script, text).expect("script");
    let out = psql_command(s, user, password, "disable")
        .args(["-q", "-f"])
        .arg(&script)
        .output()
        .expect("psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut codes = vec![None; statements.len()];
    for line in stderr.lines() {
        // psql:<script>:<line>: ERROR:  25006: …
        let Some(rest) = line.strip_prefix(&format!("psql:{}:", script.display())) else {
            continue;
        };
        let Some((n, message)) = rest.split_once(':') else {
            continue;
        };
        let code = message
            .trim()
            .strip_prefix("ERROR:")
            .map(str::trim)
            .and_then(|m| m.split(':').next())
            .map(str::to_string);
        if let (Ok(n), Some(code)) = (n.parse::<usize>(), code)
            && n >= 2
            && n - 2 < codes.len()
        {
            codes[n - 2] = Some(code);
        }
    }
    codes
}

/// psycopg (extended protocol: Parse/Bind/Execute, named prepared statements, a named
/// server-side cursor) runs `statements` as `user`; the SQLSTATE each failed with.
fn psycopg_sqlstates(
    python: &Path,
    s: &Server,
    user: &str,
    password: &str,
    statements: &[String],
) -> Vec<Option<String>> {
    let script = format!(
        r#"
import json, sys, psycopg
statements = json.load(sys.stdin)
url = "host=127.0.0.1 port={port} dbname=lake sslmode=disable user={user} password={password}"
out = []
with psycopg.connect(url, autocommit=True) as c:
    for st in statements:
        try:
            if st.startswith("CURSOR "):
                with c.transaction():
                    cur = c.cursor(name="w")
                    cur.execute(st[len("CURSOR "):])
                    cur.fetchall()
            else:
                cur = c.cursor()
                cur.execute(st, prepare=True)
                if cur.description is not None:
                    cur.fetchall()
            out.append(None)
        except psycopg.Error as e:
            out.append(e.sqlstate)
print(json.dumps(out))
"#,
        port = s.port
    );
    let mut child = Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    serde_json::to_writer(child.stdin.take().expect("stdin"), statements).expect("statements");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn writes_in_any_form_and_protocol_are_refused_and_change_nothing() {
    let Some(psql_bin) = require(Tool::Psql) else {
        return;
    };
    let python = require_part(Tool::Python, "the psycopg checks");
    let d = demo();
    let s = serve(&d, &psql_bin, "");
    let marker = format!("sluice-w{}", std::process::id());
    let before = files(d.dir.path());
    let rows = d.one("select count(*) from bronze.touchpoints");
    let attempts = write_attempts(&d.lake(), &marker);

    let mut refused = 0;
    for (user, password) in [("ops", "ops-secret"), ("ana", "ana-secret")] {
        let codes = psql_sqlstates(&s, user, password, &attempts);
        for (st, code) in attempts.iter().zip(&codes) {
            assert!(
                matches!(code.as_deref(), Some("25006" | "42501")),
                "psql as {user}: {st} gave {code:?}"
            );
            refused += 1;
        }
        if let Some(python) = &python {
            let mut extended = attempts.clone();
            extended.push(
                "CURSOR WITH a AS (DELETE FROM bronze.touchpoints RETURNING *) SELECT * FROM a"
                    .to_string(),
            );
            extended.push(format!(
                "CURSOR SELECT * FROM read_csv('/tmp/{marker}-nothing.csv')"
            ));
            let codes = psycopg_sqlstates(python, &s, user, password, &extended);
            for (st, code) in extended.iter().zip(&codes) {
                assert!(
                    matches!(code.as_deref(), Some("25006" | "42501")),
                    "psycopg as {user}: {st} gave {code:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused >= 2 * attempts.len(), "{refused}");
    // A role's writes to tables it may read are refused as writes (25006), not because
    // the table is hidden from it: the read-only rules hold on their own.
    let readable: Vec<String> = [
        "INSERT INTO silver.accounts SELECT * FROM silver.accounts LIMIT 1".to_string(),
        "DELETE FROM silver.accounts".to_string(),
        "UPDATE silver.accounts SET product = 'x'".to_string(),
        "EXPLAIN DELETE FROM silver.accounts".to_string(),
        "PREPARE wa AS DELETE FROM silver.accounts".to_string(),
        "WITH a AS (DELETE FROM silver.accounts RETURNING *) SELECT count(*) FROM a".to_string(),
        "INSERT INTO gold.balances_by_product SELECT * FROM gold.balances_by_product".to_string(),
        "CREATE TABLE gold.scratch AS SELECT * FROM silver.accounts".to_string(),
        "DROP VIEW views.approved_card_spend".to_string(),
        format!("COPY silver.accounts TO '/tmp/{marker}-accounts.csv'"),
        format!("COPY (SELECT * FROM views.approved_card_spend) TO '/tmp/{marker}-view.csv'"),
    ]
    .to_vec();
    let codes = psql_sqlstates(&s, "ana", "ana-secret", &readable);
    for (st, code) in readable.iter().zip(&codes) {
        assert_eq!(code.as_deref(), Some("25006"), "psql as ana: {st}");
    }

    // Nothing was written: not in the server's directory, not in the lake (every table's
    // log and files as they were), not in /tmp.
    assert_eq!(files(d.dir.path()), before);
    assert_eq!(in_tmp(&marker), Vec::<String>::new());
    assert_eq!(d.one("select count(*) from bronze.touchpoints"), rows);

    // Reading still works in all those forms, and the role has no EXPLAIN ANALYZE.
    let out = psql(
        &s,
        "ops",
        "ops-secret",
        "disable",
        &[
            "EXPLAIN ANALYZE SELECT count(*) FROM bronze.touchpoints",
            "WITH a AS (SELECT count(*) AS n FROM bronze.touchpoints) SELECT n FROM a",
            "BEGIN",
            "DECLARE r CURSOR FOR SELECT channel FROM bronze.touchpoints ORDER BY _kafka_offset",
            "FETCH 2 FROM r",
            "CLOSE r",
            "COMMIT",
        ],
    );
    let got = lines(&out);
    assert!(got.iter().any(|l| l.contains("output_rows")), "{got:?}");
    assert!(got.contains(&rows), "{got:?}");
    let out = psql(
        &s,
        "ana",
        "ana-secret",
        "disable",
        &["EXPLAIN ANALYZE SELECT count(*) FROM silver.accounts"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("EXPLAIN ANALYZE is not available to role 'analyst'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(s);

    // A role its configuration cannot apply to the lake (here a denied column naming
    // nothing) stops the start, naming the entry, before anything listens.
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        config.replace(
            "deny_tags = [\"direct_identifier\"]",
            "deny_tags = [\"direct_identifier\"]\ndeny_columns = [\"silver.accounts.sort_cod\"]",
        ),
    )
    .expect("config");
    let mut child = serve_command(&d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    // A server that started would serve until killed: given 60 s to stop by itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started with a denied column naming nothing");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("serve");
    assert!(!out.status.success(), "serve started");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("'silver.accounts.sort_cod' names no column of silver.accounts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a Python script (psycopg) against the server; its standard output as JSON.
fn python_json(python: &Path, script: &str) -> serde_json::Value {
    serde_json::from_str(&python_stdout(python, script)).expect("json")
}

#[test]
fn connections_have_their_own_sessions_limits_and_no_sight_of_hidden_rows() {
    let Some(psql_bin) = require(Tool::Psql) else {
        return;
    };
    let Some(python) = require(Tool::Python) else {
        return;
    };
    let d = demo();
    let s = serve(
        &d,
        &psql_bin,
        "max_connections = 4\nmax_connections_per_user = 3\nstatement_timeout_ms = 4000\nquery_memory_bytes = 16777216\n\
         total_memory_bytes = 33554432\nauth_timeout_ms = 3000\nmax_unauthenticated_per_peer = 8\n\
         max_statement_bytes = 1048576\n",
    );
    let not_isa = d.one("select count(*) from silver.accounts where product <> 'isa'");
    let touchpoints = d.one("select count(*) from bronze.touchpoints");
    let url = format!("host=127.0.0.1 port={} dbname=lake sslmode=disable", s.port);

    // One user's SET, prepared statements and cursors are not another's, though both
    // read as the same role.
    let got = python_json(
        &python,
        &format!(
            r#"
import json, psycopg
url = "{url}"
a = psycopg.connect(url + " user=ana password=ana-secret", autocommit=True)
b = psycopg.connect(url + " user=ann password=ann-secret", autocommit=True)
setting = "select value from information_schema.df_settings where name = 'datafusion.execution.time_zone'"
out = {{}}
out["b_zone_before"] = b.execute(setting).fetchone()[0]
a.execute("SET datafusion.execution.time_zone = '+05:00'")
out["a_zone"] = a.execute(setting).fetchone()[0]
out["b_zone"] = b.execute(setting).fetchone()[0]
a.execute("PREPARE mine AS SELECT 41 + 1")
out["a_execute"] = a.execute("EXECUTE mine").fetchone()[0]
try:
    b.execute("EXECUTE mine")
    out["b_execute"] = "ran"
except psycopg.Error as e:
    out["b_execute"] = "refused"
with a.transaction():
    a.execute("DECLARE c CURSOR FOR SELECT product FROM silver.accounts")
    out["a_fetch"] = len(a.execute("FETCH 3 FROM c").fetchall())
    try:
        with b.transaction():
            b.execute("FETCH 1 FROM c")
        out["b_fetch"] = "ran"
    except psycopg.Error as e:
        out["b_fetch"] = e.sqlstate
a.execute("SET statement_timeout = 1")
out["b_after_a_timeout"] = b.execute("select count(*) from silver.accounts").fetchone()[0]
print(json.dumps(out))
"#
        ),
    );
    assert_eq!(got["a_zone"], "+05:00", "{got}");
    assert_eq!(got["b_zone"], got["b_zone_before"], "{got}");
    assert_eq!(got["a_execute"], 42, "{got}");
    assert_eq!(got["b_execute"], "refused", "{got}");
    assert_eq!(got["a_fetch"], 3, "{got}");
    assert_eq!(got["b_fetch"], "34000", "{got}");
    assert_eq!(got["b_after_a_timeout"].to_string(), not_isa, "{got}");

    // A role's queries never meet a hidden row, and its errors quote no value; through
    // both protocols.
    let only_hidden_fail = "select count(*) from silver.accounts \
        where cast(case when product = 'isa' then 'x' || account_id else '1' end as int) = 1";
    let out = psql(&s, "ana", "ana-secret", "disable", &[only_hidden_fail]);
    assert_eq!(lines(&out), vec![not_isa.clone()]);
    let out = psql(&s, "ops", "ops-secret", "disable", &[only_hidden_fail]);
    assert!(
        !out.status.success(),
        "the role-less user meets the hidden rows"
    );
    let out = psql(
        &s,
        "ana",
        "ana-secret",
        "disable",
        &["select count(*) from silver.customers_history where segment = 'premier'"],
    );
    assert_eq!(lines(&out), vec!["0"]);
    let got = python_json(
        &python,
        &format!(
            r#"
import json, psycopg
out = {{}}
with psycopg.connect("{url} user=ana password=ana-secret", autocommit=True) as c:
    try:
        c.execute("select cast(product as int) from silver.accounts where product <> %s", ("none",))
        out["cast"] = "ran"
    except psycopg.Error as e:
        out["cast"] = [e.sqlstate, str(e)]
    out["hidden"] = c.execute("select sum(1 / (case when product = %s then 0 else 1 end)) from silver.accounts", ("isa",)).fetchone()[0]
print(json.dumps(out))
"#
        ),
    );
    let message = got["cast"][1].as_str().unwrap_or_default();
    assert_eq!(got["cast"][0], "22P02", "{got}");
    for value in ["current", "savings", "credit_card"] {
        assert!(!message.contains(value), "{value} in {message}");
    }
    assert_eq!(got["hidden"].to_string(), not_isa, "{got}");

    // Statements nested deeper than a thread's stack holds (each level of `1+1+…` or of a
    // UNION chain is a frame of every tree walk) are refused from their tokens, through
    // both protocols; they used to overflow the stack and end the server for everyone.
    let deep = vec![
        format!("select 1{}", "+1".repeat(100_000)),
        format!("select 1 as x{}", " union all select 1".repeat(2_000)),
        format!(
            "select count(*) from silver.accounts where {}",
            vec!["product || 'é' = 'x'"; 3_000].join(" or ")
        ),
    ];
    for user in ["ana", "ops"] {
        let codes = psql_sqlstates(&s, user, &format!("{user}-secret"), &deep);
        assert_eq!(codes, vec![Some("54001".to_string()); deep.len()], "{user}");
    }
    let codes = psycopg_sqlstates(&python, &s, "ana", "ana-secret", &deep);
    assert_eq!(codes, vec![Some("54001".to_string()); deep.len()]);
    // Text longer than max_statement_bytes is refused before it is parsed (the same
    // megabyte less a few bytes runs).
    let long = |n: usize| format!("select length('{}') as n", "é".repeat(n / 2));
    let codes = psql_sqlstates(&s, "ana", "ana-secret", &[long(1_100_000), long(1_000_000)]);
    assert_eq!(codes, vec![Some("54000".to_string()), None]);
    // A function whose result outgrows the query's memory (the pool counts operators, not
    // function results) fails before it is made: this one grew the server by 8 GB.
    let grow = vec![
        "select length(arrow_cast(repeat('x', 2000000000), 'LargeUtf8'))".to_string(),
        "select length(lpad(product, 1000000000)) from silver.accounts".to_string(),
        "select cardinality(array_repeat(product, 100000000)) from silver.accounts".to_string(),
        "select count(*) from silver.accounts where length(repeat(product, 100)) > 0".to_string(),
    ];
    for user in ["ana", "ops"] {
        let codes = psql_sqlstates(&s, user, &format!("{user}-secret"), &grow);
        assert_eq!(
            codes,
            vec![
                Some("53200".to_string()),
                Some("53200".to_string()),
                Some("53200".to_string()),
                None
            ],
            "{user}"
        );
    }
    let out = psql(
        &s,
        "ana",
        "ana-secret",
        "disable",
        &["select count(*) from silver.accounts"],
    );
    assert_eq!(lines(&out), vec![not_isa.clone()]);

    // Limits: a memory-hungry query (53200) and a slow one (57014, though its user asked
    // for an hour) are cancelled while another user's query runs; the server lives on.
    let got = python_json(
        &python,
        &format!(
            r#"
import json, threading, time, psycopg
url = "{url}"
out = {{}}
def run(key, user, sql, setup=None):
    started = time.monotonic()
    try:
        with psycopg.connect(url + f" user={{user}} password={{user}}-secret", autocommit=True) as c:
            if setup:
                c.execute(setup)
            out[key] = ["ok", c.execute(sql).fetchone()[0]]
    except psycopg.Error as e:
        out[key] = [e.sqlstate, str(e)]
    out[key].append(time.monotonic() - started)
threads = [
    threading.Thread(target=run, args=("memory", "ana", "select count(*) from (select value % 10000000 as k, count(*) as n from generate_series(1, 40000000) group by 1)")),
    threading.Thread(target=run, args=("slow", "ann", "select sum(value) from generate_series(1, 100000000000)", "SET statement_timeout = '1h'")),
]
for t in threads:
    t.start()
# Another user's query while those two run: a pause, since nothing says when they have
# started (the slow one runs 4 s, so "other" meets it either way).
time.sleep(0.5)
run("other", "ops", "select count(*) from bronze.touchpoints")
for t in threads:
    t.join()
run("after", "ops", "select count(*) from bronze.touchpoints")
print(json.dumps(out))
"#
        ),
    );
    assert_eq!(got["memory"][0], "53200", "{got}");
    assert!(
        got["memory"][1]
            .as_str()
            .unwrap_or_default()
            .contains("query_memory_bytes"),
        "{got}"
    );
    assert_eq!(got["slow"][0], "57014", "{got}");
    let slow = got["slow"][2].as_f64().unwrap_or_default();
    assert!(
        (3.5..30.0).contains(&slow),
        "cancelled after {slow} s: {got}"
    );
    assert_eq!(got["other"][0], "ok", "{got}");
    assert_eq!(got["other"][1].to_string(), touchpoints, "{got}");
    assert_eq!(got["after"][1].to_string(), touchpoints, "{got}");

    // 200 idle sockets take no session: a user still logs in. max_connections counts
    // authenticated sessions: one user's fourth is refused (max_connections_per_user = 3),
    // another user's still logs in, and then a fifth session of anyone's is refused.
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).expect("connect"))
        .collect();
    let out = psql(
        &s,
        "ops",
        "ops-secret",
        "disable",
        &["select count(*) from bronze.touchpoints"],
    );
    assert_eq!(lines(&out), vec![touchpoints.clone()]);
    let got = python_json(
        &python,
        &format!(
            r#"
import json, time, psycopg
def url(user):
    return "{url} user=" + user + " password=" + user + "-secret"
def attempt(user):
    try:
        return psycopg.connect(url(user))
    except psycopg.Error as e:
        return (e.sqlstate or "53300?") + " " + str(e)
held = []
deadline = time.monotonic() + 10
# Sessions of earlier clients end as the server notices they left.
while len(held) < 3 and time.monotonic() < deadline:
    c = attempt("ops")
    if isinstance(c, str):
        time.sleep(0.1)
    else:
        held.append(c)
out = {{"ops_held": len(held)}}
c = attempt("ops")
out["ops_fourth"] = c if isinstance(c, str) else "connected"
# Without the password, nothing tells that the user's sessions are all in use.
try:
    psycopg.connect("{url} user=ops password=wrong").close()
    out["ops_wrong"] = "connected"
except psycopg.Error as e:
    out["ops_wrong"] = (e.sqlstate or "?") + " " + str(e)
c = attempt("ana")
out["ana"] = c if isinstance(c, str) else "connected"
if not isinstance(c, str):
    held.append(c)
c = attempt("ann")
out["ann_fifth"] = c if isinstance(c, str) else "connected"
for c in held:
    c.close()
print(json.dumps(out))
"#
        ),
    );
    assert_eq!(got["ops_held"], 3, "{got}");
    let refused = |key: &str, setting: &str| {
        let g = got[key].as_str().unwrap_or_default();
        assert!(
            g.contains("too many connections") && g.contains(setting),
            "{key}: {got}"
        );
    };
    refused("ops_fourth", "(max_connections_per_user)");
    let wrong = got["ops_wrong"].as_str().unwrap_or_default();
    assert!(
        wrong.to_lowercase().contains("password") && !wrong.contains("too many"),
        "{got}"
    );
    assert_eq!(got["ana"], "connected", "{got}");
    refused("ann_fifth", "(max_connections)");
    // The idle sockets were closed without a word: evicted by newer ones, or at
    // auth_timeout_ms (3 s). Looked at until all are closed, for at most 3.5 s.
    let deadline = Instant::now() + Duration::from_millis(3500);
    let (mut open, mut closed) = (idle, 0);
    loop {
        let mut still_open = Vec::new();
        for socket in open {
            use std::io::Read;
            let mut reader = &socket;
            reader.set_nonblocking(true).expect("nonblocking");
            match reader.read(&mut [0u8; 16]) {
                Ok(0) => closed += 1,
                // It spoke: not closed, and never counted.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still_open.push(socket),
                Err(_) => closed += 1,
            }
        }
        open = still_open;
        if open.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(closed, 200);
}
