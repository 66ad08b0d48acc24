//! What the layer keeps of a span while the agent exports spans: its
//! attributes and events, already in OTLP wire form.
//!
//! Fields are encoded on the host's thread as they are recorded, into one
//! buffer per span, rather than kept as key-value objects (a string per
//! value, a vector per span and per event) for the span thread to convert,
//! copy and free. At close the span's identity, times and status are
//! appended, and the span thread only frames the bytes and adds the profile
//! attributes. One allocation on the host's thread per span, one free on the
//! span thread: the cost per span that the benchmarks' span section
//! measures.

use std::borrow::Cow;
use std::fmt::{Debug, Write as _};
use std::time::SystemTime;

use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status};

use super::finished::FinishedSpan;
use crate::sampler::span_context::SpanContext;
use crate::wire::{self, field};

/// Enough for the identity, times, status and a few attributes of most
/// spans (the demo's: about 250 bytes), so that the buffer rarely regrows.
const INITIAL_CAPACITY: usize = 320;

/// A span being recorded for export.
pub(crate) struct SpanRecord {
    pub(crate) name: Cow<'static, str>,
    pub(crate) kind: SpanKind,
    pub(crate) status: Status,
    /// `Span` fields so far: attributes and events, in the order recorded.
    fields: Vec<u8>,
}

impl SpanRecord {
    /// A record with the callsite's `code.*` attributes.
    pub(crate) fn new(metadata: &'static tracing::Metadata<'static>) -> SpanRecord {
        let mut record = SpanRecord::named(Cow::Borrowed(metadata.name()));
        let fields = &mut record.fields;
        wire::key_string(
            fields,
            field::ATTRIBUTES,
            "code.namespace",
            metadata.target(),
        );
        if let Some(file) = metadata.file() {
            wire::key_string(fields, field::ATTRIBUTES, "code.filepath", file);
        }
        if let Some(line) = metadata.line() {
            let line = Value::I64(i64::from(line));
            wire::key_value(fields, field::ATTRIBUTES, "code.lineno", &line);
        }
        record
    }

    /// A record with no attributes yet.
    pub(crate) fn named(name: Cow<'static, str>) -> SpanRecord {
        SpanRecord {
            name,
            kind: SpanKind::Internal,
            status: Status::Unset,
            fields: Vec::with_capacity(INITIAL_CAPACITY),
        }
    }

    /// The span's attributes, to add to. A key already present must be
    /// [`removed`](Self::remove_attribute) first: OTLP keys are unique.
    pub(crate) fn attributes(&mut self) -> KeyValues<'_> {
        KeyValues {
            out: &mut self.fields,
            tag: field::ATTRIBUTES,
        }
    }

    /// Removes the attribute `key`, if the span has it.
    pub(crate) fn remove_attribute(&mut self, key: &str) {
        wire::remove_key_values(&mut self.fields, field::ATTRIBUTES, key);
    }

    /// Adds an event at `time`: `write` records its attributes and returns
    /// its name.
    pub(crate) fn event(
        &mut self,
        time: SystemTime,
        write: impl FnOnce(&mut KeyValues<'_>) -> Cow<'static, str>,
    ) -> Cow<'static, str> {
        let mut name = Cow::Borrowed("");
        wire::message(&mut self.fields, field::EVENTS, |out| {
            wire::fixed64(out, field::EVENT_TIME, wire::unix_nanos(time));
            name = write(&mut KeyValues {
                out,
                tag: field::EVENT_ATTRIBUTES,
            });
            wire::string(out, field::EVENT_NAME, &name);
        });
        name
    }

    /// The finished span: what was recorded, with the span's identity,
    /// times and status appended.
    pub(crate) fn finish(
        self,
        context: &SpanContext,
        start: SystemTime,
        end: SystemTime,
        sampled: bool,
    ) -> FinishedSpan {
        let SpanRecord {
            name,
            kind,
            status,
            mut fields,
        } = self;
        let out = &mut fields;
        wire::bytes(out, field::TRACE_ID, &context.trace_id.to_be_bytes());
        wire::bytes(out, field::SPAN_ID, &context.span_id.to_be_bytes());
        let parent = context.ancestors[0];
        if parent != 0 {
            wire::bytes(out, field::PARENT_SPAN_ID, &parent.to_be_bytes());
        }
        wire::string(out, field::NAME, &name);
        wire::varint(out, field::KIND, wire::span_kind(&kind));
        wire::fixed64(out, field::START_TIME, wire::unix_nanos(start));
        wire::fixed64(out, field::END_TIME, wire::unix_nanos(end));
        wire::status(out, &status);
        wire::fixed32(out, field::FLAGS, wire::SPAN_FLAGS);
        FinishedSpan {
            trace_id: context.trace_id,
            span_id: context.span_id,
            fields,
            sampled,
            // The layer starts its own traces: a span without a parent is
            // the local root.
            local_root: parent == 0,
        }
    }
}

/// Adds key-values to a span's attributes or to one of its events.
pub(crate) struct KeyValues<'a> {
    out: &'a mut Vec<u8>,
    tag: u32,
}

impl KeyValues<'_> {
    pub(crate) fn value(&mut self, key: &str, value: &Value) {
        wire::key_value(self.out, self.tag, key, value);
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) {
        wire::key_string(self.out, self.tag, key, value);
    }

    /// A value's `Debug` form, formatted straight into the span's bytes.
    pub(crate) fn debug(&mut self, key: &str, value: &dyn Debug) {
        wire::key_string_with(self.out, self.tag, key, |out| {
            let _ = write!(Utf8Sink(out), "{value:?}");
        });
    }
}

/// Lets `write!` append to a byte buffer; it only ever receives `str`s.
struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
