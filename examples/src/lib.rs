//! Helpers the example binaries and the end-to-end tests share.

use std::sync::{Condvar, Mutex, MutexGuard, WaitTimeoutResult};
use std::time::Duration;

/// CPU time the calling thread has used so far (its
/// `CLOCK_THREAD_CPUTIME_ID` clock): what the examples burn and measure,
/// since wall time on a shared machine says little about CPU.
pub fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; the thread CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

// === Locks that outlive a panic ===
//
// A lock is poisoned when a thread panics while holding it. In these
// programs that must not spread: the torture harness catches panics on
// purpose and reports every failure itself, so one failed check must not
// turn each later use of a shared list or counter into a second panic that
// hides the first; the demo shop keeps serving other requests; and the
// tests that take one lock to run one at a time must each pass or fail on
// their own, not fail because an earlier test panicked. Behind these locks
// are lists, counters, flags and the demo's stock counts: a panic can at
// worst leave one update unfinished, which no later reader relies on.

/// Locks `mutex`, also when it is poisoned (see above).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`Condvar::wait`], also when the lock is poisoned (see [`lock`]).
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`Condvar::wait_timeout_while`], also when the lock is poisoned (see
/// [`lock`]).
pub fn wait_timeout_while<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    condition: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
    condvar
        .wait_timeout_while(guard, timeout, condition)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
