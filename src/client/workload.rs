//! A steady mixed workload for failover experiments, with its own bookkeeping of what was
//! acknowledged, and a timeline of what clients saw.
//!
//! Each customer is written by exactly one worker, sequentially, so "the last acknowledged
//! write" of a customer is well defined. Workers alternate a PATCH (name = next sequence
//! number) and a GET, through rotating entry nodes; an entry node that refuses connections or
//! does not answer is skipped for a while (what a client-side load balancer does), and that is
//! counted apart from errors that live nodes return.
//!
//! Checks while running: a GET that returns a version older than the last acknowledged one is
//! a *stale read*. Checks at the end: every customer's stored version and name must match its
//! last acknowledged write, else it counts as a *lost acknowledged write*.
//!
//! Events (kill, restart, freeze, thaw) are appended by the driving script to `--events` as
//! `<unix_ms> <kind> <node>`; the report measures around each one: detection time (survivors
//! drop the node from their member lists), the time until each customer the node owned is
//! written again (p50/p99/max over those customers), and errors in the following seconds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ClientError, HttpClient};
use crate::clock::now_ms;

/// Flags of `customer-cluster workload`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Entry nodes (HTTP URLs), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Bearer token.
    #[arg(long, env = "CUSTOMER_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Customers to create and keep writing.
    #[arg(long, default_value_t = 120)]
    pub customers: usize,
    /// Concurrent workers (each owns a slice of the customers).
    #[arg(long, default_value_t = 12)]
    pub concurrency: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 40)]
    pub duration_s: u64,
    /// Event file appended to by the driving script (`<unix_ms> <kind> <node>` per line).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Per-request client deadline, ms.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// One observed request.
#[derive(Debug, Clone)]
struct Sample {
    /// When the request was sent, ms since the Unix epoch.
    started_ms: u64,
    /// When its answer (or failure) arrived.
    at_ms: u64,
    customer: usize,
    write: bool,
    outcome: Outcome,
    owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    Stale,
    Http(u16),
    EntryUnreachable,
}

/// Membership as one node reported it at one time.
#[derive(Debug, Clone)]
struct Observation {
    at_ms: u64,
    node: String,
    members: Vec<String>,
}

#[derive(Debug, Clone)]
struct Acked {
    id: String,
    name: String,
    version: u64,
}

/// A scripted event.
#[derive(Debug, Clone, Serialize)]
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
}

struct Shared {
    samples: Mutex<Vec<Sample>>,
    observations: Mutex<Vec<Observation>>,
    acked: Mutex<Vec<Acked>>,
}

/// Runs the workload and returns its report.
pub async fn run(args: &WorkloadArgs) -> Result<WorkloadReport, ClientError> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let clients: Vec<HttpClient> = args
        .nodes
        .iter()
        .map(|n| HttpClient::new(n, args.token.clone(), timeout))
        .collect::<Result<_, _>>()?;
    let names = node_names(&clients).await?;
    let run_tag = now_ms() % 1_000_000_000;
    let mut acked = Vec::with_capacity(args.customers);
    for i in 0..args.customers {
        let body = json!({"name": "w0", "email": format!("workload-{run_tag}-{i}@example.com")});
        let r = request_anywhere(&clients, i, Method::POST, "/v1/customers", Some(&body)).await?;
        let v: Value = r.json()?;
        acked.push(Acked {
            id: v["id"].as_str().unwrap_or_default().to_owned(),
            name: "w0".into(),
            version: v["version"].as_u64().unwrap_or(1),
        });
    }
    let owners_before = owners(&clients, &acked).await;
    let shared = Arc::new(Shared {
        samples: Mutex::new(Vec::new()),
        observations: Mutex::new(Vec::new()),
        acked: Mutex::new(acked),
    });
    let started_ms = now_ms();
    let stop_at = Instant::now() + Duration::from_secs(args.duration_s);
    eprintln!(
        "workload running: {} customers, {} workers, {} s",
        args.customers, args.concurrency, args.duration_s
    );
    let mut tasks = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let (clients, shared) = (clients.clone(), shared.clone());
        let (workers, customers) = (args.concurrency.max(1), args.customers);
        tasks.push(tokio::spawn(async move {
            worker(w, workers, customers, &clients, &shared, stop_at).await;
        }));
    }
    let watcher = {
        let (clients, names, shared) = (clients.clone(), names.clone(), shared.clone());
        tokio::spawn(async move { watch_membership(&clients, &names, &shared, stop_at).await })
    };
    for t in tasks {
        let _ = t.await;
    }
    let _ = watcher.await;
    let final_acked = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let lost = count_lost(&clients, &final_acked).await;
    let owners_after = owners(&clients, &final_acked).await;
    let events = read_events(args.events.as_ref());
    let samples = shared.samples.lock().map(|s| s.clone()).unwrap_or_default();
    let observations = shared
        .observations
        .lock()
        .map(|o| o.clone())
        .unwrap_or_default();
    let report = summarize(
        &samples,
        &observations,
        &events,
        started_ms,
        lost,
        owners_before,
        owners_after,
    );
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text)
            .map_err(|e| ClientError::Local(format!("writing {}: {e}", path.display())))?;
    }
    Ok(report)
}

