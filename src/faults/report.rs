//! What a failover workload's record says: totals, a per-second timeline, and around each
//! scripted event how long the survivors took to notice and how long until the customers the
//! node owned were written again.
//!
//! ```text
//!  Record { samples, observations, events } ─▶ summarize ─▶ WorkloadReport ─▶ render / JSON
//!                                                                        └──▶ ending (exit code)
//! ```
//!
//! Pure: no I/O and no clock. Every time here is one the workload read on its own host, in ms
//! since the Unix epoch; the nodes' clocks are never consulted.
//!
//! For each event (`kill`, `freeze`, `stop` and `isolate` take a node away; `restart`, `thaw`
//! and `heal` bring it back):
//! * **detection** — from the event to the first membership poll in which every other node
//!   that answered no longer lists the node (or lists it again);
//! * **recovery** (nodes going away only) — the customers whose last successful request
//!   before the event was answered by that node *moved*; for each, the time from the event
//!   to its first acknowledged write *sent after* the event (p50/p99/max). A write already in
//!   flight may have been served by the old owner just before it went away, so it does not
//!   count;
//! * **errors** in the 15 s after the event: HTTP errors from live nodes, and requests whose
//!   entry node could not be reached, counted apart.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::workload::{Observation, Outcome, Sample};
use crate::client::exit::Ending;

/// How long after an event its errors are counted, ms.
const EVENT_WINDOW_MS: u64 = 15_000;

/// A scripted event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// `kill`, `restart`, `freeze`, `thaw`, …
    pub kind: String,
    /// Target node name.
    pub node: String,
}

/// What happened around one event.
#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    /// The event.
    pub event: Event,
    /// ms until every other live node's member list no longer (kill/freeze) or again
    /// (restart/thaw) contains the node.
    pub detection_ms: Option<u64>,
    /// Customers the node owned just before a kill/freeze.
    pub moved_customers: usize,
    /// ms until each moved customer was written again: p50, p99, max.
    pub recovery_ms: Option<[u64; 3]>,
    /// Errors returned by live nodes in the 15 s after the event.
    pub errors: usize,
    /// Requests that could not reach their entry node in the 15 s after the event.
    pub entry_unreachable: usize,
}

/// The workload's report.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// Acknowledged writes.
    pub writes_ok: usize,
    /// Successful reads.
    pub reads_ok: usize,
    /// Errors returned by live nodes, by status.
    pub errors: BTreeMap<String, usize>,
    /// Requests whose entry node was unreachable.
    pub entry_unreachable: usize,
    /// Reads that returned a version older than the last acknowledged write.
    pub stale_reads: usize,
    /// Customers whose final state differs from their last acknowledged write.
    pub lost_acknowledged_writes: usize,
    /// Customers per owner at the start.
    pub owners_before: BTreeMap<String, usize>,
    /// Customers per owner at the end.
    pub owners_after: BTreeMap<String, usize>,
    /// Per event.
    pub events: Vec<EventReport>,
    /// Per second: [second, writes ok, reads ok, errors, entry unreachable, stale].
    pub timeline: Vec<[u64; 6]>,
    /// 503 answers per entry node (by name).
    pub unavailable_by_entry: BTreeMap<String, usize>,
    /// Writes sent again with the same `Idempotency-Key` after a 503 or an unknown outcome.
    pub retries: super::history::Retries,
    /// The checker's verdict on every request the run recorded (`None` if not checked).
    pub history: Option<HistoryVerdict>,
}

/// What the linearizability checker said about the run's history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryVerdict {
    /// Every key linearizable, no stale read, no lost write.
    pub ok: bool,
    /// Operations checked.
    pub ops: usize,
    /// Keys found not linearizable.
    pub not_linearizable: usize,
    /// Keys the search could not decide within its budget (a failure too).
    pub unknown: usize,
    /// Stale reads the checker counted.
    pub stale_reads: usize,
    /// Lost acknowledged writes the checker counted.
    pub lost_writes: usize,
    /// The checker's report: a summary line and a short failing sub-history per bad key.
    pub text: String,
}

