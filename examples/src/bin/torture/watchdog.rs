//! The watchdog: fails the run when any activity stops making progress,
//! and samples the process's resources every second.
//!
//! Every second it reads each activity's progress counter; one that has not
//! moved for [`STALL_LIMIT`] is a deadlock (or a livelock) and ends the run
//! at once: the watchdog prints which activity stalled and what every thread
//! is doing (state, kernel wait channel, syscall), then `_exit`s without
//! running destructors, which a deadlocked process may never finish. It
//! writes with `write(2)`, since a stuck thread may hold stdout's lock.
//!
//! During shutdown, activities stop by design; the watchdog then only
//! enforces a deadline on the whole shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smolder_examples::lock;

use crate::harness::Harness;
use crate::sys;

/// No progress for this long is a deadlock.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Exit status of a run the watchdog ended.
const EXIT_DEADLOCK: i32 = 3;

/// One resource reading.
#[derive(Debug, Clone, Copy)]
pub struct ResourceSample {
    /// Since the workload started.
    pub at: Duration,
    pub rss_kib: u64,
    /// Bytes allocated with malloc, and bytes malloc keeps free.
    pub malloc_used: u64,
    pub malloc_free: u64,
    pub fds: usize,
    pub threads: u64,
}

/// The readings of the whole run, one per second.
pub struct Resources {
    pub samples: Vec<ResourceSample>,
}

struct Shared {
    harness: Arc<Harness>,
    shutdown_deadline: Mutex<Option<Instant>>,
    done: AtomicBool,
    /// The readings so far (also read by the fatal path).
    samples: Mutex<Vec<ResourceSample>>,
}

pub struct Watchdog {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

pub fn start(harness: &Arc<Harness>) -> Watchdog {
    let shared = Arc::new(Shared {
        harness: Arc::clone(harness),
        shutdown_deadline: Mutex::new(None),
        done: AtomicBool::new(false),
        samples: Mutex::new(Vec::new()),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(&shared))
            .expect("spawning the watchdog")
    };
    Watchdog { shared, thread }
}

impl Watchdog {
    /// From now on activities may stop; the rest of the run must finish
    /// within `limit`.
    pub fn begin_shutdown(&self, limit: Duration) {
        *lock(&self.shared.shutdown_deadline) = Some(Instant::now() + limit);
    }

    /// Prints every activity's progress count on one line.
    pub fn print_progress(&self) {
        let line: Vec<String> = self
            .shared
            .harness
            .activities()
            .iter()
            .map(|a| format!("{} {}", a.name, a.progress()))
            .collect();
        println!("           progress: {}", line.join(", "));
    }

    /// Stops watching and returns the resource readings.
    pub fn finish(self) -> Resources {
        self.shared.done.store(true, Relaxed);
        self.thread.thread().unpark();
        let _ = self.thread.join();
        let samples = std::mem::take(&mut *lock(&self.shared.samples));
        Resources { samples }
    }
}

fn watch(shared: &Shared) {
    let harness = &shared.harness;
    // name -> (progress, when it last moved)
    let mut last_moved: HashMap<&'static str, (u64, Instant)> = HashMap::new();
    let mut next = Instant::now() + Duration::from_secs(1);
    while !shared.done.load(Relaxed) {
        std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs(1);
        record_resources(shared);
        let deadline = *lock(&shared.shutdown_deadline);
        if let Some(deadline) = deadline {
            if Instant::now() > deadline {
                fatal(
                    shared,
                    "shutdown hung: the activities and the last agent did not stop within 60 s",
                );
            }
            continue;
        }
        for activity in harness.activities() {
            let progress = activity.progress();
            let entry = last_moved
                .entry(activity.name)
                .or_insert((progress, Instant::now()));
            if entry.0 != progress {
                *entry = (progress, Instant::now());
            } else if entry.1.elapsed() >= STALL_LIMIT {
                fatal(
                    shared,
                    &format!(
                        "deadlock: activity `{}` made no progress for {:.1} s (stuck at {progress} steps)",
                        activity.name,
                        entry.1.elapsed().as_secs_f64()
                    ),
                );
            }
        }
    }
}

fn record_resources(shared: &Shared) {
    let (malloc_used, malloc_free) = sys::malloc_usage();
    let sample = ResourceSample {
        at: shared.harness.started.elapsed(),
        rss_kib: sys::rss_kib().unwrap_or(0),
        malloc_used,
        malloc_free,
        fds: sys::open_fds().unwrap_or(0),
        threads: sys::thread_count().unwrap_or(0),
    };
    lock(&shared.samples).push(sample);
}

/// Reports a deadlock and ends the process at once.
fn fatal(shared: &Shared, what: &str) -> ! {
    let harness = &shared.harness;
    let mut text = format!(
        "\n[{:7.1}s] FATAL: {what}\nactivity progress:\n",
        harness.now_s()
    );
    for activity in harness.activities() {
        text.push_str(&format!(
            "  {:<16} {}\n",
            activity.name,
            activity.progress()
        ));
    }
    text.push_str("threads (tid, name, state, wchan, syscall):\n");
    text.push_str(&sys::describe_threads("self"));
    let last = shared
        .samples
        .try_lock()
        .ok()
        .and_then(|s| s.last().copied());
    if let Some(last) = last {
        text.push_str(&format!(
            "rss {} MiB, {} fds, {} threads\n",
            last.rss_kib / 1024,
            last.fds,
            last.threads
        ));
    }
    text.push_str("torture: FAIL (watchdog)\n");
    sys::raw_print(&text);
    // SAFETY: `_exit` ends the process without running destructors or
    // atexit handlers, which threads stuck on locks could block forever.
    unsafe { libc::_exit(EXIT_DEADLOCK) }
}
