//! The agent's one pseudo-random generator: splitmix64, for span ids, timer
//! phases and retry jitter. None of these needs cryptographic quality; all
//! need well-spread values, cheaply, without a lock.
//!
//! # Signal safety
//! [`SplitMix64::next_u64`] is arithmetic on a value the caller owns.
//! [`SplitMix64::seeded`] is not for the signal path (it reads the
//! process's random keys through std).

/// splitmix64 (Steele, Lea and Flood): a full-period 64-bit generator with
/// well-mixed output, one add and two multiplies a value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    #[cfg(test)]
    pub(crate) const fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator seeded from std's per-process random keys, the calling
    /// thread and the clock, so no two threads or processes share a sequence.
    pub(crate) fn seeded() -> Self {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u64(super::clock::monotonic_now_ns());
        std::thread::current().id().hash(&mut hasher);
        SplitMix64(hasher.finish())
    }

    /// The next value.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`), with a bias below 2^-32 for the
    /// bounds the agent uses.
    #[inline]
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sequence() {
        // The first outputs for seed 0 from the reference implementation
        // (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn seeded_generators_differ_between_threads() {
        let here = SplitMix64::seeded().next_u64();
        let there = std::thread::spawn(|| SplitMix64::seeded().next_u64())
            .join()
            .unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn below_stays_below() {
        let mut rng = SplitMix64::seeded();
        assert!((0..10_000).all(|_| rng.below(7) < 7));
    }
}
