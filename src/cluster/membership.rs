//! Membership: who is alive, and the placement view everyone reads.
//!
//! Inputs, all funnelled into one actor so the member set changes in one place:
//! * process-group events of `customer-registry.v5`: a remote Registry appearing is a
//!   candidate member; it becomes a member after a `Hello` exchange with a matching protocol
//!   version; its leaving (session closed) removes it at once;
//! * session events from the NodeServer (ready / disconnected), used to keep the full mesh:
//!   every seed and every member address is re-dialed with backoff until connected;
//! * the outcome of each `Hello`, judged by the pure admission rule ([`super::admission`]);
//! * a tick every heartbeat: ping each member's Heartbeat actor ([`super::heartbeat`], which
//!   carries no customer traffic, so a busy node still answers in time), evaluate the failure
//!   detector ([`super::detector`]), evict silent peers (close their session), re-dial, renew
//!   the lease.
//!
//! Output: the [`View`] — an immutable snapshot (ring + how to reach each member's Registry)
//! published through a `tokio::sync::watch` channel; readers clone an `Arc` and never lock.
//! Each publish bumps the ring epoch and tells the local Registry to retire actors it no
//! longer owns.
//!
//! The [`Lease`] here (renewed on every heartbeat tick) only says whether this node's picture
//! of the cluster is recent; nothing decides what to serve from it. Customer actors do not read
//! it: whether a shard may be served from cache is the shard lease's answer (the LeaseKeeper's
//! `NodeLeases`, DESIGN §6), which a frozen process (SIGSTOP, a long stall) finds expired on
//! waking, whatever the membership picture says.
//!
//! Restarts: the supervisor restarts a failed Membership. The new one starts from the sessions
//! the NodeServer holds and greets every Registry already in the group, so peers are
//! re-admitted within one `Hello` round trip each; the published view stays in place meanwhile
//! (its routes are still valid), and is republished as peers are re-admitted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use tokio::sync::watch;

use super::admission::{Admission, Greeting, Refusal, admit, heard};
use super::dbnode::{DbNode, DbRoleCell, Decision, Heard, SqliteRole, choose, exit_message, judge};
use super::detector::{Detector, DialPlan, Verdict, own_lag, was_stalled};
use super::frames::is_host_port;
use super::heartbeat;
use super::mesh::{Mesh, SessionEvent, SessionEventKind};
use super::placement::{Member, Ring};
use super::protocol::{
    DATABASE_GROUP, HeartbeatMsg, NodeInfo, REGISTRY_GROUP, RegistryMsg, call, check_peer,
    database_name, heartbeat_name, node_of, registry_name,
};
use crate::codec::Wire;
use crate::error::{Error, Result};
use crate::events::{EventBus, EventKind};

/// The placement view: the ring plus the Registry of every remote member.
#[derive(Debug, Clone)]
pub struct View {
    /// Members and owner computation.
    pub ring: Ring,
    /// Remote members' Registries by node name (the local one is found by registered name).
    pub registries: HashMap<String, ActorRef<RegistryMsg>>,
}

impl View {
    /// A view with only the local node.
    pub fn single(ring: Ring) -> Self {
        Self {
            ring,
            registries: HashMap::new(),
        }
    }
}

/// Freshness of this node's cluster picture. Clones share one lease; Membership renews it.
/// No request path reads it (serving is decided by the shard leases).
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    /// Origin of the stored times: an `Instant` cannot live in an atomic, an offset from one can.
    base: Instant,
    /// Milliseconds from `base` to the latest renewal.
    renewed_ms: AtomicU64,
    /// How long one renewal keeps the picture fresh.
    validity: Duration,
}

impl Lease {
    /// A lease valid for `validity` after each renewal; starts renewed at `now`.
    pub fn new(validity: Duration, now: Instant) -> Self {
        Self {
            inner: Arc::new(LeaseInner {
                base: now,
                renewed_ms: AtomicU64::new(0),
                validity,
            }),
        }
    }

    fn offset_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.inner.base).as_millis() as u64
    }

    /// Marks the picture as fresh at `now`. A renewal never makes the lease older.
    pub fn renew_at(&self, now: Instant) {
        let at = self.offset_ms(now);
        self.inner.renewed_ms.fetch_max(at, Ordering::Relaxed);
    }

    /// True when the last renewal is within the validity period at `now`.
    pub fn is_valid_at(&self, now: Instant) -> bool {
        let renewed = self.inner.renewed_ms.load(Ordering::Relaxed);
        self.offset_ms(now).saturating_sub(renewed) <= self.inner.validity.as_millis() as u64
    }

    /// [`Lease::is_valid_at`] the current time (for callers at the actor edge).
    pub fn is_valid(&self) -> bool {
        self.is_valid_at(Instant::now())
    }
}

