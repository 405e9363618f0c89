//! End to end through the public APIs: a real tonic client calls an in-process
//! gateway, which publishes to the real RabbitMQ from `AMQP_URL`, where
//! workers built with the `worker` library answer. Every test uses its own
//! queue names, so runs never share state on the broker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use amqp_gateway::pb::{ProcessRequest, gateway_client::GatewayClient};
use futures::StreamExt;
use gateway::{Args, Config};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tower::service_fn;
use worker::{Request, Response, Status};

mod common;

use common::{TestGateway, TestWorker};

async fn replied_eventually(worker: &TestWorker, n: u64) {
    let stats = worker.running().stats();
    testkit::eventually(&format!("worker replied {n} times"), Duration::from_secs(10), || {
        let replied = stats.replied.load(Ordering::Relaxed);
        async move { replied == n }
    })
    .await;
}

fn request(route: &str, payload: impl Into<Vec<u8>>) -> ProcessRequest {
    ProcessRequest { route: route.into(), payload: payload.into().into(), ..ProcessRequest::default() }
}

fn with_timeout(message: ProcessRequest, timeout: Duration) -> tonic::Request<ProcessRequest> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn happy_path_round_trip() {
    let route = testkit::unique("echo");
    let worker = TestWorker::echo(&route).await;
    let gateway = TestGateway::start(&[&route], &[]).await;
    let mut client = gateway.client().await;

    let message = ProcessRequest {
        route: route.clone(),
        payload: b"{\"hello\":\"world\"}".to_vec().into(),
        content_type: "application/json".into(),
        headers: HashMap::from([("tenant".into(), "acme".into())]),
    };
    let response = client.process(message).await.unwrap();
    let id = response.metadata().get("correlation-id").unwrap().to_str().unwrap().to_owned();
    let response = response.into_inner();
    assert_eq!(&response.payload[..], b"{\"hello\":\"world\"}");
    assert_eq!(response.content_type, "application/json");
    assert_eq!(response.headers, HashMap::from([("tenant".into(), "acme".into())]));
    assert!(uuid::Uuid::try_parse(&response.correlation_id).is_ok(), "{}", response.correlation_id);
    assert_eq!(response.correlation_id, id);
    assert_eq!(gateway.running().client().pending(), 0);
    // The worker counts a reply once the broker confirmed it, which may be
    // just after the caller already has it.
    replied_eventually(&worker, 1).await;

    gateway.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn empty_route_uses_the_default_route() {
    let route = testkit::unique("default");
    let _worker = TestWorker::echo(&route).await;
    let gateway = TestGateway::start(&[&route], &["--default-route", &route]).await;
    let response = gateway.client().await.process(request("", "via default")).await.unwrap().into_inner();
    assert_eq!(&response.payload[..], b"via default");
}

#[tokio::test]
async fn a_thousand_concurrent_calls_each_get_their_own_reply() {
    let route = testkit::unique("many");
    let _worker = TestWorker::echo(&route).await;
    let gateway = TestGateway::start(&[&route], &[]).await;
    let client = gateway.client().await;

    let calls = (0..1000).map(|i| {
        let mut client = client.clone();
        let route = route.clone();
        async move {
            let payload = format!("payload-{i}-{}", uuid::Uuid::new_v4());
            let response = client.process(request(&route, payload.clone())).await.unwrap().into_inner();
            assert_eq!(response.payload, payload.as_bytes(), "call {i} got someone else's reply");
            response.correlation_id
        }
    });
    let ids: HashSet<String> = futures::stream::iter(calls).buffer_unordered(1000).collect().await;
    assert_eq!(ids.len(), 1000, "correlation ids must be unique");
    assert_eq!(gateway.running().client().pending(), 0);
}

#[tokio::test]
async fn two_gateways_two_workers_no_cross_talk() {
    let route = testkit::unique("pair");
    let workers = [TestWorker::echo(&route).await, TestWorker::echo(&route).await];
    let gateways = [TestGateway::start(&[&route], &[]).await, TestGateway::start(&[&route], &[]).await];

    let mut calls = Vec::new();
    for (g, gateway) in gateways.iter().enumerate() {
        let client = gateway.client().await;
        for i in 0..200 {
            let mut client = client.clone();
            let route = route.clone();
            calls.push(async move {
                let payload = format!("gateway-{g}-call-{i}");
                let response = client.process(request(&route, payload.clone())).await.unwrap().into_inner();
                assert_eq!(response.payload, payload.as_bytes());
            });
        }
    }
    futures::stream::iter(calls).buffer_unordered(400).collect::<Vec<()>>().await;
    for gateway in &gateways {
        assert_eq!(gateway.running().client().pending(), 0);
        assert_eq!(gateway.running().client().stats().unknown_replies.load(Ordering::Relaxed), 0);
    }
    let served = || workers.iter().map(|w| w.running().stats().replied.load(Ordering::Relaxed)).collect::<Vec<_>>();
    testkit::eventually("workers counted 400 replies", Duration::from_secs(10), || {
        let total: u64 = served().iter().sum();
        async move { total == 400 }
    })
    .await;
    let served = served();
    assert!(served.iter().all(|&n| n > 0), "both workers should take requests: {served:?}");
}

#[tokio::test]
async fn unknown_route_is_invalid_argument() {
    let route = testkit::unique("known");
    let gateway = TestGateway::start(&[&route], &[]).await;
    let status = gateway.client().await.process(request("not-allowed", "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not allowed"), "{}", status.message());

    let status = gateway.client().await.process(request("", "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "no default route: {status:?}");
}

#[tokio::test]
async fn invalid_headers_are_invalid_argument() {
    let route = testkit::unique("headers");
    let gateway = TestGateway::start(&[&route], &["--max-headers", "2"]).await;
    let mut client = gateway.client().await;
    for headers in [
        HashMap::from([("x-deadline".to_owned(), "0".to_owned())]),
        HashMap::from([("traceparent".to_owned(), "00-0-0-01".to_owned())]),
        (0..3).map(|i| (format!("h{i}"), "v".to_owned())).collect(),
    ] {
        let message = ProcessRequest { headers, ..request(&route, "x") };
        let status = client.process(message).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}

#[tokio::test]
async fn route_without_queue_is_unavailable_at_once() {
    let route = testkit::unique("nobody-home");
    let gateway = TestGateway::start(&[&route], &[]).await;
    let started = Instant::now();
    let status =
        gateway.client().await.process(with_timeout(request(&route, "x"), Duration::from_secs(30))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}: should fail on basic.return, not at the deadline",
        started.elapsed()
    );
    assert_eq!(gateway.running().client().stats().unroutable.load(Ordering::Relaxed), 1);
    assert_eq!(gateway.running().client().pending(), 0);
}

#[tokio::test]
async fn deadline_with_a_slow_handler_is_deadline_exceeded_and_leaves_nothing_pending() {
    let route = testkit::unique("slow");
    let worker = TestWorker::start(&route, worker::handlers::echo(Duration::from_millis(600))).await;
    let gateway = TestGateway::start(&[&route], &[]).await;

    let started = Instant::now();
    let status = gateway
        .deadline_client()
        .process(with_timeout(request(&route, "slow"), Duration::from_millis(200)))
        .await
        .unwrap_err();
    // tonic's own server timeout would answer CANCELLED: the gateway must win.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(590), "answered at the deadline, not with the reply");
    assert_eq!(gateway.running().client().pending(), 0, "the pending entry must leave with the deadline");

    // The worker still answers later: that reply is dropped and counted.
    let stats = gateway.running().client().stats();
    testkit::eventually("late reply counted", Duration::from_secs(10), || {
        let late = stats.unknown_replies.load(Ordering::Relaxed);
        async move { late == 1 }
    })
    .await;
    replied_eventually(&worker, 1).await;
}

#[tokio::test]
async fn deadline_is_capped_by_max_timeout_and_defaulted() {
    let route = testkit::unique("capped");
    let _worker = TestWorker::start(&route, worker::handlers::echo(Duration::from_millis(800))).await;
    let gateway = TestGateway::start(&[&route], &["--default-timeout", "200ms", "--max-timeout", "300ms"]).await;
    let mut client = gateway.deadline_client();

    // No deadline from the caller: the default applies.
    let status = client.process(request(&route, "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // A long caller deadline is capped.
    let started = Instant::now();
    let status = client.process(with_timeout(request(&route, "x"), Duration::from_secs(30))).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn worker_error_status_reaches_the_caller() {
    let route = testkit::unique("fails");
    let handler = service_fn(|request: Request| async move {
        Err::<Response, _>(Status::failed_precondition(format!("cannot handle {} bytes", request.payload.len())))
    });
    let _worker = TestWorker::start(&route, handler).await;
    let gateway = TestGateway::start(&[&route], &[]).await;
    let status = gateway.client().await.process(request(&route, "abc")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "cannot handle 3 bytes");
    assert!(status.metadata().get("correlation-id").is_some());
}

#[tokio::test]
async fn panicking_handler_answers_internal() {
    let route = testkit::unique("panics");
    let handler = service_fn(|_request: Request| async move {
        if true {
            panic!("handler bug");
        }
        Ok::<_, Status>(Response::default())
    });
    let worker = TestWorker::start(&route, handler).await;
    let gateway = TestGateway::start(&[&route], &[]).await;
    let status = gateway.client().await.process(request(&route, "boom")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // Answered INTERNAL and acked: no redelivery loop.
    replied_eventually(&worker, 1).await;
    assert_eq!(worker.running().stats().panics.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn oversized_payload_is_resource_exhausted_with_the_limit() {
    let route = testkit::unique("big");
    let _worker = TestWorker::echo(&route).await;
    let gateway = TestGateway::start(&[&route], &["--max-payload-bytes", "1024"]).await;
    let mut client = gateway.client().await;
    let status = client.process(request(&route, vec![7u8; 1025])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1024"), "{}", status.message());
    // Right at the limit is fine.
    let response = client.process(request(&route, vec![7u8; 1024])).await.unwrap().into_inner();
    assert_eq!(response.payload.len(), 1024);
}

#[tokio::test]
async fn caller_cancellation_drops_the_pending_entry() {
    let route = testkit::unique("cancel");
    let _worker = TestWorker::start(&route, worker::handlers::echo(Duration::from_millis(500))).await;
    let gateway = TestGateway::start(&[&route], &[]).await;
    let mut client = gateway.client().await;

    let call = tokio::spawn(async move { client.process(request(&route, "never mind")).await });
    let client_handle = gateway.running().client().clone();
    testkit::eventually("call published and pending", Duration::from_secs(5), || {
        let pending = client_handle.pending();
        async move { pending == 1 }
    })
    .await;
    call.abort(); // drops the client future: the HTTP/2 stream is reset
    testkit::eventually("pending entry dropped on cancellation", Duration::from_secs(5), || {
        let pending = client_handle.pending();
        async move { pending == 0 }
    })
    .await;
    // The worker's late answer is discarded and counted.
    testkit::eventually("late reply counted", Duration::from_secs(10), || {
        let late = client_handle.stats().unknown_replies.load(Ordering::Relaxed);
        async move { late == 1 }
    })
    .await;
}

#[tokio::test]
async fn deadline_already_passed_is_answered_without_publishing() {
    let route = testkit::unique("expired");
    // No worker and no queue: a publish would come back UNAVAILABLE.
    let gateway = TestGateway::start(&[&route], &[]).await;
    let status = gateway
        .deadline_client()
        .process(with_timeout(request(&route, "late"), Duration::from_nanos(1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(gateway.running().client().stats().unroutable.load(Ordering::Relaxed), 0, "nothing was published");
}

#[tokio::test]
async fn in_flight_limit_sheds_load() {
    let route = testkit::unique("shed");
    let _worker = TestWorker::start(&route, worker::handlers::echo(Duration::from_millis(500))).await;
    let gateway = TestGateway::start(&[&route], &["--max-in-flight", "2"]).await;
    let client = gateway.client().await;

    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            let route = route.clone();
            tokio::spawn(async move { client.process(request(&route, "slow")).await })
        })
        .collect();
    let running = gateway.running();
    testkit::eventually("two calls in flight", Duration::from_secs(5), || {
        let n = running.in_flight();
        async move { n == 2 }
    })
    .await;
    let status = client.clone().process(request(&route, "third")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for call in slow {
        assert!(call.await.unwrap().is_ok());
    }
    // Capacity is back.
    assert!(client.clone().process(request(&route, "again")).await.is_ok());
}

#[tokio::test]
async fn classic_tutorial_worker_is_served() {
    // A worker written the way the RabbitMQ RPC tutorial writes one: reply to
    // `reply_to` with the same `correlation_id`, nothing else.
    let route = testkit::unique("tutorial");
    let connection = Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.queue_declare(route.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(route.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let served_by_worker = served.clone();
    let worker = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let reply_to = delivery.properties.reply_to().clone().unwrap();
            let correlation_id = delivery.properties.correlation_id().clone().unwrap();
            let body = format!("tutorial says: {}", String::from_utf8_lossy(&delivery.data));
            channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_correlation_id(correlation_id),
                )
                .await
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            served_by_worker.fetch_add(1, Ordering::Relaxed);
        }
    });

    let gateway = TestGateway::start(&[&route], &[]).await;
    let response = gateway.client().await.process(request(&route, "hi")).await.unwrap().into_inner();
    assert_eq!(&response.payload[..], b"tutorial says: hi");
    assert_eq!(response.content_type, "");
    assert!(response.headers.is_empty());
    testkit::eventually("the tutorial worker acked", Duration::from_secs(5), || {
        let n = served.load(Ordering::Relaxed);
        async move { n == 1 }
    })
    .await;
    worker.abort();
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn broker_down_is_unavailable_at_once_and_not_serving() {
    let route = testkit::unique("down");
    // Nothing listens on this port: the gateway keeps retrying in the background.
    let dead = testkit::free_addr();
    let url = format!("amqp://guest:guest@{dead}/%2f");
    let argv = ["gateway", "--amqp-url", &url, "--routes", &route];
    let config: Config = <Args as clap::Parser>::try_parse_from(argv).unwrap().into_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = gateway::spawn(config, listener, shutdown.clone()).unwrap();

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let started = Instant::now();
    let status = GatewayClient::new(channel.clone())
        .process(with_timeout(request(&route, "x"), Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "must not wait for the deadline");

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "gateway.v1.Gateway"] {
        let check = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let status = health.check(check).await.unwrap().into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32, "{service:?}");
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), running.wait()).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_calls_in_flight() {
    let route = testkit::unique("drain");
    let _worker = TestWorker::start(&route, worker::handlers::echo(Duration::from_millis(400))).await;
    let gateway = TestGateway::start(&[&route], &[]).await;
    let client = gateway.client().await;
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let mut client = client.clone();
            let route = route.clone();
            tokio::spawn(async move { client.process(request(&route, format!("drain-{i}"))).await })
        })
        .collect();
    let running = gateway.running();
    testkit::eventually("calls in flight", Duration::from_secs(5), || {
        let n = running.in_flight();
        async move { n == 5 }
    })
    .await;
    gateway.stop().await;
    for (i, call) in calls.into_iter().enumerate() {
        let response = call.await.unwrap().unwrap().into_inner();
        assert_eq!(response.payload, format!("drain-{i}").as_bytes());
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let route = testkit::unique("reflect");
    let gateway = TestGateway::start(&[&route], &[]).await;
    let channel = Channel::from_shared(format!("http://{}", gateway.addr)).unwrap().connect().await.unwrap();

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut answers = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1: not a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "gateway.v1.Gateway"), "{list:?}");

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: not a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "gateway.v1.Gateway"), "{list:?}");
}

#[tokio::test]
async fn connection_loss_fails_waiting_calls_at_once_then_recovers() {
    let route = testkit::unique("cut");
    // Holds "slow" requests far longer than the test waits for the failure.
    let handler = service_fn(|request: Request| async move {
        if request.payload.as_ref() == b"slow" {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        Ok::<_, Status>(Response::new(request.payload))
    });
    let _worker = TestWorker::start(&route, handler).await;
    // The gateway reaches the broker through a proxy this test owns.
    let proxy = testkit::TcpProxy::start(testkit::broker_addr()).await;
    let gateway = TestGateway::start_with_url(&testkit::amqp_url_via(proxy.addr()), &[&route], &[]).await;
    let mut client = gateway.client().await;

    let mut waiting = client.clone();
    let waiting_route = route.clone();
    let call = tokio::spawn(async move {
        let started = Instant::now();
        let result = waiting.process(with_timeout(request(&waiting_route, "slow"), Duration::from_secs(30))).await;
        (result, started.elapsed())
    });
    let amqp = gateway.running().client().clone();
    testkit::eventually("call waiting for its reply", Duration::from_secs(5), || {
        let pending = amqp.pending();
        async move { pending == 1 }
    })
    .await;

    proxy.cut();
    let (result, elapsed) = call.await.unwrap();
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(elapsed < Duration::from_secs(10), "failed after {elapsed:?}: must not wait for the reply or the deadline");
    assert_eq!(amqp.pending(), 0);

    // The gateway reconnects by itself and serves again.
    testkit::eventually("gateway reconnected", Duration::from_secs(20), || {
        let back = amqp.is_connected() && amqp.stats().reconnects.load(Ordering::Relaxed) == 1;
        async move { back }
    })
    .await;
    let response = client.process(request(&route, "after")).await.unwrap().into_inner();
    assert_eq!(&response.payload[..], b"after");
}

#[tokio::test]
async fn a_channel_closed_by_the_broker_is_reopened_without_reconnecting() {
    let route = testkit::unique("chan");
    let exchange = testkit::unique("chan-x");
    let _worker = TestWorker::echo(&route).await;
    let connection = Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declare = || async {
        let options = lapin::options::ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
        channel
            .exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Direct, options, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                route.as_str().into(),
                exchange.as_str().into(),
                route.as_str().into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    };
    declare().await;
    let gateway = TestGateway::start(&[&route], &["--exchange", &exchange, "--channels", "1"]).await;
    let mut client = gateway.client().await;
    assert!(client.process(request(&route, "before")).await.is_ok());

    // Publishing to a deleted exchange makes the broker close that channel.
    channel.exchange_delete(exchange.as_str().into(), Default::default()).await.unwrap();
    let status = client.process(request(&route, "no exchange")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let stats = gateway.running().client().stats();
    testkit::eventually("channel reopened", Duration::from_secs(10), || {
        let reopened = stats.channel_recoveries.load(Ordering::Relaxed) >= 1;
        async move { reopened }
    })
    .await;

    declare().await;
    testkit::eventually("calls succeed again", Duration::from_secs(10), || {
        let mut client = client.clone();
        let route = route.clone();
        async move { client.process(request(&route, "after")).await.is_ok() }
    })
    .await;
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 0, "the connection itself was kept");
    assert_eq!(gateway.running().client().pending(), 0);
}

#[tokio::test]
async fn bearer_tokens_are_checked_before_any_amqp_work() {
    let route = testkit::unique("auth");
    let other = testkit::unique("auth-other");
    let _worker = TestWorker::echo(&route).await;
    let tokens = format!("all-routes-token-0123456789;limited-token-0123456789 {route}");
    let gateway = TestGateway::start(&[&route, &other], &["--tokens", &tokens]).await;
    let mut client = gateway.client().await;
    let with = |token: &str, route: &str| {
        let mut request = tonic::Request::new(request(route, "x"));
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };

    // Missing or wrong: UNAUTHENTICATED, the same answer either way, and no
    // publish (the unbound route would otherwise answer UNAVAILABLE).
    let missing = client.process(request(&other, "x")).await.unwrap_err();
    let wrong = client.process(with("not-a-token-0123456789", &other)).await.unwrap_err();
    for status in [&missing, &wrong] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(missing.message(), wrong.message());
    assert_eq!(gateway.running().client().stats().unroutable.load(Ordering::Relaxed), 0);

    assert!(client.process(with("all-routes-token-0123456789", &route)).await.is_ok());
    assert!(client.process(with("limited-token-0123456789", &route)).await.is_ok());
    let denied = client.process(with("limited-token-0123456789", &other)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Probes stay open by default.
    let channel = Channel::from_shared(format!("http://{}", gateway.addr)).unwrap().connect().await.unwrap();
    let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
    assert!(tonic_health::pb::health_client::HealthClient::new(channel).check(check).await.is_ok());
}

#[tokio::test]
async fn probes_can_require_a_token_too() {
    let route = testkit::unique("auth-probes");
    let gateway = TestGateway::start(&[&route], &["--tokens", "probe-token-0123456789abcdef", "--auth-probes"]).await;
    let channel = Channel::from_shared(format!("http://{}", gateway.addr)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let status = health.check(check.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(check);
    request.metadata_mut().insert("authorization", "Bearer probe-token-0123456789abcdef".parse().unwrap());
    assert!(health.check(request).await.is_ok());
}
