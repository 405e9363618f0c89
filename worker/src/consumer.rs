//! The consumer loop: connect, declare the route's queue, take requests up to
//! the prefetch count, run the handler for each, reply, acknowledge. Reconnects
//! with backoff when the broker goes away; drains on shutdown.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use amqp_gateway::{broker, wire};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::{Service, ServiceExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    Request, Response, Status, WorkerConfig, reply,
    stats::{Outcome, Stats},
};

/// Bound on connecting and on each set-up or tear-down step, so a broker that
/// accepts TCP but never answers cannot hang the worker.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker task panicked.
    #[error("worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running worker.
#[derive(Debug)]
pub struct RunningWorker {
    consuming: watch::Receiver<bool>,
    stats: Arc<Stats>,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Waits until the worker consumes its queue (it has declared it), or
    /// `timeout` passes; returns whether it is consuming.
    pub async fn consuming(&self, timeout: Duration) -> bool {
        let mut consuming = self.consuming.clone();
        tokio::time::timeout(timeout, consuming.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Waits until the worker has stopped.
    pub async fn wait(self) -> Result<(), WorkerError> {
        self.task.await?
    }
}

/// Starts a worker that serves `config.queue` with `handler` until `shutdown`
/// is cancelled, then stops taking requests, lets those in flight finish
/// within the grace period, and closes the connection; unfinished requests go
/// back to the queue.
///
/// The handler is cloned for each request, so up to `prefetch` requests run
/// at once.
pub fn spawn<S>(config: WorkerConfig, handler: S, shutdown: CancellationToken) -> RunningWorker
where
    S: Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (consuming_tx, consuming) = watch::channel(false);
    let stats = Arc::new(Stats::new(&config.queue));
    let span = tracing::info_span!("worker", queue = %config.queue);
    let task = tokio::spawn(supervise(config, handler, shutdown, consuming_tx, stats.clone()).instrument(span));
    RunningWorker { consuming, stats, task }
}

async fn supervise<S>(
    config: WorkerConfig,
    handler: S,
    shutdown: CancellationToken,
    consuming: watch::Sender<bool>,
    stats: Arc<Stats>,
) -> Result<(), WorkerError>
where
    S: Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut attempt = 0u32;
    let mut connected_before = false;
    loop {
        let connected = tokio::select! {
            connected = bounded(config.broker.connect("grpc-amqp-worker")) => connected,
            () = shutdown.cancelled() => return Ok(()),
        };
        match connected {
            Ok(connection) => {
                attempt = 0;
                if connected_before {
                    stats.reconnected();
                }
                connected_before = true;
                let ended =
                    serve_connection(&config, &connection, handler.clone(), &shutdown, &consuming, &stats).await;
                match ended {
                    Ended::Shutdown => {
                        match bounded(connection.close(200, "worker shutting down".into())).await {
                            Ok(()) => tracing::info!("AMQP connection closed"),
                            Err(error) => tracing::debug!(%error, "closing the connection failed"),
                        }
                        return Ok(());
                    }
                    Ended::Lost(reason) => tracing::warn!(%reason, "broker connection lost; reconnecting"),
                }
            }
            Err(error) => tracing::warn!(%error, url = %config.broker.url, "cannot connect to the broker"),
        }
        let delay = broker::backoff(attempt, rand::random());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Consumes on `connection` until shutdown or until the connection fails.
/// When the broker closes only the channel (the queue was deleted, a channel
/// error), the channel is reopened and the queue declared again on the same
/// connection.
async fn serve_connection<S>(
    config: &WorkerConfig,
    connection: &Connection,
    handler: S,
    shutdown: &CancellationToken,
    consuming: &watch::Sender<bool>,
    stats: &Arc<Stats>,
) -> Ended
where
    S: Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut attempt = 0u32;
    let mut opened_before = false;
    loop {
        match Session::open(config, connection).await {
            Ok(session) => {
                attempt = 0;
                if opened_before {
                    stats.channel_recovered();
                }
                opened_before = true;
                tracing::info!(url = %config.broker.url, prefetch = config.prefetch, "consuming");
                consuming.send_replace(true);
                let ended = session.serve(config, handler.clone(), shutdown, stats).await;
                consuming.send_replace(false);
                match ended {
                    Ended::Shutdown => return Ended::Shutdown,
                    Ended::Lost(reason) if !connection.status().connected() => return Ended::Lost(reason),
                    Ended::Lost(reason) => tracing::warn!(%reason, "channel closed; reopening it"),
                }
            }
            Err(error) if !connection.status().connected() => return Ended::Lost(error.to_string()),
            Err(error) => tracing::warn!(%error, "cannot open the channel"),
        }
        let delay = broker::backoff(attempt, rand::random());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ended::Shutdown,
        }
    }
}

/// Why a session ended.
enum Ended {
    Shutdown,
    Lost(String),
}

