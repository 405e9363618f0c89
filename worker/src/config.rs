//! Worker configuration, built once by the caller (the binary parses flags).

use std::time::Duration;

use amqp_gateway::{
    broker::{AmqpUrl, Broker},
    wire,
};
use lapin::types::{AMQPValue, FieldTable};

/// The kind of queue a worker declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue.
    #[default]
    Classic,
    /// A quorum queue: replicated across a RabbitMQ cluster, always durable,
    /// and able to count deliveries, so poison messages stop after
    /// [`WorkerConfig::delivery_limit`] deliveries.
    Quorum,
}

/// How a worker connects and consumes.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The broker: URL and TLS trust.
    pub broker: Broker,
    /// The route served: the queue consumed, declared if missing.
    pub queue: String,
    /// Requests handled at once (the AMQP prefetch count).
    pub prefetch: u16,
    /// Declare the queue durable (it survives a broker restart). Quorum queues
    /// are always durable. Must match how the queue was first declared, or the
    /// broker refuses the declare.
    pub durable: bool,
    /// Declare the queue. When false the queue must exist already (declared by
    /// operations, with whatever arguments and policies they chose); the
    /// worker only checks it passively.
    pub declare: bool,
    /// Classic or quorum queue.
    pub queue_type: QueueType,
    /// Quorum queues: deliveries after which a message that keeps coming back
    /// (its worker crashed or gave it back each time) is dead-lettered or
    /// dropped instead of delivered again.
    pub delivery_limit: u32,
    /// Where messages the queue gives up on go (rejected, over the delivery
    /// limit, expired): a queue of this name, declared beside the route's
    /// queue and fed through the default exchange. None: they are dropped.
    pub dead_letter_queue: Option<String>,
    /// Largest request body handled; larger ones are answered
    /// RESOURCE_EXHAUSTED without running the handler.
    pub max_body_bytes: usize,
    /// How long requests in flight may take to finish after shutdown begins;
    /// unfinished ones go back to the queue.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    /// Defaults for serving `queue` on the broker at `url`.
    pub fn new(url: AmqpUrl, queue: impl Into<String>) -> Self {
        Self {
            broker: Broker::new(url),
            queue: queue.into(),
            prefetch: 16,
            durable: true,
            declare: true,
            queue_type: QueueType::Classic,
            delivery_limit: 5,
            dead_letter_queue: None,
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Whether the queues are declared durable.
    pub(crate) fn durable(&self) -> bool {
        self.durable || self.queue_type == QueueType::Quorum
    }

    /// The arguments the route's queue is declared with.
    pub(crate) fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert("x-queue-type".into(), wire::long_string("quorum"));
            let limit = i64::from(self.delivery_limit);
            arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
        }
        if let Some(dead_letters) = &self.dead_letter_queue {
            arguments.insert("x-dead-letter-exchange".into(), wire::long_string(""));
            arguments.insert("x-dead-letter-routing-key".into(), wire::long_string(dead_letters.as_str()));
        }
        arguments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkerConfig {
        WorkerConfig::new("amqp://127.0.0.1/%2f".parse().unwrap(), "jobs")
    }

    #[test]
    fn classic_queues_have_no_arguments_by_default() {
        assert!(config().queue_arguments().inner().is_empty());
    }

    #[test]
    fn quorum_queues_are_durable_and_limit_deliveries() {
        let config = WorkerConfig { queue_type: QueueType::Quorum, durable: false, delivery_limit: 3, ..config() };
        assert!(config.durable());
        let arguments = config.queue_arguments();
        assert_eq!(arguments.inner().get("x-queue-type"), Some(&wire::long_string("quorum")));
        assert_eq!(arguments.inner().get("x-delivery-limit"), Some(&AMQPValue::LongLongInt(3)));
    }

    #[test]
    fn dead_letters_go_through_the_default_exchange() {
        let config = WorkerConfig { dead_letter_queue: Some("jobs.dead".into()), ..config() };
        let arguments = config.queue_arguments();
        assert_eq!(arguments.inner().get("x-dead-letter-exchange"), Some(&wire::long_string("")));
        assert_eq!(arguments.inner().get("x-dead-letter-routing-key"), Some(&wire::long_string("jobs.dead")));
    }
}
