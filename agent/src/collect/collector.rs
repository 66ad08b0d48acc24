//! The collector thread's loop.
//!
//! Every cycle (25 to 100 ms, see [`Pace`]) it
//! 1. drains the sample buffer, interning each stack and thread and offering
//!    the observation to the history and to every active capture; rolls the
//!    history's time buckets; applies a requested change of sampling rate;
//! 2. lists the process's threads (when their count changed, and every
//!    100 ms regardless): new ones are registered, their names read
//!    and (once the stack-region table includes them) their timers armed;
//!    exited ones are unregistered and their timers deleted;
//! 3. checks the loader's counters and, when a library was loaded or
//!    unloaded or new thread stacks appeared, rebuilds the unwind tables and
//!    publishes them to the handler.
//!
//! Draining comes before scanning so that a thread's last samples are named
//! before the thread is forgotten.
//!
//! Readers (`record`, later the HTTP endpoint) share the aggregation state
//! through [`Store`]; they lock it briefly to register a capture or copy its
//! results out. The handler never touches it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ingest::ingest;
use super::pace::{Pace, online_cpus};
use super::{CYCLE, MAX_CYCLE, RateControl, Store, tasks};
use crate::sampler::clock::monotonic_now_ns;
use crate::sampler::shared::SamplerShared;
use crate::sampler::threads;
use crate::sampler::timer::TimerEngine;
use crate::sampler::unwind::UnwindTables;
use crate::sampler::unwind::modules::{self, LoadGeneration, LoadedModule};
use crate::sampler::unwind::published::Retired;
use crate::sampler::unwind::regions::StackRegions;

/// At least this often the collector lists the process's threads even if
/// their count has not changed, and sweeps the registry for exited
/// self-registered threads.
const FULL_SCAN_INTERVAL: Duration = MAX_CYCLE;

/// Counters the collector publishes for `stats()`.
#[derive(Default)]
pub(crate) struct CollectorCounters {
    pub(crate) threads_sampled: AtomicUsize,
    pub(crate) timers_armed: AtomicUsize,
    pub(crate) cpu_ns: AtomicU64,
    pub(crate) samples_collected: AtomicU64,
    pub(crate) dropped_stack_table_full: AtomicU64,
    pub(crate) dropped_aggregate_full: AtomicU64,
    pub(crate) table_rebuilds: AtomicU64,
    pub(crate) tables_leaked: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) unwind_data_bytes: AtomicU64,
    pub(crate) table_bytes: AtomicU64,
}

/// The collector's own state, owned by its thread.
pub(crate) struct Collector {
    shared: Arc<SamplerShared>,
    store: Arc<Store>,
    counters: Arc<CollectorCounters>,
    rate: Arc<RateControl>,
    engine: Box<dyn TimerEngine>,
    /// The rate in force and its epoch (`timer::cookie`).
    rate_hz: u32,
    rate_epoch: u8,
    modules: Vec<LoadedModule>,
    load_generation: LoadGeneration,
    /// Threads being sampled, sorted.
    known: Vec<i32>,
    /// Threads of the agent itself, never sampled.
    own_threads: Arc<Mutex<HashSet<i32>>>,
    names: HashMap<i32, String>,
    /// Threads whose name is read once more on the next cycle: a new thread
    /// often names itself just after it starts.
    rename_pending: Vec<i32>,
    listing: Vec<i32>,
    /// `/proc/self/task`, kept open; `None` if it could not be opened, and
    /// then opened again on the next cycle.
    tasks: Option<tasks::TaskDir>,
    /// When the threads were last listed in full (monotonic ns).
    full_scan_ns: u64,
    pace: Pace,
}

