//! The users' own services through the gateway (`--descriptor-set`,
//! `--service`): typed methods in passthrough and with JSON transcoding, what
//! their requests carry on the wire, the `Process` contract they keep
//! (deadline, correlation id, trace context, tokens, status), reflection and
//! health for them with grpcurl, and the configurations refused at start-up.
//!
//! The API is `tests/proto/shop/v1/shop.proto`, compiled into a descriptor
//! set by protoc as a user would. (Trace context across a typed call, from a
//! Python caller to Node.js and Rust workers, is checked with real processes
//! and an OTLP collector in `examples.rs`.) A worker here is either the `worker`
//! library or a bare lapin consumer, so the test reads exactly what the
//! gateway published.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::{OnceLock, atomic::Ordering},
    time::Duration,
};

use amqp_gateway::wire;
use common::{READY, TestGateway, TestWorker};
use futures::StreamExt;
use http::uri::PathAndQuery;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use prost::Message;
use serde_json::json;
use testkit::Process;
use tonic::{Code, Status, transport::Channel};

// The test API's messages, as prost would generate them.

#[derive(Clone, PartialEq, Message)]
struct GetItemRequest {
    #[prost(string, tag = "1")]
    sku: String,
}

#[derive(Clone, PartialEq, Message)]
struct Item {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(int64, tag = "3")]
    price_cents: i64,
    #[prost(message, optional, tag = "4")]
    updated_at: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct PlaceOrderRequest {
    #[prost(string, tag = "1")]
    customer: String,
    #[prost(message, repeated, tag = "2")]
    lines: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(uint32, tag = "2")]
    quantity: u32,
}

#[derive(Clone, PartialEq, Message)]
struct Order {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(int32, tag = "2")]
    status: i32,
    #[prost(int64, tag = "3")]
    total_cents: i64,
}

const GET_ITEM: &str = "/shop.v1.Shop/GetItem";
const PLACE_ORDER: &str = "/shop.v1.Shop/PlaceOrder";

/// The test API's descriptor set, built once per test binary with protoc, as
/// `protoc --include_imports --include_source_info --descriptor_set_out`.
fn descriptor_set() -> &'static Path {
    static SET: OnceLock<PathBuf> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join("shop.binpb");
        // Test processes run at once: each writes its own file and renames it
        // into place (the content is the same).
        let partial = dir.join(format!("shop.binpb.{}", std::process::id()));
        let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/proto");
        let status = std::process::Command::new(protoc_bin_vendored::protoc_bin_path().unwrap())
            .arg("--include_imports")
            .arg("--include_source_info")
            .arg(format!("--descriptor_set_out={}", partial.display()))
            .arg("-I")
            .arg(&proto)
            .arg("-I")
            .arg(protoc_bin_vendored::include_path().unwrap())
            .arg("shop/v1/shop.proto")
            .status()
            .unwrap();
        assert!(status.success(), "protoc failed on {proto:?}");
        std::fs::rename(&partial, &out).unwrap();
        out
    })
}

/// Routes of one test's two methods, and the gateway flags that serve them.
struct Api {
    get_route: String,
    order_route: String,
    routes: [String; 2],
}

impl Api {
    fn new() -> Self {
        let (get_route, order_route) = (testkit::unique("shop-get"), testkit::unique("shop-order"));
        let routes = [format!("shop.v1.Shop/GetItem={get_route}"), format!("shop.v1.Shop/PlaceOrder={order_route}")];
        Self { get_route, order_route, routes }
    }

    fn flags<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec!["--descriptor-set", descriptor_set().to_str().unwrap(), "--service", "shop.v1.Shop"];
        flags.extend(["--method-route", &self.routes[0], "--method-route", &self.routes[1]]);
        flags.extend_from_slice(extra);
        flags
    }
}

/// Calls a typed method with tonic's own client.
async fn call<Req, Resp>(
    addr: std::net::SocketAddr,
    path: &str,
    request: tonic::Request<Req>,
) -> Result<tonic::Response<Resp>, Status>
where
    Req: Message + Send + Sync + 'static,
    Resp: Message + Default + Send + Sync + 'static,
{
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(request, PathAndQuery::from_str(path).unwrap(), tonic_prost::ProstCodec::default()).await
}

