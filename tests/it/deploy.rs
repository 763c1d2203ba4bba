//! The deployment files cannot rot: docker-compose.yml, the Prometheus configuration and
//! alert rules parse (PyYAML), every file they mount exists, the sluice config they use is
//! valid, and every sluice metric the alerts and the Grafana dashboard query is one sluice
//! exports.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Tool, require};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml(python: &Path, file: &str) -> Value {
    let out = Command::new(python)
        .arg(format!("{ROOT}/tests/it/scripts/yaml2json.py"))
        .arg(format!("{ROOT}/{file}"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `sluice_*` metric names in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sluice_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names of `sluice_pipeline::metrics`, by constant: `NAME` → `sluice_…`.
fn named_metrics() -> std::collections::BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(format!("{ROOT}/pipeline/src/metrics.rs")).expect("metrics.rs");
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.strip_prefix("pub const ")?.split_once(": &str = ")?;
            let value = value.trim().strip_suffix(';')?.trim_matches('"');
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Metric names the code registers (`counter!`/`gauge!`/`histogram!` calls, naming a
/// constant of `sluice_pipeline::metrics`).
fn exported() -> BTreeSet<String> {
    let named = named_metrics();
    assert!(
        !named.is_empty(),
        "no metric names in pipeline/src/metrics.rs"
    );
    let mut names = BTreeSet::new();
    let mut stack = vec![Path::new(ROOT).to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() && !["target", "tests", ".git"].contains(&name) {
                stack.push(path);
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                for call in ["counter!(", "gauge!(", "histogram!("] {
                    for piece in text.split(call).skip(1) {
                        let first = piece.split([',', ')']).next().unwrap_or_default().trim();
                        // Names are constants; a literal name would escape this list.
                        assert!(
                            !first.starts_with('"'),
                            "{}: a metric named by a literal ({first}): add it to pipeline/src/metrics.rs",
                            path.display()
                        );
                        let constant = first.rsplit("::").next().unwrap_or_default();
                        if let Some(metric) = named.get(constant) {
                            names.insert(metric.clone());
                        }
                    }
                }
            }
        }
    }
    names
}

#[test]
fn deployment_files_parse_and_query_only_exported_metrics() {
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let compose = yaml(&py, "docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    for name in [
        "kafka",
        "kafka-init",
        "postgres",
        "schema-registry",
        "connect",
        "connect-init",
        "sluice",
        "scheduler",
        "sql",
        "prometheus",
        "grafana",
        "minio",
        "minio-init",
    ] {
        let s = &services[name];
        assert!(
            s["image"].is_string() || s["build"].is_string(),
            "{name}: image or build"
        );
    }
    // The lake is in MinIO: every sluice service reads and writes the same S3 lake through
    // MinIO's endpoint, and minio-init creates its bucket.
    let lake = services["sluice"]["environment"]["SLUICE_LAKE"]
        .as_str()
        .expect("SLUICE_LAKE");
    let bucket = lake
        .strip_prefix("s3://")
        .and_then(|r| r.split('/').next())
        .expect("an s3:// lake");
    for name in ["sluice", "scheduler", "sql"] {
        let env = &services[name]["environment"];
        assert_eq!(env["SLUICE_LAKE"], lake, "{name}");
        assert_eq!(env["AWS_ENDPOINT_URL"], "http://minio:9000", "{name}");
        assert_eq!(
            env["AWS_ACCESS_KEY_ID"], services["minio"]["environment"]["MINIO_ROOT_USER"],
            "{name}"
        );
        let command = services[name]["command"].as_array().expect("command");
        assert!(
            !command.iter().any(|a| a == "--lake"),
            "{name}: the lake comes from SLUICE_LAKE"
        );
    }
    let init = services["minio-init"]["command"][0].as_str().expect("init");
    assert!(init.contains(&format!("local/{bucket}")), "{init}");
    // Every bind mount's source is in the repository.
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let source = v
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .next()
                .unwrap_or_default();
            if let Some(rel) = source.strip_prefix("./") {
                assert!(
                    Path::new(ROOT).join(rel).exists(),
                    "{name} mounts missing {source}"
                );
            }
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "validate-config",
            &format!("{ROOT}/deploy/sluice.docker.toml"),
        ])
        .output()
        .expect("validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Debezium's topics (<prefix>.<schema>.<table>) are the ones sluice reads into silver.
    let connector: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/debezium/bank-postgres.json"))
            .expect("connector"),
    )
    .expect("connector json");
    let prefix = connector["topic.prefix"].as_str().expect("prefix");
    // Debezium writes Avro to the registry sluice reads the schemas from.
    assert_eq!(
        connector["value.converter"],
        "io.confluent.connect.avro.AvroConverter"
    );
    let registry = connector["value.converter.schema.registry.url"]
        .as_str()
        .expect("registry url");
    let sluice_config = std::fs::read_to_string(format!("{ROOT}/deploy/sluice.docker.toml"))
        .expect("sluice config");
    for table in connector["table.include.list"]
        .as_str()
        .expect("tables")
        .split(',')
    {
        let topic = format!("\"{prefix}.{table}\"");
        assert!(
            sluice_config.contains(&format!("topics = [{topic}]")),
            "no silver table reads {topic}"
        );
        assert!(
            sluice_config.contains(&format!("[decode.topics.{topic}]\nformat = \"avro\"")),
            "sluice does not read {topic} as Avro"
        );
    }
    assert!(
        sluice_config.contains(&format!("[decode.schema_registry]\nurl = \"{registry}\"")),
        "sluice reads schemas from another registry than Debezium writes to"
    );
    let prometheus = yaml(&py, "deploy/prometheus/prometheus.yml");
    assert_eq!(
        prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "sluice:9898"
    );
    let alerts = yaml(&py, "deploy/prometheus/alerts.yml");
    let rules = alerts["groups"][0]["rules"].as_array().expect("rules");
    let mut queried = BTreeSet::new();
    for r in rules {
        let expr = r["expr"].as_str().expect("expr");
        assert!(r["alert"].is_string() && !expr.trim().is_empty(), "{r}");
        queried.extend(metric_names(expr));
    }
    assert!(rules.len() >= 4, "lag, dead letters, no commit, down");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/grafana/dashboards/sluice.json"))
            .expect("dashboard"),
    )
    .expect("dashboard json");
    for p in dashboard["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            queried.extend(metric_names(t["expr"].as_str().expect("expr")));
        }
    }
    let exported = exported();
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "queried but never exported: {unknown:?} (exported: {exported:?})"
    );
}

