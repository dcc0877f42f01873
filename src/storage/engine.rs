//! Runs a [`Store`] on dedicated OS threads with group commit.
//!
//! * **Writer thread.** Owns the one writing connection and serves its queues in strict
//!   priority order, one transaction at a time (DESIGN §6 L2: a renew is never behind a
//!   queue of other work and never part of a write batch):
//!   1. **renews** ([`LeaseJob::Renew`]), each its own transaction — on SQLite only: on
//!      PostgreSQL a renew never reaches this thread (see *Renewer thread*);
//!   2. **other lease jobs** ([`LeaseJob`]: register, takeover, grant, release, clear), each
//!      its own short transaction;
//!   3. **settles** ([`LeaseJob::Settle`], F3): every settle already queued (up to
//!      `max_batch`) runs in one transaction, a savepoint each, and commits once (one fsync);
//!      each gets its own answer. A timed-out batch of 500 writes settles in one or two
//!      commits, not 500;
//!   4. **writes** ([`WriteJob`]): blocks for the first, drains whatever else is already queued
//!      (up to `max_batch`), applies the lot in one transaction, commits once (one fsync), and
//!      only then completes every write in the batch. Under load, batches grow by themselves and
//!      the fsync cost is shared; at low load a lone write commits immediately, so group commit
//!      adds no latency. `max_batch = 1` gives classic one-commit-per-write;
//!   5. **request-id pruning** (F4, [`super::prune`]) comes last: when a prune batch is due and
//!      no queue has anything, the writer removes at most one batch of expired request
//!      ids in its own transaction; a batch that has waited for an idle writer for a second
//!      runs between write batches, still never before a queued renew, lease job or settle.
//!
//!   Between two transactions the writer looks at the queues again from the top, so a renew
//!   waits for at most the one transaction in progress (on SQLite, milliseconds).
//!   Grants and fenced writes share this one connection, so a write's token check and its
//!   commit cannot be interleaved with a grant (F1 on SQLite).
//! * **The write queue is bounded** ([`EngineConfig::max_queued_writes`], default
//!   [`DEFAULT_MAX_QUEUED_WRITES`]): a write that finds it full is answered at once with
//!   `Unavailable` (503, nothing applied: it never reached the store) and counted in
//!   `customer_db_writes_shed_total`. An overload therefore sheds load instead of growing a
//!   queue whose tail would only commit after its callers' deadlines — as unknown outcomes
//!   that each cost a settle.
//! * **Renewer thread** (PostgreSQL only). Renews run on a thread of their own over a
//!   connection of their own (outside the pool), so a renew never waits for a batch in
//!   progress, a settle blocked on another node's row lock, or a free pooled connection. On
//!   SQLite there is one writer connection, so renews go first on the writer instead.
//! * **Reader threads.** Serve gets, lists and the lease table from read-only connections; WAL
//!   lets them run while the writer commits. A read issued after a write was acknowledged sees
//!   that write.
//!
//! Completion is a callback run on the storage thread; the database actor passes one that
//! sends on an RPC reply port (a non-blocking send), so no tokio worker ever waits on SQLite.
//!
//! Shutdown: dropping the [`Engine`] closes the queues; threads finish what was queued, then
//! exit. [`Engine::shutdown`] additionally waits for them.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};

use super::email_keys;
use super::postgres::{PostgresConfig, PostgresStore, redact_url};
use super::prune::{PruneConfig, Schedule};
use super::sqlite::SqliteStore;
use super::{
    Grant, Holder, Observed, Registration, Release, Renewal, RequestStamp, Settlement, ShardId,
    ShardLease, Store, Takeover, Write, WriteOp, WriteOutcome,
};
use crate::customer::{Customer, CustomerId};
use crate::error::{Error, Result};

/// Default upper bound on writes per transaction. Large enough that fsync cost is amortised
/// (measured: ~10x durable writes/s), small enough that one batch commits in milliseconds.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// Default bound of the write queue: 8 full batches. A SQLite batch of 512 commits in tens of
/// milliseconds and a PostgreSQL one in well under a second on a local network (about four
/// round trips per write), so a full queue drains within a fraction of the default request
/// timeout (5 s); a write that would wait longer is refused at once instead.
pub const DEFAULT_MAX_QUEUED_WRITES: usize = 8 * DEFAULT_MAX_BATCH;

/// Completion callback for a storage request, run on a storage thread.
pub type Done<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A queued write and what to do once it is durable.
pub struct WriteJob {
    /// The write, with its fence and request stamp.
    pub write: Write,
    /// Called after commit (or with the error that prevented it).
    pub done: Done<WriteOutcome>,
}

/// A queued lease or request-id operation: served before any queued write. Each variant is the
/// [`Store`] method of the same name; renews and settles have queues of their own (see the
/// module doc).
pub enum LeaseJob {
    /// [`Store::register`].
    Register {
        /// Node name.
        node: String,
        /// This process's incarnation.
        incarnation: u64,
        /// Completion.
        done: Done<Registration>,
    },
    /// [`Store::renew`].
    Renew {
        /// Who renews.
        me: Holder,
        /// Renew number.
        k: u64,
        /// The TTL (ms) the renewer runs with, recorded in its row (L4).
        ttl_ms: u64,
        /// Completion.
        done: Done<Renewal>,
    },
    /// [`Store::takeover`].
    Takeover {
        /// Who takes over.
        contender: Holder,
        /// The row observed unchanged for TTL.
        victim: Observed,
        /// Shards to grant.
        shards: Vec<ShardId>,
        /// Completion.
        done: Done<Takeover>,
    },
    /// [`Store::takeover_own_row`].
    TakeoverOwnRow {
        /// The new incarnation.
        incarnation: u64,
        /// The own row as observed unchanged for TTL.
        observed: Observed,
        /// Shards to grant.
        shards: Vec<ShardId>,
        /// Completion.
        done: Done<Takeover>,
    },
    /// [`Store::grant`].
    Grant {
        /// Who is granted.
        contender: Holder,
        /// Shards to grant.
        shards: Vec<ShardId>,
        /// Completion.
        done: Done<Grant>,
    },
    /// [`Store::release`].
    Release {
        /// The node releasing it: only its holder can.
        node: String,
        /// The shard.
        shard: ShardId,
        /// The token it is held at.
        token: u64,
        /// Completion.
        done: Done<Release>,
    },
    /// [`Store::clear_incarnation`].
    ClearIncarnation {
        /// Node name.
        node: String,
        /// This process's incarnation.
        incarnation: u64,
        /// Completion: true if cleared.
        done: Done<bool>,
    },
    /// [`Store::settle`].
    Settle {
        /// The request attempt whose outcome is unknown.
        stamp: RequestStamp,
        /// Completion.
        done: Done<Settlement>,
    },
}

