//! Stage 7 of the data flow: how profiles and spans leave the process.
//!
//! * [`http`]: the pull endpoint, following Go's `net/http/pprof`.
//! * [`otlp`]: spans pushed to an OpenTelemetry collector, each carrying
//!   its CPU profile.

pub(crate) mod http;
pub(crate) mod otlp;
