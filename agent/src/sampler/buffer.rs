//! The bounded lock-free buffer between the signal handler and the collector.
//!
//! Many producers (signal handlers, one per interrupted thread) and a single
//! consumer (the collector thread). The algorithm is Dmitry Vyukov's bounded
//! MPMC queue specialised to one consumer: every slot carries a sequence
//! number that says whose turn it is.
//!
//! * Slot `i` starts with `seq == i`.
//! * A producer that reads `tail == pos` may claim the slot at `pos` when
//!   `seq == pos`; it advances `tail` by CAS, fills the record *in place*
//!   (the handler unwinds straight into it, nothing is copied), then publishes
//!   with `seq = pos + 1`.
//! * The consumer at `head == pos` may read the slot when `seq == pos + 1`;
//!   it then frees it for the next lap with `seq = pos + capacity`.
//! * `seq < pos` for a producer means the consumer has not freed the slot
//!   from the previous lap: the buffer is full and the sample is dropped.
//!
//! Producers never wait: a full buffer or a lost CAS race beyond a few
//! retries drops the sample and the caller counts the drop. Memory is fixed
//! at construction: `capacity × (header + max_depth × 8)` bytes.

use std::io;
use std::ptr::NonNull;

use crate::sampler::SignalSafe;
use crate::sampler::mapped::MappedWords;
use crate::sync::{AtomicUsize, CachePadded, Ordering, UnsafeCell};

/// The stack hit the depth limit: the root-most frames are missing.
pub(crate) const FLAG_TRUNCATED: u32 = 1 << 0;
/// The walk stopped on an error (unreadable memory, missing unwind info)
/// before reaching the thread's root frame.
pub(crate) const FLAG_INCOMPLETE: u32 = 1 << 1;

/// One sample: who was interrupted, when, how much CPU it stands for, and the
/// stack. Lives in a buffer slot; the handler writes it in place.
#[derive(Debug)]
pub(crate) struct Record {
    /// `CLOCK_MONOTONIC` at the interrupt, in nanoseconds.
    pub(crate) timestamp_ns: u64,
    /// Kernel thread id of the interrupted thread.
    pub(crate) tid: i32,
    /// Timer expirations this sample stands for: 1 + the kernel's overrun
    /// count, so accounted CPU stays right when expirations coalesce.
    pub(crate) weight: u32,
    /// Which sampling period the timer had (see `timer::cookie`).
    pub(crate) rate_epoch: u8,
    /// `FLAG_*` bits.
    pub(crate) flags: u32,
    /// Number of valid entries in `frames`.
    pub(crate) depth: usize,
    /// The span the thread was in, if any.
    pub(crate) span: crate::sampler::span_context::SpanContext,
    /// This record's `max_depth` words of the buffer's frame slab:
    /// `frames[0]` is the interrupted instruction pointer; the rest are
    /// return addresses, innermost first.
    frames: NonNull<u64>,
    max_depth: usize,
}

impl Record {
    /// # Safety
    /// `frames` must point to `max_depth` words that outlive the record and
    /// that no other record uses.
    unsafe fn new(frames: NonNull<u64>, max_depth: usize) -> Self {
        Record {
            timestamp_ns: 0,
            tid: 0,
            weight: 0,
            rate_epoch: 0,
            flags: 0,
            depth: 0,
            span: crate::sampler::span_context::SpanContext::NONE,
            frames,
            max_depth,
        }
    }

    /// All `max_depth` frame slots, for the handler to fill.
    ///
    /// # Signal safety
    /// Builds a slice over the record's pre-allocated words.
    pub(crate) fn frames_mut(&mut self) -> &mut [u64] {
        // SAFETY: per `new`, the words are this record's alone; `&mut self`
        // makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.frames.as_ptr(), self.max_depth) }
    }

    /// The valid frames, innermost first.
    pub(crate) fn stack(&self) -> &[u64] {
        // SAFETY: per `new`; `&self` excludes writers.
        let frames = unsafe { std::slice::from_raw_parts(self.frames.as_ptr(), self.max_depth) };
        &frames[..self.depth.min(self.max_depth)]
    }
}

