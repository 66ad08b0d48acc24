//! Hands read-only tables to the signal handler and frees them safely.
//!
//! The collector rebuilds the unwind tables when a library is loaded or new
//! thread stacks appear, and must free the old ones; a handler on another
//! thread may be reading them at that moment. [`Published`] is a two-slot
//! scheme with a reader count per slot (a small left-right / RCU hybrid):
//!
//! * A reader reads `current`, increments that slot's count, and re-reads
//!   `current`. Only if it is unchanged does it load the slot's pointer and
//!   use it; otherwise it backs out and retries (at most twice, then gives up
//!   and the sample is dropped). Readers never block.
//! * The (single) writer stores the new value in the other slot, flips
//!   `current`, then waits until the old slot's count reaches zero before
//!   freeing the old value. A reader that raced the flip either incremented
//!   before the writer's check (so the writer waits for it) or will see the
//!   flip on its re-check and never touch the old pointer.
//!
//! The argument is Dekker-style: each side writes (the reader its count,
//! the writer `current`) and then reads what the other wrote. Acquire and
//! release alone allow both reads to miss both writes, so each side puts a
//! `SeqCst` fence between its write and its read; the fences are totally
//! ordered, so at least one side sees the other. (Fences rather than `SeqCst`
//! accesses because loom models `SeqCst` fences exactly but treats `SeqCst`
//! accesses as acquire/release.) The pointers themselves are handed over
//! with release stores and acquire loads, and a reader's last use of a value
//! happens before the writer frees it through the release decrement of the
//! count and the writer's acquire load that sees zero.
//!
//! The writer's wait is bounded: a reader that never finishes (a thread
//! stopped by a debugger in the middle of a sample) makes the writer leak the
//! old value instead of blocking the collector forever.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sampler::SignalSafe;
use crate::sync::{AtomicPtr, AtomicUsize, CachePadded, Ordering, fence};

/// A value readable from signal handlers and replaceable from agent threads.
pub(crate) struct Published<T> {
    current: AtomicUsize,
    slots: [AtomicPtr<T>; 2],
    readers: [CachePadded<AtomicUsize>; 2],
    /// Serialises writers; never taken by readers.
    writer: Mutex<()>,
}

/// What happened to the previous value on [`Published::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retired {
    /// No reader was left; the old value was dropped.
    Freed,
    /// A reader did not finish in time; the old value was leaked so that it
    /// stays valid for that reader.
    Leaked,
}

/// Keeps a published value alive while a reader uses it.
pub(crate) struct ReadGuard<'a, T> {
    value: &'a T,
    count: &'a AtomicUsize,
}

impl<T> std::ops::Deref for ReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
    }
}

/// Ends the read.
///
/// # Signal safety
/// One atomic decrement.
impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release: our reads of the value happen before the writer's acquire
        // load that sees the count at zero, and so before it frees the value.
        self.count.fetch_sub(1, Ordering::Release);
    }
}

impl<T> Published<T> {
    pub(crate) fn new(value: Box<T>) -> Self {
        Published {
            current: AtomicUsize::new(0),
            slots: [
                AtomicPtr::new(Box::into_raw(value)),
                AtomicPtr::new(std::ptr::null_mut()),
            ],
            readers: [
                CachePadded(AtomicUsize::new(0)),
                CachePadded(AtomicUsize::new(0)),
            ],
            writer: Mutex::new(()),
        }
    }

    /// Borrows the current value.
    ///
    /// Returns `None` only when two writer flips raced this reader, which
    /// takes two publications within a few instructions.
    ///
    /// # Signal safety
    /// Atomics only, no waiting, at most two attempts.
    #[inline]
    pub(crate) fn read(&self, _cx: SignalSafe) -> Option<ReadGuard<'_, T>> {
        for _ in 0..2 {
            // Relaxed: a stale index is caught by the re-check below.
            let index = self.current.load(Ordering::Relaxed) & 1;
            let count = &self.readers[index];
            count.fetch_add(1, Ordering::Relaxed);
            // Orders our increment before the re-check, against the writer's
            // fence between its flip and its count check (module docs).
            fence(Ordering::SeqCst);
            if self.current.load(Ordering::Relaxed) & 1 == index {
                // Acquire: pairs with the writer's release store of the
                // pointer, so the value's contents are visible.
                let ptr = self.slots[index].load(Ordering::Acquire);
                // SAFETY: the writer frees a slot's value only after moving
                // `current` away from it and then seeing its count at zero; we
                // incremented the count and then saw `current` still on this
                // slot, so the value stays alive until our guard decrements.
                match unsafe { ptr.as_ref() } {
                    Some(value) => return Some(ReadGuard { value, count }),
                    None => {
                        count.fetch_sub(1, Ordering::Release);
                        return None;
                    }
                }
            }
            count.fetch_sub(1, Ordering::Release);
        }
        None
    }

    /// Replaces the value and retires the old one, waiting at most `patience`
    /// for readers still using it.
    ///
    /// Agent threads only: may sleep.
    pub(crate) fn publish(&self, value: Box<T>, patience: Duration) -> Retired {
        let _writer = crate::sync::lock(&self.writer);
        // Relaxed: only writers change `current`, and they hold the lock.
        let old_index = self.current.load(Ordering::Relaxed) & 1;
        let new_index = old_index ^ 1;
        // The other slot is always empty between publications (its value was
        // freed or leaked last time), so nothing is overwritten here.
        // Release: readers that acquire the pointer see the value's contents.
        self.slots[new_index].store(Box::into_raw(value), Ordering::Release);
        self.current.store(new_index, Ordering::Relaxed);
        // Orders the flip before the count check (module docs).
        fence(Ordering::SeqCst);

        let deadline = Instant::now() + patience;
        // Acquire: pairs with the readers' release decrements.
        while self.readers[old_index].load(Ordering::Acquire) != 0 {
            if Instant::now() >= deadline {
                self.slots[old_index].store(std::ptr::null_mut(), Ordering::Relaxed);
                return Retired::Leaked;
            }
            crate::sync::backoff();
        }
        let old = self.slots[old_index].swap(std::ptr::null_mut(), Ordering::Relaxed);
        if !old.is_null() {
            // SAFETY: `old` came from `Box::into_raw`, `current` no longer names
            // its slot and its reader count was zero after the flip, so no
            // reader holds or can obtain it.
            drop(unsafe { Box::from_raw(old) });
        }
        Retired::Freed
    }
}

