//! The tables of a lake: found by their Delta logs under the layers' directories, local
//! or in an object store, in a stable order.

use std::path::{Path, PathBuf};

use sluice_pipeline::lake::Lake;

use sluice_pipeline::error::BoxError;

use crate::{Error, Result};

/// Layers searched for tables, with the SQL schema each is registered under.
pub const LAYERS: [(&str, &str); 4] = [
    ("bronze", "bronze"),
    ("silver", "silver"),
    ("gold", "gold"),
    ("_sluice", "sluice"),
];

/// A table found in the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// SQL schema (`bronze`, `silver`, `gold`, `sluice`).
    pub schema: String,
    pub name: String,
    /// The table's URL (`file://…` or the object store's).
    pub url: url::Url,
}

impl TableRef {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Every Delta table under `lake`, in a stable order.
pub fn find_tables(lake: &Path) -> Result<Vec<TableRef>> {
    let mut out = Vec::new();
    for (dir, schema) in LAYERS {
        let layer = lake.join(dir);
        let entries = match std::fs::read_dir(&layer) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    path: layer,
                    source,
                });
            }
        };
        let mut names: Vec<(String, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("_delta_log").is_dir())
            .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
            .collect();
        names.sort();
        for (name, path) in names {
            let abs = std::path::absolute(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            out.push(TableRef {
                schema: schema.to_string(),
                name,
                url: url_for(&abs)?,
            });
        }
    }
    Ok(out)
}

/// Every Delta table of `lake`, local or in an object store, in a stable order.
pub async fn find_tables_in(lake: &Lake) -> Result<Vec<TableRef>> {
    let root = match lake {
        Lake::Local(dir) => return find_tables(dir),
        Lake::ObjectStore(root) => root,
    };
    let failed = |source: BoxError| Error::Listing {
        lake: lake.to_string(),
        source,
    };
    let store = deltalake::DeltaTableBuilder::from_url(root.clone())
        .and_then(|b| b.build_storage())
        .map_err(|e| failed(e.into()))?
        .object_store(None);
    let mut out = Vec::new();
    for (dir, schema) in LAYERS {
        let listed = store
            .list_with_delimiter(Some(&deltalake::Path::from(dir)))
            .await
            .map_err(|e| failed(e.into()))?;
        let mut names = Vec::new();
        for prefix in listed.common_prefixes {
            let Some(name) = prefix.filename().map(str::to_string) else {
                continue;
            };
            // A table has a log; a directory without one (a lock, a leftover) is not a table.
            let log = store
                .list_with_delimiter(Some(&prefix.clone().join("_delta_log")))
                .await
                .map_err(|e| failed(e.into()))?;
            if !log.objects.is_empty() {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let relative = format!("{dir}/{name}");
            let url = lake
                .object_url(&relative)
                .ok_or_else(|| failed(format!("{relative} is not a table path").into()))?;
            out.push(TableRef {
                schema: schema.to_string(),
                name,
                url,
            });
        }
    }
    Ok(out)
}

fn url_for(abs: &Path) -> Result<url::Url> {
    url::Url::from_directory_path(abs).map_err(|()| Error::Io {
        path: abs.to_path_buf(),
        source: std::io::Error::other("not an absolute path"),
    })
}
