//! Durable storage: customers, the shard leases that say who may write them, and the request
//! ids that make every write apply at most once. A synchronous [`Store`], and the engine that
//! runs it off the async runtime with group commit.
//!
//! ```text
//!  Database actor ──submit──▶ Engine ──▶ writer thread: renews first, then other lease jobs, each
//!                                   │                  its own transaction; then every queued settle in
//!                                   │                  one transaction; then drain writes (bounded queue)
//!                                   │                  → BEGIN → per write a savepoint → COMMIT (1 fsync)
//!                                   │                  → ack all
//!                                   ├──▶ renewer thread (PostgreSQL): renews on their own connection
//!                                   └──▶ reader threads: get / list / lease table (WAL snapshot)
//! ```
//!
//! ## One write (DESIGN §6 F1), inside the batch transaction, in its own savepoint
//!
//! 1. **Request id** ([`requests`]): claim the write's request id in `applied_requests`. An id
//!    already applied answers with the result stored the first time and applies nothing
//!    ([`WriteOutcome::Replayed`]); the same id with another body is `InvalidInput` (422).
//! 2. **Fence** ([`leases`]): the shard row's `token` must equal the token the writer holds,
//!    else [`WriteOutcome::Fenced`] and the savepoint is rolled back, step 1 included, so the
//!    retry at the new holder can apply.
//! 3. **Compare-and-set** on `version` ([`cas`]); a miss also rolls the savepoint back.
//! 4. **Store the result** under the request id, so a retry gets the same answer.
//!
//! Fenced writes, version misses and unique violations are per-write outcomes; they never
//! abort the batch. Any other error aborts the whole batch, so nothing in it is acknowledged.
//!
//! ## Customers are never physically deleted (F5)
//!
//! A delete leaves a tombstone (`deleted = 1`) at the next version, so a version number is
//! never reused for an id and a create on a deleted id is a `Conflict` (409). Gets and lists
//! skip tombstones; an email address is unique among live customers only, by its key
//! ([`crate::customer::email_key`], stored in `email_key`; see [`email_keys`] for rows stored
//! before keys existed).
//!
//! ## Leases (L1, L2, L5, L6)
//!
//! `node_leases` is the liveness record of each node process (renewed by bumping `seq`),
//! `shard_leases` says which node holds each of the [`leases::SHARD_ROWS`] shards and at which
//! fencing `token`. The operations and the rule each implements are on [`Store`]; their
//! outcomes are the types in [`leases`]. No stored time is ever compared.
//!
//! Every backend implements [`Store`] with the same statements in its own dialect (the
//! PostgreSQL one adds `SELECT … FOR SHARE` on the shard row in step 2 and a `SAVEPOINT` per
//! write) and must pass the same behaviour suite (`suite`, test builds only).
//!
//! An acknowledgement means "committed to disk": the engine replies only after `COMMIT`
//! returned, with `synchronous=FULL` in WAL mode, so an fsync has happened.
//!
//! ## Request ids are pruned by age (F4)
//!
//! The engine's writer removes request ids older than the retention window (24 h or more), in
//! small batches and only when it has nothing else to do ([`prune`]). That prune cutoff is the
//! one wall-clock reading in storage.
//!
//! Deliberately not here: actors, HTTP, placement, clocks. Storage knows rows and nothing else:
//! it does not check that a write's shard is the shard of its customer id (placement owns that
//! function), and apart from the engine's prune cutoff it never reads a clock (`applied_at`
//! comes in with the request stamp).

pub mod cas;
pub mod email_keys;
pub mod engine;
pub mod leases;
pub mod migrations;
pub mod postgres;
pub mod prune;
pub mod requests;
pub mod sqlite;
#[cfg(test)]
pub mod suite;

use serde::{Deserialize, Serialize};

use crate::customer::{Customer, CustomerFields, CustomerId};
use crate::error::{Error, Result};

pub use leases::{
    Grant, Holder, NodeLease, Observed, Registration, Release, Renewal, ShardGrant, ShardId,
    ShardLease, Takeover,
};
pub use requests::{RequestStamp, Settlement, StoredResult};

/// Largest page a list may return; bounds memory and the size of one cluster message.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Most rows one store read returns: a full page plus one, whose presence tells the caller
/// that a next page exists (clamping to [`MAX_PAGE_SIZE`] here would make every maximal page
/// look like the last one).
pub const MAX_LIST_ROWS: u32 = MAX_PAGE_SIZE + 1;

