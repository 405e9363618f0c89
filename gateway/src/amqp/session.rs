//! One live broker connection and its publisher channels.
//!
//! A [`Session`] is opened by the supervisor (`super::supervise`) and replaced
//! as a whole when anything in it fails. Each channel is in confirm mode and
//! consumes RabbitMQ Direct Reply-to (`amq.rabbitmq.reply-to`), so replies need
//! no queue, nothing is shared between gateway instances, and a reply comes
//! back on the channel that published its request. Its reply task (here) is
//! where a reply is matched to its call.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{BasicConsumeOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use super::{CallError, Reply, Stats, pending::PendingTable};
use crate::config::AmqpConfig;

/// The pseudo-queue of RabbitMQ Direct Reply-to.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Bound on connecting and on each set-up step, so a broker that accepts TCP
/// but never answers cannot hang the supervisor.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A publisher channel and the calls waiting for replies on it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) channel: Channel,
    pub(crate) pending: Arc<PendingTable>,
}

/// A connected broker session.
#[derive(Debug)]
pub(crate) struct Session {
    connection: Connection,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// Cancelled when the session can no longer deliver replies.
    lost: CancellationToken,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("exchange {0:?} is not usable: {1}")]
    Exchange(String, Box<OpenError>),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

async fn bounded<T>(step: impl Future<Output = lapin::Result<T>>) -> Result<T, OpenError> {
    Ok(tokio::time::timeout(SETUP_TIMEOUT, step).await.map_err(|_| OpenError::Timeout(SETUP_TIMEOUT))??)
}

impl Session {
    /// Connects, opens `config.channels` publisher channels and starts their
    /// reply tasks on `tracker`.
    pub(crate) async fn open(
        config: &AmqpConfig,
        stats: &Arc<Stats>,
        tracker: &TaskTracker,
    ) -> Result<Arc<Self>, OpenError> {
        let properties = ConnectionProperties::default().with_connection_name("grpc-amqp-gateway".into());
        let connection = bounded(Connection::connect(config.url.expose(), properties)).await?;
        let lost = CancellationToken::new();
        if !config.exchange.is_empty() {
            // Publishing to a missing exchange closes the channel: check once
            // here, so a typo fails the connection attempt with a clear error
            // instead of every call.
            let channel = bounded(connection.create_channel()).await?;
            let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
            let declare = channel.exchange_declare(
                config.exchange.as_str().into(),
                lapin::ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            );
            bounded(declare).await.map_err(|e| OpenError::Exchange(config.exchange.clone(), Box::new(e)))?;
            let _ = channel.close(200, "exchange checked".into()).await;
        }

        let mut slots = Vec::with_capacity(config.channels);
        let mut consumers = Vec::with_capacity(config.channels);
        for _ in 0..config.channels {
            let channel = bounded(connection.create_channel()).await?;
            bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
            // Direct reply-to requires consuming before publishing, in no-ack mode.
            let consumer = bounded(channel.basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
                FieldTable::default(),
            ))
            .await?;
            let slot = Slot { channel, pending: Arc::new(PendingTable::default()) };
            consumers.push((consumer, slot.pending.clone(), slot.channel.id()));
            slots.push(slot);
        }
        for (consumer, pending, channel_id) in consumers {
            let task = route_replies(consumer, pending, stats.clone(), lost.clone());
            tracker.spawn(task.instrument(tracing::info_span!("replies", channel = channel_id)));
        }
        tracker.spawn(
            watch_connection(connection.events_listener(), lost.clone())
                .instrument(tracing::info_span!("connection-events")),
        );
        Ok(Arc::new(Self { connection, slots, next: AtomicUsize::new(0), lost }))
    }

    /// The next publisher channel, round robin.
    pub(crate) fn slot(&self) -> &Slot {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        &self.slots[i]
    }

    /// Calls waiting for a reply in this session.
    pub(crate) fn pending(&self) -> usize {
        self.slots.iter().map(|s| s.pending.len()).sum()
    }

    /// Resolves when the session has failed.
    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// True once the session has failed.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Fails every waiting call and marks the session lost.
    pub(crate) fn fail(&self) -> usize {
        self.lost.cancel();
        self.slots.iter().map(|s| s.pending.fail_all(|| CallError::ConnectionLost)).sum()
    }

    /// Closes the connection cleanly, within a bound.
    pub(crate) async fn close(&self) {
        self.lost.cancel();
        let close = self.connection.close(200, "gateway shutting down".into());
        match tokio::time::timeout(SETUP_TIMEOUT, close).await {
            Ok(Ok(())) => tracing::info!("AMQP connection closed"),
            Ok(Err(error)) => tracing::debug!(%error, "AMQP connection close failed (already closed?)"),
            Err(_) => tracing::warn!("AMQP connection close timed out"),
        }
    }
}

/// Matches replies to their calls until the consumer ends, then fails every
/// call still waiting on this channel: its replies can no longer arrive.
async fn route_replies(mut consumer: Consumer, pending: Arc<PendingTable>, stats: Arc<Stats>, lost: CancellationToken) {
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = lost.cancelled() => break,
        };
        match delivery {
            Some(Ok(delivery)) => dispatch(delivery, &pending, &stats),
            Some(Err(error)) => {
                tracing::warn!(%error, "reply consumer failed");
                break;
            }
            None => {
                tracing::warn!("reply consumer ended");
                break;
            }
        }
    }
    lost.cancel();
    let failed = pending.fail_all(|| CallError::ConnectionLost);
    if failed > 0 {
        tracing::warn!(failed, "failed calls waiting on a lost channel");
    }
}

fn dispatch(delivery: Delivery, pending: &PendingTable, stats: &Stats) {
    let properties = delivery.properties;
    let id = properties.correlation_id().as_ref().and_then(|id| Uuid::try_parse(id.as_str()).ok());
    let reply = Reply {
        payload: delivery.data,
        content_type: properties.content_type().as_ref().map(|c| c.as_str().to_owned()),
        headers: properties.headers().clone(),
    };
    let delivered = id.is_some_and(|id| pending.complete(&id, Ok(reply)));
    if !delivered {
        stats.unknown_reply();
        tracing::debug!(correlation_id = ?properties.correlation_id(), "dropped reply for an unknown or finished call");
    }
}

/// Marks the session lost on a connection error, in case no consumer notices
/// first.
async fn watch_connection(events: impl futures::Stream<Item = lapin::Event>, lost: CancellationToken) {
    let mut events = std::pin::pin!(events);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(%error, "AMQP connection error");
                    break;
                }
                Some(_) => {}
                None => break,
            },
            () = lost.cancelled() => return,
        }
    }
    lost.cancel();
}
