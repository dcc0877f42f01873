//! The depth-first search of Wing & Gong with Lowe's memoisation, over the events of one key
//! (the reductions that keep it fast are described in the parent module).

use std::collections::{HashMap, HashSet};

use super::MAX_CONTEXT_WRITES;
use super::model::{Action, Event, Expect, State, step};

/// A set of event indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    pub(super) fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// Where a failed search got furthest.
#[derive(Debug, Clone)]
pub(super) struct Stuck {
    /// Events linearized there.
    pub(super) done: Bits,
    pub(super) depth: usize,
    pub(super) state: State,
    /// The event whose return could not be passed.
    pub(super) blocked: usize,
    /// The last linearized events that changed the state, in order (what the witness shows as context).
    pub(super) writers: Vec<usize>,
}

/// How a search ended.
#[derive(Debug)]
pub(super) enum SearchEnd {
    Linearizable,
    Stuck(Box<Stuck>),
    Budget,
}

/// What trying an operation did.
enum Take {
    /// Linearized next.
    Taken,
    /// Not legal here (or already explored from here): try the next one.
    Skipped,
    /// A legal observer whose successor configuration already failed. An observer legal now
    /// and minimal can be moved to the front of any linearization from here (it changes
    /// nothing, and every operation before it in that linearization stays legal), so this
    /// configuration fails too: no need to try the others.
    Explored,
}

struct Frame {
    event: usize,
    before: State,
}

/// One depth-first search over the events of a key (Lowe's variant of Wing & Gong).
pub(super) struct Search<'a> {
    events: &'a [Event],
    /// Doubly linked list of entries in time order; node 0 is the head.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Which event and whether it is the call (`true`) or the return, per node.
    node: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
    /// For an indeterminate write, the previous one (by invoke) with the same action. Twins
    /// are interchangeable, and the earlier one is available whenever the later one is, so
    /// the search applies a twin only after its predecessor: k pending identical writes cost
    /// k + 1 configurations instead of 2^k.
    twin: Vec<Option<usize>>,
    /// Versions definite operations reported: `None` when a definite write answered it, else
    /// the value a read saw. In a linearizable history one write makes each version, so an
    /// indeterminate write may produce a version only if no definite write did and every read
    /// of it saw this write's value.
    claimed: HashMap<u64, Option<u32>>,
    state: State,
    done: Bits,
    stack: Vec<Frame>,
    cache: HashSet<(Bits, State)>,
    /// Definite events not yet linearized.
    remaining: usize,
    best: Option<Stuck>,
}

impl<'a> Search<'a> {
    pub(super) fn new(events: &'a [Event], initial: State) -> Self {
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(events.len() * 2);
        for (i, e) in events.iter().enumerate() {
            entries.push((e.invoke, false, i));
            if let Some(ret) = e.ret {
                entries.push((ret, true, i));
            }
        }
        // Calls before returns at equal times: a tie counts as overlap, the permissive choice.
        entries.sort_unstable();
        let n = entries.len();
        let mut node = vec![(NIL, false); n + 1];
        let mut call_node = vec![NIL; events.len()];
        let mut ret_node = vec![None; events.len()];
        for (k, &(_, is_ret, i)) in entries.iter().enumerate() {
            node[k + 1] = (i, !is_ret);
            if is_ret {
                ret_node[i] = Some(k + 1);
            } else {
                call_node[i] = k + 1;
            }
        }
        let mut last: HashMap<Action, usize> = HashMap::new();
        let mut twin = vec![None; events.len()];
        for &(_, is_ret, i) in &entries {
            if !is_ret && events[i].expect == Expect::MayApply {
                twin[i] = last.insert(events[i].action, i);
            }
        }
        let mut claimed = HashMap::new();
        for e in events {
            match e.expect {
                Expect::Read(Some((version, value))) => {
                    claimed.entry(version).or_insert(Some(value));
                }
                Expect::Applied(Some(version)) => {
                    claimed.insert(version, None);
                }
                _ => {}
            }
        }
        let next = (0..=n).map(|k| if k < n { k + 1 } else { NIL }).collect();
        let prev = (0..=n).map(|k| k.wrapping_sub(1)).collect();
        Search {
            events,
            next,
            prev,
            node,
            call_node,
            ret_node,
            twin,
            claimed,
            state: initial,
            done: Bits::new(events.len()),
            stack: Vec::new(),
            cache: HashSet::new(),
            remaining: events.iter().filter(|e| e.expect.is_definite()).count(),
            best: None,
        }
    }

