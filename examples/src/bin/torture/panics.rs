//! Panics, caught: the agent's signal lands in the middle of unwinding.
//!
//! Each panic is raised at the bottom of a chain of 5 to 80 frames that
//! each own a destructor; the destructors burn a little CPU, so a good part
//! of each panic's time is spent in the unwinder (libgcc's
//! `_Unwind_RaiseException`, which takes the loader lock to find unwind
//! tables) and in landing pads. `catch_unwind` catches it at the top, and
//! the step checks that every destructor ran exactly once, i.e. that the
//! agent's handler (which must never use the libgcc unwinder itself)
//! disturbed nothing.
//!
//! The panic hook stays silent for these panics only: any other panic is
//! printed as usual and fails the run.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

use crate::harness::{Harness, WORKER_STACK, spawn_worker};
use crate::{alloc, sys};

#[derive(Default)]
pub struct Counters {
    pub caught: AtomicU64,
    /// Frames unwound, over all panics.
    pub frames_unwound: AtomicU64,
}

/// The payload of the harness's own panics.
struct TorturePanic;

/// Keeps the default hook for every panic but ours.
pub fn install_quiet_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<TorturePanic>() {
            default(info);
        }
    }));
}

const PANICS_PER_STEP: usize = 8;

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let activity = harness.activity("panic");
    (0..2)
        .map(|i| {
            spawn_worker(
                harness,
                &activity,
                &format!("panic-{i}"),
                WORKER_STACK,
                step,
            )
        })
        .collect()
}

thread_local! {
    /// Destructors run on this thread since the last reset.
    static DROPS: Cell<u64> = const { Cell::new(0) };
}

/// One frame's destructor: some allocation and some CPU while unwinding.
struct Guard {
    payload: Vec<u8>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        std::hint::black_box(sys::burn(4 + self.payload.len() as u64 % 8));
        DROPS.set(DROPS.get() + 1);
    }
}

#[inline(never)]
fn descend(depth: u64) -> u64 {
    let guard = Guard {
        payload: vec![depth as u8; 16 + (depth as usize % 5) * 64],
    };
    if depth == 0 {
        std::panic::panic_any(TorturePanic);
    }
    let below = descend(depth - 1);
    std::hint::black_box(&guard);
    below + 1
}

fn step(harness: &Harness) {
    let _span = tracing::info_span!("panic_cycle").entered();
    for _ in 0..PANICS_PER_STEP {
        let depth = sys::random_range(5, 80);
        DROPS.set(0);
        let caught = std::panic::catch_unwind(|| descend(depth));
        let drops = DROPS.get();
        match caught {
            Err(payload) if payload.is::<TorturePanic>() => {}
            Err(_) => {
                harness.fail("caught a panic that was not ours");
                continue;
            }
            Ok(_) => {
                harness.fail("a panic did not unwind");
                continue;
            }
        }
        if drops != depth + 1 {
            harness.fail(format!(
                "unwinding {} frames ran {drops} destructors",
                depth + 1
            ));
        }
        harness.panics.caught.fetch_add(1, Relaxed);
        harness.panics.frames_unwound.fetch_add(depth + 1, Relaxed);
    }
    alloc::burst(4);
}
