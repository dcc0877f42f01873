//! The PostgreSQL store: every node runs its own engine over one shared server, so there is no
//! database node whose loss stops the cluster (DESIGN §5).
//!
//! ## Bridging a synchronous trait to an async driver
//!
//! [`Store`] is synchronous and runs on the engine's dedicated threads. The driver is
//! `tokio-postgres` (the maintained PostgreSQL driver, with pipelining) behind a
//! `deadpool-postgres` pool (bounded size, wait timeout, reconnects by itself). Each engine
//! owns one small tokio runtime ([`PgRuntime`], one worker thread, `pg-io`) that drives the
//! connections; the writer and reader threads `block_on` its handle. Nothing here ever runs
//! on the node's own runtime, so a slow server can never block a tokio worker of the node,
//! and the node's runtime never has to drive a connection. (The synchronous `postgres` crate
//! would hide the same thing — a private runtime per *connection* — and has no pool with a
//! wait timeout.)
//!
//! ## A write batch (DESIGN §6 F1, F2)
//!
//! ```text
//!  pool.get (≤ pool_wait, else Unavailable)
//!  BEGIN (READ COMMITTED)
//!  SELECT … FROM shard_leases WHERE shard = ANY(fenced shards) ORDER BY shard FOR SHARE ┐ one
//!  SELECT id FROM customers WHERE id = ANY(ids) ORDER BY id FOR UPDATE                 ┘ round trip
//!  per write:  SAVEPOINT + claim request id                        (one round trip)
//!              fence check against the tokens locked above          (no round trip)
//!              compare-and-set (update: one; insert: read + insert)  (one or two)
//!              store the result + RELEASE, or ROLLBACK TO           (one)
//!  COMMIT
//! ```
//!
//! * Rows are locked in ascending (shard, id) order before any write touches them, the same
//!   order grants lock shards, so batches and grants of different nodes never deadlock.
//! * The shard rows are read `FOR SHARE`, not `FOR KEY SHARE`: a grant's `UPDATE` takes a
//!   `FOR NO KEY UPDATE` lock, which conflicts with the former and not with the latter. So a
//!   grant that comes after a batch checked its token waits until that batch committed; the
//!   token a write checked cannot change before it commits, as on SQLite's single writer.
//! * A fenced write, a version miss and a unique violation are per-write outcomes (the
//!   update's statement runs in a nested savepoint because a failed statement aborts its
//!   transaction in PostgreSQL).
//! * `lock_timeout` and `idle_in_transaction_session_timeout` are set on every connection
//!   (min(1000 ms, TTL/2), [`PostgresConfig::for_lease`]): a frozen holder's open transaction
//!   cannot block a takeover for longer than that, and no batch waits on a lock forever.
//!
//! ## Renews and settles
//!
//! A renew runs on a connection of its own ([`PostgresStore::renewer`], used by the engine's
//! renewer thread), never behind a batch or a settle on the writer's connection, with its own
//! deadline `(TTL − m)/2`: a renew answered in time leaves at least half of the validity it
//! earns, one that is not has failed long before the holder lapses. Settles queued together
//! run in one transaction with a savepoint each ([`Store::settle_batch`]), in ascending request
//! id order so two nodes' settle batches lock rows in one order. A settle may wait up to
//! `lock_timeout` on another node's uncommitted claim; when it times out, only its savepoint
//! rolls back. A batch stops taking settles after `(op_timeout − lock_timeout)/2` so that it
//! commits within `op_timeout`; the rest go into the next one. (A settle batch holding the
//! rows it settled while it waits on a claim can deadlock with the claiming batch if that
//! batch reaches one of those rows later; the server breaks it by cancelling one statement:
//! a settle fails alone (504, settled again later), or the write batch fails before commit
//! (503, nothing applied). By the time an entry node settles, the claiming batch has usually
//! passed its own deadline.)
//! * **Errors.** Anything that fails before `COMMIT` was sent returns `Err(Unavailable)` for
//!   the batch and nothing in it was applied (the connection is discarded, so the server rolls
//!   back). An error *at or after* `COMMIT` — the connection lost, the server gone, the
//!   operation deadline passed while the commit was in flight — returns `Err(Timeout)`:
//!   **outcome unknown**. Callers must treat `Timeout` as "may have applied" (504; the owner
//!   settles the request id, F3), never as "not applied".
//!
//! Statements are pipelined where no answer is needed in between (tokio-postgres sends
//! requests polled together in one go, and the server runs them in order). Steps of one write
//! that depend on an earlier answer (a replayed id must not apply, a fenced write must not
//! touch the row) wait for it, so a write costs about four round trips; pipelining the writes
//! of a batch against each other is not done.
//!
//! ## Availability
//!
//! Every operation has a deadline ([`PostgresConfig::op_timeout`]). With the server down,
//! restarting or unreachable, operations answer `Unavailable` within it (connection refused is
//! immediate; a silent server costs `connect_timeout`), nothing restarts, and the pool opens
//! fresh connections once the server is back. A connection that failed mid-operation is
//! dropped rather than returned to the pool.
//!
//! Deliberately not here: TLS to the server (use a local socket or a TLS-terminating proxy
//! such as pgbouncer; adding `postgres-rustls` is a contained change in [`PostgresStore::connect`]),
//! and any HA of PostgreSQL itself (streaming replication with synchronous commit, or a
//! Postgres-compatible distributed SQL engine, is the path beyond one machine).

mod leases;
pub mod migrations;
mod requests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType, Transaction,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::email_keys::KeyConflict;
use super::leases::{
    Grant, Holder, NodeLease, Observed, Registration, Release, Renewal, ShardId, ShardLease,
    Takeover,
};
use super::requests::{RequestStamp, Settlement, StoredResult};
use super::{Fence, Store, Write, WriteOp, WriteOutcome, cas};
use crate::config::Secret;
use crate::customer::{Customer, CustomerFields, CustomerId, email_key, is_same_create};
use crate::error::{Error, Result};

