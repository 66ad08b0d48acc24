//! Transport: continuous profiles pushed to Grafana Pyroscope (and, with
//! the `otlp-profiles` feature, to an OpenTelemetry Collector as OTLP
//! profiles), one interval at a time.
//!
//! The `smolder-push` thread (an agent thread: never sampled, its spans
//! never traced) cuts time into back-to-back intervals of
//! `SMOLDER_PUSH_INTERVAL` (10 s by default). Each interval's profile of
//! every kind the agent keeps ([`sources`]: CPU today) is rendered as
//! gzipped pprof and sent in one `push.v1.PushRequest` (`pyroscope.rs`),
//! over the shared HTTP/1.1 client (`transport::outbound::http`) on this
//! thread's own current-thread runtime; for a collector, the same profiles
//! go in one `ExportProfilesServiceRequest` (`otlp_profiles.rs`) over the
//! span exporter's OTLP transports. Each destination has its own queue,
//! backoff and counters: one that is down does not hold up the other.
//!
//! Continuity: a CPU interval is a capture registered one interval ahead
//! of its end (`Profiler::begin_interval`), so every sample is counted in
//! exactly one interval, with no gap between consecutive ones, however
//! late this thread gets to an interval's end. Interval captures keep the
//! samples' span labels, unlike the always-on history, and do not take one
//! of the eight captures HTTP clients and `record` share.
//!
//! Span labels: Grafana's traces-to-profiles asks Pyroscope for the samples
//! whose `span_id` label is the span's `pyroscope.profile.id`, which only
//! local roots carry. Pushed samples are therefore labelled with their
//! local root (`span_id`: its id, `span_name`: its name), as
//! grafana/otel-profiling-go labels goroutines, so that the link on a root
//! span opens the flame graph of all its work in this process. The agent's
//! own routes keep labelling the innermost span (`render::pprof::SpanLabels`).
//!
//! Never hurting the host: the thread sends one request at a time, within
//! half an interval (at most 10 s). Encoded intervals wait in a queue
//! bounded by count and bytes ([`queue`]); a server that is down, slow or
//! throttling gets the oldest waiting interval again after the delay it
//! asked for or an exponential backoff with jitter
//! (`transport::outbound::retry`), and nothing else meanwhile, while new
//! intervals push the oldest out of the queue, counted as dropped. Push
//! resumes by itself when the server answers again. Everything shows in
//! `Stats::push` and `/debug/pprof/stats`.

#[cfg(feature = "otlp-profiles")]
mod otlp_profiles;
mod pyroscope;
mod queue;
pub(crate) mod sources;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::PushSettings;
use crate::profile::queries::Profiler;
use crate::render::pprof::{SpanLabels, encode_labelled};
use crate::sampler::clock::monotonic_now_ns;
use crate::sampler::threads;
use crate::stats::PushCounters;
use crate::transport::outbound::http::HttpTransport;
use crate::transport::outbound::retry::{Backoff, ExportError, Retry};
use crate::{Error, Profile};
use queue::{IntervalQueue, MAX_QUEUED_BYTES, MAX_QUEUED_INTERVALS, Queued};
use sources::IntervalSource;

/// The push thread. Dropping it stops the thread; intervals still queued
/// are counted as dropped.
pub(crate) struct PushWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Pyroscope's counters, if it is a destination.
    pub(crate) pyroscope: Option<Arc<PushCounters>>,
    /// The OTLP collector's, if it is one.
    pub(crate) otlp: Option<Arc<PushCounters>>,
}

fn new_counters() -> Arc<PushCounters> {
    Arc::new(PushCounters {
        queue_max_intervals: MAX_QUEUED_INTERVALS,
        queue_max_bytes: MAX_QUEUED_BYTES,
        ..PushCounters::default()
    })
}

