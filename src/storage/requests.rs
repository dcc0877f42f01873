//! Request ids: how a write applies at most once and a retry gets the first answer (DESIGN §6
//! F1 step i/iv, F3, F4).
//!
//! Every write may carry a [`RequestStamp`]: the request id (the client's `Idempotency-Key`, or
//! one the entry node made), a hash of the request body, and the attempt number. Inside the
//! write's savepoint the store first *claims* the id in `applied_requests`:
//!
//! * a new id is inserted, the write runs, and its result is stored under the id;
//! * an id already applied answers with the stored result and nothing runs
//!   ([`super::WriteOutcome::Replayed`]) — unless the body hash differs, which is
//!   `InvalidInput` (the API answers 422 "idempotency key reused with a different body");
//! * an id settled as [`StoredResult::Aborted`] may be taken over by an attempt that is not
//!   in the id's *set of aborted attempts*: the client retried after a 503, and this new
//!   attempt may apply. An attempt in the set can never apply: arriving late, whenever and
//!   wherever, it finds itself aborted and is answered that.
//!
//! Settling (F3) adds the attempt to the set and never rewrites the row's live attempt — the
//! set, not one row's attempt column, is what a late attempt is checked against. (Keeping only
//! the latest aborted attempt let the first one, settled and answered 503, take the id over
//! after a second settle and apply; keeping only the first let the second do the same.) The
//! set lives in the id's own row (`aborted_attempts`), so on PostgreSQL a claim and a settle of
//! the same id serialise on that one row lock and each sees the other's committed set.
//!
//! What is stored ([`StoredResult`]) is enough to rebuild the first answer: the customer row,
//! the deletion, or the final domain error (not found, conflict). Two answers are *not* stored,
//! because they mean "not applied, try again with fresh state" rather than a final answer: a
//! fenced write and a version miss roll their savepoint back, request id included.
//!
//! Ids are global, not per customer: a create retried through another entry node finds its id.
//! Rows are kept for a retention window and then pruned by age; `applied_at` is the owner's
//! wall clock and is used for nothing but pruning.
//!
//! This module holds the rules and the stored encoding; the SQL is in each backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::customer::Customer;
use crate::error::{Error, Result};

/// Shortest retention of applied request ids (F4): a retry within this window of its first
/// attempt is recognised. Callers pruning with a shorter window break idempotency.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The value of `applied_requests.result` for a request settled as never applied (F3). Any
/// other value is the JSON encoding of a [`StoredResult`].
pub const ABORTED: &str = "aborted";

/// Identifies one attempt of one client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestStamp {
    /// The request id; global across customers and entry nodes.
    pub id: String,
    /// Hash of the request body: the same id with a different body is refused.
    pub body_hash: u64,
    /// Which attempt of the request this is; a retry after a 503 is a new attempt.
    pub attempt: u32,
    /// Wall-clock µs since the Unix epoch when the write was submitted; stored as
    /// `applied_at`, used only to prune.
    pub at: i64,
}

/// The answer stored under a request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredResult {
    /// The write stored this customer row.
    Row(Customer),
    /// The write deleted the customer.
    Deleted,
    /// The write was refused with this final domain error.
    Failed(Error),
    /// Settled as never applied (F3): the client was told 503 and may retry as a new attempt.
    Aborted,
}

impl StoredResult {
    /// The stored answer of a write that returned `result`, or `None` when that answer is not
    /// final and must not be stored (a version miss: the writer retries with fresh state).
    pub fn of(result: &Result<Option<Customer>>) -> Option<Self> {
        match result {
            Ok(Some(row)) => Some(Self::Row(row.clone())),
            Ok(None) => Some(Self::Deleted),
            Err(Error::VersionConflict { .. }) => None,
            Err(e) => Some(Self::Failed(e.clone())),
        }
    }

    /// The answer as a write result. `Aborted` is `Unavailable`: not applied, retry freely.
    pub fn into_result(self) -> Result<Option<Customer>> {
        match self {
            Self::Row(row) => Ok(Some(row)),
            Self::Deleted => Ok(None),
            Self::Failed(e) => Err(e),
            Self::Aborted => Err(Error::Unavailable(
                "request was settled as not applied; retry it".into(),
            )),
        }
    }

    /// The text stored in `applied_requests.result`.
    pub fn encode(&self) -> Result<String> {
        match self {
            Self::Aborted => Ok(ABORTED.to_owned()),
            other => serde_json::to_string(other)
                .map_err(|e| Error::Internal(format!("encoding a request result: {e}"))),
        }
    }

