//! `loadgen`: drives load through the gateway (`Process`, or a typed method
//! of its own tiny API), or the same request/reply straight over AMQP, and
//! reports calls/s, latency percentiles and errors by code. `loadgen bench`
//! runs them side by side.
//!
//! # Layout
//!
//! - `main.rs` (here): arguments, and the report of a single run.
//! - `mode`: the modes behind one call.
//! - `driver`: the closed-loop load shared by every mode.
//! - `gateway`: gateway mode (tonic client).
//! - `typed`: the typed modes: loadgen's `loadgen.v1.Echo` API (its
//!   descriptor set, built in code) and tonic's generic client.
//! - `amqp`: the raw modes (lapin, Direct Reply-to).
//! - `report`: the latency histogram, the table and the JSON.
//! - `bench`: the side-by-side benchmark against processes it starts;
//!   `procfs` reads their CPU time and memory, `chart` draws the SVG.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/loadgen --mode gateway --target 127.0.0.1:50051 --route echo --duration 10s
//! target/release/loadgen descriptor-set echo.binpb   # for a gateway serving the typed modes
//! target/release/loadgen bench
//! ```

mod amqp;
mod bench;
mod chart;
mod driver;
mod gateway;
mod mode;
mod procfs;
mod report;
mod typed;

use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::{
    driver::{Plan, Stop},
    mode::{Load, Mode},
};

/// The local broker, as the gateway and worker default to.
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for the gRPC-to-AMQP gateway, and a side-by-side benchmark (`loadgen bench`)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a worker and a gateway, and compare the gateway with raw AMQP
    /// at several concurrencies and payload sizes.
    Bench(Box<bench::BenchArgs>),
    /// Write the descriptor set of loadgen's typed API (`loadgen.v1.Echo`,
    /// methods `Echo` and `EchoJson`) for the gateway's `--descriptor-set`.
    DescriptorSet {
        /// Where to write it.
        file: std::path::PathBuf,
    },
}

/// A single run.
#[derive(Debug, Args)]
struct RunArgs {
    /// What carries the calls.
    #[arg(long, value_enum, default_value_t = Mode::Gateway)]
    mode: Mode,
    /// The gateway (gateway and typed modes).
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// The broker (raw modes).
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    amqp_url: String,
    /// The route: the queue the worker consumes (gateway and raw modes; the
    /// gateway routes the typed modes' methods itself).
    #[arg(long, default_value = "echo")]
    route: String,
    /// Concurrent callers, each making one call after the other.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// How long to record calls, after the warm-up (default 10s).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    duration: Option<Duration>,
    /// How many calls to record, after the warm-up.
    #[arg(long)]
    count: Option<u64>,
    /// Request payload, bytes.
    #[arg(long, default_value_t = 64)]
    payload_size: usize,
    /// Deadline of every call.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// gRPC connections (gateway and typed modes) or AMQP channels (raw modes); default
    /// min(concurrency, 4).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    connections: Option<u64>,
    /// Calls made before recording starts.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => bench::run(*args).await.context("bench"),
        Some(Command::DescriptorSet { file }) => {
            typed::write_descriptor_set(&file).with_context(|| format!("writing {}", file.display()))
        }
        None => single(cli.run).await,
    }
}

async fn single(args: RunArgs) -> anyhow::Result<()> {
    let concurrency = usize::try_from(args.concurrency)?;
    let connections = args.connections.map_or(Ok(concurrency.min(4)), usize::try_from)?;
    let stop = match (args.count, args.duration) {
        (Some(count), _) => Stop::Count(count),
        (None, duration) => Stop::After(duration.unwrap_or(Duration::from_secs(10))),
    };
    let load = Load {
        mode: args.mode,
        target: args.target,
        amqp_url: args.amqp_url,
        route: args.route,
        concurrency,
        connections,
        payload: vec![b'x'; args.payload_size].into(),
        deadline: args.deadline,
        plan: Plan { stop, warmup: args.warmup, progress: std::io::stderr().is_terminal() },
    };
    let run = mode::run(&load).await.with_context(|| format!("{} mode", load.mode.name()))?;
    if args.json {
        let mut report = run.to_json();
        report["mode"] = json!(load.mode.name());
        report["route"] = json!(load.route);
        report["payload_size"] = json!(args.payload_size);
        report["connections"] = json!(connections);
        if load.mode.via_gateway() {
            report["target"] = json!(load.target);
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let via = match load.mode {
            Mode::Gateway => format!("gateway {}, route {:?}", load.target, load.route),
            Mode::Typed => format!("gateway {}, {}", load.target, typed::ECHO),
            Mode::TypedJson => format!("gateway {}, {} (JSON)", load.target, typed::ECHO_JSON),
            Mode::RawAmqp | Mode::RawBare => format!("the broker, route {:?}", load.route),
        };
        let title = format!(
            "{} mode via {via}, {} B payload, {} {}",
            load.mode.name(),
            args.payload_size,
            connections,
            if load.mode.via_gateway() { "connections" } else { "channels" }
        );
        print!("{}", run.table(&title));
    }
    Ok(())
}
