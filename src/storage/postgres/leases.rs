//! PostgreSQL statements for leases (the rules and outcomes are in [`crate::storage::leases`]).
//!
//! Each operation is its own transaction (never part of a write batch), on READ COMMITTED.
//! Unlike SQLite, grants and writes of different nodes run concurrently, so the rows a
//! decision depends on are locked: the contender's own node row `FOR SHARE` while it grants
//! (a concurrent revocation of the contender waits for the grant, then finds the new rows
//! under the old epoch and so grantable), and shard rows `FOR UPDATE` in ascending order
//! before a grant updates them, which is also the order writers take them `FOR SHARE`
//! ([`super::LOCK_SHARDS`]), so the two never deadlock. A grant waits for every write batch
//! holding its shard to commit; that wait is what fences a write that already checked its
//! token (DESIGN §6 F1 ii, §10 case 1).

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::storage::leases::{
    Grant, Holder, NodeLease, Observed, Registration, Release, Renewal, ShardGrant, ShardId,
    ShardLease, Takeover, grant_order,
};

/// L1: registers `incarnation` under `node` unless another incarnation is in the row.
pub(super) async fn register(
    tx: &Transaction<'_>,
    node: &str,
    incarnation: u64,
) -> Result<Registration> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO node_leases AS n (node, incarnation, epoch, seq) VALUES ($1, $2, 1, 0)
             ON CONFLICT (node) DO UPDATE
                SET incarnation = excluded.incarnation, epoch = n.epoch + 1, seq = 0
              WHERE n.incarnation IS NULL OR n.incarnation = excluded.incarnation
             RETURNING epoch",
        )
        .await?;
    let epoch = tx
        .query_opt(&stmt, &[&node, &(incarnation as i64)])
        .await?
        .map(|r| r.get::<_, i64>(0));
    Ok(match epoch {
        Some(epoch) => Registration::Registered {
            epoch: epoch as u64,
        },
        None => Registration::Occupied(node_row(tx, node).await?.ok_or_else(|| {
            Error::Internal(format!("node row {node:?} conflicted but is missing"))
        })?),
    })
}

/// L2: one `UPDATE` of our own row; the node table comes back from the same transaction.
pub(super) async fn renew(
    tx: &Transaction<'_>,
    me: &Holder,
    k: u64,
    ttl_ms: u64,
) -> Result<Renewal> {
    let stmt = tx
        .prepare_cached(
            "UPDATE node_leases SET seq = $1, ttl_ms = $5
              WHERE node = $2 AND incarnation = $3 AND epoch = $4",
        )
        .await?;
    let renewed = tx
        .execute(
            &stmt,
            &[
                &(k as i64),
                &me.node,
                &(me.incarnation as i64),
                &(me.epoch as i64),
                &(ttl_ms as i64),
            ],
        )
        .await?;
    if renewed == 1 {
        return Ok(Renewal::Renewed {
            table: node_table(tx).await?,
        });
    }
    Ok(match node_row(tx, &me.node).await? {
        Some(row) if row.incarnation == Some(me.incarnation) => Renewal::Lost { current: row },
        current => Renewal::Superseded { current },
    })
}

/// L5: revoke the victim exactly as observed, then grant. `None` means "roll back".
pub(super) async fn takeover(
    tx: &Transaction<'_>,
    contender: &Holder,
    victim: &Observed,
    shards: &[ShardId],
) -> Result<Takeover> {
    if !is_current(tx, contender).await? {
        return Ok(Takeover::NotCurrent);
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE node_leases SET epoch = epoch + 1
              WHERE node = $1 AND incarnation = $2 AND epoch = $3 AND seq = $4",
        )
        .await?;
    let revoked = tx
        .execute(
            &stmt,
            &[
                &victim.node,
                &(victim.incarnation as i64),
                &(victim.epoch as i64),
                &(victim.seq as i64),
            ],
        )
        .await?;
    if revoked == 0 {
        return Ok(Takeover::VictimMoved {
            current: node_row(tx, &victim.node).await?,
        });
    }
    Ok(Takeover::Done {
        victim_epoch: victim.epoch + 1,
        granted: grant_rows(tx, contender, shards).await?,
    })
}

