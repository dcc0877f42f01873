//! Everything that crosses nodes: the Registry, Heartbeat and Database message enums, their
//! argument and reply types, the process-group names and the protocol version.
//!
//! Every RPC carries its argument and its reply as [`Wire<T>`], so a decoding failure becomes an
//! error reply instead of a dropped message, and domain errors cross nodes as values.
//! Customer actors are deliberately *not* here: their messages are local-only, so they are
//! never announced to peers.
//!
//! Compatibility rule: changing any type in this file changes the wire format. Bump
//! [`PROTOCOL_VERSION`] (which renames the groups, so old and new nodes simply do not see each
//! other) and say so in the release notes.

use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use super::dbnode::{DbNode, SqliteRole};
use crate::codec::Wire;
use crate::customer::{Customer, CustomerFields, CustomerId, CustomerPatch};
use crate::error::{Error, Result};
use crate::storage::{
    Grant, Holder, Observed, Registration, Release, Renewal, RequestStamp, Settlement, ShardId,
    ShardLease, Takeover, Write, WriteOutcome,
};

/// Version of this protocol. Checked in the `Hello` exchange before a peer becomes a member.
pub const PROTOCOL_VERSION: u32 = 5;

/// Process group every node's Registry joins. Versioned: a remote actor of another type in a
/// group would be silently mis-addressed, so incompatible releases must not share a group.
pub const REGISTRY_GROUP: &str = "customer-registry.v5";

/// Process group every Database actor joins.
pub const DATABASE_GROUP: &str = "customer-db.v5";

/// Process group every node's Heartbeat actor joins. Heartbeats have their own actor (and so
/// their own mailbox) so that no burst of customer messages can delay a pong past the failure
/// timeout and get a healthy node evicted.
pub const HEARTBEAT_GROUP: &str = "customer-heartbeat.v5";

/// Registered (process-local) name of this node's Registry; remote actors carry it too, which
/// is how a pg member is tied to a node name.
pub fn registry_name(node: &str) -> String {
    format!("{REGISTRY_GROUP}/{node}")
}

/// Registered name of this node's Database actor.
pub fn database_name(node: &str) -> String {
    format!("{DATABASE_GROUP}/{node}")
}

/// Registered name of this node's Heartbeat actor.
pub fn heartbeat_name(node: &str) -> String {
    format!("{HEARTBEAT_GROUP}/{node}")
}

/// The node name in a registered actor name produced by [`registry_name`], [`database_name`]
/// or [`heartbeat_name`].
pub fn node_of(actor_name: &str) -> Option<&str> {
    actor_name.split_once('/').map(|(_, node)| node)
}

/// Checks a peer's protocol version: a peer becomes a member only when it speaks ours.
pub fn check_peer(peer: &NodeInfo) -> Result<()> {
    if peer.protocol_version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "node {} speaks protocol v{}, this node v{PROTOCOL_VERSION}",
            peer.name, peer.protocol_version
        )))
    }
}

/// What a node tells its peers about itself when they meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Stable node name (placement key).
    pub name: String,
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol_version: u32,
    /// `host:port` peers dial for the cluster mesh.
    pub cluster_addr: String,
    /// HTTP API address.
    pub http_addr: String,
    /// Whether this node hosts a Database actor.
    pub hosts_db: bool,
    /// Distinguishes process starts of the same node name (ms since the Unix epoch at start).
    pub incarnation: u64,
    /// Its part in the SQLite database question (see [`crate::cluster::dbnode`]).
    pub sqlite: SqliteRole,
    /// The serving SQLite database node it knows first-hand (itself included), if any.
    pub database: Option<DbNode>,
}

/// An operation on one existing customer, executed by its actor on the owner node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerCommand {
    /// Read.
    Get,
    /// Full replace (PUT), optionally conditional on the client's `If-Match` version.
    Replace {
        /// New fields, validated by the entry node (and again by the owner).
        fields: CustomerFields,
        /// Client precondition.
        if_match: Option<u64>,
    },
    /// JSON merge patch (PATCH).
    Patch {
        /// The decoded patch.
        patch: CustomerPatch,
        /// Client precondition.
        if_match: Option<u64>,
    },
    /// Delete.
    Delete {
        /// Client precondition.
        if_match: Option<u64>,
    },
}

impl CustomerCommand {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Replace { .. } => "replace",
            Self::Patch { .. } => "patch",
            Self::Delete { .. } => "delete",
        }
    }
}

