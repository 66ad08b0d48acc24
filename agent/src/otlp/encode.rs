//! Encoding: finished spans written straight into the protobuf bytes of an
//! OTLP `ExportTraceServiceRequest`, with no intermediate messages.
//!
//! The usual route (opentelemetry-otlp) turns each span into the SDK's
//! `SpanData`, then into the generated `opentelemetry-proto` structs (a
//! `String` per attribute key and value), groups them by scope in a hash
//! map, and encodes that. At a few thousand spans a second that was most of
//! the span thread's CPU, nearly all of it allocation, copying and freeing.
//! Here each span is encoded once, from the record the layer made, into one
//! buffer that keeps its capacity from request to request.
//!
//! The request has one `ResourceSpans` (the agent's resource, encoded once)
//! with one `ScopeSpans` (scope `smolder`). Field numbers and wire types
//! follow `opentelemetry/proto/trace/v1/trace.proto` and `common.proto`;
//! the tests decode the output with the official generated types and
//! compare it with what opentelemetry-proto's own conversion produces.
//!
//! Proto3 rules: a plain scalar or string field at its default is left out
//! (a decoder reads it back as the default); a `oneof` member and a message
//! field are written even when empty, since their presence is information.

use std::time::SystemTime;

use opentelemetry::trace::{Event, SpanKind, Status};
use opentelemetry::{Array, StringValue, Value};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::{attribute, flamegraph_url_into};
use crate::profiler::SpanSummary;
use crate::spans::finished::FinishedSpan;

/// Field numbers, named after their proto fields.
mod field {
    // ExportTraceServiceRequest
    pub(super) const RESOURCE_SPANS: u32 = 1;
    // ResourceSpans
    pub(super) const RESOURCE: u32 = 1;
    pub(super) const SCOPE_SPANS: u32 = 2;
    pub(super) const RESOURCE_SCHEMA_URL: u32 = 3;
    // Resource
    pub(super) const RESOURCE_ATTRIBUTES: u32 = 1;
    // ScopeSpans
    pub(super) const SCOPE: u32 = 1;
    pub(super) const SPANS: u32 = 2;
    // InstrumentationScope
    pub(super) const SCOPE_NAME: u32 = 1;
    pub(super) const SCOPE_VERSION: u32 = 2;
    // Span
    pub(super) const TRACE_ID: u32 = 1;
    pub(super) const SPAN_ID: u32 = 2;
    pub(super) const PARENT_SPAN_ID: u32 = 4;
    pub(super) const NAME: u32 = 5;
    pub(super) const KIND: u32 = 6;
    pub(super) const START_TIME: u32 = 7;
    pub(super) const END_TIME: u32 = 8;
    pub(super) const ATTRIBUTES: u32 = 9;
    pub(super) const EVENTS: u32 = 11;
    pub(super) const STATUS: u32 = 15;
    pub(super) const FLAGS: u32 = 16;
    // Span.Event
    pub(super) const EVENT_TIME: u32 = 1;
    pub(super) const EVENT_NAME: u32 = 2;
    pub(super) const EVENT_ATTRIBUTES: u32 = 3;
    pub(super) const EVENT_DROPPED_ATTRIBUTES: u32 = 4;
    // Status
    pub(super) const STATUS_MESSAGE: u32 = 2;
    pub(super) const STATUS_CODE: u32 = 3;
    // KeyValue
    pub(super) const KEY: u32 = 1;
    pub(super) const VALUE: u32 = 2;
    // AnyValue (a oneof)
    pub(super) const STRING_VALUE: u32 = 1;
    pub(super) const BOOL_VALUE: u32 = 2;
    pub(super) const INT_VALUE: u32 = 3;
    pub(super) const DOUBLE_VALUE: u32 = 4;
    pub(super) const ARRAY_VALUE: u32 = 5;
    // ArrayValue
    pub(super) const ARRAY_VALUES: u32 = 1;
}

/// `SpanFlags`: the W3C trace flags (sampled: every span we export was) in
/// the low byte, and bit 8 saying that bit 9 (parent is remote) is known.
/// Our parents are always local: the layer starts its own traces.
const SPAN_FLAGS: u32 = 0x01 | 0x100;

