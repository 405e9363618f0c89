//! Hostile AMQP input against the real binaries and the real broker: message
//! headers nested as deep as the negotiated frame size lets one content header
//! carry (about 26,000 levels at RabbitMQ's default `frame_max`), as tables and
//! as arrays, and routing keys that are not UTF-8, published byte for byte by
//! `testkit::raw_amqp`. Before the frame guard (`amqp_gateway::broker::guard`),
//! one such message aborted the worker consuming it (and every worker after
//! it, through redelivery), and one such reply aborted the gateway with every
//! call in flight on it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use amqp_gateway::{
    broker::guard::MAX_DEPTH,
    pb::{ProcessRequest, gateway_client::GatewayClient},
    wire,
};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use testkit::{
    Process,
    raw_amqp::{Nesting, RawPublisher, deepest_headers, properties},
};
use tonic::Code;

const ANSWERED: Duration = Duration::from_secs(15);

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    testkit::scrape::sample(&testkit::scrape::metrics(addr).await, series).unwrap_or(0.0)
}

/// The test's own AMQP connection, for the queues it declares and consumes.
async fn connect() -> Connection {
    Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await.unwrap()
}

/// Headers as deep as one content header can carry next to `correlation_id`
/// and `reply_to`: the worst a publisher can send through the broker.
fn worst_properties(publisher: &RawPublisher, nesting: Nesting, correlation_id: &str, reply_to: &str) -> Vec<u8> {
    let others = properties(correlation_id, reply_to, None).len();
    let (headers, depth) = deepest_headers(nesting, publisher.max_properties() - others);
    assert!(depth > 20_000, "{nesting:?} only {depth} deep");
    let properties = properties(correlation_id, reply_to, Some(&headers));
    assert!(properties.len() <= publisher.max_properties());
    properties
}

/// A worker binary on a classic queue (a message that killed its consumer
/// would come back to the next one for ever), and a reply queue of the test's
/// own that its answers go to.
struct HostileWorker {
    worker: Process,
    route: String,
    metrics: SocketAddr,
    channel: Channel,
    reply_to: String,
    replies: Consumer,
    _connection: Connection,
}

/// An answer: its status (code and message) and body.
type Answer = ((Code, String), Vec<u8>);

impl HostileWorker {
    async fn start(prefix: &str) -> Self {
        let route = testkit::unique(prefix);
        let metrics = testkit::free_addr();
        let extra = ["--durable", "false", "--queue-type", "classic", "--metrics-listen", &metrics.to_string()];
        let worker = testkit::load::worker(&testkit::amqp_url(), &route, &extra).await;
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let reply_to = queue.name().as_str().to_owned();
        let replies = channel
            .basic_consume(queue.name().clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        Self { worker, route, metrics, channel, reply_to, replies, _connection: connection }
    }

    /// The next `count` answers, by correlation id; each id answered once.
    async fn answers(&mut self, count: usize) -> HashMap<String, Answer> {
        let mut answers = HashMap::new();
        while answers.len() < count {
            let delivery = tokio::time::timeout(ANSWERED, self.replies.next())
                .await
                .unwrap_or_else(|_| panic!("only {answers:?} answered; worker log:\n{}", self.worker.log()))
                .unwrap()
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            let id = delivery.properties.correlation_id().clone().unwrap().to_string();
            let status = wire::decode_status(delivery.properties.headers().as_ref());
            assert!(answers.insert(id.clone(), (status, delivery.data)).is_none(), "{id} answered twice");
        }
        answers
    }

    /// Waits until the worker has counted `count` outcomes (each is counted
    /// just after its reply is confirmed), then checks there are no more: no
    /// message was taken twice.
    async fn took_each_once(&self, count: f64) {
        let taken =
            || async { testkit::scrape::total(&testkit::scrape::metrics(self.metrics).await, "worker_messages_total") };
        testkit::eventually("every outcome counted", ANSWERED, || async { taken().await >= count }).await;
        assert_eq!(taken().await, count, "a message was taken more than once");
    }
}

#[tokio::test]
async fn the_worker_answers_the_deepest_headers_once_and_keeps_serving() {
    let mut fixture = HostileWorker::start("hostile-worker").await;
    let (route, reply_to) = (fixture.route.clone(), fixture.reply_to.clone());
    let mut publisher = RawPublisher::connect(&testkit::amqp_url()).await;
    println!("negotiated frame_max: {} bytes", publisher.frame_max());
    let at_limit = deepest_headers(Nesting::Tables, 4 + 6 * (MAX_DEPTH - 1));
    assert_eq!(at_limit.1, MAX_DEPTH);
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("tables", worst_properties(&publisher, Nesting::Tables, "tables", &reply_to)),
        ("arrays", worst_properties(&publisher, Nesting::Arrays, "arrays", &reply_to)),
        ("at-limit", properties("at-limit", &reply_to, Some(&at_limit.0))),
        ("plain", properties("plain", &reply_to, None)),
    ];
    for (id, properties) in &requests {
        publisher.publish("", &route, properties, id.as_bytes()).await;
    }
    publisher.close().await;

    let answers = fixture.answers(requests.len()).await;
    for id in ["tables", "arrays"] {
        let ((code, message), _) = &answers[id];
        assert_eq!(*code, Code::InvalidArgument, "{id}: {message}");
        assert!(message.contains(&format!("nested deeper than {MAX_DEPTH} levels")), "{id}: {message}");
    }
    for id in ["at-limit", "plain"] {
        let ((code, message), body) = &answers[id];
        assert_eq!(*code, Code::Ok, "{id}: {message}");
        assert_eq!(body, id.as_bytes());
    }