    /// Reads back [`StoredResult::encode`]'s text. Corrupt text is an internal error.
    pub fn decode(text: &str) -> Result<Self> {
        if text == ABORTED {
            return Ok(Self::Aborted);
        }
        serde_json::from_str(text)
            .map_err(|e| Error::Internal(format!("corrupt stored request result: {e}")))
    }
}

/// What [`super::Store::settle`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settlement {
    /// The id is now recorded as aborted: the attempt never applied and never will; answer 503.
    Aborted,
    /// The id was already settled: this is its answer (a row, a deletion, an error, or an
    /// abort recorded earlier for this same attempt).
    Stored(StoredResult),
}

/// A request id row as found when it could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Body hash of the request that holds the id.
    pub body_hash: u64,
    /// Its attempt.
    pub attempt: u32,
    /// Its stored answer.
    pub result: StoredResult,
    /// Every attempt of this id settled as aborted (F3): none of them may ever apply.
    pub aborted: Vec<u32>,
}

impl Claimed {
    /// Whether `attempt` was settled as aborted.
    pub fn aborted(&self, attempt: u32) -> bool {
        self.aborted.contains(&attempt)
    }
}

/// The answer for `stamp` when its id is already held by `stored` and could not be taken over:
/// `Aborted` when this very attempt was settled as aborted, else the stored answer; or
/// `InvalidInput` if the bodies differ.
pub fn answer_for(stamp: &RequestStamp, stored: Claimed) -> Result<StoredResult> {
    same_body(stamp, &stored)?;
    if stored.aborted(stamp.attempt) {
        return Ok(StoredResult::Aborted);
    }
    Ok(stored.result)
}

fn same_body(stamp: &RequestStamp, stored: &Claimed) -> Result<()> {
    if stored.body_hash != stamp.body_hash {
        return Err(Error::InvalidInput(format!(
            "idempotency key {:?} reused with a different body",
            stamp.id
        )));
    }
    Ok(())
}

/// Whether `stamp` may take over the id from `stored`: only an id that is aborted, by an
/// attempt of the same body, when `stamp`'s own attempt was never aborted (F1 step i).
pub fn may_take_over(stamp: &RequestStamp, stored: &Claimed) -> bool {
    stored.result == StoredResult::Aborted
        && stored.attempt != stamp.attempt
        && !stored.aborted(stamp.attempt)
        && stored.body_hash == stamp.body_hash
}

/// What settling `stamp` does when its id already has a row (F3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleExisting {
    /// The id is aborted but this attempt is not yet in its set: add it (the row's live
    /// attempt stays as it is), then answer [`Settlement::Aborted`].
    AddAbort,
    /// Nothing to record; this is the answer.
    Answer(Settlement),
}

/// Decides a settle of `stamp` against its id's existing row: a final result is the answer
/// (unless this attempt was itself aborted before), an abort gains this attempt.
pub fn settle_existing(stamp: &RequestStamp, stored: Claimed) -> Result<SettleExisting> {
    same_body(stamp, &stored)?;
    if stored.aborted(stamp.attempt) {
        return Ok(SettleExisting::Answer(Settlement::Stored(
            StoredResult::Aborted,
        )));
    }
    Ok(match stored.result {
        StoredResult::Aborted => SettleExisting::AddAbort,
        result => SettleExisting::Answer(Settlement::Stored(result)),
    })
}

/// The text form of a set of aborted attempts (SQLite's `aborted_attempts`): decimal attempt
/// numbers joined by commas, `""` for none.
pub fn encode_attempts(attempts: &[u32]) -> String {
    let parts: Vec<String> = attempts.iter().map(u32::to_string).collect();
    parts.join(",")
}

