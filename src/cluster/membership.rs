//! Membership: who is alive, and the placement view everyone reads.
//!
//! Inputs, all funnelled into one actor so the member set changes in one place:
//! * process-group events of `customer-registry.v2`: a remote Registry appearing is a
//!   candidate member; it becomes a member after a `Hello` exchange with a matching protocol
//!   version; its leaving (session closed) removes it at once;
//! * session events from the NodeServer (ready / disconnected), used to keep the full mesh:
//!   every seed and every member address is re-dialed with backoff until connected;
//! * a tick every heartbeat: ping each member's Registry, evaluate the failure detector
//!   ([`super::detector`]), evict silent peers (close their session), re-dial, renew the lease.
//!
//! Output: the [`View`] — an immutable snapshot (ring + how to reach each member's Registry)
//! published through a `tokio::sync::watch` channel; readers clone an `Arc` and never lock.
//! Each publish bumps the ring epoch and tells the local Registry to retire actors it no
//! longer owns.
//!
//! The [`Lease`] answers "is my picture of the cluster recent?". Membership renews it on every
//! heartbeat tick. A process that was frozen (SIGSTOP, a long stall) wakes up with an expired
//! lease, and customer actors then reload from the database before serving anything cached:
//! while we were frozen, peers may have evicted us and accepted newer writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use tokio::sync::watch;

use super::detector::{Detector, DialPlan, Verdict, was_stalled};
use super::mesh::{Mesh, SessionEvent, SessionEventKind};
use super::placement::{Member, Ring};
use super::protocol::{
    NodeInfo, REGISTRY_GROUP, RegistryMsg, call, check_peer, node_of, registry_name,
};
use crate::codec::Wire;
use crate::error::{Error, Result};

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

/// Freshness of this node's cluster picture; cheap to check on every customer operation.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    base: Instant,
    renewed_ms: AtomicU64,
    validity: Duration,
}

impl Lease {
    /// A lease valid for `validity` after each renewal; starts renewed.
    pub fn new(validity: Duration) -> Self {
        Self {
            inner: Arc::new(LeaseInner {
                base: Instant::now(),
                renewed_ms: AtomicU64::new(0),
                validity,
            }),
        }
    }

    /// Marks the picture as fresh now.
    pub fn renew(&self) {
        let now = self.inner.base.elapsed().as_millis() as u64;
        self.inner.renewed_ms.store(now, Ordering::Relaxed);
    }