    // Alive, each message taken once, nothing left to redeliver.
    let queue = fixture
        .channel
        .queue_declare(
            route.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!((queue.message_count(), queue.consumer_count()), (0, 1));
    let rejected = format!("worker_headers_rejected_total{{route=\"{route}\"}}");
    assert_eq!(metric(fixture.metrics, &rejected).await, 2.0);
    fixture.took_each_once(4.0).await;
    let worker = &mut fixture.worker;
    assert!(worker.terminate(Duration::from_secs(20)).await.success(), "{}", worker.log());
    assert!(worker.log().contains("refusing a request whose headers were rejected"), "{}", worker.log());
}

#[tokio::test]
async fn the_gateway_fails_only_the_call_whose_reply_nests_too_deep() {
    let url = testkit::amqp_url();
    let route = testkit::unique("hostile-gateway");
    let (addr, metrics) = (testkit::free_addr(), testkit::free_addr());
    let gateway = Process::spawn(
        "gateway",
        &["--listen", &addr.to_string(), "--routes", &route, "--metrics-listen", &metrics.to_string()],
        &[("AMQP_URL", url.as_str())],
    );
    testkit::load::logged(&gateway, "connected to the broker").await;

    // The test is the worker: requests "tables" and "arrays" are answered
    // with the deepest headers a reply can carry, "ok" normally, but only
    // after both hostile replies are out, so it is in flight on the gateway
    // while they arrive.
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            route.as_str().into(),
            QueueDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut requests = channel
        .basic_consume(route.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let worker = tokio::spawn(async move {
        let mut publisher = RawPublisher::connect(&testkit::amqp_url()).await;
        let (mut hostile, mut held) = (0, Vec::new());
        while let Some(Ok(delivery)) = requests.next().await {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            let request: &BasicProperties = &delivery.properties;
            let reply_to = request.reply_to().clone().unwrap().to_string();
            let correlation_id = request.correlation_id().clone().unwrap().to_string();
            match delivery.data.as_slice() {
                b"tables" | b"arrays" => {
                    let nesting = if delivery.data == b"tables" { Nesting::Tables } else { Nesting::Arrays };
                    let reply = worst_properties(&publisher, nesting, &correlation_id, &reply_to);
                    publisher.publish("", &reply_to, &reply, b"never seen").await;
                    hostile += 1;
                }
                body => held.push((reply_to, correlation_id, body.to_vec())),
            }
            if hostile >= 2 {
                for (reply_to, correlation_id, body) in held.drain(..) {
                    publisher.publish("", &reply_to, &properties(&correlation_id, &reply_to, None), &body).await;
                }
            }
        }
    });

    let client = GatewayClient::connect(format!("http://{addr}")).await.unwrap();
    let call = |payload: &'static str| {
        let (mut client, route) = (client.clone(), route.clone());
        async move {
            let mut request = tonic::Request::new(ProcessRequest {
                route,
                payload: payload.as_bytes().to_vec().into(),
                ..Default::default()
            });
            request.set_timeout(ANSWERED);
            client.process(request).await
        }
    };
    let (ok, tables, arrays) = tokio::join!(call("ok"), call("tables"), call("arrays"));
    assert_eq!(ok.unwrap().into_inner().payload.as_ref(), b"ok");
    for (name, outcome) in [("tables", tables), ("arrays", arrays)] {
        let status = outcome.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{name}: {status:?}");
        assert!(status.message().contains(&format!("nested deeper than {MAX_DEPTH} levels")), "{name}: {status:?}");
    }
    // Still serving, nothing left pending, both counted.
    assert_eq!(call("again").await.unwrap().into_inner().payload.as_ref(), b"again");
    assert_eq!(metric(metrics, "gateway_replies_rejected_total{reason=\"headers\"}").await, 2.0);
    assert_eq!(metric(metrics, "gateway_pending_calls").await, 0.0);
    assert!(gateway.log().contains("a reply's headers were rejected on arrival"), "{}", gateway.log());
    worker.abort();
}

#[tokio::test]
async fn a_routing_key_that_is_not_utf8_is_delivered_readably() {
    // RabbitMQ passes any bytes as a routing key through a topic exchange;
    // lapin refuses a delivery whose routing key is not UTF-8 and drops the
    // connection, so before the guard the message came back for ever.
    let mut fixture = HostileWorker::start("hostile-key").await;
    let (route, reply_to, channel) = (fixture.route.clone(), fixture.reply_to.clone(), fixture.channel.clone());
    let binding = format!("{route}.#");
    channel
        .queue_bind(
            route.as_str().into(),
            "amq.topic".into(),
            binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut publisher = RawPublisher::connect(&testkit::amqp_url()).await;
    let key = [route.as_bytes(), b".\xff\xfe"].concat();
    publisher.publish("amq.topic", &key, &properties("bad-key", &reply_to, None), b"bad-key").await;
    publisher
        .publish("amq.topic", format!("{route}.fine"), &properties("good-key", &reply_to, None), b"good-key")
        .await;
    publisher.close().await;

    let answers = fixture.answers(2).await;
    for id in ["bad-key", "good-key"] {
        let ((code, message), body) = &answers[id];
        assert_eq!(*code, Code::Ok, "{id}: {message}");
        assert_eq!(body, id.as_bytes());
    }
    fixture.took_each_once(2.0).await;
    let reconnects = format!("worker_broker_reconnects_total{{route=\"{route}\"}}");
    assert_eq!(metric(fixture.metrics, &reconnects).await, 0.0, "the worker lost its connection");
    let worker = &mut fixture.worker;
    assert!(worker.terminate(Duration::from_secs(20)).await.success(), "{}", worker.log());
}