impl HistoryVerdict {
    /// The verdict of a checker report.
    pub fn of(report: &super::checker::Report) -> Self {
        Self {
            ok: report.is_ok(),
            ops: report.ops(),
            not_linearizable: report.not_linearizable(),
            unknown: report.unknown(),
            stale_reads: report.stale_reads(),
            lost_writes: report.lost_writes(),
            text: report.to_string(),
        }
    }
}

/// Everything a workload run recorded, for [`summarize`].
pub(super) struct Record {
    /// Every request, in the order the answers came in.
    pub samples: Vec<Sample>,
    /// Every member list a node reported.
    pub observations: Vec<Observation>,
    /// The scripted events.
    pub events: Vec<Event>,
    /// When the measured run started, ms since the Unix epoch (second 0 of the timeline).
    pub started_ms: u64,
}

/// A customer lost an acknowledged write when its stored version is older than the last
/// acknowledged one, or equal with other content.
pub fn is_lost(
    acked_name: &str,
    acked_version: u64,
    stored_name: &str,
    stored_version: u64,
) -> bool {
    stored_version < acked_version || (stored_version == acked_version && stored_name != acked_name)
}

/// The events in an events file, one `<unix_ms> <kind> <node>` per line; lines that do not
/// parse are skipped (the driving script may be writing the last one as we read).
pub fn parse_events(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some(Event {
                at_ms: parts.next()?.parse().ok()?,
                kind: parts.next()?.to_owned(),
                node: parts.next()?.to_owned(),
            })
        })
        .collect()
}

/// Percentile (0..=100) of a sorted slice.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The report of a run: `lost` and the owner counts come from reading every customer back
/// at the end.
pub(super) fn summarize(
    record: &Record,
    lost: usize,
    owners_before: BTreeMap<String, usize>,
    owners_after: BTreeMap<String, usize>,
) -> WorkloadReport {
    let samples = &record.samples;
    let (errors, timeline) = timeline(samples, record.started_ms);
    let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| f(s)).count();
    WorkloadReport {
        writes_ok: count(&|s| s.write && s.outcome == Outcome::Ok),
        reads_ok: count(&|s| !s.write && s.outcome == Outcome::Ok),
        errors,
        entry_unreachable: count(&|s| s.outcome == Outcome::EntryUnreachable),
        stale_reads: count(&|s| s.outcome == Outcome::Stale),
        lost_acknowledged_writes: lost,
        owners_before,
        owners_after,
        events: (record.events.iter())
            .map(|e| event_report(e, samples, &record.observations))
            .collect(),
        timeline,
        unavailable_by_entry: BTreeMap::new(),
        retries: Default::default(),
        history: None,
    }
}

/// Errors from live nodes by status, and per second since `started_ms`: [second, writes ok,
/// reads ok, errors, entry unreachable, stale].
fn timeline(samples: &[Sample], started_ms: u64) -> (BTreeMap<String, usize>, Vec<[u64; 6]>) {
    let mut errors = BTreeMap::new();
    let mut rows: BTreeMap<u64, [u64; 6]> = BTreeMap::new();
    for s in samples {
        let sec = s.at_ms.saturating_sub(started_ms) / 1000;
        let row = rows.entry(sec).or_insert([sec, 0, 0, 0, 0, 0]);
        match &s.outcome {
            Outcome::Ok if s.write => row[1] += 1,
            Outcome::Ok => row[2] += 1,
            Outcome::Http(code) => {
                row[3] += 1;
                *errors.entry(format!("http_{code}")).or_insert(0) += 1;
            }
            Outcome::EntryUnreachable => row[4] += 1,
            Outcome::Stale => row[5] += 1,
        }
    }
    (errors, rows.into_values().collect())
}

/// Whether an event takes its node away (else it brings it back): a crash, a freeze, a stop,
/// or a cut of the network around it (`isolate`, `cut`: the node named is the one cut off).
fn takes_node_away(kind: &str) -> bool {
    matches!(kind, "kill" | "freeze" | "stop" | "isolate" | "cut")
}