struct Slot {
    /// Whose turn it is (see the module docs). Producers and the consumer hand
    /// the record to each other with release stores and acquire loads of this.
    seq: AtomicUsize,
    record: UnsafeCell<Record>,
}

/// Why a producer could not claim a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// Every slot holds a sample the collector has not read yet.
    Full,
    /// Other producers kept winning the race for the tail.
    Contended,
}

/// The sample buffer. See the module docs for the protocol.
pub(crate) struct SampleBuffer {
    slots: Box<[Slot]>,
    /// Every record's frames, `max_depth` words each, in one mapping of its
    /// own (the bulk of the buffer; see `crate::sampler::mapped` for why not `malloc`).
    /// Only reached through the records.
    _frames: MappedWords,
    mask: usize,
    max_depth: usize,
    /// Position the next producer claims. Only advanced by CAS.
    tail: CachePadded<AtomicUsize>,
    /// Position the consumer reads next. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
}

// SAFETY: records are only reached through the sequence protocol, which gives
// each slot one owner at a time (a claiming producer or the consumer), and the
// hand-over is a release/acquire pair on `seq`.
unsafe impl Sync for SampleBuffer {}
// SAFETY: as above; the buffer owns its records outright.
unsafe impl Send for SampleBuffer {}

/// A CAS lost to another producer is retried this many times, then the sample
/// is dropped: a handler must not spin for long.
const MAX_CLAIM_ATTEMPTS: usize = 16;

impl SampleBuffer {
    /// A buffer of `capacity` records (a power of two) of `max_depth` frames.
    pub(crate) fn new(capacity: usize, max_depth: usize) -> io::Result<Self> {
        assert!(
            capacity.is_power_of_two(),
            "capacity must be a power of two"
        );
        let max_depth = max_depth.max(1);
        let words = capacity
            .checked_mul(max_depth)
            .ok_or_else(|| io::Error::other("sample buffer size overflows"))?;
        let frames = MappedWords::zeroed(words)?;
        let slots = (0..capacity)
            .map(|i| {
                // SAFETY: slot `i` gets words `[i * max_depth, (i + 1) * max_depth)`,
                // inside the slab (`capacity * max_depth` words) and disjoint
                // from every other slot's; the slab lives in `self` as long as
                // the slots.
                let record = unsafe {
                    let words = NonNull::new_unchecked(frames.as_mut_ptr().add(i * max_depth));
                    Record::new(words, max_depth)
                };
                Slot {
                    seq: AtomicUsize::new(i),
                    record: UnsafeCell::new(record),
                }
            })
            .collect();
        Ok(SampleBuffer {
            slots,
            _frames: frames,
            mask: capacity - 1,
            max_depth,
            tail: CachePadded(AtomicUsize::new(0)),
            head: CachePadded(AtomicUsize::new(0)),
        })
    }

