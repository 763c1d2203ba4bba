//! `sluice serve`: the lake over the Postgres wire protocol, so `psql`, BI tools and any
//! Postgres driver can query it.
//!
//! The protocol, the Arrow-to-Postgres encoding, `pg_catalog` and the `SET`/`SHOW` and
//! transaction statements come from `datafusion-postgres` over `pgwire`; this module
//! plans and runs every statement itself so that it can hold what sluice promises:
//!
//! - users with passwords (SCRAM-SHA-256; with TLS also SCRAM-SHA-256-PLUS), each reading
//!   as a role of `[roles]`, so a denied column is absent and selecting it fails naming
//!   the policy, as with `sluice sql --role`;
//! - read-only on what actually runs ([`crate::readonly`]): every statement of the simple
//!   and the extended protocol, `PREPARE`/`EXECUTE`, cursors and `EXPLAIN [ANALYZE]`, is
//!   checked on its parse and on its whole plan before it runs (25006 or 42501);
//! - one session per connection: `SET`, prepared statements and cursors of one user never
//!   reach another. The tables behind them are shared by the users of a role and reopened
//!   when older than the refresh interval, so new versions and new tables show up;
//! - limits: each query's memory (`query_memory_bytes`, drawn from `total_memory_bytes`;
//!   53200 beyond it), a statement timeout (57014), the length of a statement's text
//!   (`max_statement_bytes`, 54000) and how deep it nests (54001), an authentication
//!   timeout, a cap on connections still authenticating per peer and in all (the oldest
//!   is closed when a new one arrives), and `max_connections` counting authenticated
//!   sessions only;
//! - TLS, optional or required.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Declare, DeclareType, Set, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ErrorHandler, METADATA_USER, PgWireConnectionState,
    PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::access::Access;
use crate::limits::{self, TimedOut};
use crate::readonly;
use crate::{Catalog, Deadline, Error, Lake, Limits, Ran, Result, TimeTravel};

/// SCRAM iterations the server asks clients for.
const ITERATIONS: usize = 4096;

/// Where the user's `statement_timeout` is kept (as `datafusion-postgres` keeps it, so
/// its `SHOW statement_timeout` answers).
const METADATA_STATEMENT_TIMEOUT: &str = "statement_timeout_ms";

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
    /// Authenticated sessions at once.
    pub max_connections: usize,
    /// Authenticated sessions of one user at once.
    pub max_connections_per_user: usize,
    /// The longest a statement may run (a user may `SET statement_timeout` lower).
    pub statement_timeout: Duration,
    /// Longer SQL text is refused before it is parsed (54000).
    pub max_statement_bytes: usize,
    /// Memory one query may hold.
    pub query_memory_bytes: usize,
    /// Memory all queries together may hold.
    pub total_memory_bytes: usize,
    /// A connection not authenticated by then is closed.
    pub auth_timeout: Duration,
    /// Connections still authenticating from one address; beyond it the oldest is closed.
    pub max_unauthenticated_per_peer: usize,
    /// Connections still authenticating in all; beyond it the oldest is closed.
    pub max_unauthenticated: usize,
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
    let cert_pem: Option<Arc<[u8]>> = match &settings.tls {
        Some((cert, _)) => Some(
            std::fs::read(cert)
                .map_err(|source| Error::Io {
                    path: cert.clone(),
                    source,
                })?
                .into(),
        ),
        None => None,
    };
    let shared = Arc::new(Shared::new(settings));
    tokio::pin!(stop);
    let mut next_id = 0u64;
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
        next_id += 1;
        let id = next_id;
        let evicted = shared.pending.admit(
            id,
            peer.ip(),
            shared.settings.max_unauthenticated_per_peer,
            shared.settings.max_unauthenticated,
        );
        let (authenticated, is_authenticated) = oneshot::channel();
        let connection = Connection::new(shared.clone(), cert_pem.clone(), authenticated)?;
        let tls = tls.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = pgwire::tokio::process_socket(socket, tls, connection);
            tokio::pin!(conn);
            let admitted = tokio::select! {
                ended = &mut conn => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    false
                }
                _ = is_authenticated => true,
                _ = tokio::time::sleep(shared.settings.auth_timeout) => {
                    tracing::info!(%peer, "connection closed: not authenticated within auth_timeout_ms");
                    false
                }
                _ = evicted => {
                    tracing::info!(%peer, "connection closed: too many connections authenticating");
                    false
                }
            };
            shared.pending.remove(id);
            if admitted && let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<pgwire::tokio::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |path: &Path, e: sluice_pipeline::error::BoxError| Error::Tls {
        path: path.to_path_buf(),
        source: e,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, e.into()))?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| bad(cert, e.into()))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Connections still authenticating, oldest first.
