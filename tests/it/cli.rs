//! The command line as a user meets it: config validation, exit codes, the demo.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env("SLUICE_LOG", "warn,buoyant_kernel=off");
    c
}

/// `sluice demo <args>` run in `dir`, failing the test unless it succeeds; its stdout.
fn demo_in(dir: &Path, args: &[&OsStr]) -> String {
    let out = sluice()
        .arg("demo")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn validate_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[kafka]\nbootstrap_servers = \"\"\ncolour = \"blue\"\n[bronze]\nflush_max_rows = 0\nflush_latency_ms = 10\n[bronze.routes]\nnot-a-topic = \"x\"\n",
    )
    .expect("write");
    let out = sluice()
        .arg("validate-config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "kafka.colour: unknown key",
        "bronze.flush_latency_ms: unknown key",
        "kafka.bootstrap_servers: missing",
        "kafka.topics: missing",
        "bronze.flush_max_rows: must be greater than 0",
        "bronze.routes.not-a-topic: routes a topic that kafka.topics does not list",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn validate_config_accepts_the_demo_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sluice()
        .args(["demo", "--print-config"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, &out.stdout).expect("write");
    let validate = || {
        sluice()
            .arg("validate-config")
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .expect("run")
    };
    // The policy's key files do not exist yet: validation says which one is missing.
    let out = validate();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sluice-demo-keys/pseudonym.key"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let keys = dir.path().join("sluice-demo-keys");
    std::fs::create_dir(&keys).expect("mkdir");
    for k in ["pseudonym", "salt", "vault", "shred"] {
        std::fs::write(keys.join(format!("{k}.key")), "0123456789abcdef0123").expect("key");
    }
    let out = validate();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn run_without_a_config_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sluice()
        .arg("run")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no configuration"));
}

#[test]
fn an_unknown_lake_scheme_is_refused_and_no_directory_is_made_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sluice()
        .args(["--lake", "ftp://bank/lake", "sql", "select 1"])
        .current_dir(dir.path())
        .output()
        .expect("sql");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'ftp://' is not a supported lake location"),
        "{stderr}"
    );
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[pipeline]\nlake = \"hdfs://namenode/l\"\n\
         [kafka]\nbootstrap_servers = \"localhost:9092\"\ntopics = [\"t\"]\n",
    )
    .expect("config");
    let out = sluice()
        .args(["sql", "select 1"])
        .current_dir(dir.path())
        .output()
        .expect("sql");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pipeline.lake"));
    let made: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert_eq!(made.len(), 1, "only the config: {made:?}");
}

#[test]
fn demo_is_idempotent_and_ends_with_a_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let run = || demo_in(dir.path(), &["--lake".as_ref(), lake.as_os_str()]);
    let first = run();
    for line in [
        "bronze.card_transactions            40000 rows",
        "bronze.customers                     2463 rows",
        "silver.customers                     2060 rows",
        "silver.accounts                      2894 rows",
        "bronze.touchpoints                  15000 rows",
        "sluice.dead_letters                     4 rows",
        "| segment  | transactions | spend_gbp  |",
    ] {
        assert!(first.contains(line), "missing {line:?} in:\n{first}");
    }
    // The demo's policy protected what landed, with keys it created on first use.
    assert!(dir.path().join("sluice-demo-keys/vault.key").exists());
    let sql = |q: &str| -> Vec<String> {
        let out = sluice()
            .args(["sql", "--format", "csv", "--lake"])
            .arg(&lake)
            .arg(q)
            .output()
            .expect("sql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().skip(1).map(str::to_string).collect()
    };
    let row = sql("select after.customer_id, after.last_name, after.notes from bronze.customers where op = 'r' order by _kafka_offset limit 1").join("\n");
    assert!(
        row.contains("tok_pseudo_") && row.contains(",***,") && row.contains("[PHONE]"),
        "{row}"
    );
    // Silver holds exactly the final state of the generated source tables, one row per key.
    let (_, source) = sluice_connectors::demo::bank::generate_with_tables(
        sluice_connectors::demo::bank::Scale::default(),
    );
    let accounts =
        sql("select account_id, product, opened_at from silver.accounts order by account_id");
    let expected: Vec<String> = source
        .accounts
        .iter()
        .map(|(id, r)| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            format!("{id},{},{}", s("product"), s("opened_at"))
        })
        .collect();
    assert_eq!(accounts, expected);
    // Customer ids are tokenised in silver: compare the rows by their other columns.
    let customers = sql(
        "select created_at, segment, marketing_opt_in, count(distinct customer_id) from silver.customers \
         group by created_at, segment, marketing_opt_in order by created_at, segment",
    );
    let mut expected: Vec<String> = source
        .customers
        .values()
        .map(|r| {
            format!(
                "{},{},{},1",
                r["created_at"].as_str().unwrap_or_default(),
                r["segment"].as_str().unwrap_or_default(),
                r["marketing_opt_in"]
            )
        })
        .collect();
    expected.sort();
    assert_eq!(customers, expected);
    assert_eq!(
        sql("select count(*) = count(distinct customer_id) from silver.customers"),
        vec!["true".to_string()]
    );
    let second = run();
    assert_eq!(first, second, "a second demo run must add nothing");
}