/// Builds export requests, one span at a time.
pub(crate) struct RequestEncoder {
    /// The `ResourceSpans` fields that precede its spans: the resource, and
    /// its schema URL. Encoded once.
    resource_fields: Vec<u8>,
    /// The `ScopeSpans.scope` field. Encoded once.
    scope_field: Vec<u8>,
    /// The spans so far, each a `ScopeSpans.spans` field.
    spans: Vec<u8>,
    span_count: usize,
    /// Reused for the profile attributes built as text.
    text: String,
    flamegraph_base: Option<String>,
}

impl RequestEncoder {
    /// An encoder for spans of `resource`, with flame-graph links under
    /// `flamegraph_base` when there is one.
    pub(crate) fn new(resource: &opentelemetry_sdk::Resource, flamegraph_base: Option<String>) -> RequestEncoder {
        let mut resource_fields = Vec::new();
        message(&mut resource_fields, field::RESOURCE, |out| {
            for (key, value) in resource.iter() {
                key_value(out, field::RESOURCE_ATTRIBUTES, key.as_str(), value);
            }
        });
        if let Some(schema_url) = resource.schema_url() {
            string(&mut resource_fields, field::RESOURCE_SCHEMA_URL, schema_url);
        }
        let mut scope_field = Vec::new();
        message(&mut scope_field, field::SCOPE, |out| {
            string(out, field::SCOPE_NAME, "smolder");
            string(out, field::SCOPE_VERSION, env!("CARGO_PKG_VERSION"));
        });
        RequestEncoder {
            resource_fields,
            scope_field,
            spans: Vec::new(),
            span_count: 0,
            text: String::new(),
            flamegraph_base,
        }
    }

    /// Spans added since the last [`finish`](Self::finish).
    pub(crate) fn len(&self) -> usize {
        self.span_count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.span_count == 0
    }

    /// Adds one of our spans with its profile attributes.
    pub(crate) fn push(&mut self, span: &FinishedSpan, summary: &SpanSummary) {
        let RequestEncoder {
            spans,
            text,
            flamegraph_base,
            ..
        } = self;
        message(spans, field::SPANS, |out| {
            let context = &span.context;
            bytes(out, field::TRACE_ID, &context.trace_id.to_be_bytes());
            bytes(out, field::SPAN_ID, &context.span_id.to_be_bytes());
            if span.parent_span_id != 0 {
                bytes(out, field::PARENT_SPAN_ID, &span.parent_span_id.to_be_bytes());
            }
            string(out, field::NAME, &span.name);
            varint(out, field::KIND, span_kind(&span.kind));
            fixed64(out, field::START_TIME, unix_nanos(span.start));
            fixed64(out, field::END_TIME, unix_nanos(span.end));
            for attribute in &span.attributes {
                key_value(out, field::ATTRIBUTES, attribute.key.as_str(), &attribute.value);
            }
            profile_attributes(out, summary, text, flamegraph_base.as_deref(), (context.trace_id, context.span_id));
            for event in &span.events {
                event_message(out, event);
            }
            status(out, &span.status);
            fixed32(out, field::FLAGS, SPAN_FLAGS);
        });
        self.span_count += 1;
    }

    /// The request holding every span pushed since the last call; the
    /// encoder is empty again afterwards (and keeps its buffer).
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let scope_spans_len = self.scope_field.len() + self.spans.len();
        let resource_spans_len = self.resource_fields.len()
            + key_len(field::SCOPE_SPANS)
            + encoded_len_varint(scope_spans_len as u64)
            + scope_spans_len;
        let total = key_len(field::RESOURCE_SPANS) + encoded_len_varint(resource_spans_len as u64) + resource_spans_len;
        let mut out = Vec::with_capacity(total);
        encode_key(field::RESOURCE_SPANS, WireType::LengthDelimited, &mut out);
        encode_varint(resource_spans_len as u64, &mut out);
        out.extend_from_slice(&self.resource_fields);
        encode_key(field::SCOPE_SPANS, WireType::LengthDelimited, &mut out);
        encode_varint(scope_spans_len as u64, &mut out);
        out.extend_from_slice(&self.scope_field);
        out.extend_from_slice(&self.spans);
        debug_assert_eq!(out.len(), total);
        self.spans.clear();
        self.span_count = 0;
        out
    }
}