/// What one write changes. See [`Write`] for the fence and request id that go with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Insert a new customer. Idempotent by id: if the id exists (live) with the same fields
    /// the stored row is returned; with different fields, or if the id was deleted, it is a
    /// conflict.
    Insert(Customer),
    /// Replace the fields if the stored version equals `expected_version`; bumps the version.
    Update {
        /// Which customer.
        id: CustomerId,
        /// New field values (already validated).
        fields: CustomerFields,
        /// The compare-and-set token: the version the writer last saw.
        expected_version: u64,
        /// Write time, µs since the Unix epoch.
        now: i64,
    },
    /// Delete (leave a tombstone at the next version) if the stored version equals
    /// `expected_version` (any version when `None`).
    Delete {
        /// Which customer.
        id: CustomerId,
        /// The compare-and-set token, if any.
        expected_version: Option<u64>,
    },
}

impl WriteOp {
    /// The customer this op writes.
    pub fn customer_id(&self) -> CustomerId {
        match self {
            Self::Insert(c) => c.id,
            Self::Update { id, .. } | Self::Delete { id, .. } => *id,
        }
    }
}

/// The fencing token a write carries (F1 step ii): the write applies only while the shard's
/// row still holds this token, i.e. while no other node has been granted the shard since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The shard of the customer being written (placement computes it; storage does not).
    pub shard: ShardId,
    /// The token the writer was granted the shard at.
    pub token: u64,
}

/// One write as submitted: what to change, under which lease, for which request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The change.
    pub op: WriteOp,
    /// The holder's lease on the customer's shard; `None` writes unfenced (only until every
    /// caller holds leases).
    pub fence: Option<Fence>,
    /// The request id, body hash and attempt; `None` skips deduplication.
    pub request: Option<RequestStamp>,
}

impl From<WriteOp> for Write {
    /// An unfenced write without a request id: today's behaviour.
    fn from(op: WriteOp) -> Self {
        Self {
            op,
            fence: None,
            request: None,
        }
    }
}

/// What one write in a batch came to. Only [`WriteOutcome::Decided`] with `Ok` is a fresh
/// state of the customer that a cache may keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Decided now, in this batch: the stored customer after the write (`None` after a delete),
    /// or the domain error (not found, conflict, version conflict, body mismatch).
    Decided(Result<Option<Customer>>),
    /// The request id had already been settled: this is the stored answer, nothing was applied
    /// now. Return it to the client, never put it into a cache (a newer write may follow it).
    Replayed(StoredResult),
    /// The shard is no longer held at the write's token: nothing was applied and the request id
    /// was not recorded, so a retry at the current holder can apply.
    Fenced {
        /// The node that holds the shard now, if any.
        holder: Option<String>,
        /// The shard's current token.
        token: u64,
    },
}

impl WriteOutcome {
    /// Flattens the outcome into what a caller without leases expects. A fenced write becomes
    /// `Unavailable` (not applied, retry freely); a replay becomes its stored answer.
    pub fn into_result(self) -> Result<Option<Customer>> {
        match self {
            Self::Decided(result) => result,
            Self::Replayed(stored) => stored.into_result(),
            Self::Fenced { holder, token } => Err(Error::Unavailable(format!(
                "not the shard's holder: held by {} at token {token}",
                holder.as_deref().unwrap_or("nobody")
            ))),
        }
    }
}

