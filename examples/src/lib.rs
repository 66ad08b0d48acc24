//! Helpers the example binaries share.

use std::time::Duration;

/// CPU time the calling thread has used so far (its
/// `CLOCK_THREAD_CPUTIME_ID` clock): what the examples burn and measure,
/// since wall time on a shared machine says little about CPU.
pub fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; the thread CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
