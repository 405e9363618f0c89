//! Worker configuration, built once by the caller (the binary maps its flags
//! in [`crate::cli`]) and checked by [`WorkerConfig::validate`] before anything
//! connects.

use std::time::Duration;

use amqp_gateway::{
    broker::{AmqpUrl, Broker},
    wire,
};
use lapin::types::{AMQPValue, FieldTable};

/// The kind of queue a worker declares (also the `--queue-type` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
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
    /// Requests handled at once (the AMQP prefetch count). Must be positive:
    /// 0 means unlimited in AMQP, which would let one worker take a whole
    /// backlog into memory.
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

/// A worker configuration that cannot work, refused before connecting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The prefetch count is 0 (unlimited in AMQP).
    #[error("the prefetch count must be greater than zero (0 would mean unlimited)")]
    ZeroPrefetch,
    /// The body limit is 0, which would refuse every request with a body.
    #[error("the request body limit must be greater than zero")]
    ZeroBodyLimit,
    /// A queue name is empty (the broker would name the queue itself) or
    /// longer than an AMQP short string.
    #[error("invalid {role} name {name:?}: a queue name is 1 to {max} bytes", max = wire::SHORT_STRING_MAX)]
    QueueName {
        /// Which queue: "queue" or "dead-letter queue".
        role: &'static str,
        /// The name given.
        name: String,
    },
    /// The dead-letter queue is the route's queue itself, so a rejected
    /// message would come straight back.
    #[error("the dead-letter queue must differ from the queue {0:?}")]
    DeadLettersToItself(String),
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

    /// Checks the invariants the worker relies on; [`crate::spawn`] calls it
    /// too, so a worker never starts on a configuration that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefetch == 0 {
            return Err(ConfigError::ZeroPrefetch);
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::ZeroBodyLimit);
        }
        let queue_name = |role, name: &str| {
            let fits = (1..=wire::SHORT_STRING_MAX).contains(&name.len());
            if fits { Ok(()) } else { Err(ConfigError::QueueName { role, name: name.to_owned() }) }
        };
        queue_name("queue", &self.queue)?;
        if let Some(dead_letters) = &self.dead_letter_queue {
            queue_name("dead-letter queue", dead_letters)?;
            if *dead_letters == self.queue {
                return Err(ConfigError::DeadLettersToItself(self.queue.clone()));
            }
        }
        Ok(())
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
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let refused = |change: fn(&mut WorkerConfig)| {
            let mut config = config();
            change(&mut config);
            config.validate().unwrap_err()
        };
        assert_eq!(refused(|c| c.prefetch = 0), ConfigError::ZeroPrefetch);
        assert_eq!(refused(|c| c.max_body_bytes = 0), ConfigError::ZeroBodyLimit);
        assert!(matches!(refused(|c| c.queue = String::new()), ConfigError::QueueName { role: "queue", .. }));
        assert!(matches!(refused(|c| c.queue = "q".repeat(256)), ConfigError::QueueName { role: "queue", .. }));
        let dead_letters = refused(|c| c.dead_letter_queue = Some(String::new()));
        assert!(matches!(dead_letters, ConfigError::QueueName { role: "dead-letter queue", .. }));
        let itself = refused(|c| c.dead_letter_queue = Some("jobs".into()));
        assert_eq!(itself, ConfigError::DeadLettersToItself("jobs".into()));
        assert!(itself.to_string().contains("jobs"), "{itself}");
    }

    #[test]
    fn a_queue_name_may_fill_a_short_string() {
        let config = WorkerConfig { queue: "q".repeat(wire::SHORT_STRING_MAX), ..config() };
        assert_eq!(config.validate(), Ok(()));
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
