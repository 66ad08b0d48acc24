//! Stage 2 of the data flow: walking the interrupted thread's stack.
//!
//! The handler calls [`walk`] with the interrupted registers; it writes return
//! addresses into the sample record, innermost first. Two methods:
//!
//! * **DWARF CFI** (default) with [framehop]: each module's `.eh_frame` says
//!   how to find the caller's frame from any instruction, so it works on a
//!   default release build without frame pointers, and from the first
//!   instruction of a prologue to the last of an epilogue.
//! * **Frame pointers**: follow the `rbp`/`x29` chain. Cheaper, correct only
//!   for code compiled with frame pointers.
//!
//! Both start from the interrupted instruction pointer, so the leaf function
//! is always the first frame. Every stack read goes through
//! [`StackBounds::read_u64`]; each step must move the stack pointer strictly
//! upward; the walk stops at the configured depth and says so.
//!
//! What the handler needs is prepared here on agent threads and published
//! through [`Published`]: the framehop unwinder (module table) and the stack
//! regions. [`ScratchPool`] holds the pre-allocated unwinder caches and private
//! stacks the handler borrows for one walk.

pub(crate) mod modules;
pub(crate) mod published;
pub(crate) mod regions;
mod scratch;

use framehop::{FrameAddress, MustNotAllocateDuringUnwind, Unwinder as _};

pub(crate) use scratch::ScratchPool;

use crate::arch::{InterruptedRegs, unwind_regs};
use crate::buffer::{FLAG_INCOMPLETE, FLAG_TRUNCATED};
use crate::config::Unwinder;
use modules::LoadedModule;
use regions::{StackBounds, StackRegions};

pub(crate) type NativeUnwinder = framehop::UnwinderNative<Vec<u8>, MustNotAllocateDuringUnwind>;
pub(crate) type NativeCache = framehop::CacheNative<MustNotAllocateDuringUnwind>;

/// Everything a walk reads besides the stack itself; rebuilt by the collector
/// and published to the handler as one unit.
pub(crate) struct UnwindTables {
    unwinder: NativeUnwinder,
    regions: StackRegions,
}

