//! Fault hooks inside the node process, for the multi-process fault tests (DESIGN.md §10:
//! "drop the database actor's replies to one node, stall the writer, skew a node's clock
//! source"). They reproduce, in one process, faults that the network lab cannot: a clock that
//! runs at the wrong rate, replies that are lost on their way back, a message that arrives
//! seconds late (the kernel here has no `sch_netem`).
//!
//! **Only in test builds.** The hooks are compiled only with the `fault-hooks` cargo feature,
//! which the crate's own dev-dependency on itself turns on for `cargo test` (so the binary the
//! integration tests start has them) and nothing turns on for `cargo build` or
//! `cargo build --release`. Without the feature the readers below are inlined constants (the
//! optimiser removes the branches they guard), and a `--fault-hook` flag or a
//! `CUSTOMER_CLUSTER_FAULT_HOOKS` variable stops the node at start-up ([`from_specs`],
//! [`NOT_IN_THIS_BUILD`]): a leftover line in an environment file can never switch lease
//! safety off in a release build. The call sites carry no `cfg`: this module is the one seam.
//!
//! ```text
//!  --fault-hook SPEC (hidden, repeatable; env CUSTOMER_CLUSTER_FAULT_HOOKS, comma list)
//!      │ from_specs() ─ build without `fault-hooks`: start-up error, exit code 1
//!      │ parse()      ─ bad spec: start-up error, exit code 1
//!      ▼
//!  install() ─ loud WARN ─ atomics below ─ SIGUSR1 / SIGUSR2 listener
//!      │
//!      ├── clock::holder_now()          reads holder_clock()       (clock-rate=R)
//!      ├── clock::now_ms/now_micros     read wall_clock()          (wall-clock-offset=MS)
//!      ├── DatabaseClient call/submit   reads db_replies_dropped() (drop-db-replies)
//!      └── Gateway, remote write        reads routed_write_delay() (delay-routed-writes=MS)
//! ```
//!
//! Specs:
//! * `clock-rate=R` (0.1 ≤ R ≤ 10): the holder clock (`clock::holder_now`, which is also the
//!   contender's clock: `observer::contender_reading` is its raw part) advances at R × real time
//!   from the moment the hooks are installed. Every clock the lease safety argument reads is
//!   that one; tokio timers (renew interval, heartbeats, timeouts) keep real time.
//! * `drop-db-replies`: every reply a Database actor sends to this node is discarded when it
//!   arrives; the request itself is delivered and executed, and the caller waits its full
//!   timeout as if the network had eaten the reply. Done on the receiving side because
//!   ractor_cluster does not tell an actor which node a call came from.
//! * `delay-routed-writes=MS`: every write (create, put, patch, delete) this node routes to
//!   another node's Registry is held MS ms before it is sent, while the caller's deadline runs
//!   as usual — a message delayed in the network. The message (with its deadline budget) is
//!   built before the hold, so it arrives with the budget it left with, as a message delayed
//!   in transit does: only the request id's settle (F3) stops it.
//! * `wall-clock-offset=MS` (−3 600 000 ≤ MS ≤ 3 600 000, may be negative): this node's wall
//!   clock reads MS ms off. Nothing that decides anything reads it: not the lease argument,
//!   and not routed requests' deadlines, which travel as durations
//!   ([`crate::cluster::protocol::Deadline`]). Tests use it to show exactly that.
//! * `start=on|off` (default `on`): whether the two switchable hooks above act from the start.
//!   SIGUSR1 turns them on, SIGUSR2 off, at any time (the signal listener runs whenever any
//!   hook is given), so a test can start a healthy cluster and inject the fault mid-run.
//!
//! Off by default, and then the node behaves exactly as without this module: in a build with
//! the feature each reader is one relaxed atomic load, in a build without it a constant.
//! Nothing here is reachable from the network.
//!
//! Deliberately not here: a writer stall and a delayed LOST notice (DESIGN §10 cases 3 and 14
//! are covered in-process); jitter or loss on other messages.

use std::time::Duration;

pub use imp::{db_replies_dropped, enabled, holder_clock, install, routed_write_delay, wall_clock};

/// Whether this build has the fault hooks (the `fault-hooks` cargo feature).
pub const COMPILED_IN: bool = cfg!(feature = "fault-hooks");

/// Why a build without the `fault-hooks` feature refuses every hook.
pub const NOT_IN_THIS_BUILD: &str = "this build has no fault hooks; they exist only in builds \
     with the `fault-hooks` feature, for tests (remove --fault-hook and \
     CUSTOMER_CLUSTER_FAULT_HOOKS)";

