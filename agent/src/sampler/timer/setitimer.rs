//! The process-wide fallback: `setitimer(ITIMER_PROF)`.

use super::TimerEngine;
use crate::Error;
use crate::sampler::clock::timespec;

/// The `setitimer` engine. Threads need no timers of their own; the registry
/// (kept by the collector) tells the handler which threads are safe to walk.
pub(crate) struct Setitimer {
    running: bool,
}

fn set(period_ns: u64) -> std::io::Result<()> {
    let t = timespec(period_ns);
    let interval = libc::timeval {
        tv_sec: t.tv_sec,
        tv_usec: (t.tv_nsec / 1000) as libc::suseconds_t,
    };
    let value = libc::itimerval {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: valid pointer to `value`; the old value is not requested.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &value, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Setitimer {
    pub(crate) fn start(period_ns: u64) -> Result<Self, Error> {
        set(period_ns.max(1000)).map_err(|source| Error::Os {
            operation: "setitimer(ITIMER_PROF)",
            source,
        })?;
        Ok(Setitimer { running: true })
    }
}

impl TimerEngine for Setitimer {
    /// The process timer samples whichever thread is running: nothing to
    /// do per thread.
    fn track(&mut self, _started: &[i32], _exited: &[i32]) {}

    fn armed(&self) -> usize {
        usize::from(self.running)
    }

    fn set_rate(&mut self, period_ns: u64, _rate_epoch: u8) {
        // The handler reads the epoch for kernel-sent signals from the shared
        // state, which the collector updates alongside this call.
        if self.running {
            let _ = set(period_ns.max(1000));
        }
    }

    fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            // Disarming cannot fail with a valid, zeroed value.
            let _ = set(0);
        }
    }
}

impl Drop for Setitimer {
    fn drop(&mut self) {
        self.stop();
    }
}
