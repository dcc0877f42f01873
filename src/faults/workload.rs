//! The failover workload: concurrent clients that keep writing and reading customers through
//! rotating entry nodes, and the record of what they saw.
//!
//! ```text
//!  ask every --nodes URL its name ─▶ create --customers customers (name "w0")
//!    ─▶ --concurrency workers + a membership watcher, for --duration-s
//!    ─▶ read every customer back: lost acknowledged writes, owners after
//!    ─▶ report (stdout, and JSON to --out)
//! ```
//!
//! Each customer is written by exactly one worker, sequentially, so "the last acknowledged
//! write" of a customer is well defined. Workers alternate a PATCH (name = next sequence
//! number) and a GET, through rotating entry nodes; an entry node that refuses connections or
//! does not answer is skipped for a while (what a client-side load balancer does), and that is
//! counted apart from errors that live nodes return.
//!
//! Checks while running: a GET that returns a version older than the last acknowledged one is
//! a *stale read*. Checks at the end: every customer's stored version and name must match its
//! last acknowledged write, else it counts as a *lost acknowledged write* ([`is_lost`]).
//!
//! Every request also goes through the history [`Recorder`] (creates with ids chosen here, a
//! fresh name for every write request so each value is written once), and the run ends by
//! checking that history with [`super::checker`]: a history that is not linearizable fails the
//! run like a stale read does. `--history FILE` saves it for `customer-cluster check-history`.
//!
//! Every PATCH carries an `Idempotency-Key` (the customer id and the name's sequence number,
//! so one per request and never reused across runs). A PATCH answered 503 or left
//! indeterminate is sent again with that key and body, up to [`MAX_RETRIES`] times, through
//! the next entry node in the rotation, after [`RETRY_BACKOFF`] times the retry's number —
//! the same rule as the fault tests' workload ([`super::history`]); each attempt is a sample
//! and a recorded operation of its own, and the checker judges the attempts as one request.
//! The report counts them (`retries`). A write still not answered after its retries is given
//! up, and the next write of that customer is a new request with the next name.
//!
//! Events (kill, restart, freeze, thaw, isolate, cut, heal) are appended by the driving script
//! to `--events` as `<unix_ms> <kind> <node>`; [`super::report`] measures around each one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;

use super::checker::{Outcome as OpOutcome, Reply, check, write_jsonl};
use super::history::{
    MAX_RETRIES, RETRY_BACKOFF, Recorded, Recorder, Request, is_retried, is_served, retries_of,
};
use super::report::{HistoryVerdict, Record, WorkloadReport, is_lost, parse_events, summarize};
use crate::client::{ClientError, HttpClient, HttpResponse, customer_path};
use crate::clock::now_ms;

/// How long a worker skips an entry node that did not answer, as a client-side load balancer
/// would.
const SKIP_UNREACHABLE: Duration = Duration::from_secs(2);
/// A worker's pause after a failed request before it tries the same step again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How often the watcher asks every node for its member list.
const WATCH_PERIOD: Duration = Duration::from_millis(100);
/// How long the watcher waits for one node's member list.
const WATCH_TIMEOUT: Duration = Duration::from_millis(300);

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
    /// Also save every request as a checker history (JSON Lines) in this file, for
    /// `customer-cluster check-history`. The history is checked either way.
    #[arg(long)]
    pub history: Option<PathBuf>,
}

/// One observed request.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    /// When the request was sent, ms since the Unix epoch.
    pub started_ms: u64,
    /// When its answer (or failure) arrived.
    pub at_ms: u64,
    /// Index of the customer (into the workload's customer list).
    pub customer: usize,
    /// A PATCH (else a GET).
    pub write: bool,
    /// What came back.
    pub outcome: Outcome,
    /// `X-Owner-Node` of a successful answer.
    pub owner: Option<String>,
}

/// What one request got back.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// Success (a write acknowledged, or a read at least as new as the last acknowledged
    /// write).
    Ok,
    /// A read older than the customer's last acknowledged write.
    Stale,
    /// An HTTP error from a live entry node.
    Http(u16),
    /// The entry node refused the connection or did not answer in time.
    EntryUnreachable,
}