    /// True when the last renewal is within the validity period.
    pub fn is_valid(&self) -> bool {
        let now = self.inner.base.elapsed().as_millis() as u64;
        let renewed = self.inner.renewed_ms.load(Ordering::Relaxed);
        now.saturating_sub(renewed) <= self.inner.validity.as_millis() as u64
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
    /// A heartbeat ping finished.
    Pong {
        /// Peer name.
        peer: String,
        /// Whether it answered in time.
        ok: bool,
    },
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
}

/// A member other than us.
struct Peer {
    info: NodeInfo,
    registry: ActorRef<RegistryMsg>,
}

/// A session the NodeServer told us about.
struct Session {
    event: SessionEvent,
    opened_at: Instant,
    ready: bool,
}

/// State of [`Membership`].
pub struct MembershipState {
    args: MembershipArgs,
    peers: BTreeMap<String, Peer>,
    sessions: HashMap<ActorId, Session>,
    detector: Detector,
    dials: DialPlan,
    last_tick: Instant,
    ticker: Option<tokio::task::JoinHandle<()>>,
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
        if let Some(mesh) = &args.mesh {
            let me = myself.clone();
            mesh.subscribe("membership", move |event| {
                let _ = me.cast(MembershipMsg::Session(event));
            });
        }
        let now = Instant::now();
        let mut dials = DialPlan::default();
        for seed in &args.seeds {
            dials.want(seed, now);
        }
        let ticker = myself.send_interval(args.heartbeat, || MembershipMsg::Tick);
        metrics::gauge!("customer_cluster_members")
            .set(args.view_tx.borrow().ring.members.len() as f64);
        let ping_deadline = (args.heartbeat * 2).max(Duration::from_millis(100));
        let state = MembershipState {
            detector: Detector::new(args.failure_timeout, ping_deadline),
            args,
            peers: BTreeMap::new(),
            sessions: HashMap::new(),
            dials,
            last_tick: now,
            ticker: Some(ticker),
        };
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
            MembershipMsg::HelloDone { registry, result } => state.on_hello(registry, result),
            MembershipMsg::Pong { peer, ok } => {
                if ok {
                    state.detector.ack(&peer, Instant::now());
                } else {
                    state.detector.failed(&peer);
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
        let info = self.args.info.clone();
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

    fn on_hello(&mut self, registry: ActorCell, result: Result<NodeInfo>) {
        let claimed = registry
            .get_name()
            .as_deref()
            .and_then(node_of)
            .map(str::to_owned);
        let info = match result.and_then(|info| check_peer(&info).map(|()| info)) {
            Ok(info) => info,
            Err(err) => {
                tracing::warn!(peer = ?claimed, error = %err, "peer not admitted");
                return;
            }
        };
        if claimed.as_deref() != Some(info.name.as_str()) || info.name == self.me() {
            tracing::error!(peer = %info.name, registered = ?claimed, "refusing a peer that claims this node's name or another name; every node needs a unique --name");
            return;
        }
        if registry.get_status() >= ractor::ActorStatus::Stopping {
            return; // its session closed while we were greeting it
        }
        let now = Instant::now();
        self.dials.want(&info.cluster_addr, now);
        let name = info.name.clone();
        match self.peers.get_mut(&name) {
            Some(existing) if existing.info.incarnation > info.incarnation => {
                // A stale session of an older process start: ignore it.
            }
            Some(existing) if existing.info.incarnation == info.incarnation => {
                // The same process over another session (e.g. a duplicate-connection
                // election): swap the route, the member set is unchanged.
                existing.registry = registry.into();
                existing.info = info;
                self.publish_routes();
            }
            _ => {
                let restarted = self.peers.contains_key(&name);
                tracing::info!(peer = %name, addr = %info.cluster_addr, db = info.hosts_db, "member {}", if restarted { "restarted" } else { "joined" });
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
        tracing::info!(peer = %node, "member left");
        self.publish("member left");
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
                    },
                );
            }
            SessionEventKind::Ready => {
                tracing::debug!(peer = ?event.peer_node(), addr = ?event.peer_addr, "session ready");
                if let Some(addr) = &event.peer_addr {
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
                    },
                );
            }
            SessionEventKind::Disconnected => match self.sessions.remove(&id) {
                Some(s) if s.ready => tracing::info!(peer = ?s.event.peer_node(), "session closed"),
                Some(s) => tracing::warn!(
                    addr = %s.event.socket_addr,
                    peer = ?s.event.peer_node(),
                    "connection closed during the handshake: check that both nodes use the same cookie and TLS settings"
                ),
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
        }
        self.last_tick = now;
        self.args.lease.renew();
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
                }
                Verdict::Evict { peer, silent_for } => self.evict(&peer, silent_for),
            }
        }
        self.close_stuck_handshakes(now);
        self.redial(myself, now);
    }

    fn ping(&mut self, myself: &ActorRef<MembershipMsg>, now: Instant) {
        let deadline = (self.args.heartbeat * 2).max(Duration::from_millis(100));
        for peer in self.detector.pings_due(now) {
            let Some(registry) = self.peers.get(&peer).map(|p| p.registry.clone()) else {
                continue;
            };
            let me = myself.clone();
            tokio::spawn(async move {
                let ok = call(&registry, deadline, |r| RegistryMsg::Ping(Wire::ok(0), r))
                    .await
                    .is_ok();
                if !ok {
                    metrics::counter!("customer_heartbeat_misses_total").increment(1);
                }
                let _ = me.cast(MembershipMsg::Pong { peer, ok });
            });
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
        for s in self.sessions.values() {
            if !s.ready && now.saturating_duration_since(s.opened_at) > limit {
                tracing::debug!(addr = %s.event.socket_addr, "closing a session stuck in its handshake");
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

/// Spawns Membership linked to `supervisor`.
pub async fn spawn(args: MembershipArgs, supervisor: ActorCell) -> Result<ActorRef<MembershipMsg>> {
    let (actor, _) = Actor::spawn_linked(None, Membership, args, supervisor)
        .await
        .map_err(|e| Error::Internal(format!("membership failed to start: {e}")))?;
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_without_renewal_and_recovers_with_it() {
        let lease = Lease::new(Duration::from_millis(30));
        assert!(lease.is_valid());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!lease.is_valid());
        lease.renew();
        assert!(lease.is_valid());
    }
}
