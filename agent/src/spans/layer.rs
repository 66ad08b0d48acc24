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

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::trace::{Event, SpanKind, Status, TraceContextExt};
use opentelemetry::{KeyValue, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::context::{ANCESTORS, SpanContext};
use super::finished::{self, FinishedSpan, Pending};

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
        dispatch: OnceLock::new(),
        otel_pipeline: AtomicBool::new(false),
        otel_checked: AtomicBool::new(false),
    }
}

/// The layer returned by [`tracing_layer`].
pub struct SpanLayer {
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
    /// Set once tracing-opentelemetry is seen giving spans their ids.
    otel_pipeline: AtomicBool,
    /// Set once the first span was resolved: whether tracing-opentelemetry
    /// is in the subscriber does not change after that, so spans need not
    /// ask again when it is not.
    otel_checked: AtomicBool,
}

impl std::fmt::Debug for SpanLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanLayer")
            .field("otel_pipeline", &self.otel_pipeline.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What the layer keeps in each span's extensions.
struct SpanState {
    /// Resolved on first enter (or close): ids, ancestry, name.
    context: Option<SpanContext>,
    start: SystemTime,
    /// Recorded only while exporting.
    record: Option<SpanRecord>,
}

/// Keys and most names are the callsite's `&'static str`s, so that a
/// span costs as few allocations on the host's thread as it can.
struct SpanRecord {
    name: Cow<'static, str>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    status: Status,
}

thread_local! {
    /// The contexts of the spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<SpanContext>> = const { RefCell::new(Vec::new()) };
    /// A per-thread id generator state (see `random_u64`).
    static RNG: Cell<u64> = const { Cell::new(0) };
}

impl<S> tracing_subscriber::Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let record = (finished::is_exporting() && !self.otel_pipeline.load(Ordering::Relaxed))
            .then(|| {
                let mut record = SpanRecord {
                    name: Cow::Borrowed(attrs.metadata().name()),
                    kind: SpanKind::Internal,
                    attributes: location_attributes(attrs.metadata()),
                    events: Vec::new(),
                    status: Status::Unset,
                };
                attrs.record(&mut FieldRecorder(&mut record));
                record
            });
        span.extensions_mut().insert(SpanState {
            context: None,
            start: SystemTime::now(),
            record,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(record) = span
            .extensions_mut()
            .get_mut::<SpanState>()
            .and_then(|s| s.record.as_mut())
        {
            values.record(&mut FieldRecorder(record));
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
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        fields
            .attributes
            .push(KeyValue::new("level", level.as_str()));
        let name = fields
            .message
            .clone()
            .unwrap_or_else(|| event.metadata().name().to_owned());
        if level == Level::ERROR {
            record.status = Status::error(name.clone());
        }
        record
            .events
            .push(Event::new(name, SystemTime::now(), fields.attributes, 0));
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(context) = self.resolve(id, &ctx) else {
            return;
        };
        ENTERED.with_borrow_mut(|entered| entered.push(context));
        publish(Some(&context));
    }

    fn on_exit(&self, _id: &Id, _ctx: Context<'_, S>) {
        let now = ENTERED.with_borrow_mut(|entered| {
            entered.pop();
            entered.last().copied()
        });
        publish(now.as_ref());
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if !finished::is_exporting() || self.otel_pipeline.load(Ordering::Relaxed) {
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
        let finished = FinishedSpan {
            context,
            parent_span_id: context.ancestors[0],
            name: record.name,
            kind: record.kind,
            start: state.start,
            end: SystemTime::now(),
            attributes: record.attributes,
            events: record.events,
            status: record.status,
        };
        let _ = finished::submit(Pending::Recorded(Box::new(finished)));
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
        let otel = self.otel_ids(id);
        let (trace_id, span_id) = match otel {
            Some(ids) => ids,
            None => (
                parent.map_or_else(random_trace_id, |p| p.trace_id),
                random_span_id(),
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
        };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanState>() {
            Some(state) => state.context = Some(context),
            None => extensions.insert(SpanState {
                context: Some(context),
                start: SystemTime::now(),
                record: None,
            }),
        }
        Some(context)
    }

    /// The ids tracing-opentelemetry gave this span, if it runs.
    fn otel_ids(&self, id: &Id) -> Option<(u128, u64)> {
        if self.otel_checked.load(Ordering::Relaxed) && !self.otel_pipeline.load(Ordering::Relaxed)
        {
            return None;
        }
        self.otel_checked.store(true, Ordering::Relaxed);
        let dispatch = self.dispatch.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return None;
        }
        self.otel_pipeline.store(true, Ordering::Relaxed);
        Some((
            u128::from_be_bytes(span_context.trace_id().to_bytes()),
            u64::from_be_bytes(span_context.span_id().to_bytes()),
        ))
    }
}

/// Publishes `context` (or "no span") for this thread's samples.
fn publish(context: Option<&SpanContext>) {
    crate::spans::publish_for_current_thread(context);
}

/// A non-zero random 64-bit id.
fn random_u64() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        if x == 0 {
            // Seed from std's per-process random keys and the thread.
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::hash::RandomState::new().build_hasher();
            hasher.write_u64(std::thread::current().id().as_u64_stable());
            x = hasher.finish() | 1;
        }
        // splitmix64: a full-period generator with well-mixed output.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).max(1)
    })
}

