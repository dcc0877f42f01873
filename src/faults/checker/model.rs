//! The register model of one customer and the compilation of a key's history into the
//! events the search works on (values interned, times in nanoseconds, answers as expectations).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::FIRST_VERSION;
use super::history::{Call, Op, Outcome, Refusal, Reply};

/// The register's state; values are interned per key, so a state is two words and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum State {
    Absent,
    Live { version: u64, value: u32 },
    Deleted,
}

/// A call with its value interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Action {
    Create(u32),
    Read,
    Put(u32, Option<u64>),
    Delete(Option<u64>),
}

/// The answer an operation got, in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// A read saw this (`None` = not found).
    Read(Option<(u64, u32)>),
    /// A write applied and answered this version (`None` for a delete).
    Applied(Option<u64>),
    /// 404.
    Missing,
    /// 412.
    Precondition,
    /// Indeterminate write: applies here, or never.
    MayApply,
    /// A reply that does not fit the call (e.g. a get answered `Created`): never legal.
    Impossible,
}

impl Expect {
    /// Whether the operation has a definite answer the search must place.
    pub(super) fn is_definite(self) -> bool {
        !matches!(self, Expect::MayApply)
    }

    /// Whether the operation never changes the state (dropping it keeps a linearizable
    /// history linearizable).
    pub(super) fn is_observer(self) -> bool {
        matches!(
            self,
            Expect::Read(_) | Expect::Missing | Expect::Precondition
        )
    }
}

/// What the model does with `action` in state `s`.
enum Answer {
    Read(Option<(u64, u32)>),
    Applied(State, Option<u64>),
    Missing,
    Precondition,
    Conflict,
}

fn matches_version(if_match: Option<u64>, version: u64) -> bool {
    if_match.is_none_or(|m| m == version)
}

fn apply(s: State, action: Action) -> Answer {
    match (action, s) {
        (Action::Read, State::Live { version, value }) => Answer::Read(Some((version, value))),
        (Action::Read, _) => Answer::Read(None),
        (Action::Create(value), State::Absent) => {
            let version = FIRST_VERSION;
            Answer::Applied(State::Live { version, value }, Some(version))
        }
        (Action::Create(_), _) => Answer::Conflict,
        (Action::Put(value, m), State::Live { version, .. }) if matches_version(m, version) => {
            let version = version + 1;
            Answer::Applied(State::Live { version, value }, Some(version))
        }
        (Action::Delete(m), State::Live { version, .. }) if matches_version(m, version) => {
            Answer::Applied(State::Deleted, None)
        }
        (Action::Put(..) | Action::Delete(_), State::Live { .. }) => Answer::Precondition,
        (Action::Put(..) | Action::Delete(_), _) => Answer::Missing,
    }
}

/// The state after an operation that got `expect`, or `None` if the model could not have
/// answered that in state `s`.
pub(super) fn step(s: State, action: Action, expect: Expect) -> Option<State> {
    match (apply(s, action), expect) {
        (Answer::Read(got), Expect::Read(want)) if got == want => Some(s),
        (Answer::Read(None), Expect::Missing) => Some(s),
        (Answer::Applied(next, got), Expect::Applied(want)) if got == want => Some(next),
        (Answer::Applied(next, _), Expect::MayApply) => Some(next),
        (Answer::Missing, Expect::Missing) | (Answer::Precondition, Expect::Precondition) => {
            Some(s)
        }
        _ => None,
    }
}

/// Interned values of one key. A value no read returned is indistinguishable from any other
/// such value (only reads compare values), so all of them share [`Values::UNREAD`]; that keeps
/// the state space small when writes end indeterminate.
pub(super) struct Values {
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// Values some read returned.
    read: HashSet<String>,
}

impl Values {
    const UNREAD: u32 = 0;

    pub(super) fn new(ops: &[&Op]) -> Self {
        let read = ops
            .iter()
            .filter_map(|op| match &op.outcome {
                Outcome::Ok(Reply::Found { value, .. }) => Some(value.clone()),
                _ => None,
            })
            .collect();
        let names = vec!["a value no read returned".to_owned()];
        Values {
            ids: HashMap::new(),
            names,
            read,
        }
    }

    /// The id of a written value.
    fn written(&mut self, value: &str) -> u32 {
        if self.read.contains(value) {
            self.intern(value)
        } else {
            Self::UNREAD
        }
    }

    fn intern(&mut self, value: &str) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.ids.insert(value.to_owned(), id);
        self.names.push(value.to_owned());
        id
    }

    pub(super) fn describe(&self, s: State) -> String {
        match s {
            State::Absent => "not created".to_owned(),
            State::Deleted => "deleted".to_owned(),
            State::Live { version, value } => match self.names.get(value as usize) {
                Some(name) if value != Self::UNREAD => format!("version {version} = {name:?}"),
                _ => format!("version {version} = a value no read returned"),
            },
        }
    }
}

