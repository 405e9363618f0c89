//! The `loadgen` binary against real `worker` and `gateway` processes (the
//! debug builds next to the test) and the real broker: a few hundred calls in
//! each mode, counted exactly and without a single error; what the typed
//! modes put on the wire; and a short `loadgen bench` of the gateway's modes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{path::PathBuf, time::Duration};

use amqp_gateway::wire;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::Value;
use testkit::{
    Process,
    load::{gateway, worker},
};
use tokio::sync::mpsc;

const CALLS: u64 = 300;

/// Runs `loadgen` with `args` plus a fixed count and `--json`; its report.
async fn loadgen(args: &[&str]) -> Value {
    let count = CALLS.to_string();
    let mut all = args.to_vec();
    all.extend(["--count", &count, "--concurrency", "8", "--warmup", "0s", "--deadline", "5s", "--json"]);
    run_loadgen(&all, Duration::from_secs(30)).await
}

/// Runs `loadgen` with exactly `args` (which print JSON on stdout); the JSON.
async fn run_loadgen(args: &[&str], timeout: Duration) -> Value {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command.args(args).env("AMQP_URL", testkit::amqp_url()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadgen {args:?} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("loadgen {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

/// Writes loadgen's typed API with `loadgen descriptor-set` into a fresh
/// temporary file.
async fn descriptor_set() -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.binpb", testkit::unique("loadgen-echo")));
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("descriptor-set")
        .arg(&path)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "loadgen descriptor-set: {status}");
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    path
}

/// A gateway serving `Process` on `route` and loadgen's typed API (as
/// docs/performance.md says to start one): `Echo` in passthrough on
/// `typed_route`, `EchoJson` transcoded on `json_route`.
async fn typed_gateway(url: &str, route: &str, typed_route: &str, json_route: &str) -> (Process, String, PathBuf) {
    let set = descriptor_set().await;
    let set_arg = set.display().to_string();
    let echo = format!("loadgen.v1.Echo/Echo={typed_route}");
    let echo_json = format!("loadgen.v1.Echo/EchoJson={json_route}");
    let (process, addr) = gateway(
        url,
        route,
        &[
            "--descriptor-set",
            &set_arg,
            "--service",
            "loadgen.v1.Echo",
            "--method-route",
            &echo,
            "--method-route",
            &echo_json,
            "--transcode-json",
            "loadgen.v1.Echo/EchoJson",
        ],
    )
    .await;
    (process, addr.to_string(), set)
}

#[tokio::test]
async fn every_mode_makes_its_calls_without_errors() {
    let url = testkit::amqp_url();
    let route = testkit::unique("loadgen-smoke");
    let (typed_route, json_route) = (format!("{route}-typed"), format!("{route}-json"));
    let echo = ["--durable", "false", "--prefetch", "64"];
    let _worker = worker(&url, &route, &echo).await;
    let _typed_worker = worker(&url, &typed_route, &echo).await;
    let _json_worker = worker(&url, &json_route, &echo).await;
    let (_gateway, target, set) = typed_gateway(&url, &route, &typed_route, &json_route).await;

    for mode in ["gateway", "typed", "typed-json", "raw-amqp", "raw-bare"] {
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
    std::fs::remove_file(set).unwrap();
}

/// What one request carried, as a worker sees it.
#[derive(Debug)]
struct Seen {
    content_type: Option<String>,
    method: Option<String>,
    message_type: Option<String>,
    body: Vec<u8>,
}

/// A tutorial-style echo worker on `route` (a fresh, auto-deleted queue):
/// replies with the body and content type it got, and hands over what each
/// request carried.
async fn recording_echo(url: &str, route: &str) -> (Connection, mpsc::UnboundedReceiver<Seen>) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declare = QueueDeclareOptions { auto_delete: true, ..Default::default() };
    channel.queue_declare(route.into(), declare, FieldTable::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(route.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let properties = &delivery.properties;
            let mut reply =
                BasicProperties::default().with_correlation_id(properties.correlation_id().clone().unwrap());
            if let Some(content_type) = properties.content_type() {
                reply = reply.with_content_type(content_type.clone());
            }
            channel
                .basic_publish(
                    "".into(),
                    properties.reply_to().clone().unwrap(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    reply,
                )
                .await
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            let method = properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(wire::METHOD_HEADER))
                .and_then(wire::string)
                .map(str::to_owned);
            let _ = seen.send(Seen {
                content_type: properties.content_type().as_ref().map(|c| c.to_string()),
                method,
                message_type: properties.kind().as_ref().map(|k| k.to_string()),
                body: delivery.data.clone(),
            });
        }
    });
    (connection, received)
}

/// The next request [`recording_echo`] saw on `route`: it hands a request
/// over just after replying, so it may come a moment after the call ended.
async fn next_request(seen: &mut mpsc::UnboundedReceiver<Seen>, route: &str) -> Seen {
    match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await {
        Ok(Some(seen)) => seen,
        Ok(None) => panic!("the consumer on {route} stopped"),
        Err(_) => panic!("no request reached {route}"),
    }
}