impl PushWorker {
    /// Starts pushing, if a destination is configured.
    pub(crate) fn start(
        profiler: Arc<Profiler>,
        settings: &PushSettings,
        own_threads: Arc<Mutex<HashSet<i32>>>,
    ) -> Result<Option<PushWorker>, Error> {
        if settings.pyroscope.is_none() && settings.otlp.is_none() {
            return Ok(None);
        }
        let pyroscope = settings.pyroscope.as_ref().map(|_| new_counters());
        let otlp = settings.otlp.as_ref().map(|_| new_counters());
        let stop = Arc::new(AtomicBool::new(false));
        let (interval, timeout) = (settings.interval, settings.request_timeout());
        let thread = {
            let stop = Arc::clone(&stop);
            let settings = settings.clone();
            let counters = (pyroscope.clone(), otlp.clone());
            std::thread::Builder::new()
                .name("smolder-push".into())
                .stack_size(1 << 20)
                .spawn(move || {
                    threads::enter_agent_thread(&own_threads);
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            for c in [&counters.0, &counters.1].into_iter().flatten() {
                                *crate::sync::lock(&c.last_error) = Some(error.to_string());
                            }
                            return;
                        }
                    };
                    let destinations =
                        destinations(&profiler, &settings, &runtime, counters.0, counters.1);
                    if destinations.is_empty() {
                        return;
                    }
                    let mut worker = Worker {
                        sources: sources::sources(&profiler),
                        destinations,
                        runtime,
                        timeout,
                    };
                    worker.run(interval, &stop);
                })
                .map_err(|source| Error::Os {
                    operation: "spawning the profile push thread",
                    source,
                })?
        };
        Ok(Some(PushWorker {
            stop,
            thread: Some(thread),
            pyroscope,
            otlp,
        }))
    }
}

/// Sets up each configured destination (on the push thread, inside its
/// runtime); one that cannot be set up is reported in its counters and
/// left out.
fn destinations(
    profiler: &Profiler,
    settings: &PushSettings,
    runtime: &tokio::runtime::Runtime,
    pyroscope_counters: Option<Arc<PushCounters>>,
    otlp_counters: Option<Arc<PushCounters>>,
) -> Vec<Destination> {
    let _inside = runtime.enter();
    let tid = threads::current_tid();
    let mut out = Vec::new();
    let mut add = |counters: Arc<PushCounters>, made: Result<(Encoder, Transport), String>| {
        counters.tid.store(tid, Relaxed);
        match made {
            Ok((encoder, transport)) => out.push(Destination {
                encoder,
                transport,
                counters,
                queue: IntervalQueue::default(),
                backoff: None,
            }),
            Err(error) => {
                tracing::warn!(%error, "smolder: cannot push profiles");
                *crate::sync::lock(&counters.last_error) = Some(error);
            }
        }
    };
    if let (Some(settings), Some(counters)) = (&settings.pyroscope, pyroscope_counters) {
        let builder = pyroscope::RequestBuilder::new(settings, &profiler.config.service_name);
        let made = pyroscope::transport(settings)
            .map(|transport| (Encoder::Pyroscope(builder), Transport::Http(transport)));
        add(counters, made);
    }
    #[cfg(feature = "otlp-profiles")]
    if let (Some(settings), Some(counters)) = (&settings.otlp, otlp_counters) {
        let resource = crate::transport::otlp::own_resource(&profiler.config.service_name);
        let encoder = otlp_profiles::ProfilesEncoder::new(&resource);
        let made = crate::transport::otlp::client::Transport::for_service(
            settings,
            otlp_profiles::EXPORT_PATH,
        )
        .map(|transport| (Encoder::Otlp(encoder), Transport::Otlp(transport)));
        add(counters, made);
    }
    #[cfg(not(feature = "otlp-profiles"))]
    drop(otlp_counters);
    out
}

