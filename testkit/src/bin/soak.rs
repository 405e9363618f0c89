//! `soak`: a bounded chaos run against real processes on loopback.
//!
//! Starts a private RabbitMQ node (or uses `AMQP_URL` with `--shared-broker`,
//! then without broker restarts), two gateways and three workers, drives
//! steady load with random payloads through both gateways, and meanwhile
//! kills a worker with SIGKILL and restarts it, and restarts the broker,
//! in turn. Prints a one-screen summary and exits non-zero if any call was
//! lost (no final status) or answered with another caller's reply.
//!
//!     cargo build --release --workspace --bins && target/release/soak --duration 60s

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use testkit::{
    PrivateBroker,
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
    #[arg(long)]
    shared_broker: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let broker = if args.shared_broker { None } else { Some(PrivateBroker::start().await) };
    let url = broker.as_ref().map_or_else(testkit::amqp_url, |b| b.url().to_owned());
    let route = testkit::unique("soak");

    let worker_args = ["--durable", "true", "--prefetch", "32"];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(worker(&url, &route, &worker_args).await);
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
    while started.elapsed() + args.fault_every < args.duration {
        tokio::time::sleep(args.fault_every).await;
        match (turn % 2, &broker) {
            (1, Some(broker)) => {
                broker.ctl(&["stop_app"]).await;
                broker.ctl(&["start_app"]).await;
                faults.push(format!("{:>5.1}s broker restarted", started.elapsed().as_secs_f64()));
            }
            _ => {
                let i = turn % workers.len();
                workers[i].kill().await;
                workers[i] = worker(&url, &route, &worker_args).await;
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
    println!("soak summary ({:.0} s, 2 gateways, 3 workers)", elapsed.as_secs_f64());
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
    drop((workers, gateways, broker));
    let healthy: [(&str, bool); 3] = [("lost", lost == 0), ("misrouted", misrouted == 0), ("pending", pending == 0.0)];
    let failed: Vec<&str> = healthy.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    if !failed.is_empty() {
        eprintln!("soak: FAILED ({})", failed.join(", "));
        std::process::exit(1);
    }
}
