//! Stage 6 of the data flow: profiles out as text, pictures and protobuf.
//!
//! Format-only code: nothing here knows about signals, threads or timers;
//! everything works from a [`Profile`](crate::Profile).

pub(crate) mod flamegraph;
pub(crate) mod folded;
pub(crate) mod pprof;
