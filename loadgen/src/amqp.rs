//! The raw modes: the same request/reply straight to the broker with lapin,
//! to the same worker, with no gateway in between. They are the baselines the
//! gateway is compared with.
//!
//! - `raw-amqp` ([`Flavor::Contract`]) publishes exactly what the gateway
//!   publishes per call (the properties from the same
//!   `amqp_gateway::wire::request_properties`, the rest as in
//!   `gateway/src/amqp/mod.rs`): default exchange, routing key = route, `mandatory`, on a channel
//!   in confirm mode with the confirm awaited; `correlation_id` =
//!   `message_id` = a fresh UUID, `reply_to` = Direct Reply-to, `timestamp`,
//!   `expiration` = the deadline in ms, and headers `x-deadline` and a W3C
//!   `traceparent` shaped like the one the gateway injects.
//! - `raw-bare` ([`Flavor::Bare`]) is the RabbitMQ tutorial's request: only
//!   `reply_to` and `correlation_id`, no confirms, not mandatory, no headers.
//!   It is the broker's round trip with nothing added.
//!
//! Both use one connection with K channels, each consuming
//! `amq.rabbitmq.reply-to` (no-ack) before it publishes, and a pending map per
//! channel from correlation id to the waiting call, as the gateway does.
//! Calls take channels round robin.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use amqp_gateway::wire::{self, DIRECT_REPLY_TO};
use bytes::Bytes;
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use parking_lot::Mutex;
use tokio::{sync::oneshot, task::JoinSet};
use tonic::Code;
use uuid::Uuid;

use crate::driver::{Caller, Failure};

/// Bound on connecting and on each set-up step.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a raw client publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Exactly the gateway's request (`raw-amqp`).
    Contract,
    /// The tutorial's bare request (`raw-bare`).
    Bare,
}

/// Setting up the raw client failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RawError {
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

async fn bounded<T>(step: impl Future<Output = lapin::Result<T>>) -> Result<T, RawError> {
    tokio::time::timeout(SETUP_TIMEOUT, step).await.map_err(|_| RawError::Timeout(SETUP_TIMEOUT))?.map_err(Into::into)
}

/// What a waiting call is told: the reply's payload length, or its failure.
type Waiter = oneshot::Sender<Result<usize, Failure>>;

/// A channel and the calls waiting for replies on it.
struct Slot {
    channel: Channel,
    pending: Mutex<HashMap<Uuid, Waiter>>,
}

/// One connection, K channels and their reply tasks.
pub(crate) struct RawClient {
    connection: Connection,
    slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
    flavor: Flavor,
    replies: Mutex<JoinSet<()>>,
}

impl RawClient {
    /// Connects to `url` and opens `channels` channels (confirm mode for
    /// [`Flavor::Contract`]), each consuming Direct Reply-to.
    pub(crate) async fn connect(url: &str, channels: usize, flavor: Flavor) -> Result<Arc<Self>, RawError> {
        let properties = ConnectionProperties::default().with_connection_name("loadgen".into());
        let connection = bounded(Connection::connect(url, properties)).await?;
        let mut slots = Vec::new();
        let mut replies = JoinSet::new();
        for _ in 0..channels.max(1) {
            let channel = bounded(connection.create_channel()).await?;
            if flavor == Flavor::Contract {
                bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
            }
            let consumer = bounded(wire::consume_replies(&channel)).await?;
            let slot = Arc::new(Slot { channel, pending: Mutex::new(HashMap::new()) });
            replies.spawn(route_replies(slot.clone(), consumer));
            slots.push(slot);
        }
        Ok(Arc::new(Self { connection, slots, next: AtomicUsize::new(0), flavor, replies: Mutex::new(replies) }))
    }

    /// `concurrency` callers sharing this client.
    pub(crate) fn callers(
        self: &Arc<Self>,
        concurrency: usize,
        route: &str,
        payload: &Bytes,
        deadline: Duration,
    ) -> Vec<RawCaller> {
        (0..concurrency)
            .map(|_| RawCaller {
                client: self.clone(),
                route: ShortString::from(route.to_owned()),
                payload: payload.clone(),
                deadline,
            })
            .collect()
    }

    /// Closes the connection (bounded) and ends the reply tasks.
    pub(crate) async fn close(&self) {
        let _ = tokio::time::timeout(SETUP_TIMEOUT, self.connection.close(200, "loadgen done".into())).await;
        let mut replies = std::mem::take(&mut *self.replies.lock());
        replies.abort_all();
        while replies.join_next().await.is_some() {}
    }

