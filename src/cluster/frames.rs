//! The authenticated part of a cluster session, judged frame by frame: what binds every
//! message a peer sends to the node name it authenticated as.
//!
//! After the cookie handshake ([`super::handshake`]) ractor_cluster trusts everything a peer
//! says: a `Spawn` or `PgJoin` may announce actors under any name and as many as fit in a
//! frame, and a call may name any node as the holder of a shard lease. Yet every identity
//! decision of this crate maps actors to nodes by their registered name (`<group>/<node>`:
//! Membership's `Hello` check, the Database actor's lookup, the Heartbeat beside a Registry)
//! and the lease table by the holder a call names. So [`FrameCheck`] sits in the read side of
//! every session ([`super::gate`]'s `Tap`), follows the frames the peer sends, and holds each
//! back until it is whole and judged. It closes the session when a frame
//!
//! * announces a named actor (`Spawn`, `PgJoin`) whose node is not the session's authenticated
//!   node name: with TLS that name is the one its certificate carries, so a certificate is the
//!   node's identity for every actor, group join, `Hello` answer (Membership checks the answer
//!   against the Registry's name) and lease operation;
//! * would make the session hold more than [`MAX_REMOTE_ACTORS`] remote actors or
//!   [`MAX_GROUP_MEMBERSHIPS`] group memberships (each remote actor costs about 10 KB here, and
//!   ractor_cluster sets no limit), or is a control frame over [`CONTROL_FRAME_BYTES`];
//! * calls a lease operation of the Database actor for another node than the session's
//!   ([`lease_caller`]): a node registers, renews, takes over, is granted, releases and clears
//!   only for itself.
//!
//! Transitive discovery (`NodeSessions`, a peer's list of its own sessions) is not passed on:
//! ractor_cluster would dial those addresses itself, past this check. The frame is dropped and
//! its well-formed `host:port` addresses are handed to Membership, which dials them through the
//! gate like any other.
//!
//! Cost per frame: the length header, the protobuf envelope (a few varints; a call's argument
//! bytes are skipped, not copied) and, for the lease variants only, the argument. Control
//! frames (rare: session start, group changes, pings) are decoded whole.
//!
//! No I/O: the gate feeds bytes and forwards what comes out.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::protocol::{NodeInfo, OwnRowRequest, TakeoverRequest, node_of};
use crate::codec::{MAX_FRAME_BYTES, decode};
use crate::config::is_valid_node_name;
use crate::error::Result;
use crate::storage::{Holder, ShardId};

/// Most remote actors one session may announce (honest nodes announce three).
pub const MAX_REMOTE_ACTORS: usize = 4096;

/// Most (group, actor) memberships one session may hold (honest nodes hold three).
pub const MAX_GROUP_MEMBERSHIPS: usize = 4096;

/// Longest control frame, bytes: room for [`MAX_REMOTE_ACTORS`] actors with short names.
pub const CONTROL_FRAME_BYTES: u64 = 256 * 1024;

/// Longest actor, group or scope name in a control frame, bytes.
pub const MAX_CONTROL_NAME: usize = 256;

/// Most addresses taken from one `NodeSessions` frame.
pub const MAX_DISCOVERED: usize = 64;

/// Why a session was closed. The label is the metric's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A frame over the limit of its kind.
    FrameTooLong {
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// An actor announced under another node's name (or a malformed one).
    ForeignActor {
        /// The name announced.
        name: String,
    },
    /// Over [`MAX_REMOTE_ACTORS`] or [`MAX_GROUP_MEMBERSHIPS`].
    TooMany(&'static str),
    /// A lease operation for another node than the session's.
    LeaseForOther {
        /// The Database message variant.
        variant: String,
        /// The node it names.
        node: String,
    },
    /// A control frame, or the argument of a checked call, that does not decode.
    Undecodable(String),
}

/// The `reason` label values of `customer_cluster_session_refused_total`.
pub const VIOLATION_REASONS: [&str; 5] = [
    "frame_too_long",
    "foreign_actor",
    "too_many",
    "lease_for_other",
    "undecodable",
];

impl Violation {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Violation::FrameTooLong { .. } => "frame_too_long",
            Violation::ForeignActor { .. } => "foreign_actor",
            Violation::TooMany(_) => "too_many",
            Violation::LeaseForOther { .. } => "lease_for_other",
            Violation::Undecodable(_) => "undecodable",
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::FrameTooLong { len, limit } => {
                write!(f, "a frame of {len} bytes (at most {limit})")
            }
            Violation::ForeignActor { name } => {
                write!(f, "it announced the actor {name:?}, not one of its own")
            }
            Violation::TooMany(what) => write!(f, "it announced too many {what}"),
            Violation::LeaseForOther { variant, node } => {
                write!(f, "a lease {variant} for node {node:?}, not for itself")
            }
            Violation::Undecodable(why) => write!(f, "undecodable: {why}"),
        }
    }
}