impl LeaseJob {
    /// Runs the job on `store` and completes it.
    fn run(self, store: &mut dyn Store) {
        match self {
            Self::Register {
                node,
                incarnation,
                done,
            } => done(store.register(&node, incarnation)),
            Self::Renew {
                me,
                k,
                ttl_ms,
                done,
            } => done(store.renew(&me, k, ttl_ms)),
            Self::Takeover {
                contender,
                victim,
                shards,
                done,
            } => done(store.takeover(&contender, &victim, &shards)),
            Self::TakeoverOwnRow {
                incarnation,
                observed,
                shards,
                done,
            } => done(store.takeover_own_row(incarnation, &observed, &shards)),
            Self::Grant {
                contender,
                shards,
                done,
            } => done(store.grant(&contender, &shards)),
            Self::Release {
                node,
                shard,
                token,
                done,
            } => done(store.release(&node, shard, token)),
            Self::ClearIncarnation {
                node,
                incarnation,
                done,
            } => done(store.clear_incarnation(&node, incarnation)),
            Self::Settle { stamp, done } => done(store.settle(&stamp)),
        }
    }

    /// Completes the job with `err` without running it.
    fn fail(self, err: Error) {
        match self {
            Self::Register { done, .. } => done(Err(err)),
            Self::Renew { done, .. } => done(Err(err)),
            Self::Takeover { done, .. } | Self::TakeoverOwnRow { done, .. } => done(Err(err)),
            Self::Grant { done, .. } => done(Err(err)),
            Self::Release { done, .. } => done(Err(err)),
            Self::ClearIncarnation { done, .. } => done(Err(err)),
            Self::Settle { done, .. } => done(Err(err)),
        }
    }
}

/// A queued settle (F3), run with the other settles queued with it in one transaction.
pub struct SettleJob {
    /// The request attempt whose outcome is unknown.
    pub stamp: RequestStamp,
    /// Completion.
    pub done: Done<Settlement>,
}

/// A queued read.
pub enum ReadJob {
    /// Fetch one live customer.
    Get(CustomerId, Done<Option<Customer>>),
    /// Fetch one page ordered by id.
    List {
        /// Keyset cursor: return ids strictly greater.
        after: Option<CustomerId>,
        /// Rows to read, clamped to [`super::MAX_LIST_ROWS`].
        limit: u32,
        /// Completion.
        done: Done<Vec<Customer>>,
    },
    /// Every shard lease row, for routing and reconcile (committed values only).
    LeaseTable(Done<Vec<ShardLease>>),
    /// [`Store::ping`]: one round trip to the store, for liveness and `/ready`.
    Ping(Done<()>),
}

/// Which store the engine runs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// An embedded SQLite file: one writer connection, read-only reader connections. Not
    /// replicated, so exactly one node of a cluster may run it.
    Sqlite(PathBuf),
    /// A PostgreSQL server shared by every node: the writer and the readers take connections
    /// from one bounded pool.
    Postgres(PostgresConfig),
}

impl Backend {
    /// Whether several nodes may run a Database actor over this backend at once (they share
    /// one source of truth). False for SQLite: two files would each take writes the other
    /// never sees.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// A loggable description: the file, or the URL with its password redacted.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite {}", path.display()),
            Self::Postgres(pg) => format!("postgres {}", redact_url(pg.url.expose())),
        }
    }
}

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The store to run.
    pub backend: Backend,
    /// Most writes (and most settles) committed in one transaction; 1 disables group commit.
    pub max_batch: usize,
    /// Most writes waiting for the writer; a write beyond it is refused with `Unavailable`.
    pub max_queued_writes: usize,
    /// Number of reader threads (each with its own connection).
    pub readers: usize,
    /// How the writer prunes request ids (F4); `None` never prunes (tests of other things).
    pub prune: Option<PruneConfig>,
}

impl EngineConfig {
    /// A SQLite engine on `path` that prunes request ids as designed (24 h retention).
    pub fn sqlite(path: impl Into<PathBuf>, max_batch: usize, readers: usize) -> Self {
        Self {
            backend: Backend::Sqlite(path.into()),
            max_batch,
            max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
            readers,
            prune: Some(PruneConfig::default()),
        }
    }
}

/// Handle to the storage threads. Cheap to share by reference; submit never blocks.
pub struct Engine {
    renew_tx: Sender<LeaseJob>,
    lease_tx: Sender<LeaseJob>,
    settle_tx: Sender<SettleJob>,
    write_tx: Sender<WriteJob>,
    read_tx: Sender<ReadJob>,
    /// The writer first, then the renewer if there is one, then the readers.
    threads: Vec<JoinHandle<()>>,
    /// How many of `threads` write (the writer, and the renewer on PostgreSQL).
    writers: usize,
}

impl Engine {
    /// Opens the store (creating and migrating the file, or connecting to the server and
    /// migrating it) and starts the threads. Blocking: call from a blocking context.
    pub fn open(config: &EngineConfig) -> Result<Self> {
        let readers = config.readers.max(1);
        match &config.backend {
            Backend::Sqlite(path) => {
                let mut writer = SqliteStore::open(path)?;
                email_keys::report(&writer.email_key_conflicts()?);
                let readers = (0..readers)
                    .map(|_| SqliteStore::open_reader(path))
                    .collect::<Result<Vec<_>>>()?;
                let writer = Writer::new(writer, config);
                Self::start(writer, None, readers, config, path.clone())
            }
            Backend::Postgres(pg) => {
                let mut writer = PostgresStore::connect(pg)?;
                email_keys::report(&writer.email_key_conflicts()?);
                let renewer = writer.renewer(pg)?;
                let readers = vec![writer.clone(); readers];
                let writer = Writer::new(writer, config);
                Self::start(writer, Some(renewer), readers, config, PathBuf::new())
            }
        }
    }

    /// Starts the writer thread over `writer`, the renewer thread over `renewer` (else the
    /// writer serves renews first) and one reader thread per store in `readers`.
    /// `stall_key` names this engine for the test-only writer stall hook ([`stall`]).
    fn start<S: Store>(
        writer: Writer<S>,
        renewer: Option<S>,
        readers: Vec<S>,
        config: &EngineConfig,
        stall_key: PathBuf,
    ) -> Result<Self> {
        let (renew_tx, renew_rx) = crossbeam_channel::unbounded();
        let (lease_tx, lease_rx) = crossbeam_channel::unbounded();
        let (settle_tx, settle_rx) = crossbeam_channel::unbounded();
        let (write_tx, write_rx) = crossbeam_channel::bounded(config.max_queued_writes.max(1));
        let (read_tx, read_rx) = crossbeam_channel::unbounded();
        #[cfg(not(test))]
        let _ = stall_key;
        // With a renewer, the writer's renew queue is closed from the start.
        let (writer_renews, renewer_renews) = match renewer {
            Some(_) => (crossbeam_channel::unbounded().1, Some(renew_rx)),
            None => (renew_rx, None),
        };
        let queues = Queues {
            renews: writer_renews,
            leases: lease_rx,
            settles: settle_rx,
            writes: write_rx,
        };
        let mut threads = vec![spawn_named("db-writer", move || {
            #[cfg(test)]
            stall::bind(stall_key);
            write_loop(writer, &queues)
        })?];
        if let (Some(store), Some(rx)) = (renewer, renewer_renews) {
            threads.push(spawn_named("db-renewer", move || renew_loop(store, &rx))?);
        }
        let writers = threads.len();
        for (i, reader) in readers.into_iter().enumerate() {
            let rx = read_rx.clone();
            threads.push(spawn_named(&format!("db-reader-{i}"), move || {
                read_loop(reader, &rx)
            })?);
        }
        Ok(Self {
            renew_tx,
            lease_tx,
            settle_tx,
            write_tx,
            read_tx,
            threads,
            writers,
        })
    }

