//! Span and event fields to OTLP attributes: one `Visit` for both, over a
//! [`FieldSink`] that says which fields are something else (a span's
//! `otel.*` fields, an event's message) and where the rest go.

use std::borrow::Cow;
use std::fmt::Debug;

use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;

use super::record::{KeyValues, SpanRecord};

/// Records a span's fields in its record: when it is created, or
/// (`replacing`) values recorded later, which may be there already and
/// then replace what is.
pub(super) fn record_span(fields: &impl RecordFields, record: &mut SpanRecord, replacing: bool) {
    fields.record(&mut FieldVisitor(SpanFields { record, replacing }));
}

/// Records an event's fields as attributes, but for its message, which is
/// returned.
pub(super) fn record_event(
    event: &tracing::Event<'_>,
    attributes: &mut KeyValues<'_>,
) -> Option<String> {
    let mut visitor = FieldVisitor(EventFields {
        attributes,
        message: None,
    });
    event.record(&mut visitor);
    visitor.0.message
}

/// Where a visitor's fields go.
trait FieldSink {
    /// Takes a text or `Debug` field that is not an attribute, rendered
    /// by `text`; false if it is one.
    fn take_text(&mut self, field: &Field, text: &dyn Fn() -> String) -> bool;

    /// Takes a number or boolean field that is not an attribute; false if
    /// it is one.
    fn take_value(&mut self, field: &Field, value: &Value) -> bool;

    /// Adds `field` to the attributes, with `write`.
    fn attribute(&mut self, field: &Field, write: impl FnOnce(&mut KeyValues<'_>));
}

/// Visits fields into a [`FieldSink`]. A `u64` that does not fit OTLP's
/// signed integers is written in decimal, as text.
struct FieldVisitor<K>(K);

impl<K: FieldSink> FieldVisitor<K> {
    fn value(&mut self, field: &Field, value: Value) {
        if !self.0.take_value(field, &value) {
            self.0
                .attribute(field, |attributes| attributes.value(field.name(), &value));
        }
    }
}

impl<K: FieldSink> Visit for FieldVisitor<K> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.value(field, Value::I64(v)),
            Err(_) => self.record_debug(field, &value),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.0.take_text(field, &|| value.to_owned()) {
            self.0
                .attribute(field, |attributes| attributes.str(field.name(), value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if !self.0.take_text(field, &|| format!("{value:?}")) {
            self.0
                .attribute(field, |attributes| attributes.debug(field.name(), value));
        }
    }
}

// === impl SpanFields ===

/// A span's fields: tracing-opentelemetry's `otel.name`, `otel.kind`,
/// `otel.status_code` and `otel.status_message` set the span's name, kind
/// and status; the others are attributes.
struct SpanFields<'a> {
    record: &'a mut SpanRecord,
    /// Whether the span may have the field already (values recorded after
    /// creation), so that it must be looked for and replaced.
    replacing: bool,
}

impl FieldSink for SpanFields<'_> {
    fn take_text(&mut self, field: &Field, text: &dyn Fn() -> String) -> bool {
        let record = &mut *self.record;
        match field.name() {
            "otel.name" => record.name = Cow::Owned(text()),
            "otel.kind" => {
                record.kind = match text().to_ascii_lowercase().as_str() {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                }
            }
            "otel.status_code" => {
                record.status = match text().to_ascii_lowercase().as_str() {
                    "error" => Status::error(""),
                    "ok" => Status::Ok,
                    _ => Status::Unset,
                }
            }
            "otel.status_message" => {
                if let Status::Error { .. } = record.status {
                    record.status = Status::error(text());
                }
            }
            _ => return false,
        }
        true
    }

    fn take_value(&mut self, field: &Field, value: &Value) -> bool {
        self.take_text(field, &|| value.as_str().into_owned())
    }

    /// Removes `field` first if it could be there already: recorded
    /// before, or one of the `code.*` ones the record starts with.
    fn attribute(&mut self, field: &Field, write: impl FnOnce(&mut KeyValues<'_>)) {
        if self.replacing || field.name().starts_with("code.") {
            self.record.remove_attribute(field.name());
        }
        write(&mut self.record.attributes());
    }
}

// === impl EventFields ===

/// An event's fields: its message (a text or `Debug` field named
/// `message`), and its other fields as attributes.
struct EventFields<'a, 'b> {
    attributes: &'a mut KeyValues<'b>,
    message: Option<String>,
}

impl FieldSink for EventFields<'_, '_> {
    fn take_text(&mut self, field: &Field, text: &dyn Fn() -> String) -> bool {
        let is_message = field.name() == "message";
        if is_message {
            self.message = Some(text());
        }
        is_message
    }

    fn take_value(&mut self, _: &Field, _: &Value) -> bool {
        false
    }

    fn attribute(&mut self, _: &Field, write: impl FnOnce(&mut KeyValues<'_>)) {
        write(self.attributes);
    }
}
