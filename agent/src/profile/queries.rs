//! The running agent's query side: captures, history windows, stats.
//!
//! [`Profiler`] is shared (behind an `Arc`) by the [`Agent`](crate::Agent)
//! handle and the HTTP endpoint. It never touches the signal path; it reads
//! the collector's [`Store`] and turns what it finds into [`Profile`]s,
//! symbolised on the symbols thread.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::collect::aggregate::filter::Filter;
use crate::collect::symbolize::SymbolService;
use crate::collect::{
    CYCLE, CaptureResult, CollectorCounters, MAX_CAPTURES, RateControl, RateHold, SpanLeaves, Store,
};
use crate::config::{Config, Engine};
use crate::profile::{ProfileBuilder, ProfileKind, SpanSummary, samples_in};
use crate::sampler::clock::monotonic_now_ns;
use crate::sampler::counters::CostHistogram;
use crate::sampler::shared::SamplerShared;
use crate::stats::{DroppedSamples, ExportCounters, PushCounters, PushStats, SpanStats};
use crate::{Error, Profile, Stats};

/// How long a capture waits for the collector beyond its window.
const COLLECTOR_PATIENCE: Duration = Duration::from_secs(5);
/// How long a profile waits for symbols before falling back to
/// `module+offset` names.
const SYMBOL_PATIENCE: Duration = Duration::from_secs(60);

/// Everything needed to answer questions about the samples.
pub(crate) struct Profiler {
    pub(crate) config: Config,
    pub(crate) engine: Engine,
    pub(crate) shared: Arc<SamplerShared>,
    pub(crate) store: Arc<Store>,
    pub(crate) counters: Arc<CollectorCounters>,
    pub(crate) rate: Arc<RateControl>,
    pub(crate) symbols: SymbolService,
    /// Kernel thread ids of the agent's own threads (never sampled).
    pub(crate) own_threads: Arc<Mutex<HashSet<i32>>>,
    pub(crate) started: Instant,
    /// The span exporter's counters, once it runs.
    pub(crate) export: std::sync::OnceLock<Arc<ExportCounters>>,
    /// The profile push's counters, once it runs.
    pub(crate) push: std::sync::OnceLock<PushDestinations>,
}

/// The push's counters per destination: Pyroscope's, and the OTLP
/// collector's (each `None` when it is not one).
pub(crate) type PushDestinations = (Option<Arc<PushCounters>>, Option<Arc<PushCounters>>);

/// A capture in progress. Dropping it without [`Capture::finish`] cancels it
/// (an HTTP client that went away, say).
pub(crate) struct Capture {
    profiler: Arc<Profiler>,
    id: u64,
    start: SystemTime,
    end_ns: u64,
    duration: Duration,
    frequency_hz: u32,
    filter: Filter,
    _rate: Option<RateHold>,
    finished: bool,
}

/// Why a capture could not start.
#[derive(Debug)]
pub(crate) enum CaptureError {
    /// Another capture holds a different sampling rate.
    RateConflict { held_hz: u32 },
    /// The collector did not apply the requested rate in time.
    RateNotApplied,
    /// Too many captures are running.
    TooMany,
}

impl Profiler {
    /// Starts counting the samples of the next `duration`, at `hz` if given
    /// (held for the capture's lifetime), keeping what `filter` admits.
    pub(crate) fn begin_capture(
        self: &Arc<Self>,
        duration: Duration,
        hz: Option<u32>,
        filter: Filter,
    ) -> Result<Capture, CaptureError> {
        let rate = match hz {
            Some(hz) => {
                let hold = RateControl::hold(&self.rate, hz)
                    .map_err(|c| CaptureError::RateConflict { held_hz: c.held_hz })?;
                if !self.rate.wait_applied(hz, CYCLE * 8 + COLLECTOR_PATIENCE) {
                    return Err(CaptureError::RateNotApplied);
                }
                Some(hold)
            }
            None => None,
        };
        let start_ns = monotonic_now_ns();
        let end_ns = start_ns + duration.as_nanos() as u64;
        let id = self
            .store
            .begin_capture(start_ns, end_ns)
            .map_err(|_| CaptureError::TooMany)?;
        Ok(Capture {
            profiler: Arc::clone(self),
            id,
            start: SystemTime::now(),
            end_ns,
            duration,
            frequency_hz: hz.unwrap_or(self.config.frequency_hz),
            filter,
            _rate: rate,
            finished: false,
        })
    }

