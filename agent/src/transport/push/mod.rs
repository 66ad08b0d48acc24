//! Transport: continuous profiles pushed to Grafana Pyroscope, one
//! interval at a time.
//!
//! The `smolder-push` thread (an agent thread: never sampled, its spans
//! never traced) cuts time into back-to-back intervals of
//! `SMOLDER_PUSH_INTERVAL` (10 s by default). Each interval's profile of
//! every kind the agent keeps ([`sources`]: CPU today) is rendered as
//! gzipped pprof and sent in one `push.v1.PushRequest` ([`pyroscope`]),
//! over the shared HTTP/1.1 client (`transport::outbound::http`) on this
//! thread's own current-thread runtime.
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

mod pyroscope;
mod queue;
pub(crate) mod sources;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;
use crate::config::PushSettings;
use crate::profile::queries::Profiler;
use crate::render::pprof::{SpanLabels, encode_labelled};
use crate::sampler::clock::monotonic_now_ns;
use crate::sampler::threads;
use crate::stats::PushCounters;
use crate::transport::outbound::http::HttpTransport;
use crate::transport::outbound::retry::{Backoff, ExportError, Retry};
use queue::{IntervalQueue, MAX_QUEUED_BYTES, MAX_QUEUED_INTERVALS, Queued};
use sources::IntervalSource;

/// How often the thread looks at the clock, the queue and the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// The push thread. Dropping it stops the thread; intervals still queued
/// are counted as dropped.
pub(crate) struct PushWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub(crate) counters: Arc<PushCounters>,
}

impl PushWorker {
    /// Starts pushing, if a destination is configured.
    pub(crate) fn start(
        profiler: Arc<Profiler>,
        settings: &PushSettings,
        own_threads: Arc<Mutex<HashSet<i32>>>,
    ) -> Result<Option<PushWorker>, Error> {
        let Some(pyroscope) = settings.pyroscope.clone() else {
            return Ok(None);
        };
        let counters = Arc::new(PushCounters {
            queue_max_intervals: MAX_QUEUED_INTERVALS,
            queue_max_bytes: MAX_QUEUED_BYTES,
            ..PushCounters::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (interval, timeout) = (settings.interval, settings.request_timeout());
        let thread = {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("smolder-push".into())
                .stack_size(1 << 20)
                .spawn(move || {
                    threads::enter_agent_thread(&own_threads);
                    counters.tid.store(threads::current_tid(), Relaxed);
                    let builder =
                        pyroscope::RequestBuilder::new(&pyroscope, &profiler.config.service_name);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    let transport = runtime.as_ref().map_err(|e| e.to_string()).and_then(|rt| {
                        let _inside = rt.enter();
                        pyroscope::transport(&pyroscope)
                    });
                    let (runtime, transport) = match (runtime, transport) {
                        (Ok(runtime), Ok(transport)) => (runtime, transport),
                        (_, Err(error)) => {
                            tracing::warn!(%error, "smolder: cannot push profiles");
                            *crate::sync::lock(&counters.last_error) = Some(error);
                            return;
                        }
                        (Err(error), _) => {
                            let error = error.to_string();
                            *crate::sync::lock(&counters.last_error) = Some(error);
                            return;
                        }
                    };
                    let sources = sources::sources(&profiler);
                    let mut worker = Worker {
                        counters,
                        sources,
                        builder,
                        runtime,
                        transport,
                        timeout,
                        queue: IntervalQueue::default(),
                        backoff: None,
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
            counters,
        }))
    }
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

struct Worker {
    counters: Arc<PushCounters>,
    sources: Vec<Box<dyn IntervalSource>>,
    builder: pyroscope::RequestBuilder,
    runtime: tokio::runtime::Runtime,
    transport: HttpTransport,
    timeout: Duration,
    queue: IntervalQueue,
    /// Set while the oldest interval waits to be sent again.
    backoff: Option<Backoff>,
}

impl Worker {
    fn run(&mut self, interval: Duration, stop: &AtomicBool) {
        let length = interval.as_nanos() as u64;
        let mut from = monotonic_now_ns();
        let mut to = from + length;
        for source in &mut self.sources {
            source.prepare(from, to);
            source.prepare(to, to + length);
        }
        while !stop.load(Relaxed) {
            let now = monotonic_now_ns();
            if now < to {
                self.send_if_due();
                let until_end = Duration::from_nanos(to.saturating_sub(monotonic_now_ns()));
                std::thread::park_timeout(until_end.min(TICK));
                continue;
            }
            // The interval [from, to) has ended: its profiles, then the
            // interval after next, registered before it begins.
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.interval_ended(from, to);
            }));
            if ended.is_err() {
                self.counters.failed.fetch_add(1, Relaxed);
            }
            for source in &mut self.sources {
                source.prepare(to + length, to + 2 * length);
            }
            (from, to) = (to, to + length);
            self.send_if_due();
        }
        // Stopping: what is still queued is not sent.
        self.counters
            .dropped
            .fetch_add(self.queue.len() as u64, Relaxed);
        self.counters.queue_intervals.store(0, Relaxed);
        self.counters.queue_bytes.store(0, Relaxed);
    }

    /// Renders the ended interval's profiles and queues them as one
    /// request.
    fn interval_ended(&mut self, from: u64, to: u64) {
        let mut profiles = Vec::with_capacity(self.sources.len());
        for source in &mut self.sources {
            let Some(profile) = source.finish(from, to) else {
                continue;
            };
            match encode_labelled(&profile, SpanLabels::LocalRoot) {
                Ok(pprof) => profiles.push((source.name(), pprof)),
                Err(error) => *crate::sync::lock(&self.counters.last_error) = Some(error.to_string()),
            }
        }
        if profiles.is_empty() {
            self.counters.failed.fetch_add(1, Relaxed);
            return;
        }
        let count = profiles.len() as u64;
        let request = self.builder.request(profiles);
        let dropped = self.queue.push(Queued {
            request,
            profiles: count,
        });
        self.counters.dropped.fetch_add(dropped, Relaxed);
        self.publish_queue();
    }

    /// Sends the oldest queued interval, and the next ones while they go
    /// through, unless a backoff is running.
    fn send_if_due(&mut self) {
        while let Some(oldest) = self.queue.front() {
            let now = Instant::now();
            if let Some(backoff) = &self.backoff {
                if !backoff.due(now) {
                    return;
                }
                self.counters.retries.fetch_add(1, Relaxed);
            }
            let request = oldest.request.clone();
            let timeout = self.timeout;
            let sending = self.transport.export(&request);
            let result = self.runtime.block_on(async {
                tokio::time::timeout(timeout, sending)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ExportError::retryable(format!(
                            "no answer from the Pyroscope server within {timeout:?}"
                        )))
                    })
            });
            match result {
                Ok(()) => {
                    self.backoff = None;
                    let sent = self.queue.pop().expect("the front was there");
                    self.counters.pushed.fetch_add(1, Relaxed);
                    self.counters
                        .profiles_pushed
                        .fetch_add(sent.profiles, Relaxed);
                    self.counters
                        .bytes_pushed
                        .fetch_add(sent.request.len() as u64, Relaxed);
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
