//! The actors of one node and the entry-side request path.
//!
//! ```text
//! NodeSupervisor                      (supervisor.rs) starts children in order, restarts any that stops (with backoff)
//! ├── Database   [only with --db-path] (database.rs) joins "customer-db.v5"; storage engine on its own threads
//! ├── Heartbeat                        (cluster::heartbeat) joins "customer-heartbeat.v5"; answers peers' pings, nothing else
//! ├── Membership                       (cluster::membership) who is alive; publishes the placement view
//! ├── LeaseKeeper                      (lease_keeper.rs) registers, renews, acquires and releases shard leases
//! └── Registry                         (registry.rs) joins "customer-registry.v5"; get-or-create, route, retire
//!     ├── Customer <id>                (customer.rs) one per active customer; serialises all ops on it
//!     └── …
//! ```
//!
//! A request enters through the [`gateway::Gateway`] (not an actor: it runs on the HTTP task),
//! which computes the owner from the placement view and calls that node's Registry: a local
//! call, or one remote RPC. The Registry hands the command, with the caller's reply port, to
//! the customer's actor and goes on with its next message; the actor loads from and writes
//! to the Database (local or remote, found through the process group) and replies directly.
//!
//! Invariants:
//! * Domain failures travel in replies as [`crate::error::Error`]; they never kill an actor.
//!   Returning `Err` from a handler is reserved for broken invariants.
//! * Only the Registry sends to customer actors, and it stops one only by a `Passivate`
//!   message queued behind everything it already sent — so no accepted request is dropped by
//!   passivation.
//! * Customer actors are local-only (`RactorMessage`): they are never announced to peers.
//! * A customer is served only by the holder of its shard's lease ([`lease_keeper`]): every
//!   request checks [`NodeContext::leases`] in the same actor turn as the cache read, and
//!   every write carries the lease's fencing token and the request's id.

pub mod customer;
pub mod database;
pub mod gateway;
pub mod lease_keeper;
pub mod recency;
pub mod registry;
pub mod shard_map;
pub mod supervisor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::lease::LeaseConfig;
use crate::cluster::membership::{Lease, View};
use crate::config::ReadMode;
use database::DatabaseClient;
use lease_keeper::NodeLeases;

/// What every actor of a node shares: identity, timeouts, the placement view, the way to the
/// database and the counters. Built once by `node::start`.
pub struct NodeContext {
    /// This node's stable name.
    pub name: String,
    /// Deadline for one call to another actor or node.
    pub request_timeout: Duration,
    /// Idle time after which a customer actor is passivated.
    pub idle_timeout: Duration,
    /// Most customer actors active at once; the Registry passivates the least recently used
    /// one before an activation would exceed it.
    pub max_active_customers: usize,
    /// The latest placement view, published by Membership.
    pub view: watch::Receiver<Arc<View>>,
    /// Whether this node's view of the cluster is recent (Membership's freshness flag; the
    /// safety of cached reads rests on [`NodeContext::leases`], not on this).
    pub lease: Lease,
    /// This process's shard leases: what it may serve, under which token, until when.
    pub leases: Arc<NodeLeases>,
    /// Lease timing (TTL, renew interval, margin).
    pub lease_config: LeaseConfig,
    /// Where GETs are served from (R1).
    pub read_mode: ReadMode,
    /// Customers with a write whose outcome is unknown and not yet settled (F3), with that
    /// write's request stamp: their reloads are not cached until it is settled. Shared by the
    /// customer actors so it outlives any one of them; bounded by the writes in flight.
    pub unsettled: std::sync::Mutex<
        std::collections::HashMap<crate::customer::CustomerId, crate::storage::RequestStamp>,
    >,
    /// The way to the database actor, wherever it runs.
    pub db: DatabaseClient,
    /// This node's SQLite database role (candidate, serving, refused; none without SQLite):
    /// customer requests are refused unless it allows them.
    pub db_role: crate::cluster::dbnode::DbRoleCell,
    /// Counters shared by the Registry and customer actors.
    pub counters: Counters,
    /// Cluster events as this node sees them (`GET /v1/events`, the dashboard).
    pub events: crate::events::EventBus,
    /// Faults a test injects into this node; kept out of every wire type.
    #[cfg(test)]
    pub faults: TestFaults,
}

