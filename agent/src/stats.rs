//! The agent's account of itself: what it sampled, what it dropped and why,
//! what it cost. Handler-side counters are plain relaxed atomics (they are
//! statistics; nothing is ordered by them).

use std::time::Duration;

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

/// A snapshot of the agent's self-report. See [`Agent::stats`](crate::Agent::stats).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The timer engine in use: `per-thread-timers`, `setitimer`, or
    /// `disabled`.
    pub engine: &'static str,
    /// The stack-walking method: `dwarf` or `frame-pointers`.
    pub unwinder: &'static str,
    /// Configured samples per CPU-second per thread.
    pub frequency_hz: u32,
    /// Threads currently being sampled.
    pub threads_sampled: usize,
    /// Timers currently armed (per-thread engine: one per sampled thread).
    pub timers_armed: usize,
    /// Timer signals handled.
    pub signals: u64,
    /// Samples recorded by the handler.
    pub samples: u64,
    /// Timer expirations those samples stand for (≥ `samples`: the kernel
    /// coalesces expirations when a thread's CPU timer fires faster than its
    /// tick, and reports the extra as overrun).
    pub sample_weight: u64,
    /// Samples aggregated by the collector.
    pub samples_collected: u64,
    /// Samples dropped, by reason.
    pub dropped: DroppedSamples,
    /// Stacks cut at the depth limit.
    pub stacks_truncated: u64,
    /// Stacks whose walk stopped early on an unreadable or implausible frame.
    pub stacks_incomplete: u64,
    /// SIGPROF signals from elsewhere, ignored.
    pub foreign_signals: u64,
    /// Median handler cost, nanoseconds.
    pub handler_cost_p50_ns: Option<u64>,
    /// 99th-percentile handler cost, nanoseconds.
    pub handler_cost_p99_ns: Option<u64>,
    /// Time spent in the signal handler, summed over all samples.
    pub handler_cpu: Duration,
    /// CPU time used by the collector thread.
    pub collector_cpu: Duration,
    /// CPU time used by all the agent's threads (collector, symbols, HTTP).
    pub agent_threads_cpu: Duration,
    /// CPU time used by the whole process, agent included.
    pub process_cpu: Duration,
    /// The agent's share of the process's CPU, in percent: handler time plus
    /// the agent's threads over the process total.
    pub overhead_percent: f64,
    /// Bytes held by the agent's tables, buffers and caches.
    pub memory_bytes: u64,
    /// How far back the always-on history reaches.
    pub history_span: Duration,
    /// Time since the agent started.
    pub uptime: Duration,
    /// Span export.
    pub spans: SpanStats,
}

/// What became of spans recorded by the tracing layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpanStats {
    /// Whether an OTLP endpoint is configured.
    pub exporting: bool,
    /// Spans exported successfully.
    pub exported: u64,
    /// Spans given up: in requests the collector refused for good (an HTTP
    /// status other than 429, 502, 503, 504; a gRPC code OTLP does not call
    /// retryable), or went on refusing or not answering for 30 s of retries.
    pub export_failed: u64,
    /// Export requests sent again after a refusal OTLP calls retryable (the
    /// collector throttling, restarting, unreachable or slow).
    pub export_retries: u64,
    /// Why the latest export request failed, while export is failing (none
    /// once a request goes through): what the collector answered, or why it
    /// could not be reached.
    pub export_error: Option<String>,
    /// Spans of the user's own pipeline given back with profile attributes.
    pub forwarded: u64,
    /// Spans (exported or forwarded) in which a sample may have been taken,
    /// whose profiles were looked up in the collector's tables. The others
    /// had no sample, an empty profile known when they closed.
    pub sampled: u64,
    /// Spans dropped because the export queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped because no exporter was running.
    pub dropped_no_exporter: u64,
    /// Spans whose CPU the collector tracks now.
    pub tracked: usize,
}

/// Samples lost, by cause. Every loss is counted somewhere here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedSamples {
    /// The handler-to-collector buffer was full (collector behind or stalled).
    pub buffer_full: u64,
    /// Too many handlers raced for the same buffer position.
    pub buffer_contended: u64,
    /// More handlers ran at once than there are unwind scratch areas.
    pub no_unwind_scratch: u64,
    /// The unwind tables were being replaced at that instant.
    pub tables_busy: u64,
    /// A `setitimer` signal hit a thread the agent had not registered yet.
    pub thread_unregistered: u64,
    /// The interned-stack table was full even after compaction.
    pub stack_table_full: u64,
    /// A capture's or history bucket's table of (stack, thread) counts was full.
    pub aggregate_full: u64,
}

impl DroppedSamples {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.buffer_full
            + self.buffer_contended
            + self.no_unwind_scratch
            + self.tables_busy
            + self.thread_unregistered
            + self.stack_table_full
            + self.aggregate_full
    }
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