    /// Records the buffer holds.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes held by the buffer, headers and frame arrays included.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.len() * (std::mem::size_of::<Slot>() + self.max_depth * 8)
    }

    /// Claims a slot for one record.
    ///
    /// # Signal safety
    /// Atomics only: no allocation, no locks, bounded retries.
    #[inline]
    pub(crate) fn try_claim(&self, _cx: SignalSafe) -> Result<RecordWriter<'_>, ClaimError> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        for _ in 0..MAX_CLAIM_ATTEMPTS {
            let slot = &self.slots[pos & self.mask];
            // Acquire: pairs with the consumer's release in `pop_with`, so the
            // consumer's reads of the previous lap's record happen before our
            // writes to it.
            let seq = slot.seq.load(Ordering::Acquire);
            let lag = seq.wrapping_sub(pos) as isize;
            if lag == 0 {
                // Relaxed is enough for the CAS itself: ownership of the record
                // is transferred by `seq`, not by `tail`.
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(RecordWriter { slot, pos }),
                    Err(current) => pos = current,
                }
            } else if lag < 0 {
                return Err(ClaimError::Full);
            } else {
                // Another producer claimed `pos` already; catch up.
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
        Err(ClaimError::Contended)
    }

    /// Reads the oldest published record, if any, and frees its slot.
    ///
    /// Returns `None` when the buffer is empty or the oldest claimed slot is
    /// still being written (its producer is mid-unwind); the next call resumes
    /// there.
    ///
    /// # Safety
    /// Only one thread may consume: callers must not call this concurrently.
    pub(crate) unsafe fn pop_with<R>(&self, read: impl FnOnce(&Record) -> R) -> Option<R> {
        // Relaxed: only this (single) consumer thread writes `head`.
        let pos = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[pos & self.mask];
        // Acquire: pairs with the producer's release in `RecordWriter::drop`,
        // making its writes to the record visible.
        if slot.seq.load(Ordering::Acquire) != pos.wrapping_add(1) {
            return None;
        }
        // SAFETY: `seq == pos + 1` means a producer published this record and no
        // producer can claim the slot again until we store `pos + capacity`.
        let result = slot.record.with(|record| read(unsafe { &*record }));
        self.head.store(pos.wrapping_add(1), Ordering::Relaxed);
        // Release: our reads of the record happen before the next producer's
        // writes (it acquires `seq` in `try_claim`).
        slot.seq
            .store(pos.wrapping_add(self.slots.len()), Ordering::Release);
        Some(result)
    }
}

/// Exclusive access to one claimed slot. Dropping it publishes the record, so
/// a claimed slot can never be left unpublished and wedge the consumer.
pub(crate) struct RecordWriter<'a> {
    slot: &'a Slot,
    pos: usize,
}

impl RecordWriter<'_> {
    /// Writes the record in place.
    ///
    /// # Signal safety
    /// Plain memory access to a pre-allocated record.
    #[inline]
    pub(crate) fn fill<R>(&mut self, write: impl FnOnce(&mut Record) -> R) -> R {
        // SAFETY: the successful CAS in `try_claim` made this writer the slot's
        // only owner until it publishes in `drop`; `&mut self` keeps the access
        // unique within the writer.
        self.slot
            .record
            .with_mut(|record| write(unsafe { &mut *record }))
    }
}

/// Publishes the record.
///
/// # Signal safety
/// One atomic store.
impl Drop for RecordWriter<'_> {
    fn drop(&mut self) {
        // Release: pairs with the consumer's acquire load in `pop_with`.
        self.slot
            .seq
            .store(self.pos.wrapping_add(1), Ordering::Release);
    }
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;

    fn push(buffer: &SampleBuffer, tid: i32, frames: &[u64]) -> Result<(), ClaimError> {
        let mut writer = buffer.try_claim(SignalSafe::for_tests())?;
        writer.fill(|r| {
            r.tid = tid;
            r.depth = frames.len();
            r.frames_mut()[..frames.len()].copy_from_slice(frames);
        });
        Ok(())
    }

    fn pop(buffer: &SampleBuffer) -> Option<(i32, Vec<u64>)> {
        // SAFETY: tests consume from one thread.
        unsafe { buffer.pop_with(|r| (r.tid, r.stack().to_vec())) }
    }

    #[test]
    fn fifo_and_full_then_reusable() {
        let buffer = SampleBuffer::new(4, 8).unwrap();
        for tid in 0..4 {
            push(&buffer, tid, &[tid as u64, 7]).unwrap();
        }
        assert_eq!(push(&buffer, 9, &[1]), Err(ClaimError::Full));
        for tid in 0..4 {
            assert_eq!(pop(&buffer), Some((tid, vec![tid as u64, 7])));
        }
        assert_eq!(pop(&buffer), None);
        for lap in 0..10 {
            push(&buffer, lap, &[lap as u64]).unwrap();
            assert_eq!(pop(&buffer), Some((lap, vec![lap as u64])));
        }
    }

    #[test]
    fn unpublished_slot_blocks_only_the_consumer() {
        let buffer = SampleBuffer::new(4, 2).unwrap();
        let writer = buffer.try_claim(SignalSafe::for_tests()).unwrap();
        push(&buffer, 2, &[2]).unwrap();
        assert_eq!(pop(&buffer), None, "oldest slot is still being written");
        drop(writer);
        assert_eq!(pop(&buffer).map(|(tid, _)| tid), Some(0));
        assert_eq!(pop(&buffer).map(|(tid, _)| tid), Some(2));
    }

    #[test]
    fn many_producers_one_consumer_lose_nothing_but_counted_drops() {
        use std::sync::Arc;
        let buffer = Arc::new(SampleBuffer::new(64, 4).unwrap());
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let buffer = Arc::clone(&buffer);
                std::thread::spawn(move || {
                    let mut dropped = 0u64;
                    for i in 0..20_000u64 {
                        if push(&buffer, t, &[i, i ^ 0xff]).is_err() {
                            dropped += 1;
                        }
                    }
                    dropped
                })
            })
            .collect();
        let mut received = 0u64;
        let mut last_seen = [None::<u64>; 4];
        while producers.iter().any(|p| !p.is_finished()) || received == 0 {
            while let Some((tid, frames)) = pop(&buffer) {
                assert_eq!(frames[1], frames[0] ^ 0xff, "torn record");
                let previous = last_seen[tid as usize].replace(frames[0]);
                assert!(previous < Some(frames[0]), "per-producer order broken");
                received += 1;
            }
        }
        let dropped: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
        while pop(&buffer).is_some() {
            received += 1;
        }
        assert_eq!(received + dropped, 80_000);
    }
}

