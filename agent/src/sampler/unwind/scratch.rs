//! Pre-allocated working memory the handler borrows for one stack walk: the
//! unwind caches (they must be `&mut` during a walk, so each concurrent
//! handler needs its own) and a private stack to run the walk on.
//!
//! Why a private stack: the handler may run on a small `sigaltstack` (Rust
//! gives each thread 8 KiB, part of which the kernel's signal frame takes)
//! or at the deep end of the interrupted thread's own stack. DWARF evaluation
//! needs a few KiB; on a private stack with a guard page below it, its use is
//! independent of where the signal landed.
//!
//! Entries are claimed with one compare-and-swap; when all are in use (more
//! handlers running at once than entries) the sample is dropped and counted.

use std::io;

use crate::sampler::mapped::Mapping;

use super::WalkCaches;
use crate::sampler::SignalSafe;
use crate::sampler::counters::SampleCounters;
use crate::sync::{AtomicBool, Ordering, UnsafeCell};

/// Size of each private walk stack. The deepest walk measured needs about a
/// tenth of this (see the `walk_stack_use_is_small` test).
pub(crate) const WALK_STACK_BYTES: usize = 64 * 1024;
const GUARD_BYTES: usize = 4096;

struct Entry {
    /// Set while a handler owns the entry. Acquire on claim / release on
    /// return order the previous owner's cache writes before the next owner's
    /// reads.
    busy: AtomicBool,
    caches: UnsafeCell<WalkCaches>,
    stack: MappedStack,
    /// Counts of the samples taken with this entry; written only by its
    /// current owner.
    counters: SampleCounters,
}

/// The pool. Built before any timer is armed; freed after the last handler
/// has returned.
pub(crate) struct ScratchPool {
    entries: Box<[Entry]>,
}

// SAFETY: an entry's cache and stack are used only by the handler that won its
// `busy` flag, so sharing the pool between threads is sound.
unsafe impl Sync for ScratchPool {}
// SAFETY: as above; the mappings belong to the pool.
unsafe impl Send for ScratchPool {}

/// One claimed entry; dropping it returns the entry to the pool.
pub(crate) struct Scratch<'a> {
    entry: &'a Entry,
}

impl ScratchPool {
    /// `count` entries, each with a cache and a guarded private stack.
    pub(crate) fn new(count: usize) -> io::Result<Self> {
        let entries = (0..count)
            .map(|_| {
                Ok(Entry {
                    busy: AtomicBool::new(false),
                    caches: UnsafeCell::new(WalkCaches::new()),
                    stack: MappedStack::new(WALK_STACK_BYTES)?,
                    counters: SampleCounters::default(),
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(ScratchPool { entries })
    }

    /// Bytes held: caches (the framehop rule cache and DWARF row storage
    /// live behind boxes, so `size_of` alone undercounts) plus stacks.
    pub(crate) fn memory_bytes(&self) -> usize {
        const FRAMEHOP_CACHE_ESTIMATE: usize = 40 * 1024;
        let caches = FRAMEHOP_CACHE_ESTIMATE + super::compact::CompactRuleCache::memory_bytes();
        self.entries.len() * (caches + WALK_STACK_BYTES + GUARD_BYTES)
    }

    /// Every entry's counters, for summing.
    pub(crate) fn counters(&self) -> impl Iterator<Item = &SampleCounters> {
        self.entries.iter().map(|e| &e.counters)
    }

    /// Claims a free entry, starting the search at `hint` so that concurrent
    /// handlers on different threads tend to try different entries first.
    ///
    /// # Signal safety
    /// At most one CAS per entry; never waits.
    #[inline]
    pub(crate) fn try_acquire(&self, _cx: SignalSafe, hint: usize) -> Option<Scratch<'_>> {
        let n = self.entries.len();
        (0..n)
            .map(|i| &self.entries[(hint + i) % n])
            .find_map(|entry| {
                entry
                    .busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .ok()
                    .map(|_| Scratch { entry })
            })
    }
}

impl Scratch<'_> {
    /// Top of the private stack, 16-byte aligned.
    ///
    /// # Signal safety
    /// Pointer arithmetic on a mapping made before the timers were armed.
    pub(crate) fn stack_top(&self) -> *mut u8 {
        self.entry.stack.top()
    }

    /// The entry's counters; this `Scratch` is their only writer.
    ///
    /// # Signal safety
    /// Returns a reference.
    pub(crate) fn counters(&self) -> &SampleCounters {
        &self.entry.counters
    }

    /// Runs `f` with exclusive access to the entry's caches.
    ///
    /// # Signal safety
    /// Hands out the pre-allocated caches; what `f` does with them is its
    /// own to justify.
    pub(crate) fn with_caches<R>(&mut self, f: impl FnOnce(&mut WalkCaches) -> R) -> R {
        // SAFETY: the claim CAS made this `Scratch` the entry's only user, and
        // `&mut self` keeps the borrow unique.
        self.entry
            .caches
            .with_mut(|caches| f(unsafe { &mut *caches }))
    }
}

/// Returns the entry to the pool.
///
/// # Signal safety
/// One atomic store.
impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        self.entry.busy.store(false, Ordering::Release);
    }
}

/// A mapping with an inaccessible guard page below it, so an overflow
/// faults at once instead of corrupting a neighbour.
struct MappedStack {
    mapping: Mapping,
}

impl MappedStack {
    fn new(usable: usize) -> io::Result<Self> {
        let mapping = Mapping::new(usable + GUARD_BYTES)?;
        mapping.protect_start(GUARD_BYTES)?;
        Ok(MappedStack { mapping })
    }

    fn top(&self) -> *mut u8 {
        // SAFETY: one past the end of our own mapping; page-aligned, hence
        // 16-byte aligned.
        unsafe { self.mapping.as_ptr().add(self.mapping.len()) }
    }
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;

    #[test]
    fn entries_are_exclusive_until_released() {
        let pool = ScratchPool::new(2).unwrap();
        let cx = SignalSafe::for_tests();
        let a = pool.try_acquire(cx, 0).unwrap();
        let b = pool.try_acquire(cx, 0).unwrap();
        assert_ne!(a.stack_top(), b.stack_top());
        assert!(pool.try_acquire(cx, 1).is_none(), "both entries are taken");
        drop(a);
        assert!(pool.try_acquire(cx, 1).is_some());
    }
}