/// Default pool size per node: the writer and the reader threads each hold at most one
/// connection at a time, so 8 leaves room for `--db-readers` up to 7; with the renewer's own
/// connection a cluster of N nodes opens at most 9·N connections (PostgreSQL's default
/// `max_connections` is 100).
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Default for waiting on a pooled connection, on connecting, and for `lock_timeout` and
/// `idle_in_transaction_session_timeout`: at most TTL/2 at the default lease TTL of 2 s
/// (a shorter TTL lowers it: [`PostgresConfig::for_lease`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Default deadline of one storage operation, client side: shorter than the default request
/// timeout (5 s), so a caller hears `Unavailable` (503) rather than its own deadline (504).
/// No renew waits on it: renews have their own connection and [`PostgresConfig::renew_timeout`].
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(3000);

/// Default deadline of one renew, `(TTL − m)/2` at the default lease timing (2000 ms, 50 ms).
pub const DEFAULT_RENEW_TIMEOUT: Duration = Duration::from_millis(975);

const COLUMNS: &str = "id, name, email, phone, address, version, created_at, updated_at";

/// The shard-row lock of F1 (ii): taken once per batch for every fenced shard, ascending.
pub const LOCK_SHARDS: &str =
    "SELECT shard, holder, token FROM shard_leases WHERE shard = ANY($1) ORDER BY shard FOR SHARE";

/// How to reach the server and how long to wait for it.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/db` (or key=value form). Never logged: see
    /// [`redact_url`].
    pub url: Secret,
    /// Most connections this node opens ([`DEFAULT_POOL_SIZE`]).
    pub pool_size: usize,
    /// How long an operation waits for a free pooled connection before `Unavailable`.
    pub pool_wait: Duration,
    /// TCP connect + startup timeout of a new connection.
    pub connect_timeout: Duration,
    /// Server-side `lock_timeout` and `idle_in_transaction_session_timeout` (≤ TTL/2).
    pub lock_timeout: Duration,
    /// Client-side deadline of one storage operation (batch, settle batch, read, lease job
    /// other than a renew).
    pub op_timeout: Duration,
    /// Client-side deadline of one renew, on the renewer's own connection (< TTL − m).
    pub renew_timeout: Duration,
    /// Schema to use instead of the default `search_path` (tests use one schema each).
    pub search_path: Option<String>,
}

impl PostgresConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: Secret) -> Self {
        Self {
            url,
            pool_size: DEFAULT_POOL_SIZE,
            pool_wait: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_TIMEOUT,
            lock_timeout: DEFAULT_TIMEOUT,
            op_timeout: DEFAULT_OP_TIMEOUT,
            renew_timeout: DEFAULT_RENEW_TIMEOUT,
            search_path: None,
        }
    }

    /// The timeouts derived from the lease's TTL and margin `m` (DESIGN §6 F2, L2):
    ///
    /// * `lock_timeout` = `idle_in_transaction_session_timeout` = min(1000 ms, TTL/2): a frozen
    ///   holder's open transaction blocks a takeover for at most half a lease, and no statement
    ///   waits on a lock longer than that;
    /// * `renew_timeout` = (TTL − m)/2: a renew answered in time still leaves at least half of
    ///   the validity it earns (`TTL − m` from its send), and one that is not has failed well
    ///   before the holder lapses, with renews to spare (renew interval ≤ TTL/4);
    /// * `op_timeout` (batches, settles, grants, reads) keeps its own value, at least
    ///   `lock_timeout` plus a second so a batch that met one lock wait can still commit: no
    ///   renew waits on it, since renews have their own connection and thread.
    pub fn for_lease(mut self, ttl: Duration, margin: Duration) -> Self {
        self.lock_timeout = DEFAULT_TIMEOUT.min(ttl / 2).max(Duration::from_millis(1));
        self.renew_timeout = (ttl.saturating_sub(margin) / 2).max(Duration::from_millis(1));
        self.op_timeout = self
            .op_timeout
            .max(self.lock_timeout + Duration::from_secs(1));
        self
    }
}

/// The URL with any password replaced by `***`, for logs and errors.
///
/// Everything between `://` and the *last* `@` is the user information, whatever it contains:
/// a password may hold `/`, `?`, `#` or `@` unencoded, and cutting the authority at the first
/// of those would print the rest of the password (libpq and tokio-postgres read such URLs the
/// same way). When an `@` further on belongs to the path or query instead, more than the
/// password is hidden, never less.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        if let Some(at) = out[rest..].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    // key=value forms and `?password=` query parameters.
    let lower = out.to_ascii_lowercase();
    if let Some(i) = lower.find("password=") {
        let start = i + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
    }
    out
}

/// The runtime that drives this engine's connections; shut down without waiting when the last
/// store using it is dropped (the engine has finished every job by then).
pub struct PgRuntime(Option<tokio::runtime::Runtime>);

impl PgRuntime {
    fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-io")
            .enable_all()
            .build()?;
        Ok(Self(Some(rt)))
    }

    /// Runs `fut` to completion from a storage thread, bounded by `deadline` (then
    /// `Unavailable`). For operations that commit, see [`PgRuntime::run_commit`].
    fn run<T>(&self, deadline: Duration, fut: impl Future<Output = Result<T>>) -> Result<T> {
        self.run_commit(deadline, &AtomicBool::new(false), fut)
    }

    /// Like [`PgRuntime::run`], for an operation that raises `committing` just before it sends
    /// `COMMIT`: a deadline that passes after that leaves the outcome unknown (`Timeout`);
    /// before it, nothing was applied (`Unavailable`).
    fn run_commit<T>(
        &self,
        deadline: Duration,
        committing: &AtomicBool,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Some(rt) = &self.0 else {
            return Err(Error::Unavailable("database engine is stopping".into()));
        };
        rt.block_on(async {
            match tokio::time::timeout(deadline, fut).await {
                Ok(result) => result,
                Err(_) if committing.load(Ordering::SeqCst) => Err(Error::Timeout(format!(
                    "database commit did not answer within {} ms; outcome unknown",
                    deadline.as_millis()
                ))),
                Err(_) => Err(Error::Unavailable(format!(
                    "database did not answer within {} ms; nothing was applied",
                    deadline.as_millis()
                ))),
            }
        })
    }
}

/// A failed `COMMIT`: it may or may not have been applied.
fn unknown_outcome(e: tokio_postgres::Error) -> Error {
    Error::Timeout(format!("database commit outcome unknown: {e}"))
}

