//! # sluice-sql
//!
//! SQL over every Delta table of a lake, with DataFusion.
//!
//! [`Catalog::open`] finds the tables under `<lake>/<layer>/<table>` and registers each as
//! `<layer>.<table>`: `bronze.txn_events`, `silver.customers`, `gold.daily_spend`. The
//! internal tables under `<lake>/_sluice/` are registered in the schema `sluice`
//! (`sluice.dead_letters`).
//!
//! Every session is read-only ([`readonly`]): statements and plans that write are
//! refused, tables and object stores refuse writes. A session opened for a role reads
//! each table as [`restricted`] says, and its errors never quote values; limits on
//! memory and time come from [`limits`], and functions whose result can outgrow a
//! query's memory are bounded by [`amplify`].

pub mod access;
pub mod amplify;
pub mod definitions;
pub mod limits;
pub mod lineage;
pub mod readonly;
pub mod restricted;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use sluice_pipeline::lake::Lake;

use arrow::array::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;

use sluice_pipeline::error::BoxError;

use crate::limits::{Guarded, QueryPool, TimedOut};
use crate::readonly::{ReadOnlyStores, ReadOnlyTable, Refusal};
use crate::restricted::RestrictedTable;

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
    /// A definition file that cannot be used as written (sluice's own words).
    #[error("{path}: {message}")]
    Definition { path: PathBuf, message: String },
    /// A view definition DataFusion cannot plan.
    #[error("{path}: {source}")]
    View {
        path: PathBuf,
        #[source]
        source: Box<DataFusionError>,
    },
    #[error("{0}")]
    Denied(String),
    /// Time travel named a table the lake does not have.
    #[error("time travel: no table {0} in the lake")]
    NoSuchTable(String),
    /// Time travel asked for a version the table cannot be opened at.
    #[error("time travel: {table} at version {version}: {source}")]
    Travel {
        table: String,
        version: u64,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// The server's TLS certificate or key could not be used.
    #[error("serve: {path}: {source}")]
    Tls {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// The certificate could not be used for SCRAM channel binding.
    #[error("serve: certificate for SCRAM channel binding: {source}")]
    ChannelBinding {
        #[source]
        source: BoxError,
    },
    #[error("listing the lake at {lake}: {source}")]
    Listing {
        lake: String,
        #[source]
        source: BoxError,
    },
    /// Refused, cancelled or over its memory, or a role's error without its values.
    #[error("{message}")]
    Sql {
        sqlstate: &'static str,
        message: String,
    },
}

impl Error {
    /// The Postgres SQLSTATE of the error, when it has a precise one.
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self {
            Error::Sql { sqlstate, .. } => Some(sqlstate),
            Error::Denied(_) => Some(readonly::PRIVILEGE),
            Error::Query(e) => limits::sqlstate(e),
            _ => None,
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Sql {
            sqlstate: r.sqlstate,
            message: r.message,
        }
    }
}

/// What a session may take. The defaults: no limit; operators may spill to temporary
/// files unless the session reads as a role.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory one query may hold (in operators that buffer: sorts, joins, aggregates).
    pub query_memory_bytes: Option<usize>,
    /// The pool every query's memory is also drawn from.
    pub total_memory: Option<Arc<dyn MemoryPool>>,
    /// How long a statement may run, planning and reading its rows included.
    pub statement_timeout: Option<Duration>,
    /// Whether operators may spill to temporary files when memory runs short.
    pub spill: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            query_memory_bytes: None,
            total_memory: None,
            statement_timeout: None,
            spill: true,
        }
    }
}

/// When a statement must be done by, and the timeout that set it (for its message).
pub type Deadline = (tokio::time::Instant, Duration);

/// What running a statement gave.
pub enum Ran {
    /// Rows (a query, `EXPLAIN`, `EXECUTE`).
    Rows(SendableRecordBatchStream),
    /// A session statement done, with its command tag (`PREPARE`, `SET`, …).
    Done(&'static str),
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ran::Rows(_) => f.write_str("Rows"),
            Ran::Done(tag) => write!(f, "Done({tag})"),
        }
    }
}

/// `fut`, failing with SQLSTATE 57014 once `deadline` passes.
async fn within<T>(
    deadline: Option<Deadline>,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        None => fut.await,
        Some((at, after)) => tokio::time::timeout_at(at, fut)
            .await
            .map_err(|_| Error::Sql {
                sqlstate: limits::CANCELED,
                message: TimedOut(after.as_millis()).to_string(),
            })?,
    }
}

