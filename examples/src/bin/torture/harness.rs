//! The workload process: its shared state, the worker loop every activity
//! runs in, the pause that lets the lifecycle thread audit a quiet process,
//! and the main sequence (start, run, stop, report).
//!
//! Every activity runs in registered *worker* threads that loop over one
//! step at a time. Between steps a worker checks two things: whether the run
//! is over, and whether a pause was requested; a paused worker parks until
//! the pause ends. A step is short (milliseconds to about a second), so a
//! pause is reached quickly, and no worker ever parks in the middle of a
//! step (holding a child thread, a lock or half a pipe protocol).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smolder_examples::{lock, wait, wait_timeout_while};
use tracing_subscriber::prelude::*;

use crate::options::Options;
use crate::{
    alloc, churn, deep, eintr, lifecycle, panics, plugin, processes, report, scrape, sys, watchdog,
};

/// A named activity and how many steps it has completed. The watchdog
/// fails the run when the count stops moving.
pub struct Activity {
    pub name: &'static str,
    progress: AtomicU64,
}

impl Activity {
    pub fn bump(&self) {
        self.progress.fetch_add(1, Relaxed);
    }

    pub fn progress(&self) -> u64 {
        self.progress.load(Relaxed)
    }
}

/// Which agent runs now, for the threads that talk to it from outside
/// (the HTTP scraper, the signal injector).
#[derive(Default)]
pub struct AgentSlot {
    current: Mutex<AgentEpoch>,
    /// Set once the first agent has installed its handler: from then on
    /// `SIGPROF` is never again at its default (fatal) action.
    ever_started: AtomicBool,
}

/// The newest agent and whether it still runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AgentEpoch {
    /// The newest agent's number, counting from 1.
    pub generation: u64,
    /// Its HTTP endpoint while it runs; `None` once it is being stopped.
    pub http: Option<SocketAddr>,
    pub running: bool,
}

impl AgentSlot {
    fn lock(&self) -> MutexGuard<'_, AgentEpoch> {
        lock(&self.current)
    }

    pub fn publish(&self, generation: u64, http: Option<SocketAddr>) {
        *self.lock() = AgentEpoch {
            generation,
            http,
            running: true,
        };
        self.ever_started.store(true, Relaxed);
    }

    /// Called just before the agent is dropped.
    pub fn retract(&self) {
        let mut current = self.lock();
        current.running = false;
        current.http = None;
    }

    /// The newest agent, and whether it runs, as one consistent reading: two
    /// different readings mean it was replaced (or stopped) in between.
    pub fn epoch(&self) -> AgentEpoch {
        *self.lock()
    }

    pub fn ever_started(&self) -> bool {
        self.ever_started.load(Relaxed)
    }
}

/// Lets the lifecycle thread stop every worker between two steps.
#[derive(Default)]
pub struct Pause {
    requested: AtomicBool,
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    /// Registered worker threads still running.
    workers: usize,
    /// Workers parked at a checkpoint.
    parked: usize,
}

impl Pause {
    fn lock(&self) -> MutexGuard<'_, PauseState> {
        lock(&self.state)
    }

    fn register(&self) {
        self.lock().workers += 1;
    }

    fn deregister(&self) {
        self.lock().workers -= 1;
        self.changed.notify_all();
    }

    /// Parks the calling worker while a pause is in force.
    fn checkpoint(&self) {
        if !self.requested.load(Relaxed) {
            return;
        }
        let mut state = self.lock();
        state.parked += 1;
        self.changed.notify_all();
        while state.requested {
            state = wait(&self.changed, state);
        }
        state.parked -= 1;
    }

    /// Asks every worker to park and waits until all have. On timeout the
    /// pause is lifted again and the number of workers still running is
    /// returned.
    pub fn pause_all(&self, patience: Duration) -> Result<(), usize> {
        let mut state = self.lock();
        state.requested = true;
        self.requested.store(true, Relaxed);
        let (state, _) =
            wait_timeout_while(&self.changed, state, patience, |s| s.parked < s.workers);
        if state.parked < state.workers {
            let running = state.workers - state.parked;
            drop(state);
            self.resume();
            return Err(running);
        }
        Ok(())
    }

    pub fn resume(&self) {
        let mut state = self.lock();
        state.requested = false;
        self.requested.store(false, Relaxed);
        drop(state);
        self.changed.notify_all();
    }
}

/// Failures seen so far; each is also printed when it happens.
#[derive(Default)]
struct Failures {
    first: Vec<String>,
    total: usize,
}

/// Everything the workload's threads share.
pub struct Harness {
    pub options: Options,
    pub started: Instant,
    workers_stop: AtomicBool,
    pub pause: Pause,
    activities: Mutex<Vec<Arc<Activity>>>,
    failures: Mutex<Failures>,
    pub agent: AgentSlot,
    pub churn: churn::Counters,
    pub plugin: plugin::Counters,
    pub alloc: alloc::Counters,
    pub panics: panics::Counters,
    pub processes: processes::Counters,
    pub eintr: eintr::Counters,
    pub deep: deep::Counters,
    pub scrape: scrape::Counters,
}

/// Failures kept for the final report (all are printed as they happen).
const FAILURES_KEPT: usize = 50;

impl Harness {
    fn new(options: Options) -> Harness {
        Harness {
            options,
            started: Instant::now(),
            workers_stop: AtomicBool::new(false),
            pause: Pause::default(),
            activities: Mutex::new(Vec::new()),
            failures: Mutex::new(Failures::default()),
            agent: AgentSlot::default(),
            churn: Default::default(),
            plugin: Default::default(),
            alloc: Default::default(),
            panics: Default::default(),
            processes: Default::default(),
            eintr: Default::default(),
            deep: Default::default(),
            scrape: Default::default(),
        }
    }