    /// Queues an unfenced write without a request id (the behaviour before leases); `done`
    /// runs once it is committed or failed, with the outcome flattened by
    /// [`WriteOutcome::into_result`].
    pub fn write(&self, op: WriteOp, done: Done<Option<Customer>>) {
        self.submit(
            op.into(),
            Box::new(move |r: Result<WriteOutcome>| done(r.and_then(WriteOutcome::into_result))),
        );
    }

    /// Queues a write with its fence and request stamp; `done` gets its full outcome once the
    /// batch committed (or the error that prevented the commit). A write that finds the queue
    /// full is answered at once with `Unavailable`: it was never queued, nothing was applied.
    pub fn submit(&self, write: Write, done: Done<WriteOutcome>) {
        match self.write_tx.try_send(WriteJob { write, done }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                metrics::counter!("customer_db_writes_shed_total").increment(1);
                (job.done)(Err(queue_full(self.write_tx.capacity().unwrap_or(0))));
            }
            Err(TrySendError::Disconnected(job)) => (job.done)(Err(stopped())),
        }
    }

    /// Queues a lease or request-id job; it runs before any write queued with it, a renew
    /// before anything else (see the module doc).
    pub fn lease(&self, job: LeaseJob) {
        let sent = match job {
            LeaseJob::Settle { stamp, done } => {
                if let Err(rejected) = self.settle_tx.send(SettleJob { stamp, done }) {
                    (rejected.0.done)(Err(stopped()));
                }
                return;
            }
            LeaseJob::Renew { .. } => self.renew_tx.send(job),
            _ => self.lease_tx.send(job),
        };
        if let Err(rejected) = sent {
            rejected.0.fail(stopped());
        }
    }

    /// Queues a read.
    pub fn read(&self, job: ReadJob) {
        if let Err(rejected) = self.read_tx.send(job) {
            match rejected.0 {
                ReadJob::Get(_, done) => done(Err(stopped())),
                ReadJob::List { done, .. } => done(Err(stopped())),
                ReadJob::LeaseTable(done) => done(Err(stopped())),
                ReadJob::Ping(done) => done(Err(stopped())),
            }
        }
    }

    /// Whether the writer thread (or the renewer) has stopped while the engine is open: it
    /// panicked (see `write_loop`); nothing more will be written until the engine is replaced.
    pub fn writer_stopped(&self) -> bool {
        self.threads[..self.writers]
            .iter()
            .any(JoinHandle::is_finished)
    }

    /// Closes the queues and waits until every queued request has been completed.
    pub fn shutdown(self) {
        drop(self.renew_tx);
        drop(self.lease_tx);
        drop(self.settle_tx);
        drop(self.write_tx);
        drop(self.read_tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn stopped() -> Error {
    Error::Unavailable("database is shutting down".into())
}

/// The answer to a write refused because `capacity` writes are already waiting. An
/// `Unavailable` whose text claims nothing about a call in flight: callers treat it as "not
/// applied" (503), never as an unknown outcome.
pub fn queue_full(capacity: usize) -> Error {
    Error::Unavailable(format!(
        "the database write queue is full ({capacity} writes waiting); nothing was applied, retry"
    ))
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new().name(name.into()).spawn(f)?)
}

/// Takes the next batch: blocks for one job, then drains what is already queued, up to `max`.
/// Returns `None` once the queue is closed and empty.
pub fn next_batch<T>(rx: &Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().ok()?;
    Some(fill(first, rx, max))
}

/// `first` plus whatever is already queued on `rx`, up to `max` in all.
fn fill<T>(first: T, rx: &Receiver<T>, max: usize) -> Vec<T> {
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    batch
}

/// What the writer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<R, L, S, W> {
    /// One renew, in its own transaction.
    Renew(R),
    /// One other lease job, in its own transaction.
    Lease(L),
    /// A batch of settles, in one transaction.
    Settles(Vec<S>),
    /// A batch of writes, in one transaction.
    Writes(Vec<W>),
    /// Nothing is queued and the deadline has passed: time for low-priority work (a prune).
    Idle,
}

/// The writer's queues, highest priority first.
pub struct Queues<R, L, S, W> {
    /// Renews (closed from the start when a renewer thread serves them).
    pub renews: Receiver<R>,
    /// Other lease jobs.
    pub leases: Receiver<L>,
    /// Settles.
    pub settles: Receiver<S>,
    /// Writes.
    pub writes: Receiver<W>,
}

impl<R, L, S, W> Queues<R, L, S, W> {
    /// Whether a renew, lease job or settle is waiting: work that goes before a prune.
    fn urgent(&self) -> bool {
        !(self.renews.is_empty() && self.leases.is_empty() && self.settles.is_empty())
    }
}

/// The writer's schedule, in strict priority: a queued renew, else another lease job, else a
/// batch of the settles already queued (up to `max`), else a batch of the writes already
/// queued (up to `max`); otherwise block until any queue has something. Returns `None` once
/// every queue is closed and empty.
pub fn next_job<R, L, S, W>(q: &Queues<R, L, S, W>, max: usize) -> Option<Next<R, L, S, W>> {
    next_job_until(q, max, None)
}

/// [`next_job`], but once `until` has passed with nothing queued, returns [`Next::Idle`]
/// instead of blocking on: every queued job goes before idle work.
pub fn next_job_until<R, L, S, W>(
    q: &Queues<R, L, S, W>,
    max: usize,
    until: Option<Instant>,
) -> Option<Next<R, L, S, W>> {
    loop {
        let renews_closed = match q.renews.try_recv() {
            Ok(job) => return Some(Next::Renew(job)),
            Err(e) => e.is_disconnected(),
        };
        let leases_closed = match q.leases.try_recv() {
            Ok(job) => return Some(Next::Lease(job)),
            Err(e) => e.is_disconnected(),
        };
        let settles_closed = match q.settles.try_recv() {
            Ok(first) => return Some(Next::Settles(fill(first, &q.settles, max))),
            Err(e) => e.is_disconnected(),
        };
        let writes_closed = match q.writes.try_recv() {
            Ok(first) => return Some(Next::Writes(fill(first, &q.writes, max))),
            Err(e) => e.is_disconnected(),
        };
        if renews_closed && leases_closed && settles_closed && writes_closed {
            return None;
        }
        if until.is_some_and(|t| Instant::now() >= t) {
            return Some(Next::Idle);
        }
        // Wait without taking anything, then take in priority order above. A closed queue is
        // left out: it would be "ready" at once, forever.
        let mut ready = Select::new();
        if !renews_closed {
            ready.recv(&q.renews);
        }
        if !leases_closed {
            ready.recv(&q.leases);
        }
        if !settles_closed {
            ready.recv(&q.settles);
        }
        if !writes_closed {
            ready.recv(&q.writes);
        }
        match until {
            Some(t) => {
                let _ = ready.ready_deadline(t);
            }
            None => {
                ready.ready();
            }
        }
    }
}

