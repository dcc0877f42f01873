//! The LeaseKeeper: one per node; it earns and keeps this process's shard leases (DESIGN §6
//! L1–L7) and publishes what they allow in [`NodeLeases`], which every customer actor reads
//! on every request.
//!
//! ```text
//!   tick (every renew interval)
//!     ├─ unregistered? ── register ──▶ Registered(e) ─────────────▶ HolderLease::registered
//!     │                              └▶ Occupied(old row of my name) ─ observed unchanged for
//!     │                                 TTL ─▶ takeover_own_row ──▶ registered + granted
//!     ├─ L7: no progress for TTL ─▶ stop renewing, leave customer-registry; pings ×3 ─▶ rejoin
//!     ├─ renew k (s_k = holder_now() just before the send) ─▶ Renewed{table}: extend validity,
//!     │                                                       feed the Observer (receipt time)
//!     │                                                      Lost: all shards LOST, register
//!     │                                                      Superseded: exit non-zero
//!     ├─ held shards placement moved away ─▶ RELEASING now, released once its writes in flight are settled
//!     └─ lease table ─▶ reconcile if a grant/release reply was lost
//!                     └▶ plan_acquire: grant (free, released, stale epoch) / takeover (holder's
//!                        row revocable) / wait (the holder releases it)
//! ```
//!
//! Every database call runs in a spawned task whose result comes back as a message, so a slow
//! or unreachable database never delays the next renew, and the actor's state changes only in
//! its own handler. The lease state itself ([`NodeLeases`]) lives in the `NodeContext`, not in
//! the actor: a restarted keeper continues with it (same incarnation, same shards, same
//! validity), so a restart can never forget a HELD shard while its actors keep serving. What a
//! keeper owes beyond that state it rebuilds at start: the release of every shard it finds
//! RELEASING is sent again (a release names its token, so a stale one changes nothing).
//!
//! Deliberately not here: any timing rule (those are in `cluster::lease`, pure and tested),
//! and waiting on a lease on the request path: a request that finds its shard not HELD is
//! answered `NotHolder` at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use tokio::task::JoinHandle;

use super::NodeContext;
use crate::clock::{HolderInstant, holder_now};
use crate::cluster::lease::{
    AfterLoss, HolderLease, LeaseConfig, NodeLeaseRow, Observer, Reconciled, Renew, Revocation,
    ShardLeaseRow, ShardState, ShardStatus,
};
use crate::cluster::protocol::{OwnRowRequest, REGISTRY_GROUP, TakeoverRequest, registry_name};
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::storage::{
    Grant, Holder, NodeLease, Registration, Release, Renewal, ShardGrant, ShardId, ShardLease,
    Takeover,
};

/// Exit code of a process that found a newer incarnation of its own name in the lease table
/// (a stale duplicate, L2): it must not serve anything more.
pub const EXIT_SUPERSEDED: i32 = 75;

/// A random incarnation for this process start (L1): 64 bits from a UUID v7's random part, so
/// two starts of one node name never share one, whatever the clocks say.
pub fn random_incarnation() -> u64 {
    uuid::Uuid::now_v7().as_u128() as u64
}

/// The lease state of this process, shared by the keeper (which changes it) and every
/// customer actor and the Registry (which read it on every request: a brief read lock).
pub struct NodeLeases {
    node: String,
    holder: RwLock<HolderLease>,
    /// Holder and token of every shard as the last lease table read showed them: the hint a
    /// `NotHolder` answer carries so the entry node retries at the right node.
    hints: RwLock<BTreeMap<ShardId, (Option<String>, u64)>>,
    /// Writes in flight per shard (L6 RELEASING waits for their outcomes): counted while a
    /// [`WritePermit`] lives. Incremented under the holder read lock in the same step as the
    /// lease check, so once `begin_release` (write lock) has run, the count only falls.
    writes: Vec<std::sync::atomic::AtomicU32>,
}

/// Leave to send one write under a shard's token; the shard counts it as in flight until the
/// permit is dropped (after the write's outcome is known or settled).
pub struct WritePermit {
    leases: Arc<NodeLeases>,
    shard: ShardId,
    /// The token the write carries (F1).
    pub token: u64,
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        self.leases.writes[usize::from(self.shard)]
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl NodeLeases {
    /// A fresh, unregistered lease state for this process (`incarnation` random per start).
    pub fn new(node: &str, config: LeaseConfig, incarnation: u64) -> Self {
        Self {
            node: node.to_owned(),
            holder: RwLock::new(HolderLease::new(config, incarnation, holder_now())),
            hints: RwLock::new(BTreeMap::new()),
            writes: (0..crate::cluster::placement::SHARDS)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
        }
    }

    /// A permit to write on `shard` now, or `None` when the shard may not be served (L6): the
    /// check and the in-flight count are one step, so a RELEASING shard never gains a write.
    pub fn begin_write(
        self: &Arc<Self>,
        shard: ShardId,
        now: HolderInstant,
    ) -> Option<WritePermit> {
        let lease = self.read();
        match lease.shard_state(shard, now) {
            ShardState::Serve { token, .. } => {
                self.writes[usize::from(shard)].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(WritePermit {
                    leases: self.clone(),
                    shard,
                    token,
                })
            }
            ShardState::NotHolder => None,
        }
    }

    /// Writes on `shard` whose outcome is not known yet.
    pub fn writes_in_flight(&self, shard: ShardId) -> u32 {
        self.writes[usize::from(shard)].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// False while L7 has stopped renewing: this node must then stay out of
    /// `customer-registry` (a restarted Registry asks before it joins).
    pub fn is_renewing(&self) -> bool {
        !self.read().is_stopped()
    }

    /// This process start's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.read().incarnation()
    }

    /// May `shard` be served at `now` (L6)? Read in the same actor turn as the cached row.
    pub fn shard_state(&self, shard: ShardId, now: HolderInstant) -> ShardState {
        self.read().shard_state(shard, now)
    }

    /// Full status of `shard` at `now`, for observability and actor retirement.
    pub fn status(&self, shard: ShardId, now: HolderInstant) -> Option<ShardStatus> {
        self.read().shard_status(shard, now)
    }

    /// Shards held (and within validity) at `now`.
    pub fn held_count(&self, now: HolderInstant) -> usize {
        let lease = self.read();
        lease
            .held()
            .iter()
            .filter(|(s, _)| matches!(lease.shard_status(*s, now), Some(ShardStatus::Held { .. })))
            .count()
    }

    /// The answer for a request on `shard` this node may not serve: `NotHolder` naming the
    /// holder of the last lease table read, if another node.
    pub fn not_holder(&self, shard: ShardId) -> Error {
        let (holder, token) = self.hint(shard).unwrap_or((None, 0));
        let holder = holder.filter(|h| *h != self.node);
        Error::NotHolder { holder, token }
    }

    /// Holder and token of `shard` in the last lease table read.
    pub fn hint(&self, shard: ShardId) -> Option<(Option<String>, u64)> {
        let hints = self.hints.read().unwrap_or_else(|p| p.into_inner());
        hints.get(&shard).cloned()
    }

    /// A write on `shard` at `token` was fenced: the shard is LOST here (unless re-granted
    /// since under a newer token). Returns true when it became LOST.
    pub fn on_fenced(&self, shard: ShardId, token: u64) -> bool {
        let lost = self.update(|l| l.on_fenced(shard, token));
        if lost {
            metrics::counter!("customer_leases_lost_total").increment(1);
            tracing::warn!(
                shard,
                token,
                "a write was fenced: the shard was granted elsewhere; LOST here"
            );
        }
        lost
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HolderLease> {
        self.holder.read().unwrap_or_else(|p| p.into_inner())
    }

    fn update<R>(&self, f: impl FnOnce(&mut HolderLease) -> R) -> R {
        let mut lease = self.holder.write().unwrap_or_else(|p| p.into_inner());
        f(&mut lease)
    }

    /// Replaces the holder hints with a fresh lease table read.
    pub fn set_hints(&self, rows: &[ShardLease]) {
        let mut hints = self.hints.write().unwrap_or_else(|p| p.into_inner());
        hints.clear();
        hints.extend(rows.iter().map(|r| (r.shard, (r.holder.clone(), r.token))));
    }
}

/// What to ask the database for, decided from one lease table read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acquire {
    /// Shards placed here that are free, released, or held under a stale epoch: `grant`.
    pub grant: Vec<ShardId>,
    /// Shards placed here whose holder's row is revocable now: one `takeover` per victim.
    pub takeovers: Vec<(Revocation, Vec<ShardId>)>,
    /// Rows naming this exact (incarnation, epoch) that we do not know we hold: a grant
    /// whose reply was lost. Reconcile before asking again.
    pub reconcile: bool,
}

/// Who this process is, as the rows name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me<'a> {
    /// Node name.
    pub node: &'a str,
    /// This process start.
    pub incarnation: u64,
    /// Current epoch.
    pub epoch: u64,
}

