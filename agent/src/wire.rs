//! OTLP trace protobuf, written by hand: field numbers and the few wire
//! format writers that spans need.
//!
//! Shared by the tracing layer, which writes each span's own fields on the
//! host's thread as it learns them (`spans::record`), and by the exporter,
//! which frames those bytes into export requests (`otlp::encode`). Field
//! numbers and wire types follow `opentelemetry/proto/trace/v1/trace.proto`
//! and `common.proto`; the exporter's tests decode the result with the
//! official generated types.
//!
//! Proto3 rules: a plain scalar or string field at its default is left out
//! (a decoder reads it back as the default); a `oneof` member and a message
//! field are written even when empty, since their presence is information.
//! Fields of a message may come in any order, and a repeated field's
//! elements may be interleaved with other fields: decoders keep the order of
//! each repeated field's elements only.

use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, StringValue, Value};
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint};

/// Field numbers, named after their proto fields.
pub(crate) mod field {
    // ExportTraceServiceRequest
    pub(crate) const RESOURCE_SPANS: u32 = 1;
    // ResourceSpans
    pub(crate) const RESOURCE: u32 = 1;
    pub(crate) const SCOPE_SPANS: u32 = 2;
    pub(crate) const RESOURCE_SCHEMA_URL: u32 = 3;
    // Resource
    pub(crate) const RESOURCE_ATTRIBUTES: u32 = 1;
    // ScopeSpans
    pub(crate) const SCOPE: u32 = 1;
    pub(crate) const SPANS: u32 = 2;
    // InstrumentationScope
    pub(crate) const SCOPE_NAME: u32 = 1;
    pub(crate) const SCOPE_VERSION: u32 = 2;
    // Span
    pub(crate) const TRACE_ID: u32 = 1;
    pub(crate) const SPAN_ID: u32 = 2;
    pub(crate) const PARENT_SPAN_ID: u32 = 4;
    pub(crate) const NAME: u32 = 5;
    pub(crate) const KIND: u32 = 6;
    pub(crate) const START_TIME: u32 = 7;
    pub(crate) const END_TIME: u32 = 8;
    pub(crate) const ATTRIBUTES: u32 = 9;
    pub(crate) const EVENTS: u32 = 11;
    pub(crate) const STATUS: u32 = 15;
    pub(crate) const FLAGS: u32 = 16;
    // Span.Event
    pub(crate) const EVENT_TIME: u32 = 1;
    pub(crate) const EVENT_NAME: u32 = 2;
    pub(crate) const EVENT_ATTRIBUTES: u32 = 3;
    // Status
    pub(crate) const STATUS_MESSAGE: u32 = 2;
    pub(crate) const STATUS_CODE: u32 = 3;
    // KeyValue
    pub(crate) const KEY: u32 = 1;
    pub(crate) const VALUE: u32 = 2;
    // AnyValue (a oneof)
    pub(crate) const STRING_VALUE: u32 = 1;
    pub(crate) const BOOL_VALUE: u32 = 2;
    pub(crate) const INT_VALUE: u32 = 3;
    pub(crate) const DOUBLE_VALUE: u32 = 4;
    pub(crate) const ARRAY_VALUE: u32 = 5;
    // ArrayValue
    pub(crate) const ARRAY_VALUES: u32 = 1;
}

/// `SpanFlags`: the W3C trace flags (sampled: every span we export was) in
/// the low byte, and bit 8 saying that bit 9 (parent is remote) is known.
/// Our parents are always local: the layer starts its own traces.
pub(crate) const SPAN_FLAGS: u32 = 0x01 | 0x100;

/// `Span.SpanKind` numbering (0 is "unspecified", which we never send).
pub(crate) fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