/// The writer's store and what it does besides serving jobs.
struct Writer<S> {
    store: S,
    /// Most writes per transaction (at least 1).
    max_batch: usize,
    /// When and how to prune request ids; `None` never prunes.
    prune: Option<Schedule>,
}

impl<S: Store> Writer<S> {
    fn new(store: S, config: &EngineConfig) -> Self {
        let prune = config.prune.clone().map(|p| {
            let first = jitter(p.max_jitter() * 2);
            Schedule::new(p, Instant::now(), first)
        });
        Self {
            store,
            max_batch: config.max_batch.max(1),
            prune,
        }
    }

    /// When the next prune batch is due, if this writer prunes.
    fn prune_due(&self) -> Option<Instant> {
        self.prune.as_ref().map(Schedule::due)
    }

    /// Whether a due prune batch has waited long enough for an idle writer.
    fn prune_starved(&self) -> bool {
        self.prune
            .as_ref()
            .is_some_and(|p| p.starved(Instant::now()))
    }

    /// Runs one prune batch (F4) and schedules the next. Returns false if the store panicked.
    fn prune_batch(&mut self) -> bool {
        let Some(schedule) = self.prune.as_mut() else {
            return true;
        };
        #[cfg(test)]
        stall::wait_while_stalled();
        let config = schedule.config().clone();
        let cutoff = config.cutoff(crate::clock::now_micros());
        let store = &mut self.store;
        let Some(result) = guarded("request prune", || {
            store.prune_requests(cutoff, config.batch())
        }) else {
            return false;
        };
        let now = Instant::now();
        let spread = jitter(config.max_jitter());
        let pass = match result {
            Ok(removed) => {
                metrics::counter!("customer_requests_pruned_total").increment(removed);
                schedule.batch_done(removed, now, spread)
            }
            Err(err) => {
                tracing::warn!(error = %err, "pruning expired request ids failed; retried at the next pass");
                Some(schedule.batch_failed(now, spread))
            }
        };
        if let Some(pass) = pass.filter(|p| p.removed > 0) {
            tracing::info!(
                removed = pass.removed,
                batches = pass.batches,
                retention_s = config.retention().as_secs(),
                "pruned request ids past their retention window"
            );
        }
        true
    }
}

/// A random duration below `max` (zero for zero), to spread the prune passes of several nodes.
fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    // A fresh RandomState is randomly keyed: enough randomness for spreading work.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_nanos(random % nanos)
}

/// The writer's queues as the engine fills them.
type WriterQueues = Queues<LeaseJob, LeaseJob, SettleJob, WriteJob>;

/// The writer thread. It returns when the queues close (shutdown) or after a panic in a job:
/// a store that panicked mid-statement is not trusted with the next one. The Database actor
/// notices the stopped writer ([`Engine::writer_stopped`]) and fails, and its supervisor
/// starts it again over a fresh engine.
fn write_loop<S: Store>(mut writer: Writer<S>, queues: &WriterQueues) {
    // Settles taken but not attempted by the last settle transaction (see
    // [`Store::settle_batch`]): they go before any newly queued settle.
    let mut carried: Vec<SettleJob> = Vec::new();
    loop {
        // A prune batch starved by a writer that is never idle goes between write batches,
        // but never before a queued renew, lease job or settle.
        if writer.prune_starved() && !queues.urgent() && carried.is_empty() {
            if !writer.prune_batch() {
                return;
            }
            continue;
        }
        let next = if carried.is_empty() || !queues.renews.is_empty() || !queues.leases.is_empty() {
            let until = writer.prune_due();
            let Some(next) = next_job_until(queues, writer.max_batch, until) else {
                return;
            };
            next
        } else {
            Next::Settles(Vec::new())
        };
        let survived = match next {
            Next::Renew(job) | Next::Lease(job) => {
                #[cfg(test)]
                stall::wait_while_stalled();
                #[cfg(test)]
                stall::count_transaction();
                // A panicking job drops its reply: its caller sees the request dropped and
                // treats it as failed (a lease operation never counts as done unanswered).
                guarded("lease job", || job.run(&mut writer.store)).is_some()
            }
            Next::Settles(batch) => {
                let mut jobs = std::mem::take(&mut carried);
                jobs.extend(batch);
                let room = writer.max_batch.saturating_sub(jobs.len());
                jobs.extend(queues.settles.try_iter().take(room));
                // Ascending request ids: two nodes' settle batches lock rows in one order.
                jobs.sort_by(|a, b| a.stamp.id.cmp(&b.stamp.id));
                settle_batch(&mut writer.store, jobs, &mut carried)
            }
            Next::Writes(batch) => write_batch(&mut writer.store, batch),
            Next::Idle => writer.prune_batch(),
        };
        if !survived {
            return;
        }
    }
}

/// The renewer thread (PostgreSQL): serves renews one at a time on a connection of its own.
/// Returns when the queue closes, or after a panic (see [`write_loop`]).
fn renew_loop<S: Store>(mut store: S, renews: &Receiver<LeaseJob>) {
    while let Ok(job) = renews.recv() {
        if guarded("renew", || job.run(&mut store)).is_none() {
            return;
        }
    }
}

/// Settles `jobs` in one transaction and answers each; jobs the store did not attempt go to
/// `carried`, to be settled next. Returns false if the store panicked: then every settle is
/// answered with an unknown outcome (`Timeout`: 504 for its request, which stays unsettled
/// and is settled again later).
fn settle_batch(
    store: &mut impl Store,
    jobs: Vec<SettleJob>,
    carried: &mut Vec<SettleJob>,
) -> bool {
    if jobs.is_empty() {
        return true;
    }
    let (stamps, dones): (Vec<RequestStamp>, Vec<Done<Settlement>>) =
        jobs.into_iter().map(|j| (j.stamp, j.done)).unzip();
    #[cfg(test)]
    stall::wait_while_stalled();
    #[cfg(test)]
    stall::count_transaction();
    let result = guarded("settle batch", || store.settle_batch(&stamps));
    let survived = result.is_some();
    match result.unwrap_or_else(|| {
        Err(Error::Timeout(
            "the storage writer panicked while settling".into(),
        ))
    }) {
        Ok(settled) if settled.is_empty() => {
            let err = Error::Internal("the store attempted none of a batch of settles".into());
            for done in dones {
                done(Err(err.clone()));
            }
        }
        Ok(settled) => {
            let mut pairs = stamps.into_iter().zip(dones);
            for (result, (_, done)) in settled.into_iter().zip(pairs.by_ref()) {
                done(result);
            }
            carried.extend(pairs.map(|(stamp, done)| SettleJob { stamp, done }));
        }
        Err(err) => {
            for done in dones {
                done(Err(err.clone()));
            }
        }
    }
    survived
}

/// Runs `f`, turning a panic into `None` and an error log line.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(what, panic = %why, "the storage writer panicked; it stops and the database actor restarts it");
            metrics::counter!("customer_db_writer_panics_total").increment(1);
            None
        }
    }
}

