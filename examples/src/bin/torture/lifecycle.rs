//! The agent's lifecycle: start an agent, watch its accounting, probe its
//! span tracking, audit it, stop it, check it left nothing behind, and
//! start the next one, while every activity keeps running.
//!
//! # Sample accounting
//!
//! `Stats::signals` is *computed* as `samples` plus the handler's drops, so
//! checking that identity would prove nothing. What can go wrong
//! independently is the path from the handler to the collector: every
//! record the handler publishes is counted in `samples` (after it is
//! published) and every record the collector pops is counted in
//! `samples_collected` (including those it then drops for a full table,
//! which are counted again under `dropped`). So:
//!
//! * **Exact audit.** When no host thread is using CPU, no record is in
//!   flight, and `samples == samples_collected` must hold exactly within a
//!   few collector cycles. Every second agent is audited this way before it
//!   stops: the workers are paused between steps, and the audit polls
//!   `stats()` for up to [`AUDIT_PATIENCE`]. The last agent is audited after
//!   every activity has ended. A record lost between the buffer and the
//!   collector, or counted twice, fails the audit.
//! * **Running bounds**, every 100 ms while the workers run: the collector
//!   can be behind by at most the buffer's capacity (plus handlers in
//!   flight), and ahead by at most the handlers in flight (a record is
//!   published before the handler counts it).
//! * **Collector liveness**: the pseudo-activity `collector` progresses
//!   when `samples_collected` moves or the collector is up to date, so a
//!   collector that stops draining while samples keep coming is a deadlock
//!   for the watchdog.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smolder::{Agent, Stats};

use crate::harness::{Activity, Harness};
use crate::sys::{self, Disposition};

/// The sample buffer's capacity, set explicitly so that the running bound
/// is known.
pub const BUFFER_RECORDS: usize = 1024;
/// Handlers that can be between publishing a record and counting it: at
/// most one per unwind scratch area, of which the agent has at most 64.
const IN_FLIGHT: u64 = 64;
/// How long an exact audit waits for the collector to catch up.
const AUDIT_PATIENCE: Duration = Duration::from_secs(3);
/// How long a pause for an audit may take to reach every worker.
const PAUSE_PATIENCE: Duration = Duration::from_secs(5);
/// How long the span probe records.
const PROBE_RECORDING: Duration = Duration::from_millis(300);
/// The span the probe thread burns CPU in.
const PROBE_SPAN: &str = "torture_probe";

/// What happened to one agent.
pub struct Generation {
    pub lived: Duration,
    pub start_time: Duration,
    pub stop_time: Duration,
    /// The agent's stats just before it was stopped (after its audit).
    pub stats: Stats,
    pub audit: Option<Audit>,
    pub probe: Option<Probe>,
}

/// An exact accounting audit.
pub struct Audit {
    pub exact: bool,
    /// Whether the whole process was quiet (the final audit) rather than
    /// paused.
    pub final_quiet: bool,
    /// How long the collector took to catch up.
    pub waited: Duration,
}

/// The span probe's findings: CPU of the probe thread, and how much of it
/// carried the probe's span.
pub struct Probe {
    pub thread_cpu_ns: u64,
    pub in_span_cpu_ns: u64,
}

pub struct Lifecycle {
    end: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Generation>>,
}

/// Starts the lifecycle thread and returns once the first agent runs, or
/// `None` if it could not start.
pub fn start(harness: &Arc<Harness>) -> Option<Lifecycle> {
    let end = Arc::new(AtomicBool::new(false));
    let (first_started, started) = mpsc::channel();
    let thread = {
        let (harness, end) = (Arc::clone(harness), Arc::clone(&end));
        std::thread::Builder::new()
            .name("lifecycle".into())
            .spawn(move || run(&harness, &end, first_started))
            .expect("spawning the lifecycle thread")
    };
    match started.recv() {
        Ok(true) => Some(Lifecycle { end, thread }),
        _ => {
            let _ = thread.join();
            None
        }
    }
}

impl Lifecycle {
    /// Audits and stops the current agent (the workers must have ended) and
    /// returns the history of every agent.
    pub fn finish(self) -> Vec<Generation> {
        self.end.store(true, Relaxed);
        self.thread.thread().unpark();
        self.thread.join().unwrap_or_default()
    }
}

fn start_agent(harness: &Harness) -> Result<Agent, smolder::Error> {
    Agent::builder()
        .frequency_hz(harness.options.frequency_hz)
        .buffer_records(BUFFER_RECORDS)
        .http_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .start()
}

