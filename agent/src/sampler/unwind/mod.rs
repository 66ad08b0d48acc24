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

mod compact;
pub(crate) mod modules;
pub(crate) mod published;
pub(crate) mod regions;
mod scratch;

use std::sync::atomic::{AtomicU32, Ordering};

use framehop::{FrameAddress, MustNotAllocateDuringUnwind, Unwinder as _};

pub(crate) use scratch::ScratchPool;

use crate::config::Unwinder;
use crate::sampler::SignalSafe;
use crate::sampler::arch::{InterruptedRegs, derive_compact_rule, exec_compact, unwind_regs};
use crate::sampler::buffer::{FLAG_INCOMPLETE, FLAG_TRUNCATED};
use crate::sampler::mapped::MappedBytes;
use compact::{Cached, CompactRuleCache};
use modules::LoadedModule;
use regions::{StackBounds, StackRegions};

pub(crate) type NativeUnwinder = framehop::UnwinderNative<MappedBytes, MustNotAllocateDuringUnwind>;
pub(crate) type NativeCache = framehop::CacheNative<MustNotAllocateDuringUnwind>;

/// Everything a walk reads besides the stack itself; rebuilt by the collector
/// and published to the handler as one unit.
pub(crate) struct UnwindTables {
    unwinder: NativeUnwinder,
    regions: StackRegions,
    /// Distinguishes successive tables, so that rules cached under one
    /// module set are never used with another.
    generation: u32,
}

