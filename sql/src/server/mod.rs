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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ErrorHandler, METADATA_USER, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::access::Access;
use crate::limits::{self};
use crate::readonly;
use crate::{Catalog, Error, Lake, Limits, Result, TimeTravel};

mod session;
mod startup;

use session::{Conn, Explain, Queries, RoleParser};
#[cfg(test)]
use session::{parameter_types, parse_timeout};
use startup::{Pending, Startup};

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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use std::net::IpAddr;

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