/// The rate a `clock-rate` hook may set: slower than 0.1 or faster than 10 would only stall
/// or race the lease code, not tell anything new.
pub const CLOCK_RATE_RANGE: std::ops::RangeInclusive<f64> = 0.1..=10.0;

/// Most ms a routed write may be held (one minute: far beyond any request deadline).
pub const MAX_DELAY_MS: u64 = 60_000;

/// Largest wall-clock offset, either way (an hour).
pub const MAX_WALL_OFFSET_MS: i64 = 3_600_000;

/// One parsed `--fault-hook` spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hook {
    /// The holder clock runs at this rate.
    ClockRate(f64),
    /// Replies of Database actors to this node are discarded.
    DropDbReplies,
    /// Writes routed to other nodes are held this long.
    DelayRoutedWrites(Duration),
    /// The wall clock reads this many ms off (negative: behind).
    WallClockOffset(i64),
    /// Whether the switchable hooks act from the start.
    Start(bool),
}

/// Parses one spec (`clock-rate=0.92`, `drop-db-replies`, `delay-routed-writes=4000`,
/// `start=off`); the error says what is accepted.
pub fn parse(spec: &str) -> Result<Hook, String> {
    let spec = spec.trim();
    let (name, value) = match spec.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (spec, None),
    };
    let bad = |why: &str| format!("bad --fault-hook {spec:?}: {why}");
    match (name, value) {
        ("clock-rate", Some(v)) => match v.parse::<f64>() {
            Ok(r) if CLOCK_RATE_RANGE.contains(&r) => Ok(Hook::ClockRate(r)),
            _ => Err(bad("clock-rate takes a number from 0.1 to 10")),
        },
        ("drop-db-replies", None) => Ok(Hook::DropDbReplies),
        ("delay-routed-writes", Some(v)) => match v.parse::<u64>() {
            Ok(ms) if (1..=MAX_DELAY_MS).contains(&ms) => {
                Ok(Hook::DelayRoutedWrites(Duration::from_millis(ms)))
            }
            _ => Err(bad(
                "delay-routed-writes takes milliseconds from 1 to 60000",
            )),
        },
        ("wall-clock-offset", Some(v)) => match v.parse::<i64>() {
            Ok(ms) if ms != 0 && ms.abs() <= MAX_WALL_OFFSET_MS => Ok(Hook::WallClockOffset(ms)),
            _ => Err(bad(
                "wall-clock-offset takes non-zero milliseconds from -3600000 to 3600000",
            )),
        },
        ("start", Some("on")) => Ok(Hook::Start(true)),
        ("start", Some("off")) => Ok(Hook::Start(false)),
        ("start", _) => Err(bad("start takes on or off")),
        _ => Err(bad(
            "expected clock-rate=R, drop-db-replies, delay-routed-writes=MS, \
             wall-clock-offset=MS or start=on|off",
        )),
    }
}

/// Parses every spec, stopping at the first bad one.
pub fn parse_all(specs: &[String]) -> Result<Vec<Hook>, String> {
    specs.iter().map(|s| parse(s)).collect()
}

/// The hooks the `--fault-hook` specs (or `CUSTOMER_CLUSTER_FAULT_HOOKS`) ask for, as this
/// build can have them: none asked, none given; asked in a build without the `fault-hooks`
/// feature, an error ([`NOT_IN_THIS_BUILD`]), never silently nothing; else [`parse_all`].
pub fn from_specs(specs: &[String]) -> Result<Vec<Hook>, String> {
    accept(specs, COMPILED_IN)
}

/// [`from_specs`] for a build that has the hooks or not.
fn accept(specs: &[String], compiled_in: bool) -> Result<Vec<Hook>, String> {
    if specs.is_empty() {
        Ok(Vec::new())
    } else if !compiled_in {
        Err(format!("{NOT_IN_THIS_BUILD}; given: {}", specs.join(",")))
    } else {
        parse_all(specs)
    }
}

/// `origin + (at − origin) × rate`: a clock that started with real time at `origin`.
pub fn scale(at: Duration, origin: Duration, rate: f64) -> Duration {
    origin + at.saturating_sub(origin).mul_f64(rate)
}

