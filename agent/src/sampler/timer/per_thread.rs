//! One CPU-time timer per thread (`timer_create` + `SIGEV_THREAD_ID`).

use std::collections::HashMap;
use std::io;

use super::TimerEngine;
use crate::Error;
use crate::sampler::clock::{thread_cpu_clock, timespec};
use crate::sampler::random::SplitMix64;

/// The per-thread timer engine.
pub(crate) struct PerThreadTimers {
    period_ns: u64,
    agent: u8,
    rate_epoch: u8,
    timers: HashMap<i32, libc::timer_t>,
    rng: SplitMix64,
}

// SAFETY: `timer_t` is an opaque kernel id (a pointer-sized integer in glibc),
// valid from any thread of the process.
unsafe impl Send for PerThreadTimers {}

impl PerThreadTimers {
    pub(crate) fn new(period_ns: u64, agent: u8) -> Self {
        PerThreadTimers {
            period_ns,
            agent,
            rate_epoch: 0,
            timers: HashMap::new(),
            rng: SplitMix64::seeded(),
        }
    }

    /// Checks that the kernel supports thread CPU-clock timers aimed at a
    /// thread, by creating (unarmed) and deleting one for the calling thread.
    pub(crate) fn probe() -> Result<(), Error> {
        let tid = crate::sampler::threads::current_tid();
        let timer = create(tid, 0).map_err(|source| Error::Os {
            operation: "timer_create on a thread CPU clock",
            source,
        })?;
        // SAFETY: `timer` was just created and is deleted exactly once.
        unsafe { libc::timer_delete(timer) };
        Ok(())
    }

    /// A first expiry spread uniformly over one period, so threads started
    /// together do not fire in lock-step and sampling does not alias with
    /// work that starts when the thread does.
    fn random_first_expiry_ns(&mut self) -> u64 {
        1 + self.rng.below(self.period_ns)
    }

    fn arm(&mut self, tid: i32) -> io::Result<libc::timer_t> {
        let timer = create(
            tid,
            crate::sampler::cookie::encode(self.agent, self.rate_epoch, tid),
        )?;
        let spec = libc::itimerspec {
            it_interval: timespec(self.period_ns),
            it_value: timespec(self.random_first_expiry_ns()),
        };
        // SAFETY: `timer` is valid; `spec` is a valid pointer.
        if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            let error = io::Error::last_os_error();
            // SAFETY: deleting the timer we created.
            unsafe { libc::timer_delete(timer) };
            return Err(error);
        }
        Ok(timer)
    }
}

/// Creates a timer on `tid`'s CPU clock that sends `SIGPROF` carrying
/// `cookie` to that thread.
fn create(tid: i32, cookie: u64) -> io::Result<libc::timer_t> {
    // SAFETY: all-zero is a valid `sigevent`.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = libc::SIGPROF;
    event.sigev_value = libc::sigval {
        sival_ptr: cookie as usize as *mut libc::c_void,
    };
    event.sigev_notify_thread_id = tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid pointers to `event` and `timer`.
    if unsafe { libc::timer_create(thread_cpu_clock(tid), &mut event, &mut timer) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

impl TimerEngine for PerThreadTimers {
    fn track(&mut self, started: &[i32], exited: &[i32]) {
        for tid in exited {
            if let Some(timer) = self.timers.remove(tid) {
                // SAFETY: each timer is deleted once, when removed from the map.
                unsafe { libc::timer_delete(timer) };
            }
        }
        for &tid in started {
            if self.timers.contains_key(&tid) {
                continue;
            }
            // A thread that exited since it was listed makes timer_create fail
            // with EINVAL; it is simply not sampled.
            if let Ok(timer) = self.arm(tid) {
                self.timers.insert(tid, timer);
            }
        }
    }

    fn armed(&self) -> usize {
        self.timers.len()
    }

    fn set_rate(&mut self, period_ns: u64, rate_epoch: u8) {
        // A timer's cookie is fixed at creation, so each is re-created.
        self.period_ns = period_ns;
        self.rate_epoch = rate_epoch;
        let threads: Vec<i32> = self.timers.keys().copied().collect();
        self.track(&[], &threads);
        self.track(&threads, &[]);
    }

    fn stop(&mut self) {
        for (_, timer) in self.timers.drain() {
            // SAFETY: each timer is deleted once, when drained from the map.
            unsafe { libc::timer_delete(timer) };
        }
    }
}

impl Drop for PerThreadTimers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_expiry_stays_within_one_period() {
        let mut timers = PerThreadTimers::new(10_000_000, 1);
        for _ in 0..1000 {
            let first = timers.random_first_expiry_ns();
            assert!((1..=10_000_000).contains(&first));
        }
    }
}
