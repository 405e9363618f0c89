//! The AMQP request/reply client: where a request is published and its reply
//! awaited.
//!
//! - [`AmqpClient::round_trip`] publishes one [`AmqpRequest`] (mandatory,
//!   under publisher confirms, with the contract's properties and headers),
//!   waits for the reply matched by correlation id and returns it decoded as a
//!   [`Reply`].
//! - `session`: the connection, its publisher channels and their tasks,
//!   which publish the requests and match the replies.
//! - `pending`: the table of requests waiting for replies.
//! - `supervise` (below): keeps one session alive, reconnecting with capped,
//!   jittered exponential backoff, and publishes whether the broker is
//!   reachable for health checks.
//!
//! One connection per process, a few long-lived channels: nothing is opened
//! per request. No lapin type appears in this module's public API: the
//! rest of the gateway sees decoded replies and [`RoundTripError`]s.

mod pending;
mod session;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use amqp_gateway::{
    broker::{self, AmqpUrl, Reconnect},
    wire,
};
use bytes::Bytes;
use lapin::{
    BasicProperties,
    types::{FieldTable, ShortString},
};
use opentelemetry::trace::TraceContextExt;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::Code;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use self::session::BrokerSession;
pub use crate::metrics::Stats;
use crate::{config::AmqpConfig, context::LeanTrace, deadline::Deadline, metrics::BrokerEvent};

/// Why a request got no reply from a worker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RoundTripError {
    /// No broker connection right now.
    #[error("broker connection is down")]
    NotConnected,
    /// The connection or channel failed while the request waited.
    #[error("broker connection lost before the reply arrived")]
    ConnectionLost,
    /// The broker returned the message: no queue is bound to the route.
    #[error("no queue is bound to route {route:?}")]
    Unroutable {
        /// The route.
        route: String,
    },
    /// The broker nacked the publish.
    #[error("broker refused the request")]
    Nacked,
    /// The publish itself failed. (The source is lapin's error, shared so
    /// the error stays `Clone`; `Display` leaves it to `source()`.)
    #[error("publish failed")]
    Publish(#[source] Arc<lapin::Error>),
    /// The reply's headers were rejected on arrival (nested too deep or
    /// malformed): the worker, or whoever published it, broke the contract.
    #[error("the worker's reply headers were rejected: {0}")]
    ReplyRejected(String),
    /// The worker's reply is over `--max-reply-bytes`; it was dropped.
    #[error("the worker's reply is {size} bytes, over the gateway's reply limit of {limit} bytes")]
    ReplyTooLarge {
        /// Reply body size.
        size: usize,
        /// The configured reply limit.
        limit: usize,
    },
}

impl RoundTripError {
    /// A short, stable name of the error, for spans and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::ConnectionLost => "connection_lost",
            Self::Unroutable { .. } => "unroutable",
            Self::Nacked => "nacked",
            Self::Publish(_) => "publish_failed",
            Self::ReplyRejected(_) => "reply_rejected",
            Self::ReplyTooLarge { .. } => "reply_too_large",
        }
    }
}

/// A worker's reply, decoded per the contract (`amqp_gateway::wire`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The worker's status (`x-status-code`; absent is OK).
    pub code: Code,
    /// The worker's status message (`x-status-message`; may be empty).
    pub message: String,
    /// Body.
    pub payload: Vec<u8>,
    /// `content_type` property.
    pub content_type: Option<String>,
    /// The string-valued application headers: no reserved `x-` names, no
    /// trace context.
    pub headers: BTreeMap<String, String>,
}

/// A reply as it came off the wire, before decoding: what the channel's task
/// hands to the waiting request.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: Option<String>,
    pub(crate) headers: Option<FieldTable>,
}

impl Delivered {
    fn decode(self) -> Reply {
        let (code, message) = wire::decode_status(self.headers.as_ref());
        Reply {
            code,
            message,
            payload: self.payload,
            content_type: self.content_type,
            headers: wire::application_headers(self.headers.as_ref()),
        }
    }
}

/// One request to publish.
#[derive(Debug)]
pub struct AmqpRequest {
    /// Correlation id and message id of the request.
    pub correlation_id: Uuid,
    /// Routing key (an allow-listed route).
    pub route: String,
    /// Body.
    pub payload: Bytes,
    /// MIME type; empty leaves the property unset.
    pub content_type: String,
    /// Caller headers, already validated.
    pub headers: HashMap<String, String>,
    /// When the request must be answered by.
    pub deadline: Deadline,
    /// The typed method the request is for; None for `Process`.
    pub method: Option<Arc<MethodTag>>,
    /// The call's trace context when it makes no spans
    /// ([`RequestContext::lean_trace`](crate::context::RequestContext::lean_trace));
    /// None when it is traced with spans.
    pub trace: Option<LeanTrace>,
}