/// The commands the README gives after the demo, as written: `sluice` on the PATH (as
/// scripts/demo.sh leaves it), from the directory the demo ran in.
#[test]
fn the_readme_commands_after_the_demo_run_as_written() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let block = readme
        .split_once("look at what landed:")
        .and_then(|(_, after)| after.split_once("```sh\n"))
        .and_then(|(_, block)| block.split_once("```"))
        .expect("the README's commands after the demo")
        .0;
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        commands.len() >= 3 && commands.iter().all(|c| c.starts_with("sluice ")),
        "{commands:?}"
    );
    // The name the script puts on the PATH is the one the README uses.
    let script = std::fs::read_to_string(format!("{root}/scripts/demo.sh")).expect("demo.sh");
    assert!(
        script.contains("link=\"$bin_dir/sluice\""),
        "demo.sh links no `sluice`"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    let clone = dir.path().join("clone");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&clone).expect("clone");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), bin.join("sluice")).expect("link");
    demo_in(&clone, &[]);
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    for command in commands {
        let out = Command::new("bash")
            .args(["-c", &format!("set -o pipefail; {command}")])
            .current_dir(&clone)
            .env("PATH", &path)
            .env("SLUICE_LOG", "warn,buoyant_kernel=off")
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Each prints what it promises, or writes the file it is redirected to.
        if !command.contains(" > ") {
            assert!(!out.stdout.is_empty(), "{command} printed nothing");
        }
        // Card numbers come back as the generator made them: Luhn-valid digits.
        if command.contains("reveal") && command.contains("--column card_number") {
            let cards = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                cards.lines().count() >= 1
                    && cards.lines().all(|c| {
                        let digits: Option<Vec<u32>> = c.chars().map(|d| d.to_digit(10)).collect();
                        digits
                            .is_some_and(|d| d.len() >= 12 && sluice_transforms::luhn::is_valid(&d))
                    }),
                "{command}: {cards}"
            );
        }
    }
    assert!(clone.join("demo.toml").exists());
}

#[test]
fn kafka_secrets_come_from_the_environment_and_logs_can_be_json() {
    use crate::harness::{Broker, Mock, Workdir, produce};
    let broker = Mock::start();
    broker.create_topic("secrets", 1);
    produce(&broker, "secrets", 0, 10);
    let w = Workdir::new();
    // librdkafka accepts any `sasl.password` without SASL: enough to see it is passed on.
    w.write_config(
        &broker,
        "secrets",
        &["secrets"],
        "[kafka.secret_properties]\n\"sasl.password\" = \"SLUICE_TEST_SASL_PASSWORD\"\n",
    );
    let out = w
        .sluice(&["run", "--until-caught-up"])
        .env_remove("SLUICE_TEST_SASL_PASSWORD")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("kafka.secret_properties.\"sasl.password\": environment variable SLUICE_TEST_SASL_PASSWORD is not set"),
        "{err}"
    );
    let out = w
        .sluice(&["run", "--until-caught-up", "--log-format", "json"])
        .env("SLUICE_TEST_SASL_PASSWORD", "not-a-real-password")
        .env("SLUICE_LOG", "info,buoyant_kernel=off")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("not-a-real-password"),
        "secrets are never logged"
    );
    // Every log line is JSON; the run's summary (`sluice: …`) is the command's output.
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| !l.starts_with("sluice: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "partitions assigned"),
        "{err}"
    );
    assert_eq!(w.count("bronze.secrets"), 10);
}
