//! What a worker did with the messages it took: counters readable in-process
//! ([`Stats`]) and the same events as Prometheus metrics (served when the
//! binary is given `--metrics-listen`).
//!
//! Every metric and its labels are listed in `docs/observability.md`;
//! `gateway/tests/metrics_doc.rs` fails when that list and the names declared
//! here drift apart.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram};

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    Expired,
    Rejected,
    ReplyFailed,
    /// Acknowledged without a reply: its address breaks the connection a
    /// reply is published on (`crate::addresses`).
    Undeliverable,
}

/// Counters of one worker.
#[derive(Debug)]
pub struct Stats {
    /// Requests answered (successfully or with an error status).
    pub replied: AtomicU64,
    /// Requests acked without work because their deadline had passed.
    pub expired: AtomicU64,
    /// Messages rejected without requeue (no `reply_to` or `correlation_id`).
    pub rejected: AtomicU64,
    /// Handler panics, answered INTERNAL.
    pub panics: AtomicU64,
    /// Connections re-established after a loss.
    pub reconnects: AtomicU64,
    /// Channels reopened on a live connection after the broker closed them.
    pub channel_recoveries: AtomicU64,
    /// Requests whose headers were rejected on arrival (nested too deep or
    /// malformed), answered INVALID_ARGUMENT without running the handler.
    pub headers_rejected: AtomicU64,
    route: String,
    metrics: Metrics,
}

#[derive(Debug)]
struct Metrics {
    ok: Counter,
    error: Counter,
    expired: Counter,
    rejected: Counter,
    reply_failed: Counter,
    undeliverable: Counter,
    panics: Counter,
    reconnects: Counter,
    channel_recoveries: Counter,
    headers_rejected: Counter,
    duration: Histogram,
    in_flight: Gauge,
}

impl Stats {
    pub(crate) fn new(route: &str) -> Self {
        describe();
        let outcome =
            |o: &'static str| metrics::counter!("worker_messages_total", "route" => route.to_owned(), "outcome" => o);
        let route = || ("route", route.to_owned());
        Self {
            replied: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            channel_recoveries: AtomicU64::new(0),
            headers_rejected: AtomicU64::new(0),
            route: route().1,
            metrics: Metrics {
                ok: outcome("ok"),
                error: outcome("error"),
                expired: outcome("expired"),
                rejected: outcome("rejected"),
                reply_failed: outcome("reply_failed"),
                undeliverable: outcome("undeliverable"),
                panics: metrics::counter!("worker_handler_panics_total", &[route()]),
                reconnects: metrics::counter!("worker_broker_reconnects_total", &[route()]),
                channel_recoveries: metrics::counter!("worker_channel_recoveries_total", &[route()]),
                headers_rejected: metrics::counter!("worker_headers_rejected_total", &[route()]),
                duration: metrics::histogram!("worker_handler_duration_seconds", &[route()]),
                in_flight: metrics::gauge!("worker_requests_in_flight", &[route()]),
            },
        }
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        let (counter, atomic) = match outcome {
            Outcome::Ok => (&self.metrics.ok, Some(&self.replied)),
            Outcome::Error => (&self.metrics.error, Some(&self.replied)),
            Outcome::Expired => (&self.metrics.expired, Some(&self.expired)),
            Outcome::Rejected => (&self.metrics.rejected, Some(&self.rejected)),
            Outcome::ReplyFailed => (&self.metrics.reply_failed, None),
            Outcome::Undeliverable => (&self.metrics.undeliverable, None),
        };
        counter.increment(1);
        if let Some(atomic) = atomic {
            atomic.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn handled(&self, elapsed: Duration) {
        self.metrics.duration.record(elapsed.as_secs_f64());
    }

    pub(crate) fn started(&self) {
        self.metrics.in_flight.increment(1.0);
    }

    pub(crate) fn finished(&self) {
        self.metrics.in_flight.decrement(1.0);
    }

    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        self.metrics.panics.increment(1);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.metrics.reconnects.increment(1);
    }

    pub(crate) fn headers_rejected(&self) {
        self.headers_rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.headers_rejected.increment(1);
    }

    /// Sets `worker_broker_connected{route, node}`: 1 for the node connected
    /// to (None: disconnected), 0 for the other nodes of the list.
    pub(crate) fn broker_node(&self, nodes: &[amqp_gateway::broker::AmqpUrl], connected: Option<&str>) {
        for node in nodes {
            let up = connected == Some(node.node());
            let labels = [("route", self.route.clone()), ("node", node.node().to_owned())];
            metrics::gauge!("worker_broker_connected", &labels).set(if up { 1.0 } else { 0.0 });
        }
    }

    pub(crate) fn channel_recovered(&self) {
        self.channel_recoveries.fetch_add(1, Ordering::Relaxed);
        self.metrics.channel_recoveries.increment(1);
    }
}

fn describe() {
    metrics::describe_counter!("worker_messages_total", "Messages taken from the queue, by outcome");
    metrics::describe_histogram!(
        "worker_handler_duration_seconds",
        metrics::Unit::Seconds,
        "Time the handler took per request"
    );
    metrics::describe_gauge!("worker_requests_in_flight", "Requests being handled now");
    metrics::describe_counter!("worker_handler_panics_total", "Handler panics, answered INTERNAL");
    metrics::describe_counter!("worker_broker_reconnects_total", "Broker connections re-established after a loss");
    metrics::describe_gauge!(
        "worker_broker_connected",
        "1 for the broker node (host:port) the worker's connection is on, 0 for the others"
    );
    metrics::describe_counter!("worker_channel_recoveries_total", "Channels reopened after the broker closed them");
    metrics::describe_counter!(
        "worker_headers_rejected_total",
        "Requests whose headers were nested too deep or malformed, answered INVALID_ARGUMENT"
    );
}
