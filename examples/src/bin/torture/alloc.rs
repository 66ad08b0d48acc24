//! Allocator pressure, from every thread.
//!
//! Every activity's threads call [`burst`] (small, medium and `mmap`-sized
//! blocks, allocated, touched and freed), so the agent's signals keep
//! landing inside `malloc` and `free` everywhere. Two dedicated `alloc`
//! workers also keep a bounded live set of blocks that they replace at
//! random (fragmentation, reallocation), and hand blocks to a peer thread
//! that frees them and hands new ones back (cross-thread frees, which take
//! the slow paths of glibc's arenas). The live set is bounded, so RSS must
//! stay flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::harness::{Harness, WORKER_STACK, spawn_worker};
use crate::sys;

#[derive(Default)]
pub struct Counters {
    /// Blocks allocated by the dedicated workers (bursts are not counted).
    pub allocations: AtomicU64,
    /// Blocks freed on a thread other than the one that allocated them.
    pub cross_thread_frees: AtomicU64,
}

/// Blocks each dedicated worker keeps alive.
const LIVE_BLOCKS: usize = 512;
/// Replacements per step.
const STEP_OPERATIONS: usize = 2000;
/// Blocks handed to the peer per step.
const HANDED_OVER: usize = 64;

/// A size drawn from a mix of small, medium and large (`mmap`ed) blocks.
fn random_size() -> usize {
    match sys::random_range(0, 100) {
        0..70 => sys::random_range(8, 256) as usize,
        70..96 => sys::random_range(256, 16 * 1024) as usize,
        _ => sys::random_range(128 * 1024, 256 * 1024) as usize,
    }
}

/// A block of `size` bytes with every page touched, so it is resident.
fn block(size: usize) -> Vec<u8> {
    let mut block = vec![0u8; size];
    for i in (0..size).step_by(4096) {
        block[i] = i as u8 | 1;
    }
    block
}

/// Allocates, touches and frees `rounds` blocks of mixed sizes, plus a
/// growing vector and some formatting.
pub fn burst(rounds: usize) {
    let mut held = Vec::with_capacity(rounds);
    for i in 0..rounds {
        held.push(block(random_size()));
        let mut growing = Vec::new();
        for j in 0..(i % 7) * 16 {
            growing.push(j as u64);
        }
        std::hint::black_box((format!("burst {i} {}", growing.len()), growing));
    }
    std::hint::black_box(held);
}

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let activity = harness.activity("alloc");
    (0..2)
        .map(|i| {
            let mut state = Dedicated::new(i);
            spawn_worker(
                harness,
                &activity,
                &format!("alloc-{i}"),
                WORKER_STACK,
                move |harness| state.step(harness),
            )
        })
        .collect()
}

/// A dedicated worker's state: its live set and the channel to its peer.
struct Dedicated {
    live: Vec<Vec<u8>>,
    to_peer: mpsc::SyncSender<Vec<Vec<u8>>>,
    from_peer: mpsc::Receiver<Vec<Vec<u8>>>,
}

impl Dedicated {
    fn new(index: usize) -> Dedicated {
        let (to_peer, peer_inbox) = mpsc::sync_channel::<Vec<Vec<u8>>>(1);
        let (peer_outbox, from_peer) = mpsc::sync_channel(1);
        // The peer ends when this worker's state is dropped (its sender
        // with it).
        std::thread::Builder::new()
            .name(format!("alloc-peer-{index}"))
            .spawn(move || {
                for blocks in peer_inbox {
                    let _span = tracing::info_span!("alloc_peer").entered();
                    let fresh: Vec<Vec<u8>> = blocks.iter().map(|b| block(b.len())).collect();
                    drop(blocks);
                    if peer_outbox.send(fresh).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning an allocator peer");
        Dedicated {
            live: (0..LIVE_BLOCKS).map(|_| block(random_size())).collect(),
            to_peer,
            from_peer,
        }
    }

    fn step(&mut self, harness: &Harness) {
        let _span = tracing::info_span!("alloc_step").entered();
        for _ in 0..STEP_OPERATIONS {
            let slot = sys::random_range(0, self.live.len() as u64) as usize;
            if let Some(live) = self.live.get_mut(slot) {
                *live = block(random_size());
            }
        }
        harness
            .alloc
            .allocations
            .fetch_add(STEP_OPERATIONS as u64, Relaxed);
        // Hand some blocks over; take back the peer's fresh ones.
        let handed: Vec<Vec<u8>> = self.live.drain(..HANDED_OVER).collect();
        if self.to_peer.send(handed).is_err() {
            harness.fail("an allocator peer thread ended");
            return;
        }
        match self.from_peer.recv() {
            Ok(fresh) => self.live.extend(fresh),
            Err(_) => harness.fail("an allocator peer thread ended"),
        }
        harness
            .alloc
            .cross_thread_frees
            .fetch_add(HANDED_OVER as u64, Relaxed);
        harness
            .alloc
            .allocations
            .fetch_add(HANDED_OVER as u64, Relaxed);
        burst(8);
    }
}
