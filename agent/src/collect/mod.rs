//! Stage 3 of the data flow: the collector thread.
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

pub(crate) mod aggregate;
pub(crate) mod span_table;
pub(crate) mod symbolize;
pub(crate) mod tasks;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::collect::aggregate::filter::Filter;
use crate::collect::aggregate::history::{History, HistoryLimits};
use crate::collect::aggregate::stacks::{
    FastMap, SpanLabel, StackId, StackTable, TRUNCATED_FRAME, ThreadInfo, ThreadKey, ThreadTable,
};
use crate::collect::aggregate::{Aggregate, Capture, Observation};
use crate::collect::span_table::SpanTable;
use crate::collect::symbolize::ModuleMap;
use crate::sampler::buffer::{FLAG_TRUNCATED, Record};
use crate::sampler::clock::monotonic_now_ns;
use crate::sampler::handler::SamplerShared;
use crate::sampler::threads;
use crate::sampler::timer::TimerEngine;
use crate::sampler::unwind::UnwindTables;
use crate::sampler::unwind::modules::{self, LoadGeneration, LoadedModule};
use crate::sampler::unwind::published::Retired;
use crate::sampler::unwind::regions::StackRegions;

/// The collector's shortest cycle: while threads come and go, or when
/// samples may arrive too fast for a longer one (see [`Pace`]).
pub(crate) const CYCLE: Duration = Duration::from_millis(25);
/// Its longest, in a quiet process: the longest a new thread waits to be
/// found.
pub(crate) const MAX_CYCLE: Duration = Duration::from_millis(100);
/// How long nothing must have changed before cycles lengthen.
const QUIET_AFTER: Duration = Duration::from_secs(1);
/// At least this often the collector lists the process's threads even if
/// their count has not changed, and sweeps the registry for exited
/// self-registered threads.
const FULL_SCAN_INTERVAL: Duration = MAX_CYCLE;

/// Most captures that may run at once; each holds its own aggregate.
pub(crate) const MAX_CAPTURES: usize = 8;

/// Distinct (stack, thread) entries one capture may hold.
const CAPTURE_ENTRIES: usize = 32 * 1024;

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

/// The sampling rate: the configured default, or a rate a capture asked for.
///
/// Only one non-default rate can be in force at a time: a capture asking for
/// another while one is held gets [`RateConflict`] (the HTTP endpoint turns
/// it into a 409). The collector applies the desired rate at its next cycle.
pub(crate) struct RateControl {
    default_hz: u32,
    state: Mutex<RateState>,
    applied: Condvar,
    /// The collector's thread, woken when a capture asks for a new rate so
    /// that the capture need not wait out a long cycle.
    collector: OnceLock<std::thread::Thread>,
}

struct RateState {
    /// The override in force and how many captures hold it.
    held: Option<(u32, usize)>,
    applied_hz: u32,
}

/// Another capture holds a different sampling rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateConflict {
    pub(crate) held_hz: u32,
}

/// Keeps a requested rate in force while alive.
pub(crate) struct RateHold {
    control: Arc<RateControl>,
}