/// Follows the frames a session receives after authentication (see the module doc).
#[derive(Debug)]
pub struct FrameCheck {
    node: String,
    buf: Vec<u8>,
    start: usize,
    actors: HashSet<u64>,
    memberships: HashMap<(String, String), HashSet<u64>>,
    membership_count: usize,
    discovered: Vec<String>,
}

impl FrameCheck {
    /// A check for a session authenticated as `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            buf: Vec::new(),
            start: 0,
            actors: HashSet::new(),
            memberships: HashMap::new(),
            membership_count: 0,
            discovered: Vec::new(),
        }
    }

    /// The node name the session authenticated as.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Addresses from dropped `NodeSessions` frames since the last call.
    pub fn take_discovered(&mut self) -> Vec<String> {
        std::mem::take(&mut self.discovered)
    }

    /// Takes received bytes; appends every complete frame that passed to `out` (a dropped
    /// frame appends nothing). Bytes of an incomplete frame are kept for the next call.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), Violation> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let pending = &self.buf[self.start..];
            let Some(header) = pending.first_chunk::<8>() else {
                break;
            };
            let len = u64::from_be_bytes(*header);
            if len > MAX_FRAME_BYTES {
                return Err(Violation::FrameTooLong {
                    len,
                    limit: MAX_FRAME_BYTES,
                });
            }
            // The envelope's first byte says the kind: field 3 (control), length-delimited.
            if pending.get(8) == Some(&CONTROL_TAG) && len > CONTROL_FRAME_BYTES {
                return Err(Violation::FrameTooLong {
                    len,
                    limit: CONTROL_FRAME_BYTES,
                });
            }
            let end = 8 + len as usize;
            if pending.len() < end {
                break;
            }
            let frame = &self.buf[self.start..self.start + end];
            let keep = judge(
                &self.node,
                &frame[8..],
                &mut Tally {
                    actors: &mut self.actors,
                    memberships: &mut self.memberships,
                    membership_count: &mut self.membership_count,
                    discovered: &mut self.discovered,
                },
            )?;
            if keep {
                out.extend_from_slice(frame);
            }
            self.start += end;
        }
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

/// The first byte of a `NetworkMessage` carrying a control message (field 3, wire type 2).
const CONTROL_TAG: u8 = 3 << 3 | 2;

/// What a session has announced so far.
struct Tally<'a> {
    actors: &'a mut HashSet<u64>,
    memberships: &'a mut HashMap<(String, String), HashSet<u64>>,
    membership_count: &'a mut usize,
    discovered: &'a mut Vec<String>,
}

/// Judges one frame's payload: `Ok(true)` to pass it on, `Ok(false)` to drop it.
fn judge(
    node: &str,
    payload: &[u8],
    tally: &mut Tally<'_>,
) -> std::result::Result<bool, Violation> {
    match envelope(payload) {
        Some(Envelope::Control(control)) => judge_control(node, control, tally),
        Some(Envelope::Call { variant, what }) => match lease_caller(variant, what) {
            Some(Ok(caller)) if caller != node => Err(Violation::LeaseForOther {
                variant: variant.to_owned(),
                node: caller,
            }),
            Some(Err(())) => Err(Violation::Undecodable(format!(
                "the argument of a {variant} call"
            ))),
            _ => Ok(true),
        },
        // Casts, replies, anything else: the transport's concern (undecodable frames end the
        // session there).
        None => Ok(true),
    }
}

