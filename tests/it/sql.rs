//! SQL over the demo bank: `sluice job gold` and views (the definitions under `sql/`
//! build tables that agree with the layers they summarise; a re-run gives the same rows,
//! incrementally where declared; the sqllogictest files of `sql/slt` pass; DuckDB's
//! Delta extension gets the same results), and roles (only their tables, columns, rows).

use crate::erase::{Demo, demo};
use crate::harness::{Tool, require};

/// The repository's `sql/` (views, gold definitions, sqllogictest files).
const SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");

/// `sluice sql --format csv --role analyst <q>` over the demo.
fn as_analyst(d: &Demo, q: &str) -> std::process::Output {
    d.sluice(&["sql", "--format", "csv", "--role", "analyst", q])
        .output()
        .expect("sql")
}

/// The rows of a CSV result, header dropped, failing the test when the query failed.
fn csv_rows(out: &std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// `sluice <args>` (the SQL shell) reading `input` from a pipe.
fn shell(d: &Demo, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut shell = d
        .sluice(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("shell");
    shell
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    shell.wait_with_output().expect("shell")
}

/// The demo lake, its config naming the repository's views and gold definitions.
fn demo_with_sql() -> Demo {
    let d = demo();
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        format!("{config}\n[sql]\nviews_dir = \"{SQL}/views\"\ngold_dir = \"{SQL}/gold\"\n"),
    )
    .expect("config");
    d
}

#[test]
fn gold_tables_and_views_agree_with_the_layers_and_rerun_to_the_same_rows() {
    let d = demo_with_sql();
    let sql = SQL;

    let out = d.ok(&["--format", "json", "job", "gold"]);
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = built
        .as_array()
        .expect("built")
        .iter()
        .filter_map(|t| t["table"].as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "gold.balances_by_product",
            "gold.daily_spend_by_segment",
            "gold.rapid_card_use",
            "gold.touchpoint_channel_mix"
        ]
    );

    // The view and the gold tables agree with the layers they read.
    let approved = d.one(
        "select count(*) from bronze.card_transactions t join silver.customers c \
         on t.customer_id = c.customer_id where t.status = 'approved'",
    );
    assert_eq!(
        d.one("select count(*) from views.approved_card_spend"),
        approved
    );
    assert_eq!(
        d.one("select sum(transactions) from gold.daily_spend_by_segment"),
        approved
    );
    assert_eq!(
        d.one("select sum(accounts), sum(balance_gbp) from gold.balances_by_product"),
        d.one("select count(*), cast(sum(balance_gbp) as decimal(16, 2)) from silver.accounts")
    );
    assert_eq!(
        d.one("select sum(touchpoints) from gold.touchpoint_channel_mix"),
        d.one("select count(*) from bronze.touchpoints")
    );
    let share: f64 = d
        .one("select sum(share_pct) from gold.touchpoint_channel_mix")
        .parse()
        .expect("share");
    assert!((share - 100.0).abs() < 0.2, "{share}");
    // Each burst is five or more transactions of its customer in the ten minutes before it.
    assert_eq!(
        d.one(
            "select count(*) from (select g.txn_id, g.transactions_in_10_min as said, \
             count(t.txn_id) as n from gold.rapid_card_use g join bronze.card_transactions t \
             on t.customer_id = g.customer_id \
             and cast(t.event_time as timestamp) between cast(g.burst_at as timestamp) - interval '10 minutes' \
             and cast(g.burst_at as timestamp) \
             group by g.txn_id, g.transactions_in_10_min) where n <> said or n < 5"
        ),
        "0"
    );
    assert!(
        d.one("select count(*) from gold.rapid_card_use")
            .parse::<u64>()
            .expect("n")
            > 0
    );

    // Results as JSON lines, and as a Parquet file.
    let out = d.ok(&[
        "sql",
        "--format",
        "jsonl",
        "select * from gold.balances_by_product",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one object per line"))
        .collect();
    assert_eq!(lines.len(), 4);
    let file = d.dir.path().join("balances.parquet");
    d.ok(&[
        "sql",
        "--format",
        "parquet",
        "--out",
        &file.display().to_string(),
        "select * from gold.balances_by_product",
    ]);
    let reader = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(&file).expect("parquet file"),
    )
    .expect("parquet");
    use parquet::file::reader::FileReader as _;
    assert_eq!(reader.metadata().file_metadata().num_rows(), 4);

    // The shell reads statements from a pipe: meta commands, multi-line statements.
    let out = shell(
        &d,
        &["sql", "--format", "csv"],
        b"\\d\n\\d gold.balances_by_product\nselect count(*) AS n\n  from gold.balances_by_product;\nselect nope;\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gold.balances_by_product,base table"),
        "{stdout}"
    );
    assert!(stdout.contains("average_balance_gbp,"), "{stdout}");
    assert!(stdout.contains("n\n4\n"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the failed statement fails the run"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 statement(s) failed"));

    // A re-run of the incremental daily spend recomputes its last day (the demo's only
    // one) and MERGEs it: same rows, one version more.
    let before = d.one("select count(*), sum(spend_gbp) from gold.daily_spend_by_segment");
    let out = d.ok(&[
        "--format",
        "json",
        "job",
        "gold",
        "--table",
        "gold.daily_spend_by_segment",
    ]);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(again.as_array().expect("built").len(), 1);
    assert_eq!(again[0]["version"], 1);
    assert_eq!(again[0]["mode"], "incremental");
    assert_eq!(again[0]["from_watermark"], "2026-01-02");
    assert_eq!(
        d.one("select count(*), sum(spend_gbp) from gold.daily_spend_by_segment"),
        before
    );

    // A broken definition fails the run and names its file.
    let broken = d.dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::write(broken.join("oops.sql"), "select nope from silver.customers").expect("sql");
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        config.replace(&format!("{sql}/gold"), &broken.display().to_string()),
    )
    .expect("config");
    let out = d.sluice(&["job", "gold"]).output().expect("gold");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("oops.sql"), "{stderr}");
}

