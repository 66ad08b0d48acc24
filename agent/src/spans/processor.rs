//! For services that already export spans with their own
//! tracing-opentelemetry pipeline: a span processor that adds the profile
//! attributes on the way.

use std::sync::Arc;
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
/// `on_end` never blocks: the span is queued for the agent's span thread,
/// which waits for the span's last samples to be collected, adds the
/// attributes and then calls your processor's `on_end`. If no agent is
/// running, or its queue is full, the span goes to your processor at once,
/// without the attributes.
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

impl ProfilingSpanProcessor {
    /// Wraps `inner`.
    pub fn new(inner: impl SpanProcessor + 'static) -> Self {
        ProfilingSpanProcessor {
            inner: Arc::new(inner),
        }
    }
}

impl SpanProcessor for ProfilingSpanProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
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
