//! The bounded queue of encoded intervals waiting for the server.
//!
//! Bounded twice, by count and by bytes; when a new interval would pass
//! either bound, the oldest go first (a stale profile is worth less than a
//! fresh one), and each one dropped is counted. Memory therefore stays
//! within [`MAX_QUEUED_BYTES`] plus one interval, however long the server
//! is down.

use std::collections::VecDeque;

use bytes::Bytes;

/// Intervals held at most: a minute at the default 10 s interval, which
/// rides out a server restart.
pub(crate) const MAX_QUEUED_INTERVALS: usize = 6;
/// Bytes of encoded requests held at most. A 10 s CPU profile of a busy
/// service is tens of kilobytes gzipped; this bound matters only for
/// very large profiles (deep, varied stacks), where it keeps the count
/// bound from meaning tens of megabytes.
pub(crate) const MAX_QUEUED_BYTES: usize = 4 << 20;

/// One interval, encoded as its request.
pub(crate) struct Queued {
    pub(crate) request: Bytes,
    /// Profiles it carries.
    pub(crate) profiles: u64,
}

/// Intervals waiting, oldest first.
#[derive(Default)]
pub(crate) struct IntervalQueue {
    queued: VecDeque<Queued>,
    bytes: usize,
}

impl IntervalQueue {
    /// Adds an interval, first dropping the oldest ones it would not fit
    /// beside. Returns how many were dropped (the new one included, if it
    /// alone is over the byte bound).
    pub(crate) fn push(&mut self, interval: Queued) -> u64 {
        if interval.request.len() > MAX_QUEUED_BYTES {
            return 1;
        }
        let mut dropped = 0;
        while self.queued.len() >= MAX_QUEUED_INTERVALS
            || self.bytes + interval.request.len() > MAX_QUEUED_BYTES
        {
            let Some(oldest) = self.queued.pop_front() else {
                break;
            };
            self.bytes -= oldest.request.len();
            dropped += 1;
        }
        self.bytes += interval.request.len();
        self.queued.push_back(interval);
        dropped
    }

    /// The oldest interval, to send next.
    pub(crate) fn front(&self) -> Option<&Queued> {
        self.queued.front()
    }

    /// Removes the oldest interval (sent, or refused for good).
    pub(crate) fn pop(&mut self) -> Option<Queued> {
        let oldest = self.queued.pop_front()?;
        self.bytes -= oldest.request.len();
        Some(oldest)
    }

    pub(crate) fn len(&self) -> usize {
        self.queued.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(bytes: usize, tag: u8) -> Queued {
        Queued {
            request: Bytes::from(vec![tag; bytes]),
            profiles: 1,
        }
    }

    #[test]
    fn the_oldest_go_first_when_either_bound_is_reached() {
        let mut queue = IntervalQueue::default();
        for tag in 0..MAX_QUEUED_INTERVALS as u8 {
            assert_eq!(queue.push(interval(10, tag)), 0);
        }
        assert_eq!(queue.push(interval(10, 99)), 1, "one over the count");
        assert_eq!(queue.len(), MAX_QUEUED_INTERVALS);
        assert_eq!(queue.front().unwrap().request[0], 1, "the oldest went");
        // A large one pushes out as many as it needs room for.
        let big = MAX_QUEUED_BYTES - 25;
        assert_eq!(queue.push(interval(big, 100)), 4);
        assert_eq!(queue.bytes(), big + 20);
        assert!(queue.bytes() <= MAX_QUEUED_BYTES);
        // One over the bound on its own is dropped itself.
        assert_eq!(queue.push(interval(MAX_QUEUED_BYTES + 1, 101)), 1);
        assert_eq!(queue.len(), 3);
        while queue.pop().is_some() {}
        assert_eq!((queue.len(), queue.bytes()), (0, 0));
    }
}