/// Messages of the Membership actor (local-only).
#[derive(RactorMessage)]
pub enum MembershipMsg {
    /// Heartbeat tick.
    Tick,
    /// A NodeServer session event.
    Session(SessionEvent),
    /// A `Hello` exchange finished.
    HelloDone {
        /// The remote Registry we greeted.
        registry: ActorCell,
        /// Its answer.
        result: Result<NodeInfo>,
    },
    /// A peer greeted our Registry with this info (sent by the local Registry): what it says
    /// about the SQLite database node counts as much as its answer to our own `Hello`.
    Greeted(NodeInfo),
    /// A heartbeat ping (to the peer's Heartbeat actor) finished.
    Pong {
        /// Peer name.
        peer: String,
        /// Whether it answered in time.
        ok: bool,
    },
    /// A peer listed the addresses of its sessions (checked `host:port`): dial them, through
    /// the gate, as ractor_cluster's transitive mode would have without it.
    Discovered(Vec<String>),
    /// A dial finished (TCP level).
    Dialed {
        /// Address dialed.
        addr: String,
        /// Whether TCP (and TLS) connected.
        ok: bool,
        /// Failure reason.
        error: Option<String>,
    },
}

/// The Membership actor.
pub struct Membership;

/// Start arguments of [`Membership`] (kept by the supervisor for restarts).
#[derive(Clone)]
pub struct MembershipArgs {
    /// Our own info (also what we send in `Hello`).
    pub info: NodeInfo,
    /// Seeds to dial.
    pub seeds: Vec<String>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Silence after which a peer is evicted.
    pub failure_timeout: Duration,
    /// Deadline of a `Hello`.
    pub request_timeout: Duration,
    /// Where to publish the view.
    pub view_tx: Arc<watch::Sender<Arc<View>>>,
    /// The freshness lease to renew.
    pub lease: Lease,
    /// The transport; `None` runs without a mesh (a lone in-process node).
    pub mesh: Option<Mesh>,
    /// Where member and placement changes are reported (`GET /v1/events`).
    pub events: EventBus,
    /// This node's SQLite database role, which Membership decides (see [`super::dbnode`]).
    pub db_role: DbRoleCell,
}

/// A member other than us.
struct Peer {
    /// What it told us in `Hello`: addresses for the view, incarnation to tell restarts apart.
    info: NodeInfo,
    /// Its Registry, over the session we route through; its Heartbeat actor is found beside it.
    registry: ActorRef<RegistryMsg>,
}

/// A session the NodeServer told us about.
struct Session {
    /// The latest event of this session (its actor, peer name and address).
    event: SessionEvent,
    /// When TCP connected: a session stuck in its handshake for too long is closed.
    opened_at: Instant,
    /// Whether the handshake finished; only ready sessions count as connected for re-dialing.
    ready: bool,
    /// We closed it for stalling in its handshake (a frozen or cut-off peer): not a refusal.
    stalled: bool,
}