/// What marks a typed method's request on the wire: the `x-grpc-method`
/// header and the AMQP `type` property. Made once per method at start-up.
#[derive(Debug)]
pub struct MethodTag {
    /// `package.Service/Method`.
    pub method: String,
    /// The request message's full name.
    pub message_type: ShortString,
}

/// Handle to the gateway's broker session; cheap to clone.
#[derive(Clone, Debug)]
pub struct AmqpClient {
    session: watch::Receiver<Option<Arc<BrokerSession>>>,
    node: watch::Receiver<Option<String>>,
    stats: Arc<Stats>,
}

impl AmqpClient {
    /// Starts the supervisor that connects to the broker and keeps the
    /// connection alive until `shutdown` is cancelled. Requests fail with
    /// [`RoundTripError::NotConnected`] until the first connection is up.
    pub fn start(config: AmqpConfig, shutdown: CancellationToken, tracker: &TaskTracker) -> Self {
        let (session_tx, session) = watch::channel(None);
        let (node_tx, node) = watch::channel(None);
        let stats = Arc::new(Stats::default());
        let current = Current { session: session_tx, node: node_tx, nodes: config.broker.nodes().to_vec() };
        current.set(None);
        let supervisor = supervise(config, current, stats.clone(), shutdown, tracker.clone());
        tracker.spawn(supervisor.instrument(tracing::info_span!("amqp")));
        Self { session, node, stats }
    }

    /// Publishes `request` and waits for its reply. The caller bounds the
    /// wait with the request's deadline; dropping the future removes the
    /// pending entry.
    ///
    /// Traced as a PRODUCER span `send <route>` (OpenTelemetry messaging
    /// conventions for RabbitMQ) whose context travels in the request headers,
    /// and a CONSUMER span for the reply's arrival, child of the worker's span
    /// when the reply carries its `traceparent`. A call that makes no spans
    /// (`request.trace`) makes neither, and passes its context on as it is.
    pub async fn round_trip(&self, request: AmqpRequest) -> Result<Reply, RoundTripError> {
        if request.trace.is_some() {
            return self.publish_and_wait(request, &tracing::Span::none()).await;
        }
        let span = tracing::info_span!(
            target: otel::CALL_SPANS,
            "send",
            otel.name = %format_args!("send {}", request.route),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %request.route,
            messaging.rabbitmq.destination.routing_key = %request.route,
            messaging.message.id = %request.correlation_id,
            messaging.message.conversation_id = %request.correlation_id,
            messaging.message.body.size = request.payload.len(),
        );
        let result = self.publish_and_wait(request, &span).instrument(span.clone()).await;
        if let Err(error) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", error.kind());
        }
        result
    }

    async fn publish_and_wait(&self, request: AmqpRequest, span: &tracing::Span) -> Result<Reply, RoundTripError> {
        let session = self.session.borrow().clone().filter(|s| !s.is_lost()).ok_or(RoundTripError::NotConnected)?;
        let slot = session.slot();
        let correlation_id = request.correlation_id;
        let traced = request.trace.is_none();
        let (_guard, reply) = slot.pending.insert(correlation_id);
        // A channel or session marks itself closed before failing its pending
        // requests, so a request registered after that sweep sees the mark
        // here and is not left waiting for a reply that cannot come.
        if slot.is_closed() || session.is_lost() {
            return Err(RoundTripError::ConnectionLost);
        }

        // The channel's task publishes the request and awaits the broker's
        // confirm; a refusal comes back here through the pending table, like
        // a reply. The call itself holds only the guard and the receiver.
        let id = ShortString::from(correlation_id.hyphenated().to_string());
        let properties = request_properties(&request, id, span);
        slot.publish(session::Publish {
            id: correlation_id,
            route: request.route.into(),
            payload: request.payload,
            properties,
        })?;

        // The sender is dropped only by `fail_all`, which sends first; a closed
        // channel therefore means the session went away.
        let delivered = reply.await.unwrap_or(Err(RoundTripError::ConnectionLost))?;
        if traced {
            received(&delivered, correlation_id);
        }
        Ok(delivered.decode())
    }

    /// Whether a broker session is up.
    pub fn is_connected(&self) -> bool {
        self.session.borrow().as_ref().is_some_and(|s| !s.is_lost())
    }

    /// Follows the broker node (`host:port`) a session is up on, None while
    /// there is none, for health reporting.
    pub fn node(&self) -> watch::Receiver<Option<String>> {
        self.node.clone()
    }

    /// Requests waiting for a reply right now.
    pub fn pending(&self) -> usize {
        self.session.borrow().as_ref().map_or(0, |s| s.pending())
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Records the reply's arrival: a CONSUMER span on the reply-to pseudo-queue,
/// which the conventions keep out of the span name (it is anonymous and
/// temporary), continuing the worker's trace context when the reply has one.
fn received(reply: &Delivered, correlation_id: Uuid) {
    let span = tracing::info_span!(
        target: otel::CALL_SPANS,
        "receive",
        otel.name = "receive (anonymous)",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "receive",
        messaging.operation.name = "receive",
        messaging.destination.temporary = true,
        messaging.destination.anonymous = true,
        messaging.message.conversation_id = %correlation_id,
        messaging.message.body.size = reply.payload.len(),
    );
    let worker = otel::propagation::extract_amqp(reply.headers.as_ref());
    if worker.span().span_context().is_valid() {
        let _ = span.set_parent(worker);
    }
    span.in_scope(|| tracing::debug!(%correlation_id, "reply received"));
}

fn request_properties(request: &AmqpRequest, id: ShortString, span: &tracing::Span) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &request.headers {
        headers.insert(name.as_str().into(), wire::long_string(value.as_str()));
    }
    if let Some(tag) = &request.method {
        headers.insert(wire::METHOD_HEADER.into(), wire::long_string(tag.method.as_str()));
    }
    match &request.trace {
        Some(lean) => lean.inject_amqp(&mut headers),
        None => otel::propagation::inject_amqp(span, &mut headers),
    }
    let content_type = (!request.content_type.is_empty()).then(|| request.content_type.as_str().into());
    let properties = wire::request_properties(id, headers, request.deadline.remaining(), content_type);
    match &request.method {
        Some(tag) => properties.with_type(tag.message_type.clone()),
        None => properties,
    }
}