fn run(harness: &Harness, end: &AtomicBool, first_started: mpsc::Sender<bool>) -> Vec<Generation> {
    let activity = harness.activity("lifecycle");
    let collector = harness.activity("collector");
    let mut first_started = Some(first_started);
    let mut generations = Vec::new();
    let mut number = 0;
    while !end.load(Relaxed) {
        number += 1;
        let starting = Instant::now();
        let agent = match start_agent(harness) {
            Ok(agent) => agent,
            Err(error) => {
                harness.fail(format!("agent #{number} failed to start: {error}"));
                if let Some(first) = first_started.take() {
                    let _ = first.send(false);
                    return generations;
                }
                std::thread::sleep(Duration::from_millis(500));
                activity.bump();
                continue;
            }
        };
        let start_time = starting.elapsed();
        harness.agent.publish(number, agent.http_addr());
        if agent.http_addr().is_none() {
            harness.fail(format!("agent #{number} has no HTTP endpoint"));
        }
        if let Some(first) = first_started.take() {
            let _ = first.send(true);
        }
        activity.bump();
        let generation = live(
            harness, end, &activity, &collector, agent, number, start_time,
        );
        generations.push(generation);
        if end.load(Relaxed) {
            break;
        }
        // A moment without any agent, while the activities go on.
        std::thread::park_timeout(sys::random_duration(
            Duration::from_millis(20),
            Duration::from_millis(300),
        ));
        activity.bump();
    }
    generations
}

/// One agent's life, from just after its start to the checks after its
/// stop.
fn live(
    harness: &Harness,
    end: &AtomicBool,
    activity: &Activity,
    collector: &Arc<Activity>,
    agent: Agent,
    number: u64,
    start_time: Duration,
) -> Generation {
    let every = harness.options.restart_every;
    let lifetime = sys::random_duration(every / 2, every * 3 / 2);
    let born = Instant::now();
    let mut monitor = Monitor::new(Arc::clone(collector));
    let mut probe = None;
    // Once the workers are stopping, this agent lives until the end: it is
    // the one audited with the whole process quiet.
    while (born.elapsed() < lifetime || harness.workers_stopping()) && !end.load(Relaxed) {
        std::thread::park_timeout(Duration::from_millis(100));
        monitor.check(harness, number, &agent.stats());
        activity.bump();
        let probe_due = lifetime.saturating_sub(PROBE_RECORDING * 2);
        if probe.is_none() && born.elapsed() >= probe_due && !harness.workers_stopping() {
            probe = Some(span_probe(harness, &agent, number));
            activity.bump();
        }
    }
    let ending = end.load(Relaxed);
    let audit =
        (ending || number.is_multiple_of(2)).then(|| audit(harness, &agent, number, !ending));
    activity.bump();
    let stats = agent.stats();
    monitor.check(harness, number, &stats);
    let lived = born.elapsed();

    harness.agent.retract();
    let stopping = Instant::now();
    drop(agent);
    let stop_time = stopping.elapsed();
    activity.bump();
    check_stopped(harness, number);
    activity.bump();
    Generation {
        lived,
        start_time,
        stop_time,
        stats,
        audit,
        probe,
    }
}

/// The running bounds and collector liveness (see the module docs).
struct Monitor {
    collector: Arc<Activity>,
    last_collected: u64,
    reported: bool,
}

impl Monitor {
    fn new(collector: Arc<Activity>) -> Monitor {
        Monitor {
            collector,
            last_collected: 0,
            reported: false,
        }
    }

    fn check(&mut self, harness: &Harness, number: u64, stats: &Stats) {
        let (samples, collected) = (stats.samples, stats.samples_collected);
        let up_to_date = collected + IN_FLIGHT >= samples;
        if collected != self.last_collected || up_to_date {
            self.collector.bump();
        }
        self.last_collected = collected;
        let behind_limit = BUFFER_RECORDS as u64 + IN_FLIGHT;
        let problem = if collected > samples + IN_FLIGHT {
            Some(format!(
                "the collector received {collected} samples but the handler recorded only {samples}"
            ))
        } else if samples > collected + behind_limit {
            Some(format!(
                "the handler recorded {samples} samples, the collector received {collected}: \
                 {} are missing, more than the buffer holds ({behind_limit})",
                samples - collected
            ))
        } else {
            None
        };
        // One report per agent: a lost record stays lost.
        if let Some(problem) = problem.filter(|_| !self.reported) {
            self.reported = true;
            harness.fail(format!(
                "sample-accounting gap in agent #{number}: {problem}"
            ));
        }
    }
}

