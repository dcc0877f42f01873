//! Measurement while a run is going: latency histograms per operation, error counts by
//! category, and counters. Each worker owns a [`Recorder`] (no locks on the hot path); the
//! recorders are merged when the run ends. Latencies are microseconds in an HDR histogram with
//! 3 significant digits (±0.1 %), from 1 µs to one hour.
//!
//! What counts where:
//! * **ok**: the response had the operation's expected status. Only these feed the latency
//!   histograms and the throughput, so fast failures can neither flatter nor hide latency.
//! * **errors**: by category: `transport` (no connection, or it broke), `timeout` (no answer
//!   within the client deadline), `http_<status>` (any other status). Failures of the
//!   unrecorded housekeeping after a delete (creating the replacement) are prefixed
//!   `replacement_`.
//! * **not_found_raced**: a 404 for a key that a concurrent delete retired after this request
//!   picked it: expected with deletes in the mix, so not an error.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest recordable latency, µs (one hour); larger values are clamped to it.
const MAX_MICROS: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

/// Latency percentiles, in microseconds (all 0 when nothing was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl LatencySummary {
    /// Extracts the summary from a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Results of one operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpResult {
    /// Completed measured requests of this operation (ok, errors and raced 404s).
    pub requests: u64,
    /// Those with the expected status.
    pub ok: u64,
    /// Those counted as errors.
    pub errors: u64,
    /// Latency of the ok ones.
    pub latency_us: LatencySummary,
}

/// Counters that are not latencies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Measured requests the workload tried to issue (including skipped ones).
    pub attempted: u64,
    /// 404s for keys a concurrent delete retired (expected, not errors).
    pub not_found_raced: u64,
    /// Requests not sent because no live key was found near the sampled one.
    pub skipped: u64,
    /// Requests whose `--route` could not be honoured (owner unknown or not benchmarked).
    pub route_fallbacks: u64,
    /// Ok responses whose owner node was the entry node (`x-owner-node` = `x-entry-node`).
    pub served_locally: u64,
    /// Ok responses whose owner node was another node.
    pub served_remotely: u64,
    /// Replacement customers created after deletes (housekeeping, not recorded as latency).
    pub replacements: u64,
}

#[derive(Debug)]
struct OpTally {
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
}

/// One worker's measurements.
#[derive(Debug)]
pub struct Recorder {
    overall: Histogram<u64>,
    ops: BTreeMap<&'static str, OpTally>,
    errors: BTreeMap<String, u64>,
    /// Non-latency counters.
    pub counters: Counters,
    /// When the last request was actually sent (for the throughput window).
    last_send: Option<Instant>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            overall: histogram(),
            ops: BTreeMap::new(),
            errors: BTreeMap::new(),
            counters: Counters::default(),
            last_send: None,
        }
    }
}

impl Recorder {
    /// A request is leaving now.
    pub fn sent(&mut self, at: Instant) {
        self.last_send = self.last_send.max(Some(at));
    }

    /// When the last request was sent, if any.
    pub fn last_send(&self) -> Option<Instant> {
        self.last_send
    }

    /// A successful request of `op` that took `micros`.
    pub fn ok(&mut self, op: &'static str, micros: u64) {
        let tally = self.tally(op);
        tally.requests += 1;
        tally.latency.saturating_record(micros.max(1));
        self.overall.saturating_record(micros.max(1));
    }

    /// A failed request of `op` in error `category` (e.g. `http_503`).
    pub fn error(&mut self, op: &'static str, category: &str) {
        let tally = self.tally(op);
        tally.requests += 1;
        tally.errors += 1;
        self.count_error(category);
    }

    /// A 404 explained by a concurrent delete.
    pub fn raced(&mut self, op: &'static str) {
        self.tally(op).requests += 1;
        self.counters.not_found_raced += 1;
    }

