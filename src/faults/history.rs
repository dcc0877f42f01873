//! The history-recording workload of the fault tests: concurrent clients doing create, get,
//! put, patch and delete on a few dozen customers through random entry nodes, every request
//! recorded as a checker [`Op`] (DESIGN.md §10).
//!
//! ```text
//!  Workload::start ── create every key ──▶ clients (one task each) ──▶ Recorder
//!        │                                  random key, call, entry     one monotonic
//!        │  probe(since, bound): every key read + written, timed         clock, every op
//!        └─ finish(): stop the clients, read every key once ──▶ History ──▶ checker
//! ```
//!
//! It records exactly as [`super::checker`] asks: `invoke` just before a request is sent and
//! `complete` just after its answer is read, both offsets from one [`Instant`] on this host;
//! every written value is unique (`c{client}-{seq}` in the `name` field); a create is recorded
//! under the id the client chose for it (the API takes client-chosen ids), so even a create
//! whose answer was lost names its key. Answers map to outcomes in one pure function,
//! [`outcome_of`]: 503/409/422 are refusals that say nothing, 404 and 412 say something about
//! the state, a timeout, a lost connection, a 504 or a 500 leave the operation indeterminate.
//! The run ends with one read of every key (retried through every entry until one answers),
//! so the checker can judge every acknowledged write.
//!
//! Retries: every write carries a fresh `Idempotency-Key` (one per request, not per attempt).
//! A write answered 503 (not applied) or left indeterminate (504, 500, timeout, connection
//! lost) is sent again — same key, same body — up to [`MAX_RETRIES`] times, after a pause that
//! grows by [`RETRY_BACKOFF`] per attempt, each time through the *next* entry node (the one that
//! failed may be the one cut off or frozen, and F4 promises the key is looked up globally). A
//! definite answer (success, 404, 412, 409, 422) ends the request. Every attempt is recorded as
//! its own operation with the key in [`Op::request`]; the checker folds the attempts of one
//! request into one operation ([`super::checker::fold_attempts`]), so a 504 followed by a
//! replayed 200 is one write, and a value written only by 503 attempts that a read returns is
//! a violation. [`History::retries`] counts them.
//!
//! Besides the checker's [`Op`]s, each request keeps what the checker does not need but a
//! fault test reports: the entry node it went through, the HTTP status, and the
//! `X-Owner-Node` of a success (to tell whether two owners acknowledged writes at once).
//!
//! The mix per client step: 40% get, 20% patch, 20% put (half of puts and patches carry
//! `If-Match` with the last version any client saw), 4% delete (half with `If-Match`),
//! 4% create (a fresh key while fewer than `keys` are believed live, else a create on an
//! existing id, which must be refused: a live id with other fields, or a tombstone, is 409),
//! the rest get. Keys are chosen among those believed live nine times in ten. Beliefs are
//! only hints for choosing; the checker never reads them.
//!
//! Deliberately not here: injecting faults (the test's nemesis does), retries of reads (a
//! read retried is simply a new operation), lists (§6 R2 promises nothing across items).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::checker::{Call, Op, Outcome, Refusal, Reply};
use crate::bench::sampler::Rng;
use crate::client::{ClientError, HttpClient, HttpResponse, customer_path};

/// A client's pause after an answer that was not a success, so a cluster that refuses at
/// once (503 in a few µs) is not flooded.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(20);

/// Most times a client sends a write again after a 503 or an indeterminate answer.
pub const MAX_RETRIES: u32 = 3;

/// The pause before retry `n` (1-based) is `n` times this.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// How long [`Workload::finish`] keeps trying to read each key before giving up on it.
pub const FINAL_READ_BOUND: Duration = Duration::from_secs(20);

/// Most keys a run ever creates, as a multiple of the live target (deleted keys are replaced
/// by fresh ones until then), so the final read stays bounded.
const MAX_KEYS_FACTOR: usize = 3;

/// How to run the workload.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Entry nodes (HTTP URLs); each request picks one at random.
    pub entries: Vec<String>,
    /// Bearer token, if the cluster requires one.
    pub token: Option<String>,
    /// Concurrent clients (tokio tasks), each with one request in flight.
    pub clients: usize,
    /// Customers kept live (created at start, replaced after deletes).
    pub keys: usize,
    /// Seed of every random choice (per client stream).
    pub seed: u64,
    /// Per-request client timeout; a request that exceeds it is recorded indeterminate.
    pub timeout: Duration,
}

