//! Read-only SQL: what a statement may do, judged on what actually runs.
//!
//! A session of `sluice sql` or `sluice serve` reads the lake and writes nothing: no
//! table, no file, no object. Three layers hold that, each enough on its own for what
//! the one above it might miss:
//!
//! 1. **The statement** ([`check_statement`]): every statement nested in what was sent
//!    (inside `EXPLAIN`, `PREPARE`, `DECLARE … CURSOR FOR`, a CTE) must be a query or a
//!    session statement (`SET`, `SHOW`, `BEGIN`, cursors, prepared statements).
//! 2. **The plan** ([`check_plan`]): every node of the DataFusion logical plan, subqueries
//!    and the inputs of `EXPLAIN`, `EXPLAIN ANALYZE`, `PREPARE` included, must read.
//!    `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `COPY`, `CREATE`/`DROP` of anything, unknown
//!    extension nodes and settings that reach the runtime (memory, spill directory) are
//!    refused with SQLSTATE 25006 (read-only) or 42501 (privilege).
//! 3. **The objects**: tables are registered as [`ReadOnlyTable`]s whose write methods
//!    refuse, sessions have no table factories (`CREATE EXTERNAL TABLE`) and only
//!    table functions that read no files ([`TABLE_FUNCTIONS`]), and their object stores
//!    come from [`ReadOnlyStores`]: no `file://` store but the lake's own, every store
//!    wrapped so that a put, copy, rename or delete fails.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::{ControlFlow, Range};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Constraints, Statistics};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{Set, Statement, TableFactor, Visit, Visitor};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// SQLSTATE of a write refused: `read_only_sql_transaction`.
pub const READ_ONLY: &str = "25006";
/// SQLSTATE of something the user may not do: `insufficient_privilege`.
pub const PRIVILEGE: &str = "42501";

/// The table functions a session keeps: none of them reads a file or a URL.
pub const TABLE_FUNCTIONS: [&str; 3] = ["generate_series", "range", "pg_get_keywords"];

/// A statement refused, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// [`READ_ONLY`] or [`PRIVILEGE`].
    pub sqlstate: &'static str,
    pub message: String,
}

impl Refusal {
    fn read_only(what: impl std::fmt::Display) -> Self {
        Self {
            sqlstate: READ_ONLY,
            message: format!("the lake is read-only here: {what} is not allowed"),
        }
    }

    fn privilege(message: String) -> Self {
        Self {
            sqlstate: PRIVILEGE,
            message,
        }
    }
}

/// Why a role may not run `EXPLAIN ANALYZE`.
fn no_analyze(role: &str) -> Refusal {
    Refusal::privilege(format!(
        "EXPLAIN ANALYZE is not available to role '{role}': its metrics count rows before the role's row filters"
    ))
}

/// What kind of statement it is: its first keyword, and for `CREATE`, `DROP` and `ALTER`
/// the kind of object (the rest may hold values).
fn kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<String> = text
        .split_whitespace()
        .take(4)
        .map(str::to_uppercase)
        .collect();
    match words.first().map(String::as_str) {
        None => "this statement".to_string(),
        Some(first @ ("CREATE" | "DROP" | "ALTER")) => {
            let object = match words.get(1).map(String::as_str) {
                Some("OR") => words.get(3),
                other => other.map(|_| &words[1]),
            };
            object.map_or(first.to_string(), |o| format!("{first} {o}"))
        }
        Some(first) => first.to_string(),
    }
}

/// Refuses the first statement, at any depth, that is not a query or a session statement.
struct Nested<'a> {
    role: Option<&'a str>,
}

impl Visitor for Nested<'_> {
    type Break = Refusal;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Refusal> {
        match allowed(statement, self.role) {
            Ok(()) => ControlFlow::Continue(()),
            Err(r) => ControlFlow::Break(r),
        }
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Refusal> {
        let name = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => name.to_string(),
            TableFactor::TableFunction { expr, .. } => expr.to_string(),
            _ => return ControlFlow::Continue(()),
        };
        let function = name
            .split('(')
            .next()
            .and_then(|n| n.rsplit('.').next())
            .unwrap_or_default()
            .trim_matches('"')
            .to_lowercase();
        if TABLE_FUNCTIONS.contains(&function.as_str()) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(Refusal::privilege(format!(
                "table function {function} is not available: a session reads the lake's tables only"
            )))
        }
    }
}

