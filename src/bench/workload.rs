//! The two ways of driving load, and how each request is planned, sent and counted.
//!
//! **Closed loop** (`--concurrency` workers): each worker sends a request, waits for the
//! answer, records it, and sends the next. Throughput is whatever the system sustains; latency
//! is measured from the actual send. Requests *started* in the measured window are recorded.
//!
//! **Open loop** (`--rate`): requests are numbered tickets with intended start times (see
//! [`Schedule`]). Up to `--concurrency` workers each take the next ticket, wait for its time
//! and send it. When every worker is busy, the next ticket is taken late and sent at once, and
//! its latency counts from the *intended* start, so the queueing delay a slow system causes is
//! in the numbers instead of silently omitted (coordinated omission). A worker that was early
//! and slept counts from its actual wake-up instead: tokio's timer oversleeps by up to a
//! millisecond, and that jitter is the generator's, not the system's. A run that falls more
//! than one client timeout behind stops issuing; the tickets left are reported as `unsent`.
//!
//! Every request's operation and key are drawn from a random stream derived from `--seed` and
//! the worker number (closed) or the ticket number (open), so a run is reproducible up to
//! timing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;
use tokio::task::JoinSet;

use super::BenchError;
use super::keys::{EmailGen, KeyTable, Lease};
use super::mix::{Mix, Op};
use super::plan::{Choice, Route, Schedule, choose_node};
use super::recorder::Recorder;
use super::sampler::{KeySampler, Rng};
use super::setup::{Target, create_keyed, error_category};
use crate::api::{ENTRY_NODE, OWNER_NODE};
use crate::client::{ClientError, HttpClient, HttpResponse};

/// Pause after a closed-loop request that found no live key, so a worker never spins.
const SKIP_PAUSE: Duration = Duration::from_millis(50);

/// Everything workers share, read-only apart from the key table.
pub(super) struct Workload {
    /// Nodes that receive requests.
    pub targets: Vec<Target>,
    /// Node name → index in `targets`.
    pub by_name: HashMap<String, usize>,
    /// The operation mix; `None` with `--path`.
    pub mix: Option<Mix>,
    /// `--path`.
    pub path: Option<String>,
    /// Picks key slots.
    pub sampler: KeySampler,
    /// The preloaded customers.
    pub keys: KeyTable,
    /// `--route`.
    pub route: Route,
    /// Emails for creates.
    pub emails: EmailGen,
    /// `--seed`.
    pub seed: u64,
}

/// Start, start of measurement, and end of a closed-loop run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phases {
    /// Requests started from here on are recorded.
    pub measure_from: Instant,
    /// No request starts after this.
    pub end: Instant,
}

/// What one request will be.
enum Planned {
    Path(usize),
    Create(usize),
    Keyed(Op, Choice, Lease),
    Skip,
}

/// How a response counts.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Raced,
    Error(String),
}

/// Runs `concurrency` closed-loop workers until `phases.end`.
pub(super) async fn closed_loop(
    work: Arc<Workload>,
    concurrency: usize,
    phases: Phases,
) -> Result<Recorder, BenchError> {
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        workers.spawn(closed_worker(work.clone(), w, concurrency, phases));
    }
    join_all(workers).await
}

async fn closed_worker(work: Arc<Workload>, w: usize, stride: usize, phases: Phases) -> Recorder {
    let mut rng = Rng::derive(work.seed, w as u64);
    let (mut measured, mut warmup) = (Recorder::default(), Recorder::default());
    let mut turn = w as u64;
    loop {
        let started = Instant::now();
        if started >= phases.end {
            break;
        }
        let rec = if started >= phases.measure_from {
            &mut measured
        } else {
            &mut warmup
        };
        let sent = work.step(&mut rng, turn, started, rec).await;
        turn += stride as u64;
        if !sent {
            tokio::time::sleep(SKIP_PAUSE).await;
        }
    }
    measured
}

/// Runs the open-loop schedule with up to `concurrency` requests in flight; gives up on the
/// tickets left at `hard_stop`. Returns the measurements and the measured tickets never sent.
pub(super) async fn open_loop(
    work: Arc<Workload>,
    concurrency: usize,
    schedule: Schedule,
    start: Instant,
    hard_stop: Instant,
) -> Result<(Recorder, u64), BenchError> {
    let tickets = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (work, tickets) = (work.clone(), tickets.clone());
        workers.spawn(open_worker(work, schedule, tickets, start, hard_stop));
    }
    let recorder = join_all(workers).await?;
    let unsent = schedule
        .measured()
        .saturating_sub(recorder.counters.attempted);
    Ok((recorder, unsent))
}

