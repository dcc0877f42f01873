//! SQLite statements for request ids (the rules are in [`crate::storage::requests`]).
//!
//! On SQLite every statement here runs on the one writer connection, so reading a row and
//! then updating it is atomic. A backend with concurrent writers does the claim and the settle
//! each in one statement on the id's row (see `storage::postgres::requests`). The set of
//! aborted attempts is the `aborted_attempts` column, in [`encode_attempts`]'s text form.

use rusqlite::{Connection, OptionalExtension, params};

use crate::customer::CustomerId;
use crate::error::{Error, Result};
use crate::storage::requests::{
    ABORTED, Claimed, RequestStamp, SettleExisting, Settlement, StoredResult, answer_for,
    decode_attempts, encode_attempts, may_take_over, settle_existing,
};

/// The result of claiming a request id for a write (F1 step i).
pub(super) enum Claim {
    /// The id is this write's now: apply it, then [`record`] its result.
    Ours,
    /// The id was settled before: its stored answer (or `InvalidInput` if the body differs).
    Answered(Result<StoredResult>),
}

/// Claims `stamp.id` for a write on `customer`, taking over an abort of other attempts when
/// this attempt was never aborted.
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
        take_over(conn, stamp, &customer)?;
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

/// F3: records this attempt as aborted unless the id has a final result; in one transaction.
pub(super) fn settle(conn: &mut Connection, stamp: &RequestStamp) -> Result<Settlement> {
    let tx = conn.transaction()?;
    let settlement = settle_in(&tx, stamp)?;
    tx.commit()?;
    Ok(settlement)
}

/// F3 for several requests, in one transaction (one fsync) with a savepoint each: a settle
/// that fails is rolled back and answered with its error, the others commit.
pub(super) fn settle_batch(
    conn: &mut Connection,
    stamps: &[RequestStamp],
) -> Result<Vec<Result<Settlement>>> {
    let mut tx = conn.transaction()?;
    let mut answers = Vec::with_capacity(stamps.len());
    for stamp in stamps {
        let sp = tx.savepoint()?; // dropped without commit = rolled back
        match settle_in(&sp, stamp) {
            Ok(settlement) => {
                sp.commit()?;
                answers.push(Ok(settlement));
            }
            Err(e) => {
                sp.finish()?;
                answers.push(Err(e));
            }
        }
    }
    tx.commit()?;
    Ok(answers)
}

/// The statements of one settle, in the caller's transaction.
fn settle_in(conn: &Connection, stamp: &RequestStamp) -> Result<Settlement> {
    if insert(conn, stamp, None, Some(ABORTED))? {
        return Ok(Settlement::Aborted);
    }
    let stored = load(conn, &stamp.id)?;
    let mut aborted = stored.aborted.clone();
    Ok(match settle_existing(stamp, stored)? {
        SettleExisting::AddAbort => {
            aborted.push(stamp.attempt);
            set_aborted(conn, &stamp.id, &aborted)?;
            Settlement::Aborted
        }
        SettleExisting::Answer(answer) => answer,
    })
}

/// F4: removes at most `limit` ids applied before `older_than`, oldest first (through the
/// `applied_at` index). Runs on the writer connection between transactions, so it never meets
/// a claim in progress.
pub(super) fn prune(conn: &Connection, older_than: i64, limit: u32) -> Result<u64> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM applied_requests WHERE request_id IN (
             SELECT request_id FROM applied_requests WHERE applied_at < ?1
              ORDER BY applied_at LIMIT ?2)",
    )?;
    Ok(stmt.execute(params![older_than, limit])? as u64)
}

/// Inserts the id unless present; true if inserted. An id inserted as aborted starts its set
/// of aborted attempts with this attempt.
fn insert(
    conn: &Connection,
    stamp: &RequestStamp,
    customer: Option<&str>,
    result: Option<&str>,
) -> Result<bool> {
    let aborted = if result == Some(ABORTED) {
        encode_attempts(&[stamp.attempt])
    } else {
        String::new()
    };
    let mut stmt = conn.prepare_cached(
        "INSERT INTO applied_requests
            (request_id, customer_id, body_hash, attempt, result, applied_at, aborted_attempts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (request_id) DO NOTHING",
    )?;
    let n = stmt.execute(params![
        stamp.id,
        customer,
        stamp.body_hash as i64,
        stamp.attempt,
        result,
        stamp.at,
        aborted
    ])?;
    Ok(n == 1)
}

/// Gives an aborted id to a new attempt (its set of aborted attempts is kept).
fn take_over(conn: &Connection, stamp: &RequestStamp, customer: &str) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE applied_requests
            SET customer_id = ?2, attempt = ?3, result = NULL, applied_at = ?4
          WHERE request_id = ?1 AND result = 'aborted'",
    )?;
    match stmt.execute(params![stamp.id, customer, stamp.attempt, stamp.at])? {
        1 => Ok(()),
        n => Err(Error::Internal(format!(
            "taking over aborted request {:?} touched {n} rows",
            stamp.id
        ))),
    }
}

/// Stores the set of aborted attempts of `id`.
fn set_aborted(conn: &Connection, id: &str, aborted: &[u32]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE applied_requests SET aborted_attempts = ?2 WHERE request_id = ?1",
    )?;
    match stmt.execute(params![id, encode_attempts(aborted)])? {
        1 => Ok(()),
        n => Err(Error::Internal(format!(
            "recording an aborted attempt of {id:?} touched {n} rows"
        ))),
    }
}

/// The row holding `id`, which must exist.
fn load(conn: &Connection, id: &str) -> Result<Claimed> {
    let mut stmt = conn.prepare_cached(
        "SELECT body_hash, attempt, result, aborted_attempts FROM applied_requests
          WHERE request_id = ?1",
    )?;
    let row = stmt
        .query_row([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .optional()?;
    let Some((body_hash, attempt, Some(result), aborted)) = row else {
        return Err(Error::Internal(format!(
            "request {id:?} conflicted but has no settled row"
        )));
    };
    Ok(Claimed {
        body_hash: body_hash as u64,
        attempt,
        result: StoredResult::decode(&result)?,
        aborted: decode_attempts(&aborted)?,
    })
}
