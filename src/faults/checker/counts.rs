//! The two linear scans that give readable numbers even when the full check fails: stale
//! reads and lost acknowledged writes (definitions in the parent module).

use std::time::Duration;

use super::history::{Call, Op, Outcome, Refusal, Reply};

/// A read's result in version terms; `None` = not found.
fn read_result(op: &Op) -> Option<Option<(u64, &str)>> {
    match (&op.call, &op.outcome) {
        (Call::Get, Outcome::Ok(Reply::Found { version, value })) => {
            Some(Some((*version, value.as_str())))
        }
        (Call::Get, Outcome::Ok(Reply::NotFound) | Outcome::Fail(Refusal::NotFound)) => Some(None),
        _ => None,
    }
}

/// An acknowledged write's version; `u64::MAX` stands for an acknowledged delete, which every
/// later state must descend from too.
fn acked_version(op: &Op) -> Option<u64> {
    match (&op.call, &op.outcome) {
        (Call::Create { .. }, Outcome::Ok(Reply::Created { version }))
        | (Call::Put { .. }, Outcome::Ok(Reply::Written { version })) => Some(*version),
        (Call::Delete { .. }, Outcome::Ok(Reply::Deleted)) => Some(u64::MAX),
        _ => None,
    }
}

fn written_value(op: &Op) -> Option<&str> {
    match &op.call {
        Call::Create { value } | Call::Put { value, .. } => Some(value),
        _ => None,
    }
}

/// Earliest invoke of a delete that may have applied (acknowledged or indeterminate).
fn first_delete(ops: &[&Op]) -> Option<Duration> {
    ops.iter()
        .filter(|op| matches!(op.call, Call::Delete { .. }))
        .filter(|op| matches!(op.outcome, Outcome::Ok(_) | Outcome::Info))
        .map(|op| op.invoke)
        .min()
}

/// Stale reads of one key (definition in the module doc).
pub(super) fn count_stale_reads(ops: &[&Op]) -> usize {
    let mut acks: Vec<(Duration, u64)> = ops
        .iter()
        .filter_map(|op| Some((op.complete, acked_version(op)?)))
        .collect();
    acks.sort_unstable();
    // Highest version acknowledged by each ack time, for a binary search per read.
    let mut highest = 0;
    let prefix: Vec<(Duration, u64)> = acks
        .iter()
        .map(|&(t, v)| {
            highest = highest.max(v);
            (t, highest)
        })
        .collect();
    let delete_from = first_delete(ops);
    let mut stale = 0;
    for op in ops {
        let Some(result) = read_result(op) else {
            continue;
        };
        let before = prefix.partition_point(|&(t, _)| t < op.invoke);
        let Some(&(_, acked)) = before.checked_sub(1).and_then(|i| prefix.get(i)) else {
            continue;
        };
        let is_stale = match result {
            Some((version, _)) => version < acked,
            None => acked != u64::MAX && delete_from.is_none_or(|d| d >= op.complete),
        };
        stale += usize::from(is_stale);
    }
    stale
}

/// Acknowledged writes lost (definition in the module doc).
pub(super) fn count_lost_writes(ops: &[&Op]) -> usize {
    let reads: Vec<(&Op, Option<(u64, &str)>)> = ops
        .iter()
        .filter_map(|op| Some((*op, read_result(op)?)))
        .collect();
    let last_read = reads.iter().max_by_key(|(op, _)| op.invoke);
    let delete_from = first_delete(ops);
    let mut lost = 0;
    for op in ops {
        let (Some(version), Some(value)) = (acked_version(op), written_value(op)) else {
            continue;
        };
        let overwritten = reads.iter().any(|(r, seen)| {
            r.invoke > op.complete && seen.is_some_and(|(v, x)| v == version && x != value)
        });
        let vanished = last_read.is_some_and(|(r, seen)| {
            r.invoke > op.complete
                && match seen {
                    Some((v, _)) => *v < version,
                    None => delete_from.is_none_or(|d| d >= r.complete),
                }
        });
        lost += usize::from(overwritten || vanished);
    }
    lost
}
