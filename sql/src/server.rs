//! `sluice serve`: the lake over the Postgres wire protocol, so `psql`, BI tools and any
//! Postgres driver can query it.
//!
//! The protocol, the Arrow-to-Postgres encoding, `pg_catalog` and the `SET`/`SHOW`,
//! transaction and cursor statements come from `datafusion-postgres` over `pgwire`;
//! this module adds what sluice needs around it:
//!
//! - users with passwords (SCRAM-SHA-256; with TLS also SCRAM-SHA-256-PLUS), each reading
//!   as a role of `[roles]`, so a denied column is absent and selecting it fails naming
//!   the policy, as with `sluice sql --role`;
//! - one session per role, reopened when older than the refresh interval so new table
//!   versions and new tables show up;
//! - read-only: only queries and session statements run (no `CREATE EXTERNAL TABLE`
//!   reading the server's files, no `COPY … TO` writing them);
//! - TLS, optional or required; a connection limit.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use crate::Lake;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::Sink;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ErrorHandler, METADATA_USER, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

use crate::access::Access;
use crate::{Catalog, Error, Result};

/// SCRAM iterations the server asks clients for.
const ITERATIONS: usize = 4096;

/// The statement type of the extended protocol (the SQL, and its parse and plan).
type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// Who may connect and what they read.
#[derive(Debug, Clone)]
pub struct User {
    pub password: String,
    /// The role's limits; none: every table, every column.
    pub access: Option<Access>,
}

/// What `sluice serve` serves, and how.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lake: Lake,
    /// View definitions registered in every session.
    pub views_dir: PathBuf,
    pub users: BTreeMap<String, User>,
    /// Certificate chain and private key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub require_tls: bool,
    /// Sessions older than this are reopened.
    pub refresh: Duration,
    pub max_connections: usize,
}

/// Serve `settings` on `listener` until `stop` completes.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let cert_pem = match &settings.tls {
        Some((cert, _)) => Some(std::fs::read(cert).map_err(|source| Error::Io {
            path: cert.clone(),
            source,
        })?),
        None => None,
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let shared = Arc::new(Shared::new(settings));
    let template = DfSessionService::new(Arc::new(SessionContext::new())).query_parser();
    tokio::pin!(stop);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            continue;
        };
        let connection = Connection::new(shared.clone(), template.clone(), cert_pem.as_deref())?;
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<pgwire::tokio::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad =
        |path: &Path, e: &dyn std::fmt::Display| Error::Serve(format!("{}: {e}", path.display()));
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, &e))?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| bad(cert, &e))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A role's session: its catalog (for explaining denials) and the service over it.
struct Session {
    opened: Instant,
    catalog: Catalog,
    service: Arc<DfSessionService>,
}

/// What every connection shares: the users, and one session per role.
struct Shared {
    settings: Settings,
    /// Salt and salted password by user, derived once.
    secrets: HashMap<String, (Vec<u8>, Vec<u8>)>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Held while a session is opened, so a burst of queries opens it once.
    opening: tokio::sync::Mutex<()>,
}

