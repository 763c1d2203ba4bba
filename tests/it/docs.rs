//! Every configuration key is documented in docs/configuration.md.
//!
//! The sections are those of the config structs in `pipeline/src` (every struct deriving
//! `Deserialize` there must be one of [`SECTIONS`]). The demo config, with one unknown key
//! added to each section, goes through `sluice validate-config`:
//!
//! - a section whose struct denies unknown fields (`[serve]`, `[serve.users.<name>]`,
//!   `[roles.<name>]`, `[audit]`) fails with serde's message, "unknown field `zz…`,
//!   expected one of `a`, `b`, …", and that list is the section's keys (the config stops
//!   at the first such error, so the unresolved sections go round again);
//! - the other sections report `<section>.zz…: unknown key` without naming the keys they
//!   take: the report proves the binary reads the section where the test put it, and the
//!   keys are the fields of its struct in `pipeline/src`;
//! - `[schedule]` takes job names, which the binary lists for an unknown job.
//!
//! Each key must then have a row in its section's table of docs/configuration.md (the key
//! in backquotes in the row's first cell), and every top-level table of the demo config a
//! section there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unknown key put in every section (numbered by section).
const UNKNOWN: &str = "zz_not_a_key";

/// One section of the configuration.
struct Section {
    /// Where it is in a config file: table keys, `[0]` for the first of an array of tables.
    path: &'static [&'static str],
    /// Keys it needs to be read, as TOML, where the demo config does not have it.
    seed: &'static str,
    /// The heading of its table in docs/configuration.md.
    doc: &'static str,
    /// Its struct: file under pipeline/src and name; none for `[schedule]` (job names).
    source: Option<(&'static str, &'static str)>,
}

const fn section(
    path: &'static [&'static str],
    seed: &'static str,
    doc: &'static str,
    file: &'static str,
    name: &'static str,
) -> Section {
    Section {
        path,
        seed,
        doc,
        source: Some((file, name)),
    }
}

const PII_RULE: &str = "`[pii.tables.<table>]`";

