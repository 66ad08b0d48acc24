//! A span's profile in the few numbers every exported span carries.

/// A span's CPU, as exported.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SpanSummary {
    /// Samples while the span or anything inside it was active.
    pub(crate) samples: u64,
    /// Samples while the span itself was the innermost active span.
    pub(crate) self_samples: u64,
    pub(crate) cpu_ns: u64,
    /// The hottest functions (by self time) and their share of `samples`.
    pub(crate) top_functions: Vec<(String, f64)>,
}

impl SpanSummary {
    /// Whether nothing was sampled in the span: its profile is all zeros.
    pub(crate) fn is_unsampled(&self) -> bool {
        *self == SpanSummary::default()
    }
}
