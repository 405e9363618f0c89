//! One live broker connection and its publisher channels.
//!
//! A [`BrokerSession`] is opened by the supervisor (`super::supervise`) and replaced
//! as a whole when its connection fails. Each channel is in confirm mode and
//! consumes RabbitMQ Direct Reply-to (`amq.rabbitmq.reply-to`), so replies need
//! no queue, nothing is shared between gateway instances, and a reply comes
//! back on the channel that published its request.
//!
//! Each channel has one task (here) that does all of its AMQP work: it
//! publishes the requests calls hand it ([`Slot::publish`]), awaits lapin's
//! write and the broker's confirm for each, and matches each reply to its
//! call. A call therefore waits for one thing only, its outcome in the
//! [pending table](super::pending): the reply, or why there will be none
//! (returned, nacked, publish failed, channel lost). lapin wakes whoever
//! awaits a publish from its own I/O thread, once when the frames are
//! written and once when the broker confirms; here those wake-ups land on
//! one task per channel, where many come together under load, instead of
//! waking every call twice. When the broker closes the channel alone, the
//! task fails the channel's waiting calls and reopens it on the same
//! connection.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use amqp_gateway::{
    broker::{self, ConnectError, Connected, Reconnect, StepError, bounded},
    wire,
};
use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, Consumer,
    message::Delivery,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{FieldTable, ShortString},
};
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use super::{Delivered, RoundTripError, Stats, pending::PendingTable};
use crate::{config::AmqpConfig, metrics::BrokerEvent};

/// A publisher channel and the calls waiting for replies on it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) channel: Channel,
    pub(crate) pending: Arc<PendingTable>,
    /// Cancelled when this channel can no longer deliver replies.
    closed: CancellationToken,
    /// Whether the broker has taken any publish on this channel.
    accepted_any: AtomicBool,
    /// Publishes the broker refused (nacked) while it took none.
    refused: AtomicUsize,
    /// Requests for this channel's task to publish.
    requests: mpsc::UnboundedSender<Publish>,
}

/// A request for a channel's task to publish ([`Slot::publish`]): built by
/// the call, which then waits for its outcome in the pending table.
#[derive(Debug)]
pub(crate) struct Publish {
    /// The call's correlation id, its key in the pending table.
    pub(crate) id: Uuid,
    /// Routing key.
    pub(crate) route: ShortString,
    pub(crate) payload: Bytes,
    pub(crate) properties: BasicProperties,
}

/// Refused publishes after which a channel that never had one accepted is
/// replaced.
///
/// RabbitMQ 3.10 can leave a channel opened while a quorum queue was electing
/// a new leader (a gateway reconnecting because its node died with the
/// queue's leader) refusing every publish to that queue for good, while
/// channels opened before or after the election work: see
/// `docs/cluster.md`. Only a channel that has never had a publish accepted
/// is replaced, so no call waits for a reply on it, and a queue that refuses
/// publishes for its own reasons (full, with `reject-publish`) costs at most
/// a new channel per this many refused calls.
const REFUSED_LIMIT: usize = 16;

impl Slot {
    /// Hands a request to the channel's task to publish. The call must be in
    /// the pending table already: that is where a refusal reaches it, and a
    /// request whose call has left it by the time its turn comes is not
    /// published at all.
    pub(crate) fn publish(&self, request: Publish) -> Result<(), RoundTripError> {
        self.requests.send(request).map_err(|_| RoundTripError::ConnectionLost)
    }

    /// True once the channel has failed; its waiting calls are failed too.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Records that the broker took a publish.
    pub(crate) fn accepted(&self) {
        if !self.accepted_any.load(Ordering::Relaxed) {
            self.accepted_any.store(true, Ordering::Relaxed);
        }
    }

