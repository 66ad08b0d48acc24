//! Stage 4 of the data flow: samples counted per (stack, thread).
//!
//! The collector turns each record into an [`Observation`] (interned stack,
//! interned thread, weight, time) and offers it to every sink: each active
//! capture (a `record(duration)` call or an HTTP capture in progress) counts
//! the observations inside its time window.
//!
//! Every [`Aggregate`] has a fixed capacity of distinct (stack, thread)
//! entries; an observation that would need a new entry in a full aggregate
//! is dropped and counted.

pub(crate) mod filter;
pub(crate) mod history;
pub(crate) mod stacks;

use stacks::{FastMap, StackId, ThreadKey};

/// One sample after interning.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    pub(crate) stack: StackId,
    pub(crate) thread: ThreadKey,
    /// CPU time the sample stands for, in nanoseconds: the timer expirations
    /// it carries × the timer period it was taken at.
    pub(crate) weight: u64,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub(crate) timestamp_ns: u64,
}

/// Weighted sample counts per (stack, thread).
#[derive(Debug, Default, Clone)]
pub(crate) struct Aggregate {
    counts: FastMap<(StackId, ThreadKey), u64>,
    capacity: usize,
}

impl Aggregate {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Aggregate {
            counts: FastMap::default(),
            capacity,
        }
    }

    /// Counts `observation`; returns false if it needed a new entry and the
    /// table is full (the caller counts the drop).
    pub(crate) fn add(&mut self, observation: &Observation) -> bool {
        let key = (observation.stack, observation.thread);
        if let Some(count) = self.counts.get_mut(&key) {
            *count += observation.weight;
            return true;
        }
        if self.counts.len() >= self.capacity {
            return false;
        }
        self.counts.insert(key, observation.weight);
        true
    }

    pub(crate) fn from_counts(counts: FastMap<(StackId, ThreadKey), u64>) -> Self {
        Aggregate {
            capacity: counts.len(),
            counts,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (StackId, ThreadKey, u64)> + '_ {
        self.counts.iter().map(|(&(s, t), &w)| (s, t, w))
    }

    #[cfg(test)]
    pub(crate) fn total_weight(&self) -> u64 {
        self.counts.values().sum()
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.counts.capacity() * (std::mem::size_of::<((StackId, ThreadKey), u64)>() + 1)
    }

    /// Rewrites keys after the stack and thread tables were compacted;
    /// entries whose stack or thread did not survive are dropped.
    pub(crate) fn remap(
        &mut self,
        stacks: &FastMap<StackId, StackId>,
        threads: &FastMap<ThreadKey, ThreadKey>,
    ) {
        self.counts = std::mem::take(&mut self.counts)
            .into_iter()
            .filter_map(|((s, t), w)| Some(((*stacks.get(&s)?, *threads.get(&t)?), w)))
            .collect();
    }
}

/// A recording in progress: counts what happens in `[start_ns, end_ns)`.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) id: u64,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) aggregate: Aggregate,
}

impl Capture {
    pub(crate) fn offer(&mut self, observation: &Observation) -> bool {
        if (self.start_ns..self.end_ns).contains(&observation.timestamp_ns) {
            self.aggregate.add(observation)
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(stack: StackId, thread: ThreadKey, weight: u64, t: u64) -> Observation {
        Observation {
            stack,
            thread,
            weight,
            timestamp_ns: t,
        }
    }

    #[test]
    fn aggregates_weights_and_refuses_when_full() {
        let mut agg = Aggregate::with_capacity(2);
        assert!(agg.add(&obs(1, 0, 1, 0)));
        assert!(agg.add(&obs(1, 0, 3, 0)));
        assert!(agg.add(&obs(2, 0, 1, 0)));
        assert!(!agg.add(&obs(3, 0, 1, 0)));
        assert!(agg.add(&obs(2, 0, 1, 0)), "existing entries still count");
        assert_eq!(agg.total_weight(), 6);
        assert_eq!(agg.len(), 2);
    }

    #[test]
    fn capture_counts_only_its_window() {
        let mut capture = Capture {
            id: 1,
            start_ns: 100,
            end_ns: 200,
            aggregate: Aggregate::with_capacity(10),
        };
        for t in [99, 100, 150, 199, 200] {
            capture.offer(&obs(1, 0, 1, t));
        }
        assert_eq!(capture.aggregate.total_weight(), 3);
    }
}
