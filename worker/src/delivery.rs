//! One delivery, from arrival to acknowledgement: its CONSUMER span, the
//! checks that never trust a request (reply address, rejected headers,
//! deadline, body size), the handler run with panics caught, the reply, and
//! the ack that follows it.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Instant, SystemTime},
};

use amqp_gateway::{
    broker::{self, Broker},
    wire,
};
use bytes::Bytes;
use futures::FutureExt;
use lapin::{
    Acker, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicRejectOptions},
    types::ShortString,
};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    Request, Response, Status,
    addresses::{ReplyAddresses, Verdict},
    reply,
    stats::{Outcome, Stats},
};

/// The CONSUMER span `process <queue>` of one delivery, per the OpenTelemetry
/// messaging conventions for RabbitMQ, continuing the publisher's trace from
/// the message headers. The handler runs inside it, and its context goes back
/// in the reply headers.
pub(crate) fn consumer_span(delivery: &Delivery, queue: &str) -> tracing::Span {
    let properties = &delivery.properties;
    let id = |value: &Option<ShortString>| value.as_ref().map_or("", |v| v.as_str()).to_owned();
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

/// What handling a delivery needs, shared by all deliveries of one channel
/// and cloned into each delivery's task.
#[derive(Clone)]
pub(crate) struct Handling<S> {
    /// The channel the request came on: its reply is published, and the
    /// request acked, on it.
    pub(crate) channel: Channel,
    pub(crate) handler: S,
    pub(crate) stats: Arc<Stats>,
    /// Cancelled when the shutdown grace period is over: handlers still
    /// running are dropped and their requests left unacked for redelivery.
    pub(crate) abort: CancellationToken,
    /// Largest request body handled.
    pub(crate) max_body: usize,
    /// Reply addresses that broke a connection: see [`crate::addresses`].
    pub(crate) addresses: Arc<ReplyAddresses>,
    /// Where a reply published alone connects to.
    pub(crate) broker: Broker,
}

/// What publishing a reply needs besides the reply: the counters, what is
/// known about reply addresses, and where a reply published alone connects.
type Replying<'a> = (&'a Stats, &'a ReplyAddresses, &'a Broker);

/// Where a request's answer goes: the reply address, and the ack that must
/// follow the reply.
struct Answer {
    reply_to: ShortString,
    correlation_id: ShortString,
    acker: Acker,
}

impl<S> Handling<S> {
    fn replies(&self) -> Replying<'_> {
        (&self.stats, &self.addresses, &self.broker)
    }
}