impl Drop for PushWorker {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// How a destination encodes an interval.
enum Encoder {
    Pyroscope(pyroscope::RequestBuilder),
    #[cfg(feature = "otlp-profiles")]
    Otlp(otlp_profiles::ProfilesEncoder),
}

impl Encoder {
    /// One request for the interval's profiles.
    fn request(&self, profiles: &[(&'static str, Profile)]) -> Result<Bytes, String> {
        match self {
            Encoder::Pyroscope(builder) => {
                let mut encoded = Vec::with_capacity(profiles.len());
                for (name, profile) in profiles {
                    let pprof = encode_labelled(
                        profile,
                        SpanLabels::LocalRoot,
                        flate2::Compression::fast(),
                    )
                    .map_err(|e| e.to_string())?;
                    encoded.push((*name, pprof));
                }
                Ok(builder.request(encoded))
            }
            #[cfg(feature = "otlp-profiles")]
            Encoder::Otlp(encoder) => {
                let profiles: Vec<&Profile> = profiles.iter().map(|(_, p)| p).collect();
                Ok(encoder.request(&profiles))
            }
        }
    }
}

/// How a destination sends.
enum Transport {
    Http(HttpTransport),
    #[cfg(feature = "otlp-profiles")]
    Otlp(crate::transport::otlp::client::Transport),
}

impl Transport {
    async fn export(&mut self, request: &Bytes, timeout: Duration) -> Result<(), ExportError> {
        let sending = async {
            match self {
                Transport::Http(http) => http.export(request).await,
                #[cfg(feature = "otlp-profiles")]
                Transport::Otlp(otlp) => otlp.export(request, timeout).await,
            }
        };
        tokio::time::timeout(timeout, sending)
            .await
            .unwrap_or_else(|_| {
                Err(ExportError::retryable(format!(
                    "no answer within {timeout:?}"
                )))
            })
    }
}

/// One place profiles go: its encoding, its connection, its queue.
struct Destination {
    encoder: Encoder,
    transport: Transport,
    counters: Arc<PushCounters>,
    queue: IntervalQueue,
    /// Set while the oldest interval waits to be sent again.
    backoff: Option<Backoff>,
}

struct Worker {
    sources: Vec<Box<dyn IntervalSource>>,
    destinations: Vec<Destination>,
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
}

impl Worker {
    fn run(&mut self, interval: Duration, stop: &AtomicBool) {
        let length = interval.as_nanos() as u64;
        // The windows being recorded, oldest first: the current interval
        // and the next, each registered before it begins.
        let start = monotonic_now_ns();
        let mut windows = VecDeque::from([
            (start, start + length),
            (start + length, start + 2 * length),
        ]);
        for &(from, to) in &windows {
            for source in &mut self.sources {
                source.prepare(from, to);
            }
        }
        while !stop.load(Relaxed) {
            let now = monotonic_now_ns();
            let (from, to) = windows[0];
            if now < to {
                self.send_if_due();
                // Asleep until the interval ends or a held request is due
                // again: the thread wakes a few times an interval, not on a
                // tick. Stopping unparks it.
                let until_end = Duration::from_nanos(to.saturating_sub(monotonic_now_ns()));
                std::thread::park_timeout(until_end.min(self.until_retry()));
                continue;
            }
            // The interval [from, to) has ended: its profiles, then the
            // window after the next one, registered before it begins.
            windows.pop_front();
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.interval_ended(from, to);
            }));
            if ended.is_err() {
                for destination in &self.destinations {
                    destination.counters.failed.fetch_add(1, Relaxed);
                }
            }
            // It starts where the next one ends, unless this thread was
            // held up for more than an interval (the process was stopped
            // with SIGSTOP, say): then it starts now, and the time between
            // belongs to no interval.
            let next_end = windows.back().map_or(to, |&(_, end)| end);
            let from = next_end.max(monotonic_now_ns());
            windows.push_back((from, from + length));
            for source in &mut self.sources {
                source.prepare(from, from + length);
            }
            self.send_if_due();
        }
        // Stopping: what is still queued is not sent.
        for destination in &mut self.destinations {
            let counters = &destination.counters;
            counters
                .dropped
                .fetch_add(destination.queue.len() as u64, Relaxed);
            counters.queue_intervals.store(0, Relaxed);
            counters.queue_bytes.store(0, Relaxed);
        }
    }