/// A command addressed to one customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRequest {
    /// Target customer.
    pub id: CustomerId,
    /// What to do.
    pub command: CustomerCommand,
    /// The client request this command belongs to (F4); reads ignore it, writes carry it.
    pub request: RequestMeta,
    /// How long the caller still waits for the answer: the time left when this attempt's
    /// message was built, armed on the owner's own clock on receipt. The owner refuses to
    /// start a write once it has passed (see [`Deadline`]).
    pub deadline: Deadline,
}

impl RouteRequest {
    /// This request as one attempt sends it: with the deadline left when its message is built.
    pub fn with_deadline(&self, deadline: Deadline) -> Self {
        Self {
            deadline,
            ..self.clone()
        }
    }
}

/// A create addressed to the customer's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The customer to store (id chosen by the entry node).
    pub customer: Customer,
    /// The client request this create belongs to (F4).
    pub request: RequestMeta,
    /// Same meaning as [`RouteRequest::deadline`].
    pub deadline: Deadline,
}

/// The request id of one client request, as the entry node fixed it (DESIGN §6 F4): the
/// same for every internal retry of that request, so a retry can never apply twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// The client's `Idempotency-Key`, or one the entry node made (a UUID v7).
    pub id: String,
    /// Stable hash of the canonical request (method, customer id, body): the same key with
    /// another body is refused.
    pub body_hash: u64,
    /// Random per HTTP request at the entry node; a client retry after a 503 is a new attempt.
    pub attempt: u32,
}

impl RequestMeta {
    /// The stamp the database stores for this request, written at wall-clock `at` (µs; used
    /// only for pruning).
    pub fn stamp(&self, at: i64) -> RequestStamp {
        RequestStamp {
            id: self.id.clone(),
            body_hash: self.body_hash,
            attempt: self.attempt,
            at,
        }
    }
}

/// What the owner answers a routed command or create with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReply {
    /// The customer after the operation; `None` after a delete.
    pub customer: Option<Customer>,
    /// True when the answer is the one stored for this request id the first time (an
    /// idempotent replay, F1): nothing was applied now.
    pub replayed: bool,
}

/// How one shard looks from the node that should own it, for `GET …/placement` and `where`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The node that answered.
    pub node: String,
    /// The shard.
    pub shard: ShardId,
    /// This node's state of the shard: `held`, `lapsed`, `lost`, `releasing` or `none`.
    pub state: String,
    /// Token of this node's grant, if any.
    pub token: Option<u64>,
    /// Validity left on this node's holder clock, in ms (only while held).
    pub valid_for_ms: Option<u64>,
    /// The holder named in the last lease table this node read, if any.
    pub holder_hint: Option<String>,
    /// Whether a customer actor for the asked id is active on this node.
    pub active: bool,
}

/// A takeover of a dead node (L5), as sent to the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverRequest {
    /// Who takes over.
    pub contender: Holder,
    /// The row observed unchanged for TTL.
    pub victim: Observed,
    /// Shards to grant, ascending.
    pub shards: Vec<ShardId>,
}

/// A restarted process taking its own name's row over (L5), as sent to the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnRowRequest {
    /// The new incarnation.
    pub incarnation: u64,
    /// The old row observed unchanged for TTL.
    pub observed: Observed,
    /// Shards to grant, ascending.
    pub shards: Vec<ShardId>,
}

/// The deadline of one routed request as it crosses nodes (DESIGN §4: a duration, never a
/// wall-clock instant compared on another host).
///
/// On the wire it is the time the caller had left when it built this attempt's message
/// ([`Deadline::left_until`], from the entry node's own `Instant` deadline, so every retry
/// carries only what is left of the one request deadline and never extends it). The receiver
/// turns it into an `Instant` on its own monotonic clock when the message arrives
/// ([`Deadline::arm`]: the Registry's handler, the first code on the owner that sees it, for
/// a remote and an in-process call alike). No two hosts' clocks are ever compared, so a
/// wall clock that is off (or jumps) on either side changes nothing.
///
/// Transit time is not counted: a message delayed in the network, or in a process frozen
/// before it was read, arrives with the budget it left with, so the owner may start it later
/// than the entry node intended — never earlier. The check ([`Deadline::check`]) therefore is
/// a guard against starting work nobody waits for (a message queued in a frozen owner past
/// its budget), not a fence: what stops an attempt the entry node gave up on from applying is
/// the settle of its request id (DESIGN §6 F3), which the entry node does before it answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// Milliseconds the caller had left when it built the message (rounded down).
    budget_ms: u64,
    /// When it passes on this process's monotonic clock; `None` until armed on receipt.
    /// Never sent: an `Instant` means nothing on another host.
    #[serde(skip)]
    armed: Option<Instant>,
}

