//! Retries of one request, judged as the one operation they are.
//!
//! A client that got 503 or 504 (or no answer) for a write sends it again with the same
//! `Idempotency-Key` and body. Each attempt is recorded as its own [`Op`] with the key in
//! [`Op::request`]; the cluster promises (DESIGN §6 F3, F4) that the request applies at most
//! once, that an attempt answered 503 never applies, and that every attempt after the one that
//! applied is answered with the stored result (a replay: same version). So the attempts are
//! not independent writes of one value — judged apart, an indeterminate first attempt and a
//! replayed second one would be two writes of the same value, and a read between them that saw
//! it could not be placed — they are one operation:
//!
//! * its window starts at the invoke of the first attempt that was not refused (503, 409,
//!   422 ⇒ that attempt never applies, so the effect cannot precede the next attempt's invoke);
//! * it ends with the attempt that got a definite answer, whose answer it takes;
//! * with no definite answer but some indeterminate attempt, it is indeterminate from that
//!   window's start; with every attempt refused, it is refused (left out of the search).
//!
//! That keeps detection: a value written only by refused attempts is a value never written (a
//! read of it cannot be placed), and a read that saw the value before the first attempt not
//! refused was invoked cannot be placed either — both are "a 503 attempt applied".
//!
//! Attempts with different calls (a client bug, not the cluster's), or with different
//! definite answers (a request answered twice, itself a broken promise), are not folded: each
//! stays its own operation and the search judges them apart.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::history::{Op, Outcome, Refusal};

/// The operations of one key with the attempts of each request folded into one (module doc);
/// operations without a request id pass through unchanged. Order is not kept.
pub fn fold_attempts<'a>(ops: &[&'a Op]) -> Vec<Cow<'a, Op>> {
    let mut out = Vec::with_capacity(ops.len());
    let mut by_request: BTreeMap<&str, Vec<&'a Op>> = BTreeMap::new();
    for op in ops {
        match &op.request {
            Some(id) => by_request.entry(id.as_str()).or_default().push(op),
            None => out.push(Cow::Borrowed(*op)),
        }
    }
    for (_, mut attempts) in by_request {
        attempts.sort_by_key(|op| op.invoke);
        match fold(&attempts) {
            Some(folded) => out.push(folded),
            None => out.extend(attempts.into_iter().map(Cow::Borrowed)),
        }
    }
    out
}

/// One request's attempts (in invoke order) as one operation; `None` when they cannot be one
/// (different calls, or different definite answers).
fn fold<'a>(attempts: &[&'a Op]) -> Option<Cow<'a, Op>> {
    let first = *attempts.first()?;
    if attempts.len() == 1 {
        return Some(Cow::Borrowed(first));
    }
    if attempts.iter().any(|a| a.call != first.call) {
        return None;
    }
    let Some(start) = attempts.iter().find(|a| !is_refused(a)) else {
        return Some(Cow::Borrowed(first));
    };
    let definite: Vec<&Op> = attempts
        .iter()
        .copied()
        .filter(|a| !is_refused(a) && a.outcome != Outcome::Info)
        .collect();
    if definite.iter().any(|a| a.outcome != definite[0].outcome) {
        return None;
    }
    let (outcome, complete) = match definite.first() {
        Some(answered) => (answered.outcome.clone(), answered.complete),
        None => (Outcome::Info, start.complete),
    };
    Some(Cow::Owned(Op {
        invoke: start.invoke,
        complete,
        outcome,
        ..first.clone()
    }))
}

/// Refused without saying anything about the state (503, 409, 422): that attempt never
/// applies.
fn is_refused(op: &Op) -> bool {
    matches!(op.outcome, Outcome::Fail(Refusal::Rejected))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::faults::checker::{Call, Reply};

    fn attempt(from_ms: u64, value: &str, outcome: Outcome) -> Op {
        Op {
            client: 1,
            key: "k".to_owned(),
            call: Call::Put {
                value: value.to_owned(),
                if_match: None,
            },
            invoke: Duration::from_millis(from_ms),
            complete: Duration::from_millis(from_ms + 1),
            outcome,
            request: Some("r1".to_owned()),
        }
    }

    fn folded(attempts: &[Op]) -> Vec<Op> {
        let refs: Vec<&Op> = attempts.iter().collect();
        fold_attempts(&refs)
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    const REFUSED: Outcome = Outcome::Fail(Refusal::Rejected);
    const WRITTEN: Outcome = Outcome::Ok(Reply::Written { version: 2 });

    #[test]
    fn attempts_fold_from_the_first_not_refused_to_the_one_answered() {
        let attempts = [
            attempt(0, "a", REFUSED),
            attempt(10, "a", Outcome::Info),
            attempt(20, "a", REFUSED),
            attempt(30, "a", WRITTEN),
        ];
        let one = folded(&attempts);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].invoke, Duration::from_millis(10));
        assert_eq!(one[0].complete, Duration::from_millis(31));
        assert_eq!(one[0].outcome, WRITTEN);
    }

    #[test]
    fn attempts_without_an_answer_fold_to_indeterminate_or_refused() {
        let unknown = folded(&[attempt(0, "a", REFUSED), attempt(10, "a", Outcome::Info)]);
        assert_eq!(unknown.len(), 1);
        assert_eq!(
            (unknown[0].invoke, &unknown[0].outcome),
            (Duration::from_millis(10), &Outcome::Info)
        );
        let refused = folded(&[attempt(0, "a", REFUSED), attempt(10, "a", REFUSED)]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].outcome, REFUSED);
    }

    #[test]
    fn attempts_that_differ_in_call_or_answer_stay_apart() {
        let other_body = [attempt(0, "a", Outcome::Info), attempt(10, "b", WRITTEN)];
        assert_eq!(folded(&other_body).len(), 2);
        let answered_twice = [
            attempt(0, "a", WRITTEN),
            attempt(10, "a", Outcome::Ok(Reply::Written { version: 3 })),
        ];
        assert_eq!(folded(&answered_twice).len(), 2);
        let mut plain = attempt(0, "a", WRITTEN);
        plain.request = None;
        let mut other = attempt(10, "b", WRITTEN);
        other.request = None;
        assert_eq!(folded(&[plain, other]).len(), 2, "no request id, no fold");
    }
}