const ROLES: &str = r#"
[roles.analyst]
tables = ["silver", "gold", "views"]
deny_tags = ["direct_identifier"]
deny_columns = ["notes"]
[roles.analyst.row_filters]
"silver.accounts" = "product <> 'isa'"
"#;

#[test]
fn a_role_reads_only_its_tables_columns_and_rows() {
    let d = demo();
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{config}\n{ROLES}")).expect("config");

    // Allowed: a column the policy does not tag.
    let segments = csv_rows(&as_analyst(
        &d,
        "select count(distinct segment) from silver.customers",
    ));
    assert_eq!(segments, vec!["4"]);
    // The tagged and named columns are absent, from `*` and from the schema.
    let out = as_analyst(&d, "select * from silver.customers limit 1");
    let header = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(header.contains("segment"), "{header}");
    for hidden in ["email", "customer_id", "phone", "notes", "last_name"] {
        assert!(
            !header.split(',').any(|c| c == hidden),
            "{hidden} in {header}"
        );
    }
    let columns = csv_rows(&as_analyst(
        &d,
        "select column_name from information_schema.columns \
         where table_schema = 'silver' and table_name = 'customers' and column_name = 'email'",
    ));
    assert!(columns.is_empty());
    // Selecting one fails, naming the policy; never a silent null.
    let out = as_analyst(&d, "select email from silver.customers");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("column email of silver.customers is not readable by role 'analyst' (roles.analyst.deny_tags (direct_identifier))"),
        "{stderr}"
    );
    let out = as_analyst(&d, "select notes from silver.customers");
    assert!(String::from_utf8_lossy(&out.stderr).contains("roles.analyst.deny_columns"));
    // A table outside the role's layers.
    let out = as_analyst(&d, "select count(*) from bronze.card_transactions");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("table bronze.card_transactions is not readable by role 'analyst' (roles.analyst.tables)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The row filter: ISAs are not there for the role, and are for everyone else.
    assert_eq!(
        csv_rows(&as_analyst(
            &d,
            "select count(*) from silver.accounts where product = 'isa'"
        )),
        vec!["0"]
    );
    let all = d.one("select count(*) from silver.accounts where product <> 'isa'");
    assert_eq!(
        csv_rows(&as_analyst(&d, "select count(*) from silver.accounts")),
        vec![all]
    );
    assert_ne!(
        d.one("select count(*) from silver.accounts where product = 'isa'"),
        "0"
    );
    // An unknown role is refused.
    let out = d
        .sluice(&["sql", "--role", "nobody", "select 1"])
        .output()
        .expect("sql");
    assert_eq!(out.status.code(), Some(2));
}

