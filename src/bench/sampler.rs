//! Deterministic randomness for the load generator: a SplitMix64 generator and the two key
//! samplers, uniform and Zipf.
//!
//! Why our own generator: a run must be reproducible from `--seed` alone (same operations on
//! the same keys in the same order per worker or ticket), and the crate does not depend on
//! `rand`. SplitMix64 is tiny, fast, passes BigCrush, and can be seeded from any `u64`,
//! which lets every worker (closed loop) or every ticket (open loop) derive its own
//! independent stream with [`Rng::derive`].
//!
//! The Zipf sampler precomputes the cumulative distribution once (O(n) memory, built before
//! the run) and draws with one uniform number and a binary search: O(log n) per sample, no
//! rejection loop, exact for any exponent `s ≥ 0`. Key 0 is the most popular.
//!
//! Deliberately not here: cryptographic quality, or sampling without replacement.

/// Golden-ratio increment of SplitMix64.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finalizer: a bijective mix of all 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 pseudo-random generator (Steele, Lea & Flood, 2014).
#[derive(Debug, Clone)]
pub struct Rng {
    /// Advances by [`GOLDEN_GAMMA`] per draw.
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream number `stream` of the run seeded with `seed` (a worker index,
    /// or an open-loop ticket number).
    pub fn derive(seed: u64, stream: u64) -> Self {
        Self::new(mix64(seed) ^ mix64(stream.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[0, n)` (Lemire's multiply-shift; bias below 2⁻³² for any
    /// realistic `n`). Returns 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Picks which key (an index in `0..len`) the next request addresses.
#[derive(Debug, Clone)]
pub enum KeySampler {
    /// Every key equally likely.
    Uniform {
        /// Number of keys.
        len: usize,
    },
    /// Key `k` drawn with probability proportional to `1 / (k + 1)^s`.
    Zipf {
        /// `cdf[k]` = P(key ≤ k); the last entry is exactly 1.
        cdf: Vec<f64>,
    },
}

impl KeySampler {
    /// Uniform over `len` keys.
    pub fn uniform(len: usize) -> Self {
        Self::Uniform { len }
    }

    /// Zipf over `len` keys with exponent `s` (finite, ≥ 0; 0 is uniform, ~1 is the classic
    /// "hot keys" web workload). The caller validates `s`.
    pub fn zipf(len: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(len);
        let mut total = 0.0;
        for k in 0..len {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Self::Zipf { cdf }
    }

    /// Number of keys sampled over.
    pub fn len(&self) -> usize {
        match self {
            Self::Uniform { len } => *len,
            Self::Zipf { cdf } => cdf.len(),
        }
    }

    /// Whether there are no keys (then [`KeySampler::sample`] returns 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next key index, always in `0..len` (0 when there are no keys).
    pub fn sample(&self, rng: &mut Rng) -> usize {
        match self {
            Self::Uniform { len } => rng.below(*len as u64) as usize,
            Self::Zipf { cdf } => {
                let u = rng.next_f64();
                cdf.partition_point(|&c| c <= u)
                    .min(cdf.len().saturating_sub(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(sampler: &KeySampler, seed: u64, draws: usize) -> Vec<usize> {
        let mut rng = Rng::new(seed);
        let mut counts = vec![0; sampler.len()];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn the_same_seed_gives_the_same_stream_and_other_seeds_do_not() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..8).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        let (a, b) = (draw(7), draw(7));
        let mut other = Rng::new(8);
        assert_eq!(a, b);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn derived_streams_differ_per_stream_number() {
        let firsts: std::collections::HashSet<u64> =
            (0..1000).map(|s| Rng::derive(1, s).next_u64()).collect();
        assert_eq!(firsts.len(), 1000);
    }

    #[test]
    fn uniform_floats_are_in_the_unit_interval() {
        let mut rng = Rng::new(3);
        for _ in 0..100_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn below_stays_in_range_and_zero_is_harmless() {
        let mut rng = Rng::new(5);
        assert!((0..10_000).all(|_| rng.below(7) < 7));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn uniform_sampler_spreads_keys_evenly() {
        let counts = histogram(&KeySampler::uniform(10), 11, 100_000);
        for (k, c) in counts.iter().enumerate() {
            assert!((9_000..11_000).contains(c), "key {k} drawn {c} times");
        }
    }

    #[test]
    fn zipf_samples_are_in_range_and_deterministic_for_a_seed() {
        let sampler = KeySampler::zipf(1000, 0.99);
        let a = histogram(&sampler, 42, 50_000);
        let b = histogram(&sampler, 42, 50_000);
        assert_eq!(a, b);
        assert_eq!(a.iter().sum::<usize>(), 50_000);
    }

    #[test]
    fn zipf_near_one_picks_the_top_key_far_more_often_than_the_median() {
        let counts = histogram(&KeySampler::zipf(1000, 0.99), 1, 200_000);
        let top = counts[0];
        let median = counts[500].max(1);
        assert!(top > 50 * median, "top {top}, median {median}");
        // P(key 0) = 1/H(1000, 0.99) ≈ 0.13.
        assert!((20_000..32_000).contains(&top), "top {top}");
    }

    #[test]
    fn zipf_with_exponent_zero_is_uniform() {
        let counts = histogram(&KeySampler::zipf(4, 0.0), 9, 40_000);
        assert!(
            counts.iter().all(|c| (9_000..11_000).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn samplers_over_no_keys_return_zero_without_panicking() {
        let mut rng = Rng::new(1);
        assert_eq!(KeySampler::zipf(0, 1.0).sample(&mut rng), 0);
        assert_eq!(KeySampler::uniform(0).sample(&mut rng), 0);
        assert!(KeySampler::zipf(0, 1.0).is_empty());
    }
}