    /// Seconds since the workload started, for log lines.
    pub fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Registers an activity for the watchdog.
    pub fn activity(&self, name: &'static str) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            name,
            progress: AtomicU64::new(0),
        });
        lock(&self.activities).push(Arc::clone(&activity));
        activity
    }

    pub fn activities(&self) -> Vec<Arc<Activity>> {
        lock(&self.activities).clone()
    }

    /// Records a failed check; the run will exit non-zero.
    pub fn fail(&self, what: impl Into<String>) {
        let what = what.into();
        println!("[{:7.1}s] FAIL: {what}", self.now_s());
        let mut failures = lock(&self.failures);
        failures.total += 1;
        if failures.first.len() < FAILURES_KEPT {
            failures.first.push(what);
        }
    }

    /// (the first failures, how many there were in all).
    pub fn failures(&self) -> (Vec<String>, usize) {
        let failures = lock(&self.failures);
        (failures.first.clone(), failures.total)
    }

    pub fn workers_stopping(&self) -> bool {
        self.workers_stop.load(Relaxed)
    }
}

/// Runs `step` over and over on a new registered worker thread until the
/// run ends, bumping `activity` after each step and parking between steps
/// while a pause is in force. An unexpected panic in `step` is a failure
/// and ends the worker (its activity then stalls, which the watchdog
/// reports too).
pub fn spawn_worker(
    harness: &Arc<Harness>,
    activity: &Arc<Activity>,
    thread_name: &str,
    stack_bytes: usize,
    mut step: impl FnMut(&Harness) + Send + 'static,
) -> JoinHandle<()> {
    harness.pause.register();
    let (harness, activity) = (Arc::clone(harness), Arc::clone(activity));
    std::thread::Builder::new()
        .name(thread_name.to_owned())
        .stack_size(stack_bytes)
        .spawn(move || {
            while !harness.workers_stopping() {
                harness.pause.checkpoint();
                if harness.workers_stopping() {
                    break;
                }
                let stepped =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(&harness)));
                if stepped.is_err() {
                    harness.fail(format!(
                        "activity {} panicked unexpectedly (see stderr)",
                        activity.name
                    ));
                    break;
                }
                activity.bump();
            }
            harness.pause.deregister();
        })
        .expect("spawning a worker thread")
}

/// Starts an activity's workers.
type StartFn = fn(&Arc<Harness>) -> Vec<JoinHandle<()>>;

/// Default stack for worker threads.
pub const WORKER_STACK: usize = 2 << 20;

/// The workload: starts the first agent, then every activity, runs for the
/// configured time, stops everything in order and prints the report.
pub fn run_workload(options: Options) -> ExitCode {
    panics::install_quiet_hook();
    tracing_subscriber::registry()
        .with(smolder::tracing_layer())
        .init();
    let harness = Arc::new(Harness::new(options));
    println!(
        "torture: workload pid {} running for {} s at {} Hz, a new agent every ~{} ms{}",
        std::process::id(),
        harness.options.duration.as_secs(),
        harness.options.frequency_hz,
        harness.options.restart_every.as_millis(),
        match harness.options.skip.is_empty() {
            true => String::new(),
            false => format!(", skipping {}", harness.options.skip.join(", ")),
        }
    );
    if cfg!(debug_assertions) {
        println!(
            "torture: warning: debug build; the agent symbolises a debug binary so slowly \
             that the 10 s watchdog may fire (use --release)"
        );
    }
    let watchdog = watchdog::start(&harness);
    let Some(lifecycle) = lifecycle::start(&harness) else {
        return report::early_exit(&harness);
    };
    let activities: [(&str, StartFn); 8] = [
        ("churn", churn::start),
        ("dlopen", plugin::start),
        ("alloc", alloc::start),
        ("panic", panics::start),
        ("fork-exec", processes::start),
        ("eintr", eintr::start),
        ("deep", deep::start),
        ("http-scrape", scrape::start),
    ];
    let mut workers = Vec::new();
    for (name, start) in activities {
        if harness.options.runs(name) {
            workers.extend(start(&harness));
        }
    }

    run_until_deadline(&harness, &watchdog);

    // Stop the activities first (the lifecycle thread then audits a quiet
    // process), and give the whole shutdown a deadline of its own.
    harness.workers_stop.store(true, Relaxed);
    watchdog.begin_shutdown(Duration::from_secs(60));
    for worker in workers {
        let _ = worker.join();
    }
    let generations = lifecycle.finish();
    let resources = watchdog.finish();
    report::print(&harness, &generations, &resources)
}

/// Sleeps until the run's time is up, printing a heartbeat every 10 s.
fn run_until_deadline(harness: &Harness, watchdog: &watchdog::Watchdog) {
    let deadline = harness.started + harness.options.duration;
    let mut next_heartbeat = harness.started + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250).min(deadline - Instant::now()));
        if Instant::now() >= next_heartbeat {
            next_heartbeat += Duration::from_secs(10);
            let (_, failures) = harness.failures();
            println!(
                "[{:7.1}s] agent #{}, rss {} MiB, {} threads, {} failures",
                harness.now_s(),
                harness.agent.epoch().generation,
                sys::rss_kib().unwrap_or(0) / 1024,
                sys::thread_count().unwrap_or(0),
                failures,
            );
            watchdog.print_progress();
        }
    }
}
