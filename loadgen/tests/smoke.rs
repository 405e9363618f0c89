//! The `loadgen` binary against real `worker` and `gateway` processes (the
//! debug builds next to the test): a few hundred calls in each mode, counted
//! exactly and without a single error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::Duration;

use serde_json::Value;
use testkit::load::{gateway, worker};

const CALLS: u64 = 300;

/// Runs `loadgen` with `args` plus a fixed count and `--json`; its report.
async fn loadgen(args: &[&str]) -> Value {
    let count = CALLS.to_string();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command
        .args(args)
        .args(["--count", &count, "--concurrency", "8", "--warmup", "0s", "--deadline", "5s", "--json"])
        .env("AMQP_URL", testkit::amqp_url())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadgen {args:?} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("loadgen {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

#[tokio::test]
async fn every_mode_makes_its_calls_without_errors() {
    let url = testkit::amqp_url();
    let route = testkit::unique("loadgen-smoke");
    let _worker = worker(&url, &route, &["--durable", "false", "--prefetch", "64"]).await;
    let (_gateway, addr) = gateway(&url, &route, &[]).await;
    let target = addr.to_string();

    for mode in ["gateway", "raw-amqp", "raw-bare"] {
        let report = loadgen(&["--mode", mode, "--target", &target, "--route", &route, "--payload-size", "100"]).await;
        assert_eq!(report["mode"], mode);
        assert_eq!(report["ok"], CALLS, "{mode}: {report:#}");
        assert_eq!(report["failed"], 0, "{mode}: {report:#}");
        assert!(report["calls_per_sec"].as_f64().unwrap() > 0.0, "{mode}: {report:#}");
        let latency = &report["latency_us"];
        let (p50, p99, max) =
            (latency["p50"].as_u64().unwrap(), latency["p99"].as_u64().unwrap(), latency["max"].as_u64().unwrap());
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{mode}: {report:#}");
    }
}

#[tokio::test]
async fn errors_are_counted_by_code() {
    let url = testkit::amqp_url();
    let route = testkit::unique("loadgen-fail");
    // A worker that answers every request with NOT_FOUND (5).
    let _worker = worker(&url, &route, &["--durable", "false", "--handler", "fail", "--fail-code", "5"]).await;
    let (_gateway, addr) = gateway(&url, &route, &[]).await;
    let target = addr.to_string();

    for mode in ["gateway", "raw-amqp"] {
        let report = loadgen(&["--mode", mode, "--target", &target, "--route", &route]).await;
        assert_eq!(report["ok"], 0, "{mode}: {report:#}");
        assert_eq!(report["errors"]["NOT_FOUND"]["count"], CALLS, "{mode}: {report:#}");
    }
    // No queue bound to the route: the broker returns the request.
    let report = loadgen(&["--mode", "raw-amqp", "--route", &testkit::unique("nobody")]).await;
    assert_eq!(report["errors"]["UNAVAILABLE"]["count"], CALLS, "{report:#}");
}