/// One operation of a key, compiled for the search.
#[derive(Debug, Clone, Copy)]
pub(super) struct Event {
    pub(super) action: Action,
    pub(super) expect: Expect,
    pub(super) invoke: u64,
    /// `None` = +∞ (indeterminate).
    pub(super) ret: Option<u64>,
    /// Index of the operation in the key's history, for reporting.
    pub(super) op: usize,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Compiles the operations that constrain the search; rejected writes and indeterminate
/// reads are left out.
pub(super) fn compile(ops: &[&Op], values: &mut Values) -> Vec<Event> {
    let mut events = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let action = match &op.call {
            Call::Create { value } => Action::Create(values.written(value)),
            Call::Get => Action::Read,
            Call::Put { value, if_match } => Action::Put(values.written(value), *if_match),
            Call::Delete { if_match } => Action::Delete(*if_match),
        };
        let expect = match (&op.outcome, action) {
            (Outcome::Fail(Refusal::Rejected), _) | (Outcome::Info, Action::Read) => continue,
            (Outcome::Info, _) => Expect::MayApply,
            (Outcome::Fail(Refusal::NotFound), _) | (Outcome::Ok(Reply::NotFound), _) => {
                Expect::Missing
            }
            (Outcome::Fail(Refusal::PreconditionFailed), _) => Expect::Precondition,
            (Outcome::Ok(Reply::Found { version, value }), Action::Read) => {
                Expect::Read(Some((*version, values.intern(value))))
            }
            (Outcome::Ok(Reply::Created { version }), Action::Create(_))
            | (Outcome::Ok(Reply::Written { version }), Action::Put(..)) => {
                Expect::Applied(Some(*version))
            }
            (Outcome::Ok(Reply::Deleted), Action::Delete(_)) => Expect::Applied(None),
            (Outcome::Ok(_), _) => Expect::Impossible,
        };
        let ret = expect.is_definite().then(|| ns(op.complete));
        events.push(Event {
            action,
            expect,
            invoke: ns(op.invoke),
            ret,
            op: i,
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: u32 = 1;
    const Y: u32 = 2;

    fn live(version: u64, value: u32) -> State {
        State::Live { version, value }
    }

    #[test]
    fn a_put_applies_only_when_if_match_names_the_current_version() {
        let s = live(3, X);
        let written = Expect::Applied(Some(4));
        assert_eq!(step(s, Action::Put(Y, None), written), Some(live(4, Y)));
        assert_eq!(step(s, Action::Put(Y, Some(3)), written), Some(live(4, Y)));
        assert_eq!(step(s, Action::Put(Y, Some(2)), written), None);
        assert_eq!(
            step(s, Action::Put(Y, Some(2)), Expect::Precondition),
            Some(s)
        );
        assert_eq!(step(s, Action::Put(Y, Some(3)), Expect::Precondition), None);
        assert_eq!(
            step(s, Action::Put(Y, None), Expect::Applied(Some(5))),
            None
        );
    }

    #[test]
    fn a_create_applies_only_to_an_id_never_used() {
        let created = Expect::Applied(Some(FIRST_VERSION));
        assert_eq!(
            step(State::Absent, Action::Create(X), created),
            Some(live(1, X))
        );
        assert_eq!(step(live(1, X), Action::Create(Y), created), None);
        assert_eq!(step(State::Deleted, Action::Create(Y), created), None);
        assert_eq!(
            step(State::Deleted, Action::Create(Y), Expect::MayApply),
            None
        );
    }

    #[test]
    fn a_deleted_customer_reads_and_writes_as_not_found() {
        let s = State::Deleted;
        assert_eq!(
            step(live(2, X), Action::Delete(Some(2)), Expect::Applied(None)),
            Some(s)
        );
        assert_eq!(step(s, Action::Read, Expect::Read(None)), Some(s));
        assert_eq!(step(s, Action::Read, Expect::Missing), Some(s));
        assert_eq!(step(s, Action::Put(Y, None), Expect::Missing), Some(s));
        assert_eq!(step(s, Action::Read, Expect::Read(Some((2, X)))), None);
    }

    #[test]
    fn a_reply_that_does_not_fit_its_call_is_never_legal() {
        let mut values = Values::new(&[]);
        let get = Op {
            client: 0,
            key: "k".to_owned(),
            call: Call::Get,
            invoke: Duration::ZERO,
            complete: Duration::from_millis(1),
            outcome: Outcome::Ok(Reply::Created { version: 1 }),
            request: None,
        };
        let events = compile(&[&get], &mut values);
        assert_eq!(events[0].expect, Expect::Impossible);
        assert_eq!(
            step(State::Absent, events[0].action, events[0].expect),
            None
        );
    }
}