    /// Renders the ended interval's profiles and queues them, as one
    /// request, for every destination.
    fn interval_ended(&mut self, from: u64, to: u64) {
        for destination in &self.destinations {
            destination.counters.intervals.fetch_add(1, Relaxed);
        }
        let profiles: Vec<(&'static str, Profile)> = self
            .sources
            .iter_mut()
            .filter_map(|source| Some((source.name(), source.finish(from, to)?)))
            .collect();
        for destination in &mut self.destinations {
            let counters = &destination.counters;
            if profiles.is_empty() {
                counters.failed.fetch_add(1, Relaxed);
                continue;
            }
            match destination.encoder.request(&profiles) {
                Ok(request) => {
                    let dropped = destination.queue.push(Queued {
                        request,
                        profiles: profiles.len() as u64,
                    });
                    counters.dropped.fetch_add(dropped, Relaxed);
                }
                Err(error) => {
                    counters.failed.fetch_add(1, Relaxed);
                    *crate::sync::lock(&counters.last_error) = Some(error);
                }
            }
            destination.publish_queue();
        }
    }

    /// How long until the earliest held request may be sent again
    /// ([`Duration::MAX`] if none is held).
    fn until_retry(&self) -> Duration {
        let now = Instant::now();
        self.destinations
            .iter()
            .filter(|d| d.queue.front().is_some())
            .filter_map(|d| d.backoff.as_ref())
            .map(|b| b.next_try().saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::MAX)
    }

    fn send_if_due(&mut self) {
        let Worker {
            destinations,
            runtime,
            timeout,
            ..
        } = self;
        for destination in destinations {
            destination.send_if_due(runtime, *timeout);
        }
    }
}

impl Destination {
    /// Sends the oldest queued interval, and the next ones while they go
    /// through, unless a backoff is running.
    fn send_if_due(&mut self, runtime: &tokio::runtime::Runtime, timeout: Duration) {
        while let Some(oldest) = self.queue.front() {
            let now = Instant::now();
            if let Some(backoff) = &self.backoff {
                if !backoff.due(now) {
                    return;
                }
                self.counters.retries.fetch_add(1, Relaxed);
            }
            let request = oldest.request.clone();
            let result = runtime.block_on(self.transport.export(&request, timeout));
            match result {
                Ok(()) => {
                    self.backoff = None;
                    if let Some(sent) = self.queue.pop() {
                        self.counters.pushed.fetch_add(1, Relaxed);
                        self.counters
                            .profiles_pushed
                            .fetch_add(sent.profiles, Relaxed);
                        self.counters
                            .bytes_pushed
                            .fetch_add(sent.request.len() as u64, Relaxed);
                    }
                    *crate::sync::lock(&self.counters.last_error) = None;
                }
                Err(error) if error.retry != Retry::Never => {
                    let now = Instant::now();
                    match &mut self.backoff {
                        Some(backoff) => backoff.schedule(error.retry, now),
                        None => self.backoff = Some(Backoff::first(error.retry, now)),
                    }
                    self.report(error.message);
                    self.publish_queue();
                    return;
                }
                Err(error) => {
                    // Refused for good: this interval goes, the next may
                    // fare better.
                    self.backoff = None;
                    self.queue.pop();
                    self.counters.failed.fetch_add(1, Relaxed);
                    self.report(error.message);
                }
            }
            self.publish_queue();
        }
    }

    fn publish_queue(&self) {
        self.counters
            .queue_intervals
            .store(self.queue.len() as u64, Relaxed);
        self.counters
            .queue_bytes
            .store(self.queue.bytes() as u64, Relaxed);
    }

    /// Keeps the failure's words for `/debug/pprof/stats`.
    fn report(&self, message: String) {
        *crate::sync::lock(&self.counters.last_error) = Some(message);
    }
}