impl UnwindTables {
    pub(crate) fn new(modules: &[LoadedModule], regions: StackRegions) -> Self {
        static GENERATION: AtomicU32 = AtomicU32::new(1);
        let mut unwinder = NativeUnwinder::new();
        for module in modules {
            if let Some(unwind) = &module.unwind {
                unwinder.add_module((**unwind).clone());
            }
        }
        UnwindTables {
            unwinder,
            regions,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// The per-walk caches: framehop's rule cache and the compact fast path in
/// front of it. Owned by one scratch entry, so used by one handler at a time.
pub(crate) struct WalkCaches {
    framehop: NativeCache,
    compact: CompactRuleCache,
}

impl WalkCaches {
    pub(crate) fn new() -> Self {
        WalkCaches {
            framehop: NativeCache::new_in(),
            compact: CompactRuleCache::new(),
        }
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
    _cx: SignalSafe,
    method: Unwinder,
    tables: &UnwindTables,
    regs: &InterruptedRegs,
    caches: &mut WalkCaches,
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
        Unwinder::Dwarf => walk_dwarf(tables, bounds, regs, caches, frames),
        Unwinder::FramePointers => walk_frame_pointers(bounds, regs.fp, frames),
    }
}

fn walk_dwarf(
    tables: &UnwindTables,
    bounds: StackBounds,
    regs: &InterruptedRegs,
    caches: &mut WalkCaches,
    frames: &mut [u64],
) -> WalkResult {
    let mut read_stack = |address: u64| bounds.read_u64(address);
    let mut unwind_regs = unwind_regs(regs);
    let mut address = FrameAddress::from_instruction_pointer(regs.pc);
    let mut depth = 1;
    caches.compact.begin_walk(tables.generation);
    loop {
        let previous_sp = unwind_regs.sp();
        let step = match address {
            // Return addresses repeat from sample to sample: try the fast path.
            FrameAddress::ReturnAddress(return_address) => {
                let return_address = return_address.get();
                let rule = match caches.compact.lookup(depth, return_address) {
                    Cached::Rule(rule) => Some(rule),
                    Cached::FramehopOnly => None,
                    Cached::Miss => {
                        let rule = derive_compact_rule(
                            &tables.unwinder,
                            &mut caches.framehop,
                            return_address,
                        );
                        caches.compact.remember(depth, return_address, rule);
                        rule
                    }
                };
                match rule {
                    Some(rule) => exec_compact(rule, &mut unwind_regs, &mut read_stack),
                    None => tables
                        .unwinder
                        .unwind_frame(
                            address,
                            &mut unwind_regs,
                            &mut caches.framehop,
                            &mut read_stack,
                        )
                        .map_err(|_| ()),
                }
            }
            // The interrupted frame may be mid-prologue or mid-epilogue:
            // framehop's first-frame rules know how to handle that.
            FrameAddress::InstructionPointer(_) => tables
                .unwinder
                .unwind_frame(
                    address,
                    &mut unwind_regs,
                    &mut caches.framehop,
                    &mut read_stack,
                )
                .map_err(|_| ()),
        };
        match step {
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
            Err(()) => {
                return WalkResult {
                    depth,
                    flags: FLAG_INCOMPLETE,
                };
            }
        }
    }
}

/// The same walk without the compact fast path, for comparison in tests.
#[cfg(test)]
fn walk_dwarf_framehop_only(
    tables: &UnwindTables,
    bounds: StackBounds,
    regs: &InterruptedRegs,
    caches: &mut WalkCaches,
    frames: &mut [u64],
) -> WalkResult {
    let mut read_stack = |address: u64| bounds.read_u64(address);
    let mut unwind_regs = unwind_regs(regs);
    frames[0] = regs.pc;
    let mut address = FrameAddress::from_instruction_pointer(regs.pc);
    let mut depth = 1;
    while let Ok(Some(return_address)) = tables.unwinder.unwind_frame(
        address,
        &mut unwind_regs,
        &mut caches.framehop,
        &mut read_stack,
    ) {
        let Some(next) = FrameAddress::from_return_address(return_address) else {
            break;
        };
        frames[depth] = return_address;
        depth += 1;
        address = next;
    }
    WalkResult { depth, flags: 0 }
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

    /// Recurses `depth` times, then walks its own stack `repeat` times with
    /// each method; returns the frames each found and the time each took.
    #[inline(never)]
    fn walk_at_depth(
        depth: u32,
        tables: &UnwindTables,
        repeat: u32,
    ) -> [(Vec<u64>, std::time::Duration); 2] {
        if depth > 0 {
            return std::hint::black_box(walk_at_depth(depth - 1, tables, repeat));
        }
        let regs = crate::sampler::arch::current_regs();
        let bounds = tables.regions.bounds_for(regs.sp).expect("own stack");
        let mut caches = WalkCaches::new();
        [false, true].map(|use_compact| {
            let mut frames = vec![0u64; 256];
            frames[0] = regs.pc;
            let mut result = WalkResult { depth: 0, flags: 0 };
            let start = std::time::Instant::now();
            for _ in 0..repeat {
                result = if use_compact {
                    walk_dwarf(tables, bounds, &regs, &mut caches, &mut frames)
                } else {
                    walk_dwarf_framehop_only(tables, bounds, &regs, &mut caches, &mut frames)
                };
            }
            let elapsed = start.elapsed();
            frames.truncate(result.depth);
            (frames, elapsed)
        })
    }

    fn tables() -> UnwindTables {
        UnwindTables::new(&modules::enumerate(&[]), StackRegions::read().unwrap())
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn compact_rules_walk_exactly_like_framehop() {
        let tables = tables();
        // Cold, then warm caches.
        let [(reference, _), (compact, _)] = walk_at_depth(40, &tables, 3);
        assert!(reference.len() > 40, "walked {} frames", reference.len());
        assert_eq!(compact, reference);
    }

    #[test]
    #[ignore = "timing exploration; run with --ignored --nocapture in release"]
    fn walk_cost_per_frame() {
        let tables = tables();
        let [(frames, framehop), (_, compact)] = walk_at_depth(50, &tables, 100_000);
        for (name, time) in [("framehop", framehop), ("compact", compact)] {
            let ns = time.as_nanos() as f64 / 100_000.0;
            println!(
                "{name}: {} frames, {ns:.0} ns per walk, {:.1} ns per frame",
                frames.len(),
                ns / frames.len() as f64
            );
        }
    }

    /// Builds a fake frame-pointer chain in a buffer that stands in for a stack.
    #[test]
    fn frame_pointer_walk_is_bounded_and_monotonic() {
        let mut words = [0u64; 16];
        let base = words.as_mut_ptr();
        let at = |i: usize| base as u64 + 8 * i as u64;
        // All accesses go through `base`, as the walker's reads do.
        // SAFETY: every index used is below 16.
        let set = |i: usize, value: u64| unsafe { base.add(i).write_volatile(value) };
        // frame at 2 -> frame at 6 -> frame at 10 -> end (fp 0)
        set(2, at(6));
        set(3, 0x1111);
        set(6, at(10));
        set(7, 0x2222);
        set(10, 0);
        set(11, 0x3333);
        let bounds = StackBounds {
            low: at(0),
            high: at(16),
        };
        let mut frames = [0u64; 8];
        frames[0] = 0xaaaa;
        let result = walk_frame_pointers(bounds, at(2), &mut frames);
        assert_eq!(result, WalkResult { depth: 4, flags: 0 });
        assert_eq!(&frames[..4], &[0xaaaa, 0x1111, 0x2222, 0x3333]);

        // A loop in the chain ends the walk instead of spinning.
        set(10, at(2));
        let result = walk_frame_pointers(bounds, at(2), &mut frames);
        assert_eq!(result.flags, FLAG_INCOMPLETE);
        set(10, 0);

        // Depth limit marks truncation.
        let mut short = [0u64; 2];
        let result = walk_frame_pointers(bounds, at(2), &mut short);
        assert_eq!(
            result,
            WalkResult {
                depth: 2,
                flags: FLAG_TRUNCATED
            }
        );

        // A frame pointer outside the stack is never dereferenced.
        let result = walk_frame_pointers(bounds, 0xdead_0000, &mut frames);
        assert_eq!(
            result,
            WalkResult {
                depth: 1,
                flags: FLAG_INCOMPLETE
            }
        );
    }
}