/// Reads back [`encode_attempts`]'s text. Corrupt text is an internal error.
pub fn decode_attempts(text: &str) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|a| {
            a.parse()
                .map_err(|_| Error::Internal(format!("corrupt aborted attempts {text:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::{CustomerFields, new_customer_id};

    fn stamp(attempt: u32, body_hash: u64) -> RequestStamp {
        RequestStamp {
            id: "k1".into(),
            body_hash,
            attempt,
            at: 0,
        }
    }

    fn claimed(attempt: u32, body_hash: u64, result: StoredResult) -> Claimed {
        let aborted = if result == StoredResult::Aborted {
            vec![attempt]
        } else {
            Vec::new()
        };
        Claimed {
            body_hash,
            attempt,
            result,
            aborted,
        }
    }

    #[test]
    fn every_stored_result_survives_its_encoding() {
        let row = Customer::new(
            new_customer_id(),
            CustomerFields {
                name: "Zoë \"Z\"".into(),
                email: "z@x.io".into(),
                phone: None,
                address: Some("1 Rue\n".into()),
            },
            7,
        );
        for r in [
            StoredResult::Row(row),
            StoredResult::Deleted,
            StoredResult::Failed(Error::Conflict("email taken".into())),
            StoredResult::Aborted,
        ] {
            assert_eq!(StoredResult::decode(&r.encode().unwrap()).unwrap(), r);
        }
        assert_eq!(StoredResult::Aborted.encode().unwrap(), "aborted");
    }

    #[test]
    fn corrupt_stored_text_is_an_internal_error_not_a_panic() {
        assert!(matches!(
            StoredResult::decode("{not json"),
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn a_version_miss_is_not_a_final_answer_but_a_conflict_is() {
        let miss = Err(Error::VersionConflict {
            expected: 1,
            current: 2,
        });
        assert_eq!(StoredResult::of(&miss), None);
        let taken = Err(Error::Conflict("email taken".into()));
        assert!(matches!(
            StoredResult::of(&taken),
            Some(StoredResult::Failed(_))
        ));
        assert_eq!(StoredResult::of(&Ok(None)), Some(StoredResult::Deleted));
    }

    #[test]
    fn the_same_id_with_another_body_is_invalid_input() {
        let stored = claimed(1, 10, StoredResult::Deleted);
        assert!(matches!(
            answer_for(&stamp(1, 11), stored.clone()),
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(answer_for(&stamp(2, 10), stored), Ok(StoredResult::Deleted));
    }

    #[test]
    fn an_attempt_in_the_aborted_set_never_takes_over_whichever_attempt_the_row_names() {
        // Settled a1, then a2: the row still names a1, the set holds both.
        let mut stored = claimed(1, 10, StoredResult::Aborted);
        assert_eq!(
            settle_existing(&stamp(2, 10), stored.clone()),
            Ok(SettleExisting::AddAbort)
        );
        stored.aborted.push(2);
        assert!(!may_take_over(&stamp(1, 10), &stored));
        assert!(!may_take_over(&stamp(2, 10), &stored));
        assert_eq!(
            answer_for(&stamp(2, 10), stored.clone()),
            Ok(StoredResult::Aborted)
        );
        assert!(may_take_over(&stamp(3, 10), &stored));
        // Once a3 applied, a late a1 is still answered "aborted", a new a4 the stored row.
        let applied = Claimed {
            attempt: 3,
            result: StoredResult::Deleted,
            ..stored
        };
        assert_eq!(
            answer_for(&stamp(1, 10), applied.clone()),
            Ok(StoredResult::Aborted)
        );
        assert_eq!(
            answer_for(&stamp(4, 10), applied.clone()),
            Ok(StoredResult::Deleted)
        );
        assert_eq!(
            settle_existing(&stamp(1, 10), applied.clone()),
            Ok(SettleExisting::Answer(Settlement::Stored(
                StoredResult::Aborted
            )))
        );
        assert_eq!(
            settle_existing(&stamp(4, 10), applied),
            Ok(SettleExisting::Answer(Settlement::Stored(
                StoredResult::Deleted
            )))
        );
    }

    #[test]
    fn aborted_attempts_survive_their_text_form() {
        for set in [vec![], vec![7], vec![1, u32::MAX, 0]] {
            assert_eq!(decode_attempts(&encode_attempts(&set)).unwrap(), set);
        }
        assert!(matches!(decode_attempts("1,x"), Err(Error::Internal(_))));
    }

    #[test]
    fn only_an_abort_by_another_attempt_of_the_same_body_may_be_taken_over() {
        let aborted = claimed(1, 10, StoredResult::Aborted);
        assert!(may_take_over(&stamp(2, 10), &aborted));
        assert!(!may_take_over(&stamp(1, 10), &aborted));
        assert!(!may_take_over(&stamp(2, 11), &aborted));
        assert!(!may_take_over(
            &stamp(2, 10),
            &claimed(1, 10, StoredResult::Deleted)
        ));
    }
}