/// The hooks themselves: atomics set once at start-up, read on the paths they fault.
#[cfg(feature = "fault-hooks")]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
    use std::time::Duration;

    use super::{Hook, scale};

    /// Whether any hook was installed (for the log and `enabled()`).
    static ENABLED: AtomicBool = AtomicBool::new(false);
    /// `clock-rate` as the bits of an `f64`; 0 = no hook.
    static CLOCK_RATE_BITS: AtomicU64 = AtomicU64::new(0);
    /// The holder-clock reading the scaled clock starts from.
    static CLOCK_ORIGIN: OnceLock<Duration> = OnceLock::new();
    /// Whether `drop-db-replies` was given.
    static DROP_DB_REPLIES: AtomicBool = AtomicBool::new(false);
    /// `delay-routed-writes` in ms; 0 = no hook.
    static DELAY_ROUTED_WRITES_MS: AtomicU64 = AtomicU64::new(0);
    /// `wall-clock-offset` in ms; 0 = no hook.
    static WALL_OFFSET_MS: AtomicI64 = AtomicI64::new(0);
    /// Whether the switchable hooks act now (SIGUSR1 / SIGUSR2).
    static ARMED: AtomicBool = AtomicBool::new(false);

    /// Installs `hooks` (nothing when empty): sets the atomics, warns loudly, and starts the
    /// SIGUSR1/SIGUSR2 listener. Call once, at start-up, inside the tokio runtime.
    pub fn install(hooks: &[Hook]) {
        if hooks.is_empty() {
            return;
        }
        let mut armed = true;
        for hook in hooks {
            match *hook {
                Hook::ClockRate(r) => {
                    let _ = CLOCK_ORIGIN.set(crate::clock::holder_now_unscaled().at);
                    CLOCK_RATE_BITS.store(r.to_bits(), Ordering::Relaxed);
                }
                Hook::DropDbReplies => DROP_DB_REPLIES.store(true, Ordering::Relaxed),
                Hook::DelayRoutedWrites(d) => {
                    DELAY_ROUTED_WRITES_MS.store(d.as_millis() as u64, Ordering::Relaxed)
                }
                Hook::WallClockOffset(ms) => WALL_OFFSET_MS.store(ms, Ordering::Relaxed),
                Hook::Start(on) => armed = on,
            }
        }
        ARMED.store(armed, Ordering::Relaxed);
        ENABLED.store(true, Ordering::Relaxed);
        tracing::warn!(
            hooks = ?hooks,
            armed,
            "fault hooks enabled: this node may break the consistency contract; for tests only \
             (SIGUSR1 turns drop-db-replies and delay-routed-writes on, SIGUSR2 off)"
        );
        tokio::spawn(listen_for_switches());
    }

    /// SIGUSR1 arms the switchable hooks, SIGUSR2 disarms them.
    async fn listen_for_switches() {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut on), Ok(mut off)) = (
            signal(SignalKind::user_defined1()),
            signal(SignalKind::user_defined2()),
        ) else {
            tracing::error!("fault hooks: cannot listen for SIGUSR1/SIGUSR2");
            return;
        };
        loop {
            let armed = tokio::select! {
                Some(()) = on.recv() => true,
                Some(()) = off.recv() => false,
                else => return,
            };
            ARMED.store(armed, Ordering::Relaxed);
            tracing::warn!(armed, "fault hooks switched by signal");
        }
    }

    /// Whether any fault hook is installed.
    pub fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    /// The holder clock `at` as the `clock-rate` hook has it run: `at` itself without the hook.
    pub fn holder_clock(at: Duration) -> Duration {
        let bits = CLOCK_RATE_BITS.load(Ordering::Relaxed);
        if bits == 0 {
            return at;
        }
        let origin = CLOCK_ORIGIN.get().copied().unwrap_or_default();
        scale(at, origin, f64::from_bits(bits))
    }

    /// The wall-clock time since the Unix epoch `since_epoch` as the `wall-clock-offset` hook has
    /// it read: itself without the hook.
    pub fn wall_clock(since_epoch: Duration) -> Duration {
        let ms = WALL_OFFSET_MS.load(Ordering::Relaxed);
        let offset = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            since_epoch + offset
        } else {
            since_epoch.saturating_sub(offset)
        }
    }

    /// Whether replies of Database actors to this node are to be discarded now.
    pub fn db_replies_dropped() -> bool {
        DROP_DB_REPLIES.load(Ordering::Relaxed) && ARMED.load(Ordering::Relaxed)
    }

    /// How long a write routed to another node is held now, if at all.
    pub fn routed_write_delay() -> Option<Duration> {
        let ms = DELAY_ROUTED_WRITES_MS.load(Ordering::Relaxed);
        (ms > 0 && ARMED.load(Ordering::Relaxed)).then(|| Duration::from_millis(ms))
    }
}

/// A build without the `fault-hooks` feature: no state, and every reader a constant the
/// optimiser folds into its call site.
#[cfg(not(feature = "fault-hooks"))]
mod imp {
    use std::time::Duration;

    use super::{Hook, NOT_IN_THIS_BUILD};

    /// Nothing to install: [`super::from_specs`] gives no hooks in this build, so `hooks` is
    /// empty; anything else is a caller that skipped it, and stops here rather than run
    /// without the faults it asked for.
    pub fn install(hooks: &[Hook]) {
        assert!(hooks.is_empty(), "{NOT_IN_THIS_BUILD}");
    }