    /// Starts counting the samples of `[start_ns, end_ns)` (monotonic
    /// nanoseconds; the window may begin in the future) for the push: one
    /// of the two interval captures, which leave callers' [`MAX_CAPTURES`] alone.
    /// Samples keep their span labels, as in every capture.
    pub(crate) fn begin_interval(
        self: &Arc<Self>,
        start_ns: u64,
        end_ns: u64,
    ) -> Result<Capture, CaptureError> {
        let id = self
            .store
            .begin_interval_capture(start_ns, end_ns)
            .map_err(|_| CaptureError::TooMany)?;
        let (now_ns, now) = (monotonic_now_ns(), SystemTime::now());
        let start = if start_ns >= now_ns {
            now + Duration::from_nanos(start_ns - now_ns)
        } else {
            now - Duration::from_nanos(now_ns - start_ns)
        };
        Ok(Capture {
            profiler: Arc::clone(self),
            id,
            start,
            end_ns,
            duration: Duration::from_nanos(end_ns.saturating_sub(start_ns)),
            frequency_hz: self.config.frequency_hz,
            filter: Filter::default(),
            _rate: None,
            finished: false,
        })
    }

    /// The profile of the last `length` (ending `ago` before now) from the
    /// history, answered at once. With `Coverage::Partial`, a window reaching
    /// back before the history began gets what the history has (the profile's
    /// duration says how much); with `Coverage::Whole`, or when the window
    /// lies entirely before the history, it fails.
    pub(crate) fn window(
        &self,
        length: Duration,
        ago: Duration,
        filter: &Filter,
        coverage: Coverage,
    ) -> Result<Profile, WindowError> {
        let now = monotonic_now_ns();
        let to_ns = now.saturating_sub(ago.as_nanos() as u64);
        let from_ns = to_ns.saturating_sub(length.as_nanos() as u64);
        let reach = self.history_reach();
        let slack = self.config.history_resolution;
        let needed = match coverage {
            Coverage::Whole => ago + length,
            Coverage::Partial => ago,
        };
        if needed > reach + slack {
            return Err(WindowError::BeyondHistory { reach });
        }
        let (result, start_ns, end_ns) = self.store.window(from_ns, to_ns, filter);
        let start = SystemTime::now() - Duration::from_nanos(now.saturating_sub(start_ns));
        let covered = Duration::from_nanos(end_ns.saturating_sub(start_ns));
        Ok(self.build(result, start, covered, self.config.frequency_hz))
    }

    /// The profile of one span and everything inside it, while the collector
    /// still tracks it.
    /// `trace_id`, if given, must be the span's trace.
    pub(crate) fn span_profile(
        &self,
        span_id: u64,
        trace_id: Option<u128>,
        filter: &Filter,
    ) -> Option<Profile> {
        let span = self.store.span(span_id, filter)?;
        if trace_id.is_some_and(|t| t != span.trace_id) {
            return None;
        }
        Some(self.build_untimed(span.samples))
    }

    /// A profile without samples.
    pub(crate) fn empty_profile(&self) -> Profile {
        self.cpu_builder(SystemTime::now(), Duration::ZERO, self.config.frequency_hz)
            .finish()
    }

    /// Every sample of one trace in this process.
    pub(crate) fn trace_profile(&self, trace_id: u128, filter: &Filter) -> Option<Profile> {
        let samples = self.store.trace(trace_id, filter)?;
        Some(self.build_untimed(samples))
    }

    /// A span or trace profile spans no fixed window: its duration is the CPU
    /// it holds, its start now.
    fn build_untimed(&self, samples: CaptureResult) -> Profile {
        let cpu: u64 = samples.stacks.iter().map(|(_, _, cpu)| cpu).sum();
        self.build(
            samples,
            SystemTime::now(),
            Duration::from_nanos(cpu),
            self.config.frequency_hz,
        )
    }