impl RateControl {
    pub(crate) fn new(default_hz: u32) -> Self {
        RateControl {
            default_hz,
            state: Mutex::new(RateState {
                held: None,
                applied_hz: default_hz,
            }),
            applied: Condvar::new(),
            collector: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RateState> {
        crate::sync::lock(&self.state)
    }

    /// Asks for `hz` until the returned hold is dropped.
    pub(crate) fn hold(this: &Arc<Self>, hz: u32) -> Result<RateHold, RateConflict> {
        let mut state = this.lock();
        match &mut state.held {
            Some((held_hz, holders)) if *held_hz == hz => *holders += 1,
            Some((held_hz, _)) => return Err(RateConflict { held_hz: *held_hz }),
            None => {
                state.held = Some((hz, 1));
                if state.applied_hz != hz
                    && let Some(collector) = this.collector.get()
                {
                    collector.unpark();
                }
            }
        }
        Ok(RateHold {
            control: Arc::clone(this),
        })
    }

    /// The rate the collector should apply.
    pub(crate) fn desired_hz(&self) -> u32 {
        self.lock().held.map_or(self.default_hz, |(hz, _)| hz)
    }

    /// The rate in force.
    pub(crate) fn applied_hz(&self) -> u32 {
        self.lock().applied_hz
    }

    fn mark_applied(&self, hz: u32) {
        self.lock().applied_hz = hz;
        self.applied.notify_all();
    }

    /// Waits until the collector has applied `hz`; false on timeout.
    pub(crate) fn wait_applied(&self, hz: u32, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .applied
            .wait_timeout_while(state, timeout, |s| s.applied_hz != hz)
            .unwrap_or_else(|p| p.into_inner());
        state.applied_hz == hz
    }
}

impl Drop for RateHold {
    fn drop(&mut self) {
        let mut state = self.control.lock();
        if let Some((_, holders)) = &mut state.held {
            *holders -= 1;
            if *holders == 0 {
                state.held = None;
            }
        }
    }
}

/// Aggregation state shared between the collector and readers.
pub(crate) struct Store {
    state: Mutex<StoreState>,
    /// Signalled after every drain.
    drained: Condvar,
}

pub(crate) struct StoreState {
    pub(crate) stacks: StackTable,
    pub(crate) threads: ThreadTable,
    captures: Vec<Capture>,
    next_capture_id: u64,
    capture_capacity: usize,
    /// Every record stamped before this (monotonic ns) has been drained,
    /// except records a handler was still writing at that instant.
    pub(crate) drained_through_ns: u64,
    /// Modules for symbolisation, replaced when the loaded set changes.
    pub(crate) modules: Arc<ModuleMap>,
    pub(crate) history: History,
    /// CPU per span, for exported spans and span flame graphs.
    pub(crate) spans: SpanTable,
    /// When spans older than the history's span are next forgotten.
    next_span_expiry_ns: u64,
    /// Timer period (ns) of each rate epoch (`timer::cookie`).
    periods: [u64; 256],
}

/// Spans whose CPU is tracked at once.
const MAX_SPANS: usize = 16 * 1024;
/// (stack, thread) entries over all tracked spans.
const MAX_SPAN_ENTRIES: usize = 96 * 1024;

/// A capture's or window's results with stacks expanded, ready for
/// symbolisation.
pub(crate) struct CaptureResult {
    /// (lookup addresses leaf first, thread, CPU nanoseconds).
    pub(crate) stacks: Vec<(Vec<u64>, ThreadInfo, u64)>,
    pub(crate) modules: Arc<ModuleMap>,
}

/// Why a capture could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyCaptures;

impl Store {
    pub(crate) fn new(
        stack_capacity: usize,
        modules: Arc<ModuleMap>,
        history: HistoryLimits,
        period_ns: u64,
    ) -> Self {
        Store {
            state: Mutex::new(StoreState {
                stacks: StackTable::with_capacity(stack_capacity),
                threads: ThreadTable::with_capacity(crate::sampler::registry::MAX_THREADS * 4),
                captures: Vec::new(),
                next_capture_id: 1,
                capture_capacity: CAPTURE_ENTRIES,
                drained_through_ns: 0,
                modules,
                history: History::new(history, monotonic_now_ns()),
                spans: SpanTable::new(MAX_SPANS, MAX_SPAN_ENTRIES),
                next_span_expiry_ns: 0,
                periods: [period_ns; 256],
            }),
            drained: Condvar::new(),
        }
    }

    /// Locks the state. A panic elsewhere while holding the lock leaves the
    /// tables consistent (every mutation is a single insert), so poisoning
    /// is ignored rather than propagated into the host.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StoreState> {
        crate::sync::lock(&self.state)
    }

    /// Starts counting samples stamped in `[start_ns, end_ns)`.
    pub(crate) fn begin_capture(&self, start_ns: u64, end_ns: u64) -> Result<u64, TooManyCaptures> {
        let mut state = self.lock();
        if state.captures.len() >= MAX_CAPTURES {
            return Err(TooManyCaptures);
        }
        let id = state.next_capture_id;
        state.next_capture_id += 1;
        let aggregate = Aggregate::with_capacity(state.capture_capacity);
        state.captures.push(Capture {
            id,
            start_ns,
            end_ns,
            aggregate,
        });
        Ok(id)
    }

    /// Waits until the collector has drained everything stamped before
    /// `through_ns`; false on timeout.
    pub(crate) fn wait_drained(&self, through_ns: u64, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .drained
            .wait_timeout_while(state, timeout, |s| s.drained_through_ns < through_ns)
            .unwrap_or_else(|p| p.into_inner());
        state.drained_through_ns >= through_ns
    }

    /// Removes the capture and expands its stacks.
    pub(crate) fn finish_capture(&self, id: u64, filter: &Filter) -> Option<CaptureResult> {
        let mut state = self.lock();
        let index = state.captures.iter().position(|c| c.id == id)?;
        let capture = state.captures.swap_remove(index);
        Some(state.expand(&capture.aggregate, filter))
    }

    /// What the history holds for `[from_ns, to_ns)`, and the span it
    /// actually covers.
    pub(crate) fn window(
        &self,
        from_ns: u64,
        to_ns: u64,
        filter: &Filter,
    ) -> (CaptureResult, u64, u64) {
        let state = self.lock();
        let window = state.history.window(from_ns, to_ns);
        (
            state.expand(&window.aggregate, filter),
            window.start_ns,
            window.end_ns,
        )
    }

    /// Forgets a capture without reading it.
    pub(crate) fn cancel_capture(&self, id: u64) {
        self.lock().captures.retain(|c| c.id != id);
    }

    /// The samples of one span and everything inside it, if still tracked.
    pub(crate) fn span(&self, span_id: u64, filter: &Filter) -> Option<SpanResult> {
        let state = self.lock();
        let entry = state.spans.get(span_id)?;
        Some(SpanResult {
            trace_id: entry.trace_id,
            samples: state.expand(&entry.aggregate, filter),
        })
    }

    /// The CPU of each of `span_ids` by leaf address (`None` for a span
    /// with no samples, and for span id 0, which stands for one known to
    /// have none), under one lock: what span summaries need, without
    /// expanding whole stacks.
    pub(crate) fn span_leaves(
        &self,
        span_ids: &[u64],
        leaves: &mut Vec<Option<SpanLeaves>>,
    ) -> Arc<ModuleMap> {
        let state = self.lock();
        leaves.clear();
        leaves.extend(span_ids.iter().map(|&span_id| {
            if span_id == 0 {
                return None;
            }
            let entry = state.spans.get(span_id)?;
            let mut by_leaf: FastMap<u64, u64> = FastMap::default();
            for (stack, thread, cpu_ns) in entry.aggregate.iter() {
                if state.threads.get(thread).is_some()
                    && let Some(leaf) = state.stacks.leaf(stack)
                {
                    *by_leaf.entry(leaf).or_default() += cpu_ns;
                }
            }
            Some(SpanLeaves {
                self_cpu_ns: entry.self_cpu_ns,
                total_cpu_ns: entry.total_cpu_ns,
                by_leaf: by_leaf.into_iter().collect(),
            })
        }));
        Arc::clone(&state.modules)
    }

    /// Every sample of one trace in this process (its local roots' totals).
    pub(crate) fn trace(&self, trace_id: u128, filter: &Filter) -> Option<CaptureResult> {
        let state = self.lock();
        let mut merged: Option<CaptureResult> = None;
        for root in state.spans.trace_roots(trace_id) {
            let part = state.expand(&root.aggregate, filter);
            match &mut merged {
                Some(result) => result.stacks.extend(part.stacks),
                None => merged = Some(part),
            }
        }
        merged
    }
}

/// A span's CPU by the address it was spent at.
pub(crate) struct SpanLeaves {
    pub(crate) self_cpu_ns: u64,
    pub(crate) total_cpu_ns: u64,
    /// (leaf lookup address, CPU nanoseconds), in no particular order.
    pub(crate) by_leaf: Vec<(u64, u64)>,
}

/// A span's CPU, expanded for symbolisation.
pub(crate) struct SpanResult {
    pub(crate) trace_id: u128,
    pub(crate) samples: CaptureResult,
}

impl StoreState {
    /// Expands an aggregate's interned keys into addresses and thread info,
    /// keeping what `filter` admits.
    pub(crate) fn expand(&self, aggregate: &Aggregate, filter: &Filter) -> CaptureResult {
        let stacks = aggregate
            .iter()
            .filter_map(|(stack, thread, weight)| {
                let thread = self
                    .threads
                    .get(thread)
                    .filter(|t| filter.admits_thread(t))?;
                let mut frames = Vec::new();
                self.stacks.frames_into(stack, &mut frames);
                Some((frames, thread.clone(), weight))
            })
            .collect();
        CaptureResult {
            stacks,
            modules: Arc::clone(&self.modules),
        }
    }