impl HistoryConfig {
    /// Defaults for a 3-node test cluster: 6 clients, 24 keys, 2 s timeout.
    pub fn new(entries: Vec<String>, seed: u64) -> Self {
        Self {
            entries,
            token: None,
            clients: 6,
            keys: 24,
            seed,
            timeout: Duration::from_secs(2),
        }
    }
}

/// A request as the workload sends it; `value` goes in the `name` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `POST /v1/customers` with the key as the client-chosen id.
    Create {
        /// Name written.
        value: String,
        /// The key's email (one per key, so creates never collide on email).
        email: String,
    },
    /// `GET /v1/customers/{id}`.
    Get,
    /// `PUT` (full replace).
    Put {
        /// Name written.
        value: String,
        /// The key's email.
        email: String,
        /// `If-Match` version.
        if_match: Option<u64>,
    },
    /// `PATCH` of the name (JSON merge patch); recorded as a put of that name.
    Patch {
        /// Name written.
        value: String,
        /// `If-Match` version.
        if_match: Option<u64>,
    },
    /// `DELETE`.
    Delete {
        /// `If-Match` version.
        if_match: Option<u64>,
    },
}

impl Request {
    /// The checker's view of this request.
    pub fn call(&self) -> Call {
        match self {
            Request::Create { value, .. } => Call::Create {
                value: value.clone(),
            },
            Request::Get => Call::Get,
            Request::Put {
                value, if_match, ..
            }
            | Request::Patch { value, if_match } => Call::Put {
                value: value.clone(),
                if_match: *if_match,
            },
            Request::Delete { if_match } => Call::Delete {
                if_match: *if_match,
            },
        }
    }

    /// Whether the request writes (and so carries an `Idempotency-Key` and is retried).
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get)
    }

    fn if_match(&self) -> Option<u64> {
        match self {
            Request::Put { if_match, .. }
            | Request::Patch { if_match, .. }
            | Request::Delete { if_match } => *if_match,
            _ => None,
        }
    }
}

/// What the checker does not need about a request but a fault test reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Index of the entry node (into [`HistoryConfig::entries`]).
    pub entry: usize,
    /// HTTP status, `None` when no answer came (timeout, connection error).
    pub status: Option<u16>,
    /// `X-Owner-Node` of a successful answer.
    pub owner: Option<String>,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The checker's operation.
    pub op: Op,
    /// The rest.
    pub meta: Meta,
}

/// The shared record: one monotonic origin, every request in completion order.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    ops: Mutex<Vec<Recorded>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A record whose time 0 is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The instant every recorded time is measured from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Time since the origin (for marking faults on the history's time line).
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Sends `request` on `key` through `http` (entry number `entry`) as client `client`,
    /// records it, and returns the record.
    pub async fn send(
        &self,
        http: &HttpClient,
        entry: usize,
        client: u32,
        key: &str,
        request: &Request,
    ) -> Recorded {
        self.send_keyed(http, entry, client, key, request, None)
            .await
    }

    /// Like [`Recorder::send`], with the client's `Idempotency-Key` when one is given (the
    /// same key and body again is a retry of one request, DESIGN §6 F4).
    pub async fn send_keyed(
        &self,
        http: &HttpClient,
        entry: usize,
        client: u32,
        key: &str,
        request: &Request,
        idempotency_key: Option<&str>,
    ) -> Recorded {
        let invoke = self.now();
        let answer = send(http, key, request, idempotency_key).await;
        let complete = self.now();
        let (outcome, status, owner) = match &answer {
            Ok(r) => {
                let body: Option<Value> = r.json().ok();
                let outcome = outcome_of(request, r.status.as_u16(), body.as_ref());
                let owner = r.header("x-owner-node").map(str::to_owned);
                (outcome, Some(r.status.as_u16()), owner)
            }
            Err(_) => (Outcome::Info, None, None),
        };
        let recorded = Recorded {
            op: Op {
                client,
                key: key.to_owned(),
                call: request.call(),
                invoke,
                complete,
                outcome,
                request: idempotency_key.map(str::to_owned),
            },
            meta: Meta {
                entry,
                status,
                owner: owner.filter(|_| status.is_some_and(|s| (200..300).contains(&s))),
            },
        };
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(recorded.clone());
        }
        recorded
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> Vec<Recorded> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// The HTTP exchange of one request.
async fn send(
    http: &HttpClient,
    key: &str,
    request: &Request,
    idempotency_key: Option<&str>,
) -> Result<HttpResponse, ClientError> {
    let path = customer_path(key);
    let tag = request.if_match().map(|v| format!("\"{v}\""));
    let headers: Vec<(&str, &str)> = tag
        .iter()
        .map(|t| ("if-match", t.as_str()))
        .chain(idempotency_key.map(|k| ("idempotency-key", k)))
        .collect();
    match request {
        Request::Create { value, email } => {
            let body = json!({"id": key, "name": value, "email": email});
            http.json(Method::POST, "/v1/customers", &body, &headers)
                .await
        }
        Request::Get => http.get(&path).await,
        Request::Put { value, email, .. } => {
            let body = json!({"name": value, "email": email});
            http.json(Method::PUT, &path, &body, &headers).await
        }
        Request::Patch { value, .. } => {
            let body = json!({"name": value});
            http.json(Method::PATCH, &path, &body, &headers).await
        }
        Request::Delete { .. } => http.send(Method::DELETE, &path, None, &headers).await,
    }
}