async fn node_names(clients: &[HttpClient]) -> Result<Vec<String>, ClientError> {
    let mut names = Vec::new();
    for c in clients {
        let v: Value = c.get("/v1/cluster").await?.ok()?.json()?;
        names.push(v["node"].as_str().unwrap_or("?").to_owned());
    }
    Ok(names)
}

/// Sends through the entry nodes in turn (starting at `start`) until one answers.
async fn request_anywhere(
    clients: &[HttpClient],
    start: usize,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<super::HttpResponse, ClientError> {
    let mut last = None;
    for k in 0..clients.len() * 20 {
        let c = &clients[(start + k) % clients.len()];
        let r = match body {
            Some(b) => c.json(method.clone(), path, b, &[]).await,
            None => c.send(method.clone(), path, None, &[]).await,
        };
        match r {
            Ok(r) if r.status.is_success() => return Ok(r),
            Ok(r) if r.status.is_client_error() => return r.ok(),
            Ok(r) => last = Some(r.ok().err().unwrap_or(ClientError::Decode("5xx".into()))),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.unwrap_or(ClientError::Decode("no node answered".into())))
}

async fn worker(
    w: usize,
    workers: usize,
    customers: usize,
    clients: &[HttpClient],
    shared: &Shared,
    stop_at: Instant,
) {
    let mine: Vec<usize> = (0..customers).filter(|c| c % workers == w).collect();
    let mut skip_until = vec![Instant::now(); clients.len()];
    let mut entry = w;
    let mut seq: HashMap<usize, u64> = HashMap::new();
    let mut turn = 0usize;
    while Instant::now() < stop_at && !mine.is_empty() {
        let customer = mine[turn % mine.len()];
        let write = turn.is_multiple_of(2);
        // Pick the next entry node that is not being skipped.
        let now = Instant::now();
        let live: Vec<usize> = (0..clients.len())
            .filter(|i| skip_until[*i] <= now)
            .collect();
        let node = if live.is_empty() {
            entry % clients.len()
        } else {
            live[entry % live.len()]
        };
        entry += 1;
        let (id, acked_version) = {
            let a = shared
                .acked
                .lock()
                .map(|a| (a[customer].id.clone(), a[customer].version));
            a.unwrap_or_default()
        };
        let path = format!("/v1/customers/{id}");
        let next = seq.get(&customer).copied().unwrap_or(0) + 1;
        let name = format!("w{next}");
        let started_ms = now_ms();
        let result = if write {
            clients[node]
                .json(Method::PATCH, &path, &json!({"name": name}), &[])
                .await
        } else {
            clients[node].get(&path).await
        };
        let (outcome, owner) = match result {
            Err(_) => {
                skip_until[node] = Instant::now() + Duration::from_secs(2);
                (Outcome::EntryUnreachable, None)
            }
            Ok(r) if r.status.is_success() => {
                let owner = r.header("x-owner-node").map(str::to_owned);
                let v: Value = r.json().unwrap_or_default();
                let version = v["version"].as_u64().unwrap_or(0);
                if write {
                    seq.insert(customer, next);
                    if let Ok(mut a) = shared.acked.lock() {
                        a[customer].name = name;
                        a[customer].version = version;
                    }
                    (Outcome::Ok, owner)
                } else if version < acked_version {
                    (Outcome::Stale, owner)
                } else {
                    (Outcome::Ok, owner)
                }
            }
            Ok(r) => (Outcome::Http(r.status.as_u16()), None),
        };
        let failed = !matches!(outcome, Outcome::Ok);
        if let Ok(mut s) = shared.samples.lock() {
            s.push(Sample {
                started_ms,
                at_ms: now_ms(),
                customer,
                write,
                outcome,
                owner,
            });
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            turn += 1;
        }
    }
}

async fn watch_membership(
    clients: &[HttpClient],
    names: &[String],
    shared: &Shared,
    stop_at: Instant,
) {
    while Instant::now() < stop_at {
        let polls = clients.iter().zip(names).map(|(c, name)| async move {
            let c = c.clone();
            let r = tokio::time::timeout(Duration::from_millis(300), c.get("/v1/cluster")).await;
            let members = match r {
                Ok(Ok(r)) if r.status.is_success() => r.json::<Value>().ok().map(|v| {
                    v["members"]
                        .as_array()
                        .map(|m| {
                            m.iter()
                                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                }),
                _ => None,
            };
            (name.clone(), members)
        });
        let at_ms = now_ms();
        for (node, members) in futures::future::join_all(polls).await {
            if let (Some(members), Ok(mut o)) = (members, shared.observations.lock()) {
                o.push(Observation {
                    at_ms,
                    node,
                    members,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn owners(clients: &[HttpClient], acked: &[Acked]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (i, a) in acked.iter().enumerate() {
        if let Ok(r) = request_anywhere(
            clients,
            i,
            Method::GET,
            &format!("/v1/customers/{}", a.id),
            None,
        )
        .await
        {
            *out.entry(r.header("x-owner-node").unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    out
}

async fn count_lost(clients: &[HttpClient], acked: &[Acked]) -> usize {
    let mut lost = 0;
    for (i, a) in acked.iter().enumerate() {
        match request_anywhere(
            clients,
            i,
            Method::GET,
            &format!("/v1/customers/{}", a.id),
            None,
        )
        .await
        {
            Ok(r) => {
                let v: Value = r.json().unwrap_or_default();
                let version = v["version"].as_u64().unwrap_or(0);
                if is_lost(
                    &a.name,
                    a.version,
                    v["name"].as_str().unwrap_or(""),
                    version,
                ) {
                    lost += 1;
                }
            }
            Err(_) => lost += 1,
        }
    }
    lost
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

fn read_events(path: Option<&PathBuf>) -> Vec<Event> {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Vec::new();
    };
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

fn summarize(
    samples: &[Sample],
    observations: &[Observation],
    events: &[Event],
    started_ms: u64,
    lost: usize,
    owners_before: BTreeMap<String, usize>,
    owners_after: BTreeMap<String, usize>,
) -> WorkloadReport {
    let mut errors = BTreeMap::new();
    let mut timeline: BTreeMap<u64, [u64; 6]> = BTreeMap::new();
    for s in samples {
        let sec = s.at_ms.saturating_sub(started_ms) / 1000;
        let row = timeline.entry(sec).or_insert([sec, 0, 0, 0, 0, 0]);
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
    let events = events
        .iter()
        .map(|e| event_report(e, samples, observations))
        .collect();
    WorkloadReport {
        writes_ok: samples
            .iter()
            .filter(|s| s.write && s.outcome == Outcome::Ok)
            .count(),
        reads_ok: samples
            .iter()
            .filter(|s| !s.write && s.outcome == Outcome::Ok)
            .count(),
        errors,
        entry_unreachable: samples
            .iter()
            .filter(|s| s.outcome == Outcome::EntryUnreachable)
            .count(),
        stale_reads: samples
            .iter()
            .filter(|s| s.outcome == Outcome::Stale)
            .count(),
        lost_acknowledged_writes: lost,
        owners_before,
        owners_after,
        events,
        timeline: timeline.into_values().collect(),
    }
}

fn event_report(event: &Event, samples: &[Sample], observations: &[Observation]) -> EventReport {
    let leaving = matches!(event.kind.as_str(), "kill" | "freeze" | "stop");
    let detection_ms = detection(observations, &event.node, event.at_ms, !leaving);
    let window = event.at_ms..event.at_ms + 15_000;
    let in_window = |s: &&Sample| window.contains(&s.at_ms);
    let errors = samples
        .iter()
        .filter(in_window)
        .filter(|s| matches!(s.outcome, Outcome::Http(_)))
        .count();
    let entry_unreachable = samples
        .iter()
        .filter(in_window)
        .filter(|s| s.outcome == Outcome::EntryUnreachable)
        .count();
    let mut recovery: Vec<u64> = Vec::new();
    let mut moved = 0;
    if leaving {
        // Owner of each customer as of its last success before the event.
        let mut owner_before: HashMap<usize, &str> = HashMap::new();
        for s in samples
            .iter()
            .filter(|s| s.at_ms < event.at_ms && s.outcome == Outcome::Ok)
        {
            if let Some(o) = &s.owner {
                owner_before.insert(s.customer, o);
            }
        }
        let moved_set: Vec<usize> = owner_before
            .iter()
            .filter(|(_, o)| **o == event.node)
            .map(|(c, _)| *c)
            .collect();
        moved = moved_set.len();
        for c in moved_set {
            let first = samples
                .iter()
                // Only writes sent after the event: one already in flight may have been
                // served by the old owner just before it went away.
                .filter(|s| {
                    s.customer == c
                        && s.write
                        && s.started_ms >= event.at_ms
                        && s.outcome == Outcome::Ok
                })
                .map(|s| s.at_ms - event.at_ms)
                .min();
            if let Some(t) = first {
                recovery.push(t);
            }
        }
        recovery.sort_unstable();
    }
    EventReport {
        event: event.clone(),
        detection_ms,
        moved_customers: moved,
        recovery_ms: (!recovery.is_empty()).then(|| {
            [
                percentile(&recovery, 50.0),
                percentile(&recovery, 99.0),
                *recovery.last().unwrap_or(&0),
            ]
        }),
        errors,
        entry_unreachable,
    }
}

impl WorkloadReport {
    /// The report as text: events, totals, and the per-second timeline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== events ==");
        for e in &self.events {
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
        let write = |customer, started_ms, at_ms, owner: &str| Sample {
            started_ms,
            at_ms,
            customer,
            write: true,
            outcome: Outcome::Ok,
            owner: Some(owner.into()),
        };
        let samples = vec![
            write(0, 900, 950, "n3"),
            write(1, 900, 960, "n3"),
            write(2, 900, 970, "n3"),
            write(3, 900, 980, "n1"),
            // In flight when n3 froze at 1000: answered by n3 just before; not a recovery.
            write(0, 990, 1010, "n3"),
            write(1, 995, 1015, "n3"),
            // Sent after the freeze, answered by the new owners after eviction.
            write(0, 1020, 4000, "n1"),
            write(1, 1500, 4100, "n2"),
            write(2, 1600, 4200, "n2"),
            write(3, 1700, 1750, "n1"),
        ];
        let event = Event {
            at_ms: 1000,
            kind: "freeze".into(),
            node: "n3".into(),
        };
        let r = event_report(&event, &samples, &[]);
        assert_eq!(r.moved_customers, 3);
        assert_eq!(r.recovery_ms, Some([3100, 3200, 3200]));
    }

    #[test]
    fn percentiles_pick_by_rank() {
        let v = [1, 2, 3, 4, 100];
        assert_eq!(percentile(&v, 50.0), 3);
        assert_eq!(percentile(&v, 99.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