const SECTIONS: &[Section] = &[
    section(
        &["pipeline"],
        "",
        "`[pipeline]`",
        "config/pipeline.rs",
        "PipelineConfig",
    ),
    section(
        &["kafka"],
        "",
        "`[kafka]`",
        "config/kafka.rs",
        "KafkaConfig",
    ),
    section(
        &["decode"],
        "",
        "`[decode]`",
        "config/decode.rs",
        "DecodeConfig",
    ),
    section(
        &["decode", "schema_registry"],
        "url = \"http://registry:8081\"",
        "`[decode.schema_registry]`",
        "config/decode.rs",
        "SchemaRegistryConfig",
    ),
    section(
        &["decode", "topics", "customers"],
        "",
        "`[decode.topics.\"<topic>\"]`",
        "config/decode.rs",
        "TopicDecodeConfig",
    ),
    section(&["pii"], "", "`[pii]`", "config/pii.rs", "PiiConfig"),
    section(
        &["pii", "keys", "pseudo"],
        "",
        "`[pii.keys.<id>]`",
        "config/pii.rs",
        "KeyConfig",
    ),
    section(
        &["pii", "tables", "customers", "customer_id"],
        "",
        PII_RULE,
        "config/pii.rs",
        "ColumnRule",
    ),
    section(
        &["pii", "topics", "touchpoint-events", "customer_id"],
        "",
        PII_RULE,
        "config/pii.rs",
        "ColumnRule",
    ),
    section(
        &["bronze"],
        "",
        "`[bronze]`",
        "config/bronze.rs",
        "BronzeConfig",
    ),
    section(
        &["bronze", "tables", "card_transactions"],
        "",
        "`[bronze.tables.<table>]`",
        "config/bronze.rs",
        "TableConfig",
    ),
    section(
        &["bronze", "tables", "card_transactions", "schema", "[0]"],
        "name = \"amount_gbp\"\ntype = \"double\"",
        "`bronze.tables.<table>.schema` entries",
        "config/bronze.rs",
        "ColumnConfig",
    ),
    section(
        &["silver"],
        "",
        "`[silver]`",
        "config/silver.rs",
        "SilverConfig",
    ),
    section(
        &["silver", "tables", "customers"],
        "",
        "`[silver.tables.<table>]`",
        "config/silver.rs",
        "SilverTableConfig",
    ),
    section(
        &["silver", "tables", "customers", "history"],
        "",
        "`[silver.tables.<table>.history]`",
        "config/silver.rs",
        "HistoryConfig",
    ),
    section(
        &["quality", "card_transactions", "[0]"],
        "",
        "`[[quality.<table>]]`",
        "config/quality.rs",
        "ExpectationConfig",
    ),
    section(
        &["metrics"],
        "",
        "`[metrics]`",
        "config/metrics.rs",
        "MetricsConfig",
    ),
    section(&["sql"], "", "`[sql]`", "config/sql.rs", "SqlConfig"),
    section(
        &["roles", "analyst"],
        "tables = [\"silver\"]",
        "`[roles.<name>]`",
        "config/roles.rs",
        "RoleConfig",
    ),
    section(
        &["serve"],
        "",
        "`[serve]`",
        "config/serve.rs",
        "ServeConfig",
    ),
    section(
        &["serve", "users", "ana"],
        "password_env = \"ZZ_PASSWORD\"",
        "`[serve.users.<name>]`",
        "config/serve.rs",
        "ServeUser",
    ),
    section(
        &["audit"],
        "",
        "`[audit]`",
        "config/audit.rs",
        "AuditConfig",
    ),
    section(
        &["maintenance"],
        "",
        "`[maintenance]`",
        "config/maintenance.rs",
        "MaintenanceConfig",
    ),
    section(
        &["maintenance", "tables", "bronze.card_transactions"],
        "",
        "`[maintenance.tables.\"<layer>.<name>\"]`",
        "config/maintenance.rs",
        "TableMaintenance",
    ),
    section(
        &["snapshot"],
        "",
        "`[snapshot]`",
        "config/snapshot.rs",
        "SnapshotConfig",
    ),
    section(
        &["snapshot", "invariants", "[0]"],
        "name = \"zz\"\nsql = \"SELECT 1\"",
        "`[[snapshot.invariants]]`",
        "config/snapshot.rs",
        "InvariantConfig",
    ),
    section(
        &["erasure"],
        "",
        "`[erasure]`",
        "config/erasure.rs",
        "ErasureConfig",
    ),
    section(
        &["erasure", "tables", "silver.customers"],
        "",
        "`[erasure.tables.\"<layer>.<name>\"]`",
        "config/erasure.rs",
        "ErasureTable",
    ),
    section(
        &["erasure", "tombstones", "[0]"],
        "topic = \"customers\"\nkey = \"{subject}\"",
        "`[[erasure.tombstones]]`",
        "config/erasure.rs",
        "TombstoneConfig",
    ),
    section(
        &["anonymise"],
        "",
        "`[anonymise]`",
        "config/anonymise.rs",
        "AnonymiseConfig",
    ),
    section(
        &["anonymise", "tables", "bronze.customers"],
        "",
        "`[anonymise.tables.\"<layer>.<name>\"]`",
        "config/anonymise.rs",
        "AnonymiseTable",
    ),
    section(
        &[
            "anonymise",
            "tables",
            "bronze.customers",
            "columns",
            "after.email",
        ],
        "",
        PII_RULE,
        "config/pii.rs",
        "ColumnRule",
    ),
    section(
        &["anonymise", "publish", "silver.customers"],
        "",
        "`[anonymise.publish.\"<layer>.<name>\"]`",
        "config/anonymise.rs",
        "PublishConfig",
    ),
    Section {
        path: &["schedule"],
        seed: "",
        doc: "`[schedule]`",
        source: None,
    },
];

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env("SLUICE_LOG", "warn,buoyant_kernel=off");
    c
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pipeline_src() -> PathBuf {
    repo().join("pipeline").join("src")
}

/// The table at `path` in `root`, made (with an array of one table for `[0]`) if missing.
fn table_at<'a>(root: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut here = root;
    for (i, part) in path.iter().enumerate() {
        if *part == "[0]" {
            continue;
        }
        let array = path.get(i + 1) == Some(&"[0]");
        let fresh = if array {
            toml::Value::Array(vec![toml::Value::Table(toml::Table::new())])
        } else {
            toml::Value::Table(toml::Table::new())
        };
        let mut value = here.entry(*part).or_insert(fresh);
        if array {
            let items = value
                .as_array_mut()
                .unwrap_or_else(|| panic!("{part} is not an array of tables"));
            if items.is_empty() {
                items.push(toml::Value::Table(toml::Table::new()));
            }
            value = &mut items[0];
        }
        here = value
            .as_table_mut()
            .unwrap_or_else(|| panic!("{part} is not a table"));
    }
    here
}

