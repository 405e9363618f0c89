//! The load loop every mode shares: C callers, each making one call after the
//! other (closed loop: a caller waits for its answer before the next call),
//! until a duration has passed or a number of calls is done. Calls started
//! during the warm-up are made but not recorded; live progress goes to stderr
//! once a second when asked.
//!
//! Each caller records into its own histogram, merged at the end, so the hot
//! path shares nothing but two relaxed counters for progress.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::report::{self, ErrorCount, ReportError, Run};

/// One way of making a call: a gateway client, or a raw AMQP client.
pub(crate) trait Caller: Send + 'static {
    /// Makes one call; `Ok` when it succeeded.
    fn call(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// How a call failed: a gRPC status code name (as `wire::code_name` spells
/// it, plus `BAD_REPLY` for a reply that is not the echo of the request) and
/// what was said about it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// Calls started within this long after the warm-up are recorded.
    After(Duration),
    /// This many calls are recorded after the warm-up.
    Count(u64),
}

/// How to drive one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) stop: Stop,
    pub(crate) warmup: Duration,
    /// Print calls/s and errors to stderr once a second.
    pub(crate) progress: bool,
}

/// What one caller saw.
struct Tally {
    latency: Histogram<u64>,
    errors: BTreeMap<&'static str, ErrorCount>,
    warmup_calls: u64,
    last_end: Option<Instant>,
}

/// Runs `callers` (one task each, so their number is the concurrency)
/// according to `plan`.
pub(crate) async fn run<C: Caller>(plan: Plan, callers: Vec<C>) -> Result<Run, ReportError> {
    let concurrency = callers.len();
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    // Either a time after which no call starts, or tickets: one per call.
    let (measure_until, tickets) = match plan.stop {
        Stop::After(duration) => (Some(measure_from + duration), None),
        Stop::Count(n) => (None, Some(Arc::new(AtomicI64::new(i64::try_from(n).unwrap_or(i64::MAX))))),
    };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));

    let mut tasks = tokio::task::JoinSet::new();
    for mut caller in callers {
        let mut tally =
            Tally { latency: report::histogram()?, errors: BTreeMap::new(), warmup_calls: 0, last_end: None };
        let (tickets, done, failed) = (tickets.clone(), done.clone(), failed.clone());
        tasks.spawn(async move {
            loop {
                let start = Instant::now();
                if start < measure_from {
                    let _ = caller.call().await;
                    tally.warmup_calls += 1;
                    continue;
                }
                let over = match (&measure_until, &tickets) {
                    (Some(until), _) => start >= *until,
                    (None, Some(tickets)) => tickets.fetch_sub(1, Ordering::Relaxed) <= 0,
                    (None, None) => true,
                };
                if over {
                    break;
                }
                let outcome = caller.call().await;
                let end = Instant::now();
                tally.last_end = Some(end);
                done.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Ok(()) => tally.latency.saturating_record(report::micros(end - start)),
                    Err(failure) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let entry = tally
                            .errors
                            .entry(failure.code)
                            .or_insert_with(|| ErrorCount { count: 0, first_message: failure.message.clone() });
                        entry.count += 1;
                    }
                }
            }
            tally
        });
    }

    let progress = plan.progress.then(|| tokio::spawn(progress(measure_from, done.clone(), failed.clone())));
    let mut latency = report::histogram()?;
    let mut errors: BTreeMap<&'static str, ErrorCount> = BTreeMap::new();
    let mut warmup_calls = 0;
    let mut last_end: Option<Instant> = None;
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.map_err(|e| ReportError::Caller(e.to_string()))?;
        latency.add(&tally.latency)?;
        for (code, count) in tally.errors {
            let entry = errors.entry(code).or_insert(ErrorCount { count: 0, first_message: count.first_message });
            entry.count += count.count;
        }
        warmup_calls += tally.warmup_calls;
        last_end = last_end.max(tally.last_end);
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = last_end.map_or(Duration::ZERO, |end| end.saturating_duration_since(measure_from));
    Ok(Run { concurrency, latency, errors, warmup_calls, elapsed })
}

/// Calls/s and errors over the last second, on stderr, while the run lasts
/// (the task is aborted at the end).
async fn progress(measure_from: Instant, done: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let mut ticks = tokio::time::interval_at((measure_from + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let mut last = 0;
    loop {
        let tick = ticks.tick().await;
        let now = done.load(Ordering::Relaxed);
        eprintln!(
            "{:>5.0}s {:>10} calls/s {:>8} errors",
            (tick.into_std() - measure_from).as_secs_f64(),
            now - last,
            failed.load(Ordering::Relaxed)
        );
        last = now;
    }
}