impl Drop for PgRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL-backed [`Store`]. Cheap to clone: clones share the pool and the runtime, so
/// the engine gives one to its writer and one to each reader thread.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    rt: Arc<PgRuntime>,
    op_timeout: Duration,
    /// How long a settle batch keeps taking settles: `(op_timeout − lock_timeout)/2`, so the
    /// last one may still wait out a lock and the batch commit within `op_timeout`.
    settle_budget: Duration,
}

impl PostgresStore {
    /// Builds the pool, waits for a first connection and migrates (blocking: call from a
    /// blocking context, never from a tokio worker).
    pub fn connect(config: &PostgresConfig) -> Result<Self> {
        let store = Self::build(config, config.pool_size, config.op_timeout)?;
        let pool = store.pool.clone();
        store.rt.run(Duration::from_secs(120), async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            migrations::migrate(&mut client).await
        })?;
        Ok(store)
    }

    /// The renewer's store (DESIGN §6 L2): one connection of its own, outside the pool, on a
    /// runtime of its own, with deadline [`PostgresConfig::renew_timeout`]. A renew therefore
    /// never waits for a pooled connection, a batch in progress, or a settle blocked on a row
    /// lock. Each node opens one connection more than its pool.
    pub fn renewer(&self, config: &PostgresConfig) -> Result<Self> {
        let config = PostgresConfig {
            pool_wait: config.renew_timeout,
            connect_timeout: config.renew_timeout.min(config.connect_timeout),
            ..config.clone()
        };
        Self::build(&config, 1, config.renew_timeout)
    }

    /// A store over a pool of at most `pool_size` connections (opened lazily), each operation
    /// bounded by `op_timeout`.
    fn build(config: &PostgresConfig, pool_size: usize, op_timeout: Duration) -> Result<Self> {
        let rt = Arc::new(PgRuntime::new()?);
        let mut pg: tokio_postgres::Config = config.url.expose().parse().map_err(|e| {
            Error::InvalidInput(format!(
                "invalid database URL {}: {e}",
                redact_url(config.url.expose())
            ))
        })?;
        let ms = |d: Duration| d.as_millis().max(1);
        let mut options = pg.get_options().unwrap_or_default().to_owned();
        options.push_str(&format!(
            " -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            ms(config.lock_timeout),
            ms(config.lock_timeout)
        ));
        if let Some(schema) = &config.search_path {
            options.push_str(&format!(" -c search_path={schema}"));
        }
        pg.options(options.trim())
            .connect_timeout(config.connect_timeout)
            .application_name("customer-cluster");
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(config.pool_wait))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Internal(format!("building the database pool: {e}")))?;
        Ok(Self {
            pool,
            rt,
            op_timeout,
            settle_budget: op_timeout.saturating_sub(config.lock_timeout) / 2,
        })
    }

    /// The pool (tests hold its connections to exhaust it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs one operation in its own transaction on a pooled connection. An error discards
    /// the connection so its transaction dies with it. As for batches, a failure at or after
    /// `COMMIT` is `Timeout` (outcome unknown: a grant or release whose answer was lost is
    /// reconciled by its caller, L6), anything earlier `Unavailable` or `Internal`.
    fn in_tx<T>(&mut self, op: impl AsyncFnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let pool = self.pool.clone();
        let committing = AtomicBool::new(false);
        self.rt.run_commit(self.op_timeout, &committing, async {
            let mut client = pool.get().await.map_err(pool_error)?;
            let result = async {
                let tx = client.transaction().await?;
                let value = op(&tx).await?;
                committing.store(true, Ordering::SeqCst);
                tx.commit().await.map_err(unknown_outcome)?;
                Ok(value)
            }
            .await;
            if result.is_err() {
                let _ = deadpool_postgres::Object::take(client);
            }
            result
        })
    }

    /// Runs a read on a pooled connection.
    fn read<T>(
        &mut self,
        op: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T>,
    ) -> Result<T> {
        let pool = self.pool.clone();
        self.rt.run(self.op_timeout, async move {
            let client = pool.get().await.map_err(pool_error)?;
            op(&client).await
        })
    }
}

fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => Error::Unavailable(
            "database connection pool exhausted: every connection stayed busy for the whole pool wait".into(),
        ),
        PoolError::Timeout(_) => {
            Error::Unavailable("database server did not accept a connection in time".into())
        }
        PoolError::Backend(e) => Error::Unavailable(format!("database server unreachable: {e}")),
        other => Error::Unavailable(format!("database pool: {other}")),
    }
}

impl From<tokio_postgres::Error> for Error {
    /// Connection trouble, lock waits and server restarts are `Unavailable` (retry); anything
    /// else the server refused is `Internal`.
    fn from(e: tokio_postgres::Error) -> Self {
        let transient = [
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ];
        match e.code() {
            None => Error::Unavailable(format!("database connection: {e}")),
            Some(code) if transient.contains(code) => {
                Error::Unavailable(format!("database busy or restarting: {e}"))
            }
            Some(_) => Error::Internal(format!("database: {e}")),
        }
    }
}

// -------------------------------------------------------------------------------------------
// The write path

/// What becomes of a write's savepoint.
enum Fate {
    /// Release it: its effects join the batch. Carries the result to store under the request
    /// id (F1 iv), sent in the same round trip as the release.
    Keep(WriteOutcome, Option<(RequestStamp, StoredResult)>),
    /// Roll it back, request id included.
    Undo(WriteOutcome),
}

/// Savepoint statements of one write. Raw SQL (not the driver's savepoint guard) so that they
/// can share a round trip with the write's statements.
const SAVEPOINT: &str = "SAVEPOINT w";
const RELEASE: &str = "RELEASE SAVEPOINT w";
const UNDO: &str = "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w";

/// Shard rows locked for the batch: shard → (holder, token).
type Fences = HashMap<ShardId, (Option<String>, u64)>;

