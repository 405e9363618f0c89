//! What one run measured and how it is shown: the latency histogram (HDR,
//! microseconds), the errors by code, a table for people and JSON for
//! machines.
//!
//! Calls/s and latencies count successful calls only, so a fast error (a
//! call shed at once) never flatters them; failed calls are listed by code.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latencies are recorded in microseconds, from 1 µs to an hour, to three
/// significant digits.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// A run could not be recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("latency histogram: {0}")]
    Create(#[from] hdrhistogram::CreationError),
    #[error("merging latency histograms: {0}")]
    Merge(#[from] hdrhistogram::AdditionError),
    #[error("a caller task failed: {0}")]
    Caller(String),
}

/// An empty latency histogram.
pub(crate) fn histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
}

/// A duration as whole microseconds, at least 1 (the histogram's floor).
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How many calls failed with one code, and the first message seen.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCount {
    pub(crate) count: u64,
    pub(crate) first_message: String,
}

/// Everything one run recorded.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) concurrency: usize,
    /// Latency of each successful call, µs.
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: BTreeMap<&'static str, ErrorCount>,
    /// Calls made during the warm-up, not recorded.
    pub(crate) warmup_calls: u64,
    /// From the end of the warm-up to the end of the last recorded call.
    pub(crate) elapsed: Duration,
}

impl Run {
    /// Successful calls recorded.
    pub(crate) fn ok(&self) -> u64 {
        self.latency.len()
    }

    /// Failed calls recorded.
    pub(crate) fn failed(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }

    /// Every call made, warm-up included (for CPU time per call).
    pub(crate) fn all_calls(&self) -> u64 {
        self.ok() + self.failed() + self.warmup_calls
    }

    /// Successful calls per second.
    pub(crate) fn calls_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.ok() as f64 / secs } else { 0.0 }
    }

    /// The latency at `quantile` (0.0 to 1.0), µs; 0 with no successful call.
    pub(crate) fn quantile_us(&self, quantile: f64) -> u64 {
        if self.latency.is_empty() { 0 } else { self.latency.value_at_quantile(quantile) }
    }

    pub(crate) fn p50_us(&self) -> u64 {
        self.quantile_us(0.50)
    }

    pub(crate) fn p99_us(&self) -> u64 {
        self.quantile_us(0.99)
    }

    /// All numbers, for `--json`.
    pub(crate) fn to_json(&self) -> Value {
        let errors: serde_json::Map<String, Value> = self
            .errors
            .iter()
            .map(|(code, e)| ((*code).to_owned(), json!({ "count": e.count, "first_message": e.first_message })))
            .collect();
        json!({
            "concurrency": self.concurrency,
            "ok": self.ok(),
            "failed": self.failed(),
            "warmup_calls": self.warmup_calls,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "calls_per_sec": self.calls_per_sec(),
            "latency_us": {
                "mean": self.latency.mean(),
                "p50": self.quantile_us(0.50),
                "p90": self.quantile_us(0.90),
                "p99": self.quantile_us(0.99),
                "p99_9": self.quantile_us(0.999),
                "max": self.latency.max(),
            },
            "errors": errors,
        })
    }

    /// The human report: `title` names the mode and target.
    pub(crate) fn table(&self, title: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{title}");
        let _ = writeln!(
            out,
            "  calls      {} ok, {} failed in {:.2} s, {} callers ({} warm-up calls not recorded)",
            self.ok(),
            self.failed(),
            self.elapsed.as_secs_f64(),
            self.concurrency,
            self.warmup_calls
        );
        let _ = writeln!(out, "  calls/s    {:.1}", self.calls_per_sec());
        let _ = writeln!(
            out,
            "  latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(self.quantile_us(0.50)),
            ms(self.quantile_us(0.90)),
            ms(self.quantile_us(0.99)),
            ms(self.quantile_us(0.999)),
            ms(self.latency.max())
        );
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors     none");
        }
        for (code, e) in &self.errors {
            let _ = writeln!(out, "  errors     {code:<20} {:>8}  first: {}", e.count, e.first_message);
        }
        out
    }
}

/// Microseconds as milliseconds, for tables: `1.234 ms`.
pub(crate) fn ms(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(latencies_us: &[u64], elapsed: Duration) -> Run {
        let mut latency = histogram().unwrap();
        for &l in latencies_us {
            latency.record(l).unwrap();
        }
        Run { concurrency: 1, latency, errors: BTreeMap::new(), warmup_calls: 3, elapsed }
    }

    #[test]
    fn rates_and_quantiles() {
        let r = run(&(1..=1000).collect::<Vec<_>>(), Duration::from_secs(2));
        assert_eq!(r.ok(), 1000);
        assert_eq!(r.all_calls(), 1003);
        assert!((r.calls_per_sec() - 500.0).abs() < 1e-9);
        assert_eq!(r.p50_us(), 500);
        assert_eq!(r.p99_us(), 990);
        let json = r.to_json();
        assert_eq!(json["latency_us"]["max"], 1000);
        assert_eq!(json["ok"], 1000);
    }

    #[test]
    fn empty_run_is_zero_not_nan() {
        let r = run(&[], Duration::ZERO);
        assert_eq!(r.calls_per_sec(), 0.0);
        assert_eq!(r.p99_us(), 0);
        assert!(r.table("empty").contains("errors     none"));
    }

    #[test]
    fn micros_has_a_floor_of_one() {
        assert_eq!(micros(Duration::from_nanos(10)), 1);
        assert_eq!(micros(Duration::from_millis(2)), 2000);
    }
}
