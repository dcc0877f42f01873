//! SQLite statements for leases (the rules and outcomes are in [`crate::storage::leases`]).
//!
//! Each operation is one transaction of its own on the writer connection, never part of a
//! write batch. The statements are the ones DESIGN §6 gives, in a dialect PostgreSQL shares
//! (`ON CONFLICT … DO UPDATE … WHERE`, `RETURNING`); u64 incarnations are stored as their
//! two's-complement i64.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Error, Result};
use crate::storage::leases::{
    Grant, Holder, NodeLease, Observed, Registration, Release, Renewal, ShardGrant, ShardId,
    ShardLease, Takeover, grant_order,
};

/// L1: registers `incarnation` under `node` unless another incarnation is in the row.
pub(super) fn register(
    conn: &mut Connection,
    node: &str,
    incarnation: u64,
) -> Result<Registration> {
    let tx = conn.transaction()?;
    let epoch = tx
        .prepare_cached(
            "INSERT INTO node_leases (node, incarnation, epoch, seq) VALUES (?1, ?2, 1, 0)
             ON CONFLICT (node) DO UPDATE
                SET incarnation = excluded.incarnation, epoch = node_leases.epoch + 1, seq = 0
              WHERE node_leases.incarnation IS NULL OR node_leases.incarnation = excluded.incarnation
             RETURNING epoch",
        )?
        .query_row(params![node, incarnation as i64], |r| r.get::<_, i64>(0))
        .optional()?;
    let outcome = match epoch {
        Some(epoch) => Registration::Registered {
            epoch: epoch as u64,
        },
        None => Registration::Occupied(node_row(&tx, node)?.ok_or_else(|| {
            Error::Internal(format!("node row {node:?} conflicted but is missing"))
        })?),
    };
    tx.commit()?;
    Ok(outcome)
}

/// L2: one `UPDATE` of our own row; the node table comes back from the same transaction.
pub(super) fn renew(conn: &mut Connection, me: &Holder, k: u64, ttl_ms: u64) -> Result<Renewal> {
    let tx = conn.transaction()?;
    let renewed = tx
        .prepare_cached(
            "UPDATE node_leases SET seq = ?1, ttl_ms = ?5
              WHERE node = ?2 AND incarnation = ?3 AND epoch = ?4",
        )?
        .execute(params![
            k as i64,
            me.node,
            me.incarnation as i64,
            me.epoch as i64,
            ttl_ms as i64
        ])?;
    let outcome = if renewed == 1 {
        Renewal::Renewed {
            table: node_table(&tx)?,
        }
    } else {
        match node_row(&tx, &me.node)? {
            Some(row) if row.incarnation == Some(me.incarnation) => Renewal::Lost { current: row },
            current => Renewal::Superseded { current },
        }
    };
    tx.commit()?;
    Ok(outcome)
}

/// L5: revoke the victim exactly as observed, then grant, all or nothing.
pub(super) fn takeover(
    conn: &mut Connection,
    contender: &Holder,
    victim: &Observed,
    shards: &[ShardId],
) -> Result<Takeover> {
    let tx = conn.transaction()?;
    if !is_current(&tx, contender)? {
        return Ok(Takeover::NotCurrent);
    }
    let revoked = tx
        .prepare_cached(
            "UPDATE node_leases SET epoch = epoch + 1
              WHERE node = ?1 AND incarnation = ?2 AND epoch = ?3 AND seq = ?4",
        )?
        .execute(observed_params(victim))?;
    if revoked == 0 {
        return Ok(Takeover::VictimMoved {
            current: node_row(&tx, &victim.node)?,
        });
    }
    let granted = grant_rows(&tx, contender, shards)?;
    tx.commit()?;
    Ok(Takeover::Done {
        victim_epoch: victim.epoch + 1,
        granted,
    })
}

/// L5 for a restarted process: its own row, observed unchanged, moves to the new incarnation.
pub(super) fn takeover_own_row(
    conn: &mut Connection,
    incarnation: u64,
    observed: &Observed,
    shards: &[ShardId],
) -> Result<Takeover> {
    let tx = conn.transaction()?;
    let taken = tx
        .prepare_cached(
            "UPDATE node_leases SET epoch = epoch + 1, incarnation = ?5, seq = 0
              WHERE node = ?1 AND incarnation = ?2 AND epoch = ?3 AND seq = ?4",
        )?
        .execute(params![
            observed.node,
            observed.incarnation as i64,
            observed.epoch as i64,
            observed.seq as i64,
            incarnation as i64
        ])?;
    if taken == 0 {
        return Ok(Takeover::VictimMoved {
            current: node_row(&tx, &observed.node)?,
        });
    }
    let me = Holder {
        node: observed.node.clone(),
        incarnation,
        epoch: observed.epoch + 1,
    };
    let granted = grant_rows(&tx, &me, shards)?;
    tx.commit()?;
    Ok(Takeover::Done {
        victim_epoch: me.epoch,
        granted,
    })
}

/// L5: grant free or stale shards to a current contender.
pub(super) fn grant(
    conn: &mut Connection,
    contender: &Holder,
    shards: &[ShardId],
) -> Result<Grant> {
    let tx = conn.transaction()?;
    if !is_current(&tx, contender)? {
        return Ok(Grant::NotCurrent);
    }
    let granted = grant_rows(&tx, contender, shards)?;
    tx.commit()?;
    Ok(Grant::Granted(granted))
}

