//! The cluster layer: how nodes find each other, agree on placement and talk.
//!
//! * [`protocol`] — every message that crosses nodes, the group names, the protocol version.
//! * [`placement`] — rendezvous hashing of customer ids (current) and of the 1024 shards (next)
//!   over member names.
//! * [`lease`] — the pure core of shard leases: renew validity, takeover, reconcile (§6).
//! * [`mesh`] — the ractor_cluster NodeServer, session events, dialing.
//! * [`gate`] — the cluster port in front of the NodeServer: a cap on unauthenticated
//!   connections, a handshake deadline, refusals counted and logged at a bounded rate.
//! * [`handshake`] — the pure rules for the frames before authentication (sizes, order, the
//!   announced name against the peer's certificate) and the rate-limited refusal log.
//! * [`membership`] — who is alive: hello handshake, heartbeats, eviction, re-dialing; the
//!   published placement view and the freshness lease.
//! * [`admission`] — the pure rule deciding what a finished `Hello` means (admit, refuse,
//!   stale, same process).
//! * [`dbnode`] — which node is the SQLite database node; a second one is refused and exits.
//! * [`heartbeat`] — the per-node actor that answers heartbeat pings and carries nothing else.
//! * [`tls`] — optional mutual TLS between nodes.
//! * [`detector`] — the pure failure-detector, re-dial and stall rules membership applies.
//! * [`advertise`] — the start-up check that the advertised address leads back to this node.
//!
//! Delivery guarantees (from ractor_cluster over one TCP session per peer pair):
//! * Messages between two actors on a live session arrive in order, at most once.
//! * Nothing is retransmitted across sessions: a message in flight when a session drops is
//!   lost, and an RPC waiting on it fails (dropped reply port or its deadline). Callers treat
//!   that as "outcome unknown" and retry idempotent operations against the recomputed owner.
//! * There is no ordering between different peers, and no global clock.
//! * A closed session removes the peer's process-group members at once; a silent peer (frozen
//!   process, partition) is not detected by the transport at all — that is what our own
//!   heartbeats are for.
//!
//! What this layer does not give: consensus. Two nodes can briefly disagree on the member set
//! and both activate the same customer; the database's compare-and-set on `version` (fencing)
//! is what keeps such a double activation from overwriting an acknowledged write.

pub mod admission;
pub mod advertise;
pub mod dbnode;
pub mod detector;
pub mod frames;
pub mod gate;
pub mod handshake;
pub mod heartbeat;
pub mod lease;
pub mod membership;
pub mod mesh;
pub mod placement;
pub mod protocol;
pub mod sources;
pub mod tls;
