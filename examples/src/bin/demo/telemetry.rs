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
//! With `--otel-sdk` the spans take the other route the README describes for
//! services that already export traces: tracing-opentelemetry into the
//! OpenTelemetry SDK, whose `BatchSpanProcessor` sits inside smolder's
//! `ProfilingSpanProcessor` and exports over OTLP/HTTP; the agent only adds
//! the attributes. The benchmark harness compares the two routes.
//!
//! Only the shop's own spans (target `demo`) are traced: the libraries
//! underneath (h2, tonic, hyper) have spans too, and exporting those would
//! trace the exporter's own traffic to the embedded viewer, in a loop.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
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

/// Starts the profiling agent, exporting spans as `export` says (unless the
/// SDK pipeline exports them: `otel_sdk`).
pub fn start_agent(export: &Export, otel_sdk: bool) -> Result<smolder::Agent, smolder::Error> {
    let mut builder = smolder::Agent::builder().service_name(SERVICE_NAME);
    if std::env::var_os("SMOLDER_FREQUENCY_HZ").is_none() {
        builder = builder.frequency_hz(DEMO_FREQUENCY_HZ);
    }
    if let (Export::Embedded(viewer), false) = (export, otel_sdk) {
        builder = builder
            .otlp_endpoint(format!("http://{}", viewer.otlp_http))
            .otlp_protocol(smolder::OtlpProtocol::HttpProtobuf);
    }
    builder.start()
}

/// The OpenTelemetry SDK pipeline of `--otel-sdk`: OTLP/HTTP to the
/// environment's endpoint or the embedded viewer, batched by the SDK, with
/// the profile attributes added on the way.
pub fn sdk_pipeline(export: &Export) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    // With the environment's endpoint the exporter reads the standard
    // variables itself (and appends `/v1/traces` to a bare endpoint).
    if let Export::Embedded(viewer) = export {
        exporter = exporter.with_endpoint(format!("http://{}/v1/traces", viewer.otlp_http));
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_span_processor(smolder::ProfilingSpanProcessor::new(
            BatchSpanProcessor::builder(exporter).build(),
        ))
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}

/// Installs the global subscriber: the agent's layer for the shop's spans
/// (and, with an SDK pipeline, tracing-opentelemetry's in front of it), and
/// console logs (`RUST_LOG`, default `warn`).
pub fn init_tracing(sdk: Option<&SdkTracerProvider>) {
    let shop_spans = Targets::new().with_target("demo", LevelFilter::INFO);
    let console = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    let otel = sdk.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("demo"))
            .with_filter(shop_spans.clone())
    });
    tracing_subscriber::registry()
        .with(otel)
        .with(smolder::tracing_layer().with_filter(shop_spans))
        .with(tracing_subscriber::fmt::layer().with_filter(console))
        .init();
}
