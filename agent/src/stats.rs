//! The agent's account of itself, as users read it: what it sampled, what it
//! dropped and why, what it cost. The counters behind it live where they are
//! counted (`sampler::counters` for the handler's).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::config::{Engine, Unwinder};

/// A snapshot of the agent's self-report. See [`Agent::stats`](crate::Agent::stats).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The timer engine in use (never [`Engine::Auto`]: what `auto`
    /// chose); `None` when the agent is disabled (`SMOLDER_ENABLED=false`).
    pub engine: Option<Engine>,
    /// The stack-walking method.
    pub unwinder: Unwinder,
    /// Configured samples per CPU-second per thread.
    pub frequency_hz: u32,
    /// Threads currently being sampled.
    pub threads_sampled: usize,
    /// Timers currently armed (per-thread engine: one per sampled thread).
    pub timers_armed: usize,
    /// Timer signals handled.
    pub signals: u64,
    /// Samples recorded by the handler.
    pub samples: u64,
    /// Timer expirations those samples stand for (≥ `samples`: the kernel
    /// coalesces expirations when a thread's CPU timer fires faster than its
    /// tick, and reports the extra as overrun).
    pub sample_weight: u64,
    /// Samples aggregated by the collector.
    pub samples_collected: u64,
    /// Samples dropped, by reason.
    pub dropped: DroppedSamples,
    /// Stacks cut at the depth limit.
    pub stacks_truncated: u64,
    /// Stacks whose walk stopped early on an unreadable or implausible frame.
    pub stacks_incomplete: u64,
    /// SIGPROF signals from elsewhere, ignored.
    pub foreign_signals: u64,
    /// Median handler cost, nanoseconds.
    pub handler_cost_p50_ns: Option<u64>,
    /// 99th-percentile handler cost, nanoseconds.
    pub handler_cost_p99_ns: Option<u64>,
    /// Time spent in the signal handler, summed over all samples.
    pub handler_cpu: Duration,
    /// CPU time used by the collector thread.
    pub collector_cpu: Duration,
    /// CPU time used by all the agent's threads (collector, symbols, HTTP).
    pub agent_threads_cpu: Duration,
    /// CPU time used by the whole process, agent included.
    pub process_cpu: Duration,
    /// The agent's share of the process's CPU, in percent: handler time plus
    /// the agent's threads over the process total.
    pub overhead_percent: f64,
    /// Bytes held by the agent's tables, buffers and caches (the push's
    /// queued requests included).
    pub memory_bytes: u64,
    /// How far back the always-on history reaches.
    pub history_span: Duration,
    /// Time since the agent started.
    pub uptime: Duration,
    /// Span export.
    pub spans: SpanStats,
    /// Continuous profiles pushed to Pyroscope.
    pub push: PushStats,
    /// The same, to an OpenTelemetry Collector as OTLP profiles (cargo
    /// feature `otlp-profiles`).
    pub otlp_profiles: PushStats,
}

/// What became of the profiles of each interval on their way to one
/// destination: Pyroscope (`PYROSCOPE_SERVER_ADDRESS`), or an OTLP
/// collector. An interval is one push request: the
/// profile of each kind the agent keeps, over one `SMOLDER_PUSH_INTERVAL`.
/// Every interval ends up pushed, dropped or failed, or is still queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushStats {
    /// Whether a push destination is configured.
    pub enabled: bool,
    /// Intervals ended so far: each is pushed, dropped, failed, or still
    /// queued.
    pub intervals: u64,
    /// Intervals the server accepted.
    pub pushed: u64,
    /// Profiles in them (one per kind per interval).
    pub profiles_pushed: u64,
    /// Request bytes the server accepted.
    pub bytes_pushed: u64,
    /// Intervals dropped unsent, oldest first, because the queue was full
    /// (the server down or slow for longer than the queue holds), or
    /// because the agent stopped with them queued.
    pub dropped: u64,
    /// Intervals the server refused for good (a status other than 429,
    /// 502, 503, 504), or that could not be encoded.
    pub failed: u64,
    /// Requests sent again after a refusal the server meant for now, or no
    /// answer.
    pub retries: u64,
    /// Why the latest request failed, while pushing is failing (none once
    /// one goes through).
    pub last_error: Option<String>,
    /// Intervals waiting to be sent.
    pub queue_intervals: usize,
    /// Bytes of the requests waiting to be sent.
    pub queue_bytes: usize,
    /// The most intervals the queue holds: one more drops the oldest.
    pub queue_max_intervals: usize,
    /// The most request bytes the queue holds: more drop the oldest.
    pub queue_max_bytes: usize,
    /// CPU time used by the push thread (building, encoding and sending
    /// profiles, for every destination: the same figure in each);
    /// part of `agent_threads_cpu`.
    pub cpu: Duration,
}

