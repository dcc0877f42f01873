//! Pure decision cores of membership: the failure detector, the re-dial planner and stall
//! detection. No clock, no I/O, no actors: the Membership actor feeds them `now` on every tick
//! and acts on what they return, so every rule here is unit-tested with synthetic time.
//!
//! Failure detection is a timeout on silence: each peer is pinged every heartbeat (at most one
//! ping outstanding); a peer silent for half the failure timeout is *suspected* (logged), for the
//! full timeout it is *evicted*. Trade-off: a short timeout fails over faster but evicts healthy
//! peers that are merely slow (a loaded 2-core machine can stall a process for hundreds of ms);
//! the default 3 s is six heartbeats, which rode out every CPU-saturation run we measured while
//! still moving customers off a frozen node in ~3 s. An eviction costs a re-handshake and cache
//! reloads, never data: fencing keeps double activations safe.
//!
//! Silence is counted only while *we* run on schedule. A process that is itself overloaded
//! (a burst of customer work on two cores) handles ticks and pongs late, so its peers look
//! silent although they answered. Each tick therefore measures its own lateness
//! ([`own_lag`]) and excuses that much of every peer's silence ([`Detector::excuse`]); a gap
//! as long as the whole failure timeout is a stall, after which every peer is forgiven
//! ([`Detector::forgive_all`]). Our lag delays evictions by at most that lag; while we run on
//! schedule nothing is excused.
//!
//! Ticks can be on time while answers still wait in our own queues, so the node also probes
//! itself: a ping to its own Heartbeat actor, sent and received along the same path as the
//! peers' pings ([`Detector::self_probe_due`], [`Detector::self_ack`]). The freshest proof that
//! this path works dates from when the last answered probe was *sent*; how far that lies
//! beyond the ping deadline is how late our own path runs, and a peer is evicted only after
//! the timeout plus that delay (capped at one more timeout, so a node whose own probe never
//! returns still evicts, at twice the timeout). Until the first probe is answered, nothing is
//! added.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Health of one peer.
#[derive(Debug, Clone)]
struct PeerHealth {
    last_ack: Instant,
    ping_sent: Option<Instant>,
    suspected: bool,
}

/// What the detector concluded about a peer on this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Silent for over half the timeout: worth a log line, not yet an eviction.
    Suspect {
        /// Peer name.
        peer: String,
        /// How long it has been silent.
        silent_for: Duration,
    },
    /// Silent for the whole timeout: remove from placement and close its session.
    Evict {
        /// Peer name.
        peer: String,
        /// How long it has been silent.
        silent_for: Duration,
    },
}

/// Heartbeat-based failure detector over named peers.
#[derive(Debug, Clone)]
pub struct Detector {
    timeout: Duration,
    ping_deadline: Duration,
    peers: BTreeMap<String, PeerHealth>,
    /// Send time of the latest answered self-probe: our own path worked at least until then.
    self_heard: Option<Instant>,
    /// Send time of the self-probe in flight, if any.
    self_probe_sent: Option<Instant>,
}

impl Detector {
    /// A detector that evicts after `timeout` of silence; a ping unanswered for
    /// `ping_deadline` may be replaced by a new one.
    pub fn new(timeout: Duration, ping_deadline: Duration) -> Self {
        Self {
            timeout,
            ping_deadline,
            peers: BTreeMap::new(),
            self_heard: None,
            self_probe_sent: None,
        }
    }