/// Locks every row the batch will touch, ascending (shard, then id), and returns the tokens.
/// Both statements go out in one round trip; the server runs them in order, so the shard
/// locks are taken before the customer locks.
async fn lock_rows(tx: &Transaction<'_>, writes: &[Write]) -> Result<Fences> {
    let mut shards: Vec<i32> = writes
        .iter()
        .filter_map(|w| w.fence.map(|f| i32::from(f.shard)))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    let mut ids: Vec<String> = writes
        .iter()
        .map(|w| w.op.customer_id().to_string())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let lock_shards = tx.prepare_cached(LOCK_SHARDS).await?;
    let lock_customers = tx
        .prepare_cached("SELECT id FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await?;
    let (shard_params, id_params) = ([&shards as _], [&ids as _]);
    let (shard_rows, _) = futures::try_join!(
        tx.query(&lock_shards, &shard_params),
        tx.query(&lock_customers, &id_params)
    )?;
    let mut fences = Fences::new();
    for row in shard_rows {
        let shard = ShardId::try_from(row.get::<_, i32>(0))
            .map_err(|_| Error::Internal("corrupt shard number".into()))?;
        fences.insert(shard, (row.get(1), row.get::<_, i64>(2) as u64));
    }
    Ok(fences)
}

/// Runs one write in its own savepoint. `Err` only for errors that must abort the batch.
/// The savepoint shares a round trip with the write's first statement, and storing the
/// result with the release.
async fn write_one(tx: &Transaction<'_>, write: &Write, fences: &Fences) -> Result<WriteOutcome> {
    let savepoint = async { Ok::<_, Error>(tx.batch_execute(SAVEPOINT).await?) };
    let ((), fate) = futures::try_join!(savepoint, steps(tx, write, fences))?;
    match fate {
        Fate::Keep(outcome, None) => {
            tx.batch_execute(RELEASE).await?;
            Ok(outcome)
        }
        Fate::Keep(outcome, Some((stamp, stored))) => {
            let release = async { Ok::<_, Error>(tx.batch_execute(RELEASE).await?) };
            futures::try_join!(requests::record(tx, &stamp, &stored), release)?;
            Ok(outcome)
        }
        Fate::Undo(outcome) => {
            tx.batch_execute(UNDO).await?;
            Ok(outcome)
        }
    }
}

/// F1 steps (i)–(iv) for one write (step iv is left to [`write_one`]).
async fn steps(tx: &Transaction<'_>, write: &Write, fences: &Fences) -> Result<Fate> {
    if let Some(stamp) = &write.request {
        match requests::claim(tx, stamp, &write.op.customer_id()).await? {
            requests::Claim::Ours => {}
            requests::Claim::Answered(Ok(stored)) => {
                return Ok(Fate::Keep(WriteOutcome::Replayed(stored), None));
            }
            requests::Claim::Answered(Err(e)) => {
                return Ok(Fate::Undo(WriteOutcome::Decided(Err(e))));
            }
        }
    }
    if let Some(fenced) = fence_check(write.fence, fences) {
        return Ok(Fate::Undo(fenced));
    }
    let result = apply(tx, &write.op).await?;
    match (&write.request, StoredResult::of(&result)) {
        (Some(stamp), Some(stored)) => Ok(Fate::Keep(
            WriteOutcome::Decided(result),
            Some((stamp.clone(), stored)),
        )),
        // A version miss is no final answer: forget the id so the writer's retry can apply.
        (Some(_), None) => Ok(Fate::Undo(WriteOutcome::Decided(result))),
        (None, _) => Ok(Fate::Keep(WriteOutcome::Decided(result), None)),
    }
}

/// F1 (ii) against the tokens locked for the batch: `Some` outcome when the write may not apply.
fn fence_check(fence: Option<Fence>, fences: &Fences) -> Option<WriteOutcome> {
    let fence = fence?;
    match fences.get(&fence.shard) {
        Some((_, token)) if *token == fence.token => None,
        Some((holder, token)) => Some(WriteOutcome::Fenced {
            holder: holder.clone(),
            token: *token,
        }),
        None => Some(WriteOutcome::Decided(Err(Error::InvalidInput(format!(
            "no shard {}",
            fence.shard
        ))))),
    }
}

/// Applies one change (F1 step iii). The outer `Err` aborts the batch; the inner one is the
/// write's domain outcome.
async fn apply(sp: &Transaction<'_>, op: &WriteOp) -> Result<Result<Option<Customer>>> {
    Ok(match op {
        WriteOp::Insert(customer) => insert(sp, customer).await?.map(Some),
        WriteOp::Update {
            id,
            fields,
            expected_version,
            now,
        } => update(sp, id, fields, *expected_version, *now)
            .await?
            .map(Some),
        WriteOp::Delete {
            id,
            expected_version,
        } => delete(sp, id, *expected_version).await?.map(|()| None),
    })
}

async fn insert(tx: &Transaction<'_>, c: &Customer) -> Result<Result<Customer>> {
    match stored_row(tx, &c.id).await? {
        Some((existing, false)) => {
            return Ok(if is_same_create(&existing.fields, &c.fields) {
                Ok(existing)
            } else {
                Err(Error::Conflict(format!(
                    "customer {} already exists with different fields",
                    c.id
                )))
            });
        }
        Some((_, true)) => {
            return Ok(Err(Error::Conflict(format!(
                "customer {} was deleted; its id cannot be reused",
                c.id
            ))));
        }
        None => {}
    }
    // ON CONFLICT DO NOTHING: a taken email (or an id inserted concurrently by another node)
    // must not abort the transaction.
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO customers ({COLUMNS}, email_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING RETURNING id"
        ))
        .await?;
    let f = &c.fields;
    let inserted = tx
        .query_opt(
            &stmt,
            &[
                &c.id.to_string(),
                &f.name,
                &f.email,
                &f.phone,
                &f.address,
                &(c.version as i64),
                &c.created_at,
                &c.updated_at,
                &email_key(&f.email),
            ],
        )
        .await?;
    if inserted.is_some() {
        return Ok(Ok(c.clone()));
    }
    if stored_row(tx, &c.id).await?.is_some() {
        return Ok(Err(Error::Conflict(format!(
            "customer {} already exists",
            c.id
        ))));
    }
    Ok(Err(email_taken(&c.fields)))
}

/// The stored row of `id`, live or not, and whether it is a tombstone.
async fn stored_row(tx: &Transaction<'_>, id: &CustomerId) -> Result<Option<(Customer, bool)>> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, deleted FROM customers WHERE id = $1"
        ))
        .await?;
    match tx.query_opt(&stmt, &[&id.to_string()]).await? {
        Some(row) => Ok(Some((from_row(&row)?, row.try_get::<_, bool>(8)?))),
        None => Ok(None),
    }
}

