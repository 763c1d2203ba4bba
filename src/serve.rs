//! `sluice serve`: the lake over the Postgres wire protocol, users and TLS from `[serve]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_pipeline::config::Config;
use sluice_pipeline::lake::Lake;
use sluice_sql::server::{Settings, User};

/// Serve `lake` as `[serve]` says (its address overridden by `address`) until `stop`.
pub async fn serve(
    config: &Config,
    lake: &Lake,
    address: Option<&str>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let s = &config.serve;
    if s.users.is_empty() {
        anyhow::bail!(
            "no users: add [serve.users.<name>] with password_env (and a role) to the configuration"
        );
    }
    let passwords = config.serve.passwords().map_err(|problems| {
        anyhow::anyhow!(
            "{}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let mut users = std::collections::BTreeMap::new();
    for (name, u) in &s.users {
        let access = match &u.role {
            Some(role) => Some(crate::access_for(Some(config), role)?),
            None => None,
        };
        let password = passwords.get(name).cloned().unwrap_or_default();
        users.insert(name.clone(), User { password, access });
    }
    // Each role's tables are opened once before the server listens: a role its
    // configuration cannot apply to this lake (a `deny_columns` entry naming nothing, a
    // row filter that does not plan) stops the start instead of every query of its users.
    let mut checked = std::collections::BTreeSet::new();
    for user in users.values() {
        if let Some(a) = &user.access
            && checked.insert(a.role.clone())
        {
            sluice_sql::Catalog::open_as(lake.clone(), Some(a.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("role '{}': {e}", a.role))?;
        }
    }
    let address = address.unwrap_or(&s.address);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {address}: {e}"))?;
    let local = listener.local_addr()?;
    let tls = match (&s.tls_cert, s.require_tls) {
        (None, _) => "no TLS",
        (Some(_), false) => "TLS optional",
        (Some(_), true) => "TLS required",
    };
    // The one line scripts wait for (tests read the port from it).
    println!(
        "sluice serve: listening on {local} ({tls}; {} user(s)); psql \"host={} port={} user=<user> dbname=lake\"",
        users.len(),
        local.ip(),
        local.port()
    );
    let settings = Settings {
        lake: lake.clone(),
        views_dir: config.sql.views_dir.clone(),
        users,
        tls: s.tls_cert.clone().zip(s.tls_key.clone()),
        require_tls: s.require_tls,
        refresh: Duration::from_secs(s.refresh_seconds),
        max_connections: s.max_connections,
        max_connections_per_user: s.max_connections_per_user,
        statement_timeout: Duration::from_millis(s.statement_timeout_ms),
        max_statement_bytes: s.max_statement_bytes,
        query_memory_bytes: s.query_memory_bytes,
        total_memory_bytes: s.total_memory_bytes,
        auth_timeout: Duration::from_millis(s.auth_timeout_ms),
        max_unauthenticated_per_peer: s.max_unauthenticated_per_peer,
        max_unauthenticated: s.max_unauthenticated,
    };
    let stopped = async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    sluice_sql::server::serve(settings, listener, stopped).await?;
    Ok(())
}