/// First observation time ≥ `from` at which every node other than `target` that reported
/// anything lists (`want_present`) or does not list the target.
fn detection(
    observations: &[Observation],
    target: &str,
    from: u64,
    want_present: bool,
) -> Option<u64> {
    let mut by_time: BTreeMap<u64, Vec<&Observation>> = BTreeMap::new();
    for o in observations
        .iter()
        .filter(|o| o.at_ms >= from && o.node != target)
    {
        by_time.entry(o.at_ms).or_default().push(o);
    }
    by_time
        .into_iter()
        .find(|(_, obs)| {
            !obs.is_empty()
                && obs
                    .iter()
                    .all(|o| o.members.iter().any(|m| m == target) == want_present)
        })
        .map(|(t, _)| t - from)
}

fn event_report(event: &Event, samples: &[Sample], observations: &[Observation]) -> EventReport {
    let leaving = takes_node_away(&event.kind);
    let window = event.at_ms..event.at_ms + EVENT_WINDOW_MS;
    let in_window = samples.iter().filter(|s| window.contains(&s.at_ms));
    let (mut errors, mut entry_unreachable) = (0, 0);
    for s in in_window {
        match s.outcome {
            Outcome::Http(_) => errors += 1,
            Outcome::EntryUnreachable => entry_unreachable += 1,
            Outcome::Ok | Outcome::Stale => {}
        }
    }
    let moved = if leaving {
        moved_customers(samples, event)
    } else {
        Vec::new()
    };
    let recovery = recovery_times(samples, event, &moved);
    EventReport {
        event: event.clone(),
        detection_ms: detection(observations, &event.node, event.at_ms, !leaving),
        moved_customers: moved.len(),
        recovery_ms: spread(&recovery),
        errors,
        entry_unreachable,
    }
}

/// The customers the event's node owned: those whose last successful request before the
/// event was answered by it.
fn moved_customers(samples: &[Sample], event: &Event) -> Vec<usize> {
    let mut owner_before: HashMap<usize, &str> = HashMap::new();
    let before = samples
        .iter()
        .filter(|s| s.at_ms < event.at_ms && s.outcome == Outcome::Ok);
    for s in before {
        if let Some(o) = &s.owner {
            owner_before.insert(s.customer, o);
        }
    }
    let mut moved: Vec<usize> = (owner_before.into_iter())
        .filter(|(_, o)| *o == event.node)
        .map(|(c, _)| c)
        .collect();
    moved.sort_unstable();
    moved
}

/// For each moved customer written again, ms from the event to its first acknowledged write
/// sent after the event; sorted. Customers never written again are left out.
fn recovery_times(samples: &[Sample], event: &Event, moved: &[usize]) -> Vec<u64> {
    let mut times: Vec<u64> = moved
        .iter()
        .filter_map(|&c| {
            samples
                .iter()
                .filter(|s| {
                    s.customer == c
                        && s.write
                        && s.started_ms >= event.at_ms
                        && s.outcome == Outcome::Ok
                })
                .map(|s| s.at_ms - event.at_ms)
                .min()
        })
        .collect();
    times.sort_unstable();
    times
}

/// p50, p99 and max of sorted times; `None` for none.
fn spread(sorted: &[u64]) -> Option<[u64; 3]> {
    let max = *sorted.last()?;
    Some([percentile(sorted, 50.0), percentile(sorted, 99.0), max])
}

