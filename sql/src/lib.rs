//! # sluice-sql
//!
//! SQL over every Delta table of a lake, with DataFusion.
//!
//! [`Catalog::open`] finds the tables under `<lake>/<layer>/<table>` and registers each as
//! `<layer>.<table>`: `bronze.txn_events`, `silver.customers`, `gold.daily_spend`. The
//! internal tables under `<lake>/_sluice/` are registered in the schema `sluice`
//! (`sluice.dead_letters`).

pub mod definitions;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::prelude::{SessionConfig, SessionContext};

/// Errors of `sluice-sql`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("{0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("reading the lake at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Definition { path: PathBuf, message: String },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    pub path: PathBuf,
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
        out.extend(names.into_iter().map(|(name, path)| TableRef {
            schema: schema.to_string(),
            name,
            path,
        }));
    }
    Ok(out)
}

/// The views of a session.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub registered: Vec<String>,
    /// Views left out, with why (they read a table that is not there).
    pub skipped: Vec<(String, String)>,
}

/// Whether planning failed because a table or view does not exist.
fn is_missing_table(e: &datafusion::error::DataFusionError) -> bool {
    let text = e.to_string();
    text.contains("not found") && (text.contains("table") || text.contains("Table"))
}

/// A DataFusion session with every table of a lake registered.
pub struct Catalog {
    ctx: SessionContext,
    tables: Vec<TableRef>,
    /// Version of each table as registered, by position in `tables`.
    versions: Vec<i64>,
}

impl Catalog {
    /// Register every table of `lake`.
    pub async fn open(lake: &Path) -> Result<Self> {
        let config = SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| datafusion::error::DataFusionError::Plan("no default catalog".into()))?;
        for schema in LAYERS.iter().map(|(_, s)| *s).chain(["views"]) {
            catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
        }
        let tables = find_tables(lake)?;
        let mut versions = Vec::with_capacity(tables.len());
        for t in &tables {
            let abs = std::path::absolute(&t.path).map_err(|source| Error::Io {
                path: t.path.clone(),
                source,
            })?;
            let url = url_for(&abs)?;
            let table = deltalake::open_table(url)
                .await
                .map_err(|source| Error::Table {
                    table: t.qualified(),
                    source: Box::new(source),
                })?;
            table
                .update_datafusion_session(&ctx.state())
                .map_err(|source| Error::Table {
                    table: t.qualified(),
                    source: Box::new(source),
                })?;
            versions.push(table.version().map_or(-1, |v| v as i64));
            let provider = table.table_provider().await?;
            ctx.register_table(
                datafusion::common::TableReference::partial(t.schema.as_str(), t.name.as_str()),
                provider,
            )?;
        }
        Ok(Self {
            ctx,
            tables,
            versions,
        })
    }

    /// Register each definition of `dir` as the view `views.<name>`; a view may read
    /// another. A view reading a table this lake (or this role) lacks is skipped, with
    /// the reason; any other error in a definition fails, naming its file.
    pub async fn register_views(&self, dir: &Path) -> Result<Views> {
        let defs = definitions::in_dependency_order(definitions::read_dir(dir)?, "views")?;
        let mut views = Views::default();
        for d in defs {
            match self
                .ctx
                .sql(&format!("CREATE VIEW views.{} AS {}", d.name, d.sql))
                .await
            {
                Ok(_) => views.registered.push(format!("views.{}", d.name)),
                Err(e) if is_missing_table(&e) => views
                    .skipped
                    .push((format!("views.{}", d.name), e.to_string())),
                Err(e) => {
                    return Err(Error::Definition {
                        path: d.path.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(views)
    }

    /// The tables registered.
    pub fn tables(&self) -> &[TableRef] {
        &self.tables
    }

    /// The version of `table` this catalog reads (pinned when it was opened).
    pub fn version(&self, table: &TableRef) -> Option<i64> {
        self.tables
            .iter()
            .position(|t| t == table)
            .map(|i| self.versions[i])
    }

    /// Run one SQL statement and stream its result.
    pub async fn stream(
        &self,
        sql: &str,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
        Ok(self.ctx.sql(sql).await?.execute_stream().await?)
    }

    /// Run one SQL statement and collect its result.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let df = self.ctx.sql(sql).await?;
        Ok(df.collect().await?)
    }

    /// Row count of a registered table.
    pub async fn count(&self, table: &TableRef) -> Result<u64> {
        let batches = self
            .query(&format!("select count(*) from {}", table.qualified()))
            .await?;
        let n = batches
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .map(|a| a.value(0))
            })
            .unwrap_or(0);
        Ok(n as u64)
    }
}

fn url_for(abs: &Path) -> Result<url::Url> {
    url::Url::from_directory_path(abs).map_err(|()| Error::Io {
        path: abs.to_path_buf(),
        source: std::io::Error::other("not an absolute path"),
    })
}