    /// Spans' CPU, in the numbers exported spans carry, in the order of
    /// `span_ids`. A span with no samples (it slept, or waited) gets zeros.
    ///
    /// One lock of the store and one symboliser round trip for the whole
    /// batch: the span thread summarises thousands of spans a second, and a
    /// round trip per span would cost two context switches each.
    ///
    /// `span_leaves` is scratch space and `summaries` receives the result:
    /// both are the caller's, to be reused from call to call.
    pub(crate) fn span_summaries(
        &self,
        span_ids: &[u64],
        span_leaves: &mut Vec<Option<SpanLeaves>>,
        summaries: &mut Vec<SpanSummary>,
    ) {
        let modules = self.store.span_leaves(span_ids, span_leaves);
        let spans = &*span_leaves;
        let mut leaves: Vec<u64> = spans
            .iter()
            .flatten()
            .flat_map(|s| s.by_leaf.iter().map(|&(leaf, _)| leaf))
            .collect();
        leaves.sort_unstable();
        leaves.dedup();
        // Most batches at everyday rates: no span ran long enough for a sample.
        let resolved = if leaves.is_empty() {
            Vec::new()
        } else {
            self.symbols
                .resolve(&modules, leaves.clone(), SYMBOL_PATIENCE)
        };
        let function_of: HashMap<u64, &Arc<str>> = leaves
            .iter()
            .zip(&resolved)
            .filter_map(|(&leaf, resolved)| Some((leaf, &resolved.frames.first()?.function)))
            .collect();
        let period_ns = crate::config::period_ns(self.config.frequency_hz);
        let samples_in = |cpu_ns| samples_in(cpu_ns, period_ns);
        summaries.clear();
        summaries.extend(spans.iter().map(|span| {
            let Some(span) = span else {
                return SpanSummary::default();
            };
            // CPU by the innermost function at each leaf address.
            let mut by_function: HashMap<&Arc<str>, u64> = HashMap::new();
            for (leaf, cpu_ns) in &span.by_leaf {
                if let Some(function) = function_of.get(leaf) {
                    *by_function.entry(function).or_default() += cpu_ns;
                }
            }
            let mut top: Vec<(&Arc<str>, u64)> = by_function.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            let total = span.total_cpu_ns.max(1) as f64;
            SpanSummary {
                samples: samples_in(span.total_cpu_ns),
                self_samples: samples_in(span.self_cpu_ns),
                cpu_ns: span.total_cpu_ns,
                top_functions: top
                    .into_iter()
                    .take(5)
                    .map(|(function, cpu)| (function.to_string(), 100.0 * cpu as f64 / total))
                    .collect(),
            }
        }));
    }

    /// How far back the history reaches now.
    pub(crate) fn history_reach(&self) -> Duration {
        let oldest = self.store.lock().history.oldest_ns();
        Duration::from_nanos(monotonic_now_ns().saturating_sub(oldest))
    }

    /// A builder for a CPU profile sampled at `frequency_hz`.
    fn cpu_builder(
        &self,
        start: SystemTime,
        duration: Duration,
        frequency_hz: u32,
    ) -> ProfileBuilder {
        let period = crate::config::period_ns(frequency_hz);
        ProfileBuilder::new(ProfileKind::Cpu, start, duration, frequency_hz, period)
    }

    /// Symbolises a capture's or window's stacks into a profile.
    fn build(
        &self,
        result: CaptureResult,
        start: SystemTime,
        duration: Duration,
        frequency_hz: u32,
    ) -> Profile {
        let mut addresses: Vec<u64> = result
            .stacks
            .iter()
            .flat_map(|(f, _, _)| f.iter().copied())
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        let resolved = self
            .symbols
            .resolve(&result.modules, addresses.clone(), SYMBOL_PATIENCE);
        let mut builder = self.cpu_builder(start, duration, frequency_hz);
        let mut location_of = HashMap::with_capacity(addresses.len());
        for (address, resolved) in addresses.iter().zip(&resolved) {
            location_of.insert(*address, builder.location(*address, resolved));
        }
        for (frames, thread, cpu_ns) in &result.stacks {
            let locations = frames.iter().map(|a| location_of[a]).collect();
            let span = thread.span;
            builder.sample(
                locations,
                thread.tid,
                &thread.name,
                span,
                Vec::new(),
                [*cpu_ns, 0, 0, 0],
            );
        }
        builder.finish()
    }

    pub(crate) fn stats(&self) -> Stats {
        let h = &self.shared.counters;
        let c = &self.counters;
        let (mut samples, mut weight, mut truncated, mut incomplete, mut handler_ns) =
            (0, 0, 0, 0, 0);
        let mut costs = CostHistogram::empty_totals();
        for owned in self.shared.scratch.counters() {
            samples += owned.samples.get();
            weight += owned.weight.get();
            truncated += owned.truncated.get();
            incomplete += owned.incomplete.get();
            handler_ns += owned.handler_ns.get();
            owned.cost_ns.add_to(&mut costs);
        }
        let dropped = DroppedSamples {
            buffer_full: h.dropped_buffer_full.get(),
            buffer_contended: h.dropped_buffer_contended.get(),
            no_unwind_scratch: h.dropped_no_scratch.get(),
            tables_busy: h.dropped_tables_busy.get(),
            thread_unregistered: h.dropped_thread_unregistered.get(),
            stack_table_full: c.dropped_stack_table_full.load(Relaxed),
            aggregate_full: c.dropped_aggregate_full.load(Relaxed),
        };
        let dropped_in_handler = dropped.buffer_full
            + dropped.buffer_contended
            + dropped.no_unwind_scratch
            + dropped.tables_busy
            + dropped.thread_unregistered;
        let agent_threads_cpu = self.agent_threads_cpu();
        let process_cpu = crate::sampler::clock::process_cpu();
        let overhead = agent_threads_cpu + Duration::from_nanos(handler_ns);
        let memory = self.shared.buffer.memory_bytes()
            + self.shared.scratch.memory_bytes()
            + c.unwind_data_bytes.load(Relaxed) as usize
            + c.table_bytes.load(Relaxed) as usize
            + crate::sampler::registry::registry().memory_bytes()
            + self.push_queue_bytes();
        Stats {
            engine: Some(self.engine),
            unwinder: self.config.unwinder,
            frequency_hz: self.rate.applied_hz(),
            threads_sampled: c.threads_sampled.load(Relaxed),
            timers_armed: c.timers_armed.load(Relaxed),
            signals: samples + dropped_in_handler,
            samples,
            sample_weight: weight,
            samples_collected: c.samples_collected.load(Relaxed),
            dropped,
            stacks_truncated: truncated,
            stacks_incomplete: incomplete,
            foreign_signals: h.foreign_signals.get(),
            handler_cost_p50_ns: CostHistogram::quantile(&costs, 0.50),
            handler_cost_p99_ns: CostHistogram::quantile(&costs, 0.99),
            handler_cpu: Duration::from_nanos(handler_ns),
            collector_cpu: Duration::from_nanos(c.cpu_ns.load(Relaxed)),
            agent_threads_cpu,
            process_cpu,
            overhead_percent: if process_cpu.is_zero() {
                0.0
            } else {
                100.0 * overhead.as_secs_f64() / process_cpu.as_secs_f64()
            },
            memory_bytes: memory as u64,
            history_span: self.history_reach(),
            uptime: self.started.elapsed(),
            spans: self.span_stats(),
            push: PushStats::read(
                self.push.get().and_then(|(c, _)| c.as_deref()),
                crate::sampler::clock::thread_cpu,
            ),
            otlp_profiles: PushStats::read(
                self.push.get().and_then(|(_, c)| c.as_deref()),
                crate::sampler::clock::thread_cpu,
            ),
        }
    }

