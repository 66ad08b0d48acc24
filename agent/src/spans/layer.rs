//! The `tracing` layer: publishes each thread's active span for the signal
//! handler, and records spans for export.
//!
//! On every enter and exit (which, for async code, is every poll) the layer
//! publishes the thread's innermost entered span in the thread's registry
//! slot. Span ids are OpenTelemetry ids: if tracing-opentelemetry runs in the
//! same subscriber, they are the ids of the spans it exports (read with
//! `tracing_opentelemetry::get_otel_context`); otherwise the layer mints
//! W3C-valid random ids itself, children inheriting their parent's trace id.
//!
//! When the agent exports spans (an OTLP endpoint is configured) and no
//! tracing-opentelemetry pipeline is doing it already, the layer also keeps
//! each span's fields, events and times, and on close hands the finished
//! span to the exporter's queue without waiting.
//!
//! On exit, the layer also learns whether any sample was taken while the
//! span was entered (the thread's sample count moved: see
//! `sampler::span_context`). If so, the span and every span above it are marked
//! *sampled*: those are the spans such a sample is credited to. A span
//! never marked has an empty profile, known when it closes, and skips the
//! wait for the collector. In a tracing-opentelemetry pipeline the mark is
//! a private attribute on the OpenTelemetry span, which
//! [`ProfilingSpanProcessor`](crate::ProfilingSpanProcessor) takes off again.
//!
//! This file holds the callbacks and what they keep per span and thread;
//! span ids are read or minted in `ids`, fields become attributes in
//! `fields`, and the sampled mark is spread in `sampled`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::SystemTime;

use opentelemetry::trace::Status;
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::fields;
use super::finished::{self, Pending};
use super::ids::{OtelPipeline, mint};
use super::record::SpanRecord;
use super::sampled;
use crate::sampler::span_context::{ANCESTORS, SampleMark, SpanContext, sampled_between};

/// Returns the layer that makes every sample know its span, and (when an
/// OTLP endpoint is configured) exports spans with their CPU profile.
///
/// ```no_run
/// use tracing_subscriber::prelude::*;
///
/// let _agent = smolder::start()?;
/// tracing_subscriber::registry()
///     .with(smolder::tracing_layer())
///     .init();
/// # Ok::<(), smolder::Error>(())
/// ```
///
/// With tracing-opentelemetry in the same subscriber, the layer uses its
/// span ids and leaves exporting to that pipeline; wrap its span processor
/// in [`ProfilingSpanProcessor`](crate::ProfilingSpanProcessor) to add the
/// profile attributes there.
pub fn tracing_layer() -> SpanLayer {
    SpanLayer {
        otel: OtelPipeline::new(),
    }
}

/// The layer returned by [`tracing_layer`].
pub struct SpanLayer {
    /// tracing-opentelemetry in the same subscriber, if it is there: the
    /// source of span ids, and the exporter of spans when it runs.
    otel: OtelPipeline,
}

impl std::fmt::Debug for SpanLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanLayer")
            .field("otel_pipeline", &self.otel.runs())
            .finish_non_exhaustive()
    }
}

/// What the layer keeps in each span's extensions.
pub(super) struct SpanState {
    /// Resolved on first enter (or close): ids, ancestry, name.
    context: Option<SpanContext>,
    start: SystemTime,
    /// Recorded only while exporting.
    record: Option<SpanRecord>,
    /// Whether a sample may have been credited to the span (see the module
    /// docs). Once set, it is set on every span above it too.
    pub(super) sampled: bool,
}

/// A span entered on this thread.
struct Entered {
    /// Its `tracing` id.
    id: u64,
    context: SpanContext,
    /// The thread's sample count just before the span was published.
    since: Option<SampleMark>,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<Entered>> = const { RefCell::new(Vec::new()) };
}

