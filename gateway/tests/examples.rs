//! The examples in `examples/`, run as their users run them, against real
//! gateway and worker processes and the broker from `AMQP_URL`:
//! Python client → gateway → Node.js worker, Node.js client → gateway →
//! Python worker, the Django view → gateway → Rust worker, with one trace id
//! checked across the languages. `scripts/test.sh` installs their pinned
//! dependencies first (npm ci, pip, generated Python stubs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde_json::Value;
use testkit::{
    Process,
    load::{READY, logged},
    otlp::{OtlpCollector, kind},
};
use tokio::process::Command;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn node() -> PathBuf {
    PathBuf::from(std::env::var_os("NODE").unwrap_or_else(|| "node".into()))
}

/// Starts a gateway allowing `routes`, exporting spans to `collector`.
async fn gateway(url: &str, routes: &str, collector: &OtlpCollector) -> (Process, SocketAddr) {
    let addr = testkit::free_addr();
    let endpoint = collector.endpoint();
    let env =
        [("AMQP_URL", url), ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let process = Process::spawn("gateway", &["--listen", &addr.to_string(), "--routes", routes], &env);
    logged(&process, "connected to the broker").await;
    (process, addr)
}

/// Runs a client example to completion and parses the JSON line it prints.
async fn run_client(program: PathBuf, args: &[&str]) -> HashMap<String, Value> {
    let output = tokio::time::timeout(READY, Command::new(&program).args(args).output())
        .await
        .expect("the client example must finish")
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{program:?} {args:?}:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| panic!("{stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn caller_context() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace_id, span_id)
}

/// Waits for the CONSUMER span of `service` in `trace_id` and returns it.
async fn span_of(collector: &OtlpCollector, trace_id: &str, service: &str) -> testkit::otlp::Span {
    let consumer = |s: &testkit::otlp::Span| s.service == service && s.kind == kind::CONSUMER;
    testkit::eventually(&format!("a {service} consumer span in trace {trace_id}"), Duration::from_secs(15), || {
        let found = collector.trace(trace_id).iter().any(consumer);
        async move { found }
    })
    .await;
    collector.trace(trace_id).into_iter().find(consumer).unwrap()
}

#[tokio::test]
async fn python_client_to_node_worker() {
    let collector = OtlpCollector::start().await;
    let url = testkit::amqp_url();
    let route = testkit::unique("node");
    let endpoint = collector.endpoint();
    let worker = examples().join("node-worker/worker.js");
    let env = [
        ("AMQP_URL", url.as_str()),
        ("ROUTE", route.as_str()),
        ("QUEUE_DURABLE", "false"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let worker = Process::spawn_program(&node(), &[worker.to_str().unwrap()], &env);
    logged(&worker, "consuming").await;
    let (_gateway, addr) = gateway(&url, &route, &collector).await;

    let client = examples().join("python-client/client.py");
    let (trace_id, caller_span) = caller_context();
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let target = addr.to_string();
    let args = [client.to_str().unwrap(), "--target", &target, "--route", &route, "--payload", "from python"];
    let mut traced = args.to_vec();
    traced.extend(["--header", "tenant=acme", "--traceparent", &traceparent]);
    let reply = run_client(testkit::python(), &traced).await;
    assert_eq!(reply["code"], "OK", "{reply:?}");
    let body: Value = serde_json::from_str(reply["payload"].as_str().unwrap()).unwrap();
    assert_eq!(body["worker"], "node");
    assert_eq!(body["payload"], "from python");
    assert_eq!(body["headers"]["tenant"], "acme");

    // The worker's status headers reach the Python caller as a gRPC status.
    let mut failing = args.to_vec();
    failing.extend(["--header", "fail=NOT_FOUND"]);
    let reply = run_client(testkit::python(), &failing).await;
    assert_eq!(reply["code"], "NOT_FOUND", "{reply:?}");

    // One trace across Python (caller), Rust (gateway) and Node.js (worker).
    let node_span = span_of(&collector, &trace_id, "node-worker").await;
    let send = collector.trace(&trace_id).into_iter().find(|s| s.kind == kind::PRODUCER && s.service == "gateway");
    assert_eq!(Some(node_span.parent_span_id), send.map(|s| s.span_id), "the Node.js span continues the producer span");
}

#[tokio::test]
async fn node_client_to_python_worker() {
    let collector = OtlpCollector::start().await;
    let url = testkit::amqp_url();
    let route = testkit::unique("python");
    let endpoint = collector.endpoint();
    let worker = examples().join("python-worker/worker.py");
    let env = [
        ("AMQP_URL", url.as_str()),
        ("ROUTE", route.as_str()),
        ("QUEUE_DURABLE", "false"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let worker = Process::spawn_program(&testkit::python(), &[worker.to_str().unwrap()], &env);
    logged(&worker, "consuming").await;
    let (_gateway, addr) = gateway(&url, &route, &collector).await;

    let client = examples().join("node-client/client.js");
    let (trace_id, caller_span) = caller_context();
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let target = addr.to_string();
    let args = [client.to_str().unwrap(), "--target", &target, "--route", &route, "--payload", "from node"];
    let mut traced = args.to_vec();
    traced.extend(["--traceparent", &traceparent]);
    let reply = run_client(node(), &traced).await;
    assert_eq!(reply["code"], "OK", "{reply:?}");
    let body: Value = serde_json::from_str(reply["payload"].as_str().unwrap()).unwrap();
    assert_eq!(body["worker"], "python");
    assert_eq!(body["payload"], "from node");
    assert!(reply["correlationId"].as_str().is_some_and(|id| uuid::Uuid::try_parse(id).is_ok()), "{reply:?}");

    let mut failing = args.to_vec();
    failing.extend(["--header", "fail=5"]);
    let reply = run_client(node(), &failing).await;
    assert_eq!(reply["code"], "NOT_FOUND", "{reply:?}");

    // One trace across Node.js (caller), Rust (gateway) and Python (worker).
    let python_span = span_of(&collector, &trace_id, "python-worker").await;
    let send = collector.trace(&trace_id).into_iter().find(|s| s.kind == kind::PRODUCER && s.service == "gateway");
    assert_eq!(
        Some(python_span.parent_span_id),
        send.map(|s| s.span_id),
        "the Python span continues the producer span"
    );
}

#[tokio::test]
async fn django_view_to_rust_worker() {
    let collector = OtlpCollector::start().await;
    let url = testkit::amqp_url();
    let route = testkit::unique("django");
    let worker = Process::spawn("worker", &["--route", &route, "--durable", "false"], &[("AMQP_URL", url.as_str())]);
    logged(&worker, "consuming").await;
    let (_gateway, addr) = gateway(&url, &route, &collector).await;

    let manage = examples().join("django-client/manage.py");
    let output = tokio::time::timeout(
        READY,
        Command::new(testkit::python())
            .args([manage.to_str().unwrap(), "test", "--noinput"])
            .current_dir(examples().join("django-client"))
            .env("GATEWAY_ADDR", addr.to_string())
            .env("GATEWAY_ROUTE", &route)
            .output(),
    )
    .await
    .expect("the Django tests must finish")
    .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{log}");
    assert!(log.contains("OK"), "{log}");
}
