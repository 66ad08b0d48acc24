//! The span a thread is in, as the signal handler sees it.
//!
//! The tracing layer publishes, on every span enter and exit, the current
//! thread's active span: its trace id, its span id and those of up to
//! [`ANCESTORS`] enclosing spans, its local root (the outermost span of the
//! trace in this process) and its name. The handler copies that into each
//! sample; the collector credits the sample to the span, its ancestors and
//! its local root.
//!
//! [`SpanCell`] is written only by its own thread (the layer runs there) and
//! read only by the signal handler on that same thread. It keeps two copies:
//! the writer fills the inactive one and then flips `active`, so a signal
//! arriving at any instruction reads either the old context or the new one,
//! never a half-written mix, without locks.

use crate::sync::{AtomicU8, Ordering, UnsafeCell};

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
}

impl SpanContext {
    pub(crate) const NONE: SpanContext = SpanContext {
        trace_id: 0,
        span_id: 0,
        ancestors: [0; ANCESTORS],
        local_root: 0,
        name: "",
    };

    pub(crate) fn is_some(&self) -> bool {
        self.span_id != 0
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
        }
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
}