    /// Records that the broker refused a publish. A channel that never had one
    /// accepted is closed after [`REFUSED_LIMIT`] refusals, so that its reply
    /// task opens a new one.
    pub(crate) fn refused(&self) {
        if self.accepted_any.load(Ordering::Relaxed) {
            return;
        }
        if self.refused.fetch_add(1, Ordering::Relaxed) + 1 == REFUSED_LIMIT {
            tracing::warn!(
                refused = REFUSED_LIMIT,
                "the broker refused every publish on this new channel; replacing the channel"
            );
            let channel = self.channel.clone();
            tokio::spawn(async move {
                let _ = bounded(channel.close(200, "replacing a channel the broker refuses publishes on".into())).await;
            });
        }
    }
}

/// A connected broker session.
#[derive(Debug)]
pub(crate) struct BrokerSession {
    connection: Connection,
    /// The node connected to, as `host:port`.
    node: String,
    /// Replaced one by one when the broker closes a channel; the lock is held
    /// only to clone or swap the `Arc`.
    slots: Vec<RwLock<Arc<Slot>>>,
    next: AtomicUsize,
    /// Cancelled when the session can no longer deliver replies.
    lost: CancellationToken,
}

/// Why a session could not be opened. Each step is bounded
/// ([`broker::bounded`]), so a broker that accepts TCP but never answers
/// cannot hang the supervisor.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("exchange {0:?} is not usable: {1}")]
    Exchange(String, #[source] StepError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{node}: {error}")]
    Step { node: String, error: StepError },
}

/// An open publisher channel's slot, with what its task works from.
struct Opened {
    slot: Arc<Slot>,
    consumer: Consumer,
    requests: mpsc::UnboundedReceiver<Publish>,
}

/// Opens one publisher channel: confirm mode, consuming Direct Reply-to.
async fn open_slot(connection: &Connection) -> Result<Opened, StepError> {
    let channel = bounded(connection.create_channel()).await?;
    bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
    let consumer = bounded(wire::consume_replies(&channel)).await?;
    let (sender, requests) = mpsc::unbounded_channel();
    let slot = Slot {
        channel,
        pending: Arc::new(PendingTable::default()),
        closed: CancellationToken::new(),
        accepted_any: AtomicBool::new(false),
        refused: AtomicUsize::new(0),
        requests: sender,
    };
    Ok(Opened { slot: Arc::new(slot), consumer, requests })
}

impl BrokerSession {
    /// Connects, opens `config.channels` publisher channels and starts their
    /// tasks on `tracker`.
    pub(crate) async fn open(
        config: &AmqpConfig,
        stats: &Arc<Stats>,
        tracker: &TaskTracker,
    ) -> Result<Arc<Self>, OpenError> {
        let Connected { connection, node } = config.broker.connect("grpc-amqp-gateway").await?;
        let node = node.node().to_owned();
        let on_node = |error| OpenError::Step { node: node.clone(), error };
        if !config.exchange.is_empty() {
            // Publishing to a missing exchange closes the channel: check once
            // here, so a typo fails the connection attempt with a clear error
            // instead of every call.
            let channel = bounded(connection.create_channel()).await.map_err(on_node)?;
            let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
            let declare = channel.exchange_declare(
                config.exchange.as_str().into(),
                lapin::ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            );
            bounded(declare).await.map_err(|e| OpenError::Exchange(config.exchange.clone(), e))?;
            let _ = channel.close(200, "exchange checked".into()).await;
        }

        let mut slots = Vec::with_capacity(config.channels);
        let mut opened = Vec::with_capacity(config.channels);
        for _ in 0..config.channels {
            let slot = open_slot(&connection).await.map_err(on_node)?;
            slots.push(RwLock::new(slot.slot.clone()));
            opened.push(slot);
        }
        let session =
            Arc::new(Self { connection, node, slots, next: AtomicUsize::new(0), lost: CancellationToken::new() });
        let exchange = ShortString::from(config.exchange.clone());
        for (index, slot) in opened.into_iter().enumerate() {
            let task =
                serve_slot(session.clone(), index, slot, exchange.clone(), stats.clone(), config.max_reply_bytes);
            tracker.spawn(task.instrument(tracing::info_span!("channel", channel = index)));
        }
        tracker.spawn(watch_connection(session.clone()).instrument(tracing::info_span!("connection-events")));
        Ok(session)
    }