#[test]
fn kubernetes_manifests_probe_the_endpoint_and_carry_a_valid_config() {
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let docs = yaml(&py, "deploy/kubernetes/sluice.yaml");
    let docs = docs.as_array().expect("several documents");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let deployment = kind("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 9898);
    assert_eq!(container["args"][0], "run");
    // Nightly maintenance, never two runs at once, on the Deployment's lake and config.
    let cron = kind("CronJob");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["args"][0], "job");
    assert_eq!(pod["containers"][0]["args"][1], "maintain");
    assert_eq!(
        pod["volumes"][1]["persistentVolumeClaim"]["claimName"],
        deployment["spec"]["template"]["spec"]["volumes"][2]["persistentVolumeClaim"]["claimName"]
    );
    // The embedded sluice.toml is valid apart from its secrets, which live in the cluster.
    let toml = kind("ConfigMap")["data"]["sluice.toml"]
        .as_str()
        .expect("sluice.toml");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate-config")
        .arg(&path)
        .output()
        .expect("validate");
    let report = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.contains("is not set") && !l.contains("cannot read /etc/sluice/keys/"))
        .collect();
    assert!(
        problems.is_empty() || report.contains(": valid"),
        "{report}"
    );
    assert!(
        report.contains("KAFKA_SASL_PASSWORD is not set"),
        "{report}"
    );
}
