//! x86_64: registers from `mcontext_t.gregs`, and a stack switch in six
//! instructions.

use std::ffi::c_void;

use framehop::x86_64::UnwindRegsX86_64;

/// The registers the unwinders need, as they were when the signal arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InterruptedRegs {
    /// Instruction pointer (`rip`).
    pub(crate) pc: u64,
    /// Stack pointer (`rsp`).
    pub(crate) sp: u64,
    /// Frame pointer (`rbp`); meaningful only in code built with frame
    /// pointers.
    pub(crate) fp: u64,
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
pub(crate) unsafe fn interrupted_regs(ucontext: *const c_void) -> InterruptedRegs {
    // SAFETY: per the contract, `ucontext` points to the kernel-written
    // `ucontext_t` on this thread's signal stack.
    let gregs = unsafe { &(*ucontext.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    InterruptedRegs {
        pc: gregs[libc::REG_RIP as usize] as u64,
        sp: gregs[libc::REG_RSP as usize] as u64,
        fp: gregs[libc::REG_RBP as usize] as u64,
    }
}

/// The unwinder's starting register set.
#[inline(always)]
pub(crate) fn unwind_regs(regs: &InterruptedRegs) -> UnwindRegsX86_64 {
    UnwindRegsX86_64::new(regs.pc, regs.sp, regs.fp)
}

/// Calls `f(arg)` with the stack pointer set to `stack_top`, then switches
/// back.
///
/// The handler runs the unwinder this way so that its stack use never lands
/// on the interrupted thread's stack or on a small `sigaltstack` (Rust's is
/// 8 KiB, and the kernel's signal frame already takes part of it).
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
    stack_top: *mut u8,
    arg: *mut c_void,
    f: unsafe extern "C" fn(*mut c_void),
) {
    debug_assert_eq!(stack_top as usize % 16, 0);
    // SAFETY: per the contract the new stack is ours and aligned. `r12` is
    // callee-saved in the SysV ABI, so `f` preserves the old `rsp` kept there;
    // `clobber_abi("C")` tells the compiler every caller-saved register may
    // change, as with any call.
    unsafe {
        core::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {stack_top}",
            "call {f}",
            "mov rsp, r12",
            stack_top = in(reg) stack_top,
            f = in(reg) f,
            in("rdi") arg,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}
