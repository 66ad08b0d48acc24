//! Encoding: finished spans written straight into the protobuf bytes of an
//! OTLP `ExportTraceServiceRequest`, with no intermediate messages.
//!
//! The usual route (opentelemetry-otlp) turns each span into the SDK's
//! `SpanData`, then into the generated `opentelemetry-proto` structs (a
//! `String` per attribute key and value), groups them by scope in a hash
//! map, and encodes that. At a few thousand spans a second that was most of
//! the span thread's CPU, nearly all of it allocation, copying and freeing.
//! Here the layer has already written each span's own fields in wire form
//! on the host's thread (`spans::record`); this frames them, adds the
//! profile attributes, and gathers them into a buffer that keeps its
//! capacity from request to request.
//!
//! The request has one `ResourceSpans` (the agent's resource, encoded once)
//! with one `ScopeSpans` (scope `smolder`). The tests decode the output with
//! the official generated types and compare it with what
//! opentelemetry-proto's own conversion produces from the same span.

use bytes::Bytes;
use opentelemetry::Value;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::profile::SpanSummary;
use crate::spans::attributes::{
    cpu_time_ms, flamegraph_url_into, name, profile_id_into, top_functions_into,
};
use crate::spans::finished::FinishedSpan;
use crate::wire::{field, key_string, key_value, message, string};

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
    /// The profile attributes of the span being added, written before its
    /// length is known so that the span is framed without moving it.
    profile: Vec<u8>,
    /// The profile attributes of a span with no samples, but for its flame
    /// graph link: most spans at everyday rates. Encoded once.
    unsampled_profile: Vec<u8>,
    /// Reused for the profile attributes built as text.
    text: String,
    flamegraph_base: Option<String>,
    /// The buffer of a request that has been sent, for the next one: a
    /// request is hundreds of kilobytes, and allocating and freeing one
    /// each time costs more than the copying.
    spare: Vec<u8>,
}

impl RequestEncoder {
    /// An encoder for spans of `resource`, with flame-graph links under
    /// `flamegraph_base` when there is one.
    pub(crate) fn new(
        resource: &opentelemetry_sdk::Resource,
        flamegraph_base: Option<String>,
    ) -> RequestEncoder {
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
        let mut unsampled_profile = Vec::new();
        sample_attributes(
            &mut unsampled_profile,
            &SpanSummary::default(),
            &mut String::new(),
        );
        RequestEncoder {
            resource_fields,
            scope_field,
            spans: Vec::new(),
            span_count: 0,
            profile: Vec::new(),
            unsampled_profile,
            text: String::new(),
            flamegraph_base,
            spare: Vec::new(),
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
            profile,
            unsampled_profile,
            text,
            flamegraph_base,
            ..
        } = self;
        profile.clear();
        if summary.is_unsampled() {
            profile.extend_from_slice(unsampled_profile);
        } else {
            sample_attributes(profile, summary, text);
        }
        if let Some(base) = flamegraph_base.as_deref() {
            text.clear();
            flamegraph_url_into(text, base, span.trace_id, span.span_id);
            key_string(profile, field::ATTRIBUTES, name::FLAMEGRAPH_URL, text);
        }
        if span.local_root {
            text.clear();
            profile_id_into(text, span.span_id);
            key_string(profile, field::ATTRIBUTES, name::PYROSCOPE_PROFILE_ID, text);
        }
        // Everything the layer recorded, then the profile: a span's
        // attributes may be split around other fields (see `wire`).
        let length = span.fields.len() + profile.len();
        encode_key(field::SPANS, WireType::LengthDelimited, spans);
        encode_varint(length as u64, spans);
        spans.extend_from_slice(&span.fields);
        spans.extend_from_slice(profile);
        self.span_count += 1;
    }

    /// The request holding every span pushed since the last call; the
    /// encoder is empty again afterwards (and keeps its buffer).
    pub(crate) fn finish(&mut self) -> Bytes {
        let scope_spans_len = self.scope_field.len() + self.spans.len();
        let resource_spans_len = self.resource_fields.len()
            + key_len(field::SCOPE_SPANS)
            + encoded_len_varint(scope_spans_len as u64)
            + scope_spans_len;
        let total = key_len(field::RESOURCE_SPANS)
            + encoded_len_varint(resource_spans_len as u64)
            + resource_spans_len;
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        out.reserve(total);
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
        Bytes::from(out)
    }

