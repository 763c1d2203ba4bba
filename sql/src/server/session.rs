//! One connection's session: its own settings, prepared statements and cursors over
//! its role's shared tables, every statement parsed, checked read-only on its plan and
//! run under the connection's deadline and the query's memory pool.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Declare, DeclareType, Set, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use futures::{Sink, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ErrorHandler, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use super::{
    Base, DfStatement, METADATA_STATEMENT_TIMEOUT, Shared, row_error, sql_error, syntax_error,
    user_error,
};
use crate::limits::{self, TimedOut};
use crate::readonly;
use crate::{Deadline, Error, Ran};

/// One connection's own session: its settings, prepared statements and deadline.
pub(super) struct Local {
    base: Arc<Base>,
    ctx: SessionContext,
    /// `PREPARE` statements run, by name, replayed when the base is refreshed.
    prepared: BTreeMap<String, Statement>,
    /// The user's `statement_timeout`, if set.
    timeout: Option<Duration>,
}

/// What the handlers of one connection share.
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) parser: PostgresCompatibilityParser,
    pub(super) local: tokio::sync::Mutex<Option<Local>>,
    /// Whether the client logged in. A failed login ends the connection, but the
    /// protocol library reads on (a query sent in the same write as a wrong password
    /// would reach the handlers): nothing is parsed or run before it is set.
    pub(super) logged_in: Arc<std::sync::atomic::AtomicBool>,
}

