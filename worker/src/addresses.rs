//! Reply addresses that break the connection they are published on, found
//! and then answered no more.
//!
//! RabbitMQ 3.10 cannot route a reply to a Direct Reply-to address whose
//! channel was on a node that has died, and instead of dropping the reply it
//! crashes the replying channel, closing the worker's whole connection: every
//! request that connection held is delivered again, and the next reply to
//! that address does the same (`docs/cluster.md`). Which of the replies in
//! flight did it cannot be told from the outside, so:
//!
//! 1. when a reply fails, its address becomes *suspect*: every reply in
//!    flight on a broken connection fails, so the culprit is among them;
//! 2. a reply to a suspect address is published alone, on a connection of
//!    its own ([`crate::reply::publish_alone`]), one at a time: if the broker
//!    confirms it, the address is cleared; if the broker closes that
//!    connection on it with `INTERNAL_ERROR`, the address is *dead*; any
//!    other failure teaches nothing, and the request is left for redelivery;
//! 3. a request whose address is dead is acknowledged without a reply, for
//!    [`DEAD_FOR`]: nobody can receive it, and replying would only break the
//!    connection again.
//!
//! So a dead node's callers cost a worker one broken connection, not one per
//! delivery until their requests expire. State lives as long as the worker,
//! across reconnections.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use lapin::types::ShortString;
use parking_lot::Mutex;

/// How long an address found dead is not answered.
pub(crate) const DEAD_FOR: Duration = Duration::from_secs(600);

/// Dead addresses remembered at most (the oldest are forgotten first).
const DEAD_MAX: usize = 4096;

/// What to do with a reply to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Publish it on the request's channel, as always.
    Publish,
    /// Publish it alone, on a connection of its own.
    Probe,
    /// Do not publish it: acknowledge the request without a reply.
    Dead,
}

/// The worker's knowledge about reply addresses; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct ReplyAddresses {
    state: Mutex<State>,
    /// Held while a probe is published, so probes go one at a time.
    probing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    suspect: HashSet<ShortString>,
    dead: HashMap<ShortString, Instant>,
}

impl ReplyAddresses {
    /// How to publish a reply to `address` now.
    pub(crate) fn verdict(&self, address: &ShortString) -> Verdict {
        let mut state = self.state.lock();
        match state.dead.get(address) {
            Some(since) if since.elapsed() < DEAD_FOR => return Verdict::Dead,
            Some(_) => {
                state.dead.remove(address);
            }
            None => {}
        }
        if state.suspect.contains(address) { Verdict::Probe } else { Verdict::Publish }
    }

    /// A reply to `address` failed: the address is suspect.
    pub(crate) fn reply_failed(&self, address: &ShortString) {
        self.state.lock().suspect.insert(address.clone());
    }

    /// Waits for the turn to publish a probe; probes go one at a time.
    pub(crate) async fn probe_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.probing.lock().await
    }

    /// Records a probe's result: confirmed clears the address, broken marks
    /// it dead.
    pub(crate) fn probed(&self, address: &ShortString, confirmed: bool) {
        let mut state = self.state.lock();
        state.suspect.remove(address);
        if !confirmed {
            if state.dead.len() >= DEAD_MAX {
                let oldest = state.dead.iter().min_by_key(|(_, since)| **since).map(|(a, _)| a.clone());
                if let Some(oldest) = oldest {
                    state.dead.remove(&oldest);
                }
            }
            state.dead.insert(address.clone(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_makes_the_addresses_in_flight_suspect_and_a_probe_decides() {
        let addresses = ReplyAddresses::default();
        let (dead, alive, idle): (ShortString, ShortString, ShortString) = ("a".into(), "b".into(), "c".into());
        // A broken connection fails every reply in flight on it.
        addresses.reply_failed(&dead);
        addresses.reply_failed(&alive);
        assert_eq!(addresses.verdict(&dead), Verdict::Probe);
        assert_eq!(addresses.verdict(&alive), Verdict::Probe);
        assert_eq!(addresses.verdict(&idle), Verdict::Publish, "not in flight when it failed");
        addresses.probed(&alive, true);
        addresses.probed(&dead, false);
        assert_eq!(addresses.verdict(&alive), Verdict::Publish);
        assert_eq!(addresses.verdict(&dead), Verdict::Dead);
    }

    #[test]
    fn dead_addresses_are_bounded() {
        let addresses = ReplyAddresses::default();
        for i in 0..DEAD_MAX + 10 {
            addresses.probed(&ShortString::from(format!("address {i}")), false);
        }
        assert_eq!(addresses.state.lock().dead.len(), DEAD_MAX);
    }
}
