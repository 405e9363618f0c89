//! The worker side of the AMQP contract, driven by a plain AMQP client against
//! the real RabbitMQ from `AMQP_URL`: what any publisher may send and what the
//! worker must do with it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{
    sync::atomic::Ordering,
    time::{Duration, SystemTime},
};

use amqp_gateway::wire;
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use worker::{Code, RunningWorker, WorkerConfig};

const READY: Duration = Duration::from_secs(15);

/// A plain AMQP client with an exclusive reply queue, like a caller written
/// by hand in any language.
struct Caller {
    _connection: Connection,
    channel: Channel,
    replies: Consumer,
    reply_queue: String,
}

impl Caller {
    async fn new() -> Self {
        let connection = Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.unwrap();
        let reply_queue = queue.name().to_string();
        let consume = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let replies = channel
            .basic_consume(reply_queue.as_str().into(), "".into(), consume, FieldTable::default())
            .await
            .unwrap();
        Self { _connection: connection, channel, replies, reply_queue }
    }

    async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    fn request(&self, correlation_id: &str) -> BasicProperties {
        BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation_id.into())
    }

    async fn next_reply(&mut self) -> lapin::message::Delivery {
        tokio::time::timeout(Duration::from_secs(10), self.replies.next()).await.unwrap().unwrap().unwrap()
    }

    /// Number of messages ready in `queue`, without consuming.
    async fn depth(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        self.channel.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap().message_count()
    }
}

async fn echo_worker(queue: &str, delay: Duration, shutdown: &CancellationToken) -> RunningWorker {
    let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), queue);
    config.durable = false;
    config.prefetch = 4;
    config.shutdown_grace = Duration::from_secs(5);
    let running = worker::spawn(config, worker::handlers::echo(delay), shutdown.clone());
    assert!(running.consuming(READY).await);
    running
}

fn counter(stats: &worker::Stats, pick: fn(&worker::Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
    pick(stats).load(Ordering::Relaxed)
}

#[tokio::test]
async fn replies_with_correlation_id_content_type_and_headers() {
    let queue = testkit::unique("contract-echo");
    let shutdown = CancellationToken::new();
    let _worker = echo_worker(&queue, Duration::ZERO, &shutdown).await;
    let mut caller = Caller::new().await;

    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), wire::long_string("acme"));
    let properties = caller.request("abc-123").with_content_type("text/plain".into()).with_headers(headers);
    caller.publish(&queue, b"hello", properties).await;

    let reply = caller.next_reply().await;
    assert_eq!(reply.data, b"hello");
    assert_eq!(reply.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("abc-123"));
    assert_eq!(reply.properties.content_type().as_ref().map(|c| c.as_str()), Some("text/plain"));
    assert_eq!(wire::decode_status(reply.properties.headers().as_ref()).0, Code::Ok);
    let reply_headers = wire::application_headers(reply.properties.headers().as_ref());
    assert_eq!(reply_headers.get("tenant").map(String::as_str), Some("acme"));
    shutdown.cancel();
}

#[tokio::test]
async fn expired_requests_are_acked_and_dropped_without_work() {
    let queue = testkit::unique("contract-expired");
    let shutdown = CancellationToken::new();
    let worker = echo_worker(&queue, Duration::ZERO, &shutdown).await;
    let mut caller = Caller::new().await;

    let mut headers = FieldTable::default();
    let past = SystemTime::now() - Duration::from_secs(1);
    headers.insert(wire::DEADLINE_HEADER.into(), wire::encode_deadline(past));
    caller.publish(&queue, b"too late", caller.request("expired").with_headers(headers)).await;
    // An amqplib-style deadline (a small integer type) far in the future is honoured.
    let mut headers = FieldTable::default();
    let future = SystemTime::now() + Duration::from_secs(60);
    let millis = future.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
    headers.insert(wire::DEADLINE_HEADER.into(), AMQPValue::LongString(millis.to_string().into()));
    caller.publish(&queue, b"in time", caller.request("fresh").with_headers(headers)).await;

    let reply = caller.next_reply().await;
    assert_eq!(
        reply.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("fresh"),
        "only the live request is answered"
    );
    let stats = worker.stats();
    testkit::eventually("one expired, one replied", Duration::from_secs(5), || {
        let counts = (counter(stats, |s| &s.expired), counter(stats, |s| &s.replied));
        async move { counts == (1, 1) }
    })
    .await;
    testkit::eventually("queue empty (the expired request was acked)", Duration::from_secs(5), || {
        caller.depth(&queue).then_eq(0)
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn messages_without_reply_to_or_correlation_id_are_rejected() {
    let queue = testkit::unique("contract-reject");
    let dead_letters = testkit::unique("contract-dlq");
    let shutdown = CancellationToken::new();
    let caller = Caller::new().await;
    // Route rejected messages somewhere we can count them: a rejection without
    // requeue dead-letters the message instead of redelivering it.
    caller
        .channel
        .queue_declare(dead_letters.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), wire::long_string(""));
    arguments.insert("x-dead-letter-routing-key".into(), wire::long_string(dead_letters.as_str()));
    caller
        .channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), arguments.clone())
        .await
        .unwrap();

    // The queue exists with arguments of its own: the worker must not redeclare it.
    let worker = echo_worker_on_existing(&queue, &shutdown).await;

    caller.publish(&queue, b"no reply_to", BasicProperties::default().with_correlation_id("c1".into())).await;
    caller.publish(&queue, b"no correlation id", BasicProperties::default().with_reply_to("somewhere".into())).await;

    testkit::eventually("both messages rejected", Duration::from_secs(5), || {
        let rejected = counter(worker.stats(), |s| &s.rejected);
        async move { rejected == 2 }
    })
    .await;
    testkit::eventually("rejected messages dead-lettered, not requeued", Duration::from_secs(5), || {
        caller.depth(&dead_letters).then_eq(2)
    })
    .await;
    assert_eq!(caller.depth(&queue).await, 0);
    assert_eq!(counter(worker.stats(), |s| &s.replied), 0);
    shutdown.cancel();
}