/// Commits one batch and answers every write in it. Returns false if the store panicked:
/// the batch's outcome is then unknown (it may have committed), so every write in it is
/// answered as such (F3: its owner settles the request id), never as "not applied".
fn write_batch(store: &mut impl Store, batch: Vec<WriteJob>) -> bool {
    let (writes, dones): (Vec<Write>, Vec<Done<WriteOutcome>>) =
        batch.into_iter().map(|j| (j.write, j.done)).unzip();
    #[cfg(test)]
    stall::wait_while_stalled();
    #[cfg(test)]
    stall::count_transaction();
    let started = Instant::now();
    let result = guarded("write batch", || {
        #[cfg(test)]
        stall::panic_if_asked();
        store.write_batch(&writes)
    });
    metrics::histogram!("customer_db_batch_size").record(writes.len() as f64);
    metrics::histogram!("customer_db_commit_seconds").record(started.elapsed().as_secs_f64());
    let survived = result.is_some();
    let result = result.unwrap_or_else(|| {
        Err(Error::Timeout(
            "the storage writer panicked during the commit".into(),
        ))
    });
    complete(result, dones);
    survived
}

fn complete(result: Result<Vec<WriteOutcome>>, dones: Vec<Done<WriteOutcome>>) {
    match result {
        Ok(outcomes) => {
            for (done, outcome) in dones.into_iter().zip(outcomes) {
                done(Ok(outcome));
            }
        }
        Err(Error::Timeout(why)) => {
            // The commit was sent and its answer lost: the batch may or may not have applied.
            tracing::error!(error = %why, writes = dones.len(), "database batch outcome unknown");
            metrics::counter!("customer_db_batch_unknown_total").increment(1);
            for done in dones {
                done(Err(Error::Timeout(format!(
                    "database write outcome unknown: {why}"
                ))));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, writes = dones.len(), "database batch failed; nothing in it was acknowledged");
            metrics::counter!("customer_db_batch_failures_total").increment(1);
            for done in dones {
                done(Err(Error::Unavailable(format!(
                    "database write failed: {err}"
                ))));
            }
        }
    }
}

/// Test-only fault hook (DESIGN §10 "stall the writer"): holds the writer of one database
/// file after it took a batch (or a lease job) and before it runs it, so a test can have a
/// write in flight past its deadline and let it commit later, or starve renews. Keyed by file, because tests of one binary run
/// many engines at once.
#[cfg(test)]
pub mod stall {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::Duration;

    static STALLED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

    thread_local! {
        static KEY: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }

    /// Stalls (or releases) the writer of the database at `path`.
    pub fn set(path: &Path, stalled: bool) {
        let mut set = STALLED.lock().unwrap_or_else(|p| p.into_inner());
        if stalled {
            set.insert(path.to_path_buf());
        } else {
            set.remove(path);
        }
    }

    pub(super) fn bind(path: PathBuf) {
        KEY.with(|k| *k.borrow_mut() = Some(path));
    }

    static PANIC_NEXT: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

    /// Makes the writer of the database at `path` panic in its next write batch.
    pub fn panic_next_batch(path: &Path) {
        let mut set = PANIC_NEXT.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(path.to_path_buf());
    }

    pub(super) fn panic_if_asked() {
        let Some(key) = KEY.with(|k| k.borrow().clone()) else {
            return;
        };
        let asked = PANIC_NEXT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        assert!(!asked, "test fault: the writer was asked to panic");
    }

    static TRANSACTIONS: Mutex<BTreeMap<PathBuf, u64>> = Mutex::new(BTreeMap::new());

