//! The delivery loop of one channel: take deliveries up to the prefetch
//! count, hand each to its own tracked task, and on shutdown drain: stop
//! deliveries, let the requests in flight finish within the grace period,
//! give back the rest.

use amqp_gateway::broker;
use futures::StreamExt;
use lapin::{Channel, Consumer, options::BasicCancelOptions};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Service;
use tracing::Instrument;

use crate::{
    Request, Response, Status,
    delivery::{self, Handling},
    supervisor::Supervisor,
};

/// Why a subscription stopped.
pub(crate) enum Stopped {
    /// Shutdown was asked for; requests in flight were drained.
    Shutdown,
    /// The channel or the connection failed (the reason, for the log).
    Lost(String),
}

/// One channel consuming the route's queue, set up by
/// [`crate::queue::subscribe`].
pub(crate) struct Subscription {
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
}

impl Subscription {
    /// Serves deliveries until shutdown or until the channel fails, then
    /// closes the channel; the connection is the supervisor's. (`&mut` for
    /// the reason given at `Supervisor::serve_connection`.)
    pub(crate) async fn serve<S>(mut self, worker: &mut Supervisor<S>) -> Stopped
    where
        S: Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let config = &worker.config;
        let tracker = TaskTracker::new();
        let handling = Handling {
            channel: self.channel.clone(),
            handler: worker.handler.clone(),
            stats: worker.stats.clone(),
            abort: CancellationToken::new(),
            max_body: config.max_body_bytes,
            addresses: worker.addresses.clone(),
            broker: config.broker.clone(),
        };
        let stopped = loop {
            let delivery = tokio::select! {
                biased;
                () = worker.shutdown.cancelled() => break Stopped::Shutdown,
                delivery = self.consumer.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let span = delivery::consumer_span(&delivery, &config.queue);
                    tracker.spawn(handling.clone().handle(delivery).instrument(span));
                }
                Some(Err(error)) => break Stopped::Lost(error.to_string()),
                None => break Stopped::Lost("the broker cancelled the consumer".into()),
            }
        };
        tracker.close();

        if matches!(stopped, Stopped::Shutdown) {
            // Stop deliveries first; requests already prefetched but not
            // started stay unacked and go back to the queue on close.
            let cancel = self.channel.basic_cancel(self.consumer.tag(), BasicCancelOptions::default());
            if let Err(error) = broker::bounded(cancel).await {
                tracing::warn!(%error, "cancelling the consumer failed");
            }
            tracing::info!(in_flight = tracker.len(), grace = ?config.shutdown_grace, "draining requests in flight");
            if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
                tracing::warn!(
                    unfinished = tracker.len(),
                    "grace period over: unfinished requests go back to the queue"
                );
            }
        }
        // Whatever is still running stops now; its requests were not acked
        // and go back to the queue when the channel closes.
        handling.abort.cancel();
        let _ = tokio::time::timeout(broker::STEP_TIMEOUT, tracker.wait()).await;
        // Closing the channel returns what it still holds to the queue.
        if let Err(error) = broker::bounded(self.channel.close(200, "consumer stopped".into())).await {
            tracing::debug!(%error, "closing the channel failed (already closed?)");
        }
        stopped
    }
}
