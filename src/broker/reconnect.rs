//! Pacing for reconnect loops: how long to wait after each failure, and
//! whether a success is a recovery.
//!
//! A loop that keeps a connection (or a channel) alive reads:
//!
//! ```ignore
//! let mut reconnect = Reconnect::new();
//! loop {
//!     match open().await {
//!         Ok(session) => {
//!             if reconnect.connected() { stats.recovered(); }
//!             serve(session).await; // until it is lost
//!         }
//!         Err(error) if error.is_permanent() => return Err(error),
//!         Err(error) => tracing::warn!(%error, "cannot connect"),
//!     }
//!     if !sleep_or_stop(reconnect.failed(), &shutdown).await { return Ok(()) }
//! }
//! ```

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The delay before reconnect attempt `attempt` (0-based): exponential from
/// 100 ms, capped at 5 s, with jitter over the upper half of each step so many
/// processes do not reconnect in lockstep after a broker restart.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let ceiling = BACKOFF_INITIAL.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The state of one reconnect loop: failures since the last success, and
/// whether there has been a success at all.
#[derive(Debug, Default)]
pub struct Reconnect {
    failures: u32,
    connected_before: bool,
}

impl Reconnect {
    /// A loop that has not connected yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a success, so the next failure waits the shortest delay again.
    /// Returns true when this is a recovery (a success came before), for
    /// counting reconnections.
    pub fn connected(&mut self) -> bool {
        self.failures = 0;
        std::mem::replace(&mut self.connected_before, true)
    }

    /// Records a failure (or the loss of what was connected) and returns how
    /// long to wait before the next attempt: [`backoff`], jittered.
    pub fn failed(&mut self) -> Duration {
        let delay = backoff(self.failures, rand::random());
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// Sleeps for `delay` unless `stop` is cancelled first. Returns true when the
/// whole delay passed, false when the loop should stop.
pub async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(40, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(40, 0.0), BACKOFF_MAX / 2);
    }

    #[test]
    fn delays_grow_until_a_success_and_restart_after_it() {
        let mut reconnect = Reconnect::new();
        let first: Vec<Duration> = (0..4).map(|_| reconnect.failed()).collect();
        for (attempt, delay) in (0u32..).zip(&first) {
            assert!(*delay >= backoff(attempt, 0.0) && *delay <= backoff(attempt, 1.0), "{attempt}: {delay:?}");
        }
        assert!(!reconnect.connected(), "the first success is no recovery");
        assert!(reconnect.failed() <= backoff(0, 1.0), "a success resets the delay");
        assert!(reconnect.connected(), "a success after a success is a recovery");
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_stops_when_cancelled() {
        let stop = CancellationToken::new();
        assert!(sleep_or_stop(Duration::from_secs(1), &stop).await);
        stop.cancel();
        assert!(!sleep_or_stop(Duration::from_secs(3600), &stop).await);
    }
}
