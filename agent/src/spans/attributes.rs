//! The `profile.*` attributes every span carries: their names, and how
//! each is written. One spelling for the two routes a span takes: encoded
//! straight into OTLP by the agent's exporter (`transport::otlp`), or as
//! key-values on the user's own `SpanData` (`ProfilingSpanProcessor`).
//!
//! | attribute | meaning |
//! |---|---|
//! | `profile.samples` | CPU samples while the span or a span inside it was active |
//! | `profile.self_samples` | samples while the span itself was the innermost active span |
//! | `profile.cpu_time_ms` | CPU time those samples stand for, in milliseconds |
//! | `profile.top_functions` | the five hottest functions by self time, with their share |
//! | `profile.flamegraph_url` | the agent's flame graph of the span |
//!
//! And on every local root span (the outermost span of a trace in this
//! process, whose parent is absent or remote), `pyroscope.profile.id`: its
//! own span id, 16 hex digits. Grafana's traces-to-profiles asks Pyroscope
//! for the samples whose `span_id` label is that id; pushed profiles label
//! every sample with its local root's id (`transport::push`), so the link
//! opens the flame graph of the root's whole subtree in this process, as
//! grafana/otel-profiling-go does for Go.

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;

use crate::profile::SpanSummary;

/// The profile attributes' names (the table in the module docs): one spelling for the
/// encoder and for spans handed to the user's processor.
pub(crate) mod name {
    pub(crate) const SAMPLES: &str = "profile.samples";
    pub(crate) const SELF_SAMPLES: &str = "profile.self_samples";
    pub(crate) const CPU_TIME_MS: &str = "profile.cpu_time_ms";
    pub(crate) const TOP_FUNCTIONS: &str = "profile.top_functions";
    pub(crate) const FLAMEGRAPH_URL: &str = "profile.flamegraph_url";
    /// Grafana's name, not ours: see the module docs.
    pub(crate) const PYROSCOPE_PROFILE_ID: &str = "pyroscope.profile.id";
}

/// Appends the profile attributes of one span as key-values, for spans on
/// their way to the user's own processor (our own spans are encoded with
/// them directly, without these allocations).
pub(crate) fn push_profile_attributes(
    span: &mut SpanData,
    summary: &SpanSummary,
    flamegraph_base: Option<&str>,
) {
    let (trace_id, span_id) = crate::spans::otel_ids(&span.span_context);
    let attributes = &mut span.attributes;
    let top: opentelemetry::Value = if summary.top_functions.is_empty() {
        // Most spans: a static string, not an allocation per span.
        NO_SAMPLES.into()
    } else {
        let mut top = String::new();
        top_functions_into(&mut top, summary);
        top.into()
    };
    // The span's own list is usually exactly full: one growth, not five.
    attributes.reserve(5);
    attributes.extend([
        KeyValue::new(name::SAMPLES, summary.samples as i64),
        KeyValue::new(name::SELF_SAMPLES, summary.self_samples as i64),
        KeyValue::new(name::CPU_TIME_MS, cpu_time_ms(summary)),
        KeyValue::new(name::TOP_FUNCTIONS, top),
    ]);
    if let Some(base) = flamegraph_base {
        let mut url = String::new();
        flamegraph_url_into(&mut url, base, trace_id, span_id);
        attributes.push(KeyValue::new(name::FLAMEGRAPH_URL, url));
    }
    // A local root: no parent, or one in another process.
    if span.parent_span_id == opentelemetry::trace::SpanId::INVALID || span.parent_span_is_remote {
        let mut id = String::new();
        profile_id_into(&mut id, span_id);
        span.attributes
            .push(KeyValue::new(name::PYROSCOPE_PROFILE_ID, id));
    }
}

/// `pyroscope.profile.id`: the span id, 16 hex digits.
pub(crate) fn profile_id_into(out: &mut String, span_id: u64) {
    push_hex(out, u128::from(span_id), 16);
}

/// `profile.cpu_time_ms`: tenths of a millisecond, since finer would be
/// noise at any sampling rate.
pub(crate) fn cpu_time_ms(summary: &SpanSummary) -> f64 {
    (summary.cpu_ns as f64 / 1e5).round() / 10.0
}

/// `profile.top_functions` of a span that was never sampled.
pub(crate) const NO_SAMPLES: &str = "no CPU samples";

/// `profile.top_functions`: "name share%" pairs, hottest first.
pub(crate) fn top_functions_into(out: &mut String, summary: &SpanSummary) {
    use std::fmt::Write as _;
    if summary.top_functions.is_empty() {
        out.push_str(NO_SAMPLES);
    }
    for (i, (function, share)) in summary.top_functions.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{function} {share:.1}%");
    }
}

/// Appends the agent's flame graph of one span. Built by hand rather than
/// with `format!`: it is made for every span, thousands a second, and the
/// formatting machinery costs several times the few copies it comes to.
pub(crate) fn flamegraph_url_into(url: &mut String, base: &str, trace_id: u128, span_id: u64) {
    const PATH: &str = "/debug/pprof/flamegraph?trace_id=";
    const SPAN: &str = "&span_id=";
    url.reserve(base.len() + PATH.len() + 32 + SPAN.len() + 16);
    url.push_str(base);
    url.push_str(PATH);
    push_hex(url, trace_id, 32);
    url.push_str(SPAN);
    push_hex(url, u128::from(span_id), 16);
}

/// Appends the low `digits` (at most 32) hex digits of `value`,
/// zero-padded, lower case.
fn push_hex(out: &mut String, value: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    let text = &mut text[..digits as usize];
    for (i, digit) in text.iter_mut().rev().enumerate() {
        *digit = HEX[(value >> (i * 4)) as usize & 0xf];
    }
    out.push_str(std::str::from_utf8(text).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flamegraph_urls_carry_zero_padded_ids() {
        let flamegraph_url = |base, trace_id, span_id| {
            let mut url = String::new();
            flamegraph_url_into(&mut url, base, trace_id, span_id);
            url
        };
        assert_eq!(
            flamegraph_url("http://h:6060", 0xabc, 0x12),
            "http://h:6060/debug/pprof/flamegraph?trace_id=00000000000000000000000000000abc&span_id=0000000000000012"
        );
        let (trace_id, span_id) = (
            0x0af7651916cd43dd8448eb211c80319c_u128,
            0xb7ad6b7169203331_u64,
        );
        assert_eq!(
            flamegraph_url("", trace_id, span_id),
            format!("/debug/pprof/flamegraph?trace_id={trace_id:032x}&span_id={span_id:016x}")
        );
    }
}