    /// Every stack and thread a live sink refers to.
    fn live_keys(&self) -> (HashSet<StackId>, HashSet<ThreadKey>) {
        let mut stacks = HashSet::new();
        let mut threads = HashSet::new();
        let captured = self
            .captures
            .iter()
            .flat_map(|c| c.aggregate.iter().map(|(s, t, _)| (s, t)));
        for (s, t) in captured.chain(self.history.keys()).chain(self.spans.keys()) {
            stacks.insert(s);
            threads.insert(t);
        }
        (stacks, threads)
    }

    /// Drops stacks and threads no sink refers to any more. If the stack
    /// table is still nearly full, the history gives up its oldest buckets
    /// (reaching less far back) until there is room: old history is worth
    /// less than new samples.
    fn compact(&mut self) {
        loop {
            let (live_stacks, live_threads) = self.live_keys();
            let stacks = self.stacks.compact(live_stacks);
            let threads = self.threads.compact(live_threads);
            for capture in &mut self.captures {
                capture.aggregate.remap(&stacks, &threads);
            }
            self.history.remap(&stacks, &threads);
            self.spans.remap(&stacks, &threads);
            if !self.stacks.is_nearly_full() || !self.history.pop_oldest() {
                return;
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        self.stacks.memory_bytes()
            + self.threads.memory_bytes()
            + self.history.memory_bytes()
            + self.spans.memory_bytes()
            + self
                .captures
                .iter()
                .map(|c| c.aggregate.memory_bytes())
                .sum::<usize>()
    }
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

/// How long the collector sleeps between cycles.
///
/// Each wake-up costs a context switch on a CPU the service may be using and
/// a cycle run with cold caches, whatever there is to do; in a quiet service
/// at 99 Hz a 25 ms cycle finds two or three samples. So once nothing has
/// changed for [`QUIET_AFTER`], cycles stretch towards [`MAX_CYCLE`], as far
/// as the buffer allows: one cycle must not bring more records than half of
/// it holds, counting the rate in force on every online CPU (a CPU-time
/// timer fires at most once per period of CPU used). Threads starting or
/// exiting, a library loaded, a new rate, or a drain that found the buffer a
/// quarter full bring short cycles back, so threads that come and go are
/// still found within [`CYCLE`].
#[derive(Debug)]
pub(crate) struct Pace {
    capacity: u64,
    cpus: u64,
    /// When something last changed (monotonic ns).
    busy_ns: u64,
}

impl Pace {
    pub(crate) fn new(capacity: usize, cpus: usize, now_ns: u64) -> Self {
        Pace {
            capacity: capacity as u64,
            cpus: cpus.max(1) as u64,
            busy_ns: now_ns,
        }
    }

    /// Something changed, or samples came in bulk: short cycles for a while.
    pub(crate) fn busy(&mut self, now_ns: u64) {
        self.busy_ns = now_ns;
    }

    /// The sleep before the next cycle, at `rate_hz`.
    pub(crate) fn next_sleep(&self, now_ns: u64, rate_hz: u32) -> Duration {
        if now_ns.saturating_sub(self.busy_ns) < QUIET_AFTER.as_nanos() as u64 {
            return CYCLE;
        }
        let records_per_second = u64::from(rate_hz.max(1)) * self.cpus;
        let room = Duration::from_nanos(self.capacity / 2 * 1_000_000_000 / records_per_second);
        room.clamp(CYCLE, MAX_CYCLE)
    }
}

/// CPUs online: how many threads can burn CPU, and so fire CPU-time timers,
/// at once.
fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system setting; it has no memory effects.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Interns one record and offers it to every capture.
fn ingest(
    state: &mut StoreState,
    counters: &CollectorCounters,
    names: &mut HashMap<i32, String>,
    record: &Record,
    root_first: &mut Vec<u64>,
) {
    counters.samples_collected.fetch_add(1, Relaxed);
    root_first.clear();
    if record.flags & FLAG_TRUNCATED != 0 {
        root_first.push(TRUNCATED_FRAME);
    }
    let stack = record.stack();
    // Callers' return addresses point after the call; minus one lands inside
    // it, on the line that made the call.
    root_first.extend(stack.iter().enumerate().rev().map(|(i, &address)| {
        if i == 0 {
            address
        } else {
            address.saturating_sub(1)
        }
    }));
    let Some(stack_id) = state.stacks.intern(root_first.iter().copied()) else {
        counters.dropped_stack_table_full.fetch_add(1, Relaxed);
        return;
    };
    let name = names.entry(record.tid).or_insert_with(|| {
        threads::thread_name(record.tid).unwrap_or_else(|| format!("thread-{}", record.tid))
    });
    let Some(thread) = state.threads.intern(record.tid, name, None) else {
        counters.dropped_aggregate_full.fetch_add(1, Relaxed);
        return;
    };
    let observation = Observation {
        stack: stack_id,
        thread,
        weight: u64::from(record.weight) * state.periods[usize::from(record.rate_epoch)],
        timestamp_ns: record.timestamp_ns,
    };
    if !state.history.offer(&observation) {
        counters.dropped_aggregate_full.fetch_add(1, Relaxed);
    }
    state.spans.offer(&record.span, &observation);
    if state.captures.is_empty() {
        return;
    }
    // Captures keep the span as a label (for pprof's -tagfocus); if the
    // thread table has no room for one more (thread, span) pair, the sample
    // still counts, unlabelled.
    let labelled = record.span.is_some().then_some(SpanLabel {
        trace_id: record.span.trace_id,
        span_id: record.span.span_id,
        name: record.span.name,
    });
    let thread = labelled
        .and_then(|label| state.threads.intern(record.tid, name, Some(label)))
        .unwrap_or(thread);
    let observation = Observation {
        thread,
        ..observation
    };
    for capture in &mut state.captures {
        if !capture.offer(&observation) {
            counters.dropped_aggregate_full.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_NS: u64 = 1_000_000_000;

    #[test]
    fn cycles_stay_short_for_a_while_after_a_change() {
        let mut pace = Pace::new(1024, 2, 0);
        assert_eq!(pace.next_sleep(SECOND_NS / 2, 99), CYCLE);
        assert_eq!(pace.next_sleep(2 * SECOND_NS, 99), MAX_CYCLE);
        pace.busy(2 * SECOND_NS);
        assert_eq!(pace.next_sleep(2 * SECOND_NS + 1, 99), CYCLE);
        assert_eq!(pace.next_sleep(3 * SECOND_NS + 1, 99), MAX_CYCLE);
    }

    #[test]
    fn a_quiet_cycle_never_brings_more_than_half_the_buffer() {
        for (capacity, cpus, hz) in [
            (1024, 2, 99),
            (1024, 2, 999),
            (1024, 2, 10_000),
            (64, 2, 99),
            (1024, 128, 99),
            (1024, 64, 10_000),
        ] {
            let sleep = Pace::new(capacity, cpus, 0).next_sleep(10 * SECOND_NS, hz);
            let most_records = sleep.as_secs_f64() * f64::from(hz) * cpus as f64;
            assert!(
                most_records <= capacity as f64 / 2.0 || sleep == CYCLE,
                "{capacity} records, {cpus} CPUs at {hz} Hz: {sleep:?} may bring {most_records}"
            );
            assert!((CYCLE..=MAX_CYCLE).contains(&sleep));
        }
        // At everyday rates on a small machine, the longest cycle.
        assert_eq!(
            Pace::new(1024, 2, 0).next_sleep(10 * SECOND_NS, 999),
            MAX_CYCLE
        );
        // Where even the shortest cycle is tight, never longer than it.
        assert_eq!(
            Pace::new(1024, 64, 0).next_sleep(10 * SECOND_NS, 999),
            CYCLE
        );
    }

    #[test]
    fn online_cpus_is_at_least_one() {
        assert!(online_cpus() >= 1);
    }
}