impl Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords.
        f.debug_struct("Shared")
            .field("users", &self.settings.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Shared {
    fn new(settings: Settings) -> Self {
        let secrets = settings
            .users
            .iter()
            .map(|(name, u)| {
                let mut salt = vec![0u8; 16];
                // A fixed salt would do as well: it only has to be the same for one login.
                if getrandom::fill(&mut salt).is_err() {
                    salt = name.as_bytes().to_vec();
                }
                let salted = gen_salted_password(&u.password, &salt, ITERATIONS);
                (name.clone(), (salt, salted))
            })
            .collect();
        Self {
            settings,
            secrets,
            sessions: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn user<C: ClientInfo + ?Sized>(&self, client: &C) -> PgWireResult<&User> {
        let name = client.metadata().get(METADATA_USER).map(String::as_str);
        name.and_then(|n| self.settings.users.get(n))
            .ok_or_else(|| PgWireError::InvalidPassword(name.unwrap_or_default().to_string()))
    }

    /// Sessions are shared by the users of a role.
    fn key(user: &User) -> String {
        user.access
            .as_ref()
            .map_or(String::new(), |a| a.role.clone())
    }

    fn cached(&self, key: &str) -> Option<Arc<Session>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(key).cloned()
    }

    /// The session of `client`'s role, reopened when older than the refresh interval.
    async fn session<C: ClientInfo + ?Sized>(&self, client: &C) -> PgWireResult<Arc<Session>> {
        let user = self.user(client)?;
        let key = Self::key(user);
        let fresh = |s: &Arc<Session>| s.opened.elapsed() < self.settings.refresh;
        if let Some(s) = self.cached(&key).filter(fresh) {
            return Ok(s);
        }
        let _opening = self.opening.lock().await;
        if let Some(s) = self.cached(&key).filter(fresh) {
            return Ok(s);
        }
        let session = Arc::new(self.open(user).await.map_err(|e| {
            tracing::warn!(error = %e, "opening the lake for a session failed");
            user_error("58000", format!("opening the lake: {e}"))
        })?);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.insert(key, session.clone());
        Ok(session)
    }

    async fn open(&self, user: &User) -> Result<Session> {
        let s = &self.settings;
        let catalog = Catalog::open_as(&s.lake, user.access.clone()).await?;
        for (view, why) in catalog.register_views(&s.views_dir).await?.skipped {
            tracing::debug!(view, reason = %why, "view not registered");
        }
        let ctx = catalog.context().clone();
        setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider).map_err(|e| Error::Query(*e))?;
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnly),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let service = Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks));
        Ok(Session {
            opened: Instant::now(),
            catalog,
            service,
        })
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

#[async_trait]
impl AuthSource for Shared {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self.secrets.get(user) {
            Some((salt, salted)) => Ok(Password::new(Some(salt.clone()), salted.clone())),
            None => {
                tracing::info!("login refused: unknown user");
                Err(PgWireError::InvalidPassword(user.to_string()))
            }
        }
    }
}

/// The handlers of one connection.
struct Connection {
    startup: Arc<Startup>,
    queries: Arc<Queries>,
    errors: Arc<Explain>,
}

impl Connection {
    fn new(shared: Arc<Shared>, template: Arc<Parser>, cert_pem: Option<&[u8]>) -> Result<Self> {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.6 (sluice {})", env!("CARGO_PKG_VERSION"));
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        let parameters = Arc::new(parameters);
        // The SASL handler keeps its state per connection: one per connection. Channel
        // binding (SCRAM-SHA-256-PLUS) may only be offered over TLS.
        let sasl = |pem: Option<&[u8]>| -> Result<_> {
            let mut scram = ScramAuth::new(shared.clone());
            scram.set_iterations(ITERATIONS);
            if let Some(pem) = pem {
                scram.configure_certificate(pem).map_err(|e| {
                    Error::Serve(format!("certificate for SCRAM channel binding: {e}"))
                })?;
            }
            Ok(SASLAuthStartupHandler::new(parameters.clone()).with_scram(scram))
        };
        Ok(Self {
            startup: Arc::new(Startup {
                plain: sasl(None)?,
                secure: sasl(cert_pem)?,
                require_tls: shared.settings.require_tls,
            }),
            queries: Arc::new(Queries {
                parser: Arc::new(RoleParser {
                    shared: shared.clone(),
                    template,
                }),
                shared: shared.clone(),
            }),
            errors: Arc::new(Explain { shared }),
        })
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        self.errors.clone()
    }
}

/// SCRAM authentication, refusing plain connections when TLS is required.
struct Startup {
    plain: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    secure: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    require_tls: bool,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.require_tls
            && !client.is_secure()
            && matches!(message, PgWireFrontendMessage::Startup(_))
        {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_string(),
                "28000".to_string(),
                "this server requires TLS (sslmode=require)".to_string(),
            ))));
        }
        if client.is_secure() {
            self.secure.on_startup(client, message).await
        } else {
            self.plain.on_startup(client, message).await
        }
    }
}

