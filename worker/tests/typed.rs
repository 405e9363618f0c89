//! Typed handlers against the real RabbitMQ from `AMQP_URL`: requests
//! published as the gateway publishes a typed method's (protobuf bytes,
//! `type` property, `x-grpc-method`, Direct Reply-to), answered by a worker
//! running `worker::typed::handler`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::Duration;

use amqp_gateway::wire;
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::BasicPublishOptions,
    types::{FieldTable, ShortString},
};
use prost::Message;
use tokio_util::sync::CancellationToken;
use worker::{
    Code, RunningWorker, Status, WorkerConfig,
    typed::{self, Reply, TypedRequest},
};

const READY: Duration = Duration::from_secs(15);
const METHOD: &str = "test.v1.Asker/Ask";

/// The request message, as prost-build generates it with type names.
#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(string, tag = "1")]
    question: String,
    #[prost(int64, tag = "2")]
    times: i64,
}

impl prost::Name for Ask {
    const NAME: &'static str = "Ask";
    const PACKAGE: &'static str = "test.v1";
}

/// The response: the question repeated, then what the handler learnt about
/// the request it came in.
#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(string, repeated, tag = "1")]
    words: Vec<String>,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    message_type: String,
}

async fn asker(queue: &str, shutdown: &CancellationToken) -> RunningWorker {
    let handler = typed::handler(tower::service_fn(|request: TypedRequest<Ask>| async move {
        let TypedRequest { message: Ask { question, times }, request } = request;
        let times = usize::try_from(times).map_err(|_| Status::invalid_argument("times must not be negative"))?;
        let answer = Answer {
            words: vec![question; times],
            method: request.method.unwrap_or_default(),
            message_type: request.message_type.unwrap_or_default(),
        };
        Ok::<_, Status>(Reply::new(answer).with_header("served-by", "asker"))
    }));
    let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), queue);
    config.durable = false;
    let running = worker::spawn(config, handler, shutdown.clone());
    assert!(running.consuming(READY).await);
    running
}

/// Publishes like the gateway: one channel, replies on Direct Reply-to.
struct Gatewayish {
    _connection: Connection,
    channel: Channel,
    replies: Consumer,
}

impl Gatewayish {
    async fn new() -> Self {
        let connection = Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let replies = wire::consume_replies(&channel).await.unwrap();
        Self { _connection: connection, channel, replies }
    }

    /// Sends `body` as the gateway sends a typed method's request, and
    /// returns the reply.
    async fn call(&mut self, queue: &str, id: &str, body: &[u8], content_type: &str) -> Delivery {
        let mut headers = FieldTable::default();
        headers.insert(wire::METHOD_HEADER.into(), wire::long_string(METHOD));
        let properties: BasicProperties =
            wire::request_properties(id.into(), headers, Duration::from_secs(10), Some(content_type.into()))
                .with_type("test.v1.Ask".into());
        self.channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties)
            .await
            .unwrap()
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), self.replies.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(reply.properties.correlation_id().as_ref().map(ShortString::as_str), Some(id));
        reply
    }
}

#[tokio::test]
async fn a_typed_handler_answers_protobuf_with_protobuf() {
    let queue = testkit::unique("typed-ok");
    let shutdown = CancellationToken::new();
    let _worker = asker(&queue, &shutdown).await;
    let mut gateway = Gatewayish::new().await;

    let ask = Ask { question: "why".into(), times: 2 }.encode_to_vec();
    let reply = gateway.call(&queue, "ok-1", &ask, wire::PROTOBUF).await;
    assert_eq!(wire::decode_status(reply.properties.headers().as_ref()).0, Code::Ok);
    assert_eq!(reply.properties.content_type().as_ref().map(ShortString::as_str), Some(wire::PROTOBUF));
    let headers = wire::application_headers(reply.properties.headers().as_ref());
    assert_eq!(headers.get("served-by").map(String::as_str), Some("asker"));
    let answer = Answer::decode(&reply.data[..]).unwrap();
    assert_eq!(answer.words, ["why", "why"]);
    assert_eq!(answer.method, METHOD, "x-grpc-method reaches the handler");
    assert_eq!(answer.message_type, "test.v1.Ask", "the type property reaches the handler");
    shutdown.cancel();
}

#[tokio::test]
async fn bytes_that_are_not_the_request_type_are_invalid_argument() {
    let queue = testkit::unique("typed-bad");
    let shutdown = CancellationToken::new();
    let worker = asker(&queue, &shutdown).await;
    let mut gateway = Gatewayish::new().await;

    // A varint field whose varint never ends.
    let reply = gateway.call(&queue, "bad-1", &[0x10, 0xff, 0xff], wire::PROTOBUF).await;
    let (code, message) = wire::decode_status(reply.properties.headers().as_ref());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("test.v1.Ask") && message.contains(METHOD), "{message}");
    assert!(reply.data.is_empty());
    // The refusal is a reply like any other: the worker is fine and counts it.
    let ask = Ask { question: "still".into(), times: 1 }.encode_to_vec();
    let reply = gateway.call(&queue, "bad-2", &ask, wire::PROTOBUF).await;
    assert_eq!(Answer::decode(&reply.data[..]).unwrap().words, ["still"]);
    testkit::eventually("both replies counted", Duration::from_secs(5), || {
        let replied = worker.stats().replied.load(std::sync::atomic::Ordering::Relaxed);
        async move { replied == 2 }
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn json_requests_are_refused_naming_the_transcoding() {
    let queue = testkit::unique("typed-json");
    let shutdown = CancellationToken::new();
    let _worker = asker(&queue, &shutdown).await;
    let mut gateway = Gatewayish::new().await;

    let reply = gateway.call(&queue, "json-1", br#"{"question":"why","times":"2"}"#, wire::JSON).await;
    let (code, message) = wire::decode_status(reply.properties.headers().as_ref());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("--transcode-json") && message.contains("test.v1.Ask"), "{message}");
    shutdown.cancel();
}