/// The push thread's counters (one set per running agent).
#[derive(Default)]
pub(crate) struct PushCounters {
    pub(crate) intervals: AtomicU64,
    pub(crate) pushed: AtomicU64,
    pub(crate) profiles_pushed: AtomicU64,
    pub(crate) bytes_pushed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) queue_intervals: AtomicU64,
    pub(crate) queue_bytes: AtomicU64,
    /// The queue's bounds, fixed when the push starts.
    pub(crate) queue_max_intervals: usize,
    pub(crate) queue_max_bytes: usize,
    /// The push thread's kernel id, once it runs (0 before): its CPU is
    /// read from its clock.
    pub(crate) tid: std::sync::atomic::AtomicI32,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl PushStats {
    /// The push's account from its counters (`None`: not configured).
    pub(crate) fn read(
        counters: Option<&PushCounters>,
        cpu: impl FnOnce(i32) -> Option<Duration>,
    ) -> PushStats {
        let Some(c) = counters else {
            return PushStats::default();
        };
        let tid = c.tid.load(Relaxed);
        PushStats {
            enabled: true,
            intervals: c.intervals.load(Relaxed),
            pushed: c.pushed.load(Relaxed),
            profiles_pushed: c.profiles_pushed.load(Relaxed),
            bytes_pushed: c.bytes_pushed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            failed: c.failed.load(Relaxed),
            retries: c.retries.load(Relaxed),
            last_error: crate::sync::lock(&c.last_error).clone(),
            queue_intervals: c.queue_intervals.load(Relaxed) as usize,
            queue_bytes: c.queue_bytes.load(Relaxed) as usize,
            queue_max_intervals: c.queue_max_intervals,
            queue_max_bytes: c.queue_max_bytes,
            cpu: if tid == 0 {
                Duration::ZERO
            } else {
                cpu(tid).unwrap_or_default()
            },
        }
    }
}

/// What became of spans recorded by the tracing layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpanStats {
    /// Whether an OTLP endpoint is configured.
    pub exporting: bool,
    /// Spans exported successfully.
    pub exported: u64,
    /// Spans given up: in requests the collector refused for good (an HTTP
    /// status other than 429, 502, 503, 504; a gRPC code OTLP does not call
    /// retryable), or went on refusing or not answering for 30 s of retries.
    pub export_failed: u64,
    /// Export requests sent again after a refusal OTLP calls retryable (the
    /// collector throttling, restarting, unreachable or slow).
    pub export_retries: u64,
    /// Why the latest export request failed, while export is failing (none
    /// once a request goes through): what the collector answered, or why it
    /// could not be reached.
    pub export_error: Option<String>,
    /// Spans of the user's own pipeline given back with profile attributes.
    pub forwarded: u64,
    /// Spans (exported or forwarded) in which a sample may have been taken,
    /// whose profiles were looked up in the collector's tables. The others
    /// had no sample, an empty profile known when they closed.
    pub sampled: u64,
    /// Spans dropped because the export queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped because no exporter was running.
    pub dropped_no_exporter: u64,
    /// Spans whose CPU the collector tracks now.
    pub tracked: usize,
}

/// Samples lost, by cause. Every loss is counted somewhere here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedSamples {
    /// The handler-to-collector buffer was full (collector behind or stalled).
    pub buffer_full: u64,
    /// Too many handlers raced for the same buffer position.
    pub buffer_contended: u64,
    /// More handlers ran at once than there are unwind scratch areas.
    pub no_unwind_scratch: u64,
    /// The unwind tables were being replaced at that instant.
    pub tables_busy: u64,
    /// A `setitimer` signal hit a thread the agent had not registered yet.
    pub thread_unregistered: u64,
    /// The interned-stack table was full even after compaction.
    pub stack_table_full: u64,
    /// A capture's or history bucket's table of (stack, thread) counts was full.
    pub aggregate_full: u64,
}

impl DroppedSamples {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.buffer_full
            + self.buffer_contended
            + self.no_unwind_scratch
            + self.tables_busy
            + self.thread_unregistered
            + self.stack_table_full
            + self.aggregate_full
    }
}

/// What became of spans between the layer and the exporter, since the
/// process started (the queue outlives agents, so the counters do too).
pub(crate) struct SpanQueueCounters {
    /// Spans passed on to the user's own processor with their attributes.
    pub(crate) forwarded: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_no_exporter: AtomicU64,
}

pub(crate) static SPAN_QUEUE: SpanQueueCounters = SpanQueueCounters {
    forwarded: AtomicU64::new(0),
    dropped_queue_full: AtomicU64::new(0),
    dropped_no_exporter: AtomicU64::new(0),
};

/// The span exporter's counters (one set per running exporter).
#[derive(Default)]
pub(crate) struct ExportCounters {
    pub(crate) exported: AtomicU64,
    pub(crate) export_failed: AtomicU64,
    /// Requests sent again after a retryable failure.
    pub(crate) export_retries: AtomicU64,
    /// Spans whose profiles were looked up (see `SpanStats::sampled`).
    pub(crate) sampled: AtomicU64,
    /// Why the latest request failed, while export is failing; cleared when
    /// a request goes through.
    pub(crate) export_error: Mutex<Option<String>>,
}

impl SpanStats {
    /// The span pipeline's account: the queue's counters, the exporter's
    /// (`None` before it runs) and how many spans the collector tracks.
    pub(crate) fn read(
        exporting: bool,
        export: Option<&ExportCounters>,
        tracked: usize,
    ) -> SpanStats {
        let read = |f: fn(&ExportCounters) -> &AtomicU64| export.map_or(0, |c| f(c).load(Relaxed));
        SpanStats {
            exporting,
            exported: read(|c| &c.exported),
            export_failed: read(|c| &c.export_failed),
            export_retries: read(|c| &c.export_retries),
            export_error: export.and_then(|c| crate::sync::lock(&c.export_error).clone()),
            forwarded: SPAN_QUEUE.forwarded.load(Relaxed),
            sampled: read(|c| &c.sampled),
            dropped_queue_full: SPAN_QUEUE.dropped_queue_full.load(Relaxed),
            dropped_no_exporter: SPAN_QUEUE.dropped_no_exporter.load(Relaxed),
            tracked,
        }
    }
}
