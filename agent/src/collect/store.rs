//! The aggregation state the collector fills and readers query: interned
//! stacks and threads, the captures in progress, the history, and CPU per
//! span. Readers (`record`, the HTTP endpoint, the span exporter) lock it
//! briefly to register a capture or copy results out; the handler never
//! touches it.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::MAX_CAPTURES;
use crate::collect::aggregate::filter::Filter;
use crate::collect::aggregate::history::{History, HistoryLimits};
use crate::collect::aggregate::stacks::{
    FastMap, StackId, StackTable, ThreadInfo, ThreadKey, ThreadTable,
};
use crate::collect::aggregate::{Aggregate, Capture};
use crate::collect::span_table::SpanTable;
use crate::collect::symbolize::ModuleMap;
use crate::sampler::clock::monotonic_now_ns;

/// Distinct (stack, thread) entries one capture may hold.
const CAPTURE_ENTRIES: usize = 32 * 1024;
/// Interval captures the push may hold at once: the interval being
/// finished and the next one, registered an interval ahead so that no
/// sample falls between them.
pub(crate) const MAX_INTERVAL_CAPTURES: usize = 2;

/// Aggregation state shared between the collector and readers.
pub(crate) struct Store {
    state: Mutex<StoreState>,
    /// Signalled after every drain.
    pub(super) drained: Condvar,
}

pub(crate) struct StoreState {
    pub(crate) stacks: StackTable,
    pub(crate) threads: ThreadTable,
    pub(super) captures: Vec<Capture>,
    /// The ids among `captures` of the push's interval captures, which do
    /// not count against [`MAX_CAPTURES`]: the push holds at most
    /// [`MAX_INTERVAL_CAPTURES`], and HTTP and `record` callers keep all of
    /// theirs.
    interval_captures: Vec<u64>,
    next_capture_id: u64,
    capture_capacity: usize,
    /// Every record stamped before this (monotonic ns) has been drained,
    /// except records a handler was still writing at that instant.
    pub(crate) drained_through_ns: u64,
    /// Modules for symbolisation, replaced when the loaded set changes.
    pub(crate) modules: Arc<ModuleMap>,
    pub(crate) history: History,
    /// CPU per span, for exported spans and span flame graphs.
    pub(crate) spans: SpanTable,
    /// When spans older than the history's span are next forgotten.
    pub(super) next_span_expiry_ns: u64,
    /// Timer period (ns) of each rate epoch (`timer::cookie`).
    pub(super) periods: [u64; 256],
}

/// Spans whose CPU is tracked at once.
const MAX_SPANS: usize = 16 * 1024;
/// (stack, thread) entries over all tracked spans.
const MAX_SPAN_ENTRIES: usize = 96 * 1024;

/// A capture's or window's results with stacks expanded, ready for
/// symbolisation.
pub(crate) struct CaptureResult {
    /// (lookup addresses leaf first, thread, CPU nanoseconds).
    pub(crate) stacks: Vec<(Vec<u64>, ThreadInfo, u64)>,
    pub(crate) modules: Arc<ModuleMap>,
}

/// Why a capture could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyCaptures;

impl Store {
    pub(crate) fn new(
        stack_capacity: usize,
        modules: Arc<ModuleMap>,
        history: HistoryLimits,
        period_ns: u64,
    ) -> Self {
        Store {
            state: Mutex::new(StoreState {
                stacks: StackTable::with_capacity(stack_capacity),
                threads: ThreadTable::with_capacity(crate::sampler::registry::MAX_THREADS * 4),
                captures: Vec::new(),
                interval_captures: Vec::new(),
                next_capture_id: 1,
                capture_capacity: CAPTURE_ENTRIES,
                drained_through_ns: 0,
                modules,
                history: History::new(history, monotonic_now_ns()),
                spans: SpanTable::new(MAX_SPANS, MAX_SPAN_ENTRIES),
                next_span_expiry_ns: 0,
                periods: [period_ns; 256],
            }),
            drained: Condvar::new(),
        }
    }