/// A bare AMQP consumer of one queue: the test reads what the gateway
/// published and answers by hand.
struct RawWorker {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    _connection: Connection,
}

impl RawWorker {
    async fn start(queue: &str) -> Self {
        let connection = Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let declare = QueueDeclareOptions { auto_delete: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(queue.into(), declare, FieldTable::default()).await.unwrap();
        let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let consumer = channel.basic_consume(queue.into(), "".into(), no_ack, FieldTable::default()).await.unwrap();
        Self { channel, consumer, _connection: connection }
    }

    async fn next(&mut self) -> Delivery {
        let next = tokio::time::timeout(READY, self.consumer.next()).await.expect("a request must arrive");
        next.unwrap().unwrap()
    }

    async fn reply(&self, request: &Delivery, body: &[u8], properties: BasicProperties) {
        let properties = properties.with_correlation_id(request.properties.correlation_id().clone().unwrap());
        let reply_to = request.properties.reply_to().clone().unwrap();
        let options = BasicPublishOptions::default();
        self.channel.basic_publish("".into(), reply_to, options, body, properties).await.unwrap();
    }
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

fn string_header(delivery: &Delivery, name: &str) -> Option<String> {
    header(delivery, name).and_then(wire::string).map(str::to_owned)
}

#[tokio::test]
async fn passthrough_publishes_the_callers_bytes_and_returns_the_workers() {
    let api = Api::new();
    let mut worker = RawWorker::start(&api.get_route).await;
    let gateway = TestGateway::start(&[], &api.flags(&[])).await;

    let mut request = tonic::Request::new(GetItemRequest { sku: "tea".into() });
    request.set_timeout(Duration::from_secs(5));
    let addr = gateway.addr;
    let caller = tokio::spawn(async move { call::<_, Item>(addr, GET_ITEM, request).await });

    let delivery = worker.next().await;
    assert_eq!(delivery.data, GetItemRequest { sku: "tea".into() }.encode_to_vec(), "the caller's bytes, unchanged");
    let properties = &delivery.properties;
    assert_eq!(properties.content_type().as_ref().map(|c| c.as_str()), Some(wire::PROTOBUF));
    assert_eq!(properties.kind().as_ref().map(|k| k.as_str()), Some("shop.v1.GetItemRequest"));
    assert_eq!(string_header(&delivery, wire::METHOD_HEADER).as_deref(), Some("shop.v1.Shop/GetItem"));
    assert!(header(&delivery, wire::DEADLINE_HEADER).is_some_and(|d| wire::integer(d).is_some()));
    let expiration: u64 = properties.expiration().as_ref().unwrap().as_str().parse().unwrap();
    assert!((1..=5000).contains(&expiration), "{expiration}");
    let correlation_id = properties.correlation_id().as_ref().unwrap().to_string();
    assert_eq!(properties.message_id().as_ref().map(ToString::to_string), Some(correlation_id.clone()));

    let item = Item { sku: "tea".into(), name: "Green tea".into(), price_cents: 350, updated_at: None };
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), wire::long_string("acme"));
    let reply = BasicProperties::default().with_content_type(wire::PROTOBUF.into()).with_headers(headers);
    worker.reply(&delivery, &item.encode_to_vec(), reply).await;

    let response = caller.await.unwrap().unwrap();
    assert_eq!(response.metadata().get("correlation-id").unwrap(), correlation_id.as_str());
    assert_eq!(response.metadata().get("tenant").unwrap(), "acme", "reply headers come back as metadata");
    assert_eq!(response.into_inner(), item);