/// Which state of each table a session reads: a version per table, and for the others
/// the version current at a time; the latest when neither is given.
#[derive(Debug, Clone, Default)]
pub struct TimeTravel {
    /// Versions by table (`layer.name`).
    pub versions: std::collections::BTreeMap<String, u64>,
    /// RFC 3339 time, e.g. `2026-11-22T10:00:00Z`.
    pub as_of: Option<String>,
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

/// The views of a session.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub registered: Vec<String>,
    /// Views left out, with why (they read a table that is not there).
    pub skipped: Vec<(String, String)>,
}

/// The field of DataFusion's "No field named <qualifier>.<column>.", split.
fn missing_field(text: &str) -> Option<(Option<String>, String)> {
    let rest = text.split("No field named ").nth(1)?;
    // The name ends the sentence: "… named c.email.\nValid fields are …".
    let name = rest.split_whitespace().next()?.trim_end_matches('.');
    let parts: Vec<&str> = name.split('.').map(|p| p.trim_matches('"')).collect();
    let (column, qualifier) = parts.split_last()?;
    Some((
        (!qualifier.is_empty()).then(|| qualifier.join(".")),
        (*column).to_string(),
    ))
}

/// The table of DataFusion's "table '<catalog>.<layer>.<name>' not found", as `layer.name`.
fn missing_table(text: &str) -> Option<String> {
    let rest = text
        .split_once("table '")
        .or_else(|| text.split_once("Table '"))?
        .1;
    let name = rest.split("' not found").next()?;
    Some(name.strip_prefix("datafusion.").unwrap_or(name).to_string())
}

/// Whether planning failed because a table or view does not exist.
fn is_missing_table(e: &datafusion::error::DataFusionError) -> bool {
    missing_table(&e.to_string()).is_some()
}

/// A DataFusion session with every table of a lake registered.
pub struct Catalog {
    ctx: SessionContext,
    tables: Vec<TableRef>,
    /// Version of each table as registered, by position in `tables`.
    versions: Vec<i64>,
    /// The role's limits, when the session is opened for one.
    access: Option<access::Access>,
    /// Columns left out for the role.
    denied: Vec<access::Denied>,
    /// Tables and views left out for the role, with the policy that says so.
    denied_tables: Vec<(String, String)>,
    limits: Limits,
}

/// DataFusion options sluice sets unless a `DATAFUSION_*` variable sets them.
///
/// Lake queries join large fact tables (transactions) to dimension tables (customers,
/// accounts) of up to a few million rows: one shared hash table of the dimension, the
/// facts streamed past it, beats hashing every fact row into partitions. Filters run
/// after decoding, not inside the Parquet reader (DataFusion's own default, which the
/// Delta scan follows once it is given the session): on columns most rows pass, as lake
/// filters usually are, decoding a column twice costs more than it saves.
const DEFAULTS: &[(&str, &str)] = &[
    ("datafusion.execution.parquet.pushdown_filters", "false"),
    (
        "datafusion.optimizer.hash_join_single_partition_threshold",
        "134217728",
    ),
    (
        "datafusion.optimizer.hash_join_single_partition_threshold_rows",
        "2000000",
    ),
];

/// The session's options: DataFusion's defaults, then [`DEFAULTS`], then the
/// environment's `DATAFUSION_*` variables (e.g. `DATAFUSION_EXECUTION_TARGET_PARTITIONS`).
fn session_config() -> Result<SessionConfig> {
    let mut config = SessionConfig::from_env()?.with_information_schema(true);
    for (key, value) in DEFAULTS {
        let variable = key.to_uppercase().replace('.', "_");
        if std::env::var_os(variable).is_none() {
            config.options_mut().set(key, value)?;
        }
    }
    Ok(config)
}

impl Catalog {
    /// Register every table of `lake` (a directory, or an object store's [`Lake`]).
    pub async fn open(lake: impl Into<Lake>) -> Result<Self> {
        Self::open_as(lake, None).await
    }

    /// Register the tables of `lake` that `access` lets its role read, each without the
    /// columns and rows the role may not see; every table when `access` is none.
    pub async fn open_as(lake: impl Into<Lake>, access: Option<access::Access>) -> Result<Self> {
        Self::open_at(lake, access, &TimeTravel::default()).await
    }

    /// [`Catalog::open_as`], each table read at the state `travel` asks for.
    pub async fn open_at(
        lake: impl Into<Lake>,
        access: Option<access::Access>,
        travel: &TimeTravel,
    ) -> Result<Self> {
        Self::open_with(lake, access, travel, Limits::default()).await
    }