/// The five `profile.*` attributes (four without a flame-graph base).
fn profile_attributes(
    out: &mut Vec<u8>,
    summary: &SpanSummary,
    text: &mut String,
    flamegraph_base: Option<&str>,
    (trace_id, span_id): (u128, u64),
) {
    key_value(out, field::ATTRIBUTES, attribute::SAMPLES, &Value::I64(summary.samples as i64));
    key_value(out, field::ATTRIBUTES, attribute::SELF_SAMPLES, &Value::I64(summary.self_samples as i64));
    key_value(out, field::ATTRIBUTES, attribute::CPU_TIME_MS, &Value::F64(super::cpu_time_ms(summary)));
    text.clear();
    super::top_functions_into(text, summary);
    key_string(out, field::ATTRIBUTES, attribute::TOP_FUNCTIONS, text);
    if let Some(base) = flamegraph_base {
        text.clear();
        flamegraph_url_into(text, base, trace_id, span_id);
        key_string(out, field::ATTRIBUTES, attribute::FLAMEGRAPH_URL, text);
    }
}

fn event_message(out: &mut Vec<u8>, event: &Event) {
    message(out, field::EVENTS, |out| {
        fixed64(out, field::EVENT_TIME, unix_nanos(event.timestamp));
        string(out, field::EVENT_NAME, &event.name);
        for attribute in &event.attributes {
            key_value(out, field::EVENT_ATTRIBUTES, attribute.key.as_str(), &attribute.value);
        }
        varint(out, field::EVENT_DROPPED_ATTRIBUTES, u64::from(event.dropped_attributes_count));
    });
}

/// Always present, as the SDK's exporters send it, even when unset.
fn status(out: &mut Vec<u8>, status: &Status) {
    message(out, field::STATUS, |out| {
        let (code, description) = match status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(out, field::STATUS_MESSAGE, description);
        varint(out, field::STATUS_CODE, code);
    });
}

/// `Span.SpanKind` numbering (0 is "unspecified", which we never send).
fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

// === fields ===

/// A `KeyValue` message in field `tag`.
fn key_value(out: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    message(out, tag, |out| {
        string(out, field::KEY, key);
        any_value(out, field::VALUE, value);
    });
}

/// A `KeyValue` with a string value, without making a [`Value`] of it.
fn key_string(out: &mut Vec<u8>, tag: u32, key: &str, value: &str) {
    message(out, tag, |out| {
        string(out, field::KEY, key);
        message(out, field::VALUE, |out| length_delimited(out, field::STRING_VALUE, value.as_bytes()));
    });
}

/// An `AnyValue` message. A value kind this code does not know (the enum is
/// non-exhaustive) goes out as an empty `AnyValue` rather than failing the
/// request.
fn any_value(out: &mut Vec<u8>, tag: u32, value: &Value) {
    message(out, tag, |out| match value {
        // Members of a oneof: written even at their default.
        Value::Bool(v) => {
            encode_key(field::BOOL_VALUE, WireType::Varint, out);
            encode_varint(u64::from(*v), out);
        }
        Value::I64(v) => {
            encode_key(field::INT_VALUE, WireType::Varint, out);
            // int64 is the two's complement, sign-extended to 64 bits.
            encode_varint(*v as u64, out);
        }
        Value::F64(v) => {
            encode_key(field::DOUBLE_VALUE, WireType::SixtyFourBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::String(v) => length_delimited(out, field::STRING_VALUE, v.as_str().as_bytes()),
        Value::Array(array) => message(out, field::ARRAY_VALUE, |out| array_values(out, array)),
        _ => {}
    });
}

fn array_values(out: &mut Vec<u8>, array: &Array) {
    let each = |out: &mut Vec<u8>, value: Value| any_value(out, field::ARRAY_VALUES, &value);
    match array {
        Array::Bool(values) => values.iter().for_each(|&v| each(out, Value::Bool(v))),
        Array::I64(values) => values.iter().for_each(|&v| each(out, Value::I64(v))),
        Array::F64(values) => values.iter().for_each(|&v| each(out, Value::F64(v))),
        Array::String(values) => values.iter().for_each(|v| string_value(out, v)),
        _ => {}
    }
}

/// One string element of an array, without cloning it into a [`Value`].
fn string_value(out: &mut Vec<u8>, value: &StringValue) {
    message(out, field::ARRAY_VALUES, |out| {
        length_delimited(out, field::STRING_VALUE, value.as_str().as_bytes());
    });
}

// === wire format ===

/// A plain string field (left out when empty).
fn string(out: &mut Vec<u8>, tag: u32, value: &str) {
    if !value.is_empty() {
        length_delimited(out, tag, value.as_bytes());
    }
}

/// A plain bytes field (left out when empty).
fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        length_delimited(out, tag, value);
    }
}