fn allowed(statement: &Statement, role: Option<&str>) -> Result<(), Refusal> {
    use Statement as S;
    match statement {
        S::Query(_)
        | S::ExplainTable { .. }
        | S::ShowVariable { .. }
        | S::ShowVariables { .. }
        | S::ShowStatus { .. }
        | S::ShowTables { .. }
        | S::ShowColumns { .. }
        | S::ShowFunctions { .. }
        | S::ShowCatalogs { .. }
        | S::ShowSchemas { .. }
        | S::StartTransaction { .. }
        | S::Commit { .. }
        | S::Rollback { .. }
        | S::Declare { .. }
        | S::Fetch { .. }
        | S::Close { .. }
        | S::Prepare { .. }
        | S::Execute { .. }
        | S::Deallocate { .. }
        | S::Discard { .. } => Ok(()),
        S::Explain {
            analyze, options, ..
        } => {
            let analyze = *analyze
                || options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze")
                        && !o
                            .arg
                            .as_ref()
                            .is_some_and(|a| a.to_string().eq_ignore_ascii_case("false"))
                });
            match role {
                Some(role) if analyze => Err(no_analyze(role)),
                _ => Ok(()),
            }
        }
        S::Set(set) => {
            for name in set_names(set) {
                check_setting(&name)?;
            }
            Ok(())
        }
        other => Err(Refusal::read_only(kind(other))),
    }
}

/// The variables a `SET` assigns.
pub fn set_names(set: &Set) -> Vec<String> {
    match set {
        Set::SingleAssignment { variable, .. } => vec![variable.to_string()],
        Set::ParenthesizedAssignments { variables, .. } => {
            variables.iter().map(ToString::to_string).collect()
        }
        Set::MultipleAssignments { assignments } => {
            assignments.iter().map(|a| a.name.to_string()).collect()
        }
        _ => Vec::new(),
    }
}

/// Refuse `statement` unless it, and every statement inside it, reads or only changes the
/// session; `role` (when the session reads as one) may not run `EXPLAIN ANALYZE`.
pub fn check_statement(statement: &Statement, role: Option<&str>) -> Result<(), Refusal> {
    match statement.visit(&mut Nested { role }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(r) => Err(r),
    }
}

/// [`check_statement`] for DataFusion's own statements (`CREATE EXTERNAL TABLE`, `COPY`,
/// its `EXPLAIN`).
pub fn check_df_statement(
    statement: &datafusion::sql::parser::Statement,
    role: Option<&str>,
) -> Result<(), Refusal> {
    use datafusion::sql::parser::Statement as D;
    match statement {
        D::Statement(s) => check_statement(s, role),
        D::CreateExternalTable(_) => Err(Refusal::read_only("CREATE EXTERNAL TABLE")),
        D::CopyTo(_) => Err(Refusal::read_only("COPY")),
        D::Explain(e) => match role {
            Some(role) if e.options.analyze => Err(no_analyze(role)),
            _ => check_df_statement(&e.statement, role),
        },
        D::Reset(_) => Ok(()),
    }
}

/// Settings a session may change: how plans are optimised and shown, the time zone.
/// Everything else (`datafusion.runtime.*`: memory, the spill directory; the execution's
/// partitions and batch sizes; the parser's recursion limit) stays as the server set it.
const SETTINGS: [&str; 6] = [
    "datafusion.optimizer.",
    "datafusion.explain.",
    "datafusion.format.",
    "datafusion.execution.time_zone",
    "datafusion.execution.parquet.pushdown_filters",
    "datafusion.execution.parquet.reorder_filters",
];

