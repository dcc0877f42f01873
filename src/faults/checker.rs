//! The linearizability checker of the fault test (DESIGN.md §10).
//!
//! A workload of concurrent clients records every operation it sends as an [`Op`]: which
//! client, which customer (the *key*), what it asked ([`Call`]), when it asked and when the
//! answer came back (offsets from the start of the run, read from one monotonic clock on the
//! recording host) and what the answer was ([`Outcome`]). [`check`] takes that history and
//! decides, per key, whether some sequential order of the operations exists that (a) respects
//! real time — an operation that returned before another was invoked comes first — and (b) is
//! a legal run of the model below. That is linearizability (Herlihy & Wing), the promise of §6.
//!
//! ## The model: one register per customer
//!
//! A customer is `Absent` (never created), `Live { version, value }` or `Deleted` (the server
//! keeps a tombstone, so versions never repeat and a create on a deleted id is refused).
//! Values are opaque strings; workloads write unique ones (`"c3-w17"`), which is what makes
//! checking fast: almost every read pins the write it saw.
//!
//! | call | in `Live { v, .. }` | in `Absent` | in `Deleted` |
//! |---|---|---|---|
//! | `create(x)` | refused | `Live { 1, x }`, answers version 1 | refused |
//! | `get` | answers `(v, value)` | not found | not found |
//! | `put(x, if_match)` | `if_match` absent or `= v`: `Live { v+1, x }`, answers `v+1`; else 412 | 404 | 404 |
//! | `delete(if_match)` | `if_match` absent or `= v`: `Deleted`; else 412 | 404 | 404 |
//!
//! A `PATCH` is recorded as the `put` of the value the response carries.
//!
//! ## Outcomes
//!
//! * [`Outcome::Ok`] — the server answered and the answer is checked against the model.
//! * [`Outcome::Fail`] — definitely not applied. A 404 or 412 still says something about the
//!   state (the model must agree); a 503, or a 409/422 about other fields, says nothing and the
//!   operation is left out of the search.
//! * [`Outcome::Info`] — indeterminate (timeout, 504, connection lost): the write may have
//!   taken effect at any moment after its invoke, or never; its return time is treated as +∞.
//!   An indeterminate read constrains nothing and is left out.
//!
//! What the workload must record: `invoke` just before the request is sent and `complete`
//! just after the answer is read (equal times count as overlapping); a create under the id its
//! response — or a replay with the same `Idempotency-Key` — gave. A create whose id the client
//! never learned is left out: no other operation can name that id either.
//!
//! **Retries.** A write retried with the same `Idempotency-Key` and body is recorded once per
//! attempt, each with its own invoke and return and the key in [`Op::request`]. The attempts
//! are one request — applied at most once, a 503 attempt never — so before the search they are
//! folded into one operation ([`fold_attempts`]): from the invoke of the first attempt not
//! refused to the return of the one with a definite answer, with that answer (a 504 then a
//! replayed 200 is one acknowledged write, not two writes of one value). A value written only
//! by attempts answered 503 is then a value never written, and a read of it cannot be placed:
//! that is how a "503" attempt that applied shows up. [`KeyReport::ops`] counts every attempt.
//!
//! ## The search
//!
//! Wing & Gong's algorithm with Lowe's memoisation, as Porcupine and Knossos' `wgl` implement
//! it: the invoke and return events of a key sit in one list in time order; a depth-first
//! search repeatedly takes an operation whose invoke comes before the first pending return,
//! applies it to the model, and removes it from the list; when it meets a return it cannot
//! pass it backtracks. A cache of (set of linearized operations, model state) cuts every
//! configuration already explored. An indeterminate write never has to be linearized — "never
//! applied" is always a legal choice for it — so the search succeeds as soon as every
//! operation with a definite answer is placed, and tries an indeterminate write only where it
//! applies. Three sound reductions keep that fast with 20 clients and many timeouts:
//!
//! * **Observers go first.** A read (or a 404/412) that is legal now and whose call comes before
//!   the first pending return can be moved to the front of any linearization from here — it
//!   changes nothing — so it is never a choice point: if the search fails after taking it, it
//!   fails without it, and backtracking goes straight past it.
//! * **Unread values are one value.** Only reads compare values, so every value no read
//!   returned is interned as the same one, and identical indeterminate writes ("twins") are
//!   tried only in invoke order: k pending twins cost k + 1 configurations, not 2^k.
//! * **Versions belong to definite operations.** One write makes each version; an
//!   indeterminate write may not produce a version that a definite write answered, or that a
//!   read saw with another value.
//!
//! Each key gets a step budget ([`CheckOptions::max_steps`]); a key that exhausts it is
//! reported as [`Verdict::Unknown`] instead of hanging the test.
//!
//! We write the search rather than use `stateright`'s `LinearizabilityTester`: that tester
//! enumerates interleavings without memoisation (exponential on thousands of operations),
//! assumes each client has at most one operation in flight (a client that timed out moves on
//! while its write may still land), has no budget and no readable witness, and brings in a
//! model checker we do not otherwise need.
//!
//! ## Counts
//!
//! Besides the verdict, two linear scans give numbers that stay readable when the full check
//! fails (both count only operations with definite answers):
//!
//! * **Stale read**: a read that returned a state older than a write acknowledged before the
//!   read was invoked — a version lower than that write's, any customer after an acknowledged
//!   delete, or "not found" after an acknowledged create or put when no delete had even been
//!   invoked before the read returned.
//! * **Lost acknowledged write**: an acknowledged create or put that answered version `v` with
//!   value `x` is lost if (a) a read invoked after it returned saw version `v` with a value
//!   other than `x` (the version was handed out twice: this write was thrown away), or (b) the
//!   key's final read — the one invoked last — was invoked after it returned and saw a version
//!   lower than `v`, or "not found" while no delete was invoked before that read returned. A
//!   workload should end with one read of every key after the faults healed, so (b) judges
//!   every write.
//!
//! ## Failure output
//!
//! For a key that is not linearizable the search remembers the deepest point it reached: the
//! set of operations it managed to linearize, the model state there, and the operation whose
//! return it could not pass. The [`Witness`] shows the writes that led to that state (back to
//! the last one acknowledged before the blocked operation was invoked, so a stale read shows
//! the write it missed), then the operations still pending at that return, less indeterminate
//! writes that can no longer apply. Reads among them that do not matter are dropped as long as
//! the rest, started from that state, stays non-linearizable (dropping a read can never turn a
//! linearizable history into a non-linearizable one, so the shrunk witness is still a genuine
//! failure). Times print in milliseconds; a 2,000-operation key fails in about ten lines.
//!
//! Deliberately not here: histories across keys (each customer is its own register and
//! linearizability is compositional), lists (§6 R2 promises nothing across items), and
//! availability, which the fault tests measure from the same history.