fn length_delimited(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// A plain varint field (left out when zero).
fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

/// A plain fixed64 field (left out when zero).
fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A plain fixed32 field (left out when zero).
fn fixed32(out: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A message field: `body` writes the message's fields after its key, and
/// its length goes in between afterwards. The length is first given one
/// byte, which most small messages (attributes, statuses) need; a longer
/// body is moved up to make room, a copy of the body only.
fn message(out: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, out);
    let length_at = out.len();
    out.push(0);
    body(out);
    let body_start = length_at + 1;
    let body_len = out.len() - body_start;
    let width = encoded_len_varint(body_len as u64);
    if width > 1 {
        out.resize(out.len() + width - 1, 0);
        out.copy_within(body_start..body_start + body_len, length_at + width);
    }
    let mut length = &mut out[length_at..length_at + width];
    encode_varint(body_len as u64, &mut length);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{SpanContext as OtelSpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::spans::context::SpanContext;

    const BASE: &str = "http://checkout-7:6060";

    fn resource() -> Resource {
        Resource::builder()
            .with_service_name("checkout")
            .with_attribute(KeyValue::new("deployment.environment", "test"))
            .build()
    }

    fn summary(samples: u64, top: &[(&str, f64)]) -> SpanSummary {
        SpanSummary {
            samples,
            self_samples: samples / 2,
            cpu_ns: samples * 10_101_010,
            top_functions: top.iter().map(|&(f, share)| (f.to_owned(), share)).collect(),
        }
    }

    fn span(span_id: u64, parent_span_id: u64, attributes: Vec<KeyValue>) -> FinishedSpan {
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + span_id);
        FinishedSpan {
            context: SpanContext {
                trace_id: 0x0af7651916cd43dd8448eb211c80319c,
                span_id,
                ..SpanContext::NONE
            },
            parent_span_id,
            name: Cow::Owned(format!("span {span_id}")),
            kind: SpanKind::Internal,
            start,
            end: start + Duration::from_micros(1500),
            attributes,
            events: Vec::new(),
            status: Status::Unset,
        }
    }

    /// The same span as the SDK would export it, profile attributes added
    /// the way spans for the user's own processor get them.
    fn span_data(span: &FinishedSpan, summary: &SpanSummary) -> SpanData {
        let context = &span.context;
        let mut attributes = span.attributes.clone();
        attributes.extend(super::super::profile_attributes(summary, Some(BASE), context.trace_id, context.span_id));
        let mut events = SpanEvents::default();
        events.events = span.events.clone();
        SpanData {
            span_context: OtelSpanContext::new(
                TraceId::from_bytes(context.trace_id.to_be_bytes()),
                SpanId::from_bytes(context.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(span.parent_span_id.to_be_bytes()),
            parent_span_is_remote: false,
            span_kind: span.kind.clone(),
            name: span.name.clone(),
            start_time: span.start,
            end_time: span.end,
            attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: span.status.clone(),
            instrumentation_scope: InstrumentationScope::builder("smolder")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// Encodes `spans` with ours, and with opentelemetry-proto's own
    /// conversion; both decoded with the official types.
    fn both_ways(spans: &[(FinishedSpan, SpanSummary)]) -> (ExportTraceServiceRequest, ExportTraceServiceRequest) {
        let resource = resource();
        let mut encoder = RequestEncoder::new(&resource, Some(BASE.to_owned()));
        for (span, summary) in spans {
            encoder.push(span, summary);
        }
        assert_eq!(encoder.len(), spans.len());
        let ours = ExportTraceServiceRequest::decode(encoder.finish().as_slice()).expect("our request decodes");
        let sdk_spans = spans.iter().map(|(span, summary)| span_data(span, summary)).collect();
        let official = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(sdk_spans, &ResourceAttributesWithSchema::from(&resource)),
        };
        (ours, official)
    }

    #[test]
    fn requests_match_the_official_conversion() {
        let mut root = span(1, 0, vec![KeyValue::new("http.route", "/orders/{customer}")]);
        root.kind = SpanKind::Server;
        root.status = Status::error("payment declined");
        let mut child = span(
            2,
            1,
            vec![
                KeyValue::new("db.rows", -3_i64),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("cached", false),
                KeyValue::new("empty", ""),
                KeyValue::new("tags", Value::Array(Array::String(vec!["a".into(), "".into()]))),
                KeyValue::new("ids", Value::Array(Array::I64(vec![i64::MIN, 0, 7]))),
                KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("weights", Value::Array(Array::F64(vec![-0.5, 1e300]))),
                // Lengths of two and three varint bytes.
                KeyValue::new("sql", "SELECT 1 ".repeat(20)),
                KeyValue::new("body", "x".repeat(20_000)),
            ],
        );
        child.kind = SpanKind::Client;
        child.status = Status::Ok;
        child.events = vec![
            Event::new("retry", child.start, vec![KeyValue::new("attempt", 2_i64)], 1),
            Event::new("", child.end, Vec::new(), 0),
        ];
        let spans = [
            (root, summary(40, &[("shop::orders::load", 62.5), ("sqlite3VdbeExec", 20.0)])),
            (child, summary(0, &[])),
        ];
        let (ours, official) = both_ways(&spans);
        assert_eq!(ours, official);
        let attributes = &ours.resource_spans[0].scope_spans[0].spans[0].attributes;
        assert!(attributes.iter().any(|kv| kv.key == "profile.top_functions"));
    }

    #[test]
    fn finishing_starts_a_new_request() {
        let resource = resource();
        let mut encoder = RequestEncoder::new(&resource, None);
        encoder.push(&span(1, 0, Vec::new()), &summary(1, &[("f", 100.0)]));
        encoder.push(&span(2, 1, Vec::new()), &summary(0, &[]));
        let first = ExportTraceServiceRequest::decode(encoder.finish().as_slice()).unwrap();
        assert!(encoder.is_empty());
        encoder.push(&span(3, 0, Vec::new()), &summary(0, &[]));
        let second = ExportTraceServiceRequest::decode(encoder.finish().as_slice()).unwrap();
        let ids = |request: &ExportTraceServiceRequest| -> Vec<Vec<u8>> {
            request.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.span_id.clone()).collect()
        };
        assert_eq!(ids(&first), [1_u64, 2].map(|id| id.to_be_bytes().to_vec()));
        assert_eq!(ids(&second), [3_u64.to_be_bytes().to_vec()]);
        // Without a base, no link.
        let attributes = &second.resource_spans[0].scope_spans[0].spans[0].attributes;
        assert!(!attributes.iter().any(|kv| kv.key == "profile.flamegraph_url"));
        assert_eq!(attributes.len(), 4);
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::I64),
            // NaN is never equal to itself, so it cannot be compared.
            any::<f64>().prop_filter("comparable", |v| !v.is_nan()).prop_map(Value::F64),
            ".{0,300}".prop_map(|s: String| Value::from(s)),
            prop::collection::vec(any::<i64>(), 0..4).prop_map(|v| Value::Array(Array::I64(v))),
            prop::collection::vec(".{0,8}", 0..4)
                .prop_map(|v| Value::Array(Array::String(v.into_iter().map(StringValue::from).collect()))),
        ]
    }

    proptest! {
        #[test]
        fn any_attributes_encode_as_the_official_conversion_does(
            values in prop::collection::vec(("[a-z.]{0,12}", any_value()), 0..12),
            samples in 0_u64..1000,
        ) {
            let attributes = values.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
            let spans = [(span(9, 3, attributes), summary(samples, &[("hot", 100.0)]))];
            let (ours, official) = both_ways(&spans);
            prop_assert_eq!(ours, official);
        }
    }
}
