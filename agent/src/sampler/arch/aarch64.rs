//! aarch64: registers from `mcontext_t`, and a stack switch.
//!
//! Compiled and kept in step with x86_64, but not yet exercised by CI.

use std::ffi::c_void;

use crate::sampler::SignalSafe;

use framehop::aarch64::UnwindRegsAarch64;

/// The registers the unwinders need, as they were when the signal arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InterruptedRegs {
    /// Program counter.
    pub(crate) pc: u64,
    /// Stack pointer.
    pub(crate) sp: u64,
    /// Frame pointer (`x29`).
    pub(crate) fp: u64,
    /// Link register (`x30`): the return address while a leaf function has
    /// not spilled it yet.
    pub(crate) lr: u64,
}

/// Reads the interrupted registers.
///
/// # Safety
/// `ucontext` must be the third argument the kernel passed to an
/// `SA_SIGINFO` handler that is still running.
///
/// # Signal safety
/// Plain loads from the signal frame.
#[inline(always)]
pub(crate) unsafe fn interrupted_regs(_cx: SignalSafe, ucontext: *const c_void) -> InterruptedRegs {
    // SAFETY: per the contract, `ucontext` points to the kernel-written
    // `ucontext_t` on this thread's signal stack.
    let mcontext = unsafe { &(*ucontext.cast::<libc::ucontext_t>()).uc_mcontext };
    InterruptedRegs {
        pc: mcontext.pc,
        sp: mcontext.sp,
        fp: mcontext.regs[29],
        lr: mcontext.regs[30],
    }
}

/// The unwinder's starting register set.
///
/// # Signal safety
/// Copies three registers.
#[inline(always)]
pub(crate) fn unwind_regs(regs: &InterruptedRegs) -> UnwindRegsAarch64 {
    UnwindRegsAarch64::new(regs.lr, regs.sp, regs.fp)
}

/// Calls `f(arg)` with the stack pointer set to `stack_top`, then switches
/// back. See the x86_64 version for why.
///
/// # Safety
/// `stack_top` must be the 16-byte-aligned top of writable memory large
/// enough for `f`, used by no one else until this returns; `f` must not
/// unwind.
///
/// # Signal safety
/// Register moves and a call; no memory is touched but the new stack.
#[inline(always)]
pub(crate) unsafe fn call_on_stack(
    _cx: SignalSafe,
    stack_top: *mut u8,
    arg: *mut c_void,
    f: unsafe extern "C" fn(*mut c_void),
) {
    debug_assert_eq!(stack_top as usize % 16, 0);
    // SAFETY: per the contract the new stack is ours and aligned. `x20` is
    // callee-saved in AAPCS64, so `f` preserves the old `sp` kept there.
    unsafe {
        core::arch::asm!(
            "mov x20, sp",
            "mov sp, {stack_top}",
            "blr {f}",
            "mov sp, x20",
            stack_top = in(reg) stack_top,
            f = in(reg) f,
            in("x0") arg,
            out("x20") _,
            clobber_abi("C"),
        );
    }
}

/// No compact rules on aarch64 yet: every frame is unwound by framehop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompactRule {}

/// See the x86_64 version.
#[inline(always)]
pub(crate) fn exec_compact(
    rule: CompactRule,
    _regs: &mut UnwindRegsAarch64,
    _read: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Result<Option<u64>, ()> {
    match rule {}
}

/// See the x86_64 version; always `None` here.
pub(crate) fn derive_compact_rule(
    _unwinder: &crate::sampler::unwind::NativeUnwinder,
    _cache: &mut crate::sampler::unwind::NativeCache,
    _return_address: u64,
) -> Option<CompactRule> {
    None
}

/// See the x86_64 version; a no-op here for now.
#[inline(always)]
pub(crate) fn prefetch_for_write(_frames: &[u64]) {}