    /// How many jobs (lease jobs, settle batches, write batches) the writer of the database at
    /// `path` has run, each one transaction.
    pub fn transactions(path: &Path) -> u64 {
        let map = TRANSACTIONS.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path).copied().unwrap_or(0)
    }

    pub(super) fn count_transaction() {
        let Some(key) = KEY.with(|k| k.borrow().clone()) else {
            return;
        };
        let mut map = TRANSACTIONS.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(key).or_default() += 1;
    }

    pub(super) fn wait_while_stalled() {
        let Some(key) = KEY.with(|k| k.borrow().clone()) else {
            return;
        };
        while STALLED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn read_loop(mut store: impl Store, rx: &Receiver<ReadJob>) {
    while let Ok(job) = rx.recv() {
        match job {
            ReadJob::Get(id, done) => done(store.get(&id)),
            ReadJob::List { after, limit, done } => done(store.list(after.as_ref(), limit)),
            ReadJob::LeaseTable(done) => done(store.lease_table()),
            ReadJob::Ping(done) => done(store.ping()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::{FieldsInput, new_customer_id, validate};
    use std::sync::mpsc;

    #[test]
    fn a_batch_takes_everything_already_queued_up_to_the_cap() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_batch(&rx, 4), Some(vec![0, 1, 2, 3]));
        assert_eq!(next_batch(&rx, 100), Some(vec![4, 5, 6, 7, 8, 9]));
        drop(tx);
        assert_eq!(next_batch(&rx, 100), None);
    }

    #[test]
    fn a_cap_of_one_means_one_commit_per_write() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(next_batch(&rx, 1), Some(vec![1]));
        assert_eq!(next_batch(&rx, 1), Some(vec![2]));
    }

    /// Test queues and their senders: renews, lease jobs, settles, writes.
    #[allow(clippy::type_complexity)]
    fn queues() -> (
        [Sender<&'static str>; 3],
        Sender<u32>,
        Queues<&'static str, &'static str, &'static str, u32>,
    ) {
        let (renew_tx, renews) = crossbeam_channel::unbounded();
        let (lease_tx, leases) = crossbeam_channel::unbounded();
        let (settle_tx, settles) = crossbeam_channel::unbounded();
        let (write_tx, writes) = crossbeam_channel::unbounded();
        let q = Queues {
            renews,
            leases,
            settles,
            writes,
        };
        ([renew_tx, lease_tx, settle_tx], write_tx, q)
    }

    #[test]
    fn renews_go_first_then_lease_jobs_then_settles_in_batches_then_writes() {
        let ([renew, lease, settle], write, q) = queues();
        for w in 0..5 {
            write.send(w).unwrap();
        }
        for s in ["s1", "s2", "s3"] {
            settle.send(s).unwrap();
        }
        lease.send("grant").unwrap();
        renew.send("renew").unwrap();
        assert_eq!(next_job(&q, 2), Some(Next::Renew("renew")));
        assert_eq!(next_job(&q, 2), Some(Next::Lease("grant")));
        assert_eq!(next_job(&q, 2), Some(Next::Settles(vec!["s1", "s2"])));
        // A renew that arrives while settles and writes are still queued goes before them.
        renew.send("renew 2").unwrap();
        assert_eq!(next_job(&q, 2), Some(Next::Renew("renew 2")));
        assert_eq!(next_job(&q, 2), Some(Next::Settles(vec!["s3"])));
        assert_eq!(next_job(&q, 3), Some(Next::Writes(vec![0, 1, 2])));
        renew.send("renew 3").unwrap();
        assert_eq!(next_job(&q, 3), Some(Next::Renew("renew 3")));
        assert_eq!(next_job(&q, 3), Some(Next::Writes(vec![3, 4])));
    }

    #[test]
    fn due_idle_work_waits_until_every_queue_is_empty() {
        let ([renew, lease, settle], write, q) = queues();
        let past = Some(Instant::now());
        write.send(1).unwrap();
        settle.send("settle").unwrap();
        renew.send("renew").unwrap();
        assert_eq!(next_job_until(&q, 8, past), Some(Next::Renew("renew")));
        assert_eq!(
            next_job_until(&q, 8, past),
            Some(Next::Settles(vec!["settle"]))
        );
        assert_eq!(next_job_until(&q, 8, past), Some(Next::Writes(vec![1])));
        assert_eq!(next_job_until(&q, 8, past), Some(Next::Idle));
        // Before the deadline the writer keeps waiting for work instead.
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(next_job_until(&q, 8, Some(soon)), Some(Next::Idle));
        assert!(Instant::now() >= soon);
        drop((renew, lease, settle, write));
        assert_eq!(next_job_until(&q, 8, past), None);
    }

    /// Rows of `applied_requests` in the SQLite file at `path`, read beside the engine.
    fn request_ids(path: &std::path::Path) -> Vec<String> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT request_id FROM applied_requests ORDER BY request_id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_running_engine_prunes_expired_request_ids_by_itself_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let retention = Duration::from_secs(60);
        let config = EngineConfig {
            prune: Some(PruneConfig::for_tests(
                retention,
                Duration::from_millis(20),
                2,
            )),
            ..EngineConfig::sqlite(&path, 8, 1)
        };
        let engine = Engine::open(&config).unwrap();
        let now = crate::clock::now_micros();
        let (tx, rx) = mpsc::channel();
        for i in 0..6 {
            // Five ids stored two retention windows ago, one just now.
            let at = if i < 5 { now - 2 * 60_000_000 } else { now };
            let fields = validate(FieldsInput {
                name: Some(format!("n{i}")),
                email: Some(format!("e{i}@x.io")),
                ..Default::default()
            })
            .unwrap();
            let write = Write {
                op: WriteOp::Insert(Customer::new(new_customer_id(), fields, 1)),
                fence: None,
                request: Some(RequestStamp {
                    id: format!("k{i}"),
                    body_hash: i,
                    attempt: 1,
                    at,
                }),
            };
            let tx = tx.clone();
            engine.submit(write, Box::new(move |r| tx.send(r).unwrap()));
        }
        for _ in 0..6 {
            assert!(matches!(
                rx.recv().unwrap(),
                Ok(WriteOutcome::Decided(Ok(_)))
            ));
        }
        // Nobody calls prune: the writer's own schedule removes the five, two at a time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while request_ids(&path) != ["k5"] {
            assert!(
                Instant::now() < deadline,
                "expired ids not pruned: {:?}",
                request_ids(&path)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        engine.shutdown();
    }

    /// How many request ids the SQLite file at `path` holds.
    fn count_request_ids(path: &std::path::Path) -> i64 {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("SELECT count(*) FROM applied_requests", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn renews_are_answered_promptly_while_a_large_backlog_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let retention = Duration::from_secs(60);
        let config = EngineConfig {
            // Batches of 500, 20 ms apart: 10 000 ids take 20 batches and at least 400 ms.
            prune: Some(PruneConfig::for_tests(
                retention,
                Duration::from_millis(20),
                500,
            )),
            // All 10 000 writes are submitted at once.
            max_queued_writes: 10_000,
            ..EngineConfig::sqlite(&path, 512, 1)
        };
        let engine = Engine::open(&config).unwrap();
        let me = register(&engine);
        // 10 000 ids that all expire about 3 s from now.
        let at = crate::clock::now_micros() - 57_000_000;
        let (tx, rx) = mpsc::channel();
        for i in 0..10_000_u64 {
            let tx = tx.clone();
            let fields = crate::storage::suite::fields("N", &format!("e{i}@x.io"));
            let write = Write {
                op: WriteOp::Insert(Customer::new(new_customer_id(), fields, 1)),
                fence: None,
                request: Some(RequestStamp {
                    id: format!("k{i}"),
                    body_hash: i,
                    attempt: 1,
                    at,
                }),
            };
            engine.submit(write, Box::new(move |r| tx.send(r).unwrap()));
        }
        for _ in 0..10_000 {
            assert!(rx.recv().unwrap().is_ok());
        }
        let (mut slowest, mut during_pruning) = (Duration::ZERO, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        for k in 1.. {
            let left = count_request_ids(&path);
            if left == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{left} ids never pruned");
            let (tx, rx) = mpsc::channel();
            let started = Instant::now();
            engine.lease(LeaseJob::Renew {
                me: me.clone(),
                k,
                ttl_ms: 2000,
                done: Box::new(move |r| tx.send(r).unwrap()),
            });
            assert!(matches!(rx.recv().unwrap(), Ok(Renewal::Renewed { .. })));
            if left < 10_000 {
                during_pruning += 1;
                slowest = slowest.max(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            during_pruning >= 10,
            "only {during_pruning} renews overlapped pruning"
        );
        // A renew waits behind one batch of 500 deletes at most: milliseconds.
        assert!(
            slowest < Duration::from_millis(250),
            "a renew waited {slowest:?} behind pruning"
        );
        engine.shutdown();
    }

    /// Registers node `n1` through `engine` and returns it as a holder.
    fn register(engine: &Engine) -> Holder {
        let (tx, rx) = mpsc::channel();
        engine.lease(LeaseJob::Register {
            node: "n1".into(),
            incarnation: 7,
            done: Box::new(move |r| tx.send(r).unwrap()),
        });
        let Ok(Registration::Registered { epoch }) = rx.recv().unwrap() else {
            panic!("register failed");
        };
        Holder {
            node: "n1".into(),
            incarnation: 7,
            epoch,
        }
    }

    /// Queues renew `k` of `me`; the receiver gets its answer and the time it came.
    fn queue_renew(
        engine: &Engine,
        me: &Holder,
        k: u64,
    ) -> mpsc::Receiver<(Result<Renewal>, Instant)> {
        let (tx, rx) = mpsc::channel();
        engine.lease(LeaseJob::Renew {
            me: me.clone(),
            k,
            ttl_ms: 2000,
            done: Box::new(move |r| tx.send((r, Instant::now())).unwrap()),
        });
        rx
    }

    /// Queues a settle of request `id` (attempt 1); its answer and time go to `tx`.
    fn queue_settle(engine: &Engine, id: &str, tx: &mpsc::Sender<(Result<Settlement>, Instant)>) {
        let tx = tx.clone();
        engine.lease(LeaseJob::Settle {
            stamp: RequestStamp {
                id: id.to_owned(),
                body_hash: 1,
                attempt: 1,
                at: crate::clock::now_micros(),
            },
            done: Box::new(move |r| tx.send((r, Instant::now())).unwrap()),
        });
    }

    /// An unfenced insert of a fresh customer, without a request id.
    fn some_write(i: usize) -> Write {
        let fields = crate::storage::suite::fields("N", &format!("w{i}@x.io"));
        WriteOp::Insert(Customer::new(new_customer_id(), fields, 1)).into()
    }

    /// The lease validity at the default timing, `TTL − m`.
    const VALIDITY: Duration = Duration::from_millis(1950);

    #[test]
    fn a_renew_queued_behind_a_thousand_settles_is_answered_long_before_the_lease_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let config = EngineConfig {
            prune: None,
            ..EngineConfig::sqlite(&path, DEFAULT_MAX_BATCH, 1)
        };
        let engine = Engine::open(&config).unwrap();
        let me = register(&engine);
        // A full batch timed out in a stalled writer: its owners settle every id in it, and
        // the node's next renew comes after them.
        stall::set(&path, true);
        let (wtx, wrx) = mpsc::channel();
        engine.submit(some_write(0), Box::new(move |r| wtx.send(r).unwrap()));
        std::thread::sleep(Duration::from_millis(50));
        let (stx, srx) = mpsc::channel();
        for i in 0..1000 {
            queue_settle(&engine, &format!("lost-{i}"), &stx);
        }
        let renew = queue_renew(&engine, &me, 1);
        let before = stall::transactions(&path);
        let released = Instant::now();
        stall::set(&path, false);
        let (renewed, renew_at) = renew.recv().unwrap();
        assert!(
            matches!(renewed, Ok(Renewal::Renewed { .. })),
            "{renewed:?}"
        );
        let mut last_settle = released;
        for _ in 0..1000 {
            let (settled, at) = srx.recv().unwrap();
            assert_eq!(settled, Ok(Settlement::Aborted));
            last_settle = last_settle.max(at);
        }
        assert!(wrx.recv().unwrap().is_ok());
        let (renew_latency, settles) = (renew_at - released, last_settle - released);
        eprintln!("renew behind 1000 settles: {renew_latency:?}; the settles took {settles:?}");
        assert!(
            renew_latency < Duration::from_millis(250),
            "the renew waited {renew_latency:?} (validity {VALIDITY:?})"
        );
        assert!(
            renew_at < last_settle,
            "the renew was answered only after every queued settle"
        );
        // The write, the renew, and the thousand settles in batches of at most 512.
        let transactions = stall::transactions(&path) - before;
        assert!(transactions <= 4, "{transactions} transactions");
        engine.shutdown();
    }

    #[test]
    fn queued_settles_share_one_transaction_and_one_that_fails_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let config = EngineConfig {
            prune: None,
            ..EngineConfig::sqlite(&path, DEFAULT_MAX_BATCH, 1)
        };
        let engine = Engine::open(&config).unwrap();
        let (stx, srx) = mpsc::channel();
        queue_settle(&engine, "taken", &stx);
        assert_eq!(srx.recv().unwrap().0, Ok(Settlement::Aborted));
        stall::set(&path, true);
        let (wtx, wrx) = mpsc::channel();
        engine.submit(some_write(0), Box::new(move |r| wtx.send(r).unwrap()));
        while !engine.write_tx.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        // "taken" again with another body: refused (422), without failing the others.
        let (btx, brx) = mpsc::channel();
        engine.lease(LeaseJob::Settle {
            stamp: RequestStamp {
                id: "taken".into(),
                body_hash: 2,
                attempt: 2,
                at: 0,
            },
            done: Box::new(move |r| btx.send(r).unwrap()),
        });
        for i in 0..100 {
            queue_settle(&engine, &format!("lost-{i}"), &stx);
        }
        let before = stall::transactions(&path);
        let released = Instant::now();
        stall::set(&path, false);
        assert!(wrx.recv().unwrap().is_ok());
        assert!(matches!(brx.recv().unwrap(), Err(Error::InvalidInput(_))));
        for _ in 0..100 {
            assert_eq!(srx.recv().unwrap().0, Ok(Settlement::Aborted));
        }
        let elapsed = released.elapsed();
        let transactions = stall::transactions(&path) - before;
        eprintln!(
            "101 queued settles: {transactions} transactions with the stalled write, {elapsed:?}"
        );
        assert_eq!(
            transactions, 2,
            "the write's batch and one for every settle"
        );
        assert_eq!(request_ids(&path).len(), 101);
        engine.shutdown();
    }

    #[test]
    fn a_write_that_finds_the_queue_full_is_refused_at_once_and_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let config = EngineConfig {
            prune: None,
            max_queued_writes: 4,
            ..EngineConfig::sqlite(&path, 8, 1)
        };
        let engine = Engine::open(&config).unwrap();
        stall::set(&path, true);
        let (tx, rx) = mpsc::channel();
        let submit = |write: Write| {
            let tx = tx.clone();
            let id = write.op.customer_id();
            engine.submit(write, Box::new(move |r| tx.send((id, r)).unwrap()));
        };
        // One write held by the stalled writer, four waiting: the queue is full.
        submit(some_write(0));
        while !engine.write_tx.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 1..=4 {
            submit(some_write(i));
        }
        assert!(rx.try_recv().is_err(), "a queued write was answered early");
        let started = Instant::now();
        submit(some_write(5));
        let (refused_id, refused) = rx.try_recv().expect("refused at once, not queued");
        eprintln!(
            "a write to a full queue was answered in {:?}",
            started.elapsed()
        );
        let Err(err) = refused else {
            panic!("a write beyond the bound was accepted: {refused:?}");
        };
        // That it reads as "not applied" to the routing layer is checked there
        // (`actors::gateway` tests), storage knowing nothing of actors.
        assert_eq!(err, queue_full(4), "{err:?}");
        stall::set(&path, false);
        for _ in 1..=5 {
            let (_, r) = rx.recv().unwrap();
            assert!(matches!(r, Ok(WriteOutcome::Decided(Ok(Some(_))))), "{r:?}");
        }
        let (gtx, grx) = mpsc::channel();
        engine.read(ReadJob::Get(
            refused_id,
            Box::new(move |r| gtx.send(r).unwrap()),
        ));
        assert_eq!(
            grx.recv().unwrap(),
            Ok(None),
            "the refused write was applied"
        );
        engine.shutdown();
    }

    #[test]
    fn a_renew_on_postgres_is_answered_while_a_queued_settle_waits_on_a_row_lock() {
        use crate::storage::postgres::testing::{Scratch, url};
        let Some(url) = url(module_path!()) else {
            return;
        };
        let scratch = Scratch::new(&url);
        let config = EngineConfig {
            backend: Backend::Postgres(scratch.config()),
            max_batch: DEFAULT_MAX_BATCH,
            max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
            readers: 1,
            prune: None,
        };
        let engine = Engine::open(&config).unwrap();
        let me = register(&engine);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Another node's batch claimed request `held` and has not committed: a settle of that
        // id waits for it (up to lock_timeout).
        let other = rt.block_on(async {
            let client = scratch.connect().await;
            client
                .batch_execute(
                    "BEGIN; INSERT INTO applied_requests
                        (request_id, customer_id, body_hash, attempt, result, applied_at)
                     VALUES ('held', NULL, 1, 1, NULL, 0)",
                )
                .await
                .unwrap();
            client
        });
        let (stx, srx) = mpsc::channel();
        for id in ["a-free", "held", "z-free"] {
            queue_settle(&engine, id, &stx);
        }
        std::thread::sleep(Duration::from_millis(50));
        let queued = Instant::now();
        let renew = queue_renew(&engine, &me, 1);
        let (renewed, renew_at) = renew.recv().unwrap();
        let renew_latency = renew_at - queued;
        let settled: Vec<_> = (0..3).map(|_| srx.recv().unwrap().0).collect();
        rt.block_on(other.batch_execute("ROLLBACK")).unwrap();
        eprintln!(
            "renew while a settle waits on a row lock: {renew_latency:?}; settles: {settled:?}"
        );
        assert!(
            matches!(renewed, Ok(Renewal::Renewed { .. })),
            "{renewed:?}"
        );
        assert!(
            renew_latency < Duration::from_millis(250),
            "the renew waited {renew_latency:?} behind a settle blocked on a row lock"
        );
        // The settle that waited out lock_timeout failed alone; the others committed.
        let aborted = settled
            .iter()
            .filter(|s| **s == Ok(Settlement::Aborted))
            .count();
        assert_eq!(aborted, 2, "{settled:?}");
        assert!(
            settled
                .iter()
                .any(|s| matches!(s, Err(Error::Unavailable(_)))),
            "{settled:?}"
        );
        let stored: i64 = rt.block_on(async {
            let client = scratch.connect().await;
            client
                .query_one(
                    "SELECT count(*) FROM applied_requests WHERE request_id IN ('a-free', 'z-free')",
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        });
        assert_eq!(stored, 2);
        engine.shutdown();
    }

    #[test]
    fn the_default_engine_keeps_request_ids_for_a_day() {
        let config = EngineConfig::sqlite("unused.db", 8, 1);
        assert_eq!(
            config.prune.map(|p| p.retention()),
            Some(super::super::prune::MIN_RETENTION)
        );
    }

    #[test]
    fn the_writer_drains_every_queue_before_it_stops() {
        let ([renew, lease, settle], write, q) = queues();
        write.send(1).unwrap();
        settle.send("settle").unwrap();
        drop((renew, lease, settle, write));
        assert_eq!(next_job(&q, 8), Some(Next::Settles(vec!["settle"])));
        assert_eq!(next_job(&q, 8), Some(Next::Writes(vec![1])));
        assert_eq!(next_job(&q, 8), None);
    }

    #[test]
    fn the_writer_waits_for_whichever_queue_fills_first() {
        let ([renew, lease, settle], write, q) = queues();
        // A writer without renews (a renewer thread serves them) starts with that queue closed.
        drop(renew);
        let sender = std::thread::spawn(move || {
            settle.send("settle").unwrap();
            (lease, settle, write)
        });
        assert_eq!(next_job(&q, 8), Some(Next::Settles(vec!["settle"])));
        drop(sender.join().unwrap());
        assert_eq!(next_job(&q, 8), None);
    }

    #[test]
    fn lease_jobs_and_fenced_writes_share_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&EngineConfig::sqlite(dir.path().join("l.db"), 8, 1)).unwrap();
        let me = register(&engine);
        let (tx, rx) = mpsc::channel();
        engine.lease(LeaseJob::Grant {
            contender: me,
            shards: vec![3],
            done: Box::new(move |r| tx.send(r).unwrap()),
        });
        let Ok(Grant::Granted(granted)) = rx.recv().unwrap() else {
            panic!("grant failed");
        };
        let token = granted[0].token;
        let fields = validate(FieldsInput {
            name: Some("A".into()),
            email: Some("a@x.io".into()),
            ..Default::default()
        })
        .unwrap();
        let c = Customer::new(new_customer_id(), fields, 1);
        let (tx, rx) = mpsc::channel();
        for t in [token - 1, token] {
            let tx = tx.clone();
            let write = Write {
                op: WriteOp::Insert(c.clone()),
                fence: Some(super::super::Fence { shard: 3, token: t }),
                request: None,
            };
            engine.submit(write, Box::new(move |r| tx.send(r).unwrap()));
        }
        assert!(matches!(
            rx.recv().unwrap(),
            Ok(WriteOutcome::Fenced { .. })
        ));
        assert_eq!(rx.recv().unwrap(), Ok(WriteOutcome::Decided(Ok(Some(c)))));
        let (tx, rx) = mpsc::channel();
        engine.read(ReadJob::LeaseTable(Box::new(move |r| tx.send(r).unwrap())));
        let table = rx.recv().unwrap().unwrap();
        assert_eq!(table[3].holder.as_deref(), Some("n1"));
        engine.shutdown();
    }

    #[test]
    fn a_failed_batch_fails_every_write_in_it() {
        let (tx, rx) = mpsc::channel();
        let dones: Vec<Done<WriteOutcome>> = (0..3)
            .map(|_| {
                let tx = tx.clone();
                Box::new(move |r: Result<WriteOutcome>| tx.send(r).unwrap()) as Done<_>
            })
            .collect();
        complete(Err(Error::Internal("disk full".into())), dones);
        let results: Vec<_> = rx.try_iter().collect();
        assert_eq!(results.len(), 3);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(Error::Unavailable(_))))
        );
    }

    #[test]
    fn a_batch_whose_commit_outcome_is_unknown_is_reported_as_timeout_not_unavailable() {
        let (tx, rx) = mpsc::channel();
        let dones: Vec<Done<WriteOutcome>> = (0..2)
            .map(|_| {
                let tx = tx.clone();
                Box::new(move |r: Result<WriteOutcome>| tx.send(r).unwrap()) as Done<_>
            })
            .collect();
        complete(
            Err(Error::Timeout("connection lost at COMMIT".into())),
            dones,
        );
        let results: Vec<_> = rx.try_iter().collect();
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| matches!(r, Err(Error::Timeout(_)))));
    }

    #[test]
    fn writes_are_acknowledged_after_commit_and_visible_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&EngineConfig::sqlite(dir.path().join("e.db"), 64, 2)).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut ids = Vec::new();
        for i in 0..200 {
            let fields = validate(FieldsInput {
                name: Some(format!("n{i}")),
                email: Some(format!("e{i}@x.io")),
                ..Default::default()
            })
            .unwrap();
            let c = Customer::new(new_customer_id(), fields, 1);
            ids.push(c.id);
            let tx = tx.clone();
            engine.write(WriteOp::Insert(c), Box::new(move |r| tx.send(r).unwrap()));
        }
        for _ in 0..200 {
            assert!(rx.recv().unwrap().unwrap().is_some());
        }
        let (rtx, rrx) = mpsc::channel();
        for id in &ids {
            let rtx = rtx.clone();
            engine.read(ReadJob::Get(*id, Box::new(move |r| rtx.send(r).unwrap())));
        }
        for _ in 0..200 {
            assert!(rrx.recv().unwrap().unwrap().is_some());
        }
        engine.shutdown();
    }
}
