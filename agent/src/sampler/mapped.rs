//! Memory the agent maps for itself, outside `malloc`.
//!
//! The agent's large, long-lived blocks (the sample records, the copies of
//! modules' unwind data, the handlers' private stacks) are mapped directly,
//! so that stopping an agent gives them back to the system at once. From
//! `malloc` they would come out of glibc's per-thread arenas, which keep
//! freed memory: an application that starts and stops agents would see its
//! resident size ratchet up with every agent it ever ran.

use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// An anonymous, private, read-write mapping; zeroed when made.
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing it is as
// safe as sharing the `&[u8]`/`&mut [u8]` views handed out, which borrow it.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (at least one page).
    pub(crate) fn new(len: usize) -> io::Result<Mapping> {
        let len = len.max(1);
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { base, len })
    }

    /// Makes the first `len` bytes inaccessible (a guard page below a stack).
    pub(crate) fn protect_start(&self, len: usize) -> io::Result<()> {
        // SAFETY: a prefix of our own mapping.
        if unsafe {
            libc::mprotect(
                self.base.as_ptr().cast(),
                len.min(self.len),
                libc::PROT_NONE,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping this value created and owns.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// An immutable copy of some bytes, in its own mapping: the unwind sections
/// framehop reads (it accepts any `Deref<Target = [u8]>`).
pub(crate) struct MappedBytes {
    mapping: Mapping,
    len: usize,
}

impl MappedBytes {
    pub(crate) fn copy_of(bytes: &[u8]) -> io::Result<MappedBytes> {
        let mapping = Mapping::new(bytes.len())?;
        // SAFETY: the fresh mapping is at least `bytes.len()` long and cannot
        // overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), mapping.as_ptr(), bytes.len()) };
        Ok(MappedBytes {
            mapping,
            len: bytes.len(),
        })
    }
}

impl Deref for MappedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the mapping were written in
        // `copy_of` and live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.mapping.as_ptr(), self.len) }
    }
}

/// A zeroed array of `u64`s in its own mapping.
pub(crate) struct MappedWords {
    mapping: Mapping,
    len: usize,
}

impl MappedWords {
    pub(crate) fn zeroed(len: usize) -> io::Result<MappedWords> {
        let bytes = len
            .checked_mul(8)
            .ok_or_else(|| io::Error::other("size overflow"))?;
        Ok(MappedWords {
            mapping: Mapping::new(bytes)?,
            len,
        })
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut u64 {
        self.mapping.as_ptr().cast()
    }
}

impl Deref for MappedWords {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        // SAFETY: page-aligned, `len` words long, zero-initialised by mmap.
        unsafe { std::slice::from_raw_parts(self.as_mut_ptr(), self.len) }
    }
}

impl DerefMut for MappedWords {
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_words() {
        let bytes = MappedBytes::copy_of(b"eh_frame").unwrap();
        assert_eq!(&*bytes, b"eh_frame");
        let mut words = MappedWords::zeroed(1000).unwrap();
        assert!(words.iter().all(|&w| w == 0));
        words[999] = 7;
        assert_eq!(words[999], 7);
        assert!(MappedBytes::copy_of(b"").unwrap().is_empty());
    }
}