impl Collector {
    pub(crate) fn new(
        shared: Arc<SamplerShared>,
        store: Arc<Store>,
        counters: Arc<CollectorCounters>,
        rate: Arc<RateControl>,
        engine: Box<dyn TimerEngine>,
        modules: Vec<LoadedModule>,
        own_threads: Arc<Mutex<HashSet<i32>>>,
    ) -> Self {
        let rate_hz = rate.applied_hz();
        let pace = Pace::new(shared.buffer.capacity(), online_cpus(), monotonic_now_ns());
        counters
            .unwind_data_bytes
            .store(modules.iter().map(|m| m.unwind_bytes as u64).sum(), Relaxed);
        Collector {
            shared,
            store,
            counters,
            rate,
            engine,
            rate_hz,
            rate_epoch: 0,
            modules,
            load_generation: modules::load_generation(),
            known: Vec::new(),
            own_threads,
            names: HashMap::new(),
            rename_pending: Vec::new(),
            listing: Vec::new(),
            tasks: None,
            full_scan_ns: 0,
            pace,
        }
    }

    /// Runs cycles until `stop` is set, then disarms every timer.
    pub(crate) fn run(mut self, stop: &AtomicBool) {
        threads::name_current_thread(c"smolder-collect");
        threads::enter_agent_thread(&self.own_threads);
        let _ = self.rate.collector.set(std::thread::current());
        while !stop.load(Relaxed) {
            std::thread::park_timeout(self.pace.next_sleep(monotonic_now_ns(), self.rate_hz));
            // A panic in one cycle must not end sampling for good, nor reach
            // the host: count nothing twice, drop the cycle, carry on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cycle()));
        }
        self.engine.stop();
        self.counters.timers_armed.store(0, Relaxed);
        // Samples already in the buffer still count for captures in progress.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drain()));
    }

    fn cycle(&mut self) {
        self.drain();
        self.apply_rate();
        self.scan();
        self.counters
            .cpu_ns
            .store(crate::sampler::clock::current_thread_cpu_ns(), Relaxed);
    }

    /// Re-arms the timers if a capture asked for another rate (or the last
    /// one holding it finished). Samples carry the epoch they were taken in,
    /// so each is weighted with its own period.
    fn apply_rate(&mut self) {
        let desired = self.rate.desired_hz();
        if desired == self.rate_hz {
            return;
        }
        let epoch = self.rate_epoch.wrapping_add(1);
        let period = crate::config::period_ns(desired);
        self.store.lock().periods[usize::from(epoch)] = period;
        self.shared
            .itimer_rate_epoch
            .store(usize::from(epoch), Relaxed);
        self.engine.set_rate(period, epoch);
        (self.rate_hz, self.rate_epoch) = (desired, epoch);
        self.rate.mark_applied(desired);
        self.pace.busy(monotonic_now_ns());
    }

    /// Moves every published record into the aggregates.
    pub(crate) fn drain(&mut self) {
        let now = monotonic_now_ns();
        let mut state = self.store.lock();
        if state.stacks.is_nearly_full() {
            state.compact();
            self.counters.compactions.fetch_add(1, Relaxed);
        }
        let mut root_first = Vec::new();
        let mut drained = 0;
        loop {
            // SAFETY: the collector thread is the buffer's only consumer.
            let ingested = unsafe {
                self.shared.buffer.pop_with(|record| {
                    ingest(
                        &mut state,
                        &self.counters,
                        &mut self.names,
                        record,
                        &mut root_first,
                    )
                })
            };
            if ingested.is_none() {
                break;
            }
            drained += 1;
        }
        if drained >= self.shared.buffer.capacity() / 4 {
            self.pace.busy(now);
        }
        state.drained_through_ns = now;
        state.history.roll(now);
        if now >= state.next_span_expiry_ns {
            let horizon = now.saturating_sub(state.history.span_ns());
            state.spans.expire(horizon);
            state.next_span_expiry_ns = now + state.history.resolution_ns();
        }
        self.counters
            .table_bytes
            .store(state.memory_bytes() as u64, Relaxed);
        drop(state);
        self.store.drained.notify_all();
    }

