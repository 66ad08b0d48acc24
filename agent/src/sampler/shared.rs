//! The running agent's state that the signal path uses, and the gate it is
//! reached through.
//!
//! Handlers (and any other signal-path entry) count themselves in at the
//! [`Gate`] before looking at the state; the agent, when stopping, closes
//! the gate and waits for the count to reach zero before freeing it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use crate::config::Unwinder;
use crate::sampler::buffer::SampleBuffer;
use crate::sampler::counters::HandlerCounters;
use crate::sampler::gate::Gate;
use crate::sampler::registry::ThreadRegistry;
use crate::sampler::unwind::published::Published;
use crate::sampler::unwind::{ScratchPool, UnwindTables};

/// Everything the handler reads or writes. Built before the first timer is
/// armed, freed after [`deactivate`] has seen the last handler leave.
pub(crate) struct SamplerShared {
    /// This agent's generation, as our timers' cookies carry it
    /// (`timer::cookie`).
    pub(crate) agent: u8,
    /// Whether kernel-sent `SIGPROF` (`setitimer`) counts as ours.
    pub(crate) accept_itimer_signals: bool,
    /// The rate epoch of kernel-sent signals, which carry no cookie.
    pub(crate) itimer_rate_epoch: AtomicUsize,
    pub(crate) method: Unwinder,
    pub(crate) buffer: SampleBuffer,
    pub(crate) tables: Published<UnwindTables>,
    pub(crate) scratch: ScratchPool,
    pub(crate) registry: &'static ThreadRegistry,
    pub(crate) counters: HandlerCounters,
}

/// The handler's way to the running agent's state.
#[cfg(not(smolder_loom))]
pub(crate) fn gate() -> &'static Gate<SamplerShared> {
    static GATE: Gate<SamplerShared> = Gate::new();
    &GATE
}

/// Under loom, atomics cannot be built in a `static`; the gate protocol is
/// model-checked in `gate` itself.
#[cfg(smolder_loom)]
pub(crate) fn gate() -> &'static Gate<SamplerShared> {
    static GATE: std::sync::OnceLock<Gate<SamplerShared>> = std::sync::OnceLock::new();
    GATE.get_or_init(Gate::new)
}

/// See [`Gate::reset_after_fork`].
pub(crate) fn reset_after_fork() {
    gate().reset_after_fork();
}

/// Points the handler at `shared`. The caller keeps `shared` alive until
/// [`deactivate`] has returned `true`.
pub(crate) fn activate(shared: &Arc<SamplerShared>) {
    gate().open(Arc::as_ptr(shared));
}

/// Detaches the handler from the shared state and waits, at most `patience`,
/// for handlers still using it. Returns `false` if some handler did not
/// leave in time; the caller must then leak the state rather than free it.
pub(crate) fn deactivate(patience: Duration) -> bool {
    gate().close(patience)
}