impl Conn {
    fn check_logged_in(&self) -> PgWireResult<()> {
        if self.logged_in.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_string(),
                "28000".to_string(),
                "not logged in".to_string(),
            ))))
        }
    }

    fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        self.check_logged_in()?;
        // Parsing and planning take many times the text's size, outside any query's pool.
        let most = self.shared.settings.max_statement_bytes;
        if sql.len() > most {
            return Err(user_error(
                limits::TOO_LONG,
                format!(
                    "the statement is {} bytes long, more than max_statement_bytes ({most})",
                    sql.len()
                ),
            ));
        }
        // Before any syntax tree: one too deep overflows the stack of whatever walks it.
        limits::check_nesting(sql).map_err(|r| sql_error(r.into()))?;
        self.parser.parse(sql).map_err(syntax_error)
    }

    /// The connection's session over the current base of its role (created on first
    /// use; moved onto a refreshed base with its settings and prepared statements).
    async fn session<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
    ) -> PgWireResult<(Arc<Base>, SessionContext, Option<Deadline>)> {
        self.check_logged_in()?;
        let base = self.shared.base(client).await?;
        let mut local = self.local.lock().await;
        match local.as_mut() {
            Some(l) if Arc::ptr_eq(&l.base, &base) => {}
            Some(l) => {
                let ctx = base.catalog.session();
                *ctx.state_ref().write().config_mut() = l.ctx.copied_config();
                let mut kept = BTreeMap::new();
                for (name, statement) in std::mem::take(&mut l.prepared) {
                    if let Ok(plan) = base.catalog.plan(&ctx, &statement).await
                        && base.catalog.run(&ctx, plan, None).await.is_ok()
                    {
                        kept.insert(name, statement);
                    }
                }
                l.prepared = kept;
                l.base = base.clone();
                l.ctx = ctx;
            }
            None => {
                *local = Some(Local {
                    ctx: base.catalog.session(),
                    base: base.clone(),
                    prepared: BTreeMap::new(),
                    timeout: None,
                });
            }
        }
        let l = local
            .as_ref()
            .ok_or_else(|| user_error("XX000", "no session".into()))?;
        let limit = self.shared.settings.statement_timeout;
        let timeout = l.timeout.map_or(limit, |t| t.min(limit));
        let deadline = Some((tokio::time::Instant::now() + timeout, timeout));
        Ok((base, l.ctx.clone(), deadline))
    }

    /// Plan `statement` in the connection's session, within `deadline`.
    async fn plan(
        &self,
        base: &Base,
        ctx: &SessionContext,
        statement: &Statement,
        deadline: Option<Deadline>,
    ) -> PgWireResult<LogicalPlan> {
        let planned = match deadline {
            Some((at, after)) => tokio::time::timeout_at(at, base.catalog.plan(ctx, statement))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Sql {
                        sqlstate: limits::CANCELED,
                        message: TimedOut(after.as_millis()).to_string(),
                    })
                }),
            None => base.catalog.plan(ctx, statement).await,
        };
        planned.map_err(sql_error)
    }

    /// Run a checked plan and answer with its rows or its command tag; remember a
    /// `PREPARE` (and forget a `DEALLOCATE`d one).
    async fn execute(
        &self,
        client: &dyn HookClient,
        (base, ctx, deadline): (&Base, &SessionContext, Option<Deadline>),
        statement: &Statement,
        plan: LogicalPlan,
        format: &Format,
    ) -> PgWireResult<Response> {
        let ran = base
            .catalog
            .run(ctx, plan, deadline)
            .await
            .map_err(sql_error)?;
        match statement {
            Statement::Prepare { name, .. } => {
                if let Some(l) = self.local.lock().await.as_mut() {
                    l.prepared.insert(name.value.clone(), statement.clone());
                }
            }
            Statement::Deallocate { name, .. } => {
                if let Some(l) = self.local.lock().await.as_mut() {
                    l.prepared.remove(&name.value);
                }
            }
            _ => {}
        }
        match ran {
            Ran::Done(tag) => Ok(Response::Execution(Tag::new(tag))),
            Ran::Rows(rows) => Ok(Response::Query(encode(rows, format, client)?)),
        }
    }

    /// `SET`: the names were checked with the statement; `statement_timeout` is kept
    /// here (capped by the server's), the rest as `datafusion-postgres` does.
    async fn set(
        &self,
        client: &mut dyn HookClient,
        ctx: &SessionContext,
        statement: &Statement,
        set: &Set,
        extended: bool,
    ) -> PgWireResult<Response> {
        if let Set::SingleAssignment {
            variable, values, ..
        } = set
            && variable
                .to_string()
                .eq_ignore_ascii_case("statement_timeout")
        {
            let value = values.first().map(ToString::to_string).unwrap_or_default();
            let timeout = parse_timeout(&value).ok_or_else(|| {
                user_error(
                    "22023",
                    format!("invalid value for statement_timeout: {value}"),
                )
            })?;
            if let Some(l) = self.local.lock().await.as_mut() {
                l.timeout = timeout;
            }
            match timeout {
                Some(t) => client
                    .metadata_mut()
                    .insert(METADATA_STATEMENT_TIMEOUT.into(), t.as_millis().to_string()),
                None => client.metadata_mut().remove(METADATA_STATEMENT_TIMEOUT),
            };
            return Ok(Response::Execution(Tag::new("SET")));
        }
        let answered = if extended {
            SetShowHook
                .handle_extended_query(statement, &empty_plan(), &no_params(), ctx, client)
                .await
        } else {
            SetShowHook
                .handle_simple_query(statement, ctx, client)
                .await
        };
        answered.unwrap_or_else(|| Ok(Response::Execution(Tag::new("SET"))))
    }

    /// `DECLARE … CURSOR FOR <query>`: the query checked and started, its rows kept in a
    /// portal of this connection for `FETCH`. It must finish within the statement's
    /// deadline.
    async fn declare(
        &self,
        client: &mut dyn HookClient,
        base: &Base,
        ctx: &SessionContext,
        declares: &[Declare],
        deadline: Option<Deadline>,
    ) -> PgWireResult<Response> {
        for d in declares {
            let (Some(DeclareType::Cursor), Some(name), Some(query)) =
                (&d.declare_type, d.names.first(), &d.for_query)
            else {
                return Err(syntax_error("DECLARE needs a cursor name and FOR <query>"));
            };
            let statement = Statement::Query(query.clone());
            let plan = self.plan(base, ctx, &statement, deadline).await?;
            let Ran::Rows(rows) = base
                .catalog
                .run(ctx, plan, deadline)
                .await
                .map_err(sql_error)?
            else {
                return Err(syntax_error("a cursor is declared for a query"));
            };
            let response = encode(rows, &Format::UnifiedText, client)?;
            let stored = Arc::new(StoredStatement::new(
                name.value.clone(),
                (query.to_string(), None),
                vec![],
            ));
            let portal = Portal::new_cursor(name.value.clone(), stored);
            portal.start(response).await;
            client.portal_store().put_portal(Arc::new(portal));
        }
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }

    /// One statement of the simple protocol.
    async fn simple(
        &self,
        client: &mut dyn HookClient,
        statement: &Statement,
    ) -> PgWireResult<Response> {
        let (base, ctx, deadline) = self.session(&*client).await?;
        if let Some(answer) = TransactionStatementHook
            .handle_simple_query(statement, &ctx, client)
            .await
        {
            return answer;
        }
        readonly::check_statement(statement, base.catalog.role())
            .map_err(|r| sql_error(r.into()))?;
        match statement {
            Statement::Set(set) => return self.set(client, &ctx, statement, set, false).await,
            Statement::Declare { stmts } => {
                return self.declare(client, &base, &ctx, stmts, deadline).await;
            }
            Statement::ShowVariable { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. } => {
                let answered = match statement {
                    Statement::Fetch { .. } | Statement::Close { .. } => {
                        CursorStatementHook
                            .handle_simple_query(statement, &ctx, client)
                            .await
                    }
                    _ => {
                        SetShowHook
                            .handle_simple_query(statement, &ctx, client)
                            .await
                    }
                };
                if let Some(answer) = answered {
                    return answer;
                }
            }
            _ => {}
        }
        let plan = self.plan(&base, &ctx, statement, deadline).await?;
        self.execute(
            client,
            (&base, &ctx, deadline),
            statement,
            plan,
            &Format::UnifiedText,
        )
        .await
    }

    /// One portal of the extended protocol: planned again in the connection's current
    /// session (checked again), its parameters bound, run.
    async fn extended(
        &self,
        client: &mut dyn HookClient,
        portal: &Portal<DfStatement>,
    ) -> PgWireResult<Response> {
        let (_, Some((statement, parsed))) = &portal.statement.statement else {
            return Ok(Response::EmptyQuery);
        };
        let (base, ctx, deadline) = self.session(&*client).await?;
        if let Some(answer) = TransactionStatementHook
            .handle_extended_query(statement, parsed, &no_params(), &ctx, client)
            .await
        {
            return answer;
        }
        readonly::check_statement(statement, base.catalog.role())
            .map_err(|r| sql_error(r.into()))?;
        match statement {
            Statement::Set(set) => return self.set(client, &ctx, statement, set, true).await,
            Statement::Declare { stmts } => {
                return self.declare(client, &base, &ctx, stmts, deadline).await;
            }
            Statement::ShowVariable { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. } => {
                let answered = match statement {
                    Statement::Fetch { .. } | Statement::Close { .. } => {
                        CursorStatementHook
                            .handle_extended_query(statement, parsed, &no_params(), &ctx, client)
                            .await
                    }
                    _ => {
                        SetShowHook
                            .handle_extended_query(statement, parsed, &no_params(), &ctx, client)
                            .await
                    }
                };
                if let Some(answer) = answered {
                    return answer;
                }
            }
            _ => {}
        }
        let plan = self.plan(&base, &ctx, statement, deadline).await?;
        let types = parameter_types(&plan).map_err(|e| sql_error(Error::Query(e)))?;
        let wire: Vec<Type> = types
            .iter()
            .map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type))
            .collect::<PgWireResult<_>>()?;
        let inferred: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
        let wire: Vec<Option<&Type>> = wire.iter().map(Some).collect();
        let params = deserialize_parameters_with_server_types(portal, &inferred, &wire)?;
        let plan = plan
            .replace_params_with_values(&params)
            .map_err(|e| sql_error(Error::Query(e)))?;
        self.execute(
            client,
            (&base, &ctx, deadline),
            statement,
            plan,
            &portal.result_column_format,
        )
        .await
    }
}