/// Membership as one node reported it at one time.
#[derive(Debug, Clone)]
pub(super) struct Observation {
    /// When the watcher asked, ms since the Unix epoch.
    pub at_ms: u64,
    /// The node that answered.
    pub node: String,
    /// Its member list.
    pub members: Vec<String>,
}

/// A customer's last acknowledged write.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    name: String,
    version: u64,
}

/// What the workers and the watcher record, shared between their tasks.
struct Shared {
    /// Every request in checker form (creates, patches, reads, the final reads).
    recorder: Recorder,
    samples: Mutex<Vec<Sample>>,
    observations: Mutex<Vec<Observation>>,
    /// Indexed by customer; only the customer's own worker writes its entry.
    acked: Mutex<Vec<Acked>>,
}

impl Shared {
    fn new(acked: Vec<Acked>) -> Self {
        Self {
            recorder: Recorder::new(),
            samples: Mutex::new(Vec::new()),
            observations: Mutex::new(Vec::new()),
            acked: Mutex::new(acked),
        }
    }

    /// Id and last acknowledged version of a customer.
    fn acked_of(&self, customer: usize) -> (String, u64) {
        let a = self
            .acked
            .lock()
            .map(|a| (a[customer].id.clone(), a[customer].version));
        a.unwrap_or_default()
    }

    fn ack(&self, customer: usize, name: String, version: u64) {
        if let Ok(mut a) = self.acked.lock() {
            a[customer].name = name;
            a[customer].version = version;
        }
    }

    fn record(&self, sample: Sample) {
        if let Ok(mut s) = self.samples.lock() {
            s.push(sample);
        }
    }

    fn observe(&self, observation: Observation) {
        if let Ok(mut o) = self.observations.lock() {
            o.push(observation);
        }
    }

    fn acked_now(&self) -> Vec<Acked> {
        self.acked.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn samples_now(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn observations_now(&self) -> Vec<Observation> {
        let o = self.observations.lock().map(|o| o.clone());
        o.unwrap_or_default()
    }
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
    let shared = Arc::new(Shared::new(Vec::new()));
    let acked = create_customers(&clients, &shared.recorder, args.customers).await?;
    let owners_before = owners(&clients, &acked).await;
    if let Ok(mut a) = shared.acked.lock() {
        *a = acked;
    }
    let started_ms = now_ms();
    let stop_at = Instant::now() + Duration::from_secs(args.duration_s);
    eprintln!(
        "workload running: {} customers, {} workers, {} s",
        args.customers, args.concurrency, args.duration_s
    );
    drive(args, &clients, &names, &shared, stop_at).await;
    let final_acked = shared.acked_now();
    let lost = count_lost(&clients, &shared.recorder, &final_acked).await;
    let owners_after = owners(&clients, &final_acked).await;
    let record = Record {
        samples: shared.samples_now(),
        observations: shared.observations_now(),
        events: read_events(args.events.as_deref()),
        started_ms,
    };
    let mut report = summarize(&record, lost, owners_before, owners_after);
    let recorded = shared.recorder.snapshot();
    report.unavailable_by_entry = unavailable_by_entry(&recorded, &names);
    report.retries = retries_of(&recorded);
    let ops: Vec<_> = recorded.into_iter().map(|r| r.op).collect();
    if let Some(path) = &args.history {
        let file = std::fs::File::create(path)
            .map_err(|e| ClientError::Local(format!("writing {}: {e}", path.display())))?;
        write_jsonl(&ops, std::io::BufWriter::new(file))
            .map_err(|e| ClientError::Local(format!("writing {}: {e}", path.display())))?;
    }
    report.history = Some(HistoryVerdict::of(&check(&ops)));
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text)
            .map_err(|e| ClientError::Local(format!("writing {}: {e}", path.display())))?;
    }
    Ok(report)
}