/// What an HTTP answer means for the checker (the table in [`super::checker`]'s module doc).
/// A success whose body lacks what the call needs is indeterminate: something happened, but
/// the client cannot say what.
pub fn outcome_of(request: &Request, status: u16, body: Option<&Value>) -> Outcome {
    let version = body.and_then(|b| b["version"].as_u64());
    match (request, status) {
        (Request::Create { .. }, 200 | 201) => match version {
            Some(version) => Outcome::Ok(Reply::Created { version }),
            None => Outcome::Info,
        },
        (Request::Get, 200) => {
            let value = body.and_then(|b| b["name"].as_str());
            match (version, value) {
                (Some(version), Some(value)) => Outcome::Ok(Reply::Found {
                    version,
                    value: value.to_owned(),
                }),
                _ => Outcome::Info,
            }
        }
        (Request::Put { .. } | Request::Patch { .. }, 200) => match version {
            Some(version) => Outcome::Ok(Reply::Written { version }),
            None => Outcome::Info,
        },
        (Request::Delete { .. }, 200 | 204) => Outcome::Ok(Reply::Deleted),
        (Request::Get, 404) => Outcome::Ok(Reply::NotFound),
        (Request::Create { .. }, 404) => Outcome::Fail(Refusal::Rejected),
        (_, 404) => Outcome::Fail(Refusal::NotFound),
        (Request::Create { .. }, 412) => Outcome::Fail(Refusal::Rejected),
        (_, 412) => Outcome::Fail(Refusal::PreconditionFailed),
        (_, 400 | 409 | 422 | 503) => Outcome::Fail(Refusal::Rejected),
        _ => Outcome::Info,
    }
}

/// Whether a write's attempt is sent again with the same `Idempotency-Key`: it was answered
/// 503 (not applied, retry freely) or its outcome is unknown (504, 500, timeout, connection
/// lost, DESIGN §6). Any other answer is final.
pub fn is_retried(request: &Request, status: Option<u16>, outcome: &Outcome) -> bool {
    request.is_write() && (status == Some(503) || *outcome == Outcome::Info)
}

/// Whether an outcome is a definite answer about the key (the cluster served it).
pub fn is_served(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Ok(_) | Outcome::Fail(Refusal::NotFound | Refusal::PreconditionFailed)
    )
}

/// A whole run: the operations for the checker, in completion order, and their details.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every request.
    pub recorded: Vec<Recorded>,
    /// Every key the run used, in creation order.
    pub keys: Vec<String>,
    /// The entry URLs, for naming [`Meta::entry`].
    pub entries: Vec<String>,
}

impl History {
    /// The checker's operations.
    pub fn ops(&self) -> Vec<Op> {
        self.recorded.iter().map(|r| r.op.clone()).collect()
    }

    /// How the writers retried: requests sent more than once, and the attempts after the
    /// first.
    pub fn retries(&self) -> Retries {
        retries_of(&self.recorded)
    }

    /// 503 answers per entry URL (every entry listed, zeros included).
    pub fn unavailable_by_entry(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> =
            self.entries.iter().map(|e| (e.clone(), 0)).collect();
        for r in &self.recorded {
            if r.meta.status == Some(503)
                && let Some(e) = self.entries.get(r.meta.entry)
            {
                *out.entry(e.clone()).or_default() += 1;
            }
        }
        out
    }
}

/// How the writers retried in `recorded`: requests (by request id) sent more than once, and
/// the attempts after the first.
pub fn retries_of(recorded: &[Recorded]) -> Retries {
    let mut attempts: BTreeMap<(&str, &str), (usize, bool)> = BTreeMap::new();
    for r in recorded {
        if let Some(request) = &r.op.request {
            let entry = attempts
                .entry((r.op.key.as_str(), request.as_str()))
                .or_default();
            entry.0 += 1;
            entry.1 |= matches!(r.op.outcome, Outcome::Ok(_));
        }
    }
    let retried = attempts.values().filter(|(n, _)| *n > 1);
    Retries {
        requests: retried.clone().count(),
        attempts: retried.clone().map(|(n, _)| n - 1).sum(),
        acknowledged: retried.filter(|(_, ok)| *ok).count(),
    }
}