fn judge_control(
    node: &str,
    bytes: &[u8],
    tally: &mut Tally<'_>,
) -> std::result::Result<bool, Violation> {
    use wire::Ctl;
    let msg =
        wire::ControlMessage::decode(bytes).map_err(|e| Violation::Undecodable(e.to_string()))?;
    match msg.msg {
        Some(Ctl::Spawn(spawn)) => {
            for actor in &spawn.actors {
                own_actor(node, actor)?;
                tally.actors.insert(actor.pid);
            }
            if tally.actors.len() > MAX_REMOTE_ACTORS {
                return Err(Violation::TooMany("remote actors"));
            }
        }
        Some(Ctl::PgJoin(join)) => {
            short(&join.group)?;
            short(&join.scope)?;
            for actor in &join.actors {
                own_actor(node, actor)?;
                tally.actors.insert(actor.pid);
            }
            if tally.actors.len() > MAX_REMOTE_ACTORS {
                return Err(Violation::TooMany("remote actors"));
            }
            let members = tally
                .memberships
                .entry((join.scope, join.group))
                .or_default();
            for actor in &join.actors {
                if members.insert(actor.pid) {
                    *tally.membership_count += 1;
                }
            }
            if *tally.membership_count > MAX_GROUP_MEMBERSHIPS {
                return Err(Violation::TooMany("group memberships"));
            }
        }
        Some(Ctl::PgLeave(leave)) => {
            if let Some(members) = tally.memberships.get_mut(&(leave.scope, leave.group)) {
                for actor in &leave.actors {
                    if members.remove(&actor.pid) {
                        *tally.membership_count -= 1;
                    }
                }
            }
        }
        Some(Ctl::Terminate(t)) => {
            for pid in &t.ids {
                tally.actors.remove(pid);
                for members in tally.memberships.values_mut() {
                    if members.remove(pid) {
                        *tally.membership_count -= 1;
                    }
                }
            }
            tally.memberships.retain(|_, m| !m.is_empty());
        }
        Some(Ctl::NodeSessions(sessions)) => {
            let addrs = sessions
                .sessions
                .iter()
                .filter(|s| is_valid_node_name(super::mesh::node_of_server_name(&s.name)))
                .map(|s| s.connection_string.clone())
                .filter(|a| is_host_port(a))
                .take(MAX_DISCOVERED);
            tally.discovered.extend(addrs);
            tally.discovered.truncate(MAX_DISCOVERED);
            return Ok(false);
        }
        Some(Ctl::Other(_)) | None => {}
    }
    Ok(true)
}

fn short(name: &str) -> std::result::Result<(), Violation> {
    if name.len() > MAX_CONTROL_NAME {
        return Err(Violation::ForeignActor {
            name: name.chars().take(64).collect(),
        });
    }
    Ok(())
}

/// An announced actor is the session's own: unnamed, or named `<group>/<node>`.
fn own_actor(node: &str, actor: &wire::Actor) -> std::result::Result<(), Violation> {
    match &actor.name {
        None => Ok(()),
        Some(name) if node_of(name) == Some(node) && name.len() <= MAX_CONTROL_NAME => Ok(()),
        Some(name) => Err(Violation::ForeignActor {
            name: name.chars().take(MAX_CONTROL_NAME).collect(),
        }),
    }
}

