//! Simulations: one holder, one contender, one database, two drifting clocks, a network with
//! delays, and a cut. They check the property the whole lease exists for — *a holder never
//! believes it holds a shard at a real time after another node's takeover of it committed* —
//! and show that the checker does catch overlaps when the assumptions are broken (drift above
//! `m/TTL`, or no margin), so the fault tests can rely on seeing them.
//!
//! Real time is in nanoseconds. Each host reads its own [`Clock`]; the holder is a
//! [`HolderLease`], the contender an [`Observer`], the database executes renews, reads and the
//! conditional takeover exactly as DESIGN §6 L2/L5 word them. After the takeover commits, the
//! holder's belief is checked at that instant and after each of its later events (between its
//! events belief can only end, never start).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const SHARD: u16 = 7;
const A_INC: u64 = 0xa;
const B_INC: u64 = 0xb;
const MS: u64 = 1_000_000;

/// A host clock: `reading = offset + real · (1 + ppm/10⁶)`, floored to the nanosecond.
#[derive(Debug, Clone, Copy)]
struct Clock {
    offset_ns: u64,
    ppm: i64,
}

impl Clock {
    fn exact() -> Self {
        Self {
            offset_ns: 0,
            ppm: 0,
        }
    }

    fn drifting(ppm: i64) -> Self {
        Self { offset_ns: 0, ppm }
    }

    /// Real nanoseconds this clock takes to advance by `d` (hosts tick on their own clocks).
    fn real_span(&self, d: Duration) -> u64 {
        let ns = d.as_nanos() * 1_000_000 / (1_000_000 + self.ppm) as u128;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    fn read(&self, real_ns: u64) -> HolderInstant {
        let real = i128::from(real_ns);
        let drift = (real * i128::from(self.ppm)).div_euclid(1_000_000);
        let ns = i128::from(self.offset_ns) + real + drift;
        HolderInstant {
            at: Duration::from_nanos(u64::try_from(ns).unwrap_or(0)),
            suspended: Duration::ZERO,
        }
    }
}

/// One run's knobs.
#[derive(Debug, Clone)]
struct Scenario {
    config: LeaseConfig,
    holder_clock: Clock,
    contender_clock: Clock,
    /// From this real time on, nothing the holder sends reaches the database.
    cut_ns: u64,
    /// The contender polls at `phase + j · poll_interval` of its own clock (in production it
    /// sees the table in its own renew replies, every renew interval; polling faster is the
    /// adversarial case: it starts counting as soon as a value commits).
    contender_phase_ns: u64,
    poll_interval: Duration,
    /// Message delays are drawn from `0..=max_delay_ns`, `zero_pct`% of them exactly 0.
    max_delay_ns: u64,
    zero_pct: u64,
    /// Percentage of renew replies lost on the way back to the holder.
    drop_pct: u64,
    /// Each holder renew is sent up to this late.
    jitter_ns: u64,
    seed: u64,
}

impl Scenario {
    /// Zero delays, the contender polling every millisecond: the schedule that lets a
    /// contender start counting as early as possible after each renew commits.
    fn tight(config: LeaseConfig, holder_clock: Clock, contender_clock: Clock) -> Self {
        Self {
            config,
            holder_clock,
            contender_clock,
            cut_ns: 5000 * MS,
            contender_phase_ns: 0,
            poll_interval: Duration::from_millis(1),
            max_delay_ns: 0,
            zero_pct: 100,
            drop_pct: 0,
            jitter_ns: 0,
            seed: 1,
        }
    }
}

/// What a run showed.
#[derive(Debug, Clone, Default)]
struct Outcome {
    /// Real time the takeover committed.
    takeover_ns: Option<u64>,
    /// Longest the holder still believed it could serve after the takeover committed.
    overlap: Option<Duration>,
    /// Whether the holder ever could serve (a run where it never did proves nothing).
    holder_served: bool,
}

#[derive(Debug, Clone)]
enum Event {
    HolderTick,
    RenewAtDb {
        k: u64,
        epoch: u64,
    },
    RenewReply {
        k: u64,
        epoch: u64,
        result: DbResult,
    },
    ContenderTick,
    PollAtDb,
    PollReply {
        table: Vec<NodeLeaseRow>,
    },
    TakeoverAtDb(Revocation),
}

#[derive(Debug, Clone, Copy)]
enum DbResult {
    Updated,
    NoRows,
    OtherIncarnation,
}

struct Queued {
    at: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Earliest first out of a max-heap; ties in the order they were scheduled.
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

struct Sim {
    s: Scenario,
    queue: BinaryHeap<Queued>,
    order: u64,
    rng: u64,
    row_a: NodeLeaseRow,
    row_b: NodeLeaseRow,
    holder: HolderLease,
    observer: Observer,
    takeover_in_flight: bool,
    outcome: Outcome,
}

impl Sim {
    fn new(s: Scenario) -> Self {
        let start = s.holder_clock.read(0);
        let mut holder = HolderLease::new(s.config, A_INC, start);
        holder.registered(1, start);
        assert!(holder.granted(SHARD, 1, 1));
        let observer = Observer::new(s.config.ttl, "b", B_INC);
        let row = |node: &str, incarnation| NodeLeaseRow {
            node: node.into(),
            incarnation,
            epoch: 1,
            seq: 0,
            ttl: s.config.ttl,
        };
        let mut sim = Self {
            rng: s.seed,
            queue: BinaryHeap::new(),
            order: 0,
            row_a: row("a", A_INC),
            row_b: row("b", B_INC),
            holder,
            observer,
            takeover_in_flight: false,
            outcome: Outcome::default(),
            s,
        };
        sim.schedule(0, Event::HolderTick);
        sim.schedule(sim.s.contender_phase_ns, Event::ContenderTick);
        sim
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.order += 1;
        self.queue.push(Queued {
            at,
            order: self.order,
            event,
        });
    }