/// Each entry node's name, as it says on `GET /v1/cluster`.
async fn node_names(clients: &[HttpClient]) -> Result<Vec<String>, ClientError> {
    let mut names = Vec::new();
    for c in clients {
        let v: Value = c.get("/v1/cluster").await?.ok()?.json()?;
        names.push(v["node"].as_str().unwrap_or("?").to_owned());
    }
    Ok(names)
}

/// Creates the workload's customers (name `w0`, emails tagged by run, ids chosen here so a
/// create whose answer was lost still names its customer), spread over the entry nodes; each
/// is retried through the next entry until created. Every attempt is recorded.
async fn create_customers(
    clients: &[HttpClient],
    recorder: &Recorder,
    n: usize,
) -> Result<Vec<Acked>, ClientError> {
    let run_tag = now_ms() % 1_000_000_000;
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let id = crate::customer::new_customer_id().to_string();
        let request = Request::Create {
            value: "w0".into(),
            email: format!("workload-{run_tag}-{i}@example.com"),
        };
        let r = until_served(clients, recorder, i, &id, &request).await;
        let version = match r.as_ref().map(|r| &r.op.outcome) {
            Some(OpOutcome::Ok(Reply::Created { version })) => *version,
            other => {
                return Err(ClientError::Decode(format!(
                    "creating customer {id}: {other:?}"
                )));
            }
        };
        acked.push(Acked {
            id,
            name: "w0".into(),
            version,
        });
    }
    Ok(acked)
}

