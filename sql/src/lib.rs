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
mod error;
mod explain;
pub mod limits;
pub mod lineage;
pub mod readonly;
pub mod restricted;
mod role;
pub mod server;
mod tables;
mod views;

pub use error::{Error, Result};
pub use views::Views;

use role::{Derivation, Restriction, check_denied_paths, derive, last_definition, restrict};
pub use tables::{LAYERS, TableRef, find_tables, find_tables_in};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub use sluice_pipeline::lake::Lake;

use arrow::array::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;

use crate::limits::{Guarded, QueryPool, TimedOut};
use crate::readonly::{ReadOnlyStores, ReadOnlyTable};

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

    /// The DataFusion session, for serving it over another protocol.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Columns the session's role may not read.
    pub fn denied(&self) -> &[access::Denied] {
        &self.denied
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
