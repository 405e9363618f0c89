//! Refusals retrying cannot fix, from the real RabbitMQ at `AMQP_URL`: a
//! queue that exists with other arguments, a wrong password, a configuration
//! that cannot work. The library's worker stops with the error; the `worker`
//! binary exits non-zero with a message that names what to change and never
//! the password. (Transient failures, retried, are in `contract.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::Duration;

use amqp_gateway::wire;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use testkit::Process;
use tokio_util::sync::CancellationToken;
use worker::{ConfigError, QueueType, WorkerConfig, WorkerError};

/// Bound on a refused worker stopping: connect plus set-up, each answered at
/// once by a broker that refuses.
const STOPS: Duration = Duration::from_secs(20);
const PASSWORD: &str = "not-the-password-s3cret";

/// A queue declared as operations might have: classic, with `durable` as
/// given, and an expiry so a failed test leaves nothing behind.
async fn existing_queue(name: &str, durable: bool) -> (Connection, Channel) {
    let connection = Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    let options = QueueDeclareOptions { durable, ..QueueDeclareOptions::default() };
    channel.queue_declare(name.into(), options, arguments).await.unwrap();
    (connection, channel)
}

async fn delete(channel: &Channel, queue: &str) {
    channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.unwrap();
}

/// `AMQP_URL` with the password replaced by a wrong one.
fn wrong_password_url() -> String {
    let mut url = url::Url::parse(&testkit::amqp_url()).unwrap();
    url.set_password(Some(PASSWORD)).unwrap();
    url.to_string()
}

async fn stopped(config: WorkerConfig) -> WorkerError {
    let running = worker::spawn(config, worker::handlers::echo(Duration::ZERO), CancellationToken::new());
    assert!(!running.consuming(STOPS).await, "a refused worker never consumes");
    tokio::time::timeout(STOPS, running.wait()).await.expect("the worker stops on its own").unwrap_err()
}

#[tokio::test]
async fn a_queue_with_other_arguments_stops_the_worker() {
    let queue = testkit::unique("refused-quorum");
    let (_connection, channel) = existing_queue(&queue, true).await;
    let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), &queue);
    config.queue_type = QueueType::Quorum;

    let error = stopped(config).await;
    let shown = error.to_string();
    assert!(matches!(&error, WorkerError::Refused(refused) if refused.is_permanent()), "{shown}");
    assert!(shown.contains(&format!("declaring queue {queue:?}")), "{shown}");
    assert!(shown.contains("PRECONDITION_FAILED"), "{shown}");
    delete(&channel, &queue).await;
}

#[tokio::test]
async fn a_wrong_password_stops_the_worker_without_showing_it() {
    let config = WorkerConfig::new(wrong_password_url().parse().unwrap(), testkit::unique("refused-login"));
    let error = stopped(config).await;
    let shown = format!("{error} {error:?}");
    assert!(matches!(&error, WorkerError::Refused(refused) if refused.step().starts_with("connecting to")), "{shown}");
    assert!(shown.contains("ACCESS_REFUSED"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[tokio::test]
async fn an_invalid_config_stops_the_worker_before_connecting() {
    let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), testkit::unique("refused-config"));
    config.prefetch = 0;
    assert!(matches!(stopped(config).await, WorkerError::Config(ConfigError::ZeroPrefetch)));
}

#[tokio::test]
async fn the_binary_exits_non_zero_naming_the_queue_declared_otherwise() {
    let queue = testkit::unique("refused-durable");
    let (_connection, channel) = existing_queue(&queue, false).await;
    let url = testkit::amqp_url();
    let mut worker = Process::spawn("worker", &["--route", &queue, "--durable", "true"], &[("AMQP_URL", &url)]);

    let status = worker.exited(STOPS).await;
    let log = worker.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("declaring queue {queue:?}")), "{log}");
    assert!(log.contains("inequivalent arg 'durable'"), "{log}");
    // The existing queue is untouched: still there, still not durable.
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.unwrap();
    delete(&channel, &queue).await;
}

#[tokio::test]
async fn the_binary_exits_non_zero_on_a_wrong_password_without_logging_it() {
    let url = wrong_password_url();
    let env = [("AMQP_URL", url.as_str()), ("RUST_LOG", "debug")];
    let mut worker = Process::spawn("worker", &["--route", &testkit::unique("refused-login")], &env);

    let status = worker.exited(STOPS).await;
    let log = worker.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("ACCESS_REFUSED"), "{log}");
    assert!(!log.contains(PASSWORD), "the password leaked: {log}");
}

#[tokio::test]
async fn the_binary_refuses_a_prefetch_of_zero() {
    let url = testkit::amqp_url();
    let mut worker = Process::spawn("worker", &["--prefetch", "0"], &[("AMQP_URL", &url)]);
    let status = worker.exited(STOPS).await;
    let log = worker.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("prefetch count must be greater than zero"), "{log}");
}

/// A queue name the broker could never accept is caught before connecting.
#[test]
fn queue_names_longer_than_a_short_string_are_refused() {
    let mut config = WorkerConfig::new(testkit::amqp_url().parse().unwrap(), "q".repeat(wire::SHORT_STRING_MAX + 1));
    assert!(matches!(config.validate(), Err(ConfigError::QueueName { .. })));
    config.queue.pop();
    assert_eq!(config.validate(), Ok(()));
}
