//! Lease rows and the outcome of every lease operation (DESIGN §6 L1, L2, L5, L6).
//!
//! Two tables decide who may write a shard:
//!
//! ```text
//!  node_leases(node PK, incarnation, epoch, seq,         one row per node name: its liveness record
//!              ttl_ms)                                   and the TTL its renewer runs with
//!  shard_leases(shard PK, holder, holder_incarnation,    one row per shard (0..1024): who holds it,
//!               holder_epoch, token)                     and the fencing token writes must carry
//! ```
//!
//! * A process **registers** under its node name with a random `incarnation`; the row's
//!   `epoch` counts how often the name changed hands or was revoked.
//! * It **renews** by writing a fresh `seq` into its own row, matched on (incarnation, epoch).
//!   Contenders watch the node table (every renew returns it); a row whose
//!   (incarnation, epoch, seq) stayed unchanged for TTL on the contender's clock is dead.
//! * A contender **takes over** a dead node: bumps its epoch (only if the row is still exactly
//!   what it watched) and grants itself shards in the same transaction. A shard is grantable
//!   when it is released, never held, or held under an epoch older than its holder's current
//!   one — so shards of a node revoked by someone else are never orphaned.
//! * Every grant and every release bumps the shard's `token`; a renew never touches shards.
//!   Writes carry the token they were granted and are fenced by it (see [`super::Fence`]).
//!
//! The timing rules (when a contender may act, how long a holder may serve) live with the
//! holder, not here: storage compares values, never times. This module holds the row types and
//! outcomes shared by every backend; the SQL is in each backend.

use serde::{Deserialize, Serialize};

/// Number of shard rows: one per shard of the id space (must equal placement's shard count,
/// a protocol constant; the migration creates exactly these rows).
pub const SHARD_ROWS: u16 = 1024;

/// A shard number, `0..SHARD_ROWS`.
pub type ShardId = u16;

/// A node process as it names itself in lease operations: who it is and under which epoch it
/// currently believes it is registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Stable node name (placement hashes it).
    pub node: String,
    /// Random per process start: tells a restarted process from its predecessor.
    pub incarnation: u64,
    /// The epoch this process registered (or re-registered) at.
    pub epoch: u64,
}

/// A node row exactly as a contender observed it unchanged for TTL: a takeover applies only if
/// the row still holds these values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The node being revoked.
    pub node: String,
    /// Its incarnation as observed.
    pub incarnation: u64,
    /// Its epoch as observed.
    pub epoch: u64,
    /// Its last renew number as observed.
    pub seq: u64,
}

/// One row of `node_leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    /// Node name.
    pub node: String,
    /// The live process's incarnation; `None` after a graceful stop cleared it.
    pub incarnation: Option<u64>,
    /// Bumped on every takeover and re-registration; shards held under an older epoch are
    /// grantable.
    pub epoch: u64,
    /// The last renew number written by this incarnation (0 right after registering).
    pub seq: u64,
    /// The lease TTL (ms) the process renewing this row runs with, written by every renew
    /// (L4): a contender waits the longer of its own TTL and this one before it revokes the
    /// row, so a node started with a longer `--lease-ttl-ms` is never taken over while it may
    /// still serve. 0 when no renew has said (a row written by an older release).
    pub ttl_ms: u64,
}

impl NodeLease {
    /// What a contender records to act on this row later.
    pub fn observed(&self) -> Option<Observed> {
        Some(Observed {
            node: self.node.clone(),
            incarnation: self.incarnation?,
            epoch: self.epoch,
            seq: self.seq,
        })
    }
}

/// One row of `shard_leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLease {
    /// The shard.
    pub shard: ShardId,
    /// Node name of the holder; `None` if released or never held.
    pub holder: Option<String>,
    /// The holder's incarnation when granted.
    pub holder_incarnation: Option<u64>,
    /// The holder's epoch when granted; stale once the holder's node row moved past it.
    pub holder_epoch: Option<u64>,
    /// Fencing token: bumped by every grant and release; writes must carry the current one.
    pub token: u64,
}

