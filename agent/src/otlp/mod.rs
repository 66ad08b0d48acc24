//! Transport: spans out over OTLP, each carrying its CPU profile.
//!
//! The `smolder-spans` thread takes finished spans from the layer's bounded
//! queue (`spans::finished`), waits until the collector has drained every
//! sample taken before they ended, adds the profile attributes, and then
//! either exports them (our own spans, when an OTLP endpoint is configured)
//! or hands them back to the user's span processor (spans from the user's
//! tracing-opentelemetry pipeline, through `ProfilingSpanProcessor`).
//!
//! Export runs on a private single-threaded tokio runtime owned by this
//! thread, with opentelemetry-otlp's exporter (HTTP/protobuf over hyper, or
//! gRPC over tonic). A collector that is down or slow stalls only this
//! thread, for at most the export timeout per batch; meanwhile the queue
//! fills and further spans are dropped and counted, never waited for. Export
//! resumes with the next batch once the collector answers.
//!
//! Attributes, on every span (zeros for a span that used no CPU):
//!
//! | attribute | meaning |
//! |---|---|
//! | `profile.samples` | CPU samples while the span or a span inside it was active |
//! | `profile.self_samples` | samples while the span itself was the innermost active span |
//! | `profile.cpu_time_ms` | CPU time those samples stand for, in milliseconds |
//! | `profile.top_functions` | the five hottest functions by self time, with their share |
//! | `profile.flamegraph_url` | the agent's flame graph of the span |

mod client;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext as OtelSpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use crate::config::{OtlpProtocol, OtlpSettings};
use crate::handler::monotonic_now_ns;
use crate::profiler::{Profiler, SpanSummary};
use crate::spans::finished::{self, FinishedSpan, Pending, QUEUE_CAPACITY};
use crate::{Error, threads};

/// Spans sent in one export request, at most (the OpenTelemetry SDK's
/// default batch size).
const MAX_BATCH: usize = 512;
/// How long a span waits for others to share its export request: short, so
/// a trace shows up in the viewer about a second after it ends.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How often the worker takes what the queue holds. It polls rather than
/// blocking on the queue so that a host thread closing a span never has a
/// sleeping receiver to wake: its hand-off stays a store into the channel,
/// with no futex call and no context switch. At [`QUEUE_CAPACITY`] spans a
/// tick, this drains 40 000 spans a second.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Counters reported in stats.
#[derive(Default)]
pub(crate) struct ExportCounters {
    pub(crate) exported: AtomicU64,
    pub(crate) export_failed: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) last_export_ok: AtomicBool,
}

/// The span worker. Dropping it stops the thread (spans still queued are
/// dropped).
pub(crate) struct SpanWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub(crate) counters: Arc<ExportCounters>,
}

impl SpanWorker {
    pub(crate) fn start(
        profiler: Arc<Profiler>,
        otlp: Option<OtlpSettings>,
        flamegraph_base: Option<String>,
        own_threads: Arc<Mutex<HashSet<i32>>>,
    ) -> Result<SpanWorker, Error> {
        let inbox = finished::install(otlp.is_some());
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ExportCounters::default());
        let thread = {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("smolder-spans".into())
                .stack_size(1 << 20)
                .spawn(move || {
                    own_threads
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(threads::current_tid());
                    let worker = Worker {
                        profiler,
                        flamegraph_base,
                        counters,
                    };
                    worker.run(inbox, otlp, &stop);
                })
                .map_err(|source| Error::Os {
                    operation: "spawning the span export thread",
                    source,
                })?
        };
        Ok(SpanWorker {
            stop,
            thread: Some(thread),
            counters,
        })
    }
}