#[derive(Debug, Default)]
struct Pending {
    waiting: Mutex<VecDeque<(u64, IpAddr, oneshot::Sender<()>)>>,
}

impl Pending {
    /// Count connection `id` from `peer` as authenticating, closing the oldest one of the
    /// same peer beyond `per_peer`, and the oldest of all beyond `total`. The receiver
    /// completes when this one is closed so.
    fn admit(&self, id: u64, peer: IpAddr, per_peer: usize, total: usize) -> oneshot::Receiver<()> {
        let (close, closed) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.push_back((id, peer, close));
        if waiting.iter().filter(|w| w.1 == peer).count() > per_peer
            && let Some(oldest) = waiting.iter().position(|w| w.1 == peer)
            && let Some((_, _, close)) = waiting.remove(oldest)
        {
            let _ = close.send(());
        }
        while waiting.len() > total {
            if let Some((_, _, close)) = waiting.pop_front() {
                let _ = close.send(());
            }
        }
        closed
    }

    /// Connection `id` authenticated or ended.
    fn remove(&self, id: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|w| w.0 != id);
    }
}

/// A role's tables: its catalog, shared by the connections of its users until refreshed.
struct Base {
    opened: Instant,
    catalog: Catalog,
}

/// What every connection shares: the users, one base per role, the memory of all queries.
struct Shared {
    settings: Settings,
    /// Salt and salted password by user, derived once.
    secrets: HashMap<String, (Vec<u8>, Vec<u8>)>,
    bases: Mutex<HashMap<String, Arc<Base>>>,
    /// Held while a base is opened, so a burst of queries opens it once.
    opening: tokio::sync::Mutex<()>,
    /// The memory every query also reserves from.
    memory: Arc<dyn MemoryPool>,
    /// Authenticated sessions.
    sessions: Arc<Semaphore>,
    /// Authenticated sessions by user.
    user_sessions: HashMap<String, Arc<Semaphore>>,
    pending: Pending,
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
            memory: Arc::new(GreedyMemoryPool::new(settings.total_memory_bytes)),
            sessions: Arc::new(Semaphore::new(settings.max_connections)),
            user_sessions: settings
                .users
                .keys()
                .map(|name| {
                    let permits = Semaphore::new(settings.max_connections_per_user);
                    (name.clone(), Arc::new(permits))
                })
                .collect(),
            settings,
            secrets,
            bases: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            pending: Pending::default(),
        }
    }

    fn user<C: ClientInfo + ?Sized>(&self, client: &C) -> PgWireResult<&User> {
        let name = client.metadata().get(METADATA_USER).map(String::as_str);
        name.and_then(|n| self.settings.users.get(n))
            .ok_or_else(|| PgWireError::InvalidPassword(name.unwrap_or_default().to_string()))
    }

    /// Bases are shared by the users of a role.
    fn key(user: &User) -> String {
        user.access
            .as_ref()
            .map_or(String::new(), |a| a.role.clone())
    }

    fn cached(&self, key: &str) -> Option<Arc<Base>> {
        let bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        bases.get(key).cloned()
    }

    /// The base of `client`'s role, reopened when older than the refresh interval.
    async fn base<C: ClientInfo + ?Sized>(&self, client: &C) -> PgWireResult<Arc<Base>> {
        let user = self.user(client)?;
        let key = Self::key(user);
        let fresh = |s: &Arc<Base>| s.opened.elapsed() < self.settings.refresh;
        if let Some(s) = self.cached(&key).filter(fresh) {
            return Ok(s);
        }
        let _opening = self.opening.lock().await;
        if let Some(s) = self.cached(&key).filter(fresh) {
            return Ok(s);
        }
        let base = Arc::new(self.open(user).await.map_err(|e| {
            tracing::warn!(error = %e, "opening the lake for a session failed");
            user_error("58000", format!("opening the lake: {e}"))
        })?);
        let mut bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        bases.insert(key, base.clone());
        Ok(base)
    }

    async fn open(&self, user: &User) -> Result<Base> {
        let s = &self.settings;
        let limits = Limits {
            query_memory_bytes: Some(s.query_memory_bytes),
            total_memory: Some(self.memory.clone()),
            // Each statement gets its deadline from its connection.
            statement_timeout: None,
            spill: false,
        };
        let mut catalog =
            Catalog::open_with(&s.lake, user.access.clone(), &TimeTravel::default(), limits)
                .await?;
        for (view, why) in catalog.register_views(&s.views_dir).await?.skipped {
            tracing::debug!(view, reason = %why, "view not registered");
        }
        let ctx = catalog.context();
        setup_pg_catalog(ctx, "datafusion", EmptyContextProvider).map_err(|e| Error::Query(*e))?;
        readonly::keep_safe_table_functions(ctx);
        Ok(Base {
            opened: Instant::now(),
            catalog,
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

/// An error of sluice's SQL layer as the client sees it, with its SQLSTATE.
fn sql_error(e: Error) -> PgWireError {
    user_error(e.sqlstate().unwrap_or("XX000"), e.to_string())
}

/// An error met while reading a query's rows (already scrubbed for a role).
fn row_error(e: &datafusion::error::DataFusionError) -> PgWireError {
    user_error(limits::sqlstate(e).unwrap_or("XX000"), limits::message(e))
}

fn syntax_error(e: impl std::fmt::Display) -> PgWireError {
    user_error("42601", e.to_string())
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
    fn new(
        shared: Arc<Shared>,
        cert_pem: Option<Arc<[u8]>>,
        authenticated: oneshot::Sender<()>,
    ) -> Result<Self> {
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
                scram
                    .configure_certificate(pem)
                    .map_err(|e| Error::ChannelBinding { source: e.into() })?;
            }
            Ok(SASLAuthStartupHandler::new(parameters.clone()).with_scram(scram))
        };
        let logged_in = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = Arc::new(Conn {
            shared: shared.clone(),
            parser: PostgresCompatibilityParser::new(),
            local: tokio::sync::Mutex::new(None),
            logged_in: logged_in.clone(),
        });
        Ok(Self {
            startup: Arc::new(Startup {
                plain: sasl(None)?,
                secure: sasl(cert_pem.as_deref())?,
                require_tls: shared.settings.require_tls,
                shared: shared.clone(),
                password_messages: std::sync::atomic::AtomicUsize::new(0),
                permit: Mutex::new(None),
                authenticated: Mutex::new(Some(authenticated)),
                logged_in,
            }),
            queries: Arc::new(Queries {
                conn: conn.clone(),
                parser: Arc::new(RoleParser { conn }),
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

/// SCRAM authentication, refusing plain connections when TLS is required; a session
/// slot (`max_connections`) is taken at the last step of a login and held until the
/// connection ends.
struct Startup {
    plain: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    secure: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    require_tls: bool,
    shared: Arc<Shared>,
    /// SCRAM's messages from the client: the second (client-final) completes a login.
    password_messages: std::sync::atomic::AtomicUsize,
    /// A session slot in all and one of the user's.
    permit: Mutex<Option<[OwnedSemaphorePermit; 2]>>,
    /// Told once the client is authenticated.
    authenticated: Mutex<Option<oneshot::Sender<()>>>,
    /// Set once the client is authenticated: the connection's queries run only then.
    logged_in: Arc<std::sync::atomic::AtomicBool>,
}

impl Startup {
    fn too_many(&self) -> PgWireError {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "FATAL".to_string(),
            "53300".to_string(),
            format!(
                "too many connections: all {} sessions (max_connections) are in use",
                self.shared.settings.max_connections
            ),
        )))
    }

    fn too_many_of(&self, user: &str) -> PgWireError {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "FATAL".to_string(),
            "53300".to_string(),
            format!(
                "too many connections for user {user}: all {} of its sessions \
                 (max_connections_per_user) are in use",
                self.shared.settings.max_connections_per_user
            ),
        )))
    }

    fn set_permit(&self, permit: Option<[OwnedSemaphorePermit; 2]>) {
        *self.permit.lock().unwrap_or_else(|p| p.into_inner()) = permit;
    }
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
        use std::sync::atomic::Ordering;
        if matches!(message, PgWireFrontendMessage::Startup(_)) {
            if self.require_tls && !client.is_secure() {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".to_string(),
                    "28000".to_string(),
                    "this server requires TLS (sslmode=require)".to_string(),
                ))));
            }
            if self.shared.sessions.available_permits() == 0 {
                return Err(self.too_many());
            }
        }
        let last_step = matches!(message, PgWireFrontendMessage::PasswordMessageFamily(_))
            && self.password_messages.fetch_add(1, Ordering::SeqCst) == 1;
        if last_step {
            let permit = self
                .shared
                .sessions
                .clone()
                .try_acquire_owned()
                .map_err(|_| self.too_many())?;
            // A user not configured fails the login that follows; it takes no slot of
            // anyone's.
            let user = client.metadata().get(METADATA_USER).cloned();
            if let Some((name, slots)) = user
                .as_ref()
                .and_then(|u| Some((u, self.shared.user_sessions.get(u)?)))
            {
                match slots.clone().try_acquire_owned() {
                    Ok(own) => self.set_permit(Some([permit, own])),
                    // Whether a user's sessions are all in use is told only to whoever
                    // proves to be that user: the proof is checked with the answer held
                    // back, and a wrong one gets the answer any wrong proof gets.
                    Err(_) => {
                        drop(permit);
                        let mut held = HeldBack {
                            client,
                            messages: Vec::new(),
                        };
                        let done = if held.client.is_secure() {
                            self.secure.on_startup(&mut held, message).await
                        } else {
                            self.plain.on_startup(&mut held, message).await
                        };
                        let proved = held.messages.iter().any(|m| {
                            matches!(
                                m,
                                PgWireBackendMessage::Authentication(
                                    pgwire::messages::startup::Authentication::Ok
                                )
                            )
                        });
                        if done.is_ok() && proved {
                            client.set_state(PgWireConnectionState::AuthenticationInProgress);
                            return Err(self.too_many_of(name));
                        }
                        let HeldBack { messages, .. } = held;
                        for m in messages {
                            client.feed(m).await?;
                        }
                        client.flush().await?;
                        return done;
                    }
                }
            }
        }
        let done = if client.is_secure() {
            self.secure.on_startup(client, message).await
        } else {
            self.plain.on_startup(client, message).await
        };
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery) && done.is_ok() {
            self.logged_in.store(true, Ordering::SeqCst);
            let told = self
                .authenticated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(tell) = told {
                let _ = tell.send(());
            }
        } else if last_step {
            self.set_permit(None);
        }
        done
    }
}

