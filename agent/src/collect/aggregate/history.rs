//! The always-on recent past: CPU per (stack, thread) in fixed time buckets.
//!
//! The collector adds every observation to the *open* bucket; each cycle it
//! closes the bucket once its time is up and opens the next. Closed buckets
//! are frozen into sorted arrays of (stack, thread, CPU µs), 12 bytes an
//! entry, with no hash table overhead. (Microseconds: every sample stands for
//! at least 100 µs, so rounding one entry of a bucket loses nothing visible.)
//! A query for "the last five minutes" merges the buckets whose midpoint lies
//! in that window, so it answers at once, without recording.
//!
//! Memory is bounded twice: buckets older than the configured span are
//! dropped, and so are the oldest buckets whenever the total exceeds the
//! byte budget (the history then reaches less far back; `reach` says how
//! far). The open bucket has a fixed entry capacity; observations that do
//! not fit are counted as dropped.

use std::collections::VecDeque;

use super::stacks::{FastMap, StackId, ThreadKey};
use super::{Aggregate, Observation};

/// Entries the open bucket can hold.
const OPEN_BUCKET_ENTRIES: usize = 32 * 1024;

/// One closed time bucket.
#[derive(Debug)]
struct Bucket {
    start_ns: u64,
    end_ns: u64,
    /// (stack, thread, CPU microseconds), sorted by key.
    entries: Box<[(StackId, ThreadKey, u32)]>,
}

impl Bucket {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.entries.len() * std::mem::size_of::<(StackId, ThreadKey, u32)>()
    }

    fn midpoint(&self) -> u64 {
        self.start_ns + (self.end_ns - self.start_ns) / 2
    }
}

/// History settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    pub(crate) resolution_ns: u64,
    pub(crate) span_ns: u64,
    pub(crate) max_bytes: usize,
}

/// Time-bucketed CPU per (stack, thread).
#[derive(Debug)]
pub(crate) struct History {
    limits: HistoryLimits,
    closed: VecDeque<Bucket>,
    closed_bytes: usize,
    open_start_ns: u64,
    open: Aggregate,
    /// Buckets dropped early to stay within the byte budget.
    pub(crate) evicted_for_memory: u64,
}

/// What a window query found.
pub(crate) struct WindowResult {
    pub(crate) aggregate: Aggregate,
    /// The time actually covered, which may be less than asked for.
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

impl History {
    pub(crate) fn new(limits: HistoryLimits, now_ns: u64) -> Self {
        History {
            limits,
            closed: VecDeque::new(),
            closed_bytes: 0,
            open_start_ns: now_ns,
            open: Aggregate::with_capacity(OPEN_BUCKET_ENTRIES),
            evicted_for_memory: 0,
        }
    }

    /// Counts an observation in the open bucket.
    pub(crate) fn offer(&mut self, observation: &Observation) -> bool {
        self.open.add(observation)
    }

    /// Closes the open bucket if its time is up, and forgets what has aged
    /// out or does not fit the budget.
    pub(crate) fn roll(&mut self, now_ns: u64) {
        if now_ns >= self.open_start_ns + self.limits.resolution_ns {
            let mut entries: Vec<(StackId, ThreadKey, u32)> = self
                .open
                .iter()
                .map(|(s, t, cpu_ns)| {
                    (
                        s,
                        t,
                        u32::try_from(cpu_ns.div_ceil(1000)).unwrap_or(u32::MAX),
                    )
                })
                .collect();
            entries.sort_unstable_by_key(|&(s, t, _)| (s, t));
            let bucket = Bucket {
                start_ns: self.open_start_ns,
                end_ns: now_ns,
                entries: entries.into_boxed_slice(),
            };
            self.closed_bytes += bucket.bytes();
            self.closed.push_back(bucket);
            self.open = Aggregate::with_capacity(OPEN_BUCKET_ENTRIES);
            self.open_start_ns = now_ns;
        }
        let horizon = now_ns.saturating_sub(self.limits.span_ns);
        while self.closed.front().is_some_and(|b| b.end_ns <= horizon) {
            self.pop_oldest();
        }
        while self.closed_bytes > self.limits.max_bytes && !self.closed.is_empty() {
            self.pop_oldest();
            self.evicted_for_memory += 1;
        }
    }

    /// Drops the oldest closed bucket (also used to make room in the stack
    /// table). Returns false if there was none.
    pub(crate) fn pop_oldest(&mut self) -> bool {
        match self.closed.pop_front() {
            Some(bucket) => {
                self.closed_bytes -= bucket.bytes();
                true
            }
            None => false,
        }
    }

    pub(crate) fn span_ns(&self) -> u64 {
        self.limits.span_ns
    }

    pub(crate) fn resolution_ns(&self) -> u64 {
        self.limits.resolution_ns
    }

    /// The oldest instant the history still covers.
    pub(crate) fn oldest_ns(&self) -> u64 {
        self.closed
            .front()
            .map_or(self.open_start_ns, |b| b.start_ns)
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.closed_bytes + self.open.memory_bytes()
    }