/// L6: release a shard still held at `token`.
pub(super) fn release(
    conn: &mut Connection,
    node: &str,
    shard: ShardId,
    token: u64,
) -> Result<Release> {
    let tx = conn.transaction()?;
    let released = tx
        .prepare_cached(
            "UPDATE shard_leases
                SET holder = NULL, holder_incarnation = NULL, holder_epoch = NULL, token = token + 1
              WHERE shard = ?1 AND token = ?2 AND holder = ?3
          RETURNING token",
        )?
        .query_row(params![shard, token as i64, node], |r| r.get::<_, i64>(0))
        .optional()?;
    let outcome = match released {
        Some(token) => Release::Released {
            token: token as u64,
        },
        None => Release::NotHeld(
            shard_row(&tx, shard)?
                .ok_or_else(|| Error::InvalidInput(format!("no shard {shard}")))?,
        ),
    };
    tx.commit()?;
    Ok(outcome)
}

/// L6, graceful stop: clear our incarnation and move the epoch on, so a restart registers at
/// once and any shard we failed to release is grantable at once.
pub(super) fn clear_incarnation(conn: &Connection, node: &str, incarnation: u64) -> Result<bool> {
    let cleared = conn
        .prepare_cached(
            "UPDATE node_leases SET incarnation = NULL, epoch = epoch + 1
              WHERE node = ?1 AND incarnation = ?2",
        )?
        .execute(params![node, incarnation as i64])?;
    Ok(cleared == 1)
}

/// Every shard row in shard order.
pub(super) fn lease_table(conn: &Connection) -> Result<Vec<ShardLease>> {
    let mut stmt = conn.prepare_cached(
        "SELECT shard, holder, holder_incarnation, holder_epoch, token FROM shard_leases ORDER BY shard",
    )?;
    let rows = stmt.query_map([], shard_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every node row ordered by name.
pub(super) fn node_table(conn: &Connection) -> Result<Vec<NodeLease>> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, incarnation, epoch, seq, ttl_ms FROM node_leases ORDER BY node",
    )?;
    let rows = stmt.query_map([], node_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One shard row (F1 step ii reads the token here; on SQLite the writer connection makes the
/// read and the write it guards atomic).
pub(super) fn shard_row(conn: &Connection, shard: ShardId) -> Result<Option<ShardLease>> {
    let mut stmt = conn.prepare_cached(
        "SELECT shard, holder, holder_incarnation, holder_epoch, token FROM shard_leases WHERE shard = ?1",
    )?;
    Ok(stmt.query_row([shard], shard_from_row).optional()?)
}

fn node_row(conn: &Connection, node: &str) -> Result<Option<NodeLease>> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, incarnation, epoch, seq, ttl_ms FROM node_leases WHERE node = ?1",
    )?;
    Ok(stmt.query_row([node], node_from_row).optional()?)
}

/// Whether `holder`'s (incarnation, epoch) is what its node row says now.
fn is_current(conn: &Connection, holder: &Holder) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT 1 FROM node_leases WHERE node = ?1 AND incarnation = ?2 AND epoch = ?3",
    )?;
    let found = stmt
        .query_row(
            params![holder.node, holder.incarnation as i64, holder.epoch as i64],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}

/// The grant statement of L5, one shard at a time in ascending order: a shard is taken only if
/// released, never held, or held under an epoch older than its holder's current one.
fn grant_rows(conn: &Connection, to: &Holder, shards: &[ShardId]) -> Result<Vec<ShardGrant>> {
    let mut stmt = conn.prepare_cached(
        "UPDATE shard_leases
            SET holder = ?1, holder_incarnation = ?2, holder_epoch = ?3, token = token + 1
          WHERE shard = ?4
            AND (holder IS NULL
                 OR holder_epoch < (SELECT epoch FROM node_leases WHERE node = shard_leases.holder))
      RETURNING token",
    )?;
    let mut granted = Vec::new();
    for shard in grant_order(shards) {
        let token = stmt
            .query_row(
                params![to.node, to.incarnation as i64, to.epoch as i64, shard],
                |r| r.get::<_, i64>(0),
            )
            .optional()?;
        if let Some(token) = token {
            granted.push(ShardGrant {
                shard,
                token: token as u64,
            });
        }
    }
    Ok(granted)
}

fn observed_params(o: &Observed) -> (String, i64, i64, i64) {
    (
        o.node.clone(),
        o.incarnation as i64,
        o.epoch as i64,
        o.seq as i64,
    )
}

fn node_from_row(row: &Row<'_>) -> rusqlite::Result<NodeLease> {
    Ok(NodeLease {
        node: row.get(0)?,
        incarnation: row.get::<_, Option<i64>>(1)?.map(|i| i as u64),
        epoch: row.get::<_, i64>(2)? as u64,
        seq: row.get::<_, i64>(3)? as u64,
        ttl_ms: row.get::<_, i64>(4)? as u64,
    })
}

fn shard_from_row(row: &Row<'_>) -> rusqlite::Result<ShardLease> {
    Ok(ShardLease {
        shard: row.get(0)?,
        holder: row.get(1)?,
        holder_incarnation: row.get::<_, Option<i64>>(2)?.map(|i| i as u64),
        holder_epoch: row.get::<_, Option<i64>>(3)?.map(|e| e as u64),
        token: row.get::<_, i64>(4)? as u64,
    })
}
