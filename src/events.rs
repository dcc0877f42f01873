//! The node's event bus: what this node sees happen in the cluster, as it happens.
//!
//! ```text
//! Membership ─┐
//! LeaseKeeper ─┤ emit ──▶ EventBus ──┬─▶ ring of the last RECENT_EVENTS (replayed first)
//! Registry ────┤ (never blocks)      └─▶ broadcast channel (SUBSCRIBER_BUFFER per subscriber)
//! Supervisor ──┤                            └─▶ GET /v1/events (SSE), the dashboard, `events`
//! Database ────┘
//! ```
//!
//! Every place that logs a cluster state change at INFO or above also emits a
//! [`ClusterEvent`]: members joining, restarting, being suspected, evicted or leaving,
//! placement changes (with how many of the 1024 shards changed owner), shard leases acquired,
//! released and lost, actor restarts, and the database becoming (un)available.
//!
//! Emitting never waits: the broadcast channel overwrites its oldest entry when a subscriber
//! is behind, and that subscriber learns it lagged on its next receive; the API then ends its
//! stream with a final `dropped` event. A slow reader can therefore never slow the node.
//!
//! Deliberately not here: persistence (the ring lives in memory and starts empty on every
//! start), events from other nodes (each node reports what it sees; ask each node), and
//! filtering (clients filter on `kind`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How many recent events a node keeps to replay to a new subscriber.
pub const RECENT_EVENTS: usize = 200;

/// Events a subscriber may fall behind by before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 256;

/// What happened. Serialized in snake_case (`member_evicted`, `lease_acquired`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A peer finished its handshake and became a member.
    MemberUp,
    /// A peer stopped answering heartbeats for a while; not evicted yet.
    MemberSuspect,
    /// A silent peer was removed from placement by the failure detector.
    MemberEvicted,
    /// A peer left (its Registry left the process group: graceful stop or lost session).
    MemberLeft,
    /// A peer came back as a new process start (restarted or rejoined after eviction).
    MemberRejoined,
    /// This node published a new placement view.
    PlacementChanged,
    /// This node was granted shard leases.
    LeaseAcquired,
    /// This node released shard leases (moved elsewhere or shutting down).
    LeaseReleased,
    /// This node's leases expired or were revoked, or it takes over an expired holder's shards.
    LeaseExpired,
    /// An actor of this node stopped unexpectedly and was (or will be) restarted.
    ActorRestarted,
    /// The database became reachable or unreachable from this node.
    DatabaseAvailability,
    /// A shard lease this node held and did not release was found with another holder (or
    /// none): someone with cluster access moved it. Never part of normal operation.
    LeaseMoved,
}

impl EventKind {
    /// The snake_case name, as in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemberUp => "member_up",
            Self::MemberSuspect => "member_suspect",
            Self::MemberEvicted => "member_evicted",
            Self::MemberLeft => "member_left",
            Self::MemberRejoined => "member_rejoined",
            Self::PlacementChanged => "placement_changed",
            Self::LeaseAcquired => "lease_acquired",
            Self::LeaseReleased => "lease_released",
            Self::LeaseExpired => "lease_expired",
            Self::ActorRestarted => "actor_restarted",
            Self::DatabaseAvailability => "database_availability",
            Self::LeaseMoved => "lease_moved",
        }
    }
}

/// One event as this node saw it:
/// `{"time":..,"node":..,"kind":..,"detail":..,"cause":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterEvent {
    /// When this node saw it: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The node that saw it (the one serving the stream).
    pub node: String,
    /// What happened.
    pub kind: EventKind,
    /// Who or what it concerns, e.g. `n3`, `epoch 7: n1,n2 (341 shards moved)`.
    pub detail: String,
    /// Why, as far as this node knows, e.g. `silent for 1500 ms`.
    pub cause: String,
}

impl ClusterEvent {
    /// The one-line human form the CLI prints.
    pub fn line(&self) -> String {
        format!(
            "{} {} {:<22} {} ({})",
            self.time,
            self.node,
            self.kind.as_str(),
            self.detail,
            self.cause
        )
    }
}

/// The ring and the channel, behind one lock so a subscriber's replay and its live feed
/// neither overlap nor leave a gap.
struct Inner {
    recent: VecDeque<ClusterEvent>,
    /// `None` once the node stops: every subscriber's stream then ends.
    live: Option<broadcast::Sender<ClusterEvent>>,
}

