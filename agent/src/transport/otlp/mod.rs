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
//! sent over HTTP/protobuf (the shared client, `transport::outbound::http`)
//! or gRPC (`grpc.rs`), retried as `transport::outbound::retry` classifies
//! failures, from a private
//! single-threaded tokio runtime owned by this thread. A collector that is
//! down or slow stalls only this thread, for at most the export timeout per
//! request; meanwhile the queue fills and further spans are dropped and
//! counted, never waited for.
//!
//! A request the collector may take later (OTLP's retryable failures: HTTP
//! 429, 502, 503, 504, gRPC `UNAVAILABLE` and the like, no connection, no
//! answer in time) is held and sent again with exponential backoff, or
//! after the delay the collector asked for, for up to [`RETRY_FOR`]; then
//! its spans count as failed. While one is held no other request is sent
//! (the collector is asking for less, not more): new spans wait in the
//! batch and the queue, which fill and then drop and count. A request
//! refused for good (any other status) counts as failed at once. Export
//! resumes when the held request goes through.
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

pub(crate) mod client;
mod encode;
pub(crate) mod grpc;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_sdk::Resource;

use crate::Error;
use crate::collect::SpanLeaves;
use crate::config::OtlpSettings;
use crate::profile::SpanSummary;
use crate::profile::queries::Profiler;
use crate::sampler::clock::monotonic_now_ns;
use crate::sampler::threads;
use crate::spans::attributes;
use crate::spans::finished::{self, Pending, QUEUE_CAPACITY};
use crate::stats::ExportCounters;
use crate::transport::outbound::retry::Backoff;

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