    fn unlink(&mut self, k: usize) {
        let (p, n) = (self.prev[k], self.next[k]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, k: usize) {
        let (p, n) = (self.prev[k], self.next[k]);
        self.next[p] = k;
        if n != NIL {
            self.prev[n] = k;
        }
    }

    /// Tries to linearize event `i` next.
    fn try_take(&mut self, i: usize) -> Take {
        let e = self.events[i];
        if self.twin[i].is_some_and(|t| !self.done.contains(t)) {
            return Take::Skipped;
        }
        let Some(after) = step(self.state, e.action, e.expect) else {
            return Take::Skipped;
        };
        if e.expect == Expect::MayApply && self.claimed_by_another(after) {
            return Take::Skipped;
        }
        self.done.set(i);
        if !self.cache.insert((self.done.clone(), after)) {
            self.done.clear(i);
            return if e.expect.is_observer() {
                Take::Explored
            } else {
                Take::Skipped
            };
        }
        self.stack.push(Frame {
            event: i,
            before: self.state,
        });
        self.state = after;
        self.unlink(self.call_node[i]);
        if let Some(r) = self.ret_node[i] {
            self.unlink(r);
            self.remaining -= 1;
        }
        Take::Taken
    }

    fn claimed_by_another(&self, s: State) -> bool {
        match s {
            State::Live { version, value } => self
                .claimed
                .get(&version)
                .is_some_and(|&seen| seen != Some(value)),
            _ => false,
        }
    }

    /// Undoes linearizations back to the last real choice and returns the node to resume
    /// the walk at, or `None` if the stack is empty (the search is over). An observer that was
    /// legal when taken was no choice (see [`Take::Explored`]): if nothing worked after it,
    /// nothing works without it, so the search backs up past it.
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let frame = self.stack.pop()?;
            let i = frame.event;
            if let Some(r) = self.ret_node[i] {
                self.relink(r);
                self.remaining += 1;
            }
            self.relink(self.call_node[i]);
            self.done.clear(i);
            self.state = frame.before;
            if !self.events[i].expect.is_observer() {
                return Some(self.next[self.call_node[i]]);
            }
        }
    }

    fn remember_stuck(&mut self, blocked: usize) {
        if self
            .best
            .as_ref()
            .is_some_and(|b| b.depth >= self.stack.len())
        {
            return;
        }
        let invoked = self.events[blocked].invoke;
        let mut after = self.state;
        let mut writers = Vec::new();
        for frame in self.stack.iter().rev() {
            if frame.before != after {
                writers.push(frame.event);
                let acked_before = self.events[frame.event].ret.is_some_and(|r| r < invoked);
                if acked_before || writers.len() == MAX_CONTEXT_WRITES {
                    break;
                }
            }
            after = frame.before;
        }
        writers.reverse();
        self.best = Some(Stuck {
            done: self.done.clone(),
            depth: self.stack.len(),
            state: self.state,
            blocked,
            writers,
        });
    }

    /// Runs the search for at most `max_steps` steps; returns the verdict and steps used.
    pub(super) fn run(mut self, max_steps: u64) -> (SearchEnd, u64) {
        let mut k = self.next[HEAD];
        let mut steps = 0;
        loop {
            if self.remaining == 0 {
                return (SearchEnd::Linearizable, steps);
            }
            steps += 1;
            if steps > max_steps {
                return (SearchEnd::Budget, steps);
            }
            let (i, is_call) = if k == NIL { (NIL, false) } else { self.node[k] };
            if is_call {
                match self.try_take(i) {
                    Take::Taken => {
                        k = self.next[HEAD];
                        continue;
                    }
                    Take::Skipped => {
                        k = self.next[k];
                        continue;
                    }
                    Take::Explored => {}
                }
            } else if i != NIL {
                self.remember_stuck(i);
            }
            k = match self.backtrack_or_end() {
                Ok(resume) => resume,
                Err(end) => return (end, steps),
            };
        }
    }

    fn backtrack_or_end(&mut self) -> Result<usize, SearchEnd> {
        self.backtrack().ok_or_else(|| match self.best.take() {
            Some(best) => SearchEnd::Stuck(Box::new(best)),
            None => SearchEnd::Budget,
        })
    }
}