    /// splitmix64: deterministic per seed, no dependency.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn percent(&mut self, pct: u64) -> bool {
        self.next_random() % 100 < pct
    }

    fn delay(&mut self) -> u64 {
        if self.s.max_delay_ns == 0 || self.percent(self.s.zero_pct) {
            return 0;
        }
        self.next_random() % (self.s.max_delay_ns + 1)
    }

    fn horizon(&self) -> u64 {
        self.s.cut_ns + self.s.max_delay_ns * 3 + self.s.config.ttl.as_nanos() as u64 * 20
    }

    fn run(mut self) -> Outcome {
        while let Some(Queued { at, event, .. }) = self.queue.pop() {
            let holder_event = matches!(event, Event::HolderTick | Event::RenewReply { .. });
            self.handle(at, event);
            if holder_event {
                self.check_holder(at);
            }
        }
        self.outcome
    }

    fn handle(&mut self, now: u64, event: Event) {
        match event {
            Event::HolderTick => self.holder_tick(now),
            Event::RenewAtDb { k, epoch } => self.renew_at_db(now, k, epoch),
            Event::RenewReply { k, epoch, result } => {
                let at = self.s.holder_clock.read(now);
                match result {
                    DbResult::Updated => {
                        self.holder.renew_succeeded(k, epoch, at);
                    }
                    DbResult::NoRows => {
                        self.holder.renew_lost(epoch);
                    }
                    DbResult::OtherIncarnation => {
                        self.holder.renew_superseded();
                    }
                }
            }
            Event::ContenderTick => {
                if self.outcome.takeover_ns.is_none() && now < self.horizon() {
                    let d = self.delay();
                    self.schedule(now + d, Event::PollAtDb);
                    let next = now + self.s.contender_clock.real_span(self.s.poll_interval);
                    self.schedule(next, Event::ContenderTick);
                }
            }
            Event::PollAtDb => {
                let table = vec![self.row_a.clone(), self.row_b.clone()];
                let d = self.delay();
                self.schedule(now + d, Event::PollReply { table });
            }
            Event::PollReply { table } => self.poll_reply(now, &table),
            Event::TakeoverAtDb(rev) => self.takeover_at_db(now, &rev),
        }
    }

    fn holder_tick(&mut self, now: u64) {
        if now >= self.s.cut_ns {
            return;
        }
        if let Some(renew) = self.holder.renew_sent(self.s.holder_clock.read(now)) {
            let d = self.delay();
            self.schedule(
                now + d,
                Event::RenewAtDb {
                    k: renew.k,
                    epoch: renew.epoch,
                },
            );
        }
        let jitter = match self.s.jitter_ns {
            0 => 0,
            j => self.next_random() % (j + 1),
        };
        let next = now + self.s.holder_clock.real_span(self.s.config.renew_interval) + jitter;
        self.schedule(next, Event::HolderTick);
    }

    fn renew_at_db(&mut self, now: u64, k: u64, epoch: u64) {
        let row = &mut self.row_a;
        let result = if row.incarnation != A_INC {
            DbResult::OtherIncarnation
        } else if row.epoch != epoch {
            DbResult::NoRows
        } else {
            row.seq = k;
            DbResult::Updated
        };
        if !self.percent(self.s.drop_pct) {
            let d = self.delay();
            self.schedule(now + d, Event::RenewReply { k, epoch, result });
        }
    }