    fn span_stats(&self) -> SpanStats {
        let tracked = self.store.lock().spans.len();
        SpanStats::read(
            self.config.otlp.is_some(),
            self.export.get().map(|c| &**c),
            tracked,
        )
    }

    pub(crate) fn set_export_counters(&self, counters: Arc<ExportCounters>) {
        let _ = self.export.set(counters);
    }

    /// Bytes of the push's queued requests, over its destinations.
    fn push_queue_bytes(&self) -> usize {
        self.push.get().map_or(0, |(pyroscope, otlp)| {
            [pyroscope, otlp]
                .into_iter()
                .flatten()
                .map(|c| c.queue_bytes.load(Relaxed) as usize)
                .sum()
        })
    }

    pub(crate) fn set_push_counters(
        &self,
        pyroscope: Option<Arc<PushCounters>>,
        otlp: Option<Arc<PushCounters>>,
    ) {
        let _ = self.push.set((pyroscope, otlp));
    }

    /// CPU used by the agent's own threads.
    fn agent_threads_cpu(&self) -> Duration {
        let own = crate::sync::lock(&self.own_threads);
        own.iter()
            .filter_map(|&tid| crate::sampler::clock::thread_cpu(tid))
            .sum()
    }
}

/// How much of a history window must exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coverage {
    /// All of it (the base of a comparison).
    Whole,
    /// Some of it: a young agent answers "the last hour" with what it has.
    Partial,
}

/// Why a history window could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowError {
    /// The history does not reach back that far (yet, or any more).
    BeyondHistory { reach: Duration },
}

impl Capture {
    /// When the capture's window closes.
    pub(crate) fn remaining(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(monotonic_now_ns()))
    }

    /// Waits for the window to close and the collector to drain it, then
    /// builds the profile. Blocks for up to the window's remaining length
    /// plus a few collector cycles.
    pub(crate) fn finish(mut self) -> Result<Profile, Error> {
        std::thread::sleep(self.remaining());
        let patience = CYCLE * 4 + COLLECTOR_PATIENCE;
        if !self.profiler.store.wait_drained(self.end_ns, patience) {
            return Err(Error::CollectorUnresponsive {
                waited_ms: patience.as_millis() as u64,
            });
        }
        self.finished = true;
        let result = self
            .profiler
            .store
            .finish_capture(self.id, &self.filter)
            .ok_or(Error::CollectorUnresponsive { waited_ms: 0 })?;
        Ok(self
            .profiler
            .build(result, self.start, self.duration, self.frequency_hz))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.finished {
            self.profiler.store.cancel_capture(self.id);
        }
    }
}

impl CaptureError {
    pub(crate) fn into_error(self) -> Error {
        match self {
            CaptureError::TooMany => Error::TooManyCaptures {
                limit: MAX_CAPTURES,
            },
            CaptureError::RateConflict { held_hz } => Error::RateConflict { held_hz },
            CaptureError::RateNotApplied => Error::CollectorUnresponsive {
                waited_ms: (CYCLE * 8 + COLLECTOR_PATIENCE).as_millis() as u64,
            },
        }
    }
}