    /// Whether to send a self-probe now (none in flight, or the one in flight is past the ping
    /// deadline); marks one as sent.
    pub fn self_probe_due(&mut self, now: Instant) -> bool {
        let due = self
            .self_probe_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.ping_deadline);
        if due {
            self.self_probe_sent = Some(now);
        }
        due
    }

    /// The self-probe in flight was answered (at any time: what counts is when it was sent).
    pub fn self_ack(&mut self) {
        if let Some(sent) = self.self_probe_sent.take() {
            self.self_heard = Some(self.self_heard.map_or(sent, |h| h.max(sent)));
        }
    }

    /// The self-probe in flight failed; the next tick may send another.
    pub fn self_failed(&mut self) {
        self.self_probe_sent = None;
    }

    /// How late our own ping path runs at `now`, capped at the timeout (zero before the first
    /// answered self-probe).
    pub fn own_delay(&self, now: Instant) -> Duration {
        self.self_heard.map_or(Duration::ZERO, |heard| {
            now.saturating_duration_since(heard)
                .saturating_sub(self.ping_deadline)
                .min(self.timeout)
        })
    }

    /// Starts watching `peer`, counting it as heard from at `now`.
    pub fn add(&mut self, peer: &str, now: Instant) {
        self.peers.insert(
            peer.to_owned(),
            PeerHealth {
                last_ack: now,
                ping_sent: None,
                suspected: false,
            },
        );
    }

    /// Stops watching `peer`.
    pub fn remove(&mut self, peer: &str) {
        self.peers.remove(peer);
    }

    /// Peers to ping now (none outstanding, or the outstanding one is past its deadline);
    /// marks them as pinged.
    pub fn pings_due(&mut self, now: Instant) -> Vec<String> {
        let deadline = self.ping_deadline;
        self.peers
            .iter_mut()
            .filter(|(_, h)| {
                h.ping_sent
                    .is_none_or(|t| now.saturating_duration_since(t) >= deadline)
            })
            .map(|(name, h)| {
                h.ping_sent = Some(now);
                name.clone()
            })
            .collect()
    }

    /// A ping to `peer` was answered at `now`.
    pub fn ack(&mut self, peer: &str, now: Instant) {
        if let Some(h) = self.peers.get_mut(peer) {
            h.last_ack = h.last_ack.max(now);
            h.ping_sent = None;
            h.suspected = false;
        }
    }

    /// Whether `peer` has been silent for half the timeout or more (suspected, not evicted).
    pub fn is_suspected(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|h| h.suspected)
    }

    /// A ping to `peer` failed (error or deadline); the next tick may send another.
    pub fn failed(&mut self, peer: &str) {
        if let Some(h) = self.peers.get_mut(peer) {
            h.ping_sent = None;
        }
    }

    /// Verdicts at `now`. Evicted peers are no longer watched. A peer is evicted after the
    /// timeout plus our own delay ([`Detector::own_delay`]).
    pub fn evaluate(&mut self, now: Instant) -> Vec<Verdict> {
        let mut out = Vec::new();
        let evict_after = self.timeout + self.own_delay(now);
        for (name, h) in &mut self.peers {
            let silent_for = now.saturating_duration_since(h.last_ack);
            if silent_for >= evict_after {
                out.push(Verdict::Evict {
                    peer: name.clone(),
                    silent_for,
                });
            } else if silent_for >= self.timeout / 2 && !h.suspected {
                h.suspected = true;
                out.push(Verdict::Suspect {
                    peer: name.clone(),
                    silent_for,
                });
            }
        }
        for v in &out {
            if let Verdict::Evict { peer, .. } = v {
                self.peers.remove(peer);
            }
        }
        out
    }

    /// Excuses `lag` of every peer's silence at `now`: time this process spent running late
    /// (see [`own_lag`]) is not evidence against its peers. Never moves a peer past `now`.
    pub fn excuse(&mut self, lag: Duration, now: Instant) {
        if lag.is_zero() {
            return;
        }
        for h in self.peers.values_mut() {
            h.last_ack = (h.last_ack + lag).min(now).max(h.last_ack);
        }
    }

    /// Forgives silence caused by *our own* stall: after this process was frozen, every peer
    /// looks silent, but the silence is ours. Counts every peer as heard from at `now`.
    pub fn forgive_all(&mut self, now: Instant) {
        self.self_heard = None;
        self.self_probe_sent = None;
        for h in self.peers.values_mut() {
            h.last_ack = now;
            h.ping_sent = None;
            h.suspected = false;
        }
    }
}

/// True when the gap between two ticks shows that this process itself was stalled (frozen,
/// descheduled) for at least `threshold`.
pub fn was_stalled(previous_tick: Instant, now: Instant, threshold: Duration) -> bool {
    now.saturating_duration_since(previous_tick) >= threshold
}

/// How late this process ran between two ticks meant to be `heartbeat` apart: zero while it
/// keeps to schedule (one late tick, up to twice the interval, is jitter), else the whole
/// delay beyond the interval.
pub fn own_lag(previous_tick: Instant, now: Instant, heartbeat: Duration) -> Duration {
    let gap = now.saturating_duration_since(previous_tick);
    if gap < heartbeat * 2 {
        Duration::ZERO
    } else {
        gap - heartbeat
    }
}

/// First retry delay of a failed dial.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between dials of an unreachable address.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct DialState {
    failures: u32,
    next_at: Instant,
    in_flight: bool,
    /// Last time this was a seed's or an admitted member's address (or when it was added).
    kept_at: Instant,
}