#[tokio::test]
async fn typed_modes_call_their_method_as_protobuf_and_as_json() {
    let url = testkit::amqp_url();
    let route = testkit::unique("loadgen-wire");
    let (typed_route, json_route) = (format!("{route}-typed"), format!("{route}-json"));
    let (typed_connection, mut typed_seen) = recording_echo(&url, &typed_route).await;
    let (json_connection, mut json_seen) = recording_echo(&url, &json_route).await;
    let (_gateway, target, set) = typed_gateway(&url, &route, &typed_route, &json_route).await;

    // One call of 99 bytes of `x` (in base64, "eHh4" 33 times).
    let one_call = |mode| {
        let args = ["--mode", mode, "--target", &target, "--payload-size", "99", "--count", "1", "--json"];
        let args = args.map(str::to_owned);
        async move {
            let args = args.each_ref().map(String::as_str);
            run_loadgen(&[&args[..], &["--concurrency", "1", "--warmup", "0s"]].concat(), Duration::from_secs(30)).await
        }
    };
    let report = one_call("typed").await;
    assert_eq!((report["ok"].as_u64(), report["failed"].as_u64()), (Some(1), Some(0)), "{report:#}");
    let seen = next_request(&mut typed_seen, &typed_route).await;
    assert_eq!(seen.content_type.as_deref(), Some(wire::PROTOBUF), "{seen:?}");
    assert_eq!(seen.method.as_deref(), Some("loadgen.v1.Echo/Echo"), "{seen:?}");
    assert_eq!(seen.message_type.as_deref(), Some("loadgen.v1.EchoMessage"), "{seen:?}");
    // EchoMessage { payload = 1 }: tag 0x0a, length 99, the bytes.
    let mut protobuf = vec![0x0a, 99];
    protobuf.extend([b'x'; 99]);
    assert_eq!(seen.body, protobuf);

    let report = one_call("typed-json").await;
    assert_eq!((report["ok"].as_u64(), report["failed"].as_u64()), (Some(1), Some(0)), "{report:#}");
    let seen = next_request(&mut json_seen, &json_route).await;
    assert_eq!(seen.content_type.as_deref(), Some(wire::JSON), "{seen:?}");
    assert_eq!(seen.method.as_deref(), Some("loadgen.v1.Echo/EchoJson"), "{seen:?}");
    assert_eq!(seen.message_type.as_deref(), Some("loadgen.v1.EchoMessage"), "{seen:?}");
    let json: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(json, serde_json::json!({ "payload": "eHh4".repeat(33) }));

    // Each mode called its own method only.
    assert!(typed_seen.try_recv().is_err() && json_seen.try_recv().is_err());
    let _ = typed_connection.close(200, "done".into()).await;
    let _ = json_connection.close(200, "done".into()).await;
    std::fs::remove_file(set).unwrap();
}

#[tokio::test]
async fn bench_compares_typed_methods_with_process() {
    let dir = std::env::temp_dir().join(testkit::unique("loadgen-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let chart = dir.join("chart.svg").display().to_string();
    // One short round of the gateway's three modes, nothing else.
    let args = [
        "bench",
        "--modes",
        "gateway,typed,typed-json",
        "--concurrency",
        "4",
        "--payload-sizes",
        "64",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--rounds",
        "1",
        "--settle",
        "0s",
        "--in-flight",
        "0",
        "--growth-calls",
        "0",
        "--chart",
        &chart,
        "--json",
    ];
    let report = run_loadgen(&args, Duration::from_secs(180)).await;
    assert_eq!(report["settings"]["modes"], serde_json::json!(["gateway", "typed", "typed-json"]), "{report:#}");
    let configurations = report["configurations"].as_array().unwrap();
    assert_eq!(configurations.len(), 1, "{report:#}");
    let configuration = &configurations[0];
    for mode in ["gateway", "typed", "typed-json"] {
        let best = &configuration["best"][mode];
        assert!(best["ok"].as_u64().unwrap() > 0, "{mode}: {best:#}");
        assert_eq!(best["failed"], 0, "{mode}: {best:#}");
        assert!(best["cpu_us_per_call"]["gateway"].as_f64().unwrap() > 0.0, "{mode}: {best:#}");
    }
    assert!(configuration["best"]["raw-amqp"].is_null(), "{report:#}");
    let ratios = &configuration["ratios"];
    for ratio in ["throughput_typed_over_gateway", "gateway_cpu_typed_over_gateway", "json_added_gateway_cpu_us"] {
        assert!(ratios[ratio].is_f64(), "{ratio}: {ratios:#}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.contains("typed-json"), "the chart has no typed-json line");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn errors_are_counted_by_code() {
    let url = testkit::amqp_url();
    let route = testkit::unique("loadgen-fail");
    // A worker that answers every request with NOT_FOUND (5).
    let fail = ["--durable", "false", "--handler", "fail", "--fail-code", "5"];
    let _worker = worker(&url, &route, &fail).await;
    let (typed_route, json_route) = (format!("{route}-typed"), format!("{route}-json"));
    let _typed_worker = worker(&url, &typed_route, &fail).await;
    let _json_worker = worker(&url, &json_route, &fail).await;
    let (_gateway, target, set) = typed_gateway(&url, &route, &typed_route, &json_route).await;

    for mode in ["gateway", "typed", "typed-json", "raw-amqp"] {
        let report = loadgen(&["--mode", mode, "--target", &target, "--route", &route]).await;
        assert_eq!(report["ok"], 0, "{mode}: {report:#}");
        assert_eq!(report["errors"]["NOT_FOUND"]["count"], CALLS, "{mode}: {report:#}");
    }
    // No queue bound to the route: the broker returns the request.
    let report = loadgen(&["--mode", "raw-amqp", "--route", &testkit::unique("nobody")]).await;
    assert_eq!(report["errors"]["UNAVAILABLE"]["count"], CALLS, "{report:#}");
    std::fs::remove_file(set).unwrap();
}
