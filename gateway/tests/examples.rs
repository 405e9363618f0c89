//! The examples in `examples/`, run as their users run them, against real
//! gateway and worker processes and the broker from `AMQP_URL`:
//! Python client → gateway → Node.js worker, Node.js client → gateway →
//! Python worker, the Django view → gateway → Rust worker, the orders
//! example's generated Python client → gateway → a Rust typed worker and a
//! Node.js worker reading JSON, with one trace id checked across the
//! languages. `scripts/test.sh` installs their pinned dependencies first (npm
//! ci, pip, generated Python stubs and the orders descriptor set).

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

/// The spans of `trace_id`, once spans named each of `wanted` are among them.
async fn spans_named(collector: &OtlpCollector, trace_id: &str, wanted: &[&str]) -> Vec<testkit::otlp::Span> {
    testkit::eventually(&format!("spans {wanted:?} in trace {trace_id}"), Duration::from_secs(15), || {
        let spans = collector.trace(trace_id);
        let found = wanted.iter().all(|name| spans.iter().any(|s| s.name == *name));
        async move { found }
    })
    .await;
    collector.trace(trace_id)
}

/// The orders example (examples/orders/README.md): one API, `orders.v1.Orders`
/// from a descriptor set, served by the gateway; the Python client generated
/// from orders.proto calls `Quote`, answered by the Rust typed worker
/// (protobuf passthrough), then `Create`, answered by a Node.js worker that
/// reads and writes JSON (`--transcode-json`). One trace across all four.
#[tokio::test]
async fn orders_python_client_to_rust_typed_and_node_json_workers() {
    let collector = OtlpCollector::start().await;
    let url = testkit::amqp_url();
    let endpoint = collector.endpoint();
    let telemetry = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    // Routes of this run only: the shared broker keeps queues between runs.
    let (quote_route, create_route) = (testkit::unique("orders-quote"), testkit::unique("orders-create"));

    let mut env = vec![("AMQP_URL", url.as_str())];
    env.extend(telemetry);
    let rust = Process::spawn("orders-worker", &["--route", &quote_route, "--durable", "false"], &env);
    let orders_js = examples().join("node-worker/orders.js");
    env.extend([("ROUTE", create_route.as_str()), ("QUEUE_DURABLE", "false")]);
    let node = Process::spawn_program(&node(), &[orders_js.to_str().unwrap()], &env);
    logged(&rust, "consuming").await;
    logged(&node, "consuming").await;

    let descriptors = examples().join("python-client/gen/orders.binpb");
    assert!(descriptors.exists(), "{descriptors:?} is missing: run examples/python-client/generate.sh");
    let addr = testkit::free_addr();
    let (listen, quote_at, create_at) = (
        addr.to_string(),
        format!("orders.v1.Orders/Quote={quote_route}"),
        format!("orders.v1.Orders/Create={create_route}"),
    );
    #[rustfmt::skip]
    let args = [
        "--listen", &listen,
        "--descriptor-set", descriptors.to_str().unwrap(),
        "--service", "orders.v1.Orders",
        "--transcode-json", "orders.v1.Orders/Create",
        "--method-route", &quote_at,
        "--method-route", &create_at,
    ];
    let mut env = vec![("AMQP_URL", url.as_str())];
    env.extend(telemetry);
    let gateway = Process::spawn("gateway", &args, &env);
    logged(&gateway, "connected to the broker").await;
    let target = addr.to_string();
    let client = examples().join("python-client/orders_client.py");
    let client = client.to_str().unwrap();

    // Quote (Rust, protobuf) then Create (Node.js, JSON) under one trace.
    let (trace_id, caller_span) = caller_context();
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let out = run_client(testkit::python(), &[client, "--target", &target, "--traceparent", &traceparent]).await;
    let (quote, create) = (&out["quote"], &out["create"]);
    assert_eq!(quote["code"], "OK", "{out:?}");
    // tea=2 mug=1 express: 2 × 450 + 1200 + 900 shipping; int64 is a string in JSON.
    assert_eq!(quote["response"]["totalCents"], "3000", "{out:?}");
    assert_eq!(quote["response"]["currency"], "EUR", "{out:?}");
    assert!(quote["response"]["validUntil"].as_str().is_some_and(|t| t.ends_with('Z')), "{out:?}");
    assert_eq!(create["code"], "OK", "{out:?}");
    assert!(create["response"]["orderId"].as_str().is_some_and(|id| uuid::Uuid::try_parse(id).is_ok()), "{out:?}");
    assert_eq!(create["response"]["priority"], "PRIORITY_EXPRESS", "{out:?}");
    assert_eq!(create["response"]["itemCount"], 3, "{out:?}");
    assert!(create["response"]["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{out:?}");
    let ids =
        [&quote["correlation_id"], &create["correlation_id"]].map(|id| id.as_str().unwrap_or_default().to_owned());
    assert!(ids.iter().all(|id| uuid::Uuid::try_parse(id).is_ok()) && ids[0] != ids[1], "{out:?}");

    // One trace: the gateway's server span of each method, and each worker's
    // CONSUMER span continuing one of the gateway's PRODUCER spans.
    let spans = spans_named(&collector, &trace_id, &["orders.v1.Orders/Quote", "orders.v1.Orders/Create"]).await;
    let servers: Vec<_> = spans.iter().filter(|s| s.kind == kind::SERVER && s.service == "gateway").collect();
    assert_eq!(servers.len(), 2, "{spans:#?}");
    assert!(servers.iter().all(|s| s.parent_span_id == caller_span), "both calls continue the caller's span");
    for worker in ["orders-worker", "node-worker"] {
        let consumer = span_of(&collector, &trace_id, worker).await;
        let producers = collector.trace(&trace_id);
        let parent = producers.iter().find(|s| s.span_id == consumer.parent_span_id);
        assert!(
            parent.is_some_and(|p| p.kind == kind::PRODUCER && p.service == "gateway"),
            "the {worker} span continues a gateway producer span: {consumer:#?}"
        );
    }

    // Refusals reach the Python client as gRPC statuses: Node.js validating
    // the JSON request, Rust pricing an unknown SKU (then nothing is created).
    let out = run_client(testkit::python(), &[client, "--target", &target, "--customer", ""]).await;
    assert_eq!((&out["quote"]["code"], &out["create"]["code"]), (&"OK".into(), &"INVALID_ARGUMENT".into()), "{out:?}");
    assert!(out["create"]["message"].as_str().is_some_and(|m| m.contains("customerId")), "{out:?}");
    let out = run_client(testkit::python(), &[client, "--target", &target, "--item", "caviar=1"]).await;
    assert_eq!(out["quote"]["code"], "NOT_FOUND", "{out:?}");
    assert!(out["quote"]["message"].as_str().is_some_and(|m| m.contains("caviar")), "{out:?}");
    assert_eq!(out["create"], Value::Null, "{out:?}");

    // grpcurl needs no proto file: reflection describes the API with its
    // comments, and JSON calls work.
    let grpcurl = |args: Vec<&str>| {
        let mut command = Command::new(testkit::grpcurl());
        command.arg("-plaintext").args(args);
        async move {
            let output = command.output().await.unwrap_or_else(|e| panic!("cannot run grpcurl: {e}"));
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
            text
        }
    };
    let described = grpcurl(vec![&target, "describe", "orders.v1.Orders"]).await;
    assert!(described.contains("Prices a basket without placing an order"), "{described}");
    let request = r#"{"items": [{"sku": "tea", "quantity": 1}]}"#;
    let quoted = grpcurl(vec!["-d", request, &target, "orders.v1.Orders/Quote"]).await;
    let quoted: Value = serde_json::from_str(&quoted).unwrap_or_else(|e| panic!("{e}: {quoted}"));
    assert_eq!(quoted["totalCents"], "750", "450 + 300 standard shipping: {quoted}");
}
