//! The span a thread is in, as the signal handler sees it.
//!
//! The tracing layer publishes, on every span enter and exit, the current
//! thread's active span: its trace id, its span id and those of up to
//! [`ANCESTORS`] enclosing spans, its local root (the outermost span of the
//! trace in this process), its name and the local root's name. The handler copies that into each
//! sample; the collector credits the sample to the span, its ancestors and
//! its local root.
//!
//! [`SpanCell`] is written only by its own thread (the layer runs there) and
//! read only by the signal handler on that same thread. It keeps two copies:
//! the writer fills the inactive one and then flips `active`, so a signal
//! arriving at any instruction reads either the old context or the new one,
//! never a half-written mix, without locks.
//!
//! The cell also counts the samples the handler took on its thread. The
//! layer reads the count when a span is entered and again when it is
//! exited: if it did not move, no sample can have been credited to that
//! span while it was entered there, and most spans (shorter than a
//! sampling period) are known to have an empty profile when they close,
//! without asking the collector.

use crate::sampler::SignalSafe;
use crate::sync::{AtomicU8, AtomicU32, Ordering, UnsafeCell};

/// Enclosing spans carried with each sample, beyond the leaf.
pub(crate) const ANCESTORS: usize = 6;

/// A span's identity, as published to the handler and carried by samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanContext {
    /// W3C trace id; never 0 for a real span.
    pub(crate) trace_id: u128,
    /// The active (leaf) span's id.
    pub(crate) span_id: u64,
    /// Enclosing spans' ids, innermost first; 0 past the last.
    pub(crate) ancestors: [u64; ANCESTORS],
    /// The outermost span of this trace in this process.
    pub(crate) local_root: u64,
    /// The leaf span's name (span names are `'static` in `tracing`).
    pub(crate) name: &'static str,
    /// The local root's name: pushed profiles label samples with the local
    /// root, as Grafana's traces-to-profiles expects (see
    /// `transport::push`). 16 bytes more per sample record, in exchange for
    /// no lookup at push time of spans that may have closed long before.
    pub(crate) root_name: &'static str,
}

/// The span a sample was taken in, as captures and profiles label it:
/// the leaf of its [`SpanContext`], and its local root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SpanLabel {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) name: &'static str,
    /// The outermost span of the trace in this process, and its name. A
    /// span has one local root, so carrying it adds no distinct labels.
    pub(crate) local_root: u64,
    pub(crate) root_name: &'static str,
}

impl SpanContext {
    pub(crate) const NONE: SpanContext = SpanContext {
        trace_id: 0,
        span_id: 0,
        ancestors: [0; ANCESTORS],
        local_root: 0,
        name: "",
        root_name: "",
    };

    pub(crate) fn is_some(&self) -> bool {
        self.span_id != 0
    }

    /// The label of a sample taken in this context, if it is in a span.
    pub(crate) fn label(&self) -> Option<SpanLabel> {
        self.is_some().then_some(SpanLabel {
            trace_id: self.trace_id,
            span_id: self.span_id,
            name: self.name,
            // A context published before its root was known says the
            // leaf: the layer always fills both.
            local_root: if self.local_root == 0 {
                self.span_id
            } else {
                self.local_root
            },
            root_name: if self.local_root == 0 {
                self.name
            } else {
                self.root_name
            },
        })
    }

    /// The spans a sample in this context counts for: the leaf, its known
    /// ancestors, and the local root, each once.
    pub(crate) fn credited(&self) -> impl Iterator<Item = u64> + '_ {
        let chain = std::iter::once(self.span_id)
            .chain(self.ancestors.iter().copied().take_while(|&id| id != 0));
        let root_listed = self.local_root == 0 || chain.clone().any(|id| id == self.local_root);
        chain
            .chain((!root_listed).then_some(self.local_root))
            .filter(|&id| id != 0)
    }
}

/// `active` when no span is entered.
const IDLE: u8 = 2;