    // A worker that never answers: the caller's deadline holds, and nothing
    // is left waiting.
    let mut late = tonic::Request::new(GetItemRequest { sku: "slow".into() });
    late.set_timeout(Duration::from_millis(500));
    let caller = tokio::spawn(async move { call::<_, Item>(addr, GET_ITEM, late).await });
    let ignored = worker.next().await;
    assert_eq!(ignored.data, GetItemRequest { sku: "slow".into() }.encode_to_vec());
    let status = caller.await.unwrap().unwrap_err();
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    testkit::eventually("no call pending", READY, || {
        let pending = gateway.running().client().pending();
        async move { pending == 0 }
    })
    .await;
}

#[tokio::test]
async fn json_transcoding_sends_canonical_json_and_parses_the_reply() {
    let api = Api::new();
    let mut worker = RawWorker::start(&api.order_route).await;
    let gateway = TestGateway::start(&[], &api.flags(&["--transcode-json", "shop.v1.Shop/PlaceOrder"])).await;
    let addr = gateway.addr;
    let order = PlaceOrderRequest {
        customer: "ann".into(),
        lines: vec![Line { sku: "tea".into(), quantity: 2 }, Line { sku: "cake".into(), quantity: 0 }],
    };

    let request = order.clone();
    let caller = tokio::spawn(async move { call::<_, Order>(addr, PLACE_ORDER, tonic::Request::new(request)).await });
    let delivery = worker.next().await;
    let properties = &delivery.properties;
    assert_eq!(properties.content_type().as_ref().map(|c| c.as_str()), Some(wire::JSON));
    assert_eq!(properties.kind().as_ref().map(|k| k.as_str()), Some("shop.v1.PlaceOrderRequest"));
    let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(body, json!({"customer": "ann", "lines": [{"sku": "tea", "quantity": 2}, {"sku": "cake"}]}));
    // The tutorial's reply: JSON, no content type, no headers.
    let reply = br#"{"orderId": "o-1", "status": "ORDER_STATUS_PLACED", "totalCents": "700"}"#;
    worker.reply(&delivery, reply, BasicProperties::default()).await;
    let response = caller.await.unwrap().unwrap().into_inner();
    assert_eq!(response, Order { order_id: "o-1".into(), status: 1, total_cents: 700 });

    // A reply that does not fit the response type fails the call, saying
    // what did not fit, and is counted.
    let caller = tokio::spawn(async move { call::<_, Order>(addr, PLACE_ORDER, tonic::Request::new(order)).await });
    let delivery = worker.next().await;
    worker.reply(&delivery, br#"{"orderId": "o-2", "total": 5}"#, BasicProperties::default()).await;
    let status = caller.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("does not fit shop.v1.Order") && status.message().contains("total"),
        "{}",
        status.message()
    );
    assert_eq!(gateway.running().client().stats().replies_not_fitting.load(Ordering::Relaxed), 1);

    // Large messages are transcoded off the runtime's threads, with the
    // same result.
    let large = PlaceOrderRequest { customer: "c".repeat(200_000), lines: vec![] };
    let caller = tokio::spawn(async move { call::<_, Order>(addr, PLACE_ORDER, tonic::Request::new(large)).await });
    let delivery = worker.next().await;
    let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(body["customer"].as_str().map(str::len), Some(200_000));
    let reply = serde_json::to_vec(&json!({"orderId": "o".repeat(100_000), "totalCents": "1"})).unwrap();
    worker.reply(&delivery, &reply, BasicProperties::default()).await;
    let response = caller.await.unwrap().unwrap().into_inner();
    assert_eq!((response.order_id.len(), response.total_cents), (100_000, 1));
    assert_eq!(gateway.running().client().pending(), 0);
}