/// The exact audit (see the module docs). With `pause_workers`, the
/// workers are parked for its duration.
fn audit(harness: &Harness, agent: &Agent, number: u64, pause_workers: bool) -> Audit {
    let started = Instant::now();
    let paused = match pause_workers {
        true => harness.pause.pause_all(PAUSE_PATIENCE),
        false => Ok(()),
    };
    if let Err(running) = paused {
        harness.fail(format!(
            "audit of agent #{number}: {running} workers did not reach a pause point within {} s",
            PAUSE_PATIENCE.as_secs()
        ));
        return Audit {
            exact: false,
            final_quiet: false,
            waited: started.elapsed(),
        };
    }
    let quiet_since = Instant::now();
    let (exact, last) = loop {
        let stats = agent.stats();
        if stats.samples == stats.samples_collected {
            break (true, stats);
        }
        if quiet_since.elapsed() >= AUDIT_PATIENCE {
            break (false, stats);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if pause_workers {
        harness.pause.resume();
    }
    if !exact {
        harness.fail(format!(
            "sample-accounting gap in agent #{number}: after {} s with the host quiet, the handler \
             had recorded {} samples and the collector received {} (dropped: {:?})",
            AUDIT_PATIENCE.as_secs(),
            last.samples,
            last.samples_collected,
            last.dropped
        ));
    }
    Audit {
        exact,
        final_quiet: !pause_workers,
        waited: quiet_since.elapsed(),
    }
}

/// Checks that span tracking works in this agent: a new thread burns CPU
/// inside a span while the agent records, and (nearly) all of that
/// thread's samples must carry the span.
fn span_probe(harness: &Harness, agent: &Agent, number: u64) -> Probe {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, is_ready) = mpsc::sync_channel(1);
    let prober = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("span-probe".into())
            .spawn(move || {
                let span = tracing::info_span!("torture_probe");
                let _entered = span.enter();
                // Long enough for the collector to arm this thread's timer.
                sys::spin_cpu(Duration::from_millis(30), Duration::from_secs(2));
                let _ = ready.send(());
                while !stop.load(Relaxed) {
                    sys::burn(64);
                }
            })
            .expect("spawning the span probe")
    };
    let _ = is_ready.recv_timeout(Duration::from_secs(5));
    let recorded = agent.record(PROBE_RECORDING);
    stop.store(true, Relaxed);
    let _ = prober.join();
    let mut probe = Probe {
        thread_cpu_ns: 0,
        in_span_cpu_ns: 0,
    };
    let profile = match recorded {
        Ok(profile) => profile,
        Err(error) => {
            harness.fail(format!(
                "span probe: agent #{number} failed to record: {error}"
            ));
            return probe;
        }
    };
    for sample in profile
        .samples()
        .filter(|s| s.thread_name() == "span-probe")
    {
        let cpu = sample.cpu_time().as_nanos() as u64;
        probe.thread_cpu_ns += cpu;
        if sample.span_name() == Some(PROBE_SPAN) {
            probe.in_span_cpu_ns += cpu;
        }
    }
    if probe.thread_cpu_ns == 0 {
        harness.fail(format!(
            "span probe: agent #{number} recorded no sample of a thread busy for {} ms",
            PROBE_RECORDING.as_millis()
        ));
    } else if probe.in_span_cpu_ns * 10 < probe.thread_cpu_ns * 9 {
        harness.fail(format!(
            "span probe: in agent #{number}, only {:.0}% of the CPU of a thread inside span `{PROBE_SPAN}` \
             was attributed to the span",
            100.0 * probe.in_span_cpu_ns as f64 / probe.thread_cpu_ns as f64
        ));
    }
    probe
}

/// After a stop, the agent must have left `SIGPROF` ignored (never at its
/// fatal default), deleted every timer and ended every thread of its own.
fn check_stopped(harness: &Harness, number: u64) {
    let disposition = sys::sigprof_disposition();
    if disposition != Disposition::Ignored {
        harness.fail(format!(
            "after agent #{number} stopped, SIGPROF is {disposition:?}, not ignored"
        ));
    }
    if !wait_until(Duration::from_secs(1), || sys::posix_timers() == 0) {
        harness.fail(format!(
            "{} POSIX timers remain after agent #{number} stopped",
            sys::posix_timers()
        ));
    }
    if sys::itimer_prof_armed() {
        harness.fail(format!(
            "ITIMER_PROF is still armed after agent #{number} stopped"
        ));
    }
    let agent_threads = || -> Vec<String> {
        sys::threads_of("self")
            .into_iter()
            .filter(|(_, name)| name.starts_with("smolder"))
            .map(|(tid, name)| format!("{name} ({tid})"))
            .collect()
    };
    if !wait_until(Duration::from_secs(5), || agent_threads().is_empty()) {
        harness.fail(format!(
            "5 s after agent #{number} stopped, its threads still run: {}",
            agent_threads().join(", ")
        ));
    }
}

/// Polls `condition` every 10 ms for up to `patience`.
fn wait_until(patience: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