/// One thread's published span context (see the module docs).
pub(crate) struct SpanCell {
    /// 0 or 1: the copy to read; [`IDLE`]: none.
    active: AtomicU8,
    copies: [UnsafeCell<SpanContext>; 2],
    /// Samples the handler took on this thread, wrapping. Never reset, not
    /// even when the slot passes to another thread: a count that moved
    /// back to where it was could hide a sample.
    samples: AtomicU32,
}

/// Where one thread's sample count stood at some instant: its registry
/// slot and the count there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SampleMark {
    slot: usize,
    samples: u32,
}

impl SampleMark {
    pub(crate) fn new(slot: usize, samples: u32) -> Self {
        SampleMark { slot, samples }
    }
}

/// Whether a sample may have been taken on this thread between two marks.
/// `None` is "no agent was running": between two of those nothing was
/// sampled; between marks of different slots (the agent restarted, the
/// thread was registered anew) anything may have been.
pub(crate) fn sampled_between(before: Option<SampleMark>, after: Option<SampleMark>) -> bool {
    match (before, after) {
        (None, None) => false,
        (Some(before), Some(after)) => before != after,
        _ => true,
    }
}

// SAFETY: a cell is written only by the thread that owns its registry slot
// and read only by signal handlers running on that same thread; the copy
// being written is never the one `active` names.
unsafe impl Sync for SpanCell {}

impl SpanCell {
    pub(crate) fn new() -> Self {
        SpanCell {
            active: AtomicU8::new(IDLE),
            copies: [
                UnsafeCell::new(SpanContext::NONE),
                UnsafeCell::new(SpanContext::NONE),
            ],
            samples: AtomicU32::new(0),
        }
    }

    /// Samples taken on this thread so far (wrapping).
    ///
    /// Must be called only by the thread owning this cell.
    pub(crate) fn samples(&self) -> u32 {
        // Relaxed: only this thread's handler writes it, and a handler runs
        // to completion between two instructions of the thread.
        self.samples.load(Ordering::Relaxed)
    }

    /// Publishes `context` as the thread's current span.
    ///
    /// Must be called only by the thread owning this cell.
    pub(crate) fn publish(&self, context: &SpanContext) {
        // Relaxed: only this thread writes `active`.
        let next = match self.active.load(Ordering::Relaxed) {
            0 => 1,
            _ => 0,
        };
        // SAFETY: `next` is not the active copy, so no handler reads it; only
        // this thread writes copies.
        self.copies[usize::from(next)].with_mut(|copy| unsafe { *copy = *context });
        // Release: a handler that acquires `active` sees the copy's contents.
        self.active.store(next, Ordering::Release);
    }

    /// Marks the thread as outside any span.
    pub(crate) fn clear(&self) {
        self.active.store(IDLE, Ordering::Release);
    }

    /// The current context, for a sample being taken, counting the sample.
    ///
    /// # Signal safety
    /// Atomic loads and a store, and a copy of plain data.
    #[inline(always)]
    pub(crate) fn read_for_sample(&self, _cx: SignalSafe) -> SpanContext {
        // A load and a store, not a locked read-modify-write: the handler
        // on this cell's thread is its only writer, and handlers on one
        // thread do not nest (SIGPROF is blocked while one runs).
        let samples = self.samples.load(Ordering::Relaxed);
        self.samples
            .store(samples.wrapping_add(1), Ordering::Relaxed);
        self.read()
    }

    /// The current context, if a span is entered.
    ///
    /// # Signal safety
    /// One atomic load and a copy of plain data.
    #[inline(always)]
    pub(crate) fn read(&self) -> SpanContext {
        match self.active.load(Ordering::Acquire) {
            IDLE => SpanContext::NONE,
            // SAFETY: the active copy is not written until `active` moves away
            // from it, which only this thread does, and not while we run.
            index => self.copies[usize::from(index & 1)].with(|copy| unsafe { *copy }),
        }
    }
}

/// A thread's sample count just before it published a span context and
/// just after (`None` while no agent runs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    pub(crate) before: Option<SampleMark>,
    pub(crate) after: Option<SampleMark>,
}