/// Decides, for every shard placement gives this node and that it does not hold, whether to
/// grant it, take it over from a revocable holder, or wait for its holder to release it
/// (L5). `held` are the shards this node holds or is releasing; `nodes` the last node table;
/// `revocable` the Observer's answer now. Pure: no clock, no I/O.
pub fn plan_acquire(
    me: &Me<'_>,
    placed_here: &[ShardId],
    held: &[ShardId],
    rows: &[ShardLease],
    nodes: &[NodeLease],
    revocable: &[Revocation],
) -> Acquire {
    let mut plan = Acquire::default();
    let mut by_victim: BTreeMap<String, (Revocation, Vec<ShardId>)> = BTreeMap::new();
    for shard in placed_here.iter().filter(|s| !held.contains(s)) {
        let Some(row) = rows.iter().find(|r| r.shard == *shard) else {
            continue;
        };
        let Some(holder) = row.holder.as_deref() else {
            plan.grant.push(*shard);
            continue;
        };
        let row_epoch = row.holder_epoch.unwrap_or(0);
        if holder == me.node
            && row.holder_incarnation == Some(me.incarnation)
            && row_epoch == me.epoch
        {
            plan.reconcile = true;
            continue;
        }
        let node_epoch = nodes.iter().find(|n| n.node == holder).map(|n| n.epoch);
        if node_epoch.is_some_and(|e| e > row_epoch) {
            plan.grant.push(*shard);
            continue;
        }
        let victim = revocable
            .iter()
            .find(|v| v.node == holder && v.epoch == row_epoch);
        if let Some(v) = victim {
            by_victim
                .entry(v.node.clone())
                .or_insert_with(|| (v.clone(), Vec::new()))
                .1
                .push(*shard);
        }
    }
    plan.takeovers = by_victim.into_values().collect();
    plan
}

/// Peers in `table` whose recorded TTL differs from `own` and did not already in `before`
/// (so each difference is reported once, when it appears).
pub fn other_ttls(
    own: Duration,
    before: &[NodeLease],
    table: &[NodeLease],
) -> Vec<(String, Duration)> {
    let recorded = |r: &NodeLease| Duration::from_millis(r.ttl_ms);
    table
        .iter()
        .filter(|r| r.ttl_ms != 0 && recorded(r) != own)
        .filter(|r| {
            !before
                .iter()
                .any(|b| b.node == r.node && b.ttl_ms == r.ttl_ms)
        })
        .map(|r| (r.node.clone(), recorded(r)))
        .collect()
}

/// The Observer's row type from a stored node row (rows without an incarnation name no live
/// process and are left out).
pub fn observed_rows(table: &[NodeLease]) -> Vec<NodeLeaseRow> {
    table
        .iter()
        .filter_map(|r| {
            Some(NodeLeaseRow {
                node: r.node.clone(),
                incarnation: r.incarnation?,
                epoch: r.epoch,
                seq: r.seq,
                ttl: Duration::from_millis(r.ttl_ms),
            })
        })
        .collect()
}

/// Reconcile's row type from a stored shard row.
pub fn reconcile_rows(rows: &[ShardLease]) -> Vec<ShardLeaseRow> {
    rows.iter()
        .map(|r| ShardLeaseRow {
            shard: r.shard,
            holder: r.holder.clone(),
            holder_incarnation: r.holder_incarnation.unwrap_or(0),
            holder_epoch: r.holder_epoch.unwrap_or(0),
            token: r.token,
        })
        .collect()
}

/// Messages of the LeaseKeeper (local-only).
#[derive(RactorMessage)]
pub enum LeaseKeeperMsg {
    /// Every renew interval: register, renew, release, acquire as needed.
    Tick,
    /// A registration answered, received at the given holder-clock reading.
    Registered(Result<Registration>, HolderInstant),
    /// Renew `Renew` answered, received at the given reading.
    Renewed(Renew, Result<Renewal>, HolderInstant),
    /// The lease table was read.
    Table(Result<Vec<ShardLease>>),
    /// Grants came back under `epoch` (from a grant or takeover); `Err` = reply lost.
    Granted(u64, Result<Vec<ShardGrant>>),
    /// A restarted process's takeover of its own row answered.
    OwnRow(Result<Takeover>, HolderInstant),
    /// A release answered.
    Released(ShardId, Result<Release>),
    /// A renew-path ping (L7) answered after the given round trip, or failed.
    Pinged(Result<Duration>),
    /// Graceful stop: release every shard, clear our row, stop renewing. Replies when done.
    Shutdown(RpcReplyPort<()>),
}

/// The LeaseKeeper actor.
pub struct LeaseKeeper;

/// State of the LeaseKeeper.
pub struct KeeperState {
    ctx: Arc<NodeContext>,
    observer: Observer,
    /// The last node table a renew reply carried.
    nodes: Vec<NodeLease>,
    /// A registration or lease-table read is in flight: one at a time.
    busy: bool,
    /// Grants and takeovers in flight: no new table read (and plan) until they answered.
    pending_grants: usize,
    /// A grant or release reply was lost: reconcile on the next table read.
    reconcile: bool,
    /// Shards in RELEASING since the given tick, released on a later one.
    releasing: BTreeMap<ShardId, (u64, Instant)>,
    /// After a graceful stop: do nothing more.
    stopped: bool,
    /// Shards whose release was sent since they were last granted: the releasing set may send
    /// one again after its answer, and the `lease_released` event counts each shard once.
    release_sent: std::collections::BTreeSet<ShardId>,
    /// Whether the last renew reached the database: a change is reported as an event.
    db_reachable: bool,
    /// The SQLite database node followed when the last registration was sent, and when the
    /// current one succeeded: a renew that finds no row of ours at *another* database node
    /// (the followed one lost its tie-break and exits, see [`crate::cluster::dbnode`]) means
    /// every shard is LOST and we register there afresh, not that a newer process took over.
    register_via: Option<String>,
    registered_via: Option<String>,
    /// When the lease table was last read: it is read at least every [`LEASE_AUDIT_INTERVAL`]
    /// to notice a lease moved away from this node without its release.
    table_read_at: Instant,
    ticker: Option<JoinHandle<()>>,
}

