//! Span-aware profiling: which span each sample was taken in.
//!
//! * [`layer`]: the `tracing` layer that publishes it on every span enter
//!   and exit, with OpenTelemetry ids (shared with tracing-opentelemetry when
//!   it runs, minted otherwise), and hands finished spans to the exporter.
//! * [`record`]: a span's fields, written in OTLP wire form as the layer
//!   records them.
//! * [`finished`]: the bounded queue from the layer to the exporter.
//! * [`processor`]: profile attributes for spans of the user's own
//!   OpenTelemetry pipeline.
//!
//! The per-thread span context the layer publishes and the signal handler
//! copies into each sample is `sampler::span_context`; the collector's CPU
//! per span is `collect::span_table`.

pub(crate) mod attributes;
mod fields;
pub(crate) mod finished;
mod ids;
pub(crate) mod layer;
pub(crate) mod processor;
pub(crate) mod record;
mod sampled;

/// An OpenTelemetry span's (trace id, span id), as samples and the span
/// table carry them.
pub(crate) fn otel_ids(context: &opentelemetry::trace::SpanContext) -> (u128, u64) {
    (
        u128::from_be_bytes(context.trace_id().to_bytes()),
        u64::from_be_bytes(context.span_id().to_bytes()),
    )
}