async fn open_worker(
    work: Arc<Workload>,
    schedule: Schedule,
    tickets: Arc<AtomicU64>,
    start: Instant,
    hard_stop: Instant,
) -> Recorder {
    let (mut measured, mut warmup) = (Recorder::default(), Recorder::default());
    loop {
        let i = tickets.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if !schedule.contains(i) || now >= hard_stop {
            break;
        }
        let intended = start + schedule.at(i);
        let started = if now < intended {
            tokio::time::sleep_until(intended.into()).await;
            Instant::now()
        } else {
            intended
        };
        let rec = if schedule.is_measured(i) {
            &mut measured
        } else {
            &mut warmup
        };
        work.step(&mut Rng::derive(work.seed, i), i, started, rec)
            .await;
    }
    measured
}

async fn join_all(mut workers: JoinSet<Recorder>) -> Result<Recorder, BenchError> {
    let mut total = Recorder::default();
    while let Some(joined) = workers.join_next().await {
        total.merge(joined.map_err(|e| BenchError::Worker(e.to_string()))?);
    }
    Ok(total)
}

impl Workload {
    /// Plans and sends one request; false when no request could be sent (no live key).
    async fn step(&self, rng: &mut Rng, turn: u64, started: Instant, rec: &mut Recorder) -> bool {
        rec.counters.attempted += 1;
        let planned = self.plan(rng, turn);
        if !matches!(planned, Planned::Skip) {
            rec.sent(Instant::now());
        }
        match planned {
            Planned::Skip => {
                rec.counters.skipped += 1;
                return false;
            }
            Planned::Path(node) => self.send_path(node, started, rec).await,
            Planned::Create(node) => self.send_create(node, started, rec).await,
            Planned::Keyed(op, choice, lease) => {
                rec.counters.route_fallbacks += u64::from(choice.fallback);
                self.send_keyed(op, choice.node, lease, rng, started, rec)
                    .await;
            }
        }
        true
    }

    fn plan(&self, rng: &mut Rng, turn: u64) -> Planned {
        let round_robin = (turn % self.targets.len() as u64) as usize;
        let Some(mix) = &self.mix else {
            return Planned::Path(round_robin);
        };
        let op = mix.pick(rng);
        if !op.needs_key() {
            return Planned::Create(round_robin);
        }
        let slot = self.sampler.sample(rng);
        let lease = match op {
            Op::Delete => self.keys.retire(slot),
            _ => self.keys.lease(slot),
        };
        let Some(lease) = lease else {
            return Planned::Skip;
        };
        let choice = choose_node(self.route, lease.owner, self.targets.len(), turn);
        Planned::Keyed(op, choice, lease)
    }

    async fn send_path(&self, node: usize, started: Instant, rec: &mut Recorder) {
        let path = self.path.as_deref().unwrap_or("/health");
        let result = self.targets[node].client.get(path).await;
        record("path", 200, &result, started, rec, || false);
    }

    async fn send_create(&self, node: usize, started: Instant, rec: &mut Recorder) {
        let (n, email) = self.emails.next();
        let body = json!({"name": format!("Bench Customer {n}"), "email": email});
        let client = &self.targets[node].client;
        let result = client.json(Method::POST, "/v1/customers", &body, &[]).await;
        record(Op::Create.name(), 201, &result, started, rec, || false);
    }

    async fn send_keyed(
        &self,
        op: Op,
        node: usize,
        lease: Lease,
        rng: &mut Rng,
        started: Instant,
        rec: &mut Recorder,
    ) {
        let client = &self.targets[node].client;
        let path = format!("/v1/customers/{}", lease.id);
        let result = match op {
            Op::Update => {
                let name = format!("Bench Customer u{}", rng.below(1_000_000));
                let patch = json!({ "name": name });
                client.json(Method::PATCH, &path, &patch, &[]).await
            }
            Op::Delete => client.send(Method::DELETE, &path, None, &[]).await,
            // `plan` never makes a keyed create; a GET keeps this match total without a panic.
            Op::Get | Op::Create => client.get(&path).await,
        };
        let raced = || self.keys.changed_since(&lease);
        let ok = record(
            op.name(),
            op.expected_status(),
            &result,
            started,
            rec,
            raced,
        );
        if ok && op != Op::Delete {
            let owner = result.ok().and_then(|r| self.owner_index(&r));
            self.keys.note_owner(&lease, owner);
        }
        if op == Op::Delete {
            self.replace(lease.slot, client, rec).await;
        }
    }

