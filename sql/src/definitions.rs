//! SQL definitions kept as files: `sql/views/<name>.sql` (one view per file, registered
//! as `views.<name>` in every session) and `sql/gold/<name>.sql` (one gold table per file,
//! materialised as `gold.<name>` by `sluice job gold`). A file holds one query; `--`
//! comments are allowed.
//!
//! A gold definition may declare itself incremental, in comments the query ignores:
//!
//! ```sql
//! -- sluice: key = day, segment
//! -- sluice: watermark = day
//! ```
//!
//! Its rows are then identified by the key columns, and a run recomputes only the rows
//! whose watermark column is at or after the table's highest watermark.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The file's stem: letters, digits and `_`.
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
    /// Columns identifying a row (`-- sluice: key = a, b`); empty: not incremental.
    pub key: Vec<String>,
    /// The column only increasing runs build from (`-- sluice: watermark = c`).
    pub watermark: Option<String>,
}

/// The `-- sluice: name = value` directives of `sql`: the key and the watermark.
fn directives(path: &Path, sql: &str) -> Result<(Vec<String>, Option<String>)> {
    let mut key = Vec::new();
    let mut watermark = None;
    for line in sql.lines() {
        let Some(directive) = line.trim().strip_prefix("--").map(str::trim) else {
            continue;
        };
        let Some(rest) = directive.strip_prefix("sluice:") else {
            continue;
        };
        let (name, value) = rest
            .split_once('=')
            .map(|(n, v)| (n.trim(), v.trim()))
            .ok_or_else(|| invalid(path, format!("'{directive}': write sluice: name = value")))?;
        let columns: Vec<String> = value
            .split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        match name {
            "key" if !columns.is_empty() => key = columns,
            "watermark" if columns.len() == 1 => watermark = columns.into_iter().next(),
            "key" | "watermark" => {
                return Err(invalid(
                    path,
                    format!("'{directive}': key names columns, watermark one column"),
                ));
            }
            other => {
                return Err(invalid(
                    path,
                    format!("unknown directive '{other}': key or watermark"),
                ));
            }
        }
    }
    if key.is_empty() != watermark.is_none() {
        return Err(invalid(
            path,
            "an incremental definition declares both sluice: key and sluice: watermark",
        ));
    }
    Ok((key, watermark))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, why: impl Into<String>) -> Error {
    Error::Definition {
        path: path.to_path_buf(),
        message: why.into(),
    }
}

/// The `*.sql` files of `dir`, by name; a missing directory holds none.
pub fn read_dir(dir: &Path) -> Result<Vec<Definition>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_none_or(|e| e != "sql") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(invalid(
                &path,
                "a definition's file name is its table name: a-z, 0-9 and _",
            ));
        }
        let sql = std::fs::read_to_string(&path).map_err(io(&path))?;
        let sql = sql.trim().trim_end_matches(';').trim().to_string();
        if sql.is_empty() {
            return Err(invalid(&path, "the file holds no query"));
        }
        let (key, watermark) = directives(&path, &sql)?;
        out.push(Definition {
            name,
            path,
            sql,
            key,
            watermark,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether `sql` names `schema.name` as a whole word.
fn mentions(sql: &str, schema: &str, name: &str) -> bool {
    let needle = format!("{schema}.{name}").to_ascii_lowercase();
    let text = sql.to_ascii_lowercase();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    text.match_indices(&needle).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| text.as_bytes()[i]);
        let after = text.as_bytes().get(at + needle.len()).copied();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// `defs` ordered so each comes after the definitions of `schema` it reads.
pub fn in_dependency_order(defs: Vec<Definition>, schema: &str) -> Result<Vec<Definition>> {
    let names: Vec<String> = defs.iter().map(|d| d.name.clone()).collect();
    let mut waiting: BTreeMap<String, Definition> =
        defs.into_iter().map(|d| (d.name.clone(), d)).collect();
    let mut out: Vec<Definition> = Vec::new();
    while !waiting.is_empty() {
        let ready: Vec<String> = waiting
            .values()
            .filter(|d| {
                names.iter().all(|n| {
                    n == &d.name || !mentions(&d.sql, schema, n) || out.iter().any(|o| &o.name == n)
                })
            })
            .map(|d| d.name.clone())
            .collect();
        if ready.is_empty() {
            let stuck: Vec<&str> = waiting.keys().map(String::as_str).collect();
            let first = waiting
                .values()
                .next()
                .map(|d| d.path.clone())
                .unwrap_or_default();
            return Err(invalid(
                &first,
                format!(
                    "{schema} definitions read each other in a cycle: {}",
                    stuck.join(", ")
                ),
            ));
        }
        for n in ready {
            if let Some(d) = waiting.remove(&n) {
                out.push(d);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, sql: &str) -> Definition {
        Definition {
            name: name.into(),
            path: PathBuf::from(format!("{name}.sql")),
            sql: sql.into(),
            key: Vec::new(),
            watermark: None,
        }
    }

    #[test]
    fn definitions_come_after_those_they_read() {
        let ordered = in_dependency_order(
            vec![
                def("a", "select * from gold.b join gold.c using (k)"),
                def("b", "select * from gold.c"),
                def("c", "select 1 as k"),
                def("d", "select * from gold.cc"),
            ],
            "gold",
        )
        .expect("order");
        let names: Vec<&str> = ordered.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["c", "d", "b", "a"]);
    }

    #[test]
    fn a_cycle_is_named() {
        let e = in_dependency_order(
            vec![
                def("a", "select * from gold.b"),
                def("b", "select * from gold.a"),
            ],
            "gold",
        )
        .expect_err("cycle");
        assert!(e.to_string().contains("cycle: a, b"), "{e}");
    }

    #[test]
    fn files_are_read_by_name_and_must_hold_a_query() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("b_view.sql"), "-- b\nselect 2;\n").expect("write");
        std::fs::write(dir.path().join("a_view.sql"), "select 1").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let defs = read_dir(dir.path()).expect("read");
        assert_eq!(defs.len(), 2);
        assert_eq!(
            (defs[0].name.as_str(), defs[1].sql.as_str()),
            ("a_view", "-- b\nselect 2")
        );
        std::fs::write(dir.path().join("Bad-Name.sql"), "select 1").expect("write");
        assert!(read_dir(dir.path()).is_err());
        assert!(
            read_dir(&dir.path().join("missing"))
                .expect("none")
                .is_empty()
        );
    }

    #[test]
    fn incremental_definitions_declare_a_key_and_a_watermark() {
        let p = Path::new("d.sql");
        assert_eq!(
            directives(
                p,
                "-- spend per day\n-- sluice: key = day, segment\n--sluice: watermark = day\nselect 1"
            )
            .expect("valid"),
            (vec!["day".to_string(), "segment".to_string()], Some("day".into()))
        );
        assert_eq!(directives(p, "select 1").expect("plain"), (vec![], None));
        for bad in [
            "-- sluice: key = day\nselect 1",
            "-- sluice: watermark = day\nselect 1",
            "-- sluice: watermark = a, b\n-- sluice: key = a\nselect 1",
            "-- sluice: keys = day\nselect 1",
            "-- sluice: key\nselect 1",
        ] {
            assert!(directives(p, bad).is_err(), "{bad}");
        }
    }
}