/// The plan of a statement answered without one.
fn empty_plan() -> LogicalPlan {
    LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(datafusion::common::DFSchema::empty()),
    })
}

fn no_params() -> ParamValues {
    ParamValues::List(Vec::new())
}

/// `statement_timeout` as Postgres takes it: milliseconds, or a number with `ms`, `s`,
/// `min` or `h`; `0` or `DEFAULT`: none (the server's own limit).
pub(super) fn parse_timeout(value: &str) -> Option<Option<Duration>> {
    let v = value
        .trim()
        .trim_matches('\'')
        .trim_matches('"')
        .trim()
        .to_lowercase();
    if v == "default" {
        return Some(None);
    }
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => number,
        "s" => number.checked_mul(1_000)?,
        "min" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some((ms > 0).then(|| Duration::from_millis(ms)))
}

/// The types of `$1`, `$2`, … in `plan`, in order (unknown where it cannot tell).
pub(super) fn parameter_types(
    plan: &LogicalPlan,
) -> datafusion::error::Result<Vec<Option<DataType>>> {
    let named = plan.get_parameter_types()?;
    let index = |name: &str| name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok());
    let count = named.keys().filter_map(|n| index(n)).max().unwrap_or(0);
    let mut types = vec![None; count];
    for (name, t) in named {
        if let Some(i) = index(&name).filter(|i| *i >= 1) {
            types[i - 1] = t;
        }
    }
    Ok(types)
}

