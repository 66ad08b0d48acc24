//! Stages 0 to 2 of the data flow, and the one tree of the crate whose code
//! runs where the host cannot be trusted: the timers that interrupt threads,
//! the `SIGPROF` handler, the stack walk, and the lock-free buffer the
//! handler writes samples into. Also here: what those need set up for them
//! on the agent's threads (installing the handler, copying unwind tables,
//! the thread registry) and the host-thread side of what the handler reads
//! (the span context the tracing layer publishes).
//!
//! # What may run on the signal path
//!
//! The handler interrupts arbitrary host code: inside `malloc`, holding the
//! loader lock, halfway through a panic's unwind. So everything it reaches
//! follows these rules, without exception:
//!
//! * **No allocation or freeing.** Everything used is allocated before the
//!   first timer is armed (`SamplerShared`, the buffer's records, the scratch
//!   caches and stacks) and freed only after the last handler has returned.
//! * **No locks, no waiting.** Shared state is reached through atomics; every
//!   contended resource is *try*-acquired, and failure drops the sample and
//!   counts the drop.
//! * **No lazy initialisation** (no `OnceLock::get_or_init`, no first-use
//!   `thread_local!`), no formatting, no std I/O, no panics (a panic here
//!   would abort the host).
//! * **Syscalls only if async-signal-safe**: `clock_gettime` (vDSO) and
//!   `gettid`. No libgcc unwinding and no `dl_iterate_phdr`: they take the
//!   loader lock the interrupted thread may hold.
//! * **Every read of the interrupted stack is validated** (see
//!   `unwind::regions`); no other foreign memory is read.
//! * **`errno` is saved and restored**, so the interrupted code never sees a
//!   value we changed.
//! * **Signals that are not ours are ignored**: a `SIGPROF` counts only if
//!   it carries our timers' cookie (see [`cookie`]) or, with the `setitimer`
//!   engine, came from the kernel's profiling timer.
//!
//! # How the rules show in the code
//!
//! * Functions that only the signal path calls take a [`SignalSafe`] token.
//!   Only the handler's entry point makes one, so a call from anywhere else
//!   does not compile without writing `SignalSafe` there, where a reviewer
//!   sees it.
//! * Functions the signal path shares with other threads (the clocks, the
//!   registry lookups, the counters, the buffer's claim) carry a
//!   `# Signal safety` note saying why they may run there.
//! * `tests/handler_alloc.rs` runs the agent at a high rate under an
//!   allocator that aborts the process if a thread allocates or frees while
//!   it is inside the handler.
//! * Imports: this tree uses nothing of the crate outside it but the leaves
//!   (`sync`, `config`, `error`); `tests/module_graph.rs` checks that.

#[cfg(smolder_sampling)]
pub(crate) mod arch;
#[cfg(smolder_sampling)]
pub(crate) mod buffer;
pub(crate) mod clock;
#[cfg(smolder_sampling)]
pub(crate) mod cookie;
#[cfg(smolder_sampling)]
pub(crate) mod counters;
#[cfg(smolder_sampling)]
pub(crate) mod gate;
#[cfg(smolder_sampling)]
pub(crate) mod handler;
#[cfg(smolder_sampling)]
pub(crate) mod mapped;
pub(crate) mod random;
#[cfg(smolder_sampling)]
pub(crate) mod registry;
#[cfg(smolder_sampling)]
pub(crate) mod shared;
#[cfg(smolder_sampling)]
pub(crate) mod signal;
pub(crate) mod span_context;
#[cfg(smolder_sampling)]
pub(crate) mod threads;
#[cfg(smolder_sampling)]
pub(crate) mod timer;
#[cfg(smolder_sampling)]
pub(crate) mod unwind;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Proof that the code holding it runs on the signal path, under the rules
/// of this module's docs.
///
/// Zero-sized and `Copy`: passing it costs nothing. Its only constructor is
/// private to this tree and called once, at the top of the handler, so every
/// function that takes one is visibly a handler function, and a new one can
/// not be called from an agent thread by accident.
#[derive(Clone, Copy)]
pub(crate) struct SignalSafe {
    _private: (),
}

impl SignalSafe {
    /// The token, for the code that follows it.
    ///
    /// # Safety
    /// Called only where the signal path begins (the top of the `SIGPROF`
    /// handler), by code that keeps every rule of this module's docs from
    /// there until it returns.
    #[inline(always)]
    pub(in crate::sampler) const unsafe fn enter() -> SignalSafe {
        SignalSafe { _private: () }
    }

    /// A token for unit tests that drive signal-path functions directly, on
    /// a thread that is not interrupted while they run.
    #[cfg(test)]
    pub(crate) const fn for_tests() -> SignalSafe {
        SignalSafe { _private: () }
    }
}

/// Only one agent may sample a process at a time: signal dispositions and
/// CPU timers are process-wide.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Whether an agent is running in this process.
pub(crate) fn is_running() -> bool {
    RUNNING.load(Ordering::Acquire)
}

/// Claims the process for one agent; false if another already runs.
pub(crate) fn claim_process() -> bool {
    RUNNING
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// Releases the claim of [`claim_process`].
pub(crate) fn release_process() {
    RUNNING.store(false, Ordering::Release);
}

std::thread_local! {
    /// Whether the calling thread is one of the agent's own.
    static AGENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the agent's (`threads::enter_agent_thread`):
/// the layer records none of its spans. The libraries the exporter runs,
/// h2 among them, open spans of their own, and exporting those would make
/// more.
pub(crate) fn mark_agent_thread() {
    AGENT_THREAD.set(true);
}

/// Whether the calling thread is one of the agent's.
pub(crate) fn is_agent_thread() -> bool {
    AGENT_THREAD.get()
}