/// True for `host:port` with a well-formed port and a host of letters, digits, `.`, `-`,
/// `_` or a bracketed IPv6 literal: what a peer may ask this node to dial.
pub fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// The node a call speaks for, if `variant` is a Database lease operation or the Registry's
/// `Hello` (no other actor has variants of these names): `Some(Err(()))` when its argument is
/// not one well-formed value, which no honest node sends. The argument is framed as
/// ractor_cluster's derive packs it: a big-endian `u64` length, then the [`Wire`] bytes.
///
/// [`Wire`]: crate::codec::Wire
pub fn lease_caller(variant: &str, what: &[u8]) -> Option<std::result::Result<String, ()>> {
    fn arg<T: serde::de::DeserializeOwned>(what: &[u8]) -> std::result::Result<T, ()> {
        let (len, rest) = what.split_first_chunk::<8>().ok_or(())?;
        if u64::from_be_bytes(*len) != rest.len() as u64 {
            return Err(());
        }
        decode::<Result<T>>(rest).map_err(|_| ())?.map_err(|_| ())
    }
    Some(match variant {
        "Register" | "ClearIncarnation" => arg::<(String, u64)>(what).map(|a| a.0),
        "Renew" => arg::<(Holder, u64, u64)>(what).map(|a| a.0.node),
        "Takeover" => arg::<TakeoverRequest>(what).map(|a| a.contender.node),
        "TakeoverOwnRow" => arg::<OwnRowRequest>(what).map(|a| a.observed.node),
        "Grant" => arg::<(Holder, Vec<ShardId>)>(what).map(|a| a.0.node),
        "Release" => arg::<(String, ShardId, u64)>(what).map(|a| a.0),
        // The Registry's greeting: what a peer says about itself (its database role too).
        "Hello" => arg::<NodeInfo>(what).map(|a| a.name),
        _ => return None,
    })
}

/// What the envelope of a frame says, as far as the check cares.
enum Envelope<'a> {
    Control(&'a [u8]),
    Call { variant: &'a str, what: &'a [u8] },
}

/// Reads the envelope without copying: `NetworkMessage.control`, or
/// `NetworkMessage.node.call` with its variant and argument bytes.
fn envelope(payload: &[u8]) -> Option<Envelope<'_>> {
    let mut control = None;
    let mut node = None;
    for (field, value) in Fields(payload) {
        match (field, value) {
            (3, Value::Bytes(b)) => control = Some(b),
            (2, Value::Bytes(b)) => node = Some(b),
            _ => {}
        }
    }
    if let Some(c) = control {
        return Some(Envelope::Control(c));
    }
    let call = Fields(node?).find_map(|f| match f {
        (2, Value::Bytes(b)) => Some(b),
        _ => None,
    })?;
    let (mut variant, mut what) = (None, &[][..]);
    for f in Fields(call) {
        match f {
            (5, Value::Bytes(b)) => variant = std::str::from_utf8(b).ok(),
            (2, Value::Bytes(b)) => what = b,
            _ => {}
        }
    }
    Some(Envelope::Call {
        variant: variant?,
        what,
    })
}

/// One protobuf field value.
enum Value<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message, in order; stops at the first malformed one.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let key = varint(&mut self.0)?;
        let value = match key & 7 {
            0 => varint(&mut self.0).map(|_| Value::Scalar),
            1 => self.skip(8),
            5 => self.skip(4),
            2 => {
                let len = usize::try_from(varint(&mut self.0)?).ok()?;
                if len > self.0.len() {
                    self.0 = &[];
                    return None;
                }
                let (b, rest) = self.0.split_at(len);
                self.0 = rest;
                Some(Value::Bytes(b))
            }
            _ => None,
        };
        if value.is_none() {
            self.0 = &[];
        }
        Some((key >> 3, value?))
    }
}

impl Fields<'_> {
    fn skip(&mut self, n: usize) -> Option<Value<'static>> {
        self.0 = self.0.get(n..)?;
        Some(Value::Scalar)
    }
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(v);
        }
    }
    None
}

