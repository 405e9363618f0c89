//! The `gateway` binary: configuration, telemetry, serve, shutdown on signal.

use anyhow::Context as _;
use clap::Parser;
use gateway::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// jemalloc rather than glibc's malloc: about 4% less CPU per call under load
/// (malloc and free were about a sixth of the runtime thread's time with
/// glibc's), with the memory targets kept (10,000 calls in flight in 89 MB,
/// RSS flat over a million calls; 3 MiB more at idle); see
/// docs/performance.md. The binary only: the library leaves the choice to
/// whoever embeds it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut runtime = match args.runtime_threads(cores) {
        1 => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    runtime.enable_all().build().context("cannot start the async runtime")?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.probe {
        return probe(args.listen).await;
    }
    let telemetry = otel::init("gateway", args.log_format, "info", otel::Spans::WhenExported).context("telemetry")?;
    let result = serve(args, telemetry.policy()).await;
    // Not by drop: on a current-thread runtime (the default on two cores) a
    // blocking flush would starve the exporter's own connection.
    telemetry.shutdown().await;
    result
}

/// Runs the gateway until a signal, then drains it.
async fn serve(args: Args, tracing: otel::w3c::TracePolicy) -> anyhow::Result<()> {
    let metrics_listen = args.metrics_listen;
    let mut config = args.into_config().context("invalid configuration")?;
    config.tracing = tracing;
    if let Some(addr) = metrics_listen {
        otel::serve_prometheus(addr)?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }

    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        broker = %config.amqp.broker,
        routes = ?config.limits.routes,
        default_route = ?config.limits.default_route,
        "gateway starting"
    );
    let mut methods: Vec<_> = config.apis.methods.values().collect();
    methods.sort_by(|a, b| a.name.cmp(&b.name));
    for method in methods {
        tracing::info!(method = %method.name, route = %method.route, encoding = ?method.encoding, "serving typed method");
    }
    for service in &config.apis.uncommented {
        tracing::warn!(
            %service,
            "its descriptor set has no source info: grpcurl describe will show no comments (build the set with \
             buf build, or protoc --include_source_info)"
        );
    }

    let shutdown = CancellationToken::new();
    let running = gateway::spawn(config, listener, shutdown.clone())?;
    let mut serving = std::pin::pin!(running.wait());
    tokio::select! {
        signal = otel::shutdown_signal() => {
            tracing::info!(signal, "shutting down: draining calls in flight");
            shutdown.cancel();
            serving.await?;
        }
        result = &mut serving => result?,
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Asks the gateway at `listen` for its health; succeeds when it is SERVING.
/// An unspecified listen address (`0.0.0.0`) is probed on loopback.
async fn probe(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway on {addr}"))?;
    let request = HealthCheckRequest { service: amqp_gateway::SERVICE_NAME.into() };
    let response = HealthClient::new(channel).check(request).await?;
    let node = response.metadata().get(gateway::health::NODE_HEADER).and_then(|n| n.to_str().ok()).map(str::to_owned);
    let status = response.into_inner().status();
    anyhow::ensure!(status == ServingStatus::Serving, "gateway on {addr} is {status:?}");
    match node {
        Some(node) => println!("SERVING (broker node {node})"),
        None => println!("SERVING"),
    }
    Ok(())
}