/// How long a refused request is kept trying before its spans are given up.
/// With the queue and the batch holding 8 192 spans more, this rides out a
/// collector restart without letting a long outage hold memory.
const RETRY_FOR: Duration = Duration::from_secs(30);

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
        let inbox = finished::install(otlp.is_some(), flamegraph_base.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ExportCounters::default());
        let thread = {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("smolder-spans".into())
                .stack_size(1 << 20)
                .spawn(move || {
                    threads::enter_agent_thread(&own_threads);
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
    /// The request the collector asked to have again later, if any.
    held: Option<HeldRequest>,
}

/// Vectors the worker keeps from batch to batch (a few kilobytes each at
/// thousands of spans a second), so that a tick allocates nothing of its
/// own beyond what the spans carry.
#[derive(Default)]
struct BatchBuffers {
    span_ids: Vec<u64>,
    leaves: Vec<Option<SpanLeaves>>,
    summaries: Vec<SpanSummary>,
}

/// A request refused for now, waiting to be sent again (with the shared
/// jittered backoff, `transport::outbound::retry`).
struct HeldRequest {
    request: Bytes,
    spans: u64,
    backoff: Backoff,
}

impl Worker {
    fn run(&self, inbox: Receiver<Pending>, otlp: Option<OtlpSettings>, stop: &AtomicBool) {
        let mut exporter = otlp
            .as_ref()
            .and_then(|settings| match self.build_exporter(settings) {
                Ok(exporter) => Some(exporter),
                Err(error) => {
                    tracing::warn!(%error, "smolder: cannot export spans");
                    *crate::sync::lock(&self.counters.export_error) = Some(error);
                    None
                }
            });
        let mut batch: Vec<Pending> = Vec::new();
        let mut buffers = BatchBuffers::default();
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
            let held = match exporter.as_mut() {
                Some(exporter) => self.retry_held(exporter),
                None => false,
            };
            let due = forwarding
                || (!held
                    && (batch.len() >= MAX_BATCH
                        || oldest.elapsed() >= BATCH_DELAY
                        || disconnected));
            if due && !batch.is_empty() {
                // One request per MAX_BATCH spans, all enriched after one
                // wait for the collector. The batch keeps its capacity from
                // tick to tick: regrowing it each time would be a string of
                // large reallocations.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.handle(&mut batch, exporter.as_mut(), &mut buffers)
                }));
                if handled.is_err() {
                    batch.clear();
                }
                oldest = Instant::now();
            }
            if disconnected {
                break;
            }
        }
        // Stopping: a request still held is given up.
        if let Some(held) = exporter.and_then(|e| e.held) {
            self.counters
                .export_failed
                .fetch_add(held.spans, Ordering::Relaxed);
        }
    }

    /// Sends the held request again if its time has come; true while one is
    /// (still) held.
    fn retry_held(&self, exporter: &mut Exporter) -> bool {
        let Some(held) = exporter.held.as_mut() else {
            return false;
        };
        if !held.backoff.due(Instant::now()) {
            return true;
        }
        self.counters.export_retries.fetch_add(1, Ordering::Relaxed);
        let Exporter {
            runtime,
            transport,
            timeout,
            ..
        } = exporter;
        let result = runtime.block_on(transport.export(&held.request, *timeout));
        let spans = held.spans;
        match result {
            Ok(()) => self.exported(spans),
            Err(error) if error.retry != client::Retry::Never => {
                held.backoff.schedule(error.retry, Instant::now());
                let expired = held.backoff.expired(RETRY_FOR);
                self.report(error);
                if !expired {
                    return true;
                }
                self.counters
                    .export_failed
                    .fetch_add(spans, Ordering::Relaxed);
            }
            Err(error) => self.failed(spans, error),
        }
        if let Some(held) = exporter.held.take() {
            exporter.encoder.reclaim(held.request);
        }
        false
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
        let resource = own_resource(&self.profiler.config.service_name);
        Ok(Exporter {
            runtime,
            transport,
            encoder: encode::RequestEncoder::new(&resource, self.flamegraph_base.clone()),
            timeout: settings.timeout,
            held: None,
        })
    }

    /// Enriches a batch and sends each span on. Our own spans stay in
    /// `batch` once a request is held for retry; the rest leave it.
    fn handle(
        &self,
        batch: &mut Vec<Pending>,
        mut exporter: Option<&mut Exporter>,
        buffers: &mut BatchBuffers,
    ) {
        let BatchBuffers {
            span_ids,
            leaves,
            summaries,
        } = buffers;
        // Spans the layer saw no sample in are looked up as span 0, which
        // the collector never has: their profile is empty.
        span_ids.clear();
        span_ids.extend(
            batch
                .iter()
                .map(|p| if p.sampled() { p.span_id() } else { 0 }),
        );
        let sampled = span_ids.iter().filter(|&&id| id != 0).count() as u64;
        self.counters.sampled.fetch_add(sampled, Ordering::Relaxed);
        if sampled > 0 {
            // Every sample of these spans was taken before now: wait for
            // the collector to have drained them (one or two cycles).
            self.profiler
                .store
                .wait_drained(monotonic_now_ns(), Duration::from_secs(2));
            self.profiler.span_summaries(span_ids, leaves, summaries);
        } else {
            summaries.clear();
            summaries.resize(span_ids.len(), SpanSummary::default());
        }
        let mut unexported = 0;
        let mut pending_spans = std::mem::take(batch);
        for (pending, summary) in pending_spans.drain(..).zip(summaries.iter()) {
            match pending {
                Pending::Recorded(span) => match exporter.as_deref_mut() {
                    // The collector asked for less: keep it for later.
                    Some(exporter) if exporter.held.is_some() => {
                        batch.push(Pending::Recorded(span))
                    }
                    Some(exporter) => {
                        exporter.encoder.push(&span, summary);
                        if exporter.encoder.len() == MAX_BATCH {
                            self.send(exporter);
                        }
                    }
                    None => unexported += 1,
                },
                Pending::Forwarded { mut span, forward } => {
                    attributes::push_profile_attributes(
                        &mut span,
                        summary,
                        self.flamegraph_base.as_deref(),
                    );
                    forward.on_end(*span);
                    finished::count_forwarded();
                }
            }
        }
        if let Some(exporter) = exporter
            && !exporter.encoder.is_empty()
        {
            self.send(exporter);
        }
        // Back into the batch's own allocation, behind nothing.
        pending_spans.append(batch);
        *batch = pending_spans;
        // Recorded for an exporter that could not be built (its warning was
        // logged at start): they count as failed exports.
        self.counters
            .export_failed
            .fetch_add(unexported, Ordering::Relaxed);
    }

    /// One export request of what the encoder holds. A refusal the
    /// collector means for now holds the request for [`Self::retry_held`];
    /// any other failure counts its spans.
    fn send(&self, exporter: &mut Exporter) {
        let spans = exporter.encoder.len() as u64;
        let request = exporter.encoder.finish();
        let Exporter {
            runtime,
            transport,
            timeout,
            encoder,
            ..
        } = exporter;
        match runtime.block_on(transport.export(&request, *timeout)) {
            Ok(()) => self.exported(spans),
            Err(error) if error.retry != client::Retry::Never => {
                exporter.held = Some(HeldRequest {
                    request,
                    spans,
                    backoff: Backoff::first(error.retry, Instant::now()),
                });
                self.report(error);
                return;
            }
            Err(error) => self.failed(spans, error),
        }
        encoder.reclaim(request);
    }

    fn exported(&self, spans: u64) {
        self.counters.exported.fetch_add(spans, Ordering::Relaxed);
        let mut error = crate::sync::lock(&self.counters.export_error);
        *error = None;
    }

    fn failed(&self, spans: u64, error: client::ExportError) {
        self.counters
            .export_failed
            .fetch_add(spans, Ordering::Relaxed);
        self.report(error);
    }

    /// Keeps the failure's words for `/debug/pprof/stats`.
    fn report(&self, error: client::ExportError) {
        let mut latest = crate::sync::lock(&self.counters.export_error);
        *latest = Some(error.message);
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

/// The resource of the spans the agent encodes itself, resolved once: the
/// service name, `telemetry.sdk.*` naming smolder, then
/// `OTEL_RESOURCE_ATTRIBUTES` (which, as in the SDK, may override them).
///
/// `telemetry.sdk.*` names what produced the telemetry. On this path that is
/// smolder: its layer records the spans and its encoder writes them, and no
/// part of the OpenTelemetry Rust SDK touches them, so claiming
/// `opentelemetry` 0.33 (what `Resource::builder` fills in) would send a
/// reader of a bad span to the wrong code. The semantic conventions ask an
/// SDK that is not OpenTelemetry's own to give its own name. `telemetry.distro.*`
/// is for a distribution of the OpenTelemetry SDK, which this is not; with
/// the user's own SDK pipeline (`ProfilingSpanProcessor`) the SDK sets the
/// resource, and says it is the SDK, rightly.
pub(crate) fn own_resource(service_name: &str) -> Resource {
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector};
    let detectors: [Box<dyn ResourceDetector>; 1] = [Box::new(EnvResourceDetector::new())];
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("telemetry.sdk.name", "smolder"),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ])
        .with_detectors(&detectors)
        .with_service_name(service_name.to_owned())
        .build()
}