/// State of [`Membership`].
pub struct MembershipState {
    /// Start arguments, kept for our own info, timings, the view channel, lease and mesh.
    args: MembershipArgs,
    /// Admitted members other than us, by node name (sorted, so views list them in order).
    /// The placement view is derived from this map and nothing else.
    peers: BTreeMap<String, Peer>,
    /// Sessions by NodeSession actor id: which addresses are connected (re-dialing) and which
    /// sessions to close when a peer is evicted.
    sessions: HashMap<ActorId, Session>,
    /// What each peer last said about the SQLite database question, by node name, from
    /// `Hello`s in either direction (members and refused peers alike); dropped when the
    /// peer's Registry leaves.
    heard: BTreeMap<String, Heard>,
    /// Refused rival database nodes (name, incarnation) we have greeted once after refusing
    /// them, so each hears which database node we follow even if it greeted us before we
    /// knew; once each, so a rival that lingers is not greeted in a loop.
    told_rivals: HashSet<(String, u64)>,
    /// Peers heard to host a database over a shared server (PostgreSQL), by name.
    shared_hosts: BTreeSet<String>,
    /// Handshakes that ended early, in a row, by peer host: what their log line says.
    handshakes: HandshakeFailures,
    /// Pure failure detector over `peers`: who to ping, who is silent.
    detector: Detector,
    /// Addresses to keep connected to (seeds and members), with per-address backoff.
    dials: DialPlan,
    /// Time of the previous tick: a long gap means this process itself was stalled.
    last_tick: Instant,
    /// The heartbeat timer task, aborted when the actor stops.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// How long a heartbeat ping may stay unanswered before another may be sent: two heartbeats,
/// at least 100 ms (below that, scheduling noise alone would count as misses).
pub fn ping_deadline(heartbeat: Duration) -> Duration {
    (heartbeat * 2).max(Duration::from_millis(100))
}

/// Registered (process-local) name of this node's Membership actor.
pub fn membership_name(node: &str) -> String {
    format!("membership/{node}")
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MembershipArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::monitor(REGISTRY_GROUP.to_owned(), myself.get_cell());
        let mut sessions = Vec::new();
        if let Some(mesh) = &args.mesh {
            let me = myself.clone();
            mesh.subscribe("membership", move |event| {
                let _ = me.cast(MembershipMsg::Session(event));
            });
            let me = myself.clone();
            mesh.on_discovered(move |addrs| {
                let _ = me.cast(MembershipMsg::Discovered(addrs));
            });
            // Sessions that were ready before we subscribed (after a restart of this actor).
            sessions = mesh.ready_sessions().await;
        }
        let now = Instant::now();
        let mut dials = DialPlan::default();
        for seed in &args.seeds {
            dials.want(seed, now);
        }
        let ticker = myself.send_interval(args.heartbeat, || MembershipMsg::Tick);
        metrics::gauge!("customer_cluster_members")
            .set(args.view_tx.borrow().ring.members.len() as f64);
        let mut state = MembershipState {
            detector: Detector::new(args.failure_timeout, ping_deadline(args.heartbeat)),
            args,
            peers: BTreeMap::new(),
            heard: BTreeMap::new(),
            told_rivals: HashSet::new(),
            shared_hosts: BTreeSet::new(),
            sessions: HashMap::new(),
            handshakes: HandshakeFailures::default(),
            dials,
            last_tick: now,
            ticker: Some(ticker),
        };
        for event in sessions {
            state.on_session(event);
        }
        // A database node serving from the start follows itself.
        state.settle_database(&myself);
        // Registries that joined before we started monitoring.
        for cell in ractor::pg::get_members(&REGISTRY_GROUP.to_owned()) {
            state.greet(&myself, cell);
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::demonitor(REGISTRY_GROUP.to_owned(), myself.get_id());
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
        match message {
            MembershipMsg::Tick => state.tick(&myself),
            MembershipMsg::Session(event) => state.on_session(event),
            MembershipMsg::HelloDone { registry, result } => {
                state.on_hello(&myself, registry, result)
            }
            MembershipMsg::Greeted(info) => {
                if check_peer(&info).is_ok() && info.name != state.me() {
                    state.hear(&myself, &info);
                }
            }
            MembershipMsg::Pong { peer, ok } if peer == state.me() => {
                if ok {
                    state.detector.self_ack();
                } else {
                    state.detector.self_failed();
                }
            }
            MembershipMsg::Pong { peer, ok } => {
                if ok {
                    state.detector.ack(&peer, Instant::now());
                } else {
                    state.detector.failed(&peer);
                }
            }
            MembershipMsg::Discovered(addrs) => {
                let now = Instant::now();
                for addr in addrs {
                    if addr != state.args.info.cluster_addr {
                        state.dials.want(&addr, now);
                    }
                }
            }
            MembershipMsg::Dialed { addr, ok, error } => {
                state.dials.dialed(&addr, ok, Instant::now());
                let failures = state.dials.failures(&addr);
                if let Some(error) = error
                    && (failures == 1 || failures % 20 == 0)
                {
                    tracing::warn!(
                        addr,
                        failures,
                        error,
                        "cannot reach peer; retrying with backoff"
                    );
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = event {
            match change {
                GroupChangeMessage::Join(_, group, cells) if group == REGISTRY_GROUP => {
                    for cell in cells {
                        state.greet(&myself, cell);
                    }
                }
                GroupChangeMessage::Leave(_, group, cells) if group == REGISTRY_GROUP => {
                    for cell in cells {
                        state.on_registry_left(&myself, &cell);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl MembershipState {
    fn me(&self) -> &str {
        &self.args.info.name
    }

    /// Starts a `Hello` with a remote Registry that appeared in the group.
    fn greet(&self, myself: &ActorRef<MembershipMsg>, cell: ActorCell) {
        if cell.get_id().is_local() {
            return;
        }
        let registry: ActorRef<RegistryMsg> = cell.clone().into();
        let info = self.info_now();
        let timeout = self.args.request_timeout;
        let me = myself.clone();
        tokio::spawn(async move {
            let result = call(&registry, timeout, |r| {
                RegistryMsg::Hello(Wire::ok(info), r)
            })
            .await;
            let _ = me.cast(MembershipMsg::HelloDone {
                registry: cell,
                result,
            });
        });
    }

    /// Our info as of now: the static part plus the SQLite database role and the database
    /// node followed.
    fn info_now(&self) -> NodeInfo {
        let mut info = self.args.info.clone();
        info.sqlite = self.args.db_role.role();
        info.database = self.args.db_role.chosen();
        info
    }

    /// Records what a peer said about the SQLite database question and acts on it.
    fn hear(&mut self, myself: &ActorRef<MembershipMsg>, info: &NodeInfo) {
        let shared_host = info.hosts_db && info.sqlite == SqliteRole::None;
        if shared_host != self.shared_hosts.contains(&info.name) {
            if shared_host {
                self.shared_hosts.insert(info.name.clone());
            } else {
                self.shared_hosts.remove(&info.name);
            }
            self.args
                .db_role
                .set_shared_hosts(self.shared_hosts.iter().cloned().collect());
        }
        let h = heard(info);
        if self.heard.get(&info.name) != Some(&h) {
            self.heard.insert(info.name.clone(), h);
            self.settle_database(myself);
        }
    }

    /// Re-decides this node's database role and the database node it follows; tells every
    /// peer when either changed, so a rival it cannot see hears of the other through us.
    fn settle_database(&mut self, myself: &ActorRef<MembershipMsg>) {
        let me = DbNode {
            name: self.me().to_owned(),
            incarnation: self.args.info.incarnation,
        };
        let role = self.args.db_role.role();
        let heard: Vec<Heard> = self.heard.values().cloned().collect();
        let mut role_changed = false;
        if matches!(role, SqliteRole::Candidate | SqliteRole::Serving) {
            match judge(&me, role, &heard) {
                Decision::Wait => {}
                Decision::Serve if role == SqliteRole::Serving => {}
                Decision::Serve => {
                    self.args.db_role.serve();
                    if let Some(cell) = ractor::registry::where_is(database_name(self.me())) {
                        ractor::pg::join(DATABASE_GROUP.to_owned(), vec![cell]);
                    }
                    tracing::info!(
                        peers = ?self.heard.keys().collect::<Vec<_>>(),
                        "met the cluster and no other database node: this node is the database node and serves"
                    );
                    self.args.events.emit(
                        EventKind::DatabaseAvailability,
                        "available",
                        "this node is the cluster's database node",
                    );
                    role_changed = true;
                }
                Decision::Exit { existing } => {
                    let served = role == SqliteRole::Serving;
                    let why = exit_message(self.me(), &existing, served);
                    tracing::error!(database_node = %existing, "{why}");
                    self.args.events.emit(
                        EventKind::DatabaseAvailability,
                        "unavailable",
                        format!("refused: {existing} is the database node"),
                    );
                    self.args.db_role.refuse(why);
                    role_changed = true;
                }
            }
        }
        let serving = (self.args.db_role.role() == SqliteRole::Serving).then_some(&me);
        // A plain member's current choice is its own vote: a tie never moves it (dbnode).
        let followed = self.args.db_role.chosen();
        let own_vote = followed.as_ref().filter(|_| role == SqliteRole::None);
        let chosen = choose(serving, &heard, own_vote);
        if let Some(c) = &chosen
            && self.args.db_role.chosen().as_ref() != Some(c)
        {
            tracing::info!(database_node = %c, "the cluster's database node");
        }
        if self.args.db_role.set_chosen(chosen) || role_changed {
            // Every Registry in the group, members or not yet: a peer whose `Hello` is being
            // judged right now must hear the change too.
            for cell in ractor::pg::get_members(&REGISTRY_GROUP.to_owned()) {
                self.greet(myself, cell);
            }
        }
    }

    fn on_hello(
        &mut self,
        myself: &ActorRef<MembershipMsg>,
        registry: ActorCell,
        result: Result<NodeInfo>,
    ) {
        let registered = registry.get_name();
        let claimed = registered.as_deref().and_then(node_of);
        if let Ok(info) = &result
            && claimed == Some(info.name.as_str())
            && info.name != self.me()
            && check_peer(info).is_ok()
        {
            self.hear(myself, info);
        }
        let database = self.args.db_role.chosen();
        let known = result
            .as_ref()
            .ok()
            .and_then(|info| self.peers.get(&info.name));
        let known_incarnation = known.map(|p| p.info.incarnation);
        // The member's route is another session that is still open: a newer incarnation
        // waits for it to close (admission rule 6).
        let known_live_elsewhere = known.is_some_and(|p| {
            p.registry.get_id() != registry.get_id()
                && p.registry.get_status() < ractor::ActorStatus::Stopping
        });
        let decision = admit(Greeting {
            me: self.me(),
            claimed,
            answer: result,
            alive: registry.get_status() < ractor::ActorStatus::Stopping,
            known_incarnation,
            known_live_elsewhere,
            database: database.as_ref(),
        });
        let now = Instant::now();
        match decision {
            Admission::Refused(Refusal::Failed(err)) => {
                tracing::warn!(peer = ?claimed, error = %err, "peer not admitted");
            }
            Admission::Refused(Refusal::NameClash {
                announced,
                registered,
            }) => {
                tracing::error!(peer = ?announced, ?registered, "refusing a peer that claims this node's name or another name; every node needs a unique --name");
            }
            Admission::Refused(Refusal::RivalDatabase { peer, existing }) => {
                tracing::warn!(
                    ?peer,
                    database_node = %existing,
                    "refusing a peer that hosts a second SQLite database: {existing} is the cluster's database node; the peer exits once it hears so"
                );
                if self.peers.remove(&peer).is_some() {
                    self.detector.remove(&peer);
                    self.publish("a second database node was refused");
                }
                let incarnation = self.heard.get(&peer).map_or(0, |h| h.node.incarnation);
                if self.told_rivals.insert((peer, incarnation)) {
                    self.greet(myself, registry);
                }
            }
            Admission::Gone => {} // its session closed while we were greeting it
            Admission::Waiting(info) => {
                tracing::warn!(
                    peer = ?info.name,
                    "a newer process start of a member announced itself over another session; it is admitted once the member's own session has closed"
                );
            }
            Admission::Stale(info) => {
                // A stale session of an older process start: keep its address dialed only.
                self.dials.want(&info.cluster_addr, now);
            }
            Admission::SameProcess(info) => {
                // The same process over another session (e.g. a duplicate-connection
                // election, or a reconnect after a partition): the member set is unchanged.
                // The route moves only off a session that is closing or silent (the member is
                // suspected): a member answering over its own session keeps it, whoever else
                // claims its name and incarnation (when it closes, the Registry's leave finds
                // this one).
                self.dials.want(&info.cluster_addr, now);
                let suspected = self.detector.is_suspected(&info.name);
                if let Some(existing) = self.peers.get_mut(&info.name)
                    && (suspected
                        || existing.registry.get_status() >= ractor::ActorStatus::Stopping)
                {
                    existing.registry = registry.into();
                    existing.info = info;
                    self.publish_routes();
                }
            }
            Admission::Admit { info, restarted } => {
                self.dials.want(&info.cluster_addr, now);
                let name = info.name.clone();
                tracing::info!(peer = ?name, addr = ?info.cluster_addr, db = info.hosts_db, "member {}", if restarted { "restarted" } else { "joined" });
                let (kind, cause) = if restarted {
                    (
                        EventKind::MemberRejoined,
                        "a new process start of this node",
                    )
                } else {
                    (EventKind::MemberUp, "handshake finished")
                };
                self.args.events.emit(kind, &name, cause);
                self.detector.add(&name, now);
                self.peers.insert(
                    name,
                    Peer {
                        info,
                        registry: registry.into(),
                    },
                );
                self.publish("member joined");
            }
        }
    }

    fn on_registry_left(&mut self, myself: &ActorRef<MembershipMsg>, cell: &ActorCell) {
        let Some(node) = cell
            .get_name()
            .as_deref()
            .and_then(node_of)
            .map(str::to_owned)
        else {
            return;
        };
        let current = self
            .peers
            .get(&node)
            .is_some_and(|p| p.registry.get_id() == cell.get_id());
        if !current {
            self.forget_if_gone(myself, &node, cell);
            return;
        }
        // Another session to the same node may still carry its Registry (duplicate-connection
        // elections close one of two): route through that one instead of dropping the member.
        let replacement = ractor::pg::get_members(&REGISTRY_GROUP.to_owned())
            .into_iter()
            .find(|c| {
                c.get_id() != cell.get_id()
                    && !c.get_id().is_local()
                    && c.get_status() < ractor::ActorStatus::Stopping
                    && c.get_name().as_deref().and_then(node_of) == Some(node.as_str())
            });
        if let Some(other) = replacement {
            if let Some(peer) = self.peers.get_mut(&node) {
                peer.registry = other.clone().into();
            }
            self.publish_routes();
            self.greet(myself, other);
            return;
        }
        self.peers.remove(&node);
        self.detector.remove(&node);
        self.forget_if_gone(myself, &node, cell);
        tracing::info!(peer = ?node, "member left");
        self.args.events.emit(
            EventKind::MemberLeft,
            &node,
            "its Registry left the process group (stopped, or its session closed)",
        );
        self.publish("member left");
    }

    /// Forgets what `node` said about the database once no Registry of it is left in the
    /// group (`cell`, the one that left, excepted).
    fn forget_if_gone(&mut self, myself: &ActorRef<MembershipMsg>, node: &str, cell: &ActorCell) {
        let still_there = ractor::pg::get_members(&REGISTRY_GROUP.to_owned())
            .into_iter()
            .any(|c| {
                c.get_id() != cell.get_id()
                    && !c.get_id().is_local()
                    && c.get_status() < ractor::ActorStatus::Stopping
                    && c.get_name().as_deref().and_then(node_of) == Some(node)
            });
        if !still_there && self.shared_hosts.remove(node) {
            self.args
                .db_role
                .set_shared_hosts(self.shared_hosts.iter().cloned().collect());
        }
        if !still_there && self.heard.remove(node).is_some() {
            self.settle_database(myself);
        }
    }

    fn on_session(&mut self, event: SessionEvent) {
        let id = event.session.get_id();
        match event.kind {
            SessionEventKind::Opened => {
                self.sessions.insert(
                    id,
                    Session {
                        event,
                        opened_at: Instant::now(),
                        ready: false,
                        stalled: false,
                    },
                );
            }
            SessionEventKind::Ready => {
                tracing::debug!(peer = ?event.peer_node(), addr = ?event.peer_addr, "session ready");
                self.handshakes.succeeded(&event.socket_addr);
                if let Some(addr) = event.peer_addr.as_deref().filter(|a| is_host_port(a)) {
                    self.dials.want(addr, Instant::now());
                }
                let opened_at = self
                    .sessions
                    .get(&id)
                    .map_or_else(Instant::now, |s| s.opened_at);
                self.sessions.insert(
                    id,
                    Session {
                        event,
                        opened_at,
                        ready: true,
                        stalled: false,
                    },
                );
            }
            SessionEventKind::Disconnected => match self.sessions.remove(&id) {
                Some(s) if s.ready => tracing::info!(peer = ?s.event.peer_node(), "session closed"),
                Some(s) if s.stalled => tracing::info!(
                    addr = %s.event.socket_addr,
                    "closed a handshake that stalled: the peer is frozen or unreachable; it is dialled again"
                ),
                Some(s) => {
                    let addr = &s.event.socket_addr;
                    match self.handshakes.failed(addr) {
                        HandshakeNote::Logged => tracing::info!(
                            addr = %addr,
                            "connection closed during the handshake: a peer that restarted, froze or was cut off does this (a cookie mismatch is logged as auth_fail)"
                        ),
                        HandshakeNote::LastLogged => tracing::info!(
                            addr = %addr,
                            "connection closed during the handshake again; until one succeeds, further ones from this host are logged at DEBUG"
                        ),
                        HandshakeNote::Quiet => tracing::debug!(
                            addr = %addr,
                            "connection closed during the handshake"
                        ),
                    }
                }
                None => {}
            },
        }
    }

    fn tick(&mut self, myself: &ActorRef<MembershipMsg>) {
        let now = Instant::now();
        if was_stalled(self.last_tick, now, self.args.failure_timeout) {
            let stalled_ms = now.saturating_duration_since(self.last_tick).as_millis() as u64;
            tracing::warn!(
                stalled_ms,
                "this node was stalled; peers may have evicted it. Cached customer state will be reloaded"
            );
            self.detector.forgive_all(now);
            self.publish("local stall");
        } else {
            let lag = own_lag(self.last_tick, now, self.args.heartbeat);
            if !lag.is_zero() {
                tracing::debug!(
                    lag_ms = lag.as_millis() as u64,
                    "this node runs late; its lateness is not counted as peers' silence"
                );
                self.detector.excuse(lag, now);
            }
        }
        self.last_tick = now;
        self.args.lease.renew_at(now);
        // Safety net: a route whose remote actor has stopped is dropped even if its
        // process-group leave was missed.
        let dead: Vec<ActorCell> = self
            .peers
            .values()
            .filter(|p| p.registry.get_status() >= ractor::ActorStatus::Stopping)
            .map(|p| p.registry.get_cell())
            .collect();
        for cell in dead {
            self.on_registry_left(myself, &cell);
        }
        self.ping(myself, now);
        for verdict in self.detector.evaluate(now) {
            match verdict {
                Verdict::Suspect { peer, silent_for } => {
                    tracing::info!(
                        peer,
                        silent_ms = silent_for.as_millis() as u64,
                        "member suspected: no heartbeat answer"
                    );
                    metrics::counter!("customer_heartbeat_suspicions_total").increment(1);
                    let cause = format!("no heartbeat answer for {} ms", silent_for.as_millis());
                    self.args.events.emit(EventKind::MemberSuspect, peer, cause);
                }
                Verdict::Evict { peer, silent_for } => self.evict(&peer, silent_for),
            }
        }
        self.close_stuck_handshakes(now);
        let keep: HashSet<String> = self
            .args
            .seeds
            .iter()
            .cloned()
            .chain(self.peers.values().map(|p| p.info.cluster_addr.clone()))
            .collect();
        for addr in self.dials.forget_stale(now, &keep) {
            tracing::info!(
                addr = ?addr,
                "no longer dialling an address that has not been a member's for a while"
            );
        }
        self.redial(myself, now);
    }

    /// Pings each due peer's Heartbeat actor, the one beside the Registry we route through.
    /// A peer without one (restarting it) counts as a failed ping. Also probes our own
    /// Heartbeat actor along the same path, so the detector knows how late we run.
    fn ping(&mut self, myself: &ActorRef<MembershipMsg>, now: Instant) {
        let deadline = ping_deadline(self.args.heartbeat);
        if self.detector.self_probe_due(now) {
            let own = ractor::registry::where_is(heartbeat_name(self.me())).map(ActorRef::from);
            send_ping(myself, own, self.me().to_owned(), deadline, false);
        }
        for peer in self.detector.pings_due(now) {
            let Some(registry) = self.peers.get(&peer).map(|p| p.registry.get_cell()) else {
                continue;
            };
            send_ping(myself, heartbeat::beside(&registry), peer, deadline, true);
        }
    }

    /// Removes a silent peer from placement and closes its sessions, so its process-group
    /// members go away too and it must re-handshake to come back.
    fn evict(&mut self, peer: &str, silent_for: Duration) {
        tracing::warn!(
            peer,
            silent_ms = silent_for.as_millis() as u64,
            "member evicted: silent for longer than the failure timeout"
        );
        metrics::counter!("customer_members_evicted_total").increment(1);
        let cause = format!(
            "silent for {} ms, longer than the failure timeout",
            silent_for.as_millis()
        );
        self.args.events.emit(EventKind::MemberEvicted, peer, cause);
        self.peers.remove(peer);
        for s in self.sessions.values() {
            if s.event.peer_node() == Some(peer) {
                s.event
                    .session
                    .stop(Some("evicted by failure detector".into()));
            }
        }
        self.publish("member evicted");
    }

    /// A session that connected but never finished its handshake (frozen peer, wrong cookie)
    /// is closed, so re-dialing cannot pile up half-open sessions.
    fn close_stuck_handshakes(&mut self, now: Instant) {
        let limit = self.args.failure_timeout.max(Duration::from_secs(2));
        for s in self.sessions.values_mut() {
            if !s.ready && !s.stalled && now.saturating_duration_since(s.opened_at) > limit {
                tracing::debug!(addr = %s.event.socket_addr, "closing a session stuck in its handshake");
                s.stalled = true;
                s.event.session.stop(Some("handshake timeout".into()));
            }
        }
    }

    fn redial(&mut self, myself: &ActorRef<MembershipMsg>, now: Instant) {
        let Some(mesh) = self.args.mesh.clone() else {
            return;
        };
        let mut connected: HashSet<String> = self
            .sessions
            .values()
            .filter(|s| s.ready)
            .filter_map(|s| s.event.peer_addr.clone())
            .collect();
        connected.insert(self.args.info.cluster_addr.clone());
        for addr in self.dials.due(now, &connected) {
            let mesh = mesh.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let result = mesh.dial(&addr).await;
                let _ = me.cast(MembershipMsg::Dialed {
                    addr,
                    ok: result.is_ok(),
                    error: result.err().map(|e| e.to_string()),
                });
            });
        }
    }

    /// Publishes a view for a changed member set (new epoch) and tells the local Registry.
    fn publish(&mut self, why: &str) {
        let (members, registries) = self.members_and_routes();
        let previous = self.args.view_tx.borrow().clone();
        let ring = previous.ring.next(members);
        let epoch = ring.epoch;
        tracing::info!(epoch, members = ?ring.names(), why, "placement view published");
        let moved = previous.ring.shards_moved(&ring);
        let detail = format!(
            "epoch {epoch}: members {}; {moved} of {} shards moved",
            ring.names().join(","),
            crate::cluster::placement::SHARDS
        );
        self.args
            .events
            .emit(EventKind::PlacementChanged, detail, why);
        metrics::gauge!("customer_cluster_members").set(ring.members.len() as f64);
        metrics::counter!("customer_placement_changes_total").increment(1);
        self.args
            .view_tx
            .send_replace(Arc::new(View { ring, registries }));
        if let Some(cell) = ractor::registry::where_is(registry_name(&self.args.info.name)) {
            let registry: ActorRef<RegistryMsg> = cell.into();
            let _ = registry.cast(RegistryMsg::PlacementChanged(Wire::ok(epoch)));
        }
    }

    /// Publishes new routes to the same members (a peer's Registry is now reached over
    /// another session): same ring and epoch, so no cached state is invalidated.
    fn publish_routes(&mut self) {
        let (_, registries) = self.members_and_routes();
        let ring = self.args.view_tx.borrow().ring.clone();
        tracing::debug!(epoch = ring.epoch, "member routes updated");
        self.args
            .view_tx
            .send_replace(Arc::new(View { ring, registries }));
    }

    fn members_and_routes(&self) -> (Vec<Member>, HashMap<String, ActorRef<RegistryMsg>>) {
        let local = Member {
            name: self.args.info.name.clone(),
            cluster_addr: self.args.info.cluster_addr.clone(),
            http_addr: self.args.info.http_addr.clone(),
            hosts_db: self.args.info.hosts_db,
        };
        let mut members = vec![local];
        let mut registries = HashMap::new();
        for (name, p) in &self.peers {
            members.push(Member {
                name: name.clone(),
                cluster_addr: p.info.cluster_addr.clone(),
                http_addr: p.info.http_addr.clone(),
                hosts_db: p.info.hosts_db,
            });
            registries.insert(name.clone(), p.registry.clone());
        }
        (members, registries)
    }
}

/// Pings `target` (the Heartbeat actor of `peer`, this node included) in a task of its own and
/// reports the outcome to Membership as a `Pong`; no target is a failed ping. `count_miss`
/// counts a failure in `customer_heartbeat_misses_total` (peers' pings, not self-probes).
fn send_ping(
    membership: &ActorRef<MembershipMsg>,
    target: Option<ActorRef<HeartbeatMsg>>,
    peer: String,
    deadline: Duration,
    count_miss: bool,
) {
    let membership = membership.clone();
    tokio::spawn(async move {
        let ok = match target {
            Some(hb) => call(&hb, deadline, |r| HeartbeatMsg::Ping(Wire::ok(0), r))
                .await
                .is_ok(),
            None => false,
        };
        if !ok && count_miss {
            metrics::counter!("customer_heartbeat_misses_total").increment(1);
        }
        let _ = membership.cast(MembershipMsg::Pong { peer, ok });
    });
}

/// Spawns Membership, registered under [`membership_name`] and linked to `supervisor`.
pub async fn spawn(args: MembershipArgs, supervisor: ActorCell) -> Result<ActorRef<MembershipMsg>> {
    let name = membership_name(&args.info.name);
    let (actor, _) = Actor::spawn_linked(Some(name), Membership, args, supervisor)
        .await
        .map_err(|e| Error::Internal(format!("membership failed to start: {e}")))?;
    Ok(actor)
}

/// Handshake closures in a row from one host that are logged at INFO; later ones of the same
/// streak go to DEBUG.
pub const HANDSHAKE_CLOSURES_LOGGED: u32 = 3;

/// How to log a handshake that ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeNote {
    /// One of the first of a streak (INFO).
    Logged,
    /// The last one of a streak logged at INFO (it says the rest go to DEBUG).
    LastLogged,
    /// Later ones of the same streak (DEBUG).
    Quiet,
}

/// Handshakes closed early in a row per peer host (the port of an incoming connection changes
/// every time, so the host is what identifies a peer here); a finished handshake resets it.
/// Only the log's volume depends on it: after a freeze a node may see a dozen closures, and a
/// real cookie mismatch is reported by the transport as `auth_fail`.
#[derive(Debug, Default)]
pub struct HandshakeFailures(HashMap<String, u32>);

impl HandshakeFailures {
    fn host(addr: &str) -> String {
        addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned()
    }

    /// A handshake with `addr` ended early: what to log.
    pub fn failed(&mut self, addr: &str) -> HandshakeNote {
        let n = self.0.entry(Self::host(addr)).or_insert(0);
        *n += 1;
        match *n {
            n if n < HANDSHAKE_CLOSURES_LOGGED => HandshakeNote::Logged,
            n if n == HANDSHAKE_CLOSURES_LOGGED => HandshakeNote::LastLogged,
            _ => HandshakeNote::Quiet,
        }
    }

    /// A handshake with `addr` finished: its streak ends.
    pub fn succeeded(&mut self, addr: &str) {
        self.0.remove(&Self::host(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_closures_are_logged_three_in_a_row_per_host_then_quietly() {
        let mut h = HandshakeFailures::default();
        assert_eq!(h.failed("10.0.0.3:51000"), HandshakeNote::Logged);
        assert_eq!(h.failed("10.0.0.3:51002"), HandshakeNote::Logged);
        assert_eq!(h.failed("10.0.0.3:51004"), HandshakeNote::LastLogged);
        assert_eq!(h.failed("10.0.0.3:51006"), HandshakeNote::Quiet);
        assert_eq!(h.failed("10.0.0.2:4702"), HandshakeNote::Logged, "per host");
        h.succeeded("10.0.0.3:4703");
        assert_eq!(
            h.failed("10.0.0.3:51008"),
            HandshakeNote::Logged,
            "a success resets"
        );
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_lease_expires_without_renewal_and_recovers_with_it() {
        let t0 = Instant::now();
        let lease = Lease::new(Duration::from_millis(30), t0);
        assert!(lease.is_valid_at(t0));
        assert!(lease.is_valid_at(at(t0, 30)), "valid for the whole period");
        assert!(!lease.is_valid_at(at(t0, 31)));
        lease.renew_at(at(t0, 60));
        assert!(lease.is_valid_at(at(t0, 60)));
        assert!(lease.is_valid_at(at(t0, 90)));
        assert!(!lease.is_valid_at(at(t0, 91)));
    }

    #[test]
    fn a_late_renewal_never_makes_the_lease_older() {
        let t0 = Instant::now();
        let lease = Lease::new(Duration::from_millis(30), t0);
        lease.renew_at(at(t0, 100));
        lease.renew_at(at(t0, 50));
        assert!(lease.is_valid_at(at(t0, 130)));
    }

    #[test]
    fn clones_share_one_lease() {
        let t0 = Instant::now();
        let lease = Lease::new(Duration::from_millis(30), t0);
        let reader = lease.clone();
        assert!(!reader.is_valid_at(at(t0, 100)));
        lease.renew_at(at(t0, 100));
        assert!(reader.is_valid_at(at(t0, 100)));
    }

    #[test]
    fn heartbeat_pings_get_two_heartbeats_but_never_less_than_100ms() {
        assert_eq!(
            ping_deadline(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            ping_deadline(Duration::from_millis(20)),
            Duration::from_millis(100)
        );
    }
}