impl UnwindTables {
    pub(crate) fn new(modules: &[LoadedModule], regions: StackRegions) -> Self {
        let mut unwinder = NativeUnwinder::new();
        for module in modules {
            if let Some(unwind) = &module.unwind {
                unwinder.add_module((**unwind).clone());
            }
        }
        UnwindTables { unwinder, regions }
    }
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalkResult {
    /// Frames written, at least 1 (the instruction pointer).
    pub(crate) depth: usize,
    /// `FLAG_TRUNCATED` and/or `FLAG_INCOMPLETE`.
    pub(crate) flags: u32,
}

/// Walks the stack of the interrupted thread into `frames`.
///
/// `frames[0]` is the instruction pointer; the rest are return addresses.
///
/// # Signal safety
/// No allocation (framehop runs with `MustNotAllocateDuringUnwind` and a
/// caller-provided cache), no locks, and every stack read is bounds-checked.
pub(crate) fn walk(
    method: Unwinder,
    tables: &UnwindTables,
    regs: &InterruptedRegs,
    cache: &mut NativeCache,
    frames: &mut [u64],
) -> WalkResult {
    let Some(first) = frames.first_mut() else {
        return WalkResult {
            depth: 0,
            flags: FLAG_TRUNCATED,
        };
    };
    *first = regs.pc;
    let Some(bounds) = tables.regions.bounds_for(regs.sp) else {
        // Not on a known stack (a coroutine stack allocated since the last
        // refresh, say): keep the leaf, which needs no memory reads.
        return WalkResult {
            depth: 1,
            flags: FLAG_INCOMPLETE,
        };
    };
    match method {
        Unwinder::Dwarf => walk_dwarf(&tables.unwinder, bounds, regs, cache, frames),
        Unwinder::FramePointers => walk_frame_pointers(bounds, regs.fp, frames),
    }
}

fn walk_dwarf(
    unwinder: &NativeUnwinder,
    bounds: StackBounds,
    regs: &InterruptedRegs,
    cache: &mut NativeCache,
    frames: &mut [u64],
) -> WalkResult {
    let mut read_stack = |address: u64| bounds.read_u64(address);
    let mut unwind_regs = unwind_regs(regs);
    let mut address = FrameAddress::from_instruction_pointer(regs.pc);
    let mut depth = 1;
    loop {
        let previous_sp = unwind_regs.sp();
        match unwinder.unwind_frame(address, &mut unwind_regs, cache, &mut read_stack) {
            // A return address of zero marks the outermost frame.
            Ok(None) | Ok(Some(0)) => return WalkResult { depth, flags: 0 },
            Ok(Some(return_address)) => {
                if unwind_regs.sp() <= previous_sp {
                    // The caller's frame must be above the callee's; anything
                    // else is a corrupt stack or bad unwind info.
                    return WalkResult {
                        depth,
                        flags: FLAG_INCOMPLETE,
                    };
                }
                let Some(slot) = frames.get_mut(depth) else {
                    return WalkResult {
                        depth,
                        flags: FLAG_TRUNCATED,
                    };
                };
                *slot = return_address;
                depth += 1;
                address = match FrameAddress::from_return_address(return_address) {
                    Some(a) => a,
                    None => return WalkResult { depth, flags: 0 },
                };
            }
            Err(_) => {
                return WalkResult {
                    depth,
                    flags: FLAG_INCOMPLETE,
                };
            }
        }
    }
}

/// Follows the frame-pointer chain: at `fp` sit the caller's frame pointer
/// and, one word above, the return address (the same layout on x86_64 and
/// aarch64).
fn walk_frame_pointers(bounds: StackBounds, mut fp: u64, frames: &mut [u64]) -> WalkResult {
    let mut depth = 1;
    loop {
        let (Ok(caller_fp), Ok(return_address)) =
            (bounds.read_u64(fp), bounds.read_u64(fp.wrapping_add(8)))
        else {
            // The chain left the stack: the end of frame-pointer code, or a
            // function built without frame pointers.
            return WalkResult {
                depth,
                flags: if fp == 0 { 0 } else { FLAG_INCOMPLETE },
            };
        };
        if return_address == 0 {
            return WalkResult { depth, flags: 0 };
        }
        let Some(slot) = frames.get_mut(depth) else {
            return WalkResult {
                depth,
                flags: FLAG_TRUNCATED,
            };
        };
        *slot = return_address;
        depth += 1;
        if caller_fp == 0 {
            return WalkResult { depth, flags: 0 };
        }
        if caller_fp <= fp {
            return WalkResult {
                depth,
                flags: FLAG_INCOMPLETE,
            };
        }
        fp = caller_fp;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a fake frame-pointer chain in a buffer that stands in for a stack.
    #[test]
    fn frame_pointer_walk_is_bounded_and_monotonic() {
        let mut stack = [0u64; 16];
        let base = stack.as_ptr() as u64;
        let at = |i: usize| base + 8 * i as u64;
        // frame at 2 -> frame at 6 -> frame at 10 -> end (fp 0)
        stack[2] = at(6);
        stack[3] = 0x1111;
        stack[6] = at(10);
        stack[7] = 0x2222;
        stack[10] = 0;
        stack[11] = 0x3333;
        let bounds = StackBounds { low: base, high: base + 16 * 8 };
        let mut frames = [0u64; 8];
        frames[0] = 0xaaaa;
        let result = walk_frame_pointers(bounds, at(2), &mut frames);
        assert_eq!(result, WalkResult { depth: 4, flags: 0 });
        assert_eq!(&frames[..4], &[0xaaaa, 0x1111, 0x2222, 0x3333]);

        // A loop in the chain ends the walk instead of spinning.
        stack[10] = at(2);
        let result = walk_frame_pointers(bounds, at(2), &mut frames);
        assert_eq!(result.flags, FLAG_INCOMPLETE);

        // Depth limit marks truncation.
        stack[10] = 0;
        let mut short = [0u64; 2];
        let result = walk_frame_pointers(bounds, at(2), &mut short);
        assert_eq!(result, WalkResult { depth: 2, flags: FLAG_TRUNCATED });

        // A frame pointer outside the stack is never dereferenced.
        let result = walk_frame_pointers(bounds, 0xdead_0000, &mut frames);
        assert_eq!(result, WalkResult { depth: 1, flags: FLAG_INCOMPLETE });
    }
}