/// A shard granted, with the token its writes must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardGrant {
    /// The shard.
    pub shard: ShardId,
    /// Its new token.
    pub token: u64,
}

/// Outcome of [`super::Store::register`] (L1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Registration {
    /// The row now names this incarnation at `epoch`: a new name starts at epoch 1; a row
    /// cleared by a graceful stop, or still naming this same incarnation (re-registering after
    /// LOST), moves to the next epoch.
    Registered {
        /// The epoch to renew under.
        epoch: u64,
    },
    /// Another incarnation is in the row and may still be alive: nothing was written. A
    /// restarted process takes the row over only through [`super::Store::takeover_own_row`].
    Occupied(NodeLease),
}

/// Outcome of [`super::Store::renew`] (L2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Renewal {
    /// The row took the new `seq`. Carries the whole node table, committed, for contenders.
    Renewed {
        /// Every node row, ordered by name.
        table: Vec<NodeLease>,
    },
    /// Our incarnation is still in the row but the epoch moved (we were revoked): every shard
    /// of this node is LOST; re-register.
    Lost {
        /// The row as it is now.
        current: NodeLease,
    },
    /// A different incarnation (or none, or no row) is there: this process is a stale
    /// duplicate and must exit.
    Superseded {
        /// The row as it is now, if any.
        current: Option<NodeLease>,
    },
}

/// Outcome of [`super::Store::takeover`] and [`super::Store::takeover_own_row`] (L5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Takeover {
    /// The victim's epoch was bumped and these shards were granted (ascending; a requested
    /// shard that was not grantable is absent).
    Done {
        /// The victim's new epoch (for `takeover_own_row`, this process's epoch).
        victim_epoch: u64,
        /// Granted shards and their new tokens.
        granted: Vec<ShardGrant>,
    },
    /// The victim row is no longer as observed (it renewed, restarted, or was revoked by
    /// someone else): nothing was done. Shards it held under an old epoch are still
    /// grantable with [`super::Store::grant`].
    VictimMoved {
        /// The row as it is now, if any.
        current: Option<NodeLease>,
    },
    /// The contender's own (incarnation, epoch) is not current: nothing was done.
    NotCurrent,
}

/// Outcome of [`super::Store::grant`] (L5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grant {
    /// These shards were granted (ascending; others requested were not grantable).
    Granted(Vec<ShardGrant>),
    /// The contender's own (incarnation, epoch) is not current: nothing was granted.
    NotCurrent,
}

/// Outcome of [`super::Store::release`] (L6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Release {
    /// Released; the shard's token is now `token`.
    Released {
        /// The new token.
        token: u64,
    },
    /// The shard was not at the given token (granted elsewhere since): nothing changed.
    NotHeld(ShardLease),
}

/// The shards of `requested` in the order grants take them: ascending, each once, only real
/// shard numbers. Ascending order is the lock order on backends that lock rows (PostgreSQL), so
/// two contenders can never deadlock on each other's shards.
pub fn grant_order(requested: &[ShardId]) -> Vec<ShardId> {
    let mut shards: Vec<ShardId> = requested
        .iter()
        .copied()
        .filter(|s| *s < SHARD_ROWS)
        .collect();
    shards.sort_unstable();
    shards.dedup();
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_granted_ascending_once_and_only_if_they_exist() {
        assert_eq!(grant_order(&[9, 3, 9, 1024, 0, 3]), vec![0, 3, 9]);
        assert!(grant_order(&[]).is_empty());
    }

    #[test]
    fn a_cleared_row_cannot_be_observed_for_takeover() {
        let row = NodeLease {
            node: "n1".into(),
            incarnation: None,
            epoch: 3,
            seq: 9,
            ttl_ms: 2000,
        };
        assert_eq!(row.observed(), None);
        let live = NodeLease {
            incarnation: Some(7),
            ..row
        };
        assert_eq!(live.observed().map(|o| (o.epoch, o.seq)), Some((3, 9)));
    }
}