    /// [`Catalog::open_at`] with `limits` on every query.
    pub async fn open_with(
        lake: impl Into<Lake>,
        access: Option<access::Access>,
        travel: &TimeTravel,
        limits: Limits,
    ) -> Result<Self> {
        let config = session_config()?;
        // No spill files for a role, or when the caller says so.
        let mut disk = DiskManagerBuilder::default();
        if access.is_some() || !limits.spill {
            disk = disk.with_mode(DiskManagerMode::Disabled);
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(ReadOnlyStores::default()))
            .with_disk_manager_builder(disk)
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            // No CREATE EXTERNAL TABLE: nothing reads a file by its path.
            .with_table_factories(HashMap::new())
            .build();
        let ctx = SessionContext::new_with_state(state);
        readonly::keep_safe_table_functions(&ctx);
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| datafusion::error::DataFusionError::Plan("no default catalog".into()))?;
        for schema in LAYERS.iter().map(|(_, s)| *s).chain(["views"]) {
            catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
        }
        let all = find_tables_in(&lake.into()).await?;
        for name in travel.versions.keys() {
            if !all.iter().any(|t| &t.qualified() == name) {
                return Err(Error::NoSuchTable(name.to_string()));
            }
        }
        // A role that restricts anything needs every table: a gold table's policy comes
        // from the tables its definition reads, whether the role reads them or not.
        let lineage = access.as_ref().is_some_and(access::Access::restricts);
        let mut denied_tables = Vec::new();
        let mut opened = Vec::new();
        for t in &all {
            let allowed = access
                .as_ref()
                .is_none_or(|a| a.allows_table(&t.qualified()));
            if !allowed {
                if let Some(a) = &access {
                    denied_tables.push((t.qualified(), format!("roles.{}.tables", a.role)));
                }
                if !lineage {
                    continue;
                }
            }
            let Some(table) = open_table(t, travel).await? else {
                // The table did not exist at that time: it is not in the session.
                continue;
            };
            table
                .update_datafusion_session(&ctx.state())
                .map_err(|source| Error::Table {
                    table: t.qualified(),
                    source: Box::new(source),
                })?;
            // The scan follows the session's options (DATAFUSION_* variables included).
            let provider = table
                .table_provider()
                .with_session(Arc::new(ctx.state()))
                .await?;
            let recorded = table
                .snapshot()
                .map(|s| access::recorded_tags(s.metadata().configuration().iter()))
                .unwrap_or_default();
            let built = match t.schema.as_str() {
                "gold" => last_definition(&table).await,
                _ => None,
            };
            opened.push(Opened {
                table: t.clone(),
                allowed,
                version: table.version().map_or(-1, |v| v as i64),
                provider,
                recorded,
                built,
            });
        }
        let derivation = match &access {
            Some(a) if lineage => derive(a, &opened).await?,
            _ => Derivation::default(),
        };
        if let Some(a) = &access {
            check_denied_paths(a, &all, &opened)?;
        }
        let recorded: BTreeMap<String, BTreeMap<String, String>> = opened
            .iter()
            .map(|o| (o.table.qualified(), o.recorded.clone()))
            .collect();
        let mut denied = Vec::new();
        let mut tables = Vec::new();
        let mut versions = Vec::new();
        for o in opened.into_iter().filter(|o| o.allowed) {
            let qualified = o.table.qualified();
            let provider = match &access {
                None => Arc::new(ReadOnlyTable::new(&qualified, o.provider)) as Arc<_>,
                Some(a) => {
                    if let Some(why) = derivation.refuses(a, &qualified) {
                        denied_tables.push((qualified, why));
                        continue;
                    }
                    let restriction = Restriction {
                        lineage: derivation.columns.get(&qualified),
                        recorded: &recorded,
                    };
                    restrict(&ctx, a, &qualified, o.provider, &restriction, &mut denied)?
                }
            };
            ctx.register_table(
                datafusion::common::TableReference::partial(
                    o.table.schema.as_str(),
                    o.table.name.as_str(),
                ),
                provider,
            )?;
            tables.push(o.table);
            versions.push(o.version);
        }
        Ok(Self {
            ctx,
            tables,
            versions,
            access,
            denied,
            denied_tables,
            limits,
        })
    }

    /// `e`, said in the role's terms when it comes from a column or table the role may
    /// not read; with its SQLSTATE when it is a refusal, a timeout or over memory.
    pub fn explain(&self, e: DataFusionError) -> Error {
        self.explain_in(e, "")
    }

    /// [`Catalog::explain`] for an error of planning `sql`.
    fn explain_in(&self, e: DataFusionError, sql: &str) -> Error {
        if let Some(sqlstate) = limits::sqlstate(&e) {
            return Error::Sql {
                sqlstate,
                message: limits::message(&e),
            };
        }
        match self.explain_message_in(&e.to_string(), sql) {
            Some(m) => Error::Denied(m),
            None => e.into(),
        }
    }

    /// The role the session reads as, if any.
    pub fn role(&self) -> Option<&str> {
        self.access.as_ref().map(|a| a.role.as_str())
    }

    /// A new session over this catalog's tables and views, with its own settings and
    /// prepared statements (`SET`/`PREPARE` in it affect no other session).
    pub fn session(&self) -> SessionContext {
        let state = SessionStateBuilder::new_from_existing(self.ctx.state()).build();
        SessionContext::new_with_state(state)
    }

    /// Refuse `plan` unless it reads (see [`readonly::check_plan`]).
    pub fn check(&self, plan: &LogicalPlan) -> Result<()> {
        Ok(readonly::check_plan(plan, self.role())?)
    }

    /// Plan one parsed statement in `ctx` (a session of this catalog), refusing anything
    /// but reads and session statements.
    pub async fn plan(
        &self,
        ctx: &SessionContext,
        statement: &datafusion::sql::sqlparser::ast::Statement,
    ) -> Result<LogicalPlan> {
        readonly::check_statement(statement, self.role())?;
        let plan = ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                statement.clone(),
            )))
            .await
            .map_err(|e| self.explain_in(e, &statement.to_string()))?;
        self.check(&plan)?;
        Ok(plan)
    }

    /// Parse (in the session's dialect) and plan one statement of `sql`, as [`Catalog::plan`].
    pub async fn plan_sql(&self, ctx: &SessionContext, sql: &str) -> Result<LogicalPlan> {
        limits::check_nesting(sql)?;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| self.explain(e))?;
        readonly::check_df_statement(&statement, self.role())?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.explain_in(e, sql))?;
        self.check(&plan)?;
        Ok(plan)
    }

    /// Run a plan of [`Catalog::plan`] in `ctx`: a session statement changes the session;
    /// anything else streams its rows, with this catalog's limits on memory, cancelled at
    /// `deadline`, its errors scrubbed of values for a role.
    pub async fn run(
        &self,
        ctx: &SessionContext,
        plan: LogicalPlan,
        deadline: Option<Deadline>,
    ) -> Result<Ran> {
        use datafusion::logical_expr::Statement as S;
        self.check(&plan)?;
        let tag = match &plan {
            LogicalPlan::Statement(S::Prepare(_)) => Some("PREPARE"),
            LogicalPlan::Statement(S::Deallocate(_)) => Some("DEALLOCATE"),
            LogicalPlan::Statement(S::SetVariable(_) | S::ResetVariable(_)) => Some("SET"),
            LogicalPlan::Statement(S::TransactionStart(_)) => return Ok(Ran::Done("BEGIN")),
            LogicalPlan::Statement(S::TransactionEnd(_)) => return Ok(Ran::Done("COMMIT")),
            _ => None,
        };
        let planned = within(deadline, async {
            let df = ctx
                .execute_logical_plan(plan)
                .await
                .map_err(|e| self.explain(e))?;
            if tag.is_some() {
                return Ok(None);
            }
            let (state, plan) = df.into_parts();
            // EXECUTE gave the prepared plan: it is checked as it runs.
            self.check(&plan)?;
            let (runtime, pool) = self.query_runtime(state.runtime_env())?;
            // A function's result is not in the memory pool: each call's is bounded,
            // and held in the query's pool.
            // Bounded before the optimizer (which folds calls over constants) and after
            // it (its rewrites, and constants copied into every row).
            let physical = match self.limits.query_memory_bytes {
                Some(limit) => {
                    let held = pool.clone().map(|p| p as Arc<dyn MemoryPool>);
                    let plan = amplify::guard(plan, limit, held.as_ref())
                        .and_then(|p| state.optimize(&p))
                        .and_then(|p| {
                            let rows = state.config().batch_size();
                            amplify::guard_optimized(p, limit, held.as_ref(), rows)
                        })
                        .map_err(|e| self.explain(e))?;
                    state
                        .query_planner()
                        .create_physical_plan(&plan, &state)
                        .await
                }
                None => state.create_physical_plan(&plan).await,
            }
            .map_err(|e| self.explain(e))?;
            let task = TaskContext::from(&state).with_runtime(runtime);
            Ok(Some((
                datafusion::physical_plan::execute_stream(physical, Arc::new(task))
                    .map_err(|e| self.explain(e))?,
                pool,
            )))
        })
        .await?;
        match (planned, tag) {
            (Some((stream, pool)), _) => {
                let role = self.role().map(str::to_string);
                Ok(Ran::Rows(Box::pin(
                    Guarded::new(stream, deadline, role).with_memory(pool),
                )))
            }
            (None, tag) => Ok(Ran::Done(tag.unwrap_or("SELECT"))),
        }
    }

    /// The runtime of one query: `base` with the query's own memory pool (returned too).
    fn query_runtime(
        &self,
        base: &Arc<RuntimeEnv>,
    ) -> Result<(Arc<RuntimeEnv>, Option<Arc<QueryPool>>)> {
        let l = &self.limits;
        if l.query_memory_bytes.is_none() && l.total_memory.is_none() {
            return Ok((base.clone(), None));
        }
        let pool = Arc::new(QueryPool::new(
            l.query_memory_bytes.unwrap_or(usize::MAX),
            l.total_memory.clone(),
        ));
        let runtime = RuntimeEnvBuilder::from_runtime_env(base)
            .with_memory_pool(pool.clone())
            .build_arc()?;
        Ok((runtime, Some(pool)))
    }

    /// The role's reason for an error whose text names a column or table the role may
    /// not read (DataFusion only knows it as missing); none for any other error.
    pub fn explain_message(&self, text: &str) -> Option<String> {
        self.explain_message_in(text, "")
    }

    /// [`Catalog::explain_message`] for an error of `sql`: a column named without its
    /// table is looked for first in the tables `sql` names.
    fn explain_message_in(&self, text: &str, sql: &str) -> Option<String> {
        let a = self.access.as_ref()?;
        let sql = sql.to_lowercase();
        if let Some((qualifier, column)) = missing_field(text) {
            let same_table = |d: &&&access::Denied| {
                qualifier
                    .as_deref()
                    .is_some_and(|q| d.table == q || d.table.ends_with(&format!(".{q}")))
            };
            let named: Vec<&access::Denied> =
                self.denied.iter().filter(|d| d.column == column).collect();
            let in_query = |d: &&&access::Denied| sql.contains(&d.table.to_lowercase());
            // An alias (`c.email`) names no table: a denied column of that name, of a
            // table the query reads if there is one.
            if let Some(d) = named
                .iter()
                .find(same_table)
                .or_else(|| named.iter().find(in_query))
                .or(named.first())
            {
                return Some(format!(
                    "column {} of {} is not readable by role '{}' ({})",
                    d.column, d.table, a.role, d.policy
                ));
            }
        }
        if let Some(table) = missing_table(text)
            && let Some((_, why)) = self.denied_tables.iter().find(|(t, _)| *t == table)
        {
            return Some(format!(
                "table {table} is not readable by role '{}' ({why})",
                a.role
            ));
        }
        None
    }

    /// The DataFusion session, for serving it over another protocol.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Columns the session's role may not read.
    pub fn denied(&self) -> &[access::Denied] {
        &self.denied
    }

    /// Register each definition of `dir` as the view `views.<name>`; a view may read
    /// another. A view reading a table this lake (or this role) lacks is skipped, with
    /// the reason; any other error in a definition fails, naming its file.
    ///
    /// For a role, a view left out is denied like a table: a query naming it is told
    /// which table or column of its definition the role may not read.
    pub async fn register_views(&mut self, dir: &Path) -> Result<Views> {
        let views = register_views_in(&self.ctx, dir, self.access.as_ref()).await?;
        if let Some(a) = &self.access {
            for (view, why) in &views.skipped {
                let why = match self.explain_message(why) {
                    Some(reason) => format!("its definition reads what the role may not: {reason}"),
                    None if why.starts_with("not readable by role") => {
                        format!("roles.{}.tables", a.role)
                    }
                    None => "its definition reads a table the lake does not hold".to_string(),
                };
                self.denied_tables.push((view.clone(), why));
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

    /// Run one SQL statement (read-only, see [`readonly`]) and stream its result.
    pub async fn stream(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let deadline = self
            .limits
            .statement_timeout
            .map(|d| (tokio::time::Instant::now() + d, d));
        let plan = within(deadline, self.plan_sql(&self.ctx, sql)).await?;
        match self.run(&self.ctx, plan, deadline).await? {
            Ran::Rows(rows) => Ok(rows),
            Ran::Done(_) => Ok(Box::pin(
                datafusion::physical_plan::EmptyRecordBatchStream::new(Arc::new(
                    arrow::datatypes::Schema::empty(),
                )),
            )),
        }
    }

    /// Run one SQL statement and collect its result.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let rows = self.stream(sql).await?;
        rows.try_collect().await.map_err(|e| self.explain(e))
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

/// Register each definition of `dir` as the view `views.<name>` in `ctx` (see
/// [`Catalog::register_views`]).
async fn register_views_in(
    ctx: &SessionContext,
    dir: &Path,
    access: Option<&access::Access>,
) -> Result<Views> {
    let defs = definitions::in_dependency_order(definitions::read_dir(dir)?, "views")?;
    let mut views = Views::default();
    for d in defs {
        let name = format!("views.{}", d.name);
        if let Some(a) = access
            && !a.allows_table(&name)
        {
            views
                .skipped
                .push((name, format!("not readable by role '{}'", a.role)));
            continue;
        }
        match ctx.sql(&format!("CREATE VIEW {name} AS {}", d.sql)).await {
            Ok(_) => views.registered.push(name),
            Err(e) if is_missing_table(&e) || access.is_some() => {
                views.skipped.push((name, e.to_string()))
            }
            Err(e) => {
                return Err(Error::View {
                    path: d.path.clone(),
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(views)
}

/// What decides a table's columns for a role beyond its own name and tags.
struct Restriction<'a> {
    /// Each column's sources, for a gold table whose definition was read.
    lineage: Option<&'a Vec<(String, std::collections::BTreeSet<lineage::Source>)>>,
    /// The tags each table records.
    recorded: &'a BTreeMap<String, BTreeMap<String, String>>,
}

/// `provider` as `access` lets its role read it: a [`RestrictedTable`] without the denied
/// columns (recorded in `denied`; for a gold table also those computed from a denied
/// column) and with the role's row filter; `provider` itself, read-only, when nothing is
/// restricted.
fn restrict(
    ctx: &SessionContext,
    a: &access::Access,
    qualified: &str,
    provider: Arc<dyn datafusion::catalog::TableProvider>,
    r: &Restriction<'_>,
    denied: &mut Vec<access::Denied>,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let schema = provider.schema();
    let none = BTreeMap::new();
    let tags = |t: &str| r.recorded.get(t).unwrap_or(&none);
    let mut keep = Vec::new();
    for f in schema.fields() {
        let own = a.denies(qualified, f.name(), tags(qualified));
        let inherited = || {
            let (_, sources) = r.lineage?.iter().find(|(c, _)| c == f.name())?;
            sources.iter().find_map(|(table, column)| {
                a.denies(table, column, tags(table))
                    .map(|policy| format!("{policy}, computed from {table}.{column}"))
            })
        };
        match own.or_else(inherited) {
            Some(policy) => denied.push(access::Denied {
                table: qualified.to_string(),
                column: f.name().clone(),
                policy,
            }),
            None => keep.push(f.name().clone()),
        }
    }
    let filter = a.row_filter(qualified);
    if keep.len() == schema.fields().len() && filter.is_none() {
        return Ok(Arc::new(ReadOnlyTable::new(qualified, provider)));
    }
    let filter = match filter {
        Some((condition, written_for)) => {
            let columns = DFSchema::try_from(schema.as_ref().clone())?;
            Some(ctx.parse_sql_expr(condition, &columns).map_err(|e| {
                Error::Denied(format!(
                    "roles.{}.row_filters.\"{written_for}\" (on {qualified}): {e}",
                    a.role
                ))
            })?)
        }
        None => None,
    };
    Ok(Arc::new(RestrictedTable::new(
        qualified, provider, &keep, filter,
    )?))
}

/// A table opened for a session.
struct Opened {
    table: TableRef,
    /// Whether the session's role reads it (else it is opened for lineage only).
    allowed: bool,
    version: i64,
    provider: Arc<dyn datafusion::catalog::TableProvider>,
    recorded: BTreeMap<String, String>,
    /// For a gold table, the SHA-256 of the definition its last build ran.
    built: Option<String>,
}

/// `t` at the state `travel` asks for; none when it did not exist at that time.
async fn open_table(t: &TableRef, travel: &TimeTravel) -> Result<Option<deltalake::DeltaTable>> {
    let url = t.url.clone();
    let table = match (travel.versions.get(&t.qualified()), &travel.as_of) {
        (Some(v), _) => deltalake::open_table_with_version(url, *v)
            .await
            .map_err(|e| Error::Travel {
                table: t.qualified(),
                version: *v,
                source: Box::new(e),
            })?,
        (None, Some(at)) => match deltalake::open_table_with_ds(url, at).await {
            Ok(table) => table,
            Err(_) => return Ok(None),
        },
        (None, None) => deltalake::open_table(url)
            .await
            .map_err(|source| Error::Table {
                table: t.qualified(),
                source: Box::new(source),
            })?,
    };
    Ok(Some(table))
}

/// The definition hash a gold table's last build recorded (`sluice job gold` writes
/// `sluice.gold = sha256:<hex>` into each commit).
async fn last_definition(t: &deltalake::DeltaTable) -> Option<String> {
    use futures::StreamExt;
    let mut history = t.history(Some(50));
    while let Some(commit) = history.next().await {
        let commit = commit.ok()?;
        if let Some(v) = commit.info.get("sluice.gold").and_then(|v| v.as_str()) {
            return Some(v.trim_start_matches("sha256:").to_string());
        }
    }
    None
}

/// What each table is computed from, for a role.
#[derive(Debug, Default)]
struct Derivation {
    /// Tables each table is computed from: the configuration's, the lake's own internal
    /// tables', and each gold table's from the plan of its definition.
    sources: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Each gold table's columns and what they are computed from.
    columns: BTreeMap<String, Vec<(String, std::collections::BTreeSet<lineage::Source>)>>,
    /// Gold tables whose definition is missing or differs from the one they were built with.
    unknown: std::collections::BTreeSet<String>,
}

impl Derivation {
    /// Why the role may not read `qualified`, when it is derived from what the role may
    /// not see.
    fn refuses(&self, a: &access::Access, qualified: &str) -> Option<String> {
        let r = &a.role;
        let hidden = a.hidden_sources(qualified, &self.sources);
        if !hidden.is_empty() {
            let hidden: Vec<_> = hidden.into_iter().collect();
            return Some(format!(
                "it is computed from rows of {} that roles.{r}.row_filters hide; \
                 roles.{r}.allow_derived lists derived tables the role may read",
                hidden.join(", ")
            ));
        }
        (self.unknown.contains(qualified) && !a.allow_derived.iter().any(|t| t == qualified)).then(
            || {
                format!(
                    "its definition is not in sql.gold_dir or changed since it was built, so \
                     what it is computed from is unknown; roles.{r}.allow_derived lists \
                     derived tables the role may read"
                )
            },
        )
    }
}

/// Internal tables computed from the layers' rows: snapshots record counts and
/// checksums of silver and gold tables; dead letters, quarantine and quality results hold
/// bronze rows.
const INTERNAL_SOURCES: [(&str, &[&str]); 5] = [
    ("sluice.snapshots", &["silver", "gold"]),
    ("sluice.snapshot_diffs", &["silver", "gold"]),
    ("sluice.dead_letters", &["bronze"]),
    ("sluice.quarantine", &["bronze"]),
    ("sluice.quality", &["bronze"]),
];

/// The derivations of the lake's tables for `a`: the configuration's, the internal
/// tables', and each gold table's, read from the plan of its definition over every table
/// (and view) of the lake.
async fn derive(a: &access::Access, opened: &[Opened]) -> Result<Derivation> {
    use sha2::Digest;
    let mut d = Derivation::default();
    for (t, from) in &a.sources {
        d.sources
            .entry(t.clone())
            .or_default()
            .extend(from.iter().cloned());
    }
    for (table, layers) in INTERNAL_SOURCES {
        let from = opened
            .iter()
            .filter(|o| layers.contains(&o.table.schema.as_str()))
            .map(|o| o.table.qualified());
        d.sources.entry(table.to_string()).or_default().extend(from);
    }
    let gold: Vec<&Opened> = opened.iter().filter(|o| o.table.schema == "gold").collect();
    if gold.is_empty() {
        return Ok(d);
    }
    // Every table and view, unrestricted: only planned, never run.
    let shadow = SessionContext::new_with_config(session_config()?);
    let catalog = shadow
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Plan("no default catalog".into()))?;
    for schema in LAYERS.iter().map(|(_, s)| *s).chain(["views"]) {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    for o in opened {
        shadow.register_table(
            datafusion::common::TableReference::partial(
                o.table.schema.as_str(),
                o.table.name.as_str(),
            ),
            Arc::new(ReadOnlyTable::new(o.table.qualified(), o.provider.clone())),
        )?;
    }
    if let Some(dir) = &a.views_dir {
        register_views_in(&shadow, dir, None).await?;
    }
    let definitions = match &a.gold_dir {
        Some(dir) => definitions::read_dir(dir)?,
        None => Vec::new(),
    };
    for g in gold {
        let qualified = g.table.qualified();
        let definition = definitions.iter().find(|def| def.name == g.table.name);
        let lineage = match definition {
            Some(def)
                if g.built.as_deref() == Some(&hex(&sha2::Sha256::digest(def.sql.as_bytes()))) =>
            {
                match shadow.state().create_logical_plan(&def.sql).await {
                    Ok(plan) => lineage::of(&plan).ok(),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        match lineage {
            Some(l) => {
                d.sources
                    .entry(qualified.clone())
                    .or_default()
                    .extend(l.tables);
                d.columns.insert(qualified, l.columns);
            }
            None => {
                d.unknown.insert(qualified);
            }
        }
    }
    Ok(d)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuse a role whose `deny_columns` names, as `layer.table.column`, a table of the lake
/// without that column: a misspelt name would deny nothing.
/// Refuse a `deny_columns` entry of `a` that names nothing in a lake holding `all` (of
/// which `opened` are open): a misspelt name would deny nothing. A bare column name must
/// be a column of some table; `<layer>.<table>.<column>[.<field>…]` a table of the lake,
/// a column of it and fields of that column (through lists). An empty lake has nothing to
/// check against.
fn check_denied_paths(a: &access::Access, all: &[TableRef], opened: &[Opened]) -> Result<()> {
    let refuse = |path: &str, why: String| {
        Err(Error::Denied(format!(
            "roles.{}.deny_columns: '{path}' {why}",
            a.role
        )))
    };
    if all.is_empty() {
        return Ok(());
    }
    for path in &a.deny_columns {
        let parts: Vec<&str> = path.split('.').collect();
        match parts.as_slice() {
            [column] => {
                let found = opened
                    .iter()
                    .any(|o| o.provider.schema().field_with_name(column).is_ok());
                if !found && !opened.is_empty() {
                    return refuse(path, "names no column of any table of the lake".into());
                }
            }
            [layer, name, column, fields @ ..] => {
                let table = format!("{layer}.{name}");
                if !all.iter().any(|t| t.qualified() == table) {
                    return refuse(
                        path,
                        format!("names {table}, a table the lake does not hold"),
                    );
                }
                let Some(o) = opened.iter().find(|o| o.table.qualified() == table) else {
                    continue;
                };
                let schema = o.provider.schema();
                let Ok(field) = schema.field_with_name(column) else {
                    return refuse(path, format!("names no column of {table}"));
                };
                let mut at = field.data_type().clone();
                for f in fields {
                    match child_type(&at, f) {
                        Some(t) => at = t,
                        None => {
                            return refuse(
                                path,
                                format!("names no field of column {column} of {table}"),
                            );
                        }
                    }
                }
            }
            // Other shapes are refused with the configuration.
            _ => {}
        }
    }
    Ok(())
}

/// The type of field `name` of a struct of type `t` (inside lists, as many as there are).
fn child_type(t: &arrow::datatypes::DataType, name: &str) -> Option<arrow::datatypes::DataType> {
    use arrow::datatypes::DataType;
    match t {
        DataType::List(item) | DataType::LargeList(item) | DataType::ListView(item) => {
            child_type(item.data_type(), name)
        }
        DataType::FixedSizeList(item, _) => child_type(item.data_type(), name),
        DataType::Struct(fields) => fields.find(name).map(|(_, f)| f.data_type().clone()),
        _ => None,
    }
}

fn url_for(abs: &Path) -> Result<url::Url> {
    url::Url::from_directory_path(abs).map_err(|()| Error::Io {
        path: abs.to_path_buf(),
        source: std::io::Error::other("not an absolute path"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_missing_field_and_table() {
        assert_eq!(
            missing_field("Schema error: No field named c.email. Valid fields are c.segment."),
            Some((Some("c".into()), "email".into()))
        );
        assert_eq!(
            missing_field("Schema error: No field named email.\nValid fields are x."),
            Some((None, "email".into()))
        );
        assert_eq!(
            missing_table("Error during planning: table 'datafusion.bronze.t' not found"),
            Some("bronze.t".into())
        );
    }
}
