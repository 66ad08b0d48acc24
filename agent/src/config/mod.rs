//! Settings: defaults, `SMOLDER_*` environment overrides, and the builder.
//!
//! Precedence, lowest to highest: built-in defaults, environment variables,
//! explicit [`AgentBuilder`] calls. One exception: `SMOLDER_ENABLED=false`
//! always wins, because it is the operator's kill switch and must work without
//! a code change.
//!
//! * `choices`: the public [`Unwinder`] and [`Engine`] enums and their names.
//! * `bounds`: the ranged settings, each with its variable and limits.
//! * `env`: where variables come from, and the parsers they share.
//! * `otlp`: span export settings from the `OTEL_*` variables.
//! * `push`: where continuous profiles are pushed (`PYROSCOPE_*`), and how
//!   often.
//! * `builder`: [`AgentBuilder`] and the merge into a [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

mod bounds;
mod builder;
mod choices;
mod env;
mod otlp;
mod push;

pub use builder::AgentBuilder;
pub use choices::{Engine, Unwinder};
pub(crate) use env::ProcessEnv;
pub use otlp::OtlpProtocol;
pub(crate) use otlp::{OtlpSettings, OtlpTls};
pub(crate) use push::{PushSettings, PyroscopeSettings};

/// The sampling period, in nanoseconds, of a rate in samples per CPU-second.
/// The one place the rate becomes a period: timers are armed with it and
/// profiles weight their samples by it, so both must round alike.
pub(crate) fn period_ns(frequency_hz: u32) -> u64 {
    1_000_000_000 / u64::from(frequency_hz.max(1))
}

/// Settings after defaults, environment and builder calls are merged.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) enabled: bool,
    pub(crate) frequency_hz: u32,
    pub(crate) max_depth: usize,
    pub(crate) unwinder: Unwinder,
    pub(crate) engine: Engine,
    pub(crate) buffer_records: usize,
    pub(crate) stack_table_capacity: usize,
    pub(crate) history_span: Duration,
    pub(crate) history_resolution: Duration,
    pub(crate) history_bytes: usize,
    pub(crate) service_name: String,
    pub(crate) http: HttpSettings,
    /// Where spans go; `None`: not exported.
    pub(crate) otlp: Option<OtlpSettings>,
    /// Where continuous profiles are pushed, if anywhere.
    pub(crate) push: PushSettings,
}

/// The HTTP endpoint's settings.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    /// Where to listen; `None` disables the endpoint.
    pub(crate) addr: Option<SocketAddr>,
    /// Bearer token every request must carry, if set.
    pub(crate) token: Option<String>,
    /// Serve a non-loopback address without a token.
    pub(crate) allow_unauthenticated: bool,
    /// Fail `start` when the address cannot be bound (else warn and go on).
    pub(crate) required: bool,
    /// Longest `seconds=` capture.
    pub(crate) max_seconds: u64,
    /// Connections served at once; more get 503.
    pub(crate) max_connections: usize,
    /// How others reach the endpoint (for links in exported spans), if not
    /// its own address.
    pub(crate) public_url: Option<String>,
}