/// Longest time between two reads of the lease table, even in the steady state: how soon a
/// shard lease moved away from this node without its release is noticed ([`unexpected_moves`]).
pub const LEASE_AUDIT_INTERVAL: Duration = Duration::from_secs(15);

/// Shards this node holds (`held`, with their tokens) whose row names another holder or no
/// holder, although this node did not release them (`releasing`): each with the holder the row
/// names. A release always goes through this node's keeper, so such a row means someone with
/// cluster access moved the lease.
pub fn unexpected_moves(
    me: &Holder,
    held: &[(ShardId, u64)],
    rows: &[ShardLease],
    releasing: &BTreeSet<ShardId>,
) -> Vec<(ShardId, Option<String>)> {
    let by_shard: BTreeMap<ShardId, &ShardLease> = rows.iter().map(|r| (r.shard, r)).collect();
    held.iter()
        .filter(|(shard, _)| !releasing.contains(shard))
        .filter_map(|(shard, token)| {
            let row = by_shard.get(shard)?;
            let ours = row.holder.as_deref() == Some(me.node.as_str())
                && row.holder_incarnation == Some(me.incarnation);
            (!ours && row.token > *token).then(|| (*shard, row.holder.clone()))
        })
        .collect()
}

impl Actor for LeaseKeeper {
    type Msg = LeaseKeeperMsg;
    type State = KeeperState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker = myself.send_interval(ctx.lease_config.renew_interval, || LeaseKeeperMsg::Tick);
        let _ = myself.cast(LeaseKeeperMsg::Tick);
        let observer = Observer::new(ctx.lease_config.ttl, &ctx.name, ctx.leases.incarnation());
        let releasing = owed_releases(&ctx.leases);
        Ok(KeeperState {
            ctx,
            observer,
            nodes: Vec::new(),
            busy: false,
            table_read_at: Instant::now(),
            pending_grants: 0,
            reconcile: false,
            releasing,
            stopped: false,
            release_sent: Default::default(),
            db_reachable: true,
            register_via: None,
            registered_via: None,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.stopped {
            if let LeaseKeeperMsg::Shutdown(reply) = message {
                let _ = reply.send(());
            }
            return Ok(());
        }
        match message {
            LeaseKeeperMsg::Tick => state.tick(&myself),
            LeaseKeeperMsg::Registered(r, at) => state.on_registered(&myself, r, at),
            LeaseKeeperMsg::Renewed(renew, r, at) => state.on_renewed(&myself, renew, r, at),
            LeaseKeeperMsg::Table(r) => state.on_table(&myself, r),
            LeaseKeeperMsg::Granted(epoch, r) => state.on_granted(epoch, r),
            LeaseKeeperMsg::OwnRow(r, at) => state.on_own_row(r, at),
            LeaseKeeperMsg::Released(shard, r) => state.on_released(shard, r),
            LeaseKeeperMsg::Pinged(r) => state.on_pinged(r),
            LeaseKeeperMsg::Shutdown(reply) => {
                state.release_all().await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

/// Counts one lease statement sent to the database, by kind (see
/// [`crate::telemetry::LEASE_STATEMENT_KINDS`]).
fn statement(kind: &'static str) {
    metrics::counter!("customer_lease_statements_total", "kind" => kind).increment(1);
}

/// Runs `work` on its own task and sends its result back as a message.
fn spawn_to<F, M>(myself: &ActorRef<LeaseKeeperMsg>, work: F, wrap: M)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
    M: FnOnce(F::Output) -> LeaseKeeperMsg + Send + 'static,
{
    let me = myself.clone();
    tokio::spawn(async move {
        let out = work.await;
        let _ = me.cast(wrap(out));
    });
}

impl KeeperState {
    fn me(&self) -> Option<Holder> {
        let epoch = self.ctx.leases.read().epoch()?;
        Some(Holder {
            node: self.ctx.name.clone(),
            incarnation: self.ctx.leases.incarnation(),
            epoch,
        })
    }

    fn placed_here(&self) -> Vec<ShardId> {
        self.ctx.view().ring.local_shards()
    }

    fn tick(&mut self, myself: &ActorRef<LeaseKeeperMsg>) {
        let now = holder_now();
        metrics::gauge!("customer_leases_held").set(self.ctx.leases.held_count(now) as f64);
        let Some(me) = self.me() else {
            return self.register(myself);
        };
        if self.liveness(myself, now) {
            return;
        }
        if let Some(renew) = self.ctx.leases.update(|l| l.renew_sent(holder_now())) {
            let db = self.ctx.db.clone();
            let ttl_ms = self.ctx.lease_config.ttl.as_millis() as u64;
            let sent = Instant::now();
            statement("renew");
            spawn_to(
                myself,
                async move { db.renew(me, renew.k, ttl_ms).await },
                move |r| {
                    metrics::histogram!("customer_lease_renew_seconds")
                        .record(sent.elapsed().as_secs_f64());
                    LeaseKeeperMsg::Renewed(renew, r, holder_now())
                },
            );
        }
        self.release_moved(myself);
        if !self.busy && self.pending_grants == 0 && self.table_wanted() {
            self.busy = true;
            let db = self.ctx.db.clone();
            statement("table");
            spawn_to(
                myself,
                async move { db.lease_table().await },
                LeaseKeeperMsg::Table,
            );
        }
    }

    /// Whether this tick needs the shard table. In the steady state (every shard placement
    /// gives us is HELD, nothing being released, nothing to reconcile) the renew is the only
    /// statement per interval, whatever the number of customers, plus one table read every
    /// [`LEASE_AUDIT_INTERVAL`] (the audit for leases moved without our release). The holder hints that
    /// redirects show are refreshed by these reads (placement changes cause them on every
    /// node whose shards move) and by `GET /v1/cluster/shards`, which reads the table itself.
    /// Takeovers need no read of their own: a dead node's shards become ours by placement
    /// first, and that is a change.
    fn table_wanted(&self) -> bool {
        if self.reconcile || !self.releasing.is_empty() {
            return true;
        }
        if self.table_read_at.elapsed() >= LEASE_AUDIT_INTERVAL {
            return true;
        }
        let held = self.held_shards();
        let placed = self.placed_here();
        placed.len() != held.len() || placed.iter().any(|s| !held.contains(s))
    }

    /// The shards this node's lease state says it holds now.
    fn held_shards(&self) -> BTreeSet<ShardId> {
        self.ctx
            .leases
            .read()
            .held()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    fn register(&mut self, myself: &ActorRef<LeaseKeeperMsg>) {
        if self.busy {
            return;
        }
        self.busy = true;
        self.register_via = self.ctx.db_role.chosen().map(|d| d.name);
        let db = self.ctx.db.clone();
        let (node, inc) = (self.ctx.name.clone(), self.ctx.leases.incarnation());
        statement("register");
        spawn_to(myself, async move { db.register(&node, inc).await }, |r| {
            LeaseKeeperMsg::Registered(r, holder_now())
        });
    }

    /// L7. Returns true while renewing is stopped (nothing else to do this tick).
    fn liveness(&mut self, myself: &ActorRef<LeaseKeeperMsg>, now: HolderInstant) -> bool {
        let leases = &self.ctx.leases;
        if leases.update(|l| l.should_stop_renewing(now)) {
            leases.update(HolderLease::stop_renewing);
            set_registry_membership(&self.ctx.name, false);
            tracing::error!(
                "no lease renew succeeded for a whole TTL: stopped renewing and left the registry so others may take our shards over"
            );
            self.emit(
                EventKind::LeaseExpired,
                "every shard of this node",
                "no lease renew succeeded for a whole TTL; left the registry",
            );
        }
        if !leases.read().is_stopped() {
            return false;
        }
        if leases.read().may_rejoin() {
            leases.update(|l| l.rejoined(now));
            set_registry_membership(&self.ctx.name, true);
            tracing::info!("the renew path answers again: rejoined the registry");
            return false;
        }
        let db = self.ctx.db.clone();
        statement("ping");
        spawn_to(
            myself,
            async move {
                let started = Instant::now();
                db.ping().await.map(|_| started.elapsed())
            },
            LeaseKeeperMsg::Pinged,
        );
        true
    }

    fn on_pinged(&mut self, r: Result<Duration>) {
        match r {
            Ok(rtt) => self.ctx.leases.update(|l| l.ping_answered(rtt)),
            Err(_) => self.ctx.leases.update(HolderLease::ping_failed),
        }
    }

    fn on_registered(
        &mut self,
        myself: &ActorRef<LeaseKeeperMsg>,
        r: Result<Registration>,
        at: HolderInstant,
    ) {
        self.busy = false;
        match r {
            Ok(Registration::Registered { epoch }) => {
                self.registered_via = self.register_via.clone();
                self.ctx.leases.update(|l| l.registered(epoch, at));
                tracing::info!(
                    epoch,
                    incarnation = self.ctx.leases.incarnation(),
                    "lease registered"
                );
                let _ = myself.cast(LeaseKeeperMsg::Tick);
            }
            Ok(Registration::Occupied(row)) => self.contend_own_row(myself, &row, at),
            Err(e) => tracing::debug!(error = %e, "lease registration failed; retrying next tick"),
        }
    }

    /// A previous process of our name still has the row: take it over only once it stood
    /// still for TTL (L5), like any contender.
    fn contend_own_row(
        &mut self,
        myself: &ActorRef<LeaseKeeperMsg>,
        row: &NodeLease,
        at: HolderInstant,
    ) {
        self.observer
            .observe(&observed_rows(std::slice::from_ref(row)), at);
        let Some(old) = self
            .observer
            .revocable(holder_now())
            .into_iter()
            .find(|v| v.node == self.ctx.name)
        else {
            tracing::info!(
                "a previous process of this node still holds its lease row; waiting until it stood still for TTL"
            );
            return;
        };
        self.busy = true;
        let request = OwnRowRequest {
            incarnation: self.ctx.leases.incarnation(),
            observed: crate::storage::Observed {
                node: old.node,
                incarnation: old.incarnation,
                epoch: old.epoch,
                seq: old.seq,
            },
            shards: self.placed_here(),
        };
        let db = self.ctx.db.clone();
        statement("own_row");
        spawn_to(
            myself,
            async move { db.takeover_own_row(request).await },
            |r| LeaseKeeperMsg::OwnRow(r, holder_now()),
        );
    }

    fn on_own_row(&mut self, r: Result<Takeover>, at: HolderInstant) {
        self.busy = false;
        match r {
            Ok(Takeover::Done {
                victim_epoch,
                granted,
            }) => {
                self.ctx.leases.update(|l| l.registered(victim_epoch, at));
                tracing::info!(
                    epoch = victim_epoch,
                    "took this node's lease row over from its previous process"
                );
                self.on_granted(victim_epoch, Ok(granted));
            }
            Ok(other) => {
                tracing::info!(outcome = ?other, "own-row takeover did not apply; will observe again")
            }
            Err(e) => {
                // Unknown: if it applied, the next register finds our incarnation (next epoch).
                tracing::warn!(error = %e, "own-row takeover reply lost");
            }
        }
    }

    fn on_renewed(
        &mut self,
        myself: &ActorRef<LeaseKeeperMsg>,
        renew: Renew,
        r: Result<Renewal>,
        at: HolderInstant,
    ) {
        match r {
            Ok(Renewal::Renewed { table }) => {
                self.database_seen(Ok(()));
                self.ctx
                    .leases
                    .update(|l| l.renew_succeeded(renew.k, renew.epoch, at));
                self.observer.observe(&observed_rows(&table), at);
                let own = self.ctx.lease_config.ttl;
                for (node, ttl) in other_ttls(own, &self.nodes, &table) {
                    tracing::warn!(
                        peer = %node,
                        peer_ttl_ms = ttl.as_millis() as u64,
                        own_ttl_ms = own.as_millis() as u64,
                        "a peer runs with another --lease-ttl-ms: taking its shards over waits the longer TTL; give every node the same value"
                    );
                }
                self.nodes = table;
            }
            Ok(Renewal::Lost { current }) => self.on_lost(myself, renew.epoch, &current),
            Ok(Renewal::Superseded { current: None })
                if self.registered_via != self.ctx.db_role.chosen().map(|d| d.name) =>
            {
                tracing::warn!(
                    registered_with = ?self.registered_via,
                    "the database node changed since this node registered its lease; registering with the new one"
                );
                let gone = NodeLease {
                    node: self.ctx.name.clone(),
                    incarnation: None,
                    epoch: renew.epoch,
                    seq: 0,
                    ttl_ms: 0,
                };
                self.on_lost(myself, renew.epoch, &gone);
            }
            Ok(Renewal::Superseded { current }) => superseded(&self.ctx, current.as_ref()),
            Err(e) => {
                tracing::debug!(k = renew.k, error = %e, "renew failed");
                self.database_seen(Err(e));
            }
        }
    }

    /// Reports the database becoming unreachable (or reachable again) through lease renews.
    fn database_seen(&mut self, outcome: Result<()>) {
        if outcome.is_ok() == self.db_reachable {
            return;
        }
        self.db_reachable = outcome.is_ok();
        match outcome {
            Ok(()) => self.emit(
                EventKind::DatabaseAvailability,
                "available",
                "a lease renew succeeded again",
            ),
            Err(e) => self.emit(
                EventKind::DatabaseAvailability,
                "unavailable",
                format!("a lease renew failed: {e}"),
            ),
        }
    }

    fn emit(&self, kind: EventKind, detail: impl Into<String>, cause: impl Into<String>) {
        self.ctx.events.emit(kind, detail, cause);
    }

    fn on_lost(&mut self, myself: &ActorRef<LeaseKeeperMsg>, epoch: u64, current: &NodeLease) {
        let AfterLoss::ReRegister { lost } = self.ctx.leases.update(|l| l.renew_lost(epoch)) else {
            return;
        };
        metrics::counter!("customer_leases_lost_total").increment(lost.len() as u64);
        tracing::warn!(
            epoch,
            now = current.epoch,
            lost = lost.len(),
            "this node's lease was revoked: every shard is LOST; registering again"
        );
        self.emit(
            EventKind::LeaseExpired,
            format!("{} shards lost", lost.len()),
            format!(
                "this node's lease was revoked (epoch {epoch} → {})",
                current.epoch
            ),
        );
        self.ctx
            .leases
            .update(|l| lost.iter().for_each(|s| l.forget(*s)));
        self.releasing.clear();
        let _ = myself.cast(LeaseKeeperMsg::Tick);
    }

    /// Held shards placement gives to another node: RELEASING now (no new requests, no new
    /// writes), the release itself once the writes already started have their outcome (L6), or
    /// after a request timeout at most (a later write would be fenced: the token moved on).
    fn release_moved(&mut self, myself: &ActorRef<LeaseKeeperMsg>) {
        let placed = self.placed_here();
        let held = self.ctx.leases.read().held();
        for (shard, _) in held.into_iter().filter(|(s, _)| !placed.contains(s)) {
            if let Some(token) = self.ctx.leases.update(|l| l.begin_release(shard)) {
                self.releasing
                    .entry(shard)
                    .or_insert((token, Instant::now()));
            }
        }
        let patience = self.ctx.request_timeout;
        let leases = &self.ctx.leases;
        let due: Vec<(ShardId, u64)> = self
            .releasing
            .iter()
            .filter(|(s, (_, since))| {
                leases.writes_in_flight(**s) == 0 || since.elapsed() >= patience
            })
            .map(|(s, (t, _))| (*s, *t))
            .collect();
        let fresh = due
            .iter()
            .filter(|(s, _)| self.release_sent.insert(*s))
            .count();
        if fresh > 0 {
            self.emit(
                EventKind::LeaseReleased,
                format!("{fresh} shards"),
                "placement gives them to another node",
            );
        }
        for (shard, token) in due {
            self.releasing.remove(&shard);
            let db = self.ctx.db.clone();
            statement("release");
            spawn_to(
                myself,
                async move { db.release(shard, token).await },
                move |r| LeaseKeeperMsg::Released(shard, r),
            );
        }
    }

    fn on_released(&mut self, shard: ShardId, r: Result<Release>) {
        match r {
            Ok(_) => {
                self.ctx.leases.update(|l| l.forget(shard));
                metrics::counter!("customer_leases_released_total").increment(1);
            }
            Err(e) => {
                tracing::warn!(shard, error = %e, "release reply lost; reconciling");
                self.reconcile = true;
            }
        }
    }

    fn on_table(&mut self, myself: &ActorRef<LeaseKeeperMsg>, r: Result<Vec<ShardLease>>) {
        self.busy = false;
        let rows = match r {
            Ok(rows) => rows,
            Err(e) => return tracing::debug!(error = %e, "lease table read failed"),
        };
        self.table_read_at = Instant::now();
        self.ctx.leases.set_hints(&rows);
        let Some(me) = self.me() else { return };
        if self.ctx.leases.read().is_stopped() {
            return;
        }
        self.audit(&me, &rows);
        let placed = self.placed_here();
        let held: Vec<ShardId> = self
            .ctx
            .leases
            .read()
            .held()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        let me_ref = Me {
            node: &me.node,
            incarnation: me.incarnation,
            epoch: me.epoch,
        };
        let revocable = self.observer.revocable(holder_now());
        let plan = plan_acquire(&me_ref, &placed, &held, &rows, &self.nodes, &revocable);
        if self.reconcile || plan.reconcile {
            self.reconcile = false;
            return self.run_reconcile(myself, &rows, &placed);
        }
        self.request_grants(myself, me, plan);
    }

    /// Reports shards moved away from this node without its release ([`unexpected_moves`]),
    /// and reconciles: they are LOST here at once.
    fn audit(&mut self, me: &Holder, rows: &[ShardLease]) {
        let now = holder_now();
        let held: Vec<(ShardId, u64)> = self
            .ctx
            .leases
            .read()
            .held()
            .into_iter()
            .filter(|(s, _)| {
                matches!(
                    self.ctx.leases.shard_state(*s, now),
                    ShardState::Serve { .. }
                )
            })
            .collect();
        let releasing: BTreeSet<ShardId> = self
            .releasing
            .keys()
            .chain(self.release_sent.iter())
            .copied()
            .collect();
        // Rows naming this very holder for shards it does not know it holds (a grant it
        // never asked for): reconcile, which releases those placed elsewhere.
        let known = self.held_shards();
        let strays = rows
            .iter()
            .filter(|r| {
                r.holder.as_deref() == Some(me.node.as_str())
                    && r.holder_incarnation == Some(me.incarnation)
                    && r.holder_epoch == Some(me.epoch)
                    && !known.contains(&r.shard)
                    && !releasing.contains(&r.shard)
            })
            .count();
        if strays > 0 {
            tracing::warn!(
                shards = strays,
                "the lease table names this node as the holder of shards it did not acquire; reconciling"
            );
            self.reconcile = true;
        }
        let moved = unexpected_moves(me, &held, rows, &releasing);
        if moved.is_empty() {
            return;
        }
        metrics::counter!("customer_leases_moved_unexpectedly_total").increment(moved.len() as u64);
        let holders: BTreeSet<String> = moved
            .iter()
            .map(|(_, h)| h.clone().unwrap_or_else(|| "nobody".into()))
            .collect();
        let holders: Vec<String> = holders.into_iter().collect();
        tracing::error!(
            shards = moved.len(),
            first = moved[0].0,
            now_held_by = ?holders,
            "shard leases this node held and never released have another holder now: someone with cluster access moved them; they are given up here and the table is reconciled"
        );
        self.emit(
            EventKind::LeaseMoved,
            format!(
                "{} shard(s), now held by {}",
                moved.len(),
                holders.join(", ")
            ),
            "moved without this node's release",
        );
        self.reconcile = true;
    }

    fn run_reconcile(
        &mut self,
        myself: &ActorRef<LeaseKeeperMsg>,
        rows: &[ShardLease],
        placed: &[ShardId],
    ) {
        let rows = reconcile_rows(rows);
        let node = self.ctx.name.clone();
        let decisions = self
            .ctx
            .leases
            .update(|l| l.reconcile(&node, &rows, |s| placed.contains(&s)));
        for d in decisions {
            match d {
                Reconciled::Adopt { shard, token } => {
                    tracing::info!(shard, token, "reconciled: adopted")
                }
                Reconciled::Release { shard, token } => {
                    self.releasing.insert(shard, (token, Instant::now()));
                }
                Reconciled::Lost { shard } => self.ctx.leases.update(|l| l.forget(shard)),
            }
        }
        let _ = myself;
    }

    fn request_grants(&mut self, myself: &ActorRef<LeaseKeeperMsg>, me: Holder, plan: Acquire) {
        let epoch = me.epoch;
        self.pending_grants += usize::from(!plan.grant.is_empty()) + plan.takeovers.len();
        if !plan.grant.is_empty() {
            let (db, me, shards) = (self.ctx.db.clone(), me.clone(), plan.grant);
            statement("grant");
            spawn_to(
                myself,
                async move {
                    match db.grant(me, shards).await? {
                        Grant::Granted(g) => Ok(g),
                        Grant::NotCurrent => Ok(Vec::new()),
                    }
                },
                move |r| LeaseKeeperMsg::Granted(epoch, r),
            );
        }
        for (victim, shards) in plan.takeovers {
            tracing::info!(victim = %victim.node, shards = shards.len(), "holder's lease row stood still for TTL: taking its shards over");
            self.emit(
                EventKind::LeaseExpired,
                format!("{} shards of {}", shards.len(), victim.node),
                "its lease row stood still for TTL; taking its shards over",
            );
            let request = TakeoverRequest {
                contender: me.clone(),
                victim: crate::storage::Observed {
                    node: victim.node,
                    incarnation: victim.incarnation,
                    epoch: victim.epoch,
                    seq: victim.seq,
                },
                shards,
            };
            let db = self.ctx.db.clone();
            statement("takeover");
            spawn_to(
                myself,
                async move {
                    match db.takeover(request).await? {
                        Takeover::Done { granted, .. } => Ok(granted),
                        _ => Ok(Vec::new()),
                    }
                },
                move |r| LeaseKeeperMsg::Granted(epoch, r),
            );
        }
    }

    fn on_granted(&mut self, epoch: u64, r: Result<Vec<ShardGrant>>) {
        self.pending_grants = self.pending_grants.saturating_sub(1);
        #[cfg(test)]
        let r = match r {
            Ok(g)
                if !g.is_empty()
                    && self
                        .ctx
                        .faults
                        .lose_next_grant_reply
                        .swap(false, std::sync::atomic::Ordering::SeqCst) =>
            {
                Err(Error::Timeout(
                    "test fault: the grant's reply was lost".into(),
                ))
            }
            other => other,
        };
        match r {
            Ok(granted) => {
                let n = granted.len();
                for g in &granted {
                    self.release_sent.remove(&g.shard);
                }
                let kept = self.ctx.leases.update(|l| {
                    granted
                        .iter()
                        .filter(|g| l.granted(g.shard, g.token, epoch))
                        .count()
                });
                if kept < n {
                    self.reconcile = true;
                }
                if n > 0 {
                    metrics::counter!("customer_leases_acquired_total").increment(n as u64);
                    tracing::info!(granted = n, epoch, "shard leases granted");
                    self.emit(
                        EventKind::LeaseAcquired,
                        format!("{n} shards"),
                        format!("granted under epoch {epoch}"),
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "grant reply lost; reconciling from the lease table");
                self.reconcile = true;
            }
        }
    }

    /// Graceful stop (L6): every shard RELEASING, wait for the writes in flight, release
    /// each at its token, clear our row's incarnation so a restart registers at once.
    async fn release_all(&mut self) {
        self.stopped = true;
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        let held = self.ctx.leases.read().held();
        for (shard, _) in &held {
            self.ctx.leases.update(|l| l.begin_release(*shard));
        }
        // Writes already started get their outcome first (L6), a request timeout at most.
        let patience = Instant::now() + self.ctx.request_timeout;
        while Instant::now() < patience
            && held
                .iter()
                .any(|(s, _)| self.ctx.leases.writes_in_flight(*s) > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let releases = held
            .iter()
            .map(|(shard, token)| self.ctx.db.release(*shard, *token));
        let released = futures::future::join_all(releases).await;
        let ok = released.iter().filter(|r| r.is_ok()).count();
        metrics::counter!("customer_leases_released_total").increment(ok as u64);
        for (shard, _) in &held {
            self.ctx.leases.update(|l| l.forget(*shard));
        }
        let cleared = self
            .ctx
            .db
            .clear_incarnation(&self.ctx.name, self.ctx.leases.incarnation())
            .await;
        tracing::info!(released = ok, of = held.len(), cleared = ?cleared, "shard leases released for shutdown");
        self.emit(
            EventKind::LeaseReleased,
            format!("{ok} of {} shards", held.len()),
            "graceful shutdown",
        );
    }
}

/// The releases a (re)starting keeper owes: every shard RELEASING in the lease state, whose
/// release a previous keeper may have begun and never sent (or never heard answered). Sending
/// it again is harmless: a release names its token, and one that moved on changes nothing.
/// Without this, a shard placement gives back to this node would stay RELEASING for good:
/// it counts as held, so it is neither released nor asked for again.
fn owed_releases(leases: &NodeLeases) -> BTreeMap<ShardId, (u64, Instant)> {
    let owed = leases.read().releasing();
    if !owed.is_empty() {
        tracing::info!(
            shards = owed.len(),
            "found shards RELEASING at start: sending their releases again"
        );
    }
    let now = Instant::now();
    owed.into_iter().map(|(s, t)| (s, (t, now))).collect()
}

/// L7: joins or leaves `customer-registry` with this node's Registry. Called after the lease
/// state says renewing stopped or resumed, which a Registry (re)starting meanwhile reads
/// before joining, so either it or this call leaves it in the right place.
fn set_registry_membership(node: &str, member: bool) {
    let Some(cell) = ractor::registry::where_is(registry_name(node)) else {
        return;
    };
    if member {
        ractor::pg::join(REGISTRY_GROUP.to_owned(), vec![cell]);
    } else {
        ractor::pg::leave(REGISTRY_GROUP.to_owned(), vec![cell]);
    }
}

/// A newer process of this node's name owns the row: this one is a stale duplicate and must
/// stop serving at once (L2). Every shard is LOST, then the process exits non-zero.
fn superseded(ctx: &NodeContext, current: Option<&NodeLease>) {
    let lost = ctx.leases.update(HolderLease::renew_superseded);
    tracing::error!(
        current = ?current,
        lost = lost.len(),
        "another process of this node name holds the lease row: this process is a stale duplicate and exits"
    );
    std::process::exit(EXIT_SUPERSEDED);
}

/// Spawns the LeaseKeeper under `supervisor`.
pub async fn spawn(
    ctx: Arc<NodeContext>,
    supervisor: ActorCell,
) -> Result<ActorRef<LeaseKeeperMsg>> {
    let name = format!("lease-keeper/{}", ctx.name);
    let (actor, _) = Actor::spawn_linked(Some(name), LeaseKeeper, ctx, supervisor)
        .await
        .map_err(|e| Error::Internal(format!("lease keeper failed to start: {e}")))?;
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(shard: ShardId, holder: Option<(&str, u64, u64)>, token: u64) -> ShardLease {
        ShardLease {
            shard,
            holder: holder.map(|h| h.0.to_owned()),
            holder_incarnation: holder.map(|h| h.1),
            holder_epoch: holder.map(|h| h.2),
            token,
        }
    }

    #[test]
    fn a_peer_with_another_ttl_is_reported_once_when_it_appears() {
        let own = Duration::from_millis(2000);
        let mut long = node("n3", 9, 1, 4);
        long.ttl_ms = 10_000;
        let table = vec![node("n1", 1, 1, 1), long.clone()];
        assert_eq!(
            other_ttls(own, &[], &table),
            vec![("n3".to_owned(), Duration::from_millis(10_000))]
        );
        assert!(other_ttls(own, &table, &table).is_empty());
        let mut unknown = long;
        unknown.ttl_ms = 0;
        assert!(other_ttls(own, &[], &[unknown]).is_empty());
    }

    fn node(name: &str, incarnation: u64, epoch: u64, seq: u64) -> NodeLease {
        NodeLease {
            node: name.into(),
            incarnation: Some(incarnation),
            epoch,
            seq,
            ttl_ms: 2000,
        }
    }

    const ME: Me<'static> = Me {
        node: "n2",
        incarnation: 7,
        epoch: 3,
    };

    #[test]
    fn free_and_released_shards_placed_here_are_granted_and_others_left_alone() {
        let rows = [row(0, None, 0), row(1, None, 4), row(2, None, 0)];
        let plan = plan_acquire(&ME, &[0, 1], &[], &rows, &[], &[]);
        assert_eq!(plan.grant, vec![0, 1]);
        assert!(plan.takeovers.is_empty() && !plan.reconcile);
    }

    #[test]
    fn a_shard_already_held_here_is_not_asked_for_again() {
        let rows = [row(0, None, 0)];
        assert!(
            plan_acquire(&ME, &[0], &[0], &rows, &[], &[])
                .grant
                .is_empty()
        );
    }

    #[test]
    fn a_shard_held_under_a_revoked_epoch_is_granted_without_a_takeover() {
        let rows = [row(5, Some(("n1", 1, 2)), 9)];
        let nodes = [node("n1", 1, 3, 40)];
        let plan = plan_acquire(&ME, &[5], &[], &rows, &nodes, &[]);
        assert_eq!(plan.grant, vec![5]);
    }

    #[test]
    fn a_live_holder_is_waited_for_until_its_row_is_revocable() {
        let rows = [row(5, Some(("n1", 1, 2)), 9), row(6, Some(("n1", 1, 2)), 3)];
        let nodes = [node("n1", 1, 2, 40)];
        let waiting = plan_acquire(&ME, &[5, 6], &[], &rows, &nodes, &[]);
        assert_eq!(waiting, Acquire::default());
        let dead = Revocation {
            node: "n1".into(),
            incarnation: 1,
            epoch: 2,
            seq: 40,
        };
        let plan = plan_acquire(
            &ME,
            &[5, 6],
            &[],
            &rows,
            &nodes,
            std::slice::from_ref(&dead),
        );
        assert_eq!(plan.takeovers, vec![(dead, vec![5, 6])]);
        assert!(plan.grant.is_empty());
    }

    #[test]
    fn a_row_naming_this_exact_holder_that_we_do_not_know_of_asks_for_reconcile() {
        let rows = [row(8, Some(("n2", 7, 3)), 11)];
        let plan = plan_acquire(&ME, &[8], &[], &rows, &[], &[]);
        assert!(plan.reconcile);
        assert!(plan.grant.is_empty());
    }

    #[test]
    fn a_revocation_of_another_epoch_does_not_take_a_shard_it_does_not_cover() {
        let rows = [row(5, Some(("n1", 1, 2)), 9)];
        let stale = Revocation {
            node: "n1".into(),
            incarnation: 1,
            epoch: 1,
            seq: 40,
        };
        let plan = plan_acquire(&ME, &[5], &[], &rows, &[node("n1", 1, 2, 41)], &[stale]);
        assert!(plan.takeovers.is_empty());
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_node_acquires_its_shards_and_a_restarted_keeper_keeps_serving_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::local("keeper-test", Some(dir.path().join("c.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let leases = node.ctx.leases.clone();
        wait_for("all shards held", || {
            leases.held_count(holder_now()) == 1024
        })
        .await;
        let token = match leases.shard_state(7, holder_now()) {
            ShardState::Serve { token, .. } => token,
            ShardState::NotHolder => panic!("shard 7 not served"),
        };

        let name = "lease-keeper/keeper-test".to_owned();
        let first = ractor::registry::where_is(name.clone()).unwrap();
        first.kill();
        wait_for("the keeper restarted", || {
            ractor::registry::where_is(name.clone()).is_some_and(|c| c.get_id() != first.get_id())
        })
        .await;
        // Same incarnation, same grant: the restart neither forgot nor re-acquired anything,
        // and renewing goes on (validity keeps moving forward).
        let before = leases.read().valid_until();
        assert!(matches!(
            leases.shard_state(7, holder_now()),
            ShardState::Serve { token: t, .. } if t == token
        ));
        wait_for("a renew after the restart", || {
            leases.read().valid_until() > before
        })
        .await;
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_shard_left_releasing_by_a_keeper_restart_is_released_and_granted_again() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            crate::config::Config::local("keeper-releasing", Some(dir.path().join("c.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let leases = node.ctx.leases.clone();
        wait_for("all shards held", || {
            leases.held_count(holder_now()) == 1024
        })
        .await;
        let ShardState::Serve { token, .. } = leases.shard_state(7, holder_now()) else {
            panic!("shard 7 not served");
        };
        // The keeper began releasing shard 7 (placement had moved it away) and went down
        // before sending the release; placement has given the shard back here since.
        let name = "lease-keeper/keeper-releasing".to_owned();
        let first = ractor::registry::where_is(name.clone()).unwrap();
        assert_eq!(leases.update(|l| l.begin_release(7)), Some(token));
        first.kill();
        wait_for("the keeper restarted", || {
            ractor::registry::where_is(name.clone()).is_some_and(|c| c.get_id() != first.get_id())
        })
        .await;

        wait_for("shard 7 served again under a new grant", || {
            matches!(
                leases.shard_state(7, holder_now()),
                ShardState::Serve { token: t, .. } if t > token
            )
        })
        .await;
        let row = node.ctx.db.lease_table().await.unwrap()[7].clone();
        assert_eq!(row.holder.as_deref(), Some("keeper-releasing"), "{row:?}");
        assert!(matches!(
            leases.shard_state(7, holder_now()),
            ShardState::Serve { token: t, .. } if t == row.token
        ));
        node.supervisor.stop(None);
    }

    fn in_registry_group(node: &str) -> bool {
        let Some(registry) = ractor::registry::where_is(registry_name(node)) else {
            return false;
        };
        ractor::pg::get_members(&REGISTRY_GROUP.to_owned())
            .iter()
            .any(|m| m.get_id() == registry.get_id())
    }

    #[tokio::test]
    async fn a_node_that_cannot_renew_for_a_ttl_leaves_the_registry_and_rejoins_when_renews_answer()
    {
        let dir = tempfile::tempdir().unwrap();
        let db_file = dir.path().join("c.db");
        let mut config = crate::config::Config::local("keeper-l7", Some(db_file.clone()));
        config.lease = LeaseConfig {
            ttl: Duration::from_millis(400),
            renew_interval: Duration::from_millis(100),
            margin: Duration::from_millis(20),
        };
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let leases = node.ctx.leases.clone();
        wait_for("all shards held", || {
            leases.held_count(holder_now()) == 1024
        })
        .await;
        assert!(in_registry_group("keeper-l7"));

        // Renews stop getting through: validity runs out, then L7 takes us out of the registry.
        crate::storage::engine::stall::set(&db_file, true);
        wait_for("left the registry", || !in_registry_group("keeper-l7")).await;
        assert_eq!(leases.held_count(holder_now()), 0, "served past validity");

        crate::storage::engine::stall::set(&db_file, false);
        wait_for("rejoined the registry", || in_registry_group("keeper-l7")).await;
        wait_for("serving again", || leases.held_count(holder_now()) == 1024).await;
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_registry_restarted_while_renewing_is_stopped_stays_out_of_the_group_until_rejoined()
    {
        let dir = tempfile::tempdir().unwrap();
        let db_file = dir.path().join("c.db");
        let mut config = crate::config::Config::local("keeper-l7-restart", Some(db_file.clone()));
        config.lease = LeaseConfig {
            ttl: Duration::from_millis(400),
            renew_interval: Duration::from_millis(100),
            margin: Duration::from_millis(20),
        };
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let leases = node.ctx.leases.clone();
        wait_for("all shards held", || {
            leases.held_count(holder_now()) == 1024
        })
        .await;
        crate::storage::engine::stall::set(&db_file, true);
        wait_for("left the registry", || {
            !in_registry_group("keeper-l7-restart")
        })
        .await;

        // The Registry goes down and is restarted while renewing is still stopped.
        let name = registry_name("keeper-l7-restart");
        let first = ractor::registry::where_is(name.clone()).unwrap();
        first.kill();
        wait_for("the registry restarted", || {
            ractor::registry::where_is(name.clone()).is_some_and(|c| {
                c.get_id() != first.get_id() && c.get_status() == ractor::ActorStatus::Running
            })
        })
        .await;
        assert!(
            !in_registry_group("keeper-l7-restart"),
            "a restarted registry joined while renewing is stopped"
        );

        crate::storage::engine::stall::set(&db_file, false);
        wait_for("rejoined the registry", || {
            in_registry_group("keeper-l7-restart")
        })
        .await;
        wait_for("serving again", || leases.held_count(holder_now()) == 1024).await;
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_grant_whose_reply_was_lost_is_reconciled_and_the_shard_served_at_the_stored_token() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::local("keeper-recon", Some(dir.path().join("c.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let leases = node.ctx.leases.clone();
        wait_for("all shards held", || {
            leases.held_count(holder_now()) == 1024
        })
        .await;
        let ShardState::Serve { token, .. } = leases.shard_state(7, holder_now()) else {
            panic!("shard 7 not served");
        };
        // Shard 7 is released behind the keeper's back and a write finds out (fenced): LOST.
        let faults = &node.ctx.faults;
        faults
            .lose_next_grant_reply
            .store(true, std::sync::atomic::Ordering::SeqCst);
        node.ctx.db.release(7, token).await.unwrap();
        assert!(leases.on_fenced(7, token));
        // The keeper forgets it (actors stopped), grants it again, and loses that reply.
        leases.update(|l| l.forget(7));
        wait_for("shard 7 served again", || {
            matches!(
                leases.shard_state(7, holder_now()),
                ShardState::Serve { .. }
            )
        })
        .await;
        assert!(
            !faults
                .lose_next_grant_reply
                .load(std::sync::atomic::Ordering::SeqCst),
            "the grant reply was never lost: reconcile was not exercised"
        );
        let row = node.ctx.db.lease_table().await.unwrap()[7].clone();
        assert!(matches!(
            leases.shard_state(7, holder_now()),
            ShardState::Serve { token: t, .. } if t == row.token && t > token
        ));
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_graceful_stop_waits_for_the_outcome_of_a_write_in_flight_before_releasing_its_shard()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::local("keeper-inflight", Some(dir.path().join("c.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let leases = node.ctx.leases.clone();
        wait_for("all shards held", || {
            leases.held_count(holder_now()) == 1024
        })
        .await;
        // A write on shard 7 has been sent and its outcome is not back yet.
        let permit = leases.begin_write(7, holder_now()).expect("shard 7 served");
        assert_eq!(leases.writes_in_flight(7), 1);
        let keeper: ActorRef<LeaseKeeperMsg> =
            ractor::registry::where_is("lease-keeper/keeper-inflight")
                .unwrap()
                .into();
        let stopping = tokio::spawn(async move { ractor::call!(keeper, LeaseKeeperMsg::Shutdown) });
        // RELEASING: no new write is let in, and shard 7's row stays ours while one is open.
        wait_for("shard 7 releasing", || {
            matches!(leases.shard_state(7, holder_now()), ShardState::NotHolder)
        })
        .await;
        assert!(leases.begin_write(7, holder_now()).is_none());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!stopping.is_finished(), "released with a write in flight");
        let row = node.ctx.db.lease_table().await.unwrap()[7].clone();
        assert_eq!(row.holder.as_deref(), Some("keeper-inflight"), "{row:?}");
        assert_eq!(row.token, permit.token);

        drop(permit);
        assert_eq!(leases.writes_in_flight(7), 0);
        tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .expect("the stop did not finish once the write's outcome was known")
            .unwrap()
            .unwrap();
        let rows = node.ctx.db.lease_table().await.unwrap();
        assert!(
            rows.iter().all(|r| r.holder.is_none()),
            "a shard stayed held"
        );
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_graceful_stop_releases_every_shard_and_clears_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::local("keeper-stop", Some(dir.path().join("c.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let leases = node.ctx.leases.clone();
        wait_for("all shards held", || {
            leases.held_count(holder_now()) == 1024
        })
        .await;
        let keeper: ActorRef<LeaseKeeperMsg> =
            ractor::registry::where_is("lease-keeper/keeper-stop")
                .unwrap()
                .into();
        ractor::call!(keeper, LeaseKeeperMsg::Shutdown).unwrap();
        assert_eq!(leases.held_count(holder_now()), 0);
        let rows = node.ctx.db.lease_table().await.unwrap();
        assert!(
            rows.iter().all(|r| r.holder.is_none()),
            "a shard stayed held"
        );
        // A new process of the same name registers at once: the row names no incarnation.
        let again = node.ctx.db.register("keeper-stop", 99).await.unwrap();
        assert!(
            matches!(again, Registration::Registered { .. }),
            "{again:?}"
        );
        node.supervisor.stop(None);
    }

    #[test]
    fn a_held_shard_granted_elsewhere_without_our_release_is_an_unexpected_move() {
        let me = Holder {
            node: "n2".into(),
            incarnation: 7,
            epoch: 1,
        };
        let held = [(1, 3), (2, 5), (3, 8), (4, 2)];
        let rows = vec![
            row(1, Some(("n2", 7, 1)), 3), // ours, unchanged
            row(2, Some(("n3", 9, 1)), 7), // granted to n3 after a release we never sent
            row(3, None, 9),               // released by someone else
            row(4, Some(("n3", 9, 1)), 4), // ours being released (below)
        ];
        let releasing = BTreeSet::from([4]);
        assert_eq!(
            unexpected_moves(&me, &held, &rows, &releasing),
            vec![(2, Some("n3".into())), (3, None)]
        );
        // A row of an older incarnation of our own name is not ours either.
        let rows = vec![row(1, Some(("n2", 6, 1)), 4)];
        assert_eq!(
            unexpected_moves(&me, &[(1, 3)], &rows, &BTreeSet::new()),
            vec![(1, Some("n2".into()))]
        );
    }

    #[test]
    fn cleared_node_rows_are_not_watched() {
        let mut cleared = node("n1", 1, 2, 3);
        cleared.incarnation = None;
        let rows = observed_rows(&[cleared, node("n3", 4, 1, 9)]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].node, "n3");
    }

    #[test]
    fn a_not_holder_answer_names_the_holder_of_the_last_table_but_never_this_node() {
        let leases = NodeLeases::new("n2", LeaseConfig::default(), 7);
        assert_eq!(
            leases.not_holder(4),
            Error::NotHolder {
                holder: None,
                token: 0
            }
        );
        leases.set_hints(&[row(4, Some(("n3", 1, 1)), 6), row(5, Some(("n2", 7, 1)), 2)]);
        assert_eq!(
            leases.not_holder(4),
            Error::NotHolder {
                holder: Some("n3".into()),
                token: 6
            }
        );
        assert!(matches!(
            leases.not_holder(5),
            Error::NotHolder { holder: None, .. }
        ));
    }
}