async fn echo_worker_on_existing(queue: &str, shutdown: &CancellationToken) -> RunningWorker {
    let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), queue);
    config.declare = false;
    let running = worker::spawn(config, worker::handlers::echo(Duration::ZERO), shutdown.clone());
    assert!(running.consuming(READY).await);
    running
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_returns_the_rest() {
    let queue = testkit::unique("contract-drain");
    let shutdown = CancellationToken::new();
    let worker = echo_worker(&queue, Duration::from_millis(300), &shutdown).await;
    let mut caller = Caller::new().await;
    for i in 0..10 {
        caller.publish(&queue, format!("job-{i}").as_bytes(), caller.request(&format!("job-{i}"))).await;
    }
    // Prefetch is 4: four requests are in the handler, six wait in the queue.
    testkit::eventually("worker busy", Duration::from_secs(5), || caller.depth(&queue).then_eq(6)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker.wait()).await.unwrap().unwrap();

    // The four taken were answered; the rest are still queued for another worker.
    for _ in 0..4 {
        let reply = caller.next_reply().await;
        assert!(reply.data.starts_with(b"job-"));
    }
    testkit::eventually("unstarted requests back in the queue", Duration::from_secs(5), || {
        caller.depth(&queue).then_eq(6)
    })
    .await;
}

/// `future.then_eq(n)`: resolves to whether the future's output equals `n`.
trait ThenEq: std::future::Future<Output = u32> + Sized {
    fn then_eq(self, n: u32) -> impl std::future::Future<Output = bool> {
        async move { self.await == n }
    }
}

impl<F: std::future::Future<Output = u32>> ThenEq for F {}

#[tokio::test]
async fn connection_loss_redelivers_unacked_requests_after_reconnecting() {
    let queue = testkit::unique("contract-cut");
    let proxy = testkit::TcpProxy::start(testkit::broker_addr()).await;
    // The first delivery hangs; the redelivery is answered at once.
    let handler = tower::service_fn(|request: worker::Request| async move {
        if !request.redelivered {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok::<_, worker::Status>(worker::Response::new(format!("redelivered={}", request.redelivered)))
    });
    let mut config = WorkerConfig::new(testkit::amqp_url_via(proxy.addr()).parse().unwrap(), &queue);
    config.durable = false;
    let shutdown = CancellationToken::new();
    let worker = worker::spawn(config, handler, shutdown.clone());
    assert!(worker.consuming(READY).await);

    let mut caller = Caller::new().await;
    caller.publish(&queue, b"job", caller.request("job-1")).await;
    testkit::eventually("request taken by the worker", Duration::from_secs(5), || caller.depth(&queue).then_eq(0))
        .await;

    proxy.cut();
    let reply = caller.next_reply().await;
    assert_eq!(reply.data, b"redelivered=true");
    assert_eq!(reply.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("job-1"));
    assert_eq!(counter(worker.stats(), |s| &s.reconnects), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_deleted_queue_is_declared_again_on_the_same_connection() {
    let queue = testkit::unique("contract-deleted");
    let shutdown = CancellationToken::new();
    let worker = echo_worker(&queue, Duration::ZERO, &shutdown).await;
    let mut caller = Caller::new().await;

    // The broker cancels the consumer of a deleted queue.
    caller.channel.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
    testkit::eventually("queue declared again", Duration::from_secs(10), || {
        let recovered = counter(worker.stats(), |s| &s.channel_recoveries) == 1;
        async move { recovered }
    })
    .await;
    assert!(worker.consuming(READY).await);
    caller.publish(&queue, b"still here", caller.request("again")).await;
    assert_eq!(caller.next_reply().await.data, b"still here");
    assert_eq!(counter(worker.stats(), |s| &s.reconnects), 0, "the connection itself was kept");
    shutdown.cancel();
}

#[tokio::test]
async fn bodies_over_the_limit_are_answered_not_handled() {
    let queue = testkit::unique("contract-big");
    let shutdown = CancellationToken::new();
    let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), &queue);
    config.durable = false;
    config.max_body_bytes = 1024;
    let worker = worker::spawn(config, worker::handlers::echo(Duration::ZERO), shutdown.clone());
    assert!(worker.consuming(READY).await);
    let mut caller = Caller::new().await;

    caller.publish(&queue, &[b'x'; 1025], caller.request("too-big")).await;
    let reply = caller.next_reply().await;
    let (code, message) = wire::decode_status(reply.properties.headers().as_ref());
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.contains("1024"), "{message}");
    assert!(reply.data.is_empty(), "the body is not echoed");
    testkit::eventually("acked, not requeued", Duration::from_secs(5), || caller.depth(&queue).then_eq(0)).await;
    shutdown.cancel();
}
