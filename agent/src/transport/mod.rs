//! Stage 7 of the data flow: how profiles and spans leave the process.
//!
//! * [`outbound`]: what every outbound connection shares: the kept-alive
//!   HTTP/1.1 client, TLS, retry classification and backoff.
//! * [`http`]: the pull endpoint, following Go's `net/http/pprof`.
//! * [`otlp`]: spans pushed to an OpenTelemetry collector, each carrying
//!   its CPU profile.
//! * [`push`]: continuous profiles pushed to Pyroscope (and, with the
//!   `otlp-profiles` feature, to an OpenTelemetry collector), one interval
//!   at a time.

pub(crate) mod outbound;
pub(crate) mod http;
pub(crate) mod otlp;
pub(crate) mod push;
