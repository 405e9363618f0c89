//! The gateway's numbers: counters readable in-process ([`Stats`]) and the
//! same events as Prometheus metrics, served on `--metrics-listen`
//! ([`ProcessMetrics`], [`Rejections`] and the handles below).
//!
//! Every metric and its labels are listed in `docs/observability.md`;
//! `gateway/tests/metrics_doc.rs` fails when that list and the names declared
//! here drift apart.
//!
//! Handles are looked up once, when the server is assembled (per route and
//! code, per rejection reason), so recording on the call path is an atomic
//! add, with no label formatting or registry lookup.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use amqp_gateway::wire;
use metrics::{Counter, Gauge, Histogram};
use tonic::Code;

use crate::error::{GatewayError, Rejection};

/// Label of calls whose route is not allowed: caller input never becomes a
/// label value, so a bad caller cannot grow the metrics without bound.
const INVALID_ROUTE: &str = "(invalid)";

/// Broker events that are not errors of any one call.
#[derive(Debug)]
pub struct Stats {
    /// Replies whose call had already ended (deadline, cancellation) or that
    /// matched no call.
    pub unknown_replies: AtomicU64,
    /// Publishes returned by the broker as unroutable.
    pub unroutable: AtomicU64,
    /// Publishes nacked by the broker.
    pub nacks: AtomicU64,
    /// Sessions re-established after a loss.
    pub reconnects: AtomicU64,
    /// Channels reopened after the broker closed them, on a live connection.
    pub channel_recoveries: AtomicU64,
    /// Replies whose headers the frame guard rejected (nested too deep or
    /// malformed); each failed its call.
    pub rejected_headers: AtomicU64,
    /// Replies over the reply limit, dropped (their call, if still waiting,
    /// failed with RESOURCE_EXHAUSTED).
    pub replies_too_large: AtomicU64,
    /// Successful replies of typed methods that did not fit the response
    /// type (each failed its call with INTERNAL).
    pub replies_not_fitting: AtomicU64,
    metrics: StatsMetrics,
}

/// The Prometheus side of [`Stats`], one named handle per counter.
#[derive(Debug)]
struct StatsMetrics {
    unknown_replies: Counter,
    unroutable: Counter,
    nacks: Counter,
    reconnects: Counter,
    channel_recoveries: Counter,
    rejected_headers: Counter,
    replies_too_large: Counter,
    replies_not_fitting: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        describe();
        let rejected = |reason: &'static str| metrics::counter!("gateway_replies_rejected_total", "reason" => reason);
        Self {
            unknown_replies: AtomicU64::new(0),
            unroutable: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            channel_recoveries: AtomicU64::new(0),
            rejected_headers: AtomicU64::new(0),
            replies_too_large: AtomicU64::new(0),
            replies_not_fitting: AtomicU64::new(0),
            metrics: StatsMetrics {
                unknown_replies: metrics::counter!("gateway_replies_dropped_total"),
                unroutable: metrics::counter!("gateway_unroutable_total"),
                nacks: metrics::counter!("gateway_publish_nacks_total"),
                reconnects: metrics::counter!("gateway_broker_reconnects_total"),
                channel_recoveries: metrics::counter!("gateway_channel_recoveries_total"),
                rejected_headers: rejected("headers"),
                replies_too_large: rejected("too_large"),
                replies_not_fitting: rejected("does_not_fit"),
            },
        }
    }
}

/// Sets `gateway_broker_connected{node}`: 1 for the node the broker session
/// is on, 0 for every other node of the list (all 0 while disconnected), so a
/// dashboard sees which node each gateway uses and when it moves.
pub(crate) fn broker_node(nodes: &[amqp_gateway::broker::AmqpUrl], connected: Option<&str>) {
    for node in nodes {
        let up = connected == Some(node.node());
        metrics::gauge!("gateway_broker_connected", "node" => node.node().to_owned()).set(if up { 1.0 } else { 0.0 });
    }
}

/// A broker event counted in [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokerEvent {
    UnknownReply,
    Unroutable,
    Nack,
    Reconnect,
    ChannelRecovered,
    RejectedHeaders,
    ReplyTooLarge,
    ReplyDoesNotFit,
}

impl Stats {
    /// Counts `event` in its in-process counter and its Prometheus counter.
    pub(crate) fn count(&self, event: BrokerEvent) {
        let (atomic, counter) = match event {
            BrokerEvent::UnknownReply => (&self.unknown_replies, &self.metrics.unknown_replies),
            BrokerEvent::Unroutable => (&self.unroutable, &self.metrics.unroutable),
            BrokerEvent::Nack => (&self.nacks, &self.metrics.nacks),
            BrokerEvent::Reconnect => (&self.reconnects, &self.metrics.reconnects),
            BrokerEvent::ChannelRecovered => (&self.channel_recoveries, &self.metrics.channel_recoveries),
            BrokerEvent::RejectedHeaders => (&self.rejected_headers, &self.metrics.rejected_headers),
            BrokerEvent::ReplyTooLarge => (&self.replies_too_large, &self.metrics.replies_too_large),
            BrokerEvent::ReplyDoesNotFit => (&self.replies_not_fitting, &self.metrics.replies_not_fitting),
        };
        atomic.fetch_add(1, Ordering::Relaxed);
        counter.increment(1);
    }
}

/// The pending-calls gauge.
pub(crate) fn pending_gauge() -> Gauge {
    metrics::gauge!("gateway_pending_calls")
}