/// How long an address that is no seed's and no admitted member's stays in the [`DialPlan`]:
/// a peer that announced it and left, a member evicted long ago. Its own dials (or a seed's
/// discovery) bring a node back after that.
pub const DIAL_FORGET_AFTER: Duration = Duration::from_secs(10 * 60);

/// Most addresses a [`DialPlan`] holds; more are not added (forgotten ones make room).
pub const MAX_DIAL_TARGETS: usize = 256;

/// Which cluster addresses to dial, with exponential backoff per address.
#[derive(Debug, Clone, Default)]
pub struct DialPlan {
    targets: BTreeMap<String, DialState>,
}

/// Backoff after `failures` consecutive failed dials.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    DIAL_BACKOFF_MIN
        .saturating_mul(factor)
        .min(DIAL_BACKOFF_MAX)
}

impl DialPlan {
    /// Adds an address to keep connected to (idempotent); false when the plan is full.
    pub fn want(&mut self, addr: &str, now: Instant) -> bool {
        if !self.targets.contains_key(addr) && self.targets.len() >= MAX_DIAL_TARGETS {
            return false;
        }
        self.targets.entry(addr.to_owned()).or_insert(DialState {
            failures: 0,
            next_at: now,
            in_flight: false,
            kept_at: now,
        });
        true
    }

    /// Forgets addresses that have not been in `keep` (seeds and admitted members' addresses)
    /// for [`DIAL_FORGET_AFTER`]; those in `keep` are refreshed. Returns the forgotten ones.
    pub fn forget_stale(&mut self, now: Instant, keep: &HashSet<String>) -> Vec<String> {
        let mut forgotten = Vec::new();
        self.targets.retain(|addr, st| {
            if keep.contains(addr) {
                st.kept_at = now;
                return true;
            }
            let stale = now.saturating_duration_since(st.kept_at) > DIAL_FORGET_AFTER;
            if stale {
                forgotten.push(addr.clone());
            }
            !stale
        });
        forgotten
    }

    /// How many addresses the plan holds.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the plan holds no address.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Addresses to dial now: wanted, not connected, no dial in flight, backoff elapsed.
    /// Marks them in flight.
    pub fn due(&mut self, now: Instant, connected: &HashSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        for (addr, st) in &mut self.targets {
            if connected.contains(addr) {
                st.failures = 0;
                st.next_at = now;
                continue;
            }
            if !st.in_flight && now >= st.next_at {
                st.in_flight = true;
                out.push(addr.clone());
            }
        }
        out
    }

    /// Records a dial outcome. A "successful" dial only means TCP connected; the session may
    /// still fail authentication, so the address stays on backoff until it shows up as
    /// connected in [`DialPlan::due`].
    pub fn dialed(&mut self, addr: &str, connected_tcp: bool, now: Instant) {
        if let Some(st) = self.targets.get_mut(addr) {
            st.in_flight = false;
            st.failures = st.failures.saturating_add(1);
            let wait = if connected_tcp {
                // Give the handshake time before trying again.
                backoff(st.failures).max(Duration::from_secs(1))
            } else {
                backoff(st.failures)
            };
            st.next_at = now + wait;
        }
    }

