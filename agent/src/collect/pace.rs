//! How long the collector sleeps between cycles.

use std::time::Duration;

use super::{CYCLE, MAX_CYCLE};

/// How long nothing must have changed before cycles lengthen.
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// How long the collector sleeps between cycles.
///
/// Each wake-up costs a context switch on a CPU the service may be using and
/// a cycle run with cold caches, whatever there is to do; in a quiet service
/// at 99 Hz a 25 ms cycle finds two or three samples. So once nothing has
/// changed for [`QUIET_AFTER`], cycles stretch towards [`MAX_CYCLE`], as far
/// as the buffer allows: one cycle must not bring more records than half of
/// it holds, counting the rate in force on every online CPU (a CPU-time
/// timer fires at most once per period of CPU used). Threads starting or
/// exiting, a library loaded, a new rate, or a drain that found the buffer a
/// quarter full bring short cycles back, so threads that come and go are
/// still found within [`CYCLE`].
#[derive(Debug)]
pub(crate) struct Pace {
    capacity: u64,
    cpus: u64,
    /// When something last changed (monotonic ns).
    busy_ns: u64,
}

impl Pace {
    pub(crate) fn new(capacity: usize, cpus: usize, now_ns: u64) -> Self {
        Pace {
            capacity: capacity as u64,
            cpus: cpus.max(1) as u64,
            busy_ns: now_ns,
        }
    }

    /// Something changed, or samples came in bulk: short cycles for a while.
    pub(crate) fn busy(&mut self, now_ns: u64) {
        self.busy_ns = now_ns;
    }

    /// The sleep before the next cycle, at `rate_hz`.
    pub(crate) fn next_sleep(&self, now_ns: u64, rate_hz: u32) -> Duration {
        if now_ns.saturating_sub(self.busy_ns) < QUIET_AFTER.as_nanos() as u64 {
            return CYCLE;
        }
        let records_per_second = u64::from(rate_hz.max(1)) * self.cpus;
        let room = Duration::from_nanos(self.capacity / 2 * 1_000_000_000 / records_per_second);
        room.clamp(CYCLE, MAX_CYCLE)
    }
}

/// CPUs online: how many threads can burn CPU, and so fire CPU-time timers,
/// at once.
pub(super) fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system setting; it has no memory effects.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_NS: u64 = 1_000_000_000;

    #[test]
    fn cycles_stay_short_for_a_while_after_a_change() {
        let mut pace = Pace::new(1024, 2, 0);
        assert_eq!(pace.next_sleep(SECOND_NS / 2, 99), CYCLE);
        assert_eq!(pace.next_sleep(2 * SECOND_NS, 99), MAX_CYCLE);
        pace.busy(2 * SECOND_NS);
        assert_eq!(pace.next_sleep(2 * SECOND_NS + 1, 99), CYCLE);
        assert_eq!(pace.next_sleep(3 * SECOND_NS + 1, 99), MAX_CYCLE);
    }

    #[test]
    fn a_quiet_cycle_never_brings_more_than_half_the_buffer() {
        for (capacity, cpus, hz) in [
            (1024, 2, 99),
            (1024, 2, 999),
            (1024, 2, 10_000),
            (64, 2, 99),
            (1024, 128, 99),
            (1024, 64, 10_000),
        ] {
            let sleep = Pace::new(capacity, cpus, 0).next_sleep(10 * SECOND_NS, hz);
            let most_records = sleep.as_secs_f64() * f64::from(hz) * cpus as f64;
            assert!(
                most_records <= capacity as f64 / 2.0 || sleep == CYCLE,
                "{capacity} records, {cpus} CPUs at {hz} Hz: {sleep:?} may bring {most_records}"
            );
            assert!((CYCLE..=MAX_CYCLE).contains(&sleep));
        }
        // At everyday rates on a small machine, the longest cycle.
        assert_eq!(
            Pace::new(1024, 2, 0).next_sleep(10 * SECOND_NS, 999),
            MAX_CYCLE
        );
        // Where even the shortest cycle is tight, never longer than it.
        assert_eq!(
            Pace::new(1024, 64, 0).next_sleep(10 * SECOND_NS, 999),
            CYCLE
        );
    }

    #[test]
    fn online_cpus_is_at_least_one() {
        assert!(online_cpus() >= 1);
    }
}
