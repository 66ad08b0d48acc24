//! Span-aware profiling: which span each sample was taken in.
//!
//! * [`context`]: the per-thread span context the tracing layer publishes
//!   and the signal handler copies into each sample.
//! * [`layer`]: the `tracing` layer that publishes it on every span enter
//!   and exit, with OpenTelemetry ids (shared with tracing-opentelemetry when
//!   it runs, minted otherwise), and hands finished spans to the exporter.
//! * [`record`]: a span's fields, written in OTLP wire form as the layer
//!   records them.
//! * [`finished`]: the bounded queue from the layer to the exporter.
//! * [`processor`]: profile attributes for spans of the user's own
//!   OpenTelemetry pipeline.
//! * [`table`]: the collector's CPU per span.

pub(crate) mod context;
pub(crate) mod finished;
pub(crate) mod layer;
pub(crate) mod processor;
pub(crate) mod record;
sampling_platform! {
    pub(crate) mod table;
}

use std::cell::Cell;

use context::SpanContext;

std::thread_local! {
    /// Whether the calling thread is one of the agent's own.
    static AGENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the agent's (`threads::enter_agent_thread`):
/// the layer records none of its spans. The libraries the exporter runs,
/// h2 among them, open spans of their own, and exporting those would make
/// more.
pub(crate) fn mark_agent_thread() {
    AGENT_THREAD.set(true);
}

/// Whether the calling thread is one of the agent's.
pub(crate) fn is_agent_thread() -> bool {
    AGENT_THREAD.get()
}

/// An OpenTelemetry span's (trace id, span id), as samples and the span
/// table carry them.
pub(crate) fn otel_ids(context: &opentelemetry::trace::SpanContext) -> (u128, u64) {
    (
        u128::from_be_bytes(context.trace_id().to_bytes()),
        u64::from_be_bytes(context.span_id().to_bytes()),
    )
}

/// A thread's sample count just before it published a span context and
/// just after (`None` while no agent runs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    pub(crate) before: Option<context::SampleMark>,
    pub(crate) after: Option<context::SampleMark>,
}

sampling_platform! {
/// Publishes the calling thread's current span (or none) for its samples.
/// Does nothing while no agent runs, so that threads do not fill the
/// registry for nothing.
pub(crate) fn publish_for_current_thread(context: Option<&SpanContext>) -> Published {
    use std::cell::Cell;
    use std::sync::atomic::{Ordering, compiler_fence};
    use context::SampleMark;
    thread_local! {
        /// This thread's kernel id and registry slot, once known.
        static SLOT: Cell<Option<(i32, usize)>> = const { Cell::new(None) };
    }
    const NOT_RUNNING: Published = Published { before: None, after: None };
    if !crate::agent::is_running() {
        return NOT_RUNNING;
    }
    let registry = crate::threads::registry();
    let slot = match SLOT.get() {
        // The registry is emptied when an agent stops: check the slot is
        // still ours.
        Some((tid, slot)) if registry.slot(slot).tid() == tid => slot,
        _ => {
            let tid = crate::threads::current_tid();
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
}

other_platforms! {
    /// Without sampling, there is no one to publish to.
    pub(crate) fn publish_for_current_thread(_context: Option<&SpanContext>) -> Published {
        Published { before: None, after: None }
    }
}