    /// Consecutive failures of `addr` (for log throttling).
    pub fn failures(&self, addr: &str) -> u32 {
        self.targets.get(addr).map_or(0, |s| s.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_no_member_has_is_forgotten_after_a_while_and_members_and_seeds_are_kept() {
        let t0 = Instant::now();
        let mut plan = DialPlan::default();
        for addr in ["seed:1", "member:1", "probe:1"] {
            assert!(plan.want(addr, t0));
        }
        let keep: HashSet<String> = ["seed:1", "member:1"].map(String::from).into();
        let later = t0 + DIAL_FORGET_AFTER;
        assert!(plan.forget_stale(later, &keep).is_empty(), "not yet");
        let gone = plan.forget_stale(later + Duration::from_secs(1), &keep);
        assert_eq!(gone, vec!["probe:1".to_string()]);
        assert_eq!(plan.len(), 2);
        // A member evicted at `later` is kept for the whole period after that.
        let keep_seed: HashSet<String> = ["seed:1"].map(String::from).into();
        assert!(
            plan.forget_stale(later + DIAL_FORGET_AFTER, &keep_seed)
                .is_empty()
        );
        let gone = plan.forget_stale(later + DIAL_FORGET_AFTER * 2, &keep_seed);
        assert_eq!(gone, vec!["member:1".to_string()]);
        assert!(plan.due(later + DIAL_FORGET_AFTER * 2, &HashSet::new()) == vec!["seed:1"]);
    }

    #[test]
    fn the_plan_holds_a_bounded_number_of_addresses() {
        let t0 = Instant::now();
        let mut plan = DialPlan::default();
        for i in 0..MAX_DIAL_TARGETS {
            assert!(plan.want(&format!("h{i}:1"), t0));
        }
        assert!(!plan.want("one-more:1", t0));
        assert!(plan.want("h0:1", t0), "a known one is still fine");
        assert_eq!(plan.len(), MAX_DIAL_TARGETS);
    }

    const HB: Duration = Duration::from_millis(500);
    const TIMEOUT: Duration = Duration::from_secs(3);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_peer_that_answers_is_never_suspected() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        for tick in 1..=20 {
            let now = at(t0, tick * 500);
            assert_eq!(d.pings_due(now), vec!["n2".to_string()]);
            d.ack("n2", now);
            assert!(d.evaluate(now).is_empty());
        }
    }

    #[test]
    fn a_silent_peer_is_suspected_at_half_the_timeout_then_evicted_once() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        assert!(d.evaluate(at(t0, 1000)).is_empty());
        assert!(!d.is_suspected("n2"));
        assert!(matches!(
            d.evaluate(at(t0, 1500)).as_slice(),
            [Verdict::Suspect { .. }]
        ));
        assert!(d.is_suspected("n2"));
        assert!(
            d.evaluate(at(t0, 2000)).is_empty(),
            "suspicion is reported once"
        );
        let v = d.evaluate(at(t0, 3000));
        assert_eq!(
            v,
            vec![Verdict::Evict {
                peer: "n2".into(),
                silent_for: TIMEOUT
            }]
        );
        assert!(
            d.evaluate(at(t0, 9000)).is_empty(),
            "an evicted peer is no longer watched"
        );
    }

