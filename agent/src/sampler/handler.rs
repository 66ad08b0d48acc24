//! Stage 1 of the data flow: the `SIGPROF` handler.
//!
//! The rules of everything reachable from here are in the `sampler`
//! module's docs; [`on_sigprof`] is the one place a [`SignalSafe`] token is
//! made.
//!
//! The walk itself runs on a private pre-allocated stack (see
//! `unwind::scratch`), so the handler's own stack use is a few hundred bytes
//! wherever the signal lands. What the handler reads and writes is the
//! running agent's `SamplerShared`, reached through its gate (`shared`).

use std::ffi::{c_int, c_void};
use std::sync::atomic::Ordering;

use crate::config::Unwinder;
use crate::sampler::SignalSafe;
use crate::sampler::arch::{InterruptedRegs, call_on_stack, interrupted_regs, prefetch_for_write};
use crate::sampler::buffer::{ClaimError, FLAG_INCOMPLETE, FLAG_TRUNCATED};
use crate::sampler::clock::monotonic_now_ns;
use crate::sampler::cookie;
use crate::sampler::counters::Counter;
use crate::sampler::shared::{SamplerShared, gate};
use crate::sampler::span_context::SpanContext;
use crate::sampler::threads::current_tid;
use crate::sampler::unwind::{UnwindTables, WalkCaches, WalkResult, walk};

/// The `SA_SIGINFO` handler for `SIGPROF`.
///
/// # Signal safety
/// See the module docs; everything reachable from here follows them.
pub(crate) extern "C" fn on_sigprof(
    _signal: c_int,
    info: *mut libc::siginfo_t,
    ucontext: *mut c_void,
) {
    // SAFETY: this is where the signal path begins, and everything below
    // keeps its rules (the `sampler` module's docs).
    let cx = unsafe { SignalSafe::enter() };
    let saved_errno = errno(cx);
    let pass = gate().enter(cx);
    if let Some(shared) = pass.target() {
        // SAFETY: the kernel passes valid `info` and `ucontext` pointers to an
        // `SA_SIGINFO` handler.
        unsafe { sample(cx, shared, info, ucontext) };
    }
    drop(pass);
    set_errno(cx, saved_errno);
}

/// Decides whether the signal is ours and, if so, records one sample.
///
/// # Safety
/// `info` and `ucontext` are the handler's arguments.
///
/// # Signal safety
/// The handler's body: what it calls takes `cx`, or says in its docs why it
/// may run here.
#[inline(always)]
unsafe fn sample(
    cx: SignalSafe,
    shared: &SamplerShared,
    info: *const libc::siginfo_t,
    ucontext: *const c_void,
) {
    let started_ns = monotonic_now_ns();
    // SAFETY: forwarded contract.
    let Some((tid, weight, rate_epoch)) = (unsafe { classify(cx, shared, &*info) }) else {
        return;
    };
    let counters = &shared.counters;
    let dropped = |counter: &Counter| {
        counter.inc();
        counters.dropped_weight.add(u64::from(weight));
    };

    let Some(mut scratch) = shared.scratch.try_acquire(cx, tid as usize) else {
        return dropped(&counters.dropped_no_scratch);
    };
    let Some(tables) = shared.tables.read(cx) else {
        return dropped(&counters.dropped_tables_busy);
    };
    let mut writer = match shared.buffer.try_claim(cx) {
        Ok(writer) => writer,
        Err(ClaimError::Full) => return dropped(&counters.dropped_buffer_full),
        Err(ClaimError::Contended) => {
            return dropped(&counters.dropped_buffer_contended);
        }
    };
    // SAFETY: forwarded contract.
    let regs = unsafe { interrupted_regs(cx, ucontext) };
    writer.fill(|record| prefetch_for_write(record.frames_mut()));
    let stack_top = scratch.stack_top();
    let result = writer.fill(|record| {
        record.timestamp_ns = started_ns;
        record.tid = tid;
        record.weight = weight;
        record.rate_epoch = rate_epoch;
        // The layer publishes the span on this very thread, so reading it here
        // (where the signal was delivered) sees a whole context. The read
        // counts the sample for the layer (see `sampler::span_context`).
        record.span = match shared.registry.find(tid) {
            Some(slot) => shared.registry.slot(slot).span.read_for_sample(cx),
            None => SpanContext::NONE,
        };
        let result = scratch.with_caches(|caches| {
            let mut job = WalkJob {
                cx,
                method: shared.method,
                tables: &tables,
                regs: &regs,
                caches,
                frames: record.frames_mut(),
                result: WalkResult { depth: 0, flags: 0 },
            };
            // SAFETY: the scratch stack is ours until `scratch` drops, and
            // aligned; `run_walk_job` does not unwind (see its docs).
            unsafe { call_on_stack(cx, stack_top, (&raw mut job).cast(), run_walk_job) };
            job.result
        });
        record.depth = result.depth;
        record.flags = result.flags;
        result
    });
    drop(writer); // publishes the record
    drop(tables);

    let owned = scratch.counters();
    owned.samples.add_owned(1);
    owned.weight.add_owned(u64::from(weight));
    if result.flags & FLAG_TRUNCATED != 0 {
        owned.truncated.add_owned(1);
    }
    if result.flags & FLAG_INCOMPLETE != 0 {
        owned.incomplete.add_owned(1);
    }
    let cost_ns = monotonic_now_ns().saturating_sub(started_ns);
    owned.handler_ns.add_owned(cost_ns);
    owned.cost_ns.record_owned(cost_ns);
    drop(scratch);
}