mod counts;
mod history;
mod model;
mod retries;
mod search;

use std::collections::BTreeMap;
use std::fmt;

pub use history::{Call, HistoryError, Op, Outcome, Refusal, Reply, read_jsonl, write_jsonl};
pub use retries::fold_attempts;

use counts::{count_lost_writes, count_stale_reads};
use model::{Action, Event, Expect, State, Values, compile};
use search::{Search, SearchEnd, Stuck};

/// The version a create gives a customer (mirrors `Customer::new`).
pub const FIRST_VERSION: u64 = 1;

/// Default search budget per key, in steps (one step = one list entry visited). A history of
/// 2,000 operations from 10 clients needs a few tens of thousands; the budget leaves room for
/// indeterminate writes and for failing keys, whose search explores more before giving up.
pub const DEFAULT_MAX_STEPS: u64 = 5_000_000;

/// Most operations a printed witness lists, unless more than this many have definite answers;
/// the oldest indeterminate writes are summarised in one line instead.
pub const MAX_WITNESS_OPS: usize = 24;

/// Most writes a witness shows as the context that led to its state.
pub const MAX_CONTEXT_WRITES: usize = 4;

/// Steps allowed to each re-check while a witness is verified and shrunk (bounded effort: a
/// witness holds a few dozen operations, which need a few hundred steps).
const WITNESS_STEPS: u64 = 100_000;

/// Tunables of [`check_with`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Search steps allowed per key before it is reported [`Verdict::Unknown`].
    pub max_steps: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps: DEFAULT_MAX_STEPS,
        }
    }
}

/// The smallest sub-history the checker found that explains a failure.
#[derive(Debug, Clone)]
pub struct Witness {
    /// How many operations the deepest linearization reached, of how many to place.
    pub depth: usize,
    /// Operations the search had to place (definite answers and indeterminate writes).
    pub total: usize,
    /// The model state at that point, in words.
    pub state: String,
    /// The writes that led to that state, in the order the search placed them: back to the
    /// last one acknowledged before the blocked operation was invoked (at most
    /// [`MAX_CONTEXT_WRITES`]), so a stale read shows the write it missed.
    pub writers: Vec<Op>,
    /// The offending operations, in invoke order: started from `state`, no order of them is
    /// legal (see `verified`).
    pub ops: Vec<Op>,
    /// The operation whose return the search could not pass.
    pub blocked: Op,
    /// Whether `ops` alone, started from `state`, was confirmed non-linearizable (false when
    /// the failure depends on later operations too; `ops` is then where the search stopped).
    pub verified: bool,
}

/// The verdict on one key.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Some legal sequential order respects real time.
    Linearizable,
    /// None does; the witness shows where.
    NotLinearizable(Box<Witness>),
    /// The search budget ran out first.
    Unknown {
        /// Steps spent.
        steps: u64,
    },
}

/// The result for one customer.
#[derive(Debug, Clone)]
pub struct KeyReport {
    /// The customer id.
    pub key: String,
    /// Operations recorded for it.
    pub ops: usize,
    /// Search steps spent.
    pub steps: u64,
    /// The linearizability verdict.
    pub verdict: Verdict,
    /// Reads older than a write acknowledged before they were invoked.
    pub stale_reads: usize,
    /// Acknowledged writes that later states do not descend from.
    pub lost_writes: usize,
}