/// A client whose answers are held back instead of sent, to be sent or dropped once
/// known (see [`Startup::on_startup`]).
struct HeldBack<'a, C> {
    client: &'a mut C,
    messages: Vec<PgWireBackendMessage>,
}

impl<C: ClientInfo> ClientInfo for HeldBack<'_, C> {
    fn socket_addr(&self) -> std::net::SocketAddr {
        self.client.socket_addr()
    }

    fn is_secure(&self) -> bool {
        self.client.is_secure()
    }

    fn protocol_version(&self) -> pgwire::messages::ProtocolVersion {
        self.client.protocol_version()
    }

    fn set_protocol_version(&mut self, version: pgwire::messages::ProtocolVersion) {
        self.client.set_protocol_version(version);
    }

    fn pid_and_secret_key(&self) -> (i32, pgwire::messages::startup::SecretKey) {
        self.client.pid_and_secret_key()
    }

    fn set_pid_and_secret_key(
        &mut self,
        pid: i32,
        secret_key: pgwire::messages::startup::SecretKey,
    ) {
        self.client.set_pid_and_secret_key(pid, secret_key);
    }

    fn state(&self) -> PgWireConnectionState {
        self.client.state()
    }

    fn set_state(&mut self, new_state: PgWireConnectionState) {
        self.client.set_state(new_state);
    }

    fn transaction_status(&self) -> pgwire::messages::response::TransactionStatus {
        self.client.transaction_status()
    }

    fn set_transaction_status(
        &mut self,
        new_status: pgwire::messages::response::TransactionStatus,
    ) {
        self.client.set_transaction_status(new_status);
    }

    fn metadata(&self) -> &std::collections::HashMap<String, String> {
        self.client.metadata()
    }

    fn metadata_mut(&mut self) -> &mut std::collections::HashMap<String, String> {
        self.client.metadata_mut()
    }

    fn session_extensions(&self) -> &pgwire::api::SessionExtensions {
        self.client.session_extensions()
    }

    fn sni_server_name(&self) -> Option<&str> {
        self.client.sni_server_name()
    }

    fn client_certificates<'a>(&self) -> Option<&[rustls_pki_types::CertificateDer<'a>]> {
        self.client.client_certificates()
    }
}

