//! `[serve]`: the Postgres wire-protocol endpoint of `sluice serve`.
//!
//! ```toml
//! [serve]
//! address = "127.0.0.1:5433"
//! tls_cert = "tls/server.crt"      # PEM; with tls_key, clients may (or must) use TLS
//! tls_key = "tls/server.key"       # PEM, PKCS#8, PKCS#1 or SEC1
//! require_tls = false              # refuse clients that do not ask for TLS
//! refresh_seconds = 10             # how old a session's table versions may get
//! max_connections = 64             # authenticated sessions at once
//! max_connections_per_user = 16    # authenticated sessions of one user at once
//! statement_timeout_ms = 300000    # a statement running longer is cancelled (57014)
//! max_statement_bytes = 4194304    # longer SQL text is refused (54000)
//! query_memory_bytes = 536870912   # one query's memory (53200 beyond it)
//! total_memory_bytes = 2147483648  # all queries' memory together
//! auth_timeout_ms = 10000          # a connection not logged in by then is closed
//! max_unauthenticated_per_peer = 8 # logins in progress from one address (oldest closed)
//! max_unauthenticated = 256        # logins in progress in all (oldest closed)
//!
//! [serve.users.ana]
//! role = "analyst"                 # [roles.analyst] applies; none: every table and column
//! password_env = "SLUICE_PASSWORD_ANA"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::check::{Problem, is_identifier};

/// `[serve]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// `host:port` to listen on.
    pub address: String,
    /// Server certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Private key of the certificate (PEM).
    pub tls_key: Option<PathBuf>,
    /// Refuse connections that do not use TLS.
    pub require_tls: bool,
    /// A query reads the tables as they were at most this many seconds ago: sessions
    /// are reopened (new table versions, new tables) when older.
    pub refresh_seconds: u64,
    /// Authenticated sessions beyond this many are refused (SQLSTATE 53300); connections
    /// still logging in do not count.
    pub max_connections: usize,
    /// Authenticated sessions of one user beyond this many are refused (53300), so one
    /// user (or one leaked password) cannot take every session.
    pub max_connections_per_user: usize,
    /// A statement (planning and reading its rows) running longer is cancelled; a user
    /// may `SET statement_timeout` lower, not higher.
    pub statement_timeout_ms: u64,
    /// SQL text longer than this is refused (SQLSTATE 54000) before it is parsed: parsing
    /// and planning take many times a statement's size in memory, outside any query's.
    pub max_statement_bytes: usize,
    /// Memory one query may hold in the operators that buffer (sorts, joins, aggregates,
    /// windows); beyond it the query fails with SQLSTATE 53200. Nothing spills to disk.
    pub query_memory_bytes: usize,
    /// Memory all queries together may hold.
    pub total_memory_bytes: usize,
    /// A connection that has not logged in within this time is closed.
    pub auth_timeout_ms: u64,
    /// Connections still logging in from one address; a new one closes the oldest.
    pub max_unauthenticated_per_peer: usize,
    /// Connections still logging in from all addresses; a new one closes the oldest.
    pub max_unauthenticated: usize,
    /// Who may connect, by user name.
    pub users: BTreeMap<String, ServeUser>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:5433".into(),
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            refresh_seconds: 10,
            max_connections: 64,
            max_connections_per_user: 16,
            statement_timeout_ms: 300_000,
            max_statement_bytes: 4 * 1024 * 1024,
            query_memory_bytes: 512 * 1024 * 1024,
            total_memory_bytes: 2 * 1024 * 1024 * 1024,
            auth_timeout_ms: 10_000,
            max_unauthenticated_per_peer: 8,
            max_unauthenticated: 256,
            users: BTreeMap::new(),
        }
    }
}

/// `[serve.users.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeUser {
    /// The role of `[roles]` the user reads as; none: every table, every column.
    pub role: Option<String>,
    /// Environment variable holding the user's password.
    pub password_env: String,
}