/// L5 for a restarted process: its own row, observed unchanged, moves to the new incarnation.
pub(super) async fn takeover_own_row(
    tx: &Transaction<'_>,
    incarnation: u64,
    observed: &Observed,
    shards: &[ShardId],
) -> Result<Takeover> {
    let stmt = tx
        .prepare_cached(
            "UPDATE node_leases SET epoch = epoch + 1, incarnation = $5, seq = 0
              WHERE node = $1 AND incarnation = $2 AND epoch = $3 AND seq = $4",
        )
        .await?;
    let taken = tx
        .execute(
            &stmt,
            &[
                &observed.node,
                &(observed.incarnation as i64),
                &(observed.epoch as i64),
                &(observed.seq as i64),
                &(incarnation as i64),
            ],
        )
        .await?;
    if taken == 0 {
        return Ok(Takeover::VictimMoved {
            current: node_row(tx, &observed.node).await?,
        });
    }
    let me = Holder {
        node: observed.node.clone(),
        incarnation,
        epoch: observed.epoch + 1,
    };
    Ok(Takeover::Done {
        victim_epoch: me.epoch,
        granted: grant_rows(tx, &me, shards).await?,
    })
}

/// L5: grant free or stale shards to a current contender.
pub(super) async fn grant(
    tx: &Transaction<'_>,
    contender: &Holder,
    shards: &[ShardId],
) -> Result<Grant> {
    if !is_current(tx, contender).await? {
        return Ok(Grant::NotCurrent);
    }
    Ok(Grant::Granted(grant_rows(tx, contender, shards).await?))
}

/// L6: `node` releases a shard it still holds at `token`.
pub(super) async fn release(
    tx: &Transaction<'_>,
    node: &str,
    shard: ShardId,
    token: u64,
) -> Result<Release> {
    let stmt = tx
        .prepare_cached(
            "UPDATE shard_leases
                SET holder = NULL, holder_incarnation = NULL, holder_epoch = NULL, token = token + 1
              WHERE shard = $1 AND token = $2 AND holder = $3
          RETURNING token",
        )
        .await?;
    let released = tx
        .query_opt(&stmt, &[&i32::from(shard), &(token as i64), &node])
        .await?;
    Ok(match released {
        Some(row) => Release::Released {
            token: row.get::<_, i64>(0) as u64,
        },
        None => Release::NotHeld(
            shard_row(tx, shard)
                .await?
                .ok_or_else(|| Error::InvalidInput(format!("no shard {shard}")))?,
        ),
    })
}

/// L6, graceful stop: clear our incarnation and move the epoch on.
pub(super) async fn clear_incarnation(
    tx: &Transaction<'_>,
    node: &str,
    incarnation: u64,
) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "UPDATE node_leases SET incarnation = NULL, epoch = epoch + 1
              WHERE node = $1 AND incarnation = $2",
        )
        .await?;
    Ok(tx.execute(&stmt, &[&node, &(incarnation as i64)]).await? == 1)
}

/// Every shard row in shard order.
pub(super) async fn lease_table(client: &deadpool_postgres::Client) -> Result<Vec<ShardLease>> {
    let stmt = client
        .prepare_cached(
            "SELECT shard, holder, holder_incarnation, holder_epoch, token FROM shard_leases ORDER BY shard",
        )
        .await?;
    client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(shard_from_row)
        .collect()
}

/// Every node row ordered by name.
pub(super) async fn node_table(tx: &Transaction<'_>) -> Result<Vec<NodeLease>> {
    let stmt = tx
        .prepare_cached(
            "SELECT node, incarnation, epoch, seq, ttl_ms FROM node_leases ORDER BY node",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[])
        .await?
        .iter()
        .map(node_from_row)
        .collect())
}

