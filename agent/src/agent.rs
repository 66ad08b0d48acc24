//! The agent handle: start-up, captures, stats, and an orderly stop.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use crate::config::{AgentBuilder, Config};
use crate::{Error, Profile, Stats};

/// Only one agent may run per process: signal dispositions and CPU timers
/// are process-wide.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Distinguishes successive agents in one process, so a late signal from an
/// old agent's timer is never taken for the new one's.
static GENERATION: AtomicU16 = AtomicU16::new(0);

/// A running profiling agent. Dropping it stops sampling.
///
/// Created by [`crate::start`] or [`Agent::builder`].
#[must_use = "dropping the agent stops profiling"]
pub struct Agent {
    running: Option<running::Running>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("enabled", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A builder for an agent with non-default settings.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    pub(crate) fn start_with(config: Config) -> Result<Agent, Error> {
        if !config.enabled {
            return Ok(Agent { running: None });
        }
        if RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::AlreadyRunning);
        }
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        match running::Running::start(config, generation) {
            Ok(running) => Ok(Agent {
                running: Some(running),
            }),
            Err(error) => {
                RUNNING.store(false, Ordering::Release);
                Err(error)
            }
        }
    }

    /// Whether this agent samples (false after `SMOLDER_ENABLED=false`).
    pub fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    /// Records the next `duration` of samples and returns them as a profile.
    ///
    /// Blocks the calling thread for `duration` (plus a collector cycle);
    /// sampling of every thread goes on meanwhile. Several captures may run
    /// at once; each sees every sample of its own window.
    pub fn record(&self, duration: Duration) -> Result<Profile, Error> {
        self.running
            .as_ref()
            .ok_or(Error::Disabled)?
            .record(duration)
    }

    /// Sends this thread one sampling signal exactly as its timer would, and
    /// returns once the handler has run. For benchmarks that measure the
    /// per-sample cost; not part of the supported API.
    #[doc(hidden)]
    pub fn __sample_current_thread(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.sample_current_thread())
    }

    /// The agent's account of itself: engine, samples, drops by reason,
    /// handler cost, memory.
    pub fn stats(&self) -> Stats {
        match &self.running {
            Some(running) => running.stats(),
            None => Stats {
                engine: "disabled",
                ..Stats::default()
            },
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            if running.stop() {
                RUNNING.store(false, Ordering::Release);
            }
        }
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod running {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant, SystemTime};

    use crate::buffer::SampleBuffer;
    use crate::collector::{CYCLE, Collector, CollectorCounters, Store};
    use crate::config::Config;
    use crate::handler::{self, COOKIE_TAG_HIGH, SamplerShared, monotonic_now_ns};
    use crate::profile::ProfileBuilder;
    use crate::stats::{CostHistogram, DroppedSamples, HandlerCounters};
    use crate::symbolize::{ModuleMap, SymbolService};
    use crate::timer::{self, signal};
    use crate::unwind::modules;
    use crate::unwind::published::Published;
    use crate::unwind::regions::StackRegions;
    use crate::unwind::{ScratchPool, UnwindTables};
    use crate::{Error, Profile, Stats, threads};

    /// How long a stopping agent waits for handlers still running.
    const HANDLER_DRAIN_PATIENCE: Duration = Duration::from_secs(2);
    /// How long a capture waits for the collector beyond its window.
    const COLLECTOR_PATIENCE: Duration = Duration::from_secs(5);
    /// How long a capture waits for symbols before falling back to
    /// `module+offset` names.
    const SYMBOL_PATIENCE: Duration = Duration::from_secs(60);

    pub(super) struct Running {
        config: Config,
        engine: &'static str,
        shared: Arc<SamplerShared>,
        store: Arc<Store>,
        counters: Arc<CollectorCounters>,
        stop: Arc<AtomicBool>,
        collector: Option<JoinHandle<()>>,
        symbols: SymbolService,
        started: Instant,
        pid: u32,
    }

    impl Running {
        pub(super) fn start(config: Config, generation: u16) -> Result<Running, Error> {
            let registry = threads::registry();
            let loaded = modules::enumerate(&[]);
            let regions = StackRegions::read().map_err(|source| Error::Os {
                operation: "reading /proc/self/maps",
                source,
            })?;
            let cookie_tag = COOKIE_TAG_HIGH | u64::from(generation);
            let scratch_entries = std::thread::available_parallelism()
                .map_or(4, |n| n.get() * 2)
                .clamp(4, 64);
            // Decide the engine before anything is armed: the handler must
            // know whether kernel-sent (setitimer) signals are ours.
            let engine_kind = timer::resolve(config.engine)?;
            let shared = Arc::new(SamplerShared {
                cookie_tag,
                accept_itimer_signals: engine_kind == crate::Engine::Setitimer,
                method: config.unwinder,
                buffer: SampleBuffer::new(config.buffer_records, config.max_depth),
                tables: Published::new(Box::new(UnwindTables::new(&loaded, regions))),
                scratch: ScratchPool::new(scratch_entries).map_err(|source| Error::Os {
                    operation: "mapping unwind scratch stacks",
                    source,
                })?,
                registry,
                counters: HandlerCounters::default(),
            });
            let store = Arc::new(Store::new(
                config.stack_table_capacity,
                Arc::new(ModuleMap::default().updated(&loaded)),
            ));
            let counters = Arc::new(CollectorCounters::default());
            let own_threads = Arc::new(Mutex::new(HashSet::new()));
            let symbols = SymbolService::spawn().map_err(|source| Error::Os {
                operation: "spawning the symbolisation thread",
                source,
            })?;

            signal::install()?;
            handler::activate(&shared);
            let engine = match timer::start(engine_kind, config.frequency_hz, cookie_tag) {
                Ok(engine) => engine,
                Err(error) => {
                    handler::deactivate(HANDLER_DRAIN_PATIENCE);
                    signal::retire();
                    return Err(error);
                }
            };
            let engine_name = engine.kind().as_str();
            let mut collector = Collector::new(
                Arc::clone(&shared),
                Arc::clone(&store),
                Arc::clone(&counters),
                engine,
                loaded,
                Arc::clone(&own_threads),
            );
            // The first scan runs here so that `start` returns with every
            // existing thread already sampled.
            collector.scan();
            let stop = Arc::new(AtomicBool::new(false));
            let collector = {
                let stop = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name("smolder-collector".into())
                    .stack_size(256 * 1024)
                    .spawn(move || collector.run(&stop))
            };
            let collector = match collector {
                Ok(handle) => handle,
                Err(source) => {
                    handler::deactivate(HANDLER_DRAIN_PATIENCE);
                    signal::retire();
                    return Err(Error::Os {
                        operation: "spawning the collector thread",
                        source,
                    });
                }
            };
            Ok(Running {
                config,
                engine: engine_name,
                shared,
                store,
                counters,
                stop,
                collector: Some(collector),
                symbols,
                started: Instant::now(),
                // SAFETY: getpid has no preconditions.
                pid: unsafe { libc::getpid() } as u32,
            })
        }

        pub(super) fn record(&self, duration: Duration) -> Result<Profile, Error> {
            let wall_start = SystemTime::now();
            let start_ns = monotonic_now_ns();
            let end_ns = start_ns + duration.as_nanos() as u64;
            let id =
                self.store
                    .begin_capture(start_ns, end_ns)
                    .map_err(|_| Error::TooManyCaptures {
                        limit: crate::collector::MAX_CAPTURES,
                    })?;
            std::thread::sleep(duration);
            if !self
                .store
                .wait_drained(end_ns, CYCLE * 4 + COLLECTOR_PATIENCE)
            {
                self.store.cancel_capture(id);
                return Err(Error::CollectorUnresponsive {
                    waited_ms: (CYCLE * 4 + COLLECTOR_PATIENCE).as_millis() as u64,
                });
            }
            let result = self
                .store
                .finish_capture(id)
                .ok_or(Error::CollectorUnresponsive { waited_ms: 0 })?;
            Ok(self.symbolize(result, wall_start, duration))
        }

        fn symbolize(
            &self,
            result: crate::collector::CaptureResult,
            start: SystemTime,
            duration: Duration,
        ) -> Profile {
            let mut addresses: Vec<u64> = result
                .stacks
                .iter()
                .flat_map(|(f, _, _)| f.iter().copied())
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            let resolved =
                self.symbols
                    .resolve(&result.modules, addresses.clone(), SYMBOL_PATIENCE);
            let mut builder = ProfileBuilder::new(start, duration, self.config.frequency_hz);
            let mut location_of = std::collections::HashMap::with_capacity(addresses.len());
            for (address, resolved) in addresses.iter().zip(&resolved) {
                location_of.insert(*address, builder.location(*address, resolved));
            }
            for (frames, thread, weight) in &result.stacks {
                let locations = frames.iter().map(|a| location_of[a]).collect();
                builder.sample(locations, thread.tid, &thread.name, *weight);
            }
            builder.finish()
        }

        pub(super) fn sample_current_thread(&self) -> bool {
            let tid = threads::current_tid();
            // SAFETY: all-zero is a valid siginfo; the fields set below are
            // the ones a timer signal carries.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            info.si_signo = libc::SIGPROF;
            info.si_code = libc::SI_TIMER;
            let cookie = self.shared.cookie_tag << 32 | u64::from(tid as u32);
            // The timer union's sigval sits at the same offset as `_rt`'s:
            // after two ints (tid/overrun or pid/uid), at byte 24 on LP64.
            // SAFETY: writing within the siginfo we own.
            unsafe {
                let base = (&raw mut info).cast::<u8>();
                base.add(24).cast::<u64>().write_unaligned(cookie);
            }
            // SAFETY: rt_tgsigqueueinfo to our own thread with a siginfo we
            // built; the kernel allows any si_code for signals to oneself.
            let status = unsafe {
                libc::syscall(
                    libc::SYS_rt_tgsigqueueinfo,
                    libc::getpid(),
                    tid,
                    libc::SIGPROF,
                    &raw mut info,
                )
            };
            status == 0
        }

        pub(super) fn stats(&self) -> Stats {
            let h = &self.shared.counters;
            let c = &self.counters;
            let (mut samples, mut weight, mut truncated, mut incomplete) = (0, 0, 0, 0);
            let mut costs = CostHistogram::empty_totals();
            for owned in self.shared.scratch.counters() {
                samples += owned.samples.get();
                weight += owned.weight.get();
                truncated += owned.truncated.get();
                incomplete += owned.incomplete.get();
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
            let memory = self.shared.buffer.memory_bytes()
                + self.shared.scratch.memory_bytes()
                + c.unwind_data_bytes.load(Relaxed) as usize
                + c.table_bytes.load(Relaxed) as usize
                + threads::MAX_THREADS * 4;
            Stats {
                engine: self.engine,
                unwinder: self.config.unwinder.as_str(),
                frequency_hz: self.config.frequency_hz,
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
                collector_cpu: Duration::from_nanos(c.cpu_ns.load(Relaxed)),
                memory_bytes: memory as u64,
                uptime: self.started.elapsed(),
            }
        }

        /// Stops sampling and frees everything. Returns false if the process
        /// forked since start (this is a child's copy: the threads and timers
        /// it describes belong to the parent), in which case nothing is
        /// touched.
        pub(super) fn stop(mut self) -> bool {
            // SAFETY: getpid has no preconditions.
            if unsafe { libc::getpid() } as u32 != self.pid {
                std::mem::forget(self);
                return false;
            }
            self.stop.store(true, Relaxed);
            if let Some(collector) = self.collector.take() {
                collector.thread().unpark();
                let _ = collector.join();
            }
            if !handler::deactivate(HANDLER_DRAIN_PATIENCE) {
                // A handler never left (its thread is stopped in a debugger?):
                // leak the state it may still read rather than free it.
                std::mem::forget(Arc::clone(&self.shared));
            }
            signal::retire();
            threads::registry().clear();
            true
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod running {
    use std::time::Duration;

    use crate::config::Config;
    use crate::{Error, Profile, Stats};

    /// Never constructed: `start` fails on unsupported platforms.
    pub(super) enum Running {}

    impl Running {
        pub(super) fn start(_config: Config, _generation: u16) -> Result<Running, Error> {
            Err(Error::UnsupportedPlatform {
                os: std::env::consts::OS,
                arch: std::env::consts::ARCH,
            })
        }

        pub(super) fn record(&self, _duration: Duration) -> Result<Profile, Error> {
            match *self {}
        }

        pub(super) fn stats(&self) -> Stats {
            match *self {}
        }

        pub(super) fn sample_current_thread(&self) -> bool {
            match *self {}
        }

        pub(super) fn stop(self) -> bool {
            match self {}
        }
    }
}