/// Analyst queries on the demo bank: filter by time and customer, group by hour and
/// channel, top-N, the customers ↔ accounts ↔ transactions join, and more.
const ANALYST_QUERIES: [&str; 6] = [
    "select txn_id, amount_gbp, merchant, status from bronze.card_transactions \
     where customer_id = (select min(customer_id) from bronze.card_transactions) \
     and event_time >= '2026-01-02T01' and event_time < '2026-01-02T03'",
    "select substr(event_time, 1, 13) as hour, channel, count(*) as n, \
     sum(amount_gbp) as total_gbp from bronze.card_transactions group by 1, 2",
    "select merchant, sum(amount_gbp) as spend_gbp from bronze.card_transactions \
     where status = 'approved' group by merchant order by spend_gbp desc, merchant limit 10",
    "select c.segment, a.product, count(*) as n, sum(t.amount_gbp) as spend_gbp, \
     count(distinct c.customer_id) as customers \
     from bronze.card_transactions t join silver.accounts a on t.account_id = a.account_id \
     join silver.customers c on a.customer_id = c.customer_id group by 1, 2",
    "select channel, action, count(*) as n from bronze.touchpoints \
     where customer_id in (select customer_id from silver.customers where segment = 'student') \
     group by 1, 2",
    "select customer_id, segment, _valid_from, _valid_to, _is_current \
     from silver.customers_history where customer_id < 'tok_pseudo_08'",
];

/// A value as both engines can be compared on: timestamps as UTC microseconds, numbers
/// as f64, the rest as JSON.
fn canonical(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            let at = chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_micros())
                .or_else(|_| {
                    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                        .map(|t| t.and_utc().timestamp_micros())
                });
            match at {
                Ok(us) => Value::from(us),
                Err(_) => v.clone(),
            }
        }
        Value::Number(n) => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (k.clone(), canonical(x))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Rows (objects) as sorted canonical rows; a column missing from an object is null.
fn rows_of(rows: &[serde_json::Value], columns: &[String]) -> Vec<Vec<serde_json::Value>> {
    let mut out: Vec<Vec<serde_json::Value>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| canonical(r.get(c).unwrap_or(&serde_json::Value::Null)))
                .collect()
        })
        .collect();
    let key = |r: &Vec<serde_json::Value>| -> String {
        r.iter()
            .map(|v| match v.as_f64() {
                Some(f) => format!("{f:.6e}"),
                None => v.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\u{1}")
    };
    out.sort_by_key(key);
    out
}

fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            (serde_json::Value::Array(x), serde_json::Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
            }
            _ => a == b,
        },
    }
}

#[test]
fn analyst_queries_and_gold_tables_agree_with_duckdb() {
    let Some(python) = require(Tool::Python) else {
        return;
    };
    let d = demo_with_sql();
    let sql = SQL;
    d.ok(&["job", "gold"]);

    // Each query by both engines; each gold table read by both, and its definition
    // evaluated by DuckDB over the same bronze and silver tables.
    let mut ours: Vec<(String, String)> = ANALYST_QUERIES
        .iter()
        .map(|q| (q.to_string(), q.to_string()))
        .collect();
    ours.push((
        "select * from views.approved_card_spend".into(),
        "select * from views.approved_card_spend".into(),
    ));
    let mut gold: Vec<_> = std::fs::read_dir(format!("{sql}/gold"))
        .expect("gold dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    gold.sort();
    for def in &gold {
        let name = def.file_stem().and_then(|n| n.to_str()).expect("name");
        let table = format!("select * from gold.{name}");
        ours.push((table.clone(), table.clone()));
        ours.push((table, std::fs::read_to_string(def).expect("definition")));
    }
    let theirs_queries: Vec<&str> = ours.iter().map(|(_, t)| t.as_str()).collect();
    let mut child = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/scripts/duckdb_query.py"
        ))
        .arg(d.lake())
        .arg(format!("{sql}/views"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    serde_json::to_writer(
        child.stdin.take().expect("stdin"),
        &serde_json::Value::from(theirs_queries),
    )
    .expect("queries");
    let out = child.wait_with_output().expect("duckdb");
    assert!(out.status.success(), "duckdb failed");
    let theirs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");

    for ((q, their_q), their) in ours.iter().zip(&theirs) {
        let their_rows = their
            .as_array()
            .unwrap_or_else(|| panic!("DuckDB refused {their_q}: {their}"));
        let out = d.ok(&["sql", "--format", "json", q]);
        let our_rows: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("sluice json");
        assert!(!our_rows.is_empty(), "no rows: {q}");
        let columns: Vec<String> = their_rows
            .first()
            .and_then(|r| r.as_object())
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        let (a, b) = (rows_of(&our_rows, &columns), rows_of(their_rows, &columns));
        assert_eq!(a.len(), b.len(), "row counts differ for {their_q}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                x.iter().zip(y).all(|(v, w)| same(v, w)),
                "{their_q}:\n sluice {x:?}\n duckdb {y:?}"
            );
        }
    }
}