/// Queries of one connection, run in its role's session.
struct Queries {
    shared: Arc<Shared>,
    parser: Arc<RoleParser>,
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
        let session = self.shared.session(client).await?;
        SimpleQueryHandler::do_query(session.service.as_ref(), client, query).await
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
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.shared.session(client).await?;
        ExtendedQueryHandler::do_query(session.service.as_ref(), client, portal, max_rows).await
    }
}

/// Parses (and plans) a statement in the session of the client's role.
struct RoleParser {
    shared: Arc<Shared>,
    /// Describing a parsed statement needs only the statement: any parser does.
    template: Arc<Parser>,
}

#[async_trait]
impl QueryParser for RoleParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = self.shared.session(client).await?;
        session
            .service
            .query_parser()
            .parse_sql(client, sql, types)
            .await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.template.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.template.get_result_schema(stmt, column_format)
    }
}

/// Says a column or table the role may not read is denied (naming the policy), where
/// DataFusion only sees it missing.
struct Explain {
    shared: Arc<Shared>,
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
        let Some(session) = self.shared.cached(&Shared::key(user)) else {
            return;
        };
        if let Some(message) = session.catalog.explain_message(&e.to_string()) {
            *error = user_error("42501", message);
        }
    }
}

/// Refuses every statement but queries and session statements: the endpoint reads.
struct ReadOnly;

impl ReadOnly {
    fn refuse(statement: &Statement) -> Option<PgWireError> {
        use Statement as S;
        let allowed = matches!(
            statement,
            S::Query(_)
                | S::Explain { .. }
                | S::ExplainTable { .. }
                | S::ShowVariable { .. }
                | S::ShowVariables { .. }
                | S::ShowStatus { .. }
                | S::ShowTables { .. }
                | S::ShowColumns { .. }
                | S::ShowFunctions { .. }
                | S::ShowCatalogs { .. }
                | S::ShowSchemas { .. }
                | S::Set(_)
                | S::StartTransaction { .. }
                | S::Commit { .. }
                | S::Rollback { .. }
                | S::Declare { .. }
                | S::Fetch { .. }
                | S::Close { .. }
                | S::Prepare { .. }
                | S::Execute { .. }
                | S::Deallocate { .. }
                | S::Discard { .. }
        );
        if allowed {
            return None;
        }
        // The first keyword only: the rest may hold values.
        let text = statement.to_string();
        let kind = text.split_whitespace().next().unwrap_or("this statement");
        Some(user_error(
            "25006",
            format!("sluice serve is read-only: {kind} is not allowed"),
        ))
    }
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::refuse(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Self::refuse(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    /// Why the server would not run `sql`: it does not parse, or it is refused.
    fn refused(sql: &str) -> Option<String> {
        match PostgresCompatibilityParser::new().parse(sql) {
            Ok(statements) => ReadOnly::refuse(&statements[0]).map(|e| format!("{e:?}")),
            Err(e) => Some(format!("does not parse: {e}")),
        }
    }

    #[test]
    fn only_queries_and_session_statements_run() {
        // DataFusion's own DDL does not even parse as Postgres.
        assert!(refused("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'").is_some());
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "SET application_name = 'x'",
            "SHOW timezone",
            "BEGIN",
            "COMMIT",
            "PREPARE q(INT) AS SELECT $1",
            "EXECUTE q(1)",
        ] {
            assert_eq!(refused(ok), None, "{ok}");
        }
        for (bad, kind) in [
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("INSERT INTO bronze.t VALUES (1)", "INSERT"),
            ("DROP TABLE bronze.t", "DROP"),
            ("CREATE VIEW v AS SELECT 'secret-value'", "CREATE"),
        ] {
            let e = refused(bad).unwrap_or_else(|| panic!("{bad} allowed"));
            assert!(!e.starts_with("does not parse"), "{e}");
            assert!(e.contains(&format!("{kind} is not allowed")), "{e}");
            assert!(!e.contains("secret-value") && !e.contains("passwd"), "{e}");
        }
    }
}
