//! CPU per span, kept by the collector: what each span (with everything
//! under it) burned, for the profile attributes of exported spans and for
//! the HTTP endpoint's `trace_id=`/`span_id=` flame graphs.
//!
//! Every sample taken inside a span counts for that span (its *self* CPU),
//! and for its enclosing spans and local root (their *total* CPU). Each span
//! keeps the (stack, thread) CPU of its total, so its flame graph can be
//! drawn and its hottest functions named.
//!
//! Bounded: at most `max_spans` spans and `max_entries` (stack, thread)
//! entries over all spans; beyond that the least recently sampled spans are
//! forgotten first (their flame graph links then answer that the span is no
//! longer in the recent history).

use crate::collect::aggregate::stacks::{FastMap, StackId, ThreadKey};
use crate::collect::aggregate::{Aggregate, Observation};
use crate::sampler::span_context::SpanContext;

/// Distinct (stack, thread) entries one span keeps.
const ENTRIES_PER_SPAN: usize = 1024;

/// One span's CPU.
#[derive(Debug)]
pub(crate) struct SpanEntry {
    pub(crate) trace_id: u128,
    /// The span's name, once a sample showed it as the leaf span.
    pub(crate) name: &'static str,
    /// Whether this span is the outermost of its trace in this process.
    pub(crate) local_root: bool,
    /// CPU while this span itself was the innermost entered span.
    pub(crate) self_cpu_ns: u64,
    /// CPU while this span or any span inside it was entered.
    pub(crate) total_cpu_ns: u64,
    /// `total_cpu_ns` by (stack, thread).
    pub(crate) aggregate: Aggregate,
    /// Monotonic time of the latest sample, for eviction.
    last_ns: u64,
}

/// CPU by span.
#[derive(Debug)]
pub(crate) struct SpanTable {
    spans: FastMap<u64, SpanEntry>,
    max_spans: usize,
    max_entries: usize,
    /// Entries over all spans' aggregates.
    entries: usize,
    /// Bytes of all spans' aggregates, kept up to date as they change: the
    /// collector reports memory after every drain, and summing it there
    /// would read every tracked span (up to `max_spans`) 40 times a second.
    aggregate_bytes: usize,
    /// Spans forgotten to stay within bounds.
    pub(crate) evicted: u64,
}

impl SpanTable {
    pub(crate) fn new(max_spans: usize, max_entries: usize) -> Self {
        SpanTable {
            spans: FastMap::default(),
            max_spans,
            max_entries,
            entries: 0,
            aggregate_bytes: 0,
            evicted: 0,
        }
    }

    /// Credits one observation to every span its context names.
    pub(crate) fn offer(&mut self, context: &SpanContext, observation: &Observation) {
        if !context.is_some() {
            return;
        }
        for span_id in context.credited() {
            let entry = self.spans.entry(span_id).or_insert_with(|| SpanEntry {
                trace_id: context.trace_id,
                name: "",
                local_root: false,
                self_cpu_ns: 0,
                total_cpu_ns: 0,
                aggregate: Aggregate::with_capacity(ENTRIES_PER_SPAN),
                last_ns: 0,
            });
            if span_id == context.span_id {
                entry.self_cpu_ns += observation.weight;
                entry.name = context.name;
            }
            entry.local_root |= span_id == context.local_root;
            entry.total_cpu_ns += observation.weight;
            entry.last_ns = observation.timestamp_ns;
            let (len_before, bytes_before) =
                (entry.aggregate.len(), entry.aggregate.memory_bytes());
            entry.aggregate.add(observation);
            self.entries += entry.aggregate.len() - len_before;
            self.aggregate_bytes =
                self.aggregate_bytes + entry.aggregate.memory_bytes() - bytes_before;
        }
        if self.spans.len() > self.max_spans || self.entries > self.max_entries {
            self.evict();
        }
    }

    /// Forgets the least recently sampled tenth of the spans.
    fn evict(&mut self) {
        let mut by_age: Vec<(u64, u64)> =
            self.spans.iter().map(|(&id, e)| (e.last_ns, id)).collect();
        by_age.sort_unstable();
        let target_spans = self.max_spans - self.max_spans / 10;
        let target_entries = self.max_entries - self.max_entries / 10;
        for (_, id) in by_age {
            if self.spans.len() <= target_spans && self.entries <= target_entries {
                break;
            }
            if let Some(entry) = self.spans.remove(&id) {
                self.entries -= entry.aggregate.len();
                self.aggregate_bytes -= entry.aggregate.memory_bytes();
                self.evicted += 1;
            }
        }
    }

    /// Forgets spans with no sample since `horizon_ns`: their flame graph
    /// links would outlive everything else the agent remembers.
    pub(crate) fn expire(&mut self, horizon_ns: u64) {
        let before = self.spans.len();
        self.spans.retain(|_, entry| entry.last_ns >= horizon_ns);
        self.evicted += (before - self.spans.len()) as u64;
        self.recount();
    }

