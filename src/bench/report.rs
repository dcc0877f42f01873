//! The [`BenchResult`] a run produces, with the settings that produced it: JSON for scripts
//! (`--out`), [`BenchResult::render`] for people, and [`ratio_line`] to compare two runs (e.g.
//! owner-routed against non-owner-routed, to price the remote hop).
//!
//! Throughput and latency describe successful requests only; errors are counted apart by
//! category (see [`super::recorder`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::recorder::{Counters, LatencySummary, OpResult};

/// Successful requests per second. The window is the measured phase, or longer when the
/// measured requests were still being sent after it (an open loop that fell behind): dividing
/// by the nominal duration would then report a rate the system never sustained.
pub fn throughput_rps(ok: u64, duration: Duration, send_window: Option<Duration>) -> f64 {
    let window = send_window.unwrap_or_default().max(duration);
    if window.is_zero() {
        return 0.0;
    }
    ok as f64 / window.as_secs_f64()
}

/// A node that took part in the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchNode {
    /// Node name (from `GET /v1/cluster`), or the URL when it did not say.
    pub name: String,
    /// The URL requests were sent to.
    pub url: String,
}

/// Everything a run measured, with the settings that produced it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// `--label`, to tell runs apart when comparing.
    pub label: Option<String>,
    /// `closed` (fixed workers, each waits for its answer) or `open` (fixed rate).
    pub mode: String,
    /// `--rate` in open mode, requests/s.
    pub target_rate: Option<f64>,
    /// Workers (closed) or the in-flight limit (open).
    pub concurrency: usize,
    /// Measured phase, seconds.
    pub duration_s: u64,
    /// Unrecorded warm-up before it, seconds.
    pub warmup_s: u64,
    /// Completed measured requests (ok, errors, raced 404s).
    pub requests: u64,
    /// Measured requests with the expected status.
    pub ok: u64,
    /// Successful requests per second over `window_s`.
    pub throughput_rps: f64,
    /// Seconds from the start of the measured phase to the last measured send: `duration_s`,
    /// unless an open loop fell behind and kept sending late.
    pub window_s: f64,
    /// Latency of successful requests, µs (open mode: from the intended start).
    pub latency_us: LatencySummary,
    /// Per operation (`get`, `update`, `create`, `delete`, or `path`).
    pub ops: BTreeMap<String, OpResult>,
    /// Errors by category (`transport`, `timeout`, `http_503`, `replacement_…`).
    pub errors: BTreeMap<String, u64>,
    /// Other counters (raced 404s, skipped, fallbacks, local/remote service, replacements).
    pub counters: Counters,
    /// Open mode: measured requests never sent because the run fell too far behind.
    pub unsent: u64,
    /// The nodes requests were sent to.
    pub nodes: Vec<BenchNode>,
    /// `--route`.
    pub route: String,
    /// `--mix`, canonical (empty with `--path`).
    pub mix: String,
    /// `--path`, when the run only GETs that path.
    pub path: Option<String>,
    /// Preloaded customers.
    pub keys: usize,
    /// `uniform` or `zipf`.
    pub distribution: String,
    /// Zipf exponent, when Zipf.
    pub zipf_s: Option<f64>,
    /// `--seed`.
    pub seed: u64,
    /// Random tag in this run's customer emails.
    pub run_tag: String,
}

impl BenchResult {
    /// A few lines for people: settings, throughput, latency, errors, warnings.
    pub fn render(&self) -> String {
        let mut out = self.headline();
        let _ = writeln!(
            out,
            "  throughput {:.1} ok/s ({} ok of {} requests{})",
            self.throughput_rps,
            self.ok,
            self.requests,
            self.window_note()
        );
        out.push_str(&self.latency_lines());
        let c = &self.counters;
        let served = c.served_locally + c.served_remotely;
        if served > 0 {
            let share = 100.0 * c.served_locally as f64 / served as f64;
            let _ = writeln!(out, "  served on the entry node (owner local): {share:.1}%");
        }
        let _ = writeln!(out, "  errors: {}", self.error_list());
        out.push_str(&self.notes());
        out
    }

    /// Overall latency, then per operation when there are several.
    fn latency_lines(&self) -> String {
        let mut out = format!("  latency ms {}\n", latency_ms(&self.latency_us));
        if self.ops.len() > 1 {
            for (op, r) in &self.ops {
                let line = latency_ms(&r.latency_us);
                let _ = writeln!(out, "    {op:<8} {line} ({} ok)", r.ok);
            }
        }
        out
    }