async fn shard_row(tx: &Transaction<'_>, shard: ShardId) -> Result<Option<ShardLease>> {
    let stmt = tx
        .prepare_cached(
            "SELECT shard, holder, holder_incarnation, holder_epoch, token FROM shard_leases WHERE shard = $1",
        )
        .await?;
    tx.query_opt(&stmt, &[&i32::from(shard)])
        .await?
        .as_ref()
        .map(shard_from_row)
        .transpose()
}

async fn node_row(tx: &Transaction<'_>, node: &str) -> Result<Option<NodeLease>> {
    let stmt = tx
        .prepare_cached(
            "SELECT node, incarnation, epoch, seq, ttl_ms FROM node_leases WHERE node = $1",
        )
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&node])
        .await?
        .as_ref()
        .map(node_from_row))
}

/// Whether `holder`'s (incarnation, epoch) is what its node row says now; the row stays
/// share-locked until commit so it cannot be revoked between this check and the grant.
async fn is_current(tx: &Transaction<'_>, holder: &Holder) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "SELECT 1 FROM node_leases WHERE node = $1 AND incarnation = $2 AND epoch = $3 FOR SHARE",
        )
        .await?;
    let found = tx
        .query_opt(
            &stmt,
            &[
                &holder.node,
                &(holder.incarnation as i64),
                &(holder.epoch as i64),
            ],
        )
        .await?;
    Ok(found.is_some())
}

/// The L5 grant statement: lock the requested rows in ascending order, then take those that
/// are released, never held, or held under an epoch older than their holder's current one.
pub(super) const GRANT: &str = "UPDATE shard_leases
        SET holder = $1, holder_incarnation = $2, holder_epoch = $3, token = token + 1
      WHERE shard = ANY($4)
        AND (holder IS NULL
             OR holder_epoch < (SELECT epoch FROM node_leases WHERE node = shard_leases.holder))
  RETURNING shard, token";

async fn grant_rows(
    tx: &Transaction<'_>,
    to: &Holder,
    shards: &[ShardId],
) -> Result<Vec<ShardGrant>> {
    let shards: Vec<i32> = grant_order(shards).into_iter().map(i32::from).collect();
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let lock = tx
        .prepare_cached(
            "SELECT shard FROM shard_leases WHERE shard = ANY($1) ORDER BY shard FOR UPDATE",
        )
        .await?;
    tx.query(&lock, &[&shards]).await?;
    let stmt = tx.prepare_cached(GRANT).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &to.node,
                &(to.incarnation as i64),
                &(to.epoch as i64),
                &shards,
            ],
        )
        .await?;
    let mut granted = rows
        .iter()
        .map(|r| {
            Ok(ShardGrant {
                shard: shard_id(r.get::<_, i32>(0))?,
                token: r.get::<_, i64>(1) as u64,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    granted.sort_by_key(|g| g.shard);
    Ok(granted)
}

fn shard_id(raw: i32) -> Result<ShardId> {
    ShardId::try_from(raw).map_err(|_| Error::Internal(format!("corrupt shard number {raw}")))
}

fn node_from_row(row: &Row) -> NodeLease {
    NodeLease {
        node: row.get(0),
        incarnation: row.get::<_, Option<i64>>(1).map(|i| i as u64),
        epoch: row.get::<_, i64>(2) as u64,
        seq: row.get::<_, i64>(3) as u64,
        ttl_ms: row.get::<_, i64>(4) as u64,
    }
}

pub(super) fn shard_from_row(row: &Row) -> Result<ShardLease> {
    Ok(ShardLease {
        shard: shard_id(row.get(0))?,
        holder: row.get(1),
        holder_incarnation: row.get::<_, Option<i64>>(2).map(|i| i as u64),
        holder_epoch: row.get::<_, Option<i64>>(3).map(|e| e as u64),
        token: row.get::<_, i64>(4) as u64,
    })
}
