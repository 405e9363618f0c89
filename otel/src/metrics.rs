//! Prometheus metrics: the `metrics` facade's recorder, scraped over HTTP.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Histogram buckets for durations in seconds: 250 µs to 60 s, fine where a
/// broker round trip usually lands.
const SECONDS_BUCKETS: &[f64] =
    &[0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}")]
pub struct MetricsError {
    addr: SocketAddr,
    source: metrics_exporter_prometheus::BuildError,
}

/// Installs the global metrics recorder and serves its Prometheus text
/// format on `addr` (any path, e.g. `/metrics`). Call from within a Tokio
/// runtime: the HTTP listener runs as a task on it.
pub fn serve_prometheus(addr: SocketAddr) -> Result<(), MetricsError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(SECONDS_BUCKETS)
        .and_then(PrometheusBuilder::install)
        .map_err(|source| MetricsError { addr, source })
}
