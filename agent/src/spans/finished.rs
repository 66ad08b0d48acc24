//! The hand-off from the tracing layer (on the host's threads) to the span
//! exporter (on the agent's): finished spans go into a bounded queue, and
//! when the queue is full or no exporter runs they are dropped and counted.
//! Nothing here ever blocks the thread closing the span.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
            Pending::Forwarded { span, .. } => {
                u64::from_be_bytes(span.span_context.span_id().to_bytes())
            }
        }
    }
}

/// Spans waiting for the exporter, at most.
pub(crate) const QUEUE_CAPACITY: usize = 4096;

static SINK: RwLock<Option<SyncSender<Pending>>> = RwLock::new(None);
/// Whether our layer's spans are exported (so the layer records their
/// attributes and events); false while no agent exports.
static EXPORTING: AtomicBool = AtomicBool::new(false);
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_NO_EXPORTER: AtomicU64 = AtomicU64::new(0);

/// Opens the queue; the agent's exporter thread reads the receiver.
pub(crate) fn install(exporting: bool) -> Receiver<Pending> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
    *SINK.write().unwrap_or_else(|p| p.into_inner()) = Some(sender);
    EXPORTING.store(exporting, Ordering::Relaxed);
    receiver
}

/// Closes the queue (the agent stopping).
pub(crate) fn uninstall() {
    EXPORTING.store(false, Ordering::Relaxed);
    *SINK.write().unwrap_or_else(|p| p.into_inner()) = None;
}

pub(crate) fn is_exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Hands a span to the exporter without waiting; gives it back if it
/// cannot be queued (no agent, queue full, lock contended).
pub(crate) fn submit(pending: Pending) -> Result<(), Pending> {
    let Ok(sink) = SINK.try_read() else {
        DROPPED_NO_EXPORTER.fetch_add(1, Ordering::Relaxed);
        return Err(pending);
    };
    let Some(sender) = sink.as_ref() else {
        DROPPED_NO_EXPORTER.fetch_add(1, Ordering::Relaxed);
        return Err(pending);
    };
    match sender.try_send(pending) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(pending)) => {
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            Err(pending)
        }
        Err(TrySendError::Disconnected(pending)) => {
            DROPPED_NO_EXPORTER.fetch_add(1, Ordering::Relaxed);
            Err(pending)
        }
    }
}

/// Spans dropped before export: (queue full, no exporter running).
pub(crate) fn dropped() -> (u64, u64) {
    (
        DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        DROPPED_NO_EXPORTER.load(Ordering::Relaxed),
    )
}
