//! Queue set-up on a fresh channel: confirm mode, the prefetch count, the
//! route's queue (and its dead-letter queue) declared, or only checked when
//! operations own it, and the consumer started.
//!
//! Each step is bounded and names itself and its queue in its error, so a
//! refusal ("declaring queue \"jobs\": ... PRECONDITION_FAILED - inequivalent
//! arg 'durable' ...") tells the operator what to change.

use amqp_gateway::broker;
use lapin::{
    Connection,
    options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::{WorkerConfig, consume::Subscription, error::SetupError};

/// Opens a channel on `connection` and starts consuming the route's queue.
pub(crate) async fn subscribe(config: &WorkerConfig, connection: &Connection) -> Result<Subscription, SetupError> {
    let queue = config.queue.as_str();
    let channel = step("opening a channel", connection.create_channel()).await?;
    // Replies are published under confirms: a request is acked only once the
    // broker has its reply (at-least-once).
    step("enabling publisher confirms", channel.confirm_select(ConfirmSelectOptions::default())).await?;
    step("setting the prefetch count", channel.basic_qos(config.prefetch, BasicQosOptions::default())).await?;
    if config.declare {
        let options = QueueDeclareOptions { durable: config.durable(), ..QueueDeclareOptions::default() };
        if let Some(dead_letters) = &config.dead_letter_queue {
            let declare = channel.queue_declare(dead_letters.as_str().into(), options, FieldTable::default());
            step(format!("declaring dead-letter queue {dead_letters:?}"), declare).await?;
        }
        let declare = channel.queue_declare(queue.into(), options, config.queue_arguments());
        step(format!("declaring queue {queue:?}"), declare).await?;
    } else {
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let check = channel.queue_declare(queue.into(), options, FieldTable::default());
        step(format!("checking that queue {queue:?} exists"), check).await?;
    }
    let consume = channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default());
    let consumer = step(format!("consuming queue {queue:?}"), consume).await?;
    Ok(Subscription { channel, consumer })
}

/// Runs one set-up step within the broker step bound, naming it on failure.
async fn step<T>(what: impl Into<String>, step: impl Future<Output = lapin::Result<T>>) -> Result<T, SetupError> {
    broker::bounded(step).await.map_err(|error| SetupError::new(what.into(), error))
}
