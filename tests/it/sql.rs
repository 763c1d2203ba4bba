//! SQL over the demo bank: `sluice job gold` and views (the definitions under `sql/`
//! build tables that agree with the layers they summarise; a re-run replaces them
//! whole), and roles (only their tables, columns and rows).

use crate::erase::demo;

#[test]
fn gold_tables_and_views_agree_with_the_layers_and_rebuild_whole() {
    let d = demo();
    let sql = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    let path = d.dir.path().join("demo.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        format!("{config}\n[sql]\nviews_dir = \"{sql}/views\"\ngold_dir = \"{sql}/gold\"\n"),
    )
    .expect("config");

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
    let mut shell = d
        .sluice(&["sql", "--format", "csv"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("shell");
    {
        use std::io::Write as _;
        let mut stdin = shell.stdin.take().expect("stdin");
        stdin
            .write_all(
                b"\\d\n\\d gold.balances_by_product\nselect count(*) AS n\n  from gold.balances_by_product;\nselect nope;\n",
            )
            .expect("write");
    }
    let out = shell.wait_with_output().expect("shell");
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

    // A re-run replaces each table whole: same rows, one version more.
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
    assert_eq!(
        d.one("select count(*), sum(spend_gbp) from gold.daily_spend_by_segment"),
        before
    );

    // A broken definition fails the run and names its file.
    let broken = d.dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::write(broken.join("oops.sql"), "select nope from silver.customers").expect("sql");
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
    let as_analyst = |q: &str| {
        d.sluice(&["sql", "--format", "csv", "--role", "analyst", q])
            .output()
            .expect("sql")
    };
    let rows = |out: &std::process::Output| -> Vec<String> {
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
    };

    // Allowed: a column the policy does not tag.
    let segments = rows(&as_analyst(
        "select count(distinct segment) from silver.customers",
    ));
    assert_eq!(segments, vec!["4"]);
    // The tagged and named columns are absent, from `*` and from the schema.
    let out = as_analyst("select * from silver.customers limit 1");
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
    let columns = rows(&as_analyst(
        "select column_name from information_schema.columns \
         where table_schema = 'silver' and table_name = 'customers' and column_name = 'email'",
    ));
    assert!(columns.is_empty());
    // Selecting one fails, naming the policy; never a silent null.
    let out = as_analyst("select email from silver.customers");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("column email of silver.customers is not readable by role 'analyst' (roles.analyst.deny_tags (direct_identifier))"),
        "{stderr}"
    );
    let out = as_analyst("select notes from silver.customers");
    assert!(String::from_utf8_lossy(&out.stderr).contains("roles.analyst.deny_columns"));
    // A table outside the role's layers.
    let out = as_analyst("select count(*) from bronze.card_transactions");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("table bronze.card_transactions is not readable by role 'analyst' (roles.analyst.tables)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The row filter: ISAs are not there for the role, and are for everyone else.
    assert_eq!(
        rows(&as_analyst(
            "select count(*) from silver.accounts where product = 'isa'"
        )),
        vec!["0"]
    );
    let all = d.one("select count(*) from silver.accounts where product <> 'isa'");
    assert_eq!(
        rows(&as_analyst("select count(*) from silver.accounts")),
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
