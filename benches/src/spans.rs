//! Span cost: the CPU one traced span costs, on the thread that makes it and
//! in the whole process, from its start to its export, with Smolder
//! exporting it and with the OpenTelemetry SDK pipeline it replaces.
//!
//! The host-impact section cannot resolve this: a few percent of the demo's
//! throughput is inside the shared VM's drift. Here one thread makes
//! "requests" of [`SPANS_PER_REQUEST`] nested spans with a few fields each
//! (a route, a customer number, an SQL string, a row count) at a steady
//! [`SPANS_PER_SECOND`], about the demo's rate, and each variant is measured
//! in its own process:
//!
//! - `off`: Smolder's layer with no agent (it only mints span ids), the
//!   floor every variant is compared with;
//! - `smolder`: the agent at 99 Hz exporting the spans itself over OTLP/HTTP;
//! - `sdk`: no agent; tracing-opentelemetry, the SDK's batch processor and
//!   opentelemetry-otlp exporting over OTLP/HTTP (the usual pipeline);
//! - `sdk+smolder`: that pipeline with the agent's `ProfilingSpanProcessor`
//!   in it (README set-up 2).
//!
//! All export to the harness's stand-in collector. A child's CPU is taken
//! from the first span to the moment its last span has been exported, so
//! the export threads' work is in it.

use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::prelude::*;

use crate::child::{self, Fields, HarnessError, fail, median};
use crate::http::OtlpSink;
use crate::sys;

/// Spans each child makes.
const SPANS: u64 = 20_000;
/// One request span and the query spans inside it.
const SPANS_PER_REQUEST: u64 = 8;
/// The pace, close to the demo's 2 500 spans a second under `wrk`.
const SPANS_PER_SECOND: u64 = 2_500;

/// The variants, floor first.
const VARIANTS: [(&str, &str); 4] = [
    ("off", "Smolder's layer, no agent (span ids only)"),
    ("smolder", "Smolder at 99 Hz, exporting spans itself"),
    ("sdk", "OpenTelemetry SDK pipeline, no Smolder"),
    (
        "sdk+smolder",
        "SDK pipeline with Smolder's ProfilingSpanProcessor, 99 Hz",
    ),
];

