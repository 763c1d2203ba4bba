//! The HTTP endpoint of `sluice run`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is alive) and `/readyz` (partitions assigned, and nothing waiting or a
//! recent commit).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluice_pipeline::health::Health;
use sluice_pipeline::metrics::PROCESS_RESIDENT_MEMORY_BYTES;

/// Install the Prometheus recorder (once per process) and serve on `address`.
pub async fn serve(
    address: &str,
    health: Arc<Health>,
    max_commit_age: Duration,
) -> anyhow::Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ])
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} for /metrics"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (handle, health) = (handle.clone(), health.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (handle, health) = (handle.clone(), health.clone());
                    async move { Ok::<_, Infallible>(respond(&req, &handle, &health, max_commit_age)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn respond(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    health: &Health,
    max_commit_age: Duration,
) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match req.uri().path() {
        "/metrics" => {
            let (_, rss) = crate::run::resource_usage();
            metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(current_rss().unwrap_or(rss) as f64);
            (StatusCode::OK, handle.render(), "text/plain; version=0.0.4")
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" => match health.ready(max_commit_age) {
            Ok(()) => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".to_string(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Resident set size now, from /proc (Linux).
fn current_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