    /// An error outside the measured operations (e.g. `replacement_http_503`).
    pub fn count_error(&mut self, category: &str) {
        *self.errors.entry(category.to_owned()).or_default() += 1;
    }

    /// Adds another worker's measurements to these.
    pub fn merge(&mut self, other: Recorder) {
        add(&mut self.overall, &other.overall);
        for (op, t) in other.ops {
            let mine = self.tally(op);
            add(&mut mine.latency, &t.latency);
            mine.requests += t.requests;
            mine.errors += t.errors;
        }
        for (category, n) in other.errors {
            *self.errors.entry(category).or_default() += n;
        }
        self.last_send = self.last_send.max(other.last_send);
        let (c, o) = (&mut self.counters, other.counters);
        c.attempted += o.attempted;
        c.not_found_raced += o.not_found_raced;
        c.skipped += o.skipped;
        c.route_fallbacks += o.route_fallbacks;
        c.served_locally += o.served_locally;
        c.served_remotely += o.served_remotely;
        c.replacements += o.replacements;
    }

    /// Successful requests, all operations.
    pub fn ok_count(&self) -> u64 {
        self.overall.len()
    }

    /// Completed requests, all operations.
    pub fn requests(&self) -> u64 {
        self.ops.values().map(|t| t.requests).sum()
    }

    /// Overall latency of successful requests.
    pub fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.overall)
    }

    /// Per-operation results.
    pub fn ops(&self) -> BTreeMap<String, OpResult> {
        self.ops
            .iter()
            .map(|(op, t)| {
                let result = OpResult {
                    requests: t.requests,
                    ok: t.latency.len(),
                    errors: t.errors,
                    latency_us: LatencySummary::of(&t.latency),
                };
                ((*op).to_owned(), result)
            })
            .collect()
    }

    /// Errors by category.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.clone()
    }

    fn tally(&mut self, op: &'static str) -> &mut OpTally {
        self.ops.entry(op).or_insert_with(|| OpTally {
            latency: histogram(),
            requests: 0,
            errors: 0,
        })
    }
}

fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if let Err(e) = into.add(from) {
        tracing::warn!("could not merge latency histograms: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_come_from_the_histogram_within_its_precision() {
        let mut h = histogram();
        (1..=1000).for_each(|v| h.saturating_record(v));
        let s = LatencySummary::of(&h);
        assert_eq!(
            (s.p50, s.p90, s.p99, s.p999, s.max),
            (500, 900, 990, 999, 1000)
        );
        assert!((s.mean - 500.5).abs() < 1.0, "{}", s.mean);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        assert_eq!(LatencySummary::of(&histogram()), LatencySummary::default());
    }

    #[test]
    fn merged_recorders_add_up_requests_errors_and_latencies() {
        let (mut a, mut b) = (Recorder::default(), Recorder::default());
        a.ok("get", 100);
        b.ok("get", 300);
        b.error("update", "http_503");
        b.raced("get");
        b.counters.skipped = 2;
        a.merge(b);
        assert_eq!((a.ok_count(), a.requests()), (2, 4));
        assert_eq!(a.errors()["http_503"], 1);
        assert_eq!(a.ops()["get"].requests, 3);
        assert_eq!(a.ops()["update"].errors, 1);
        assert_eq!((a.counters.not_found_raced, a.counters.skipped), (1, 2));
        assert_eq!(a.latency().max, 300);
    }

    #[test]
    fn the_last_send_survives_a_merge() {
        let (mut a, mut b) = (Recorder::default(), Recorder::default());
        let t = Instant::now();
        a.sent(t);
        b.sent(t + Duration::from_millis(5));
        a.merge(b);
        assert_eq!(a.last_send(), Some(t + Duration::from_millis(5)));
    }

    #[test]
    fn huge_latencies_are_clamped_not_lost() {
        let mut r = Recorder::default();
        r.ok("get", u64::MAX);
        assert_eq!(r.ok_count(), 1);
    }
}