/// Entry point of `child spans <variant> <collector endpoint>`.
pub fn child(args: &[String]) -> Result<Fields, HarnessError> {
    let [variant, endpoint] = args else {
        return fail("usage: child spans off|smolder|sdk|sdk+smolder <endpoint>");
    };
    let traces = format!("{endpoint}/v1/traces");
    let agent_builder = || {
        smolder::Agent::builder()
            .frequency_hz(99)
            .http_addr("127.0.0.1:0".parse().expect("an address"))
    };
    let sdk = |with_agent: bool| -> Result<SdkTracerProvider, HarnessError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces.clone())
            .build()
            .map_err(|e| HarnessError(format!("OTLP exporter: {e}")))?;
        let batch = BatchSpanProcessor::builder(exporter).build();
        let builder = SdkTracerProvider::builder();
        Ok(if with_agent {
            builder.with_span_processor(smolder::ProfilingSpanProcessor::new(batch))
        } else {
            builder.with_span_processor(batch)
        }
        .build())
    };
    let (agent, provider) = match variant.as_str() {
        "off" => (None, None),
        "smolder" => (
            Some(agent_builder().otlp_endpoint(traces.clone()).start()?),
            None,
        ),
        "sdk" => (None, Some(sdk(false)?)),
        "sdk+smolder" => (Some(agent_builder().start()?), Some(sdk(true)?)),
        other => return fail(format!("unknown span variant `{other}`")),
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("bench")));
    let subscriber = tracing_subscriber::registry()
        .with(otel)
        .with((variant != "sdk").then(smolder::tracing_layer));

    let (thread_cpu, process_cpu, started) = (
        sys::thread_cpu_time(),
        sys::process_cpu_time(),
        Instant::now(),
    );
    tracing::subscriber::with_default(subscriber, make_spans);
    let host_cpu = sys::thread_cpu_time() - thread_cpu;
    let made = started.elapsed();

    // Everything handed over; now until it has left the process.
    let mut fields = Fields::new();
    if let Some(provider) = &provider {
        provider
            .force_flush()
            .map_err(|e| HarnessError(format!("SDK flush: {e}")))?;
    }
    if let Some(agent) = &agent {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = agent.stats().spans;
            let settled =
                spans.exported + spans.export_failed + spans.dropped_queue_full + spans.forwarded;
            if settled >= SPANS || Instant::now() > deadline {
                fields
                    .put("exported", spans.exported)
                    .put("forwarded", spans.forwarded)
                    .put("lost", spans.export_failed + spans.dropped_queue_full);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let total_cpu = sys::process_cpu_time() - process_cpu;
    let per_span = |cpu: Duration| cpu.as_nanos() as f64 / SPANS as f64;
    fields
        .put("host_ns_per_span", format!("{:.0}", per_span(host_cpu)))
        .put("process_ns_per_span", format!("{:.0}", per_span(total_cpu)))
        .put("seconds", format!("{:.2}", made.as_secs_f64()));
    drop(provider);
    drop(agent);
    Ok(fields)
}

/// The traced work: [`SPANS`] spans in requests, at [`SPANS_PER_SECOND`].
fn make_spans() {
    let start = Instant::now();
    for request in 0..SPANS / SPANS_PER_REQUEST {
        let customer = (request * 37) % 1000;
        let root = tracing::info_span!("request", route = "/orders/{customer}", customer);
        let _root = root.enter();
        for query in 0..SPANS_PER_REQUEST - 1 {
            let span = tracing::info_span!(
                "query",
                sql = "SELECT id, name, price FROM products WHERE id = ?1",
                rows = tracing::field::Empty,
            );
            let _entered = span.enter();
            let rows = std::hint::black_box(query % 3);
            span.record("rows", rows);
        }
        drop(_root);
        // Keep to the pace: a service's spans arrive over time, and every
        // exporter's queue is sized for that.
        let due = start
            + Duration::from_nanos(
                (request + 1) * SPANS_PER_REQUEST * 1_000_000_000 / SPANS_PER_SECOND,
            );
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Medians per variant over the rounds.
pub struct SpanResults {
    rounds: usize,
    /// Per variant: host ns/span, process ns/span, spans lost.
    medians: Vec<(f64, f64, f64)>,
}

/// Runs every variant `rounds` times, in rotating order.
pub fn run(rounds: usize) -> Result<SpanResults, HarnessError> {
    let sink = OtlpSink::start()?;
    let endpoint = sink.endpoint();
    let mut readings: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds {
        for offset in 0..VARIANTS.len() {
            let index = (round + offset) % VARIANTS.len();
            let (name, _) = VARIANTS[index];
            eprintln!("  spans round {}/{rounds}: {name}", round + 1);
            let fields = child::run(&["spans".into(), name.into(), endpoint.clone()])?;
            let lost = if fields.text("lost").is_ok() {
                fields.num("lost")?
            } else {
                0.0
            };
            readings[index].push((
                fields.num("host_ns_per_span")?,
                fields.num("process_ns_per_span")?,
                lost,
            ));
        }
    }
    let medians = readings
        .iter()
        .map(|r| {
            let column =
                |f: fn(&(f64, f64, f64)) -> f64| median(&r.iter().map(f).collect::<Vec<_>>());
            (column(|x| x.0), column(|x| x.1), column(|x| x.2))
        })
        .collect();
    Ok(SpanResults { rounds, medians })
}

impl SpanResults {
    pub fn print(&self) -> Result<(), HarnessError> {
        let (off_host, off_process, _) = self.medians[0];
        let (sdk_host, sdk_process) = (
            self.medians[2].0 - off_host,
            self.medians[2].1 - off_process,
        );
        println!(
            "\n### Span cost: CPU per span over the floor, {SPANS} spans at {SPANS_PER_SECOND}/s \
             ({SPANS_PER_REQUEST} per request), medians over {} rounds",
            self.rounds
        );
        println!(
            "| variant | making thread, ns/span | x SDK | whole process to export, ns/span | x SDK | \
             spans lost (median) |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (&(_, label), &(host, process, lost)) in VARIANTS.iter().zip(&self.medians) {
            let (host, process) = (host - off_host, process - off_process);
            println!(
                "| {label} | {host:.0} | {:.2} | {process:.0} | {:.2} | {lost:.0} |",
                host / sdk_host,
                process / sdk_process
            );
        }
        println!(
            "\nThe floor (Smolder's layer minting ids, no agent) is subtracted from every row \
             (it shows 0): {off_host:.0} ns/span on the making thread, {off_process:.0} ns/span \
             in the process, the spans' own work included."
        );
        Ok(())
    }
}