impl KeyReport {
    /// Linearizable, with no stale read and no lost write.
    pub fn is_ok(&self) -> bool {
        matches!(self.verdict, Verdict::Linearizable)
            && self.stale_reads == 0
            && self.lost_writes == 0
    }
}

/// The checker's answer for a whole history.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per key, sorted by key.
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// Every key linearizable, no stale read, no lost write. A key whose search ran out of
    /// budget is not ok: the fault test must decide, not guess.
    pub fn is_ok(&self) -> bool {
        self.keys.iter().all(KeyReport::is_ok)
    }
    /// Operations in the history.
    pub fn ops(&self) -> usize {
        self.keys.iter().map(|k| k.ops).sum()
    }
    /// Keys found not linearizable.
    pub fn not_linearizable(&self) -> usize {
        self.count(|v| matches!(v, Verdict::NotLinearizable(_)))
    }
    /// Keys whose search ran out of budget.
    pub fn unknown(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Unknown { .. }))
    }
    /// Stale reads over all keys.
    pub fn stale_reads(&self) -> usize {
        self.keys.iter().map(|k| k.stale_reads).sum()
    }
    /// Lost acknowledged writes over all keys.
    pub fn lost_writes(&self) -> usize {
        self.keys.iter().map(|k| k.lost_writes).sum()
    }
    fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.keys.iter().filter(|k| f(&k.verdict)).count()
    }
}

/// Checks a history with the default options.
pub fn check(history: &[Op]) -> Report {
    check_with(history, &CheckOptions::default())
}

/// Checks every key of `history` on its own and aggregates the results.
pub fn check_with(history: &[Op], options: &CheckOptions) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys = by_key
        .into_iter()
        .map(|(key, recorded)| {
            let folded = fold_attempts(&recorded);
            let mut ops: Vec<&Op> = folded.iter().map(|op| op.as_ref()).collect();
            ops.sort_by_key(|op| op.invoke);
            let mut report = check_key(key, &ops, options);
            report.ops = recorded.len();
            report
        })
        .collect();
    Report { keys }
}

fn check_key(key: &str, ops: &[&Op], options: &CheckOptions) -> KeyReport {
    let mut values = Values::new(ops);
    let events = compile(ops, &mut values);
    let (end, steps) = Search::new(&events, State::Absent).run(options.max_steps);
    let verdict = match end {
        SearchEnd::Linearizable => Verdict::Linearizable,
        SearchEnd::Budget => Verdict::Unknown { steps },
        SearchEnd::Stuck(stuck) => {
            let witness = witness(ops, &events, &stuck, &values);
            Verdict::NotLinearizable(Box::new(witness))
        }
    };
    KeyReport {
        key: key.to_owned(),
        ops: ops.len(),
        steps,
        verdict,
        stale_reads: count_stale_reads(ops),
        lost_writes: count_lost_writes(ops),
    }
}

/// Whether `subset` of `events`, started from `state`, cannot be linearized.
fn fails_from(events: &[Event], subset: &[usize], state: State) -> bool {
    let sub: Vec<Event> = subset.iter().map(|&i| events[i]).collect();
    matches!(
        Search::new(&sub, state).run(WITNESS_STEPS).0,
        SearchEnd::Stuck(_)
    )
}

/// An indeterminate write that no state reachable from `s` lets apply: leaving it out of a
/// witness changes nothing (versions only grow, and a deleted customer stays deleted).
fn can_never_apply(e: Event, s: State) -> bool {
    if e.expect != Expect::MayApply {
        return false;
    }
    match (s, e.action) {
        (State::Deleted, _) | (State::Live { .. }, Action::Create(_)) => true,
        (State::Live { version, .. }, Action::Put(_, Some(m)) | Action::Delete(Some(m))) => {
            m < version
        }
        _ => false,
    }
}

/// Builds the witness from the deepest point of a failed search (see the module doc).
fn witness(ops: &[&Op], events: &[Event], stuck: &Stuck, values: &Values) -> Witness {
    let horizon = events[stuck.blocked].ret.unwrap_or(u64::MAX);
    let mut pending: Vec<usize> = (0..events.len())
        .filter(|&i| !stuck.done.contains(i) && events[i].invoke <= horizon)
        .filter(|&i| !can_never_apply(events[i], stuck.state))
        .collect();
    let verified = fails_from(events, &pending, stuck.state);
    if verified {
        for candidate in pending.clone() {
            if candidate == stuck.blocked || !events[candidate].expect.is_observer() {
                continue;
            }
            let without: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&i| i != candidate)
                .collect();
            if fails_from(events, &without, stuck.state) {
                pending = without;
            }
        }
    }
    let op_of = |i: usize| ops[events[i].op].clone();
    Witness {
        depth: stuck.depth,
        total: events.len(),
        state: values.describe(stuck.state),
        writers: stuck.writers.iter().map(|&i| op_of(i)).collect(),
        ops: pending.into_iter().map(op_of).collect(),
        blocked: op_of(stuck.blocked),
        verified,
    }
}

