//! `sluice serve` with real Postgres clients: Debian's `psql` (simple protocol, SQL
//! `PREPARE`/`EXECUTE`, SCRAM, TLS) and psycopg (extended protocol: bound parameters, a
//! named prepared statement, binary results) against the demo bank, as an unrestricted
//! user and as a role.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use crate::erase::{Demo, demo};
use crate::harness::KillOnDrop;

const USERS_MARK: &str = "\n# serve test\n";
const USERS: &str = r#"
[roles.analyst]
tables = ["silver", "gold", "views"]
deny_tags = ["direct_identifier"]
[roles.analyst.row_filters]
"silver.accounts" = "product <> 'isa'"

[serve]
tls_cert = "tls/server.crt"
tls_key = "tls/server.key"
{serve}
[serve.users.ops]
password_env = "SLUICE_TEST_PASSWORD_OPS"
[serve.users.ana]
role = "analyst"
password_env = "SLUICE_TEST_PASSWORD_ANA"
"#;

struct Server {
    _child: KillOnDrop,
    port: u16,
}

/// `sluice serve` on a free port, with the two users' passwords in its environment;
/// `extra` goes into `[serve]`.
fn serve(d: &Demo, extra: &str) -> Server {
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
    let mut child = d
        .sluice(&["serve", "--address", "127.0.0.1:0"])
        .env("SLUICE_TEST_PASSWORD_OPS", "ops-secret")
        .env("SLUICE_TEST_PASSWORD_ANA", "ana-secret")
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
    }
}

/// Debian's psql; outside CI the test skips without it.
fn psql_binary() -> Option<String> {
    match which("psql") {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("psql not found: scripts/setup.sh --test installs postgresql-client")
        }
        None => {
            eprintln!("SKIPPED: psql not found (apt-get install postgresql-client)");
            None
        }
    }
}

fn which(name: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    })
}

/// `psql` as `user` with `password`; `sslmode` as given; statements from `-c`.
fn psql(s: &Server, user: &str, password: &str, sslmode: &str, commands: &[&str]) -> Output {
    let mut c = Command::new(psql_binary().expect("checked at the start"));
    c.arg(format!(
        "host=127.0.0.1 port={} user={user} dbname=lake sslmode={sslmode} connect_timeout=10",
        s.port
    ))
    .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    for cmd in commands {
        c.args(["-c", cmd]);
    }
    c.env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .output()
        .expect("run psql")
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
    if psql_binary().is_none() {
        return;
    }
    let d = demo();
    let s = serve(&d, "");
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

    // SQL-level prepared statement (simple protocol).
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
    assert_eq!(lines(&out), vec![isa.clone()]);

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
    if let Some(python) = crate::duckdb::python() {
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
        let out = Command::new(python)
            .args(["-c", &script])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let with_segment = d.one("select count(*) from silver.customers where segment is not null");
        assert_eq!(got, vec![isa.clone(), isa, with_segment, not_isa]);
    }

    // Required TLS: a plain connection is refused before authentication.
    drop(s);
    let s = serve(&d, "require_tls = true");
    let out = psql(&s, "ops", "ops-secret", "disable", &["select 1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");
    let out = psql(&s, "ops", "ops-secret", "require", &["select 1"]);
    assert_eq!(lines(&out), vec!["1"]);
}
