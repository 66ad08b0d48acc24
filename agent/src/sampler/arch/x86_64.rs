//! x86_64: registers from `mcontext_t.gregs`, and a stack switch in six
//! instructions.

use std::ffi::c_void;

use crate::sampler::SignalSafe;

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
pub(crate) unsafe fn interrupted_regs(_cx: SignalSafe, ucontext: *const c_void) -> InterruptedRegs {
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
///
/// # Signal safety
/// Copies three registers.
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
    _cx: SignalSafe,
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

/// The unwind rule of a return-address frame, in the three shapes that
/// framehop's x86_64 rules take for any frame but the first. Executing one
/// needs no lookup in unwind information: it is a handful of additions and
/// at most two stack reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompactRule {
    /// The outermost frame: the walk is complete.
    EndOfStack,
    /// The caller's stack pointer is `sp + sp_offset`; the return address is
    /// just below it; `rbp` is unchanged or reloaded from `sp + bp_slot`.
    SpRelative {
        sp_offset: u32,
        bp_slot: Option<i32>,
    },
    /// The caller's stack pointer is `rbp + 16`, the return address is at
    /// `rbp + 8`, the caller's `rbp` at `rbp`.
    FramePointer,
}

/// What a rule does to (sp, bp), and the return address it yields; `None`
/// for the end of the stack. Shared by execution and derivation.
#[inline(always)]
fn apply(
    rule: CompactRule,
    sp: u64,
    bp: u64,
    read: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Result<Option<(u64, u64, u64)>, ()> {
    let (new_sp, new_bp) = match rule {
        CompactRule::EndOfStack => return Ok(None),
        CompactRule::SpRelative { sp_offset, bp_slot } => {
            let new_sp = sp.checked_add(u64::from(sp_offset)).ok_or(())?;
            let new_bp = match bp_slot {
                None => bp,
                Some(slot) => read(sp.checked_add_signed(i64::from(slot)).ok_or(())?)?,
            };
            (new_sp, new_bp)
        }
        CompactRule::FramePointer => {
            if bp == 0 {
                return Ok(None);
            }
            let new_sp = bp.checked_add(16).ok_or(())?;
            if new_sp <= sp {
                return Err(());
            }
            (new_sp, read(bp)?)
        }
    };
    let return_address = read(new_sp - 8)?;
    if return_address == 0 {
        return Ok(None);
    }
    Ok(Some((return_address, new_sp, new_bp)))
}

/// Unwinds one return-address frame with a compact rule, exactly as
/// framehop would with the rule it was derived from.
///
/// # Signal safety
/// Arithmetic and bounded stack reads through `read`.
#[inline(always)]
pub(crate) fn exec_compact(
    rule: CompactRule,
    regs: &mut UnwindRegsX86_64,
    read: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Result<Option<u64>, ()> {
    match apply(rule, regs.sp(), regs.bp(), read)? {
        None => Ok(None),
        Some((return_address, sp, bp)) => {
            regs.set_ip(return_address);
            regs.set_sp(sp);
            regs.set_bp(bp);
            Ok(Some(return_address))
        }
    }
}

/// Finds the compact rule framehop applies at `return_address`, by letting
/// framehop unwind that frame over a synthetic stack whose every word holds
/// its own address (xor a mask): where the new stack pointer, frame pointer
/// and return address came from can then be read off the results. A second
/// run with other registers and mask must be predicted exactly by the
/// derived rule; otherwise (an expression-based rule, say) there is none and
/// framehop is asked every time.
///
/// # Signal safety
/// framehop with a `MustNotAllocateDuringUnwind` cache, over synthetic
/// memory only.
pub(crate) fn derive_compact_rule(
    unwinder: &crate::sampler::unwind::NativeUnwinder,
    cache: &mut crate::sampler::unwind::NativeCache,
    return_address: u64,
) -> Option<CompactRule> {
    use framehop::{FrameAddress, Unwinder as _};
    const WINDOW: u64 = 1 << 20;
    let address = FrameAddress::from_return_address(return_address)?;
    let mut probe = |sp: u64, bp: u64, mask: u64| {
        let mut read = |a: u64| {
            let near = |base: u64| a.wrapping_sub(base.wrapping_sub(WINDOW)) < 2 * WINDOW;
            if near(sp) || near(bp) {
                Ok(a ^ mask)
            } else {
                Err(())
            }
        };
        let mut regs = UnwindRegsX86_64::new(return_address, sp, bp);
        let result = unwinder
            .unwind_frame(address, &mut regs, cache, &mut read)
            .ok()?;
        Some(result.map(|ra| (ra, regs.sp(), regs.bp())))
    };

    let (sp0, bp0, mask0) = (
        0x0000_4000_0000_0000u64,
        0x0000_4000_0080_0000u64,
        0x5a00_0000_0000_0000u64,
    );
    let rule = match probe(sp0, bp0, mask0)? {
        None => CompactRule::EndOfStack,
        Some((ra, sp, bp)) if sp == bp0 + 16 && ra == (bp0 + 8) ^ mask0 && bp == bp0 ^ mask0 => {
            CompactRule::FramePointer
        }
        Some((ra, sp, bp)) => {
            let sp_offset = sp
                .checked_sub(sp0)
                .filter(|o| *o > 0 && *o < WINDOW && o % 8 == 0)?;
            if ra != (sp - 8) ^ mask0 {
                return None;
            }
            let bp_slot = if bp == bp0 {
                None
            } else {
                let slot = ((bp ^ mask0) as i64).checked_sub(sp0 as i64)?;
                Some(
                    i32::try_from(slot)
                        .ok()
                        .filter(|s| s.unsigned_abs() < WINDOW as u32)?,
                )
            };
            CompactRule::SpRelative {
                sp_offset: sp_offset as u32,
                bp_slot,
            }
        }
    };

    let (sp1, bp1, mask1) = (sp0 + 0x2468, bp0 + 0x1_3570, 0x3c00_0000_0000_0000u64);
    let mut synthetic = |a: u64| Ok(a ^ mask1);
    let predicted = apply(rule, sp1, bp1, &mut synthetic).ok()?;
    (probe(sp1, bp1, mask1)? == predicted).then_some(rule)
}

/// The caller's own registers, as if it had been interrupted here; lets
/// tests walk a live stack without a signal.
#[cfg(test)]
#[inline(always)]
pub(crate) fn current_regs() -> InterruptedRegs {
    let (pc, sp, fp): (u64, u64, u64);
    // SAFETY: reads three registers; touches no memory.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags),
        );
    }
    InterruptedRegs { pc, sp, fp }
}

/// Asks the CPU to start fetching `frames`' cache lines for writing. The
/// record was last read by the collector on another core; fetching its lines
/// while the walk runs hides most of that transfer.
///
/// # Signal safety
/// Prefetch hints only; they never fault.
#[inline(always)]
pub(crate) fn prefetch_for_write(frames: &[u64]) {
    use core::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
    for line in frames.chunks(8).take(16) {
        // SAFETY: prefetching is a hint; any address is allowed.
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(line.as_ptr().cast()) };
    }
}