/// The keys a struct of `pipeline/src` takes: its fields, renamed as serde renames them.
fn struct_fields(file: &str, name: &str) -> BTreeSet<String> {
    let path = pipeline_src().join(file);
    let text = std::fs::read_to_string(&path).expect("read the struct's source");
    let lines: Vec<&str> = text.lines().collect();
    let header = format!("pub struct {name} {{");
    let start = lines
        .iter()
        .position(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no `{header}` in {}", path.display()));
    for attribute in &lines[start.saturating_sub(3)..start] {
        assert!(
            !attribute.contains("rename_all") && !attribute.contains("flatten"),
            "{name}: struct attributes this test does not read: {attribute}"
        );
    }
    let mut fields = BTreeSet::new();
    let mut rename: Option<String> = None;
    let mut skip = false;
    for line in &lines[start + 1..] {
        let l = line.trim();
        if l == "}" {
            break;
        }
        if l.starts_with("#[serde(") {
            assert!(!l.contains("flatten"), "{name}: a flattened field: {l}");
            if l.contains("skip)") || l.contains("skip,") || l.contains("skip_deserializing") {
                skip = true;
            }
            if let Some(r) = l.split("rename = \"").nth(1) {
                rename = r.split('"').next().map(str::to_string);
            }
            continue;
        }
        let Some(rest) = l
            .strip_prefix("pub ")
            .or_else(|| l.strip_prefix("pub(crate) "))
        else {
            continue;
        };
        let Some((field, _)) = rest.split_once(':') else {
            continue;
        };
        let key = rename.take().unwrap_or_else(|| field.trim().to_string());
        if !std::mem::take(&mut skip) {
            fields.insert(key);
        }
    }
    assert!(!fields.is_empty(), "{name}: no fields found");
    fields
}

/// Structs deriving `Deserialize` in `pipeline/src` and its folders.
fn deserialized_structs() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut dir: Vec<PathBuf> = Vec::new();
    let mut folders = vec![pipeline_src()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("pipeline/src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                dir.push(path);
            }
        }
    }
    dir.sort();
    for path in dir {
        let text = std::fs::read_to_string(&path).expect("source");
        let mut derives = false;
        for line in text.lines() {
            let l = line.trim();
            if l.starts_with("#[derive(") {
                derives = l.contains("Deserialize");
            } else if let Some(rest) = l.strip_prefix("pub struct ") {
                if derives {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    found.insert(name);
                }
                derives = false;
            } else if !(l.starts_with("#[") || l.starts_with("///")) {
                derives = false;
            }
        }
    }
    found
}

/// The words in backquotes in `text`.
fn quoted(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// What `validate-config` said about the unknown key of a section.
enum Report {
    /// Serde listed the keys the section takes (or the binary listed the jobs).
    Listed(BTreeSet<String>),
    /// Reported as an unknown key at the section's path, keys not listed.
    UnknownKey,
}

fn report(section: &Section, key: &str, output: &str) -> Option<Report> {
    let output = output.replace(".?.", "."); // an `Option` field's path, as serde_ignored writes it
    if section.source.is_none() {
        let at = format!("no job '{key}' (jobs: ");
        let rest = &output[output.find(&at)? + at.len()..];
        let jobs = rest.split(')').next().unwrap_or_default();
        return Some(Report::Listed(
            jobs.split(", ").map(|j| j.trim().to_string()).collect(),
        ));
    }
    let at = format!("unknown field `{key}`, ");
    if let Some(i) = output.find(&at) {
        let message = output[i + at.len()..].lines().next().unwrap_or_default();
        return Some(Report::Listed(quoted(message)));
    }
    let path: Vec<&str> = section
        .path
        .iter()
        .map(|p| if *p == "[0]" { "0" } else { *p })
        .collect();
    let at = format!(": {}.{key}: unknown key", path.join("."));
    output.contains(&at).then_some(Report::UnknownKey)
}

/// The headings of a markdown text with the lines under each, up to the next heading.
fn sections_of(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut fence = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fence = !fence;
        }
        if !fence && line.starts_with('#') {
            out.push((line.to_string(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line.to_string());
        }
    }
    out
}

/// The keys in the first cells of the table under the heading holding `heading`.
fn documented_keys(markdown: &str, heading: &str) -> BTreeSet<String> {
    let sections = sections_of(markdown);
    let matching: Vec<_> = sections
        .iter()
        .filter(|(h, _)| h.contains(heading))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "docs/configuration.md needs exactly one heading with {heading}"
    );
    matching[0]
        .1
        .iter()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(quoted)
        .collect()
}