impl Drop for SpanWorker {
    fn drop(&mut self) {
        finished::uninstall();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Worker {
    profiler: Arc<Profiler>,
    flamegraph_base: Option<String>,
    counters: Arc<ExportCounters>,
}

/// The exporter and the runtime it runs on.
struct Exporter {
    runtime: tokio::runtime::Runtime,
    exporter: opentelemetry_otlp::SpanExporter,
    timeout: Duration,
}

impl Worker {
    fn run(&self, inbox: Receiver<Pending>, otlp: Option<OtlpSettings>, stop: &AtomicBool) {
        let mut exporter = otlp.as_ref().and_then(|settings| match self.build_exporter(settings) {
            Ok(exporter) => Some(exporter),
            Err(error) => {
                tracing::warn!(%error, "smolder: cannot export spans");
                None
            }
        });
        let mut batch: Vec<Pending> = Vec::new();
        let mut oldest = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(DRAIN_EVERY);
            let was_empty = batch.is_empty();
            let disconnected = drain(&inbox, &mut batch);
            if was_empty && !batch.is_empty() {
                oldest = Instant::now();
            }
            // Spans on their way to the user's own processor go on at every
            // tick: that processor batches them itself, and a second of them
            // at once could overflow its queue (the SDK's holds 2048).
            let forwarding = batch.iter().any(|p| matches!(p, Pending::Forwarded { .. }));
            let due = forwarding
                || batch.len() >= MAX_BATCH
                || oldest.elapsed() >= BATCH_DELAY
                || disconnected;
            if due && !batch.is_empty() {
                // One request per MAX_BATCH spans, all enriched after one
                // wait for the collector. The batch keeps its capacity from
                // tick to tick: regrowing it each time would be a string of
                // large reallocations.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.handle(&mut batch, exporter.as_mut())
                }));
                batch.clear();
            }
            if disconnected {
                break;
            }
        }
    }

    fn build_exporter(&self, settings: &OtlpSettings) -> Result<Exporter, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let timeout = std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
            .ok()
            .and_then(|ms| ms.trim().parse().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        let mut exporter = runtime.block_on(async {
            match settings.protocol {
                OtlpProtocol::Grpc => {
                    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_timeout(timeout);
                    if let Some(endpoint) = &settings.endpoint {
                        builder = builder.with_endpoint(endpoint.clone());
                    }
                    builder.build()
                }
                OtlpProtocol::HttpProtobuf => {
                    let mut builder = opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_http_client(client::ExportClient { timeout })
                        .with_timeout(timeout);
                    if let Some(endpoint) = &settings.endpoint {
                        builder = builder.with_endpoint(http_traces_endpoint(endpoint));
                    }
                    builder.build()
                }
            }
        })
        .map_err(|e| e.to_string())?;
        let resource = Resource::builder()
            .with_service_name(self.profiler.config.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        Ok(Exporter {
            runtime,
            exporter,
            timeout,
        })
    }

    /// Enriches a batch and sends each span on, leaving `batch` empty.
    fn handle(&self, batch: &mut Vec<Pending>, mut exporter: Option<&mut Exporter>) {
        // Every sample of these spans was taken before now: wait for the
        // collector to have drained them (one or two cycles).
        self.profiler
            .store
            .wait_drained(monotonic_now_ns(), Duration::from_secs(2));
        let span_ids: Vec<u64> = batch.iter().map(Pending::span_id).collect();
        let summaries = self.profiler.span_summaries(&span_ids);
        let total = batch.len();
        let to_export = |remaining: usize| Vec::with_capacity(remaining.min(MAX_BATCH));
        let mut request = to_export(total);
        for (i, (pending, summary)) in batch.drain(..).zip(&summaries).enumerate() {
            match pending {
                // Each span data is built straight into its request: they are
                // large, and every move through another vector is a copy.
                Pending::Recorded(span) => {
                    request.push(self.span_data(*span, summary));
                    if request.len() == MAX_BATCH
                        && let Some(exporter) = exporter.as_deref_mut()
                    {
                        self.send(exporter, std::mem::replace(&mut request, to_export(total - i - 1)));
                    }
                }
                Pending::Forwarded { mut span, forward } => {
                    let trace_id = u128::from_be_bytes(span.span_context.trace_id().to_bytes());
                    span.attributes.extend(self.attributes(summary, trace_id, span_ids[i]));
                    forward.on_end(*span);
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(exporter) = exporter
            && !request.is_empty()
        {
            self.send(exporter, request);
        }
    }

    /// One export request; a failure counts its spans and is not retried
    /// (the next batch is the retry: spans keep coming).
    fn send(&self, exporter: &mut Exporter, spans: Vec<SpanData>) {
        let count = spans.len() as u64;
        let result = exporter.runtime.block_on(async {
            tokio::time::timeout(exporter.timeout + Duration::from_secs(1), exporter.exporter.export(spans)).await
        });
        match result {
            Ok(Ok(())) => {
                self.counters.exported.fetch_add(count, Ordering::Relaxed);
                self.counters.last_export_ok.store(true, Ordering::Relaxed);
            }
            _ => {
                self.counters.export_failed.fetch_add(count, Ordering::Relaxed);
                self.counters.last_export_ok.store(false, Ordering::Relaxed);
            }
        }
    }

    /// The profile attributes of one span.
    fn attributes(&self, summary: &SpanSummary, trace_id: u128, span_id: u64) -> Vec<KeyValue> {
        let top: opentelemetry::Value = if summary.top_functions.is_empty() {
            // Most spans: a static string, not an allocation per span.
            "no CPU samples".into()
        } else {
            summary
                .top_functions
                .iter()
                .map(|(function, share)| format!("{function} {share:.1}%"))
                .collect::<Vec<_>>()
                .join(", ")
                .into()
        };
        let mut attributes = Vec::with_capacity(5);
        attributes.extend([
            KeyValue::new("profile.samples", summary.samples as i64),
            KeyValue::new("profile.self_samples", summary.self_samples as i64),
            // Tenths of a millisecond: finer would be noise at any sampling rate.
            KeyValue::new("profile.cpu_time_ms", (summary.cpu_ns as f64 / 1e5).round() / 10.0),
            KeyValue::new("profile.top_functions", top),
        ]);
        if let Some(base) = &self.flamegraph_base {
            attributes.push(KeyValue::new("profile.flamegraph_url", flamegraph_url(base, trace_id, span_id)));
        }
        attributes
    }

    /// Our recorded span, in the SDK's export form.
    fn span_data(&self, span: FinishedSpan, summary: &SpanSummary) -> SpanData {
        let context = &span.context;
        let mut attributes = span.attributes;
        let mut events = SpanEvents::default();
        events.events = span.events;
        attributes.extend(self.attributes(summary, context.trace_id, context.span_id));
        SpanData {
            span_context: OtelSpanContext::new(
                TraceId::from_bytes(context.trace_id.to_be_bytes()),
                SpanId::from_bytes(context.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(span.parent_span_id.to_be_bytes()),
            parent_span_is_remote: false,
            span_kind: span.kind,
            name: Cow::Owned(span.name),
            start_time: span.start,
            end_time: span.end,
            attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: span.status,
            instrumentation_scope: InstrumentationScope::builder("smolder")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }
}

/// The agent's flame graph of one span. Built by hand rather than with
/// `format!`: it is made for every span, thousands a second, and the
/// formatting machinery costs several times the few copies it comes to.
fn flamegraph_url(base: &str, trace_id: u128, span_id: u64) -> String {
    const PATH: &str = "/debug/pprof/flamegraph?trace_id=";
    const SPAN: &str = "&span_id=";
    let mut url = String::with_capacity(base.len() + PATH.len() + 32 + SPAN.len() + 16);
    url.push_str(base);
    url.push_str(PATH);
    push_hex(&mut url, trace_id, 32);
    url.push_str(SPAN);
    push_hex(&mut url, u128::from(span_id), 16);
    url
}

/// Appends the low `digits` hex digits of `value`, zero-padded, lower case.
fn push_hex(out: &mut String, value: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..digits).rev() {
        out.push(char::from(HEX[(value >> (shift * 4)) as usize & 0xf]));
    }
}

/// Moves what the queue holds into `batch`, up to [`QUEUE_CAPACITY`] spans
/// in all, so that spans held here and in the queue stay within twice its
/// bound. True once the layer side is gone.
fn drain(inbox: &Receiver<Pending>, batch: &mut Vec<Pending>) -> bool {
    while batch.len() < QUEUE_CAPACITY {
        match inbox.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => return true,
        }
    }
    false
}

/// An HTTP endpoint given without a path gets the traces path, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` does.
fn http_traces_endpoint(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .map_or(trimmed, |(_, rest)| rest)
        .contains('/');
    if has_path { endpoint.to_owned() } else { format!("{trimmed}/v1/traces") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flamegraph_urls_carry_zero_padded_ids() {
        assert_eq!(
            flamegraph_url("http://h:6060", 0xabc, 0x12),
            "http://h:6060/debug/pprof/flamegraph?trace_id=00000000000000000000000000000abc&span_id=0000000000000012"
        );
        let (trace_id, span_id) = (0x0af7651916cd43dd8448eb211c80319c_u128, 0xb7ad6b7169203331_u64);
        assert_eq!(
            flamegraph_url("", trace_id, span_id),
            format!("/debug/pprof/flamegraph?trace_id={trace_id:032x}&span_id={span_id:016x}")
        );
    }

    #[test]
    fn http_endpoints_get_the_traces_path_only_when_bare() {
        assert_eq!(http_traces_endpoint("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_endpoint("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_endpoint("http://c:4318/custom/path"), "http://c:4318/custom/path");
    }
}
