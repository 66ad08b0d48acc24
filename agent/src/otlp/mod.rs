//! Transport: spans out over OTLP, each carrying its CPU profile.
//!
//! The `smolder-spans` thread takes finished spans from the layer's bounded
//! queue (`spans::finished`), waits until the collector has drained every
//! sample taken before they ended, adds the profile attributes, and then
//! either exports them (our own spans, when an OTLP endpoint is configured)
//! or hands them back to the user's span processor (spans from the user's
//! tracing-opentelemetry pipeline, through `ProfilingSpanProcessor`).
//!
//! Our own spans are encoded straight into OTLP protobuf (`encode.rs`) and
//! sent over HTTP/protobuf or gRPC (`client.rs`) from a private
//! single-threaded tokio runtime owned by this thread. A collector that is
//! down or slow stalls only this thread, for at most the export timeout per
//! request; meanwhile the queue fills and further spans are dropped and
//! counted, never waited for. Export resumes with the next batch once the
//! collector answers.
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
mod encode;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::config::OtlpSettings;
use crate::handler::monotonic_now_ns;
use crate::profiler::{Profiler, SpanSummary};
use crate::spans::finished::{self, Pending, QUEUE_CAPACITY};
use crate::{Error, threads};

/// The profile attributes' names (the table above): one spelling for the
/// encoder and for spans handed to the user's processor.
mod attribute {
    pub(super) const SAMPLES: &str = "profile.samples";
    pub(super) const SELF_SAMPLES: &str = "profile.self_samples";
    pub(super) const CPU_TIME_MS: &str = "profile.cpu_time_ms";
    pub(super) const TOP_FUNCTIONS: &str = "profile.top_functions";
    pub(super) const FLAMEGRAPH_URL: &str = "profile.flamegraph_url";
}

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

/// The encoder, the transport and the runtime it runs on.
struct Exporter {
    runtime: tokio::runtime::Runtime,
    transport: client::Transport,
    encoder: encode::RequestEncoder,
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
        let transport = {
            let _inside = runtime.enter();
            client::Transport::new(settings)?
        };
        // Resolved once: the service name, OTEL_RESOURCE_ATTRIBUTES and the
        // SDK's telemetry.sdk.* attributes, as every OpenTelemetry exporter
        // reports them.
        let resource = Resource::builder()
            .with_service_name(self.profiler.config.service_name.clone())
            .build();
        Ok(Exporter {
            runtime,
            transport,
            encoder: encode::RequestEncoder::new(&resource, self.flamegraph_base.clone()),
            timeout: settings.timeout,
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
        let mut unexported = 0;
        for ((pending, summary), &span_id) in batch.drain(..).zip(&summaries).zip(&span_ids) {
            match pending {
                Pending::Recorded(span) => match exporter.as_deref_mut() {
                    Some(exporter) => {
                        exporter.encoder.push(&span, summary);
                        if exporter.encoder.len() == MAX_BATCH {
                            self.send(exporter);
                        }
                    }
                    None => unexported += 1,
                },
                Pending::Forwarded { mut span, forward } => {
                    let trace_id = u128::from_be_bytes(span.span_context.trace_id().to_bytes());
                    span.attributes.extend(profile_attributes(
                        summary,
                        self.flamegraph_base.as_deref(),
                        trace_id,
                        span_id,
                    ));
                    forward.on_end(*span);
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(exporter) = exporter
            && !exporter.encoder.is_empty()
        {
            self.send(exporter);
        }
        // Recorded for an exporter that could not be built (its warning was
        // logged at start): they count as failed exports.
        self.counters.export_failed.fetch_add(unexported, Ordering::Relaxed);
    }

    /// One export request of what the encoder holds; a failure counts its
    /// spans and is not retried (the next batch is the retry: spans keep
    /// coming).
    fn send(&self, exporter: &mut Exporter) {
        let count = exporter.encoder.len() as u64;
        let request = exporter.encoder.finish();
        let Exporter {
            runtime,
            transport,
            timeout,
            ..
        } = exporter;
        match runtime.block_on(transport.export(request, *timeout)) {
            Ok(()) => {
                self.counters.exported.fetch_add(count, Ordering::Relaxed);
                self.counters.last_export_ok.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.export_failed.fetch_add(count, Ordering::Relaxed);
                self.counters.last_export_ok.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// The profile attributes of one span as key-values, for spans on their way
/// to the user's own processor (our own spans are encoded with them
/// directly, without these allocations).
fn profile_attributes(
    summary: &SpanSummary,
    flamegraph_base: Option<&str>,
    trace_id: u128,
    span_id: u64,
) -> Vec<KeyValue> {
    let top: opentelemetry::Value = if summary.top_functions.is_empty() {
        // Most spans: a static string, not an allocation per span.
        NO_SAMPLES.into()
    } else {
        let mut top = String::new();
        top_functions_into(&mut top, summary);
        top.into()
    };
    let mut attributes = Vec::with_capacity(5);
    attributes.extend([
        KeyValue::new(attribute::SAMPLES, summary.samples as i64),
        KeyValue::new(attribute::SELF_SAMPLES, summary.self_samples as i64),
        KeyValue::new(attribute::CPU_TIME_MS, cpu_time_ms(summary)),
        KeyValue::new(attribute::TOP_FUNCTIONS, top),
    ]);
    if let Some(base) = flamegraph_base {
        let mut url = String::new();
        flamegraph_url_into(&mut url, base, trace_id, span_id);
        attributes.push(KeyValue::new(attribute::FLAMEGRAPH_URL, url));
    }
    attributes
}

/// `profile.cpu_time_ms`: tenths of a millisecond, since finer would be
/// noise at any sampling rate.
fn cpu_time_ms(summary: &SpanSummary) -> f64 {
    (summary.cpu_ns as f64 / 1e5).round() / 10.0
}

/// `profile.top_functions` of a span that was never sampled.
const NO_SAMPLES: &str = "no CPU samples";

/// `profile.top_functions`: "name share%" pairs, hottest first.
fn top_functions_into(out: &mut String, summary: &SpanSummary) {
    use std::fmt::Write as _;
    if summary.top_functions.is_empty() {
        out.push_str(NO_SAMPLES);
    }
    for (i, (function, share)) in summary.top_functions.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{function} {share:.1}%");
    }
}

/// Appends the agent's flame graph of one span. Built by hand rather than
/// with `format!`: it is made for every span, thousands a second, and the
/// formatting machinery costs several times the few copies it comes to.
fn flamegraph_url_into(url: &mut String, base: &str, trace_id: u128, span_id: u64) {
    const PATH: &str = "/debug/pprof/flamegraph?trace_id=";
    const SPAN: &str = "&span_id=";
    url.reserve(base.len() + PATH.len() + 32 + SPAN.len() + 16);
    url.push_str(base);
    url.push_str(PATH);
    push_hex(url, trace_id, 32);
    url.push_str(SPAN);
    push_hex(url, u128::from(span_id), 16);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flamegraph_urls_carry_zero_padded_ids() {
        let flamegraph_url = |base, trace_id, span_id| {
            let mut url = String::new();
            flamegraph_url_into(&mut url, base, trace_id, span_id);
            url
        };
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
}