/// Rows as the client asked for them (text or binary per column).
fn encode(
    rows: datafusion::execution::SendableRecordBatchStream,
    format: &Format,
    client: &(dyn HookClient + '_),
) -> PgWireResult<QueryResponse> {
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields: Arc<Vec<FieldInfo>> = Arc::new(arrow_schema_to_pg_fields(
        rows.schema().as_ref(),
        format,
        Some(options),
    )?);
    let for_rows = fields.clone();
    let data = rows
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> = match batch {
                Ok(b) => encode_recordbatch(for_rows.clone(), b),
                Err(e) => Box::new(std::iter::once(Err(row_error(&e)))),
            };
            futures::stream::iter(rows)
        })
        .flatten();
    Ok(QueryResponse::new(fields, data))
}

/// Queries of one connection, run in its own session.
pub(super) struct Queries {
    pub(super) conn: Arc<Conn>,
    pub(super) parser: Arc<RoleParser>,
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.conn.parse(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in &statements {
            responses.push(self.conn.simple(client, statement).await?);
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = DfStatement;
    type QueryParser = RoleParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.conn.extended(client, portal).await
    }
}

/// Parses and plans a statement of the extended protocol in the connection's session,
/// refusing it at `Parse` when it writes.
pub(super) struct RoleParser {
    pub(super) conn: Arc<Conn>,
}

#[async_trait]
impl QueryParser for RoleParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let Some(statement) = self.conn.parse(sql)?.into_iter().next() else {
            return Ok(None);
        };
        let (base, ctx, deadline) = self.conn.session(client).await?;
        readonly::check_statement(&statement, base.catalog.role())
            .map_err(|r| sql_error(r.into()))?;
        // Session statements are answered at Execute, without a plan of their own.
        let hooks: [&dyn QueryHook; 3] = [
            &TransactionStatementHook,
            &SetShowHook,
            &CursorStatementHook,
        ];
        for hook in hooks {
            if let Some(plan) = hook
                .handle_extended_parse_query(&statement, &ctx, client)
                .await
            {
                return Ok(Some((statement.to_string(), Some((statement, plan?)))));
            }
        }
        let plan = self.conn.plan(&base, &ctx, &statement, deadline).await?;
        Ok(Some((statement.to_string(), Some((statement, plan)))))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        let (_, Some((_, plan))) = stmt else {
            return Ok(Vec::new());
        };
        parameter_types(plan)
            .map_err(|e| sql_error(Error::Query(e)))?
            .iter()
            .map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type))
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt {
            (_, Some((_, plan)))
                if !matches!(
                    plan,
                    LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_)
                ) =>
            {
                arrow_schema_to_pg_fields(
                    plan.schema().as_arrow(),
                    column_format.unwrap_or(&Format::UnifiedText),
                    None,
                )
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// Says a column or table the role may not read is denied (naming the policy), where
/// DataFusion only sees it missing.
pub(super) struct Explain {
    pub(super) shared: Arc<Shared>,
}

impl ErrorHandler for Explain {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        let PgWireError::ApiError(e) = error else {
            return;
        };
        let Ok(user) = self.shared.user(client) else {
            return;
        };
        let Some(base) = self.shared.cached(&Shared::key(user)) else {
            return;
        };
        if let Some(message) = base.catalog.explain_message(&e.to_string()) {
            *error = user_error(readonly::PRIVILEGE, message);
        }
    }
}