#[cfg(all(test, smolder_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn push(buffer: &SampleBuffer, value: u64) -> bool {
        match buffer.try_claim(SignalSafe::for_tests()) {
            Ok(mut writer) => {
                writer.fill(|r| {
                    r.frames_mut()[0] = value;
                    r.depth = 1;
                });
                true
            }
            Err(_) => false,
        }
    }

    /// Two producers race a consumer over a two-slot buffer: every value the
    /// consumer sees is one that was pushed, whole, and nothing is seen twice.
    #[test]
    fn two_producers_one_consumer() {
        loom::model(|| {
            let buffer = Arc::new(SampleBuffer::new(2, 1).unwrap());
            let handles: Vec<_> = (1..=2u64)
                .map(|value| {
                    let buffer = buffer.clone();
                    thread::spawn(move || push(&buffer, value))
                })
                .collect();
            let mut seen = Vec::new();
            // SAFETY: this is the only consuming thread.
            if let Some(v) = unsafe { buffer.pop_with(|r| r.stack()[0]) } {
                seen.push(v);
            }
            let pushed: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            // SAFETY: as above.
            while let Some(v) = unsafe { buffer.pop_with(|r| r.stack()[0]) } {
                seen.push(v);
            }
            seen.sort_unstable();
            let expected: Vec<u64> = (1..=2u64).filter(|v| pushed[*v as usize - 1]).collect();
            assert_eq!(seen, expected);
        });
    }

    /// A full buffer refuses the producer instead of overwriting.
    #[test]
    fn full_buffer_drops_instead_of_overwriting() {
        loom::model(|| {
            let buffer = Arc::new(SampleBuffer::new(2, 1).unwrap());
            assert!(push(&buffer, 1));
            assert!(push(&buffer, 2));
            let producer = {
                let buffer = buffer.clone();
                thread::spawn(move || push(&buffer, 3))
            };
            // SAFETY: this is the only consuming thread.
            let first = unsafe { buffer.pop_with(|r| r.stack()[0]) };
            let third_pushed = producer.join().unwrap();
            assert_eq!(first, Some(1));
            // SAFETY: as above.
            let rest: Vec<u64> =
                std::iter::from_fn(|| unsafe { buffer.pop_with(|r| r.stack()[0]) }).collect();
            if third_pushed {
                assert_eq!(rest, vec![2, 3]);
            } else {
                assert_eq!(rest, vec![2]);
            }
        });
    }
}
