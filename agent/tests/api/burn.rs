//! CPU-burning workloads with names a profile can be searched for, and the
//! CPU time they measured themselves.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use smolder::{Agent, Profile};

/// The function the burner threads spend their CPU in. A name no other code
/// in the process has, so a frame that names it is this workload's.
pub const BURN_FUNCTION: &str = "smolder_api_test_ember_burn";

/// Spins through `rounds` of integer mixing that the optimiser cannot skip.
#[inline(never)]
pub fn smolder_api_test_ember_burn(rounds: u64) -> u64 {
    let mut x = black_box(rounds) | 1;
    for i in 0..rounds {
        x = black_box(x.rotate_left(5) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    x
}

/// The calling thread's CPU time, from the same clock the kernel's
/// per-thread CPU timers count.
pub fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; the clock id is constant.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The calling thread's kernel id, as profiles report it.
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// A thread burning CPU in [`BURN_FUNCTION`] until stopped.
pub struct Burner {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BurnLog>,
}

/// What a burner thread measured: when, by the wall clock, its CPU clock
/// read what, after each slice of burning.
pub struct BurnLog {
    pub tid: i32,
    pub name: String,
    /// (wall-clock time, thread CPU time), in order.
    points: Vec<(SystemTime, Duration)>,
}

impl Burner {
    /// Starts a thread named `name` (at most 15 bytes: the kernel's limit).
    pub fn start(name: &str) -> Burner {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let name = name.to_owned();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let mut points = Vec::with_capacity(1 << 16);
                    points.push((SystemTime::now(), thread_cpu()));
                    while !stop.load(Ordering::Relaxed) {
                        black_box(smolder_api_test_ember_burn(black_box(20_000)));
                        points.push((SystemTime::now(), thread_cpu()));
                    }
                    BurnLog {
                        tid: current_tid(),
                        name,
                        points,
                    }
                })
                .expect("spawning a burner thread")
        };
        Burner { stop, thread }
    }

    pub fn finish(self) -> BurnLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("burner thread")
    }
}

impl BurnLog {
    /// The CPU time burnt between the two wall-clock instants, as a range:
    /// from the log points just inside the window to those just outside it
    /// (a point is taken after every slice of burning, so the two differ by
    /// about two slices).
    pub fn cpu_between(&self, from: SystemTime, to: SystemTime) -> (Duration, Duration) {
        let cpu_at = |index: usize| self.points[index].1;
        let last = self.points.len() - 1;
        let first_after_start = self.points.iter().position(|p| p.0 >= from);
        let last_before_end = self.points.iter().rposition(|p| p.0 <= to);
        let inside = match (first_after_start, last_before_end) {
            (Some(a), Some(b)) if a < b => cpu_at(b) - cpu_at(a),
            _ => Duration::ZERO,
        };
        let outer_start = self.points.iter().rposition(|p| p.0 <= from).unwrap_or(0);
        let outer_end = self.points.iter().position(|p| p.0 >= to).unwrap_or(last);
        (
            inside,
            cpu_at(outer_end).saturating_sub(cpu_at(outer_start)),
        )
    }

    /// All the CPU time the thread measured.
    pub fn total_cpu(&self) -> Duration {
        self.points[self.points.len() - 1].1 - self.points[0].1
    }
}

/// Records `window` while `threads` burner threads burn, and returns the
/// profile with what each burner measured.
pub fn record_while_burning(
    agent: &Agent,
    window: Duration,
    threads: usize,
) -> (Profile, Vec<BurnLog>) {
    let burners: Vec<Burner> = (0..threads)
        .map(|i| Burner::start(&format!("ember-burner-{i}")))
        .collect();
    let recorded = agent.record(window);
    let logs = burners.into_iter().map(Burner::finish).collect();
    (recorded.expect("record"), logs)
}

/// The profile's samples (by weight) taken on `tid`, and of those the ones
/// with `function` in their stack.
pub fn thread_weight(profile: &Profile, tid: i32, function: &str) -> (u64, u64) {
    let mut all = 0;
    let mut with_function = 0;
    for sample in profile.samples().filter(|s| s.thread_id() == tid) {
        all += sample.sample_count();
        if sample.frames().any(|f| f.function().contains(function)) {
            with_function += sample.sample_count();
        }
    }
    (all, with_function)
}

/// Asserts that the agent is working: a short recording over a burning
/// thread finds the burning function.
pub fn assert_samples_the_burner(agent: &Agent) {
    let (profile, logs) = record_while_burning(agent, Duration::from_millis(400), 1);
    let (_, burning) = thread_weight(&profile, logs[0].tid, BURN_FUNCTION);
    assert!(
        burning > 0,
        "no sample of {BURN_FUNCTION} on the burner thread in {} samples ({:?} of its CPU):\n{}",
        profile.sample_count(),
        logs[0].total_cpu(),
        profile.folded()
    );
}

/// Asserts that the agent is sampling: while a thread burns, samples reach
/// the collector. Cheaper than [`assert_samples_the_burner`], which
/// symbolises a profile.
pub fn assert_sampling(agent: &Agent) {
    let before = agent.stats().samples_collected;
    let burner = Burner::start("ember-burner");
    crate::wait_until("samples from a burning thread", || {
        agent.stats().samples_collected >= before + 20
    });
    burner.finish();
}
