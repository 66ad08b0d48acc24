//! The agent handle: start-up, captures, stats, and an orderly stop.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::config::{AgentBuilder, Config, ProcessEnv};
use crate::sampler;
use crate::{Error, Profile, Stats};

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

    fn start_with(config: Config) -> Result<Agent, Error> {
        if !config.enabled {
            return Ok(Agent { running: None });
        }
        running::prepare_for_fork();
        if !sampler::claim_process() {
            return Err(Error::AlreadyRunning);
        }
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        match running::Running::start(config, generation) {
            Ok(running) => Ok(Agent {
                running: Some(running),
            }),
            Err(error) => {
                sampler::release_process();
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

    /// Where the HTTP endpoint listens (the actual port when port 0 was
    /// asked for), or `None` if it is off.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().and_then(|r| r.http_addr())
    }

    /// Sends this thread one sampling signal exactly as its timer would, and
    /// returns once the handler has run. For benchmarks that measure the
    /// per-sample cost (cargo feature `bench-internals`); not part of the
    /// supported API.
    #[cfg(feature = "bench-internals")]
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
            None => Stats::default(),
        }
    }
}

impl AgentBuilder {
    /// Starts the agent with these settings. See [`crate::start`].
    pub fn start(self) -> Result<Agent, Error> {
        let config = self.resolve(&ProcessEnv)?;
        Agent::start_with(config)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(running) = self.running.take()
            && running.stop()
        {
            sampler::release_process();
        }
    }
}

#[cfg(smolder_sampling)]
mod running {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use crate::collect::aggregate::filter::Filter;
    use crate::collect::aggregate::history::HistoryLimits;
    use crate::collect::symbolize::{ModuleMap, SymbolService};
    use crate::collect::{Collector, CollectorCounters, RateControl, Store};
    use crate::config::Config;
    use crate::profile::queries::Profiler;
    use crate::sampler::buffer::SampleBuffer;
    use crate::sampler::counters::HandlerCounters;
    use crate::sampler::shared::{self, SamplerShared};
    use crate::sampler::signal;
    use crate::sampler::timer;
    use crate::sampler::unwind::modules;
    use crate::sampler::unwind::published::Published;
    use crate::sampler::unwind::regions::StackRegions;
    use crate::sampler::unwind::{ScratchPool, UnwindTables};
    use crate::transport::http::HttpServer;
    use crate::transport::otlp::SpanWorker;
    use crate::transport::push::PushWorker;
    use crate::{Error, Profile, Stats};

    /// The base of flame graph links in exported spans: the configured public
    /// URL, else the endpoint's address (the host name if it listens on all
    /// interfaces); none without an endpoint.
    fn flamegraph_base(
        settings: &crate::config::HttpSettings,
        http: Option<&HttpServer>,
    ) -> Option<String> {
        if let Some(url) = &settings.public_url {
            return Some(url.clone());
        }
        let addr = http?.local_addr();
        if addr.ip().is_unspecified() {
            let mut name = [0u8; 256];
            // SAFETY: the buffer is writable for its length.
            let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            if ok && end > 0 {
                return Some(format!(
                    "http://{}:{}",
                    String::from_utf8_lossy(&name[..end]),
                    addr.port()
                ));
            }
        }
        Some(format!("http://{addr}"))
    }

    /// Registers, once per process, what a forked child must forget: the
    /// parent's agent runs in the parent (its threads and timers are not
    /// copied), so the child starts with no agent and may start its own.
    pub(super) fn prepare_for_fork() {
        static REGISTERED: std::sync::Once = std::sync::Once::new();
        REGISTERED.call_once(|| {
            // SAFETY: registers a child hook that only does atomic stores,
            // which is what may run in a child of a multithreaded process.
            unsafe { libc::pthread_atfork(None, None, Some(forget_agent_in_child)) };
        });
    }

    extern "C" fn forget_agent_in_child() {
        shared::reset_after_fork();
        crate::transport::http::close_listener_after_fork();
        crate::sampler::registry::reset_registry_after_fork();
        crate::sampler::release_process();
    }

