//! Worker configuration, built once by the caller (the binary parses flags).

use std::time::Duration;

use amqp_gateway::broker::AmqpUrl;

/// How a worker connects and consumes.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The broker.
    pub url: AmqpUrl,
    /// The route served: the queue consumed, declared if missing.
    pub queue: String,
    /// Requests handled at once (the AMQP prefetch count).
    pub prefetch: u16,
    /// Declare the queue durable (it survives a broker restart). Must match
    /// how the queue was first declared, or the broker refuses the declare.
    pub durable: bool,
    /// Declare the queue. When false the queue must exist already (declared by
    /// operations, with whatever arguments and policies they chose); the
    /// worker only checks it passively.
    pub declare: bool,
    /// How long requests in flight may take to finish after shutdown begins;
    /// unfinished ones go back to the queue.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    /// Defaults for serving `queue` on the broker at `url`.
    pub fn new(url: AmqpUrl, queue: impl Into<String>) -> Self {
        Self {
            url,
            queue: queue.into(),
            prefetch: 16,
            durable: true,
            declare: true,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
