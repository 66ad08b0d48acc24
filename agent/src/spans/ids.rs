//! Span ids: the ones tracing-opentelemetry gave a span when it runs in
//! the same subscriber, so that samples and exported spans agree on them,
//! and otherwise W3C-valid random ids minted here.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TraceContextExt;
use tracing::Dispatch;
use tracing::dispatcher::WeakDispatch;
use tracing::span::Id;

/// tracing-opentelemetry in the same subscriber, if it is there: whether it
/// is, and each span's OpenTelemetry context from it.
pub(super) struct OtelPipeline {
    /// The subscriber the layer is part of, to ask tracing-opentelemetry
    /// through.
    dispatch: OnceLock<WeakDispatch>,
    /// Set once tracing-opentelemetry is seen giving spans their ids.
    seen: AtomicBool,
    /// Set once the first span was resolved: whether tracing-opentelemetry
    /// is in the subscriber does not change after that, so spans need not
    /// ask again when it is not.
    checked: AtomicBool,
}

impl OtelPipeline {
    /// Not seen yet: asked about with the first span.
    pub(super) fn new() -> OtelPipeline {
        OtelPipeline {
            dispatch: OnceLock::new(),
            seen: AtomicBool::new(false),
            checked: AtomicBool::new(false),
        }
    }

    /// Remembers the subscriber the layer was registered with.
    pub(super) fn register(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    /// Whether tracing-opentelemetry gives spans their ids (and so exports
    /// them itself).
    pub(super) fn runs(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }

    /// The ids tracing-opentelemetry gave this span, if it runs. Must be
    /// called with no extensions of the span borrowed (see [`Self::context`]).
    pub(super) fn ids(&self, id: &Id) -> Option<(u128, u64)> {
        if self.checked.load(Ordering::Relaxed) && !self.runs() {
            return None;
        }
        self.checked.store(true, Ordering::Relaxed);
        let context = self.context(id)?;
        let span = context.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return None;
        }
        self.seen.store(true, Ordering::Relaxed);
        Some(otel_ids(span_context))
    }

    /// tracing-opentelemetry's context of this span (its OpenTelemetry
    /// span), if it runs. Must be called with no extensions of the span
    /// borrowed: it may lock them (tracing-opentelemetry's documented rule).
    pub(super) fn context(&self, id: &Id) -> Option<opentelemetry::Context> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        tracing_opentelemetry::get_otel_context(id, &dispatch)
    }
}

/// Random ids for spans without tracing-opentelemetry's: non-zero, as W3C
/// trace context requires, from a generator per thread so that minting
/// takes no lock.
pub(super) mod mint {
    use std::cell::Cell;

    use crate::sampler::random::SplitMix64;

    thread_local! {
        /// This thread's generator, seeded on first use.
        static RNG: Cell<Option<SplitMix64>> = const { Cell::new(None) };
    }

    /// A new span id.
    pub(in crate::spans) fn span_id() -> u64 {
        non_zero_u64()
    }

    /// A new trace id, for a span without a parent.
    pub(in crate::spans) fn trace_id() -> u128 {
        (u128::from(non_zero_u64()) << 64) | u128::from(non_zero_u64())
    }

    /// A non-zero random 64-bit value, from this thread's generator.
    fn non_zero_u64() -> u64 {
        RNG.with(|state| {
            let mut rng = state.get().unwrap_or_else(SplitMix64::seeded);
            let value = rng.next_u64();
            state.set(Some(rng));
            value.max(1)
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn minted_ids_are_non_zero_and_not_repeated() {
            let spans: std::collections::HashSet<u64> = (0..1000).map(|_| span_id()).collect();
            assert_eq!(spans.len(), 1000);
            assert!(!spans.contains(&0));
            let trace = trace_id();
            assert_ne!(trace, 0);
            assert_ne!(trace, trace_id());
        }
    }
}

/// An OpenTelemetry span's (trace id, span id), as samples and the span
/// table carry them.
pub(crate) fn otel_ids(context: &opentelemetry::trace::SpanContext) -> (u128, u64) {
    (
        u128::from_be_bytes(context.trace_id().to_bytes()),
        u64::from_be_bytes(context.span_id().to_bytes()),
    )
}
