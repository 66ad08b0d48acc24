//! The hand-off from the tracing layer (on the host's threads) to the span
//! exporter (on the agent's): finished spans go into a bounded queue, and
//! when the queue is full or no exporter runs they are dropped and counted.
//! Nothing here ever blocks the thread closing the span.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::stats::SPAN_QUEUE;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use opentelemetry_sdk::trace::SpanData;

/// A span the layer recorded, closed, waiting for its profile attributes.
#[derive(Debug)]
pub(crate) struct FinishedSpan {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    /// Every field of its OTLP `Span` message but the profile attributes,
    /// in wire form (see `spans::record`).
    pub(crate) fields: Vec<u8>,
    /// Whether a sample may have been credited to it; if not, its profile
    /// is empty and the collector need not be asked.
    pub(crate) sampled: bool,
    /// Whether it is the outermost span of its trace in this process (it
    /// then carries `pyroscope.profile.id`).
    pub(crate) local_root: bool,
}

/// What the exporter enriches: our own spans, or spans from the user's
/// OpenTelemetry pipeline on their way to the user's processor.
pub(crate) enum Pending {
    Recorded(FinishedSpan),
    Forwarded {
        span: Box<SpanData>,
        forward: std::sync::Arc<dyn opentelemetry_sdk::trace::SpanProcessor>,
    },
}

impl Pending {
    /// The span's id, as the span table keys it.
    pub(crate) fn span_id(&self) -> u64 {
        match self {
            Pending::Recorded(span) => span.span_id,
            Pending::Forwarded { span, .. } => super::otel_ids(&span.span_context).1,
        }
    }

    /// Whether a sample may have been credited to the span. The user's
    /// spans come this way only if so (see `ProfilingSpanProcessor`).
    pub(crate) fn sampled(&self) -> bool {
        match self {
            Pending::Recorded(span) => span.sampled,
            Pending::Forwarded { .. } => true,
        }
    }
}

/// Spans waiting for the exporter, at most.
pub(crate) const QUEUE_CAPACITY: usize = 4096;

/// The running agent's end of the queue, and what spans forwarded at once
/// need from it.
struct Sink {
    sender: SyncSender<Pending>,
    /// Where the agent serves span flame graphs (`profile.flamegraph_url`).
    flamegraph_base: Option<String>,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// Whether our layer's spans are exported (so the layer records their
/// attributes and events); false while no agent exports.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Opens the queue; the agent's exporter thread reads the receiver.
pub(crate) fn install(exporting: bool, flamegraph_base: Option<String>) -> Receiver<Pending> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
    *crate::sync::write(&SINK) = Some(Sink {
        sender,
        flamegraph_base,
    });
    EXPORTING.store(exporting, Ordering::Relaxed);
    receiver
}

/// Closes the queue (the agent stopping).
pub(crate) fn uninstall() {
    EXPORTING.store(false, Ordering::Relaxed);
    *crate::sync::write(&SINK) = None;
}

pub(crate) fn is_exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Hands a span to the exporter without waiting; gives it back if it
/// cannot be queued (no agent, queue full, lock contended).
pub(crate) fn submit(pending: Pending) -> Result<(), Pending> {
    let Ok(sink) = SINK.try_read() else {
        SPAN_QUEUE
            .dropped_no_exporter
            .fetch_add(1, Ordering::Relaxed);
        return Err(pending);
    };
    let Some(sink) = sink.as_ref() else {
        SPAN_QUEUE
            .dropped_no_exporter
            .fetch_add(1, Ordering::Relaxed);
        return Err(pending);
    };
    match sink.sender.try_send(pending) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(pending)) => {
            SPAN_QUEUE
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            Err(pending)
        }
        Err(TrySendError::Disconnected(pending)) => {
            SPAN_QUEUE
                .dropped_no_exporter
                .fetch_add(1, Ordering::Relaxed);
            Err(pending)
        }
    }
}

/// Runs `f` with the running agent's flame-graph base URL (`None` if it
/// serves none). `None` when no agent runs, or one is starting or stopping
/// right now: never waits.
pub(crate) fn with_flamegraph_base<R>(f: impl FnOnce(Option<&str>) -> R) -> Option<R> {
    let sink = SINK.try_read().ok()?;
    sink.as_ref().map(|sink| f(sink.flamegraph_base.as_deref()))
}

/// Counts a span passed on to the user's processor with its attributes.
pub(crate) fn count_forwarded() {
    SPAN_QUEUE.forwarded.fetch_add(1, Ordering::Relaxed);
}
