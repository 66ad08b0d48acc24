//! Recursion deeper than the agent's depth limit (128 frames by default).
//!
//! Each step recurses 150 to 3000 frames, each with some stack of its own,
//! and burns CPU at the bottom. The agent must cut those stacks at its
//! limit (keeping the leaf end, marking them truncated), in bounded time,
//! without ever walking off its scratch stack; the report shows the
//! truncated count, which must not be zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::{Harness, spawn_worker};
use crate::sys;

#[derive(Default)]
pub struct Counters {
    pub recursions: AtomicU64,
    pub deepest: AtomicU64,
}

/// Enough for 3000 frames of about 200 bytes, with room to spare.
const DEEP_STACK: usize = 16 << 20;

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let activity = harness.activity("deep");
    vec![spawn_worker(harness, &activity, "deep", DEEP_STACK, step)]
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [depth; 16];
    std::hint::black_box(&mut frame);
    if depth == 0 {
        let _span = tracing::info_span!("deep_leaf").entered();
        sys::spin_cpu(Duration::from_millis(2), Duration::from_millis(100));
        return frame[3];
    }
    let below = recurse(depth - 1);
    std::hint::black_box(&frame);
    below.wrapping_add(frame[7])
}

fn step(harness: &Harness) {
    let depth = sys::random_range(150, 3000);
    std::hint::black_box(recurse(depth));
    harness.deep.recursions.fetch_add(1, Relaxed);
    harness.deep.deepest.fetch_max(depth, Relaxed);
}