impl WorkloadReport {
    /// Why the run counts as a failure, if it does: a stale read or a lost acknowledged write
    /// breaks the cluster's promise, whatever else went well. Errors and unreachable entry
    /// nodes cost availability only and are reported, not judged.
    pub fn failure(&self) -> Option<&'static str> {
        if self.lost_acknowledged_writes > 0 || self.stale_reads > 0 {
            return Some("the workload saw lost acknowledged writes or stale reads");
        }
        self.history
            .as_ref()
            .is_some_and(|h| !h.ok)
            .then_some("the recorded history breaks the consistency contract")
    }

    /// How `customer-cluster workload` ends: the rendered report, and a failure as
    /// [`Self::failure`] says.
    pub fn ending(&self) -> Ending {
        let stdout = self.render() + "\n";
        match self.failure() {
            None => Ending::Done(stdout),
            Some(why) => Ending::Findings {
                stdout,
                error: Some(why.to_owned()),
            },
        }
    }

    /// The report as text: events, totals, and the per-second timeline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== events ==");
        for e in &self.events {
            render_event(&mut out, e);
        }
        self.render_totals(&mut out);
        let _ = writeln!(out, "== timeline (per second) ==");
        let _ = writeln!(
            out,
            "{:>4} {:>7} {:>7} {:>7} {:>11} {:>6}",
            "t", "writes", "reads", "errors", "unreachable", "stale"
        );
        for [t, w, r, e, u, s] in &self.timeline {
            let _ = writeln!(out, "{t:>4} {w:>7} {r:>7} {e:>7} {u:>11} {s:>6}");
        }
        out
    }

    fn render_totals(&self, out: &mut String) {
        let _ = writeln!(out, "== totals ==");
        let _ = writeln!(
            out,
            "acknowledged writes: {}   successful reads: {}",
            self.writes_ok, self.reads_ok
        );
        let _ = writeln!(
            out,
            "errors from live nodes: {:?}   entry node unreachable: {}",
            self.errors, self.entry_unreachable
        );
        let _ = writeln!(
            out,
            "customers per owner before: {:?}   after: {:?}",
            self.owners_before, self.owners_after
        );
        let _ = writeln!(out, "stale reads: {}", self.stale_reads);
        let _ = writeln!(
            out,
            "acknowledged writes lost: {}",
            self.lost_acknowledged_writes
        );
        let _ = writeln!(out, "503s by entry node: {:?}", self.unavailable_by_entry);
        let _ = writeln!(out, "retries: {}", self.retries);
        if let Some(h) = &self.history {
            let _ = write!(out, "linearizability checker: {}", h.text);
        }
    }
}