/// The writers' retries in a run ([`History::retries`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Retries {
    /// Write requests sent more than once (same `Idempotency-Key`).
    pub requests: usize,
    /// Attempts after the first, over those requests.
    pub attempts: usize,
    /// Retried requests that some attempt got a success for.
    pub acknowledged: usize,
}

impl std::fmt::Display for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} write requests retried ({} retry attempts), {} of them acknowledged",
            self.requests, self.attempts, self.acknowledged
        )
    }
}

/// Keys on which two owners took turns acknowledging writes: among the writes acknowledged
/// with an `X-Owner-Node` and completed within `[from, to]`, in completion order, an owner
/// acknowledges again after another owner had. One hand-over (A then B) is a move; A, B, A
/// means both were live owners at once. Returns each such key with its owner sequence.
pub fn interleaved_owners(
    recorded: &[Recorded],
    from: Duration,
    to: Duration,
) -> Vec<(String, Vec<String>)> {
    let mut writes: BTreeMap<&str, Vec<(Duration, &str)>> = BTreeMap::new();
    for r in recorded {
        let acked = matches!(
            r.op.outcome,
            Outcome::Ok(Reply::Created { .. } | Reply::Written { .. } | Reply::Deleted)
        );
        if let (true, Some(owner)) = (acked, &r.meta.owner)
            && (from..=to).contains(&r.op.complete)
        {
            let entry = writes.entry(r.op.key.as_str()).or_default();
            entry.push((r.op.complete, owner.as_str()));
        }
    }
    let mut out = Vec::new();
    for (key, mut acks) in writes {
        acks.sort();
        let mut runs: Vec<&str> = Vec::new();
        for (_, owner) in acks {
            if runs.last() != Some(&owner) {
                runs.push(owner);
            }
        }
        let returns = runs.iter().enumerate().any(|(i, o)| runs[..i].contains(o));
        if returns {
            out.push((key.to_owned(), runs.iter().map(|o| o.to_string()).collect()));
        }
    }
    out
}

/// The run's shared beliefs about keys: hints for choosing, never used to judge.
#[derive(Debug, Default)]
struct KeyBook {
    ids: Vec<String>,
    emails: Vec<String>,
    live: Vec<bool>,
    /// Last version any client saw per key (0 = none), for `If-Match`.
    seen: Vec<u64>,
}

impl KeyBook {
    fn add(&mut self, id: String, email: String) -> usize {
        self.ids.push(id);
        self.emails.push(email);
        self.live.push(false);
        self.seen.push(0);
        self.ids.len() - 1
    }

    fn live_count(&self) -> usize {
        self.live.iter().filter(|l| **l).count()
    }

    /// A key index: among believed-live keys nine times in ten, else any.
    fn pick(&self, rng: &mut Rng) -> usize {
        let live: Vec<usize> = (0..self.ids.len()).filter(|&i| self.live[i]).collect();
        if !live.is_empty() && rng.below(10) != 0 {
            live[rng.below(live.len() as u64) as usize]
        } else {
            rng.below(self.ids.len().max(1) as u64) as usize
        }
    }

    /// Updates beliefs from an answer.
    fn learn(&mut self, k: usize, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(Reply::Created { version } | Reply::Written { version })
            | Outcome::Ok(Reply::Found { version, .. }) => {
                self.live[k] = true;
                self.seen[k] = self.seen[k].max(*version);
            }
            Outcome::Ok(Reply::Deleted | Reply::NotFound) | Outcome::Fail(Refusal::NotFound) => {
                self.live[k] = false;
            }
            _ => {}
        }
    }
}

/// A run in progress: clients keep going until [`Workload::finish`].
pub struct Workload {
    config: HistoryConfig,
    http: Vec<HttpClient>,
    recorder: Arc<Recorder>,
    book: Arc<Mutex<KeyBook>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    run_tag: u64,
}