/// A storage backend. Implementations are synchronous and used from one thread at a time; the
/// engine gives all writing methods to one writer, so on SQLite a grant and a fenced write can
/// never interleave.
pub trait Store: Send + 'static {
    /// Applies `writes` in one transaction (a savepoint each, F1) and commits once. Returns one
    /// outcome per write, in order, or `Err` when the transaction as a whole failed (then
    /// nothing in it is acknowledged).
    fn write_batch(&mut self, writes: &[Write]) -> Result<Vec<WriteOutcome>>;

    /// Reads one live customer (`None` if absent or deleted).
    fn get(&mut self, id: &CustomerId) -> Result<Option<Customer>>;

    /// Lists live customers ordered by id, strictly after `after`, at most `limit` of them
    /// (clamped to [`MAX_LIST_ROWS`]).
    fn list(&mut self, after: Option<&CustomerId>, limit: u32) -> Result<Vec<Customer>>;

    /// One round trip to the store (`SELECT 1`): `Ok` when it answers, `Unavailable` when a
    /// server is unreachable. Liveness and `/ready` ask this, not the actor in front of it.
    fn ping(&mut self) -> Result<()>;

    /// F3: settles a request whose outcome is unknown, so it can never apply later. Records
    /// the id as aborted unless it is already settled; see [`Settlement`].
    fn settle(&mut self, stamp: &RequestStamp) -> Result<Settlement>;

    /// F3 for several requests at once: settles the first of `stamps` and as many of the
    /// following as the store takes, in order, in one transaction (one commit) with a savepoint
    /// each, so a settle that fails (a body mismatch, a lock wait that timed out) is answered
    /// with its error and the others still commit. Returns one answer per settle attempted —
    /// at least one; the rest were not attempted and must be settled again. `Err` when the
    /// transaction as a whole failed: then no settle in it was recorded (`Unavailable`) or,
    /// at `COMMIT`, whether they were is unknown (`Timeout`) — answered 504 either way.
    fn settle_batch(&mut self, stamps: &[RequestStamp]) -> Result<Vec<Result<Settlement>>> {
        Ok(stamps.iter().map(|s| self.settle(s)).collect())
    }

    /// F4: forgets at most `limit` request ids applied strictly before `older_than`
    /// (wall-clock µs, as in [`RequestStamp::at`]), oldest first, in one short transaction that
    /// waits for no lock a write holds (rows another transaction holds are skipped). Returns how
    /// many were removed: fewer than `limit` means none is left but such held rows. Callers
    /// keep at least [`requests::MIN_RETENTION`] ([`prune`]).
    fn prune_requests(&mut self, older_than: i64, limit: u32) -> Result<u64>;

    /// L1: registers a process (`incarnation`) under its node name; see [`Registration`].
    fn register(&mut self, node: &str, incarnation: u64) -> Result<Registration>;

    /// L2: renews `me` with renew number `k` (strictly increasing per incarnation, never
    /// reused), recording the TTL `me` runs with (`ttl_ms`, L4). Never touches
    /// `shard_leases`; runs in its own transaction.
    fn renew(&mut self, me: &Holder, k: u64, ttl_ms: u64) -> Result<Renewal>;

    /// L5: revokes `victim` (bumps its epoch, only if its row is exactly as observed) and, in
    /// the same transaction, grants `contender` those of `shards` that are free or held under a
    /// stale epoch. Nothing is done unless both the victim row and `contender` are as given.
    fn takeover(
        &mut self,
        contender: &Holder,
        victim: &Observed,
        shards: &[ShardId],
    ) -> Result<Takeover>;

    /// L5 for a restarted process: takes its own name's row over from the previous
    /// `incarnation` observed unchanged for TTL (bumps the epoch and writes `incarnation`),
    /// then grants `shards` to the new holder as [`Store::grant`] would.
    fn takeover_own_row(
        &mut self,
        incarnation: u64,
        observed: &Observed,
        shards: &[ShardId],
    ) -> Result<Takeover>;

    /// L5: grants `contender` those of `shards` that are released, never held, or held under a
    /// stale epoch. No node row is changed.
    fn grant(&mut self, contender: &Holder, shards: &[ShardId]) -> Result<Grant>;

    /// L6: releases `shard` if `node` still holds it at `token` (and bumps the token). A
    /// release by any other node changes nothing: only the holder gives a shard up.
    fn release(&mut self, node: &str, shard: ShardId, token: u64) -> Result<Release>;

    /// L6: on graceful stop, clears this incarnation from its node row so a restart registers
    /// at once. Returns false if the row names another incarnation (nothing changed).
    fn clear_incarnation(&mut self, node: &str, incarnation: u64) -> Result<bool>;

    /// Every shard row, in shard order: for routing and reconcile.
    fn lease_table(&mut self) -> Result<Vec<ShardLease>>;

    /// Every node row, ordered by name: what contenders watch.
    fn node_table(&mut self) -> Result<Vec<NodeLease>>;

    /// Email-key conflicts found when keys were first computed that still stand: the later
    /// row is live and still has its suffixed key ([`email_keys`]). Ordered by id.
    fn email_key_conflicts(&mut self) -> Result<Vec<email_keys::KeyConflict>>;
}
