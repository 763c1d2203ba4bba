//! Logging in: SCRAM (with TLS, SCRAM-SHA-256-PLUS), TLS required or optional, the
//! cap on connections still authenticating (per peer and in all) and the session slots
//! of `max_connections`, taken only once a login completes.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::{ClientInfo, METADATA_USER, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::Shared;
use crate::Result;

/// Connections still authenticating, oldest first.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) waiting: Mutex<VecDeque<(u64, IpAddr, oneshot::Sender<()>)>>,
}

impl Pending {
    /// Count connection `id` from `peer` as authenticating, closing the oldest one of the
    /// same peer beyond `per_peer`, and the oldest of all beyond `total`. The receiver
    /// completes when this one is closed so.
    pub(super) fn admit(
        &self,
        id: u64,
        peer: IpAddr,
        per_peer: usize,
        total: usize,
    ) -> oneshot::Receiver<()> {
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
    pub(super) fn remove(&self, id: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|w| w.0 != id);
    }
}

/// SCRAM authentication, refusing plain connections when TLS is required; a session
/// slot (`max_connections`) is taken at the last step of a login and held until the
/// connection ends.
pub(super) struct Startup {
    pub(super) plain: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    pub(super) secure: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    pub(super) require_tls: bool,
    pub(super) shared: Arc<Shared>,
    /// SCRAM's messages from the client: the second (client-final) completes a login.
    pub(super) password_messages: std::sync::atomic::AtomicUsize,
    /// A session slot in all and one of the user's.
    pub(super) permit: Mutex<Option<[OwnedSemaphorePermit; 2]>>,
    /// Told once the client is authenticated.
    pub(super) authenticated: Mutex<Option<oneshot::Sender<()>>>,
    /// Set once the client is authenticated: the connection's queries run only then.
    pub(super) logged_in: Arc<std::sync::atomic::AtomicBool>,
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