pub(crate) fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// A `Status` message; always present, as the SDK's exporters send it,
/// even when unset.
pub(crate) fn status(out: &mut Vec<u8>, status: &Status) {
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

// === attributes ===

/// A `KeyValue` message in field `tag`.
pub(crate) fn key_value(out: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    message(out, tag, |out| {
        string(out, field::KEY, key);
        any_value(out, field::VALUE, value);
    });
}

/// A `KeyValue` with a string value, without making a [`Value`] of it.
pub(crate) fn key_string(out: &mut Vec<u8>, tag: u32, key: &str, value: &str) {
    key_string_with(out, tag, key, |out| out.extend_from_slice(value.as_bytes()));
}

/// A `KeyValue` with a string value that `write` appends, as UTF-8, in
/// place: formatted values need no string of their own.
pub(crate) fn key_string_with(
    out: &mut Vec<u8>,
    tag: u32,
    key: &str,
    write: impl FnOnce(&mut Vec<u8>),
) {
    message(out, tag, |out| {
        string(out, field::KEY, key);
        // The oneof member is written even when empty.
        message(out, field::VALUE, |out| {
            message(out, field::STRING_VALUE, write)
        });
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

/// Removes every `KeyValue` in field `tag` whose key is `key` from a run of
/// fields this module wrote, keeping everything else in order. Returns
/// whether one was found. Anything it cannot parse ends the search, leaving
/// the rest as it is.
pub(crate) fn remove_key_values(fields: &mut Vec<u8>, tag: u32, key: &str) -> bool {
    let mut found = false;
    let mut at = 0;
    while let Some((field_tag, end)) = next_length_delimited(fields, at) {
        if field_tag == tag && key_of(&fields[..end], at) == Some(key.as_bytes()) {
            fields.drain(at..end);
            found = true;
        } else {
            at = end;
        }
    }
    found
}

/// The field at `at` if it is length-delimited: its tag and where it ends.
fn next_length_delimited(fields: &[u8], at: usize) -> Option<(u32, usize)> {
    let (tag, body) = header(fields, at)?;
    let end = body
        .0
        .checked_add(body.1)
        .filter(|&end| end <= fields.len())?;
    Some((tag, end))
}

/// A length-delimited field's tag and body (start, length).
fn header(fields: &[u8], at: usize) -> Option<(u32, (usize, usize))> {
    let mut rest = fields.get(at..)?;
    let before = rest.len();
    let key = decode_varint(&mut rest).ok()?;
    if key & 0x7 != WireType::LengthDelimited as u64 {
        return None;
    }
    let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    let start = at + (before - rest.len());
    Some((u32::try_from(key >> 3).ok()?, (start, len)))
}

/// The key of the `KeyValue` field at `at`, when it comes first, as this
/// module writes it.
fn key_of(fields: &[u8], at: usize) -> Option<&[u8]> {
    let (_, (body, _)) = header(fields, at)?;
    let (tag, (key, len)) = header(fields, body)?;
    (tag == field::KEY)
        .then(|| fields.get(key..key + len))
        .flatten()
}

// === wire format ===

/// A plain string field (left out when empty).
pub(crate) fn string(out: &mut Vec<u8>, tag: u32, value: &str) {
    if !value.is_empty() {
        length_delimited(out, tag, value.as_bytes());
    }
}

/// A plain bytes field (left out when empty).
pub(crate) fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
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
pub(crate) fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

/// A plain fixed64 field (left out when zero).
pub(crate) fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A plain fixed32 field (left out when zero).
pub(crate) fn fixed32(out: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A message (or any length-delimited) field: `body` writes its contents
/// after its key, and its length goes in between afterwards. The length is
/// first given one byte, which most small messages (attributes, statuses)
/// need; a longer body is moved up to make room, a copy of the body only.
pub(crate) fn message(out: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
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
    use super::*;

    fn attributes(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in pairs {
            key_string(&mut out, field::ATTRIBUTES, key, value);
        }
        out
    }

    #[test]
    fn removing_a_key_keeps_the_others_in_order() {
        let long = "v".repeat(300);
        let mut fields = attributes(&[("a", "1"), ("sql", &long), ("b", "2"), ("sql", "again")]);
        string(&mut fields, field::NAME, "sql");
        assert!(remove_key_values(&mut fields, field::ATTRIBUTES, "sql"));
        let mut expected = attributes(&[("a", "1"), ("b", "2")]);
        string(&mut expected, field::NAME, "sql");
        assert_eq!(fields, expected);
        assert!(!remove_key_values(&mut fields, field::ATTRIBUTES, "sql"));
        assert!(!remove_key_values(&mut fields, field::ATTRIBUTES, ""));
    }

    #[test]
    fn removal_stops_at_what_it_cannot_parse() {
        let mut fields = attributes(&[("a", "1")]);
        fields.extend_from_slice(&[0x4a, 0x7f]); // a length past the end
        let before = fields.clone();
        assert!(!remove_key_values(&mut fields, field::ATTRIBUTES, "zzz"));
        assert_eq!(fields, before);
        assert!(remove_key_values(&mut fields, field::ATTRIBUTES, "a"));
        assert_eq!(fields, [0x4a, 0x7f]);
    }
}