#[cfg(smolder_sampling)]
/// Publishes the calling thread's current span (or none) for its samples.
/// Does nothing while no agent runs, so that threads do not fill the
/// registry for nothing.
pub(crate) fn publish_for_current_thread(context: Option<&SpanContext>) -> Published {
    use std::cell::Cell;
    use std::sync::atomic::{Ordering, compiler_fence};
    thread_local! {
        /// This thread's kernel id and registry slot, once known.
        static SLOT: Cell<Option<(i32, usize)>> = const { Cell::new(None) };
    }
    const NOT_RUNNING: Published = Published {
        before: None,
        after: None,
    };
    if !super::is_running() {
        return NOT_RUNNING;
    }
    let registry = super::registry::registry();
    let slot = match SLOT.get() {
        // The registry is emptied when an agent stops: check the slot is
        // still ours.
        Some((tid, slot)) if registry.slot(slot).tid() == tid => slot,
        _ => {
            let tid = super::threads::current_tid();
            let Some(slot) = registry.register(tid) else {
                return NOT_RUNNING;
            };
            SLOT.set(Some((tid, slot)));
            slot
        }
    };
    let cell = &registry.slot(slot).span;
    // A span's samples are those counted between `before` when it is
    // published and `after` when it is replaced. The fences keep the
    // compiler from moving either read across the publication. (The handler
    // runs on this very thread: a compiler fence is all the ordering it
    // needs.)
    let before = SampleMark::new(slot, cell.samples());
    compiler_fence(Ordering::SeqCst);
    match context {
        Some(context) => cell.publish(context),
        None => cell.clear(),
    }
    compiler_fence(Ordering::SeqCst);
    Published {
        before: Some(before),
        after: Some(SampleMark::new(slot, cell.samples())),
    }
}

#[cfg(not(smolder_sampling))]
/// Without sampling, there is no one to publish to.
pub(crate) fn publish_for_current_thread(_context: Option<&SpanContext>) -> Published {
    Published {
        before: None,
        after: None,
    }
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;

    #[test]
    fn credits_leaf_ancestors_and_root_once() {
        let mut context = SpanContext {
            trace_id: 1,
            span_id: 10,
            ancestors: [9, 8, 0, 0, 0, 0],
            local_root: 8,
            name: "leaf",
            root_name: "root",
        };
        assert_eq!(context.credited().collect::<Vec<_>>(), vec![10, 9, 8]);
        context.ancestors = [9, 8, 7, 6, 5, 4];
        context.local_root = 1;
        assert_eq!(
            context.credited().collect::<Vec<_>>(),
            vec![10, 9, 8, 7, 6, 5, 4, 1]
        );
    }

    #[test]
    fn publish_read_clear() {
        let cell = SpanCell::new();
        assert!(!cell.read().is_some());
        let mut context = SpanContext::NONE;
        for id in 1..5 {
            context.span_id = id;
            cell.publish(&context);
            assert_eq!(cell.read().span_id, id);
        }
        cell.clear();
        assert!(!cell.read().is_some());
    }

    #[test]
    fn samples_are_counted_as_they_are_read() {
        let cell = SpanCell::new();
        let before = SampleMark::new(3, cell.samples());
        assert!(!sampled_between(
            Some(before),
            Some(SampleMark::new(3, cell.samples()))
        ));
        cell.read_for_sample(SignalSafe::for_tests());
        let after = SampleMark::new(3, cell.samples());
        assert!(sampled_between(Some(before), Some(after)));
    }

    #[test]
    fn marks_from_different_slots_or_agents_count_as_sampled() {
        let mark = |slot, samples| Some(SampleMark::new(slot, samples));
        assert!(!sampled_between(None, None), "no agent, no samples");
        assert!(
            sampled_between(None, mark(1, 0)),
            "an agent started meanwhile"
        );
        assert!(
            sampled_between(mark(1, 0), None),
            "an agent stopped meanwhile"
        );
        assert!(sampled_between(mark(1, 5), mark(2, 5)), "registered anew");
        assert!(!sampled_between(mark(1, 5), mark(1, 5)));
    }
}