#[test]
fn every_configuration_key_is_documented() {
    let docs = std::fs::read_to_string(repo().join("docs").join("configuration.md"))
        .expect("docs/configuration.md");

    // Every config struct is a section here, and every top-level key has one.
    let covered: BTreeSet<String> = SECTIONS
        .iter()
        .filter_map(|s| s.source.map(|(_, name)| name.to_string()))
        .chain(["Config".to_string()])
        .collect();
    assert_eq!(
        deserialized_structs(),
        covered,
        "a config struct in pipeline/src is not a section of this test, or the reverse"
    );
    for top in struct_fields("config/mod.rs", "Config") {
        assert!(
            SECTIONS.iter().any(|s| s.path[0] == top),
            "top-level section [{top}] is not probed by this test"
        );
    }

    let printed = sluice()
        .args(["demo", "--print-config"])
        .output()
        .expect("demo --print-config");
    assert!(printed.status.success());
    let demo: toml::Table = String::from_utf8_lossy(&printed.stdout)
        .parse()
        .expect("the demo config is TOML");
    let headings: Vec<String> = sections_of(&docs).into_iter().map(|(h, _)| h).collect();
    for top in demo.keys() {
        assert!(
            headings.iter().any(|h| h.contains(&format!("`[{top}]`"))
                || h.contains(&format!("`[{top}."))
                || h.contains(&format!("`[[{top}."))),
            "[{top}] of the demo config has no section in docs/configuration.md"
        );
    }

    // Unknown keys through the real binary, until every section has answered.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("probe.toml");
    let mut keys: Vec<Option<BTreeSet<String>>> = SECTIONS.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..SECTIONS.len()).collect();
    let mut runs = 0;
    while !pending.is_empty() {
        runs += 1;
        assert!(runs <= SECTIONS.len(), "too many runs");
        let mut config = demo.clone();
        for &i in &pending {
            let s = &SECTIONS[i];
            let table = table_at(&mut config, s.path);
            let seed: toml::Table = s.seed.parse().expect("seed");
            for (k, v) in seed {
                table.entry(k).or_insert(v);
            }
            let value = if s.source.is_some() {
                toml::Value::Integer(1)
            } else {
                toml::Value::String("0 3 * * *".into())
            };
            table.insert(format!("{UNKNOWN}_{i}"), value);
        }
        std::fs::write(&path, config.to_string()).expect("write probe");
        let out = sluice()
            .arg("validate-config")
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .expect("validate-config");
        let output = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{output}");
        let before = pending.len();
        pending.retain(|&i| {
            let s = &SECTIONS[i];
            match report(s, &format!("{UNKNOWN}_{i}"), &output) {
                None => true,
                Some(Report::Listed(listed)) => {
                    if let Some((file, name)) = s.source {
                        assert_eq!(
                            listed,
                            struct_fields(file, name),
                            "serde's keys of {name} differ from its fields as this test reads them"
                        );
                    }
                    keys[i] = Some(listed);
                    false
                }
                Some(Report::UnknownKey) => {
                    let (file, name) = s.source.expect("a struct");
                    keys[i] = Some(struct_fields(file, name));
                    false
                }
            }
        });
        assert!(
            pending.len() < before,
            "no section answered for its unknown key ({:?}):\n{output}",
            pending
                .iter()
                .map(|&i| SECTIONS[i].path.join("."))
                .collect::<Vec<_>>()
        );
    }

    let mut undocumented = Vec::new();
    for (s, keys) in SECTIONS.iter().zip(&keys) {
        let documented = documented_keys(&docs, s.doc);
        for key in keys.iter().flatten() {
            if !documented.contains(key) {
                undocumented.push(format!("{}.{key} (under {})", s.path.join("."), s.doc));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "keys missing from docs/configuration.md:\n{}",
        undocumented.join("\n")
    );
}

/// Every metric `sluice run` exports (each a constant of `pipeline/src/metrics.rs`, the
/// only place names are written) is listed in the operations guide.
#[test]
fn every_metric_is_documented() {
    let read = |path: &[&str]| {
        let p = path.iter().fold(repo().to_path_buf(), |p, s| p.join(s));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let source = read(&["pipeline", "src", "metrics.rs"]);
    let docs = read(&["docs", "operations.md"]);
    let names: Vec<&str> = source
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(
        names.len() >= 28,
        "the metric constants are read: {names:?}"
    );
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !docs.contains(&format!("`{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/operations.md: {missing:?}"
    );
}
