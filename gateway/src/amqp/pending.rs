//! The pending-request table: calls published and waiting for their reply.
//!
//! One table per publisher channel (direct reply-to delivers a reply on the
//! channel that published the request), keyed by correlation id. An entry is
//! owned by a [`PendingGuard`] held by the waiting call: the guard removes the
//! entry when it is dropped, so a reply, a deadline, the caller cancelling
//! (tonic drops the handler future) and any error all clean up the same way,
//! by construction.
//!
//! The lock is a plain mutex held only for a hash-map operation, never across
//! an `.await`; with one table per channel it is contended only by that
//! channel's task and the calls waiting on it.

use std::{collections::HashMap, sync::Arc};

use metrics::Gauge;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Delivered, RoundTripError};

type Waiter = oneshot::Sender<Result<Delivered, RoundTripError>>;

/// Calls waiting for a reply on one channel.
#[derive(Debug)]
pub(crate) struct PendingTable {
    entries: Mutex<HashMap<Uuid, Waiter>>,
    /// `gateway_pending_calls`, summed over every table.
    gauge: Gauge,
}

impl Default for PendingTable {
    fn default() -> Self {
        Self { entries: Mutex::default(), gauge: crate::metrics::pending_gauge() }
    }
}

impl PendingTable {
    /// Registers a call; the returned guard removes it again when dropped.
    pub(crate) fn insert(
        self: &Arc<Self>,
        id: Uuid,
    ) -> (PendingGuard, oneshot::Receiver<Result<Delivered, RoundTripError>>) {
        let (tx, rx) = oneshot::channel();
        self.entries.lock().insert(id, tx);
        self.gauge.increment(1.0);
        (PendingGuard { table: self.clone(), id }, rx)
    }

    /// Hands a reply to its waiting call. False when no call waits for `id`
    /// (it already ended: deadline, cancellation, or a stranger's reply).
    pub(crate) fn complete(&self, id: &Uuid, outcome: Result<Delivered, RoundTripError>) -> bool {
        let waiter = self.remove(id);
        match waiter {
            // A closed receiver means the call ended between our lookup and now.
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }

    /// Fails every waiting call, for example when the channel is gone and no
    /// reply can arrive any more. Returns how many were failed.
    pub(crate) fn fail_all(&self, error: impl Fn() -> RoundTripError) -> usize {
        let drained: Vec<Waiter> = self.entries.lock().drain().map(|(_, tx)| tx).collect();
        let n = drained.len();
        self.gauge.decrement(n as f64);
        for tx in drained {
            let _ = tx.send(Err(error()));
        }
        n
    }

    /// Whether a call waits for `id`.
    pub(crate) fn is_waiting(&self, id: &Uuid) -> bool {
        self.entries.lock().contains_key(id)
    }

    fn remove(&self, id: &Uuid) -> Option<Waiter> {
        let waiter = self.entries.lock().remove(id);
        if waiter.is_some() {
            self.gauge.decrement(1.0);
        }
        waiter
    }

    /// Calls waiting now.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

/// Owns one entry of a [`PendingTable`]; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct PendingGuard {
    table: Arc<PendingTable>,
    id: Uuid,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.table.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Delivered {
        Delivered { payload: Vec::new(), content_type: None, headers: None }
    }

    #[tokio::test]
    async fn reply_reaches_its_waiter_and_frees_the_entry() {
        let table = Arc::new(PendingTable::default());
        let id = Uuid::new_v4();
        let (guard, rx) = table.insert(id);
        assert_eq!(table.len(), 1);
        assert!(table.complete(&id, Ok(reply())));
        assert!(rx.await.unwrap().is_ok());
        assert_eq!(table.len(), 0);
        drop(guard);
        assert!(!table.complete(&id, Ok(reply())), "a second reply is unknown");
    }

    #[test]
    fn dropping_the_guard_removes_the_entry() {
        let table = Arc::new(PendingTable::default());
        let id = Uuid::new_v4();
        let (guard, _rx) = table.insert(id);
        drop(guard);
        assert_eq!(table.len(), 0);
        assert!(!table.complete(&id, Ok(reply())), "late reply is unknown");
    }

    #[tokio::test]
    async fn fail_all_fails_everyone() {
        let table = Arc::new(PendingTable::default());
        let waiters: Vec<_> = (0..3).map(|_| table.insert(Uuid::new_v4())).collect();
        assert_eq!(table.fail_all(|| RoundTripError::ConnectionLost), 3);
        assert_eq!(table.len(), 0);
        for (_guard, rx) in waiters {
            assert!(matches!(rx.await.unwrap(), Err(RoundTripError::ConnectionLost)));
        }
    }
}
