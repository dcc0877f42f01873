//! SQLite statements for request ids (the rules are in [`crate::storage::requests`]).
//!
//! On SQLite every statement here runs on the one writer connection, so reading a row and
//! then updating it is atomic. A backend with concurrent writers does the claim in one
//! statement: `INSERT … ON CONFLICT (request_id) DO UPDATE … WHERE result = 'aborted' AND
//! attempt <> excluded.attempt AND body_hash = excluded.body_hash RETURNING …`.

use rusqlite::{Connection, OptionalExtension, params};

use crate::customer::CustomerId;
use crate::error::{Error, Result};
use crate::storage::requests::{
    ABORTED, Claimed, RequestStamp, Settlement, StoredResult, answer_for, may_take_over,
};

/// The result of claiming a request id for a write (F1 step i).
pub(super) enum Claim {
    /// The id is this write's now: apply it, then [`record`] its result.
    Ours,
    /// The id was settled before: its stored answer (or `InvalidInput` if the body differs).
    Answered(Result<StoredResult>),
}

/// Claims `stamp.id` for a write on `customer`, taking over an abort of another attempt.
pub(super) fn claim(
    conn: &Connection,
    stamp: &RequestStamp,
    customer: &CustomerId,
) -> Result<Claim> {
    let customer = customer.to_string();
    if insert(conn, stamp, Some(&customer), None)? {
        return Ok(Claim::Ours);
    }
    let stored = load(conn, &stamp.id)?;
    if may_take_over(stamp, &stored) {
        take_over(conn, stamp, Some(&customer), None)?;
        return Ok(Claim::Ours);
    }
    Ok(Claim::Answered(answer_for(stamp, stored)))
}

/// Stores the answer of a write that claimed its id (F1 step iv).
pub(super) fn record(conn: &Connection, stamp: &RequestStamp, result: &StoredResult) -> Result<()> {
    let mut stmt =
        conn.prepare_cached("UPDATE applied_requests SET result = ?2 WHERE request_id = ?1")?;
    match stmt.execute(params![stamp.id, result.encode()?])? {
        1 => Ok(()),
        n => Err(Error::Internal(format!(
            "storing the result of request {:?} touched {n} rows",
            stamp.id
        ))),
    }
}

/// F3: records the request as aborted unless it is settled already; in one transaction.
pub(super) fn settle(conn: &mut Connection, stamp: &RequestStamp) -> Result<Settlement> {
    let tx = conn.transaction()?;
    let settlement = if insert(&tx, stamp, None, Some(ABORTED))? {
        Settlement::Aborted
    } else {
        let stored = load(&tx, &stamp.id)?;
        if may_take_over(stamp, &stored) {
            // Another attempt was aborted; abort this one too, so it can never apply late.
            take_over(&tx, stamp, None, Some(ABORTED))?;
            Settlement::Aborted
        } else {
            Settlement::Stored(answer_for(stamp, stored)?)
        }
    };
    tx.commit()?;
    Ok(settlement)
}

/// F4: removes ids applied before `older_than`.
pub(super) fn prune(conn: &Connection, older_than: i64) -> Result<u64> {
    let mut stmt = conn.prepare_cached("DELETE FROM applied_requests WHERE applied_at < ?1")?;
    Ok(stmt.execute([older_than])? as u64)
}

/// Inserts the id unless present; true if inserted.
fn insert(
    conn: &Connection,
    stamp: &RequestStamp,
    customer: Option<&str>,
    result: Option<&str>,
) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO applied_requests (request_id, customer_id, body_hash, attempt, result, applied_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (request_id) DO NOTHING",
    )?;
    let n = stmt.execute(params![
        stamp.id,
        customer,
        stamp.body_hash as i64,
        stamp.attempt,
        result,
        stamp.at
    ])?;
    Ok(n == 1)
}

/// Gives an aborted id to a new attempt.
fn take_over(
    conn: &Connection,
    stamp: &RequestStamp,
    customer: Option<&str>,
    result: Option<&str>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE applied_requests
            SET customer_id = coalesce(?2, customer_id), attempt = ?3, result = ?4, applied_at = ?5
          WHERE request_id = ?1 AND result = 'aborted'",
    )?;
    match stmt.execute(params![stamp.id, customer, stamp.attempt, result, stamp.at])? {
        1 => Ok(()),
        n => Err(Error::Internal(format!(
            "taking over aborted request {:?} touched {n} rows",
            stamp.id
        ))),
    }
}

/// The row holding `id`, which must exist.
fn load(conn: &Connection, id: &str) -> Result<Claimed> {
    let mut stmt = conn.prepare_cached(
        "SELECT body_hash, attempt, result FROM applied_requests WHERE request_id = ?1",
    )?;
    let row = stmt
        .query_row([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .optional()?;
    let Some((body_hash, attempt, Some(result))) = row else {
        return Err(Error::Internal(format!(
            "request {id:?} conflicted but has no settled row"
        )));
    };
    Ok(Claimed {
        body_hash: body_hash as u64,
        attempt,
        result: StoredResult::decode(&result)?,
    })
}
