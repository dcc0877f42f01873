//! PostgreSQL statements for request ids (the rules are in [`crate::storage::requests`]).
//!
//! Writers and settles on several nodes may reach the same id at once, so the claim and the
//! settle are each one statement on the id's row: `INSERT … ON CONFLICT (request_id) DO UPDATE
//! … WHERE …`, whose `WHERE` PostgreSQL evaluates on the newest committed version of the row
//! after locking it. The set of aborted attempts is a column of that same row, so a claim never
//! decides on a set older than a settle that committed before it got the lock (a separate
//! table read in a subquery would be read at the statement's snapshot, which can be older).
//! A conflicting row being inserted by another transaction makes this one wait for it; the
//! conflicting row stays locked until commit even when the `WHERE` is false, so what [`load`]
//! reads next cannot change under us.

use deadpool_postgres::Transaction;

use crate::customer::CustomerId;
use crate::error::{Error, Result};
use crate::storage::requests::{
    Claimed, RequestStamp, SettleExisting, Settlement, StoredResult, answer_for, settle_existing,
};

/// The result of claiming a request id for a write (F1 step i).
pub(super) enum Claim {
    /// The id is this write's now: apply it, then [`record`] its result.
    Ours,
    /// The id was settled before: its stored answer (or `InvalidInput` if the body differs).
    Answered(Result<StoredResult>),
}

/// Inserts the id, or takes over an abort of other attempts of the same body when this attempt
/// is not in the aborted set (the set is kept); returns a row when the id is ours now.
const CLAIM: &str = "INSERT INTO applied_requests AS r
        (request_id, customer_id, body_hash, attempt, result, applied_at)
     VALUES ($1, $2, $3, $4, NULL, $5)
     ON CONFLICT (request_id) DO UPDATE
        SET customer_id = excluded.customer_id, attempt = excluded.attempt, result = NULL,
            applied_at = excluded.applied_at
      WHERE r.result = 'aborted' AND r.attempt <> excluded.attempt
        AND r.body_hash = excluded.body_hash
        AND NOT (excluded.attempt = ANY (r.aborted_attempts))
     RETURNING 1";

/// Inserts the id as aborted by this attempt, or adds this attempt to an aborted id's set (the
/// row's live attempt is never rewritten); returns a row when this attempt is now aborted.
const SETTLE: &str = "INSERT INTO applied_requests AS r
        (request_id, customer_id, body_hash, attempt, result, applied_at, aborted_attempts)
     VALUES ($1, NULL, $2, $3, 'aborted', $4, ARRAY[$3::BIGINT])
     ON CONFLICT (request_id) DO UPDATE
        SET aborted_attempts = r.aborted_attempts || excluded.attempt
      WHERE r.result = 'aborted' AND r.body_hash = excluded.body_hash
        AND NOT (excluded.attempt = ANY (r.aborted_attempts))
     RETURNING 1";

/// Claims `stamp.id` for a write on `customer`.
pub(super) async fn claim(
    tx: &Transaction<'_>,
    stamp: &RequestStamp,
    customer: &CustomerId,
) -> Result<Claim> {
    let customer = customer.to_string();
    let stmt = tx.prepare_cached(CLAIM).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &stamp.id,
                &customer,
                &(stamp.body_hash as i64),
                &i64::from(stamp.attempt),
                &stamp.at,
            ],
        )
        .await?;
    if rows.len() == 1 {
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

/// F3: records this attempt as aborted unless the id has a final result.
pub(super) async fn settle(tx: &Transaction<'_>, stamp: &RequestStamp) -> Result<Settlement> {
    let stmt = tx.prepare_cached(SETTLE).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &stamp.id,
                &(stamp.body_hash as i64),
                &i64::from(stamp.attempt),
                &stamp.at,
            ],
        )
        .await?;
    if rows.len() == 1 {
        return Ok(Settlement::Aborted);
    }
    match settle_existing(stamp, load(tx, &stamp.id).await?)? {
        SettleExisting::Answer(answer) => Ok(answer),
        // The statement above locked the row and found it not abortable; it cannot have
        // changed since.
        SettleExisting::AddAbort => Err(Error::Internal(format!(
            "request {:?} changed while being settled",
            stamp.id
        ))),
    }
}

/// F3 for several requests in one transaction, in order, a savepoint each (as the writes of a
/// batch, F2): a settle whose statement fails — a lock wait past `lock_timeout`, a deadlock
/// the server broke — is rolled back alone and answered with its error; the others commit.
/// Stops taking further settles once `budget` has passed (at least one is always taken): a
/// settle may wait up to `lock_timeout` on another node's claim, and the whole batch must
/// commit within the operation deadline. Returns the answers of the settles taken.
pub(super) async fn settle_batch(
    tx: &Transaction<'_>,
    stamps: &[RequestStamp],
    budget: std::time::Duration,
) -> Result<Vec<Result<Settlement>>> {
    let started = std::time::Instant::now();
    let mut answers = Vec::with_capacity(stamps.len());
    for stamp in stamps {
        if !answers.is_empty() && started.elapsed() >= budget {
            break;
        }
        // The savepoint shares a round trip with the settle's first statement.
        let savepoint = async { Ok::<_, Error>(tx.batch_execute("SAVEPOINT s").await?) };
        let (savepoint, settled) = futures::join!(savepoint, settle(tx, stamp));
        savepoint?;
        match settled {
            Ok(settlement) => {
                tx.batch_execute("RELEASE SAVEPOINT s").await?;
                answers.push(Ok(settlement));
            }
            Err(e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT s; RELEASE SAVEPOINT s")
                    .await?;
                answers.push(Err(e));
            }
        }
    }
    Ok(answers)
}

/// F4: removes at most `limit` ids applied before `older_than`, oldest first. Every node
/// prunes: rows another transaction holds (a claim, another node's prune) are skipped, not
/// waited for, so concurrent prunes remove disjoint rows and never delay a write.
pub(super) async fn prune(tx: &Transaction<'_>, older_than: i64, limit: u32) -> Result<u64> {
    let stmt = tx
        .prepare_cached(
            "DELETE FROM applied_requests WHERE request_id IN (
                 SELECT request_id FROM applied_requests WHERE applied_at < $1
                  ORDER BY applied_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    Ok(tx.execute(&stmt, &[&older_than, &i64::from(limit)]).await?)
}

/// The row holding `id`, which must exist and be settled.
async fn load(tx: &Transaction<'_>, id: &str) -> Result<Claimed> {
    let stmt = tx
        .prepare_cached(
            "SELECT body_hash, attempt, result, aborted_attempts FROM applied_requests
              WHERE request_id = $1",
        )
        .await?;
    let row = tx.query_opt(&stmt, &[&id]).await?;
    let settled = row.and_then(|r| {
        let result: Option<String> = r.get(2);
        Some((
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            result?,
            r.get::<_, Vec<i64>>(3),
        ))
    });
    let Some((body_hash, attempt, result, aborted)) = settled else {
        return Err(Error::Internal(format!(
            "request {id:?} conflicted but has no settled row"
        )));
    };
    let attempt_of = |a: i64| {
        u32::try_from(a).map_err(|_| Error::Internal(format!("corrupt attempt {a} for {id:?}")))
    };
    Ok(Claimed {
        body_hash: body_hash as u64,
        attempt: attempt_of(attempt)?,
        result: StoredResult::decode(&result)?,
        aborted: aborted.into_iter().map(attempt_of).collect::<Result<_>>()?,
    })
}
