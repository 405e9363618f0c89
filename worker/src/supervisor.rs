//! Supervision: [`spawn`] starts the worker's task, which keeps one broker
//! connection and one consuming channel alive until shutdown.
//!
//! Two nested reconnect loops, paced by [`Reconnect`]: the outer one
//! reconnects when the connection is lost; the inner one reopens the channel
//! on the same connection when the broker closes only the channel (the queue
//! was deleted, a channel error). A refusal that retrying cannot fix (see
//! [`broker::is_permanent`]) ends both, and [`RunningWorker::wait`] returns it.

use std::{sync::Arc, time::Duration};

use amqp_gateway::broker::{self, Connected, Reconnect};
use lapin::Connection;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::Instrument;

use crate::{
    Request, Response, Status, WorkerConfig,
    consume::Stopped,
    error::{SetupError, WorkerError},
    queue,
    stats::Stats,
};

/// The connection name the broker's management UI shows.
const CONNECTION_NAME: &str = "grpc-amqp-worker";

/// A running worker.
#[derive(Debug)]
pub struct RunningWorker {
    consuming: watch::Receiver<bool>,
    stats: Arc<Stats>,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Waits until the worker consumes its queue (it has declared it), or
    /// `timeout` passes, or the worker stops; returns whether it is consuming.
    pub async fn consuming(&self, timeout: Duration) -> bool {
        let mut consuming = self.consuming.clone();
        // The sender goes with the task: a stopped worker answers false at once.
        tokio::time::timeout(timeout, consuming.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Waits until the worker has stopped: `Ok` after shutdown, an error when
    /// its configuration was invalid or the broker refused it for good.
    pub async fn wait(self) -> Result<(), WorkerError> {
        self.task.await?
    }
}

/// Starts a worker that serves `config.queue` with `handler` until `shutdown`
/// is cancelled, then stops taking requests, lets those in flight finish
/// within the grace period, and closes the connection; unfinished requests go
/// back to the queue.
///
/// The configuration is [validated](WorkerConfig::validate) first: an invalid
/// one stops the worker at once with [`WorkerError::Config`].
///
/// The handler is cloned for each request, so up to `prefetch` requests run
/// at once.
pub fn spawn<S>(config: WorkerConfig, handler: S, shutdown: CancellationToken) -> RunningWorker
where
    S: Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (consuming_tx, consuming) = watch::channel(false);
    let stats = Arc::new(Stats::new(&config.queue));
    let span = tracing::info_span!("worker", queue = %config.queue);
    let addresses = Arc::default();
    let supervisor = Supervisor { config, handler, shutdown, stats: stats.clone(), consuming: consuming_tx, addresses };
    let task = tokio::spawn(supervisor.run().instrument(span));
    RunningWorker { consuming, stats, task }
}

/// What the worker's task owns; the consuming loop reads it too.
pub(crate) struct Supervisor<S> {
    pub(crate) config: WorkerConfig,
    pub(crate) handler: S,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stats: Arc<Stats>,
    /// Whether a channel consumes the queue now, for [`RunningWorker::consuming`].
    consuming: watch::Sender<bool>,
    /// What is known about reply addresses, kept across reconnections.
    pub(crate) addresses: Arc<crate::addresses::ReplyAddresses>,
}

impl<S> Supervisor<S>
where
    S: Service<Request, Response = Response, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// The connection loop: connect, serve until the connection is lost,
    /// reconnect; until shutdown or a permanent refusal.
    async fn run(mut self) -> Result<(), WorkerError> {
        self.config.validate()?;
        let mut reconnect = Reconnect::new();
        loop {
            let connected = tokio::select! {
                connected = self.config.broker.connect(CONNECTION_NAME) => connected,
                () = self.shutdown.cancelled() => return Ok(()),
            };
            match connected {
                Ok(Connected { connection, node }) => {
                    let node = node.node().to_owned();
                    if reconnect.connected() {
                        self.stats.reconnected();
                    }
                    self.stats.broker_node(self.config.broker.nodes(), Some(&node));
                    let served = self.serve_connection(&connection, &node).await;
                    self.stats.broker_node(self.config.broker.nodes(), None);
                    match served {
                        Ok(Stopped::Lost(reason)) => {
                            tracing::warn!(%node, %reason, "broker connection lost; reconnecting to the next node");
                        }
                        Ok(Stopped::Shutdown) => {
                            close(&connection, "worker shutting down").await;
                            return Ok(());
                        }
                        Err(refused) => {
                            close(&connection, "worker refused by the broker").await;
                            return Err(WorkerError::Refused(refused));
                        }
                    }
                }
                Err(error) if error.is_permanent() => {
                    let (node, error) = error.into_last();
                    return Err(WorkerError::Refused(SetupError::new(format_args!("connecting to {node}"), error)));
                }
                Err(error) => tracing::warn!(%error, "cannot connect to the broker"),
            }
            let delay = reconnect.failed();
            tracing::debug!(retry_in = ?delay, "waiting before reconnecting");
            if !broker::sleep_or_stop(delay, &self.shutdown).await {
                return Ok(());
            }
        }
    }

    /// The channel loop: consumes on `connection` until shutdown or until the
    /// connection fails, reopening the channel (and declaring the queue
    /// again) when the broker closes only the channel. A permanent refusal is
    /// returned as the error.
    ///
    /// `&mut self` although it only reads: a shared reference held across an
    /// await would need the handler to be `Sync`, which handlers need not be.
    async fn serve_connection(&mut self, connection: &Connection, node: &str) -> Result<Stopped, SetupError> {
        let mut reopen = Reconnect::new();
        loop {
            match queue::subscribe(&self.config, connection).await {
                Ok(subscription) => {
                    if reopen.connected() {
                        self.stats.channel_recovered();
                    }
                    tracing::info!(%node, prefetch = self.config.prefetch, "consuming");
                    self.consuming.send_replace(true);
                    let stopped = subscription.serve(self).await;
                    self.consuming.send_replace(false);
                    match stopped {
                        Stopped::Lost(reason) if connection.status().connected() => {
                            tracing::warn!(%reason, "channel closed; reopening it");
                        }
                        stopped => return Ok(stopped),
                    }
                }
                Err(refused) if refused.is_permanent() => return Err(refused),
                Err(error) if !connection.status().connected() => return Ok(Stopped::Lost(error.to_string())),
                Err(error) => tracing::warn!(%error, "cannot set up the queue's channel"),
            }
            if !broker::sleep_or_stop(reopen.failed(), &self.shutdown).await {
                return Ok(Stopped::Shutdown);
            }
        }
    }
}

/// Closes the connection, within a bound; a connection already gone is fine.
async fn close(connection: &Connection, reason: &str) {
    match broker::bounded(connection.close(200, reason.into())).await {
        Ok(()) => tracing::info!("AMQP connection closed"),
        Err(error) => tracing::debug!(%error, "closing the connection failed"),
    }
}