/// A sluice SQL session (the lake's tables and the views) as sqllogictest runs it.
struct Session(sluice_sql::Catalog);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Session {
    type Error = sluice_sql::Error;
    type ColumnType = sqllogictest::DefaultColumnType;

    async fn run(
        &mut self,
        sql: &str,
    ) -> Result<sqllogictest::DBOutput<Self::ColumnType>, Self::Error> {
        use arrow::datatypes::DataType as D;
        use arrow::util::display::{ArrayFormatter, FormatOptions};
        use futures::TryStreamExt;
        use sqllogictest::DefaultColumnType as C;
        let stream = self.0.stream(sql).await?;
        let types = stream
            .schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => C::Integer,
                D::Float16 | D::Float32 | D::Float64 | D::Decimal128(..) | D::Decimal256(..) => {
                    C::FloatingPoint
                }
                _ => C::Text,
            })
            .collect();
        let batches: Vec<arrow::array::RecordBatch> = stream.try_collect().await?;
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for b in &batches {
            let formatters = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(deltalake::datafusion::error::DataFusionError::from)?;
            for i in 0..b.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| match f.value(i).to_string() {
                            s if s.is_empty() => "(empty)".to_string(),
                            s => s,
                        })
                        .collect(),
                );
            }
        }
        Ok(sqllogictest::DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}
}

#[test]
fn views_and_gold_tables_pass_their_sqllogictest_files() {
    let d = demo_with_sql();
    let sql = SQL;
    d.ok(&["job", "gold"]);

    let mut files: Vec<_> = std::fs::read_dir(format!("{sql}/slt"))
        .expect("slt dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for file in files {
        let lake = d.lake();
        let views = std::path::PathBuf::from(format!("{sql}/views"));
        let mut runner = sqllogictest::Runner::new(move || {
            let (lake, views) = (lake.clone(), views.clone());
            async move {
                let mut catalog = sluice_sql::Catalog::open(&lake).await?;
                catalog.register_views(&views).await?;
                Ok(Session(catalog))
            }
        });
        runner.with_column_validator(sqllogictest::strict_column_validator);
        runtime
            .block_on(runner.run_file_async(&file))
            .unwrap_or_else(|e| panic!("{}: {}", file.display(), e.display(true)));
    }
}

