//! The sampled mark: which spans a sample may have been credited to.
//!
//! The layer finds out on exit that a sample was taken while a span was
//! entered (see the `layer` module docs). That sample counts for the span,
//! its ancestors and its local root, so all of them are marked; a span
//! never marked is known, when it closes, to have an empty profile. In a
//! tracing-opentelemetry pipeline the mark also goes on the OpenTelemetry
//! span, as a private attribute that
//! [`ProfilingSpanProcessor`](crate::ProfilingSpanProcessor) takes off again.

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use tracing::Subscriber;
use tracing::span::Id;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::ids::OtelPipeline;
use super::layer::SpanState;
use super::processor;

/// Marks the span, and every span above it, as sampled. Rare (a span
/// entered across a sample), so the walk up may take its time.
pub(super) fn mark<S>(id: &Id, ctx: &Context<'_, S>, otel: &OtelPipeline)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(span) = ctx.span(id) else { return };
    let in_otel_pipeline = otel.runs() && processor::in_use();
    for span in span.scope() {
        let newly_marked = match span.extensions_mut().get_mut::<SpanState>() {
            Some(state) => !std::mem::replace(&mut state.sampled, true),
            None => true,
        };
        if !newly_marked {
            // Marked before, and everything above it with it.
            break;
        }
        if in_otel_pipeline {
            mark_otel_span(&span.id(), otel);
        }
    }
}

/// Puts the sampled mark on tracing-opentelemetry's span, for
/// `ProfilingSpanProcessor` to find.
fn mark_otel_span(id: &Id, otel: &OtelPipeline) {
    if let Some(context) = otel.context(id) {
        context
            .span()
            .set_attribute(KeyValue::new(processor::SAMPLED_MARK, true));
    }
}