    fn headline(&self) -> String {
        let label = self.label.as_deref().unwrap_or("bench");
        let mode = match self.target_rate {
            Some(rate) => format!("open loop at {rate}/s, ≤{} in flight", self.concurrency),
            None => format!("closed loop, {} workers", self.concurrency),
        };
        let what = match &self.path {
            Some(path) => format!("GET {path}"),
            None => {
                let dist = match self.zipf_s {
                    Some(s) => format!("zipf(s={s})"),
                    None => self.distribution.clone(),
                };
                format!("mix {}, {} keys {dist}", self.mix, self.keys)
            }
        };
        format!(
            "{label}: {mode}, {} s (+{} s warm-up), {} nodes, route {}, {what}\n",
            self.duration_s,
            self.warmup_s,
            self.nodes.len(),
            self.route
        )
    }

    fn window_note(&self) -> String {
        if self.window_s > self.duration_s as f64 + 0.5 {
            format!(", sent over {:.1} s", self.window_s)
        } else {
            String::new()
        }
    }

    fn error_list(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        let list: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        list.join(", ")
    }

    fn notes(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        if c.not_found_raced > 0 {
            let _ = writeln!(
                out,
                "  404 after a concurrent delete: {}",
                c.not_found_raced
            );
        }
        if c.skipped > 0 {
            let _ = writeln!(
                out,
                "  skipped (no live key near the sampled one): {}",
                c.skipped
            );
        }
        if c.route_fallbacks > 0 {
            let _ = writeln!(
                out,
                "  WARNING: {} requests could not follow --route {} (owner not benchmarked)",
                c.route_fallbacks, self.route
            );
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "  WARNING: {} scheduled requests never sent: the target rate was not sustainable",
                self.unsent
            );
        }
        out
    }
}

fn latency_ms(l: &LatencySummary) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        l.mean / 1000.0
    )
}

/// One line comparing run `a` with run `b` (`a ÷ b`), e.g.
/// `remote ÷ local: throughput 0.62×, p50 1.80×, p99 2.10×`.
pub fn ratio_line(name: &str, a: &BenchResult, b: &BenchResult) -> String {
    let ratio = |x: f64, y: f64| {
        if y > 0.0 && x.is_finite() {
            format!("{:.2}×", x / y)
        } else {
            "n/a".to_owned()
        }
    };
    let (la, lb) = (&a.latency_us, &b.latency_us);
    format!(
        "{name}: throughput {}, p50 {}, p99 {}",
        ratio(a.throughput_rps, b.throughput_rps),
        ratio(la.p50 as f64, lb.p50 as f64),
        ratio(la.p99 as f64, lb.p99 as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_divides_by_the_longer_of_duration_and_send_window() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            throughput_rps(1000, ten, Some(Duration::from_secs(9))),
            100.0
        );
        assert_eq!(
            throughput_rps(1000, ten, Some(Duration::from_secs(20))),
            50.0
        );
        assert_eq!(throughput_rps(1000, ten, None), 100.0);
        assert_eq!(throughput_rps(5, Duration::ZERO, None), 0.0);
    }

    fn result(rps: f64, p50: u64, p99: u64) -> BenchResult {
        BenchResult {
            throughput_rps: rps,
            latency_us: LatencySummary {
                p50,
                p99,
                ..LatencySummary::default()
            },
            ..BenchResult::default()
        }
    }

    #[test]
    fn ratio_lines_divide_a_by_b_and_survive_zeros() {
        let line = ratio_line(
            "remote ÷ local",
            &result(620.0, 1800, 4200),
            &result(1000.0, 1000, 2000),
        );
        assert_eq!(
            line,
            "remote ÷ local: throughput 0.62×, p50 1.80×, p99 2.10×"
        );
        let zero = ratio_line("x", &result(1.0, 1, 1), &BenchResult::default());
        assert_eq!(zero, "x: throughput n/a, p50 n/a, p99 n/a");
    }

    #[test]
    fn the_summary_names_the_run_its_latency_and_its_errors() {
        let mut r = result(1234.5, 812, 3100);
        r.label = Some("local".into());
        r.mode = "closed".into();
        r.concurrency = 8;
        r.errors.insert("http_503".into(), 3);
        r.unsent = 5;
        let text = r.render();
        assert!(text.starts_with("local: closed loop, 8 workers"), "{text}");
        assert!(text.contains("throughput 1234.5 ok/s"), "{text}");
        assert!(text.contains("p50 0.812"), "{text}");
        assert!(text.contains("errors: http_503=3"), "{text}");
        assert!(text.contains("5 scheduled requests never sent"), "{text}");
        assert!(result(1.0, 1, 1).render().contains("errors: none"));
    }
}