impl Deadline {
    /// Longest budget a receiver counts (far beyond any request timeout), so that arming never
    /// overflows an `Instant`, whatever arrived.
    pub const MAX_BUDGET: Duration = Duration::from_secs(u32::MAX as u64);

    /// What is left at `now` of the caller's local `deadline`, for the message built at `now`:
    /// zero once it passed; never more than what is left.
    pub fn left_until(deadline: Instant, now: Instant) -> Self {
        Self::within(deadline.saturating_duration_since(now))
    }

    /// A budget of `budget` (rounded down to whole milliseconds), not yet armed.
    pub fn within(budget: Duration) -> Self {
        Self {
            budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
            armed: None,
        }
    }

    /// The budget this deadline carries on the wire.
    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.budget_ms).min(Self::MAX_BUDGET)
    }

    /// Arms the deadline on receipt at `now`: it passes `budget` later on this process's
    /// monotonic clock. Arming again keeps the first instant, so a message handed on within
    /// the process never gains time.
    pub fn arm(&mut self, now: Instant) {
        if self.armed.is_none() {
            self.armed = Some(now + self.budget());
        }
    }

    /// When the deadline passes on this process's clock. One not armed yet counts from `now`,
    /// as if it arrived now (what [`Deadline::arm`] would make of it).
    pub fn expires_at(&self, now: Instant) -> Instant {
        self.armed.unwrap_or_else(|| now + self.budget())
    }

    /// `Err(Timeout)` once the deadline has passed at `now`: the caller has given up, so work
    /// that has not started must not start.
    pub fn check(&self, now: Instant) -> Result<()> {
        let expires = self.expires_at(now);
        if now > expires {
            Err(Error::Timeout(format!(
                "request expired {} ms before it could run (its budget was {} ms)",
                now.duration_since(expires).as_millis(),
                self.budget_ms
            )))
        } else {
            Ok(())
        }
    }
}

/// A keyset-paginated list request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// Return ids strictly greater than this.
    pub after: Option<CustomerId>,
    /// Page size (clamped by the store).
    pub limit: u32,
}

/// One page of customers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerPage {
    /// Customers ordered by id.
    pub items: Vec<Customer>,
    /// Cursor for the next page; `None` on the last page.
    pub next: Option<CustomerId>,
}

/// A Registry's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStats {
    /// Node name.
    pub node: String,
    /// Customer actors alive now.
    pub active_customers: u64,
    /// Actors started since the node started.
    pub activations: u64,
    /// Actors stopped for idleness, deletion or ownership moves.
    pub passivations: u64,
    /// Actors that panicked and were cleaned up (re-activated on next use).
    pub restarts: u64,
    /// Stale writes rejected by the database's compare-and-set (fencing).
    pub version_conflicts: u64,
    /// Shards this node holds the lease of right now.
    pub leases_held: u64,
}

/// Messages of the per-node Registry (group [`REGISTRY_GROUP`]): the entry point for every
/// customer operation routed to this node.
#[derive(RactorClusterMessage)]
pub enum RegistryMsg {
    /// Protocol handshake: the caller's info in, ours out. A peer becomes a member only after
    /// this succeeds with an equal [`PROTOCOL_VERSION`].
    #[rpc]
    Hello(Wire<NodeInfo>, RpcReplyPort<Wire<NodeInfo>>),
    /// Creates a customer (id chosen by the entry node; idempotent by id).
    #[rpc]
    CreateCustomer(Wire<CreateRequest>, RpcReplyPort<Wire<RouteReply>>),
    /// Runs a command on the customer's actor; the reply's customer is `None` for a delete.
    #[rpc]
    Route(Wire<RouteRequest>, RpcReplyPort<Wire<RouteReply>>),
    /// Lists customers from the database.
    #[rpc]
    ListCustomers(Wire<ListRequest>, RpcReplyPort<Wire<CustomerPage>>),
    /// This node's view of the shard of a customer id (observability).
    #[rpc]
    ShardInfo(Wire<CustomerId>, RpcReplyPort<Wire<ShardReport>>),
    /// Counters of this Registry.
    #[rpc]
    Stats(Wire<()>, RpcReplyPort<Wire<RegistryStats>>),
    /// Placement changed: stop actors this node no longer owns. Sent by the local Membership.
    PlacementChanged(Wire<u64>),
    /// Periodic: passivate idle actors. Sent by the Registry's own timer.
    Sweep(Wire<()>),
    /// A customer actor reports it holds nothing (deleted or absent): retire it.
    /// Carries the actor's pid so a late report never retires a successor.
    Release(Wire<(CustomerId, u64)>),
}

