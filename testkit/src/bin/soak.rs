//! `soak`: a bounded chaos run against real processes on loopback.
//!
//! Starts a private RabbitMQ node (or uses `AMQP_URL` with `--shared-broker`,
//! then without broker restarts), two gateways and three workers, drives
//! steady load with random payloads through both gateways, and meanwhile
//! kills a worker with SIGKILL and restarts it, and restarts the broker,
//! in turn. Prints a one-screen summary and exits non-zero if any call was
//! lost (no final status) or answered with another caller's reply.
//!
//! With `--cluster`, the broker is a private three-node RabbitMQ cluster
//! instead: every process is given all three node URLs, the workers consume
//! a quorum queue, and the faults are nodes killed with SIGKILL and brought
//! back, in turn (never more than one down, so the queue keeps its
//! majority).
//!
//!     cargo build --release --workspace --bins && target/release/soak --duration 60s
//!     target/release/soak --cluster --duration 120s

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use testkit::{
    PrivateBroker, PrivateCluster,
    load::{call, client, gateway, tally, worker},
    scrape,
};
use tonic::Code;

#[derive(Debug, Parser)]
#[command(name = "soak", about = "Bounded chaos run: 2 gateways, 3 workers, faults, one-screen summary")]
struct Args {
    /// How long to run the load.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent callers (split over the two gateways).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Time between faults.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Deadline of every call.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Use the broker in AMQP_URL instead of a private node; the broker is
    /// then never restarted (faults never touch a broker the run does not own).
    #[arg(long, conflicts_with = "cluster")]
    shared_broker: bool,
    /// Run on a private three-node RabbitMQ cluster with a quorum queue, and
    /// kill and restart its nodes in turn instead of restarting one broker.
    #[arg(long)]
    cluster: bool,
}

/// Where the run's broker comes from.
enum Brokers {
    Shared,
    Single(PrivateBroker),
    Cluster(PrivateCluster),
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let brokers = match (args.shared_broker, args.cluster) {
        (true, _) => Brokers::Shared,
        (false, false) => Brokers::Single(PrivateBroker::start().await),
        (false, true) => Brokers::Cluster(PrivateCluster::start(3).await),
    };
    let url = match &brokers {
        Brokers::Shared => testkit::amqp_url(),
        Brokers::Single(broker) => broker.url().to_owned(),
        Brokers::Cluster(cluster) => cluster.url_list(),
    };
    let route = testkit::unique("soak");

    let worker_args: &[&str] = match brokers {
        Brokers::Cluster(_) => &["--queue-type", "quorum", "--prefetch", "32"],
        _ => &["--durable", "true", "--prefetch", "32"],
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(worker(&url, &route, worker_args).await);
    }
    let mut gateways = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..2 {
        let metrics_addr = testkit::free_addr();
        gateways.push(gateway(&url, &route, &["--metrics-listen", &metrics_addr.to_string()]).await);
        metrics.push(metrics_addr);
    }

    println!("soak: {} callers for {:?}, a fault every {:?}", args.concurrency, args.duration, args.fault_every);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..args.concurrency)
        .map(|c| {
            let (addr, route, stop, deadline) = (gateways[c % 2].1, route.clone(), stop.clone(), args.deadline);
            tokio::spawn(async move {
                let mut client = client(addr);
                let mut ended = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let payload: Vec<u8> = {
                        let len = rand::random_range(0..4096);
                        (0..len).map(|_| rand::random()).collect()
                    };
                    ended.push(call(&mut client, &route, payload, deadline).await);
                }
                ended
            })
        })
        .collect();

    let mut faults = Vec::new();
    let mut turn = 0usize;
    let mut down: Option<usize> = None;
    while started.elapsed() + args.fault_every < args.duration {
        tokio::time::sleep(args.fault_every).await;
        let at = started.elapsed().as_secs_f64();
        match (turn % 2, &brokers) {
            // Kill a node, next time bring it back: one node down at most.
            (_, Brokers::Cluster(cluster)) => match down.take() {
                Some(node) => {
                    cluster.restart(node).await;
                    let took = started.elapsed().as_secs_f64() - at;
                    faults.push(format!("{at:>5.1}s node {node} restarted (back in the cluster after {took:.1}s)"));
                }
                None => {
                    let node = (turn / 2) % 3;
                    cluster.kill(node).await;
                    down = Some(node);
                    faults.push(format!("{at:>5.1}s node {node} killed (SIGKILL)"));
                }
            },
            (1, Brokers::Single(broker)) => {
                broker.ctl(&["stop_app"]).await;
                broker.ctl(&["start_app"]).await;
                faults.push(format!("{:>5.1}s broker restarted", started.elapsed().as_secs_f64()));
            }
            _ => {
                let i = turn % workers.len();
                workers[i].kill().await;
                workers[i] = worker(&url, &route, worker_args).await;
                faults.push(format!(
                    "{:>5.1}s worker {i} killed (SIGKILL) and restarted",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        turn += 1;
    }
    tokio::time::sleep(args.duration.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let mut ended = Vec::new();
    for caller in callers {
        ended.extend(caller.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();

    let mut reconnects = 0.0;
    let mut pending = 0.0;
    for addr in &metrics {
        let text = scrape::metrics(*addr).await;
        reconnects += scrape::total(&text, "gateway_broker_reconnects_total");
        pending += scrape::total(&text, "gateway_pending_calls");
    }
    let peak_rss_mib = gateways.iter().map(|(g, _)| g.peak_rss_kib()).max().unwrap_or(0) / 1024;
    let counts = tally(&ended);
    let lost = counts.get("HUNG").copied().unwrap_or(0);
    let misrouted = ended.iter().filter(|e| e.code == Some(Code::Ok) && !e.payload_matches).count();

    println!();
    let on = if args.cluster { ", a 3-node cluster" } else { "" };
    println!("soak summary ({:.0} s, 2 gateways, 3 workers{on})", elapsed.as_secs_f64());
    println!("  calls sent         {:>9}", ended.len());
    for (code, n) in &counts {
        println!("  {code:<18} {n:>9}");
    }
    println!("  calls/s            {:>9.0}", ended.len() as f64 / elapsed.as_secs_f64());
    println!("  lost               {lost:>9}");
    println!("  misrouted          {misrouted:>9}");
    println!("  gateway reconnects {reconnects:>9}");
    println!("  pending at the end {pending:>9}");
    println!("  peak gateway RSS   {peak_rss_mib:>6} MiB");
    println!("  faults:");
    for fault in &faults {
        println!("    {fault}");
    }
    drop((workers, gateways, brokers));
    let healthy: [(&str, bool); 3] = [("lost", lost == 0), ("misrouted", misrouted == 0), ("pending", pending == 0.0)];
    let failed: Vec<&str> = healthy.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    if !failed.is_empty() {
        eprintln!("soak: FAILED ({})", failed.join(", "));
        std::process::exit(1);
    }
}
