//! Thread churn: thousands of short threads, created and joined.
//!
//! The agent arms a timer for a thread only when its collector first sees
//! it (every 25 ms while threads come and go), so two drivers cover both
//! cases:
//!
//! * `churn-short` starts batches of threads that live well under a
//!   millisecond: most are never sampled, but each registers itself with the
//!   agent when it enters its first span, and the agent must cope with
//!   threads that vanish before it ever lists them.
//! * `churn-sampled` starts threads that burn 20–60 ms of CPU, long enough
//!   to get a timer, and return straight from the busy loop, so their timer
//!   may fire as they exit. One thread per batch makes sure of it: it
//!   blocks `SIGPROF` and spins until the timer's signal is pending, then
//!   exits with the signal still pending.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::{Harness, WORKER_STACK, spawn_worker};
use crate::{alloc, sys};

#[derive(Default)]
pub struct Counters {
    /// Threads created and joined, both drivers.
    pub threads: AtomicU64,
    /// Threads that ran long enough to be sampled.
    pub sampled_threads: AtomicU64,
    /// Threads that exited with `SIGPROF` pending.
    pub exited_with_signal_pending: AtomicU64,
    /// Threads that tried to, but saw no signal within their CPU budget.
    pub pending_not_reached: AtomicU64,
}

const SHORT_BATCH: usize = 16;
const SAMPLED_BATCH: usize = 3;
const CHILD_STACK: usize = 256 * 1024;

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let short = harness.activity("churn-short");
    let sampled = harness.activity("churn-sampled");
    let mut registered = false;
    vec![
        spawn_worker(
            harness,
            &short,
            "churn-short",
            WORKER_STACK,
            move |harness| {
                if !registered {
                    // Stray signals (see `eintr`) interrupt its joins.
                    harness.eintr.add_target(sys::gettid());
                    registered = true;
                }
                short_batch(harness);
            },
        ),
        spawn_worker(
            harness,
            &sampled,
            "churn-sampled",
            WORKER_STACK,
            sampled_batch,
        ),
    ]
}

fn spawn_child(name: &str, body: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(CHILD_STACK)
        .spawn(body)
        .expect("spawning a churn thread")
}

fn join_all(harness: &Harness, children: Vec<JoinHandle<()>>) {
    let count = children.len() as u64;
    for child in children {
        if child.join().is_err() {
            harness.fail("a churn thread panicked");
        }
    }
    harness.churn.threads.fetch_add(count, Relaxed);
}

fn short_batch(harness: &Harness) {
    let _span = tracing::info_span!("churn_batch").entered();
    let children = (0..SHORT_BATCH)
        .map(|_| {
            spawn_child("churn", || {
                let _span = tracing::info_span!("churn_short").entered();
                alloc::burst(4);
                std::hint::black_box(sys::burn(sys::random_range(20, 200)));
            })
        })
        .collect();
    join_all(harness, children);
}

fn sampled_batch(harness: &Harness) {
    let _span = tracing::info_span!("churn_batch").entered();
    let mut children: Vec<JoinHandle<()>> = (0..SAMPLED_BATCH)
        .map(|_| {
            let cpu = Duration::from_millis(sys::random_range(20, 60));
            spawn_child("churn-sampled", move || {
                let _span = tracing::info_span!("churn_sampled").entered();
                alloc::burst(16);
                // Returns straight from the busy loop: the timer may fire
                // while the thread is exiting.
                sys::spin_cpu(cpu, Duration::from_secs(1));
            })
        })
        .collect();
    let (pending, not_reached) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (pending, not_reached) = (Arc::clone(&pending), Arc::clone(&not_reached));
        children.push(spawn_child("churn-pending", move || {
            let _span = tracing::info_span!("churn_pending").entered();
            if exit_with_sigprof_pending() {
                pending.fetch_add(1, Relaxed);
            } else {
                not_reached.fetch_add(1, Relaxed);
            }
        }));
    }
    let count = children.len() as u64;
    join_all(harness, children);
    let c = &harness.churn;
    c.sampled_threads.fetch_add(count, Relaxed);
    c.exited_with_signal_pending
        .fetch_add(pending.load(Relaxed), Relaxed);
    c.pending_not_reached
        .fetch_add(not_reached.load(Relaxed), Relaxed);
}

/// Blocks `SIGPROF` and burns CPU until a timer signal is pending (at most
/// 200 ms of CPU). Returns whether one was; the thread then ends with it
/// pending, never delivered.
fn exit_with_sigprof_pending() -> bool {
    sys::block_sigprof();
    let (cpu_start, wall_start) = (sys::thread_cpu(), std::time::Instant::now());
    while sys::thread_cpu() - cpu_start < Duration::from_millis(200)
        && wall_start.elapsed() < Duration::from_secs(2)
    {
        sys::burn(16);
        if sys::sigprof_pending() {
            return true;
        }
    }
    false
}
