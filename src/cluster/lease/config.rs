//! The lease's three durations and the rules that tie them together (DESIGN §6 L4).
//!
//! * **TTL** — how long a contender must see a holder's record unchanged before it may take the
//!   holder's shards over; also the longest a holder may serve from one renew.
//! * **Renew interval** — how often the holder renews. `TTL ≥ 4 × renew` leaves three more
//!   renews to get through after any single lost one before validity runs out.
//! * **Margin `m`** — a renew sent at `s` makes the holder valid until `s + TTL − m` on its own
//!   clock, while the contender waits `TTL` on *its* clock. With both clocks within ±ρ of real
//!   time the holder's validity ends first iff `m ≥ TTL·2ρ/(1+ρ)` (4 ms at 2 s). We ship 50 ms,
//!   which also tolerates a relative drift up to `m/TTL` = 2.5% between the two hosts.
//!
//! The margin is a flag (`--lease-margin-ms`) because it is the one number an operator may
//! need to change without changing the TTL: on hosts whose clocks are known to drift more than
//! the assumed ρ (old hardware, some VMs), raising `m` buys safety at the cost of the holder
//! lapsing `m` earlier after a fault. It can never be set below the safe minimum.

use std::time::Duration;

use crate::error::{Error, Result};

/// Assumed bound on any host's raw monotonic clock rate error, in parts per million
/// (ρ = 10⁻³). The whole safety argument of the lease rests on it (DESIGN §6 "Assumes").
pub const RHO_PPM: u64 = 1000;

/// Shortest renew interval accepted: anything shorter is a busy loop against the database.
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(10);

/// Lease timing of one node (DESIGN §6 L4). Every node of a cluster must use the same TTL:
/// a contender waits its own TTL, a holder counts down its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease period: the unchanged-time a contender needs before a takeover [default 2000 ms].
    pub ttl: Duration,
    /// Time between two renews of this node's `node_leases` row [default 500 ms].
    pub renew_interval: Duration,
    /// Safety margin subtracted from every validity the holder earns [default 50 ms].
    pub margin: Duration,
}

/// Built-in lease defaults (DESIGN §1, §6 L4).
pub mod defaults {
    /// Lease TTL, ms.
    pub const TTL_MS: u64 = 2000;
    /// Renew interval, ms.
    pub const RENEW_MS: u64 = 500;
    /// Margin, ms.
    pub const MARGIN_MS: u64 = 50;
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_millis(defaults::TTL_MS),
            renew_interval: Duration::from_millis(defaults::RENEW_MS),
            margin: Duration::from_millis(defaults::MARGIN_MS),
        }
    }
}

impl LeaseConfig {
    /// The smallest safe margin for `ttl`: `⌈TTL·2ρ/(1+ρ)⌉`, exact in nanoseconds.
    pub fn min_margin(ttl: Duration) -> Duration {
        let num = ttl.as_nanos() * 2 * u128::from(RHO_PPM);
        let den = 1_000_000 + u128::from(RHO_PPM);
        Duration::from_nanos(u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX))
    }

    /// How long past its send time one successful renew keeps the holder valid: `TTL − m`.
    pub fn validity(&self) -> Duration {
        self.ttl.saturating_sub(self.margin)
    }

    /// Refuses timings under which the lease is unsafe or cannot stay held, with a message
    /// naming the flags.
    pub fn validate(&self) -> Result<()> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let refuse = |m: String| Err(Error::InvalidInput(m));
        if self.renew_interval < MIN_RENEW_INTERVAL {
            return refuse(format!(
                "--lease-renew-ms ({}) must be at least {} ms",
                ms(self.renew_interval),
                ms(MIN_RENEW_INTERVAL)
            ));
        }
        if self.ttl < self.renew_interval * 4 {
            return refuse(format!(
                "--lease-ttl-ms ({}) must be at least 4 x --lease-renew-ms ({}): a lease must \
                 survive a lost renew with three more to spare",
                ms(self.ttl),
                ms(self.renew_interval)
            ));
        }
        let min = Self::min_margin(self.ttl);
        if self.margin < min {
            return refuse(format!(
                "--lease-margin-ms ({}) must be at least TTL x 2ρ/(1+ρ) = {:.3} ms for \
                 --lease-ttl-ms {} (ρ = {} ppm clock error); a smaller margin lets a holder \
                 serve after a contender took its shards over",
                ms(self.margin),
                ms(min),
                ms(self.ttl),
                RHO_PPM
            ));
        }
        if self.margin >= self.ttl.saturating_sub(self.renew_interval) {
            return refuse(format!(
                "--lease-margin-ms ({}) must be below --lease-ttl-ms - --lease-renew-ms ({}): \
                 otherwise one renew's validity (TTL - margin) does not outlast the wait for \
                 the next renew and the lease lapses between renews",
                ms(self.margin),
                ms(self.ttl.saturating_sub(self.renew_interval))
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn config(ttl: u64, renew: u64, margin: u64) -> LeaseConfig {
        LeaseConfig {
            ttl: ms(ttl),
            renew_interval: ms(renew),
            margin: ms(margin),
        }
    }

    fn refusal(c: LeaseConfig) -> String {
        match c.validate() {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("{c:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn the_defaults_are_two_seconds_half_a_second_and_fifty_ms_and_valid() {
        let c = LeaseConfig::default();
        assert_eq!(c, config(2000, 500, 50));
        c.validate().unwrap();
        assert_eq!(c.validity(), ms(1950));
    }

    #[test]
    fn the_minimum_margin_is_ttl_times_two_rho_over_one_plus_rho() {
        // 2 s · 2·10⁻³ / 1.001 = 3.996004 ms, rounded up to the nanosecond.
        assert_eq!(
            LeaseConfig::min_margin(ms(2000)),
            Duration::from_nanos(3_996_004)
        );
        assert_eq!(LeaseConfig::min_margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_ttl_under_four_renew_intervals_is_refused() {
        let m = refusal(config(1999, 500, 50));
        assert!(m.contains("4 x --lease-renew-ms"), "{m}");
        config(2000, 500, 50).validate().unwrap();
    }

    #[test]
    fn a_margin_below_the_clock_error_bound_is_refused() {
        let m = refusal(config(2000, 500, 3));
        assert!(m.contains("--lease-margin-ms"), "{m}");
        assert!(m.contains("3.996"), "names the minimum: {m}");
        config(2000, 500, 4).validate().unwrap();
    }

    #[test]
    fn a_margin_that_eats_the_whole_lease_is_refused() {
        for margin in [1500, 2000, 5000] {
            let m = refusal(config(2000, 500, margin));
            assert!(m.contains("lapses between renews"), "{m}");
        }
        config(2000, 500, 1499).validate().unwrap();
    }

    #[test]
    fn a_renew_interval_below_ten_ms_is_refused() {
        let m = refusal(config(2000, 0, 50));
        assert!(m.contains("--lease-renew-ms"), "{m}");
    }
}