/// Refuse setting `name` unless it is a Postgres session setting (the protocol layer
/// handles or ignores those) or one of [`SETTINGS`].
pub fn check_setting(name: &str) -> Result<(), Refusal> {
    let name = name.trim_matches('"').to_ascii_lowercase();
    if !name.starts_with("datafusion.") || SETTINGS.iter().any(|s| name.starts_with(s)) {
        return Ok(());
    }
    Err(Refusal::privilege(format!(
        "setting {name} cannot be changed in this session"
    )))
}

/// Refuse `plan` unless every node of it (subqueries, and the inputs of `EXPLAIN`,
/// `EXPLAIN ANALYZE` and `PREPARE`, included) reads; a role may not run `EXPLAIN ANALYZE`.
pub fn check_plan(plan: &LogicalPlan, role: Option<&str>) -> Result<(), Refusal> {
    let mut refusal = None;
    let walked = plan.apply_with_subqueries(|node| match node_allowed(node, role) {
        Ok(()) => Ok(TreeNodeRecursion::Continue),
        Err(r) => {
            refusal = Some(r);
            Ok(TreeNodeRecursion::Stop)
        }
    });
    if let Err(e) = walked {
        // A plan that cannot be walked is not run.
        return Err(Refusal::read_only(format!(
            "a plan that cannot be checked ({e})"
        )));
    }
    refusal.map_or(Ok(()), Err)
}

fn node_allowed(node: &LogicalPlan, role: Option<&str>) -> Result<(), Refusal> {
    use datafusion::logical_expr::Statement as S;
    match node {
        LogicalPlan::Dml(d) => Err(Refusal::read_only(format!(
            "{} ({})",
            d.op.name().to_uppercase(),
            d.table_name
        ))),
        LogicalPlan::Ddl(d) => Err(Refusal::read_only(d.name())),
        LogicalPlan::Copy(_) => Err(Refusal::read_only("COPY")),
        // Sluice registers no extension nodes: an unknown one may write.
        LogicalPlan::Extension(e) => Err(Refusal::read_only(format!("a {} plan", e.node.name()))),
        LogicalPlan::Analyze(_) => match role {
            Some(role) => Err(no_analyze(role)),
            None => Ok(()),
        },
        LogicalPlan::Statement(S::SetVariable(s)) => check_setting(&s.variable),
        LogicalPlan::Statement(S::ResetVariable(s)) => check_setting(&s.variable),
        LogicalPlan::Statement(
            S::TransactionStart(_)
            | S::TransactionEnd(_)
            | S::Prepare(_)
            | S::Execute(_)
            | S::Deallocate(_),
        ) => Ok(()),
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Window(_)
        | LogicalPlan::Aggregate(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Union(_)
        | LogicalPlan::TableScan(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::Subquery(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Values(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Distinct(_)
        | LogicalPlan::DescribeTable(_)
        | LogicalPlan::Unnest(_)
        | LogicalPlan::RecursiveQuery(_) => Ok(()),
    }
}

/// Remove every table function but [`TABLE_FUNCTIONS`] from `ctx`.
pub fn keep_safe_table_functions(ctx: &datafusion::prelude::SessionContext) {
    let names: Vec<String> = ctx.state().table_functions().keys().cloned().collect();
    for name in names {
        if !TABLE_FUNCTIONS.contains(&name.as_str()) {
            ctx.deregister_udtf(&name);
        }
    }
}

/// A table that reads like the one it wraps and refuses every write.
#[derive(Debug)]
pub struct ReadOnlyTable {
    name: String,
    inner: Arc<dyn TableProvider>,
}

impl ReadOnlyTable {
    /// `inner`, known as `name` (`layer.table`) in errors.
    pub fn new(name: impl Into<String>, inner: Arc<dyn TableProvider>) -> Self {
        Self {
            name: name.into(),
            inner,
        }
    }

    fn refuse(&self, what: &str) -> DataFusionError {
        DataFusionError::External(Box::new(Refusal::read_only(format!(
            "{what} ({})",
            self.name
        ))))
    }
}

#[async_trait]
impl TableProvider for ReadOnlyTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.refuse("INSERT"))
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.refuse("DELETE"))
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.refuse("UPDATE"))
    }

    async fn truncate(
        &self,
        _state: &dyn Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.refuse("TRUNCATE"))
    }
}