impl<S> Handling<S>
where
    S: Service<Request, Response = Response, Error = Status>,
{
    /// Handles one delivery: validate, run the handler, reply, acknowledge.
    pub(crate) async fn handle(self, delivery: Delivery) {
        let Delivery { properties, data, acker, routing_key, redelivered, .. } = delivery;
        let (Some(reply_to), Some(correlation_id)) =
            (properties.reply_to().clone(), properties.correlation_id().clone())
        else {
            self.stats.outcome(Outcome::Rejected);
            tracing::warn!(
                has_reply_to = properties.reply_to().is_some(),
                has_correlation_id = properties.correlation_id().is_some(),
                "rejecting a message without reply_to or correlation_id: nobody could receive its reply"
            );
            if let Err(error) = broker::bounded(acker.reject(BasicRejectOptions { requeue: false })).await {
                tracing::warn!(%error, "reject failed");
            }
            return;
        };
        let answer = Answer { reply_to, correlation_id, acker };

        // The connection's frame guard replaced headers lapin could not safely
        // parse (nested too deep, malformed): answer once, never handle.
        if let Some(reason) = wire::headers_rejected(properties.headers().as_ref()) {
            tracing::warn!(%reason, "refusing a request whose headers were rejected on arrival");
            self.stats.headers_rejected();
            let status = Status::invalid_argument(format!("request headers rejected: {reason}"));
            return answer.reply_then_ack(&self.channel, Err(status), self.replies()).await;
        }

        let deadline = wire::decode_deadline(properties.headers().as_ref());
        if deadline.is_some_and(|d| d <= SystemTime::now()) {
            self.stats.outcome(Outcome::Expired);
            tracing::debug!("dropping an expired request without work");
            if let Err(error) = broker::bounded(answer.acker.ack(BasicAckOptions::default())).await {
                tracing::warn!(%error, "ack failed");
            }
            return;
        }

        // Never trust the request: a body over the limit is answered, not handled.
        let max_body = self.max_body;
        if data.len() > max_body {
            tracing::warn!(size = data.len(), limit = max_body, "refusing a request body over the limit");
            let status = Status::resource_exhausted(format!(
                "request body is {} bytes, over the worker's limit of {max_body} bytes",
                data.len()
            ));
            return answer.reply_then_ack(&self.channel, Err(status), self.replies()).await;
        }

        let request = Request {
            payload: Bytes::from(data),
            content_type: properties.content_type().as_ref().map(|c| c.as_str().to_owned()),
            headers: wire::application_headers(properties.headers().as_ref()),
            deadline,
            correlation_id: answer.correlation_id.as_str().to_owned(),
            route: routing_key.as_str().to_owned(),
            redelivered,
            // Reserved, so `application_headers` left it out above.
            method: properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get(wire::METHOD_HEADER))
                .and_then(wire::string)
                .map(str::to_owned),
            message_type: properties.kind().as_ref().map(|kind| kind.as_str().to_owned()),
        };
        let started = Instant::now();
        self.stats.started();
        let outcome = tokio::select! {
            outcome = invoke(self.handler, request, &self.stats) => Some(outcome),
            // Shutdown grace is over: leave the request unacked for redelivery.
            () = self.abort.cancelled() => None,
        };
        self.stats.finished();
        let Some(outcome) = outcome else { return };
        self.stats.handled(started.elapsed());
        if let Err(status) = &outcome {
            let span = tracing::Span::current();
            span.record("otel.status_code", "ERROR");
            span.record("error.type", wire::code_name(status.code()));
        }
        answer.reply_then_ack(&self.channel, outcome, (&self.stats, &self.addresses, &self.broker)).await;
    }
}

impl Answer {
    /// Publishes the reply on `channel` (or alone, or not at all, as
    /// [`ReplyAddresses`] says for its address), then acknowledges the
    /// request.
    async fn reply_then_ack(
        self,
        channel: &Channel,
        outcome: Result<Response, Status>,
        (stats, addresses, broker): Replying<'_>,
    ) {
        let succeeded = outcome.is_ok();
        let (reply_to, correlation_id) = (self.reply_to, self.correlation_id);
        // Probes go one at a time; the verdict is read again once it is this
        // reply's turn, since the probe before it may have settled the address.
        let mut verdict = addresses.verdict(&reply_to);
        let turn = match verdict {
            Verdict::Probe => Some(addresses.probe_turn().await),
            Verdict::Publish | Verdict::Dead => None,
        };
        if turn.is_some() {
            verdict = addresses.verdict(&reply_to);
        }
        let published = match verdict {
            Verdict::Dead => {
                tracing::debug!(%reply_to, "not replying to an address that broke a connection before");
                stats.outcome(Outcome::Undeliverable);
                return ack(self.acker).await;
            }
            Verdict::Probe => match reply::publish_alone(broker, reply_to.clone(), correlation_id, outcome).await {
                Ok(true) => {
                    addresses.probed(&reply_to, true);
                    Ok(())
                }
                Ok(false) => {
                    tracing::warn!(
                        %reply_to,
                        "a reply to this address broke its connection: its caller's node is gone; \
                         not replying to it any more"
                    );
                    addresses.probed(&reply_to, false);
                    stats.outcome(Outcome::Undeliverable);
                    return ack(self.acker).await;
                }
                Err(error) => Err(error),
            },
            // Bounded: an await on a channel that died silently must not hold
            // the request (and a prefetch slot) forever.
            Verdict::Publish => {
                drop(turn);
                let published = reply::publish(channel, reply_to.clone(), correlation_id, outcome).await;
                if published.is_err() {
                    addresses.reply_failed(&reply_to);
                }
                published
            }
        };
        match published {
            Ok(()) => {
                stats.outcome(if succeeded { Outcome::Ok } else { Outcome::Error });
                if let Err(error) = broker::bounded(self.acker.ack(BasicAckOptions::default())).await {
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
}

/// Acknowledges a request that gets no reply.
async fn ack(acker: Acker) {
    if let Err(error) = broker::bounded(acker.ack(BasicAckOptions::default())).await {
        tracing::warn!(%error, "ack failed; the request will be redelivered");
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
