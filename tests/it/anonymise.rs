//! `sluice job anonymise` on the demo bank: aged identifiers nulled and quasi-identifiers
//! generalised in place, everything else untouched, the identifiable versions gone, a
//! second run a no-op; k-anonymity lets one table out and refuses another.

use crate::erase::demo;

const POLICY: &str = r#"
[anonymise.tables."bronze.customers"]
after_days = 0
[anonymise.tables."bronze.customers".columns]
"after.email" = { action = "drop" }
"after.phone" = { action = "drop" }
"after.address.line1" = { action = "mask", literal = "" }

[anonymise.tables."silver.customers"]
after_days = 0
age_column = "_cdc_source_ts"
[anonymise.tables."silver.customers".columns]
email = { action = "drop" }
"address.postcode" = { action = "mask_partial", keep_last = 1 }

[anonymise.publish."silver.customers"]
quasi_identifiers = ["segment"]
k = 5
to = "public/segments.parquet"

[anonymise.publish."silver.accounts"]
quasi_identifiers = ["customer_id"]
k = 2
to = "public/accounts.parquet"
"#;

fn report(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).expect("json report")
}

#[test]
fn aged_rows_are_anonymised_in_place_and_k_anonymity_gates_publishing() {
    let d = demo();
    // The demo's own [anonymise] example gives way to this test's policy.
    let path = d.dir.path().join("demo.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path)
        .expect("config")
        .parse()
        .expect("toml");
    config.remove("anonymise");
    std::fs::write(&path, format!("{config}\n{POLICY}")).expect("policy");
    let one = |q: &str| d.one(q);
    let kept = "select count(*), count(distinct after.customer_id), count(after.segment), count(after.email) > 0 from bronze.customers";
    let before = one(kept);
    assert!(before.ends_with(",true"), "{before}");
    let silver = "select count(*), count(distinct customer_id), sum(case when segment = 'student' then 1 else 0 end) from silver.customers";
    let silver_before = one(silver);

    let out = d
        .sluice(&["--format", "json", "job", "anonymise"])
        .output()
        .expect("anonymise");
    // silver.accounts has customers with a single account: refused, exit 1.
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to publish silver.accounts: smallest group 1 < k = 2"),
        "{stderr}"
    );
    let r = report(&out.stdout);
    let bronze = &r["tables"][0];
    assert_eq!(bronze["table"], "bronze.customers");
    assert!(
        bronze["rows_anonymised"].as_u64().unwrap_or(0) > 2_000,
        "{bronze}"
    );
    // Every file holding aged rows was rewritten and its old copy purged; the update
    // may write the rows of several old files into one new file, so the counts differ.
    assert!(
        bronze["files_rewritten"].as_u64().unwrap_or(0) >= 1,
        "{bronze}"
    );
    assert!(
        bronze["files_purged"].as_u64().unwrap_or(0) >= 1,
        "{bronze}"
    );
    assert!(bronze["logs_purged"].as_u64().unwrap_or(0) >= 1, "{bronze}");

    // Identifiers gone, the rest as it was.
    assert_eq!(
        one(
            "select count(after.email), count(after.phone), max(length(after.address.line1)) from bronze.customers"
        ),
        "0,0,0"
    );
    assert_eq!(one(kept), before.replace(",true", ",false"));
    assert_eq!(one("select count(email) from silver.customers"), "0");
    assert_eq!(one(silver), silver_before);
    assert_eq!(
        one("select count(*) from silver.customers where address.postcode not like '*%'"),
        "0"
    );

    // The version before anonymisation no longer opens: its log was purged.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = url::Url::from_directory_path(d.lake().join("bronze/customers")).expect("url");
    let old = rt.block_on(deltalake::open_table_with_version(
        url,
        bronze["version_before"].as_u64().expect("version"),
    ));
    assert!(old.is_err(), "the identifiable version must be gone");

    // Published: the table that passes, whole; the refused one is not written.
    let published = d.dir.path().join("public/segments.parquet");
    let file = std::fs::File::open(&published).expect("published file");
    let rows = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(file).expect("parquet"),
    )
    .file_metadata()
    .num_rows();
    assert_eq!(
        rows.to_string(),
        silver_before.split(',').next().unwrap_or_default()
    );
    assert!(!d.dir.path().join("public/accounts.parquet").exists());
    let segments = r["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .find(|p| p["table"] == "silver.customers")
        .expect("silver.customers");
    assert!(
        segments["smallest_group"].as_u64().unwrap_or(0) >= 5,
        "{segments}"
    );

    // A second run over the tables finds nothing left to do and commits nothing.
    let out = d.ok(&[
        "--format",
        "json",
        "job",
        "anonymise",
        "--table",
        "bronze.customers",
        "--table",
        "silver.customers",
    ]);
    let again = report(&out.stdout);
    for t in again["tables"].as_array().expect("tables") {
        assert_eq!(t["rows_anonymised"], 0, "{t}");
        assert_eq!(t["version_after"], t["version_before"], "{t}");
    }
    let out = d.ok(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain intact"));
}