impl Witness {
    /// The operations printed: at most [`MAX_WITNESS_OPS`], leaving out the oldest
    /// indeterminate writes first (never the blocked operation), in invoke order.
    pub fn shown(&self) -> Vec<&Op> {
        let infos = self
            .ops
            .iter()
            .filter(|op| op.outcome == Outcome::Info)
            .count();
        let mut skip = self.ops.len().saturating_sub(MAX_WITNESS_OPS).min(infos);
        let mut shown = Vec::with_capacity(self.ops.len() - skip);
        for op in &self.ops {
            if skip > 0 && op.outcome == Outcome::Info {
                skip -= 1;
            } else {
                shown.push(op);
            }
        }
        shown
    }
}

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "    the search linearized {} of {} operations, reaching {}",
            self.depth, self.total, self.state
        )?;
        if !self.writers.is_empty() {
            writeln!(f, "    after these writes:")?;
        }
        for writer in &self.writers {
            writeln!(f, "      {writer}")?;
        }
        let intro = if self.verified {
            "no order of these is legal from there"
        } else {
            "the search could not get past these (the failure also involves later operations)"
        };
        writeln!(f, "    {intro}:")?;
        let shown = self.shown();
        let hidden = self.ops.len() - shown.len();
        if hidden > 0 {
            writeln!(
                f,
                "      … {hidden} earlier indeterminate writes that could still apply"
            )?;
        }
        for op in shown {
            let mark = if *op == self.blocked {
                "   ← cannot be placed"
            } else {
                ""
            };
            writeln!(f, "      {op}{mark}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    /// A summary line, then one paragraph per key that is not ok.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} keys, {} ops; {} not linearizable, {} unknown (budget exhausted); \
             {} stale reads, {} lost acknowledged writes",
            if self.is_ok() { "OK" } else { "FAILED" },
            self.keys.len(),
            self.ops(),
            self.not_linearizable(),
            self.unknown(),
            self.stale_reads(),
            self.lost_writes()
        )?;
        for key in self.keys.iter().filter(|k| !k.is_ok()) {
            let verdict = match &key.verdict {
                Verdict::Linearizable => "linearizable".to_owned(),
                Verdict::NotLinearizable(_) => "NOT linearizable".to_owned(),
                Verdict::Unknown { steps } => format!("unknown after {steps} steps"),
            };
            writeln!(
                f,
                "  key {}: {} ops, {verdict}, {} stale reads, {} lost writes",
                key.key, key.ops, key.stale_reads, key.lost_writes
            )?;
            if let Verdict::NotLinearizable(witness) = &key.verdict {
                write!(f, "{witness}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::model::step;
    use super::*;

    const KEY: &str = "k";

    fn at(ms: f64) -> Duration {
        Duration::from_secs_f64(ms / 1000.0)
    }

    fn op(client: u32, from: f64, to: f64, call: Call, outcome: Outcome) -> Op {
        Op {
            client,
            key: KEY.to_owned(),
            call,
            invoke: at(from),
            complete: at(to),
            outcome,
            request: None,
        }
    }

    fn create(client: u32, from: f64, to: f64, value: &str) -> Op {
        let call = Call::Create {
            value: value.to_owned(),
        };
        op(
            client,
            from,
            to,
            call,
            Outcome::Ok(Reply::Created { version: 1 }),
        )
    }

    fn put(client: u32, from: f64, to: f64, value: &str, outcome: Outcome) -> Op {
        op(
            client,
            from,
            to,
            Call::Put {
                value: value.to_owned(),
                if_match: None,
            },
            outcome,
        )
    }

    fn put_if(client: u32, span: (f64, f64), value: &str, if_match: u64, outcome: Outcome) -> Op {
        let call = Call::Put {
            value: value.to_owned(),
            if_match: Some(if_match),
        };
        op(client, span.0, span.1, call, outcome)
    }

    fn written(version: u64) -> Outcome {
        Outcome::Ok(Reply::Written { version })
    }

    fn get(client: u32, from: f64, to: f64, version: u64, value: &str) -> Op {
        let reply = Reply::Found {
            version,
            value: value.to_owned(),
        };
        op(client, from, to, Call::Get, Outcome::Ok(reply))
    }

    fn get_missing(client: u32, from: f64, to: f64) -> Op {
        op(client, from, to, Call::Get, Outcome::Ok(Reply::NotFound))
    }

    fn delete(client: u32, from: f64, to: f64) -> Op {
        op(
            client,
            from,
            to,
            Call::Delete { if_match: None },
            Outcome::Ok(Reply::Deleted),
        )
    }

    fn only(report: &Report) -> &KeyReport {
        assert_eq!(report.keys.len(), 1, "{report}");
        &report.keys[0]
    }

    fn assert_linearizable(history: &[Op]) -> Report {
        let report = check(history);
        assert!(
            matches!(only(&report).verdict, Verdict::Linearizable),
            "{report}"
        );
        report
    }

    fn assert_not_linearizable(history: &[Op]) -> (Report, Witness) {
        let report = check(history);
        let Verdict::NotLinearizable(witness) = &only(&report).verdict else {
            panic!("expected a violation:\n{report}");
        };
        let witness = (**witness).clone();
        assert!(!report.is_ok());
        (report, witness)
    }

    fn attempt(mut op: Op, request: &str) -> Op {
        op.request = Some(request.to_owned());
        op
    }

    const REFUSED: Outcome = Outcome::Fail(Refusal::Rejected);

    #[test]
    fn a_write_answered_503_whose_value_is_read_later_is_not_linearizable() {
        // Every attempt of the request answered 503: its value was never written.
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            attempt(put(1, 2.0, 3.0, "a", REFUSED), "r1"),
            attempt(put(1, 4.0, 5.0, "a", REFUSED), "r1"),
            get(2, 10.0, 11.0, 2, "a"),
        ];
        let (_, witness) = assert_not_linearizable(&history);
        assert_eq!(witness.blocked, history[3]);
    }

    #[test]
    fn a_value_read_before_the_retry_that_applied_it_was_sent_is_not_linearizable() {
        // Attempt 1 answered 503 (never applies), attempt 2 applied: nobody can read the value
        // before attempt 2 was sent.
        let early = vec![
            create(0, 0.0, 1.0, "x"),
            attempt(put(1, 2.0, 3.0, "a", REFUSED), "r1"),
            get(2, 4.0, 5.0, 2, "a"),
            attempt(put(1, 6.0, 7.0, "a", written(2)), "r1"),
        ];
        assert_not_linearizable(&early);
        let mut in_time = early.clone();
        in_time[2] = get(2, 6.5, 8.0, 2, "a");
        assert!(assert_linearizable(&in_time).is_ok());
    }

    #[test]
    fn a_504_then_a_replayed_200_of_the_same_request_is_one_acknowledged_write() {
        // Attempt 1 applied but its answer was lost (504); a read saw it; attempt 2 is answered
        // from the stored result: the same version.
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            attempt(put(1, 2.0, 3.0, "a", Outcome::Info), "r1"),
            get(2, 4.0, 5.0, 2, "a"),
            attempt(put(1, 6.0, 7.0, "a", written(2)), "r1"),
            get(2, 8.0, 9.0, 2, "a"),
        ];
        let report = assert_linearizable(&history);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.ops(), 5, "every attempt is counted");
        // Judged as two writes of one value, the same history could not be placed: that is
        // why attempts carry their request id.
        let unlinked: Vec<Op> = history
            .iter()
            .cloned()
            .map(|op| Op {
                request: None,
                ..op
            })
            .collect();
        assert_not_linearizable(&unlinked);
    }

    #[test]
    fn a_request_applied_twice_is_not_linearizable() {
        // The retry applied again instead of replaying: version 3 carries the value too.
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            attempt(put(1, 2.0, 3.0, "a", Outcome::Info), "r1"),
            get(2, 4.0, 5.0, 2, "a"),
            attempt(put(1, 6.0, 7.0, "a", written(3)), "r1"),
        ];
        assert_not_linearizable(&history);
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            put(1, 2.0, 3.0, "a", written(2)),
            get(2, 4.0, 5.0, 2, "a"),
            put_if(0, (6.0, 7.0), "b", 2, written(3)),
            put_if(
                1,
                (8.0, 9.0),
                "c",
                2,
                Outcome::Fail(Refusal::PreconditionFailed),
            ),
            get(2, 10.0, 11.0, 3, "b"),
            op(
                0,
                12.0,
                13.0,
                Call::Delete { if_match: Some(3) },
                Outcome::Ok(Reply::Deleted),
            ),
            get_missing(1, 14.0, 15.0),
            put(2, 16.0, 17.0, "d", Outcome::Fail(Refusal::NotFound)),
            put(2, 18.0, 19.0, "e", Outcome::Fail(Refusal::Rejected)),
        ];
        let report = assert_linearizable(&history);
        assert!(report.is_ok(), "{report}");
        assert_eq!(
            (report.ops(), report.stale_reads(), report.lost_writes()),
            (10, 0, 0)
        );
    }

    #[test]
    fn concurrent_writes_with_overlapping_reads_are_linearizable_in_either_order() {
        for (first, second) in [("a", "b"), ("b", "a")] {
            let version_of = |v: &str| if v == first { 2 } else { 3 };
            let history = vec![
                create(0, 0.0, 1.0, "x"),
                put(1, 2.0, 10.0, "a", written(version_of("a"))),
                put(2, 3.0, 11.0, "b", written(version_of("b"))),
                get(3, 2.5, 12.0, 1, "x"),
                get(4, 4.0, 12.0, 2, first),
                get(5, 5.0, 12.5, 3, second),
                get(3, 13.0, 14.0, 3, second),
            ];
            let report = assert_linearizable(&history);
            assert!(report.is_ok(), "{report}");
        }
    }

    #[test]
    fn a_stale_read_is_not_linearizable_and_is_counted() {
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            put(1, 2.0, 3.0, "a", written(2)),
            get(2, 4.0, 5.0, 1, "x"),
            get(2, 6.0, 7.0, 2, "a"),
        ];
        let (report, witness) = assert_not_linearizable(&history);
        assert_eq!((report.stale_reads(), report.lost_writes()), (1, 0));
        assert_eq!(witness.blocked, history[2]);
        assert_eq!(witness.writers, vec![history[1].clone()]);
        assert!(witness.verified);
        let text = report.to_string();
        assert!(text.contains("v1 \"x\"   ← cannot be placed"), "{text}");
    }

    #[test]
    fn a_write_the_final_read_does_not_descend_from_is_counted_lost() {
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            put(1, 2.0, 3.0, "a", written(2)),
            put(1, 4.0, 5.0, "b", written(3)),
            get(2, 6.0, 7.0, 2, "a"),
        ];
        let (report, _) = assert_not_linearizable(&history);
        assert_eq!((report.lost_writes(), report.stale_reads()), (1, 1));
    }

    #[test]
    fn a_version_handed_out_twice_counts_the_overwritten_write_lost() {
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            put(1, 2.0, 3.0, "a", written(2)),
            put(2, 4.0, 5.0, "b", written(2)),
            get(3, 6.0, 7.0, 2, "b"),
        ];
        let (report, _) = assert_not_linearizable(&history);
        assert_eq!((report.lost_writes(), report.stale_reads()), (1, 0));
    }

    #[test]
    fn an_indeterminate_write_may_or_may_not_have_happened() {
        let unknown = put(1, 2.0, 3.0, "a", Outcome::Info);
        let happened = vec![
            create(0, 0.0, 1.0, "x"),
            unknown.clone(),
            get(2, 5.0, 6.0, 2, "a"),
        ];
        let never = vec![
            create(0, 0.0, 1.0, "x"),
            unknown.clone(),
            get(2, 5.0, 6.0, 1, "x"),
            get(2, 100.0, 101.0, 1, "x"),
        ];
        let late = vec![
            create(0, 0.0, 1.0, "x"),
            unknown,
            get(2, 5.0, 6.0, 1, "x"),
            get(2, 100.0, 101.0, 2, "a"),
        ];
        for history in [happened, never, late] {
            assert!(assert_linearizable(&history).is_ok());
        }
    }

    #[test]
    fn an_indeterminate_write_cannot_take_effect_before_it_was_invoked() {
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            get(2, 2.0, 3.0, 2, "a"),
            put(1, 4.0, 5.0, "a", Outcome::Info),
        ];
        assert_not_linearizable(&history);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_not_linearizable() {
        let history = vec![create(0, 0.0, 1.0, "x"), get(1, 2.0, 3.0, 2, "ghost")];
        let (_, witness) = assert_not_linearizable(&history);
        assert_eq!(witness.ops, vec![history[1].clone()]);
    }

    #[test]
    fn a_version_repeated_by_a_create_after_a_delete_is_not_linearizable() {
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            put(0, 2.0, 3.0, "a", written(2)),
            delete(0, 4.0, 5.0),
            create(0, 6.0, 7.0, "y"),
        ];
        assert_not_linearizable(&history);
        let mut refused = history.clone();
        refused[3].outcome = Outcome::Fail(Refusal::Rejected);
        assert!(assert_linearizable(&refused).is_ok());
    }

    #[test]
    fn a_412_while_the_version_matched_is_not_linearizable() {
        let refused = put_if(
            1,
            (2.0, 3.0),
            "a",
            1,
            Outcome::Fail(Refusal::PreconditionFailed),
        );
        assert_not_linearizable(&[create(0, 0.0, 1.0, "x"), refused.clone()]);
        // A concurrent write that may have landed first explains the 412.
        let explained = vec![
            create(0, 0.0, 1.0, "x"),
            refused,
            put(2, 1.5, 4.0, "b", written(2)),
        ];
        assert!(assert_linearizable(&explained).is_ok());
    }

    #[test]
    fn a_write_applied_despite_a_mismatched_if_match_is_not_linearizable() {
        let history = vec![
            create(0, 0.0, 1.0, "x"),
            put(1, 2.0, 3.0, "a", written(2)),
            put_if(2, (4.0, 5.0), "b", 1, written(3)),
        ];
        assert_not_linearizable(&history);
    }

    #[test]
    fn a_long_witness_leaves_out_the_oldest_indeterminate_writes_first() {
        let mut ops: Vec<Op> = (0..30)
            .map(|n| put(n, f64::from(n), 1000.0, &format!("u{n}"), Outcome::Info))
            .collect();
        let blocked = get(1, 31.0, 32.0, 1, "x");
        ops.push(blocked.clone());
        let witness = Witness {
            depth: 1,
            total: 32,
            state: "version 2".to_owned(),
            writers: vec![],
            ops: ops.clone(),
            blocked,
            verified: true,
        };
        let shown = witness.shown();
        assert_eq!(shown.len(), MAX_WITNESS_OPS);
        assert_eq!(shown.last(), ops.last().as_ref());
        assert_eq!(shown[0], &ops[ops.len() - MAX_WITNESS_OPS]);
        let text = witness.to_string();
        assert!(text.contains("… 7 earlier indeterminate writes"), "{text}");
        assert!(text.contains("← cannot be placed"), "{text}");
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut history = vec![create(0, 0.0, 1.0, "x"), get(1, 2.0, 3.0, 1, "x")];
        let mut other = vec![
            create(0, 0.0, 1.0, "y"),
            put(1, 2.0, 3.0, "a", written(2)),
            get(2, 4.0, 5.0, 1, "y"),
        ];
        for op in &mut other {
            op.key = "other".to_owned();
        }
        history.extend(other);
        let report = check(&history);
        assert_eq!(report.keys.len(), 2);
        assert_eq!((report.not_linearizable(), report.stale_reads()), (1, 1));
        let text = report.to_string();
        assert!(
            text.starts_with("FAILED: 2 keys, 5 ops; 1 not linearizable"),
            "{text}"
        );
        assert!(
            text.contains("key other:") && !text.contains("key k:"),
            "{text}"
        );
    }

    // --- generated histories ---------------------------------------------------------------

    /// SplitMix64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A real register driven by `clients` concurrent clients: every operation takes effect at
    /// a random instant inside its interval, in that order; 2% of writes end indeterminate
    /// (half of those applied). Returns the history and the value of every version.
    fn simulate(clients: u32, total: usize, seed: u64) -> (Vec<Op>, Vec<String>) {
        simulate_with(clients, total, seed, 50)
    }

    fn simulate_with(
        clients: u32,
        total: usize,
        seed: u64,
        info_one_in: u64,
    ) -> (Vec<Op>, Vec<String>) {
        let mut rng = Rng(seed);
        // (effect, invoke, return, client), all in µs.
        let mut planned = Vec::with_capacity(total);
        for client in 0..clients {
            let mut t = 1_000 + rng.below(500);
            for _ in 0..total / clients as usize {
                let effect = t + rng.below(2_000);
                let ret = effect + rng.below(2_000);
                planned.push((effect, t, ret, client));
                t = ret + rng.below(500);
            }
        }
        planned.sort_unstable();
        let us = Duration::from_micros;
        let mut history = vec![create(0, 0.0, 0.5, "c0-w0")];
        let mut versions = vec![String::new(), "c0-w0".to_owned()];
        let mut seen = vec![1; clients as usize];
        for (n, (_, invoke, ret, client)) in planned.into_iter().enumerate() {
            let current = versions.len() as u64 - 1;
            let value = format!("c{client}-w{n}");
            let (call, outcome) = match rng.below(10) {
                0..5 => {
                    let reply = Reply::Found {
                        version: current,
                        value: versions[current as usize].clone(),
                    };
                    (Call::Get, Outcome::Ok(reply))
                }
                choice => {
                    let if_match = (choice >= 8).then_some(seen[client as usize]);
                    let applies = if_match.is_none_or(|v| v == current);
                    let indeterminate = rng.below(info_one_in) == 0;
                    let applies = applies && !(indeterminate && rng.below(2) == 0);
                    if applies {
                        versions.push(value.clone());
                    }
                    let outcome = match (indeterminate, applies) {
                        (true, _) => Outcome::Info,
                        (false, true) => written(current + 1),
                        (false, false) => Outcome::Fail(Refusal::PreconditionFailed),
                    };
                    (Call::Put { value, if_match }, outcome)
                }
            };
            if let Outcome::Ok(Reply::Found { version, .. } | Reply::Written { version }) = outcome
            {
                seen[client as usize] = version;
            }
            let key = KEY.to_owned();
            history.push(Op {
                client,
                key,
                call,
                invoke: us(invoke),
                complete: us(ret),
                outcome,
                request: None,
            });
        }
        (history, versions)
    }

    #[test]
    fn twenty_clients_with_many_indeterminate_writes_check_within_a_small_budget() {
        for (clients, one_in) in [(20, 50), (20, 10), (5, 3)] {
            let (history, _) = simulate_with(clients, 2_000, 5, one_in);
            let report = check_with(
                &history,
                &CheckOptions {
                    max_steps: DEFAULT_MAX_STEPS / 5,
                },
            );
            assert!(
                report.is_ok(),
                "{clients} clients, 1 in {one_in} indeterminate:\n{report}"
            );
        }
    }

    #[test]
    fn a_generated_history_of_two_thousand_operations_checks_quickly() {
        let (history, versions) = simulate(10, 2_000, 7);
        assert!(versions.len() > 300, "the history should write a lot");
        let started = Instant::now();
        let report = check(&history);
        let elapsed = started.elapsed();
        assert!(report.is_ok(), "{report}");
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
        assert!(
            report.keys[0].steps < DEFAULT_MAX_STEPS / 10,
            "steps {}",
            report.keys[0].steps
        );
    }

    #[test]
    fn a_generated_history_with_one_stale_read_fails_with_a_short_witness() {
        let clients = 10;
        let (mut history, versions) = simulate(clients, 2_000, 11);
        // The first read in the second half after which an acknowledged write of version ≥ 2
        // completed: make it return the version before that write.
        let (index, acked) = (history.len() / 2..history.len())
            .find_map(|i| {
                let read = &history[i];
                if read.call != Call::Get {
                    return None;
                }
                let acked = history
                    .iter()
                    .filter(|w| w.complete < read.invoke)
                    .filter_map(|w| match w.outcome {
                        Outcome::Ok(Reply::Written { version }) => Some(version),
                        _ => None,
                    })
                    .max()?;
                (acked >= 2).then_some((i, acked))
            })
            .expect("a read after an acknowledged write");
        let older = acked - 1;
        let value = versions[older as usize].clone();
        history[index].outcome = Outcome::Ok(Reply::Found {
            version: older,
            value,
        });

        let started = Instant::now();
        let report = check(&history);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            (report.stale_reads(), report.lost_writes()),
            (1, 0),
            "{report}"
        );
        let Verdict::NotLinearizable(witness) = &report.keys[0].verdict else {
            panic!("expected a violation:\n{report}");
        };
        assert_eq!(witness.blocked, history[index]);
        assert!(witness.verified);
        assert!(
            (1..=clients as usize).contains(&witness.ops.len()),
            "witness of {} ops:\n{report}",
            witness.ops.len()
        );
        assert!(
            (1..=MAX_CONTEXT_WRITES).contains(&witness.writers.len()),
            "{report}"
        );
        let lines = report.to_string().lines().count();
        assert!(
            lines <= witness.ops.len() + witness.writers.len() + 5,
            "{report}"
        );
    }

    #[test]
    fn an_exhausted_budget_is_reported_unknown_not_ok() {
        let (history, _) = simulate(5, 200, 3);
        let report = check_with(&history, &CheckOptions { max_steps: 10 });
        assert!(
            matches!(report.keys[0].verdict, Verdict::Unknown { steps: 11 }),
            "{report}"
        );
        assert_eq!(report.unknown(), 1);
        assert!(!report.is_ok());
        assert!(
            report.to_string().contains("unknown after 11 steps"),
            "{report}"
        );
    }

    /// Every order of every subset, no cache, no reductions: the definition, for small histories.
    fn brute_force_linearizable(history: &[Op]) -> bool {
        fn place(events: &[Event], placed: &mut [bool], s: State) -> bool {
            let open = |j: usize| !placed[j] && events[j].expect.is_definite();
            if !(0..events.len()).any(open) {
                return true;
            }
            for i in 0..events.len() {
                if placed[i] {
                    continue;
                }
                let minimal = (0..events.len())
                    .all(|j| placed[j] || events[j].ret.is_none_or(|r| r >= events[i].invoke));
                let Some(next) = minimal
                    .then(|| step(s, events[i].action, events[i].expect))
                    .flatten()
                else {
                    continue;
                };
                placed[i] = true;
                if place(events, placed, next) {
                    return true;
                }
                placed[i] = false;
            }
            false
        }
        let mut ops: Vec<&Op> = history.iter().collect();
        ops.sort_by_key(|op| op.invoke);
        let events = compile(&ops, &mut Values::new(&ops));
        place(&events, &mut vec![false; events.len()], State::Absent)
    }

    /// Changes one thing a server could get wrong (or a client could misrecord).
    fn mutate(history: &mut [Op], versions: &[String], rng: &mut Rng) {
        let i = 1 + rng.below(history.len() as u64 - 1) as usize;
        let op = &mut history[i];
        let any_value = versions[rng.below(versions.len() as u64) as usize].clone();
        op.outcome = match (rng.below(5), &op.outcome) {
            (0, Outcome::Ok(Reply::Found { version, value })) => Outcome::Ok(Reply::Found {
                version: version.saturating_sub(1),
                value: value.clone(),
            }),
            (1, Outcome::Ok(Reply::Found { version, .. })) => Outcome::Ok(Reply::Found {
                version: *version,
                value: any_value,
            }),
            (0 | 1, Outcome::Ok(Reply::Written { version })) => written(version + 1),
            (2, _) => Outcome::Fail(Refusal::PreconditionFailed),
            (3, _) => Outcome::Info,
            _ => Outcome::Fail(Refusal::NotFound),
        };
    }

    #[test]
    fn the_search_agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng(99);
        let (mut agreed_ok, mut agreed_bad) = (0, 0);
        for seed in 0..3_000 {
            let (mut history, versions) = simulate_with(3, 7, seed, 3);
            if seed % 2 == 1 {
                mutate(&mut history, &versions, &mut rng);
            }
            let expected = brute_force_linearizable(&history);
            let report = check(&history);
            let found = matches!(report.keys[0].verdict, Verdict::Linearizable);
            assert_eq!(found, expected, "seed {seed}: {history:#?}\n{report}");
            if expected {
                agreed_ok += 1
            } else {
                agreed_bad += 1
            }
        }
        assert!(
            agreed_ok > 1_000 && agreed_bad > 300,
            "{agreed_ok} ok, {agreed_bad} not"
        );
    }
}