    fn slot(&self) -> &Arc<Slot> {
        &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()]
    }

    fn properties(&self, id: &ShortString, deadline: Duration) -> BasicProperties {
        if self.flavor == Flavor::Bare {
            return BasicProperties::default().with_correlation_id(id.clone()).with_reply_to(DIRECT_REPLY_TO.into());
        }
        // What the gateway publishes, with no caller headers and the trace
        // context its propagator injects for a call that starts a trace.
        let mut headers = FieldTable::default();
        headers.insert(wire::TRACEPARENT_HEADER.into(), wire::long_string(traceparent()));
        wire::request_properties(id.clone(), headers, deadline, None)
    }
}

/// A sampled W3C `traceparent` with fresh random ids, as the gateway's
/// propagator writes for a call that starts a trace.
fn traceparent() -> String {
    format!("00-{:032x}-{:016x}-01", rand::random::<u128>() | 1, rand::random::<u64>() | 1)
}

/// Hands each reply on a channel to its waiting call until the consumer ends;
/// then drops every waiter, so their calls fail at once.
async fn route_replies(slot: Arc<Slot>, mut consumer: Consumer) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let properties = &delivery.properties;
        let id = properties.correlation_id().as_ref().and_then(|id| Uuid::try_parse(id.as_str()).ok());
        let Some(waiter) = id.and_then(|id| slot.pending.lock().remove(&id)) else {
            continue; // a call that already gave up
        };
        let (code, message) = wire::decode_status(properties.headers().as_ref());
        let outcome =
            if code == Code::Ok { Ok(delivery.data.len()) } else { Err(Failure::new(wire::code_name(code), message)) };
        let _ = waiter.send(outcome);
    }
    slot.pending.lock().clear();
}

/// Removes a call's pending entry however the call ends.
struct PendingGuard<'a> {
    slot: &'a Slot,
    id: Uuid,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.slot.pending.lock().remove(&self.id);
    }
}

/// One caller of a raw client.
pub(crate) struct RawCaller {
    client: Arc<RawClient>,
    route: ShortString,
    payload: Bytes,
    deadline: Duration,
}

impl RawCaller {
    async fn round_trip(
        &self,
        slot: &Slot,
        id: Uuid,
        reply: oneshot::Receiver<Result<usize, Failure>>,
    ) -> Result<(), Failure> {
        let unavailable = |e: lapin::Error| Failure::new(wire::code_name(Code::Unavailable), e.to_string());
        let contract = self.client.flavor == Flavor::Contract;
        let properties = self.client.properties(&ShortString::from(id.hyphenated().to_string()), self.deadline);
        let options = BasicPublishOptions { mandatory: contract, ..BasicPublishOptions::default() };
        let confirm = slot
            .channel
            .basic_publish("".into(), self.route.clone(), options, &self.payload, properties)
            .await
            .map_err(unavailable)?;
        // Without confirm mode this resolves at once to `NotRequested`. A
        // confirm dropped unresolved at the deadline stays in lapin until the
        // channel closes (the gateway's channel task awaits every confirm): a few
        // bytes each, for a process that lives one run.
        match confirm.await.map_err(unavailable)? {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                return Err(Failure::new(
                    wire::code_name(Code::Unavailable),
                    "unroutable: no queue bound to the route",
                ));
            }
            Confirmation::Nack(None) => return Err(Failure::new(wire::code_name(Code::Unavailable), "broker nacked")),
        }
        let len = reply.await.map_err(|_| Failure::new(wire::code_name(Code::Unavailable), "connection lost"))??;
        if len != self.payload.len() {
            return Err(Failure::new("BAD_REPLY", format!("{len} bytes back for {} sent", self.payload.len())));
        }
        Ok(())
    }
}

impl Caller for RawCaller {
    async fn call(&mut self) -> Result<(), Failure> {
        let slot = self.client.slot().clone();
        let id = Uuid::new_v4();
        let (waiter, reply) = oneshot::channel();
        slot.pending.lock().insert(id, waiter);
        let _guard = PendingGuard { slot: &slot, id };
        match tokio::time::timeout(self.deadline, self.round_trip(&slot, id, reply)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::new(wire::code_name(Code::DeadlineExceeded), "no reply within the deadline")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let t = traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4, "{t}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));
        assert!(parts[1..3].iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