    /// Locks the state. A panic elsewhere while holding the lock leaves the
    /// tables consistent (every mutation is a single insert), so poisoning
    /// is ignored rather than propagated into the host.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StoreState> {
        crate::sync::lock(&self.state)
    }

    /// Starts counting samples stamped in `[start_ns, end_ns)`.
    pub(crate) fn begin_capture(&self, start_ns: u64, end_ns: u64) -> Result<u64, TooManyCaptures> {
        let mut state = self.lock();
        if state.captures.len() - state.interval_captures.len() >= MAX_CAPTURES {
            return Err(TooManyCaptures);
        }
        Ok(state.add_capture(start_ns, end_ns))
    }

    /// Starts counting samples stamped in `[start_ns, end_ns)` for the
    /// push, outside the [`MAX_CAPTURES`] that callers share (at most
    /// [`MAX_INTERVAL_CAPTURES`] of them).
    pub(crate) fn begin_interval_capture(
        &self,
        start_ns: u64,
        end_ns: u64,
    ) -> Result<u64, TooManyCaptures> {
        let mut state = self.lock();
        if state.interval_captures.len() >= MAX_INTERVAL_CAPTURES {
            return Err(TooManyCaptures);
        }
        let id = state.add_capture(start_ns, end_ns);
        state.interval_captures.push(id);
        Ok(id)
    }

    /// Waits until the collector has drained everything stamped before
    /// `through_ns`; false on timeout.
    pub(crate) fn wait_drained(&self, through_ns: u64, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .drained
            .wait_timeout_while(state, timeout, |s| s.drained_through_ns < through_ns)
            .unwrap_or_else(|p| p.into_inner());
        state.drained_through_ns >= through_ns
    }

    /// Removes the capture and expands its stacks.
    pub(crate) fn finish_capture(&self, id: u64, filter: &Filter) -> Option<CaptureResult> {
        let mut state = self.lock();
        let index = state.captures.iter().position(|c| c.id == id)?;
        let capture = state.captures.swap_remove(index);
        state.interval_captures.retain(|&i| i != id);
        Some(state.expand(&capture.aggregate, filter))
    }

    /// What the history holds for `[from_ns, to_ns)`, and the span it
    /// actually covers.
    pub(crate) fn window(
        &self,
        from_ns: u64,
        to_ns: u64,
        filter: &Filter,
    ) -> (CaptureResult, u64, u64) {
        let state = self.lock();
        let window = state.history.window(from_ns, to_ns);
        (
            state.expand(&window.aggregate, filter),
            window.start_ns,
            window.end_ns,
        )
    }

    /// Forgets a capture without reading it.
    pub(crate) fn cancel_capture(&self, id: u64) {
        let mut state = self.lock();
        state.captures.retain(|c| c.id != id);
        state.interval_captures.retain(|&i| i != id);
    }

    /// The samples of one span and everything inside it, if still tracked.
    pub(crate) fn span(&self, span_id: u64, filter: &Filter) -> Option<SpanResult> {
        let state = self.lock();
        let entry = state.spans.get(span_id)?;
        Some(SpanResult {
            trace_id: entry.trace_id,
            samples: state.expand(&entry.aggregate, filter),
        })
    }

    /// The CPU of each of `span_ids` by leaf address (`None` for a span
    /// with no samples, and for span id 0, which stands for one known to
    /// have none), under one lock: what span summaries need, without
    /// expanding whole stacks.
    pub(crate) fn span_leaves(
        &self,
        span_ids: &[u64],
        leaves: &mut Vec<Option<SpanLeaves>>,
    ) -> Arc<ModuleMap> {
        let state = self.lock();
        leaves.clear();
        leaves.extend(span_ids.iter().map(|&span_id| {
            if span_id == 0 {
                return None;
            }
            let entry = state.spans.get(span_id)?;
            let mut by_leaf: FastMap<u64, u64> = FastMap::default();
            for (stack, thread, cpu_ns) in entry.aggregate.iter() {
                if state.threads.get(thread).is_some()
                    && let Some(leaf) = state.stacks.leaf(stack)
                {
                    *by_leaf.entry(leaf).or_default() += cpu_ns;
                }
            }
            Some(SpanLeaves {
                self_cpu_ns: entry.self_cpu_ns,
                total_cpu_ns: entry.total_cpu_ns,
                by_leaf: by_leaf.into_iter().collect(),
            })
        }));
        Arc::clone(&state.modules)
    }

    /// Every sample of one trace in this process (its local roots' totals).
    pub(crate) fn trace(&self, trace_id: u128, filter: &Filter) -> Option<CaptureResult> {
        let state = self.lock();
        let mut merged: Option<CaptureResult> = None;
        for root in state.spans.trace_roots(trace_id) {
            let part = state.expand(&root.aggregate, filter);
            match &mut merged {
                Some(result) => result.stacks.extend(part.stacks),
                None => merged = Some(part),
            }
        }
        merged
    }
}

