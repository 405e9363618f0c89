//! The `worker` binary: serves one route with a built-in handler.

use std::time::Duration;

use amqp_gateway::broker::{AmqpUrl, Broker};
use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use worker::{QueueType, WorkerConfig, handlers};

/// Command-line flags of the `worker` binary.
#[derive(Debug, Parser)]
#[command(name = "worker", version, about = "AMQP worker answering gateway requests with a built-in handler")]
struct Args {
    /// AMQP URL of the broker (the password is never logged).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    amqp_url: AmqpUrl,

    /// PEM file of CA certificates to trust for `amqps://` instead of the
    /// system's roots.
    #[arg(long, env = "AMQP_CA_FILE")]
    amqp_ca_file: Option<std::path::PathBuf>,

    /// Route to serve: the queue consumed (declared if missing).
    #[arg(long, env = "WORKER_ROUTE", default_value = "echo")]
    route: String,

    /// Built-in handler.
    #[arg(long, env = "WORKER_HANDLER", value_enum, default_value_t = Handler::Echo)]
    handler: Handler,

    /// Status code the `fail` handler answers with (0-16).
    #[arg(long, env = "WORKER_FAIL_CODE", default_value_t = 14)]
    fail_code: i32,

    /// Delay before answering, to play a slow worker (echo handler).
    #[arg(long, env = "WORKER_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,

    /// Requests handled at once (AMQP prefetch).
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 16)]
    prefetch: u16,

    /// Declare the queue durable (must match an existing queue's declaration).
    #[arg(long, env = "WORKER_DURABLE", default_value_t = true, action = clap::ArgAction::Set)]
    durable: bool,

    /// Declare the queue; with false it must already exist (declared by
    /// operations with their own arguments and policies).
    #[arg(long, env = "WORKER_DECLARE_QUEUE", default_value_t = true, action = clap::ArgAction::Set)]
    declare_queue: bool,

    /// Queue type: classic, or quorum (replicated in a cluster, durable,
    /// with a delivery limit for poison messages).
    #[arg(long, env = "WORKER_QUEUE_TYPE", value_enum, default_value_t = QueueKind::Classic)]
    queue_type: QueueKind,

    /// Quorum queues: deliveries after which a message is dead-lettered (or
    /// dropped) instead of delivered again.
    #[arg(long, env = "WORKER_DELIVERY_LIMIT", default_value_t = 5)]
    delivery_limit: u32,

    /// Queue receiving messages the route's queue gives up on (rejected, over
    /// the delivery limit, expired); declared beside it. Off when unset.
    #[arg(long, env = "WORKER_DEAD_LETTER_QUEUE")]
    dead_letter_queue: Option<String>,

    /// Largest request body handled; larger ones are answered
    /// RESOURCE_EXHAUSTED without running the handler.
    #[arg(long, env = "WORKER_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,

    /// How long requests in flight may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// Serve Prometheus metrics over HTTP on this address (any path, e.g.
    /// `/metrics`). Off when unset.
    #[arg(long, env = "WORKER_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    log_format: otel::LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum QueueKind {
    /// A classic queue.
    Classic,
    /// A quorum queue.
    Quorum,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Handler {
    /// Replies with the request's payload, content type and headers.
    Echo,
    /// Answers every request with the status `--fail-code`.
    Fail,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = otel::init("worker", args.log_format, "info", otel::ContextActivation::On).context("telemetry")?;
    anyhow::ensure!(args.prefetch > 0, "--prefetch must be greater than zero");
    if let Some(addr) = args.metrics_listen {
        otel::serve_prometheus(addr)?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }

    let ca_pem = match &args.amqp_ca_file {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("AMQP CA file {}", path.display()))?),
        None => None,
    };
    let config = WorkerConfig {
        broker: Broker { url: args.amqp_url, ca_pem },
        queue: args.route,
        prefetch: args.prefetch,
        durable: args.durable,
        declare: args.declare_queue,
        queue_type: match args.queue_type {
            QueueKind::Classic => QueueType::Classic,
            QueueKind::Quorum => QueueType::Quorum,
        },
        delivery_limit: args.delivery_limit,
        dead_letter_queue: args.dead_letter_queue,
        max_body_bytes: args.max_body_bytes,
        shutdown_grace: args.shutdown_grace,
    };
    tracing::info!(broker = %config.broker.url, route = %config.queue, handler = ?args.handler, "worker starting");
    let handler = match args.handler {
        Handler::Echo => handlers::echo(args.delay),
        Handler::Fail => {
            let code = worker::Code::from_i32(args.fail_code);
            handlers::fail(worker::Status::new(code, format!("the worker is configured to fail with {code:?}")))
        }
    };

    let shutdown = CancellationToken::new();
    let running = worker::spawn(config, handler, shutdown.clone());
    let mut serving = std::pin::pin!(running.wait());
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: finishing requests in flight");
            shutdown.cancel();
            serving.await?;
        }
        result = &mut serving => result?,
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the worker with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