    /// Never: this build has no fault hooks.
    #[inline(always)]
    pub fn enabled() -> bool {
        false
    }

    /// The holder clock `at`, untouched.
    #[inline(always)]
    pub fn holder_clock(at: Duration) -> Duration {
        at
    }

    /// The wall-clock time `since_epoch`, untouched.
    #[inline(always)]
    pub fn wall_clock(since_epoch: Duration) -> Duration {
        since_epoch
    }

    /// Never: database replies always arrive.
    #[inline(always)]
    pub fn db_replies_dropped() -> bool {
        false
    }

    /// Never: routed writes leave at once.
    #[inline(always)]
    pub fn routed_write_delay() -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_parses_from_its_spec() {
        assert_eq!(parse("clock-rate=0.92"), Ok(Hook::ClockRate(0.92)));
        assert_eq!(parse(" drop-db-replies "), Ok(Hook::DropDbReplies));
        assert_eq!(
            parse("delay-routed-writes=4000"),
            Ok(Hook::DelayRoutedWrites(Duration::from_secs(4)))
        );
        assert_eq!(parse("start=off"), Ok(Hook::Start(false)));
        assert_eq!(
            parse("wall-clock-offset=-5000"),
            Ok(Hook::WallClockOffset(-5000))
        );
        assert_eq!(parse("start=on"), Ok(Hook::Start(true)));
    }

    #[test]
    fn a_bad_spec_is_an_error_that_names_it_and_says_what_is_accepted() {
        for spec in [
            "clock-rate=0",
            "clock-rate=11",
            "clock-rate=fast",
            "clock-rate",
            "drop-db-replies=n2",
            "delay-routed-writes=0",
            "delay-routed-writes=60001",
            "start=maybe",
            "wall-clock-offset=0",
            "wall-clock-offset=3600001",
            "wall-clock-offset=-3600001",
            "stall-writer",
            "",
        ] {
            let err = parse(spec).expect_err(spec);
            assert!(err.contains("--fault-hook"), "{err}");
            assert!(err.contains(&format!("{:?}", spec.trim())), "{err}");
        }
        assert!(parse_all(&["drop-db-replies".into(), "nope".into()]).is_err());
    }

    #[test]
    fn a_build_without_the_feature_refuses_any_hook_and_says_they_exist_only_in_test_builds() {
        for specs in [
            vec!["clock-rate=0.5".to_string()],
            vec!["start=off".into(), "drop-db-replies".into()],
            vec!["bogus".into()],
        ] {
            let err = accept(&specs, false).expect_err("refused");
            assert!(err.starts_with(NOT_IN_THIS_BUILD), "{err}");
            assert!(err.contains("`fault-hooks` feature"), "{err}");
            assert!(err.contains(&specs.join(",")), "{err}");
        }
        assert!(NOT_IN_THIS_BUILD.contains("CUSTOMER_CLUSTER_FAULT_HOOKS"));
    }

    #[test]
    fn no_hooks_asked_is_no_hooks_in_any_build() {
        assert_eq!(accept(&[], false), Ok(Vec::new()));
        assert_eq!(accept(&[], true), Ok(Vec::new()));
    }

    #[test]
    fn a_build_with_the_feature_parses_the_hooks_asked_for() {
        let specs = ["wall-clock-offset=-5000".to_string(), "start=off".into()];
        assert_eq!(
            accept(&specs, true),
            Ok(vec![Hook::WallClockOffset(-5000), Hook::Start(false)])
        );
        assert!(accept(&["bogus".into()], true).is_err());
    }

    #[test]
    fn a_scaled_clock_starts_at_its_origin_and_runs_at_its_rate() {
        let origin = Duration::from_secs(100);
        assert_eq!(scale(origin, origin, 0.5), origin);
        assert_eq!(
            scale(Duration::from_secs(110), origin, 0.5),
            Duration::from_secs(105)
        );
        assert_eq!(
            scale(Duration::from_secs(110), origin, 1.08),
            Duration::from_millis(110_800)
        );
        // Readings from before the origin never go below it (monotonic from there).
        assert_eq!(scale(Duration::from_secs(90), origin, 2.0), origin);
    }

    #[test]
    fn without_hooks_nothing_acts_and_the_clock_is_untouched() {
        // The statics start off; no test in this binary installs hooks.
        assert!(!enabled());
        assert!(!db_replies_dropped());
        assert_eq!(routed_write_delay(), None);
        let at = Duration::from_secs(12345);
        assert_eq!(holder_clock(at), at);
        assert_eq!(wall_clock(at), at);
    }
}
