//! PostgreSQL statements for request ids (the rules are in [`crate::storage::requests`]).
//!
//! Writers on several nodes may claim the same id at once, so the claim is one statement:
//! `INSERT … ON CONFLICT (request_id) DO UPDATE … WHERE result = 'aborted' AND attempt <>
//! excluded.attempt AND body_hash = excluded.body_hash RETURNING …`. A conflicting row being
//! inserted by another transaction makes this one wait for it; a conflicting row is locked
//! until commit, so what [`load`] reads next cannot change under us.

use deadpool_postgres::Transaction;

use crate::customer::CustomerId;
use crate::error::{Error, Result};
use crate::storage::requests::{
    ABORTED, Claimed, RequestStamp, Settlement, StoredResult, answer_for,
};

/// The result of claiming a request id for a write (F1 step i).
pub(super) enum Claim {
    /// The id is this write's now: apply it, then [`record`] its result.
    Ours,
    /// The id was settled before: its stored answer (or `InvalidInput` if the body differs).
    Answered(Result<StoredResult>),
}

/// Inserts the id, or takes over an abort of another attempt of the same body; returns
/// whether the id is ours now.
const CLAIM: &str = "INSERT INTO applied_requests AS r
        (request_id, customer_id, body_hash, attempt, result, applied_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (request_id) DO UPDATE
        SET customer_id = coalesce(excluded.customer_id, r.customer_id),
            attempt = excluded.attempt, result = excluded.result, applied_at = excluded.applied_at
      WHERE r.result = 'aborted' AND r.attempt <> excluded.attempt
        AND r.body_hash = excluded.body_hash
     RETURNING 1";

/// Claims `stamp.id` for a write on `customer`.
pub(super) async fn claim(
    tx: &Transaction<'_>,
    stamp: &RequestStamp,
    customer: &CustomerId,
) -> Result<Claim> {
    let customer = customer.to_string();
    if insert(tx, stamp, Some(&customer), None).await? {
        return Ok(Claim::Ours);
    }
    Ok(Claim::Answered(answer_for(
        stamp,
        load(tx, &stamp.id).await?,
    )))
}

/// Stores the answer of a write that claimed its id (F1 step iv).
pub(super) async fn record(
    tx: &Transaction<'_>,
    stamp: &RequestStamp,
    result: &StoredResult,
) -> Result<()> {
    let stmt = tx
        .prepare_cached("UPDATE applied_requests SET result = $2 WHERE request_id = $1")
        .await?;
    match tx.execute(&stmt, &[&stamp.id, &result.encode()?]).await? {
        1 => Ok(()),
        n => Err(Error::Internal(format!(
            "storing the result of request {:?} touched {n} rows",
            stamp.id
        ))),
    }
}

/// F3: records the request as aborted unless it is settled already.
pub(super) async fn settle(tx: &Transaction<'_>, stamp: &RequestStamp) -> Result<Settlement> {
    if insert(tx, stamp, None, Some(ABORTED)).await? {
        // Inserted, or another attempt's abort taken over (then this attempt is aborted too,
        // so it can never apply late).
        return Ok(Settlement::Aborted);
    }
    Ok(Settlement::Stored(answer_for(
        stamp,
        load(tx, &stamp.id).await?,
    )?))
}

/// F4: removes ids applied before `older_than`.
pub(super) async fn prune(tx: &Transaction<'_>, older_than: i64) -> Result<u64> {
    let stmt = tx
        .prepare_cached("DELETE FROM applied_requests WHERE applied_at < $1")
        .await?;
    Ok(tx.execute(&stmt, &[&older_than]).await?)
}

async fn insert(
    tx: &Transaction<'_>,
    stamp: &RequestStamp,
    customer: Option<&str>,
    result: Option<&str>,
) -> Result<bool> {
    let stmt = tx.prepare_cached(CLAIM).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &stamp.id,
                &customer,
                &(stamp.body_hash as i64),
                &i64::from(stamp.attempt),
                &result,
                &stamp.at,
            ],
        )
        .await?;
    Ok(rows.len() == 1)
}

/// The row holding `id`, which must exist and be settled.
async fn load(tx: &Transaction<'_>, id: &str) -> Result<Claimed> {
    let stmt = tx
        .prepare_cached(
            "SELECT body_hash, attempt, result FROM applied_requests WHERE request_id = $1",
        )
        .await?;
    let row = tx.query_opt(&stmt, &[&id]).await?;
    let settled = row.and_then(|r| {
        let result: Option<String> = r.get(2);
        Some((r.get::<_, i64>(0), r.get::<_, i64>(1), result?))
    });
    let Some((body_hash, attempt, result)) = settled else {
        return Err(Error::Internal(format!(
            "request {id:?} conflicted but has no settled row"
        )));
    };
    Ok(Claimed {
        body_hash: body_hash as u64,
        attempt: u32::try_from(attempt)
            .map_err(|_| Error::Internal(format!("corrupt attempt {attempt} for {id:?}")))?,
        result: StoredResult::decode(&result)?,
    })
}