/// Messages of a node's Heartbeat actor (group [`HEARTBEAT_GROUP`]): liveness only. Nothing
/// else is ever sent to it, so its answer time is the node's responsiveness, not the length of
/// a customer queue.
#[derive(RactorClusterMessage)]
pub enum HeartbeatMsg {
    /// Echoes the sequence number.
    #[rpc]
    Ping(Wire<u64>, RpcReplyPort<Wire<u64>>),
}

/// Messages of a Database actor (group [`DATABASE_GROUP`]).
#[derive(RactorClusterMessage)]
pub enum DatabaseMsg {
    /// Liveness; replies with the hosting node's name.
    #[rpc]
    Ping(Wire<()>, RpcReplyPort<Wire<String>>),
    /// Reads one customer; `None` when absent.
    #[rpc]
    GetCustomer(Wire<CustomerId>, RpcReplyPort<Wire<Option<Customer>>>),
    /// One page ordered by id.
    #[rpc]
    ListCustomers(Wire<ListRequest>, RpcReplyPort<Wire<Vec<Customer>>>),
    /// A write with its fence and request stamp (F1); replies with its full outcome. The
    /// only way to change a customer: a write without a fence or a request id is refused, so
    /// nothing reaches the table behind the lease holders' caches (L1).
    #[rpc]
    Submit(Wire<Write>, RpcReplyPort<Wire<WriteOutcome>>),
    /// F3: settles a request whose outcome is unknown.
    #[rpc]
    Settle(Wire<RequestStamp>, RpcReplyPort<Wire<Settlement>>),
    /// L1: registers `(node, incarnation)`.
    #[rpc]
    Register(Wire<(String, u64)>, RpcReplyPort<Wire<Registration>>),
    /// L2: renew number `k` of a holder, with the TTL (ms) it runs with (L4); the reply
    /// carries the node table.
    #[rpc]
    Renew(Wire<(Holder, u64, u64)>, RpcReplyPort<Wire<Renewal>>),
    /// L5: revokes a dead node and grants its shards.
    #[rpc]
    Takeover(Wire<TakeoverRequest>, RpcReplyPort<Wire<Takeover>>),
    /// L5: a restarted process takes its own name's row over.
    #[rpc]
    TakeoverOwnRow(Wire<OwnRowRequest>, RpcReplyPort<Wire<Takeover>>),
    /// L5: grants released, never-held or stale-epoch shards.
    #[rpc]
    Grant(Wire<(Holder, Vec<ShardId>)>, RpcReplyPort<Wire<Grant>>),
    /// L6: `(node, shard, token)`: `node` releases a shard it holds at `token`. A release
    /// naming another holder than the shard's changes nothing, and a session may release only
    /// for the node it authenticated as (`cluster::frames`).
    #[rpc]
    Release(Wire<(String, ShardId, u64)>, RpcReplyPort<Wire<Release>>),
    /// L6: clears `(node, incarnation)` from its node row on graceful stop.
    #[rpc]
    ClearIncarnation(Wire<(String, u64)>, RpcReplyPort<Wire<bool>>),
    /// Every shard lease row, for routing, acquiring and reconcile.
    #[rpc]
    LeaseTable(Wire<()>, RpcReplyPort<Wire<Vec<ShardLease>>>),
}