    /// Takes back a request's buffer once the request is done with, if
    /// nothing else still holds it.
    pub(crate) fn reclaim(&mut self, request: Bytes) {
        if let Ok(buffer) = request.try_into_mut() {
            self.spare = buffer.into();
        }
    }
}

/// The four `profile.*` attributes that come from the span's samples (the
/// fifth, the flame-graph link, from its ids).
fn sample_attributes(out: &mut Vec<u8>, summary: &SpanSummary, text: &mut String) {
    key_value(
        out,
        field::ATTRIBUTES,
        name::SAMPLES,
        &Value::I64(summary.samples as i64),
    );
    key_value(
        out,
        field::ATTRIBUTES,
        name::SELF_SAMPLES,
        &Value::I64(summary.self_samples as i64),
    );
    key_value(
        out,
        field::ATTRIBUTES,
        name::CPU_TIME_MS,
        &Value::F64(cpu_time_ms(summary)),
    );
    text.clear();
    top_functions_into(text, summary);
    key_string(out, field::ATTRIBUTES, name::TOP_FUNCTIONS, text);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::{Duration, SystemTime};

    use opentelemetry::trace::{
        Event, SpanContext as OtelSpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId,
        TraceState,
    };
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::sampler::span_context::{ANCESTORS, SpanContext};
    use crate::spans::record::SpanRecord;

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
            top_functions: top
                .iter()
                .map(|&(f, share)| (f.to_owned(), share))
                .collect(),
        }
    }

    /// A span as the layer would record it, in the SDK's terms.
    struct SpanSpec {
        span_id: u64,
        parent_span_id: u64,
        name: String,
        kind: SpanKind,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
        events: Vec<Event>,
        status: Status,
    }

    const TRACE_ID: u128 = 0x0af7651916cd43dd8448eb211c80319c;

    fn span(span_id: u64, parent_span_id: u64, attributes: Vec<KeyValue>) -> SpanSpec {
        let start =
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + span_id);
        SpanSpec {
            span_id,
            parent_span_id,
            name: format!("span {span_id}"),
            kind: SpanKind::Internal,
            start,
            end: start + Duration::from_micros(1500),
            attributes,
            events: Vec::new(),
            status: Status::Unset,
        }
    }

    /// The span recorded the way the layer records it.
    fn recorded(spec: &SpanSpec) -> FinishedSpan {
        let mut record = SpanRecord::named(Cow::Owned(spec.name.clone()));
        record.kind = spec.kind.clone();
        record.status = spec.status.clone();
        for attribute in &spec.attributes {
            record
                .attributes()
                .value(attribute.key.as_str(), &attribute.value);
        }
        for event in &spec.events {
            record.event(event.timestamp, |fields| {
                for attribute in &event.attributes {
                    fields.value(attribute.key.as_str(), &attribute.value);
                }
                event.name.clone()
            });
        }
        let mut ancestors = [0; ANCESTORS];
        ancestors[0] = spec.parent_span_id;
        let context = SpanContext {
            trace_id: TRACE_ID,
            span_id: spec.span_id,
            ancestors,
            ..SpanContext::NONE
        };
        record.finish(&context, spec.start, spec.end, true)
    }

    /// The same span as the SDK would export it, profile attributes added
    /// the way spans for the user's own processor get them.
    fn span_data(span: &SpanSpec, summary: &SpanSummary) -> SpanData {
        let mut events = SpanEvents::default();
        events.events = span.events.clone();
        let mut data = SpanData {
            span_context: OtelSpanContext::new(
                TraceId::from_bytes(TRACE_ID.to_be_bytes()),
                SpanId::from_bytes(span.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(span.parent_span_id.to_be_bytes()),
            parent_span_is_remote: false,
            span_kind: span.kind.clone(),
            name: span.name.clone().into(),
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes.clone(),
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: span.status.clone(),
            instrumentation_scope: InstrumentationScope::builder("smolder")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        };
        crate::spans::attributes::push_profile_attributes(&mut data, summary, Some(BASE));
        data
    }

    /// Encodes `spans` with ours, and with opentelemetry-proto's own
    /// conversion; both decoded with the official types.
    fn both_ways(
        spans: &[(SpanSpec, SpanSummary)],
    ) -> (ExportTraceServiceRequest, ExportTraceServiceRequest) {
        let resource = resource();
        let mut encoder = RequestEncoder::new(&resource, Some(BASE.to_owned()));
        for (span, summary) in spans {
            encoder.push(&recorded(span), summary);
        }
        assert_eq!(encoder.len(), spans.len());
        let ours =
            ExportTraceServiceRequest::decode(&encoder.finish()[..]).expect("our request decodes");
        let sdk_spans = spans
            .iter()
            .map(|(span, summary)| span_data(span, summary))
            .collect();
        let official = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                sdk_spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        (ours, official)
    }

    #[test]
    fn requests_match_the_official_conversion() {
        let mut root = span(
            1,
            0,
            vec![KeyValue::new("http.route", "/orders/{customer}")],
        );
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
                KeyValue::new(
                    "tags",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
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
            Event::new(
                "retry",
                child.start,
                vec![KeyValue::new("attempt", 2_i64)],
                0,
            ),
            Event::new("", child.end, Vec::new(), 0),
        ];
        let spans = [
            (
                root,
                summary(
                    40,
                    &[("shop::orders::load", 62.5), ("sqlite3VdbeExec", 20.0)],
                ),
            ),
            (child, summary(0, &[])),
        ];
        let (ours, official) = both_ways(&spans);
        assert_eq!(ours, official);
        let spans = &ours.resource_spans[0].scope_spans[0].spans;
        let attributes = &spans[0].attributes;
        assert!(
            attributes
                .iter()
                .any(|kv| kv.key == "profile.top_functions")
        );
        // The local root, and only it, says which profile is its own.
        let profile_id = |span: &opentelemetry_proto::tonic::trace::v1::Span| {
            span.attributes
                .iter()
                .filter(|kv| kv.key == "pyroscope.profile.id")
                .map(|kv| kv.value.clone())
                .collect::<Vec<_>>()
        };
        use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
        assert_eq!(
            profile_id(&spans[0]),
            [Some(AnyValue {
                value: Some(any_value::Value::StringValue("0000000000000001".into()))
            })]
        );
        assert!(profile_id(&spans[1]).is_empty(), "a child span has none");
    }

    #[test]
    fn finishing_starts_a_new_request() {
        let resource = resource();
        let mut encoder = RequestEncoder::new(&resource, None);
        encoder.push(
            &recorded(&span(1, 0, Vec::new())),
            &summary(1, &[("f", 100.0)]),
        );
        encoder.push(&recorded(&span(2, 1, Vec::new())), &summary(0, &[]));
        let first_request = encoder.finish();
        let first = ExportTraceServiceRequest::decode(&first_request[..]).unwrap();
        assert!(encoder.is_empty());
        // Sent and done with: the next request is built in its buffer.
        let first_buffer = first_request.as_ptr();
        encoder.reclaim(first_request);
        encoder.push(&recorded(&span(3, 0, Vec::new())), &summary(0, &[]));
        let second_request = encoder.finish();
        assert_eq!(second_request.as_ptr(), first_buffer);
        let second = ExportTraceServiceRequest::decode(&second_request[..]).unwrap();
        let ids = |request: &ExportTraceServiceRequest| -> Vec<Vec<u8>> {
            request.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.span_id.clone())
                .collect()
        };
        assert_eq!(ids(&first), [1_u64, 2].map(|id| id.to_be_bytes().to_vec()));
        assert_eq!(ids(&second), [3_u64.to_be_bytes().to_vec()]);
        // Without a base, no link.
        let attributes = &second.resource_spans[0].scope_spans[0].spans[0].attributes;
        assert!(
            !attributes
                .iter()
                .any(|kv| kv.key == "profile.flamegraph_url")
        );
        // The four from its samples, and its profile id (a local root).
        assert_eq!(attributes.len(), 5);
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::I64),
            // NaN is never equal to itself, so it cannot be compared.
            any::<f64>()
                .prop_filter("comparable", |v| !v.is_nan())
                .prop_map(Value::F64),
            ".{0,300}".prop_map(|s: String| Value::from(s)),
            prop::collection::vec(any::<i64>(), 0..4).prop_map(|v| Value::Array(Array::I64(v))),
            prop::collection::vec(".{0,8}", 0..4).prop_map(|v| Value::Array(Array::String(
                v.into_iter().map(StringValue::from).collect()
            ))),
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