impl Workload {
    /// Creates `config.keys` customers (each retried through random entries until created)
    /// and starts the clients.
    pub async fn start(config: HistoryConfig) -> Result<Self, ClientError> {
        if config.entries.is_empty() {
            return Err(ClientError::Local(
                "the workload needs an entry node".into(),
            ));
        }
        let http = config
            .entries
            .iter()
            .map(|e| HttpClient::new(e, config.token.clone(), config.timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let mut workload = Self {
            run_tag: crate::bench::sampler::mix64(config.seed ^ crate::clock::now_ms())
                % 1_000_000_000,
            config,
            http,
            recorder: Arc::new(Recorder::new()),
            book: Arc::new(Mutex::new(KeyBook::default())),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        };
        workload.create_keys().await?;
        workload.spawn_clients();
        Ok(workload)
    }

    /// The record (shared with the clients).
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Time since the run's origin.
    pub fn now(&self) -> Duration {
        self.recorder.now()
    }

    /// The client id the workload uses for its own setup, probe and final reads (one past the
    /// last client).
    fn own_client(&self) -> u32 {
        self.config.clients as u32
    }

    async fn create_keys(&mut self) -> Result<(), ClientError> {
        let bound = Instant::now() + FINAL_READ_BOUND;
        for i in 0..self.config.keys {
            let k = self.new_key();
            let request = Request::Create {
                value: format!("init-{i}"),
                email: self.email_of(k),
            };
            let key = self.id_of(k);
            let request_id = format!("h{}-setup-{i}", self.run_tag);
            loop {
                let entry = i % self.http.len();
                let r = (self.recorder)
                    .send_keyed(
                        &self.http[entry],
                        entry,
                        self.own_client(),
                        &key,
                        &request,
                        Some(&request_id),
                    )
                    .await;
                // Any definite answer ends it; 503 and indeterminate answers are retried with
                // the same request id (a retry of an applied create gets the stored answer).
                if let Ok(mut book) = self.book.lock() {
                    book.learn(k, &r.op.outcome);
                }
                if matches!(r.op.outcome, Outcome::Ok(_)) {
                    break;
                }
                if Instant::now() > bound {
                    return Err(ClientError::Local(format!(
                        "could not create customer {key}: {:?}",
                        r.op.outcome
                    )));
                }
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
        }
        Ok(())
    }

    fn new_key(&self) -> usize {
        let id = uuid::Uuid::now_v7().to_string();
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let n = book.ids.len();
        book.add(id, format!("h{}-{n}@example.com", self.run_tag))
    }

    fn id_of(&self, k: usize) -> String {
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.ids[k].clone()
    }

    fn email_of(&self, k: usize) -> String {
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.emails[k].clone()
    }

    fn spawn_clients(&mut self) {
        for c in 0..self.config.clients {
            let client = Client {
                id: c as u32,
                rng: Rng::derive(self.config.seed, c as u64),
                http: self.http.clone(),
                recorder: self.recorder.clone(),
                book: self.book.clone(),
                stop: self.stop.clone(),
                seq: 0,
                keys: self.config.keys,
                run_tag: self.run_tag,
            };
            self.tasks.push(tokio::spawn(client.run()));
        }
    }

    /// Availability after a fault healed at `since` (a time from [`Workload::now`]): every
    /// key is read and then written (a patch), each request through the next entry node in
    /// turn, until both got a definite answer or `bound` passed since `since`. Returns, per
    /// key, when it was served (read and written), as time since `since`; `None` for a key
    /// never served. The probe's requests are recorded like any others.
    pub async fn probe(&self, since: Duration, bound: Duration) -> Vec<Option<Duration>> {
        let all: Vec<usize> = (0..self.http.len()).collect();
        self.probe_via(since, bound, &all).await
    }

    /// [`Workload::probe`] through `entries` only (indices into [`HistoryConfig::entries`]),
    /// e.g. the survivors while a node is down. Panics if `entries` is empty.
    pub async fn probe_via(
        &self,
        since: Duration,
        bound: Duration,
        entries: &[usize],
    ) -> Vec<Option<Duration>> {
        assert!(!entries.is_empty(), "a probe needs an entry node");
        let keys = self.book.lock().map(|b| b.ids.clone()).unwrap_or_default();
        let probes = keys.iter().enumerate().map(|(i, key)| async move {
            let deadline = since + bound;
            let mut read = false;
            let mut turn = i;
            let mut seq = 0;
            while self.now() < deadline {
                let entry = entries[turn % entries.len()];
                turn += 1;
                let request = if read {
                    seq += 1;
                    Request::Patch {
                        value: format!("probe-{i}-{seq}-{}", self.run_tag),
                        if_match: None,
                    }
                } else {
                    Request::Get
                };
                let r = self
                    .recorder
                    .send(&self.http[entry], entry, self.own_client(), key, &request)
                    .await;
                if is_served(&r.op.outcome) {
                    if read {
                        return Some(r.op.complete.saturating_sub(since));
                    }
                    read = true;
                } else {
                    tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
                }
            }
            None
        });
        futures::future::join_all(probes).await
    }

    /// Stops the clients, waits for their last requests, reads every key once (retrying
    /// through every entry until a definite answer, for at most [`FINAL_READ_BOUND`]) and
    /// returns the history.
    pub async fn finish(mut self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let keys = self.book.lock().map(|b| b.ids.clone()).unwrap_or_default();
        let this = &self;
        let reads = keys.iter().enumerate().map(|(i, key)| async move {
            let bound = Instant::now() + FINAL_READ_BOUND;
            let mut turn = i;
            while Instant::now() < bound {
                let entry = turn % this.http.len();
                turn += 1;
                let reader = this.own_client() + 1;
                let r = this
                    .recorder
                    .send(&this.http[entry], entry, reader, key, &Request::Get)
                    .await;
                if is_served(&r.op.outcome) {
                    return;
                }
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
        });
        futures::future::join_all(reads).await;
        History {
            recorded: self.recorder.snapshot(),
            keys,
            entries: self.config.entries.clone(),
        }
    }
}

impl Drop for Workload {
    /// A run dropped without [`Workload::finish`] (a failing test) stops its clients.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One client: a random request at a time until told to stop.
struct Client {
    id: u32,
    rng: Rng,
    http: Vec<HttpClient>,
    recorder: Arc<Recorder>,
    book: Arc<Mutex<KeyBook>>,
    stop: Arc<AtomicBool>,
    seq: u64,
    keys: usize,
    run_tag: u64,
}

impl Client {
    async fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let Some((k, key, request)) = self.next_request() else {
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
                continue;
            };
            let entry = self.rng.below(self.http.len() as u64) as usize;
            let outcome = self.send_with_retries(entry, k, &key, &request).await;
            if !matches!(outcome, Outcome::Ok(_)) {
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
        }
    }

    /// Sends `request` through `entry`; a write gets a fresh `Idempotency-Key` and is sent
    /// again with it (same body, next entry node) while [`is_retried`] says so, at most
    /// [`MAX_RETRIES`] times, and not once the run is stopping. Every attempt is recorded.
    /// Returns the last attempt's outcome.
    async fn send_with_retries(
        &mut self,
        mut entry: usize,
        k: usize,
        key: &str,
        request: &Request,
    ) -> Outcome {
        let request_id = request
            .is_write()
            .then(|| format!("h{}-c{}-{}", self.run_tag, self.id, self.seq));
        let mut retries = 0;
        loop {
            let r = (self.recorder)
                .send_keyed(
                    &self.http[entry],
                    entry,
                    self.id,
                    key,
                    request,
                    request_id.as_deref(),
                )
                .await;
            if let Ok(mut book) = self.book.lock() {
                book.learn(k, &r.op.outcome);
            }
            let again = is_retried(request, r.meta.status, &r.op.outcome)
                && retries < MAX_RETRIES
                && !self.stop.load(Ordering::SeqCst);
            if !again {
                return r.op.outcome;
            }
            retries += 1;
            tokio::time::sleep(RETRY_BACKOFF * retries).await;
            entry = (entry + 1) % self.http.len();
        }
    }

    /// The next key and request, from the mix in the module doc.
    fn next_request(&mut self) -> Option<(usize, String, Request)> {
        self.seq += 1;
        let value = format!("c{}-{}", self.id, self.seq);
        let dice = self.rng.below(100);
        let with_match = self.rng.below(2) == 0;
        let mut book = self.book.lock().ok()?;
        if book.ids.is_empty() {
            return None;
        }
        if (84..88).contains(&dice) {
            let fresh =
                book.live_count() < self.keys && book.ids.len() < self.keys * MAX_KEYS_FACTOR;
            let k = if fresh {
                let n = book.ids.len();
                let email = format!("h{}-{n}@example.com", self.run_tag);
                book.add(uuid::Uuid::now_v7().to_string(), email)
            } else {
                book.pick(&mut self.rng)
            };
            let request = Request::Create {
                value,
                email: book.emails[k].clone(),
            };
            return Some((k, book.ids[k].clone(), request));
        }
        let k = book.pick(&mut self.rng);
        let if_match = (with_match && book.seen[k] > 0).then_some(book.seen[k]);
        let request = match dice {
            40..60 => Request::Patch { value, if_match },
            60..80 => Request::Put {
                value,
                email: book.emails[k].clone(),
                if_match,
            },
            80..84 => Request::Delete { if_match },
            _ => Request::Get,
        };
        Some((k, book.ids[k].clone(), request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch() -> Request {
        Request::Patch {
            value: "c1-1".into(),
            if_match: Some(3),
        }
    }

    #[test]
    fn successes_carry_the_version_and_value_the_server_answered() {
        let body = json!({"id": "x", "name": "c1-1", "version": 4});
        assert_eq!(
            outcome_of(&Request::Get, 200, Some(&body)),
            Outcome::Ok(Reply::Found {
                version: 4,
                value: "c1-1".into()
            })
        );
        assert_eq!(
            outcome_of(&patch(), 200, Some(&body)),
            Outcome::Ok(Reply::Written { version: 4 })
        );
        let create = Request::Create {
            value: "v".into(),
            email: "e@example.com".into(),
        };
        assert_eq!(
            outcome_of(&create, 201, Some(&body)),
            Outcome::Ok(Reply::Created { version: 4 })
        );
        let delete = Request::Delete { if_match: None };
        assert_eq!(outcome_of(&delete, 204, None), Outcome::Ok(Reply::Deleted));
    }

    #[test]
    fn refusals_that_say_nothing_are_rejected_and_unknown_outcomes_are_indeterminate() {
        for status in [409, 422, 503] {
            assert_eq!(
                outcome_of(&patch(), status, None),
                Outcome::Fail(Refusal::Rejected),
                "{status}"
            );
        }
        for status in [500, 502, 504] {
            assert_eq!(
                outcome_of(&patch(), status, None),
                Outcome::Info,
                "{status}"
            );
        }
        assert_eq!(
            outcome_of(&patch(), 200, Some(&json!({}))),
            Outcome::Info,
            "a success without a version cannot be placed"
        );
    }

    #[test]
    fn not_found_and_precondition_failed_say_something_about_the_state() {
        assert_eq!(
            outcome_of(&Request::Get, 404, None),
            Outcome::Ok(Reply::NotFound)
        );
        assert_eq!(
            outcome_of(&patch(), 404, None),
            Outcome::Fail(Refusal::NotFound)
        );
        assert_eq!(
            outcome_of(&patch(), 412, None),
            Outcome::Fail(Refusal::PreconditionFailed)
        );
        assert!(is_served(&Outcome::Fail(Refusal::NotFound)));
        assert!(!is_served(&Outcome::Fail(Refusal::Rejected)));
        assert!(!is_served(&Outcome::Info));
    }

    #[test]
    fn a_patch_is_recorded_as_a_put_of_its_value_with_its_precondition() {
        assert_eq!(
            patch().call(),
            Call::Put {
                value: "c1-1".into(),
                if_match: Some(3)
            }
        );
    }

    #[test]
    fn keys_believed_live_are_picked_nine_times_in_ten() {
        let mut book = KeyBook::default();
        for i in 0..10 {
            book.add(format!("k{i}"), format!("{i}@example.com"));
        }
        book.live[3] = true;
        let mut rng = Rng::new(7);
        let picks: Vec<usize> = (0..1000).map(|_| book.pick(&mut rng)).collect();
        let live = picks.iter().filter(|&&k| k == 3).count();
        assert!((880..=960).contains(&live), "{live} of 1000");
    }

    fn acked_write(key: &str, at_ms: u64, owner: &str) -> Recorded {
        Recorded {
            op: Op {
                client: 0,
                key: key.into(),
                call: Call::Put {
                    value: format!("{key}-{at_ms}"),
                    if_match: None,
                },
                invoke: Duration::from_millis(at_ms),
                complete: Duration::from_millis(at_ms + 1),
                outcome: Outcome::Ok(Reply::Written { version: at_ms }),
                request: None,
            },
            meta: Meta {
                entry: 0,
                status: Some(200),
                owner: Some(owner.into()),
            },
        }
    }

    #[test]
    fn owners_taking_turns_on_a_key_are_reported_and_a_single_move_is_not() {
        let recorded = vec![
            acked_write("moved", 10, "n3"),
            acked_write("moved", 20, "n1"),
            acked_write("moved", 30, "n1"),
            acked_write("split", 10, "n2"),
            acked_write("split", 20, "n3"),
            acked_write("split", 30, "n2"),
            acked_write("late", 10, "n2"),
            acked_write("late", 20, "n3"),
            acked_write("late", 500, "n2"),
        ];
        let window = (Duration::ZERO, Duration::from_millis(100));
        let found = interleaved_owners(&recorded, window.0, window.1);
        assert_eq!(
            found,
            [(
                "split".to_owned(),
                vec!["n2".into(), "n3".into(), "n2".into()]
            )],
            "a write after the window does not count"
        );
    }

    #[test]
    fn unavailable_answers_are_counted_per_entry() {
        let rec = |entry, status| Recorded {
            op: Op {
                client: 0,
                key: "k".into(),
                call: Call::Get,
                invoke: Duration::ZERO,
                complete: Duration::ZERO,
                outcome: Outcome::Fail(Refusal::Rejected),
                request: None,
            },
            meta: Meta {
                entry,
                status,
                owner: None,
            },
        };
        let history = History {
            recorded: vec![
                rec(0, Some(503)),
                rec(1, Some(503)),
                rec(1, Some(503)),
                rec(1, None),
            ],
            keys: vec!["k".into()],
            entries: vec!["a".into(), "b".into(), "c".into()],
        };
        let by_entry = history.unavailable_by_entry();
        assert_eq!(by_entry["a"], 1);
        assert_eq!(by_entry["b"], 2);
        assert_eq!(by_entry["c"], 0);
    }

    #[test]
    fn writes_are_retried_after_a_503_or_an_unknown_outcome_and_reads_are_not() {
        let unavailable = outcome_of(&patch(), 503, None);
        assert!(is_retried(&patch(), Some(503), &unavailable));
        assert!(is_retried(&patch(), Some(504), &Outcome::Info));
        assert!(is_retried(&patch(), None, &Outcome::Info), "a timeout");
        let conflict = outcome_of(&patch(), 409, None);
        assert!(!is_retried(&patch(), Some(409), &conflict), "409 is final");
        let found = Outcome::Fail(Refusal::PreconditionFailed);
        assert!(!is_retried(&patch(), Some(412), &found));
        assert!(!is_retried(&Request::Get, Some(503), &unavailable));
    }

    /// One attempt of `request` on key "k" with request id "r1", recorded as the workload
    /// records it from the status (and body) that came back.
    fn attempt(
        request: &Request,
        span_ms: (u64, u64),
        status: Option<u16>,
        body: Value,
    ) -> Recorded {
        let outcome = match status {
            Some(status) => outcome_of(request, status, Some(&body)),
            None => Outcome::Info,
        };
        Recorded {
            op: Op {
                client: 1,
                key: "k".into(),
                call: request.call(),
                invoke: Duration::from_millis(span_ms.0),
                complete: Duration::from_millis(span_ms.1),
                outcome,
                request: request.is_write().then(|| "r1".to_owned()),
            },
            meta: Meta {
                entry: 0,
                status,
                owner: None,
            },
        }
    }

    fn history_of(recorded: Vec<Recorded>) -> History {
        History {
            recorded,
            keys: vec!["k".into()],
            entries: vec!["a".into()],
        }
    }

    #[test]
    fn a_504_then_a_replayed_200_checks_as_one_write_and_counts_as_one_retry() {
        let create = Request::Create {
            value: "x".into(),
            email: "x@example.com".into(),
        };
        let put = Request::Patch {
            value: "c1-1".into(),
            if_match: None,
        };
        let seen = json!({"name": "c1-1", "version": 2});
        let mut first = attempt(&create, (0, 1), Some(201), json!({"version": 1}));
        first.op.request = None;
        let history = history_of(vec![
            first,
            attempt(&put, (2, 3), Some(504), json!({})),
            attempt(&Request::Get, (4, 5), Some(200), seen.clone()),
            attempt(&put, (6, 7), Some(200), json!({"version": 2})),
            attempt(&Request::Get, (8, 9), Some(200), seen),
        ]);
        let report = crate::faults::checker::check(&history.ops());
        assert!(report.is_ok(), "{report}");
        assert_eq!(
            history.retries(),
            Retries {
                requests: 1,
                attempts: 1,
                acknowledged: 1
            }
        );
    }

    #[test]
    fn a_503_write_whose_value_is_read_later_fails_the_check() {
        let create = Request::Create {
            value: "x".into(),
            email: "x@example.com".into(),
        };
        let put = Request::Patch {
            value: "c1-1".into(),
            if_match: None,
        };
        let mut first = attempt(&create, (0, 1), Some(201), json!({"version": 1}));
        first.op.request = None;
        let seen = json!({"name": "c1-1", "version": 2});
        let history = history_of(vec![
            first,
            attempt(&put, (2, 3), Some(503), json!({})),
            attempt(&put, (10, 11), Some(503), json!({})),
            attempt(&Request::Get, (20, 21), Some(200), seen),
        ]);
        let report = crate::faults::checker::check(&history.ops());
        assert_eq!(report.not_linearizable(), 1, "{report}");
        assert_eq!(history.retries().acknowledged, 0);
    }
}