    /// Refills a retired slot with a new customer (housekeeping: not a recorded latency).
    async fn replace(&self, slot: usize, client: &HttpClient, rec: &mut Recorder) {
        match create_keyed(client, &self.emails).await {
            Ok((id, owner)) => {
                let owner = owner.and_then(|o| self.by_name.get(&o).copied());
                self.keys.refill(slot, id, owner);
                rec.counters.replacements += 1;
            }
            Err((category, reason)) => {
                tracing::debug!(slot, %reason, "could not replace a deleted key");
                rec.count_error(&format!("replacement_{category}"));
            }
        }
    }

    fn owner_index(&self, response: &HttpResponse) -> Option<usize> {
        self.by_name.get(response.header(OWNER_NODE)?).copied()
    }
}

/// Records one response; returns whether it was a success.
fn record(
    op: &'static str,
    expected: u16,
    result: &Result<HttpResponse, ClientError>,
    started: Instant,
    rec: &mut Recorder,
    raced: impl FnOnce() -> bool,
) -> bool {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match classify(expected, result, raced) {
        Outcome::Ok => {
            rec.ok(op, micros);
            if let Ok(r) = result {
                count_service(r, rec);
            }
            true
        }
        Outcome::Raced => {
            rec.raced(op);
            false
        }
        Outcome::Error(category) => {
            rec.error(op, &category);
            false
        }
    }
}

/// Counts whether the owner served the request on the entry node.
fn count_service(r: &HttpResponse, rec: &mut Recorder) {
    if let (Some(owner), Some(entry)) = (r.header(OWNER_NODE), r.header(ENTRY_NODE)) {
        if owner == entry {
            rec.counters.served_locally += 1;
        } else {
            rec.counters.served_remotely += 1;
        }
    }
}

/// Success, an expected 404 after a concurrent delete, or an error category.
fn classify(
    expected: u16,
    result: &Result<HttpResponse, ClientError>,
    raced: impl FnOnce() -> bool,
) -> Outcome {
    match result {
        Ok(r) if r.status.as_u16() == expected => Outcome::Ok,
        Ok(r) if r.status.as_u16() == 404 && raced() => Outcome::Raced,
        other => Outcome::Error(error_category(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::{HeaderMap, StatusCode};

    fn response(status: u16) -> Result<HttpResponse, ClientError> {
        Ok(HttpResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Default::default(),
        })
    }

    #[test]
    fn the_expected_status_is_success_and_others_are_errors_by_code() {
        assert_eq!(classify(204, &response(204), || false), Outcome::Ok);
        assert_eq!(
            classify(200, &response(503), || false),
            Outcome::Error("http_503".into())
        );
        assert_eq!(
            classify(201, &response(200), || false),
            Outcome::Error("http_200".into())
        );
    }

    #[test]
    fn a_404_is_a_race_only_when_a_delete_changed_the_key() {
        assert_eq!(classify(200, &response(404), || true), Outcome::Raced);
        assert_eq!(
            classify(200, &response(404), || false),
            Outcome::Error("http_404".into())
        );
    }

    #[test]
    fn transport_failures_and_timeouts_are_told_apart() {
        let timeout = Err(ClientError::Timeout(
            "http://h".into(),
            Duration::from_secs(1),
        ));
        let refused = Err(ClientError::Connect {
            url: "http://h".into(),
            reason: "refused".into(),
        });
        assert_eq!(
            classify(200, &timeout, || false),
            Outcome::Error("timeout".into())
        );
        assert_eq!(
            classify(200, &refused, || false),
            Outcome::Error("transport".into())
        );
    }

    #[test]
    fn service_is_local_when_the_owner_is_the_entry_node() {
        let mut rec = Recorder::default();
        let mut r = response(200).unwrap();
        r.headers.insert(OWNER_NODE, "n1".parse().unwrap());
        r.headers.insert(ENTRY_NODE, "n1".parse().unwrap());
        count_service(&r, &mut rec);
        r.headers.insert(ENTRY_NODE, "n2".parse().unwrap());
        count_service(&r, &mut rec);
        count_service(&response(200).unwrap(), &mut rec);
        assert_eq!(
            (rec.counters.served_locally, rec.counters.served_remotely),
            (1, 1)
        );
    }
}