    /// Sums the totals afresh, after changes to many spans at once.
    fn recount(&mut self) {
        (self.entries, self.aggregate_bytes) =
            self.spans.values().fold((0, 0), |(entries, bytes), e| {
                (
                    entries + e.aggregate.len(),
                    bytes + e.aggregate.memory_bytes(),
                )
            });
    }

    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(crate) fn get(&self, span_id: u64) -> Option<&SpanEntry> {
        self.spans.get(&span_id)
    }

    /// The local roots of `trace_id`: together their totals are every
    /// sample of the trace in this process.
    pub(crate) fn trace_roots(&self, trace_id: u128) -> impl Iterator<Item = &SpanEntry> {
        self.spans
            .values()
            .filter(move |e| e.trace_id == trace_id && e.local_root)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = (StackId, ThreadKey)> + '_ {
        self.spans
            .values()
            .flat_map(|e| e.aggregate.iter().map(|(s, t, _)| (s, t)))
    }

    pub(crate) fn remap(
        &mut self,
        stacks: &FastMap<StackId, StackId>,
        threads: &FastMap<ThreadKey, ThreadKey>,
    ) {
        for entry in self.spans.values_mut() {
            entry.aggregate.remap(stacks, threads);
        }
        self.recount();
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.spans.capacity() * (std::mem::size_of::<(u64, SpanEntry)>() + 1) + self.aggregate_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::span_context::ANCESTORS;

    fn context(span: u64, parents: &[u64], root: u64) -> SpanContext {
        let mut ancestors = [0; ANCESTORS];
        ancestors[..parents.len()].copy_from_slice(parents);
        SpanContext {
            trace_id: 7,
            span_id: span,
            ancestors,
            local_root: root,
            name: "span",
            root_name: "root",
        }
    }

    fn obs(stack: StackId, at: u64) -> Observation {
        Observation {
            stack,
            thread: 0,
            weight: 10,
            timestamp_ns: at,
        }
    }

    #[test]
    fn self_and_total_cpu_follow_nesting() {
        let mut table = SpanTable::new(100, 10_000);
        table.offer(&context(3, &[2, 1], 1), &obs(1, 0)); // in the grandchild
        table.offer(&context(2, &[1], 1), &obs(2, 0)); // in the child
        table.offer(&context(1, &[], 1), &obs(3, 0)); // in the root
        let cpu = |id| {
            let e = table.get(id).unwrap();
            (e.self_cpu_ns, e.total_cpu_ns)
        };
        assert_eq!(cpu(3), (10, 10));
        assert_eq!(cpu(2), (10, 20));
        assert_eq!(cpu(1), (10, 30));
        assert_eq!(table.trace_roots(7).count(), 1);
        assert_eq!(
            table
                .trace_roots(7)
                .next()
                .unwrap()
                .aggregate
                .iter()
                .count(),
            3
        );
        assert!(table.trace_roots(8).next().is_none());
    }

    #[test]
    fn old_spans_expire() {
        let mut table = SpanTable::new(100, 10_000);
        table.offer(&context(1, &[], 1), &obs(1, 100));
        table.offer(&context(2, &[], 2), &obs(1, 500));
        table.expire(300);
        assert!(table.get(1).is_none());
        assert!(table.get(2).is_some());
    }

    #[test]
    fn bounded_by_spans_and_entries() {
        let mut table = SpanTable::new(10, 1_000);
        for span in 1..=100 {
            table.offer(&context(span, &[], span), &obs(span as StackId, span));
        }
        assert!(table.spans.len() <= 10);
        assert!(table.get(100).is_some(), "recent spans are kept");
        assert!(table.get(1).is_none(), "old spans are forgotten");
        assert!(table.evicted >= 90);
    }

    #[test]
    fn running_totals_match_a_recount() {
        let check = |table: &SpanTable| {
            let entries: usize = table.spans.values().map(|e| e.aggregate.len()).sum();
            let bytes: usize = table
                .spans
                .values()
                .map(|e| e.aggregate.memory_bytes())
                .sum();
            assert_eq!((table.entries, table.aggregate_bytes), (entries, bytes));
        };
        let mut table = SpanTable::new(50, 2_000);
        for span in 1..=200_u64 {
            // Nested spans, several stacks each, so aggregates grow and
            // reallocate, and older spans are evicted.
            for stack in 0..(span % 7 + 1) {
                table.offer(
                    &context(span, &[span / 2 + 1], 1),
                    &obs(stack as StackId, span),
                );
            }
            check(&table);
        }
        assert!(table.evicted > 0);
        table.expire(150);
        check(&table);
        assert!(table.memory_bytes() > table.aggregate_bytes);
    }
}