    /// The node connected to, as `host:port`.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The next publisher channel, round robin.
    pub(crate) fn slot(&self) -> Arc<Slot> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].read().clone()
    }

    /// Calls waiting for a reply in this session.
    pub(crate) fn pending(&self) -> usize {
        self.slots.iter().map(|s| s.read().pending.len()).sum()
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
        self.slots.iter().map(|s| s.read().pending.fail_all(|| RoundTripError::ConnectionLost)).sum()
    }

    /// Closes the connection cleanly, within a bound.
    pub(crate) async fn close(&self) {
        self.lost.cancel();
        match bounded(self.connection.close(200, "gateway shutting down".into())).await {
            Ok(()) => tracing::info!("AMQP connection closed"),
            Err(StepError::Timeout(_)) => tracing::warn!("AMQP connection close timed out"),
            Err(error) => tracing::debug!(%error, "AMQP connection close failed (already closed?)"),
        }
    }
}

/// Serves one channel slot for the life of the session: publishes its
/// requests and matches replies to their calls, and when the broker closes
/// the channel while the connection stays up, fails the channel's waiting
/// calls (their replies cannot arrive) and reopens it. A failed connection
/// ends the session instead.
async fn serve_slot(
    session: Arc<BrokerSession>,
    index: usize,
    mut opened: Opened,
    exchange: ShortString,
    stats: Arc<Stats>,
    max_reply: usize,
) {
    loop {
        let slot = opened.slot.clone();
        let reason = serve_channel(&mut opened, &exchange, &stats, max_reply, &session.lost).await;
        slot.closed.cancel();
        let failed = slot.pending.fail_all(|| RoundTripError::ConnectionLost);
        if session.is_lost() {
            return;
        }
        tracing::warn!(%reason, failed, "channel closed; reopening it");
        let mut reopen = Reconnect::new();
        opened = loop {
            if !session.connection.status().connected() {
                session.lost.cancel();
                return;
            }
            match open_slot(&session.connection).await {
                Ok(opened) => break opened,
                Err(error) => {
                    let delay = reopen.failed();
                    tracing::warn!(%error, retry_in = ?delay, "cannot reopen the channel");
                    if !broker::sleep_or_stop(delay, &session.lost).await {
                        return;
                    }
                }
            }
        };
        *session.slots[index].write() = opened.slot.clone();
        stats.count(BrokerEvent::ChannelRecovered);
        tracing::info!("channel reopened");
    }
}

/// Publishes the channel's requests and matches replies to their calls until
/// the consumer ends or the session is lost; returns why it stopped.
/// Publishes still unconfirmed then are dropped with the channel; their calls
/// are failed by the caller.
async fn serve_channel(
    opened: &mut Opened,
    exchange: &ShortString,
    stats: &Stats,
    max_reply: usize,
    lost: &CancellationToken,
) -> String {
    let Opened { slot, consumer, requests } = opened;
    let slot = &**slot;
    let mut publishing = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            () = lost.cancelled() => return "session lost".into(),
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => dispatch(delivery, &slot.pending, stats, max_reply),
                Some(Err(error)) => return error.to_string(),
                None => return "the reply consumer ended".into(),
            },
            Some((id, outcome)) = publishing.next(), if !publishing.is_empty() => {
                settle(slot, stats, id, outcome);
            }
            Some(request) = requests.recv() => {
                // A call that already ended (deadline, cancelled, failed)
                // is not published: no worker is to spend time on it.
                if slot.pending.is_waiting(&request.id) {
                    publishing.push(publish(&slot.channel, exchange, request));
                }
            }
        }
    }
}

