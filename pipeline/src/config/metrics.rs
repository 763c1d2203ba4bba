//! `[metrics]`: the HTTP endpoint of `sluice run` (`/metrics`, `/healthz`, `/readyz`).
//!
//! ```toml
//! [metrics]
//! address = "0.0.0.0:9898"               # none: no endpoint
//! ready_max_commit_age_seconds = 300     # not ready while messages wait on an older commit
//! ```

use serde::Deserialize;

use super::check::Problem;

/// `[metrics]`: the HTTP endpoint of `sluice run` (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// `host:port` to serve on; none: no endpoint.
    pub address: Option<String>,
    /// How often librdkafka reports consumer lag.
    pub statistics_interval_ms: u64,
    /// `/readyz` fails when messages wait and the last commit is older than this.
    pub ready_max_commit_age_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            address: None,
            statistics_interval_ms: 5_000,
            ready_max_commit_age_seconds: 300,
        }
    }
}

impl MetricsConfig {
    /// Problems of the `[metrics]` section.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(a) = &self.address
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(Problem::new(
                "metrics.address",
                "not an address: give host:port, e.g. 0.0.0.0:9898",
            ));
        }
        p
    }
}