/// One line per event.
fn render_event(out: &mut String, e: &EventReport) {
    let ms = |v: Option<u64>| v.map_or("n/a".to_owned(), |v| format!("{v} ms"));
    let _ = write!(
        out,
        "{:<8} {:<4} detected after {}",
        e.event.kind,
        e.event.node,
        ms(e.detection_ms)
    );
    if let Some([p50, p99, max]) = e.recovery_ms {
        let _ = write!(
            out,
            "; {} moved customers written again after p50 {p50} ms, p99 {p99} ms, max {max} ms",
            e.moved_customers
        );
    }
    let _ = writeln!(
        out,
        "; errors from live nodes in the next 15 s: {}, entry node unreachable: {}",
        e.errors, e.entry_unreachable
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at_ms: u64, node: &str, members: &[&str]) -> Observation {
        Observation {
            at_ms,
            node: node.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn sample(customer: usize, started_ms: u64, at_ms: u64, owner: &str) -> Sample {
        Sample {
            started_ms,
            at_ms,
            customer,
            write: true,
            outcome: Outcome::Ok,
            owner: Some(owner.into()),
        }
    }

    fn event(at_ms: u64, kind: &str, node: &str) -> Event {
        Event {
            at_ms,
            kind: kind.into(),
            node: node.into(),
        }
    }

    fn report(stale_reads: usize, lost: usize) -> WorkloadReport {
        let record = Record {
            samples: vec![],
            observations: vec![],
            events: vec![],
            started_ms: 0,
        };
        let mut r = summarize(&record, lost, BTreeMap::new(), BTreeMap::new());
        r.stale_reads = stale_reads;
        r
    }

    #[test]
    fn a_write_is_lost_only_if_the_store_is_behind_or_differs_at_the_same_version() {
        assert!(!is_lost("w3", 4, "w3", 4));
        assert!(
            !is_lost("w3", 4, "w4", 5),
            "a later unacknowledged write is not a loss"
        );
        assert!(is_lost("w3", 4, "w2", 3));
        assert!(is_lost("w3", 4, "w9", 4));
    }

    #[test]
    fn detection_is_when_every_other_node_agrees() {
        let o = vec![
            obs(100, "n1", &["n1", "n2", "n3"]),
            obs(100, "n3", &["n1", "n2", "n3"]),
            obs(200, "n1", &["n1", "n3"]),
            obs(200, "n3", &["n1", "n2", "n3"]),
            obs(300, "n1", &["n1", "n3"]),
            obs(300, "n3", &["n1", "n3"]),
            obs(300, "n2", &["n2"]),
        ];
        assert_eq!(detection(&o, "n2", 50, false), Some(250));
        assert_eq!(detection(&o, "n2", 0, true), Some(100));
    }

    #[test]
    fn recovery_counts_only_writes_sent_after_the_event() {
        let samples = vec![
            sample(0, 900, 950, "n3"),
            sample(1, 900, 960, "n3"),
            sample(2, 900, 970, "n3"),
            sample(3, 900, 980, "n1"),
            // In flight when n3 froze at 1000: answered by n3 just before; not a recovery.
            sample(0, 990, 1010, "n3"),
            sample(1, 995, 1015, "n3"),
            // Sent after the freeze, answered by the new owners after eviction.
            sample(0, 1020, 4000, "n1"),
            sample(1, 1500, 4100, "n2"),
            sample(2, 1600, 4200, "n2"),
            sample(3, 1700, 1750, "n1"),
        ];
        let r = event_report(&event(1000, "freeze", "n3"), &samples, &[]);
        assert_eq!(r.moved_customers, 3);
        assert_eq!(r.recovery_ms, Some([3100, 3200, 3200]));
    }

    #[test]
    fn an_isolated_node_is_away_and_healing_brings_it_back() {
        let samples = vec![sample(0, 900, 950, "n3"), sample(0, 1100, 3000, "n1")];
        let observations = vec![
            obs(1500, "n1", &["n1", "n2"]),
            obs(1500, "n2", &["n1", "n2"]),
            // The isolated node still answers clients, and still lists itself.
            obs(1500, "n3", &["n3"]),
            obs(6000, "n1", &["n1", "n2", "n3"]),
            obs(6000, "n2", &["n1", "n2", "n3"]),
        ];
        let cut = event_report(&event(1000, "isolate", "n3"), &samples, &observations);
        assert_eq!(cut.moved_customers, 1);
        assert_eq!(cut.recovery_ms, Some([2000, 2000, 2000]));
        assert_eq!(cut.detection_ms, Some(500));
        let healed = event_report(&event(5000, "heal", "n3"), &samples, &observations);
        assert_eq!(healed.moved_customers, 0);
        assert_eq!(healed.detection_ms, Some(1000));
    }

    #[test]
    fn a_customer_moved_by_its_last_success_before_the_event_not_an_earlier_one() {
        let mut failed = sample(2, 800, 990, "n2");
        failed.outcome = Outcome::Http(503);
        let samples = vec![
            sample(0, 100, 200, "n2"),
            sample(0, 300, 400, "n1"), // moved away from n2 before the event
            sample(1, 100, 200, "n1"),
            sample(1, 300, 400, "n2"), // moved onto n2 before the event
            sample(2, 100, 200, "n2"),
            failed,                      // a failure says nothing about the owner
            sample(3, 1100, 1200, "n2"), // first seen after the event
        ];
        assert_eq!(
            moved_customers(&samples, &event(1000, "kill", "n2")),
            [1, 2]
        );
    }

    #[test]
    fn a_moved_customer_never_written_again_has_no_recovery_time() {
        let samples = vec![
            sample(0, 100, 200, "n2"),
            sample(1, 100, 200, "n2"),
            sample(1, 1100, 1300, "n1"),
        ];
        let e = event(1000, "kill", "n2");
        assert_eq!(recovery_times(&samples, &e, &[0, 1]), [300]);
        let r = event_report(&e, &samples, &[]);
        assert_eq!((r.moved_customers, r.recovery_ms), (2, Some([300; 3])));
    }

    #[test]
    fn a_node_coming_back_moves_nothing_and_is_detected_when_listed_again() {
        let samples = vec![sample(0, 100, 200, "n2")];
        let o = vec![obs(1100, "n1", &["n1"]), obs(1200, "n1", &["n1", "n2"])];
        let r = event_report(&event(1000, "restart", "n2"), &samples, &o);
        assert_eq!((r.moved_customers, r.recovery_ms), (0, None));
        assert_eq!(r.detection_ms, Some(200));
    }

    #[test]
    fn errors_count_in_the_fifteen_seconds_after_an_event_apart_from_unreachable_entries() {
        let with = |at_ms, outcome| Sample {
            outcome,
            ..sample(0, at_ms, at_ms, "n1")
        };
        let samples = vec![
            with(900, Outcome::Http(503)),
            with(1100, Outcome::Http(503)),
            with(1200, Outcome::EntryUnreachable),
            with(1300, Outcome::Stale),
            with(15_999, Outcome::Http(504)),
            with(16_000, Outcome::Http(503)),
        ];
        let r = event_report(&event(1000, "kill", "n3"), &samples, &[]);
        assert_eq!((r.errors, r.entry_unreachable), (2, 1));
    }

    #[test]
    fn the_timeline_counts_each_outcome_in_its_second() {
        let with = |at_ms, write, outcome| Sample {
            write,
            outcome,
            ..sample(0, at_ms, at_ms, "n1")
        };
        let samples = vec![
            with(10_100, true, Outcome::Ok),
            with(10_200, false, Outcome::Ok),
            with(10_900, false, Outcome::Stale),
            with(12_000, true, Outcome::Http(503)),
            with(12_500, true, Outcome::EntryUnreachable),
        ];
        let (errors, rows) = timeline(&samples, 10_000);
        assert_eq!(rows, [[0, 1, 1, 0, 0, 1], [2, 0, 0, 1, 1, 0]]);
        assert_eq!(errors, BTreeMap::from([("http_503".to_owned(), 1)]));
    }

    #[test]
    fn events_parse_one_per_line_and_a_partial_line_is_skipped() {
        let text = "1000 kill n2\n\ngarbage\n2000 restart n2\n3000 freeze";
        assert_eq!(
            parse_events(text),
            [event(1000, "kill", "n2"), event(2000, "restart", "n2")]
        );
    }

    #[test]
    fn percentiles_pick_by_rank() {
        let v = [1, 2, 3, 4, 100];
        assert_eq!(percentile(&v, 50.0), 3);
        assert_eq!(percentile(&v, 99.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn a_stale_read_or_a_lost_write_fails_the_run_and_errors_alone_do_not() {
        let mut fine = report(0, 0);
        fine.errors.insert("http_503".into(), 40);
        fine.entry_unreachable = 12;
        assert_eq!(fine.failure(), None);
        assert!(matches!(fine.ending(), Ending::Done(out) if out.contains("stale reads: 0")));
        for bad in [report(1, 0), report(0, 1)] {
            assert!(bad.failure().is_some());
            match bad.ending() {
                Ending::Findings { stdout, error } => {
                    assert!(stdout.contains("== totals =="), "{stdout}");
                    assert!(error.is_some());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_rendered_report_shows_each_event_with_its_recovery() {
        let mut r = report(0, 0);
        r.events.push(EventReport {
            event: event(1000, "kill", "n2"),
            detection_ms: Some(55),
            moved_customers: 40,
            recovery_ms: Some([34, 58, 58]),
            errors: 0,
            entry_unreachable: 54,
        });
        let text = r.render();
        assert!(
            text.contains("kill     n2   detected after 55 ms; 40 moved customers written again after p50 34 ms, p99 58 ms, max 58 ms; errors from live nodes in the next 15 s: 0, entry node unreachable: 54"),
            "{text}"
        );
    }
}
