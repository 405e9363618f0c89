//! The `gateway` binary: configuration, telemetry, serve, shutdown on signal.

use anyhow::Context as _;
use clap::Parser;
use gateway::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = otel::init("gateway", args.log_format, "info").context("telemetry")?;
    let metrics_listen = args.metrics_listen;
    let config = args.into_config().context("invalid configuration")?;
    if let Some(addr) = metrics_listen {
        otel::serve_prometheus(addr)?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }

    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        broker = %config.amqp.url,
        routes = ?config.limits.routes,
        default_route = ?config.limits.default_route,
        "gateway starting"
    );

    let shutdown = CancellationToken::new();
    let running = gateway::spawn(config, listener, shutdown.clone())?;
    let mut serving = std::pin::pin!(running.wait());
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: draining calls in flight");
            shutdown.cancel();
            serving.await?;
        }
        result = &mut serving => result?,
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