    #[test]
    fn a_late_answer_clears_suspicion() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        d.evaluate(at(t0, 1600));
        d.ack("n2", at(t0, 2500));
        assert!(d.evaluate(at(t0, 3500)).is_empty());
        assert!(matches!(
            d.evaluate(at(t0, 4100)).as_slice(),
            [Verdict::Suspect { .. }]
        ));
    }

    #[test]
    fn one_ping_is_outstanding_at_a_time_until_its_deadline() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        assert_eq!(d.pings_due(t0).len(), 1);
        assert!(d.pings_due(at(t0, 500)).is_empty());
        assert_eq!(
            d.pings_due(at(t0, 1000)).len(),
            1,
            "deadline passed: ping again"
        );
        d.failed("n2");
        assert_eq!(
            d.pings_due(at(t0, 1100)).len(),
            1,
            "a failed ping frees the slot"
        );
    }

    #[test]
    fn our_own_stall_is_forgiven_rather_than_blamed_on_peers() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        let woke = at(t0, 60_000);
        assert!(was_stalled(at(t0, 0), woke, TIMEOUT));
        d.forgive_all(woke);
        assert!(d.evaluate(woke).is_empty());
        assert!(!was_stalled(at(t0, 0), at(t0, 600), TIMEOUT));
    }

    #[test]
    fn a_node_that_keeps_to_schedule_excuses_nothing() {
        let t0 = Instant::now();
        assert_eq!(own_lag(t0, at(t0, 500), HB), Duration::ZERO);
        assert_eq!(own_lag(t0, at(t0, 999), HB), Duration::ZERO);
        assert_eq!(own_lag(t0, at(t0, 1300), HB), Duration::from_millis(800));
    }

    #[test]
    fn silence_while_we_ran_late_is_not_held_against_peers() {
        // 100 ms heartbeats, eviction after 600 ms; our ticks come 500 ms apart.
        let hb = Duration::from_millis(100);
        let timeout = Duration::from_millis(600);
        let t0 = Instant::now();
        let mut d = Detector::new(timeout, hb * 2);
        d.add("n2", t0);
        let mut last_tick = t0;
        for tick in 1..=4 {
            let now = at(t0, tick * 500);
            d.excuse(own_lag(last_tick, now, hb), now);
            last_tick = now;
            assert!(
                !d.evaluate(now)
                    .iter()
                    .any(|v| matches!(v, Verdict::Evict { .. })),
                "evicted at tick {tick} although the lateness was ours"
            );
        }
        // Back on schedule, a peer that stays silent is evicted after the timeout.
        let mut evicted_at = None;
        for tick in 1..=10 {
            let now = at(last_tick, 0) + hb * tick;
            d.excuse(own_lag(now - hb, now, hb), now);
            if d.evaluate(now)
                .iter()
                .any(|v| matches!(v, Verdict::Evict { .. }))
            {
                evicted_at = Some(tick);
                break;
            }
        }
        assert!(evicted_at.is_some_and(|t| t <= 6), "{evicted_at:?}");
    }

    #[test]
    fn an_excuse_never_moves_a_peer_into_the_future() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        d.excuse(Duration::from_secs(60), at(t0, 100));
        // Counted as heard from at 100 ms at the latest: evicted 3 s after that.
        assert!(
            d.evaluate(at(t0, 3099))
                .iter()
                .all(|v| !matches!(v, Verdict::Evict { .. }))
        );
        assert!(matches!(
            d.evaluate(at(t0, 3100)).as_slice(),
            [Verdict::Evict { .. }]
        ));
    }

    fn evicted(verdicts: &[Verdict]) -> bool {
        verdicts.iter().any(|v| matches!(v, Verdict::Evict { .. }))
    }

    #[test]
    fn a_peer_is_not_evicted_while_our_own_probe_is_stuck_in_our_queues() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        assert!(d.self_probe_due(t0));
        d.self_ack(); // our path worked at t0
        assert!(d.self_probe_due(at(t0, 500)));
        // That probe is still in our queues at 3 s: the silence may be ours.
        assert_eq!(d.own_delay(at(t0, 3000)), Duration::from_secs(2));
        assert!(!evicted(&d.evaluate(at(t0, 3000))));
        // It comes back late; the path worked until it was sent (500 ms), so n2, silent since
        // t0, still gets the timeout plus our delay.
        d.self_ack();
        assert!(!evicted(&d.evaluate(at(t0, 3400))));
        // Once our probes come back promptly again, a peer still silent is evicted.
        assert!(d.self_probe_due(at(t0, 3500)));
        d.self_ack();
        assert!(evicted(&d.evaluate(at(t0, 3600))));
    }

    #[test]
    fn a_node_whose_own_probe_never_returns_still_evicts_at_twice_the_timeout() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        assert!(d.self_probe_due(t0));
        d.self_ack();
        for ms in (500..6000).step_by(500) {
            if d.self_probe_due(at(t0, ms)) {
                d.self_failed();
            }
            assert!(!evicted(&d.evaluate(at(t0, ms))), "at {ms} ms");
        }
        assert!(evicted(&d.evaluate(at(t0, 6000))));
    }

    #[test]
    fn a_healthy_self_probe_adds_nothing() {
        let t0 = Instant::now();
        let mut d = Detector::new(TIMEOUT, HB * 2);
        d.add("n2", t0);
        for tick in 0..=6 {
            let now = at(t0, tick * 500);
            if d.self_probe_due(now) {
                d.self_ack();
            }
        }
        assert_eq!(d.own_delay(at(t0, 3000)), Duration::ZERO);
        assert!(evicted(&d.evaluate(at(t0, 3000))));
    }

    #[test]
    fn backoff_doubles_from_100ms_up_to_5s() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(10), DIAL_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), DIAL_BACKOFF_MAX);
    }

    #[test]
    fn unreachable_addresses_are_retried_with_backoff_and_connected_ones_are_left_alone() {
        let t0 = Instant::now();
        let mut p = DialPlan::default();
        p.want("a:1", t0);
        p.want("b:1", t0);
        let connected: HashSet<String> = ["b:1".to_string()].into();
        assert_eq!(p.due(t0, &connected), vec!["a:1".to_string()]);
        assert!(
            p.due(t0, &connected).is_empty(),
            "one dial in flight per address"
        );
        p.dialed("a:1", false, t0);
        assert!(p.due(at(t0, 150), &connected).is_empty());
        assert_eq!(p.due(at(t0, 250), &connected), vec!["a:1".to_string()]);
        p.dialed("a:1", false, at(t0, 250));
        assert_eq!(p.failures("a:1"), 2);
        // Once connected, failures reset.
        let both: HashSet<String> = ["a:1".to_string(), "b:1".to_string()].into();
        assert!(p.due(at(t0, 10_000), &both).is_empty());
        assert_eq!(p.failures("a:1"), 0);
    }
}