    fn poll_reply(&mut self, now: u64, table: &[NodeLeaseRow]) {
        let at = self.s.contender_clock.read(now);
        self.observer.observe(table, at);
        if self.takeover_in_flight || self.outcome.takeover_ns.is_some() {
            return;
        }
        if let Some(rev) = self
            .observer
            .revocable(at)
            .into_iter()
            .find(|r| r.node == "a")
        {
            self.takeover_in_flight = true;
            let d = self.delay();
            self.schedule(now + d, Event::TakeoverAtDb(rev));
        }
    }

    fn takeover_at_db(&mut self, now: u64, rev: &Revocation) {
        self.takeover_in_flight = false;
        let a = &mut self.row_a;
        let unchanged = (a.incarnation, a.epoch, a.seq) == (rev.incarnation, rev.epoch, rev.seq);
        if unchanged && self.outcome.takeover_ns.is_none() {
            a.epoch += 1;
            self.outcome.takeover_ns = Some(now);
            self.check_holder(now);
        }
    }

    fn check_holder(&mut self, now: u64) {
        let at = self.s.holder_clock.read(now);
        let ShardState::Serve { valid_until, .. } = self.holder.shard_state(SHARD, at) else {
            return;
        };
        self.outcome.holder_served = true;
        if self.outcome.takeover_ns.is_some_and(|t| now >= t) {
            let left = valid_until.saturating_sub(at.at);
            self.outcome.overlap = Some(self.outcome.overlap.map_or(left, |o| o.max(left)));
        }
    }
}

fn run(s: Scenario) -> Outcome {
    Sim::new(s).run()
}

fn shipped() -> LeaseConfig {
    LeaseConfig::default()
}

fn assert_no_overlap(o: &Outcome) {
    assert!(o.takeover_ns.is_some(), "the contender took over: {o:?}");
    assert!(o.holder_served, "the holder served before the cut: {o:?}");
    assert_eq!(o.overlap, None, "{o:?}");
}

#[test]
fn exact_clocks_end_the_holders_validity_before_the_takeover() {
    let o = run(Scenario::tight(shipped(), Clock::exact(), Clock::exact()));
    assert_no_overlap(&o);
    // Last renew at 4500 ms; the contender saw it within a poll and confirmed TTL later.
    let takeover = o.takeover_ns.unwrap_or_default();
    assert!((6500 * MS..=6502 * MS).contains(&takeover), "{takeover}");
}

#[test]
fn a_holder_clock_ten_percent_fast_never_overlaps() {
    let o = run(Scenario::tight(
        shipped(),
        Clock::drifting(100_000),
        Clock::exact(),
    ));
    assert_no_overlap(&o);
}

#[test]
fn a_holder_clock_ten_percent_slow_overlaps_and_the_check_sees_it() {
    let o = run(Scenario::tight(
        shipped(),
        Clock::drifting(-100_000),
        Clock::exact(),
    ));
    assert!(o.takeover_ns.is_some());
    // The holder believes for 1950 ms / 0.9 = 2166.7 ms of real time, the contender waited 2000.
    let overlap = o.overlap.expect("a 10% slow holder overlaps");
    assert!(overlap > Duration::from_millis(140), "{overlap:?}");
}

#[test]
fn a_contender_clock_ten_percent_fast_overlaps_and_the_check_sees_it() {
    let o = run(Scenario::tight(
        shipped(),
        Clock::exact(),
        Clock::drifting(100_000),
    ));
    assert!(o.overlap.is_some(), "{o:?}");
}

#[test]
fn relative_drift_just_below_margin_over_ttl_never_overlaps() {
    // m/TTL = 2.5%: a holder 2.4% slow is still safe even on the tightest schedule.
    let o = run(Scenario::tight(
        shipped(),
        Clock::drifting(-24_000),
        Clock::exact(),
    ));
    assert_no_overlap(&o);
}

#[test]
fn relative_drift_above_margin_over_ttl_can_overlap() {
    // 1950 ms / 0.97 = 2010 ms of real belief against a 2000 ms wait.
    let o = run(Scenario::tight(
        shipped(),
        Clock::drifting(-30_000),
        Clock::exact(),
    ));
    assert!(o.overlap.is_some(), "3% > m/TTL: {o:?}");
}

#[test]
fn without_a_margin_clock_error_within_rho_already_overlaps() {
    // Why L4 exists: m = 0 with both clocks at the edge of ρ.
    let config = LeaseConfig {
        margin: Duration::ZERO,
        ..shipped()
    };
    let o = run(Scenario::tight(
        config,
        Clock::drifting(-(RHO_PPM as i64)),
        Clock::drifting(RHO_PPM as i64),
    ));
    assert!(o.overlap.is_some(), "{o:?}");
}

#[test]
fn the_minimum_margin_is_enough_at_the_edge_of_rho() {
    let ttl = Duration::from_millis(2000);
    let config = LeaseConfig {
        ttl,
        renew_interval: Duration::from_millis(500),
        margin: LeaseConfig::min_margin(ttl),
    };
    let o = run(Scenario::tight(
        config,
        Clock::drifting(-(RHO_PPM as i64)),
        Clock::drifting(RHO_PPM as i64),
    ));
    assert_no_overlap(&o);
}

#[test]
fn renew_replies_delayed_past_the_cut_still_never_overlap() {
    let mut s = Scenario::tight(shipped(), Clock::exact(), Clock::exact());
    s.max_delay_ns = 3000 * MS;
    s.zero_pct = 30;
    s.seed = 42;
    assert_no_overlap(&run(s));
}

fn clock_within(max_ppm: i64) -> impl Strategy<Value = Clock> {
    (
        prop_oneof![Just(-max_ppm), Just(max_ppm), -max_ppm..=max_ppm],
        0..u64::MAX / 4,
    )
        .prop_map(|(ppm, offset_ns)| Clock { offset_ns, ppm })
}

type Schedule = (u64, u64, u64, u64, u64, u64, u64, u64);

fn schedule(config: LeaseConfig) -> impl Strategy<Value = Schedule> {
    let ttl = config.ttl.as_nanos() as u64;
    let renew = config.renew_interval.as_nanos() as u64;
    (
        0..=ttl * 5,                          // cut
        0..=renew,                            // contender phase
        prop_oneof![Just(renew), MS..=renew], // poll interval
        prop_oneof![Just(0), 0..=ttl * 2],    // max delay
        0..=100u64,                           // zero-delay %
        0..=50u64,                            // dropped replies %
        prop_oneof![Just(0), 0..=renew],      // jitter
        any::<u64>(),                         // seed
    )
}

fn scenario(
    config: LeaseConfig,
    holder_clock: Clock,
    contender_clock: Clock,
    (cut_ns, phase, poll_ns, max_delay_ns, zero_pct, drop_pct, jitter_ns, seed): Schedule,
) -> Scenario {
    Scenario {
        config,
        holder_clock,
        contender_clock,
        cut_ns,
        contender_phase_ns: phase,
        poll_interval: Duration::from_nanos(poll_ns),
        max_delay_ns,
        zero_pct,
        drop_pct,
        jitter_ns,
        seed,
    }
}

fn tightest_configs() -> impl Strategy<Value = LeaseConfig> {
    (200u64..=3000, 4u32..=8).prop_map(|(ttl_ms, per_ttl)| {
        let ttl = Duration::from_millis(ttl_ms);
        LeaseConfig {
            ttl,
            renew_interval: ttl / per_ttl,
            margin: LeaseConfig::min_margin(ttl),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The core promise, at the smallest margin L4 allows and clocks anywhere within ±ρ.
    #[test]
    fn a_holder_never_believes_it_holds_a_shard_after_a_takeover_committed(
        (config, sched) in tightest_configs().prop_flat_map(|c| (Just(c), schedule(c))),
        holder_clock in clock_within(RHO_PPM as i64),
        contender_clock in clock_within(RHO_PPM as i64),
    ) {
        let o = run(scenario(config, holder_clock, contender_clock, sched));
        prop_assert!(o.takeover_ns.is_some(), "no takeover: {:?}", o);
        prop_assert_eq!(o.overlap, None);
    }

    /// With the shipped 50 ms margin, each clock may be off by 1.2% (relative drift up to
    /// 1.012/0.988 ≈ 2.43% < m/TTL = 2.5%) and still no overlap.
    #[test]
    fn the_shipped_margin_absorbs_relative_drift_below_margin_over_ttl(
        sched in schedule(LeaseConfig::default()),
        holder_clock in clock_within(12_000),
        contender_clock in clock_within(12_000),
    ) {
        let o = run(scenario(LeaseConfig::default(), holder_clock, contender_clock, sched));
        prop_assert!(o.takeover_ns.is_some(), "no takeover: {:?}", o);
        prop_assert_eq!(o.overlap, None);
    }
}
