//! The door between signal handlers and the agent state they use.
//!
//! A handler may run at any instant on any thread, including while the
//! agent is stopping and about to free its state. [`Gate`] makes that safe:
//! a handler *enters* (counts itself in) before it looks at the state, and
//! *leaves* when done; closing the gate hides the state from new handlers
//! and then waits for the count to reach zero before the owner frees it.
//!
//! It is the Dekker pattern: each side writes (the handler its count, the
//! closer the pointer) and then reads what the other wrote, with a `SeqCst`
//! fence between, so that at least one side sees the other. A handler that
//! saw the state is counted before the closer looks at the count. The loom
//! model at the end checks exactly that.

use std::time::{Duration, Instant};

use crate::sampler::SignalSafe;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering, fence};

/// See the module docs.
pub(crate) struct Gate<T> {
    target: AtomicPtr<T>,
    in_flight: AtomicUsize,
}

/// A handler's permission to use the state; leaving on drop.
pub(crate) struct Pass<'a, T> {
    gate: &'a Gate<T>,
    target: Option<&'a T>,
}

impl<T> Gate<T> {
    #[cfg(not(smolder_loom))]
    pub(crate) const fn new() -> Self {
        Gate {
            target: AtomicPtr::new(std::ptr::null_mut()),
            in_flight: AtomicUsize::new(0),
        }
    }

    #[cfg(smolder_loom)]
    pub(crate) fn new() -> Self {
        Gate {
            target: AtomicPtr::new(std::ptr::null_mut()),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Shows `target` to handlers. The caller keeps it alive until
    /// [`Gate::close`] has returned `true`.
    pub(crate) fn open(&self, target: *const T) {
        // Release: a handler that acquires the pointer sees the state built.
        self.target.store(target.cast_mut(), Ordering::Release);
    }

    /// Counts the caller in and returns the state, if the gate is open.
    ///
    /// # Signal safety
    /// Two atomic read-modify-writes, a fence and a load; never waits.
    #[inline(always)]
    pub(crate) fn enter(&self, _cx: SignalSafe) -> Pass<'_, T> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        // Orders the increment before the load (module docs).
        fence(Ordering::SeqCst);
        // Acquire pairs with `open`'s release store.
        let target = self.target.load(Ordering::Acquire);
        // SAFETY: a non-null target stays alive until `close` has seen the
        // count at zero, and we are counted (see the module docs).
        let target = unsafe { target.as_ref() };
        Pass { gate: self, target }
    }

    /// Hides the state from new handlers and waits, at most `patience`, for
    /// those still using it. `false` if some did not leave in time: the
    /// caller must then leak the state rather than free it.
    pub(crate) fn close(&self, patience: Duration) -> bool {
        self.target.store(std::ptr::null_mut(), Ordering::Relaxed);
        // Orders the store before the count check (module docs).
        fence(Ordering::SeqCst);
        let deadline = Instant::now() + patience;
        // Acquire: pairs with the handlers' release decrements, so all they
        // did with the state happens before the caller frees it.
        while self.in_flight.load(Ordering::Acquire) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            crate::sync::backoff();
        }
        true
    }
}

impl<T> Gate<T> {
    /// In a child process just forked: the agent's threads and timers stayed
    /// in the parent, and handlers that were running on other threads at the
    /// fork never finish here. Forget both. Atomic stores only: this runs in
    /// `pthread_atfork`'s child hook.
    pub(crate) fn reset_after_fork(&self) {
        self.target.store(std::ptr::null_mut(), Ordering::Relaxed);
        self.in_flight.store(0, Ordering::Release);
    }
}

impl<T> Pass<'_, T> {
    /// The state, if the gate was open.
    ///
    /// # Signal safety
    /// Returns a field.
    #[inline(always)]
    pub(crate) fn target(&self) -> Option<&T> {
        self.target
    }
}

/// Leaving the gate.
///
/// # Signal safety
/// One atomic decrement.
impl<T> Drop for Pass<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        // Release: pairs with `close`'s acquire load.
        self.gate.in_flight.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(all(test, smolder_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    /// A handler racing a close either sees nothing or sees state that is
    /// still alive when it reads it; the closer frees only after.
    #[test]
    fn handler_races_close() {
        loom::model(|| {
            let gate = Arc::new(Gate::new());
            let alive = Arc::new(AtomicBool::new(true));
            gate.open(Arc::as_ptr(&alive));
            let handler = {
                let gate = gate.clone();
                loom::thread::spawn(move || {
                    let pass = gate.enter(SignalSafe::for_tests());
                    if let Some(state) = pass.target() {
                        assert!(
                            state.load(Ordering::Relaxed),
                            "state read after it was freed"
                        );
                    }
                })
            };
            assert!(gate.close(Duration::from_secs(3600)));
            // "Free" the state: any handler that saw it must be done.
            alive.store(false, Ordering::Relaxed);
            handler.join().unwrap();
        });
    }
}
