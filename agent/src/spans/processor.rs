//! For services that already export spans with their own
//! tracing-opentelemetry pipeline: a span processor that adds the profile
//! attributes on the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::finished::{self, Pending};

/// Wraps your span processor (typically a `BatchSpanProcessor`) so that
/// every span reaches it with Smolder's profile attributes
/// (`profile.samples`, `profile.top_functions`, ...).
///
/// `on_end` never blocks. A span in which no sample was taken (most of
/// them, at everyday rates) gets its attributes (an empty profile) and goes
/// to your processor at once. One that may have samples is queued for the
/// agent's span thread, which waits for them to be collected, adds the
/// attributes and then calls your processor's `on_end`. If no agent is
/// running, or its queue is full, the span goes to your processor at once,
/// without the attributes.
///
/// Smolder's [`tracing_layer`](crate::tracing_layer) tells the two kinds
/// apart by putting a private attribute, `smolder.sampled`, on spans that
/// may have samples; this processor takes it off. Every tracer provider fed
/// by that subscriber should therefore have this processor, or its spans
/// may carry that attribute.
///
/// ```no_run
/// use opentelemetry::trace::TracerProvider as _;
/// use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
/// use tracing_subscriber::prelude::*;
///
/// let _agent = smolder::start()?;
/// let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
/// let provider = SdkTracerProvider::builder()
///     .with_span_processor(smolder::ProfilingSpanProcessor::new(
///         BatchSpanProcessor::builder(exporter).build(),
///     ))
///     .build();
/// tracing_subscriber::registry()
///     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-service")))
///     .with(smolder::tracing_layer())
///     .init();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ProfilingSpanProcessor {
    inner: Arc<dyn SpanProcessor>,
}

/// The attribute the layer puts on the OpenTelemetry spans a sample may
/// have been credited to, for [`ProfilingSpanProcessor`] to take off.
pub(crate) const SAMPLED_MARK: &str = "smolder.sampled";

/// Whether a [`ProfilingSpanProcessor`] was ever made: until then the
/// layer puts no marks on spans (nothing would take them off).
static IN_USE: AtomicBool = AtomicBool::new(false);

pub(crate) fn in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

impl ProfilingSpanProcessor {
    /// Wraps `inner`.
    pub fn new(inner: impl SpanProcessor + 'static) -> Self {
        IN_USE.store(true, Ordering::Relaxed);
        ProfilingSpanProcessor {
            inner: Arc::new(inner),
        }
    }
}

impl SpanProcessor for ProfilingSpanProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        if !take_sampled_mark(&mut span) {
            // No sample was taken in this span or below it: its profile is
            // empty and known now, so it goes on from this thread without
            // waiting for the collector.
            if add_empty_profile(&mut span) {
                finished::count_forwarded();
            }
            self.inner.on_end(span);
            return;
        }
        let pending = Pending::Forwarded {
            span: Box::new(span),
            forward: Arc::clone(&self.inner),
        };
        if let Err(Pending::Forwarded { span, .. }) = finished::submit(pending) {
            self.inner.on_end(*span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any span: the processor
        // is not shared yet.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Takes the layer's sampled mark off `span`; true if it was there, or
/// may have been there but was dropped by the span's attribute limit.
fn take_sampled_mark(span: &mut SpanData) -> bool {
    // The mark is usually last, or nearly: look from the end.
    match span
        .attributes
        .iter()
        .rposition(|kv| kv.key.as_str() == SAMPLED_MARK)
    {
        Some(index) => {
            span.attributes.remove(index);
            true
        }
        None => span.dropped_attributes_count > 0,
    }
}

#[cfg(smolder_sampling)]
/// Adds the attributes of an empty profile; false when no agent runs.
fn add_empty_profile(span: &mut SpanData) -> bool {
    finished::with_flamegraph_base(|base| {
        super::attributes::push_profile_attributes(
            span,
            &crate::profile::SpanSummary::default(),
            base,
        );
    })
    .is_some()
}

#[cfg(not(smolder_sampling))]
/// Without sampling, no agent runs.
fn add_empty_profile(_span: &mut SpanData) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    fn span_with(attributes: Vec<KeyValue>, dropped_attributes_count: u32) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([1; 16]),
                SpanId::from_bytes([2; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "span".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes,
            dropped_attributes_count,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    #[test]
    fn the_mark_is_found_and_taken_off_wherever_it_is() {
        let mut span = span_with(
            vec![
                KeyValue::new("route", "/a"),
                KeyValue::new(SAMPLED_MARK, true),
                KeyValue::new("rows", 3),
            ],
            0,
        );
        assert!(take_sampled_mark(&mut span));
        let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["route", "rows"], "the others keep their order");
        assert!(!take_sampled_mark(&mut span), "taken off once");
    }

    #[test]
    fn a_span_that_lost_attributes_may_have_lost_the_mark() {
        let mut span = span_with(vec![KeyValue::new("route", "/a")], 0);
        assert!(!take_sampled_mark(&mut span));
        let mut span = span_with(vec![KeyValue::new("route", "/a")], 1);
        assert!(take_sampled_mark(&mut span), "treated as sampled");
    }
}