/// The object stores of a session: only those registered for the lake's tables (no
/// `file://` store of its own), each read-only.
#[derive(Debug, Default)]
pub struct ReadOnlyStores {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

/// `scheme://host:port` of `url`, as DataFusion keys its stores.
fn store_key(url: &url::Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

impl ObjectStoreRegistry for ReadOnlyStores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        stores.insert(store_key(url), Arc::new(ReadOnlyStore(store)))
    }

    fn get_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        stores.get(&store_key(url)).cloned().ok_or_else(|| {
            DataFusionError::External(Box::new(Refusal::privilege(format!(
                "{}: a session reads the lake's tables only",
                store_key(url)
            ))))
        })
    }
}

/// An object store that lists and reads, and refuses every change.
#[derive(Debug)]
pub struct ReadOnlyStore(pub Arc<dyn ObjectStore>);

impl std::fmt::Display for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadOnly({})", self.0)
    }
}

fn refused_change(path: &Path) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: path.to_string(),
        source: Box::new(Refusal::read_only("a change to the lake's storage")),
    }
}

#[async_trait]
impl ObjectStore for ReadOnlyStore {
    async fn put_opts(
        &self,
        location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(refused_change(location))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(refused_change(location))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations
            .map(|l| l.and_then(|p| Err(refused_change(&p))))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(refused_change(to))
    }