/// Publishes one request and awaits the broker's confirm.
async fn publish(channel: &Channel, exchange: &ShortString, request: Publish) -> (Uuid, lapin::Result<Confirmation>) {
    let Publish { id, route, payload, properties } = request;
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let outcome = match channel.basic_publish(exchange.clone(), route, options, &payload, properties).await {
        Ok(confirm) => confirm.await,
        Err(error) => Err(error),
    };
    (id, outcome)
}

/// Acts on the broker's answer to a publish: a refused, returned or failed
/// publish fails its call (a returned one by the correlation id it carries,
/// since the broker may coalesce confirms).
fn settle(slot: &Slot, stats: &Stats, id: Uuid, outcome: lapin::Result<Confirmation>) {
    let (id, error) = match outcome {
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {
            slot.accepted();
            return;
        }
        Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
            stats.count(BrokerEvent::Unroutable);
            let returned_id =
                returned.properties.correlation_id().as_ref().and_then(|s| Uuid::try_parse(s.as_str()).ok());
            let Some(returned_id) = returned_id else { return };
            (returned_id, RoundTripError::Unroutable { route: returned.routing_key.to_string() })
        }
        Ok(Confirmation::Nack(None)) => {
            stats.count(BrokerEvent::Nack);
            slot.refused();
            (id, RoundTripError::Nacked)
        }
        Err(error) => (id, RoundTripError::Publish(Arc::new(error))),
    };
    slot.pending.complete(&id, Err(error));
}

fn dispatch(delivery: Delivery, pending: &PendingTable, stats: &Stats, max_reply: usize) {
    let properties = delivery.properties;
    let id = properties.correlation_id().as_ref().and_then(|id| Uuid::try_parse(id.as_str()).ok());
    let size = delivery.data.len();
    if size > max_reply {
        // lapin hands over a delivery only once its whole body is in memory,
        // so the gateway cannot refuse it sooner; it frees the body here, at
        // once, instead of holding it until the caller has read it.
        drop(delivery.data);
        stats.count(BrokerEvent::ReplyTooLarge);
        let failed =
            id.is_some_and(|id| pending.complete(&id, Err(RoundTripError::ReplyTooLarge { size, limit: max_reply })));
        tracing::warn!(
            correlation_id = ?properties.correlation_id(),
            size,
            limit = max_reply,
            failed,
            "dropped a reply over the reply limit"
        );
        return;
    }
    // The frame guard replaced headers lapin could not safely parse: the
    // reply fails its own call, and nothing else.
    let outcome = match wire::headers_rejected(properties.headers().as_ref()) {
        Some(reason) => {
            stats.count(BrokerEvent::RejectedHeaders);
            tracing::warn!(%reason, "a reply's headers were rejected on arrival; failing its call");
            Err(RoundTripError::ReplyRejected(reason.to_owned()))
        }
        None => Ok(Delivered {
            payload: delivery.data,
            content_type: properties.content_type().as_ref().map(|c| c.as_str().to_owned()),
            headers: properties.headers().clone(),
        }),
    };
    let delivered = id.is_some_and(|id| pending.complete(&id, outcome));
    if !delivered {
        stats.count(BrokerEvent::UnknownReply);
        tracing::debug!(correlation_id = ?properties.correlation_id(), "dropped reply for an unknown or finished call");
    }
}

/// Marks the session lost on a connection error, in case no channel task
/// notices first. lapin reports channel errors as events too: those leave the
/// connection up and are the channel tasks' to handle.
async fn watch_connection(session: Arc<BrokerSession>) {
    let mut events = std::pin::pin!(session.connection.events_listener());
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) if !session.connection.status().connected() => {
                    tracing::warn!(%error, "AMQP connection error");
                    break;
                }
                Some(lapin::Event::Error(error)) => tracing::debug!(%error, "AMQP channel error"),
                Some(_) => {}
                None => break,
            },
            () = session.lost.cancelled() => return,
        }
    }
    session.lost.cancel();
}