/// Sends `request` through the entry nodes in turn (starting at `start`), recorded, until one
/// gives a definite answer; `None` when none did in 20 rounds.
async fn until_served(
    clients: &[HttpClient],
    recorder: &Recorder,
    start: usize,
    id: &str,
    request: &Request,
) -> Option<Recorded> {
    for k in 0..clients.len() * 20 {
        let entry = (start + k) % clients.len();
        let r = recorder
            .send(&clients[entry], entry, u32::MAX, id, request)
            .await;
        if is_served(&r.op.outcome) {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// 503 answers per entry node name.
fn unavailable_by_entry(recorded: &[Recorded], names: &[String]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
    for r in recorded.iter().filter(|r| r.meta.status == Some(503)) {
        if let Some(name) = names.get(r.meta.entry) {
            *out.entry(name.clone()).or_default() += 1;
        }
    }
    out
}

/// Runs the workers and the membership watcher until `stop_at`.
async fn drive(
    args: &WorkloadArgs,
    clients: &[HttpClient],
    names: &[String],
    shared: &Arc<Shared>,
    stop_at: Instant,
) {
    let workers = args.concurrency.max(1);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (clients, shared) = (clients.to_vec(), shared.clone());
        let mine = (0..args.customers).filter(|c| c % workers == w).collect();
        tasks.push(tokio::spawn(async move {
            Worker::new(&clients, &shared, mine, w).run(stop_at).await;
        }));
    }
    let watcher = {
        let (clients, names, shared) = (clients.to_vec(), names.to_vec(), shared.clone());
        tokio::spawn(async move { watch_membership(&clients, &names, &shared, stop_at).await })
    };
    for t in tasks {
        let _ = t.await;
    }
    let _ = watcher.await;
}

/// Sends through the entry nodes in turn (starting at `start`) until one answers.
async fn request_anywhere(
    clients: &[HttpClient],
    start: usize,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<HttpResponse, ClientError> {
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

/// One client: writes and reads its own customers in turn, one request at a time.
struct Worker<'a> {
    clients: &'a [HttpClient],
    shared: &'a Shared,
    /// The customers only this worker writes.
    mine: Vec<usize>,
    /// Per entry node: skipped until then (it did not answer).
    skip_until: Vec<Instant>,
    /// Rotates over the entry nodes, one step per request.
    entry: usize,
    /// Per customer: the sequence number of its last acknowledged write (`w<n>` names).
    seq: HashMap<usize, u64>,
    /// Counts successful steps: picks the customer, and write (even) or read (odd).
    turn: usize,
    /// The worker's number, its client id in the history.
    id: u32,
}

impl<'a> Worker<'a> {
    fn new(clients: &'a [HttpClient], shared: &'a Shared, mine: Vec<usize>, w: usize) -> Self {
        Self {
            clients,
            shared,
            mine,
            skip_until: vec![Instant::now(); clients.len()],
            entry: w,
            seq: HashMap::new(),
            turn: 0,
            id: w as u32,
        }
    }

    /// Steps until `stop_at`; a failed step is retried after a short pause.
    async fn run(mut self, stop_at: Instant) {
        while Instant::now() < stop_at && !self.mine.is_empty() {
            if self.step().await {
                self.turn += 1;
            } else {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// One request, recorded, with its retries (module doc); whether it succeeded. Every
    /// write request gets the next name, so each value is written by one request at most
    /// (what the history checker needs).
    async fn step(&mut self) -> bool {
        let customer = self.mine[self.turn % self.mine.len()];
        let write = self.turn.is_multiple_of(2);
        let (id, _) = self.shared.acked_of(customer);
        let (request, request_id) = if write {
            let next = self.seq.get(&customer).copied().unwrap_or(0) + 1;
            self.seq.insert(customer, next);
            let request = Request::Patch {
                value: format!("w{next}"),
                if_match: None,
            };
            (request, Some(format!("{id}-w{next}")))
        } else {
            (Request::Get, None)
        };
        let mut retries = 0;
        loop {
            let (ok, retry) = self
                .attempt(customer, &id, &request, request_id.as_deref())
                .await;
            if ok || !retry || retries == MAX_RETRIES {
                return ok;
            }
            retries += 1;
            tokio::time::sleep(RETRY_BACKOFF * retries).await;
        }
    }

    /// One attempt of `request` through the next entry node, recorded and sampled: whether it
    /// succeeded, and whether it should be sent again ([`is_retried`]).
    async fn attempt(
        &mut self,
        customer: usize,
        id: &str,
        request: &Request,
        request_id: Option<&str>,
    ) -> (bool, bool) {
        let write = request.is_write();
        let node = pick_entry(&self.skip_until, self.entry, Instant::now());
        self.entry += 1;
        let (_, acked_version) = self.shared.acked_of(customer);
        let started_ms = now_ms();
        let r = (self.shared.recorder)
            .send_keyed(&self.clients[node], node, self.id, id, request, request_id)
            .await;
        let retry = is_retried(request, r.meta.status, &r.op.outcome);
        let (outcome, owner) = match (r.meta.status, &r.op.outcome) {
            (None, _) => {
                self.skip_until[node] = Instant::now() + SKIP_UNREACHABLE;
                (Outcome::EntryUnreachable, None)
            }
            (Some(_), OpOutcome::Ok(Reply::Written { version } | Reply::Found { version, .. })) => {
                if let Request::Patch { value, .. } = request {
                    self.shared.ack(customer, value.clone(), *version);
                }
                (judge(write, *version, acked_version), r.meta.owner.clone())
            }
            (Some(status), _) => (Outcome::Http(status), None),
        };
        let ok = outcome == Outcome::Ok;
        self.shared.record(Sample {
            started_ms,
            at_ms: now_ms(),
            customer,
            write,
            outcome,
            owner,
        });
        (ok, retry)
    }
}

/// The entry node for the next request: the `rotation`-th of the nodes not skipped at `now`;
/// when every node is skipped, the `rotation`-th of all (some node has to be tried).
fn pick_entry(skip_until: &[Instant], rotation: usize, now: Instant) -> usize {
    let live: Vec<usize> = (0..skip_until.len())
        .filter(|i| skip_until[*i] <= now)
        .collect();
    if live.is_empty() {
        rotation % skip_until.len()
    } else {
        live[rotation % live.len()]
    }
}

/// A successful answer judged against the customer's last acknowledged version (as of the
/// request's start): a write is acknowledged; a read older than that version is stale.
fn judge(write: bool, version: u64, acked_version: u64) -> Outcome {
    if !write && version < acked_version {
        Outcome::Stale
    } else {
        Outcome::Ok
    }
}

/// Asks every node for its member list every [`WATCH_PERIOD`] until `stop_at`.
async fn watch_membership(
    clients: &[HttpClient],
    names: &[String],
    shared: &Shared,
    stop_at: Instant,
) {
    while Instant::now() < stop_at {
        let polls = clients.iter().zip(names).map(|(c, name)| async move {
            let r = tokio::time::timeout(WATCH_TIMEOUT, c.get("/v1/cluster")).await;
            let members = match r {
                Ok(Ok(r)) if r.status.is_success() => {
                    r.json::<Value>().ok().map(|v| member_names(&v))
                }
                _ => None,
            };
            (name.clone(), members)
        });
        let at_ms = now_ms();
        for (node, members) in futures::future::join_all(polls).await {
            if let Some(members) = members {
                shared.observe(Observation {
                    at_ms,
                    node,
                    members,
                });
            }
        }
        tokio::time::sleep(WATCH_PERIOD).await;
    }
}

/// The member names in a `GET /v1/cluster` body (none if it has no member list).
fn member_names(cluster: &Value) -> Vec<String> {
    let Some(members) = cluster["members"].as_array() else {
        return Vec::new();
    };
    members
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect()
}

/// Customers per owner node, read back now through any entry node.
async fn owners(clients: &[HttpClient], acked: &[Acked]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (i, a) in acked.iter().enumerate() {
        let path = customer_path(&a.id);
        if let Ok(r) = request_anywhere(clients, i, Method::GET, &path, None).await {
            let owner = r.header("x-owner-node").unwrap_or("?").to_owned();
            *out.entry(owner).or_default() += 1;
        }
    }
    out
}

/// How many customers lost their last acknowledged write ([`is_lost`]); a customer that
/// cannot be read back at all counts as lost. These final reads are recorded too: they are
/// what lets the checker judge every acknowledged write.
async fn count_lost(clients: &[HttpClient], recorder: &Recorder, acked: &[Acked]) -> usize {
    let mut lost = 0;
    for (i, a) in acked.iter().enumerate() {
        let read = until_served(clients, recorder, i, &a.id, &Request::Get).await;
        let Some(OpOutcome::Ok(Reply::Found { version, value })) = read.map(|r| r.op.outcome)
        else {
            lost += 1;
            continue;
        };
        if is_lost(&a.name, a.version, &value, version) {
            lost += 1;
        }
    }
    lost
}

/// The events the driving script appended (none if there is no file or it is unreadable).
fn read_events(path: Option<&Path>) -> Vec<super::report::Event> {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .map(|text| parse_events(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entries_rotate_over_the_nodes_that_are_not_skipped() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        let skip_until = [later, now, now];
        let picked: Vec<usize> = (0..4).map(|r| pick_entry(&skip_until, r, now)).collect();
        assert_eq!(picked, [1, 2, 1, 2]);
        assert_eq!(
            pick_entry(&skip_until, 0, later),
            0,
            "a skip ends when its time is up"
        );
    }

    #[test]
    fn when_every_entry_is_skipped_the_rotation_still_tries_one() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        assert_eq!(pick_entry(&[later, later, later], 4, now), 1);
    }

    #[test]
    fn only_a_read_older_than_the_last_acknowledged_write_is_stale() {
        assert_eq!(judge(false, 3, 4), Outcome::Stale);
        assert_eq!(judge(false, 4, 4), Outcome::Ok);
        assert_eq!(
            judge(false, 5, 4),
            Outcome::Ok,
            "a newer write may be in flight"
        );
        assert_eq!(judge(true, 5, 4), Outcome::Ok);
    }

    #[test]
    fn member_names_come_from_the_cluster_body() {
        let body = json!({"node": "n1", "members": [{"name": "n1"}, {"name": "n3"}, {}]});
        assert_eq!(member_names(&body), ["n1", "n3"]);
        assert!(member_names(&json!({"node": "n1"})).is_empty());
    }
}
