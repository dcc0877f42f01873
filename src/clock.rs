//! Every clock the crate reads, in one place, so it is plain which time means what.
//!
//! * **Wall clock** ([`now_ms`], [`now_micros`]): for humans and records only —
//!   `created_at`/`updated_at`, log and report timestamps, and this process start's
//!   incarnation number ([`incarnation`]). It can jump (NTP, an operator), so no safety
//!   decision reads it, and it is never compared across hosts: not even a request's deadline,
//!   which travels as a duration and is counted on the receiver's monotonic clock
//!   ([`crate::cluster::protocol::Deadline`]). (A test-only fault hook can set it off:
//!   `--fault-hook wall-clock-offset=MS`.)
//! * **Holder clock** ([`holder_now`]): `CLOCK_MONOTONIC_RAW` plus the time the host spent
//!   suspended. It is never slewed by NTP and keeps counting through a suspend, which is what
//!   a lease holder needs to count down its own lease (DESIGN §6 L3). Pure code takes time as
//!   an argument; only actor edges read these functions. A test-only fault hook can make it
//!   run at another rate (`--fault-hook clock-rate=R`, [`crate::faults::hooks`]).
//!
//! Deliberately not here: synchronised clocks of any kind. Across hosts the crate sends
//! durations, never instants.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Two suspend-offset readings closer than this are the same offset (DESIGN §6 L3). The
/// offset is the difference of two clock reads taken nanoseconds apart, so it jitters by
/// nanoseconds to microseconds on every host whose boot clock is ahead of its monotonic clock
/// (a laptop after one suspend, a resumed VM, a time namespace); a real suspend adds at least
/// a good fraction of a second. Never compare offsets with `==`.
pub const SUSPEND_TOLERANCE: Duration = Duration::from_millis(1);

/// Whether two suspend offsets differ by a real suspend rather than read jitter.
pub fn suspend_changed(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) >= SUSPEND_TOLERANCE
}

/// The suspend offset to use after `reading`, given the one in use (`current`): the reading
/// only when it differs by a real suspend, so that jitter never moves the holder clock
/// backwards or makes a renew look suspended.
pub fn steady_suspend_offset(current: Option<Duration>, reading: Duration) -> Duration {
    match current {
        Some(c) if !suspend_changed(c, reading) => c,
        _ => reading,
    }
}

/// The suspend offset in use, in ns; `u64::MAX` before the first reading.
static SUSPEND_OFFSET_NS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Wall-clock microseconds since the Unix epoch, for `created_at`/`updated_at`.
pub fn now_micros() -> i64 {
    since_epoch().as_micros() as i64
}

/// A number that tells this process start apart from earlier starts of the same node name:
/// the wall-clock milliseconds at start. Used for logs and peer admission; where a collision
/// would matter (lease rows) a random incarnation is used instead.
pub fn incarnation() -> u64 {
    now_ms()
}

fn since_epoch() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    crate::faults::hooks::wall_clock(now)
}

fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A reading of the holder clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HolderInstant {
    /// `CLOCK_MONOTONIC_RAW + (CLOCK_BOOTTIME − CLOCK_MONOTONIC)`, since an arbitrary origin.
    pub at: Duration,
    /// The suspend offset (`CLOCK_BOOTTIME − CLOCK_MONOTONIC`) at that moment, steadied so
    /// read jitter below [`SUSPEND_TOLERANCE`] never changes it. A lease renew whose send and
    /// reply straddle a change of this offset earns nothing, and a change after a renew ends
    /// the validity it earned (Linux measures suspend only to about a second).
    pub suspended: Duration,
}

/// Reads the holder clock (DESIGN §6 L3). A `clock-rate` fault hook
/// ([`crate::faults::hooks`]) makes it run fast or slow; without one it is the reading itself.
pub fn holder_now() -> HolderInstant {
    let now = holder_now_unscaled();
    HolderInstant {
        at: crate::faults::hooks::holder_clock(now.at),
        ..now
    }
}

/// Reads the holder clock as the host keeps it, whatever the fault hooks say.
pub(crate) fn holder_now_unscaled() -> HolderInstant {
    let boot = read(libc::CLOCK_BOOTTIME);
    let mono = read(libc::CLOCK_MONOTONIC);
    let raw = read(libc::CLOCK_MONOTONIC_RAW);
    let reading = boot.saturating_sub(mono);
    let current = match SUSPEND_OFFSET_NS.load(Ordering::Relaxed) {
        u64::MAX => None,
        ns => Some(Duration::from_nanos(ns)),
    };
    let suspended = steady_suspend_offset(current, reading);
    if Some(suspended) != current {
        SUSPEND_OFFSET_NS.store(suspended.as_nanos() as u64, Ordering::Relaxed);
    }
    HolderInstant {
        at: raw + suspended,
        suspended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_clock_never_goes_backwards() {
        let mut last = holder_now();
        for _ in 0..1000 {
            let now = holder_now();
            assert!(now.at >= last.at, "{now:?} < {last:?}");
            last = now;
        }
    }

    #[test]
    fn the_holder_clock_advances_with_real_time() {
        let a = holder_now();
        std::thread::sleep(Duration::from_millis(20));
        let b = holder_now();
        let elapsed = b.at - a.at;
        assert!(elapsed >= Duration::from_millis(19), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    #[test]
    fn suspend_offset_jitter_is_not_a_suspend_but_a_real_suspend_is() {
        let offset = Duration::from_secs(3600);
        let jittered = offset + Duration::from_nanos(30);
        assert!(!suspend_changed(offset, jittered));
        assert!(!suspend_changed(jittered, offset));
        assert!(suspend_changed(offset, offset + Duration::from_millis(300)));
        assert_eq!(steady_suspend_offset(Some(offset), jittered), offset);
        assert_eq!(
            steady_suspend_offset(Some(offset), offset - Duration::from_micros(20)),
            offset
        );
        let woke = offset + Duration::from_secs(2);
        assert_eq!(steady_suspend_offset(Some(offset), woke), woke);
        assert_eq!(steady_suspend_offset(None, jittered), jittered);
    }

    #[test]
    fn the_suspend_offset_read_here_is_steady() {
        // On a host that was never suspended it is 0; in a time namespace or after a suspend
        // it is large and jittery when read raw. Either way, back-to-back readings agree.
        let first = holder_now().suspended;
        for _ in 0..1000 {
            assert_eq!(holder_now().suspended, first);
        }
    }

    #[test]
    fn wall_clock_readings_agree_in_their_units() {
        let ms = now_ms();
        let us = now_micros();
        assert!(ms > 1_600_000_000_000, "the wall clock is set");
        assert!((us / 1000 - ms as i64).abs() < 1000);
    }
}
