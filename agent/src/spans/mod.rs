//! Span-aware profiling: which span each sample was taken in.
//!
//! * [`layer`]: the `tracing` layer that publishes it on every span enter
//!   and exit, and hands finished spans to the exporter;
//!   * `ids`: their OpenTelemetry ids, shared with tracing-opentelemetry
//!     when it runs, minted otherwise;
//!   * `sampled`: the mark on spans a sample may have been credited to;
//!   * `fields`: what the layer records of span and event fields.
//! * [`record`]: a span's fields, written in OTLP wire form as the layer
//!   records them.
//! * [`finished`]: the bounded queue from the layer to the exporter.
//! * [`attributes`]: the `profile.*` attributes, named and written once.
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

pub(crate) use ids::otel_ids;