    async fn rename_opts(
        &self,
        _from: &Path,
        to: &Path,
        _options: RenameOptions,
    ) -> object_store::Result<()> {
        Err(refused_change(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    /// Why `sql` would be refused (Postgres dialect), as `sqlstate: message`.
    fn refused(sql: &str, role: Option<&str>) -> Option<String> {
        let statements = PostgresCompatibilityParser::new()
            .parse(sql)
            .unwrap_or_else(|e| panic!("{sql} does not parse: {e}"));
        statements
            .iter()
            .find_map(|s| check_statement(s, role).err())
            .map(|r| format!("{}: {}", r.sqlstate, r.message))
    }

    #[test]
    fn writes_are_refused_at_any_depth_of_a_statement() {
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SET application_name = 'x'",
            "SET datafusion.explain.format = 'tree'",
            "SHOW timezone",
            "BEGIN",
            "COMMIT",
            "PREPARE q(INT) AS SELECT $1",
            "EXECUTE q(1)",
            "DECLARE c CURSOR FOR SELECT 1",
            "FETCH 1 FROM c",
            "CLOSE c",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT * FROM pg_catalog.generate_series(1, 3) AS g(x)",
        ] {
            assert_eq!(refused(ok, None), None, "{ok}");
        }
        for (bad, what) in [
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO 'x.csv'", "COPY"),
            ("EXPLAIN INSERT INTO bronze.t VALUES (1)", "INSERT"),
            (
                "PREPARE p AS INSERT INTO bronze.t SELECT * FROM bronze.t",
                "INSERT",
            ),
            (
                "WITH a AS (SELECT 1) INSERT INTO bronze.t SELECT * FROM a",
                "INSERT",
            ),
            (
                "WITH a AS (DELETE FROM bronze.t RETURNING *) SELECT * FROM a",
                "DELETE",
            ),
            (
                "DECLARE c CURSOR FOR WITH a AS (UPDATE t SET x = 1 RETURNING x) SELECT * FROM a",
                "UPDATE",
            ),
            ("UPDATE bronze.t SET x = 'secret-value'", "UPDATE"),
            (
                "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
                "MERGE",
            ),
            ("DROP TABLE bronze.t", "DROP TABLE"),
            ("CREATE VIEW v AS SELECT 'secret-value'", "CREATE VIEW"),
            ("CREATE TABLE x AS SELECT 1", "CREATE TABLE"),
            ("ALTER TABLE t ADD COLUMN c INT", "ALTER TABLE"),
            ("TRUNCATE bronze.t", "TRUNCATE"),
            (
                "CREATE FUNCTION f() RETURNS INT AS 'select 1' LANGUAGE SQL",
                "CREATE FUNCTION",
            ),
            ("VACUUM", "VACUUM"),
        ] {
            let e = refused(bad, None).unwrap_or_else(|| panic!("{bad} allowed"));
            assert!(e.starts_with("25006: "), "{bad}: {e}");
            assert!(e.contains(&format!("{what} is not allowed")), "{bad}: {e}");
            assert!(!e.contains("secret-value"), "{e}");
        }
        // Table functions that could read a file or a URL.
        for bad in [
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM x.read_parquet('s3://bucket/f.parquet') AS t",
            "SELECT * FROM (SELECT 1) a, LATERAL read_json('/tmp/j') AS b",
        ] {
            let e = refused(bad, None).unwrap_or_else(|| panic!("{bad} allowed"));
            assert!(e.starts_with("42501: table function read_"), "{e}");
        }
        // A role: no EXPLAIN ANALYZE, however it is spelled.
        for bad in [
            "EXPLAIN ANALYZE SELECT 1",
            "EXPLAIN (ANALYZE) SELECT 1",
            "EXPLAIN (ANALYZE true, VERBOSE) SELECT 1",
        ] {
            let e = refused(bad, Some("analyst")).unwrap_or_else(|| panic!("{bad} allowed"));
            assert!(e.starts_with("42501: EXPLAIN ANALYZE"), "{e}");
        }
        assert_eq!(refused("EXPLAIN SELECT 1", Some("analyst")), None);
    }

    #[test]
    fn settings_that_reach_the_runtime_are_refused() {
        for ok in [
            "statement_timeout",
            "application_name",
            "datafusion.optimizer.max_passes",
            "datafusion.execution.time_zone",
            "\"datafusion.explain.show_statistics\"",
        ] {
            assert_eq!(check_setting(ok), Ok(()), "{ok}");
        }
        for bad in [
            "datafusion.runtime.temp_directory",
            "DATAFUSION.RUNTIME.MEMORY_LIMIT",
            "datafusion.execution.target_partitions",
            "datafusion.execution.batch_size",
            "datafusion.sql_parser.recursion_limit",
            "datafusion.catalog.location",
        ] {
            let e = check_setting(bad).expect_err(bad);
            assert_eq!(e.sqlstate, PRIVILEGE);
        }
        let e = refused("SET datafusion.runtime.temp_directory = '/tmp/x'", None).expect("refused");
        assert!(e.starts_with("42501: "), "{e}");
    }

    #[tokio::test]
    async fn every_plan_that_writes_is_refused() {
        use datafusion::prelude::SessionContext;
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS SELECT 1 AS x")
            .await
            .expect("table");
        let plan = |sql: &str| {
            let ctx = ctx.clone();
            let sql = sql.to_string();
            async move { ctx.state().create_logical_plan(&sql).await.expect(&sql) }
        };
        for ok in [
            "SELECT x FROM t WHERE x IN (SELECT x FROM t)",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN ANALYZE SELECT * FROM t",
            "PREPARE q(INT) AS SELECT x + $1 FROM t",
            "SET datafusion.explain.format = 'tree'",
        ] {
            assert_eq!(check_plan(&plan(ok).await, None), Ok(()), "{ok}");
        }
        for (bad, code) in [
            ("INSERT INTO t VALUES (2)", READ_ONLY),
            ("EXPLAIN INSERT INTO t VALUES (2)", READ_ONLY),
            ("EXPLAIN ANALYZE INSERT INTO t SELECT * FROM t", READ_ONLY),
            ("PREPARE p AS INSERT INTO t SELECT * FROM t", READ_ONLY),
            ("EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO 'x.csv'", READ_ONLY),
            ("COPY t TO 'x.csv'", READ_ONLY),
            ("DELETE FROM t", READ_ONLY),
            ("UPDATE t SET x = 3", READ_ONLY),
            ("CREATE VIEW v AS SELECT 1", READ_ONLY),
            (
                "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
                READ_ONLY,
            ),
            ("DROP TABLE t", READ_ONLY),
            ("SET datafusion.runtime.temp_directory = '/tmp'", PRIVILEGE),
        ] {
            let e = check_plan(&plan(bad).await, None).expect_err(bad);
            assert_eq!(e.sqlstate, code, "{bad}: {e}");
        }
        let e = check_plan(&plan("EXPLAIN ANALYZE SELECT * FROM t").await, Some("r"))
            .expect_err("role");
        assert_eq!(e.sqlstate, PRIVILEGE);
    }

    /// The tables themselves refuse every change, whatever reaches them past the
    /// statement and plan checks: DataFusion runs these statements straight against them.
    #[tokio::test]
    async fn read_only_tables_refuse_every_change_that_reaches_them() {
        use datafusion::datasource::MemTable;
        use datafusion::prelude::SessionContext;
        let ctx = SessionContext::new();
        let source = ctx
            .sql("SELECT 1 AS x")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("rows");
        let schema = source[0].schema();
        let inner = Arc::new(MemTable::try_new(schema, vec![source]).expect("table"));
        ctx.register_table("t", Arc::new(ReadOnlyTable::new("bronze.t", inner)))
            .expect("registered");
        for write in [
            "INSERT INTO t VALUES (2)",
            "INSERT INTO t SELECT x + 1 FROM t",
            "DELETE FROM t",
            "DELETE FROM t WHERE x = 1",
            "UPDATE t SET x = 3",
            "TRUNCATE TABLE t",
        ] {
            let ran = async { ctx.sql(write).await?.collect().await };
            let e = ran.await.expect_err(write);
            let refusal = refusal_in(&e).unwrap_or_else(|| panic!("{write}: {e}"));
            assert_eq!(refusal.sqlstate, READ_ONLY, "{write}: {e}");
            assert!(refusal.message.contains("bronze.t"), "{write}: {e}");
        }
        let rows = ctx
            .sql("SELECT count(*) AS n, min(x) AS x FROM t")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("rows");
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
            .expect("shown")
            .to_string();
        assert!(shown.contains("| 1 | 1 |"), "{shown}");
    }

    /// The refusal inside `e`, however DataFusion wrapped it.
    fn refusal_in(e: &DataFusionError) -> Option<&Refusal> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Refusal>() {
                return Some(r);
            }
            if let Some(DataFusionError::External(inner)) = s.downcast_ref::<DataFusionError>()
                && let Some(r) = inner.downcast_ref::<Refusal>()
            {
                return Some(r);
            }
            source = s.source();
        }
        None
    }

    #[tokio::test]
    async fn stores_read_and_refuse_every_change() {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("a"), b"lake").expect("file");
        let local =
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local");
        let registry = ReadOnlyStores::default();
        let url = url::Url::parse("file:///").expect("url");
        let other = url::Url::parse("s3://bucket/x").expect("url");
        assert!(
            registry.get_store(&url).is_err(),
            "no file:// store of its own"
        );
        registry.register_store(&url, Arc::new(local));
        let store = registry.get_store(&url).expect("registered");
        assert!(registry.get_store(&other).is_err());
        let a = Path::from("a");
        let got = store
            .get(&a)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(&got[..], b"lake");
        assert!(
            store
                .put(&Path::from("b"), PutPayload::from("x"))
                .await
                .is_err()
        );
        assert!(store.delete(&a).await.is_err());
        assert!(store.copy(&a, &Path::from("c")).await.is_err());
        assert!(store.rename(&a, &Path::from("d")).await.is_err());
        assert!(store.put_multipart(&Path::from("e")).await.is_err());
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        assert_eq!(names, vec!["a"]);
    }
}