async fn update(
    tx: &Transaction<'_>,
    id: &CustomerId,
    fields: &CustomerFields,
    expected: u64,
    now: i64,
) -> Result<Result<Customer>> {
    let stmt = tx
        .prepare_cached(&format!(
            "UPDATE customers
                SET email_key = CASE WHEN email = $2 THEN email_key ELSE $8 END,
                    name = $1, email = $2, phone = $3, address = $4,
                    version = version + 1, updated_at = greatest(updated_at, $5)
              WHERE id = $6 AND version = $7 AND NOT deleted
          RETURNING {COLUMNS}"
        ))
        .await?;
    // A nested savepoint, in the same round trip: a unique violation aborts the statement's
    // transaction, and only this savepoint is rolled back for it. On success it is left for
    // the write's own release to release.
    let id_text = id.to_string();
    let expected_i64 = expected as i64;
    let key = email_key(&fields.email);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &fields.name,
        &fields.email,
        &fields.phone,
        &fields.address,
        &now,
        &id_text,
        &expected_i64,
        &key,
    ];
    let (savepoint, res) = futures::join!(
        tx.batch_execute("SAVEPOINT u"),
        tx.query_opt(&stmt, &params)
    );
    savepoint?;
    match res {
        Ok(Some(row)) => Ok(from_row(&row)),
        Ok(None) => Ok(Err(cas::explain_miss(
            id,
            live_version(tx, id).await?,
            Some(expected),
        ))),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT u").await?;
            Ok(Err(email_taken(fields)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Leaves a tombstone at the next version (F5).
async fn delete(
    tx: &Transaction<'_>,
    id: &CustomerId,
    expected: Option<u64>,
) -> Result<Result<()>> {
    let stmt = tx
        .prepare_cached(
            "UPDATE customers SET deleted = TRUE, version = version + 1
              WHERE id = $1 AND NOT deleted AND ($2::BIGINT IS NULL OR version = $2)",
        )
        .await?;
    let deleted = tx
        .execute(&stmt, &[&id.to_string(), &expected.map(|v| v as i64)])
        .await?;
    Ok(if deleted == 1 {
        Ok(())
    } else {
        Err(cas::explain_miss(id, live_version(tx, id).await?, expected))
    })
}

fn email_taken(fields: &CustomerFields) -> Error {
    Error::Conflict(format!("email {} is already in use", fields.email))
}

async fn live_version(tx: &Transaction<'_>, id: &CustomerId) -> Result<Option<u64>> {
    let stmt = tx
        .prepare_cached("SELECT version FROM customers WHERE id = $1 AND NOT deleted")
        .await?;
    let row = tx.query_opt(&stmt, &[&id.to_string()]).await?;
    Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
}

fn from_row(row: &tokio_postgres::Row) -> Result<Customer> {
    let id: String = row.try_get(0)?;
    let id = CustomerId::try_parse(&id)
        .map_err(|_| Error::Internal(format!("corrupt id in database: {id:?}")))?;
    Ok(Customer {
        id,
        fields: CustomerFields {
            name: row.try_get(1)?,
            email: row.try_get(2)?,
            phone: row.try_get(3)?,
            address: row.try_get(4)?,
        },
        version: row.try_get::<_, i64>(5)?.max(0) as u64,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
    })
}

impl PostgresStore {
    /// The batch as one transaction; see the module doc for which errors mean what.
    /// `committing` is raised just before `COMMIT` is sent.
    async fn batch(
        pool: Pool,
        writes: &[Write],
        committing: &AtomicBool,
    ) -> Result<Vec<WriteOutcome>> {
        let mut client = pool.get().await.map_err(pool_error)?;
        let result: Result<Vec<WriteOutcome>> = async {
            let tx = client.transaction().await?;
            let fences = lock_rows(&tx, writes).await?;
            let mut outcomes = Vec::with_capacity(writes.len());
            for write in writes {
                outcomes.push(write_one(&tx, write, &fences).await?);
            }
            committing.store(true, Ordering::SeqCst);
            tx.commit().await.map_err(unknown_outcome)?;
            Ok(outcomes)
        }
        .await;
        if result.is_err() {
            let _ = deadpool_postgres::Object::take(client);
        }
        result
    }
}

impl Store for PostgresStore {
    fn write_batch(&mut self, writes: &[Write]) -> Result<Vec<WriteOutcome>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.pool.clone();
        let committing = AtomicBool::new(false);
        self.rt.run_commit(
            self.op_timeout,
            &committing,
            Self::batch(pool, writes, &committing),
        )
    }

    fn ping(&mut self) -> Result<()> {
        self.read(async move |client| {
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
    }

    fn get(&mut self, id: &CustomerId) -> Result<Option<Customer>> {
        let id = id.to_string();
        self.read(async move |client| {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM customers WHERE id = $1 AND NOT deleted"
                ))
                .await?;
            client
                .query_opt(&stmt, &[&id])
                .await?
                .map(|r| from_row(&r))
                .transpose()
        })
    }

    fn list(&mut self, after: Option<&CustomerId>, limit: u32) -> Result<Vec<Customer>> {
        let limit = i64::from(limit.clamp(1, super::MAX_LIST_ROWS));
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        self.read(async move |client| {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM customers WHERE id > $1 AND NOT deleted ORDER BY id LIMIT $2"
                ))
                .await?;
            client
                .query(&stmt, &[&after, &limit])
                .await?
                .iter()
                .map(from_row)
                .collect()
        })
    }

    fn settle(&mut self, stamp: &RequestStamp) -> Result<Settlement> {
        self.in_tx(async |tx| requests::settle(tx, stamp).await)
    }

    fn settle_batch(&mut self, stamps: &[RequestStamp]) -> Result<Vec<Result<Settlement>>> {
        let budget = self.settle_budget;
        self.in_tx(async |tx| requests::settle_batch(tx, stamps, budget).await)
    }

    fn prune_requests(&mut self, older_than: i64, limit: u32) -> Result<u64> {
        self.in_tx(async |tx| requests::prune(tx, older_than, limit).await)
    }

    fn register(&mut self, node: &str, incarnation: u64) -> Result<Registration> {
        self.in_tx(async |tx| leases::register(tx, node, incarnation).await)
    }

    fn renew(&mut self, me: &Holder, k: u64, ttl_ms: u64) -> Result<Renewal> {
        self.in_tx(async |tx| leases::renew(tx, me, k, ttl_ms).await)
    }

    fn takeover(
        &mut self,
        contender: &Holder,
        victim: &Observed,
        shards: &[ShardId],
    ) -> Result<Takeover> {
        self.in_tx(async |tx| leases::takeover(tx, contender, victim, shards).await)
    }

    fn takeover_own_row(
        &mut self,
        incarnation: u64,
        observed: &Observed,
        shards: &[ShardId],
    ) -> Result<Takeover> {
        self.in_tx(async |tx| leases::takeover_own_row(tx, incarnation, observed, shards).await)
    }

    fn grant(&mut self, contender: &Holder, shards: &[ShardId]) -> Result<Grant> {
        self.in_tx(async |tx| leases::grant(tx, contender, shards).await)
    }

    fn release(&mut self, node: &str, shard: ShardId, token: u64) -> Result<Release> {
        self.in_tx(async |tx| leases::release(tx, node, shard, token).await)
    }

    fn clear_incarnation(&mut self, node: &str, incarnation: u64) -> Result<bool> {
        self.in_tx(async |tx| leases::clear_incarnation(tx, node, incarnation).await)
    }

    fn lease_table(&mut self) -> Result<Vec<ShardLease>> {
        self.read(async |client| leases::lease_table(client).await)
    }

    fn node_table(&mut self) -> Result<Vec<NodeLease>> {
        self.in_tx(async |tx| leases::node_table(tx).await)
    }

    fn email_key_conflicts(&mut self) -> Result<Vec<KeyConflict>> {
        self.in_tx(async |tx| {
            let rows = tx
                .query(
                    "SELECT k.id, k.kept_id, k.email_key FROM email_key_conflicts k
                       JOIN customers c ON c.id = k.id
                      WHERE NOT c.deleted AND c.email_key = k.email_key
                      ORDER BY k.id",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(KeyConflict {
                        id: r.try_get(0)?,
                        kept_id: r.try_get(1)?,
                        email_key: r.try_get(2)?,
                    })
                })
                .collect()
        })
    }
}