    /// CPU per (stack, thread) in `[from_ns, to_ns)`, at bucket resolution:
    /// closed buckets whose midpoint falls in the window, and the open bucket
    /// if the window reaches into it.
    pub(crate) fn window(&self, from_ns: u64, to_ns: u64) -> WindowResult {
        let mut merged: FastMap<(StackId, ThreadKey), u64> = FastMap::default();
        let (mut start_ns, mut end_ns) = (u64::MAX, 0);
        for bucket in self
            .closed
            .iter()
            .filter(|b| (from_ns..to_ns).contains(&b.midpoint()))
        {
            for &(stack, thread, cpu_us) in bucket.entries.iter() {
                *merged.entry((stack, thread)).or_default() += u64::from(cpu_us) * 1000;
            }
            start_ns = start_ns.min(bucket.start_ns);
            end_ns = end_ns.max(bucket.end_ns);
        }
        if to_ns > self.open_start_ns
            && from_ns <= self.open_start_ns + self.limits.resolution_ns / 2
        {
            for (stack, thread, cpu_ns) in self.open.iter() {
                *merged.entry((stack, thread)).or_default() += cpu_ns;
            }
            start_ns = start_ns.min(self.open_start_ns);
            end_ns = end_ns.max(to_ns);
        }
        if start_ns == u64::MAX {
            (start_ns, end_ns) = (from_ns, from_ns);
        }
        WindowResult {
            aggregate: Aggregate::from_counts(merged),
            start_ns,
            end_ns,
        }
    }

    /// Every stack and thread the history refers to.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (StackId, ThreadKey)> + '_ {
        self.closed
            .iter()
            .flat_map(|b| b.entries.iter().map(|&(s, t, _)| (s, t)))
            .chain(self.open.iter().map(|(s, t, _)| (s, t)))
    }

    /// Rewrites keys after the stack and thread tables were compacted.
    pub(crate) fn remap(
        &mut self,
        stacks: &FastMap<StackId, StackId>,
        threads: &FastMap<ThreadKey, ThreadKey>,
    ) {
        for bucket in &mut self.closed {
            let mut entries: Vec<_> = bucket
                .entries
                .iter()
                .filter_map(|&(s, t, w)| Some((*stacks.get(&s)?, *threads.get(&t)?, w)))
                .collect();
            entries.sort_unstable_by_key(|&(s, t, _)| (s, t));
            bucket.entries = entries.into_boxed_slice();
        }
        self.closed_bytes = self.closed.iter().map(Bucket::bytes).sum();
        self.open.remap(stacks, threads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn obs(stack: StackId, cpu_ns: u64, at: u64) -> Observation {
        Observation {
            stack,
            thread: 0,
            weight: cpu_ns,
            timestamp_ns: at,
        }
    }

    fn limits() -> HistoryLimits {
        HistoryLimits {
            resolution_ns: 10 * SECOND,
            span_ns: 60 * SECOND,
            max_bytes: 1 << 20,
        }
    }

    fn total(result: &WindowResult) -> u64 {
        result.aggregate.iter().map(|(_, _, w)| w).sum()
    }

    #[test]
    fn windows_merge_the_buckets_they_cover() {
        let mut history = History::new(limits(), 0);
        for second in 0..45 {
            history.roll(second * SECOND);
            history.offer(&obs(1, 100_000, second * SECOND));
        }
        // Buckets [0,10) [10,20) [20,30) [30,40) closed; [40,45) open.
        let last_15 = history.window(30 * SECOND, 45 * SECOND);
        assert_eq!(total(&last_15), 1_500_000);
        let all = history.window(0, 45 * SECOND);
        assert_eq!(total(&all), 4_500_000);
        let second_bucket = history.window(10 * SECOND, 20 * SECOND);
        assert_eq!(total(&second_bucket), 1_000_000);
        assert_eq!(
            (second_bucket.start_ns, second_bucket.end_ns),
            (10 * SECOND, 20 * SECOND)
        );
    }

    #[test]
    fn old_buckets_age_out_and_the_budget_is_kept() {
        let mut history = History::new(limits(), 0);
        for second in 0..200 {
            history.roll(second * SECOND);
            history.offer(&obs(second as u32, 1, second * SECOND));
        }
        assert!(
            history.oldest_ns() >= 130 * SECOND,
            "span is 60 s: {}",
            history.oldest_ns()
        );

        let tight = HistoryLimits {
            max_bytes: 400,
            ..limits()
        };
        let mut history = History::new(tight, 0);
        for second in 0..100 {
            history.roll(second * SECOND);
            for stack in 0..5 {
                history.offer(&obs(stack, 1, second * SECOND));
            }
        }
        assert!(history.closed_bytes <= 400);
        assert!(history.evicted_for_memory > 0);
    }

    #[test]
    fn remap_follows_compaction() {
        let mut history = History::new(limits(), 0);
        history.offer(&obs(7, 5_000, 0));
        history.roll(11 * SECOND);
        history.offer(&obs(7, 5_000, 11 * SECOND));
        let stacks: FastMap<StackId, StackId> = [(7, 2)].into_iter().collect();
        let threads: FastMap<ThreadKey, ThreadKey> = [(0, 0)].into_iter().collect();
        history.remap(&stacks, &threads);
        assert!(history.keys().all(|(s, _)| s == 2));
        assert_eq!(total(&history.window(0, 20 * SECOND)), 10_000);
    }
}