/// A span's CPU by the address it was spent at.
pub(crate) struct SpanLeaves {
    pub(crate) self_cpu_ns: u64,
    pub(crate) total_cpu_ns: u64,
    /// (leaf lookup address, CPU nanoseconds), in no particular order.
    pub(crate) by_leaf: Vec<(u64, u64)>,
}

/// A span's CPU, expanded for symbolisation.
pub(crate) struct SpanResult {
    pub(crate) trace_id: u128,
    pub(crate) samples: CaptureResult,
}

impl StoreState {
    /// Registers a capture of `[start_ns, end_ns)`; returns its id.
    fn add_capture(&mut self, start_ns: u64, end_ns: u64) -> u64 {
        let id = self.next_capture_id;
        self.next_capture_id += 1;
        let aggregate = Aggregate::with_capacity(self.capture_capacity);
        self.captures.push(Capture {
            id,
            start_ns,
            end_ns,
            aggregate,
        });
        id
    }

    /// Expands an aggregate's interned keys into addresses and thread info,
    /// keeping what `filter` admits.
    pub(crate) fn expand(&self, aggregate: &Aggregate, filter: &Filter) -> CaptureResult {
        let stacks = aggregate
            .iter()
            .filter_map(|(stack, thread, weight)| {
                let thread = self
                    .threads
                    .get(thread)
                    .filter(|t| filter.admits_thread(t))?;
                let mut frames = Vec::new();
                self.stacks.frames_into(stack, &mut frames);
                Some((frames, thread.clone(), weight))
            })
            .collect();
        CaptureResult {
            stacks,
            modules: Arc::clone(&self.modules),
        }
    }

    /// Every stack and thread a live sink refers to.
    fn live_keys(&self) -> (HashSet<StackId>, HashSet<ThreadKey>) {
        let mut stacks = HashSet::new();
        let mut threads = HashSet::new();
        let captured = self
            .captures
            .iter()
            .flat_map(|c| c.aggregate.iter().map(|(s, t, _)| (s, t)));
        for (s, t) in captured.chain(self.history.keys()).chain(self.spans.keys()) {
            stacks.insert(s);
            threads.insert(t);
        }
        (stacks, threads)
    }

    /// Drops stacks and threads no sink refers to any more. If the stack
    /// table is still nearly full, the history gives up its oldest buckets
    /// (reaching less far back) until there is room: old history is worth
    /// less than new samples.
    pub(super) fn compact(&mut self) {
        loop {
            let (live_stacks, live_threads) = self.live_keys();
            let stacks = self.stacks.compact(live_stacks);
            let threads = self.threads.compact(live_threads);
            for capture in &mut self.captures {
                capture.aggregate.remap(&stacks, &threads);
            }
            self.history.remap(&stacks, &threads);
            self.spans.remap(&stacks, &threads);
            if !self.stacks.is_nearly_full() || !self.history.pop_oldest() {
                return;
            }
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.stacks.memory_bytes()
            + self.threads.memory_bytes()
            + self.history.memory_bytes()
            + self.spans.memory_bytes()
            + self
                .captures
                .iter()
                .map(|c| c.aggregate.memory_bytes())
                .sum::<usize>()
    }
}
