//! Traces and metrics of real `gateway` and `worker` processes: spans go to an
//! OTLP collector run by the test, metrics are scraped over HTTP, and a Python
//! pika worker shows what a non-Rust consumer reads from the gateway's
//! messages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use amqp_gateway::pb::{ProcessRequest, ProcessResponse, gateway_client::GatewayClient};
use testkit::{
    Process,
    load::{gateway, logged, worker},
    otlp::{OtlpCollector, STATUS_ERROR, Span, kind},
};
use tonic::{Code, transport::Channel};

/// A random W3C trace id and parent span id, as a caller's tracer makes them.
fn caller_context() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace_id, span_id)
}

fn traced(route: &str, payload: &str, trace_id: &str, parent: &str) -> tonic::Request<ProcessRequest> {
    let mut request = tonic::Request::new(ProcessRequest {
        route: route.into(),
        payload: payload.as_bytes().to_vec().into(),
        ..ProcessRequest::default()
    });
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{parent}-01").parse().unwrap());
    request.set_timeout(Duration::from_secs(10));
    request
}

async fn client(addr: SocketAddr) -> GatewayClient<Channel> {
    GatewayClient::connect(format!("http://{addr}")).await.unwrap()
}

/// Waits until the collector holds every span named in `names` for `trace_id`.
async fn spans_of(collector: &OtlpCollector, trace_id: &str, names: &[&str]) -> Vec<Span> {
    testkit::eventually(&format!("spans {names:?} of trace {trace_id}"), Duration::from_secs(15), || {
        let spans = collector.trace(trace_id);
        let complete = names.iter().all(|n| spans.iter().any(|s| s.name == *n));
        async move { complete }
    })
    .await;
    collector.trace(trace_id)
}