/// The in-flight gauge and the shed counter.
pub(crate) fn in_flight_metrics() -> (Gauge, Counter) {
    (metrics::gauge!("gateway_calls_in_flight"), metrics::counter!("gateway_calls_shed_total"))
}

/// Client connection metrics.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionMetrics {
    /// Connections open now.
    pub(crate) open: Gauge,
    /// Connections closed at once because `--max-connections` were open.
    pub(crate) refused: Counter,
    /// Connections closed because the handshake did not finish in time.
    pub(crate) handshake_timeouts: Counter,
}

impl ConnectionMetrics {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            open: metrics::gauge!("gateway_connections_open"),
            refused: metrics::counter!("gateway_connections_refused_total"),
            handshake_timeouts: metrics::counter!("gateway_handshake_timeouts_total"),
        }
    }
}

/// `gateway_rejected_requests_total{reason}`, one handle per reason
/// ([`GatewayError::rejection`]); cheap to clone.
#[derive(Clone, Debug)]
pub struct Rejections(Arc<RejectionCounters>);

#[derive(Debug)]
struct RejectionCounters {
    unauthenticated: Counter,
    permission_denied: Counter,
    invalid_argument: Counter,
    payload_too_large: Counter,
}

impl Rejections {
    /// Looks the handles up.
    pub fn new() -> Self {
        describe();
        let counter =
            |reason: Rejection| metrics::counter!("gateway_rejected_requests_total", "reason" => reason.label());
        Self(Arc::new(RejectionCounters {
            unauthenticated: counter(Rejection::Unauthenticated),
            permission_denied: counter(Rejection::PermissionDenied),
            invalid_argument: counter(Rejection::InvalidArgument),
            payload_too_large: counter(Rejection::PayloadTooLarge),
        }))
    }

    /// Counts `error` if it refused a request before any AMQP work.
    pub fn count(&self, error: &GatewayError) {
        let counter = match error.rejection() {
            Some(Rejection::Unauthenticated) => &self.0.unauthenticated,
            Some(Rejection::PermissionDenied) => &self.0.permission_denied,
            Some(Rejection::InvalidArgument) => &self.0.invalid_argument,
            Some(Rejection::PayloadTooLarge) => &self.0.payload_too_large,
            None => return,
        };
        counter.increment(1);
    }
}

impl Default for Rejections {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-route counters of finished calls (`Process` and typed methods), and
/// their latency.
#[derive(Debug)]
pub struct ProcessMetrics {
    routes: HashMap<String, RouteMetrics>,
    invalid: RouteMetrics,
}

#[derive(Debug)]
struct RouteMetrics {
    /// One counter per gRPC code, indexed by the code's number.
    calls: Vec<Counter>,
    duration: Histogram,
}

impl RouteMetrics {
    fn new(route: &str) -> Self {
        let calls = (0..=16)
            .map(|code| {
                let code = wire::code_name(Code::from_i32(code));
                metrics::counter!("gateway_calls_total", "route" => route.to_owned(), "code" => code)
            })
            .collect();
        Self { calls, duration: metrics::histogram!("gateway_call_duration_seconds", "route" => route.to_owned()) }
    }
}

impl ProcessMetrics {
    /// Handles for every allowed route: `Process` routes and typed methods'.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> Self {
        describe();
        Self {
            routes: routes.into_iter().map(|r| (r.to_owned(), RouteMetrics::new(r))).collect(),
            invalid: RouteMetrics::new(INVALID_ROUTE),
        }
    }

    /// Records a finished call; `route` is `None` when no allowed route was
    /// resolved.
    pub fn record(&self, route: Option<&str>, code: Code, elapsed: Duration) {
        let metrics = route.and_then(|r| self.routes.get(r)).unwrap_or(&self.invalid);
        if let Some(counter) = metrics.calls.get(code as usize) {
            counter.increment(1);
        }
        metrics.duration.record(elapsed.as_secs_f64());
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "gateway_calls_total",
        "Finished calls (Process and typed methods), by route and gRPC status code"
    );
    describe_histogram!("gateway_call_duration_seconds", Unit::Seconds, "Call latency, by route");
    describe_gauge!("gateway_calls_in_flight", "Calls (Process and typed methods) running now");
    describe_counter!("gateway_calls_shed_total", "Calls refused at the in-flight limit");
    describe_gauge!("gateway_pending_calls", "Calls published and waiting for their reply");
    describe_counter!("gateway_rejected_requests_total", "Requests refused before any AMQP work, by reason");
    describe_counter!("gateway_replies_dropped_total", "Late or unknown replies discarded");
    describe_counter!(
        "gateway_replies_rejected_total",
        "Replies that failed their call instead of reaching it, by reason"
    );
    describe_counter!("gateway_unroutable_total", "Requests returned by the broker: no queue bound to the route");
    describe_counter!("gateway_publish_nacks_total", "Requests the broker refused (nack)");
    describe_counter!("gateway_broker_reconnects_total", "Broker sessions re-established after a loss");
    describe_gauge!(
        "gateway_broker_connected",
        "1 for the broker node (host:port) the session is on, 0 for the others"
    );
    describe_counter!("gateway_channel_recoveries_total", "Channels reopened after the broker closed them");
    describe_gauge!("gateway_connections_open", "Client connections open now");
    describe_counter!("gateway_connections_refused_total", "Client connections closed at once: --max-connections open");
    describe_counter!(
        "gateway_handshake_timeouts_total",
        "Client connections closed: no TLS handshake or HTTP/2 preface within --handshake-timeout"
    );
}