    /// Hands the memory the agent just freed back to the system. glibc keeps
    /// freed memory in its arenas (one per thread that allocated), so an
    /// application that starts and stops agents would otherwise see its
    /// resident size ratchet up with each agent it ever ran.
    fn release_freed_memory() {
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases memory malloc does not use.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// How long a stopping agent waits for handlers still running.
    const HANDLER_DRAIN_PATIENCE: Duration = Duration::from_secs(2);

    pub(super) struct Running {
        profiler: Arc<Profiler>,
        http: Option<HttpServer>,
        spans: Option<SpanWorker>,
        push: Option<PushWorker>,
        stop: Arc<AtomicBool>,
        collector: Option<JoinHandle<()>>,
        pid: u32,
    }

    /// Undoes a partial start: the handler is detached and `SIGPROF` left
    /// ignored, so nothing armed so far can reach freed state.
    struct StartGuard {
        armed: bool,
    }

    impl Drop for StartGuard {
        fn drop(&mut self) {
            if self.armed {
                shared::deactivate(HANDLER_DRAIN_PATIENCE);
                signal::retire();
                crate::sampler::registry::registry().clear();
            }
        }
    }

    impl Running {
        pub(super) fn start(config: Config, generation: u16) -> Result<Running, Error> {
            let loaded = modules::enumerate(&[]);
            let regions = StackRegions::read().map_err(|source| Error::Os {
                operation: "reading /proc/self/maps",
                source,
            })?;
            let scratch_entries = std::thread::available_parallelism()
                .map_or(4, |n| n.get() * 2)
                .clamp(4, 64);
            // Decide the engine before anything is armed: the handler must
            // know whether kernel-sent (setitimer) signals are ours.
            let engine_kind = timer::resolve(config.engine)?;
            let agent = generation as u8;
            let shared = Arc::new(SamplerShared {
                agent,
                accept_itimer_signals: engine_kind == crate::Engine::Setitimer,
                itimer_rate_epoch: AtomicUsize::new(0),
                method: config.unwinder,
                buffer: SampleBuffer::new(config.buffer_records, config.max_depth).map_err(
                    |source| Error::Os {
                        operation: "mapping the sample buffer",
                        source,
                    },
                )?,
                tables: Published::new(Box::new(UnwindTables::new(&loaded, regions))),
                scratch: ScratchPool::new(scratch_entries).map_err(|source| Error::Os {
                    operation: "mapping unwind scratch stacks",
                    source,
                })?,
                registry: crate::sampler::registry::registry(),
                counters: HandlerCounters::default(),
            });
            let period_ns = crate::config::period_ns(config.frequency_hz);
            let store = Arc::new(Store::new(
                config.stack_table_capacity,
                Arc::new(ModuleMap::default().updated(&loaded)),
                HistoryLimits {
                    resolution_ns: config.history_resolution.as_nanos() as u64,
                    span_ns: config.history_span.as_nanos() as u64,
                    max_bytes: config.history_bytes,
                },
                period_ns,
            ));
            let counters = Arc::new(CollectorCounters::default());
            let rate = Arc::new(RateControl::new(config.frequency_hz));
            let own_threads = Arc::new(Mutex::new(HashSet::new()));
            let symbols =
                SymbolService::spawn(Arc::clone(&own_threads)).map_err(|source| Error::Os {
                    operation: "spawning the symbolisation thread",
                    source,
                })?;

            signal::install()?;
            let mut guard = StartGuard { armed: true };
            shared::activate(&shared);
            let engine = timer::start(engine_kind, period_ns, agent)?;
            let mut collector = Collector::new(
                Arc::clone(&shared),
                Arc::clone(&store),
                Arc::clone(&counters),
                Arc::clone(&rate),
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
                    .map_err(|source| Error::Os {
                        operation: "spawning the collector thread",
                        source,
                    })?
            };
            let profiler = Arc::new(Profiler {
                config,
                engine: engine_kind,
                shared,
                store,
                counters,
                rate,
                symbols,
                own_threads: Arc::clone(&own_threads),
                started: Instant::now(),
                export: std::sync::OnceLock::new(),
                push: std::sync::OnceLock::new(),
            });
            let started = HttpServer::start(
                Arc::clone(&profiler),
                &profiler.config.http,
                &profiler.config.service_name,
                Arc::clone(&own_threads),
            )
            .and_then(|http| {
                let base = flamegraph_base(&profiler.config.http, http.as_ref());
                let spans = SpanWorker::start(
                    Arc::clone(&profiler),
                    profiler.config.otlp.clone(),
                    base,
                    Arc::clone(&own_threads),
                )?;
                let push =
                    PushWorker::start(Arc::clone(&profiler), &profiler.config.push, own_threads)?;
                Ok((http, spans, push))
            });
            let (http, spans, push) = match started {
                Ok(parts) => parts,
                Err(error) => {
                    stop.store(true, Relaxed);
                    collector.thread().unpark();
                    let _ = collector.join();
                    return Err(error);
                }
            };
            profiler.set_export_counters(Arc::clone(&spans.counters));
            if let Some(push) = &push {
                profiler.set_push_counters(push.pyroscope.clone(), push.otlp.clone());
            }
            guard.armed = false;
            Ok(Running {
                profiler,
                http,
                spans: Some(spans),
                push,
                stop,
                collector: Some(collector),
                // SAFETY: getpid has no preconditions.
                pid: unsafe { libc::getpid() } as u32,
            })
        }

        pub(super) fn record(&self, duration: Duration) -> Result<Profile, Error> {
            self.profiler
                .begin_capture(duration, None, Filter::default())
                .map_err(|e| e.into_error())?
                .finish()
        }

        pub(super) fn stats(&self) -> Stats {
            self.profiler.stats()
        }

        pub(super) fn http_addr(&self) -> Option<std::net::SocketAddr> {
            self.http.as_ref().map(HttpServer::local_addr)
        }

        #[cfg(feature = "bench-internals")]
        pub(super) fn sample_current_thread(&self) -> bool {
            let tid = crate::sampler::threads::current_tid();
            // SAFETY: all-zero is a valid siginfo; the fields set below are
            // the ones a timer signal carries.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            info.si_signo = libc::SIGPROF;
            info.si_code = libc::SI_TIMER;
            let cookie = crate::sampler::cookie::encode(self.profiler.shared.agent, 0, tid);
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
            drop(self.push.take());
            drop(self.spans.take());
            drop(self.http.take());
            self.stop.store(true, Relaxed);
            if let Some(collector) = self.collector.take() {
                collector.thread().unpark();
                let _ = collector.join();
            }
            if !shared::deactivate(HANDLER_DRAIN_PATIENCE) {
                // A handler never left (its thread is stopped in a debugger?):
                // leak the state it may still read rather than free it.
                std::mem::forget(Arc::clone(&self.profiler.shared));
            }
            signal::retire();
            crate::sampler::registry::registry().clear();
            drop(self.profiler);
            release_freed_memory();
            true
        }
    }
}

#[cfg(not(smolder_sampling))]
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

        #[cfg(feature = "bench-internals")]
        pub(super) fn sample_current_thread(&self) -> bool {
            match *self {}
        }

        pub(super) fn http_addr(&self) -> Option<std::net::SocketAddr> {
            match *self {}
        }
    }

    pub(super) fn prepare_for_fork() {}

    impl Running {
        pub(super) fn stop(self) -> bool {
            match self {}
        }
    }
}

#[cfg(not(smolder_sampling))]
#[cfg(test)]
mod tests {
    #[test]
    fn start_reports_an_unsupported_platform() {
        let error = crate::start().unwrap_err();
        assert!(
            matches!(error, crate::Error::UnsupportedPlatform { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("Linux on x86_64 and aarch64"));
    }
}