impl<S> tracing_subscriber::Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        self.otel.register(dispatch);
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // The agent's own threads are neither sampled nor traced: a span
        // of theirs (h2 opens some for every request it sends) gets no
        // state, so nothing below records, publishes or exports it.
        if crate::sampler::is_agent_thread() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let record = (finished::is_exporting() && !self.otel.runs()).then(|| {
            let mut record = SpanRecord::new(attrs.metadata());
            fields::record_span(attrs, &mut record, false);
            record
        });
        span.extensions_mut().insert(SpanState {
            context: None,
            start: SystemTime::now(),
            record,
            sampled: false,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(record) = span
            .extensions_mut()
            .get_mut::<SpanState>()
            .and_then(|s| s.record.as_mut())
        {
            fields::record_span(values, record, true);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(record) = extensions
            .get_mut::<SpanState>()
            .and_then(|s| s.record.as_mut())
        else {
            return;
        };
        let level = *event.metadata().level();
        let name = record.event(SystemTime::now(), |attributes| {
            let message = fields::record_event(event, attributes);
            attributes.str("level", level.as_str());
            message.map_or(Cow::Borrowed(event.metadata().name()), Cow::Owned)
        });
        if level == Level::ERROR {
            record.status = Status::error(name);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if crate::sampler::is_agent_thread() {
            return;
        }
        let Some(context) = self.resolve(id, &ctx) else {
            return;
        };
        let since = publish(Some(&context)).before;
        ENTERED.with_borrow_mut(|entered| {
            entered.push(Entered {
                id: id.into_u64(),
                context,
                since,
            });
        });
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if crate::sampler::is_agent_thread() {
            return;
        }
        // Exits are nearly always innermost first, but `tracing` allows
        // others: the span leaving is looked for, not assumed on top.
        let (left, now) = ENTERED.with_borrow_mut(|entered| {
            let left = entered
                .iter()
                .rposition(|e| e.id == id.into_u64())
                .map(|index| entered.remove(index));
            (left, entered.last().map(|e| e.context))
        });
        let until = publish(now.as_ref()).after;
        if let Some(left) = left
            && sampled_between(left.since, until)
        {
            sampled::mark(id, &ctx, &self.otel);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if !finished::is_exporting() || self.otel.runs() || crate::sampler::is_agent_thread() {
            return;
        }
        let Some(context) = self.resolve(&id, &ctx) else {
            return;
        };
        let Some(span) = ctx.span(&id) else { return };
        let Some(state) = span.extensions_mut().remove::<SpanState>() else {
            return;
        };
        let Some(record) = state.record else { return };
        let finished = record.finish(&context, state.start, SystemTime::now(), state.sampled);
        let _ = finished::submit(Pending::Recorded(finished));
    }
}

impl SpanLayer {
    /// The span's context, computed on first use and kept in its extensions.
    fn resolve<S>(&self, id: &Id, ctx: &Context<'_, S>) -> Option<SpanContext>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let span = ctx.span(id)?;
        if let Some(context) = span.extensions().get::<SpanState>().and_then(|s| s.context) {
            return Some(context);
        }
        let parent = span.parent().and_then(|p| self.resolve(&p.id(), ctx));
        // Must run while no extensions of this span are borrowed: it may lock
        // them (tracing-opentelemetry's documented rule).
        let (trace_id, span_id) = match self.otel.ids(id) {
            Some(ids) => ids,
            None => (
                parent.map_or_else(mint::trace_id, |p| p.trace_id),
                mint::span_id(),
            ),
        };
        let mut ancestors = [0u64; ANCESTORS];
        if let Some(parent) = &parent {
            ancestors[0] = parent.span_id;
            ancestors[1..].copy_from_slice(&parent.ancestors[..ANCESTORS - 1]);
        }
        let context = SpanContext {
            trace_id,
            span_id,
            ancestors,
            local_root: parent.map_or(span_id, |p| p.local_root),
            name: span.metadata().name(),
            root_name: parent.map_or(span.metadata().name(), |p| p.root_name),
        };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanState>() {
            Some(state) => state.context = Some(context),
            None => extensions.insert(SpanState {
                context: Some(context),
                start: SystemTime::now(),
                record: None,
                sampled: false,
            }),
        }
        Some(context)
    }
}

/// Publishes `context` (or "no span") for this thread's samples.
fn publish(context: Option<&SpanContext>) -> crate::sampler::span_context::Published {
    crate::sampler::span_context::publish_for_current_thread(context)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Proto;
    use opentelemetry_proto::tonic::trace::v1::{
        Span, span::SpanKind as ProtoKind, status::StatusCode,
    };
    use prost::Message;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn attribute<'a>(
        attributes: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
        key: &str,
    ) -> Vec<&'a Proto> {
        attributes
            .iter()
            .filter(|kv| kv.key == key)
            .filter_map(|kv| kv.value.as_ref()?.value.as_ref())
            .collect()
    }

    fn string(value: &str) -> Proto {
        Proto::StringValue(value.to_owned())
    }

    /// Spans recorded through a real subscriber, decoded with the official
    /// types from the bytes the layer hands the exporter.
    #[test]
    fn recorded_spans_decode_with_their_fields_events_and_status() {
        let inbox = finished::install(true, None);
        let subscriber = tracing_subscriber::registry().with(tracing_layer());
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("request", route = "/orders/{id}");
            outer.in_scope(|| {
                let query = tracing::info_span!(
                    "query",
                    sql = "SELECT 1",
                    rows = tracing::field::Empty,
                    big = u64::MAX,
                    shape = ?(1, "two"),
                    code.lineno = 7_i64,
                    otel.name = "SELECT orders",
                    otel.kind = "client",
                );
                query.record("rows", 3_i64);
                query.record("rows", 42_i64);
                query.in_scope(|| {
                    tracing::info!(attempt = 2, "retrying");
                    tracing::error!(code = ?404, "not found");
                });
            });
        });
        finished::uninstall();
        let spans: Vec<Span> = inbox
            .try_iter()
            .map(|pending| match pending {
                Pending::Recorded(span) => Span::decode(span.fields.as_slice()).expect("decodes"),
                Pending::Forwarded { .. } => panic!("nothing was forwarded"),
            })
            .collect();
        let [query, request] = spans.as_slice() else {
            panic!("two spans, inner first: {spans:?}")
        };

        assert_eq!(request.name, "request");
        assert_eq!(request.kind, ProtoKind::Internal as i32);
        assert!(request.parent_span_id.is_empty());
        assert_eq!(
            attribute(&request.attributes, "route"),
            [&string("/orders/{id}")]
        );
        assert_eq!(
            attribute(&request.attributes, "code.namespace"),
            [&string(module_path!())]
        );
        assert_eq!(query.trace_id, request.trace_id);
        assert_eq!(query.parent_span_id, request.span_id);
        assert!(query.start_time_unix_nano <= query.end_time_unix_nano);
        assert!(request.start_time_unix_nano <= query.start_time_unix_nano);

        assert_eq!(query.name, "SELECT orders");
        assert_eq!(query.kind, ProtoKind::Client as i32);
        let attributes = &query.attributes;
        assert_eq!(attribute(attributes, "sql"), [&string("SELECT 1")]);
        assert_eq!(
            attribute(attributes, "rows"),
            [&Proto::IntValue(42)],
            "recorded twice, kept once"
        );
        assert_eq!(
            attribute(attributes, "big"),
            [&string(&u64::MAX.to_string())]
        );
        assert_eq!(attribute(attributes, "shape"), [&string("(1, \"two\")")]);
        assert_eq!(
            attribute(attributes, "code.lineno"),
            [&Proto::IntValue(7)],
            "the span's own field wins"
        );
        assert!(attribute(attributes, "otel.name").is_empty());

        let [retry, error] = query.events.as_slice() else {
            panic!("two events: {:?}", query.events)
        };
        assert_eq!(retry.name, "retrying");
        assert_eq!(
            attribute(&retry.attributes, "attempt"),
            [&Proto::IntValue(2)]
        );
        assert_eq!(attribute(&retry.attributes, "level"), [&string("INFO")]);
        assert_eq!(error.name, "not found");
        assert_eq!(attribute(&error.attributes, "code"), [&string("404")]);
        let status = query.status.as_ref().expect("status is always sent");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "not found");
        assert_eq!(
            request.status.as_ref().map(|s| s.code),
            Some(StatusCode::Unset as i32)
        );
    }
}