/// Where the supervisor publishes the current session, and the node it is on
/// (for health reporting and `gateway_broker_connected`).
struct Current {
    session: watch::Sender<Option<Arc<BrokerSession>>>,
    node: watch::Sender<Option<String>>,
    nodes: Vec<AmqpUrl>,
}

impl Current {
    fn set(&self, session: Option<Arc<BrokerSession>>) {
        let node = session.as_ref().map(|s| s.node().to_owned());
        crate::metrics::broker_node(&self.nodes, node.as_deref());
        self.session.send_replace(session);
        self.node.send_if_modified(|current| {
            let changed = *current != node;
            *current = node;
            changed
        });
    }
}

/// Keeps one session alive until `shutdown`, then closes it.
async fn supervise(
    config: AmqpConfig,
    current: Current,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut reconnect = Reconnect::new();
    loop {
        let opened = tokio::select! {
            opened = BrokerSession::open(&config, &stats, &tracker) => opened,
            () = shutdown.cancelled() => break,
        };
        let session = match opened {
            Ok(session) => session,
            Err(error) => {
                // Kept retrying even when the broker refuses for good (bad
                // credentials, a missing vhost): the gateway stays up and
                // reports NOT_SERVING, so an operator's fix of the broker
                // side heals it without a restart.
                let delay = reconnect.failed();
                tracing::warn!(%error, retry_in = ?delay, "cannot connect to the broker");
                if broker::sleep_or_stop(delay, &shutdown).await {
                    continue;
                }
                break;
            }
        };
        if reconnect.connected() {
            stats.count(BrokerEvent::Reconnect);
        }
        tracing::info!(node = %session.node(), channels = config.channels, "connected to the broker");
        current.set(Some(session.clone()));

        tokio::select! {
            () = session.lost() => {
                current.set(None);
                let failed = session.fail();
                tracing::warn!(node = %session.node(), failed, "broker session lost; reconnecting to the next node");
            }
            () = shutdown.cancelled() => {
                current.set(None);
                session.close().await;
                return;
            }
        }
    }
    current.set(None);
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;

    use super::*;

    #[test]
    fn a_reply_is_decoded_per_the_contract() {
        let mut headers = FieldTable::default();
        wire::encode_status(&mut headers, Code::PermissionDenied, "no");
        headers.insert("tenant".into(), wire::long_string("acme"));
        headers.insert("n".into(), AMQPValue::LongInt(1));
        headers.insert(wire::TRACEPARENT_HEADER.into(), wire::long_string("00-0-0-00"));
        let delivered =
            Delivered { payload: b"hi".to_vec(), content_type: Some("text/plain".into()), headers: Some(headers) };
        let reply = delivered.decode();
        assert_eq!((reply.code, reply.message.as_str()), (Code::PermissionDenied, "no"));
        assert_eq!(reply.payload, b"hi");
        assert_eq!(reply.content_type.as_deref(), Some("text/plain"));
        assert_eq!(reply.headers, BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]));

        let bare = Delivered { payload: Vec::new(), content_type: None, headers: None }.decode();
        assert_eq!((bare.code, bare.headers.len()), (Code::Ok, 0));
    }
}