#[test]
fn sql_sessions_write_nothing_with_or_without_a_role() {
    let d = demo();
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{config}\n{ROLES}")).expect("config");
    let marker = format!("sluice-cli{}", std::process::id());
    let lake = d.lake();
    let commit = lake.join("bronze/touchpoints/_delta_log/00000000000000000999.json");
    let attempts = [
        "INSERT INTO bronze.touchpoints SELECT * FROM bronze.touchpoints LIMIT 1".to_string(),
        "EXPLAIN ANALYZE INSERT INTO bronze.touchpoints SELECT * FROM bronze.touchpoints LIMIT 1"
            .to_string(),
        "DELETE FROM bronze.touchpoints".to_string(),
        "UPDATE bronze.touchpoints SET channel = 'x'".to_string(),
        format!("COPY (SELECT 1 AS x) TO '{marker}.csv'"),
        format!("EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '/tmp/{marker}.csv'"),
        format!(
            "COPY (SELECT 'x' AS line) TO '{}' STORED AS CSV",
            commit.display()
        ),
        format!(
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{}'",
            lake.join("bronze/touchpoints/_delta_log").display()
        ),
        "CREATE VIEW views.scratch AS SELECT 1 AS x".to_string(),
        "CREATE TABLE scratch AS SELECT 1 AS x".to_string(),
        "DROP TABLE bronze.touchpoints".to_string(),
        format!("SET datafusion.runtime.temp_directory = '/tmp/{marker}'"),
        "PREPARE p AS INSERT INTO bronze.touchpoints SELECT * FROM bronze.touchpoints LIMIT 1"
            .to_string(),
        "SELECT * FROM read_csv('/etc/passwd')".to_string(),
    ];
    let before = d.one("select count(*) from bronze.touchpoints");
    let files = |dir: &std::path::Path| {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(p) = todo.pop() {
            for e in std::fs::read_dir(&p).expect("dir").flatten() {
                if e.path().is_dir() {
                    todo.push(e.path());
                } else {
                    out.push((e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)));
                }
            }
        }
        out.sort();
        out
    };
    let tree = files(d.dir.path());
    for role in [None, Some("analyst")] {
        for q in &attempts {
            let mut args = vec!["sql"];
            if let Some(r) = role {
                args.extend(["--role", r]);
            }
            args.push(q);
            let out = d.sluice(&args).output().expect("sql");
            assert!(!out.status.success(), "{role:?}: {q} ran");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("read-only")
                    || stderr.contains("not readable by role")
                    || stderr.contains("cannot be changed")
                    || stderr.contains("is not available"),
                "{role:?}: {q}: {stderr}"
            );
        }
        // Writes to tables the role may read are refused as writes, not as tables it
        // cannot see: the read-only rules hold on their own.
        for q in [
            "INSERT INTO silver.accounts SELECT * FROM silver.accounts LIMIT 1",
            "DELETE FROM silver.accounts",
            "EXPLAIN DELETE FROM silver.accounts",
            "INSERT INTO gold.balances_by_product SELECT * FROM gold.balances_by_product",
            "DROP VIEW views.approved_card_spend",
        ] {
            let mut args = vec!["sql"];
            if let Some(r) = role {
                args.extend(["--role", r]);
            }
            args.push(q);
            let out = d.sluice(&args).output().expect("sql");
            assert!(!out.status.success(), "{role:?}: {q} ran");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("not readable by role")
                    && (stderr.contains("read-only") || stderr.contains("cannot be changed")),
                "{role:?}: {q}: {stderr}"
            );
        }
        // The shell: PREPARE of a write is refused, so EXECUTE finds nothing to run.
        let mut args = vec!["sql", "--format", "csv"];
        if let Some(r) = role {
            args.extend(["--role", r]);
        }
        let out = shell(
            &d,
            &args,
            b"PREPARE w AS INSERT INTO bronze.touchpoints SELECT * FROM bronze.touchpoints LIMIT 1;\nEXECUTE w;\nPREPARE r(INT) AS SELECT $1 + 1 AS n;\nEXECUTE r(41);\n",
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("n\n42\n"));
        assert!(String::from_utf8_lossy(&out.stderr).contains("2 statement(s) failed"));
    }
    // A statement nested deeper than the stack holds is refused, not a crash.
    // 50,000 levels (an argument holds at most 128 KiB).
    let deep = format!("select 1{}", "+1".repeat(50_000));
    for role in [None, Some("analyst")] {
        let mut args = vec!["sql"];
        if let Some(r) = role {
            args.extend(["--role", r]);
        }
        args.push(&deep);
        let out = d.sluice(&args).output().expect("sql");
        // Refused as any failing query is (2 without a role, as a usage error), never an
        // abort by a signal.
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{role:?}: {out:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("nests too deeply"), "{role:?}: {stderr}");
    }
    assert_eq!(files(d.dir.path()), tree);
    assert_eq!(d.one("select count(*) from bronze.touchpoints"), before);
    let leftovers: Vec<_> = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&marker))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_role_sees_no_hidden_row_not_in_errors_plans_histories_or_gold_tables() {
    let d = demo_with_sql();
    // Gold definitions of our own (one will change after the build).
    let gold = d.dir.path().join("gold");
    std::fs::create_dir_all(&gold).expect("gold dir");
    for e in std::fs::read_dir(format!("{SQL}/gold"))
        .expect("gold")
        .flatten()
    {
        std::fs::copy(e.path(), gold.join(e.file_name())).expect("copy");
    }
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let config = config.replace(&format!("{SQL}/gold"), &gold.display().to_string());
    // Views of our own beside the repository's: one over filtered rows, one reading a
    // denied column, one reading a denied column under another name.
    let views = d.dir.path().join("views");
    std::fs::create_dir_all(&views).expect("views dir");
    std::fs::copy(
        format!("{SQL}/views/approved_card_spend.sql"),
        views.join("approved_card_spend.sql"),
    )
    .expect("copy");
    for (name, sql) in [
        (
            "segments",
            "select segment, count(*) as n from silver.customers group by segment",
        ),
        ("mails", "select email from silver.customers"),
        (
            "renamed",
            "select upper(c.email) as shout, c.segment from silver.customers c",
        ),
    ] {
        std::fs::write(views.join(format!("{name}.sql")), sql).expect("view");
    }
    let config = config.replace(&format!("{SQL}/views"), &views.display().to_string());
    let roles = r#"
[roles.analyst]
tables = ["silver", "gold", "views"]
deny_tags = ["direct_identifier"]
allow_derived = ["gold.balances_by_product"]
[roles.analyst.row_filters]
"silver.accounts" = "product <> 'isa'"
"silver.customers" = "segment <> 'premier'"
"#;
    std::fs::write(&path, format!("{config}\n{roles}")).expect("config");
    d.ok(&["job", "gold"]);
    let not_isa = d.one("select count(*) from silver.accounts where product <> 'isa'");

    // Expressions that fail on a hidden row only: the role's query never meets one.
    for (q, expected) in [
        (
            "select count(*) from silver.accounts \
             where cast(case when product = 'isa' then 'x' || account_id else '1' end as int) = 1",
            not_isa.clone(),
        ),
        (
            "select sum(1 / (case when product = 'isa' then 0 else 1 end)) from silver.accounts",
            not_isa.clone(),
        ),
        (
            "select count(*) from silver.accounts a join silver.accounts b on a.account_id = b.account_id \
             where cast(case when b.product = 'isa' then b.account_id else '0' end as int) = 0",
            not_isa.clone(),
        ),
        (
            "select max(k) from (select cast(case when product = 'isa' then 'x' else '1' end as int) \
             as k from silver.accounts)",
            "1".to_string(),
        ),
    ] {
        assert_eq!(csv_rows(&as_analyst(&d, q)), vec![expected], "{q}");
        // Everyone else does meet them.
        let out = d.sluice(&["sql", q]).output().expect("sql");
        assert!(!out.status.success(), "{q} ran over every row");
    }
    // An error on a visible row says what failed, never the value.
    let out = as_analyst(&d, "select cast(product as int) from silver.accounts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("could not be cast"), "{stderr}");
    for value in ["current", "savings", "credit_card", "isa"] {
        assert!(!stderr.contains(value), "{value} in {stderr}");
    }
    let out = d
        .sluice(&["sql", "select cast(product as int) from silver.accounts"])
        .output()
        .expect("sql");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Cannot cast string"),
        "the role-less user gets the engine's message"
    );
    // Plans: EXPLAIN shows neither the filter nor the scan under it; no EXPLAIN ANALYZE.
    let out = as_analyst(
        &d,
        "explain select * from silver.accounts where balance_gbp > 0",
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("RestrictedScan: silver.accounts"), "{plan}");
    assert!(
        !plan.contains("isa") && !plan.contains("_delta_log"),
        "{plan}"
    );
    let out = as_analyst(&d, "explain analyze select count(*) from silver.accounts");
    assert!(String::from_utf8_lossy(&out.stderr).contains("EXPLAIN ANALYZE is not available"));

    // A view reads through the role's filters; a view reading what the role may not is
    // not readable, and says why, whatever its definition renames.
    assert_ne!(
        d.one("select count(*) from views.segments where segment = 'premier'"),
        "0"
    );
    assert_eq!(
        csv_rows(&as_analyst(
            &d,
            "select count(*) from views.segments where segment = 'premier'"
        )),
        vec!["0"]
    );
    assert_eq!(
        csv_rows(&as_analyst(&d, "select sum(n) from views.segments")),
        vec![d.one("select count(*) from silver.customers where segment <> 'premier'")]
    );
    for (view, why) in [
        ("mails", "column email of silver.customers"),
        ("renamed", "column email of silver.customers"),
        (
            "approved_card_spend",
            "table bronze.card_transactions is not readable",
        ),
    ] {
        assert_ne!(d.one(&format!("select count(*) from views.{view}")), "0");
        let out = as_analyst(&d, &format!("select * from views.{view}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{view} was readable");
        assert!(
            stderr.contains(&format!(
                "table views.{view} is not readable by role 'analyst'"
            )) && stderr.contains(why),
            "{view}: {stderr}"
        );
    }

    // The history has its table's filter.
    assert_ne!(
        d.one("select count(*) from silver.customers_history where segment = 'premier'"),
        "0"
    );
    assert_eq!(
        csv_rows(&as_analyst(
            &d,
            "select count(*) from silver.customers_history where segment = 'premier'"
        )),
        vec!["0"]
    );
    assert_eq!(
        csv_rows(&as_analyst(
            &d,
            "select count(*) from silver.customers_history"
        )),
        vec![d.one("select count(*) from silver.customers_history where segment <> 'premier'")]
    );
    // A gold table computed from filtered rows is not readable (its definition reads
    // silver.customers through a view); one the role allows is, without the columns
    // computed from denied ones.
    let out = as_analyst(&d, "select count(*) from gold.daily_spend_by_segment");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("table gold.daily_spend_by_segment is not readable by role 'analyst'")
            && stderr.contains("silver.customers")
            && stderr.contains("row_filters"),
        "{stderr}"
    );
    assert_eq!(
        csv_rows(&as_analyst(
            &d,
            "select sum(accounts) from gold.balances_by_product"
        )),
        vec![d.one("select count(*) from silver.accounts")]
    );
    let out = as_analyst(&d, "select customers from gold.balances_by_product");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("computed from silver.accounts.customer_id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        csv_rows(&as_analyst(
            &d,
            "select sum(touchpoints) from gold.touchpoint_channel_mix"
        )),
        vec![d.one("select count(*) from bronze.touchpoints")]
    );
    let out = as_analyst(&d, "select customers from gold.touchpoint_channel_mix");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("column customers of gold.touchpoint_channel_mix is not readable")
            && stderr.contains("bronze.touchpoints.customer_id"),
        "{stderr}"
    );
    let out = as_analyst(&d, "select customer_id from gold.rapid_card_use");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deny_tags (direct_identifier)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !csv_rows(&as_analyst(
            &d,
            "select count(txn_id) from gold.rapid_card_use"
        ))
        .is_empty()
    );
    // A definition changed since the build: what the table holds is unknown, so it is not
    // readable until rebuilt.
    let changed = gold.join("rapid_card_use.sql");
    let text = std::fs::read_to_string(&changed).expect("definition");
    std::fs::write(&changed, format!("{text}\n-- changed\n")).expect("definition");
    let out = as_analyst(&d, "select count(*) from gold.rapid_card_use");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("changed since it was built"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A denied column path naming nothing is refused, not ignored: a misspelt column, a
    // misspelt table, a field of a column that has none, a bare name no table has.
    let config = std::fs::read_to_string(&path).expect("config");
    for (bad, why) in [
        (
            "silver.accounts.sort_cod",
            "names no column of silver.accounts",
        ),
        (
            "silver.acounts.sort_code",
            "names silver.acounts, a table the lake does not hold",
        ),
        (
            "silver.accounts.sort_code.digits",
            "names no field of column sort_code of silver.accounts",
        ),
        ("sort_cod", "names no column of any table of the lake"),
    ] {
        std::fs::write(
            &path,
            config.replace(
                "deny_tags = [\"direct_identifier\"]",
                &format!("deny_tags = [\"direct_identifier\"]\ndeny_columns = [\"{bad}\"]"),
            ),
        )
        .expect("config");
        let out = as_analyst(&d, "select 1");
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("'{bad}' {why}")),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A bare name some table has is accepted.
    std::fs::write(
        &path,
        config.replace(
            "deny_tags = [\"direct_identifier\"]",
            "deny_tags = [\"direct_identifier\"]\ndeny_columns = [\"sort_code\"]",
        ),
    )
    .expect("config");
    let out = as_analyst(&d, "select 1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