/// Returns the sampled thread, the sample's weight and its rate epoch if the
/// signal came from our timers, `None` (counted) otherwise.
///
/// # Signal safety
/// Reads of the kernel-written `siginfo`; `gettid` for `setitimer` signals.
#[inline(always)]
fn classify(
    _cx: SignalSafe,
    shared: &SamplerShared,
    info: &libc::siginfo_t,
) -> Option<(i32, u32, u8)> {
    /// Caps absurd overrun counts so a weight always fits comfortably.
    const MAX_OVERRUN: i32 = 1 << 20;
    if info.si_code == libc::SI_TIMER {
        // SAFETY: `si_code == SI_TIMER` means the kernel filled the timer
        // fields of the union.
        let (value, overrun) = unsafe { (info.si_value().sival_ptr as u64, info.si_overrun()) };
        if let Some((rate_epoch, tid)) = cookie::decode(value, shared.agent) {
            let weight = 1 + overrun.clamp(0, MAX_OVERRUN) as u32;
            return Some((tid, weight, rate_epoch));
        }
    } else if info.si_code == libc::SI_KERNEL && shared.accept_itimer_signals {
        let tid = current_tid();
        if shared.registry.contains(tid) {
            let rate_epoch = shared.itimer_rate_epoch.load(Ordering::Relaxed) as u8;
            return Some((tid, 1, rate_epoch));
        }
        shared.counters.dropped_thread_unregistered.inc();
        shared.counters.dropped_weight.inc();
        return None;
    }
    shared.counters.foreign_signals.inc();
    None
}

/// Arguments for [`run_walk_job`], which runs on the scratch stack.
struct WalkJob<'a> {
    cx: SignalSafe,
    method: Unwinder,
    tables: &'a UnwindTables,
    regs: &'a InterruptedRegs,
    caches: &'a mut WalkCaches,
    frames: &'a mut [u64],
    result: WalkResult,
}

/// Trampoline called on the scratch stack.
///
/// # Safety
/// `job` points to a live `WalkJob` used by no one else. `walk` has no
/// panicking paths on valid input; were one reached, the process would abort
/// here instead of unwinding across the stack switch.
///
/// # Signal safety
/// Runs [`walk`], with the token the job carries.
unsafe extern "C" fn run_walk_job(job: *mut c_void) {
    // SAFETY: per the contract.
    let job = unsafe { &mut *job.cast::<WalkJob<'_>>() };
    job.result = walk(
        job.cx, job.method, job.tables, job.regs, job.caches, job.frames,
    );
}

/// The calling thread's `errno`, saved on entry so that the interrupted
/// code finds it as it left it.
///
/// # Signal safety
/// One load from this thread's errno slot.
#[inline(always)]
fn errno(_cx: SignalSafe) -> c_int {
    // SAFETY: `__errno_location` returns this thread's errno slot, which is
    // always valid; reading it is async-signal-safe.
    unsafe { *libc::__errno_location() }
}

/// Puts back the `errno` saved by [`errno`].
///
/// # Signal safety
/// One store to this thread's errno slot.
#[inline(always)]
fn set_errno(_cx: SignalSafe, value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}