fn find<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[tokio::test]
async fn one_trace_from_caller_through_gateway_and_worker_and_back() {
    let collector = OtlpCollector::start().await;
    let url = testkit::amqp_url();
    let endpoint = collector.endpoint();
    let env = [
        ("AMQP_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info,gateway=debug"),
    ];
    let route = testkit::unique("traced");
    let failing = testkit::unique("traced-fails");
    let unbound = testkit::unique("traced-nobody");
    let worker = Process::spawn("worker", &["--route", &route, "--durable", "false"], &env);
    let failing_worker = Process::spawn(
        "worker",
        &["--route", &failing, "--durable", "false", "--handler", "fail", "--fail-code", "5"],
        &env,
    );
    logged(&worker, "consuming").await;
    logged(&failing_worker, "consuming").await;
    let addr = testkit::free_addr();
    let routes = format!("{route},{failing},{unbound}");
    let gateway = Process::spawn("gateway", &["--listen", &addr.to_string(), "--routes", &routes], &env);
    logged(&gateway, "connected to the broker").await;
    let mut client = client(addr).await;

    // A successful call continues the caller's trace through every hop.
    let (trace_id, caller_span) = caller_context();
    let response = client.process(traced(&route, "traced hello", &trace_id, &caller_span)).await.unwrap().into_inner();
    let send_name = format!("send {route}");
    let process_name = format!("process {route}");
    let names = ["gateway.v1.Gateway/Process", send_name.as_str(), process_name.as_str(), "receive (anonymous)"];
    let spans = spans_of(&collector, &trace_id, &names).await;
    let server = find(&spans, names[0]);
    let send = find(&spans, names[1]);
    let process = find(&spans, names[2]);
    let receive = find(&spans, names[3]);

    assert_eq!((server.kind, server.service.as_str()), (kind::SERVER, "gateway"));
    assert_eq!(server.parent_span_id, caller_span, "the server span continues the caller's span");
    assert_eq!(server.attr("rpc.system"), Some("grpc"));
    assert_eq!(server.attr("rpc.service"), Some("gateway.v1.Gateway"));
    assert_eq!(server.attr("rpc.method"), Some("Process"));
    assert_eq!(server.attr("rpc.grpc.status_code"), Some("0"));
    assert_ne!(server.status, STATUS_ERROR);

    assert_eq!((send.kind, send.service.as_str()), (kind::PRODUCER, "gateway"));
    assert_eq!(send.parent_span_id, server.span_id);
    let id = response.correlation_id.as_str();
    for (key, value) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", route.as_str()),
        ("messaging.rabbitmq.destination.routing_key", route.as_str()),
        ("messaging.message.id", id),
        ("messaging.message.conversation_id", id),
        ("messaging.message.body.size", "12"),
    ] {
        assert_eq!(send.attr(key), Some(value), "send span attribute {key}");
    }

    assert_eq!((process.kind, process.service.as_str()), (kind::CONSUMER, "worker"));
    assert_eq!(process.parent_span_id, send.span_id, "the worker's span is a child of the gateway's producer span");
    for (key, value) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", route.as_str()),
        ("messaging.message.conversation_id", id),
        ("messaging.message.body.size", "12"),
    ] {
        assert_eq!(process.attr(key), Some(value), "process span attribute {key}");
    }

    assert_eq!((receive.kind, receive.service.as_str()), (kind::CONSUMER, "gateway"));
    assert_eq!(receive.parent_span_id, process.span_id, "the reply hop continues the worker's span");
    assert_eq!(receive.attr("messaging.destination.temporary"), Some("true"));
    assert_eq!(receive.attr("messaging.destination.anonymous"), Some("true"));
    assert!(collector.spans().iter().all(|s| !s.name.contains("amq.rabbitmq.reply-to")), "reply-to kept out of names");

    // A worker's error status marks the server and consumer spans as errors.
    let (trace_id, caller_span) = caller_context();
    let status = client.process(traced(&failing, "x", &trace_id, &caller_span)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let process_name = format!("process {failing}");
    let spans = spans_of(&collector, &trace_id, &["gateway.v1.Gateway/Process", &process_name]).await;
    let server = find(&spans, "gateway.v1.Gateway/Process");
    assert_eq!((server.status, server.attr("rpc.grpc.status_code")), (STATUS_ERROR, Some("5")));
    let process = find(&spans, &process_name);
    assert_eq!((process.status, process.attr("error.type")), (STATUS_ERROR, Some("NOT_FOUND")));

    // An unroutable publish marks the producer span as an error.
    let (trace_id, caller_span) = caller_context();
    let status = client.process(traced(&unbound, "x", &trace_id, &caller_span)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let send_name = format!("send {unbound}");
    let spans = spans_of(&collector, &trace_id, &["gateway.v1.Gateway/Process", &send_name]).await;
    let send = find(&spans, &send_name);
    assert_eq!((send.status, send.attr("error.type")), (STATUS_ERROR, Some("unroutable")));
    assert_eq!(find(&spans, "gateway.v1.Gateway/Process").attr("rpc.grpc.status_code"), Some("14"));

    // Log lines about a call carry its trace id.
    assert!(gateway.log().contains(&format!("trace_id={trace_id}")), "{}", gateway.log());
}

#[tokio::test]
async fn calls_without_trace_context_start_a_trace_at_the_gateway_and_spans_flush_on_shutdown() {
    let collector = OtlpCollector::start().await;
    let url = testkit::amqp_url();
    let endpoint = collector.endpoint();
    // The batch processor's default delay (5 s) and no test-only settings: the
    // spans reach the collector this quickly only because SIGTERM flushes them.
    let env = [("AMQP_URL", url.as_str()), ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let route = testkit::unique("untraced");
    let mut worker = Process::spawn("worker", &["--route", &route, "--durable", "false"], &env);
    logged(&worker, "consuming").await;
    let addr = testkit::free_addr();
    let mut gateway = Process::spawn("gateway", &["--listen", &addr.to_string(), "--routes", &route], &env);
    logged(&gateway, "connected to the broker").await;

    let request = ProcessRequest { route: route.clone(), ..ProcessRequest::default() };
    client(addr).await.process(request).await.unwrap();
    assert!(gateway.terminate(Duration::from_secs(20)).await.success(), "{}", gateway.log());
    assert!(worker.terminate(Duration::from_secs(20)).await.success(), "{}", worker.log());
    let process_name = format!("process {route}");
    testkit::eventually("a trace rooted at the gateway, flushed at exit", Duration::from_secs(2), || {
        let spans = collector.spans();
        let rooted = spans.iter().find(|s| s.name == "gateway.v1.Gateway/Process" && s.parent_span_id.is_empty());
        let joined =
            rooted.is_some_and(|root| spans.iter().any(|s| s.name == process_name && s.trace_id == root.trace_id));
        async move { joined }
    })
    .await;
}

/// The Python pika worker (`tests/support/pika_worker.py`) on a route of its
/// own, behind a gateway process started with `env` (and `AMQP_URL`): the
/// worker echoes what it read of the request's headers.
async fn pika_behind_a_gateway(prefix: &str, env: &[(&str, &str)]) -> (Process, Process, SocketAddr, String) {
    let url = testkit::amqp_url();
    let route = testkit::unique(prefix);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pika_worker.py");
    let pika = Process::spawn_program(&testkit::python(), &[script, &url, &route], &[]);
    logged(&pika, "consuming").await;
    let mut env = env.to_vec();
    env.push(("AMQP_URL", &url));
    let addr = testkit::free_addr();
    let gateway = Process::spawn("gateway", &["--listen", &addr.to_string(), "--routes", &route], &env);
    logged(&gateway, "connected to the broker").await;
    (pika, gateway, addr, route)
}

/// What the pika worker read, from its reply.
fn seen_by_pika(response: tonic::Response<ProcessResponse>) -> HashMap<String, serde_json::Value> {
    serde_json::from_slice(&response.into_inner().payload).unwrap()
}

#[tokio::test]
async fn a_python_pika_worker_reads_the_trace_context() {
    let collector = OtlpCollector::start().await;
    let endpoint = collector.endpoint();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let (_pika, _gateway, addr, route) = pika_behind_a_gateway("pika", &env).await;

    let (trace_id, caller_span) = caller_context();
    let response = client(addr).await.process(traced(&route, "from rust", &trace_id, &caller_span)).await.unwrap();
    let seen = seen_by_pika(response);

    // What pika decoded: a W3C traceparent in the caller's trace, whose parent
    // is the gateway's producer span, and the deadline as an integer.
    let traceparent = seen["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id);
    let send_name = format!("send {route}");
    let spans = spans_of(&collector, &trace_id, &[&send_name, "receive (anonymous)"]).await;
    assert_eq!(parts[2], find(&spans, &send_name).span_id, "traceparent names the producer span");
    // And the other way: the gateway continues the trace context of pika's reply.
    let reply_span = seen["reply_span_id"].as_str().unwrap();
    assert_eq!(find(&spans, "receive (anonymous)").parent_span_id, reply_span);
    assert!(seen["x-deadline"].as_i64().is_some_and(|ms| ms > 1_700_000_000_000), "{seen:?}");
    assert_eq!(seen["payload"], "from rust");
}

#[tokio::test]
async fn metrics_count_calls_by_route_and_code() {
    let url = testkit::amqp_url();
    let route = testkit::unique("metered");
    let unbound = testkit::unique("metered-nobody");
    let worker_metrics = testkit::free_addr();
    let _worker = worker(&url, &route, &["--durable", "false", "--metrics-listen", &worker_metrics.to_string()]).await;
    let gateway_metrics = testkit::free_addr();
    let routes = format!("{route},{unbound}");
    let (_gateway, addr) = gateway(&url, &routes, &["--metrics-listen", &gateway_metrics.to_string()]).await;

    let mut client = client(addr).await;
    for i in 0..3 {
        let request = ProcessRequest { route: route.clone(), payload: vec![b'x'; i].into(), ..Default::default() };
        client.process(request).await.unwrap();
    }
    let invalid = ProcessRequest { route: "not-allowed".into(), ..Default::default() };
    assert_eq!(client.process(invalid).await.unwrap_err().code(), Code::InvalidArgument);
    let nobody = ProcessRequest { route: unbound.clone(), ..Default::default() };
    assert_eq!(client.process(nobody).await.unwrap_err().code(), Code::Unavailable);

    let text = testkit::scrape::metrics(gateway_metrics).await;
    let ok = format!("gateway_calls_total{{route=\"{route}\",code=\"OK\"}}");
    assert_eq!(testkit::scrape::sample(&text, &ok), Some(3.0), "{text}");
    let invalid = "gateway_calls_total{route=\"(invalid)\",code=\"INVALID_ARGUMENT\"}";
    assert_eq!(testkit::scrape::sample(&text, invalid), Some(1.0), "{text}");
    let unavailable = format!("gateway_calls_total{{route=\"{unbound}\",code=\"UNAVAILABLE\"}}");
    assert_eq!(testkit::scrape::sample(&text, &unavailable), Some(1.0), "{text}");
    assert_eq!(testkit::scrape::sample(&text, "gateway_unroutable_total"), Some(1.0), "{text}");
    assert_eq!(testkit::scrape::sample(&text, "gateway_pending_calls"), Some(0.0), "{text}");
    assert_eq!(testkit::scrape::sample(&text, "gateway_calls_in_flight"), Some(0.0), "{text}");
    let count = format!("gateway_call_duration_seconds_count{{route=\"{route}\"}}");
    assert_eq!(testkit::scrape::sample(&text, &count), Some(3.0), "{text}");
    assert!(text.contains("# TYPE gateway_calls_total counter"), "{text}");

    // The worker counts a reply once the broker confirmed it: maybe just after
    // the caller has it.
    let ok = format!("worker_messages_total{{route=\"{route}\",outcome=\"ok\"}}");
    testkit::eventually("worker counted 3 replies", Duration::from_secs(5), || {
        let ok = ok.clone();
        async move { testkit::scrape::sample(&testkit::scrape::metrics(worker_metrics).await, &ok) == Some(3.0) }
    })
    .await;
    let text = testkit::scrape::metrics(worker_metrics).await;
    let handled = format!("worker_handler_duration_seconds_count{{route=\"{route}\"}}");
    assert_eq!(testkit::scrape::sample(&text, &handled), Some(3.0), "{text}");
}

#[tokio::test]
async fn without_export_the_gateway_still_starts_and_passes_on_a_trace() {
    let (_pika, _gateway, addr, route) = pika_behind_a_gateway("pika-noexport", &[]).await;

    // No traceparent from the caller, no OTLP endpoint on the gateway.
    let request = ProcessRequest { route: route.clone(), ..ProcessRequest::default() };
    let response = client(addr).await.process(request).await.unwrap();
    let seen = seen_by_pika(response);
    let traceparent = seen["traceparent"].as_str().unwrap_or_else(|| panic!("no traceparent: {seen:?}"));
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert!(parts.len() == 4 && parts[1].len() == 32 && parts[1] != "0".repeat(32), "{traceparent}");
    assert_eq!(parts[3], "01", "a new trace is sampled by default (parentbased_always_on)");
    assert!(!seen.contains_key("tracestate"), "an empty tracestate is left out: {seen:?}");

    // A caller's trace is passed on as it came, tracestate and baggage
    // included: without spans of its own, the gateway is transparent.
    let (trace_id, caller_span) = caller_context();
    let mut request = traced(&route, "traced", &trace_id, &caller_span);
    request.metadata_mut().insert("tracestate", "vendor=abc".parse().unwrap());
    request.metadata_mut().insert("baggage", "tenant=acme".parse().unwrap());
    let response = client(addr).await.process(request).await.unwrap();
    let seen = seen_by_pika(response);
    assert_eq!(seen["traceparent"], format!("00-{trace_id}-{caller_span}-01"), "{seen:?}");
    assert_eq!((&seen["tracestate"], &seen["baggage"]), (&"vendor=abc".into(), &"tenant=acme".into()));
}

#[tokio::test]
async fn unsampled_calls_make_no_spans_and_pass_their_decision_on() {
    let collector = OtlpCollector::start().await;
    let endpoint = collector.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // New traces are never sampled; callers' decisions are followed.
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ];
    let (_pika, _gateway, addr, route) = pika_behind_a_gateway("pika-sampled", &env).await;
    let seen = |response| seen_by_pika(response)["traceparent"].as_str().unwrap().to_owned();

    let unsampled = ProcessRequest { route: route.clone(), ..ProcessRequest::default() };
    let traceparent = seen(client(addr).await.process(unsampled).await.unwrap());
    let unsampled_trace = traceparent.split('-').nth(1).unwrap().to_owned();
    assert!(traceparent.ends_with("-00"), "the worker learns the call is not sampled: {traceparent}");

    let (trace_id, caller_span) = caller_context();
    let traceparent = seen(client(addr).await.process(traced(&route, "x", &trace_id, &caller_span)).await.unwrap());
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")) && traceparent.ends_with("-01"), "{traceparent}");
    // The sampled call's spans arrive; the unsampled call, made first, made none.
    spans_of(&collector, &trace_id, &[&format!("send {route}")]).await;
    assert!(collector.trace(&unsampled_trace).is_empty(), "{:?}", collector.trace(&unsampled_trace));
}
