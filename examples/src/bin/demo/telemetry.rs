//! Profiling and tracing set-up: the smolder agent, where its spans go, and
//! the `tracing` subscriber.
//!
//! The agent's tracing layer records the shop's spans and exports them over
//! OTLP with profile attributes (`profile.cpu_time_ms`,
//! `profile.top_functions`, `profile.flamegraph_url`, ...). With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set the agent exports there on its own
//! (with `OTEL_EXPORTER_OTLP_PROTOCOL`); otherwise the demo points it at the
//! embedded viewer's OTLP/HTTP receiver.
//!
//! Only the shop's own spans (target `demo`) go to the agent: the libraries
//! underneath (h2, tonic, hyper) have spans too, and exporting those would
//! trace the exporter's own traffic to the embedded viewer, in a loop.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::viewer::Viewer;

/// The service name spans are exported under.
pub const SERVICE_NAME: &str = "smolder-demo";

/// Sampling rate unless `SMOLDER_FREQUENCY_HZ` says otherwise. Requests take
/// tens of milliseconds, and the default 99 Hz would leave most of them with
/// a handful of samples. (Kernels with `CONFIG_HZ=250` deliver at most 250
/// samples per second per thread; the agent weights each by the expirations
/// it stands for.)
const DEMO_FREQUENCY_HZ: u32 = 499;

/// Where spans go.
pub enum Export {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set: the agent reads it itself.
    Environment { endpoint: String },
    /// The embedded viewer's OTLP/HTTP receiver.
    Embedded(Viewer),
}

impl Export {
    /// The endpoint from the environment, if one is configured.
    pub fn from_environment() -> Option<Export> {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .ok()?;
        (!endpoint.trim().is_empty()).then_some(Export::Environment { endpoint })
    }
}

/// Starts the profiling agent, exporting spans as `export` says.
pub fn start_agent(export: &Export) -> Result<smolder::Agent, smolder::Error> {
    let mut builder = smolder::Agent::builder().service_name(SERVICE_NAME);
    if std::env::var_os("SMOLDER_FREQUENCY_HZ").is_none() {
        builder = builder.frequency_hz(DEMO_FREQUENCY_HZ);
    }
    if let Export::Embedded(viewer) = export {
        builder = builder
            .otlp_endpoint(format!("http://{}", viewer.otlp_http))
            .otlp_protocol(smolder::OtlpProtocol::HttpProtobuf);
    }
    builder.start()
}

/// Installs the global subscriber: the agent's layer for the shop's spans,
/// and console logs (`RUST_LOG`, default `warn`).
pub fn init_tracing() {
    let shop_spans = Targets::new().with_target("demo", LevelFilter::INFO);
    let console = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    tracing_subscriber::registry()
        .with(smolder::tracing_layer().with_filter(shop_spans))
        .with(tracing_subscriber::fmt::layer().with_filter(console))
        .init();
}