#[tokio::test]
async fn typed_methods_keep_the_process_contract() {
    let api = Api::new();
    let process_route = testkit::unique("shop-process");
    let _get = TestWorker::echo(&api.get_route).await;
    let failing = tower::service_fn(|_request: worker::Request| async {
        Err::<worker::Response, _>(worker::Status::failed_precondition("out of stock"))
    });
    let _order = TestWorker::start(&api.order_route, failing).await;
    let tokens = format!("all-routes-0123456789;get-only-0123456789 {}", api.get_route);
    let gateway = TestGateway::start(&[&process_route], &api.flags(&["--tokens", &tokens])).await;
    let addr = gateway.addr;
    let get = || GetItemRequest { sku: "tea".into() };
    let order = PlaceOrderRequest::default;

    // The echo worker returns the request's bytes: a GetItemRequest{sku} is an
    // Item{sku} on the wire.
    let item: Item = call(addr, GET_ITEM, with_token(Some("get-only-0123456789"), get())).await.unwrap().into_inner();
    assert_eq!(item.sku, "tea");

    let status =
        call::<_, Order>(addr, PLACE_ORDER, with_token(Some("all-routes-0123456789"), order())).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "out of stock"), "the worker's status");
    let status =
        call::<_, Order>(addr, PLACE_ORDER, with_token(Some("get-only-0123456789"), order())).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&api.order_route), "{}", status.message());
    let status = call::<_, Item>(addr, GET_ITEM, with_token(None, get())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A method's route is not a Process route, and a path of a served
    // service that is no method of it is unimplemented.
    let process = amqp_gateway::pb::ProcessRequest { route: api.get_route.clone(), ..Default::default() };
    let mut client = amqp_gateway::pb::gateway_client::GatewayClient::connect(format!("http://{addr}")).await.unwrap();
    let status = client.process(with_token(Some("all-routes-0123456789"), process)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = call::<_, Item>(addr, "/shop.v1.Shop/Nope", with_token(Some("all-routes-0123456789"), get()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // A typed request over the payload limit is refused like a Process one.
    let gateway = TestGateway::start(&[], &api.flags(&["--max-payload-bytes", "16"])).await;
    let big = GetItemRequest { sku: "x".repeat(64) };
    let status = call::<_, Item>(gateway.addr, GET_ITEM, tonic::Request::new(big)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// A request carrying `token`, if any.
fn with_token<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_the_users_services() {
    let api = Api::new();
    let _get = TestWorker::echo(&api.get_route).await;
    let process_route = testkit::unique("shop-process");
    let gateway = TestGateway::start(&[&process_route], &api.flags(&[])).await;
    let addr = gateway.addr;

    let (ok, out) = testkit::grpcurl_plaintext(addr, &[], &["list"]).await;
    assert!(ok, "{out}");
    for served in ["shop.v1.Shop", "gateway.v1.Gateway", "grpc.health.v1.Health"] {
        assert!(out.lines().any(|l| l == served), "{served} must be listed:\n{out}");
    }
    for unserved in ["shop.v1.Feed", "shop.v1.Backoffice"] {
        assert!(!out.contains(unserved), "{unserved} is in the file but not served:\n{out}");
    }
    let (ok, out) = testkit::grpcurl_plaintext(addr, &[], &["describe", "shop.v1.Shop"]).await;
    assert!(ok && out.contains("GetItem looks an item up by its SKU."), "comments must reach grpcurl:\n{out}");
    let (ok, out) = testkit::grpcurl_plaintext(addr, &[], &["describe", "shop.v1.Item"]).await;
    assert!(ok && out.contains("Its price, in cents.") && out.contains(".google.protobuf.Timestamp"), "{out}");

    // A JSON call with no proto file on the caller's side.
    let (ok, out) = testkit::grpcurl_plaintext(addr, &["-d", r#"{"sku": "tea"}"#], &["shop.v1.Shop/GetItem"]).await;
    assert!(ok, "{out}");
    let item: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(item, json!({"sku": "tea"}));

    let (ok, out) =
        testkit::grpcurl_plaintext(addr, &["-d", r#"{"service": "shop.v1.Shop"}"#], &["grpc.health.v1.Health/Check"])
            .await;
    assert!(ok && out.contains("SERVING"), "{out}");
}

#[tokio::test]
async fn the_binary_is_configured_from_the_environment_and_counts_calls_per_method_route() {
    let api = Api::new();
    let url = testkit::amqp_url();
    let worker =
        Process::spawn("worker", &["--durable", "false"], &[("AMQP_URL", &url), ("WORKER_ROUTE", &api.get_route)]);
    testkit::load::logged(&worker, "consuming").await;
    let (addr, metrics) = (testkit::free_addr(), testkit::free_addr());
    let (addr_text, metrics_text) = (addr.to_string(), metrics.to_string());
    let methods = api.routes.join(",");
    let env = [
        ("AMQP_URL", url.as_str()),
        ("GATEWAY_LISTEN", addr_text.as_str()),
        ("GATEWAY_METRICS_LISTEN", metrics_text.as_str()),
        ("GATEWAY_DESCRIPTOR_SET", descriptor_set().to_str().unwrap()),
        ("GATEWAY_SERVICE", "shop.v1.Shop"),
        ("GATEWAY_METHOD_ROUTE", methods.as_str()),
        ("GATEWAY_TRANSCODE_JSON", "shop.v1.Shop/PlaceOrder"),
        // One thread for every call (a current-thread runtime).
        ("GATEWAY_WORKER_THREADS", "1"),
    ];
    let gateway = Process::spawn("gateway", &[], &env);
    testkit::load::logged(&gateway, "connected to the broker").await;
    let log = gateway.log();
    assert!(log.contains("serving typed method") && log.contains(&api.get_route), "{log}");
    assert!(log.contains("encoding=Json") && log.contains("encoding=Protobuf"), "{log}");

    let (ok, out) = testkit::grpcurl_plaintext(addr, &["-d", r#"{"sku": "tea"}"#], &["shop.v1.Shop/GetItem"]).await;
    assert!(ok && out.contains("\"tea\""), "{out}");
    let scraped = testkit::scrape::metrics(metrics).await;
    let series = format!("gateway_calls_total{{route=\"{}\",code=\"OK\"}}", api.get_route);
    assert_eq!(testkit::scrape::sample(&scraped, &series), Some(1.0), "{series} in:\n{scraped}");
}

#[tokio::test]
async fn bad_configurations_fail_at_start_up_naming_the_problem() {
    let set = descriptor_set().to_str().unwrap();
    let missing = std::env::temp_dir().join(testkit::unique("missing")).join("api.binpb");
    let not_a_set = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/proto/shop/v1/shop.proto");
    let cases: [(&[&str], &str); 8] = [
        (&["--descriptor-set", missing.to_str().unwrap(), "--service", "shop.v1.Shop"], "cannot read"),
        (
            &["--descriptor-set", not_a_set.to_str().unwrap(), "--service", "shop.v1.Shop"],
            "not a usable FileDescriptorSet",
        ),
        (
            &["--descriptor-set", set, "--service", "shop.v1.Nope"],
            "service \"shop.v1.Nope\" is not in the descriptor sets",
        ),
        (&["--descriptor-set", set, "--service", "shop.v1.Feed"], "shop.v1.Feed/Watch (server streaming)"),
        (
            &[
                "--descriptor-set",
                set,
                "--service",
                "shop.v1.Shop",
                "--method-route",
                "shop.v1.Shop/GetItem=shared",
                "--method-route",
                "shop.v1.Shop/PlaceOrder=shared",
            ],
            "both map to route \"shared\"",
        ),
        (
            &["--descriptor-set", set, "--service", "shop.v1.Shop", "--method-route", "shop.v1.Shop/GetItem=no way"],
            "not a valid route",
        ),
        (
            &["--descriptor-set", set, "--service", "shop.v1.Shop", "--routes", "shop.v1.Shop.GetItem"],
            "also in --routes",
        ),
        (&["--service", "shop.v1.Shop"], "--service needs --descriptor-set"),
    ];
    let url = testkit::amqp_url();
    for (args, expected) in cases {
        let mut gateway = Process::spawn("gateway", args, &[("AMQP_URL", url.as_str())]);
        let status = gateway.exited(READY).await;
        let log = gateway.log();
        assert!(!status.success(), "{args:?} must fail:\n{log}");
        assert!(
            log.contains("invalid configuration") && log.contains(expected),
            "{args:?}: expected {expected:?} in:\n{log}"
        );
    }
}
