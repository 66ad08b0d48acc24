//! Where thread stacks may be: the bounds every stack read is checked against.
//!
//! The handler may not fault, so before it reads a word of a foreign stack it
//! must know the word is mapped. Thread stacks are anonymous read-write
//! mappings; the collector reads `/proc/self/maps` (on its own thread), keeps
//! those, and publishes the table. In the handler, the mapping that contains
//! the interrupted stack pointer bounds the walk: reads must lie between the
//! stack pointer and the end of that mapping.
//!
//! The table is refreshed whenever a new thread is seen, before that thread's
//! timer is armed, so a sampled thread's stack is always in it. A live
//! thread's stack mapping does not move or shrink, so a table older than the
//! latest `mmap` still bounds it correctly.

use std::io;
use std::ops::Range;

/// Sorted, non-overlapping anonymous read-write mappings.
#[derive(Debug, Default, Clone)]
pub(crate) struct StackRegions {
    regions: Vec<Range<u64>>,
}

/// The readable window of one thread's stack, for one sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StackBounds {
    /// The interrupted stack pointer: nothing below it belongs to live frames.
    pub(crate) low: u64,
    /// End of the mapping that contains `low`.
    pub(crate) high: u64,
}

impl StackBounds {
    /// Reads the 8-byte word at `address` if it lies inside the bounds and is
    /// aligned; never faults.
    ///
    /// # Signal safety
    /// One bounds check and one load from memory proven mapped.
    #[inline(always)]
    pub(crate) fn read_u64(&self, address: u64) -> Result<u64, ()> {
        let in_bounds =
            address >= self.low && address.checked_add(8).is_some_and(|end| end <= self.high);
        if !in_bounds || !address.is_multiple_of(8) {
            return Err(());
        }
        // SAFETY: `[low, high)` lies inside a mapping that contained the live
        // thread's stack pointer when this sample began (see module docs), the
        // word is inside it and aligned. `read_volatile` because the memory
        // belongs to a thread the compiler knows nothing about.
        Ok(unsafe { std::ptr::read_volatile(address as *const u64) })
    }
}

impl StackRegions {
    /// Reads the current table from `/proc/self/maps`.
    pub(crate) fn read() -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/self/maps")?))
    }

    fn parse(maps: &str) -> Self {
        let mut regions: Vec<Range<u64>> = maps.lines().filter_map(parse_stack_candidate).collect();
        regions.sort_unstable_by_key(|r| r.start);
        StackRegions { regions }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.regions.len()
    }

    /// The bounds for a walk starting at stack pointer `sp`.
    ///
    /// # Signal safety
    /// Binary search over a slice built before the handler ran.
    #[inline]
    pub(crate) fn bounds_for(&self, sp: u64) -> Option<StackBounds> {
        let index = self
            .regions
            .partition_point(|r| r.start <= sp)
            .checked_sub(1)?;
        let region = self.regions.get(index)?;
        (sp < region.end).then_some(StackBounds {
            low: sp,
            high: region.end,
        })
    }
}

/// `start-end perms offset dev inode [path]`: keeps anonymous (`inode 0`)
/// mappings that are readable and writable, the only kind a stack can be.
fn parse_stack_candidate(line: &str) -> Option<Range<u64>> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.as_bytes();
    let _offset = fields.next()?;
    let _device = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("");
    let readable_writable = perms.starts_with(b"rw");
    let anonymous =
        inode == "0" && (path.is_empty() || path == "[stack]" || path.starts_with("[anon"));
    if !(readable_writable && anonymous) {
        return None;
    }
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (start < end).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1234 /usr/bin/app
55d0c0c00000-55d0c0c21000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 ---p 00000000 00:00 0
7f0000001000-7f0000201000 rw-p 00000000 00:00 0
7f1000000000-7f1000010000 rw-p 00020000 08:01 99 /usr/lib/libc.so.6
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn keeps_only_anonymous_read_write_mappings() {
        let regions = StackRegions::parse(MAPS);
        assert_eq!(regions.len(), 2);
        assert!(
            regions.bounds_for(0x55d0c0c00100).is_none(),
            "heap is not a stack"
        );
        assert!(regions.bounds_for(0x7f0000000800).is_none(), "guard page");
        assert!(regions.bounds_for(0x7f1000000100).is_none(), "file mapping");
        let b = regions.bounds_for(0x7f0000100000).unwrap();
        assert_eq!((b.low, b.high), (0x7f0000100000, 0x7f0000201000));
        assert!(regions.bounds_for(0x7ffc00020ff8).is_some());
        assert!(
            regions.bounds_for(0x7ffc00021000).is_none(),
            "end is exclusive"
        );
    }

    #[test]
    fn reads_are_bounded_and_aligned() {
        let words = [11u64, 22, 33, 44];
        let low = words.as_ptr() as u64;
        let bounds = StackBounds {
            low: low + 8,
            high: low + 32,
        };
        assert_eq!(bounds.read_u64(low + 8), Ok(22));
        assert_eq!(bounds.read_u64(low + 24), Ok(44));
        assert_eq!(bounds.read_u64(low), Err(()), "below the stack pointer");
        assert_eq!(bounds.read_u64(low + 28), Err(()), "crosses the end");
        assert_eq!(bounds.read_u64(low + 12), Err(()), "misaligned");
        assert_eq!(bounds.read_u64(u64::MAX - 3), Err(()), "overflow");
    }

    #[test]
    fn this_threads_stack_is_found() {
        let local = 0u64;
        let sp = &local as *const u64 as u64;
        let regions = StackRegions::read().unwrap();
        let bounds = regions
            .bounds_for(sp & !7)
            .expect("own stack is a stack region");
        assert_eq!(bounds.read_u64(sp & !7).map(|_| ()), Ok(()));
    }
}
