//! The registry of threads the signal handler consults.
//!
//! Threads the collector has listed are *registered*: the table of stack
//! regions published to the handler was read after the thread existed, so
//! its stack is in that table. The handler looks a thread up with atomics
//! only; registration and removal happen on the agent's threads.
//!
//! The registry is an open-addressing hash table of kernel thread ids with a
//! fixed capacity ([`MAX_THREADS`]), probed at most [`MAX_PROBE`] slots from
//! a thread's hash, so a lookup costs a few loads however full the table
//! is. Threads register when the collector lists them or when they first
//! enter a span; the collector removes those that have exited, including
//! ones too short-lived to have been listed. Each slot also holds the thread's
//! published span context (see `span_context`), which the tracing layer
//! writes and the handler reads. A thread that finds the table full is
//! simply not registered: it is not sampled by the `setitimer` engine and its
//! samples carry no span.

use std::sync::OnceLock;

use crate::sampler::span_context::SpanCell;
use crate::sync::{AtomicBool, AtomicI32, Ordering};

/// Threads the registry can hold at once.
pub(crate) const MAX_THREADS: usize = 2048;

/// Slots looked at from a thread's hash position, at most.
pub(crate) const MAX_PROBE: usize = 64;

const EMPTY: i32 = 0;
/// A freed slot: lookups probe past it, registrations may reuse it.
const FREED: i32 = -1;

/// One registered thread.
pub(crate) struct ThreadSlot {
    tid: AtomicI32,
    /// The thread's current span, for its samples.
    pub(crate) span: SpanCell,
}

impl ThreadSlot {
    /// The kernel id of the thread owning the slot (`0` or negative: none).
    pub(crate) fn tid(&self) -> i32 {
        self.tid.load(Ordering::Relaxed)
    }
}

/// Fixed-capacity table of registered threads.
pub(crate) struct ThreadRegistry {
    slots: Box<[ThreadSlot]>,
    /// Serialises registration and removal (agent threads, and a thread
    /// registering itself on its first span) so a thread id can never occupy
    /// two slots. Lookups take no lock. A spin flag rather than a `Mutex`:
    /// after `fork`, the child must be able to release it even if a thread
    /// that no longer exists held it (see [`ThreadRegistry::reset_after_fork`]).
    writers: AtomicBool,
}

/// The process-wide registry. Built on first use outside any signal
/// handler, never freed: later agents in the same process reuse it.
pub(crate) fn registry() -> &'static ThreadRegistry {
    REGISTRY.get_or_init(|| ThreadRegistry::with_capacity(MAX_THREADS))
}

static REGISTRY: OnceLock<ThreadRegistry> = OnceLock::new();

/// [`ThreadRegistry::reset_after_fork`] on the registry, if it exists (never
/// creating it: this runs in a forked child, where allocating is unsafe).
pub(crate) fn reset_registry_after_fork() {
    if let Some(registry) = REGISTRY.get() {
        registry.reset_after_fork();
    }
}