/// Calls `actor` with a deadline and flattens transport and domain failures into one
/// [`Result`]. Every cross-actor request in the crate goes through here.
pub async fn call<M, T>(
    actor: &ActorRef<M>,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<Wire<T>>) -> M,
) -> Result<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(reply)) => reply.0,
        Ok(CallResult::Timeout) => Err(Error::Timeout(format!(
            "no reply within {} ms",
            timeout.as_millis()
        ))),
        Ok(CallResult::SenderError) => Err(Error::Unavailable(
            "the request was dropped (actor stopped or peer disconnected)".into(),
        )),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::{FieldPatch, new_customer_id};
    use ractor::BytesConvertable;

    fn round_trip<T>(value: T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
    {
        let wire = Wire::ok(value.clone());
        assert_eq!(Wire::<T>::from_bytes(wire.into_bytes()), Wire::ok(value));
    }

    fn meta() -> RequestMeta {
        RequestMeta {
            id: "key-1".into(),
            body_hash: 0xfeed,
            attempt: 3,
        }
    }

    fn holder() -> Holder {
        Holder {
            node: "n2".into(),
            incarnation: 9,
            epoch: 4,
        }
    }

    fn observed() -> Observed {
        Observed {
            node: "n1".into(),
            incarnation: 8,
            epoch: 2,
            seq: 77,
        }
    }

    fn customer() -> Customer {
        Customer::new(
            new_customer_id(),
            CustomerFields {
                name: "Zoë 🚀".into(),
                email: "zoe@example.com".into(),
                phone: Some("+1 555".into()),
                address: None,
            },
            1_700_000_000_000_000,
        )
    }

    #[test]
    fn every_wire_type_round_trips() {
        let c = customer();
        round_trip(NodeInfo {
            name: "n1".into(),
            protocol_version: PROTOCOL_VERSION,
            cluster_addr: "127.0.0.1:4701".into(),
            http_addr: "127.0.0.1:8081".into(),
            hosts_db: true,
            incarnation: 42,
            sqlite: SqliteRole::Serving,
            database: Some(DbNode {
                name: "n1".into(),
                incarnation: 42,
            }),
        });
        round_trip(c.clone());
        round_trip(CreateRequest {
            customer: c.clone(),
            request: meta(),
            deadline: Deadline::within(Duration::from_secs(5)),
        });
        round_trip(Some(c.clone()));
        round_trip(None::<Customer>);
        round_trip(c.id);
        for command in [
            CustomerCommand::Get,
            CustomerCommand::Replace {
                fields: c.fields.clone(),
                if_match: Some(3),
            },
            CustomerCommand::Patch {
                patch: CustomerPatch {
                    name: FieldPatch::Set("x".into()),
                    phone: FieldPatch::Clear,
                    ..Default::default()
                },
                if_match: None,
            },
            CustomerCommand::Delete { if_match: None },
        ] {
            round_trip(RouteRequest {
                id: c.id,
                command,
                request: meta(),
                deadline: Deadline::within(Duration::from_millis(7)),
            });
        }
        round_trip(ListRequest {
            after: Some(c.id),
            limit: 10,
        });
        round_trip(CustomerPage {
            items: vec![c.clone(), c.clone()],
            next: Some(c.id),
        });
        round_trip(RegistryStats {
            node: "n3".into(),
            active_customers: 5,
            ..Default::default()
        });
        round_trip((c.id, 77u64));
        round_trip(vec![c]);
        round_trip(());
        round_trip("n1".to_string());
        round_trip(true);
    }

    /// The protocol version the golden bytes below belong to, and the bytes: one fixed value of
    /// every type that crosses nodes, encoded as it goes on the wire (hex). A failure here
    /// means the wire format changed: bump [`PROTOCOL_VERSION`] (and the group names), then
    /// regenerate the table from the test's output.
    const GOLDEN: (u32, &str) = (
        5,
        "
        node_info 00026e31030e3132372e302e302e313a343730310e3132372e302e302e313a38303831012a0101026e3007
        customer 001001910000000070008000000000000001045a6fc3ab0f7a6f65406578616d706c652e636f6d01062b31203535350003fd00803c3048140c00fd02803c3048140c00
        create 001001910000000070008000000000000001045a6fc3ab0f7a6f65406578616d706c652e636f6d01062b31203535350003fd00803c3048140c00fd02803c3048140c00056b65792d31fbedfe0309
        route_get 00100191000000007000800000000000000100056b65792d31fbedfe0307
        route_replace 00100191000000007000800000000000000101045a6fc3ab0f7a6f65406578616d706c652e636f6d01062b3120353535000103056b65792d31fbedfe0307
        route_patch 0010019100000000700080000000000000010202017800010000056b65792d31fbedfe0307
        route_delete 001001910000000070008000000000000001030101056b65792d31fbedfe0307
        list 000110019100000000700080000000000000010a
        page 00011001910000000070008000000000000001045a6fc3ab0f7a6f65406578616d706c652e636f6d01062b31203535350003fd00803c3048140c00fd02803c3048140c0000
        stats 00026e330506010002fb5501
        release 0010019100000000700080000000000000014d
        error 01040102
        absent 0000
        ping 0007
        route_reply 00011001910000000070008000000000000001045a6fc3ab0f7a6f65406578616d706c652e636f6d01062b31203535350003fd00803c3048140c00fd02803c3048140c0001
        shard_report 00026e32fb01020468656c64010c01fbaa0501026e3201
        submit 00021001910000000070008000000000000001010301fb01020c01056b65792d31fbedfe03fd00803c3048140c00
        outcome_fenced 000201026e330d
        outcome_replayed 000101
        settlement 000103
        register 00026e3209
        registration 000004
        renew 00026e3209040ffbd007
        renewal 000001026e310108024dfbd007
        takeover 00026e320904026e3108024d0201fb0102
        own_row 000a026e3108024d0102
        takeover_done 00000301fb01020c
        grant 00026e320904020102
        granted 000000
        lease_release 00026e32fb01020c
        released 00000d
        lease_table 0001fb010201026e32010901040c
        not_holder 010601026e330d
        ",
    );

    fn golden_customer() -> Customer {
        Customer {
            id: CustomerId::from_u128(0x0191_0000_0000_7000_8000_0000_0000_0001),
            fields: CustomerFields {
                name: "Zoë".into(),
                email: "zoe@example.com".into(),
                phone: Some("+1 555".into()),
                address: None,
            },
            version: 3,
            created_at: 1_700_000_000_000_000,
            updated_at: 1_700_000_000_000_001,
        }
    }

    fn hex<T: Serialize + serde::de::DeserializeOwned>(value: T) -> String {
        hex_of(Wire::ok(value))
    }

    fn hex_of<T: Serialize + serde::de::DeserializeOwned>(wire: Wire<T>) -> String {
        wire.into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn golden_table() -> Vec<(&'static str, String)> {
        let c = golden_customer();
        let patch = CustomerPatch {
            name: FieldPatch::Set("x".into()),
            phone: FieldPatch::Clear,
            ..Default::default()
        };
        let route = |command| RouteRequest {
            id: c.id,
            command,
            request: meta(),
            deadline: Deadline::within(Duration::from_millis(7)),
        };
        vec![
            (
                "node_info",
                hex(NodeInfo {
                    name: "n1".into(),
                    protocol_version: 3,
                    cluster_addr: "127.0.0.1:4701".into(),
                    http_addr: "127.0.0.1:8081".into(),
                    hosts_db: true,
                    incarnation: 42,
                    sqlite: SqliteRole::Candidate,
                    database: Some(DbNode {
                        name: "n0".into(),
                        incarnation: 7,
                    }),
                }),
            ),
            ("customer", hex(c.clone())),
            (
                "create",
                hex(CreateRequest {
                    customer: c.clone(),
                    request: meta(),
                    deadline: Deadline::within(Duration::from_millis(9)),
                }),
            ),
            ("route_get", hex(route(CustomerCommand::Get))),
            (
                "route_replace",
                hex(route(CustomerCommand::Replace {
                    fields: c.fields.clone(),
                    if_match: Some(3),
                })),
            ),
            (
                "route_patch",
                hex(route(CustomerCommand::Patch {
                    patch,
                    if_match: None,
                })),
            ),
            (
                "route_delete",
                hex(route(CustomerCommand::Delete { if_match: Some(1) })),
            ),
            (
                "list",
                hex(ListRequest {
                    after: Some(c.id),
                    limit: 10,
                }),
            ),
            (
                "page",
                hex(CustomerPage {
                    items: vec![c.clone()],
                    next: None,
                }),
            ),
            (
                "stats",
                hex(RegistryStats {
                    node: "n3".into(),
                    active_customers: 5,
                    activations: 6,
                    passivations: 1,
                    restarts: 0,
                    version_conflicts: 2,
                    leases_held: 341,
                }),
            ),
            ("release", hex((c.id, 77u64))),
            (
                "error",
                hex_of(Wire::<u64>(Err(Error::VersionConflict {
                    expected: 1,
                    current: 2,
                }))),
            ),
            ("absent", hex(None::<Customer>)),
            ("ping", hex(7u64)),
            (
                "route_reply",
                hex(RouteReply {
                    customer: Some(c.clone()),
                    replayed: true,
                }),
            ),
            (
                "shard_report",
                hex(ShardReport {
                    node: "n2".into(),
                    shard: 513,
                    state: "held".into(),
                    token: Some(12),
                    valid_for_ms: Some(1450),
                    holder_hint: Some("n2".into()),
                    active: true,
                }),
            ),
            (
                "submit",
                hex(Write {
                    op: crate::storage::WriteOp::Delete {
                        id: c.id,
                        expected_version: Some(3),
                    },
                    fence: Some(crate::storage::Fence {
                        shard: 513,
                        token: 12,
                    }),
                    request: Some(meta().stamp(1_700_000_000_000_000)),
                }),
            ),
            (
                "outcome_fenced",
                hex(WriteOutcome::Fenced {
                    holder: Some("n3".into()),
                    token: 13,
                }),
            ),
            (
                "outcome_replayed",
                hex(WriteOutcome::Replayed(
                    crate::storage::StoredResult::Deleted,
                )),
            ),
            (
                "settlement",
                hex(Settlement::Stored(crate::storage::StoredResult::Aborted)),
            ),
            ("register", hex(("n2".to_string(), 9u64))),
            ("registration", hex(Registration::Registered { epoch: 4 })),
            ("renew", hex((holder(), 15u64, 2000u64))),
            (
                "renewal",
                hex(Renewal::Renewed {
                    table: vec![crate::storage::NodeLease {
                        node: "n1".into(),
                        incarnation: Some(8),
                        epoch: 2,
                        seq: 77,
                        ttl_ms: 2000,
                    }],
                }),
            ),
            (
                "takeover",
                hex(TakeoverRequest {
                    contender: holder(),
                    victim: observed(),
                    shards: vec![1, 513],
                }),
            ),
            (
                "own_row",
                hex(OwnRowRequest {
                    incarnation: 10,
                    observed: observed(),
                    shards: vec![2],
                }),
            ),
            (
                "takeover_done",
                hex(Takeover::Done {
                    victim_epoch: 3,
                    granted: vec![crate::storage::ShardGrant {
                        shard: 513,
                        token: 12,
                    }],
                }),
            ),
            ("grant", hex((holder(), vec![1u16, 2]))),
            ("granted", hex(Grant::Granted(vec![]))),
            ("lease_release", hex(("n2".to_string(), 513u16, 12u64))),
            ("released", hex(Release::Released { token: 13 })),
            (
                "lease_table",
                hex(vec![ShardLease {
                    shard: 513,
                    holder: Some("n2".into()),
                    holder_incarnation: Some(9),
                    holder_epoch: Some(4),
                    token: 12,
                }]),
            ),
            (
                "not_holder",
                hex_of(Wire::<u64>(Err(Error::NotHolder {
                    holder: Some("n3".into()),
                    token: 13,
                }))),
            ),
        ]
    }

    #[test]
    fn wire_bytes_are_pinned_by_golden_values() {
        let actual: Vec<String> = golden_table()
            .into_iter()
            .map(|(name, bytes)| format!("{name} {bytes}"))
            .collect();
        let actual = actual.join("\n");
        let (version, expected) = GOLDEN;
        assert_eq!(
            version, PROTOCOL_VERSION,
            "the golden bytes belong to protocol v{version}: regenerate them for this version"
        );
        assert_eq!(
            actual,
            expected
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
            "the wire format changed: bump PROTOCOL_VERSION and regenerate GOLDEN from:\n{actual}"
        );
    }

    #[test]
    fn a_garbled_request_decodes_to_an_error_the_handler_can_reply_with() {
        let garbage = vec![7u8; 33];
        assert!(Wire::<RouteRequest>::from_bytes(garbage.clone()).0.is_err());
        assert!(Wire::<Customer>::from_bytes(garbage.clone()).0.is_err());
        assert!(Wire::<NodeInfo>::from_bytes(garbage).0.is_err());
    }

    #[test]
    fn a_deadline_is_armed_on_receipt_and_refuses_once_its_budget_has_passed() {
        let received = Instant::now();
        let mut deadline = Deadline::within(Duration::from_millis(3000));
        deadline.arm(received);
        assert_eq!(
            deadline.expires_at(received + Duration::from_secs(60)),
            received + Duration::from_millis(3000),
            "armed once, on receipt: later readings do not move it"
        );
        assert!(deadline.check(received).is_ok());
        assert!(
            deadline
                .check(received + Duration::from_millis(3000))
                .is_ok()
        );
        assert!(matches!(
            deadline.check(received + Duration::from_millis(3001)),
            Err(Error::Timeout(_))
        ));
    }

    #[test]
    fn a_deadline_counts_on_the_receivers_clock_whatever_the_senders_reads() {
        // Built on the entry node against its own Instant; only the budget crosses.
        let entry_now = Instant::now();
        let sent = Deadline::left_until(entry_now + Duration::from_millis(3000), entry_now);
        let Wire(decoded) = Wire::<Deadline>::from_bytes(Wire::ok(sent).into_bytes());
        let mut received = decoded.expect("decodes");
        assert_eq!(received.budget(), Duration::from_millis(3000));
        // The owner arms it on its own clock, however late that reads.
        let owner_now = entry_now + Duration::from_secs(3600);
        received.arm(owner_now);
        assert!(
            received
                .check(owner_now + Duration::from_millis(2999))
                .is_ok()
        );
        assert!(
            received
                .check(owner_now + Duration::from_millis(3001))
                .is_err()
        );
    }

    #[test]
    fn arming_again_never_extends_a_deadline() {
        let t0 = Instant::now();
        let mut deadline = Deadline::within(Duration::from_millis(100));
        deadline.arm(t0);
        deadline.arm(t0 + Duration::from_millis(90));
        assert_eq!(deadline.expires_at(t0), t0 + Duration::from_millis(100));
    }

    #[test]
    fn a_retry_carries_only_what_is_left_of_the_one_request_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(3000);
        let first = Deadline::left_until(deadline, start);
        assert_eq!(first.budget(), Duration::from_millis(3000));
        for spent in [1, 999, 1500, 2999, 3000, 3001, 10_000] {
            let now = start + Duration::from_millis(spent);
            let retry = Deadline::left_until(deadline, now);
            assert!(
                retry.budget() <= deadline.saturating_duration_since(now),
                "after {spent} ms the retry carries {:?}",
                retry.budget()
            );
            assert!(retry.budget() < first.budget());
        }
        // Rounded down: 2.9995 s left travels as 2999 ms.
        let now = start + Duration::from_micros(500);
        assert_eq!(
            Deadline::left_until(deadline, now).budget(),
            Duration::from_millis(2999)
        );
        // Nothing left: a zero budget, refused as soon as it is checked after receipt.
        let mut late = Deadline::left_until(deadline, deadline + Duration::from_secs(1));
        assert_eq!(late.budget(), Duration::ZERO);
        let received = Instant::now();
        late.arm(received);
        assert!(late.check(received + Duration::from_millis(1)).is_err());
    }

    #[test]
    fn an_absurd_budget_from_the_wire_is_bounded_and_arms_without_overflow() {
        let Wire(decoded) = Wire::<Deadline>::from_bytes(Wire::ok(u64::MAX).into_bytes());
        let mut deadline = decoded.expect("a u64 is a budget");
        assert_eq!(deadline.budget(), Deadline::MAX_BUDGET);
        let now = Instant::now();
        deadline.arm(now);
        assert!(deadline.check(now + Duration::from_secs(86_400)).is_ok());
    }

    #[test]
    fn registered_names_carry_the_node_name() {
        assert_eq!(node_of(&registry_name("n1")), Some("n1"));
        assert_eq!(node_of(&database_name("db-node")), Some("db-node"));
        assert_eq!(node_of(&heartbeat_name("n2")), Some("n2"));
        assert_eq!(node_of("unrelated"), None);
    }

    #[test]
    fn peers_of_another_protocol_version_are_refused() {
        let mut peer = NodeInfo {
            name: "old".into(),
            protocol_version: PROTOCOL_VERSION,
            cluster_addr: "a:1".into(),
            http_addr: "a:2".into(),
            hosts_db: false,
            incarnation: 1,
            sqlite: SqliteRole::None,
            database: None,
        };
        assert!(check_peer(&peer).is_ok());
        peer.protocol_version += 1;
        assert!(check_peer(&peer).is_err());
    }
}