impl<T> Drop for Published<T> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let ptr = slot.swap(std::ptr::null_mut(), Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: `&mut self` proves no reader guard is alive (guards
                // borrow `self`), and the pointer came from `Box::into_raw`.
                drop(unsafe { Box::from_raw(ptr) });
            }
        }
    }
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn readers_see_whole_values_while_writer_replaces_them() {
        use std::sync::atomic::AtomicU64;
        let published = Arc::new(Published::new(Box::new(vec![0u64; 64])));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (published, stop, reads) = (
                    Arc::clone(&published),
                    Arc::clone(&stop),
                    Arc::clone(&reads),
                );
                std::thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        if let Some(value) = published.read(SignalSafe::for_tests()) {
                            let first = value[0];
                            assert!(value.iter().all(|&v| v == first), "torn or freed value");
                            reads.fetch_add(1, SeqCst);
                        }
                    }
                })
            })
            .collect();
        // Publish only while readers are demonstrably reading.
        while reads.load(SeqCst) < 1000 {
            std::thread::yield_now();
        }
        for generation in 1..200u64 {
            let retired = published.publish(Box::new(vec![generation; 64]), Duration::from_secs(5));
            assert_eq!(retired, Retired::Freed);
        }
        stop.store(true, SeqCst);
        for reader in readers {
            reader.join().unwrap();
        }
        assert_eq!(
            published.read(SignalSafe::for_tests()).map(|v| v[0]),
            Some(199)
        );
    }

    #[test]
    fn stuck_reader_makes_writer_leak_not_block() {
        let published = Published::new(Box::new(1u32));
        let guard = published.read(SignalSafe::for_tests()).unwrap();
        let retired = published.publish(Box::new(2), Duration::from_millis(20));
        assert_eq!(retired, Retired::Leaked);
        assert_eq!(*guard, 1, "the leaked value is still valid for its reader");
        drop(guard);
        assert_eq!(published.read(SignalSafe::for_tests()).map(|v| *v), Some(2));
        assert_eq!(
            published.publish(Box::new(3), Duration::from_secs(1)),
            Retired::Freed
        );
    }
}

#[cfg(all(test, smolder_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;

    /// A value that knows whether it has been dropped.
    struct Value {
        number: u32,
        alive: Arc<AtomicBool>,
    }

    impl Drop for Value {
        fn drop(&mut self) {
            self.alive.store(false, SeqCst);
        }
    }

    /// A reader racing a publication sees either the old or the new value,
    /// never one that has been dropped.
    #[test]
    fn reader_races_publication() {
        loom::model(|| {
            let first_alive = Arc::new(AtomicBool::new(true));
            let first = Value {
                number: 1,
                alive: first_alive.clone(),
            };
            let published = Arc::new(Published::new(Box::new(first)));
            let reader = {
                let published = published.clone();
                loom::thread::spawn(move || {
                    published.read(SignalSafe::for_tests()).map(|v| {
                        assert!(v.alive.load(SeqCst), "read a dropped value");
                        v.number
                    })
                })
            };
            let second = Value {
                number: 2,
                alive: Arc::new(AtomicBool::new(true)),
            };
            assert_eq!(
                published.publish(Box::new(second), Duration::from_secs(3600)),
                Retired::Freed
            );
            let seen = reader.join().unwrap();
            assert!(matches!(seen, None | Some(1) | Some(2)));
            assert!(
                !first_alive.load(SeqCst),
                "the old value is dropped once no reader holds it"
            );
        });
    }
}
