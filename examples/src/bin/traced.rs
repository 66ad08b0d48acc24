//! Span scenarios for the end-to-end tests: a traced workload whose spans
//! and their CPU are known.
//!
//! ```text
//! traced own [--rounds N]          smolder's layer exports (OTLP endpoint from the environment)
//! traced otel [--endpoint URL]     the user's tracing-opentelemetry pipeline exports, through
//!                                  smolder::ProfilingSpanProcessor
//! traced steady                    keeps tracing until stdin closes, answering each
//!                                   stdin line with rounds=N (for outage tests)
//! ```
//!
//! Every mode prints `http_addr=` first, then `key=value` lines, and exits
//! when its stdin closes, so that tests can query the agent meanwhile.

use std::io::Write as _;
use std::time::{Duration, Instant};

use tracing::{Instrument, info_span};
use tracing_subscriber::prelude::*;

use smolder_examples::thread_cpu;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Burns `cpu` of CPU time (not wall time: on a loaded machine the span
/// still gets its CPU, however long that takes): the function the tests
/// expect in `profile.top_functions`.
#[inline(never)]
fn span_hot_function(cpu: Duration) -> u64 {
    let deadline = thread_cpu() + cpu;
    let mut x = 0x1234_5678u64;
    while thread_cpu() < deadline {
        for i in 0..10_000u64 {
            x = x.rotate_left(7) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    std::hint::black_box(x)
}

/// Burns CPU inside an async task, yielding between slices so that a
/// multi-thread runtime moves it between its worker threads.
#[inline(never)]
fn async_hot_function(slice: Duration) -> u64 {
    span_hot_function(slice).rotate_left(1)
}

/// One request: a CPU-heavy child and a sleeping child under a root.
fn request(round: u64) {
    let root = info_span!("request", round);
    let _root = root.enter();
    info_span!("cpu_heavy").in_scope(|| span_hot_function(Duration::from_millis(300)));
    info_span!("sleepy").in_scope(|| std::thread::sleep(Duration::from_millis(300)));
}

/// A span that is never entered, whose CPU is all in a child on another
/// thread: it is credited through the child.
fn offloaded_request() {
    let offload = info_span!("offload");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            info_span!(parent: &offload, "offloaded_work")
                .in_scope(|| span_hot_function(Duration::from_millis(300)))
        });
    });
}

/// Async work on a multi-thread runtime, in one span across many polls.
fn async_request(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        let task = tokio::spawn(
            async {
                for _ in 0..30 {
                    async_hot_function(Duration::from_millis(10));
                    tokio::task::yield_now().await;
                }
            }
            .instrument(info_span!("async_work")),
        );
        task.await.expect("async task");
    });
}

fn start_agent() -> Result<smolder::Agent> {
    let agent = smolder::Agent::builder().frequency_hz(499).start()?;
    println!("http_addr={}", agent.http_addr().ok_or("no HTTP endpoint")?);
    std::io::stdout().flush()?;
    Ok(agent)
}

fn print_spans(agent: &smolder::Agent) {
    let spans = agent.stats().spans;
    println!("spans_exported={}", spans.exported);
    println!("spans_export_failed={}", spans.export_failed);
    println!("spans_export_retries={}", spans.export_retries);
    println!("spans_forwarded={}", spans.forwarded);
    println!("spans_sampled={}", spans.sampled);
    println!(
        "spans_dropped={}",
        spans.dropped_queue_full + spans.dropped_no_exporter
    );
}

/// Waits until the agent's span worker has handled everything queued (or
/// the layer dropped it).
fn settle(agent: &smolder::Agent, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let spans = agent.stats().spans;
        let dropped = spans.dropped_queue_full + spans.dropped_no_exporter;
        if spans.exported + spans.export_failed + spans.forwarded + dropped >= expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn own(rounds: u64) -> Result<()> {
    let agent = start_agent()?;
    tracing_subscriber::registry()
        .with(smolder::tracing_layer())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for round in 0..rounds {
        request(round);
    }
    async_request(&runtime);
    offloaded_request();
    // 3 spans a request, the async one, and the offloaded two.
    settle(&agent, rounds * 3 + 3);
    print_spans(&agent);
    wait_for_stdin_to_close()
}

fn wait_for_stdin_to_close() -> Result<()> {
    std::io::stdout().flush()?;
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    Ok(())
}

fn otel(endpoint: &str) -> Result<()> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let agent = start_agent()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(smolder::ProfilingSpanProcessor::new(
            opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build(),
        ))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("traced-otel")
                .build(),
        )
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("traced")))
        .with(smolder::tracing_layer())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for round in 0..2 {
        request(round);
    }
    async_request(&runtime);
    offloaded_request();
    settle(&agent, 2 * 3 + 3);
    provider.force_flush()?;
    print_spans(&agent);
    wait_for_stdin_to_close()?;
    provider.shutdown()?;
    Ok(())
}

/// Traces requests until stdin closes. Each line read from stdin is answered
/// with `rounds=N`, the requests finished so far, so that a test can watch
/// the host's work go on while it plays tricks on the exporter.
fn steady() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let agent = start_agent()?;
    tracing_subscriber::registry()
        .with(smolder::tracing_layer())
        .init();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let rounds = std::sync::Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, rounds) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&rounds));
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let root = info_span!("request", rounds = rounds.load(Relaxed));
                let _root = root.enter();
                info_span!("cpu_heavy").in_scope(|| span_hot_function(Duration::from_millis(20)));
                rounds.fetch_add(1, Relaxed);
            }
        })
    };
    for line in std::io::stdin().lines() {
        line?;
        println!("rounds={}", rounds.load(Relaxed));
    }
    stop.store(true, Relaxed);
    worker.join().map_err(|_| "worker panicked")?;
    let rounds = rounds.load(Relaxed);
    println!("rounds={rounds}");
    // Two spans a round, every one closed once the worker has returned:
    // all accounted for before the counts are read.
    settle(&agent, rounds * 2);
    print_spans(&agent);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    match args.first().map(String::as_str) {
        Some("own") => own(value("--rounds").map_or(Ok(3), |r| r.parse())?),
        Some("otel") => otel(&value("--endpoint").ok_or("--endpoint URL is required")?),
        Some("steady") => steady(),
        other => Err(format!("unknown mode {other:?}; expected own, otel or steady").into()),
    }
}