/// Writes straight into a node's SQLite file, unfenced, as an operator's SQL would: behind
/// every lease holder's back. Tests only — the Database actor refuses unfenced writes — for
/// seeding rows and for writes a holder must never see cached. Returns each write's result.
#[cfg(test)]
pub async fn write_behind(
    db_path: &std::path::Path,
    ops: Vec<crate::storage::WriteOp>,
) -> Vec<crate::error::Result<Option<crate::customer::Customer>>> {
    use crate::storage::{Store, Write, WriteOutcome};
    let path = db_path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut store = crate::storage::sqlite::SqliteStore::open(&path).expect("open the file");
        let writes: Vec<Write> = ops.into_iter().map(Write::from).collect();
        // The node's own writer renews leases meanwhile: a transaction that read before it
        // wrote may find the file changed under it (SQLite's BUSY_SNAPSHOT), so try again.
        let mut tries = 0;
        let outcomes = loop {
            match store.write_batch(&writes) {
                Err(crate::error::Error::Internal(m)) if m.contains("locked") && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.expect("the batch commits"),
            }
        };
        outcomes
            .into_iter()
            .map(|o| match o {
                WriteOutcome::Decided(r) => r,
                other => panic!("an unfenced write without a request id was {other:?}"),
            })
            .collect()
    })
    .await
    .expect("the write task ran")
}

/// Inserts `customer` behind every holder's back ([`write_behind`]) and returns it as stored.
#[cfg(test)]
pub async fn insert_behind(
    db_path: &std::path::Path,
    customer: crate::customer::Customer,
) -> crate::customer::Customer {
    let mut out = write_behind(db_path, vec![crate::storage::WriteOp::Insert(customer)]).await;
    out.remove(0).expect("inserted").expect("a row")
}

/// Faults that in-process tests inject (DESIGN §10's "fault hooks inside the process").
#[cfg(test)]
#[derive(Default)]
pub struct TestFaults {
    /// The customer whose actor panics on its next command (supervision tests).
    pub panic_customer: std::sync::Mutex<Option<crate::customer::CustomerId>>,
    /// When set, customer actors treat every write's reply as lost (the database applied
    /// it, or not, but the owner never learns which): the F3 settle path.
    pub lose_write_replies: std::sync::atomic::AtomicBool,
    /// When set, customer actors' writes never reach the database and their outcome is
    /// unknown to the owner: the F3 settle path of a write that was not applied.
    pub drop_writes: std::sync::atomic::AtomicBool,
    /// When set, the LeaseKeeper treats the next grant's reply as lost (the grant committed,
    /// the keeper never learnt it): the reconcile path (DESIGN §10 case 13). One-shot.
    pub lose_next_grant_reply: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl TestFaults {
    /// True once for `id` after it was armed with [`TestFaults::panic_customer`].
    pub fn take_panic(&self, id: crate::customer::CustomerId) -> bool {
        let mut armed = self
            .panic_customer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *armed == Some(id) {
            *armed = None;
            return true;
        }
        false
    }

    /// `outcome`, or a lost reply when [`TestFaults::lose_write_replies`] is set.
    pub fn maybe_lose<T>(&self, outcome: crate::error::Result<T>) -> crate::error::Result<T> {
        if self
            .lose_write_replies
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(crate::error::Error::Timeout(
                "test fault: the write's reply was lost".into(),
            ));
        }
        outcome
    }
}

impl NodeContext {
    /// The current placement view (a cheap `Arc` clone).
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }
}

/// Monotonic counters of the customer actors on this node (also exported as metrics).
#[derive(Default)]
pub struct Counters {
    /// Customer actors started.
    pub activations: AtomicU64,
    /// Customer actors stopped on purpose.
    pub passivations: AtomicU64,
    /// Of those, the ones stopped to stay within `max_active_customers`.
    pub lru_passivations: AtomicU64,
    /// Customer actors that panicked.
    pub restarts: AtomicU64,
    /// Stale writes rejected by the database's compare-and-set.
    pub version_conflicts: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