impl ServeConfig {
    /// Problems of the `[serve]` section; `known_role` tells the roles of `[roles]`.
    pub(crate) fn validate(&self, known_role: &dyn Fn(&str) -> bool) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            p.push(Problem::new(
                "serve.address",
                "not an address: give host:port, e.g. 0.0.0.0:5433",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            p.push(Problem::new(
                "serve.tls_key",
                "tls_cert and tls_key go together",
            ));
        }
        if self.require_tls && self.tls_cert.is_none() {
            p.push(Problem::new(
                "serve.require_tls",
                "needs tls_cert and tls_key",
            ));
        }
        if self.refresh_seconds == 0 {
            p.push(Problem::new("serve.refresh_seconds", "must be at least 1"));
        }
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_user",
                self.max_connections_per_user as u64,
            ),
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("max_statement_bytes", self.max_statement_bytes as u64),
            ("query_memory_bytes", self.query_memory_bytes as u64),
            ("auth_timeout_ms", self.auth_timeout_ms),
            (
                "max_unauthenticated_per_peer",
                self.max_unauthenticated_per_peer as u64,
            ),
            ("max_unauthenticated", self.max_unauthenticated as u64),
        ] {
            if value == 0 {
                p.push(Problem::new(format!("serve.{key}"), "must be at least 1"));
            }
        }
        if self.total_memory_bytes < self.query_memory_bytes {
            p.push(Problem::new(
                "serve.total_memory_bytes",
                "must be at least query_memory_bytes",
            ));
        }
        for (name, user) in &self.users {
            let at = format!("serve.users.{name}");
            if !is_identifier(name) {
                p.push(Problem::new(
                    &at,
                    "a user name is an identifier (a-z, 0-9, _)",
                ));
            }
            if let Some(role) = &user.role
                && !known_role(role)
            {
                p.push(Problem::new(
                    format!("{at}.role"),
                    format!("no role '{role}' in [roles]"),
                ));
            }
            if user.password_env.trim().is_empty() {
                p.push(Problem::new(
                    format!("{at}.password_env"),
                    "name the environment variable holding the password",
                ));
            }
        }
        p
    }

    /// Each user's password, read from the environment; a variable that is not set (or
    /// empty) is a problem naming the user and the variable, never a value.
    pub fn passwords(&self) -> Result<BTreeMap<String, String>, Vec<Problem>> {
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, user) in &self.users {
            match std::env::var(&user.password_env) {
                Ok(v) if !v.is_empty() => {
                    out.insert(name.clone(), v);
                }
                _ => problems.push(Problem::new(
                    format!("serve.users.{name}.password_env"),
                    format!("environment variable {} is not set", user.password_env),
                )),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn users_name_known_roles_and_tls_comes_in_pairs() {
        let problems = Config::from_toml(
            r#"
            [kafka]
            bootstrap_servers = "localhost:9092"
            topics = ["t"]
            [roles.analyst]
            tables = ["gold"]
            [serve]
            address = "nowhere"
            tls_cert = "c.pem"
            query_memory_bytes = 1000
            total_memory_bytes = 10
            statement_timeout_ms = 0
            [serve.users.ana]
            role = "analyst"
            password_env = "A"
            [serve.users.bob]
            role = "auditor"
            password_env = ""
            "#,
        )
        .expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.starts_with("serve.address")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with("serve.tls_key")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t == "serve.users.bob.role: no role 'auditor' in [roles]"),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("serve.users.bob.password_env")),
            "{text:?}"
        );
        assert!(!text.iter().any(|t| t.contains("users.ana")), "{text:?}");
        for key in ["serve.total_memory_bytes", "serve.statement_timeout_ms"] {
            assert!(text.iter().any(|t| t.starts_with(key)), "{key}: {text:?}");
        }
        // Limits have units in their names; a misspelt one is an error, not a default.
        let unknown = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopics = [\"t\"]\n\
             [serve]\nstatement_timeout = 5\n",
        );
        assert!(unknown.is_err(), "an unknown [serve] key is refused");
    }
}