/// Test support: a fresh schema per test on the server named by `CC_TEST_DATABASE_URL`.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// Environment variable naming the test server.
    pub const URL_VAR: &str = "CC_TEST_DATABASE_URL";

    /// The test server's URL. Without one: under `CI=true` the test fails; otherwise it says
    /// SKIPPED loudly and the caller returns.
    pub fn url(test: &str) -> Option<String> {
        match std::env::var(URL_VAR) {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!(
                    "{URL_VAR} is not set but CI=true: PostgreSQL tests must run in CI (.ci/run starts a server with scripts/pg.sh)"
                )
            }
            _ => {
                // Straight to stderr, past the test harness's capture, so the skip is seen.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: PostgreSQL test without a server; run `export {URL_VAR}=$(scripts/pg.sh up)`"
                );
                None
            }
        }
    }

    /// A schema of its own, dropped (with everything in it) when this is dropped.
    pub struct Scratch {
        /// Server URL.
        pub url: String,
        /// The schema's name.
        pub schema: String,
    }

    impl Scratch {
        /// Creates a uniquely named schema.
        pub fn new(url: &str) -> Self {
            let schema = format!("cc_test_{}", uuid::Uuid::now_v7().simple());
            admin(url, &format!("CREATE SCHEMA {schema}"));
            Self {
                url: url.to_owned(),
                schema,
            }
        }

        /// Store settings pointing into this schema.
        pub fn config(&self) -> PostgresConfig {
            PostgresConfig {
                search_path: Some(self.schema.clone()),
                ..PostgresConfig::new(Secret::new(self.url.clone()))
            }
        }

        /// A plain connection into this schema, for tests that drive SQL by hand.
        pub async fn connect(&self) -> tokio_postgres::Client {
            let mut pg: tokio_postgres::Config = self.url.parse().expect("test URL parses");
            pg.options(format!("-c search_path={}", self.schema));
            let (client, conn) = pg.connect(NoTls).await.expect("test server reachable");
            tokio::spawn(conn);
            client
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            admin(
                &self.url,
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            );
        }
    }

    fn admin(url: &str, sql: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, NoTls)
                .await
                .expect("test server reachable");
            let driver = tokio::spawn(conn);
            client.batch_execute(sql).await.expect(sql);
            drop(client);
            let _ = driver.await;
        });
    }

    /// A migrated store in a fresh schema, or `None` when skipped.
    pub fn fresh(test: &str) -> Option<(Scratch, PostgresStore)> {
        let url = url(test)?;
        let scratch = Scratch::new(&url);
        let store = PostgresStore::connect(&scratch.config()).expect("store opens");
        Some((scratch, store))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Scratch, fresh, url};
    use super::*;
    use crate::storage::suite;
    use std::time::Instant;

    macro_rules! fresh_or_skip {
        () => {
            match fresh(module_path!()) {
                Some(pair) => pair,
                None => return,
            }
        };
    }

    // The engine-neutral behaviour suite, one test per behaviour, each in its own schema.
    crate::store_suite!(fresh_or_skip!());

    #[test]
    fn lock_and_renew_timeouts_follow_the_lease_ttl() {
        let ms = Duration::from_millis;
        let at = |ttl, margin| {
            PostgresConfig::new(Secret::new(String::new())).for_lease(ms(ttl), ms(margin))
        };
        let default = at(2000, 50);
        assert_eq!(
            (
                default.lock_timeout,
                default.renew_timeout,
                default.op_timeout
            ),
            (ms(1000), ms(975), ms(3000))
        );
        assert_eq!(default.renew_timeout, DEFAULT_RENEW_TIMEOUT);
        let short = at(400, 20);
        assert_eq!(
            (short.lock_timeout, short.renew_timeout),
            (ms(200), ms(190))
        );
        let long = at(10_000, 50);
        assert_eq!((long.lock_timeout, long.op_timeout), (ms(1000), ms(3000)));
        for ttl in [40, 400, 2000, 10_000] {
            let c = at(ttl, 10);
            // F2: ≤ TTL/2; L2: a renew is answered (or has failed) within its lease.
            assert!(c.lock_timeout <= ms(ttl) / 2);
            assert!(c.renew_timeout < ms(ttl - 10));
            assert!(c.op_timeout > c.lock_timeout);
        }
    }

    #[test]
    fn the_url_is_logged_without_its_password() {
        assert_eq!(
            redact_url("postgres://cc:s3cret@db.example:5432/customers?sslmode=disable"),
            "postgres://cc:***@db.example:5432/customers?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://cc@127.0.0.1:5432/customers"),
            "postgres://cc@127.0.0.1:5432/customers"
        );
        assert_eq!(
            redact_url("host=db user=cc password=s3cret dbname=c"),
            "host=db user=cc password=*** dbname=c"
        );
        assert!(!redact_url("postgresql://u:p%40ss@h/d?password=x&a=b").contains("p%40ss"));
    }

    #[test]
    fn a_password_holding_url_delimiters_is_hidden_whole() {
        for (url, shown) in [
            (
                "postgres://cc:Se/cret@127.0.0.1:notaport/db",
                "postgres://cc:***@127.0.0.1:notaport/db",
            ),
            (
                "postgres://cc:Se?cret@127.0.0.1:99999/db",
                "postgres://cc:***@127.0.0.1:99999/db",
            ),
            (
                "postgres://cc:Se#cret@127.0.0.1:5432/db",
                "postgres://cc:***@127.0.0.1:5432/db",
            ),
            (
                "postgresql://cc:S@e/c?r#t@db.example:5432/customers?sslmode=disable",
                "postgresql://cc:***@db.example:5432/customers?sslmode=disable",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_second_start_finds_the_schema_migrated_and_a_newer_schema_is_refused() {
        let Some(url) = url(module_path!()) else {
            return;
        };
        let scratch = Scratch::new(&url);
        // Three nodes starting at once: the advisory lock lets exactly one migrate.
        let starts: Vec<_> = (0..3)
            .map(|_| {
                let config = scratch.config();
                std::thread::spawn(move || PostgresStore::connect(&config).map(|_| ()))
            })
            .collect();
        for start in starts {
            start.join().unwrap().unwrap();
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        let versions: Vec<i32> = rt.block_on(async {
            let client = scratch.connect().await;
            let rows = client
                .query("SELECT version FROM schema_version ORDER BY version", &[])
                .await
                .unwrap();
            let shards: i64 = client
                .query_one("SELECT count(*) FROM shard_leases", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(shards, 1024);
            client
                .execute("INSERT INTO schema_version (version) VALUES (999)", &[])
                .await
                .unwrap();
            rows.iter().map(|r| r.get(0)).collect()
        });
        assert_eq!(versions, (1..=MIGRATIONS_LEN).collect::<Vec<_>>());
        let refused = PostgresStore::connect(&scratch.config()).err();
        assert!(
            matches!(&refused, Some(Error::Internal(m)) if m.contains("newer")),
            "{refused:?}"
        );
    }

    const MIGRATIONS_LEN: i32 = migrations::MIGRATIONS.len() as i32;

    #[test]
    fn colliding_emails_stored_before_keys_are_kept_and_reported() {
        let Some(url) = url(module_path!()) else {
            return;
        };
        let scratch = Scratch::new(&url);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = scratch.connect().await;
            client
                .batch_execute(
                    "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
                     INSERT INTO schema_version (version) VALUES (1), (2), (3), (4);",
                )
                .await
                .unwrap();
            for sql in &migrations::MIGRATIONS[..4] {
                client.batch_execute(sql).await.unwrap();
            }
            for (id, email, at) in suite::COLLIDING_ROWS {
                client
                    .execute(
                        &format!("INSERT INTO customers ({COLUMNS}) VALUES ($1, 'N', $2, NULL, NULL, 1, $3, $3)"),
                        &[&id, &email, &at],
                    )
                    .await
                    .unwrap();
            }
        });
        let mut store = PostgresStore::connect(&scratch.config()).unwrap();
        suite::colliding_rows_are_kept_and_reported_after_migration(&mut store);
    }

    #[test]
    fn a_grant_waits_for_a_write_holding_the_shard_row_for_share() {
        // DESIGN §10 case 1, with two connections: a batch that checked shard 5's token holds
        // the row FOR SHARE; a grant of shard 5 must wait until that batch commits.
        let Some((scratch, mut store)) = fresh(module_path!()) else {
            return;
        };
        let n1 = match store.register("n1", 1).unwrap() {
            Registration::Registered { epoch } => Holder {
                node: "n1".into(),
                incarnation: 1,
                epoch,
            },
            other => panic!("{other:?}"),
        };
        let token = match store.grant(&n1, &[5]).unwrap() {
            Grant::Granted(g) => g[0].token,
            other => panic!("{other:?}"),
        };
        store.clear_incarnation("n1", 1).unwrap(); // shard 5 is now grantable by anyone
        let n2 = match store.register("n2", 2).unwrap() {
            Registration::Registered { epoch } => epoch,
            other => panic!("{other:?}"),
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let writer = scratch.connect().await;
            let granter = scratch.connect().await;
            writer.batch_execute("BEGIN").await.unwrap();
            let row = writer.query_one(LOCK_SHARDS, &[&vec![5i32]]).await.unwrap();
            assert_eq!(row.get::<_, i64>(2) as u64, token);
            let granter_pid: i32 = granter
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            let grant = tokio::spawn(async move {
                granter
                    .query(
                        leases::GRANT,
                        &[&"n2", &2i64, &(n2 as i64), &vec![5i32]],
                    )
                    .await
                    .map(|rows| rows.len())
            });
            // Wait until the server reports the grant blocked on a lock (no fixed sleep).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let waiting: bool = writer
                    .query_one(
                        "SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1), false)",
                        &[&granter_pid],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if waiting {
                    break;
                }
                assert!(!grant.is_finished(), "the grant did not wait for FOR SHARE");
                assert!(Instant::now() < deadline, "the grant never blocked");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!grant.is_finished());
            // The write (F1 iii) still applies under the token it checked, then commits.
            writer
                .execute(
                    "INSERT INTO customers (id, name, email, email_key, version, created_at, updated_at)
                     VALUES ('00000000-0000-7000-8000-000000000001', 'A', 'a@x.io', 'a@x.io', 1, 0, 0)",
                    &[],
                )
                .await
                .unwrap();
            writer.batch_execute("COMMIT").await.unwrap();
            assert_eq!(grant.await.unwrap().unwrap(), 1, "the grant applies after the commit");
        });
        let row = store.lease_table().unwrap().remove(5);
        assert_eq!((row.holder.as_deref(), row.token), (Some("n2"), token + 1));
    }

    #[test]
    fn batches_of_two_nodes_touching_the_same_rows_in_opposite_orders_never_deadlock() {
        // F2: rows are locked in ascending order whatever the order of writes in a batch, so
        // two nodes' writers cannot wait on each other (PostgreSQL would abort one of them).
        let Some((scratch, mut store)) = fresh(module_path!()) else {
            return;
        };
        let customers: Vec<Customer> = (0..12)
            .map(|i| suite::customer("C", &format!("c{i}@x.io")))
            .collect();
        let inserts: Vec<Write> = customers
            .iter()
            .map(|c| WriteOp::Insert(c.clone()).into())
            .collect();
        store.write_batch(&inserts).unwrap();
        let node = |reverse: bool| {
            let mut store = PostgresStore::connect(&scratch.config()).unwrap();
            let mut ids: Vec<Customer> = customers.clone();
            if reverse {
                ids.reverse();
            }
            std::thread::spawn(move || {
                for round in 0..15 {
                    let batch: Vec<Write> = ids
                        .iter()
                        .map(|c| {
                            let current = store.get(&c.id).unwrap().unwrap();
                            WriteOp::Update {
                                id: c.id,
                                fields: CustomerFields {
                                    name: format!("r{round}"),
                                    ..current.fields
                                },
                                expected_version: current.version,
                                now: round,
                            }
                            .into()
                        })
                        .collect();
                    // Version misses are fine (the other node won); a failed batch is not.
                    store
                        .write_batch(&batch)
                        .expect("no deadlock, no lock timeout");
                }
            })
        };
        let (a, b) = (node(false), node(true));
        a.join().unwrap();
        b.join().unwrap();
        let versions: u64 = customers
            .iter()
            .map(|c| store.get(&c.id).unwrap().unwrap().version)
            .sum();
        assert!(versions > 12, "some updates applied");
    }

    #[test]
    fn nodes_pruning_one_server_at_once_remove_each_expired_id_once_and_keep_the_rest() {
        // F4: every node prunes the shared table. Concurrent prunes skip each other's rows
        // instead of waiting or deadlocking, and together remove exactly the expired ids.
        let Some((scratch, mut store)) = fresh(module_path!()) else {
            return;
        };
        let writes: Vec<Write> = (0..60)
            .map(|i| Write {
                op: WriteOp::Insert(suite::customer("C", &format!("c{i}@x.io"))),
                fence: None,
                request: Some(RequestStamp {
                    id: format!("k{i}"),
                    body_hash: i,
                    attempt: 1,
                    at: if i < 50 { i as i64 } else { 1_000_000 },
                }),
            })
            .collect();
        store.write_batch(&writes).unwrap();
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                let mut store = PostgresStore::connect(&scratch.config()).unwrap();
                std::thread::spawn(move || {
                    let mut removed = 0;
                    loop {
                        let n = store
                            .prune_requests(1_000, 4)
                            .expect("a concurrent prune neither fails nor waits");
                        assert!(n <= 4, "one batch at most");
                        removed += n;
                        if n == 0 {
                            return removed;
                        }
                    }
                })
            })
            .collect();
        let removed: u64 = nodes.into_iter().map(|n| n.join().unwrap()).sum();
        assert_eq!(removed, 50);
        assert_eq!(store.prune_requests(1_000, 4).unwrap(), 0);
        let kept = store.write_batch(&writes[50..]).unwrap();
        assert!(
            kept.iter()
                .all(|o| matches!(o, WriteOutcome::Replayed(StoredResult::Row(_)))),
            "the younger ids still replay: {kept:?}"
        );
    }

    #[test]
    fn pool_exhaustion_answers_unavailable_quickly() {
        let Some(url) = url(module_path!()) else {
            return;
        };
        let scratch = Scratch::new(&url);
        let config = PostgresConfig {
            pool_size: 1,
            pool_wait: Duration::from_millis(200),
            ..scratch.config()
        };
        let mut store = PostgresStore::connect(&config).unwrap();
        let pool = store.pool().clone();
        let held = store.rt.run(Duration::from_secs(5), async move {
            pool.get().await.map_err(pool_error)
        });
        let held = held.unwrap();
        let started = Instant::now();
        let err = store.get(&crate::customer::new_customer_id()).unwrap_err();
        assert!(
            matches!(&err, Error::Unavailable(m) if m.contains("pool exhausted")),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        drop(held);
        assert_eq!(
            store.get(&crate::customer::new_customer_id()).unwrap(),
            None
        );
    }

    #[test]
    fn a_unique_violation_in_an_update_is_a_conflict_and_the_batch_commits() {
        let Some((_scratch, mut store)) = fresh(module_path!()) else {
            return;
        };
        let a = suite::customer("A", "a@x.io");
        let b = suite::customer("B", "b@x.io");
        let c = suite::customer("C", "c@x.io");
        store
            .write_batch(&[
                WriteOp::Insert(a.clone()).into(),
                WriteOp::Insert(b.clone()).into(),
            ])
            .unwrap();
        let steal = WriteOp::Update {
            id: b.id,
            fields: CustomerFields {
                email: "A@X.IO".into(),
                ..b.fields.clone()
            },
            expected_version: 1,
            now: 5,
        };
        let out = store
            .write_batch(&[steal.into(), WriteOp::Insert(c.clone()).into()])
            .unwrap();
        assert!(matches!(
            out[0],
            WriteOutcome::Decided(Err(Error::Conflict(_)))
        ));
        assert_eq!(out[1], WriteOutcome::Decided(Ok(Some(c.clone()))));
        assert_eq!(store.get(&b.id).unwrap(), Some(b));
        assert_eq!(store.get(&c.id).unwrap(), Some(c));
    }
}
