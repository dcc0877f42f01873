//! Where and when requests go: entry-node routing and the open-loop schedule. Pure functions,
//! no clock and no I/O.
//!
//! **Routing.** Every key remembers its owner (the `x-owner-node` learned when it was created).
//! `--route owner` sends a key's requests to its owner, `non-owner` to the other nodes in turn
//! (so every request pays the remote hop), `any` round-robins over all nodes regardless of
//! the key. When the owner is not among the benchmarked nodes, `owner` falls back to
//! round-robin and the fallback is counted in the result.
//!
//! **Schedule.** At a fixed `--rate` r, request number i (a "ticket") is intended to start at
//! `i / r` seconds after the start. The run is the tickets whose intended start lies before
//! warm-up + duration; the first ones, before warm-up, are not recorded. Ticket bounds are
//! counted with one formula so that "is ticket i in the run" never disagrees with the count.

use std::time::Duration;

/// Which node receives a request for a given key (`--route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// Round-robin over all nodes, ignoring the key's owner.
    Any,
    /// The node that owns the key: no remote hop.
    Owner,
    /// A node that does not own the key: always one remote hop.
    NonOwner,
}

impl Route {
    /// The flag value, as results print it.
    pub fn name(self) -> &'static str {
        match self {
            Route::Any => "any",
            Route::Owner => "owner",
            Route::NonOwner => "non-owner",
        }
    }
}

/// The entry node chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index of the node in the benchmarked list.
    pub node: usize,
    /// The route could not be honoured (owner unknown or not benchmarked): round-robin used.
    pub fallback: bool,
}

/// Picks the entry node among `nodes` (> 0) for a key owned by `owner` (an index, or `None`
/// when unknown). `turn` is a per-request counter that spreads load round-robin.
pub fn choose_node(route: Route, owner: Option<usize>, nodes: usize, turn: u64) -> Choice {
    let nodes = nodes.max(1);
    let round_robin = (turn % nodes as u64) as usize;
    let owner = owner.filter(|o| *o < nodes);
    match (route, owner) {
        (Route::Any, _) => Choice {
            node: round_robin,
            fallback: false,
        },
        (Route::Owner, Some(o)) => Choice {
            node: o,
            fallback: false,
        },
        (Route::NonOwner, Some(o)) if nodes > 1 => {
            let step = 1 + (turn % (nodes as u64 - 1)) as usize;
            Choice {
                node: (o + step) % nodes,
                fallback: false,
            }
        }
        // Unknown owner: every benchmarked node is a non-owner, so round-robin is honest.
        (Route::NonOwner, None) => Choice {
            node: round_robin,
            fallback: false,
        },
        (Route::Owner, None) | (Route::NonOwner, Some(_)) => Choice {
            node: round_robin,
            fallback: true,
        },
    }
}

/// Intended start times of an open-loop run at a fixed rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second; finite and > 0.
    rate: f64,
    /// Tickets whose intended start lies in the warm-up (not recorded).
    warmup_tickets: u64,
    /// Tickets in warm-up + measured phase.
    total_tickets: u64,
}

impl Schedule {
    /// A schedule at `rate` per second (finite, > 0) over `warmup` then `duration`.
    pub fn new(rate: f64, warmup: Duration, duration: Duration) -> Self {
        Self {
            rate,
            warmup_tickets: tickets_before(rate, warmup),
            total_tickets: tickets_before(rate, warmup + duration),
        }
    }

    /// Offset of ticket `i`'s intended start from the start of the run.
    pub fn at(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Whether ticket `i` belongs to the run.
    pub fn contains(&self, i: u64) -> bool {
        i < self.total_tickets
    }

    /// Whether ticket `i` is recorded (it is past the warm-up).
    pub fn is_measured(&self, i: u64) -> bool {
        i >= self.warmup_tickets && self.contains(i)
    }

    /// Number of recorded tickets.
    pub fn measured(&self) -> u64 {
        self.total_tickets - self.warmup_tickets
    }
}

/// Number of tickets `i ≥ 0` with `i / rate < t`.
fn tickets_before(rate: f64, t: Duration) -> u64 {
    (t.as_secs_f64() * rate).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_round_robins_over_all_nodes_whatever_the_owner() {
        let picks: Vec<usize> = (0..6)
            .map(|t| choose_node(Route::Any, Some(2), 3, t).node)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn owner_routing_sends_every_request_to_the_owner() {
        for t in 0..10 {
            assert_eq!(
                choose_node(Route::Owner, Some(1), 3, t),
                Choice {
                    node: 1,
                    fallback: false
                }
            );
        }
    }

    #[test]
    fn owner_routing_falls_back_to_round_robin_when_the_owner_is_unknown() {
        let c = choose_node(Route::Owner, None, 3, 4);
        assert_eq!((c.node, c.fallback), (1, true));
        assert!(choose_node(Route::Owner, Some(7), 3, 0).fallback);
    }

    #[test]
    fn non_owner_routing_never_picks_the_owner_and_spreads_over_the_others() {
        let picks: Vec<usize> = (0..4)
            .map(|t| choose_node(Route::NonOwner, Some(1), 3, t).node)
            .collect();
        assert_eq!(picks, vec![2, 0, 2, 0]);
        assert!(!choose_node(Route::NonOwner, None, 3, 0).fallback);
    }

    #[test]
    fn non_owner_routing_on_one_node_is_a_counted_fallback() {
        let c = choose_node(Route::NonOwner, Some(0), 1, 5);
        assert_eq!((c.node, c.fallback), (0, true));
    }

    #[test]
    fn tickets_are_evenly_spaced_at_the_rate() {
        let s = Schedule::new(1000.0, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(s.at(0), Duration::ZERO);
        assert_eq!(s.at(1), Duration::from_millis(1));
        assert_eq!(s.at(250), Duration::from_millis(250));
    }

    #[test]
    fn warm_up_tickets_are_in_the_run_but_not_measured() {
        let s = Schedule::new(100.0, Duration::from_secs(1), Duration::from_secs(2));
        assert!(s.contains(0) && !s.is_measured(0));
        assert!(s.is_measured(100) && !s.is_measured(99));
        assert!(s.contains(299) && !s.contains(300));
        assert_eq!(s.measured(), 200);
    }

    #[test]
    fn fractional_rates_count_tickets_that_start_before_the_end() {
        // 0.5/s over 3 s: tickets at 0 s, 2 s (4 s is past the end).
        let s = Schedule::new(0.5, Duration::ZERO, Duration::from_secs(3));
        assert_eq!(s.measured(), 2);
        assert!(s.at(1) < Duration::from_secs(3) && !s.contains(2));
    }
}