/// A node's event bus: cheap to clone, shared by every actor that emits.
#[derive(Clone)]
pub struct EventBus {
    node: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

impl EventBus {
    /// An empty bus for `node`.
    pub fn new(node: &str) -> Self {
        let (live, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        Self {
            node: node.into(),
            inner: Arc::new(Mutex::new(Inner {
                recent: VecDeque::with_capacity(RECENT_EVENTS),
                live: Some(live),
            })),
        }
    }

    /// Records an event stamped now; never blocks on subscribers.
    pub fn emit(&self, kind: EventKind, detail: impl Into<String>, cause: impl Into<String>) {
        let event = ClusterEvent {
            time: now_rfc3339(),
            node: self.node.to_string(),
            kind,
            detail: detail.into(),
            cause: cause.into(),
        };
        metrics::counter!("customer_events_total", "kind" => kind.as_str()).increment(1);
        let mut inner = self.lock();
        if inner.recent.len() == RECENT_EVENTS {
            inner.recent.pop_front();
        }
        inner.recent.push_back(event.clone());
        // No subscriber is not an error: the ring still keeps the event.
        if let Some(live) = &inner.live {
            let _ = live.send(event);
        }
    }

    /// The recent events, oldest first, and a receiver for every event after them (closed
    /// at once after [`EventBus::close`]).
    pub fn subscribe(&self) -> (Vec<ClusterEvent>, broadcast::Receiver<ClusterEvent>) {
        let inner = self.lock();
        let live = match &inner.live {
            Some(live) => live.subscribe(),
            None => broadcast::channel(1).1,
        };
        (inner.recent.iter().cloned().collect(), live)
    }

    /// Ends every subscriber's stream (the node is stopping), so open streams do not hold
    /// the HTTP server's graceful stop. Later events are still kept in the ring.
    pub fn close(&self) {
        self.lock().live = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The wall clock as RFC 3339 with milliseconds, e.g. `2026-11-27T19:02:03.123Z`.
fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_subscriber_gets_the_recent_events_then_the_live_ones() {
        let bus = EventBus::new("n1");
        bus.emit(EventKind::MemberUp, "n2", "handshake done");
        let (replay, mut live) = bus.subscribe();
        bus.emit(EventKind::MemberEvicted, "n2", "silent for 1500 ms");
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].kind, EventKind::MemberUp);
        assert_eq!(replay[0].node, "n1");
        let next = live.try_recv().expect("the live event");
        assert_eq!(next.kind, EventKind::MemberEvicted);
        assert_eq!(next.cause, "silent for 1500 ms");
        assert!(live.try_recv().is_err(), "nothing replayed twice");
    }

    #[test]
    fn closing_the_bus_ends_every_stream() {
        let bus = EventBus::new("n1");
        let (_, mut before) = bus.subscribe();
        bus.close();
        let (_, mut after) = bus.subscribe();
        assert_eq!(
            before.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        );
        assert_eq!(
            after.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        );
    }

    #[test]
    fn the_ring_keeps_only_the_most_recent_events() {
        let bus = EventBus::new("n1");
        for i in 0..RECENT_EVENTS + 5 {
            bus.emit(EventKind::LeaseAcquired, format!("{i}"), "");
        }
        let (replay, _) = bus.subscribe();
        assert_eq!(replay.len(), RECENT_EVENTS);
        assert_eq!(replay[0].detail, "5");
    }

    #[test]
    fn a_lagging_subscriber_learns_it_lagged_and_the_emitter_never_waits() {
        let bus = EventBus::new("n1");
        let (_, mut live) = bus.subscribe();
        for i in 0..SUBSCRIBER_BUFFER * 3 {
            bus.emit(EventKind::PlacementChanged, format!("{i}"), "");
        }
        assert!(matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    #[test]
    fn events_serialize_to_the_documented_shape() {
        let bus = EventBus::new("n1");
        bus.emit(EventKind::MemberEvicted, "n3", "silent");
        let (replay, _) = bus.subscribe();
        let json = serde_json::to_value(&replay[0]).expect("json");
        assert_eq!(json["kind"], "member_evicted");
        assert_eq!(json["node"], "n1");
        assert_eq!(json["detail"], "n3");
        assert!(json["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 5);
    }
}