#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

async fn bounded<T>(step: impl Future<Output = lapin::Result<T>>) -> Result<T, OpenError> {
    Ok(tokio::time::timeout(STEP_TIMEOUT, step).await.map_err(|_| OpenError::Timeout(STEP_TIMEOUT))??)
}

/// One channel consuming the route's queue.
struct Session {
    channel: Channel,
    consumer: Consumer,
}

impl Session {
    async fn open(config: &WorkerConfig, connection: &Connection) -> Result<Self, OpenError> {
        let channel = bounded(connection.create_channel()).await?;
        // Replies are published under confirms: a request is acked only once
        // the broker has its reply (at-least-once).
        bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
        bounded(channel.basic_qos(config.prefetch, BasicQosOptions::default())).await?;
        if config.declare {
            if let Some(dead_letters) = &config.dead_letter_queue {
                let options = QueueDeclareOptions { durable: config.durable(), ..QueueDeclareOptions::default() };
                bounded(channel.queue_declare(dead_letters.as_str().into(), options, FieldTable::default())).await?;
            }
            let options = QueueDeclareOptions { durable: config.durable(), ..QueueDeclareOptions::default() };
            bounded(channel.queue_declare(config.queue.as_str().into(), options, config.queue_arguments())).await?;
        } else {
            let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            bounded(channel.queue_declare(config.queue.as_str().into(), options, FieldTable::default())).await?;
        }
        let consumer = bounded(channel.basic_consume(
            config.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        Ok(Self { channel, consumer })
    }

    async fn serve<S>(
        mut self,
        config: &WorkerConfig,
        handler: S,
        shutdown: &CancellationToken,
        stats: &Arc<Stats>,
    ) -> Ended
    where
        S: Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let tracker = TaskTracker::new();
        let abort = CancellationToken::new();
        let ended = loop {
            let delivery = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ended::Shutdown,
                delivery = self.consumer.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let span = consumer_span(&delivery, &config.queue);
                    let task = handle(
                        delivery,
                        self.channel.clone(),
                        handler.clone(),
                        stats.clone(),
                        abort.clone(),
                        config.max_body_bytes,
                    );
                    tracker.spawn(task.instrument(span));
                }
                Some(Err(error)) => break Ended::Lost(error.to_string()),
                None => break Ended::Lost("the broker cancelled the consumer".into()),
            }
        };
        tracker.close();

        if matches!(ended, Ended::Shutdown) {
            // Stop deliveries first; requests already prefetched but not
            // started stay unacked and go back to the queue on close.
            let cancel = self.channel.basic_cancel(self.consumer.tag(), BasicCancelOptions::default());
            if let Err(error) = bounded(cancel).await {
                tracing::warn!(%error, "cancelling the consumer failed");
            }
            tracing::info!(in_flight = tracker.len(), grace = ?config.shutdown_grace, "draining requests in flight");
            if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
                tracing::warn!(
                    unfinished = tracker.len(),
                    "grace period over: unfinished requests go back to the queue"
                );
            }
        }
        // Whatever is still running stops now; its requests were not acked
        // and go back to the queue when the channel closes.
        abort.cancel();
        let _ = tokio::time::timeout(STEP_TIMEOUT, tracker.wait()).await;
        // Closing the channel returns what it still holds to the queue; the
        // connection is closed (or reused) by the caller.
        if let Err(error) = bounded(self.channel.close(200, "consumer stopped".into())).await {
            tracing::debug!(%error, "closing the channel failed (already closed?)");
        }
        ended
    }
}

/// The CONSUMER span `process <queue>` of one delivery, per the OpenTelemetry
/// messaging conventions for RabbitMQ, continuing the publisher's trace from
/// the message headers. The handler runs inside it, and its context goes back
/// in the reply headers.
fn consumer_span(delivery: &Delivery, queue: &str) -> tracing::Span {
    let properties = &delivery.properties;
    let id = |value: &Option<lapin::types::ShortString>| value.as_ref().map_or("", |v| v.as_str()).to_owned();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %queue,
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag,
        messaging.message.id = %id(properties.message_id()),
        messaging.message.conversation_id = %id(properties.correlation_id()),
        messaging.message.body.size = delivery.data.len(),
    );
    let _ = span.set_parent(otel::propagation::extract_amqp(properties.headers().as_ref()));
    span
}