impl<C: Sink<PgWireBackendMessage>> Sink<PgWireBackendMessage> for HeldBack<'_, C> {
    type Error = C::Error;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn start_send(
        self: std::pin::Pin<&mut Self>,
        item: PgWireBackendMessage,
    ) -> Result<(), Self::Error> {
        self.get_mut().messages.push(item);
        Ok(())
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// One connection's own session: its settings, prepared statements and deadline.
struct Local {
    base: Arc<Base>,
    ctx: SessionContext,
    /// `PREPARE` statements run, by name, replayed when the base is refreshed.
    prepared: BTreeMap<String, Statement>,
    /// The user's `statement_timeout`, if set.
    timeout: Option<Duration>,
}

/// What the handlers of one connection share.
struct Conn {
    shared: Arc<Shared>,
    parser: PostgresCompatibilityParser,
    local: tokio::sync::Mutex<Option<Local>>,
    /// Whether the client logged in. A failed login ends the connection, but the
    /// protocol library reads on (a query sent in the same write as a wrong password
    /// would reach the handlers): nothing is parsed or run before it is set.
    logged_in: Arc<std::sync::atomic::AtomicBool>,
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
fn parse_timeout(value: &str) -> Option<Option<Duration>> {
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
fn parameter_types(plan: &LogicalPlan) -> datafusion::error::Result<Vec<Option<DataType>>> {
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
struct Queries {
    conn: Arc<Conn>,
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
struct RoleParser {
    conn: Arc<Conn>,
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
        let Some(base) = self.shared.cached(&Shared::key(user)) else {
            return;
        };
        if let Some(message) = base.catalog.explain_message(&e.to_string()) {
            *error = user_error(readonly::PRIVILEGE, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeout_takes_postgres_units() {
        let ms = |v: &str| parse_timeout(v).map(|t| t.map(|d| d.as_millis()));
        assert_eq!(ms("1500"), Some(Some(1500)));
        assert_eq!(ms("'250ms'"), Some(Some(250)));
        assert_eq!(ms("'2s'"), Some(Some(2000)));
        assert_eq!(ms("'1min'"), Some(Some(60_000)));
        assert_eq!(ms("0"), Some(None));
        assert_eq!(ms("DEFAULT"), Some(None));
        assert_eq!(ms("'soon'"), None);
        assert_eq!(ms("'99999999999999999999h'"), None);
    }

    #[test]
    fn idle_connections_make_room_for_new_ones() {
        let pending = Pending::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let mut first = pending.admit(1, a, 2, 3);
        let mut second = pending.admit(2, a, 2, 3);
        assert!(first.try_recv().is_err() && second.try_recv().is_err());
        // A third from the same peer closes its oldest.
        let mut third = pending.admit(3, a, 2, 3);
        assert!(first.try_recv().is_ok());
        assert!(second.try_recv().is_err() && third.try_recv().is_err());
        // Another peer beyond the total closes the oldest of all.
        pending.admit(4, b, 2, 3);
        pending.admit(5, b, 2, 3);
        assert!(second.try_recv().is_ok());
        pending.remove(3);
        assert_eq!(
            pending.waiting.lock().expect("lock").len(),
            2,
            "authenticated connections no longer count"
        );
    }

    #[test]
    fn parameters_are_numbered_from_one() {
        let ctx = SessionContext::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let plan = runtime
            .block_on(ctx.state().create_logical_plan("select $2 + 1, $1 = 'x'"))
            .expect("plan");
        let types = parameter_types(&plan).expect("types");
        assert_eq!(types.len(), 2);
    }
}