/// The slice of ractor_cluster's `control.proto` the check decodes.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ControlMessage {
        #[prost(oneof = "Ctl", tags = "1, 2, 5, 6, 8, 3")]
        pub msg: Option<Ctl>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Ctl {
        #[prost(message, tag = "1")]
        Spawn(Spawn),
        #[prost(message, tag = "2")]
        Terminate(Terminate),
        #[prost(message, tag = "5")]
        PgJoin(Group),
        #[prost(message, tag = "6")]
        PgLeave(Group),
        #[prost(message, tag = "8")]
        NodeSessions(NodeSessions),
        /// Ping; the other kinds (pong, enumerate, ready) decode as unknown fields.
        #[prost(bytes, tag = "3")]
        Other(Vec<u8>),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Actor {
        #[prost(uint64, tag = "1")]
        pub pid: u64,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Spawn {
        #[prost(message, repeated, tag = "1")]
        pub actors: Vec<Actor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Terminate {
        #[prost(uint64, repeated, tag = "1")]
        pub ids: Vec<u64>,
    }

    /// `PgJoin` and `PgLeave`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Group {
        #[prost(string, tag = "1")]
        pub group: String,
        #[prost(message, repeated, tag = "2")]
        pub actors: Vec<Actor>,
        #[prost(string, tag = "3")]
        pub scope: String,
    }

    /// `auth.NameMessage` (field 2, the capability flags, is not read).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NameMessage {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "3")]
        pub connection_string: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeSessions {
        #[prost(message, repeated, tag = "1")]
        pub sessions: Vec<NameMessage>,
    }
}

#[cfg(test)]
mod tests {
    use super::wire::{
        Actor, ControlMessage, Ctl, Group, NameMessage, NodeSessions, Spawn, Terminate,
    };
    use super::*;
    use crate::codec::encode;

    /// Test-only slice of `meta.proto` / `node.proto`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NetworkMessage {
        #[prost(bytes, optional, tag = "2")]
        node: Option<Vec<u8>>,
        #[prost(message, optional, tag = "3")]
        control: Option<ControlMessage>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct NodeMessage {
        #[prost(message, optional, tag = "2")]
        call: Option<Call>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Call {
        #[prost(uint64, tag = "1")]
        to: u64,
        #[prost(bytes, tag = "2")]
        what: Vec<u8>,
        #[prost(uint64, tag = "3")]
        tag: u64,
        #[prost(uint64, optional, tag = "4")]
        timeout_ms: Option<u64>,
        #[prost(string, tag = "5")]
        variant: String,
    }

    fn framed(msg: NetworkMessage) -> Vec<u8> {
        let payload = msg.encode_to_vec();
        let mut out = (payload.len() as u64).to_be_bytes().to_vec();
        out.extend(payload);
        out
    }

    fn control(msg: Ctl) -> Vec<u8> {
        framed(NetworkMessage {
            node: None,
            control: Some(ControlMessage { msg: Some(msg) }),
        })
    }

    fn actor(pid: u64, name: Option<&str>) -> Actor {
        Actor {
            pid,
            name: name.map(str::to_owned),
        }
    }

    /// A framed call as ractor_cluster sends it: the argument packed by the message derive.
    fn call<T: serde::Serialize>(variant: &str, arg: T) -> Vec<u8> {
        let bytes = encode(&Ok::<T, crate::error::Error>(arg)).unwrap();
        let mut what = (bytes.len() as u64).to_be_bytes().to_vec();
        what.extend(bytes);
        let node = NodeMessage {
            call: Some(Call {
                to: 3,
                what,
                tag: 1,
                timeout_ms: Some(5000),
                variant: variant.into(),
            }),
        };
        framed(NetworkMessage {
            node: Some(node.encode_to_vec()),
            control: None,
        })
    }

    fn holder(node: &str) -> Holder {
        Holder {
            node: node.into(),
            incarnation: 7,
            epoch: 2,
        }
    }

    /// Feeds `bytes` one byte at a time (frames split across reads are still frames).
    fn feed_slowly(
        check: &mut FrameCheck,
        bytes: &[u8],
    ) -> std::result::Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        for b in bytes {
            check.feed(&[*b], &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn a_session_announcing_its_own_actors_passes_unchanged_even_split_byte_by_byte() {
        let mut check = FrameCheck::new("n2");
        let mut bytes = control(Ctl::Spawn(Spawn {
            actors: vec![
                actor(1, Some("customer-registry.v5/n2")),
                actor(2, Some("customer-db.v5/n2")),
                actor(3, None),
            ],
        }));
        bytes.extend(control(Ctl::PgJoin(Group {
            group: "customer-registry.v5".into(),
            actors: vec![actor(1, Some("customer-registry.v5/n2"))],
            scope: "default".into(),
        })));
        bytes.extend(call("Ping", ()));
        assert_eq!(feed_slowly(&mut check, &bytes), Ok(bytes.clone()));
        let mut out = Vec::new();
        check.feed(&bytes, &mut out).unwrap();
        assert_eq!(out, bytes, "in one piece too");
    }

    #[test]
    fn an_actor_or_group_member_named_for_another_node_closes_the_session() {
        for frame in [
            control(Ctl::Spawn(Spawn {
                actors: vec![actor(1, Some("customer-registry.v5/t2"))],
            })),
            control(Ctl::PgJoin(Group {
                group: "customer-heartbeat.v5".into(),
                actors: vec![actor(1, Some("customer-heartbeat.v5/t2"))],
                scope: "default".into(),
            })),
            control(Ctl::Spawn(Spawn {
                actors: vec![actor(1, Some("customer-registry.v5/t9/x"))],
            })),
            control(Ctl::Spawn(Spawn {
                actors: vec![actor(1, Some("no-node-in-this-name"))],
            })),
        ] {
            let mut out = Vec::new();
            let verdict = FrameCheck::new("t9").feed(&frame, &mut out);
            assert!(
                matches!(verdict, Err(Violation::ForeignActor { .. })),
                "{verdict:?}"
            );
            assert!(out.is_empty(), "nothing of a refused frame is passed on");
        }
    }

    #[test]
    fn more_remote_actors_than_the_bound_close_the_session_and_terminated_ones_do_not_count() {
        let spawn = |from: u64, n: u64| {
            control(Ctl::Spawn(Spawn {
                actors: (from..from + n).map(|p| actor(p, None)).collect(),
            }))
        };
        let mut check = FrameCheck::new("n2");
        let mut out = Vec::new();
        let bound = MAX_REMOTE_ACTORS as u64;
        check.feed(&spawn(0, bound), &mut out).unwrap();
        check.feed(&spawn(0, bound), &mut out).unwrap();
        let terminate = control(Ctl::Terminate(Terminate {
            ids: (0..10).collect(),
        }));
        check.feed(&terminate, &mut out).unwrap();
        check.feed(&spawn(bound, 10), &mut out).unwrap();
        assert_eq!(
            check.feed(&spawn(bound + 10, 1), &mut out),
            Err(Violation::TooMany("remote actors"))
        );
    }

    #[test]
    fn group_memberships_are_bounded_per_session() {
        let mut check = FrameCheck::new("n2");
        let mut out = Vec::new();
        let join = |g: usize| {
            control(Ctl::PgJoin(Group {
                group: format!("g{g}"),
                actors: (0..16).map(|p| actor(p, None)).collect(),
                scope: "default".into(),
            }))
        };
        for g in 0..MAX_GROUP_MEMBERSHIPS / 16 {
            check.feed(&join(g), &mut out).unwrap();
        }
        check.feed(&join(0), &mut out).unwrap(); // the same again: no more memberships
        assert_eq!(
            check.feed(&join(MAX_GROUP_MEMBERSHIPS), &mut out),
            Err(Violation::TooMany("group memberships"))
        );
    }

    #[test]
    fn a_long_control_frame_is_refused_from_its_header() {
        let mut check = FrameCheck::new("n2");
        let mut head = (CONTROL_FRAME_BYTES + 1).to_be_bytes().to_vec();
        head.push(CONTROL_TAG);
        assert!(matches!(
            check.feed(&head, &mut Vec::new()),
            Err(Violation::FrameTooLong { .. })
        ));
        let mut check = FrameCheck::new("n2");
        let head = (MAX_FRAME_BYTES + 1).to_be_bytes();
        assert!(matches!(
            check.feed(&head, &mut Vec::new()),
            Err(Violation::FrameTooLong { .. })
        ));
        // A node message may be long: only the header has arrived, nothing is refused yet.
        let mut check = FrameCheck::new("n2");
        let mut head = (CONTROL_FRAME_BYTES + 1).to_be_bytes().to_vec();
        head.push(2 << 3 | 2);
        assert_eq!(check.feed(&head, &mut Vec::new()), Ok(()));
    }

    #[tokio::test]
    async fn the_argument_is_read_as_the_message_derive_packs_it() {
        use ractor::Message;
        let (tx, _rx) = ractor::concurrency::oneshot();
        let msg = crate::cluster::protocol::DatabaseMsg::Release(
            crate::codec::Wire::ok(("n2".to_string(), 7u16, 9u64)),
            tx.into(),
        );
        let Ok(ractor::message::SerializedMessage::Call { variant, args, .. }) = msg.serialize()
        else {
            panic!("not a call")
        };
        assert_eq!(variant, "Release");
        assert_eq!(lease_caller(&variant, &args), Some(Ok("n2".to_string())));
        assert_eq!(lease_caller(&variant, &args[8..]), Some(Err(())));
        assert_eq!(lease_caller("GetCustomer", &args), None);
    }

    #[test]
    fn lease_operations_pass_only_for_the_sessions_own_node() {
        let own = [
            call("Register", ("n3".to_string(), 7u64)),
            call("ClearIncarnation", ("n3".to_string(), 7u64)),
            call("Renew", (holder("n3"), 4u64, 2000u64)),
            call("Grant", (holder("n3"), vec![1u16, 2])),
            call("Release", ("n3".to_string(), 1u16, 9u64)),
            call(
                "Takeover",
                TakeoverRequest {
                    contender: holder("n3"),
                    victim: crate::storage::Observed {
                        node: "n2".into(),
                        incarnation: 1,
                        epoch: 1,
                        seq: 4,
                    },
                    shards: vec![1],
                },
            ),
        ];
        for frame in &own {
            let mut out = Vec::new();
            FrameCheck::new("n3").feed(frame, &mut out).unwrap();
            assert_eq!(&out, frame);
        }
        for frame in [
            call("Grant", (holder("n2"), vec![1u16, 2])),
            call("Release", ("n2".to_string(), 1u16, 9u64)),
            call("Register", ("n2".to_string(), 7u64)),
            call("Renew", (holder("n2"), 4u64, 2000u64)),
            call("ClearIncarnation", ("n2".to_string(), 7u64)),
        ] {
            let verdict = FrameCheck::new("n3").feed(&frame, &mut Vec::new());
            assert!(
                matches!(&verdict, Err(Violation::LeaseForOther { node, .. }) if node == "n2"),
                "{verdict:?}"
            );
        }
        let mut hello = crate::cluster::admission::tests_support::info("n2");
        let frame = call("Hello", hello.clone());
        assert!(matches!(
            FrameCheck::new("n3").feed(&frame, &mut Vec::new()),
            Err(Violation::LeaseForOther { .. })
        ));
        hello.name = "n3".into();
        let frame = call("Hello", hello);
        FrameCheck::new("n3").feed(&frame, &mut Vec::new()).unwrap();
        // Other calls are not looked into.
        let other = call("GetCustomer", 5u64);
        let mut out = Vec::new();
        FrameCheck::new("n3").feed(&other, &mut out).unwrap();
        assert_eq!(out, other);
    }

    #[test]
    fn a_peers_list_of_sessions_is_not_passed_on_and_only_well_formed_addresses_are_kept() {
        let mut check = FrameCheck::new("n2");
        let list = control(Ctl::NodeSessions(NodeSessions {
            sessions: vec![
                NameMessage {
                    name: "n3#5@10.0.0.3".into(),
                    connection_string: "10.0.0.3:4701".into(),
                },
                NameMessage {
                    name: "zz\nERROR forged#1@h".into(),
                    connection_string: "10.0.0.9:4701".into(),
                },
                NameMessage {
                    name: "n4#1@h".into(),
                    connection_string: "10.0.0.4:4701\nERROR forged".into(),
                },
            ],
        }));
        let mut out = Vec::new();
        check.feed(&list, &mut out).unwrap();
        assert!(out.is_empty(), "ractor_cluster never dials past the gate");
        assert_eq!(check.take_discovered(), vec!["10.0.0.3:4701".to_string()]);
        assert!(check.take_discovered().is_empty());
    }

    #[test]
    fn only_host_port_addresses_are_dialable() {
        for ok in [
            "127.0.0.1:4701",
            "n1.example.com:1",
            "[::1]:4701",
            "node_2:65535",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            ":4701",
            "a b:1",
            "h\n:1",
            "[zz]:1",
            "h:1\n",
        ] {
            assert!(!is_host_port(bad), "{bad:?}");
        }
    }
}