/// Handles one delivery: validate, run the handler, reply, acknowledge.
async fn handle<S>(
    delivery: Delivery,
    channel: Channel,
    handler: S,
    stats: Arc<Stats>,
    abort: CancellationToken,
    max_body: usize,
) where
    S: Service<Request, Response = Response, Error = Status>,
{
    let Delivery { properties, data, acker, routing_key, redelivered, .. } = delivery;
    let (Some(reply_to), Some(correlation_id)) = (properties.reply_to().clone(), properties.correlation_id().clone())
    else {
        stats.outcome(Outcome::Rejected);
        tracing::warn!(
            has_reply_to = properties.reply_to().is_some(),
            has_correlation_id = properties.correlation_id().is_some(),
            "rejecting a message without reply_to or correlation_id: nobody could receive its reply"
        );
        if let Err(error) = bounded(acker.reject(BasicRejectOptions { requeue: false })).await {
            tracing::warn!(%error, "reject failed");
        }
        return;
    };

    // The connection's frame guard replaced headers lapin could not safely
    // parse (nested too deep, malformed): answer once, never handle.
    if let Some(reason) = wire::headers_rejected(properties.headers().as_ref()) {
        tracing::warn!(%reason, "refusing a request whose headers were rejected on arrival");
        stats.headers_rejected();
        let status = Status::invalid_argument(format!("request headers rejected: {reason}"));
        return finish(&channel, acker, reply_to, correlation_id, Err(status), &stats).await;
    }

    let deadline = wire::decode_deadline(properties.headers().as_ref());
    if deadline.is_some_and(|d| d <= SystemTime::now()) {
        stats.outcome(Outcome::Expired);
        tracing::debug!("dropping an expired request without work");
        if let Err(error) = bounded(acker.ack(BasicAckOptions::default())).await {
            tracing::warn!(%error, "ack failed");
        }
        return;
    }

    // Never trust the request: a body over the limit is answered, not handled.
    if data.len() > max_body {
        tracing::warn!(size = data.len(), limit = max_body, "refusing a request body over the limit");
        let status = Status::resource_exhausted(format!(
            "request body is {} bytes, over the worker's limit of {max_body} bytes",
            data.len()
        ));
        return finish(&channel, acker, reply_to, correlation_id, Err(status), &stats).await;
    }

    let request = Request {
        payload: Bytes::from(data),
        content_type: properties.content_type().as_ref().map(|c| c.as_str().to_owned()),
        headers: wire::application_headers(properties.headers().as_ref()),
        deadline,
        correlation_id: correlation_id.as_str().to_owned(),
        route: routing_key.as_str().to_owned(),
        redelivered,
    };
    let started = Instant::now();
    stats.started();
    let outcome = tokio::select! {
        outcome = invoke(handler, request, &stats) => Some(outcome),
        // Shutdown grace is over: leave the request unacked for redelivery.
        () = abort.cancelled() => None,
    };
    stats.finished();
    let Some(outcome) = outcome else { return };
    stats.handled(started.elapsed());
    if let Err(status) = &outcome {
        let span = tracing::Span::current();
        span.record("otel.status_code", "ERROR");
        span.record("error.type", wire::code_name(status.code()));
    }

    finish(&channel, acker, reply_to, correlation_id, outcome, &stats).await;
}

/// Publishes the reply, then acknowledges the request.
async fn finish(
    channel: &Channel,
    acker: lapin::Acker,
    reply_to: lapin::types::ShortString,
    correlation_id: lapin::types::ShortString,
    outcome: Result<Response, Status>,
    stats: &Stats,
) {
    let succeeded = outcome.is_ok();
    // Bounded: an await on a channel that died silently must not hold the
    // request (and a prefetch slot) forever.
    let published = tokio::time::timeout(STEP_TIMEOUT, reply::publish(channel, reply_to, correlation_id, outcome));
    match published.await.unwrap_or(Err(reply::ReplyError::Timeout(STEP_TIMEOUT))) {
        Ok(()) => {
            stats.outcome(if succeeded { Outcome::Ok } else { Outcome::Error });
            if let Err(error) = bounded(acker.ack(BasicAckOptions::default())).await {
                tracing::warn!(%error, "ack failed; the request will be redelivered");
            }
        }
        // The channel is broken: the request stays unacked and the broker
        // redelivers it when the channel closes.
        Err(error) => {
            stats.outcome(Outcome::ReplyFailed);
            tracing::warn!(%error, "publishing the reply failed; the request will be redelivered");
        }
    }
}

/// Runs the handler, turning a panic into INTERNAL so a bad request cannot
/// kill the consumer or loop through redeliveries.
async fn invoke<S>(mut handler: S, request: Request, stats: &Stats) -> Result<Response, Status>
where
    S: Service<Request, Response = Response, Error = Status>,
{
    let run = async {
        let ready = handler.ready().await?;
        AssertUnwindSafe(ready.call(request)).catch_unwind().await.unwrap_or_else(|_| Err(panicked(stats)))
    };
    // `call` itself may panic before returning a future.
    AssertUnwindSafe(run).catch_unwind().await.unwrap_or_else(|_| Err(panicked(stats)))
}

fn panicked(stats: &Stats) -> Status {
    stats.panicked();
    tracing::error!("handler panicked; replying INTERNAL");
    Status::internal("the worker's handler panicked")
}
