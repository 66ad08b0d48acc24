//! One door to atomics and shared cells, so the lock-free structures can be
//! model-checked with [loom] by building with `RUSTFLAGS="--cfg smolder_loom"`
//! (a name of our own: `--cfg loom` would also switch tokio, a dependency,
//! into its own loom mode).
//!
//! Everything lock-free in the crate imports its atomics from here rather than
//! from `std::sync::atomic`. Under `cfg(smolder_loom)` the same names resolve to loom's
//! instrumented versions, which explore every interleaving the memory model
//! allows.
//!
//! [loom]: https://docs.rs/loom

#[cfg(smolder_loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(smolder_loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

#[cfg(not(smolder_loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

#[cfg(not(smolder_loom))]
pub(crate) use cell::UnsafeCell;

#[cfg(not(smolder_loom))]
mod cell {
    /// `core::cell::UnsafeCell` with loom's closure-based access API, so code
    /// written against loom compiles unchanged without it.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }

        /// Runs `f` with a shared raw pointer to the contents.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with an exclusive raw pointer to the contents.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Lets another thread run while waiting for it (agent threads only; never
/// called from a signal handler).
#[cfg(smolder_loom)]
pub(crate) fn backoff() {
    loom::thread::yield_now();
}

/// Lets another thread run while waiting for it (agent threads only; never
/// called from a signal handler).
#[cfg(not(smolder_loom))]
pub(crate) fn backoff() {
    std::thread::sleep(std::time::Duration::from_micros(200));
}

/// Pads and aligns a value to 128 bytes so that two hot atomics written by
/// different threads never share a cache line (adjacent-line prefetching on
/// x86_64 pulls pairs of 64-byte lines, hence 128).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Locks `mutex`, taking over the data of a thread that panicked while
/// holding it. The agent's shared state stays consistent across a panic (every
/// critical section leaves it whole), and an agent thread that panicked must
/// not take the HTTP endpoint or the exporter down with it.
pub(crate) fn lock<T: ?Sized>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `lock`, as [`lock`] does for a mutex.
pub(crate) fn write<T: ?Sized>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
