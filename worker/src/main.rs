//! The `worker` binary: flags to settings ([`worker::cli`]), telemetry, serve
//! one route with a built-in handler, stop on SIGTERM/SIGINT. A configuration
//! that cannot work, or a broker that refuses the worker for good, ends it
//! with a message and a non-zero exit status.

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker::cli::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Args::parse().into_settings().context("invalid configuration")?;
    let _telemetry = otel::init("worker", settings.log_format, "info", otel::Spans::Always).context("telemetry")?;
    if let Some(addr) = settings.metrics_listen {
        otel::serve_prometheus(addr)?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }

    let config = settings.worker;
    tracing::info!(broker = %config.broker, route = %config.queue, handler = ?settings.handler, "worker starting");
    let shutdown = CancellationToken::new();
    let running = worker::spawn(config, settings.handler.into_handler(), shutdown.clone());
    let mut serving = std::pin::pin!(running.wait());
    let stopped = tokio::select! {
        signal = otel::shutdown_signal() => {
            tracing::info!(signal, "shutting down: finishing requests in flight");
            shutdown.cancel();
            serving.await
        }
        stopped = &mut serving => stopped,
    };
    if let Err(error) = &stopped {
        tracing::error!(%error, "worker stopped");
    }
    stopped?;
    tracing::info!("worker stopped");
    Ok(())
}