impl ThreadRegistry {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        ThreadRegistry {
            slots: (0..capacity)
                .map(|_| ThreadSlot {
                    tid: AtomicI32::new(EMPTY),
                    span: SpanCell::new(),
                })
                .collect(),
            writers: AtomicBool::new(false),
        }
    }

    fn probe(&self, tid: i32) -> impl Iterator<Item = usize> + '_ {
        let n = self.slots.len();
        // Fibonacci hashing spreads sequential thread ids over the table.
        let start = ((tid as u32).wrapping_mul(0x9E37_79B9) as usize) % n;
        (0..n.min(MAX_PROBE)).map(move |i| (start + i) % n)
    }

    fn lock_writers(&self) -> WritersGuard<'_> {
        // Acquire: pairs with the release in `WritersGuard::drop`.
        while self
            .writers
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        WritersGuard(&self.writers)
    }

    /// In a child process just forked: only the forking thread exists, so
    /// every registration (and a writer lock some other thread held) is
    /// void. Atomic stores only: this runs in `pthread_atfork`'s child hook.
    pub(crate) fn reset_after_fork(&self) {
        for slot in self.slots.iter() {
            slot.tid.store(EMPTY, Ordering::Relaxed);
        }
        self.writers.store(false, Ordering::Release);
    }

    /// The slot of `tid`, if registered.
    ///
    /// # Signal safety
    /// Atomic loads only; at most [`MAX_PROBE`] of them (usually one).
    #[inline]
    pub(crate) fn find(&self, tid: i32) -> Option<usize> {
        for index in self.probe(tid) {
            // Relaxed: registration happens-before the thread is sampled
            // through the timer set-up (or, for a thread registering itself,
            // program order on that thread), not through this load.
            match self.slots[index].tid.load(Ordering::Relaxed) {
                EMPTY => return None,
                found if found == tid => return Some(index),
                _ => {}
            }
        }
        None
    }

    /// Whether `tid` is registered.
    ///
    /// # Signal safety
    /// As [`Self::find`].
    pub(crate) fn contains(&self, tid: i32) -> bool {
        self.find(tid).is_some()
    }

    /// The slot at `index` (from [`Self::find`] or [`Self::register`]).
    ///
    /// # Signal safety
    /// An index into the fixed table.
    pub(crate) fn slot(&self, index: usize) -> &ThreadSlot {
        &self.slots[index]
    }

    /// Registers `tid`, returning its slot; `None` when no slot within
    /// [`MAX_PROBE`] of its hash is free.
    pub(crate) fn register(&self, tid: i32) -> Option<usize> {
        let _guard = self.lock_writers();
        let mut free = None;
        for index in self.probe(tid) {
            match self.slots[index].tid.load(Ordering::Relaxed) {
                found if found == tid => return Some(index),
                FREED => {
                    free.get_or_insert(index);
                }
                EMPTY => {
                    free.get_or_insert(index);
                    break;
                }
                _ => {}
            }
        }
        let index = free?;
        self.slots[index].span.clear();
        self.slots[index].tid.store(tid, Ordering::Relaxed);
        Some(index)
    }

    /// Removes `tid`, if registered.
    pub(crate) fn unregister(&self, tid: i32) {
        let _guard = self.lock_writers();
        if let Some(index) = self.find(tid) {
            self.slots[index].tid.store(FREED, Ordering::Relaxed);
        }
    }

    /// Removes every registered thread for which `alive` says no.
    pub(crate) fn retain(&self, mut alive: impl FnMut(i32) -> bool) -> usize {
        let _guard = self.lock_writers();
        let mut removed = 0;
        for slot in self.slots.iter() {
            let tid = slot.tid.load(Ordering::Relaxed);
            if tid > 0 && !alive(tid) {
                slot.tid.store(FREED, Ordering::Relaxed);
                removed += 1;
            }
        }
        removed
    }

    /// Empties the table (an agent stopping).
    pub(crate) fn clear(&self) {
        let _guard = self.lock_writers();
        for slot in self.slots.iter() {
            slot.tid.store(EMPTY, Ordering::Relaxed);
        }
    }

    /// Bytes held by the table.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<ThreadSlot>()
    }
}

/// Holds the registry's writer flag.
struct WritersGuard<'a>(&'a AtomicBool);

impl Drop for WritersGuard<'_> {
    fn drop(&mut self) {
        // Release: our writes to the table happen before the next writer's.
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;
    #[test]
    fn register_lookup_unregister() {
        let registry = ThreadRegistry::with_capacity(8);
        for tid in [5, 13, 21] {
            assert!(registry.register(tid).is_some());
        }
        assert!(registry.contains(13));
        registry.unregister(13);
        assert!(!registry.contains(13));
        assert!(
            registry.contains(21),
            "probe must continue past a freed slot"
        );
        let slot = registry.register(13).unwrap();
        assert_eq!(registry.slot(slot).tid(), 13);
        assert_eq!(registry.find(13), Some(slot));
    }

    #[test]
    fn dead_threads_are_reaped_and_their_slots_reused() {
        let registry = ThreadRegistry::with_capacity(16);
        for tid in 1..=16 {
            assert!(registry.register(tid).is_some());
        }
        assert_eq!(registry.register(100), None, "full");
        assert_eq!(registry.retain(|tid| tid % 2 == 0), 8);
        assert!(registry.register(100).is_some());
        assert!((2..=16).step_by(2).all(|tid| registry.contains(tid)));
        assert!(!registry.contains(3));
    }

    #[test]
    fn full_table_refuses_new_threads() {
        let registry = ThreadRegistry::with_capacity(4);
        for tid in 1..=4 {
            assert!(registry.register(tid).is_some());
        }
        assert_eq!(registry.register(99), None);
        assert_eq!(
            registry.register(3),
            registry.find(3),
            "re-registering is idempotent"
        );
        assert!((1..=4).all(|tid| registry.contains(tid)));
    }
}
