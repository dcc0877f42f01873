//! The shard table as this node sees it, for `GET /v1/cluster/shards` and the dashboard: for
//! each of the 1024 shards, the member placement gives it to and the lease holder the last
//! lease table read named (this node's own shards with their live lease state).
//!
//! The lease table is read fresh for each request (the LeaseKeeper reads it only when this
//! node's own shards change, so the hints may be old); when the database does not answer in
//! time, the last table read is shown. Other nodes are not asked.

use crate::clock::holder_now;
use crate::cluster::lease::ShardStatus;
use crate::cluster::placement::{SHARDS, ShardId};
use crate::events::{ClusterEvent, EventBus};

use super::gateway::Gateway;

/// Every shard's owner and lease, as this node sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// The node that answered.
    pub node: String,
    /// Placement epoch of this node's view.
    pub epoch: u64,
    /// One row per shard, shard 0 first.
    pub shards: Vec<ShardRow>,
}

/// One shard in a [`ShardMap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRow {
    /// The shard number (0..1024).
    pub shard: ShardId,
    /// The member placement gives it to.
    pub owner: Option<String>,
    /// The node holding its lease in the last lease table read; `None` when free.
    pub holder: Option<String>,
    /// The fencing token of that lease (0 when never granted).
    pub token: u64,
    /// `held`, `lapsed`, `lost` or `releasing` for this node's own shards, `held` for
    /// another holder's, `free` when nobody holds it, `unknown` before the first read.
    pub state: &'static str,
}

impl Gateway {
    /// The shard table as this node sees it: the lease table read now (it also refreshes the
    /// hints redirects use), or the last one read when the database does not answer.
    pub async fn shard_map(&self) -> ShardMap {
        let ctx = self.context();
        let read = tokio::time::timeout(ctx.request_timeout, ctx.db.lease_table()).await;
        match read {
            Ok(Ok(rows)) => ctx.leases.set_hints(&rows),
            Ok(Err(e)) => tracing::debug!(error = %e, "lease table read failed; showing hints"),
            Err(_) => tracing::debug!("lease table read timed out; showing hints"),
        }
        let view = ctx.view();
        let now = holder_now();
        let shards = (0..SHARDS)
            .map(|shard| {
                let own = ctx.leases.status(shard, now);
                let hint = ctx.leases.hint(shard);
                let read = hint.is_some();
                let (holder, token) = match (own, hint) {
                    (Some(status), _) => (Some(ctx.name.clone()), token_of(status)),
                    (None, Some((holder, token))) => (holder, token),
                    (None, None) => (None, 0),
                };
                ShardRow {
                    shard,
                    owner: view.ring.shard_owner(shard).map(|m| m.name.clone()),
                    state: state_of(own, holder.is_some(), read),
                    holder,
                    token,
                }
            })
            .collect();
        ShardMap {
            node: ctx.name.clone(),
            epoch: view.ring.epoch,
            shards,
        }
    }

    /// This node's event bus.
    pub fn events(&self) -> &EventBus {
        &self.context().events
    }

    /// The recent events this node keeps, oldest first.
    pub fn recent_events(&self) -> Vec<ClusterEvent> {
        self.events().subscribe().0
    }
}

fn token_of(status: ShardStatus) -> u64 {
    match status {
        ShardStatus::Held { token, .. }
        | ShardStatus::Lapsed { token, .. }
        | ShardStatus::Lost { token }
        | ShardStatus::Releasing { token } => token,
    }
}

/// The `state` column: this node's own lease state, else what the lease table said.
fn state_of(own: Option<ShardStatus>, held_elsewhere: bool, read: bool) -> &'static str {
    match own {
        Some(ShardStatus::Held { .. }) => "held",
        Some(ShardStatus::Lapsed { .. }) => "lapsed",
        Some(ShardStatus::Lost { .. }) => "lost",
        Some(ShardStatus::Releasing { .. }) => "releasing",
        None if held_elsewhere => "held",
        None if read => "free",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_lease_state_wins_over_the_table_read() {
        let lost = Some(ShardStatus::Lost { token: 4 });
        assert_eq!(state_of(lost, true, true), "lost");
        assert_eq!(token_of(ShardStatus::Releasing { token: 9 }), 9);
    }

    #[test]
    fn without_an_own_lease_the_table_read_decides() {
        assert_eq!(state_of(None, true, true), "held");
        assert_eq!(state_of(None, false, true), "free");
        assert_eq!(state_of(None, false, false), "unknown");
    }
}