    /// Reconciles the set of sampled threads with `/proc/self/task`, and
    /// the unwind tables with the loaded modules.
    pub(crate) fn scan(&mut self) {
        let now = monotonic_now_ns();
        // Half a short cycle's slack: a wake-up a little early still counts.
        let since_full = Duration::from_nanos(now.saturating_sub(self.full_scan_ns));
        let full = since_full + CYCLE / 2 >= FULL_SCAN_INTERVAL;
        if self.tasks.is_none() {
            self.tasks = tasks::TaskDir::open().ok();
        }
        let Some(tasks) = &mut self.tasks else { return };
        // Listing every thread costs the kernel a lookup per thread; when the
        // count has not moved since the last listing, the threads known are
        // taken as the listing, except every FULL_SCAN_INTERVAL: a thread
        // that started while another ended leaves the count as it was, and
        // is found then.
        if !full && tasks.count_unchanged() {
            self.listing.clone_from(&self.known);
        } else if tasks.list(&mut self.listing).is_err() {
            self.tasks = None;
            return;
        }
        if full {
            self.full_scan_ns = now;
        }
        {
            let own = crate::sync::lock(&self.own_threads);
            self.listing.retain(|tid| !own.contains(tid));
        }
        let started: Vec<i32> = self
            .listing
            .iter()
            .copied()
            .filter(|t| self.known.binary_search(t).is_err())
            .collect();
        let exited: Vec<i32> = self
            .known
            .iter()
            .copied()
            .filter(|t| self.listing.binary_search(t).is_err())
            .collect();

        let generation = modules::load_generation();
        let modules_changed = generation != self.load_generation;
        if modules_changed || !started.is_empty() {
            self.refresh_tables(modules_changed, generation);
        }
        if modules_changed || !started.is_empty() || !exited.is_empty() {
            self.pace.busy(now);
        }

        // Registration and arming come after the refresh: a thread is only
        // sampled once the published stack regions include its stack.
        for &tid in &started {
            crate::sampler::registry::registry().register(tid);
        }
        for &tid in &exited {
            crate::sampler::registry::registry().unregister(tid);
            self.names.remove(&tid);
        }
        // Threads that registered themselves (on their first span) and ended
        // before any listing saw them: free their slots too. A thread listed
        // just now is alive; one that is not is checked directly, since it
        // may have started after the listing. This sweeps every slot of the
        // registry (over a hundred kilobytes, on a CPU the service may be
        // using), so it runs only with a full listing: such a slot waits a
        // little longer to be reused.
        if full {
            let listing = &self.listing;
            crate::sampler::registry::registry().retain(|tid| {
                listing.binary_search(&tid).is_ok()
                    || crate::sampler::clock::thread_cpu(tid).is_some()
            });
        }
        self.engine.track(&started, &exited);

        for tid in std::mem::take(&mut self.rename_pending) {
            if let Some(name) = threads::thread_name(tid) {
                self.names.insert(tid, name);
            }
        }
        for &tid in &started {
            if let Some(name) = threads::thread_name(tid) {
                self.names.insert(tid, name);
            }
        }
        self.rename_pending = started;

        std::mem::swap(&mut self.known, &mut self.listing);
        self.counters
            .threads_sampled
            .store(self.known.len(), Relaxed);
        self.counters
            .timers_armed
            .store(self.engine.armed(), Relaxed);
    }

    fn refresh_tables(&mut self, modules_changed: bool, generation: LoadGeneration) {
        if modules_changed {
            self.modules = modules::enumerate(&self.modules);
            self.load_generation = generation;
            let mut state = self.store.lock();
            state.modules = Arc::new(state.modules.updated(&self.modules));
            self.counters.unwind_data_bytes.store(
                self.modules.iter().map(|m| m.unwind_bytes as u64).sum(),
                Relaxed,
            );
        }
        let Ok(regions) = StackRegions::read() else {
            return;
        };
        let tables = Box::new(UnwindTables::new(&self.modules, regions));
        self.counters.table_rebuilds.fetch_add(1, Relaxed);
        if self
            .shared
            .tables
            .publish(tables, Duration::from_millis(500))
            == Retired::Leaked
        {
            self.counters.tables_leaked.fetch_add(1, Relaxed);
        }
    }
}
