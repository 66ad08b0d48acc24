//! The handler's counters: plain relaxed atomics (they are statistics;
//! nothing is ordered by them), cheap enough to bump on the signal path.
//!
//! The busiest ones ([`SampleCounters`]) are kept per scratch entry, so a
//! handler only writes memory it owns; `stats()` sums them.

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// A monotonically increasing event counter, cheap enough for the handler.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// # Signal safety
    /// One relaxed atomic add.
    #[inline(always)]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// Adds one.
    ///
    /// # Signal safety
    /// One relaxed atomic add.
    #[inline(always)]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` for a counter with a single writer at a time (ownership
    /// handed over with acquire/release elsewhere): a plain load and store,
    /// without the bus-locked add.
    ///
    /// # Signal safety
    /// Two relaxed atomic accesses.
    #[inline(always)]
    pub(crate) fn add_owned(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Log-linear histogram of nanosecond durations: 8 buckets per power of two
/// (12.5 % resolution), from 1 ns to about 4 s, in 256 counters.
pub(crate) struct CostHistogram {
    buckets: [Counter; Self::BUCKETS],
}

impl Default for CostHistogram {
    fn default() -> Self {
        CostHistogram {
            buckets: std::array::from_fn(|_| Counter::default()),
        }
    }
}

impl CostHistogram {
    const SUB_BITS: u32 = 3;
    const BUCKETS: usize = 256;

    fn bucket_of(ns: u64) -> usize {
        let ns = ns.max(1);
        let log = 63 - ns.leading_zeros();
        let sub = if log >= Self::SUB_BITS {
            (ns >> (log - Self::SUB_BITS)) & ((1 << Self::SUB_BITS) - 1)
        } else {
            (ns << (Self::SUB_BITS - log)) & ((1 << Self::SUB_BITS) - 1)
        };
        ((log << Self::SUB_BITS) as usize + sub as usize).min(Self::BUCKETS - 1)
    }

    /// The lower bound of a bucket, in nanoseconds.
    fn bucket_floor(index: usize) -> u64 {
        let log = (index >> Self::SUB_BITS) as u32;
        let sub = (index & ((1 << Self::SUB_BITS) - 1)) as u64;
        if log >= Self::SUB_BITS {
            ((1 << Self::SUB_BITS) | sub) << (log - Self::SUB_BITS)
        } else {
            ((1 << Self::SUB_BITS) | sub) >> (Self::SUB_BITS - log)
        }
    }

    /// Records one duration; the caller owns the histogram (see
    /// [`Counter::add_owned`]).
    ///
    /// # Signal safety
    /// Arithmetic and two relaxed atomic accesses.
    #[inline]
    pub(crate) fn record_owned(&self, ns: u64) {
        self.buckets[Self::bucket_of(ns)].add_owned(1);
    }

    /// Adds this histogram's counts into `totals`.
    pub(crate) fn add_to(&self, totals: &mut [u64; Self::BUCKETS]) {
        for (total, bucket) in totals.iter_mut().zip(&self.buckets) {
            *total += bucket.get();
        }
    }

    /// An empty set of totals for [`Self::add_to`].
    pub(crate) fn empty_totals() -> [u64; Self::BUCKETS] {
        [0; Self::BUCKETS]
    }

    /// The value at quantile `q` (0 to 1) of summed `counts`, as the floor of
    /// its bucket; `None` when nothing was recorded.
    pub(crate) fn quantile(counts: &[u64; Self::BUCKETS], q: f64) -> Option<u64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        counts.iter().enumerate().find_map(|(i, &c)| {
            seen += c;
            (seen >= rank).then(|| Self::bucket_floor(i))
        })
    }
}

/// Per-sample counts, kept in each unwind scratch entry so that the handler
/// updates memory owned by it alone (no shared cache line bounces between
/// cores, no locked instructions). `stats()` sums them.
#[derive(Default)]
pub(crate) struct SampleCounters {
    /// Samples written to the buffer.
    pub(crate) samples: Counter,
    /// Sum of sample weights (timer expirations, overruns included).
    pub(crate) weight: Counter,
    pub(crate) truncated: Counter,
    pub(crate) incomplete: Counter,
    /// Total time spent in the handler, nanoseconds.
    pub(crate) handler_ns: Counter,
    pub(crate) cost_ns: CostHistogram,
}

/// Events counted by the signal handler on the rarer paths (drops, foreign
/// signals), shared by all handlers.
#[derive(Default)]
pub(crate) struct HandlerCounters {
    /// SIGPROF signals not sent by our timers, ignored.
    pub(crate) foreign_signals: Counter,
    pub(crate) dropped_buffer_full: Counter,
    pub(crate) dropped_buffer_contended: Counter,
    pub(crate) dropped_no_scratch: Counter,
    pub(crate) dropped_tables_busy: Counter,
    pub(crate) dropped_thread_unregistered: Counter,
    /// Expirations lost with dropped samples, so accounting can show them.
    pub(crate) dropped_weight: Counter,
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_tight() {
        let mut previous = 0;
        for ns in [1u64, 2, 3, 7, 8, 9, 100, 1000, 1234, 65_536, 1 << 30] {
            let bucket = CostHistogram::bucket_of(ns);
            assert!(bucket >= previous);
            previous = bucket;
            let floor = CostHistogram::bucket_floor(bucket);
            assert!(floor <= ns && ns - floor <= ns / 8 + 1, "{ns} -> {floor}");
        }
    }

    #[test]
    fn quantiles_follow_the_data() {
        let h = CostHistogram::default();
        let mut totals = CostHistogram::empty_totals();
        assert_eq!(CostHistogram::quantile(&totals, 0.5), None);
        for _ in 0..90 {
            h.record_owned(500);
        }
        for _ in 0..10 {
            h.record_owned(20_000);
        }
        h.add_to(&mut totals);
        let p50 = CostHistogram::quantile(&totals, 0.5).unwrap();
        let p99 = CostHistogram::quantile(&totals, 0.99).unwrap();
        assert!((440..=500).contains(&p50), "{p50}");
        assert!((17_500..=20_000).contains(&p99), "{p99}");
    }
}