fn random_span_id() -> u64 {
    random_u64()
}

fn random_trace_id() -> u128 {
    (u128::from(random_u64()) << 64) | u128::from(random_u64())
}

/// Extension to hash a `ThreadId` without unstable APIs.
trait ThreadIdBits {
    fn as_u64_stable(&self) -> u64;
}

impl ThreadIdBits for std::thread::ThreadId {
    fn as_u64_stable(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

/// `code.*` attributes from the span's callsite.
fn location_attributes(metadata: &'static tracing::Metadata<'static>) -> Vec<KeyValue> {
    // Room for the span's own fields too, so most spans never regrow it.
    let mut attributes = Vec::with_capacity(3 + metadata.fields().len());
    attributes.push(KeyValue::new("code.namespace", metadata.target()));
    if let Some(file) = metadata.file() {
        attributes.push(KeyValue::new("code.filepath", file));
    }
    if let Some(line) = metadata.line() {
        attributes.push(KeyValue::new("code.lineno", i64::from(line)));
    }
    attributes
}

/// Turns span fields into attributes; honours tracing-opentelemetry's
/// `otel.name`, `otel.kind`, `otel.status_code` and `otel.status_message`.
struct FieldRecorder<'a>(&'a mut SpanRecord);

impl FieldRecorder<'_> {
    fn set(&mut self, field: &Field, value: Value) {
        let record = &mut *self.0;
        match field.name() {
            "otel.name" => record.name = Cow::Owned(value.as_str().into_owned()),
            "otel.kind" => {
                record.kind = match value.as_str().to_ascii_lowercase().as_str() {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                }
            }
            "otel.status_code" => {
                record.status = match value.as_str().to_ascii_lowercase().as_str() {
                    "error" => Status::error(""),
                    "ok" => Status::Ok,
                    _ => Status::Unset,
                }
            }
            "otel.status_message" => {
                if let Status::Error { .. } = record.status {
                    record.status = Status::error(value.as_str().into_owned());
                }
            }
            name => {
                record.attributes.retain(|kv| kv.key.as_str() != name);
                record.attributes.push(KeyValue::new(name, value));
            }
        }
    }
}

impl Visit for FieldRecorder<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.set(field, Value::I64(v)),
            Err(_) => self.set(field, Value::String(value.to_string().into())),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Value::String(value.to_owned().into()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.set(field, Value::String(format!("{value:?}").into()));
    }
}

/// An event's message and other fields.
#[derive(Default)]
struct EventFields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            name => self.attributes.push(KeyValue::new(name, value.to_owned())),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = Some(format!("{value:?}")),
            name => self
                .attributes
                .push(KeyValue::new(name, format!("{value:?}"))),
        }
    }
}
